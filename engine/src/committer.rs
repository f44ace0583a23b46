//! Steps 1–5 of the epoch protocol (ARCHITECTURE.md) as I/O: WAL append, seal, Delta commit,
//! checkpoint, truncate. The order is the invariant; it is kept here and nowhere else:
//!
//! 1. records go to the WAL before they count as part of an epoch;
//! 2. `SEAL(e)` is durable before any Parquet file of `e` is written;
//! 3. the Delta commit of `e` (with `txn = e`) lands before checkpoint `e` is written;
//! 4. checkpoint `e` is durable before any WAL segment of `e` is deleted.
//!
//! With dedup, the keys an epoch adds (its state delta) are logged in the WAL just before its
//! seal (same synced write), so the checkpoint does not write and sync them on the critical
//! path: it writes the small record (synced), then hands the delta to the store's
//! [`StateWriter`], which gathers it and ingests it into the store in the background. The record names the
//! newest epoch whose delta the store has synced (`state_epoch`), and the WAL keeps every
//! segment from `state_epoch + 1` on (invariant 4 becomes: no WAL segment of an epoch above the
//! durable `state_epoch` is deleted). Recovery restores the state from the store plus those
//! deltas (see `dedup.rs`).

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidemark_checkpoint::store::{ChangelogStart, Counts, StateDelta, StateWriter};
use tidemark_checkpoint::wal::format::FRAME_HEADER_LEN;
use tidemark_checkpoint::wal::FrameKind;
use tidemark_checkpoint::{
    CheckpointRecord, CheckpointStore, StoreError, Wal, WalError, WalPosition,
};
use tidemark_connectors::dead_letter::{self, DeadLetter};
use tidemark_connectors::decode::InvalidRecord;
use tidemark_connectors::delta::{
    CommitOutcome, DeltaSink, DeltaSinkError, EpochCommitInfo, PartitionPosition, SkippedRecord,
};
use tidemark_connectors::kafka::{Backoff, KafkaSource, KafkaSourceError};
use tidemark_connectors::source::Source;
use tidemark_connectors::{Epoch, Positions, SourceRecord, TableVersion};
use tracing::{info, warn};

use crate::dead_letter_overlap::OverlapLetters;
use crate::dedup::PackedKeys;
use crate::epoch::{
    DedupGuard, DedupRuntime, OpenEpoch, ProcessError, RecordProcessor, SharedDedup,
};
use crate::epoch_log::{log_batch, log_state_delta, record_size, to_store_positions, SealInfo};
use crate::fault::{self, CrashPoint};
pub use crate::read_ahead::ReadAhead;
use crate::shutdown::Shutdown;

/// Longest wait for one batch of the next epoch during a commit: when the commit ends, reading
/// stops at the end of the batch in hand (a batch is never cut: its records are logged whole).
const READ_AHEAD_WAIT: Duration = Duration::from_millis(20);
/// How often reading that waits (the read-ahead cap is reached) looks whether the commit ended.
const READ_AHEAD_IDLE: Duration = Duration::from_millis(5);

/// Why an epoch could not be logged, sealed, committed or checkpointed (the commit layer's
/// error; the pipeline converts it upward).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The Delta table (or the dead-letter table) could not be written.
    #[error(transparent)]
    Sink(#[from] DeltaSinkError),
    /// Kafka failed while it was polled during the commit.
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The epoch's dead letters could not be turned into rows.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The table already holds the epoch: another process writes with this pipeline id.
    #[error("table {table}: {message}")]
    AlreadyCommitted {
        /// The table URI.
        table: String,
        /// Which epoch, which txn version, and what the run does about it.
        message: String,
    },
}

/// What committing one epoch did.
#[derive(Debug, Clone, Default)]
pub struct EpochReport {
    /// The epoch.
    pub epoch: u64,
    /// What became of its records.
    pub counts: Counts,
    /// Rows written to the dead-letter table.
    pub dead_letters: u64,
    /// Parquet files written.
    pub files: u64,
    /// The Delta version of its commit (`None`: the epoch needed no commit).
    pub version: Option<TableVersion>,
    /// Time from seal to durable checkpoint, in microseconds.
    pub commit_micros: u64,
    /// Of which the checkpoint write, in microseconds.
    pub checkpoint_micros: u64,
    /// Polls of the consumer while the commit ran (it is never left unpolled).
    pub polls_during_commit: u64,
    /// Positions after the epoch.
    pub end: Positions,
}

/// An epoch whose `SEAL` is durable in the WAL: its records are final. Only
/// [`Committer::seal`] (or recovery, for a seal found in the WAL) makes one, so an epoch
/// cannot be committed before it is sealed.
#[derive(Debug)]
pub struct SealedEpoch {
    open: OpenEpoch,
    /// The state delta logged before the seal by this process (`None`: no dedup, checkpoints
    /// off, or a seal recovery found: then the checkpoint writes the delta synced).
    delta: Option<LoggedDelta>,
    /// The WAL position just after its `SEAL` (`None`: checkpoints off, or a seal recovery
    /// found: then the log's end when the checkpoint is written).
    wal_after_seal: Option<WalPosition>,
}

impl SealedEpoch {
    /// An epoch recovery found sealed in the WAL and replayed. With `logged_delta` (the keys
    /// the replay added, which the WAL also holds as this epoch's changelog entry, before its
    /// seal) its checkpoint takes the changelog path: the record alone is synced and the delta
    /// goes to the state writer, as for an epoch this process sealed. Without, the record and
    /// the state it changed are one synced write.
    pub(crate) fn replayed(open: OpenEpoch, logged_delta: Option<LoggedDelta>) -> Self {
        debug_assert!(!open.decoding(), "a replayed epoch has every verdict");
        Self {
            open,
            delta: logged_delta,
            wal_after_seal: None,
        }
    }

    /// Its number.
    pub fn epoch(&self) -> u64 {
        self.open.epoch
    }
}

/// An epoch whose Delta commit landed; only [`Committer::commit`] makes one, and only
/// [`Committer::checkpoint_committed`] takes it, so the run loop cannot checkpoint an epoch the
/// table does not hold. (Recovery, inside this crate, also checkpoints an epoch it *found*
/// committed in the table, through the crate-private [`Committer::checkpoint`].)
#[derive(Debug)]
pub struct CommittedEpoch {
    open: OpenEpoch,
    report: EpochReport,
    started: Instant,
    delta: Option<LoggedDelta>,
    wal_after_seal: Option<WalPosition>,
    /// Why reading the next epoch during the commit stopped, if it failed: reported once this
    /// epoch is checkpointed.
    read_ahead: Option<CommitError>,
}

/// An epoch's state delta as the WAL logged it before the epoch's seal: the keys, and where
/// its frames begin, for the checkpoint's changelog index
/// ([`CheckpointRecord::changelog_starts`]).
#[derive(Debug)]
pub(crate) struct LoggedDelta {
    /// The keys the epoch added.
    pub keys: PackedKeys,
    /// The log's end just before the delta's first frame was appended (that frame is there,
    /// or at the start of the next segment when the WAL rolled), or the first frame's own
    /// position (its seal's when the delta is empty).
    pub starts_at: WalPosition,
}

/// A checkpointed epoch whose state delta is queued or applied but maybe not synced yet.
#[derive(Debug, Clone, Copy)]
struct UnsyncedEpoch {
    epoch: u64,
    /// Where its delta begins in the WAL.
    delta_at: WalPosition,
    /// Just after its seal.
    after_seal: WalPosition,
}

/// Retries of an epoch's commit after transient storage errors before the run stops (with
/// the Kafka source's backoff, 100 ms doubling to 10 s: about 2 minutes in all).
pub const MAX_COMMIT_RETRIES: u32 = 16;

/// An error of an operation [`retry_transient`] runs: a storage error, which may be transient,
/// or any other, which is not.
pub(crate) enum Retry<E> {
    /// A storage error.
    Sink(DeltaSinkError),
    /// Anything else: never retried.
    Other(E),
}

/// Runs `op` until it succeeds or fails with anything but a transient storage error; transient
/// ones are retried with bounded exponential backoff (100 ms doubling to 10 s, at most
/// [`MAX_COMMIT_RETRIES`] times, a log line each). A raised `stop` ends the retries at once.
/// The one retry loop for storage work: an epoch's commit and opening a table.
pub(crate) async fn retry_transient<T, E>(
    what: &str,
    stop: &Shutdown,
    mut op: impl AsyncFnMut() -> Result<T, Retry<E>>,
) -> Result<T, Retry<E>> {
    let mut backoff = Backoff::new();
    loop {
        match op().await {
            Err(Retry::Sink(e)) if e.is_transient() => {
                let (attempt, wait) = backoff.failed();
                if attempt > MAX_COMMIT_RETRIES {
                    return Err(Retry::Sink(e));
                }
                warn!(
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "transient storage error, retrying {what}: {e}"
                );
                // Sleep in short steps: a stop request ends the retries (an epoch is sealed in
                // the WAL and is redone at the next start).
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if stop.requested() {
                        return Err(Retry::Sink(e));
                    }
                    tokio::time::sleep(STOP_CHECK.min(until - Instant::now())).await;
                }
            }
            other => return other,
        }
    }
}

/// How often a retry's backoff looks at the stop flag.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The durable side of a pipeline: the table, the WAL and the checkpoint store.
pub struct Committer {
    // Invariant kept by the methods below (the fields are private so nothing else can break
    // it): `committed_epoch` and `table_version` are the newest epoch this pipeline committed
    // and its Delta version, as far as this process knows; `totals` count every committed
    // epoch once.
    sink: DeltaSink,
    wal: Wal,
    store: CheckpointStore,
    pipeline_id: String,
    totals: Counts,
    committed_epoch: u64,
    table_version: Option<TableVersion>,
    dead_letter_sink: Option<DeadLetterTable>,
    dedup: Option<SharedDedup>,
    /// False when `checkpoint.enabled = false`: no WAL appends, seals or checkpoints.
    durable: bool,
    /// Bytes appended to the WAL by this run (frames with their headers).
    wal_bytes: u64,
    /// Raised when the process is asked to stop: a commit's retries give up at once.
    stop: Shutdown,
    encode_buf: Vec<u8>,
    /// Applies state deltas to the store off the critical path (started at the first delta).
    state_writer: Option<StateWriter>,
    /// Emptied delta buffers the state writers hand back and the dedup state takes its next
    /// epochs' from: one pool for the committer's life, so no writer start needs the dedup lock.
    key_buffers: std::sync::Arc<tidemark_checkpoint::store::KeyBuffers>,
    /// CPU time of state writers this committer stopped (a reset's; `None`: none stopped):
    /// with the running one's, [`Committer::state_writer_cpu`].
    stopped_writers_cpu: Option<std::time::Duration>,
    /// The newest epoch whose state delta is durable in the store, as the newest checkpoint
    /// record names it, and the WAL position just after its seal (where the WAL's changelog of
    /// later epochs begins). Invariant: the WAL holds every segment from there on.
    state_epoch: u64,
    state_at: WalPosition,
    /// Checkpointed epochs whose delta is queued or applied but maybe not synced yet, oldest
    /// first (consecutive: one per checkpoint written through the changelog path since
    /// `state_epoch`).
    unsynced_state: VecDeque<UnsyncedEpoch>,
    /// Per partition, the Kafka timestamp of the newest record committed before this run's
    /// epochs (from the table's newest commit), carried into every commitInfo's `partitions`
    /// until an epoch reads a newer record of that partition.
    last_timestamps: BTreeMap<(String, i32), i64>,
    /// Delta checkpoints and log cleanup after commits (`[maintenance]`; none until
    /// [`Committer::set_maintenance`]).
    maintenance: Option<crate::maintenance::Maintenance>,
}

/// The dead-letter table and how far it holds this pipeline's letters.
///
/// Invariant: the table holds exactly the dead letters of this pipeline's records below `end`
/// (per partition) and none at or after it. So a letter is written iff its record is at or
/// after `end`: an epoch redone with the same boundaries writes nothing twice, and an epoch
/// re-read with other boundaries (the store was lost between the dead-letter commit and the
/// main commit) neither skips nor doubles a letter. `end` is of one cluster: after a failover
/// the letters the table holds from other clusters are in `overlap`, recognised by record
/// identity instead ([`crate::dead_letter_overlap`]), and `end` starts at the run's start.
pub struct DeadLetterTable {
    /// The table.
    pub sink: DeltaSink,
    /// Its txn version for this pipeline (the newest epoch with letters).
    pub txn: Epoch,
    /// End positions of that epoch.
    pub end: Positions,
    /// The cluster `end` belongs to (the newest commit's; `None`: unknown).
    end_cluster: Option<String>,
    /// Letters held from other clusters' commits that a failover may read again.
    overlap: OverlapLetters,
}

impl DeadLetterTable {
    /// Opens the table's progress: txn version and the newest commit's end positions.
    pub async fn open(mut sink: DeltaSink) -> Result<Self, CommitError> {
        let (txn, progress) = sink.progress().await?;
        let end_cluster = progress
            .as_ref()
            .and_then(|p| crate::dead_letter_overlap::cluster_of_commit(&p.info));
        Ok(Self {
            sink,
            txn: txn.unwrap_or(Epoch::ZERO),
            end: progress.map(|p| p.info.end_positions).unwrap_or_default(),
            end_cluster,
            overlap: OverlapLetters::default(),
        })
    }

    /// Readies the table for a run reading cluster `here` from `start`: when its newest
    /// commit is of another cluster, its end positions mean nothing here and every letter
    /// from `start` on is a candidate; the letters its commits of other clusters hold in
    /// `windows` are loaded, so that those a failover reads again are not written twice.
    pub async fn guard_other_clusters(
        &mut self,
        pipeline_id: &str,
        here: &str,
        start: &Positions,
        windows: &crate::dead_letter_overlap::Windows,
    ) -> Result<(), CommitError> {
        if self.end_cluster.as_deref().is_some_and(|c| c != here) {
            tracing::warn!(table = %self.sink.uri(), from = ?self.end_cluster, to = %here, "the dead-letter table's positions are of another cluster: its letters from there are recognised by record (topic, partition, timestamp, key, value) instead of offset");
            self.end = start.clone();
            self.end_cluster = Some(here.to_string());
        }
        let commits = self.sink.pipeline_commits().await?;
        let epochs = crate::dead_letter_overlap::epochs_of_other_clusters(&commits, here);
        self.sink.set_cluster_id(Some(here.to_string()));
        if epochs.is_empty() {
            return Ok(());
        }
        self.overlap =
            crate::dead_letter_overlap::load(&self.sink, pipeline_id, &epochs, windows).await?;
        Ok(())
    }

    /// The letters of `letters` the table does not hold yet (see the invariant); a letter
    /// held from another cluster is used up by its first match.
    pub fn not_yet_written<'a>(&mut self, letters: &'a [DeadLetter]) -> Vec<&'a DeadLetter> {
        let overlap = &mut self.overlap;
        letters_at_or_after(&self.end, letters)
            .into_iter()
            .filter(|d| overlap.is_empty() || !overlap.take(d))
            .collect()
    }

    /// Letters not written again because the table held them from another cluster.
    pub fn overlap_matched(&self) -> u64 {
        self.overlap.matched
    }
}

/// The [`Counts`] a commit of this pipeline recorded: the inverse of
/// [`Committer::commit_info`] (skipped records count as dead-lettered).
pub fn counts_of_commit(info: &EpochCommitInfo) -> Counts {
    Counts {
        read: info.records_read,
        written: info.rows_written,
        duplicates: info.duplicates,
        late: info.late,
        dead_lettered: info.dead_lettered + info.records_skipped,
    }
}

/// The letters whose record is at or after `end` in its partition (all of a partition `end`
/// does not name).
fn letters_at_or_after<'a>(end: &Positions, letters: &'a [DeadLetter]) -> Vec<&'a DeadLetter> {
    letters
        .iter()
        .filter(|d| {
            end.get(&d.topic, d.partition)
                .is_none_or(|at| d.offset >= at)
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn skipped(r: &InvalidRecord) -> SkippedRecord {
    SkippedRecord {
        topic: r.topic.clone(),
        partition: r.partition,
        offset: r.offset,
        reason: r.reason.as_str().to_string(),
    }
}

/// The logging side of the committer, borrowed apart from the table side so that the next
/// epoch's records can be logged (step 1) while an epoch commits (step 3).
struct WalLog<'a> {
    wal: &'a mut Wal,
    wal_bytes: &'a mut u64,
    encode_buf: &'a mut Vec<u8>,
    durable: bool,
}

impl WalLog<'_> {
    /// Step 1's log part: appends `records` of `epoch` to the WAL as one group commit, after a
    /// marker holding the batch's wall clock (which decides `event_time_in_future`, on replay
    /// too). A record too large for one WAL frame is logged as a bounded stub (no value) and is
    /// dead-lettered as `too_large`, so it can never make the append fail (see `epoch_log`).
    /// Returns the clock logged (the batch's verdicts are given under it).
    fn log_records(&mut self, epoch: u64, records: &[SourceRecord]) -> Result<i64, CommitError> {
        fault::hit(CrashPoint::BeforeWalAppend);
        let clock = now_ms() as i64;
        if self.durable {
            let (wal, wal_bytes) = (&mut *self.wal, &mut *self.wal_bytes);
            let stubs = log_batch(clock, records, self.encode_buf, |kind, payload| {
                *wal_bytes += (payload.len() + FRAME_HEADER_LEN) as u64;
                wal.append(kind, epoch, payload).map(|_| ())
            })?;
            for r in stubs.iter().map(|i| &records[*i]) {
                tracing::warn!(epoch, record = %r.coordinates(), bytes = record_size(r), "record too large for one WAL frame: logged without its value; it is dead-lettered as too_large");
            }
            self.wal.commit()?;
        }
        fault::hit(CrashPoint::AfterWalAppend);
        Ok(clock)
    }
}

/// Step 1 for one batch, between commits ([`Committer::read_batch`]) and during one
/// ([`read_during_commit`]) alike, so both give the same verdicts, a pure function of (state,
/// watermark, records in WAL order): reads up to `want` records (waiting at most `wait`),
/// registers partitions the source added with the watermark tracker, logs the batch to the WAL
/// (one group commit) and only then hands it to `open` ([`OpenEpoch::add_ahead`]: counted in at
/// once, decoded and decided on the epoch's own threads, in WAL order, and applied by a later
/// call or at the seal). Returns the number of records read.
#[allow(clippy::too_many_arguments)]
async fn read_batch(
    source: &mut KafkaSource,
    open: &mut OpenEpoch,
    processor: &RecordProcessor,
    log: &mut WalLog<'_>,
    dedup: Option<&SharedDedup>,
    want: usize,
    wait: Duration,
) -> Result<usize, CommitError> {
    let records = source.next_batch(want, wait).await?;
    let added = source.take_added_partitions();
    if let (false, Some(d)) = (added.is_empty(), dedup) {
        d.lock().tracker.register(added, Instant::now());
    }
    if records.is_empty() {
        return Ok(0);
    }
    let clock = log.log_records(open.epoch, &records)?;
    let read = records.len();
    // Decoded and decided on the epoch's threads while the next batches are read and logged.
    open.add_ahead(records, Some(clock), processor, dedup)?;
    crate::metrics::batch_read(open.records);
    Ok(read)
}

/// Step 1 for the next epoch while an epoch commits: [`read_batch`] into `ahead.open` until
/// `done` is raised (at the end of the batch in hand), waiting while the read-ahead limits are
/// reached or a stop is requested; the watermark moved at the committing epoch's seal and moves
/// next at this epoch's seal, after the commit. Counts the batches asked of the source in
/// `polls`.
async fn read_during_commit(
    ahead: &mut ReadAhead<'_>,
    log: &mut WalLog<'_>,
    dedup: Option<&SharedDedup>,
    stop: &Shutdown,
    done: &Cell<bool>,
    logged: &Cell<bool>,
    polls: &mut u64,
) -> Result<(), CommitError> {
    while !done.get() {
        let want = ahead.wanted();
        if want == 0 || stop.requested() {
            // Reading waits: the cap on buffered bytes (or the epoch's own limit) is reached.
            logged.set(true);
            tokio::time::sleep(READ_AHEAD_IDLE).await;
            continue;
        }
        *polls += 1;
        let read = read_batch(
            ahead.source,
            ahead.open,
            ahead.processor,
            log,
            dedup,
            want,
            READ_AHEAD_WAIT,
        )
        .await
        .inspect_err(|_| logged.set(true))?;
        // Something logged, or nothing to read ahead now (see `read_ahead::test_schedule_wait`).
        if read > 0 || ahead.source.caught_up() {
            logged.set(true);
        }
        // The commit shares this task (`join!`) and is polled only when this future returns
        // `Pending`: with records waiting in the consumer a batch never does, so without this
        // the commit stalled until the read-ahead cap was reached (measured: commits of
        // ~600 ms for ~100 ms of their own work, reading then stopped at the cap).
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// The table side of the committer (the tables and who writes them), borrowed apart from the
/// logging side: step 3 runs on it while the next epoch is read.
struct TableWriter<'a> {
    sink: &'a mut DeltaSink,
    dead_letters: Option<&'a mut DeadLetterTable>,
    pipeline_id: &'a str,
}

impl TableWriter<'_> {
    /// [`TableWriter::write_and_commit`] with bounded exponential backoff on transient storage
    /// errors (a log line per retry); a fatal error, or the last attempt's, stops the run.
    async fn write_and_commit_retrying(
        &mut self,
        stop: &Shutdown,
        open: &OpenEpoch,
        info: &EpochCommitInfo,
        report: &mut EpochReport,
    ) -> Result<TableVersion, CommitError> {
        let what = format!("the commit of epoch {}", open.epoch);
        retry_transient(&what, stop, async || {
            self.write_and_commit(open, info, report)
                .await
                .map_err(|e| match e {
                    CommitError::Sink(s) => Retry::Sink(s),
                    other => Retry::Other(other),
                })
        })
        .await
        .map_err(|e| match e {
            Retry::Sink(s) => CommitError::Sink(s),
            Retry::Other(other) => other,
        })
    }

    /// Dead letters first (only those the dead-letter table does not hold yet, see
    /// [`DeadLetterTable`]), then the rows.
    async fn write_and_commit(
        &mut self,
        open: &OpenEpoch,
        info: &EpochCommitInfo,
        report: &mut EpochReport,
    ) -> Result<TableVersion, CommitError> {
        let epoch = Epoch::new(open.epoch);
        if let Some(dlq) = self.dead_letters.as_deref_mut() {
            let letters = dlq.not_yet_written(&open.dead_letters);
            if !letters.is_empty() {
                let batch = dead_letter::to_batch(
                    dlq.sink.arrow_schema(),
                    self.pipeline_id,
                    epoch,
                    &letters,
                )
                .map_err(|source| ProcessError::Decode { epoch, source })?;
                // An epoch number the table holds already (re-read with other boundaries
                // after a lost store): its new letters go in files after the committed ones,
                // in a commit that keeps the txn version where it is.
                let again = dlq.txn >= epoch;
                let first_part = if again {
                    dlq.sink.next_free_part(epoch).await?
                } else {
                    0
                };
                let (adds, _) = dlq
                    .sink
                    .write_epoch_parts(epoch, first_part, &[batch])
                    .await?;
                let mut dlq_info = info.clone();
                dlq_info.rows_written = letters.len() as u64;
                dlq_info.skipped.clear();
                let committed = if again {
                    dlq.sink.commit_more_of_epoch(adds.clone(), &dlq_info).await
                } else {
                    commit_with_delay(&mut dlq.sink, adds.clone(), &dlq_info).await
                };
                match committed {
                    Ok(CommitOutcome::Committed { .. }) => {
                        dlq.txn = dlq.txn.max(epoch);
                        dlq.end = open.end.clone();
                    }
                    Ok(CommitOutcome::AlreadyCommitted { txn_version }) => {
                        return Err(CommitError::AlreadyCommitted {
                            table: dlq.sink.uri().to_string(),
                            message: format!(
                                "epoch {epoch} is already in the dead-letter table (txn version \
                                 {txn_version}, {} expected): another process writes with \
                                 pipeline id {:?}; stopping without writing it again",
                                dlq.txn, self.pipeline_id
                            ),
                        });
                    }
                    // The files stay: the sink found the commit did not land, and the next
                    // start sweeps this run's uncommitted files.
                    Err(e) => return Err(e.into()),
                }
            }
        }
        fault::hit(CrashPoint::BeforeParquetWrite);
        let (adds, write) = match &open.encoded {
            Some(files) => {
                crate::metrics::time_parquet(self.sink.write_encoded_files(epoch, files)).await?
            }
            None => {
                crate::metrics::time_parquet(self.sink.write_epoch_files(epoch, &open.batches))
                    .await?
            }
        };
        fault::hit(CrashPoint::AfterParquetWrite);
        report.files = write.files as u64;
        match commit_with_delay(self.sink, adds.clone(), info).await {
            Ok(CommitOutcome::Committed { version }) => Ok(version),
            Ok(CommitOutcome::AlreadyCommitted { txn_version }) => {
                Err(CommitError::AlreadyCommitted {
                    table: self.sink.uri().to_string(),
                    message: format!(
                    "epoch {epoch} is already in the table (txn version {txn_version}): another \
                     process writes with pipeline id {:?}; stopping without writing it again",
                    self.pipeline_id
                ),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Committer {
    /// A committer over opened parts, with no epoch committed yet; `durable` is false when
    /// checkpoints are off (no WAL appends, seals or checkpoints).
    pub fn new(
        sink: DeltaSink,
        wal: Wal,
        store: CheckpointStore,
        pipeline_id: String,
        dead_letter_sink: Option<DeadLetterTable>,
        durable: bool,
    ) -> Self {
        Self {
            sink,
            wal,
            store,
            pipeline_id,
            totals: Counts::default(),
            committed_epoch: 0,
            table_version: None,
            dead_letter_sink,
            dedup: None,
            durable,
            wal_bytes: 0,
            stop: Shutdown::new(),
            encode_buf: Vec::new(),
            state_writer: None,
            key_buffers: std::sync::Arc::default(),
            stopped_writers_cpu: None,
            state_epoch: 0,
            state_at: WalPosition::default(),
            unsynced_state: VecDeque::new(),
            last_timestamps: BTreeMap::new(),
            maintenance: None,
        }
    }

    /// Takes the per-partition timestamps and the cluster id a commit recorded (the table's
    /// newest) as where this run continues from.
    pub fn carry_positions_from(&mut self, info: &EpochCommitInfo) {
        self.last_timestamps = info
            .partitions
            .iter()
            .filter_map(|p| Some(((p.topic.clone(), p.partition), p.last_timestamp_ms?)))
            .collect();
        self.sink.set_cluster_id(info.cluster_id.clone());
    }

    /// The Kafka cluster the next commits record (the broker's id, once the source connected).
    pub fn record_cluster_id(&mut self, id: Option<String>) {
        if let Some(dlq) = self.dead_letter_sink.as_mut() {
            dlq.sink.set_cluster_id(id.clone());
        }
        self.sink.set_cluster_id(id);
    }

    /// The sink, to set what its next commits record (cluster, generation).
    pub fn sink_mut(&mut self) -> &mut DeltaSink {
        &mut self.sink
    }

    /// Continues from checkpoint `c`: its totals, committed epoch and table version.
    pub fn continue_from(&mut self, c: &CheckpointRecord) {
        self.totals = c.counts;
        self.committed_epoch = c.committed_epoch;
        self.table_version = TableVersion::from_stored(c.table_version);
        self.state_epoch = c.state_epoch;
        self.state_at = WalPosition {
            segment: c.state_wal_segment,
            offset: c.state_wal_offset,
        };
    }

    /// Hands the deltas of epochs `state_epoch + 1 ..= c` that recovery read back from the
    /// WAL's changelog (with the position after each epoch's seal) to the state writer, in
    /// order: once it has synced them, a checkpoint names the newer state and the WAL drops
    /// them. Their checkpoint records are durable already.
    pub(crate) fn resume_changelog(
        &mut self,
        deltas: Vec<crate::recovery::ChangelogDelta>,
    ) -> Result<(), CommitError> {
        for d in deltas {
            let epoch = d.delta.epoch;
            self.state_writer().queue(d.delta)?;
            self.unsynced_state.push_back(UnsyncedEpoch {
                epoch,
                delta_at: d.starts_at,
                after_seal: d.after_seal,
            });
        }
        Ok(())
    }

    /// Holds the state writer back from applying deltas until the hold drops (best effort:
    /// see [`StateWriter::hold`]): recovery, while it replays and commits its first epoch, so
    /// the changelog it resumed does not share the cores with that commit.
    pub(crate) fn hold_state_writes(&mut self) -> tidemark_checkpoint::store::StateHold {
        self.state_writer().hold()
    }

    /// Asks the state writer to write what it has gathered now (a hint; it does not wait),
    /// when the run is about to stop: that write then overlaps the last epoch's commit, and
    /// [`Committer::finish_state_writes`] waits only for the last delta.
    pub fn write_state_soon(&self) {
        if let Some(w) = &self.state_writer {
            w.write_soon();
        }
    }

    /// Writes what the state writer has gathered and waits for it, at the end of a run, so the
    /// run's summary counts that write ([`Committer::state_writer_cpu`]) and the store holds the
    /// run's whole state (dropping the writer would write it too, after the summary). A failure
    /// loses nothing: the WAL keeps the deltas, and the next start reads them there.
    pub fn finish_state_writes(&self) -> Result<(), CommitError> {
        if let Some(w) = &self.state_writer {
            w.sync()?;
        }
        Ok(())
    }

    /// CPU time the dedup state writers' threads used, as of their last writes (`None`: none
    /// measured, e.g. none ran): what dedup costs off the reading thread, for the run summary.
    pub fn state_writer_cpu(&self) -> Option<std::time::Duration> {
        let running = self.state_writer.as_ref().and_then(StateWriter::cpu_time);
        running
            .into_iter()
            .chain(self.stopped_writers_cpu)
            .reduce(|a, b| a + b)
    }

    /// The state writer, started on first use with the store's state durable through
    /// `state_epoch`, handing delta buffers back to the committer's pool.
    fn state_writer(&mut self) -> &StateWriter {
        let (store, durable, buffers) = (&self.store, self.state_epoch, &self.key_buffers);
        self.state_writer.get_or_insert_with(|| {
            StateWriter::start_with_buffers(store.clone(), durable, buffers.clone())
        })
    }

    /// Moves `state_epoch` to the newest epoch the state writer has synced.
    fn note_synced_state(&mut self) {
        let Some(synced) = self.state_writer.as_ref().map(StateWriter::durable_epoch) else {
            return;
        };
        while let Some(&u) = self.unsynced_state.front() {
            if u.epoch > synced {
                break;
            }
            self.state_epoch = u.epoch;
            self.state_at = u.after_seal;
            self.unsynced_state.pop_front();
        }
    }

    /// Records that epoch `epoch`'s commit landed at `table_version` (found in the table by
    /// recovery, not made by this process).
    pub fn note_landed(&mut self, epoch: u64, table_version: Option<TableVersion>) {
        self.committed_epoch = epoch;
        self.table_version = table_version;
    }

    /// Forgets the store's checkpoints and dedup state and takes the table's progress as the
    /// truth: its newest commit of this pipeline is epoch `v` at `table_version`, and the
    /// totals are the sum of what each of this pipeline's commits recorded (when checkpoints
    /// are on; with them off totals are per run, and a start does not read the whole history).
    pub async fn reset_to_table(
        &mut self,
        v: u64,
        table_version: Option<TableVersion>,
    ) -> Result<(), CommitError> {
        // Deltas still queued are applied (and synced) before the reset, never after it.
        if let Some(writer) = self.state_writer.take() {
            if let Some(cpu) = writer.stop() {
                *self.stopped_writers_cpu.get_or_insert_default() += cpu;
            }
        }
        self.unsynced_state.clear();
        self.store.reset()?;
        // The reset store holds no state: no record may claim one from before it (a start
        // with no commit to checkpoint, v = 0, kept the old checkpoint's `state_epoch`, and the
        // next record would have claimed the new epochs' deltas durable and let the WAL drop
        // them). The changelog of the epochs from here begins at the log's end.
        self.state_epoch = 0;
        self.state_at = self.wal.end();
        self.totals = Counts::default();
        if self.durable {
            let commits = self.sink.pipeline_commits().await?;
            for c in &commits {
                self.add_committed(c);
            }
            if !commits.is_empty() {
                info!(commits = commits.len(), totals = ?self.totals, "running totals rebuilt from the table's commits");
            }
        }
        self.note_landed(v, table_version);
        Ok(())
    }

    /// The topic ids the connected source reports: recorded with the positions in every
    /// commit from now on.
    pub fn record_topic_ids(&mut self, ids: std::collections::BTreeMap<String, String>) {
        self.sink.set_topic_ids(ids);
    }

    /// Installs the dedup runtime (state and watermark progress) recovery built.
    pub fn set_dedup(&mut self, mut dedup: DedupRuntime) {
        dedup.state.take_key_buffers_from(self.key_buffers.clone());
        self.dedup = Some(SharedDedup::new(dedup));
    }

    /// The dedup runtime, if dedup is on, locked (an epoch's deciding thread gives verdicts
    /// under the same lock: hold it briefly, and never while waiting for that thread).
    pub fn dedup(&self) -> Option<DedupGuard<'_>> {
        self.dedup.as_ref().map(SharedDedup::lock)
    }

    /// The dedup state's watermark, if dedup is on, without the runtime's lock (an epoch's
    /// deciding thread may hold it for a whole batch: [`SharedDedup::watermark`]).
    pub fn dedup_watermark(&self) -> Option<i64> {
        self.dedup.as_ref().and_then(SharedDedup::watermark)
    }

    /// Keys the dedup state holds, if dedup is on, without the runtime's lock
    /// ([`SharedDedup::held_keys`]).
    pub fn dedup_held_keys(&self) -> Option<usize> {
        self.dedup.as_ref().map(SharedDedup::held_keys)
    }

    /// The shared dedup runtime, for records entering an epoch.
    pub fn shared_dedup(&self) -> Option<&SharedDedup> {
        self.dedup.as_ref()
    }

    /// Ends a commit's retries at once when `stop` is raised.
    pub fn set_stop(&mut self, stop: Shutdown) {
        self.stop = stop;
    }

    /// The checkpoint store (read-only: checkpoints are written by [`Committer::checkpoint`]).
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Dead letters this run did not write because the dead-letter table held them from
    /// another cluster (a failover's re-read overlap, see [`crate::dead_letter_overlap`]).
    pub fn dead_letters_already_held(&self) -> u64 {
        self.dead_letter_sink
            .as_ref()
            .map_or(0, DeadLetterTable::overlap_matched)
    }

    /// The table, for reads (its commits are made by [`Committer::commit`]).
    pub fn sink(&self) -> &DeltaSink {
        &self.sink
    }

    /// Drops the whole WAL, the next epoch being `next_epoch` (a worker's start: see
    /// [`crate::protocol::decide_for_worker`]). Returns the segments and bytes deleted.
    pub fn discard_wal(&mut self, next_epoch: u64) -> Result<(usize, u64), CommitError> {
        Ok(self.wal.reset(next_epoch)?)
    }

    /// WAL segments on disk: `(id, first epoch, size in bytes)`.
    pub fn wal_segments(&self) -> Vec<(u64, u64, u64)> {
        self.wal.segments()
    }

    /// Totals over the pipeline's life as this process knows them.
    pub fn totals(&self) -> Counts {
        self.totals
    }

    /// The Delta version of the newest commit of this pipeline.
    pub fn table_version(&self) -> Option<TableVersion> {
        self.table_version
    }

    /// Bytes this run appended to the WAL.
    pub fn wal_bytes(&self) -> u64 {
        self.wal_bytes
    }

    /// Step 1 for one batch between commits (see [`read_batch`]): reads up to `want` records
    /// of `source` into `open`, waiting at most `wait`; the number read.
    pub async fn read_batch(
        &mut self,
        source: &mut KafkaSource,
        open: &mut OpenEpoch,
        processor: &RecordProcessor,
        want: usize,
        wait: Duration,
    ) -> Result<usize, CommitError> {
        let mut log = WalLog {
            wal: &mut self.wal,
            wal_bytes: &mut self.wal_bytes,
            encode_buf: &mut self.encode_buf,
            durable: self.durable,
        };
        read_batch(
            source,
            open,
            processor,
            &mut log,
            self.dedup.as_ref(),
            want,
            wait,
        )
        .await
    }

    /// Step 2: seals `open` (durable when this returns). With dedup on, the watermark moves
    /// here (the partitions' progress decides it, wall-clock idleness included) and the new
    /// value is recorded in the seal, so a replay uses it instead of recomputing it. The
    /// settings the epoch was processed under are recorded too (a redo refuses other values).
    pub fn seal(
        &mut self,
        mut open: OpenEpoch,
        processor: &RecordProcessor,
    ) -> Result<SealedEpoch, CommitError> {
        // No record comes after the seal: the last batches get their verdicts (under the
        // watermark in effect before this seal moves it), and the last rows are encoded.
        open.finish_decoding(processor, self.dedup.as_ref())?;
        open.finish_encoding()?;
        let watermark = self.dedup.as_ref().and_then(|d| {
            let d = &mut *d.lock();
            let candidate = d.tracker.candidate(Instant::now());
            let watermark = d.state.advance(candidate);
            if let Some(p) = d.partitions.as_mut() {
                p.origins.evict_below(watermark);
            }
            watermark
        });
        // The keys the epoch added (still at or above the new watermark): logged before the
        // seal when checkpoints are on (the changelog), dropped when they are off (no store).
        let delta = self
            .dedup
            .as_ref()
            .map(|d| d.lock().state.take_inserted())
            .filter(|_| self.durable);
        let mut info = SealInfo {
            start_positions: open.start.clone(),
            end_positions: open.end.clone(),
            records: open.records,
            watermark,
            settings: open.settings.as_deref().cloned(),
            state_keys: None,
            run_id: Some(self.sink.run_id()),
        };
        let mut wal_after_seal = None;
        // Where the delta's frames begin: the checkpoint's changelog index names it.
        let delta_at = self.wal.end();
        if self.durable {
            if let Some(keys) = &delta {
                let (wal, wal_bytes, epoch) = (&mut self.wal, &mut self.wal_bytes, open.epoch);
                let n = log_state_delta(keys, &mut self.encode_buf, |payload| {
                    *wal_bytes += (payload.len() + FRAME_HEADER_LEN) as u64;
                    wal.append(FrameKind::Marker, epoch, payload).map(|_| ())
                })?;
                info.state_keys = Some(n);
            }
            let payload = info.encode();
            self.wal_bytes += (payload.len() + FRAME_HEADER_LEN) as u64;
            wal_after_seal = Some(self.wal.seal(open.epoch, &payload)?);
        }
        fault::hit(CrashPoint::AfterSeal);
        Ok(SealedEpoch {
            open,
            delta: delta.map(|keys| LoggedDelta {
                keys,
                starts_at: delta_at,
            }),
            wal_after_seal,
        })
    }

    /// Runs `maintenance` after each epoch from now on (see [`crate::maintenance`]).
    pub fn set_maintenance(&mut self, maintenance: crate::maintenance::Maintenance) {
        self.maintenance = Some(maintenance);
    }

    /// The table maintenance that is due after an epoch committed at `version` (`None`: the
    /// epoch needed no commit); never fails the epoch (see [`crate::maintenance`]). Called by
    /// [`Committer::commit_sealed`], and by the run for an epoch recovery committed before the
    /// maintenance was set up.
    pub async fn maintain(&mut self, version: Option<TableVersion>) {
        if let Some(m) = self.maintenance.as_mut() {
            // The log keeps every version a retained checkpoint (a rewind target) names. The
            // store's history is scanned only when a checkpoint or compaction will read it.
            let version = version.map(|v| v.get());
            let keep_from = if !m.needs_keep_from(version) {
                None
            } else {
                match self.store.history() {
                    Ok(h) => h
                        .iter()
                        .filter_map(|r| TableVersion::from_stored(r.table_version))
                        .map(|v| v.get())
                        .min(),
                    Err(e) => {
                        tracing::warn!("cannot read the retained checkpoints; the log is kept whole this time: {e}");
                        Some(0)
                    }
                }
            };
            m.after_epoch(
                &mut self.sink,
                self.dead_letter_sink.as_mut().map(|d| &mut d.sink),
                version,
                keep_from,
            )
            .await;
        }
    }

    /// Steps 3–5 for a sealed epoch: [`Committer::commit`], then
    /// [`Committer::checkpoint_committed`]; then the table maintenance that is due (never
    /// failing the epoch: see [`crate::maintenance`]).
    pub async fn commit_sealed(
        &mut self,
        sealed: SealedEpoch,
        read_ahead: Option<ReadAhead<'_>>,
    ) -> Result<EpochReport, CommitError> {
        let mut read_ahead = read_ahead;
        let committed = self.commit(sealed, read_ahead.as_mut()).await?;
        let report = self.checkpoint_committed(committed)?;
        self.maintain(report.version).await;
        if let Some(ahead) = read_ahead {
            // Step 5's last part: for lag tools only, never read back.
            ahead.source.commit_positions(&report.end);
        }
        Ok(report)
    }

    /// Step 3: dead letters (own table, own commit, first), then rows as Parquet + ONE Delta
    /// commit. While the commits run, `source` (if any) keeps being polled (bounded buffering
    /// is the back-pressure). Transient storage errors are retried with bounded backoff; after
    /// any error the table is the truth (the sink re-reads it), and no data file is deleted
    /// here: files of a commit that did not land are swept at the next start.
    async fn commit(
        &mut self,
        sealed: SealedEpoch,
        read_ahead: Option<&mut ReadAhead<'_>>,
    ) -> Result<CommittedEpoch, CommitError> {
        let SealedEpoch {
            open,
            delta,
            wal_after_seal,
        } = sealed;
        let started = Instant::now();
        let epoch = open.epoch;
        debug_assert!(!open.decoding(), "a sealed epoch has every verdict");
        debug_assert!(
            open.counts().add_up(),
            "every record is written, a duplicate, late or invalid"
        );
        let mut report = EpochReport {
            epoch,
            counts: open.counts(),
            dead_letters: open.dead_letters.len() as u64,
            end: open.end.clone(),
            ..EpochReport::default()
        };
        let info = self.commit_info(&open);
        let mut polls = 0;
        // The table side and the logging side are borrowed apart: the commit of `epoch` and
        // the reading of the next epoch run together (at most one epoch commits at a time).
        let Committer {
            sink,
            dead_letter_sink,
            pipeline_id,
            stop,
            wal,
            wal_bytes,
            encode_buf,
            dedup,
            durable,
            ..
        } = self;
        let mut table = TableWriter {
            sink,
            dead_letters: dead_letter_sink.as_mut(),
            pipeline_id,
        };
        let (outcome, read) = match read_ahead {
            Some(ahead) => {
                let mut log = WalLog {
                    wal,
                    wal_bytes,
                    encode_buf,
                    durable: *durable,
                };
                // Both futures run on this one task (`join!`): plain cells suffice.
                let done = Cell::new(false);
                let logged = Cell::new(false);
                let work = async {
                    crate::read_ahead::test_schedule_wait(&logged).await;
                    let outcome = table
                        .write_and_commit_retrying(stop, &open, &info, &mut report)
                        .await;
                    done.set(true);
                    outcome
                };
                let read = read_during_commit(
                    ahead,
                    &mut log,
                    dedup.as_ref(),
                    stop,
                    &done,
                    &logged,
                    &mut polls,
                );
                tokio::join!(work, read)
            }
            None => (
                table
                    .write_and_commit_retrying(stop, &open, &info, &mut report)
                    .await,
                Ok(()),
            ),
        };
        report.polls_during_commit = polls;
        let version = outcome?;
        fault::hit(CrashPoint::AfterDeltaCommit);
        report.version = Some(version);
        for ((topic, partition), (_, ts)) in &open.last_timestamps {
            self.last_timestamps
                .insert((topic.to_string(), *partition), *ts);
        }
        self.committed_epoch = epoch;
        self.table_version = Some(version);
        self.add_totals(&open);
        crate::metrics::epoch_committed(&open, &report);
        Ok(CommittedEpoch {
            open,
            report,
            started,
            delta,
            wal_after_seal,
            read_ahead: read.err(),
        })
    }

    /// Steps 4–5 for an epoch whose commit landed: checkpoint, then WAL truncation.
    pub fn checkpoint_committed(
        &mut self,
        committed: CommittedEpoch,
    ) -> Result<EpochReport, CommitError> {
        let CommittedEpoch {
            open,
            mut report,
            started,
            delta,
            wal_after_seal,
            read_ahead,
        } = committed;
        let cp_started = Instant::now();
        self.checkpoint_with(open.epoch, &open.end, delta, wal_after_seal)?;
        report.checkpoint_micros = cp_started.elapsed().as_micros() as u64;
        report.commit_micros = started.elapsed().as_micros() as u64;
        // Reading the next epoch failed during the commit: the run stops now that this epoch
        // is durable (what was logged of the next one is re-read at the next start).
        if let Some(e) = read_ahead {
            return Err(e);
        }
        Ok(report)
    }

    /// What the commit of `open` records in its commitInfo: its [`Counts`] in the commitInfo's
    /// wire shape, where skipped records (`errors.on_invalid_record = "skip"`) are listed and
    /// counted apart from the dead-lettered ones ([`counts_of_commit`] is the inverse).
    fn commit_info(&self, open: &OpenEpoch) -> EpochCommitInfo {
        let counts = open.counts();
        let skipped_count = (open.skipped.len() + open.skipped_other.len()) as u64;
        let watermark = self.dedup_watermark();
        let mut skipped_list: Vec<SkippedRecord> = open.skipped.iter().map(skipped).collect();
        skipped_list.extend(open.skipped_other.iter().map(|(r, reason)| SkippedRecord {
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            reason: reason.to_string(),
        }));
        EpochCommitInfo {
            pipeline_id: self.pipeline_id.clone(),
            // The sink records its own run id.
            run_id: None,
            epoch: Epoch::new(open.epoch),
            start_positions: open.start.clone(),
            end_positions: open.end.clone(),
            records_read: counts.read,
            rows_written: counts.written,
            records_skipped: skipped_count,
            skipped: skipped_list,
            duplicates: counts.duplicates,
            cross_partition_duplicates: open.cross_partition_duplicates,
            late: counts.late,
            dead_lettered: counts.dead_lettered - skipped_count,
            watermark,
            topic_ids: self.sink.topic_ids().clone(),
            // The sink records its own cluster id and generation.
            cluster_id: None,
            partitions: self.partition_positions(open),
            generation: None,
        }
    }

    /// Every partition of `open`'s end positions as the commitInfo records it: next offset,
    /// topic id, cluster and the timestamp of its newest committed record (this epoch's, or
    /// carried from earlier commits).
    fn partition_positions(&self, open: &OpenEpoch) -> Vec<PartitionPosition> {
        open.end
            .iter()
            .map(|(tp, next_offset)| {
                let ts = open
                    .last_timestamps
                    .get(&(Arc::from(tp.topic.as_str()), tp.partition))
                    .map(|(_, ts)| *ts)
                    .or_else(|| {
                        self.last_timestamps
                            .get(&(tp.topic.clone(), tp.partition))
                            .copied()
                    });
                // A worker's next owner of the partition rebuilds its dedup state from here.
                let dedup_floor = self.dedup().and_then(|d| {
                    let p = d.partitions.as_ref()?;
                    p.floors
                        .effective(&tp.topic, tp.partition, d.state.watermark())
                });
                PartitionPosition {
                    cluster_id: self.sink.cluster_id().map(str::to_string),
                    topic_id: self.sink.topic_ids().get(&tp.topic).cloned(),
                    topic: tp.topic,
                    partition: tp.partition,
                    next_offset,
                    last_timestamp_ms: ts,
                    dedup_floor,
                }
            })
            .collect()
    }

    /// Adds what a commit of this pipeline recorded to the totals: the inverse of how
    /// [`Committer::commit_sealed`] fills [`EpochCommitInfo`] (skipped records count as
    /// dead-lettered). Used to rebuild totals from the table when no checkpoint has them.
    pub(crate) fn add_committed(&mut self, info: &EpochCommitInfo) {
        self.totals += counts_of_commit(info);
    }

    /// Adds an epoch's counts to the totals (an epoch whose commit landed).
    pub(crate) fn add_totals(&mut self, open: &OpenEpoch) {
        self.totals += open.counts();
    }

    /// Steps 4–5 for a checkpoint recovery writes (the WAL position is the log's end, just after
    /// `SEAL(epoch)`): with `delta` (an epoch recovery replayed, whose replayed keys are exactly
    /// the delta its WAL logged before its seal: see `recovery::redo_delta`) through the
    /// changelog path, as a redo's checkpoint is; without it, with the dedup state synced in the
    /// same batch. Then WAL segments the synced state covers are deleted.
    pub(crate) fn checkpoint(
        &mut self,
        epoch: u64,
        positions: &Positions,
        delta: Option<LoggedDelta>,
    ) -> Result<(), CommitError> {
        self.checkpoint_with(epoch, positions, delta, None)
    }

    /// Steps 4–5. With `delta` (the epoch's state delta, logged before its seal by
    /// [`Committer::seal`]) the changelog path: the record alone is synced, naming the newest
    /// synced state; the delta goes to the state writer. Without it, the record and the state
    /// the epoch changed are ONE synced batch (after every queued delta is synced). Then WAL
    /// segments wholly before `state_epoch + 1` are deleted.
    fn checkpoint_with(
        &mut self,
        epoch: u64,
        positions: &Positions,
        delta: Option<LoggedDelta>,
        wal_after_seal: Option<WalPosition>,
    ) -> Result<(), CommitError> {
        if !self.durable {
            return Ok(());
        }
        // Just after `SEAL(epoch)`: frames of the next epoch logged while this one committed
        // lie after it and belong to what the checkpoint leaves to replay. Without the seal's
        // position (an epoch recovery redid or found landed, before anything else is logged)
        // the log's end: anything after that seal is an unsealed remnant, re-read instead.
        let wal_at = wal_after_seal.unwrap_or_else(|| self.wal.end());
        let watermark = self.dedup_watermark();
        let mut record = CheckpointRecord {
            epoch,
            committed_epoch: self.committed_epoch,
            table_version: TableVersion::to_stored(self.table_version),
            watermark,
            wal_segment: wal_at.segment,
            wal_offset: wal_at.offset,
            created_at_ms: now_ms(),
            counts: self.totals,
            positions: to_store_positions(positions),
            state_epoch: epoch,
            state_wal_segment: wal_at.segment,
            state_wal_offset: wal_at.offset,
            changelog_starts: Some(Vec::new()),
        };
        match (delta, self.dedup.is_some()) {
            (Some(delta), true) => {
                // The record first (durable), then the delta: the store never holds a delta of
                // an epoch no durable record has reached.
                self.state_writer();
                self.note_synced_state();
                let this = UnsyncedEpoch {
                    epoch,
                    delta_at: delta.starts_at,
                    after_seal: wal_at,
                };
                record.state_epoch = self.state_epoch;
                record.state_wal_segment = self.state_at.segment;
                record.state_wal_offset = self.state_at.offset;
                record.changelog_starts =
                    changelog_index(self.unsynced_state.iter().chain([&this]));
                self.store.write_record(&record)?;
                self.unsynced_state.push_back(this);
                self.state_writer().queue(StateDelta {
                    epoch,
                    inserts: delta.keys,
                    evict_below: watermark,
                })?;
            }
            (_, dedup) => {
                if let Some(w) = &self.state_writer {
                    // Queued deltas must be durable before a record claims a newer state.
                    w.sync()?;
                }
                let (inserts, evict_below) = match self.dedup() {
                    Some(mut d) if dedup => (d.state.take_inserted(), watermark),
                    _ => (PackedKeys::default(), None),
                };
                // The store lets compaction evict below the watermark once this is durable.
                self.store.write(&record, inserts.iter(), evict_below)?;
                self.unsynced_state.clear();
                self.state_epoch = epoch;
                self.state_at = wal_at;
            }
        }
        fault::hit(CrashPoint::AfterCheckpoint);
        let removed = self.wal.truncate_before(self.state_epoch + 1)?;
        if removed > 0 {
            tracing::debug!(
                epoch,
                state_epoch = self.state_epoch,
                segments = removed,
                "wal segments before the checkpoint's state deleted"
            );
        }
        Ok(())
    }

    /// Takes `wal` as the log from now on (the old one is dropped): for recovery cases that
    /// set the old log aside.
    pub(crate) fn set_wal(&mut self, wal: Wal) {
        self.wal = wal;
    }
}

async fn commit_with_delay(
    sink: &mut DeltaSink,
    adds: Vec<deltalake::kernel::Add>,
    info: &EpochCommitInfo,
) -> Result<CommitOutcome, tidemark_connectors::delta::DeltaSinkError> {
    crate::io_faults::before_delta_commit().await;
    crate::metrics::time_delta_commit(sink.commit_epoch(adds, info)).await
}

/// A checkpoint record's changelog index ([`CheckpointRecord::changelog_starts`]): where the
/// delta of each epoch after the synced state begins, oldest first. `None` when they are not
/// consecutive: a restart then scans the WAL from the state's position, as it does for records
/// of older builds.
fn changelog_index<'a>(
    epochs: impl Iterator<Item = &'a UnsyncedEpoch>,
) -> Option<Vec<ChangelogStart>> {
    let mut index: Vec<ChangelogStart> = Vec::new();
    for u in epochs {
        let at = u.delta_at;
        if index.last().is_some_and(|last| last.epoch + 1 != u.epoch) {
            return None;
        }
        index.push(ChangelogStart {
            epoch: u.epoch,
            segment: at.segment,
            offset: at.offset,
        });
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tidemark_connectors::dead_letter::DeadLetter;
    use tidemark_connectors::{Positions, SourceRecord};

    use super::letters_at_or_after;
    use super::{changelog_index, UnsyncedEpoch, WalPosition};

    fn unsynced(epoch: u64) -> UnsyncedEpoch {
        let at = WalPosition {
            segment: epoch,
            offset: 32,
        };
        UnsyncedEpoch {
            epoch,
            delta_at: at,
            after_seal: at,
        }
    }

    /// A record's changelog index lists every unsynced epoch in order, or nothing at all: a
    /// gap between epochs gives none (a restart then scans).
    #[test]
    fn the_changelog_index_is_whole_or_absent() {
        let index = changelog_index([unsynced(4), unsynced(5)].iter()).unwrap();
        assert_eq!(
            index
                .iter()
                .map(|s| (s.epoch, s.segment))
                .collect::<Vec<_>>(),
            vec![(4, 4), (5, 5)]
        );
        assert_eq!(changelog_index([].iter()), Some(Vec::new()));
        assert_eq!(changelog_index([unsynced(4), unsynced(6)].iter()), None);
    }

    fn letter(partition: i32, offset: i64) -> DeadLetter {
        let r = SourceRecord {
            topic: Arc::from("t"),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            payload: None,
        };
        DeadLetter::of(&r, "missing_payload", "no value")
    }

    /// A reset to a table that holds no commit of the pipeline (v = 0: a rewind to before its
    /// first commit, say) forgets the store's old state epoch. Kept, the next checkpoint
    /// would name it as durable while the reset store holds no state, and the WAL would drop
    /// the changelog of the epochs after it before the state writer had synced them.
    #[tokio::test]
    async fn a_reset_to_a_table_without_commits_of_the_pipeline_forgets_the_old_state_epoch() {
        use deltalake::kernel::{DataType, StructField};
        use tidemark_checkpoint::store::StoreOptions;
        use tidemark_checkpoint::wal::{FrameKind, WalOptions};
        use tidemark_checkpoint::{CheckpointRecord, CheckpointStore, Wal};
        use tidemark_connectors::delta::{DeltaSink, SinkOptions};

        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path().join("table")).unwrap();
        let columns = vec![StructField::new("id", DataType::LONG, false)];
        let sink = DeltaSink::open_or_create_with(&url, "p", "t", columns, SinkOptions::default())
            .await
            .unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("wal"), WalOptions::default(), None).unwrap();
        for epoch in 1..=7 {
            wal.append(FrameKind::Record, epoch, b"record").unwrap();
            wal.seal(epoch, b"seal").unwrap();
        }
        let store =
            CheckpointStore::open(&dir.path().join("store"), StoreOptions::default()).unwrap();
        let mut committer = super::Committer::new(sink, wal, store, "p".into(), None, true);
        committer.continue_from(&CheckpointRecord {
            table_version: Some(7),
            state_epoch: 5,
            ..crate::recovery::tests::empty_checkpoint(7)
        });
        assert_eq!(committer.state_epoch, 5);

        committer.reset_to_table(0, None).await.unwrap();
        assert_eq!(committer.state_epoch, 0, "the reset store holds no state");
        assert_eq!(
            committer.state_at,
            committer.wal.end(),
            "the changelog of the epochs from here begins at the log's end"
        );
        assert_eq!(
            (committer.committed_epoch, committer.table_version),
            (0, None)
        );
    }

    #[test]
    fn only_letters_at_or_after_the_tables_end_are_written() {
        let mut end = Positions::new();
        end.set("t", 0, 10);
        let letters = [letter(0, 9), letter(0, 10), letter(0, 11), letter(1, 0)];
        let got: Vec<(i32, i64)> = letters_at_or_after(&end, &letters)
            .iter()
            .map(|d| (d.partition, d.offset))
            .collect();
        assert_eq!(got, [(0, 10), (0, 11), (1, 0)]);
        assert_eq!(letters_at_or_after(&Positions::new(), &letters).len(), 4);
    }
}
