//! Time travel reads: a table's rows as of a version or a time (`tidemark cat`,
//! `tidemark export`), from the live files [`crate::live::live_files`] finds at that version,
//! each Parquet file read through the table's object store, one row group at a time.
//!
//! The rows come out in the table's schema at that version (its `metaData.schemaString`):
//! a file lacking a column gives nulls for it, columns a file has beyond the schema are left
//! out. Partitioned tables and deletion vectors are refused by name (Tidemark writes neither).

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::kernel::StructType;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::history::{version_at, TooEarly};
use crate::live::{live_files, LiveError};
use crate::location::TableLocation;
use crate::log::{read_commit, LogError, LogListing};
use crate::restore::state::LogState;

/// Which version of a table to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// The newest.
    Latest,
    /// This version.
    Version(u64),
    /// The newest version committed at or before this time (ms since the epoch).
    Timestamp(i64),
}

/// Why a time travel read failed.
#[derive(Debug, thiserror::Error)]
pub enum TimeTravelError {
    /// Reading the log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Finding the live files.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// The time is before the oldest version.
    #[error("table {table}: {source}")]
    TooEarly {
        /// The table.
        table: String,
        /// Which time and which oldest version.
        #[source]
        source: TooEarly,
    },
    /// The version is not (or no longer) readable.
    #[error("table {table}: version {version} cannot be read: {reason}")]
    Unreadable {
        /// The table.
        table: String,
        /// The version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// A data file the version needs cannot be read.
    #[error("table {table} version {version}: data file {file}: {reason}")]
    File {
        /// The table.
        table: String,
        /// The version.
        version: u64,
        /// The file (decoded path relative to the table).
        file: String,
        /// Why.
        reason: String,
    },
}

/// The version `as_of` names in `location`'s log.
pub async fn resolve(
    location: &TableLocation,
    listing: &LogListing,
    as_of: AsOf,
) -> Result<u64, TimeTravelError> {
    let table = location.to_string();
    let newest = listing.newest_version().ok_or_else(|| LiveError::NoTable {
        table: table.clone(),
    })?;
    match as_of {
        AsOf::Latest => Ok(newest),
        AsOf::Version(v) if v > newest => Err(LiveError::NoSuchVersion {
            table,
            version: v,
            newest,
        }
        .into()),
        AsOf::Version(v) => Ok(v),
        AsOf::Timestamp(ms) => {
            let mut times = Vec::new();
            for (v, file) in listing.commits() {
                let commit = read_commit(location, v).await?.parse(&table)?;
                times.push((v, commit.timestamp_ms().unwrap_or(file.last_modified_ms)));
            }
            match version_at(&times, ms) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(TimeTravelError::Unreadable {
                    table,
                    version: newest,
                    reason: "the log holds no commit file to date it".into(),
                }),
                Err(source) => Err(TimeTravelError::TooEarly { table, source }),
            }
        }
    }
}

/// A version's rows, ready to stream.
pub struct VersionReader {
    location: TableLocation,
    version: u64,
    schema: SchemaRef,
    files: Vec<String>,
    rows: Option<u64>,
}

impl VersionReader {
    /// Finds the version `as_of` names, its schema and its live files.
    pub async fn open(location: &TableLocation, as_of: AsOf) -> Result<Self, TimeTravelError> {
        let listing = LogListing::list(location).await?;
        let version = resolve(location, &listing, as_of).await?;
        let table = location.to_string();
        let unreadable = |reason: String| TimeTravelError::Unreadable {
            table: table.clone(),
            version,
            reason,
        };
        let state = LogState::load(location, &listing, version).await?;
        let metadata = state
            .metadata
            .as_ref()
            .ok_or_else(|| unreadable("no metaData action at or before it".into()))?;
        if metadata
            .get("partitionColumns")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty())
        {
            return Err(unreadable(
                "the table is partitioned (not supported by tidemark cat/export yet)".into(),
            ));
        }
        let schema_string = metadata
            .get("schemaString")
            .and_then(Value::as_str)
            .ok_or_else(|| unreadable("its metaData has no schemaString".into()))?;
        let delta_schema: StructType = serde_json::from_str(schema_string)
            .map_err(|e| unreadable(format!("its schema cannot be read: {e}")))?;
        let schema: Schema = (&delta_schema)
            .try_into_arrow()
            .map_err(|e| unreadable(format!("its schema has no Arrow form: {e}")))?;
        let live = live_files(location, &listing, Some(version)).await?;
        if let Some((f, _)) = live.files().find(|(f, _)| f.has_deletion_vector) {
            return Err(unreadable(format!(
                "{} has a deletion vector (not supported by tidemark cat/export yet)",
                f.path.decoded
            )));
        }
        let rows = live
            .files()
            .map(|(f, _)| f.num_records)
            .try_fold(0u64, |acc, n| n.map(|n| acc + n));
        Ok(Self {
            location: location.clone(),
            version,
            schema: Arc::new(schema),
            files: live.snapshot.files.keys().cloned().collect(),
            rows,
        })
    }

    /// The version being read.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The table's schema at that version.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Its live data files (decoded paths relative to the table).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Its row count from the files' stats (`None` when a file has none).
    pub fn rows_from_stats(&self) -> Option<u64> {
        self.rows
    }

    /// The rows, batch by batch, file by file in path order, in the table's schema.
    pub fn batches(&self) -> impl Stream<Item = Result<RecordBatch, TimeTravelError>> + '_ {
        stream::iter(self.files.iter())
            .then(move |file| self.read_file(file))
            .map_ok(|batches| stream::iter(batches.into_iter().map(Ok::<_, TimeTravelError>)))
            .try_flatten()
    }

    async fn read_file(&self, file: &str) -> Result<Vec<RecordBatch>, TimeTravelError> {
        let err = |reason: String| TimeTravelError::File {
            table: self.location.to_string(),
            version: self.version,
            file: file.to_string(),
            reason,
        };
        let object = self
            .location
            .child(file)
            .map_err(|e| err(format!("not a valid path: {e}")))?;
        let bytes = match self.location.store().get(&object).await {
            Ok(get) => get.bytes().await,
            Err(e) => Err(e),
        }
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => err(
                "missing from storage (vacuumed or deleted): this version cannot be read from the table; a backup may hold it (`tidemark restore-backup`)".into(),
            ),
            e => err(e.to_string()),
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| err(format!("not readable Parquet: {e}")))?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| err(format!("not readable Parquet: {e}")))?;
            out.push(conform(&batch, &self.schema).map_err(err)?);
        }
        Ok(out)
    }
}

/// `batch` in `schema`: columns by name, cast to the schema's types, nulls where missing.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, field.data_type())
                .map_err(|e| format!("column {}: {e}", field.name())),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    // Nullability as the files have it: a file may hold a column the schema says is
    // non-null as nullable.
    let relaxed = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(relaxed, columns).map_err(|e| e.to_string())
}
