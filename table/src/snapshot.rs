//! The live files of a table at a version: a checkpoint's `add` rows (if the log starts at one)
//! and every later commit's `add`/`remove` actions folded in order ([`Snapshot`]). Replication
//! uses it for a full copy (the files a checkpoint's snapshot needs); verification and backups
//! use it for the files a version references.
//!
//! Checkpoint Parquet files are read for their `add` and `remove` columns only (Delta protocol,
//! "Checkpoint Schema"): `add.path`, `add.size`, `add.stats`, `add.dataChange`,
//! `add.deletionVector`; `remove.path`, `remove.size`. V2 checkpoints that keep their actions in
//! sidecar files are refused with an error naming the file.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::{DataType, Int64Type};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::location::TableLocation;
use crate::log::{
    read_commit, Action, AddFile, Commit, FilePath, LogError, LogFile, LogListing, RemoveFile,
};

/// The live data files of a table at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The version.
    pub version: u64,
    /// Live files by decoded path.
    pub files: BTreeMap<String, AddFile>,
}

impl Snapshot {
    /// Applies commit `commit` (its removes, then its adds, as Delta readers reconcile).
    pub fn apply(&mut self, commit: &Commit) {
        for action in &commit.actions {
            if let Action::Remove(r) = action {
                self.files.remove(&r.path.decoded);
            }
        }
        for action in &commit.actions {
            if let Action::Add(a) = action {
                self.files.insert(a.path.decoded.clone(), a.clone());
            }
        }
        self.version = commit.version;
    }

    /// The snapshot of `location` at `version`: from the newest complete checkpoint at or
    /// before it when the commits before that are not all present (or when `prefer_checkpoint`),
    /// otherwise by replaying every commit from 0; then the commits up to `version`.
    pub async fn load(
        location: &TableLocation,
        listing: &LogListing,
        version: u64,
        prefer_checkpoint: bool,
    ) -> Result<Self, LogError> {
        let from_zero = listing.oldest_commit() == Some(0)
            && listing.commits().take_while(|(v, _)| *v <= version).count() as u64 == version + 1;
        let checkpoint = listing.checkpoint_at_or_before(version);
        let mut snapshot = match checkpoint {
            Some((v, files)) if prefer_checkpoint || !from_zero => {
                let mut s = read_checkpoint(location, v, files).await?;
                s.version = v;
                s
            }
            _ if from_zero => Snapshot::default(),
            _ => {
                return Err(LogError::MissingVersion {
                    table: location.to_string(),
                    version: listing.oldest_commit().unwrap_or(0).saturating_sub(1),
                    file: "a checkpoint or the commits before the oldest one".into(),
                })
            }
        };
        let start = if checkpoint.is_some() && (prefer_checkpoint || !from_zero) {
            snapshot.version + 1
        } else {
            0
        };
        for v in start..=version {
            let commit = read_commit(location, v)
                .await?
                .parse(&location.to_string())?;
            snapshot.apply(&commit);
        }
        snapshot.version = version;
        Ok(snapshot)
    }
}

/// The live files a (complete) checkpoint of `version` holds.
pub async fn read_checkpoint(
    location: &TableLocation,
    version: u64,
    files: &[LogFile],
) -> Result<Snapshot, LogError> {
    let mut snapshot = Snapshot {
        version,
        files: BTreeMap::new(),
    };
    for file in files {
        let parse_err = |reason: String| LogError::Parse {
            table: location.to_string(),
            file: file.name.clone(),
            line: 0,
            reason,
        };
        if !file.name.ends_with(".parquet") {
            return Err(parse_err(
                "JSON (V2) checkpoints are not supported yet".into(),
            ));
        }
        let bytes = match location.store().get(&file.location).await {
            Ok(get) => get.bytes().await,
            Err(e) => Err(e),
        }
        .map_err(|source| LogError::Read {
            table: location.to_string(),
            file: file.location.to_string(),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| parse_err(format!("not a readable checkpoint: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| parse_err(format!("not a readable checkpoint: {e}")))?;
            if batch
                .column_by_name("sidecar")
                .is_some_and(|c| c.null_count() < c.len())
            {
                return Err(parse_err(
                    "the checkpoint keeps its actions in sidecar files (not supported yet)".into(),
                ));
            }
            if let Some(removes) = batch.column_by_name("remove") {
                for r in remove_rows(removes, "remove").map_err(parse_err)? {
                    snapshot.files.remove(&r.path.decoded);
                }
            }
            if let Some(adds) = batch.column_by_name("add") {
                for a in add_rows(adds).map_err(parse_err)? {
                    snapshot.files.insert(a.path.decoded.clone(), a);
                }
            }
        }
    }
    Ok(snapshot)
}

fn strings(array: &StructArray, field: &str) -> Result<Option<Vec<Option<String>>>, String> {
    let Some(column) = array.column_by_name(field) else {
        return Ok(None);
    };
    let utf8 = arrow::compute::cast(column, &DataType::Utf8)
        .map_err(|e| format!("column {field}: {e}"))?;
    let s = utf8.as_string::<i32>();
    Ok(Some(
        (0..s.len())
            .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
            .collect(),
    ))
}

fn longs(array: &StructArray, field: &str) -> Result<Option<Vec<Option<i64>>>, String> {
    let Some(column) = array.column_by_name(field) else {
        return Ok(None);
    };
    let c = arrow::compute::cast(column, &DataType::Int64)
        .map_err(|e| format!("column {field}: {e}"))?;
    let c = c.as_primitive::<Int64Type>();
    Ok(Some(
        (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i)))
            .collect(),
    ))
}

fn as_struct<'a>(column: &'a dyn Array, name: &str) -> Result<&'a StructArray, String> {
    column
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| format!("column {name} is not a struct"))
}

fn remove_rows(column: &dyn Array, name: &str) -> Result<Vec<RemoveFile>, String> {
    let s = as_struct(column, name)?;
    let paths = strings(s, "path")?.ok_or("remove without a path column")?;
    let sizes = longs(s, "size")?;
    let mut out = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        if !s.is_valid(i) {
            continue;
        }
        let path = path.ok_or("remove row without a path")?;
        out.push(RemoveFile {
            path: FilePath::from_encoded(&path)?,
            size: sizes
                .as_ref()
                .and_then(|v| v[i])
                .and_then(|n| u64::try_from(n).ok()),
        });
    }
    Ok(out)
}

fn add_rows(column: &dyn Array) -> Result<Vec<AddFile>, String> {
    let s = as_struct(column, "add")?;
    let paths = strings(s, "path")?.ok_or("add without a path column")?;
    let sizes = longs(s, "size")?.ok_or("add without a size column")?;
    let stats = strings(s, "stats")?;
    let data_change = s
        .column_by_name("dataChange")
        .and_then(|c| c.as_boolean_opt().cloned());
    let dv = s.column_by_name("deletionVector");
    let mut out = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        if !s.is_valid(i) {
            continue;
        }
        let path = path.ok_or("add row without a path")?;
        let size = sizes[i]
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| format!("add {path}: no valid size"))?;
        let num_records = stats
            .as_ref()
            .and_then(|v| v[i].as_deref())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v.get("numRecords").and_then(serde_json::Value::as_u64));
        out.push(AddFile {
            path: FilePath::from_encoded(&path)?,
            size,
            num_records,
            data_change: data_change
                .as_ref()
                .is_none_or(|b| !b.is_valid(i) || b.value(i)),
            has_deletion_vector: dv.is_some_and(|d| d.is_valid(i)),
        });
    }
    Ok(out)
}
