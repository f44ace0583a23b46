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
        // Leftovers of an earlier checkpoint whose writer died go now (best effort: the next
        // start's sweep tries again).
        if let Err(e) = self.sweep_log_temporaries() {
            tracing::warn!(table = %self.uri, "cannot remove leftover temporary files from _delta_log (the next start tries again): {e}");
        }
        Ok(version)
    }

    /// Removes the hidden temporary files Tidemark's durable writes left in `_delta_log/`
    /// when their process died mid-write (a checkpoint, `_last_checkpoint` or a commit:
    /// `.<name>.tidemark-tmp-<pid>-<n>`, see [`tidemark_fs::temporary_name`]); readers ignore
    /// them, and nothing else removes them. Returns the names removed (local tables only;
    /// elsewhere none exist).
    ///
    /// Invariant: only files named by that pattern, whose writer process is gone — not this
    /// process, and no running process has its pid (so the file predates its writer's crash
    /// and nobody will finish it). A file of a live writer (another pipeline, `tidemark
    /// optimize`, a restore) is never touched, nor any other file.
    pub fn sweep_log_temporaries(&self) -> Result<Vec<String>, DeltaSinkError> {
        let Some(root) = &self.local_root else {
            return Ok(Vec::new());
        };
        let log_dir = root.join("_delta_log");
        let entries = match self.fs.read_dir(&log_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.file_err("list the log", "_delta_log")(e)),
        };
        let own = std::process::id();
        let mut removed = Vec::new();
        for path in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(tmp) = tidemark_fs::parse_temporary_name(name) else {
                continue;
            };
            if tmp.pid == own || process_running(tmp.pid) {
                continue;
            }
            let file = format!("_delta_log/{name}");
            match self.fs.remove_file(&path) {
                Ok(()) => removed.push(name.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.file_err("remove a leftover temporary file", &file)(e)),
            }
        }
        if !removed.is_empty() {
            self.fs
                .sync_dir(&log_dir)
                .map_err(self.file_err("fsync _delta_log", "_delta_log"))?;
            info!(table = %self.uri, files = removed.len(), first = %removed[0], "removed temporary files that crashed writes left in _delta_log");
        }
        Ok(removed)
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

/// True when a process with this pid runs on this host (`kill(pid, 0)`: it exists, even if
/// not ours to signal). A pid that does not fit a `pid_t` cannot run.
fn process_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
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
