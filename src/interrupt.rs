//! Ctrl-C (or SIGTERM, as schedulers send before they kill) during meta-training: the first asks
//! the run to stop once its current iteration is done, save a checkpoint there and exit, so no
//! trained iteration is lost; a second, or one outside a training loop, ends the process at once
//! as it always would.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Whether a training loop is running that looks at [`requested`].
static ARMED: AtomicBool = AtomicBool::new(false);
/// The signal that asked for a stop; 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Runs `train` (a loop that checks [`requested`] between iterations) with the first Ctrl-C or
/// SIGTERM turned into a request to stop; before and after it, they end the process as usual.
pub fn graceful<T>(train: impl FnOnce() -> Result<T>) -> Result<T> {
    install()?;
    ARMED.store(true, Ordering::SeqCst);
    let result = train();
    ARMED.store(false, Ordering::SeqCst);
    match (result, requested()) {
        // Caught after the loop's last look: its run is complete, saved, and the stop still due.
        (Ok(_), Some(signal)) => Err(Interrupted { signal, what: "the run is complete and saved".to_owned() }.into()),
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

fn install() -> Result<()> {
    static INSTALLED: OnceLock<std::io::Result<()>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        for signal in [SIGINT, SIGTERM] {
            // SAFETY: the handler only touches atomics, write(2) and the default action, all
            // async-signal-safe.
            unsafe { signal_hook::low_level::register(signal, move || on_signal(signal)) }?;
        }
        Ok(())
    });
    installed.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("cannot catch Ctrl-C: {e}"))
}

fn on_signal(signal: i32) {
    let first = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    if ARMED.load(Ordering::SeqCst) && first {
        let note = b"\nstopping once this iteration is done, to save a checkpoint there (Ctrl-C again quits at once, losing it)\n";
        // SAFETY: a valid buffer of that length; write(2) is async-signal-safe (formatting and
        // eprintln!, which locks, are not).
        unsafe { libc::write(libc::STDERR_FILENO, note.as_ptr().cast(), note.len()) };
    } else {
        // Terminates (by the signal, as if never caught); an error would be an unknown signal.
        let _ = signal_hook::low_level::emulate_default_handler(signal);
    }
}

/// Ends iteration `done` of `total` `unit`s of the run in `dir`: `save`s it when `due` or when a
/// stop was requested, then stops with [`Interrupted`] if one was.
pub fn end_iteration(
    dir: &Path,
    unit: &'static str,
    done: usize,
    total: usize,
    due: bool,
    save: impl FnOnce() -> Result<()>,
) -> Result<()> {
    // Read once: a signal arriving after the save must not claim an unsaved iteration.
    let stop = requested();
    if due || stop.is_some() {
        save()?;
    }
    match stop {
        Some(signal) => {
            let next = if done < total { "the same command continues it" } else { "the run is complete" };
            Err(Interrupted { signal, what: format!("{} saved at {unit} {done} of {total}; {next}", dir.display()) }
                .into())
        }
        None => Ok(()),
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
