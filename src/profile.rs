//! libtorch's operator profiler around a region of code: a Chrome trace of every op and autograd
//! node (open it in chrome://tracing or ui.perfetto.dev) and a table of where the time went,
//! each op's own time without the ops it called.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

extern "C" {
    fn gtn_profile_last_error() -> *const c_char;
    fn gtn_profile_start() -> i32;
    fn gtn_profile_stop(path: *const c_char) -> i32;
}

/// One op name's share of a profiled region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpTime {
    pub name: String,
    pub calls: usize,
    /// Time inside the op minus time inside the ops it called, in seconds.
    pub self_seconds: f64,
}

/// Runs `f` under the profiler, writes its trace to `trace` (replacing it whole) and returns
/// `f`'s result with the ops sorted by their own time, longest first.
pub fn record<T>(trace: &Path, f: impl FnOnce() -> T) -> Result<(T, Vec<OpTime>)> {
    let mut out = None;
    crate::atomic::replace_with(trace, |tmp| {
        let c_path = CString::new(tmp.as_os_str().as_encoded_bytes())
            .with_context(|| format!("{}: a path with a NUL byte", trace.display()))?;
        // SAFETY: no arguments; failure is reported by the return value.
        if unsafe { gtn_profile_start() } != 0 {
            bail!("{}: cannot start libtorch's profiler: {}", trace.display(), last_error());
        }
        let value = f();
        // SAFETY: a NUL-terminated path, copied by the callee.
        if unsafe { gtn_profile_stop(c_path.as_ptr()) } != 0 {
            bail!("{}: cannot write the trace: {}", trace.display(), last_error());
        }
        let text =
            std::fs::read_to_string(tmp).with_context(|| format!("{}: cannot read the trace", trace.display()))?;
        out = Some((value, self_times(&text).with_context(|| format!("{}: not a trace", trace.display()))?));
        Ok(())
    })?;
    Ok(out.expect("replace_with ran the closure"))
}

/// libtorch's message for the call that just failed on this thread.
fn last_error() -> String {
    // SAFETY: set by the failed call on this thread; a NUL-terminated C string.
    unsafe { CStr::from_ptr(gtn_profile_last_error()) }.to_string_lossy().into_owned()
}

#[derive(Debug, Deserialize)]
struct Trace {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<Event>,
}

/// A complete ("X") event of a Chrome trace; times in microseconds.
#[derive(Debug, Deserialize)]
struct Event {
    name: String,
    #[serde(default)]
    ph: String,
    #[serde(default)]
    cat: String,
    #[serde(default)]
    ts: f64,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    tid: serde_json::Value,
}

/// Own time per op name: per thread, events sorted by start nest like a call stack, and each
/// event's duration is charged to it minus its children's.
fn self_times(trace: &str) -> Result<Vec<OpTime>> {
    let events = serde_json::from_str::<Trace>(trace)?.trace_events;
    let mut by_thread: HashMap<String, Vec<&Event>> = HashMap::new();
    // Ops and autograd nodes; the trace's own span ("Trace") would be charged the gaps.
    for e in events.iter().filter(|e| e.ph == "X" && e.cat == "cpu_op") {
        by_thread.entry(e.tid.to_string()).or_default().push(e);
    }
    let mut totals: HashMap<&str, (usize, f64)> = HashMap::new();
    for mut thread in by_thread.into_values() {
        // Longer first among equal starts, so a parent precedes a child that starts with it.
        thread.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(b.dur.total_cmp(&a.dur)));
        let mut stack: Vec<(&Event, f64)> = Vec::new();
        for e in thread {
            while stack.last().is_some_and(|(top, _)| e.ts >= top.ts + top.dur) {
                close(&mut stack, &mut totals);
            }
            stack.push((e, 0.0));
        }
        while !stack.is_empty() {
            close(&mut stack, &mut totals);
        }
    }
    let mut ops: Vec<OpTime> = totals
        .into_iter()
        .map(|(name, (calls, us))| OpTime { name: name.to_owned(), calls, self_seconds: us / 1e6 })
        .collect();
    ops.sort_by(|a, b| b.self_seconds.total_cmp(&a.self_seconds).then_with(|| a.name.cmp(&b.name)));
    Ok(ops)
}

/// Pops the innermost open event: its own time is its duration less its children's.
fn close<'a>(stack: &mut Vec<(&'a Event, f64)>, totals: &mut HashMap<&'a str, (usize, f64)>) {
    let (event, children) = stack.pop().expect("a non-empty stack");
    let total = totals.entry(event.name.as_str()).or_default();
    *total = (total.0 + 1, total.1 + event.dur - children);
    if let Some(parent) = stack.last_mut() {
        parent.1 += event.dur;
    }
}

/// A Markdown table of the `top` ops by own time, with their share of `total_seconds`.
pub fn table(ops: &[OpTime], top: usize, total_seconds: f64) -> String {
    let mut out = String::from("| op | calls | own s | share |\n|---|---|---|---|\n");
    for op in ops.iter().take(top) {
        out += &format!(
            "| {} | {} | {:.3} | {:.1}% |\n",
            op.name,
            op.calls,
            op.self_seconds,
            100.0 * op.self_seconds / total_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn nested_events_are_charged_their_own_time() {
        let trace = r#"{"traceEvents": [
            {"name": "span", "cat": "Trace", "ph": "X", "ts": 0, "dur": 20, "tid": 1},
            {"name": "outer", "cat": "cpu_op", "ph": "X", "ts": 0, "dur": 10, "tid": 1},
            {"name": "inner", "cat": "cpu_op", "ph": "X", "ts": 2, "dur": 3, "tid": 1},
            {"name": "inner", "cat": "cpu_op", "ph": "X", "ts": 6, "dur": 1, "tid": 1},
            {"name": "other", "cat": "cpu_op", "ph": "X", "ts": 0, "dur": 4, "tid": 2},
            {"name": "marker", "ph": "i", "ts": 3, "tid": 1}
        ]}"#;
        let ops = self_times(trace).unwrap();
        let get = |n: &str| ops.iter().find(|o| o.name == n).cloned().unwrap();
        assert_eq!(get("outer"), OpTime { name: "outer".into(), calls: 1, self_seconds: 6e-6 });
        assert_eq!(get("inner"), OpTime { name: "inner".into(), calls: 2, self_seconds: 4e-6 });
        assert_eq!(get("other").self_seconds, 4e-6);
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn records_libtorchs_ops_and_writes_the_trace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        let a = Tensor::randn([64, 64], (Kind::Float, tch::Device::Cpu));
        let (sum, ops) = record(&path, || a.matmul(&a).sum(Kind::Float).double_value(&[])).unwrap();
        assert!(sum.is_finite());
        assert!(ops.iter().any(|o| o.name == "aten::mm" && o.calls == 1), "{ops:?}");
        assert!(std::fs::read_to_string(&path).unwrap().contains("aten::mm"));
        let table = table(&ops, 3, 1.0);
        assert_eq!(table.lines().count(), 2 + 3.min(ops.len()));
    }

    #[test]
    fn an_unwritable_trace_path_is_named() {
        let err = record(Path::new("/nonexistent-folder/trace.json"), || ()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-folder"), "{err}");
    }
}
