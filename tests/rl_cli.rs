//! End-to-end runs of `gtn rl` (training environments) with the `tiny` preset.

mod common;

use std::path::Path;

use common::{error_line, gtn, stdout};

/// CSV log rows without their last column (seconds).
fn log_rows(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("log.csv")).unwrap();
    text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
}

#[test]
fn rl_train_resume_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let dir = run.to_str().unwrap();
    let out = gtn(&["rl", "train", "--env", "cartpole", "--preset", "tiny", "--out", dir, "--threads", "2"]);
    assert!(stdout(&out).contains("es on cartpole"));
    for file in ["config.toml", "checkpoint.safetensors", "log.csv"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }

    // An interrupted run: 7 generations, then a row of an eighth that was logged but never
    // saved; resumed to 15 with another thread count, it ends where the uninterrupted run did.
    let part = tmp.path().join("part");
    let short = tmp.path().join("short.toml");
    std::fs::write(&short, "generations = 7\n").unwrap();
    let args = ["rl", "train", "--preset", "tiny", "--config", short.to_str().unwrap(), "--threads", "2"];
    stdout(&gtn(&[&args[..], &["--out", part.to_str().unwrap()]].concat()));
    let config = std::fs::read_to_string(part.join("config.toml")).unwrap();
    assert!(config.contains("generations = 7\n"), "{config}");
    std::fs::write(part.join("config.toml"), config.replace("generations = 7\n", "generations = 15\n")).unwrap();
    let mut log = std::fs::OpenOptions::new().append(true).open(part.join("log.csv")).unwrap();
    std::io::Write::write_all(&mut log, b"7,400.000,500.000,300.000,0.100000,0.500000,0.500000,1.000\n").unwrap();
    let resumed = stdout(&gtn(&["rl", "train", "--resume", part.to_str().unwrap(), "--threads", "1"]));
    assert!(resumed.contains("at generation 7"), "{resumed}");
    assert!(
        resumed.contains("done in ") && resumed.contains(&format!("; checkpoint in {}\n", part.display())),
        "{resumed}"
    );
    assert_eq!(
        std::fs::read_to_string(part.join("config.toml")).unwrap(),
        std::fs::read_to_string(run.join("config.toml")).unwrap()
    );
    assert_eq!(log_rows(&part), log_rows(&run), "logs differ apart from timings");
    assert_eq!(log_rows(&run).len(), 1 + 15);
    let checkpoint = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert!(checkpoint(&part) == checkpoint(&run), "the resumed run's checkpoint differs from the uninterrupted one's");

    let out = gtn(&["rl", "eval", dir, "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let value = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));
    let (mean, std) = (value("real_return_mean"), value("real_return_std"));
    let (untrained, untrained_std) = (value("untrained_return_mean"), value("untrained_return_std"));
    // The lib test's tiny run gains more than 20 on held-out policies; so must this one.
    assert!(mean > untrained + 20.0, "{report}");
    // 8 policies x 2 episodes of whole-step returns: the mean is a multiple of 1/16.
    assert_eq!((mean * 16.0).fract(), 0.0, "{report}");
    assert_eq!((&report["generation"], &report["generations"]), (&15.into(), &15.into()));
    let steps = report["baseline_steps_to_match"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let reached: Vec<f64> = steps.iter().filter_map(|s| s.as_f64()).collect();
    assert_eq!(report["baseline_reached"].as_u64(), Some(reached.len() as u64));
    let median = (!reached.is_empty()).then(|| gtn::eval::median(&reached));
    assert_eq!(report["baseline_steps_to_match_median"].as_f64(), median, "{report}");
    let table = stdout(&gtn(&["rl", "eval", dir]));
    assert!(table.contains(&format!("real return (greedy)       {mean:.1} ± {std:.1}\n")), "{table}\n{report}");
    assert!(table.contains(&format!("same, untrained teacher    {untrained:.1} ± {untrained_std:.1}\n")), "{table}");
    assert!(table.contains("REINFORCE to match it"));
    // What the teacher cost: every step of its candidates' episodes, 16 pairs x 4 policies x 2
    // episodes a generation; CartPole pays 1 per step, so each logged mean fitness x 256.
    let cost: u64 = log_rows(&run)[1..]
        .iter()
        .map(|row| (row.split(',').nth(1).unwrap().parse::<f64>().unwrap() * 256.0).round() as u64)
        .sum();
    assert!(cost >= 15 * 256, "at least one step an episode: {cost}");
    assert_eq!(report["teacher_real_steps"].as_u64(), Some(cost), "{report}");
    assert!(table.contains(&format!("the teacher's real cost    {cost} real steps, once")), "{table}");

    // The checkpoint keeps the config it was saved under: an edited outer_lr changes nothing
    // that `rl eval` reports, an edited seed is refused.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in ["config.toml", "checkpoint.safetensors", "log.csv"] {
        std::fs::copy(run.join(file), copy.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(copy.join("config.toml")).unwrap();
    let lowered = config.replace("\nouter_lr = 0.05\n", "\nouter_lr = 0.01\n");
    assert_ne!(lowered, config);
    std::fs::write(copy.join("config.toml"), &lowered).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(stdout(&gtn(&["rl", "eval", copy.to_str().unwrap(), "--json"])).trim()).unwrap();
    assert_eq!(again, report);
    // A run to be trained further is said to be unfinished; one policy's one episode has no spread.
    let longer = lowered.replace("\ngenerations = 15\n", "\ngenerations = 20\n");
    let one = longer
        .replace("\neval_policies = 8\n", "\neval_policies = 1\n")
        .replace("\neval_episodes = 2\n", "\neval_episodes = 1\n");
    assert!(longer != lowered && one != longer, "{config}");
    std::fs::write(copy.join("config.toml"), &one).unwrap();
    let table = stdout(&gtn(&["rl", "eval", copy.to_str().unwrap()]));
    assert!(
        table.contains("teacher after 15 of 20 generations (training unfinished): 1 fresh policy x 1 episode"),
        "{table}"
    );
    let single: serde_json::Value =
        serde_json::from_str(stdout(&gtn(&["rl", "eval", copy.to_str().unwrap(), "--json"])).trim()).unwrap();
    assert!(single["real_return_std"].is_null() && single["untrained_return_std"].is_null(), "{single}");
    // One policy's two episodes do have a spread.
    std::fs::write(copy.join("config.toml"), one.replace("\neval_episodes = 1\n", "\neval_episodes = 2\n")).unwrap();
    let two: serde_json::Value =
        serde_json::from_str(stdout(&gtn(&["rl", "eval", copy.to_str().unwrap(), "--json"])).trim()).unwrap();
    assert!(two["real_return_std"].is_f64() && two["untrained_return_std"].is_f64(), "{two}");
    std::fs::write(copy.join("config.toml"), lowered.replace("\nseed = 0\n", "\nseed = 5\n")).unwrap();
    let err = error_line(&gtn(&["rl", "eval", copy.to_str().unwrap()]));
    assert!(err.contains("config.toml: differs from the config its checkpoint was saved with in keys a run cannot change (seed 0 in its checkpoint"), "{err}");

    // The command that made the run, repeated, continues it; with another config it is refused.
    let again = gtn(&["rl", "train", "--env", "cartpole", "--preset", "tiny", "--out", dir, "--threads", "2"]);
    let again = stdout(&again);
    assert!(
        again.contains("holds this run, already complete (15 generations)") && !again.contains("es on cartpole"),
        "{again}"
    );
    let err = error_line(&gtn(&["rl", "train", "--preset", "tiny", "--seed", "7", "--out", dir]));
    assert!(
        err.contains("holds a run with another config (seed 0 there, 7 here); continue it with `gtn rl train --resume"),
        "{err}"
    );
    let err = error_line(&gtn(&["rl", "train", "--preset", "huge", "--out", tmp.path().join("x").to_str().unwrap()]));
    assert!(err.contains("--preset huge"), "{err}");
    let err = error_line(&gtn(&["rl", "eval", tmp.path().join("none").to_str().unwrap()]));
    assert!(err.ends_with("none: no such folder; expected a `gtn rl train` folder"), "{err}");
    let err = error_line(&gtn(&["rl", "eval", run.join("log.csv").to_str().unwrap()]));
    assert!(err.ends_with("log.csv: is a file; expected a folder (a `gtn rl train` run's)"), "{err}");
    std::fs::remove_file(copy.join("checkpoint.safetensors")).unwrap();
    let err = error_line(&gtn(&["rl", "eval", copy.to_str().unwrap()]));
    let missing = format!("checkpoint.safetensors: missing; expected the checkpoint of the run in {}", copy.display());
    assert!(err.ends_with(&missing), "{err}");
}

/// `--threads` is bounded: 2^31 overflowed libtorch's i32 and 100,000 hung starting threads.
#[test]
fn threads_out_of_range_is_a_one_line_error() {
    for value in ["0", "1025", "100000", "2147483648"] {
        let err = error_line(&gtn(&["--threads", value, "rl", "eval", "no-such-run"]));
        assert!(err.contains(&format!("invalid value '{value}' for '--threads <THREADS>'")), "{err}");
        assert!(err.ends_with("expected an integer from 1 to 1024"), "{err}");
    }
    // More than the machine's cores is allowed, with a warning (no test machine has 1,024).
    let out = gtn(&["--threads", "1024", "rl", "eval", "no-such-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("warning: --threads 1024: more than the "), "{stderr}");
}

/// Imitation's header names what its objective uses (no population, sigma or episodes), its
/// log holds the meta-loss, and a reference REINFORCE could not bring to 500 within the budget
/// is warned about on one line of stderr.
#[test]
fn rl_imitation_header_log_and_reference_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("im.toml");
    std::fs::write(&config, "objective = \"imitation\"\ngenerations = 2\nbaseline_budget = 2000\n").unwrap();
    let run = tmp.path().join("run");
    let args = ["rl", "train", "--preset", "tiny", "--config", config.to_str().unwrap(), "--threads", "1", "--out"];
    let out = gtn(&[&args[..], &[run.to_str().unwrap()]].concat());
    let text = stdout(&out);
    let header = text.lines().find(|l| l.starts_with("imitation on cartpole")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        header.starts_with("imitation on cartpole: T=4 x B=16, ")
            && header.ends_with(
                " parameters, exact meta-gradient of the cross-entropy to the reference's actions over 4 fresh policies per generation, Adam 0.05, 2 generations, 1 thread"
            ),
        "{header}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("REINFORCE did not solve CartPole within the run's first `baseline_budget`"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    assert!(log.starts_with("generation,meta_loss,grad_norm,"), "{log}");
    assert_eq!(log.lines().count(), 1 + 2);

    let reference = |text: &str| text.lines().find(|l| l.starts_with("imitation reference:")).unwrap().to_string();
    // `baseline_budget` may be edited in a run (it sizes `rl eval`'s baseline); the reference
    // stays the one learnt at the start, and so does its warning, when the run, lengthened, goes on.
    let stored = run.join("config.toml");
    let edited = std::fs::read_to_string(&stored)
        .unwrap()
        .replace("baseline_budget = 2000", "baseline_budget = 300000")
        .replace("\ngenerations = 2\n", "\ngenerations = 3\n");
    assert!(edited.contains("baseline_budget = 300000") && edited.contains("\ngenerations = 3\n"), "{edited}");
    std::fs::write(&stored, edited).unwrap();
    let again = gtn(&["rl", "train", "--resume", run.to_str().unwrap(), "--threads", "2"]);
    assert_eq!(reference(&stdout(&again)), reference(&text), "the stored reference, not a relearnt one");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.lines().filter(|l| l.starts_with("warning:")).collect::<Vec<_>>(), warnings, "{stderr}");
    // Complete, the run trains nothing and says no more than that.
    let complete = stdout(&gtn(&["rl", "train", "--resume", run.to_str().unwrap(), "--threads", "2"]));
    assert!(complete.contains("already complete (3 generations)") && !complete.contains("imitation"), "{complete}");
}

/// A sigma so large that every candidate's policies train to NaN stops ES at its first
/// generation (equal returns would give it a zero gradient for ever), with one line naming the
/// cause; the header writes the rate as given, not in 31 digits.
#[test]
fn a_population_of_diverged_policies_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("huge.toml");
    std::fs::write(&config, "sigma = 1e30\n").unwrap();
    let run = tmp.path().join("run");
    let args = ["rl", "train", "--preset", "tiny", "--config", config.to_str().unwrap(), "--threads", "1", "--out"];
    let out = gtn(&[&args[..], &[run.to_str().unwrap()]].concat());
    let header = String::from_utf8_lossy(&out.stdout);
    assert!(header.contains("(16 pairs, sigma 1e30), "), "{header}");
    let err = error_line(&out);
    assert!(
        err.starts_with("error: generation 0: training made all 128 policies of the population NaN or infinite")
            && err.ends_with(&format!(
                "lower sigma in {}/config.toml and run `gtn rl train --resume {}`",
                run.display(),
                run.display()
            )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(run.join("log.csv")).unwrap().lines().count(), 1, "nothing logged");
}
