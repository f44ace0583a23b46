//! The chain logic against a model: a table whose versions add and remove files, backed up
//! by random sequences of full and incremental backups (some continuing an older backup, so
//! chains branch), some of them lost afterwards (broken chains).

use super::*;
use crate::backup::manifest::{sha256_of, CommitEntry};
use proptest::prelude::*;

/// The model table: the live data files after each version.
struct Table {
    live: Vec<BTreeSet<String>>,
    adds: Vec<Vec<String>>,
    removes: Vec<Vec<String>>,
}

impl Table {
    fn build(steps: &[(u8, Vec<prop::sample::Index>)]) -> Self {
        let mut live = Vec::new();
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        let mut now: BTreeSet<String> = BTreeSet::new();
        for (v, (n_adds, rm)) in steps.iter().enumerate() {
            let mut gone = Vec::new();
            for i in rm {
                if now.is_empty() {
                    break;
                }
                let pick = now.iter().nth(i.index(now.len())).cloned().unwrap();
                now.remove(&pick);
                gone.push(pick);
            }
            let new: Vec<String> = (0..*n_adds)
                .map(|k| format!("part-{v}-{k}.parquet"))
                .collect();
            now.extend(new.iter().cloned());
            live.push(now.clone());
            adds.push(new);
            removes.push(gone);
        }
        Self {
            live,
            adds,
            removes,
        }
    }

    fn newest(&self) -> u64 {
        self.live.len() as u64 - 1
    }
}

fn entry(path: &str, role: FileRole) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        size: path.len() as u64,
        sha256: sha256_of(path.as_bytes()),
        role,
    }
}

fn commit_path(v: u64) -> String {
    format!("_delta_log/{v:020}.json")
}

fn ts(v: u64) -> i64 {
    1_000_000 + 10 * v as i64
}

fn full(table: &Table, v: u64, created: u64) -> Manifest {
    let mut files: Vec<FileEntry> = (0..=v)
        .map(|c| entry(&commit_path(c), FileRole::Commit { version: c }))
        .collect();
    files.extend(
        table.live[v as usize]
            .iter()
            .map(|p| entry(p, FileRole::Data)),
    );
    Manifest {
        id: BackupId::new(created, true, v, v),
        parent: None,
        table_id: "t".into(),
        source: "src".into(),
        created_ms: created,
        first_version: v,
        last_version: v,
        commits: vec![CommitEntry {
            version: v,
            timestamp_ms: ts(v),
            adds: vec![],
            removes: vec![],
        }],
        files,
    }
}

fn incremental(table: &Table, parent: &Manifest, last: u64, created: u64) -> Manifest {
    let first = parent.last_version + 1;
    let mut files = Vec::new();
    let mut commits = Vec::new();
    for v in first..=last {
        files.push(entry(&commit_path(v), FileRole::Commit { version: v }));
        files.extend(
            table.adds[v as usize]
                .iter()
                .map(|p| entry(p, FileRole::Data)),
        );
        commits.push(CommitEntry {
            version: v,
            timestamp_ms: ts(v),
            adds: table.adds[v as usize].clone(),
            removes: table.removes[v as usize].clone(),
        });
    }
    Manifest {
        id: BackupId::new(created, false, first, last),
        parent: Some(parent.id.clone()),
        table_id: "t".into(),
        source: "src".into(),
        created_ms: created,
        first_version: first,
        last_version: last,
        commits,
        files,
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A full backup this many versions after the newest backed-up version.
    Full(u64),
    /// An incremental of this many versions, continuing the next parent or (Some) another
    /// backup whose chain is whole.
    Incr(u64, Option<prop::sample::Index>),
    /// A backup lost (deleted by hand).
    Lose(prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..3).prop_map(Op::Full),
        5 => (1u64..4, proptest::option::weighted(0.3, any::<prop::sample::Index>()))
            .prop_map(|(n, p)| Op::Incr(n, p)),
        1 => any::<prop::sample::Index>().prop_map(Op::Lose),
    ]
}

type Steps = Vec<(u8, Vec<prop::sample::Index>)>;

fn history() -> impl Strategy<Value = (Steps, Vec<Op>)> {
    (
        proptest::collection::vec(
            (
                0u8..4,
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            ),
            60..61,
        ),
        proptest::collection::vec(op(), 1..16),
    )
}

/// Runs the ops; returns the table and the backups left.
fn run(steps: &Steps, ops: &[Op]) -> (Table, Catalog) {
    let table = Table::build(steps);
    let mut catalog = Catalog::default();
    let mut newest = 0u64;
    for (created, op) in ops.iter().enumerate() {
        let created = created as u64 + 1;
        match op {
            Op::Full(gap) => {
                let v = (newest + gap).min(table.newest());
                newest = newest.max(v);
                let m = full(&table, v, created);
                catalog.backups.insert(m.id.clone(), m);
            }
            Op::Incr(n, pick) => {
                let whole: Vec<Manifest> = catalog
                    .backups()
                    .filter(|m| catalog.chain(&m.id).is_ok())
                    .cloned()
                    .collect();
                let parent = match pick {
                    Some(i) if !whole.is_empty() => Some(whole[i.index(whole.len())].clone()),
                    _ => catalog.next_parent("t").cloned(),
                };
                let Some(parent) = parent else { continue };
                let last = parent.last_version + n;
                if last > table.newest() {
                    continue;
                }
                newest = newest.max(last);
                let m = incremental(&table, &parent, last, created);
                catalog.backups.insert(m.id.clone(), m);
            }
            Op::Lose(i) => {
                let ids: Vec<BackupId> = catalog.backups.keys().cloned().collect();
                if !ids.is_empty() {
                    catalog.backups.remove(&ids[i.index(ids.len())]);
                }
            }
        }
    }
    (table, catalog)
}

/// The data files and commits a plan restores, checked against the model.
fn check_plan(table: &Table, plan: &RestorePlan) -> Result<(), TestCaseError> {
    let data: BTreeSet<String> = plan
        .files
        .iter()
        .filter(|f| f.entry.role == FileRole::Data)
        .map(|f| f.entry.path.clone())
        .collect();
    prop_assert_eq!(
        &data,
        &table.live[plan.version as usize],
        "live files at {}",
        plan.version
    );
    let commits: Vec<u64> = plan
        .files
        .iter()
        .filter_map(|f| match f.entry.role {
            FileRole::Commit { version } => Some(version),
            _ => None,
        })
        .collect();
    // The full backups of the model hold the whole log, so a restore holds 0..=version.
    prop_assert_eq!(commits, (0..=plan.version).collect::<Vec<_>>());
    for f in &plan.files {
        prop_assert_eq!(f.entry.sha256, sha256_of(f.entry.path.as_bytes()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every covered version restores to exactly the files live at it; every other version
    /// is refused as not covered.
    #[test]
    fn each_covered_version_restores_its_live_files((steps, ops) in history()) {
        let (table, catalog) = run(&steps, &ops);
        let Ok(covered) = catalog.covered_versions(None) else { return Ok(()) };
        let covered: BTreeMap<u64, i64> = covered.into_iter().collect();
        for v in 0..=table.newest() {
            match catalog.restore_plan(None, Target::Version(v)) {
                Ok(plan) => {
                    prop_assert!(covered.contains_key(&v));
                    prop_assert_eq!(plan.version, v);
                    check_plan(&table, &plan)?;
                }
                Err(ChainError::NotCovered { version, .. }) => {
                    prop_assert_eq!(version, v);
                    prop_assert!(!covered.contains_key(&v));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
            // A timestamp between two commits restores the older one.
            if let Ok(plan) = catalog.restore_plan(None, Target::Timestamp(ts(v) + 5)) {
                let expect = covered.range(..=v).next_back().map(|(v, _)| *v);
                prop_assert_eq!(Some(plan.version), expect);
            }
        }
    }

    /// Retention keeps the K newest full backups with everything built on them, never leaves
    /// a kept backup without its chain, keeps what the next incremental continues and what
    /// is already broken, and every version a kept tree restored before it still restores,
    /// to the same files.
    #[test]
    fn retention_never_breaks_a_needed_chain((steps, ops) in history(), keep_full in 1usize..4) {
        let (table, catalog) = run(&steps, &ops);
        let plan = catalog.prune_plan(keep_full);
        let deleted: BTreeSet<&BackupId> = plan.delete.iter().collect();
        let after = Catalog::new(
            catalog.backups().filter(|m| !deleted.contains(&m.id)).cloned(),
        );
        // Kept backups keep their chains (what was whole stays whole).
        for m in after.backups() {
            if catalog.chain(&m.id).is_ok() {
                prop_assert!(after.chain(&m.id).is_ok(), "{} lost its chain", m.id);
            }
        }
        // The K newest fulls and their trees stay.
        let mut fulls: Vec<&Manifest> = catalog.backups().filter(|m| m.is_full()).collect();
        fulls.sort_by_key(|m| std::cmp::Reverse((m.created_ms, m.id.clone())));
        let newest_fulls: BTreeSet<&BackupId> = fulls.iter().take(keep_full).map(|m| &m.id).collect();
        for m in catalog.backups() {
            if let Ok(chain) = catalog.chain(&m.id) {
                if newest_fulls.contains(&chain[0].id) {
                    prop_assert!(after.get(&m.id).is_some(), "{} of a kept full deleted", m.id);
                }
            } else {
                prop_assert!(after.get(&m.id).is_some(), "broken {} deleted", m.id);
            }
        }
        // The next incremental continues the same backup.
        prop_assert_eq!(
            catalog.next_parent("t").map(|m| &m.id),
            after.next_parent("t").map(|m| &m.id)
        );
        // Only trees of older fulls go.
        for id in &plan.delete {
            let chain = catalog.chain(id).unwrap();
            prop_assert!(!newest_fulls.contains(&chain[0].id));
        }
        // What a kept tree restored before still restores, to the same files.
        for v in 0..=table.newest() {
            let before = catalog.restore_plan(None, Target::Version(v));
            if let Ok(before) = before {
                if newest_fulls.contains(&before.chain[0]) {
                    let now = after.restore_plan(None, Target::Version(v));
                    prop_assert!(now.is_ok(), "version {v} no longer restores");
                    check_plan(&table, &now.unwrap())?;
                }
            }
        }
    }
}

#[test]
fn a_lost_parent_is_named() {
    let table = Table::build(&vec![(1, vec![]); 5]);
    let f = full(&table, 1, 1);
    let i1 = incremental(&table, &f, 2, 2);
    let i2 = incremental(&table, &i1, 4, 3);
    let catalog = Catalog::new([f, i2.clone()]);
    let err = catalog.restore_plan(None, Target::Version(4)).unwrap_err();
    assert_eq!(
        err,
        ChainError::NotCovered {
            version: 4,
            covered: vec![(1, 1)]
        }
    );
    let err = catalog.chain(&i2.id).unwrap_err();
    assert!(err.to_string().contains(i1.id.as_str()), "{err}");
}

#[test]
fn the_shortest_covering_chain_is_used() {
    let table = Table::build(&vec![(1, vec![]); 8]);
    let f1 = full(&table, 0, 1);
    let i1 = incremental(&table, &f1, 3, 2);
    let i2 = incremental(&table, &i1, 6, 3);
    let f2 = full(&table, 5, 4);
    let i3 = incremental(&table, &f2, 6, 5);
    let catalog = Catalog::new([f1, i1, i2, f2.clone(), i3.clone()]);
    let plan = catalog.restore_plan(None, Target::Version(6)).unwrap();
    assert_eq!(plan.chain, vec![f2.id.clone(), i3.id.clone()]);
    assert_eq!(catalog.next_parent("t").unwrap().id, i3.id);
    let prune = catalog.prune_plan(1);
    assert_eq!(prune.keep, vec![f2.id, i3.id]);
    assert_eq!(prune.delete.len(), 3);
}
