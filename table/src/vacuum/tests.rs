//! The vacuum's model test: random histories (appends, compactions removing files, a
//! checkpoint start), random promises; whatever the plan deletes, every promised version
//! still has all its files and the newest version is whole.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::log::{commit_file_name, AddFile, FilePath, RemoveFile};

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

/// A hand-written table whose version 2 removed `part 1-0%.parquet` (added at version 1), and
/// a plan made on version 2 that deletes it (retention 0, forced).
async fn plan_deleting_a_removed_file(
    dir: &std::path::Path,
) -> (crate::test_support::HandTable, TableLocation, VacuumPlan) {
    let mut t = crate::test_support::HandTable::create(dir);
    t.append(2, 100, false);
    t.append(1, 100, true);
    let location = crate::open_store(dir.to_str().unwrap()).unwrap();
    let later_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let facts = gather(&location, &Promises::default(), later_ms, 0, 0, true)
        .await
        .unwrap();
    let plan = decide(&facts).unwrap();
    assert_eq!(plan.planned_at, 2);
    assert_eq!(
        plan.delete,
        vec![("part 1-0%.parquet".to_string(), 100)],
        "{plan:?}"
    );
    (t, location, plan)
}

/// The fault a vacuum must survive: a `tidemark restore` lands between the vacuum's plan and
/// its deletions, adding back a file the plan deletes. The deletion step re-reads the log
/// (the versions after the plan's) and spares that file: the restored version reads whole.
/// Without the re-read the file was deleted and version 3 lost it.
#[tokio::test]
async fn a_restore_landing_between_the_plan_and_the_deletions_keeps_what_it_adds_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, location, plan) = plan_deleting_a_removed_file(dir.path()).await;
    // Between plan and delete: restore version 1 (re-adds the removed file) as version 3.
    let restore =
        crate::restore::PreparedRestore::prepare(&location, crate::time_travel::AsOf::Version(1))
            .await
            .unwrap();
    let report = restore.commit().await.unwrap();
    assert_eq!(
        (report.new_version, report.files_re_added),
        (Some(3), 1),
        "{report:?}"
    );
    let outcome = execute(&location, &plan).await.unwrap();
    assert_eq!(
        outcome,
        VacuumOutcome {
            deleted: 0,
            rechecked_to: 3,
            spared: vec![("part 1-0%.parquet".to_string(), 3)],
        }
    );
    assert!(dir.path().join("part 1-0%.parquet").exists());
    assert_eq!(
        crate::test_support::deltalake_files(dir.path(), 3).await,
        vec![
            "part 1-0%.parquet".to_string(),
            "part 1-1%.parquet".to_string()
        ]
    );
}

/// The same plan with nothing committed after it deletes the file (the re-read spares only
/// what a newer version references).
#[tokio::test]
async fn with_no_commit_after_the_plan_its_files_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, location, plan) = plan_deleting_a_removed_file(dir.path()).await;
    let outcome = execute(&location, &plan).await.unwrap();
    assert_eq!((outcome.deleted, outcome.rechecked_to), (1, 2));
    assert!(outcome.spared.is_empty());
    assert!(!dir.path().join("part 1-0%.parquet").exists());
}

/// The deletion step's filter, pure: only files a later commit adds are spared.
#[test]
fn only_files_referenced_again_are_spared() {
    let plan = VacuumPlan {
        delete: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
        planned_at: 5,
        ..VacuumPlan::default()
    };
    let referenced: BTreeMap<String, u64> = [("b".to_string(), 7), ("z".to_string(), 6)]
        .into_iter()
        .collect();
    let (delete, spared) = drop_referenced(&plan, &referenced);
    assert_eq!(delete, vec![("a".to_string(), 1), ("c".to_string(), 3)]);
    assert_eq!(spared, vec![("b".to_string(), 7)]);
}

/// A log as a cleanup leaves it half done (it deletes in listing order, not version order):
/// commits 0..=2 and 4 gone, 3 left over, checkpoints at 3 and 5. The facts are read from the
/// checkpoint at 5, the oldest the unbroken commits continue; reading from the oldest commit
/// present (3) met the gap at 4 on every attempt, and the vacuum failed naming version 4.
#[tokio::test]
async fn a_log_with_a_gap_a_cleanup_leaves_is_read_from_the_checkpoint_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = crate::test_support::HandTable::create(dir.path());
    let checkpoint = async |dir: &std::path::Path| {
        let url = url::Url::from_directory_path(dir).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .unwrap();
    };
    for v in 1..=7 {
        t.append(1, 100, v > 1);
        if v == 3 || v == 5 {
            checkpoint(dir.path()).await;
        }
    }
    for v in [0, 1, 2, 4] {
        std::fs::remove_file(dir.path().join("_delta_log").join(commit_file_name(v))).unwrap();
    }
    let location = crate::open_store(dir.path().to_str().unwrap()).unwrap();
    let facts = gather(&location, &Promises::default(), 0, 0, 0, true)
        .await
        .unwrap();
    assert_eq!(facts.log_version, 7);
    let live: Vec<String> = facts.live.iter().cloned().collect();
    assert_eq!(live, ["part 7-0%.parquet"]);
    assert_eq!(t.live, live);
    assert_eq!(
        crate::test_support::deltalake_files(dir.path(), 7).await,
        t.live
    );
}
