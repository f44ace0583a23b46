//! The vacuum's model test: random histories (appends, compactions removing files, a
//! checkpoint start), random promises; whatever the plan deletes, every promised version
//! still has all its files and the newest version is whole.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::log::{AddFile, FilePath, RemoveFile};

fn path(p: &str) -> FilePath {
    FilePath {
        decoded: p.to_string(),
        encoded: p.to_string(),
    }
}

fn add(p: &str) -> Action {
    Action::Add(AddFile {
        path: path(p),
        size: 10,
        num_records: Some(1),
        data_change: true,
        has_deletion_vector: false,
    })
}

fn remove(p: &str) -> Action {
    Action::Remove(RemoveFile {
        path: path(p),
        size: Some(10),
    })
}

/// A history: each step adds 1-3 new files, or (compaction) removes some live files and
/// adds one.
fn arb_history() -> impl Strategy<Value = Vec<Vec<Action>>> {
    proptest::collection::vec((any::<bool>(), 1usize..4, any::<u64>()), 1..30).prop_map(|steps| {
        let mut live: Vec<String> = Vec::new();
        let mut next = 0;
        let mut out = Vec::new();
        for (compact, n, seed) in steps {
            let mut actions = Vec::new();
            if compact && live.len() >= 2 {
                let k = 2 + (seed as usize % (live.len() - 1));
                for p in live.drain(..k.min(live.len())) {
                    actions.push(remove(&p));
                }
                let p = format!("c{next}.parquet");
                next += 1;
                actions.push(add(&p));
                live.push(p);
            } else {
                for _ in 0..n {
                    let p = format!("f{next}.parquet");
                    next += 1;
                    actions.push(add(&p));
                    live.push(p);
                }
            }
            out.push(actions);
        }
        out
    })
}

fn live_at(history: &[Vec<Action>], v: u64) -> BTreeSet<String> {
    let mut s = Snapshot::default();
    for (i, actions) in history.iter().enumerate().take(v as usize + 1) {
        s.apply(&Commit {
            version: i as u64,
            actions: actions.clone(),
        });
    }
    s.files.into_keys().collect()
}

proptest! {
    #[test]
    fn a_vacuum_never_deletes_a_file_a_promised_version_needs(
        history in arb_history(),
        checkpoint_picks in proptest::collection::vec(any::<u64>(), 0..3),
        replica_pick in proptest::option::of(any::<u64>()),
        backup_pick in proptest::option::of(any::<u64>()),
        start_pick in any::<u64>(),
    ) {
        let n = history.len() as u64;
        // The log may start at a checkpoint (older commits cleaned up).
        let start = start_pick % n;
        let mut base = Snapshot::default();
        for (i, actions) in history.iter().enumerate().take(start as usize) {
            base.apply(&Commit { version: i as u64, actions: actions.clone() });
        }
        let base_known = start > 0;
        if base_known {
            base.version = start - 1;
        }
        let commits: Vec<(Commit, i64)> = history
            .iter()
            .enumerate()
            .skip(start as usize)
            .map(|(i, a)| (Commit { version: i as u64, actions: a.clone() }, i as i64))
            .collect();
        let promises = Promises {
            retained_checkpoints: checkpoint_picks.iter().enumerate().map(|(e, p)| (e as u64, p % n)).collect(),
            replicas: replica_pick.map(|r| ("replica".to_string(), Some(r % n))).into_iter().collect(),
            backup_chains: backup_pick.map(|b| ("backups".to_string(), b % n)).into_iter().collect(),
            pipelines: vec![],
        };
        let needs = log_needs(&base, base_known, &commits, &promises);
        prop_assert_eq!(&needs.live, &live_at(&history, n - 1));
        // Every file ever written, old enough to go.
        let mut files: BTreeMap<String, FileFacts> = BTreeMap::new();
        for actions in &history {
            for a in actions {
                if let Action::Add(a) = a {
                    files.insert(a.path.decoded.clone(), FileFacts {
                        path: a.path.decoded.clone(),
                        size: 10,
                        modified_ms: 0,
                        removed_at_ms: needs.removed_at_ms.get(&a.path.decoded).copied(),
                    });
                }
            }
        }
        let facts = VacuumFacts {
            now_ms: 1_000_000,
            retain_ms: 0,
            live: needs.live.clone(),
            files: files.into_values().collect(),
            needs: needs.needs.clone(),
            needs_all: needs.needs_all.clone(),
            ..VacuumFacts::default()
        };
        let plan = decide(&facts).unwrap();
        let deleted: BTreeSet<String> = plan.delete.iter().map(|(p, _)| p.clone()).collect();
        prop_assert!(deleted.is_disjoint(&needs.live));
        for (_, v) in &promises.retained_checkpoints {
            if needs.needs_all.is_empty() {
                let need = live_at(&history, *v);
                prop_assert!(deleted.is_disjoint(&need), "version {} lost {:?}", v, deleted.intersection(&need).collect::<Vec<_>>());
            } else {
                prop_assert!(deleted.is_empty());
            }
        }
        // A replica or backup at v can go on to every later version from the table's files:
        // every file added after v is still there (when the log still holds the commits after
        // v; otherwise a full copy of the newest snapshot is the only way on, and it needs
        // only live files).
        for at in promises.replicas.iter().filter_map(|(_, v)| *v).chain(promises.backup_chains.iter().map(|(_, v)| *v)) {
            if at + 1 < start {
                continue;
            }
            for later in at + 1..n {
                for a in &history[later as usize] {
                    if let Action::Add(a) = a {
                        prop_assert!(!deleted.contains(&a.path.decoded), "copy at {} needs {}", at, a.path.decoded);
                    }
                }
            }
        }
        // Completeness: with no promises, everything unreferenced goes.
        if promises.retained_checkpoints.is_empty() && promises.replicas.is_empty() && promises.backup_chains.is_empty() {
            prop_assert_eq!(deleted.len() + needs.live.len(), facts.files.len());
        }
    }
}
