//! A Delta table's `_delta_log/`, read version by version: which commits, checkpoints and
//! other log files are present ([`LogListing`]), and each commit's actions parsed as far as
//! copying and verifying need ([`Commit`], [`Action`]).
//!
//! The names in `_delta_log/` (Delta protocol, "Delta Log Entries" and "Checkpoints"):
//!
//! | name | what |
//! |---|---|
//! | `<v:020>.json` | commit `v`: newline-delimited JSON actions |
//! | `<v:020>.checkpoint.parquet` | single-part checkpoint of version `v` |
//! | `<v:020>.checkpoint.<part:010>.<parts:010>.parquet` | part of a multi-part checkpoint |
//! | `<v:020>.checkpoint.<uuid>.(json\|parquet)` | V2 checkpoint (its sidecars in `_sidecars/`) |
//! | `<v:020>.crc` | optional checksum file of version `v` |
//! | `<a:020>.<b:020>.compacted.json` | optional log compaction of versions `a..=b` |
//! | `_last_checkpoint` | a hint: the newest checkpoint's version (and parts) |
//!
//! Anything else (temporary files of writers, hidden files) is [`LogFileKind::Other`].
//!
//! Paths in `add`/`remove`/`cdc` actions are URIs relative to the table root, percent-encoded
//! (RFC 2396): [`FilePath`] keeps both the encoded form (as in the log) and the decoded one (the
//! object's real name).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde_json::Value;

use crate::location::TableLocation;

/// Reading or parsing a table's log failed; each variant names the table and the file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Listing `_delta_log/` failed.
    #[error("table {table}: cannot list {dir}: {source}")]
    List {
        /// The table.
        table: String,
        /// The log directory.
        dir: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Reading a log file failed.
    #[error("table {table}: cannot read {file}: {source}")]
    Read {
        /// The table.
        table: String,
        /// The file.
        file: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A commit the caller asked for is not in the log.
    #[error("table {table}: version {version} is not in the log ({file} missing)")]
    MissingVersion {
        /// The table.
        table: String,
        /// The version.
        version: u64,
        /// The file expected.
        file: String,
    },
    /// A line of a log file is not a valid action.
    #[error("table {table}: {file} line {line}: {reason}")]
    Parse {
        /// The table.
        table: String,
        /// The file.
        file: String,
        /// 1-based line number (0 for a checkpoint row).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// What a file in `_delta_log/` is, by its name (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFileKind {
    /// `<v>.json`.
    Commit {
        /// The version.
        version: u64,
    },
    /// A checkpoint file (one part of it, for multi-part checkpoints).
    Checkpoint {
        /// The version it captures.
        version: u64,
        /// `(part, parts)` of a multi-part checkpoint, 1-based; `None` for single files.
        part: Option<(u32, u32)>,
    },
    /// `<v>.crc`.
    Checksum {
        /// The version.
        version: u64,
    },
    /// `<a>.<b>.compacted.json`.
    Compacted {
        /// First version covered.
        from: u64,
        /// Last version covered.
        to: u64,
    },
    /// `_last_checkpoint`.
    LastCheckpoint,
    /// Anything else (temporary files, hidden files, unknown names).
    Other,
}

fn version_of(s: &str) -> Option<u64> {
    (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn part_number(s: &str) -> Option<u32> {
    (s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Classifies a file name of `_delta_log/`.
pub fn classify(name: &str) -> LogFileKind {
    if name == "_last_checkpoint" {
        return LogFileKind::LastCheckpoint;
    }
    let fields: Vec<&str> = name.split('.').collect();
    let Some(version) = fields.first().and_then(|f| version_of(f)) else {
        return LogFileKind::Other;
    };
    match fields.as_slice() {
        [_, "json"] => LogFileKind::Commit { version },
        [_, "crc"] => LogFileKind::Checksum { version },
        [_, "checkpoint", "parquet"] => LogFileKind::Checkpoint {
            version,
            part: None,
        },
        [_, "checkpoint", part, parts, "parquet"] => {
            match (part_number(part), part_number(parts)) {
                (Some(p), Some(n)) if p >= 1 && p <= n => LogFileKind::Checkpoint {
                    version,
                    part: Some((p, n)),
                },
                _ => LogFileKind::Other,
            }
        }
        // V2 checkpoints: <v>.checkpoint.<uuid>.json|parquet.
        [_, "checkpoint", id, "json" | "parquet"] if id.len() == 36 => LogFileKind::Checkpoint {
            version,
            part: None,
        },
        [_, to, "compacted", "json"] => match version_of(to) {
            Some(to) if to >= version => LogFileKind::Compacted { from: version, to },
            _ => LogFileKind::Other,
        },
        _ => LogFileKind::Other,
    }
}

/// The name of commit `version`'s file.
pub fn commit_file_name(version: u64) -> String {
    format!("{version:020}.json")
}

/// One file of `_delta_log/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// What it is.
    pub kind: LogFileKind,
    /// Its name inside `_delta_log/`.
    pub name: String,
    /// Its object path in the table's store.
    pub location: Path,
    /// Its size in bytes, as listed.
    pub size: u64,
    /// Last modified, milliseconds since the epoch, as listed.
    pub last_modified_ms: i64,
}

impl LogFile {
    fn from_meta(meta: ObjectMeta) -> Option<Self> {
        let name = meta.location.filename()?.to_string();
        Some(Self {
            kind: classify(&name),
            name,
            size: meta.size,
            last_modified_ms: meta.last_modified.timestamp_millis(),
            location: meta.location,
        })
    }
}

/// What `_delta_log/` holds, by kind and version. Files in subdirectories (`_sidecars/`,
/// `_staged_commits/`) are listed under [`LogListing::other`].
#[derive(Debug, Clone, Default)]
pub struct LogListing {
    table: String,
    commits: BTreeMap<u64, LogFile>,
    checkpoints: BTreeMap<u64, Vec<LogFile>>,
    checksums: BTreeMap<u64, LogFile>,
    last_checkpoint: Option<LogFile>,
    other: Vec<LogFile>,
}

/// Where a replay of a table's log starts ([`LogListing::replay_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom<'a> {
    /// Commit 0: every commit up to the version is in the log.
    Commits,
    /// This complete checkpoint (its version and parts), then every later commit.
    Checkpoint(u64, &'a [LogFile]),
}

impl LogListing {
    /// Lists `location`'s `_delta_log/` (empty when the table does not exist).
    pub async fn list(location: &TableLocation) -> Result<Self, LogError> {
        let dir = location.log_dir();
        let metas: Vec<ObjectMeta> = location
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                source => Err(LogError::List {
                    table: location.to_string(),
                    dir: dir.to_string(),
                    source,
                }),
            })?;
        Ok(Self::of_files(location, metas))
    }

    /// Lists the newest part of `location`'s `_delta_log/`: from the checkpoint
    /// `_last_checkpoint` names on (all a snapshot of the newest version reads), skipping
    /// the older entries by name (the durable store's offset listing), so the cost follows
    /// the commits since that checkpoint, not the history the log retention keeps. The whole
    /// log ([`LogListing::list`]) when there is no readable hint, or no complete checkpoint
    /// at its version.
    pub async fn list_newest(location: &TableLocation) -> Result<Self, LogError> {
        let dir = location.log_dir();
        let hint = match location
            .store()
            .get(&dir.clone().join("_last_checkpoint"))
            .await
        {
            Ok(got) => got.bytes().await.ok().and_then(|b| {
                serde_json::from_slice::<Value>(&b)
                    .ok()?
                    .get("version")?
                    .as_u64()
            }),
            Err(_) => None,
        };
        let Some(version) = hint else {
            return Self::list(location).await;
        };
        let offset = dir.clone().join(format!("{version:020}").as_str());
        let metas: Vec<ObjectMeta> = location
            .store()
            .list_with_offset(Some(&dir), &offset)
            .try_collect()
            .await
            .map_err(|source| LogError::List {
                table: location.to_string(),
                dir: dir.to_string(),
                source,
            })?;
        let listing = Self::of_files(location, metas);
        if listing.checkpoint_at_or_before(version).map(|(v, _)| v) != Some(version) {
            return Self::list(location).await;
        }
        Ok(listing)
    }

    fn of_files(location: &TableLocation, metas: Vec<ObjectMeta>) -> Self {
        let dir = location.log_dir();
        let mut listing = Self {
            table: location.to_string(),
            ..Self::default()
        };
        for meta in metas {
            let direct = meta.location.prefix_match(&dir).map(|p| p.count()) == Some(1);
            let Some(file) = LogFile::from_meta(meta) else {
                continue;
            };
            if !direct {
                listing.other.push(file);
                continue;
            }
            listing.insert(file);
        }
        for parts in listing.checkpoints.values_mut() {
            parts.sort_by(|a, b| a.name.cmp(&b.name));
        }
        listing
    }

    fn insert(&mut self, file: LogFile) {
        match file.kind {
            LogFileKind::Commit { version } => {
                self.commits.insert(version, file);
            }
            LogFileKind::Checkpoint { version, .. } => {
                self.checkpoints.entry(version).or_default().push(file)
            }
            LogFileKind::Checksum { version } => {
                self.checksums.insert(version, file);
            }
            LogFileKind::LastCheckpoint => self.last_checkpoint = Some(file),
            LogFileKind::Compacted { .. } | LogFileKind::Other => self.other.push(file),
        }
    }

    /// The table, as named in errors.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// True when the log holds no commit and no checkpoint (no table there).
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty() && self.checkpoints.is_empty()
    }

    /// The newest version the log can serve: its newest commit, or its newest complete
    /// checkpoint if that is newer (a log cleaned up to a checkpoint).
    pub fn newest_version(&self) -> Option<u64> {
        let commit = self.commits.keys().next_back().copied();
        let checkpoint = self.complete_checkpoints().map(|(v, _)| v).next_back();
        commit.max(checkpoint)
    }

    /// The oldest commit file present.
    pub fn oldest_commit(&self) -> Option<u64> {
        self.commits.keys().next().copied()
    }

    /// Commit `version`'s file, if present.
    pub fn commit(&self, version: u64) -> Option<&LogFile> {
        self.commits.get(&version)
    }

    /// Every commit file, by version.
    pub fn commits(&self) -> impl DoubleEndedIterator<Item = (u64, &LogFile)> {
        self.commits.iter().map(|(v, f)| (*v, f))
    }

    /// The checksum file (`<v>.crc`) of `version`, if present.
    pub fn checksum(&self, version: u64) -> Option<&LogFile> {
        self.checksums.get(&version)
    }

    /// Every checkpoint whose parts are all present (a single file, a V2 checkpoint, or parts
    /// `1..=n` of an `n`-part checkpoint), oldest first.
    pub fn complete_checkpoints(&self) -> impl DoubleEndedIterator<Item = (u64, &[LogFile])> {
        self.checkpoints
            .iter()
            .filter(|(_, files)| checkpoint_is_complete(files))
            .map(|(v, files)| (*v, files.as_slice()))
    }

    /// The files of the complete checkpoint of `version`, if there is one.
    pub fn checkpoint(&self, version: u64) -> Option<&[LogFile]> {
        self.checkpoints
            .get(&version)
            .filter(|files| checkpoint_is_complete(files))
            .map(Vec::as_slice)
    }

    /// The newest complete checkpoint at or before `version`.
    pub fn checkpoint_at_or_before(&self, version: u64) -> Option<(u64, &[LogFile])> {
        self.complete_checkpoints()
            .rev()
            .find(|(v, _)| *v <= version)
    }

    /// Where a replay of the log up to `version` starts: every commit from 0 when the log still
    /// holds them all, else the newest complete checkpoint at or before `version` followed by
    /// every later commit. `Err` says why the log holds neither (a cleaned-up log, a gap).
    pub fn replay_from(&self, version: u64) -> Result<ReplayFrom<'_>, String> {
        if (0..=version).all(|v| self.commit(v).is_some()) {
            return Ok(ReplayFrom::Commits);
        }
        let Some((cp, parts)) = self.checkpoint_at_or_before(version) else {
            return Err(format!(
                "the log starts at commit {} and holds no checkpoint at or before it",
                self.oldest_commit().unwrap_or(0)
            ));
        };
        if let Some(gap) = (cp + 1..=version).find(|v| self.commit(*v).is_none()) {
            return Err(format!("commit {gap} after checkpoint {cp} is missing"));
        }
        Ok(ReplayFrom::Checkpoint(cp, parts))
    }

    /// Where the longest replay that reaches the newest version starts (a vacuum wants every
    /// version it can still see): `Ok(None)` from commit 0 when every commit is there, else
    /// `Ok(Some(cp))`, the oldest complete checkpoint followed by an unbroken run of commits up
    /// to the newest version. `Err(v)`: no such start; version `v` is missing (a gap after
    /// every checkpoint, e.g. a log cleanup deleting files in listing order, not version
    /// order, seen half done). An empty log starts from 0.
    ///
    /// Not the oldest commit present: a gap above it (which a cleanup in progress leaves) would
    /// make the replay read a commit that is gone.
    pub fn oldest_replay_start(&self) -> Result<Option<u64>, u64> {
        let Some(newest) = self.newest_version() else {
            return Ok(None);
        };
        // The oldest version from which every commit up to the newest version is present
        // (`newest + 1` when the newest version is a checkpoint without its commit).
        let mut first = newest + 1;
        while self.commit(first - 1).is_some() {
            first -= 1;
            if first == 0 {
                return Ok(None);
            }
        }
        self.complete_checkpoints()
            .map(|(v, _)| v)
            .find(|v| v + 1 >= first && *v <= newest)
            .map(Some)
            .ok_or(first - 1)
    }

    /// `_last_checkpoint`, if present.
    pub fn last_checkpoint(&self) -> Option<&LogFile> {
        self.last_checkpoint.as_ref()
    }

    /// Other files (unknown names, temporary files, subdirectories, compactions).
    pub fn other(&self) -> &[LogFile] {
        &self.other
    }

    /// Versions missing between the oldest and the newest commit file (a damaged log).
    pub fn commit_gaps(&self) -> Vec<u64> {
        let mut gaps = Vec::new();
        let mut expected = self.oldest_commit();
        for v in self.commits.keys() {
            if let Some(mut e) = expected {
                while e < *v {
                    gaps.push(e);
                    e += 1;
                }
            }
            expected = Some(v + 1);
        }
        gaps
    }
}

fn checkpoint_is_complete(files: &[LogFile]) -> bool {
    let mut parts: Vec<(u32, u32)> = Vec::new();
    for f in files {
        match f.kind {
            LogFileKind::Checkpoint { part: None, .. } => return true,
            LogFileKind::Checkpoint { part: Some(p), .. } => parts.push(p),
            _ => {}
        }
    }
    let Some(&(_, n)) = parts.first() else {
        return false;
    };
    let mut seen: Vec<u32> = parts
        .iter()
        .filter(|(_, m)| *m == n)
        .map(|(p, _)| *p)
        .collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len() as u64 == u64::from(n)
}

/// A path of an `add`, `remove` or `cdc` action: as written in the log (percent-encoded) and
/// decoded (the object's name relative to the table root).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilePath {
    /// Decoded, relative to the table root (or an absolute URI, see [`Self::is_relative`]).
    pub decoded: String,
    /// As written in the log.
    pub encoded: String,
}

impl FilePath {
    /// Decodes a path as written in the log.
    pub fn from_encoded(encoded: &str) -> Result<Self, String> {
        let decoded = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map_err(|e| format!("path {encoded:?} is not UTF-8 once decoded: {e}"))?
            .into_owned();
        Ok(Self {
            decoded,
            encoded: encoded.to_string(),
        })
    }

    /// True for a path inside the table (Delta also allows absolute URIs to files elsewhere,
    /// e.g. in shallow clones; those cannot be copied with the table).
    pub fn is_relative(&self) -> bool {
        !self.encoded.contains("://") && !self.encoded.starts_with('/')
    }
}

/// An `add` action, as far as copying and verifying need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFile {
    /// The data file.
    pub path: FilePath,
    /// Its size in bytes.
    pub size: u64,
    /// `numRecords` from the action's stats (`None` without stats).
    pub num_records: Option<u64>,
    /// `dataChange`.
    pub data_change: bool,
    /// True when the action has a deletion vector (a file of its own to copy).
    pub has_deletion_vector: bool,
}

/// A `remove` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveFile {
    /// The data file no longer in the table.
    pub path: FilePath,
    /// Its size, when the writer recorded it.
    pub size: Option<u64>,
}

/// A `cdc` action: a change-data file under `_change_data/`, copied like a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcFile {
    /// The file.
    pub path: FilePath,
    /// Its size in bytes.
    pub size: u64,
}

/// A `commitInfo` action: provenance, including Tidemark's own object.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitInfo {
    /// `timestamp`: milliseconds since the epoch when the commit was made.
    pub timestamp_ms: Option<i64>,
    /// `operation` (`WRITE`, `CREATE TABLE`, `OPTIMIZE`, ...).
    pub operation: Option<String>,
    /// `operationParameters` (e.g. a RESTORE's `version`), kept as JSON.
    pub operation_parameters: Option<Value>,
    /// The `tidemark` object Tidemark writes into each epoch's commit
    /// (`tidemark_connectors::delta::EpochCommitInfo`), kept as JSON.
    pub tidemark: Option<Value>,
}

impl CommitInfo {
    /// The Tidemark pipeline and epoch of this commit, when Tidemark wrote it.
    pub fn tidemark_epoch(&self) -> Option<(String, u64)> {
        let t = self.tidemark.as_ref()?;
        Some((
            t.get("pipeline_id")?.as_str()?.to_string(),
            t.get("epoch")?.as_u64()?,
        ))
    }
}

/// One action of a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `add`.
    Add(AddFile),
    /// `remove`.
    Remove(RemoveFile),
    /// `cdc`.
    Cdc(CdcFile),
    /// `commitInfo`.
    CommitInfo(CommitInfo),
    /// `metaData`.
    Metadata,
    /// `protocol`.
    Protocol,
    /// `txn` (the appId's version).
    Txn {
        /// `appId`.
        app_id: String,
        /// `version`.
        version: i64,
    },
    /// Any other action (`domainMetadata`, `checkpointMetadata`, ...), by name.
    Other(String),
}

/// A commit's actions.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The version.
    pub version: u64,
    /// The actions, in file order.
    pub actions: Vec<Action>,
}

impl Commit {
    /// The `add` actions.
    pub fn adds(&self) -> impl Iterator<Item = &AddFile> {
        self.actions.iter().filter_map(|a| match a {
            Action::Add(add) => Some(add),
            _ => None,
        })
    }

    /// The `remove` actions.
    pub fn removes(&self) -> impl Iterator<Item = &RemoveFile> {
        self.actions.iter().filter_map(|a| match a {
            Action::Remove(r) => Some(r),
            _ => None,
        })
    }

    /// Every file this version makes the table refer to (`add` and `cdc`), with its size:
    /// what must be present before the commit file may be.
    pub fn files_added(&self) -> impl Iterator<Item = (&FilePath, u64)> {
        self.actions.iter().filter_map(|a| match a {
            Action::Add(add) => Some((&add.path, add.size)),
            Action::Cdc(cdc) => Some((&cdc.path, cdc.size)),
            _ => None,
        })
    }

    /// The commitInfo, if the commit has one.
    pub fn commit_info(&self) -> Option<&CommitInfo> {
        self.actions.iter().find_map(|a| match a {
            Action::CommitInfo(c) => Some(c),
            _ => None,
        })
    }

    /// The commit's timestamp (commitInfo `timestamp`, milliseconds).
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.commit_info().and_then(|c| c.timestamp_ms)
    }

    /// True when the commit sets the table's metadata (schema, partitioning).
    pub fn has_metadata(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Metadata))
    }

    /// True when the commit sets the protocol.
    pub fn has_protocol(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Protocol))
    }
}

/// A commit file's bytes and where they came from.
#[derive(Debug, Clone)]
pub struct CommitBytes {
    /// The version.
    pub version: u64,
    /// The object.
    pub location: Path,
    /// The whole file.
    pub bytes: Bytes,
}

impl CommitBytes {
    /// Parses the actions (see [`parse_commit`]).
    pub fn parse(&self, table: &str) -> Result<Commit, LogError> {
        parse_commit(table, self.version, &self.bytes)
    }
}

/// Reads commit `version` of `location` whole.
pub async fn read_commit(location: &TableLocation, version: u64) -> Result<CommitBytes, LogError> {
    let name = commit_file_name(version);
    let path = location.log_dir().join(name.as_str());
    let bytes = match location.store().get(&path).await {
        Ok(get) => get.bytes().await,
        Err(e) => Err(e),
    };
    match bytes {
        Ok(bytes) => Ok(CommitBytes {
            version,
            location: path,
            bytes,
        }),
        Err(object_store::Error::NotFound { .. }) => Err(LogError::MissingVersion {
            table: location.to_string(),
            version,
            file: path.to_string(),
        }),
        Err(source) => Err(LogError::Read {
            table: location.to_string(),
            file: path.to_string(),
            source,
        }),
    }
}

/// Parses commit `version`'s newline-delimited JSON actions (empty lines are allowed).
/// An error names the table, the file and the line.
pub fn parse_commit(table: &str, version: u64, bytes: &[u8]) -> Result<Commit, LogError> {
    let file = commit_file_name(version);
    let mut actions = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action = parse_action(line).map_err(|reason| LogError::Parse {
            table: table.to_string(),
            file: file.clone(),
            line: i + 1,
            reason,
        })?;
        actions.push(action);
    }
    Ok(Commit { version, actions })
}

/// Parses one action line (`{"add": {...}}`, ...).
pub fn parse_action(line: &[u8]) -> Result<Action, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let mut entries = map.into_iter();
    let (name, body) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        _ => return Err("an action line must hold exactly one action".into()),
    };
    action_from(&name, &body)
}

/// Builds an action from its name and JSON body (also used for checkpoint rows).
pub fn action_from(name: &str, body: &Value) -> Result<Action, String> {
    let field = |key: &str| body.get(key).filter(|v| !v.is_null());
    let path = || -> Result<FilePath, String> {
        let raw = field("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name} without a path"))?;
        FilePath::from_encoded(raw)
    };
    let size = |required: bool| -> Result<Option<u64>, String> {
        match field("size") {
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{name} size {v} is not a non-negative integer")),
            None if required => Err(format!("{name} without a size")),
            None => Ok(None),
        }
    };
    Ok(match name {
        "add" => {
            let path = path()?;
            let size = size(true)?.unwrap_or_default();
            let num_records = field("stats")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|stats| stats.get("numRecords").and_then(Value::as_u64));
            Action::Add(AddFile {
                path,
                size,
                num_records,
                data_change: field("dataChange").and_then(Value::as_bool).unwrap_or(true),
                has_deletion_vector: field("deletionVector").is_some(),
            })
        }
        "remove" => Action::Remove(RemoveFile {
            path: path()?,
            size: size(false)?,
        }),
        "cdc" => Action::Cdc(CdcFile {
            path: path()?,
            size: size(true)?.unwrap_or_default(),
        }),
        "commitInfo" => Action::CommitInfo(CommitInfo {
            timestamp_ms: field("timestamp").and_then(Value::as_i64),
            operation: field("operation")
                .and_then(Value::as_str)
                .map(str::to_string),
            operation_parameters: field("operationParameters").cloned(),
            tidemark: field(tidemark_connectors::delta::COMMIT_INFO_KEY).cloned(),
        }),
        "metaData" => Action::Metadata,
        "protocol" => Action::Protocol,
        "txn" => Action::Txn {
            app_id: field("appId")
                .and_then(Value::as_str)
                .ok_or("txn without an appId")?
                .to_string(),
            version: field("version")
                .and_then(Value::as_i64)
                .ok_or("txn without a version")?,
        },
        other => Action::Other(other.to_string()),
    })
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
