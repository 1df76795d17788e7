//! `gtn train`: a new meta-training run, or the continuation of one, then an evaluation of its
//! teacher; the flags' checks that name what the user typed live here, the training in [`crate::meta`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tch::Device;

use crate::checkpoint;
use crate::config::{Config, Flags};
use crate::data::TooFewImages;
use crate::interrupt::{self, Unit};
use crate::learner::BnEval;
use crate::meta::{RunSettings, Trainer};
use crate::teacher::TeacherKind;

/// Options of `gtn train` (and `gtn baseline distill`, which sets `teacher`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// A new run (or the continuation of the same config's) in this folder, or `resume`'s.
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub preset: String,
    /// A TOML file whose keys override the preset.
    pub config: Option<PathBuf>,
    pub teacher: Option<TeacherKind>,
    pub dataset: Option<crate::data::DatasetName>,
    pub meta_iters: Option<usize>,
    pub seed: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub checkpoint_every: Option<usize>,
    /// Meta-training time budget (sets `meta_iters` from the first timed iteration).
    pub budget: Option<Duration>,
    /// Fresh learners evaluated after meta-training (0: none).
    pub eval_learners: usize,
    pub before_last_update: bool,
}

/// `gtn train`: meta-trains a new run in `out` (or continues it, or `resume`), then evaluates
/// `eval_learners` fresh learners on its teacher.
pub fn train_command(options: &TrainOptions, device: Device) -> Result<()> {
    let mut trainer = match (&options.resume, &options.out) {
        (Some(dir), _) => {
            // The command line refuses these with --resume; a library caller is told too.
            let new_run_only = [
                ("--config", options.config.is_some()),
                ("--dataset", options.dataset.is_some()),
                ("--meta-iters", options.meta_iters.is_some()),
                ("--seed", options.seed.is_some()),
                ("--budget-minutes", options.budget.is_some()),
            ];
            if let Some((flag, _)) = new_run_only.iter().find(|(_, given)| *given) {
                bail!("{flag} with --resume: a resumed run keeps its own config; expected one or the other");
            }
            let settings = RunSettings::from_flags(options.data_dir.as_deref(), options.checkpoint_every)?;
            let stored = checkpoint::read_config(dir)?;
            if let Some(wanted) = options.teacher.filter(|&k| k != stored.teacher) {
                bail!(
                    "{}: holds a run of a {} teacher, expected a {wanted} teacher's; continue it with `gtn train --resume {}`",
                    dir.display(),
                    stored.teacher,
                    crate::text::shell_word(dir)
                );
            }
            check_before_last_update(options, &stored)?;
            // A complete run trains nothing: said without reading its data, which may be gone.
            if options.eval_learners == 0 && !checkpoint::never_saved(dir) {
                // On the CPU: only its iteration is wanted here.
                if let Ok(done) = checkpoint::load(dir, Device::Cpu).map(|c| c.iteration) {
                    if done >= stored.meta_iters {
                        crate::progress::announce_resumed(dir, done, stored.meta_iters, "meta-iteration");
                        return Ok(());
                    }
                }
            }
            let t = Trainer::resume(dir, device, &settings)?;
            crate::progress::announce_resumed(dir, t.iteration, t.config().meta_iters, "meta-iteration");
            t
        }
        (None, Some(out)) => {
            let flags = Flags {
                config: options.config.as_deref(),
                teacher: options.teacher,
                dataset: options.dataset,
                meta_iters: options.meta_iters,
                seed: options.seed,
                checkpoint_every: options.checkpoint_every,
                data_dir: options.data_dir.as_deref(),
                ..Flags::default()
            };
            let config = Config::from_flags(&options.preset, &flags)?;
            // Here, not only in `Trainer::create`, to name the --config file and flags; a stored
            // run is not held to checks newer than it.
            let new = !checkpoint::holds_run(out);
            if new {
                config.check_new_run(&flags)?;
            }
            check_before_last_update(options, &config)?;
            // The data folder of --data-dir or the --config file (`config`'s, made absolute).
            let settings =
                RunSettings { data_dir: config.data_dir.clone(), checkpoint_every: options.checkpoint_every };
            let t =
                Trainer::open(&config, out, device, &settings, options.budget.is_some(), Some(checkpoint::IMAGE_RUN))
                    .map_err(|e| if new { in_config_file(e, flags.config) } else { e })?;
            crate::progress::announce_reopened(out, t.iteration, t.config().meta_iters, "meta-iteration");
            if let Some(note) = t.budget_note().filter(|_| options.budget.is_some()) {
                crate::outln!("{note}");
            }
            t
        }
        (None, None) => bail!("--out DIR or --resume DIR is required"),
    };
    let dir = options.resume.as_ref().or(options.out.as_ref()).expect("checked above");
    let c = trainer.config().clone();
    // Not for a complete run, which the line above said is complete: nothing trains.
    if trainer.iteration < c.meta_iters {
        // This session's unroll: a continued run's own setting, or the flag's.
        let unroll = match c.checkpoints_unroll() {
            true => format!(", unroll checkpointed every {}", crate::text::count(c.checkpoint_every, "step")),
            false => String::new(),
        };
        // A count the time budget is about to lower is a bound, as its line below says.
        let at_most = match options.budget.is_some() && trainer.sizes_to_a_budget() {
            true => "at most ",
            false => "",
        };
        crate::outln!(
            "meta-training on {} (device {}): {} teacher, learner {}, T={} x B={}, curriculum {}{unroll}, {at_most}{} -> {}",
            c.dataset,
            crate::text::device(device),
            c.teacher,
            c.learner,
            c.inner_steps,
            c.batch_size,
            c.curriculum,
            crate::text::count(c.meta_iters, "meta-iteration"),
            dir.display()
        );
    }
    let (start, before) = (Instant::now(), trainer.iteration);
    interrupt::graceful(Unit::MetaIteration, || trainer.run(true, options.budget))?;
    if trainer.iteration > before {
        let took = crate::text::duration(start.elapsed());
        crate::outln!("meta-training done in {took}; checkpoint in {}", dir.display());
    }
    if options.eval_learners > 0 {
        // A signal from here quits at once, which would leave the user to wonder about the run.
        let logged = if options.before_last_update { " --before-last-update" } else { "" };
        interrupt::quitting_keeps(format!(
            "the teacher is saved in {}; `gtn eval {} --learners {}{logged}` evaluates it",
            dir.display(),
            crate::text::shell_word(dir),
            options.eval_learners
        ));
        let cohort = crate::eval::Cohort {
            data: trainer.data(),
            kind: c.learner,
            bn_eval: c.bn_eval,
            before_last_update: options.before_last_update,
            learners: options.eval_learners,
            seed: 0,
        };
        let report = crate::eval::evaluate_teacher(&trainer.teacher, &cohort, c.inner_steps)?;
        // Headed as `gtn eval` heads the same report.
        // The config's length, which a time budget may have lowered.
        let heading =
            crate::eval::teacher_heading(dir, trainer.iteration, crate::eval::RunLength::of(trainer.config()));
        report.print(false, &heading);
    }
    Ok(())
}

/// Before any training: `--before-last-update` scores with the last training batch's statistics,
/// which a run scored with each test batch's does not record.
fn check_before_last_update(options: &TrainOptions, config: &Config) -> Result<()> {
    if !options.before_last_update {
        return Ok(());
    }
    if options.eval_learners == 0 {
        bail!("--before-last-update: scores the learners --eval-learners K trains after meta-training; expected K of 1 or more");
    }
    if config.bn_eval != BnEval::Train {
        // A run keeps its `bn_eval`; `gtn eval` scores its teacher either way.
        let dir = options.resume.as_ref().or(options.out.as_ref()).map_or("DIR".into(), |d| crate::text::shell_word(d));
        bail!("--before-last-update: the run scores batch norm with each test batch's statistics (`bn_eval = \"batch\"`); expected a run with `bn_eval = \"train\"` (a new run's --config), or this command without it, then `gtn eval {dir} --bn-eval train --before-last-update`");
    }
    Ok(())
}

/// `e` naming the `--config` file `config` where it is a size the data cannot fill
/// ([`TooFewImages`]) of a key the file sets, as the file's other errors are named.
pub fn in_config_file(e: anyhow::Error, config: Option<&Path>) -> anyhow::Error {
    match (e.downcast_ref::<TooFewImages>().and_then(|size| size.key), config) {
        (Some(key), Some(file)) if crate::config::sets_key(file, key) => {
            anyhow::anyhow!("{}: {e:#}", file.display())
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::fixture_dir;

    /// `gtn train --preset tiny` with no other flag.
    fn tiny_options() -> TrainOptions {
        TrainOptions {
            out: None,
            resume: None,
            preset: "tiny".into(),
            config: None,
            teacher: None,
            dataset: None,
            meta_iters: None,
            seed: None,
            data_dir: None,
            checkpoint_every: None,
            budget: None,
            eval_learners: 0,
            before_last_update: false,
        }
    }

    #[test]
    fn train_command_refuses_a_new_runs_options_with_resume() {
        let options = TrainOptions { resume: Some("/nonexistent/run".into()), meta_iters: Some(3), ..tiny_options() };
        let err = train_command(&options, Device::Cpu).unwrap_err().to_string();
        assert_eq!(err, "--meta-iters with --resume: a resumed run keeps its own config; expected one or the other");
        let err =
            train_command(&TrainOptions { meta_iters: None, ..options.clone() }, Device::Cpu).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/run"), "on to the resume: {err}");
        // `baseline distill --resume` (a pixels teacher) of a generator run.
        let dir = tempfile::tempdir().unwrap();
        Trainer::create(&Config { data_dir: Some(fixture_dir()), ..Config::tiny() }, dir.path(), Device::Cpu)
            .unwrap()
            .save()
            .unwrap();
        let distill = TrainOptions {
            resume: Some(dir.path().into()),
            meta_iters: None,
            teacher: Some(TeacherKind::Pixels),
            ..options
        };
        let err = train_command(&distill, Device::Cpu).unwrap_err().to_string();
        let d = dir.path().display();
        assert_eq!(
            err,
            format!("{d}: holds a run of a generator teacher, expected a pixels teacher's; continue it with `gtn train --resume {d}`")
        );
    }

    /// --before-last-update scores as the reference does only a run of `bn_eval = "train"`,
    /// which a run already begun cannot become.
    #[test]
    fn scoring_before_the_last_update_needs_a_run_of_training_statistics() {
        let options = TrainOptions { eval_learners: 1, before_last_update: true, ..tiny_options() };
        let train = Config { bn_eval: crate::learner::BnEval::Train, ..Config::tiny() };
        assert!(check_before_last_update(&options, &train).is_ok());
        let batch = Config { bn_eval: crate::learner::BnEval::Batch, ..train };
        let err = check_before_last_update(&options, &batch).unwrap_err().to_string();
        assert!(
            err.ends_with("expected a run with `bn_eval = \"train\"` (a new run's --config), or this command without it, then `gtn eval DIR --bn-eval train --before-last-update`"),
            "{err}"
        );
        let err = check_before_last_update(&TrainOptions { eval_learners: 0, ..options }, &batch).unwrap_err();
        assert!(err.to_string().ends_with("expected K of 1 or more"), "{err}");
    }

    /// Sizes a new run's config asks of its data (its meta-loss batch, its validation split)
    /// are errors of the config, naming the --config file where the file sets that size.
    #[test]
    fn sizes_the_data_cannot_fill_name_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        let options = TrainOptions {
            out: Some(dir.path().join("run")),
            config: Some(file.clone()),
            data_dir: Some(fixture_dir()),
            ..tiny_options()
        };
        let shown = file.display();
        std::fs::write(&file, "meta_batch = 1000").unwrap();
        let err = format!("{:#}", train_command(&options, Device::Cpu).unwrap_err());
        assert!(
            err.starts_with(&format!("{shown}: config key `meta_batch` is 1000: more than the 400 training images")),
            "{err}"
        );
        std::fs::write(&file, "valid_size = 512").unwrap();
        let err = format!("{:#}", train_command(&options, Device::Cpu).unwrap_err());
        assert!(err.starts_with(&format!("{shown}: valid_size 512 (validation images")), "{err}");
        // The preset's size, not the file's: the file is not blamed.
        std::fs::write(&file, "outer_lr = 0.01").unwrap();
        let cpu = TrainOptions { preset: "cpu".into(), ..options };
        let err = format!("{:#}", train_command(&cpu, Device::Cpu).unwrap_err());
        assert!(err.starts_with("valid_size 10000 (mnist's default, validation images"), "{err}");
        assert!(!dir.path().join("run").exists());
    }
}
