//! Recovery on start (ARCHITECTURE.md, "Recovery"): gathers the facts — checkpoint `c` with
//! its `t`, the WAL after `c`, the table's txn version `v` — asks [`crate::protocol::decide`]
//! what to do, and does it. Also the two starts without a usable checkpoint: the store was lost (resume
//! from the table's own progress) and a rewind after the table was restored behind the store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Serialize;
use tidemark_checkpoint::store::StateDelta;
use tidemark_checkpoint::wal::RecoveryReport as WalRecovery;
use tidemark_checkpoint::{
    CheckpointRecord, CheckpointStore, CompactionHold, StoreError, StoreOptions, SyncPolicy, Wal,
    WalError, WalOptions, WalPosition,
};
use tidemark_connectors::decode::{COL_PARTITION, COL_TOPIC};
use tidemark_connectors::delta::{
    DeltaSink, DeltaSinkError, EpochCommitInfo, SweepReport, TableProgress,
};
use tidemark_connectors::{Epoch, Positions};
use tidemark_fs::SharedFs;
use tracing::{error, info, warn};

use crate::committer::{
    CommitError, Committer, DeadLetterTable, EpochReport, LoggedDelta, SealedEpoch,
};
use crate::config::{PipelineConfig, WalSync};
use crate::dedup::{ColdError, ColdKeys, DedupState, PackedKeys, WatermarkTracker};
use crate::epoch::{
    settings_diff, settings_refusal, DedupRuntime, DedupSpec, KeySource, OpenEpoch, ProcessError,
    RecordProcessor,
};
use crate::epoch_log::{from_store_positions, Replay, SealInfo};
use crate::partition_dedup::{
    file_may_hold, KeyOrigins, PartitionDedup, TimeColumn, WorkerDedupStart, WorkerStateBuilder,
};
use crate::progress::Progress;
use crate::protocol::{
    decide, FromTableReason, Refusal, RewindFacts, StartCase, StartFacts, StoreFacts,
};
use crate::restart_scan::{
    frame_bytes, read_indexed_changelog, AfterCheckpointLog, ChangelogScan, EpochScan,
};
use crate::state_lock::StateLock;
use crate::wal_damage;

/// Why a start could not recover (the recovery layer's error). A refusal carries the start
/// decision that refused.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The start decision refused: the table, the checkpoint and the WAL disagree.
    #[error("recovery refused to start: {message}")]
    Refused {
        /// The decision.
        refusal: Refusal,
        /// Both numbers and what to do.
        message: String,
    },
    /// A sealed epoch would be redone under other settings than it was sealed with.
    #[error("recovery refused to start: {message}")]
    SettingsChanged {
        /// The sealed epoch.
        epoch: u64,
        /// Each differing setting with both values, and what to do.
        message: String,
    },
    /// The table's progress for this pipeline cannot be trusted.
    #[error("table {table}: {message}")]
    Progress {
        /// The table URI.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// The state directory (WAL, store) is not what recovery expects.
    #[error("state {path}: {message}")]
    State {
        /// The file or place at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The table could not be read or swept.
    #[error(transparent)]
    Sink(#[from] DeltaSinkError),
    /// The write-ahead log could not be opened or read.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The checkpoint store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An epoch committed during recovery (a redo, a resumed epoch) failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// Replayed records could not be processed.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// What recovery found and did; part of the run summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryOutcome {
    /// Which case applied: `fresh`, `resume_epoch`, `redo_epoch`, `write_missing_checkpoint`,
    /// `from_table` (store lost or empty while the table has commits), `rewind`.
    pub case: &'static str,
    /// Checkpoint epoch found (`c`).
    pub checkpoint_epoch: u64,
    /// Its committed epoch (`t`).
    pub committed_epoch: u64,
    /// The table's txn version (`v`).
    pub table_txn: u64,
    /// Records replayed from the WAL.
    pub replayed_records: u64,
    /// Bytes cut off the WAL's tail: a torn write's, or a reused last segment's older bytes.
    pub wal_bytes_cut: u64,
    /// True when the checkpoint store was missing or unreadable and the table's progress was
    /// used instead.
    pub store_lost: bool,
    /// Uncommitted data files deleted at start.
    pub orphan_files_deleted: usize,
    /// The epoch the run continues with.
    pub next_epoch: u64,
    /// Milliseconds recovery took (store, WAL scan, table read, any redo), before the source
    /// connects.
    pub recovery_ms: u64,
    /// Dedup keys loaded (or rebuilt) into state.
    pub dedup_keys_loaded: u64,
    /// Epochs whose state delta was read back from the WAL's changelog (the store's state
    /// lacked them): from the store's own note of what it ingested when that is newer than
    /// the checkpoint record's `state_epoch`.
    pub changelog_epochs: u64,
    /// True when that changelog was read where the checkpoint's index puts each epoch's delta,
    /// and the WAL's open passed only what follows the checkpoint; false when the log was
    /// scanned from the state's position (no index, or one that did not match the log).
    pub changelog_indexed: bool,
    /// The epoch recovery itself committed (a redo, or a resumed epoch's replayed records),
    /// counted as the run's first commit.
    #[serde(skip)]
    pub committed_at_start: Option<CommittedAtStart>,
}

/// An epoch recovery committed, and when its commit landed. Why the moment: the run counts it
/// as its first commit after recovery returns, and what recovery does after the commit
/// (turning the store's compactions back on, which rewrites RocksDB's options file) and what
/// the run does before it counts it (opening the table's maintenance and running what is due,
/// e.g. a Delta checkpoint a crash left due) are not the commit: 40-50 ms of a ~450 ms
/// restart in the logs of the restarts measured when this changed.
#[derive(Debug, Clone)]
pub struct CommittedAtStart {
    /// The commit's report.
    pub report: EpochReport,
    /// When it returned: table and checkpoint durable.
    pub landed: Instant,
}

impl CommittedAtStart {
    /// `report`, landed now.
    fn now(report: EpochReport) -> Self {
        Self {
            report,
            landed: Instant::now(),
        }
    }
}

/// Where the WAL and the store live under the state directory.
pub fn wal_dir(state: &Path) -> PathBuf {
    state.join("wal")
}

/// See [`wal_dir`].
pub fn store_dir(state: &Path) -> PathBuf {
    state.join("store")
}

/// WAL settings from the config.
pub fn wal_options(config: &PipelineConfig) -> WalOptions {
    WalOptions {
        segment_size: config.checkpoint.wal_segment_bytes,
        sync: match config.checkpoint.wal_sync {
            WalSync::OnSeal => SyncPolicy::OnSeal,
            WalSync::EveryBatch => SyncPolicy::EveryBatch,
        },
    }
}

/// Where checkpoint `c` says the WAL after it begins.
pub(crate) fn wal_position(c: &CheckpointRecord) -> WalPosition {
    WalPosition {
        segment: c.wal_segment,
        offset: c.wal_offset,
    }
}

/// Where checkpoint `c` says the WAL's changelog of its state begins (the deltas of epochs
/// `c.state_epoch + 1 ..= c.epoch`; `wal_position(c)` when the state is synced through `c`).
pub(crate) fn state_position(c: &CheckpointRecord) -> WalPosition {
    WalPosition {
        segment: c.state_wal_segment,
        offset: c.state_wal_offset,
    }
}

/// Where the WAL's changelog begins when the store's state is newer than checkpoint `c`'s
/// record says: the state writer noted epoch `m` ingested ([`CheckpointStore::state_ingested`])
/// after `c` was written, so the store holds the state through `m`, and only the deltas of
/// `m + 1 ..= c.epoch` need reading (at a restart with 1 s epochs, one epoch's delta less to
/// read and insert, of two). `Some((m, position after SEAL(m)))` when `c.state_epoch < m <=
/// c.epoch` and `noted`, checkpoint `m`'s record, says where its WAL began (at or before
/// `c`'s); otherwise `None`: `c`'s own changelog, as before.
pub(crate) fn ingested_state(
    c: &CheckpointRecord,
    ingested: Option<u64>,
    noted: Option<&CheckpointRecord>,
) -> Option<(u64, WalPosition)> {
    let m = ingested.filter(|m| *m > c.state_epoch && *m <= c.epoch)?;
    let record = noted.filter(|r| r.epoch == m)?;
    let at = wal_position(record);
    (at >= state_position(c) && at <= wal_position(c)).then_some((m, at))
}

/// Checkpoint `c` as a restart reads its changelog (and `status` forecasts it): its state
/// moved to `store`'s note of its ingested state (and that epoch's record, from the store's
/// history) when [`ingested_state`] allows. Returns the epoch moved to.
pub(crate) fn advance_to_ingested_state(
    store: &CheckpointStore,
    c: &mut CheckpointRecord,
) -> Result<Option<u64>, StoreError> {
    let ingested = store.state_ingested()?;
    let noted = match ingested {
        Some(m) => store.get(m)?,
        None => None,
    };
    let Some((m, at)) = ingested_state(c, ingested, noted.as_ref()) else {
        return Ok(None);
    };
    c.state_epoch = m;
    c.state_wal_segment = at.segment;
    c.state_wal_offset = at.offset;
    // The index's epochs the store now holds are no longer part of the changelog.
    if let Some(starts) = c.changelog_starts.as_mut() {
        starts.retain(|s| s.epoch > m);
    }
    Ok(Some(m))
}

/// One epoch's state delta read back from the WAL's changelog.
#[derive(Debug)]
pub(crate) struct ChangelogDelta {
    /// Where its delta's frames begin (its seal's position when the delta is empty).
    pub starts_at: WalPosition,
    /// Just after its seal.
    pub after_seal: WalPosition,
    /// The epoch, its keys and the watermark its seal decided.
    pub delta: StateDelta,
}

/// The state deltas checkpoint `c`'s state lacks, read back from the WAL: epochs
/// `c.state_epoch + 1 ..= c.epoch` in order.
#[derive(Debug, Default)]
pub(crate) struct Changelog {
    /// The deltas found, in epoch order.
    pub deltas: Vec<ChangelogDelta>,
    /// True when every epoch the state lacks has its whole delta (its seal, counting as many
    /// keys as the frames before it hold).
    pub complete: bool,
    /// True when it was read where the checkpoint's index puts it (not scanned).
    pub indexed: bool,
}

/// Reads the changelog checkpoint `c`'s state lacks from `frames` (the WAL read from
/// [`state_position`]): the frames before the checkpoint's own position (see
/// [`ChangelogScan`], which a restart feeds during the WAL's open instead).
pub(crate) fn read_changelog<E>(
    c: &CheckpointRecord,
    frames: impl IntoIterator<Item = Result<(WalPosition, tidemark_checkpoint::wal::Frame), E>>,
) -> Result<Changelog, E> {
    let mut scan = ChangelogScan::new(c);
    for item in frames {
        let (at, frame) = item?;
        if !scan.feed(at, frame.as_ref()) {
            break;
        }
    }
    Ok(scan.finish())
}

/// How the checkpoint store opened.
enum OpenedStore {
    /// It opened (maybe new and empty).
    Usable(CheckpointStore),
    /// It was corrupt or foreign: moved aside, replaced by an empty one.
    Replaced(CheckpointStore),
}

/// Opens the store. Only real corruption or a foreign store takes the lost-store path (moved
/// aside, kept for inspection, replaced by an empty one); any other error — the store locked,
/// too many open files, permission denied, disk full — stops the start with that error and
/// changes nothing.
fn open_store(dir: &Path, retain: usize) -> Result<(OpenedStore, CompactionHold), RecoveryError> {
    let existed = dir.join("CURRENT").exists();
    match CheckpointStore::open_holding_compactions(dir, StoreOptions { retain }) {
        Ok((store, hold)) => Ok((OpenedStore::Usable(store), hold)),
        Err(e) if existed && e.is_corruption() => {
            let aside = set_aside(dir, "unreadable")?;
            error!(store = %dir.display(), moved_to = %aside.display(), "CHECKPOINT STORE UNREADABLE ({e}); it was moved aside; resuming from the table's own progress");
            let (store, hold) =
                CheckpointStore::open_holding_compactions(dir, StoreOptions { retain })?;
            Ok((OpenedStore::Replaced(store), hold))
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves `path` (the store or the WAL directory) aside to `<name>.<what>-<unix ms>` beside
/// it, and fsyncs the parent: a corrupt store and a WAL that no longer applies are kept for
/// inspection, never deleted. (Starts that resume from the table do clear the store's
/// checkpoints and dedup state, which the table then replaces.)
fn set_aside(path: &Path, what: &str) -> Result<PathBuf, RecoveryError> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let aside = path.with_file_name(format!("{name}.{what}-{ms}"));
    let failed = |io: std::io::Error| RecoveryError::State {
        path: path.to_path_buf(),
        message: format!("cannot move it aside to {}: {io}", aside.display()),
    };
    std::fs::rename(path, &aside).map_err(failed)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(aside)
}

/// The dead-letter windows of a plain start ([`StartOptions::dead_letter_windows`]): per
/// partition the table read, its last committed Kafka timestamp minus the default failover
/// margin (records before it are not read again); the whole partition when no timestamp is
/// known.
fn windows_after_last_commit(
    info: Option<&tidemark_connectors::delta::EpochCommitInfo>,
) -> crate::dead_letter_overlap::Windows {
    let margin = crate::failover::DEFAULT_MARGIN.as_millis() as i64;
    info.map(|i| {
        i.partitions
            .iter()
            .map(|p| {
                (
                    tidemark_connectors::TopicPartition {
                        topic: p.topic.clone(),
                        partition: p.partition,
                    },
                    p.last_timestamp_ms.map(|ts| ts.saturating_sub(margin)),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

/// What a start may be asked beyond the config.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `--rewind-to`: the table is behind the store; rewind to this retained checkpoint.
    pub rewind_to: Option<u64>,
    /// `--accept-wal-damage`: continue past WAL damage before its end, re-reading from the
    /// source what the damaged segments held.
    pub accept_wal_damage: bool,
    /// A failover start: the state directory was set aside, and the table's progress is
    /// continued at these positions (found by time on another cluster) instead of its own.
    pub start_positions: Option<Positions>,
    /// The cluster a failover start reads (`None`: the one the table's progress belongs to).
    pub cluster_id: Option<String>,
    /// A failover start: per partition, from which Kafka timestamp the run may read records
    /// again whose dead letters the table holds from the old cluster
    /// ([`crate::dead_letter_overlap`]; `None`: after the table's last committed timestamps).
    pub dead_letter_windows: Option<crate::dead_letter_overlap::Windows>,
    /// A worker of a shared pipeline: such a start always resumes from the table
    /// ([`crate::protocol::decide_for_worker`]).
    pub worker: Option<WorkerStart>,
}

/// A worker's start from the table: its partitions at their claims, and what its dedup state
/// is rebuilt from.
#[derive(Debug, Clone)]
pub struct WorkerStart {
    /// Its assigned partitions at the table's claims (absent: no claim, read from the
    /// beginning).
    pub positions: Positions,
    /// Its partitions and their dedup floors; its dedup state is rebuilt from their rows only
    /// ([`crate::partition_dedup`]).
    pub dedup: WorkerDedupStart,
}

/// Runs recovery and returns the committer and the epoch to continue with (holding any
/// replayed records). Every start goes through [`crate::protocol::decide`]: the facts are gathered
/// here, the decision is pure, and each case is carried out below.
pub async fn recover(
    config: &PipelineConfig,
    lock: &StateLock,
    fs: &SharedFs,
    mut sink: DeltaSink,
    dead_letter_sink: Option<DeltaSink>,
    processor: &RecordProcessor,
    options: StartOptions,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), RecoveryError> {
    let state = lock.dir();
    let store_path = store_dir(state);
    let store_existed = store_path.join("CURRENT").exists();
    // RocksDB's compactions wait until recovery returns (after its first commit, if it makes
    // one): see `CheckpointStore::open_holding_compactions`.
    let (opened, _compactions_held) = open_store(&store_path, config.checkpoint.retain)?;
    let (store, replaced) = match opened {
        OpenedStore::Usable(s) => (s, false),
        OpenedStore::Replaced(s) => (s, true),
    };
    let mut latest = store.latest()?;
    if let Some(c) = latest.as_mut() {
        let record_state_epoch = c.state_epoch;
        if let Some(m) = advance_to_ingested_state(&store, c)? {
            info!(
                checkpoint = c.epoch,
                record_state_epoch,
                state_epoch = m,
                "the store's dedup state is newer than the checkpoint record says: the WAL's changelog is read from epoch {}",
                m + 1
            );
        }
    }
    // The dedup state is the slowest part of a restart with a big state: its load starts now,
    // in the background, while the table, the WAL and the sweep are read. Verdicts do not wait
    // for it: the state answers from the store's key index while it loads
    // (`DedupState::loading`).
    let preload = match (&latest, processor.dedup()) {
        // (A worker's state comes from the table at every start: no load.)
        (Some(c), Some(spec)) if config.checkpoint.enabled && options.worker.is_none() => {
            // The replay's lookups read the store's tables while the load runs.
            store.read_tables_ahead();
            Some(StateLoad::start(
                store.clone(),
                c.watermark,
                spec.expected_keys,
            ))
        }
        _ => None,
    };

    let (txn, progress) = sink.progress().await?;
    // The topic ids recorded with the positions: recorded again by commits (a redo during
    // recovery included) and checked against the broker's when the source connects. The newest
    // commit usually has them; the history is read further back only when it does not.
    let topic_ids = match progress.as_ref().map(|p| &p.info.topic_ids) {
        Some(ids) if !ids.is_empty() => ids.clone(),
        _ => sink.recorded_topic_ids().await?,
    };
    sink.set_topic_ids(topic_ids);
    let v = txn.unwrap_or(Epoch::ZERO).get();
    check_table_progress(config, &sink, v, progress.as_ref())?;
    let mut outcome = RecoveryOutcome {
        table_txn: v,
        ..RecoveryOutcome::default()
    };
    let mut dead_letter_table = match dead_letter_sink {
        Some(sink) => Some(DeadLetterTable::open(sink).await?),
        None => None,
    };
    // Only a table some failover opened (generation 2 on) can have letters of another cluster
    // in its dead-letter table: other starts do not read the dead-letter table's history.
    let failed_over = options.start_positions.is_some() || sink.table_generation()? > 1;
    if let Some(dlq) = dead_letter_table.as_mut().filter(|_| failed_over) {
        let info = progress.as_ref().map(|p| &p.info);
        let here = options
            .cluster_id
            .clone()
            .or_else(|| info.and_then(|i| i.cluster_id.clone()));
        if let Some(here) = here {
            let start = options
                .start_positions
                .clone()
                .or_else(|| info.map(|i| i.end_positions.clone()))
                .unwrap_or_default();
            let windows = options
                .dead_letter_windows
                .clone()
                .unwrap_or_else(|| windows_after_last_commit(info));
            dlq.guard_other_clusters(&config.pipeline_id, &here, &start, &windows)
                .await?;
        }
    }

    let c_epoch = latest.as_ref().map_or(0, |c| c.epoch);
    // The open scans (and repairs) from where the state's changelog begins, or, when the
    // checkpoint's changelog index reads that changelog, from the checkpoint's own position.
    // The same pass reads the changelog (without an index) and what follows the checkpoint
    // (`restart_scan`); a store found lost below drops what they read.
    let (mut wal, wal_report, scanned) = open_wal_and_scan(
        config,
        fs,
        state,
        latest.as_ref(),
        processor.dedup().is_some(),
    )?;
    log_wal_recovery(&wal_report, &mut outcome);
    let store_facts = StoreFacts::classify(
        latest.as_ref().map(|c| (c.epoch, c.committed_epoch)),
        replaced,
        store_existed,
        v > 0 || wal_report.frames > 0,
    );
    let store_lost = store_facts == StoreFacts::Lost;
    let (after_checkpoint, changelog) = match scanned {
        Some((after, changelog)) if !store_lost => (after?, changelog),
        _ => (AfterCheckpointLog::default(), None),
    };
    let AfterCheckpointLog {
        records,
        seal,
        logged_delta,
    } = after_checkpoint;
    let changelog = changelog.unwrap_or(Changelog {
        complete: true,
        ..Changelog::default()
    });
    outcome.changelog_indexed = changelog.indexed;
    if !changelog.complete {
        error!(checkpoint = c_epoch, state_epoch = latest.as_ref().map(|c| c.state_epoch), deltas_found = changelog.deltas.len(), "the WAL does not hold the dedup state's changelog the checkpoint needs (damaged or lost segments)");
    }
    let checkpoint_positions = latest
        .as_ref()
        .map(|c| from_store_positions(&c.positions))
        .unwrap_or_default();
    let rewind = match options.rewind_to {
        Some(r) => Some(RewindFacts {
            to: r,
            target_committed_epoch: store.get(r)?.map(|t| t.committed_epoch),
        }),
        None => None,
    };
    // Damage this open moved aside is remembered at once (a kill or another refusal before the
    // decision must not forget it); with damage earlier starts found and nobody accepted, it
    // decides whether this start may go on.
    if let Some(m) = &wal_report.mid_log {
        let newest = damage_newest_epoch(&wal_report, c_epoch).unwrap_or(c_epoch + 1);
        wal_damage::mark_pending(&m.moved_to, newest).map_err(|io| RecoveryError::State {
            path: m.moved_to.clone(),
            message: format!("cannot record the WAL damage as pending: {io}"),
        })?;
    }
    let pending_damage =
        wal_damage::pending(&wal_dir(state)).map_err(|io| RecoveryError::State {
            path: wal_dir(state),
            message: format!("cannot list damaged WAL segments set aside: {io}"),
        })?;
    let damage_newest = pending_damage.iter().map(|(_, e)| *e).max();
    let facts = StartFacts {
        checkpoints: config.checkpoint.enabled,
        store: store_facts,
        next_sealed: seal.is_some(),
        wal_has_frames: !records.is_empty() || seal.is_some(),
        table_txn: v,
        table_continues_checkpoint: progress
            .as_ref()
            .is_some_and(|p| continues_checkpoint(p, c_epoch, &checkpoint_positions)),
        wal_damage_newest_epoch: damage_newest,
        accept_wal_damage: options.accept_wal_damage,
        rewind,
        state_changelog_complete: changelog.complete,
    };
    let decision = if options.worker.is_some() {
        crate::protocol::decide_for_worker(facts)
    } else {
        decide(facts)
    };
    info!(case = decision.name(), ?facts, "recovery: {decision}");
    outcome.checkpoint_epoch = c_epoch;
    outcome.committed_epoch = latest.as_ref().map_or(0, |c| c.committed_epoch);
    outcome.case = decision.name();
    if let StartCase::Refuse(refusal) = decision {
        // A start that refuses changes nothing: no sweep, no re-anchoring, no reset.
        drop(preload);
        return Err(refused(refusal, v, &store));
    }
    if options.accept_wal_damage {
        for (dir, newest_epoch) in &pending_damage {
            warn!(damaged = %dir.display(), newest_epoch, "WAL damage accepted (--accept-wal-damage): what it held is re-read from Kafka");
            wal_damage::mark_accepted(dir).map_err(|io| RecoveryError::State {
                path: dir.clone(),
                message: format!("cannot record the WAL damage as accepted: {io}"),
            })?;
        }
    }
    // Files of epochs the table does not hold, written by runs of this state directory (all
    // dead but this one): a write or commit that did not land.
    outcome.orphan_files_deleted = swept(
        sink.sweep_uncommitted_files(Epoch::new(v), lock.own_runs())
            .await?,
        sink.uri(),
    );
    if let Some(dlq) = dead_letter_table.as_mut() {
        let report = dlq
            .sink
            .sweep_uncommitted_files(dlq.txn, lock.own_runs())
            .await?;
        outcome.orphan_files_deleted += swept(report, dlq.sink.uri());
    }
    if let Some(c) = latest.as_mut().filter(|c| wal.end() < wal_position(c)) {
        // The log's tail was lost below the checkpointed position: re-anchor the checkpoint
        // in a new segment so later frames are found after it.
        warn!(checkpoint_wal = ?wal_position(c), wal_end = ?wal.end(), "the WAL ends before the checkpointed position; re-anchoring checkpoint {} in a new segment", c.epoch);
        let at = wal.start_new_segment(c.epoch + 1)?;
        if c.state_epoch >= c.epoch {
            c.state_wal_segment = at.segment;
            c.state_wal_offset = at.offset;
        }
        c.wal_segment = at.segment;
        c.wal_offset = at.offset;
        store.write_record(c)?;
    }

    // One committer for every case; a checkpoint, if any, sets its totals and progress below.
    let mut committer = Committer::new(
        sink,
        wal,
        store,
        config.pipeline_id.clone(),
        dead_letter_table,
        config.checkpoint.enabled,
    );
    if let Some(c) = &latest {
        committer.continue_from(c);
    }
    if let Some(p) = &progress {
        committer.carry_positions_from(&p.info);
    }
    let replay = AfterCheckpoint {
        records,
        seal,
        logged_delta,
        changelog: changelog.deltas,
        preload,
    };
    match decision {
        StartCase::Fresh
        | StartCase::ResumeEpoch { .. }
        | StartCase::RedoEpoch { .. }
        | StartCase::WriteMissingCheckpoint { .. } => {
            from_checkpoint(
                committer,
                processor,
                latest,
                decision,
                replay,
                progress.as_ref(),
                outcome,
            )
            .await
        }
        StartCase::FromTable { reason, .. } => {
            // The store's state is not used: the load ends before the store is reset.
            drop(replay.preload);
            let mut progress = progress;
            if reason == FromTableReason::Rewind {
                if let Some(target) = options
                    .rewind_to
                    .map(|r| committer.store().get(r))
                    .transpose()?
                    .flatten()
                {
                    warn!(rewind_to = target.epoch, checkpoint_committed_epoch = target.committed_epoch, table_txn = v, "REWIND: the table is behind the store; restarting from the table's progress at epoch {v}, new epochs numbered from {}", v + 1);
                    if target.committed_epoch == v && v > 0 {
                        // The checkpoint agrees with the table: its positions may already be
                        // past trailing epochs that needed no commit.
                        if let Some(p) = progress.as_mut() {
                            p.info.end_positions = from_store_positions(&target.positions);
                        }
                    }
                }
            }
            if reason == FromTableReason::GroupWorker {
                // Not set aside (a worker starts so at every rebalance): all it holds is in
                // the table or still in Kafka.
                let (segments, bytes) = committer.discard_wal(v + 1)?;
                if segments > 0 {
                    info!(
                        segments,
                        bytes, "worker start: WAL records not in the table are re-read from Kafka"
                    );
                }
                if let (Some(p), Some(w)) = (progress.as_mut(), options.worker.as_ref()) {
                    p.info.end_positions = w.positions.clone();
                }
            } else if reason != FromTableReason::CheckpointsOff {
                committer = set_wal_aside(committer, config, fs, state, reason)?;
            }
            if let Some(positions) = options.start_positions.clone() {
                // A failover: the table's positions are of the old cluster; the topic ids too.
                warn!(table_txn = v, from = %progress.as_ref().map(|p| p.info.end_positions.to_string()).unwrap_or_default(), to = %positions, "FAILOVER: continuing the table's progress (epoch {v}) at positions found by time on the new cluster; the overlap is dropped by the dedup state rebuilt from the table");
                committer.record_topic_ids(Default::default());
                if let Some(p) = progress.as_mut() {
                    p.info.end_positions = positions;
                }
                outcome.case = "failover";
            }
            from_table(
                committer,
                processor,
                progress,
                options.worker,
                reason,
                outcome,
            )
            .await
        }
        StartCase::Refuse(_) => unreachable!("a refused start returned before the committer"),
    }
}

/// The error for a refused start, with what the operator can do.
fn refused(refusal: Refusal, v: u64, store: &CheckpointStore) -> RecoveryError {
    let message = match refusal {
        Refusal::TableBehind { .. } => format!(
            "{refusal}. Retained checkpoints: {}. Start with --rewind-to <epoch> to rewind to one whose committed epoch is <= {v}",
            retained(store)
        ),
        Refusal::RewindTargetMissing { .. } | Refusal::RewindTargetAhead { .. } => {
            format!("{refusal} (retained: {})", retained(store))
        }
        other => other.to_string(),
    };
    RecoveryError::Refused { refusal, message }
}

/// Logs what the start-up sweep found; returns how many files it deleted.
fn swept(report: SweepReport, table: &str) -> usize {
    if !report.foreign.is_empty() {
        warn!(table, files = report.foreign.len(), first = %report.foreign[0], "uncommitted data files of other runs (another writer with its own state directory, or a lost state directory) were left in place: a vacuum removes them once no writer can commit them");
    }
    report.deleted.len()
}

/// True when the table's newest commit `p` is epoch `c+1` and starts where checkpoint `c` (at
/// `positions`; no checkpoint: epoch 0, empty positions) ends: it continues that checkpoint.
/// The one definition `run` and `status` both use.
pub(crate) fn continues_checkpoint(p: &TableProgress, c: u64, positions: &Positions) -> bool {
    p.info.epoch.get() == c + 1 && p.info.start_positions == *positions
}

/// The table's newest commit of this pipeline must record the txn version's epoch.
fn check_table_progress(
    config: &PipelineConfig,
    sink: &DeltaSink,
    v: u64,
    progress: Option<&TableProgress>,
) -> Result<(), RecoveryError> {
    match progress {
        Some(p) if p.info.epoch.get() != v => Err(RecoveryError::Progress {
            table: sink.uri().to_string(),
            message: format!(
                "txn version for pipeline {:?} is {v} but its newest commitInfo records epoch {}; \
                 the table's log was altered or another writer uses this pipeline id",
                config.pipeline_id, p.info.epoch
            ),
        }),
        None if v != 0 => Err(RecoveryError::Progress {
            table: sink.uri().to_string(),
            message: format!("txn version for pipeline {:?} is {v} but no commit of it records Tidemark progress", config.pipeline_id),
        }),
        _ => Ok(()),
    }
}

/// Moves the WAL directory aside (never deleting it) and opens a new, empty WAL in its place:
/// for starts that resume from the table, whose old log positions mean nothing any more.
fn set_wal_aside(
    committer: Committer,
    config: &PipelineConfig,
    fs: &SharedFs,
    state: &Path,
    reason: FromTableReason,
) -> Result<Committer, RecoveryError> {
    let dir = wal_dir(state);
    let on_disk = committer.wal_segments();
    let segments = on_disk.len();
    let bytes: u64 = on_disk.iter().map(|(_, _, size)| size).sum();
    if segments == 0 {
        return Ok(committer);
    }
    let aside = set_aside(&dir, "set-aside")?;
    warn!(moved_to = %aside.display(), segments, bytes, ?reason, "WAL moved aside (not deleted): its records are re-read from the source");
    let (wal, _) = Wal::open_with_fs(fs.clone(), &dir, wal_options(config), None)?;
    let mut committer = committer;
    committer.set_wal(wal);
    Ok(committer)
}

/// What the one pass of the WAL's open read for a start from checkpoint `latest` (`None`
/// with checkpoints off): what follows the checkpoint (or the frame that cannot follow it),
/// and with dedup the state's changelog.
type Scanned = (Result<AfterCheckpointLog, RecoveryError>, Option<Changelog>);

/// Bytes of WAL read between two progress updates.
const PROGRESS_STEP: u64 = 4 << 20;

/// Reads `latest`'s state changelog (with `dedup`) where its index puts it, or else in the
/// open's one pass from where the changelog begins, and what follows the checkpoint
/// ([`crate::restart_scan`]) in that pass.
fn open_wal_and_scan(
    config: &PipelineConfig,
    fs: &SharedFs,
    state: &Path,
    latest: Option<&CheckpointRecord>,
    dedup: bool,
) -> Result<(Wal, WalRecovery, Option<Scanned>), RecoveryError> {
    let dir = wal_dir(state);
    let enabled = config.checkpoint.enabled;
    // A dedup state to restore from a checkpoint's changelog.
    let reads_changelog = enabled && dedup;
    // With the checkpoint's changelog index, the deltas are read where they are (before the
    // open, so damage the open moves aside after them does not take them), and the open scans
    // only from the checkpoint's own position: the records of the epochs in between are
    // committed and never read again. Without one (or when a frame it names does not check
    // out or cannot be read) the open scans from the state's position and reads the changelog on the way.
    let started = Instant::now();
    let indexed = match latest
        .filter(|_| reads_changelog)
        .and_then(|c| read_indexed_changelog(fs, &dir, c))
    {
        Some(mut log) if log.complete => {
            log.indexed = true;
            let keys: usize = log.deltas.iter().map(|d| d.delta.inserts.len()).sum();
            info!(
                epochs = log.deltas.len(),
                keys,
                ms = started.elapsed().as_millis() as u64,
                "the dedup state's changelog read where the checkpoint's index puts it"
            );
            Some(log)
        }
        Some(log) => {
            warn!(
                epochs_read = log.deltas.len(),
                "the checkpoint's changelog index could not be followed (the warning before says why): the log is scanned from the state's position instead"
            );
            None
        }
        None => None,
    };
    // With the index, the open starts just after the changelog's last seal (`SEAL(c)`), not
    // at the checkpoint's own position: a checkpoint recovery wrote is at the log's end, after
    // frames of the next epoch the crashed run read ahead, and those are scanned (and a torn
    // end among them cut) as before.
    let open_from = match (&indexed, latest) {
        (Some(log), Some(c)) => Some(
            log.deltas
                .last()
                .map_or(wal_position(c), |d| d.after_seal.min(wal_position(c))),
        ),
        _ => latest.map(state_position),
    };
    let mut after = enabled.then(|| {
        EpochScan::new(
            latest.map(wal_position).unwrap_or_default(),
            latest.map_or(0, |c| c.epoch) + 1,
        )
    });
    let mut changelog = latest
        .filter(|_| reads_changelog && indexed.is_none())
        .map(ChangelogScan::new);
    let from = open_from.unwrap_or_default();
    let bytes: u64 = tidemark_checkpoint::wal::segment_files_in(&**fs, &dir)
        .unwrap_or_default()
        .iter()
        .filter(|(id, _, _)| *id >= from.segment)
        .map(|(_, _, size)| size)
        .sum();
    let mut unreported = 0u64;
    let mut progress = Progress::new(
        "reading the WAL",
        "bytes",
        bytes.saturating_sub(from.offset),
    );
    let (wal, report) = Wal::open_visiting(
        fs.clone(),
        &dir,
        wal_options(config),
        open_from,
        &mut |at, frame| {
            // Progress in steps of a few MB: a clock read per frame cost ~3% of the pass.
            unreported += frame_bytes(frame);
            if unreported >= PROGRESS_STEP {
                progress.add(std::mem::take(&mut unreported));
            }
            if let Some(scan) = changelog.as_mut() {
                scan.feed(at, frame);
            }
            if let Some(scan) = after.as_mut() {
                scan.feed(at, frame);
            }
        },
    )?;
    progress.add(unreported);
    progress.finish();
    let changelog = indexed.or_else(|| changelog.map(ChangelogScan::finish));
    let scanned = after.map(|a| (a.finish(), changelog));
    Ok((wal, report, scanned))
}

fn log_wal_recovery(report: &WalRecovery, outcome: &mut RecoveryOutcome) {
    if let Some(m) = &report.mid_log {
        error!(
            moved_to = %m.moved_to.display(),
            segments = m.segments.len(),
            at_segment = m.at_segment,
            at_offset = m.at_offset,
            epochs = ?m.epochs_seen,
            seals = ?m.seals_seen,
            reason = %m.reason,
            "recovery: the WAL is DAMAGED BEFORE ITS END (not a torn tail); the damaged segment and every later one were moved aside, not deleted"
        );
    }
    if let Some(t) = &report.truncation {
        outcome.wal_bytes_cut = t.bytes_dropped;
        if t.reused_file {
            info!(
                segment = %t.segment.display(),
                at = t.at,
                bytes_dropped = t.bytes_dropped,
                reason = %t.reason,
                "recovery: the WAL's last segment, a reused file, was cut to its frames (the bytes after them were an older segment's); any record past them is re-read from the source"
            );
        } else {
            warn!(
                segment = %t.segment.display(),
                at = t.at,
                bytes_dropped = t.bytes_dropped,
                reason = %t.reason,
                "recovery: the WAL's torn tail was cut off; records in it are re-read from the source"
            );
        }
    }
}

/// The newest epoch held by WAL segments that were damaged before the log's end (moved
/// aside by the WAL's open), if any. When the damaged part shows no epoch at all, it is taken
/// to hold the epoch after the checkpoint: the only one a WAL after it replays (with pipelined
/// epochs it may also hold frames of the epoch after that, read ahead while the first one
/// committed; those are re-read from the source either way, see `wal_tail`).
fn damage_newest_epoch(report: &WalRecovery, checkpoint_epoch: u64) -> Option<u64> {
    let damage = report.mid_log.as_ref()?;
    Some(
        damage
            .epochs_seen
            .map_or(checkpoint_epoch + 1, |(_, newest)| newest),
    )
}

/// The WAL's content after the checkpoint: the records of `c+1` and its seal, if any.
struct AfterCheckpoint {
    records: Replay,
    seal: Option<SealInfo>,
    /// The state delta the WAL logged before that seal, if whole.
    logged_delta: Option<LoggedDelta>,
    /// The state deltas the checkpoint's state lacks (epochs after its `state_epoch`).
    changelog: Vec<ChangelogDelta>,
    /// The store's dedup state, loading since the store opened.
    preload: Option<StateLoad>,
}

/// The cases that continue from the checkpoint `c` (or from none yet).
async fn from_checkpoint(
    mut committer: Committer,
    processor: &RecordProcessor,
    c: Option<CheckpointRecord>,
    decision: StartCase,
    replay: AfterCheckpoint,
    landed: Option<&TableProgress>,
    mut outcome: RecoveryOutcome,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), RecoveryError> {
    let (c_epoch, c_t, positions) = match &c {
        Some(c) => (
            c.epoch,
            c.committed_epoch,
            from_store_positions(&c.positions),
        ),
        None => (0, 0, Positions::new()),
    };
    let v = outcome.table_txn;
    let AfterCheckpoint {
        records,
        seal,
        logged_delta,
        changelog,
        preload,
    } = replay;
    // Dropped when this returns: after the replay's commit (or its failure).
    let mut _load_paused = None;
    let mut _state_held = None;
    if let Some(spec) = processor.dedup() {
        let started = std::time::Instant::now();
        let watermark = c.as_ref().and_then(|c| c.watermark);
        let mut state = match preload {
            // Queryable at once: the changelog in memory, the store's part by lookup until its
            // load ends. The load waits while the WAL's records are replayed and committed.
            Some(load) => {
                if !records.is_empty() {
                    _load_paused = Some(load.pause());
                }
                DedupState::loading(Box::new(load), watermark)
            }
            None => load_dedup_state(committer.store(), watermark, spec.expected_keys)?,
        };
        let loading = state.is_loading();
        // While loading, the store's part is counted by RocksDB's estimate.
        let stored = if loading {
            committer.store().estimated_dedup_entries() as usize
        } else {
            state.len()
        };
        // Room for the changelog and for every key the replay may add: a table sized for the
        // changelog alone grew at the replay's first new keys, on the replay's path (measured
        // at a 1 s restart: ~0.11 s of the main thread's 0.34 s replay went to that growth,
        // moving ~1M entries and the kernel zeroing the new table's pages).
        let changelog_keys: usize = changelog.iter().map(|d| d.delta.inserts.len()).sum();
        state.reserve_faulted_in(changelog_keys + records.len());
        for d in &changelog {
            state.load_changelog(&d.delta.inserts);
        }
        let keys = if loading {
            stored + state.len()
        } else {
            state.len()
        };
        outcome.dedup_keys_loaded = keys as u64;
        outcome.changelog_epochs = changelog.len() as u64;
        committer.set_dedup(dedup_runtime(spec, state, &positions));
        info!(
            keys,
            from_store = stored,
            changelog_epochs = changelog.len(),
            ?watermark,
            loading_in_background = loading,
            ms = started.elapsed().as_millis() as u64,
            "dedup state ready: the WAL's changelog in memory, the store's part {}",
            if loading {
                "(an estimate of its keys) answering lookups while it loads in the background"
            } else {
                "loaded"
            }
        );
        if !records.is_empty() {
            // The changelog is durable in the WAL: the store gets it once the replay's commit
            // is done, instead of sharing the cores with that commit.
            _state_held = Some(committer.hold_state_writes());
        }
        committer.resume_changelog(changelog)?;
    }
    outcome.replayed_records = records.len() as u64;
    match decision {
        StartCase::Fresh | StartCase::ResumeEpoch { .. } => {
            let epoch = c_epoch + 1;
            let open = replayed_epoch(&mut committer, processor, epoch, positions, &records, true)?;
            if records.is_empty() {
                outcome.next_epoch = epoch;
                return Ok((committer, open, outcome));
            }
            // The replayed records were read before the crash: seal and commit them now instead
            // of waiting for the source and the epoch's interval, so a restart's first commit
            // does not depend on the broker (the seal fixes the epoch's end as usual).
            info!(checkpoint = c_epoch, committed_epoch = c_t, table_txn = v, epoch, replayed = records.len(), "recovery: no seal after the checkpoint: replayed the unsealed WAL records; sealing and committing them now");
            let end = open.end.clone();
            let sealed = committer.seal(open, processor)?;
            let report = committer.commit_sealed(sealed, None).await?;
            info!(epoch, version = ?report.version, rows = report.counts.written, "recovery: resumed epoch committed");
            outcome.committed_at_start = Some(CommittedAtStart::now(report));
            outcome.next_epoch = epoch + 1;
            Ok((committer, OpenEpoch::new(epoch + 1, end), outcome))
        }
        StartCase::RedoEpoch { epoch } => {
            let seal = checked_seal(processor, seal, &records, epoch)?;
            let mut open = replay_sealed(&mut committer, processor, &seal, &records, epoch, true)?;
            open.finish_encoding()?;
            info!(
                checkpoint = c_epoch,
                committed_epoch = c_t,
                table_txn = v,
                epoch,
                replayed = records.len(),
                "recovery: epoch sealed but not in the table: redoing it from the WAL"
            );
            let delta = redo_delta(&mut committer, logged_delta, epoch);
            let report = committer
                .commit_sealed(SealedEpoch::replayed(open, delta), None)
                .await?;
            info!(epoch, version = ?report.version, rows = report.counts.written, "recovery: redone epoch committed");
            outcome.committed_at_start = Some(CommittedAtStart::now(report));
            outcome.next_epoch = epoch + 1;
            Ok((
                committer,
                OpenEpoch::new(epoch + 1, seal.end_positions),
                outcome,
            ))
        }
        StartCase::WriteMissingCheckpoint { epoch } => {
            let seal = checked_seal(processor, seal, &records, epoch)?;
            let dedup = committer.shared_dedup().is_some();
            let delta = match trusted_landed_commit(
                &seal,
                landed.map(|p| &p.info),
                dedup,
                logged_delta.as_ref().map(|d| &d.keys),
                epoch,
            ) {
                Some(info) => {
                    // The counts and keys a replay would rebuild, from the epoch's commit and
                    // the delta its WAL logged (see `trusted_landed_commit`).
                    if let (Some(mut d), Some(delta)) = (committer.dedup(), logged_delta.as_ref()) {
                        d.state.load_changelog(&delta.keys);
                        d.state.advance(seal.watermark);
                    }
                    outcome.replayed_records = 0;
                    info!(checkpoint = c_epoch, committed_epoch = c_t, table_txn = v, epoch, logged_keys = logged_delta.as_ref().map(|d| d.keys.len()), "recovery: epoch sealed and in the table, checkpoint missing: writing checkpoint {epoch} from its commit's counts and the state delta its WAL logged (no replay)");
                    committer.add_committed(info);
                    logged_delta
                }
                None => {
                    // Replay rebuilds the epoch's counts (and, with dedup, its state).
                    let open =
                        replay_sealed(&mut committer, processor, &seal, &records, epoch, false)?;
                    info!(checkpoint = c_epoch, committed_epoch = c_t, table_txn = v, epoch, replayed = records.len(), "recovery: epoch sealed and in the table, checkpoint missing: writing checkpoint {epoch}");
                    committer.add_totals(&open);
                    // As a redo: when the replay added exactly the delta the WAL logged before
                    // the seal, the record alone is synced and the delta goes to the state
                    // writer (before, this start synced the whole resumed changelog first:
                    // ~0.7 s with ~1M keys).
                    redo_delta(&mut committer, logged_delta, epoch)
                }
            };
            committer.note_landed(epoch, landed.map(|p| p.table_version));
            committer.checkpoint(epoch, &seal.end_positions, delta)?;
            outcome.next_epoch = epoch + 1;
            Ok((
                committer,
                OpenEpoch::new(epoch + 1, seal.end_positions),
                outcome,
            ))
        }
        other => Err(RecoveryError::State {
            path: PathBuf::from("recovery"),
            message: format!("internal: {other} is not a case that continues from a checkpoint"),
        }),
    }
}

/// Replays the records of sealed epoch `epoch` exactly as they were processed the first time
/// (the watermark in effect is the checkpoint's, each batch under its logged clock), then moves
/// the watermark to the sealed value. Refuses when the settings that decide an epoch's content
/// differ from those recorded in the seal: the redo would write another epoch. With `encode`,
/// the rows are encoded into Parquet as they are decided (the caller finishes the encoding).
fn replay_sealed(
    committer: &mut Committer,
    processor: &RecordProcessor,
    seal: &SealInfo,
    records: &Replay,
    epoch: u64,
    encode: bool,
) -> Result<OpenEpoch, RecoveryError> {
    let open = replayed_epoch(
        committer,
        processor,
        epoch,
        seal.start_positions.clone(),
        records,
        encode,
    )?;
    if let Some(mut d) = committer.dedup() {
        d.state.advance(seal.watermark);
    }
    Ok(open)
}

/// `SEAL(epoch)` as the scan found it, checked against the WAL's `records` of the epoch (as
/// many as it counts) and the current settings (a redo under other settings would write
/// another epoch: refused).
fn checked_seal(
    processor: &RecordProcessor,
    seal: Option<SealInfo>,
    records: &Replay,
    epoch: u64,
) -> Result<SealInfo, RecoveryError> {
    let state_error = |message: String| RecoveryError::State {
        path: PathBuf::from("wal"),
        message,
    };
    // The decision said "sealed" only because the scan found the seal.
    let seal = seal.ok_or_else(|| state_error(format!("SEAL({epoch}) expected")))?;
    if seal.records != records.len() as u64 {
        return Err(state_error(format!(
            "SEAL({epoch}) counts {} records but the WAL holds {} of that epoch",
            seal.records,
            records.len()
        )));
    }
    if let Some(sealed) = &seal.settings {
        let diffs = settings_diff(sealed, processor.settings());
        if !diffs.is_empty() {
            return Err(RecoveryError::SettingsChanged {
                epoch,
                message: settings_refusal(epoch, &diffs),
            });
        }
    }
    Ok(seal)
}

/// The commit of `epoch`, sealed and found landed in the table, when a checkpoint of it may be
/// written without replaying its records: from the commit's counts and (with `dedup`) the
/// state delta its WAL logged before the seal (whole, as the changelog's deltas are). Only when
/// they describe the same epoch as the seal: the commit is the epoch's, made by the run that
/// sealed it and logged the delta (not a redo by a later run, whose keys are its own
/// replay's), with the seal's positions, record count and watermark, and the delta holds no
/// more keys than the commit wrote rows. Otherwise `None`: the records are replayed, as
/// before. (A worker of a shared pipeline never gets here: it starts from the table.)
///
/// Why: the replay decoded and checked every record of the epoch again only to rebuild those
/// two, ~0.26 s for a 200 ms epoch of 90k records and ~0.5 s for a 1 s epoch of 330k at a
/// restart with dedup (from the restarts' logs). What the replay also did and this does not:
/// feed the epoch's event times to the watermark tracker, which a restart builds afresh, so the
/// next watermark waits for each partition's next record (as after any checkpointed start).
fn trusted_landed_commit<'a>(
    seal: &SealInfo,
    landed: Option<&'a EpochCommitInfo>,
    dedup: bool,
    logged_delta: Option<&PackedKeys>,
    epoch: u64,
) -> Option<&'a EpochCommitInfo> {
    landed.filter(|i| {
        i.epoch.get() == epoch
            && seal.run_id.is_some()
            && i.run_id == seal.run_id
            && i.records_read == seal.records
            && i.start_positions == seal.start_positions
            && i.end_positions == seal.end_positions
            && i.watermark == seal.watermark
            && (!dedup || logged_delta.is_some_and(|d| d.len() as u64 <= i.rows_written))
    })
}

/// Epoch `epoch` from `start`, with the WAL's `records` replayed into it as they were processed
/// the first time; with `encode`, its rows are encoded into Parquet as they are decided (the
/// caller finishes the encoding, or the seal does).
fn replayed_epoch(
    committer: &mut Committer,
    processor: &RecordProcessor,
    epoch: u64,
    start: Positions,
    records: &Replay,
    encode: bool,
) -> Result<OpenEpoch, RecoveryError> {
    let mut open = OpenEpoch::new(epoch, start);
    if encode && !records.is_empty() {
        open.encode_while_reading(committer.sink().arrow_schema().clone())?;
    }
    open.add_replay(records, processor, committer.shared_dedup())?;
    Ok(open)
}

/// The state delta a redo of `epoch` (or the checkpoint of an epoch found landed) may leave to
/// the state writer: the keys its replay added,
/// when they are exactly the delta its WAL logged before `SEAL(epoch)` (which stays in the log
/// as the changelog a later start reads until the state writer has synced it; the WAL's frames
/// after that seal were read ahead while `epoch` committed, and hold no delta: `c+2`'s is
/// logged only at its seal, after checkpoint `epoch`). Otherwise (no dedup, no whole logged
/// delta, or a replay that added other keys) `None`: the checkpoint writes the replayed keys
/// with its record in one synced batch, as before the changelog.
fn redo_delta(
    committer: &mut Committer,
    logged: Option<LoggedDelta>,
    epoch: u64,
) -> Option<LoggedDelta> {
    let mut d = committer.dedup()?;
    let replayed = d.state.take_inserted();
    match logged {
        Some(logged) if logged.keys == replayed => Some(logged),
        logged => {
            if let Some(logged) = logged {
                warn!(
                    epoch,
                    replayed = replayed.len(),
                    logged = logged.keys.len(),
                    "the redo added other dedup keys than the WAL logged for this epoch; its state is written with its checkpoint instead"
                );
            }
            d.state.restore_inserted(replayed);
            None
        }
    }
}

fn retained(store: &CheckpointStore) -> String {
    match store.history() {
        Ok(h) if h.is_empty() => "none".into(),
        Ok(h) => h
            .iter()
            .map(|r| format!("{} (committed epoch {})", r.epoch, r.committed_epoch))
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// Starts from the table's own progress (store lost, checkpoints off, a lost seal after a
/// landed commit, a rewind). The WAL was set aside by the caller: whatever it held after the
/// table's newest commit is re-read from the source at that commit's end positions. Dedup
/// state is rebuilt from the rows whose event time is at or above that commit's watermark.
async fn from_table(
    mut committer: Committer,
    processor: &RecordProcessor,
    progress: Option<TableProgress>,
    group: Option<WorkerStart>,
    reason: FromTableReason,
    mut outcome: RecoveryOutcome,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), RecoveryError> {
    let v = outcome.table_txn;
    // A worker's positions are the claims of its partitions, even before its first commit.
    let (group_positions, group_dedup) = group.map(|g| (g.positions, g.dedup)).unzip();
    let positions = group_positions.unwrap_or_else(|| {
        progress
            .as_ref()
            .map(|p| p.info.end_positions.clone())
            .unwrap_or_default()
    });
    let store_lost = reason == FromTableReason::StoreLost && outcome.case != "failover";
    match reason {
        _ if outcome.case == "failover" => {}
        FromTableReason::StoreLost => {
            error!(table_txn = v, positions = %positions, "CHECKPOINT STORE LOST: resuming from the table's newest Tidemark commit (epoch {v}); nothing is lost or doubled, the dedup state is rebuilt from the table")
        }
        FromTableReason::SealLostCommitLanded => {
            error!(table_txn = v, positions = %positions, "WAL SEAL LOST after its commit landed: resuming from the table's newest Tidemark commit (epoch {v}); the dedup state is rebuilt from the table")
        }
        _ => {
            info!(table_txn = v, positions = %positions, ?reason, "resuming from the table's newest Tidemark commit (epoch {v})")
        }
    }
    committer
        .reset_to_table(v, progress.as_ref().map(|p| p.table_version))
        .await?;
    if let Some(spec) = processor.dedup() {
        let runtime = match group_dedup {
            // A worker: its partitions' rows only, each from its own floor.
            Some(start) => {
                let (state, origins) =
                    rebuild_worker_dedup_state(&committer, processor, spec, &start).await?;
                let mut runtime = dedup_runtime(spec, state, &positions);
                runtime.partitions = Some(PartitionDedup {
                    floors: start.floors,
                    origins,
                });
                runtime
            }
            None => {
                let watermark = progress.as_ref().and_then(|p| p.info.watermark);
                let state = rebuild_dedup_state(&committer, processor, spec, watermark).await?;
                dedup_runtime(spec, state, &positions)
            }
        };
        outcome.dedup_keys_loaded = runtime.state.len() as u64;
        committer.set_dedup(runtime);
    }
    if v > 0 {
        committer.checkpoint(v, &positions, None)?;
    }
    outcome.store_lost = store_lost;
    outcome.next_epoch = v + 1;
    Ok((committer, OpenEpoch::new(v + 1, positions), outcome))
}

/// A load of the store's dedup state running in the background (see [`recover`]); until it
/// ends, it answers lookups from the store's key index (as the [`ColdKeys`] of a
/// [`DedupState::loading`]). Dropping it waits for the load to end.
struct StateLoad {
    thread: Option<std::thread::JoinHandle<Result<DedupState, RecoveryError>>>,
    store: CheckpointStore,
    started: std::time::Instant,
    /// Set while recovery replays the WAL and commits it (see [`StateLoad::pause`]).
    paused: Arc<AtomicBool>,
    /// A load that ended while paused: it answers lookups until the pause ends, and only
    /// then is taken in (see [`LoadPaused`]).
    ended: Option<DedupState>,
}

/// Holds a [`StateLoad`] still until dropped: recovery's replay and first commit get the
/// cores (two on the machines measured) instead of sharing them with the load's two threads;
/// the replay's checks are answered by the key index meanwhile, as while the load runs. No
/// verdict depends on how far the load has come, so pausing it changes none. A load that has
/// ended by then answers the replay's lookups from its map instead, and is taken in (memory's
/// entries merged into it: as many inserts as the changelog has keys) only once the pause
/// ends, after the first commit rather than in the middle of its replay.
struct LoadPaused(Arc<AtomicBool>);

impl Drop for LoadPaused {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl StateLoad {
    /// The load of `store`'s state above `watermark`, into a map with room for
    /// `expected_keys` at least ([`load_dedup_state`]).
    fn start(store: CheckpointStore, watermark: Option<i64>, expected_keys: usize) -> Self {
        let loader = store.clone();
        let paused = Arc::new(AtomicBool::new(false));
        let pause = paused.clone();
        let thread = std::thread::Builder::new()
            .name("tidemark-state-load".into())
            .spawn(move || load_dedup_state_pausable(&loader, watermark, expected_keys, &pause))
            .ok();
        Self {
            thread,
            store,
            started: std::time::Instant::now(),
            paused,
            ended: None,
        }
    }

    /// Pauses the load (between two chunks) until the returned guard is dropped. Only for a
    /// load that is not waited for meanwhile ([`DedupState::loading`]): dropping the load
    /// resumes it first.
    fn pause(&self) -> LoadPaused {
        self.paused.store(true, Ordering::Release);
        LoadPaused(self.paused.clone())
    }

    /// Waits for the load to end and takes its outcome; the outer error says why there is
    /// none (the thread panicked or never started).
    fn take_loaded(&mut self) -> Result<Result<DedupState, RecoveryError>, &'static str> {
        let loaded = match self.thread.take() {
            Some(t) => t.join().map_err(|_| "panicked")?,
            None => return Err("could not start a thread"),
        };
        if let Ok(state) = &loaded {
            info!(
                keys = state.len(),
                ms = self.started.elapsed().as_millis() as u64,
                "dedup state loaded from the store in the background of recovery"
            );
        }
        Ok(loaded)
    }
}

impl ColdKeys for StateLoad {
    fn lookup(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<i64>>, ColdError> {
        if let Some(state) = &self.ended {
            return Ok(keys.iter().map(|k| state.time_of(k)).collect());
        }
        self.store
            .lookup_dedup_keys(keys)
            .map_err(|e| ColdError(e.to_string()))
    }

    fn poll_loaded(&mut self) -> Result<Option<DedupState>, ColdError> {
        let paused = self.paused.load(Ordering::Acquire);
        if self.ended.is_some() {
            return Ok(if paused { None } else { self.ended.take() });
        }
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(None);
        }
        let path = self.store.path().display().to_string();
        let failed = |what: String| ColdError(format!("the dedup state load of {path} {what}"));
        let state = self
            .take_loaded()
            .map_err(|what| failed(what.to_string()))?
            .map_err(|e| failed(format!("failed: {e}")))?;
        if paused {
            self.ended = Some(state);
            return Ok(None);
        }
        Ok(Some(state))
    }
}

impl Drop for StateLoad {
    fn drop(&mut self) {
        self.paused.store(false, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pairs per chunk handed from the scanning thread to the inserting one.
const LOAD_CHUNK: usize = 16 * 1024;

/// Loads the checkpointed dedup state, on the restart's critical path: one thread scans
/// RocksDB into packed chunks while this one inserts them into the map, so a restart pays
/// about the larger of the two halves rather than their sum. The map is made once, with room
/// for the store's keys or `expected_keys` (`dedup.expected_keys`), whichever is more: sized
/// afterwards, every loaded key would move again.
pub fn load_dedup_state(
    store: &CheckpointStore,
    watermark: Option<i64>,
    expected_keys: usize,
) -> Result<DedupState, RecoveryError> {
    load_dedup_state_pausable(store, watermark, expected_keys, &AtomicBool::new(false))
}

/// [`load_dedup_state`] that waits between chunks while `paused` is set.
fn load_dedup_state_pausable(
    store: &CheckpointStore,
    watermark: Option<i64>,
    expected_keys: usize,
    paused: &AtomicBool,
) -> Result<DedupState, RecoveryError> {
    let room =
        (store.estimated_dedup_entries() as usize).max(crate::dedup::table_room(expected_keys));
    let mut state = DedupState::with_capacity(room, watermark);
    let (tx, rx) = std::sync::mpsc::sync_channel::<PackedKeys>(4);
    let scanned = std::thread::scope(|scope| {
        let scan = scope.spawn(move || {
            let mut chunk = PackedKeys::default();
            // Entries below the watermark (an eviction not persisted yet) are skipped.
            let scanned = store.for_each_dedup_entry_from(watermark, |key, time| {
                chunk.push(key, time);
                if chunk.len() == LOAD_CHUNK {
                    // A send fails only when the receiver is gone, i.e. never before the end.
                    let _ = tx.send(std::mem::take(&mut chunk));
                }
            });
            if !chunk.is_empty() {
                let _ = tx.send(chunk);
            }
            scanned
        });
        let mut progress = Progress::new(
            "loading dedup state",
            "keys",
            store.estimated_dedup_entries(),
        );
        for chunk in rx {
            // The scan stops too once the channel is full.
            while paused.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(2));
            }
            for (key, time) in chunk.iter() {
                state.load(key, time);
            }
            progress.add(chunk.len() as u64);
        }
        progress.finish();
        scan.join()
    });
    let scanned = scanned.map_err(|_| RecoveryError::State {
        path: store.path().to_path_buf(),
        message: "the dedup state scan panicked".into(),
    })??;
    debug_assert!(scanned as usize >= state.len(), "each key is stored once");
    Ok(state)
}

/// The dedup runtime for a restart at `positions` with `state`.
fn dedup_runtime(spec: &DedupSpec, mut state: DedupState, positions: &Positions) -> DedupRuntime {
    state.expect_keys(spec.expected_keys);
    DedupRuntime {
        state,
        tracker: WatermarkTracker::new(
            positions.iter().map(|(tp, _)| (tp.topic, tp.partition)),
            spec.lateness_micros,
            spec.idle_timeout,
            std::time::Instant::now(),
        ),
        partitions: None,
        cost: crate::epoch::VerdictCost::default(),
    }
}

/// A worker's dedup state (see [`crate::partition_dedup`]): the table's rows of its assigned
/// partitions, each at or above the partition's floor (per key the newest), with the partition
/// that accepted each key; the watermark starts at the lowest floor (none when a partition has
/// none). Only the files whose stats allow such rows are read.
async fn rebuild_worker_dedup_state(
    committer: &Committer,
    processor: &RecordProcessor,
    spec: &DedupSpec,
    start: &WorkerDedupStart,
) -> Result<(DedupState, KeyOrigins), RecoveryError> {
    let table = committer.sink().uri().to_string();
    let unreadable = |message: String| RecoveryError::Progress {
        table: table.clone(),
        message: format!(
            "cannot rebuild the worker's dedup state from the table's rows: {message}"
        ),
    };
    if matches!(spec.key, KeySource::KafkaKey) {
        // Refused by the config check; a state without keys would let duplicates through.
        return Err(unreadable(
            "dedup.key is [\"_kafka_key\"], which the table does not store (name the columns that identify a record)".into(),
        ));
    }
    let started = std::time::Instant::now();
    let schema = committer.sink().arrow_schema().clone();
    let (Ok(topic_col), Ok(partition_col)) =
        (schema.index_of(COL_TOPIC), schema.index_of(COL_PARTITION))
    else {
        return Err(unreadable(format!(
            "the table has no {COL_TOPIC} and {COL_PARTITION} columns: it was created with sink.source_columns = false, so its rows do not say their partition (a table created without them cannot get them; use a new table for workers with [dedup])"
        )));
    };
    let mut builder = WorkerStateBuilder::new(start);
    let numbers: Vec<i32> = start.assigned.iter().map(|(_, p)| *p).collect();
    let time_column = TimeColumn::of(spec.time, &schema);
    let floor = builder.watermark();
    let (rows, (files_read, files_live)) = scan_dedup_rows(
        committer,
        processor,
        &[topic_col, partition_col],
        "rebuilding the worker's dedup state from the table",
        |stats| stats.is_none_or(|s| file_may_hold(s, &numbers, floor, &time_column)),
        |batch, keys_and_times| {
            // However the table's reader typed them (Utf8View, say): as the decoder does.
            let as_type = |col: usize, to: &arrow::datatypes::DataType| {
                arrow::compute::cast(batch.column(col), to)
                    .map_err(|e| unreadable(format!("{} as {to}: {e}", schema.field(col).name())))
            };
            let topics = as_type(topic_col, &arrow::datatypes::DataType::Utf8)?;
            let topics = arrow::array::AsArray::as_string::<i32>(&topics);
            let partitions = as_type(partition_col, &arrow::datatypes::DataType::Int32)?;
            let partitions =
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int32Type>(&partitions);
            for (i, (key, time)) in keys_and_times.into_iter().enumerate() {
                let (Some(key), Some(time)) = (key, time) else {
                    continue;
                };
                let place = (!arrow::array::Array::is_null(topics, i)
                    && !arrow::array::Array::is_null(partitions, i))
                .then(|| (topics.value(i), partitions.value(i)));
                builder.add(&key, time, place);
            }
            Ok(())
        },
    )
    .await?;
    if builder.unplaced_rows() > 0 {
        warn!(rows = builder.unplaced_rows(), "worker: rows without _kafka_topic/_kafka_partition (another writer's?) at or above the lowest floor are kept in the dedup state: a retry of one of their keys on any partition is dropped");
    }
    let watermark = builder.watermark();
    let (state, origins) = builder.finish();
    info!(
        rows_read = rows,
        keys = state.len(),
        partitions = start.assigned.len(),
        files_read,
        files_live,
        ?watermark,
        ms = started.elapsed().as_millis() as u64,
        "worker: dedup state rebuilt from its partitions' rows in the table"
    );
    Ok((state, origins))
}

/// Streams the table's rows for a dedup rebuild: only the dedup key and event-time columns
/// plus `extra` (indexes into the table schema), of the live files `keep` accepts by their
/// Delta stats, one batch in memory at a time (a large table, on S3 say, need not fit in
/// memory). `on_batch` gets each batch in the table schema's shape with its rows' keys and
/// times. Returns the rows read and (files read, files live).
async fn scan_dedup_rows(
    committer: &Committer,
    processor: &RecordProcessor,
    extra: &[usize],
    what: &'static str,
    keep: impl Fn(Option<&str>) -> bool,
    mut on_batch: impl FnMut(
        &arrow::array::RecordBatch,
        Vec<crate::epoch::KeyAndTime>,
    ) -> Result<(), RecoveryError>,
) -> Result<(u64, (usize, usize)), RecoveryError> {
    let schema = committer.sink().arrow_schema().clone();
    let mut needed = processor.dedup_columns(&schema);
    needed.extend_from_slice(extra);
    let columns: Vec<String> = needed
        .iter()
        .map(|i| schema.field(*i).name().clone())
        .collect();
    let (mut batches, files) = committer.sink().read_columns_of_files(&columns, keep)?;
    let mut rows = 0u64;
    let mut progress = Progress::new(what, "rows", committer.totals().written);
    while let Some(batch) = batches.next().await {
        let batch = widen(&batch?, &schema).map_err(|e| RecoveryError::Progress {
            table: committer.sink().uri().to_string(),
            message: format!("cannot rebuild the dedup state from the table's rows: {e}"),
        })?;
        progress.add(batch.num_rows() as u64);
        rows += batch.num_rows() as u64;
        let keys_and_times = processor.keys_and_times(&batch, &[])?;
        on_batch(&batch, keys_and_times)?;
    }
    progress.finish();
    Ok((rows, files))
}

/// Dedup state from the table's rows with event time at or above `watermark`.
async fn rebuild_dedup_state(
    committer: &Committer,
    processor: &RecordProcessor,
    spec: &DedupSpec,
    watermark: Option<i64>,
) -> Result<DedupState, RecoveryError> {
    if matches!(spec.key, KeySource::KafkaKey) {
        error!("dedup state CANNOT be rebuilt from the table: the dedup key is the Kafka message key, which the table does not store; duplicates of records already written may be written again until the watermark passes them");
        return Ok(DedupState::with_capacity(0, watermark));
    }
    let started = std::time::Instant::now();
    let mut state = DedupState::default();
    let (rows, _) = scan_dedup_rows(
        committer,
        processor,
        &[],
        "rebuilding dedup state from the table",
        |_| true,
        |_, keys_and_times| {
            for (key, time) in keys_and_times {
                if let (Some(key), Some(time)) = (key, time) {
                    if watermark.is_none_or(|w| time >= w) {
                        state.check(&key, time).map_err(|e| RecoveryError::State {
                            path: PathBuf::from(committer.sink().uri()),
                            message: e.to_string(),
                        })?;
                    }
                }
            }
            Ok(())
        },
    )
    .await?;
    state.advance(watermark);
    // The rebuilt keys go into the first checkpoint written after this.
    warn!(
        rows_read = rows,
        keys = state.len(),
        ?watermark,
        ms = started.elapsed().as_millis() as u64,
        "dedup state rebuilt from the table's rows"
    );
    Ok(state)
}

/// `projected` (some of `schema`'s columns, by name) as a batch of `schema`'s shape, the
/// columns not read all null (in a schema with every field nullable): the dedup key and time
/// are found by their index in the table schema.
fn widen(
    projected: &arrow::array::RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let rows = projected.num_rows();
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match projected.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => arrow::array::new_null_array(f.data_type(), rows),
        })
        .collect();
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    arrow::array::RecordBatch::try_new_with_options(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
        &options,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use tidemark_checkpoint::store::{CheckpointRecord, StoreOptions};

    use super::*;

    /// A checkpoint record of `epoch` whose state is synced only through epoch 0 (so every
    /// delta of epochs 1..=epoch must come from the WAL, from its start).
    fn lagging_record(epoch: u64) -> CheckpointRecord {
        CheckpointRecord {
            epoch,
            committed_epoch: epoch,
            table_version: None,
            watermark: None,
            wal_segment: u64::MAX,
            wal_offset: 0,
            created_at_ms: 0,
            counts: Default::default(),
            positions: Vec::new(),
            state_epoch: 0,
            state_wal_segment: 0,
            state_wal_offset: 0,
            changelog_starts: None,
        }
    }

    /// Power cuts (`PowerCutFs`): the state deltas an epoch logs before its seal are durable
    /// exactly when the seal is. After each seal the crash image holds the whole changelog so
    /// far; a delta and a seal that were written but not synced are gone from the image, so a
    /// record claiming that epoch would find its changelog incomplete (and the start would
    /// rebuild the state from the table) instead of restoring a state missing those keys.
    #[test]
    fn a_power_cut_keeps_exactly_the_synced_changelog() {
        use crate::epoch_log::log_state_delta;
        use tidemark_checkpoint::store::PackedKeys;
        use tidemark_checkpoint::wal::FrameKind;
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let pc = tidemark_fs::PowerCutFs::new(root.path()).unwrap();
        let dir = root.path().join("wal");
        let options = WalOptions {
            segment_size: 4096,
            sync: SyncPolicy::OnSeal,
        };
        let (mut wal, _) =
            Wal::open_with_fs(std::sync::Arc::new(pc.clone()), &dir, options, None).unwrap();
        let delta = |epoch: u64| {
            let mut p = PackedKeys::default();
            for k in 0..(epoch * 40) {
                p.push(
                    format!("key-{epoch}-{k}").as_bytes(),
                    (epoch * 1000 + k) as i64,
                );
            }
            p
        };
        let mut buf = Vec::new();
        let mut images = 0;
        let mut changelog_in_image = |epoch: u64| {
            images += 1;
            let image = scratch.path().join(format!("image-{images}"));
            pc.crash_image(&image).unwrap();
            let wal_dir = image.join("wal");
            let (wal, _) = Wal::open(&wal_dir, WalOptions::default(), None).unwrap();
            read_changelog(&lagging_record(epoch), wal.reader(WalPosition::default())).unwrap()
        };
        let log_epoch = |wal: &mut Wal, buf: &mut Vec<u8>, epoch: u64| {
            for r in 0..30u8 {
                wal.append(FrameKind::Record, epoch, &[r; 50]).unwrap();
            }
            let keys = delta(epoch);
            log_state_delta(&keys, buf, |p| {
                wal.append(FrameKind::Marker, epoch, p).map(|_| ())
            })
            .unwrap();
            SealInfo {
                start_positions: Positions::new(),
                end_positions: Positions::new(),
                records: 30,
                watermark: Some(epoch as i64),
                settings: None,
                state_keys: Some(keys.len() as u64),
                run_id: None,
            }
            .encode()
        };
        for epoch in 1..=4 {
            let seal = log_epoch(&mut wal, &mut buf, epoch);
            wal.seal(epoch, &seal).unwrap();
            let log = changelog_in_image(epoch);
            assert!(
                log.complete,
                "epoch {epoch}: the synced changelog must survive"
            );
            let got: Vec<(u64, PackedKeys, Option<i64>)> = log
                .deltas
                .into_iter()
                .map(|d| (d.delta.epoch, d.delta.inserts, d.delta.evict_below))
                .collect();
            let want: Vec<(u64, PackedKeys, Option<i64>)> =
                (1..=epoch).map(|e| (e, delta(e), Some(e as i64))).collect();
            assert_eq!(got, want, "epoch {epoch}");
        }
        // Epoch 5: its records, delta and seal written but not synced (no `seal`, only a
        // group commit under the on-seal policy): a power cut takes them.
        let seal = log_epoch(&mut wal, &mut buf, 5);
        wal.append(FrameKind::Seal, 5, &seal).unwrap();
        wal.commit().unwrap();
        let log = changelog_in_image(5);
        assert!(
            !log.complete,
            "an unsynced delta must not count: {} deltas found",
            log.deltas.len()
        );
        assert_eq!(log.deltas.len(), 4, "the synced ones are all there");
        // Once synced, it counts.
        wal.sync().unwrap();
        assert!(changelog_in_image(5).complete);
    }

    #[test]
    fn the_loaded_state_is_exactly_the_checkpointed_entries() {
        let dir = tempfile::tempdir().unwrap();
        // More than one chunk, keys short and long, then an eviction below 1_000.
        let keys: Vec<(Vec<u8>, i64)> = (0..(LOAD_CHUNK as i64 * 2 + 7))
            .map(|i| {
                (
                    format!("k{i}-{}", "x".repeat((i % 40) as usize)).into_bytes(),
                    i,
                )
            })
            .collect();
        let store = store_holding(dir.path(), &keys);
        store.write(&empty_checkpoint(2), [], Some(1_000)).unwrap();
        let state = load_dedup_state(&store, Some(1_000), 0).unwrap();
        let mut got: Vec<(Vec<u8>, i64)> = state.entries().map(|(k, t)| (k.to_vec(), t)).collect();
        got.sort_by_key(|e| e.1);
        let want: Vec<(Vec<u8>, i64)> = keys.into_iter().filter(|e| e.1 >= 1_000).collect();
        assert_eq!(got, want);
        assert_eq!(state.watermark(), Some(1_000));
    }

    /// With `dedup.expected_keys` above the store's keys, the load's map is made at that size:
    /// neither the load nor the runtime's sizing nor filling to the expected count grows it.
    #[test]
    fn a_load_is_sized_for_the_expected_keys_once() {
        let dir = tempfile::tempdir().unwrap();
        let stored: Vec<(Vec<u8>, i64)> = (0..1_000i64)
            .map(|i| (format!("s{i}").into_bytes(), 2_000 + i))
            .collect();
        let store = store_holding(dir.path(), &stored);
        let mut state = load_dedup_state(&store, None, 50_000).unwrap();
        assert_eq!(state.len(), 1_000);
        state.expect_keys(50_000);
        for i in 0..49_000u32 {
            assert_eq!(
                state.check(format!("n{i}").as_bytes(), 5_000).unwrap(),
                crate::dedup::Verdict::Accept
            );
        }
        assert_eq!(state.len(), 50_000);
        assert_eq!(state.growth_time(), Duration::ZERO);
    }

    /// A store in `dir` whose checkpoint 1 ([`empty_checkpoint`]) holds `keys` as its state.
    fn store_holding(dir: &Path, keys: &[(Vec<u8>, i64)]) -> CheckpointStore {
        let store = CheckpointStore::open(dir, StoreOptions::default()).unwrap();
        store
            .write(
                &empty_checkpoint(1),
                keys.iter().map(|(k, t)| (k.as_slice(), *t)),
                None,
            )
            .unwrap();
        store
    }

    /// Checkpoint `epoch` with its state at that epoch, no positions and nothing in the WAL.
    pub(crate) fn empty_checkpoint(epoch: u64) -> CheckpointRecord {
        CheckpointRecord {
            epoch,
            committed_epoch: epoch,
            table_version: None,
            watermark: None,
            wal_segment: 0,
            wal_offset: 0,
            created_at_ms: 0,
            counts: Default::default(),
            positions: Vec::new(),
            state_epoch: epoch,
            state_wal_segment: 0,
            state_wal_offset: 0,
            changelog_starts: None,
        }
    }

    /// Checkpoint `epoch` whose WAL begins at `(1, epoch * 100)` and whose state is durable
    /// through `state_epoch` (its changelog beginning where that epoch's WAL did).
    fn placed(epoch: u64, state_epoch: u64) -> CheckpointRecord {
        CheckpointRecord {
            wal_segment: 1,
            wal_offset: epoch * 100,
            state_epoch,
            state_wal_segment: 1,
            state_wal_offset: state_epoch * 100,
            changelog_starts: None,
            ..empty_checkpoint(epoch)
        }
    }

    /// The changelog starts after the ingested epoch only when the note is newer than the
    /// record's state, not past the checkpoint, and its own record places it between the two.
    #[test]
    fn the_changelog_starts_after_the_ingested_state_only_when_that_is_sound() {
        let c = placed(5, 2);
        let at = |e: u64| WalPosition {
            segment: 1,
            offset: e * 100,
        };
        assert_eq!(
            ingested_state(&c, Some(4), Some(&placed(4, 2))),
            Some((4, at(4)))
        );
        assert_eq!(
            ingested_state(&c, Some(5), Some(&placed(5, 2))),
            Some((5, at(5)))
        );
        // No note, or one no newer than the record's state, or past the checkpoint.
        assert_eq!(ingested_state(&c, None, None), None);
        assert_eq!(ingested_state(&c, Some(2), Some(&placed(2, 1))), None);
        assert_eq!(ingested_state(&c, Some(6), Some(&placed(6, 2))), None);
        // Its record gone from the history, or another epoch's.
        assert_eq!(ingested_state(&c, Some(4), None), None);
        assert_eq!(ingested_state(&c, Some(4), Some(&placed(3, 2))), None);
        // Its record placed outside the changelog (a WAL re-anchored since).
        let mut far = placed(4, 2);
        far.wal_segment = 9;
        assert_eq!(ingested_state(&c, Some(4), Some(&far)), None);
        far.wal_segment = 0;
        assert_eq!(ingested_state(&c, Some(4), Some(&far)), None);
    }

    /// A paused background load does not end while paused (recovery's replay has the cores),
    /// and ends with the whole state once resumed; dropping a paused load does not hang.
    #[test]
    fn a_paused_state_load_waits_and_then_loads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<(Vec<u8>, i64)> = (0..(LOAD_CHUNK as i64 + 3))
            .map(|i| (format!("key-{i}").into_bytes(), i))
            .collect();
        let store = store_holding(dir.path(), &keys);
        let mut record = empty_checkpoint(1);
        record.epoch = 2;
        store.write(&record, [], None).unwrap();

        let mut load = StateLoad {
            thread: None,
            store: store.clone(),
            started: std::time::Instant::now(),
            paused: Arc::new(AtomicBool::new(true)),
            ended: None,
        };
        let (loader, pause) = (store.clone(), load.paused.clone());
        load.thread = Some(std::thread::spawn(move || {
            load_dedup_state_pausable(&loader, None, 0, &pause)
        }));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            load.poll_loaded().unwrap().is_none(),
            "the load ended while paused"
        );
        // Resumed when the guard of a pause goes.
        drop(LoadPaused(load.paused.clone()));
        let state = loop {
            if let Some(state) = load.poll_loaded().unwrap() {
                break state;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(state.len(), keys.len());

        // Dropping a load that is still paused resumes it and returns.
        let paused_load = StateLoad::start(store.clone(), None, 0);
        let _guard = paused_load.pause();
        drop(paused_load);
    }

    /// A load that ends while paused (it ended before recovery's replay began) is not taken
    /// in during the pause: the state stays loading, and the replay's checks are answered
    /// from the ended load's map, with the verdicts the store would give. Once the pause
    /// ends, the next poll takes it in, memory's keys included.
    #[test]
    fn a_load_that_ended_while_paused_answers_lookups_and_is_taken_in_after_the_pause() {
        use crate::dedup::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<(Vec<u8>, i64)> = (0..100i64)
            .map(|i| (format!("key-{i}").into_bytes(), 1_000 + i))
            .collect();
        let store = store_holding(dir.path(), &keys);
        let load = StateLoad::start(store.clone(), Some(1_000), 0);
        while load.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let pause = load.pause();
        let mut state = DedupState::loading(Box::new(load), Some(1_000));
        state.load(b"changelog-key", 2_000);
        let batch: Vec<&[u8]> = vec![b"key-7", b"key-99", b"new-key", b"changelog-key"];
        state.prefetch(batch.iter().copied()).unwrap();
        assert!(state.is_loading(), "taken in during the pause");
        assert_eq!(state.check(b"key-7", 1_500).unwrap(), Verdict::Duplicate);
        assert_eq!(state.check(b"key-99", 1_500).unwrap(), Verdict::Duplicate);
        assert_eq!(
            state.check(b"changelog-key", 2_000).unwrap(),
            Verdict::Duplicate
        );
        assert_eq!(state.check(b"new-key", 1_500).unwrap(), Verdict::Accept);
        assert_eq!(state.check(b"new-key", 1_500).unwrap(), Verdict::Duplicate);
        assert!(state.is_loading());
        drop(pause);
        state.prefetch([&b"other"[..]]).unwrap();
        assert!(!state.is_loading(), "not taken in after the pause");
        assert_eq!(state.len(), keys.len() + 2);
        assert_eq!(state.check(b"key-0", 1_500).unwrap(), Verdict::Duplicate);
    }
}
