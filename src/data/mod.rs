//! Image datasets: loading MNIST-style IDX files and CIFAR-10 batches as pixel tensors, the seeded
//! training/validation split, and the seeded batch sampler used by every training loop.

pub mod augment;
pub mod cifar;
pub mod fetch;
pub mod idx;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    /// The binary version, read from a folder the user gives (or `GTN_CIFAR10_DIR`).
    #[value(name = "cifar10")]
    #[serde(rename = "cifar10")]
    Cifar10,
}

crate::text::display_as_flag!(DatasetName);

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }

    /// Per-channel mean and standard deviation of the training set, in [0, 1] units.
    pub fn mean_std(self) -> (&'static [f64], &'static [f64]) {
        match self {
            DatasetName::Mnist => (&[0.1307], &[0.3081]),
            DatasetName::FashionMnist => (&[0.2860], &[0.3530]),
            DatasetName::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616]),
        }
    }

    /// Image shape `[C, H, W]` and number of classes.
    pub fn shape(self) -> ([i64; 3], i64) {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => ([1, 28, 28], 10),
            DatasetName::Cifar10 => ([3, 32, 32], 10),
        }
    }

    /// Training images (validation included) and test images of the published dataset.
    pub fn published_sizes(self) -> (usize, usize) {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => (60_000, 10_000),
            DatasetName::Cifar10 => (50_000, 10_000),
        }
    }

    /// Training images held out for validation in the standard splits (50k/10k, 45k/5k).
    pub fn default_valid_size(self) -> usize {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => 10_000,
            DatasetName::Cifar10 => 5_000,
        }
    }

    /// Where the data is looked for unless told otherwise (`gtn data fetch` puts it there).
    pub fn default_dir(self) -> PathBuf {
        match self {
            DatasetName::Cifar10 => cifar::default_dir(),
            _ => Path::new("data").join(self.as_str()),
        }
    }

    /// Normalised images `[N, C, H, W]` -> pixel values in 0..=255 (float, clamped).
    pub fn denormalise(self, images: &Tensor) -> Tensor {
        let (mean, std) = self.channel_stats(images.device());
        ((images * std + mean) * 255.0).clamp(0.0, 255.0)
    }

    /// Mean and std as `[1, C, 1, 1]` tensors, to broadcast over image batches.
    fn channel_stats(self, device: Device) -> (Tensor, Tensor) {
        let (mean, std) = self.mean_std();
        let per_channel = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device).view([1, -1, 1, 1]);
        (per_channel(mean), per_channel(std))
    }

    /// Pixels `[N, C, H, W]` in 0..=255 (any kind) -> normalised float images.
    pub fn normalise(self, pixels: &Tensor) -> Tensor {
        let (mean, std) = self.channel_stats(pixels.device());
        (pixels.to_kind(Kind::Float) / 255.0 - mean) / std
    }
}

/// Pixels `[N, C, H, W]` as stored (uint8: a quarter of the memory of float images, which
/// matters for a whole training set) and labels `[N]` (int64), on one device. Images are
/// normalised batch by batch as they are drawn.
#[derive(Debug)]
pub struct Split {
    pub dataset: DatasetName,
    pub pixels: Tensor,
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        self.pixels.device()
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn first(&self, n: usize) -> Split {
        let n = n.min(self.len()) as i64;
        Split { dataset: self.dataset, pixels: self.pixels.narrow(0, 0, n), labels: self.labels.narrow(0, 0, n) }
    }

    /// Normalised images of examples `start..start + len`.
    pub fn images(&self, start: i64, len: i64) -> Tensor {
        self.dataset.normalise(&self.pixels.narrow(0, start, len))
    }

    /// Normalised images and labels of the examples at `indices`.
    pub fn batch(&self, indices: &Tensor) -> (Tensor, Tensor) {
        (self.dataset.normalise(&self.pixels.index_select(0, indices)), self.labels.index_select(0, indices))
    }

    fn subset(&self, indices: &[i64]) -> Split {
        let idx = Tensor::from_slice(indices).to_device(self.device());
        Split {
            dataset: self.dataset,
            pixels: self.pixels.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
        }
    }
}

/// The presets' `seed`, which also draws their train/validation split: commands without a
/// teacher (`baseline real`, the real-data NAS proxy and truth) split the data the same way.
pub const DEFAULT_SPLIT_SEED: u64 = 0;

#[derive(Debug)]
pub struct Dataset {
    pub name: DatasetName,
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    /// The sha256 of the data as read (each IDX file's content; CIFAR-10's records), as four
    /// integers, as a run's checkpoint records it: data of the same sizes but other content is
    /// another dataset to a run.
    pub digest: [i64; 4],
}

/// [`Dataset::digest`] of `parts`, in order.
fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [i64; 4] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let bytes = hasher.finalize();
    std::array::from_fn(|i| i64::from_be_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes")))
}

/// A size asked of the data that its images cannot fill (a batch, or a validation split): where
/// a config key asks it (`key`), an error of the config, which a command names as it names the
/// others.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TooFewImages {
    pub key: Option<&'static str>,
    pub message: String,
}

impl Dataset {
    /// Its training, validation and test split sizes, as a run's checkpoint records them: a run
    /// resumed on other data is refused.
    pub fn sizes(&self) -> [i64; 3] {
        [self.train.len(), self.valid.len(), self.test.len()].map(|n| n as i64)
    }

    /// Refuses real training batches of `batch` images, set by `what` (a flag or config key with
    /// its value; `key`, the config key if one sets it), that the training split read from `dir`
    /// cannot fill: batches are drawn without replacement.
    pub fn check_batch(
        &self,
        key: Option<&'static str>,
        what: &str,
        batch: usize,
        dir: &Path,
    ) -> Result<(), TooFewImages> {
        let n = self.train.len();
        if batch > n {
            let message = format!(
                "{what}: more than the {} of {} (after {} held out for validation); expected at most {n}",
                crate::text::count(n, "training image"),
                dir.display(),
                self.valid.len()
            );
            return Err(TooFewImages { key, message });
        }
        Ok(())
    }

    /// Loads the dataset's training and test files from `dir` (MNIST's and Fashion-MNIST's four
    /// IDX files, plain or `.gz`; CIFAR-10's binary batches) and holds out `valid_size` training
    /// images, chosen by a permutation seeded with `split_seed`, for validation.
    pub fn load(name: DatasetName, dir: &Path, valid_size: usize, split_seed: u64, device: Device) -> Result<Dataset> {
        let (full_train, test, digest) = match name {
            DatasetName::Cifar10 => load_cifar(dir, device)?,
            _ => load_idx(name, dir, device)?,
        };
        let n = full_train.len();
        if valid_size >= n {
            // A slice of the dataset meets the full dataset's split unless told otherwise.
            let default = match valid_size == name.default_valid_size() {
                true => format!("{name}'s default, "),
                false => String::new(),
            };
            let message = format!(
                "valid_size {valid_size} ({default}validation images held out of the training set: config key `valid_size`, or `--valid-size` of `baseline real` and `nas`) leaves no training images in {} ({n} images); expected fewer than {n}",
                dir.display()
            );
            return Err(TooFewImages { key: Some("valid_size"), message }.into());
        }
        let mut order: Vec<i64> = (0..n as i64).collect();
        order.shuffle(&mut StdRng::seed_from_u64(split_seed));
        let (valid_idx, train_idx) = order.split_at(valid_size);
        Ok(Dataset { name, train: full_train.subset(train_idx), valid: full_train.subset(valid_idx), test, digest })
    }
}

fn load_cifar(dir: &Path, device: Device) -> Result<(Split, Split, [i64; 4])> {
    let (train, test) = cifar::read_dir(dir, "--data-dir")?;
    let digest = digest([&train.labels, &train.pixels, &test.labels, &test.pixels].map(Vec::as_slice));
    let split = |r: cifar::Records| {
        let n = r.len() as i64;
        let pixels = Tensor::from_slice(&r.pixels).view([n, 3, 32, 32]).to_device(device);
        let labels = Tensor::from_slice(&r.labels).to_kind(Kind::Int64).to_device(device);
        Split { dataset: DatasetName::Cifar10, pixels, labels }
    };
    Ok((split(train), split(test), digest))
}

/// Where a relative folder was looked for from, for an error that it is not there: a run's
/// default `data/<name>` was found from the folder it was trained from, and from another the
/// same path leads elsewhere.
pub(crate) fn looked_from(dir: &Path) -> String {
    match dir.is_relative() {
        true => std::env::current_dir().map(|cwd| format!(" (from {})", cwd.display())).unwrap_or_default(),
        false => String::new(),
    }
}

/// gtn's own output file in `dir`, if it holds one: a run's, a comparison's or a search's folder.
fn gtn_output_in(dir: &Path) -> Option<&'static str> {
    let outputs = [
        crate::checkpoint::CONFIG_FILE,
        crate::checkpoint::CHECKPOINT_FILE,
        crate::compare::CURVES_JSON,
        crate::compare::SUMMARY_JSON,
        crate::nas::search::PROXY_FILE,
        crate::nas::search::TRUTH_FILE,
    ];
    outputs.into_iter().find(|file| dir.join(file).is_file())
}

/// The data files of a dataset other than `name` in `dir`, in words, and the flag that reads
/// them, where `dir` holds none of `name`'s: CIFAR-10's batches and MNIST's IDX files have
/// different names, so a folder of one read as the other (a forgotten `--dataset`) misses every
/// file.
fn other_dataset_in(dir: &Path, name: DatasetName) -> Option<(&'static str, String)> {
    let idx = IDX_STEMS.iter().any(|stem| dir.join(stem).is_file() || dir.join(format!("{stem}.gz")).is_file());
    let cifar = cifar::TRAIN_FILES.iter().chain([&cifar::TEST_FILE]).any(|file| dir.join(file).is_file());
    match name {
        DatasetName::Cifar10 if idx && !cifar => {
            Some(("MNIST-format IDX files", "--dataset mnist` or `--dataset fashion-mnist".to_owned()))
        }
        DatasetName::Mnist | DatasetName::FashionMnist if !idx => {
            let held = match cifar {
                true => Some("CIFAR-10's binary batches"),
                false => cifar::unpacked_in(dir),
            };
            held.map(|held| (held, format!("--dataset {}", DatasetName::Cifar10)))
        }
        _ => None,
    }
}

/// The four IDX files of MNIST and Fashion-MNIST, without `.gz`.
const IDX_STEMS: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Another dataset's data where `wanted`'s was expected: a forgotten `--dataset`, or another
/// folder than meant. Its advice suits a command that may read either dataset; one bound to a
/// run's dataset words its own ([`crate::checkpoint::runs_data`]).
#[derive(Debug, thiserror::Error)]
#[error("{what}; point {flag} at {wanted}'s folder (or, to read this one, `{reads}`)")]
pub struct OtherDataset {
    /// The file or folder and what it holds.
    pub what: String,
    pub wanted: DatasetName,
    /// The flag that named the folder, and the one that reads the other dataset.
    pub flag: &'static str,
    pub reads: String,
}

/// Where `name`'s data files are missing from `dir` (named by `flag`), an error for a folder that
/// holds something else gtn knows: its own output, or another dataset's files. Fetching `name`
/// into it (the advice for any other folder) would only mix the two.
pub(crate) fn check_not_other_data(dir: &Path, name: DatasetName, flag: &'static str) -> Result<()> {
    if let Some(file) = gtn_output_in(dir) {
        bail!(
            "{}: holds gtn's output ({file}), not {name}'s data files; point {flag} at {name}'s folder",
            dir.display()
        );
    }
    if let Some((files, reads)) = other_dataset_in(dir, name) {
        let what = format!("{}: holds {files}, not {name}'s data files", dir.display());
        return Err(OtherDataset { what, wanted: name, flag, reads }.into());
    }
    Ok(())
}

/// Refuses to fetch `name` into `dir` where it holds gtn's output or another dataset's files,
/// which the fetched files would be mixed with.
pub(crate) fn check_fetch_into(dir: &Path, name: DatasetName) -> Result<()> {
    let held = match (gtn_output_in(dir), other_dataset_in(dir, name)) {
        (Some(file), _) => format!("gtn's output ({file})"),
        (None, Some((files, _))) => files.to_owned(),
        (None, None) => return Ok(()),
    };
    bail!(
        "{}: holds {held}; fetch {name} into a folder of its own (its default is {})",
        dir.display(),
        name.default_dir().display()
    )
}

/// What reading a dataset's IDX files gathers besides their content: each file's sha256, in
/// order (the dataset's digest), and the files of the published size but other content.
#[derive(Default)]
struct IdxReading {
    shas: Vec<String>,
    unpublished: Vec<String>,
}

fn load_idx(name: DatasetName, dir: &Path, device: Device) -> Result<(Split, Split, [i64; 4])> {
    crate::config::check_not_a_file(dir, "--data-dir")?;
    if !dir.is_dir() {
        bail!(
            "{}: data folder not found{}; point --data-dir at the folder, or run `gtn data fetch {name} --dir {}` first",
            dir.display(),
            looked_from(dir),
            crate::text::shell_word(dir)
        );
    }
    let mut reading = IdxReading::default();
    let train = load_split(name, dir, "train", device, &mut reading)?;
    let test = load_split(name, dir, "t10k", device, &mut reading)?;
    if let Some(warning) = unpublished_warning(name, dir, &reading.unpublished).filter(|_| first_warning(dir)) {
        tracing::warn!("{warning}");
    }
    Ok((train, test, digest(reading.shas.iter().map(String::as_bytes))))
}

/// Whether `dir` is warned of for the first time in this process: a command may read its data
/// once per teacher or phase (compare, nas search), and one warning says it.
fn first_warning(dir: &Path) -> bool {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let first = !warned.iter().any(|d| d == dir);
    if first {
        warned.push(dir.to_path_buf());
    }
    first
}

/// One warning for the files of `dir` that hold as many items as `name`'s published ones but
/// other content (`unpublished`): most likely a damaged copy, which the loader reads as given
/// like any other content, or another dataset of the same size (KMNIST, a permuted MNIST).
fn unpublished_warning(name: DatasetName, dir: &Path, unpublished: &[String]) -> Option<String> {
    let files = match unpublished {
        [] => return None,
        [one] => format!("{one} holds"),
        all => format!("{} hold", all.join(", ")),
    };
    Some(format!(
        "{}: {files} as many items as {name}'s published files but other content (sha256): a damaged copy, or another dataset of the same size; for the published files, move these away and run `gtn data fetch {name} --dir {}`",
        dir.display(),
        crate::text::shell_word(dir)
    ))
}

fn find_file(name: DatasetName, dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    let plain = dir.join(stem);
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        check_not_other_data(dir, name, "--data-dir")?;
        // The two datasets' files share names: a folder of the other's missing a file is no
        // folder to fetch this one into (fetch would refuse).
        if let Some((path, other)) = other_published_file(dir, name) {
            let what = format!("{}: missing, and {} is {other}'s", gz.display(), path.display());
            return Err(
                OtherDataset { what, wanted: name, flag: "--data-dir", reads: format!("--dataset {other}") }.into()
            );
        }
        bail!(
            "{}: missing (also looked for {stem}); run `gtn data fetch {} --dir {}`",
            gz.display(),
            name.as_str(),
            crate::text::shell_word(dir)
        )
    }
}

/// The first file in `dir` under one of `name`'s names that is the other published dataset's.
fn other_published_file(dir: &Path, name: DatasetName) -> Option<(PathBuf, DatasetName)> {
    let files = IDX_STEMS.iter().flat_map(|stem| [dir.join(format!("{stem}.gz")), dir.join(stem)]);
    files.filter(|path| path.is_file()).find_map(|path| {
        let content = idx::read_bytes(&path).ok()?;
        let (other, _) = fetch::identify(&fetch::sha256_hex(&content)).filter(|&(other, _)| other != name)?;
        Some((path, other))
    })
}

/// The IDX file `stem` of dataset `name` in `dir`. A file of the published datasets is checked
/// to be this one (not the other dataset's, not the other split's); any other content (a slice,
/// a dataset of one's own in the same format) is read as given, its name put in
/// `reading.unpublished` where it holds as many items as the published file (a damaged copy, or
/// another dataset).
fn read_idx(
    name: DatasetName,
    dir: &Path,
    stem: &str,
    ndims: usize,
    reading: &mut IdxReading,
) -> Result<(PathBuf, idx::Idx)> {
    let path = find_file(name, dir, stem)?;
    let fetch_again = format!("run `gtn data fetch {name} --dir {}` again", crate::text::shell_word(dir));
    let data = match idx::read(&path, ndims) {
        Ok(data) => data,
        Err(e @ idx::IdxError::Io { .. }) => return Err(e.into()),
        // A folder of one's own may hold such a file too: fetching would replace it.
        Err(corrupt @ (idx::IdxError::Gzip { .. } | idx::IdxError::Format { .. })) => {
            bail!("{corrupt}; if `gtn data fetch` wrote it, {fetch_again}")
        }
    };
    let sha = fetch::content_sha(&data);
    let identified = fetch::identify(&sha);
    reading.shas.push(sha);
    if identified.is_none() && data.dims.first() == Some(&fetch::published_count(name, stem)) {
        reading.unpublished.push(file_name(&path));
    }
    if let Some((other, file)) = identified.filter(|&found| found != (name, stem)) {
        let what = format!("{}: is {other}'s {file}, expected {name}'s {stem}", path.display());
        if other == name {
            bail!("{what}; {fetch_again}");
        }
        return Err(OtherDataset { what, wanted: name, flag: "--data-dir", reads: format!("--dataset {other}") }.into());
    }
    Ok((path, data))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn load_split(name: DatasetName, dir: &Path, prefix: &str, device: Device, reading: &mut IdxReading) -> Result<Split> {
    let (images_path, images) = read_idx(name, dir, &format!("{prefix}-images-idx3-ubyte"), 3, reading)?;
    let (labels_path, labels) = read_idx(name, dir, &format!("{prefix}-labels-idx1-ubyte"), 1, reading)?;
    if images.dims[1..] != [28, 28] {
        bail!("{}: images are {:?}, expected 28x28", images_path.display(), &images.dims[1..]);
    }
    if images.dims[0] == 0 {
        bail!("{}: 0 images, expected at least 1", images_path.display());
    }
    if images.dims[0] != labels.dims[0] {
        bail!(
            "{}: {} labels for {} images in {}; expected one label per image",
            labels_path.display(),
            labels.dims[0],
            images.dims[0],
            images_path.display()
        );
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l > 9) {
        bail!("{}: label {bad} outside 0..=9; expected a class from 0 to 9", labels_path.display());
    }
    let n = images.dims[0] as i64;
    let pixels = Tensor::from_slice(&images.data).view([n, 1, 28, 28]).to_device(device);
    let labels = Tensor::from_slice(&labels.data).to_kind(Kind::Int64).to_device(device);
    Ok(Split { dataset: name, pixels, labels })
}

/// Draws batches without replacement within a batch, from a seeded stream, so a run (and a
/// resumed run) sees the same batches for the same seed.
#[derive(Debug)]
pub struct BatchSampler {
    rng: StdRng,
    n: usize,
}

impl BatchSampler {
    pub fn new(n: usize, seed: u64) -> BatchSampler {
        BatchSampler { rng: StdRng::seed_from_u64(seed), n }
    }

    /// `batch` distinct indices; at most as many as there are images ([`Dataset::check_batch`]).
    pub fn indices(&mut self, batch: usize, device: Device) -> Tensor {
        assert!(batch <= self.n, "a batch of {batch} from {} images", self.n);
        let idx: Vec<i64> =
            rand::seq::index::sample(&mut self.rng, self.n, batch).into_iter().map(|i| i as i64).collect();
        Tensor::from_slice(&idx).to_device(device)
    }
}

/// The committed slice of real MNIST (512 training, 256 test images) used by the tests.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist")
}

/// The fixture, in a new folder, with its training set cut to its first `n` images.
#[cfg(test)]
pub fn fixture_slice(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (file, ndims) in [
        ("train-images-idx3-ubyte", 3),
        ("train-labels-idx1-ubyte", 1),
        ("t10k-images-idx3-ubyte", 3),
        ("t10k-labels-idx1-ubyte", 1),
    ] {
        let mut idx = idx::read(&fixture_dir().join(format!("{file}.gz")), ndims).unwrap();
        if file.starts_with("train") {
            let per_item: usize = idx.dims[1..].iter().product();
            idx.dims[0] = n;
            idx.data.truncate(n * per_item);
        }
        std::fs::write(dir.path().join(file), idx::encode(&idx)).unwrap();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(valid: usize, seed: u64) -> Dataset {
        Dataset::load(DatasetName::Mnist, &fixture_dir(), valid, seed, Device::Cpu).unwrap()
    }

    #[test]
    fn loads_fixture_normalised() {
        let d = fixture(112, 0);
        assert_eq!(d.train.pixels.size(), [400, 1, 28, 28]);
        assert_eq!(d.train.pixels.kind(), Kind::Uint8);
        assert_eq!(d.valid.len(), 112);
        let images = d.test.images(0, 256);
        assert_eq!(images.size(), [256, 1, 28, 28]);
        let mean = images.mean(Kind::Float).double_value(&[]);
        assert!(mean.abs() < 0.2, "normalised mean {mean}");
        let min = images.min().double_value(&[]);
        assert!((min + 0.1307 / 0.3081).abs() < 1e-5, "background pixel {min}");
        // The first MNIST test digit is a 7 and the first training digit a 5.
        assert_eq!(d.test.labels.int64_value(&[0]), 7);
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let a = fixture(100, 1);
        let b = fixture(100, 1);
        let c = fixture(100, 2);
        assert!(a.valid.pixels.equal(&b.valid.pixels));
        assert!(!a.valid.pixels.equal(&c.valid.pixels));
        let sum = |s: &Split| s.pixels.sum(Kind::Int64).int64_value(&[]);
        let all = Dataset::load(DatasetName::Mnist, &fixture_dir(), 1, 1, Device::Cpu).unwrap();
        assert_eq!(sum(&a.train) + sum(&a.valid), sum(&all.train) + sum(&all.valid));
    }

    #[test]
    fn missing_folder_and_file_errors_name_them() {
        let err = Dataset::load(DatasetName::Mnist, Path::new("/nonexistent/mnist"), 10, 0, Device::Cpu).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/mnist: data folder not found; point --data-dir at"), "{err}");
        // A relative one says where it was looked for.
        let err = Dataset::load(DatasetName::Mnist, Path::new("no/mnist"), 10, 0, Device::Cpu).unwrap_err();
        let cwd = std::env::current_dir().unwrap();
        assert!(err.to_string().starts_with(&format!("no/mnist: data folder not found (from {})", cwd.display())));
        let dir = tempfile::tempdir().unwrap();
        let err = Dataset::load(DatasetName::Mnist, dir.path(), 10, 0, Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("train-images-idx3-ubyte.gz: missing"), "{err}");
        // A run's folder given for the data's is named as such, not advised to take the data.
        std::fs::write(dir.path().join(crate::checkpoint::CONFIG_FILE), "").unwrap();
        for name in [DatasetName::Mnist, DatasetName::Cifar10] {
            let err = Dataset::load(name, dir.path(), 10, 0, Device::Cpu).unwrap_err().to_string();
            let expected = format!("holds gtn's output (config.toml), not {name}'s data files; point --data-dir at");
            assert!(err.starts_with(&format!("{}: {expected}", dir.path().display())), "{err}");
        }
        // So is a comparison's folder, whose curves are in its methods' folders.
        std::fs::remove_file(dir.path().join(crate::checkpoint::CONFIG_FILE)).unwrap();
        std::fs::write(dir.path().join(crate::compare::SUMMARY_JSON), "{}").unwrap();
        let err = Dataset::load(DatasetName::Mnist, dir.path(), 10, 0, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("holds gtn's output (summary.json)"), "{err}");
        // Another dataset's files, which a forgotten --dataset reads as this one's: no fetch into
        // them either.
        std::fs::remove_file(dir.path().join(crate::compare::SUMMARY_JSON)).unwrap();
        std::fs::write(dir.path().join(cifar::TRAIN_FILES[0]), "").unwrap();
        let err = Dataset::load(DatasetName::Mnist, dir.path(), 10, 0, Device::Cpu).unwrap_err().to_string();
        let expected = "holds CIFAR-10's binary batches, not mnist's data files; point --data-dir at mnist's folder (or, to read this one, `--dataset cifar10`)";
        assert!(err.ends_with(expected), "{err}");
        let err = fetch::fetch(DatasetName::FashionMnist, dir.path()).unwrap_err().to_string();
        let expected = "holds CIFAR-10's binary batches; fetch fashion-mnist into a folder of its own (its default is data/fashion-mnist)";
        assert!(err.ends_with(expected), "{err}");
        // So do CIFAR-10's downloads as unpacked: the binary archive's folder, the python version.
        let parent = tempfile::tempdir().unwrap();
        std::fs::create_dir(parent.path().join("cifar-10-batches-bin")).unwrap();
        std::fs::write(parent.path().join("cifar-10-batches-bin").join(cifar::TEST_FILE), "").unwrap();
        let err = Dataset::load(DatasetName::Mnist, parent.path(), 10, 0, Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("holds CIFAR-10's binary batches in its folder cifar-10-batches-bin, not mnist's"),
            "{err}"
        );
        let err = fetch::fetch(DatasetName::Mnist, parent.path()).unwrap_err().to_string();
        assert!(
            err.contains("holds CIFAR-10's binary batches in its folder cifar-10-batches-bin; fetch mnist"),
            "{err}"
        );
        std::fs::create_dir(parent.path().join("cifar-10-batches-py")).unwrap();
        std::fs::remove_dir_all(parent.path().join("cifar-10-batches-bin")).unwrap();
        let err = Dataset::load(DatasetName::Mnist, parent.path(), 10, 0, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("holds CIFAR-10's python version (pickled batches), not mnist's"), "{err}");
    }

    /// Files of the published size that are no published file are warned of, once per folder,
    /// as a damaged copy or another dataset of that size (a slice is not).
    #[test]
    fn a_published_size_with_other_content_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let published = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist-published");
        let stem = "t10k-labels-idx1-ubyte";
        let mut content = idx::read_bytes(&published.join(format!("{stem}.gz"))).unwrap();
        let read = |dir: &Path| {
            let mut reading = IdxReading::default();
            read_idx(DatasetName::Mnist, dir, stem, 1, &mut reading).unwrap();
            reading.unpublished
        };
        assert!(read(&published).is_empty(), "the published file");
        *content.last_mut().unwrap() ^= 1;
        std::fs::write(dir.path().join(stem), &content).unwrap();
        assert_eq!(read(dir.path()), [stem]);
        assert!(read(&fixture_dir()).is_empty(), "a slice");
        let warning = unpublished_warning(DatasetName::Mnist, Path::new("d"), &[stem.into()]).unwrap();
        assert_eq!(warning, format!("d: {stem} holds as many items as mnist's published files but other content (sha256): a damaged copy, or another dataset of the same size; for the published files, move these away and run `gtn data fetch mnist --dir d`"));
        let two = unpublished_warning(DatasetName::Mnist, Path::new("d"), &["a".into(), "b".into()]).unwrap();
        assert!(two.starts_with("d: a, b hold as many"), "{two}");
        assert_eq!(unpublished_warning(DatasetName::Mnist, Path::new("d"), &[]), None);
        let once = dir.path().join("once");
        assert!(first_warning(&once) && !first_warning(&once), "once per folder");
        assert!(first_warning(&dir.path().join("other")));
    }

    #[test]
    fn a_published_file_of_another_dataset_or_split_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture_dir()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        let fashion = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist");
        let labels = "t10k-labels-idx1-ubyte.gz";
        std::fs::copy(fashion.join(labels), dir.path().join(labels)).unwrap();
        let load = |name| Dataset::load(name, dir.path(), 10, 0, Device::Cpu).unwrap_err().to_string();
        let err = load(DatasetName::Mnist);
        let expected = "t10k-labels-idx1-ubyte.gz: is fashion-mnist's t10k-labels-idx1-ubyte, expected mnist's t10k-labels-idx1-ubyte; point --data-dir at mnist's folder (or, to read this one, `--dataset fashion-mnist`)";
        assert!(err.ends_with(expected), "{err}");
        // In its place: the next check, the slice's images against 10,000 labels, speaks.
        let err = load(DatasetName::FashionMnist);
        assert!(err.contains("10000 labels for"), "{err}");
        std::fs::copy(fashion.join(labels), dir.path().join("train-labels-idx1-ubyte.gz")).unwrap();
        let err = load(DatasetName::FashionMnist);
        let expected = "is fashion-mnist's t10k-labels-idx1-ubyte, expected fashion-mnist's train-labels-idx1-ubyte; run `gtn data fetch fashion-mnist --dir";
        assert!(err.contains(expected), "{err}");
        // A file missing beside the other dataset's: no advice to fetch into that folder.
        std::fs::remove_file(dir.path().join("train-images-idx3-ubyte.gz")).unwrap();
        let err = load(DatasetName::Mnist);
        let expected = "train-images-idx3-ubyte.gz: missing, and ";
        assert!(err.contains(expected) && err.contains("is fashion-mnist's; point --data-dir at mnist's folder (or, to read this one, `--dataset fashion-mnist`)"), "{err}");
    }

    #[test]
    fn rejects_oversized_validation_split() {
        let err = Dataset::load(DatasetName::Mnist, &fixture_dir(), 512, 0, Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("valid_size 512 (validation images held out of the training set: config key `valid_size`, or `--valid-size` of `baseline real` and `nas`) leaves no training images"), "{err}");
        let err = Dataset::load(DatasetName::Mnist, &fixture_dir(), 10_000, 0, Device::Cpu).unwrap_err();
        assert!(err.to_string().starts_with("valid_size 10000 (mnist's default, validation images held out"), "{err}");
    }

    fn write_split(dir: &Path, n_img: usize, side: usize, n_lab: usize, label: u8) {
        let img = idx::Idx { dims: vec![n_img, side, side], data: vec![0; n_img * side * side] };
        let lab = idx::Idx { dims: vec![n_lab], data: vec![label; n_lab] };
        for prefix in ["train", "t10k"] {
            std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), idx::encode(&img)).unwrap();
            std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), idx::encode(&lab)).unwrap();
        }
    }

    #[test]
    fn rejects_inconsistent_files() {
        let dir = tempfile::tempdir().unwrap();
        let load = || Dataset::load(DatasetName::Mnist, dir.path(), 1, 0, Device::Cpu).unwrap_err().to_string();
        write_split(dir.path(), 4, 28, 3, 1);
        assert!(
            load().contains("3 labels for 4 images") && load().ends_with("; expected one label per image"),
            "{}",
            load()
        );
        write_split(dir.path(), 4, 27, 4, 1);
        assert!(load().contains("expected 28x28"), "{}", load());
        write_split(dir.path(), 4, 28, 4, 12);
        assert!(load().ends_with("label 12 outside 0..=9; expected a class from 0 to 9"), "{}", load());
        write_split(dir.path(), 0, 28, 0, 1);
        assert!(load().contains("train-images-idx3-ubyte: 0 images, expected at least 1"), "{}", load());
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), [0u8, 0, 8]).unwrap();
        assert!(load().contains("train-images-idx3-ubyte: not an IDX file"), "{}", load());
        let fetch_again =
            format!("; if `gtn data fetch` wrote it, run `gtn data fetch mnist --dir {}` again", dir.path().display());
        assert!(load().ends_with(&fetch_again), "{}", load());
        // A download cut short: the gzip stream ends early.
        let whole = std::fs::read(fixture_dir().join("train-images-idx3-ubyte.gz")).unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), &whole[..whole.len() / 2]).unwrap();
        let err = load();
        assert!(err.contains("train-images-idx3-ubyte.gz: corrupt or cut-short gzip data ("), "{err}");
        assert!(err.ends_with(&fetch_again), "{err}");
    }

    #[test]
    fn loads_cifar_fixture_with_per_channel_normalisation() {
        let dir = cifar::tests::fixture_folder();
        let d = Dataset::load(DatasetName::Cifar10, dir.path(), 10, 0, Device::Cpu).unwrap();
        assert_eq!(d.train.pixels.size(), [90, 3, 32, 32]);
        assert_eq!(d.valid.len(), 10);
        assert_eq!(Vec::<i64>::try_from(d.test.labels.narrow(0, 0, 4)).unwrap(), [3, 8, 8, 0]);
        // A record is a label byte, then the R, G and B planes of 32 x 32 bytes, row by row.
        let raw = std::fs::read(cifar::fixture_file()).unwrap();
        let image = d.test.images(0, 1);
        let stats = [(0.4914, 0.2470), (0.4822, 0.2435), (0.4465, 0.2616)];
        for (channel, y, x) in [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 0, 1), (2, 1, 0), (1, 31, 31)] {
            let byte = f64::from(raw[1 + channel * 1024 + y * 32 + x]);
            let (mean, std) = stats[channel];
            let value = image.double_value(&[0, channel as i64, y as i64, x as i64]);
            assert!((value - (byte / 255.0 - mean) / std).abs() < 1e-5, "[{channel},{y},{x}]: {value} vs byte {byte}");
        }
        let err = Dataset::load(DatasetName::Cifar10, Path::new("/none"), 10, 0, Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("CIFAR-10 folder not found"), "{err}");
    }

    #[test]
    fn sampler_is_seeded_and_has_no_repeats_within_a_batch() {
        let a = BatchSampler::new(50, 3).indices(20, Device::Cpu);
        let b = BatchSampler::new(50, 3).indices(20, Device::Cpu);
        assert!(a.equal(&b));
        assert_eq!(Vec::<i64>::try_from(a.unique_dim(0, true, false, false).0).unwrap().len(), 20);
        assert!(!a.equal(&BatchSampler::new(50, 4).indices(20, Device::Cpu)));
    }
}
