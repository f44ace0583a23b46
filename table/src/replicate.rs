//! Table replication in log order: a replica that is, at every moment, a readable version of
//! its source, byte for byte the source's log.
//!
//! One [`Replicator::round`] brings the replica up to the source's newest version:
//!
//! 1. Both logs are listed; the replica's newest commit is compared with the source's commit of
//!    the same version (a replica that diverged is refused).
//! 2. [`plan`] (pure, tested on its own) decides where to start: nothing to do, the versions
//!    after the replica's newest ([`Plan::Incremental`]), or — for an empty replica of a source
//!    whose log starts at a checkpoint, or with `full` when the source's log no longer holds
//!    the versions the replica needs — the source's newest usable checkpoint
//!    ([`Plan::FromCheckpoint`]).
//! 3. For a checkpoint start: every live file of the checkpoint's snapshot, then the checkpoint
//!    file(s), then its commit file if the source still has it.
//! 4. For each version in order: every file it adds (`add` and `cdc` actions; a file already at
//!    the destination with the right size and SHA-256 is kept, so a restart after a SIGKILL
//!    resumes), then the commit file itself (put-if-absent: an existing different commit is
//!    never replaced), then its `.crc` file if any, then a checkpoint of that version if the
//!    source has a complete one.
//! 5. Checkpoints the source wrote since (for versions the replica holds) are copied, then
//!    `_last_checkpoint` once the replica holds the checkpoint it names.
//!
//! Between two local tables the data files take a fast path ([`crate::local_copy`]: one
//! reused buffer, read back before being placed) and are placed without their directory
//! fsync; the directories are fsynced once per commit, right before it is written, for all the
//! files placed since ([`tidemark_fs::PendingDirSyncs`]; tested against power cuts in
//! `replicate_power_cut_tests.rs`). Other stores write each file durably on its own.
//!
//! Invariants: a commit file is written only after every file it refers to is durable (its
//! content fsynced and its directory entry fsynced) and verified, so the replica never holds a
//! version whose files are not all there; a checkpoint
//! and `_last_checkpoint` are written only for versions the replica holds; every file is
//! verified (size and SHA-256 read back) before the next step. A crash between any two writes
//! leaves the replica at a consistent version plus, at most, data files of the next version that
//! no commit refers to yet (and hidden temporary files of the store, swept at the next start);
//! the restart copies on from there.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;
use tidemark_fs::PendingDirSyncs;

use crate::copy::{
    copy_verified, run_until_first_error, write_verified, CopyError, CopyOptions, CopyOutcome,
    Verify, WriteMode,
};
use crate::fault;
use crate::lag::{measure_lag, ReplicationLag};
use crate::local_copy::{copy_local, LocalCopy};
use crate::location::TableLocation;
use crate::log::{commit_file_name, read_commit, Commit, CommitBytes, LogError, LogListing};
use crate::snapshot::read_checkpoint;

/// The facts [`plan`] decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanFacts {
    /// Commit versions present in the source's log.
    pub source_commits: BTreeSet<u64>,
    /// Versions of the source's complete checkpoints.
    pub source_checkpoints: BTreeSet<u64>,
    /// The replica's newest version (`None`: empty).
    pub replica_newest: Option<u64>,
    /// Whether the replica's newest commit is byte-for-byte the source's commit of that
    /// version (`None`: not comparable — the source no longer has it, or the replica has no
    /// commit file for its newest version).
    pub newest_matches: Option<bool>,
    /// Start from the newest checkpoint when the incremental path is impossible (or the replica
    /// is empty).
    pub full: bool,
}

/// Where a round starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Plan {
    /// The replica holds the source's newest version.
    UpToDate {
        /// That version.
        version: u64,
    },
    /// Copy versions `from..=to`.
    Incremental {
        /// First version to copy.
        from: u64,
        /// Last version to copy.
        to: u64,
    },
    /// Copy the snapshot of checkpoint `checkpoint`, then versions `checkpoint+1..=to`.
    FromCheckpoint {
        /// The checkpoint's version.
        checkpoint: u64,
        /// Last version to copy.
        to: u64,
    },
}

/// Why a round refuses to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The source holds no table.
    SourceEmpty,
    /// The replica's version `version` is not the source's version `version`.
    Diverged {
        /// The version that differs.
        version: u64,
    },
    /// The replica is ahead of its source: another table, or a source restored to an older
    /// state.
    ReplicaAhead {
        /// The replica's newest version.
        replica: u64,
        /// The source's newest version.
        source: u64,
    },
    /// The source's log no longer holds the versions the replica needs.
    LogCleanedUp {
        /// The first version the replica needs.
        needed: u64,
        /// The source's oldest commit.
        oldest_commit: Option<u64>,
    },
    /// Neither a commit log from version 0 nor a checkpoint followed by every later commit.
    NoStartingPoint {
        /// The source's oldest commit.
        oldest_commit: Option<u64>,
    },
}

fn contiguous(commits: &BTreeSet<u64>, from: u64, to: u64) -> bool {
    from > to || commits.range(from..=to).count() as u64 == to - from + 1
}

/// Decides where a round starts; see the module documentation.
pub fn plan(f: &PlanFacts) -> Result<Plan, Refusal> {
    let newest_commit = f.source_commits.last().copied();
    let newest_checkpoint = f.source_checkpoints.last().copied();
    let Some(source) = newest_commit.max(newest_checkpoint) else {
        return Err(Refusal::SourceEmpty);
    };
    let oldest_commit = f.source_commits.first().copied();
    let from_checkpoint = || {
        f.source_checkpoints
            .iter()
            .rev()
            .find(|c| contiguous(&f.source_commits, *c + 1, source))
            .map(|&checkpoint| Plan::FromCheckpoint {
                checkpoint,
                to: source,
            })
    };
    match f.replica_newest {
        Some(replica) => {
            if f.newest_matches == Some(false) {
                return Err(Refusal::Diverged { version: replica });
            }
            if replica > source {
                return Err(Refusal::ReplicaAhead { replica, source });
            }
            if replica == source {
                return Ok(Plan::UpToDate { version: replica });
            }
            if contiguous(&f.source_commits, replica + 1, source) {
                return Ok(Plan::Incremental {
                    from: replica + 1,
                    to: source,
                });
            }
            if f.full {
                if let Some(plan) = from_checkpoint() {
                    return Ok(plan);
                }
            }
            Err(Refusal::LogCleanedUp {
                needed: replica + 1,
                oldest_commit,
            })
        }
        None => {
            if !f.full && contiguous(&f.source_commits, 0, source) {
                return Ok(Plan::Incremental {
                    from: 0,
                    to: source,
                });
            }
            if let Some(plan) = from_checkpoint() {
                return Ok(plan);
            }
            if contiguous(&f.source_commits, 0, source) {
                return Ok(Plan::Incremental {
                    from: 0,
                    to: source,
                });
            }
            Err(Refusal::NoStartingPoint { oldest_commit })
        }
    }
}

/// Replication failed or was refused; each variant names the tables, version or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// Reading a log failed.
    #[error(transparent)]
    Log(Box<LogError>),
    /// Copying a file failed.
    #[error("version {version}: {source}")]
    Copy {
        /// The version being copied.
        version: u64,
        /// The copy's error.
        #[source]
        source: CopyError,
    },
    /// A file a version needs is gone from the source.
    #[error("version {version}: {file} is gone from the source (removed by VACUUM?) before it was copied; `tidemark replicate --full` copies the source's newest checkpoint and its live files instead")]
    SourceFileMissing {
        /// The version.
        version: u64,
        /// The file.
        file: String,
    },
    /// The round refused to copy (see [`Refusal`]); the message says why and what to do.
    #[error("{message}")]
    Refused {
        /// Why.
        refusal: Refusal,
        /// The explanation, naming both tables, versions and files.
        message: String,
    },
    /// The table uses a feature replication does not copy yet.
    #[error("{table} version {version}: {what} is not supported by replication yet")]
    Unsupported {
        /// The table.
        table: String,
        /// The version.
        version: u64,
        /// What.
        what: String,
    },
    /// Source and replica are the same table.
    #[error("the source and the replica are the same table ({0})")]
    SameTable(String),
    /// Listing or cleaning the replica failed.
    #[error("replica {table}: {source}")]
    Replica {
        /// The replica.
        table: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

impl From<LogError> for ReplicateError {
    fn from(e: LogError) -> Self {
        Self::Log(Box::new(e))
    }
}

fn refusal_message(refusal: &Refusal, source: &TableLocation, replica: &TableLocation) -> String {
    let file = |t: &TableLocation, v: u64| format!("{}/_delta_log/{}", t, commit_file_name(v));
    match refusal {
        Refusal::SourceEmpty => format!("the source {source} holds no Delta table (no _delta_log commit or checkpoint)"),
        Refusal::Diverged { version } => format!(
            "the replica diverged from its source: the replica's version {version} ({}) differs from the source's version {version} ({}); it is another table or was written to directly. Replicate into a new, empty destination",
            file(replica, *version),
            file(source, *version)
        ),
        Refusal::ReplicaAhead { replica: r, source: s } => format!(
            "the replica {replica} is at version {r}, ahead of its source {source} (version {s}): it is another table, or the source was restored to an older state. Replicate into a new, empty destination"
        ),
        Refusal::LogCleanedUp { needed, oldest_commit } => format!(
            "the source's log was cleaned up: the replica {replica} needs version {needed} next, but the source {source} holds commits only from {} on. Run with --full to copy the source's newest checkpoint, its live files and every later commit",
            oldest_commit.map_or("nowhere".to_string(), |v| format!("version {v}"))
        ),
        Refusal::NoStartingPoint { oldest_commit } => format!(
            "the source {source} cannot be copied: its log has neither every commit from version 0 nor a complete checkpoint followed by every later commit (oldest commit: {})",
            oldest_commit.map_or("none".to_string(), |v| v.to_string())
        ),
    }
}

/// How a replicator copies.
#[derive(Debug, Clone, Copy)]
pub struct ReplicateOptions {
    /// Start from the source's newest checkpoint when needed (see [`PlanFacts::full`]).
    pub full: bool,
    /// How each written file is checked.
    pub verify: Verify,
    /// Bytes per read.
    pub chunk_bytes: usize,
    /// Files copied at once within a version.
    pub parallel: usize,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        Self {
            full: false,
            verify: Verify::SizeAndChecksum,
            chunk_bytes: crate::copy::DEFAULT_CHUNK_BYTES,
            parallel: 4,
        }
    }
}

/// What a round tells its caller as it goes (progress bars, logs). Every method has an empty
/// default.
pub trait Observer: Send + Sync {
    /// `bytes` more bytes and `files` more files are planned (called per batch of versions).
    fn planned(&self, _plan: &Plan, _files: u64, _bytes: u64) {}
    /// `n` source bytes were read.
    fn bytes(&self, _n: u64) {}
    /// The replica now holds `version`.
    fn version_done(&self, _version: u64) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl Observer for NoObserver {}

/// What one round did.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// Where it started.
    pub plan: Plan,
    /// The source's newest version when the round listed it.
    pub source_version: u64,
    /// The replica's newest version after the round.
    pub replica_version: Option<u64>,
    /// Versions copied (commit files written).
    pub versions_copied: u64,
    /// Data files written.
    pub files_copied: u64,
    /// Data files already at the destination, verified and kept.
    pub files_already_present: u64,
    /// Bytes written (data, commit and checkpoint files).
    pub bytes_copied: u64,
    /// Checkpoint files (and `_last_checkpoint`) written.
    pub checkpoint_files_copied: u64,
    /// Temporary files of interrupted writes removed from the replica.
    pub temp_files_removed: u64,
    /// Wall time of the round.
    pub elapsed_ms: u64,
}

#[derive(Default)]
struct Tally {
    versions: AtomicU64,
    files: AtomicU64,
    present: AtomicU64,
    bytes: AtomicU64,
    checkpoint_files: AtomicU64,
}

impl Tally {
    fn count(&self, outcome: &CopyOutcome) {
        match outcome {
            CopyOutcome::Copied(c) => {
                self.files.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(c.sums.size, Ordering::Relaxed);
            }
            CopyOutcome::AlreadyPresent(_) => {
                self.present.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Copies a source table into a replica, round by round.
#[derive(Debug)]
pub struct Replicator {
    source: TableLocation,
    replica: TableLocation,
    options: ReplicateOptions,
    swept: AtomicBool,
    /// Both tables local, the replica written through a known file system: data files are
    /// copied by [`crate::local_copy`], their directories fsynced in batches.
    local: Option<LocalPair>,
}

/// What the local fast path needs: the replica's file system, the object-path-to-file mapping
/// of the local stores, and the replica directories holding data files not yet durable.
#[derive(Debug)]
struct LocalPair {
    fs: tidemark_fs::SharedFs,
    paths: object_store::local::LocalFileSystem,
    /// Invariant: a commit file is written only after `pending` was synced, and every data
    /// file the commit adds was placed (or found present) before that sync started.
    pending: Arc<PendingDirSyncs>,
}

/// Versions whose commits are read ahead at once (to plan their bytes).
const BATCH_VERSIONS: u64 = 500;

impl Replicator {
    /// A replicator from `source` into `replica`.
    pub fn new(
        source: TableLocation,
        replica: TableLocation,
        options: ReplicateOptions,
    ) -> Result<Self, ReplicateError> {
        if source.to_string() == replica.to_string() {
            return Err(ReplicateError::SameTable(source.to_string()));
        }
        let local = match (source.local_dir(), replica.local_fs()) {
            // `local_fs` is set only for a local replica.
            (Some(_), Some(fs)) => Some(LocalPair {
                fs: fs.clone(),
                paths: object_store::local::LocalFileSystem::new(),
                pending: Arc::default(),
            }),
            _ => None,
        };
        Ok(Self {
            source,
            replica,
            options,
            swept: AtomicBool::new(false),
            local,
        })
    }

    /// The source.
    pub fn source(&self) -> &TableLocation {
        &self.source
    }

    /// The replica.
    pub fn replica(&self) -> &TableLocation {
        &self.replica
    }

    /// The replica's lag behind the source, measured read-only.
    pub async fn lag(&self) -> Result<ReplicationLag, LogError> {
        measure_lag(&self.source, &self.replica).await
    }

    fn refused(&self, refusal: Refusal) -> ReplicateError {
        let message = refusal_message(&refusal, &self.source, &self.replica);
        ReplicateError::Refused { refusal, message }
    }

    /// Brings the replica up to the source's newest version; see the module documentation.
    pub async fn round(&self, observer: &dyn Observer) -> Result<RoundReport, ReplicateError> {
        let started = Instant::now();
        let temp_files_removed = if self.swept.swap(true, Ordering::SeqCst) {
            0
        } else {
            self.sweep_temporary_files().await?
        };
        let src_log = LogListing::list(&self.source).await?;
        let dst_log = LogListing::list(&self.replica).await?;
        let replica_newest = dst_log.newest_version();
        let newest_matches = match replica_newest {
            Some(r) if dst_log.commit(r).is_some() && src_log.commit(r).is_some() => {
                let ours = read_commit(&self.replica, r).await?;
                let theirs = read_commit(&self.source, r).await?;
                Some(ours.bytes == theirs.bytes)
            }
            _ => None,
        };
        let facts = PlanFacts {
            source_commits: src_log.commits().map(|(v, _)| v).collect(),
            source_checkpoints: src_log.complete_checkpoints().map(|(v, _)| v).collect(),
            replica_newest,
            newest_matches,
            full: self.options.full,
        };
        let plan = plan(&facts).map_err(|r| self.refused(r))?;
        let source_version = match plan {
            Plan::UpToDate { version } => version,
            Plan::Incremental { to, .. } | Plan::FromCheckpoint { to, .. } => to,
        };
        tracing::debug!(?plan, source = %self.source, replica = %self.replica, "replication round");
        let tally = Tally::default();
        // A replica started from a checkpoint (killed before that version's commit file was
        // copied) lacks its newest commit file: copy it first, if the source still has it.
        if let Some(r) = replica_newest {
            if dst_log.commit(r).is_none() && src_log.commit(r).is_some() {
                let commit = read_commit(&self.source, r).await?;
                let o = self.write_commit(r, commit.bytes).await?;
                tally.bytes.fetch_add(o.bytes_written(), Ordering::Relaxed);
            }
        }
        let mut newest = replica_newest;
        match plan {
            Plan::UpToDate { .. } => {}
            Plan::Incremental { from, to } => {
                self.copy_versions(&plan, &src_log, from, to, observer, &tally)
                    .await?;
                newest = Some(to);
            }
            Plan::FromCheckpoint { checkpoint, to } => {
                self.copy_checkpoint_snapshot(&plan, &src_log, checkpoint, observer, &tally)
                    .await?;
                newest = Some(checkpoint);
                self.copy_versions(&plan, &src_log, checkpoint + 1, to, observer, &tally)
                    .await?;
                newest = newest.max(Some(to));
            }
        }
        if let Some(newest) = newest {
            self.sync_checkpoints(newest, &tally).await?;
        }
        Ok(RoundReport {
            plan,
            source_version,
            replica_version: newest,
            versions_copied: tally.versions.load(Ordering::Relaxed),
            files_copied: tally.files.load(Ordering::Relaxed),
            files_already_present: tally.present.load(Ordering::Relaxed),
            bytes_copied: tally.bytes.load(Ordering::Relaxed),
            checkpoint_files_copied: tally.checkpoint_files.load(Ordering::Relaxed),
            temp_files_removed,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Copies `from` in the source to `to` in the replica with this replication's verify
    /// and chunk settings, skipping an identical file already there.
    async fn copy_file(
        &self,
        from: &Path,
        to: &Path,
        mode: WriteMode,
        expected_size: Option<u64>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<CopyOutcome, CopyError> {
        let options = CopyOptions {
            mode,
            verify: self.options.verify,
            expected_size,
            skip_identical: true,
            chunk_bytes: self.options.chunk_bytes,
            // The read-back CRC-32 is the check; no manifest needs the SHA-256.
            sha256: false,
            progress: Some(progress),
        };
        copy_verified(
            self.source.store().as_ref(),
            from,
            self.replica.store().as_ref(),
            to,
            &options,
        )
        .await
    }

    /// Copies one data file (`path` decoded and relative, `size` from the log) of `version`.
    async fn copy_data_file(
        &self,
        version: u64,
        path: &str,
        size: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        let bad_path = |e: object_store::path::Error| ReplicateError::Unsupported {
            table: self.source.to_string(),
            version,
            what: format!("the file path {path:?} ({e})"),
        };
        let from = self.source.child(path).map_err(bad_path)?;
        let to = self.replica.child(path).map_err(bad_path)?;
        let copied = match &self.local {
            Some(local) => {
                self.copy_local_file(local, &from, &to, size, progress)
                    .await
            }
            None => {
                self.copy_file(&from, &to, WriteMode::Overwrite, Some(size), progress)
                    .await
            }
        };
        let outcome = copied.map_err(|e| match e {
            CopyError::Read {
                source: object_store::Error::NotFound { .. },
                ..
            } => ReplicateError::SourceFileMissing {
                version,
                file: from.to_string(),
            },
            source => ReplicateError::Copy { version, source },
        })?;
        tally.count(&outcome);
        fault::hit(fault::AFTER_DATA_FILE);
        Ok(())
    }

    /// Copies one data file between local tables ([`crate::local_copy`], in a blocking task);
    /// its directory is left to [`Self::sync_data_dirs`]. A file already at the destination
    /// takes the general path (compared with the source, kept when identical), and its
    /// directory is synced with the batch too (a name found there may not be durable yet: a
    /// run killed between a rename and its directory fsync left it).
    async fn copy_local_file(
        &self,
        local: &LocalPair,
        from: &Path,
        to: &Path,
        size: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<CopyOutcome, CopyError> {
        let path_err = |p: &Path| {
            let file = p.to_string();
            move |source| CopyError::Read { file, source }
        };
        let from_file = local
            .paths
            .path_to_filesystem(from)
            .map_err(path_err(from))?;
        let to_file = local.paths.path_to_filesystem(to).map_err(path_err(to))?;
        if local.fs.exists(&to_file) {
            let outcome = self
                .copy_file(from, to, WriteMode::Overwrite, Some(size), progress)
                .await?;
            local.pending.add(tidemark_fs::parent_dir(&to_file));
            return Ok(outcome);
        }
        let (bytes_tx, mut bytes_rx) = futures::channel::mpsc::unbounded::<u64>();
        let fs = local.fs.clone();
        let (verify, chunk_bytes) = (self.options.verify, self.options.chunk_bytes);
        let work = tokio::task::spawn_blocking(move || {
            let report = move |n: u64| {
                // The receiver goes away only when the copy is abandoned.
                let _ = bytes_tx.unbounded_send(n);
            };
            copy_local(&LocalCopy {
                fs: fs.as_ref(),
                from: &from_file,
                to: &to_file,
                expected_size: Some(size),
                verify,
                chunk_bytes,
                progress: &report,
            })
        });
        let reports = async {
            while let Some(n) = bytes_rx.next().await {
                progress(n);
            }
        };
        let (placed, ()) = futures::join!(work, reports);
        let placed = placed.map_err(|e| CopyError::Write {
            file: to.to_string(),
            source: object_store::Error::JoinError { source: e },
        })??;
        local.pending.add(placed.dir);
        Ok(CopyOutcome::Copied(crate::copy::Copied {
            sums: placed.sums,
            sha256: None,
        }))
    }

    /// Fsyncs the replica directories holding data files placed since the last sync (one
    /// fsync per directory, however many files): called before a commit that may refer to
    /// them is written. Nothing to do off the local fast path (each write synced its own).
    async fn sync_data_dirs(&self, version: u64) -> Result<(), ReplicateError> {
        let Some(local) = self.local.as_ref().filter(|l| !l.pending.is_empty()) else {
            return Ok(());
        };
        let (fs, pending) = (local.fs.clone(), local.pending.clone());
        let synced = tokio::task::spawn_blocking(move || pending.sync(fs.as_ref()))
            .await
            .map_err(|e| ReplicateError::Copy {
                version,
                source: CopyError::Write {
                    file: self.replica.to_string(),
                    source: object_store::Error::JoinError { source: e },
                },
            })?;
        match synced {
            Ok(_) => Ok(()),
            Err((dir, e)) => Err(ReplicateError::Copy {
                version,
                source: CopyError::Write {
                    file: dir.display().to_string(),
                    source: object_store::Error::Generic {
                        store: "local file system",
                        source: format!("fsync directory {}: {e}", dir.display()).into(),
                    },
                },
            }),
        }
    }

    /// Copies the data files `files` (decoded relative paths with their sizes) of `version`,
    /// several at once.
    async fn copy_data_files(
        &self,
        version: u64,
        files: Vec<(String, u64)>,
        observer: &dyn Observer,
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        let progress = |n: u64| {
            observer.bytes(n);
            fault::copy_delay();
        };
        let progress = &progress;
        run_until_first_error(
            files.into_iter().map(|(path, size)| async move {
                self.copy_data_file(version, &path, size, progress, tally)
                    .await
            }),
            self.options.parallel,
        )
        .await?;
        Ok(())
    }

    /// Copies one log file (commit, checksum, checkpoint part, `_last_checkpoint`) by its
    /// name in `_delta_log/`.
    async fn copy_log_file(
        &self,
        version: u64,
        name: &str,
        mode: WriteMode,
        observer: &dyn Observer,
    ) -> Result<CopyOutcome, ReplicateError> {
        let from = self.source.log_dir().join(name);
        let to = self.replica.log_dir().join(name);
        let progress = |n: u64| observer.bytes(n);
        self.copy_file(&from, &to, mode, None, &progress)
            .await
            .map_err(|source| ReplicateError::Copy { version, source })
    }

    /// Writes commit `version`'s file with `bytes` (put-if-absent, verified).
    async fn write_commit(
        &self,
        version: u64,
        bytes: bytes::Bytes,
    ) -> Result<CopyOutcome, ReplicateError> {
        let to = self.replica.log_dir().join(commit_file_name(version));
        write_verified(
            self.replica.store().as_ref(),
            &to,
            bytes,
            WriteMode::CreateNew,
            self.options.verify,
        )
        .await
        .map_err(|source| ReplicateError::Copy { version, source })
    }

    /// Checks that every file of `commit` can be copied with the table.
    fn check_copyable(&self, commit: &Commit) -> Result<(), ReplicateError> {
        let unsupported = |what: String| ReplicateError::Unsupported {
            table: self.source.to_string(),
            version: commit.version,
            what,
        };
        for add in commit.adds() {
            if add.has_deletion_vector {
                return Err(unsupported(format!(
                    "the deletion vector of {}",
                    add.path.encoded
                )));
            }
        }
        for (path, _) in commit.files_added() {
            if !path.is_relative() {
                return Err(unsupported(format!(
                    "the absolute file path {} (a file outside the table)",
                    path.encoded
                )));
            }
        }
        Ok(())
    }

    /// Copies versions `from..=to` in order, each one's files before its commit.
    async fn copy_versions(
        &self,
        plan: &Plan,
        src_log: &LogListing,
        from: u64,
        to: u64,
        observer: &dyn Observer,
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        let table = self.source.to_string();
        let mut batch_start = from;
        while batch_start <= to {
            let batch_end = to.min(batch_start + BATCH_VERSIONS - 1);
            let mut commits: Vec<(CommitBytes, Commit)> = Vec::new();
            for v in batch_start..=batch_end {
                let bytes = read_commit(&self.source, v).await?;
                let commit = bytes.parse(&table)?;
                self.check_copyable(&commit)?;
                commits.push((bytes, commit));
            }
            let files: u64 = commits
                .iter()
                .map(|(_, c)| c.files_added().count() as u64)
                .sum();
            let bytes: u64 = commits
                .iter()
                .map(|(b, c)| b.bytes.len() as u64 + c.files_added().map(|(_, s)| s).sum::<u64>())
                .sum();
            observer.planned(plan, files, bytes);
            self.copy_batch(commits, src_log, observer, tally).await?;
            batch_start = batch_end + 1;
        }
        Ok(())
    }

    /// Copies a batch of consecutive versions: the data files of all of them `parallel` at a
    /// time (in version order), and each commit as soon as its own files and every earlier
    /// commit of the batch are in place. So copies overlap commit writes and fsyncs across
    /// versions, while the invariant stays: a commit file is written only after every data
    /// file it adds is durable in the replica. A data file added by several versions of the
    /// batch is copied once, for the first of them (later commits come after its commit).
    async fn copy_batch(
        &self,
        commits: Vec<(CommitBytes, Commit)>,
        src_log: &LogListing,
        observer: &dyn Observer,
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        let mut seen = BTreeSet::new();
        let mut remaining = vec![0usize; commits.len()];
        let mut jobs = Vec::new();
        for (index, (_, commit)) in commits.iter().enumerate() {
            for (path, size) in commit.files_added() {
                if seen.insert(path.decoded.clone()) {
                    remaining[index] += 1;
                    jobs.push((index, commit.version, path.decoded.clone(), size));
                }
            }
        }
        let progress = |n: u64| {
            observer.bytes(n);
            fault::copy_delay();
        };
        let (done_tx, mut done_rx) = futures::channel::mpsc::unbounded::<usize>();
        let copies = async move {
            let (progress, done_tx) = (&progress, &done_tx);
            run_until_first_error(
                jobs.into_iter()
                    .map(|(index, version, path, size)| async move {
                        self.copy_data_file(version, &path, size, progress, tally)
                            .await?;
                        // The receiver only goes away when the commit side failed, and that
                        // error is the one reported.
                        let _ = done_tx.unbounded_send(index);
                        Ok::<(), ReplicateError>(())
                    }),
                self.options.parallel,
            )
            .await
            .map(drop)
        };
        let writes = async {
            let mut next = 0;
            while next < commits.len() {
                if remaining[next] > 0 {
                    match done_rx.next().await {
                        Some(index) => remaining[index] -= 1,
                        // Every copy ended yet files are missing: the copy side failed and
                        // its error is the one reported.
                        None => return Ok(()),
                    }
                    continue;
                }
                let (bytes, commit) = &commits[next];
                // Every data file this commit adds is placed: make their names durable.
                self.sync_data_dirs(commit.version).await?;
                self.write_version(bytes, commit.version, src_log, observer, tally)
                    .await?;
                next += 1;
            }
            Ok::<(), ReplicateError>(())
        };
        futures::try_join!(copies, writes)?;
        Ok(())
    }

    /// Writes `version`'s commit file (its data files already in place), then its checksum
    /// file and checkpoint files if the source has them.
    async fn write_version(
        &self,
        bytes: &CommitBytes,
        version: u64,
        src_log: &LogListing,
        observer: &dyn Observer,
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        fault::hit(fault::BEFORE_COMMIT_FILE);
        // The bytes whose files were just copied are the bytes written.
        let outcome = self.write_commit(version, bytes.bytes.clone()).await?;
        observer.bytes(bytes.bytes.len() as u64);
        tally
            .bytes
            .fetch_add(outcome.bytes_written(), Ordering::Relaxed);
        tally.versions.fetch_add(1, Ordering::Relaxed);
        fault::hit(fault::AFTER_COMMIT_FILE);
        if let Some(crc) = src_log.checksum(version) {
            let name = crc.name.clone();
            let o = self
                .copy_log_file(version, &name, WriteMode::Overwrite, observer)
                .await?;
            tally.bytes.fetch_add(o.bytes_written(), Ordering::Relaxed);
        }
        if let Some(parts) = src_log.checkpoint(version) {
            let names: Vec<String> = parts.iter().map(|f| f.name.clone()).collect();
            self.copy_checkpoint_files(version, &names, observer, tally)
                .await?;
        }
        observer.version_done(version);
        tracing::debug!(version, "replica holds version");
        Ok(())
    }

    async fn copy_checkpoint_files(
        &self,
        version: u64,
        names: &[String],
        observer: &dyn Observer,
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        for name in names {
            let outcome = self
                .copy_log_file(version, name, WriteMode::Overwrite, observer)
                .await?;
            if let CopyOutcome::Copied(c) = outcome {
                tally.checkpoint_files.fetch_add(1, Ordering::Relaxed);
                tally.bytes.fetch_add(c.sums.size, Ordering::Relaxed);
            }
            fault::hit(fault::AFTER_CHECKPOINT_FILE);
        }
        Ok(())
    }

    /// Copies checkpoint `checkpoint`'s snapshot: its live files, its checkpoint file(s), its
    /// commit file if the source still has it.
    async fn copy_checkpoint_snapshot(
        &self,
        plan: &Plan,
        src_log: &LogListing,
        checkpoint: u64,
        observer: &dyn Observer,
        tally: &Tally,
    ) -> Result<(), ReplicateError> {
        let parts = src_log.checkpoint(checkpoint).unwrap_or_default();
        let snapshot = read_checkpoint(&self.source, checkpoint, parts).await?;
        for add in snapshot.files.values() {
            if add.has_deletion_vector || !add.path.is_relative() {
                return Err(ReplicateError::Unsupported {
                    table: self.source.to_string(),
                    version: checkpoint,
                    what: format!(
                        "the file {} (absolute path or deletion vector)",
                        add.path.encoded
                    ),
                });
            }
        }
        let files: Vec<(String, u64)> = snapshot
            .files
            .values()
            .map(|a| (a.path.decoded.clone(), a.size))
            .collect();
        let bytes =
            files.iter().map(|(_, s)| s).sum::<u64>() + parts.iter().map(|p| p.size).sum::<u64>();
        observer.planned(plan, files.len() as u64, bytes);
        tracing::info!(
            checkpoint,
            files = files.len(),
            bytes,
            "copying the snapshot of the source's checkpoint"
        );
        self.copy_data_files(checkpoint, files, observer, tally)
            .await?;
        self.sync_data_dirs(checkpoint).await?;
        let names: Vec<String> = parts.iter().map(|f| f.name.clone()).collect();
        self.copy_checkpoint_files(checkpoint, &names, observer, tally)
            .await?;
        if src_log.commit(checkpoint).is_some() {
            let o = self
                .copy_log_file(
                    checkpoint,
                    &commit_file_name(checkpoint),
                    WriteMode::CreateNew,
                    observer,
                )
                .await?;
            tally.bytes.fetch_add(o.bytes_written(), Ordering::Relaxed);
            tally.versions.fetch_add(1, Ordering::Relaxed);
        }
        observer.version_done(checkpoint);
        Ok(())
    }

    /// Copies the source's newest checkpoint at or before `newest` if the replica lacks it,
    /// then `_last_checkpoint` if it names a checkpoint the replica holds.
    async fn sync_checkpoints(&self, newest: u64, tally: &Tally) -> Result<(), ReplicateError> {
        let src_log = LogListing::list(&self.source).await?;
        let dst_log = LogListing::list(&self.replica).await?;
        let ours = dst_log.complete_checkpoints().map(|(v, _)| v).next_back();
        if let Some((v, parts)) = src_log.checkpoint_at_or_before(newest) {
            if ours.is_none_or(|o| o < v) {
                let names: Vec<String> = parts.iter().map(|f| f.name.clone()).collect();
                self.copy_checkpoint_files(v, &names, &NoObserver, tally)
                    .await?;
            }
        }
        let Some(last) = src_log.last_checkpoint() else {
            return Ok(());
        };
        let bytes = match self.source.store().get(&last.location).await {
            Ok(get) => get.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(b) => b,
            // Rewritten or removed while we looked: the next round sees it.
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(source) => {
                return Err(LogError::Read {
                    table: self.source.to_string(),
                    file: last.location.to_string(),
                    source,
                }
                .into())
            }
        };
        let Some(version) = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64))
        else {
            tracing::warn!(file = %last.location, "the source's _last_checkpoint is not readable; not copied");
            return Ok(());
        };
        let dst_log = LogListing::list(&self.replica).await?;
        if version > newest || dst_log.checkpoint(version).is_none() {
            return Ok(());
        }
        // The bytes just read (naming a checkpoint the replica holds), not a newer
        // `_last_checkpoint` the source may have written since.
        let to = self.replica.log_dir().join(last.name.as_str());
        let same = match self.replica.store().get(&to).await {
            Ok(get) => get.bytes().await.ok().is_some_and(|b| b == bytes),
            Err(_) => false,
        };
        if same {
            return Ok(());
        }
        let outcome = write_verified(
            self.replica.store().as_ref(),
            &to,
            bytes,
            WriteMode::Overwrite,
            self.options.verify,
        )
        .await
        .map_err(|source| ReplicateError::Copy { version, source })?;
        if let CopyOutcome::Copied(c) = outcome {
            tally.checkpoint_files.fetch_add(1, Ordering::Relaxed);
            tally.bytes.fetch_add(c.sums.size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes hidden temporary files that interrupted durable writes left in the replica
    /// (`.<name>.tidemark-tmp-<pid>-<n>`): never data, never referenced by the log.
    async fn sweep_temporary_files(&self) -> Result<u64, ReplicateError> {
        let replica_err = |source| ReplicateError::Replica {
            table: self.replica.to_string(),
            source,
        };
        let listed: Vec<ObjectMeta> = match self
            .replica
            .store()
            .list(Some(self.replica.root()))
            .try_collect()
            .await
        {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(replica_err(e)),
        };
        let temps: Vec<Path> = listed
            .into_iter()
            .map(|m| m.location)
            .filter(|p| {
                p.filename()
                    .is_some_and(|n| n.starts_with('.') && n.contains(".tidemark-tmp-"))
            })
            .collect();
        for t in &temps {
            match self.replica.store().delete(t).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(replica_err(e)),
            }
        }
        if !temps.is_empty() {
            tracing::info!(
                removed = temps.len(),
                replica = %self.replica,
                "removed temporary files of interrupted writes"
            );
        }
        Ok(temps.len() as u64)
    }
}

#[cfg(test)]
#[path = "replicate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "replicate_power_cut_tests.rs"]
mod power_cut_tests;
