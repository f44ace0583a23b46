//! Dead letters: records the pipeline could not (or must not) write, kept whole in their own
//! Delta table with why, so nothing is lost on bad input. The table is written through the
//! same [`crate::delta::DeltaSink`] as the main table, one commit per epoch with a `txn`
//! action, so dead letters are exactly once as well.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use deltalake::kernel::{DataType as DeltaType, StructField};

use crate::ids::Epoch;
use crate::record::SourceRecord;

/// One dead letter: the record's coordinates and bytes, and why it is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Kafka timestamp in milliseconds, if any.
    pub timestamp_ms: Option<i64>,
    /// Raw key bytes.
    pub key: Option<Vec<u8>>,
    /// Raw value bytes.
    pub value: Option<Vec<u8>>,
    /// Reason category: `malformed_json`, `schema_mismatch`, `missing_payload`, `too_large`,
    /// `timestamp_out_of_range`, `null_key`, `null_event_time`, `event_time_out_of_range`,
    /// `event_time_in_future`, `late`. A `too_large` letter holds no value (its message gives
    /// the original size) and its key only up to 4 KiB.
    pub reason: &'static str,
    /// The specific message.
    pub message: String,
}

impl DeadLetter {
    /// A dead letter for `record`.
    pub fn of(record: &SourceRecord, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.clone(),
            value: record.payload.clone(),
            reason,
            message: message.into(),
        }
    }
}

/// Columns of the dead-letter table, for creating it.
pub fn delta_columns() -> Vec<StructField> {
    vec![
        StructField::new("topic", DeltaType::STRING, false),
        StructField::new("partition", DeltaType::INTEGER, false),
        StructField::new("offset", DeltaType::LONG, false),
        StructField::new("kafka_timestamp", DeltaType::TIMESTAMP, true),
        StructField::new("key", DeltaType::BINARY, true),
        StructField::new("value", DeltaType::BINARY, true),
        StructField::new("reason", DeltaType::STRING, false),
        StructField::new("message", DeltaType::STRING, false),
        StructField::new("pipeline_id", DeltaType::STRING, false),
        StructField::new("epoch", DeltaType::LONG, false),
    ]
}

/// The Arrow schema matching [`delta_columns`].
pub fn arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "kafka_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("pipeline_id", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
    ]))
}

/// The rows of `letters`, written by `pipeline_id` in `epoch`, in `schema` (the table's own
/// schema as read back, so field metadata matches).
pub fn to_batch(
    schema: &SchemaRef,
    pipeline_id: &str,
    epoch: Epoch,
    letters: &[&DeadLetter],
) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|d| d.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|d| d.offset),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                letters
                    .iter()
                    .map(|d| d.timestamp_ms.and_then(crate::decode::timestamp_micros)),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|d| d.key.as_deref()),
        )),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|d| d.value.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.reason),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.message.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|_| pipeline_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|_| epoch.to_txn()),
        )),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_become_rows_with_their_bytes() {
        let r = SourceRecord {
            topic: Arc::from("t"),
            partition: 1,
            offset: 9,
            timestamp_ms: Some(5),
            key: Some(b"k".to_vec()),
            payload: Some(vec![0xff, 0x00]),
        };
        let b = to_batch(
            &arrow_schema(),
            "p",
            Epoch::new(3),
            &[&DeadLetter::of(&r, "malformed_json", "bad")],
        )
        .unwrap();
        assert_eq!(b.num_rows(), 1);
        let v = b
            .column_by_name("value")
            .unwrap()
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        assert_eq!(v.value(0), &[0xff, 0x00]);
        assert_eq!(delta_columns().len(), b.num_columns());
    }

    #[test]
    fn a_timestamp_out_of_range_is_kept_as_null() {
        use arrow::array::Array;
        let r = SourceRecord {
            topic: Arc::from("t"),
            partition: 1,
            offset: 9,
            timestamp_ms: Some(i64::MAX),
            key: None,
            payload: None,
        };
        let letter = DeadLetter::of(&r, "timestamp_out_of_range", "x");
        let b = to_batch(&arrow_schema(), "p", Epoch::new(3), &[&letter]).unwrap();
        assert!(b.column_by_name("kafka_timestamp").unwrap().is_null(0));
    }
}
