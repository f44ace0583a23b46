//! Table maintenance the pipeline does between epochs (`[maintenance]` in `pipeline.toml`):
//! a Delta checkpoint every `checkpoint_every` commits with the cleanup of expired log files
//! after it, and (optionally) compaction of small files every `compact_every` epochs.
//!
//! Order and failure rules (the invariants):
//! - It runs after an epoch's Delta commit *and* its store checkpoint: a crash anywhere in it
//!   loses nothing and redoes no epoch; the table stays readable (see
//!   `tidemark_connectors::delta::CheckpointSchedule` and the crash points
//!   `before_delta_checkpoint` ... `during_delta_log_cleanup`).
//! - A failed Delta checkpoint never stops ingestion and is never skipped: it is logged with
//!   the error and stays due, so the next commit tries again.
//! - Expired log files are cleaned only right after a checkpoint was written, never past a
//!   configured replica's newest version (so `tidemark replicate` keeps reading the commits it
//!   lacks): one listing of `_delta_log/` per checkpoint, not per commit.
//! - Compaction commits in the pipeline's own task, between its commits: it can never race a
//!   Tidemark commit of this pipeline; a compaction that loses to another writer is retried at
//!   the next round and the epoch commits are untouched.

use serde::Deserialize;
use tidemark_checkpoint::fault::{self, CrashPoint};
use tidemark_connectors::delta::{CheckpointSchedule, DeltaSink};
use tracing::{info, warn};
use url::Url;

/// `[maintenance]` of `pipeline.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Write a Delta checkpoint every this many commits (0: never). Default 100.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// After each checkpoint, delete log files older than the table's
    /// `delta.logRetentionDuration` (default true).
    #[serde(default = "default_true")]
    pub log_cleanup: bool,
    /// Compact small files every this many epochs (0, the default: never).
    #[serde(default)]
    pub compact_every: u64,
    /// Target size of a compacted file, in bytes (default 128 MiB).
    #[serde(default = "default_compact_target_bytes")]
    pub compact_target_bytes: u64,
    /// Backup directories of the table (`tidemark backup --to`): the log cleanup keeps the
    /// commits after each one's newest chain (so the next incremental backup can continue it)
    /// and `tidemark vacuum --config` keeps the files those commits add. Paths (relative to the
    /// working directory) or `s3://bucket/prefix` URLs, taken as given.
    #[serde(default)]
    pub backups: Vec<std::path::PathBuf>,
}

fn default_checkpoint_every() -> u64 {
    100
}

fn default_true() -> bool {
    true
}

fn default_compact_target_bytes() -> u64 {
    128 << 20
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: default_checkpoint_every(),
            log_cleanup: true,
            compact_every: 0,
            compact_target_bytes: default_compact_target_bytes(),
            backups: Vec::new(),
        }
    }
}

/// Checks `[maintenance]`: `(setting, message)` of the first bad value.
pub fn check(m: &MaintenanceConfig) -> Result<(), (&'static str, String)> {
    if m.compact_target_bytes < 1024 {
        return Err((
            "maintenance.compact_target_bytes",
            format!(
                "must be at least 1024 bytes (128 MiB = 134217728 is usual), got {}",
                m.compact_target_bytes
            ),
        ));
    }
    Ok(())
}

/// The Delta log maintenance of one table the pipeline writes.
#[derive(Debug)]
pub struct LogMaintenance {
    schedule: CheckpointSchedule,
    cleanup: bool,
    replica: Option<Url>,
    backups: Vec<std::path::PathBuf>,
    failures_in_a_row: u64,
}

impl LogMaintenance {
    /// The maintenance of `sink`'s table: its newest checkpoint read from `_last_checkpoint`
    /// (unreadable: taken as none, so the first due commit writes one).
    pub async fn open(sink: &DeltaSink, config: &MaintenanceConfig, replica: Option<Url>) -> Self {
        let newest = match sink.newest_checkpoint_hint().await {
            Ok(v) => v,
            Err(e) => {
                warn!(table = %sink.uri(), "cannot read _last_checkpoint; the next due commit writes a checkpoint: {e}");
                None
            }
        };
        Self {
            schedule: CheckpointSchedule::new(config.checkpoint_every, newest),
            cleanup: config.log_cleanup,
            replica,
            backups: config.backups.clone(),
            failures_in_a_row: 0,
        }
    }

    /// The schedule (for status and tests).
    pub fn schedule(&self) -> &CheckpointSchedule {
        &self.schedule
    }

    /// After a commit landed at `version` (and its epoch is checkpointed): writes the Delta
    /// checkpoint if one is due, then cleans up expired log files. Never fails: a failure is
    /// logged and the checkpoint stays due for the next commit.
    ///
    /// `keep_from`: the oldest table version something else still promises (the oldest
    /// retained checkpoint's, a rewind target); the log cleanup keeps every version from it on
    /// (and from the replica's newest version on).
    pub async fn after_commit(
        &mut self,
        sink: &mut DeltaSink,
        version: u64,
        keep_from: Option<u64>,
    ) {
        if !self.schedule.due(version) {
            return;
        }
        fault::hit(CrashPoint::BeforeDeltaCheckpoint);
        let started = std::time::Instant::now();
        match sink.write_log_checkpoint().await {
            Ok(written) => {
                self.schedule.written(written);
                info!(table = %sink.uri(), version = written, ms = started.elapsed().as_millis() as u64, "delta checkpoint written");
                if self.failures_in_a_row > 0 {
                    info!(table = %sink.uri(), version = written, failed_before = self.failures_in_a_row, "delta checkpoint written after earlier failures");
                }
                self.failures_in_a_row = 0;
            }
            Err(e) => {
                self.failures_in_a_row += 1;
                warn!(table = %sink.uri(), version, failures_in_a_row = self.failures_in_a_row, "delta checkpoint failed; it stays due and is tried again after the next commit: {e}");
                return;
            }
        }
        fault::hit(CrashPoint::AfterDeltaCheckpoint);
        if !self.cleanup {
            return;
        }
        let replica_at = match &self.replica {
            None => None,
            Some(replica) => match replica_newest_version(replica.as_str()).await {
                Ok(v) => Some(v.unwrap_or(0)),
                Err(e) => {
                    warn!(table = %sink.uri(), replica = %replica, "cannot read the replica's version; not cleaning up the log this time: {e}");
                    return;
                }
            },
        };
        let mut keep_from = match (keep_from, replica_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for dir in &self.backups {
            match newest_backup_version(&dir.display().to_string()).await {
                Ok(Some(v)) => keep_from = Some(keep_from.map_or(v, |k| k.min(v))),
                Ok(None) => {}
                Err(e) => {
                    warn!(table = %sink.uri(), backups = %dir.display(), "cannot read the backups; not cleaning up the log this time: {e}");
                    return;
                }
            }
        }
        if let Err(e) = sink.cleanup_expired_log(keep_from).await {
            warn!(table = %sink.uri(), "cleaning up expired log files failed (tried again after the next checkpoint): {e}");
        }
    }
}

/// The newest version the newest whole backup chain in `dir` (a path, `file://` or `s3://`
/// URL) holds (`None`: no backup yet).
pub async fn newest_backup_version(dir: &str) -> Result<Option<u64>, String> {
    let location = tidemark_table::open_store(dir).map_err(|e| e.to_string())?;
    if location.local_dir().is_some_and(|d| !d.exists()) {
        return Ok(None);
    }
    let backups = match tidemark_table::backup::dir::catalog_of(dir).await {
        Ok(b) => b,
        // An object-store prefix with nothing under it yet: no backup.
        Err(_) if location.local_dir().is_none() && is_empty_prefix(&location).await => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let catalog = backups.catalog;
    Ok(catalog
        .table_ids()
        .into_iter()
        .filter_map(|id| catalog.next_parent(id).map(|m| m.last_version))
        .min())
}

/// True when nothing is stored under `location`'s prefix (errors count as not empty).
async fn is_empty_prefix(location: &tidemark_table::TableLocation) -> bool {
    location
        .store()
        .list_with_delimiter(Some(location.root()))
        .await
        .is_ok_and(|l| l.objects.is_empty() && l.common_prefixes.is_empty())
}

/// The newest version of the replica at `url` (`None`: empty): listed from its newest
/// checkpoint on (`LogListing::list_newest`), not its whole history.
pub async fn replica_newest_version(url: &str) -> Result<Option<u64>, String> {
    let location = tidemark_table::open_store(url).map_err(|e| e.to_string())?;
    let listing = tidemark_table::LogListing::list_newest(&location)
        .await
        .map_err(|e| e.to_string())?;
    Ok(listing.newest_version())
}

/// Everything `[maintenance]` does after each epoch, for the table and its dead-letter table.
#[derive(Debug)]
pub struct Maintenance {
    config: MaintenanceConfig,
    /// The table as files, for compaction (through the pipeline's file system).
    location: Option<tidemark_table::TableLocation>,
    table: LogMaintenance,
    dead_letters: Option<LogMaintenance>,
    epochs: u64,
}

impl Maintenance {
    /// The maintenance of `sink`'s table (and, once it has commits, the dead-letter table's),
    /// keeping the log a configured `replica` still needs.
    pub async fn open(
        config: &MaintenanceConfig,
        sink: &DeltaSink,
        replica: Option<Url>,
        fs: &tidemark_fs::SharedFs,
    ) -> Self {
        let location = if config.compact_every > 0 {
            match tidemark_table::TableLocation::parse_with_fs(sink.uri(), fs.clone()) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(table = %sink.uri(), "compaction off: cannot open the table as files: {e}");
                    None
                }
            }
        } else {
            None
        };
        Self {
            config: config.clone(),
            location,
            table: LogMaintenance::open(sink, config, replica).await,
            dead_letters: None,
            epochs: 0,
        }
    }

    /// One compaction round, bounded to twice the target size of input: committed between
    /// two epochs of this pipeline, so never racing its commits; a failure is logged and the
    /// next round tries again.
    async fn compact(&mut self, sink: &mut DeltaSink, keep_from: Option<u64>) {
        let Some(location) = &self.location else {
            return;
        };
        let options = tidemark_table::optimize::OptimizeOptions {
            target_bytes: self.config.compact_target_bytes,
            max_input_bytes: Some(self.config.compact_target_bytes.saturating_mul(2)),
        };
        fault::hit(CrashPoint::BeforeCompaction);
        match tidemark_table::optimize::optimize(location, options).await {
            Ok(report) => {
                if let Some(v) = report.version {
                    info!(table = %sink.uri(), version = v, removed = report.removed, added = report.added, files_after = report.files_after, "compaction committed");
                    // The compaction's commit counts for the checkpoint schedule too.
                    self.table.after_commit(sink, v, keep_from).await;
                }
            }
            Err(e) => {
                warn!(table = %sink.uri(), "compaction failed (tried again at the next round): {e}")
            }
        }
    }

    /// The table's log maintenance (for tests and status).
    pub fn table_log(&self) -> &LogMaintenance {
        &self.table
    }

    /// Whether [`Maintenance::after_epoch`] for an epoch committed at `version` reads its
    /// `keep_from` (a Delta checkpoint is due, or a compaction round): the committer scans the
    /// retained checkpoints only then, not after every epoch.
    pub fn needs_keep_from(&self, version: Option<u64>) -> bool {
        version.is_some_and(|v| self.table.schedule.due(v))
            || (self.config.compact_every > 0
                && (self.epochs + 1).is_multiple_of(self.config.compact_every))
    }

    /// After an epoch committed at `version` (`None`: nothing new in the table).
    /// `keep_from`: the oldest table version a retained checkpoint names (see
    /// [`LogMaintenance::after_commit`]).
    pub async fn after_epoch(
        &mut self,
        sink: &mut DeltaSink,
        dead_letters: Option<&mut DeltaSink>,
        version: Option<u64>,
        keep_from: Option<u64>,
    ) {
        self.epochs += 1;
        if let Some(v) = version {
            self.table.after_commit(sink, v, keep_from).await;
        }
        if self.config.compact_every > 0 && self.epochs.is_multiple_of(self.config.compact_every) {
            self.compact(sink, keep_from).await;
        }
        if let Some(dlq) = dead_letters {
            if let Some(v) = dlq.table_version() {
                if self.dead_letters.is_none() {
                    self.dead_letters = Some(LogMaintenance::open(dlq, &self.config, None).await);
                }
                if let Some(m) = self.dead_letters.as_mut() {
                    m.after_commit(dlq, v, None).await;
                }
            }
        }
    }
}

/// The (epoch, table version) of every checkpoint the pipeline's store retains (rewind
/// targets: `tidemark run --rewind-to`), read-only; empty when the store does not exist yet.
pub fn retained_table_versions(
    config: &crate::config::PipelineConfig,
) -> Result<Vec<(u64, u64)>, String> {
    let store = config.paths.state_dir.join("store");
    if !store.join("CURRENT").exists() {
        return Ok(Vec::new());
    }
    let s = tidemark_checkpoint::CheckpointStore::open_read_only(&store)
        .map_err(|e| format!("checkpoint store {}: {e}", store.display()))?;
    let history = s
        .history()
        .map_err(|e| format!("checkpoint store {}: {e}", store.display()))?;
    Ok(history
        .iter()
        .filter_map(|r| {
            tidemark_connectors::TableVersion::from_stored(r.table_version)
                .map(|v| (r.epoch, v.get()))
        })
        .collect())
}

/// The table's `delta.deletedFileRetentionDuration` in ms (7 days unless the table sets it):
/// the shortest retention `tidemark vacuum` accepts without `--force`.
pub async fn deleted_file_retention_ms(table: &str) -> Result<i64, String> {
    use deltalake::table::config::TablePropertiesExt as _;
    let url = tidemark_connectors::delta::table_url(table).map_err(|e| e.to_string())?;
    let mut builder = deltalake::DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| format!("open {url}: {e}"))?;
    // Tables on object stores open through Tidemark's own client (deltalake knows no s3://
    // store of its own here).
    if url.scheme() != "file" {
        let opened =
            tidemark_connectors::table_store::TableStore::open(&url, tidemark_fs::std_fs())
                .map_err(|e| e.to_string())?;
        builder = builder.with_storage_backend(opened.store().clone(), url.clone());
    }
    let mut t = builder.build().map_err(|e| format!("open {url}: {e}"))?;
    t.load().await.map_err(|e| format!("open {url}: {e}"))?;
    let snapshot = t.snapshot().map_err(|e| format!("open {url}: {e}"))?;
    Ok(snapshot
        .table_config()
        .deleted_file_retention_duration()
        .as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::PipelineConfig;

    const BASE: &str = "pipeline_id = \"p\"\n[source]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"t\"]\n[sink]\ntable_uri = \"t\"\n";

    #[test]
    fn maintenance_defaults_and_bad_values_name_the_setting() {
        let c = PipelineConfig::parse(BASE, Path::new("/etc/p.toml")).unwrap();
        assert_eq!(c.maintenance.checkpoint_every, 100);
        assert!(c.maintenance.log_cleanup);
        assert_eq!(c.maintenance.compact_every, 0);
        assert_eq!(c.maintenance.compact_target_bytes, 128 << 20);
        let c = PipelineConfig::parse(
            &format!("{BASE}[maintenance]\ncheckpoint_every = 10\ncompact_every = 4\nbackups = [\"/b\"]\n"),
            Path::new("/etc/p.toml"),
        )
        .unwrap();
        assert_eq!(
            (c.maintenance.checkpoint_every, c.maintenance.compact_every),
            (10, 4)
        );
        let e = PipelineConfig::parse(
            &format!("{BASE}[maintenance]\ncompact_target_bytes = 10\n"),
            Path::new("/etc/p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("maintenance.compact_target_bytes"), "{e}");
        let e = PipelineConfig::parse(
            &format!("{BASE}[maintenance]\ncheckpoint_evry = 10\n"),
            Path::new("/etc/p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("checkpoint_evry"), "{e}");
    }
}
