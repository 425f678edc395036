//! Ctrl-C. While `train` runs its steps, the first one asks it to stop after the current
//! step: the run is saved (with --checkpoint) so that the same command continues it, the
//! --out staging directory is removed, and the program exits with status 130. Anywhere
//! else, and at a second Ctrl-C, it exits at once, removing any staging directory first.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::output;

/// Whether a stop request can be honoured now (train's step loop).
static GRACEFUL: AtomicBool = AtomicBool::new(false);
/// A stop was asked for.
static STOP: AtomicBool = AtomicBool::new(false);

/// The exit status of a program ended by Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT: i32 = 130;

/// Installs the handler (once, at start-up). Without one (the platform refused) Ctrl-C
/// keeps its default: the program ends at once.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted: stopping after this step (Ctrl-C again to quit at once)");
            return;
        }
        output::cleanup_on_panic();
        eprintln!("\ninterrupted");
        std::process::exit(EXIT);
    });
}

/// Ctrl-C stops at the next [`requested`] check while `on`, else ends the program.
pub fn graceful(on: bool) {
    GRACEFUL.store(on, Ordering::SeqCst);
}

/// Whether Ctrl-C asked the step loop to stop.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
