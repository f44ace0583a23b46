//! [`WalError`]: every WAL failure names the file (and offset, where there is one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A WAL operation that failed, naming the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O call failed.
    #[error("wal: {op} {path} failed: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A segment was written by a format version this build cannot read.
    #[error("wal: segment {path} has format version {found}; this build reads version {supported} (upgrade Tidemark)")]
    UnsupportedVersion {
        /// The segment.
        path: PathBuf,
        /// Version found.
        found: u16,
        /// Version supported.
        supported: u16,
    },
    /// A reader met a damaged frame (the log was damaged after it was opened).
    #[error("wal: segment {path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A frame is larger than the format allows.
    #[error("wal: payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// An earlier write, fsync, segment roll or truncation of this WAL failed, so what is on
    /// disk past the last acknowledged frame is unknown (a failed fsync may have dropped
    /// dirty pages: it must never be retried as if it could succeed). Every later write is
    /// refused until the WAL is reopened, whose scan finds the true end of the log.
    #[error("wal: refusing writes after an earlier failure on {path} ({cause}); reopen the WAL to go on")]
    Poisoned {
        /// The segment (or directory) the first failure was on.
        path: PathBuf,
        /// The first failure.
        #[source]
        cause: Arc<WalError>,
    },
}

impl WalError {
    /// The file or directory the error is about.
    pub fn path(&self) -> Option<&Path> {
        match self {
            WalError::Io { path, .. }
            | WalError::UnsupportedVersion { path, .. }
            | WalError::Corrupt { path, .. }
            | WalError::Poisoned { path, .. } => Some(path),
            WalError::TooLarge { .. } => None,
        }
    }
}

/// Maps an I/O error of `op` on `path` into a [`WalError::Io`].
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
