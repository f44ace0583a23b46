//! Which columns of a data file get Parquet dictionary encoding, chosen from the file's first
//! rows.
//!
//! Why: parquet-rs dictionary-encodes every column by default. It interns each value of a
//! column (a hash, a probe, a compare, a copy) until the column's dictionary passes the
//! dictionary page limit (1 MB), and only then falls back to plain encoding for the rest of the
//! row group. For a column whose values are mostly distinct (ids, event times, amounts) that
//! work buys nothing: the dictionary ends up as large as the values. Turning it off for such
//! columns halved the encoding time of the bench's orders (`cargo bench -p tidemark-benches
//! --bench records -- parquet_encode`; the README has the figures), and encoding runs beside
//! reading on the same two cores. A column whose first rows repeat keeps its dictionary.
//!
//! The choice changes how a file is encoded, never what it holds: every Parquet reader
//! decodes both encodings. It depends only on the file's first [`SAMPLE_ROWS`] rows, however
//! they came in batches, so files of the same rows are encoded alike.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::file::properties::WriterPropertiesBuilder;
use parquet::schema::types::ColumnPath;

/// Rows at the start of a file a column's choice looks at: files are written once this many
/// rows are there (or the file ends), so the choice never depends on how its rows came in
/// batches.
pub const SAMPLE_ROWS: usize = 4096;

/// Fewest non-null values a choice is made on: below it the column keeps the default
/// (dictionary on), which costs little on so few rows.
const MIN_VALUES: usize = 64;

/// `builder` with dictionary encoding off for each top-level column whose first
/// [`SAMPLE_ROWS`] values in `first` (a file's first rows, in order) are more than half
/// distinct, not counting nulls.
pub fn without_dictionary_for_distinct_columns(
    mut builder: WriterPropertiesBuilder,
    first: &[RecordBatch],
) -> WriterPropertiesBuilder {
    let Some(schema) = first.first().map(RecordBatch::schema) else {
        return builder;
    };
    for (c, field) in schema.fields().iter().enumerate() {
        let columns: Vec<&dyn Array> = first.iter().map(|b| b.column(c).as_ref()).collect();
        if mostly_distinct(&columns) == Some(true) {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::new(vec![field.name().clone()]), false);
        }
    }
    builder
}

/// Whether more than half of the non-null values among the first [`SAMPLE_ROWS`] rows of a
/// column (given as consecutive arrays) are distinct; `None` for a type not sampled (nested,
/// boolean, dictionary) or too few values.
fn mostly_distinct(column: &[&dyn Array]) -> Option<bool> {
    let mut values: Vec<Vec<u8>> = Vec::new();
    let mut rows = 0;
    for part in column {
        let take = part.len().min(SAMPLE_ROWS - rows);
        sample(*part, take, &mut values)?;
        rows += take;
        if rows == SAMPLE_ROWS {
            break;
        }
    }
    if values.len() < MIN_VALUES {
        return None;
    }
    let n = values.len();
    let distinct: HashSet<Vec<u8>> = values.into_iter().collect();
    Some(distinct.len() * 2 > n)
}

/// Adds the bytes of the non-null values among the first `rows` of `array` to `out`; `None`
/// for a type not sampled.
fn sample(array: &dyn Array, rows: usize, out: &mut Vec<Vec<u8>>) -> Option<()> {
    let valid = (0..rows).filter(|&i| array.is_valid(i));
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            out.extend(valid.map(|i| a.value(i).as_bytes().to_vec()));
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            out.extend(valid.map(|i| a.value(i).as_bytes().to_vec()));
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            out.extend(valid.map(|i| a.value(i).as_bytes().to_vec()));
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            out.extend(valid.map(|i| a.value(i).to_vec()));
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            out.extend(valid.map(|i| a.value(i).to_vec()));
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            out.extend(valid.map(|i| a.value(i).to_vec()));
        }
        DataType::Boolean => return None,
        other => {
            // Fixed-width values (numbers, dates, timestamps, decimals): their bytes.
            let width = other.primitive_width()?;
            let data = array.to_data();
            let bytes = data.buffers().first()?.as_slice();
            let at = data.offset();
            out.extend(valid.map(|i| bytes[(at + i) * width..(at + i + 1) * width].to_vec()));
        }
    }
    Some(())
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

    fn choice(column: ArrayRef) -> Option<bool> {
        mostly_distinct(&[column.as_ref()])
    }

    #[test]
    fn distinct_values_are_told_from_repeated_ones_for_each_type() {
        let n = 5_000i64;
        let ids = StringArray::from_iter_values((0..n).map(|i| format!("o-{i:012}")));
        let currencies =
            StringArray::from_iter_values((0..n).map(|i| ["EUR", "USD"][i as usize % 2]));
        let times = TimestampMicrosecondArray::from_iter_values((0..n).map(|i| 1_000 * i));
        let prices = Float64Array::from_iter_values((0..n).map(|i| (i % 1_000) as f64 / 100.0));
        assert_eq!(choice(Arc::new(ids)), Some(true));
        assert_eq!(choice(Arc::new(currencies)), Some(false));
        assert_eq!(choice(Arc::new(times)), Some(true));
        // 1,000 distinct prices in the 4,096 sampled: a dictionary of 8 KB pays.
        assert_eq!(choice(Arc::new(prices)), Some(false));
    }

    #[test]
    fn only_non_null_values_of_the_sample_count_and_a_slice_is_read_where_it_starts() {
        // Half null, the other half distinct: more than half of the values are distinct.
        let sparse = Int64Array::from_iter((0..5_000).map(|i| (i % 2 == 0).then_some(i)));
        assert_eq!(choice(Arc::new(sparse)), Some(true));
        // Repeated at first, distinct later: a slice from the distinct part is distinct.
        let values: Vec<i64> = (0..10_000).map(|i| if i < 5_000 { 7 } else { i }).collect();
        let column: ArrayRef = Arc::new(Int64Array::from(values));
        assert_eq!(choice(column.clone()), Some(false));
        assert_eq!(choice(column.slice(5_000, 5_000)), Some(true));
        // The same rows in parts: the same choice, on the first 4,096 rows only.
        let parts = [
            column.slice(0, 100),
            column.slice(100, 3_000),
            column.slice(3_100, 6_900),
        ];
        let parts: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
        assert_eq!(mostly_distinct(&parts), Some(false));
        let late = [column.slice(4_000, 50), column.slice(4_050, 5_950)];
        let late: Vec<&dyn Array> = late.iter().map(|p| p.as_ref()).collect();
        assert_eq!(mostly_distinct(&late), Some(true));
    }

    #[test]
    fn few_values_nested_and_boolean_columns_keep_the_default() {
        let few = Int64Array::from_iter_values(0..10);
        assert_eq!(choice(Arc::new(few)), None);
        let nulls = Int64Array::from(vec![None::<i64>; 1_000]);
        assert_eq!(choice(Arc::new(nulls)), None);
        let flags = BooleanArray::from_iter((0..1_000).map(|i| Some(i % 3 == 0)));
        assert_eq!(choice(Arc::new(flags)), None);
        let inner: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1_000));
        let nested = StructArray::new(
            Fields::from(vec![Field::new("x", inner.data_type().clone(), false)]),
            vec![inner],
            None,
        );
        assert_eq!(choice(Arc::new(nested)), None);
    }
}
