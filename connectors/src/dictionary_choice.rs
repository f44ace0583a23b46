//! Which columns of a data file get Parquet dictionary encoding, chosen from the file's first
//! rows.
//!
//! Why: parquet-rs dictionary-encodes every column by default. It interns each value of a
//! column (a hash, a probe, a compare, a copy) until the column's dictionary passes the
//! dictionary page limit (1 MiB), and only then falls back to plain encoding for the rest of
//! the row group. For a column of so many distinct values that they cannot fit in one
//! dictionary page (ids, event times, amounts), that work buys little: in a large file the
//! dictionary falls back part way, and in a small one it holds mostly values used once.
//! Turning it off for them cut the encoding time of the bench's orders by 44% (`cargo bench -p
//! tidemark-benches --bench records -- parquet_encode`; the README has the figures), and
//! encoding runs beside reading on the same two cores.
//!
//! **The rule.** The non-null values among a file's first [`SAMPLE_ROWS`] rows estimate the
//! column's distinct values with Chao1's estimator: `d + f1 (f1 - 1) / 2 (f2 + 1)`, where `d`
//! values were seen, `f1` of them once and `f2` twice (values seen once stand for values not
//! seen yet; all distinct gives about `n² / 2` for `n` values). When that estimate times the
//! distinct values' average size in a dictionary page passes the page limit, the column has
//! no dictionary. Otherwise it keeps parquet-rs's default, a dictionary: a column of a few
//! thousand or tens of thousands of values, or of a few long ones, or whose values repeat
//! unevenly (a few frequent ones), keeps a dictionary that pays. Columns of 8- or 16-bit
//! integers keep it too (their dictionary cannot pass 256 KiB).
//!
//! The choice changes how a file is encoded, never what it holds: every Parquet reader
//! decodes both encodings. It depends only on the file's first [`SAMPLE_ROWS`] rows, not on how
//! they came in batches.

use std::collections::HashMap;

use arrow::array::{Array, ArrayData, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use parquet::file::properties::{WriterPropertiesBuilder, DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT};
use parquet::schema::types::ColumnPath;

/// Rows at the start of a file a column's choice looks at: files are written once this many
/// rows are there (or the file ends).
pub const SAMPLE_ROWS: usize = 4096;

/// Fewest non-null values a choice is made on: below it the column keeps the default
/// (dictionary on), which costs little on so few rows.
const MIN_VALUES: usize = 64;

/// `builder` with dictionary encoding off for each top-level column of `schema` whose
/// dictionary would not fit in a page, judged from `first`, the file's first rows in order
/// (see "The rule" in the module documentation).
pub fn without_dictionary_where_it_cannot_fit(
    mut builder: WriterPropertiesBuilder,
    schema: &Schema,
    first: &[RecordBatch],
) -> WriterPropertiesBuilder {
    for (c, field) in schema.fields().iter().enumerate() {
        let parts: Vec<&dyn Array> = first
            .iter()
            .filter_map(|b| b.columns().get(c))
            .map(|a| a.as_ref())
            .collect();
        if dictionary_fits(&parts) == Some(false) {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    builder
}

/// Whether a column's distinct values would fit in one dictionary page, judged from the
/// non-null values among its first [`SAMPLE_ROWS`] rows (the column given as consecutive
/// arrays; see "The rule" in the module documentation); `None` for a type not sampled (see
/// [`sample`]) or too few values.
fn dictionary_fits(parts: &[&dyn Array]) -> Option<bool> {
    // The parts the sample reaches into: their data (fixed-width values are read from it) is
    // held here while the sample borrows.
    let mut rows = 0;
    let sampled: Vec<(&dyn Array, usize, ArrayData)> = parts
        .iter()
        .map_while(|part| {
            (rows < SAMPLE_ROWS).then(|| {
                let take = part.len().min(SAMPLE_ROWS - rows);
                rows += take;
                (*part, take, part.to_data())
            })
        })
        .collect();
    let mut values: Vec<&[u8]> = Vec::new();
    let mut length_prefixed = false;
    for (part, take, data) in &sampled {
        length_prefixed = sample(*part, data, *take, &mut values)?;
    }
    if values.len() < MIN_VALUES {
        return None;
    }
    let mut counts: HashMap<&[u8], u32> = HashMap::with_capacity(values.len());
    for v in &values {
        *counts.entry(v).or_default() += 1;
    }
    let seen = |times: u32| counts.values().filter(|&&c| c == times).count() as f64;
    let (d, f1, f2) = (counts.len() as f64, seen(1), seen(2));
    let estimated_distinct = d + f1 * (f1 - 1.0).max(0.0) / (2.0 * (f2 + 1.0));
    // A dictionary page stores a byte array's values with a 4-byte length each.
    let prefix = if length_prefixed { 4.0 } else { 0.0 };
    let bytes: usize = counts.keys().map(|v| v.len()).sum();
    let size = bytes as f64 / d + prefix;
    Some(estimated_distinct * size <= DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT as f64)
}

/// Adds the bytes of the non-null values among the first `rows` of `array` (whose data is
/// `data`) to `out`, and tells whether they are byte arrays (stored with a length); `None` for
/// a type not sampled: boolean, 8- and 16-bit integers (too few values to pass the limit),
/// null, fixed-size binary, dictionary, nested and other types without a fixed primitive
/// width. Fixed-width values are sized by their Arrow width (a decimal Parquet stores in fewer
/// bytes counts its Arrow bytes).
fn sample<'a>(
    array: &'a dyn Array,
    data: &'a ArrayData,
    rows: usize,
    out: &mut Vec<&'a [u8]>,
) -> Option<bool> {
    let valid = (0..rows).filter(|&i| array.is_valid(i));
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            out.extend(valid.map(|i| a.value(i).as_bytes()));
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            out.extend(valid.map(|i| a.value(i).as_bytes()));
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            out.extend(valid.map(|i| a.value(i).as_bytes()));
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            out.extend(valid.map(|i| a.value(i)));
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            out.extend(valid.map(|i| a.value(i)));
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            out.extend(valid.map(|i| a.value(i)));
        }
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::UInt8
        | DataType::UInt16 => return None,
        other => {
            // Fixed-width values (numbers, dates, times, timestamps, intervals, decimals):
            // their bytes in the values buffer, from the data's offset.
            let width = other.primitive_width()?;
            let bytes = data.buffers().first()?.as_slice();
            let at = data.offset();
            out.extend(valid.map(|i| &bytes[(at + i) * width..(at + i + 1) * width]));
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, StructArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Fields};

    use super::*;

    fn fits(column: ArrayRef) -> Option<bool> {
        dictionary_fits(&[column.as_ref()])
    }

    /// `n` values drawn alike from `0..distinct` (a fixed pseudo-random sequence).
    fn drawn(n: usize, distinct: u64) -> impl Iterator<Item = u64> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % distinct
        })
    }

    #[test]
    fn a_dictionary_stays_where_it_fits_and_goes_where_it_cannot() {
        let n = 5_000;
        let ids = StringArray::from_iter_values((0..n).map(|i| format!("o-{i:012}")));
        assert_eq!(fits(Arc::new(ids)), Some(false), "all distinct");
        let times = TimestampMicrosecondArray::from_iter_values((0..n as i64).map(|i| 1_000 * i));
        assert_eq!(fits(Arc::new(times)), Some(false), "all distinct");
        let currencies = StringArray::from_iter_values((0..n).map(|i| ["EUR", "USD"][i % 2]));
        assert_eq!(fits(Arc::new(currencies)), Some(true));
        // 5,000 customers of 16 bytes: ~100 KB of dictionary.
        let few = drawn(n, 5_000).map(|c| format!("customer-{c:07}"));
        assert_eq!(
            fits(Arc::new(StringArray::from_iter_values(few))),
            Some(true)
        );
        // 40,000 of them: ~800 KB, still one page.
        let more = drawn(n, 40_000).map(|c| format!("customer-{c:07}"));
        assert_eq!(
            fits(Arc::new(StringArray::from_iter_values(more))),
            Some(true)
        );
        // 1,000,000 of them: 20 MB, far past the page.
        let many = drawn(n, 1_000_000).map(|c| format!("customer-{c:07}"));
        assert_eq!(
            fits(Arc::new(StringArray::from_iter_values(many))),
            Some(false)
        );
        // 1M amounts of 8 bytes: 8 MB; 10,000 of them: 80 KB.
        let amounts = drawn(n, 1_000_000).map(|a| a as f64 / 100.0);
        assert_eq!(
            fits(Arc::new(Float64Array::from_iter_values(amounts))),
            Some(false)
        );
        let prices = drawn(n, 10_000).map(|a| a as f64 / 100.0);
        assert_eq!(
            fits(Arc::new(Float64Array::from_iter_values(prices))),
            Some(true)
        );
    }

    #[test]
    fn only_non_null_values_of_the_first_rows_count_however_the_rows_are_split() {
        // Half null, the other half distinct.
        let sparse = Int64Array::from_iter((0..5_000).map(|i| (i % 2 == 0).then_some(i)));
        assert_eq!(fits(Arc::new(sparse)), Some(false));
        // Repeated at first, distinct later: a slice from the distinct part is distinct.
        let values: Vec<i64> = (0..10_000).map(|i| if i < 5_000 { 7 } else { i }).collect();
        let column: ArrayRef = Arc::new(Int64Array::from(values));
        assert_eq!(fits(column.clone()), Some(true));
        assert_eq!(fits(column.slice(5_000, 5_000)), Some(false));
        // The same rows in parts: the same choice, on the first 4,096 rows only.
        let parts = [
            column.slice(0, 100),
            column.slice(100, 3_000),
            column.slice(3_100, 6_900),
        ];
        let parts: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
        assert_eq!(dictionary_fits(&parts), Some(true));
        let late = [column.slice(4_000, 50), column.slice(4_050, 5_950)];
        let late: Vec<&dyn Array> = late.iter().map(|p| p.as_ref()).collect();
        // 1,000 sevens then 3,096 values seen once: many more not seen yet (~4.8M).
        assert_eq!(dictionary_fits(&late), Some(false));
        let later = [column.slice(4_990, 10), column.slice(5_000, 5_000)];
        let later: Vec<&dyn Array> = later.iter().map(|p| p.as_ref()).collect();
        assert_eq!(dictionary_fits(&later), Some(false));
    }

    #[test]
    fn few_long_values_keep_their_dictionary_and_a_small_sample_of_distinct_ones_too() {
        // Three values of 600 bytes: 1.8 KB of dictionary.
        let long = (0..5_000).map(|i| ["a", "b", "c"][i % 3].repeat(600));
        assert_eq!(
            fits(Arc::new(StringArray::from_iter_values(long))),
            Some(true)
        );
        // 100 values, all distinct: too little to tell a column of 2,000 values from one of
        // millions; 8-byte values (~5k estimated) keep the default.
        let few = Int64Array::from_iter_values(0..100);
        assert_eq!(fits(Arc::new(few)), Some(true));
    }

    #[test]
    fn few_values_nested_and_boolean_columns_keep_the_default() {
        let few = Int64Array::from_iter_values(0..10);
        assert_eq!(fits(Arc::new(few)), None);
        let nulls = Int64Array::from(vec![None::<i64>; 1_000]);
        assert_eq!(fits(Arc::new(nulls)), None);
        let flags = BooleanArray::from_iter((0..1_000).map(|i| Some(i % 3 == 0)));
        assert_eq!(fits(Arc::new(flags)), None);
        let small = arrow::array::Int16Array::from_iter_values(0..5_000);
        assert_eq!(fits(Arc::new(small)), None);
        let inner: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1_000));
        let nested = StructArray::new(
            Fields::from(vec![Field::new("x", inner.data_type().clone(), false)]),
            vec![inner],
            None,
        );
        assert_eq!(fits(Arc::new(nested)), None);
    }
}
