//! Dead letters after a failover: the letters of records re-read from a mirrored cluster are
//! not written a second time.
//!
//! The dead-letter table knows which letters it holds by offset ([`crate::committer::
//! DeadLetterTable`]: every letter of a record below its end positions). Offsets of another
//! cluster say nothing here: after a failover the overlap re-read from the mirror (by time or
//! by translation) holds records whose letters the old region already wrote, at other
//! offsets. Dedup cannot drop them (a malformed record has no dedup key). So letters written
//! while reading another cluster are recognised by what the mirror keeps of a record: topic,
//! partition, Kafka timestamp, key and value ([`LetterId`]). At a start, the letters of the
//! table's commits of *other* clusters whose records may be read again (Kafka timestamp at or
//! after the partition's window) are loaded as a multiset ([`OverlapLetters`]); each letter
//! the run would write is first matched against it, and a match (one per letter held) is not
//! written again. Identical records (same key, value and timestamp) are counted, so a record
//! produced twice is dead-lettered twice, as before the failover.
//!
//! Limits: a letter the old region wrote for a record outside the window is not matched (the
//! window is the failover's start time of the partition, or the whole partition when it did
//! not start by time); a letter whose record the mirror changed (another timestamp) is not
//! matched either.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use arrow::array::{Array, BinaryArray, Int32Array, Int64Array, StringArray};
use arrow::array::{RecordBatch, TimestampMicrosecondArray};
use futures::StreamExt;
use tidemark_connectors::dead_letter::DeadLetter;
use tidemark_connectors::delta::{DeltaSink, DeltaSinkError, EpochCommitInfo};
use tidemark_connectors::TopicPartition;
use tracing::info;

/// What identifies a record across clusters: topic, partition, Kafka timestamp (micros, as the
/// dead-letter table stores it) and a hash of its key and value (as the letter holds them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LetterId {
    topic: String,
    partition: i32,
    timestamp_us: Option<i64>,
    content: u64,
}

impl LetterId {
    /// The identity of a letter's record from its fields.
    pub fn new(
        topic: &str,
        partition: i32,
        timestamp_us: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Self {
        // SipHash with fixed keys: the same bytes give the same hash in every process.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        key.hash(&mut h);
        value.hash(&mut h);
        Self {
            topic: topic.to_string(),
            partition,
            timestamp_us,
            content: h.finish(),
        }
    }

    /// The identity of a letter the run is about to write.
    pub fn of(letter: &DeadLetter) -> Self {
        Self::new(
            &letter.topic,
            letter.partition,
            letter
                .timestamp_ms
                .and_then(tidemark_connectors::decode::timestamp_micros),
            letter.key.as_deref(),
            letter.value.as_deref(),
        )
    }
}

/// Letters the dead-letter table holds from other clusters' commits, by identity, counted.
#[derive(Debug, Clone, Default)]
pub struct OverlapLetters {
    held: HashMap<LetterId, u32>,
    /// Letters matched (not written again) so far.
    pub matched: u64,
}

impl OverlapLetters {
    /// Adds one held letter.
    pub fn add(&mut self, id: LetterId) {
        *self.held.entry(id).or_insert(0) += 1;
    }

    /// Held letters not matched yet.
    pub fn len(&self) -> usize {
        self.held.values().map(|n| *n as usize).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// True (and one held letter used up) when `letter` is held already: not to be written.
    pub fn take(&mut self, letter: &DeadLetter) -> bool {
        let id = LetterId::of(letter);
        match self.held.get_mut(&id) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&id);
                }
                self.matched += 1;
                true
            }
            None => false,
        }
    }
}

/// Where re-reading may start, per partition: letters with a Kafka timestamp (ms) at or after
/// it may be of re-read records (`None`: the whole partition).
pub type Windows = BTreeMap<TopicPartition, Option<i64>>;

/// The cluster a commit's positions belong to: its `cluster_id`, else its partitions' (a
/// dead-letter commit copies the main table's positions, which name their cluster).
pub fn cluster_of_commit(info: &EpochCommitInfo) -> Option<String> {
    info.cluster_id
        .clone()
        .or_else(|| info.partitions.iter().find_map(|p| p.cluster_id.clone()))
}

/// The epochs of `commits` written while reading a cluster other than `here` (commits
/// recording no cluster are not counted: they predate cluster-aware positions).
pub fn epochs_of_other_clusters(commits: &[EpochCommitInfo], here: &str) -> BTreeSet<i64> {
    commits
        .iter()
        .filter(|c| cluster_of_commit(c).is_some_and(|c| c != here))
        .map(|c| c.epoch.to_txn())
        .collect()
}

/// Loads the letters of `pipeline_id` in `sink` (a dead-letter table) written in `epochs`
/// whose record falls in `windows` (a partition absent from `windows` is not loaded).
pub async fn load(
    sink: &DeltaSink,
    pipeline_id: &str,
    epochs: &BTreeSet<i64>,
    windows: &Windows,
) -> Result<OverlapLetters, DeltaSinkError> {
    let mut letters = OverlapLetters::default();
    if epochs.is_empty() || windows.is_empty() {
        return Ok(letters);
    }
    let columns: Vec<String> = [
        "topic",
        "partition",
        "kafka_timestamp",
        "key",
        "value",
        "pipeline_id",
        "epoch",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let mut batches = sink.read_columns(&columns)?;
    while let Some(batch) = batches.next().await {
        add_batch(&mut letters, &batch?, pipeline_id, epochs, windows).map_err(|message| {
            DeltaSinkError {
                op: "read the dead letters a failover must not write again",
                table: sink.uri().to_string(),
                file: None,
                source: message.into(),
            }
        })?;
    }
    info!(table = %sink.uri(), letters = letters.len(), "dead letters written while reading another cluster, in the window a failover re-reads: not written again");
    Ok(letters)
}

/// Adds the rows of one dead-letter batch that qualify (see [`load`]). A column missing or of
/// another type is an error naming it: the guard silently off would write letters twice.
fn add_batch(
    letters: &mut OverlapLetters,
    batch: &RecordBatch,
    pipeline_id: &str,
    epochs: &BTreeSet<i64>,
    windows: &Windows,
) -> Result<(), String> {
    fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| format!("the dead-letter table has no column {name}"))?;
        column.as_any().downcast_ref::<T>().ok_or_else(|| {
            format!(
                "the dead-letter column {name} is of type {} (not what Tidemark writes)",
                column.data_type()
            )
        })
    }
    let topic = col::<StringArray>(batch, "topic")?;
    let partition = col::<Int32Array>(batch, "partition")?;
    let ts = col::<TimestampMicrosecondArray>(batch, "kafka_timestamp")?;
    let key = col::<BinaryArray>(batch, "key")?;
    let value = col::<BinaryArray>(batch, "value")?;
    let pid = col::<StringArray>(batch, "pipeline_id")?;
    let epoch = col::<Int64Array>(batch, "epoch")?;
    for i in 0..batch.num_rows() {
        if pid.value(i) != pipeline_id || !epochs.contains(&epoch.value(i)) {
            continue;
        }
        let tp = TopicPartition {
            topic: topic.value(i).to_string(),
            partition: partition.value(i),
        };
        let timestamp_us = (!ts.is_null(i)).then(|| ts.value(i));
        let in_window = match windows.get(&tp) {
            None => false,
            Some(None) => true,
            // A letter without a timestamp cannot be placed: kept (matching needs the same).
            Some(Some(from_ms)) => timestamp_us.is_none_or(|us| us >= from_ms.saturating_mul(1000)),
        };
        if !in_window {
            continue;
        }
        letters.add(LetterId::new(
            &tp.topic,
            tp.partition,
            timestamp_us,
            (!key.is_null(i)).then(|| key.value(i)),
            (!value.is_null(i)).then(|| value.value(i)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tidemark_connectors::dead_letter;
    use tidemark_connectors::{Epoch, SourceRecord};

    fn record(offset: i64, ts: i64, value: &[u8]) -> SourceRecord {
        SourceRecord {
            topic: Arc::from("o"),
            partition: 1,
            offset,
            timestamp_ms: Some(ts),
            key: Some(b"k".to_vec()),
            payload: Some(value.to_vec()),
        }
    }

    fn windows(from: Option<i64>) -> Windows {
        [(
            TopicPartition {
                topic: "o".into(),
                partition: 1,
            },
            from,
        )]
        .into_iter()
        .collect()
    }

    /// Letters as the table holds them (through the table's own row format) match the same
    /// records read at other offsets, once per letter held; others do not.
    #[test]
    fn a_held_letter_matches_the_same_record_at_another_offset_once() {
        let old = [
            DeadLetter::of(&record(10, 5_000, b"{bad"), "malformed_json", "x"),
            DeadLetter::of(&record(11, 5_000, b"{bad"), "malformed_json", "x"),
            DeadLetter::of(&record(12, 1_000, b"{old"), "malformed_json", "x"),
        ];
        let batch = dead_letter::to_batch(
            &dead_letter::arrow_schema(),
            "p",
            Epoch::new(4),
            &old.iter().collect::<Vec<_>>(),
        )
        .unwrap();
        let mut held = OverlapLetters::default();
        let epochs: BTreeSet<i64> = [4].into_iter().collect();
        add_batch(&mut held, &batch, "p", &epochs, &windows(Some(2_000))).unwrap();
        // The letter at 1 s is before the window: not held.
        assert_eq!(held.len(), 2);
        // Another pipeline's or another epoch's rows are not held either.
        let mut none = OverlapLetters::default();
        add_batch(&mut none, &batch, "other", &epochs, &windows(None)).unwrap();
        add_batch(
            &mut none,
            &batch,
            "p",
            &[5].into_iter().collect(),
            &windows(None),
        )
        .unwrap();
        assert!(none.is_empty());
        // A dead-letter file without one of the columns: an error naming it, never a guard
        // silently off.
        let without_key = batch.project(&[0]).unwrap();
        let err = add_batch(&mut none, &without_key, "p", &epochs, &windows(None)).unwrap_err();
        assert!(err.contains("no column"), "{err}");

        // Re-read at other offsets: the two identical records match, a third copy does not.
        let again = |offset| DeadLetter::of(&record(offset, 5_000, b"{bad"), "malformed_json", "y");
        assert!(held.take(&again(107)));
        assert!(held.take(&again(108)));
        assert!(!held.take(&again(109)));
        // Another value or timestamp is another record.
        let mut held2 = OverlapLetters::default();
        add_batch(&mut held2, &batch, "p", &epochs, &windows(None)).unwrap();
        assert!(!held2.take(&DeadLetter::of(
            &record(1, 5_000, b"{bae"),
            "malformed_json",
            "y"
        )));
        assert!(!held2.take(&DeadLetter::of(
            &record(1, 5_001, b"{bad"),
            "malformed_json",
            "y"
        )));
        assert!(held2.take(&DeadLetter::of(
            &record(1, 1_000, b"{old"),
            "malformed_json",
            "y"
        )));
        assert_eq!(held2.matched, 1);
    }
}
