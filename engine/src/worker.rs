//! One worker of a pipeline that several processes share (`source.group`, `tidemark run
//! --worker-id`): scale-out through a Kafka consumer group.
//!
//! The worker joins the group ([`GroupMembership`]) and runs the pipeline ([`pipeline::run`])
//! over the partitions the group gives it, one run per assignment: when the assignment
//! changes, the run stops like a shutdown (its open epoch is sealed and committed), the worker
//! lets go of what it owned ([`GroupMembership::release`], which lets a waiting revoke finish)
//! and starts a new run over its new partitions. Every run starts from the table
//! ([`crate::protocol::decide_for_worker`]): each partition at its claim, whichever worker
//! wrote it. The table, not the group, is what keeps two workers from committing one
//! partition: a commit covering a partition another worker claimed since is refused
//! ([`PartitionTaken`]); the worker then starts a new run from the claims, and the refused
//! epoch's records are re-read by their owner.
//!
//! Each worker has its own state directory (`<state dir>/workers/<id>`), WAL, checkpoint store
//! and txn appId (`<pipeline_id>.<id>`); see [`crate::config::PipelineConfig::as_worker`].

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tidemark_connectors::delta::{DeltaSink, RunId, SinkOptions};
use tidemark_connectors::kafka_group::{GroupMembership, GroupSettings, DEFAULT_REVOKE_WAIT};
use tidemark_connectors::partition_claims::PartitionTaken;
use tidemark_connectors::Epoch;
use tracing::{info, warn};

use crate::config::PipelineConfig;
use crate::pipeline::{self, PipelineError, RunOptions};
use crate::shutdown::Shutdown;

/// How often a run checks whether the group changed its assignment.
const ASSIGNMENT_POLL: Duration = Duration::from_millis(50);
/// How often a worker whose partitions are read to the end checks, with `--until-caught-up`,
/// whether the whole pipeline is.
const CAUGHT_UP_POLL: Duration = Duration::from_millis(500);
/// How long the partition ends may take to read at a worker's start.
const ENDS_TIMEOUT: Duration = Duration::from_secs(15);

/// `--until-caught-up` for a worker: the end of every partition of the pipeline's topics when
/// the worker started. The worker stops once the table's claims reach all of them (its own
/// partitions being read to the end is not enough: a partition another worker was given
/// while leaving would be left unread).
struct CaughtUpTarget {
    ends: Vec<(tidemark_connectors::TopicPartition, i64)>,
    sink: Option<tidemark_connectors::delta::DeltaSink>,
}

impl CaughtUpTarget {
    async fn reached(
        &mut self,
        config: &PipelineConfig,
        pipeline: &str,
    ) -> Result<bool, PipelineError> {
        if self.sink.is_none() {
            self.sink = tidemark_connectors::delta::DeltaSink::open_existing(
                &config.paths.table_url,
                &config.pipeline_id,
            )
            .await?;
        }
        let Some(sink) = self.sink.as_mut() else {
            return Ok(self.ends.iter().all(|(_, end)| *end == 0));
        };
        let partitions = self.ends.iter().map(|(tp, _)| tp.clone()).collect();
        let claims = sink.partition_claims(pipeline, &partitions).await?;
        Ok(self
            .ends
            .iter()
            .all(|(tp, end)| claims.get(&tp.topic, tp.partition).unwrap_or(0) >= *end))
    }
}

/// What a worker did; printed as one JSON line when `tidemark run --worker-id` ends.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerSummary {
    /// The pipeline the workers share.
    pub pipeline_id: String,
    /// This worker.
    pub worker_id: String,
    /// Runs started (one per assignment, and one after each refused commit).
    pub runs: u64,
    /// Runs ended because the group changed this worker's partitions.
    pub rebalances: u64,
    /// Commits the table refused because another worker had claimed a partition since.
    pub stale_commits_refused: u64,
    /// Epochs committed over all runs.
    pub epochs_committed: u64,
    /// Records read over all runs.
    pub records_read: u64,
    /// Rows written over all runs.
    pub rows_written: u64,
    /// Commit tries that lost the race to another commit (another worker's, mostly) and were
    /// tried again, over the runs that ended normally.
    pub commit_conflicts: u64,
    /// Seconds from the worker's start to its end.
    pub elapsed_secs: f64,
    /// The partitions owned when the worker stopped.
    pub partitions: Vec<String>,
    /// Why the worker ended: `shutdown` or `caught_up`.
    pub stopped_because: &'static str,
}

/// Before the worker joins its group, with its state directory locked for the moment: a second
/// process of this worker id fails here, naming the holder (joining would take partitions from
/// the first, only for its runs to fail on the lock), and data files of this worker's dead runs
/// that no commit took are deleted (a run does so too, but a worker may wait for partitions
/// for long, or be stopped before it gets any).
async fn sweep_before_joining(config: &PipelineConfig) -> Result<(), PipelineError> {
    let state = &config.paths.state_dir;
    let lock = crate::state_lock::StateLock::acquire(state, RunId::generate())?;
    let options = SinkOptions {
        fs: crate::io_faults::pipeline_fs().map_err(|message| PipelineError::State {
            path: state.clone(),
            message,
        })?,
        run_id: *lock.run(),
    };
    let Some(mut sink) =
        DeltaSink::open_existing_with(&config.paths.table_url, &config.pipeline_id, options)
            .await?
    else {
        return Ok(());
    };
    let committed = sink.txn_version().await?.unwrap_or(Epoch::ZERO);
    let report = sink
        .sweep_uncommitted_files(committed, lock.own_runs())
        .await?;
    if !report.deleted.is_empty() {
        info!(
            files = report.deleted.len(),
            "worker: data files of its dead runs that no commit took deleted"
        );
    }
    Ok(())
}

/// The claim refusal anywhere in `error`'s chain, if that is what stopped a run.
pub fn partition_taken<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a PartitionTaken> {
    let mut current = Some(error);
    while let Some(e) = current {
        // A `DeltaSinkError`'s source is the refusal itself: walking the chain finds it.
        if let Some(taken) = e.downcast_ref::<PartitionTaken>() {
            return Some(taken);
        }
        current = e.source();
    }
    None
}

/// Runs this process as worker `config.worker` until `shutdown` (or, with
/// `options.until_caught_up`, until the table's claims reach the end every partition of the
/// pipeline had when the worker started).
pub async fn run_worker(
    config: &PipelineConfig,
    options: RunOptions,
    shutdown: Shutdown,
) -> Result<WorkerSummary, PipelineError> {
    let started = std::time::Instant::now();
    let Some(worker) = config.worker.clone() else {
        return Err(PipelineError::State {
            path: config.paths.state_dir.clone(),
            message: "not a worker: set `source.group` and start with --worker-id".into(),
        });
    };
    sweep_before_joining(config).await?;
    let settings = GroupSettings {
        group: worker.group.clone(),
        instance_id: worker.worker_id.clone(),
        static_membership: config.source.static_membership,
        revoke_wait: DEFAULT_REVOKE_WAIT,
    };
    let source_config = pipeline::source_config(config);
    let mut target = if options.until_caught_up {
        let c = source_config.clone();
        let ends = tokio::task::spawn_blocking(move || {
            tidemark_connectors::kafka::fetch_partition_ends(&c, ENDS_TIMEOUT)
        })
        .await
        .map_err(|e| PipelineError::Task {
            what: "reading the partitions' ends",
            message: e.to_string(),
        })??;
        Some(CaughtUpTarget {
            ends: ends
                .into_iter()
                .map(|(topic, partition, end)| {
                    (
                        tidemark_connectors::TopicPartition { topic, partition },
                        end,
                    )
                })
                .collect(),
            sink: None,
        })
    } else {
        None
    };
    let membership =
        tokio::task::spawn_blocking(move || GroupMembership::join(&source_config, &settings))
            .await
            .map_err(|e| PipelineError::Task {
                what: "joining the consumer group",
                message: e.to_string(),
            })??;
    let membership = Arc::new(membership);
    let mut summary = WorkerSummary {
        pipeline_id: worker.pipeline_id.clone(),
        worker_id: worker.worker_id.clone(),
        ..WorkerSummary::default()
    };
    info!(worker = %worker.worker_id, group = %worker.group, "worker: joined; waiting for partitions");
    summary.stopped_because = loop {
        if shutdown.requested() {
            break "shutdown";
        }
        let assignment = membership.assignment();
        // No run is active here: whatever a waiting revoke asks for is let go of.
        membership.release(assignment.change);
        if assignment.partitions.is_empty() {
            if let Some(t) = target.as_mut() {
                if t.reached(config, &worker.pipeline_id).await? {
                    break "caught_up";
                }
            }
            let m = membership.clone();
            let _ = tokio::task::spawn_blocking(move || {
                m.wait_change(assignment.change, Duration::from_millis(200))
            })
            .await;
            continue;
        }
        let run_stop = Shutdown::new();
        let watcher = {
            let (membership, shutdown, run_stop) =
                (membership.clone(), shutdown.clone(), run_stop.clone());
            tokio::spawn(async move {
                while !run_stop.requested() {
                    if shutdown.requested() || membership.changed_since(assignment.change) {
                        run_stop.request();
                        break;
                    }
                    tokio::time::sleep(ASSIGNMENT_POLL).await;
                }
            })
        };
        summary.runs += 1;
        info!(worker = %worker.worker_id, change = assignment.change, partitions = assignment.partitions.len(), "worker: run over its partitions");
        let result = pipeline::run(
            config,
            RunOptions {
                partitions: Some(assignment.partitions.clone()),
                ..options.clone()
            },
            run_stop.clone(),
        )
        .await;
        run_stop.request();
        let _ = watcher.await;
        // The run has ended: nothing of the old assignment is read or committed any more.
        membership.release(membership.assignment().change);
        match result {
            Ok(run) => {
                summary.epochs_committed += run.epochs_committed;
                summary.records_read += run.records_read;
                summary.rows_written += run.rows_written;
                summary.commit_conflicts += run.commit_conflicts;
                if shutdown.requested() {
                    break "shutdown";
                }
                if run.stopped_because == "caught_up" {
                    // Its partitions are read to the end: wait for the rest of the pipeline,
                    // or for new partitions to read.
                    let Some(t) = target.as_mut() else {
                        break "caught_up";
                    };
                    let done = loop {
                        if shutdown.requested() {
                            break Some("shutdown");
                        }
                        if t.reached(config, &worker.pipeline_id).await? {
                            break Some("caught_up");
                        }
                        if membership.changed_since(assignment.change) {
                            break None;
                        }
                        tokio::time::sleep(CAUGHT_UP_POLL).await;
                    };
                    match done {
                        Some(why) => break why,
                        None => continue,
                    }
                }
                summary.rebalances += 1;
            }
            Err(e) => match partition_taken(&e) {
                Some(taken) => {
                    summary.stale_commits_refused += 1;
                    warn!(worker = %worker.worker_id, "worker: {taken}; starting over from the table's claims");
                }
                None => return Err(e),
            },
        }
    };
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    summary.partitions = membership
        .assignment()
        .partitions
        .iter()
        .map(|tp| tp.to_string())
        .collect();
    Ok(summary)
}
