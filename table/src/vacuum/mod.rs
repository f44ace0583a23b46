//! A vacuum that cannot break recovery: deletes data files no longer referenced for longer
//! than the retention, except those something still promised needs (see [`decide`] for the
//! rule, pure and property-tested). This module reads the facts ([`gather`]: the table's
//! directory and log, replayed once) and deletes ([`execute`]).
//!
//! What a caller promises is passed in as [`Promises`] (the command line reads them from the
//! pipeline's checkpoint store, its `[replica]` and the backup directories): the table
//! versions of retained Tidemark checkpoints, replicas' positions, backup directories.

pub mod decide;

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tidemark_connectors::delta::parse_data_file_name;
use tracing::info;

pub use decide::{decide, FileFacts, Kept, Need, VacuumFacts, VacuumPlan, VacuumRefusal};

use crate::location::TableLocation;
use crate::log::{read_commit, Action, Commit, LogError, LogListing};
use crate::snapshot::Snapshot;

/// What is still promised, besides the newest version.
#[derive(Debug, Clone, Default)]
pub struct Promises {
    /// Retained Tidemark checkpoints: (epoch, table version it names).
    pub retained_checkpoints: Vec<(u64, u64)>,
    /// Replicas: (location, newest version; `None` when empty).
    pub replicas: Vec<(String, Option<u64>)>,
    /// Newest backup chains: (backup directory, newest version the chain holds).
    pub backup_chains: Vec<(String, u64)>,
    /// Pipelines writing the table (txn appIds), besides those the log names.
    pub pipelines: Vec<String>,
}

/// A vacuum's errors.
#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The table's directory could not be listed.
    #[error("vacuum: cannot list the files of table {table}: {source}")]
    List {
        /// The table.
        table: String,
        /// The cause.
        source: object_store::Error,
    },
    /// No table there.
    #[error("vacuum: {0} is not a Delta table (no _delta_log commits)")]
    NotATable(String),
    /// A deletion failed (the files before it are gone, the rest stay).
    #[error("vacuum: deleting {file} of table {table} failed after {deleted} files: {source}")]
    Delete {
        /// The table.
        table: String,
        /// The file.
        file: String,
        /// Files deleted before it.
        deleted: usize,
        /// The cause.
        source: object_store::Error,
    },
}

/// The log replayed once: the newest snapshot, when each unreferenced file was removed, the
/// txn versions, and what each promised version needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogNeeds {
    /// The newest version.
    pub newest: u64,
    /// Live files at the newest version.
    pub live: BTreeSet<String>,
    /// When each file no longer live was last removed (commit timestamp, ms).
    pub removed_at_ms: BTreeMap<String, i64>,
    /// Txn version by appId.
    pub txn: BTreeMap<String, i64>,
    /// What needs each file.
    pub needs: BTreeMap<String, BTreeSet<Need>>,
    /// Needs of every file (promised versions the log no longer tells).
    pub needs_all: BTreeSet<Need>,
}

/// Replays `commits` (consecutive, oldest first) on `base` (the snapshot just before the
/// first of them; its files count as added at its version) and works out what `promises`
/// need. Pure: the model the vacuum's proptests check.
///
/// - a retained checkpoint at table version `v`: every file live at `v`;
/// - a replica or backup chain at `v`: every file added after `v` (what the next copy reads);
///   an empty replica: every file added at all;
/// - a promised version before `base` (its log is gone): [`Need::UnknownVersion`], unless it
///   is `base`'s own version.
pub fn log_needs(
    base: &Snapshot,
    base_known: bool,
    commits: &[(Commit, i64)],
    promises: &Promises,
) -> LogNeeds {
    let mut live: BTreeSet<String> = base.files.keys().cloned().collect();
    let mut added_in: BTreeMap<String, u64> =
        live.iter().map(|p| (p.clone(), base.version)).collect();
    let mut out = LogNeeds {
        newest: commits.last().map_or(base.version, |(c, _)| c.version),
        ..LogNeeds::default()
    };
    let first = if base_known {
        Some(base.version)
    } else {
        commits.first().map(|(c, _)| c.version)
    };
    let at_version = |v: u64, live: &BTreeSet<String>, out: &mut LogNeeds| {
        for (epoch, tv) in &promises.retained_checkpoints {
            if *tv == v {
                for p in live {
                    out.needs
                        .entry(p.clone())
                        .or_default()
                        .insert(Need::RetainedCheckpoint {
                            epoch: *epoch,
                            table_version: *tv,
                        });
                }
            }
        }
    };
    if base_known {
        at_version(base.version, &live, &mut out);
    }
    for (commit, ts) in commits {
        for a in &commit.actions {
            match a {
                Action::Remove(r) if live.remove(&r.path.decoded) => {
                    out.removed_at_ms.insert(r.path.decoded.clone(), *ts);
                }
                Action::Txn { app_id, version } => {
                    out.txn.insert(app_id.clone(), *version);
                }
                _ => {}
            }
        }
        for add in commit.adds() {
            live.insert(add.path.decoded.clone());
            added_in.insert(add.path.decoded.clone(), commit.version);
            out.removed_at_ms.remove(&add.path.decoded);
        }
        at_version(commit.version, &live, &mut out);
    }
    for (epoch, tv) in &promises.retained_checkpoints {
        if first.is_none_or(|f| *tv < f) || *tv > out.newest {
            out.needs_all.insert(Need::UnknownVersion {
                what: format!("retained Tidemark checkpoint of epoch {epoch}"),
                version: *tv,
            });
        }
    }
    let copies = promises
        .replicas
        .iter()
        .map(|(r, v)| {
            (
                v.map_or(-1, |v| v as i64),
                Need::Replica {
                    replica: r.clone(),
                    version: v.unwrap_or(0),
                },
            )
        })
        .chain(promises.backup_chains.iter().map(|(d, v)| {
            (
                *v as i64,
                Need::BackupChain {
                    dir: d.clone(),
                    version: *v,
                },
            )
        }));
    for (at, need) in copies {
        for (p, v) in &added_in {
            if *v as i64 > at {
                out.needs.entry(p.clone()).or_default().insert(need.clone());
            }
        }
    }
    out.live = live;
    out
}

/// Reads the facts for [`decide`]: the table's data files (hidden and `_` paths left out, as
/// Delta's vacuum does), its log replayed once from its start (version 0, or the oldest
/// checkpoint the later commits continue), and the files in flight: a pipeline's files named
/// for an epoch above its txn version, and a compaction's files while it may still commit.
///
/// A writer's log cleanup may delete old commits and checkpoints between the listing and their
/// reads (they are covered by a newer checkpoint by then), in any order: a file gone that way
/// makes the facts be gathered again from a fresh listing, after a growing wait (at most
/// [`GATHER_ATTEMPTS`] times), never a failed vacuum.
pub async fn gather(
    location: &TableLocation,
    promises: &Promises,
    now_ms: i64,
    retain_ms: i64,
    table_min_retain_ms: i64,
    force: bool,
) -> Result<VacuumFacts, VacuumError> {
    let mut attempt = 1;
    loop {
        match gather_once(
            location,
            promises,
            now_ms,
            retain_ms,
            table_min_retain_ms,
            force,
        )
        .await
        {
            Err(VacuumError::Log(e)) if attempt < GATHER_ATTEMPTS && vanished(&e) => {
                let wait = GATHER_BACKOFF * 2u32.pow(attempt - 1);
                tracing::info!(table = %location, error = %e, attempt, wait_ms = wait.as_millis() as u64, "vacuum: a log file went (log cleanup) while the log was read; reading it again");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// How many times [`gather`] reads the log when log files vanish under it.
pub const GATHER_ATTEMPTS: u32 = 6;

/// [`gather`]'s first wait before reading the log again, doubled each time (50 ms to 800 ms,
/// 1.55 s in all): a cleanup deletes one file at a time, each delete fsyncing the directory,
/// so on a loaded disk it can take longer than a read of the log (seen in CI: five reads
/// back to back, 16 ms in all, each found the cleanup still going).
const GATHER_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// True when `e` says a log file the listing named is gone: a commit
/// ([`LogError::MissingVersion`]) or a checkpoint part (a read that found nothing).
fn vanished(e: &LogError) -> bool {
    match e {
        LogError::MissingVersion { .. } => true,
        LogError::Read { source, .. } => matches!(source, object_store::Error::NotFound { .. }),
        _ => false,
    }
}

/// One [`gather`] from one listing of the log.
async fn gather_once(
    location: &TableLocation,
    promises: &Promises,
    now_ms: i64,
    retain_ms: i64,
    table_min_retain_ms: i64,
    force: bool,
) -> Result<VacuumFacts, VacuumError> {
    let table = location.to_string();
    let listing = LogListing::list(location).await?;
    let Some(newest) = listing.newest_version() else {
        return Err(VacuumError::NotATable(table));
    };
    // The replay's start: version 0 when every commit is there, else the oldest checkpoint
    // that an unbroken run of commits continues to the newest version.
    let (base, base_known, start) = match listing.oldest_replay_start() {
        Ok(None) => (Snapshot::default(), false, 0),
        Ok(Some(cp)) => (
            Snapshot::load(location, &listing, cp, true).await?,
            true,
            cp + 1,
        ),
        Err(missing) => {
            return Err(LogError::MissingVersion {
                table: table.clone(),
                version: missing,
                file: "a commit, with no checkpoint after it that the later commits continue"
                    .into(),
            }
            .into())
        }
    };
    let mut commits = Vec::new();
    for v in start..=newest {
        let commit = read_commit(location, v).await?.parse(&table)?;
        let ts = commit
            .timestamp_ms()
            .or_else(|| listing.commit(v).map(|f| f.last_modified_ms))
            .unwrap_or(0);
        commits.push((commit, ts));
    }
    let needs = log_needs(&base, base_known, &commits, promises);

    let metas: Vec<object_store::ObjectMeta> = location
        .store()
        .list(Some(location.root()))
        .try_collect()
        .await
        .map_err(|source| VacuumError::List {
            table: table.clone(),
            source,
        })?;
    let mut pipelines: BTreeSet<String> = needs.txn.keys().cloned().collect();
    pipelines.extend(promises.pipelines.iter().cloned());
    let mut facts = VacuumFacts {
        now_ms,
        retain_ms,
        table_min_retain_ms,
        force,
        // Moved, not cloned: the rest of `needs` is read below by its other fields only.
        live: needs.live,
        needs: needs.needs,
        needs_all: needs.needs_all,
        log_version: needs.newest,
        ..VacuumFacts::default()
    };
    for meta in metas {
        let Some(rel) = location.relative(&meta.location) else {
            continue;
        };
        if rel
            .split('/')
            .any(|part| part.starts_with('_') || part.starts_with('.'))
        {
            continue;
        }
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        for p in &pipelines {
            if let Some(parsed) = parse_data_file_name(p, name) {
                let committed = needs.txn.get(p).copied().unwrap_or(-1);
                if parsed.epoch.get() as i64 > committed && !facts.live.contains(&rel) {
                    facts
                        .needs
                        .entry(rel.clone())
                        .or_default()
                        .insert(Need::InFlightEpoch {
                            pipeline: p.clone(),
                            epoch: parsed.epoch.get(),
                        });
                }
            }
        }
        if let Some(planned_on) = crate::optimize::planned_on(name) {
            if !facts.live.contains(&rel)
                && needs.newest <= planned_on + crate::optimize::MAX_ATTEMPTS as u64 + 1
            {
                facts
                    .needs
                    .entry(rel.clone())
                    .or_default()
                    .insert(Need::CompactionInFlight { planned_on });
            }
        }
        facts.files.push(FileFacts {
            removed_at_ms: needs.removed_at_ms.get(&rel).copied(),
            path: rel,
            size: meta.size,
            modified_ms: meta.last_modified.timestamp_millis(),
        });
    }
    Ok(facts)
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VacuumOutcome {
    /// Files deleted (a file already gone counts).
    pub deleted: usize,
    /// The newest version read right before deleting (the plan's, when nothing came after).
    pub rechecked_to: u64,
    /// Files of the plan that a commit after the plan's version references again (a restore,
    /// or any commit re-adding them), with that commit's version: not deleted.
    pub spared: Vec<(String, u64)>,
}

/// The files each commit after `after` adds (path -> the newest version adding it), and the
/// newest version: read from the log as it is now.
pub async fn referenced_after(
    location: &TableLocation,
    after: u64,
) -> Result<(BTreeMap<String, u64>, u64), VacuumError> {
    let table = location.to_string();
    let listing = LogListing::list(location).await?;
    let newest = listing
        .newest_version()
        .ok_or_else(|| VacuumError::NotATable(table.clone()))?;
    let mut added = BTreeMap::new();
    for v in after.saturating_add(1)..=newest {
        let commit = read_commit(location, v).await?.parse(&table)?;
        for add in commit.adds() {
            added.insert(add.path.decoded.clone(), v);
        }
    }
    Ok((added, newest))
}

/// Files with a number each: a size (to delete) or a version (spared).
pub type PathsWith = Vec<(String, u64)>;

/// The plan's deletions without the files in `referenced` (pure): (to delete with its size,
/// spared with the version referencing it).
pub fn drop_referenced(
    plan: &VacuumPlan,
    referenced: &BTreeMap<String, u64>,
) -> (PathsWith, PathsWith) {
    let (mut delete, mut spared) = (Vec::new(), Vec::new());
    for (path, size) in &plan.delete {
        match referenced.get(path) {
            Some(v) => spared.push((path.clone(), *v)),
            None => delete.push((path.clone(), *size)),
        }
    }
    (delete, spared)
}

/// Deletes the plan's files (durably on local tables: each deletion's directory is fsynced).
/// A file already gone counts as deleted.
///
/// Right before deleting it re-reads the log: every version committed after the plan's
/// ([`VacuumPlan::planned_at`]) is read, and a file any of them adds again (a `tidemark
/// restore`, or any commit re-adding it, landed between the plan and now) is not deleted
/// (listed in [`VacuumOutcome::spared`]). If those commits cannot be read, nothing is
/// deleted. (A commit landing after this re-read and before the deletions is not seen: the
/// window is the deletion of the plan's files, not the whole plan.)
pub async fn execute(
    location: &TableLocation,
    plan: &VacuumPlan,
) -> Result<VacuumOutcome, VacuumError> {
    let table = location.to_string();
    let (referenced, newest) = referenced_after(location, plan.planned_at).await?;
    let (delete, spared) = drop_referenced(plan, &referenced);
    for (path, version) in &spared {
        tracing::warn!(table = %table, file = %path, version, planned_at = plan.planned_at, "not deleting a file a commit after the vacuum's plan references again");
    }
    let mut deleted = 0;
    for (path, _) in &delete {
        let object = location.child(path).map_err(|e| VacuumError::Delete {
            table: table.clone(),
            file: path.clone(),
            deleted,
            source: object_store::Error::InvalidPath { source: e },
        })?;
        match location.store().delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(source) => {
                return Err(VacuumError::Delete {
                    table,
                    file: path.clone(),
                    deleted,
                    source,
                })
            }
        }
    }
    if deleted > 0 {
        let bytes: u64 = delete.iter().map(|(_, s)| *s).sum();
        info!(table = %table, deleted, bytes, "vacuum deleted unreferenced files");
    }
    Ok(VacuumOutcome {
        deleted,
        rechecked_to: newest,
        spared,
    })
}

#[cfg(test)]
mod tests;
