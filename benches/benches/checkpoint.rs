//! Checkpoint write latency: one synced RocksDB batch holding the checkpoint record and an
//! epoch's new dedup keys, with 10k or 1M keys already in state; loading the dedup state; and
//! staging a second's dedup delta as an SST file (the changelog path's state write); looking
//! absent keys up in a store of 9.6M keys, as a restart's replay does while the state loads.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidemark_checkpoint::store::{
    CheckpointRecord, CheckpointStore, Counts, PackedKeys, SourcePosition, StoreOptions,
};

fn record(epoch: u64) -> CheckpointRecord {
    CheckpointRecord {
        epoch,
        committed_epoch: epoch,
        table_version: Some(epoch as i64),
        watermark: Some(epoch as i64),
        wal_segment: 0,
        wal_offset: 32,
        created_at_ms: 0,
        counts: Counts::default(),
        positions: (0..8)
            .map(|p| SourcePosition {
                source: "orders".into(),
                partition: p,
                offset: epoch as i64,
            })
            .collect(),
        state_epoch: epoch,
        state_wal_segment: 0,
        state_wal_offset: 32,
        changelog_starts: None,
    }
}

fn keys(epoch: u64, n: usize) -> Vec<(Vec<u8>, i64)> {
    (0..n)
        .map(|i| {
            (
                format!("order-{epoch:06}-{i:08}").into_bytes(),
                epoch as i64,
            )
        })
        .collect()
}

fn bench_checkpoint(c: &mut Criterion) {
    let mut group = slow_group(c, "checkpoint_write");
    for (state, new_keys) in [
        (10_000usize, 10_000usize),
        (1_000_000, 10_000),
        (1_000_000, 100_000),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::open(dir.path(), StoreOptions::default()).expect("open store");
        // Steady state: `state` keys spread over the epochs inside the lateness window, each
        // epoch adding `new_keys` and evicting the epoch that falls out of the window.
        let window = (state / new_keys) as u64;
        let per_epoch = new_keys;
        for e in 1..=window {
            store
                .write(&record(e), kv(&keys(e, per_epoch)), None)
                .expect("preload");
        }
        let mut epoch = window;
        let inserts_for = |e: u64| keys(e, new_keys);
        group.throughput(Throughput::Elements(new_keys as u64));
        group.bench_function(
            BenchmarkId::new(format!("state_{state}"), format!("new_{new_keys}")),
            |b| {
                b.iter_batched(
                    || {
                        epoch += 1;
                        (epoch, inserts_for(epoch))
                    },
                    |(e, inserts)| {
                        // Keys older than the window fall below the watermark and are evicted.
                        store
                            .write(&record(e), kv(&inserts), Some(e as i64 - window as i64))
                            .expect("checkpoint");
                    },
                    criterion::BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

/// Loading the whole dedup state at start (what a restart pays before its first commit).
fn bench_load_state(c: &mut Criterion) {
    let mut group = slow_group(c, "dedup_state_load");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).expect("open store");
    for e in 1..=10u64 {
        store
            .write(&record(e), kv(&keys(e, 100_000)), None)
            .expect("preload");
    }
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("keys_1000000", |b| {
        b.iter(|| {
            let mut n = 0usize;
            store
                .for_each_dedup_entry(|key, _| n += usize::from(!key.is_empty()))
                .expect("scan");
            assert_eq!(n, 1_000_000);
        })
    });
    // What a restart does: the scan plus the inserts into the in-memory state.
    group.bench_function("into_state_1000000", |b| {
        b.iter(|| {
            let state =
                tidemark_engine::recovery::load_dedup_state(&store, None, 0).expect("load state");
            assert_eq!(state.len(), 1_000_000);
        })
    });
    group.finish();
}

/// The state writer's work for one second of a 700k records/s stream: a delta of 700k new keys
/// sorted and written as the synced SST file of the changelog path
/// (`CheckpointStore::stage_state`). Keys as the pipeline bench's (`order-` and 12 digits),
/// in a scrambled order as partitions interleave them; event times rising.
fn bench_stage_state(c: &mut Criterion) {
    const N: u64 = 700_000;
    let mut group = slow_group(c, "dedup_state_stage");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path(), StoreOptions::default()).expect("open store");
    // i -> i * an odd constant mod N's power of two, skipping what falls past N: a permutation.
    let delta: Vec<(Vec<u8>, i64)> = (0..N.next_power_of_two())
        .map(|i| i.wrapping_mul(0x9E37_79B9) % N.next_power_of_two())
        .filter(|k| *k < N)
        .enumerate()
        .map(|(t, k)| (format!("order-{k:012}").into_bytes(), t as i64))
        .collect();
    assert_eq!(delta.len(), N as usize);
    let mut epoch = 0u64;
    // The staged files of the iteration before are deleted untimed (they are never ingested).
    let staging = dir.path().join("state-staging");
    group.throughput(Throughput::Elements(N));
    // The keys each in an allocation of its own, and packed as the state writer gets them
    // (`PackedKeys`: the key bytes of a delta contiguous, in arrival order).
    let scattered: Vec<(&[u8], i64)> = kv(&delta).collect();
    let mut packed = PackedKeys::default();
    for (k, t) in &delta {
        packed.push(k, *t);
    }
    let packed: Vec<(&[u8], i64)> = packed.iter().collect();
    for (name, pairs) in [("keys_700000", &scattered), ("keys_700000_packed", &packed)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_dir_all(&staging);
                    epoch += 1;
                    epoch
                },
                |e| {
                    let staged = store
                        .stage_state(e, e, pairs.iter().copied())
                        .expect("stage");
                    assert_eq!(staged.entries(), N as usize);
                    staged
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// A restart's replay checking absent keys against a store of 9.6M keys in 12 level-0 files
/// (compactions held, as recovery holds them): a batch of 8,192 keys as one `MultiGet` on one
/// thread, against `lookup_dedup_keys`, which splits it over two.
fn bench_lookup(c: &mut Criterion) {
    const FILES: u64 = 12;
    const PER_FILE: u64 = 800_000;
    const BATCH: u64 = 8_192;
    let mut group = slow_group(c, "dedup_lookup");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _hold) =
        CheckpointStore::open_holding_compactions(dir.path(), StoreOptions::default())
            .expect("open store");
    for f in 0..FILES {
        // Keys spread over the whole key space in every file, as a second's new keys are.
        let keys: Vec<Vec<u8>> = (0..PER_FILE)
            .map(|i| {
                format!(
                    "order-{:012}",
                    (i * FILES + f).wrapping_mul(0x9E37_79B9) % 1_000_000_000_007
                )
                .into_bytes()
            })
            .collect();
        store
            .stage_state(f + 1, f + 1, keys.iter().map(|k| (k.as_slice(), 1i64)))
            .expect("stage")
            .ingest(&store)
            .expect("ingest");
    }
    let absent: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| format!("absent-{:012}", i.wrapping_mul(0x9E37_79B9)).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = absent.iter().map(Vec::as_slice).collect();
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("absent_8192_one_thread", |b| {
        b.iter(|| {
            let got = store
                .lookup_dedup_keys_on_one_thread(&refs)
                .expect("lookup");
            assert!(got.iter().all(Option::is_none));
        })
    });
    group.bench_function("absent_8192_split", |b| {
        b.iter(|| {
            let got = store.lookup_dedup_keys(&refs).expect("lookup");
            assert!(got.iter().all(Option::is_none));
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_checkpoint,
    bench_load_state,
    bench_stage_state,
    bench_lookup
);
criterion_main!(benches);

/// A bench group of 10 samples over 10 s: every bench here does one to a few hundred ms of
/// disk work per iteration.
fn slow_group<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group
}

/// The store takes borrowed `(key, event_time)` pairs.
fn kv(v: &[(Vec<u8>, i64)]) -> impl Iterator<Item = (&[u8], i64)> + '_ {
    v.iter().map(|(k, t)| (k.as_slice(), *t))
}
