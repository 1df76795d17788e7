//! `gtn compare`: the paper's MNIST experiment on one harness. GTN with each curriculum, dataset
//! distillation and the tuned real-data baseline train the same fresh learners (same initial
//! weights); we record test accuracy along the inner steps and how many real-data steps match
//! what each teacher reaches in T steps (the speed-up).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tch::Device;

use crate::checkpoint;
use crate::config::{Config, Flags};
use crate::curriculum::CurriculumKind;
use crate::data::{DatasetName, Split};
use crate::eval;
use crate::learner::{BnEval, LearnerKind};
use crate::meta::{self, RunSettings, Trainer};
use crate::plot::{Chart, Series};
use crate::teacher::TeacherKind;
use crate::text;

pub const CURVES_CSV: &str = "curves.csv";
pub const CURVES_PNG: &str = "curves.png";
pub const TABLE_MD: &str = "table.md";
pub const SUMMARY_JSON: &str = "summary.json";
/// A method's measured curves, kept in its folder (`DIR/<method>/`, `DIR/real/` for the real-data
/// curve) so a re-run (after an interruption, with other methods, or to redraw the outputs) does
/// not measure them again.
pub const CURVES_JSON: &str = "compare-curves.json";
/// The real-data sweep's winner, kept apart from its curve: a run stopped while the curve is
/// measured, or one with another `--real-steps-factor`, sweeps no more.
const SWEEP_JSON: &str = "compare-sweep.json";

/// A meta-trained method: a name (and sub-folder), the teacher and its curriculum.
pub type Method = (&'static str, TeacherKind, CurriculumKind);

/// The meta-trained methods.
pub const TEACHERS: [Method; 5] = [
    ("gtn-none", TeacherKind::Generator, CurriculumKind::None),
    ("gtn-all-shuffled", TeacherKind::Generator, CurriculumKind::AllShuffled),
    ("gtn-batch-shuffled", TeacherKind::Generator, CurriculumKind::BatchShuffled),
    ("gtn-full", TeacherKind::Generator, CurriculumKind::Full),
    ("distill", TeacherKind::Pixels, CurriculumKind::Full),
];
pub const REAL: &str = "real";

#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub preset: String,
    pub config: Option<PathBuf>,
    pub dataset: Option<DatasetName>,
    /// Learner of meta-training and evaluation (default: the preset's).
    pub learner: Option<LearnerKind>,
    pub data_dir: Option<PathBuf>,
    /// The teachers to meta-train and evaluate, by name (`TEACHERS`; empty: all of them). The
    /// real-data baseline always runs: the speed-ups are measured against it (`real` alone: it
    /// alone).
    pub methods: Vec<String>,
    /// Meta-iterations per teacher (default: the preset's), or a time budget per teacher that
    /// lowers them further.
    pub meta_iters: Option<usize>,
    pub budget: Option<Duration>,
    /// Gradient checkpointing every k inner steps (default: the preset's); same result, less memory.
    pub checkpoint_every: Option<usize>,
    pub learners: usize,
    /// The real-data baseline's sweep; the best accuracy at T wins.
    pub lrs: Vec<f64>,
    pub momenta: Vec<f64>,
    /// Test images the curves are measured on (the first ones; 0: all).
    pub test_images: usize,
    /// The real-data curve runs to this many times T, to find where it catches up.
    pub real_steps_factor: usize,
    /// Every curve scored as the reference logs its test accuracy ([`eval::Cohort`]).
    pub before_last_update: bool,
    pub seed: u64,
}

/// How far past T the real-data curve may be asked to run (`--real-steps-factor`).
pub const MAX_REAL_STEPS_FACTOR: usize = 100;

/// Accuracy curve of one method over learners: `(step, mean, std)`.
#[derive(Debug, Clone)]
pub struct Curve {
    pub method: String,
    pub points: Vec<(usize, f64, f64)>,
}

impl Curve {
    fn new(method: &str, grid: &[usize], per_learner: &[Vec<f64>]) -> Curve {
        let points = grid
            .iter()
            .enumerate()
            .map(|(i, &step)| {
                let (mean, std) = eval::mean_std(&per_learner.iter().map(|c| c[i]).collect::<Vec<_>>());
                (step, mean, std)
            })
            .collect();
        Curve { method: method.into(), points }
    }

    fn at(&self, step: usize) -> (f64, f64) {
        let &(_, mean, std) = self.points.iter().find(|p| p.0 == step).expect("T is on every grid");
        (mean, std)
    }
}

/// The first (linearly interpolated) step at which `curve`'s mean reaches `target`.
pub fn steps_to_reach(curve: &[(usize, f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 >= target {
        return Some(first.0 as f64);
    }
    curve.windows(2).find(|w| w[1].1 >= target).map(|w| {
        let ((s0, a0), (s1, a1)) = ((w[0].0 as f64, w[0].1), (w[1].0 as f64, w[1].1));
        s0 + (s1 - s0) * (target - a0) / (a1 - a0)
    })
}

/// Resamples of [`speedup_interval`]'s bootstrap.
const BOOTSTRAP_RESAMPLES: usize = 2000;

/// 95% bootstrap interval of the speed-up of a method whose learners reach `at_t` after T
/// steps: learners resampled with replacement, each index taking the method's learner and real
/// data's learner `k` together (they start from the same weights), the real curve's mean over
/// the resample crossing the method's mean. `(low, high)`; `None` for a bound past the real
/// curve's end (the high one when more than 2.5% of the resamples never matched there, the low
/// one when more than 97.5% did not), and for both with fewer than 2 learners (no spread to
/// resample). Seeded by `seed`.
pub fn speedup_interval(
    at_t: &[f64],
    real: &[Vec<f64>],
    grid: &[usize],
    t: usize,
    seed: u64,
) -> (Option<f64>, Option<f64>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = at_t.len();
    if n < 2 {
        return (None, None);
    }
    let mut speedups: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let picks: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
            let mean = |value: &dyn Fn(usize) -> f64| picks.iter().map(|&k| value(k)).sum::<f64>() / n as f64;
            let curve: Vec<(usize, f64, f64)> =
                grid.iter().enumerate().map(|(i, &step)| (step, mean(&|k| real[k][i]), 0.0)).collect();
            steps_to_reach(&curve, mean(&|k| at_t[k])).map_or(f64::INFINITY, |s| s / t as f64)
        })
        .collect();
    speedups.sort_by(f64::total_cmp);
    let bound =
        |q: f64| Some(speedups[(q * (BOOTSTRAP_RESAMPLES - 1) as f64).round() as usize]).filter(|x| x.is_finite());
    (bound(0.025), bound(0.975))
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodSummary {
    pub method: String,
    pub accuracy_mean: f64,
    /// `None` (JSON null) for one learner: it has no spread.
    pub accuracy_std: Option<f64>,
    /// Meta-iterations and logged meta-training minutes (none for real data).
    pub meta_iters: Option<usize>,
    pub meta_training_minutes: Option<f64>,
    /// Real-data steps whose accuracy matches this method's at T, and that over T; `None` when
    /// the real-data curve never got there.
    pub real_steps_to_match: Option<f64>,
    pub speedup: Option<f64>,
    /// 95% bootstrap interval of the speed-up over the learners ([`speedup_interval`]); `None`
    /// for real data, with one learner, and for a bound past the real curve's end.
    pub speedup_low: Option<f64>,
    pub speedup_high: Option<f64>,
    /// Learners trained to NaN or infinite weights, scored on what those predict
    /// ([`eval::Curves::diverged`]); `None` (JSON null) for curves stored by builds before the
    /// count, reused: not counted.
    pub diverged_learners: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareSummary {
    pub dataset: String,
    pub learner: String,
    pub bn_eval: BnEval,
    pub before_last_update: bool,
    pub inner_steps: usize,
    pub learners: usize,
    pub test_images: usize,
    /// The evaluation's seed (the learners' initial weights, the real-data batches).
    pub seed: u64,
    /// The real-data sweep, and its best pair at T.
    pub real_lrs: Vec<f64>,
    pub real_momenta: Vec<f64>,
    pub real_lr: f64,
    pub real_momentum: f64,
    pub real_steps_max: usize,
    pub methods: Vec<MethodSummary>,
}

/// A teacher of the comparison: the shared config with its teacher kind and curriculum.
fn teacher_config(base: &Config, teacher: TeacherKind, curriculum: CurriculumKind) -> Config {
    Config { teacher, curriculum, ..base.clone() }
}

/// Trains the teacher `name` in `dir`, or continues / reuses the run already there (same config).
fn train_or_reuse(
    name: &str,
    config: &Config,
    dir: &Path,
    settings: &RunSettings,
    budget: Option<Duration>,
    device: Device,
) -> Result<Trainer> {
    // A teacher whose config was edited to get past a divergence would no longer be the
    // comparison's: every teacher must change with it.
    let advice =
        "lower outer_lr or grad_clip for every teacher (`--config F.toml`) and compare again with another --out";
    let mut trainer =
        Trainer::open(config, dir, device, settings, budget.is_some(), None)?.with_divergence_advice(advice.to_owned());
    let (done, total, dir) = (trainer.iteration, trainer.config().meta_iters, dir.display());
    match done {
        0 => crate::progress::print_err(&format!("{name}: meta-training in {dir}")),
        _ if done == total => crate::progress::print_err(&format!("{name}: the teacher in {dir} is trained already")),
        _ => crate::progress::print_err(&format!("{name}: meta-training in {dir}, resumed at meta-iteration {done}")),
    }
    if let Some(note) = trainer.budget_note().filter(|_| budget.is_some()) {
        crate::progress::print_err(&note);
    }
    crate::interrupt::graceful(crate::interrupt::Unit::MetaIteration, || trainer.run(true, budget))?;
    Ok(trainer)
}

/// Raised whenever evaluation changes what a stored key's measurement would give, so curves
/// measured by an older gtn are measured again rather than reused. (A file whose key lacks a
/// field, from before it was added, does not parse: it is measured again too, except where the
/// field has a default that is what the file was measured with, as `before_last_update`.)
const MEASUREMENT_VERSION: u32 = 1;

/// A data folder, the same however it is spelled (`data/mnist`, its absolute path, a link to it):
/// keys hold its canonical path. A key stored by an older gtn may hold a relative one, read from
/// a current folder unknown now: it matches nothing, and is measured again.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
struct Folder(PathBuf);

/// Written lossily: JSON cannot hold a name that is not UTF-8, whose key then matches nothing
/// and is measured again, rather than its measurement failing to be stored.
impl Serialize for Folder {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string_lossy())
    }
}

impl Folder {
    fn new(path: PathBuf) -> Folder {
        Folder(path.canonicalize().unwrap_or(path))
    }
}

impl PartialEq for Folder {
    fn eq(&self, other: &Folder) -> bool {
        let resolved = |f: &Folder| f.0.is_absolute().then(|| f.0.canonicalize().unwrap_or_else(|_| f.0.clone()));
        matches!((resolved(self), resolved(other)), (Some(a), Some(b)) if a == b)
    }
}

/// Everything a teacher's curves depend on besides its config (which `train_or_reuse` checked).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CurvesKey {
    version: u32,
    data_dir: Folder,
    meta_iteration: usize,
    /// The checkpoint's sha256: a teacher copied over another of the same config and length
    /// (another build, device or thread count) is another teacher.
    checkpoint_sha256: String,
    learner: LearnerKind,
    bn_eval: BnEval,
    /// Files from before the flag were measured without it.
    #[serde(default)]
    before_last_update: bool,
    learners: usize,
    seed: u64,
    test_images: usize,
    grid: Vec<usize>,
    /// Where the learners trained: a GPU's kernels round otherwise than the CPU's. Only the
    /// device's kind and index: other thread counts or GPU models, which change the last bits
    /// of a learner's weights and so the curves by float rounding, reuse the measurement.
    device: String,
}

/// Everything the real-data sweep and curve depend on: the data split, the learners, the sweep
/// (chosen at T), the curve's steps (none for the sweep's own key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RealKey {
    version: u32,
    inner_steps: usize,
    dataset: DatasetName,
    data_dir: Folder,
    valid_size: usize,
    split_seed: u64,
    batch_size: usize,
    learner: LearnerKind,
    bn_eval: BnEval,
    #[serde(default)]
    before_last_update: bool,
    learners: usize,
    seed: u64,
    test_images: usize,
    lrs: Vec<f64>,
    momenta: Vec<f64>,
    grid: Vec<usize>,
    /// As [`CurvesKey::device`].
    device: String,
}

#[derive(Serialize, Deserialize)]
struct PerLearner {
    per_learner: Vec<Vec<f64>>,
    #[serde(default)]
    diverged: Option<usize>,
}

/// The sweep's winner.
#[derive(Serialize, Deserialize)]
struct Sweep {
    lr: f64,
    momentum: f64,
}

/// The sweep's winner and its curves.
#[derive(Serialize, Deserialize)]
struct RealCurves {
    lr: f64,
    momentum: f64,
    per_learner: Vec<Vec<f64>>,
    #[serde(default)]
    diverged: Option<usize>,
}

/// Whether `per_learner` holds a curve of `points` values for each of `learners` learners.
fn one_curve_each(per_learner: &[Vec<f64>], learners: usize, points: usize) -> bool {
    per_learner.len() == learners && per_learner.iter().all(|c| c.len() == points)
}

#[derive(Serialize, Deserialize)]
struct Stored<K, V> {
    key: K,
    #[serde(flatten)]
    value: V,
}

/// `measure()`, or what an earlier call with the same key stored at `path`. An unreadable or
/// stale file, or a value that does not `fit` (edited by hand into what it cannot be), is
/// measured over.
fn measured_once<K, V>(path: &Path, key: K, fits: impl Fn(&V) -> bool, measure: impl FnOnce() -> Result<V>) -> Result<V>
where
    K: PartialEq + Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    let stored = std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice::<Stored<K, V>>(&bytes).ok());
    if let Some(stored) = stored.filter(|s| s.key == key && fits(&s.value)) {
        return Ok(stored.value);
    }
    let stored = Stored { key, value: measure()? };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    crate::atomic::write(path, serde_json::to_string(&stored)?.as_bytes())?;
    Ok(stored.value)
}

/// The teacher's per-learner curves, measured once per key in its folder; `data_dir` is where
/// `test` comes from (this comparison's, which a reused run's stored folder may not be).
fn stored_teacher_curves(
    trainer: &Trainer,
    dir: &Path,
    cohort: &eval::Cohort,
    grid: &[usize],
    test: &Split,
    data_dir: PathBuf,
) -> Result<PerLearner> {
    let key = CurvesKey {
        version: MEASUREMENT_VERSION,
        data_dir: Folder::new(data_dir),
        meta_iteration: trainer.iteration,
        checkpoint_sha256: trainer.checkpoint_sha256()?.to_string(),
        learner: cohort.kind,
        bn_eval: cohort.bn_eval,
        before_last_update: cohort.before_last_update,
        learners: cohort.learners,
        seed: cohort.seed,
        test_images: test.len(),
        grid: grid.to_vec(),
        device: format!("{:?}", test.device()),
    };
    let measure = || {
        // Said only when measured: stored curves are reused in silence, as the real-data ones.
        let name = dir.file_name().unwrap_or(dir.as_os_str()).to_string_lossy();
        crate::progress::print_err(&format!("{name}: evaluating {}", text::count(cohort.learners, "learner")));
        let curves = eval::teacher_curves(&trainer.teacher, cohort, grid, test)?;
        Ok(PerLearner { per_learner: curves.per_learner, diverged: Some(curves.diverged) })
    };
    let fits = |v: &PerLearner| one_curve_each(&v.per_learner, cohort.learners, grid.len());
    measured_once(&dir.join(CURVES_JSON), key, fits, measure)
}

/// The real-data baseline: the lr x momentum pair of the sweep with the best mean accuracy at
/// T (measured once per `key` without its grid, in `dir`), and its curves along `key.grid`.
fn swept_real_curves(
    options: &CompareOptions,
    cohort: &eval::Cohort,
    key: &RealKey,
    batch: usize,
    test: &Split,
    dir: &Path,
) -> Result<RealCurves> {
    let grid = &key.grid;
    let sweep_key = RealKey { grid: Vec::new(), ..key.clone() };
    let swept = |s: &Sweep| options.lrs.contains(&s.lr) && options.momenta.contains(&s.momentum);
    let Sweep { lr, momentum } = measured_once(&dir.join(SWEEP_JSON), sweep_key, swept, || {
        crate::progress::print_err(&format!("{REAL}: sweeping lr {:?} x momentum {:?}", options.lrs, options.momenta));
        let sweep = (options.lrs.as_slice(), options.momenta.as_slice());
        let ((lr, momentum), _) = eval::sweep_real(cohort, key.inner_steps, batch, sweep, test, |_, _| {})?;
        Ok(Sweep { lr, momentum })
    })?;
    crate::progress::print_err(&format!(
        "{REAL}: curve to {} steps with lr {lr:?}, momentum {momentum}",
        grid.last().unwrap()
    ));
    let curves = eval::real_curves(cohort, grid, batch, (lr, momentum), test)?;
    Ok(RealCurves { lr, momentum, per_learner: curves.per_learner, diverged: Some(curves.diverged) })
}

/// The entries of `TEACHERS` named in `methods` (all for none), in `TEACHERS`' order. `real`, the
/// table's last row, may be named too: it always runs.
fn chosen_teachers(methods: &[String]) -> Result<Vec<Method>> {
    let names: Vec<&str> = TEACHERS.iter().map(|(name, ..)| *name).chain([REAL]).collect();
    if let Some(unknown) = methods.iter().find(|m| !names.contains(&m.as_str())) {
        bail!("--methods {unknown}: unknown method, expected some of {}", names.join(", "));
    }
    // As the sweep's flags: a name given twice is likely another one mistyped.
    if let Some((_, twice)) = methods.iter().enumerate().find(|&(k, m)| methods[..k].contains(m)) {
        bail!("--methods {}: {twice} is listed twice; expected distinct methods", methods.join(","));
    }
    Ok(TEACHERS.into_iter().filter(|(name, ..)| methods.is_empty() || methods.iter().any(|m| m == name)).collect())
}

/// Step counts the curves are measured at: every `stride` steps up to `last`, and T.
fn grid(stride: usize, last: usize, t: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = (0..=last).step_by(stride).chain([t, last]).collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

pub fn run(options: &CompareOptions, out: &Path, device: Device) -> Result<CompareSummary> {
    let existed = out.exists();
    let result = run_in(options, out, device);
    if result.is_err() && !existed {
        // A comparison refused before it wrote anything (a teacher's config its data cannot
        // fill) leaves no empty folder behind; `remove_dir` takes only an empty one.
        let _ = std::fs::remove_dir(out);
    }
    result
}

/// The comparison's shared config and its teachers, after every check that can refuse them
/// without data: the options, the --out folder, each teacher's config as it will start.
fn checked_base(options: &CompareOptions, out: &Path) -> Result<(Config, Vec<Method>)> {
    // Before hours of meta-training, not after.
    crate::config::check_not_a_file(out, "--out")?;
    // Its teachers are in sub-folders: a run folder is some other command's (outputs written
    // beside its checkpoint would mix the two).
    if checkpoint::holds_run(out) {
        bail!(
            "--out {}: holds a training run (a checkpoint, or logged iterations); expected a `gtn compare` folder, new or one it wrote",
            out.display()
        );
    }
    eval::check_sweep(options.learners, (&options.lrs, &options.momenta))?;
    if !(1..=MAX_REAL_STEPS_FACTOR).contains(&options.real_steps_factor) {
        bail!("--real-steps-factor {}: expected 1 to {MAX_REAL_STEPS_FACTOR}", options.real_steps_factor);
    }
    let teachers = chosen_teachers(&options.methods)?;
    let flags = Flags {
        config: options.config.as_deref(),
        dataset: options.dataset,
        learner: options.learner,
        meta_iters: options.meta_iters,
        checkpoint_every: options.checkpoint_every,
        data_dir: options.data_dir.as_deref(),
        ..Flags::default()
    };
    let base = Config::from_flags(&options.preset, &flags)?;
    if let Some(file) = options.config.as_deref() {
        let unused: Vec<String> = ["teacher", "curriculum"]
            .iter()
            .filter(|k| crate::config::sets_key(file, k))
            .map(|k| format!("`{k}`"))
            .collect();
        if !unused.is_empty() {
            let verb = if unused.len() == 1 { "is" } else { "are" };
            let keys = unused.join(" and ");
            tracing::warn!(
                "{}: the file's {keys} {verb} not used: each method of a comparison sets its own",
                file.display()
            );
        }
    }
    // Every teacher to start, before any trains, naming the --config file and flags
    // (`Trainer::create` checks again, for its other callers); a stored one is not held to
    // checks newer than it.
    for (name, teacher, curriculum) in &teachers {
        if !checkpoint::holds_run(&out.join(name)) {
            teacher_config(&base, *teacher, *curriculum).check_new_run(&flags)?;
        }
    }
    if options.before_last_update && base.bn_eval != BnEval::Train {
        bail!("--before-last-update: the config scores batch norm with each test batch's statistics; expected `bn_eval = \"train\"` (--config)");
    }
    if options.test_images == 1 && base.bn_eval == BnEval::Batch && base.learner.normalises_over_the_batch_alone() {
        bail!(
            "--test-images 1: scored with the test batch's statistics, the {} learner's batch norm over one image is constant; expected at least 2 (0: all)",
            base.learner
        );
    }
    Ok((base, teachers))
}

/// A meta-trained method's measurements: its curve, learners diverged (`None`: curves stored
/// before the count), each learner's accuracy at T, and its meta-training's length.
struct Trained {
    curve: Curve,
    diverged: Option<usize>,
    at_t: Vec<f64>,
    meta_iters: usize,
    minutes: f64,
}

fn run_in(options: &CompareOptions, out: &Path, device: Device) -> Result<CompareSummary> {
    let (base, teachers) = checked_base(options, out)?;
    // The data folder of --data-dir or the --config file (`base`'s, made absolute).
    let settings = RunSettings { data_dir: base.data_dir.clone(), checkpoint_every: options.checkpoint_every };

    let t = base.inner_steps;
    let stride = (t / 8).max(1);
    let teacher_grid = grid(stride, t, t);
    let real_grid = grid(stride, options.real_steps_factor * t, t);
    let data = meta::load_data(&base, device)?;
    // Real data's curves draw batches of it (the teachers' meta-batches are checked as they start).
    let what = format!("config key `batch_size` is {}", base.batch_size);
    data.check_batch(Some("batch_size"), &what, base.batch_size, &base.data_dir())?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create folder", out.display()))?;
    let test = data.test.first(if options.test_images == 0 { usize::MAX } else { options.test_images });
    if options.test_images > test.len() {
        tracing::warn!("--test-images {}: the test split holds {}; all are scored", options.test_images, test.len());
    }

    let cohort = eval::Cohort {
        data: &data,
        kind: base.learner,
        bn_eval: base.bn_eval,
        before_last_update: options.before_last_update,
        learners: options.learners,
        seed: options.seed,
    };
    // Between trainings (evaluating, sweeping real data) a signal quits at once.
    crate::interrupt::quitting_keeps(format!(
        "the teachers trained so far, and the curves measured, are kept in {}; the same command goes on from them",
        out.display()
    ));
    let mut trained = Vec::new();
    for (name, teacher, curriculum) in teachers {
        let dir = out.join(name);
        let trainer =
            train_or_reuse(name, &teacher_config(&base, teacher, curriculum), &dir, &settings, options.budget, device)?;
        let PerLearner { per_learner, diverged } =
            stored_teacher_curves(&trainer, &dir, &cohort, &teacher_grid, &test, base.data_dir())?;
        let t_index = teacher_grid.iter().position(|&s| s == t).expect("T is on every grid");
        trained.push(Trained {
            curve: Curve::new(name, &teacher_grid, &per_learner),
            diverged,
            at_t: per_learner.iter().map(|c| c[t_index]).collect(),
            meta_iters: trainer.config().meta_iters,
            minutes: meta::logged_seconds(&dir)? / 60.0,
        });
    }

    let key = RealKey {
        version: MEASUREMENT_VERSION,
        inner_steps: t,
        dataset: base.dataset,
        data_dir: Folder::new(base.data_dir()),
        valid_size: base.valid_size,
        split_seed: base.seed,
        batch_size: base.batch_size,
        learner: base.learner,
        bn_eval: base.bn_eval,
        before_last_update: options.before_last_update,
        learners: options.learners,
        seed: options.seed,
        test_images: test.len(),
        lrs: options.lrs.clone(),
        momenta: options.momenta.clone(),
        grid: real_grid.clone(),
        device: format!("{:?}", test.device()),
    };
    let real_dir = out.join(REAL);
    let measure = || swept_real_curves(options, &cohort, &key, base.batch_size, &test, &real_dir);
    let fits = |v: &RealCurves| one_curve_each(&v.per_learner, cohort.learners, real_grid.len());
    let RealCurves { lr, momentum, per_learner, diverged } =
        measured_once(&real_dir.join(CURVES_JSON), key.clone(), fits, measure)?;
    let real = Curve::new(REAL, &real_grid, &per_learner);
    let summary_of = |curve: &Curve, diverged_learners: Option<usize>, teacher: Option<&Trained>| {
        let (accuracy_mean, accuracy_std) = curve.at(t);
        // Real data matches itself at T by definition; a noisy curve's first crossing of its own
        // value at T may come earlier.
        let real_steps_to_match = match teacher {
            None => Some(t as f64),
            Some(_) => steps_to_reach(&real.points, accuracy_mean),
        };
        let (speedup_low, speedup_high) =
            teacher.map_or((None, None), |m| speedup_interval(&m.at_t, &per_learner, &real_grid, t, options.seed));
        MethodSummary {
            method: curve.method.clone(),
            accuracy_mean,
            accuracy_std: text::spread(accuracy_std, options.learners),
            meta_iters: teacher.map(|m| m.meta_iters),
            meta_training_minutes: teacher.map(|m| m.minutes),
            real_steps_to_match,
            speedup: real_steps_to_match.map(|s| s / t as f64),
            speedup_low,
            speedup_high,
            diverged_learners,
        }
    };
    let mut methods: Vec<MethodSummary> = trained.iter().map(|m| summary_of(&m.curve, m.diverged, Some(m))).collect();
    methods.push(summary_of(&real, diverged, None));
    let mut curves: Vec<Curve> = trained.into_iter().map(|m| m.curve).collect();
    curves.push(real);
    let summary = CompareSummary {
        dataset: base.dataset.as_str().into(),
        learner: base.learner.to_string(),
        bn_eval: base.bn_eval,
        before_last_update: options.before_last_update,
        inner_steps: t,
        learners: options.learners,
        test_images: test.len(),
        seed: options.seed,
        real_lrs: options.lrs.clone(),
        real_momenta: options.momenta.clone(),
        real_lr: lr,
        real_momentum: momentum,
        real_steps_max: *real_grid.last().expect("grid is not empty"),
        methods,
    };
    write_outputs(out, &curves, &summary)?;
    Ok(summary)
}

fn write_outputs(out: &Path, curves: &[Curve], summary: &CompareSummary) -> Result<()> {
    let mut csv = String::from("method,step,accuracy_mean,accuracy_std\n");
    for curve in curves {
        for (step, mean, std) in &curve.points {
            // One learner has no spread: empty, not 0, as the table and JSON leave it out.
            let std = if summary.learners > 1 { format!("{std:.6}") } else { String::new() };
            writeln!(csv, "{},{step},{mean:.6},{std}", curve.method).expect("writing to a String");
        }
    }
    crate::atomic::write(&out.join(CURVES_CSV), csv.as_bytes())?;
    crate::atomic::write(&out.join(TABLE_MD), summary.table().as_bytes())?;
    crate::atomic::write(&out.join(SUMMARY_JSON), serde_json::to_string_pretty(summary)?.as_bytes())?;
    let series: Vec<Series> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            name: c.method.clone(),
            points: c.points.iter().map(|&(s, m, sd)| (s as f64, 100.0 * m, 100.0 * sd)).collect(),
            color: i,
            dashed: false,
        })
        .collect();
    let over = match summary.learners {
        1 => "1 learner".to_owned(),
        n => format!("mean ± std over {n} learners"),
    };
    let title = format!("{}: {} learner, test accuracy ({over})", summary.dataset, summary.learner);
    // The methods end within a few points of each other near the top: a second panel zooms the
    // y axis onto that band (the x axis stays whole: real data may match them late).
    let lowest_end = summary.methods.iter().map(|m| 100.0 * m.accuracy_mean).fold(f64::INFINITY, f64::min);
    Chart {
        title: &title,
        x_label: "inner training step",
        y_label: "test accuracy (%)",
        series: &series,
        zoom_from: Some((lowest_end - 1.0).floor()),
        log_x: false,
    }
    .write_png(&out.join(CURVES_PNG))
}

impl CompareSummary {
    /// Markdown: accuracy at T and the speed-up over real data per method.
    pub fn table(&self) -> String {
        let mut md = format!(
            "{} with the {} learner, T = {}, {} (seed {}), first {} test images, batch norm scored with the {}; real data: lr {:?}, momentum {} (best of lr {:?} x momentum {:?})\n\n\
             | method | meta-iterations | meta-training min | accuracy at T | real steps to match | speed-up{} |\n\
             |---|---|---|---|---|---|\n",
            self.dataset,
            self.learner,
            text::count(self.inner_steps, "inner step"),
            text::count(self.learners, "learner"),
            self.seed,
            self.test_images,
            eval::scoring(self.bn_eval, self.before_last_update),
            self.real_lr,
            self.real_momentum,
            self.real_lrs,
            self.real_momenta,
            // One learner has no spread to draw an interval from.
            if self.learners > 1 { " (95% interval)" } else { "" }
        );
        let beyond = format!("> {:.1}x", self.real_steps_max as f64 / self.inner_steps as f64);
        for m in &self.methods {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let (steps, mut speedup) = match (m.real_steps_to_match, m.speedup) {
                (Some(s), Some(x)) => (format!("{s:.1}"), format!("{x:.2}x")),
                _ => (format!("> {}", self.real_steps_max), beyond.clone()),
            };
            if m.meta_iters.is_some() && self.learners > 1 {
                let bound = |b: Option<f64>| b.map_or(beyond.clone(), |x| format!("{x:.2}x"));
                write!(speedup, " ({} to {})", bound(m.speedup_low), bound(m.speedup_high))
                    .expect("writing to a String");
            }
            writeln!(
                md,
                "| {} | {} | {} | {} | {steps} | {speedup} |",
                m.method,
                opt(m.meta_iters.map(|i| i.to_string())),
                opt(m.meta_training_minutes.map(|x| format!("{x:.1}"))),
                text::mean_pm_std(m.accuracy_mean, m.accuracy_std, |x| format!("{:.2}%", 100.0 * x)),
            )
            .expect("writing to a String");
        }
        for (m, n) in self.methods.iter().filter_map(|m| m.diverged_learners.filter(|&n| n > 0).map(|n| (m, n))) {
            writeln!(md, "\n{}: {}", m.method, eval::diverged_note(n, self.learners)).expect("writing to a String");
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data folder is one however it is spelled; a relative one an older gtn stored matches
    /// nothing (the folder it was read from is unknown).
    #[test]
    fn data_folders_compare_by_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert_eq!(Folder::new(dir.path().to_path_buf()), Folder::new(link.clone()));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(Folder::new(dir.path().to_path_buf()), Folder(dir.path().join("sub/..")));
        assert_ne!(Folder::new(dir.path().to_path_buf()), Folder(dir.path().join("other")));
        let cwd = std::env::current_dir().unwrap();
        assert_ne!(Folder(PathBuf::from("tests")), Folder::new(cwd.join("tests")), "stored relative");
        // A name JSON cannot hold is stored, lossily.
        let odd = Folder(PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/d/mn\xffist")));
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"/d/mn\u{fffd}ist\"");
    }

    #[test]
    fn steps_to_reach_interpolates_the_first_crossing() {
        // Real data gains 1% per step from 50% at step 0 (grid every 4 steps), dips, then recovers.
        let curve: Vec<(usize, f64, f64)> = (0..=10).map(|i| (4 * i, 0.5 + 0.04 * i as f64, 0.0)).collect();
        assert_eq!(steps_to_reach(&curve, 0.5), Some(0.0));
        assert!((steps_to_reach(&curve, 0.70).unwrap() - 20.0).abs() < 1e-9);
        assert!((steps_to_reach(&curve, 0.62).unwrap() - 12.0).abs() < 1e-9);
        assert!((steps_to_reach(&curve, 0.71).unwrap() - 21.0).abs() < 1e-9);
        assert_eq!(steps_to_reach(&curve, 0.95), None);
        let dip = [(0, 0.1, 0.0), (8, 0.9, 0.0), (16, 0.5, 0.0), (24, 0.95, 0.0)];
        assert!((steps_to_reach(&dip, 0.5).unwrap() - 4.0).abs() < 1e-9, "first crossing, not the later one");
        // GTN at 32 steps = real data at 128 steps: the paper's 4x.
        let real: Vec<(usize, f64, f64)> = (0..=16).map(|i| (16 * i, i as f64 / 16.0, 0.0)).collect();
        assert!((steps_to_reach(&real, 0.5).unwrap() / 32.0 - 4.0).abs() < 1e-9);
    }

    #[test]
    fn the_speedup_interval_comes_from_the_learners_spread() {
        // Real data gains 1 point per step from 50%; learner k runs 2(k - 2) points off the mean.
        let grid: Vec<usize> = (0..=40).step_by(4).collect();
        let real: Vec<Vec<f64>> =
            (0..5).map(|k| grid.iter().map(|&s| 0.5 + 0.01 * s as f64 + 0.02 * (k as f64 - 2.0)).collect()).collect();
        // The same learners, all as good as real data's mean at 16 steps after T = 8: 2x.
        let (low, high) = speedup_interval(&[0.66; 5], &real, &grid, 8, 0);
        let (low, high) = (low.unwrap(), high.unwrap());
        assert!(low < 2.0 && 2.0 < high && high - low > 0.5, "{low} to {high}");
        assert_eq!(speedup_interval(&[0.66; 5], &real, &grid, 8, 0), (Some(low), Some(high)), "seeded");
        // Without spread on either side, the interval is the point.
        let flat: Vec<Vec<f64>> = vec![grid.iter().map(|&s| 0.5 + 0.01 * s as f64).collect(); 5];
        let (low, high) = speedup_interval(&[0.66; 5], &flat, &grid, 8, 0);
        assert!((low.unwrap() - 2.0).abs() < 1e-9 && (high.unwrap() - 2.0).abs() < 1e-9, "{low:?} {high:?}");
        // Above the curve's end (90%) in every resample: both bounds past it.
        assert_eq!(speedup_interval(&[0.99; 5], &real, &grid, 8, 0), (None, None));
        assert_eq!(speedup_interval(&[0.66], &real[..1], &grid, 8, 0), (None, None), "one learner: no spread");
    }

    #[test]
    fn compares_on_the_cifar10_fixture() {
        let folder = crate::data::cifar::tests::fixture_folder();
        let work = tempfile::tempdir().unwrap();
        let config = work.path().join("cifar.toml");
        let overrides = "dataset = \"cifar10\"\nvalid_size = 20\nmeta_iters = 2\nmeta_batch = 16\n";
        std::fs::write(&config, overrides).unwrap();
        let options = CompareOptions {
            preset: "tiny".into(),
            config: Some(config),
            dataset: Some(DatasetName::Cifar10),
            learner: None,
            data_dir: Some(folder.path().to_path_buf()),
            methods: Vec::new(),
            meta_iters: None,
            budget: None,
            checkpoint_every: None,
            learners: 1,
            lrs: vec![0.05],
            momenta: vec![0.9],
            test_images: 0,
            real_steps_factor: 2,
            before_last_update: false,
            seed: 0,
        };
        let out = work.path().join("compare");
        let summary = run(&options, &out, Device::Cpu).unwrap();
        assert_eq!((summary.dataset.as_str(), summary.test_images, summary.methods.len()), ("cifar10", 20, 6));
        assert_eq!((summary.seed, &summary.real_lrs, &summary.real_momenta), (0, &vec![0.05], &vec![0.9]));
        assert!(summary.table().contains("1 learner (seed 0), first 20 test images"), "{}", summary.table());
        assert!(summary.table().contains("| real steps to match | speed-up |\n"), "no interval: {}", summary.table());
        assert!(summary.table().contains("(best of lr [0.05] x momentum [0.9])"), "{}", summary.table());
        assert!(summary.methods.iter().all(|m| (0.0..=1.0).contains(&m.accuracy_mean)));
        assert!(summary.methods.iter().all(|m| m.accuracy_std.is_none()), "one learner has no spread");
        let teacher = checkpoint::load(&out.join("gtn-full"), Device::Cpu).unwrap().teacher;
        let plan = teacher.curriculum.plan(&mut rand::SeedableRng::seed_from_u64(0), Device::Cpu);
        assert_eq!(teacher.synthesize(&plan[0]).0.size(), [20, 3, 32, 32]);
        for file in [CURVES_CSV, CURVES_PNG, TABLE_MD, SUMMARY_JSON] {
            assert!(out.join(file).is_file(), "{file} missing");
        }
        let csv = std::fs::read_to_string(out.join(CURVES_CSV)).unwrap();
        assert!(csv.lines().skip(1).all(|row| row.ends_with(',')), "one learner has no spread: {csv}");

        // A re-run reuses the stored curves of a method measured with the same key (planted here
        // as 12.5%), and measures again where the key differs (another meta-iteration, another
        // data folder, another checkpoint, an older gtn's measurement).
        let plant = |name: &str, change: &dyn Fn(&mut CurvesKey)| {
            let path = out.join(name).join(CURVES_JSON);
            let mut stored: Stored<CurvesKey, PerLearner> =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            change(&mut stored.key);
            stored.value.per_learner.iter_mut().for_each(|c| c.fill(0.125));
            stored.value.diverged = Some(1);
            std::fs::write(&path, serde_json::to_string(&stored).unwrap()).unwrap();
        };
        // The data folder as a link to it: the same folder.
        let link = work.path().join("link");
        std::os::unix::fs::symlink(folder.path(), &link).unwrap();
        plant("gtn-full", &|key| key.data_dir = Folder(link.clone()));
        plant("gtn-none", &|key| key.meta_iteration += 1);
        plant("distill", &|key| key.data_dir.0.push("elsewhere"));
        plant("gtn-batch-shuffled", &|key| key.checkpoint_sha256.replace_range(..1, "x"));
        plant("gtn-all-shuffled", &|key| key.version = 0);
        let real_path = out.join(REAL).join(CURVES_JSON);
        let mut real: Stored<RealKey, RealCurves> =
            serde_json::from_slice(&std::fs::read(&real_path).unwrap()).unwrap();
        real.value.per_learner.iter_mut().for_each(|c| c.fill(0.125));
        // As a build before the count stored it: not counted.
        real.value.diverged = None;
        std::fs::write(&real_path, serde_json::to_string(&real).unwrap()).unwrap();
        let again = run(&options, &out, Device::Cpu).unwrap();
        let method = |s: &CompareSummary, name: &str| s.methods.iter().find(|m| m.method == name).unwrap().clone();
        let accuracy = |s: &CompareSummary, name: &str| method(s, name).accuracy_mean;
        assert_eq!(accuracy(&again, "gtn-full"), 0.125);
        assert_eq!(accuracy(&again, REAL), 0.125);
        // Reused curves keep their count of diverged learners (planted as 1), which the table
        // names, or its absence (not counted); those measured again count their own.
        let diverged = |name: &str| method(&again, name).diverged_learners;
        assert_eq!((diverged("gtn-full"), diverged(REAL), diverged("gtn-none")), (Some(1), None, Some(0)));
        let note = "\n\ngtn-full: 1 of 1 learner was trained to NaN or infinite weights";
        let table = again.table();
        assert!(table.contains(note) && !table.contains("gtn-none: 1") && !table.contains("\nreal: "), "{table}");
        assert_eq!(accuracy(&again, "gtn-none"), accuracy(&summary, "gtn-none"));
        for name in ["distill", "gtn-batch-shuffled", "gtn-all-shuffled"] {
            assert_eq!(accuracy(&again, name), accuracy(&summary, name), "{name}");
        }
        // Real data's flat planted curve first reaches its own value at step 0; its row is T, 1x.
        let real_row = again.methods.iter().find(|m| m.method == REAL).unwrap();
        assert_eq!((real_row.real_steps_to_match, real_row.speedup), (Some(4.0), Some(1.0)));
        // A teacher above the flat planted real curve is never matched within it: "> 2T".
        let above: Vec<&MethodSummary> = again.methods.iter().filter(|m| m.accuracy_mean > 0.125).collect();
        assert!(!above.is_empty(), "{:?}", again.methods);
        assert!(above.iter().all(|m| (m.real_steps_to_match, m.speedup) == (None, None)), "{above:?}");
        // One learner has no spread for an interval; with more, bounds past the curve read as such.
        assert!(again.table().contains("| > 8 | > 2.0x |"), "{}", again.table());
        let several = CompareSummary { learners: 5, ..again.clone() };
        assert!(several.table().contains("| > 8 | > 2.0x (> 2.0x to > 2.0x) |"), "{}", several.table());
        // A stored curve of the wrong length (edited by hand) is measured again, not read past its end.
        let path = out.join("gtn-full").join(CURVES_JSON);
        let mut stored: Stored<CurvesKey, PerLearner> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        stored.value.per_learner[0].pop();
        std::fs::write(&path, serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(accuracy(&run(&options, &out, Device::Cpu).unwrap(), "gtn-full"), accuracy(&summary, "gtn-full"));
        let other_sweep = CompareOptions { lrs: vec![0.05, 0.1], ..options.clone() };
        let swept = run(&other_sweep, &out, Device::Cpu).unwrap();
        assert_ne!(accuracy(&swept, REAL), 0.125, "a sweep with other values measures again");
        // The sweep's winner is kept apart from its curve: a longer curve (or one a stopped run
        // never finished) reuses it (planted here as the other lr).
        let sweep_path = out.join(REAL).join(SWEEP_JSON);
        let mut sweep: Stored<RealKey, Sweep> = serde_json::from_slice(&std::fs::read(&sweep_path).unwrap()).unwrap();
        sweep.value.lr = if swept.real_lr == 0.05 { 0.1 } else { 0.05 };
        std::fs::write(&sweep_path, serde_json::to_string(&sweep).unwrap()).unwrap();
        let longer = run(&CompareOptions { real_steps_factor: 3, ..other_sweep.clone() }, &out, Device::Cpu).unwrap();
        assert_eq!(longer.real_lr, sweep.value.lr);
        // A winner outside the sweep (edited by hand) is swept again.
        sweep.value.lr = 0.3;
        std::fs::write(&sweep_path, serde_json::to_string(&sweep).unwrap()).unwrap();
        let again = run(&CompareOptions { real_steps_factor: 4, ..other_sweep.clone() }, &out, Device::Cpu).unwrap();
        assert_eq!(again.real_lr, swept.real_lr);

        // A subset of the teachers, named in any order, runs in the table's order beside real data.
        let subset = CompareOptions { methods: vec!["distill".into(), "gtn-full".into()], ..options.clone() };
        let some = run(&subset, &out, Device::Cpu).unwrap();
        let names: Vec<&str> = some.methods.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(names, ["gtn-full", "distill", REAL]);
        let real_only = CompareOptions { methods: vec![REAL.into()], ..options.clone() };
        let names: Vec<String> =
            run(&real_only, &out, Device::Cpu).unwrap().methods.into_iter().map(|m| m.method).collect();
        assert_eq!(names, [REAL]);
        // Each teacher is checked as it will train: distillation with one-image batches suits a
        // CIFAR learner (its batch norm averages over positions too), a generator's would not.
        let single = work.path().join("single.toml");
        std::fs::write(&single, format!("{overrides}batch_size = 1\nlearner = \"cifar-cnn\"\n")).unwrap();
        let distill =
            CompareOptions { methods: vec!["distill".into()], config: Some(single.clone()), ..options.clone() };
        assert!(run(&distill, &work.path().join("single"), Device::Cpu).is_ok());
        let generator = CompareOptions { methods: vec!["gtn-full".into()], config: Some(single), ..options.clone() };
        let err = run(&generator, &work.path().join("single-gtn"), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("single.toml with --dataset cifar10: config key `batch_size` is 1"), "{err}");
        let err = run(&options, &out.join("gtn-full"), Device::Cpu).unwrap_err().to_string();
        assert!(err.ends_with("gtn-full: holds a training run (a checkpoint, or logged iterations); expected a `gtn compare` folder, new or one it wrote"), "{err}");
        let typo = CompareOptions { methods: vec!["gtn-ful".into()], ..options.clone() };
        let error = run(&typo, &out, Device::Cpu).unwrap_err().to_string();
        assert!(error.starts_with("--methods gtn-ful: unknown method, expected some of gtn-none,"), "{error}");
        let twice =
            CompareOptions { methods: vec!["gtn-full".into(), "real".into(), "gtn-full".into()], ..options.clone() };
        let error = run(&twice, &out, Device::Cpu).unwrap_err().to_string();
        assert_eq!(error, "--methods gtn-full,real,gtn-full: gtn-full is listed twice; expected distinct methods");

        // Scored as the reference logs, with a `train` teacher; refused before any training
        // with test-batch statistics.
        let logged = CompareOptions { before_last_update: true, ..subset };
        let error = run(&logged, &work.path().join("refused"), Device::Cpu).unwrap_err().to_string();
        assert!(error.starts_with("--before-last-update: the config scores batch norm with each test"), "{error}");
        assert!(!work.path().join("refused").exists());
        let train = work.path().join("train.toml");
        std::fs::write(&train, format!("{overrides}bn_eval = \"train\"\n")).unwrap();
        let logged = CompareOptions { config: Some(train), ..logged };
        let summary = run(&logged, &work.path().join("logged"), Device::Cpu).unwrap();
        assert!(summary.before_last_update && summary.table().contains("last training batch's, before its update"));
        let stored = std::fs::read_to_string(work.path().join("logged").join(REAL).join(CURVES_JSON)).unwrap();
        assert!(stored.contains("\"before_last_update\":true"), "{stored}");
    }

    #[test]
    fn grids_hold_zero_t_and_the_end() {
        assert_eq!(grid(4, 32, 32), vec![0, 4, 8, 12, 16, 20, 24, 28, 32]);
        assert_eq!(grid(2, 10, 5), vec![0, 2, 4, 5, 6, 8, 10]);
        assert_eq!(grid(3, 7, 7), vec![0, 3, 6, 7]);
    }
}
