//! Progress of long copies and verifies: a bar on a terminal (indicatif, on stderr), plain
//! `tracing` lines otherwise (at most one every few seconds, and one at the end), so logs
//! and CI output stay readable.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

/// Progress of one piece of work measured in bytes.
#[derive(Debug)]
pub struct Progress {
    what: String,
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    last_log: Mutex<Instant>,
    started: Instant,
}

impl Progress {
    /// Starts showing `what` (e.g. "backup 1234-incr-v5-v9") over `total` bytes.
    pub fn bytes(what: impl Into<String>, total: u64) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.clone());
            bar
        });
        Self {
            what,
            total,
            done: AtomicU64::new(0),
            bar,
            last_log: Mutex::new(Instant::now()),
            started: Instant::now(),
        }
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                let Ok(mut last) = self.last_log.lock() else {
                    return;
                };
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    tracing::info!(
                        "{}: {} of {} bytes ({:.0}%)",
                        self.what,
                        done,
                        self.total,
                        100.0 * done as f64 / self.total.max(1) as f64
                    );
                }
            }
        }
    }

    /// The work is over.
    pub fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => tracing::info!(
                "{}: {} bytes in {:.1} s",
                self.what,
                done,
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}
