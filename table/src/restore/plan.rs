//! The restore action plan, pure: from the live files of the current version and of the
//! version to restore, which files a RESTORE commit re-adds and which it removes (Delta's
//! RESTORE semantics: files live at the target but not now are added back, files live now
//! but not at the target are removed, both with `dataChange = true`; files live in both stay
//! untouched). Files are compared by their decoded path, as Delta reconciles them.
//!
//! Invariant (property-tested below): applying the plan to the current files gives exactly the
//! target's files (by path); a re-added file carries the target's `add` entry, a file live in
//! both keeps the current one (same path, same file).

use std::collections::{BTreeMap, BTreeSet};

/// What a RESTORE commit does to the live files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan<T> {
    /// Files live at the target version but not now: added back (the target's entry).
    pub re_add: Vec<(String, T)>,
    /// Files live now but not at the target version: removed (the current entry).
    pub remove: Vec<(String, T)>,
}

impl<T> RestorePlan<T> {
    /// True when the current files already are the target's.
    pub fn is_empty(&self) -> bool {
        self.re_add.is_empty() && self.remove.is_empty()
    }
}

/// The plan that turns the live files `current` into `target` (both by decoded path).
pub fn plan<T: Clone>(
    current: &BTreeMap<String, T>,
    target: &BTreeMap<String, T>,
) -> RestorePlan<T> {
    let re_add = target
        .iter()
        .filter(|(p, _)| !current.contains_key(*p))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    let remove = current
        .iter()
        .filter(|(p, _)| !target.contains_key(*p))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    RestorePlan { re_add, remove }
}

/// The files to re-add that are not in the table's storage (`present`: the paths found):
/// a restore that needs them is refused, naming them.
pub fn missing<'a, T>(plan: &'a RestorePlan<T>, present: &BTreeSet<String>) -> Vec<&'a str> {
    plan.re_add
        .iter()
        .filter(|(p, _)| !present.contains(p))
        .map(|(p, _)| p.as_str())
        .collect()
}

/// Applies `plan` to `files` as a Delta reader reconciles one commit: removes, then adds.
pub fn apply<T: Clone>(files: &BTreeMap<String, T>, plan: &RestorePlan<T>) -> BTreeMap<String, T> {
    let mut out = files.clone();
    for (p, _) in &plan.remove {
        out.remove(p);
    }
    for (p, e) in &plan.re_add {
        out.insert(p.clone(), e.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A table's history as the live files after each version: each version removes some
    /// live files and adds new ones (or adds back a file removed earlier, as a restore does).
    fn history() -> impl Strategy<Value = Vec<BTreeMap<String, u32>>> {
        prop::collection::vec(
            (
                prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                prop::collection::vec(0u32..40, 0..5),
            ),
            1..12,
        )
        .prop_map(|steps| {
            let mut live: BTreeMap<String, u32> = BTreeMap::new();
            let mut versions = Vec::new();
            for (i, (removes, adds)) in steps.into_iter().enumerate() {
                for r in removes {
                    if !live.is_empty() {
                        let key = live.keys().nth(r.index(live.len())).cloned();
                        if let Some(k) = key {
                            live.remove(&k);
                        }
                    }
                }
                for a in adds {
                    // Names repeat across versions: a file may come back.
                    live.insert(format!("part-{a}.parquet"), i as u32);
                }
                versions.push(live.clone());
            }
            versions
        })
    }

    proptest! {
        #[test]
        fn restoring_any_version_gives_exactly_its_files(
            versions in history(),
            pick in any::<(prop::sample::Index, prop::sample::Index)>(),
        ) {
            let current = &versions[pick.0.index(versions.len())];
            let target = &versions[pick.1.index(versions.len())];
            let p = plan(current, target);
            let restored = apply(current, &p);
            prop_assert_eq!(restored.keys().collect::<Vec<_>>(), target.keys().collect::<Vec<_>>());
            for (path, e) in &restored {
                let expected = if current.contains_key(path) { &current[path] } else { &target[path] };
                prop_assert_eq!(e, expected);
            }
            // Every re-add is a file not live now; every remove is a live file.
            for (path, _) in &p.re_add {
                prop_assert!(!current.contains_key(path));
            }
            for (path, e) in &p.remove {
                prop_assert_eq!(current.get(path), Some(e));
                prop_assert!(!target.contains_key(path));
            }
            // Restoring back undoes it exactly.
            let back = plan(target, current);
            let undone = apply(target, &back);
            prop_assert_eq!(undone.keys().collect::<Vec<_>>(), current.keys().collect::<Vec<_>>());
            prop_assert_eq!(back.re_add.len(), p.remove.len());
            prop_assert_eq!(plan(current, current).is_empty(), true);
        }

        #[test]
        fn a_missing_file_is_named_exactly_when_a_re_add_needs_it(
            versions in history(),
            pick in any::<(prop::sample::Index, prop::sample::Index)>(),
            gone in prop::collection::btree_set(0u32..40, 0..6),
        ) {
            let current = &versions[pick.0.index(versions.len())];
            let target = &versions[pick.1.index(versions.len())];
            let p = plan(current, target);
            let gone: BTreeSet<String> = gone.iter().map(|a| format!("part-{a}.parquet")).collect();
            let everything: BTreeSet<String> = versions.iter().flat_map(|v| v.keys().cloned()).collect();
            let present: BTreeSet<String> = everything.difference(&gone).cloned().collect();
            let named: BTreeSet<&str> = missing(&p, &present).into_iter().collect();
            let expected: BTreeSet<&str> = target
                .keys()
                .filter(|k| !current.contains_key(*k) && gone.contains(*k))
                .map(String::as_str)
                .collect();
            prop_assert_eq!(named, expected);
        }
    }
}
