//! The epoch being read, and how each record becomes a row, a duplicate, a late record or a
//! dead letter ([`RecordProcessor`]).
//!
//! Records enter an epoch in WAL order, whether they come from the source or are replayed from
//! the WAL after a crash, and go through the same steps: size and Kafka-timestamp checks, JSON
//! decode, dedup key and event time, future-event-time check, dedup verdict. Each step is a
//! pure function of the record, the batch clock logged in the WAL before it, the dedup state
//! (the watermark in effect is fixed for the whole epoch) and the settings recorded in the
//! seal ([`RecordProcessor::settings`]), so a replayed epoch yields exactly the rows, drops and
//! dead letters it yielded the first time. That determinism is what makes redo from the WAL
//! safe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use tidemark_checkpoint::store::Counts;
use tidemark_connectors::dead_letter::DeadLetter;
use tidemark_connectors::decode::{Decoded, InvalidRecord, JsonDecoder, COL_TIMESTAMP};
use tidemark_connectors::delta::MAX_ROWS_PER_FILE;
use tidemark_connectors::epoch_encoder::{EncodedFile, EpochEncoder};
use tidemark_connectors::record::partition_runs;
use tidemark_connectors::{Epoch, Positions, SourceRecord};

use crate::config::{
    CheckpointConfig, EventTimeUnit, OnInvalidRecord, OnLate, PipelineConfig, KAFKA_KEY,
};
use crate::epoch_log::{fits_in_frame, record_size, Replay, ReplayBatch, MAX_KEPT_KEY_BYTES};
pub use crate::verdicts::{
    BatchKeys, DedupGuard, DedupRuntime, SharedDedup, VerdictCost, WARM_AHEAD,
};
use crate::verdicts::{BatchVerdicts, Dropped, EventTime, VerdictPrep};

/// Why records could not be processed into an epoch (the processing layer's error).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A record did not decode and `errors.on_invalid_record = "fail"`.
    #[error("{record}; stopping because errors.on_invalid_record = \"fail\" (nothing of epoch {epoch} was committed; set it to \"dead_letter\" to keep such records in the dead-letter table and go on)")]
    InvalidRecord {
        /// The first bad record of the epoch.
        record: InvalidRecord,
        /// The epoch it was in.
        epoch: Epoch,
    },
    /// A record was rejected (too large, no dedup key or event time) and
    /// `errors.on_invalid_record = "fail"`.
    #[error("record {record} is invalid ({reason}): {message}; stopping because errors.on_invalid_record = \"fail\" (nothing of epoch {epoch} was committed; set it to \"dead_letter\" to keep such records in the dead-letter table)")]
    Rejected {
        /// `topic/partition@offset`.
        record: String,
        /// Reason category.
        reason: &'static str,
        /// What is wrong.
        message: String,
        /// The epoch it was in.
        epoch: Epoch,
    },
    /// Encoding the epoch's rows into Parquet failed (not a bad record: the rows decoded).
    #[error("encoding epoch {epoch} into Parquet failed: {message}")]
    Encode {
        /// The epoch.
        epoch: Epoch,
        /// Parquet's error.
        message: String,
    },
    /// The decoder itself failed (not a bad record: a bug or an unsupported schema).
    #[error("decoding epoch {epoch} failed: {source}")]
    Decode {
        /// The epoch.
        epoch: Epoch,
        /// Arrow's error.
        source: arrow::error::ArrowError,
    },
    /// A thread decoding or deciding the epoch's batches ahead stopped (a panic): the batches
    /// it held are not applied (nothing of the epoch is committed; a restart replays them).
    #[error("a thread decoding or deciding epoch {epoch}'s records stopped: its batches in flight are not applied; nothing of the epoch is committed, and the next start replays them from the WAL")]
    DecodeThreadStopped {
        /// The epoch.
        epoch: Epoch,
    },
    /// A batch's verdicts covered fewer rows than it has (an internal fault: they end early
    /// only at a refusal under `errors.on_invalid_record = "fail"`, which stops the epoch).
    #[error("epoch {epoch}: a batch of {rows} rows came back with {given} verdicts; nothing of the epoch is committed, and the next start replays it from the WAL")]
    VerdictsMissing {
        /// The epoch.
        epoch: Epoch,
        /// Rows in the batch.
        rows: usize,
        /// Verdicts given.
        given: usize,
    },
    /// Dedup key columns could not be encoded into key bytes.
    #[error("encoding dedup keys failed: {source}")]
    KeyEncoding {
        /// Arrow's error.
        source: arrow::error::ArrowError,
    },
    /// The dedup state still loading after a restart could not be read.
    #[error(transparent)]
    DedupState(#[from] crate::dedup::ColdError),
    /// The table does not match the configured columns.
    #[error("table {table} does not match the config: {message}")]
    SchemaMismatch {
        /// The table URI.
        table: String,
        /// Which column differs and how.
        message: String,
    },
}

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

/// Why a sealed epoch is not redone under changed settings, naming each one.
pub fn settings_refusal(epoch: u64, diffs: &[(String, String, String)]) -> String {
    let list = diffs
        .iter()
        .map(|(name, sealed, now)| {
            format!("`{name}` was {sealed:?} when epoch {epoch} was sealed, is {now:?} now")
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "recovery must replay epoch {epoch}, sealed in the WAL, but settings that decide its content changed since it was sealed: {list}. \
         Replaying it under the new values would give another epoch than the one sealed (other rows, dead letters, counts or dedup state). \
         To proceed, restore the old value(s) and restart; once epoch {epoch} is committed and checkpointed, stop the pipeline and apply the new value(s)"
    )
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
    /// `dedup.max_event_time_skew_ms` in microseconds.
    pub max_skew_micros: i64,
    /// `dedup.expected_keys`: the state's table is sized for this many keys at start.
    pub expected_keys: usize,
}

/// A row's dedup key and event time (micros), `None` where null or missing.
pub type KeyAndTime = (Option<Vec<u8>>, Option<i64>);

/// The settings that decide an epoch's content, in canonical form: setting name -> value.
pub type EpochSettings = BTreeMap<String, String>;

/// The settings of `sealed` and `current` that differ: (setting, sealed value, current value),
/// `(not set)` where one side lacks it.
pub fn settings_diff(
    sealed: &EpochSettings,
    current: &EpochSettings,
) -> Vec<(String, String, String)> {
    let unset = || "(not set)".to_string();
    let mut names: Vec<&String> = sealed.keys().chain(current.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (sealed.get(name), current.get(name));
            (a != b).then(|| {
                (
                    name.clone(),
                    a.cloned().unwrap_or_else(unset),
                    b.cloned().unwrap_or_else(unset),
                )
            })
        })
        .collect()
}

/// Turns source records into rows and dead letters: decoding, size check, dedup.
pub struct RecordProcessor {
    /// What prepares a batch before any verdict: shared with the threads that decode ahead.
    prep: Arc<BatchPrep>,
    /// What giving a batch its verdicts needs: shared with the threads that decide ahead.
    verdicts: Arc<VerdictPrep>,
    settings: Arc<EpochSettings>,
}

/// The part of a [`RecordProcessor`] that prepares a batch ([`PreparedBatch::of`]): owned
/// apart so a thread of its own can hold it.
#[derive(Debug)]
struct BatchPrep {
    decoder: JsonDecoder,
    max_record_bytes: usize,
    /// `errors.quarantine`: records never written (reason `quarantined`).
    quarantine: crate::quarantine::Quarantine,
    /// Rows carry the Kafka timestamp (source column or event time): a timestamp that does
    /// not fit microseconds makes the record invalid.
    uses_kafka_timestamp: bool,
}

impl RecordProcessor {
    /// A processor for `config` writing rows of `decoder`'s schema.
    pub fn new(config: &PipelineConfig, decoder: JsonDecoder) -> Result<Self, ProcessError> {
        let schema = decoder.schema().clone();
        let index = |name: &str| {
            schema
                .index_of(name)
                .map_err(|_| ProcessError::SchemaMismatch {
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
                        ProcessError::SchemaMismatch {
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
                            return Err(ProcessError::SchemaMismatch {
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
                    max_skew_micros: (d.max_event_time_skew_ms.min(i64::MAX as u64) as i64)
                        .saturating_mul(1000),
                    expected_keys: usize::try_from(d.expected_keys).unwrap_or(usize::MAX),
                })
            }
        };
        let uses_kafka_timestamp = schema.index_of(COL_TIMESTAMP).is_ok()
            || matches!(
                dedup.as_ref().map(|d| d.time),
                Some(TimeSource::KafkaTimestamp)
            );
        let settings = Arc::new(epoch_settings(config, &schema));
        Ok(Self {
            prep: Arc::new(BatchPrep {
                decoder,
                max_record_bytes: config.errors.max_record_bytes,
                // Checked when the config was loaded.
                quarantine: crate::quarantine::Quarantine::parse(&config.errors.quarantine)
                    .unwrap_or_default(),
                uses_kafka_timestamp,
            }),
            verdicts: Arc::new(VerdictPrep {
                on_invalid: config.errors.on_invalid_record,
                dedup,
                key_converter,
                #[cfg(test)]
                panic_in_give: false,
            }),
            settings,
        })
    }

    /// The settings that decide what an epoch holds, recorded in its seal: a redo under
    /// other values would write another epoch, so recovery refuses it
    /// (`recovery::replay_sealed`). Not included, because a sealed epoch's content does not
    /// depend on them: the epoch boundaries (`checkpoint.*`, fixed by the seal), and
    /// `dedup.allowed_lateness_ms` / `dedup.idle_timeout_ms` (they decide the watermark at the
    /// seal, which the seal records; the watermark in effect during the epoch comes from the
    /// checkpoint).
    pub fn settings(&self) -> &Arc<EpochSettings> {
        &self.settings
    }

    /// The dedup settings, if dedup is on.
    pub fn dedup(&self) -> Option<&DedupSpec> {
        self.verdicts.dedup.as_ref()
    }

    /// The table columns (indexes into `schema`) [`Self::keys_and_times`] reads from a batch
    /// of table rows: the key columns and the event-time column. The dedup-state rebuild reads
    /// only these from the table's files (a large table on object storage is not read whole).
    pub fn dedup_columns(&self, schema: &arrow::datatypes::Schema) -> Vec<usize> {
        let Some(spec) = &self.verdicts.dedup else {
            return Vec::new();
        };
        let mut columns = match &spec.key {
            KeySource::KafkaKey => Vec::new(),
            KeySource::Columns(idx) => idx.clone(),
        };
        match spec.time {
            TimeSource::KafkaTimestamp => columns.extend(schema.index_of(COL_TIMESTAMP).ok()),
            TimeSource::TimestampColumn(i) | TimeSource::LongColumn(i, _) => columns.push(i),
        }
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// Dedup keys and event times of `batch`'s rows (`None` where null), computed as during
    /// processing; `records[rows[i]]` is row i's record when the source is Kafka metadata.
    /// Used to rebuild state from the table's rows too (then `records` is empty and Kafka
    /// sources yield `None`). An event time that does not fit microseconds is `None` here
    /// (such records are dead-lettered, never written).
    pub fn keys_and_times(
        &self,
        batch: &RecordBatch,
        records: &[&SourceRecord],
    ) -> Result<Vec<KeyAndTime>, ProcessError> {
        let (keys, times) = self.keys_and_event_times(batch, records)?;
        Ok(times
            .into_iter()
            .enumerate()
            .map(|(i, t)| (keys.get(i).map(<[u8]>::to_vec), t.and_then(Result::ok)))
            .collect())
    }

    fn keys_and_event_times<'a>(
        &self,
        batch: &RecordBatch,
        records: &'a [&'a SourceRecord],
    ) -> Result<(BatchKeys<'a>, Vec<EventTime>), ProcessError> {
        self.verdicts.keys_and_event_times(batch, records)
    }
}

/// The canonical settings of `config` reading into `schema` (see [`RecordProcessor::settings`]).
fn epoch_settings(config: &PipelineConfig, schema: &arrow::datatypes::Schema) -> EpochSettings {
    let mut s = EpochSettings::new();
    let mut put = |k: &str, v: String| {
        s.insert(k.to_string(), v);
    };
    // The decoder's schema is the table's (sink.columns only create the table, and
    // sink.source_columns only add the `_kafka_*` columns to a new one): it decides the rows.
    put(
        "table schema (sink.columns, sink.source_columns)",
        schema
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "{} {}{}",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "" } else { " not null" }
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    put(
        "errors.on_invalid_record",
        config.errors.on_invalid_record.as_str().into(),
    );
    put(
        "errors.max_record_bytes",
        config.errors.max_record_bytes.to_string(),
    );
    // Only when set: seals from before quarantines existed keep matching.
    if let Ok(q) = crate::quarantine::Quarantine::parse(&config.errors.quarantine) {
        if !q.is_empty() {
            put("errors.quarantine", q.canonical());
        }
    }
    match &config.dedup {
        None => put("dedup", "off".into()),
        Some(d) => {
            put("dedup", "on".into());
            put(
                "dedup.key",
                serde_json::to_string(&d.key).unwrap_or_default(),
            );
            put("dedup.event_time", d.event_time.clone());
            put("dedup.event_time_unit", d.event_time_unit.as_str().into());
            put("dedup.late", d.late.as_str().into());
            put(
                "dedup.max_event_time_skew_ms",
                d.max_event_time_skew_ms.to_string(),
            );
        }
    }
    s
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
    /// Rows to write, one batch per source batch (when not encoded while read).
    pub batches: Vec<RecordBatch>,
    /// The epoch's rows being encoded as they come ([`OpenEpoch::encode_while_reading`]);
    /// `None`: they are kept in `batches`.
    encoder: Option<EpochEncoder>,
    /// The threads preparing and deciding the batches [`OpenEpoch::add_ahead`] took, and the
    /// ones in flight there (counted in, not yet applied; maybe decided); `None` before the
    /// first and after
    /// [`OpenEpoch::finish_decoding`].
    decoding: Option<DecodeAhead>,
    /// The decoding thread could not start for this epoch: its batches are decoded on the
    /// reading thread.
    no_decoding_thread: bool,
    /// The epoch's encoded files, once its encoding finished (at its seal).
    pub encoded: Option<Vec<EncodedFile>>,
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
    /// Of `duplicates`, those whose key was accepted from another partition (a worker of a
    /// shared pipeline only; see [`crate::partition_dedup`]).
    pub cross_partition_duplicates: u64,
    /// Late records (dropped or dead-lettered).
    pub late: u64,
    /// Records dead-lettered or skipped for other reasons than lateness.
    pub invalid: u64,
    /// Key and value bytes in the epoch.
    pub bytes: u64,
    /// When its first record arrived (the interval runs from there).
    pub first_record_at: Option<Instant>,
    /// The settings its records were processed under (set by the first record), recorded in
    /// its seal.
    pub settings: Option<Arc<EpochSettings>>,
    /// Per partition: (offset, Kafka timestamp) of the epoch's newest record that has a
    /// timestamp (what the commitInfo records as the last committed record's timestamp).
    pub last_timestamps: BTreeMap<(Arc<str>, i32), (i64, i64)>,
}

impl OpenEpoch {
    /// An empty epoch starting at `start`.
    pub fn new(epoch: u64, start: Positions) -> Self {
        Self {
            epoch,
            end: start.clone(),
            start,
            batches: Vec::new(),
            encoder: None,
            decoding: None,
            no_decoding_thread: false,
            encoded: None,
            skipped: Vec::new(),
            skipped_other: Vec::new(),
            dead_letters: Vec::new(),
            records: 0,
            duplicates: 0,
            cross_partition_duplicates: 0,
            late: 0,
            invalid: 0,
            bytes: 0,
            first_record_at: None,
            settings: None,
            last_timestamps: BTreeMap::new(),
        }
    }

    /// Notes `record`'s Kafka timestamp if it is the partition's newest record so far.
    fn note_timestamp(&mut self, record: &SourceRecord) {
        let Some(ts) = record.timestamp_ms else {
            return;
        };
        let key = (record.topic.clone(), record.partition);
        match self.last_timestamps.get_mut(&key) {
            Some(slot) if slot.0 < record.offset => *slot = (record.offset, ts),
            Some(_) => {}
            None => {
                self.last_timestamps.insert(key, (record.offset, ts));
            }
        }
    }

    fn reject(
        &mut self,
        p: &RecordProcessor,
        record: &SourceRecord,
        reason: &'static str,
        message: String,
    ) -> Result<(), ProcessError> {
        match p.verdicts.on_invalid {
            OnInvalidRecord::Fail => Err(ProcessError::Rejected {
                record: record.coordinates(),
                reason,
                message,
                epoch: Epoch::new(self.epoch),
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

    /// Processes `records` (already in the WAL) into the epoch on this thread and advances its
    /// end positions. With dedup, under the batch clock `clock_ms` (the one logged before the
    /// batch; [`crate::dedup::DedupState::set_batch_clock`]). Batches still in flight
    /// ([`OpenEpoch::add_ahead`]) are decided and applied first, so WAL order holds.
    pub fn add(
        &mut self,
        records: &[SourceRecord],
        clock_ms: Option<i64>,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        // Batches in flight first: their thread sets each one's clock on the state.
        self.finish_decoding(p, dedup)?;
        if let Some(d) = dedup {
            d.lock().state.set_batch_clock(clock_ms);
        }
        self.add_logged(records, &[], p, dedup)
    }

    /// Processes records read back from the WAL exactly as they were processed when read:
    /// each batch under the clock logged before it, too-large stubs as `too_large`.
    ///
    /// Two cores: the next batches are prepared (size check and JSON decoding, a pure function
    /// of the records: [`PreparedBatch`]) on a thread of their own while this thread gives the
    /// prepared ones their verdicts in WAL order, so the verdicts are those of a replay on one
    /// thread. A restart's first commit waits for this replay.
    pub fn add_replay(
        &mut self,
        replay: &Replay,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        if replay.batches.len() < 2 {
            for batch in &replay.batches {
                let prepared = PreparedBatch::of(&p.prep, &batch.records, &batch.too_large);
                self.add_replayed(batch, prepared, p, dedup)?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(PREPARED_AHEAD);
            let preparing = std::thread::Builder::new()
                .name("tidemark-decode".into())
                .spawn_scoped(scope, move || {
                    for batch in &replay.batches {
                        let prepared = PreparedBatch::of(&p.prep, &batch.records, &batch.too_large);
                        if tx.send(prepared).is_err() {
                            return; // the replay stopped on an error
                        }
                    }
                });
            if let Err(e) = &preparing {
                tracing::warn!(
                    "no thread for decoding the replay ahead ({e}): decoding it on one thread"
                );
            }
            for batch in &replay.batches {
                // Without the helper (it could not start), each batch is prepared here.
                let prepared = match rx.recv() {
                    Ok(prepared) => prepared,
                    Err(_) => PreparedBatch::of(&p.prep, &batch.records, &batch.too_large),
                };
                self.add_replayed(batch, prepared, p, dedup)?;
            }
            Ok(())
        })
    }

    /// One replayed batch, prepared, under the clock logged before it.
    fn add_replayed(
        &mut self,
        batch: &ReplayBatch,
        prepared: PreparedBatch,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        if let Some(d) = dedup {
            d.lock().state.set_batch_clock(batch.clock_ms);
        }
        let now = self.take_in(&batch.records, &batch.too_large, p);
        self.add_prepared(&batch.records, prepared, now, p, Decide::Here(dedup))
    }

    /// Why `record` is refused before decoding, if it is: too large (key + value over
    /// `errors.max_record_bytes`, or more than a WAL frame holds; `stub` is the original size
    /// of a record the WAL holds without its value), or a Kafka timestamp that does not fit
    /// microseconds. A too-large record's dead letter never holds the value, and holds the key
    /// only up to [`MAX_KEPT_KEY_BYTES`]: the same whether the record or its WAL stub is seen.
    fn precheck(
        p: &BatchPrep,
        record: &SourceRecord,
        stub: Option<u64>,
    ) -> Option<(SourceRecord, &'static str, String)> {
        if p.quarantine
            .contains(&record.topic, record.partition, record.offset)
        {
            return Some((
                record.clone(),
                "quarantined",
                format!("{} is listed in errors.quarantine", record.coordinates()),
            ));
        }
        let (size, fits) = match stub {
            Some(size) => (size, false),
            None => (record_size(record) as u64, fits_in_frame(record)),
        };
        if size > p.max_record_bytes as u64 || !fits {
            let message = if size > p.max_record_bytes as u64 {
                format!(
                    "{size} bytes of key + value > errors.max_record_bytes = {} (original_size={size}; value not kept)",
                    p.max_record_bytes
                )
            } else {
                format!(
                    "{size} bytes of key + value do not fit one WAL frame (original_size={size}; value not kept)"
                )
            };
            let kept = SourceRecord {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record
                    .key
                    .as_ref()
                    .filter(|k| k.len() <= MAX_KEPT_KEY_BYTES)
                    .cloned(),
                payload: None,
            };
            return Some((kept, "too_large", message));
        }
        if let Some(ms) = record
            .timestamp_ms
            .filter(|ms| p.uses_kafka_timestamp && ms.checked_mul(1000).is_none())
        {
            return Some((
                record.clone(),
                "timestamp_out_of_range",
                format!("Kafka timestamp {ms} ms does not fit microseconds"),
            ));
        }
        None
    }

    /// [`OpenEpoch::add`] where `stubs` lists the too-large stubs among `records` (index,
    /// original size; in index order). The stages, in order: refuse the records that are too
    /// large or carry an unusable Kafka timestamp and decode the rest ([`PreparedBatch::of`],
    /// pure), count the records in ([`Self::take_in`]), apply the refusals and the decode's
    /// outcome ([`Self::decode`]), and, with dedup, give each row its verdict here
    /// ([`crate::verdicts::give`]) and apply it ([`Self::apply_verdicts`]).
    fn add_logged(
        &mut self,
        records: &[SourceRecord],
        stubs: &[(usize, u64)],
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        if records.is_empty() {
            return Ok(());
        }
        let prepared = PreparedBatch::of(&p.prep, records, stubs);
        let now = self.take_in(records, stubs, p);
        self.add_prepared(records, prepared, now, p, Decide::Here(dedup))
    }

    /// [`OpenEpoch::add`] on two cores, for the live path: `records` (already in the WAL, under
    /// the batch clock `clock_ms` logged before them) are counted in now, so the epoch's limits
    /// see them at once, and decoded, then given their verdicts ([`crate::verdicts`]), on the
    /// epoch's decoding and deciding threads ([`DecodeAhead`]) while the caller reads and logs
    /// the next batches; older batches are applied here meanwhile (their counts, dead letters
    /// and kept rows). Verdicts are given in WAL order, each batch under its own clock: the
    /// same as [`OpenEpoch::add`]
    /// batch by batch (tested, `errors.on_invalid_record = "fail"` included: the thread decides
    /// nothing past the record an epoch stops at). [`OpenEpoch::finish_decoding`] applies the
    /// last ones; an epoch is sealed only after it (the committer's seal calls it). So a
    /// batch's error (an invalid record under `"fail"`) is returned by the next call or by the
    /// seal: still before anything of the epoch is committed. `dedup` must not be locked by
    /// the caller (the deciding thread takes it for each batch).
    pub fn add_ahead(
        &mut self,
        records: Vec<SourceRecord>,
        clock_ms: Option<i64>,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        if records.is_empty() {
            return Ok(());
        }
        let arrived = self.take_in(&records, &[], p);
        let batch = AheadBatch {
            records,
            clock_ms,
            arrived,
        };
        if self.decoding.is_none() && !self.no_decoding_thread {
            let deciding = dedup.map(|d| (p.verdicts.clone(), d.clone()));
            self.decoding = DecodeAhead::start(p.prep.clone(), deciding, self.epoch);
            // Tried (and warned) once per epoch: then batches are decoded here.
            self.no_decoding_thread = self.decoding.is_none();
        }
        let sent = match self.decoding.as_mut() {
            Some(d) => d.send(batch),
            None => Err(batch),
        };
        if let Err(batch) = sent {
            // No decoding thread: everything in flight first, then this batch here.
            self.finish_decoding(p, dedup)?;
            let prepared = PreparedBatch::of(&p.prep, &batch.records, &[]);
            return self.apply_ahead(batch, prepared, None, p, dedup);
        }
        while self
            .decoding
            .as_ref()
            .is_some_and(|d| d.in_flight > DECODED_AHEAD)
        {
            self.apply_oldest(p, dedup)?;
        }
        Ok(())
    }

    /// Applies every batch still in flight ([`OpenEpoch::add_ahead`]), decided, and ends the
    /// epoch's decoding and deciding threads: no record comes after this but through
    /// [`OpenEpoch::add_ahead`] again. The seal calls it.
    pub fn finish_decoding(
        &mut self,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        while self.decoding.as_ref().is_some_and(|d| d.in_flight > 0) {
            self.apply_oldest(p, dedup)?;
        }
        self.decoding = None;
        Ok(())
    }

    /// True while batches counted in are not applied yet ([`OpenEpoch::add_ahead`]).
    pub(crate) fn decoding(&self) -> bool {
        self.decoding.as_ref().is_some_and(|d| d.in_flight > 0)
    }

    /// The oldest batch in flight, waited for and applied.
    fn apply_oldest(
        &mut self,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        let Some(d) = self.decoding.as_mut() else {
            return Ok(());
        };
        match d.recv() {
            Some((batch, prepared, given)) => self.apply_ahead(batch, prepared, given, p, dedup),
            None => {
                self.decoding = None;
                Err(ProcessError::DecodeThreadStopped {
                    epoch: Epoch::new(self.epoch),
                })
            }
        }
    }

    /// One batch back from the epoch's threads with the verdicts the deciding thread gave
    /// (`given`), or `None`: decided here, under its own clock (that thread decides none after
    /// it).
    fn apply_ahead(
        &mut self,
        batch: AheadBatch,
        prepared: PreparedBatch,
        given: Option<Result<BatchVerdicts, ProcessError>>,
        p: &RecordProcessor,
        dedup: Option<&SharedDedup>,
    ) -> Result<(), ProcessError> {
        let decide = match given {
            Some(given) => Decide::Given(given),
            None => {
                if let Some(d) = dedup {
                    d.lock().state.set_batch_clock(batch.clock_ms);
                }
                Decide::Here(dedup)
            }
        };
        self.add_prepared(&batch.records, prepared, batch.arrived, p, decide)
    }

    /// What follows [`OpenEpoch::take_in`] for a batch already prepared: what is
    /// order-dependent, on this thread and in WAL order (the refusals and dead letters, the
    /// verdicts applied). `now`: when the records arrived.
    fn add_prepared(
        &mut self,
        records: &[SourceRecord],
        prepared: PreparedBatch,
        now: Instant,
        p: &RecordProcessor,
        decide: Decide<'_>,
    ) -> Result<(), ProcessError> {
        for (kept, reason, message) in prepared.refused {
            self.reject(p, &kept, reason, message)?;
        }
        let fitting: &[SourceRecord] = prepared.fitting.as_deref().unwrap_or(records);
        let decoded = self.decode(fitting, prepared.decoded, p)?;
        let Some(batch) = decoded.batch else {
            return Ok(());
        };
        let verdicts = match decide {
            _ if p.dedup().is_none() => None,
            Decide::Given(given) => Some(given?),
            Decide::Here(None) => None,
            Decide::Here(Some(d)) => {
                let row_records: Vec<&SourceRecord> =
                    decoded.rows.iter().map(|i| &fitting[*i]).collect();
                Some(crate::verdicts::give(
                    &p.verdicts,
                    &mut d.lock(),
                    &batch,
                    &row_records,
                    now,
                )?)
            }
        };
        match verdicts {
            None => {
                self.keep(batch);
                Ok(())
            }
            Some(verdicts) => self.apply_verdicts(batch, &decoded.rows, fitting, verdicts, p),
        }
    }

    /// Counts `records` into the epoch: its settings (from the first record), its start time,
    /// end positions, records and bytes (a stub's original size). Returns the time they
    /// arrived.
    fn take_in(
        &mut self,
        records: &[SourceRecord],
        stubs: &[(usize, u64)],
        p: &RecordProcessor,
    ) -> Instant {
        if self.settings.is_none() {
            self.settings = Some(p.settings.clone());
        }
        let now = Instant::now();
        self.first_record_at.get_or_insert(now);
        // Once per run of one partition's records (a fetch hands them over in runs), not
        // once per record: the same positions and timestamps as record by record (tested).
        self.end.advance_past_all(records);
        for run in partition_runs(records) {
            // The run's newest record with a timestamp; the first of equal offsets, as
            // `note_timestamp` keeps the first of them record by record.
            let newest = run
                .iter()
                .filter(|r| r.timestamp_ms.is_some())
                .reduce(|a, b| if b.offset > a.offset { b } else { a });
            if let Some(r) = newest {
                self.note_timestamp(r);
            }
        }
        for (i, r) in records.iter().enumerate() {
            self.bytes += stub_size(stubs, i).unwrap_or_else(|| record_size(r) as u64);
        }
        self.records += records.len() as u64;
        now
    }

    /// The decode stage's outcome (JSON to rows of the table's schema, done by
    /// [`PreparedBatch::of`]): a record that does not decode stops the epoch, is skipped or is
    /// dead-lettered (`errors.on_invalid_record`).
    fn decode(
        &mut self,
        fitting: &[SourceRecord],
        decoded: Result<Decoded, arrow::error::ArrowError>,
        p: &RecordProcessor,
    ) -> Result<Decoded, ProcessError> {
        let decoded = decoded.map_err(|source| ProcessError::Decode {
            epoch: Epoch::new(self.epoch),
            source,
        })?;
        for bad in &decoded.invalid {
            let record = &fitting[bad.index];
            if p.verdicts.on_invalid == OnInvalidRecord::Fail {
                return Err(ProcessError::InvalidRecord {
                    record: bad.clone(),
                    epoch: Epoch::new(self.epoch),
                });
            }
            if p.verdicts.on_invalid == OnInvalidRecord::Skip {
                tracing::warn!(epoch = self.epoch, "skipping {bad}");
                self.skipped.push(bad.clone());
                self.invalid += 1;
            } else {
                self.reject(p, record, bad.reason.as_str(), bad.message.clone())?;
            }
        }
        Ok(decoded)
    }

    /// The dedup stage's outcome ([`crate::verdicts::give`]): each row of `batch` (row `i` is
    /// record `fitting[rows[i]]`) counted as kept, a duplicate or late (a dead letter where
    /// `dedup.late` says so), or rejected; the kept rows join the epoch.
    fn apply_verdicts(
        &mut self,
        batch: RecordBatch,
        rows: &[usize],
        fitting: &[SourceRecord],
        verdicts: BatchVerdicts,
        p: &RecordProcessor,
    ) -> Result<(), ProcessError> {
        let BatchVerdicts { keep, dropped } = verdicts;
        for (row, why) in dropped {
            let record = &fitting[rows[row]];
            match why {
                Dropped::Duplicate { cross_partition } => {
                    self.duplicates += 1;
                    if cross_partition {
                        self.cross_partition_duplicates += 1;
                        if self.cross_partition_duplicates == 1 {
                            tracing::warn!(epoch = self.epoch, record = %record.coordinates(), "a duplicate whose key this worker accepted from another partition: the producer does not send a key's records to one partition, so duplicates split across workers are written (counted as cross_partition_duplicates; the first of each epoch is logged)");
                        }
                    }
                }
                Dropped::Late { dead_letter } => {
                    self.late += 1;
                    if let Some(message) = dead_letter {
                        self.dead_letters
                            .push(DeadLetter::of(record, "late", message));
                    }
                }
                Dropped::Refused { reason, message } => {
                    self.reject(p, record, reason, message)?;
                }
            }
        }
        if keep.len() != batch.num_rows() {
            // Verdicts end early only at a refusal under "fail", which returned above.
            return Err(ProcessError::VerdictsMissing {
                epoch: Epoch::new(self.epoch),
                rows: batch.num_rows(),
                given: keep.len(),
            });
        }
        if keep.iter().all(|k| *k) {
            // Nothing dropped (the common batch): no copy.
            if batch.num_rows() > 0 {
                self.keep(batch);
            }
            return Ok(());
        }
        self.keep_selected(batch, BooleanArray::from(keep))
    }

    /// Records skipped or dead-lettered for other reasons than lateness.
    pub fn invalid(&self) -> u64 {
        self.invalid
    }

    /// The epoch's record accounting (every record is a row, a duplicate, late or invalid).
    pub fn counts(&self) -> Counts {
        Counts {
            read: self.records,
            written: self.rows(),
            duplicates: self.duplicates,
            late: self.late,
            dead_lettered: self.invalid(),
        }
    }

    /// Rows the epoch will write.
    pub fn rows(&self) -> u64 {
        let kept: u64 = self.batches.iter().map(|b| b.num_rows() as u64).sum();
        let encoding = self.encoder.as_ref().map_or(0, |e| e.rows() as u64);
        let encoded: u64 = self.encoded.iter().flatten().map(|f| f.rows as u64).sum();
        kept + encoding + encoded
    }

    /// A batch of rows the epoch will write: to the encoder when there is one.
    fn keep(&mut self, batch: RecordBatch) {
        match self.encoder.as_mut() {
            Some(e) => e.push(batch),
            None => self.batches.push(batch),
        }
    }

    /// The rows of `batch` that `mask` selects, as [`OpenEpoch::keep`]: with an encoder, they
    /// are filtered on its thread (the reading thread copies nothing to drop a duplicate).
    fn keep_selected(
        &mut self,
        batch: RecordBatch,
        mask: BooleanArray,
    ) -> Result<(), ProcessError> {
        if let Some(encoder) = self.encoder.as_mut() {
            encoder.push_filtered(batch, mask);
            return Ok(());
        }
        let kept = arrow::compute::filter_record_batch(&batch, &mask).map_err(|source| {
            ProcessError::Decode {
                epoch: Epoch::new(self.epoch),
                source,
            }
        })?;
        if kept.num_rows() > 0 {
            self.batches.push(kept);
        }
        Ok(())
    }

    /// Encodes the epoch's rows (of `schema`) into its Parquet files as they come, on a thread
    /// of its own ([`tidemark_connectors::epoch_encoder`]): the rows it holds already first.
    /// The commit then writes the files [`OpenEpoch::finish_encoding`] leaves in `encoded`.
    pub fn encode_while_reading(
        &mut self,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<(), ProcessError> {
        if self.encoder.is_some() || self.encoded.is_some() {
            return Ok(());
        }
        let mut encoder =
            EpochEncoder::start(schema, MAX_ROWS_PER_FILE).map_err(|e| ProcessError::Encode {
                epoch: Epoch::new(self.epoch),
                message: e.to_string(),
            })?;
        for batch in self.batches.drain(..) {
            encoder.push(batch);
        }
        self.encoder = Some(encoder);
        Ok(())
    }

    /// Waits for the epoch's encoding to end (at its seal: no row comes after): its files in
    /// `encoded`. Nothing to do for an epoch whose rows are kept as batches.
    pub fn finish_encoding(&mut self) -> Result<(), ProcessError> {
        if let Some(encoder) = self.encoder.take() {
            let files = encoder.finish().map_err(|e| ProcessError::Encode {
                epoch: Epoch::new(self.epoch),
                message: e.to_string(),
            })?;
            self.encoded = Some(files);
        }
        Ok(())
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

/// Batches a replay prepares ahead of the one being decided ([`OpenEpoch::add_replay`]): enough
/// to keep the decoding thread busy, few enough to bound the decoded rows held.
const PREPARED_AHEAD: usize = 2;

/// A batch's records before any verdict: those refused before decoding (too large, or a Kafka
/// timestamp out of range; see [`OpenEpoch::precheck`]) and the rest decoded. A pure function
/// of (records, stubs, settings), so it may be computed on another thread than the one that
/// applies it; applying it ([`OpenEpoch::add_prepared`]) is what depends on order.
struct PreparedBatch {
    /// The refused records (as kept in a dead letter), their reason and message, in order.
    refused: Vec<(SourceRecord, &'static str, String)>,
    /// The records that go on to decoding, in order, when some were refused (`None`: all of
    /// them).
    fitting: Option<Vec<SourceRecord>>,
    /// Their decoding.
    decoded: Result<Decoded, arrow::error::ArrowError>,
}

impl PreparedBatch {
    /// Prepares `records` (`stubs`: the too-large stubs among them, index and original size,
    /// in index order).
    fn of(p: &BatchPrep, records: &[SourceRecord], stubs: &[(usize, u64)]) -> Self {
        let refused: Vec<(usize, (SourceRecord, &'static str, String))> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| OpenEpoch::precheck(p, r, stub_size(stubs, i)).map(|x| (i, x)))
            .collect();
        let fitting: Option<Vec<SourceRecord>> = (!refused.is_empty()).then(|| {
            records
                .iter()
                .enumerate()
                .filter(|(i, _)| refused.binary_search_by_key(i, |r| r.0).is_err())
                .map(|(_, r)| r.clone())
                .collect()
        });
        let decoded = p.decoder.decode(fitting.as_deref().unwrap_or(records));
        Self {
            refused: refused.into_iter().map(|(_, x)| x).collect(),
            fitting,
            decoded,
        }
    }
}

/// A batch sent to be prepared on a thread of its own ([`DecodeAhead`]): what its verdicts
/// need besides the preparation (the records, the batch clock logged before them, when they
/// arrived). Records here are already counted into their epoch ([`OpenEpoch::take_in`]).
struct AheadBatch {
    records: Vec<SourceRecord>,
    clock_ms: Option<i64>,
    arrived: Instant,
}

/// Who gives a prepared batch its verdicts ([`OpenEpoch::add_prepared`]).
enum Decide<'a> {
    /// The epoch's deciding thread gave them (or failed to).
    Given(Result<BatchVerdicts, ProcessError>),
    /// This thread, against the state (`None`: dedup is off), under the batch clock set on it.
    Here(Option<&'a SharedDedup>),
}

/// What an epoch's threads ([`DecodeAhead`]) hand back for a batch: the batch, its
/// preparation, and its verdicts when the deciding thread gave them (`None`: the reading thread
/// decides this batch and every later one; see [`decide_ahead`]).
type Decided = (
    AheadBatch,
    PreparedBatch,
    Option<Result<BatchVerdicts, ProcessError>>,
);

/// Batches prepared ([`PreparedBatch`]) on a thread of their own and, with dedup, given their
/// verdicts ([`crate::verdicts::give`]) on the next, while the next ones are read and logged:
/// the live path's pipeline ([`OpenEpoch::add_ahead`]). One thread of each per epoch, fed in
/// order and answering in order (one worker each, FIFO channels), so batches are decided and
/// applied in WAL order; the channels are unbounded, but between calls at most
/// [`DECODED_AHEAD`] batches are in flight (one more inside [`OpenEpoch::add_ahead`]), so
/// neither thread waits on a send and a drop waits for at most those.
///
/// Invariant (what keeps the verdicts those of one thread in WAL order): once the thread
/// leaves a batch undecided, it decides no later batch, so the reading thread, which decides
/// the undecided ones as it applies them, never decides a batch while this thread may still
/// decide an earlier or a later one.
struct DecodeAhead {
    jobs: Option<std::sync::mpsc::Sender<AheadBatch>>,
    done: std::sync::mpsc::Receiver<Decided>,
    in_flight: usize,
    /// The decoding thread, then the deciding one (with dedup, when it could start).
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Raised when the threads are dropped. After [`OpenEpoch::finish_decoding`] nothing is in
    /// flight; an epoch dropped with batches in flight (an error ended it) has the deciding
    /// thread decide none it has not begun, as the reading thread never would have. What it
    /// decided before stays in the state, as the reading thread's verdicts of the epoch's
    /// applied batches do: every such error ends the run, and the next start rebuilds the
    /// state from the checkpoint and the WAL.
    abandoned: Arc<std::sync::atomic::AtomicBool>,
}

/// Batches in flight on an epoch's decoding threads before the oldest is applied: one being
/// decided, one being decoded, while the next is read and logged.
const DECODED_AHEAD: usize = 2;

/// With dedup, what the verdicts need, the state they are given against, and the epoch's
/// [`DecodeAhead::abandoned`] flag; `None` once the thread that holds it decides no more.
type Deciding = Option<(
    Arc<VerdictPrep>,
    SharedDedup,
    Arc<std::sync::atomic::AtomicBool>,
)>;

impl DecodeAhead {
    /// Starts the threads (`None` when the decoding one cannot start: the caller prepares
    /// batches itself). With dedup (`deciding`), verdicts are given on a thread of their own
    /// after the decoding one (a three-stage pipeline: read and log, decode, decide), or on the
    /// decoding thread when that thread cannot start.
    fn start(
        prep: Arc<BatchPrep>,
        deciding: Option<(Arc<VerdictPrep>, SharedDedup)>,
        epoch: u64,
    ) -> Option<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<AheadBatch>();
        let (tx, done) = std::sync::mpsc::channel::<Decided>();
        let mut threads = Vec::new();
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deciding = deciding.map(|(v, dedup)| (v, dedup, abandoned.clone()));
        // The deciding thread, fed by the decoding one in order.
        let (to_decide, deciding) = match deciding {
            Some(d) => {
                let (to_decide, decide_rx) =
                    std::sync::mpsc::channel::<(AheadBatch, PreparedBatch)>();
                let tx = tx.clone();
                let mut on_thread = Some(d.clone());
                let spawned = std::thread::Builder::new()
                    .name("tidemark-decide".into())
                    .spawn(move || {
                        for (batch, prepared) in decide_rx {
                            let given = decide_in_order(&mut on_thread, &batch, &prepared);
                            if tx.send((batch, prepared, given)).is_err() {
                                return;
                            }
                        }
                    });
                match spawned {
                    Ok(t) => {
                        threads.push(t);
                        (Some(to_decide), None)
                    }
                    Err(e) => {
                        tracing::warn!(epoch, "no thread for giving verdicts ({e}): giving them on the decoding thread");
                        (None, Some(d))
                    }
                }
            }
            None => (None, None),
        };
        // The decoding thread answers the reading thread itself only without a deciding
        // thread: else it must not hold a sender of `done`, or a panic of the deciding thread
        // would leave the reading thread waiting on it forever instead of seeing it stopped.
        let to_decide = match to_decide {
            Some(to_decide) => {
                drop(tx);
                Ok(to_decide)
            }
            None => Err(tx),
        };
        let thread = std::thread::Builder::new()
            .name("tidemark-decode".into())
            .spawn(move || {
                let mut deciding = deciding;
                for batch in rx {
                    let prepared = PreparedBatch::of(&prep, &batch.records, &[]);
                    let sent = match &to_decide {
                        Ok(to_decide) => to_decide.send((batch, prepared)).is_ok(),
                        Err(tx) => {
                            let given = decide_in_order(&mut deciding, &batch, &prepared);
                            tx.send((batch, prepared, given)).is_ok()
                        }
                    };
                    if !sent {
                        return;
                    }
                }
            });
        match thread {
            Ok(thread) => {
                threads.insert(0, thread);
                Some(Self {
                    jobs: Some(jobs),
                    done,
                    in_flight: 0,
                    threads,
                    abandoned,
                })
            }
            Err(e) => {
                tracing::warn!(
                    epoch,
                    "no thread for decoding ahead ({e}): decoding on the reading thread"
                );
                None
            }
        }
    }

    /// Sends `batch` to be prepared; gives it back if the thread is gone.
    fn send(&mut self, batch: AheadBatch) -> Result<(), AheadBatch> {
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(batch);
        };
        jobs.send(batch).map_err(|e| e.0)?;
        self.in_flight += 1;
        Ok(())
    }

    /// The oldest batch in flight, prepared (waits for it); `None` when none is in flight or
    /// the thread stopped (a panic: the batches in flight are lost with it).
    fn recv(&mut self) -> Option<Decided> {
        if self.in_flight == 0 {
            return None;
        }
        self.in_flight -= 1;
        self.done.recv().ok()
    }
}

/// The verdicts of the next batch in WAL order, on the thread that gives them ([`decide_ahead`]);
/// `None` once that thread left a batch undecided, failed, or stopped at a refusal under
/// `errors.on_invalid_record = "fail"`: `deciding` is then cleared, and the reading thread
/// decides from there on (the invariant of [`DecodeAhead`]).
fn decide_in_order(
    deciding: &mut Deciding,
    batch: &AheadBatch,
    prepared: &PreparedBatch,
) -> Option<Result<BatchVerdicts, ProcessError>> {
    let (v, dedup, abandoned) = deciding.as_ref()?;
    if abandoned.load(std::sync::atomic::Ordering::Acquire) {
        *deciding = None;
        return None;
    }
    let given = decide_ahead(v, dedup, batch, prepared);
    let goes_on = matches!(&given, Some(Ok(verdicts)) if !verdicts.stopped(v));
    if !goes_on {
        *deciding = None;
    }
    given
}

/// A prepared batch's verdicts, given on the deciding thread under the batch's own clock;
/// `None` where the reading thread would stop before any verdict of it (a record refused or
/// undecodable under `errors.on_invalid_record = "fail"`, or the decode failed), so the batch
/// is left to it, as are all after it. A batch without rows needs none (empty verdicts).
fn decide_ahead(
    v: &VerdictPrep,
    dedup: &SharedDedup,
    batch: &AheadBatch,
    prepared: &PreparedBatch,
) -> Option<Result<BatchVerdicts, ProcessError>> {
    let decoded = prepared.decoded.as_ref().ok()?;
    let refuses = !prepared.refused.is_empty() || !decoded.invalid.is_empty();
    if refuses && v.on_invalid == OnInvalidRecord::Fail {
        return None;
    }
    let Some(rows) = decoded.batch.as_ref() else {
        return Some(Ok(BatchVerdicts::default()));
    };
    let fitting = prepared.fitting.as_deref().unwrap_or(&batch.records);
    let row_records: Vec<&SourceRecord> = decoded.rows.iter().map(|i| &fitting[*i]).collect();
    let mut rt = dedup.lock();
    rt.state.set_batch_clock(batch.clock_ms);
    Some(crate::verdicts::give(
        v,
        &mut rt,
        rows,
        &row_records,
        batch.arrived,
    ))
}

impl Drop for DecodeAhead {
    fn drop(&mut self) {
        // Batches still in flight are never applied: none not begun is decided (after
        // `finish_decoding` none is left). Closing the jobs channel then ends the threads
        // once the batches sent are through.
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Release);
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for DecodeAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeAhead")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// The original size of the too-large stub at `index` among `stubs` (index, size; in index
/// order), if that record is one.
fn stub_size(stubs: &[(usize, u64)], index: usize) -> Option<u64> {
    stubs
        .binary_search_by_key(&index, |(j, _)| *j)
        .ok()
        .map(|at| stubs[at].1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::dedup::{DedupState, WatermarkTracker};
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

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
                .add(
                    &[rec(i, &format!(r#"{{"id":"{i}","ts":1}}"#))],
                    None,
                    &p,
                    None,
                )
                .unwrap();
        }
        assert!(by_count.is_due(c), "3 records = checkpoint.max_records");
        let mut by_bytes = OpenEpoch::new(1, Positions::new());
        by_bytes
            .add(
                &[rec(0, r#"{"id":"a-very-long-identifier-of-bytes","ts":1}"#)],
                None,
                &p,
                None,
            )
            .unwrap();
        assert!(by_bytes.is_due(c), "over checkpoint.max_bytes");
        let mut by_time = OpenEpoch::new(1, Positions::new());
        by_time
            .add(&[rec(0, r#"{"id":"a","ts":1}"#)], None, &p, None)
            .unwrap();
        by_time.first_record_at = Some(Instant::now() - Duration::from_secs(61));
        assert!(by_time.is_due(c), "older than checkpoint.interval_ms");
    }

    #[test]
    fn every_record_is_counted_once_as_row_duplicate_late_or_dead_letter() {
        let config = PipelineConfig::parse(CONFIG, Path::new("/x/p.toml")).unwrap();
        let p = processor(&config);
        let spec = p.dedup().unwrap().clone();
        let rt = SharedDedup::new(DedupRuntime {
            state: DedupState::with_capacity(0, Some(100_000)),
            tracker: WatermarkTracker::new(
                Vec::new(),
                spec.lateness_micros,
                spec.idle_timeout,
                Instant::now(),
            ),
            partitions: None,
            cost: VerdictCost::default(),
        });
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
        open.add(&input, None, &p, Some(&rt)).unwrap();
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

    /// A worker's partition is late below its floor (whatever the watermark), another
    /// partition is not; a duplicate of a key accepted from another partition is dropped and
    /// counted as cross-partition, one from its own partition is not.
    #[test]
    fn a_workers_floors_and_cross_partition_duplicates() {
        let config = PipelineConfig::parse(CONFIG, Path::new("/x/p.toml")).unwrap();
        let p = processor(&config);
        let mut rt0 = runtime(&p);
        rt0.partitions = Some(crate::partition_dedup::PartitionDedup {
            // Event times are µs: ts 100 ms is 100_000.
            floors: crate::partition_dedup::PartitionFloors::new([(("t".to_string(), 0), 100_000)]),
            origins: Default::default(),
        });
        let rt = SharedDedup::new(rt0);
        let on = |partition: i32, offset: i64, payload: &str| SourceRecord {
            partition,
            ..rec(offset, payload)
        };
        let mut open = OpenEpoch::new(1, Positions::new());
        let input = [
            on(0, 0, r#"{"id":"a","ts":99}"#),
            on(1, 0, r#"{"id":"b","ts":99}"#),
            on(0, 1, r#"{"id":"c","ts":100}"#),
            on(0, 2, r#"{"id":"c","ts":101}"#),
            on(1, 1, r#"{"id":"c","ts":102}"#),
            on(1, 2, r#"{"id":"b","ts":103}"#),
        ];
        open.add(&input, None, &p, Some(&rt)).unwrap();
        assert_eq!(open.late, 1, "a: below partition 0's floor");
        assert_eq!(open.rows(), 2, "b (partition 1 has no floor) and c");
        assert_eq!(open.duplicates, 3);
        assert_eq!(
            open.cross_partition_duplicates, 1,
            "only c on partition 1 (accepted from partition 0)"
        );
        let late = open.dead_letters.iter().find(|d| d.reason == "late");
        assert!(
            late.is_some_and(|d| d.message.contains("100000")),
            "the floor is the bound named"
        );
    }

    fn runtime(p: &RecordProcessor) -> DedupRuntime {
        let spec = p.dedup().unwrap().clone();
        DedupRuntime {
            state: DedupState::with_capacity(0, None),
            tracker: WatermarkTracker::new(
                [("t".to_string(), 0)],
                spec.lateness_micros,
                spec.idle_timeout,
                Instant::now(),
            ),
            partitions: None,
            cost: VerdictCost::default(),
        }
    }

    fn config(extra_errors: &str, extra_dedup: &str) -> PipelineConfig {
        let text = CONFIG.replace(
            "[dedup]\n",
            &format!("[errors]\n{extra_errors}\n[dedup]\n{extra_dedup}\n"),
        );
        PipelineConfig::parse(&text, Path::new("/x/p.toml")).unwrap()
    }

    /// `dedup.expected_keys` reaches the dedup spec the runtime sizes its state by; unset
    /// it is 0 (the table grows as keys come).
    #[test]
    fn expected_keys_reach_the_dedup_spec() {
        let spec = |extra: &str| processor(&config("", extra)).dedup().unwrap().expected_keys;
        assert_eq!(spec(""), 0);
        assert_eq!(spec("expected_keys = 2500000"), 2_500_000);
    }

    fn reasons(open: &OpenEpoch) -> Vec<(i64, &'static str)> {
        open.dead_letters
            .iter()
            .map(|d| (d.offset, d.reason))
            .collect()
    }

    /// Frames as `log_records` writes them, read back as a restart reads them
    /// (`restart_scan::EpochScan`, through `Replay::add_frame`).
    fn logged(batches: &[(i64, Vec<SourceRecord>)]) -> Replay {
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        for (clock, records) in batches {
            crate::epoch_log::log_batch(*clock, records, &mut buf, |kind, payload| {
                frames.push((kind, payload.to_vec()));
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        let mut replay = Replay::default();
        let mut decoder = crate::epoch_log::RecordDecoder::default();
        for (kind, payload) in &frames {
            replay.add_frame(*kind, payload, &mut decoder).unwrap();
        }
        replay
    }

    /// `batches` through [`OpenEpoch::add_ahead`] (each under its clock), then
    /// [`OpenEpoch::finish_decoding`], as the committer does.
    fn decoded_ahead(
        p: &RecordProcessor,
        batches: &[(i64, Vec<SourceRecord>)],
    ) -> (OpenEpoch, DedupRuntime) {
        let rt = SharedDedup::new(runtime(p));
        let mut open = OpenEpoch::new(1, Positions::new());
        for (clock, records) in batches {
            open.add_ahead(records.clone(), Some(*clock), p, Some(&rt))
                .unwrap();
        }
        open.finish_decoding(p, Some(&rt)).unwrap();
        assert!(!open.decoding());
        (open, rt.into_inner().expect("the decoding thread ended"))
    }

    /// Runs `batches` on one thread (clock set, then `add`) and as a replay of their WAL
    /// frames does; returns both epochs and dedup runtimes.
    fn live_and_replayed(
        p: &RecordProcessor,
        batches: &[(i64, Vec<SourceRecord>)],
    ) -> ((OpenEpoch, DedupRuntime), (OpenEpoch, DedupRuntime)) {
        let rt = SharedDedup::new(runtime(p));
        let mut live = OpenEpoch::new(1, Positions::new());
        for (clock, records) in batches {
            live.add(records, Some(*clock), p, Some(&rt)).unwrap();
        }
        let rt2 = SharedDedup::new(runtime(p));
        let mut again = OpenEpoch::new(1, Positions::new());
        again.add_replay(&logged(batches), p, Some(&rt2)).unwrap();
        let (rt, rt2) = (rt.into_inner().unwrap(), rt2.into_inner().unwrap());
        ((live, rt), (again, rt2))
    }

    fn assert_same(a: &OpenEpoch, b: &OpenEpoch) {
        assert_eq!(a.batches, b.batches, "rows");
        assert_eq!(a.dead_letters, b.dead_letters, "dead letters");
        assert_eq!(
            (a.records, a.duplicates, a.late, a.invalid, a.bytes),
            (b.records, b.duplicates, b.late, b.invalid, b.bytes),
            "counts"
        );
        assert_eq!(a.end, b.end);
        assert_eq!(a.settings, b.settings);
    }

    /// `add` after `add_ahead` decides the batches in flight first: the retry in the later
    /// batch is the duplicate, as in WAL order (deciding it first would keep the retry and drop
    /// the original). Each batch is decided under its own clock: `add`'s record is more than
    /// `dedup.max_event_time_skew_ms` (1 h) after the clock of the batch in flight, not after
    /// its own.
    #[test]
    fn add_decides_batches_still_in_flight_first() {
        let p = processor(&config("", ""));
        let rt = SharedDedup::new(runtime(&p));
        let mut open = OpenEpoch::new(1, Positions::new());
        let one = |o: i64| vec![rec(o, &format!(r#"{{"id":"same","ts":{}}}"#, 5000 + o))];
        let later = rec(3, r#"{"id":"later","ts":10000000}"#);
        open.add_ahead(one(1), Some(1_000_000), &p, Some(&rt))
            .unwrap();
        let clock = Some(8_000_000);
        open.add(&[one(2).remove(0), later], clock, &p, Some(&rt))
            .unwrap();
        assert!(!open.decoding());
        assert_eq!(
            open.dead_letters,
            [],
            "nothing in the future of its own clock"
        );
        assert_eq!((open.rows(), open.duplicates), (2, 1));
        assert!(
            rt.lock().cost.time > Duration::ZERO,
            "the verdicts' time is counted"
        );
        let kept: Vec<i64> = open
            .batches
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(
            kept,
            vec![5001, 10_000_000],
            "the first record kept, its retry dropped"
        );
        assert_eq!(rt.lock().state.batch_clock(), clock);
    }

    /// A replay decoded ahead on another thread stops at the first invalid record as a replay
    /// on one thread does (same error, same record), and does not wait for the batches the
    /// decoding thread still holds: many more than it prepares ahead follow the bad one.
    #[test]
    fn a_replay_stops_at_the_first_invalid_record_whatever_was_decoded_ahead() {
        let config = config("on_invalid_record = \"fail\"", "");
        let p = processor(&config);
        let mut offset = 0;
        let mut batch = |bad: bool| {
            let records: Vec<SourceRecord> = (0..3)
                .map(|i| {
                    offset += 1;
                    if bad && i == 1 {
                        rec(offset, "not json")
                    } else {
                        rec(
                            offset,
                            &format!(r#"{{"id":"k{offset}","ts":{}}}"#, offset * 1000),
                        )
                    }
                })
                .collect();
            (1_000_000, records)
        };
        let mut batches = vec![batch(false), batch(false), batch(true)];
        batches.extend((0..PREPARED_AHEAD * 10).map(|_| batch(false)));
        let replay = logged(&batches);
        let rt = SharedDedup::new(runtime(&p));
        let mut open = OpenEpoch::new(1, Positions::new());
        let err = open
            .add_replay(&replay, &p, Some(&rt))
            .expect_err("the invalid record stops the replay");
        assert!(
            matches!(&err, ProcessError::InvalidRecord { record, .. } if record.offset == 8),
            "{err}"
        );
        // The bad batch is counted in (records are counted before they are decoded), its
        // verdicts are not given, and no later batch is taken in.
        assert_eq!(open.records, 9);
        assert_eq!(rt.lock().state.len(), 6);
    }

    /// Batches decoded ahead are counted in at once (the epoch's limits see them), are decided
    /// on the decoding thread and join the epoch only when applied: the one in flight after
    /// each add, none after `finish_decoding`; an invalid record in flight stops the epoch when
    /// its batch is applied, and its batch gives the state no key.
    #[test]
    fn batches_decoded_ahead_are_counted_at_once_and_decided_in_order() {
        let config = config("on_invalid_record = \"fail\"", "");
        let p = processor(&config);
        let rt = SharedDedup::new(runtime(&p));
        let mut open = OpenEpoch::new(1, Positions::new());
        let good = |o: i64| rec(o, &format!(r#"{{"id":"k{o}","ts":{}}}"#, o * 1000));
        open.add_ahead(vec![good(1), good(2)], Some(1_000_000), &p, Some(&rt))
            .unwrap();
        assert_eq!(open.records, 2, "counted in at once");
        assert!(open.decoding(), "the batch is in flight");
        // DECODED_AHEAD batches stay in flight; the one after them makes the first applied.
        for o in 3..3 + DECODED_AHEAD as i64 {
            open.add_ahead(vec![good(o)], Some(1_000_000), &p, Some(&rt))
                .unwrap();
        }
        let sent = 2 + DECODED_AHEAD as u64;
        assert_eq!(open.records, sent);
        assert_eq!(
            open.rows(),
            2,
            "the first batch applied, the others in flight"
        );
        open.add_ahead(vec![rec(100, "not json")], Some(1_000_000), &p, Some(&rt))
            .unwrap();
        assert_eq!(open.rows(), 3, "the second batch applied");
        let err = open
            .finish_decoding(&p, Some(&rt))
            .expect_err("the invalid record stops the epoch when its batch is applied");
        assert!(
            matches!(&err, ProcessError::InvalidRecord { record, .. } if record.offset == 100),
            "{err}"
        );
        assert_eq!(
            rt.lock().state.len() as u64,
            sent,
            "every good batch decided, the invalid one added no key"
        );
    }

    /// A fault (a panic) in the thread that gives verdicts ends the epoch with an error at its
    /// seal instead of leaving the reading thread waiting for the batches in flight forever.
    #[test]
    fn a_panic_while_deciding_stops_the_epoch_instead_of_hanging_it() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut p = processor(&config("", ""));
            let rt = SharedDedup::new(runtime(&p));
            Arc::get_mut(&mut p.verdicts)
                .expect("not shared yet")
                .panic_in_give = true;
            let mut open = OpenEpoch::new(1, Positions::new());
            let one = |o: i64| vec![rec(o, &format!(r#"{{"id":"k{o}","ts":{}}}"#, 5000 + o))];
            // One batch, then the seal's wait: the decoding thread has nothing left to hand
            // over, so only the fault's own report can end the wait.
            let outcome = open
                .add_ahead(one(1), Some(1_000_000), &p, Some(&rt))
                .and_then(|()| open.finish_decoding(&p, Some(&rt)));
            let _ = done_tx.send(outcome.map_err(|e| e.to_string()));
        });
        let outcome = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the epoch ends (with an error) instead of waiting forever");
        let err = outcome.expect_err("the panic stops the epoch");
        assert!(err.contains("stopped"), "{err}");
    }

    /// Item 7: a record over `errors.max_record_bytes` is dead-lettered as `too_large` with
    /// its coordinates, timestamp, key and size but not its value, the same on replay.
    #[test]
    fn a_record_over_max_record_bytes_is_a_too_large_letter_without_its_value() {
        let config = config("max_record_bytes = 100", "");
        let p = processor(&config);
        let mut big = rec(
            1,
            &format!(r#"{{"id":"b","ts":5,"pad":"{}"}}"#, "x".repeat(200)),
        );
        big.key = Some(b"key-b".to_vec());
        big.timestamp_ms = Some(77);
        let batches = vec![(
            1_000,
            vec![
                rec(0, r#"{"id":"a","ts":5}"#),
                big,
                rec(2, r#"{"id":"c","ts":5}"#),
            ],
        )];
        let ((live, _), (again, _)) = live_and_replayed(&p, &batches);
        assert_eq!(reasons(&live), [(1, "too_large")]);
        let d = &live.dead_letters[0];
        assert_eq!(d.value, None);
        assert_eq!(d.key.as_deref(), Some(&b"key-b"[..]));
        assert_eq!(d.timestamp_ms, Some(77));
        assert!(d.message.contains("original_size=231"), "{}", d.message);
        assert!(
            d.message.contains("errors.max_record_bytes = 100"),
            "{}",
            d.message
        );
        assert_eq!(live.rows(), 2);
        assert_same(&live, &again);
    }

    /// Item 7, the wedge: a record larger than one WAL frame goes through the real WAL as a
    /// stub (the append no longer fails) and replays as the same `too_large` letter.
    #[test]
    fn a_record_over_the_wal_frame_limit_goes_through_the_wal_and_replays_identically() {
        use tidemark_checkpoint::wal::format::MAX_PAYLOAD;
        use tidemark_checkpoint::{SyncPolicy, Wal, WalOptions, WalPosition};

        let config = config("", "");
        let p = processor(&config);
        let mut huge = rec(1, "");
        huge.payload = Some(vec![b'x'; MAX_PAYLOAD + 1]);
        huge.key = Some(vec![b'k'; MAX_KEPT_KEY_BYTES + 1]);
        let batch = vec![
            rec(0, r#"{"id":"a","ts":5}"#),
            huge,
            rec(2, r#"{"id":"c","ts":6}"#),
        ];

        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            segment_size: 1 << 20,
            sync: SyncPolicy::OnSeal,
        };
        let (mut wal, _) = Wal::open(dir.path(), options, None).unwrap();
        let mut buf = Vec::new();
        let stubs = crate::epoch_log::log_batch(9_000, &batch, &mut buf, |kind, payload| {
            wal.append(kind, 1, payload).map(|_| ())
        })
        .unwrap();
        assert_eq!(stubs, [1]);
        wal.commit().unwrap();
        wal.seal(1, b"{}").unwrap();
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), options, None).unwrap();
        let mut replay = Replay::default();
        let mut decoder = crate::epoch_log::RecordDecoder::default();
        for item in wal.reader(WalPosition::default()) {
            let (_, frame) = item.unwrap();
            replay
                .add_frame(frame.kind, &frame.payload, &mut decoder)
                .unwrap();
        }
        assert_eq!(replay.len(), 3);

        let rt = SharedDedup::new(runtime(&p));
        let mut live = OpenEpoch::new(1, Positions::new());
        live.add(&batch, Some(9_000), &p, Some(&rt)).unwrap();
        let rt2 = SharedDedup::new(runtime(&p));
        let mut again = OpenEpoch::new(1, Positions::new());
        again.add_replay(&replay, &p, Some(&rt2)).unwrap();
        assert_eq!(reasons(&live), [(1, "too_large")]);
        let d = &live.dead_letters[0];
        assert_eq!(
            (d.key.as_ref(), d.value.as_ref()),
            (None, None),
            "a long key is not kept either"
        );
        assert!(d.message.contains(&format!(
            "original_size={}",
            MAX_PAYLOAD + MAX_KEPT_KEY_BYTES + 2
        )));
        assert_eq!(live.rows(), 2);
        assert_same(&live, &again);
    }

    /// Item 8: an event time beyond the batch's wall clock + the allowed skew is
    /// dead-lettered as `event_time_in_future`, counted, kept out of state, and does not move
    /// the watermark; at the limit it is accepted.
    #[test]
    fn a_far_future_event_time_is_dead_lettered_and_does_not_move_the_watermark() {
        let config = config("", "max_event_time_skew_ms = 1000");
        let p = processor(&config);
        let clock = 1_000_000; // ms
        let batches = vec![(
            clock,
            vec![
                rec(0, r#"{"id":"a","ts":999000}"#),
                rec(1, r#"{"id":"far","ts":1001001}"#),
                rec(2, r#"{"id":"edge","ts":1001000}"#),
                rec(3, r#"{"id":"far","ts":9000000000000}"#),
            ],
        )];
        let ((live, rt), (again, rt2)) = live_and_replayed(&p, &batches);
        assert_eq!(
            reasons(&live),
            [(1, "event_time_in_future"), (3, "event_time_in_future")]
        );
        assert_eq!(live.invalid(), 2, "counted as dead-lettered");
        assert_eq!(live.rows(), 2);
        assert_eq!(rt.state.len(), 2, "far is not in state");
        // The watermark candidate follows the newest accepted time (edge), not the far one.
        let candidate = rt.tracker.candidate(Instant::now());
        assert_eq!(candidate, Some(1_001_000 * 1000 - 10_000));
        assert_eq!(candidate, rt2.tracker.candidate(Instant::now()));
        assert_same(&live, &again);
    }

    /// Records logged by a build that logged no clock replay without the future check.
    #[test]
    fn records_without_a_logged_clock_replay_without_the_future_check() {
        let config = config("", "max_event_time_skew_ms = 0");
        let p = processor(&config);
        let mut replay = Replay::default();
        replay.push(crate::epoch_log::LoggedRecord {
            record: rec(0, r#"{"id":"far","ts":9000000000000}"#),
            too_large: None,
        });
        let rt = SharedDedup::new(runtime(&p));
        rt.lock().state.set_batch_clock(Some(1));
        let mut open = OpenEpoch::new(1, Positions::new());
        open.add_replay(&replay, &p, Some(&rt)).unwrap();
        assert_eq!(open.rows(), 1);
        assert!(open.dead_letters.is_empty());
    }

    /// Item 12: a Kafka timestamp or a millisecond event time that does not fit
    /// microseconds is dead-lettered, never wrapped or saturated into a row.
    #[test]
    fn timestamps_that_overflow_micros_are_dead_lettered() {
        let text = CONFIG
            .replace("source_columns = false", "source_columns = true")
            .replace(
                "allowed_lateness_ms = 10",
                "allowed_lateness_ms = 10\nmax_event_time_skew_ms = 0",
            );
        let config = PipelineConfig::parse(&text, Path::new("/x/p.toml")).unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(
            config
                .arrow_fields()
                .into_iter()
                .chain(tidemark_connectors::decode::source_column_fields())
                .collect::<Vec<_>>(),
        ));
        let p = RecordProcessor::new(&config, JsonDecoder::new(schema)).unwrap();
        let mut bad_ts = rec(1, r#"{"id":"b","ts":5}"#);
        bad_ts.timestamp_ms = Some(i64::MAX / 100);
        let batches = vec![(
            1_000,
            vec![
                rec(0, r#"{"id":"a","ts":5}"#),
                bad_ts,
                rec(2, &format!(r#"{{"id":"c","ts":{}}}"#, i64::MAX / 10)),
                rec(3, &format!(r#"{{"id":"d","ts":{}}}"#, i64::MIN / 10)),
            ],
        )];
        let ((live, _), (again, _)) = live_and_replayed(&p, &batches);
        assert_eq!(
            reasons(&live),
            [
                (1, "timestamp_out_of_range"),
                (2, "event_time_out_of_range"),
                (3, "event_time_out_of_range")
            ]
        );
        assert_eq!(live.rows(), 1);
        assert_same(&live, &again);
    }

    /// Item 11: the settings that decide content are recorded, and a change names itself.
    #[test]
    fn a_changed_setting_that_decides_content_is_named_with_both_values() {
        let base = processor(&config("", ""));
        let s = base.settings();
        assert_eq!(s["errors.max_record_bytes"], "1048576");
        assert_eq!(s["dedup.key"], r#"["id"]"#);
        assert_eq!(s["dedup.max_event_time_skew_ms"], "3600000");
        assert!(s.contains_key("table schema (sink.columns, sink.source_columns)"));
        let bigger = processor(&config("max_record_bytes = 2048", ""));
        let diffs = settings_diff(s, bigger.settings());
        assert_eq!(
            diffs,
            [(
                "errors.max_record_bytes".to_string(),
                "1048576".to_string(),
                "2048".to_string()
            )]
        );
        let message = settings_refusal(4, &diffs);
        assert!(
            message.contains("`errors.max_record_bytes` was \"1048576\""),
            "{message}"
        );
        assert!(message.contains("is \"2048\" now"), "{message}");
        assert!(message.contains("restore the old value"), "{message}");
        // Settings that only decide epoch boundaries or the next watermark do not count.
        let other = CONFIG
            .replace(
                "allowed_lateness_ms = 10",
                "allowed_lateness_ms = 99\nidle_timeout_ms = 5",
            )
            .replace("max_records = 3", "max_records = 30");
        let other = processor(&PipelineConfig::parse(&other, Path::new("/x/p.toml")).unwrap());
        assert!(settings_diff(s, other.settings()).is_empty());
        // Dedup off: its settings are gone, named as such.
        let off = CONFIG[..CONFIG.find("[dedup]").unwrap()].to_string();
        let off = processor(&PipelineConfig::parse(&off, Path::new("/x/p.toml")).unwrap());
        let diffs = settings_diff(s, off.settings());
        assert!(diffs
            .iter()
            .any(|d| d == &("dedup".into(), "on".into(), "off".into())));
        assert!(diffs
            .iter()
            .any(|d| d.0 == "dedup.key" && d.2 == "(not set)"));
        // The epoch records the settings of its processor.
        let mut open = OpenEpoch::new(1, Positions::new());
        open.add(&[rec(0, r#"{"id":"a","ts":1}"#)], None, &base, None)
            .unwrap();
        assert_eq!(open.settings.as_deref(), Some(&**s));
    }

    mod take_in {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Counting a batch in once per partition run leaves the same end positions and
            /// newest timestamps as counting its records in one by one did (the model below
            /// is that per-record code), whatever the order, runs and timestamps.
            #[test]
            fn a_batch_counted_in_by_runs_equals_record_by_record(
                batches in proptest::collection::vec(
                    proptest::collection::vec((0usize..2, 0i32..3, 0i64..40, proptest::option::of(0i64..1_000)), 0..30),
                    1..4,
                ),
            ) {
                let config = config("", "");
                let p = processor(&config);
                let topics: [Arc<str>; 2] = [Arc::from("a"), Arc::from("b")];
                let mut epoch = OpenEpoch::new(1, Positions::new());
                let mut end = Positions::new();
                let mut newest: BTreeMap<(Arc<str>, i32), (i64, i64)> = BTreeMap::new();
                for batch in &batches {
                    let records: Vec<SourceRecord> = batch
                        .iter()
                        .map(|(t, partition, offset, ts)| SourceRecord {
                            // A fresh Arc for some records: runs are found by name, not pointer.
                            topic: if offset % 3 == 0 { Arc::from(&*topics[*t]) } else { topics[*t].clone() },
                            partition: *partition,
                            offset: *offset,
                            timestamp_ms: *ts,
                            key: None,
                            payload: Some(vec![b'x'; *offset as usize]),
                        })
                        .collect();
                    for r in &records {
                        end.advance_past(r);
                        if let Some(ts) = r.timestamp_ms {
                            let slot = newest.entry((r.topic.clone(), r.partition)).or_insert((r.offset, ts));
                            if slot.0 < r.offset {
                                *slot = (r.offset, ts);
                            }
                        }
                    }
                    epoch.take_in(&records, &[], &p);
                }
                prop_assert_eq!(&epoch.end, &end);
                prop_assert_eq!(&epoch.last_timestamps, &newest);
                prop_assert_eq!(epoch.records, batches.iter().map(Vec::len).sum::<usize>() as u64);
            }
        }
    }

    mod replay {
        use proptest::prelude::*;

        use super::*;

        fn payload(kind: u8, id: u8, ts: i64) -> String {
            match kind {
                0 => format!(r#"{{"id":"k{id}","ts":{ts}}}"#),
                1 => "not json".into(),
                2 => format!(r#"{{"id":"k{id}","ts":{ts},"pad":"{}"}}"#, "x".repeat(300)),
                3 => format!(r#"{{"ts":{ts}}}"#),
                _ => format!(r#"{{"id":"k{id}","ts":{}}}"#, i64::MAX / 7),
            }
        }

        /// Generated batches as logged: (clock s, records of (payload kind, id, event time s,
        /// Kafka timestamp)) to (clock ms, records at offsets 1, 2, ...).
        #[allow(clippy::type_complexity)]
        fn logged_batches(
            batches: Vec<(i64, Vec<(u8, u8, i64, Option<i64>)>)>,
        ) -> Vec<(i64, Vec<SourceRecord>)> {
            let mut offset = 0;
            batches
                .into_iter()
                .map(|(clock, recs)| {
                    let records = recs
                        .into_iter()
                        .map(|(kind, id, ts, kts)| {
                            offset += 1;
                            let mut r = rec(offset, &payload(kind, id, ts * 1000));
                            r.timestamp_ms = kts;
                            r
                        })
                        .collect();
                    (clock * 1000, records)
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever the records and clocks, a replay of the WAL decides every record as
            /// the first run did (rows, letters and reasons, counts, state, watermark candidate).
            #[test]
            fn replay_gives_the_same_verdicts_as_the_first_run(
                batches in proptest::collection::vec(
                    (0i64..5_000, proptest::collection::vec((0u8..5, 0u8..6, 0i64..8_000, any::<Option<i64>>()), 1..8)),
                    1..5,
                ),
            ) {
                let config = config("max_record_bytes = 200", "max_event_time_skew_ms = 1000");
                let p = processor(&config);
                let batches = logged_batches(batches);
                let ((live, rt), (again, rt2)) = live_and_replayed(&p, &batches);
                assert_same(&live, &again);
                prop_assert_eq!(rt.state.sorted_entries(), rt2.state.sorted_entries());
                let now = Instant::now();
                prop_assert_eq!(rt.tracker.candidate(now), rt2.tracker.candidate(now));
                // The live path's two-core stage decides as one thread does.
                let (ahead, rt3) = decoded_ahead(&p, &batches);
                assert_same(&live, &ahead);
                prop_assert_eq!(rt.state.sorted_entries(), rt3.state.sorted_entries());
                prop_assert_eq!(rt.tracker.candidate(now), rt3.tracker.candidate(now));
                prop_assert_eq!(live.records, live.rows() + live.duplicates + live.late + live.invalid());
            }

            /// Under `errors.on_invalid_record = "fail"` and `"skip"`, verdicts given on the
            /// decoding thread ([`OpenEpoch::add_ahead`]) end as on one thread: the same first
            /// error (the same record) or none, and the same state after it, so the thread
            /// decides nothing past the record the epoch stops at; without an error, the same
            /// epoch.
            #[test]
            fn the_decoding_threads_verdicts_stop_where_one_thread_stops(
                fail in any::<bool>(),
                batches in proptest::collection::vec(
                    (0i64..5_000, proptest::collection::vec((0u8..5, 0u8..6, 0i64..8_000), 1..8)),
                    1..6,
                ),
            ) {
                let mode = if fail { "fail" } else { "skip" };
                let config = config(
                    &format!("max_record_bytes = 200\non_invalid_record = \"{mode}\""),
                    "max_event_time_skew_ms = 1000",
                );
                let p = processor(&config);
                let batches = logged_batches(
                    batches
                        .into_iter()
                        .map(|(clock, recs)| {
                            (clock, recs.into_iter().map(|(k, id, ts)| (k, id, ts, None)).collect())
                        })
                        .collect(),
                );
                let one = SharedDedup::new(runtime(&p));
                let mut live = OpenEpoch::new(1, Positions::new());
                let live_err = batches.iter().find_map(|(clock, records)| {
                    live.add(records, Some(*clock), &p, Some(&one)).err()
                });
                let ahead_rt = SharedDedup::new(runtime(&p));
                let mut ahead = OpenEpoch::new(1, Positions::new());
                let ahead_err = batches
                    .iter()
                    .find_map(|(clock, records)| {
                        ahead
                            .add_ahead(records.clone(), Some(*clock), &p, Some(&ahead_rt))
                            .err()
                    })
                    .or_else(|| ahead.finish_decoding(&p, Some(&ahead_rt)).err());
                // Ends the decoding thread (it may hold batches after the error).
                drop(ahead.decoding.take());
                prop_assert_eq!(
                    live_err.as_ref().map(ToString::to_string),
                    ahead_err.as_ref().map(ToString::to_string)
                );
                prop_assert_eq!(
                    one.lock().state.sorted_entries(),
                    ahead_rt.lock().state.sorted_entries()
                );
                if live_err.is_none() {
                    assert_same(&live, &ahead);
                    prop_assert_eq!(&live.skipped_other, &ahead.skipped_other);
                }
            }
        }
    }
}
