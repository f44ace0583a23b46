//! A table's live data files at one version, replayed from its log: what a full backup copies
//! and what `verify` checks. Built on [`crate::log`]: commits are replayed from version 0 when
//! the log still holds them all (so each file's adding version is known), otherwise from the
//! newest complete checkpoint at or before the version (files it lists were added at or
//! before the checkpoint's version).

use std::collections::BTreeMap;

use arrow::json::LineDelimitedWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::ObjectStoreExt;
use serde_json::Value;

use crate::location::TableLocation;
use crate::log::{action_from, read_commit, Action, FilePath, LogError, LogFileKind, LogListing};

/// Why a snapshot could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
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
    /// A checkpoint file could not be read.
    #[error("table {table}: checkpoint {file}: {reason}")]
    Checkpoint {
        /// The table.
        table: String,
        /// The checkpoint file.
        file: String,
        /// What went wrong.
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

/// One live data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveFile {
    /// Its path (decoded and as in the log).
    pub path: FilePath,
    /// The `add` action's size.
    pub size: u64,
    /// The `add` action's `numRecords`.
    pub num_records: Option<u64>,
    /// Which version added it.
    pub added_in: AddedIn,
}

/// How the snapshot was replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// Every commit from version 0.
    Commits,
    /// This checkpoint, then the commits after it.
    Checkpoint(u64),
}

/// A table's live files at one version.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The version.
    pub version: u64,
    /// The table's `metaData.id`, when the replayed actions hold it.
    pub table_id: Option<String>,
    /// The version's commit timestamp (commitInfo, else the commit file's modification time).
    pub timestamp_ms: i64,
    /// Live data files by decoded path.
    pub files: BTreeMap<String, LiveFile>,
    /// Where the replay started.
    pub base: Base,
}

/// Replays `location`'s log (as `listing` shows it) up to `version` (`None`: the newest).
pub async fn snapshot_at(
    location: &TableLocation,
    listing: &LogListing,
    version: Option<u64>,
) -> Result<Snapshot, SnapshotError> {
    let table = location.to_string();
    let newest = listing
        .newest_version()
        .ok_or_else(|| SnapshotError::NoTable {
            table: table.clone(),
        })?;
    let version = version.unwrap_or(newest);
    if version > newest {
        return Err(SnapshotError::NoSuchVersion {
            table,
            version,
            newest,
        });
    }
    let all_commits = (0..=version).all(|v| listing.commit(v).is_some());
    let mut files: BTreeMap<String, LiveFile> = BTreeMap::new();
    let mut table_id = None;
    let (base, first_commit) = if all_commits {
        (Base::Commits, 0)
    } else {
        let Some((cp, parts)) = listing.checkpoint_at_or_before(version) else {
            return Err(SnapshotError::NotReplayable {
                table,
                version,
                reason: format!(
                    "commits from {} are missing and no checkpoint at or before it exists",
                    listing.oldest_commit().unwrap_or(0)
                ),
            });
        };
        if let Some(gap) = (cp + 1..=version).find(|v| listing.commit(*v).is_none()) {
            return Err(SnapshotError::NotReplayable {
                table,
                version,
                reason: format!("commit {gap} after checkpoint {cp} is missing"),
            });
        }
        for part in parts {
            read_checkpoint_part(location, &part.location, cp, &mut files, &mut table_id).await?;
        }
        (Base::Checkpoint(cp), cp + 1)
    };
    let mut timestamp_ms = None;
    for v in first_commit..=version {
        let bytes = read_commit(location, v).await?;
        if table_id.is_none() {
            table_id = metadata_id(&bytes.bytes);
        }
        let commit = bytes.parse(&table)?;
        for action in &commit.actions {
            match action {
                Action::Add(add) => {
                    files.insert(
                        add.path.decoded.clone(),
                        LiveFile {
                            path: add.path.clone(),
                            size: add.size,
                            num_records: add.num_records,
                            added_in: AddedIn::Version(v),
                        },
                    );
                }
                Action::Remove(r) => {
                    files.remove(&r.path.decoded);
                }
                _ => {}
            }
        }
        if v == version {
            timestamp_ms = commit.timestamp_ms();
        }
    }
    let timestamp_ms = timestamp_ms
        .or_else(|| listing.commit(version).map(|f| f.last_modified_ms))
        .or_else(|| {
            listing
                .checkpoint(version)
                .and_then(|p| p.first())
                .map(|f| f.last_modified_ms)
        })
        .unwrap_or(0);
    Ok(Snapshot {
        version,
        table_id,
        timestamp_ms,
        files,
        base,
    })
}

/// The `metaData.id` in a commit file's bytes, if it sets the metadata.
pub fn metadata_id(commit: &[u8]) -> Option<String> {
    commit
        .split(|b| *b == b'\n')
        .filter(|l| l.windows(10).any(|w| w == b"\"metaData\""))
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find_map(|v| v.get("metaData")?.get("id")?.as_str().map(str::to_string))
}

/// Adds a checkpoint part's `add` rows to `files` (and the metadata id to `table_id`).
async fn read_checkpoint_part(
    location: &TableLocation,
    path: &object_store::path::Path,
    version: u64,
    files: &mut BTreeMap<String, LiveFile>,
    table_id: &mut Option<String>,
) -> Result<(), SnapshotError> {
    let table = location.to_string();
    let fail = |reason: String| SnapshotError::Checkpoint {
        table: table.clone(),
        file: path.to_string(),
        reason,
    };
    let name = path.filename().unwrap_or_default();
    if !matches!(crate::log::classify(name), LogFileKind::Checkpoint { .. })
        || !name.ends_with(".parquet")
    {
        return Err(fail("only Parquet checkpoints are read".into()));
    }
    let bytes = location
        .store()
        .get(path)
        .await
        .map_err(|e| fail(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| fail(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        let mut json = Vec::new();
        {
            let mut writer = LineDelimitedWriter::new(&mut json);
            writer.write(&batch).map_err(|e| fail(e.to_string()))?;
            writer.finish().map_err(|e| fail(e.to_string()))?;
        }
        for line in json.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let row: Value = serde_json::from_slice(line).map_err(|e| fail(e.to_string()))?;
            if let Some(add) = row.get("add").filter(|a| !a.is_null()) {
                if let Action::Add(add) = action_from("add", add).map_err(fail)? {
                    files.insert(
                        add.path.decoded.clone(),
                        LiveFile {
                            path: add.path,
                            size: add.size,
                            num_records: add.num_records,
                            added_in: AddedIn::AtOrBefore(version),
                        },
                    );
                }
            }
            if table_id.is_none() {
                *table_id = row
                    .get("metaData")
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
        }
    }
    Ok(())
}
