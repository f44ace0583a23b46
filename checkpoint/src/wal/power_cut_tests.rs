//! Power cuts through [`PowerCutFs`]: after every acknowledgement (a `seal`, a `commit` under
//! `SyncPolicy::EveryBatch`, a `start_new_segment`), the image a power cut would leave must
//! reopen with every acknowledged frame. Deleting any one fsync the WAL relies on makes these
//! tests fail (checked by hand; see the checkpoint crate's history for which).

use std::sync::Arc;

use proptest::prelude::*;
use tidemark_fs::PowerCutFs;

use super::*;

type F = (FrameKind, u64, Vec<u8>);

/// Writes the crash image into a fresh directory and reopens the WAL in it.
fn frames_after_power_cut(
    pc: &PowerCutFs,
    scratch: &Path,
    n: &mut u32,
) -> (Vec<F>, RecoveryReport) {
    *n += 1;
    let image = scratch.join(format!("image-{n}"));
    pc.crash_image(&image).unwrap();
    let wal_dir = image.join("wal");
    let (_wal, report) = Wal::open(&wal_dir, WalOptions::default(), None).unwrap();
    let frames = WalReader::new(&wal_dir, WalPosition::default())
        .map(|r| r.map(|(_, f)| (f.kind, f.epoch, f.payload)).unwrap())
        .collect();
    (frames, report)
}

/// The crash image at this instant, reopened ([`frames_after_power_cut`]) and checked
/// ([`check_kept`]); returns the open's report.
fn check_image(
    pc: &PowerCutFs,
    scratch: &Path,
    n: &mut u32,
    (appended, acked, kept_from): (&[F], usize, usize),
    when: &str,
) -> RecoveryReport {
    let (frames, report) = frames_after_power_cut(pc, scratch, n);
    check_kept(&frames, appended, acked, kept_from, when);
    report
}

/// Checks the frames an image reopened with: a prefix of `appended` holding every
/// acknowledged frame; with the log's front dropped (`kept_from > 0`, the first frame the
/// last truncation kept), a run of `appended` that starts at or before `kept_from` and holds
/// every acknowledged frame.
fn check_kept(frames: &[F], appended: &[F], acked: usize, kept_from: usize, when: &str) {
    if kept_from > 0 {
        let n = frames.len();
        let fits = (0..=kept_from.min(appended.len().saturating_sub(n)))
            .any(|s| s + n >= acked && appended[s..s + n] == *frames);
        assert!(
            fits,
            "{when}: {n} frames are not a run of what was appended that starts by frame \
             {kept_from} and holds the {acked} acknowledged"
        );
        return;
    }
    assert!(
        frames.len() >= acked,
        "{when}: a power cut lost acknowledged frames ({} found, {acked} acknowledged)",
        frames.len()
    );
    assert!(
        frames.len() <= appended.len(),
        "{when}: more frames than appended"
    );
    assert_eq!(
        frames,
        &appended[..frames.len()],
        "{when}: not a prefix of what was appended"
    );
}

/// Drives a WAL on a power-cut file system through `epochs` epochs of `per_epoch` appends
/// (committed every `batch`), checking the crash image after each acknowledgement.
/// Returns how many segments the WAL ended with, and how many images had a reused last
/// segment holding older bytes past its frames.
///
/// With `truncate`, the log's front is dropped after every seal (segments before the sealed
/// epoch's start): they become spares, and the next segments are written over them, so the
/// images cover reused files (their older frames, a new header, frames not synced yet).
fn run(
    sync: SyncPolicy,
    segment_size: u64,
    epochs: u64,
    per_epoch: usize,
    batch: usize,
    sizes: &[usize],
    truncate: bool,
) -> (usize, usize) {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let pc = PowerCutFs::new(root.path()).unwrap();
    let dir = root.path().join("wal");
    let (mut wal, _) = Wal::open_with_fs(
        Arc::new(pc.clone()),
        &dir,
        WalOptions { segment_size, sync },
        None,
    )
    .unwrap();
    let mut appended: Vec<F> = Vec::new();
    let mut acked;
    // Index in `appended` of the first frame of the epoch the last truncation kept.
    let mut kept_from = 0;
    let mut reused = 0;
    let mut images = 0;
    let mut k = 0;
    for epoch in 1..=epochs {
        for i in 0..per_epoch {
            let p = vec![(epoch * 31 + i as u64) as u8; sizes[k % sizes.len()]];
            k += 1;
            wal.append(FrameKind::Record, epoch, &p).unwrap();
            appended.push((FrameKind::Record, epoch, p));
            if (i + 1) % batch == 0 {
                wal.commit().unwrap();
                if sync == SyncPolicy::EveryBatch {
                    acked = appended.len();
                    check_image(
                        &pc,
                        scratch.path(),
                        &mut images,
                        (&appended, acked, kept_from),
                        &format!("after commit in epoch {epoch}"),
                    );
                }
            }
        }
        wal.seal(epoch, format!("seal-{epoch}").as_bytes()).unwrap();
        appended.push((FrameKind::Seal, epoch, format!("seal-{epoch}").into_bytes()));
        acked = appended.len();
        let report = check_image(
            &pc,
            scratch.path(),
            &mut images,
            (&appended, acked, kept_from),
            &format!("after seal {epoch}"),
        );
        assert!(
            report.mid_log.is_none(),
            "a power cut is never mid-log damage: {report:?}"
        );
        reused += usize::from(report.truncation.as_ref().is_some_and(|t| t.reused_file));
        if truncate {
            let first_of_epoch = appended.iter().position(|f| f.1 == epoch).unwrap_or(0);
            wal.truncate_before(epoch).unwrap();
            kept_from = first_of_epoch;
            check_image(
                &pc,
                scratch.path(),
                &mut images,
                (&appended, acked, kept_from),
                &format!("after truncation {epoch}"),
            );
            assert!(wal.spares().len() <= MAX_SPARES, "{:?}", wal.spares());
        }
        if epoch % 3 == 0 {
            // Re-anchoring: the returned position must survive a power cut (the engine writes
            // it into a checkpoint).
            let at = wal.start_new_segment(epoch + 1).unwrap();
            let report = check_image(
                &pc,
                scratch.path(),
                &mut images,
                (&appended, acked, kept_from),
                &format!("after start_new_segment {epoch}"),
            );
            assert_eq!(report.end, at, "the new segment's header is durable");
        }
    }
    assert!(images > 5);
    (wal.segments().len(), reused)
}

#[test]
fn every_acknowledged_frame_survives_a_power_cut_every_batch() {
    let (segments, _) = run(SyncPolicy::EveryBatch, 300, 8, 6, 2, &[10, 40, 70], false);
    assert!(segments > 8, "the test must roll segments: {segments}");
}

/// The same with the log's front dropped after every seal, so later segments are spares
/// written over: no image loses an acknowledged frame or reads an older one back.
#[test]
fn every_acknowledged_frame_survives_a_power_cut_on_reused_segments() {
    for sync in [SyncPolicy::EveryBatch, SyncPolicy::OnSeal] {
        let (_, reused) = run(sync, 300, 10, 5, 2, &[70, 10, 40, 85], true);
        assert!(
            reused > 0,
            "{sync:?}: no image had a reused last segment: the test must write over spares"
        );
    }
}

#[test]
fn every_sealed_frame_survives_a_power_cut_on_seal() {
    let (segments, _) = run(SyncPolicy::OnSeal, 300, 8, 9, 3, &[10, 40, 70], false);
    assert!(segments > 8, "the test must roll segments: {segments}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn power_cuts_never_lose_an_acknowledged_frame(
        every_batch in any::<bool>(),
        segment_size in 120u64..700,
        per_epoch in 1usize..8,
        batch in 1usize..4,
        sizes in proptest::collection::vec(0usize..90, 1..5),
        truncate in any::<bool>(),
    ) {
        let sync = if every_batch { SyncPolicy::EveryBatch } else { SyncPolicy::OnSeal };
        run(sync, segment_size, 6, per_epoch, batch, &sizes, truncate);
    }
}
