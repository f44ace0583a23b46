//! The backup manifest: what one backup holds, written last and durably, so a backup directory
//! without a readable manifest is an unfinished backup and is never restored from.
//!
//! # On-disk format (version 1)
//!
//! `<DIR>/<backup id>/MANIFEST` is a one-line header followed by a JSON body:
//!
//! ```text
//! tidemark-backup-manifest 1 <body length in bytes> <SHA-256 of the body, 64 lowercase hex>\n
//! {"id": "...", "parent": null, "table_id": "...", ...}
//! ```
//!
//! - The header's magic word says what the file is; the number after it is the format
//!   version. A reader refuses a version it does not know (naming it) rather than guess.
//! - The length and the SHA-256 cover the body bytes exactly as written: a truncated,
//!   extended or bit-flipped manifest is refused as corrupt (naming what did not match),
//!   never half-read.
//! - The body is [`Manifest`] as JSON (field names as in the struct). Paths are relative to
//!   the table root, decoded (as on disk, not URL-encoded), with `/` separators; the
//!   backup's copy of a table file `p` is `<backup dir>/table/<p>`.
//! - Unknown body fields are ignored (additive changes keep version 1); a change that old
//!   readers would misread bumps [`FORMAT_VERSION`].
//!
//! The manifest is written with [`tidemark_fs::write_file_durably`] after every file it
//! lists has been copied and fsynced, so its presence means the backup is whole.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tidemark_fs::FileSystem;

/// The manifest's file name inside a backup directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The directory inside a backup that mirrors the table's files.
pub const TABLE_DIR: &str = "table";
/// The manifest format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "tidemark-backup-manifest";

/// Why a manifest could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading or writing the manifest file failed.
    #[error("manifest {path}: {source}")]
    Io {
        /// The manifest file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not start with the manifest header.
    #[error(
        "not a Tidemark backup manifest (no `{MAGIC} <version> <length> <sha256>` header line)"
    )]
    NotAManifest,
    /// Written by a newer (or unknown) format version.
    #[error("manifest format version {found} is not supported (this tidemark reads version {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// The body is shorter or longer than the header says.
    #[error("manifest is corrupt: the header says {expected} body bytes, the file holds {found}")]
    LengthMismatch {
        /// Length from the header.
        expected: u64,
        /// Length found.
        found: u64,
    },
    /// The body's checksum does not match the header's.
    #[error("manifest is corrupt: body SHA-256 is {found}, the header says {expected}")]
    ChecksumMismatch {
        /// Digest from the header.
        expected: Sha256Sum,
        /// Digest of the body read.
        found: Sha256Sum,
    },
    /// The body is not valid JSON for a manifest.
    #[error("manifest body is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// The body parsed but breaks an invariant of the format.
    #[error("manifest is inconsistent: {0}")]
    Invalid(String),
}

pub use crate::copy::Sha256Sum;

/// The SHA-256 of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> Sha256Sum {
    crate::copy::FileDigest::of_bytes(bytes).sha256
}

/// What a file in a backup is to the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FileRole {
    /// A data file (Parquet) the table references.
    Data,
    /// `_delta_log/<version>.json`.
    Commit {
        /// Its version.
        version: u64,
    },
    /// A checkpoint file (or one part of one) of `version`.
    Checkpoint {
        /// Its version.
        version: u64,
    },
    /// `_delta_log/_last_checkpoint` pointing at `version`.
    LastCheckpoint {
        /// The checkpoint version it names.
        version: u64,
    },
}

/// One file a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the table root (decoded, `/`-separated), e.g. `_delta_log/00000000000000000003.json`.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256Sum,
    /// What the file is.
    pub role: FileRole,
}

/// One table version whose commit a backup holds, with what the restore logic needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    /// The Delta version.
    pub version: u64,
    /// The commit's timestamp (commitInfo `timestamp`, else the file's modification time), ms
    /// since the epoch.
    pub timestamp_ms: i64,
    /// Data files this commit adds (relative, decoded).
    #[serde(default)]
    pub adds: Vec<String>,
    /// Data files this commit removes (relative, decoded).
    #[serde(default)]
    pub removes: Vec<String>,
}

/// A backup's name: unique in its directory, ordered by creation time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(String);

impl BackupId {
    /// `<created ms, 13+ digits>-<full|incr>-v<first>-v<last>`: sorts by creation time.
    pub fn new(created_ms: u64, full: bool, first: u64, last: u64) -> Self {
        let kind = if full { "full" } else { "incr" };
        Self(format!("{created_ms:013}-{kind}-v{first}-v{last}"))
    }

    /// An id read from a directory name or the command line.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a backup id (letters, digits, '-' and '_' only)"
            ))
        }
    }

    /// The id as text (the backup's directory name).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Everything one backup holds.
///
/// Invariants (checked by [`Manifest::validate`] on every read and before every write):
/// - a full backup has no parent and `first_version == last_version` (its snapshot version);
///   its `commits` is exactly that version (adds/removes empty: its data files *are* the
///   snapshot's live files); an incremental has a parent and its `commits` are exactly
///   `first_version..=last_version`, in order;
/// - file paths are unique, relative, without `..`, and every data file an incremental's
///   commit adds is among its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// This backup's id (its directory name).
    pub id: BackupId,
    /// The backup this one continues; `None` for a full backup.
    pub parent: Option<BackupId>,
    /// The table's `metaData.id`: a chain never mixes tables.
    pub table_id: String,
    /// Where the table was read from (for people; not used to restore).
    pub source: String,
    /// When the backup was taken, ms since the epoch.
    pub created_ms: u64,
    /// The oldest version this backup can restore on its own chain.
    pub first_version: u64,
    /// The newest version it holds.
    pub last_version: u64,
    /// The versions it holds, with timestamps and data file changes.
    pub commits: Vec<CommitEntry>,
    /// Every file it holds.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// True for a full backup (a snapshot; the root of a chain).
    pub fn is_full(&self) -> bool {
        self.parent.is_none()
    }

    /// Total bytes of the files it holds.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The entry for table file `path`, if this backup holds it.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Checks the invariants listed on [`Manifest`].
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(format!("backup {}: {m}", self.id)));
        if self.first_version > self.last_version {
            return bad(format!(
                "first version {} after last version {}",
                self.first_version, self.last_version
            ));
        }
        let versions: Vec<u64> = self.commits.iter().map(|c| c.version).collect();
        let expected: Vec<u64> = (self.first_version..=self.last_version).collect();
        if self.is_full() {
            if self.first_version != self.last_version {
                return bad("a full backup holds one snapshot version".into());
            }
            if self
                .commits
                .iter()
                .any(|c| !c.adds.is_empty() || !c.removes.is_empty())
            {
                return bad("a full backup's commit entry lists no adds or removes".into());
            }
        }
        if versions != expected {
            return bad(format!(
                "commit entries {versions:?} are not versions {}..={}",
                self.first_version, self.last_version
            ));
        }
        let mut paths = BTreeSet::new();
        for f in &self.files {
            if f.path.is_empty()
                || f.path.starts_with('/')
                || f.path
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
            {
                return bad(format!(
                    "file path {:?} is not a plain relative path",
                    f.path
                ));
            }
            if !paths.insert(f.path.as_str()) {
                return bad(format!("file {:?} listed twice", f.path));
            }
        }
        for c in &self.commits {
            for add in &c.adds {
                if !paths.contains(add.as_str()) {
                    return bad(format!(
                        "version {} adds {add:?}, which the backup does not hold",
                        c.version
                    ));
                }
            }
        }
        Ok(())
    }

    /// The manifest file's bytes (header + body), see the module docs.
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let body = serde_json::to_vec_pretty(self)?;
        let mut out = format!(
            "{MAGIC} {FORMAT_VERSION} {} {}\n",
            body.len(),
            sha256_of(&body)
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads manifest file bytes, refusing anything corrupt, unknown or inconsistent.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(ManifestError::NotAManifest)?;
        let header =
            std::str::from_utf8(&bytes[..newline]).map_err(|_| ManifestError::NotAManifest)?;
        let mut words = header.split(' ');
        if words.next() != Some(MAGIC) {
            return Err(ManifestError::NotAManifest);
        }
        let version: u32 = words
            .next()
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse().ok())
            .ok_or(ManifestError::NotAManifest)?;
        if version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion { found: version });
        }
        let (Some(len), Some(sum), None) = (words.next(), words.next(), words.next()) else {
            return Err(ManifestError::NotAManifest);
        };
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ManifestError::NotAManifest);
        }
        let len: u64 = len.parse().map_err(|_| ManifestError::NotAManifest)?;
        if !sum.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ManifestError::NotAManifest);
        }
        let sum: Sha256Sum = sum.parse().map_err(|_| ManifestError::NotAManifest)?;
        let body = &bytes[newline + 1..];
        if body.len() as u64 != len {
            return Err(ManifestError::LengthMismatch {
                expected: len,
                found: body.len() as u64,
            });
        }
        let found = sha256_of(body);
        if found != sum {
            return Err(ManifestError::ChecksumMismatch {
                expected: sum,
                found,
            });
        }
        let manifest: Manifest = serde_json::from_slice(body)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Writes `<backup dir>/MANIFEST` durably (temporary file, fsync, rename, directory
    /// fsync): the last step of a backup.
    pub fn write(&self, fs: &dyn FileSystem, backup_dir: &Path) -> Result<(), ManifestError> {
        let path = backup_dir.join(MANIFEST_FILE);
        let bytes = self.encode()?;
        tidemark_fs::write_file_durably(fs, &path, &bytes, true).map_err(|source| {
            ManifestError::Io {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Reads `<backup dir>/MANIFEST`; `Ok(None)` when there is none (an unfinished backup).
    pub fn read(backup_dir: &Path) -> Result<Option<Self>, ManifestError> {
        let path = backup_dir.join(MANIFEST_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManifestError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
