//! `tidemark verify`: corrupt-file detection for a Delta table's snapshot (the newest version
//! or a given one): every live data file is checked ([`file::check_file`]) and each bad one
//! is reported with the version that added it and the reason. `--repair-from` puts a bad or
//! missing file back from a backup whose copy still matches its manifest, durably.

pub mod file;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backup::chain::Catalog;
use crate::backup::dir::{catalog_of, Backups};
use crate::backup::manifest::{BackupId, FileEntry, FileRole};
use crate::copy::{copy_verified, digest_of, CopyOptions, DEFAULT_CHUNK_BYTES};
use crate::live::{live_files, AddedIn, LiveError};
use crate::location::{open_store, TableLocation};
use crate::log::{LogError, LogListing};
use crate::progress::Progress;
use file::{check_file, check_object, Expected, Problem};

/// Files checked at once.
const PARALLEL_CHECKS: usize = 4;

/// Why verify could not run (bad files are a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading the table's log.
    #[error(transparent)]
    Log(Box<LogError>),
    /// Replaying the snapshot.
    #[error(transparent)]
    Live(Box<LiveError>),
    /// The table path.
    #[error("{path}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A backup given with --manifest or --repair-from.
    #[error("backup {0}")]
    Backup(String),
    /// A check task failed to run.
    #[error("verify task failed: {0}")]
    Task(String),
}

// Boxed: the log's and the copier's errors are large, and these travel far up.
impl From<LogError> for VerifyError {
    fn from(e: LogError) -> Self {
        Self::Log(Box::new(e))
    }
}

impl From<LiveError> for VerifyError {
    fn from(e: LiveError) -> Self {
        Self::Live(Box::new(e))
    }
}

/// What to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The version (default: the newest).
    pub version: Option<u64>,
    /// Decode every page and compare checksums with a backup manifest.
    pub deep: bool,
    /// A backup directory (or one backup) whose manifests give the checksums (a path,
    /// `file://` or `s3://` URL).
    pub manifest: Option<String>,
    /// A backup directory (or one backup) to repair bad files from.
    pub repair_from: Option<String>,
}

/// One bad file.
#[derive(Clone, Debug, Serialize)]
pub struct BadFile {
    /// Relative to the table root.
    pub path: String,
    /// The version that added it.
    pub added_in: AddedIn,
    /// Why it is bad.
    pub problem: Problem,
}

/// What a repair did for one bad file.
#[derive(Clone, Debug, Serialize)]
pub struct Repair {
    /// The file.
    pub path: String,
    /// The backup it came from, when repaired.
    pub from: Option<BackupId>,
    /// True when the file is now good.
    pub repaired: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// The outcome of a verify.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The table.
    pub table: String,
    /// The version checked.
    pub version: u64,
    /// Live data files checked.
    pub files_checked: usize,
    /// Their bytes (per the log).
    pub bytes_checked: u64,
    /// Whether pages were decoded and checksums compared.
    pub deep: bool,
    /// Files whose checksum was compared with a manifest.
    pub checksums_compared: usize,
    /// Bad files, by path.
    pub bad: Vec<BadFile>,
    /// Repairs tried (with --repair-from).
    pub repairs: Vec<Repair>,
    /// Files still bad after repairs.
    pub still_bad: usize,
    /// Wall time in ms.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// True when nothing is bad (any longer).
    pub fn ok(&self) -> bool {
        self.still_bad == 0
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "table     {} at version {}\nchecked   {} data files, {} bytes{}\n",
            self.table,
            self.version,
            self.files_checked,
            self.bytes_checked,
            if self.deep {
                format!(
                    " (deep: every page decoded, {} checksums compared with backup manifests)",
                    self.checksums_compared
                )
            } else {
                String::new()
            }
        );
        for b in &self.bad {
            out += &format!(
                "BAD       {} (added in {}): {}\n",
                b.path, b.added_in, b.problem
            );
        }
        for r in &self.repairs {
            match (&r.from, r.repaired) {
                (Some(from), true) => out += &format!("REPAIRED  {} from backup {from}\n", r.path),
                _ => {
                    out += &format!(
                        "NOT REPAIRED {}: {}\n",
                        r.path,
                        r.reason.as_deref().unwrap_or("unknown")
                    )
                }
            }
        }
        out += &if self.bad.is_empty() {
            "result    OK: every live data file is present and sound\n".to_string()
        } else if self.still_bad == 0 {
            format!(
                "result    REPAIRED: {} bad files put back\n",
                self.bad.len()
            )
        } else {
            format!(
                "result    BAD: {} of {} files bad{}\n",
                self.still_bad,
                self.files_checked,
                if self.repairs.is_empty() {
                    " (--repair-from BACKUP_DIR puts back files a backup holds)"
                } else {
                    ""
                }
            )
        };
        out
    }
}

/// Where each data file's copies are in a set of backups, by path.
struct Copies {
    by_path: BTreeMap<String, Vec<(BackupId, FileEntry)>>,
}

impl Copies {
    fn of(catalog: &Catalog) -> Self {
        let mut by_path: BTreeMap<String, Vec<(BackupId, FileEntry)>> = BTreeMap::new();
        // Newest backup first.
        for m in catalog.backups().collect::<Vec<_>>().into_iter().rev() {
            for f in m.files.iter().filter(|f| f.role == FileRole::Data) {
                by_path
                    .entry(f.path.clone())
                    .or_default()
                    .push((m.id.clone(), f.clone()));
            }
        }
        Self { by_path }
    }

    fn find(&self, path: &str, size: u64) -> impl Iterator<Item = &(BackupId, FileEntry)> {
        self.by_path
            .get(path)
            .into_iter()
            .flatten()
            .filter(move |(_, f)| f.size == size)
    }
}

async fn backups(uri: &str) -> Result<Backups, VerifyError> {
    catalog_of(uri).await.map_err(VerifyError::Backup)
}

/// Checks one data file of `table` (a local file directly, an object by ranged reads).
async fn check(
    table: &TableLocation,
    rel: &str,
    expected: Expected,
    deep: bool,
) -> Result<Result<(), Problem>, VerifyError> {
    if let Some(dir) = table.local_dir() {
        let path = dir.join(rel);
        return tokio::task::spawn_blocking(move || check_file(&path, &expected, deep).map(drop))
            .await
            .map_err(|e| VerifyError::Task(e.to_string()));
    }
    let object = table.child(rel).map_err(|e| VerifyError::BadPath {
        path: rel.to_string(),
        reason: e.to_string(),
    })?;
    Ok(
        check_object(table.store().as_ref(), &object, &expected, deep)
            .await
            .map(drop),
    )
}

/// Verifies the table at `table` (a path, `file://` or `s3://` URL).
pub async fn verify_table(
    table: &str,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let location = open_store(table).map_err(|e| VerifyError::BadPath {
        path: table.to_string(),
        reason: e.to_string(),
    })?;
    let listing = LogListing::list(&location).await?;
    let live = live_files(&location, &listing, options.version).await?;
    let snapshot = &live.snapshot;
    let checksum_source = options.manifest.as_ref().or(options.repair_from.as_ref());
    let copies = match (options.deep, checksum_source) {
        (true, Some(uri)) => Some(Copies::of(&backups(uri).await?.catalog)),
        _ => None,
    };
    let total: u64 = snapshot.files.values().map(|f| f.size).sum();
    let progress = Arc::new(Progress::bytes(
        format!("verify {} version {}", location, snapshot.version),
        total,
    ));
    let mut compared = 0;
    let jobs: Vec<_> = live
        .files()
        .map(|(f, added_in)| {
            let sha256 = copies
                .as_ref()
                .and_then(|c| c.find(&f.path.decoded, f.size).next())
                .map(|(_, e)| e.sha256);
            compared += usize::from(sha256.is_some());
            let expected = Expected {
                size: f.size,
                num_records: f.num_records,
                sha256,
            };
            ((f.clone(), added_in), expected)
        })
        .collect();
    let deep = options.deep;
    let location_ref = &location;
    let bad: Vec<Option<BadFile>> =
        futures::stream::iter(jobs.into_iter().map(|((f, added_in), expected)| {
            let progress = Arc::clone(&progress);
            async move {
                let size = f.size;
                let result = check(location_ref, &f.path.decoded, expected, deep).await?;
                progress.add(size);
                Ok::<_, VerifyError>(result.err().map(|problem| BadFile {
                    path: f.path.decoded.clone(),
                    added_in,
                    problem,
                }))
            }
        }))
        .buffer_unordered(PARALLEL_CHECKS)
        .try_collect()
        .await?;
    progress.finish();
    let mut bad: Vec<BadFile> = bad.into_iter().flatten().collect();
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    for b in &bad {
        tracing::warn!(
            "bad file {} (added in {}): {}",
            b.path,
            b.added_in,
            b.problem
        );
    }
    let mut repairs = Vec::new();
    if let Some(from) = &options.repair_from {
        let held = backups(from).await?;
        let copies = Copies::of(&held.catalog);
        for b in &bad {
            let live = &snapshot.files[&b.path];
            let expected = Expected {
                size: live.size,
                num_records: live.num_records,
                sha256: None,
            };
            repairs.push(repair(&location, &held, &copies, &b.path, expected).await?);
        }
    }
    let still_bad = if options.repair_from.is_some() {
        repairs.iter().filter(|r| !r.repaired).count()
    } else {
        bad.len()
    };
    Ok(VerifyReport {
        table: location.to_string(),
        version: snapshot.version,
        files_checked: snapshot.files.len(),
        bytes_checked: total,
        deep,
        checksums_compared: compared,
        bad,
        repairs,
        still_bad,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Puts `path` back from the first backup whose copy matches its manifest and the log's
/// size, durably (the table's store writes a temporary file, fsyncs, renames, fsyncs the
/// directory), then checks it again as deeply as verify can.
async fn repair(
    table: &TableLocation,
    backups: &Backups,
    copies: &Copies,
    path: &str,
    mut expected: Expected,
) -> Result<Repair, VerifyError> {
    let mut reasons = Vec::new();
    let candidates: Vec<&(BackupId, FileEntry)> = copies.find(path, expected.size).collect();
    if candidates.is_empty() {
        return Ok(Repair {
            path: path.to_string(),
            from: None,
            repaired: false,
            reason: Some(format!(
                "no backup holds {path} with the log's size of {} bytes",
                expected.size
            )),
        });
    }
    for (id, entry) in candidates {
        let attempt = async {
            let from = backups.table_location(id).map_err(|e| e.to_string())?;
            let src = from.child(path).map_err(|e| e.to_string())?;
            let held = digest_of(from.store().as_ref(), &src, DEFAULT_CHUNK_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            if held.sha256 != entry.sha256 || held.size != entry.size {
                return Err(format!(
                    "backup {id}'s copy no longer matches its manifest (SHA-256 {} vs {})",
                    held.sha256, entry.sha256
                ));
            }
            let dst = table.child(path).map_err(|e| e.to_string())?;
            copy_verified(
                from.store().as_ref(),
                &src,
                table.store().as_ref(),
                &dst,
                &CopyOptions {
                    expected_size: Some(entry.size),
                    skip_identical: false,
                    ..CopyOptions::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        };
        match attempt.await {
            Ok(()) => {
                expected.sha256 = Some(entry.sha256);
                let check = check(table, path, expected, true).await?;
                return Ok(match check {
                    Ok(()) => {
                        tracing::info!("repaired {path} from backup {id}");
                        Repair {
                            path: path.to_string(),
                            from: Some(id.clone()),
                            repaired: true,
                            reason: None,
                        }
                    }
                    Err(problem) => Repair {
                        path: path.to_string(),
                        from: Some(id.clone()),
                        repaired: false,
                        reason: Some(format!(
                            "put back from backup {id}, but it is still bad: {problem}"
                        )),
                    },
                });
            }
            Err(reason) => reasons.push(reason),
        }
    }
    Ok(Repair {
        path: path.to_string(),
        from: None,
        repaired: false,
        reason: Some(reasons.join("; ")),
    })
}
