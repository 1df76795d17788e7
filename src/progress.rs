//! Progress of long runs (meta-iterations, ES generations, evaluated learners): bars with a plain-text fallback,
//! and CSV log rows.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The bar's own width, in characters between its brackets.
const BAR_WIDTH: usize = 10;

/// The columns a bar leaves its message on an 80-column terminal, at up to 10000/10000 units and
/// an eta of three characters ("59m"): 80 less the elapsed time (8), the bar and its brackets,
/// the count (11), the spaces between them (3) and " eta 59m" (8). What is longer is cut.
pub const MESSAGE_COLUMNS: usize = 80 - 8 - (BAR_WIDTH + 2) - 11 - 3 - 8;

pub struct Progress {
    bar: ProgressBar,
    visible: bool,
    /// Whether the bar is on a terminal, registered for [`print_above_bar`].
    drawn: bool,
    /// The rows' CSV header, printed before the first row.
    header: std::cell::Cell<Option<&'static str>>,
}

impl Progress {
    /// A bar over `total` units of which `done` are already done (a resumed run); hidden unless
    /// `visible`. Without a terminal, rows under the CSV `header` stand in for the bar.
    pub fn new(total: usize, done: usize, visible: bool, header: &'static str) -> Progress {
        let bar = if visible { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
        // The message is cut at the terminal's edge, to keep the bar one line at 80 columns.
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:{BAR_WIDTH}}}] {{pos}}/{{len}} {{wide_msg}} eta {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done as u64);
        // Otherwise the estimator counts the resumed units as done in an instant (eta 0s).
        bar.reset_eta();
        let drawn = !bar.is_hidden();
        if drawn {
            *DRAWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        }
        Progress { bar, visible, drawn, header: std::cell::Cell::new(Some(header)) }
    }

    pub fn set_length(&self, total: usize) {
        self.bar.set_length(total as u64);
    }

    /// Marks unit `index` done with a status `message`. Without a terminal (nohup, CI logs) the
    /// bar is invisible, so every 10th unit and the `last` one print `row()` to stderr instead.
    pub fn advance(&self, index: usize, last: bool, message: String, row: impl FnOnce() -> String) {
        self.bar.set_message(message);
        self.bar.inc(1);
        if self.visible && self.bar.is_hidden() && (index.is_multiple_of(10) || last) {
            if let Some(header) = self.header.take() {
                print_err(header);
            }
            print_err(&row());
        }
    }

    /// Prints one line to stderr, above the bar when it is drawn.
    pub fn note(&self, line: &str) {
        self.bar.suspend(|| print_err(line));
    }

    pub fn finish(&self) {
        self.bar.finish();
    }

    /// Finishes with the bar removed, for a step whose result the command prints next.
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    /// A run stopped early (Ctrl-C, an error) leaves the bar drawn where it stopped: dropped
    /// unfinished, indicatif would draw it full.
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
        if self.drawn {
            DRAWN.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

/// The bar drawn on the terminal, if one is, for [`print_above_bar`].
static DRAWN: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// Prints a line to stderr from any thread (Ctrl-C's notice): above the progress bar when one is
/// drawn, which would otherwise draw over it.
pub fn print_above_bar(line: &str) {
    let drawn = DRAWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match drawn {
        Some(bar) => bar.suspend(|| print_err(line)),
        None => print_err(line),
    }
}

/// Warns `message` unless this process has already: a check each phase of one command repeats
/// (`nas search`'s two scorings) says it once. Whether it warned.
pub fn warn_once(message: &str) -> bool {
    static SAID: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let new = SAID.lock().map_or(true, |mut said| said.insert(message.to_owned()));
    if new {
        tracing::warn!("{message}");
    }
    new
}

/// Prints a line to stderr, ignoring a failure (unlike `eprintln!`, which panics): progress must
/// not end a run whose stderr went away, e.g. a pipe into `tee` that Ctrl-C ended first, or a
/// terminal closed.
pub fn print_err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `text` to stdout, whose reader may be gone (`| head`, or a terminal closed, whose SIGHUP asks
/// the work to stop at its next save): `print!` would panic there, midway through work that
/// writes its results to files anyway. Any other failure (a full disk under `> file`) still ends
/// the process, as `print!` would.
pub fn print_out(text: &str) {
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe && crate::interrupt::requested().is_none() {
            panic!("failed printing to stdout: {e}");
        }
    }
}

/// `println!` that never panics: see [`print_out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::progress::print_out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Appends one row to a run's CSV log (one write, so a crash leaves whole rows; resuming drops
/// rows past the checkpoint), flushed to disk as the checkpoints are, so a power loss cannot
/// keep a checkpoint and lose the rows before it.
pub fn append_row(log: &Path, row: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .with_context(|| format!("{}: cannot open log", log.display()))?;
    file.write_all(format!("{row}\n").as_bytes()).with_context(|| format!("{}: cannot write", log.display()))?;
    file.sync_data().with_context(|| format!("{}: cannot flush to disk", log.display()))
}

/// Rewrites a run's CSV log (header `header`) for a resume at step `done`: the header and the
/// complete rows of the steps before it stay, anything a crash or a later step left goes (a
/// header torn or lost is written again). A missing log becomes the header alone; an unreadable
/// one is an error, never overwritten; one with another header (columns of another gtn version)
/// is kept beside it, renamed, and a new log starts. Rows lost are warned of (those just before
/// `done`: a log cut short).
pub fn truncate_log(log: &Path, header: &str, done: usize) -> Result<()> {
    if let Some(warning) = rewrite_log(log, header, done)? {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// `truncate_log`'s work; returns its warning.
fn rewrite_log(log: &Path, header: &str, done: usize) -> Result<Option<String>> {
    // Times logged in rows no longer there are not counted (compare's meta-training minutes).
    let mut warning = None;
    let read = std::fs::read_to_string(log);
    let mut text = match &read {
        Ok(text) => text.to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if done > 0 {
                warning = Some(format!(
                    "{}: missing; a new log starts at row {done} (the rows before it, and the time they logged, are gone)",
                    log.display()
                ));
            }
            format!("{header}\n")
        }
        Err(e) => anyhow::bail!("{}: cannot read: {e}", log.display()),
    };
    let original = read.ok();
    let first = text.lines().next().unwrap_or_default();
    let torn_header = header.starts_with(first) && text.lines().count() == 1;
    let is_row = first.split(',').next().is_some_and(|f| f.parse::<usize>().is_ok());
    if first != header && !first.is_empty() && !torn_header && !is_row {
        let kept = unused_sibling(log, "old");
        std::fs::rename(log, &kept)
            .with_context(|| format!("{}: cannot rename to {}", log.display(), kept.display()))?;
        warning = Some(format!(
            "{}: columns `{first}`, not `{header}` (another gtn version); kept as {}, a new log starts (the time logged before it is not counted)",
            log.display(),
            kept.display()
        ));
        text = format!("{header}\n");
    }
    let columns = header.split(',').count();
    let complete_row_before = |line: &str| {
        line.split(',').count() == columns
            && line.split(',').next().and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i < done)
    };
    let rows: Vec<&str> = text.lines().filter(|l| complete_row_before(l)).collect();
    // The rows before a checkpoint were written before it: ones missing just before it were
    // lost since (a log cut short); older gaps were warned of when they were made.
    let last = rows.iter().filter_map(|l| l.split(',').next()?.parse::<usize>().ok()).max();
    let from = last.map_or(0, |l| l + 1);
    if warning.is_none() && from < done {
        let (missing, them, they) = match done - 1 {
            last if last == from => (format!("row {from} is"), "it", "it"),
            last => (format!("rows {from} to {last} are"), "them", "they"),
        };
        warning = Some(format!(
            "{}: {missing} missing (the checkpoint is at {done}); the log goes on without {them}, and the time {they} logged is lost",
            log.display()
        ));
    }
    let kept: Vec<&str> = std::iter::once(header).chain(rows).collect();
    let kept = format!("{}\n", kept.join("\n"));
    // A log already as it should be is left alone: a complete run on a read-only mount resumes
    // (to say it is complete) without writing.
    if original.as_ref() != Some(&kept) {
        crate::atomic::write(log, kept.as_bytes())?;
    }
    Ok(warning)
}

/// `dir/name.tag.ext` (`log.old.csv` for `log.csv`), or with `-2`, `-3`, ... after the tag,
/// the first such path that does not exist.
fn unused_sibling(path: &Path, tag: &str) -> std::path::PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    (1..)
        .map(|n| {
            let suffix = if n == 1 { String::new() } else { format!("-{n}") };
            path.with_file_name(format!("{stem}.{tag}{suffix}{ext}"))
        })
        .find(|p| !p.exists())
        .expect("some number is free")
}

/// What a command tells the user on finding its run already in the `--out` folder: that it is
/// complete, or where it resumes (`done` of `total` `unit`s); nothing for a new run.
pub fn announce_reopened(dir: &Path, done: usize, total: usize, unit: &str) {
    if done == total {
        crate::outln!("{} holds this run, already complete ({})", dir.display(), crate::text::count(done, unit));
    } else if done > 0 {
        crate::outln!("{} holds this run: resuming at {unit} {done}", dir.display());
    }
}

/// What `--resume` tells the user: where the run resumes, or that it is complete.
pub fn announce_resumed(dir: &Path, done: usize, total: usize, unit: &str) {
    match done == total {
        true => crate::outln!("{}: already complete ({})", dir.display(), crate::text::count(done, unit)),
        false => crate::outln!("resuming {} at {unit} {done}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_repeated_is_given_once() {
        let message = "progress::tests: said once";
        assert_eq!(
            (warn_once(message), warn_once(message), warn_once("progress::tests: another")),
            (true, false, true)
        );
    }

    #[test]
    fn rewriting_a_log_returns_a_warning_for_rows_lost() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.csv");
        assert_eq!(rewrite_log(&log, "step,loss", 0).unwrap(), None, "a run that logged nothing yet");
        std::fs::remove_file(&log).unwrap();
        let warning = rewrite_log(&log, "step,loss", 3).unwrap().unwrap();
        assert!(
            warning.ends_with(
                "log.csv: missing; a new log starts at row 3 (the rows before it, and the time they logged, are gone)"
            ),
            "{warning}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "step,loss\n");
        std::fs::write(&log, "step,loss\n3,1.5\n4,1.4\n").unwrap();
        assert_eq!(rewrite_log(&log, "step,loss", 5).unwrap(), None, "a gap warned of when it was made");
        std::fs::write(&log, "step,loss\n0,2.5\n1").unwrap();
        let warning = rewrite_log(&log, "step,loss", 3).unwrap().unwrap();
        assert!(
            warning.ends_with(
                "log.csv: rows 1 to 2 are missing (the checkpoint is at 3); the log goes on without them, and the time they logged is lost"
            ),
            "{warning}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "step,loss\n0,2.5\n");
        // A log as it should be is not written again (a read-only run folder resumes).
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&log).unwrap().ino();
        assert_eq!(rewrite_log(&log, "step,loss", 1).unwrap(), None);
        assert_eq!(std::fs::metadata(&log).unwrap().ino(), inode, "rewritten");
        let warning = rewrite_log(&log, "step,loss", 2).unwrap().unwrap();
        assert!(warning.ends_with("log.csv: row 1 is missing (the checkpoint is at 2); the log goes on without it, and the time it logged is lost"));
        std::fs::write(&log, "step,loss,acc\n0,2.5,0.1\n").unwrap();
        let warning = rewrite_log(&log, "step,loss", 3).unwrap().unwrap();
        assert!(
            warning.contains("log.csv: columns `step,loss,acc`, not `step,loss` (another gtn version); kept as"),
            "{warning}"
        );
    }

    #[test]
    fn truncate_log_keeps_complete_rows_before_the_checkpoint_and_never_overwrites_an_unreadable_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.csv");
        std::fs::write(&log, "step,loss\n0,2.5\n1,2.0\n2,1.5\n3,1.").unwrap();
        truncate_log(&log, "step,loss", 2).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "step,loss\n0,2.5\n1,2.0\n");
        std::fs::write(&log, "step,loss\n0,2.5\n1\n").unwrap();
        truncate_log(&log, "step,loss", 5).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "step,loss\n0,2.5\n", "a torn row goes");
        std::fs::remove_file(&log).unwrap();
        truncate_log(&log, "step,loss", 3).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "step,loss\n");
        for torn in ["", "ste", "\n0,2.5\n"] {
            std::fs::write(&log, torn).unwrap();
            truncate_log(&log, "step,loss", 3).unwrap();
            let kept = if torn.contains("0,2.5") { "step,loss\n0,2.5\n" } else { "step,loss\n" };
            assert_eq!(std::fs::read_to_string(&log).unwrap(), kept, "{torn:?}");
        }
        for (n, kept) in ["log.old.csv", "log.old-2.csv"].iter().enumerate() {
            let older = format!("step,loss,acc\n0,2.5,0.{n}\n");
            std::fs::write(&log, &older).unwrap();
            truncate_log(&log, "step,loss", 3).unwrap();
            assert_eq!(std::fs::read_to_string(&log).unwrap(), "step,loss\n", "another version's columns");
            assert_eq!(std::fs::read_to_string(dir.path().join(kept)).unwrap(), older, "kept beside it");
        }
        let bytes = b"step,loss\n0,\xff\n";
        std::fs::write(&log, bytes).unwrap();
        let err = truncate_log(&log, "step,loss", 1).unwrap_err().to_string();
        assert!(err.contains("log.csv: cannot read"), "{err}");
        assert_eq!(std::fs::read(&log).unwrap(), bytes);
    }
}
