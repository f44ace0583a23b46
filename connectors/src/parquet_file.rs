//! One epoch's rows as a Parquet file and its Delta `add` action, written by Tidemark itself so
//! that file names are deterministic (see [`crate::delta::data_file_name`]).
//!
//! Stats follow the Delta protocol's per-file statistics: `numRecords`, `nullCount` for every
//! column, and `minValues`/`maxValues` for numeric, date and timestamp columns (strings are left
//! out: a truncated string maximum would need care, and leaving a column out is always valid).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use deltalake::kernel::Add;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Map, Value};

/// The writer settings of a data file of `schema` whose rows begin with `first` (at least its
/// first [`SAMPLE_ROWS`](crate::dictionary_choice::SAMPLE_ROWS) rows, or all of them): Snappy
/// compression, and dictionary encoding except for the columns whose dictionary could not fit
/// in a page ([`crate::dictionary_choice`]).
pub fn writer_properties(
    schema: &arrow::datatypes::Schema,
    first: &[RecordBatch],
) -> WriterProperties {
    let builder = WriterProperties::builder().set_compression(Compression::SNAPPY);
    crate::dictionary_choice::without_dictionary_where_it_cannot_fit(builder, schema, first).build()
}

/// Encodes `batch` as one Snappy-compressed Parquet file in memory.
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>, ParquetError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2);
    let properties = writer_properties(&batch.schema(), std::slice::from_ref(batch));
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

/// The `add` action of a file at `path` whose Delta stats JSON is `stats`.
pub fn add_action_with_stats(path: String, size: i64, stats: String) -> Add {
    let modification_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Add {
        path,
        partition_values: HashMap::new(),
        size,
        modification_time,
        data_change: true,
        stats: Some(stats),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

/// Delta file statistics of `batch`.
pub fn stats(batch: &RecordBatch) -> Value {
    let mut builder = StatsBuilder::new(&batch.schema());
    builder.add(batch);
    builder.finish()
}

/// File statistics gathered batch by batch as a file is written: rows, null counts and each
/// column's bounds so far (the same as [`stats`] of the rows concatenated).
pub struct StatsBuilder {
    fields: Vec<(String, DataType)>,
    rows: usize,
    nulls: Vec<usize>,
    bounds: Vec<Option<Bounds>>,
}

impl StatsBuilder {
    /// Statistics of no rows yet, for a file of `schema`.
    pub fn new(schema: &arrow::datatypes::Schema) -> Self {
        let fields: Vec<(String, DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let n = fields.len();
        Self {
            fields,
            rows: 0,
            nulls: vec![0; n],
            bounds: (0..n).map(|_| None).collect(),
        }
    }

    /// Adds the rows of `batch` (of the builder's schema).
    pub fn add(&mut self, batch: &RecordBatch) {
        self.rows += batch.num_rows();
        for (i, column) in batch.columns().iter().enumerate().take(self.fields.len()) {
            self.nulls[i] += column.null_count();
            if let Some(b) = bounds_of(column) {
                self.bounds[i] = Some(match self.bounds[i].take() {
                    Some(a) => a.merge(b),
                    None => b,
                });
            }
        }
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The `stats` JSON of the rows added.
    pub fn finish(self) -> Value {
        let mut nulls = Map::new();
        let mut mins = Map::new();
        let mut maxs = Map::new();
        for (((name, data_type), null_count), bounds) in
            self.fields.into_iter().zip(self.nulls).zip(self.bounds)
        {
            nulls.insert(name.clone(), json!(null_count));
            if let Some((min, max)) = bounds.and_then(|b| format_bounds(&data_type, b)) {
                mins.insert(name.clone(), min);
                maxs.insert(name, max);
            }
        }
        json!({
            "numRecords": self.rows,
            "minValues": mins,
            "maxValues": maxs,
            "nullCount": nulls,
        })
    }
}

/// A column's bounds over several arrays: integers (and dates, timestamps) or floats.
#[derive(Debug, Clone, Copy)]
enum Bounds {
    Int(i64, i64),
    Float(f64, f64),
}

impl Bounds {
    /// Both bounds together; floats order as arrow's `min`/`max` do (NaN above all).
    fn merge(self, other: Bounds) -> Bounds {
        match (self, other) {
            (Bounds::Int(a, b), Bounds::Int(c, d)) => Bounds::Int(a.min(c), b.max(d)),
            (Bounds::Float(a, b), Bounds::Float(c, d)) => Bounds::Float(
                if c < a || a.is_nan() { c } else { a },
                if d > b || d.is_nan() { d } else { b },
            ),
            (x, _) => x,
        }
    }
}

/// One array's bounds (`None`: no value, or a type without bounds).
fn bounds_of(column: &ArrayRef) -> Option<Bounds> {
    use arrow::compute::{max, min};
    Some(match column.data_type() {
        DataType::Int32 => {
            let a = column.as_primitive::<Int32Type>();
            Bounds::Int(min(a)? as i64, max(a)? as i64)
        }
        DataType::Int64 => {
            let a = column.as_primitive::<Int64Type>();
            Bounds::Int(min(a)?, max(a)?)
        }
        DataType::Float32 => {
            let a = column.as_primitive::<Float32Type>();
            Bounds::Float(min(a)? as f64, max(a)? as f64)
        }
        DataType::Float64 => {
            let a = column.as_primitive::<Float64Type>();
            Bounds::Float(min(a)?, max(a)?)
        }
        DataType::Date32 => {
            let a = column.as_primitive::<Date32Type>();
            Bounds::Int(min(a)? as i64, max(a)? as i64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let a = column.as_primitive::<TimestampMicrosecondType>();
            Bounds::Int(min(a)?, max(a)?)
        }
        _ => return None,
    })
}

/// The stats' (min, max) of a column of `data_type` with `bounds` (`None`: no bounds).
fn format_bounds(data_type: &DataType, bounds: Bounds) -> Option<(Value, Value)> {
    match (data_type, bounds) {
        (DataType::Int32 | DataType::Int64, Bounds::Int(lo, hi)) => Some((json!(lo), json!(hi))),
        (DataType::Float32 | DataType::Float64, Bounds::Float(lo, hi)) => finite_pair(lo, hi),
        (DataType::Date32, Bounds::Int(lo, hi)) => {
            Some((json!(date(lo as i32)?), json!(date(hi as i32)?)))
        }
        (DataType::Timestamp(TimeUnit::Microsecond, _), Bounds::Int(lo, hi)) => {
            // Bounds are written at millisecond precision: the minimum rounded down, the
            // maximum rounded up, so both stay true bounds for readers that skip files.
            let hi_up = hi.checked_add(999).map(|h| h - h.rem_euclid(1000))?;
            Some((json!(timestamp(lo)?), json!(timestamp(hi_up)?)))
        }
        _ => None,
    }
}

/// NaN and infinities have no JSON form: leave such a column's bounds out.
fn finite_pair(min: f64, max: f64) -> Option<(Value, Value)> {
    (min.is_finite() && max.is_finite()).then(|| (json!(min), json!(max)))
}

fn date(days: i32) -> Option<String> {
    let d = chrono_like::days_to_ymd(days as i64);
    Some(format!("{:04}-{:02}-{:02}", d.0, d.1, d.2))
}

fn timestamp(micros: i64) -> Option<String> {
    let secs = micros.div_euclid(1_000_000);
    let sub = micros.rem_euclid(1_000_000);
    let (y, m, d) = chrono_like::days_to_ymd(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        sub / 1000
    ))
}

/// A Parquet file in an object store, read by ranges: the async reader for files of a table
/// (local or remote) whose size the table's log already gives, so no request is spent on it.
#[derive(Debug, Clone)]
pub struct StoreFileReader {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

impl StoreFileReader {
    /// A reader of the `size`-byte file at `path` in `store`.
    pub fn new(
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
        size: u64,
    ) -> Self {
        Self { store, path, size }
    }
}

fn store_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_reader::AsyncFileReader for StoreFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        use futures::{FutureExt, TryFutureExt};
        use object_store::ObjectStoreExt;
        self.store
            .get_range(&self.path, range)
            .map_err(store_err)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        use futures::FutureExt;
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(store_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<std::sync::Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        use futures::FutureExt;
        async move {
            let size = self.size;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .load_and_finish(self, size)
                .await?;
            Ok(std::sync::Arc::new(metadata))
        }
        .boxed()
    }
}

/// The (min, max) a file's Delta stats (the JSON [`stats`] writes) record for `column`, as
/// JSON values; `None` when the stats are unreadable or lack the column. Readers skip files
/// with them (a rebuild of dedup state reads only files that can hold its rows).
pub fn stats_bounds(stats: &str, column: &str) -> Option<(Value, Value)> {
    let stats: Value = serde_json::from_str(stats).ok()?;
    parsed_stats_bounds(&stats, column).map(|(min, max)| (min.clone(), max.clone()))
}

/// [`stats_bounds`] of stats already parsed: a caller asking for several columns parses once.
pub fn parsed_stats_bounds<'s>(stats: &'s Value, column: &str) -> Option<(&'s Value, &'s Value)> {
    Some((
        stats.get("minValues")?.get(column)?,
        stats.get("maxValues")?.get(column)?,
    ))
}

/// A timestamp bound of the stats ("2026-11-30T12:00:00.123Z", as [`stats`] writes them) in
/// microseconds since the Unix epoch; `None` for anything else.
pub fn stats_timestamp_micros(value: &Value) -> Option<i64> {
    let s = value.as_str()?;
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s.get(19..s.len() - 1)?;
    let sub_micros = match frac.strip_prefix('.') {
        None if frac.is_empty() => 0,
        Some(digits) if !digits.is_empty() && digits.len() <= 6 => {
            digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = chrono_like::ymd_to_days(y, mo as u32, d as u32);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000 + sub_micros)
}

/// Civil-date arithmetic (Howard Hinnant's algorithm), to avoid a date crate for two calls.
mod chrono_like {
    /// (year, month, day) to days since 1970-01-01 (the inverse of [`days_to_ymd`]).
    pub fn ymd_to_days(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (m as i64 + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Days since 1970-01-01 to (year, month, day).
    pub fn days_to_ymd(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    proptest::proptest! {
        /// A timestamp bound read back is the time written, at the millisecond precision
        /// the stats keep (rounded down).
        #[test]
        fn stats_timestamps_read_back(micros in -62_000_000_000_000_000i64..253_000_000_000_000_000) {
            let text = timestamp(micros).unwrap();
            let back = stats_timestamp_micros(&Value::String(text.clone()));
            proptest::prop_assert_eq!(back, Some(micros - micros.rem_euclid(1000)), "{}", text);
        }
    }

    /// A batch of `rows` (value, null?) rows over the column types stats bound, plus a string.
    fn mixed(rows: &[(i64, bool)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("i", DataType::Int32, true),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("d", DataType::Date32, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]);
        let v = |f: fn(i64) -> i64| {
            rows.iter()
                .map(|(x, null)| (!null).then(|| f(*x)))
                .collect::<Vec<_>>()
        };
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(
                    v(|x| x)
                        .iter()
                        .map(|x| x.map(|x| x.to_string()))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(arrow::array::Int32Array::from(
                    v(|x| x % 1000)
                        .iter()
                        .map(|x| x.map(|x| x as i32))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(v(|x| x * 7))),
                Arc::new(Float64Array::from(
                    v(|x| x)
                        .iter()
                        .map(|x| x.map(|x| x as f64 / 4.0))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(arrow::array::Date32Array::from(
                    v(|x| x % 100_000)
                        .iter()
                        .map(|x| x.map(|x| x as i32))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from(v(|x| 1_700_000_000_000_000 + x * 1_337))
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    proptest::proptest! {
        /// An epoch's batches written as files without being concatenated first: the files
        /// tile the rows in order (each full but the last), each file's stats are those of
        /// its rows concatenated, and each file reads back as those rows.
        #[test]
        fn files_of_batches_hold_their_rows_and_stats(
            sizes in proptest::collection::vec(
                proptest::collection::vec((-50_000i64..50_000, proptest::bool::weighted(0.1)), 0..40),
                0..6,
            ),
            max_rows in 1usize..50,
        ) {
            let batches: Vec<RecordBatch> = sizes.iter().map(|rows| mixed(rows)).collect();
            let schema = mixed(&[]).schema();
            let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
            let files =
                crate::epoch_encoder::encode_files(schema.clone(), max_rows, batches.clone())
                    .unwrap();
            let mut offset = 0;
            for (i, file) in files.iter().enumerate() {
                let rows = file.rows;
                proptest::prop_assert!(rows > 0 && rows <= max_rows);
                proptest::prop_assert!(i + 1 == files.len() || rows == max_rows);
                let expected = all.slice(offset, rows);
                proptest::prop_assert_eq!(&file.stats, &stats(&expected).to_string());
                let read: Vec<RecordBatch> =
                    ParquetRecordBatchReaderBuilder::try_new(file.bytes.clone())
                        .unwrap()
                        .build()
                        .unwrap()
                        .map(|b| b.unwrap())
                        .collect();
                let read = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
                proptest::prop_assert_eq!(read.columns(), expected.columns());
                offset += rows;
            }
            proptest::prop_assert_eq!(offset, all.num_rows());
        }
    }

    #[test]
    fn stats_bounds_name_a_columns_min_and_max() {
        let s = stats(&batch()).to_string();
        let (lo, hi) = stats_bounds(&s, "n").unwrap();
        assert!(lo.as_i64().unwrap() <= hi.as_i64().unwrap());
        assert!(stats_bounds(&s, "missing").is_none());
        assert!(stats_bounds("not json", "n").is_none());
        let (_, hi) = stats_bounds(&s, "t").unwrap();
        assert!(stats_timestamp_micros(&hi).is_some(), "{hi}");
        assert_eq!(
            stats_timestamp_micros(&json!("2026-13-01T00:00:00.000Z")),
            None
        );
        assert_eq!(stats_timestamp_micros(&json!(5)), None);
    }

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![Some(5), None, Some(-2)])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN), None])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(1_700_000_000_123_456),
                        None,
                        Some(0),
                    ])
                    .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn encoded_file_reads_back_the_same_rows() {
        let b = batch();
        let bytes = encode(&b).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let back: Vec<RecordBatch> = reader.map(|r| r.unwrap()).collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], b);
    }

    #[test]
    fn stats_count_nulls_and_bound_numbers_and_times() {
        let s = stats(&batch());
        assert_eq!(s["numRecords"], 3);
        assert_eq!(s["nullCount"]["n"], 1);
        assert_eq!(s["nullCount"]["id"], 0);
        assert_eq!(s["minValues"]["n"], -2);
        assert_eq!(s["maxValues"]["n"], 5);
        assert!(s["minValues"].get("id").is_none(), "strings are left out");
        assert!(s["minValues"].get("x").is_none(), "NaN has no JSON bound");
        assert_eq!(s["minValues"]["t"], "1970-01-01T00:00:00.000Z");
        assert_eq!(s["maxValues"]["t"], "2023-11-14T22:13:20.124Z");
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(chrono_like::days_to_ymd(0), (1970, 1, 1));
        assert_eq!(chrono_like::days_to_ymd(19_723), (2024, 1, 1));
        assert_eq!(chrono_like::days_to_ymd(-1), (1969, 12, 31));
        assert_eq!(chrono_like::days_to_ymd(11_016), (2000, 2, 29));
    }
}
