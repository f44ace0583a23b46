//! A table's log state at one version with the actions kept whole, as a RESTORE commit needs
//! them: the live files' `add` actions as written (stats, partition values, modification time),
//! the `metaData` action, the `txn` version of every application, and each Tidemark pipeline's
//! newest `tidemark` commitInfo object.
//!
//! Replayed like [`crate::live::live_files`]: every commit from version 0 when the log holds
//! them all, otherwise from the newest complete checkpoint at or before the version (its rows
//! turned back into actions with arrow's JSON writer), then the commits after it.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::live::LiveError;
use crate::location::TableLocation;
use crate::log::{read_commit, FilePath, LogError, LogFile, LogListing, ReplayFrom};

/// The log state at one version, actions kept as JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogState {
    /// The version.
    pub version: u64,
    /// Live files: decoded path -> the `add` action's body.
    pub adds: BTreeMap<String, Value>,
    /// The `metaData` action's body in effect.
    pub metadata: Option<Value>,
    /// `txn` versions by `appId`.
    pub txns: BTreeMap<String, i64>,
    /// Each Tidemark pipeline's newest `tidemark` commitInfo object, with its version.
    pub tidemark: BTreeMap<String, (u64, Value)>,
}

impl LogState {
    /// Folds one action of `version` into the state.
    pub fn apply(&mut self, version: u64, name: &str, body: &Value) -> Result<(), String> {
        let path = || -> Result<String, String> {
            let raw = body
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name} without a path"))?;
            Ok(FilePath::from_encoded(raw)?.decoded)
        };
        match name {
            "add" => {
                let mut body = body.clone();
                if let Value::Object(map) = &mut body {
                    // Checkpoint-only columns, never part of a commit's add action.
                    map.retain(|k, _| !k.ends_with("_parsed"));
                }
                self.adds.insert(path()?, body);
            }
            "remove" => {
                self.adds.remove(&path()?);
            }
            "metaData" => self.metadata = Some(body.clone()),
            "txn" => {
                let app = body.get("appId").and_then(Value::as_str);
                let v = body.get("version").and_then(Value::as_i64);
                if let (Some(app), Some(v)) = (app, v) {
                    self.txns.insert(app.to_string(), v);
                }
            }
            "commitInfo" => {
                let t = body.get(tidemark_connectors::delta::COMMIT_INFO_KEY);
                if let Some(p) = t.and_then(|t| t.get("pipeline_id")).and_then(Value::as_str) {
                    self.tidemark
                        .insert(p.to_string(), (version, t.cloned().unwrap_or_default()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The state of `location` at `version`.
    pub async fn load(
        location: &TableLocation,
        listing: &LogListing,
        version: u64,
    ) -> Result<Self, LiveError> {
        let table = location.to_string();
        let newest = listing.newest_version().ok_or_else(|| LiveError::NoTable {
            table: table.clone(),
        })?;
        if version > newest {
            return Err(LiveError::NoSuchVersion {
                table,
                version,
                newest,
            });
        }
        let mut state = LogState::default();
        let from = crate::live::replay_start(listing, &table, version)?;
        let first = match from {
            ReplayFrom::Commits => 0,
            ReplayFrom::Checkpoint(cp, parts) => {
                for part in parts {
                    for (name, body) in checkpoint_actions(location, part).await? {
                        state
                            .apply(cp, &name, &body)
                            .map_err(|reason| parse_err(location, &part.name, reason))?;
                    }
                }
                cp + 1
            }
        };
        for v in first..=version {
            let bytes = read_commit(location, v).await?;
            for (i, line) in bytes.bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let err = |reason: String| {
                    LiveError::Log(LogError::Parse {
                        table: table.clone(),
                        file: crate::log::commit_file_name(v),
                        line: i + 1,
                        reason,
                    })
                };
                let value: Value =
                    serde_json::from_slice(line).map_err(|e| err(format!("not JSON: {e}")))?;
                let Value::Object(map) = value else {
                    return Err(err("not a JSON object".into()));
                };
                for (name, body) in &map {
                    state.apply(v, name, body).map_err(err)?;
                }
            }
        }
        state.version = version;
        Ok(state)
    }
}

fn parse_err(location: &TableLocation, file: &str, reason: String) -> LiveError {
    LiveError::Log(LogError::Parse {
        table: location.to_string(),
        file: file.to_string(),
        line: 0,
        reason,
    })
}

/// The `add`, `txn` and `metaData` rows of one checkpoint part, as `(action, body)`.
async fn checkpoint_actions(
    location: &TableLocation,
    part: &LogFile,
) -> Result<Vec<(String, Value)>, LiveError> {
    let err = |reason: String| parse_err(location, &part.name, reason);
    if !part.name.ends_with(".parquet") {
        return Err(err("JSON (V2) checkpoints are not supported yet".into()));
    }
    let bytes = match location.store().get(&part.location).await {
        Ok(get) => get.bytes().await,
        Err(e) => Err(e),
    }
    .map_err(|source| {
        LiveError::Log(LogError::Read {
            table: location.to_string(),
            file: part.location.to_string(),
            source,
        })
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| err(format!("not a readable checkpoint: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(format!("not a readable checkpoint: {e}")))?;
        for name in ["add", "txn", "metaData"] {
            let Some(column) = batch.column_by_name(name) else {
                continue;
            };
            let one = RecordBatch::try_from_iter([(name, column.clone())])
                .map_err(|e| err(format!("column {name}: {e}")))?;
            let mut buf = Vec::new();
            {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
                writer
                    .write(&one)
                    .and_then(|()| writer.finish())
                    .map_err(|e| err(format!("column {name} as JSON: {e}")))?;
            }
            for line in buf.split(|b| *b == b'\n') {
                let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                if let Some(body) = map.get(name).filter(|b| b.is_object()) {
                    out.push((name.to_string(), body.clone()));
                }
            }
        }
    }
    Ok(out)
}
