//! Taking one backup: full (a snapshot and every file it needs) or incremental (the commits
//! after the parent backup's newest version and the files they add; work proportional to
//! the change, not to the table). Every file is copied with [`crate::copy::copy_verified`]
//! (durable, size and SHA-256 checked); the manifest is written last.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use object_store::ObjectStoreExt;
use serde::Serialize;

use super::chain::Catalog;
use super::dir::{BackupDir, DirError};
use super::manifest::{
    sha256_of, BackupId, CommitEntry, FileEntry, FileRole, Manifest, ManifestError,
};
use crate::copy::{copy_verified, digest_of, CopyError, CopyOptions, DEFAULT_CHUNK_BYTES};
use crate::live::{live_files, Base, LiveError};
use crate::location::TableLocation;
use crate::log::{read_commit, LogError, LogFile, LogFileKind, LogListing};
use crate::progress::Progress;

/// Data files copied at once.
const PARALLEL_COPIES: usize = 8;

/// Why a backup could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup directory.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// Reading the source's log.
    #[error(transparent)]
    Log(Box<LogError>),
    /// Replaying the source's snapshot (full backups).
    #[error(transparent)]
    Live(Box<LiveError>),
    /// Copying a file.
    #[error(transparent)]
    Copy(Box<CopyError>),
    /// Writing the manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No table at the source.
    #[error("no Delta table at {table} (its _delta_log/ holds no commit)")]
    NoTable {
        /// The source.
        table: String,
    },
    /// The source is not the table the newest backups continue.
    #[error("{table} does not continue backup {parent} (of versions up to {version}): {reason}; take a full backup with --full")]
    Diverged {
        /// The source.
        table: String,
        /// The backup it was compared with.
        parent: BackupId,
        /// Its newest version.
        version: u64,
        /// What differs.
        reason: String,
    },
    /// The source's log no longer holds the versions an incremental needs.
    #[error("{table}: version {version} is no longer in the log (log cleaned up; oldest commit {oldest}), so an incremental after backup {parent} is impossible; take a full backup with --full")]
    LogCleaned {
        /// The source.
        table: String,
        /// The first missing version.
        version: u64,
        /// The oldest commit present.
        oldest: String,
        /// The parent backup.
        parent: BackupId,
    },
    /// A file a version refers to is gone from the source.
    #[error("{table}: {file}, added by version {version}, is not in the source (vacuumed or lost); take a full backup with --full (verify the source with `tidemark verify`)")]
    FileGone {
        /// The source.
        table: String,
        /// The file.
        file: String,
        /// The version adding it.
        version: u64,
    },
    /// A path that cannot be copied with the table.
    #[error("{table}: version {version} refers to {file}, outside the table: cannot back it up")]
    Outside {
        /// The source.
        table: String,
        /// The path.
        file: String,
        /// The version.
        version: u64,
    },
    /// A table feature backups do not copy yet.
    #[error("{table}: {file} (version {version}) has a deletion vector, whose file backups do not copy yet: refusing rather than taking an incomplete backup")]
    DeletionVector {
        /// The source.
        table: String,
        /// The data file.
        file: String,
        /// The version adding it (the snapshot's, for a full backup).
        version: u64,
    },
    /// A path the backup directory cannot hold.
    #[error("{file}: not a valid object path: {reason}")]
    BadPath {
        /// The path.
        file: String,
        /// Why.
        reason: String,
    },
}

// Boxed: the log's and the copier's errors are large, and these travel far up.
impl From<LogError> for BackupError {
    fn from(e: LogError) -> Self {
        Self::Log(Box::new(e))
    }
}

impl From<LiveError> for BackupError {
    fn from(e: LiveError) -> Self {
        Self::Live(Box::new(e))
    }
}

impl From<CopyError> for BackupError {
    fn from(e: CopyError) -> Self {
        Self::Copy(Box::new(e))
    }
}

/// How to take a backup.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackupOptions {
    /// Take a full backup even when an incremental is possible.
    pub full: bool,
    /// After the backup, keep only this many newest full backups (and their chains).
    pub keep_full: Option<usize>,
}

/// What a backup did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    /// The backup taken (`None` when the source had nothing new).
    pub id: Option<BackupId>,
    /// `full`, `incremental`, or `up_to_date`.
    pub kind: &'static str,
    /// Its parent.
    pub parent: Option<BackupId>,
    /// Versions covered.
    pub first_version: u64,
    /// Versions covered.
    pub last_version: u64,
    /// Files copied (log and data).
    pub files: usize,
    /// Data files copied.
    pub data_files: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Wall time in ms.
    pub elapsed_ms: u64,
    /// Backups deleted by retention.
    pub pruned: Vec<BackupId>,
}

/// One file to copy into the backup.
struct ToCopy {
    rel: String,
    size: u64,
    role: FileRole,
}

/// Takes a backup of `source` into the backup directory `dir` (a path, `file://` or `s3://`
/// URL).
pub async fn take_backup(
    source: &TableLocation,
    dir: &str,
    options: BackupOptions,
) -> Result<BackupReport, BackupError> {
    take_backup_on(tidemark_fs::std_fs(), source, dir, options).await
}

/// [`take_backup`] writing the backup's files and manifest through `fs` (tests inject EIO,
/// failed fsyncs and full disks with a `FaultFs`). A backup whose writes failed has no manifest,
/// so it never counts as taken.
pub async fn take_backup_on(
    fs: tidemark_fs::SharedFs,
    source: &TableLocation,
    dir: &str,
    options: BackupOptions,
) -> Result<BackupReport, BackupError> {
    let backup_dir = BackupDir::open_exclusive_on(fs.clone(), dir).await?;
    let result = take_locked(&fs, source, &backup_dir, options).await;
    backup_dir.release().await;
    result
}

/// [`take_backup_on`] once the backup directory is locked.
async fn take_locked(
    fs: &tidemark_fs::SharedFs,
    source: &TableLocation,
    backup_dir: &BackupDir,
    options: BackupOptions,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let dir = backup_dir.location();
    let scan = backup_dir.scan().await?;
    for name in &scan.unfinished {
        tracing::warn!(
            "backup directory {dir}: {name} is an unfinished backup (no manifest): ignored"
        );
    }
    for (name, why) in &scan.unreadable {
        tracing::warn!(
            "backup directory {dir}: {name} is ignored, its manifest is unreadable: {why}"
        );
    }
    let listing = LogListing::list(source).await?;
    let table = source.to_string();
    let Some(newest) = listing.newest_version() else {
        return Err(BackupError::NoTable { table });
    };
    let parent = if options.full {
        None
    } else {
        find_parent(source, &listing, &scan.catalog).await?
    };
    let created_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let plan = match &parent {
        Some(p) if p.last_version == newest => {
            tracing::info!(
                "{table} is at version {newest}, already in backup {}: nothing to back up",
                p.id
            );
            let mut report = BackupReport {
                id: None,
                kind: "up_to_date",
                parent: Some(p.id.clone()),
                first_version: newest,
                last_version: newest,
                files: 0,
                data_files: 0,
                bytes: 0,
                elapsed_ms: 0,
                pruned: vec![],
            };
            report.pruned = prune_after(backup_dir, &scan.catalog, options).await?;
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
        Some(p) => incremental_plan(source, &listing, p, newest).await?,
        None => full_plan(source, &listing, newest).await?,
    };
    let id = BackupId::new(
        created_ms,
        parent.is_none(),
        plan.first_version,
        plan.last_version,
    );
    let dest = backup_dir.create_backup(&id)?;
    let total: u64 = plan.files.iter().map(|f| f.size).sum();
    tracing::info!(
        "backup {id} of {table}: {} versions {}..={}, {} files, {total} bytes{}",
        if parent.is_some() {
            "incremental,"
        } else {
            "full,"
        },
        plan.first_version,
        plan.last_version,
        plan.files.len(),
        parent
            .as_ref()
            .map(|p| format!(", after backup {}", p.id))
            .unwrap_or_default()
    );
    let progress = Progress::bytes(format!("backup {id}"), total);
    let mut entries = copy_all(source, &dest, &plan, &progress).await?;
    progress.finish();
    entries.extend(copy_last_checkpoint(source, &listing, &dest, &entries).await?);
    let manifest = Manifest {
        id: id.clone(),
        parent: parent.as_ref().map(|p| p.id.clone()),
        table_id: plan.table_id.clone(),
        source: table.clone(),
        created_ms,
        first_version: plan.first_version,
        last_version: plan.last_version,
        commits: plan.commits.clone(),
        files: entries,
    };
    backup_dir.write_manifest(fs, &manifest).await?;
    let data_files = manifest
        .files
        .iter()
        .filter(|f| f.role == FileRole::Data)
        .count();
    let mut report = BackupReport {
        id: Some(id),
        kind: if parent.is_some() {
            "incremental"
        } else {
            "full"
        },
        parent: manifest.parent.clone(),
        first_version: manifest.first_version,
        last_version: manifest.last_version,
        files: manifest.files.len(),
        data_files,
        bytes: manifest.bytes(),
        elapsed_ms: 0,
        pruned: vec![],
    };
    // The directory is locked: its catalog is the scan's plus this backup.
    let mut catalog = scan.catalog;
    catalog.insert(manifest);
    report.pruned = prune_after(backup_dir, &catalog, options).await?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn prune_after(
    dir: &BackupDir,
    catalog: &Catalog,
    options: BackupOptions,
) -> Result<Vec<BackupId>, BackupError> {
    match options.keep_full {
        Some(k) => Ok(prune_locked(dir, catalog, k).await?),
        None => Ok(vec![]),
    }
}

/// Deletes what [`Catalog::prune_plan`] says, in a directory already locked exclusively whose
/// backups `catalog` lists (scanned under that lock).
pub async fn prune_locked(
    dir: &BackupDir,
    catalog: &Catalog,
    keep_full: usize,
) -> Result<Vec<BackupId>, DirError> {
    let plan = catalog.prune_plan(keep_full);
    for id in &plan.broken {
        tracing::warn!(
            "backup {id} has a broken chain (a backup it needs is missing): kept, look at it"
        );
    }
    for id in &plan.delete {
        tracing::info!("retention (keep {keep_full} full): deleting backup {id}");
        dir.delete(id).await?;
    }
    Ok(plan.delete)
}

/// What one backup copies and records.
struct Plan {
    table_id: String,
    first_version: u64,
    last_version: u64,
    commits: Vec<CommitEntry>,
    files: Vec<ToCopy>,
}

fn log_rel(file: &LogFile) -> String {
    format!("_delta_log/{}", file.name)
}

/// `_last_checkpoint` as read now, with the version it names.
async fn read_last_checkpoint(
    source: &TableLocation,
    listing: &LogListing,
) -> Option<(u64, bytes::Bytes)> {
    let file = listing.last_checkpoint()?;
    let bytes = source
        .store()
        .get(&file.location)
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    let v = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("version")?
        .as_u64()?;
    Some((v, bytes))
}

/// Writes into the backup the `_last_checkpoint` bytes just read, when the checkpoint they
/// name is among the files copied (writers rewrite it in place: the version recorded is the
/// one in the bytes kept, never a newer checkpoint this backup lacks).
async fn copy_last_checkpoint(
    source: &TableLocation,
    listing: &LogListing,
    dest: &TableLocation,
    entries: &[FileEntry],
) -> Result<Option<FileEntry>, BackupError> {
    let Some((version, bytes)) = read_last_checkpoint(source, listing).await else {
        return Ok(None);
    };
    if !entries
        .iter()
        .any(|e| e.role == FileRole::Checkpoint { version })
    {
        return Ok(None);
    }
    let rel = "_delta_log/_last_checkpoint";
    let to = dest.child(rel).map_err(|e| BackupError::BadPath {
        file: rel.into(),
        reason: e.to_string(),
    })?;
    dest.store()
        .put(&to, bytes.clone().into())
        .await
        .map_err(|source| CopyError::Write {
            file: to.to_string(),
            source,
        })?;
    Ok(Some(FileEntry {
        path: rel.into(),
        size: bytes.len() as u64,
        sha256: sha256_of(&bytes),
        role: FileRole::LastCheckpoint { version },
    }))
}

async fn full_plan(
    source: &TableLocation,
    listing: &LogListing,
    version: u64,
) -> Result<Plan, BackupError> {
    let table = source.to_string();
    let live = live_files(source, listing, Some(version)).await?;
    let mut files = Vec::new();
    let first_commit = match live.base {
        Base::Commits => 0,
        Base::Checkpoint(cp) => {
            for part in listing.checkpoint(cp).unwrap_or_default() {
                files.push(ToCopy {
                    rel: log_rel(part),
                    size: part.size,
                    role: FileRole::Checkpoint { version: cp },
                });
            }
            cp + 1
        }
    };
    for v in first_commit..=version {
        if let Some(f) = listing.commit(v) {
            files.push(ToCopy {
                rel: log_rel(f),
                size: f.size,
                role: FileRole::Commit { version: v },
            });
        }
    }
    for f in live.snapshot.files.values() {
        if f.has_deletion_vector {
            return Err(BackupError::DeletionVector {
                table,
                file: f.path.decoded.clone(),
                version,
            });
        }
        if !f.path.is_relative() {
            return Err(BackupError::Outside {
                table,
                file: f.path.encoded.clone(),
                version,
            });
        }
        files.push(ToCopy {
            rel: f.path.decoded.clone(),
            size: f.size,
            role: FileRole::Data,
        });
    }
    Ok(Plan {
        table_id: live.table_id.unwrap_or_else(|| "unknown".into()),
        first_version: version,
        last_version: version,
        commits: vec![CommitEntry {
            version,
            timestamp_ms: live.timestamp_ms,
            adds: vec![],
            removes: vec![],
        }],
        files,
    })
}

async fn incremental_plan(
    source: &TableLocation,
    listing: &LogListing,
    parent: &Manifest,
    newest: u64,
) -> Result<Plan, BackupError> {
    let table = source.to_string();
    let first = parent.last_version + 1;
    let mut files = Vec::new();
    let mut commits = Vec::new();
    let mut data: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for v in first..=newest {
        let Some(file) = listing.commit(v) else {
            return Err(BackupError::LogCleaned {
                table,
                version: v,
                oldest: listing
                    .oldest_commit()
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "none".into()),
                parent: parent.id.clone(),
            });
        };
        let commit = read_commit(source, v).await?.parse(&table)?;
        if let Some(add) = commit.adds().find(|a| a.has_deletion_vector) {
            return Err(BackupError::DeletionVector {
                table,
                file: add.path.decoded.clone(),
                version: v,
            });
        }
        let mut adds = Vec::new();
        for (path, size) in commit.files_added() {
            if !path.is_relative() {
                return Err(BackupError::Outside {
                    table,
                    file: path.encoded.clone(),
                    version: v,
                });
            }
            adds.push(path.decoded.clone());
            data.insert(path.decoded.clone(), (size, v));
        }
        let removes = commit.removes().map(|r| r.path.decoded.clone()).collect();
        commits.push(CommitEntry {
            version: v,
            timestamp_ms: commit.timestamp_ms().unwrap_or(file.last_modified_ms),
            adds,
            removes,
        });
        files.push(ToCopy {
            rel: log_rel(file),
            size: file.size,
            role: FileRole::Commit { version: v },
        });
        for part in listing.checkpoint(v).unwrap_or_default() {
            files.push(ToCopy {
                rel: log_rel(part),
                size: part.size,
                role: FileRole::Checkpoint { version: v },
            });
        }
    }
    // Data files go first in the copy order; a file the source no longer has is named with
    // the version that added it.
    let mut data_files = Vec::new();
    for (rel, (size, version)) in data {
        let path = source.child(&rel).map_err(|e| BackupError::BadPath {
            file: rel.clone(),
            reason: e.to_string(),
        })?;
        if crate::copy::head_if_exists(source.store().as_ref(), &path)
            .await?
            .is_none()
        {
            return Err(BackupError::FileGone {
                table,
                file: rel,
                version,
            });
        }
        data_files.push(ToCopy {
            rel,
            size,
            role: FileRole::Data,
        });
    }
    data_files.extend(files);
    Ok(Plan {
        table_id: parent.table_id.clone(),
        first_version: first,
        last_version: newest,
        commits,
        files: data_files,
    })
}

/// The backup the next incremental of `source` continues: the newest backup (per table in
/// the directory) whose newest version's log file is byte-for-byte the source's. `None`
/// when the directory holds no backup (a full backup is taken); an error when it holds
/// backups but the source continues none of them.
async fn find_parent(
    source: &TableLocation,
    listing: &LogListing,
    catalog: &Catalog,
) -> Result<Option<Manifest>, BackupError> {
    let mut refusal = None;
    let mut candidates: Vec<&Manifest> = catalog
        .table_ids()
        .into_iter()
        .filter_map(|t| catalog.next_parent(t))
        .collect();
    candidates.sort_by_key(|m| std::cmp::Reverse((m.last_version, m.id.clone())));
    for candidate in candidates {
        match continues(source, listing, candidate).await? {
            Ok(()) => return Ok(Some(candidate.clone())),
            Err(reason) => {
                refusal.get_or_insert((candidate.id.clone(), candidate.last_version, reason));
            }
        }
    }
    match refusal {
        None => {
            tracing::info!("no backup in this directory yet: taking a full backup");
            Ok(None)
        }
        Some((parent, version, reason)) => Err(BackupError::Diverged {
            table: source.to_string(),
            parent,
            version,
            reason,
        }),
    }
}

/// `Ok(Ok(()))` when the source's log file of `backup`'s newest version is the backup's.
async fn continues(
    source: &TableLocation,
    listing: &LogListing,
    backup: &Manifest,
) -> Result<Result<(), String>, BackupError> {
    let v = backup.last_version;
    let anchor = backup.files.iter().find(|f| {
        matches!(f.role, FileRole::Commit { version } if version == v)
            || matches!(f.role, FileRole::Checkpoint { version } if version == v)
    });
    let Some(anchor) = anchor else {
        return Ok(Err(format!("backup holds no log file of version {v}")));
    };
    let name = anchor.path.trim_start_matches("_delta_log/");
    let file = match crate::log::classify(name) {
        LogFileKind::Commit { version } => listing.commit(version),
        LogFileKind::Checkpoint { version, .. } => listing
            .checkpoint(version)
            .and_then(|parts| parts.iter().find(|p| p.name == name)),
        _ => None,
    };
    let Some(file) = file else {
        let newest = listing.newest_version().unwrap_or(0);
        return Ok(Err(if newest < v {
            format!("the source is at version {newest}, behind the backup")
        } else {
            format!("the source's log no longer holds {name}")
        }));
    };
    let digest = digest_of(source.store().as_ref(), &file.location, DEFAULT_CHUNK_BYTES).await?;
    if digest.size != anchor.size || digest.sha256 != anchor.sha256 {
        return Ok(Err(format!(
            "its {name} differs from the backup's (another table, or the table was recreated)"
        )));
    }
    Ok(Ok(()))
}

/// Copies every file of `plan` (data files in parallel, then log files in order), verified,
/// and returns their manifest entries.
async fn copy_all(
    source: &TableLocation,
    dest: &TableLocation,
    plan: &Plan,
    progress: &Progress,
) -> Result<Vec<FileEntry>, BackupError> {
    let report = |n: u64| {
        progress.add(n);
        // Crash tests slow copies down so a kill lands inside one (crash-points builds only).
        crate::fault::copy_delay();
    };
    let copy_one = |f: &ToCopy| {
        let report = &report;
        let rel = f.rel.clone();
        let size = f.size;
        let role = f.role.clone();
        async move {
            let bad = |e: object_store::path::Error| BackupError::BadPath {
                file: rel.clone(),
                reason: e.to_string(),
            };
            let from = source.child(&rel).map_err(bad)?;
            let to = dest.child(&rel).map_err(bad)?;
            let options = CopyOptions {
                expected_size: Some(size),
                progress: Some(report),
                ..CopyOptions::default()
            };
            let outcome = copy_verified(
                source.store().as_ref(),
                &from,
                dest.store().as_ref(),
                &to,
                &options,
            )
            .await?;
            // The copy computed the SHA-256 (`CopyOptions::sha256` is on by default).
            let digest = outcome.digest().ok_or_else(|| BackupError::BadPath {
                file: rel.clone(),
                reason: "the copy computed no SHA-256 for the manifest".into(),
            })?;
            Ok::<FileEntry, BackupError>(FileEntry {
                path: rel,
                size: digest.size,
                sha256: digest.sha256,
                role,
            })
        }
    };
    let (data, log): (Vec<&ToCopy>, Vec<&ToCopy>) =
        plan.files.iter().partition(|f| f.role == FileRole::Data);
    let mut entries: Vec<FileEntry> =
        crate::copy::run_until_first_error(data.into_iter().map(copy_one), PARALLEL_COPIES).await?;
    for f in log {
        entries.push(copy_one(f).await?);
    }
    Ok(entries)
}
