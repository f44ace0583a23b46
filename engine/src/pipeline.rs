//! The pipeline runtime: Kafka -> WAL -> seal -> Parquet + one Delta commit -> checkpoint ->
//! WAL truncation, one epoch at a time (the epoch protocol of ARCHITECTURE.md).
//!
//! Exactly-once rests on two invariants. An epoch's content is fixed at its seal (its WAL
//! records, in order), and decoding is a pure function of it, so a redo after a crash writes the
//! same rows. And an epoch's rows and end positions become visible in ONE Delta commit carrying
//! `txn = epoch`, which is never made twice: recovery ([`crate::recovery`]) compares the
//! checkpoint, the WAL and the table's txn version before anything is written.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tidemark_checkpoint::{StoreError, WalError};
use tidemark_connectors::dead_letter;
use tidemark_connectors::decode::{InvalidRecord, JsonDecoder};
use tidemark_connectors::delta::{DeltaSink, DeltaSinkError, SinkOptions};
use tidemark_connectors::kafka::{KafkaSource, KafkaSourceConfig, KafkaSourceError};
use tidemark_connectors::source::Source;
use tidemark_connectors::Positions;
use tracing::{info, warn};

use crate::committer::EpochReport;
use crate::config::{ConfigError, OnInvalidRecord, OnLate, PipelineConfig};
use crate::epoch::{OpenEpoch, RecordProcessor};
use crate::io_faults;
use crate::recovery::{self, RecoveryOutcome, StartOptions};
use crate::state_lock::{RunId, StateLock, StateLockError};

/// Most records taken from the source per WAL group commit.
const POLL_BATCH: usize = 8192;
/// Longest wait for records before checking for a stop request or a due epoch.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Why a pipeline stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Delta table could not be read or written.
    #[error(transparent)]
    Sink(#[from] DeltaSinkError),
    /// Kafka could not be read.
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    /// A record did not decode and `errors.on_invalid_record = "fail"`.
    #[error("{record}; stopping because errors.on_invalid_record = \"fail\" (nothing of epoch {epoch} was committed; set it to \"dead_letter\" to keep such records in the dead-letter table and go on)")]
    InvalidRecord {
        /// The first bad record of the epoch.
        record: InvalidRecord,
        /// The epoch it was in.
        epoch: i64,
    },
    /// A record was rejected (too large, no dedup key or event time) and
    /// `errors.on_invalid_record = "fail"`.
    #[error("record {record} is invalid ({reason}): {message}; stopping because errors.on_invalid_record = \"fail\" (nothing of epoch {epoch} was committed; set it to \"dead_letter\" to keep such records in the dead-letter table)")]
    Rejected {
        /// `topic/partition@offset`.
        record: String,
        /// Reason category.
        reason: &'static str,
        /// What is wrong.
        message: String,
        /// The epoch it was in.
        epoch: i64,
    },
    /// The decoder itself failed (not a bad record: a bug or an unsupported schema).
    #[error("decoding epoch {epoch} failed: {source}")]
    Decode {
        /// The epoch.
        epoch: i64,
        /// Arrow's error.
        source: arrow::error::ArrowError,
    },
    /// The existing table does not match the configured columns.
    #[error("table {table} does not match the config: {message}")]
    SchemaMismatch {
        /// The table URI.
        table: String,
        /// Which column differs and how.
        message: String,
    },
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state directory is locked by another process, or its lock cannot be taken.
    #[error(transparent)]
    Locked(#[from] StateLockError),
    /// The state directory (WAL, store) is not what recovery expects.
    #[error("state {path}: {message}")]
    State {
        /// The file or place at fault.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Recovery refuses to start (the table and the checkpoint disagree).
    #[error("recovery refused to start: {message}")]
    Refused {
        /// Both numbers and what to do.
        message: String,
    },
    /// A background task of the run failed (panicked or was cancelled).
    #[error("{what} failed: {message}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// Why it failed.
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
}

/// What a run did; printed as one JSON line when `tidemark run` ends.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// The pipeline.
    pub pipeline_id: String,
    /// First epoch this run worked on.
    pub first_epoch: i64,
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
    /// Keys in dedup state at the end of the run.
    pub dedup_keys: Option<u64>,
    /// The watermark at the end of the run (micros).
    pub watermark: Option<i64>,
    /// Parquet files written.
    pub files_written: u64,
    /// Newest table version after the run.
    pub table_version: Option<u64>,
    /// Positions at the end of the run.
    pub positions: Positions,
    /// Wall time of the run in seconds.
    pub elapsed_secs: f64,
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
    /// Totals over the pipeline's life, as in the newest checkpoint.
    pub totals: Totals,
    /// Bytes this run appended to the WAL.
    pub wal_bytes: u64,
    /// Peak resident memory of the process (VmHWM), in bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Totals that must add up: `read = written + duplicates + late + dead_lettered`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    /// Records read.
    pub read: u64,
    /// Rows written.
    pub written: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late records dropped.
    pub late: u64,
    /// Records skipped or dead-lettered.
    pub dead_lettered: u64,
}

/// A flag set by Ctrl-C / SIGTERM: the current epoch finishes, then the run stops.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag nobody has raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop after its current epoch.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`Shutdown::request`] was called.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs the pipeline described by `config` (read from `config_path`) until caught up (if asked)
/// or until `shutdown` is requested. Recovery runs first.
pub async fn run(
    config: &PipelineConfig,
    config_path: &Path,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    // First of all: the state directory is this process's alone, or nothing is touched.
    let state = config.state_dir(config_path);
    let lock = StateLock::acquire(&state, RunId::generate())?;
    info!(state = %state.display(), run = %lock.run(), "state directory locked");
    let sink_options = SinkOptions {
        fs: io_faults::pipeline_fs().map_err(|message| PipelineError::State {
            path: state.clone(),
            message,
        })?,
        run_id: *lock.run(),
    };
    let url = config.table_url(config_path)?;
    let table_name = config
        .sink
        .table_name
        .clone()
        .unwrap_or_else(|| config.pipeline_id.clone());
    let mut sink = DeltaSink::open_or_create_with(
        &url,
        &config.pipeline_id,
        &table_name,
        config.delta_columns(),
        sink_options.clone(),
    )
    .await?;
    // The topic ids recorded with the positions: recorded again by commits (including a redo
    // during recovery) and checked against the broker's when the source connects.
    sink.set_topic_ids(sink.recorded_topic_ids().await?);
    check_schema(config, &sink)?;
    let processor = RecordProcessor::new(config, JsonDecoder::new(sink.arrow_schema().clone()))?;
    let dead_letter_sink = if config.errors.on_invalid_record == OnInvalidRecord::DeadLetter
        || config
            .dedup
            .as_ref()
            .is_some_and(|d| d.late == OnLate::DeadLetter)
    {
        let url = config.dead_letter_url(config_path)?;
        let name = format!("{table_name}_dead_letters");
        let dlq = DeltaSink::open_or_create_with(
            &url,
            &config.pipeline_id,
            &name,
            dead_letter::delta_columns(),
            sink_options.clone(),
        )
        .await?;
        info!(table = %dlq.uri(), "dead letters go to this table");
        Some(dlq)
    } else {
        None
    };
    let recovery_started = Instant::now();
    let (mut committer, mut open, mut recovered) = recovery::recover(
        config,
        &lock,
        &sink_options.fs,
        sink,
        dead_letter_sink,
        &processor,
        StartOptions {
            rewind_to: options.rewind_to,
            accept_wal_damage: options.accept_wal_damage,
        },
    )
    .await?;
    recovered.recovery_ms = recovery_started.elapsed().as_millis() as u64;
    let committed_at_start = recovered.committed_at_start.take();
    info!(
        case = recovered.case,
        ms = recovered.recovery_ms,
        replayed = recovered.replayed_records,
        next_epoch = recovered.next_epoch,
        "recovery done"
    );
    let mut summary = RunSummary {
        pipeline_id: config.pipeline_id.clone(),
        first_epoch: open.epoch as i64,
        positions: open.end.clone(),
        recovery: recovered.clone(),
        ..RunSummary::default()
    };
    let mut latencies = Vec::new();
    let mut checkpoint_micros = 0u64;
    let mut note_epoch = |report: &EpochReport, summary: &mut RunSummary, from_source: bool| {
        if report.version.is_some() {
            summary.epochs_committed += 1;
            if from_source && summary.first_source_commit_ms.is_none() {
                summary.first_source_commit_ms = Some(started.elapsed().as_millis() as u64);
            }
            if summary.first_commit_ms.is_none() {
                let ms = started.elapsed().as_millis() as u64;
                summary.first_commit_ms = Some(ms);
                info!(
                    ms,
                    case = summary.recovery.case,
                    replayed = summary.recovery.replayed_records,
                    "first commit after start"
                );
            }
        }
        summary.records_read += report.records;
        summary.rows_written += report.rows;
        summary.records_skipped += report.skipped;
        summary.duplicates += report.duplicates;
        summary.late += report.late;
        summary.dead_letters += report.dead_letters;
        summary.files_written += report.files;
        latencies.push(report.commit_micros);
        checkpoint_micros += report.checkpoint_micros;
    };
    if let Some(report) = committed_at_start {
        // A redone or resumed epoch committed during recovery: this run's first commit.
        note_epoch(&report, &mut summary, false);
    }

    let source_config = KafkaSourceConfig {
        brokers: config.source.brokers.clone(),
        topics: config.source.topics.clone(),
        group_id: format!("tidemark-{}", config.pipeline_id),
        properties: config.source.properties.clone(),
    };
    let start_for_connect = open.end.clone();
    let stored_topic_ids = committer.sink.topic_ids().clone();
    let stop = shutdown.clone();
    let mut connect = tokio::task::spawn_blocking(move || {
        KafkaSource::connect_until(
            &source_config,
            &start_for_connect,
            &stored_topic_ids,
            &|| stop.requested(),
        )
    });
    // A stop asked for during recovery or while the broker does not answer ends the run here
    // (recovery's own commits are complete; nothing is half done).
    let stopped_early = |summary: &mut RunSummary| {
        info!("stop requested before the source connected: stopping");
        summary.stopped_because = "shutdown";
        summary.elapsed_secs = started.elapsed().as_secs_f64();
    };
    let mut source = loop {
        if shutdown.requested() {
            stopped_early(&mut summary);
            return Ok(summary);
        }
        tokio::select! {
            joined = &mut connect => {
                match joined.map_err(|e| PipelineError::Task {
                    what: "connecting to Kafka",
                    message: e.to_string(),
                })? {
                    Ok(source) => break source,
                    Err(_) if shutdown.requested() => {
                        stopped_early(&mut summary);
                        return Ok(summary);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ = tokio::time::sleep(POLL_WAIT) => {}
        }
    };
    committer.sink.set_topic_ids(source.topic_ids());
    if let Some(d) = committer.dedup.as_mut() {
        d.tracker.register(source.partitions(), Instant::now());
    }
    info!(
        lag = source.lag_at_start(&open.end),
        epoch = open.epoch,
        replayed = open.records,
        "records waiting at start"
    );

    let cp = &config.checkpoint;
    summary.stopped_because = loop {
        let stop = if shutdown.requested() {
            Some("shutdown")
        } else if options.until_caught_up && source.caught_up() {
            Some("caught_up")
        } else {
            None
        };
        if open.is_due(cp) || (stop.is_some() && open.records > 0) {
            let next = OpenEpoch::new(open.epoch + 1, open.end.clone());
            let sealed = committer.seal(std::mem::replace(&mut open, next))?;
            let report = committer.commit_sealed(sealed, Some(&mut source)).await?;
            info!(
                epoch = report.epoch,
                version = ?report.version,
                records = report.records,
                rows = report.rows,
                skipped = report.skipped,
                duplicates = report.duplicates,
                late = report.late,
                dead_letters = report.dead_letters,
                files = report.files,
                commit_ms = report.commit_micros / 1000,
                checkpoint_us = report.checkpoint_micros,
                polls_during_commit = report.polls_during_commit,
                "epoch committed"
            );
            note_epoch(&report, &mut summary, true);
            continue;
        }
        if let Some(why) = stop {
            break why;
        }
        let want = (cp.max_records as u64 - open.records).min(POLL_BATCH as u64) as usize;
        let wait = open.time_left(cp).min(POLL_WAIT);
        let records = source.next_batch(want.max(1), wait).await?;
        let added = source.take_added_partitions();
        if let (false, Some(d)) = (added.is_empty(), committer.dedup.as_mut()) {
            d.tracker.register(added, Instant::now());
        }
        if records.is_empty() {
            continue;
        }
        committer.log_records(open.epoch, &records)?;
        open.add(&records, &processor, committer.dedup.as_mut())?;
    };
    summary.positions = open.end.clone();
    summary.table_version = committer.table_version.map(|v| v as u64);
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        (!latencies.is_empty())
            .then(|| latencies[((latencies.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0)
    };
    summary.commit_ms_p50 = pct(0.5);
    summary.commit_ms_p99 = pct(0.99);
    summary.checkpoint_time_share = checkpoint_micros as f64 / 1e6 / summary.elapsed_secs.max(1e-9);
    if let Some(d) = &committer.dedup {
        summary.dedup_keys = Some(d.state.len() as u64);
        summary.watermark = d.state.watermark();
    }
    summary.wal_bytes = committer.wal_bytes;
    summary.peak_rss_bytes = peak_rss_bytes();
    let t = committer.totals;
    summary.totals = Totals {
        read: t.read,
        written: t.written,
        duplicates: t.duplicates,
        late: t.late,
        dead_lettered: t.dead_lettered,
    };
    info!(
        stopped_because = summary.stopped_because,
        epochs = summary.epochs_committed,
        records = summary.records_read,
        secs = format!("{:.2}", summary.elapsed_secs),
        "pipeline stopped"
    );
    Ok(summary)
}

/// Every configured column must exist in the table with the same type and nullability.
fn check_schema(config: &PipelineConfig, sink: &DeltaSink) -> Result<(), PipelineError> {
    let table = sink.arrow_schema();
    for want in config.arrow_fields() {
        let mismatch = |message: String| PipelineError::SchemaMismatch {
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

/// Waits for Ctrl-C or SIGTERM and raises `shutdown`; a second signal exits at once.
pub fn install_signal_handlers(shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                info!("stop requested: finishing the current epoch, then stopping (signal again to exit at once)");
                shutdown.request();
            } else {
                warn!("second stop signal: exiting now; the unfinished epoch will be re-read on restart");
                std::process::exit(130);
            }
        }
    });
}
