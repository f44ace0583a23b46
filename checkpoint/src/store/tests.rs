use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
        state_epoch: epoch,
        state_wal_segment: 0,
        state_wal_offset: 32,
        changelog_starts: None,
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
    // At or above record 1's watermark (10): state after a reopen.
    store
        .write(&record(1), [(&b"a"[..], 15), (&b"b"[..], 16)], None)
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
    /// event time is at or above the newest watermark applied after them. (Watermarks given
    /// never fall, as the engine's never do: a lower one is taken as the one before.)
    #[test]
    fn state_matches_the_model(steps in proptest::collection::vec(
        (proptest::collection::vec((0u16..500, -100i64..100), 0..30), proptest::option::of(-100i64..100)), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), StoreOptions { retain: 4 }).unwrap();
        let mut model: BTreeSet<(Vec<u8>, i64)> = BTreeSet::new();
        let mut highest: Option<i64> = None;
        for (i, (inserts, evict)) in steps.iter().enumerate() {
            let evict = &evict.map(|w| w.max(highest.unwrap_or(w)));
            highest = evict.or(highest);
            if let Some(w) = evict {
                model.retain(|(_, t)| t >= w);
            }
            let mut batch = Vec::new();
            for (k, t) in inserts {
                let key = k.to_be_bytes().to_vec();
                if highest.is_some_and(|w| *t < w) || model.iter().any(|(mk, _)| *mk == key) || batch.iter().any(|(bk, _): &(Vec<u8>, i64)| *bk == key) {
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

/// A store's open error, classified.
fn open_kind(path: &Path) -> (StoreErrorKind, String) {
    let e = CheckpointStore::open(path, StoreOptions::default()).unwrap_err();
    (e.kind(), e.to_string())
}

fn written_store(path: &Path) {
    let store = CheckpointStore::open(path, StoreOptions::default()).unwrap();
    store.write(&record(1), [(&b"a"[..], 5)], None).unwrap();
}

#[test]
fn a_store_open_in_another_instance_is_locked_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let _held = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let (kind, msg) = open_kind(dir.path());
    assert_eq!(kind, StoreErrorKind::Locked, "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn garbage_current_or_manifest_is_corruption() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 4] = [
        ("CURRENT without newline", |p| {
            std::fs::write(p.join("CURRENT"), "garbage").unwrap()
        }),
        ("CURRENT naming no manifest", |p| {
            std::fs::write(p.join("CURRENT"), "garbage\n").unwrap()
        }),
        ("CURRENT naming a missing manifest", |p| {
            std::fs::write(p.join("CURRENT"), "MANIFEST-999999\n").unwrap()
        }),
        ("garbage MANIFEST", |p| {
            let current = std::fs::read_to_string(p.join("CURRENT")).unwrap();
            std::fs::write(p.join(current.trim()), vec![0x5au8; 4096]).unwrap()
        }),
    ];
    for (name, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        written_store(dir.path());
        damage(dir.path());
        let (kind, msg) = open_kind(dir.path());
        assert_eq!(kind, StoreErrorKind::Corruption, "{name}: {msg}");
    }
}

#[test]
fn a_path_that_cannot_hold_a_store_is_not_corruption() {
    // Tests run as root, so permissions cannot be taken away; a file where the store's
    // directory should be is an error RocksDB reports as I/O, like EACCES.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    std::fs::write(&path, b"not a directory").unwrap();
    let (kind, msg) = open_kind(&path);
    assert_ne!(kind, StoreErrorKind::Corruption, "{msg}");
}

#[test]
fn rocksdb_messages_are_classified() {
    use rocksdb::ErrorKind as K;
    let cases = [
        (K::IOError, "IO error: While lock file: /s/LOCK: Resource temporarily unavailable", StoreErrorKind::Locked),
        (K::IOError, "IO error: lock hold by current process, acquire time 1 acquiring thread 2: /s/LOCK: No locks available", StoreErrorKind::Locked),
        (K::IOError, "IO error: While open a file for appending: /s/000012.log: Permission denied", StoreErrorKind::Transient),
        (K::IOError, "IO error: While appending to file: /s/000012.log: No space left on device", StoreErrorKind::Transient),
        (K::IOError, "IO error: While open a file for random read: /s/000009.sst: Too many open files", StoreErrorKind::Transient),
        (K::IOError, "IO error: While reading block at offset 4096 of /s/000009.sst: Input/output error", StoreErrorKind::Transient),
        (K::IOError, "IO error: No such file or directory: While opening a file for sequentially reading: /s/MANIFEST-000005: No such file or directory", StoreErrorKind::Corruption),
        (K::Corruption, "Corruption: CURRENT file does not end with newline", StoreErrorKind::Corruption),
        (K::InvalidArgument, "Invalid argument: Column families not opened: other", StoreErrorKind::Corruption),
        (K::Busy, "Resource busy: ", StoreErrorKind::Transient),
    ];
    for (kind, msg, want) in cases {
        assert_eq!(error::classify(kind, msg), want, "{msg}");
    }
}

/// The files of a store directory, copied while the store is open (as a power cut or SIGKILL
/// would leave them: nothing flushed at close).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// RocksDB's own write-ahead log in a store directory (the newest `<number>.log`).
fn rocks_log(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a RocksDB log file")
}

/// Why `mid_checkpoint_write` cannot leave a torn batch (see `fault.rs`): a checkpoint is one
/// record in RocksDB's log; cut that log at any byte inside the record and the store shows
/// either the previous checkpoint with its dedup keys or the new one with all of its changes.
#[test]
fn a_checkpoint_batch_cut_at_any_byte_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = CheckpointStore::open(&live, StoreOptions::default()).unwrap();
    let first: Vec<(Vec<u8>, i64)> = (0..60)
        .map(|i| (format!("first-{i}").into_bytes(), i * 2))
        .collect();
    store.write(&record(1), kv(&first), None).unwrap();
    let log = rocks_log(&live);
    let before = std::fs::metadata(&log).unwrap().len();
    let second: Vec<(Vec<u8>, i64)> = (0..300)
        .map(|i| (format!("second-{i}").into_bytes(), 100 + i))
        .collect();
    // The record's watermark is the eviction's, as in the engine.
    let record_2 = CheckpointRecord {
        watermark: Some(60),
        ..record(2)
    };
    store.write(&record_2, kv(&second), Some(60)).unwrap();
    let after = std::fs::metadata(&log).unwrap().len();
    assert!(
        after > before + 3000,
        "the second batch is in RocksDB's log: {before}..{after}"
    );
    let snapshot = dir.path().join("snapshot");
    copy_dir(&live, &snapshot);
    assert_eq!(rocks_log(&live), log, "no log switch while writing");
    // A reopened store's state is what is at or above its newest record's watermark
    // (`record(e)`'s is 10 e).
    let state_1: BTreeSet<_> = first.iter().filter(|(_, t)| *t >= 10).cloned().collect();
    let state_2: BTreeSet<_> = first
        .iter()
        .filter(|(_, t)| *t >= 60)
        .chain(&second)
        .cloned()
        .collect();
    let span = after - before;
    let mut cuts: Vec<u64> = (0..=64).map(|i| before + span * i / 64).collect();
    cuts.extend([before + 1, before + 7, after - 1]);
    let mut outcomes = [0, 0];
    for cut in cuts {
        let copy = dir.path().join(format!("cut-{cut}"));
        copy_dir(&snapshot, &copy);
        let log_copy = copy.join(log.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log_copy)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let opened = CheckpointStore::open(&copy, StoreOptions::default()).unwrap();
        let latest = opened.latest().unwrap().map(|r| r.epoch);
        let state = entries(&opened);
        match latest {
            Some(1) => {
                assert_eq!(state, state_1, "cut at {cut}: checkpoint 1 with other keys");
                outcomes[0] += 1;
            }
            Some(2) => {
                assert_eq!(state, state_2, "cut at {cut}: checkpoint 2 with other keys");
                outcomes[1] += 1;
            }
            other => panic!("cut at {cut}: latest checkpoint {other:?}"),
        }
        if cut < after {
            assert_eq!(latest, Some(1), "cut at {cut} inside the batch");
        } else {
            assert_eq!(latest, Some(2));
        }
        drop(opened);
        std::fs::remove_dir_all(&copy).unwrap();
    }
    assert!(outcomes[0] > 10 && outcomes[1] >= 1, "{outcomes:?}");
}

fn packed(keys: &[(&str, i64)]) -> PackedKeys {
    let mut p = PackedKeys::default();
    for (k, t) in keys {
        p.push(k.as_bytes(), *t);
    }
    p
}

/// The changelog path: the record alone, then deltas through the state writer, synced in the
/// background; after a sync (and a reopen) the store holds exactly the deltas' net effect, and
/// the record reads back with the state epoch it named.
#[test]
fn state_deltas_through_the_writer_are_durable_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        let writer = StateWriter::start(store.clone(), 0);
        let mut r = record(1);
        r.state_epoch = 0;
        store.write_record(&r).unwrap();
        writer
            .queue(delta(1, &[("a", 10), ("b", 20)], None))
            .unwrap();
        let mut r = record(2);
        r.state_epoch = writer.durable_epoch();
        // The record's watermark is the delta's eviction, as in the engine.
        r.watermark = Some(15);
        store.write_record(&r).unwrap();
        writer.queue(delta(2, &[("c", 30)], Some(15))).unwrap();
        assert_eq!(writer.sync().unwrap(), 2);
        assert_eq!(writer.durable_epoch(), 2);
    }
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let mut got = BTreeSet::new();
    store
        .for_each_dedup_entry_from(Some(15), |k, t| {
            got.insert((k.to_vec(), t));
        })
        .unwrap();
    let want: BTreeSet<(Vec<u8>, i64)> = [(b"b".to_vec(), 20), (b"c".to_vec(), 30)]
        .into_iter()
        .collect();
    assert_eq!(got, want);
    assert!(store.latest().unwrap().unwrap().state_epoch <= 2);
    // The writer noted what it ingested, newer than the newest record's `state_epoch` (1 at
    // most: the record of 2 was written before delta 2 was queued).
    assert_eq!(store.state_ingested().unwrap(), Some(2));
}

/// The ingested-state note: absent on a new store, never moves back, survives a reopen, and
/// a reset forgets it with the state it described.
#[test]
fn the_ingested_state_note_only_moves_forward_and_a_reset_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.state_ingested().unwrap(), None);
        store.note_state_ingested(5).unwrap();
        store.note_state_ingested(3).unwrap();
        assert_eq!(store.state_ingested().unwrap(), Some(5));
        // Durable with the next synced write.
        store.write_record(&record(5)).unwrap();
    }
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.state_ingested().unwrap(), Some(5));
    store.reset().unwrap();
    assert_eq!(store.state_ingested().unwrap(), None);
}

/// A load from a watermark skips entries below it (an eviction not persisted yet).
#[test]
fn a_load_from_the_watermark_skips_what_is_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    ingest(&store, &[("x", -5), ("a", 10), ("b", 20)]);
    let mut seen = Vec::new();
    store
        .for_each_dedup_entry_from(Some(10), |k, t| seen.push((k.to_vec(), t)))
        .unwrap();
    assert_eq!(seen, vec![(b"a".to_vec(), 10), (b"b".to_vec(), 20)]);
    let mut all = 0;
    store
        .for_each_dedup_entry_from(None, |_, _| all += 1)
        .unwrap();
    assert_eq!(all, 3);
}

/// Compaction drops entries below the eviction watermark; nothing at or above it is touched.
#[test]
fn compaction_evicts_below_the_watermark_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    for chunk in 0..4i64 {
        let keys: Vec<(String, i64)> = (0..100)
            .map(|i| (format!("k{chunk}-{i}"), chunk * 100 + i))
            .collect();
        let refs: Vec<(&str, i64)> = keys.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        ingest(&store, &refs);
    }
    store.set_evict_below(Some(150));
    store.set_evict_below(Some(120)); // never goes back
    let by_key = store.cf(CF_DEDUP_BY_KEY).unwrap();
    let on_disk = |store: &CheckpointStore| {
        let mut n = 0;
        let mut it = store.db.raw_iterator_cf(by_key);
        it.seek_to_first();
        while it.valid() {
            n += 1;
            it.next();
        }
        n
    };
    assert_eq!(on_disk(&store), 400, "nothing compacted yet");
    assert_eq!(entries(&store).len(), 250, "but nothing below 150 is read");
    store
        .db
        .compact_range_cf(by_key, None::<&[u8]>, None::<&[u8]>);
    assert_eq!(on_disk(&store), 250, "entries 150..400 stay on disk");
    let left = entries(&store);
    assert_eq!(left.len(), 250, "entries 150..400 stay");
    assert!(left.iter().all(|(_, t)| *t >= 150));
}

/// Stages `pairs` as one delta and ingests it.
fn ingest(store: &CheckpointStore, pairs: &[(&str, i64)]) {
    store
        .stage_state(1, 1, packed(pairs).iter())
        .unwrap()
        .ingest(store)
        .unwrap();
}

fn look(store: &CheckpointStore, keys: &[&str]) -> Vec<Option<i64>> {
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    store.lookup_dedup_keys(&keys).unwrap()
}

/// Lookups answer for every entry of the state: written by both write paths, overwritten by
/// a key's newer time, cleared by a reset, durable after a sync.
#[test]
fn the_key_index_answers_lookups_for_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .write(&record(1), packed(&[("a", 10), ("b", 20)]).iter(), None)
        .unwrap();
    let staged = store
        .stage_state(2, 2, packed(&[("c", 30), ("a", 40)]).iter())
        .unwrap();
    assert_eq!(
        look(&store, &["a", "c"]),
        vec![Some(10), None],
        "staged is not in the store"
    );
    staged.ingest(&store).unwrap();
    let got = look(&store, &["a", "b", "c", "zz", ""]);
    assert_eq!(got, vec![Some(40), Some(20), Some(30), None, None]);
    drop(store);
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        look(&store, &["a", "c"]),
        vec![Some(40), Some(30)],
        "synced deltas survive a reopen"
    );
    store.reset().unwrap();
    assert_eq!(look(&store, &["a", "b", "c"]), vec![None, None, None]);
}

/// Makes the store at `dir` look as a format 1 build left it: version 1, `entries` in the
/// time-ordered `dedup` column family, and the key index mark if `indexed` (then the key index
/// holds them too; without it, `dedup_by_key` holds `stale` only, which the migration must
/// overwrite).
fn write_format_1(dir: &Path, entries: &[(&str, i64)], indexed: bool, stale: &[(&str, i64)]) {
    let store = CheckpointStore::open(dir, StoreOptions::default()).unwrap();
    // No watermark: every entry is state.
    let unwatermarked = |epoch| CheckpointRecord {
        watermark: None,
        ..record(epoch)
    };
    store
        .write(&unwatermarked(1), packed(stale).iter(), None)
        .unwrap();
    if indexed {
        store
            .write(&unwatermarked(2), packed(entries).iter(), None)
            .unwrap();
    }
    let (meta, dedup) = (store.cf(CF_META).unwrap(), store.cf(CF_DEDUP).unwrap());
    let mut b = WriteBatch::default();
    for &(key, time) in entries {
        b.put_cf(dedup, record::dedup_entry_key(time, key.as_bytes()), []);
    }
    b.put_cf(meta, KEY_FORMAT, 1u32.to_le_bytes());
    if indexed {
        b.put_cf(meta, KEY_KEY_INDEX, [1u8]);
    }
    store.write_synced(b).unwrap();
}

fn format_version(store: &CheckpointStore) -> u32 {
    let meta = store.cf(CF_META).unwrap();
    let v = store.db.get_cf(meta, KEY_FORMAT).unwrap().unwrap();
    u32::from_le_bytes(v.as_slice().try_into().unwrap())
}

fn time_ordered_left(store: &CheckpointStore) -> usize {
    let mut it = store.db.raw_iterator_cf(store.cf(CF_DEDUP).unwrap());
    it.seek_to_first();
    let mut n = 0;
    while it.valid() {
        n += 1;
        it.next();
    }
    n
}

/// A format 1 store without the key index mark (written before the index existed) is
/// migrated at a read-write open: its time-ordered entries copied into the key index (a key's
/// newer time over an older one, and over what the index held), `dedup` emptied, version 2.
/// Read-only, before that, it is read as it was.
#[test]
fn a_format_1_store_without_the_index_is_migrated_by_copying_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let old = [("a", 10), ("b", 20), ("a", 30), ("c", 5)];
    write_format_1(dir.path(), &old, false, &[("b", 1), ("zz", 2)]);
    let want: BTreeSet<(Vec<u8>, i64)> = [("a", 10), ("b", 20), ("a", 30), ("c", 5)]
        .iter()
        .map(|(k, t)| (k.as_bytes().to_vec(), *t))
        .collect();
    {
        let ro = CheckpointStore::open_read_only(dir.path()).unwrap();
        assert_eq!(entries(&ro), want, "read-only: the time-ordered state");
        assert_eq!(format_version(&ro), 1, "read-only opens migrate nothing");
    }
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(format_version(&store), STORE_FORMAT_VERSION);
    assert_eq!(time_ordered_left(&store), 0);
    assert_eq!(
        look(&store, &["a", "b", "c", "zz"]),
        vec![Some(30), Some(20), Some(5), Some(2)]
    );
    drop(store);
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        look(&store, &["a", "b", "c"]),
        vec![Some(30), Some(20), Some(5)],
        "the migration is durable"
    );
}

/// A format 1 store with the key index mark is migrated without a copy: the index already
/// holds every entry.
#[test]
fn a_format_1_store_with_the_index_keeps_its_index() {
    let dir = tempfile::tempdir().unwrap();
    write_format_1(dir.path(), &[("a", 10), ("b", 20)], true, &[]);
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(format_version(&store), STORE_FORMAT_VERSION);
    assert_eq!(time_ordered_left(&store), 0);
    let want: BTreeSet<(Vec<u8>, i64)> = [(b"a".to_vec(), 10), (b"b".to_vec(), 20)]
        .into_iter()
        .collect();
    assert_eq!(entries(&store), want);
}

/// At open, nothing below the newest record's watermark is read (it is never needed again);
/// a reset lets the state start over below it.
#[test]
fn an_open_reads_nothing_below_the_newest_records_watermark_until_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .write(
                &record(1),
                packed(&[("a", 5), ("b", 10), ("c", 15)]).iter(),
                None,
            )
            .unwrap();
    }
    // record(1)'s watermark is 10.
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let times: Vec<i64> = store.dedup_entries().unwrap().iter().map(|e| e.1).collect();
    assert_eq!(times, vec![10, 15]);
    store.reset().unwrap();
    store
        .write(&record(1), packed(&[("old", 1)]).iter(), None)
        .unwrap();
    assert_eq!(store.dedup_entries().unwrap(), vec![(b"old".to_vec(), 1)]);
}

/// Compaction drops the key index's entries below the eviction watermark (their time is the
/// value) and keeps the rest.
#[test]
fn compaction_evicts_the_key_index_below_the_watermark_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let keys: Vec<(String, i64)> = (0..200).map(|i| (format!("k{i}"), i)).collect();
    let refs: Vec<(&str, i64)> = keys.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    ingest(&store, &refs);
    store.set_evict_below(Some(150));
    let by_key = store.cf(CF_DEDUP_BY_KEY).unwrap();
    store
        .db
        .compact_range_cf(by_key, None::<&[u8]>, None::<&[u8]>);
    let names: Vec<Vec<u8>> = keys.iter().map(|(k, _)| k.clone().into_bytes()).collect();
    let refs: Vec<&[u8]> = names.iter().map(|k| k.as_slice()).collect();
    let got = store.lookup_dedup_keys(&refs).unwrap();
    for (i, t) in got.iter().enumerate() {
        assert_eq!(*t, (i >= 150).then_some(i as i64), "key k{i}");
    }
}

/// Epoch `epoch`'s delta: key `k<epoch>` at time `epoch`, no eviction.
fn one_key_delta(epoch: u64) -> StateDelta {
    delta(epoch, &[(&format!("k{epoch}"), epoch as i64)], None)
}

/// Epoch `epoch`'s delta: `keys` with their times, evicting below `evict_below`.
fn delta(epoch: u64, keys: &[(&str, i64)], evict_below: Option<i64>) -> StateDelta {
    StateDelta {
        epoch,
        inserts: packed(keys),
        evict_below,
    }
}

/// A held writer writes nothing until its hold ends, and never makes its caller wait on the
/// hold: it takes every delta queued meanwhile (gathered, up to `MAX_GATHERED_KEYS`), a sync
/// releases the hold (no deadlock), and everything queued is then ingested in order.
#[test]
fn a_held_state_writer_applies_nothing_until_released_and_never_blocks_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let writer = StateWriter::start(store.clone(), 0);
    let held_keys = |store: &CheckpointStore| {
        let keys: Vec<Vec<u8>> = (1..=12u64).map(|e| format!("k{e}").into_bytes()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        store
            .lookup_dedup_keys(&refs)
            .unwrap()
            .iter()
            .filter(|t| t.is_some())
            .count()
    };
    // Held: a delta queued stays unapplied.
    let hold = writer.hold();
    writer.queue(one_key_delta(1)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(held_keys(&store), 0, "a held writer applied a delta");
    // Released by dropping the hold: applied.
    drop(hold);
    assert_eq!(writer.sync().unwrap(), 1);
    assert_eq!(held_keys(&store), 1);
    // Held again, more deltas than the queue holds: the caller does not wait forever.
    let _hold = writer.hold();
    for epoch in 2..=10 {
        writer.queue(one_key_delta(epoch)).unwrap();
    }
    // A sync while held releases it too.
    writer.queue(one_key_delta(11)).unwrap();
    assert_eq!(writer.sync().unwrap(), 11);
    assert_eq!(held_keys(&store), 11);
    // Held with deltas queued, then the writer dropped: they are applied, not lost.
    let _again = writer.hold();
    writer.queue(one_key_delta(12)).unwrap();
    drop(writer);
    assert_eq!(held_keys(&store), 12);
}

/// The writer reports the CPU its thread used, as of its last write: nothing before it has
/// written, something once a large delta is written (a sync waits for that), and at its stop
/// what its last write added. (Thread CPU time is measured on Linux only.)
#[cfg(target_os = "linux")]
#[test]
fn a_state_writer_reports_its_threads_cpu_time_as_of_its_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let writer = StateWriter::start(store.clone(), 0);
    assert_eq!(writer.cpu_time(), None, "nothing written, nothing measured");
    let names: Vec<String> = (0..200_000u32).map(|i| format!("key-{i:08}")).collect();
    let keys: Vec<(&str, i64)> = names
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i as i64))
        .collect();
    writer.queue(delta(1, &keys, None)).unwrap();
    assert_eq!(writer.sync().unwrap(), 1);
    let after_write = writer.cpu_time().unwrap();
    assert!(after_write > std::time::Duration::ZERO, "{after_write:?}");
    // A second write (an SST file, synced and ingested) adds to it.
    writer.queue(one_key_delta(2)).unwrap();
    assert_eq!(writer.sync().unwrap(), 2);
    let after_second = writer.cpu_time().unwrap();
    assert!(
        after_second > after_write,
        "{after_write:?} then {after_second:?}"
    );
    // Stopping counts the last write too: what was queued and not synced.
    writer.queue(delta(3, &keys[..50_000], None)).unwrap();
    let stopped = writer.stop().unwrap();
    assert!(stopped > after_second, "{after_second:?} then {stopped:?}");
}

/// `n` distinct keys, `<prefix>-` and 12 digits, spread over the key space by `mul` (not in
/// key order).
fn spread_keys(prefix: &str, n: usize, mul: u64) -> Vec<String> {
    (0..n as u64)
        .map(|i| format!("{prefix}-{:012}", i.wrapping_mul(mul) % 1_000_000_007))
        .collect()
}

/// Staged in parts (files of disjoint key ranges written on threads of their own and ingested
/// together), a delta gives the store exactly the state one file gives it: every key once, a
/// key given twice with its newest time; nothing is left in the staging directory.
#[test]
fn staged_in_parts_is_the_state_staged_in_one() {
    let n = 4 * super::pair_sort::MIN_PART;
    let names = spread_keys("order", n, 0x9E37_79B9);
    let mut keys: Vec<(&str, i64)> = names
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i as i64))
        .collect();
    // Two keys given again, later: the newer time is kept.
    keys.push((names[7].as_str(), n as i64 + 1));
    keys.push((names[n - 3].as_str(), n as i64 + 2));
    let delta = packed(&keys);
    let (parts_dir, one_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let in_parts = CheckpointStore::open(parts_dir.path(), StoreOptions::default()).unwrap();
    let in_one = CheckpointStore::open(one_dir.path(), StoreOptions::default()).unwrap();
    let staged = in_parts
        .stage_packed_in_parts(1, 1, &delta, i64::MIN, &mut Default::default(), 3)
        .unwrap();
    assert_eq!(
        staged.files(),
        3,
        "spread keys are split into the parts asked"
    );
    if cfg!(target_os = "linux") {
        // Thread CPU time is read on Linux only (`cpu_time::this_thread`).
        assert!(
            staged.helper_cpu() > std::time::Duration::ZERO,
            "the part threads' CPU is measured"
        );
    }
    assert_eq!(staged.entries(), n);
    assert_eq!(staged.ingest(&in_parts).unwrap(), n);
    in_one
        .stage_state(1, 1, delta.iter())
        .unwrap()
        .ingest(&in_one)
        .unwrap();
    let got = entries(&in_parts);
    assert_eq!(got.len(), n);
    assert_eq!(got, entries(&in_one));
    assert!(got.contains(&(names[7].clone().into_bytes(), n as i64 + 1)));
    assert!(got.contains(&(names[n - 3].clone().into_bytes(), n as i64 + 2)));
    let staging = parts_dir.path().join(staged::STAGING_DIR);
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "ingestion moved every part"
    );
    drop(in_parts);
    let reopened = CheckpointStore::open(parts_dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        entries(&reopened),
        entries(&in_one),
        "the parts are durable"
    );
}

/// The state writer's write in parts (`stage_packed_in_parts`: index lists into the gathered
/// keys, a kept sort per part) gives the store exactly what one file gives it, above the
/// floor; its kept memory serves a second, smaller write with other keys, which leaves no
/// key of the first behind; a write whose kept pairs are too few to split goes whole, however
/// many the floor dropped, as does a write too small to split.
#[test]
fn packed_keys_staged_in_parts_with_kept_memory_are_the_state_staged_in_one() {
    let n = 4 * super::pair_sort::MIN_PART;
    let names = spread_keys("order", n, 0x9E37_79B9);
    let later = spread_keys("later", n * 3 / 4, 0x85EB_CA6B);
    let first: Vec<(&str, i64)> = names
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i as i64 % 100))
        .chain([(names[57].as_str(), 500)])
        .collect();
    let second: Vec<(&str, i64)> = later.iter().map(|k| (k.as_str(), 60)).collect();
    let (parts_dir, one_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let in_parts = CheckpointStore::open(parts_dir.path(), StoreOptions::default()).unwrap();
    let in_one = CheckpointStore::open(one_dir.path(), StoreOptions::default()).unwrap();
    let mut scratch = staged::PartsScratch::default();
    let floor = 20;
    for (epoch, delta) in [(1, packed(&first)), (2, packed(&second))] {
        let staged = in_parts
            .stage_packed_in_parts(epoch, epoch, &delta, floor, &mut scratch, 3)
            .unwrap();
        let kept = delta.iter().filter(|&(_, t)| t >= floor).count();
        assert!(
            kept >= 3 * super::pair_sort::MIN_PART,
            "epoch {epoch}: {kept} kept"
        );
        assert_eq!(
            staged.files(),
            3,
            "spread keys are split into the parts asked"
        );
        // The key given twice is written once.
        assert_eq!(
            staged.entries(),
            kept - usize::from(epoch == 1),
            "epoch {epoch}"
        );
        staged.ingest(&in_parts).unwrap();
        in_one
            .stage_state(epoch, epoch, delta.iter().filter(|&(_, t)| t >= floor))
            .unwrap()
            .ingest(&in_one)
            .unwrap();
        assert_eq!(entries(&in_parts), entries(&in_one), "after epoch {epoch}");
    }
    // Many pairs, but too few kept to be worth a split: one file, whatever was dropped.
    let staged = in_parts
        .stage_packed_in_parts(3, 3, &packed(&first), 99, &mut scratch, 3)
        .unwrap();
    assert_eq!(staged.files(), 1, "the dropped pairs made a split");
    staged.ingest(&in_parts).unwrap();
    assert_eq!(look(&in_parts, &[names[57].as_str()]), vec![Some(500)]);
    let small = packed(&[("b", 3), ("a", 9)]);
    let staged = in_parts
        .stage_packed_in_parts(4, 4, &small, 0, &mut scratch, 3)
        .unwrap();
    assert_eq!((staged.files(), staged.entries()), (1, 2));
    staged.ingest(&in_parts).unwrap();
    assert_eq!(look(&in_parts, &["a", "b"]), vec![Some(9), Some(3)]);
}

/// A crash between staging and ingestion leaves files that were never part of the store: the
/// next open deletes them, and no lookup or load sees their keys. An ingestion leaves nothing
/// behind in the staging directory.
#[test]
fn staged_state_is_not_in_the_store_until_ingested_and_a_crash_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join(staged::STAGING_DIR);
    {
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        ingest(&store, &[("kept", 5)]);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        let lost = store
            .stage_state(2, 3, packed(&[("lost", 7)]).iter())
            .unwrap();
        assert_eq!(lost.entries(), 1);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 1);
        // And a write in parts, its files all staged, none ingested.
        let names: Vec<String> = (0..4 * super::pair_sort::MIN_PART)
            .map(|i| format!("lost-{i:08}"))
            .collect();
        let keys: Vec<(&str, i64)> = names.iter().map(|k| (k.as_str(), 9)).collect();
        let parts = store
            .stage_packed_in_parts(4, 4, &packed(&keys), i64::MIN, &mut Default::default(), 2)
            .unwrap();
        assert_eq!(parts.files(), 2);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 3);
        // The crash: the staged files are never ingested.
        drop((lost, parts));
    }
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!staging.exists(), "the open deletes what a crash staged");
    assert_eq!(
        look(&store, &["kept", "lost", "lost-00000000"]),
        vec![Some(5), None, None]
    );
    let all: Vec<(Vec<u8>, i64)> = entries(&store).into_iter().collect();
    assert_eq!(all, vec![(b"kept".to_vec(), 5)]);
}

/// A staging of nothing writes no file and ingests nothing.
#[test]
fn staging_no_key_writes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let staged = store
        .stage_state(1, 1, PackedKeys::default().iter())
        .unwrap();
    assert_eq!(staged.entries(), 0);
    assert_eq!(staged.ingest(&store).unwrap(), 0);
    assert!(!dir.path().join(staged::STAGING_DIR).exists());
}

proptest! {
    /// Deltas staged and ingested in any grouping give the store what writing them one by one
    /// would: each key once, with its newest time (a key comes again only with a later time,
    /// as after its eviction).
    #[test]
    fn staged_deltas_in_any_grouping_are_their_union(
        deltas in proptest::collection::vec(
            proptest::collection::vec((0u8..12, 0i64..4), 0..20), 1..8),
        cuts in proptest::collection::vec(any::<bool>(), 8),
    ) {
        // Times rise with the delta's position, so a key repeated later has a later time.
        let deltas: Vec<Vec<(String, i64)>> = deltas
            .iter()
            .enumerate()
            .map(|(e, d)| d.iter().map(|&(k, t)| (format!("k{k}"), e as i64 * 10 + t)).collect())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        let mut group: Vec<(String, i64)> = Vec::new();
        for (e, d) in deltas.iter().enumerate() {
            group.extend(d.iter().cloned());
            if cuts[e] || e + 1 == deltas.len() {
                let refs: Vec<(&str, i64)> = group.iter().map(|(k, t)| (k.as_str(), *t)).collect();
                store.stage_state(e as u64, e as u64, packed(&refs).iter()).unwrap().ingest(&store).unwrap();
                group.clear();
            }
        }
        let all: BTreeSet<(Vec<u8>, i64)> = deltas
            .iter()
            .flatten()
            .map(|(k, t)| (k.clone().into_bytes(), *t))
            .collect();
        let names: Vec<String> = (0..12).map(|k| format!("k{k}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let newest: Vec<Option<i64>> = names
            .iter()
            .map(|n| all.iter().filter(|(k, _)| k == n.as_bytes()).map(|(_, t)| *t).max())
            .collect();
        prop_assert_eq!(look(&store, &refs), newest.clone());
        let want: BTreeSet<(Vec<u8>, i64)> = names
            .iter()
            .zip(&newest)
            .filter_map(|(n, t)| t.map(|t| (n.clone().into_bytes(), t)))
            .collect();
        prop_assert_eq!(entries(&store), want);
    }
}

/// A state write that fails (here the staging directory cannot be created: a file holds its
/// name, as ENOTDIR) stops the writer with an error naming the path; the durable epoch does not
/// move past what was ingested, so no record claims the lost delta (the WAL keeps it).
#[test]
fn a_failed_state_write_stops_the_writer_and_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let writer = StateWriter::start(store.clone(), 0);
    writer.queue(one_key_delta(1)).unwrap();
    assert_eq!(writer.sync().unwrap(), 1);
    let staging = dir.path().join(staged::STAGING_DIR);
    std::fs::remove_dir(&staging).unwrap();
    std::fs::write(&staging, b"in the way").unwrap();
    writer.queue(one_key_delta(2)).unwrap();
    let err = writer.sync().unwrap_err();
    assert!(
        err.to_string().contains(staged::STAGING_DIR),
        "the error names the staging path: {err}"
    );
    assert_eq!(err.kind(), StoreErrorKind::Transient);
    assert_eq!(
        writer.durable_epoch(),
        1,
        "nothing past the failure is durable"
    );
    assert_eq!(store.state_ingested().unwrap(), Some(1), "nor noted");
    assert!(
        writer.queue(one_key_delta(3)).is_err(),
        "a stopped writer refuses more"
    );
    assert_eq!(look(&store, &["k1", "k2"]), vec![Some(1), None]);
}

/// A write in parts where one part fails (its file cannot be created) fails as a whole: the
/// error names that part's file, nothing is ingested, and the parts that were written stay
/// staged until the next open deletes them.
#[test]
fn one_failed_part_fails_the_write_in_parts_and_ingests_nothing() {
    // Part 0 is written on the calling thread, part 1 on a helper: each made to fail.
    for (failed, written) in [(1, 0), (0, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(staged::STAGING_DIR);
        let names: Vec<String> = (0..4 * super::pair_sort::MIN_PART)
            .map(|i| format!("part-{i:08}"))
            .collect();
        let keys: Vec<(&str, i64)> = names.iter().map(|k| (k.as_str(), 3)).collect();
        {
            let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
            // The failed part's file name taken by a directory.
            let in_the_way = staging.join(format!("5-5.{failed}.{CF_DEDUP_BY_KEY}.sst"));
            std::fs::create_dir_all(&in_the_way).unwrap();
            let err = store
                .stage_packed_in_parts(5, 5, &packed(&keys), i64::MIN, &mut Default::default(), 2)
                .unwrap_err();
            assert!(
                err.to_string().contains(&format!("5-5.{failed}.")),
                "the error names the failed part's file: {err}"
            );
            assert!(
                staging
                    .join(format!("5-5.{written}.{CF_DEDUP_BY_KEY}.sst"))
                    .exists(),
                "the other part was written"
            );
            assert_eq!(look(&store, &["part-00000000"]), vec![None]);
        }
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(
            !staging.exists(),
            "the open deletes the parts a failure left"
        );
        assert!(entries(&store).is_empty());
    }
}

/// A writer over `store` given two deltas: "old" (1) and "new" (10), then "later" (12) with
/// the watermark 5, below which "old" falls.
fn writer_given_old_new_and_later(store: &CheckpointStore) -> StateWriter {
    let writer = StateWriter::start(store.clone(), 0);
    writer
        .queue(delta(1, &[("old", 1), ("new", 10)], None))
        .unwrap();
    writer.queue(delta(2, &[("later", 12)], Some(5))).unwrap();
    writer
}

/// What a writer given [`writer_given_old_new_and_later`]'s deltas leaves in `store`: "new"
/// and "later" with their times, and "old" not written at all (a listing filters by the
/// watermark; a lookup does not).
fn assert_new_and_later_written_old_not(store: &CheckpointStore) {
    let all: Vec<(Vec<u8>, i64)> = entries(store).into_iter().collect();
    assert_eq!(all, vec![(b"later".to_vec(), 12), (b"new".to_vec(), 10)]);
    assert_eq!(look(store, &["old"]), vec![None]);
}

/// Keys below the newest watermark the writer was given are not written at all (no record
/// will ever read them); keys at or above it are.
#[test]
fn the_state_writer_skips_keys_below_the_newest_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let writer = writer_given_old_new_and_later(&store);
    assert_eq!(writer.sync().unwrap(), 2);
    assert_new_and_later_written_old_not(&store);
}

/// A second open of a store in use fails on RocksDB's lock and leaves the running writer's
/// staged files alone (the open clears the staging directory only once it holds the lock).
#[test]
fn a_second_open_fails_on_the_lock_and_keeps_the_staged_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let staged = store.stage_state(1, 1, packed(&[("k", 3)]).iter()).unwrap();
    let second = CheckpointStore::open(dir.path(), StoreOptions::default());
    assert_eq!(second.err().map(|e| e.kind()), Some(StoreErrorKind::Locked));
    staged.ingest(&store).unwrap();
    assert_eq!(look(&store, &["k"]), vec![Some(3)]);
}

/// A store opened holding compactions keeps its level-0 files past the compaction trigger
/// (16) while held; once released, RocksDB compacts them. Every ingestion spans the same keys
/// and times, so after the first few (each placed a level higher) each stays a level-0 file.
#[test]
fn held_compactions_wait_for_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let overlapping = [("a", 100), ("m", 100), ("z", 100)];
    let level0 = |store: &CheckpointStore| store.dedup_files_at_level0().unwrap();
    let (store, hold) =
        CheckpointStore::open_holding_compactions(dir.path(), StoreOptions::default()).unwrap();
    for _ in 0..30 {
        ingest(&store, &overlapping);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let held = level0(&store);
    assert!(held >= 20, "compacted while held: {held} level-0 files");
    hold.release().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while level0(&store) >= 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction within 30 s of the release: {:?}",
            level0(&store)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        look(&store, &["a", "z", "b"]),
        vec![Some(100), Some(100), None]
    );
}

/// A plain open compacts the same files on its own, down to fewer than 16 at level 0: what
/// the hold above holds off.
#[test]
fn without_the_hold_the_same_files_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    for _ in 0..30 {
        ingest(&store, &[("a", 100), ("m", 100), ("z", 100)]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.dedup_files_at_level0().unwrap() >= 16 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The state writer's own write (`stage_packed`, one file, sorted where the keys lie with a
/// kept `KeyOrder`): keys at or above the floor go in, once each with their newest time, keys
/// below it do not; a write with every key below the floor stages no file and its ingestion
/// is a no-op; the same order serves the next write.
#[test]
fn packed_keys_stage_above_the_floor_with_a_reused_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let mut order = super::pair_sort::KeyOrder::default();
    let first = packed(&[("b", 3), ("a", 9), ("old", 1), ("b", 7)]);
    let staged = store.stage_packed(1, 1, &first, 3, &mut order).unwrap();
    assert_eq!((staged.files(), staged.entries()), (1, 2));
    staged.ingest(&store).unwrap();
    let all: Vec<(Vec<u8>, i64)> = entries(&store).into_iter().collect();
    assert_eq!(all, vec![(b"a".to_vec(), 9), (b"b".to_vec(), 7)]);
    let below = packed(&[("x", 1), ("y", 2)]);
    let staged = store.stage_packed(2, 2, &below, 5, &mut order).unwrap();
    assert_eq!((staged.files(), staged.entries()), (0, 0));
    assert_eq!(staged.ingest(&store).unwrap(), 0);
    let next = packed(&[("c", 10)]);
    let staged = store.stage_packed(3, 3, &next, 5, &mut order).unwrap();
    staged.ingest(&store).unwrap();
    assert_eq!(
        look(&store, &["a", "b", "c", "x", "old"]),
        vec![Some(9), Some(7), Some(10), None, None]
    );
}

/// The writer's own write fails cleanly when its file cannot be made: the error names the
/// staging directory, nothing is staged, and the same kept order writes the next delta once
/// the way is clear. (The writer's sync on a machine of several cores writes in parts
/// instead, `a_failed_state_write_stops_the_writer_and_claims_nothing`.)
#[test]
fn a_failed_packed_write_names_the_staging_directory_and_the_order_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let mut order = super::pair_sort::KeyOrder::default();
    let staging = dir.path().join(staged::STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).unwrap();
    }
    std::fs::write(&staging, b"in the way").unwrap();
    let keys = packed(&[("b", 3), ("a", 9)]);
    let err = store.stage_packed(1, 1, &keys, 0, &mut order).unwrap_err();
    assert!(
        err.to_string().contains(staged::STAGING_DIR),
        "the error names the staging path: {err}"
    );
    assert_eq!(err.kind(), StoreErrorKind::Transient);
    std::fs::remove_file(&staging).unwrap();
    let staged = store.stage_packed(1, 1, &keys, 0, &mut order).unwrap();
    assert_eq!((staged.files(), staged.entries()), (1, 2));
    staged.ingest(&store).unwrap();
    assert_eq!(look(&store, &["a", "b"]), vec![Some(9), Some(3)]);
}

/// A delta written by the writer's timed write (no sync asked: one part, `stage_packed`)
/// becomes durable with the keys at or above the newest watermark received.
#[test]
fn a_timed_write_makes_the_gathered_keys_durable_above_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let writer = writer_given_old_new_and_later(&store);
    // A liveness bound, not a timing: the timed write comes within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while writer.durable_epoch() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the timed write never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_new_and_later_written_old_not(&store);
}

/// A batch big enough to be split over two threads gets the same answers, in the same order,
/// as one `MultiGet` on one thread: present keys with their times, absent ones `None`, on
/// both sides of the split.
#[test]
fn a_split_lookup_answers_as_one_on_one_thread() {
    let (_dir, store, keys, want) = split_lookup_store();
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let split = store.lookup_dedup_keys(&keys).unwrap();
    assert_eq!(split, store.lookup_dedup_keys_on_one_thread(&keys).unwrap());
    assert_eq!(split, want);
}

/// Keys `k000000..` of a batch twice the split size, every third in a store (time = its
/// number), and the answers a lookup of all of them must give.
fn split_lookup_store() -> (
    tempfile::TempDir,
    CheckpointStore,
    Vec<String>,
    Vec<Option<i64>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
    let n = 2 * super::PARALLEL_LOOKUP_KEYS;
    let present: Vec<(String, i64)> = (0..n)
        .filter(|i| i % 3 == 0)
        .map(|i| (format!("k{i:06}"), i as i64))
        .collect();
    let refs: Vec<(&str, i64)> = present.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    ingest(&store, &refs);
    let keys = (0..n).map(|i| format!("k{i:06}")).collect();
    let want = (0..n).map(|i| (i % 3 == 0).then_some(i as i64)).collect();
    (dir, store, keys, want)
}

/// A split lookup whose second thread cannot start looks both halves up on the calling
/// thread, with the same answers in the same order. (A thread asked for a stack larger than
/// the address space never starts.)
#[test]
#[cfg(target_pointer_width = "64")]
fn a_split_lookup_whose_thread_cannot_start_answers_on_this_thread() {
    let (dir, store, keys, want) = split_lookup_store();
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let looked_up_on = std::sync::Mutex::new(Vec::new());
    let unstartable = || std::thread::Builder::new().stack_size(1 << 50);
    let answers = super::in_two_halves(&keys, unstartable, dir.path(), |half| {
        looked_up_on
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        store.lookup_dedup_keys_on_one_thread(half)
    })
    .unwrap();
    assert_eq!(answers, want);
    let caller = std::thread::current().id();
    assert_eq!(
        looked_up_on.into_inner().unwrap(),
        vec![caller, caller],
        "both halves on the calling thread"
    );
}

/// A split lookup whose second thread panics fails with an error naming the store, rather
/// than answering for half the keys.
#[test]
fn a_split_lookup_whose_thread_panics_fails_naming_the_store() {
    let (dir, store, keys, _) = split_lookup_store();
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let caller = std::thread::current().id();
    let result = super::in_two_halves(&keys, std::thread::Builder::new, dir.path(), |half| {
        assert_eq!(
            std::thread::current().id(),
            caller,
            "injected: the helper panics"
        );
        store.lookup_dedup_keys_on_one_thread(half)
    });
    match result {
        Err(StoreError::Foreign { path, message }) => {
            assert_eq!(path, dir.path());
            assert!(message.contains("panicked"), "{message}");
        }
        other => panic!("expected the panic as an error, got {other:?}"),
    }
}

/// A store a restart will look keys up in has its table files read into the page cache in
/// the background (`read_tables_ahead`): files whose pages were dropped come back cached
/// without any lookup reading them. (Skipped on file systems that keep files in memory.)
#[test]
fn a_store_read_ahead_for_a_restart_has_its_tables_cached() {
    let dir = tempfile::tempdir().unwrap();
    if tidemark_fs::in_memory_file_system(dir.path()).unwrap_or(false) {
        eprintln!(
            "{} keeps files in memory: nothing to check",
            dir.path().display()
        );
        return;
    }
    {
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).unwrap();
        let pairs: Vec<(String, i64)> = (0..200_000).map(|i| (format!("k{i:08}"), 1)).collect();
        let refs: Vec<(&str, i64)> = pairs.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        ingest(&store, &refs);
    }
    let tables: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    assert!(!tables.is_empty());
    let pages = || -> (usize, usize) {
        tables.iter().fold((0, 0), |(c, n), t| {
            let (cached, all) = tidemark_fs::cached_pages(t).unwrap();
            (c + cached, n + all)
        })
    };
    let cached = || pages().0;
    for t in &tables {
        let f = std::fs::File::open(t).unwrap();
        f.sync_all().unwrap();
        let len = f.metadata().unwrap().len();
        tidemark_fs::ReadableFile::drop_cached(&f, 0, len);
    }
    let (dropped, all) = pages();
    assert!(
        dropped * 10 < all,
        "{dropped} of {all} pages still cached after the drop"
    );
    let (store, _hold) =
        CheckpointStore::open_holding_compactions(dir.path(), StoreOptions::default()).unwrap();
    store.read_tables_ahead();
    // The open itself reads the tables' index and filter blocks, a small part of them: the
    // data blocks come back only when read ahead. A liveness bound, not a timing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cached() * 10 < all * 9 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tables were not read ahead: {} of {all} pages cached",
            cached()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
