//! Compaction (`tidemark optimize`, `[maintenance] compact_every`): small data files bin-packed
//! into files of about a target size, committed as ONE Delta commit of `remove` and `add`
//! actions with `dataChange = false` (readers of the change feed and streaming readers skip
//! it; the rows are the same).
//!
//! Beside a running pipeline: the commit is written put-if-absent at the version after the
//! snapshot it planned on. If another commit took that version (a Tidemark epoch), the
//! compaction re-reads the log and, as long as the files it removes are all still live (an
//! append never removes any), commits again at the next free version; it never makes a
//! pipeline's commit fail or retry more than a lost race of its own. Files it wrote for a
//! compaction that did not commit are deleted.
//!
//! The plan ([`plan_bins`]) is pure: only files smaller than the target are candidates;
//! first-fit decreasing into bins of at most the target size; bins of one file are dropped.
//! Unpartitioned tables only (Tidemark's); files with deletion vectors are left alone.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::{ObjectStoreExt, PutMode};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use tidemark_connectors::parquet_file;
use tidemark_connectors::table_store::{put_settled, ConditionalPut};
use tracing::{debug, info, warn};

use crate::lag::now_ms;
use crate::location::TableLocation;
use crate::log::{commit_file_name, LogError, LogListing};
use crate::snapshot::Snapshot;

/// Prefix of the files a compaction writes (never taken for a pipeline's epoch file).
pub const COMPACTED_PREFIX: &str = "compacted-";

/// How many times a compaction commit is tried after losing its version to another commit.
pub const MAX_ATTEMPTS: usize = 10;

/// What to compact.
#[derive(Debug, Clone, Copy)]
pub struct OptimizeOptions {
    /// Target size of a compacted file, bytes.
    pub target_bytes: u64,
    /// At most this many input bytes in one run (`None`: all); bounds an in-pipeline round.
    pub max_input_bytes: Option<u64>,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OptimizeReport {
    /// The version the compaction committed (`None`: nothing to do).
    pub version: Option<u64>,
    /// Live files before / after.
    pub files_before: u64,
    /// Live files after.
    pub files_after: u64,
    /// Live bytes before.
    pub bytes_before: u64,
    /// Live bytes after.
    pub bytes_after: u64,
    /// Files removed.
    pub removed: u64,
    /// Files added.
    pub added: u64,
    /// Commits lost to other writers and retried.
    pub conflicts: u64,
}

/// A compaction's errors.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A data file could not be read, written or parsed.
    #[error("optimize: {op} {file} of table {table}: {message}")]
    File {
        /// What was done.
        op: &'static str,
        /// The table.
        table: String,
        /// The file.
        file: String,
        /// Why it failed.
        message: String,
    },
    /// Every attempt lost its version to another writer.
    #[error("optimize: table {table}: {attempts} attempts lost their version to other commits; try again later")]
    TooManyConflicts {
        /// The table.
        table: String,
        /// Attempts made.
        attempts: usize,
    },
    /// No table there.
    #[error("optimize: {0} is not a Delta table")]
    NotATable(String),
}

/// The version a compaction's file was planned on, from its name (`None`: not a compaction's).
pub fn planned_on(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(COMPACTED_PREFIX)?.strip_prefix('v')?;
    rest.get(..12)?.parse().ok()
}

/// Bins of files to merge, each at most `target` bytes in total and of at least two files;
/// only files smaller than `target` are candidates. Deterministic: first-fit decreasing,
/// ties by path.
pub fn plan_bins(files: &[(String, u64)], target: u64) -> Vec<Vec<String>> {
    let mut small: Vec<&(String, u64)> = files.iter().filter(|(_, s)| *s < target).collect();
    small.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut bins: Vec<(u64, Vec<String>)> = Vec::new();
    for (path, size) in small {
        match bins.iter_mut().find(|(total, _)| total + size <= target) {
            Some((total, paths)) => {
                *total += size;
                paths.push(path.clone());
            }
            None => bins.push((*size, vec![path.clone()])),
        }
    }
    bins.into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(_, p)| p)
        .collect()
}

async fn newest_snapshot(location: &TableLocation) -> Result<Snapshot, OptimizeError> {
    // From the newest checkpoint on: a compaction round in the pipeline does not list the
    // whole history the log retention keeps.
    let listing = LogListing::list_newest(location).await?;
    let newest = listing
        .newest_version()
        .ok_or_else(|| OptimizeError::NotATable(location.to_string()))?;
    Ok(Snapshot::load(location, &listing, newest, true).await?)
}

/// Compacts `location`'s small files (see the module documentation).
pub async fn optimize(
    location: &TableLocation,
    options: OptimizeOptions,
) -> Result<OptimizeReport, OptimizeError> {
    let table = location.to_string();
    let snapshot = newest_snapshot(location).await?;
    let files: Vec<(String, u64)> = snapshot
        .files
        .values()
        .filter(|a| !a.has_deletion_vector && a.path.is_relative())
        .map(|a| (a.path.decoded.clone(), a.size))
        .collect();
    let mut report = OptimizeReport {
        files_before: snapshot.files.len() as u64,
        bytes_before: snapshot.files.values().map(|a| a.size).sum(),
        ..OptimizeReport::default()
    };
    let mut bins = plan_bins(&files, options.target_bytes);
    if let Some(max) = options.max_input_bytes {
        let size_of = |p: &String| snapshot.files.get(p).map_or(0, |a| a.size);
        let mut budget = max;
        bins.retain(|b| {
            let s: u64 = b.iter().map(size_of).sum();
            if s <= budget {
                budget -= s;
                true
            } else {
                false
            }
        });
    }
    if bins.is_empty() {
        report.files_after = report.files_before;
        report.bytes_after = report.bytes_before;
        debug!(table = %table, "optimize: nothing to compact");
        return Ok(report);
    }
    let tag = format!("{:x}", now_ms() ^ ((std::process::id() as i64) << 40));
    let mut adds = Vec::new();
    let mut written = Vec::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for (i, bin) in bins.iter().enumerate() {
        let name = format!(
            "{COMPACTED_PREFIX}v{:012}-{tag}-b{i:04}.snappy.parquet",
            snapshot.version
        );
        match merge_bin(location, bin, &name).await {
            Ok(add) => {
                written.push(name);
                adds.push(add);
                removed.extend(bin.iter().cloned());
            }
            Err(e) => {
                // A bin that cannot be merged (e.g. files of different schemas) stays as is.
                warn!(table = %table, files = bin.len(), "optimize: leaving a bin as it is: {e}");
            }
        }
    }
    if adds.is_empty() {
        report.files_after = report.files_before;
        report.bytes_after = report.bytes_before;
        return Ok(report);
    }
    let result = commit(location, snapshot, &removed, &adds, &mut report, options).await;
    if result.is_err() {
        // Only files no version references are deleted: if the table cannot be read now, the
        // written files stay (unreferenced files are vacuum's; a referenced one must never go).
        match newest_snapshot(location).await {
            Ok(now) => {
                for name in &written {
                    if now.files.contains_key(name) {
                        warn!(table = %table, file = %name, "optimize: a written file is referenced by the table; keeping it");
                        continue;
                    }
                    if let Ok(p) = location.child(name) {
                        let _ = location.store().delete(&p).await;
                    }
                }
            }
            Err(e) => {
                warn!(table = %table, files = written.len(), "optimize: cannot re-read the table after a failed commit; leaving the written files for vacuum: {e}")
            }
        }
    }
    // The table as this commit left it: the state it was written on, less what it removed,
    // plus what it added (no second read of the log).
    let won = result?;
    let size_of = |a: &serde_json::Value| a["add"]["size"].as_u64().unwrap_or(0);
    report.files_after = (won.files.len() - removed.len() + adds.len()) as u64;
    report.bytes_after = won.files.values().map(|a| a.size).sum::<u64>()
        - removed
            .iter()
            .filter_map(|p| won.files.get(p))
            .map(|a| a.size)
            .sum::<u64>()
        + adds.iter().map(size_of).sum::<u64>();
    report.removed = removed.len() as u64;
    report.added = adds.len() as u64;
    info!(table = %table, version = ?report.version, removed = report.removed, added = report.added, files_before = report.files_before, files_after = report.files_after, conflicts = report.conflicts, "optimize committed");
    Ok(report)
}

/// Reads `bin`'s files, writes them as one file `name` (durable), returns its `add` JSON.
async fn merge_bin(
    location: &TableLocation,
    bin: &[String],
    name: &str,
) -> Result<serde_json::Value, OptimizeError> {
    let table = location.to_string();
    let ferr = |op: &'static str, file: &str| {
        let (table, file) = (table.clone(), file.to_string());
        move |e: &dyn std::fmt::Display| OptimizeError::File {
            op,
            table,
            file,
            message: e.to_string(),
        }
    };
    let mut batches: Vec<RecordBatch> = Vec::new();
    for path in bin {
        let object = location.child(path).map_err(|e| ferr("locate", path)(&e))?;
        let bytes: Bytes = location
            .store()
            .get(&object)
            .await
            .map_err(|e| ferr("read", path)(&e))?
            .bytes()
            .await
            .map_err(|e| ferr("read", path)(&e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| ferr("open parquet", path)(&e))?;
        for batch in reader {
            batches.push(batch.map_err(|e| ferr("decode parquet", path)(&e))?);
        }
    }
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| ferr("read", &bin[0])(&"no rows"))?;
    let all = arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| ferr("concatenate", &bin[0])(&e))?;
    let bytes = parquet_file::encode(&all).map_err(|e| ferr("encode", name)(&e))?;
    let size = bytes.len();
    let object = location.child(name).map_err(|e| ferr("locate", name)(&e))?;
    let bytes = Bytes::from(bytes);
    match put_settled(location.store().as_ref(), &object, bytes, PutMode::Create).await {
        Ok(ConditionalPut::Written) => {}
        Ok(ConditionalPut::Refused) => {
            return Err(ferr("write", name)(&"a file of this name already exists"))
        }
        Err(e) => return Err(ferr("write", name)(&e)),
    }
    Ok(json!({"add": {
        "path": name,
        "partitionValues": {},
        "size": size,
        "modificationTime": now_ms(),
        "dataChange": false,
        "stats": parquet_file::stats(&all).to_string(),
    }}))
}

/// Commits the compaction at the next free version (see the module documentation).
///
/// The first try is on `planned` (the state the plan was made on); a lost race re-reads the
/// table. Returns the state the commit was written on.
async fn commit(
    location: &TableLocation,
    planned: Snapshot,
    removed: &BTreeSet<String>,
    adds: &[serde_json::Value],
    report: &mut OptimizeReport,
    options: OptimizeOptions,
) -> Result<Snapshot, OptimizeError> {
    let table = location.to_string();
    let mut planned = Some(planned);
    for attempt in 1..=MAX_ATTEMPTS {
        let snapshot = match planned.take() {
            Some(s) => s,
            None => newest_snapshot(location).await?,
        };
        let gone: Vec<&String> = removed
            .iter()
            .filter(|p| !snapshot.files.contains_key(*p))
            .collect();
        if !gone.is_empty() {
            // Another writer removed one of them (another compaction, a delete): this plan
            // is stale; give up (the files written are deleted by the caller).
            return Err(OptimizeError::File {
                op: "commit",
                table,
                file: gone[0].clone(),
                message: format!(
                    "{} of the files to compact were removed by another commit meanwhile",
                    gone.len()
                ),
            });
        }
        let version = snapshot.version + 1;
        let ts = now_ms();
        let mut lines = vec![json!({"commitInfo": {
            "timestamp": ts,
            "operation": "OPTIMIZE",
            "operationParameters": {"targetSize": options.target_bytes.to_string()},
            "readVersion": snapshot.version,
            "isBlindAppend": false,
            "engineInfo": "tidemark-optimize",
        }})];
        for p in removed {
            let size = snapshot.files.get(p).map_or(0, |a| a.size);
            let encoded = snapshot
                .files
                .get(p)
                .map_or_else(|| p.clone(), |a| a.path.encoded.clone());
            lines.push(json!({"remove": {
                "path": encoded,
                "deletionTimestamp": ts,
                "dataChange": false,
                "extendedFileMetadata": true,
                "partitionValues": {},
                "size": size,
            }}));
        }
        lines.extend(adds.iter().cloned());
        let mut body = String::new();
        for l in &lines {
            body.push_str(&l.to_string());
            body.push('\n');
        }
        let object = location.log_dir().join(commit_file_name(version).as_str());
        // Settled: a commit that landed but whose answer was lost counts as ours (its bytes name
        // this run's uniquely tagged files), never as a lost race.
        match put_settled(
            location.store().as_ref(),
            &object,
            body.into(),
            PutMode::Create,
        )
        .await
        {
            Ok(ConditionalPut::Written) => {
                report.version = Some(version);
                return Ok(snapshot);
            }
            Ok(ConditionalPut::Refused) => {
                report.conflicts += 1;
                debug!(table = %table, version, attempt, "optimize: another commit took the version; trying the next one");
            }
            Err(e) => {
                return Err(OptimizeError::File {
                    op: "write commit",
                    table,
                    file: format!("_delta_log/{}", commit_file_name(version)),
                    message: e.to_string(),
                })
            }
        }
    }
    Err(OptimizeError::TooManyConflicts {
        table,
        attempts: MAX_ATTEMPTS,
    })
}

/// Parses a size such as `128MiB`, `64MB`, `1GiB`, `512KiB` or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 128MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_compacted_file_names_its_planned_version() {
        assert_eq!(
            planned_on("compacted-v000000000042-1a2b-b0003.snappy.parquet"),
            Some(42)
        );
        assert_eq!(
            planned_on("tidemark-p-e000000000042-p0000.snappy.parquet"),
            None
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").unwrap_err().contains("parsecs"));
    }

    proptest! {
        /// Every bin fits the target and has two files or more; each file is in at most one
        /// bin and only small files are; no two bins could be merged into one that fits.
        #[test]
        fn bins_fit_and_hold_each_small_file_once(
            sizes in proptest::collection::vec(1u64..2000, 0..60),
            target in 100u64..3000,
        ) {
            let files: Vec<(String, u64)> = sizes.iter().enumerate().map(|(i, s)| (format!("f{i}"), *s)).collect();
            let bins = plan_bins(&files, target);
            let size = |p: &String| files.iter().find(|(q, _)| q == p).unwrap().1;
            let mut seen = BTreeSet::new();
            for b in &bins {
                prop_assert!(b.len() >= 2);
                prop_assert!(b.iter().map(size).sum::<u64>() <= target);
                for p in b {
                    prop_assert!(size(p) < target);
                    prop_assert!(seen.insert(p.clone()), "{} twice", p);
                }
            }
            // Two small files left out could not have shared a bin (first fit would have
            // put the later one with the earlier one).
            let left: Vec<u64> = files.iter().filter(|(p, s)| *s < target && !seen.contains(p)).map(|(_, s)| *s).collect();
            for (i, a) in left.iter().enumerate() {
                for b in &left[i + 1..] {
                    prop_assert!(a + b > target, "{} and {} fit together in {}", a, b, target);
                }
            }
            // Deterministic.
            prop_assert_eq!(plan_bins(&files, target), bins);
        }
    }
}
