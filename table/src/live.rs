//! A table's live data files at one version with what backups and `verify` need beyond
//! [`crate::snapshot::Snapshot`]: the version that added each file, the table's
//! `metaData.id`, and the version's commit timestamp. Built on the snapshot's own pieces
//! ([`read_checkpoint`], [`Snapshot::apply`]): commits are replayed from version 0 when the
//! log holds them all, otherwise from the newest complete checkpoint at or before the
//! version (its files were added at or before the checkpoint's version).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::location::TableLocation;
use crate::log::{read_commit, AddFile, LogError, LogListing, ReplayFrom};
use crate::snapshot::{read_checkpoint, Snapshot};

/// Why the live files could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Reading or parsing the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// There is no table at the location.
    #[error("no Delta table at {table} (its _delta_log/ holds no commit)")]
    NoTable {
        /// The table.
        table: String,
    },
    /// The version is newer than the log's newest.
    #[error("table {table} has no version {version} (newest: {newest})")]
    NoSuchVersion {
        /// The table.
        table: String,
        /// Asked for.
        version: u64,
        /// The newest version.
        newest: u64,
    },
    /// The log no longer holds what replaying the version needs.
    #[error("table {table}: version {version} cannot be replayed: {reason}")]
    NotReplayable {
        /// The table.
        table: String,
        /// Asked for.
        version: u64,
        /// What is missing.
        reason: String,
    },
}

/// When a live file was added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddedIn {
    /// By the commit of this version.
    Version(u64),
    /// At or before this checkpoint's version (the older commits are no longer in the log).
    AtOrBefore(u64),
}

impl std::fmt::Display for AddedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Version(v) => write!(f, "version {v}"),
            Self::AtOrBefore(v) => write!(f, "version <= {v} (checkpoint)"),
        }
    }
}

/// Where the replay started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Every commit from version 0.
    Commits,
    /// This checkpoint, then the commits after it.
    Checkpoint(u64),
}

/// The live files of a table at one version, with their adding versions.
#[derive(Clone, Debug)]
pub struct LiveFiles {
    /// The snapshot (files by decoded path).
    pub snapshot: Snapshot,
    /// The version that added each live file, by decoded path.
    pub added_in: BTreeMap<String, AddedIn>,
    /// The table's `metaData.id`, when the replayed actions hold it.
    pub table_id: Option<String>,
    /// The version's commit timestamp (commitInfo, else the log file's modification time).
    pub timestamp_ms: i64,
    /// Where the replay started.
    pub base: Base,
}

impl LiveFiles {
    /// The live files with their adding versions, by decoded path.
    pub fn files(&self) -> impl Iterator<Item = (&AddFile, AddedIn)> {
        self.snapshot.files.iter().map(|(p, f)| {
            let added = self
                .added_in
                .get(p)
                .copied()
                .unwrap_or(AddedIn::Version(self.snapshot.version));
            (f, added)
        })
    }
}

/// The live files of `location` (as `listing` shows its log) at `version` (`None`: newest).
pub async fn live_files(
    location: &TableLocation,
    listing: &LogListing,
    version: Option<u64>,
) -> Result<LiveFiles, LiveError> {
    let table = location.to_string();
    let newest = listing.newest_version().ok_or_else(|| LiveError::NoTable {
        table: table.clone(),
    })?;
    let version = version.unwrap_or(newest);
    if version > newest {
        return Err(LiveError::NoSuchVersion {
            table,
            version,
            newest,
        });
    }
    let mut added_in = BTreeMap::new();
    let mut table_id = None;
    let from = replay_start(listing, &table, version)?;
    let (mut snapshot, base, first) = match from {
        ReplayFrom::Commits => (Snapshot::default(), Base::Commits, 0),
        ReplayFrom::Checkpoint(cp, parts) => {
            let snapshot = read_checkpoint(location, cp, parts).await?;
            for path in snapshot.files.keys() {
                added_in.insert(path.clone(), AddedIn::AtOrBefore(cp));
            }
            for part in parts {
                if table_id.is_none() {
                    table_id = checkpoint_metadata_id(location, &part.location).await;
                }
            }
            (snapshot, Base::Checkpoint(cp), cp + 1)
        }
    };
    let mut timestamp_ms = None;
    for v in first..=version {
        let bytes = read_commit(location, v).await?;
        if let Some(id) = metadata_id(&bytes.bytes) {
            table_id = Some(id);
        }
        let commit = bytes.parse(&table)?;
        for add in commit.adds() {
            added_in.insert(add.path.decoded.clone(), AddedIn::Version(v));
        }
        snapshot.apply(&commit);
        if v == version {
            timestamp_ms = commit.timestamp_ms();
        }
    }
    snapshot.version = version;
    added_in.retain(|p, _| snapshot.files.contains_key(p));
    let timestamp_ms = timestamp_ms
        .or_else(|| listing.commit(version).map(|f| f.last_modified_ms))
        .or_else(|| {
            listing
                .checkpoint(version)
                .and_then(|p| p.first())
                .map(|f| f.last_modified_ms)
        })
        .unwrap_or(0);
    Ok(LiveFiles {
        snapshot,
        added_in,
        table_id,
        timestamp_ms,
        base,
    })
}

/// The `metaData.id` in a commit file's bytes, if the commit sets the metadata.
pub fn metadata_id(commit: &[u8]) -> Option<String> {
    commit
        .split(|b| *b == b'\n')
        .filter(|l| l.windows(10).any(|w| w == b"\"metaData\""))
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find_map(|v| v.get("metaData")?.get("id")?.as_str().map(str::to_string))
}

/// The `metaData.id` a checkpoint part holds (`None` if it cannot be read: the id only
/// groups backups, a continuity check guards chains).
async fn checkpoint_metadata_id(
    location: &TableLocation,
    path: &object_store::path::Path,
) -> Option<String> {
    let bytes = location.store().get(path).await.ok()?.bytes().await.ok()?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .ok()?
        .build()
        .ok()?;
    for batch in reader {
        let batch = batch.ok()?;
        let Some(meta) = batch.column_by_name("metaData") else {
            continue;
        };
        let meta = meta.as_struct_opt()?;
        let ids = meta.column_by_name("id")?;
        let ids = ids.as_string_opt::<i32>()?;
        for row in 0..meta.len() {
            if meta.is_valid(row) && ids.is_valid(row) {
                return Some(ids.value(row).to_string());
            }
        }
    }
    None
}

/// Where replaying the log up to `version` starts, or why it cannot (shared by the live-file
/// replay and the restore's log state).
#[allow(clippy::result_large_err)] // the module's one error type, as its async functions return
pub(crate) fn replay_start<'a>(
    listing: &'a LogListing,
    table: &str,
    version: u64,
) -> Result<ReplayFrom<'a>, LiveError> {
    listing
        .replay_from(version)
        .map_err(|reason| LiveError::NotReplayable {
            table: table.to_string(),
            version,
            reason,
        })
}
