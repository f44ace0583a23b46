//! [`StoreError`] and its classification: what the engine may do after a failed open.
//!
//! Only [`StoreErrorKind::Corruption`] (damaged files, or a directory that is not a Tidemark
//! store) may take the engine's "store lost" path, which moves the store aside. A held lock
//! means another instance runs; anything else (permissions, disk full, too many open files)
//! may go away and must stop the process with the error, changing nothing.

use std::path::PathBuf;

use super::record::RecordError;

/// A failed store operation, naming the path and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("checkpoint store {path}: {op} failed: {source}")]
    Rocks {
        /// The operation.
        op: &'static str,
        /// The store directory.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// The store was written by a newer layout version.
    #[error("checkpoint store {path} has format version {found}; this build supports {supported} (upgrade Tidemark)")]
    NewerFormat {
        /// The store directory.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// A stored record cannot be read.
    #[error("checkpoint store {path}: {what}: {source}")]
    Record {
        /// The store directory.
        path: PathBuf,
        /// Which record.
        what: String,
        /// Why.
        source: RecordError,
    },
    /// A file-system operation of the store's own (not RocksDB's) failed.
    #[error("checkpoint store: {op} failed at {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The directory holds something that is not a Tidemark checkpoint store.
    #[error("checkpoint store {path}: {message}")]
    Foreign {
        /// The store directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What kind of failure a [`StoreError`] is: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The store's files are damaged, or the directory holds something that is not a
    /// Tidemark checkpoint store. The only kind that may count as "store lost".
    Corruption,
    /// RocksDB's `LOCK` is held: another process (or another open in this one) has the store.
    Locked,
    /// Written by a newer Tidemark: upgrade, never overwrite.
    NewerFormat,
    /// An I/O or resource failure that may go away (EACCES, ENOSPC, EMFILE, EIO, busy...):
    /// stop with it and change nothing.
    Transient,
}

impl StoreError {
    /// What kind of failure this is; see [`StoreErrorKind`].
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::Rocks { source, .. } => classify_rocks(source),
            StoreError::NewerFormat { .. }
            | StoreError::Record {
                source: RecordError::NewerVersion(_),
                ..
            } => StoreErrorKind::NewerFormat,
            StoreError::Record { .. } | StoreError::Foreign { .. } => StoreErrorKind::Corruption,
            StoreError::Io { .. } => StoreErrorKind::Transient,
        }
    }

    /// True only for damaged files or a foreign directory (see [`StoreErrorKind::Corruption`]).
    pub fn is_corruption(&self) -> bool {
        self.kind() == StoreErrorKind::Corruption
    }
}

/// Classifies a RocksDB error by its kind and message (the rules are on `classify`).
pub fn classify_rocks(e: &rocksdb::Error) -> StoreErrorKind {
    classify(e.kind(), e.as_ref())
}

/// Classifies a RocksDB error from its kind and message. RocksDB reports a held lock as an
/// I/O error naming the `LOCK` file, and a store file that CURRENT or the MANIFEST names but
/// that is gone (deleted by hand, a half-copied directory) as "No such file or directory":
/// the store is damaged. An `InvalidArgument` at open means the directory's RocksDB does not
/// match ours (other column families, another comparator): not a Tidemark store.
pub(crate) fn classify(kind: rocksdb::ErrorKind, message: &str) -> StoreErrorKind {
    use rocksdb::ErrorKind as K;
    match kind {
        K::Corruption | K::InvalidArgument => StoreErrorKind::Corruption,
        K::IOError if message.contains("While lock file") || message.contains("/LOCK:") => {
            StoreErrorKind::Locked
        }
        K::IOError | K::NotFound
            if message.contains("No such file or directory")
                && (message.contains("MANIFEST") || message.contains(".sst")) =>
        {
            StoreErrorKind::Corruption
        }
        _ => StoreErrorKind::Transient,
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    /// A record written by a newer build is an upgrade problem, never a corrupt store (which
    /// would be moved aside and replaced).
    #[test]
    fn a_newer_record_version_is_not_corruption() {
        let newer = StoreError::Record {
            path: "store".into(),
            what: "checkpoint 3".into(),
            source: RecordError::NewerVersion(9),
        };
        assert_eq!(newer.kind(), StoreErrorKind::NewerFormat);
        let damaged = StoreError::Record {
            path: "store".into(),
            what: "checkpoint 3".into(),
            source: RecordError::Damaged("short"),
        };
        assert!(damaged.is_corruption());
    }
}
