//! Pipelined epochs: the next epoch is read, logged and decoded while one commits.
//!
//! [`ReadAhead`] is what the committer needs to go on reading during a commit (the source, the
//! next open epoch, the record processor) and how far it may read: the epoch's own record and
//! byte limits, and `checkpoint.max_buffered_bytes`, the cap on key + value bytes held by the
//! epoch read ahead. When a limit is reached, reading waits for the commit to end (librdkafka's
//! own bounded prefetch queue then fills and fetching stops), so memory stays bounded by about
//! `max_bytes` (the committing epoch) plus `max_buffered_bytes` (the next one).
//!
//! Invariants (kept by the committer and the run loop): at most one epoch commits at a time,
//! commits are in epoch order, and the next epoch is never sealed before the committing one is
//! checkpointed, so the WAL only ever holds, after the newest checkpoint, the frames of one
//! sealed epoch and then those of the next (see `restart_scan::EpochScan`).

use std::cell::Cell;

use tidemark_connectors::kafka::KafkaSource;

use crate::config::CheckpointConfig;
use crate::epoch::{OpenEpoch, RecordProcessor};

/// Most records taken from the source per WAL group commit, while reading ahead and between
/// commits alike.
pub const READ_BATCH: usize = 8192;

/// The read-ahead limits of one epoch, from `[checkpoint]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAheadLimits {
    /// `checkpoint.max_records`.
    pub max_records: u64,
    /// The smaller of `checkpoint.max_bytes` and `checkpoint.max_buffered_bytes`.
    pub max_bytes: u64,
}

impl ReadAheadLimits {
    /// The limits `[checkpoint]` sets.
    pub fn of(c: &CheckpointConfig) -> Self {
        Self {
            max_records: c.max_records as u64,
            max_bytes: c.max_bytes.min(c.max_buffered_bytes),
        }
    }

    /// How many records may be read next into an epoch holding `records` records of `bytes`
    /// key + value bytes (0: reading waits).
    pub fn wanted(&self, records: u64, bytes: u64) -> usize {
        if records >= self.max_records || bytes >= self.max_bytes {
            return 0;
        }
        (self.max_records - records).min(READ_BATCH as u64) as usize
    }
}

/// Reading the next epoch during a commit ([`crate::committer::Committer::commit_sealed`]).
pub struct ReadAhead<'a> {
    /// The source, read from where the committing epoch ended.
    pub source: &'a mut KafkaSource,
    /// The next epoch (open, not sealed).
    pub open: &'a mut OpenEpoch,
    /// How its records become rows.
    pub processor: &'a RecordProcessor,
    /// How far it may be read during the commit.
    pub limits: ReadAheadLimits,
}

impl ReadAhead<'_> {
    /// How many records may be read next (0: reading waits).
    pub fn wanted(&self) -> usize {
        self.limits.wanted(self.open.records, self.open.bytes)
    }
}

/// The environment variable that, in test builds (`crash-points`), makes each commit wait for
/// the first batch of the next epoch to be logged (or for reading to wait at its cap, for the
/// source to be caught up, or 30 s)
/// before writing anything: crash tests then find the next epoch's frames in the WAL at every
/// step of the committing epoch, deterministically.
pub const READ_AHEAD_FIRST_ENV: &str = "TIDEMARK_TEST_READ_AHEAD_FIRST";

/// How long [`test_schedule_wait`] waits at most. Generous: CI runs ten debug-build tests at
/// once on two cores, and a wait of 5 s once ran out there before the next epoch's first batch
/// was logged (a crash test then found no frame of it after the seal). The wait ends sooner
/// whenever there is nothing to wait for (reading at its cap, or the source caught up).
#[cfg(feature = "crash-points")]
const TEST_SCHEDULE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// See [`READ_AHEAD_FIRST_ENV`]; returns at once in other builds or when it is not set.
pub async fn test_schedule_wait(logged: &Cell<bool>) {
    #[cfg(feature = "crash-points")]
    if std::env::var_os(READ_AHEAD_FIRST_ENV).is_some() {
        let started = std::time::Instant::now();
        while !logged.get() && started.elapsed() < TEST_SCHEDULE_WAIT_MAX {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        if !logged.get() {
            tracing::warn!(
                waited_ms = started.elapsed().as_millis() as u64,
                "{READ_AHEAD_FIRST_ENV}: nothing of the next epoch logged; the commit goes on"
            );
        }
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = logged;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{ReadAheadLimits, READ_BATCH};
    use crate::config::CheckpointConfig;

    #[test]
    fn the_cap_is_the_smaller_of_the_epoch_and_buffer_limits() {
        let c = CheckpointConfig {
            max_bytes: 100,
            max_buffered_bytes: 40,
            ..CheckpointConfig::default()
        };
        assert_eq!(ReadAheadLimits::of(&c).max_bytes, 40);
        let c = CheckpointConfig { max_bytes: 10, ..c };
        assert_eq!(ReadAheadLimits::of(&c).max_bytes, 10);
    }

    proptest! {
        /// Reading waits exactly when a limit is reached, and never asks for more records than
        /// the epoch has room for, nor more than a batch.
        #[test]
        fn reading_waits_at_the_limits(
            max_records in 1u64..100_000, max_bytes in 1u64..1 << 30,
            records in 0u64..200_000, bytes in 0u64..1 << 31,
        ) {
            let l = ReadAheadLimits { max_records, max_bytes };
            let want = l.wanted(records, bytes) as u64;
            prop_assert_eq!(want == 0, records >= max_records || bytes >= max_bytes);
            prop_assert!(records + want <= max_records.max(records));
            prop_assert!(want <= READ_BATCH as u64);
        }
    }
}
