//! Meta-training configuration: named presets, overridable key by key from a TOML file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::curriculum::CurriculumKind;
use crate::data::DatasetName;
use crate::generator::GeneratorConfig;
use crate::learner::{BnEval, LearnerKind};
use crate::meta::IntermediateLossForm;
use crate::teacher::TeacherKind;

/// The flags of the commands that build a config from a preset (`train`, `compare`, `bench`):
/// the `--config` file's keys replace the preset's, then each given flag replaces its key;
/// `None` keeps the preset's or the file's.
#[derive(Debug, Default)]
pub struct Flags<'a> {
    /// `--config`: a TOML file of keys.
    pub config: Option<&'a Path>,
    /// Not a flag: set by the command (`baseline distill` learns pixels).
    pub teacher: Option<TeacherKind>,
    pub dataset: Option<DatasetName>,
    pub learner: Option<LearnerKind>,
    pub meta_iters: Option<usize>,
    pub inner_steps: Option<usize>,
    pub seed: Option<u64>,
    pub checkpoint_every: Option<usize>,
    pub data_dir: Option<&'a Path>,
}

impl Flags<'_> {
    /// `error`, about the config these made, after what made it beyond the preset: the
    /// `--config` file and the given flags a check can refuse, as typed (`f.toml with --steps 8`).
    fn name_in(&self, error: anyhow::Error) -> anyhow::Error {
        let given: Vec<String> = [
            self.dataset.map(|d| format!("--dataset {d}")),
            self.learner.map(|l| format!("--learner {l}")),
            self.meta_iters.map(|n| format!("--meta-iters {n}")),
            self.inner_steps.map(|n| format!("--steps {n}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let given = given.join(" ");
        match (self.config, given.is_empty()) {
            (None, true) => error,
            (Some(file), true) => anyhow::anyhow!("{}: {error}", file.display()),
            (None, false) => anyhow::anyhow!("{given}: {error}"),
            (Some(file), false) => anyhow::anyhow!("{} with {given}: {error}", file.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataset: DatasetName,
    /// Folder with the IDX files; `data/<dataset>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Training images held out for validation (the rest feed the meta-loss).
    pub valid_size: usize,
    /// Learners trained in the inner loop during meta-training.
    pub learner: LearnerKind,
    /// Which batch-norm statistics score a trained learner, in the meta-loss and in evaluation:
    /// `batch` (the scored batch's own) or `train` (its last training batch's, as the reference).
    #[serde(default)]
    pub bn_eval: BnEval,
    /// T: inner steps per meta-iteration.
    #[serde(deserialize_with = "positive")]
    pub inner_steps: usize,
    /// B: synthetic images per inner step.
    #[serde(deserialize_with = "positive")]
    pub batch_size: usize,
    /// `generator` (GTN) or `pixels` (dataset distillation: the T*B images are learned directly).
    #[serde(default)]
    pub teacher: TeacherKind,
    pub curriculum: CurriculumKind,
    /// Learn a soft label (logits over classes) for every synthetic sample.
    pub soft_labels: bool,
    /// Initial inner learning rate and momentum (both learned per step, in log space).
    pub init_lr: f64,
    pub init_momentum: f64,
    #[serde(deserialize_with = "positive")]
    pub meta_iters: usize,
    /// The `meta_iters` asked for, when a time budget (`--budget-minutes`) lowered it: how a
    /// repeated budgeted command recognises the run as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_iters_requested: Option<usize>,
    /// Outer Adam: learning rate, decayed by a cosine to `final_lr_fraction` of it.
    pub outer_lr: f64,
    pub final_lr_fraction: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    /// Adam's epsilon (the reference's CIFAR-10 config sets 1e-5); configs of builds before it
    /// was a key trained with PyTorch's default, 1e-8.
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    /// Global norm the meta-gradient is clipped to.
    pub grad_clip: f64,
    /// Real training images in the meta-loss batch.
    #[serde(deserialize_with = "positive")]
    pub meta_batch: usize,
    /// Random 4-pixel-padded crops and horizontal flips of the real meta-loss batch.
    pub augment: bool,
    /// Add a real-data loss every k inner steps to the meta-loss (0: final loss only).
    pub intermediate_loss_every: usize,
    /// How those losses enter it: `mean-shared-batch` (averaged with the final loss, on its real
    /// batch) or `sum-fresh-batches` (summed, each on a fresh real batch: the reference's form;
    /// the meta-loss logged and its gradient then grow with the number of terms).
    #[serde(default)]
    pub intermediate_loss_form: IntermediateLossForm,
    /// Save `checkpoint.safetensors` every this many meta-iterations.
    #[serde(deserialize_with = "positive")]
    pub save_every: usize,
    /// Gradient checkpointing of the unroll: keep the learner state every k inner steps and
    /// recompute each block during the meta-backward (0, or k >= T: keep the whole unroll in
    /// memory; see [`Config::checkpoints_unroll`]).
    pub checkpoint_every: usize,
    pub seed: u64,
    pub generator: GeneratorConfig,
}

/// A count or width a config key must hold above 0, read from TOML: `0` and `-5` are both told
/// "expected a positive integer", as `validate` tells 0 (serde's own words for `usize` would
/// allow 0, and for `i64` any sign).
pub(crate) fn positive<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct Positive<T>(std::marker::PhantomData<T>);
    impl<T: TryFrom<u64>> serde::de::Visitor<'_> for Positive<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a positive integer")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            let positive = u64::try_from(v).ok().filter(|&n| n > 0).and_then(|n| T::try_from(n).ok());
            positive.ok_or_else(|| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            let positive = Some(v).filter(|&n| n > 0).and_then(|n| T::try_from(n).ok());
            positive.ok_or_else(|| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
    }
    deserializer.deserialize_u64(Positive(std::marker::PhantomData))
}

fn default_adam_eps() -> f64 {
    crate::optim::DEFAULT_EPS
}

pub const PRESETS: [&str; 5] = ["paper", "cpu", "tiny", "paper-cifar10", "cpu-cifar10"];

impl Config {
    /// The reference MNIST configuration (uber-research/GTN `cgtn.json`, scored as its code
    /// scores: batch norm with the last training batch's statistics): GPU scale.
    pub fn paper() -> Config {
        Config {
            dataset: DatasetName::Mnist,
            data_dir: None,
            valid_size: 10_000,
            learner: LearnerKind::BaseFc,
            bn_eval: BnEval::Train,
            inner_steps: 32,
            batch_size: 128,
            teacher: TeacherKind::Generator,
            curriculum: CurriculumKind::Full,
            soft_labels: false,
            init_lr: 0.02,
            init_momentum: 0.5,
            meta_iters: 2_000,
            meta_iters_requested: None,
            outer_lr: 0.02,
            final_lr_fraction: 0.1,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: crate::optim::DEFAULT_EPS,
            grad_clip: 10.0,
            meta_batch: 128,
            augment: false,
            intermediate_loss_every: 0,
            intermediate_loss_form: IntermediateLossForm::MeanSharedBatch,
            save_every: 50,
            checkpoint_every: 0,
            seed: crate::data::DEFAULT_SPLIT_SEED,
            generator: GeneratorConfig::REFERENCE,
        }
    }

    /// The reference configuration cut to what about 30 minutes on 2 CPU cores buys: ~4.7 s per
    /// meta-iteration, so 360 iterations (the cosine decay spans those), with the meta-loss taken
    /// on 512 real images instead of 128: a less noisy meta-gradient for a few percent more time,
    /// which matters when there are only a few hundred steps. See the README for how it was chosen.
    /// Learners are scored with the scored batch's batch-norm statistics, not the reference's
    /// (the last training batch's): every CPU result in the README was measured so, and the README
    /// gives both for this preset ("Batch norm at scoring time").
    pub fn cpu() -> Config {
        Config { meta_iters: 360, meta_batch: 512, save_every: 10, bn_eval: BnEval::Batch, ..Config::paper() }
    }

    /// Seconds: for tests and smoke runs.
    pub fn tiny() -> Config {
        Config {
            learner: LearnerKind::Mlp,
            inner_steps: 4,
            batch_size: 20,
            meta_iters: 8,
            meta_batch: 64,
            valid_size: 112,
            save_every: 4,
            generator: GeneratorConfig { noise_dim: 16, fc_width: 64, conv1_channels: 8, conv2_channels: 8 },
            bn_eval: BnEval::Batch,
            ..Config::paper()
        }
    }

    /// The reference CIFAR-10 configuration (uber-research/GTN `architecture_search.json`: T = 128
    /// inner steps of 128, the reference CIFAR learner, augmented real batches of 256, outer Adam
    /// 0.004 with beta2 0.9 and epsilon 1e-5, a real-data loss after every 16th step summed on
    /// fresh batches); GPU scale. Gradient checkpointing every 16 steps keeps the unroll in memory.
    pub fn paper_cifar10() -> Config {
        Config {
            dataset: DatasetName::Cifar10,
            valid_size: DatasetName::Cifar10.default_valid_size(),
            learner: LearnerKind::CifarCnn,
            inner_steps: 128,
            outer_lr: 0.004,
            adam_beta2: 0.9,
            adam_eps: 1e-5,
            meta_batch: 256,
            augment: true,
            intermediate_loss_every: 16,
            intermediate_loss_form: IntermediateLossForm::SumFreshBatches,
            checkpoint_every: 16,
            ..Config::paper()
        }
    }

    /// CIFAR-10 cut for 2 CPU cores: T = 16 inner steps of 64 images, 100 meta-iterations, the
    /// intermediate losses as many and as evenly spaced as the reference's (every 2nd step);
    /// scored as the reference, like `paper-cifar10` (no CPU result to keep comparable).
    pub fn cpu_cifar10() -> Config {
        Config {
            inner_steps: 16,
            batch_size: 64,
            meta_iters: 100,
            intermediate_loss_every: 2,
            save_every: 10,
            checkpoint_every: 0,
            ..Config::paper_cifar10()
        }
    }

    pub fn preset(name: &str) -> Result<Config> {
        match name {
            "paper" => Ok(Config::paper()),
            "cpu" => Ok(Config::cpu()),
            "tiny" => Ok(Config::tiny()),
            "paper-cifar10" => Ok(Config::paper_cifar10()),
            "cpu-cifar10" => Ok(Config::cpu_cifar10()),
            other => bail!("--preset {other}: unknown preset, expected one of {}", PRESETS.join(", ")),
        }
    }

    /// The preset `name` with the command line's `flags` applied (its `--config` file first),
    /// validated.
    /// A command's own teacher (`baseline distill`'s pixels) is not silently put over a file's.
    pub fn from_flags(name: &str, flags: &Flags) -> Result<Config> {
        let mut preset = Config::preset(name)?;
        // The command's teacher before the file's keys, so that a file's own `teacher` shows.
        preset.teacher = flags.teacher.unwrap_or(preset.teacher);
        let config = match flags.config {
            Some(file) => preset.with_overrides(file)?,
            None => preset,
        };
        if let (Some(wanted), Some(file)) = (flags.teacher, flags.config) {
            if config.teacher != wanted {
                bail!(
                    "{}: config key `teacher` is \"{}\", but this command trains a {wanted} teacher; expected \"{wanted}\" or no `teacher` key (`gtn train --config` trains the file's)",
                    file.display(),
                    config.teacher
                );
            }
        }
        config.with_flags(flags)
    }

    /// This config with the command line's `flags` applied (but for `--config`), validated; an
    /// error names the `--config` file and the flags, as the config is theirs.
    pub fn with_flags(mut self, flags: &Flags) -> Result<Config> {
        self.teacher = flags.teacher.unwrap_or(self.teacher);
        if let Some(dataset) = flags.dataset {
            // What the --config file sets itself stays as it says: the switch changes the preset's
            // choices only (a file's `augment = true` is then refused, not dropped).
            let (valid_size, augment) = (self.valid_size, self.augment);
            self.set_dataset(dataset);
            if let Some(file) = flags.config {
                if sets_key(file, "valid_size") {
                    self.valid_size = valid_size;
                }
                if sets_key(file, "augment") {
                    self.augment = augment;
                }
            }
        }
        self.learner = flags.learner.unwrap_or(self.learner);
        self.meta_iters = flags.meta_iters.unwrap_or(self.meta_iters);
        self.inner_steps = flags.inner_steps.unwrap_or(self.inner_steps);
        self.seed = flags.seed.unwrap_or(self.seed);
        self.checkpoint_every = flags.checkpoint_every.unwrap_or(self.checkpoint_every);
        let given = self.data_dir.clone();
        self.set_data_dir(flags.data_dir)?;
        // A `--config` file's folder that is not there is named with the file: the loader's
        // error would name the folder alone, made absolute.
        if let (None, Some(dir), Some(given), Some(file)) = (flags.data_dir, &self.data_dir, given, flags.config) {
            if !dir.try_exists().unwrap_or(true) {
                let from = match given.is_relative() {
                    true => format!("`{}`, from the current folder, leads to {}", given.display(), dir.display()),
                    false => format!("is {}", dir.display()),
                };
                bail!(
                    "{}: config key `data_dir` {from}, which does not exist; expected the dataset's folder, or --data-dir",
                    file.display()
                );
            }
        }
        self.validate().map_err(|e| flags.name_in(e))?;
        Ok(self)
    }

    /// Applies the keys of a TOML file on top of this config; an unknown key is an error.
    /// A run's own `config.toml` given as the file (to repeat the run) must not carry the count
    /// a time budget lowered: a new run with it would skip its own `--budget-minutes`.
    pub fn with_overrides(self, path: &Path) -> Result<Config> {
        let rl = |text: &str| apply_overrides(&crate::rl::RlConfig::cpu(), text).is_ok();
        let config = from_file(path, |text| self.overridden(text), rl, crate::checkpoint::RL_RUN)?;
        if config.meta_iters_requested.is_some() {
            bail!(
                "{}: key `meta_iters_requested` is what a time budget wrote into a run's config.toml; remove it (`meta_iters` is the count to run, `--budget-minutes` a budget)",
                path.display()
            );
        }
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    #[cfg(test)]
    pub fn with_overrides_str(self, text: &str) -> Result<Config> {
        let config = self.overridden(text)?;
        config.validate()?;
        Ok(config)
    }

    /// This config with the keys of the TOML `text` applied. Text that sets `dataset` switches
    /// as `--dataset` does ([`Config::set_dataset`]: that dataset's default `valid_size` in place
    /// of the old one's default, CIFAR-10's augmentation off when leaving it), then its own keys
    /// apply, `valid_size` and `augment` included.
    fn overridden(&self, text: &str) -> Result<Config> {
        let keys: toml::Table = parse_toml(text)?;
        let mut base = self.clone();
        // A name that is not a dataset is left to `apply_overrides` to report.
        if let Some(Ok(dataset)) = keys.get("dataset").map(|name| name.clone().try_into::<DatasetName>()) {
            base.set_dataset(dataset);
        }
        let mut config = apply_overrides(&base, text)?;
        // Intermediate losses turned off take the preset's form of them along: it would change
        // nothing, which a new run refuses as the file's mistake.
        let turned_off = keys.contains_key("intermediate_loss_every") && config.intermediate_loss_every == 0;
        if turned_off && !keys.contains_key("intermediate_loss_form") {
            config.intermediate_loss_form = IntermediateLossForm::default();
        }
        Ok(config)
    }

    /// Keys a run's `config.toml` may change between its sessions: how the outer optimiser goes
    /// on from here (what a diverged run's error advises), how long the run is, and settings that
    /// do not change what a meta-iteration computes. Loading its checkpoint refuses any other edit.
    pub const EDITABLE_IN_A_RUN: [&'static str; 9] = [
        "outer_lr",
        "final_lr_fraction",
        "adam_eps",
        "grad_clip",
        "meta_iters",
        "meta_iters_requested",
        "save_every",
        "checkpoint_every",
        "data_dir",
    ];

    /// Without the settings of one session (where the data is read from, gradient checkpointing):
    /// what identifies a run, and what its checkpoints store, so that a teacher's bytes do not
    /// depend on them.
    pub fn without_session_settings(&self) -> Config {
        Config { data_dir: None, checkpoint_every: 0, ..self.clone() }
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("config cannot be written as TOML")
    }

    pub fn from_toml(text: &str) -> Result<Config> {
        let mut config: Config = parse_toml(text)?;
        // A budget-shortened run whose `meta_iters` was edited up to what was asked for (as a
        // repeated command without the budget advises) is no longer shortened.
        if config.meta_iters_requested.is_some_and(|asked| asked <= config.meta_iters) {
            config.meta_iters_requested = None;
        }
        config.validate()?;
        Ok(config)
    }

    /// Switches to `dataset`, with its default validation split unless `valid_size` is something
    /// other than the current dataset's default (set by a config file, or the `tiny` preset's),
    /// and without CIFAR-10's augmentation when leaving it (its flips would mirror digits).
    pub fn set_dataset(&mut self, dataset: DatasetName) {
        if self.valid_size == self.dataset.default_valid_size() {
            self.valid_size = dataset.default_valid_size();
        }
        if self.dataset == DatasetName::Cifar10 && dataset != DatasetName::Cifar10 {
            self.augment = false;
        }
        self.dataset = dataset;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.dataset.default_dir())
    }

    /// Sets the data folder to `flag` (`--data-dir`) if given, else keeps the config's own; made
    /// absolute from the current folder either way, so eval and resume find it from any folder.
    /// None stays none: a run continued without `--data-dir` reads the folder its config stores.
    pub fn set_data_dir(&mut self, flag: Option<&Path>) -> Result<()> {
        self.data_dir = match flag {
            Some(dir) => Some(absolute(dir, "--data-dir")?),
            None => self.data_dir.as_deref().map(|dir| absolute(dir, "config key `data_dir`")).transpose()?,
        };
        Ok(())
    }

    /// Whether the unroll is checkpointed: a block of `checkpoint_every` steps shorter than it.
    pub fn checkpoints_unroll(&self) -> bool {
        (1..self.inner_steps).contains(&self.checkpoint_every)
    }

    /// What a new run of this config must also be (a stored run that predates a check still
    /// resumes): combinations that would train nothing or mislead. Errors name the `--config`
    /// file and flags of `flags`, which made the config.
    pub fn check_new_run(&self, flags: &Flags) -> Result<()> {
        self.check_combinations(flags).map_err(|e| flags.name_in(e))
    }

    fn check_combinations(&self, flags: &Flags) -> Result<()> {
        let (every, steps) = (self.intermediate_loss_every, self.inner_steps);
        if every >= steps {
            // A file or flag that lowers `inner_steps` below a preset's intermediate losses is
            // named with a key it does not set.
            let lowered = flags.config.is_some() || flags.inner_steps.is_some();
            let whose = match lowered && !flags.config.is_some_and(|file| sets_key(file, "intermediate_loss_every")) {
                true => " (the preset's; a --config file may set it)",
                false => "",
            };
            bail!(
                "config key `intermediate_loss_every` is {every}{whose}, which adds no intermediate loss with `inner_steps` = {steps} (one after every k-th step before the last); expected 0 (none) or less than {steps}"
            );
        }
        if every == 0 && self.intermediate_loss_form == IntermediateLossForm::SumFreshBatches {
            bail!(
                "config key `intermediate_loss_form` is \"sum-fresh-batches\", which changes nothing without intermediate losses; expected `intermediate_loss_every` > 0 with it"
            );
        }
        if self.augment && self.dataset != DatasetName::Cifar10 {
            bail!(
                "config key `augment` is true with {}: its horizontal flips mirror digits and garments, which the test set does not hold; expected false (augmentation is CIFAR-10's)",
                self.dataset
            );
        }
        // Batch norm over one sample is constant (see `normalises_over_the_batch_alone`); the
        // generator's first layer normalises over the batch alone too.
        let alone = self.learner.normalises_over_the_batch_alone();
        let generator = self.teacher == TeacherKind::Generator;
        if self.batch_size < 2 && (alone || generator) {
            let constant = match (generator, alone) {
                (true, true) => format!(
                    "the generator's images would not depend on their noise and label, nor the {} learner's outputs on its inputs",
                    self.learner
                ),
                (true, false) => "the generator's images would not depend on their noise and label".into(),
                _ => format!("the {} learner's outputs would not depend on its inputs", self.learner),
            };
            bail!(
                "config key `batch_size` is {}, expected at least 2: batch norm over one sample is constant, so {constant}",
                self.batch_size
            );
        }
        if self.meta_batch < 2 && alone && self.bn_eval == BnEval::Batch {
            bail!(
                "config key `meta_batch` is {}, expected at least 2 with `bn_eval = \"batch\"` and the {} learner: batch norm over the one scored image is constant, so the meta-loss would not depend on it",
                self.meta_batch,
                self.learner
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("inner_steps", self.inner_steps),
            ("batch_size", self.batch_size),
            ("meta_iters", self.meta_iters),
            ("meta_batch", self.meta_batch),
            ("save_every", self.save_every),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("config key `{key}` is 0, expected a positive integer");
            }
        }
        // Learned as logarithms: 0 (plain SGD's momentum) has none.
        let logs = " (the inner lr and momentum are learned as logarithms)";
        let rates = [
            ("init_lr", self.init_lr, logs),
            ("init_momentum", self.init_momentum, logs),
            ("outer_lr", self.outer_lr, ""),
        ];
        for (key, value, why) in rates {
            check_positive_f32(key, value, why)?;
        }
        if self.init_momentum >= 1.0 {
            bail!("config key `init_momentum` is {}, expected a value in (0, 1)", self.init_momentum);
        }
        // A huge clip turns clipping off (the norm is compared in f64); an epsilon that float32
        // rounds to 0 would divide 0 by 0 in Adam's update.
        if !(self.grad_clip > 0.0 && self.grad_clip.is_finite()) {
            bail!("config key `grad_clip` is {}, expected a positive number", self.grad_clip);
        }
        check_positive_f32("adam_eps", self.adam_eps, "")?;
        for (key, beta) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("config key `{key}` is {beta}, expected a value in [0, 1)");
            }
        }
        let g = &self.generator;
        let widths = [
            ("noise_dim", g.noise_dim),
            ("fc_width", g.fc_width),
            ("conv1_channels", g.conv1_channels),
            ("conv2_channels", g.conv2_channels),
        ];
        for (key, value) in widths {
            if value <= 0 {
                bail!("config key `generator.{key}` is {value}, expected a positive integer");
            }
        }
        self.check_sizes()?;
        if self.teacher == TeacherKind::Pixels && self.curriculum == CurriculumKind::None {
            bail!(
                "config key `curriculum` is \"none\" (fresh noise each step) with `teacher = \"pixels\"`, which has no noise: expected \"full\", \"batch-shuffled\" or \"all-shuffled\""
            );
        }
        if self.seed > i64::MAX as u64 {
            bail!("config key `seed` is {}, expected at most {}", self.seed, i64::MAX);
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            bail!("config key `final_lr_fraction` is {}, expected a value in [0, 1]", self.final_lr_fraction);
        }
        Ok(())
    }
}

/// The most values one tensor, or one layer's activations over the T inner steps, may hold
/// (8 GiB of floats; the presets' largest, `paper-cifar10`'s second FC layer's output over its
/// 128 steps, is 2^27). An unbounded size would abort on an allocation, or fill the
/// machine's memory, far from the key that caused it.
pub const MAX_VALUES: usize = 1 << 31;

impl Config {
    /// Every size a config multiplies into one tensor or one layer's activations over the T steps,
    /// against [`MAX_VALUES`]: the synthetic images, the real meta-loss batch and, for a
    /// generator, its noise, weights and activations (its FC layers run on all T batches at
    /// once, its convolutions a batch at a time). Widths must already be positive.
    fn check_sizes(&self) -> Result<()> {
        let ([c, h, w], classes) = self.dataset.shape();
        let g = &self.generator;
        let (t, b) = (self.inner_steps as u128, self.batch_size as u128);
        let [c, h, w, classes] = [c, h, w, classes].map(|v| v as u128);
        let [z, fc, c1, c2] = [g.noise_dim, g.fc_width, g.conv1_channels, g.conv2_channels].map(|v| v as u128);
        let (steps, batch) = (("`inner_steps`", t), ("`batch_size`", b));
        let image = ("the image's values", c * h * w);
        // Augmentation crops from 4-pixel-padded images.
        let pad = if self.augment { 8 } else { 0 };
        let real_image = ("the (padded) image's values", c * (h + pad) * (w + pad));
        let fc_in = ("`generator.noise_dim` + classes", z + classes);
        let fc_width = ("`generator.fc_width`", fc);
        let low_res = ("`generator.conv1_channels` x H/4 x W/4", c1 * (h / 4) * (w / 4));
        let mid_res = ("`generator.conv2_channels` x H/2 x W/2", c2 * (h / 2) * (w / 2));
        let meta_batch = ("`meta_batch`", self.meta_batch as u128);
        let mut sizes = vec![vec![steps, batch, image], vec![meta_batch, real_image]];
        if self.intermediate_loss_form == IntermediateLossForm::SumFreshBatches {
            let losses = crate::meta::intermediate_losses(self) as u128;
            sizes.push(vec![("the intermediate losses' fresh batches", losses), meta_batch, real_image]);
        }
        if self.teacher == TeacherKind::Generator {
            sizes.extend([
                vec![steps, batch, ("`generator.noise_dim`", z)],
                vec![steps, batch, fc_in],
                vec![steps, batch, fc_width],
                vec![steps, batch, low_res],
                vec![batch, mid_res],
                vec![fc_width, fc_in],
                vec![fc_width, low_res],
            ]);
        }
        for factors in sizes {
            // Three factors below 2^64 can overflow 128 bits: saturate.
            let values = factors.iter().fold(1u128, |p, &(_, v)| p.saturating_mul(v));
            if values > MAX_VALUES as u128 {
                let names: Vec<&str> = factors.iter().map(|&(name, _)| name).collect();
                let counts: Vec<String> = factors.iter().map(|&(_, v)| v.to_string()).collect();
                bail!(
                    "config keys {} = {}: more than {MAX_VALUES} values in one tensor or one layer over the T steps, expected at most that",
                    names.join(" x "),
                    counts.join(" x ")
                );
            }
        }
        Ok(())
    }
}

/// `dir` (given as `what`, a flag or key) from the current folder.
pub fn absolute(dir: &Path, what: &str) -> Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("{what} {:?}: expected a folder path", dir.display().to_string()))
}

/// Refuses a folder `dir` (given as `flag`) that is a file: every later error would name a
/// symptom (`Not a directory`, `File exists`) instead.
pub fn check_not_a_file(dir: &Path, flag: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: is a file; expected a folder ({flag})", dir.display());
    }
    Ok(())
}

/// `base` with the keys of the TOML `text` applied (nested tables merged key by key); an unknown
/// key is an error. Shared by every config type of the project.
pub fn apply_overrides<C: Serialize + DeserializeOwned>(base: &C, text: &str) -> Result<C> {
    let overrides: toml::Table = parse_toml(text)?;
    let mut table = toml::Table::try_from(base).context("config cannot be written as TOML")?;
    merge(&mut table, overrides);
    serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| with_misplaced_hint(text, e, top_level_keys::<C>()))
}

/// `C` read from TOML `text`; an error is one line that names the line and the key.
pub fn parse_toml<C: DeserializeOwned>(text: &str) -> Result<C> {
    serde_path_to_error::deserialize(toml::de::Deserializer::new(text))
        .map_err(|e| with_misplaced_hint(text, e, top_level_keys::<C>()))
}

/// The keys the struct `C` reads at its top level, as serde's derive lists them (none for a
/// type that is not a struct, such as a table): asked of a deserializer that only records them.
fn top_level_keys<C: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    // Always an error: the fields are recorded on the way to it.
    C::deserialize(Fields(&mut fields)).err();
    fields
}

/// [`toml_error`], with a hint where the unknown key of a `[table]` is one of the `top_level`
/// keys: in TOML a key written below a `[table]` line belongs to that table, so a key appended to
/// a run's config.toml (which ends with `[generator]`) lands there.
fn with_misplaced_hint(
    text: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
    top_level: &[&str],
) -> anyhow::Error {
    let path = e.path().to_string();
    let unknown = e.inner().message().starts_with("unknown field");
    let misplaced = path.split_once('.').filter(|&(_, key)| unknown && top_level.contains(&key));
    let error = toml_error(Some(text), e);
    let Some((table, key)) = misplaced else { return error };
    let fix = match line_of_key(text, key) {
        Some(line) => format!("it is set on line {line}: edit it there, and remove this line"),
        None => "put it above the line".to_owned(),
    };
    anyhow::anyhow!(
        "{error} (`{key}` is a top-level key: in TOML, keys below a `[{table}]` line belong to that table; {fix})"
    )
}

/// `line 3, key `inner_steps`: invalid type: string "four", expected a positive integer`:
/// where it was (the line when the text is known, the key when there is one) and toml's message
/// on one line, in words rather than Rust's types, with the likely key for an unknown one.
fn toml_error(text: Option<&str>, e: serde_path_to_error::Error<toml::de::Error>) -> anyhow::Error {
    let key = e.path().to_string();
    let e = e.into_inner();
    // A key left out is at no line of the text (toml's span is the table's), and the key named
    // is its table's.
    let missing = e.message().starts_with("missing field");
    let text = text.filter(|_| !missing);
    // A merged table (a file over a preset) has no spans: its key's line is looked up.
    let line = match (text, e.span()) {
        (Some(text), Some(span)) => Some(text[..span.start].matches('\n').count() + 1),
        (Some(text), None) => line_of_key(text, &key),
        (None, _) => None,
    };
    // An error of the TOML itself (a number past its 64-bit integers) has no key: the one its
    // line sets, if it sets one, is named all the same.
    let key = match (key.as_str(), text.zip(line)) {
        (".", Some((text, line))) => key_set_on(text, line).unwrap_or(key),
        _ => key,
    };
    let place: Vec<String> =
        line.map(|l| format!("line {l}")).into_iter().chain((key != ".").then(|| format!("key `{key}`"))).collect();
    let lines: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let message = in_words(&lines.join("; "));
    match place.is_empty() {
        true => anyhow::anyhow!("{message}"),
        false => anyhow::anyhow!("{}: {message}", place.join(", ")),
    }
}

/// The dotted key that line `line` (from 1) of the TOML `text` sets, if it starts a key/value
/// pair: the text before it must be whole TOML (a line inside an unclosed array or string sets
/// nothing), and a bare key there is under the last `[table]` above it.
fn key_set_on(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let before = lines.get(..line - 1)?;
    toml::from_str::<toml::Table>(&before.join("\n")).ok()?;
    let (name, _) = lines.get(line - 1)?.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return None;
    }
    let table = before.iter().rev().find_map(|l| l.trim().strip_prefix('[')).map(|h| h.trim_matches(['[', ']', ' ']));
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{name}"),
        _ => name.to_owned(),
    })
}

/// The line (from 1) where the dotted `key` is set in the TOML `text`: `k = ...` at the top
/// level, or under its `[table]` line. Keys in quotes or inline tables are not found.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = "";
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header.split(']').next().unwrap_or_default().trim();
        } else if current == table && line.split('=').next().map(str::trim) == Some(name) && line.contains('=') {
            return Some(i + 1);
        }
    }
    None
}

/// serde's message in a user's words: the kind of value for Rust's type names, and for an
/// unknown key the known one it most likely misspells, in place of the list of them all.
fn in_words(message: &str) -> String {
    let kinds = [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ];
    match message {
        "number too large to fit in target type" => {
            return format!("{message}; expected at most {} (TOML's integers are 64-bit)", i64::MAX)
        }
        "number too small to fit in target type" => {
            return format!("{message}; expected at least {} (TOML's integers are 64-bit)", i64::MIN)
        }
        _ => {}
    }
    if let Some((_, words)) = kinds.iter().find(|(rust, _)| message.ends_with(rust)) {
        return format!("{}{words}", &message[..message.rfind("expected").expect("found above")]);
    }
    // A nested config (`[generator]`) given a value.
    if let Some((before, _)) = message.rsplit_once("expected struct ") {
        return format!("{before}expected a table of keys");
    }
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_owned() };
    let Some((unknown, known)) = rest.split_once('`') else { return message.to_owned() };
    let closest = known
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| (strsim::damerau_levenshtein(unknown, name), name))
        .min()
        .filter(|&(distance, name)| distance <= 2 && distance < name.len());
    match closest {
        Some((_, name)) => format!("unknown field `{unknown}`; did you mean `{name}`?"),
        None => message.to_owned(),
    }
}

/// The config `apply` makes of the text of the file `path` (a `--config` file over a preset).
/// Errors name the file; when the other command's config takes all its keys (`theirs`), they say
/// it may be that command's (`other_command`) file, keeping the error itself: a key both configs
/// know, misplaced (a top-level `noise_dim`), looks the same.
pub fn from_file<C>(
    path: &Path,
    apply: impl FnOnce(&str) -> Result<C>,
    theirs: impl FnOnce(&str) -> bool,
    other_command: &str,
) -> Result<C> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
    apply(&text).map_err(|e| match theirs(&text) {
        true => anyhow::anyhow!(
            "{}: {e} (all its keys are `{other_command}`'s: is it that command's config, for `{other_command} --config`?)",
            path.display()
        ),
        false => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

/// A config's positive number, `why` it must be positive (the end of that message): the
/// teachers hold their parameters, rates and Adam's state in float32, where a larger number is
/// infinite and a smaller one 0 (or loses its precision): `init_lr = 1e60` would end the first
/// step as NaN.
pub(crate) fn check_positive_f32(key: &str, value: f64, why: &str) -> Result<()> {
    if !(value > 0.0 && value.is_finite()) {
        bail!("config key `{key}` is {value}, expected a positive number{why}");
    }
    let (least, most) = (f32::MIN_POSITIVE as f64, f32::MAX as f64);
    if !(least..=most).contains(&value) {
        bail!("config key `{key}` is {value:e}, expected a positive number from {least:.2e} to {most:.2e} (float32's range)");
    }
    Ok(())
}

/// Whether the TOML file at `path` sets the top-level `key` (false for a file it cannot read).
pub(crate) fn sets_key(path: &Path, key: &str) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.parse::<toml::Table>().is_ok_and(|table| table.contains_key(key))
}

/// Recursive merge so a file can override one field of a nested table (e.g. `[generator]`).
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// The keys whose values differ between two configs of one type, each with both values as
/// TOML (nested keys dotted), so an error can say what separates two runs.
pub fn differences<C: Serialize>(a: &C, b: &C) -> Result<Vec<(String, String, String)>> {
    let table = |c: &C| toml::Table::try_from(c).context("config cannot be written as TOML");
    let mut out = Vec::new();
    diff_tables("", &table(a)?, &table(b)?, &mut out);
    Ok(out)
}

/// The keys that set how long a run is: image runs' and RL runs'.
const RUN_LENGTH_KEYS: [&str; 2] = ["meta_iters", "generations"];

/// Ok when a new run of `requested` in `dir` is the run `stored` there (so it can be
/// continued), else an error naming every key that differs and how to go on: where
/// `resume_command` gives one (e.g. `gtn train`, for a stored run that loads), continuing the
/// stored run is one of the ways. It is asked only then, as answering may load the checkpoint.
pub fn same_run<'a, C: Serialize>(
    dir: &Path,
    stored: Result<C>,
    requested: &C,
    resume_command: impl FnOnce() -> Option<&'a str>,
) -> Result<()> {
    let file = dir.join(crate::checkpoint::CONFIG_FILE);
    let stored = stored.map_err(|e| {
        // Another kind of run's folder: its error already says what it holds.
        if e.is::<crate::checkpoint::OtherKindOfRun>() {
            return e;
        }
        // A saved run's config file is often one edited by hand (what a diverged run's error
        // advises): removing the folder would lose the run.
        let advice = match crate::checkpoint::checkpoint_path(dir).exists() {
            true => format!(
                "if it is this command's run, {} {} (its checkpoint is kept); else choose another --out",
                if file.exists() { "fix" } else { "restore" },
                file.display()
            ),
            false => "remove the folder or choose another --out".to_owned(),
        };
        anyhow::anyhow!("{}: holds a run this command cannot read ({e:#}); {advice}", dir.display())
    })?;
    let differing = differences(&stored, requested)?;
    let listed: Vec<String> =
        differing.iter().map(|(key, there, here)| format!("{key} {there} there, {here} here")).collect();
    if !listed.is_empty() {
        // A longer run alone: a resume takes that key edited, and `--resume` has no flag for it
        // (a shorter one may be below what the run has done, which a resume refuses).
        let longer =
            |there: &str, here: &str| matches!((there.parse::<u64>(), here.parse::<u64>()), (Ok(a), Ok(b)) if b > a);
        let lengthen = match differing.as_slice() {
            [(key, there, here)] if RUN_LENGTH_KEYS.contains(&key.as_str()) && longer(there, here) => {
                Some(format!(" (after editing `{key}` in {}, for its new length)", file.display()))
            }
            _ => None,
        };
        let resume = resume_command().map(|c| {
            format!(
                "continue it with `{c} --resume {}`{}, or ",
                crate::text::shell_word(dir),
                lengthen.unwrap_or_default()
            )
        });
        bail!(
            "{}: holds a run with another config ({}); {}remove {}, or choose another --out",
            file.display(),
            listed.join("; "),
            resume.unwrap_or_default(),
            dir.display()
        );
    }
    Ok(())
}

fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<(String, String, String)>) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    // Floats as Rust writes them shortest (`1e30`, where TOML writes 31 digits).
    let shown = |v: Option<&toml::Value>| match v {
        Some(toml::Value::Float(x)) => format!("{x:?}"),
        v => v.map_or_else(|| "absent".to_string(), ToString::to_string),
    };
    for key in keys {
        match (a.get(key), b.get(key)) {
            (Some(toml::Value::Table(ta)), Some(toml::Value::Table(tb))) => {
                diff_tables(&format!("{prefix}{key}."), ta, tb, out)
            }
            (va, vb) if va != vb => out.push((format!("{prefix}{key}"), shown(va), shown(vb))),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_no_shorter_than_the_unroll_checkpoints_nothing() {
        let at = |k| Config { inner_steps: 32, checkpoint_every: k, ..Config::tiny() }.checkpoints_unroll();
        assert_eq!([0, 1, 16, 31, 32, 64].map(at), [false, true, true, true, false, false]);
    }

    #[test]
    fn presets_are_valid_and_round_trip() {
        for name in PRESETS {
            let c = Config::preset(name).unwrap();
            c.validate().unwrap();
            c.check_new_run(&Flags::default()).unwrap();
            assert_eq!(Config::from_toml(&c.to_toml().unwrap()).unwrap(), c, "{name}");
        }
        let err = Config::preset("huge").unwrap_err().to_string();
        assert_eq!(err, "--preset huge: unknown preset, expected one of paper, cpu, tiny, paper-cifar10, cpu-cifar10");
        // The paper and CIFAR-10 presets score as the reference; the CPU-sized MNIST ones as the
        // README's results.
        let scored = PRESETS.map(|name| Config::preset(name).unwrap().bn_eval);
        assert_eq!(scored, [BnEval::Train, BnEval::Batch, BnEval::Batch, BnEval::Train, BnEval::Train]);
        // A config.toml from before the key reads as `batch`, as it was scored.
        let old = Config::cpu().to_toml().unwrap().replace("bn_eval = \"batch\"\n", "");
        assert!(!old.contains("bn_eval"));
        assert_eq!(Config::from_toml(&old).unwrap(), Config::cpu());
        // One from before intermediate_loss_form reads as the form it was trained with.
        let old = Config::cpu().to_toml().unwrap().replace("intermediate_loss_form = \"mean-shared-batch\"\n", "");
        assert!(!old.contains("intermediate_loss_form"));
        assert_eq!(Config::from_toml(&old).unwrap(), Config::cpu());
        // And one from before adam_eps with PyTorch's default, which it trained with.
        let text = Config::cpu().to_toml().unwrap();
        let old: String = text.lines().filter(|l| !l.starts_with("adam_eps = ")).map(|l| format!("{l}\n")).collect();
        assert!(!old.contains("adam_eps"));
        assert_eq!(Config::from_toml(&old).unwrap(), Config::cpu());
        // The CIFAR-10 presets take the reference's CIFAR-10 outer optimiser and meta-loss.
        for c in [Config::paper_cifar10(), Config::cpu_cifar10()] {
            assert_eq!((c.outer_lr, c.adam_beta2, c.adam_eps, c.meta_batch), (0.004, 0.9, 1e-5, 256));
            assert_eq!(crate::meta::intermediate_losses(&c), 7, "as many as the reference's 128 / 16 - 1");
        }
    }

    #[test]
    fn differences_name_each_key_and_both_values() {
        let a = Config::tiny();
        assert!(differences(&a, &a).unwrap().is_empty());
        let b = Config {
            meta_iters: a.meta_iters + 1,
            outer_lr: 1e30,
            data_dir: Some("d".into()),
            ..Config::tiny().with_overrides_str("[generator]\nfc_width = 33").unwrap()
        };
        let row = |key: &str, a: String, b: String| (key.to_string(), a, b);
        let expected = vec![
            row("data_dir", "absent".into(), "\"d\"".into()),
            row("generator.fc_width", a.generator.fc_width.to_string(), "33".into()),
            row("meta_iters", a.meta_iters.to_string(), (a.meta_iters + 1).to_string()),
            // Not TOML's 31 digits.
            row("outer_lr", format!("{:?}", a.outer_lr), "1e30".into()),
        ];
        assert_eq!(differences(&a, &b).unwrap(), expected);
    }

    #[test]
    fn overrides_apply_including_nested_keys() {
        let c = Config::tiny()
            .with_overrides_str(
                "inner_steps = 7\ncurriculum = \"batch-shuffled\"\nintermediate_loss_form = \"sum-fresh-batches\"\n\
                 [generator]\nfc_width = 33\n",
            )
            .unwrap();
        assert_eq!(c.inner_steps, 7);
        assert_eq!(c.intermediate_loss_form, IntermediateLossForm::SumFreshBatches);
        assert_eq!(c.curriculum, CurriculumKind::BatchShuffled);
        assert_eq!(c.generator.fc_width, 33);
        assert_eq!(c.generator.noise_dim, Config::tiny().generator.noise_dim);
    }

    #[test]
    fn toml_errors_are_one_line_naming_the_line_and_the_key() {
        let err = Config::tiny().with_overrides_str("seed = 3\ninner_steps = \"four\"").unwrap_err().to_string();
        assert_eq!(err, "line 2, key `inner_steps`: invalid type: string \"four\", expected a positive integer");
        let err = Config::tiny().with_overrides_str("[generator]\nfc_width = 1.5").unwrap_err().to_string();
        assert_eq!(
            err,
            "line 2, key `generator.fc_width`: invalid type: floating point `1.5`, expected a positive integer"
        );
        let err = Config::tiny().with_overrides_str("seed = 1\nmeta_iter = 3").unwrap_err().to_string();
        assert_eq!(err, "line 2, key `meta_iter`: unknown field `meta_iter`; did you mean `meta_iters`?");
        let err = Config::tiny().with_overrides_str("[generator]\nfc_widht = 3").unwrap_err().to_string();
        assert_eq!(err, "line 2, key `generator.fc_widht`: unknown field `fc_widht`; did you mean `fc_width`?");
        let err = Config::tiny().with_overrides_str("generator = 3").unwrap_err().to_string();
        assert_eq!(err, "line 1, key `generator`: invalid type: integer `3`, expected a table of keys");
        let err = Config::tiny().with_overrides_str("bogus = 1").unwrap_err().to_string();
        assert!(err.starts_with("line 1, key `bogus`: unknown field `bogus`, expected one of `dataset`"), "{err}");
        // Errors of the TOML itself name the key their line sets too.
        let err = Config::tiny().with_overrides_str("seed = 1\ninner_steps = ").unwrap_err().to_string();
        assert!(err.starts_with("line 2, key `inner_steps`: ") && !err.contains('\n'), "{err}");
        let err = Config::tiny().with_overrides_str("seed = 1\nmeta_iters = 99999999999999999999").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2, key `meta_iters`: number too large to fit in target type; expected at most 9223372036854775807 (TOML's integers are 64-bit)"
        );
        let err = Config::tiny().with_overrides_str("seed = 1\n= 3").unwrap_err().to_string();
        assert!(err.starts_with("line 2: "), "no key on that line: {err}");
        let err = Config::tiny().with_overrides_str("[generator]\nfc_width = 99999999999999999999").unwrap_err();
        assert!(err.to_string().starts_with("line 2, key `generator.fc_width`: number too large"), "{err}");
        let err = Config::tiny().with_overrides_str("seed = -99999999999999999999").unwrap_err().to_string();
        assert!(err.ends_with("expected at least -9223372036854775808 (TOML's integers are 64-bit)"), "{err}");
        // A line inside an unclosed array sets no key: none is named.
        let err = Config::tiny().with_overrides_str("lrs = [0.1,\nseed = 3").unwrap_err().to_string();
        assert!(err.starts_with("line 2: "), "{err}");
        let stored = Config::tiny().to_toml().unwrap().replace("inner_steps = 4", "inner_steps = -4");
        let err = Config::from_toml(&stored).unwrap_err().to_string();
        let line = stored.lines().position(|l| l.starts_with("inner_steps")).unwrap() + 1;
        assert_eq!(
            err,
            format!("line {line}, key `inner_steps`: invalid value: integer `-4`, expected a positive integer")
        );
        // A key appended to a run's config.toml lands in its last table, `[generator]`; the
        // top-level line that sets it is named.
        let stored = Config::tiny().to_toml().unwrap();
        let err = Config::from_toml(&format!("{stored}outer_lr = 0.005\n")).unwrap_err().to_string();
        let line = stored.lines().position(|l| l.starts_with("outer_lr")).unwrap() + 1;
        let hint = format!("(`outer_lr` is a top-level key: in TOML, keys below a `[generator]` line belong to that table; it is set on line {line}: edit it there, and remove this line)");
        assert!(err.contains("key `generator.outer_lr`: unknown field `outer_lr`") && err.ends_with(&hint), "{err}");
        // Whatever else the file gets wrong: a second appended key, a value the key refuses.
        for appended in ["outer_lr = 0.005\nmeta_iters = 9\n", "outer_lr = 0\n"] {
            let err = Config::from_toml(&format!("{stored}{appended}")).unwrap_err().to_string();
            assert!(err.ends_with(&hint), "{appended}: {err}");
        }
        // A key left out names no line or key of the file's: none is at fault.
        let err = Config::from_toml(&stored.replace("save_every = 4\n", "")).unwrap_err().to_string();
        assert_eq!(err, "missing field `save_every`");
        let err = Config::from_toml(&stored.replace("fc_width = 64\n", "")).unwrap_err().to_string();
        assert_eq!(err, "key `generator`: missing field `fc_width`");
        // A key that must be positive says so of 0 and of a negative value alike; one that may
        // be 0 says that.
        for value in ["0", "-5"] {
            let err = Config::tiny().with_overrides_str(&format!("meta_iters = {value}")).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("line 1, key `meta_iters`: invalid value: integer `{value}`, expected a positive integer")
            );
        }
        let err = Config::tiny().with_overrides_str("checkpoint_every = -1").unwrap_err().to_string();
        assert!(err.ends_with("expected a whole number, 0 or more"), "{err}");
        assert_eq!(Config::tiny().with_overrides_str("checkpoint_every = 0").unwrap().checkpoint_every, 0);
    }

    #[test]
    fn flags_replace_only_their_keys() {
        let flags = Flags {
            dataset: Some(DatasetName::FashionMnist),
            seed: Some(7),
            data_dir: Some(Path::new("d")),
            ..Flags::default()
        };
        let config = Config::cpu().with_flags(&flags).unwrap();
        let dir = std::path::absolute("d").unwrap();
        let expected = Config { seed: 7, data_dir: Some(dir), ..Config::cpu() };
        let mut expected_fashion = expected.clone();
        expected_fashion.set_dataset(DatasetName::FashionMnist);
        assert_eq!(config, expected_fashion);
        assert_eq!(Config::cpu().with_flags(&Flags::default()).unwrap(), Config::cpu());
        let zero = Flags { meta_iters: Some(0), ..Flags::default() };
        let err = Config::cpu().with_flags(&zero).unwrap_err().to_string();
        assert!(err.contains("meta_iters"), "validated: {err}");
    }

    /// A config refused after the flags applied names what made it: the `--config` file, the
    /// flags, or both.
    #[test]
    fn errors_of_a_commands_config_name_its_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(&file, "batch_size = 32\ncurriculum = \"none\"").unwrap();
        let shown = file.display();
        let distill = Flags { config: Some(&file), teacher: Some(TeacherKind::Pixels), ..Flags::default() };
        let err = Config::from_flags("cpu", &distill).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{shown}: config key `curriculum` is \"none\"")), "{err}");
        std::fs::write(&file, "teacher = \"generator\"").unwrap();
        let err = Config::from_flags("cpu", &distill).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{shown}: config key `teacher` is \"generator\", but this command trains a pixels teacher; expected \"pixels\" or no `teacher` key (`gtn train --config` trains the file's)")
        );
        std::fs::write(&file, "teacher = \"pixels\"").unwrap();
        assert_eq!(Config::from_flags("cpu", &distill).unwrap().teacher, TeacherKind::Pixels);
        std::fs::write(&file, "batch_size = 32").unwrap();
        let short = Flags { config: Some(&file), inner_steps: Some(8), ..Flags::default() };
        let config = Config::from_flags("paper-cifar10", &short).unwrap();
        let err = config.check_new_run(&short).unwrap_err().to_string();
        let expected = format!(
            "{shown} with --steps 8: config key `intermediate_loss_every` is 16 (the preset's; a --config file may set it),"
        );
        assert!(err.starts_with(&expected), "{err}");
        std::fs::write(&file, "intermediate_loss_every = 8").unwrap();
        let err = Config::from_flags("paper-cifar10", &short).unwrap().check_new_run(&short).unwrap_err().to_string();
        assert!(err.contains("`intermediate_loss_every` is 8, which"), "the file's own: {err}");
        std::fs::write(&file, "batch_size = 32").unwrap();
        let err = config.check_new_run(&Flags { config: None, ..short }).unwrap_err().to_string();
        assert!(err.starts_with("--steps 8: config key `intermediate_loss_every` is 16 (the preset's;"), "{err}");
        assert!(Config::from_flags("cpu", &Flags { meta_iters: Some(0), ..Flags::default() })
            .unwrap_err()
            .to_string()
            .starts_with("--meta-iters 0: config key `meta_iters` is 0"));
    }

    #[test]
    fn unknown_or_bad_keys_are_errors() {
        let err = Config::tiny().with_overrides_str("inner_stpes = 7").unwrap_err().to_string();
        assert!(err.contains("unknown field `inner_stpes`"), "{err}");
        let err = Config::tiny().with_overrides_str("[generator]\nwidth = 3").unwrap_err().to_string();
        assert!(err.contains("unknown field `width`") && !err.contains("top-level"), "{err}");
        let err =
            Config::tiny().with_overrides_str("[generator]\nfc_width = 3\nvalid_size = 5").unwrap_err().to_string();
        assert!(
            err.starts_with("line 3, key `generator.valid_size`: unknown field `valid_size`")
                && err.ends_with("(`valid_size` is a top-level key: in TOML, keys below a `[generator]` line belong to that table; put it above the line)"),
            "{err}"
        );
        // Not a key the top level does not know, whatever else the file gets wrong.
        let err = Config::tiny().with_overrides_str("[generator]\nnoise_dimm = 3\nzz = 1").unwrap_err().to_string();
        assert!(!err.contains("top-level"), "{err}");
        // Also a key left out of the preset's table (an unset option).
        let err = Config::tiny().with_overrides_str("[generator]\ndata_dir = \"d\"").unwrap_err().to_string();
        assert!(err.ends_with("(`data_dir` is a top-level key: in TOML, keys below a `[generator]` line belong to that table; put it above the line)"), "{err}");
        let err = Config::tiny().with_overrides_str("curriculum = \"sorted\"").unwrap_err().to_string();
        assert!(err.contains("sorted"), "{err}");
        let err = Config::tiny().with_overrides_str("inner_steps = 0").unwrap_err().to_string();
        assert_eq!(err, "line 1, key `inner_steps`: invalid value: integer `0`, expected a positive integer");
        let err = Config { inner_steps: 0, ..Config::tiny() }.validate().unwrap_err().to_string();
        assert_eq!(err, "config key `inner_steps` is 0, expected a positive integer");
        // The generator's widths alike, with their line.
        let err = Config::tiny().with_overrides_str("[generator]\nfc_width = -5").unwrap_err().to_string();
        assert_eq!(err, "line 2, key `generator.fc_width`: invalid value: integer `-5`, expected a positive integer");
        let g = GeneratorConfig { conv1_channels: 0, ..Config::tiny().generator };
        let err = Config { generator: g, ..Config::tiny() }.validate().unwrap_err().to_string();
        assert_eq!(err, "config key `generator.conv1_channels` is 0, expected a positive integer");
        let err = Config::tiny().with_overrides_str("init_lr = -1.0").unwrap_err().to_string();
        assert!(err.contains("`init_lr` is -1"), "{err}");
        let err = Config::tiny().with_overrides_str("init_lr = 1e60").unwrap_err().to_string();
        assert!(
            err.ends_with("`init_lr` is 1e60, expected a positive number from 1.18e-38 to 3.40e38 (float32's range)"),
            "{err}"
        );
        assert!(Config::tiny().with_overrides_str("outer_lr = 1e-40").is_err());
        // Adam's epsilon rounded to 0 in float32 would divide 0 by 0.
        let err = Config::tiny().with_overrides_str("adam_eps = 1e-50").unwrap_err().to_string();
        assert!(err.contains("`adam_eps` is 1e-50, expected a positive number from"), "{err}");
        // A clip beyond float32's range turns clipping off (the norm is compared in f64).
        assert_eq!(Config::tiny().with_overrides_str("grad_clip = 1e39").unwrap().grad_clip, 1e39);
        let err = Config::tiny().with_overrides_str("init_momentum = 0.0").unwrap_err().to_string();
        assert_eq!(err, "config key `init_momentum` is 0, expected a positive number (the inner lr and momentum are learned as logarithms)");
        for (text, key) in [
            ("grad_clip = 0.0", "`grad_clip` is 0"),
            ("init_momentum = 1.0", "`init_momentum` is 1, expected a value in (0, 1)"),
            ("adam_beta2 = 1.0", "`adam_beta2` is 1"),
            ("adam_eps = 0.0", "`adam_eps` is 0, expected a positive number"),
        ] {
            let err = Config::tiny().with_overrides_str(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        // A budget-shortened run's config.toml with `meta_iters` edited up to the count asked
        // for is a run of that length.
        let stored = |line: &str| Config::from_toml(&format!("{line}\n{}", Config::tiny().to_toml().unwrap())).unwrap();
        assert_eq!(stored("meta_iters_requested = 8").meta_iters_requested, None);
        assert_eq!(stored("meta_iters_requested = 9").meta_iters_requested, Some(9));
        let err =
            Config::tiny().with_overrides_str("teacher = \"pixels\"\ncurriculum = \"none\"").unwrap_err().to_string();
        assert!(err.contains("`curriculum` is \"none\" (fresh noise each step) with `teacher = \"pixels\"`"), "{err}");
        let err = Config { seed: u64::MAX, ..Config::tiny() }.validate().unwrap_err().to_string();
        assert!(err.contains("`seed` is 18446744073709551615"), "{err}");
    }

    #[test]
    fn another_dataset_keeps_a_validation_size_set_by_a_file() {
        let mut preset = Config::cpu();
        preset.set_dataset(DatasetName::Cifar10);
        assert_eq!(preset.valid_size, DatasetName::Cifar10.default_valid_size());
        let mut from_file = Config { valid_size: 1_000, ..Config::cpu() };
        from_file.set_dataset(DatasetName::Cifar10);
        assert_eq!((from_file.dataset, from_file.valid_size), (DatasetName::Cifar10, 1_000));
        // The key in a file, like the flag: that dataset's default split unless the file sets one.
        let mut leaving = Config::cpu_cifar10();
        assert!(leaving.augment);
        leaving.set_dataset(DatasetName::Mnist);
        assert!(!leaving.augment, "CIFAR-10's flips are not MNIST's");
        let keyed = Config::cpu().with_overrides_str("dataset = \"cifar10\"").unwrap();
        assert_eq!(keyed.valid_size, DatasetName::Cifar10.default_valid_size());
        assert_ne!(DatasetName::Cifar10.default_valid_size(), DatasetName::Mnist.default_valid_size());
        let both = Config::cpu().with_overrides_str("dataset = \"cifar10\"\nvalid_size = 10000").unwrap();
        assert_eq!(both.valid_size, 10_000);
        // A file that leaves CIFAR-10 and sets its own split still turns the flips off.
        let left = Config::cpu_cifar10().with_overrides_str("dataset = \"mnist\"\nvalid_size = 5000").unwrap();
        assert_eq!((left.dataset, left.valid_size, left.augment), (DatasetName::Mnist, 5_000, false));
        let kept = Config::cpu_cifar10().with_overrides_str("dataset = \"cifar10\"\naugment = false").unwrap();
        assert!(!kept.augment, "the file's own `augment` applies after the switch");
        let err = Config::cpu().with_overrides_str("dataset = \"svhn\"").unwrap_err().to_string();
        assert!(err.contains("svhn"), "{err}");
        // --dataset over a file keeps what the file sets itself: its split, and its `augment`,
        // which the new run then refuses rather than drops.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(&file, "valid_size = 5000\naugment = true").unwrap();
        let flags = Flags { config: Some(&file), dataset: Some(DatasetName::FashionMnist), ..Flags::default() };
        let config = Config::from_flags("cpu-cifar10", &flags).unwrap();
        assert_eq!((config.valid_size, config.augment), (5_000, true));
        let err = config.check_new_run(&flags).unwrap_err().to_string();
        assert!(err.contains("config key `augment` is true with fashion-mnist"), "{err}");
        std::fs::write(&file, "seed = 1").unwrap();
        let config = Config::from_flags("cpu-cifar10", &flags).unwrap();
        assert_eq!((config.valid_size, config.augment), (10_000, false), "the preset's choices switch");
    }

    /// A file that turns the preset's intermediate losses off turns their form off with them;
    /// a form the file sets itself without them is its mistake.
    #[test]
    fn intermediate_losses_turned_off_take_their_form_along() {
        let preset = Config::cpu_cifar10();
        assert_eq!(preset.intermediate_loss_form, IntermediateLossForm::SumFreshBatches);
        let off = preset.clone().with_overrides_str("intermediate_loss_every = 0").unwrap();
        assert_eq!(off.intermediate_loss_form, IntermediateLossForm::MeanSharedBatch);
        assert!(off.check_new_run(&Flags::default()).is_ok());
        let text = "intermediate_loss_every = 0\nintermediate_loss_form = \"sum-fresh-batches\"";
        let both = preset.with_overrides_str(text).unwrap();
        let err = both.check_new_run(&Flags::default()).unwrap_err().to_string();
        assert!(err.contains("`intermediate_loss_form` is \"sum-fresh-batches\", which changes nothing"), "{err}");
    }

    /// The flag wins over a config file's `data_dir`; either is made absolute from the current
    /// folder (so a run's stored config finds its data from any folder); a bad one is named.
    #[test]
    fn the_data_folder_is_the_flag_else_the_files_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let mut from_file = Config { data_dir: Some("data/x".into()), ..Config::tiny() };
        from_file.set_data_dir(None).unwrap();
        assert_eq!(from_file.data_dir, Some(cwd.join("data/x")));
        from_file.set_data_dir(Some(Path::new("y"))).unwrap();
        assert_eq!(from_file.data_dir, Some(cwd.join("y")));
        let mut default = Config::tiny();
        default.set_data_dir(None).unwrap();
        assert_eq!(default.data_dir, None, "the dataset's default folder stays the default");
        let err = default.set_data_dir(Some(Path::new(""))).unwrap_err();
        assert_eq!(format!("{err:#}").split(':').next(), Some("--data-dir \"\""), "{err:#}");
        let mut empty_key = Config { data_dir: Some("".into()), ..Config::tiny() };
        let err = empty_key.set_data_dir(None).unwrap_err().to_string();
        assert_eq!(err, "config key `data_dir` \"\": expected a folder path");
        // A file's folder that is not there is named with the file, where it was looked for.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "data_dir = \"no/such\"").unwrap();
        let flags = Flags { config: Some(file.path()), ..Flags::default() };
        let err = Config::from_flags("tiny", &flags).unwrap_err().to_string();
        let missing = format!(
            "config key `data_dir` `no/such`, from the current folder, leads to {}, which does not exist",
            cwd.join("no/such").display()
        );
        assert!(err.starts_with(&format!("{}: {missing}", file.path().display())), "{err}");
        let given = Flags { data_dir: Some(&crate::data::fixture_dir()), ..flags };
        assert!(Config::from_flags("tiny", &given).is_ok(), "--data-dir replaces the file's");
    }

    /// A saved run whose config file cannot be read (a hand edit gone wrong) is not to be removed.
    #[test]
    fn an_unreadable_config_is_fixed_not_removed_once_a_run_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let err = |dir: &Path| {
            let unreadable: Result<Config> = Err(anyhow::anyhow!("line 1, key `outer_lr`: expected a value"));
            same_run(dir, unreadable, &Config::tiny(), || None).unwrap_err().to_string()
        };
        assert!(err(dir.path())
            .ends_with("(line 1, key `outer_lr`: expected a value); remove the folder or choose another --out"));
        std::fs::write(crate::checkpoint::checkpoint_path(dir.path()), b"saved").unwrap();
        let lost = err(dir.path());
        assert!(lost.contains("; if it is this command's run, restore ") && !lost.contains("remove"), "{lost}");
        std::fs::write(dir.path().join(crate::checkpoint::CONFIG_FILE), "outer_lr =").unwrap();
        let saved = err(dir.path());
        assert!(saved.contains("; if it is this command's run, fix ") && !saved.contains("remove"), "{saved}");
    }

    /// A size typo is an error naming the keys, not an allocation abort or a wrapped shape.
    #[test]
    fn sizes_are_bounded() {
        let err = |c: Config| c.validate().unwrap_err().to_string();
        assert_eq!(
            err(Config { batch_size: 1 << 40, ..Config::tiny() }),
            format!(
                "config keys `inner_steps` x `batch_size` x the image's values = 4 x {} x 784: more than {MAX_VALUES} values in one tensor or one layer over the T steps, expected at most that",
                1u64 << 40
            )
        );
        let wrapping = Config { inner_steps: usize::MAX, batch_size: 2, ..Config::tiny() };
        assert!(err(wrapping).starts_with("config keys `inner_steps` x `batch_size` x "));
        let wide = Config {
            generator: GeneratorConfig { fc_width: 1 << 30, ..GeneratorConfig::REFERENCE },
            ..Config::paper()
        };
        assert!(err(wide).contains("`generator.fc_width`"));
        let meta = err(Config { meta_batch: 1 << 22, ..Config::paper() });
        assert!(meta.starts_with("config keys `meta_batch` x the (padded) image's values = 4194304 x 784:"), "{meta}");
        // Fresh batches for 31 intermediate losses, though each is inside.
        let many = Config { meta_batch: 1 << 20, intermediate_loss_every: 1, ..Config::paper() };
        assert!(many.validate().is_ok());
        let fresh = err(Config { intermediate_loss_form: IntermediateLossForm::SumFreshBatches, ..many });
        assert!(fresh.starts_with("config keys the intermediate losses' fresh batches x `meta_batch` x "), "{fresh}");
        assert!(fresh.contains("= 31 x 1048576 x 784:"), "{fresh}");
        // Dataset distillation has no generator: its unused generator keys do not bound it.
        let pixels = Config { teacher: TeacherKind::Pixels, ..Config::paper() };
        let wide = GeneratorConfig { fc_width: 1 << 30, ..GeneratorConfig::REFERENCE };
        assert!(Config { generator: wide, ..pixels }.validate().is_ok());
        // The largest preset is well inside.
        let cifar = Config::paper_cifar10();
        assert!(Config { batch_size: cifar.batch_size * 4, ..cifar }.validate().is_ok());
    }

    #[test]
    fn override_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("over.toml");
        std::fs::write(&path, "bogus = 1").unwrap();
        let err = Config::tiny().with_overrides(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()) && err.contains("bogus"), "{err}");
        let err = Config::tiny().with_overrides(&dir.path().join("none.toml")).unwrap_err().to_string();
        assert!(err.contains("none.toml: cannot read config"), "{err}");
        std::fs::write(&path, "meta_iters = 3\nmeta_iters_requested = 2").unwrap();
        let err = Config::tiny().with_overrides(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: key `meta_iters_requested`", path.display())), "{err}");
        // A file of the other command's keys is named as that command's.
        std::fs::write(&path, "objective = \"imitation\"\ngenerations = 3\n").unwrap();
        let err = Config::tiny().with_overrides(&path).unwrap_err().to_string();
        let rl = "(all its keys are `gtn rl train`'s: is it that command's config, for `gtn rl train --config`?)";
        assert!(
            err.starts_with(&format!("{}: line 2, key `generations`", path.display()))
                && err.contains("unknown field")
                && err.ends_with(rl),
            "{err}"
        );
        std::fs::write(&path, "meta_iters = 3\n").unwrap();
        let err = crate::rl::RlConfig::tiny().with_overrides(&path).unwrap_err().to_string();
        let image = "(all its keys are `gtn train`'s: is it that command's config, for `gtn train --config`?)";
        assert!(err.contains("meta_iters") && err.ends_with(image), "{err}");
        // An image key misplaced at the top level (`noise_dim` is `[generator]`'s) keeps its error.
        std::fs::write(&path, "noise_dim = 64\n").unwrap();
        let err = Config::tiny().with_overrides(&path).unwrap_err().to_string();
        assert!(err.contains("noise_dim"), "{err}");
    }
}
