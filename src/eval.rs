//! Evaluation: train fresh learners for a few steps (on the teacher's data, or on real data for
//! the baseline) and report their accuracy on the real test set.

use anyhow::{bail, Result};
use serde::Serialize;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::PathBuf;

use tch::{Device, Tensor};

use crate::data::{BatchSampler, Dataset, DatasetName, Split};
use crate::inner::{self, LearnerState};
use crate::learner::{BnEval, Learner, LearnerKind};
use crate::meta::iteration_rng;
use crate::nn;
use crate::teacher::Teacher;
use crate::text::spread;

/// Test images per forward pass; batch norm uses each chunk's statistics unless the learner is
/// scored with its training batch's ([`BnEval::Train`]).
pub const EVAL_CHUNK: i64 = 1000;

/// Accuracy of several independently trained learners.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The checkpoint whose data taught the learners (none for real data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherRef>,
    pub dataset: DatasetName,
    /// Real test images the learners were scored on.
    pub test_images: usize,
    /// Seed of the learners' initial weights and of the teacher's or real data's batches for them.
    pub seed: u64,
    pub learner: LearnerKind,
    /// Which batch-norm statistics scored the learners.
    pub bn_eval: BnEval,
    /// Scored before their last update, as the reference logs its test accuracy ([`Cohort`]).
    pub before_last_update: bool,
    pub learners: usize,
    pub steps: usize,
    pub test_accuracy_mean: f64,
    /// `None` (JSON null) for one learner: it has no spread.
    pub test_accuracy_std: Option<f64>,
    pub test_accuracy_min: f64,
    pub test_accuracy_max: f64,
    pub test_accuracies: Vec<f64>,
    /// Learners whose weights training made NaN or infinite (scored on what those predict).
    pub diverged_learners: usize,
}

/// Which teacher an evaluation scored: a run folder's checkpoint, at some meta-iteration.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherRef {
    /// The run folder as given (displayed: a path need not be UTF-8, JSON must).
    pub dir: String,
    pub meta_iteration: usize,
    /// The run's length: more than `meta_iteration` for a run stopped early or still training.
    pub meta_iters: usize,
    /// The length asked for, where a time budget shortened the run to `meta_iters`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_iters_requested: Option<usize>,
    pub checkpoint_sha256: String,
}

impl TeacherRef {
    pub fn heading(&self) -> String {
        let length = RunLength { total: self.meta_iters, requested: self.meta_iters_requested };
        teacher_heading(std::path::Path::new(&self.dir), self.meta_iteration, length)
    }
}

/// How long a run is, and how long it was asked to be where a time budget shortened it.
#[derive(Debug, Clone, Copy)]
pub struct RunLength {
    pub total: usize,
    pub requested: Option<usize>,
}

impl RunLength {
    pub fn of(config: &crate::config::Config) -> RunLength {
        RunLength { total: config.meta_iters, requested: config.meta_iters_requested }
    }
}

/// A teacher's report heading: its folder and meta-iteration `done`, whether meta-training
/// finished, and whether a time budget cut it short of the length asked for: a teacher of fewer
/// meta-iterations than its command asked is not the one its preset promises.
pub fn teacher_heading(dir: &std::path::Path, done: usize, length: RunLength) -> String {
    let total = length.total;
    let unfinished = if done < total { format!(" of {total}, meta-training unfinished") } else { String::new() };
    let budget = match length.requested {
        Some(asked) => format!("; a time budget shortened the run from the {asked} asked for"),
        None => String::new(),
    };
    format!("{} (meta-iteration {done}{unfinished}{budget})", dir.display())
}

impl EvalReport {
    /// The report of `curves` measured at one step count, `steps`.
    pub fn from_curves(cohort: &Cohort, steps: usize, curves: &Curves) -> EvalReport {
        assert!(curves.per_learner.iter().all(|c| c.len() == 1), "curves of one step count");
        let accs = curves.at(0);
        let (mean, std) = mean_std(&accs);
        EvalReport {
            teacher: None,
            dataset: cohort.data.name,
            test_images: cohort.data.test.len(),
            seed: cohort.seed,
            learner: cohort.kind,
            bn_eval: cohort.bn_eval,
            before_last_update: cohort.before_last_update,
            learners: accs.len(),
            steps,
            test_accuracy_mean: mean,
            test_accuracy_std: spread(std, accs.len()),
            test_accuracy_min: accs.iter().copied().fold(f64::INFINITY, f64::min),
            test_accuracy_max: accs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            test_accuracies: accs,
            diverged_learners: curves.diverged,
        }
    }

    pub fn table(&self) -> String {
        format!(
            "| learner | batch norm scored with | learners | steps | test accuracy mean | std | min | max |\n|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.2}% | {} | {:.2}% | {:.2}% |",
            self.learner,
            scoring(self.bn_eval, self.before_last_update),
            self.learners,
            self.steps,
            100.0 * self.test_accuracy_mean,
            self.test_accuracy_std.map_or("-".into(), |std| format!("{:.2}%", 100.0 * std)),
            100.0 * self.test_accuracy_min,
            100.0 * self.test_accuracy_max
        )
    }

    /// Prints the report as one JSON object, or as `what` and a table.
    pub fn print(&self, json: bool, what: &str) {
        if json {
            crate::outln!("{}", serde_json::to_string(self).expect("a report serialises"));
        } else {
            let before = if self.before_last_update { " (scored before the last update)" } else { "" };
            let steps = crate::text::count(self.steps, "step");
            let images = crate::text::count(self.test_images, &format!("{} test image", self.dataset));
            crate::outln!("{what}: real test accuracy after {steps}{before}, on {images}\n{}", self.table());
            if self.diverged_learners > 0 {
                crate::outln!("{}", diverged_note(self.diverged_learners, self.learners));
            }
        }
    }
}

/// Says that `diverged` of `learners` learners were trained to NaN or infinite weights.
pub fn diverged_note(diverged: usize, learners: usize) -> String {
    let verb = if diverged == 1 { "was" } else { "were" };
    format!(
        "{diverged} of {} {verb} trained to NaN or infinite weights, and scored on what those weights predict",
        crate::text::count(learners, "learner")
    )
}

/// One pair of a real-data sweep, scored at its one step count: `lr 0.1, momentum 0.5: 97.04% ±
/// 0.26%`, and how many learners trained to NaN or infinite weights, if any.
pub fn sweep_line((lr, momentum): (f64, f64), curves: &Curves) -> String {
    let accuracies = curves.at(0);
    let (mean, std) = mean_std(&accuracies);
    let accuracy = crate::text::mean_pm_std(mean, spread(std, accuracies.len()), |x| format!("{:.2}%", 100.0 * x));
    let diverged = match curves.diverged {
        0 => String::new(),
        n => format!(" ({n} of {} trained to NaN or infinite weights)", accuracies.len()),
    };
    format!("lr {lr:?}, momentum {momentum}: {accuracy}{diverged}")
}

/// Which statistics a learner's batch norm was scored with, in words.
pub fn scoring(bn_eval: BnEval, before_last_update: bool) -> &'static str {
    match (bn_eval, before_last_update) {
        (BnEval::Batch, _) => "test batch's statistics",
        (BnEval::Train, false) => "last training batch's",
        (BnEval::Train, true) => "last training batch's, before its update",
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Median (the mean of the two middle values for an even count); NaN for none.
pub fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Accuracy of the trained learner `state` on the whole split, predicted in chunks of at most
/// `EVAL_CHUNK` images. When batch norm uses each chunk's statistics, chunks are large and of
/// nearly equal size (10,001 images are chunks of 910 and 909, not ten of 1,000 and one alone).
pub fn test_accuracy(learner: &Learner, state: &LearnerState, split: &Split) -> f64 {
    let n = split.len() as i64;
    let logits = tch::no_grad(|| {
        let chunks: Vec<Tensor> =
            chunk_bounds(n).into_iter().map(|(start, len)| state.score(learner, &split.images(start, len))).collect();
        Tensor::cat(&chunks, 0)
    });
    nn::accuracy(&logits, &split.labels)
}

/// `(start, length)` of the fewest chunks of at most `EVAL_CHUNK` covering `0..n`, sizes
/// differing by at most one.
fn chunk_bounds(n: i64) -> Vec<(i64, i64)> {
    let count = (n + EVAL_CHUNK - 1) / EVAL_CHUNK;
    let mut start = 0;
    (0..count)
        .map(|k| {
            let len = n / count + i64::from(k < n % count);
            start += len;
            (start - len, len)
        })
        .collect()
}

/// Seed of evaluated learner `k`: a stream of its own, apart from meta-training's iteration seeds.
fn learner_seed(seed: u64, k: usize) -> rand::rngs::StdRng {
    iteration_rng(seed ^ 0x005E_ED0F_E7A1, k)
}

/// The data a teacher of `config` is scored on: its dataset's test split, read from the run's
/// data folder. The run's validation hold-out plays no part, so none is held out: a folder with
/// fewer training images than the run held out (a slice of the dataset) serves too.
pub fn load_test_data(config: &crate::config::Config, device: Device) -> Result<Dataset> {
    Dataset::load(config.dataset, &config.data_dir(), 0, config.seed, device)
}

/// A warning when the test images of `data` (read from `data_dir`) are not as many as those of
/// the data the teacher in `dir` was meta-trained with (`saved`, its checkpoint's
/// [`Dataset::sizes`]): other files, or a slice. Its learners are then scored on other images.
pub fn other_data_warning(
    saved: Option<[i64; 3]>,
    data: &Dataset,
    data_dir: &std::path::Path,
    dir: &std::path::Path,
) -> Option<String> {
    let [_, _, test] = saved?;
    let here = data.test.len() as i64;
    (here != test).then(|| {
        format!(
            "{}: holds {here} test images of {}; the data the run in {} was meta-trained with held {test}: the learners are scored on other test images than its run's",
            data_dir.display(),
            data.name,
            dir.display()
        )
    })
}

/// What `gtn eval` scores: the teacher saved in `dir`, and the flags that change how.
#[derive(Debug, Clone)]
pub struct RunEval {
    pub dir: PathBuf,
    /// The dataset's folder, if not where the run was trained.
    pub data_dir: Option<PathBuf>,
    /// `None`: the run's own (learner, batch-norm statistics, T).
    pub learner: Option<LearnerKind>,
    pub bn_eval: Option<BnEval>,
    pub steps: Option<usize>,
    pub before_last_update: bool,
    pub learners: usize,
    pub seed: u64,
}

/// Scores the teacher of the run in `options.dir` on fresh learners; the report names it.
pub fn evaluate_run(options: &RunEval, device: Device) -> Result<EvalReport> {
    let mut ckpt = crate::checkpoint::load(&options.dir, device)?;
    let config = &mut ckpt.teacher.config;
    let stored = config.data_dir.take();
    config.data_dir = options.data_dir.clone().or(stored.clone());
    let from = crate::checkpoint::RunsData {
        dir: &options.dir,
        folder: &config.data_dir(),
        stored: stored.as_deref(),
        dataset: config.dataset,
        saved: ckpt.data,
    };
    let data = crate::checkpoint::runs_data(load_test_data(config, device), &from)?;
    if let Some(warning) = other_data_warning(ckpt.data, &data, &config.data_dir(), &options.dir) {
        tracing::warn!("{warning}");
    }
    let cohort = Cohort {
        data: &data,
        kind: options.learner.unwrap_or(config.learner),
        bn_eval: options.bn_eval.unwrap_or(config.bn_eval),
        before_last_update: options.before_last_update,
        learners: options.learners,
        seed: options.seed,
    };
    let steps = options.steps.unwrap_or(config.inner_steps);
    let report = evaluate_teacher(&ckpt.teacher, &cohort, steps)?;
    let teacher = TeacherRef {
        dir: options.dir.display().to_string(),
        meta_iteration: ckpt.iteration,
        meta_iters: ckpt.teacher.config.meta_iters,
        meta_iters_requested: ckpt.teacher.config.meta_iters_requested,
        checkpoint_sha256: ckpt.sha256,
    };
    Ok(EvalReport { teacher: Some(teacher), ..report })
}

/// Trains the cohort's learners for `steps` steps on the teacher's data and scores them on the
/// test set.
pub fn evaluate_teacher(teacher: &Teacher, cohort: &Cohort, steps: usize) -> Result<EvalReport> {
    let t = teacher.config.inner_steps;
    if steps == 0 || steps > t {
        bail!("--steps {steps}: the teacher was trained for {t} inner steps; expected 1..={t}");
    }
    let curves = teacher_curves(teacher, cohort, &[steps], &cohort.data.test)?;
    Ok(EvalReport::from_curves(cohort, steps, &curves))
}

/// Accuracy on `test` of fresh learners trained on the teacher's data, after each step count in
/// `grid` (ascending, at most T; 0 is the untrained learner).
pub fn teacher_curves(teacher: &Teacher, cohort: &Cohort, grid: &[usize], test: &Split) -> Result<Curves> {
    let t = teacher.config.inner_steps;
    if let Some(&bad) = grid.iter().find(|&&s| s > t) {
        bail!("evaluation at step {bad}: the teacher was trained for {t} inner steps; expected at most {t}");
    }
    // Meta-training refuses such a pair; `--learner` can make one from a convolutional teacher's.
    let b = teacher.config.batch_size;
    if b < 2 && cohort.kind.normalises_over_the_batch_alone() {
        bail!(
            "learner {}: the teacher's batches hold {b} image, and this learner's batch norm over one image is constant, so it would learn nothing from them; expected a learner whose batch norm also averages over positions (--learner)",
            cohort.kind
        );
    }
    let device = test.device();
    cohort.train(grid, test, |learner, state, rng, _, steps, after_step| {
        let plan = teacher.curriculum.plan(rng, device);
        teacher.teach(learner, state, &plan, steps, false, after_step)
    })
}

/// A real-data sweep needs learners and a value of each hyper-parameter; the error names the flag.
pub fn check_sweep(learners: usize, (lrs, momenta): (&[f64], &[f64])) -> Result<()> {
    if learners == 0 {
        bail!("--learners 0: expected at least 1");
    }
    for (flag, values) in [("--lrs", lrs), ("--momenta", momenta)] {
        if values.is_empty() {
            bail!("{flag}: no values, expected at least one");
        }
        // Each setting would be trained once per listing, and ties go to the first.
        if let Some(twice) = values.iter().enumerate().find_map(|(k, v)| values[..k].contains(v).then_some(v)) {
            let listed: Vec<String> = values.iter().map(f64::to_string).collect();
            bail!("{flag} {}: {twice} is listed twice; expected distinct values", listed.join(","));
        }
    }
    Ok(())
}

/// `gtn baseline real`: fresh learners trained on real data with each pair of a learning-rate x
/// momentum sweep.
#[derive(Debug, Clone)]
pub struct RealBaseline {
    pub dataset: DatasetName,
    /// Default: the dataset's folder.
    pub data_dir: Option<PathBuf>,
    /// Training images held out for validation (not trained on); default: the dataset's.
    pub valid_size: Option<usize>,
    pub learner: LearnerKind,
    pub bn_eval: BnEval,
    pub before_last_update: bool,
    pub learners: usize,
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    pub lrs: Vec<f64>,
    pub momenta: Vec<f64>,
    /// The run `--like` named, if any, and which of the values above are its: errors about
    /// them name its config.toml, not a flag that was not given.
    pub like: Option<Like>,
}

#[derive(Debug, Clone)]
pub struct Like {
    pub dir: PathBuf,
    /// The run's data folder (its `data_dir`, or its dataset's default).
    pub folder: PathBuf,
    /// Whether the batch size is the run's (no `--batch-size` given).
    pub batch: bool,
}

/// `baseline real`'s settings that a teacher's run fixes (`--like DIR`), so that the baseline
/// compares with `gtn eval DIR`: its dataset, data folder, validation size, learner, steps (T),
/// batch size and batch-norm scoring. Without a run, the paper's: base_fc on MNIST, 32 steps
/// of 128 images.
#[derive(Debug, Clone)]
pub struct RealDefaults {
    pub dataset: DatasetName,
    pub data_dir: Option<PathBuf>,
    pub valid_size: Option<usize>,
    pub learner: LearnerKind,
    pub steps: usize,
    pub batch: usize,
    pub bn_eval: BnEval,
}

impl RealDefaults {
    pub fn of(run: Option<&std::path::Path>) -> Result<RealDefaults> {
        let Some(dir) = run else {
            return Ok(RealDefaults {
                dataset: DatasetName::Mnist,
                data_dir: None,
                valid_size: None,
                learner: LearnerKind::BaseFc,
                steps: 32,
                batch: 128,
                bn_eval: BnEval::Batch,
            });
        };
        let c = crate::checkpoint::read_config(dir)?;
        Ok(RealDefaults {
            dataset: c.dataset,
            data_dir: Some(c.data_dir()),
            valid_size: Some(c.valid_size),
            learner: c.learner,
            steps: c.inner_steps,
            batch: c.batch_size,
            bn_eval: c.bn_eval,
        })
    }
}

/// The sweep's best pair and its learners' test accuracies.
#[derive(Debug, Clone, Serialize)]
pub struct RealBaselineReport {
    #[serde(flatten)]
    pub report: EvalReport,
    pub lr: f64,
    pub momentum: f64,
    /// Real images per step, and the run `--like` took its defaults from: the row's settings
    /// beyond the report's.
    pub batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub like: Option<PathBuf>,
}

/// Runs the real-data baseline; `each` sees every pair's learners as they are measured.
pub fn baseline_real(
    opts: &RealBaseline,
    device: Device,
    each: impl FnMut((f64, f64), &Curves),
) -> Result<RealBaselineReport> {
    let batch = match &opts.like {
        Some(like) if like.batch => {
            format!(
                "`batch_size` {} of {} (--like)",
                opts.batch,
                like.dir.join(crate::checkpoint::CONFIG_FILE).display()
            )
        }
        _ => format!("--batch-size {}", opts.batch),
    };
    if opts.batch < 2 && opts.learner.normalises_over_the_batch_alone() {
        bail!("{batch}: the {} learner's batch norm over one image is constant; expected at least 2", opts.learner);
    }
    // Before the data is read (`sweep_real` checks it again, for its other callers).
    check_sweep(opts.learners, (&opts.lrs, &opts.momenta))?;
    let dir = opts.data_dir.clone().unwrap_or_else(|| opts.dataset.default_dir());
    let valid_size = opts.valid_size.unwrap_or(opts.dataset.default_valid_size());
    let loaded = Dataset::load(opts.dataset, &dir, valid_size, crate::data::DEFAULT_SPLIT_SEED, device);
    let data = match &opts.like {
        Some(like) => {
            // Its data's sizes are in its checkpoint, which --like does not read.
            let from = crate::checkpoint::RunsData {
                dir: &like.dir,
                folder: &dir,
                stored: Some(&like.folder),
                dataset: opts.dataset,
                saved: None,
            };
            crate::checkpoint::runs_data(loaded, &from)?
        }
        None => loaded?,
    };
    data.check_batch(None, &batch, opts.batch, &dir)?;
    let cohort = Cohort {
        data: &data,
        kind: opts.learner,
        bn_eval: opts.bn_eval,
        before_last_update: opts.before_last_update,
        learners: opts.learners,
        seed: opts.seed,
    };
    let sweep = (opts.lrs.as_slice(), opts.momenta.as_slice());
    let ((lr, momentum), best) = sweep_real(&cohort, opts.steps, opts.batch, sweep, &data.test, each)?;
    Ok(RealBaselineReport {
        report: EvalReport::from_curves(&cohort, opts.steps, &best),
        lr,
        momentum,
        batch: opts.batch,
        like: opts.like.as_ref().map(|like| like.dir.clone()),
    })
}

/// The learning rate and momentum of the grid `lrs` x `momenta` whose learners reach the best
/// mean accuracy on `test` after `steps` steps of `batch` real training images, with their
/// learners; `each` sees every pair's as it is measured.
pub fn sweep_real(
    cohort: &Cohort,
    steps: usize,
    batch: usize,
    (lrs, momenta): (&[f64], &[f64]),
    test: &Split,
    mut each: impl FnMut((f64, f64), &Curves),
) -> Result<((f64, f64), Curves)> {
    check_sweep(cohort.learners, (lrs, momenta))?;
    let mut best: Option<((f64, f64), Curves)> = None;
    for &lr in lrs {
        for &momentum in momenta {
            let curves = real_curves(cohort, &[steps], batch, (lr, momentum), test)?;
            each((lr, momentum), &curves);
            if best.as_ref().is_none_or(|(_, b)| mean_std(&b.at(0)).0 < mean_std(&curves.at(0)).0) {
                best = Some(((lr, momentum), curves));
            }
        }
    }
    Ok(best.expect("the grid is not empty"))
}

/// Accuracy curves (as in [`teacher_curves`]) of the same learners trained on real data with a
/// constant learning rate and momentum.
pub fn real_curves(
    cohort: &Cohort,
    grid: &[usize],
    batch: usize,
    (lr, momentum): (f64, f64),
    test: &Split,
) -> Result<Curves> {
    let (data, seed) = (cohort.data, cohort.seed);
    let device: Device = test.device();
    let (lrs, momenta) = inner::constant_schedule(grid.last().copied().unwrap_or(0), lr, momentum, device);
    cohort.train(grid, test, |learner, state, _, k, steps, after_step| {
        let mut sampler = BatchSampler::new(data.train.len(), seed.wrapping_add(k as u64));
        let batches = |_| data.train.batch(&sampler.indices(batch, device));
        inner::unroll(learner, state, (&lrs, &momenta), steps, false, batches, after_step)
    })
}

/// Test accuracy curves of a cohort's learners: `per_learner[k][i]` is learner `k`'s after
/// the `i`-th step count of the grid it was measured along.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    pub per_learner: Vec<Vec<f64>>,
    /// Learners whose weights scored at the grid's last step count are NaN or infinite: they
    /// still predict, and are scored on what they predict.
    pub diverged: usize,
}

impl Curves {
    /// Every learner's accuracy at grid point `i`.
    pub fn at(&self, i: usize) -> Vec<f64> {
        self.per_learner.iter().map(|curve| curve[i]).collect()
    }
}

/// The fresh learners an evaluation trains: `learners` of `kind`, learner `k` drawn from its own
/// seeded stream, so every method trains the same initial weights; scored as `bn_eval` says.
pub struct Cohort<'a> {
    pub data: &'a Dataset,
    pub kind: LearnerKind,
    pub bn_eval: BnEval,
    /// With `bn_eval = train`, score "after s steps" as the reference logs its test accuracy
    /// (`step_by_step_validation`): the weights before step s's update, with the statistics of
    /// step s's batch at those weights, i.e. after s - 1 updates. Otherwise after s updates,
    /// with the statistics of the last batch at the weights before its update (as the reference
    /// scores its meta-loss).
    pub before_last_update: bool,
    pub learners: usize,
    pub seed: u64,
}

impl Cohort<'_> {
    /// Trains each learner through steps `0..max(grid)` with
    /// `train(learner, state, rng, k, steps, after_step)` and measures its accuracy on `test`
    /// at every step count in `grid`.
    fn train(
        &self,
        grid: &[usize],
        test: &Split,
        mut train: impl FnMut(
            &Learner,
            LearnerState,
            &mut rand::rngs::StdRng,
            usize,
            Range<usize>,
            &mut dyn FnMut(usize, &LearnerState),
        ) -> LearnerState,
    ) -> Result<Curves> {
        if grid.is_empty() || grid.windows(2).any(|w| w[0] >= w[1]) {
            bail!("evaluation steps {grid:?}: expected a non-empty ascending list");
        }
        if self.before_last_update && self.bn_eval != BnEval::Train {
            bail!("--before-last-update: the learners' batch norm is scored with each test batch's statistics; expected --bn-eval train");
        }
        let (image, classes) = self.data.name.shape();
        let device = test.device();
        // On a terminal only: a log has the command's own lines.
        let bar = crate::progress::Progress::new(self.learners, 0, std::io::stderr().is_terminal(), "");
        let curves = (0..self.learners)
            .map(|k| {
                let mut rng = learner_seed(self.seed, k);
                let learner = Learner::new(self.kind.sample(&mut rng), image, classes)?.scored_with(self.bn_eval);
                let start = LearnerState::new(learner.init(&mut rng, device));
                let mut curve = Vec::with_capacity(grid.len());
                if grid[0] == 0 {
                    curve.push(test_accuracy(&learner, &start, test));
                }
                // The weights step `t` started from (updates make new tensors: these stay valid).
                let mut before: Vec<Tensor> = start.params.iter().map(Tensor::shallow_clone).collect();
                let last = *grid.last().expect("checked non-empty");
                // Whether the weights scored at the last step count are NaN or infinite.
                let mut diverged = false;
                let mut record = |t: usize, state: &LearnerState| {
                    if grid.binary_search(&(t + 1)).is_ok() {
                        let params = match self.before_last_update {
                            true => &before,
                            false => &state.params,
                        };
                        let params: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
                        diverged = t + 1 == last && nn::first_non_finite(&params).is_some();
                        let stats = state.stats.iter().map(Tensor::shallow_clone).collect();
                        curve.push(test_accuracy(
                            &learner,
                            &LearnerState { params, momentum: Vec::new(), stats },
                            test,
                        ));
                    }
                    if self.before_last_update {
                        before = state.params.iter().map(Tensor::shallow_clone).collect();
                    }
                };
                train(&learner, start, &mut rng, k, 0..last, &mut record);
                bar.advance(k, k + 1 == self.learners, format!("learners, {last} steps each"), String::new);
                Ok((curve, diverged))
            })
            .collect::<Result<Vec<_>>>();
        bar.finish_and_clear();
        let (per_learner, diverged): (Vec<_>, Vec<bool>) = curves?.into_iter().unzip();
        Ok(Curves { per_learner, diverged: diverged.iter().filter(|&&d| d).count() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    /// One learner has no spread: tables leave it out and JSON says null, instead of 0.
    #[test]
    fn one_value_has_no_spread() {
        let data = Dataset::load(DatasetName::Mnist, &crate::data::fixture_dir(), 0, 0, Device::Cpu).unwrap();
        let cohort = Cohort {
            data: &data,
            kind: LearnerKind::Mlp,
            bn_eval: BnEval::Batch,
            before_last_update: false,
            learners: 1,
            seed: 0,
        };
        let report = |accs: &[f64]| {
            let curves = Curves { per_learner: accs.iter().map(|&a| vec![a]).collect(), diverged: 0 };
            EvalReport::from_curves(&cohort, 32, &curves)
        };
        let table = report(&[0.9]).table();
        assert!(
            table.ends_with("| mlp | test batch's statistics | 1 | 32 | 90.00% | - | 90.00% | 90.00% |"),
            "{table}"
        );
        let json = serde_json::to_value(report(&[0.9])).unwrap();
        assert!(json["test_accuracy_std"].is_null(), "{json}");
        let table = report(&[0.9, 0.92]).table();
        assert!(table.contains("| 91.00% | 1.41% | 90.00% | 92.00% |"), "{table}");
        // A sweep's pair line: no spread for one learner, and its diverged learners named.
        let one = Curves { per_learner: vec![vec![0.9]], diverged: 0 };
        assert_eq!(sweep_line((0.1, 0.5), &one), "lr 0.1, momentum 0.5: 90.00%");
        let two = Curves { per_learner: vec![vec![0.9], vec![0.1]], diverged: 1 };
        let line = sweep_line((1e30, 0.9), &two);
        assert_eq!(line, "lr 1e30, momentum 0.9: 50.00% ± 56.57% (1 of 2 trained to NaN or infinite weights)");
    }

    #[test]
    fn evaluation_chunks_cover_the_split_in_nearly_equal_sizes() {
        // Multiples of 1,000 (the test sets, CIFAR-10's validation split) keep chunks of 1,000.
        for n in [2000, 5000, 10_000] {
            assert!(chunk_bounds(n).iter().all(|&(start, len)| len == 1000 && start % 1000 == 0), "{n}");
        }
        assert_eq!(chunk_bounds(112), [(0, 112)]);
        for n in [1, 999, 1000, 1001, 2001, 10_001] {
            let chunks = chunk_bounds(n);
            assert_eq!(chunks.len() as i64, (n + EVAL_CHUNK - 1) / EVAL_CHUNK, "{n}");
            assert!(chunks.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0), "{n}: contiguous");
            assert_eq!(chunks.last().map(|(s, l)| s + l), Some(n));
            let sizes: Vec<i64> = chunks.iter().map(|c| c.1).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1 && *max <= EVAL_CHUNK, "{n}: {sizes:?}");
        }
        assert_eq!(chunk_bounds(1001), [(0, 501), (501, 500)]);
    }

    /// A run of the full MNIST (10,000 validation images held out) is scored on a data folder
    /// with fewer training images than that: only its test split is read.
    #[test]
    fn a_teacher_is_scored_on_a_folder_smaller_than_its_runs_hold_out() {
        let fixture = crate::data::fixture_dir();
        let config = crate::config::Config { data_dir: Some(fixture.clone()), ..crate::config::Config::cpu() };
        assert!(config.valid_size >= 10_000);
        assert!(crate::meta::load_data(&config, Device::Cpu).is_err(), "the run's own split does not fit");
        let data = load_test_data(&config, Device::Cpu).unwrap();
        let whole = Dataset::load(config.dataset, &fixture, 1, 0, Device::Cpu).unwrap();
        assert!(data.test.pixels.equal(&whole.test.pixels) && data.test.labels.equal(&whole.test.labels));
    }

    /// A run's data folder moved away: the error says the path is the run's `data_dir`, which
    /// --data-dir replaces (and does not say so of a folder --data-dir gave).
    #[test]
    fn a_moved_data_folder_is_named_as_the_runs() {
        let (run, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let moved = data.path().join("mnist");
        std::fs::create_dir(&moved).unwrap();
        for file in std::fs::read_dir(crate::data::fixture_dir()).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), moved.join(file.file_name())).unwrap();
        }
        let config = crate::config::Config { data_dir: Some(moved.clone()), ..crate::config::Config::tiny() };
        crate::meta::Trainer::create(&config, run.path(), Device::Cpu).unwrap().save().unwrap();
        std::fs::remove_dir_all(&moved).unwrap();
        let options = RunEval {
            dir: run.path().to_path_buf(),
            data_dir: None,
            learner: None,
            bn_eval: None,
            steps: None,
            before_last_update: false,
            learners: 1,
            seed: 0,
        };
        let err = format!("{:#}", evaluate_run(&options, Device::Cpu).unwrap_err());
        let config_file = run.path().join(crate::checkpoint::CONFIG_FILE);
        // The fixture is a slice of MNIST: fetching MNIST would not bring it back.
        let note = format!(
            "{}: no such folder, the run's `data_dir` in {}; it held 512 training and 256 test images, not mnist's published 60000 and 10000: give --data-dir with a copy of its data",
            moved.display(),
            config_file.display()
        );
        assert_eq!(err, note);
        // Another folder given: the run's dataset and own folder are named instead.
        let given = RunEval { data_dir: Some(run.path().join("elsewhere")), ..options.clone() };
        let err = format!("{:#}", evaluate_run(&given, Device::Cpu).unwrap_err());
        let trains = format!("the run in {} trains on mnist, from {}", run.path().display(), moved.display());
        assert!(err.contains(&trains) && !err.contains("`data_dir`") && !err.contains("fetch"), "{err}");
        let resumed = crate::meta::Trainer::resume(run.path(), Device::Cpu, &Default::default());
        assert_eq!(format!("{:#}", resumed.err().unwrap()), note);
        // A folder still there whose files are wrong: its own error says what is.
        std::fs::create_dir(&moved).unwrap();
        let err = format!("{:#}", evaluate_run(&options, Device::Cpu).unwrap_err());
        assert!(err.contains("missing") && !err.contains("`data_dir`"), "{err}");
        let elsewhere = crate::meta::RunSettings { data_dir: Some(crate::data::fixture_dir()), checkpoint_every: None };
        assert!(crate::meta::Trainer::resume(run.path(), Device::Cpu, &elsewhere).is_ok());
    }

    /// Scored before the last update, "after s steps" is the learner after s - 1 updates with
    /// the statistics of step s's batch at those weights; otherwise after s updates with the
    /// statistics of step s's batch at the weights before its update. Each computed here by hand.
    #[test]
    fn scoring_before_the_last_update_is_the_references_logged_accuracy() {
        let data =
            Dataset::load(crate::data::DatasetName::Mnist, &crate::data::fixture_dir(), 112, 0, Device::Cpu).unwrap();
        let (lr, momentum, batch, seed) = (0.1, 0.5, 32, 7);
        let cohort = |before_last_update| Cohort {
            data: &data,
            kind: LearnerKind::Mlp,
            bn_eval: BnEval::Train,
            before_last_update,
            learners: 1,
            seed,
        };
        let measured = |before| {
            real_curves(&cohort(before), &[0, 1, 2, 3], batch, (lr, momentum), &data.test).unwrap().per_learner[0]
                .clone()
        };

        let mut rng = learner_seed(seed, 0);
        let learner =
            Learner::new(LearnerKind::Mlp.sample(&mut rng), [1, 28, 28], 10).unwrap().scored_with(BnEval::Train);
        let init = learner.init(&mut rng, Device::Cpu);
        let mut sampler = BatchSampler::new(data.train.len(), seed);
        let batches: Vec<(Tensor, Tensor)> =
            (0..3).map(|_| data.train.batch(&sampler.indices(batch, Device::Cpu))).collect();
        let schedule = inner::constant_schedule(3, lr, momentum, Device::Cpu);
        // The learner after `updates` updates, with the statistics of the last one's batch at the
        // weights before it (as training leaves them).
        let trained = |updates: usize| {
            let start = LearnerState::new(init.iter().map(|p| p.detach().set_requires_grad(true)).collect());
            let batch_of = |t: usize| (batches[t].0.shallow_clone(), batches[t].1.shallow_clone());
            inner::unroll(&learner, start, (&schedule.0, &schedule.1), 0..updates, false, batch_of, |_, _| {})
        };
        // After `updates` updates, with the statistics of the next batch at its weights.
        let before_update = |updates: usize| {
            let state = trained(updates);
            let stats = tch::no_grad(|| learner.train_forward(&state.params, &batches[updates].0).1);
            LearnerState { stats, ..state }
        };
        let accuracy = |state: LearnerState| test_accuracy(&learner, &state, &data.test);
        // Step 0 is the untrained learner either way (statistics mean 0, variance 1).
        let untrained = accuracy(trained(0));
        let before = [untrained, accuracy(before_update(0)), accuracy(before_update(1)), accuracy(before_update(2))];
        assert_eq!(measured(true), before);
        assert_eq!(measured(false), [untrained, accuracy(trained(1)), accuracy(trained(2)), accuracy(trained(3))]);
        assert_ne!(measured(true), measured(false), "the two protocols agree here: the test shows nothing");
        // A rate that blows the weights up within two updates: scored before the second, the
        // learner's weights are still finite, and it is not counted as diverged.
        let diverged =
            |before| real_curves(&cohort(before), &[2], batch, (1e30, momentum), &data.test).unwrap().diverged;
        assert_eq!((diverged(false), diverged(true)), (1, 0));
        let err = Cohort { bn_eval: BnEval::Batch, ..cohort(true) };
        let err = real_curves(&err, &[1], batch, (lr, momentum), &data.test).unwrap_err().to_string();
        assert_eq!(
            err,
            "--before-last-update: the learners' batch norm is scored with each test batch's statistics; expected --bn-eval train"
        );
    }

    #[test]
    fn a_teacher_of_one_image_batches_refuses_a_learner_that_normalises_over_the_batch_alone() {
        let data =
            Dataset::load(crate::data::DatasetName::Mnist, &crate::data::fixture_dir(), 112, 0, Device::Cpu).unwrap();
        let config = crate::config::Config {
            teacher: crate::teacher::TeacherKind::Pixels,
            batch_size: 1,
            learner: LearnerKind::CifarCnn,
            ..crate::config::Config::tiny()
        };
        let teacher = Teacher::new(&config, &mut rand::SeedableRng::seed_from_u64(0), Device::Cpu).unwrap();
        let cohort = |kind| Cohort {
            data: &data,
            kind,
            bn_eval: BnEval::Batch,
            before_last_update: false,
            learners: 1,
            seed: 0,
        };
        let err = teacher_curves(&teacher, &cohort(LearnerKind::Mlp), &[1], &data.test).unwrap_err().to_string();
        assert!(err.starts_with("learner mlp: the teacher's batches hold 1 image"), "{err}");
        assert_eq!(
            teacher_curves(&teacher, &cohort(LearnerKind::CifarCnn), &[1], &data.test).unwrap().per_learner.len(),
            1
        );
    }

    #[test]
    fn the_real_data_sweep_keeps_the_best_pair_and_names_an_empty_flag() {
        let data =
            Dataset::load(crate::data::DatasetName::Mnist, &crate::data::fixture_dir(), 112, 0, Device::Cpu).unwrap();
        let cohort = Cohort {
            data: &data,
            kind: LearnerKind::Mlp,
            bn_eval: BnEval::Batch,
            before_last_update: false,
            learners: 2,
            seed: 0,
        };
        let mut seen = Vec::new();
        // A learning rate of 1e-6 leaves the learners where they started (near chance); one of
        // 1e9 trains them to NaN, and they are counted.
        let sweep = (&[1e-6, 0.1, 1e9][..], &[0.5][..]);
        let (best, curves) =
            sweep_real(&cohort, 8, 32, sweep, &data.test, |pair, c| seen.push((pair, c.clone()))).unwrap();
        assert_eq!((best, seen.len(), curves.per_learner.len()), ((0.1, 0.5), 3, 2));
        assert_eq!(seen[1].1, curves);
        assert!(mean_std(&seen[0].1.at(0)).0 < mean_std(&curves.at(0)).0, "{seen:?}");
        assert_eq!(seen.iter().map(|(_, c)| c.diverged).collect::<Vec<_>>(), [0, 0, 2]);
        assert_eq!(
            diverged_note(2, 2),
            "2 of 2 learners were trained to NaN or infinite weights, and scored on what those weights predict"
        );
        let message =
            |learners, lrs: &[f64], momenta: &[f64]| check_sweep(learners, (lrs, momenta)).unwrap_err().to_string();
        assert_eq!(message(0, &[0.1], &[0.5]), "--learners 0: expected at least 1");
        assert_eq!(message(2, &[], &[0.5]), "--lrs: no values, expected at least one");
        assert_eq!(message(2, &[0.1], &[]), "--momenta: no values, expected at least one");
        assert_eq!(
            message(2, &[0.1], &[0.5, 0.9, 0.5]),
            "--momenta 0.5,0.9,0.5: 0.5 is listed twice; expected distinct values"
        );
    }

    #[test]
    fn the_real_data_baseline_reports_the_best_pair_and_refuses_batch_norm_over_one_image() {
        let opts = RealBaseline {
            dataset: crate::data::DatasetName::Mnist,
            data_dir: Some(crate::data::fixture_dir()),
            valid_size: Some(112),
            learner: LearnerKind::Mlp,
            bn_eval: BnEval::Batch,
            before_last_update: false,
            learners: 2,
            seed: 0,
            steps: 8,
            batch: 32,
            lrs: vec![1e-6, 0.1],
            momenta: vec![0.5],
            like: None,
        };
        let mut pairs = Vec::new();
        let best = baseline_real(&opts, Device::Cpu, |pair, _| pairs.push(pair)).unwrap();
        assert_eq!((best.lr, best.momentum, pairs.len()), (0.1, 0.5, 2));
        assert_eq!((best.report.learners, best.report.steps), (2, 8));
        let json = serde_json::to_value(&best).unwrap();
        assert_eq!(
            (json["lr"].as_f64(), json["test_accuracy_mean"].as_f64()),
            (Some(0.1), Some(best.report.test_accuracy_mean))
        );
        assert_eq!((json["batch"].as_u64(), json.get("like")), (Some(32), None), "no --like, no key");
        // Refused before the data is read (the folder does not exist).
        let one = RealBaseline { batch: 1, data_dir: Some("/nonexistent".into()), ..opts };
        let err = baseline_real(&one, Device::Cpu, |_, _| {}).unwrap_err().to_string();
        assert_eq!(err, "--batch-size 1: the mlp learner's batch norm over one image is constant; expected at least 2");
        // Batches are drawn without replacement: no more than the training images (here 1).
        let over = RealBaseline { batch: 8, valid_size: Some(511), data_dir: Some(crate::data::fixture_dir()), ..one };
        let err = baseline_real(&over, Device::Cpu, |_, _| {}).unwrap_err().to_string();
        assert!(
            err.starts_with("--batch-size 8: more than the 1 training image of ")
                && err.ends_with("(after 511 held out for validation); expected at most 1"),
            "{err}"
        );
    }

    #[test]
    fn data_of_other_sizes_than_the_runs_is_warned_of() {
        let dir = crate::data::fixture_dir();
        let data = Dataset::load(DatasetName::Mnist, &dir, 0, 0, Device::Cpu).unwrap();
        let [train, _, test] = data.sizes();
        let run = std::path::Path::new("runs/t");
        assert_eq!(other_data_warning(None, &data, &dir, run), None, "an older checkpoint records no sizes");
        assert_eq!(other_data_warning(Some([train - 112, 112, test]), &data, &dir, run), None);
        // Other training images alone change nothing eval scores on.
        assert_eq!(other_data_warning(Some([50_000, 10_000, test]), &data, &dir, run), None);
        let warning = other_data_warning(Some([50_000, 10_000, 10_000]), &data, &dir, run).unwrap();
        assert!(
            warning.ends_with(&format!(
                ": holds {test} test images of mnist; the data the run in runs/t was meta-trained with held 10000: the learners are scored on other test images than its run's"
            )),
            "{warning}"
        );
    }
}
