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
//! - Tables on an object store (no `flock` there) are locked with a lock object beside the
//!   table, `<parent prefix>/.<name>.tidemark-writer.lock`, created with put-if-absent and
//!   naming its holder ([`crate::object_lock`]): a SIGKILLed holder's lock is broken by the next
//!   run on the same host; a holder on another host is never presumed dead (the refusal names
//!   the lock object to remove by hand).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::location::TableLocation;
use crate::object_lock::{ObjectLock, ObjectLockError};

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
    /// The lock object of a table on an object store.
    #[error(transparent)]
    Object(#[from] ObjectLockError),
}

/// A held writer lock; released when dropped or when the process dies.
#[derive(Debug)]
pub struct ReplicaLock {
    _file: File,
    path: PathBuf,
}

/// A held writer lock on a table anywhere: a local `flock` or an object store's lock object.
/// Release it with [`TableLock::release`] (dropping it releases a local lock at once and an
/// object lock in the background).
#[derive(Debug)]
pub enum TableLock {
    /// A local table's lock file.
    Local(ReplicaLock),
    /// The lock object beside a table on an object store.
    Object(ObjectLock),
}

impl TableLock {
    /// Locks `table` for `command` (named in the lock to say who holds it).
    pub async fn acquire(table: &TableLocation, command: &str) -> Result<Self, ReplicaLockError> {
        if let Some(dir) = table.local_dir() {
            return ReplicaLock::acquire_dir(dir, &table.to_string(), command).map(Self::Local);
        }
        let (path, uri) = object_lock_path(table);
        let lock = ObjectLock::acquire(
            table.store().clone(),
            path,
            &uri,
            &table.to_string(),
            command,
        )
        .await?;
        Ok(Self::Object(lock))
    }

    /// Releases the lock (deletes the lock object of a table on an object store).
    pub async fn release(self) {
        match self {
            Self::Local(lock) => drop(lock),
            Self::Object(lock) => {
                let uri = lock.uri().to_string();
                if let Err(e) = lock.release().await {
                    tracing::warn!(lock = %uri, "could not delete the lock object: {e}; the next run on this host breaks it");
                }
            }
        }
    }
}

/// The lock object of a table on an object store and its URI: beside the table, outside its
/// prefix (`<parent>/.<name>.tidemark-writer.lock`; a table at the bucket's root gets
/// `.tidemark-writer.lock` there).
pub fn object_lock_path(table: &TableLocation) -> (object_store::path::Path, String) {
    let parts: Vec<_> = table.root().parts().collect();
    let (parent, name) = match parts.split_last() {
        Some((name, parent)) => (
            parent.to_vec(),
            format!(".{}.tidemark-writer.lock", name.as_ref()),
        ),
        None => (vec![], ".tidemark-writer.lock".to_string()),
    };
    let path: object_store::path::Path = parent
        .into_iter()
        .chain(std::iter::once(object_store::path::PathPart::from(
            name.as_str(),
        )))
        .collect();
    let url = table.url();
    let base = url.trim_end_matches('/');
    let root = table.root().as_ref();
    let bucket = base
        .strip_suffix(root)
        .unwrap_or(base)
        .trim_end_matches('/');
    (path.clone(), format!("{bucket}/{path}"))
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

    #[test]
    fn the_lock_object_of_an_s3_table_lies_beside_it() {
        let t = crate::open_store("s3://bucket/tables/orders").unwrap();
        let (path, uri) = object_lock_path(&t);
        assert_eq!(path.as_ref(), "tables/.orders.tidemark-writer.lock");
        assert_eq!(uri, "s3://bucket/tables/.orders.tidemark-writer.lock");
        let t = crate::open_store("s3://bucket/orders").unwrap();
        assert_eq!(
            object_lock_path(&t).1,
            "s3://bucket/.orders.tidemark-writer.lock"
        );
    }
}
