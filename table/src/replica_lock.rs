//! The exclusive lock of one writer on a local replica (or restore destination).
//!
//! Two `tidemark replicate` runs into one replica would each take the other's in-flight
//! temporary files for leftovers of a crash and remove them, and race on the commit files.
//! The lock makes the second one fail fast instead, naming the holder.
//!
//! Invariants kept here:
//! - The lock is an `flock` on `<parent>/.<name>.tidemark-writer.lock`, a file *beside* the
//!   table directory, never inside it (a replica holds only what its source holds, and Delta
//!   readers and `diff -r` see nothing extra). The kernel releases it when the process dies, so
//!   a SIGKILL never leaves a stale lock; the file's content (pid, start time, command) is only
//!   there to name the holder.
//! - Tables on object stores have no such lock (no `flock` there); only local tables are
//!   locked.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::location::TableLocation;

/// Why a table could not be locked for writing.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaLockError {
    /// Another live process writes this table.
    #[error("{table} is being written by another tidemark process ({holder}, lock file {lock}): two writers into one replica would remove each other's files; stop the other one first")]
    Held {
        /// The table.
        table: String,
        /// The lock file.
        lock: PathBuf,
        /// What the holder wrote into the lock file.
        holder: String,
    },
    /// The lock file could not be created or locked.
    #[error("lock file {lock} of {table}: {op} failed: {source}")]
    Io {
        /// The table.
        table: String,
        /// The lock file.
        lock: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A held writer lock; released when dropped or when the process dies.
#[derive(Debug)]
pub struct ReplicaLock {
    _file: File,
    path: PathBuf,
}

impl ReplicaLock {
    /// The lock file of the local table directory `dir`.
    pub fn path_for(dir: &Path) -> PathBuf {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "table".into());
        tidemark_fs::parent_dir(dir).join(format!(".{name}.tidemark-writer.lock"))
    }

    /// Locks `table` for `command` (written into the lock file to name the holder). `Ok(None)`
    /// for a table that is not local (nothing to lock).
    pub fn acquire(table: &TableLocation, command: &str) -> Result<Option<Self>, ReplicaLockError> {
        let Some(dir) = table.local_dir() else {
            return Ok(None);
        };
        Self::acquire_dir(dir, &table.to_string(), command).map(Some)
    }

    /// Locks the local table directory `dir` (named `table` in errors).
    pub fn acquire_dir(dir: &Path, table: &str, command: &str) -> Result<Self, ReplicaLockError> {
        let path = Self::path_for(dir);
        let io = |op: &'static str| {
            let (table, lock) = (table.to_string(), path.clone());
            move |source| ReplicaLockError::Io {
                table,
                lock,
                op,
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create the directory of"))?;
        }
        let mut file = match tidemark_fs::try_lock_file(&path).map_err(io("lock"))? {
            tidemark_fs::LockAttempt::Acquired(file) => file,
            tidemark_fs::LockAttempt::Held { holder } => {
                return Err(ReplicaLockError::Held {
                    table: table.to_string(),
                    lock: path,
                    holder,
                });
            }
        };
        let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let who = format!(
            "pid {} started {started} running {command}",
            std::process::id()
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(who.as_bytes()))
            .map_err(io("write"))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("replica");
        let first = ReplicaLock::acquire_dir(&table, "replica", "tidemark replicate").unwrap();
        assert!(first.path().starts_with(dir.path()));
        assert!(
            !first.path().starts_with(&table),
            "the lock lives beside the table, not in it"
        );
        let err = ReplicaLock::acquire_dir(&table, "replica", "tidemark replicate").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReplicaLockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("replica"),
            "{msg}"
        );
        drop(first);
        ReplicaLock::acquire_dir(&table, "replica", "tidemark replicate").unwrap();
    }

    #[test]
    fn tables_of_other_names_in_one_directory_do_not_share_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _a = ReplicaLock::acquire_dir(&dir.path().join("a"), "a", "x").unwrap();
        ReplicaLock::acquire_dir(&dir.path().join("b"), "b", "x").unwrap();
    }
}
