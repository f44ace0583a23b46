//! Crash points and a copy slow-down for replication crash tests, armed through the
//! environment, compiled in only with the `crash-points` cargo feature (the test binary's);
//! without it both are empty functions and the variables are ignored.
//!
//! - `TIDEMARK_CRASH_AT=<point>[@<n>]` SIGKILLs the process the n-th time (default: first) it
//!   reaches `<point>`: [`AFTER_DATA_FILE`], [`BEFORE_COMMIT_FILE`], [`AFTER_COMMIT_FILE`],
//!   [`AFTER_CHECKPOINT_FILE`]. Names of other crates' points are ignored here.
//! - `TIDEMARK_FAULT_COPY_DELAY_MS=<ms>` sleeps that long after every chunk a copy reads, so
//!   a kill at a random moment lands inside a file copy.

/// A data file of a version is copied and verified; its commit is not copied yet.
pub const AFTER_DATA_FILE: &str = "replicate_after_data_file";
/// Every data file of a version is in place; its commit file is not.
pub const BEFORE_COMMIT_FILE: &str = "replicate_before_commit_file";
/// A commit file is in place.
pub const AFTER_COMMIT_FILE: &str = "replicate_after_commit_file";
/// A checkpoint file (one part) is in place.
pub const AFTER_CHECKPOINT_FILE: &str = "replicate_after_checkpoint_file";

/// The crash-point variable.
pub const CRASH_ENV: &str = "TIDEMARK_CRASH_AT";
/// The copy slow-down variable.
pub const DELAY_ENV: &str = "TIDEMARK_FAULT_COPY_DELAY_MS";

/// Kills the process here if `point` is armed (crash-points builds only).
#[cfg(feature = "crash-points")]
pub fn hit(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var(CRASH_ENV) else {
        return;
    };
    let (name, nth) = match spec.split_once('@') {
        Some((name, n)) => (name, n.parse::<u64>().unwrap_or(1)),
        None => (spec.as_str(), 1),
    };
    if name != point {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        tracing::warn!(point, "crash point reached: SIGKILL");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Kills the process here if `point` is armed (crash-points builds only).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Sleeps for `TIDEMARK_FAULT_COPY_DELAY_MS` (crash-points builds only).
#[cfg(feature = "crash-points")]
pub fn copy_delay() {
    use std::sync::OnceLock;
    static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var(DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

/// Sleeps for `TIDEMARK_FAULT_COPY_DELAY_MS` (crash-points builds only).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn copy_delay() {}
