//! Watermark dedup when workers share a pipeline (`source.group`): what a worker adds to the
//! dedup state of one process so that a partition can move between workers without a
//! duplicate reaching the table.
//!
//! **The requirement.** A key's duplicates must arrive on the key's own Kafka partition (the
//! producer keys its messages by the dedup key, or by anything that maps a dedup key to one
//! partition). A worker's state holds the keys of the partitions it reads; a duplicate sent to
//! another partition can only be seen when both partitions are read by one worker.
//!
//! **Moving a partition.** A worker starts each assignment from the table
//! (`protocol::decide_for_worker`). For each partition `p` it gets, the commit that wrote `p`'s
//! claim records `p`'s *floor* `f_p`: the lowest event time the writer's state kept for `p`
//! (its watermark then, or higher: [`PartitionFloors::effective`]). The state the new owner
//! rebuilds for `p` is the table's rows of `p` with event time `>= f_p`, and every record of
//! `p` below `f_p` is late for it. That is exactly what the writer would have decided: its
//! state for `p` was `{accepted rows of p with t >= f_p}` (every accepted row is in the table
//! once; an eviction removes everything below a watermark; a key accepted again after its
//! eviction has its older row below `f_p`), and records below its watermark were late. The
//! worker's own watermark (the minimum over its partitions) may be lower than a partition's
//! floor; the floor still holds for that partition's records until the watermark passes it.
//!
//! **Violations of the requirement** are counted, never silently merged: the state remembers
//! which partition accepted each key ([`KeyOrigins`]), and a duplicate whose key was accepted
//! from another partition is counted as a *cross-partition duplicate* (commitInfo
//! `cross_partition_duplicates`, metric `tidemark_records_cross_partition_duplicate`). It is
//! still dropped: both partitions are on this worker, so the table already holds the key. On
//! two workers both copies are written; the count is how users learn that their producer does
//! not partition by the dedup key. Origins are looked up only for duplicates, and are keyed by
//! a 64-bit hash of the key: a hash collision can only miscount, never change a verdict.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use tidemark_connectors::decode::COL_PARTITION;
use tidemark_connectors::parquet_file::{parsed_stats_bounds, stats_timestamp_micros};

use crate::config::EventTimeUnit;
use crate::dedup::{at_or_above, key_hash, DedupState, FxHasher};
use crate::dedup_key::DedupKey;

/// One Kafka partition of the pipeline, by topic and number.
pub type SourcePartition = (String, i32);

/// Per partition, the lowest event time its dedup state holds (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionFloors {
    /// One entry per partition (a worker has few: a scan beats hashing the topic per record).
    floors: Vec<(SourcePartition, i64)>,
}

impl PartitionFloors {
    /// Floors of the partitions that have one (a partition absent has no floor: its whole
    /// history is in the state).
    pub fn new(floors: impl IntoIterator<Item = (SourcePartition, i64)>) -> Self {
        let mut kept: Vec<(SourcePartition, i64)> = Vec::new();
        for (tp, floor) in floors {
            // A partition given twice keeps its last floor.
            match kept.iter_mut().find(|(k, _)| *k == tp) {
                Some(slot) => slot.1 = floor,
                None => kept.push((tp, floor)),
            }
        }
        Self { floors: kept }
    }

    /// The floor of `topic/partition`, if it has one.
    pub fn floor(&self, topic: &str, partition: i32) -> Option<i64> {
        self.floors
            .iter()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, f)| *f)
    }

    /// Whether a record of `topic/partition` at `event_time` is below the partition's floor
    /// (late, whatever the watermark).
    pub fn is_below(&self, topic: &str, partition: i32, event_time: i64) -> bool {
        self.floor(topic, partition).is_some_and(|f| event_time < f)
    }

    /// The lowest event time the state holds for `topic/partition` under `watermark`: the
    /// higher of the two. What a commit records as the partition's floor for its next owner.
    pub fn effective(&self, topic: &str, partition: i32, watermark: Option<i64>) -> Option<i64> {
        match (self.floor(topic, partition), watermark) {
            (Some(f), Some(w)) => Some(f.max(w)),
            (f, w) => f.or(w),
        }
    }

    /// The lowest floor of `partitions`, or `None` when one of them has none: the watermark a
    /// rebuilt state may start with (no key of any of them below it).
    pub fn lowest(&self, partitions: impl IntoIterator<Item = SourcePartition>) -> Option<i64> {
        let mut lowest = None::<i64>;
        for (t, p) in partitions {
            let f = self.floor(&t, p)?;
            lowest = Some(lowest.map_or(f, |l| l.min(f)));
        }
        lowest
    }
}

/// Which partition accepted each key in state, by a 64-bit hash of the key: only to count
/// cross-partition duplicates (see the module documentation).
///
/// Eviction is lazy, as the state's own (`crate::dedup`): [`KeyOrigins::evict_below`] raises a
/// floor, reads skip the entries below it, and they leave the map in one pass when it holds
/// twice what the last pass kept, instead of a pass over the whole map at every seal.
#[derive(Debug, Default)]
pub struct KeyOrigins {
    /// Key hash -> (partition hash, event time of the accepted record).
    origins: HashMap<u64, (u64, i64), BuildHasherDefault<IdentityHasher>>,
    /// No entry has an event time below this (exact after each sweep).
    oldest: i64,
    /// Entries below this are evicted (the highest watermark given to `evict_below`).
    evicted_below: Option<i64>,
    /// The next insert sweeps when the map holds this many entries (twice what the last
    /// sweep kept, at least [`MIN_SWEEP_AT`]; 0: not set yet).
    sweep_at: usize,
}

/// The fewest entries [`KeyOrigins`] sweeps at (4 in tests, so small maps sweep too).
const MIN_SWEEP_AT: usize = if cfg!(test) { 4 } else { 1024 };

impl KeyOrigins {
    /// Notes that `topic/partition` accepted `key` at `event_time`.
    pub fn accepted(&mut self, key: &[u8], topic: &str, partition: i32, event_time: i64) {
        self.insert(key_hash(key), partition_hash(topic, partition), event_time);
    }

    fn insert(&mut self, key_hash: u64, origin: u64, event_time: i64) {
        if self.origins.len() >= self.sweep_at.max(MIN_SWEEP_AT) {
            self.sweep();
        }
        if self.origins.is_empty() || event_time < self.oldest {
            self.oldest = event_time;
        }
        self.origins.insert(key_hash, (origin, event_time));
    }

    /// Whether `key`, found in state, was accepted from another partition than
    /// `topic/partition` (a key whose partition is unknown never counts).
    pub fn from_other_partition(&self, key: &[u8], topic: &str, partition: i32) -> bool {
        self.origins.get(&key_hash(key)).is_some_and(|(origin, t)| {
            self.is_live(*t)
                && *origin != UNKNOWN_PARTITION
                && *origin != partition_hash(topic, partition)
        })
    }

    /// Forgets the keys below `watermark` (the state evicted them): no read counts them from
    /// now on, and they leave the map at its next sweep.
    pub fn evict_below(&mut self, watermark: Option<i64>) {
        if let Some(w) = watermark {
            self.evicted_below = Some(self.evicted_below.map_or(w, |e| e.max(w)));
        }
    }

    fn is_live(&self, t: i64) -> bool {
        at_or_above(self.evicted_below)(t)
    }

    /// Removes the evicted entries (when the map holds `sweep_at`), and sets the next sweep at
    /// twice what it kept: sweeps stay at least as many inserts apart as the last one kept,
    /// a pass that removes anything runs at most once per raise of the floor (the old cost at
    /// every seal, now only when the map is that full), and the map holds at most twice its
    /// live entries (or [`MIN_SWEEP_AT`]). (Not by the map's capacity: `HashMap::capacity` shrinks with the
    /// tombstones a removal leaves.)
    fn sweep(&mut self) {
        let Some(w) = self.evicted_below.filter(|w| self.oldest < *w) else {
            self.sweep_at = self.origins.len() * 2;
            return;
        };
        let (mut oldest, live) = (i64::MAX, at_or_above(Some(w)));
        self.origins.retain(|_, (_, t)| {
            let keep = live(*t);
            if keep {
                oldest = oldest.min(*t);
            }
            keep
        });
        self.oldest = oldest;
        self.sweep_at = self.origins.len() * 2;
    }

    /// Keys remembered (not evicted): a pass over the map.
    pub fn len(&self) -> usize {
        self.origins
            .values()
            .filter(|(_, t)| self.is_live(*t))
            .count()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a worker's start found for its partitions' dedup state: the partitions it reads (its
/// state holds their rows only) and their floors.
#[derive(Debug, Clone, Default)]
pub struct WorkerDedupStart {
    /// The partitions assigned to the run.
    pub assigned: Vec<SourcePartition>,
    /// Their floors, from the commits that wrote their claims.
    pub floors: PartitionFloors,
}

/// What a worker's dedup runtime carries beyond one process's: the floors its start found in
/// the table and the origins of its keys.
#[derive(Debug, Default)]
pub struct PartitionDedup {
    /// Per partition, the floor from the table at this run's start.
    pub floors: PartitionFloors,
    /// Which partition accepted each key.
    pub origins: KeyOrigins,
}

/// A worker's dedup state from its partitions' rows in the table, read in any order (files
/// come in no time order): per key, its newest row at or above the row's partition floor (and
/// the lowest floor, which the state starts at as its watermark). The newest row is the old
/// owner's entry: a key is accepted again only after its older row was evicted. So a floor
/// lower than the old owner's state (unknown, or from a commit older than the evictions)
/// only keeps more keys, never an older time that the first seal would evict.
pub struct WorkerStateBuilder<'a> {
    start: &'a WorkerDedupStart,
    watermark: Option<i64>,
    newest: HashMap<DedupKey, (i64, u64), BuildHasherDefault<FxHasher>>,
    unplaced: u64,
}

/// The origin of a key loaded from a row that does not say its partition.
const UNKNOWN_PARTITION: u64 = u64::MAX;

impl<'a> WorkerStateBuilder<'a> {
    /// A builder for the partitions and floors of `start`.
    pub fn new(start: &'a WorkerDedupStart) -> Self {
        Self {
            watermark: start.floors.lowest(start.assigned.iter().cloned()),
            start,
            newest: HashMap::default(),
            unplaced: 0,
        }
    }

    /// The watermark the state starts with: the lowest floor of its partitions (`None` when
    /// one has none).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// One row: its dedup key, event time and partition (`None`: a row without
    /// `_kafka_topic`/`_kafka_partition`, from another writer: kept when at or above the
    /// lowest floor, since it may be one of ours).
    pub fn add(&mut self, key: &[u8], time: i64, place: Option<(&str, i32)>) {
        if self.watermark.is_some_and(|w| time < w) {
            return;
        }
        let origin = match place {
            Some((topic, partition)) => {
                let ours = self
                    .start
                    .assigned
                    .iter()
                    .any(|(t, p)| *p == partition && t == topic);
                if !ours || self.start.floors.is_below(topic, partition, time) {
                    return;
                }
                partition_hash(topic, partition)
            }
            None => {
                self.unplaced += 1;
                UNKNOWN_PARTITION
            }
        };
        match self.newest.get_mut(key) {
            Some(slot) if slot.0 >= time => {}
            Some(slot) => *slot = (time, origin),
            None => {
                self.newest.insert(DedupKey::from(key), (time, origin));
            }
        }
    }

    /// Rows kept that did not say their partition.
    pub fn unplaced_rows(&self) -> u64 {
        self.unplaced
    }

    /// The state (its keys loaded, not recorded as inserted: a worker's state is never read
    /// back from its store) and the keys' origins.
    pub fn finish(self) -> (DedupState, KeyOrigins) {
        let state = DedupState::from_entries(
            self.newest.iter().map(|(k, (t, _))| (k.as_slice(), *t)),
            self.watermark,
        );
        let mut origins = KeyOrigins::default();
        for (k, (t, origin)) in &self.newest {
            origins.insert(key_hash(k.as_slice()), *origin, *t);
        }
        (state, origins)
    }
}

/// How a file's stats bound the event-time column: ISO timestamps, or a long in its unit.
#[derive(Debug, Clone)]
pub struct TimeColumn {
    /// The column's name.
    pub name: String,
    /// `None`: a timestamp column (stats are ISO strings); else a long in this unit.
    pub long_unit: Option<EventTimeUnit>,
}

impl TimeColumn {
    /// The event-time column `time` names in `schema` (the table's).
    pub fn of(time: crate::epoch::TimeSource, schema: &arrow::datatypes::Schema) -> Self {
        use crate::epoch::TimeSource;
        match time {
            TimeSource::KafkaTimestamp => TimeColumn {
                name: tidemark_connectors::decode::COL_TIMESTAMP.to_string(),
                long_unit: None,
            },
            TimeSource::TimestampColumn(i) => TimeColumn {
                name: schema.field(i).name().clone(),
                long_unit: None,
            },
            TimeSource::LongColumn(i, unit) => TimeColumn {
                name: schema.field(i).name().clone(),
                long_unit: Some(unit),
            },
        }
    }
}

/// Whether a data file with Delta stats `stats` may hold rows of partitions `numbers` (of any
/// topic) at or above `floor` in `time`. Unknown bounds keep the file. A timestamp maximum is
/// taken as up to 999 µs higher than written: the Delta protocol lets writers truncate it to
/// milliseconds (Tidemark rounds it up; other engines rewriting files may not).
pub fn file_may_hold(stats: &str, numbers: &[i32], floor: Option<i64>, time: &TimeColumn) -> bool {
    let Ok(stats) = serde_json::from_str::<serde_json::Value>(stats) else {
        return true;
    };
    if let Some((lo, hi)) = parsed_stats_bounds(&stats, COL_PARTITION) {
        if let (Some(lo), Some(hi)) = (lo.as_i64(), hi.as_i64()) {
            if !numbers.iter().any(|p| (lo..=hi).contains(&(*p as i64))) {
                return false;
            }
        }
    }
    let Some(floor) = floor else {
        return true;
    };
    let Some((_, max)) = parsed_stats_bounds(&stats, &time.name) else {
        return true;
    };
    let max_micros = match time.long_unit {
        None => stats_timestamp_micros(max).map(|m| m.saturating_add(999)),
        Some(EventTimeUnit::Millis) => max.as_i64().map(|m| m.saturating_mul(1000)),
        Some(EventTimeUnit::Micros) => max.as_i64(),
    };
    max_micros.is_none_or(|m| m >= floor)
}

fn partition_hash(topic: &str, partition: i32) -> u64 {
    let mut h = FxHasher::default();
    topic.hash(&mut h);
    partition.hash(&mut h);
    h.finish()
}

/// The keys of [`KeyOrigins`] are hashes already.
#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tp(t: &str, p: i32) -> SourcePartition {
        (t.to_string(), p)
    }

    #[test]
    fn a_floor_makes_older_records_of_its_partition_late_only() {
        let f = PartitionFloors::new([(tp("a", 0), 100)]);
        assert!(f.is_below("a", 0, 99));
        assert!(!f.is_below("a", 0, 100));
        assert!(!f.is_below("a", 1, 0), "another partition has no floor");
        assert!(!f.is_below("b", 0, 0), "another topic has no floor");
        assert_eq!(f.effective("a", 0, Some(50)), Some(100));
        assert_eq!(f.effective("a", 0, Some(150)), Some(150));
        assert_eq!(f.effective("a", 1, Some(50)), Some(50));
        assert_eq!(f.effective("a", 1, None), None);
        assert_eq!(f.lowest([tp("a", 0)]), Some(100));
        assert_eq!(f.lowest([tp("a", 0), tp("a", 1)]), None);
    }

    #[test]
    fn origins_tell_another_partition_from_the_same_one() {
        let mut o = KeyOrigins::default();
        o.accepted(b"k", "a", 0, 10);
        assert!(!o.from_other_partition(b"k", "a", 0));
        assert!(o.from_other_partition(b"k", "a", 1));
        assert!(o.from_other_partition(b"k", "b", 0));
        assert!(!o.from_other_partition(b"unknown", "a", 1));
        o.evict_below(Some(11));
        assert!(o.is_empty());
        assert!(!o.from_other_partition(b"k", "a", 1), "evicted: no origin");
        o.evict_below(Some(5));
        assert!(o.is_empty(), "the floor never goes back");
    }

    /// Evicted origins leave the map when it is full: a sliding window of keys never makes it
    /// grow past what the window needs, and every key in the window keeps its origin.
    #[test]
    fn evicted_origins_are_swept_when_the_map_is_full() {
        let mut o = KeyOrigins::default();
        let mut most = 0;
        for epoch in 0..40i64 {
            for i in 0..1_000i64 {
                let key = (epoch * 1_000 + i).to_le_bytes();
                o.accepted(&key, "t", (i % 2) as i32, epoch * 1_000 + i);
            }
            o.evict_below(Some((epoch - 2) * 1_000));
            assert_eq!(
                o.len(),
                (epoch.min(2) as usize + 1) * 1_000,
                "epoch {epoch}"
            );
            most = most.max(o.origins.len());
            for i in [0i64, 999] {
                let key = (epoch * 1_000 + i).to_le_bytes();
                assert!(o.from_other_partition(&key, "t", 1 - (i % 2) as i32));
            }
        }
        assert!(
            most <= 2 * 4_000,
            "the map held {most} for a window of at most 4,000 keys"
        );
    }

    /// A sweep sets the next one at twice what it kept: a map whose entries all stay live
    /// is not swept at every insert.
    #[test]
    fn the_next_sweep_of_origins_is_twice_what_the_last_kept() {
        let mut o = KeyOrigins::default();
        o.accepted(b"old", "t", 0, 0);
        for t in 1..MIN_SWEEP_AT as i64 {
            o.accepted(&t.to_le_bytes(), "t", 0, 10);
        }
        o.evict_below(Some(5));
        o.accepted(b"new", "t", 0, 10);
        assert_eq!(o.origins.len(), MIN_SWEEP_AT, "old swept, new in");
        assert_eq!(o.sweep_at, 2 * (MIN_SWEEP_AT - 1));
        for t in 0..MIN_SWEEP_AT as i64 - 2 {
            o.accepted(&(-t - 1).to_le_bytes(), "t", 0, 10);
        }
        assert_eq!(o.origins.len(), 2 * MIN_SWEEP_AT - 2, "no sweep before it");
    }

    fn start(floors: &[(i32, i64)], assigned: &[i32]) -> WorkerDedupStart {
        WorkerDedupStart {
            assigned: assigned.iter().map(|p| tp("t", *p)).collect(),
            floors: PartitionFloors::new(floors.iter().map(|(p, f)| (tp("t", *p), *f))),
        }
    }

    /// A key evicted and accepted again has two rows in the table; whichever file is read
    /// first, the rebuilt state holds the newer one (the old owner's entry), so a retry of it
    /// after the watermark passed the older time is still a duplicate.
    #[test]
    fn the_rebuild_keeps_each_keys_newest_row_whatever_the_order() {
        for rows in [[(10, 0), (200, 0)], [(200, 0), (10, 0)]] {
            let s = start(&[], &[0]);
            let mut b = WorkerStateBuilder::new(&s);
            assert_eq!(b.watermark(), None, "no floor: no watermark");
            for (t, p) in rows {
                b.add(b"k", t, Some(("t", p)));
            }
            let (mut state, _) = b.finish();
            state.advance(Some(50));
            assert_eq!(
                state.check(b"k", 210).unwrap(),
                crate::dedup::Verdict::Duplicate,
                "rows read as {rows:?}"
            );
        }
    }

    /// Rows of other partitions and below their partition's floor are left out; the state
    /// starts at the lowest floor; origins name each key's partition; a row that does not
    /// say its partition is kept (at or above the lowest floor) and never counts as another
    /// partition's.
    #[test]
    fn the_rebuild_takes_its_partitions_rows_from_their_floors() {
        let s = start(&[(0, 100), (1, 50)], &[0, 1]);
        let mut b = WorkerStateBuilder::new(&s);
        assert_eq!(b.watermark(), Some(50));
        b.add(b"below-floor-0", 99, Some(("t", 0)));
        b.add(b"at-floor-0", 100, Some(("t", 0)));
        b.add(b"on-1", 60, Some(("t", 1)));
        b.add(b"not-ours", 500, Some(("t", 2)));
        b.add(b"other-topic", 500, Some(("u", 0)));
        b.add(b"unplaced", 70, None);
        b.add(b"unplaced-low", 40, None);
        assert_eq!(b.unplaced_rows(), 1);
        let (state, origins) = b.finish();
        let mut keys: Vec<&[u8]> = state.entries().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, vec![&b"at-floor-0"[..], b"on-1", b"unplaced"]);
        assert_eq!(state.watermark(), Some(50));
        assert!(origins.from_other_partition(b"on-1", "t", 0));
        assert!(!origins.from_other_partition(b"on-1", "t", 1));
        assert!(!origins.from_other_partition(b"unplaced", "t", 0));
    }

    fn file_stats(rows: &[(i32, i64)], truncate_max_to_ms: bool) -> String {
        use arrow::array::{Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = Schema::new(vec![
            Field::new(COL_PARTITION, DataType::Int32, false),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("ms", DataType::Int64, false),
        ]);
        let batch = RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                std::sync::Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                std::sync::Arc::new(
                    TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                std::sync::Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|r| r.1.div_euclid(1000))
                        .collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        let mut stats = tidemark_connectors::parquet_file::stats(&batch);
        if truncate_max_to_ms {
            // As other engines write it: the maximum truncated down to the millisecond (the
            // minimum of a one-row file at that time is that text).
            let max = rows.iter().map(|r| r.1).max().unwrap();
            let down = max - max.rem_euclid(1000);
            let one: serde_json::Value =
                serde_json::from_str(&file_stats(&[(0, down)], false)).unwrap();
            stats["maxValues"]["t"] = one["minValues"]["t"].clone();
        }
        stats.to_string()
    }

    #[test]
    fn a_file_is_read_only_when_its_bounds_allow_the_workers_rows() {
        let ts = TimeColumn {
            name: "t".into(),
            long_unit: None,
        };
        let ms = TimeColumn {
            name: "ms".into(),
            long_unit: Some(EventTimeUnit::Millis),
        };
        let s = file_stats(&[(2, 1_000_000), (4, 2_000_000)], false);
        assert!(file_may_hold(&s, &[3], None, &ts));
        assert!(
            !file_may_hold(&s, &[0, 5], None, &ts),
            "no partition of ours"
        );
        assert!(file_may_hold(&s, &[4], Some(2_000_000), &ts));
        assert!(
            file_may_hold(&s, &[4], Some(2_000_999), &ts),
            "a truncated max"
        );
        assert!(!file_may_hold(&s, &[4], Some(2_001_000), &ts));
        assert!(file_may_hold(&s, &[4], Some(2_000_000), &ms));
        assert!(!file_may_hold(&s, &[4], Some(2_000_001), &ms));
        assert!(
            file_may_hold("{}", &[0], Some(i64::MAX), &ts),
            "no bounds: read"
        );
        assert!(file_may_hold("garbage", &[0], Some(i64::MAX), &ts));
    }

    proptest! {
        /// Against a model: after any sequence of accepts and evictions, a key's origin is
        /// the partition of its newest accept at or above the watermark, and nothing below
        /// the watermark is kept.
        #[test]
        fn origins_follow_the_newest_accept_and_the_watermark(
            ops in prop::collection::vec(
                prop_oneof![
                    (0u8..20, 0i32..3, 0i64..1000).prop_map(|(k, p, t)| (Some((k, p)), t)),
                    (0i64..1000).prop_map(|w| (None, w)),
                ],
                0..200,
            )
        ) {
            let mut o = KeyOrigins::default();
            let mut model: HashMap<u8, (i32, i64)> = HashMap::new();
            let mut watermark = None::<i64>;
            let mut peak = 0;
            for (op, t) in ops {
                match op {
                    Some((k, p)) => {
                        if watermark.is_none_or(|w| t >= w) {
                            o.accepted(&[k], "t", p, t);
                            model.insert(k, (p, t));
                        }
                    }
                    None => {
                        let w = watermark.map_or(t, |w| w.max(t));
                        watermark = Some(w);
                        o.evict_below(watermark);
                        model.retain(|_, (_, kt)| *kt >= w);
                    }
                }
                // Every key, evicted ones too, after every step; the map holds at most twice
                // the most keys that were live (sweeps happen: the threshold is 4 in tests).
                peak = peak.max(model.len());
                for k in 0u8..20 {
                    for q in 0..3 {
                        let other = model.get(&k).is_some_and(|(p, _)| *p != q);
                        prop_assert_eq!(o.from_other_partition(&[k], "t", q), other);
                    }
                }
                prop_assert!(o.origins.len() <= (2 * peak).max(MIN_SWEEP_AT));
            }
            prop_assert_eq!(o.len(), model.len());
        }

        /// A file is never skipped when one of its rows is of the worker's partitions at or
        /// above the floor: with stats as Tidemark writes them, with the timestamp maximum
        /// truncated to the millisecond (other writers), and for a long column in ms.
        #[test]
        fn pruning_never_skips_a_file_holding_a_needed_row(
            rows in prop::collection::vec((0i32..8, -5_000_000i64..5_000_000), 1..20),
            numbers in prop::collection::vec(0i32..8, 1..4),
            floor in -6_000_000i64..6_000_000,
            truncated in any::<bool>(),
        ) {
            let stats = file_stats(&rows, truncated);
            let needed = rows.iter().any(|(p, t)| numbers.contains(p) && *t >= floor);
            let ts = TimeColumn { name: "t".into(), long_unit: None };
            if needed {
                prop_assert!(file_may_hold(&stats, &numbers, Some(floor), &ts), "{}", stats);
            }
            let ms = TimeColumn { name: "ms".into(), long_unit: Some(EventTimeUnit::Millis) };
            let needed_ms = rows
                .iter()
                .any(|(p, t)| numbers.contains(p) && t.div_euclid(1000) * 1000 >= floor);
            if needed_ms {
                prop_assert!(file_may_hold(&stats, &numbers, Some(floor), &ms), "{}", stats);
            }
        }
    }
}
