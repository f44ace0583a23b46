//! The pipeline runtime: Kafka -> WAL -> seal -> Parquet + one Delta commit -> checkpoint ->
//! WAL truncation, one epoch at a time (the epoch protocol of ARCHITECTURE.md).
//!
//! Exactly-once rests on two invariants. An epoch's content is fixed at its seal (its WAL
//! records, in order), and decoding is a pure function of it, so a redo after a crash writes the
//! same rows. And an epoch's rows and end positions become visible in ONE Delta commit carrying
//! `txn = epoch`, which is never made twice: recovery ([`crate::recovery`]) compares the
//! checkpoint, the WAL and the table's txn version before anything is written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidemark_checkpoint::store::Counts;

use serde::Serialize;
use tidemark_connectors::dead_letter;
use tidemark_connectors::decode::JsonDecoder;
use tidemark_connectors::delta::{DeltaSink, DeltaSinkError, SinkOptions};
use tidemark_connectors::kafka::{KafkaSource, KafkaSourceConfig, KafkaSourceError};
use tidemark_connectors::source::Source;
use tidemark_connectors::{Positions, TableVersion};
use tracing::{info, warn};

use crate::committer::{retry_transient, CommitError, Committer, EpochReport, Retry};
use crate::config::{ConfigError, OnInvalidRecord, OnLate, PipelineConfig};
use crate::epoch::{OpenEpoch, ProcessError, RecordProcessor};
use crate::io_faults;
use crate::metrics;
use crate::progress::Progress;
use crate::read_ahead::{ReadAhead, ReadAheadLimits, READ_BATCH};
use crate::recovery::{self, CommittedAtStart, RecoveryError, RecoveryOutcome, StartOptions};
pub use crate::shutdown::{install_signal_handlers, Shutdown};
use crate::state_lock::{RunId, StateLock, StateLockError};

/// Longest wait for records before checking for a stop request or a due epoch.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Commits a worker's start reads back, in turn, to find the commit that wrote each of its
/// partitions' claims (its dedup floor): the owner of a partition lists it in every commit, so
/// the claim's commit is almost always among the newest; the whole log is read only when not.
const CLAIM_FLOOR_HISTORY: [Option<usize>; 3] = [Some(64), Some(1_000), None];

/// Why a pipeline stopped other than by being asked to: each layer's error, converted upward.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory is locked by another process, or its lock cannot be taken.
    #[error(transparent)]
    Locked(#[from] StateLockError),
    /// The Delta table could not be opened or created.
    #[error(transparent)]
    Sink(#[from] DeltaSinkError),
    /// Kafka could not be read.
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    /// Records could not be processed (or the table does not match the config).
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Recovery failed or refused to start.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// An epoch could not be logged, sealed, committed or checkpointed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The file system for the run could not be set up.
    #[error("state {path}: {message}")]
    State {
        /// The file or place at fault.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A writer of an older generation (see [`crate::generation`]).
    #[error("table {table}: {reason}")]
    Fenced {
        /// The table.
        table: String,
        /// Why.
        reason: crate::generation::FenceReason,
    },
    /// The brokers are another Kafka cluster than the one the table's progress belongs to.
    #[error(transparent)]
    ClusterMismatch(#[from] crate::cluster_check::ClusterMismatch),
    /// The HTTP endpoint could not be started.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A background task of the run failed (panicked or was cancelled).
    #[error("{what} failed: {message}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
}

/// How [`run`] should behave beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once every partition is read up to where it ended when the run started.
    pub until_caught_up: bool,
    /// Allow starting when the table is behind the checkpoint store, rewinding to this
    /// retained checkpoint (its committed epoch must be `<=` the table's txn version).
    pub rewind_to: Option<u64>,
    /// Continue past WAL damage before the log's end, re-reading from Kafka what the damaged
    /// (moved-aside) segments held.
    pub accept_wal_damage: bool,
    /// A failover start (`tidemark failover`): open a new generation, set the state directory's
    /// store and WAL aside, and start from the table at these positions (found by time on the
    /// new cluster) with the dedup state rebuilt from the table's rows.
    pub failover: Option<FailoverStart>,
    /// A worker's run (`config.worker` set): the partitions its group assigned it. The run
    /// reads only these, from the table's claims of them.
    pub partitions: Option<std::collections::BTreeSet<tidemark_connectors::TopicPartition>>,
}

/// How a failover start begins (see [`crate::failover`]).
#[derive(Debug, Clone)]
pub struct FailoverStart {
    /// Where to read on the new cluster.
    pub positions: Positions,
    /// Why: `failover` (or `failback`), recorded with the new generation.
    pub reason: String,
    /// The cluster read from now on (as the brokers report it).
    pub cluster_id: Option<String>,
    /// Per partition, from which Kafka timestamp records may be read again (`None`: the whole
    /// partition): their dead letters from the old cluster are not written twice.
    pub dead_letter_windows: crate::dead_letter_overlap::Windows,
}

/// What a run did; printed as one JSON line when `tidemark run` ends.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// The pipeline.
    pub pipeline_id: String,
    /// First epoch this run worked on.
    pub first_epoch: u64,
    /// Epochs this run committed.
    pub epochs_committed: u64,
    /// Records read from the source.
    pub records_read: u64,
    /// Rows written to the table.
    pub rows_written: u64,
    /// Records skipped or dead-lettered as invalid.
    pub records_skipped: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late records.
    pub late: u64,
    /// Rows written to the dead-letter table.
    pub dead_letters: u64,
    /// Dead letters not written because the dead-letter table held them from another cluster
    /// (records a failover read again; see [`crate::dead_letter_overlap`]).
    pub dead_letters_already_held: u64,
    /// Keys in dedup state at the end of the run.
    pub dedup_keys: Option<u64>,
    /// The watermark at the end of the run (micros).
    pub watermark: Option<i64>,
    /// Parquet files written.
    pub files_written: u64,
    /// Newest table version after the run.
    pub table_version: Option<TableVersion>,
    /// Positions at the end of the run.
    pub positions: Positions,
    /// Wall time of the run in seconds.
    pub elapsed_secs: f64,
    /// Commit tries that lost the race to another writer's commit and were tried again.
    pub commit_conflicts: u64,
    /// Why the run ended: `caught_up` or `shutdown`.
    pub stopped_because: &'static str,
    /// What recovery found and did at start.
    pub recovery: RecoveryOutcome,
    /// Milliseconds from the start of the run to its first Delta commit (recovery time).
    pub first_commit_ms: Option<u64>,
    /// Milliseconds from the start of the run to its first commit of records read from the
    /// source in this run (after a crash, the first commit may be of replayed WAL records).
    pub first_source_commit_ms: Option<u64>,
    /// Median time from seal to durable checkpoint, milliseconds.
    pub commit_ms_p50: Option<f64>,
    /// 99th percentile of the same.
    pub commit_ms_p99: Option<f64>,
    /// Share of wall time spent writing checkpoints (RocksDB), 0..1.
    pub checkpoint_time_share: f64,
    /// With dedup: share of wall time spent giving rows their dedup verdicts, live (on each
    /// epoch's deciding thread, while the reading thread reads and logs the next batches) and
    /// replayed (on the recovering thread), 0..1 ([`crate::verdicts::VerdictCost`]). Why: every
    /// record is decided in WAL order on one thread at a time, so this stage cannot be split;
    /// near the whole wall time, that thread is the bound. Builds before 2026-12-03 (stop 51)
    /// measured it on the reading thread. `None` without dedup, or when
    /// the run stopped before it was ready to read.
    pub dedup_verdict_share: Option<f64>,
    /// With dedup: milliseconds of that time the state's key table spent growing (a state
    /// that grows from empty pays it; `tidemark bench --compare-dedup` prints both).
    pub dedup_table_growth_ms: Option<f64>,
    /// With dedup: milliseconds of that time spent sweeping evicted keys out of the state's
    /// table (eviction is lazy: `engine/src/dedup.rs`).
    pub dedup_sweep_ms: Option<f64>,
    /// With dedup: CPU seconds the threads that gave verdicts spent on them (the time in
    /// `dedup_verdict_share` without the waits for a core while in it).
    pub dedup_verdict_cpu_secs: Option<f64>,
    /// With dedup and checkpoints: CPU seconds the state writer's thread used (sorting each
    /// delta, writing and ingesting its files), up to its write at the run's end: dedup's work
    /// off the reading thread. `None` when no state writer ran.
    pub dedup_state_writer_cpu_secs: Option<f64>,
    /// CPU seconds (user + system) the process used from the run's start to its end, every
    /// thread included (the Kafka client's, the decoding and encoding threads', ended ones
    /// too). Why: with `elapsed_secs`, how many cores the run kept busy; per record, what
    /// bounds throughput on given cores ([`crate::cpu_time`]).
    pub cpu_secs: Option<f64>,
    /// CPU seconds the thread the run was driven on used over the run: the one that reads and
    /// logs every record and applies its verdict in WAL order. Near `elapsed_secs`, that
    /// thread was the bound. `None` when the run's future did not end on the thread it started on
    /// (a run spawned on a multi-threaded runtime; `tidemark run` drives it with `block_on`).
    pub reading_thread_cpu_secs: Option<f64>,
    /// Seconds that same thread was runnable but waited for a core (the kernel's run delay;
    /// `None` where it is not known, as `reading_thread_cpu_secs`). Why: on few cores the
    /// reading thread, the one stage that cannot be split, loses time to the other threads
    /// taking its core; large beside `reading_thread_cpu_secs`, the cores are the bound.
    pub reading_thread_waiting_secs: Option<f64>,
    /// Totals over the pipeline's life, as in the newest checkpoint.
    pub totals: Counts,
    /// Bytes this run appended to the WAL.
    pub wal_bytes: u64,
    /// Peak resident memory of the process (VmHWM), in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The Kafka cluster id this run read (as the brokers report it).
    pub cluster_id: Option<String>,
    /// The generation this run wrote as (see [`crate::generation`]).
    pub generation: Option<u64>,
    /// Milliseconds from the start of the run to the commit that opened a new generation
    /// (failover starts only).
    pub generation_opened_ms: Option<u64>,
}

/// The process's peak resident set size, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the pipeline described by `config` until caught up (if asked)
/// or until `shutdown` is requested. Recovery runs first.
pub async fn run(
    config: &PipelineConfig,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let cpu_at_start = CpuAtStart::now();
    // First of all: the state directory is this process's alone, or nothing is touched.
    let state = config.paths.state_dir.clone();
    let lock = StateLock::acquire(&state, RunId::generate())?;
    info!(state = %state.display(), run = %lock.run(), "state directory locked");
    // Served from before recovery on: /healthz answers and /readyz says "not recovered".
    let _http = match &config.observability.http {
        Some(addr) => Some(crate::http::serve(
            addr,
            metrics::install(run_info(config)),
        )?),
        None => None,
    };
    let sink_options = SinkOptions {
        fs: io_faults::pipeline_fs().map_err(|message| PipelineError::State {
            path: state.clone(),
            message,
        })?,
        run_id: *lock.run(),
    };
    let mut tables = open_tables(config, &sink_options).await?;
    let worker_start = match (&config.worker, &options.partitions) {
        (Some(worker), Some(partitions)) => {
            Some(worker_start(config, worker, &mut tables.sink, partitions).await?)
        }
        (Some(worker), None) => {
            return Err(PipelineError::State {
                path: state.clone(),
                message: format!(
                    "worker {:?} started without its group's assignment (run it through `tidemark run --worker-id`)",
                    worker.worker_id
                ),
            })
        }
        (None, _) => None,
    };
    // Which cluster the brokers are, asked while recovery runs (recovery needs no broker).
    let cluster_lookup = spawn_cluster_lookup(config);
    let generation = fence(config, &mut tables.sink, options.failover.as_ref(), &state).await?;
    let generation_opened_ms = options
        .failover
        .is_some()
        .then(|| started.elapsed().as_millis() as u64);

    let recovery_started = Instant::now();
    let (mut committer, mut open, mut recovered) = recovery::recover(
        config,
        &lock,
        &sink_options.fs,
        tables.sink,
        tables.dead_letters,
        &tables.processor,
        StartOptions {
            rewind_to: options.rewind_to,
            accept_wal_damage: options.accept_wal_damage,
            start_positions: options.failover.as_ref().map(|f| f.positions.clone()),
            cluster_id: options.failover.as_ref().and_then(|f| f.cluster_id.clone()),
            dead_letter_windows: options
                .failover
                .as_ref()
                .map(|f| f.dead_letter_windows.clone()),
            worker: worker_start,
        },
    )
    .await?;
    // Every epoch of the run encodes its rows while it is read (the recovered one too, with
    // whatever replayed rows it holds).
    open.encode_while_reading(committer.sink().arrow_schema().clone())
        .map_err(CommitError::from)?;
    recovered.recovery_ms = recovery_started.elapsed().as_millis() as u64;
    committer.set_stop(shutdown.clone());
    let maintenance = crate::maintenance::Maintenance::open(
        &config.maintenance,
        committer.sink(),
        config.paths.replica_url.clone(),
        &sink_options.fs,
    )
    .await;
    committer.set_maintenance(maintenance);
    let committed_at_start = recovered.committed_at_start.take();
    if let Some(CommittedAtStart { report, .. }) = &committed_at_start {
        // Recovery committed an epoch (a redo, or the records read ahead before a crash)
        // before the maintenance existed: what is due after that commit is done now, so a
        // Delta checkpoint a crash left due is written at the first commit after the restart.
        committer.maintain(report.version).await;
    }
    metrics::recovered(&recovered, open.epoch, &open.end);
    let _replica_watch = config
        .paths
        .replica_url
        .as_ref()
        .and_then(|replica| crate::replica_watch::start(&config.paths.table_url, replica));
    info!(
        case = recovered.case,
        ms = recovered.recovery_ms,
        replayed = recovered.replayed_records,
        next_epoch = recovered.next_epoch,
        "recovery done"
    );
    let mut summary = RunSummary {
        pipeline_id: config.pipeline_id.clone(),
        first_epoch: open.epoch,
        positions: open.end.clone(),
        recovery: recovered,
        generation: Some(generation),
        generation_opened_ms,
        ..RunSummary::default()
    };
    let mut stats = RunStats::new(started, cpu_at_start);
    if let Some(CommittedAtStart { report, landed }) = committed_at_start {
        // A redone or resumed epoch committed during recovery: this run's first commit, at
        // the moment it landed.
        metrics::checkpointed(&report, &after_checkpoint(&committer));
        stats.note(&report, &mut summary, false, landed);
    }

    summary.cluster_id = check_cluster(
        config,
        &mut committer,
        cluster_lookup,
        options.failover.is_some(),
        &shutdown,
    )
    .await?;
    let stored_topic_ids = committer.sink().topic_ids().clone();
    let Some(mut source) = connect_source(
        config,
        &open.end,
        &stored_topic_ids,
        options.partitions.clone(),
        &shutdown,
    )
    .await?
    else {
        // A stop asked for during recovery or while the broker does not answer ends the run
        // here (recovery's own commits are complete; nothing is half done).
        info!("stop requested before the source connected: stopping");
        summary.stopped_because = "shutdown";
        summary.elapsed_secs = started.elapsed().as_secs_f64();
        return Ok(summary);
    };
    committer.record_topic_ids(source.topic_ids());
    if let Some(mut d) = committer.dedup() {
        d.tracker.register(source.partitions(), Instant::now());
    }
    info!(
        lag = source.lag_at_start(&open.end),
        epoch = open.epoch,
        replayed = open.records,
        "records waiting at start"
    );

    summary.stopped_because = run_epochs(
        config,
        &options,
        &shutdown,
        &tables.processor,
        &mut committer,
        &mut source,
        &mut open,
        &mut stats,
        &mut summary,
    )
    .await?;
    summary.positions = open.end.clone();
    if let Err(e) = committer.finish_state_writes() {
        warn!(error = %e, "the dedup state gathered at the end of the run could not be written to the checkpoint store; the WAL keeps it, and the next start reads it there");
    }
    stats.finish(&mut summary, &committer);
    info!(
        stopped_because = summary.stopped_because,
        epochs = summary.epochs_committed,
        records = summary.records_read,
        secs = format!("{:.2}", summary.elapsed_secs),
        "pipeline stopped"
    );
    Ok(summary)
}

/// A worker's start over the `partitions` its group assigned it: each at the table's claim
/// (whichever worker wrote it; an unclaimed one where the pipeline ran as one process, if it
/// did) and, with dedup, the floor the claim's commit recorded. Makes `sink` claim partitions.
async fn worker_start(
    config: &PipelineConfig,
    worker: &crate::config::WorkerIdentity,
    sink: &mut DeltaSink,
    partitions: &std::collections::BTreeSet<tidemark_connectors::TopicPartition>,
) -> Result<recovery::WorkerStart, PipelineError> {
    sink.claim_partitions(&worker.pipeline_id);
    let mut claims = sink
        .partition_claims(&worker.pipeline_id, partitions)
        .await?;
    // Where each partition's dedup state starts: the floor its claim's commit recorded.
    // (The newest commits first: each is a read, on object storage a request.)
    let mut floors = BTreeMap::new();
    if config.dedup.is_some() {
        for limit in CLAIM_FLOOR_HISTORY {
            floors = sink
                .claim_dedup_floors(&worker.pipeline_id, &claims, limit)
                .await?;
            if floors.len() == claims.iter().count() {
                break;
            }
        }
    }
    for (tp, _) in claims.iter() {
        if config.dedup.is_some() && !floors.contains_key(&tp) {
            warn!(partition = %tp, "worker: no commit in the table's log records this partition's claim (log cleanup removed it): its dedup state is rebuilt from all its rows in the table (a key seen long ago drops a later record as a duplicate)");
        }
    }
    // A partition no worker has claimed yet continues where the pipeline ran as one
    // process before it was shared, if it did (never from the beginning again).
    let unclaimed: Vec<_> = partitions
        .iter()
        .filter(|tp| claims.get(&tp.topic, tp.partition).is_none())
        .collect();
    if !unclaimed.is_empty() {
        if let Some(mut single) =
            DeltaSink::open_existing(&config.paths.table_url, &worker.pipeline_id).await?
        {
            if let (_, Some(progress)) = single.progress().await? {
                for tp in unclaimed {
                    if let Some(next) = progress.info.end_positions.get(&tp.topic, tp.partition) {
                        info!(partition = %tp, next, epoch = %progress.info.epoch, "worker: partition not claimed yet: continuing where the single-process pipeline left it");
                        claims.set(&tp.topic, tp.partition, next);
                        floors.insert(tp.clone(), progress.info.watermark);
                    }
                }
            }
        }
    }
    info!(worker = %worker.worker_id, partitions = partitions.len(), claims = %claims, "worker: starting its partitions at the table's claims");
    let floors = crate::partition_dedup::PartitionFloors::new(
        floors
            .into_iter()
            .filter_map(|(tp, floor)| Some(((tp.topic, tp.partition), floor?))),
    );
    let assigned = partitions
        .iter()
        .map(|tp| (tp.topic.clone(), tp.partition))
        .collect();
    Ok(recovery::WorkerStart {
        positions: claims,
        dedup: crate::partition_dedup::WorkerDedupStart { assigned, floors },
    })
}

/// How long the cluster id is waited for at start.
const CLUSTER_ID_TIMEOUT: Duration = Duration::from_secs(15);

/// Asks the brokers for their cluster id on a blocking thread.
fn spawn_cluster_lookup(
    config: &PipelineConfig,
) -> tokio::task::JoinHandle<Result<Option<String>, KafkaSourceError>> {
    let source_config = source_config(config);
    tokio::task::spawn_blocking(move || {
        tidemark_connectors::kafka_cluster::fetch_cluster_id(&source_config, CLUSTER_ID_TIMEOUT)
    })
}

/// Compares the brokers' cluster id with the one the table's progress belongs to
/// ([`crate::cluster_check`]) and records the brokers' with the next commits.
async fn check_cluster(
    config: &PipelineConfig,
    committer: &mut Committer,
    lookup: tokio::task::JoinHandle<Result<Option<String>, KafkaSourceError>>,
    failover: bool,
    shutdown: &Shutdown,
) -> Result<Option<String>, PipelineError> {
    let mut lookup = lookup;
    let broker = loop {
        if shutdown.requested() {
            // The run stops before reading (connect_source sees the request too).
            return Ok(committer.sink().cluster_id().map(str::to_string));
        }
        tokio::select! {
            joined = &mut lookup => {
                break joined.map_err(|e| PipelineError::Task {
                    what: "asking Kafka for its cluster id",
                    message: e.to_string(),
                })??;
            }
            _ = tokio::time::sleep(POLL_WAIT) => {}
        }
    };
    let recorded = committer.sink().cluster_id().map(str::to_string);
    let case = crate::cluster_check::check(
        recorded.as_deref(),
        broker.as_deref(),
        &config.source.brokers,
        failover,
    )?;
    match &case {
        crate::cluster_check::ClusterCase::BrokerReportsNone => {
            tracing::warn!(brokers = %config.source.brokers, recorded = ?recorded, "the brokers report no cluster id: positions cannot be checked against the cluster they belong to")
        }
        crate::cluster_check::ClusterCase::Failover { from, to } => {
            tracing::warn!(from = %from, to = %to, "FAILOVER: the table's progress belongs to cluster {from}; reading cluster {to} from positions found by time")
        }
        _ => info!(cluster = ?broker, ?case, "Kafka cluster checked"),
    }
    let id = broker.or(recorded);
    committer.record_cluster_id(id.clone());
    Ok(id)
}

/// The file in a state directory naming the generation its writer belongs to.
pub fn generation_file(state: &std::path::Path) -> std::path::PathBuf {
    state.join("generation")
}

/// The generation the state directory's writer belongs to, if it recorded one.
fn read_generation(state: &std::path::Path) -> Result<Option<u64>, PipelineError> {
    let path = generation_file(state);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|e| PipelineError::State {
                path,
                message: format!("not a generation number ({text:?}): {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PipelineError::State {
            path,
            message: e.to_string(),
        }),
    }
}

/// Records (durably) that the state directory's writer belongs to `generation`.
fn write_generation(state: &std::path::Path, generation: u64) -> Result<(), PipelineError> {
    let path = generation_file(state);
    tidemark_fs::write_file_durably(
        tidemark_fs::std_fs().as_ref(),
        &path,
        format!("{generation}\n").as_bytes(),
        false,
    )
    .map_err(|e| PipelineError::State {
        path,
        message: format!("cannot record the generation: {e}"),
    })
}

/// The generation of the pipeline's `[replica]` table, if it exists and can be read (a
/// replica region that does not answer does not stop the primary: said in the log).
async fn replica_generation(config: &PipelineConfig) -> Option<u64> {
    let url = config.paths.replica_url.as_ref()?;
    match DeltaSink::open_existing(url, &config.pipeline_id).await {
        Ok(Some(replica)) => replica.table_generation().ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(replica = %url, "cannot read the replica's generation (not fenced by it): {e}");
            None
        }
    }
}

/// Generation fencing at start ([`crate::generation::decide`]): refuses a writer of an older
/// generation, or opens a new generation for a failover (the state directory's store and WAL
/// are set aside first). From here on the sink refuses every commit once the table's
/// generation is newer than the returned one.
async fn fence(
    config: &PipelineConfig,
    sink: &mut DeltaSink,
    failover: Option<&FailoverStart>,
    state: &std::path::Path,
) -> Result<u64, PipelineError> {
    use crate::generation::{decide, GenerationCase, GenerationFacts};
    let facts = GenerationFacts {
        table: sink.table_generation()?,
        writer: read_generation(state)?,
        replica: match failover {
            Some(_) => None,
            None => replica_generation(config).await,
        },
        failover: failover.is_some(),
    };
    let case = decide(facts);
    info!(?facts, ?case, "generation decided");
    let generation = match case {
        GenerationCase::Fenced(reason) => {
            tracing::error!(?facts, "{reason}");
            return Err(PipelineError::Fenced {
                table: sink.uri().to_string(),
                reason,
            });
        }
        GenerationCase::Continue { generation } => generation,
        GenerationCase::Adopt { generation } => {
            write_generation(state, generation)?;
            generation
        }
        GenerationCase::Open {
            generation,
            previous,
        } => {
            let reason = failover.map_or("failover", |f| f.reason.as_str());
            crate::failover::set_state_aside(state)
                .map_err(|(path, message)| PipelineError::State { path, message })?;
            let opened = tidemark_connectors::delta::GenerationOpened {
                pipeline_id: config.pipeline_id.clone(),
                generation,
                previous,
                reason: reason.to_string(),
                cluster_id: None,
                opened_at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            let version = sink.open_generation(&opened).await?;
            write_generation(state, generation)?;
            tracing::warn!(generation, previous, %version, table = %sink.uri(), "{} opened generation {generation}: writers of generation {previous} can no longer commit into this table", reason.to_uppercase());
            generation
        }
    };
    sink.set_generation(generation);
    Ok(generation)
}

/// The Kafka source settings of `config`.
pub fn source_config(config: &PipelineConfig) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: config.source.brokers.clone(),
        topics: config.source.topics.clone(),
        group_id: format!("tidemark-{}", config.pipeline_id),
        properties: config.source.properties.clone(),
        only: None,
    }
}

/// What the metrics and the health rules need to know about the run.
fn run_info(config: &PipelineConfig) -> metrics::RunInfo {
    metrics::RunInfo {
        pipeline_id: config.pipeline_id.clone(),
        interval: config.checkpoint.interval(),
        commit_stall_after: config
            .observability
            .commit_stall_after(config.checkpoint.interval()),
        watermark_stuck_after: config.observability.watermark_stuck_after(),
        dedup: config.dedup.is_some(),
    }
}

/// How often the broker's end offsets are copied into the lag metrics.
const ENDS_EVERY: Duration = Duration::from_secs(1);

/// What the metrics see after a checkpoint.
fn after_checkpoint(committer: &Committer) -> metrics::AfterCheckpoint {
    let segments = committer.wal_segments();
    metrics::AfterCheckpoint {
        wal_segments: segments.len() as u64,
        wal_bytes: segments.iter().map(|(_, _, size)| size).sum(),
        wal_appended: committer.wal_bytes(),
        // Held, not counted: an exact count is a pass over the table (`DedupState::len`).
        dedup_keys: committer.dedup_held_keys().map(|n| n as u64),
        watermark: committer.dedup_watermark(),
    }
}

/// The tables a run writes and how records become their rows.
struct Tables {
    sink: DeltaSink,
    dead_letters: Option<DeltaSink>,
    processor: RecordProcessor,
}

/// Opens (or creates) the table and, when bad or late records go there, the dead-letter table;
/// checks the table against the configured columns.
async fn open_tables(
    config: &PipelineConfig,
    sink_options: &SinkOptions,
) -> Result<Tables, PipelineError> {
    let url = config.paths.table_url.clone();
    let table_name = config
        .sink
        .table_name
        .clone()
        .unwrap_or_else(|| config.pipeline_id.clone());
    let sink = open_table(
        &url,
        &config.pipeline_id,
        &table_name,
        config.delta_columns(),
        sink_options,
    )
    .await?;
    check_schema(config, &sink)?;
    let processor = RecordProcessor::new(config, JsonDecoder::new(sink.arrow_schema().clone()))?;
    let wants_dead_letters = config.errors.on_invalid_record == OnInvalidRecord::DeadLetter
        || config
            .dedup
            .as_ref()
            .is_some_and(|d| d.late == OnLate::DeadLetter);
    let dead_letters = if wants_dead_letters {
        let url = config.paths.dead_letter_url.clone();
        let name = format!("{table_name}_dead_letters");
        let dlq = open_table(
            &url,
            &config.pipeline_id,
            &name,
            dead_letter::delta_columns(),
            sink_options,
        )
        .await?;
        info!(table = %dlq.uri(), "dead letters go to this table");
        Some(dlq)
    } else {
        None
    };
    Ok(Tables {
        sink,
        dead_letters,
        processor,
    })
}

/// Connects to Kafka at `start` on a blocking thread; `None` when a stop was asked for first.
async fn connect_source(
    config: &PipelineConfig,
    start: &Positions,
    stored_topic_ids: &std::collections::BTreeMap<String, String>,
    only: Option<std::collections::BTreeSet<tidemark_connectors::TopicPartition>>,
    shutdown: &Shutdown,
) -> Result<Option<KafkaSource>, PipelineError> {
    let mut source_config = source_config(config);
    source_config.only = only;
    let start = start.clone();
    let stored_topic_ids = stored_topic_ids.clone();
    let stop = shutdown.clone();
    let mut connect = tokio::task::spawn_blocking(move || {
        KafkaSource::connect_until(&source_config, &start, &stored_topic_ids, &|| {
            stop.requested()
        })
    });
    loop {
        if shutdown.requested() {
            return Ok(None);
        }
        tokio::select! {
            joined = &mut connect => {
                return match joined.map_err(|e| PipelineError::Task {
                    what: "connecting to Kafka",
                    message: e.to_string(),
                })? {
                    Ok(source) => Ok(Some(source)),
                    Err(_) if shutdown.requested() => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
            _ = tokio::time::sleep(POLL_WAIT) => {}
        }
    }
}

/// The epoch loop: read into the open epoch, seal and commit it when it is due, until asked to
/// stop or caught up. Returns why it stopped.
#[allow(clippy::too_many_arguments)]
async fn run_epochs(
    config: &PipelineConfig,
    options: &RunOptions,
    shutdown: &Shutdown,
    processor: &RecordProcessor,
    committer: &mut Committer,
    source: &mut KafkaSource,
    open: &mut OpenEpoch,
    stats: &mut RunStats,
    summary: &mut RunSummary,
) -> Result<&'static str, PipelineError> {
    let cp = &config.checkpoint;
    let metrics_on = metrics::get().is_some();
    let mut ends_at = Instant::now();
    if metrics_on {
        metrics::partition_ends(&source.partition_ends());
    }
    let mut catching_up = options.until_caught_up.then(|| {
        Progress::new(
            "reading until caught up",
            "records",
            source.lag_at_start(&open.end).max(0) as u64,
        )
    });
    loop {
        let stop = if shutdown.requested() {
            Some("shutdown")
        } else if options.until_caught_up && source.caught_up() {
            Some("caught_up")
        } else {
            None
        };
        if open.is_due(cp) || (stop.is_some() && open.records > 0) {
            let mut next = OpenEpoch::new(open.epoch + 1, open.end.clone());
            next.encode_while_reading(committer.sink().arrow_schema().clone())?;
            let (epoch_age, sealing) = (open.age(), Instant::now());
            let sealed = committer.seal(std::mem::replace(open, next), processor)?;
            metrics::epoch_sealed(epoch_age, sealing.elapsed(), open.epoch, &open.start);
            if stop.is_some() {
                // Sealed because the run stops (the last epoch, unless the read-ahead fills
                // another): the state gathered before it is written while it commits.
                committer.write_state_soon();
            }
            // Pipelined: the next epoch (`open`) is read, logged and decoded while the sealed
            // one commits; it is sealed only after that commit's checkpoint (see `read_ahead`).
            let read_before = open.records;
            let ahead = ReadAhead {
                source: &mut *source,
                open: &mut *open,
                processor,
                limits: ReadAheadLimits::of(cp),
            };
            let report = committer.commit_sealed(sealed, Some(ahead)).await?;
            if let Some(p) = catching_up.as_mut() {
                p.add(open.records - read_before);
            }
            metrics::checkpointed(&report, &after_checkpoint(committer));
            info!(
                epoch = report.epoch,
                version = ?report.version,
                records = report.counts.read,
                rows = report.counts.written,
                skipped = report.counts.dead_lettered,
                duplicates = report.counts.duplicates,
                late = report.counts.late,
                dead_letters = report.dead_letters,
                files = report.files,
                commit_ms = report.commit_micros / 1000,
                checkpoint_us = report.checkpoint_micros,
                polls_during_commit = report.polls_during_commit,
                "epoch committed"
            );
            stats.note(&report, summary, true, Instant::now());
            continue;
        }
        if let Some(why) = stop {
            if let Some(p) = catching_up.take() {
                p.finish();
            }
            return Ok(why);
        }
        if metrics_on && ends_at.elapsed() >= ENDS_EVERY {
            ends_at = Instant::now();
            metrics::partition_ends(&source.partition_ends());
        }
        let want = (cp.max_records as u64 - open.records).min(READ_BATCH as u64) as usize;
        let wait = open.time_left(cp).min(POLL_WAIT);
        let read = committer
            .read_batch(source, open, processor, want.max(1), wait)
            .await?;
        if let (true, Some(p)) = (read > 0, catching_up.as_mut()) {
            p.add(read as u64);
        }
    }
}

/// The CPU time the process and the calling thread had used when a run started: the run's
/// figures are the differences at its end (a process may run a pipeline more than once, as a
/// worker does).
struct CpuAtStart {
    process: Option<Duration>,
    thread: Option<Duration>,
    /// The thread's run delay ([`crate::cpu_time::this_thread_waiting`]).
    thread_waiting: Option<Duration>,
    thread_id: std::thread::ThreadId,
}

impl CpuAtStart {
    fn now() -> Self {
        Self {
            process: crate::cpu_time::process(),
            thread: crate::cpu_time::this_thread(),
            thread_waiting: crate::cpu_time::this_thread_waiting(),
            thread_id: std::thread::current().id(),
        }
    }

    /// The process's CPU time since the start.
    fn process_since(&self) -> Option<Duration> {
        Some(crate::cpu_time::process()?.saturating_sub(self.process?))
    }

    /// The calling thread's CPU time since the start, if it is the thread that started
    /// ([`CpuAtStart::on_the_starting_thread`]).
    fn thread_since(&self) -> Option<Duration> {
        self.on_the_starting_thread(crate::cpu_time::this_thread, self.thread)
    }

    /// The calling thread's time waiting for a core since the start, on the same terms.
    fn thread_waiting_since(&self) -> Option<Duration> {
        self.on_the_starting_thread(crate::cpu_time::this_thread_waiting, self.thread_waiting)
    }

    /// `now()` less `at_start`, if the calling thread is the one that started: `None` for a
    /// run whose future moved to another thread (spawned on a multi-threaded runtime rather
    /// than driven by `block_on`), whose reading thread this cannot tell.
    fn on_the_starting_thread(
        &self,
        now: impl FnOnce() -> Option<Duration>,
        at_start: Option<Duration>,
    ) -> Option<Duration> {
        if std::thread::current().id() != self.thread_id {
            return None;
        }
        Some(now()?.saturating_sub(at_start?))
    }
}

/// What a run measures as it goes, folded into the summary at the end.
struct RunStats {
    started: Instant,
    cpu_at_start: CpuAtStart,
    /// What became of the records this run committed.
    run: Counts,
    latencies: Vec<u64>,
    checkpoint_micros: u64,
}

impl RunStats {
    fn new(started: Instant, cpu_at_start: CpuAtStart) -> Self {
        Self {
            started,
            cpu_at_start,
            run: Counts::default(),
            latencies: Vec::new(),
            checkpoint_micros: 0,
        }
    }

    /// Counts a committed epoch (`from_source`: read in this run, not replayed), whose commit
    /// landed at `landed` (what the first-commit times measure).
    fn note(
        &mut self,
        report: &EpochReport,
        summary: &mut RunSummary,
        from_source: bool,
        landed: Instant,
    ) {
        if report.version.is_some() {
            summary.epochs_committed += 1;
            let ms = landed.saturating_duration_since(self.started).as_millis() as u64;
            if from_source && summary.first_source_commit_ms.is_none() {
                summary.first_source_commit_ms = Some(ms);
            }
            if summary.first_commit_ms.is_none() {
                summary.first_commit_ms = Some(ms);
                info!(
                    ms,
                    case = summary.recovery.case,
                    replayed = summary.recovery.replayed_records,
                    "first commit after start"
                );
            }
        }
        self.run += report.counts;
        summary.dead_letters += report.dead_letters;
        summary.files_written += report.files;
        self.latencies.push(report.commit_micros);
        self.checkpoint_micros += report.checkpoint_micros;
    }

    /// Fills the summary's timings, state and totals at the end of the run.
    fn finish(&mut self, summary: &mut RunSummary, committer: &Committer) {
        summary.table_version = committer.table_version();
        summary.elapsed_secs = self.started.elapsed().as_secs_f64();
        self.latencies.sort_unstable();
        let latencies = &self.latencies;
        let pct = |p: f64| {
            (!latencies.is_empty()).then(|| {
                latencies[((latencies.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
            })
        };
        summary.commit_ms_p50 = pct(0.5);
        summary.commit_ms_p99 = pct(0.99);
        summary.checkpoint_time_share =
            self.checkpoint_micros as f64 / 1e6 / summary.elapsed_secs.max(1e-9);
        if let Some(d) = committer.dedup() {
            summary.dedup_keys = Some(d.state.len() as u64);
            summary.watermark = d.state.watermark();
            summary.dedup_verdict_share =
                Some(d.cost.time.as_secs_f64() / summary.elapsed_secs.max(1e-9));
            summary.dedup_table_growth_ms = Some(d.cost.table_growth.as_secs_f64() * 1e3);
            summary.dedup_sweep_ms = Some(d.cost.sweep.as_secs_f64() * 1e3);
            summary.dedup_verdict_cpu_secs = Some(d.cost.cpu.as_secs_f64());
        }
        summary.dedup_state_writer_cpu_secs = committer.state_writer_cpu().map(|t| t.as_secs_f64());
        summary.wal_bytes = committer.wal_bytes();
        summary.commit_conflicts = committer.sink().lost_races();
        summary.dead_letters_already_held = committer.dead_letters_already_held();
        summary.peak_rss_bytes = peak_rss_bytes();
        summary.cpu_secs = self.cpu_at_start.process_since().map(|t| t.as_secs_f64());
        summary.reading_thread_cpu_secs = self.cpu_at_start.thread_since().map(|t| t.as_secs_f64());
        summary.reading_thread_waiting_secs = self
            .cpu_at_start
            .thread_waiting_since()
            .map(|t| t.as_secs_f64());
        summary.totals = committer.totals();
        // The summary's per-run fields are its JSON contract; they come from one `Counts`.
        summary.records_read = self.run.read;
        summary.rows_written = self.run.written;
        summary.records_skipped = self.run.dead_lettered;
        summary.duplicates = self.run.duplicates;
        summary.late = self.run.late;
    }
}

/// Opens (or creates) a table, retrying transient storage errors with the commit's bounded
/// backoff (a log line per retry).
async fn open_table(
    url: &url::Url,
    pipeline_id: &str,
    name: &str,
    columns: Vec<deltalake::kernel::StructField>,
    options: &SinkOptions,
) -> Result<DeltaSink, DeltaSinkError> {
    let what = format!("the opening of table {url}");
    // Opening happens before the run can be asked to stop through the committer: a flag
    // nobody raises.
    let stop = Shutdown::new();
    retry_transient::<_, std::convert::Infallible>(&what, &stop, async || {
        DeltaSink::open_or_create_with(url, pipeline_id, name, columns.clone(), options.clone())
            .await
            .map_err(Retry::Sink)
    })
    .await
    .map_err(|e| match e {
        Retry::Sink(e) => e,
        Retry::Other(never) => match never {},
    })
}

/// Every configured column must exist in the table with the same type and nullability.
fn check_schema(config: &PipelineConfig, sink: &DeltaSink) -> Result<(), ProcessError> {
    let table = sink.arrow_schema();
    for want in config.arrow_fields() {
        let mismatch = |message: String| ProcessError::SchemaMismatch {
            table: sink.uri().to_string(),
            message,
        };
        let Ok(have) = table.field_with_name(want.name()) else {
            return Err(mismatch(format!(
                "configured column {:?} is not in the table (table columns: {})",
                want.name(),
                table
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if have.data_type() != want.data_type() || have.is_nullable() != want.is_nullable() {
            return Err(mismatch(format!(
                "column {:?} is {} (nullable: {}) in the table but {} (nullable: {}) in the config",
                want.name(),
                have.data_type(),
                have.is_nullable(),
                want.data_type(),
                want.is_nullable()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit counts as the run's first at the moment it landed, not when it is noted: an
    /// epoch recovery committed is noted only after recovery's and the run's own start-up
    /// that follow it.
    #[test]
    fn the_first_commit_counts_from_when_it_landed() {
        let started = Instant::now();
        let mut stats = RunStats::new(started, CpuAtStart::now());
        let mut summary = RunSummary::default();
        let report = EpochReport {
            version: Some(TableVersion::new(3)),
            ..EpochReport::default()
        };
        std::thread::sleep(Duration::from_millis(60));
        stats.note(
            &report,
            &mut summary,
            false,
            started + Duration::from_millis(5),
        );
        assert_eq!(summary.first_commit_ms, Some(5));
        assert_eq!(summary.first_source_commit_ms, None, "a replayed epoch");
        stats.note(
            &report,
            &mut summary,
            true,
            started + Duration::from_millis(7),
        );
        assert_eq!(
            summary.first_commit_ms,
            Some(5),
            "the first stays the first"
        );
        assert_eq!(summary.first_source_commit_ms, Some(7));
    }
}
