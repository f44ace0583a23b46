//! `tidemark history`: one line per version of a table, from its `_delta_log` commits: when,
//! which operation, which Tidemark pipeline and epoch (and failover generation, when the
//! commit records one), how many rows and files it added and how many files it removed.
//!
//! Also what time travel needs from the log: the version a `--timestamp` means
//! ([`version_at`]: the newest version committed at or before it, like Delta's
//! `TIMESTAMP AS OF`).

use serde::Serialize;

use crate::location::TableLocation;
use crate::log::{read_commit, Commit, LogError, LogListing};

/// One version of a table, as `tidemark history` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The version.
    pub version: u64,
    /// Commit time, ms since the epoch (commitInfo `timestamp`, else the commit file's
    /// modification time).
    pub timestamp_ms: i64,
    /// commitInfo `operation` (`WRITE`, `STREAMING UPDATE`, `RESTORE`, ...), if recorded.
    pub operation: Option<String>,
    /// The Tidemark pipeline that wrote the commit, if Tidemark did.
    pub pipeline: Option<String>,
    /// Its epoch (also the commit's txn version for that pipeline).
    pub epoch: Option<u64>,
    /// The writer's failover generation, when the commit records one
    /// (`tidemark.generation`).
    pub generation: Option<u64>,
    /// For a RESTORE commit (Tidemark's, Spark's, delta-rs'): the version the table was made
    /// equal to (`operationParameters.version`).
    pub restored_to: Option<u64>,
    /// Rows in the files the commit added (sum of their `numRecords`; `None` when an added
    /// file has no stats).
    pub rows_added: Option<u64>,
    /// `add` actions.
    pub files_added: u64,
    /// `remove` actions.
    pub files_removed: u64,
    /// Bytes of the added files.
    pub bytes_added: u64,
}

impl VersionInfo {
    /// Summarises one commit (`file_mtime_ms`: the commit file's modification time, used when
    /// the commitInfo has no timestamp).
    pub fn of(commit: &Commit, file_mtime_ms: i64) -> Self {
        let info = commit.commit_info();
        let tidemark = info.and_then(|i| i.tidemark.as_ref());
        let field = |k: &str| tidemark.and_then(|t| t.get(k));
        let mut rows = Some(0u64);
        let (mut files_added, mut bytes_added) = (0, 0);
        for add in commit.adds() {
            files_added += 1;
            bytes_added += add.size;
            rows = rows.zip(add.num_records).map(|(a, b)| a + b);
        }
        Self {
            version: commit.version,
            timestamp_ms: commit.timestamp_ms().unwrap_or(file_mtime_ms),
            operation: info.and_then(|i| i.operation.clone()),
            pipeline: field("pipeline_id")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            epoch: field("epoch").and_then(|v| v.as_u64()),
            generation: field("generation").and_then(|v| v.as_u64()),
            restored_to: info
                .filter(|i| i.operation.as_deref() == Some("RESTORE"))
                .and_then(|i| i.operation_parameters.as_ref()?.get("version"))
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())),
            rows_added: rows,
            files_added,
            files_removed: commit.removes().count() as u64,
            bytes_added,
        }
    }
}

/// The history of `location`: every version whose commit file is still in the log, newest
/// first, at most `limit` of them.
pub async fn history(
    location: &TableLocation,
    listing: &LogListing,
    limit: Option<usize>,
) -> Result<Vec<VersionInfo>, LogError> {
    let mut out = Vec::new();
    for (version, file) in listing.commits().rev() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let commit = read_commit(location, version)
            .await?
            .parse(listing.table())?;
        out.push(VersionInfo::of(&commit, file.last_modified_ms));
    }
    Ok(out)
}

/// Why a `--timestamp` names no version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no version of the table was committed at or before {timestamp_ms} ms ({asked}); the oldest version in the log is {oldest_version}, committed at {oldest_ms} ms")]
pub struct TooEarly {
    /// The time asked for, ms.
    pub timestamp_ms: i64,
    /// The time asked for, as RFC 3339.
    pub asked: String,
    /// The oldest version in the log.
    pub oldest_version: u64,
    /// Its commit time.
    pub oldest_ms: i64,
}

/// The newest version committed at or before `timestamp_ms` (commit times by version, any
/// order). As in Delta, commit times are first made to grow with versions (a commit whose
/// clock was behind its parent's counts as 1 ms after it), so a later time never means an
/// older version.
pub fn version_at(versions: &[(u64, i64)], timestamp_ms: i64) -> Result<Option<u64>, TooEarly> {
    let mut sorted = versions.to_vec();
    sorted.sort_unstable();
    let mut best = None;
    let mut previous: Option<i64> = None;
    for &(version, t) in &sorted {
        let t = previous.map_or(t, |p| t.max(p.saturating_add(1)));
        previous = Some(t);
        if t <= timestamp_ms {
            best = Some(version);
        }
    }
    match (best, sorted.first()) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(&(oldest_version, oldest_ms))) => Err(TooEarly {
            timestamp_ms,
            asked: chrono::DateTime::from_timestamp_millis(timestamp_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
            oldest_version,
            oldest_ms,
        }),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::parse_commit;

    #[test]
    fn a_tidemark_commit_is_summarised_with_its_pipeline_epoch_and_generation() {
        let lines = [
            r#"{"add":{"path":"a.parquet","size":10,"partitionValues":{},"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":3}"}}"#,
            r#"{"add":{"path":"b.parquet","size":5,"partitionValues":{},"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":4}"}}"#,
            r#"{"remove":{"path":"c.parquet","deletionTimestamp":1,"dataChange":true}}"#,
            r#"{"txn":{"appId":"p","version":7}}"#,
            r#"{"commitInfo":{"timestamp":1234,"operation":"STREAMING UPDATE","tidemark":{"pipeline_id":"p","epoch":7,"generation":2}}}"#,
        ];
        let commit = parse_commit("t", 9, lines.join("\n").as_bytes()).unwrap();
        let info = VersionInfo::of(&commit, 99);
        assert_eq!(
            info,
            VersionInfo {
                version: 9,
                timestamp_ms: 1234,
                operation: Some("STREAMING UPDATE".into()),
                pipeline: Some("p".into()),
                epoch: Some(7),
                generation: Some(2),
                restored_to: None,
                rows_added: Some(7),
                files_added: 2,
                files_removed: 1,
                bytes_added: 15,
            }
        );
    }

    #[test]
    fn a_foreign_commit_without_stats_or_timestamp_has_no_row_count() {
        let lines = [
            r#"{"add":{"path":"a.parquet","size":10,"partitionValues":{},"modificationTime":1,"dataChange":true}}"#,
        ];
        let commit = parse_commit("t", 0, lines.join("\n").as_bytes()).unwrap();
        let info = VersionInfo::of(&commit, 99);
        assert_eq!(info.timestamp_ms, 99);
        assert_eq!(info.rows_added, None);
        assert_eq!(info.pipeline, None);
        assert_eq!(info.generation, None);
    }

    #[test]
    fn a_timestamp_means_the_newest_version_committed_at_or_before_it() {
        let v = [(0, 100), (1, 200), (2, 150), (3, 300)];
        assert_eq!(version_at(&v, 100), Ok(Some(0)));
        // Version 2's clock was behind version 1's: it counts as 201.
        assert_eq!(version_at(&v, 199), Ok(Some(0)));
        assert_eq!(version_at(&v, 200), Ok(Some(1)));
        assert_eq!(version_at(&v, 250), Ok(Some(2)));
        assert_eq!(version_at(&v, 10_000), Ok(Some(3)));
        let err = version_at(&v, 99).unwrap_err();
        assert_eq!((err.oldest_version, err.oldest_ms), (0, 100));
        assert_eq!(version_at(&[], 5), Ok(None));
    }
}
