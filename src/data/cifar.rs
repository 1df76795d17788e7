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
            bail!("{}: record {i} has label {}, expected 0..=9", path.display(), record[0]);
        }
        into.labels.push(record[0]);
        into.pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Checks that the folder holds all six files before reading any of them.
pub fn check_dir(dir: &Path) -> Result<()> {
    let layout = format!("{} and {TEST_FILE}", TRAIN_FILES.join(", "));
    crate::config::check_not_a_file(dir, "--data-dir")?;
    if !dir.is_dir() {
        bail!(
            "{}: CIFAR-10 folder not found{}; download the binary version from {SOURCE}, unpack it, and pass its cifar-10-batches-bin folder with --data-dir (or set {DIR_ENV}); it must hold {layout}",
            dir.display(),
            super::looked_from(dir)
        );
    }
    let missing: Vec<&str> =
        TRAIN_FILES.iter().chain([&TEST_FILE]).copied().filter(|f| !dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        super::check_not_outputs(dir, super::DatasetName::Cifar10)?;
        bail!(
            "{}: missing {}; a CIFAR-10 binary folder holds {layout} (from {SOURCE})",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Reads the five training batches and the test batch of `dir`, refusing a file that repeats
/// another: no registry ships CIFAR-10, so nothing checks the files' checksums, and a test batch
/// that is a copy of a training batch would score learners on images they were trained on.
pub fn read_dir(dir: &Path) -> Result<(Records, Records)> {
    check_dir(dir)?;
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

/// `GTN_CIFAR10_DIR` when set, else `data/cifar10`.
pub fn default_dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map_or_else(|| Path::new("data").join("cifar10"), PathBuf::from)
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
        let (train, test) = read_dir(dir.path()).unwrap();
        assert_eq!((train.len(), test.len()), (100, 20));
    }

    #[test]
    fn rejects_short_files_and_bad_labels() {
        let dir = fixture_folder();
        let bytes = std::fs::read(fixture_file()).unwrap();
        let short = dir.path().join(TEST_FILE);
        std::fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("test_batch.bin: 61459 bytes is not a positive multiple of the 3073-byte"), "{err}");
        let mut bad = bytes.clone();
        bad[RECORD] = 10;
        std::fs::write(&short, &bad).unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("test_batch.bin: record 1 has label 10, expected 0..=9"), "{err}");
    }

    #[test]
    fn a_file_repeating_another_is_refused() {
        let dir = fixture_folder();
        std::fs::copy(dir.path().join("data_batch_2.bin"), dir.path().join(TEST_FILE)).unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("test_batch.bin: holds the same records as data_batch_2.bin;"), "{err}");
        std::fs::copy(dir.path().join("data_batch_1.bin"), dir.path().join("data_batch_4.bin")).unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("data_batch_4.bin: holds the same records as data_batch_1.bin;"), "{err}");
    }

    #[test]
    fn missing_folder_or_files_explain_the_layout() {
        let err = read_dir(Path::new("/nonexistent/cifar")).unwrap_err().to_string();
        assert!(err.contains("CIFAR-10 folder not found") && err.contains(SOURCE) && err.contains(DIR_ENV), "{err}");
        let dir = fixture_folder();
        std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing data_batch_3.bin;"), "{err}");
    }
}
