//! What a source yields ([`SourceRecord`]) and where it stands ([`Positions`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A topic and partition: the unit a position is kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Kafka topic name.
    pub topic: String,
    /// Partition number inside the topic.
    pub partition: i32,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One message read from a source, owned so it can outlive the consumer's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// Topic the message came from (shared: many records carry the same name).
    pub topic: Arc<str>,
    /// Partition the message came from.
    pub partition: i32,
    /// Offset of the message inside its partition.
    pub offset: i64,
    /// The broker's or producer's timestamp in milliseconds since the epoch, when known.
    pub timestamp_ms: Option<i64>,
    /// Message key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Message value bytes; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

impl SourceRecord {
    /// `topic/partition@offset`: how every error and log line names a record.
    pub fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// `records` cut into runs of consecutive records of one topic-partition, in order: what
/// per-partition bookkeeping needs to look up once per run rather than once per record.
pub fn partition_runs(records: &[SourceRecord]) -> impl Iterator<Item = &[SourceRecord]> {
    records.chunk_by(|a, b| {
        a.partition == b.partition && (Arc::ptr_eq(&a.topic, &b.topic) || a.topic == b.topic)
    })
}

/// Where a source stands: for each topic-partition, the NEXT offset to read.
///
/// Serialized as `{"topic": {"0": 123, "1": 456}}` in Delta commitInfo, so a table carries the
/// progress of the pipeline that wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Positions(BTreeMap<String, BTreeMap<i32, i64>>);

impl Positions {
    /// No positions: every partition starts at its beginning.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next offset to read for `topic/partition`, if one is known.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    /// Records that `topic/partition` must next be read at `next_offset`.
    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.0
            .entry(topic.to_string())
            .or_default()
            .insert(partition, next_offset);
    }

    /// Advances past `record` (positions only move forward). Allocates only for a partition
    /// seen for the first time. The position past offset `i64::MAX` (no Kafka offset comes
    /// near) stays `i64::MAX` rather than wrap, so advancing is monotone in the offset, which
    /// [`Positions::advance_past_all`] relies on.
    pub fn advance_past(&mut self, record: &SourceRecord) {
        let next = record.offset.saturating_add(1);
        if let Some(slot) = self
            .0
            .get_mut(record.topic.as_ref())
            .and_then(|parts| parts.get_mut(&record.partition))
        {
            if *slot < next {
                *slot = next;
            }
            return;
        }
        self.0
            .entry(record.topic.to_string())
            .or_default()
            .insert(record.partition, next);
    }

    /// Advances past every record of `records`: the same as [`Positions::advance_past`] on
    /// each in turn, with one lookup per run of records of one partition
    /// ([`partition_runs`]). Why: a fetch hands records over in such runs, and the lookup
    /// per record (a string compare per tree level) was a measurable share of the thread
    /// that reads every record (issue 19).
    pub fn advance_past_all(&mut self, records: &[SourceRecord]) {
        for run in partition_runs(records) {
            if let Some(newest) = run.iter().max_by_key(|r| r.offset) {
                self.advance_past(newest);
            }
        }
    }

    /// Every known `(topic/partition, next offset)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (TopicPartition, i64)> + '_ {
        self.0.iter().flat_map(|(topic, parts)| {
            parts.iter().map(move |(p, o)| {
                (
                    TopicPartition {
                        topic: topic.clone(),
                        partition: *p,
                    },
                    *o,
                )
            })
        })
    }

    /// True when no position is known.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|p| p.is_empty())
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (tp, offset) in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{tp}={offset}")?;
        }
        if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(topic: &str, partition: i32, offset: i64) -> SourceRecord {
        SourceRecord {
            topic: Arc::from(topic),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            payload: None,
        }
    }

    #[test]
    fn positions_serialize_as_nested_objects() {
        let mut p = Positions::new();
        p.set("orders", 0, 10);
        p.set("orders", 2, 7);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"orders":{"0":10,"2":7}}"#);
        let back: Positions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    proptest! {
        /// Advancing over a batch at once moves the positions exactly as advancing over its
        /// records one by one, whatever order and runs the records come in.
        #[test]
        fn advancing_over_a_batch_equals_advancing_record_by_record(
            start in proptest::collection::vec((0usize..2, 0i32..3, 0i64..50), 0..4),
            records in proptest::collection::vec(
                (0usize..2, 0i32..3, prop_oneof![0i64..50, Just(i64::MAX)]),
                0..60,
            ),
        ) {
            let topics = ["a", "b"];
            let mut one_by_one = Positions::new();
            for (t, p, o) in &start {
                one_by_one.set(topics[*t], *p, *o);
            }
            let mut at_once = one_by_one.clone();
            let records: Vec<SourceRecord> =
                records.iter().map(|(t, p, o)| record(topics[*t], *p, *o)).collect();
            for r in &records {
                one_by_one.advance_past(r);
            }
            at_once.advance_past_all(&records);
            prop_assert_eq!(at_once, one_by_one);
            let runs: Vec<&[SourceRecord]> = partition_runs(&records).collect();
            prop_assert_eq!(runs.concat(), records.clone());
            for run in runs {
                prop_assert!(run.iter().all(|r| r.topic == run[0].topic && r.partition == run[0].partition));
            }
        }
    }

    #[test]
    fn positions_never_move_backwards() {
        let mut p = Positions::new();
        p.advance_past(&record("t", 0, 5));
        p.advance_past(&record("t", 0, 3));
        assert_eq!(p.get("t", 0), Some(6));
    }

    proptest! {
        #[test]
        fn positions_round_trip(entries in proptest::collection::vec(("[a-z]{1,5}", 0i32..8, 0i64..i64::MAX), 0..20)) {
            let mut p = Positions::new();
            for (t, part, off) in &entries {
                p.set(t, *part, *off);
            }
            let back: Positions = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            prop_assert_eq!(back, p);
        }
    }
}
