//! Configuration of a training-environment run: the teacher, the ES outer loop, evaluation and
//! the real-environment baseline. Presets, overridable from TOML with unknown keys rejected.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Real tasks a teacher can be learned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EnvName {
    Cartpole,
}

/// What the teacher is optimised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// The real return of the trained policies, by evolution strategies.
    Es,
    /// Cross-entropy against a REINFORCE-trained reference policy's actions on real states, by
    /// the exact meta-gradient through the inner training (averaged over
    /// `policies_per_candidate` fresh policies per generation).
    Imitation,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Es => "es",
            Objective::Imitation => "imitation",
        }
    }
}

impl EnvName {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvName::Cartpole => "cartpole",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    pub env: EnvName,
    pub objective: Objective,
    /// T: supervised steps a fresh policy takes on the teacher's data.
    #[serde(deserialize_with = "crate::config::positive")]
    pub inner_steps: usize,
    /// B: synthetic observations per step.
    #[serde(deserialize_with = "crate::config::positive")]
    pub batch_size: usize,
    /// Generator: fixed per-sample noise of this size -> hidden layer -> observation + action logits.
    #[serde(deserialize_with = "crate::config::positive")]
    pub noise_dim: usize,
    #[serde(deserialize_with = "crate::config::positive")]
    pub generator_hidden: usize,
    /// Initial inner learning rate and momentum (learned per step, in log space).
    pub init_lr: f64,
    pub init_momentum: f64,
    /// Hidden widths of the fresh policies are drawn from [min, max).
    pub policy_width_min: i64,
    pub policy_width_max: i64,
    /// ES generations (outer iterations).
    #[serde(deserialize_with = "crate::config::positive")]
    pub generations: usize,
    /// Antithetic pairs per generation (the population is twice this).
    #[serde(deserialize_with = "crate::config::positive")]
    pub pairs: usize,
    /// Standard deviation of the parameter perturbations.
    pub sigma: f64,
    /// Adam on the ES gradient.
    pub outer_lr: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    /// Fitness of a candidate: mean greedy return of this many fresh policies trained on it ...
    #[serde(deserialize_with = "crate::config::positive")]
    pub policies_per_candidate: usize,
    /// ... each run for this many real episodes.
    #[serde(deserialize_with = "crate::config::positive")]
    pub episodes_per_policy: usize,
    /// Evaluation (`gtn rl eval`): fresh policies and episodes per policy.
    #[serde(deserialize_with = "crate::config::positive")]
    pub eval_policies: usize,
    #[serde(deserialize_with = "crate::config::positive")]
    pub eval_episodes: usize,
    /// Baseline: REINFORCE seeds and the real-environment step budget of each.
    #[serde(deserialize_with = "crate::config::positive")]
    pub baseline_seeds: usize,
    #[serde(deserialize_with = "crate::config::positive")]
    pub baseline_budget: usize,
    #[serde(deserialize_with = "crate::config::positive")]
    pub save_every: usize,
    pub seed: u64,
}

pub const PRESETS: [&str; 2] = ["cpu", "tiny"];

/// The widest layer a config may ask for: the noise, the generator's hidden layer, a policy's.
pub const MAX_WIDTH: usize = 4096;

/// The most values one tensor of a generation may hold (64 MiB of floats): the teacher's noise
/// `[T, B, noise_dim]` and the hidden activations of the generator and of a policy over the T
/// steps. An unbounded size would try to allocate whatever it is given, silently.
pub const MAX_VALUES: usize = 1 << 24;

/// The most values a generation's perturbation directions may hold (`pairs` x the teacher's
/// parameters, 4 GiB of floats), drawn before any candidate is evaluated.
pub const MAX_DIRECTION_VALUES: usize = 1 << 30;

/// The most real episodes a generation's candidate or an evaluation may draw, and the most
/// baseline runs: each gets its seeds before any runs, so an unbounded count would try to
/// allocate them all at once.
pub const MAX_TRIALS: usize = 1 << 20;

impl RlConfig {
    /// About two minutes on 2 CPU cores (see the README for the measured run).
    pub fn cpu() -> RlConfig {
        RlConfig {
            env: EnvName::Cartpole,
            objective: Objective::Es,
            inner_steps: 8,
            batch_size: 32,
            noise_dim: 8,
            generator_hidden: 32,
            init_lr: 0.5,
            init_momentum: 0.5,
            policy_width_min: 32,
            policy_width_max: 128,
            generations: 200,
            pairs: 24,
            sigma: 0.1,
            outer_lr: 0.05,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            policies_per_candidate: 4,
            episodes_per_policy: 2,
            eval_policies: 20,
            eval_episodes: 5,
            baseline_seeds: 5,
            baseline_budget: 200_000,
            save_every: 10,
            seed: 0,
        }
    }

    /// Seconds: for tests and smoke runs.
    pub fn tiny() -> RlConfig {
        RlConfig {
            inner_steps: 4,
            batch_size: 16,
            noise_dim: 4,
            generator_hidden: 16,
            policy_width_min: 8,
            policy_width_max: 32,
            generations: 15,
            pairs: 16,
            eval_policies: 8,
            eval_episodes: 2,
            baseline_seeds: 2,
            baseline_budget: 20_000,
            save_every: 5,
            ..RlConfig::cpu()
        }
    }

    pub fn preset(name: &str) -> Result<RlConfig> {
        match name {
            "cpu" => Ok(RlConfig::cpu()),
            "tiny" => Ok(RlConfig::tiny()),
            other => bail!("--preset {other}: unknown preset for `gtn rl`, expected one of {}", PRESETS.join(", ")),
        }
    }

    /// Keys a run's `config.toml` may change between its sessions: how the outer optimiser goes
    /// on from here (what a diverged run's error advises), how long the run is, and settings that
    /// do not change the teacher (evaluation, the baseline, how often it is saved). Loading its
    /// checkpoint refuses any other edit.
    pub const EDITABLE_IN_A_RUN: [&'static str; 8] = [
        "outer_lr",
        "sigma",
        "generations",
        "save_every",
        "eval_policies",
        "eval_episodes",
        "baseline_seeds",
        "baseline_budget",
    ];

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("config cannot be written as TOML")
    }

    pub fn from_toml(text: &str) -> Result<RlConfig> {
        let config: RlConfig = crate::config::parse_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies the keys of a TOML file on top of this config; an unknown key is an error.
    pub fn with_overrides(self, path: &Path) -> Result<RlConfig> {
        use crate::config::{apply_overrides, from_file, Config};
        let image = |text: &str| apply_overrides(&Config::cpu(), text).is_ok();
        let config = from_file(path, |text| apply_overrides(&self, text), image, crate::checkpoint::IMAGE_RUN)?;
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// What a new run's config must also hold, beyond [`RlConfig::validate`] (a stored run's
    /// config is read as it was written: a run started under an earlier build's bound still
    /// resumes and is evaluated). Imitation keeps every fresh policy's graph, its unroll and its
    /// forward over the reference's states, until the meta-gradient is taken: bounded here.
    pub fn check_new_run(&self) -> Result<()> {
        self.validate()?;
        if self.objective != Objective::Imitation {
            return Ok(());
        }
        let widest = [self.noise_dim, self.generator_hidden, self.policy_width_max as usize].into_iter().max();
        let width = widest.expect("three widths");
        let (t, b, states) = (self.inner_steps, self.batch_size, super::imitation::MAX_REFERENCE_STATES);
        // `validate` bounds t x b x width by MAX_VALUES and width by MAX_WIDTH: no overflow.
        let per_policy = (t * b + states) * width;
        let holds = format!(
            "each policy holds ({t} x {b} + {states}) x {width} activations until the meta-gradient, its unroll's and its forward's over up to {states} reference states"
        );
        if per_policy > MAX_VALUES {
            bail!(
                "config keys `inner_steps` x `batch_size` = {t} x {b} with `objective = \"imitation\"`: {holds}, over {MAX_VALUES} values for one policy; expected fewer steps, a smaller batch or narrower widths"
            );
        }
        if self.policies_per_candidate.checked_mul(per_policy).is_none_or(|n| n > MAX_VALUES) {
            bail!(
                "config key `policies_per_candidate` is {}, expected at most {} with `objective = \"imitation\"` ({holds}, at most {MAX_VALUES} values in all)",
                self.policies_per_candidate,
                MAX_VALUES / per_policy
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("inner_steps", self.inner_steps),
            ("batch_size", self.batch_size),
            ("noise_dim", self.noise_dim),
            ("generator_hidden", self.generator_hidden),
            ("generations", self.generations),
            ("pairs", self.pairs),
            ("policies_per_candidate", self.policies_per_candidate),
            ("episodes_per_policy", self.episodes_per_policy),
            ("eval_policies", self.eval_policies),
            ("eval_episodes", self.eval_episodes),
            ("baseline_seeds", self.baseline_seeds),
            ("baseline_budget", self.baseline_budget),
            ("save_every", self.save_every),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("config key `{key}` is 0, expected a positive integer");
            }
        }
        let rates = [
            ("init_lr", self.init_lr),
            ("init_momentum", self.init_momentum),
            ("sigma", self.sigma),
            ("outer_lr", self.outer_lr),
        ];
        for (key, value) in rates {
            crate::config::check_positive_f32(key, value, "")?;
        }
        if self.init_momentum >= 1.0 {
            bail!("config key `init_momentum` is {}, expected a value in (0, 1)", self.init_momentum);
        }
        for (key, beta) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("config key `{key}` is {beta}, expected a value in [0, 1)");
            }
        }
        if !(0 < self.policy_width_min && self.policy_width_min < self.policy_width_max) {
            bail!(
                "config keys `policy_width_min` = {} and `policy_width_max` = {}: expected 0 < min < max",
                self.policy_width_min,
                self.policy_width_max
            );
        }
        let widths = [
            ("noise_dim", self.noise_dim),
            ("generator_hidden", self.generator_hidden),
            ("policy_width_max", self.policy_width_max as usize),
        ];
        for (key, width) in widths {
            if width > MAX_WIDTH {
                bail!("config key `{key}` is {width}, expected at most {MAX_WIDTH}");
            }
        }
        let (key, width) = widths.into_iter().max_by_key(|&(_, w)| w).expect("three widths");
        let values = self.inner_steps.checked_mul(self.batch_size).and_then(|n| n.checked_mul(width));
        if values.is_none_or(|n| n > MAX_VALUES) {
            bail!(
                "config keys `inner_steps` x `batch_size` x `{key}` = {} x {} x {width}: the teacher's noise or a layer's activations over the T steps would hold more than {MAX_VALUES} values, expected at most that",
                self.inner_steps,
                self.batch_size
            );
        }
        let draws = [
            ("policies_per_candidate", self.policies_per_candidate, "episodes_per_policy", self.episodes_per_policy),
            ("eval_policies", self.eval_policies, "eval_episodes", self.eval_episodes),
        ];
        for (policies_key, policies, episodes_key, episodes) in draws {
            if policies.checked_mul(episodes).is_none_or(|n| n > MAX_TRIALS) {
                bail!(
                    "config keys `{policies_key}` x `{episodes_key}` = {policies} x {episodes}: more than {MAX_TRIALS} real episodes, expected at most that"
                );
            }
        }
        if self.baseline_seeds > MAX_TRIALS {
            bail!("config key `baseline_seeds` is {}, expected at most {MAX_TRIALS}", self.baseline_seeds);
        }
        let dim = super::teacher::param_dim(self);
        if self.pairs.checked_mul(dim).is_none_or(|n| n > MAX_DIRECTION_VALUES) {
            bail!(
                "config key `pairs` is {}, expected at most {} (a generation holds one direction over the teacher's {dim} parameters per pair, at most {MAX_DIRECTION_VALUES} values)",
                self.pairs,
                MAX_DIRECTION_VALUES / dim
            );
        }
        if self.seed > i64::MAX as u64 {
            bail!("config key `seed` is {}, expected at most {}", self.seed, i64::MAX);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tiny` with the keys of `text`, through a file as `--config` reads them.
    fn overridden(text: &str) -> Result<RlConfig> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        RlConfig::tiny().with_overrides(file.path())
    }

    #[test]
    fn presets_round_trip_and_bad_keys_are_named() {
        for name in PRESETS {
            let c = RlConfig::preset(name).unwrap();
            assert_eq!(RlConfig::from_toml(&c.to_toml().unwrap()).unwrap(), c, "{name}");
        }
        let err = RlConfig::preset("paper").unwrap_err().to_string();
        assert_eq!(err, "--preset paper: unknown preset for `gtn rl`, expected one of cpu, tiny");
        let c = overridden("pairs = 3\nsigma = 0.1").unwrap();
        assert_eq!((c.pairs, c.sigma), (3, 0.1));
        let err = overridden("paris = 3").unwrap_err().to_string();
        assert!(err.contains("unknown field `paris`"), "{err}");
        let err = overridden("env = \"pendulum\"").unwrap_err().to_string();
        assert!(err.contains("pendulum"), "{err}");
        let c = overridden("objective = \"imitation\"").unwrap();
        assert_eq!(c.objective, Objective::Imitation);
        let err = overridden("sigma = 0.0").unwrap_err().to_string();
        assert!(err.ends_with(": config key `sigma` is 0, expected a positive number"), "{err}");
        for value in ["0", "-5"] {
            let err = overridden(&format!("generations = {value}")).unwrap_err().to_string();
            let expected =
                format!("line 1, key `generations`: invalid value: integer `{value}`, expected a positive integer");
            assert!(err.ends_with(&expected), "{err}");
        }
        // Finite as f64, infinite in the float32 teacher: its first generation would be NaN.
        let err = overridden("init_lr = 1e60").unwrap_err().to_string();
        assert!(
            err.ends_with("`init_lr` is 1e60, expected a positive number from 1.18e-38 to 3.40e38 (float32's range)"),
            "{err}"
        );
        let err = overridden("policy_width_max = 8").unwrap_err().to_string();
        assert!(err.contains("`policy_width_min` = 8 and `policy_width_max` = 8"), "{err}");
    }

    /// Momentum at or above 1 makes the inner SGD diverge, and sizes have an upper bound, so a
    /// typo is an error naming the key rather than an attempt to allocate gigabytes.
    #[test]
    fn momentum_below_one_and_bounded_sizes() {
        let err = |c: RlConfig| c.validate().unwrap_err().to_string();
        assert_eq!(
            err(RlConfig { init_momentum: 1.5, ..RlConfig::cpu() }),
            "config key `init_momentum` is 1.5, expected a value in (0, 1)"
        );
        assert!(RlConfig { init_momentum: 0.99, ..RlConfig::cpu() }.validate().is_ok());
        assert_eq!(
            err(RlConfig { batch_size: 4_000_000_000, ..RlConfig::cpu() }),
            "config keys `inner_steps` x `batch_size` x `policy_width_max` = 8 x 4000000000 x 128: the teacher's noise or a layer's activations over the T steps would hold more than 16777216 values, expected at most that"
        );
        let wide_noise = RlConfig { inner_steps: 64, batch_size: 256, noise_dim: 1025, ..RlConfig::cpu() };
        assert!(err(wide_noise).contains("`inner_steps` x `batch_size` x `noise_dim` = 64 x 256 x 1025"));
        let at_the_cap = RlConfig { inner_steps: 64, batch_size: 256, noise_dim: 1024, ..RlConfig::cpu() };
        assert!(at_the_cap.validate().is_ok(), "64 x 256 x 1024 = 2^24");
        let overflowing = RlConfig { inner_steps: usize::MAX, batch_size: usize::MAX, ..RlConfig::cpu() };
        assert!(err(overflowing).contains("would hold more than 16777216 values"));
        for (key, config) in [
            ("policy_width_max", RlConfig { policy_width_max: 4097, ..RlConfig::cpu() }),
            ("generator_hidden", RlConfig { generator_hidden: 4097, ..RlConfig::cpu() }),
            ("noise_dim", RlConfig { noise_dim: 4097, batch_size: 1, ..RlConfig::cpu() }),
        ] {
            assert_eq!(err(config), format!("config key `{key}` is 4097, expected at most 4096"));
        }
        assert!(RlConfig { policy_width_max: 4096, batch_size: 16, ..RlConfig::cpu() }.validate().is_ok());
        let most_pairs = MAX_DIRECTION_VALUES / crate::rl::teacher::param_dim(&RlConfig::cpu());
        assert!(RlConfig { pairs: most_pairs, ..RlConfig::cpu() }.validate().is_ok());
        let too_many = err(RlConfig { pairs: most_pairs + 1, ..RlConfig::cpu() });
        assert!(
            too_many.starts_with(&format!("config key `pairs` is {}, expected at most {most_pairs} (", most_pairs + 1)),
            "{too_many}"
        );
        assert!(err(RlConfig { pairs: usize::MAX, ..RlConfig::cpu() }).starts_with("config key `pairs`"));

        assert_eq!(
            err(RlConfig { eval_policies: 1 << 20, eval_episodes: 2, ..RlConfig::cpu() }),
            "config keys `eval_policies` x `eval_episodes` = 1048576 x 2: more than 1048576 real episodes, expected at most that"
        );
        assert!(RlConfig { eval_policies: 1 << 20, eval_episodes: 1, ..RlConfig::cpu() }.validate().is_ok());
        let overflowing = RlConfig { policies_per_candidate: usize::MAX, episodes_per_policy: 2, ..RlConfig::cpu() };
        assert!(err(overflowing).starts_with("config keys `policies_per_candidate` x `episodes_per_policy` ="));
        assert_eq!(
            err(RlConfig { baseline_seeds: 1_000_000_000_000, ..RlConfig::cpu() }),
            "config key `baseline_seeds` is 1000000000000, expected at most 1048576"
        );
        // cpu: each fresh policy holds (8 x 32 + 2000) x 128 activations, 58 of them under 2^24.
        let imitation = RlConfig { objective: Objective::Imitation, episodes_per_policy: 1, ..RlConfig::cpu() };
        let new_run = |c: RlConfig| c.check_new_run().unwrap_err().to_string();
        assert!(RlConfig { policies_per_candidate: 58, ..imitation.clone() }.check_new_run().is_ok());
        let too_many = RlConfig { policies_per_candidate: 59, ..imitation.clone() };
        assert!(
            new_run(too_many.clone()).starts_with(
                "config key `policies_per_candidate` is 59, expected at most 58 with `objective = \"imitation\"` (each policy holds (8 x 32 + 2000) x 128 activations"
            ),
            "{}",
            new_run(too_many.clone())
        );
        // A stored run's config, started under an earlier bound, is still read.
        assert!(too_many.validate().is_ok());
        let es = RlConfig { policies_per_candidate: 59, episodes_per_policy: 1, ..RlConfig::cpu() };
        assert!(es.check_new_run().is_ok());
        // One policy alone over the bound: no count of policies would do, and the error says so.
        let wide = RlConfig { policy_width_max: 4096, inner_steps: 1, batch_size: 4096, ..imitation };
        assert!(wide.validate().is_ok(), "1 x 4096 x 4096 = 2^24");
        assert_eq!(
            new_run(wide),
            "config keys `inner_steps` x `batch_size` = 1 x 4096 with `objective = \"imitation\"`: each policy holds (1 x 4096 + 2000) x 4096 activations until the meta-gradient, its unroll's and its forward's over up to 2000 reference states, over 16777216 values for one policy; expected fewer steps, a smaller batch or narrower widths"
        );
    }
}
