//! WAL append throughput for 100 B and 1 KiB records under each fsync policy.
//!
//! One iteration is one epoch of 10,000 records: appended in batches of 100 (`commit` after
//! each batch, the group commit) and sealed at the end. So `every_batch` pays 100 fsyncs per
//! epoch, `interval_10ms` one per 10 ms, `on_seal` one. Old segments are truncated as epochs
//! complete, as the engine does.
//!
//! `wal_open_after_crash`: the open of a log whose last segment a SIGKILL left with 8 MB of
//! frames, as a new file (a torn half frame at its end) and as a reused 64 MB file (after its
//! own frames, the older segment's bytes: zeroed by the WAL when it reused the file, where the
//! file system can, else the older frames, which the open searches for a valid seal before
//! cutting them), whose older frames are of epoch 1 or of epoch 2 (an epoch-2 frame's epoch
//! field reads as a seal marker: the case that once cost a restart a second). Each iteration
//! opens a copy of the crashed log whose zeroed ranges are zeroed the same way (a plain copy
//! would write them as data).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidemark_checkpoint::wal::format::frame_len;
use tidemark_checkpoint::wal::{segment_files, FrameKind};
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

/// The WAL settings of the crash benches: the default segment size, fsync at seals.
fn crash_options() -> WalOptions {
    WalOptions {
        segment_size: 64 << 20,
        sync: SyncPolicy::OnSeal,
    }
}

/// A log in `dir` whose last segment holds ~8 MB of 200-byte records after a crash: a new file
/// ending in half a frame (`reused` None), or a spare of a full 64 MB segment of epoch
/// `reused` written over.
fn crashed_log(dir: &std::path::Path, reused: Option<u64>) {
    let payload = vec![0x5au8; 200];
    let frame = frame_len(payload.len());
    let (mut wal, _) = Wal::open(dir, crash_options(), None).expect("open wal");
    let last = reused.map_or(2, |old| old + 1);
    if let Some(old) = reused {
        // One full segment, dropped into a spare, and the next segment written over it. Each
        // older record differs (a counter), so their CRCs do, as real records' do.
        let mut record = payload.clone();
        let mut next = |n: &mut u64| {
            *n += 1;
            record[..8].copy_from_slice(&n.to_le_bytes());
            record.clone()
        };
        let mut n = 0u64;
        let first = wal
            .append(FrameKind::Record, old, &next(&mut n))
            .expect("append");
        while wal
            .append(FrameKind::Record, old, &next(&mut n))
            .expect("append")
            .segment
            == first.segment
        {}
        wal.seal(old, b"positions").expect("seal");
        wal.truncate_before(last).expect("truncate");
        wal.start_new_segment(last).expect("roll");
        assert_eq!(wal.spares().len(), 0, "the spare was reused");
    }
    for _ in 0..(8 << 20) / frame {
        wal.append(FrameKind::Record, last, &payload)
            .expect("append");
    }
    wal.seal(last, b"positions").expect("seal");
    std::mem::forget(wal); // a crash: nothing cut
    if reused.is_none() {
        let (_, path, _) = segment_files(dir)
            .expect("segments")
            .pop()
            .expect("a segment");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("segment");
        std::io::Write::write_all(&mut f, &vec![0x11u8; frame / 2]).expect("half a frame");
    }
}

/// The ranges of each file in `dir` that the file system knows to hold zeros (a reused
/// segment's zeroed rest), by name. Asked once, before any copy reads them: once read, they
/// are cached and count as data.
fn zeroed_ranges(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<std::ops::Range<u64>>)> {
    use tidemark_fs::ReadableFile;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("list") {
        let e = e.expect("entry");
        let len = e.metadata().expect("stat").len();
        let parts = std::fs::File::open(e.path())
            .expect("open")
            .data_ranges(0, len)
            .expect("data ranges");
        let mut zeroed = Vec::new();
        let mut at = 0;
        for part in parts.into_iter().chain(std::iter::once(len..len)) {
            if part.start > at {
                zeroed.push(at..part.start);
            }
            at = part.end;
        }
        out.push((e.file_name(), zeroed));
    }
    out
}

/// Copies the files of `from` into `to`, zeroing in each copy the ranges `zeroed` lists the
/// way the WAL zeroes them (`zero_range`): a plain copy writes those zeros as data, which a
/// WAL open reads where, in the log a crash left, it skips them.
fn copy_log(
    from: &std::path::Path,
    to: &std::path::Path,
    zeroed: &[(std::ffi::OsString, Vec<std::ops::Range<u64>>)],
) {
    for (name, ranges) in zeroed {
        let copy = to.join(name);
        std::fs::copy(from.join(name), &copy).expect("copy");
        let mut out = tidemark_fs::std_fs().open_append(&copy).expect("open copy");
        for r in ranges {
            out.zero_range(r.start, r.end - r.start)
                .expect("zero range");
        }
        out.sync_all().expect("sync");
    }
}

fn bench_open_after_crash(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_open_after_crash");
    group.sample_size(10);
    for (name, reused) in [
        ("new_file", None),
        ("reused_file", Some(1)),
        ("reused_file_older_epoch_2", Some(2)),
    ] {
        let template = tempfile::tempdir().expect("tempdir");
        crashed_log(template.path(), reused);
        let zeroed = zeroed_ranges(template.path());
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let copy = tempfile::tempdir().expect("tempdir");
                    copy_log(template.path(), copy.path(), &zeroed);
                    copy
                },
                |copy| {
                    let (_wal, report) =
                        Wal::open(copy.path(), crash_options(), None).expect("open");
                    assert!(report.truncation.is_some() && report.mid_log.is_none());
                    copy
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append, bench_open_after_crash);
criterion_main!(benches);
