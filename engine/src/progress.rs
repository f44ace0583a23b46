//! Progress of long work (reading until caught up, replaying the WAL, loading or rebuilding
//! dedup state): a bar with the amount done and % of the target when stderr is a terminal,
//! otherwise a plain log line at most every [`LOG_EVERY`] (log shippers get lines, not control
//! codes). Work done within [`QUIET_FOR`] shows nothing at all.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

/// Least time between two progress log lines when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Work that ends sooner than this shows no bar and logs no progress line.
pub const QUIET_FOR: Duration = Duration::from_secs(1);

/// One piece of long work.
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    target: u64,
    done: u64,
    terminal: bool,
    bar: Option<ProgressBar>,
    started: Instant,
    /// When a line was last logged (`None`: nothing shown yet).
    last_log: Option<Instant>,
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
    /// Starts reporting `what` towards `target` `unit`s (`records`, `keys`, `bytes`, ...).
    pub fn new(what: &'static str, unit: &'static str, target: u64) -> Self {
        Self {
            what,
            unit,
            target,
            done: 0,
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            started: Instant::now(),
            last_log: None,
        }
    }

    fn show_bar(&mut self) -> &ProgressBar {
        let (what, unit, target) = (self.what, self.unit, self.target);
        self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
            let template = format!(
                "{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{percent}}%) eta {{eta}}"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar
        })
    }

    /// `n` more records done.
    pub fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// `done` records done in all.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        if self.started.elapsed() < QUIET_FOR {
            return;
        }
        if self.terminal {
            self.show_bar().set_position(done);
        } else if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            self.last_log = Some(Instant::now());
            self.log("progress");
        }
    }

    fn log(&self, message: &'static str) {
        info!(
            what = self.what,
            unit = self.unit,
            done = self.done,
            target = self.target,
            percent = format!("{:.1}", percent(self.done, self.target)),
            secs = format!("{:.1}", self.started.elapsed().as_secs_f64()),
            "{message}"
        );
    }

    /// The work is over: clears the bar and, if progress was shown, logs the total.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.bar.is_some() || self.last_log.is_some() {
            self.log("done");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_of_the_target() {
        assert_eq!(super::percent(50, 200), 25.0);
        assert_eq!(super::percent(0, 0), 100.0);
        let mut p = super::Progress::new("test", "records", 10);
        p.add(4);
        p.add(6);
        assert_eq!(p.done, 10);
        p.finish();
    }
}
