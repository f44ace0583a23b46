//! Replication lag, i.e. the recovery point objective of a replica: how many versions, bytes and
//! seconds of the source a regional failure would lose right now.
//!
//! [`replication_lag`] is a pure function of the source's log tail (the versions the replica
//! lacks, with their commit timestamps and sizes) and the replica's newest version, tested on
//! its own; [`measure_lag`] gathers those facts read-only from two tables (what `tidemark
//! status` and `tidemark replicate` show, and what a metrics exporter can scrape).
//!
//! Definitions (timestamps are the commits' `commitInfo.timestamp`, falling back to the commit
//! file's modification time):
//! - `versions_behind` = source newest - replica newest (all of the source's versions for an
//!   empty replica).
//! - `bytes_behind` = the data files those versions add plus their commit files.
//! - `seconds_behind` = timestamp(source newest) - timestamp(replica newest): the span of
//!   commits a failover now would lose (0 when caught up). For an empty replica, measured from
//!   the source's oldest commit.
//! - `oldest_unreplicated_age_s` = now - timestamp(the oldest version the replica lacks): how
//!   long the oldest unreplicated commit has been waiting.

use serde::Serialize;

use crate::location::TableLocation;
use crate::log::{read_commit, LogError, LogListing};

/// One source version as lag sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionFacts {
    /// The version.
    pub version: u64,
    /// Its commit timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// Bytes a replica must copy for it: its data files and its commit file.
    pub bytes: u64,
}

/// How far a replica is behind its source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReplicationLag {
    /// The source's newest version (`None`: no table).
    pub source_version: Option<u64>,
    /// The replica's newest version (`None`: empty).
    pub replica_version: Option<u64>,
    /// Versions the replica lacks.
    pub versions_behind: u64,
    /// Bytes those versions add (data files and commit files).
    pub bytes_behind: u64,
    /// Commit-time span the replica lacks, in seconds.
    pub seconds_behind: f64,
    /// How long the oldest version the replica lacks has existed, in seconds (0 when caught up).
    pub oldest_unreplicated_age_s: f64,
    /// False when `bytes_behind` counts only the newest versions (the tail was cut to bound the
    /// work of measuring).
    pub bytes_complete: bool,
}

impl ReplicationLag {
    /// True when the replica holds the source's newest version.
    pub fn caught_up(&self) -> bool {
        self.versions_behind == 0
    }
}

/// The lag of a replica at `replica_newest` behind a source whose versions after it are
/// `tail` (in any order; versions at or before `replica_newest` are ignored).
/// `replica_newest_ts_ms` is the replica's newest commit's timestamp; `source_oldest_ts_ms` the
/// source's oldest commit's (used for an empty replica); `now_ms` the wall clock.
/// `tail_complete` says whether `tail` holds every version after the replica's.
pub fn replication_lag(
    source_newest: Option<u64>,
    tail: &[VersionFacts],
    replica_newest: Option<u64>,
    replica_newest_ts_ms: Option<i64>,
    source_oldest_ts_ms: Option<i64>,
    now_ms: i64,
    tail_complete: bool,
) -> ReplicationLag {
    let versions_behind = match (source_newest, replica_newest) {
        (None, _) => 0,
        (Some(s), None) => s + 1,
        (Some(s), Some(r)) => s.saturating_sub(r),
    };
    let missing = tail
        .iter()
        .filter(|f| replica_newest.is_none_or(|r| f.version > r));
    let bytes_behind = missing.clone().map(|f| f.bytes).sum();
    let newest_ts = tail
        .iter()
        .filter(|f| Some(f.version) == source_newest)
        .map(|f| f.timestamp_ms)
        .next();
    let oldest_missing_ts = missing.min_by_key(|f| f.version).map(|f| f.timestamp_ms);
    let (seconds_behind, oldest_age) = if versions_behind == 0 {
        (0.0, 0.0)
    } else {
        let base = replica_newest_ts_ms.or(source_oldest_ts_ms);
        let span = match (newest_ts, base) {
            (Some(n), Some(b)) => (n - b).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        let age = oldest_missing_ts
            .map(|t| (now_ms - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        (span, age)
    };
    ReplicationLag {
        source_version: source_newest,
        replica_version: replica_newest,
        versions_behind,
        bytes_behind,
        seconds_behind,
        oldest_unreplicated_age_s: oldest_age,
        bytes_complete: tail_complete,
    }
}

/// At most this many of the source's newest versions are read to measure a lag.
pub const MAX_TAIL_VERSIONS: u64 = 1000;

/// The timestamp and byte cost of source version `version`.
pub async fn version_facts(
    location: &TableLocation,
    listing: &LogListing,
    version: u64,
) -> Result<VersionFacts, LogError> {
    let bytes = read_commit(location, version).await?;
    let commit = bytes.parse(&location.to_string())?;
    let file_ts = listing.commit(version).map(|f| f.last_modified_ms);
    Ok(VersionFacts {
        version,
        timestamp_ms: commit.timestamp_ms().or(file_ts).unwrap_or(0),
        bytes: bytes.bytes.len() as u64 + commit.files_added().map(|(_, s)| s).sum::<u64>(),
    })
}

/// Measures the lag of `replica` behind `source`, reading only (both logs' listings, the
/// source's commits after the replica's newest — at most [`MAX_TAIL_VERSIONS`] of them — and
/// the replica's newest commit).
pub async fn measure_lag(
    source: &TableLocation,
    replica: &TableLocation,
) -> Result<ReplicationLag, LogError> {
    let src = LogListing::list(source).await?;
    let dst = LogListing::list(replica).await?;
    let source_newest = src.newest_version();
    let replica_newest = dst.newest_version();
    let mut tail = Vec::new();
    let mut complete = true;
    if let Some(s) = source_newest {
        let first = replica_newest.map_or(0, |r| r + 1);
        let first_read = first.max(s.saturating_sub(MAX_TAIL_VERSIONS - 1));
        complete = first_read == first;
        for v in first_read..=s {
            if src.commit(v).is_some() {
                tail.push(version_facts(source, &src, v).await?);
            } else {
                complete = false;
            }
        }
    }
    let replica_ts = match replica_newest {
        Some(r) if dst.commit(r).is_some() => {
            Some(version_facts(replica, &dst, r).await?.timestamp_ms)
        }
        _ => None,
    };
    let source_oldest_ts = match src.oldest_commit() {
        Some(v) if replica_newest.is_none() => {
            Some(version_facts(source, &src, v).await?.timestamp_ms)
        }
        _ => None,
    };
    Ok(replication_lag(
        source_newest,
        &tail,
        replica_newest,
        replica_ts,
        source_oldest_ts,
        now_ms(),
        complete,
    ))
}

/// The wall clock in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(v: u64, ts: i64, bytes: u64) -> VersionFacts {
        VersionFacts {
            version: v,
            timestamp_ms: ts,
            bytes,
        }
    }

    #[test]
    fn a_caught_up_replica_has_no_lag() {
        let lag = replication_lag(Some(5), &[], Some(5), Some(1000), None, 99_000, true);
        assert!(lag.caught_up());
        assert_eq!(
            (lag.versions_behind, lag.bytes_behind, lag.seconds_behind),
            (0, 0, 0.0)
        );
        assert_eq!(lag.oldest_unreplicated_age_s, 0.0);
    }

    #[test]
    fn lag_counts_versions_bytes_and_commit_time_after_the_replica() {
        // Source at 7; replica at 4 (committed at t=10 s); 5, 6, 7 committed at 11, 12.5, 14 s.
        let tail = [
            facts(4, 10_000, 999), // the replica has it: ignored
            facts(5, 11_000, 100),
            facts(6, 12_500, 200),
            facts(7, 14_000, 300),
        ];
        let lag = replication_lag(Some(7), &tail, Some(4), Some(10_000), None, 20_000, true);
        assert_eq!(lag.versions_behind, 3);
        assert_eq!(lag.bytes_behind, 600);
        assert_eq!(lag.seconds_behind, 4.0);
        assert_eq!(lag.oldest_unreplicated_age_s, 9.0);
        assert!(lag.bytes_complete && !lag.caught_up());
    }

    #[test]
    fn an_empty_replica_lags_by_the_whole_table() {
        let tail = [facts(0, 1_000, 10), facts(1, 3_000, 20)];
        let lag = replication_lag(Some(1), &tail, None, None, Some(1_000), 4_000, true);
        assert_eq!((lag.versions_behind, lag.bytes_behind), (2, 30));
        assert_eq!(lag.seconds_behind, 2.0);
        assert_eq!(lag.oldest_unreplicated_age_s, 3.0);
    }

    #[test]
    fn no_source_table_means_no_lag_and_clock_skew_never_goes_negative() {
        let lag = replication_lag(None, &[], None, None, None, 0, true);
        assert_eq!(lag.versions_behind, 0);
        // A source commit stamped before the replica's newest (writers' clocks differ).
        let lag = replication_lag(
            Some(2),
            &[facts(2, 500, 1)],
            Some(1),
            Some(900),
            None,
            0,
            false,
        );
        assert_eq!(lag.seconds_behind, 0.0);
        assert_eq!(lag.oldest_unreplicated_age_s, 0.0);
        assert!(!lag.bytes_complete);
    }

    #[test]
    fn a_replica_ahead_of_its_source_is_not_behind() {
        let lag = replication_lag(Some(3), &[], Some(5), Some(1), None, 0, true);
        assert_eq!(lag.versions_behind, 0);
    }
}
