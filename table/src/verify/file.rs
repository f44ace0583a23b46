//! The checks on one data file, in the order they are made: present, the size its `add`
//! action says, a readable Parquet footer, the row count its `add` stats say, and with
//! `deep`, every page decodes and the SHA-256 matches a backup manifest.

use std::path::Path;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaDataReader;
use serde::Serialize;

use crate::backup::manifest::{sha256_of, Sha256Sum};

/// What the table's log (and a backup manifest, if given) say a data file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The `add` action's `size`.
    pub size: u64,
    /// The `add` action's `stats.numRecords`, when it has stats.
    pub num_records: Option<u64>,
    /// The SHA-256 a backup manifest lists for the file (deep checks only).
    pub sha256: Option<Sha256Sum>,
}

/// Why a data file is bad.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Problem {
    /// The file is not there.
    #[error("missing")]
    Missing,
    /// The file could not be read (permissions, I/O error).
    #[error("unreadable: {detail}")]
    Unreadable {
        /// The I/O error.
        detail: String,
    },
    /// Its size differs from the `add` action's.
    #[error("size is {found} bytes, the add action says {expected}")]
    SizeMismatch {
        /// The add's size.
        expected: u64,
        /// The file's size.
        found: u64,
    },
    /// The Parquet footer cannot be read.
    #[error("Parquet footer unreadable: {detail}")]
    FooterUnreadable {
        /// The parser's error.
        detail: String,
    },
    /// The footer's row count differs from the `add` stats' `numRecords`.
    #[error("footer holds {found} rows, the add's numRecords says {expected}")]
    RowCountMismatch {
        /// numRecords.
        expected: u64,
        /// Rows per the footer.
        found: u64,
    },
    /// A page does not decode (deep check).
    #[error("a page does not decode: {detail}")]
    PageUndecodable {
        /// The decoder's error.
        detail: String,
    },
    /// The SHA-256 differs from the backup manifest's (deep check).
    #[error("SHA-256 is {found}, the backup manifest says {expected}")]
    ChecksumMismatch {
        /// The manifest's digest.
        expected: Sha256Sum,
        /// The file's digest.
        found: Sha256Sum,
    },
}

/// What a good file's check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Rows per its footer.
    pub rows: u64,
    /// Its SHA-256 (deep checks only).
    pub sha256: Option<Sha256Sum>,
}

/// Checks the data file at `path` against `expected`; the first problem found, if any.
pub fn check_file(path: &Path, expected: &Expected, deep: bool) -> Result<Checked, Problem> {
    let unreadable = |e: std::io::Error| Problem::Unreadable {
        detail: e.to_string(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::Missing),
        Err(e) => return Err(unreadable(e)),
    };
    if meta.len() != expected.size {
        return Err(Problem::SizeMismatch {
            expected: expected.size,
            found: meta.len(),
        });
    }
    if !deep {
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let rows = footer_rows(&file)?;
        check_rows(expected, rows)?;
        return Ok(Checked { rows, sha256: None });
    }
    // Deep: one read of the whole file serves the footer, the pages and the digest.
    let bytes = Bytes::from(std::fs::read(path).map_err(unreadable)?);
    check_bytes(bytes, expected)
}

/// The deep checks of a whole file in memory (its size already checked).
fn check_bytes(bytes: Bytes, expected: &Expected) -> Result<Checked, Problem> {
    let rows = footer_rows(&bytes)?;
    check_rows(expected, rows)?;
    decode_every_page(bytes.clone())?;
    let sha256 = sha256_of(&bytes);
    if let Some(want) = expected.sha256 {
        if want != sha256 {
            return Err(Problem::ChecksumMismatch {
                expected: want,
                found: sha256,
            });
        }
    }
    Ok(Checked {
        rows,
        sha256: Some(sha256),
    })
}

/// The bytes read from the end of an object for its footer in one request (most footers fit).
const TAIL_GUESS: u64 = 64 << 10;

/// [`check_file`] for the object `path` in `store` (a table on S3): a HEAD for presence and
/// size, then the footer read by ranged GETs from the end (no whole-file download), or with
/// `deep` the whole object (decoded in a blocking task).
pub async fn check_object(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    expected: &Expected,
    deep: bool,
) -> Result<Checked, Problem> {
    let unreadable = |e: object_store::Error| Problem::Unreadable {
        detail: e.to_string(),
    };
    let size = match store.head(path).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => return Err(Problem::Missing),
        Err(e) => return Err(unreadable(e)),
    };
    if size != expected.size {
        return Err(Problem::SizeMismatch {
            expected: expected.size,
            found: size,
        });
    }
    if deep {
        let bytes = store
            .get(path)
            .await
            .map_err(unreadable)?
            .bytes()
            .await
            .map_err(unreadable)?;
        let expected = expected.clone();
        return tokio::task::spawn_blocking(move || check_bytes(bytes, &expected))
            .await
            .map_err(|e| Problem::Unreadable {
                detail: format!("check task failed: {e}"),
            })?;
    }
    let footer_err = |detail: String| Problem::FooterUnreadable { detail };
    if size < 12 {
        return Err(footer_err(format!(
            "{size} bytes is too short for a Parquet file"
        )));
    }
    let mut tail = store
        .get_range(path, size - TAIL_GUESS.min(size)..size)
        .await
        .map_err(unreadable)?;
    let n = tail.len();
    if n < 8 || &tail[n - 4..] != b"PAR1" {
        return Err(footer_err(
            "no PAR1 magic at the end (not a Parquet file, or an encrypted footer)".into(),
        ));
    }
    let meta_len = u32::from_le_bytes([tail[n - 8], tail[n - 7], tail[n - 6], tail[n - 5]]) as u64;
    let needed = meta_len + 8;
    if needed + 4 > size {
        return Err(footer_err(format!(
            "the footer says its metadata is {meta_len} bytes, more than the file's {size}"
        )));
    }
    if needed > n as u64 {
        tail = store
            .get_range(path, size - needed..size)
            .await
            .map_err(unreadable)?;
    }
    let n = tail.len();
    let meta = &tail[n - needed as usize..n - 8];
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetMetaDataReader::decode_metadata(meta)
    }));
    let rows = match parsed {
        Ok(Ok(m)) => m.file_metadata().num_rows(),
        Ok(Err(e)) => return Err(footer_err(e.to_string())),
        Err(panic) => {
            return Err(footer_err(format!(
                "parser panicked: {}",
                panic_text(&*panic)
            )))
        }
    };
    let rows = u64::try_from(rows).map_err(|_| footer_err(format!("negative row count {rows}")))?;
    check_rows(expected, rows)?;
    Ok(Checked { rows, sha256: None })
}

fn footer_rows<R: parquet::file::reader::ChunkReader>(reader: &R) -> Result<u64, Problem> {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ParquetMetaDataReader::new().parse_and_finish(reader)
    }));
    let meta = match parsed {
        Ok(Ok(meta)) => meta,
        Ok(Err(e)) => {
            return Err(Problem::FooterUnreadable {
                detail: e.to_string(),
            })
        }
        Err(panic) => {
            return Err(Problem::FooterUnreadable {
                detail: format!("parser panicked: {}", panic_text(&*panic)),
            })
        }
    };
    let rows = meta.file_metadata().num_rows();
    u64::try_from(rows).map_err(|_| Problem::FooterUnreadable {
        detail: format!("negative row count {rows}"),
    })
}

fn check_rows(expected: &Expected, rows: u64) -> Result<(), Problem> {
    match expected.num_records {
        Some(n) if n != rows => Err(Problem::RowCountMismatch {
            expected: n,
            found: rows,
        }),
        _ => Ok(()),
    }
}

fn decode_every_page(bytes: Bytes) -> Result<u64, Problem> {
    // The Parquet decoder panics on some corrupt input (e.g. an out-of-range bit width)
    // instead of returning an error: a panic is a page that does not decode.
    std::panic::catch_unwind(|| decode_pages(bytes)).unwrap_or_else(|panic| {
        Err(Problem::PageUndecodable {
            detail: format!("decoder panicked: {}", panic_text(&*panic)),
        })
    })
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

fn decode_pages(bytes: Bytes) -> Result<u64, Problem> {
    let undecodable = |detail: String| Problem::PageUndecodable { detail };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| undecodable(e.to_string()))?;
    let mut rows = 0u64;
    for batch in reader {
        rows += batch.map_err(|e| undecodable(e.to_string()))?.num_rows() as u64;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    /// A snappy Parquet file of `rows` rows, small pages, like the sink writes.
    fn write_parquet(path: &Path, rows: i64) -> Expected {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let n = Int64Array::from_iter_values(0..rows);
        let s = StringArray::from_iter_values((0..rows).map(|i| format!("value number {i}")));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(n), Arc::new(s)]).unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(100)
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bytes = std::fs::read(path).unwrap();
        Expected {
            size: bytes.len() as u64,
            num_records: Some(rows as u64),
            sha256: Some(sha256_of(&bytes)),
        }
    }

    #[test]
    fn a_good_file_passes_shallow_and_deep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        let expected = write_parquet(&path, 1000);
        assert_eq!(check_file(&path, &expected, false).unwrap().rows, 1000);
        let deep = check_file(&path, &expected, true).unwrap();
        assert_eq!(deep.sha256, expected.sha256);
    }

    #[test]
    fn missing_truncated_and_miscounted_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        let expected = write_parquet(&path, 1000);
        let wrong_count = Expected {
            num_records: Some(999),
            ..expected.clone()
        };
        assert_eq!(
            check_file(&path, &wrong_count, false),
            Err(Problem::RowCountMismatch {
                expected: 999,
                found: 1000
            })
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            check_file(&path, &expected, false),
            Err(Problem::SizeMismatch { .. })
        ));
        // Truncated and the log's size agrees (e.g. the add was written from a torn file):
        // the footer is what catches it.
        let torn = Expected {
            size: (bytes.len() / 2) as u64,
            ..expected.clone()
        };
        assert!(matches!(
            check_file(&path, &torn, false),
            Err(Problem::FooterUnreadable { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(check_file(&path, &expected, true), Err(Problem::Missing));
    }

    /// Every single flipped byte anywhere in the file is caught by the deep check (by the
    /// footer, a page or the manifest's digest), and the footer area by the shallow check.
    #[test]
    fn every_flipped_byte_is_caught_by_the_deep_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        let expected = write_parquet(&path, 300);
        let good = std::fs::read(&path).unwrap();
        let mut by_digest_only = 0;
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            std::fs::write(&path, &bad).unwrap();
            let err = check_file(&path, &expected, true).unwrap_err();
            if matches!(err, Problem::ChecksumMismatch { .. }) {
                by_digest_only += 1;
            }
        }
        // Without the manifest's digest some flips decode to other values: that is why
        // --deep compares checksums.
        assert!(by_digest_only > 0);
    }

    /// The object-store check (footer by ranged reads from the end) judges every file as the
    /// local one does: good, torn, missing, and a flipped byte anywhere in the footer area.
    #[tokio::test]
    async fn the_object_store_check_agrees_with_the_file_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        let expected = write_parquet(&path, 1000);
        let store =
            tidemark_connectors::durable_store::DurableLocalStore::new(tidemark_fs::std_fs());
        let object = object_store::path::Path::from_absolute_path(&path).unwrap();
        assert_eq!(
            check_object(&store, &object, &expected, false)
                .await
                .unwrap()
                .rows,
            1000
        );
        assert_eq!(
            check_object(&store, &object, &expected, true)
                .await
                .unwrap()
                .sha256,
            expected.sha256
        );
        let good = std::fs::read(&path).unwrap();
        for i in good.len().saturating_sub(300)..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            std::fs::write(&path, &bad).unwrap();
            let local = check_file(&path, &expected, false);
            let remote = check_object(&store, &object, &expected, false).await;
            assert_eq!(
                local.is_ok(),
                remote.is_ok(),
                "byte {i}: {local:?} vs {remote:?}"
            );
        }
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let torn = Expected {
            size: (good.len() / 2) as u64,
            ..expected.clone()
        };
        assert!(matches!(
            check_object(&store, &object, &torn, false).await,
            Err(Problem::FooterUnreadable { .. })
        ));
        assert!(matches!(
            check_object(&store, &object, &expected, false).await,
            Err(Problem::SizeMismatch { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            check_object(&store, &object, &expected, false).await,
            Err(Problem::Missing)
        );
    }
}
