//! A Delta Lake sink that commits one epoch per Delta commit, exactly once.
//!
//! Every commit carries a `txn` action `{appId: pipeline_id, version: epoch}` and a `tidemark`
//! object in its commitInfo ([`EpochCommitInfo`]) with the epoch's end positions. So the table
//! alone says how far the pipeline got: on restart, positions are read back from the newest
//! Tidemark commit, and an epoch whose txn version is already in the table is never written
//! again.
//!
//! Durability: deltalake's local-file backend does not fsync. For `file://` tables this sink
//! fsyncs each Parquet file before committing, and the commit file plus `_delta_log/` after, so
//! "committed" survives a power cut and not only a process kill.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::writer::RecordBatchWriter;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use url::Url;

use crate::parquet_file;
use crate::record::Positions;

/// The commitInfo key under which Tidemark records its progress.
pub const COMMIT_INFO_KEY: &str = "tidemark";

/// A failed sink operation, naming the operation and the table.
#[derive(Debug, thiserror::Error)]
#[error("delta sink: {op} on table {table} failed: {source}")]
pub struct DeltaSinkError {
    /// What the sink was doing.
    pub op: &'static str,
    /// The table's URI.
    pub table: String,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A record skipped as invalid, as recorded durably in the commit that covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Reason category (`malformed_json`, `schema_mismatch`, `missing_payload`).
    pub reason: String,
}

/// What each Tidemark commit records in its commitInfo under [`COMMIT_INFO_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochCommitInfo {
    /// The pipeline that wrote the commit (also the txn appId).
    pub pipeline_id: String,
    /// The epoch the commit holds (also the txn version).
    pub epoch: i64,
    /// Positions at the start of the epoch.
    pub start_positions: Positions,
    /// Positions at the end of the epoch: where the next epoch starts.
    pub end_positions: Positions,
    /// Records read in the epoch.
    pub records_read: u64,
    /// Rows written to the table in the epoch.
    pub rows_written: u64,
    /// Records skipped as invalid in the epoch (also listed in `skipped`).
    pub records_skipped: u64,
    /// The skipped records, each by its coordinates.
    #[serde(default)]
    pub skipped: Vec<SkippedRecord>,
    /// Duplicates dropped in the epoch.
    #[serde(default)]
    pub duplicates: u64,
    /// Late records in the epoch (dropped or dead-lettered).
    #[serde(default)]
    pub late: u64,
    /// Records dead-lettered in the epoch for other reasons than lateness.
    #[serde(default)]
    pub dead_lettered: u64,
    /// The event-time watermark (micros) after the epoch, if dedup is on.
    #[serde(default)]
    pub watermark: Option<i64>,
}

/// The outcome of [`DeltaSink::commit_epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The commit landed at this table version.
    Committed {
        /// The new table version.
        version: u64,
    },
    /// The table already held this epoch (txn version `>= epoch`): nothing was written.
    AlreadyCommitted {
        /// The table's txn version for the pipeline.
        txn_version: i64,
    },
}

/// The newest Tidemark commit found in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProgress {
    /// The table version of that commit.
    pub table_version: u64,
    /// What it recorded.
    pub info: EpochCommitInfo,
}

/// Metrics of one epoch's Parquet write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteMetrics {
    /// Parquet files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
    /// Wall time of the write and fsyncs, in microseconds.
    pub micros: u64,
}

/// The Delta sink: see the module documentation.
pub struct DeltaSink {
    table: DeltaTable,
    uri: String,
    app_id: String,
    local_root: Option<PathBuf>,
    arrow_schema: SchemaRef,
}

impl DeltaSink {
    /// Opens the table at `url`, creating it with `columns` when it does not exist yet.
    /// An existing table keeps its own schema (`columns` are then only checked by the caller).
    pub async fn open_or_create(
        url: &Url,
        app_id: &str,
        table_name: &str,
        columns: Vec<StructField>,
    ) -> Result<Self, DeltaSinkError> {
        Self::open(url, app_id, Some((table_name, columns)))
            .await?
            .ok_or_else(|| DeltaSinkError {
                op: "create",
                table: url.to_string(),
                source: "the table does not exist after creating it".into(),
            })
    }

    /// Opens the table at `url` if it exists (`None` if not), never creating it: for tools
    /// that only look.
    pub async fn open_existing(url: &Url, app_id: &str) -> Result<Option<Self>, DeltaSinkError> {
        if url.scheme() == "file"
            && url
                .to_file_path()
                .is_ok_and(|p| !p.join("_delta_log").exists())
        {
            return Ok(None);
        }
        Self::open(url, app_id, None).await
    }

    async fn open(
        url: &Url,
        app_id: &str,
        create: Option<(&str, Vec<StructField>)>,
    ) -> Result<Option<Self>, DeltaSinkError> {
        let uri = url.to_string();
        let local_root = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
        if let (Some(root), Some(_)) = (&local_root, &create) {
            std::fs::create_dir_all(root).map_err(sink_err("create table directory", &uri))?;
        }
        let mut table = DeltaTable::try_from_url(url.clone())
            .await
            .map_err(sink_err("open", &uri))?;
        if table.version().is_none() {
            let Some((table_name, columns)) = create else {
                return Ok(None);
            };
            info!(table = %uri, columns = columns.len(), "creating delta table");
            table = table
                .create()
                .with_table_name(table_name)
                .with_columns(columns)
                .await
                .map_err(sink_err("create", &uri))?;
            if let Some(root) = &local_root {
                sync_commit(root, 0).map_err(sink_err("fsync create commit", &uri))?;
            }
        }
        let arrow_schema = RecordBatchWriter::for_table(&table)
            .map_err(sink_err("read schema", &uri))?
            .arrow_schema();
        Ok(Some(Self {
            table,
            uri,
            app_id: app_id.to_string(),
            local_root,
            arrow_schema,
        }))
    }

    /// The table's schema as Arrow.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow_schema
    }

    /// The table's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The table version currently loaded.
    pub fn table_version(&self) -> Option<u64> {
        self.table.version()
    }

    fn err<E: std::error::Error + Send + Sync + 'static>(
        &self,
        op: &'static str,
    ) -> impl FnOnce(E) -> DeltaSinkError + '_ {
        sink_err(op, &self.uri)
    }

    /// Reloads the newest table state (other writers, or our own earlier process, may have
    /// committed since).
    pub async fn refresh(&mut self) -> Result<(), DeltaSinkError> {
        self.table
            .update_state()
            .await
            .map_err(sink_err("refresh", &self.uri))
    }

    /// The table's txn version for this pipeline: the newest epoch committed, if any.
    pub async fn txn_version(&mut self) -> Result<Option<i64>, DeltaSinkError> {
        self.refresh().await?;
        self.loaded_txn_version().await
    }

    /// The txn version in the state as last loaded (no refresh).
    async fn loaded_txn_version(&self) -> Result<Option<i64>, DeltaSinkError> {
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(self.err("read txn version"))
    }

    /// Where the pipeline stands in the table, from ONE load of the newest state: its txn
    /// version and its newest commit with what that commit recorded in commitInfo.
    pub async fn progress(
        &mut self,
    ) -> Result<(Option<i64>, Option<TableProgress>), DeltaSinkError> {
        self.refresh().await?;
        Ok((
            self.loaded_txn_version().await?,
            self.loaded_last_progress().await?,
        ))
    }

    /// Every commit of this pipeline the table's log holds (state as last loaded): what the
    /// running totals are rebuilt from when no checkpoint has them.
    pub async fn pipeline_commits(&self) -> Result<Vec<EpochCommitInfo>, DeltaSinkError> {
        let (_, ours) = self.pipeline_history(None).await?;
        Ok(ours.into_iter().map(|(_, info)| info).collect())
    }

    /// This pipeline's commitInfos among the newest `limit` commits (all when `None`), newest
    /// first, each with its index in that listing (index i is version `latest - i`); also how
    /// many commits were listed.
    async fn pipeline_history(
        &self,
        limit: Option<usize>,
    ) -> Result<(usize, Vec<(usize, EpochCommitInfo)>), DeltaSinkError> {
        let infos: Vec<_> = self
            .table
            .history(limit)
            .try_collect()
            .await
            .map_err(self.err("read history"))?;
        let mut ours = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let Some(value) = info.info.get(COMMIT_INFO_KEY) else {
                continue;
            };
            let parsed: EpochCommitInfo = serde_json::from_value(value.clone())
                .map_err(self.err("parse tidemark commitInfo"))?;
            if parsed.pipeline_id == self.app_id {
                ours.push((i, parsed));
            }
        }
        Ok((infos.len(), ours))
    }

    /// The newest commit of this pipeline in the state as last loaded (no refresh).
    async fn loaded_last_progress(&self) -> Result<Option<TableProgress>, DeltaSinkError> {
        let Some(latest) = self.table.version() else {
            return Ok(None);
        };
        // Most of the time the newest commit is ours; look further back only when it is not.
        for limit in [Some(16usize), None] {
            let (listed, ours) = self.pipeline_history(limit).await?;
            if let Some((i, info)) = ours.into_iter().next() {
                return Ok(Some(TableProgress {
                    table_version: latest - i as u64,
                    info,
                }));
            }
            if limit.is_some_and(|l| listed < l) {
                break;
            }
        }
        Ok(None)
    }

    /// Writes an epoch's rows as Parquet files (fsynced on local storage) and returns their
    /// `add` actions; nothing is visible in the table until [`DeltaSink::commit_epoch`].
    ///
    /// File names are a pure function of (pipeline, epoch, part): a retried epoch rewrites the
    /// same files instead of leaving the first attempt's behind, and
    /// [`DeltaSink::sweep_uncommitted_files`] can find files of epochs the table does not hold.
    /// Each file is uploaded whole (the local store writes a temporary file and renames it), so
    /// a crash never leaves a half-written file under a final name.
    pub async fn write_epoch_files(
        &mut self,
        epoch: i64,
        batches: &[RecordBatch],
    ) -> Result<(Vec<Add>, WriteMetrics), DeltaSinkError> {
        self.write_epoch_parts(epoch, 0, batches).await
    }

    /// [`DeltaSink::write_epoch_files`] numbering the files from `first_part`: for rows added
    /// to an epoch the table already holds files of (see [`DeltaSink::next_free_part`]).
    pub async fn write_epoch_parts(
        &mut self,
        epoch: i64,
        first_part: usize,
        batches: &[RecordBatch],
    ) -> Result<(Vec<Add>, WriteMetrics), DeltaSinkError> {
        let started = Instant::now();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok((Vec::new(), WriteMetrics::default()));
        }
        let all = arrow::compute::concat_batches(&self.arrow_schema, batches)
            .map_err(self.err("concatenate epoch rows"))?;
        let store = self.table.object_store();
        let mut adds = Vec::new();
        let mut part = first_part;
        let mut offset = 0usize;
        while offset < rows {
            let len = MAX_ROWS_PER_FILE.min(rows - offset);
            let slice = all.slice(offset, len);
            let name = data_file_name(&self.app_id, epoch, part);
            let bytes = parquet_file::encode(&slice).map_err(self.err("encode parquet"))?;
            let size = bytes.len() as i64;
            store
                .put(&deltalake::Path::from(name.as_str()), bytes.into())
                .await
                .map_err(self.err("write parquet file"))?;
            if let Some(root) = &self.local_root {
                fsync_file(&root.join(&name)).map_err(self.err("fsync parquet file"))?;
            }
            adds.push(parquet_file::add_action(name, size, &slice));
            offset += len;
            part += 1;
        }
        if let Some(root) = &self.local_root {
            // The new names must be durable too, before a commit refers to them.
            fsync_file(root).map_err(self.err("fsync table directory"))?;
        }
        let metrics = WriteMetrics {
            files: adds.len(),
            bytes: adds.iter().map(|a| a.size.max(0) as u64).sum(),
            rows: rows as u64,
            micros: started.elapsed().as_micros() as u64,
        };
        Ok((adds, metrics))
    }

    /// Deletes this pipeline's data files of epochs above `committed_epoch` (the table's txn
    /// version): files of a write or commit that did not land. Returns their names.
    ///
    /// Safe because no commit of an epoch above the txn version exists, and no other writer
    /// uses this pipeline's file names; the next attempt of such an epoch writes them again.
    pub async fn sweep_uncommitted_files(
        &mut self,
        committed_epoch: i64,
    ) -> Result<Vec<String>, DeltaSinkError> {
        let store = self.table.object_store();
        let mut removed = Vec::new();
        for (location, epoch) in self.own_data_files().await? {
            if epoch > committed_epoch {
                store
                    .delete(&location)
                    .await
                    .map_err(self.err("delete uncommitted data file"))?;
                removed.push(location.to_string());
            }
        }
        if !removed.is_empty() {
            if let Some(root) = &self.local_root {
                fsync_file(root).map_err(self.err("fsync table directory"))?;
            }
            info!(table = %self.uri, files = removed.len(), above_epoch = committed_epoch, "deleted data files of epochs the table does not hold");
        }
        Ok(removed)
    }

    /// The first part number of `epoch` no file in the table's directory uses yet.
    pub async fn next_free_part(&self, epoch: i64) -> Result<usize, DeltaSinkError> {
        Ok(self
            .own_data_files()
            .await?
            .iter()
            .filter_map(|(location, _)| data_file_epoch_part(&self.app_id, location.as_ref()))
            .filter(|(e, _)| *e == epoch)
            .map(|(_, part)| part + 1)
            .max()
            .unwrap_or(0))
    }

    /// This pipeline's data files in the table's directory (committed or not, temporary
    /// uploads included), with the epoch each name carries.
    async fn own_data_files(&self) -> Result<Vec<(deltalake::Path, i64)>, DeltaSinkError> {
        let listing = self
            .table
            .object_store()
            .list_with_delimiter(None)
            .await
            .map_err(self.err("list data files"))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|o| {
                let epoch = data_file_epoch(&self.app_id, o.location.as_ref())?;
                Some((o.location, epoch))
            })
            .collect())
    }

    /// Reads `columns` of every row in the table's live files (local tables only): used to
    /// rebuild dedup state from the table when the checkpoint store is lost.
    pub fn read_columns(&mut self, columns: &[String]) -> Result<Vec<RecordBatch>, DeltaSinkError> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use parquet::arrow::ProjectionMask;
        let uris: Vec<String> = self
            .table
            .get_file_uris()
            .map_err(self.err("list live files"))?
            .collect();
        let mut out = Vec::new();
        for uri in uris {
            let path = Url::parse(&uri)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| DeltaSinkError {
                    op: "read live file",
                    table: self.uri.clone(),
                    source: format!(
                        "{uri} is not a local file; rebuilding state needs a local table"
                    )
                    .into(),
                })?;
            let file = File::open(&path).map_err(self.err("open live file"))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(self.err("read parquet footer"))?;
            let mask = ProjectionMask::columns(
                builder.parquet_schema(),
                columns.iter().map(String::as_str),
            );
            let reader = builder
                .with_projection(mask)
                .build()
                .map_err(self.err("read parquet"))?;
            for batch in reader {
                out.push(batch.map_err(self.err("read parquet rows"))?);
            }
        }
        Ok(out)
    }

    /// Deletes the files in `adds` (best effort): the commit they were written for failed.
    pub async fn discard_files(&mut self, adds: &[Add]) {
        let store = self.table.object_store();
        for add in adds {
            if let Err(e) = store
                .delete(&deltalake::Path::from(add.path.as_str()))
                .await
            {
                tracing::warn!(file = %add.path, "cannot delete the data file of a failed commit (the next start deletes it): {e}");
            }
        }
    }

    /// Commits `adds` as epoch `info.epoch`: one Delta commit with the `txn` action and the
    /// commitInfo. Reads the txn version first and writes nothing if the epoch is already in.
    pub async fn commit_epoch(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        if let Some(txn_version) = self.txn_version().await? {
            if txn_version >= info.epoch {
                return Ok(CommitOutcome::AlreadyCommitted { txn_version });
            }
        }
        self.commit_with_txn(adds, info, info.epoch).await
    }

    /// Commits `adds` of an epoch the table may hold already (dead letters of an epoch re-read
    /// with other boundaries). The txn version becomes the larger of its current value and the
    /// epoch: it never goes backwards, so files of later epochs are never taken for uncommitted.
    pub async fn commit_more_of_epoch(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        let txn = self.txn_version().await?.unwrap_or(0).max(info.epoch);
        self.commit_with_txn(adds, info, txn).await
    }

    async fn commit_with_txn(
        &mut self,
        adds: Vec<Add>,
        info: &EpochCommitInfo,
        txn: i64,
    ) -> Result<CommitOutcome, DeltaSinkError> {
        let info_json = serde_json::to_value(info).map_err(self.err("encode commitInfo"))?;
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, txn))
            .with_metadata([(COMMIT_INFO_KEY.to_string(), info_json)]);
        let operation = DeltaOperation::StreamingUpdate {
            output_mode: OutputMode::Append,
            query_id: self.app_id.clone(),
            epoch_id: info.epoch,
        };
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(self.err("commit"))?;
        let version = finalized.version();
        if let Some(root) = &self.local_root {
            sync_commit(root, version).map_err(self.err("fsync commit"))?;
        }
        debug!(epoch = info.epoch, version, "epoch committed");
        Ok(CommitOutcome::Committed { version })
    }
}

/// Most rows in one data file: an epoch larger than this is split, deterministically.
pub const MAX_ROWS_PER_FILE: usize = 1 << 20;

/// The name of part `part` of `epoch`'s data for pipeline `app_id`.
pub fn data_file_name(app_id: &str, epoch: i64, part: usize) -> String {
    format!("tidemark-{app_id}-e{epoch:012}-p{part:04}.snappy.parquet")
}

/// The epoch in a data file name written by pipeline `app_id`, if it is one.
/// (Lenient about what follows the part: a temporary upload file counts as the epoch's too.)
pub fn data_file_epoch(app_id: &str, name: &str) -> Option<i64> {
    let rest = name
        .strip_prefix("tidemark-")?
        .strip_prefix(app_id)?
        .strip_prefix("-e")?;
    let (epoch, tail) = rest.split_at_checked(12)?;
    tail.starts_with("-p").then(|| epoch.parse().ok()).flatten()
}

/// The epoch and part in a data file name written by pipeline `app_id`, if it is one.
pub fn data_file_epoch_part(app_id: &str, name: &str) -> Option<(i64, usize)> {
    let rest = name
        .strip_prefix("tidemark-")?
        .strip_prefix(app_id)?
        .strip_prefix("-e")?;
    let (epoch, tail) = rest.split_at_checked(12)?;
    let part = tail.strip_prefix("-p")?.strip_suffix(".snappy.parquet")?;
    Some((epoch.parse().ok()?, part.parse().ok()?))
}

/// Wraps any error as a [`DeltaSinkError`] naming `op` and the table.
fn sink_err<'a, E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    table: &'a str,
) -> impl FnOnce(E) -> DeltaSinkError + 'a {
    move |e| DeltaSinkError {
        op,
        table: table.to_string(),
        source: Box::new(e),
    }
}

fn fsync_file(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Fsyncs the commit file of `version` and the directories that name it.
fn sync_commit(root: &Path, version: u64) -> std::io::Result<()> {
    let log_dir = root.join("_delta_log");
    fsync_file(&log_dir.join(format!("{version:020}.json")))?;
    File::open(&log_dir)?.sync_all()?;
    File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A data file's name gives back its pipeline's epoch and part, and no other
        /// pipeline's (whose id may share a prefix).
        #[test]
        fn file_names_round_trip(epoch in 0i64..1_000_000_000_000, part in 0usize..100_000) {
            let name = data_file_name("orders", epoch, part);
            prop_assert_eq!(data_file_epoch_part("orders", &name), Some((epoch, part)));
            prop_assert_eq!(data_file_epoch("orders", &name), Some(epoch));
            prop_assert_eq!(data_file_epoch_part("orders-2", &name), None);
            prop_assert_eq!(data_file_epoch("order", &name), None);
        }
    }
}
