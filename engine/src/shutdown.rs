//! Stopping on request: the flag Ctrl-C / SIGTERM raise, read by the run loop, the connect
//! wait and the commit's retry loop (so a stop is never held up by a retry's backoff).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

/// A flag set by Ctrl-C / SIGTERM: the current epoch finishes, then the run stops.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag nobody has raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop after its current epoch.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`Shutdown::request`] was called.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Waits for Ctrl-C or SIGTERM and raises `shutdown`; a second signal exits at once. The
/// handlers are registered before this returns (a signal right after it is never the default
/// "terminate now").
pub fn install_signal_handlers(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            warn!("cannot listen for SIGTERM/SIGINT: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                info!("stop requested: finishing the current epoch, then stopping (signal again to exit at once)");
                shutdown.request();
            } else {
                warn!("second stop signal: exiting now; the unfinished epoch will be re-read on restart");
                std::process::exit(130);
            }
        }
    });
}
