//! End-to-end runs of `gtn rl` (training environments) with the `tiny` preset.

mod common;

use common::{error_line, gtn, stdout};

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
    assert!(stdout(&gtn(&["rl", "train", "--resume", dir])).contains("resuming"));

    let out = gtn(&["rl", "eval", dir, "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let mean = report["real_return_mean"].as_f64().unwrap();
    assert!((1.0..=500.0).contains(&mean), "{report}");
    assert!(report["real_return_std"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["generation"], 15);
    let steps = report["baseline_steps_to_match"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let reached: Vec<f64> = steps.iter().filter_map(|s| s.as_f64()).collect();
    assert_eq!(report["baseline_reached"].as_u64(), Some(reached.len() as u64));
    let median = (!reached.is_empty()).then(|| gtn::eval::median(&reached));
    assert_eq!(report["baseline_steps_to_match_median"].as_f64(), median, "{report}");
    assert!(stdout(&gtn(&["rl", "eval", dir])).contains("REINFORCE to match it"));

    // The command that made the run, repeated, continues it; with another config it is refused.
    let again = gtn(&["rl", "train", "--env", "cartpole", "--preset", "tiny", "--out", dir, "--threads", "2"]);
    assert!(stdout(&again).contains("holds this run, already complete (15 generations)"));
    let err = error_line(&gtn(&["rl", "train", "--preset", "tiny", "--seed", "7", "--out", dir]));
    assert!(
        err.contains("holds a run with another config (seed 0 there, 7 here); continue it with `gtn rl train --resume"),
        "{err}"
    );
    let err = error_line(&gtn(&["rl", "train", "--preset", "huge", "--out", tmp.path().join("x").to_str().unwrap()]));
    assert!(err.contains("--preset huge"), "{err}");
    let err = error_line(&gtn(&["rl", "eval", tmp.path().join("none").to_str().unwrap()]));
    assert!(err.contains("config.toml: cannot read"), "{err}");
}

/// `--threads` is bounded: 2^31 overflowed libtorch's i32 and 100,000 hung starting threads.
#[test]
fn threads_out_of_range_is_a_one_line_error() {
    for value in ["0", "1025", "100000", "2147483648"] {
        let err = error_line(&gtn(&["--threads", value, "rl", "eval", "no-such-run"]));
        assert!(err.contains(&format!("invalid value '{value}' for '--threads <THREADS>'")), "{err}");
        assert!(err.contains("1..=1024"), "{err}");
    }
}
