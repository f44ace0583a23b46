//! The dedup stage's verdicts, computed apart from the epoch they go into: each row of a
//! decoded batch is kept, dropped as a duplicate or late, or refused (no event time, one out of
//! range or too far in the future, no key). [`give`] decides a batch against the dedup state and
//! returns the outcomes in row order ([`BatchVerdicts`]); the epoch applies them
//! (`OpenEpoch::apply_verdicts`: counts, dead letters, the rows kept).
//!
//! Why apart: the live path gives verdicts on a thread of the epoch's own (`tidemark-decide`,
//! fed by the one that decodes: `epoch::DecodeAhead`), while the reading thread reads and logs
//! the next batches; the reading thread
//! only applies what came back. The state is shared ([`SharedDedup`]) but never used by two
//! threads at once in a way that changes a verdict:
//! - one deciding thread per epoch decides its batches in the order they were sent, which is
//!   WAL order; the seal waits for all of them before the watermark moves;
//! - the reading thread decides a batch itself only when that thread decides none after it (it
//!   could not start, or it stopped at an earlier batch: see `epoch::DecodeAhead`), so the
//!   state still sees every batch once, in WAL order;
//! - what else takes the lock (a partition registered with the tracker, the seal, status) does
//!   not touch the keys or the batch clock a verdict reads.
//!
//! So the verdicts are those of one thread deciding every batch in WAL order, as a replay does
//! (tested: `epoch::tests`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use arrow::row::RowConverter;
use tidemark_connectors::decode::COL_TIMESTAMP;
use tidemark_connectors::SourceRecord;

use crate::config::{EventTimeUnit, OnInvalidRecord, OnLate};
use crate::dedup::{DedupState, Verdict, WatermarkTracker};
use crate::epoch::{DedupSpec, KeySource, ProcessError, TimeSource};

/// Per-run dedup state: the keys and watermark (deterministic), and the partitions' event-time
/// progress (wall-clock, used only at seals).
pub struct DedupRuntime {
    /// Keys and watermark.
    pub state: DedupState,
    /// Per-partition event-time progress.
    pub tracker: WatermarkTracker,
    /// A worker of a shared pipeline: its partitions' floors and its keys' origins
    /// ([`crate::partition_dedup`]); `None` for one process.
    pub partitions: Option<crate::partition_dedup::PartitionDedup>,
    /// What giving rows their verdicts has cost the thread that gave them (the run summary's
    /// `dedup_verdict_share`, `dedup_table_growth_ms` and `dedup_verdict_cpu_secs`).
    pub cost: VerdictCost,
}

/// The run's [`DedupRuntime`], shared by the thread that reads and logs (partitions
/// registered, the seal, the checkpoint) and the epoch's deciding thread (the verdicts). Why a
/// lock rather than a hand-over: the reading thread registers partitions and seals while
/// batches are in flight, and both are cheap next to a batch's verdicts.
///
/// What the commit, the checkpoint and the metrics only read (the watermark, the keys held)
/// is copied out at every unlock ([`DedupGuard`]) and read from that copy
/// ([`SharedDedup::watermark`], [`SharedDedup::held_keys`]), without the runtime's lock: the
/// deciding thread holds it for a whole batch, and a batch that grows the key table holds it
/// for up to ~100 ms (2M keys, this project's 2-core hosts). Measured before the copy: the
/// reading thread, which also commits and checkpoints, waited 80 ms at once on it in one 1 s
/// run (`perf` of its `sched_switch`es), and reading stops while it waits.
#[derive(Clone)]
pub struct SharedDedup {
    runtime: Arc<Mutex<DedupRuntime>>,
    published: Arc<Mutex<Published>>,
}

/// What [`SharedDedup`]'s readers see of the state, as of the last unlock.
///
/// Invariant: equal to the state's own values whenever the runtime's lock is free. Kept by
/// [`DedupGuard`]'s drop, the only way to the runtime once it is shared
/// ([`SharedDedup::new`] publishes the first values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    watermark: Option<i64>,
    held: usize,
}

impl Published {
    fn of(runtime: &DedupRuntime) -> Self {
        Self {
            watermark: runtime.state.watermark(),
            held: runtime.state.held(),
        }
    }
}

impl SharedDedup {
    /// Shares `runtime`.
    pub fn new(runtime: DedupRuntime) -> Self {
        let published = Arc::new(Mutex::new(Published::of(&runtime)));
        Self {
            runtime: Arc::new(Mutex::new(runtime)),
            published,
        }
    }

    /// The runtime, locked. A thread that panicked while holding it (the deciding thread) ends
    /// the epoch with an error of its own (`ProcessError::DecodeThreadStopped`), so a poisoned
    /// lock is taken as it is: nothing decided after the panic is committed.
    pub fn lock(&self) -> DedupGuard<'_> {
        DedupGuard {
            runtime: self.runtime.lock().unwrap_or_else(PoisonError::into_inner),
            published: &self.published,
        }
    }

    /// The state's watermark as of the last unlock, without waiting for the deciding thread.
    /// The watermark moves only at a seal, on the thread that also commits and checkpoints, so
    /// there this is the state's own.
    pub fn watermark(&self) -> Option<i64> {
        self.published().watermark
    }

    /// Keys held in the state's table as of the last unlock (`DedupState::held`: evicted ones
    /// not yet swept included), without waiting for the deciding thread.
    pub fn held_keys(&self) -> usize {
        self.published().held
    }

    fn published(&self) -> Published {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The runtime, when this is its last holder (tests take it back).
    #[cfg(test)]
    pub(crate) fn into_inner(self) -> Option<DedupRuntime> {
        Arc::into_inner(self.runtime)
            .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The shared runtime, locked ([`SharedDedup::lock`]); its drop copies what readers see
/// ([`SharedDedup::watermark`], [`SharedDedup::held_keys`]) before the lock is released.
pub struct DedupGuard<'a> {
    runtime: MutexGuard<'a, DedupRuntime>,
    published: &'a Mutex<Published>,
}

impl std::ops::Deref for DedupGuard<'_> {
    type Target = DedupRuntime;

    fn deref(&self) -> &DedupRuntime {
        &self.runtime
    }
}

impl std::ops::DerefMut for DedupGuard<'_> {
    fn deref_mut(&mut self) -> &mut DedupRuntime {
        &mut self.runtime
    }
}

impl Drop for DedupGuard<'_> {
    fn drop(&mut self) {
        // Still under the runtime's lock (its guard drops after this), so no later unlock's
        // copy can be overwritten by this older one.
        let now = Published::of(&self.runtime);
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
    }
}

impl std::fmt::Debug for SharedDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDedup").finish_non_exhaustive()
    }
}

/// Time spent in the dedup stage, live and replayed: the rows' keys encoded and event times
/// read, the state's lookups (a batched one while it still loads after a restart, and taking in
/// the loaded part when it is ready) and inserts with its growth. Why: the thread that gives
/// the verdicts (live: the epoch's deciding thread; a replay: the recovering thread) decides
/// every record in WAL order, so this is what dedup takes from throughput before the other
/// threads' work (the state writer) is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCost {
    /// The whole stage, wall-clock.
    pub time: Duration,
    /// Of it, the state's key table growing ([`DedupState::growth_time`]).
    pub table_growth: Duration,
    /// Of it, evicted entries swept out of the table ([`DedupState::sweep_time`]).
    pub sweep: Duration,
    /// The CPU time the thread spent in the stage ([`crate::cpu_time::this_thread`]): what
    /// the stage cost, without the time the thread waited for a core while in it.
    pub cpu: Duration,
}

/// How many rows ahead of its check a row's dedup-state slot is fetched into the cache
/// ([`DedupState::warm`]): enough for the fetch to arrive before the check (a memory latency
/// is a few checks' time), few enough that the fetched slots stay in the L1/L2 cache and the
/// fetches in flight stay within what the core can track. Fetched a row at a time, so the
/// fetches in flight stay even: a block of 64 fetched at once (the way before) left the
/// block's first checks waiting on their misses (perf: most of the check's samples on its
/// first load of the slot). Measured by `cargo bench -p tidemark-benches --bench records --
/// dedup/check_100k_with_1m_in_state_warmed`: 8 ahead 9% faster than blocks of 64, 16 and
/// 32 ahead no faster.
pub const WARM_AHEAD: usize = 8;

/// A row's event time: `None` where null or missing, `Some(Err(value))` where the column's
/// value does not fit microseconds, else `Some(Ok(micros))`.
pub(crate) type EventTime = Option<Result<i64, i64>>;

/// A batch's dedup keys, encoded once for the whole batch: the key columns in Arrow's row
/// format (one buffer), or the records' Kafka keys, borrowed. [`BatchKeys::get`] borrows a
/// row's key bytes: the hot path allocates nothing per record.
pub struct BatchKeys<'a> {
    inner: KeysInner<'a>,
}

enum KeysInner<'a> {
    /// Dedup is off.
    Off,
    /// Key columns: their rows, and the columns (a null in any makes the key null).
    Rows {
        rows: arrow::row::Rows,
        cols: Vec<ArrayRef>,
    },
    /// The Kafka message key of each row's record.
    Kafka(&'a [&'a SourceRecord]),
}

impl BatchKeys<'_> {
    /// Row `i`'s key bytes; `None` where null or missing.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        match &self.inner {
            KeysInner::Off => None,
            KeysInner::Rows { rows, cols } => {
                (!cols.iter().any(|c| c.is_null(i))).then(|| rows.row(i).data())
            }
            KeysInner::Kafka(records) => records.get(i).and_then(|r| r.key.as_deref()),
        }
    }
}

/// What deciding a batch needs besides the state: the dedup settings resolved against the
/// table schema, the key encoder, and what a refused row does. Owned apart from the
/// `RecordProcessor` so the deciding thread can hold it.
pub(crate) struct VerdictPrep {
    /// `errors.on_invalid_record`: under `fail` a refused row stops the batch's verdicts.
    pub(crate) on_invalid: OnInvalidRecord,
    /// The dedup settings, if dedup is on.
    pub(crate) dedup: Option<DedupSpec>,
    /// Encodes key columns into one row-format buffer per batch.
    pub(crate) key_converter: Option<RowConverter>,
    /// Tests only: [`give`] panics, as a fault in the deciding thread would.
    #[cfg(test)]
    pub(crate) panic_in_give: bool,
}

impl std::fmt::Debug for VerdictPrep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictPrep")
            .field("on_invalid", &self.on_invalid)
            .field("dedup", &self.dedup)
            .finish_non_exhaustive()
    }
}

impl VerdictPrep {
    /// `batch`'s dedup keys and event times; `records[i]` is row i's record when the key or
    /// time comes from Kafka metadata (empty when rebuilding state from the table's rows).
    pub(crate) fn keys_and_event_times<'a>(
        &self,
        batch: &RecordBatch,
        records: &'a [&'a SourceRecord],
    ) -> Result<(BatchKeys<'a>, Vec<EventTime>), ProcessError> {
        let Some(spec) = &self.dedup else {
            return Ok((
                BatchKeys {
                    inner: KeysInner::Off,
                },
                Vec::new(),
            ));
        };
        let n = batch.num_rows();
        let record = |i: usize| records.get(i).copied();
        let keys = match &spec.key {
            KeySource::KafkaKey => KeysInner::Kafka(records),
            KeySource::Columns(idx) => {
                let cols: Vec<ArrayRef> = idx.iter().map(|i| batch.column(*i).clone()).collect();
                let converter =
                    self.key_converter
                        .as_ref()
                        .ok_or_else(|| ProcessError::SchemaMismatch {
                            table: "dedup".into(),
                            message:
                                "dedup key columns are configured but no key converter was built"
                                    .into(),
                        })?;
                let rows = converter
                    .convert_columns(&cols)
                    .map_err(|source| ProcessError::KeyEncoding { source })?;
                KeysInner::Rows { rows, cols }
            }
        };
        let keys = BatchKeys { inner: keys };
        let millis = |ms: i64| ms.checked_mul(1000).ok_or(ms);
        let times: Vec<EventTime> = match spec.time {
            TimeSource::KafkaTimestamp => match batch.schema().index_of(COL_TIMESTAMP) {
                Ok(i) if records.is_empty() => micros_column(batch.column(i))
                    .into_iter()
                    .map(|t| t.map(Ok))
                    .collect(),
                _ => (0..n)
                    .map(|i| record(i).and_then(|r| r.timestamp_ms).map(millis))
                    .collect(),
            },
            TimeSource::TimestampColumn(i) => micros_column(batch.column(i))
                .into_iter()
                .map(|t| t.map(Ok))
                .collect(),
            TimeSource::LongColumn(i, unit) => {
                let a = batch.column(i).as_primitive::<Int64Type>();
                (0..n)
                    .map(|r| {
                        (!a.is_null(r)).then(|| match unit {
                            EventTimeUnit::Millis => millis(a.value(r)),
                            EventTimeUnit::Micros => Ok(a.value(r)),
                        })
                    })
                    .collect()
            }
        };
        Ok((keys, times))
    }
}

fn micros_column(col: &ArrayRef) -> Vec<Option<i64>> {
    let a = col.as_primitive::<TimestampMicrosecondType>();
    (0..a.len())
        .map(|r| (!a.is_null(r)).then(|| a.value(r)))
        .collect()
}

/// Why a row is not written, as the epoch applies it (a kept row needs no more than its bit in
/// [`BatchVerdicts::keep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A duplicate: its key was accepted before within the watermark. `cross_partition`: the key
    /// was accepted from another partition (a worker of a shared pipeline only).
    Duplicate { cross_partition: bool },
    /// Dropped as late; `dead_letter`: the message of its dead letter (`dedup.late =
    /// "dead_letter"`), naming the bound it missed.
    Late { dead_letter: Option<String> },
    /// Refused (`errors.on_invalid_record` decides what follows): the reason and message.
    Refused {
        reason: &'static str,
        message: String,
    },
}

/// A batch's verdicts in row order. Under `errors.on_invalid_record = "fail"` they end at the
/// first refused row (the epoch stops there, and the rows after it never reached the state).
/// Why two lists: most rows are kept, and a kept row's verdict is one bit, which is also the
/// filter the epoch applies to the batch; only the dropped rows carry what the epoch counts.
#[derive(Debug, Default)]
pub(crate) struct BatchVerdicts {
    /// Per row decided, in order: written or not.
    pub(crate) keep: Vec<bool>,
    /// The rows not written, in order: their index in the batch, and why.
    pub(crate) dropped: Vec<(usize, Dropped)>,
}

impl BatchVerdicts {
    /// True when the verdicts stopped at a refusal under `fail`.
    pub(crate) fn stopped(&self, prep: &VerdictPrep) -> bool {
        prep.on_invalid == OnInvalidRecord::Fail
            && matches!(self.dropped.last(), Some((_, Dropped::Refused { .. })))
    }
}

/// Decides `batch` (whose rows' records are `row_records`, arrived at `now`) against `rt`,
/// under the batch clock already set on its state: the rows' outcomes in order, the state
/// holding the accepted keys. In order for each row: no event time or one out of range, too far
/// in the future (never observed by the tracker), no key (observed), then the dedup state's
/// verdict (accept, duplicate, late). Dedup must be on.
pub(crate) fn give(
    prep: &VerdictPrep,
    rt: &mut DedupRuntime,
    batch: &RecordBatch,
    row_records: &[&SourceRecord],
    now: Instant,
) -> Result<BatchVerdicts, ProcessError> {
    let spec = prep
        .dedup
        .as_ref()
        .ok_or_else(|| ProcessError::SchemaMismatch {
            table: "dedup".into(),
            message: "verdicts asked for with dedup off".into(),
        })?;
    #[cfg(test)]
    assert!(!prep.panic_in_give, "a fault while giving verdicts (test)");
    let started = Instant::now();
    let cpu_before = crate::cpu_time::this_thread();
    let (grown_before, swept_before) = (rt.state.growth_time(), rt.state.sweep_time());
    let given = give_rows(prep, spec, rt, batch, row_records, now);
    rt.cost.time += started.elapsed();
    rt.cost.table_growth += rt.state.growth_time().saturating_sub(grown_before);
    rt.cost.sweep += rt.state.sweep_time().saturating_sub(swept_before);
    if let (Some(before), Some(after)) = (cpu_before, crate::cpu_time::this_thread()) {
        rt.cost.cpu += after.saturating_sub(before);
    }
    given
}

fn give_rows(
    prep: &VerdictPrep,
    spec: &DedupSpec,
    rt: &mut DedupRuntime,
    batch: &RecordBatch,
    row_records: &[&SourceRecord],
    now: Instant,
) -> Result<BatchVerdicts, ProcessError> {
    let (keys, times) = prep.keys_and_event_times(batch, row_records)?;
    // While the state still loads after a restart: one batched lookup for the batch.
    if rt.state.is_loading() {
        rt.state
            .prefetch((0..times.len()).filter_map(|i| keys.get(i)))?;
    }
    let n = times.len();
    let mut verdicts = BatchVerdicts {
        keep: Vec::with_capacity(n),
        dropped: Vec::new(),
    };
    // Each row's slot is fetched into the cache WARM_AHEAD rows before its check (their
    // misses overlap, and arrive before they are needed).
    rt.state
        .warm((0..n.min(WARM_AHEAD)).filter_map(|j| keys.get(j)));
    for (i, (time, record)) in times.into_iter().zip(row_records).enumerate() {
        if i + WARM_AHEAD < n {
            rt.state.warm(keys.get(i + WARM_AHEAD));
        }
        let dropped = row_verdict(spec, rt, record, keys.get(i), time, now)?;
        verdicts.keep.push(dropped.is_none());
        if let Some(why) = dropped {
            let refused = matches!(why, Dropped::Refused { .. });
            verdicts.dropped.push((i, why));
            if refused && prep.on_invalid == OnInvalidRecord::Fail {
                break;
            }
        }
    }
    Ok(verdicts)
}

/// One row's verdict (see [`give`]): `None` when it is written.
fn row_verdict(
    spec: &DedupSpec,
    rt: &mut DedupRuntime,
    record: &SourceRecord,
    key: Option<&[u8]>,
    time: EventTime,
    now: Instant,
) -> Result<Option<Dropped>, ProcessError> {
    let refused =
        |reason: &'static str, message: String| Some(Dropped::Refused { reason, message });
    let time = match time {
        None => {
            return Ok(refused(
                "null_event_time",
                "the event time is null or missing".into(),
            ))
        }
        Some(Err(value)) => {
            return Ok(refused(
                "event_time_out_of_range",
                format!("event time {value} ms does not fit microseconds"),
            ))
        }
        Some(Ok(time)) => time,
    };
    if rt.state.in_future(time, spec.max_skew_micros) {
        let clock = rt.state.batch_clock().unwrap_or_default();
        return Ok(refused(
            "event_time_in_future",
            format!(
                "event time {time} µs is more than dedup.max_event_time_skew_ms = {} ms after the wall clock {clock} ms",
                spec.max_skew_micros / 1000
            ),
        ));
    }
    rt.tracker
        .observe(&record.topic, record.partition, time, now);
    let Some(key) = key else {
        return Ok(refused(
            "null_key",
            "the dedup key is null or missing".into(),
        ));
    };
    // A worker's partition is late below its floor too (see crate::partition_dedup).
    let below_floor = rt
        .partitions
        .as_ref()
        .is_some_and(|d| d.floors.is_below(&record.topic, record.partition, time));
    let verdict = if below_floor {
        Verdict::Late
    } else {
        rt.state.check(key, time)?
    };
    Ok(match verdict {
        Verdict::Accept => {
            if let Some(d) = rt.partitions.as_mut() {
                d.origins
                    .accepted(key, &record.topic, record.partition, time);
            }
            None
        }
        Verdict::Duplicate => Some(Dropped::Duplicate {
            cross_partition: rt.partitions.as_ref().is_some_and(|d| {
                d.origins
                    .from_other_partition(key, &record.topic, record.partition)
            }),
        }),
        Verdict::Late => {
            let dead_letter = (spec.late == OnLate::DeadLetter).then(|| {
                // The bound this record missed: its partition's floor where that is higher.
                let watermark = rt.state.watermark();
                let w = match &rt.partitions {
                    Some(d) => d
                        .floors
                        .effective(&record.topic, record.partition, watermark),
                    None => watermark,
                }
                .unwrap_or(i64::MIN);
                format!("event time {time} µs is below the watermark {w} µs")
            });
            Some(Dropped::Late { dead_letter })
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    fn runtime(watermark: Option<i64>) -> DedupRuntime {
        DedupRuntime {
            state: DedupState::with_capacity(0, watermark),
            tracker: WatermarkTracker::new(
                [("t".to_string(), 0)],
                1_000,
                Duration::from_secs(60),
                Instant::now(),
            ),
            partitions: None,
            cost: VerdictCost::default(),
        }
    }

    #[test]
    fn readers_see_the_state_as_of_the_last_unlock() {
        let shared = SharedDedup::new(runtime(Some(5)));
        assert_eq!((shared.watermark(), shared.held_keys()), (Some(5), 0));
        {
            let mut rt = shared.lock();
            rt.state.advance(Some(40));
            for (key, time) in [(b"a", 50), (b"b", 60), (b"a", 70)] {
                rt.state.check(key, time).unwrap();
            }
        }
        assert_eq!((shared.watermark(), shared.held_keys()), (Some(40), 2));
    }

    #[test]
    fn the_watermark_is_read_while_a_batch_holds_the_lock() {
        let shared = SharedDedup::new(runtime(Some(7)));
        let held = shared.lock();
        let (tx, rx) = mpsc::channel();
        let reader = shared.clone();
        let t = std::thread::spawn(move || {
            tx.send((reader.watermark(), reader.held_keys())).unwrap();
        });
        // A reader that took the runtime's lock would wait for `held` forever.
        let seen = rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        t.join().unwrap();
        assert_eq!(seen, Ok((Some(7), 0)));
    }
}
