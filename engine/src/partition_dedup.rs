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
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use crate::dedup::FxHasher;

/// One Kafka partition of the pipeline, by topic and number.
pub type SourcePartition = (String, i32);

/// Per partition, the lowest event time its dedup state holds (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionFloors {
    floors: HashMap<SourcePartition, i64>,
}

impl PartitionFloors {
    /// Floors of the partitions that have one (a partition absent has no floor: its whole
    /// history is in the state).
    pub fn new(floors: impl IntoIterator<Item = (SourcePartition, i64)>) -> Self {
        Self {
            floors: floors.into_iter().collect(),
        }
    }

    /// The floor of `topic/partition`, if it has one.
    pub fn floor(&self, topic: &str, partition: i32) -> Option<i64> {
        // Few partitions per worker: the String key is not worth a borrowed-key map.
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
#[derive(Debug, Default)]
pub struct KeyOrigins {
    /// Key hash -> (partition hash, event time of the accepted record).
    origins: HashMap<u64, (u64, i64), BuildHasherDefault<IdentityHasher>>,
    /// No entry has an event time below this (exact after each eviction).
    oldest: i64,
}

impl KeyOrigins {
    /// Notes that `topic/partition` accepted `key` at `event_time`.
    pub fn accepted(&mut self, key: &[u8], topic: &str, partition: i32, event_time: i64) {
        if self.origins.is_empty() || event_time < self.oldest {
            self.oldest = event_time;
        }
        self.origins.insert(
            key_hash(key),
            (partition_hash(topic, partition), event_time),
        );
    }

    /// Whether `key`, found in state, was accepted from another partition than
    /// `topic/partition`.
    pub fn from_other_partition(&self, key: &[u8], topic: &str, partition: i32) -> bool {
        self.origins
            .get(&key_hash(key))
            .is_some_and(|(origin, _)| *origin != partition_hash(topic, partition))
    }

    /// Forgets the keys below `watermark` (the state evicted them).
    pub fn evict_below(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else {
            return;
        };
        if self.origins.is_empty() || self.oldest >= w {
            return;
        }
        let mut oldest = i64::MAX;
        self.origins.retain(|_, (_, t)| {
            let keep = *t >= w;
            if keep {
                oldest = oldest.min(*t);
            }
            keep
        });
        self.oldest = oldest;
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
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

fn key_hash(key: &[u8]) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(key)
}

fn partition_hash(topic: &str, partition: i32) -> u64 {
    let mut h = FxHasher::default();
    topic.hash(&mut h);
    partition.hash(&mut h);
    h.finish()
}

/// The keys of [`KeyOrigins`] are hashes already.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

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
            }
            prop_assert_eq!(o.len(), model.len());
            for (k, (p, _)) in &model {
                for q in 0..3 {
                    prop_assert_eq!(o.from_other_partition(&[*k], "t", q), q != *p);
                }
            }
        }
    }
}
