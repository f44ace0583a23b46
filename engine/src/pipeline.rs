//! The pipeline runtime: Kafka -> JSON decode -> Parquet -> one Delta commit per epoch.
//!
//! Exactly-once rests on one invariant, kept in [`run`]: an epoch's rows and the positions at its
//! end become visible in ONE Delta commit (with the `txn` action `{pipeline_id, epoch}`), and a
//! restart resumes from the positions of the newest such commit. A crash anywhere therefore
//! either loses the whole uncommitted epoch (re-read on restart) or none of it; nothing is
//! written twice because an epoch whose txn version is already in the table is never committed
//! again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tidemark_connectors::decode::{InvalidRecord, JsonDecoder};
use tidemark_connectors::delta::{
    CommitOutcome, DeltaSink, DeltaSinkError, EpochCommitInfo, SkippedRecord,
};
use tidemark_connectors::kafka::{KafkaSource, KafkaSourceConfig, KafkaSourceError};
use tidemark_connectors::source::Source;
use tidemark_connectors::Positions;
use tracing::{info, warn};

use crate::config::{ConfigError, OnInvalidRecord, PipelineConfig};
use crate::fault::{self, CrashPoint};

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
    #[error("{record}; stopping because errors.on_invalid_record = \"fail\" (nothing of epoch {epoch} was committed; set it to \"skip\" to skip and list such records in the commitInfo)")]
    InvalidRecord {
        /// The first bad record of the epoch.
        record: InvalidRecord,
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
    /// Records skipped as invalid.
    pub records_skipped: u64,
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
/// or until `shutdown` is requested.
pub async fn run(
    config: &PipelineConfig,
    config_path: &Path,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let url = config.table_url(config_path)?;
    let table_name = config
        .sink
        .table_name
        .clone()
        .unwrap_or_else(|| config.pipeline_id.clone());
    let mut sink = DeltaSink::open_or_create(
        &url,
        &config.pipeline_id,
        &table_name,
        config.delta_columns(),
    )
    .await?;
    check_schema(config, &sink)?;

    // Where to resume: the newest commit of this pipeline in the table.
    let (txn_version, progress) = sink.progress().await?;
    let (start_positions, last_epoch) = match (&progress, txn_version) {
        (None, None) => {
            info!(pipeline = %config.pipeline_id, table = %sink.uri(), "no earlier commit of this pipeline: starting from the beginning of each partition");
            (Positions::new(), 0)
        }
        (Some(p), Some(v)) if p.info.epoch == v => {
            info!(
                pipeline = %config.pipeline_id,
                epoch = v,
                table_version = p.table_version,
                positions = %p.info.end_positions,
                "resuming after the newest committed epoch"
            );
            (p.info.end_positions.clone(), v)
        }
        (p, v) => {
            return Err(PipelineError::Progress {
                table: sink.uri().to_string(),
                message: format!(
                    "txn version for pipeline {:?} is {:?} but its newest commitInfo records epoch {:?}; \
                     the table's log was altered or another writer uses this pipeline id",
                    config.pipeline_id,
                    v,
                    p.as_ref().map(|p| p.info.epoch)
                ),
            })
        }
    };

    let source_config = KafkaSourceConfig {
        brokers: config.source.brokers.clone(),
        topics: config.source.topics.clone(),
        group_id: format!("tidemark-{}", config.pipeline_id),
        properties: config.source.properties.clone(),
    };
    let start_for_connect = start_positions.clone();
    let mut source = tokio::task::spawn_blocking(move || {
        KafkaSource::connect(&source_config, &start_for_connect)
    })
    .await
    .map_err(|e| PipelineError::Progress {
        table: sink.uri().to_string(),
        message: format!("source connect task failed: {e}"),
    })??;
    info!(
        lag = source.lag_at_start(&start_positions),
        "records waiting at start"
    );

    let decoder = JsonDecoder::new(sink.arrow_schema().clone());
    let mut summary = RunSummary {
        pipeline_id: config.pipeline_id.clone(),
        first_epoch: last_epoch + 1,
        positions: start_positions.clone(),
        ..RunSummary::default()
    };
    let mut epoch = last_epoch + 1;
    let mut positions = start_positions;
    let interval = config.batch.interval();
    summary.stopped_because = loop {
        if shutdown.requested() {
            break "shutdown";
        }
        if options.until_caught_up && source.caught_up() {
            break "caught_up";
        }
        let records = source
            .next_batch(config.batch.max_records, interval)
            .await?;
        if records.is_empty() {
            continue;
        }
        let end_positions = source.positions().clone();
        let epoch_started = Instant::now();
        let decoded = decoder
            .decode(&records)
            .map_err(|source| PipelineError::Decode { epoch, source })?;
        if let Some(first) = decoded.invalid.first() {
            if config.errors.on_invalid_record == OnInvalidRecord::Fail {
                return Err(PipelineError::InvalidRecord {
                    record: first.clone(),
                    epoch,
                });
            }
            for bad in &decoded.invalid {
                warn!(epoch, "skipping {bad}");
            }
        }
        fault::hit(CrashPoint::BeforeParquetWrite);
        let (adds, write) = match decoded.batch {
            Some(batch) => sink.write_files(batch).await?,
            None => (Vec::new(), Default::default()),
        };
        fault::hit(CrashPoint::AfterParquetWrite);
        let info = EpochCommitInfo {
            pipeline_id: config.pipeline_id.clone(),
            epoch,
            start_positions: positions.clone(),
            end_positions: end_positions.clone(),
            records_read: records.len() as u64,
            rows_written: write.rows,
            records_skipped: decoded.invalid.len() as u64,
            skipped: decoded.invalid.iter().map(skipped).collect(),
        };
        match sink.commit_epoch(adds, &info).await? {
            CommitOutcome::Committed { version } => {
                fault::hit(CrashPoint::AfterDeltaCommit);
                info!(
                    epoch,
                    version,
                    records = info.records_read,
                    rows = info.rows_written,
                    skipped = info.records_skipped,
                    files = write.files,
                    bytes = write.bytes,
                    write_ms = write.micros / 1000,
                    epoch_ms = epoch_started.elapsed().as_millis() as u64,
                    "epoch committed"
                );
                summary.table_version = Some(version);
            }
            CommitOutcome::AlreadyCommitted { txn_version } => {
                return Err(PipelineError::Progress {
                    table: sink.uri().to_string(),
                    message: format!(
                        "epoch {epoch} is already in the table (txn version {txn_version}): another \
                         process writes with pipeline id {:?}; stopping without writing it again",
                        config.pipeline_id
                    ),
                });
            }
        }
        summary.epochs_committed += 1;
        summary.records_read += info.records_read;
        summary.rows_written += info.rows_written;
        summary.records_skipped += info.records_skipped;
        summary.files_written += write.files as u64;
        positions = end_positions;
        epoch += 1;
    };
    summary.positions = positions;
    if summary.table_version.is_none() {
        summary.table_version = sink.table_version();
    }
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    info!(
        stopped_because = summary.stopped_because,
        epochs = summary.epochs_committed,
        records = summary.records_read,
        secs = format!("{:.2}", summary.elapsed_secs),
        "pipeline stopped"
    );
    Ok(summary)
}

fn skipped(r: &InvalidRecord) -> SkippedRecord {
    SkippedRecord {
        topic: r.topic.clone(),
        partition: r.partition,
        offset: r.offset,
        reason: r.reason.as_str().to_string(),
    }
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
