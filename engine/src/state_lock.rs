//! The exclusive lock on a pipeline's state directory, and the ids of the runs that owned it.
//!
//! Invariants kept here:
//! - At most one process works on a state directory at a time: [`StateLock::acquire`] takes an
//!   `flock` on `<state>/LOCK` and holds it for the life of the returned value (the kernel drops
//!   it when the process dies, so a SIGKILL never leaves a stale lock). A second process fails
//!   fast with the pid, host and start time of the holder, and changes nothing.
//! - Every run that held the lock is listed in `<state>/runs` (one run id per line, appended
//!   and fsynced before the run writes any data file). Files named with one of these ids can
//!   only have been written by a process that is dead or is this one, so the start-up sweep may
//!   delete their uncommitted files; files of any other run id may belong to a live writer
//!   with another state directory and are left alone.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use tidemark_connectors::delta::RunId;

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another live process holds the lock.
    #[error("state directory {dir} is in use by another tidemark process ({holder}); two instances of one pipeline must not run at once: stop the other one first (or give this one another checkpoint.dir AND another pipeline_id)")]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// What the holder wrote into the lock file (pid, host, start time, run id).
        holder: String,
    },
    /// The lock file or the run list could not be read or written.
    #[error("state directory {path}: {op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StateLockError + 'a {
    move |source| StateLockError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The held lock on a state directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    dir: PathBuf,
    run: RunId,
    /// Run ids that held this directory before, this one included.
    runs: Vec<RunId>,
}

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "LOCK";
/// The run list's name inside the state directory.
pub const RUNS_FILE: &str = "runs";

impl StateLock {
    /// Creates `dir` if needed, takes its lock without waiting, records `run` in the run list.
    pub fn acquire(dir: &Path, run: RunId) -> Result<Self, StateLockError> {
        std::fs::create_dir_all(dir).map_err(io_err("create the state directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = match tidemark_fs::try_lock_file(&path)
            .map_err(io_err("lock the state directory", &path))?
        {
            tidemark_fs::LockAttempt::Acquired(file) => file,
            tidemark_fs::LockAttempt::Held { holder } => {
                return Err(StateLockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
        };
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = format!(
            "pid {}\nhost {}\nstarted_unix {started}\nrun {run}\n",
            std::process::id(),
            hostname(),
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io_err("write the lock file", &path))?;
        let runs = record_run(dir, &run)?;
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
            run,
            runs,
        })
    }

    /// This process's run id.
    pub fn run(&self) -> &RunId {
        &self.run
    }

    /// Every run id that held this state directory, this run's included: the runs whose
    /// uncommitted files the start-up sweep may delete.
    pub fn own_runs(&self) -> &[RunId] {
        &self.runs
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Who holds the lock of `dir` right now, if anyone (read-only, for `tidemark status`).
pub fn holder(dir: &Path) -> Option<String> {
    let path = dir.join(LOCK_FILE);
    let mut file = File::open(&path).ok()?;
    // SAFETY: flock on an fd we own; a shared non-blocking probe, released at once.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text.trim().replace('\n', ", "))
}

/// Appends `run` to the run list (fsynced) and returns the whole list. A line that is not a
/// run id (a torn append) is skipped: its run never wrote a file, since the append is
/// durable before a run writes anything.
fn record_run(dir: &Path, run: &RunId) -> Result<Vec<RunId>, StateLockError> {
    let path = dir.join(RUNS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err("read the run list", &path)(e)),
    };
    let mut runs: Vec<RunId> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    // After a torn append, start a fresh line so this run's id is not glued onto it.
    let line = if text.is_empty() || text.ends_with('\n') {
        format!("{run}\n")
    } else {
        format!("\n{run}\n")
    };
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err("open the run list", &path))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("append to the run list", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the state directory", dir))?;
    runs.push(*run);
    Ok(runs)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_the_runs_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), RunId::generate()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts like another process would.
        let e = StateLock::acquire(dir.path(), RunId::generate()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains(&first.run().to_string()),
            "{msg}"
        );
        assert!(holder(dir.path()).is_some());
        let first_run = *first.run();
        drop(first);
        assert_eq!(holder(dir.path()), None);
        // A torn last line of the run list is skipped, not an error.
        let runs = dir.path().join(RUNS_FILE);
        let mut text = std::fs::read_to_string(&runs).unwrap();
        text.push_str("12ab");
        std::fs::write(&runs, text).unwrap();
        let second = StateLock::acquire(dir.path(), RunId::generate()).unwrap();
        assert_eq!(second.own_runs(), &[first_run, *second.run()]);
        let second_run = *second.run();
        drop(second);
        // The id written after the torn line is read back by the next run.
        let third = StateLock::acquire(dir.path(), RunId::generate()).unwrap();
        assert_eq!(third.own_runs(), &[first_run, second_run, *third.run()]);
    }
}
