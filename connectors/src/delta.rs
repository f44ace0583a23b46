//! A Delta Lake sink that commits one epoch per Delta commit, exactly once.
//!
//! Every commit carries a `txn` action `{appId: pipeline_id, version: epoch}` and a `tidemark`
//! object in its commitInfo ([`EpochCommitInfo`]) with the epoch's end positions and the
//! [`RunId`] of the process that wrote it. So the table alone says how far the pipeline got: on
//! restart, positions are read back from the newest Tidemark commit, and an epoch whose txn
//! version is already in the table is never written again.
//!
//! Durability: for `file://` tables every file the sink writes — Parquet data files, `_delta_log`
//! commits, deltalake's checkpoints and `_last_checkpoint` — goes through a
//! [`DurableLocalStore`] over a [`SharedFs`]: temp file, fsync, link/rename, directory fsync. A
//! call that reports a file written or an epoch committed returns only once it survives a power
//! cut.
//!
//! Fencing (two writers of one pipeline with different state directories):
//! - a commit is written with deltalake's retries off, on a snapshot whose txn version was
//!   checked to be below the epoch, at the version right after that snapshot and with
//!   put-if-absent; so it can never land over a concurrent commit of the same epoch;
//! - data file names carry the writer's [`RunId`], so two writers never write the same file;
//! - [`DeltaSink::sweep_uncommitted_files`] deletes only files of runs the caller owns.

use std::collections::{BTreeMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitProperties, PreCommit, TransactionError,
};
use deltalake::kernel::{Action, Add, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::RecordBatchWriter;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tidemark_fs::SharedFs;
use tracing::{debug, info, warn};
use url::Url;

use crate::durable_store::DurableLocalStore;
use crate::ids::{Epoch, TableVersion};
use crate::multipart::AbortOnDrop;
use crate::parquet_file;
use crate::partition_claims::{self, claim_app_id, PartitionTaken};
use crate::record::{Positions, TopicPartition};
use crate::table_store::{verify_put_if_absent, TableStore};

/// The commitInfo key under which Tidemark records its progress.
pub const COMMIT_INFO_KEY: &str = "tidemark";

/// How many times a commit is tried again after losing a race to an unrelated commit (one of
/// another pipeline, or a table maintenance job); each try re-checks the txn version first.
/// Writers committing every 100 ms to one table on an object store (a log read and a commit
/// PUT per try) made 8 too few: one lost 8 races in a row (e2e
/// `s3_pipeline::two_writers_racing_on_one_s3_table_commit_each_epoch_once`).
pub const MAX_COMMIT_ATTEMPTS: usize = 32;

/// The wait before try `attempt` (from the third on) after a lost race: a random share of
/// `attempt` x 20 ms (at most 400 ms), so two writers that keep colliding drift apart.
fn conflict_backoff(attempt: usize) -> std::time::Duration {
    let cap_ms = (attempt as u64 * 20).min(400);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or_default();
    std::time::Duration::from_millis(nanos % cap_ms.max(1))
}

/// A failed sink operation, naming the operation, the table and (when there is one) the file.
#[derive(Debug, thiserror::Error)]
#[error("delta sink: {op} on table {table}{} failed: {source}", file.as_deref().map(|f| format!(", file {f}")).unwrap_or_default())]
pub struct DeltaSinkError {
    /// What the sink was doing.
    pub op: &'static str,
    /// The table's URI.
    pub table: String,
    /// The file at fault, relative to the table root, when the operation was on one file.
    pub file: Option<String>,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DeltaSinkError {
    /// True when trying the same operation again later may succeed: I/O timeouts, connection
    /// resets, interrupted calls, "too many open files", object-store 5xx and throttling.
    /// The engine retries those with bounded backoff; everything else stops the pipeline.
    ///
    /// Not transient: schema and data errors, version conflicts and commits lost to another
    /// writer (trying again cannot change the table's verdict), missing files, permissions,
    /// and a full disk (ENOSPC/EDQUOT, see [`DeltaSinkError::is_disk_full`]): space rarely
    /// comes back within a retry budget, and the operator must see it; a restart after space
    /// is freed commits the epoch exactly once.
    pub fn is_transient(&self) -> bool {
        let mut current: Option<&(dyn StdError + 'static)> = Some(self.source.as_ref());
        while let Some(e) = current {
            if let Some(verdict) = classify_one(e) {
                return verdict;
            }
            current = e.source();
        }
        false
    }

    /// The claim refusal, when that is the cause: another worker took a partition this
    /// commit covers (see [`crate::partition_claims`]).
    pub fn partition_taken(&self) -> Option<&PartitionTaken> {
        self.source.downcast_ref::<PartitionTaken>()
    }

    /// The fencing refusal, when that is the cause: a newer generation owns the table.
    pub fn fenced(&self) -> Option<&Fenced> {
        self.source.downcast_ref::<Fenced>()
    }

    /// True when the cause is a full disk (ENOSPC, EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        let mut current: Option<&(dyn StdError + 'static)> = Some(self.source.as_ref());
        while let Some(e) = current {
            if e.downcast_ref::<io::Error>()
                .is_some_and(tidemark_fs::is_disk_full)
            {
                return true;
            }
            current = e.source();
        }
        false
    }
}

/// The transient/permanent verdict on one error of a cause chain (`None`: look deeper).
fn classify_one(e: &(dyn StdError + 'static)) -> Option<bool> {
    if e.downcast_ref::<PartitionTaken>().is_some() {
        // Its text speaks of a session "timeout", but another worker owns the partition now.
        return Some(false);
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        if let Some(v) = classify_io(io) {
            return Some(v);
        }
    } else if let Some(d) = e.downcast_ref::<DeltaTableError>() {
        match d {
            DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::NotATable(_)
            | DeltaTableError::SchemaMismatch { .. }
            | DeltaTableError::InvalidData { .. } => return Some(false),
            DeltaTableError::Transaction { source } => {
                return match source {
                    TransactionError::ObjectStore { .. }
                    | TransactionError::LogStoreError { .. } => None,
                    _ => Some(false),
                };
            }
            _ => {}
        }
    } else if let Some(o) = e.downcast_ref::<object_store::Error>() {
        match o {
            object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. } => return Some(false),
            _ => {}
        }
    } else if e.downcast_ref::<arrow::error::ArrowError>().is_some()
        && e.source().is_none()
        && !looks_transient(&e.to_string())
    {
        // A schema or data error of Arrow itself.
        return Some(false);
    }
    looks_transient(&e.to_string()).then_some(true)
}

fn classify_io(io: &io::Error) -> Option<bool> {
    use io::ErrorKind as K;
    if tidemark_fs::is_disk_full(io) {
        return Some(false);
    }
    if let Some(code) = io.raw_os_error() {
        if [
            libc::EMFILE,
            libc::ENFILE,
            libc::EAGAIN,
            libc::EINTR,
            libc::ETIMEDOUT,
            libc::ECONNRESET,
        ]
        .contains(&code)
        {
            return Some(true);
        }
    }
    match io.kind() {
        K::TimedOut
        | K::Interrupted
        | K::WouldBlock
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::ConnectionRefused
        | K::NotConnected
        | K::BrokenPipe => Some(true),
        K::NotFound
        | K::PermissionDenied
        | K::AlreadyExists
        | K::InvalidInput
        | K::InvalidData
        | K::Unsupported => Some(false),
        _ if looks_transient(&io.to_string()) => Some(true),
        // An io::Error wrapping another error (io::Error::other): judge the inner one.
        _ => None,
    }
}

/// Messages of transient failures that reach us only as text (HTTP clients, object stores).
fn looks_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "connection reset",
        "connection closed",
        "connection refused",
        "broken pipe",
        "too many open files",
        "service unavailable",
        "internal server error",
        "bad gateway",
        "gateway timeout",
        "too many requests",
        "slowdown",
        "slow down",
        "throttl",
        "temporarily unavailable",
        "status code: 5",
        "status: 5",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// The id of one run of a writer: 8 hex digits chosen at process start. It goes into data file
/// names (so two writers never write the same file) and into each commit's commitInfo (so a
/// writer can tell its own commit from another writer's after an ambiguous error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(u32);

impl RunId {
    /// A new random run id.
    pub fn generate() -> Self {
        use std::hash::{BuildHasher, Hasher};
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // RandomState is seeded from the OS's randomness once per process; the clock, pid and
        // a counter make each call differ.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let x = h.finish();
        Self((x ^ (x >> 32)) as u32)
    }

    /// This process's run id: chosen at its first use, the same for every later call.
    pub fn for_process() -> Self {
        static ID: OnceLock<RunId> = OnceLock::new();
        *ID.get_or_init(RunId::generate)
    }

    /// The run id with these 32 bits (tests, and ids read back from a state directory).
    pub const fn from_u32(bits: u32) -> Self {
        Self(bits)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl std::str::FromStr for RunId {
    type Err = String;

    /// Exactly 8 lowercase hex digits, as [`RunId`]'s `Display` writes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 8
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            u32::from_str_radix(s, 16)
                .map(RunId)
                .map_err(|e| format!("run id {s:?}: {e}"))
        } else {
            Err(format!("run id {s:?} is not 8 lowercase hex digits"))
        }
    }
}

impl TryFrom<String> for RunId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RunId> for String {
    fn from(r: RunId) -> Self {
        r.to_string()
    }
}

/// How a [`DeltaSink`] does its I/O and who it is: the file system its local writes go through
/// (the real one by default; tests inject faults or power cuts) and its [`RunId`].
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The file system for `file://` tables (ignored for other schemes).
    pub fs: SharedFs,
    /// This writer's run id (default: [`RunId::for_process`]).
    pub run_id: RunId,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            fs: tidemark_fs::std_fs(),
            run_id: RunId::for_process(),
        }
    }
}

/// A record skipped as invalid, as recorded durably in the commit that covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Reason category (`malformed_json`, `schema_mismatch`, `missing_payload`).
    pub reason: String,
}

/// What each Tidemark commit records in its commitInfo under [`COMMIT_INFO_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCommitInfo {
    /// The pipeline that wrote the commit (also the txn appId).
    pub pipeline_id: String,
    /// The epoch the commit holds (also the txn version).
    pub epoch: Epoch,
    /// Positions at the start of the epoch.
    pub start_positions: Positions,
    /// Positions at the end of the epoch: where the next epoch starts.
    pub end_positions: Positions,
    /// Records read in the epoch.
    pub records_read: u64,
    /// Rows written to the table in the epoch.
    pub rows_written: u64,
    /// Records skipped as invalid in the epoch (also listed in `skipped`).
    pub records_skipped: u64,
    /// The skipped records, each by its coordinates.
    #[serde(default)]
    pub skipped: Vec<SkippedRecord>,
    /// Duplicates dropped in the epoch.
    #[serde(default)]
    pub duplicates: u64,
    /// Of `duplicates`, those whose key a worker of a shared pipeline had accepted from
    /// another partition: the producer does not partition by the dedup key (0 for one process;
    /// omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cross_partition_duplicates: u64,
    /// Late records in the epoch (dropped or dead-lettered).
    #[serde(default)]
    pub late: u64,
    /// Records dead-lettered in the epoch for other reasons than lateness.
    #[serde(default)]
    pub dead_lettered: u64,
    /// The event-time watermark (micros) after the epoch, if dedup is on.
    #[serde(default)]
    pub watermark: Option<i64>,
    /// The run that wrote the commit (`None` in commits older than run ids). Set by the sink
    /// at commit time from its [`SinkOptions::run_id`], whatever the caller put here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// The broker's id of each topic the positions are in (topic name -> id, as the Kafka
    /// source reports it): a topic deleted and recreated under the same name gets a new id,
    /// and its positions here no longer mean anything. Empty in commits older than topic ids
    /// and when the broker does not report ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topic_ids: BTreeMap<String, String>,
    /// The Kafka cluster the positions belong to (the broker's cluster id): offsets mean
    /// something only on that cluster. `None` in commits older than cluster ids and when the
    /// broker reports none. Set by the sink at commit time from [`DeltaSink::set_cluster_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Per partition read so far: cluster, topic (name and id), partition, next offset and the
    /// Kafka timestamp of the last committed record (what a failover to a mirrored cluster
    /// starts from: offsets differ there, timestamps do not). Empty in older commits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionPosition>,
    /// The generation of the writer (see [`GENERATION_KEY`]); `None` in commits older than
    /// generations. Set by the sink at commit time from [`DeltaSink::set_generation`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Rows of a table's files, streamed one batch at a time ([`DeltaSink::read_columns`]).
pub type RowBatches = BoxStream<'static, Result<RecordBatch, DeltaSinkError>>;

/// One partition's position as a commitInfo records it (see [`EpochCommitInfo::partitions`]).
///
/// Wire shape (JSON, inside the `tidemark` commitInfo object, key `partitions`):
/// `{"cluster_id": "abc", "topic": "orders", "topic_id": "Zx..", "partition": 0,
///   "next_offset": 1234, "last_timestamp_ms": 1764500000000, "dedup_floor": 1764499940000000}`;
/// `cluster_id`, `topic_id`, `last_timestamp_ms` and `dedup_floor` are omitted when unknown
/// (a broker without ids, a partition with no
/// record yet, a record without a timestamp). Readers ignore fields they do not know, and a
/// commitInfo without `partitions` reads as an empty list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    /// The Kafka cluster id the offset belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Topic name.
    pub topic: String,
    /// The topic's id on that cluster, when the broker reports ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partition number.
    pub partition: i32,
    /// The next offset to read (the last committed record's offset + 1).
    pub next_offset: i64,
    /// The Kafka timestamp (ms) of the last record committed from this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp_ms: Option<i64>,
    /// A worker of a shared pipeline with dedup: the lowest event time (µs) its dedup state
    /// keeps for this partition after the commit (the watermark, or the floor the worker
    /// started the partition with, whichever is higher). The partition's next owner rebuilds
    /// its state from the table's rows at or above it. Omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_floor: Option<i64>,
}

/// The table property (Delta `metaData.configuration`) holding the table's *generation*: 1
/// (or absent) for a table no failover has opened; each `tidemark failover` into the table
/// commits `metaData` with the next number before its first epoch. A writer whose own
/// generation is older than the table's can never commit into it ([`Fenced`]).
pub const GENERATION_KEY: &str = "tidemark.generation";

/// The commitInfo key of the commit that opens a generation (its value: [`GenerationOpened`]).
pub const GENERATION_COMMIT_KEY: &str = "tidemark_generation";

/// What the commit opening a generation records in its commitInfo under
/// [`GENERATION_COMMIT_KEY`] (with the new [`GENERATION_KEY`] in its `metaData`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationOpened {
    /// The pipeline that opened it.
    pub pipeline_id: String,
    /// The new generation.
    pub generation: u64,
    /// The one before it.
    pub previous: u64,
    /// Why: `failover` (or `failback`).
    pub reason: String,
    /// The Kafka cluster the new generation reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Wall clock (ms since the epoch) when it was opened.
    pub opened_at_ms: u64,
}

/// A commit refused because the table belongs to a newer generation than the writer: a
/// failover opened it elsewhere, and this writer (the old primary) must never write again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FENCED: table {table} is at generation {table_generation} (a failover opened it) but this writer is generation {writer_generation}; an older generation never commits into a newer one. This pipeline was failed over: stop it, and move back with the failback sequence (see README, Regional failover)")]
pub struct Fenced {
    /// The table.
    pub table: String,
    /// The table's generation.
    pub table_generation: u64,
    /// The writer's.
    pub writer_generation: u64,
}

/// The generation a table's `metaData.configuration` records (1 when absent or unreadable as
/// a number: a table no failover opened).
pub fn generation_of(configuration: &std::collections::HashMap<String, String>) -> u64 {
    configuration
        .get(GENERATION_KEY)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
}

/// The outcome of [`DeltaSink::commit_epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The commit landed at this table version (possibly found so after an error: see
    /// [`DeltaSink::commit_epoch`]).
    Committed {
        /// The new table version.
        version: TableVersion,
    },
    /// The table already held this epoch (txn version `>= epoch`), written by another run:
    /// nothing was written.
    AlreadyCommitted {
        /// The table's txn version for the pipeline.
        txn_version: Epoch,
    },
}

/// The newest Tidemark commit found in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProgress {
    /// The table version of that commit.
    pub table_version: TableVersion,
    /// What it recorded.
    pub info: EpochCommitInfo,
}

/// Metrics of one epoch's Parquet write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteMetrics {
    /// Parquet files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
    /// Wall time of the write and fsyncs, in microseconds.
    pub micros: u64,
}

/// What [`DeltaSink::sweep_uncommitted_files`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Files deleted: this pipeline's files of the caller's runs (or without a run id) that
    /// no commit can reference, and temporary uploads of those runs.
    pub deleted: Vec<String>,
    /// This pipeline's files of other runs that the table does not reference, left in place:
    /// a live writer may still commit them. For `status` and a later vacuum.
    pub foreign: Vec<String>,
    /// Temporary files removed from `_delta_log/`: left by Tidemark writes (a checkpoint) whose
    /// process died (see [`DeltaSink::sweep_log_temporaries`]).
    pub log_temporaries: Vec<String>,
}

/// The parts of a data file name (see [`data_file_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFileName {
    /// The epoch whose rows it holds.
    pub epoch: Epoch,
    /// Its part number within the epoch.
    pub part: usize,
    /// The run that wrote it (`None`: a name from before run ids).
    pub run: Option<RunId>,
    /// A temporary upload (never referenced by a commit), not the final file.
    pub temporary: bool,
}

/// The Delta sink: see the module documentation.
pub struct DeltaSink {
    table: DeltaTable,
    uri: String,
    app_id: String,
    /// The table's directory for `file://` tables.
    local_root: Option<PathBuf>,
    /// An object-store table whose store has not yet been checked to refuse a second
    /// put-if-absent ([`verify_put_if_absent`]). Invariant: `None` before any commit through
    /// this sink — a writer checks at open (the pipeline: refused at start), a sink opened only
    /// to look (`status`, audits) checks before its first commit, so looking writes nothing.
    unchecked_store: Option<TableStore>,
    fs: SharedFs,
    run_id: RunId,
    arrow_schema: SchemaRef,
    /// The topic ids the next commits record (see [`DeltaSink::set_topic_ids`]).
    topic_ids: BTreeMap<String, String>,
    /// The newest epoch this sink committed itself: the table's txn version must never be
    /// found below it (a `tidemark restore` under the running pipeline), see [`TableWentBack`].
    newest_own: Option<Epoch>,
    /// The cluster id the next commits record (see [`DeltaSink::set_cluster_id`]).
    cluster_id: Option<String>,
    /// This writer's generation: commits are refused ([`Fenced`]) once the table's is newer.
    /// `None`: not checked (tools that only read).
    generation: Option<u64>,
    /// The commits this sink landed on top of what it knows of the table (see
    /// [`OwnTail`]): the next commit tries first without re-reading the log. `None` after a
    /// refresh, a failed or lost try, or at open.
    own_tail: Option<OwnTail>,
    /// The pipeline whose per-partition claims every commit writes and checks (a worker of a
    /// pipeline shared by several, see [`crate::partition_claims`]); `None`: no claims.
    claims: Option<String>,
    /// Whether a commit of this sink has landed since [`DeltaSink::claim_partitions`]: the
    /// first one claims every partition it holds a position for (see
    /// [`partition_claims::claimed_ranges`]), later ones only the partitions they read.
    claims_adopted: bool,
    /// The table's claim (`None`: no claim) of each partition covered by this sink's last
    /// commit that re-read the table, as checked then, and by its own commits since (each
    /// sets the claims of the partitions it covers). A commit through the [`OwnTail`] does not
    /// re-read the table, so it is checked against these instead: exact, because the tail's
    /// put-if-absent fails if any other writer committed since. A partition not here (the
    /// sink forgets the others at each re-read: another worker may have taken them) takes the
    /// path that re-reads the table.
    claims_known: BTreeMap<TopicPartition, Option<i64>>,
    /// Commit tries that lost the race to another writer's commit (and were tried again).
    lost_races: u64,
}

/// What a sink knows of its table after its own commits, without having re-read the log: the
/// newest version is `version` (this sink's own commit) and the txn version `txn`; the state
/// loaded from the log is older by `unread` of this sink's own commits (blind appends: they
/// change neither the protocol, nor the metadata, nor anything the next append depends on).
///
/// Why: re-reading the table before every commit (and deltalake's own latest-version check
/// and post-commit state update) lists `_delta_log/`, whose size grows with the history the
/// log retention keeps (30 days by default): per-commit work would grow with the table's
/// history. With the tail, an epoch commit is one put-if-absent of `version + 1`.
///
/// Invariant (fencing is unchanged): a commit through the tail is written put-if-absent at
/// exactly `version + 1`. If any other writer committed since (another pipeline, a
/// compaction, a restore, a failover's generation), that version exists, the try fails, the
/// tail is dropped, and the table is re-read and checked as for any commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnTail {
    version: u64,
    txn: Epoch,
    unread: u64,
}

/// Most commits through an [`OwnTail`] before the state is re-read from the log anyway (the
/// log replay a re-read costs grows with them; a Delta checkpoint re-reads it before).
const MAX_UNREAD_OWN_COMMITS: u64 = 100;

/// The table's txn version for the pipeline went back below an epoch this process committed:
/// the table was restored under the running pipeline. Committing on would lose the records
/// restored away (they are never re-read), so the pipeline stops; a restart refuses until it
/// is started with `--rewind-to`, which re-reads them.
#[derive(Debug, thiserror::Error)]
#[error("the table's txn version for this pipeline went back to {txn} although this process committed epoch {own} (the table was restored under the running pipeline): stopping; restart with `tidemark run --rewind-to <epoch>` (see `tidemark status`) to re-read what was restored away")]
pub struct TableWentBack {
    /// The newest epoch this process committed.
    pub own: Epoch,
    /// The txn version found.
    pub txn: Epoch,
}

/// The table URL for a table given as a URL (`file:///...`, `s3://...`), an absolute path or a
/// path relative to the working directory.
pub fn table_url(uri: &str) -> Result<Url, DeltaSinkError> {
    let err = |source: Box<dyn StdError + Send + Sync>| DeltaSinkError {
        op: "parse table location",
        table: uri.to_string(),
        file: None,
        source,
    };
    // One-letter "schemes" are Windows drive letters: paths.
    if let Ok(url) = Url::parse(uri) {
        if url.scheme().len() > 1 {
            return Ok(url);
        }
    }
    let path = std::path::absolute(uri).map_err(|e| err(Box::new(e)))?;
    let url = Url::from_directory_path(&path)
        .map_err(|()| err(format!("{} is not a usable path", path.display()).into()))?;
    // Parsing the URL's text resolves `..` segments of a relative path.
    Url::parse(url.as_str()).map_err(|e| err(Box::new(e)))
}

impl DeltaSink {
    /// Opens the table at `url`, creating it with `columns` when it does not exist yet, with
    /// the file system and run id of `options`. An existing table keeps its own schema
    /// (`columns` are then only checked by the caller).
    pub async fn open_or_create_with(
        url: &Url,
        app_id: &str,
        table_name: &str,
        columns: Vec<StructField>,
        options: SinkOptions,
    ) -> Result<Self, DeltaSinkError> {
        Self::open(url, app_id, Some((table_name, columns)), options)
            .await?
            .ok_or_else(|| DeltaSinkError {
                op: "create",
                table: url.to_string(),
                file: None,
                source: "the table does not exist after creating it".into(),
            })
    }

    /// Opens the table at `url` if it exists (`None` if not), never creating it: for tools
    /// that only look.
    pub async fn open_existing(url: &Url, app_id: &str) -> Result<Option<Self>, DeltaSinkError> {
        Self::open_existing_with(url, app_id, SinkOptions::default()).await
    }

    /// [`DeltaSink::open_existing`] with explicit [`SinkOptions`].
    pub async fn open_existing_with(
        url: &Url,
        app_id: &str,
        options: SinkOptions,
    ) -> Result<Option<Self>, DeltaSinkError> {
        if url.scheme() == "file"
            && url
                .to_file_path()
                .is_ok_and(|p| !p.join("_delta_log").exists())
        {
            return Ok(None);
        }
        Self::open(url, app_id, None, options).await
    }

    async fn open(
        url: &Url,
        app_id: &str,
        create: Option<(&str, Vec<StructField>)>,
        options: SinkOptions,
    ) -> Result<Option<Self>, DeltaSinkError> {
        let uri = url.to_string();
        let local_root = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
        let SinkOptions { fs, run_id } = options;
        if let (Some(root), Some(_)) = (&local_root, &create) {
            if !fs.exists(root) {
                fs.create_dir_all(root)
                    .map_err(sink_err("create table directory", &uri))?;
                fs.sync_dir(&tidemark_fs::parent_dir(root))
                    .map_err(sink_err("fsync the table directory's parent", &uri))?;
            }
        }
        // Object stores: Tidemark's own client (conditional writes, retries), checked to refuse a
        // second put-if-absent before anything is committed through it: at once by a writer
        // (which may create the table), before the first commit by a sink opened to look.
        let remote = match local_root {
            Some(_) => None,
            None => {
                let opened =
                    TableStore::open(url, fs.clone()).map_err(sink_err("open the store", &uri))?;
                if create.is_some() {
                    verify_put_if_absent(&opened)
                        .await
                        .map_err(sink_err("check conditional writes", &uri))?;
                }
                Some(opened)
            }
        };
        let unchecked_store = remote.clone().filter(|_| create.is_none());
        let load = || async {
            let mut builder =
                DeltaTableBuilder::from_url(url.clone()).map_err(sink_err("open", &uri))?;
            if local_root.is_some() {
                let store: Arc<dyn object_store::ObjectStore> =
                    Arc::new(DurableLocalStore::new(fs.clone()));
                builder = builder.with_storage_backend(store, url.clone());
            } else if let Some(opened) = &remote {
                builder = builder.with_storage_backend(opened.store().clone(), url.clone());
            }
            let mut table = builder.build().map_err(sink_err("open", &uri))?;
            match table.load().await {
                Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
                Err(e) => Err(sink_err("open", &uri)(e)),
            }
        };
        let mut table = load().await?;
        if table.version().is_none() {
            let Some((table_name, columns)) = create else {
                return Ok(None);
            };
            info!(table = %uri, columns = columns.len(), "creating delta table");
            // The create commit goes through the table's store: durable before this returns.
            // Retries off: a create that loses the race to another writer's must fail, not land
            // a second create commit at the next version.
            table = match table
                .create()
                .with_table_name(table_name)
                .with_columns(columns)
                .with_commit_properties(CommitProperties::default().with_max_retries(0))
                .await
            {
                Ok(created) => created,
                Err(e) => {
                    // Another writer may have created it between our load and our create (two
                    // instances starting together): its create commit is the table's version 0.
                    let again = load().await?;
                    if again.version().is_none() {
                        return Err(sink_err("create", &uri)(e));
                    }
                    info!(table = %uri, "the table exists now (created by another writer meanwhile, or by this create whose answer was lost); using it");
                    again
                }
            };
        }
        let arrow_schema = RecordBatchWriter::for_table(&table)
            .map_err(sink_err("read schema", &uri))?
            .arrow_schema();
        Ok(Some(Self {
            table,
            uri,
            app_id: app_id.to_string(),
            claims: None,
            claims_adopted: false,
            claims_known: BTreeMap::new(),
            lost_races: 0,
            local_root,
            unchecked_store,
            fs,
            run_id,
            arrow_schema,
            topic_ids: BTreeMap::new(),
            newest_own: None,
            cluster_id: None,
            generation: None,
            own_tail: None,
        }))
    }

    /// The table's schema as Arrow.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow_schema
    }

    /// The table's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// This writer's run id (in its file names and commitInfos).
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The table's newest version as far as this sink knows: the one loaded, or this sink's
    /// own newest commit after it.
    pub fn table_version(&self) -> Option<u64> {
        self.own_tail.map(|t| t.version).or(self.table.version())
    }

    fn err<E: std::error::Error + Send + Sync + 'static>(
        &self,
        op: &'static str,
    ) -> impl FnOnce(E) -> DeltaSinkError + '_ {
        sink_err(op, &self.uri)
    }

    fn file_err<E: std::error::Error + Send + Sync + 'static>(
        &self,
        op: &'static str,
        file: &str,
    ) -> impl FnOnce(E) -> DeltaSinkError {
        let (table, file) = (self.uri.clone(), file.to_string());
        move |e| DeltaSinkError {
            op,
            table,
            file: Some(file),
            source: Box::new(e),
        }
    }

    /// Reloads the newest table state (other writers, or our own earlier process, may have
    /// committed since).
    pub async fn refresh(&mut self) -> Result<(), DeltaSinkError> {
        self.own_tail = None;
        self.table
            .update_state()
            .await
            .map_err(sink_err("refresh", &self.uri))
    }

    /// The table's txn version for this pipeline: the newest epoch committed, if any.
    pub async fn txn_version(&mut self) -> Result<Option<Epoch>, DeltaSinkError> {
        self.refresh().await?;
        self.loaded_txn_version().await
    }

    /// The txn version in the state as last loaded (no refresh).
    async fn loaded_txn_version(&self) -> Result<Option<Epoch>, DeltaSinkError> {
        self.txn_version_of(&self.app_id).await
    }

    /// The txn version of `app_id` (another pipeline, a worker of a shared one) in the state
    /// as last loaded: one table load answers for every writer of it.
    pub async fn txn_version_of(&self, app_id: &str) -> Result<Option<Epoch>, DeltaSinkError> {
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map(|v| v.map(Epoch::from_txn))
            .map_err(self.err("read txn version"))
    }

    /// Commit tries this sink lost to another writer's commit and tried again: the cost of
    /// sharing one table (workers of one pipeline, other pipelines, maintenance jobs).
    pub fn lost_races(&self) -> u64 {
        self.lost_races
    }

    /// Makes every commit of this sink claim the partitions it covers for `pipeline`, and
    /// refuse ([`PartitionTaken`]) where another writer claimed one since (a worker of a
    /// pipeline shared by several; see [`crate::partition_claims`]).
    pub fn claim_partitions(&mut self, pipeline: &str) {
        self.claims = Some(pipeline.to_string());
        self.claims_adopted = false;
        self.claims_known.clear();
        // The next commit re-reads the table whatever the caller did before.
        self.own_tail = None;
    }

    /// The claims of `partitions` in the state as last loaded (`None`: no claim).
    async fn loaded_claims<'a>(
        &self,
        pipeline: &str,
        partitions: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, DeltaSinkError> {
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        let mut claims = BTreeMap::new();
        for tp in partitions {
            let claim = snapshot
                .transaction_version(self.table.log_store().as_ref(), claim_app_id(pipeline, tp))
                .await
                .map_err(self.err("read partition claim"))?;
            claims.insert(tp.clone(), claim);
        }
        Ok(claims)
    }

    /// Where each of `partitions` stands in the table for `pipeline`, from the newest state:
    /// the next offset its newest claim recorded (absent: never committed by any worker).
    pub async fn partition_claims(
        &mut self,
        pipeline: &str,
        partitions: &std::collections::BTreeSet<TopicPartition>,
    ) -> Result<Positions, DeltaSinkError> {
        self.refresh().await?;
        let mut positions = Positions::new();
        for (tp, claim) in self.loaded_claims(pipeline, partitions).await? {
            if let Some(next) = claim {
                positions.set(&tp.topic, tp.partition, next);
            }
        }
        Ok(positions)
    }

    /// Refuses `info` when a partition it covers was claimed by another writer since its
    /// start (checked on the state as last loaded: the commit lands right after it or not).
    /// `claims_known` becomes the claims read for that check (those of the partitions `info`
    /// covers): what the sink knew of other partitions may be stale after a re-read.
    async fn check_claims(&mut self, info: &EpochCommitInfo) -> Result<(), DeltaSinkError> {
        let Some(pipeline) = self.claims.clone() else {
            return Ok(());
        };
        let ranges = partition_claims::claimed_ranges(info, !self.claims_adopted);
        self.claims_known = self
            .loaded_claims(&pipeline, ranges.iter().map(|r| &r.partition))
            .await?;
        partition_claims::check(&ranges, &self.claims_known).map_err(|taken| DeltaSinkError {
            op: "commit",
            table: self.uri.clone(),
            file: None,
            source: Box::new(taken),
        })
    }

    /// Where the pipeline stands in the table, from ONE load of the newest state: its txn
    /// version and its newest commit with what that commit recorded in commitInfo.
    pub async fn progress(
        &mut self,
    ) -> Result<(Option<Epoch>, Option<TableProgress>), DeltaSinkError> {
        self.refresh().await?;
        Ok((
            self.loaded_txn_version().await?,
            self.loaded_last_progress().await?,
        ))
    }

    /// Every commit of this pipeline the table's log holds (state as last loaded): what the
    /// running totals are rebuilt from when no checkpoint has them.
    pub async fn pipeline_commits(&self) -> Result<Vec<EpochCommitInfo>, DeltaSinkError> {
        let (_, ours) = self.pipeline_history(None).await?;
        Ok(ours.into_iter().map(|(_, info)| info).collect())
    }

    /// Where each partition of the shared pipeline `pipeline` stands (its `txn` claim in the
    /// state as last loaded) and which worker wrote it: the partitions the workers' commits
    /// among the newest `limit` recorded positions for.
    pub async fn claim_holders(
        &self,
        pipeline: &str,
        limit: usize,
    ) -> Result<Vec<partition_claims::ClaimHolder>, DeltaSinkError> {
        let latest = self.table.version().unwrap_or(0);
        let (_, commits) = self.tidemark_history(Some(limit)).await?;
        let commits: Vec<_> = commits
            .into_iter()
            .map(|(i, info)| (latest.saturating_sub(i as u64), info))
            .collect();
        let partitions =
            partition_claims::partitions_of_workers(pipeline, commits.iter().map(|(_, c)| c));
        let claims = self.loaded_claims(pipeline, partitions.iter()).await?;
        Ok(partition_claims::holders(
            pipeline,
            &claims,
            commits.iter().map(|(v, c)| (*v, c)),
        ))
    }

    /// Per partition of `claims` (claims of `pipeline`'s workers), the dedup floor the commit
    /// that wrote the claim recorded ([`partition_claims::dedup_floors`]), looked for among the
    /// newest `limit` commits (all when `None`); a partition whose claim was written earlier
    /// (or in a commit log cleanup removed) is absent.
    pub async fn claim_dedup_floors(
        &self,
        pipeline: &str,
        claims: &Positions,
        limit: Option<usize>,
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, DeltaSinkError> {
        let (_, commits) = self.tidemark_history(limit).await?;
        Ok(partition_claims::dedup_floors(
            pipeline,
            claims,
            commits.iter().map(|(_, info)| info),
        ))
    }

    /// This pipeline's commitInfos among the newest `limit` commits (all when `None`), newest
    /// first, each with its index in that listing (index i is version `latest - i`); also how
    /// many commits were listed.
    async fn pipeline_history(
        &self,
        limit: Option<usize>,
    ) -> Result<(usize, Vec<(usize, EpochCommitInfo)>), DeltaSinkError> {
        let (listed, mut commits) = self.tidemark_history(limit).await?;
        commits.retain(|(_, info)| info.pipeline_id == self.app_id);
        Ok((listed, commits))
    }

    /// Every Tidemark commitInfo (of any pipeline) among the newest `limit` commits (all when
    /// `None`), newest first, each with its index in that listing (index i is version
    /// `latest - i`); also how many commits were listed.
    async fn tidemark_history(
        &self,
        limit: Option<usize>,
    ) -> Result<(usize, Vec<(usize, EpochCommitInfo)>), DeltaSinkError> {
        let infos: Vec<_> = self
            .table
            .history(limit)
            .try_collect()
            .await
            .map_err(self.err("read history"))?;
        let mut commits = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let Some(value) = info.info.get(COMMIT_INFO_KEY) else {
                continue;
            };
            let parsed: EpochCommitInfo = serde_json::from_value(value.clone())
                .map_err(self.err("parse tidemark commitInfo"))?;
            commits.push((i, parsed));
        }
        Ok((infos.len(), commits))
    }

    /// The topic ids the engine puts in the next commits' [`EpochCommitInfo::topic_ids`].
    pub fn topic_ids(&self) -> &BTreeMap<String, String> {
        &self.topic_ids
    }

    /// Sets what [`DeltaSink::topic_ids`] returns: at start the ids the table recorded
    /// ([`DeltaSink::recorded_topic_ids`]), once the source has connected the ids it vouches for.
    pub fn set_topic_ids(&mut self, ids: BTreeMap<String, String>) {
        self.topic_ids = ids;
    }

    /// The `timestamp` (ms) the commitInfo of table version `version` records, if it has one.
    pub async fn commit_timestamp(&self, version: u64) -> Result<Option<i64>, DeltaSinkError> {
        let Some(bytes) = self
            .table
            .log_store()
            .read_commit_entry(version)
            .await
            .map_err(self.err("read commit"))?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("commitInfo")?.get("timestamp")?.as_i64()))
    }

    /// The Kafka cluster id the next commits record with their positions.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Sets what [`DeltaSink::cluster_id`] returns (at start the table's, once the source has
    /// connected the broker's).
    pub fn set_cluster_id(&mut self, id: Option<String>) {
        self.cluster_id = id;
    }

    /// This writer's generation, if it is enforced.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// Sets this writer's generation: from now on every commit first checks that the table's
    /// generation is not newer ([`Fenced`]), and records it in its commitInfo.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = Some(generation);
    }

    /// The table's generation in the state as last loaded ([`GENERATION_KEY`]; 1 when unset).
    pub fn table_generation(&self) -> Result<u64, DeltaSinkError> {
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        Ok(generation_of(snapshot.metadata().configuration()))
    }

    /// Opens generation `opened.generation` in the table: ONE commit of the table's `metaData`
    /// with [`GENERATION_KEY`] set, and `opened` in its commitInfo. Fenced itself: refused
    /// when the table is already at that generation or newer. Returns the commit's version.
    pub async fn open_generation(
        &mut self,
        opened: &GenerationOpened,
    ) -> Result<TableVersion, DeltaSinkError> {
        use deltalake::kernel::MetadataExt;
        self.ensure_conditional_writes().await?;
        self.refresh().await?;
        let current = self.table_generation()?;
        if current >= opened.generation {
            return Err(sink_err("open a generation", &self.uri)(Fenced {
                table: self.uri.clone(),
                table_generation: current,
                writer_generation: opened.generation,
            }));
        }
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        let metadata = snapshot
            .metadata()
            .clone()
            .add_config_key(GENERATION_KEY.to_string(), opened.generation.to_string())
            .map_err(self.err("set the generation property"))?;
        let note = serde_json::to_value(opened).map_err(self.err("encode commitInfo"))?;
        let properties = CommitProperties::default()
            .with_metadata([(GENERATION_COMMIT_KEY.to_string(), note)])
            .with_max_retries(0);
        let operation = DeltaOperation::SetTableProperties {
            properties: [(GENERATION_KEY.to_string(), opened.generation.to_string())]
                .into_iter()
                .collect(),
        };
        let finalized = CommitBuilder::from(properties)
            .with_actions(vec![Action::Metadata(metadata)])
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(self.err("commit the new generation"))?;
        let version = finalized.version();
        self.ensure_commit_durable(version)?;
        self.refresh().await?;
        self.generation = Some(opened.generation);
        info!(table = %self.uri, generation = opened.generation, version, "generation opened");
        Ok(TableVersion::new(version))
    }

    /// The topic ids recorded by this pipeline's newest commit that records any (state as
    /// last loaded; empty when no commit does: a new table, or commits older than topic ids).
    /// Commits whose ids were unknown (a broker without ids) are skipped, so the last ids
    /// seen are kept.
    pub async fn recorded_topic_ids(&self) -> Result<BTreeMap<String, String>, DeltaSinkError> {
        if self.table.version().is_none() {
            return Ok(BTreeMap::new());
        }
        for limit in [Some(16usize), None] {
            let (listed, ours) = self.pipeline_history(limit).await?;
            if let Some((_, info)) = ours.into_iter().find(|(_, i)| !i.topic_ids.is_empty()) {
                return Ok(info.topic_ids);
            }
            if limit.is_some_and(|l| listed < l) {
                break;
            }
        }
        Ok(BTreeMap::new())
    }

    /// The newest commit of this pipeline in the state as last loaded (no refresh).
    async fn loaded_last_progress(&self) -> Result<Option<TableProgress>, DeltaSinkError> {
        let Some(latest) = self.table.version() else {
            return Ok(None);
        };
        // Most of the time the newest commit is ours; look further back only when it is not.
        for limit in [Some(16usize), None] {
            let (listed, ours) = self.pipeline_history(limit).await?;
            if let Some((i, info)) = ours.into_iter().next() {
                return Ok(Some(TableProgress {
                    table_version: TableVersion::new(latest - i as u64),
                    info,
                }));
            }
            if limit.is_some_and(|l| listed < l) {
                break;
            }
        }
        Ok(None)
    }

    /// Writes an epoch's rows as Parquet files (durable on local storage) and returns their
    /// `add` actions; nothing is visible in the table until [`DeltaSink::commit_epoch`].
    ///
    /// File names are a pure function of (pipeline, epoch, part, run): a retried epoch of the
    /// same run rewrites the same files instead of leaving the first attempt's behind, another
    /// writer never writes them, and [`DeltaSink::sweep_uncommitted_files`] can find files of
    /// epochs the table does not hold. Each file is written whole (temporary file, then
    /// rename), so a crash or a full disk never leaves a partial file under a final name.
    pub async fn write_epoch_files(
        &mut self,
        epoch: Epoch,
        batches: &[RecordBatch],
    ) -> Result<(Vec<Add>, WriteMetrics), DeltaSinkError> {
        self.write_epoch_parts(epoch, 0, batches).await
    }

    /// [`DeltaSink::write_epoch_files`] numbering the files from `first_part`: for rows added
    /// to an epoch the table already holds files of (see [`DeltaSink::next_free_part`]).
    pub async fn write_epoch_parts(
        &mut self,
        epoch: Epoch,
        first_part: usize,
        batches: &[RecordBatch],
    ) -> Result<(Vec<Add>, WriteMetrics), DeltaSinkError> {
        let started = Instant::now();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok((Vec::new(), WriteMetrics::default()));
        }
        // Encoding is CPU work: it runs on a blocking thread, so the pipeline's task (reading
        // and decoding the next epoch meanwhile) keeps its core. The epoch's batches are
        // encoded as they are (sliced at file boundaries), never copied into one batch: at a
        // long interval that copy was as big as the epoch.
        let (schema, owned) = (self.arrow_schema.clone(), batches.to_vec());
        let files = tokio::task::spawn_blocking(move || {
            crate::epoch_encoder::encode_files(schema, MAX_ROWS_PER_FILE, owned)
        })
        .await
        .map_err(self.err("encode parquet"))?
        .map_err(self.err("encode parquet"))?;
        self.upload_files(epoch, first_part, &files, started).await
    }

    /// Writes an epoch's files encoded while it was read ([`crate::epoch_encoder`]) under
    /// their names (parts from 0), as [`DeltaSink::write_epoch_files`] does for its batches.
    pub async fn write_encoded_files(
        &mut self,
        epoch: Epoch,
        files: &[crate::epoch_encoder::EncodedFile],
    ) -> Result<(Vec<Add>, WriteMetrics), DeltaSinkError> {
        self.upload_files(epoch, 0, files, Instant::now()).await
    }

    /// Uploads `files` as parts `first_part..` of `epoch`, with their `add` actions.
    async fn upload_files(
        &mut self,
        epoch: Epoch,
        first_part: usize,
        files: &[crate::epoch_encoder::EncodedFile],
        started: Instant,
    ) -> Result<(Vec<Add>, WriteMetrics), DeltaSinkError> {
        let store = self.table.object_store();
        let mut adds = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let name = data_file_name(&self.app_id, epoch, first_part + i, self.run_id);
            let size = file.bytes.len() as i64;
            // On a local table the store makes the file and its name durable before returning.
            let remote = self.local_root.is_none();
            upload_whole(
                &store,
                &deltalake::Path::from(name.as_str()),
                file.bytes.clone(),
                remote,
            )
            .await
            .map_err(self.file_err("write parquet file", &name))?;
            adds.push(parquet_file::add_action_with_stats(
                name,
                size,
                file.stats.clone(),
            ));
        }
        let metrics = WriteMetrics {
            files: adds.len(),
            bytes: adds.iter().map(|a| a.size.max(0) as u64).sum(),
            rows: files.iter().map(|f| f.rows as u64).sum(),
            micros: started.elapsed().as_micros() as u64,
        };
        Ok((adds, metrics))
    }

    /// The start-up sweep: deletes this pipeline's files that no commit can reference and no
    /// live writer may still commit, and lists those it must leave.
    ///
    /// `own_runs` are the runs the caller owns (recorded in its exclusively locked state
    /// directory); this sink's own run counts as owned too. Deleted: files of owned runs or
    /// without a run id (names from before run ids) of epochs above `committed_epoch` (the
    /// table's txn version), and temporary uploads of owned runs — unless the table references
    /// them. Left and listed in [`SweepReport::foreign`]: files of other runs the table does
    /// not reference (a live writer may still commit them; a vacuum removes them later).
    ///
    /// Invariant: a file is deleted only if it was written by a run that cannot be running
    /// (the caller's own, or an old-format writer, as before run ids), and no commit in the
    /// log adds it (a file a `tidemark restore` removed stays: older versions and a later
    /// restore need it; only a vacuum deletes it).
    ///
    /// It also removes the temporary files dead Tidemark writers left in `_delta_log/`
    /// ([`DeltaSink::sweep_log_temporaries`], [`SweepReport::log_temporaries`]).
    pub async fn sweep_uncommitted_files(
        &mut self,
        committed_epoch: Epoch,
        own_runs: &[RunId],
    ) -> Result<SweepReport, DeltaSinkError> {
        self.refresh().await?;
        let live = self.live_paths()?;
        let store = self.table.object_store();
        let mut report = SweepReport::default();
        // Files some commit added were committed: a restore may have removed them from the
        // live files (and a later restore may add them back), so only a vacuum deletes them.
        // The log is read (once) only for a file that would otherwise be deleted or reported:
        // not for temporary uploads (no commit adds them) nor for files left alone anyway
        // (committed epochs, e.g. compacted away).
        let mut ever_added: Option<HashSet<String>> = None;
        for (location, name) in self.own_data_files().await? {
            if live.contains(location.as_ref()) {
                continue;
            }
            let owned = match name.run {
                None => true,
                Some(run) => run == self.run_id || own_runs.contains(&run),
            };
            let would_act = !owned || (!name.temporary && name.epoch > committed_epoch);
            if would_act {
                if ever_added.is_none() {
                    ever_added = Some(self.paths_ever_added().await?);
                }
                if ever_added
                    .as_ref()
                    .is_some_and(|a| a.contains(location.as_ref()))
                {
                    continue;
                }
            }
            if !owned {
                report.foreign.push(location.to_string());
            } else if name.temporary || name.epoch > committed_epoch {
                store
                    .delete(&location)
                    .await
                    .map_err(self.file_err("delete uncommitted data file", location.as_ref()))?;
                report.deleted.push(location.to_string());
            }
        }
        report.log_temporaries = self.sweep_log_temporaries()?;
        if !report.deleted.is_empty() {
            info!(table = %self.uri, files = report.deleted.len(), above_epoch = %committed_epoch, "deleted data files of epochs the table does not hold");
        }
        if !report.foreign.is_empty() {
            warn!(table = %self.uri, files = report.foreign.len(), "data files of other runs of this pipeline are not in the table; left in place (another writer may still commit them)");
        }
        Ok(report)
    }

    /// The paths (relative to the table root, decoded) every commit file in the log adds.
    async fn paths_ever_added(&self) -> Result<HashSet<String>, DeltaSinkError> {
        let store = self.table.object_store();
        let log_dir = deltalake::Path::from("_delta_log");
        let commits: Vec<_> = store
            .list(Some(&log_dir))
            .try_collect()
            .await
            .map_err(self.err("list the log"))?;
        let mut out = HashSet::new();
        for meta in commits {
            let is_commit = meta
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()));
            if !is_commit {
                continue;
            }
            let bytes = match store.get(&meta.location).await {
                Ok(get) => get.bytes().await,
                Err(e) => Err(e),
            }
            .map_err(self.file_err("read commit", meta.location.as_ref()))?;
            for line in bytes.split(|b| *b == b'\n') {
                let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                if let Some(path) = action["add"]["path"].as_str() {
                    let decoded = percent_decode(path);
                    out.insert(decoded);
                }
            }
        }
        Ok(out)
    }

    /// The first part number of `epoch` no file of this pipeline (of any run) uses yet.
    pub async fn next_free_part(&self, epoch: Epoch) -> Result<usize, DeltaSinkError> {
        Ok(self
            .own_data_files()
            .await?
            .iter()
            .filter(|(_, n)| n.epoch == epoch)
            .map(|(_, n)| n.part + 1)
            .max()
            .unwrap_or(0))
    }

    /// This pipeline's data files in the table's directory (committed or not, temporary
    /// uploads included), each with its parsed name.
    async fn own_data_files(&self) -> Result<Vec<(deltalake::Path, DataFileName)>, DeltaSinkError> {
        let listing = self
            .table
            .object_store()
            .list_with_delimiter(None)
            .await
            .map_err(self.err("list data files"))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|o| {
                let name = parse_data_file_name(&self.app_id, o.location.filename()?)?;
                Some((o.location, name))
            })
            .collect())
    }

    /// The paths (relative to the table root) of the live files in the state as last loaded.
    fn live_paths(&self) -> Result<HashSet<String>, DeltaSinkError> {
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        Ok(snapshot
            .log_data()
            .into_iter()
            .map(|f| f.object_store_path().to_string())
            .collect())
    }

    /// Reads `columns` of every row in the table's live files (state as last loaded), batch by
    /// batch: used to rebuild dedup state from the table when the checkpoint store is lost.
    ///
    /// Files are read through the table's object store (local or remote alike), only the
    /// projected columns, one row group at a time: a large table need not fit in memory.
    /// Columns a file lacks are left out of its batches.
    pub fn read_columns(&self, columns: &[String]) -> Result<RowBatches, DeltaSinkError> {
        Ok(self.read_columns_of_files(columns, |_| true)?.0)
    }

    /// [`DeltaSink::read_columns`] of the live files `keep` accepts by their Delta stats
    /// (the JSON of the `add` action; `None` when it has none): a reader that needs only some
    /// rows skips files whose bounds exclude them. Also returns (files read, files live).
    pub fn read_columns_of_files(
        &self,
        columns: &[String],
        keep: impl Fn(Option<&str>) -> bool,
    ) -> Result<(RowBatches, (usize, usize)), DeltaSinkError> {
        use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
        use parquet::arrow::ProjectionMask;
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        let mut live = 0;
        let files: Vec<(deltalake::Path, u64)> = snapshot
            .log_data()
            .into_iter()
            .inspect(|_| live += 1)
            .filter(|f| keep(f.stats().as_deref()))
            .map(|f| (f.object_store_path(), f.size().max(0) as u64))
            .collect();
        let counts = (files.len(), live);
        let store = self.table.object_store();
        let columns = columns.to_vec();
        let table = self.uri.clone();
        let stream = futures::stream::iter(files)
            .then(move |(path, size)| {
                let (store, columns, table) = (store.clone(), columns.clone(), table.clone());
                async move {
                    let file = path.to_string();
                    let err = |op: &'static str| {
                        let (table, file) = (table.clone(), file.clone());
                        move |e: parquet::errors::ParquetError| DeltaSinkError {
                            op,
                            table: table.clone(),
                            file: Some(file.clone()),
                            source: Box::new(e),
                        }
                    };
                    let reader = parquet_file::StoreFileReader::new(store, path, size);
                    let builder = ParquetRecordBatchStreamBuilder::new(reader)
                        .await
                        .map_err(err("read parquet footer"))?;
                    let mask = ProjectionMask::columns(
                        builder.parquet_schema(),
                        columns.iter().map(String::as_str),
                    );
                    let batches = builder
                        .with_projection(mask)
                        .build()
                        .map_err(err("read parquet"))?;
                    Ok::<_, DeltaSinkError>(batches.map_err(err("read parquet rows")))
                }
            })
            .try_flatten();
        Ok((stream.boxed(), counts))
    }

    /// Deletes the files in `adds` the table does not reference: the commit they were written
    /// for did not land (see [`DeltaSink::commit_epoch`]: an error from it means so, as far as
    /// the table shows). Best effort: a file kept here is deleted by the next start's sweep.
    ///
    /// Invariant: never deletes a file the table references. It re-reads the table first and
    /// skips every live file; if the table cannot be read, it deletes nothing.
    pub async fn discard_files(&mut self, adds: &[Add]) {
        let live = match self.refresh().await.and_then(|()| self.live_paths()) {
            Ok(live) => live,
            Err(e) => {
                warn!(table = %self.uri, files = adds.len(), "cannot read the table to check which files it references; deleting none (the next start's sweep does): {e}");
                return;
            }
        };
        let store = self.table.object_store();
        for add in adds {
            let path = deltalake::Path::from(add.path.as_str());
            if live.contains(path.as_ref()) {
                warn!(table = %self.uri, file = %add.path, "not deleting a data file the table references");
                continue;
            }
            if let Err(e) = store.delete(&path).await {
                warn!(table = %self.uri, file = %add.path, "cannot delete the data file of a failed commit (the next start deletes it): {e}");
            }
        }
    }

    /// Commits `adds` as epoch `info.epoch`: one Delta commit with the `txn` action
    /// `{pipeline, epoch}` and the commitInfo (with this sink's run id).
    ///
    /// - If the table's txn version is already `>= epoch`: [`CommitOutcome::Committed`] when
    ///   the newest commit of the pipeline is this run's commit of this epoch (a retry after an
    ///   ambiguous error), else [`CommitOutcome::AlreadyCommitted`]; nothing is written.
    /// - The commit is fenced: written with deltalake's retries off on a snapshot whose txn
    ///   version was just checked, so it lands at the version after that snapshot or not at
    ///   all. Losing the race to an unrelated commit re-checks and tries again (up to
    ///   [`MAX_COMMIT_ATTEMPTS`]); losing it to a commit of the same epoch gives
    ///   `AlreadyCommitted`.
    /// - After any error, the truth is the table: it is re-read, and if this run's commit of the
    ///   epoch landed (the error came after it: a directory fsync, a post-commit checkpoint,
    ///   the state reload), its durability is re-established and `Committed` is returned, with
    ///   a warning carrying the error. An `Err` therefore means: not committed, as far as the
    ///   table shows.
    pub async fn commit_epoch(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        self.commit_fenced(adds, info, false).await
    }

    /// Commits `adds` of an epoch the table may hold already (dead letters of an epoch re-read
    /// with other boundaries). The txn version becomes the larger of its current value and the
    /// epoch: it never goes backwards, so files of later epochs are never taken for uncommitted.
    /// Errors are resolved against the table as in [`DeltaSink::commit_epoch`].
    pub async fn commit_more_of_epoch(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        self.commit_fenced(adds, info, true).await
    }

    async fn commit_fenced(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
        more_of_epoch: bool,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        self.ensure_conditional_writes().await?;
        let ranges = self
            .claims
            .is_some()
            .then(|| partition_claims::claimed_ranges(info, !self.claims_adopted));
        let outcome = self.commit_fenced_once(adds, info, more_of_epoch).await?;
        if let CommitOutcome::Committed { .. } = outcome {
            self.newest_own = Some(self.newest_own.map_or(info.epoch, |o| o.max(info.epoch)));
            self.claims_adopted = true;
            // Landed: the table now claims each covered partition up to the commit's end.
            for r in ranges.into_iter().flatten() {
                self.claims_known.insert(r.partition, Some(r.end));
            }
        }
        Ok(outcome)
    }

    async fn commit_fenced_once(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
        more_of_epoch: bool,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        let mut info = info.clone();
        info.run_id = Some(self.run_id);
        info.generation = self.generation;
        info.cluster_id = self.cluster_id.clone();
        let mut attempt = 0;
        // The first try goes through this sink's own tail, when it has one (see `OwnTail`).
        let mut tail = self.own_tail.take();
        // The table was just re-read (after a lost race): no second read before the next try,
        // which would only widen the window another writer's commit can fall into.
        let mut fresh = false;
        loop {
            attempt += 1;
            let through_tail = tail
                .take()
                .filter(|t| self.tail_usable(t, &info, more_of_epoch));
            let (before, tried) = match through_tail {
                Some(t) => {
                    let txn = if more_of_epoch {
                        t.txn.max(info.epoch)
                    } else {
                        info.epoch
                    };
                    let tried = self
                        .try_commit_after_tail(adds.clone(), &info, txn, t)
                        .await;
                    if let Ok(version) = tried {
                        self.own_tail = Some(OwnTail {
                            version,
                            txn,
                            unread: t.unread + 1,
                        });
                    }
                    (Some(t.version), tried)
                }
                None => {
                    if !fresh {
                        self.refresh().await?;
                    }
                    fresh = false;
                    self.check_not_fenced()?;
                    let mut txn_version = self.loaded_txn_version().await?;
                    if let Some(own) = self.newest_own {
                        if txn_version.unwrap_or(Epoch::ZERO) < own {
                            // Before concluding the table went back, read it whole: an
                            // incremental update of the loaded state raced by another
                            // writer's commits was seen to miss this sink's own newest commit
                            // (two writers on S3, commits back to back).
                            warn!(table = %self.uri, own = %own, txn = ?txn_version, "the table's txn version is behind this process's newest commit: reading the table whole before concluding it went back");
                            self.table.state = None;
                            self.table
                                .update_state()
                                .await
                                .map_err(sink_err("reload", &self.uri))?;
                            txn_version = self.loaded_txn_version().await?;
                        }
                        let txn = txn_version.unwrap_or(Epoch::ZERO);
                        if txn < own {
                            return Err(DeltaSinkError {
                                op: "commit",
                                table: self.uri.clone(),
                                file: None,
                                source: Box::new(TableWentBack { own, txn }),
                            });
                        }
                    }
                    let txn = match txn_version {
                        Some(t) if !more_of_epoch && t >= info.epoch => {
                            if let Some(version) = self.own_commit_since(&info, None).await? {
                                return Ok(CommitOutcome::Committed {
                                    version: TableVersion::new(version),
                                });
                            }
                            return Ok(CommitOutcome::AlreadyCommitted { txn_version: t });
                        }
                        Some(t) if more_of_epoch => t.max(info.epoch),
                        _ => info.epoch,
                    };
                    self.check_claims(&info).await?;
                    let before = self.table.version();
                    let tried = self.try_commit(adds.clone(), &info, txn).await;
                    if let Ok(version) = tried {
                        self.own_tail = Some(OwnTail {
                            version,
                            txn,
                            unread: 0,
                        });
                    }
                    (before, tried)
                }
            };
            let error = match tried {
                Ok(version) => {
                    debug!(epoch = %info.epoch, version, "epoch committed");
                    return Ok(CommitOutcome::Committed {
                        version: TableVersion::new(version),
                    });
                }
                Err(e) => e,
            };
            // The truth is the table: the error may have come after the commit landed.
            if let Err(refresh) = self.refresh().await {
                warn!(table = %self.uri, "cannot re-read the table after a failed commit: {refresh}");
                return Err(sink_err("commit", &self.uri)(error));
            }
            if let Some(version) = self.own_commit_since(&info, before).await? {
                self.ensure_commit_durable(version)?;
                warn!(table = %self.uri, epoch = %info.epoch, version, "the commit landed before an error; counting it as committed: {error}");
                return Ok(CommitOutcome::Committed {
                    version: TableVersion::new(version),
                });
            }
            if is_commit_conflict(&error) && attempt < MAX_COMMIT_ATTEMPTS {
                self.lost_races += 1;
                debug!(table = %self.uri, epoch = %info.epoch, attempt, "another commit came first; checking the table again: {error}");
                if attempt >= 2 {
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                } else {
                    fresh = true;
                }
                continue;
            }
            return Err(sink_err("commit", &self.uri)(error));
        }
    }

    /// Refuses when the table (as last loaded) is of a newer generation than this writer.
    fn check_not_fenced(&self) -> Result<(), DeltaSinkError> {
        let Some(writer_generation) = self.generation else {
            return Ok(());
        };
        let table_generation = self.table_generation()?;
        if table_generation > writer_generation {
            return Err(sink_err("commit", &self.uri)(Fenced {
                table: self.uri.clone(),
                table_generation,
                writer_generation,
            }));
        }
        Ok(())
    }

    /// One fenced commit try on the state as loaded: deltalake's retries off, so it lands at
    /// the version after the loaded one, or fails. Landed, the table's state after it (built
    /// by deltalake from the loaded one and this commit) becomes the loaded state.
    async fn try_commit(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
        txn: Epoch,
    ) -> Result<u64, DeltaTableError> {
        let finalized = self.pre_commit(adds, info, txn)?.await?;
        let version = finalized.version();
        self.table.state = Some(finalized.snapshot);
        Ok(version)
    }

    /// The epoch commit deltalake builds on the loaded state: `adds`, the txn action at `txn`,
    /// Tidemark's commitInfo, no retries (a lost race is the caller's to judge), and no
    /// checkpoint or log-cleanup hook (those are the engine's, see `delta_log`: the hook would
    /// skip a failed checkpoint silently and list the whole log after every commit).
    fn pre_commit(
        &self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
        txn: Epoch,
    ) -> Result<PreCommit<'_>, DeltaTableError> {
        let info_json = serde_json::to_value(info)
            .map_err(|e| DeltaTableError::Generic(format!("encode commitInfo: {e}")))?;
        let mut transactions = vec![Transaction::new(&self.app_id, txn.to_txn())];
        if let Some(pipeline) = &self.claims {
            transactions.extend(
                partition_claims::claimed_ranges(info, !self.claims_adopted)
                    .iter()
                    .map(|r| Transaction::new(claim_app_id(pipeline, &r.partition), r.end)),
            );
        }
        let properties = CommitProperties::default()
            .with_application_transactions(transactions)
            .with_metadata([(COMMIT_INFO_KEY.to_string(), info_json)])
            .with_max_retries(0)
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false));
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: self.app_id.clone(),
            epoch_id: info.epoch.to_txn(),
        };
        let snapshot = self.table.snapshot()?;
        Ok(CommitBuilder::from(properties)
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(Some(snapshot), self.table.log_store(), operation))
    }

    /// Whether the next commit of `info` may go through `tail` (see [`OwnTail`]): a local table
    /// (the put-if-absent of the durable store), deltalake's default log store (commits as
    /// bytes), a protocol without writer features whose commits depend on the table's state
    /// (writer version 3 at most: no row tracking, identity columns, in-commit timestamps),
    /// an epoch after the tail's (else the full checks tell committed from already
    /// committed), not fenced, and not too far from the state loaded.
    fn tail_usable(&self, tail: &OwnTail, info: &EpochCommitInfo, more_of_epoch: bool) -> bool {
        let Ok(snapshot) = self.table.snapshot() else {
            return false;
        };
        // Through the tail the claims are checked against `claims_known` (exact while no other
        // writer committed, which the tail's put-if-absent ensures); a partition not there
        // takes the path that re-reads the table.
        let claims_hold = self.claims.is_none() || {
            let ranges = partition_claims::claimed_ranges(info, !self.claims_adopted);
            ranges
                .iter()
                .all(|r| self.claims_known.contains_key(&r.partition))
                && partition_claims::check(&ranges, &self.claims_known).is_ok()
        };
        claims_hold
            && self.local_root.is_some()
            && self.table.log_store().name() == "DefaultLogStore"
            && snapshot.protocol().min_writer_version() <= 3
            && (more_of_epoch || tail.txn < info.epoch)
            && tail.unread < MAX_UNREAD_OWN_COMMITS
            && self.check_not_fenced().is_ok()
    }

    /// One fenced commit try through the tail: the commit deltalake prepares on the loaded
    /// state, written put-if-absent at `tail.version + 1` (durable when it returns: the
    /// store fsyncs it and the log directory). Losing the version is
    /// `VersionAlreadyExists`, a conflict like any other.
    async fn try_commit_after_tail(
        &self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
        txn: Epoch,
        tail: OwnTail,
    ) -> Result<u64, DeltaTableError> {
        use deltalake::logstore::CommitOrBytes;
        let prepared = self
            .pre_commit(adds, info, txn)?
            .into_prepared_commit_future()
            .await?;
        let CommitOrBytes::LogBytes(bytes) = prepared.commit_or_bytes() else {
            return Err(DeltaTableError::Generic(
                "deltalake prepared the commit as a temporary file; only bytes are committed through the tail".into(),
            ));
        };
        let version = tail.version + 1;
        let path = deltalake::Path::from(format!("_delta_log/{version:020}.json"));
        self.table
            .object_store()
            .put_opts(
                &path,
                bytes.clone().into(),
                object_store::PutOptions::from(object_store::PutMode::Create),
            )
            .await
            .map_err(|e| match e {
                object_store::Error::AlreadyExists { .. } => {
                    DeltaTableError::VersionAlreadyExists(version)
                }
                other => DeltaTableError::ObjectStore { source: other },
            })?;
        Ok(version)
    }

    /// The version of this run's commit of `info.epoch`, if it is the pipeline's newest commit
    /// in the state as loaded (and newer than `after`).
    async fn own_commit_since(
        &self,
        info: &EpochCommitInfo,
        after: Option<u64>,
    ) -> Result<Option<u64>, DeltaSinkError> {
        Ok(self.loaded_last_progress().await?.and_then(|p| {
            (p.info.run_id == info.run_id
                && p.info.epoch == info.epoch
                && after.is_none_or(|b| p.table_version.get() > b))
            .then_some(p.table_version.get())
        }))
    }

    /// Checks, once, that an object-store table's store refuses a second put-if-absent before
    /// the first commit of a sink opened without creating (see `unchecked_store`).
    async fn ensure_conditional_writes(&mut self) -> Result<(), DeltaSinkError> {
        if let Some(store) = &self.unchecked_store {
            verify_put_if_absent(store)
                .await
                .map_err(sink_err("check conditional writes", &self.uri))?;
            self.unchecked_store = None;
        }
        Ok(())
    }

    /// Makes a commit found in the table durable again after an error: its content was fsynced
    /// before it got its name, so only `_delta_log/`'s entry may be missing from the disk.
    fn ensure_commit_durable(&self, version: u64) -> Result<(), DeltaSinkError> {
        if let Some(root) = &self.local_root {
            let log_dir = root.join("_delta_log");
            self.fs.sync_dir(&log_dir).map_err(self.file_err(
                "fsync _delta_log after the commit landed",
                &format!("_delta_log/{version:020}.json"),
            ))?;
        }
        Ok(())
    }
}

/// Files at least this big are uploaded in parts (a multipart upload on S3): a failed part is
/// retried alone instead of the whole file, and S3's 5 GiB single-PUT limit never applies.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;

/// The part size of multipart uploads (S3 wants at least 5 MiB for every part but the last).
const MULTIPART_CHUNK: usize = 8 << 20;

/// Writes `bytes` to `path` whole: one PUT, or on an object store (`remote`) from
/// [`MULTIPART_THRESHOLD`] on a multipart upload (the local store writes a temporary file and
/// renames it either way). Either way the object appears under its name only complete (S3 shows a multipart
/// upload only once completed; the durable local store renames a finished temporary file), and
/// a failed multipart upload is aborted (best effort: a bucket lifecycle rule for incomplete
/// uploads collects what an abort could not).
async fn upload_whole(
    store: &Arc<dyn object_store::ObjectStore>,
    path: &deltalake::Path,
    bytes: bytes::Bytes,
    remote: bool,
) -> object_store::Result<()> {
    if !remote || bytes.len() < MULTIPART_THRESHOLD {
        return store.put(path, bytes.into()).await.map(|_| ());
    }
    let mut upload = AbortOnDrop::new(store.put_multipart(path).await?, path);
    let parts: Vec<_> = (0..bytes.len())
        .step_by(MULTIPART_CHUNK)
        .map(|at| {
            let end = (at + MULTIPART_CHUNK).min(bytes.len());
            upload.put_part(bytes.slice(at..end).into())
        })
        .collect();
    let sent: object_store::Result<Vec<()>> =
        futures::stream::iter(parts).buffered(4).try_collect().await;
    // A failed part or completion aborts the upload; so does this future being dropped.
    match sent {
        Ok(_) => upload.complete().await.map(|_| ()),
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// A log path (percent-encoded, RFC 2396) decoded; kept as is when it does not decode.
fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_or_else(|_| path.to_string(), |s| s.into_owned())
}

/// True when a commit lost a race for its version (deltalake's retries are off).
fn is_commit_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
                    | TransactionError::CommitConflict(_)
            }
    )
}

/// Most rows in one data file: an epoch larger than this is split, deterministically.
pub const MAX_ROWS_PER_FILE: usize = 1 << 20;

const DATA_FILE_SUFFIX: &str = ".snappy.parquet";

/// The name of part `part` of `epoch`'s data written by run `run` of pipeline `app_id`:
/// `tidemark-<app_id>-e<epoch:012>-p<part:04>-r<run>.snappy.parquet`.
pub fn data_file_name(app_id: &str, epoch: Epoch, part: usize, run: RunId) -> String {
    format!("tidemark-{app_id}-e{epoch:012}-p{part:04}-r{run}{DATA_FILE_SUFFIX}")
}

/// Parses a data file name of pipeline `app_id` (see [`data_file_name`]); also names from
/// before run ids (`...-p<part>.snappy.parquet`) and temporary uploads of either (Tidemark's
/// `.<name>.tidemark-tmp-...`, object_store's `<name>#<n>`). Strict: a name of any other
/// pipeline — even one whose id starts with `app_id` — is `None`.
pub fn parse_data_file_name(app_id: &str, name: &str) -> Option<DataFileName> {
    if let Some(hidden) = name.strip_prefix('.') {
        let (final_name, _) = hidden.split_once(".tidemark-tmp-")?;
        let parsed = parse_final_name(app_id, final_name)?;
        return Some(DataFileName {
            temporary: true,
            ..parsed
        });
    }
    if let Some((final_name, n)) = name.rsplit_once('#') {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let parsed = parse_final_name(app_id, final_name)?;
        return Some(DataFileName {
            temporary: true,
            ..parsed
        });
    }
    parse_final_name(app_id, name)
}

fn parse_final_name(app_id: &str, name: &str) -> Option<DataFileName> {
    let rest = name
        .strip_prefix("tidemark-")?
        .strip_prefix(app_id)?
        .strip_prefix("-e")?
        .strip_suffix(DATA_FILE_SUFFIX)?;
    let (epoch, rest) = rest.split_at_checked(12)?;
    if !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest.strip_prefix("-p")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (part, rest) = rest.split_at(digits);
    if part.len() < 4 {
        return None;
    }
    let run = match rest {
        "" => None,
        _ => Some(rest.strip_prefix("-r")?.parse().ok()?),
    };
    Some(DataFileName {
        epoch: Epoch::new(epoch.parse().ok()?),
        part: part.parse().ok()?,
        run,
        temporary: false,
    })
}

/// Wraps any error as a [`DeltaSinkError`] naming `op` and the table.
fn sink_err<'a, E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    table: &'a str,
) -> impl FnOnce(E) -> DeltaSinkError + 'a {
    move |e| DeltaSinkError {
        op,
        table: table.to_string(),
        file: None,
        source: Box::new(e),
    }
}

#[path = "delta_log.rs"]
mod log_maintenance;
pub use log_maintenance::CheckpointSchedule;

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
