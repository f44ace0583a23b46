//! The epoch being read, and how each record becomes a row, a duplicate, a late record or a
//! dead letter ([`RecordProcessor`]).
//!
//! Records enter an epoch in WAL order, whether they come from the source or are replayed from
//! the WAL after a crash, and go through the same steps: size check, JSON decode, dedup key and
//! event time, dedup verdict. Each step is a pure function of the record and the dedup state
//! (the watermark in effect is fixed for the whole epoch), so a replayed epoch yields exactly
//! the rows, drops and dead letters it yielded the first time. That determinism is what makes
//! redo from the WAL safe.

use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};
use tidemark_connectors::dead_letter::DeadLetter;
use tidemark_connectors::decode::{InvalidRecord, JsonDecoder, COL_TIMESTAMP};
use tidemark_connectors::{Positions, SourceRecord};

use crate::config::{
    CheckpointConfig, EventTimeUnit, OnInvalidRecord, OnLate, PipelineConfig, KAFKA_KEY,
};
use crate::dedup::{DedupState, Verdict, WatermarkTracker};
use crate::pipeline::PipelineError;

/// Where a dedup key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The Kafka message key.
    KafkaKey,
    /// These columns of the row (indexes into the table schema).
    Columns(Vec<usize>),
}

/// Where an event time comes from.
#[derive(Debug, Clone, Copy)]
pub enum TimeSource {
    /// The Kafka message timestamp.
    KafkaTimestamp,
    /// A timestamp (microseconds) column.
    TimestampColumn(usize),
    /// A long column in this unit.
    LongColumn(usize, EventTimeUnit),
}

/// The dedup settings resolved against the table schema.
#[derive(Debug, Clone)]
pub struct DedupSpec {
    /// Key source.
    pub key: KeySource,
    /// Event-time source.
    pub time: TimeSource,
    /// What happens to late records.
    pub late: OnLate,
    /// Allowed lateness in microseconds.
    pub lateness_micros: i64,
    /// Idle timeout.
    pub idle_timeout: Duration,
}

/// A row's dedup key and event time (micros), `None` where null or missing.
pub type KeyAndTime = (Option<Vec<u8>>, Option<i64>);

/// Turns source records into rows and dead letters: decoding, size check, dedup.
pub struct RecordProcessor {
    decoder: JsonDecoder,
    on_invalid: OnInvalidRecord,
    max_record_bytes: usize,
    dedup: Option<DedupSpec>,
    key_converter: Option<RowConverter>,
}

impl RecordProcessor {
    /// A processor for `config` writing rows of `decoder`'s schema.
    pub fn new(config: &PipelineConfig, decoder: JsonDecoder) -> Result<Self, PipelineError> {
        let schema = decoder.schema().clone();
        let index = |name: &str| {
            schema
                .index_of(name)
                .map_err(|_| PipelineError::SchemaMismatch {
                    table: config.sink.table_uri.clone(),
                    message: format!("dedup needs column {name:?}, which the table does not have"),
                })
        };
        let mut key_converter = None;
        let dedup = match &config.dedup {
            None => None,
            Some(d) => {
                let key = if d.key.len() == 1 && d.key[0] == KAFKA_KEY {
                    KeySource::KafkaKey
                } else {
                    let idx = d
                        .key
                        .iter()
                        .map(|k| index(k))
                        .collect::<Result<Vec<_>, _>>()?;
                    let fields = idx
                        .iter()
                        .map(|i| SortField::new(schema.field(*i).data_type().clone()))
                        .collect();
                    key_converter = Some(RowConverter::new(fields).map_err(|e| {
                        PipelineError::SchemaMismatch {
                            table: config.sink.table_uri.clone(),
                            message: format!("dedup key columns cannot form a key: {e}"),
                        }
                    })?);
                    KeySource::Columns(idx)
                };
                let time = if d.event_time == COL_TIMESTAMP {
                    TimeSource::KafkaTimestamp
                } else {
                    let i = index(&d.event_time)?;
                    match schema.field(i).data_type() {
                        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => {
                            TimeSource::TimestampColumn(i)
                        }
                        DataType::Int64 => TimeSource::LongColumn(i, d.event_time_unit),
                        other => {
                            return Err(PipelineError::SchemaMismatch {
                                table: config.sink.table_uri.clone(),
                                message: format!(
                                    "dedup.event_time column {:?} is {other} in the table; it must be a timestamp or a long",
                                    d.event_time
                                ),
                            })
                        }
                    }
                };
                Some(DedupSpec {
                    key,
                    time,
                    late: d.late,
                    lateness_micros: (d.allowed_lateness_ms as i64).saturating_mul(1000),
                    idle_timeout: Duration::from_millis(d.idle_timeout_ms),
                })
            }
        };
        Ok(Self {
            decoder,
            on_invalid: config.errors.on_invalid_record,
            max_record_bytes: config.errors.max_record_bytes,
            dedup,
            key_converter,
        })
    }

    /// The dedup settings, if dedup is on.
    pub fn dedup(&self) -> Option<&DedupSpec> {
        self.dedup.as_ref()
    }

    /// Dedup keys and event times of `batch`'s rows (`None` where null), computed as during
    /// processing; `records[rows[i]]` is row i's record when the source is Kafka metadata.
    /// Used to rebuild state from the table's rows too (then `records` is empty and Kafka
    /// sources yield `None`).
    pub fn keys_and_times(
        &self,
        batch: &RecordBatch,
        records: &[&SourceRecord],
    ) -> Result<Vec<KeyAndTime>, PipelineError> {
        let Some(spec) = &self.dedup else {
            return Ok(Vec::new());
        };
        let n = batch.num_rows();
        let record = |i: usize| records.get(i).copied();
        let keys: Vec<Option<Vec<u8>>> = match &spec.key {
            KeySource::KafkaKey => (0..n)
                .map(|i| record(i).and_then(|r| r.key.clone()))
                .collect(),
            KeySource::Columns(idx) => {
                let cols: Vec<ArrayRef> = idx.iter().map(|i| batch.column(*i).clone()).collect();
                let converter =
                    self.key_converter
                        .as_ref()
                        .ok_or_else(|| PipelineError::State {
                            path: "dedup".into(),
                            message: "key converter missing".into(),
                        })?;
                let rows = converter
                    .convert_columns(&cols)
                    .map_err(|source| PipelineError::Decode { epoch: -1, source })?;
                (0..n)
                    .map(|i| {
                        if cols.iter().any(|c| c.is_null(i)) {
                            None
                        } else {
                            Some(rows.row(i).as_ref().to_vec())
                        }
                    })
                    .collect()
            }
        };
        let times: Vec<Option<i64>> = match spec.time {
            TimeSource::KafkaTimestamp => match batch.schema().index_of(COL_TIMESTAMP) {
                Ok(i) if records.is_empty() => micros_column(batch.column(i)),
                _ => (0..n)
                    .map(|i| {
                        record(i)
                            .and_then(|r| r.timestamp_ms)
                            .map(|ms| ms.saturating_mul(1000))
                    })
                    .collect(),
            },
            TimeSource::TimestampColumn(i) => micros_column(batch.column(i)),
            TimeSource::LongColumn(i, unit) => {
                let a = batch.column(i).as_primitive::<Int64Type>();
                (0..n)
                    .map(|r| {
                        (!a.is_null(r)).then(|| match unit {
                            EventTimeUnit::Millis => a.value(r).saturating_mul(1000),
                            EventTimeUnit::Micros => a.value(r),
                        })
                    })
                    .collect()
            }
        };
        Ok(keys.into_iter().zip(times).collect())
    }
}

fn micros_column(col: &ArrayRef) -> Vec<Option<i64>> {
    let a = col.as_primitive::<TimestampMicrosecondType>();
    (0..a.len())
        .map(|r| (!a.is_null(r)).then(|| a.value(r)))
        .collect()
}

/// Per-run dedup state: the keys and watermark (deterministic), and the partitions' event-time
/// progress (wall-clock, used only at seals).
pub struct DedupRuntime {
    /// Keys and watermark.
    pub state: DedupState,
    /// Per-partition event-time progress.
    pub tracker: WatermarkTracker,
}

/// An epoch that is still collecting records (or was just sealed and not yet committed).
#[derive(Debug)]
pub struct OpenEpoch {
    /// Its number.
    pub epoch: u64,
    /// Positions before its first record.
    pub start: Positions,
    /// Positions after its last record.
    pub end: Positions,
    /// Rows to write, one batch per source batch.
    pub batches: Vec<RecordBatch>,
    /// Records skipped as undecodable (`errors.on_invalid_record = "skip"`), listed in the
    /// commitInfo.
    pub skipped: Vec<InvalidRecord>,
    /// Records skipped for other reasons (too large, no key, no event time): coordinates and
    /// reason, listed in the commitInfo too.
    pub skipped_other: Vec<(SourceRecord, &'static str)>,
    /// Records for the dead-letter table.
    pub dead_letters: Vec<DeadLetter>,
    /// Records in the epoch.
    pub records: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late records (dropped or dead-lettered).
    pub late: u64,
    /// Records dead-lettered or skipped for other reasons than lateness.
    pub invalid: u64,
    /// Key and value bytes in the epoch.
    pub bytes: u64,
    /// When its first record arrived (the interval runs from there).
    pub first_record_at: Option<Instant>,
}

impl OpenEpoch {
    /// An empty epoch starting at `start`.
    pub fn new(epoch: u64, start: Positions) -> Self {
        Self {
            epoch,
            end: start.clone(),
            start,
            batches: Vec::new(),
            skipped: Vec::new(),
            skipped_other: Vec::new(),
            dead_letters: Vec::new(),
            records: 0,
            duplicates: 0,
            late: 0,
            invalid: 0,
            bytes: 0,
            first_record_at: None,
        }
    }

    fn reject(
        &mut self,
        p: &RecordProcessor,
        record: &SourceRecord,
        reason: &'static str,
        message: String,
    ) -> Result<(), PipelineError> {
        match p.on_invalid {
            OnInvalidRecord::Fail => Err(PipelineError::Rejected {
                record: record.coordinates(),
                reason,
                message,
                epoch: self.epoch as i64,
            }),
            OnInvalidRecord::Skip => {
                tracing::warn!(epoch = self.epoch, record = %record.coordinates(), reason, "skipping: {message}");
                self.skipped_other.push((record.clone(), reason));
                self.invalid += 1;
                Ok(())
            }
            OnInvalidRecord::DeadLetter => {
                tracing::debug!(epoch = self.epoch, record = %record.coordinates(), reason, "dead letter: {message}");
                self.dead_letters
                    .push(DeadLetter::of(record, reason, message));
                self.invalid += 1;
                Ok(())
            }
        }
    }

    /// Processes `records` (already in the WAL) into the epoch and advances its end positions.
    pub fn add(
        &mut self,
        records: &[SourceRecord],
        p: &RecordProcessor,
        dedup: Option<&mut DedupRuntime>,
    ) -> Result<(), PipelineError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.first_record_at.get_or_insert(now);
        for r in records {
            self.end.advance_past(r);
            self.bytes += r.key.as_ref().map_or(0, Vec::len) as u64
                + r.payload.as_ref().map_or(0, Vec::len) as u64;
        }
        self.records += records.len() as u64;

        // Too large: never decoded.
        let size = |r: &SourceRecord| {
            r.key.as_ref().map_or(0, Vec::len) + r.payload.as_ref().map_or(0, Vec::len)
        };
        let owned: Vec<SourceRecord>;
        let fitting: &[SourceRecord] = if records.iter().any(|r| size(r) > p.max_record_bytes) {
            for r in records.iter().filter(|r| size(r) > p.max_record_bytes) {
                let msg = format!(
                    "{} bytes of key + value > errors.max_record_bytes = {}",
                    size(r),
                    p.max_record_bytes
                );
                self.reject(p, r, "too_large", msg)?;
            }
            owned = records
                .iter()
                .filter(|r| size(r) <= p.max_record_bytes)
                .cloned()
                .collect();
            &owned
        } else {
            records
        };

        let decoded = p
            .decoder
            .decode(fitting)
            .map_err(|source| PipelineError::Decode {
                epoch: self.epoch as i64,
                source,
            })?;
        for bad in &decoded.invalid {
            let record = &fitting[bad.index];
            if p.on_invalid == OnInvalidRecord::Fail {
                return Err(PipelineError::InvalidRecord {
                    record: bad.clone(),
                    epoch: self.epoch as i64,
                });
            }
            if p.on_invalid == OnInvalidRecord::Skip {
                tracing::warn!(epoch = self.epoch, "skipping {bad}");
                self.skipped.push(bad.clone());
                self.invalid += 1;
            } else {
                self.reject(p, record, bad.reason.as_str(), bad.message.clone())?;
            }
        }
        let Some(batch) = decoded.batch else {
            return Ok(());
        };
        let (Some(spec), Some(rt)) = (p.dedup(), dedup) else {
            self.batches.push(batch);
            return Ok(());
        };
        let row_records: Vec<&SourceRecord> = decoded.rows.iter().map(|i| &fitting[*i]).collect();
        let kt = p.keys_and_times(&batch, &row_records)?;
        let mut keep = Vec::with_capacity(kt.len());
        for (i, (key, time)) in kt.into_iter().enumerate() {
            let record = row_records[i];
            let Some(time) = time else {
                self.reject(
                    p,
                    record,
                    "null_event_time",
                    "the event time is null or missing".into(),
                )?;
                keep.push(false);
                continue;
            };
            rt.tracker
                .observe(&record.topic, record.partition, time, now);
            let Some(key) = key else {
                self.reject(
                    p,
                    record,
                    "null_key",
                    "the dedup key is null or missing".into(),
                )?;
                keep.push(false);
                continue;
            };
            match rt.state.check(&key, time) {
                Verdict::Accept => keep.push(true),
                Verdict::Duplicate => {
                    self.duplicates += 1;
                    keep.push(false);
                }
                Verdict::Late => {
                    self.late += 1;
                    if spec.late == OnLate::DeadLetter {
                        let w = rt.state.watermark().unwrap_or(i64::MIN);
                        self.dead_letters.push(DeadLetter::of(
                            record,
                            "late",
                            format!("event time {time} µs is below the watermark {w} µs"),
                        ));
                    }
                    keep.push(false);
                }
            }
        }
        let mask = BooleanArray::from(keep);
        let kept = arrow::compute::filter_record_batch(&batch, &mask).map_err(|source| {
            PipelineError::Decode {
                epoch: self.epoch as i64,
                source,
            }
        })?;
        if kept.num_rows() > 0 {
            self.batches.push(kept);
        }
        Ok(())
    }

    /// Records skipped or dead-lettered for other reasons than lateness.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// Rows the epoch will write.
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// True when the epoch has records and one of the interval's limits is reached.
    pub fn is_due(&self, c: &CheckpointConfig) -> bool {
        self.records > 0
            && (self.records >= c.max_records as u64
                || self.bytes >= c.max_bytes
                || self.age() >= c.interval())
    }

    /// Time since the first record (zero before it).
    pub fn age(&self) -> Duration {
        self.first_record_at
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Time left before the interval ends (the whole interval before the first record).
    pub fn time_left(&self, c: &CheckpointConfig) -> Duration {
        c.interval().saturating_sub(self.age())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;

    const CONFIG: &str = r#"
pipeline_id = "p"
[source]
brokers = "b:1"
topics = ["t"]
[sink]
table_uri = "t"
source_columns = false
columns = [{ name = "id", type = "string" }, { name = "ts", type = "long" }]
[checkpoint]
interval_ms = 60000
max_records = 3
max_bytes = 40
[dedup]
key = ["id"]
event_time = "ts"
allowed_lateness_ms = 10
"#;

    fn rec(offset: i64, payload: &str) -> SourceRecord {
        SourceRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    fn processor(config: &PipelineConfig) -> RecordProcessor {
        let schema = Arc::new(arrow::datatypes::Schema::new(config.arrow_fields()));
        RecordProcessor::new(config, JsonDecoder::new(schema)).unwrap()
    }

    #[test]
    fn an_epoch_ends_at_the_first_limit_reached() {
        let config = PipelineConfig::parse(CONFIG, Path::new("/x/p.toml")).unwrap();
        let p = processor(&config);
        let c = &config.checkpoint;
        let mut by_count = OpenEpoch::new(1, Positions::new());
        assert!(!by_count.is_due(c), "an empty epoch is never due");
        for i in 0..3 {
            assert!(!by_count.is_due(c));
            by_count
                .add(&[rec(i, &format!(r#"{{"id":"{i}","ts":1}}"#))], &p, None)
                .unwrap();
        }
        assert!(by_count.is_due(c), "3 records = checkpoint.max_records");
        let mut by_bytes = OpenEpoch::new(1, Positions::new());
        by_bytes
            .add(
                &[rec(0, r#"{"id":"a-very-long-identifier-of-bytes","ts":1}"#)],
                &p,
                None,
            )
            .unwrap();
        assert!(by_bytes.is_due(c), "over checkpoint.max_bytes");
        let mut by_time = OpenEpoch::new(1, Positions::new());
        by_time
            .add(&[rec(0, r#"{"id":"a","ts":1}"#)], &p, None)
            .unwrap();
        by_time.first_record_at = Some(Instant::now() - Duration::from_secs(61));
        assert!(by_time.is_due(c), "older than checkpoint.interval_ms");
    }

    #[test]
    fn every_record_is_counted_once_as_row_duplicate_late_or_dead_letter() {
        let config = PipelineConfig::parse(CONFIG, Path::new("/x/p.toml")).unwrap();
        let p = processor(&config);
        let spec = p.dedup().unwrap().clone();
        let mut rt = DedupRuntime {
            state: DedupState::with_capacity(0, Some(100_000)),
            tracker: WatermarkTracker::new(
                Vec::new(),
                spec.lateness_micros,
                spec.idle_timeout,
                Instant::now(),
            ),
        };
        let mut open = OpenEpoch::new(1, Positions::new());
        let input = [
            rec(0, r#"{"id":"a","ts":200}"#),
            rec(1, r#"{"id":"a","ts":200}"#),
            rec(2, r#"{"id":"b","ts":50}"#),
            rec(3, r#"{"id":"c""#),
            rec(4, r#"{"ts":300}"#),
            rec(5, r#"{"id":"d"}"#),
            rec(6, r#"{"id":"e","ts":300}"#),
        ];
        open.add(&input, &p, Some(&mut rt)).unwrap();
        assert_eq!(open.records, 7);
        assert_eq!(open.rows(), 2, "a and e");
        assert_eq!(open.duplicates, 1);
        assert_eq!(open.late, 1, "b: 50 ms < watermark 100 ms");
        assert_eq!(open.invalid(), 3, "malformed, no key, no event time");
        let reasons: Vec<&str> = open.dead_letters.iter().map(|d| d.reason).collect();
        assert_eq!(
            reasons,
            vec!["malformed_json", "late", "null_key", "null_event_time"]
        );
        assert_eq!(
            open.records,
            open.rows() + open.duplicates + open.late + open.invalid()
        );
        assert_eq!(open.end.get("t", 0), Some(7));
    }
}
