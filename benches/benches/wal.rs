//! WAL append throughput for 100 B and 1 KiB records under each fsync policy.
//!
//! One iteration is one epoch of 10,000 records: appended in batches of 100 (`commit` after
//! each batch, the group commit) and sealed at the end. So `every_batch` pays 100 fsyncs per
//! epoch, `interval_10ms` one per 10 ms, `on_seal` one. Old segments are truncated as epochs
//! complete, as the engine does.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidemark_checkpoint::wal::FrameKind;
use tidemark_checkpoint::{SyncPolicy, Wal, WalOptions};

const RECORDS_PER_EPOCH: usize = 10_000;
const BATCH: usize = 100;

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for size in [100usize, 1024] {
        for (name, policy) in [
            ("on_seal", SyncPolicy::OnSeal),
            (
                "interval_10ms",
                SyncPolicy::Interval(Duration::from_millis(10)),
            ),
            ("every_batch", SyncPolicy::EveryBatch),
        ] {
            group.throughput(Throughput::Bytes((RECORDS_PER_EPOCH * size) as u64));
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut wal, _) = Wal::open(
                dir.path(),
                WalOptions {
                    segment_size: 64 << 20,
                    sync: policy,
                },
                None,
            )
            .expect("open wal");
            let payload = vec![0x5au8; size];
            let mut epoch = 0u64;
            group.bench_function(BenchmarkId::new(name, format!("{size}B")), |b| {
                b.iter(|| {
                    epoch += 1;
                    for i in 0..RECORDS_PER_EPOCH {
                        wal.append(FrameKind::Record, epoch, &payload)
                            .expect("append");
                        if (i + 1) % BATCH == 0 {
                            wal.commit().expect("commit");
                        }
                    }
                    wal.seal(epoch, b"positions").expect("seal");
                    wal.truncate_before(epoch).expect("truncate");
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
