//! CIFAR-10, binary version (`cifar-10-batches-bin`): `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin`, each a sequence of 3,073-byte records: one label byte (0–9), then the
//! 32x32 red, green and blue planes. No package registry ships it; the user points us at it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Bytes per record: label + 3 x 32 x 32 pixels.
pub const RECORD: usize = 1 + 3 * 32 * 32;
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const TEST_FILE: &str = "test_batch.bin";
/// Environment variable naming the data folder when no flag does.
pub const DIR_ENV: &str = "GTN_CIFAR10_DIR";
pub const SOURCE: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// Pixels `[N * 3072]` in record order and labels `[N]` of one or more batch files.
#[derive(Debug, Default)]
pub struct Records {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Parses one batch file, checking its size and every label.
pub fn read_batch(path: &Path, into: &mut Records) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "{}: {} bytes is not a positive multiple of the {RECORD}-byte CIFAR-10 record (truncated or not the binary version)",
            path.display(),
            bytes.len()
        );
    }
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] > 9 {
            bail!(
                "{}: record {i} has label {}, outside 0..=9; expected a class from 0 to 9",
                path.display(),
                record[0]
            );
        }
        into.labels.push(record[0]);
        into.pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Checks that the folder `dir` (named by `flag`) holds all six files before reading any of
/// them; where it does not, what it holds instead that was likely meant: the archive itself, the
/// folder it unpacks to, or the python version (which torchvision downloads).
pub fn check_dir(dir: &Path, flag: &'static str) -> Result<()> {
    let layout = format!("{} and {TEST_FILE}", TRAIN_FILES.join(", "));
    let unpacked = format!("pass its {BIN_FOLDER} folder with {flag}");
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if dir.is_file() && (name.ends_with(".tar.gz") || name.ends_with(".tgz")) {
        bail!(
            "{}: is an archive; unpack it (`tar xzf {}`) and {unpacked}",
            dir.display(),
            crate::text::shell_word(dir)
        );
    }
    crate::config::check_not_a_file(dir, flag)?;
    if !dir.is_dir() {
        bail!(
            "{}: CIFAR-10 folder not found{}; download the binary version from {SOURCE}, unpack it, and {unpacked} ({}); it must hold {layout}",
            dir.display(),
            super::looked_from(dir),
            or_env()
        );
    }
    let missing: Vec<&str> =
        TRAIN_FILES.iter().chain([&TEST_FILE]).copied().filter(|f| !dir.join(f).is_file()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let unpacked_here = unpacked_in(dir);
    if unpacked_here == Some(UNPACKED_BIN) {
        let inner = crate::text::shell_word(&dir.join(BIN_FOLDER));
        bail!(
            "{}: holds the unpacked archive's folder {BIN_FOLDER}; expected that folder ({flag} {inner})",
            dir.display()
        );
    }
    super::check_not_other_data(dir, super::DatasetName::Cifar10, flag)?;
    if unpacked_here == Some(PYTHON_VERSION) {
        bail!(
            "{}: holds the python version of CIFAR-10 (pickled batches, as torchvision downloads it); gtn reads the binary version: download it from {SOURCE}, unpack it, and {unpacked}",
            dir.display()
        );
    }
    bail!("{}: missing {}; a CIFAR-10 binary folder holds {layout} (from {SOURCE})", dir.display(), missing.join(", "))
}

/// The folder the binary version's archive unpacks to.
const BIN_FOLDER: &str = "cifar-10-batches-bin";

/// What [`unpacked_in`] finds.
const UNPACKED_BIN: &str = "CIFAR-10's binary batches in its folder cifar-10-batches-bin";
const PYTHON_VERSION: &str = "CIFAR-10's python version (pickled batches)";

/// CIFAR-10 as downloads leave it in `dir`, in words, other than its six files in `dir` itself:
/// the binary archive unpacked into its folder (holding a batch), or the python version
/// (torchvision's download, or its unpacked folder).
pub(crate) fn unpacked_in(dir: &Path) -> Option<&'static str> {
    let inner = dir.join(BIN_FOLDER);
    if inner.join(TEST_FILE).is_file() || inner.join(TRAIN_FILES[0]).is_file() {
        return Some(UNPACKED_BIN);
    }
    let python = ["data_batch_1", "batches.meta", "cifar-10-batches-py"].iter().any(|f| dir.join(f).exists());
    python.then_some(PYTHON_VERSION)
}

/// How [`DIR_ENV`] may name the folder instead: set it, or point it elsewhere when it is set
/// (a folder it names is not told apart from one a flag or run names: they may be the same).
fn or_env() -> String {
    match env_dir() {
        Some(now) => format!("or point {DIR_ENV}, now {}, at it", now.display()),
        None => format!("or set {DIR_ENV}"),
    }
}

/// [`DIR_ENV`]'s folder.
fn env_dir() -> Option<PathBuf> {
    folder_of(std::env::var_os(DIR_ENV))
}

/// A variable's folder: an empty value is none, as if unset (not the current folder).
fn folder_of(value: Option<std::ffi::OsString>) -> Option<PathBuf> {
    value.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Reads the five training batches and the test batch of `dir`, refusing a file that repeats
/// another: no registry ships CIFAR-10, so nothing checks the files' checksums, and a test batch
/// that is a copy of a training batch would score learners on images they were trained on.
pub fn read_dir(dir: &Path, flag: &'static str) -> Result<(Records, Records)> {
    check_dir(dir, flag)?;
    let (mut train, mut test) = (Records::default(), Records::default());
    let mut read: Vec<(&str, bool, std::ops::Range<usize>)> = Vec::new();
    for file in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let is_test = *file == TEST_FILE;
        let into = if is_test { &mut test } else { &mut train };
        let start = into.len();
        read_batch(&dir.join(file), into)?;
        read.push((file, is_test, start..into.len()));
    }
    let records = |is_test: bool, range: &std::ops::Range<usize>| {
        let r = if is_test { &test } else { &train };
        (&r.labels[range.clone()], &r.pixels[range.start * (RECORD - 1)..range.end * (RECORD - 1)])
    };
    for (i, (file, is_test, range)) in read.iter().enumerate() {
        if let Some((first, ..)) = read[..i].iter().find(|(_, t, r)| records(*t, r) == records(*is_test, range)) {
            bail!(
                "{}: holds the same records as {first}; the six CIFAR-10 files (from {SOURCE}) each hold other images",
                dir.join(file).display()
            );
        }
    }
    Ok((train, test))
}

/// `GTN_CIFAR10_DIR` when set (and not empty), else `data/cifar10`.
pub fn default_dir() -> PathBuf {
    env_dir().unwrap_or_else(|| Path::new("data").join("cifar10"))
}

/// The committed fixture: the first 20 real CIFAR-10 test images (from foolbox 3.3.4's PNGs).
pub fn fixture_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10").join(TEST_FILE)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A complete CIFAR-10 folder whose six files hold the 20-image fixture: the test file as it
    /// is, each training file rotated by its own number of records (files must not repeat one
    /// another).
    pub fn fixture_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture_file()).unwrap();
        for (k, file) in [&TEST_FILE].into_iter().chain(TRAIN_FILES.iter()).enumerate() {
            let (head, tail) = bytes.split_at(k * RECORD);
            std::fs::write(dir.path().join(file), [tail, head].concat()).unwrap();
        }
        dir
    }

    #[test]
    fn reads_the_fixture_labels() {
        let mut r = Records::default();
        read_batch(&fixture_file(), &mut r).unwrap();
        assert_eq!(r.labels, [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]);
        assert_eq!(r.pixels.len(), 20 * 3072);
        let dir = fixture_folder();
        let (train, test) = read_dir(dir.path(), "--data-dir").unwrap();
        assert_eq!((train.len(), test.len()), (100, 20));
    }

    #[test]
    fn rejects_short_files_and_bad_labels() {
        let dir = fixture_folder();
        let bytes = std::fs::read(fixture_file()).unwrap();
        let short = dir.path().join(TEST_FILE);
        std::fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
        let err = read_dir(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(err.contains("test_batch.bin: 61459 bytes is not a positive multiple of the 3073-byte"), "{err}");
        let mut bad = bytes.clone();
        bad[RECORD] = 10;
        std::fs::write(&short, &bad).unwrap();
        let err = read_dir(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin: record 1 has label 10, outside 0..=9; expected a class from 0 to 9"),
            "{err}"
        );
    }

    #[test]
    fn a_file_repeating_another_is_refused() {
        let dir = fixture_folder();
        std::fs::copy(dir.path().join("data_batch_2.bin"), dir.path().join(TEST_FILE)).unwrap();
        let err = read_dir(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(err.contains("test_batch.bin: holds the same records as data_batch_2.bin;"), "{err}");
        std::fs::copy(dir.path().join("data_batch_1.bin"), dir.path().join("data_batch_4.bin")).unwrap();
        let err = read_dir(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(err.contains("data_batch_4.bin: holds the same records as data_batch_1.bin;"), "{err}");
    }

    /// What was likely meant by a folder without the six files is named: the archive, the
    /// folder holding the unpacked one, the python version, another dataset's files.
    #[test]
    fn what_a_folder_holds_instead_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&archive, b"").unwrap();
        let err = read_dir(&archive, "--data-dir").unwrap_err().to_string();
        assert!(err.contains(": is an archive; unpack it (`tar xzf "), "{err}");
        let inner = dir.path().join(BIN_FOLDER);
        std::fs::create_dir(&inner).unwrap();
        let err = read_dir(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(err.contains("missing data_batch_1.bin"), "an empty folder of that name holds nothing: {err}");
        std::fs::write(inner.join(TEST_FILE), b"").unwrap();
        // Before what the folder holds itself (loose MNIST files beside the unpacked archive).
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), b"").unwrap();
        let err = read_dir(dir.path(), "--dir").unwrap_err().to_string();
        let expected = format!(
            "holds the unpacked archive's folder {BIN_FOLDER}; expected that folder (--dir {})",
            inner.display()
        );
        assert!(err.ends_with(&expected), "{err}");
        std::fs::remove_file(inner.join(TEST_FILE)).unwrap();
        std::fs::write(inner.join("batches.meta"), b"").unwrap();
        let err = read_dir(&inner, "--data-dir").unwrap_err().to_string();
        assert!(err.contains("holds the python version of CIFAR-10"), "{err}");
        std::fs::write(inner.join("train-images-idx3-ubyte.gz"), b"").unwrap();
        let err = read_dir(&inner, "--data-dir").unwrap_err().to_string();
        let expected = "holds MNIST-format IDX files, not cifar10's data files; point --data-dir at cifar10's folder (or, to read this one, `--dataset mnist` or `--dataset fashion-mnist`)";
        assert!(err.ends_with(expected), "{err}");
    }

    #[test]
    fn an_empty_variable_is_unset() {
        assert_eq!(folder_of(Some("".into())), None);
        assert_eq!(folder_of(Some("c10".into())), Some(PathBuf::from("c10")));
    }

    #[test]
    fn missing_folder_or_files_explain_the_layout() {
        let err = read_dir(Path::new("/nonexistent/cifar"), "--data-dir").unwrap_err().to_string();
        assert!(err.contains("CIFAR-10 folder not found") && err.contains(SOURCE) && err.contains(DIR_ENV), "{err}");
        let dir = fixture_folder();
        std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
        let err = read_dir(dir.path(), "--data-dir").unwrap_err().to_string();
        assert!(err.contains("missing data_batch_3.bin;"), "{err}");
    }
}
