//! JSON messages to Arrow record batches, naming the record at fault when one does not fit.
//!
//! The fast path feeds every message of a batch to one `arrow-json` decoder. Only when that
//! fails does the slow path decode each message alone, so a bad message is attributed to its
//! exact `topic/partition@offset` and the good ones around it still decode.

use std::fmt;
use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder};

use crate::record::SourceRecord;

/// Column holding the Kafka topic of each row, when source columns are on.
pub const COL_TOPIC: &str = "_kafka_topic";
/// Column holding the Kafka partition of each row.
pub const COL_PARTITION: &str = "_kafka_partition";
/// Column holding the Kafka offset of each row.
pub const COL_OFFSET: &str = "_kafka_offset";
/// Column holding the Kafka timestamp of each row (microseconds, UTC).
pub const COL_TIMESTAMP: &str = "_kafka_timestamp";

/// The source-coordinate columns Tidemark can add to every row (lineage, audits).
pub fn source_column_fields() -> Vec<Field> {
    vec![
        Field::new(COL_TOPIC, DataType::Utf8, false),
        Field::new(COL_PARTITION, DataType::Int32, false),
        Field::new(COL_OFFSET, DataType::Int64, false),
        Field::new(
            COL_TIMESTAMP,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]
}

fn is_source_column(name: &str) -> bool {
    matches!(name, COL_TOPIC | COL_PARTITION | COL_OFFSET | COL_TIMESTAMP)
}

/// Why a record could not become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// The value is not one well-formed JSON object.
    Malformed,
    /// The JSON does not fit the table schema (unknown field, wrong type, missing required field).
    SchemaMismatch,
    /// The message has no value (a tombstone).
    MissingPayload,
}

impl InvalidReason {
    /// Stable lower-case name used in logs and commitInfo.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Malformed => "malformed_json",
            InvalidReason::SchemaMismatch => "schema_mismatch",
            InvalidReason::MissingPayload => "missing_payload",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that did not decode, with its coordinates and the decoder's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Index of the record in the slice given to [`JsonDecoder::decode`].
    pub index: usize,
    /// Category of the failure.
    pub reason: InvalidReason,
    /// What the decoder said.
    pub message: String,
}

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {}/{}@{} is invalid ({}): {}",
            self.topic, self.partition, self.offset, self.reason, self.message
        )
    }
}

/// The outcome of decoding a batch of records.
#[derive(Debug)]
pub struct Decoded {
    /// The rows of the valid records, in source order, in the table's schema (`None` if no row).
    pub batch: Option<RecordBatch>,
    /// For each row of `batch`, the index of its record in the decoded slice.
    pub rows: Vec<usize>,
    /// The records that did not decode, in source order.
    pub invalid: Vec<InvalidRecord>,
}

/// Decodes JSON message values into batches of a table's Arrow schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    table_schema: SchemaRef,
    payload_schema: SchemaRef,
}

impl JsonDecoder {
    /// A decoder for `table_schema`; its `_kafka_*` columns (if any) are filled from the records'
    /// coordinates, every other column from the JSON value.
    pub fn new(table_schema: SchemaRef) -> Self {
        let payload_fields: Vec<Field> = table_schema
            .fields()
            .iter()
            .filter(|f| !is_source_column(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        Self {
            table_schema,
            payload_schema: Arc::new(Schema::new(payload_fields)),
        }
    }

    /// The table schema this decoder produces.
    pub fn schema(&self) -> &SchemaRef {
        &self.table_schema
    }

    fn new_decoder(&self, rows: usize) -> Result<Decoder, ArrowError> {
        ReaderBuilder::new(self.payload_schema.clone())
            .with_strict_mode(true)
            .with_batch_size(rows.max(1))
            .build_decoder()
    }

    /// Decodes `records`; a record that does not fit is returned in [`Decoded::invalid`],
    /// never dropped silently.
    pub fn decode(&self, records: &[SourceRecord]) -> Result<Decoded, ArrowError> {
        if records.is_empty() {
            return Ok(Decoded {
                batch: None,
                rows: Vec::new(),
                invalid: Vec::new(),
            });
        }
        if let Some(batch) = self.try_fast(records)? {
            return Ok(Decoded {
                batch: Some(self.with_source_columns(batch, records.iter())?),
                rows: (0..records.len()).collect(),
                invalid: Vec::new(),
            });
        }
        // Slow path: find the bad records one by one, then decode the good ones together.
        let mut good = Vec::with_capacity(records.len());
        let mut rows = Vec::with_capacity(records.len());
        let mut invalid = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.check_one(record) {
                Ok(()) => {
                    good.push(record);
                    rows.push(index);
                }
                Err((reason, message)) => invalid.push(InvalidRecord {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    offset: record.offset,
                    index,
                    reason,
                    message,
                }),
            }
        }
        let batch = if good.is_empty() {
            None
        } else {
            let mut decoder = self.new_decoder(good.len())?;
            for record in &good {
                feed(&mut decoder, record.payload.as_deref().unwrap_or_default())?;
            }
            let rows = decoder.flush()?.ok_or_else(|| {
                ArrowError::JsonError("valid records produced no rows".to_string())
            })?;
            Some(self.with_source_columns(rows, good.into_iter())?)
        };
        Ok(Decoded {
            batch,
            rows,
            invalid,
        })
    }

    /// All records in one decoder; `None` when any of them does not decode.
    fn try_fast(&self, records: &[SourceRecord]) -> Result<Option<RecordBatch>, ArrowError> {
        let mut decoder = self.new_decoder(records.len())?;
        for (i, record) in records.iter().enumerate() {
            let Some(payload) = record.payload.as_deref() else {
                return Ok(None);
            };
            if feed(&mut decoder, payload).is_err() || decoder.len() != i + 1 {
                return Ok(None);
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == records.len() => Ok(Some(batch)),
            _ => Ok(None),
        }
    }

    /// Decodes one record alone and says why it does not fit, if it does not.
    fn check_one(&self, record: &SourceRecord) -> Result<(), (InvalidReason, String)> {
        let Some(payload) = record.payload.as_deref() else {
            return Err((
                InvalidReason::MissingPayload,
                "message has no value (tombstone)".to_string(),
            ));
        };
        let mut decoder = self
            .new_decoder(2)
            .map_err(|e| (InvalidReason::SchemaMismatch, e.to_string()))?;
        if let Err(e) = feed(&mut decoder, payload) {
            return Err((InvalidReason::Malformed, e.to_string()));
        }
        if decoder.has_partial_record() {
            return Err((
                InvalidReason::Malformed,
                "value ends inside a JSON object".to_string(),
            ));
        }
        match decoder.len() {
            1 => {}
            0 => {
                return Err((
                    InvalidReason::Malformed,
                    "value holds no JSON object".to_string(),
                ))
            }
            n => {
                return Err((
                    InvalidReason::Malformed,
                    format!("value holds {n} JSON values, expected exactly one object"),
                ))
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == 1 => Ok(()),
            Ok(_) => Err((
                InvalidReason::Malformed,
                "value did not decode to one row".to_string(),
            )),
            Err(e) => Err((InvalidReason::SchemaMismatch, e.to_string())),
        }
    }

    /// Builds the table-schema batch from the payload columns plus the source columns.
    fn with_source_columns<'a>(
        &self,
        payload: RecordBatch,
        records: impl Iterator<Item = &'a SourceRecord> + Clone,
    ) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.table_schema.fields().len());
        for field in self.table_schema.fields() {
            let column: ArrayRef = match field.name().as_str() {
                COL_TOPIC => Arc::new(StringArray::from_iter_values(
                    records.clone().map(|r| r.topic.as_ref()),
                )),
                COL_PARTITION => Arc::new(Int32Array::from_iter_values(
                    records.clone().map(|r| r.partition),
                )),
                COL_OFFSET => Arc::new(Int64Array::from_iter_values(
                    records.clone().map(|r| r.offset),
                )),
                COL_TIMESTAMP => Arc::new(
                    TimestampMicrosecondArray::from_iter(
                        records
                            .clone()
                            .map(|r| r.timestamp_ms.and_then(timestamp_micros)),
                    )
                    .with_timezone("UTC"),
                ),
                name => payload
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| ArrowError::SchemaError(format!("column {name:?} missing")))?,
            };
            columns.push(column);
        }
        RecordBatch::try_new(self.table_schema.clone(), columns)
    }
}

/// A Kafka timestamp (ms) in microseconds; `None` when it does not fit (never wrapped: the
/// engine refuses such records before decoding, as `timestamp_out_of_range`).
pub fn timestamp_micros(ms: i64) -> Option<i64> {
    ms.checked_mul(1000)
}

/// Feeds one JSON value followed by a separator; an error if the decoder did not take it all.
fn feed(decoder: &mut Decoder, payload: &[u8]) -> Result<(), ArrowError> {
    let taken = decoder.decode(payload)?;
    if taken != payload.len() {
        return Err(ArrowError::JsonError(format!(
            "decoder stopped after {taken} of {} bytes",
            payload.len()
        )));
    }
    decoder.decode(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    fn schema(with_source: bool) -> SchemaRef {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, true),
        ];
        if with_source {
            fields.extend(source_column_fields());
        }
        Arc::new(Schema::new(fields))
    }

    fn rec(offset: i64, payload: &str) -> SourceRecord {
        SourceRecord {
            topic: Arc::from("orders"),
            partition: 2,
            offset,
            timestamp_ms: Some(1_700_000_000_000 + offset),
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
        }
    }

    #[test]
    fn good_records_decode_with_source_columns() {
        let d = JsonDecoder::new(schema(true));
        let out = d
            .decode(&[
                rec(5, r#"{"id":"a","amount":1.5}"#),
                rec(6, r#"{"id":"b"}"#),
            ])
            .unwrap();
        assert!(out.invalid.is_empty());
        let batch = out.batch.unwrap();
        assert_eq!(batch.num_rows(), 2);
        let offsets = batch
            .column_by_name(COL_OFFSET)
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offsets.values(), &[5, 6]);
        assert!(batch.column_by_name("amount").unwrap().is_null(1));
    }

    #[test]
    fn each_bad_record_is_named_and_good_ones_survive() {
        let d = JsonDecoder::new(schema(false));
        let mut tombstone = rec(14, "");
        tombstone.payload = None;
        let out = d
            .decode(&[
                rec(10, r#"{"id":"a"}"#),
                rec(11, r#"{"id":"b","amount":"#),
                rec(12, r#"{"id":"c","amount":"lots"}"#),
                rec(13, r#"{"id":"d","extra":1}"#),
                tombstone,
                rec(15, r#"{"amount":2.0}"#),
                rec(16, r#"{"id":"e"} {"id":"f"}"#),
                rec(17, r#"{"id":"g"}"#),
            ])
            .unwrap();
        let bad: Vec<(i64, InvalidReason)> =
            out.invalid.iter().map(|r| (r.offset, r.reason)).collect();
        assert_eq!(
            bad,
            vec![
                (11, InvalidReason::Malformed),
                (12, InvalidReason::SchemaMismatch),
                (13, InvalidReason::SchemaMismatch),
                (14, InvalidReason::MissingPayload),
                (15, InvalidReason::SchemaMismatch),
                (16, InvalidReason::Malformed),
            ]
        );
        assert_eq!(out.batch.unwrap().num_rows(), 2);
        assert_eq!(out.rows, vec![0, 7]);
        assert_eq!(out.invalid[0].index, 1);
        assert!(out.invalid[0].to_string().contains("orders/2@11"));
    }

    #[test]
    fn a_timestamp_that_overflows_micros_is_null_not_wrapped() {
        let d = JsonDecoder::new(schema(true));
        let mut r = rec(1, r#"{"id":"a"}"#);
        r.timestamp_ms = Some(i64::MAX / 999);
        let out = d.decode(&[r]).unwrap();
        let batch = out.batch.unwrap();
        assert!(batch.column_by_name(COL_TIMESTAMP).unwrap().is_null(0));
        assert_eq!(timestamp_micros(-5), Some(-5000));
        assert_eq!(timestamp_micros(i64::MIN / 1000 - 1), None);
    }
}
