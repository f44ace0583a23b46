//! `tidemark status`: the last checkpoint, the WAL after it, the table's txn version, and what
//! recovery would do next. It only reads: the store is opened read-only (a running pipeline
//! keeps its lock), the WAL is read without repairing it, and the table is never created.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tidemark_checkpoint::store::Counts;
use tidemark_checkpoint::wal::{segment_files, FrameKind, WalReader};
use tidemark_checkpoint::CheckpointStore;
use tidemark_connectors::delta::DeltaSink;
use tidemark_connectors::Epoch;

use crate::config::PipelineConfig;
use crate::epoch_log::from_store_positions;
use crate::protocol::{decide, StartFacts, StoreFacts};
use crate::recovery::{
    advance_to_ingested_state, continues_checkpoint, read_changelog, state_position, store_dir,
    wal_dir, wal_position,
};
use crate::restart_scan::read_indexed_changelog;
use crate::state_lock;
use crate::wal_damage;

/// Why `tidemark status` could not gather what it shows.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The table could not be read.
    #[error(transparent)]
    Sink(#[from] tidemark_connectors::delta::DeltaSinkError),
    /// The WAL directory could not be listed.
    #[error(transparent)]
    Wal(#[from] tidemark_checkpoint::WalError),
}

/// Everything `tidemark status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pipeline.
    pub pipeline_id: String,
    /// The state directory.
    pub state_dir: String,
    /// The newest checkpoint, if the store has one.
    pub checkpoint: Option<CheckpointStatus>,
    /// Why the store could not be read, if it could not.
    pub store_problem: Option<String>,
    /// WAL segments and bytes.
    pub wal: WalStatus,
    /// The table.
    pub table: TableStatus,
    /// What recovery would do on the next start (the same decision as `tidemark run`'s).
    pub next: String,
    /// Its short name (`resume_epoch`, `redo_epoch`, `from_table`, `refused`, ...).
    pub next_case: &'static str,
    /// The process holding the state directory's lock, if one runs now.
    pub running: Option<String>,
    /// The configured `[replica]` and its lag behind the table (absent without one).
    pub replica: Option<ReplicaStatus>,
    /// A pipeline shared by workers (`source.group`): its workers and its partitions' claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupStatus>,
}

/// The workers of a shared pipeline and where each partition stands (`tidemark status` of a
/// config with `source.group`; `--worker-id` shows one worker's own state instead).
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// The consumer group.
    pub group: String,
    /// Workers with a state directory here or a commit in the table's recent history.
    pub workers: Vec<WorkerStatus>,
    /// Each partition's newest claim (next offset) and the worker that wrote it.
    pub partitions: Vec<tidemark_connectors::partition_claims::ClaimHolder>,
}

/// One worker of a shared pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Its id.
    pub worker_id: String,
    /// The process holding its state directory, if one runs here now.
    pub running: Option<String>,
    /// Its epochs committed (its txn version), if any.
    pub txn_version: Option<Epoch>,
    /// The partitions whose newest claim it wrote.
    pub partitions: Vec<String>,
}

/// How many of the newest commits `status` reads for the partitions' claims.
const CLAIM_HISTORY: usize = 5000;

async fn group_status(config: &PipelineConfig, group: &str) -> Result<GroupStatus, StatusError> {
    let workers_dir = config.paths.state_dir.join("workers");
    let mut ids: std::collections::BTreeSet<String> = std::fs::read_dir(&workers_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let url = config.paths.table_url.clone();
    let mut partitions = Vec::new();
    let mut txns = BTreeMap::new();
    if let Some(sink) = DeltaSink::open_existing(&url, &config.pipeline_id).await? {
        partitions = sink
            .claim_holders(&config.pipeline_id, CLAIM_HISTORY)
            .await?;
        ids.extend(partitions.iter().filter_map(|c| c.worker.clone()));
        for id in &ids {
            let app_id = format!("{}.{id}", config.pipeline_id);
            txns.insert(id.clone(), sink.txn_version_of(&app_id).await?);
        }
    }
    let workers = ids
        .into_iter()
        .map(|id| WorkerStatus {
            running: state_lock::holder(&workers_dir.join(&id)),
            txn_version: txns.get(&id).copied().flatten(),
            partitions: partitions
                .iter()
                .filter(|c| c.worker.as_deref() == Some(id.as_str()))
                .map(|c| c.partition.clone())
                .collect(),
            worker_id: id,
        })
        .collect();
    Ok(GroupStatus {
        group: group.to_string(),
        workers,
        partitions,
    })
}

/// A configured replica and how far it is behind the table: the RPO of a failover to it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// Its URI.
    pub uri: String,
    /// Its lag (versions, bytes, seconds behind), when both logs could be read.
    pub lag: Option<tidemark_table::ReplicationLag>,
    /// Why the lag could not be measured.
    pub problem: Option<String>,
}

/// Measures the replica's lag read-only; a failure is shown, never fatal to `status`.
async fn replica_status(table: &url::Url, replica: &url::Url) -> ReplicaStatus {
    let measured = crate::replica_watch::measure_lag(table, replica).await;
    let (lag, problem) = match measured {
        Ok(lag) => (Some(lag), None),
        Err(e) => (None, Some(e)),
    };
    ReplicaStatus {
        uri: replica.to_string(),
        lag,
        problem,
    }
}

/// The newest checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointStatus {
    /// Epoch (`c`).
    pub epoch: u64,
    /// Newest epoch that made a Delta commit (`t`).
    pub committed_epoch: u64,
    /// Delta version of that commit.
    pub table_version: Option<i64>,
    /// Watermark (micros), if any.
    pub watermark: Option<i64>,
    /// Next offset per partition.
    pub positions: tidemark_connectors::Positions,
    /// Seconds since it was written.
    pub age_secs: f64,
    /// Retained checkpoints (epochs, newest first).
    pub retained: Vec<u64>,
    /// Totals: read, written, duplicates, late, dead-lettered.
    pub counts: Counts,
}

/// The WAL.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalStatus {
    /// Segment files.
    pub segments: usize,
    /// Their total size.
    pub bytes: u64,
    /// Record frames after the checkpoint.
    pub records_after_checkpoint: u64,
    /// Epoch sealed after the checkpoint, if any.
    pub sealed_after_checkpoint: Option<u64>,
    /// The newest epoch whose dedup state the store has synced (the WAL keeps the state
    /// deltas after it), per the checkpoint.
    pub state_epoch: Option<u64>,
    /// A newer epoch the store's own note says its dedup state is durable through (written by
    /// the state writer after the checkpoint record): recovery reads the changelog from there.
    pub state_ingested: Option<u64>,
    /// Damage met while reading (recovery would cut the log there).
    pub damage: Option<String>,
}

/// The table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// Its URI.
    pub uri: String,
    /// Whether it exists.
    pub exists: bool,
    /// Its newest version.
    pub version: Option<u64>,
    /// The pipeline's txn version (`v`).
    pub txn_version: Option<Epoch>,
}

/// Gathers the status of the pipeline in `config`.
pub async fn status(config: &PipelineConfig) -> Result<Status, StatusError> {
    let state = config.paths.state_dir.clone();
    let store_path = store_dir(&state);
    // What `run` would make of the store: corruption is a lost store, any other error stops.
    let mut store_corrupt = false;
    let mut store_stops = None;
    // The checkpoint as a restart reads its changelog, and the epoch the store's note moved
    // its state to, if it did (see `advance_to_ingested_state`).
    let mut changelog_from = None;
    let (latest, store_problem) = if store_path.join("CURRENT").exists() {
        match CheckpointStore::open_read_only(&store_path).and_then(|s| {
            let latest = s.latest()?;
            if let Some(c) = &latest {
                let mut from = c.clone();
                let moved_to = advance_to_ingested_state(&s, &mut from)?;
                changelog_from = Some((from, moved_to));
            }
            Ok((latest, s.history()?))
        }) {
            Ok((latest, history)) => (latest.map(|c| (c, history)), None),
            Err(e) => {
                store_corrupt = e.is_corruption();
                if !store_corrupt {
                    store_stops = Some(e.to_string());
                }
                (None, Some(e.to_string()))
            }
        }
    } else {
        (
            None,
            Some(format!("no checkpoint store at {}", store_path.display())),
        )
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let checkpoint = latest.as_ref().map(|(c, history)| CheckpointStatus {
        epoch: c.epoch,
        committed_epoch: c.committed_epoch,
        table_version: c.table_version,
        watermark: c.watermark,
        positions: from_store_positions(&c.positions),
        age_secs: now.saturating_sub(c.created_at_ms) as f64 / 1000.0,
        retained: history.iter().map(|r| r.epoch).collect(),
        counts: c.counts,
    });

    let wal_path = wal_dir(&state);
    let files = segment_files(&wal_path)?;
    let mut wal = WalStatus {
        segments: files.len(),
        bytes: files.iter().map(|(_, _, size)| size).sum(),
        ..WalStatus::default()
    };
    let from = latest
        .as_ref()
        .map(|(c, _)| wal_position(c))
        .unwrap_or_default();
    // Epoch `c+1`'s records; frames of `c+2` read ahead while `c+1` committed (pipelined
    // epochs) are re-read from the source by recovery, so they are not counted.
    let next = latest.as_ref().map_or(0, |(c, _)| c.epoch) + 1;
    for item in WalReader::new(&wal_path, from) {
        match item {
            Ok((_, frame)) => match frame.kind {
                FrameKind::Record if frame.epoch == next => wal.records_after_checkpoint += 1,
                FrameKind::Record => {}
                FrameKind::Seal => wal.sealed_after_checkpoint = Some(frame.epoch),
                FrameKind::Marker => {}
            },
            Err(e) => {
                wal.damage = Some(e.to_string());
                break;
            }
        }
    }

    // The dedup state's changelog the checkpoint needs, as recovery reads it: from the store's
    // note of its ingested state when that applies; where the checkpoint's index puts it, or
    // (no index, or one that does not match the log) the WAL from the state's position.
    let changelog_complete = match changelog_from {
        Some((c, moved_to)) if config.dedup.is_some() => {
            wal.state_ingested = moved_to;
            match read_indexed_changelog(&tidemark_fs::std_fs(), &wal_path, &c) {
                Some(log) if log.complete => true,
                _ => read_changelog(&c, WalReader::new(&wal_path, state_position(&c)))
                    .map(|l| l.complete)
                    .unwrap_or(false),
            }
        }
        _ => true,
    };
    wal.state_epoch = latest.as_ref().map(|(c, _)| c.state_epoch);

    let url = config.paths.table_url.clone();
    let mut newest_commit = None;
    let table = match DeltaSink::open_existing(&url, &config.pipeline_id).await? {
        Some(mut sink) => {
            let (txn, progress) = sink.progress().await?;
            newest_commit = progress;
            TableStatus {
                uri: url.to_string(),
                exists: true,
                version: sink.table_version(),
                txn_version: txn,
            }
        }
        None => TableStatus {
            uri: url.to_string(),
            exists: false,
            version: None,
            txn_version: None,
        },
    };
    let v = table.txn_version.unwrap_or(Epoch::ZERO).get();
    let c_epoch = checkpoint.as_ref().map_or(0, |c| c.epoch);
    let store_exists = store_path.join("CURRENT").exists();
    let wal_frames = wal.records_after_checkpoint > 0 || wal.sealed_after_checkpoint.is_some();
    let facts = StartFacts {
        checkpoints: config.checkpoint.enabled,
        store: StoreFacts::classify(
            checkpoint.as_ref().map(|c| (c.epoch, c.committed_epoch)),
            store_corrupt,
            store_exists,
            v > 0 || wal_frames,
        ),
        next_sealed: wal.sealed_after_checkpoint == Some(c_epoch + 1),
        wal_has_frames: wal_frames,
        table_txn: v,
        table_continues_checkpoint: newest_commit.as_ref().is_some_and(|p| {
            let positions = checkpoint.as_ref().map(|c| c.positions.clone());
            continues_checkpoint(p, c_epoch, &positions.unwrap_or_default())
        }),
        // Damage an earlier start found and nobody accepted (status does not repair the WAL,
        // so damage no start has seen yet shows as `wal.damage` instead).
        wal_damage_newest_epoch: wal_damage::pending(&wal_path)
            .unwrap_or_default()
            .iter()
            .map(|(_, e)| *e)
            .max(),
        accept_wal_damage: false,
        rewind: None,
        state_changelog_complete: changelog_complete,
    };
    let case = decide(facts);
    let next = match &store_stops {
        Some(e) => format!("the start stops: the checkpoint store cannot be opened ({e})"),
        None => format!(
            "{case} ({} WAL records after the checkpoint)",
            wal.records_after_checkpoint
        ),
    };
    let replica = match &config.paths.replica_url {
        Some(r) => Some(replica_status(&url, r).await),
        None => None,
    };
    let group = match (&config.source.group, &config.worker) {
        (Some(g), None) => Some(group_status(config, g).await?),
        _ => None,
    };
    Ok(Status {
        pipeline_id: config.pipeline_id.clone(),
        group,
        replica,
        running: state_lock::holder(&state),
        next_case: if store_stops.is_some() {
            "stops"
        } else {
            case.name()
        },
        state_dir: state.display().to_string(),
        checkpoint,
        store_problem,
        wal,
        table,
        next,
    })
}

impl Status {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("pipeline     {}", self.pipeline_id));
        line(format!("state dir    {}", self.state_dir));
        line(format!(
            "running      {}",
            self.running
                .as_deref()
                .unwrap_or("no (the state directory is not locked)")
        ));
        match &self.checkpoint {
            Some(c) => {
                line(format!(
                    "checkpoint   epoch {} (committed epoch {}, table version {}), {:.1} s old",
                    c.epoch,
                    c.committed_epoch,
                    c.table_version.map_or("none".into(), |v| v.to_string()),
                    c.age_secs
                ));
                line(format!("  positions  {}", c.positions));
                line(format!(
                    "  watermark  {}",
                    c.watermark
                        .map_or("none".into(), |w| format!("{} ({w} µs)", micros_as_utc(w)))
                ));
                line(format!(
                    "  totals     read {} = written {} + duplicates {} + late {} + dead-lettered {}",
                    c.counts.read,
                    c.counts.written,
                    c.counts.duplicates,
                    c.counts.late,
                    c.counts.dead_lettered
                ));
                line(format!("  retained   {:?}", c.retained));
            }
            None => line(format!(
                "checkpoint   none{}",
                self.store_problem
                    .as_ref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            )),
        }
        line(format!(
            "wal          {} segment(s), {} bytes; {} record(s) after the checkpoint{}{}",
            self.wal.segments,
            self.wal.bytes,
            self.wal.records_after_checkpoint,
            self.wal
                .sealed_after_checkpoint
                .map(|e| format!(", SEAL({e})"))
                .unwrap_or_default(),
            self.wal
                .damage
                .as_ref()
                .map(|d| format!("; damaged: {d}"))
                .unwrap_or_default()
        ));
        let synced = self.wal.state_ingested.or(self.wal.state_epoch);
        if let (Some(m), Some(c)) = (synced, self.checkpoint.as_ref()) {
            if m < c.epoch {
                line(format!(
                    "  state      dedup state synced through epoch {m}; the WAL holds the state deltas of epochs {}..={}",
                    m + 1,
                    c.epoch
                ));
            }
        }
        line(format!(
            "table        {} {}",
            self.table.uri,
            if self.table.exists {
                format!(
                    "version {}, txn version {}",
                    self.table.version.map_or("none".into(), |v| v.to_string()),
                    self.table
                        .txn_version
                        .map_or("none".into(), |v| v.to_string())
                )
            } else {
                "(does not exist yet)".into()
            }
        ));
        if let Some(r) = &self.replica {
            line(format!(
                "replica      {} {}",
                r.uri,
                match (&r.lag, &r.problem) {
                    (Some(l), _) if l.caught_up() => format!(
                        "version {}: caught up",
                        l.replica_version.map_or("none".into(), |v| v.to_string())
                    ),
                    (Some(l), _) => format!(
                        "version {}: {} version(s), {} bytes, {:.1} s behind (oldest missing commit {:.1} s old)",
                        l.replica_version.map_or("none".into(), |v| v.to_string()),
                        l.versions_behind,
                        l.bytes_behind,
                        l.seconds_behind,
                        l.oldest_unreplicated_age_s
                    ),
                    (None, Some(p)) => format!("(lag unknown: {p})"),
                    (None, None) => "(lag unknown)".into(),
                }
            ));
        }
        match &self.group {
            Some(g) => {
                line(format!(
                    "group        {}: {} worker(s), {} partition(s) claimed",
                    g.group,
                    g.workers.len(),
                    g.partitions.len()
                ));
                for w in &g.workers {
                    line(format!(
                        "  worker {:<12} {} · epochs committed {} · newest claims of {}",
                        w.worker_id,
                        w.running.as_deref().unwrap_or("not running here"),
                        w.txn_version.map_or("none".into(), |v| v.to_string()),
                        if w.partitions.is_empty() {
                            "no partition".into()
                        } else {
                            w.partitions.join(", ")
                        }
                    ));
                }
                for c in &g.partitions {
                    line(format!(
                        "  partition {:<20} next offset {:>10} · {}",
                        c.partition,
                        c.next_offset,
                        match (&c.worker, c.table_version) {
                            (Some(w), Some(v)) => format!("claimed by {w} at table version {v}"),
                            _ => "claimed by a commit older than the history read".into(),
                        }
                    ));
                }
                line("next start   each worker resumes its partitions at their claims (tidemark status --worker-id <id> shows one worker's own state)".into());
            }
            None => line(format!("next start   {}", self.next)),
        }
        out
    }
}

/// What `tidemark status --check` found: the health rules of `/readyz` applied to what the
/// checkpoint store, the WAL, the state lock and the broker say.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The pipeline.
    pub pipeline_id: String,
    /// The verdict.
    pub health: crate::health::Health,
    /// Records waiting: in the WAL after the checkpoint, plus Kafka's end offsets beyond the
    /// checkpoint's positions (when the broker answered).
    pub records_waiting: u64,
    /// Seconds since the last checkpoint (each follows a commit), if any.
    pub checkpoint_age_secs: Option<f64>,
}

/// How long a broker request of `--check` may take.
const CHECK_BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Applies the health rules (see [`crate::health`]) from outside the running process.
pub async fn check(config: &PipelineConfig) -> Result<Check, StatusError> {
    use crate::health::{evaluate, HealthFacts, Problem};
    let status = status(config).await?;
    let now = now_ms();
    let mut unknown = Vec::new();
    let mut waiting = status.wal.records_after_checkpoint;
    let source = tidemark_connectors::kafka::KafkaSourceConfig {
        brokers: config.source.brokers.clone(),
        topics: config.source.topics.clone(),
        group_id: format!("tidemark-{}", config.pipeline_id),
        properties: config.source.properties.clone(),
        only: None,
    };
    let positions = status
        .checkpoint
        .as_ref()
        .map(|c| c.positions.clone())
        .unwrap_or_default();
    match tidemark_connectors::kafka::fetch_partition_ends(&source, CHECK_BROKER_TIMEOUT) {
        Ok(ends) => {
            for (topic, partition, high) in ends {
                let next = positions.get(&topic, partition).unwrap_or(0);
                waiting += (high - next).max(0) as u64;
            }
        }
        Err(e) => unknown.push(Problem::Unknown {
            what: format!("the broker's end offsets ({e})"),
        }),
    }
    let state = &config.paths.state_dir;
    // Before the first checkpoint: time since the running process took the lock.
    let since_commit_ms = match &status.checkpoint {
        Some(c) => (c.age_secs * 1000.0) as u64,
        None => std::fs::metadata(state.join(state_lock::LOCK_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |t| now.saturating_sub(t.as_millis() as u64)),
    };
    let history = if config.dedup.is_some() {
        CheckpointStore::open_read_only(&store_dir(state))
            .and_then(|s| s.history())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let o = &config.observability;
    let facts = HealthFacts {
        recovered: status.running.is_some(),
        records_waiting: waiting,
        since_last_commit: std::time::Duration::from_millis(since_commit_ms),
        commit_stall_after: o.commit_stall_after(config.checkpoint.interval()),
        watermark: watermark_progress(&history, now),
        watermark_stuck_after: o.watermark_stuck_after(),
    };
    let mut health = evaluate(&facts);
    health.problems.extend(unknown);
    health.ready = health.problems.is_empty();
    Ok(Check {
        pipeline_id: status.pipeline_id,
        health,
        records_waiting: waiting,
        checkpoint_age_secs: status.checkpoint.map(|c| c.age_secs),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How the watermark moved over the retained checkpoints (`history`, newest first): since the
/// oldest checkpoint holding the newest watermark, how long and how many records read. `None`
/// without a watermark.
pub fn watermark_progress(
    history: &[tidemark_checkpoint::CheckpointRecord],
    now_ms: u64,
) -> Option<crate::health::WatermarkProgress> {
    let newest = history.first()?;
    let current = newest.watermark?;
    let since = history
        .iter()
        .take_while(|c| c.watermark == Some(current))
        .last()?;
    Some(crate::health::WatermarkProgress {
        unchanged_for: std::time::Duration::from_millis(now_ms.saturating_sub(since.created_at_ms)),
        records_read_since: newest.counts.read.saturating_sub(since.counts.read),
    })
}

/// An event time in microseconds as an ISO 8601 UTC time, for people reading `status`.
fn micros_as_utc(micros: i64) -> String {
    arrow::temporal_conversions::timestamp_us_to_datetime(micros).map_or_else(
        || "out of range".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use tidemark_checkpoint::CheckpointRecord;

    fn checkpoint(epoch: u64, watermark: Option<i64>, at_ms: u64, read: u64) -> CheckpointRecord {
        CheckpointRecord {
            epoch,
            committed_epoch: epoch,
            table_version: None,
            watermark,
            wal_segment: 0,
            wal_offset: 0,
            created_at_ms: at_ms,
            counts: tidemark_checkpoint::store::Counts {
                read,
                ..Default::default()
            },
            positions: Vec::new(),
            state_epoch: epoch,
            state_wal_segment: 0,
            state_wal_offset: 0,
            changelog_starts: None,
        }
    }

    #[test]
    fn the_watermark_is_unchanged_since_the_oldest_checkpoint_holding_it() {
        // Newest first: 4 and 3 hold watermark 20, 2 held 10.
        let history = [
            checkpoint(4, Some(20), 4_000, 400),
            checkpoint(3, Some(20), 3_000, 300),
            checkpoint(2, Some(10), 2_000, 200),
        ];
        let p = super::watermark_progress(&history, 10_000).unwrap();
        assert_eq!(p.unchanged_for.as_millis(), 7_000);
        assert_eq!(p.records_read_since, 100);
        assert!(super::watermark_progress(&history[..0], 0).is_none());
        assert!(super::watermark_progress(&[checkpoint(1, None, 0, 0)], 0).is_none());
    }

    #[test]
    fn watermarks_read_as_utc_times() {
        assert_eq!(
            super::micros_as_utc(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(super::micros_as_utc(0), "1970-01-01T00:00:00.000Z");
    }
}
