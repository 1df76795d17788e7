//! Ctrl-C during training (meta-iterations, ES generations, NAS architectures), and SIGTERM (a
//! scheduler's, before it kills) or SIGHUP (the terminal closed): the first asks the run to stop
//! once its current iteration is done, save it there and exit, so no trained iteration is lost;
//! a second, or one outside a training loop, ends the process at once as it always would. A
//! signal the process was started ignoring (`nohup`'s SIGHUP, a script's background job's
//! Ctrl-C) stays ignored.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// What a training loop counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    MetaIteration = 1,
    Generation = 2,
    Architecture = 3,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::MetaIteration => "meta-iteration",
            Unit::Generation => "generation",
            Unit::Architecture => "architecture",
        }
    }
}

/// The [`Unit`] of the training loop running, which looks at [`requested`]; 0 while none is.
static ARMED: AtomicU8 = AtomicU8::new(0);
/// The signal that asked for a stop; 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The units the running loop's checkpoint holds, for a second signal's notice; `usize::MAX`
/// while no loop has said.
static SAVED: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Whether the stop's notice is printed (it comes from another thread).
static NOTICED: AtomicBool = AtomicBool::new(false);
/// What a signal outside a training loop, which quits at once, says the command keeps: set by a
/// command that goes on after its training (`gtn train`'s evaluation).
static KEPT_AFTER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A signal repeated within this time of the first is the same request: `timeout` sends its
/// signal twice (to the process, then to its group), and a person who reads the notice and
/// presses again takes longer.
const REPEAT: Duration = Duration::from_millis(500);

/// Runs `train` (a loop over `unit`s that calls [`save_point`] after each) with the first Ctrl-C,
/// SIGTERM or SIGHUP turned into a request to stop; before and after it, they end the process as
/// usual. Where signals cannot be caught, it warns and trains without.
pub fn graceful<T>(unit: Unit, train: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Err(e) = install() {
        tracing::warn!("cannot catch Ctrl-C ({e}): it will end training at once, back to the last checkpoint");
    }
    struct Armed;
    impl Drop for Armed {
        fn drop(&mut self) {
            ARMED.store(0, Ordering::SeqCst);
        }
    }
    let armed = Armed;
    ARMED.store(unit as u8, Ordering::SeqCst);
    let result = train();
    // Disarmed before the flag is read, as `on_signal` sets the flag before it reads `ARMED`:
    // a signal is then either seen here or ends the process.
    drop(armed);
    let result = match (result, requested()) {
        // Caught after the loop's last look: its run is complete and saved; the stop still holds.
        (Ok(_), Some(signal)) => Err(Interrupted {
            signal,
            what: "the run is complete and saved; the same command continues from there".to_owned(),
        }
        .into()),
        (result, _) => result,
    };
    if requested().is_some() {
        // The notice first, then the message saying where the run stopped.
        let start = Instant::now();
        while !NOTICED.load(Ordering::SeqCst) && start.elapsed() < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    result
}

/// The signal that asked the current run to stop, if one has.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Ends an iteration: `save`s it when `due` or when a stop was requested, and returns that stop's
/// signal, to be raised (as [`Interrupted::at`]) once the iteration is reported: saving first, as
/// a report can block on a terminal or pipe nobody reads.
pub fn save_point(due: bool, save: impl FnOnce() -> Result<()>) -> Result<Option<i32>> {
    // Read once: a signal arriving after the save must not claim an unsaved iteration.
    let stop = requested();
    if due || stop.is_some() {
        save()?;
    }
    Ok(stop)
}

/// Records that the training loop's checkpoint now holds its first `done` units, so a second
/// signal, which quits without saving, can say which the run keeps.
pub fn saved(done: usize) {
    SAVED.store(done, Ordering::SeqCst);
}

/// From here on, a signal outside a training loop quits saying what is `kept` (`quitting: the
/// teacher is saved in ...`), where it would end the command without a word.
pub fn quitting_keeps(kept: String) {
    *KEPT_AFTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
}

/// What a signal that quits at once says: what the `unit`s' loop leaves (a second signal), or
/// outside a loop what the command said it keeps, if it did.
fn quitting_notice(unit: Option<Unit>) -> Option<String> {
    match unit {
        Some(unit) => Some(kept(unit)),
        None => KEPT_AFTER.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|kept| format!("quitting: {kept}")),
    }
}

/// What a second signal, quitting at once, leaves of the `unit`s' loop.
fn kept(unit: Unit) -> String {
    match (unit, SAVED.load(Ordering::SeqCst)) {
        (Unit::Architecture, _) => "quitting: the results file keeps the records written".to_owned(),
        (_, usize::MAX) => "quitting: the run keeps its last saved checkpoint".to_owned(),
        (unit, done) => format!("quitting: the run keeps its last checkpoint ({} {done})", unit.name()),
    }
}

/// A run stopped at a [`requested`] signal, once saved.
#[derive(Debug, thiserror::Error)]
#[error("stopped: {what}")]
pub struct Interrupted {
    /// For the exit status: 128 + the signal, as if it had ended the process.
    pub signal: i32,
    what: String,
}

impl Interrupted {
    /// The run in `dir` stopped by `signal` after `done` of `total` `unit`s, saved there.
    pub fn at(dir: &Path, unit: Unit, done: usize, total: usize, signal: i32) -> Interrupted {
        let total = crate::text::count(total, unit.name());
        let what = format!("{} saved after {done} of {total}; the same command continues from there", dir.display());
        Interrupted { signal, what }
    }
}

fn install() -> std::result::Result<(), &'static std::io::Error> {
    static INSTALLED: OnceLock<std::io::Result<()>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let caught: Vec<i32> = [SIGINT, SIGTERM, SIGHUP].into_iter().filter(|&s| !ignored(s)).collect();
        // Handled on a thread of their own, where (unlike in a signal handler) the notice can be
        // printed through the progress bar, which would otherwise draw over it.
        let mut signals = signal_hook::iterator::Signals::new(caught)?;
        std::thread::Builder::new().name("signals".to_owned()).spawn(move || {
            let mut first: Option<Instant> = None;
            for signal in signals.forever() {
                if first.is_some_and(|at| at.elapsed() < REPEAT) {
                    continue;
                }
                first = first.or(Some(Instant::now()));
                on_signal(signal);
            }
        })?;
        Ok(())
    });
    installed.as_ref().map(|_| ())
}

/// Whether the process was started with `signal` ignored.
fn ignored(signal: i32) -> bool {
    // SAFETY: reads the current action into a zeroed struct of the right type; changes nothing.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == libc::SIG_IGN
    }
}

fn on_signal(signal: i32) {
    // The flag before `ARMED` is read: the order `graceful` relies on.
    let first = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    let unit = match ARMED.load(Ordering::SeqCst) {
        1 => Some(Unit::MetaIteration),
        2 => Some(Unit::Generation),
        3 => Some(Unit::Architecture),
        _ => None,
    };
    match (unit, first) {
        (Some(unit), true) => {
            // Short enough for one line of an 80-column terminal.
            let (name, again) = match signal {
                SIGINT => ("stopping", "Ctrl-C again: quit now"),
                SIGTERM => ("SIGTERM: stopping", "again: quit now"),
                _ => ("SIGHUP: stopping", "again: quit now"),
            };
            let notice = format!("{name} after this {} to save it; {again}", unit.name());
            // From a thread of its own: a terminal or pipe nobody reads would block this one,
            // and with it every later Ctrl-C.
            std::thread::spawn(move || {
                crate::progress::print_above_bar(&notice);
                NOTICED.store(true, Ordering::SeqCst);
            });
            return;
        }
        (unit, _) => {
            if let Some(notice) = quitting_notice(unit) {
                let (done, printed) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    crate::progress::print_above_bar(&notice);
                    let _ = done.send(());
                });
                let _ = printed.recv_timeout(Duration::from_millis(200));
            }
        }
    }
    // Ends the process by the signal, as if it were never caught (an error: an unknown signal).
    let _ = signal_hook::low_level::emulate_default_handler(signal);
}
