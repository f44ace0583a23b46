//! An epoch's rows encoded into Parquet while the epoch is still being read.
//!
//! Without it the commit of an epoch started by encoding all its rows: at a 5 s interval,
//! seconds of one core's work on the commit path, and every decoded row of the epoch held in
//! memory until then. An [`EpochEncoder`] takes each batch as the epoch gets it (on the
//! reading side, after dedup) and encodes it on a thread of its own, so encoding runs beside
//! reading and decoding (the second core) and a batch's decoded form is freed once encoded:
//! what the epoch holds is its encoded files, a fraction of its decoded rows (and, for the
//! file being started, the batches of its first rows, held until its encoding settings are
//! chosen from them: see `FileBody`).
//!
//! The files are what [`crate::delta::DeltaSink::write_epoch_files`] writes for the same
//! batches ([`encode_files`], the same function): consecutive files of at most
//! [`crate::delta::MAX_ROWS_PER_FILE`] rows, each one Snappy-compressed Parquet file with its
//! Delta stats (property-tested below). Names are given when the files are written, so the
//! same encoded files can be written again by a retried commit.

use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;

use crate::dictionary_choice::SAMPLE_ROWS;
use crate::parquet_file::{writer_properties, StatsBuilder};

/// One encoded data file of an epoch: its bytes, rows and Delta stats.
#[derive(Debug, Clone)]
pub struct EncodedFile {
    /// The whole Parquet file.
    pub bytes: bytes::Bytes,
    /// Rows in it.
    pub rows: usize,
    /// Its Delta `stats` JSON.
    pub stats: String,
}

/// Encodes an epoch's batches on a thread of its own as they come (see the module
/// documentation). Dropping it without [`EpochEncoder::finish`] abandons the files.
#[derive(Debug)]
pub struct EpochEncoder {
    batches: Option<Sender<Handoff>>,
    thread: Option<JoinHandle<Result<Vec<EncodedFile>, ParquetError>>>,
    rows: usize,
}

/// The encoding thread ended without a result (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the Parquet encoding thread of the epoch ended abnormally")]
pub struct EncoderLost;

impl EpochEncoder {
    /// Starts encoding rows of `schema` into files of at most `max_rows_per_file` rows.
    pub fn start(schema: SchemaRef, max_rows_per_file: usize) -> Result<Self, ParquetError> {
        let (tx, rx) = channel::<Handoff>();
        let thread = std::thread::Builder::new()
            .name("tidemark-encode".into())
            .spawn(move || {
                // A filter that fails (arrow's `filter_record_batch`) ends the files: its error
                // is the thread's result.
                let mut failed = None;
                let batches = rx.into_iter().map_while(|h| match h.rows() {
                    Ok(batch) => Some(batch),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                });
                let files = encode_files(schema, max_rows_per_file, batches);
                match failed {
                    Some(e) => Err(ParquetError::External(Box::new(e))),
                    None => files,
                }
            })
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(Self {
            batches: Some(tx),
            thread: Some(thread),
            rows: 0,
        })
    }

    /// Hands `batch` to the encoding thread (empty batches are left out).
    pub fn push(&mut self, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        self.rows += batch.num_rows();
        self.send(Handoff { batch, keep: None });
    }

    /// Hands over the rows of `batch` that `keep` selects (`keep` has one entry per row:
    /// `debug_assert`ed),
    /// filtered on the encoding thread: the reading thread does not copy a batch that lost
    /// a row (a duplicate) to drop it.
    pub fn push_filtered(&mut self, batch: RecordBatch, keep: BooleanArray) {
        debug_assert_eq!(keep.len(), batch.num_rows(), "one mask entry per row");
        let kept = keep.true_count();
        if kept == 0 {
            return;
        }
        self.rows += kept;
        self.send(Handoff {
            batch,
            keep: Some(keep),
        });
    }

    fn send(&self, handoff: Handoff) {
        if let Some(tx) = &self.batches {
            // A send fails only when the thread ended (an encoding error): finish reports it.
            let _ = tx.send(handoff);
        }
    }

    /// Rows handed over so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Waits for the last batches to be encoded; the epoch's files in order.
    pub fn finish(mut self) -> Result<Vec<EncodedFile>, ParquetError> {
        self.batches.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(files)) => files,
            Some(Err(_)) | None => Err(ParquetError::External(Box::new(EncoderLost))),
        }
    }
}

/// A batch on its way to the encoding thread, with the rows to keep of it (`None`: all).
#[derive(Debug)]
struct Handoff {
    batch: RecordBatch,
    keep: Option<BooleanArray>,
}

impl Handoff {
    fn rows(self) -> Result<RecordBatch, arrow::error::ArrowError> {
        match self.keep {
            None => Ok(self.batch),
            Some(keep) => arrow::compute::filter_record_batch(&self.batch, &keep),
        }
    }
}

impl Drop for EpochEncoder {
    fn drop(&mut self) {
        // Abandoned: closing the channel ends the thread after what it holds.
        self.batches.take();
    }
}

/// `batches` (of `schema`) encoded into consecutive files of at most `max_rows_per_file` rows
/// (batches sliced where a file ends; slices share the batches' buffers): the one way an
/// epoch's rows become its files, whether encoded as they come ([`EpochEncoder`]) or at the
/// commit ([`crate::delta::DeltaSink::write_epoch_files`]).
pub fn encode_files(
    schema: SchemaRef,
    max_rows_per_file: usize,
    batches: impl IntoIterator<Item = RecordBatch>,
) -> Result<Vec<EncodedFile>, ParquetError> {
    // A file holds at least one row (zero would never end a file, nor this loop).
    let max_rows_per_file = max_rows_per_file.max(1);
    let mut files = Vec::new();
    let mut current: Option<FileWriter> = None;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let written = current.as_ref().map_or(0, |f| f.stats.rows());
            let take = (max_rows_per_file - written).min(batch.num_rows() - offset);
            let rows = batch.slice(offset, take);
            let file = current.get_or_insert_with(|| FileWriter::new(schema.clone()));
            file.write(&rows)?;
            offset += take;
            if file.stats.rows() == max_rows_per_file {
                if let Some(full) = current.take() {
                    files.push(full.close()?);
                }
            }
        }
    }
    if let Some(last) = current.take() {
        files.push(last.close()?);
    }
    Ok(files)
}

/// One file being written: its rows so far (see [`FileBody`]) and its stats.
struct FileWriter {
    schema: SchemaRef,
    body: FileBody,
    stats: StatsBuilder,
}

/// Where a file's rows are: its Parquet writer starts once the file's first [`SAMPLE_ROWS`]
/// rows are there (or at its close, for a smaller file), with settings chosen from them
/// ([`writer_properties`]); until then those rows are held.
enum FileBody {
    Holding(Vec<RecordBatch>),
    Writing(Box<ArrowWriter<Vec<u8>>>),
}

impl FileWriter {
    fn new(schema: SchemaRef) -> Self {
        let stats = StatsBuilder::new(&schema);
        Self {
            schema,
            body: FileBody::Holding(Vec::new()),
            stats,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.stats.add(batch);
        match &mut self.body {
            FileBody::Writing(writer) => writer.write(batch),
            FileBody::Holding(first) => {
                first.push(batch.clone());
                if self.stats.rows() >= SAMPLE_ROWS {
                    let writer = start_writing(&self.schema, std::mem::take(first))?;
                    self.body = FileBody::Writing(Box::new(writer));
                }
                Ok(())
            }
        }
    }

    fn close(self) -> Result<EncodedFile, ParquetError> {
        let writer = match self.body {
            FileBody::Writing(writer) => *writer,
            FileBody::Holding(first) => start_writing(&self.schema, first)?,
        };
        let rows = self.stats.rows();
        let stats = self.stats.finish().to_string();
        let bytes = writer.into_inner()?;
        Ok(EncodedFile {
            bytes: bytes.into(),
            rows,
            stats,
        })
    }
}

/// A Parquet writer of `schema` with settings chosen from a file's `first` rows, and those
/// rows written.
fn start_writing(
    schema: &SchemaRef,
    first: Vec<RecordBatch>,
) -> Result<ArrowWriter<Vec<u8>>, ParquetError> {
    let properties = writer_properties(schema, &first);
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))?;
    for batch in &first {
        writer.write(batch)?;
    }
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    use super::*;

    fn batch(schema: &SchemaRef, from: i64, rows: usize) -> RecordBatch {
        let n: Vec<Option<i64>> = (0..rows as i64)
            .map(|i| (i % 5 != 0).then_some(from + i))
            .collect();
        let id: Vec<String> = (0..rows as i64)
            .map(|i| format!("id-{}", from + i))
            .collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(id)),
                Arc::new(Int64Array::from(n)),
            ],
        )
        .unwrap()
    }

    /// A column whose first rows are mostly distinct is written without a dictionary, one
    /// whose values repeat with one; the rows read back the same; and the same rows handed
    /// over in other batches give the same bytes (the choice waits for the file's first rows).
    #[test]
    fn distinct_columns_are_written_without_a_dictionary_whatever_the_batches() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::file::reader::{FileReader, SerializedFileReader};

        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let ids: Vec<String> = (0..10_000).map(|i| format!("id-{i}")).collect();
        let whole = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from_iter_values((0..10_000).map(|i| i % 7))),
            ],
        )
        .unwrap();
        let at_once = encode_files(schema.clone(), 1 << 20, [whole.clone()]).unwrap();
        let parts = [(0, 1), (1, 99), (100, 5_000), (5_100, 4_900)].map(|(o, n)| whole.slice(o, n));
        let in_parts = encode_files(schema.clone(), 1 << 20, parts).unwrap();
        assert_eq!(at_once.len(), 1);
        assert_eq!(at_once[0].bytes, in_parts[0].bytes);

        let bytes = at_once[0].bytes.clone();
        let metadata = SerializedFileReader::new(bytes.clone())
            .unwrap()
            .metadata()
            .clone();
        let columns = metadata.row_group(0).columns();
        assert_eq!(
            columns[0].dictionary_page_offset(),
            None,
            "id: all distinct"
        );
        assert!(columns[1].dictionary_page_offset().is_some(), "n: 7 values");
        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let read = arrow::compute::concat_batches(&schema, &read).unwrap();
        assert_eq!(read, whole);
    }

    /// Several files, cut while a file's first rows are still held: every row read back
    /// once and in order, each file's rows where they belong, and each file's choice made
    /// from its own first rows (a column that repeats in the first file and is distinct after).
    #[test]
    fn each_file_chooses_from_its_own_first_rows_and_every_row_is_written_once() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::file::reader::{FileReader, SerializedFileReader};

        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let total = 12_000;
        let n = (0..total as i64).map(|i| if i < 5_000 { i % 3 } else { i });
        let whole = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..total).map(|i| format!("id-{i}")),
                )),
                Arc::new(Int64Array::from_iter_values(n)),
            ],
        )
        .unwrap();
        let mut batches = Vec::new();
        let mut at = 0;
        for size in [1, 4_095, 3, 6_000, 1_901] {
            batches.push(whole.slice(at, size));
            at += size;
        }
        assert_eq!(at, total);
        let files = encode_files(schema.clone(), 5_000, batches).unwrap();
        assert_eq!(
            files.iter().map(|f| f.rows).collect::<Vec<_>>(),
            [5_000, 5_000, 2_000]
        );
        let mut read = Vec::new();
        let mut n_has_dictionary = Vec::new();
        for file in &files {
            let reader = SerializedFileReader::new(file.bytes.clone()).unwrap();
            let column = reader.metadata().row_group(0).column(1).clone();
            n_has_dictionary.push(column.dictionary_page_offset().is_some());
            read.extend(
                ParquetRecordBatchReaderBuilder::try_new(file.bytes.clone())
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(Result::unwrap),
            );
        }
        assert_eq!(
            arrow::compute::concat_batches(&schema, &read).unwrap(),
            whole
        );
        assert_eq!(n_has_dictionary, [true, false, false]);
    }

    proptest! {
        /// The encoder's files (encoded on its thread as batches come) equal what the commit
        /// path writes for the same batches ([`encode_files`] called at once): the same rows
        /// in the same files, the same stats.
        #[test]
        fn the_encoders_files_are_those_of_the_batches(
            sizes in prop::collection::vec(0usize..30, 0..8),
            max_rows in 1usize..40,
            masks in prop::collection::vec(prop::option::of(prop::collection::vec(any::<bool>(), 30)), 8),
        ) {
            let schema: SchemaRef = Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("n", DataType::Int64, true),
            ]));
            let mut from = 0;
            let batches: Vec<RecordBatch> = sizes
                .iter()
                .map(|s| {
                    let b = batch(&schema, from, *s);
                    from += *s as i64;
                    b
                })
                .collect();
            // Some batches handed over with a mask (filtered on the encoder's thread): the
            // files are those of the batches filtered beforehand.
            let mut encoder = EpochEncoder::start(schema.clone(), max_rows).unwrap();
            let mut kept = Vec::new();
            for (b, mask) in batches.iter().zip(&masks) {
                match mask {
                    Some(m) => {
                        let mask = BooleanArray::from(m[..b.num_rows()].to_vec());
                        kept.push(arrow::compute::filter_record_batch(b, &mask).unwrap());
                        encoder.push_filtered(b.clone(), mask);
                    }
                    None => {
                        kept.push(b.clone());
                        encoder.push(b.clone());
                    }
                }
            }
            let rows: usize = kept.iter().map(RecordBatch::num_rows).sum();
            prop_assert_eq!(encoder.rows(), rows);
            let files = encoder.finish().unwrap();
            let expected = encode_files(schema.clone(), max_rows, kept).unwrap();
            prop_assert_eq!(files.len(), expected.len());
            for (file, want) in files.iter().zip(&expected) {
                prop_assert_eq!(file.rows, want.rows);
                prop_assert_eq!(&file.stats, &want.stats);
                prop_assert_eq!(&file.bytes, &want.bytes);
            }
        }
    }
}
