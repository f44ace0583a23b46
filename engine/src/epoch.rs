//! The epoch being read: its records' decoded rows, bad records and counts, and its positions.
//!
//! Records enter an epoch in WAL order, whether they come from the source or are replayed from
//! the WAL after a crash, and go through the same decoding: so a replayed epoch yields exactly
//! the rows and bad records it yielded the first time (decoding is a pure function of the
//! record). That determinism is what makes redo from the WAL safe.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tidemark_connectors::decode::{InvalidRecord, JsonDecoder};
use tidemark_connectors::{Positions, SourceRecord};

use crate::config::{CheckpointConfig, OnInvalidRecord};
use crate::pipeline::PipelineError;

/// An epoch that is still collecting records (or was just sealed and not yet committed).
#[derive(Debug)]
pub struct OpenEpoch {
    /// Its number.
    pub epoch: u64,
    /// Positions before its first record.
    pub start: Positions,
    /// Positions after its last record.
    pub end: Positions,
    /// Decoded rows, one batch per source batch.
    pub batches: Vec<RecordBatch>,
    /// Records that did not decode (kept only when `errors.on_invalid_record = "skip"`).
    pub invalid: Vec<InvalidRecord>,
    /// Records in the epoch.
    pub records: u64,
    /// Key and value bytes in the epoch.
    pub bytes: u64,
    /// When its first record arrived (the interval runs from there).
    pub first_record_at: Option<Instant>,
}

impl OpenEpoch {
    /// An empty epoch starting at `start`.
    pub fn new(epoch: u64, start: Positions) -> Self {
        Self {
            epoch,
            end: start.clone(),
            start,
            batches: Vec::new(),
            invalid: Vec::new(),
            records: 0,
            bytes: 0,
            first_record_at: None,
        }
    }

    /// Decodes `records` (already in the WAL) into the epoch and advances its end positions.
    /// A bad record is an error unless `on_invalid` is `Skip`.
    pub fn add(
        &mut self,
        records: &[SourceRecord],
        decoder: &JsonDecoder,
        on_invalid: OnInvalidRecord,
    ) -> Result<(), PipelineError> {
        if records.is_empty() {
            return Ok(());
        }
        self.first_record_at.get_or_insert_with(Instant::now);
        let decoded = decoder
            .decode(records)
            .map_err(|source| PipelineError::Decode {
                epoch: self.epoch as i64,
                source,
            })?;
        if let Some(first) = decoded.invalid.first() {
            if on_invalid == OnInvalidRecord::Fail {
                return Err(PipelineError::InvalidRecord {
                    record: first.clone(),
                    epoch: self.epoch as i64,
                });
            }
            for bad in &decoded.invalid {
                tracing::warn!(epoch = self.epoch, "skipping {bad}");
            }
        }
        for r in records {
            self.end.advance_past(r);
            self.bytes += r.key.as_ref().map_or(0, Vec::len) as u64
                + r.payload.as_ref().map_or(0, Vec::len) as u64;
        }
        self.records += records.len() as u64;
        self.batches.extend(decoded.batch);
        self.invalid.extend(decoded.invalid);
        Ok(())
    }

    /// Rows the epoch will write.
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// True when the epoch has records and one of the interval's limits is reached.
    pub fn is_due(&self, c: &CheckpointConfig) -> bool {
        self.records > 0
            && (self.records >= c.max_records as u64
                || self.bytes >= c.max_bytes
                || self.age() >= c.interval())
    }

    /// Time since the first record (zero before it).
    pub fn age(&self) -> Duration {
        self.first_record_at
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Time left before the interval ends (the whole interval before the first record).
    pub fn time_left(&self, c: &CheckpointConfig) -> Duration {
        c.interval().saturating_sub(self.age())
    }
}
