//! Scoring architectures: train each one for a few steps on a proxy (the teacher's synthetic data,
//! or real data) and record its held-out accuracy after each requested step count. The "true"
//! performance is the same measurement with real data and many steps.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Result};
use rand::{rngs::StdRng, SeedableRng};
use tch::Device;

use super::arch::Cell;
use super::jsonl::{self, Appender, Record, Shard};
use super::network::NetConfig;
use crate::checkpoint;
use crate::data::{BatchSampler, Dataset, DatasetName};
use crate::eval;
use crate::inner::{self, LearnerState};
use crate::interrupt::{Interrupted, Unit};
use crate::learner::{Arch, BnEval, Learner};

/// What architectures are trained on before being scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// The teacher in this training folder.
    Gtn(PathBuf),
    Real,
}

impl Proxy {
    /// What records name the proxy by: one teacher has one label however its folder is spelled
    /// (`runs/t`, `./runs/t`, `runs/t/`), so re-runs and reports find its results.
    pub fn label(&self) -> String {
        match self {
            Proxy::Gtn(dir) => {
                let plain: PathBuf = dir.components().filter(|c| *c != std::path::Component::CurDir).collect();
                let plain = if plain.as_os_str().is_empty() { Path::new(".") } else { plain.as_path() };
                format!("gtn:{}", plain.display())
            }
            Proxy::Real => "real".into(),
        }
    }
}

impl FromStr for Proxy {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Proxy> {
        match s.split_once(':') {
            Some(("gtn", dir)) if !dir.is_empty() => Ok(Proxy::Gtn(dir.into())),
            _ if s == "real" => Ok(Proxy::Real),
            _ => bail!("--proxy {s}: expected `gtn:DIR` (a training folder) or `real`"),
        }
    }
}

/// Real-data training settings (the `real` proxy and the truth).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealTraining {
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
}

#[derive(Debug, Clone)]
pub struct ScoreOptions {
    pub archs: Vec<Cell>,
    pub proxy: Proxy,
    /// Step counts to record; one run per architecture to the largest.
    pub steps: Vec<usize>,
    pub shard: Shard,
    /// Positions in `archs` to score, when not all: `nas search` trains its finalists under their
    /// positions in the sample, so that its two files index one list.
    pub only: Option<BTreeSet<usize>>,
    pub out: PathBuf,
    /// Dataset scored on: for a GTN proxy, its teacher's (another is refused).
    pub dataset: DatasetName,
    pub data_dir: Option<PathBuf>,
    /// Training images held out for validation (the dataset's default when `None`); for a GTN
    /// proxy, its teacher's (another is refused).
    pub valid_size: Option<usize>,
    pub net: NetConfig,
    pub real: RealTraining,
    /// Validation and test images accuracy is measured on (the first ones of each split).
    pub eval_images: usize,
    pub seed: u64,
}

impl ScoreOptions {
    /// Whether this run scores the architecture at `position` in `archs`.
    fn takes(&self, position: usize) -> bool {
        self.shard.takes(position) && self.only.as_ref().is_none_or(|only| only.contains(&position))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreSummary {
    pub scored: usize,
    /// Already in the output file when the run started.
    pub skipped: usize,
    /// Listed again after an earlier position in this shard's list (counted there).
    pub repeated: usize,
    /// Left to other shards (or, with `only`, not asked for).
    pub other_shards: usize,
    /// The proxy's label in the output file: a teacher's folder spelled otherwise than there
    /// takes the file's spelling.
    pub label: String,
}

/// A stable 64-bit FNV-1a hash: the same architecture gets the same initial weights under every
/// proxy, shard and re-run (std's hasher may change between Rust versions).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

pub fn arch_rng(seed: u64, cell: &Cell) -> StdRng {
    StdRng::seed_from_u64(fnv1a(&cell.to_string()) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `train` (validation included) and `test` images of `name`, in a setting: nothing for the
/// published dataset's sizes, so the settings of its records stay as gtn has always written them.
fn other_sizes(name: DatasetName, train: usize, test: usize) -> String {
    match (train, test) == name.published_sizes() {
        true => String::new(),
        false => format!(", data of {train} training and {test} test images"),
    }
}

/// Whether the proxy label `label` (as recorded) names the teacher folder `folder` (canonical).
fn same_teacher(label: &str, folder: Option<&Path>) -> bool {
    let recorded = label.strip_prefix("gtn:").map(|dir| Path::new(dir).canonicalize());
    matches!((recorded, folder), (Some(Ok(a)), Some(b)) if a == b)
}

/// What makes a teacher a weak GTN proxy for the networks `net`, while it still scores them:
/// data meta-trained for other learners, or other networks, or meta-training unfinished.
fn teacher_warnings(config: &crate::config::Config, iteration: usize, net: &NetConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.learner != crate::learner::LearnerKind::NasRandom {
        warnings.push(format!(
            "meta-trained for learner `{}`, not the NAS networks it scores (`learner = \"nas-random\"`); its data may rank them poorly",
            config.learner
        ));
    } else if *net != NetConfig::CPU {
        warnings.push(format!(
            "meta-trained on networks of {}, scoring ones of {}; its data may rank them less well",
            net_label(&NetConfig::CPU),
            net_label(net)
        ));
    }
    if iteration < config.meta_iters {
        warnings.push(format!(
            "meta-training unfinished (meta-iteration {iteration} of {}); its records name that iteration",
            config.meta_iters
        ));
    }
    warnings
}

/// How the cell is stacked, as recorded. Records are matched by this text, so the head keeps
/// the spelling older records have (`Hidden`, not the flag's `hidden`).
fn net_label(net: &NetConfig) -> String {
    let NetConfig { cells, channels, reductions, head } = net;
    format!("cells {cells}, channels {channels}, reductions {reductions}, head {head:?}")
}

/// What a record depends on besides its architecture, proxy, step count, dataset, seed and network.
/// A GTN proxy's records name the teacher's meta-iteration and checkpoint: a teacher still
/// training, or trained again in the same folder, is another setting. Data of other sizes than
/// the published dataset's (a slice; a dataset of one's own of other sizes) is named by its
/// sizes, so its results are not mixed with the whole dataset's.
fn setting(opts: &ScoreOptions, data: &Dataset, bn_eval: BnEval, teacher: Option<&str>) -> String {
    // The images scored, not the flag: a count past both splits scores them whole, as any other
    // such count does, and its records are the same measurement.
    let scored = opts.eval_images.min(data.valid.len().max(data.test.len()));
    let mut s = format!("{} validation images, eval on {scored}", data.valid.len());
    s += &other_sizes(data.name, data.train.len() + data.valid.len(), data.test.len());
    if let Some(teacher) = teacher {
        s += &format!(", teacher {teacher}");
    }
    if bn_eval == BnEval::Train {
        s += ", batch norm scored with training statistics";
    }
    if opts.proxy == Proxy::Real {
        let RealTraining { batch, lr, momentum } = opts.real;
        // `{lr}`, not the shortest `{lr:?}` printed elsewhere: files written so compare by it.
        s += &format!(", real batch {batch} lr {lr} momentum {momentum}");
    }
    s
}

/// Trains every architecture of this shard not already in `opts.out` and appends its records.
/// `progress` sees each new record.
pub fn score(opts: &ScoreOptions, device: Device, mut progress: impl FnMut(&Record)) -> Result<ScoreSummary> {
    let mut steps = opts.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let Some(&max_steps) = steps.last() else { bail!("--steps: expected at least one step count") };
    if steps[0] == 0 {
        bail!("--steps 0: step counts must be positive");
    }
    opts.net.validate()?;
    if opts.proxy == Proxy::Real && opts.real.batch < 2 && opts.net.head.normalises_over_the_batch_alone() {
        bail!("--batch-size {}: the hidden head's batch norm over one image is constant; expected at least 2 (or another --head)", opts.real.batch);
    }
    // Said once every refusal has passed, before the work.
    let mut warnings = Vec::new();
    let (teacher, teacher_version, teacher_data) = match &opts.proxy {
        Proxy::Gtn(dir) => {
            let checkpoint::Checkpoint { teacher, iteration, sha256: sha, data, digest, .. } =
                checkpoint::load(dir, device)?;
            let version = format!("at meta-iteration {iteration}, {}{}", jsonl::TEACHER_CHECKPOINT, &sha[..12]);
            let weak = teacher_warnings(&teacher.config, iteration, &opts.net);
            warnings.extend(weak.into_iter().map(|w| format!("{}: {w}", dir.display())));
            let t = teacher.config.inner_steps;
            if max_steps > t {
                bail!(
                    "--steps {max_steps}: the teacher in {} was trained for {t} inner steps; expected 1..={t}",
                    dir.display()
                );
            }
            // Meta-training allows such a teacher for a learner whose batch norm also averages
            // over positions; the hidden head's does not.
            let b = teacher.config.batch_size;
            if b < 2 && opts.net.head.normalises_over_the_batch_alone() {
                bail!(
                    "{}: the teacher's batches hold {b} image, and the hidden head's batch norm over one image is constant, so the networks would learn nothing from them; expected --head flatten or global-pool",
                    dir.display()
                );
            }
            (Some(teacher), Some(version), (data, digest))
        }
        Proxy::Real => (None, None, (None, None)),
    };
    let data = match (&teacher, &opts.proxy) {
        // The teacher's own split, so validation images are ones meta-training never saw; read
        // from `--data-dir` when given (a run folder copied to another machine).
        (Some(t), Proxy::Gtn(run)) => {
            let c = &t.config;
            if opts.dataset != c.dataset {
                bail!(
                    "--dataset {}: the teacher {} was meta-trained on {}; expected `--dataset {}`, or none (a GTN proxy scores on its teacher's dataset)",
                    opts.dataset.as_str(),
                    opts.proxy.label(),
                    c.dataset.as_str(),
                    c.dataset.as_str()
                );
            }
            if let Some(v) = opts.valid_size.filter(|&v| v != c.valid_size) {
                bail!(
                    "--valid-size {v}: the teacher {} holds out its own validation split (valid_size = {}); expected `--valid-size {}`, or none (a GTN proxy ranks on the images its meta-training never saw)",
                    opts.proxy.label(),
                    c.valid_size,
                    c.valid_size
                );
            }
            let dir = opts.data_dir.clone().unwrap_or_else(|| c.data_dir());
            let from = checkpoint::RunsData {
                dir: run,
                folder: &dir,
                stored: c.data_dir.as_deref(),
                dataset: c.dataset,
                saved: teacher_data.0,
            };
            let data = checkpoint::runs_data(Dataset::load(c.dataset, &dir, c.valid_size, c.seed, device), &from)?;
            checkpoint::check_data(teacher_data, &data, &dir, &opts.proxy.label())?;
            data
        }
        (Some(_), Proxy::Real) => unreachable!("a teacher is a GTN proxy's"),
        (None, _) => {
            let dir = opts.data_dir.clone().unwrap_or_else(|| opts.dataset.default_dir());
            let valid_size = opts.valid_size.unwrap_or(opts.dataset.default_valid_size());
            let data = Dataset::load(opts.dataset, &dir, valid_size, crate::data::DEFAULT_SPLIT_SEED, device)?;
            data.check_batch(None, &format!("--batch-size {}", opts.real.batch), opts.real.batch, &dir)?;
            data
        }
    };
    if data.valid.is_empty() {
        match &opts.proxy {
            Proxy::Gtn(dir) => bail!(
                "{}: the teacher holds out no validation images (valid_size = 0) to rank architectures on; use one trained with valid_size > 0",
                dir.display()
            ),
            Proxy::Real => bail!("--valid-size 0: expected at least 1 (architectures are ranked by validation accuracy)"),
        }
    }
    let (valid, test) = (data.valid.first(opts.eval_images), data.test.first(opts.eval_images));
    if valid.len() < opts.eval_images || test.len() < opts.eval_images {
        warnings.push(format!(
            "--eval-images {}: the validation split holds {} images and the test split {}; each is scored on at most that many",
            opts.eval_images,
            data.valid.len(),
            data.test.len()
        ));
    }
    let label = opts.proxy.label();
    // A GTN proxy scores as its teacher was meta-trained to be scored.
    let bn_eval = teacher.as_ref().map_or(BnEval::Batch, |t| t.config.bn_eval);
    if bn_eval == BnEval::Batch && opts.net.head.normalises_over_the_batch_alone() && valid.len() < 2 {
        let given = match &opts.proxy {
            _ if opts.eval_images < 2 => "--eval-images 1",
            Proxy::Real => "--valid-size 1",
            Proxy::Gtn(_) => "the teacher's validation split (valid_size = 1)",
        };
        bail!("{given}: scored with the batch's statistics, the hidden head's batch norm over one image is constant; expected at least 2 (or another --head)");
    }
    let (net, setting) = (net_label(&opts.net), setting(opts, &data, bn_eval, teacher_version.as_deref()));
    let dataset = data.name.as_str();
    let (mut out, done) = Appender::open(&opts.out)?;
    // The same teacher spelled another way (relative, absolute, a link, or relative to another
    // current folder, its records naming the same checkpoint) takes the file's spelling: its
    // records are found done, and a report shows one proxy, not two.
    let label = match &opts.proxy {
        Proxy::Gtn(dir) if !done.iter().any(|r| r.proxy == label) => {
            let folder = dir.canonicalize().ok();
            let same = |r: &&Record| {
                same_teacher(&r.proxy, folder.as_deref()) || (r.proxy.starts_with("gtn:") && r.setting == setting)
            };
            done.iter().find(same).map_or(label, |r| r.proxy.clone())
        }
        _ => label,
    };
    // A file of the other kind's results only (real data's, a truth's, given as a GTN proxy's
    // --out, or the other way round) is another experiment's: appended to, it would read as
    // results of a proxy that never ran there. Another teacher's file (or one moved) is not.
    let gtn = |proxy: &str| proxy.starts_with("gtn:");
    if let Some(other) = done.first().filter(|_| done.iter().all(|r| gtn(&r.proxy) != gtn(&label))) {
        bail!(
            "{}: holds results of {} (not {label}); expected a file of {label}'s results, or a new one (--out)",
            opts.out.display(),
            other.proxy
        );
    }
    // One dataset, network and seed in a file, whatever the proxy (`nas report` compares a
    // file's records as one experiment); one setting per proxy.
    // (Another proxy's records of builds before `net` match any network, as in `nas report`.)
    let same_setting = |r: &Record| r.proxy != label || r.setting == setting;
    let other_net = |r: &Record| r.net != net && (r.proxy == label || !r.net.is_empty());
    let differs = |r: &&Record| r.dataset != dataset || r.seed != opts.seed || other_net(r) || !same_setting(r);
    if let Some(r) = done.iter().find(differs) {
        let here = Record {
            dataset: dataset.into(),
            seed: opts.seed,
            net: net.clone(),
            setting: if r.proxy == label { setting.clone() } else { r.setting.clone() },
            ..r.clone()
        };
        let (there, here) = jsonl::measured_differently(r, &here);
        bail!(
            "{}: holds {} results of another setting ({there} there vs {here} in this run); expected the same, or use another --out",
            opts.out.display(),
            r.proxy
        );
    }
    for warning in &warnings {
        crate::progress::warn_once(warning);
    }
    let mut done = jsonl::done_keys(&done);
    let mut summary = ScoreSummary { scored: 0, skipped: 0, repeated: 0, other_shards: 0, label: label.clone() };
    // An architecture listed twice is trained where it is first listed, by whichever shard
    // takes that position.
    let mut first_listed = std::collections::HashMap::new();
    for (index, cell) in opts.archs.iter().enumerate() {
        first_listed.entry(cell.to_string()).or_insert(index);
    }
    for (index, cell) in opts.archs.iter().enumerate() {
        if !opts.takes(index) {
            summary.other_shards += 1;
            continue;
        }
        let arch = cell.to_string();
        if first_listed[&arch] != index {
            summary.repeated += 1;
            continue;
        }
        let missing: Vec<usize> =
            steps.iter().copied().filter(|&s| !done.contains(&(arch.clone(), label.clone(), s))).collect();
        if missing.is_empty() {
            summary.skipped += 1;
            continue;
        }
        // Under `interrupt::graceful`, a stop asked for while none was in training.
        stop_if_asked(opts, &summary)?;
        let (image, classes) = data.name.shape();
        let learner = Learner::new(Arch::Nas { cell: *cell, net: opts.net }, image, classes)?.scored_with(bn_eval);
        let mut rng = arch_rng(opts.seed, cell);
        let init = learner.init(&mut rng, device);
        let params: i64 = init.iter().map(|p| p.numel() as i64).sum();
        // Each record is appended as soon as it is measured, so a run killed on the way to the
        // longest step count keeps the shorter ones. The unroll cannot be stopped from here: a
        // failed append is returned once this architecture's training ends.
        let mut failed = None;
        // Only as far as the largest count missing: a step count added below the ones done
        // costs its own steps, not a re-run of the longest.
        let until = *missing.last().expect("checked non-empty");
        // A GTN proxy's batches are synthesized in one pass before training: each record is
        // charged its own steps' share, the time a proxy of that many steps would take.
        let (lesson, synthesis) = crate::clock::timed(device, || {
            teacher.as_ref().map(|teacher| {
                let plan = teacher.curriculum.plan(&mut rng, device);
                (teacher, tch::no_grad(|| teacher.synthesize_steps(&plan[..until])))
            })
        });
        let synthesis_per_step = if lesson.is_some() { synthesis / until as f64 } else { 0.0 };
        let start = Instant::now();
        // Evaluation, appending and progress: not training time.
        let mut other_seconds = 0.0;
        let after_step = |t: usize, state: &LearnerState| {
            if failed.is_none() && missing.contains(&(t + 1)) {
                // The training steps queued on a GPU are training time, not evaluation's.
                crate::clock::synchronize(device);
                let eval_start = Instant::now();
                let valid_accuracy = eval::test_accuracy(&learner, state, &valid);
                let test_accuracy = eval::test_accuracy(&learner, state, &test);
                let record = Record {
                    arch: arch.clone(),
                    index,
                    proxy: label.clone(),
                    steps: t + 1,
                    dataset: dataset.into(),
                    valid_accuracy,
                    test_accuracy,
                    seconds: eval_start.duration_since(start).as_secs_f64() - other_seconds
                        + synthesis_per_step * (t + 1) as f64,
                    params,
                    seed: opts.seed,
                    net: net.clone(),
                    setting: setting.clone(),
                };
                match out.append(&record) {
                    Ok(()) => {
                        progress(&record);
                        // The same architecture listed twice in `archs` is scored once.
                        done.insert(record.key());
                    }
                    Err(e) => failed = Some(e),
                }
                other_seconds += eval_start.elapsed().as_secs_f64();
            }
        };
        let state = LearnerState::new(init);
        match lesson {
            Some((teacher, batches)) => {
                teacher.teach_on(&learner, state, batches, 0..until, false, after_step);
            }
            None => {
                train_real(&learner, state, &data, opts.real, until, opts.seed ^ fnv1a(&arch), after_step);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        summary.scored += 1;
        // Under `interrupt::graceful`, a stop asked for once this architecture's records are in.
        stop_if_asked(opts, &summary)?;
    }
    Ok(summary)
}

/// The stop a signal asked for (under [`crate::interrupt::graceful`]), naming how many of this
/// shard's architectures the output file holds.
fn stop_if_asked(opts: &ScoreOptions, summary: &ScoreSummary) -> Result<()> {
    match crate::interrupt::requested() {
        Some(signal) => {
            let taken = (0..opts.archs.len()).filter(|&k| opts.takes(k)).count();
            let done = summary.scored + summary.skipped + summary.repeated;
            Err(Interrupted::at(&opts.out, Unit::Architecture, done, taken, signal).into())
        }
        None => Ok(()),
    }
}

/// SGD with momentum on real training batches at a constant learning rate.
fn train_real(
    learner: &Learner,
    state: LearnerState,
    data: &Dataset,
    real: RealTraining,
    steps: usize,
    seed: u64,
    after_step: impl FnMut(usize, &LearnerState),
) -> LearnerState {
    let device = data.train.device();
    let (lrs, momenta) = inner::constant_schedule(steps, real.lr, real.momentum, device);
    let mut sampler = BatchSampler::new(data.train.len(), seed);
    let batches = |_| data.train.batch(&sampler.indices(real.batch, device));
    inner::unroll(learner, state, (&lrs, &momenta), 0..steps, false, batches, after_step)
}

/// Reads `--archs FILE`.
pub fn read_archs(path: &Path) -> Result<Vec<Cell>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let archs = super::arch::parse_list(&text, &path.display().to_string())?;
    if archs.is_empty() {
        bail!("{}: no architectures", path.display());
    }
    Ok(archs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fixture_dir;
    use crate::nas::arch::sample_distinct;
    use crate::nas::network::Head;

    fn options(out: &Path, shard: Shard) -> ScoreOptions {
        ScoreOptions {
            archs: sample_distinct(4, 1),
            proxy: Proxy::Real,
            steps: vec![2, 1],
            shard,
            only: None,
            out: out.to_path_buf(),
            dataset: DatasetName::Mnist,
            data_dir: Some(fixture_dir()),
            valid_size: Some(112),
            net: NetConfig { cells: 0, channels: 2, reductions: 1, ..NetConfig::CPU },
            real: RealTraining { batch: 16, lr: 0.05, momentum: 0.5 },
            eval_images: 64,
            seed: 0,
        }
    }

    #[test]
    fn a_weak_teacher_is_warned_of() {
        use crate::config::Config;
        use crate::learner::LearnerKind;
        let nas = Config { learner: LearnerKind::NasRandom, ..Config::tiny() };
        assert!(teacher_warnings(&nas, nas.meta_iters, &NetConfig::CPU).is_empty());
        let other = NetConfig { channels: 2, ..NetConfig::CPU };
        let warnings = teacher_warnings(&Config { learner: LearnerKind::Mlp, ..nas.clone() }, 3, &other);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("meta-trained for learner `mlp`, not the NAS networks"), "{warnings:?}");
        assert_eq!(warnings[1], "meta-training unfinished (meta-iteration 3 of 8); its records name that iteration");
        let warnings = teacher_warnings(&nas, nas.meta_iters, &other);
        assert!(warnings[0].contains("scoring ones of cells 0, channels 2,"), "{warnings:?}");
    }

    #[test]
    fn scores_cifar10_architectures() {
        let folder = crate::data::cifar::tests::fixture_folder();
        let out = folder.path().join("cifar.jsonl");
        let opts = ScoreOptions {
            dataset: DatasetName::Cifar10,
            data_dir: Some(folder.path().to_path_buf()),
            valid_size: Some(20),
            archs: sample_distinct(2, 3),
            ..options(&out, Shard::ALL)
        };
        assert_eq!(score(&opts, Device::Cpu, |_| {}).unwrap().scored, 2);
        let records = jsonl::read(&out).unwrap();
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|r| r.dataset == "cifar10" && (0.0..=1.0).contains(&r.valid_accuracy)));
        // --eval-images 64 scores the 20 images of each split: the records say 20, so a run
        // asking any other count past them finds its work done.
        let setting = "20 validation images, eval on 20, data of 100 training and 20 test images";
        assert!(records.iter().all(|r| r.setting.starts_with(setting)), "{records:?}");
        let again = score(&ScoreOptions { eval_images: 100_000, ..opts.clone() }, Device::Cpu, |_| {}).unwrap();
        assert_eq!((again.scored, again.skipped), (0, 2));
        // The published datasets' sizes add nothing: their records' settings stay as they were.
        for name in [DatasetName::Mnist, DatasetName::FashionMnist, DatasetName::Cifar10] {
            let (train, test) = name.published_sizes();
            assert_eq!(other_sizes(name, train, test), "", "{name}");
            assert_ne!(other_sizes(name, train - 1, test), "", "{name}");
        }
        assert_eq!((DatasetName::Mnist.published_sizes()), (60_000, 10_000));
        assert_eq!((DatasetName::Cifar10.published_sizes()), (50_000, 10_000));
    }

    #[test]
    fn an_empty_validation_split_is_named_before_any_training() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let err = score(&ScoreOptions { valid_size: Some(0), ..options(&out, Shard::ALL) }, Device::Cpu, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--valid-size 0: expected at least 1"), "{err}");
        assert!(!out.exists());
        // Nor a real batch larger than the training split (the fixture's 512, less 500 held out).
        let real = RealTraining { batch: 13, ..options(&out, Shard::ALL).real };
        let err =
            score(&ScoreOptions { valid_size: Some(500), real, ..options(&out, Shard::ALL) }, Device::Cpu, |_| {})
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("--batch-size 13: more than the 12 training images of "), "{err}");
        assert!(!out.exists());
    }

    /// The hidden head normalises over the batch alone, so one image scored with the batch's
    /// statistics gets the same prediction whatever it shows.
    #[test]
    fn a_single_validation_image_scored_with_batch_statistics_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        assert_eq!(options(&out, Shard::ALL).net.head, Head::Hidden);
        let err = score(&ScoreOptions { valid_size: Some(1), ..options(&out, Shard::ALL) }, Device::Cpu, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--valid-size 1: scored with the batch's statistics, the hidden head's"), "{err}");
        assert!(!out.exists());
        let pooled = NetConfig { head: Head::GlobalPool, ..options(&out, Shard::ALL).net };
        let opts = ScoreOptions { valid_size: Some(1), net: pooled, steps: vec![1], ..options(&out, Shard::ALL) };
        assert_eq!(
            score(&ScoreOptions { archs: sample_distinct(1, 1), ..opts }, Device::Cpu, |_| {}).unwrap().scored,
            1
        );
    }

    #[test]
    fn an_architecture_listed_twice_is_scored_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let cell = sample_distinct(1, 1)[0];
        let opts = ScoreOptions { archs: vec![cell, cell], steps: vec![1], ..options(&out, Shard::ALL) };
        let summary = score(&opts, Device::Cpu, |_| {}).unwrap();
        assert_eq!((summary.scored, summary.skipped, summary.repeated), (1, 0, 1));
        // The fixture is a slice of MNIST: its records say so, apart from the whole dataset's.
        let data = Dataset::load(DatasetName::Mnist, &fixture_dir(), 112, 0, Device::Cpu).unwrap();
        let (train, test) = (data.train.len() + data.valid.len(), data.test.len());
        let sizes = format!(", data of {train} training and {test} test images");
        assert!(jsonl::read(&out).unwrap()[0].setting.contains(&sizes), "{sizes}");
        assert_eq!(jsonl::read(&out).unwrap().len(), 1);
        let again = score(&opts, Device::Cpu, |_| {}).unwrap();
        assert_eq!((again.scored, again.skipped, again.repeated), (0, 1, 1), "done once, listed again");
        // Sharded, only the shard taking its first position trains it.
        let sharded = dir.path().join("s.jsonl");
        let shard = |i| ScoreOptions { shard: Shard { index: i, count: 2 }, ..options(&sharded, Shard::ALL) };
        let opts = |i| ScoreOptions { archs: vec![cell, cell], steps: vec![1], ..shard(i) };
        let first = score(&opts(0), Device::Cpu, |_| {}).unwrap();
        let second = score(&opts(1), Device::Cpu, |_| {}).unwrap();
        assert_eq!((first.scored, first.repeated, second.scored, second.repeated), (1, 0, 0, 1));
    }

    /// `only` scores the positions asked for, each recorded under its position in the list.
    #[test]
    fn only_the_positions_asked_for_are_scored_under_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let only = Some([2, 0].into_iter().collect());
        let opts = ScoreOptions { steps: vec![1], only, ..options(&out, Shard::ALL) };
        let summary = score(&opts, Device::Cpu, |_| {}).unwrap();
        assert_eq!((summary.scored, summary.other_shards), (2, 2));
        let records = jsonl::read(&out).unwrap();
        let archs = &opts.archs;
        let recorded: Vec<(usize, &str)> = records.iter().map(|r| (r.index, r.arch.as_str())).collect();
        assert_eq!(recorded, [(0, archs[0].to_string().as_str()), (2, archs[2].to_string().as_str())]);
    }

    /// A file holds one experiment: another proxy's records of another network, dataset or seed
    /// are refused as its own would be (`nas report` would refuse the file).
    #[test]
    fn a_file_of_another_network_is_refused_whatever_its_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let (out, narrow) = (dir.path().join("r.jsonl"), dir.path().join("narrow.jsonl"));
        let opts = ScoreOptions { archs: sample_distinct(1, 1), steps: vec![1], ..options(&out, Shard::ALL) };
        let wide = ScoreOptions { net: NetConfig { channels: 3, ..opts.net }, ..opts.clone() };
        score(&wide, Device::Cpu, |_| {}).unwrap();
        score(&ScoreOptions { out: narrow.clone(), ..opts.clone() }, Device::Cpu, |_| {}).unwrap();
        // Another proxy's narrower network, in the same file.
        let mut records = jsonl::read(&out).unwrap();
        records
            .extend(jsonl::read(&narrow).unwrap().into_iter().map(|r| Record { proxy: "gtn:elsewhere".into(), ..r }));
        let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(&out, text).unwrap();
        let err = score(&wide, Device::Cpu, |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("holds gtn:elsewhere results of another setting (") && err.contains("channels 2"),
            "{err}"
        );
    }

    /// A record is on disk as soon as its step count is measured, before the longer runs of the
    /// same architecture: a killed run keeps what it measured.
    #[test]
    fn each_step_count_is_appended_when_measured() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let opts = ScoreOptions { archs: sample_distinct(1, 1), steps: vec![1, 3], ..options(&out, Shard::ALL) };
        let mut on_disk = Vec::new();
        score(&opts, Device::Cpu, |r| on_disk.push((r.steps, jsonl::read(&out).unwrap().len()))).unwrap();
        assert_eq!(on_disk, [(1, 1), (3, 2)]);
    }

    /// A `gtn:` proxy reads its teacher's dataset from `--data-dir` when given (a run folder
    /// copied to another machine names a data folder that is not there), else from its config.
    #[test]
    fn a_teachers_data_is_read_from_data_dir_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let config = crate::config::Config { data_dir: Some(fixture_dir()), ..crate::config::Config::tiny() };
        crate::meta::Trainer::create(&config, &run, Device::Cpu).unwrap().save().unwrap();
        let stored = run.join(checkpoint::CONFIG_FILE);
        let text = std::fs::read_to_string(&stored).unwrap();
        let fixtures = fixture_dir().display().to_string();
        assert!(text.contains(&fixtures), "{text}");
        std::fs::write(&stored, text.replace(&fixtures, "/nonexistent/mnist")).unwrap();
        let out = dir.path().join("r.jsonl");
        let opts = ScoreOptions { proxy: Proxy::Gtn(run), archs: sample_distinct(1, 1), ..options(&out, Shard::ALL) };
        let err = score(&ScoreOptions { data_dir: None, ..opts.clone() }, Device::Cpu, |_| {}).unwrap_err();
        let expected = "/nonexistent/mnist: no such folder, the run's `data_dir` in ";
        assert!(
            err.to_string().starts_with(expected)
                && err.to_string().ends_with("give --data-dir with a copy of its data"),
            "{err}"
        );
        // Other data would redraw the teacher's split: validation images it was meta-trained on.
        let slice = crate::data::fixture_slice(300);
        let sliced = ScoreOptions { data_dir: Some(slice.path().to_path_buf()), ..opts.clone() };
        let err = score(&sliced, Device::Cpu, |_| {}).unwrap_err().to_string();
        assert!(
            err.contains(": holds 188 training, 112 validation and 256 test images of mnist; the run gtn:"),
            "{err}"
        );
        assert!(!out.exists());
        let fashion = ScoreOptions { dataset: DatasetName::FashionMnist, ..opts.clone() };
        let err = score(&fashion, Device::Cpu, |_| {}).unwrap_err().to_string();
        assert!(err.starts_with("--dataset fashion-mnist: the teacher gtn:"), "{err}");
        assert!(
            err.ends_with(
                "was meta-trained on mnist; expected `--dataset mnist`, or none (a GTN proxy scores on its teacher's dataset)"
            ),
            "{err}"
        );
        assert_eq!(score(&opts, Device::Cpu, |_| {}).unwrap().scored, 1);
    }

    /// A `gtn:` results file belongs to one state of its teacher: scores of the same folder
    /// after more meta-training are another teacher's, refused rather than ranked together.
    #[test]
    fn a_gtn_proxys_results_refuse_its_teacher_trained_further() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let config = crate::config::Config { data_dir: Some(fixture_dir()), ..crate::config::Config::tiny() };
        let mut trainer = crate::meta::Trainer::create(&config, &run, Device::Cpu).unwrap();
        trainer.save().unwrap();
        let out = dir.path().join("r.jsonl");
        let opts = ScoreOptions {
            proxy: Proxy::Gtn(run.clone()),
            archs: sample_distinct(1, 1),
            steps: vec![1],
            ..options(&out, Shard::ALL)
        };
        assert_eq!(score(&opts, Device::Cpu, |_| {}).unwrap().scored, 1);
        let before = std::fs::read(&out).unwrap();
        // The same folder spelled otherwise is the same teacher: nothing to do.
        let spelled = Proxy::Gtn(dir.path().join("run/../run"));
        let again = score(&ScoreOptions { proxy: spelled, ..opts.clone() }, Device::Cpu, |_| {}).unwrap();
        assert_eq!((again.scored, again.skipped), (0, 1));
        assert_eq!(std::fs::read(&out).unwrap(), before);
        // Its copy (as good as the folder named from another current folder): the records name
        // its checkpoint.
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for file in [checkpoint::CONFIG_FILE, checkpoint::CHECKPOINT_FILE, checkpoint::LOG_FILE] {
            std::fs::copy(run.join(file), copy.join(file)).unwrap();
        }
        let again = score(&ScoreOptions { proxy: Proxy::Gtn(copy), ..opts.clone() }, Device::Cpu, |_| {}).unwrap();
        assert_eq!((again.scored, again.skipped), (0, 1));
        assert_eq!(std::fs::read(&out).unwrap(), before);
        trainer.step().unwrap();
        trainer.save().unwrap();
        let err = score(&opts, Device::Cpu, |_| {}).unwrap_err().to_string();
        assert!(err.contains("r.jsonl: holds gtn:"), "{err}");
        assert!(err.contains("results of another setting"), "{err}");
        assert!(err.contains("teacher at meta-iteration 1, checkpoint sha256"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), before, "the file is left as it was");
    }

    /// A teacher of one-image batches (allowed for a learner whose batch norm averages over
    /// positions too) cannot train the hidden head: refused, and the other heads score.
    #[test]
    fn a_teacher_of_one_image_batches_needs_a_head_without_batch_norm_over_the_batch() {
        let folder = crate::data::cifar::tests::fixture_folder();
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let config = crate::config::Config {
            dataset: DatasetName::Cifar10,
            data_dir: Some(folder.path().to_path_buf()),
            valid_size: 20,
            meta_batch: 16,
            teacher: crate::teacher::TeacherKind::Pixels,
            learner: crate::learner::LearnerKind::CifarCnn,
            batch_size: 1,
            ..crate::config::Config::tiny()
        };
        crate::meta::Trainer::create(&config, &run, Device::Cpu).unwrap().save().unwrap();
        let out = dir.path().join("r.jsonl");
        let opts = ScoreOptions {
            proxy: Proxy::Gtn(run),
            dataset: DatasetName::Cifar10,
            data_dir: None,
            valid_size: None,
            archs: sample_distinct(1, 1),
            steps: vec![1],
            ..options(&out, Shard::ALL)
        };
        assert_eq!(opts.net.head, Head::Hidden);
        let err = score(&opts, Device::Cpu, |_| {}).unwrap_err().to_string();
        assert!(err.ends_with("run: the teacher's batches hold 1 image, and the hidden head's batch norm over one image is constant, so the networks would learn nothing from them; expected --head flatten or global-pool"), "{err}");
        assert!(!out.exists());
        let pooled = ScoreOptions { net: NetConfig { head: Head::GlobalPool, ..opts.net }, ..opts };
        assert_eq!(score(&pooled, Device::Cpu, |_| {}).unwrap().scored, 1);
    }

    #[test]
    fn proxy_parses() {
        assert_eq!("real".parse::<Proxy>().unwrap(), Proxy::Real);
        assert_eq!("gtn:runs/a".parse::<Proxy>().unwrap(), Proxy::Gtn("runs/a".into()));
        for spelling in ["gtn:runs/a", "gtn:./runs/a", "gtn:runs/a/", "gtn:runs/./a"] {
            assert_eq!(spelling.parse::<Proxy>().unwrap().label(), "gtn:runs/a", "{spelling}");
        }
        assert_eq!("gtn:/abs/t".parse::<Proxy>().unwrap().label(), "gtn:/abs/t");
        assert_eq!("gtn:.".parse::<Proxy>().unwrap().label(), "gtn:.");
        assert!("gtn:".parse::<Proxy>().is_err() && "fake".parse::<Proxy>().is_err());
    }

    /// Two shards together score every architecture once; a re-run skips everything; a new step
    /// count re-trains only for it; the results match an unsharded run's.
    #[test]
    fn shards_cover_everything_and_resume_skips_done_work() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let s0 = score(&options(&a, "0/2".parse().unwrap()), Device::Cpu, |_| {}).unwrap();
        let s1 = score(&options(&b, "1/2".parse().unwrap()), Device::Cpu, |_| {}).unwrap();
        assert_eq!((s0.scored, s0.other_shards, s1.scored, s1.other_shards), (2, 2, 2, 2));
        let merged = dir.path().join("m.jsonl");
        assert_eq!(jsonl::merge(&[&a, &b], &merged).unwrap(), 8);
        let records = jsonl::read(&merged).unwrap();
        let archs = sample_distinct(4, 1);
        for (k, cell) in archs.iter().enumerate() {
            for steps in [1, 2] {
                let n =
                    records.iter().filter(|r| r.arch == cell.to_string() && r.steps == steps && r.index == k).count();
                assert_eq!(n, 1, "architecture {k} at {steps} steps");
            }
        }
        assert!(records.iter().all(|r| (0.0..=1.0).contains(&r.valid_accuracy) && r.params > 0));

        let again = score(&options(&a, "0/2".parse().unwrap()), Device::Cpu, |_| {}).unwrap();
        assert_eq!((again.scored, again.skipped), (0, 2));
        // Results of another network or training setting are not mixed into the same file.
        let base = options(&a, "0/2".parse().unwrap());
        let other_head = ScoreOptions { net: NetConfig { head: Head::Flatten, ..base.net }, ..base.clone() };
        let other_lr = ScoreOptions { real: RealTraining { lr: 0.1, ..base.real }, ..base.clone() };
        for other in [other_head, other_lr, ScoreOptions { seed: 1, ..base.clone() }] {
            let err = score(&other, Device::Cpu, |_| {}).unwrap_err().to_string();
            assert!(err.contains("a.jsonl: holds real results of another setting"), "{err}");
        }
        assert_eq!(jsonl::read(&a).unwrap().len(), 4);
        let mut more = options(&a, "0/2".parse().unwrap());
        more.steps = vec![1, 2, 3];
        let mut new = Vec::new();
        score(&more, Device::Cpu, |r| new.push(r.steps)).unwrap();
        assert_eq!(new, [3, 3]);

        let whole = dir.path().join("whole.jsonl");
        score(&options(&whole, Shard::ALL), Device::Cpu, |_| {}).unwrap();
        let key = |r: &Record| (r.arch.clone(), r.steps, r.valid_accuracy.to_bits());
        let mut x: Vec<_> = jsonl::read(&whole).unwrap().iter().map(key).collect();
        let mut y: Vec<_> = records.iter().map(key).collect();
        x.sort();
        y.sort();
        assert_eq!(x, y, "sharding changes no result");

        // A smaller step count added later (trained only that far) records what one run of
        // both counts records.
        let later = dir.path().join("later.jsonl");
        score(&ScoreOptions { steps: vec![2], ..options(&later, Shard::ALL) }, Device::Cpu, |_| {}).unwrap();
        let mut added = Vec::new();
        score(&options(&later, Shard::ALL), Device::Cpu, |r| added.push(r.clone())).unwrap();
        assert!(added.len() == 4 && added.iter().all(|r| r.steps == 1));
        let mut z: Vec<_> = jsonl::read(&later).unwrap().iter().map(key).collect();
        z.sort();
        assert_eq!(x, z);
    }
}
