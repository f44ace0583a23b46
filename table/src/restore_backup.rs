//! `tidemark restore-backup`: rebuilds a readable Delta table at one covered version from a
//! chain of backups ([`crate::backup::chain::Catalog::restore_plan`]).
//!
//! The destination must be empty (or absent): a restore never mixes with another table.
//! Each file is checked against its manifest's size and SHA-256 as it is read from the
//! backup, and the copy against the bytes read. Data files are written first, then the log
//! in version order, `_last_checkpoint` last: a crash part-way leaves a table whose newest
//! commit has all its files (a partial restore is reported by the refusal of the next one:
//! delete the destination and run it again).

use std::time::Instant;

use serde::Serialize;

use crate::backup::chain::{ChainError, PlannedFile, Target};
use crate::backup::dir::{BackupDir, DirError};
use crate::backup::manifest::{BackupId, FileRole};
use crate::copy::{
    copy_verified, digest_of, run_until_first_error, CopyError, CopyOptions, DEFAULT_CHUNK_BYTES,
};
use crate::location::TableLocation;
use crate::progress::Progress;

const PARALLEL_COPIES: usize = 8;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup directory.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// No chain gives the version asked for.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The destination is not empty.
    #[error(
        "{dest} is not empty ({found}): restore-backup writes only into an empty or new directory (or an empty prefix)"
    )]
    NotEmpty {
        /// The destination.
        dest: String,
        /// One entry found there.
        found: String,
    },
    /// A backup's copy of a file does not match its manifest.
    #[error("backup {backup}: {file} is damaged: {detail}; this version cannot be restored from it (another chain may cover it: `tidemark backup list`)")]
    Damaged {
        /// The backup.
        backup: BackupId,
        /// The file.
        file: String,
        /// Size or checksum found against the manifest's.
        detail: String,
    },
    /// Copying a file failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// A path that cannot be used.
    #[error("{path}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The version restored.
    pub version: u64,
    /// The chain used, full backup first.
    pub chain: Vec<BackupId>,
    /// Files written.
    pub files: usize,
    /// Data files written.
    pub data_files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time in ms.
    pub elapsed_ms: u64,
}

/// Restores `target` from the backups in `dir` into the empty directory (or object-store
/// prefix) `dest`; both are paths, `file://` or `s3://` URLs.
pub async fn restore_backup(
    dir: &str,
    dest: &str,
    target: Target,
    table_id: Option<&str>,
) -> Result<RestoreReport, RestoreError> {
    restore_backup_on(tidemark_fs::std_fs(), dir, dest, target, table_id).await
}

/// [`restore_backup`] writing the restored table through `fs` (tests inject EIO, failed fsyncs
/// and full disks with a `FaultFs`).
pub async fn restore_backup_on(
    fs: tidemark_fs::SharedFs,
    dir: &str,
    dest: &str,
    target: Target,
    table_id: Option<&str>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let backups = BackupDir::open_shared(dir).await?;
    let to = TableLocation::parse_with_fs(dest, fs).map_err(|e| RestoreError::BadPath {
        path: dest.to_string(),
        reason: e.to_string(),
    })?;
    refuse_non_empty(&to).await?;
    let plan = backups
        .scan()
        .await?
        .catalog
        .restore_plan(table_id, target)?;
    if let Some(dir) = to.local_dir() {
        std::fs::create_dir_all(dir).map_err(|e| RestoreError::BadPath {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let total: u64 = plan.files.iter().map(|f| f.entry.size).sum();
    tracing::info!(
        "restoring version {} into {} from backups {}: {} files, {total} bytes",
        plan.version,
        to,
        plan.chain
            .iter()
            .map(BackupId::as_str)
            .collect::<Vec<_>>()
            .join(" <- "),
        plan.files.len()
    );
    let progress = Progress::bytes(format!("restore version {}", plan.version), total);
    let (data, log): (Vec<&PlannedFile>, Vec<&PlannedFile>) = plan
        .files
        .iter()
        .partition(|f| f.entry.role == FileRole::Data);
    run_until_first_error(
        data.iter()
            .map(|f| restore_file(&backups, &to, f, &progress)),
        PARALLEL_COPIES,
    )
    .await?;
    // The log in version order, `_last_checkpoint` last (plan order: by path, then it).
    for f in &log {
        restore_file(&backups, &to, f, &progress).await?;
    }
    progress.finish();
    Ok(RestoreReport {
        version: plan.version,
        chain: plan.chain.clone(),
        files: plan.files.len(),
        data_files: data.len(),
        bytes: total,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

async fn refuse_non_empty(dest: &TableLocation) -> Result<(), RestoreError> {
    let not_empty = |found: String| RestoreError::NotEmpty {
        dest: dest.to_string(),
        found,
    };
    if let Some(dir) = dest.local_dir() {
        return match std::fs::read_dir(dir) {
            Ok(mut entries) => match entries.next() {
                None => Ok(()),
                Some(entry) => Err(not_empty(
                    entry
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .unwrap_or_else(|e| e.to_string()),
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RestoreError::BadPath {
                path: dir.display().to_string(),
                reason: e.to_string(),
            }),
        };
    }
    let listed = dest
        .store()
        .list_with_delimiter(Some(dest.root()))
        .await
        .map_err(|e| RestoreError::BadPath {
            path: dest.to_string(),
            reason: e.to_string(),
        })?;
    let first = listed
        .common_prefixes
        .first()
        .or_else(|| listed.objects.first().map(|o| &o.location));
    match first.and_then(|p| dest.relative(p)) {
        Some(found) => Err(not_empty(found)),
        None => Ok(()),
    }
}

/// Copies one planned file: the backup's copy is checked against the manifest first, then
/// copied (the copy verified against what was read).
async fn restore_file(
    backups: &BackupDir,
    to: &TableLocation,
    file: &PlannedFile,
    progress: &Progress,
) -> Result<(), RestoreError> {
    let from = backups.table_location(&file.from)?;
    let bad = |e: object_store::path::Error| RestoreError::BadPath {
        path: file.entry.path.clone(),
        reason: e.to_string(),
    };
    let src = from.child(&file.entry.path).map_err(bad)?;
    let dst = to.child(&file.entry.path).map_err(bad)?;
    let damaged = |detail: String| RestoreError::Damaged {
        backup: file.from.clone(),
        file: file.entry.path.clone(),
        detail,
    };
    let held = match digest_of(from.store().as_ref(), &src, DEFAULT_CHUNK_BYTES).await {
        Ok(d) => d,
        Err(CopyError::Read {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Err(damaged("missing from the backup".into())),
        Err(e) => return Err(e.into()),
    };
    if held.size != file.entry.size || held.sha256 != file.entry.sha256 {
        return Err(damaged(format!(
            "{} bytes with SHA-256 {}, the manifest says {} bytes with SHA-256 {}",
            held.size, held.sha256, file.entry.size, file.entry.sha256
        )));
    }
    let report = |n: u64| progress.add(n);
    let outcome = copy_verified(
        from.store().as_ref(),
        &src,
        to.store().as_ref(),
        &dst,
        &CopyOptions {
            expected_size: Some(file.entry.size),
            progress: Some(&report),
            ..CopyOptions::default()
        },
    )
    .await?;
    // The bytes copied are the bytes checked (a change in between is caught here).
    if outcome.digest().map(|d| d.sha256) != Some(file.entry.sha256) {
        return Err(damaged("changed while being restored".into()));
    }
    Ok(())
}
