//! Chains of backups, as pure logic over manifests (no I/O): which backups a restore of a
//! version needs and which files it takes from each, which backup the next incremental
//! continues, and which backups retention may delete.
//!
//! A chain is a full backup followed by incrementals, each naming the one before as its
//! parent. Backups form trees rooted at full backups (two incrementals may share a parent).
//! A version `N` is covered by a backup `B` when `B.first_version <= N <= B.last_version`
//! and every ancestor of `B` is present; restoring `N` replays the full backup's snapshot
//! and the commits of the chain up to `N`.

use std::collections::{BTreeMap, BTreeSet};

use super::manifest::{BackupId, FileEntry, FileRole, Manifest};

/// Why a restore or a chain walk cannot be done.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The directory holds no complete backup (of that table).
    #[error("no complete backup{}", .table_id.as_ref().map(|t| format!(" of table {t}")).unwrap_or_default())]
    NoBackups {
        /// The table asked for, if any.
        table_id: Option<String>,
    },
    /// The directory holds backups of several tables and none was chosen.
    #[error("backups of {} tables are here ({}): choose one with --table-id", .0.len(), .0.join(", "))]
    SeveralTables(Vec<String>),
    /// A backup's parent (or an ancestor) is missing.
    #[error(
        "backup {id} cannot be restored: its chain needs {missing}, which is missing or unfinished"
    )]
    Broken {
        /// The backup whose chain is broken.
        id: BackupId,
        /// The first missing ancestor.
        missing: BackupId,
    },
    /// No chain covers the version.
    #[error("version {version} is not covered by any backup chain; covered: {}", ranges(.covered))]
    NotCovered {
        /// The version asked for.
        version: u64,
        /// The covered version ranges.
        covered: Vec<(u64, u64)>,
    },
    /// The timestamp is older than every covered version.
    #[error("no covered version was committed at or before {timestamp_ms} ms; the oldest covered is version {oldest_version} at {oldest_ms} ms")]
    TooEarly {
        /// The timestamp asked for.
        timestamp_ms: i64,
        /// The oldest covered version.
        oldest_version: u64,
        /// Its commit timestamp.
        oldest_ms: i64,
    },
}

fn ranges(covered: &[(u64, u64)]) -> String {
    if covered.is_empty() {
        return "none".into();
    }
    format_ranges(covered)
}

/// Version ranges as people read them: `3`, `5..=9`, joined by `, ` (empty for none), so
/// errors and `tidemark backup list` write them alike.
pub fn format_ranges(covered: &[(u64, u64)]) -> String {
    covered
        .iter()
        .map(|(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a}..={b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a restore aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The newest covered version.
    Latest,
    /// This version.
    Version(u64),
    /// The newest covered version committed at or before this time (ms since the epoch).
    Timestamp(i64),
}

/// One file a restore copies, and the backup it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFile {
    /// The backup holding the copy.
    pub from: BackupId,
    /// The file as that backup's manifest lists it.
    pub entry: FileEntry,
}

/// What a restore of one version copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    /// The version restored.
    pub version: u64,
    /// The chain used, full backup first.
    pub chain: Vec<BackupId>,
    /// Log files (commits, checkpoints, `_last_checkpoint`) up to the version, then the data
    /// files live at it; each path once.
    pub files: Vec<PlannedFile>,
}

/// What retention deletes and why the rest stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Backups to delete (whole trees of old full backups).
    pub delete: Vec<BackupId>,
    /// Backups kept.
    pub keep: Vec<BackupId>,
    /// Backups whose chain is already broken: never deleted by retention, listed to say so.
    pub broken: Vec<BackupId>,
}

/// The complete backups of one backup directory (any number of tables).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    backups: BTreeMap<BackupId, Manifest>,
}

impl Catalog {
    /// A catalog of these manifests (complete backups only: an unfinished one has none).
    pub fn new(manifests: impl IntoIterator<Item = Manifest>) -> Self {
        Self {
            backups: manifests.into_iter().map(|m| (m.id.clone(), m)).collect(),
        }
    }

    /// Adds a backup just written (so a prune right after it needs no second scan).
    pub fn insert(&mut self, manifest: Manifest) {
        self.backups.insert(manifest.id.clone(), manifest);
    }

    /// Every backup, oldest id first.
    pub fn backups(&self) -> impl Iterator<Item = &Manifest> {
        self.backups.values()
    }

    /// The backup named `id`.
    pub fn get(&self, id: &BackupId) -> Option<&Manifest> {
        self.backups.get(id)
    }

    /// The table ids present.
    pub fn table_ids(&self) -> BTreeSet<&str> {
        self.backups.values().map(|m| m.table_id.as_str()).collect()
    }

    /// The chain ending at `leaf`, full backup first.
    pub fn chain(&self, leaf: &BackupId) -> Result<Vec<&Manifest>, ChainError> {
        let mut chain: Vec<&Manifest> = Vec::new();
        let mut at = leaf.clone();
        loop {
            let Some(m) = self.backups.get(&at) else {
                return Err(ChainError::Broken {
                    id: leaf.clone(),
                    missing: at,
                });
            };
            // A parent always ends where its child starts, so versions strictly decrease up
            // the chain; a cycle (hand-edited manifests) would break this and ends the walk.
            if let Some(child) = chain.last() {
                if m.last_version.checked_add(1) != Some(child.first_version)
                    || m.table_id != child.table_id
                {
                    return Err(ChainError::Broken {
                        id: leaf.clone(),
                        missing: at,
                    });
                }
            }
            chain.push(m);
            match &m.parent {
                None => break,
                Some(p) => at = p.clone(),
            }
        }
        chain.reverse();
        Ok(chain)
    }

    fn table_of<'a>(&'a self, table_id: Option<&'a str>) -> Result<&'a str, ChainError> {
        match table_id {
            Some(t) if self.table_ids().contains(t) => Ok(t),
            Some(t) => Err(ChainError::NoBackups {
                table_id: Some(t.to_string()),
            }),
            None => {
                let ids = self.table_ids();
                match ids.len() {
                    0 => Err(ChainError::NoBackups { table_id: None }),
                    1 => Ok(ids.into_iter().next().unwrap_or_default()),
                    _ => Err(ChainError::SeveralTables(
                        ids.into_iter().map(str::to_string).collect(),
                    )),
                }
            }
        }
    }

    /// The backup the next incremental of `table_id` continues: of the backups whose chain
    /// is whole, the one with the newest version (ties: the newest id).
    pub fn next_parent(&self, table_id: &str) -> Option<&Manifest> {
        self.backups
            .values()
            .filter(|m| m.table_id == table_id && self.chain(&m.id).is_ok())
            .max_by(|a, b| (a.last_version, &a.id).cmp(&(b.last_version, &b.id)))
    }

    /// Every covered version of the table with its commit timestamp, oldest first.
    pub fn covered_versions(&self, table_id: Option<&str>) -> Result<Vec<(u64, i64)>, ChainError> {
        let table = self.table_of(table_id)?;
        let mut out = BTreeMap::new();
        for m in self.backups.values().filter(|m| m.table_id == table) {
            if self.chain(&m.id).is_ok() {
                for c in &m.commits {
                    out.insert(c.version, c.timestamp_ms);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The covered version ranges of the table (for messages).
    pub fn covered_ranges(&self, table_id: Option<&str>) -> Result<Vec<(u64, u64)>, ChainError> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (v, _) in self.covered_versions(table_id)? {
            match out.last_mut() {
                Some((_, end)) if *end + 1 == v => *end = v,
                _ => out.push((v, v)),
            }
        }
        Ok(out)
    }

    /// Which backups and files restore `target` of the table (`table_id`, or the only table).
    ///
    /// Of the chains covering the version, the shortest is used (fewest backups to read),
    /// then the newest.
    pub fn restore_plan(
        &self,
        table_id: Option<&str>,
        target: Target,
    ) -> Result<RestorePlan, ChainError> {
        let table = self.table_of(table_id)?;
        let covered = self.covered_versions(Some(table))?;
        let version = match target {
            Target::Version(v) => v,
            Target::Latest => match covered.last() {
                Some((v, _)) => *v,
                None => {
                    return Err(ChainError::NoBackups {
                        table_id: Some(table.to_string()),
                    })
                }
            },
            Target::Timestamp(t) => match covered.iter().rev().find(|(_, ts)| *ts <= t) {
                Some((v, _)) => *v,
                None => {
                    let (oldest_version, oldest_ms) = covered.first().copied().unwrap_or((0, 0));
                    return Err(ChainError::TooEarly {
                        timestamp_ms: t,
                        oldest_version,
                        oldest_ms,
                    });
                }
            },
        };
        let chain = self
            .backups
            .values()
            .filter(|m| {
                m.table_id == table && m.first_version <= version && version <= m.last_version
            })
            .filter_map(|m| self.chain(&m.id).ok())
            .min_by(|a, b| {
                (a.len(), std::cmp::Reverse(&a[a.len() - 1].id))
                    .cmp(&(b.len(), std::cmp::Reverse(&b[b.len() - 1].id)))
            })
            .ok_or_else(|| ChainError::NotCovered {
                version,
                covered: self.covered_ranges(Some(table)).unwrap_or_default(),
            })?;
        Ok(plan_chain(&chain, version))
    }

    /// Retention: per table, keep the `keep_full` newest full backups and everything built
    /// on them; delete the trees of older full backups. Never deletes a backup that a kept
    /// backup's chain needs, nor the chain of the backup the next incremental continues, nor
    /// a backup whose chain is already broken (that is for a person to look at).
    ///
    /// `keep_full` must be at least 1 (checked by the caller: 0 would delete every chain).
    pub fn prune_plan(&self, keep_full: usize) -> PrunePlan {
        let keep_full = keep_full.max(1);
        let mut keep: BTreeSet<BackupId> = BTreeSet::new();
        let mut broken = Vec::new();
        let mut root_of: BTreeMap<&BackupId, &BackupId> = BTreeMap::new();
        for m in self.backups.values() {
            match self.chain(&m.id) {
                Ok(chain) => {
                    root_of.insert(&m.id, &chain[0].id);
                }
                Err(_) => broken.push(m.id.clone()),
            }
        }
        for table in self.table_ids() {
            let mut fulls: Vec<&Manifest> = self
                .backups
                .values()
                .filter(|m| m.table_id == table && m.is_full())
                .collect();
            fulls.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
            let kept_roots: BTreeSet<&BackupId> =
                fulls.iter().take(keep_full).map(|m| &m.id).collect();
            for (id, root) in &root_of {
                if kept_roots.contains(root) {
                    keep.insert((*id).clone());
                }
            }
            if let Some(next) = self.next_parent(table) {
                if let Ok(chain) = self.chain(&next.id) {
                    keep.extend(chain.iter().map(|m| m.id.clone()));
                }
            }
        }
        keep.extend(broken.iter().cloned());
        let delete = self
            .backups
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        PrunePlan {
            delete,
            keep: keep.into_iter().collect(),
            broken,
        }
    }
}

/// The files restoring `version` from `chain` (full backup first, covering the version).
fn plan_chain(chain: &[&Manifest], version: u64) -> RestorePlan {
    let mut log: BTreeMap<String, PlannedFile> = BTreeMap::new();
    let mut last_checkpoint: Option<(u64, PlannedFile)> = None;
    // Data files live at the version, each with the backup holding its newest copy.
    let mut live: BTreeMap<String, BackupId> = BTreeMap::new();
    for (i, m) in chain.iter().enumerate() {
        for f in &m.files {
            let planned = || PlannedFile {
                from: m.id.clone(),
                entry: f.clone(),
            };
            match f.role {
                FileRole::Commit { version: v } | FileRole::Checkpoint { version: v }
                    if v <= version =>
                {
                    log.insert(f.path.clone(), planned());
                }
                FileRole::LastCheckpoint { version: v }
                    if v <= version && last_checkpoint.as_ref().is_none_or(|(at, _)| *at <= v) =>
                {
                    last_checkpoint = Some((v, planned()));
                }
                FileRole::Data if i == 0 => {
                    live.insert(f.path.clone(), m.id.clone());
                }
                _ => {}
            }
        }
        if i > 0 {
            for c in m.commits.iter().filter(|c| c.version <= version) {
                for r in &c.removes {
                    live.remove(r);
                }
                for a in &c.adds {
                    live.insert(a.clone(), m.id.clone());
                }
            }
        }
    }
    let by_id: BTreeMap<&BackupId, &&Manifest> = chain.iter().map(|m| (&m.id, m)).collect();
    let mut files: Vec<PlannedFile> = log.into_values().collect();
    files.extend(last_checkpoint.map(|(_, f)| f));
    for (path, from) in live {
        // Invariant (Manifest::validate): a full backup holds its data files and an
        // incremental holds every file its commits add, so the entry is there.
        if let Some(entry) = by_id.get(&from).and_then(|m| m.file(&path)) {
            files.push(PlannedFile {
                from,
                entry: entry.clone(),
            });
        }
    }
    RestorePlan {
        version,
        chain: chain.iter().map(|m| m.id.clone()).collect(),
        files,
    }
}

#[cfg(test)]
mod tests;
