//! The run's metrics and live state, for `/metrics`, `/readyz` and the status page: a thin
//! layer of named functions the pipeline calls at a few points (a batch read, a seal, a
//! commit, a checkpoint), never per record.
//!
//! Nothing is recorded until [`install`] is called (`tidemark run` with an HTTP endpoint): each
//! function starts with one `OnceLock` load and returns when metrics are off.
//!
//! Invariant kept here: the record counters of an epoch are added together under the `live`
//! lock, and [`render`] encodes under the same lock, so every scrape sees
//! `read = written + duplicates + late + dead-lettered` (summed over `reason`). Records count
//! when their epoch's Delta commit landed, like the checkpoint's totals.
//!
//! The exposition is the Prometheus text format 0.0.4, encoded by `prometheus-client`.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tidemark_connectors::Positions;

use crate::committer::EpochReport;
use crate::epoch::OpenEpoch;
use crate::health::{self, Health, HealthFacts, WatermarkProgress};
use crate::recovery::RecoveryOutcome;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Points of the throughput history kept for the status page's sparkline (one a second).
const HISTORY: usize = 120;

/// Least time between two points of the throughput history.
const HISTORY_EVERY: f64 = 1.0;

type FloatGauge = Gauge<f64, AtomicU64>;
type Labels = Vec<(&'static str, String)>;

/// Thresholds of the health rules and what identifies the run.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The pipeline.
    pub pipeline_id: String,
    /// The checkpoint interval (an epoch's longest duration).
    pub interval: Duration,
    /// No commit for this long while records wait: not ready.
    pub commit_stall_after: Duration,
    /// The watermark unmoved this long while records are read: not ready.
    pub watermark_stuck_after: Duration,
    /// Whether dedup (and so a watermark) is on.
    pub dedup: bool,
}

/// The metric handles (shared atomics) and the live state behind the page and `/readyz`.
pub struct Metrics {
    info: RunInfo,
    registry: Registry,
    read: Counter,
    written: Counter,
    duplicates: Counter,
    cross_partition_duplicates: Counter,
    late: Counter,
    dead_lettered: Family<Labels, Counter>,
    epochs_sealed: Counter,
    epochs_committed: Counter,
    wal_appended: Counter,
    epoch_duration: Histogram,
    seal_fsync: Histogram,
    parquet_write: Histogram,
    delta_commit: Histogram,
    checkpoint_write: Histogram,
    wal_segments: Gauge,
    wal_bytes: Gauge,
    dedup_keys: Gauge,
    watermark: FloatGauge,
    watermark_lag: FloatGauge,
    next_offset: Family<Labels, Gauge>,
    high_watermark: Family<Labels, Gauge>,
    partition_lag: Family<Labels, Gauge>,
    consumer_lag: Gauge,
    open_epoch_records: Gauge,
    epoch: Gauge,
    table_version: Gauge,
    last_commit_ts: FloatGauge,
    last_checkpoint_ts: FloatGauge,
    last_commit_age: FloatGauge,
    last_checkpoint_age: FloatGauge,
    recovery_case: Family<Labels, Gauge>,
    recovery_duration: FloatGauge,
    recovery_replayed: Gauge,
    replica_lag_versions: Family<Labels, Gauge>,
    replica_lag_seconds: Family<Labels, FloatGauge>,
    rss: Gauge,
    /// User + system CPU seconds of the process, brought up to date at each scrape: with the
    /// records counter, the CPU a record costs in production, as `tidemark bench` prints it.
    cpu: Counter<f64, AtomicU64>,
    ready: Gauge,
    live: Mutex<Live>,
}

/// What the page and the health rules read; changed only under the `live` lock.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Live {
    /// The pipeline.
    pub pipeline_id: String,
    /// Unix seconds at start.
    pub started_at: f64,
    /// Recovery's case, duration and replayed records (`None` while recovering).
    pub recovery: Option<RecoverySnapshot>,
    /// The epoch being read.
    pub epoch: u64,
    /// The newest committed epoch of this run, and its Delta version.
    pub committed_epoch: Option<u64>,
    /// The table version of the newest commit.
    pub table_version: Option<u64>,
    /// Records counted so far by this run: read, written, duplicates, late, dead-lettered.
    pub counts: tidemark_checkpoint::store::Counts,
    /// Dead-lettered records by reason.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Unix seconds of the last commit and checkpoint.
    pub last_commit_at: Option<f64>,
    /// Unix seconds of the last checkpoint.
    pub last_checkpoint_at: Option<f64>,
    /// The watermark (event time, unix seconds) and when it last moved.
    pub watermark: Option<f64>,
    /// Unix seconds when the watermark last changed.
    pub watermark_changed_at: Option<f64>,
    /// Records read (committed) when it last changed.
    pub read_at_watermark_change: u64,
    /// Per `topic/partition`: committed next offset and high watermark.
    pub partitions: BTreeMap<String, PartitionSnapshot>,
    /// Records in the open epoch.
    pub open_epoch_records: u64,
    /// Replica lag, once set.
    pub replica: Option<ReplicaLag>,
    /// (unix seconds, records read) about once a second, oldest first.
    pub history: VecDeque<(f64, u64)>,
    /// WAL segments and bytes on disk, dedup keys.
    pub wal_segments: u64,
    /// WAL bytes on disk.
    pub wal_bytes: u64,
    /// Keys the dedup state holds in memory (`DedupState::held`: evicted keys until the
    /// next sweep included).
    pub dedup_keys: Option<u64>,
}

/// What recovery found and did at start.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverySnapshot {
    /// The case (`fresh`, `resume_epoch`, ...).
    pub case: &'static str,
    /// Milliseconds it took.
    pub ms: u64,
    /// Records replayed from the WAL.
    pub replayed: u64,
    /// Unix seconds when it finished.
    pub at: f64,
}

/// One partition on the page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionSnapshot {
    /// Next offset after the committed records.
    pub next_offset: Option<i64>,
    /// The broker's high watermark (end offset) as last seen.
    pub high_watermark: Option<i64>,
}

impl PartitionSnapshot {
    /// Records in Kafka not yet committed to the table.
    pub fn lag(&self) -> Option<i64> {
        Some((self.high_watermark? - self.next_offset.unwrap_or(0)).max(0))
    }
}

/// How far a replica is behind the table.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaLag {
    /// The replica's URI.
    pub table: String,
    /// Versions behind.
    pub versions: u64,
    /// Seconds behind.
    pub seconds: f64,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process (idempotent: a second call keeps the first run's info).
pub fn install(info: RunInfo) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(info))
}

/// The metrics, if [`install`]ed.
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ]
    .into_iter()
}

fn partition_labels(topic: &str, partition: i32) -> Labels {
    vec![
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
}

impl Metrics {
    fn new(info: RunInfo) -> Self {
        let m = Metrics {
            registry: Registry::default(),
            read: Counter::default(),
            written: Counter::default(),
            duplicates: Counter::default(),
            cross_partition_duplicates: Counter::default(),
            late: Counter::default(),
            dead_lettered: Family::default(),
            epochs_sealed: Counter::default(),
            epochs_committed: Counter::default(),
            wal_appended: Counter::default(),
            epoch_duration: Histogram::new(seconds_buckets()),
            seal_fsync: Histogram::new(seconds_buckets()),
            parquet_write: Histogram::new(seconds_buckets()),
            delta_commit: Histogram::new(seconds_buckets()),
            checkpoint_write: Histogram::new(seconds_buckets()),
            wal_segments: Gauge::default(),
            wal_bytes: Gauge::default(),
            dedup_keys: Gauge::default(),
            watermark: FloatGauge::default(),
            watermark_lag: FloatGauge::default(),
            next_offset: Family::default(),
            high_watermark: Family::default(),
            partition_lag: Family::default(),
            consumer_lag: Gauge::default(),
            open_epoch_records: Gauge::default(),
            epoch: Gauge::default(),
            table_version: Gauge::default(),
            last_commit_ts: FloatGauge::default(),
            last_checkpoint_ts: FloatGauge::default(),
            last_commit_age: FloatGauge::default(),
            last_checkpoint_age: FloatGauge::default(),
            recovery_case: Family::default(),
            recovery_duration: FloatGauge::default(),
            recovery_replayed: Gauge::default(),
            replica_lag_versions: Family::default(),
            replica_lag_seconds: Family::default(),
            rss: Gauge::default(),
            cpu: Counter::default(),
            ready: Gauge::default(),
            live: Mutex::new(Live {
                pipeline_id: info.pipeline_id.clone(),
                started_at: now_secs(),
                ..Live::default()
            }),
            info,
        };
        m.register()
    }

    fn register(mut self) -> Self {
        /// `name, help => metric;` registered in order (a clone shares the metric's atomics).
        macro_rules! register {
            ($r:expr, $($name:literal, $help:literal => $m:expr;)*) => {
                $($r.register($name, $help, $m.clone());)*
            };
        }
        register!(self.registry,
            "tidemark_records_read", "Records read, counted when their epoch's Delta commit landed" => self.read;
            "tidemark_records_written", "Rows written to the table" => self.written;
            "tidemark_records_duplicate", "Duplicates dropped by watermark dedup" => self.duplicates;
            "tidemark_records_cross_partition_duplicate", "Of the duplicates, those whose key a worker had accepted from another partition: the producer does not partition by the dedup key (workers of a shared pipeline only)" => self.cross_partition_duplicates;
            "tidemark_records_late", "Records below the watermark (dropped or dead-lettered as late)" => self.late;
            "tidemark_records_dead_lettered", "Records dead-lettered or skipped as invalid, by reason (late records are counted apart)" => self.dead_lettered;
            "tidemark_epochs_sealed", "Epochs sealed (SEAL durable in the WAL)" => self.epochs_sealed;
            "tidemark_epochs_committed", "Epochs whose Delta commit landed" => self.epochs_committed;
            "tidemark_wal_appended_bytes", "Bytes appended to the WAL by this process" => self.wal_appended;
            "tidemark_epoch_duration_seconds", "Time from an epoch's first record to its seal" => self.epoch_duration;
            "tidemark_seal_fsync_seconds", "Time to seal an epoch (the WAL fsync)" => self.seal_fsync;
            "tidemark_parquet_write_seconds", "Time to write an epoch's Parquet files" => self.parquet_write;
            "tidemark_delta_commit_seconds", "Time of one Delta commit (the table's or the dead-letter table's)" => self.delta_commit;
            "tidemark_checkpoint_seconds", "Time to write a checkpoint (RocksDB) and truncate the WAL" => self.checkpoint_write;
            "tidemark_wal_segments", "WAL segment files on disk" => self.wal_segments;
            "tidemark_wal_size_bytes", "Bytes of the WAL segments on disk" => self.wal_bytes;
            "tidemark_dedup_state_keys", "Keys the dedup state holds in memory (evicted keys leave at the next sweep)" => self.dedup_keys;
            "tidemark_watermark_seconds", "The dedup watermark (event time, unix seconds)" => self.watermark;
            "tidemark_watermark_lag_seconds", "Wall clock minus the watermark" => self.watermark_lag;
            "tidemark_partition_next_offset", "Next offset after the committed records, per partition" => self.next_offset;
            "tidemark_partition_high_watermark", "The broker's end offset as last seen (at least what was read), per partition" => self.high_watermark;
            "tidemark_partition_lag_records", "Records in Kafka not yet committed to the table, per partition" => self.partition_lag;
            "tidemark_consumer_lag_records", "Records in Kafka not yet committed to the table, all partitions" => self.consumer_lag;
            "tidemark_open_epoch_records", "Records in the epoch being read" => self.open_epoch_records;
            "tidemark_epoch", "The epoch being read" => self.epoch;
            "tidemark_table_version", "Delta version of the newest commit" => self.table_version;
            "tidemark_last_commit_timestamp_seconds", "Unix time of the last Delta commit" => self.last_commit_ts;
            "tidemark_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint" => self.last_checkpoint_ts;
            "tidemark_last_commit_age_seconds", "Seconds since the last Delta commit (since start before the first)" => self.last_commit_age;
            "tidemark_last_checkpoint_age_seconds", "Seconds since the last checkpoint (since start before the first)" => self.last_checkpoint_age;
            "tidemark_recovery_case", "1 for the recovery case of the last start" => self.recovery_case;
            "tidemark_recovery_duration_seconds", "Duration of the last start's recovery" => self.recovery_duration;
            "tidemark_recovery_replayed_records", "Records the last start replayed from the WAL" => self.recovery_replayed;
            "tidemark_replica_lag_versions", "Delta versions the replica is behind the table" => self.replica_lag_versions;
            "tidemark_replica_lag_seconds", "Seconds the replica is behind the table" => self.replica_lag_seconds;
            "process_resident_memory_bytes", "Resident memory of the process" => self.rss;
            "process_cpu_seconds", "User and system CPU time of the process, every thread" => self.cpu;
            "tidemark_ready", "1 when /readyz is healthy (recovered and committing)" => self.ready;
        );
        self
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic while holding the lock leaves plain data: keep serving it.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the live state (for the status page).
    pub fn snapshot(&self) -> Live {
        self.live().clone()
    }

    /// The run's identity and thresholds.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// The health rules applied to the live state now.
    pub fn health(&self) -> Health {
        let live = self.live();
        self.health_of(&live, now_secs())
    }

    fn health_of(&self, live: &Live, now: f64) -> Health {
        let since = |t: Option<f64>| Duration::from_secs_f64((now - t.unwrap_or(now)).max(0.0));
        let waiting: i64 = live.partitions.values().filter_map(|p| p.lag()).sum();
        let facts = HealthFacts {
            recovered: live.recovery.is_some(),
            records_waiting: waiting.max(0) as u64 + live.open_epoch_records,
            // The checkpoint's time, not the Delta commit's: each checkpoint follows its commit,
            // and `tidemark status --check` judges by the checkpoint record's age, so both
            // judges read one clock (with two, right after `/readyz` flipped the outside check
            // could still see a checkpoint younger than the threshold). The commit's time only
            // when no checkpoint is written (a run without durability).
            since_last_commit: since(
                live.last_checkpoint_at
                    .or(live.last_commit_at)
                    .or(live.recovery.as_ref().map(|r| r.at)),
            ),
            commit_stall_after: self.info.commit_stall_after,
            watermark: live.watermark_changed_at.map(|at| WatermarkProgress {
                unchanged_for: since(Some(at)),
                records_read_since: live.counts.read - live.read_at_watermark_change,
            }),
            watermark_stuck_after: self.info.watermark_stuck_after,
        };
        health::evaluate(&facts)
    }

    /// The exposition in the Prometheus text format, with the ages, RSS and readiness computed
    /// now; encoded under the `live` lock (see the module's invariant).
    pub fn render(&self) -> String {
        let live = self.live();
        let now = now_secs();
        let age = |t: Option<f64>| now - t.unwrap_or(live.started_at);
        self.last_commit_age.set(age(live.last_commit_at));
        self.last_checkpoint_age.set(age(live.last_checkpoint_at));
        if let Some(w) = live.watermark {
            self.watermark_lag.set(now - w);
        }
        if let Some(rss) = current_rss_bytes() {
            self.rss.set(rss as i64);
        }
        if let Some(cpu) = crate::cpu_time::process() {
            // A counter only rises: it is brought up to the process's total (under the lock,
            // so two scrapes never add the same time twice).
            let behind = cpu.as_secs_f64() - self.cpu.get();
            if behind > 0.0 {
                self.cpu.inc_by(behind);
            }
        }
        self.ready.set(i64::from(self.health_of(&live, now).ready));
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("encoding metrics failed: {e}");
        }
        out
    }

    fn set_partition(
        &self,
        live: &mut Live,
        topic: &str,
        partition: i32,
        next: Option<i64>,
        high: Option<i64>,
    ) {
        let key = format!("{topic}/{partition}");
        let p = live.partitions.entry(key).or_default();
        if next.is_some() {
            p.next_offset = next;
        }
        if let Some(h) = high {
            // Never below what was read: a sealed epoch's records exist whatever the cached
            // end offsets say (they may predate them, e.g. while a commit runs).
            p.high_watermark = Some(p.high_watermark.map_or(h, |old| old.max(h)));
        }
        let labels = partition_labels(topic, partition);
        if let Some(n) = p.next_offset {
            self.next_offset.get_or_create(&labels).set(n);
        }
        if let Some(h) = p.high_watermark {
            self.high_watermark.get_or_create(&labels).set(h);
        }
        if let Some(lag) = p.lag() {
            self.partition_lag.get_or_create(&labels).set(lag);
        }
    }

    fn sum_lag(&self, live: &Live) {
        let total: i64 = live.partitions.values().filter_map(|p| p.lag()).sum();
        self.consumer_lag.set(total);
    }
}

/// The process's resident set size now, from `/proc/self/statm` (Linux).
fn current_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Recovery finished: its case, duration and replays; the run continues at `epoch` from
/// `positions` (what the table holds).
pub fn recovered(outcome: &RecoveryOutcome, epoch: u64, positions: &Positions) {
    let Some(m) = get() else { return };
    let mut live = m.live();
    sample_history(&mut live, now_secs());
    live.recovery = Some(RecoverySnapshot {
        case: outcome.case,
        ms: outcome.recovery_ms,
        replayed: outcome.replayed_records,
        at: now_secs(),
    });
    live.epoch = epoch;
    m.epoch.set(epoch as i64);
    m.recovery_case.clear();
    m.recovery_case
        .get_or_create(&vec![("case", outcome.case.to_string())])
        .set(1);
    m.recovery_duration.set(outcome.recovery_ms as f64 / 1000.0);
    m.recovery_replayed.set(outcome.replayed_records as i64);
    for (tp, next) in positions.iter() {
        m.set_partition(&mut live, &tp.topic, tp.partition, Some(next), None);
    }
    m.sum_lag(&live);
}

/// A batch entered the open epoch, which now holds `records`.
pub fn batch_read(records: u64) {
    let Some(m) = get() else { return };
    m.open_epoch_records.set(records as i64);
    m.live().open_epoch_records = records;
}

/// The broker's end offsets as last seen, per partition.
pub fn partition_ends(ends: &[(String, i32, i64)]) {
    let Some(m) = get() else { return };
    let mut live = m.live();
    for (topic, partition, high) in ends {
        m.set_partition(&mut live, topic, *partition, None, Some(*high));
    }
    m.sum_lag(&live);
    sample_history(&mut live, now_secs());
}

/// An epoch was sealed: it collected records for `epoch_age` up to `end`; the seal took `seal`.
/// Its records wait (count as lag) until its commit lands.
pub fn epoch_sealed(epoch_age: Duration, seal: Duration, next_epoch: u64, end: &Positions) {
    let Some(m) = get() else { return };
    m.epochs_sealed.inc();
    m.epoch_duration.observe(epoch_age.as_secs_f64());
    m.seal_fsync.observe(seal.as_secs_f64());
    m.epoch.set(next_epoch as i64);
    m.open_epoch_records.set(0);
    let mut live = m.live();
    live.epoch = next_epoch;
    live.open_epoch_records = 0;
    for (tp, read_to) in end.iter() {
        m.set_partition(&mut live, &tp.topic, tp.partition, None, Some(read_to));
    }
    m.sum_lag(&live);
}

/// `open`'s Delta commit landed (`report.version`): its records count now, all together.
pub fn epoch_committed(open: &OpenEpoch, report: &EpochReport) {
    let Some(m) = get() else { return };
    let counts = open.counts();
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for d in open.dead_letters.iter().filter(|d| d.reason != "late") {
        *reasons.entry(d.reason).or_default() += 1;
    }
    for s in &open.skipped {
        *reasons.entry(s.reason.as_str()).or_default() += 1;
    }
    for (_, reason) in &open.skipped_other {
        *reasons.entry(reason).or_default() += 1;
    }
    // Whatever the lists do not explain still counts, so the identity holds.
    let listed: u64 = reasons.values().sum();
    if counts.dead_lettered > listed {
        *reasons.entry("other").or_default() += counts.dead_lettered - listed;
    }
    let now = now_secs();
    let mut live = m.live();
    m.read.inc_by(counts.read);
    m.written.inc_by(counts.written);
    m.duplicates.inc_by(counts.duplicates);
    m.cross_partition_duplicates
        .inc_by(open.cross_partition_duplicates);
    m.late.inc_by(counts.late);
    for (reason, n) in &reasons {
        m.dead_lettered
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(*n);
        *live.dead_lettered.entry(reason.to_string()).or_default() += n;
    }
    m.epochs_committed.inc();
    live.counts += counts;
    live.committed_epoch = Some(report.epoch);
    if let Some(v) = report.version {
        live.table_version = Some(v.get());
        m.table_version.set(v.get() as i64);
    }
    live.last_commit_at = Some(now);
    m.last_commit_ts.set(now);
    for (tp, next) in report.end.iter() {
        m.set_partition(&mut live, &tp.topic, tp.partition, Some(next), None);
    }
    m.sum_lag(&live);
}

/// Adds a point to the throughput history if the last one is at least [`HISTORY_EVERY`] old.
fn sample_history(live: &mut Live, now: f64) {
    if live
        .history
        .back()
        .is_some_and(|(t, _)| now - t < HISTORY_EVERY)
    {
        return;
    }
    let read = live.counts.read;
    live.history.push_back((now, read));
    if live.history.len() > HISTORY {
        live.history.pop_front();
    }
}

/// Times `write` (an epoch's Parquet files) into the Parquet histogram.
pub async fn time_parquet<T>(write: impl Future<Output = T>) -> T {
    timed(write, |m| &m.parquet_write).await
}

/// Times `commit` (one Delta commit) into the commit histogram.
pub async fn time_delta_commit<T>(commit: impl Future<Output = T>) -> T {
    timed(commit, |m| &m.delta_commit).await
}

async fn timed<T>(work: impl Future<Output = T>, into: fn(&Metrics) -> &Histogram) -> T {
    let Some(m) = get() else { return work.await };
    let started = Instant::now();
    let out = work.await;
    into(m).observe(started.elapsed().as_secs_f64());
    out
}

/// What the durable side holds after a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct AfterCheckpoint {
    /// WAL segment files on disk.
    pub wal_segments: u64,
    /// Their bytes.
    pub wal_bytes: u64,
    /// Bytes this process appended to the WAL so far.
    pub wal_appended: u64,
    /// Keys the dedup state holds in memory (`DedupState::held`: evicted keys until the
    /// next sweep included).
    pub dedup_keys: Option<u64>,
    /// The watermark (micros).
    pub watermark: Option<i64>,
}

/// An epoch's checkpoint is durable (`report.checkpoint_micros` it took).
pub fn checkpointed(report: &EpochReport, after: &AfterCheckpoint) {
    let Some(m) = get() else { return };
    m.checkpoint_write
        .observe(report.checkpoint_micros as f64 / 1e6);
    m.wal_segments.set(after.wal_segments as i64);
    m.wal_bytes.set(after.wal_bytes as i64);
    let appended = after.wal_appended.saturating_sub(m.wal_appended.get());
    m.wal_appended.inc_by(appended);
    let now = now_secs();
    m.last_checkpoint_ts.set(now);
    let mut live = m.live();
    live.last_checkpoint_at = Some(now);
    live.wal_segments = after.wal_segments;
    live.wal_bytes = after.wal_bytes;
    live.dedup_keys = after.dedup_keys;
    if let Some(k) = after.dedup_keys {
        m.dedup_keys.set(k as i64);
    }
    if let Some(w) = after.watermark {
        let w = w as f64 / 1e6;
        m.watermark.set(w);
        if live.watermark != Some(w) {
            live.watermark = Some(w);
            live.watermark_changed_at = Some(now);
            live.read_at_watermark_change = live.counts.read;
        }
    }
}

/// Sets the replica lag behind the table (versions and seconds): the gauges and the page's row
/// appear from the first call on.
pub fn set_replica_lag(table: &str, versions: u64, seconds: f64) {
    let Some(m) = get() else { return };
    let labels = vec![("replica", table.to_string())];
    m.replica_lag_versions
        .get_or_create(&labels)
        .set(versions as i64);
    m.replica_lag_seconds.get_or_create(&labels).set(seconds);
    m.live().replica = Some(ReplicaLag {
        table: table.to_string(),
        versions,
        seconds,
    });
}

/// The exposition, or `None` when metrics are off.
pub fn render() -> Option<String> {
    get().map(Metrics::render)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            pipeline_id: "p".into(),
            interval: Duration::from_secs(1),
            commit_stall_after: Duration::from_secs(30),
            watermark_stuck_after: Duration::from_secs(600),
            dedup: true,
        }
    }

    /// Every series name the exposition holds once each labelled family has a sample, read
    /// back by a Prometheus text parser (histograms as `_bucket`, `_sum`, `_count`).
    fn exported_names() -> BTreeSet<String> {
        let m = Metrics::new(info());
        {
            let mut live = m.live();
            m.set_partition(&mut live, "t", 0, Some(5), Some(9));
        }
        m.dead_lettered
            .get_or_create(&vec![("reason", "malformed_json".to_string())])
            .inc();
        m.recovery_case
            .get_or_create(&vec![("case", "fresh".to_string())])
            .set(1);
        let replica = vec![("replica", "s3://dr/t".to_string())];
        m.replica_lag_versions.get_or_create(&replica).set(2);
        m.replica_lag_seconds.get_or_create(&replica).set(3.5);
        let text = m.render();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut names = BTreeSet::new();
        for sample in scrape.samples {
            // The parser folds a histogram's `_bucket` lines into one sample of its base name.
            if matches!(sample.value, prometheus_parse::Value::Histogram(_)) {
                names.insert(format!("{}_bucket", sample.metric));
            }
            names.insert(sample.metric);
        }
        names
    }

    /// The metric names a PromQL expression uses (Tidemark's, the process's, and `up`).
    fn metric_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut depth = 0;
        let mut quoted = false;
        let mut plain = String::new();
        for c in expr.chars() {
            match c {
                '"' => quoted = !quoted,
                '{' | '[' if !quoted => depth += 1,
                '}' | ']' if !quoted => depth -= 1,
                c if !quoted && depth == 0 => plain.push(c),
                _ => {}
            }
            if (c == '{' || c == '[') && !quoted {
                plain.push(' ');
            }
        }
        for token in plain.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if token.starts_with("tidemark_") || token.starts_with("process_") || token == "up" {
                out.push(token.to_string());
            }
        }
        out
    }

    fn docs(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_alert_rules_parse_and_name_only_exported_metrics() {
        let exported = exported_names();
        let rules: serde_yaml::Value =
            serde_yaml::from_str(&docs("prometheus-alerts.yml")).unwrap();
        let rules = rules["groups"][0]["rules"].as_sequence().unwrap();
        let mut alerts = BTreeSet::new();
        for rule in rules {
            let name = rule["alert"].as_str().unwrap();
            alerts.insert(name.to_string());
            let expr = rule["expr"].as_str().unwrap();
            let used = metric_names(expr);
            assert!(!used.is_empty(), "{name}: {expr} names no metric");
            for metric in used {
                assert!(
                    metric == "up" || exported.contains(&metric),
                    "{name}: {metric} is not exported (exported: {exported:?})"
                );
            }
            let duration = rule["for"].as_str().unwrap();
            assert!(
                duration.ends_with('m') && duration[..duration.len() - 1].parse::<u32>().is_ok(),
                "{name}: for {duration}"
            );
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
        }
        // What the issue asks to alert on.
        for wanted in [
            "TidemarkCheckpointStale",
            "TidemarkCommitStalled",
            "TidemarkWatermarkStuck",
            "TidemarkReplicaLagAboveRPO",
            "TidemarkDeadLetterRate",
        ] {
            assert!(alerts.contains(wanted), "{wanted} missing");
        }
    }

    #[test]
    fn the_grafana_dashboard_names_only_exported_metrics() {
        let exported = exported_names();
        let dashboard: serde_json::Value =
            serde_json::from_str(&docs("grafana-dashboard.json")).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 10);
        let mut seen = BTreeSet::new();
        for panel in panels {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for metric in metric_names(expr) {
                    assert!(exported.contains(&metric), "{}: {metric}", panel["title"]);
                    seen.insert(metric);
                }
            }
        }
        for wanted in [
            "tidemark_partition_lag_records",
            "tidemark_last_checkpoint_age_seconds",
            "tidemark_watermark_lag_seconds",
            "tidemark_replica_lag_seconds",
            "tidemark_delta_commit_seconds_bucket",
        ] {
            assert!(
                seen.contains(wanted),
                "the dashboard does not show {wanted}"
            );
        }
    }

    /// `/readyz` judges a stall by the checkpoint's time, as `tidemark status --check` does
    /// (the checkpoint record's age): a commit that landed but is not yet checkpointed does
    /// not make it ready while the outside check would say stalled.
    #[test]
    fn a_stall_is_judged_by_the_checkpoint_clock_as_status_check_does() {
        let m = Metrics::new(info());
        let now = 10_000.0;
        let mut live = m.live().clone();
        live.recovery = Some(RecoverySnapshot {
            case: "fresh",
            ms: 1,
            replayed: 0,
            at: now - 100.0,
        });
        live.open_epoch_records = 5;
        live.last_checkpoint_at = Some(now - 31.0);
        live.last_commit_at = Some(now - 1.0);
        let health = m.health_of(&live, now);
        assert!(
            matches!(health.problems[..], [health::Problem::CommitStalled { secs, .. }] if secs >= 31.0),
            "{health:?}"
        );
        live.last_checkpoint_at = Some(now - 1.0);
        assert!(m.health_of(&live, now).ready);
        // Without durability no checkpoint is written: the commit's time then.
        live.last_checkpoint_at = None;
        live.last_commit_at = Some(now - 31.0);
        assert!(!m.health_of(&live, now).ready);
    }

    /// The process's CPU counter is its CPU time at the scrape: above zero, and it only rises
    /// (a second scrape after some work shows at least that work).
    #[test]
    fn the_cpu_counter_follows_the_process_cpu_time() {
        let m = Metrics::new(info());
        let value = |text: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with("process_cpu_seconds_total "))
                .unwrap_or_else(|| panic!("no CPU counter in {text}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let first = value(&m.render());
        assert!(first > 0.0, "{first}");
        let before = crate::cpu_time::process().unwrap();
        let mut x = 0u64;
        while crate::cpu_time::process().unwrap() < before + std::time::Duration::from_millis(30) {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let second = value(&m.render());
        assert!(second >= first + 0.03, "{first} then {second}");
        assert!(second <= crate::cpu_time::process().unwrap().as_secs_f64());
    }

    #[test]
    fn promql_names_are_found_outside_matchers_and_ranges() {
        assert_eq!(
            metric_names(
                r#"sum without (reason) (rate(tidemark_a_total{x="tidemark_no"}[5m])) / up"#
            ),
            ["tidemark_a_total", "up"]
        );
    }

    #[test]
    fn the_exposition_holds_every_metric_the_issue_lists() {
        let exported = exported_names();
        for name in [
            "tidemark_records_read_total",
            "tidemark_records_written_total",
            "tidemark_records_duplicate_total",
            "tidemark_records_late_total",
            "tidemark_records_dead_lettered_total",
            "tidemark_epochs_sealed_total",
            "tidemark_epochs_committed_total",
            "tidemark_epoch_duration_seconds_bucket",
            "tidemark_seal_fsync_seconds_bucket",
            "tidemark_parquet_write_seconds_bucket",
            "tidemark_delta_commit_seconds_bucket",
            "tidemark_checkpoint_seconds_bucket",
            "tidemark_wal_appended_bytes_total",
            "tidemark_wal_segments",
            "tidemark_dedup_state_keys",
            "tidemark_watermark_seconds",
            "tidemark_watermark_lag_seconds",
            "tidemark_partition_next_offset",
            "tidemark_partition_high_watermark",
            "tidemark_partition_lag_records",
            "tidemark_last_checkpoint_age_seconds",
            "tidemark_last_commit_age_seconds",
            "tidemark_recovery_case",
            "tidemark_recovery_duration_seconds",
            "tidemark_replica_lag_versions",
            "tidemark_replica_lag_seconds",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ] {
            assert!(exported.contains(name), "{name} missing from {exported:?}");
        }
    }
}
