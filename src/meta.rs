//! Meta-training: each iteration trains a freshly initialised learner on the teacher's data
//! through a differentiable unroll, scores it on a real batch, and takes an outer Adam step on
//! every teacher parameter with the exact meta-gradient.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, Flags};
use crate::curriculum::StepInput;
use crate::data::{BatchSampler, Dataset};
use crate::inner::LearnerState;
use crate::interrupt::{self, Interrupted, Unit};
use crate::learner::{Arch, Learner};
use crate::nn;
use crate::optim::{self, Adam};
use crate::progress::Progress;
use crate::teacher::Teacher;

use crate::checkpoint::LOG_FILE;
const LOG_HEADER: &str =
    "iteration,meta_loss,meta_accuracy,grad_norm,outer_lr,inner_lr_mean,inner_momentum_mean,seconds";

/// Settings that do not change a run's result, so a continued run may take them from the
/// command line; `None` keeps the stored run's own.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    pub data_dir: Option<PathBuf>,
    pub checkpoint_every: Option<usize>,
}

impl RunSettings {
    /// The settings given as `--data-dir` and `--checkpoint-every`.
    pub fn from_flags(data_dir: Option<&Path>, checkpoint_every: Option<usize>) -> Result<RunSettings> {
        // Made absolute, so eval and later resumes find the data from any folder.
        let data_dir = data_dir.map(|dir| crate::config::absolute(dir, "--data-dir")).transpose()?;
        Ok(RunSettings { data_dir, checkpoint_every })
    }

    fn apply(&self, config: &mut Config) {
        config.data_dir = self.data_dir.clone().or(config.data_dir.take());
        config.checkpoint_every = self.checkpoint_every.unwrap_or(config.checkpoint_every);
    }
}

/// What one meta-iteration measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub iteration: usize,
    pub meta_loss: f64,
    pub meta_accuracy: f64,
    pub grad_norm: f64,
    pub outer_lr: f64,
    pub inner_lr_mean: f64,
    pub inner_momentum_mean: f64,
    pub seconds: f64,
}

impl StepStats {
    fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6e},{:.6e},{:.6},{:.3}",
            self.iteration,
            self.meta_loss,
            self.meta_accuracy,
            self.grad_norm,
            self.outer_lr,
            self.inner_lr_mean,
            self.inner_momentum_mean,
            self.seconds
        )
    }

    /// The progress bar's message: short enough to show whole on an 80-column terminal.
    fn message(&self) -> String {
        format!("loss {:.3} acc {:.1}% inner lr {:.4}", self.meta_loss, 100.0 * self.meta_accuracy, self.inner_lr_mean)
    }
}

/// Independent random stream for iteration `i` of a run seeded with `seed`, so a resumed run
/// draws exactly what an uninterrupted one would.
pub fn iteration_rng(seed: u64, i: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

pub struct Trainer {
    pub teacher: Teacher,
    adam: Adam,
    /// Meta-iterations completed.
    pub iteration: usize,
    /// Iteration and sha256 of the checkpoint on disk, if any.
    last_saved: Option<(usize, String)>,
    dir: PathBuf,
    data: Dataset,
    /// What a diverged run's error says to do (default: edit its config and resume it).
    divergence_advice: Option<String>,
    /// One process trains in `dir` at a time.
    _lock: checkpoint::RunLock,
}

impl Trainer {
    /// Starts a new run in `dir`, which must not already hold one ([`Trainer::open`] continues
    /// it; see [`checkpoint::holds_run`]).
    pub fn create(config: &Config, dir: &Path, device: Device) -> Result<Trainer> {
        // Its data folder stored made absolute, the dataset's default included, so that eval,
        // resume and a NAS proxy find it from any folder.
        let data_dir = crate::config::absolute(&config.data_dir(), "the data folder")?;
        let config = &Config { data_dir: Some(data_dir), ..config.clone() };
        checkpoint::check_startable::<Config>(dir)?;
        let data = load_data(config, device)?;
        check_fits_data(config, &data)?;
        let teacher = Teacher::new(config, &mut StdRng::seed_from_u64(config.seed), device)?;
        let adam = Adam::new(&teacher.params(), config.adam_beta1, config.adam_beta2, config.adam_eps);
        let lock = checkpoint::start_run::<Config>(dir, &config.to_toml()?, LOG_HEADER)?;
        let mut trainer = Trainer {
            teacher,
            adam,
            iteration: 0,
            last_saved: None,
            dir: dir.to_path_buf(),
            data,
            divergence_advice: None,
            _lock: lock,
        };
        trainer.save()?;
        Ok(trainer)
    }

    /// Starts a run of `config` in `dir`, or continues the one already there if it was started
    /// with the same config, so a repeated command picks up where it stopped. Settings that do
    /// not change the result (where the data lives, gradient checkpointing) are the stored
    /// run's, but for those `settings` (the command's) give. With `budgeted`, a stored run
    /// whose time budget lowered its meta-iterations from `config`'s is the same run. Any other
    /// difference is an error that names the keys (and, given `resume_command`, says how to
    /// continue the stored run instead).
    pub fn open(
        config: &Config,
        dir: &Path,
        device: Device,
        settings: &RunSettings,
        budgeted: bool,
        resume_command: Option<&str>,
    ) -> Result<Trainer> {
        crate::config::check_not_a_file(dir, "--out")?;
        if !checkpoint::holds_run(dir) {
            return Trainer::create(config, dir, device);
        }
        let comparable = |c: &Config| Config {
            meta_iters: c.meta_iters_requested.filter(|_| budgeted).unwrap_or(c.meta_iters),
            meta_iters_requested: None,
            ..c.without_session_settings()
        };
        let stored = checkpoint::read_config(dir);
        // Continuing the stored run is advised only where it would load (its config.toml may
        // have been edited in keys its checkpoint refuses).
        let resumable = || checkpoint::never_saved(dir) || checkpoint::load(dir, device).is_ok();
        let resume_command = || resume_command.filter(|_| resumable());
        // This run but for the time budget that cut it, which the command leaves out.
        let cut = match &stored {
            Ok(stored) if !budgeted && stored.meta_iters_requested == Some(config.meta_iters) => {
                comparable(&Config { meta_iters: stored.meta_iters, ..config.clone() }) == comparable(stored)
            }
            _ => false,
        };
        if cut {
            let (asked, done) = (config.meta_iters, stored?.meta_iters);
            // Any budget: a run keeps its length. Lengthening is for a run of one's own (a
            // comparison's teachers keep one budget), which `resume_command` stands for.
            let longer = resume_command().map_or("or use another --out".to_owned(), |c| {
                format!(
                    "or `{c} --resume {}`; to run all {asked}, set `meta_iters = {asked}` in {} first",
                    crate::text::shell_word(dir),
                    dir.join(checkpoint::CONFIG_FILE).display()
                )
            });
            bail!(
                "{}: holds this run at {done} of the {asked} meta-iterations asked for, as a time budget cut it; repeat the command with --budget-minutes (any: a run keeps its length), {longer}",
                dir.display()
            );
        }
        // The same run but for the length a budgeted command asks: its config.toml's
        // `meta_iters`, the count the budget cut it to, is not the one to ask for.
        let asked = stored.as_ref().ok().and_then(|s| s.meta_iters_requested.filter(|_| budgeted));
        if let (Some(asked), Ok(stored)) = (asked, &stored) {
            let same_but_length = comparable(&Config { meta_iters: asked, ..config.clone() }) == comparable(stored);
            if same_but_length && config.meta_iters != asked {
                bail!(
                    "{}: holds a run of {}, cut by a time budget from the {asked} asked for, and this command asks for {}; repeat it with `--meta-iters {asked}` (a run keeps its length, whatever the budget), or use another --out",
                    dir.display(),
                    crate::text::count(stored.meta_iters, "meta-iteration"),
                    config.meta_iters
                );
            }
        }
        crate::config::same_run(dir, stored.map(|s| comparable(&s)), &comparable(config), resume_command)?;
        Trainer::resume(dir, device, settings)
    }

    /// Continues the run in `dir` from its last checkpoint; log rows after it are dropped.
    /// `settings` apply to this session; the stored config keeps its own, unless the run never
    /// saved and is started again with them.
    pub fn resume(dir: &Path, device: Device, settings: &RunSettings) -> Result<Trainer> {
        if checkpoint::never_saved(dir) {
            let mut config = checkpoint::read_config(dir)?;
            settings.apply(&mut config);
            return Trainer::create(&config, dir, device);
        }
        let lock = checkpoint::lock_run(dir)?;
        let Checkpoint { mut teacher, adam, iteration, sha256, data: saved, digest } = checkpoint::load(dir, device)?;
        let stored = teacher.config.data_dir.clone();
        settings.apply(&mut teacher.config);
        let folder = teacher.config.data_dir();
        let stored = stored.as_deref();
        let from = checkpoint::RunsData { dir, folder: &folder, stored, dataset: teacher.config.dataset, saved };
        let data = checkpoint::runs_data(load_data(&teacher.config, device), &from)?;
        checkpoint::check_data((saved, digest), &data, &folder, &format!("in {}", dir.display()))?;
        // Older checkpoints record no data sizes: a slice given as --data-dir too small for the
        // meta-batch is caught here.
        check_meta_batch(&teacher.config, &data)?;
        crate::progress::truncate_log(&dir.join(LOG_FILE), LOG_HEADER, iteration)?;
        if let Some(warning) = lr_jump_warning(dir, &teacher.config, iteration) {
            tracing::warn!("{warning}");
        }
        Ok(Trainer {
            teacher,
            adam,
            iteration,
            last_saved: Some((iteration, sha256)),
            dir: dir.to_path_buf(),
            data,
            divergence_advice: None,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &Config {
        &self.teacher.config
    }

    /// The dataset meta-training reads (its split into training and validation images).
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// What meta-iteration `iteration` draws: its learner and initial parameters, its real
    /// batch (augmented if configured), its curriculum plan and, in the `sum-fresh-batches`
    /// form, a real batch per intermediate loss (drawn last, so the others are the same draws in
    /// either form).
    pub fn iteration_inputs(&self, iteration: usize) -> IterationInputs {
        let config = self.config();
        let device = self.data.train.device();
        let mut rng = iteration_rng(config.seed, iteration);
        let (image, classes) = config.dataset.shape();
        let learner = Learner::new(config.learner.sample(&mut rng), image, classes)
            .expect("learner widths are positive")
            .scored_with(config.bn_eval);
        let init = learner.init(&mut rng, device);
        let mut sampler = BatchSampler::new(self.data.train.len(), rand::Rng::gen(&mut rng));
        let mut draw = |rng: &mut StdRng| {
            let (x, y) = self.data.train.batch(&sampler.indices(config.meta_batch, device));
            (if config.augment { crate::data::augment::crop_and_flip(&x, config.dataset, rng) } else { x }, y)
        };
        let last = draw(&mut rng);
        let plan = self.teacher.curriculum.plan(&mut rng, device);
        let fresh = match config.intermediate_loss_form {
            IntermediateLossForm::MeanSharedBatch => Vec::new(),
            IntermediateLossForm::SumFreshBatches => (0..intermediate_losses(config)).map(|_| draw(&mut rng)).collect(),
        };
        IterationInputs { learner, init, real: RealBatches { last, fresh }, plan }
    }

    /// The meta-loss of one iteration, the meta-accuracy, and the meta-gradient with respect to
    /// every teacher parameter.
    pub fn iteration_gradient(&self, iteration: usize) -> (f64, f64, Vec<Tensor>) {
        let IterationInputs { learner, init, real, plan } = self.iteration_inputs(iteration);
        let result = meta_gradient(&self.teacher, &learner, init, &real, &plan);
        (result.loss, nn::accuracy(&result.logits, &real.last.1), result.grads)
    }

    /// One meta-iteration, logged to `log.csv`. A NaN or infinite meta-loss or gradient stops
    /// before any update, and an update that leaves a teacher parameter NaN or infinite stops
    /// before it is logged or saved: the last checkpoint stays good. The trainer is then spent.
    pub fn step(&mut self) -> Result<StepStats> {
        let start = Instant::now();
        let i = self.iteration;
        let (meta_loss, meta_accuracy, mut grads) = self.iteration_gradient(i);
        let grad_norm = optim::clip_grad_norm(&mut grads, self.config().grad_clip);
        if !meta_loss.is_finite() || !grad_norm.is_finite() {
            return Err(self.diverged(&format!("meta-loss {meta_loss}, gradient norm {grad_norm}"), i == 0));
        }
        let c = self.config();
        let outer_lr = optim::cosine_lr(c.outer_lr, c.final_lr_fraction, i, c.meta_iters);
        self.adam.step(&self.teacher.params(), &grads, outer_lr);
        let inner_lr_mean = self.teacher.log_lr.exp().mean(None::<tch::Kind>).double_value(&[]);
        let inner_momentum_mean = self.teacher.log_momentum.exp().mean(None::<tch::Kind>).double_value(&[]);
        let broken = self.non_finite_state().or_else(|| {
            (!inner_lr_mean.is_finite() || !inner_momentum_mean.is_finite())
                .then(|| format!("the inner lr (mean {inner_lr_mean}) or momentum (mean {inner_momentum_mean})"))
        });
        if let Some(what) = broken {
            return Err(
                self.diverged(&format!("the update (outer lr {outer_lr:e}) made {what} NaN or infinite"), false)
            );
        }
        self.iteration += 1;
        let stats = StepStats {
            iteration: i,
            meta_loss,
            meta_accuracy,
            grad_norm,
            outer_lr,
            inner_lr_mean,
            inner_momentum_mean,
            seconds: start.elapsed().as_secs_f64(),
        };
        crate::progress::append_row(&self.dir.join(LOG_FILE), &stats.csv_row())?;
        Ok(stats)
    }

    /// The first teacher parameter, or Adam state of one, holding a NaN or infinite value: the
    /// optimiser's state too, since the checkpoint must load again.
    fn non_finite_state(&self) -> Option<String> {
        let named = self.teacher.named_params();
        let state: Vec<Tensor> = named
            .iter()
            .map(|(_, p)| p.shallow_clone())
            .chain(self.adam.m.iter().chain(&self.adam.v).map(Tensor::shallow_clone))
            .collect();
        nn::first_non_finite(&state).map(|k| match k < named.len() {
            true => format!("`{}`", named[k].0),
            false => format!("Adam's state of `{}`", named[k % named.len()].0),
        })
    }

    /// Whether [`Trainer::run`] would size this run to a time budget: only before its first
    /// meta-iteration, and once.
    pub fn sizes_to_a_budget(&self) -> bool {
        self.iteration == 0 && self.config().meta_iters_requested.is_none()
    }

    /// What a time budget given now does not change, for a budgeted command that continues or
    /// reuses this run: a run keeps its length (so its cosine decay completes), whether a budget
    /// given when it started shortened it or it is under way. None if the budget sizes it.
    pub fn budget_note(&self) -> Option<String> {
        let (c, dir) = (self.config(), self.dir.display());
        let length = crate::text::count(c.meta_iters, "meta-iteration");
        let unchanged = "a time budget sizes a run only when it starts (remove the folder, or use another --out, to train under a new one)";
        match c.meta_iters_requested {
            Some(asked) => {
                Some(format!("{dir}: a run of {length}, cut by a time budget from the {asked} asked for; {unchanged}"))
            }
            None if !self.sizes_to_a_budget() => Some(format!("{dir}: a run of {length}; {unchanged}")),
            None => None,
        }
    }

    /// Replaces the advice of a diverged run's error, for callers whose runs are not resumed with
    /// `gtn train --resume`.
    pub fn with_divergence_advice(self, advice: String) -> Trainer {
        Trainer { divergence_advice: Some(advice), ..self }
    }

    /// The error of a run stopped by a NaN or infinity; `as_initialised`: the teacher as it was
    /// initialised gave it, which no key a run may edit (outer lr, clipping) can change.
    fn diverged(&self, what: &str, as_initialised: bool) -> anyhow::Error {
        let (i, dir) = (self.iteration, self.dir.display());
        let (last, _) = self.last_saved.as_ref().expect("a run saves a checkpoint when it is created");
        let advice = match (as_initialised, &self.divergence_advice) {
            (true, _) => DIVERGED_AS_INITIALISED.to_owned(),
            (false, Some(advice)) => advice.clone(),
            (false, None) => format!(
                "lower outer_lr or grad_clip in {dir}/{} and run `gtn train --resume {}`",
                checkpoint::CONFIG_FILE,
                crate::text::shell_word(&self.dir)
            ),
        };
        anyhow::anyhow!(
            "meta-iteration {i}: {what}: training diverged and stopped; the last good checkpoint (iteration {last}) is kept in {dir}; {advice}"
        )
    }

    pub fn save(&mut self) -> Result<()> {
        let sha256 = checkpoint::save(&self.dir, &self.teacher, &self.adam, self.iteration, &self.data)?;
        self.last_saved = Some((self.iteration, sha256));
        interrupt::saved(self.iteration);
        Ok(())
    }

    /// The sha256 of the checkpoint holding the teacher as it is now: what identifies it beyond
    /// its config. An error if the current state is not saved.
    pub fn checkpoint_sha256(&self) -> Result<&str> {
        match &self.last_saved {
            Some((iteration, sha256)) if *iteration == self.iteration => Ok(sha256),
            _ => bail!(
                "{}: the teacher at meta-iteration {} is not saved yet",
                checkpoint::checkpoint_path(&self.dir).display(),
                self.iteration
            ),
        }
    }

    /// Runs until `meta_iters`, logging every iteration and checkpointing every `save_every`
    /// iterations and at the end. With a time `budget`, a fresh run measures its first
    /// meta-iteration and lowers `meta_iters` (in its config.toml too) to what the budget
    /// affords, so the cosine decay completes and a resumed run does exactly the same.
    pub fn run(&mut self, progress: bool, budget: Option<Duration>) -> Result<()> {
        let mut total = self.config().meta_iters;
        if let Some((saved, _)) = &self.last_saved {
            interrupt::saved(*saved);
        }
        let bar = Progress::new(total, self.iteration, progress, LOG_HEADER);
        // Once per run: a run resumed at iteration 0 (stopped before its first save) keeps the
        // length its budget chose, and the count asked for.
        let fresh = self.sizes_to_a_budget();
        let (start, sized) = (Instant::now(), budget.filter(|_| fresh));
        // Meta-iterations the budget chose, once measured.
        let mut chosen = None;
        let mut sizing = sized.map(|budget| {
            // The first meta-gradient pays one-off costs (allocations, kernel set-up; 1.4x a
            // later iteration's time at the cpu preset, 15x at the tiny one): timing a discarded
            // one first lets iteration 0 stand for the rest.
            let warm_up = Instant::now();
            self.iteration_gradient(0);
            budget.saturating_sub(warm_up.elapsed())
        });
        if let (Some(_), Some(signal)) = (&sizing, interrupt::requested()) {
            // A stop asked for during the warm-up need not wait for iteration 0: the run's start
            // is saved (a new run saves it, and only one at iteration 0 sizes itself).
            return Err(Interrupted::at(&self.dir, Unit::MetaIteration, self.iteration, total, signal).into());
        }
        while self.iteration < total {
            let stats = self.step()?;
            if let Some(budget) = sizing.take() {
                let affordable = ((budget.as_secs_f64() / stats.seconds) as usize).max(1);
                chosen = Some(affordable.min(total));
                let each = format!("{:.2} s per meta-iteration", stats.seconds);
                bar.note(&match affordable < total {
                    true => format!("time budget: {affordable} of the {total} meta-iterations asked for ({each})"),
                    false => format!(
                        "time budget: {} ({each}); a budget caps `meta_iters`, it does not raise it",
                        match total {
                            1 => "the 1 meta-iteration asked for fits".to_owned(),
                            n => format!("all {n} meta-iterations asked for fit"),
                        }
                    ),
                });
                if affordable < total {
                    // Into the stored config as it is: it keeps its own session settings.
                    let mut stored = checkpoint::read_config(&self.dir)?;
                    for config in [&mut self.teacher.config, &mut stored] {
                        config.meta_iters_requested = Some(total);
                        config.meta_iters = affordable;
                    }
                    checkpoint::write_config(&self.dir, &stored)?;
                    total = affordable;
                    bar.set_length(total);
                }
            }
            let message = stats.message();
            let due = self.iteration.is_multiple_of(self.config().save_every) || self.iteration == total;
            let stop = interrupt::save_point(due, || self.save())?;
            bar.advance(stats.iteration, self.iteration == total || stop.is_some(), message, || stats.csv_row());
            if let Some(signal) = stop {
                return Err(Interrupted::at(&self.dir, Unit::MetaIteration, self.iteration, total, signal).into());
            }
        }
        bar.finish();
        // One meta-iteration is the least a budget chooses, however short it is.
        let overrun = sized.filter(|_| chosen > Some(1)).and_then(|budget| overrun_warning(start.elapsed(), budget));
        if let Some(warning) = overrun {
            tracing::warn!("{warning}");
        }
        Ok(())
    }
}

/// A warning when meta-training sized to a time `budget` took over a fifth longer: the first
/// meta-iteration, timed to size it, stood for the rest less well than it should.
fn overrun_warning(took: Duration, budget: Duration) -> Option<String> {
    (took.as_secs_f64() > 1.2 * budget.as_secs_f64()).then(|| {
        format!(
            "time budget: meta-training took {} of the {} budgeted; its later meta-iterations were slower than the first, which sized it",
            crate::text::duration(took),
            crate::text::duration(budget)
        )
    })
}

/// A warning when the outer lr of meta-iteration `iteration` under `config` is above the one
/// logged for the iteration before it in `dir`'s log.csv: an edited `meta_iters`, `outer_lr` or
/// `final_lr_fraction` recomputed the cosine decay, which then restarts higher instead of going
/// on down (lengthening a run does that unless `outer_lr` is lowered with it).
fn lr_jump_warning(dir: &Path, config: &Config, iteration: usize) -> Option<String> {
    let log = std::fs::read_to_string(dir.join(LOG_FILE)).ok()?;
    // The header is line 0, so iteration - 1's row is line `iteration`.
    let column = LOG_HEADER.split(',').position(|name| name == "outer_lr")?;
    let last: f64 = log.lines().nth(iteration)?.split(',').nth(column)?.parse().ok()?;
    let next = optim::cosine_lr(config.outer_lr, config.final_lr_fraction, iteration, config.meta_iters);
    (next > last * (1.0 + 1e-3)).then(|| {
        format!(
            "{}: the outer lr rises from {last:.3e} (meta-iteration {}) to {next:.3e}: its cosine decay, recomputed over config.toml's edited schedule (outer_lr {}, final_lr_fraction {}, meta_iters {}), restarts higher; lower outer_lr with it to go on decaying",
            dir.display(),
            iteration - 1,
            config.outer_lr,
            config.final_lr_fraction,
            config.meta_iters
        )
    })
}

/// Seconds of meta-training logged in `dir`'s log.csv (all sessions of a resumed run).
pub fn logged_seconds(dir: &Path) -> Result<f64> {
    let log = dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&log).with_context(|| format!("{}: cannot read", log.display()))?;
    text.lines()
        .skip(1)
        .map(|line| {
            line.rsplit(',')
                .next()
                .and_then(|s| s.parse::<f64>().ok())
                .with_context(|| format!("{}: malformed row `{line}`", log.display()))
        })
        .sum()
}

/// The architecture meta-iteration `iteration` trains: the first draw of its stream, as
/// [`Trainer::iteration_inputs`] makes it.
pub fn iteration_arch(config: &Config, iteration: usize) -> Arch {
    config.learner.sample(&mut iteration_rng(config.seed, iteration))
}

/// The random draws of one meta-iteration.
pub struct IterationInputs {
    pub learner: Learner,
    pub init: Vec<Tensor>,
    pub real: RealBatches,
    pub plan: Vec<StepInput>,
}

/// The real batches (images, labels) a meta-iteration scores its learner on.
pub struct RealBatches {
    /// After the last inner step; in the `mean-shared-batch` form, after the intermediate ones too.
    pub last: (Tensor, Tensor),
    /// In the `sum-fresh-batches` form, one per intermediate loss in step order; else empty.
    pub fresh: Vec<(Tensor, Tensor)>,
}

/// How intermediate real-data losses (`intermediate_loss_every`) enter the meta-loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntermediateLossForm {
    /// Averaged with the final loss, all on the iteration's one real batch: the meta-loss stays
    /// on the final loss's scale, whatever their number.
    #[default]
    MeanSharedBatch,
    /// Summed with the final loss, each on a fresh real batch of `meta_batch` images: the
    /// reference's form (`use_intermediate_losses` in its `train_cgtn.py`, on in `cgtn.json`).
    SumFreshBatches,
}

/// Whether the meta-loss includes a real-data loss after inner step `t`.
fn has_intermediate_loss(config: &Config, t: usize) -> bool {
    let every = config.intermediate_loss_every;
    every > 0 && (t + 1).is_multiple_of(every) && t + 1 < config.inner_steps
}

/// How many intermediate losses one meta-iteration takes.
pub fn intermediate_losses(config: &Config) -> usize {
    // The multiples of k below T (not counted one by one: the config's sizes are checked with it).
    config.inner_steps.saturating_sub(1).checked_div(config.intermediate_loss_every).unwrap_or(0)
}

/// The meta-loss's terms: a trained learner's cross-entropy on real data, each weighted as
/// `intermediate_loss_form` says.
struct MetaLossTerms<'a> {
    config: &'a Config,
    learner: &'a Learner,
    real: &'a RealBatches,
    /// What each cross-entropy is divided by: the number of terms, or 1 for their sum.
    divisor: f64,
}

impl<'a> MetaLossTerms<'a> {
    fn new(config: &'a Config, learner: &'a Learner, real: &'a RealBatches) -> MetaLossTerms<'a> {
        let (count, form) = (intermediate_losses(config), config.intermediate_loss_form);
        let (fresh, divisor) = match form {
            IntermediateLossForm::MeanSharedBatch => (0, (count + 1) as f64),
            IntermediateLossForm::SumFreshBatches => (count, 1.0),
        };
        assert_eq!(real.fresh.len(), fresh, "{form:?}: fresh real batches");
        MetaLossTerms { config, learner, real, divisor }
    }

    /// The term after inner step `t`, if an intermediate loss is taken there.
    fn intermediate(&self, t: usize, state: &LearnerState) -> Option<Tensor> {
        if !has_intermediate_loss(self.config, t) {
            return None;
        }
        let (x, y) = match self.config.intermediate_loss_form {
            IntermediateLossForm::MeanSharedBatch => &self.real.last,
            IntermediateLossForm::SumFreshBatches => {
                &self.real.fresh[(t + 1) / self.config.intermediate_loss_every - 1]
            }
        };
        Some(nn::cross_entropy(&state.score(self.learner, x), y) / self.divisor)
    }

    /// The final term, and the trained learner's logits on the last real batch.
    fn last(&self, trained: &LearnerState) -> (Tensor, Tensor) {
        let (x, y) = &self.real.last;
        let logits = trained.score(self.learner, x);
        (nn::cross_entropy(&logits, y) / self.divisor, logits)
    }
}

/// Trains `init` on the teacher's data following `plan` with the graph kept, then scores it on
/// the last real batch (plus, if configured, every k inner steps). Returns the meta-loss, still
/// differentiable w.r.t. every teacher parameter, and the trained learner's logits.
pub fn meta_loss(
    teacher: &Teacher,
    learner: &Learner,
    init: Vec<Tensor>,
    real: &RealBatches,
    plan: &[StepInput],
) -> (Tensor, Tensor) {
    let config = &teacher.config;
    let terms = MetaLossTerms::new(config, learner, real);
    let mut losses = Vec::new();
    let trained = teacher.teach(learner, LearnerState::new(init), plan, 0..config.inner_steps, true, |t, state| {
        losses.extend(terms.intermediate(t, state));
    });
    let (last, logits) = terms.last(&trained);
    losses.push(last);
    (Tensor::stack(&losses, 0).sum(None::<tch::Kind>), logits)
}

/// A meta-loss value, the trained learner's logits on the real batch, and the meta-gradient.
#[derive(Debug)]
pub struct MetaGradient {
    pub loss: f64,
    pub logits: Tensor,
    pub grads: Vec<Tensor>,
}

/// The exact meta-gradient. With `checkpoint_every = k`, 0 < k < T (gradient checkpointing,
/// [`Config::checkpoints_unroll`]), only the learner state at every k-th inner step is kept: a
/// first pass trains without a graph, then the backward pass recomputes one block of k steps at
/// a time with its graph and pulls the incoming adjoint through it. The last block keeps its
/// graph from the first pass, since the backward starts there, so only the other blocks are
/// recomputed. Memory holds one block's graph instead of T steps'; the cost is one more forward
/// pass over all steps but the last block's. Same gradient as the full unroll up to float
/// rounding (tested).
pub fn meta_gradient(
    teacher: &Teacher,
    learner: &Learner,
    init: Vec<Tensor>,
    real: &RealBatches,
    plan: &[StepInput],
) -> MetaGradient {
    let config = &teacher.config;
    let (t_max, k) = (config.inner_steps, config.checkpoint_every);
    let teacher_params = teacher.params();
    if !config.checkpoints_unroll() {
        let (loss, logits) = meta_loss(teacher, learner, init, real, plan);
        let grads = nn::grads(&[&loss], &teacher_params, false, false);
        return MetaGradient { loss: loss.double_value(&[]), logits: logits.detach(), grads };
    }
    let terms = MetaLossTerms::new(config, learner, real);
    // Trains one block from `start` with its graph; returns the end state and the block's
    // intermediate losses.
    let block_with_graph = |start: &LearnerState, block: Range<usize>| {
        let mut inside = Vec::new();
        let end = teacher.teach(learner, start.shallow_clone(), plan, block, true, |t, state| {
            inside.extend(terms.intermediate(t, state));
        });
        (end, inside)
    };
    // d(surrogate)/d(start) for the learner state and d(surrogate)/d(teacher): (params, momentum, teacher).
    let pull_back = |surrogate: Tensor, start: &LearnerState| {
        let n = start.params.len();
        let inputs: Vec<&Tensor> = start.params.iter().chain(&start.momentum).chain(&teacher_params).collect();
        let mut g = nn::grads(&[surrogate], &inputs, false, false);
        let teacher_grads = g.split_off(2 * n);
        let momentum = g.split_off(n);
        (g, momentum, teacher_grads)
    };
    let total = |parts: Vec<Tensor>| parts.into_iter().fold(Tensor::from(0.0f32), |acc, x| acc + x);

    // Forward without a graph, keeping the state at the start of every block.
    let mut blocks: Vec<Range<usize>> = (0..t_max).step_by(k).map(|s| s..(s + k).min(t_max)).collect();
    let last = blocks.pop().expect("k < T makes at least two blocks");
    let mut starts = Vec::with_capacity(blocks.len());
    let mut state = LearnerState::new(init);
    let mut loss = 0.0;
    for block in &blocks {
        starts.push(state.detached_leaves());
        state = teacher.teach(learner, state, plan, block.clone(), false, |t, state| {
            if let Some(term) = tch::no_grad(|| terms.intermediate(t, state)) {
                loss += term.double_value(&[]);
            }
        });
    }
    let start = state.detached_leaves();
    let (end, mut inside) = block_with_graph(&start, last);
    let (last, logits) = terms.last(&end);
    inside.push(last);
    loss += inside.iter().map(|l| l.double_value(&[])).sum::<f64>();
    let (mut adjoint_params, mut adjoint_momentum, mut grads) = pull_back(total(inside), &start);

    // Backward, block by block: d(loss)/d(start) = d<end, adjoint>/d(start) + d(losses in block)/d(start).
    for (block, start) in blocks.into_iter().zip(starts).rev() {
        let (end, inside) = block_with_graph(&start, block);
        let pulled = end.params.iter().zip(&adjoint_params).chain(end.momentum.iter().zip(&adjoint_momentum));
        let parts = pulled.map(|(x, a)| (x * a).sum(None::<tch::Kind>)).chain(inside).collect();
        let teacher_grads;
        (adjoint_params, adjoint_momentum, teacher_grads) = pull_back(total(parts), &start);
        for (acc, d) in grads.iter_mut().zip(teacher_grads) {
            *acc = &*acc + d;
        }
    }
    MetaGradient { loss, logits: logits.detach(), grads }
}

pub fn load_data(config: &Config, device: Device) -> Result<Dataset> {
    Dataset::load(config.dataset, &config.data_dir(), config.valid_size, config.seed, device)
}

/// What to do about a teacher that diverges as initialised, before any update: no key a run may
/// edit (outer lr, clipping, sigma) changes that (image and RL runs alike).
pub const DIVERGED_AS_INITIALISED: &str = "the teacher as initialised diverges, before any update: start a new run (another --out) with a smaller `init_lr`, `init_momentum` or `inner_steps` (--config)";

/// What a new run's config must also hold: [`Config::check_new_run`], and a meta-loss batch
/// the training images can fill.
fn check_fits_data(config: &Config, data: &Dataset) -> Result<()> {
    config.check_new_run(&Flags::default())?;
    check_meta_batch(config, data)
}

/// Refuses a meta-loss batch larger than the training split (batches are drawn without
/// replacement).
fn check_meta_batch(config: &Config, data: &Dataset) -> Result<()> {
    let what = format!("config key `meta_batch` is {}", config.meta_batch);
    Ok(data.check_batch(Some("meta_batch"), &what, config.meta_batch, &config.data_dir())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curriculum::CurriculumKind;
    use crate::data::fixture_dir;
    use crate::generator::GeneratorConfig;
    use crate::learner::BnEval;
    use crate::nn::gradcheck::max_rel_error;
    use crate::teacher::TeacherKind;
    use tch::Kind;

    /// The widest message a run shows (a loss in the tens, full accuracy, an inner lr above 1)
    /// fits the bar's room at 80 columns, so the inner lr is not cut off.
    #[test]
    fn the_bar_message_fits_an_80_column_terminal() {
        let stats = StepStats {
            iteration: 1999,
            meta_loss: 12.3456,
            meta_accuracy: 1.0,
            grad_norm: 1.0,
            outer_lr: 1e-3,
            inner_lr_mean: 1.23456,
            inner_momentum_mean: 0.5,
            seconds: 1.0,
        };
        let message = stats.message();
        assert_eq!(message, "loss 12.346 acc 100.0% inner lr 1.2346");
        assert!(message.len() <= crate::progress::MESSAGE_COLUMNS, "{message}");
    }

    /// A file where a folder is expected is named as such, before any error about its content.
    #[test]
    fn a_file_given_for_a_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, b"x").unwrap();
        let err = open(&fixture_config(), &file, false, None).err().unwrap().to_string();
        assert_eq!(err, format!("{}: is a file; expected a folder (--out)", file.display()));
        let config = Config { data_dir: Some(file.clone()), ..fixture_config() };
        let err = load_data(&config, Device::Cpu).unwrap_err().to_string();
        assert_eq!(err, format!("{}: is a file; expected a folder (--data-dir)", file.display()));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    /// [`Trainer::open`] on the CPU, without session settings.
    fn open(config: &Config, dir: &Path, budgeted: bool, resume_command: Option<&str>) -> Result<Trainer> {
        Trainer::open(config, dir, Device::Cpu, &RunSettings::default(), budgeted, resume_command)
    }

    fn fixture_config() -> Config {
        Config { data_dir: Some(fixture_dir()), ..Config::tiny() }
    }

    /// `n` real training images from the fixture, from `first` on, in f64.
    fn real_batch(data: &Dataset, first: i64, n: i64) -> (Tensor, Tensor) {
        let (x, y) = data.train.batch(&Tensor::arange_start(first, first + n, (Kind::Int64, Device::Cpu)));
        (x.to_kind(Kind::Double), y)
    }

    /// Real batches for `config`: the last one of images 0..16, and in the sum-fresh-batches
    /// form a fresh one per intermediate loss, each of the next 16.
    fn real_batches(config: &Config, data: &Dataset) -> RealBatches {
        let fresh = match config.intermediate_loss_form {
            IntermediateLossForm::MeanSharedBatch => Vec::new(),
            IntermediateLossForm::SumFreshBatches => {
                (1..=intermediate_losses(config) as i64).map(|i| real_batch(data, 16 * i, 16)).collect()
            }
        };
        RealBatches { last: real_batch(data, 0, 16), fresh }
    }

    /// The full meta-gradient through a 3-step unroll against central finite differences in f64:
    /// for GTN (generator weights, curriculum noise) and for dataset distillation (pixels), each
    /// with per-step learning rates and momenta, soft labels and an intermediate loss (for GTN in
    /// both forms).
    #[test]
    fn gradcheck_full_meta_gradient() {
        for (teacher, intermediate_loss_form) in [
            (TeacherKind::Generator, IntermediateLossForm::MeanSharedBatch),
            (TeacherKind::Generator, IntermediateLossForm::SumFreshBatches),
            (TeacherKind::Pixels, IntermediateLossForm::MeanSharedBatch),
        ] {
            let config = Config {
                inner_steps: 3,
                batch_size: 6,
                teacher,
                soft_labels: true,
                intermediate_loss_every: 2,
                intermediate_loss_form,
                generator: GeneratorConfig { noise_dim: 3, fc_width: 4, conv1_channels: 2, conv2_channels: 2 },
                ..fixture_config()
            };
            let data = load_data(&config, Device::Cpu).unwrap();
            let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(1), Device::Cpu).unwrap();
            let inputs: Vec<Tensor> =
                teacher.params().iter().map(|p| p.detach().to_kind(Kind::Double).set_requires_grad(true)).collect();
            let learner = Learner::new(Arch::Mlp { hidden1: 5, hidden2: 4 }, [1, 28, 28], 10).unwrap();
            let init: Vec<Tensor> = learner
                .init(&mut StdRng::seed_from_u64(2), Device::Cpu)
                .iter()
                .map(|p| p.detach().to_kind(Kind::Double))
                .collect();
            let real = real_batches(&config, &data);
            let f = |p: &[Tensor]| {
                let start = init.iter().map(|t| t.copy().set_requires_grad(true)).collect();
                let teacher = teacher.with_params(p);
                let plan = teacher.curriculum.plan(&mut StdRng::seed_from_u64(3), Device::Cpu);
                meta_loss(&teacher, &learner, start, &real, &plan).0
            };
            let err = max_rel_error(&inputs, &f, 4);
            assert!(
                err < 1e-5,
                "{:?} {:?}: meta-gradient finite-difference relative error {err:e} exceeds 1e-5",
                config.teacher,
                config.intermediate_loss_form
            );
        }
    }

    /// Gradient checkpointing (blocks of 2 and a remainder of 1 over T = 5, intermediate losses
    /// inside blocks) gives the full unroll's meta-loss and meta-gradient, also when the learner
    /// is scored with its last training batch's statistics (recorded inside the last block), and
    /// with intermediate losses each on its own real batch (after steps 1 and 3).
    #[test]
    fn checkpointed_unroll_gives_the_full_meta_gradient() {
        use IntermediateLossForm::{MeanSharedBatch, SumFreshBatches};
        let mut full_losses = Vec::new();
        for (curriculum, bn_eval, intermediate_loss_form, every) in [
            (CurriculumKind::Full, BnEval::Batch, MeanSharedBatch, 3),
            (CurriculumKind::AllShuffled, BnEval::Batch, MeanSharedBatch, 3),
            (CurriculumKind::Full, BnEval::Train, MeanSharedBatch, 3),
            (CurriculumKind::Full, BnEval::Train, SumFreshBatches, 2),
        ] {
            let config = Config {
                inner_steps: 5,
                curriculum,
                bn_eval,
                soft_labels: true,
                intermediate_loss_every: every,
                intermediate_loss_form,
                ..fixture_config()
            };
            let data = load_data(&config, Device::Cpu).unwrap();
            let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(1), Device::Cpu).unwrap();
            let params: Vec<Tensor> =
                teacher.params().iter().map(|p| p.detach().to_kind(Kind::Double).set_requires_grad(true)).collect();
            let learner =
                Learner::new(Arch::Cnn { conv1: 3, conv2: 4, fc: 5 }, [1, 28, 28], 10).unwrap().scored_with(bn_eval);
            let init = learner.init(&mut StdRng::seed_from_u64(2), Device::Cpu);
            let real = real_batches(&config, &data);
            let run = |k: usize| {
                let mut t = teacher.with_params(&params);
                t.config.checkpoint_every = k;
                let plan = t.curriculum.plan(&mut StdRng::seed_from_u64(3), Device::Cpu);
                let start = init.iter().map(|p| p.detach().to_kind(Kind::Double).set_requires_grad(true)).collect();
                meta_gradient(&t, &learner, start, &real, &plan)
            };
            let full = run(0);
            full_losses.push(full.loss);
            // k = 2: the loss after step 2 sits at the start of block [2, 4); k = 1, 3, and 4 (a
            // last block of one step) too. (k >= T is the full unroll's own code.)
            for k in [1, 2, 3, 4] {
                let checkpointed = run(k);
                assert!((full.loss - checkpointed.loss).abs() < 1e-12, "k={k}: {} vs {}", full.loss, checkpointed.loss);
                for ((name, _), (a, b)) in teacher.named_params().iter().zip(full.grads.iter().zip(&checkpointed.grads))
                {
                    let scale = a.abs().max().double_value(&[]).max(1e-12);
                    let diff = (a - b).abs().max().double_value(&[]);
                    assert!(
                        diff / scale < 1e-10,
                        "{curriculum:?} {bn_eval:?} {intermediate_loss_form:?} k={k} {name}: gradient differs by {diff:e} (scale {scale:e})"
                    );
                }
            }
        }
        // The same teacher, learner and batches scored with the last training batch's statistics.
        assert!((full_losses[0] - full_losses[2]).abs() > 1e-6, "bn_eval changed nothing: {full_losses:?}");
    }

    #[test]
    fn intermediate_losses_are_counted_as_taken() {
        for (inner_steps, intermediate_loss_every) in [(5, 0), (5, 1), (5, 2), (6, 2), (4, 4), (9, 3), (1, 1)] {
            let config = Config { inner_steps, intermediate_loss_every, ..Config::tiny() };
            let taken = (0..inner_steps).filter(|&t| has_intermediate_loss(&config, t)).count();
            assert_eq!(intermediate_losses(&config), taken, "T = {inner_steps}, every {intermediate_loss_every}");
        }
        let huge = Config { inner_steps: usize::MAX, intermediate_loss_every: 2, ..Config::tiny() };
        assert_eq!(intermediate_losses(&huge), (usize::MAX - 1) / 2);
    }

    /// The sum-fresh-batches form sums its terms where the other averages them (with every fresh
    /// batch the last one, it is their number times the mean), and scores each intermediate
    /// loss on its own batch (replacing one changes the loss).
    #[test]
    fn fresh_batch_intermediate_losses_are_summed_each_on_its_batch() {
        let config = Config { inner_steps: 5, intermediate_loss_every: 2, ..fixture_config() };
        let data = load_data(&config, Device::Cpu).unwrap();
        let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(1), Device::Cpu).unwrap();
        let learner = Learner::new(Arch::Mlp { hidden1: 5, hidden2: 4 }, [1, 28, 28], 10).unwrap();
        let init = learner.init(&mut StdRng::seed_from_u64(2), Device::Cpu);
        let params: Vec<Tensor> = teacher.params().iter().map(|p| p.detach().to_kind(Kind::Double)).collect();
        let loss = |form, real: &RealBatches| {
            let mut t = teacher.with_params(&params);
            t.config.intermediate_loss_form = form;
            let plan = t.curriculum.plan(&mut StdRng::seed_from_u64(3), Device::Cpu);
            let start = init.iter().map(|p| p.detach().to_kind(Kind::Double).set_requires_grad(true)).collect();
            meta_loss(&t, &learner, start, real, &plan).0.double_value(&[])
        };
        // Fresh batches of images 0..16 each (the last batch's), but the one at `other` (16..32).
        let batches = |other: Option<usize>| RealBatches {
            last: real_batch(&data, 0, 16),
            fresh: (0..2).map(|i| real_batch(&data, if other == Some(i) { 16 } else { 0 }, 16)).collect(),
        };
        let mean = loss(IntermediateLossForm::MeanSharedBatch, &RealBatches { fresh: Vec::new(), ..batches(None) });
        let sum = loss(IntermediateLossForm::SumFreshBatches, &batches(None));
        assert!((sum - 3.0 * mean).abs() < 1e-12 * sum.abs(), "sum {sum} vs 3 x mean {mean}");
        for i in 0..2 {
            let changed = loss(IntermediateLossForm::SumFreshBatches, &batches(Some(i)));
            assert!((changed - sum).abs() > 1e-6, "the intermediate loss after step {} ignored its batch", 2 * i + 1);
        }
    }

    /// A meta-iteration in the sum-fresh-batches form draws one real batch per intermediate loss,
    /// each new, after the draws both forms share, which stay the same.
    #[test]
    fn fresh_batches_are_drawn_after_the_shared_draws() {
        let draws = |intermediate_loss_form| {
            // A shuffled curriculum's plan draws from the stream too (the full one's does not).
            let config = Config {
                inner_steps: 5,
                intermediate_loss_every: 2,
                intermediate_loss_form,
                curriculum: CurriculumKind::AllShuffled,
                ..fixture_config()
            };
            let dir = tempfile::tempdir().unwrap();
            Trainer::create(&config, &dir.path().join("run"), Device::Cpu).unwrap().iteration_inputs(3)
        };
        let (shared, fresh) =
            (draws(IntermediateLossForm::MeanSharedBatch), draws(IntermediateLossForm::SumFreshBatches));
        assert!(shared.real.fresh.is_empty());
        assert!(shared.real.last.0.equal(&fresh.real.last.0) && shared.real.last.1.equal(&fresh.real.last.1));
        assert!(shared.init.iter().zip(&fresh.init).all(|(a, b)| a.equal(b)), "the learner's draw changed");
        assert!(shared.plan.iter().zip(&fresh.plan).all(|(a, b)| a.ids.equal(&b.ids)), "the plan changed");
        assert_eq!(fresh.real.fresh.len(), 2);
        let batches: Vec<&Tensor> =
            std::iter::once(&fresh.real.last.0).chain(fresh.real.fresh.iter().map(|b| &b.0)).collect();
        for (i, a) in batches.iter().enumerate() {
            assert_eq!(a.size()[0], Config::tiny().meta_batch as i64, "batch {i}");
            for b in &batches[i + 1..] {
                assert!(!a.equal(b), "a fresh batch repeats another");
            }
        }
    }

    /// The bench counts each timed step's FLOPs on the architecture that step trains; the
    /// learner is scored as the config says.
    #[test]
    fn iteration_arch_is_the_iterations_learner() {
        let config =
            Config { learner: crate::learner::LearnerKind::Random, bn_eval: BnEval::Train, ..fixture_config() };
        let dir = tempfile::tempdir().unwrap();
        let trainer = Trainer::create(&config, dir.path(), Device::Cpu).unwrap();
        let archs: Vec<Arch> = (0..4).map(|i| iteration_arch(&config, i)).collect();
        for (i, arch) in archs.iter().enumerate() {
            let learner = trainer.iteration_inputs(i).learner;
            assert_eq!((learner.arch, learner.bn_eval), (*arch, BnEval::Train), "iteration {i}");
        }
        assert!(archs.iter().any(|a| *a != archs[0]), "random learners vary");
    }

    #[test]
    fn short_meta_training_lowers_the_meta_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        let before = trainer.iteration_gradient(0).0;
        trainer.run(false, None).unwrap();
        let after = trainer.iteration_gradient(0).0;
        assert!(after < before * 0.8, "meta-loss on the same learner and batch: {before} before, {after} after");
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 1 + trainer.config().meta_iters);
    }

    #[test]
    fn a_time_budget_caps_meta_iters_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        trainer.run(false, Some(Duration::from_nanos(1))).unwrap();
        assert_eq!(trainer.iteration, 1);
        assert_eq!(checkpoint::read_config(dir.path()).unwrap().meta_iters, 1);
        drop(trainer);
        let resumed = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).unwrap();
        assert_eq!((resumed.iteration, resumed.config().meta_iters), (1, 1));
        let logged = logged_seconds(dir.path()).unwrap();
        assert!(logged > 0.0 && logged < 60.0, "{logged}");
        // The discarded warm-up meta-gradient changes nothing: the same run without a budget.
        let plain = tempfile::tempdir().unwrap();
        let config = Config { meta_iters: 1, ..fixture_config() };
        Trainer::create(&config, plain.path(), Device::Cpu).unwrap().run(false, None).unwrap();
        assert_eq!(checkpoint_tensors(dir.path()), checkpoint_tensors(plain.path()));
    }

    fn checkpoint_tensors(dir: &Path) -> Vec<(String, Tensor)> {
        let mut t = Tensor::read_safetensors(checkpoint::checkpoint_path(dir)).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    #[test]
    fn a_lengthened_schedule_that_raises_the_outer_lr_is_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { meta_iters: 4, ..fixture_config() };
        let mut trainer = Trainer::create(&config, dir.path(), Device::Cpu).unwrap();
        for _ in 0..2 {
            trainer.step().unwrap();
        }
        assert_eq!(lr_jump_warning(dir.path(), &config, 2), None, "the same schedule goes on down");
        assert_eq!(lr_jump_warning(dir.path(), &config, 0), None, "nothing logged before");
        let longer = Config { meta_iters: 40, ..config.clone() };
        let warning = lr_jump_warning(dir.path(), &longer, 2).unwrap();
        assert!(warning.contains(": the outer lr rises from 1.736e-2 (meta-iteration 1) to 1.989e-2:"), "{warning}");
        let lowered = Config { outer_lr: config.outer_lr / 2.0, ..longer };
        assert_eq!(lr_jump_warning(dir.path(), &lowered, 2), None);
    }

    #[test]
    fn resume_matches_an_uninterrupted_run() {
        for curriculum in [CurriculumKind::Full, CurriculumKind::AllShuffled] {
            let config = Config { curriculum, soft_labels: true, ..fixture_config() };
            let whole = tempfile::tempdir().unwrap();
            Trainer::create(&config, whole.path(), Device::Cpu).unwrap().run(false, None).unwrap();

            let parts = tempfile::tempdir().unwrap();
            let mut first = Trainer::create(&config, parts.path(), Device::Cpu).unwrap();
            for _ in 0..3 {
                first.step().unwrap();
            }
            first.save().unwrap();
            // Steps after the last checkpoint are lost with the process and redone on resume.
            first.step().unwrap();
            drop(first);
            let mut resumed = Trainer::resume(parts.path(), Device::Cpu, &RunSettings::default()).unwrap();
            assert_eq!(resumed.iteration, 3);
            resumed.run(false, None).unwrap();

            let (a, b) = (checkpoint_tensors(whole.path()), checkpoint_tensors(parts.path()));
            assert_eq!(a.len(), b.len());
            for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                assert_eq!(na, nb);
                assert!(ta.equal(tb), "{curriculum:?}: {na} differs after resume");
            }
            let log = |d: &Path| std::fs::read_to_string(d.join(LOG_FILE)).unwrap();
            let strip_time =
                |s: String| s.lines().map(|l| l.rsplit_once(',').unwrap().0.to_owned()).collect::<Vec<_>>();
            assert_eq!(strip_time(log(whole.path())), strip_time(log(parts.path())));
        }
    }

    #[test]
    fn nan_stops_and_keeps_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        trainer.step().unwrap();
        trainer.save().unwrap();
        let saved = std::fs::read(checkpoint::checkpoint_path(dir.path())).unwrap();
        let _ = tch::no_grad(|| trainer.teacher.log_lr.shallow_clone().fill_(f64::NAN));
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.contains("meta-iteration 1: meta-loss NaN"), "{err}");
        assert!(err.contains("last good checkpoint (iteration 1)") && err.contains("gtn train --resume"), "{err}");
        assert_eq!(trainer.iteration, 1);
        assert_eq!(std::fs::read(checkpoint::checkpoint_path(dir.path())).unwrap(), saved);
        let err = trainer.with_divergence_advice("start again".into()).step().unwrap_err().to_string();
        assert!(err.ends_with("; start again") && !err.contains("--resume"), "{err}");
        // Diverging before any update: no edit of the run helps, a new run with other values may.
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        let _ = tch::no_grad(|| trainer.teacher.log_lr.shallow_clone().fill_(f64::NAN));
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.starts_with("meta-iteration 0: meta-loss NaN"), "{err}");
        assert!(err.ends_with("before any update: start a new run (another --out) with a smaller `init_lr`, `init_momentum` or `inner_steps` (--config)"), "{err}");
    }

    #[test]
    fn an_update_that_overflows_stops_before_it_is_logged_or_saved() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { outer_lr: 1e30, save_every: 1, ..fixture_config() };
        let mut trainer = Trainer::create(&config, dir.path(), Device::Cpu).unwrap();
        let saved = std::fs::read(checkpoint::checkpoint_path(dir.path())).unwrap();
        let err = trainer.run(false, None).unwrap_err().to_string();
        assert!(err.contains("meta-iteration 0: the update (outer lr 1e30) made the inner lr (mean inf)"), "{err}");
        assert!(err.contains("NaN or infinite") && err.contains("last good checkpoint (iteration 0)"), "{err}");
        assert_eq!(std::fs::read(checkpoint::checkpoint_path(dir.path())).unwrap(), saved);
        assert_eq!(std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap().lines().count(), 1, "no row logged");
        assert!(checkpoint::load(dir.path(), Device::Cpu).is_ok());
        let fresh = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), fresh.path(), Device::Cpu).unwrap();
        let _ = tch::no_grad(|| trainer.adam.v[0].fill_(f64::INFINITY));
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.contains("made Adam's state of `"), "the checkpoint would not load again: {err}");
    }

    #[test]
    fn tiny_cifar_meta_training_lowers_the_meta_loss() {
        let folder = crate::data::cifar::tests::fixture_folder();
        let config = Config {
            dataset: crate::data::DatasetName::Cifar10,
            data_dir: Some(folder.path().to_path_buf()),
            valid_size: 20,
            learner: crate::learner::LearnerKind::CifarRandom,
            augment: true,
            meta_batch: 32,
            meta_iters: 6,
            outer_lr: 0.05,
            ..Config::tiny()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&config, dir.path(), Device::Cpu).unwrap();
        let before = trainer.iteration_gradient(0).0;
        trainer.run(false, None).unwrap();
        let after = trainer.iteration_gradient(0).0;
        assert!(after < before, "CIFAR meta-loss on the same learner and batch: {before} before, {after} after");
        let (images, _) =
            trainer.teacher.synthesize(&trainer.teacher.curriculum.plan(&mut StdRng::seed_from_u64(0), Device::Cpu)[0]);
        assert_eq!(images.size(), [20, 3, 32, 32]);
    }

    #[test]
    fn refuses_to_overwrite_a_run() {
        let dir = tempfile::tempdir().unwrap();
        Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        let err = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("already holds a run's files; remove them"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let theirs = other.path().join(checkpoint::CONFIG_FILE);
        std::fs::write(&theirs, "[server]\nport = 8080\n").unwrap();
        let err = open(&fixture_config(), other.path(), false, None).err().unwrap().to_string();
        assert!(
            err.contains("config.toml: not a config this command reads (line 1, key `server`: unknown field"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "[server]\nport = 8080\n", "someone else's file is kept");
        // A search's folder: its own resume refuses a run's files, so a run there would strand it.
        let search = tempfile::tempdir().unwrap();
        std::fs::write(search.path().join(crate::nas::search::TRUTH_FILE), "").unwrap();
        let err = open(&fixture_config(), search.path(), false, None).err().unwrap().to_string();
        assert!(err.ends_with("holds NAS results (truth.jsonl); choose another --out"), "{err}");
        let err = crate::rl::train::RlTrainer::create(&crate::rl::RlConfig::tiny(), search.path(), 1).err().unwrap();
        assert!(err.to_string().ends_with("(truth.jsonl); choose another --out"), "{err}");
        assert_eq!(std::fs::read_dir(search.path()).unwrap().count(), 1, "nothing written");
    }

    #[test]
    fn a_start_interrupted_before_its_first_checkpoint_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let other = Config { meta_iters: 9, ..fixture_config() };
        checkpoint::write_config(dir.path(), &other).unwrap();
        std::fs::write(dir.path().join(LOG_FILE), format!("{LOG_HEADER}\n")).unwrap();
        let resumed = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).unwrap();
        assert_eq!((resumed.iteration, resumed.config()), (0, &other), "--resume starts it as configured");
        drop(resumed);
        std::fs::remove_file(checkpoint::checkpoint_path(dir.path())).unwrap();
        let trainer = open(&fixture_config(), dir.path(), false, Some("gtn train")).unwrap();
        assert_eq!(trainer.iteration, 0);
        assert_eq!(checkpoint::read_config(dir.path()).unwrap(), fixture_config());
        assert!(checkpoint::checkpoint_path(dir.path()).is_file());
    }

    #[test]
    fn a_run_whose_checkpoint_was_lost_keeps_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        trainer.run(false, None).unwrap();
        drop(trainer);
        std::fs::remove_file(checkpoint::checkpoint_path(dir.path())).unwrap();
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        for (err, says) in [
            (open(&fixture_config(), dir.path(), false, None).err(), "checkpoint.safetensors: missing"),
            (
                Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).err(),
                "checkpoint.safetensors: missing",
            ),
            (Trainer::create(&fixture_config(), dir.path(), Device::Cpu).err(), "already holds a run"),
        ] {
            let err = err.unwrap().to_string();
            assert!(err.contains(says), "{err}");
        }
        assert_eq!(std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(), log);
    }

    #[test]
    fn open_continues_the_same_run_and_names_what_differs_in_another() {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture_config();
        let mut first = open(&config, dir.path(), false, Some("gtn train")).unwrap();
        first.step().unwrap();
        first.save().unwrap();
        drop(first);
        // The session's settings are the flags': a config's (a preset's) leave the run's own.
        let preset = Config { checkpoint_every: 2, ..config.clone() };
        let again = open(&preset, dir.path(), false, None).unwrap();
        assert_eq!((again.iteration, again.config().checkpoint_every), (1, config.checkpoint_every));
        drop(again);
        let flag = RunSettings { data_dir: None, checkpoint_every: Some(2) };
        let again = Trainer::open(&config, dir.path(), Device::Cpu, &flag, false, Some("gtn train")).unwrap();
        assert_eq!((again.iteration, again.config().checkpoint_every), (1, 2));
        drop(again);
        let longer = Config { meta_iters: config.meta_iters + 5, ..config.clone() };
        let err = open(&longer, dir.path(), false, Some("gtn train")).err().unwrap().to_string();
        let expected = format!("(meta_iters {} there, {} here)", config.meta_iters, longer.meta_iters);
        assert!(err.contains(&expected) && err.contains("continue it with `gtn train --resume"), "{err}");
        let err = open(&longer, dir.path(), true, None).err().unwrap().to_string();
        assert!(err.contains(&expected), "a budget does not make a shorter run without one the same: {err}");
    }

    #[test]
    fn resume_takes_the_run_settings_given_and_keeps_the_stored_ones_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture_config();
        let mut first = Trainer::create(&config, dir.path(), Device::Cpu).unwrap();
        first.step().unwrap();
        first.save().unwrap();
        drop(first);
        let settings = RunSettings { data_dir: None, checkpoint_every: Some(3) };
        let resumed = Trainer::resume(dir.path(), Device::Cpu, &settings).unwrap();
        assert_eq!(resumed.config().checkpoint_every, 3);
        assert_eq!(resumed.config().data_dir, config.data_dir, "no --data-dir: the stored one");
        let stored = checkpoint::read_config(dir.path()).unwrap();
        assert_eq!(stored.checkpoint_every, config.checkpoint_every, "the stored config keeps its own");
    }

    #[test]
    fn a_budgeted_command_repeated_continues_the_run_its_budget_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { meta_iters: 6, ..fixture_config() };
        let mut first = open(&config, dir.path(), true, Some("gtn train")).unwrap();
        assert_eq!(first.budget_note(), None, "not before the budget chose");
        first.run(false, Some(Duration::from_nanos(1))).unwrap();
        let stored = checkpoint::read_config(dir.path()).unwrap();
        assert_eq!((stored.meta_iters, stored.meta_iters_requested), (1, Some(6)));
        drop(first);
        let again = open(&config, dir.path(), true, Some("gtn train")).unwrap();
        assert_eq!((again.iteration, again.config().meta_iters), (1, 1));
        let note = again.budget_note().unwrap();
        assert!(note.ends_with(": a run of 1 meta-iteration, cut by a time budget from the 6 asked for; a time budget sizes a run only when it starts (remove the folder, or use another --out, to train under a new one)"), "{note}");
        let other = Config { meta_iters: 7, ..config.clone() };
        let err = open(&other, dir.path(), true, Some("gtn train")).err().unwrap().to_string();
        let asked = ": holds a run of 1 meta-iteration, cut by a time budget from the 6 asked for, and this command asks for 7; repeat it with `--meta-iters 6` (a run keeps its length, whatever the budget), or use another --out";
        assert!(err.ends_with(asked), "{err}");
        let err = open(&config, dir.path(), false, Some("gtn train")).err().unwrap().to_string();
        let cut = "holds this run at 1 of the 6 meta-iterations asked for, as a time budget cut it; repeat the command with --budget-minutes (any: a run keeps its length), or `gtn train --resume ";
        assert!(
            err.contains(cut) && err.ends_with("config.toml first"),
            "without a budget the run is 1 iteration long: {err}"
        );
        let err = open(&config, dir.path(), false, None).err().unwrap().to_string();
        assert!(err.ends_with("(any: a run keeps its length), or use another --out"), "a comparison's: {err}");
        let err = open(&Config { seed: 9, ..config.clone() }, dir.path(), false, None).err().unwrap().to_string();
        assert!(err.contains("(meta_iters 1 there, 6 here; seed 0 there, 9 here)"), "another run: {err}");
        drop(again);
        // Lengthened to the count asked for, as that error advises: no longer shortened.
        let stored = checkpoint::read_config(dir.path()).unwrap();
        checkpoint::write_config(dir.path(), &Config { meta_iters: 6, ..stored }).unwrap();
        let lengthened = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).unwrap();
        assert_eq!((lengthened.config().meta_iters, lengthened.config().meta_iters_requested), (6, None));
        let note = lengthened.budget_note().unwrap();
        assert!(note.ends_with(": a run of 6 meta-iterations; a time budget sizes a run only when it starts (remove the folder, or use another --out, to train under a new one)"), "{note}");
    }

    #[test]
    fn a_budget_overrun_by_over_a_fifth_is_warned_of() {
        let minute = Duration::from_secs(60);
        assert_eq!(overrun_warning(minute.mul_f64(1.1), minute), None);
        let warning = overrun_warning(minute.mul_f64(1.5), minute).unwrap();
        assert!(warning.starts_with("time budget: meta-training took 1.5 min of the 1.0 min budgeted;"), "{warning}");
        let warning = overrun_warning(Duration::from_secs(30), Duration::from_secs(20)).unwrap();
        assert!(warning.starts_with("time budget: meta-training took 30.0 s of the 20.0 s budgeted;"), "{warning}");
    }

    #[test]
    fn a_budgeted_run_resumed_before_its_first_save_keeps_the_length_its_budget_chose() {
        // The budget lowered meta_iters from 6 to 3, then the run stopped before saving past
        // iteration 0; the repeated command must not measure again and shorten it further.
        let dir = tempfile::tempdir().unwrap();
        let config = Config { meta_iters: 6, ..fixture_config() };
        let shortened = Config { meta_iters: 3, meta_iters_requested: Some(6), ..config.clone() };
        Trainer::create(&shortened, dir.path(), Device::Cpu).unwrap();
        let mut again = open(&config, dir.path(), true, None).unwrap();
        again.run(false, Some(Duration::from_nanos(1))).unwrap();
        let stored = checkpoint::read_config(dir.path()).unwrap();
        assert_eq!((again.iteration, stored.meta_iters, stored.meta_iters_requested), (3, 3, Some(6)));
    }

    /// A budgeted command repeated on a run saved before its budget was measured lowers the
    /// stored `meta_iters`, and nothing else: this session's settings stay this session's.
    #[test]
    fn the_budget_writes_the_length_alone_into_the_stored_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { meta_iters: 6, ..fixture_config() };
        drop(Trainer::create(&config, dir.path(), Device::Cpu).unwrap());
        let session = RunSettings { data_dir: None, checkpoint_every: Some(2) };
        let mut again = Trainer::open(&config, dir.path(), Device::Cpu, &session, true, None).unwrap();
        again.run(false, Some(Duration::from_nanos(1))).unwrap();
        let stored = checkpoint::read_config(dir.path()).unwrap();
        assert_eq!(stored, Config { meta_iters: 1, meta_iters_requested: Some(6), ..config });
        assert_eq!((again.config().meta_iters, again.config().checkpoint_every), (1, 2));
    }

    /// A second trainer on a folder another one is writing is refused (their log rows and
    /// checkpoints would interleave); once the first is gone, the run continues.
    #[test]
    fn one_trainer_per_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = Trainer::create(&fixture_config(), &run, Device::Cpu).unwrap();
        let settings = RunSettings::default();
        let busy = format!("{}: another gtn process is training in this folder", run.display());
        let err = Trainer::resume(&run, Device::Cpu, &settings).err().expect("refused").to_string();
        assert_eq!(err, format!("{busy}; wait for it to end (a new run can take another --out)"));
        let err = open(&fixture_config(), &run, false, None).err().expect("refused").to_string();
        assert!(err.starts_with(&busy), "{err}");
        drop(first);
        assert_eq!(Trainer::resume(&run, Device::Cpu, &settings).unwrap().iteration, 0);
        let err = Trainer::resume(&dir.path().join("none"), Device::Cpu, &settings).err().unwrap().to_string();
        assert!(err.ends_with("none: no such folder; expected a training run's folder"), "{err}");
    }

    /// A run resumed on other data (here the fixture cut to 300 training images, which redraws
    /// the split) is refused, naming both; the same data in another folder is the same run.
    #[test]
    fn a_run_resumed_on_other_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        drop(Trainer::create(&fixture_config(), &run, Device::Cpu).unwrap());
        let slice = crate::data::fixture_slice(300);
        let slice = slice.path();
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(fixture_dir()).unwrap() {
            let from = entry.unwrap().path();
            std::fs::copy(&from, copy.join(from.file_name().unwrap())).unwrap();
        }
        let resume = |data_dir: &Path| {
            let settings = RunSettings { data_dir: Some(data_dir.to_path_buf()), checkpoint_every: None };
            Trainer::resume(&run, Device::Cpu, &settings)
        };
        let err = resume(slice).err().unwrap().to_string();
        assert!(err.starts_with(&format!("{}: holds 188 training, 112 validation and ", slice.display())), "{err}");
        assert!(
            err.contains("test images of mnist; the run in ")
                && err.contains("was meta-trained on 400 training, 112 validation and "),
            "{err}"
        );
        assert!(err.ends_with("expected its data (--data-dir, or the run's `data_dir` in its config.toml)"), "{err}");
        assert_eq!(resume(&copy).unwrap().iteration, 0);
        // The same sizes with one pixel changed: other images.
        let images = copy.join("train-images-idx3-ubyte.gz");
        let mut content = crate::data::idx::read_bytes(&images).unwrap();
        *content.last_mut().unwrap() ^= 1;
        std::fs::remove_file(&images).unwrap();
        std::fs::write(copy.join("train-images-idx3-ubyte"), &content).unwrap();
        let err = resume(&copy).err().unwrap().to_string();
        assert!(
            err.contains("holds mnist data of the sizes the run in ") && err.contains("but other content"),
            "{err}"
        );
        // A checkpoint of a build before the data's sizes and digest were recorded: a slice too
        // small for the meta-batch is still refused in one line (a batch is drawn without
        // replacement).
        let file = checkpoint::checkpoint_path(&run);
        let saved = checkpoint::read_tensors(&file).unwrap();
        let recorded = ["data.sizes", "data.digest"];
        let older: Vec<(String, Tensor)> =
            saved.tensors.into_iter().filter(|(name, _)| !recorded.contains(&name.as_str())).collect();
        checkpoint::write_tensors(&file, &older, saved.saved_config.as_deref().unwrap()).unwrap();
        let small = crate::data::fixture_slice(150);
        let err = resume(small.path()).err().unwrap().to_string();
        assert!(err.starts_with("config key `meta_batch` is 64: more than the 38 training images of "), "{err}");
    }

    #[test]
    fn a_new_run_sets_no_key_without_effect() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { meta_batch: 401, ..fixture_config() };
        let err = Trainer::create(&config, &dir.path().join("run"), Device::Cpu).err().unwrap().to_string();
        assert!(err.starts_with("config key `meta_batch` is 401: more than the 400 training images of "), "{err}");
        assert!(err.ends_with("(after 112 held out for validation); expected at most 400"), "{err}");
        let config = Config { meta_batch: 400, ..config };
        let err = Trainer::create(
            &Config { intermediate_loss_every: 4, ..config.clone() },
            &dir.path().join("run"),
            Device::Cpu,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with(
                "config key `intermediate_loss_every` is 4, which adds no intermediate loss with `inner_steps` = 4"
            ),
            "{err}"
        );
        let create =
            |config: Config| Trainer::create(&config, &dir.path().join("run"), Device::Cpu).err().unwrap().to_string();
        let fresh = Config { intermediate_loss_form: IntermediateLossForm::SumFreshBatches, ..config.clone() };
        let err = create(fresh);
        assert!(
            err.ends_with(
                "which changes nothing without intermediate losses; expected `intermediate_loss_every` > 0 with it"
            ),
            "{err}"
        );
        let err = create(Config { augment: true, ..config.clone() });
        assert!(
            err.starts_with("config key `augment` is true with mnist: its horizontal flips mirror digits"),
            "{err}"
        );
        assert!(Trainer::create(
            &Config { intermediate_loss_every: 3, ..config },
            &dir.path().join("run"),
            Device::Cpu
        )
        .is_ok());
    }

    #[test]
    fn a_new_run_refuses_batch_norm_over_one_sample() {
        let dir = tempfile::tempdir().unwrap();
        let create = |config: Config, name: &str| Trainer::create(&config, &dir.path().join(name), Device::Cpu);
        let err = create(Config { batch_size: 1, ..fixture_config() }, "a").err().unwrap().to_string();
        assert!(
            err.starts_with("config key `batch_size` is 1, expected at least 2: batch norm over one sample"),
            "{err}"
        );
        assert!(err.ends_with("noise and label, nor the mlp learner's outputs on its inputs"), "{err}");
        let pixels = Config { batch_size: 1, teacher: TeacherKind::Pixels, ..fixture_config() };
        let err = create(pixels, "p").err().unwrap().to_string();
        assert!(err.ends_with("is constant, so the mlp learner's outputs would not depend on its inputs"), "{err}");
        let err = create(Config { meta_batch: 1, ..fixture_config() }, "b").err().unwrap().to_string();
        assert!(
            err.starts_with(
                "config key `meta_batch` is 1, expected at least 2 with `bn_eval = \"batch\"` and the mlp learner"
            ),
            "{err}"
        );
        assert!(
            create(Config { meta_batch: 1, bn_eval: BnEval::Train, ..fixture_config() }, "c").is_ok(),
            "scored with training statistics"
        );
        // A stored run is read as written.
        let stored = Config { batch_size: 1, ..fixture_config() };
        crate::atomic::write(&dir.path().join("c").join(checkpoint::CONFIG_FILE), stored.to_toml().unwrap().as_bytes())
            .unwrap();
        assert_eq!(checkpoint::read_config(&dir.path().join("c")).unwrap(), stored);
    }

    #[test]
    fn an_edited_config_is_refused_outside_the_keys_a_run_may_change() {
        let dir = tempfile::tempdir().unwrap();
        let config = fixture_config();
        let mut trainer = Trainer::create(&config, dir.path(), Device::Cpu).unwrap();
        trainer.step().unwrap();
        trainer.step().unwrap();
        trainer.save().unwrap();
        drop(trainer);
        let lowered = Config { outer_lr: config.outer_lr / 2.0, grad_clip: 1.0, meta_iters: 1, ..config.clone() };
        checkpoint::write_config(dir.path(), &lowered).unwrap();
        let err = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).err().unwrap().to_string();
        assert!(err.ends_with("config.toml: meta_iters = 1 is below the 2 meta-iterations the run's checkpoint has done; expected at least 2"), "{err}");
        let lowered = Config { meta_iters: 3, ..lowered };
        checkpoint::write_config(dir.path(), &lowered).unwrap();
        // Session settings are not stored with the teacher: saving under them changes no byte.
        let saved = |settings: &RunSettings| {
            Trainer::resume(dir.path(), Device::Cpu, settings).unwrap().save().unwrap();
            std::fs::read(checkpoint::checkpoint_path(dir.path())).unwrap()
        };
        let plain = saved(&RunSettings::default());
        let elsewhere = RunSettings { data_dir: Some(fixture_dir().join(".")), checkpoint_every: Some(1) };
        assert!(saved(&elsewhere) == plain, "the same teacher, saved with other session settings, differs");
        let resumed = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).unwrap();
        assert_eq!((resumed.iteration, resumed.config()), (2, &lowered));
        drop(resumed);
        let other = Config { seed: config.seed + 1, valid_size: config.valid_size + 1, ..lowered };
        checkpoint::write_config(dir.path(), &other).unwrap();
        let err = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).err().unwrap().to_string();
        let expected = format!(
            "config.toml: differs from the config its checkpoint was saved with in keys a run cannot change (seed {} in its checkpoint, {} here; valid_size {} in its checkpoint, {} here); put them back (or the run's own checkpoint), or start a new run in another folder (a run may change only outer_lr, final_lr_fraction,",
            config.seed,
            other.seed,
            config.valid_size,
            other.valid_size
        );
        assert!(err.contains(&expected), "{err}");
        // Adam's betas set its stored moments' averaging and bias correction: not a run's to change.
        checkpoint::write_config(dir.path(), &Config { adam_beta2: 0.99, ..other.clone() }).unwrap();
        let err = Trainer::resume(dir.path(), Device::Cpu, &RunSettings::default()).err().unwrap().to_string();
        assert!(err.contains("adam_beta2 0.999 in its checkpoint, 0.99 here"), "{err}");
        checkpoint::write_config(dir.path(), &config).unwrap();
        let theta = [("theta".to_string(), Tensor::zeros([3], (tch::Kind::Float, Device::Cpu)))];
        checkpoint::write_tensors(&checkpoint::checkpoint_path(dir.path()), &theta, "env = \"cartpole\"").unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).err().unwrap().to_string();
        let config_file = dir.path().join(checkpoint::CONFIG_FILE);
        assert!(
            err.ends_with(&format!("checkpoint.safetensors: is a `gtn rl train` run's checkpoint (the config stored in it is), not the checkpoint of the run {} describes; put that run's checkpoint back", config_file.display())),
            "{err}"
        );
        // An image run's config this build cannot read: another version's, say.
        checkpoint::write_tensors(&checkpoint::checkpoint_path(dir.path()), &theta, "dataset = 3").unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("checkpoint.safetensors: the config stored in it is not this command's ("), "{err}");
    }

    #[test]
    fn checkpoint_from_another_architecture_or_corrupt_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::create(&fixture_config(), dir.path(), Device::Cpu).unwrap();
        trainer.step().unwrap();
        let err = trainer.checkpoint_sha256().unwrap_err().to_string();
        assert!(err.ends_with("checkpoint.safetensors: the teacher at meta-iteration 1 is not saved yet"), "{err}");
        trainer.save().unwrap();
        let loaded = checkpoint::load(dir.path(), Device::Cpu).unwrap();
        assert_eq!(loaded.iteration, 1);
        let on_disk = crate::data::fetch::sha256_hex(&std::fs::read(checkpoint::checkpoint_path(dir.path())).unwrap());
        assert_eq!(
            (loaded.sha256.as_str(), trainer.checkpoint_sha256().unwrap()),
            (on_disk.as_str(), on_disk.as_str())
        );
        for ((n, a), (_, b)) in loaded.teacher.named_params().iter().zip(trainer.teacher.named_params()) {
            assert!(a.equal(&b), "{n} differs after reload");
        }
        let config_path = dir.path().join(checkpoint::CONFIG_FILE);
        let original = std::fs::read_to_string(&config_path).unwrap();
        std::fs::write(&config_path, original.replace("fc_width = 64", "fc_width = 65")).unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("(generator.fc_width 64 in its checkpoint, 65 here)"), "{err}");
        // A checkpoint of an older build does not store its config: its shapes are still checked.
        checkpoint::tests::drop_saved_config(&checkpoint::checkpoint_path(dir.path()));
        let err = checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("checkpoint.safetensors: tensor `generator.fc1.v` has shape [64, 26]"), "{err}");
        assert!(err.contains("from another architecture"), "{err}");
        std::fs::write(&config_path, &original).unwrap();
        // A counter of another shape or type is damage, whatever the config.
        trainer.save().unwrap();
        let file = checkpoint::checkpoint_path(dir.path());
        let saved = checkpoint::read_tensors(&file).unwrap();
        let mut tensors: Vec<(String, Tensor)> = saved.tensors.into_iter().collect();
        for (name, t) in &mut tensors {
            if name == "iteration" {
                *t = Tensor::from_slice(&[1.9f32]);
            }
        }
        checkpoint::write_tensors(&file, &tensors, saved.saved_config.as_deref().unwrap()).unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.safetensors: tensor `iteration` has shape [1] (Float), expected [1] (Int64); the checkpoint is corrupt"),
            "{err}"
        );
        let _ = tch::no_grad(|| trainer.teacher.log_momentum.shallow_clone().fill_(f64::INFINITY));
        trainer.save().unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.safetensors: tensor `inner.log_momentum` holds NaN or infinite values"),
            "{err}"
        );
        std::fs::write(checkpoint::checkpoint_path(dir.path()), b"garbage").unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("checkpoint.safetensors: corrupt or not a safetensors file"), "{err}");
        std::fs::remove_file(checkpoint::checkpoint_path(dir.path())).unwrap();
        std::fs::create_dir(checkpoint::checkpoint_path(dir.path())).unwrap();
        let err = checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("checkpoint.safetensors: not a file; expected the checkpoint of the run in"), "{err}");
        let err = checkpoint::load(&dir.path().join("nope"), Device::Cpu).unwrap_err().to_string();
        assert!(err.ends_with("nope: no such folder; expected a gtn training folder"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = checkpoint::load(empty.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.ends_with("holds no config.toml; expected a gtn training folder"), "{err}");
        // A folder of runs (a comparison's) names them, not another command's; a run that lost
        // its config.toml says so.
        let run = empty.path().join("gtn-full");
        let rl_run = empty.path().join("cartpole");
        for (dir, key) in [(&run, "dataset = \"mnist\""), (&rl_run, "env = \"cartpole\"")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join(checkpoint::CONFIG_FILE), key).unwrap();
        }
        let err = checkpoint::load(empty.path(), Device::Cpu).unwrap_err().to_string();
        let expected = format!("(its folders hold 1 run: {})", crate::text::shell_word(&run));
        assert!(err.ends_with(&format!("holds no config.toml; expected a gtn training folder {expected}")), "{err}");
        std::fs::remove_file(run.join(checkpoint::CONFIG_FILE)).unwrap();
        std::fs::write(checkpoint::checkpoint_path(&run), "").unwrap();
        let err = checkpoint::load(&run, Device::Cpu).unwrap_err().to_string();
        assert!(err.ends_with("(it holds a checkpoint: restore the run's config.toml beside it)"), "{err}");
    }
}
