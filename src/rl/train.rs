//! Meta-training of a training-environment teacher (by evolution strategies on the real return,
//! or by the exact meta-gradient of the imitation objective), with checkpoints: `config.toml` (written
//! once), `checkpoint.safetensors` (parameter vector, the teacher's fixed noise and initial
//! parameters, Adam state, generation and, for the imitation objective, the reference policy's
//! states and actions; replaced atomically) and `log.csv` (one row per generation).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use tch::{Kind, Tensor};

use super::cartpole::OBS_DIM;
use super::config::{Objective, RlConfig};
use super::es::{self, Shaping};
use super::imitation::Reference;
use super::teacher::{self, EnvTeacher, Returns};
use crate::checkpoint::{holds_run, never_saved, CHECKPOINT_FILE, CONFIG_FILE, RL_RUN};
use crate::interrupt::{self, Interrupted, Unit};
use crate::meta::iteration_rng;
use crate::optim::Adam;
use crate::progress::Progress;

use crate::checkpoint::LOG_FILE;

/// `log.csv`'s columns: ES logs its population's fitness, imitation its meta-loss.
fn log_header(objective: Objective) -> &'static str {
    match objective {
        Objective::Es => {
            "generation,fitness_mean,fitness_max,fitness_min,grad_norm,inner_lr_mean,inner_momentum_mean,seconds"
        }
        Objective::Imitation => "generation,meta_loss,grad_norm,inner_lr_mean,inner_momentum_mean,seconds",
    }
}

/// What a generation scored its teacher by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Score {
    /// ES: mean, best and worst fitness (mean real return) of the population's candidates.
    Fitness { mean: f64, max: f64, min: f64 },
    /// Imitation: the cross-entropy of the trained policies against the reference's actions.
    MetaLoss(f64),
}

/// What one generation measured.
#[derive(Debug, Clone, Copy)]
pub struct GenerationStats {
    pub generation: usize,
    pub score: Score,
    pub grad_norm: f64,
    pub inner_lr_mean: f64,
    pub inner_momentum_mean: f64,
    pub seconds: f64,
}

impl GenerationStats {
    fn csv_row(&self) -> String {
        let score = match self.score {
            Score::Fitness { mean, max, min } => format!("{mean:.3},{max:.3},{min:.3}"),
            Score::MetaLoss(loss) => format!("{loss:.6}"),
        };
        format!(
            "{},{score},{:.6},{:.6},{:.6},{:.3}",
            self.generation, self.grad_norm, self.inner_lr_mean, self.inner_momentum_mean, self.seconds
        )
    }

    fn message(&self) -> String {
        match self.score {
            Score::Fitness { mean, max, .. } => format!("fitness mean {mean:.1} max {max:.1}"),
            Score::MetaLoss(loss) => format!("meta-loss {loss:.4}"),
        }
    }
}

pub fn read_config(dir: &Path) -> Result<RlConfig> {
    crate::config::check_not_a_file(dir, "a `gtn rl train` run's")?;
    let (path, text) = crate::checkpoint::read_config_text(dir, "a `gtn rl train` folder", crate::checkpoint::RL_RUN)?;
    RlConfig::from_toml(&text).map_err(|e| match crate::checkpoint::other_kind_of_run(dir, &text, RL_RUN) {
        Some(other) => other.into(),
        None => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

/// A loaded run: its teacher, parameter vector, optimiser state, completed generations and,
/// for the imitation objective, its reference.
pub struct Checkpoint {
    pub teacher: EnvTeacher,
    pub theta: Tensor,
    pub adam: Adam,
    pub generation: usize,
    pub reference: Option<Reference>,
    /// Real environment steps the teacher has cost so far ([`RlTrainer::real_steps`]); none in
    /// the checkpoints of builds before they were counted.
    pub real_steps: Option<u64>,
}

/// Tensors that checkpoints of older builds lack, so a missing one says more than "missing".
const ADDED_LATER: [&str; 2] = ["noise", "theta.initial"];

pub fn save(
    dir: &Path,
    teacher: &EnvTeacher,
    theta: &Tensor,
    adam: &Adam,
    generation: usize,
    reference: Option<&Reference>,
    real_steps: Option<u64>,
) -> Result<()> {
    let mut tensors = vec![
        ("theta", theta.detach().copy()),
        ("theta.initial", Tensor::from_slice(&teacher.initial)),
        ("noise", teacher.noise()),
        ("adam.m", adam.m[0].detach().copy()),
        ("adam.v", adam.v[0].detach().copy()),
        ("adam.steps", Tensor::from_slice(&[adam.steps])),
        ("generation", Tensor::from_slice(&[generation as i64])),
    ];
    tensors.extend(real_steps.map(|n| ("real_steps", Tensor::from_slice(&[n as i64]))));
    if let Some(r) = reference {
        tensors.extend([
            ("reference.states", r.states.copy()),
            ("reference.actions", r.actions.copy()),
            ("reference.real_steps", Tensor::from_slice(&[r.real_steps as i64])),
            ("reference.greedy_return", Tensor::from_slice(&[r.greedy_return])),
        ]);
    }
    let tensors: Vec<(String, Tensor)> = tensors.into_iter().map(|(name, t)| (name.to_string(), t)).collect();
    crate::checkpoint::write_tensors(&dir.join(CHECKPOINT_FILE), &tensors, &teacher.config.to_toml()?).map(drop)
}

/// Loads `dir`, checking its config.toml against the config the checkpoint was saved under (see
/// [`RlConfig::EDITABLE_IN_A_RUN`]) and every tensor against what the config implies. The
/// teacher's noise and initial parameters come from the checkpoint, not from `seed`, so even a
/// checkpoint of an older build, which does not store its config, cannot be paired with other
/// noise by an edited config.toml.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let config = read_config(dir)?;
    let path = dir.join(CHECKPOINT_FILE);
    if !path.is_file() {
        bail!("{}: missing; expected the checkpoint of the run in {}", path.display(), dir.display());
    }
    let file = crate::checkpoint::read_tensors(&path)?;
    crate::checkpoint::check_edits(dir, &file, &config, &RlConfig::EDITABLE_IN_A_RUN)?;
    let stored = &file.tensors;
    let find = |name: &str| -> Result<&Tensor> {
        let Some(t) = stored.get(name) else {
            if ADDED_LATER.contains(&name) {
                bail!(
                    "{}: tensor `{name}` missing: the checkpoint is from an older gtn that did not store it, and it cannot be rebuilt from {CONFIG_FILE}; start the run again",
                    path.display()
                );
            }
            if name.starts_with("reference.") {
                bail!(
                    "{}: tensor `{name}` missing: objective = \"imitation\" in {CONFIG_FILE} needs the reference its run started with, which a run started with objective = \"es\" or by an older gtn does not have; a run cannot change its objective: start a new one",
                    path.display()
                );
            }
            bail!("{}: tensor `{name}` missing", path.display());
        };
        Ok(t)
    };
    let take = |name: &str, shape: &[i64], kind: Kind| -> Result<Tensor> {
        let t = find(name)?;
        if t.size() != shape || t.kind() != kind {
            bail!(
                "{}: tensor `{name}` is {:?} {:?}, the config in {CONFIG_FILE} implies {shape:?} {kind:?}; the checkpoint is from another config",
                path.display(),
                t.size(),
                t.kind()
            );
        }
        Ok(t.shallow_clone())
    };
    let count = |name: &str| -> Result<u64> {
        match take(name, &[1], Kind::Int64)?.int64_value(&[0]) {
            n if n >= 0 => Ok(n as u64),
            n => bail!("{}: tensor `{name}` is {n}, expected a count (at least 0)", path.display()),
        }
    };
    let dim = [teacher::param_dim(&config) as i64];
    let theta = take("theta", &dim, Kind::Float)?;
    let noise = take("noise", &EnvTeacher::noise_shape(&config), Kind::Float)?;
    let initial = take("theta.initial", &dim, Kind::Float)?;
    let (m, v) = (take("adam.m", &dim, Kind::Float)?, take("adam.v", &dim, Kind::Float)?);
    let steps = take("adam.steps", &[1], Kind::Int64)?.int64_value(&[0]);
    let generation = take("generation", &[1], Kind::Int64)?.int64_value(&[0]);
    let generation =
        crate::checkpoint::check_progress(dir, generation, steps, ("generations", config.generations), "generation")?;
    let reference = match config.objective {
        Objective::Es if stored.contains_key("reference.actions") => bail!(
            "{}: holds an imitation reference (tensor `reference.actions`) but {CONFIG_FILE} says objective = \"es\"; a run cannot change its objective: start a new one",
            path.display()
        ),
        Objective::Es => None,
        Objective::Imitation => {
            // The reference's episodes set the number of states; the config does not.
            let actions = find("reference.actions")?;
            let n = match actions.size()[..] {
                [n] if n > 0 && actions.kind() == Kind::Int64 => n,
                _ => bail!(
                    "{}: tensor `reference.actions` is {:?} {:?}, expected [N] Int64 with N > 0",
                    path.display(),
                    actions.size(),
                    actions.kind()
                ),
            };
            if actions.eq(0).logical_or(&actions.eq(1)).all().int64_value(&[]) == 0 {
                bail!("{}: tensor `reference.actions` holds values other than 0 and 1", path.display());
            }
            Some(Reference {
                states: take("reference.states", &[n, OBS_DIM as i64], Kind::Float)?,
                actions: actions.shallow_clone(),
                real_steps: count("reference.real_steps")? as usize,
                greedy_return: take("reference.greedy_return", &[1], Kind::Double)?.double_value(&[0]),
            })
        }
    };
    let teacher = EnvTeacher::from_parts(&config, &noise, &initial);
    let (lrs, momenta) = teacher.schedule(&theta);
    let mut floats = vec![
        ("tensor `theta`", theta.shallow_clone()),
        ("the inner learning rates of tensor `theta`", lrs),
        ("the inner momenta of tensor `theta`", momenta),
        ("tensor `theta.initial`", initial),
        ("tensor `noise`", noise),
        ("tensor `adam.m`", m.shallow_clone()),
        ("tensor `adam.v`", v.shallow_clone()),
    ];
    if let Some(r) = &reference {
        floats.push(("tensor `reference.states`", r.states.shallow_clone()));
        floats.push(("tensor `reference.greedy_return`", Tensor::from(r.greedy_return)));
    }
    let tensors: Vec<Tensor> = floats.iter().map(|(_, t)| t.shallow_clone()).collect();
    if let Some(k) = crate::nn::first_non_finite(&tensors) {
        bail!("{}: NaN or infinite values in {}", path.display(), floats[k].0);
    }
    let real_steps = match stored.get("real_steps") {
        // An imitation run's is its reference's, stored in older checkpoints too.
        None => reference.as_ref().map(Reference::real_cost),
        Some(_) => Some(count("real_steps")?),
    };
    // ES's gradient scales as 1 / sigma: a sigma edited since the save (what a diverged run's
    // error advises) rescales Adam's moments to match, or its second moment would take about a
    // thousand generations to forget the old scale, and the steps be larger meanwhile.
    let saved_sigma = file.saved_config.as_deref().and_then(|text| RlConfig::from_toml(text).ok()).map(|c| c.sigma);
    let edited = saved_sigma.filter(|&sigma| config.objective == Objective::Es && sigma != config.sigma);
    // Moments of a run never updated are zeros, whatever the scale.
    let (m, v, steps) = match edited.filter(|_| steps > 0) {
        Some(sigma) => {
            let ratio = sigma / config.sigma;
            let (m, v) = (m * ratio, v * ratio.powi(2));
            // Beyond float32 (a sigma edited by twenty orders of magnitude), the old moments
            // say nothing of the new scale: Adam starts afresh.
            match crate::nn::all_finite(&m) && crate::nn::all_finite(&v) {
                true => (m, v, steps),
                false => (m.zeros_like(), v.zeros_like(), 0),
            }
        }
        None => (m, v, steps),
    };
    let adam = Adam {
        m: vec![m],
        v: vec![v],
        steps,
        ..Adam::new(&[], config.adam_beta1, config.adam_beta2, crate::optim::DEFAULT_EPS)
    };
    Ok(Checkpoint { teacher, theta, adam, generation, reference, real_steps })
}

/// What the user of a run stopped by a NaN or infinity can do.
#[derive(Debug, Clone, Copy)]
enum Remedy {
    /// The teacher as initialised diverges: no key a run may edit changes that.
    NewRun,
    /// The saved teacher itself diverges, so a resume would load it again.
    NewRunFromSaved,
    /// Lower these keys of the run's config and resume from the last checkpoint.
    Lower(&'static str),
}

pub struct RlTrainer {
    pub teacher: EnvTeacher,
    /// The teacher's parameter vector `[dim]`, updated in place by Adam.
    pub theta: Tensor,
    adam: Adam,
    /// Generations completed.
    pub generation: usize,
    /// Real environment steps the teacher has cost: ES, every step of every candidate's
    /// episodes; imitation, its reference's (REINFORCE's training and the episodes recording its
    /// states), as meta-training itself takes none. None for a run resumed from a checkpoint of
    /// a build before they were counted.
    pub real_steps: Option<u64>,
    last_saved: usize,
    dir: PathBuf,
    /// Worker threads for the ES population; the ES result does not depend on it.
    pub threads: usize,
    /// The imitation objective's reference states and actions: learnt when the run starts, then
    /// stored with its checkpoints, since REINFORCE's result depends on libtorch's thread count
    /// and a resume must not relearn it.
    reference: Option<Reference>,
    /// One process trains in `dir` at a time.
    _lock: crate::checkpoint::RunLock,
}

impl RlTrainer {
    /// Starts a new run in `dir`, which must not already hold one ([`RlTrainer::open`] continues it).
    /// See [`holds_run`] for what counts as one.
    pub fn create(config: &RlConfig, dir: &Path, threads: usize) -> Result<RlTrainer> {
        config.check_new_run()?;
        crate::checkpoint::check_startable::<RlConfig>(dir)?;
        let (teacher, theta) = EnvTeacher::new(config);
        let theta = Tensor::from_slice(&theta);
        let adam = Adam::new(&[theta.shallow_clone()], config.adam_beta1, config.adam_beta2, crate::optim::DEFAULT_EPS);
        // The reference can take minutes of real episodes: learnt before any file is written.
        let reference = (config.objective == Objective::Imitation).then(|| Reference::learn(config));
        let lock = crate::checkpoint::start_run::<RlConfig>(dir, &config.to_toml()?, log_header(config.objective))?;
        let real_steps = reference.as_ref().map_or(0, Reference::real_cost);
        let mut trainer = RlTrainer {
            teacher,
            theta,
            adam,
            generation: 0,
            real_steps: Some(real_steps),
            last_saved: 0,
            dir: dir.to_path_buf(),
            threads,
            reference,
            _lock: lock,
        };
        trainer.save()?;
        Ok(trainer)
    }

    /// Starts a run of `config` in `dir`, or continues the one already there if it was started
    /// with the same config; another config is an error that names the keys.
    pub fn open(config: &RlConfig, dir: &Path, threads: usize) -> Result<RlTrainer> {
        crate::config::check_not_a_file(dir, "--out")?;
        if !holds_run(dir) {
            return RlTrainer::create(config, dir, threads);
        }
        // Continuing the stored run is advised only where it would load.
        let resumable = || never_saved(dir) || load(dir).is_ok();
        crate::config::same_run(dir, read_config(dir), config, || Some(RL_RUN).filter(|_| resumable()))?;
        RlTrainer::resume(dir, threads)
    }

    /// Continues the run in `dir` from its last checkpoint; log rows after it are dropped.
    pub fn resume(dir: &Path, threads: usize) -> Result<RlTrainer> {
        if never_saved(dir) {
            return RlTrainer::create(&read_config(dir)?, dir, threads);
        }
        let lock = crate::checkpoint::lock_run(dir)?;
        let Checkpoint { teacher, theta, adam, generation, reference, real_steps } = load(dir)?;
        crate::progress::truncate_log(&dir.join(LOG_FILE), log_header(teacher.config.objective), generation)?;
        Ok(RlTrainer {
            teacher,
            theta,
            adam,
            generation,
            real_steps,
            last_saved: generation,
            dir: dir.to_path_buf(),
            threads,
            reference,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &RlConfig {
        &self.teacher.config
    }

    /// The imitation objective's reference, if this run uses it.
    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    pub fn theta(&self) -> Vec<f32> {
        Vec::<f32>::try_from(&self.theta).expect("a float vector")
    }

    /// One generation: a descent direction for the teacher, then one Adam step on it. The step
    /// is taken on copies: if the gradient, the parameters, Adam's moments or the inner learning
    /// rates or momenta they imply come out NaN or infinite, it stops before anything is logged
    /// or saved and leaves the trainer as it was, so the last good checkpoint stays.
    pub fn step(&mut self) -> Result<GenerationStats> {
        let start = Instant::now();
        let g = self.generation;
        let mut rng = iteration_rng(self.config().seed, g);
        let (score, descent, steps) = match &self.reference {
            None => self.es_direction(&mut rng)?,
            Some(reference) => {
                let (loss, grad) = reference.meta_gradient(&self.teacher, &self.theta, &mut rng);
                (Score::MetaLoss(loss), Vec::<f32>::try_from(grad).expect("a float vector"), 0)
            }
        };
        let grad_norm = descent.iter().map(|&g| f64::from(g).powi(2)).sum::<f64>().sqrt();
        // Imitation's first meta-gradient is the initial teacher's own (ES's depends on sigma).
        let remedy = match g == 0 && self.config().objective == Objective::Imitation {
            true => Remedy::NewRun,
            false => Remedy::Lower(self.update_keys()),
        };
        match score {
            Score::MetaLoss(loss) if !loss.is_finite() => {
                return Err(self.diverged(g, &format!("the meta-loss is {loss}"), remedy));
            }
            _ if !grad_norm.is_finite() => {
                return Err(self.diverged(g, &format!("the gradient norm is {grad_norm}"), remedy))
            }
            _ => {}
        }
        let (theta, adam, lrs, momenta) = self.update(&descent)?;
        let stats = GenerationStats {
            generation: g,
            score,
            grad_norm,
            inner_lr_mean: lrs.mean(None::<Kind>).double_value(&[]),
            inner_momentum_mean: momenta.mean(None::<Kind>).double_value(&[]),
            seconds: start.elapsed().as_secs_f64(),
        };
        self.theta = theta;
        self.adam = adam;
        self.generation += 1;
        self.real_steps = self.real_steps.map(|n| n + steps);
        crate::progress::append_row(&self.dir.join(LOG_FILE), &stats.csv_row())?;
        Ok(stats)
    }

    /// Adam's step along `descent`, taken on copies of the parameters and moments: the new
    /// parameters, Adam state and the inner learning rates and momenta they imply, or the
    /// divergence error if any of them is NaN or infinite.
    fn update(&self, descent: &[f32]) -> Result<(Tensor, Adam, Tensor, Tensor)> {
        let theta = self.theta.detach().copy();
        let copies = |moments: &[Tensor]| moments.iter().map(Tensor::copy).collect();
        let mut adam = Adam { m: copies(&self.adam.m), v: copies(&self.adam.v), ..self.adam };
        adam.step(&[theta.shallow_clone()], &[Tensor::from_slice(descent)], self.config().outer_lr);
        let (lrs, momenta) = self.teacher.schedule(&theta);
        let state = [
            ("the teacher's parameters", &theta),
            ("Adam's first moment", &adam.m[0]),
            ("Adam's second moment", &adam.v[0]),
            ("the inner learning rates", &lrs),
            ("the inner momenta", &momenta),
        ];
        if let Some(k) = crate::nn::first_non_finite(&state.map(|(_, t)| t.shallow_clone())) {
            let what = format!("the update made {} NaN or infinite", state[k].0);
            return Err(self.diverged(self.generation, &what, Remedy::Lower(self.update_keys())));
        }
        Ok((theta, adam, lrs, momenta))
    }

    /// The error of a run stopped by a NaN or infinity, with what to do about it.
    fn diverged(&self, generation: usize, what: &str, remedy: Remedy) -> anyhow::Error {
        let dir = self.dir.display();
        let advice = match remedy {
            Remedy::NewRun => crate::meta::DIVERGED_AS_INITIALISED.to_owned(),
            Remedy::NewRunFromSaved => format!(
                "the teacher saved at generation {generation} itself trains every policy to NaN or infinity, and a resume loads it again: start a new run (another --out) with a smaller `outer_lr` or `sigma` (--config)"
            ),
            Remedy::Lower(keys) => format!(
                "lower {keys} in {dir}/{CONFIG_FILE} and run `gtn rl train --resume {}`",
                crate::text::shell_word(&self.dir)
            ),
        };
        anyhow::anyhow!(
            "generation {generation}: {what}: training stopped; the last good checkpoint (generation {}) is kept in {dir}; {advice}",
            self.last_saved
        )
    }

    /// What an update gone NaN or infinite asks to lower: the outer step, and ES's perturbations.
    fn update_keys(&self) -> &'static str {
        match self.config().objective {
            Objective::Es => "outer_lr or sigma",
            Objective::Imitation => "outer_lr",
        }
    }

    /// ES: score the antithetic population on common draws (the same policies and episodes for
    /// every candidate, so ranks compare teachers, not luck); the population's fitness, minus the
    /// rank-shaped ES gradient, and the real steps its episodes took. A population whose every
    /// policy diverged is an error: equal returns give a zero gradient, leaving the teacher to
    /// Adam's momentum, which fades without bringing it back.
    fn es_direction(&self, rng: &mut StdRng) -> Result<(Score, Vec<f32>, u64)> {
        let c = self.config();
        let theta = self.theta();
        let directions = es::directions(rng, theta.len(), c.pairs);
        let trials = teacher::trials(c, rng, c.policies_per_candidate, c.episodes_per_policy);
        let teacher = &self.teacher;
        let returns = es::evaluate_parallel(2 * c.pairs, self.threads, |i| {
            teacher.returns(&es::candidate(&theta, &directions, c.sigma, i), &trials)
        });
        let policies = returns.len() * trials.len();
        if returns.iter().map(|r| r.diverged).sum::<usize>() == policies {
            // The teacher itself diverging: as initialised, as saved, or taken there by the
            // updates since the save. Otherwise sigma's perturbations alone do it.
            let g = self.generation;
            let remedy = match teacher.returns(&theta, &trials).diverged == trials.len() {
                true if g == 0 => Remedy::NewRun,
                true if self.last_saved == g => Remedy::NewRunFromSaved,
                true => Remedy::Lower("outer_lr"),
                false => Remedy::Lower("sigma"),
            };
            let what = format!("training made all {policies} policies of the population NaN or infinite");
            return Err(self.diverged(g, &what, remedy));
        }
        let fitness: Vec<f64> = returns.iter().map(Returns::mean).collect();
        let descent =
            es::gradient(&directions, &fitness, c.sigma, Shaping::CentredRanks).iter().map(|&g| -g as f32).collect();
        // CartPole pays 1 per step: the real steps are the episodes' returns.
        let steps = returns.iter().flat_map(|r| &r.episodes).map(|&r| r.round() as u64).sum();
        let mean = fitness.iter().sum::<f64>() / fitness.len() as f64;
        let max = fitness.iter().copied().fold(f64::MIN, f64::max);
        let min = fitness.iter().copied().fold(f64::MAX, f64::min);
        Ok((Score::Fitness { mean, max, min }, descent, steps))
    }

    pub fn save(&mut self) -> Result<()> {
        let reference = self.reference.as_ref();
        save(&self.dir, &self.teacher, &self.theta, &self.adam, self.generation, reference, self.real_steps)?;
        self.last_saved = self.generation;
        interrupt::saved(self.generation);
        Ok(())
    }

    /// Runs until `generations`, checkpointing every `save_every` generations and at the end.
    pub fn run(&mut self, progress: bool) -> Result<()> {
        let total = self.config().generations;
        interrupt::saved(self.last_saved);
        let bar = Progress::new(total, self.generation, progress, log_header(self.config().objective));
        while self.generation < total {
            let stats = self.step()?;
            let due = self.generation.is_multiple_of(self.config().save_every) || self.generation == total;
            let stop = interrupt::save_point(due, || self.save())?;
            bar.advance(stats.generation, self.generation == total || stop.is_some(), stats.message(), || {
                stats.csv_row()
            });
            if let Some(signal) = stop {
                return Err(Interrupted::at(&self.dir, Unit::Generation, self.generation, total, signal).into());
            }
        }
        bar.finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tiny(generations: usize) -> RlConfig {
        RlConfig { generations, save_every: 2, ..RlConfig::tiny() }
    }

    #[test]
    fn tiny_run_improves_the_real_return() {
        let dir = tempfile::tempdir().unwrap();
        let config = RlConfig::tiny();
        let mut trainer = RlTrainer::create(&config, dir.path(), 2).unwrap();
        trainer.run(false).unwrap();
        // Held-out policies and episodes, not the ones ES scored.
        let trials = teacher::trials(&config, &mut StdRng::seed_from_u64(99), 8, 2);
        let (_, theta0) = EnvTeacher::new(&config);
        let before = trainer.teacher.returns(&theta0, &trials).mean();
        let after = trainer.teacher.returns(&trainer.theta(), &trials).mean();
        assert!(after > before + 20.0, "real return {before} before, {after} after {} generations", config.generations);
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 1 + config.generations);
    }

    /// Same seed, same result, whatever the thread count and however the run is interrupted.
    #[test]
    fn deterministic_and_resumable() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut whole = RlTrainer::create(&tiny(4), a.path(), 2).unwrap();
        whole.run(false).unwrap();
        let mut part = RlTrainer::create(&tiny(4), b.path(), 1).unwrap();
        part.step().unwrap();
        part.step().unwrap();
        part.save().unwrap();
        part.step().unwrap();
        // An interrupted run: the third generation's log row is dropped, its update lost.
        drop(part);
        let mut resumed = RlTrainer::resume(b.path(), 1).unwrap();
        assert_eq!(resumed.generation, 2);
        resumed.run(false).unwrap();
        assert_eq!(resumed.theta(), whole.theta());
        let rows = |d: &Path| -> Vec<String> {
            let text = std::fs::read_to_string(d.join(LOG_FILE)).unwrap();
            text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
        };
        assert_eq!(rows(b.path()), rows(a.path()), "logs differ apart from timings");
        assert_eq!(load(a.path()).unwrap().generation, 4);
        // The real steps counted across the interruption are the uninterrupted run's; at least
        // one per episode of a generation (16 pairs' 32 candidates x 4 policies x 2 episodes).
        assert_eq!((resumed.real_steps, load(b.path()).unwrap().real_steps), (whole.real_steps, whole.real_steps));
        assert!(whole.real_steps.unwrap() >= 4 * 256, "{:?}", whole.real_steps);
        // A checkpoint of a build before they were counted: not counted from then on.
        let file = b.path().join(CHECKPOINT_FILE);
        let older: Vec<(String, Tensor)> =
            Tensor::read_safetensors(&file).unwrap().into_iter().filter(|(name, _)| name != "real_steps").collect();
        Tensor::write_safetensors(&older, &file).unwrap();
        assert_eq!(load(b.path()).unwrap().real_steps, None);
    }

    /// Halving sigma doubles ES's gradients: Adam's moments are rescaled to match on loading.
    #[test]
    fn an_edited_sigma_rescales_adams_moments() {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny(4);
        let mut trainer = RlTrainer::create(&config, dir.path(), 1).unwrap();
        trainer.step().unwrap();
        trainer.save().unwrap();
        drop(trainer);
        let before = load(dir.path()).unwrap().adam;
        let halved = RlConfig { sigma: config.sigma / 2.0, ..config.clone() };
        std::fs::write(dir.path().join(CONFIG_FILE), halved.to_toml().unwrap()).unwrap();
        let after = load(dir.path()).unwrap().adam;
        assert!(before.m[0].abs().sum(Kind::Double).double_value(&[]) > 0.0);
        assert!(after.m[0].allclose(&(&before.m[0] * 2.0), 1e-6, 0.0, false));
        assert!(after.v[0].allclose(&(&before.v[0] * 4.0), 1e-6, 0.0, false));

        // What the divergence error advises after a huge sigma: edit it down and resume. The
        // moments of a run saved before its first update are zero, and stay so.
        let dir = tempfile::tempdir().unwrap();
        let huge = RlConfig { sigma: 1e30, ..config.clone() };
        let mut trainer = RlTrainer::create(&huge, dir.path(), 1).unwrap();
        assert!(trainer.step().unwrap_err().to_string().contains("; lower sigma in "));
        drop(trainer);
        std::fs::write(dir.path().join(CONFIG_FILE), config.to_toml().unwrap()).unwrap();
        let mut resumed = RlTrainer::resume(dir.path(), 1).unwrap();
        assert!(resumed.adam.v[0].equal(&resumed.adam.v[0].zeros_like()), "{}", resumed.adam.v[0]);
        resumed.step().unwrap();
        resumed.save().unwrap();
        drop(resumed);
        // A factor whose square leaves float32 (0.1 / 1e-30): the moments start afresh.
        let tiny_sigma = RlConfig { sigma: 1e-30, ..config.clone() };
        std::fs::write(dir.path().join(CONFIG_FILE), tiny_sigma.to_toml().unwrap()).unwrap();
        let adam = load(dir.path()).unwrap().adam;
        assert_eq!(adam.steps, 0);
        assert!(adam.m[0].equal(&adam.m[0].zeros_like()) && adam.v[0].equal(&adam.v[0].zeros_like()));
    }

    #[test]
    fn non_finite_teacher_stops_and_keeps_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = RlTrainer::create(&tiny(4), dir.path(), 1).unwrap();
        trainer.theta = trainer.theta.full_like(f64::NAN);
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.starts_with("generation 0: training made all 128 policies of the population NaN"), "{err}");
        let err = trainer.update(&vec![0.0; trainer.teacher.dim()]).unwrap_err().to_string();
        assert!(
            err.starts_with("generation 0: the update made the teacher's parameters NaN or infinite")
                && err.contains("--resume"),
            "{err}"
        );
        let saved = load(dir.path()).unwrap();
        assert_eq!(saved.generation, 0);
        assert_eq!(Vec::<f32>::try_from(&saved.theta).unwrap(), EnvTeacher::new(&tiny(4)).1);
        let again = RlTrainer::create(&tiny(4), dir.path(), 1).err().unwrap().to_string();
        assert!(again.contains("already holds a run"), "{again}");
    }

    /// A teacher whose every candidate trains NaN policies gives ES equal (always-left) returns
    /// and so a zero gradient: it would "train" on without coming back. It stops instead, before
    /// anything is logged, with advice by cause: the initial teacher, the saved one, the updates
    /// since the save, or sigma.
    #[test]
    fn a_population_of_diverged_policies_stops_es() {
        let dir = tempfile::tempdir().unwrap();
        let config = RlConfig { init_lr: 1e30, ..tiny(4) };
        let mut trainer = RlTrainer::create(&config, dir.path(), 2).unwrap();
        let err = trainer.step().unwrap_err().to_string();
        let policies = 2 * config.pairs * config.policies_per_candidate;
        let want = format!("generation 0: training made all {policies} policies of the population NaN or infinite");
        assert!(err.starts_with(&want) && err.ends_with(crate::meta::DIVERGED_AS_INITIALISED), "{err}");
        assert_eq!(trainer.generation, 0);
        assert_eq!(std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap().lines().count(), 1, "header only");
        // Later, the updates since the last save took it there: lower their rate and resume.
        trainer.generation = 1;
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.starts_with("generation 1: training made all") && err.contains("; lower outer_lr in "), "{err}");
        // The saved teacher itself: a resume would load it again.
        trainer.last_saved = 1;
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.contains("the teacher saved at generation 1 itself trains every policy to NaN"), "{err}");
        // The centre trains finite policies, sigma's perturbations do not: sigma is the cause.
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = RlTrainer::create(&RlConfig { sigma: 1e30, ..tiny(4) }, dir.path(), 2).unwrap();
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.starts_with("generation 0: training made all") && err.contains("; lower sigma in "), "{err}");

        let (_, theta) = EnvTeacher::new(&config);
        let trials = teacher::trials(&config, &mut StdRng::seed_from_u64(3), 2, 1);
        assert_eq!(trainer.teacher.returns(&theta, &trials).diverged, 2);
        let (_, theta) = EnvTeacher::new(&tiny(4));
        assert_eq!(
            trainer.teacher.returns(&theta, &trials).diverged,
            0,
            "the tiny preset's rate trains finite policies"
        );
    }

    /// Adam's second moment can overflow while the parameters stay finite (the update divides
    /// by its root), and a finite log learning rate can overflow once exponentiated: either stops
    /// the step before anything is logged or saved, with the trainer as it was.
    #[test]
    fn a_non_finite_optimiser_state_or_schedule_stops_the_step_and_leaves_the_trainer() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = RlTrainer::create(&tiny(4), dir.path(), 1).unwrap();
        let files = || ["log.csv", "checkpoint.safetensors"].map(|f| std::fs::read(dir.path().join(f)).unwrap());
        let before = files();
        trainer.adam.v[0] = trainer.adam.v[0].full_like(f64::INFINITY);
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.starts_with("generation 0: the update made Adam's second moment NaN or infinite"), "{err}");
        assert!(crate::nn::all_finite(&trainer.theta), "the parameters alone would not have shown it");
        assert_eq!((trainer.generation, trainer.adam.steps), (0, 0));
        assert!(trainer.adam.m[0].equal(&trainer.adam.m[0].zeros_like()), "Adam's first moment is as it was");
        assert_eq!(files(), before, "nothing logged or saved");

        drop(trainer);
        let mut trainer = RlTrainer::resume(dir.path(), 1).unwrap();
        let first_log_lr = (trainer.teacher.dim() - 2 * tiny(4).inner_steps) as i64;
        let _ = trainer.theta.get(first_log_lr).fill_(100.0);
        let theta = trainer.theta();
        // Such a rate also trains every policy to NaN, which stops a step before its update.
        let err = trainer.update(&vec![0.0; trainer.teacher.dim()]).unwrap_err().to_string();
        assert!(err.starts_with("generation 0: the update made the inner learning rates NaN or infinite"), "{err}");
        assert_eq!((trainer.theta(), trainer.adam.steps), (theta, 0));
        assert_eq!(files(), before);
        trainer.save().unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(
            err.ends_with(
                "checkpoint.safetensors: NaN or infinite values in the inner learning rates of tensor `theta`"
            ),
            "{err}"
        );
    }

    /// The imitation reference is stored with the checkpoint and read back on resume, not
    /// learnt again (another thread count could learn another one).
    #[test]
    fn the_imitation_reference_is_stored_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let config = RlConfig { objective: Objective::Imitation, baseline_budget: 2_000, ..tiny(4) };
        let mut trainer = RlTrainer::create(&config, dir.path(), 1).unwrap();
        // A teacher that diverges as initialised: no edit of the run helps, a new run may.
        let theta = trainer.theta.copy();
        trainer.theta = theta.full_like(f64::NAN);
        let err = trainer.step().unwrap_err().to_string();
        assert!(err.starts_with("generation 0: the ") && !err.contains("--resume"), "{err}");
        assert!(err.ends_with("before any update: start a new run (another --out) with a smaller `init_lr`, `init_momentum` or `inner_steps` (--config)"), "{err}");
        trainer.theta = theta;
        let stats = trainer.step().unwrap();
        trainer.save().unwrap();
        let Score::MetaLoss(loss) = stats.score else { panic!("{stats:?}") };
        let log = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let rows: Vec<&str> = log.lines().collect();
        assert_eq!(rows[0], "generation,meta_loss,grad_norm,inner_lr_mean,inner_momentum_mean,seconds");
        assert!(rows[1].starts_with(&format!("0,{loss:.6},")) && loss > 0.0, "{log}");
        let learnt = trainer.reference().unwrap();
        let learnt = Reference { states: learnt.states.copy(), actions: learnt.actions.copy(), ..*learnt };
        drop(trainer);
        let file = dir.path().join(CHECKPOINT_FILE);
        let stored = Tensor::read_safetensors(&file).unwrap();
        let mirrored: Vec<(String, Tensor)> = stored
            .iter()
            .map(|(name, t)| match name.as_str() {
                "reference.actions" => (name.clone(), t.ones_like() - t),
                _ => (name.clone(), t.shallow_clone()),
            })
            .collect();
        Tensor::write_safetensors(&mirrored, &file).unwrap();
        let resumed = RlTrainer::resume(dir.path(), 2).unwrap();
        let r = resumed.reference().unwrap();
        assert!(
            r.actions.equal(&(learnt.actions.ones_like() - &learnt.actions)),
            "the stored actions, not relearnt ones"
        );
        assert!(r.states.equal(&learnt.states));
        assert_eq!((r.real_steps, r.greedy_return), (learnt.real_steps, learnt.greedy_return));
        assert_eq!(resumed.generation, 1);
        // Meta-training takes no real step: the teacher cost its reference's.
        let recorded = learnt.actions.size()[0] as u64;
        assert_eq!(resumed.real_steps, Some(learnt.real_steps as u64 + recorded));
        let older: Vec<(String, Tensor)> = mirrored
            .iter()
            .filter(|(name, _)| name != "real_steps")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        Tensor::write_safetensors(&older, &file).unwrap();
        assert_eq!(load(dir.path()).unwrap().real_steps, resumed.real_steps, "recovered from the reference");

        let corrupt = |name: &str, value: Tensor| {
            let edited: Vec<(String, Tensor)> = stored
                .iter()
                .map(|(n, t)| (n.clone(), if n == name { value.shallow_clone() } else { t.shallow_clone() }))
                .collect();
            Tensor::write_safetensors(&edited, &file).unwrap();
            load(dir.path()).err().unwrap().to_string()
        };
        let n = learnt.actions.size()[0];
        for (name, value, expected) in [
            (
                "reference.real_steps",
                Tensor::from_slice(&[-3i64]),
                "tensor `reference.real_steps` is -3, expected a count",
            ),
            ("real_steps", Tensor::from_slice(&[-1i64]), "tensor `real_steps` is -1, expected a count"),
            (
                "reference.actions",
                learnt.actions.ones_like() * 2,
                "tensor `reference.actions` holds values other than 0 and 1",
            ),
            (
                "reference.actions",
                learnt.actions.view([n, 1]),
                &format!("tensor `reference.actions` is [{n}, 1] Int64, expected [N] Int64"),
            ),
        ] {
            let err = corrupt(name, value);
            assert!(err.contains(expected), "{name}: {err}");
        }

        let without: Vec<(String, Tensor)> =
            stored.into_iter().filter(|(name, _)| name != "reference.states").collect();
        Tensor::write_safetensors(&without, &file).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("tensor `reference.states` missing: objective = \"imitation\""), "{err}");
        let es = RlConfig { objective: Objective::Es, ..config };
        std::fs::write(dir.path().join(CONFIG_FILE), es.to_toml().unwrap()).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(
                "holds an imitation reference (tensor `reference.actions`) but config.toml says objective = \"es\""
            ),
            "{err}"
        );
    }

    /// A folder of the other kind of run, given to either kind's commands, is named for what it
    /// is, not refused by the other config's first unknown key.
    #[test]
    fn a_folder_of_the_other_kind_of_run_is_named() {
        use crate::checkpoint::{self as ck, IMAGE_RUN, RL_RUN};
        use tch::Device;
        let dir = tempfile::tempdir().unwrap();
        let (rl, image) = (dir.path().join("rl"), dir.path().join("image"));
        RlTrainer::create(&tiny(4), &rl, 1).unwrap().save().unwrap();
        let config =
            crate::config::Config { data_dir: Some(crate::data::fixture_dir()), ..crate::config::Config::tiny() };
        crate::meta::Trainer::create(&config, &image, Device::Cpu).unwrap().save().unwrap();
        let named = |d: &Path, other: &str, eval: &str, command: &str| {
            format!(
                "{}: holds a `{other}` run, not a `{command}` one (`{eval}` and `{other} --resume` read it); expected a `{command}` folder",
                d.display()
            )
        };
        let rl_run = named(&rl, RL_RUN, "gtn rl eval", IMAGE_RUN);
        assert_eq!(ck::load(&rl, Device::Cpu).err().unwrap().to_string(), rl_run);
        let opened = crate::meta::Trainer::open(&config, &rl, Device::Cpu, &Default::default(), false, Some(IMAGE_RUN));
        assert_eq!(opened.err().unwrap().to_string(), rl_run);
        let image_run = named(&image, IMAGE_RUN, "gtn eval", RL_RUN);
        assert_eq!(read_config(&image).unwrap_err().to_string(), image_run);
        assert_eq!(RlTrainer::open(&tiny(4), &image, 1).err().unwrap().to_string(), image_run);
        assert!(read_config(&rl).is_ok() && ck::read_config(&image).is_ok());
    }

    #[test]
    fn a_start_interrupted_before_its_first_checkpoint_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        crate::atomic::write(&dir.path().join(CONFIG_FILE), tiny(9).to_toml().unwrap().as_bytes()).unwrap();
        assert_eq!(RlTrainer::resume(dir.path(), 1).unwrap().teacher.config, tiny(9), "--resume: as configured");
        std::fs::remove_file(dir.path().join(CHECKPOINT_FILE)).unwrap();
        let trainer = RlTrainer::open(&tiny(4), dir.path(), 1).unwrap();
        assert_eq!(trainer.generation, 0);
        assert_eq!(read_config(dir.path()).unwrap(), tiny(4));
        assert_eq!(load(dir.path()).unwrap().generation, 0);
    }

    /// A config edited since the checkpoint was saved may change only what the run allows.
    #[test]
    fn an_edited_config_is_refused_outside_the_keys_a_run_may_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = RlTrainer::create(&tiny(4), dir.path(), 1).unwrap();
        trainer.step().unwrap();
        trainer.step().unwrap();
        trainer.save().unwrap();
        drop(trainer);
        let config_file = dir.path().join(CONFIG_FILE);
        std::fs::write(&config_file, RlConfig { generations: 1, ..tiny(4) }.to_toml().unwrap()).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.ends_with("config.toml: generations = 1 is below the 2 generations the run's checkpoint has done; expected at least 2"), "{err}");
        let lowered = RlConfig { outer_lr: 0.01, sigma: 0.05, generations: 9, ..tiny(4) };
        std::fs::write(&config_file, lowered.to_toml().unwrap()).unwrap();
        assert_eq!(load(dir.path()).unwrap().teacher.config, lowered);
        std::fs::write(&config_file, RlConfig { seed: 5, ..lowered }.to_toml().unwrap()).unwrap();
        let err = RlTrainer::resume(dir.path(), 1).err().unwrap().to_string();
        assert!(
            err.contains("config.toml: differs from the config its checkpoint was saved with in keys a run cannot change (seed 0 in its checkpoint, 5 here); put them back"),
            "{err}"
        );
    }

    /// The teacher's noise and initial parameters come from the checkpoint: an edited `seed`
    /// keeps them in a checkpoint of an older build that does not store its config, an edited
    /// size they depend on is refused, and so is a checkpoint of an older build that lacks them.
    #[test]
    fn the_checkpoint_holds_the_teachers_noise() {
        let dir = tempfile::tempdir().unwrap();
        let trainer = RlTrainer::create(&tiny(4), dir.path(), 1).unwrap();
        crate::checkpoint::tests::drop_saved_config(&dir.path().join(CHECKPOINT_FILE));
        let config_file = dir.path().join(CONFIG_FILE);
        let reseeded = RlConfig { seed: 5, ..tiny(4) };
        assert!(!EnvTeacher::new(&reseeded).0.noise().equal(&trainer.teacher.noise()), "another seed, other noise");
        std::fs::write(&config_file, reseeded.to_toml().unwrap()).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert!(loaded.teacher.noise().equal(&trainer.teacher.noise()));
        assert_eq!(loaded.teacher.initial, trainer.teacher.initial);
        std::fs::write(&config_file, RlConfig { batch_size: 7, ..reseeded }.to_toml().unwrap()).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("tensor `noise` is [4, 16, 4] Float, the config in config.toml implies [4, 7, 4]"),
            "{err}"
        );

        std::fs::write(&config_file, tiny(4).to_toml().unwrap()).unwrap();
        let file = dir.path().join(CHECKPOINT_FILE);
        let older: Vec<(String, Tensor)> =
            Tensor::read_safetensors(&file).unwrap().into_iter().filter(|(name, _)| name != "noise").collect();
        Tensor::write_safetensors(&older, &file).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("tensor `noise` missing: the checkpoint is from an older gtn"), "{err}");
    }

    #[test]
    fn load_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.ends_with(": holds no config.toml; expected a `gtn rl train` folder"), "{err}");
        // An image run in its folders is not offered as an RL run.
        let image_run = dir.path().join("gtn-full");
        std::fs::create_dir(&image_run).unwrap();
        std::fs::write(image_run.join(CONFIG_FILE), "dataset = \"mnist\"").unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.ends_with(": holds no config.toml; expected a `gtn rl train` folder"), "{err}");
        std::fs::remove_dir_all(&image_run).unwrap();
        RlTrainer::create(&tiny(4), dir.path(), 1).unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), RlConfig { generator_hidden: 5, ..tiny(4) }.to_toml().unwrap())
            .unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("(generator_hidden 16 in its checkpoint, 5 here)"), "{err}");
        crate::checkpoint::tests::drop_saved_config(&dir.path().join(CHECKPOINT_FILE));
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("checkpoint.safetensors: tensor `theta`") && err.contains("another config"), "{err}");
        std::fs::write(dir.path().join(CONFIG_FILE), tiny(4).to_toml().unwrap()).unwrap();
        let file = dir.path().join(CHECKPOINT_FILE);
        let poisoned: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .map(|(name, t)| match name.as_str() {
                "adam.v" => (name, t.full_like(f64::INFINITY)),
                _ => (name, t),
            })
            .collect();
        Tensor::write_safetensors(&poisoned, &file).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.ends_with("checkpoint.safetensors: NaN or infinite values in tensor `adam.v`"), "{err}");
    }
}
