use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn record(epoch: u64) -> CheckpointRecord {
    CheckpointRecord {
        epoch,
        committed_epoch: epoch,
        table_version: Some(epoch as i64 + 1),
        watermark: Some(epoch as i64 * 10),
        wal_segment: 0,
        wal_offset: 32,
        created_at_ms: 1_700_000_000_000,
        counts: Counts {
            read: epoch * 3,
            written: epoch * 3,
            ..Counts::default()
        },
        positions: vec![SourcePosition {
            source: "orders".into(),
            partition: 0,
            offset: epoch as i64 * 100,
        }],
    }
}

fn entries(store: &CheckpointStore) -> BTreeSet<(Vec<u8>, i64)> {
    store.dedup_entries().unwrap().into_iter().collect()
}

#[test]
fn latest_and_history_keep_the_newest_n() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions { retain: 3 }).unwrap();
    assert_eq!(store.latest().unwrap(), None);
    for e in 1..=5 {
        store.write(&record(e), [], None).unwrap();
    }
    assert_eq!(store.latest().unwrap(), Some(record(5)));
    let epochs: Vec<u64> = store.history().unwrap().iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![5, 4, 3]);
    assert_eq!(store.get(2).unwrap(), None);
    assert_eq!(store.get(3).unwrap(), Some(record(3)));
    drop(store);
    let reopened = CheckpointStore::open(dir.path(), StoreOptions { retain: 3 }).unwrap();
    assert_eq!(reopened.latest().unwrap(), Some(record(5)));
}

#[test]
fn eviction_drops_exactly_the_entries_below_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let inserts: Vec<(Vec<u8>, i64)> = (-50i64..50)
        .map(|t| (format!("k{t}").into_bytes(), t * 7))
        .collect();
    store.write(&record(1), kv(&inserts), None).unwrap();
    assert_eq!(entries(&store).len(), 100);
    store
        .write(&record(2), [(&b"new"[..], 400)], Some(0))
        .unwrap();
    let left = entries(&store);
    assert!(left.iter().all(|(_, t)| *t >= 0));
    assert_eq!(left.len(), 50 + 1);
}

#[test]
fn a_snapshot_opens_elsewhere_with_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(&dir.path().join("live"), StoreOptions::default()).unwrap();
    store
        .write(&record(1), [(&b"a"[..], 5), (&b"b"[..], 6)], None)
        .unwrap();
    store.snapshot(&dir.path().join("snap")).unwrap();
    store.write(&record(2), [(&b"c"[..], 7)], None).unwrap();
    let snap = CheckpointStore::open(&dir.path().join("snap"), StoreOptions::default()).unwrap();
    assert_eq!(snap.latest().unwrap(), Some(record(1)));
    assert_eq!(entries(&snap).len(), 2);
}

#[test]
fn a_newer_store_format_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        let meta = store.cf(CF_META).unwrap();
        store
            .db
            .put_cf(meta, KEY_FORMAT, 9u32.to_le_bytes())
            .unwrap();
    }
    let err = CheckpointStore::open(dir.path(), StoreOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("format version 9") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Any sequence of checkpoints leaves exactly the model's state: all inserted keys whose
    /// event time is at or above the newest watermark applied after them.
    #[test]
    fn state_matches_the_model(steps in proptest::collection::vec(
        (proptest::collection::vec((0u16..500, -100i64..100), 0..30), proptest::option::of(-100i64..100)), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), StoreOptions { retain: 4 }).unwrap();
        let mut model: BTreeSet<(Vec<u8>, i64)> = BTreeSet::new();
        for (i, (inserts, evict)) in steps.iter().enumerate() {
            if let Some(w) = evict {
                model.retain(|(_, t)| t >= w);
            }
            let mut batch = Vec::new();
            for (k, t) in inserts {
                let key = k.to_be_bytes().to_vec();
                if evict.is_some_and(|w| *t < w) || model.iter().any(|(mk, _)| *mk == key) || batch.iter().any(|(bk, _): &(Vec<u8>, i64)| *bk == key) {
                    continue; // late, or already in state: the engine never inserts these
                }
                batch.push((key, *t));
            }
            model.extend(batch.iter().cloned());
            store.write(&record(i as u64 + 1), kv(&batch), *evict).unwrap();
            prop_assert_eq!(entries(&store), model.clone());
        }
        prop_assert_eq!(store.history().unwrap().len(), steps.len().min(4));
    }
}

/// The store takes borrowed `(key, event_time)` pairs.
fn kv(v: &[(Vec<u8>, i64)]) -> impl Iterator<Item = (&[u8], i64)> + '_ {
    v.iter().map(|(k, t)| (k.as_slice(), *t))
}
