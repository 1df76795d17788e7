//! Meta-training: each iteration trains a freshly initialised learner on the teacher's data
//! through a differentiable unroll, scores it on a real batch, and takes an outer Adam step on
//! every teacher parameter with the exact meta-gradient.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, SeedableRng};
use tch::{Device, Tensor};

use crate::checkpoint::{self, Checkpoint};
use crate::config::Config;
use crate::data::{BatchSampler, Dataset};
use crate::learner::Learner;
use crate::nn;
use crate::optim::{self, Adam};
use crate::teacher::Teacher;

pub const LOG_FILE: &str = "log.csv";
const LOG_HEADER: &str =
    "iteration,meta_loss,meta_accuracy,grad_norm,outer_lr,inner_lr_mean,inner_momentum_mean,seconds";

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
    dir: PathBuf,
    data: Dataset,
}

impl Trainer {
    /// Starts a new run in `dir`, which must not already hold one.
    pub fn create(config: &Config, dir: &Path, device: Device) -> Result<Trainer> {
        if checkpoint::checkpoint_path(dir).exists() || dir.join(checkpoint::CONFIG_FILE).exists() {
            bail!(
                "{}: already holds a run; use --resume {} to continue it, or choose another --out",
                dir.display(),
                dir.display()
            );
        }
        let data = load_data(config, device)?;
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        checkpoint::write_config(dir, config)?;
        crate::data::fetch::write_atomic(&dir.join(LOG_FILE), format!("{LOG_HEADER}\n").as_bytes())?;
        let teacher = Teacher::new(config, &mut StdRng::seed_from_u64(config.seed), device)?;
        let adam = Adam::new(&teacher.params(), config.adam_beta1, config.adam_beta2);
        Ok(Trainer { teacher, adam, iteration: 0, dir: dir.to_path_buf(), data })
    }

    /// Continues the run in `dir` from its last checkpoint; log rows after it are dropped.
    pub fn resume(dir: &Path, device: Device) -> Result<Trainer> {
        let Checkpoint { teacher, adam, iteration } = checkpoint::load(dir, device)?;
        let data = load_data(&teacher.config, device)?;
        let log = dir.join(LOG_FILE);
        let text = std::fs::read_to_string(&log).unwrap_or_else(|_| format!("{LOG_HEADER}\n"));
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| l.split(',').next().and_then(|i| i.parse::<usize>().ok()).is_none_or(|i| i < iteration))
            .collect();
        crate::data::fetch::write_atomic(&log, format!("{}\n", kept.join("\n")).as_bytes())?;
        Ok(Trainer { teacher, adam, iteration, dir: dir.to_path_buf(), data })
    }

    pub fn config(&self) -> &Config {
        &self.teacher.config
    }

    /// The meta-loss of one iteration and its gradient with respect to every teacher parameter.
    pub fn meta_gradient(&self, iteration: usize) -> (Tensor, f64, Vec<Tensor>) {
        let config = self.config();
        let device = self.data.train.images.device();
        let mut rng = iteration_rng(config.seed, iteration);
        let (image, classes) = config.dataset.shape();
        let learner =
            Learner::new(config.learner.sample(&mut rng), image, classes).expect("learner widths are positive");
        let init = learner.init(&mut rng, device);
        let mut sampler = BatchSampler::new(self.data.train.len(), rng_seed(&mut rng));
        let (real_x, real_y) = self.data.train.batch(&sampler.indices(config.meta_batch, device));
        let every = config.intermediate_loss_every;
        let mut intermediate = Vec::new();
        let trained = self.teacher.teach(&learner, init, config.inner_steps, &mut rng, true, |t, params| {
            if every > 0 && (t + 1) % every == 0 && t + 1 < config.inner_steps {
                intermediate.push(nn::cross_entropy(&learner.forward(params, &real_x), &real_y));
            }
        });
        let logits = learner.forward(&trained, &real_x);
        intermediate.push(nn::cross_entropy(&logits, &real_y));
        let meta_loss = Tensor::stack(&intermediate, 0).mean(None::<tch::Kind>);
        let accuracy = nn::accuracy(&logits, &real_y);
        let grads = Tensor::run_backward(&[&meta_loss], &self.teacher.params(), false, false);
        (meta_loss.detach(), accuracy, grads)
    }

    /// One meta-iteration. A NaN or infinite meta-loss or gradient stops before any update, so
    /// the teacher and the last checkpoint stay as they were.
    pub fn step(&mut self) -> Result<StepStats> {
        let start = Instant::now();
        let i = self.iteration;
        let (loss, meta_accuracy, mut grads) = self.meta_gradient(i);
        let meta_loss = loss.double_value(&[]);
        let grad_norm = optim::clip_grad_norm(&mut grads, self.config().grad_clip);
        if !meta_loss.is_finite() || !grad_norm.is_finite() {
            bail!(
                "meta-iteration {i}: meta-loss {meta_loss}, gradient norm {grad_norm}: training diverged and stopped; the last good checkpoint (iteration {}) is kept in {}; lower outer_lr or grad_clip and resume",
                self.last_saved(),
                checkpoint::checkpoint_path(&self.dir).display()
            );
        }
        let c = self.config();
        let outer_lr = optim::cosine_lr(c.outer_lr, c.final_lr_fraction, i, c.meta_iters);
        self.adam.step(&self.teacher.params(), &grads, outer_lr);
        self.iteration += 1;
        Ok(StepStats {
            iteration: i,
            meta_loss,
            meta_accuracy,
            grad_norm,
            outer_lr,
            inner_lr_mean: self.teacher.log_lr.exp().mean(None::<tch::Kind>).double_value(&[]),
            inner_momentum_mean: self.teacher.log_momentum.exp().mean(None::<tch::Kind>).double_value(&[]),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn last_saved(&self) -> String {
        let every = self.config().checkpoint_every;
        match checkpoint::checkpoint_path(&self.dir).exists() {
            true => format!("{}", self.iteration / every * every),
            false => "none yet".into(),
        }
    }

    pub fn save(&self) -> Result<()> {
        checkpoint::save(&self.dir, &self.teacher, &self.adam, self.iteration)
    }

    /// Runs until `meta_iters`, logging every iteration and checkpointing every
    /// `checkpoint_every` iterations and at the end.
    pub fn run(&mut self, progress: bool) -> Result<()> {
        let total = self.config().meta_iters;
        let bar = if progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_position(self.iteration as u64);
        let log_path = self.dir.join(LOG_FILE);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .with_context(|| format!("{}: cannot open log", log_path.display()))?;
        while self.iteration < total {
            let stats = self.step()?;
            writeln!(log, "{}", stats.csv_row()).with_context(|| format!("{}: cannot write", log_path.display()))?;
            bar.set_message(format!(
                "meta-loss {:.3} meta-acc {:.3} inner lr {:.4}",
                stats.meta_loss, stats.meta_accuracy, stats.inner_lr_mean
            ));
            bar.inc(1);
            // Without a terminal (nohup, CI logs) the bar is invisible: print a line now and then.
            if progress && bar.is_hidden() && (stats.iteration % 10 == 0 || self.iteration == total) {
                println!("{}", stats.csv_row());
            }
            if self.iteration % self.config().checkpoint_every == 0 || self.iteration == total {
                self.save()?;
            }
        }
        bar.finish();
        Ok(())
    }
}

fn rng_seed(rng: &mut StdRng) -> u64 {
    rand::Rng::gen(rng)
}

pub fn load_data(config: &Config, device: Device) -> Result<Dataset> {
    Dataset::load(config.dataset, &config.data_dir(), config.valid_size, config.seed, device)
}
