//! Running the `gtn` binary from integration tests.

use std::process::{Command, Output};

pub fn gtn(args: &[&str]) -> Output {
    gtn_in(std::path::Path::new("."), args)
}

/// `gtn` run from the folder `cwd`: where default paths (`data/mnist`) lead nowhere.
pub fn gtn_in(cwd: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gtn")).current_dir(cwd).args(args).output().expect("the gtn binary runs")
}

pub fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "gtn failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one-line error a failing command prints.
pub fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "error should be one line: {err}");
    err
}
