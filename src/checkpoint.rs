//! Checkpoints: `config.toml` (the full config: written at the start, and again only when a
//! time budget lowers `meta_iters`) and `checkpoint.safetensors`
//! (teacher parameters, outer-optimiser state and the iteration count, with the config they were
//! saved under as metadata), each replaced atomically so an interrupted write never destroys the
//! last good one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, SeedableRng};
use serde::{de::DeserializeOwned, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::Config;
use crate::optim::Adam;
use crate::teacher::Teacher;

pub const CONFIG_FILE: &str = "config.toml";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The per-iteration CSV log of `gtn train` and `gtn rl train`.
pub const LOG_FILE: &str = "log.csv";

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Whether `dir` holds a run to continue or keep: a checkpoint, or a log with rows (a run whose
/// checkpoint was lost). A config with at most a log header is what a start interrupted before
/// its first save leaves (starting writes them and saves at once): nothing to keep, so a new
/// start may replace it. An unreadable log counts as a run.
pub fn holds_run(dir: &Path) -> bool {
    checkpoint_path(dir).exists()
        || match std::fs::read_to_string(dir.join(LOG_FILE)) {
            Ok(text) => text.lines().nth(1).is_some(),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
}

/// Whether `dir` holds only what a start interrupted before its first save leaves: a config,
/// no run. `--resume` starts such a run again as it was configured.
pub fn never_saved(dir: &Path) -> bool {
    !holds_run(dir) && dir.join(CONFIG_FILE).is_file()
}

/// An exclusive lock on a run folder, held while a trainer writes it: a second process training
/// in the same folder would interleave its log rows and checkpoints with the first's. Released
/// when dropped, or when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _folder: std::fs::File,
}

/// Locks the run folder `dir`, which must exist, for this process.
pub fn lock_run(dir: &Path) -> Result<RunLock> {
    let folder = std::fs::File::open(dir).map_err(|e| match dir.exists() {
        false => anyhow::anyhow!("{}: no such folder; expected a training run's folder", dir.display()),
        true => anyhow::anyhow!("{}: cannot open: {e}", dir.display()),
    })?;
    // Said for `--out` and `--resume` alike: only a new run has somewhere else to go.
    let busy = "another gtn process is training in this folder; wait for it to end (a new run can take another --out)";
    if crate::atomic::lock_exclusive(&folder, dir, busy)? {
        // Only the lock's holder writes these: any temporary one is an interrupted save's.
        for file in [CHECKPOINT_FILE, CONFIG_FILE] {
            crate::atomic::remove_leftovers_now(dir, &format!(".{file}.tmp-"));
        }
    }
    Ok(RunLock { _folder: folder })
}

/// Refuses to start a run in `dir` over files it must not replace: another run's, or a
/// `config.toml` that is not a `C` (someone else's file). What a start interrupted before its
/// first save left (its own config, at most a log header) may be replaced.
pub fn check_startable<C: DeserializeOwned>(dir: &Path) -> Result<()> {
    if holds_run(dir) {
        bail!("{}: already holds a run's files; remove them or choose another --out", dir.display());
    }
    // A search's results (or `nas truth`'s, `nas merge`'s under its names): a run's files would
    // stop the search from resuming, as it refuses a run's folder.
    if let Some(file) =
        [crate::nas::search::PROXY_FILE, crate::nas::search::TRUTH_FILE].iter().find(|f| dir.join(f).exists())
    {
        bail!("{}: holds NAS results ({file}); choose another --out", dir.display());
    }
    let path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{}: cannot read ({e}); remove it or choose another --out", path.display()),
        Ok(text) => crate::config::parse_toml::<C>(&text).map(drop).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a config this command reads ({e}); remove it or choose another --out",
                path.display()
            )
        }),
    }
}

/// Makes `dir` a new run's folder, locked for this process: its config (`config_toml`, a `C`)
/// and a log holding only `log_header`. The caller checked [`check_startable`] before its costly
/// set-up; it is checked again here, under the lock, as another process may have started a run
/// in `dir` meanwhile.
pub fn start_run<C: DeserializeOwned>(dir: &Path, config_toml: &str, log_header: &str) -> Result<RunLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let lock = lock_run(dir)?;
    check_startable::<C>(dir)?;
    crate::atomic::write(&dir.join(CONFIG_FILE), config_toml.as_bytes())?;
    crate::atomic::write(&dir.join(LOG_FILE), format!("{log_header}\n").as_bytes())?;
    Ok(lock)
}

/// Whether `file` holds the tensors of a teaching set `gtn export` writes.
fn is_teaching_set(file: &StoredTensors) -> bool {
    ["images", "labels", "lr", "momentum"].iter().all(|name| file.tensors.contains_key(*name))
}

/// The metadata key under which a checkpoint file keeps the config (TOML) it was saved under.
const SAVED_CONFIG: &str = "config";

/// The tensor in which an image run's checkpoint keeps the sizes of its data's training,
/// validation and test splits ([`crate::data::Dataset::sizes`]). A tensor, not metadata:
/// safetensors writes its metadata map in no fixed order, so a second key would make the same
/// run's checkpoint bytes (its identity) vary between saves.
const DATA_SIZES: &str = "data.sizes";
/// The data's [`crate::data::Dataset::digest`], beside its sizes.
const DATA_DIGEST: &str = "data.digest";

/// Writes `tensors` to the checkpoint file `path` atomically, with `config` (TOML) as its
/// metadata: what the run was when these were saved, so that a `config.toml` edited since can be
/// told from it. The file is put together in memory (a paper-sized checkpoint is tens of MB), so
/// the sha256 it returns is of the very bytes written, with no second read.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)], config: &str) -> Result<String> {
    write_tensors_with(path, tensors, (SAVED_CONFIG, config))
}

/// Writes `tensors` to `path` atomically (as safetensors, on the CPU) with one metadata entry,
/// `(key, value)`: one, as safetensors writes a map of several in no fixed order. Returns the
/// file's sha256.
pub fn write_tensors_with<N: AsRef<str>>(
    path: &Path,
    tensors: &[(N, Tensor)],
    metadata: (&str, &str),
) -> Result<String> {
    let cannot = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: cannot write: {e}", path.display());
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.detach().to_device(Device::Cpu).contiguous();
            let dtype = t.kind().try_into().map_err(|e| cannot(&e))?;
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((name.as_ref(), HostTensor { t, dtype, shape }))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(HashMap::from([(metadata.0.to_string(), metadata.1.to_string())]));
    let bytes = safetensors::tensor::serialize(views, &metadata).map_err(|e| cannot(&e))?;
    crate::atomic::write(path, &bytes)?;
    Ok(crate::data::fetch::sha256_hex(&bytes))
}

/// A contiguous CPU tensor as safetensors writes it: its bytes are copied out when written.
struct HostTensor {
    t: Tensor,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

impl safetensors::View for HostTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut bytes = vec![0u8; self.data_len()];
        self.t.copy_data_u8(&mut bytes, self.t.numel());
        bytes.into()
    }

    fn data_len(&self) -> usize {
        self.t.numel() * self.t.kind().elt_size_in_bytes()
    }
}

/// A checkpoint file as read: its tensors (on the CPU), the config it was saved under (absent
/// from the checkpoints of builds before it was stored) and the sha256 of its bytes.
pub struct StoredTensors {
    pub tensors: HashMap<String, Tensor>,
    pub saved_config: Option<String>,
    pub sha256: String,
}

/// Reads the checkpoint file `path`, naming it in any error.
pub fn read_tensors(path: &Path) -> Result<StoredTensors> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let corrupt =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: corrupt or not a safetensors file: {e}", path.display());
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&in_words(&e)))?;
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| Ok((name, Tensor::try_from(view).map_err(|e| corrupt(&e))?)))
        .collect::<Result<_>>()?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&in_words(&e)))?;
    let saved_config = metadata.metadata().as_ref().and_then(|m| m.get(SAVED_CONFIG).cloned());
    Ok(StoredTensors { tensors, saved_config, sha256: crate::data::fetch::sha256_hex(&bytes) })
}

/// What is wrong with a file safetensors refuses, for a user (its own words are its variants'
/// names, `MetadataIncompleteBuffer`).
fn in_words(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::InvalidHeaderLength | E::MetadataIncompleteBuffer => {
            "its size is not the one its header gives (cut short, or bytes added)".into()
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization | E::HeaderTooLarge => {
            "it does not start with a safetensors header".into()
        }
        E::InvalidOffset(_) | E::TensorInvalidInfo | E::InvalidTensorView(..) | E::ValidationOverflow => {
            "its header's tensors do not fit its data".into()
        }
        other => format!("{other:?}"),
    }
}

/// Refuses a run whose `config.toml` (`current`) was edited, since its checkpoint was saved, in
/// a key outside `editable`: the saved parameters belong to the config they were trained under
/// (another seed redraws the validation split and every later iteration's draws; another shape
/// would be caught, another learning rate schedule or batch would not). Checkpoints that do not
/// store their config are read as they are.
pub fn check_edits<C: Serialize + DeserializeOwned>(
    dir: &Path,
    stored: &StoredTensors,
    current: &C,
    editable: &[&str],
) -> Result<()> {
    let Some(saved) = &stored.saved_config else { return Ok(()) };
    let file = dir.join(CONFIG_FILE);
    // Only on failure: whose run this is, told by the current config's keys.
    let this = || toml::to_string(current).ok().and_then(|text| run_command_of(&text));
    let saved: C = crate::config::parse_toml(saved).map_err(|e| match run_command_of(saved) {
        // Named, not refused key by key: a copied checkpoint's keys are all another command's.
        Some(other) if Some(other) != this() => anyhow::anyhow!(
            "{}: is a `{other}` run's checkpoint (the config stored in it is), not the checkpoint of the run {} describes; put that run's checkpoint back",
            checkpoint_path(dir).display(),
            file.display()
        ),
        _ => anyhow::anyhow!(
            "{}: the config stored in it is not this command's ({e}); the checkpoint is another kind of run's, or another gtn version's",
            checkpoint_path(dir).display()
        ),
    })?;
    let edited: Vec<String> = crate::config::differences(&saved, current)?
        .into_iter()
        .filter(|(key, _, _)| !editable.contains(&key.as_str()))
        .map(|(key, then, now)| format!("{key} {then} in its checkpoint, {now} here"))
        .collect();
    // Either file may be the one changed: config.toml edited, or another run's checkpoint copied in.
    if !edited.is_empty() {
        bail!(
            "{}: differs from the config its checkpoint was saved with in keys a run cannot change ({}); put them back (or the run's own checkpoint), or start a new run in another folder (a run may change only {})",
            file.display(),
            edited.join("; "),
            editable.join(", ")
        );
    }
    Ok(())
}

/// Refuses to write `output` (given as `-o`) over one of the run's own files in `dir`, or over
/// a run file of another run (an export named `checkpoint.safetensors` into a run folder would
/// replace its teacher).
pub fn check_output_outside_run(dir: &Path, output: &Path) -> Result<()> {
    // Before the work, as the write after it would refuse.
    let folder = crate::atomic::check_folder_of(output).map_err(|e| anyhow::anyhow!("-o {e}"))?;
    let same_folder = matches!((dir.canonicalize(), folder.canonicalize()), (Ok(a), Ok(b)) if a == b);
    let run_file =
        output.file_name().and_then(|n| n.to_str()).filter(|n| [CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE].contains(n));
    // Another run's folder holds a gtn config, or a file that is not an earlier export (which a
    // teaching set exported to that name again may replace).
    let another_runs = || {
        let gtn_config = std::fs::read_to_string(folder.join(CONFIG_FILE)).is_ok_and(|t| run_command_of(&t).is_some());
        gtn_config || (output.is_file() && !read_tensors(output).is_ok_and(|f| is_teaching_set(&f)))
    };
    match run_file {
        Some(name) if same_folder => bail!("-o {}: is the run's own {name}; choose another path", output.display()),
        Some(name) if another_runs() => bail!(
            "-o {}: would replace the {name} of the run in {}; choose another path",
            output.display(),
            folder.display()
        ),
        _ => Ok(()),
    }
}

/// Writes a run's config: a new run's, and one whose length a time budget lowered.
pub fn write_config(dir: &Path, config: &Config) -> Result<()> {
    crate::atomic::write(&dir.join(CONFIG_FILE), config.to_toml()?.as_bytes())
}

/// The command that trains an image teacher's run folder, and the one that trains an RL run's.
pub const IMAGE_RUN: &str = "gtn train";
pub const RL_RUN: &str = "gtn rl train";

/// The error for a run folder `dir` whose config, which `command`'s ([`IMAGE_RUN`] or
/// [`RL_RUN`]) config type could not read, is the other kind of run's: one line naming the
/// commands that read it, not the other config's first unknown key.
#[derive(Debug, thiserror::Error)]
#[error("{dir}: holds a `{other}` run, not a `{command}` one (`{eval}` and `{other} --resume` read it); expected a `{command}` folder")]
pub struct OtherKindOfRun {
    dir: String,
    other: &'static str,
    command: &'static str,
    eval: &'static str,
}

/// [`OtherKindOfRun`] when the config `text` of `dir` is the other kind's than `command`'s, told
/// by its keys (an RL run's names its `env`, an image run's its `dataset`).
pub fn other_kind_of_run(dir: &Path, text: &str, command: &'static str) -> Option<OtherKindOfRun> {
    let other = run_command_of(text)?;
    let eval = if other == RL_RUN { "gtn rl eval" } else { "gtn eval" };
    (other != command).then(|| OtherKindOfRun { dir: dir.display().to_string(), other, command, eval })
}

/// The command whose run a config file's `text` is ([`IMAGE_RUN`] or [`RL_RUN`]), told by its
/// keys (an RL run's names its `env`, an image run's its `dataset`); none for any other file.
fn run_command_of(text: &str) -> Option<&'static str> {
    let keys = text.parse::<toml::Table>().ok()?;
    match (keys.contains_key("env"), keys.contains_key("dataset")) {
        (true, false) => Some(RL_RUN),
        (false, true) => Some(IMAGE_RUN),
        _ => None,
    }
}

pub fn read_config(dir: &Path) -> Result<Config> {
    crate::config::check_not_a_file(dir, "a `gtn train` run's")?;
    let (path, text) = read_config_text(dir, "a gtn training folder", IMAGE_RUN)?;
    Config::from_toml(&text).map_err(|e| match other_kind_of_run(dir, &text, IMAGE_RUN) {
        Some(other) => other.into(),
        None => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

/// The path and text of the run folder `dir`'s config.toml; errors say when `dir`, expected to
/// be `what`, a run of `command` ([`IMAGE_RUN`] or [`RL_RUN`]), is no folder or holds none.
pub fn read_config_text(dir: &Path, what: &str, command: &'static str) -> Result<(PathBuf, String)> {
    let path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(_) if !dir.exists() => bail!("{}: no such folder; expected {what}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: holds no {CONFIG_FILE}; expected {what}{}", dir.display(), held_instead(dir, command))
        }
        Err(e) => bail!("{}: cannot read: {e}", path.display()),
    }
}

/// What a folder without a config.toml holds that may be what was meant, in parentheses: a
/// run's checkpoint (its config.toml lost), or runs of `command` in its folders (a comparison's,
/// one per method, or a folder of runs).
fn held_instead(dir: &Path, command: &'static str) -> String {
    if checkpoint_path(dir).exists() {
        return format!(" (it holds a checkpoint: restore the run's {CONFIG_FILE} beside it)");
    }
    let of_command = |run: &Path| {
        std::fs::read_to_string(run.join(CONFIG_FILE)).is_ok_and(|text| run_command_of(&text) == Some(command))
    };
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    let mut runs: Vec<PathBuf> = entries.map(|e| e.path()).filter(|p| of_command(p)).collect();
    runs.sort();
    let shown: Vec<String> = runs.iter().take(4).map(|p| crate::text::shell_word(p)).collect();
    let more = if runs.len() > shown.len() { ", ..." } else { "" };
    match runs.len() {
        0 => String::new(),
        n => format!(" (its folders hold {}: {}{more})", crate::text::count(n, "run"), shown.join(", ")),
    }
}

/// Saves the run in `dir`; returns the checkpoint's sha256, what identifies a teacher beyond its
/// config (two runs of one config on other devices, builds or thread counts differ).
/// `data`: the data the run trains on, whose sizes and digest the checkpoint records.
pub fn save(
    dir: &Path,
    teacher: &Teacher,
    adam: &Adam,
    iteration: usize,
    data: &crate::data::Dataset,
) -> Result<String> {
    let named = teacher.named_params();
    let mut tensors = Vec::with_capacity(3 * named.len() + 2);
    for ((name, param), (m, v)) in named.into_iter().zip(adam.m.iter().zip(&adam.v)) {
        tensors.push((format!("adam.m.{name}"), m.shallow_clone()));
        tensors.push((format!("adam.v.{name}"), v.shallow_clone()));
        tensors.push((name, param));
    }
    tensors.push(("adam.steps".into(), Tensor::from_slice(&[adam.steps])));
    tensors.push(("iteration".into(), Tensor::from_slice(&[iteration as i64])));
    tensors.push((DATA_SIZES.into(), Tensor::from_slice(&data.sizes())));
    tensors.push((DATA_DIGEST.into(), Tensor::from_slice(&data.digest)));
    write_tensors(&checkpoint_path(dir), &tensors, &teacher.config.without_session_settings().to_toml()?)
}

/// A loaded run: its teacher, outer-optimiser state and completed iterations.
#[derive(Debug)]
pub struct Checkpoint {
    pub teacher: Teacher,
    pub adam: Adam,
    pub iteration: usize,
    /// The sizes of the data the run was saved with ([`crate::data::Dataset::sizes`]); none in
    /// the checkpoints of builds before they were stored.
    pub data: Option<[i64; 3]>,
    /// The data's digest ([`crate::data::Dataset::digest`]); none in the checkpoints of builds
    /// before it was stored.
    pub digest: Option<[i64; 4]>,
    /// Of the bytes these were loaded from, read once: a run saving to the folder meanwhile cannot
    /// pair one save's weights with another save's hash.
    pub sha256: String,
}

/// Where a run's data comes from, for [`runs_data`]'s error.
pub struct RunsData<'a> {
    /// The run's folder.
    pub dir: &'a Path,
    /// The folder the data is read from.
    pub folder: &'a Path,
    /// The run's own `data_dir`, stored in its config.toml (none in runs of builds before it
    /// was stored, which read their dataset's default folder).
    pub stored: Option<&'a Path>,
    /// The run's dataset, and the sizes its checkpoint records ([`crate::data::Dataset::sizes`]).
    pub dataset: crate::data::DatasetName,
    pub saved: Option<[i64; 3]>,
}

/// `loaded`, the data of a run read as `from` says. Read from another folder than the run's own
/// (`--data-dir`, or a `--config` file's `data_dir`), the error names the run's dataset and
/// folder: another dataset's folder is the likely mistake, and another dataset cannot be read
/// for a run, whatever the loader advises. A folder that is not there is said so in the run's
/// terms, not the loader's (which advises fetching the dataset, or `GTN_CIFAR10_DIR`, neither
/// of which a run reads): another folder given, that the run reads its own without it; its own
/// gone, that it is the run's `data_dir`, and whether fetching the dataset there would bring
/// its data back (not for a slice, nor for CIFAR-10, which no registry ships).
pub fn runs_data<T>(loaded: Result<T>, from: &RunsData) -> Result<T> {
    loaded.map_err(|e| {
        let own = from.stored.map_or_else(|| from.dataset.default_dir(), Path::to_path_buf);
        let same = |a: &Path, b: &Path| std::path::absolute(a).ok() == std::path::absolute(b).ok();
        let elsewhere = !same(&own, from.folder);
        let (run, dataset) = (from.dir.display(), from.dataset);
        let trains = format!("the run in {run} trains on {dataset}");
        let folder = from.folder.display();
        if let Some(other) = e.downcast_ref::<crate::data::OtherDataset>() {
            return match elsewhere {
                true => anyhow::anyhow!("{}; {trains}, from {}: expected its folder", other.what, own.display()),
                false => anyhow::anyhow!("{}; {trains}: expected --data-dir with its folder", other.what),
            };
        }
        if from.folder.exists() {
            return match elsewhere {
                true => anyhow::anyhow!("{e:#} ({trains}, from {})", own.display()),
                false => e,
            };
        }
        if elsewhere {
            return anyhow::anyhow!(
                "{folder}: no such folder; {trains}, from {}: expected its folder, or a copy of its data",
                own.display()
            );
        }
        // The dataset's default folder (runs of builds before `data_dir` was stored): the
        // loader's own advice, to fetch the dataset there, is the run's.
        if from.stored.is_none() {
            return e;
        }
        let published = from.dataset.published_sizes();
        let remedy = match from.saved {
            Some([train, valid, test]) if ((train + valid) as usize, test as usize) != published => format!(
                "it held {} training and {test} test images, not {dataset}'s published {} and {}: give --data-dir with a copy of its data",
                train + valid,
                published.0,
                published.1
            ),
            _ if dataset == crate::data::DatasetName::Cifar10 => {
                format!("give --data-dir with CIFAR-10's binary folder (from {})", crate::data::cifar::SOURCE)
            }
            _ => format!(
                "give --data-dir with {dataset}'s folder, or run `gtn data fetch {dataset} --dir {}` to bring it back there",
                crate::text::shell_word(from.folder)
            ),
        };
        anyhow::anyhow!(
            "{folder}: no such folder{}, the run's `data_dir` in {}; {remedy}",
            crate::data::looked_from(from.folder),
            from.dir.join(CONFIG_FILE).display()
        )
    })
}

/// Loads `dir`, checking that every tensor has the name and shape its config implies.
pub fn load(dir: &Path, device: Device) -> Result<Checkpoint> {
    let config = read_config(dir)?;
    let path = checkpoint_path(dir);
    if !path.is_file() {
        let what = if path.exists() { "not a file" } else { "missing" };
        bail!("{}: {what}; expected the checkpoint of the run in {}", path.display(), dir.display());
    }
    let file = read_tensors(&path)?;
    if is_teaching_set(&file) {
        bail!(
            "{}: is a teaching set `gtn export` wrote (images, labels, lr, momentum), not a run's checkpoint; expected the checkpoint of the run in {}",
            path.display(),
            dir.display()
        );
    }
    check_edits(dir, &file, &config, &Config::EDITABLE_IN_A_RUN)?;
    let stored = &file.tensors;
    // Shapes come from a freshly built teacher; its random values are then overwritten.
    let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(0), device)?;
    let named = teacher.named_params();
    let missing = |name: &str| {
        anyhow::anyhow!(
            "{}: tensor `{name}` missing; the checkpoint is from another architecture or config",
            path.display()
        )
    };
    let take = |name: &str, shape: &[i64]| -> Result<Tensor> {
        let t = stored.get(name).ok_or_else(|| missing(name))?;
        if t.size() != shape || t.kind() != Kind::Float {
            bail!(
                "{}: tensor `{name}` has shape {:?} ({:?}), the config in {} expects {shape:?} (Float); the checkpoint is from another architecture",
                path.display(),
                t.size(),
                t.kind(),
                CONFIG_FILE
            );
        }
        if !crate::nn::all_finite(t) {
            bail!(
                "{}: tensor `{name}` holds NaN or infinite values; expected finite ones (a run that diverges stops before it saves: the file was damaged or written otherwise)",
                path.display()
            );
        }
        Ok(t.to_device(device))
    };
    let mut m = Vec::new();
    let mut v = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, param) in &named {
            let mut p = param.shallow_clone();
            p.copy_(&take(name, &param.size())?);
            m.push(take(&format!("adam.m.{name}"), &param.size())?);
            v.push(take(&format!("adam.v.{name}"), &param.size())?);
        }
        Ok(())
    })?;
    // Counts every checkpoint holds whatever its config: any other shape or type is damage.
    let counts = |name: &str, len: i64| -> Result<Option<Vec<i64>>> {
        match stored.get(name) {
            None => Ok(None),
            Some(t) if t.size() == [len] && t.kind() == Kind::Int64 => Ok(Some(Vec::<i64>::try_from(t)?)),
            Some(t) => bail!(
                "{}: tensor `{name}` has shape {:?} ({:?}), expected [{len}] (Int64); the checkpoint is corrupt",
                path.display(),
                t.size(),
                t.kind()
            ),
        }
    };
    // Older builds' checkpoints do not record their data's sizes.
    let data = counts(DATA_SIZES, 3)?.map(|sizes| <[i64; 3]>::try_from(sizes).expect("three sizes"));
    let digest = counts(DATA_DIGEST, 4)?.map(|digest| <[i64; 4]>::try_from(digest).expect("four integers"));
    let expected = 3 * named.len() + 2 + usize::from(data.is_some()) + usize::from(digest.is_some());
    if stored.len() != expected {
        bail!(
            "{}: {} tensors, the config expects {expected}; the checkpoint is from another config",
            path.display(),
            stored.len()
        );
    }
    let scalar = |name: &str| -> Result<i64> {
        let corrupt = || anyhow::anyhow!("{}: tensor `{name}` missing; the checkpoint is corrupt", path.display());
        Ok(counts(name, 1)?.ok_or_else(corrupt)?[0])
    };
    let steps = scalar("adam.steps")?;
    let iteration =
        check_progress(dir, scalar("iteration")?, steps, ("meta_iters", config.meta_iters), "meta-iteration")?;
    let adam = Adam { m, v, steps, ..Adam::new(&[], config.adam_beta1, config.adam_beta2, config.adam_eps) };
    Ok(Checkpoint { teacher, adam, iteration, sha256: file.sha256, data, digest })
}

/// Refuses data other than a run's (`saved`, [`crate::data::Dataset::sizes`], and `digest`, as
/// its checkpoint recorded them; none in older builds' checkpoints): read from `data_dir` for the
/// run `run`, other split sizes (a slice) would redraw the validation split, and other content
/// of the same sizes is other images, so the run would go on as another, or be scored on images
/// its meta-training saw.
pub fn check_data(
    (saved, digest): (Option<[i64; 3]>, Option<[i64; 4]>),
    data: &crate::data::Dataset,
    data_dir: &Path,
    run: &str,
) -> Result<()> {
    let words = |[train, valid, test]: [i64; 3]| format!("{train} training, {valid} validation and {test} test images");
    let expected = "expected its data (--data-dir, or the run's `data_dir` in its config.toml)";
    match saved {
        Some(saved) if saved != data.sizes() => bail!(
            "{}: holds {} of {}; the run {run} was meta-trained on {}; {expected}",
            data_dir.display(),
            words(data.sizes()),
            data.name.as_str(),
            words(saved)
        ),
        _ if digest.is_some_and(|digest| digest != data.digest) => bail!(
            "{}: holds {} data of the sizes the run {run} was meta-trained on, but other content (its sha256 differs: files changed since, or another copy); {expected}, or a new run for this data",
            data_dir.display(),
            data.name.as_str()
        ),
        _ => Ok(()),
    }
}

/// The `unit`s a run's checkpoint in `dir` has done (`done`), checked against its optimiser's
/// `steps` (one per unit) and against the run's length, the config key `length`.
pub fn check_progress(dir: &Path, done: i64, steps: i64, length: (&str, usize), unit: &str) -> Result<usize> {
    if done < 0 || steps != done {
        bail!(
            "{}: {unit} {done} with {steps} optimiser steps is inconsistent; the checkpoint is corrupt",
            checkpoint_path(dir).display()
        );
    }
    let (key, length) = length;
    if done as usize > length {
        bail!(
            "{}: {key} = {length} is below the {done} {unit}s the run's checkpoint has done; expected at least {done}",
            dir.join(CONFIG_FILE).display()
        );
    }
    Ok(done as usize)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Rewrites the checkpoint file `path` without the config it was saved under, as builds
    /// before it stored one wrote it.
    pub(crate) fn drop_saved_config(path: &Path) {
        let tensors = Tensor::read_safetensors(path).unwrap();
        Tensor::write_safetensors(&tensors, path).unwrap();
        assert_eq!(read_tensors(path).unwrap().saved_config, None);
    }

    /// A run's own data folder gone: the error names the run's `data_dir`, and says fetching
    /// would not help a run trained on other sizes than the published dataset's. Another folder
    /// than the run's: the run's dataset and folder are named.
    #[test]
    fn a_gone_data_folder_is_the_runs_and_a_slice_is_not_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let from = |saved| RunsData {
            dir: dir.path(),
            folder: &gone,
            stored: Some(&gone),
            dataset: crate::data::DatasetName::Mnist,
            saved,
        };
        let err = |from: &RunsData| runs_data::<()>(Err(anyhow::anyhow!("not found")), from).unwrap_err().to_string();
        let config = dir.path().join(CONFIG_FILE);
        let gone_own = format!("{}: no such folder, the run's `data_dir` in {}; ", gone.display(), config.display());
        let fetch =
            format!("give --data-dir with mnist's folder, or run `gtn data fetch mnist --dir {}`", gone.display());
        assert!(err(&from(Some([50_000, 10_000, 10_000]))).starts_with(&format!("{gone_own}{fetch}")));
        assert!(err(&from(None)).starts_with(&format!("{gone_own}{fetch}")), "an older checkpoint records no sizes");
        let slice = err(&from(Some([400, 112, 256])));
        let expected = "it held 512 training and 256 test images, not mnist's published 60000 and 10000: give --data-dir with a copy of its data";
        assert_eq!(slice, format!("{gone_own}{expected}"));
        let cifar = err(&RunsData { dataset: crate::data::DatasetName::Cifar10, ..from(None) });
        assert!(!cifar.contains("gtn data fetch") && cifar.contains("CIFAR-10's binary folder"), "{cifar}");
        let default = crate::data::DatasetName::Mnist.default_dir();
        assert_eq!(err(&RunsData { stored: None, folder: &default, ..from(None) }), "not found", "the loader's own");
        // A default folder that is not there (CIFAR-10's, unless this machine holds it).
        let cifar = crate::data::DatasetName::Cifar10;
        let cifar_default = cifar.default_dir();
        if !cifar_default.exists() {
            let unstored = RunsData { stored: None, folder: &cifar_default, dataset: cifar, ..from(None) };
            assert_eq!(err(&unstored), "not found", "the default folder: the loader's own advice");
        }
        let own = dir.path().join("own");
        let trains = format!("the run in {} trains on mnist", dir.path().display());
        let elsewhere = err(&RunsData { stored: Some(&own), ..from(None) });
        let expected = format!(
            "{}: no such folder; {trains}, from {}: expected its folder, or a copy of its data",
            gone.display(),
            own.display()
        );
        assert_eq!(elsewhere, expected);
        let there = dir.path();
        let other = err(&RunsData { stored: Some(&own), folder: there, ..from(None) });
        assert_eq!(other, format!("not found ({trains}, from {})", own.display()));
        let older = err(&RunsData { stored: None, folder: there, ..from(None) });
        assert_eq!(older, format!("not found ({trains}, from {})", default.display()), "the default it reads");
        // Another dataset's files: the loader's advice to read them instead is not the run's.
        let other = || {
            let what = "c10: holds CIFAR-10's binary batches, not mnist's data files".to_owned();
            Err(crate::data::OtherDataset {
                what,
                wanted: crate::data::DatasetName::Mnist,
                flag: "--data-dir",
                reads: "--dataset cifar10".to_owned(),
            }
            .into())
        };
        let err = runs_data::<()>(other(), &RunsData { stored: Some(&own), ..from(None) }).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "c10: holds CIFAR-10's binary batches, not mnist's data files; {trains}, from {}: expected its folder",
                own.display()
            )
        );
        let err = runs_data::<()>(other(), &from(None)).unwrap_err().to_string();
        assert!(err.ends_with(&format!("; {trains}: expected --data-dir with its folder")), "{err}");
    }

    /// Locking a run folder removes what a save interrupted there left (however recent: only
    /// the lock's holder writes a run's checkpoint and config), and nothing else.
    #[test]
    fn locking_a_run_removes_interrupted_saves() {
        let dir = tempfile::tempdir().unwrap();
        let names = [".checkpoint.safetensors.tmp-a", ".config.toml.tmp-b", ".log.csv.tmp-c", "checkpoint.safetensors"];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let _lock = lock_run(dir.path()).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, [".log.csv.tmp-c", "checkpoint.safetensors"]);
    }

    #[test]
    fn outputs_never_replace_a_runs_files() {
        let dir = tempfile::tempdir().unwrap();
        let (run, other, plain) = (dir.path().join("run"), dir.path().join("other"), dir.path().join("plain"));
        for folder in [&run, &other, &plain] {
            std::fs::create_dir(folder).unwrap();
        }
        std::fs::write(other.join(CONFIG_FILE), "dataset = \"mnist\"\n").unwrap();
        // Another tool's config.toml is not a run's.
        std::fs::write(plain.join(CONFIG_FILE), "[tool]\nname = \"x\"\n").unwrap();
        let check = |output: &Path| check_output_outside_run(&run, output).map_err(|e| e.to_string());
        let own = run.join(CHECKPOINT_FILE);
        assert_eq!(
            check(&own),
            Err(format!("-o {}: is the run's own {CHECKPOINT_FILE}; choose another path", own.display()))
        );
        let theirs = other.join(CHECKPOINT_FILE);
        assert_eq!(
            check(&theirs),
            Err(format!(
                "-o {}: would replace the {CHECKPOINT_FILE} of the run in {}; choose another path",
                theirs.display(),
                other.display()
            ))
        );
        assert!(check(&other.join("teaching.safetensors")).is_ok());
        assert!(check(&plain.join(CHECKPOINT_FILE)).is_ok(), "a folder without a run");
        // An earlier export to that name may be replaced; a checkpoint whose config is gone not.
        let set = [("images", 0.0), ("labels", 0.0), ("lr", 0.02), ("momentum", 0.5)]
            .map(|(name, v)| (name.to_string(), Tensor::from_slice(&[v as f32])));
        write_tensors(&plain.join(CHECKPOINT_FILE), &set, "").unwrap();
        assert!(check(&plain.join(CHECKPOINT_FILE)).is_ok(), "an earlier export");
        write_tensors(&plain.join(CHECKPOINT_FILE), &set[..2], "").unwrap();
        assert!(check(&plain.join(CHECKPOINT_FILE)).is_err(), "not an export");
        // Refused before the work: a folder, or a path in none.
        assert_eq!(
            check(&plain),
            Err(format!("-o {}: is a folder; expected the path of a file to write", plain.display()))
        );
        assert!(check(&plain.join("no/t.safetensors")).unwrap_err().contains("does not exist"));
    }

    #[test]
    fn progress_is_checked_against_the_optimiser_and_the_runs_length() {
        let dir = Path::new("run");
        let check = |done, steps, length| check_progress(dir, done, steps, ("meta_iters", length), "meta-iteration");
        assert_eq!(check(2, 2, 2).unwrap(), 2);
        let err = check(3, 2, 5).unwrap_err().to_string();
        assert_eq!(err, "run/checkpoint.safetensors: meta-iteration 3 with 2 optimiser steps is inconsistent; the checkpoint is corrupt");
        assert!(check(-1, -1, 5).unwrap_err().to_string().contains("meta-iteration -1 with -1 optimiser steps"));
        let err = check(2, 2, 1).unwrap_err().to_string();
        assert_eq!(err, "run/config.toml: meta_iters = 1 is below the 2 meta-iterations the run's checkpoint has done; expected at least 2");
    }

    #[test]
    fn tensors_and_the_saved_config_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let written = [
            ("w".to_string(), Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 1e-30, 7.0]).view([2, 3]).transpose(0, 1)),
            ("steps".to_string(), Tensor::from_slice(&[7i64])),
            ("return".to_string(), Tensor::from_slice(&[0.1f64])),
        ];
        let sha256 = write_tensors(&path, &written, "seed = 3\n").unwrap();
        let read = read_tensors(&path).unwrap();
        assert_eq!(read.saved_config.as_deref(), Some("seed = 3\n"));
        assert_eq!(read.tensors.len(), written.len());
        for (name, t) in &written {
            let back = &read.tensors[name];
            assert_eq!((back.kind(), back.size()), (t.kind(), t.size()), "{name}");
            assert!(back.equal(t), "{name}: {back} read back, {t} written");
        }
        assert_eq!(read.sha256, crate::data::fetch::sha256_hex(&std::fs::read(&path).unwrap()));
        assert_eq!(read.sha256, sha256);
        let err = read_tensors(&dir.path().join("none.safetensors")).err().unwrap().to_string();
        assert!(err.ends_with("none.safetensors: cannot read"), "{err}");
        // Damage in words, not safetensors' variant names.
        let bytes = std::fs::read(&path).unwrap();
        let shown = path.display();
        for (cut, words) in [
            (4, "its size is not the one its header gives (cut short, or bytes added)"),
            (bytes.len() - 1, "its size is not the one its header gives (cut short, or bytes added)"),
        ] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = read_tensors(&path).err().unwrap().to_string();
            assert_eq!(err, format!("{shown}: corrupt or not a safetensors file: {words}"));
        }
        std::fs::write(&path, b"\x10\0\0\0\0\0\0\0not a header at all").unwrap();
        let err = read_tensors(&path).err().unwrap().to_string();
        assert!(
            err.ends_with("corrupt or not a safetensors file: it does not start with a safetensors header"),
            "{err}"
        );
    }
}
