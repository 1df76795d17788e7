//! Training environments: the GTN idea for reinforcement learning. A teacher generates synthetic
//! CartPole observations with target actions; a fresh random-width policy is trained on them for
//! T supervised steps and then scored by its return on the real CartPole. The return is not
//! differentiable, so the teacher is learned with evolution strategies. A REINFORCE baseline on
//! the real environment says how many real steps the same return costs without a teacher.

pub mod cartpole;
pub mod config;
pub mod es;
pub mod imitation;
pub mod policy;
pub mod reinforce;
pub mod teacher;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

pub use config::{EnvName, Objective, RlConfig};
pub use train::RlTrainer;

use crate::eval::{mean_std, median};
use crate::text::{count, mean_pm_std, spread};
use reinforce::ReinforceConfig;
use teacher::{EnvTeacher, Returns, Trial};

/// What a random stream of an RL run is drawn for. Each use of a seed gets its own stream (and
/// the generations theirs, `meta::iteration_rng`), so no two of them share draws: with
/// `StdRng::seed_from_u64(seed)` for the teacher, seed 0's teacher noise was generation 0's ES
/// directions, and evaluations at seeds S and S + 1 shared all but one baseline run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Teacher = 1,
    Reference = 2,
    /// `rl eval`'s fresh policies and episodes.
    Eval = 3,
    /// `rl eval`'s REINFORCE runs: apart from the policies', so that a run's edited
    /// `eval_policies` or `eval_episodes` leave the baseline's runs as they were.
    Baseline = 4,
}

/// The stream of `seed` for `purpose`: a ChaCha key of the seed and the purpose, distinct for
/// every pair (the keys `seed_from_u64` makes are pseudo-random, never this shape in practice).
pub(crate) fn stream(seed: u64, purpose: Stream) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
    StdRng::from_seed(key)
}

/// Options of `gtn rl train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub env: EnvName,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub preset: String,
    pub config: Option<PathBuf>,
    pub seed: Option<u64>,
    /// Worker threads (default: every available core).
    pub threads: Option<usize>,
}

/// `gtn rl train`: a new run in `out`, or the continuation of `resume`.
pub fn train_command(options: &TrainOptions) -> Result<RlTrainer> {
    let threads = options.threads.unwrap_or_else(es::default_threads).max(1);
    let mut trainer = match (&options.resume, &options.out) {
        (Some(dir), _) => {
            let t = RlTrainer::resume(dir, threads)?;
            crate::progress::announce_resumed(dir, t.generation, t.config().generations, "generation");
            t
        }
        (None, Some(out)) => {
            let mut config = RlConfig::preset(&options.preset)?;
            if let Some(path) = &options.config {
                config = config.with_overrides(path)?;
            }
            config.env = options.env;
            config.seed = options.seed.unwrap_or(config.seed);
            config.validate()?;
            let t = RlTrainer::open(&config, out, threads)?;
            crate::progress::announce_reopened(out, t.generation, t.config().generations, "generation");
            t
        }
        (None, None) => bail!("--out DIR or --resume DIR is required"),
    };
    let c = trainer.config().clone();
    let (objective, env) = (c.objective.as_str(), c.env.as_str());
    let (t, b, dim) = (c.inner_steps, c.batch_size, trainer.teacher.dim());
    // Not for a complete run, which the line above said is complete: nothing trains.
    let training = trainer.generation < c.generations;
    // Rates in Rust's debug form: 0.05 as written, 1e30 not spelt out in 31 digits.
    match c.objective {
        _ if !training => {}
        Objective::Es => crate::outln!(
            "{objective} on {env}: T={t} x B={b}, {dim} parameters, population {} ({}, sigma {:?}), {} x {} per candidate, Adam {:?}, {}, {}",
            2 * c.pairs,
            count(c.pairs, "pair"),
            c.sigma,
            count(c.policies_per_candidate, "policy"),
            count(c.episodes_per_policy, "episode"),
            c.outer_lr,
            count(c.generations, "generation"),
            count(threads, "thread")
        ),
        // The meta-loss is the cross-entropy on the reference's states: no population, sigma or
        // real episodes, and log.csv's score column is that loss.
        Objective::Imitation => crate::outln!(
            "{objective} on {env}: T={t} x B={b}, {dim} parameters, exact meta-gradient of the cross-entropy to the reference's actions over {} per generation, Adam {:?}, {}, {}",
            count(c.policies_per_candidate, "fresh policy"),
            c.outer_lr,
            count(c.generations, "generation"),
            count(threads, "thread")
        ),
    }
    if let Some(r) = trainer.reference().filter(|_| training) {
        crate::outln!(
            "imitation reference: REINFORCE, greedy return {:.1} after {} real steps; {} real states",
            r.greedy_return,
            r.real_steps,
            r.actions.size()[0]
        );
        if let Some(warning) = r.warning() {
            tracing::warn!("{warning}");
        }
    }
    let (start, before) = (std::time::Instant::now(), trainer.generation);
    crate::interrupt::graceful(crate::interrupt::Unit::Generation, || trainer.run(true))?;
    if trainer.generation > before {
        let dir = options.resume.as_ref().or(options.out.as_ref()).expect("checked above");
        crate::outln!("done in {}; checkpoint in {}", crate::text::duration(start.elapsed()), dir.display());
    }
    Ok(trainer)
}

/// What `gtn rl eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RlEvalReport {
    pub env: EnvName,
    pub generation: usize,
    /// The run's length: more than `generation` for a run stopped early or still training.
    pub generations: usize,
    pub inner_steps: usize,
    /// Synthetic observations a policy is trained on (T x B).
    pub synthetic_samples: usize,
    pub policies: usize,
    pub episodes_per_policy: usize,
    /// Greedy real return of fresh random-width policies trained only on the teacher's data:
    /// mean and sample standard deviation (n - 1, as everywhere in gtn) over all policies and
    /// episodes; `None` (JSON null) for one: it has no spread.
    pub real_return_mean: f64,
    pub real_return_std: Option<f64>,
    /// The same for the teacher the run started from.
    pub untrained_return_mean: f64,
    pub untrained_return_std: Option<f64>,
    /// Policies whose training on the teacher's data (the untrained teacher's) came out NaN or
    /// infinite; they are scored as they act (a NaN policy always pushes left).
    pub diverged_policies: usize,
    pub untrained_diverged_policies: usize,
    pub baseline: &'static str,
    /// Real environment steps each REINFORCE seed needed for a greedy return of at least
    /// `real_return_mean` (null: not within `baseline_budget_steps`).
    pub baseline_steps_to_match: Vec<Option<usize>>,
    /// Mean and median over the seeds that reached it (REINFORCE's runs are heavy-tailed: one
    /// slow seed moves the mean far more than the median).
    pub baseline_steps_to_match_mean: Option<f64>,
    pub baseline_steps_to_match_median: Option<f64>,
    pub baseline_reached: usize,
    pub baseline_budget_steps: usize,
    /// Real environment steps the teacher cost (ES: meta-training's episodes; imitation: its
    /// reference's), which its policies' 0 real steps each amortise; null for a checkpoint of a
    /// build before they were counted.
    pub teacher_real_steps: Option<u64>,
}

/// What `gtn rl eval --seed seed` draws: the fresh policies and episodes that score the teacher,
/// and one seed per REINFORCE baseline run.
fn eval_draws(c: &RlConfig, seed: u64) -> (Vec<Trial>, Vec<u64>) {
    let trials = teacher::trials(c, &mut stream(seed, Stream::Eval), c.eval_policies, c.eval_episodes);
    let mut baseline = stream(seed, Stream::Baseline);
    (trials, (0..c.baseline_seeds).map(|_| baseline.gen()).collect())
}

/// Greedy real returns of the policies of `trials` trained on `theta`, in parallel.
pub fn real_returns(teacher: &EnvTeacher, theta: &[f32], trials: &[Trial], threads: usize) -> Returns {
    let each = es::evaluate_parallel(trials.len(), threads, |i| teacher.returns(theta, &trials[i..=i]));
    each.into_iter().fold(Returns::default(), Returns::join)
}

/// Scores the teacher in `dir` on fresh draws (independent of the ones it was trained on), then
/// runs the REINFORCE baseline until it matches that return.
pub fn evaluate(dir: &Path, seed: u64, threads: usize) -> Result<RlEvalReport> {
    let train::Checkpoint { teacher, theta, generation, real_steps, .. } = train::load(dir)?;
    let c = teacher.config.clone();
    let (trials, baseline_seeds) = eval_draws(&c, seed);
    let theta = Vec::<f32>::try_from(&theta).expect("a float vector");
    let trained = real_returns(&teacher, &theta, &trials, threads);
    let untrained = real_returns(&teacher, &teacher.initial, &trials, threads);
    let (mean, std) = mean_std(&trained.episodes);
    let (untrained_mean, untrained_std) = mean_std(&untrained.episodes);
    let baseline = ReinforceConfig::default();
    let steps = es::evaluate_parallel(c.baseline_seeds, threads, |s| {
        reinforce::steps_to_reach(&reinforce::train(&baseline, baseline_seeds[s], c.baseline_budget, mean).0, mean)
    });
    let reached: Vec<f64> = steps.iter().flatten().map(|&s| s as f64).collect();
    Ok(RlEvalReport {
        env: c.env,
        generation,
        generations: c.generations,
        inner_steps: c.inner_steps,
        synthetic_samples: c.inner_steps * c.batch_size,
        policies: c.eval_policies,
        episodes_per_policy: c.eval_episodes,
        real_return_mean: mean,
        real_return_std: spread(std, c.eval_policies * c.eval_episodes),
        untrained_return_mean: untrained_mean,
        untrained_return_std: spread(untrained_std, c.eval_policies * c.eval_episodes),
        diverged_policies: trained.diverged,
        untrained_diverged_policies: untrained.diverged,
        baseline: "reinforce",
        baseline_steps_to_match_mean: (!reached.is_empty()).then(|| mean_std(&reached).0),
        baseline_steps_to_match_median: (!reached.is_empty()).then(|| median(&reached)),
        baseline_reached: reached.len(),
        baseline_steps_to_match: steps,
        baseline_budget_steps: c.baseline_budget,
        teacher_real_steps: real_steps,
    })
}

impl RlEvalReport {
    pub fn table(&self) -> String {
        let baseline = match (self.baseline_steps_to_match_mean, self.baseline_steps_to_match_median) {
            (Some(m), Some(median)) => {
                let seeds = count(self.baseline_steps_to_match.len(), "seed");
                let within = self.baseline_budget_steps;
                match self.baseline_reached {
                    1 => format!("{m:.0} real steps (the one of {seeds} that reached it within {within})"),
                    n => format!("{m:.0} real steps (mean; median {median:.0}; of the {n} of {seeds} that reached it within {within})"),
                }
            }
            _ => format!(
                "not reached within {} real steps by any of {}",
                self.baseline_budget_steps,
                count(self.baseline_steps_to_match.len(), "seed")
            ),
        };
        let cost = self.teacher_real_steps.map_or("not counted (a checkpoint of an older gtn)".into(), |n| {
            format!("{n} real steps, once (a policy trained on its data takes none)")
        });
        let after = match self.generation < self.generations {
            true => format!("{} of {} (training unfinished)", self.generation, count(self.generations, "generation")),
            false => count(self.generation, "generation"),
        };
        let returns = |mean: f64, std: Option<f64>| mean_pm_std(mean, std, |x| format!("{x:.1}"));
        let diverged = match (self.diverged_policies, self.untrained_diverged_policies) {
            (0, 0) => String::new(),
            (n, untrained) => format!(
                "\ndiverged in training       {n} of {} (untrained teacher: {untrained}): NaN or infinite, \
                 each scored as it acts (a NaN policy always pushes left)",
                count(self.policies, "fresh policy")
            ),
        };
        format!(
            "teacher after {after}: {} x {}, trained {} steps on {} synthetic observations\n\
             real return (greedy)       {}\n\
             same, untrained teacher    {}\n\
             REINFORCE to match it      {baseline}\n\
             the teacher's real cost    {cost}{diverged}",
            count(self.policies, "fresh policy"),
            count(self.episodes_per_policy, "episode"),
            self.inner_steps,
            self.synthetic_samples,
            returns(self.real_return_mean, self.real_return_std),
            returns(self.untrained_return_mean, self.untrained_return_std)
        )
    }
}

/// `gtn rl eval`: prints the report as a table or one JSON object.
pub fn eval_command(dir: &Path, seed: u64, threads: Option<usize>, json: bool) -> Result<RlEvalReport> {
    let report = evaluate(dir, seed, threads.unwrap_or_else(es::default_threads).max(1))?;
    if json {
        crate::outln!("{}", serde_json::to_string(&report)?);
    } else {
        crate::outln!("{}\n{}", dir.display(), report.table());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_at_two_seeds_share_no_draws() {
        let c = RlConfig::cpu();
        let (trials0, seeds0) = eval_draws(&c, 0);
        let (trials1, seeds1) = eval_draws(&c, 1);
        assert_eq!((trials0.len(), seeds0.len()), (c.eval_policies, c.baseline_seeds));
        assert_eq!(eval_draws(&c, 0), (trials0.clone(), seeds0.clone()), "deterministic in the seed");
        assert!(seeds0.iter().all(|s| !seeds1.contains(s)), "baseline seeds {seeds0:?} and {seeds1:?}");
        let inits = |t: &[Trial]| t.iter().map(|t| t.init_seed).collect::<Vec<_>>();
        assert!(inits(&trials0).iter().all(|s| !inits(&trials1).contains(s)));
        // The baseline's runs do not move with the number of policies and episodes scored.
        let fewer = RlConfig { eval_policies: 3, eval_episodes: 1, ..c.clone() };
        assert_eq!(eval_draws(&fewer, 0).1, seeds0);
    }

    /// Policies trained to NaN are counted and named in the report; a teacher that trains
    /// finite ones reports none and no such line.
    #[test]
    fn evaluation_counts_diverged_policies() {
        let tiny =
            RlConfig { generations: 1, eval_policies: 3, eval_episodes: 1, baseline_seeds: 1, ..RlConfig::tiny() };
        let dir = tempfile::tempdir().unwrap();
        train::RlTrainer::create(&RlConfig { init_lr: 1e30, ..tiny.clone() }, dir.path(), 2).unwrap();
        let report = evaluate(dir.path(), 0, 2).unwrap();
        assert_eq!((report.diverged_policies, report.untrained_diverged_policies), (3, 3));
        let table = report.table();
        assert!(table.ends_with("diverged in training       3 of 3 fresh policies (untrained teacher: 3): NaN or infinite, each scored as it acts (a NaN policy always pushes left)"), "{table}");

        let dir = tempfile::tempdir().unwrap();
        train::RlTrainer::create(&tiny, dir.path(), 2).unwrap();
        let report = evaluate(dir.path(), 0, 2).unwrap();
        assert_eq!((report.diverged_policies, report.untrained_diverged_policies), (0, 0));
        assert!(!report.table().contains("diverged"), "{}", report.table());
    }

    #[test]
    fn each_use_of_a_seed_has_its_own_stream() {
        let first = |mut rng: StdRng| (0..4).map(|_| rng.gen::<u64>()).collect::<Vec<_>>();
        let uses = [Stream::Teacher, Stream::Reference, Stream::Eval, Stream::Baseline];
        let mut draws: Vec<Vec<u64>> = [0, 1].iter().flat_map(|&s| uses.map(|u| first(stream(s, u)))).collect();
        draws.extend((0..3).map(|g| first(crate::meta::iteration_rng(0, g))));
        for (i, a) in draws.iter().enumerate() {
            assert!(draws[i + 1..].iter().all(|b| a != b), "stream {i} repeats another");
        }
    }
}
