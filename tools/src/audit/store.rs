//! The audit of a table on any store a table URI names (`s3://bucket/prefix`, `file://`, a
//! path), through [`TableStore`]: the same replay and verdict as the local functions of the
//! parent module, reading the log by listing `_delta_log/` and the data files as Parquet
//! streams through the object store — only the columns the audit needs (a projection mask),
//! one row group at a time — so a large table on S3 is neither downloaded whole nor held in
//! memory (only the audit's own per-row tallies are).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path as FsPath, PathBuf};

use arrow::array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use tidemark_connectors::parquet_file::StoreFileReader;
use tidemark_connectors::table_store::TableStore;

use super::{
    commit_version, push_coordinates, push_dead_letters, tally, AuditError, Coordinates,
    DeadLetter, ExactlyOnceReport, LogReplay, Replayer, COORDINATE_COLUMNS, DEAD_LETTER_COLUMNS,
};

/// Opens the table at `uri` (a path, `file://` or `s3://` with the process's AWS settings).
pub fn open(uri: &str) -> Result<TableStore, AuditError> {
    TableStore::parse(uri, tidemark_fs::std_fs()).map_err(|e| AuditError::Store {
        location: uri.to_string(),
        message: e.to_string(),
    })
}

/// `rel` (a path relative to the table root, as the log writes it) under the table's root.
fn under(table: &TableStore, rel: &str) -> Path {
    let rel = Path::from_url_path(rel).unwrap_or_else(|_| Path::from(rel));
    table.root().parts().chain(rel.parts()).collect()
}

/// The error of a store operation on `location`.
fn store_err(location: &Path) -> impl FnOnce(object_store::Error) -> AuditError + '_ {
    move |e| AuditError::Store {
        location: location.to_string(),
        message: e.to_string(),
    }
}

/// [`super::replay_log`] of the table in `table`'s store.
pub async fn replay_log(table: &TableStore) -> Result<LogReplay, AuditError> {
    let store = table.store();
    let log_dir = under(table, "_delta_log");
    let listing = store
        .list_with_delimiter(Some(&log_dir))
        .await
        .map_err(store_err(&log_dir))?;
    let mut versions: Vec<(i64, Path)> = listing
        .objects
        .into_iter()
        .filter_map(|o| Some((commit_version(o.location.filename()?)?, o.location)))
        .collect();
    if versions.is_empty() {
        return Err(AuditError::Store {
            location: log_dir.to_string(),
            message: "no commit in the table's log (not a Delta table)".into(),
        });
    }
    versions.sort();
    let mut replayer = Replayer::default();
    for (version, location) in versions {
        let bytes = async { store.get(&location).await?.bytes().await }
            .await
            .map_err(store_err(&location))?;
        let path = PathBuf::from(location.to_string());
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| AuditError::Log {
            path: path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        replayer.commit(version, &path, &text)?;
    }
    Ok(replayer.finish())
}

/// Streams `columns` of every row of `files` (relative to the table root) through `f`, one
/// row group's batch at a time.
async fn for_each_batch(
    table: &TableStore,
    files: &BTreeSet<String>,
    columns: &[&str],
    mut f: impl FnMut(&FsPath, &RecordBatch) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let store = table.store().clone();
    for rel in files {
        let location = under(table, rel);
        let path = PathBuf::from(location.to_string());
        let perr = |message: String| AuditError::Parquet {
            path: path.clone(),
            message,
        };
        let size = store
            .head(&location)
            .await
            .map_err(store_err(&location))?
            .size;
        let reader = StoreFileReader::new(store.clone(), location.clone(), size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| perr(e.to_string()))?;
        let mask = super::projection(builder.parquet_schema(), columns).map_err(perr)?;
        let mut batches = builder
            .with_projection(mask)
            .build()
            .map_err(|e| perr(e.to_string()))?;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| perr(e.to_string()))?;
            f(&path, &batch)?;
        }
    }
    Ok(())
}

/// [`super::read_coordinates`] of the table in `table`'s store.
pub async fn read_coordinates(
    table: &TableStore,
    files: &BTreeSet<String>,
) -> Result<Vec<Coordinates>, AuditError> {
    let mut out = Vec::new();
    for_each_batch(table, files, &COORDINATE_COLUMNS, |path, batch| {
        push_coordinates(&mut out, path, batch)
    })
    .await?;
    Ok(out)
}

/// The dead-letter table next to `table` (`<table>_dead_letters`, in the same store), if it
/// has a log.
pub async fn dead_letter_table(table: &TableStore) -> Result<Option<TableStore>, AuditError> {
    let uri = format!(
        "{}_dead_letters",
        table.url().as_str().trim_end_matches('/')
    );
    let dlq = open(&uri)?;
    let log_dir = under(&dlq, "_delta_log");
    let first = dlq.store().list(Some(&log_dir)).try_next().await;
    match first {
        Ok(Some(_)) => Ok(Some(dlq)),
        Ok(None) => Ok(None),
        Err(e) => Err(store_err(&log_dir)(e)),
    }
}

/// [`super::read_dead_letters`] of the table in `table`'s store.
pub async fn read_dead_letters(table: &TableStore) -> Result<Vec<DeadLetter>, AuditError> {
    let replay = replay_log(table).await?;
    let mut out = Vec::new();
    for_each_batch(
        table,
        &replay.live_files,
        &DEAD_LETTER_COLUMNS,
        |path, batch| push_dead_letters(&mut out, path, batch),
    )
    .await?;
    Ok(out)
}

/// [`super::check_exactly_once`] of the table in `table`'s store (and its dead-letter table).
pub async fn check_exactly_once(
    table: &TableStore,
    ends: &BTreeMap<(String, i32), i64>,
) -> Result<ExactlyOnceReport, AuditError> {
    let replay = replay_log(table).await?;
    let rows = read_coordinates(table, &replay.live_files).await?;
    let dead_letters = match dead_letter_table(table).await? {
        Some(dlq) => read_dead_letters(&dlq).await?,
        None => Vec::new(),
    };
    Ok(tally(&replay, rows, &dead_letters, ends))
}

/// Every data file (`*.parquet`, temporary uploads included) directly under the table's root
/// that the table does not reference: what a crashed or losing writer may leave behind.
pub async fn unreferenced_files(
    table: &TableStore,
    live: &BTreeSet<String>,
) -> Result<Vec<String>, AuditError> {
    let listing = table
        .store()
        .list_with_delimiter(Some(table.root()))
        .await
        .map_err(store_err(table.root()))?;
    Ok(listing
        .objects
        .into_iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .filter(|n| n.contains(".parquet") && !live.contains(n))
        .collect())
}

/// The names of the objects in the table's `_delta_log/` (commits, Delta checkpoints,
/// `_last_checkpoint`).
pub async fn log_file_names(table: &TableStore) -> Result<Vec<String>, AuditError> {
    let log_dir = under(table, "_delta_log");
    let objects: Vec<_> = table
        .store()
        .list(Some(&log_dir))
        .try_collect()
        .await
        .map_err(store_err(&log_dir))?;
    Ok(objects
        .into_iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store audit reads a local table (a `file://` TableStore) like the directory audit.
    #[tokio::test]
    async fn the_store_replay_matches_the_directory_replay() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        let commits = [
            r#"{"metaData":{}}"#,
            "{\"add\":{\"path\":\"a.parquet\"}}\n{\"txn\":{\"appId\":\"p\",\"version\":1}}",
            "{\"add\":{\"path\":\"b.parquet\"}}\n{\"remove\":{\"path\":\"a.parquet\"}}",
        ];
        for (v, body) in commits.iter().enumerate() {
            std::fs::write(log.join(format!("{v:020}.json")), body).unwrap();
        }
        std::fs::write(log.join("00000000000000000002.checkpoint.parquet"), b"x").unwrap();
        let table = open(dir.path().to_str().unwrap()).unwrap();
        let remote = replay_log(&table).await.unwrap();
        let local = super::super::replay_log(dir.path()).unwrap();
        assert_eq!(remote.version, 2);
        assert_eq!(remote.live_files, local.live_files);
        assert_eq!(remote.txn, local.txn);
        std::fs::remove_file(log.join("00000000000000000001.json")).unwrap();
        let err = replay_log(&table).await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
