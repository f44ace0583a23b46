//! The [`Source`] trait: what the engine needs from anything it reads records from.

use std::time::Duration;

use crate::record::{Positions, SourceRecord};

/// A replayable, position-addressed source of records.
///
/// Positions are owned by Tidemark, not by the source: a source starts where it is told and
/// reports where it stands, so the Delta table (and later the checkpoint) is the only truth.
#[allow(async_fn_in_trait)]
pub trait Source {
    /// The error a source reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads up to `max_records`, waiting at most `max_wait` for the first and following ones.
    /// An empty batch means nothing arrived in time; it is not the end of the stream.
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<SourceRecord>, Self::Error>;

    /// The positions just after the last record returned by [`Source::next_batch`].
    fn positions(&self) -> &Positions;

    /// True when every partition has been read up to the end it had when the source started.
    fn caught_up(&self) -> bool;

    /// Partitions the source started reading since the last call (e.g. partitions added to a
    /// topic while running), each reported once, so the caller can track them (the dedup
    /// watermark). Their records appear in [`Source::positions`] as they are read.
    fn take_added_partitions(&mut self) -> Vec<(String, i32)> {
        Vec::new()
    }
}
