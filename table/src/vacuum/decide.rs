//! The vacuum decision, pure: which unreferenced files may be deleted, and for each one kept,
//! what keeps it. No I/O here: [`super::gather`] reads the facts, [`super::execute`] deletes.
//!
//! The rule (the invariant every test checks): a file is deleted only if
//! 1. the newest version does not reference it,
//! 2. it has been unreferenced for at least the retention (since the commit that removed it;
//!    a file no commit ever named, since it was last modified), and
//! 3. nothing still promised needs it: a retained Tidemark checkpoint's table version (a
//!    rewind target), a replica that has not copied it, the newest backup chain that has not
//!    backed it up, an epoch in flight that will commit it.
//!
//! A retention below the table's `delta.deletedFileRetentionDuration` is refused unless forced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One file of the table's directory that the newest version may or may not reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// Path relative to the table root (decoded).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modified, ms since the Unix epoch.
    pub modified_ms: i64,
    /// When a commit removed it (ms; the newest such commit), `None` if no commit the log
    /// still holds removed it.
    pub removed_at_ms: Option<i64>,
}

/// Something that still needs a file: what a refusal names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// A retained Tidemark checkpoint (a `--rewind-to` target) whose table version is this.
    RetainedCheckpoint {
        /// The checkpoint's epoch.
        epoch: u64,
        /// The table version it names.
        table_version: u64,
    },
    /// A replica at `version` that has not copied the file yet.
    Replica {
        /// The replica's location.
        replica: String,
        /// Its newest version.
        version: u64,
    },
    /// The newest backup chain, which ends at `version` and has not backed the file up yet.
    BackupChain {
        /// The backup directory.
        dir: String,
        /// The newest version the chain holds.
        version: u64,
    },
    /// A data file of an epoch the table does not hold yet (the pipeline will commit it).
    InFlightEpoch {
        /// The pipeline (txn appId).
        pipeline: String,
        /// The epoch.
        epoch: u64,
    },
    /// A file a compaction planned on `planned_on` wrote and may still commit (it gives up
    /// after [`crate::optimize::MAX_ATTEMPTS`] versions have gone by).
    CompactionInFlight {
        /// The version the compaction planned on.
        planned_on: u64,
    },
    /// A promised version whose log is gone, so what it needs cannot be told: keep everything.
    UnknownVersion {
        /// What promised it (e.g. "retained checkpoint epoch 7").
        what: String,
        /// The version.
        version: u64,
    },
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::RetainedCheckpoint {
                epoch,
                table_version,
            } => write!(
                f,
                "retained Tidemark checkpoint of epoch {epoch} (rewind target, table version {table_version})"
            ),
            Need::Replica { replica, version } => {
                write!(f, "replica {replica} (at version {version}, not copied yet)")
            }
            Need::BackupChain { dir, version } => write!(
                f,
                "newest backup chain in {dir} (ends at version {version}, not backed up yet)"
            ),
            Need::InFlightEpoch { pipeline, epoch } => write!(
                f,
                "epoch {epoch} of pipeline {pipeline} in flight (not committed yet)"
            ),
            Need::CompactionInFlight { planned_on } => write!(
                f,
                "a compaction planned on version {planned_on} that may still commit it"
            ),
            Need::UnknownVersion { what, version } => write!(
                f,
                "{what} promises version {version}, whose log is gone: which files it needs cannot be told"
            ),
        }
    }
}

/// Everything the decision needs.
#[derive(Debug, Clone, Default)]
pub struct VacuumFacts {
    /// Now, ms since the Unix epoch.
    pub now_ms: i64,
    /// The retention asked for, ms.
    pub retain_ms: i64,
    /// The table's `delta.deletedFileRetentionDuration`, ms.
    pub table_min_retain_ms: i64,
    /// Go below the table's retention anyway.
    pub force: bool,
    /// Files the newest version references.
    pub live: BTreeSet<String>,
    /// Every data file in the table's directory (hidden and `_` paths excluded).
    pub files: Vec<FileFacts>,
    /// What still needs each file (by path).
    pub needs: BTreeMap<String, BTreeSet<Need>>,
    /// Needs that hold every unreferenced file ([`Need::UnknownVersion`]).
    pub needs_all: BTreeSet<Need>,
    /// The newest table version these facts were read at (the plan re-checks the commits
    /// after it right before deleting: see [`super::execute`]).
    pub log_version: u64,
}

/// Why a file stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The newest version references it.
    Live,
    /// Unreferenced for less than the retention.
    WithinRetention {
        /// For how long it has been unreferenced, ms.
        unreferenced_ms: i64,
    },
    /// Old enough, but still needed (the refusal: names what blocks).
    Needed(Vec<Need>),
}

/// The decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumPlan {
    /// Files to delete, with their sizes.
    pub delete: Vec<(String, u64)>,
    /// Files kept, and why.
    pub kept: Vec<(String, Kept)>,
    /// The newest table version the plan was made on ([`VacuumFacts::log_version`]).
    pub planned_at: u64,
}

impl VacuumPlan {
    /// Bytes the deletions free.
    pub fn bytes(&self) -> u64 {
        self.delete.iter().map(|(_, s)| *s).sum()
    }

    /// The files old enough to go that something still needs, with what needs them.
    pub fn blocked(&self) -> impl Iterator<Item = (&str, &[Need])> {
        self.kept.iter().filter_map(|(p, k)| match k {
            Kept::Needed(n) => Some((p.as_str(), n.as_slice())),
            _ => None,
        })
    }
}

/// Refused before looking at any file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VacuumRefusal {
    /// The retention is below the table's `delta.deletedFileRetentionDuration`.
    #[error("a retention of {retain} is below the table's delta.deletedFileRetentionDuration of {table}: readers and writers within that window may still need the files; pass --force to go below it")]
    RetentionTooShort {
        /// The retention asked for (human).
        retain: String,
        /// The table's (human).
        table: String,
    },
    /// A negative retention.
    #[error("the retention must not be negative")]
    NegativeRetention,
}

/// Milliseconds as `168h`, `90s`, `1500ms`.
pub fn human_ms(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Decides (see the module documentation).
pub fn decide(facts: &VacuumFacts) -> Result<VacuumPlan, VacuumRefusal> {
    if facts.retain_ms < 0 {
        return Err(VacuumRefusal::NegativeRetention);
    }
    if facts.retain_ms < facts.table_min_retain_ms && !facts.force {
        return Err(VacuumRefusal::RetentionTooShort {
            retain: human_ms(facts.retain_ms),
            table: human_ms(facts.table_min_retain_ms),
        });
    }
    let mut plan = VacuumPlan {
        planned_at: facts.log_version,
        ..VacuumPlan::default()
    };
    for file in &facts.files {
        if facts.live.contains(&file.path) {
            plan.kept.push((file.path.clone(), Kept::Live));
            continue;
        }
        let since = file
            .removed_at_ms
            .map_or(file.modified_ms, |r| r.max(file.modified_ms));
        let unreferenced_ms = facts.now_ms - since;
        if unreferenced_ms < facts.retain_ms {
            plan.kept
                .push((file.path.clone(), Kept::WithinRetention { unreferenced_ms }));
            continue;
        }
        let mut needs: Vec<Need> = facts.needs_all.iter().cloned().collect();
        if let Some(n) = facts.needs.get(&file.path) {
            needs.extend(n.iter().cloned());
        }
        if needs.is_empty() {
            plan.delete.push((file.path.clone(), file.size));
        } else {
            needs.sort();
            needs.dedup();
            plan.kept.push((file.path.clone(), Kept::Needed(needs)));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn need(i: u8) -> Need {
        match i % 4 {
            0 => Need::RetainedCheckpoint {
                epoch: i as u64,
                table_version: i as u64,
            },
            1 => Need::Replica {
                replica: "r".into(),
                version: i as u64,
            },
            2 => Need::BackupChain {
                dir: "b".into(),
                version: i as u64,
            },
            _ => Need::InFlightEpoch {
                pipeline: "p".into(),
                epoch: i as u64,
            },
        }
    }

    fn arb_facts() -> impl Strategy<Value = VacuumFacts> {
        let file = (
            0u8..40,
            0u64..1000,
            0i64..10_000,
            proptest::option::of(0i64..10_000),
            any::<bool>(),
            proptest::collection::vec(0u8..8, 0..3),
        );
        (
            proptest::collection::vec(file, 0..40),
            0i64..10_000,
            0i64..10_000,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(files, retain_ms, min, force, unknown)| {
                let mut f = VacuumFacts {
                    now_ms: 10_000,
                    retain_ms,
                    table_min_retain_ms: min,
                    force,
                    ..VacuumFacts::default()
                };
                let mut seen = BTreeSet::new();
                for (id, size, modified, removed, live, needs) in files {
                    let path = format!("f{id}.parquet");
                    if !seen.insert(path.clone()) {
                        continue;
                    }
                    if live {
                        f.live.insert(path.clone());
                    }
                    if !needs.is_empty() {
                        f.needs
                            .insert(path.clone(), needs.into_iter().map(need).collect());
                    }
                    f.files.push(FileFacts {
                        path,
                        size,
                        modified_ms: modified,
                        removed_at_ms: removed,
                    });
                }
                if unknown {
                    f.needs_all.insert(Need::UnknownVersion {
                        what: "retained checkpoint epoch 1".into(),
                        version: 0,
                    });
                }
                f
            })
    }

    proptest! {
        /// Never a live, young or needed file; every other file goes; a refusal names what
        /// blocks; too short a retention is refused unless forced.
        #[test]
        fn deletes_exactly_the_old_unreferenced_unneeded_files(facts in arb_facts()) {
            let plan = match decide(&facts) {
                Ok(plan) => {
                    prop_assert!(facts.retain_ms >= facts.table_min_retain_ms || facts.force);
                    plan
                }
                Err(VacuumRefusal::RetentionTooShort { .. }) => {
                    prop_assert!(facts.retain_ms < facts.table_min_retain_ms && !facts.force);
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            let deleted: BTreeSet<&str> = plan.delete.iter().map(|(p, _)| p.as_str()).collect();
            prop_assert_eq!(deleted.len() + plan.kept.len(), facts.files.len());
            for f in &facts.files {
                let since = f.removed_at_ms.unwrap_or(f.modified_ms).max(f.modified_ms);
                let old = facts.now_ms - since >= facts.retain_ms;
                let needed = !facts.needs_all.is_empty()
                    || facts.needs.get(&f.path).is_some_and(|n| !n.is_empty());
                let live = facts.live.contains(&f.path);
                prop_assert_eq!(deleted.contains(f.path.as_str()), !live && old && !needed, "{}", f.path);
                if !live && old && needed {
                    let blocks: Vec<&[Need]> = plan.blocked().filter(|(p, _)| *p == f.path).map(|(_, n)| n).collect();
                    prop_assert_eq!(blocks.len(), 1);
                    for n in facts.needs.get(&f.path).into_iter().flatten().chain(&facts.needs_all) {
                        prop_assert!(blocks[0].contains(n), "{} not named for {}", n, f.path);
                    }
                }
            }
        }
    }

    #[test]
    fn a_removed_file_counts_from_its_removal_not_its_write() {
        let facts = VacuumFacts {
            now_ms: 100_000,
            retain_ms: 50_000,
            files: vec![FileFacts {
                path: "a".into(),
                size: 1,
                modified_ms: 0,
                removed_at_ms: Some(90_000),
            }],
            ..VacuumFacts::default()
        };
        assert_eq!(
            decide(&facts).unwrap().kept,
            vec![(
                "a".to_string(),
                Kept::WithinRetention {
                    unreferenced_ms: 10_000
                }
            )]
        );
    }

    #[test]
    fn too_short_a_retention_names_both() {
        let facts = VacuumFacts {
            retain_ms: 3_600_000,
            table_min_retain_ms: 168 * 3_600_000,
            ..VacuumFacts::default()
        };
        let e = decide(&facts).unwrap_err().to_string();
        assert!(
            e.contains("1h") && e.contains("168h") && e.contains("--force"),
            "{e}"
        );
    }
}
