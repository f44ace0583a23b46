//! `tidemark restore`: a new commit that makes a table equal to one of its earlier versions
//! (Delta's RESTORE: files live at that version but not now are added back, files live now
//! but not then are removed, both with `dataChange = true`; the metadata goes back to the
//! version's, the protocol stays).
//!
//! Two steps, each a type consuming the last: [`PreparedRestore::prepare`] reads both versions'
//! log state, plans the actions ([`plan`]) and checks that every file to add back is still in
//! storage (a vacuumed or lost file refuses the restore, naming it); the caller looks at what
//! it would do (which Tidemark pipelines write the table, how far their progress goes back)
//! and then [`PreparedRestore::commit`] writes the one commit, put-if-absent and durably.
//!
//! Tidemark pipelines: a restore also sets each Tidemark pipeline's `txn` version back to the
//! epoch the restored version holds, and records that epoch's `tidemark` commitInfo object
//! again (its counts zeroed: the commit writes no rows). The
//! table is then *behind* the pipeline's checkpoint store, exactly as after `restore-backup`:
//! the pipeline refuses to start until it is started with `--rewind-to`, and then re-reads
//! from Kafka everything after the restored epoch, so every restored-away record is written
//! again once. Applications other than Tidemark keep their `txn` version (as in Delta).

pub mod plan;
pub mod state;

use std::collections::BTreeSet;

use object_store::{ObjectStoreExt, PutMode};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tidemark_connectors::delta::EpochCommitInfo;
use tidemark_connectors::record::Positions;
use tidemark_connectors::table_store::{put_settled, ConditionalPut};

use crate::live::LiveError;
use crate::location::TableLocation;
use crate::log::{commit_file_name, LogError, LogListing};
use crate::time_travel::{resolve, AsOf, TimeTravelError};
use plan::RestorePlan;
use state::LogState;

/// Why a restore was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Which version to restore.
    #[error(transparent)]
    AsOf(Box<TimeTravelError>),
    /// Reading the log.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// Reading the log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Files the restore must add back are gone (vacuumed, deleted).
    #[error("table {table}: cannot restore version {version}: {count} data file(s) it needs are no longer in storage (vacuumed or deleted), e.g. {first}{more}; nothing was changed. Rebuild that version from a backup instead: `tidemark restore-backup <backup dir> --to <new dir> --version {version}` (or put the files back with `tidemark verify --repair-from <backup dir>`)", count = files.len(), first = files.first().map(String::as_str).unwrap_or("?"), more = if files.len() > 1 { format!(" (and {} more: {})", files.len() - 1, files[1..].iter().take(5).cloned().collect::<Vec<_>>().join(", ")) } else { String::new() })]
    FilesMissing {
        /// The table.
        table: String,
        /// The version asked for.
        version: u64,
        /// The missing files (decoded paths relative to the table).
        files: Vec<String>,
    },
    /// A file to add back is in storage with another size than its `add` action's.
    #[error("table {table}: cannot restore version {version}: {file} is {found} bytes in storage but {expected} bytes in the log (damaged or replaced); nothing was changed. Check it with `tidemark verify {table} --version {version}`")]
    SizeMismatch {
        /// The table.
        table: String,
        /// The version asked for.
        version: u64,
        /// The file.
        file: String,
        /// The size found.
        found: u64,
        /// The size in the log.
        expected: u64,
    },
    /// Something the restore does not handle (yet), named.
    #[error("table {table}: cannot restore version {version}: {reason}")]
    Unsupported {
        /// The table.
        table: String,
        /// The version asked for.
        version: u64,
        /// What.
        reason: String,
    },
    /// Another writer committed first.
    #[error("table {table}: version {new_version} was committed by another writer while the restore was prepared; nothing was changed: stop the writers and run the restore again")]
    Conflict {
        /// The table.
        table: String,
        /// The version the restore wanted to write.
        new_version: u64,
    },
    /// The store failed.
    #[error("table {table}: {op} {file}: {source}")]
    Store {
        /// The table.
        table: String,
        /// What was done.
        op: &'static str,
        /// The object.
        file: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
}

impl From<TimeTravelError> for RestoreError {
    fn from(e: TimeTravelError) -> Self {
        Self::AsOf(Box::new(e))
    }
}

/// How a Tidemark pipeline's progress in the table moves with the restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PipelineRewind {
    /// The pipeline (its txn appId).
    pub pipeline: String,
    /// Its txn version (newest epoch) now.
    pub epoch_now: u64,
    /// Its txn version after the restore: the epoch the restored version holds (0: none).
    pub epoch_after: u64,
    /// Where it will resume reading: the restored epoch's end positions (empty: from the
    /// start of every partition).
    pub resume_positions: Positions,
    /// Where its newest commit now ends: the records between `resume_positions` and these are
    /// the ones restored away (re-read from Kafka on the rewind).
    pub positions_now: Positions,
}

/// A restore planned and checked, not yet committed.
#[derive(Debug)]
pub struct PreparedRestore {
    location: TableLocation,
    as_of: AsOf,
    current: LogState,
    target: LogState,
    plan: RestorePlan<Value>,
    rewinds: Vec<(PipelineRewind, Value)>,
}

/// What a restore did (or, for a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The table.
    pub table: String,
    /// The version the table was made equal to.
    pub restored_version: u64,
    /// The newest version before the restore.
    pub from_version: u64,
    /// The restore's own commit (`None`: nothing to do, or a dry run).
    pub new_version: Option<u64>,
    /// Files added back.
    pub files_re_added: usize,
    /// Files removed.
    pub files_removed: usize,
    /// Bytes added back.
    pub bytes_re_added: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Rows added back (from the files' stats; `None` when a file has none).
    pub rows_re_added: Option<u64>,
    /// Rows removed.
    pub rows_removed: Option<u64>,
    /// Tidemark pipelines whose progress goes back.
    pub pipelines: Vec<PipelineRewind>,
}

impl PreparedRestore {
    /// Reads the newest version and the one `as_of` names, plans the restore and checks that
    /// every file to add back is in storage with its logged size.
    pub async fn prepare(location: &TableLocation, as_of: AsOf) -> Result<Self, RestoreError> {
        let listing = LogListing::list(location).await?;
        let table = location.to_string();
        let newest = listing.newest_version().ok_or_else(|| LiveError::NoTable {
            table: table.clone(),
        })?;
        let version = resolve(location, &listing, as_of).await?;
        let current = LogState::load(location, &listing, newest).await?;
        let target = LogState::load(location, &listing, version).await?;
        let plan = plan::plan(&current.adds, &target.adds);
        let unsupported = |reason: String| RestoreError::Unsupported {
            table: table.clone(),
            version,
            reason,
        };
        if let Some((p, _)) = plan
            .re_add
            .iter()
            .chain(&plan.remove)
            .find(|(_, a)| a.get("deletionVector").is_some_and(|d| !d.is_null()))
        {
            return Err(unsupported(format!(
                "{p} has a deletion vector (not supported by tidemark restore yet)"
            )));
        }
        check_present(location, version, &plan).await?;
        let rewinds = pipeline_rewinds(&current, &target).map_err(&unsupported)?;
        if rewinds.len() > 1 {
            return Err(unsupported(format!(
                "the progress of {} Tidemark pipelines would go back ({}); a commit records one: restore a table written by one pipeline",
                rewinds.len(),
                rewinds.iter().map(|(r, _)| r.pipeline.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Self {
            location: location.clone(),
            as_of,
            current,
            target,
            plan,
            rewinds,
        })
    }

    /// The version the table would be made equal to.
    pub fn restored_version(&self) -> u64 {
        self.target.version
    }

    /// The Tidemark pipelines whose progress goes back.
    pub fn pipelines(&self) -> impl Iterator<Item = &PipelineRewind> {
        self.rewinds.iter().map(|(r, _)| r)
    }

    /// `app`'s txn version at the version restored (`None`: it had none then).
    pub fn txn_after(&self, app: &str) -> Option<i64> {
        self.target.txns.get(app).copied()
    }

    /// Every Tidemark pipeline that ever wrote the table (as far as the log shows).
    pub fn writers(&self) -> impl Iterator<Item = &str> {
        self.current.tidemark.keys().map(String::as_str)
    }

    /// What the restore would do, without doing it.
    pub fn report(&self) -> RestoreReport {
        let sum = |files: &[(String, Value)], key: &dyn Fn(&Value) -> Option<u64>| {
            files
                .iter()
                .map(|(_, a)| key(a))
                .try_fold(0u64, |acc, n| n.map(|n| acc + n))
        };
        let size = |a: &Value| a.get("size").and_then(Value::as_u64);
        let rows = |a: &Value| {
            a.get("stats")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|s| s.get("numRecords").and_then(Value::as_u64))
        };
        RestoreReport {
            table: self.location.to_string(),
            restored_version: self.target.version,
            from_version: self.current.version,
            new_version: None,
            files_re_added: self.plan.re_add.len(),
            files_removed: self.plan.remove.len(),
            bytes_re_added: sum(&self.plan.re_add, &size).unwrap_or(0),
            bytes_removed: sum(&self.plan.remove, &size).unwrap_or(0),
            rows_re_added: sum(&self.plan.re_add, &rows),
            rows_removed: sum(&self.plan.remove, &rows),
            pipelines: self.pipelines().cloned().collect(),
        }
    }

    /// True when the newest version already is the target (same version, or same files and
    /// progress): nothing to commit.
    pub fn is_noop(&self) -> bool {
        self.target.version == self.current.version
            || (self.plan.is_empty()
                && self.rewinds.is_empty()
                && self.current.metadata == self.target.metadata)
    }

    /// Writes the restore commit at the version after the newest (put-if-absent: a writer
    /// that committed meanwhile makes it fail with [`RestoreError::Conflict`], changing
    /// nothing). Returns the report with the new version.
    pub async fn commit(self) -> Result<RestoreReport, RestoreError> {
        let mut report = self.report();
        if self.is_noop() {
            return Ok(report);
        }
        let new_version = self.current.version + 1;
        let now = chrono::Utc::now().timestamp_millis();
        let bytes = commit_bytes(&self, now).map_err(|reason| RestoreError::Unsupported {
            table: self.location.to_string(),
            version: self.target.version,
            reason,
        })?;
        let path = self
            .location
            .log_dir()
            .join(commit_file_name(new_version).as_str());
        // Settled: a restore commit that landed but whose answer was lost counts as written
        // (its bytes carry this run's timestamp), never as "changing nothing".
        let put = put_settled(
            self.location.store().as_ref(),
            &path,
            bytes::Bytes::from(bytes),
            PutMode::Create,
        )
        .await;
        match put {
            Ok(ConditionalPut::Written) => {}
            Ok(ConditionalPut::Refused) => {
                return Err(RestoreError::Conflict {
                    table: self.location.to_string(),
                    new_version,
                })
            }
            Err(source) => {
                return Err(RestoreError::Store {
                    table: self.location.to_string(),
                    op: "write the restore commit",
                    file: path.to_string(),
                    source: Box::new(source),
                })
            }
        }
        tracing::info!(table = %self.location, restored_version = self.target.version, new_version, re_added = report.files_re_added, removed = report.files_removed, "table restored");
        report.new_version = Some(new_version);
        Ok(report)
    }
}

/// Every file to add back must be in storage with its logged size.
async fn check_present(
    location: &TableLocation,
    version: u64,
    plan: &RestorePlan<Value>,
) -> Result<(), RestoreError> {
    let table = location.to_string();
    let mut present = BTreeSet::new();
    for (p, add) in &plan.re_add {
        let object = location.child(p).map_err(|e| RestoreError::Unsupported {
            table: table.clone(),
            version,
            reason: format!("{p} is not a valid path: {e}"),
        })?;
        match location.store().head(&object).await {
            Ok(meta) => {
                let expected = add.get("size").and_then(Value::as_u64).unwrap_or(meta.size);
                if meta.size != expected {
                    return Err(RestoreError::SizeMismatch {
                        table,
                        version,
                        file: p.clone(),
                        found: meta.size,
                        expected,
                    });
                }
                present.insert(p.clone());
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(RestoreError::Store {
                    table,
                    op: "look for",
                    file: object.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }
    let missing: Vec<String> = plan::missing(plan, &present)
        .into_iter()
        .map(str::to_string)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RestoreError::FilesMissing {
            table,
            version,
            files: missing,
        })
    }
}

/// The Tidemark pipelines whose txn version differs between now and the target, each with
/// the `tidemark` commitInfo object the restore commit records for it.
fn pipeline_rewinds(
    current: &LogState,
    target: &LogState,
) -> Result<Vec<(PipelineRewind, Value)>, String> {
    let mut out = Vec::new();
    for (pipeline, (_, newest)) in &current.tidemark {
        let now = current.txns.get(pipeline).copied().unwrap_or(0).max(0) as u64;
        let after = target.txns.get(pipeline).copied().unwrap_or(0).max(0) as u64;
        if now == after {
            continue;
        }
        if after > now {
            return Err(format!("pipeline {pipeline}'s txn version would go forward from {now} to {after}: the log is inconsistent"));
        }
        let positions_now = parse_info(pipeline, newest)?.end_positions;
        let mut info = match target.tidemark.get(pipeline) {
            Some((_, t)) => parse_info(pipeline, t)?,
            // The pipeline had no commit at that version: it starts over from the beginning
            // of every partition.
            None if after == 0 => parse_info(
                pipeline,
                &json!({
                    "pipeline_id": pipeline,
                    "epoch": 0,
                    "start_positions": {},
                    "end_positions": {},
                    "records_read": 0,
                    "rows_written": 0,
                    "records_skipped": 0,
                }),
            )?,
            None => return Err(format!("pipeline {pipeline} is at epoch {after} in that version, but the log no longer holds that epoch's commit (cleaned up behind a checkpoint): rebuild the version with `tidemark restore-backup` instead")),
        };
        if info.epoch.get() != after {
            return Err(format!("pipeline {pipeline}: txn version {after} but its newest commitInfo in that version records epoch {}: the log is inconsistent", info.epoch));
        }
        // The restore commit writes no rows: its counts are zero, so totals summed over the
        // pipeline's commits stay right; the positions say where the rewind resumes.
        info.records_read = 0;
        info.rows_written = 0;
        info.records_skipped = 0;
        info.skipped.clear();
        info.duplicates = 0;
        info.late = 0;
        info.dead_lettered = 0;
        let mut value = serde_json::to_value(&info).map_err(|e| e.to_string())?;
        if let (Some(generation), Value::Object(map)) = (newest.get("generation"), &mut value) {
            // A failover generation stays the newest writer's: a restore does not fence.
            map.insert("generation".into(), generation.clone());
        }
        out.push((
            PipelineRewind {
                pipeline: pipeline.clone(),
                epoch_now: now,
                epoch_after: after,
                resume_positions: info.end_positions.clone(),
                positions_now,
            },
            value,
        ));
    }
    Ok(out)
}

fn parse_info(pipeline: &str, value: &Value) -> Result<EpochCommitInfo, String> {
    serde_json::from_value(value.clone())
        .map_err(|e| format!("pipeline {pipeline}'s tidemark commitInfo cannot be read: {e}"))
}

/// The restore commit's bytes: commitInfo, txn and metaData when they change, the re-added
/// files' `add` actions and the removed files' `remove` actions.
fn commit_bytes(r: &PreparedRestore, now_ms: i64) -> Result<Vec<u8>, String> {
    let report = r.report();
    // As Delta writes them: both keys, the one not given null.
    let mut parameters = Map::new();
    parameters.insert("version".into(), json!(r.target.version));
    parameters.insert("timestamp".into(), Value::Null);
    if let AsOf::Timestamp(ms) = r.as_of {
        let t = chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| ms.to_string());
        parameters.insert("timestamp".into(), json!(t));
    }
    let mut info = json!({
        "timestamp": now_ms,
        "operation": "RESTORE",
        "operationParameters": parameters,
        "readVersion": r.current.version,
        "isBlindAppend": false,
        "operationMetrics": {
            "numRestoredFiles": report.files_re_added.to_string(),
            "numRemovedFiles": report.files_removed.to_string(),
            "restoredFilesSize": report.bytes_re_added.to_string(),
            "removedFilesSize": report.bytes_removed.to_string(),
            "numOfFilesAfterRestore": r.target.adds.len().to_string(),
        },
        "clientVersion": concat!("tidemark-", env!("CARGO_PKG_VERSION")),
    });
    // Only a pipeline's rewind gets a `tidemark` object: every such object is a whole
    // `EpochCommitInfo`, as the sink reads them back.
    if let Some((_, tidemark)) = r.rewinds.first() {
        info[tidemark_connectors::delta::COMMIT_INFO_KEY] = tidemark.clone();
    }
    let mut lines = vec![json!({ "commitInfo": info })];
    for (rewind, _) in &r.rewinds {
        lines.push(json!({"txn": {
            "appId": rewind.pipeline,
            "version": rewind.epoch_after,
            "lastUpdated": now_ms,
        }}));
    }
    if r.target.metadata != r.current.metadata {
        if let Some(m) = &r.target.metadata {
            lines.push(json!({ "metaData": m }));
        }
    }
    for (_, add) in &r.plan.re_add {
        let mut add = add.clone();
        add["dataChange"] = json!(true);
        lines.push(json!({ "add": add }));
    }
    for (_, add) in &r.plan.remove {
        let mut remove = json!({
            "path": add.get("path").cloned().unwrap_or(Value::Null),
            "deletionTimestamp": now_ms,
            "dataChange": true,
            "extendedFileMetadata": true,
            "partitionValues": add.get("partitionValues").cloned().unwrap_or_else(|| json!({})),
        });
        for key in ["size", "tags", "baseRowId", "defaultRowCommitVersion"] {
            if let Some(v) = add.get(key).filter(|v| !v.is_null()) {
                remove[key] = v.clone();
            }
        }
        lines.push(json!({ "remove": remove }));
    }
    let mut out = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut out, &line)
            .map_err(|e| format!("cannot encode the commit: {e}"))?;
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tidemark_fs::{Fault, FaultFs, FaultKind, Op};

    use super::*;

    const PROTOCOL: &str = r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}"#;
    const METADATA: &str = r#"{"metaData":{"id":"t","format":{"provider":"parquet","options":{}},"schemaString":"{\"type\":\"struct\",\"fields\":[]}","partitionColumns":[],"configuration":{},"createdTime":1}}"#;

    fn add(path: &str, size: u64) -> String {
        format!(
            r#"{{"add":{{"path":"{path}","size":{size},"partitionValues":{{}},"modificationTime":1,"dataChange":true,"stats":"{{\"numRecords\":2}}"}}}}"#
        )
    }

    /// Version 0 adds a.parquet, version 1 replaces it with b.parquet.
    fn table(dir: &std::path::Path) {
        let log = dir.join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(dir.join("a.parquet"), b"aaaa").unwrap();
        std::fs::write(dir.join("b.parquet"), b"bbbbbb").unwrap();
        std::fs::write(
            log.join(commit_file_name(0)),
            [PROTOCOL, METADATA, &add("a.parquet", 4)].join("\n"),
        )
        .unwrap();
        let remove = r#"{"remove":{"path":"a.parquet","deletionTimestamp":2,"dataChange":true}}"#;
        std::fs::write(
            log.join(commit_file_name(1)),
            [remove, &add("b.parquet", 6)].join("\n"),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_failed_commit_write_changes_nothing_and_the_restore_can_be_run_again() {
        for op in [Op::Write, Op::Sync, Op::Rename, Op::SyncDir] {
            let dir = tempfile::tempdir().unwrap();
            table(dir.path());
            let fault = FaultFs::new(tidemark_fs::std_fs());
            let location =
                TableLocation::parse_with_fs(dir.path().to_str().unwrap(), Arc::new(fault.clone()))
                    .unwrap();
            fault.arm(Fault {
                path_contains: "_delta_log".into(),
                ..Fault::once(op, FaultKind::Eio)
            });
            let err = PreparedRestore::prepare(&location, AsOf::Version(0))
                .await
                .unwrap()
                .commit()
                .await
                .unwrap_err();
            assert_eq!(fault.injected(), 1, "{op:?}");
            assert!(err.to_string().contains("restore commit"), "{op:?}: {err}");
            let commit = dir.path().join("_delta_log").join(commit_file_name(2));
            // A failed fsync of the directory comes after the commit file got its name: the
            // commit may be there, and then it is whole; otherwise nothing was written.
            if commit.exists() {
                assert_eq!(op, Op::SyncDir);
            }
            fault.clear();
            if !commit.exists() {
                let report = PreparedRestore::prepare(&location, AsOf::Version(0))
                    .await
                    .unwrap()
                    .commit()
                    .await
                    .unwrap();
                assert_eq!(report.new_version, Some(2), "{op:?}");
            }
            let text = std::fs::read_to_string(&commit).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines[0]["commitInfo"]["operation"], "RESTORE");
            assert_eq!(lines[0]["commitInfo"]["operationParameters"]["version"], 0);
            let added: Vec<&Value> = lines.iter().filter_map(|l| l.get("add")).collect();
            let removed: Vec<&Value> = lines.iter().filter_map(|l| l.get("remove")).collect();
            assert_eq!(added.len(), 1);
            assert_eq!(added[0]["path"], "a.parquet");
            assert_eq!(added[0]["dataChange"], true);
            assert_eq!(removed.len(), 1);
            assert_eq!(removed[0]["path"], "b.parquet");
            assert_eq!(removed[0]["size"], 6);
            // Restoring the same version again is a no-op.
            let again = PreparedRestore::prepare(&location, AsOf::Version(0))
                .await
                .unwrap();
            assert!(again.report().files_re_added == 0 && again.report().files_removed == 0);
        }
    }

    #[tokio::test]
    async fn a_file_of_the_wrong_size_or_missing_refuses_the_restore_by_name() {
        let dir = tempfile::tempdir().unwrap();
        table(dir.path());
        let location = crate::location::open_store(dir.path().to_str().unwrap()).unwrap();
        std::fs::write(dir.path().join("a.parquet"), b"a").unwrap();
        let err = PreparedRestore::prepare(&location, AsOf::Version(0))
            .await
            .unwrap_err();
        assert!(matches!(err, RestoreError::SizeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("a.parquet"), "{err}");
        std::fs::remove_file(dir.path().join("a.parquet")).unwrap();
        let err = PreparedRestore::prepare(&location, AsOf::Version(0))
            .await
            .unwrap_err();
        assert!(matches!(err, RestoreError::FilesMissing { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("a.parquet") && text.contains("restore-backup"),
            "{text}"
        );
        assert!(!dir
            .path()
            .join("_delta_log")
            .join(commit_file_name(2))
            .exists());
    }
}
