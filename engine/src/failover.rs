//! `tidemark failover`: start a pipeline in another region, against the replica of its table
//! and a mirrored Kafka cluster, with nothing lost and nothing doubled.
//!
//! A mirror (MirrorMaker 2, cluster linking) keeps each record's key, value and timestamp but
//! not its offset, so the table's positions mean nothing on the new cluster. The start is
//! found by time instead: for each partition, the Kafka timestamp of the last record the
//! replica holds ([`PartitionPosition::last_timestamp_ms`]) minus a safety margin, looked up
//! with `offsets_for_times` on the new cluster ([`start_times`], pure; [`plan`]). Everything
//! from there is read again; the watermark dedup state, rebuilt from the replica's rows,
//! drops the overlap as duplicates (counted). Without dedup that overlap would be written
//! twice, so a failover without `[dedup]` is refused unless duplicates are accepted.
//!
//! The start opens a new generation in the table ([`crate::generation`]) before anything else
//! is written, so the old primary can never commit into it, then sets the state directory's
//! store and WAL aside ([`set_state_aside`]) and continues the table's progress at the found
//! positions. The [`FailoverReport`] (RPO/RTO) is printed and written as JSON.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tidemark_connectors::delta::{DeltaSink, DeltaSinkError, PartitionPosition};
use tidemark_connectors::kafka::KafkaSourceError;
use tidemark_connectors::kafka_cluster;
use tidemark_connectors::{Positions, TopicPartition};
use tracing::{info, warn};
use url::Url;

use crate::config::PipelineConfig;
use crate::offset_translation::{StartMethod, Translation, Translations};
use crate::pipeline::{self, FailoverStart, PipelineError, RunOptions, RunSummary, Shutdown};

/// The default safety margin subtracted from the last committed timestamp: producers' clocks
/// and a mirror's batching can put a record's timestamp a little before one written earlier.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long one broker lookup (cluster id, offsets by time) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// What `tidemark failover` is asked.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Read every partition from this time (ms since the epoch) instead of its last committed
    /// timestamp minus the margin.
    pub from_time_ms: Option<i64>,
    /// Subtracted from each partition's last committed timestamp.
    pub margin: Duration,
    /// Start even without dedup configured (the overlap is then written twice).
    pub accept_duplicates: bool,
    /// The primary's table, when it can still be read: the report then measures the replica's
    /// lag behind it at the moment of failure.
    pub primary_table: Option<Url>,
    /// Why (`failover` or `failback`), recorded with the new generation.
    pub reason: String,
    /// MirrorMaker 2's offset translations to use where present (none: every start by time).
    pub mm2: Mm2Options,
}

/// Where MirrorMaker 2's offset translations are on the new cluster (see
/// [`crate::offset_translation`]).
#[derive(Debug, Clone, Default)]
pub struct Mm2Options {
    /// The alias of the new (target) cluster in MM2's config: its offset syncs are read from
    /// `mm2-offset-syncs.<alias>.internal` on the new cluster (MM2 puts them there with
    /// `offset-syncs.topic.location = target`; by default they live on the source cluster,
    /// which is gone).
    pub target_alias: Option<String>,
    /// The alias of the old (source) cluster: checkpoints are read from
    /// `<alias>.checkpoints.internal` on the new cluster.
    pub source_alias: Option<String>,
    /// The consumer group whose checkpoints translate positions (Tidemark commits no group
    /// offsets itself: a group that reads the same topics and commits, e.g. an auditor).
    pub group: Option<String>,
}

impl Mm2Options {
    /// True when no translation is asked for.
    pub fn is_empty(&self) -> bool {
        self.target_alias.is_none() && self.source_alias.is_none()
    }
}

impl Default for FailoverOptions {
    fn default() -> Self {
        Self {
            from_time_ms: None,
            margin: DEFAULT_MARGIN,
            accept_duplicates: false,
            primary_table: None,
            reason: "failover".into(),
            mm2: Mm2Options::default(),
        }
    }
}

/// Why a failover cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// No `[dedup]`: the re-read overlap would be written twice.
    #[error("failover refused: pipeline {pipeline} has no [dedup] section, so the records re-read from the mirrored cluster (from {margin_s} s before the last committed record) would be written to the table a second time. Configure [dedup] (a key the records carry), or pass --accept-duplicates to accept those duplicates")]
    NoDedup {
        /// The pipeline.
        pipeline: String,
        /// The margin in seconds.
        margin_s: u64,
    },
    /// The table does not exist.
    #[error("failover refused: there is no Delta table at {table} (the replica of the primary's table is expected there; see `tidemark replicate`)")]
    NoTable {
        /// Where it was looked for.
        table: String,
    },
    /// The table holds nothing of this pipeline.
    #[error("failover refused: table {table} holds no commit of pipeline {pipeline}: there is nothing to fail over from (start it with `tidemark run`)")]
    NoProgress {
        /// The table.
        table: String,
        /// The pipeline.
        pipeline: String,
    },
    /// A partition was read but its last timestamp is unknown.
    #[error("failover refused: partition {partition} was read up to offset {next_offset} but the table's newest commit records no timestamp for its last record (a commit older than cluster-aware positions); give --from-time <RFC 3339 or ms> to say where to read from on the new cluster")]
    NoTimestamp {
        /// The partition.
        partition: TopicPartition,
        /// Its next offset on the old cluster.
        next_offset: i64,
    },
    /// The table could not be read.
    #[error(transparent)]
    Sink(#[from] DeltaSinkError),
    /// The brokers could not be asked.
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The report could not be written.
    #[error("cannot write the failover report {path}: {message}")]
    Report {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Where one partition starts on the new cluster, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStart {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The Kafka timestamp of the last record the table holds from it (old cluster).
    pub last_committed_timestamp_ms: Option<i64>,
    /// The next offset on the old cluster.
    pub old_next_offset: Option<i64>,
    /// The time looked up (`None`: from its beginning).
    pub from_time_ms: Option<i64>,
    /// The offset found on the new cluster.
    pub offset: i64,
    /// Records from `offset` up to the first one after the last committed timestamp: what is
    /// read again (the overlap).
    pub overlap_records: i64,
    /// How `offset` was found: `translated`, `by_time` or `from_beginning`.
    pub method: StartMethod,
    /// The MirrorMaker 2 translation used (`translated` only).
    pub translation: Option<Translation>,
    /// What the method means for this partition, in words.
    pub note: String,
}

/// What MirrorMaker 2's internal topics gave (in the failover report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TranslationsRead {
    /// The offset-syncs topic read (`None`: not asked for).
    pub offset_syncs_topic: Option<String>,
    /// Offset syncs of the pipeline's topics found there (`None`: the topic does not exist).
    pub offset_syncs: Option<u64>,
    /// The checkpoints topic read (`None`: not asked for).
    pub checkpoints_topic: Option<String>,
    /// The consumer group whose checkpoints were used.
    pub group: Option<String>,
    /// Checkpoints of that group found there (`None`: the topic does not exist).
    pub checkpoints: Option<u64>,
    /// Records that could not be decoded (skipped, each logged with why).
    pub undecodable: u64,
}

/// The start times (pure): for each partition the table's newest commit read from, the time
/// to look up on the new cluster: `from_time_ms` if given, else its last committed timestamp
/// minus `margin_ms`. A partition never read (next offset 0) starts at its beginning (absent
/// from the result). A read partition without a timestamp is refused unless `from_time_ms`.
pub fn start_times(
    partitions: &[PartitionPosition],
    end: &Positions,
    from_time_ms: Option<i64>,
    margin_ms: i64,
) -> Result<Vec<(TopicPartition, i64)>, FailoverError> {
    let mut times = Vec::new();
    for (tp, next_offset) in end.iter() {
        let last = partitions
            .iter()
            .find(|p| p.topic == tp.topic && p.partition == tp.partition)
            .and_then(|p| p.last_timestamp_ms);
        let at = match (from_time_ms, last) {
            (Some(t), _) => t,
            (None, Some(ts)) => ts.saturating_sub(margin_ms),
            (None, None) if next_offset <= 0 => continue,
            (None, None) => {
                return Err(FailoverError::NoTimestamp {
                    partition: tp,
                    next_offset,
                })
            }
        };
        times.push((tp, at.max(0)));
    }
    Ok(times)
}

/// What [`plan`] found: where the failover starts.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    /// The replica table's version at the failure.
    pub table_version: u64,
    /// The newest epoch it holds.
    pub table_epoch: u64,
    /// The wall clock of its newest commit (ms), as the commit records it.
    pub newest_commit_ms: Option<i64>,
    /// The cluster the table's progress belongs to.
    pub from_cluster: Option<String>,
    /// The cluster the brokers are.
    pub to_cluster: Option<String>,
    /// Per partition: where it starts.
    pub starts: Vec<PartitionStart>,
    /// The same as positions.
    pub positions: Positions,
    /// The table's generation before the failover.
    pub generation: u64,
    /// What MirrorMaker 2's topics gave.
    pub translations: TranslationsRead,
}

/// Reads the replica table's progress and finds the start positions on the new cluster.
pub async fn plan(
    config: &PipelineConfig,
    options: &FailoverOptions,
) -> Result<FailoverPlan, FailoverError> {
    if config.dedup.is_none() && !options.accept_duplicates {
        return Err(FailoverError::NoDedup {
            pipeline: config.pipeline_id.clone(),
            margin_s: options.margin.as_secs(),
        });
    }
    let url = &config.paths.table_url;
    let mut sink = DeltaSink::open_existing(url, &config.pipeline_id)
        .await?
        .ok_or_else(|| FailoverError::NoTable {
            table: url.to_string(),
        })?;
    let (txn, progress) = sink.progress().await?;
    let Some(progress) = progress else {
        return Err(FailoverError::NoProgress {
            table: url.to_string(),
            pipeline: config.pipeline_id.clone(),
        });
    };
    if let Some(dedup) = &config.dedup {
        let lateness = Duration::from_millis(dedup.allowed_lateness_ms);
        if options.from_time_ms.is_none() && options.margin > lateness {
            warn!(margin_s = options.margin.as_secs(), lateness_s = lateness.as_secs(), "the failover margin is longer than dedup.allowed_lateness_ms: re-read records older than the watermark are dropped as late, not as duplicates (nothing is written twice either way)");
        }
    }
    let info = &progress.info;
    let margin_ms = options.margin.as_millis() as i64;
    let source = pipeline::source_config(config);
    // MirrorMaker 2's translations first: a partition they translate needs no time.
    let (translations, translations_read) = {
        let (source, mm2) = (source.clone(), options.mm2.clone());
        tokio::task::spawn_blocking(move || read_translations(&source, &mm2))
            .await
            .map_err(|e| PipelineError::Task {
                what: "reading MirrorMaker 2's offset translations",
                message: e.to_string(),
            })??
    };
    let watermarks = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || kafka_cluster::watermarks(&source, LOOKUP_TIMEOUT))
            .await
            .map_err(|e| PipelineError::Task {
                what: "reading the partitions' offsets",
                message: e.to_string(),
            })??
    };
    let mut translated: Vec<(TopicPartition, i64, Translation)> = Vec::new();
    if options.from_time_ms.is_none() {
        for (tp, low, high) in &watermarks {
            let next = info.end_positions.get(&tp.topic, tp.partition).unwrap_or(0);
            if let Some((start, t)) =
                translations.translate(&tp.topic, tp.partition, next, *low, *high)
            {
                translated.push((tp.clone(), start, t));
            }
        }
    }
    let mut by_time_end = Positions::new();
    for (tp, next) in info.end_positions.iter() {
        if !translated.iter().any(|(t, ..)| *t == tp) {
            by_time_end.set(&tp.topic, tp.partition, next);
        }
    }
    let times = start_times(
        &info.partitions,
        &by_time_end,
        options.from_time_ms,
        margin_ms,
    )?;
    let to_cluster = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            kafka_cluster::fetch_cluster_id(&source, LOOKUP_TIMEOUT)
        })
        .await
        .map_err(|e| PipelineError::Task {
            what: "asking Kafka for its cluster id",
            message: e.to_string(),
        })??
    };
    // Where each partition starts, and where the records after the last committed one begin
    // (the overlap is between the two).
    let after_last: Vec<(TopicPartition, i64)> = info
        .partitions
        .iter()
        .filter_map(|p| {
            Some((
                TopicPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                },
                p.last_timestamp_ms? + 1,
            ))
        })
        .collect();
    let (found, overlap_end) = {
        let (source, times, default) = (source.clone(), times.clone(), options.from_time_ms);
        tokio::task::spawn_blocking(move || {
            let found = kafka_cluster::offsets_for_times(&source, &times, default, LOOKUP_TIMEOUT)?;
            let end = kafka_cluster::offsets_for_times(&source, &after_last, None, LOOKUP_TIMEOUT)?;
            Ok::<_, KafkaSourceError>((found, end))
        })
        .await
        .map_err(|e| PipelineError::Task {
            what: "looking up offsets by time",
            message: e.to_string(),
        })??
    };
    let mut positions = Positions::new();
    let mut starts = Vec::new();
    for (tp, by_time_offset) in found {
        let last = info
            .partitions
            .iter()
            .find(|p| p.topic == tp.topic && p.partition == tp.partition)
            .and_then(|p| p.last_timestamp_ms);
        let old_next_offset = info.end_positions.get(&tp.topic, tp.partition);
        let from_time_ms = times
            .iter()
            .find(|(t, _)| *t == tp)
            .map(|(_, ms)| *ms)
            .or(options.from_time_ms);
        let translation = translated.iter().find(|(t, ..)| *t == tp);
        let (offset, method, note) = match (translation, from_time_ms) {
            (Some((_, start, t)), _) => (
                *start,
                StartMethod::Translated,
                format!(
                    "MirrorMaker 2 {} {} -> {} (next offset {} on the old cluster)",
                    t.via.replace('_', " "),
                    t.upstream_offset,
                    t.downstream_offset,
                    old_next_offset.unwrap_or(0)
                ),
            ),
            (None, Some(ms)) => (
                by_time_offset,
                StartMethod::ByTime,
                format!(
                    "first record at or after {ms} ms{}",
                    if translations.is_empty() {
                        String::new()
                    } else {
                        " (no MirrorMaker 2 translation for this partition)".to_string()
                    }
                ),
            ),
            (None, None) => (
                by_time_offset,
                StartMethod::FromBeginning,
                "never read before the failure: read from its beginning on the new cluster; \
                 exactly once only if the mirror holds nothing the old cluster did not have \
                 (records already there before the mirror began would be written too)"
                    .to_string(),
            ),
        };
        if method == StartMethod::FromBeginning {
            warn!(partition = %tp, offset, "{note}");
        }
        positions.set(&tp.topic, tp.partition, offset);
        let end = overlap_end
            .iter()
            .find(|(t, _)| *t == tp)
            .map(|(_, o)| *o)
            .filter(|_| last.is_some())
            .unwrap_or(offset);
        starts.push(PartitionStart {
            old_next_offset,
            from_time_ms: from_time_ms.filter(|_| method == StartMethod::ByTime),
            topic: tp.topic.clone(),
            partition: tp.partition,
            last_committed_timestamp_ms: last,
            offset,
            overlap_records: (end - offset).max(0),
            method,
            translation: translation.map(|(_, _, t)| t.clone()),
            note,
        });
    }
    let newest_commit_ms = sink
        .commit_timestamp(progress.table_version.get())
        .await
        .ok()
        .flatten();
    let plan = FailoverPlan {
        table_version: progress.table_version.get(),
        table_epoch: txn.map_or(0, |e| e.get()),
        newest_commit_ms,
        from_cluster: info.cluster_id.clone(),
        to_cluster,
        starts,
        positions,
        generation: sink.table_generation()?,
        translations: translations_read,
    };
    info!(
        table_version = plan.table_version,
        epoch = plan.table_epoch,
        from = ?plan.from_cluster,
        to = ?plan.to_cluster,
        positions = %plan.positions,
        translated = plan.starts.iter().filter(|s| s.method == StartMethod::Translated).count(),
        "failover plan: start positions found"
    );
    Ok(plan)
}

/// The replica's lag behind the primary at the moment of failure (the RPO, as far as the
/// replica alone would have lost it).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicaLagAtFailure {
    /// Versions the primary had that the replica lacked.
    pub versions: u64,
    /// Records those versions had read from Kafka.
    pub records: u64,
    /// Rows those versions wrote.
    pub rows: u64,
    /// Commit time of the primary's newest version minus the replica's.
    pub seconds: f64,
}

/// The RPO/RTO report of a failover: printed and written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// The pipeline.
    pub pipeline_id: String,
    /// The table failed over into (the replica).
    pub table: String,
    /// Why: `failover` or `failback`.
    pub reason: String,
    /// The cluster the table's progress belonged to.
    pub from_cluster: Option<String>,
    /// The cluster read now.
    pub to_cluster: Option<String>,
    /// The generation before and after.
    pub previous_generation: u64,
    /// The generation this failover opened.
    pub generation: Option<u64>,
    /// The replica's version and epoch at the failure.
    pub replica_version_at_failure: u64,
    /// Its newest epoch.
    pub replica_epoch_at_failure: u64,
    /// Seconds between the replica's newest commit and the failover's start.
    pub replica_age_s: Option<f64>,
    /// The replica's lag behind the primary (with `--primary-table`; `None` when the primary
    /// could not be read).
    pub replica_lag: Option<ReplicaLagAtFailure>,
    /// The safety margin, ms.
    pub margin_ms: u64,
    /// Where each partition started, and how (`method`: translated, by_time, from_beginning).
    pub starts: Vec<PartitionStart>,
    /// What MirrorMaker 2's offset translations gave (topics read, records found).
    pub translations: TranslationsRead,
    /// Records re-read from the mirrored cluster (the overlap before the last committed
    /// timestamp, summed over partitions).
    pub records_reread: i64,
    /// Records this run read in all (overlap and new records).
    pub records_read: u64,
    /// Duplicates the run dropped (the overlap, and any producer retry among new records).
    pub duplicates_dropped: u64,
    /// Records dropped as late (re-read records older than the rebuilt watermark).
    pub late_dropped: u64,
    /// Rows written by this run.
    pub rows_written: u64,
    /// Dead letters of records this run read (written, or held already).
    pub dead_letters: u64,
    /// Of those, letters the dead-letter table held from the old cluster (not written again).
    pub dead_letters_already_held: u64,
    /// Dedup keys rebuilt from the replica's rows.
    pub dedup_keys_rebuilt: u64,
    /// Rows in the primary that the table lacks after the failover (with `--primary-table`
    /// and a key-column dedup: 0 when the mirror holds every record).
    pub missing_rows: Option<u64>,
    /// RTO: ms from the command's start to the first commit of records in the table.
    pub rto_ms: Option<u64>,
    /// Ms from the command's start to the commit opening the generation.
    pub generation_opened_ms: Option<u64>,
    /// Ms the start-position lookup took.
    pub plan_ms: u64,
    /// Ms from the command's start to caught up.
    pub caught_up_ms: u64,
    /// The table's version after the run.
    pub table_version: Option<u64>,
}

impl FailoverReport {
    /// The report as the lines `tidemark failover` prints.
    pub fn render(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut out = String::new();
        out.push_str(&format!(
            "{} of pipeline {} into {} (generation {} -> {})\n",
            self.reason,
            self.pipeline_id,
            self.table,
            self.previous_generation,
            opt(self.generation)
        ));
        out.push_str(&format!(
            "  cluster        {} -> {}\n",
            self.from_cluster.as_deref().unwrap_or("?"),
            self.to_cluster.as_deref().unwrap_or("?")
        ));
        out.push_str(&format!(
            "  replica        version {} (epoch {}) at the failure{}\n",
            self.replica_version_at_failure,
            self.replica_epoch_at_failure,
            self.replica_age_s
                .map(|s| format!(", newest commit {s:.1} s before the failover"))
                .unwrap_or_default()
        ));
        for s in &self.starts {
            out.push_str(&format!(
                "  start          {}/{} at offset {}: {} ({})\n",
                s.topic,
                s.partition,
                s.offset,
                s.method.as_str(),
                s.note
            ));
        }
        match &self.replica_lag {
            Some(l) => out.push_str(&format!(
                "  RPO            replica lag at failure: {} versions, {} records ({} rows), {:.1} s\n",
                l.versions, l.records, l.rows, l.seconds
            )),
            None => out.push_str("  RPO            replica lag at failure: unknown (the primary table was not given or not readable)\n"),
        }
        out.push_str(&format!(
            "  re-read        {} records from the mirrored cluster (margin {} ms); {} duplicates dropped, {} late\n",
            self.records_reread, self.margin_ms, self.duplicates_dropped, self.late_dropped
        ));
        out.push_str(&format!(
            "  run            {} records read, {} rows written, {} dedup keys rebuilt from the replica\n",
            self.records_read, self.rows_written, self.dedup_keys_rebuilt
        ));
        if self.dead_letters > 0 {
            out.push_str(&format!(
                "  dead letters   {} of records read, {} of them held already from the old cluster (not written again)\n",
                self.dead_letters, self.dead_letters_already_held
            ));
        }
        out.push_str(&format!(
            "  missing rows   {}\n",
            self.missing_rows
                .map_or("not checked (needs --primary-table)".to_string(), |m| m
                    .to_string())
        ));
        out.push_str(&format!(
            "  RTO            {} ms from the command's start to the first commit (generation opened at {} ms, plan {} ms, caught up at {} ms)\n",
            opt(self.rto_ms),
            opt(self.generation_opened_ms),
            self.plan_ms,
            self.caught_up_ms
        ));
        out
    }
}

/// Moves a state directory's checkpoint store and WAL aside (`before-failover-<ms>/`): the
/// failover continues from the table, and the old state (of another cluster, another
/// generation) must never be resumed. Returns where they went, if there was anything.
pub fn set_state_aside(state: &Path) -> Result<Option<PathBuf>, (PathBuf, String)> {
    let ms = now_ms();
    let aside = state.join(format!("before-failover-{ms}"));
    let mut moved = false;
    for name in ["store", "wal"] {
        let from = state.join(name);
        if !from.exists() {
            continue;
        }
        std::fs::create_dir_all(&aside).map_err(|e| (aside.clone(), e.to_string()))?;
        std::fs::rename(&from, aside.join(name)).map_err(|e| (from.clone(), e.to_string()))?;
        moved = true;
    }
    if !moved {
        return Ok(None);
    }
    tidemark_fs::std_fs()
        .sync_dir(state)
        .map_err(|e| (state.to_path_buf(), e.to_string()))?;
    warn!(aside = %aside.display(), "the state directory's checkpoint store and WAL were set aside for the failover (kept, never resumed)");
    Ok(Some(aside))
}

/// Reads MirrorMaker 2's offset syncs and checkpoints (as `mm2` names them) from the new
/// cluster. An absent topic or an undecodable record is logged and left out: the partitions
/// concerned start by time, which is exactly-once correct as well (only longer to re-read).
fn read_translations(
    source: &tidemark_connectors::kafka::KafkaSourceConfig,
    mm2: &Mm2Options,
) -> Result<(Translations, TranslationsRead), KafkaSourceError> {
    use tidemark_connectors::mm2;
    let mut read = TranslationsRead::default();
    let wanted = |topic: &str| source.topics.iter().any(|t| t == topic);
    let mut syncs = Vec::new();
    if let Some(alias) = &mm2.target_alias {
        let topic = mm2::offset_syncs_topic(alias);
        let missing = "MirrorMaker 2's offset-syncs topic does not exist on the new cluster (MM2 writes it there only with offset-syncs.topic.location = target): starting by time";
        if let Some(kept) = read_mm2_topic(
            source,
            &topic,
            missing,
            mm2::decode_offset_sync,
            |s| wanted(&s.topic),
            &mut read.undecodable,
        )? {
            read.offset_syncs = Some(kept.len() as u64);
            syncs = kept;
        }
        read.offset_syncs_topic = Some(topic);
    }
    let mut checkpoints = Vec::new();
    if let Some(alias) = &mm2.source_alias {
        let topic = mm2::checkpoints_topic(alias);
        let missing =
            "MirrorMaker 2's checkpoints topic does not exist on the new cluster: starting by time";
        if let Some(kept) = read_mm2_topic(
            source,
            &topic,
            missing,
            mm2::decode_checkpoint,
            |c| wanted(&c.topic) && Some(&c.group) == mm2.group.as_ref(),
            &mut read.undecodable,
        )? {
            read.checkpoints = Some(kept.len() as u64);
            checkpoints = kept;
        }
        read.checkpoints_topic = Some(topic);
        read.group = mm2.group.clone();
    }
    info!(
        offset_syncs = syncs.len(),
        checkpoints = checkpoints.len(),
        "MirrorMaker 2 translations read"
    );
    Ok((
        Translations::new(&syncs, &checkpoints, mm2.group.as_deref()),
        read,
    ))
}

/// The records of MM2's `topic` on the new cluster that `decode` reads and `keep` wants
/// (`None`, logged with `missing`, when the topic does not exist); an undecodable record is
/// skipped, logged and counted in `undecodable`.
fn read_mm2_topic<T, E: std::fmt::Display>(
    source: &tidemark_connectors::kafka::KafkaSourceConfig,
    topic: &str,
    missing: &str,
    decode: impl Fn(Option<&[u8]>, Option<&[u8]>) -> Result<T, E>,
    keep: impl Fn(&T) -> bool,
    undecodable: &mut u64,
) -> Result<Option<Vec<T>>, KafkaSourceError> {
    let Some(records) = kafka_cluster::read_whole_topic(source, topic, LOOKUP_TIMEOUT)? else {
        warn!(topic = %topic, brokers = %source.brokers, "{missing}");
        return Ok(None);
    };
    let mut kept = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        match decode(k.as_deref(), v.as_deref()) {
            Ok(t) if keep(&t) => kept.push(t),
            Ok(_) => {}
            Err(e) => {
                *undecodable += 1;
                warn!(topic = %topic, record = i, "skipping an undecodable MirrorMaker 2 record: {e}");
            }
        }
    }
    Ok(Some(kept))
}

/// Reads what the primary table committed beyond the replica (its lag at the failure).
async fn replica_lag(
    primary: &Url,
    pipeline_id: &str,
    replica_epoch: u64,
    replica_commit_ms: Option<i64>,
) -> Result<Option<ReplicaLagAtFailure>, DeltaSinkError> {
    let Some(mut sink) = DeltaSink::open_existing(primary, pipeline_id).await? else {
        return Ok(None);
    };
    let (_, progress) = sink.progress().await?;
    let commits = sink.pipeline_commits().await?;
    let mut lag = ReplicaLagAtFailure::default();
    for c in commits.iter().filter(|c| c.epoch.get() > replica_epoch) {
        lag.versions += 1;
        lag.records += c.records_read;
        lag.rows += c.rows_written;
    }
    if let (Some(p), Some(replica_ms)) = (progress, replica_commit_ms) {
        if let Ok(Some(primary_ms)) = sink.commit_timestamp(p.table_version.get()).await {
            lag.seconds = (primary_ms - replica_ms).max(0) as f64 / 1000.0;
        }
    }
    Ok(Some(lag))
}

/// Runs a failover: plan, then the pipeline from the found positions until caught up; returns
/// the report and the run's summary. `command_started` is when the command began (the RTO
/// runs from there).
pub async fn run(
    config: &PipelineConfig,
    options: &FailoverOptions,
    shutdown: Shutdown,
    command_started: Instant,
) -> Result<(FailoverReport, RunSummary), FailoverError> {
    let plan_started = Instant::now();
    let plan = plan(config, options).await?;
    let plan_ms = plan_started.elapsed().as_millis() as u64;
    let lag = match &options.primary_table {
        Some(primary) => match replica_lag(
            primary,
            &config.pipeline_id,
            plan.table_epoch,
            plan.newest_commit_ms,
        )
        .await
        {
            Ok(lag) => lag,
            Err(e) => {
                warn!(primary = %primary, "cannot read the primary table for the replica's lag: {e}");
                None
            }
        },
        None => None,
    };
    let margin_ms = options.margin.as_millis() as i64;
    let run_started = Instant::now();
    let before_run = run_started.duration_since(command_started).as_millis() as u64;
    let summary = pipeline::run(
        config,
        RunOptions {
            until_caught_up: true,
            failover: Some(FailoverStart {
                positions: plan.positions.clone(),
                reason: options.reason.clone(),
                cluster_id: plan.to_cluster.clone(),
                dead_letter_windows: plan
                    .starts
                    .iter()
                    .map(|s| {
                        (
                            TopicPartition {
                                topic: s.topic.clone(),
                                partition: s.partition,
                            },
                            // Records out of order by up to the margin may follow the start.
                            s.from_time_ms.map(|ms| ms.saturating_sub(margin_ms)),
                        )
                    })
                    .collect(),
            }),
            ..RunOptions::default()
        },
        shutdown,
    )
    .await?;
    let missing_rows = match &options.primary_table {
        Some(primary) => crate::failover_audit::missing_rows(config, primary)
            .await
            .map_err(|e| warn!("cannot compare the tables' keys for missing rows: {e}"))
            .ok()
            .flatten(),
        None => None,
    };
    let report = FailoverReport {
        pipeline_id: config.pipeline_id.clone(),
        table: config.paths.table_url.to_string(),
        reason: options.reason.clone(),
        from_cluster: plan.from_cluster.clone(),
        to_cluster: plan.to_cluster.clone(),
        previous_generation: plan.generation,
        generation: summary.generation,
        replica_version_at_failure: plan.table_version,
        replica_epoch_at_failure: plan.table_epoch,
        replica_age_s: plan
            .newest_commit_ms
            .map(|ms| (now_ms() - ms).max(0) as f64 / 1000.0),
        replica_lag: lag,
        margin_ms: options.margin.as_millis() as u64,
        records_reread: plan.starts.iter().map(|s| s.overlap_records).sum(),
        starts: plan.starts,
        translations: plan.translations,
        records_read: summary.records_read,
        duplicates_dropped: summary.duplicates,
        late_dropped: summary.late,
        rows_written: summary.rows_written,
        dead_letters: summary.dead_letters,
        dead_letters_already_held: summary.dead_letters_already_held,
        dedup_keys_rebuilt: summary.recovery.dedup_keys_loaded,
        missing_rows,
        rto_ms: summary
            .first_source_commit_ms
            .or(summary.first_commit_ms)
            .map(|ms| ms + before_run),
        generation_opened_ms: summary.generation_opened_ms.map(|ms| ms + before_run),
        plan_ms,
        caught_up_ms: command_started.elapsed().as_millis() as u64,
        table_version: summary.table_version.map(|v| v.get()),
    };
    Ok((report, summary))
}

/// The wall clock in ms since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A time given as milliseconds since the epoch or RFC 3339 (`2026-11-30T10:00:00Z`).
pub fn parse_time_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s)
        .map(|ns| ns / 1_000_000)
        .map_err(|_| {
            format!("{s:?} is neither milliseconds since the epoch nor an RFC 3339 time (2026-11-30T10:00:00Z)")
        })
}

/// The URL of a table given as a path or URL.
pub fn table_url(s: &str) -> Result<Url, String> {
    tidemark_connectors::delta::table_url(s).map_err(|e| e.to_string())
}

/// Writes the report as pretty JSON.
pub fn write_report(path: &Path, report: &FailoverReport) -> Result<(), FailoverError> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| FailoverError::Report {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    tidemark_fs::write_file_durably(tidemark_fs::std_fs().as_ref(), path, &json, false).map_err(
        |e| FailoverError::Report {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(topic: &str, partition: i32, next: i64, ts: Option<i64>) -> PartitionPosition {
        PartitionPosition {
            cluster_id: Some("east".into()),
            topic: topic.into(),
            topic_id: None,
            partition,
            next_offset: next,
            last_timestamp_ms: ts,
            dedup_floor: None,
        }
    }

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    #[test]
    fn start_times_are_the_last_timestamp_minus_the_margin() {
        let mut end = Positions::new();
        end.set("o", 0, 10);
        end.set("o", 1, 0);
        end.set("o", 2, 5);
        let parts = [pp("o", 0, 10, Some(100_000)), pp("o", 2, 5, Some(50))];
        let times = start_times(&parts, &end, None, 1_000).unwrap();
        // Partition 1 was never read: absent (its beginning); a time never goes below 0.
        assert_eq!(times, vec![(tp("o", 0), 99_000), (tp("o", 2), 0)]);
        let forced = start_times(&parts, &end, Some(7), 1_000).unwrap();
        assert_eq!(
            forced,
            vec![(tp("o", 0), 7), (tp("o", 1), 7), (tp("o", 2), 7)]
        );
    }

    #[test]
    fn a_read_partition_without_a_timestamp_is_refused_naming_it() {
        let mut end = Positions::new();
        end.set("o", 3, 42);
        let err = start_times(&[], &end, None, 1_000).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("o/3") && text.contains("42") && text.contains("--from-time"),
            "{text}"
        );
        assert!(start_times(&[], &end, Some(1), 1_000).is_ok());
    }
}
