//! An independent audit of a Delta table written by Tidemark.
//!
//! It replays `_delta_log/*.json` itself (add/remove/txn/commitInfo actions, in version order)
//! and reads the live Parquet files with the `parquet` crate, sharing no code with deltalake's
//! snapshot machinery. Tests and `tidemark demo` use it to check exactly-once: every Kafka
//! record in the table exactly once, or listed as skipped in a commitInfo.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::Value;
use tidemark_connectors::decode::{COL_OFFSET, COL_PARTITION, COL_TOPIC};
use tidemark_connectors::delta::{EpochCommitInfo, COMMIT_INFO_KEY};

pub mod store;

/// An audit that could not be done, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A log line is not the JSON it should be.
    #[error("{path} line {line}: {message}")]
    Log {
        /// The commit file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The table's object store failed (listing, reading) or could not be opened.
    #[error("cannot read {location}: {message}")]
    Store {
        /// The table or object.
        location: String,
        /// The store's error.
        message: String,
    },
    /// A Parquet file could not be read.
    #[error("cannot read parquet file {path}: {message}")]
    Parquet {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The table state rebuilt from the JSON commit files alone.
#[derive(Debug, Clone, Default)]
pub struct LogReplay {
    /// Newest version found.
    pub version: i64,
    /// Relative paths of live data files (added and not removed).
    pub live_files: BTreeSet<String>,
    /// Newest txn version per appId.
    pub txn: HashMap<String, i64>,
    /// Tidemark commitInfo entries, in version order, with their version: those of the
    /// table's current history only. A RESTORE commit (`operationParameters.version = N`)
    /// makes the history that of version N: epochs committed after N and before the restore
    /// were restored away and are left out (their skipped records no longer count), and the
    /// restore's own copy of N's progress is not an epoch.
    pub epochs: Vec<(i64, EpochCommitInfo)>,
}

/// Replays `<table>/_delta_log/*.json` from version 0.
pub fn replay_log(table_dir: &Path) -> Result<LogReplay, AuditError> {
    let log_dir = table_dir.join("_delta_log");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditError::Io { path, source }
    };
    let mut versions: Vec<(i64, PathBuf)> = std::fs::read_dir(&log_dir)
        .map_err(io(&log_dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            Some((commit_version(&name)?, e.path()))
        })
        .collect();
    versions.sort();
    let mut replayer = Replayer::default();
    for (version, path) in versions {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        replayer.commit(version, &path, &text)?;
    }
    Ok(replayer.finish())
}

/// The version of a commit file's name (`<20 digits>.json`), `None` for other files.
fn commit_version(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".json")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// The log replay, fed the commit files in version order (from a directory or a store).
#[derive(Default)]
struct Replayer {
    replay: LogReplay,
    /// The history as a tree: each version's parent (the previous version, or the version a
    /// RESTORE restored) and the epoch it committed, if any.
    parent: Vec<Option<usize>>,
    own: Vec<Option<EpochCommitInfo>>,
}

impl Replayer {
    /// Applies commit `version` (the file `path` holding `text`); versions must come 0, 1, 2...
    fn commit(&mut self, version: i64, path: &Path, text: &str) -> Result<(), AuditError> {
        let expected = self.parent.len();
        if version != expected as i64 {
            return Err(AuditError::Log {
                path: path.to_path_buf(),
                line: 0,
                message: format!("commit {expected} is missing before it (gap in the log)"),
            });
        }
        let replay = &mut self.replay;
        replay.version = version;
        let mut restored_to: Option<usize> = None;
        let mut epoch: Option<EpochCommitInfo> = None;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| AuditError::Log {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let action: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            if let Some(add) = action.get("add") {
                let p = add["path"]
                    .as_str()
                    .ok_or_else(|| bad("add without path".into()))?;
                replay.live_files.insert(p.to_string());
            } else if let Some(remove) = action.get("remove") {
                let p = remove["path"]
                    .as_str()
                    .ok_or_else(|| bad("remove without path".into()))?;
                replay.live_files.remove(p);
            } else if let Some(txn) = action.get("txn") {
                let app = txn["appId"]
                    .as_str()
                    .ok_or_else(|| bad("txn without appId".into()))?;
                let v = txn["version"]
                    .as_i64()
                    .ok_or_else(|| bad("txn without version".into()))?;
                replay.txn.insert(app.to_string(), v);
            } else if let Some(ci) = action.get("commitInfo") {
                if ci["operation"] == "RESTORE" {
                    let to = &ci["operationParameters"]["version"];
                    let to = to
                        .as_u64()
                        .or_else(|| to.as_str().and_then(|t| t.parse().ok()))
                        .filter(|to| *to < version as u64)
                        .ok_or_else(|| bad("RESTORE without an earlier version".into()))?;
                    restored_to = Some(to as usize);
                } else if let Some(t) = ci.get(COMMIT_INFO_KEY) {
                    let info: EpochCommitInfo = serde_json::from_value(t.clone())
                        .map_err(|e| bad(format!("bad tidemark commitInfo: {e}")))?;
                    epoch = Some(info);
                }
            }
        }
        self.parent.push(restored_to.or(expected.checked_sub(1)));
        self.own
            .push(if restored_to.is_some() { None } else { epoch });
        Ok(())
    }

    /// The replay, with the epochs of the current history in version order.
    fn finish(mut self) -> LogReplay {
        let mut at = self.own.len().checked_sub(1);
        while let Some(v) = at {
            if let Some(info) = self.own[v].take() {
                self.replay.epochs.push((v as i64, info));
            }
            at = self.parent[v];
        }
        self.replay.epochs.reverse();
        self.replay
    }
}

/// Column `name` of `batch` (read from `path`), or an error naming both.
fn column<'b>(
    path: &Path,
    batch: &'b arrow::array::RecordBatch,
    name: &str,
) -> Result<&'b arrow::array::ArrayRef, AuditError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| AuditError::Parquet {
            path: path.to_path_buf(),
            message: format!("column {name} missing"),
        })
}

/// Kafka coordinates of one row.
pub type Coordinates = (String, i32, i64);

/// The columns [`read_coordinates`] reads.
const COORDINATE_COLUMNS: [&str; 3] = [COL_TOPIC, COL_PARTITION, COL_OFFSET];

/// Appends the Kafka coordinates of `batch`'s rows (read from `path`) to `out`.
fn push_coordinates(
    out: &mut Vec<Coordinates>,
    path: &Path,
    batch: &RecordBatch,
) -> Result<(), AuditError> {
    let col = |name: &str| column(path, batch, name);
    let topics = col(COL_TOPIC)?.as_string::<i32>().clone();
    let partitions = col(COL_PARTITION)?.as_primitive::<Int32Type>().clone();
    let offsets = col(COL_OFFSET)?.as_primitive::<Int64Type>().clone();
    for i in 0..batch.num_rows() {
        out.push((
            topics.value(i).to_string(),
            partitions.value(i),
            offsets.value(i),
        ));
    }
    Ok(())
}

/// Reads `_kafka_topic`, `_kafka_partition`, `_kafka_offset` of every row of the live files.
pub fn read_coordinates(
    table_dir: &Path,
    files: &BTreeSet<String>,
) -> Result<Vec<Coordinates>, AuditError> {
    let mut out = Vec::new();
    for_each_batch(table_dir, files, &COORDINATE_COLUMNS, |path, batch| {
        push_coordinates(&mut out, path, batch)
    })?;
    Ok(out)
}

/// The dead-letter table next to `table_dir` (`<table>_dead_letters`), if it exists.
pub fn dead_letter_dir(table_dir: &Path) -> Option<std::path::PathBuf> {
    let name = format!("{}_dead_letters", table_dir.file_name()?.to_string_lossy());
    let dir = table_dir.with_file_name(name);
    dir.join("_delta_log").exists().then_some(dir)
}

/// The columns [`read_dead_letters`] reads.
const DEAD_LETTER_COLUMNS: [&str; 4] = ["topic", "partition", "offset", "reason"];

/// A dead letter: the record's coordinates and why it was not written.
pub type DeadLetter = (Coordinates, String);

/// Appends the dead letters of `batch` (read from `path`) to `out`.
fn push_dead_letters(
    out: &mut Vec<DeadLetter>,
    path: &Path,
    batch: &RecordBatch,
) -> Result<(), AuditError> {
    let col = |name: &str| column(path, batch, name);
    let topics = col("topic")?.as_string::<i32>().clone();
    let partitions = col("partition")?.as_primitive::<Int32Type>().clone();
    let offsets = col("offset")?.as_primitive::<Int64Type>().clone();
    let reasons = col("reason")?.as_string::<i32>().clone();
    for i in 0..batch.num_rows() {
        out.push((
            (
                topics.value(i).to_string(),
                partitions.value(i),
                offsets.value(i),
            ),
            reasons.value(i).to_string(),
        ));
    }
    Ok(())
}

/// Every dead letter of the table at `dir`: coordinates and reason, read from `_delta_log`
/// and Parquet like the main table.
pub fn read_dead_letters(dir: &Path) -> Result<Vec<DeadLetter>, AuditError> {
    let replay = replay_log(dir)?;
    let mut out = Vec::new();
    for_each_batch(
        dir,
        &replay.live_files,
        &DEAD_LETTER_COLUMNS,
        |path, batch| push_dead_letters(&mut out, path, batch),
    )?;
    Ok(out)
}

/// The key of every dead letter of the table at `dir` (nulls as `None`), read from
/// `_delta_log` and Parquet like the main table: to count each record's letters.
pub fn read_dead_letter_keys(dir: &Path) -> Result<Vec<Option<Vec<u8>>>, AuditError> {
    let replay = replay_log(dir)?;
    let mut out = Vec::new();
    for_each_batch(dir, &replay.live_files, &["key"], |path, batch| {
        let keys = column(path, batch, "key")?.as_binary::<i32>().clone();
        for i in 0..batch.num_rows() {
            out.push((!keys.is_null(i)).then(|| keys.value(i).to_vec()));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Reads one string column of every row of the live files (nulls as `None`).
pub fn read_string_column(
    table_dir: &Path,
    files: &BTreeSet<String>,
    column: &str,
) -> Result<Vec<Option<String>>, AuditError> {
    let mut out = Vec::new();
    for_each_batch(table_dir, files, &[column], |path, batch| {
        let array = batch
            .column_by_name(column)
            .ok_or_else(|| AuditError::Parquet {
                path: path.to_path_buf(),
                message: format!("column {column} missing"),
            })?;
        let strings = array.as_string::<i32>();
        for i in 0..strings.len() {
            out.push((!strings.is_null(i)).then(|| strings.value(i).to_string()));
        }
        Ok(())
    })?;
    Ok(out)
}

/// The projection reading only the leaf columns named `columns` (an error names one missing).
fn projection(
    schema: &parquet::schema::types::SchemaDescriptor,
    columns: &[&str],
) -> Result<ProjectionMask, String> {
    let indices: Vec<usize> = columns
        .iter()
        .map(|c| {
            schema
                .columns()
                .iter()
                .position(|d| d.path().string() == *c)
                .ok_or_else(|| format!("column {c} missing"))
        })
        .collect::<Result<_, _>>()?;
    Ok(ProjectionMask::leaves(schema, indices))
}

fn for_each_batch(
    table_dir: &Path,
    files: &BTreeSet<String>,
    columns: &[&str],
    mut f: impl FnMut(&Path, &RecordBatch) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    for rel in files {
        let path = table_dir.join(rel);
        let perr = |message: String| AuditError::Parquet {
            path: path.clone(),
            message,
        };
        let file = File::open(&path).map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| perr(e.to_string()))?;
        let mask = projection(builder.parquet_schema(), columns).map_err(perr)?;
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| perr(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| perr(e.to_string()))?;
            f(&path, &batch)?;
        }
    }
    Ok(())
}

/// The verdict of an exactly-once check against what the source held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExactlyOnceReport {
    /// Rows in the table.
    pub rows: u64,
    /// Records listed as skipped in commitInfo.
    pub skipped: u64,
    /// Rows in the dead-letter table next to the table.
    pub dead_letters: u64,
    /// Expected records (from the source's ends) found neither as a row nor as skipped.
    pub missing: Vec<Coordinates>,
    /// Records present more than once (as rows, or as a row and a skip), with their count.
    pub duplicated: Vec<(Coordinates, u64)>,
    /// Rows whose coordinates lie outside what the source held.
    pub unexpected: Vec<Coordinates>,
}

impl ExactlyOnceReport {
    /// True when nothing is missing, doubled or unexpected.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.unexpected.is_empty()
    }
}

/// Checks that every offset `0..end` of each `(topic, partition)` in `ends` is in the table
/// exactly once (as a row, listed once as skipped, or once in the dead-letter table next to it),
/// using only [`replay_log`] and Parquet. (With dedup, dropped duplicates and late records are
/// in neither: check those with the counts.)
pub fn check_exactly_once(
    table_dir: &Path,
    ends: &BTreeMap<(String, i32), i64>,
) -> Result<ExactlyOnceReport, AuditError> {
    let replay = replay_log(table_dir)?;
    let rows = read_coordinates(table_dir, &replay.live_files)?;
    let dead_letters = match dead_letter_dir(table_dir) {
        Some(dlq) => read_dead_letters(&dlq)?,
        None => Vec::new(),
    };
    Ok(tally(&replay, rows, &dead_letters, ends))
}

/// The exactly-once verdict from the table's rows, its dead letters and the skips its
/// commitInfos list, against the source's `ends` (pure).
fn tally(
    replay: &LogReplay,
    rows: Vec<Coordinates>,
    dead_letters: &[DeadLetter],
    ends: &BTreeMap<(String, i32), i64>,
) -> ExactlyOnceReport {
    let mut counts: HashMap<Coordinates, u64> = HashMap::new();
    let mut report = ExactlyOnceReport {
        rows: rows.len() as u64,
        ..Default::default()
    };
    for c in rows {
        *counts.entry(c).or_default() += 1;
    }
    for (c, _) in dead_letters {
        report.dead_letters += 1;
        *counts.entry(c.clone()).or_default() += 1;
    }
    for (_, info) in &replay.epochs {
        for s in &info.skipped {
            report.skipped += 1;
            *counts
                .entry((s.topic.clone(), s.partition, s.offset))
                .or_default() += 1;
        }
    }
    for ((topic, partition), end) in ends {
        for offset in 0..*end {
            let key = (topic.clone(), *partition, offset);
            match counts.remove(&key) {
                None => report.missing.push(key),
                Some(1) => {}
                Some(n) => report.duplicated.push((key, n)),
            }
        }
    }
    report.unexpected = counts.into_keys().collect();
    report.unexpected.sort();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(dir: &Path, commits: &[&str]) {
        let log = dir.join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for (v, body) in commits.iter().enumerate() {
            std::fs::write(log.join(format!("{v:020}.json")), body).unwrap();
        }
    }

    #[test]
    fn replay_applies_adds_removes_and_txns_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let info = r#"{"commitInfo":{"tidemark":{"pipeline_id":"p","epoch":EPOCH,"start_positions":{},"end_positions":{"t":{"0":1}},"records_read":1,"rows_written":1,"records_skipped":0}}}"#;
        write_log(
            dir.path(),
            &[
                r#"{"metaData":{}}"#,
                &format!("{{\"add\":{{\"path\":\"a.parquet\"}}}}\n{{\"txn\":{{\"appId\":\"p\",\"version\":1}}}}\n{}", info.replace("EPOCH", "1")),
                &format!("{{\"add\":{{\"path\":\"b.parquet\"}}}}\n{{\"remove\":{{\"path\":\"a.parquet\"}}}}\n{{\"txn\":{{\"appId\":\"p\",\"version\":2}}}}\n{}", info.replace("EPOCH", "2")),
            ],
        );
        let r = replay_log(dir.path()).unwrap();
        assert_eq!(r.version, 2);
        assert_eq!(
            r.live_files.into_iter().collect::<Vec<_>>(),
            vec!["b.parquet".to_string()]
        );
        assert_eq!(r.txn.get("p"), Some(&2));
        assert_eq!(
            r.epochs
                .iter()
                .map(|(v, e)| (*v, e.epoch.get()))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 2)]
        );
    }

    #[test]
    fn a_restore_leaves_the_restored_away_epochs_out_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let info = |e: u64| {
            format!(
                r#"{{"commitInfo":{{"tidemark":{{"pipeline_id":"p","epoch":{e},"start_positions":{{}},"end_positions":{{}},"records_read":1,"rows_written":1,"records_skipped":0}}}}}}"#
            )
        };
        let restore = |to: u64, e: u64| {
            format!(
                r#"{{"commitInfo":{{"operation":"RESTORE","operationParameters":{{"version":{to},"timestamp":null}},"tidemark":{{"pipeline_id":"p","epoch":{e},"start_positions":{{}},"end_positions":{{}},"records_read":0,"rows_written":0,"records_skipped":0}}}}}}"#
            )
        };
        let commits = [
            r#"{"metaData":{}}"#.to_string(),
            info(1), // v1
            info(2), // v2
            info(3), // v3: restored away by v4
            restore(2, 2),
            info(3), // v5: epoch 3 again
            info(4), // v6: restored away by v7, which goes back into the old history
            restore(3, 3),
            info(4), // v8
        ];
        let refs: Vec<&str> = commits.iter().map(String::as_str).collect();
        write_log(dir.path(), &refs);
        let r = replay_log(dir.path()).unwrap();
        assert_eq!(
            r.epochs
                .iter()
                .map(|(v, e)| (*v, e.epoch.get()))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 2), (3, 3), (8, 4)]
        );
    }

    #[test]
    fn a_gap_in_the_log_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &["{}", "{}", "{}"]);
        std::fs::remove_file(
            dir.path()
                .join("_delta_log")
                .join(format!("{:020}.json", 1)),
        )
        .unwrap();
        let err = replay_log(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("00000000000000000002.json") && err.contains("missing"),
            "{err}"
        );
    }
}
