//! Delta log maintenance of a table the sink writes: a Delta checkpoint every N commits and the
//! cleanup of expired log files (`delta.logRetentionDuration`).
//!
//! Why Tidemark does it and not deltalake's post-commit hook: the hook writes a checkpoint only
//! at versions `v` with `(v + 1) % checkpointInterval == 0`, and a failed one surfaces as an
//! error *after* the commit landed (the sink then counts the commit as landed and goes on), so
//! a failed checkpoint was skipped silently until 100 commits later; and the hook's log cleanup
//! lists all of `_delta_log/` after every commit, a cost that grows with the log. The sink's
//! commits turn both hooks off ([`super::DeltaSink`]'s `try_commit`); the engine asks
//! [`CheckpointSchedule`] after each commit and calls [`super::DeltaSink::write_log_checkpoint`]
//! and [`super::DeltaSink::cleanup_expired_log`].
//!
//! Durability: the checkpoint Parquet file and `_last_checkpoint` are written by deltalake's
//! checkpoint writer through the table's object store, which for local tables is the
//! [`crate::durable_store::DurableLocalStore`]: each file is written under a hidden temporary
//! name, fsynced, renamed into place, and `_delta_log/` fsynced. A crash at any point leaves the
//! table readable: at worst a hidden temporary file, or a checkpoint file that
//! `_last_checkpoint` does not name yet (readers list the log and find it; the next due
//! checkpoint is written again either way).

use deltalake::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use deltalake::table::config::TablePropertiesExt as _;
use object_store::ObjectStoreExt;
use tracing::info;

use super::{sink_err, DeltaSink, DeltaSinkError};

/// When the next Delta checkpoint is due: every `every` commits after the newest checkpoint
/// (with none yet, at the version Delta itself would pick: `every - 1`).
///
/// Invariant (what the engine relies on): a checkpoint that failed stays due — only
/// [`CheckpointSchedule::written`] moves the schedule on — so the next commit tries again;
/// a due checkpoint is never skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSchedule {
    every: u64,
    newest: Option<u64>,
}

impl CheckpointSchedule {
    /// A schedule writing a checkpoint every `every` commits (0: never), the newest existing
    /// checkpoint being at `newest` (from `_last_checkpoint`, see
    /// [`DeltaSink::newest_checkpoint_hint`]).
    pub fn new(every: u64, newest: Option<u64>) -> Self {
        Self { every, newest }
    }

    /// True when a checkpoint is due at table version `version`.
    pub fn due(&self, version: u64) -> bool {
        if self.every == 0 {
            return false;
        }
        match self.newest {
            None => version + 1 >= self.every,
            Some(c) => version >= c.saturating_add(self.every),
        }
    }

    /// Records a checkpoint written at `version` (a newer one than recorded moves it on).
    pub fn written(&mut self, version: u64) {
        self.newest = Some(self.newest.map_or(version, |c| c.max(version)));
    }

    /// The newest checkpoint version known.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// Commits between two checkpoints (0: off).
    pub fn every(&self) -> u64 {
        self.every
    }
}

impl DeltaSink {
    /// The version `_delta_log/_last_checkpoint` names (`None`: no such file, or one that does
    /// not parse — readers then list the log, and so does the schedule's first checkpoint).
    pub async fn newest_checkpoint_hint(&self) -> Result<Option<u64>, DeltaSinkError> {
        let store = self.table.object_store();
        let path = deltalake::Path::from("_delta_log/_last_checkpoint");
        let bytes = match store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(self.file_err("read _last_checkpoint", "_delta_log/_last_checkpoint"))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(self
                    .file_err("read _last_checkpoint", "_delta_log/_last_checkpoint")(
                    e,
                ))
            }
        };
        Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("version")?.as_u64()))
    }

    /// Writes a Delta checkpoint of the table's newest version (re-read first) and returns that
    /// version. Durable when it returns (see the module documentation).
    pub async fn write_log_checkpoint(&mut self) -> Result<u64, DeltaSinkError> {
        self.refresh().await?;
        let version = self.table.version().ok_or_else(|| DeltaSinkError {
            op: "write delta checkpoint",
            table: self.uri.clone(),
            file: None,
            source: "the table has no version yet".into(),
        })?;
        let file = format!("_delta_log/{version:020}.checkpoint.parquet");
        create_checkpoint(&self.table, None)
            .await
            .map_err(self.file_err("write delta checkpoint", &file))?;
        // The caller logs it (with its duration, and earlier failures).
        tracing::debug!(table = %self.uri, version, "delta checkpoint written");
        Ok(version)
    }

    /// Deletes `_delta_log` files (commits, checkpoints) older than the table's
    /// `delta.logRetentionDuration` (30 days by default) and strictly before the newest
    /// checkpoint at or below `keep_from` (so every version from `keep_from` on stays
    /// readable; `None`: the table's newest version). Deltalake's rule: nothing is deleted
    /// without a checkpoint to start from. Returns how many files went.
    pub async fn cleanup_expired_log(
        &self,
        keep_from: Option<u64>,
    ) -> Result<usize, DeltaSinkError> {
        let snapshot = self.table.snapshot().map_err(self.err("snapshot"))?;
        let newest = snapshot.version();
        let retention = snapshot.table_config().log_retention_duration();
        if !snapshot.table_config().enable_expired_log_cleanup() {
            return Ok(0);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let cutoff = now_ms - retention.as_millis() as i64;
        let keep = keep_from.map_or(newest, |k| k.min(newest));
        let deleted = cleanup_expired_logs_for(keep, self.table.log_store().as_ref(), cutoff, None)
            .await
            .map_err(sink_err("clean up expired log files", &self.uri))?;
        if deleted > 0 {
            info!(table = %self.uri, deleted, keep_from = keep, retention_s = retention.as_secs(), "expired delta log files deleted");
        } else {
            info!(table = %self.uri, keep_from = keep, retention_s = retention.as_secs(), "no expired delta log files to delete");
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::CheckpointSchedule;
    use proptest::prelude::*;

    #[test]
    fn the_first_checkpoint_is_where_delta_puts_it_then_every_n() {
        let mut s = CheckpointSchedule::new(100, None);
        assert!(!s.due(98));
        assert!(s.due(99));
        s.written(99);
        assert!(!s.due(198));
        assert!(s.due(199));
        assert!(!CheckpointSchedule::new(0, None).due(1_000_000));
        assert!(CheckpointSchedule::new(1, None).due(0));
    }

    proptest! {
        /// Over any run of commits where each due checkpoint may fail: a failed checkpoint is
        /// due again at the very next commit (never skipped), and once one is written no other
        /// is due for `every - 1` commits; the log never goes `every + failures in a row`
        /// commits past the newest checkpoint.
        #[test]
        fn a_failed_checkpoint_is_retried_at_the_next_commit(
            every in 1u64..20,
            outcomes in proptest::collection::vec(any::<bool>(), 1..300),
        ) {
            let mut s = CheckpointSchedule::new(every, None);
            let mut failed_at: Option<u64> = None;
            let mut failures_in_a_row = 0u64;
            for (v, ok) in outcomes.iter().enumerate() {
                let v = v as u64;
                if failed_at.is_some() {
                    prop_assert!(s.due(v), "a failed checkpoint at {:?} is not due at {v}", failed_at);
                }
                if s.due(v) {
                    if *ok {
                        s.written(v);
                        failed_at = None;
                        failures_in_a_row = 0;
                        for later in v + 1..v + every {
                            prop_assert!(!s.due(later));
                        }
                    } else {
                        failed_at = Some(v);
                        failures_in_a_row += 1;
                    }
                }
                let since = s.newest().map_or(v + 1, |c| v - c);
                prop_assert!(since <= every + failures_in_a_row);
            }
        }
    }
}
