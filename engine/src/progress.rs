//! Progress of long work (reading until caught up, replaying the WAL, loading or rebuilding
//! dedup state): a bar with records and % of the target when stderr is a terminal, otherwise
//! a plain log line at most every [`LOG_EVERY`] (log shippers get lines, not control codes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

/// Least time between two progress log lines when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// One piece of long work.
pub struct Progress {
    what: &'static str,
    target: u64,
    done: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

/// `done` as a share of `target` in percent (100 when the target is 0).
pub fn percent(done: u64, target: u64) -> f64 {
    if target == 0 {
        100.0
    } else {
        done as f64 * 100.0 / target as f64
    }
}

impl Progress {
    /// Starts reporting `what` towards `target` records.
    pub fn new(what: &'static str, target: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {human_pos}/{human_len} records ({percent}%) {per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar
        });
        info!(what, target, "started");
        let now = Instant::now();
        Self {
            what,
            target,
            done: 0,
            bar,
            started: now,
            last_log: now,
        }
    }

    /// `n` more records done.
    pub fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// `done` records done in all.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                if self.last_log.elapsed() >= LOG_EVERY {
                    self.last_log = Instant::now();
                    self.log("progress");
                }
            }
        }
    }

    fn log(&self, message: &'static str) {
        info!(
            what = self.what,
            records = self.done,
            target = self.target,
            percent = format!("{:.1}", percent(self.done, self.target)),
            secs = format!("{:.1}", self.started.elapsed().as_secs_f64()),
            "{message}"
        );
    }

    /// The work is over: clears the bar and logs the total.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.log("done");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_of_the_target() {
        assert_eq!(super::percent(50, 200), 25.0);
        assert_eq!(super::percent(0, 0), 100.0);
        let mut p = super::Progress::new("test", 10);
        p.add(4);
        p.add(6);
        assert_eq!(p.done, 10);
        p.finish();
    }
}
