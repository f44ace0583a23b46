//! Recovery on start (ARCHITECTURE.md, "Recovery"): gathers the facts — checkpoint `c` with
//! its `t`, the WAL after `c`, the table's txn version `v` — asks [`protocol::decide`] what to
//! do, and does it. Also the two starts without a usable checkpoint: the store was lost (resume
//! from the table's own progress) and a rewind after the table was restored behind the store.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tidemark_checkpoint::store::Counts;
use tidemark_checkpoint::wal::{FrameKind, RecoveryReport as WalRecovery};
use tidemark_checkpoint::{
    CheckpointRecord, CheckpointStore, StoreError, StoreOptions, SyncPolicy, Wal, WalOptions,
    WalPosition,
};
use tidemark_connectors::delta::{DeltaSink, TableProgress};
use tidemark_connectors::Positions;
use tracing::{error, info, warn};

use crate::committer::{Committer, DeadLetterTable, EpochReport};
use crate::config::{PipelineConfig, WalSync};
use crate::dedup::{DedupState, PackedKeys, WatermarkTracker};
use crate::epoch::{
    settings_diff, settings_refusal, DedupRuntime, DedupSpec, KeySource, OpenEpoch, RecordProcessor,
};
use crate::epoch_log::{from_store_positions, RecordDecoder, Replay, SealInfo};
use crate::pipeline::PipelineError;
use crate::protocol::{decide, RecoveryDecision, RecoveryFacts};

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
    /// Bytes of damaged WAL tail cut off.
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
    /// The epoch recovery itself committed (a redo, or a resumed epoch's replayed records),
    /// counted as the run's first commit.
    #[serde(skip)]
    pub committed_at_start: Option<EpochReport>,
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

fn wal_position(c: &CheckpointRecord) -> WalPosition {
    WalPosition {
        segment: c.wal_segment,
        offset: c.wal_offset,
    }
}

/// Opens the store; a store that exists but cannot be opened is moved aside (kept for
/// inspection) and replaced by an empty one. Returns the store and whether it was lost.
fn open_store(dir: &Path, retain: usize) -> Result<(CheckpointStore, bool), PipelineError> {
    let existed = dir.join("CURRENT").exists();
    match CheckpointStore::open(dir, StoreOptions { retain }) {
        Ok(store) => Ok((store, false)),
        Err(e @ StoreError::NewerFormat { .. }) => Err(e.into()),
        Err(e) if existed => {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let aside = dir.with_file_name(format!("store.unreadable-{ms}"));
            error!(store = %dir.display(), moved_to = %aside.display(), "CHECKPOINT STORE UNREADABLE ({e}); moving it aside and resuming from the table's own progress");
            std::fs::rename(dir, &aside).map_err(|io| PipelineError::State {
                path: dir.to_path_buf(),
                message: format!("cannot move the unreadable store aside: {io}"),
            })?;
            let store = CheckpointStore::open(dir, StoreOptions { retain })?;
            Ok((store, true))
        }
        Err(e) => Err(e.into()),
    }
}

/// The records (in their logged batches, with batch clocks and too-large stubs) and seal of
/// epoch `epoch` found in the WAL from `from`.
fn scan_epoch(
    wal: &Wal,
    from: WalPosition,
    epoch: u64,
) -> Result<(Replay, Option<SealInfo>), PipelineError> {
    let mut decoder = RecordDecoder::default();
    let mut records = Replay::default();
    let mut seal = None;
    for item in wal.reader(from) {
        let (at, frame) = item?;
        let unexpected = |what: String| PipelineError::State {
            path: PathBuf::from(format!("wal segment {} offset {}", at.segment, at.offset)),
            message: what,
        };
        if frame.epoch != epoch {
            return Err(unexpected(format!(
                "frame of epoch {} after checkpoint {}: the WAL does not belong to this checkpoint store",
                frame.epoch,
                epoch - 1
            )));
        }
        match frame.kind {
            FrameKind::Record if seal.is_some() => {
                return Err(unexpected(format!("record after SEAL({epoch})")))
            }
            FrameKind::Seal => {
                seal =
                    Some(SealInfo::decode(&frame.payload).map_err(|e| unexpected(e.to_string()))?)
            }
            kind => records
                .add_frame(kind, &frame.payload, &mut decoder)
                .map_err(|e| unexpected(e.to_string()))?,
        }
    }
    Ok((records, seal))
}

/// Runs recovery and returns the committer and the epoch to continue with (holding any
/// replayed records). `rewind_to` allows starting when the table is behind the store.
pub async fn recover(
    config: &PipelineConfig,
    state: &Path,
    mut sink: DeltaSink,
    dead_letter_sink: Option<DeltaSink>,
    processor: &RecordProcessor,
    rewind_to: Option<u64>,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), PipelineError> {
    std::fs::create_dir_all(state).map_err(|io| PipelineError::State {
        path: state.to_path_buf(),
        message: format!("cannot create the state directory: {io}"),
    })?;
    let store_path = store_dir(state);
    let store_existed = store_path.join("CURRENT").exists();
    let (store, unreadable) = open_store(&store_path, config.checkpoint.retain)?;
    let latest = store.latest()?;

    let (txn, progress) = sink.progress().await?;
    let v = txn.unwrap_or(0).max(0) as u64;
    if let Some(p) = &progress {
        if p.info.epoch as u64 != v {
            return Err(PipelineError::Progress {
                table: sink.uri().to_string(),
                message: format!(
                    "txn version for pipeline {:?} is {v} but its newest commitInfo records epoch {}; \
                     the table's log was altered or another writer uses this pipeline id",
                    config.pipeline_id, p.info.epoch
                ),
            });
        }
    } else if v != 0 {
        return Err(PipelineError::Progress {
            table: sink.uri().to_string(),
            message: format!("txn version for pipeline {:?} is {v} but no commit of it records Tidemark progress", config.pipeline_id),
        });
    }
    let mut outcome = RecoveryOutcome {
        table_txn: v,
        ..RecoveryOutcome::default()
    };
    // Files of epochs the table does not hold: a write or commit that did not land.
    outcome.orphan_files_deleted = sink.sweep_uncommitted_files(v as i64).await?.len();
    let dead_letter_table = match dead_letter_sink {
        Some(sink) => {
            let mut dlq = DeadLetterTable::open(sink).await?;
            outcome.orphan_files_deleted += dlq.sink.sweep_uncommitted_files(dlq.txn).await?.len();
            Some(dlq)
        }
        None => None,
    };

    let from = latest.as_ref().map(wal_position);
    let (wal, wal_report) = Wal::open(&wal_dir(state), wal_options(config), from)?;
    log_wal_recovery(&wal_report, &mut outcome);

    // One committer for every case; a checkpoint, if any, sets its totals and progress below.
    let mut committer = Committer::new(
        sink,
        wal,
        store,
        config.pipeline_id.clone(),
        Counts::default(),
        0,
        None,
    );
    committer.dead_letter_sink = dead_letter_table;
    if !config.checkpoint.enabled {
        // No WAL, no checkpoints: the table alone says where to resume.
        committer.durable = false;
        return from_table(committer, processor, progress, false, outcome, "table_only").await;
    }
    let Some(mut c) = latest else {
        let store_lost = unreadable || (!store_existed && (v > 0 || wal_report.frames > 0));
        if v == 0 && !store_lost {
            // No checkpoint and no commit: epoch 1 may be open or sealed in the WAL.
            return from_checkpoint(committer, processor, None, v, None, outcome).await;
        }
        return from_table(
            committer,
            processor,
            progress,
            store_lost,
            outcome,
            "from_table",
        )
        .await;
    };
    outcome.checkpoint_epoch = c.epoch;
    outcome.committed_epoch = c.committed_epoch;
    if committer.wal.end() < wal_position(&c) {
        // The log's tail was lost below the checkpointed position: re-anchor the checkpoint
        // in a new segment so later frames are found after it.
        warn!(checkpoint_wal = ?wal_position(&c), wal_end = ?committer.wal.end(), "the WAL ends before the checkpointed position; re-anchoring checkpoint {} in a new segment", c.epoch);
        let at = committer.wal.start_new_segment(c.epoch + 1)?;
        c.wal_segment = at.segment;
        c.wal_offset = at.offset;
        committer.store.write(&c, [], None)?;
    }
    let facts_table_txn = v;
    committer.totals = c.counts;
    committer.committed_epoch = c.committed_epoch;
    committer.table_version = c.table_version;
    let Some(r) = rewind_to else {
        let version_now = progress.as_ref().map(|p| p.table_version as i64);
        return from_checkpoint(committer, processor, Some(c), v, version_now, outcome).await;
    };
    match decide_for(&committer, &c, facts_table_txn)? {
        RecoveryDecision::TableBehind { .. } => rewind(committer, processor, progress, r, outcome).await,
        other => Err(PipelineError::Refused {
            message: format!("--rewind-to {r} was given but the table is not behind the checkpoint ({other}); start without it"),
        }),
    }
}

fn decide_for(
    committer: &Committer,
    c: &CheckpointRecord,
    v: u64,
) -> Result<RecoveryDecision, PipelineError> {
    let (_, seal) = scan_epoch(&committer.wal, wal_position(c), c.epoch + 1)?;
    Ok(decide(RecoveryFacts {
        checkpoint_epoch: c.epoch,
        committed_epoch: c.committed_epoch,
        next_sealed: seal.is_some(),
        table_txn: v,
    }))
}

fn log_wal_recovery(report: &WalRecovery, outcome: &mut RecoveryOutcome) {
    if let Some(t) = &report.truncation {
        let removed: u64 = t.removed_segments.iter().map(|(_, s)| s).sum();
        outcome.wal_bytes_cut = t.bytes_dropped + removed;
        warn!(
            segment = %t.segment.display(),
            at = t.at,
            bytes_dropped = outcome.wal_bytes_cut,
            reason = %t.reason,
            "recovery: the WAL's damaged tail was cut off; records in it are re-read from the source"
        );
    }
}

/// The four cases with a checkpoint `c` (or none yet, with `v == 0`).
async fn from_checkpoint(
    mut committer: Committer,
    processor: &RecordProcessor,
    c: Option<CheckpointRecord>,
    v: u64,
    table_version_now: Option<i64>,
    mut outcome: RecoveryOutcome,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), PipelineError> {
    let (c_epoch, c_t, from, positions) = match &c {
        Some(c) => (
            c.epoch,
            c.committed_epoch,
            wal_position(c),
            from_store_positions(&c.positions),
        ),
        None => (0, 0, WalPosition::default(), Positions::new()),
    };
    let next = c_epoch + 1;
    if let Some(spec) = processor.dedup() {
        let started = std::time::Instant::now();
        let watermark = c.as_ref().and_then(|c| c.watermark);
        let state = load_dedup_state(&committer.store, watermark)?;
        let keys = state.len();
        outcome.dedup_keys_loaded = keys as u64;
        committer.dedup = Some(dedup_runtime(spec, state, &positions));
        info!(
            keys,
            ?watermark,
            ms = started.elapsed().as_millis() as u64,
            "dedup state loaded from the checkpoint"
        );
    }
    let (records, seal) = scan_epoch(&committer.wal, from, next)?;
    let decision = decide(RecoveryFacts {
        checkpoint_epoch: c_epoch,
        committed_epoch: c_t,
        next_sealed: seal.is_some(),
        table_txn: v,
    });
    outcome.replayed_records = records.len() as u64;
    match decision {
        RecoveryDecision::ResumeEpoch { epoch } => {
            outcome.case = if c.is_none() && records.is_empty() { "fresh" } else { "resume_epoch" };
            let mut open = OpenEpoch::new(epoch, positions);
            open.add_replay(&records, processor, committer.dedup.as_mut())?;
            if records.is_empty() {
                outcome.next_epoch = epoch;
                return Ok((committer, open, outcome));
            }
            // The replayed records were read before the crash: seal and commit them now instead
            // of waiting for the source and the epoch's interval, so a restart's first commit
            // does not depend on the broker (the seal fixes the epoch's end as usual).
            info!(checkpoint = c_epoch, committed_epoch = c_t, table_txn = v, epoch, replayed = records.len(), "recovery: no seal after the checkpoint: replayed the unsealed WAL records; sealing and committing them now");
            let end = open.end.clone();
            committer.seal(&open)?;
            let report = committer.commit_sealed(open, None).await?;
            info!(epoch, version = ?report.version, rows = report.rows, "recovery: resumed epoch committed");
            outcome.committed_at_start = Some(report);
            outcome.next_epoch = epoch + 1;
            Ok((committer, OpenEpoch::new(epoch + 1, end), outcome))
        }
        RecoveryDecision::RedoEpoch { epoch } => {
            outcome.case = "redo_epoch";
            let (seal, open) = replay_sealed(&mut committer, processor, seal, &records, epoch)?;
            info!(checkpoint = c_epoch, committed_epoch = c_t, table_txn = v, epoch, replayed = records.len(), "recovery: epoch sealed but not in the table: redoing it from the WAL");
            let report = committer.commit_sealed(open, None).await?;
            info!(epoch, version = ?report.version, rows = report.rows, "recovery: redone epoch committed");
            outcome.committed_at_start = Some(report);
            outcome.next_epoch = epoch + 1;
            Ok((committer, OpenEpoch::new(epoch + 1, seal.end_positions), outcome))
        }
        RecoveryDecision::WriteMissingCheckpoint { epoch } => {
            outcome.case = "write_missing_checkpoint";
            // Replay rebuilds the epoch's counts (and, with dedup, its state).
            let (seal, open) = replay_sealed(&mut committer, processor, seal, &records, epoch)?;
            info!(checkpoint = c_epoch, committed_epoch = c_t, table_txn = v, epoch, replayed = records.len(), "recovery: epoch sealed and in the table, checkpoint missing: writing checkpoint {epoch}");
            committer.committed_epoch = epoch;
            committer.table_version = table_version_now;
            committer.add_totals(&open);
            committer.checkpoint(epoch, &seal.end_positions)?;
            outcome.next_epoch = epoch + 1;
            Ok((committer, OpenEpoch::new(epoch + 1, seal.end_positions), outcome))
        }
        refusal @ RecoveryDecision::TableBehind { .. } => Err(PipelineError::Refused {
            message: format!(
                "{refusal}. Retained checkpoints: {}. Start with --rewind-to <epoch> to rewind to one whose committed epoch is <= {v}",
                retained(&committer.store)
            ),
        }),
        refusal => Err(PipelineError::Refused {
            message: refusal.to_string(),
        }),
    }
}

/// Replays the records of sealed epoch `epoch` exactly as they were processed the first time
/// (the watermark in effect is the checkpoint's, each batch under its logged clock), then moves
/// the watermark to the sealed value. Refuses when the settings that decide an epoch's content
/// differ from those recorded in the seal: the redo would write another epoch.
fn replay_sealed(
    committer: &mut Committer,
    processor: &RecordProcessor,
    seal: Option<SealInfo>,
    records: &Replay,
    epoch: u64,
) -> Result<(SealInfo, OpenEpoch), PipelineError> {
    let state_error = |message: String| PipelineError::State {
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
            return Err(PipelineError::Refused {
                message: settings_refusal(epoch, &diffs),
            });
        }
    }
    let mut open = OpenEpoch::new(epoch, seal.start_positions.clone());
    open.add_replay(records, processor, committer.dedup.as_mut())?;
    if let Some(d) = committer.dedup.as_mut() {
        d.state.advance(seal.watermark);
    }
    Ok((seal, open))
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

/// Starts from the table's own progress: the store is lost (or empty while the table has
/// commits). The WAL is dropped: whatever it held after the table's newest commit is re-read
/// from the source at that commit's end positions. Dedup state is rebuilt from the rows whose
/// event time is at or above the watermark of that commit.
async fn from_table(
    mut committer: Committer,
    processor: &RecordProcessor,
    progress: Option<TableProgress>,
    store_lost: bool,
    mut outcome: RecoveryOutcome,
    case: &'static str,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), PipelineError> {
    let v = outcome.table_txn;
    let positions = progress
        .as_ref()
        .map(|p| p.info.end_positions.clone())
        .unwrap_or_default();
    if store_lost {
        error!(table_txn = v, positions = %positions, "CHECKPOINT STORE LOST: resuming from the table's newest Tidemark commit (epoch {v}); nothing is lost or doubled, the dedup state is rebuilt from the table");
    } else {
        info!(table_txn = v, positions = %positions, "no checkpoint yet but the table holds epoch {v}: resuming from the table");
    }
    committer.store.reset()?;
    let (segments, bytes) = committer.wal.reset(v + 1)?;
    if segments > 0 {
        warn!(
            segments,
            bytes, "WAL dropped: its records are re-read from the source"
        );
    }
    committer.totals = Counts::default();
    if committer.durable {
        // No checkpoint has the totals: they are the sum of what each of the table's commits
        // of this pipeline recorded (an epoch committed before its checkpoint still counts).
        // With checkpoints off nothing keeps totals anyway: they are per run, and a start
        // does not read the whole history.
        let commits = committer.sink.pipeline_commits().await?;
        for c in &commits {
            committer.add_committed(c);
        }
        if !commits.is_empty() {
            info!(commits = commits.len(), totals = ?committer.totals, "running totals rebuilt from the table's commits");
        }
    }
    committer.committed_epoch = v;
    committer.table_version = progress.as_ref().map(|p| p.table_version as i64);
    if let Some(spec) = processor.dedup() {
        let watermark = progress.as_ref().and_then(|p| p.info.watermark);
        let state = rebuild_dedup_state(&mut committer, processor, spec, watermark)?;
        outcome.dedup_keys_loaded = state.len() as u64;
        committer.dedup = Some(dedup_runtime(spec, state, &positions));
    }
    if v > 0 {
        committer.checkpoint(v, &positions)?;
    }
    outcome.case = case;
    outcome.store_lost = store_lost;
    outcome.next_epoch = v + 1;
    Ok((committer, OpenEpoch::new(v + 1, positions), outcome))
}

/// Pairs per chunk handed from the scanning thread to the inserting one.
const LOAD_CHUNK: usize = 16 * 1024;

/// Loads the checkpointed dedup state, on the restart's critical path: one thread scans
/// RocksDB into packed chunks while this one inserts them into the map, so a restart pays
/// about the larger of the two halves rather than their sum.
pub fn load_dedup_state(
    store: &CheckpointStore,
    watermark: Option<i64>,
) -> Result<DedupState, PipelineError> {
    let mut state = DedupState::with_capacity(store.estimated_dedup_entries() as usize, watermark);
    let (tx, rx) = std::sync::mpsc::sync_channel::<PackedKeys>(4);
    let scanned = std::thread::scope(|scope| {
        let scan = scope.spawn(move || {
            let mut chunk = PackedKeys::default();
            let scanned = store.for_each_dedup_entry(|key, time| {
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
        for chunk in rx {
            for (key, time) in chunk.iter() {
                state.load(key, time);
            }
        }
        scan.join()
    });
    let scanned = scanned.map_err(|_| PipelineError::State {
        path: store.path().to_path_buf(),
        message: "the dedup state scan panicked".into(),
    })??;
    debug_assert_eq!(scanned as usize, state.len(), "each key is stored once");
    Ok(state)
}

/// The dedup runtime for a restart at `positions` with `state`.
fn dedup_runtime(spec: &DedupSpec, state: DedupState, positions: &Positions) -> DedupRuntime {
    DedupRuntime {
        state,
        tracker: WatermarkTracker::new(
            positions.iter().map(|(tp, _)| (tp.topic, tp.partition)),
            spec.lateness_micros,
            spec.idle_timeout,
            std::time::Instant::now(),
        ),
    }
}

/// Dedup state from the table's rows with event time at or above `watermark`.
fn rebuild_dedup_state(
    committer: &mut Committer,
    processor: &RecordProcessor,
    spec: &DedupSpec,
    watermark: Option<i64>,
) -> Result<DedupState, PipelineError> {
    if matches!(spec.key, KeySource::KafkaKey) {
        error!("dedup state CANNOT be rebuilt from the table: the dedup key is the Kafka message key, which the table does not store; duplicates of records already written may be written again until the watermark passes them");
        return Ok(DedupState::with_capacity(0, watermark));
    }
    let started = std::time::Instant::now();
    let schema = committer.sink.arrow_schema().clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let batches = committer.sink.read_columns(&columns)?;
    let mut state = DedupState::default();
    let mut rows = 0u64;
    for batch in &batches {
        for (key, time) in processor.keys_and_times(batch, &[])? {
            rows += 1;
            if let (Some(key), Some(time)) = (key, time) {
                if watermark.is_none_or(|w| time >= w) {
                    state.check(&key, time);
                }
            }
        }
    }
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

/// `--rewind-to r` when the table is behind the store: checks `r` is retained and that its
/// committed epoch is `<= v`, then restarts from the table's progress with new epochs above `v`.
async fn rewind(
    committer: Committer,
    processor: &RecordProcessor,
    progress: Option<TableProgress>,
    r: u64,
    mut outcome: RecoveryOutcome,
) -> Result<(Committer, OpenEpoch, RecoveryOutcome), PipelineError> {
    let v = outcome.table_txn;
    let Some(target) = committer.store.get(r)? else {
        return Err(PipelineError::Refused {
            message: format!(
                "--rewind-to {r}: no retained checkpoint of epoch {r}; retained: {}",
                retained(&committer.store)
            ),
        });
    };
    if target.committed_epoch > v {
        return Err(PipelineError::Refused {
            message: format!(
                "--rewind-to {r}: checkpoint {r} has committed epoch {} but the table's txn version is {v}; pick one whose committed epoch is <= {v} (retained: {})",
                target.committed_epoch,
                retained(&committer.store)
            ),
        });
    }
    warn!(rewind_to = r, checkpoint_committed_epoch = target.committed_epoch, table_txn = v, "REWIND: the table is behind the store; restarting from the table's progress at epoch {v}, new epochs numbered from {}", v + 1);
    outcome.case = "rewind";
    let mut progress = progress;
    if target.committed_epoch == v && v > 0 {
        // The checkpoint agrees with the table: its positions may already be past trailing
        // epochs that needed no commit.
        if let Some(p) = progress.as_mut() {
            p.info.end_positions = from_store_positions(&target.positions);
        }
    }
    from_table(committer, processor, progress, false, outcome, "rewind").await
}

#[cfg(test)]
mod tests {
    use tidemark_checkpoint::store::{CheckpointRecord, StoreOptions};

    use super::*;

    #[test]
    fn the_loaded_state_is_exactly_the_checkpointed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        let record = |epoch| CheckpointRecord {
            epoch,
            committed_epoch: epoch,
            table_version: None,
            watermark: None,
            wal_segment: 0,
            wal_offset: 0,
            created_at_ms: 0,
            counts: Default::default(),
            positions: Vec::new(),
        };
        // More than one chunk, keys short and long, then an eviction below 1_000.
        let keys: Vec<(Vec<u8>, i64)> = (0..(LOAD_CHUNK as i64 * 2 + 7))
            .map(|i| {
                (
                    format!("k{i}-{}", "x".repeat((i % 40) as usize)).into_bytes(),
                    i,
                )
            })
            .collect();
        store
            .write(
                &record(1),
                keys.iter().map(|(k, t)| (k.as_slice(), *t)),
                None,
            )
            .unwrap();
        store.write(&record(2), [], Some(1_000)).unwrap();
        let state = load_dedup_state(&store, Some(1_000)).unwrap();
        let mut got: Vec<(Vec<u8>, i64)> = state.entries().map(|(k, t)| (k.to_vec(), t)).collect();
        got.sort_by_key(|e| e.1);
        let want: Vec<(Vec<u8>, i64)> = keys.into_iter().filter(|e| e.1 >= 1_000).collect();
        assert_eq!(got, want);
        assert_eq!(state.watermark(), Some(1_000));
    }
}
