//! Ctrl-C (or SIGTERM, as schedulers send before they kill) during meta-training: the first asks
//! the run to stop once its current iteration is done, save a checkpoint there and exit, so no
//! trained iteration is lost; a second, or one outside a training loop, ends the process at once
//! as it always would. A signal the process was started ignoring (a background job of a script)
//! stays ignored.

use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::OnceLock;

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

/// What a training loop counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    MetaIteration = 1,
    Generation = 2,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::MetaIteration => "meta-iteration",
            Unit::Generation => "generation",
        }
    }
}

/// The [`Unit`] of the training loop running, which looks at [`requested`]; 0 while none is.
static ARMED: AtomicU8 = AtomicU8::new(0);
/// The signal that asked for a stop; 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Runs `train` (a loop over `unit`s that calls [`save_point`] after each) with the first Ctrl-C
/// or SIGTERM turned into a request to stop; before and after it, they end the process as usual.
pub fn graceful<T>(unit: Unit, train: impl FnOnce() -> Result<T>) -> Result<T> {
    install()?;
    ARMED.store(unit as u8, Ordering::SeqCst);
    let result = train();
    ARMED.store(0, Ordering::SeqCst);
    match (result, requested()) {
        // Caught after the loop's last look: its run is complete and saved; the stop still holds.
        (Ok(_), Some(signal)) => Err(Interrupted {
            signal,
            what: "the run is complete and saved; the same command continues from there".to_owned(),
        }
        .into()),
        (result, _) => result,
    }
}

/// The signal that asked the current run to stop, if one has.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Ends `done` of `total` `unit`s of the run in `dir`: `save`s it when `due` or when a stop was
/// requested, and returns that stop, to be raised once the iteration is reported (saving first:
/// reporting can fail, e.g. into a pipe whose reader the same Ctrl-C ended).
pub fn save_point(
    dir: &Path,
    unit: Unit,
    done: usize,
    total: usize,
    due: bool,
    save: impl FnOnce() -> Result<()>,
) -> Result<Option<Interrupted>> {
    // Read once: a signal arriving after the save must not claim an unsaved iteration.
    let stop = requested();
    if due || stop.is_some() {
        save()?;
    }
    Ok(stop.map(|signal| Interrupted {
        signal,
        what: format!(
            "{} saved after {done} of {}; the same command continues from there",
            dir.display(),
            crate::text::count(total, unit.name())
        ),
    }))
}

/// A run stopped at a [`requested`] signal, once saved.
#[derive(Debug, thiserror::Error)]
#[error("stopped: {what}")]
pub struct Interrupted {
    /// For the exit status: 128 + the signal, as if it had ended the process.
    pub signal: i32,
    what: String,
}

fn install() -> Result<()> {
    static INSTALLED: OnceLock<std::io::Result<()>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let caught: Vec<i32> = [SIGINT, SIGTERM].into_iter().filter(|&s| !ignored(s)).collect();
        // Signals are handled on a thread of their own, where (unlike in a signal handler) the
        // notice can be printed through the progress bar, which would otherwise draw over it.
        let mut signals = signal_hook::iterator::Signals::new(caught)?;
        std::thread::Builder::new().name("signals".to_owned()).spawn(move || {
            for signal in signals.forever() {
                on_signal(signal);
            }
        })?;
        Ok(())
    });
    installed.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("cannot catch Ctrl-C: {e}"))
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
    let first = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    let unit = match ARMED.load(Ordering::SeqCst) {
        0 => None,
        1 => Some(Unit::MetaIteration),
        _ => Some(Unit::Generation),
    };
    match (unit, first) {
        (Some(unit), true) => {
            // Short enough for one line of an 80-column terminal.
            let (name, again) = match signal {
                SIGTERM => ("SIGTERM: stopping", "another quits unsaved"),
                _ => ("stopping", "Ctrl-C again quits unsaved"),
            };
            crate::progress::print_above_bar(&format!("{name} after this {} to save it; {again}", unit.name()));
            return;
        }
        (Some(_), false) => crate::progress::print_above_bar("quitting: the run keeps its last saved checkpoint"),
        (None, _) => {}
    }
    // Ends the process by the signal, as if it were never caught (an error: an unknown signal).
    let _ = signal_hook::low_level::emulate_default_handler(signal);
}
