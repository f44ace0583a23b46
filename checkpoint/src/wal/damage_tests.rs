//! Torn tail against damage before the end: the first is cut, the second moved aside (never
//! deleted) and reported with what it held.

use std::fs;
use std::sync::Arc;

use tidemark_fs::{std_fs, Fault, FaultFs, FaultKind, Op};

use super::*;

/// A frame as written: (segment, offset, epoch, kind).
#[derive(Debug, Clone, Copy)]
struct At {
    segment: u64,
    offset: u64,
    epoch: u64,
    kind: FrameKind,
}

/// Epochs 1..=6, 6 records of 40 bytes and a seal each, 400-byte segments (several per epoch).
fn write_log(dir: &Path) -> Vec<At> {
    let (mut wal, _) = Wal::open(
        dir,
        WalOptions {
            segment_size: 400,
            sync: SyncPolicy::OnSeal,
        },
        None,
    )
    .unwrap();
    let mut out = Vec::new();
    for epoch in 1..=6u64 {
        for i in 0..6u8 {
            let at = wal.append(FrameKind::Record, epoch, &[i; 40]).unwrap();
            out.push(At {
                segment: at.segment,
                offset: at.offset,
                epoch,
                kind: FrameKind::Record,
            });
        }
        let at = wal.seal(epoch, b"seal").unwrap();
        let seal_at = at.offset - frame_len(4) as u64;
        out.push(At {
            segment: at.segment,
            offset: seal_at,
            epoch,
            kind: FrameKind::Seal,
        });
    }
    out
}

fn flip(path: &Path, offset: u64) {
    let mut b = fs::read(path).unwrap();
    b[offset as usize] ^= 0x40;
    fs::write(path, b).unwrap();
}

fn live_frames(dir: &Path) -> usize {
    let mut n = 0;
    for r in WalReader::new(dir, WalPosition::default()) {
        r.unwrap();
        n += 1;
    }
    n
}

fn ids(dir: &Path) -> Vec<u64> {
    list_segments(&tidemark_fs::StdFs, dir)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The epochs and seals of frames after `damaged` (the damaged frame excluded) and of the
/// headers of segments after its segment.
fn expected_after(frames: &[At], damaged: usize) -> ((u64, u64), Vec<u64>) {
    let later = &frames[damaged + 1..];
    let lo = later.iter().map(|f| f.epoch).min().unwrap();
    let hi = later.iter().map(|f| f.epoch).max().unwrap();
    let seals = later
        .iter()
        .filter(|f| f.kind == FrameKind::Seal)
        .map(|f| f.epoch)
        .collect();
    ((lo, hi), seals)
}

#[test]
fn damage_in_a_middle_segment_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let frames = write_log(dir.path());
    let before = ids(dir.path());
    assert!(before.len() >= 6, "{before:?}");
    // The second frame of segment 3.
    let damaged = frames.iter().position(|f| f.segment == 3).unwrap() + 1;
    let d = frames[damaged];
    flip(&segment_path(dir.path(), 3), d.offset + 21);
    let originals: Vec<Vec<u8>> = before[3..]
        .iter()
        .map(|id| fs::read(segment_path(dir.path(), *id)).unwrap())
        .collect();
    let (mut wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    assert!(report.truncation.is_none(), "{report:?}");
    let m = report.mid_log.clone().expect("mid-log damage");
    assert!(matches!(report.damage(), Some(WalDamage::MidLog(_))));
    assert_eq!((m.at_segment, m.at_offset), (3, d.offset));
    assert_eq!(m.reason, "frame checksum mismatch");
    let (epochs, seals) = expected_after(&frames, damaged);
    assert_eq!(m.epochs_seen, Some(epochs));
    assert_eq!(m.seals_seen, seals);
    assert!(!m.resumed);
    // Moved, byte for byte; the live log ends right before the damage.
    assert_eq!(m.segments.len(), before.len() - 3);
    for (id, bytes) in before[3..].iter().zip(&originals) {
        assert_eq!(
            &fs::read(m.moved_to.join(format!("{id:016x}.wal"))).unwrap(),
            bytes
        );
    }
    assert!(m.moved_to.join("REPORT").exists() && !m.moved_to.join("REPAIR").exists());
    assert_eq!(ids(dir.path()), vec![0, 1, 2, 3]);
    assert_eq!(live_frames(dir.path()), damaged);
    assert_eq!(
        report.end,
        WalPosition {
            segment: 3,
            offset: d.offset
        }
    );
    // The log goes on after the damage; a second open finds nothing more to do.
    wal.append(FrameKind::Record, 7, b"next").unwrap();
    wal.seal(7, b"s").unwrap();
    drop(wal);
    let (_w, again) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    assert!(again.damage().is_none(), "{again:?}");
    assert_eq!(live_frames(dir.path()), damaged + 2);
}

#[test]
fn damage_in_the_last_segment_followed_by_valid_frames_is_mid_log() {
    let dir = tempfile::tempdir().unwrap();
    let frames = write_log(dir.path());
    let last = *ids(dir.path()).last().unwrap();
    let in_last: Vec<usize> = (0..frames.len())
        .filter(|i| frames[*i].segment == last)
        .collect();
    assert!(in_last.len() >= 3, "{in_last:?}");
    let damaged = in_last[0];
    flip(&segment_path(dir.path(), last), frames[damaged].offset + 21);
    let (_wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    let m = report
        .mid_log
        .expect("valid frames after the damage: mid-log");
    assert_eq!(m.at_segment, last);
    assert_eq!(m.segments.len(), 1);
    let (epochs, seals) = expected_after(&frames, damaged);
    assert_eq!(m.epochs_seen, Some(epochs));
    assert_eq!(m.seals_seen, seals);
    assert_eq!(live_frames(dir.path()), damaged);
}

/// Unsealed records after the damage were never acknowledged (only a seal is): a power cut
/// can keep a later page of them and lose an earlier one. That is a torn tail, not damage.
#[test]
fn damage_followed_only_by_unsealed_records_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = write_log(dir.path()).len();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    let first = wal.append(FrameKind::Record, 7, &[7; 40]).unwrap();
    for _ in 0..3 {
        wal.append(FrameKind::Record, 7, &[8; 40]).unwrap();
    }
    wal.commit().unwrap();
    drop(wal);
    flip(&segment_path(dir.path(), first.segment), first.offset + 21);
    let (_wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    assert!(report.mid_log.is_none(), "{:?}", report.mid_log);
    let t = report.truncation.expect("torn tail");
    assert_eq!(t.at, first.offset);
    assert_eq!(live_frames(dir.path()), sealed);
}

#[test]
fn a_torn_last_frame_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let frames = write_log(dir.path());
    let last = *ids(dir.path()).last().unwrap();
    let path = segment_path(dir.path(), last);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (_wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    assert!(report.mid_log.is_none());
    let t = report.truncation.clone().expect("torn tail");
    assert!(matches!(report.damage(), Some(WalDamage::TornTail(_))));
    assert_eq!(t.at, frames.last().unwrap().offset);
    assert_eq!(live_frames(dir.path()), frames.len() - 1);
    assert!(
        !fs::read_dir(dir.path())
            .unwrap()
            .any(|e| e.unwrap().path().is_dir()),
        "nothing moved aside"
    );
}

#[test]
fn a_damaged_middle_header_and_a_missing_segment_are_mid_log() {
    for missing in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let frames = write_log(dir.path());
        let path = segment_path(dir.path(), 4);
        if missing {
            fs::remove_file(&path).unwrap();
        } else {
            flip(&path, 3);
        }
        let (_wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
        let m = report.mid_log.expect("mid-log");
        assert_eq!(
            (m.at_segment, m.at_offset),
            (if missing { 5 } else { 4 }, 0),
            "{}",
            m.reason
        );
        if missing {
            assert!(m.reason.contains("missing"), "{}", m.reason);
        }
        assert_eq!(ids(dir.path()), vec![0, 1, 2, 3]);
        let in_live = frames.iter().filter(|f| f.segment < 4).count();
        assert_eq!(live_frames(dir.path()), in_live);
        let hi = frames.last().unwrap().epoch;
        assert_eq!(m.epochs_seen.map(|e| e.1), Some(hi));
        // The log goes on without a gap the next open would take for damage.
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
        wal.start_new_segment(9).unwrap();
        wal.seal(9, b"s").unwrap();
        drop(wal);
        let (_w, again) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
        assert!(again.damage().is_none(), "{again:?}");
        assert_eq!(ids(dir.path()), vec![0, 1, 2, 3, 4]);
    }
}

#[test]
fn a_move_aside_cut_short_by_a_crash_is_finished_by_the_next_open() {
    // Fail the move at each of its links and renames in turn: the damaged segment's link
    // aside, the later segments' moves, then the replacement of the damaged segment by its
    // valid part (the sixth with segments 0..=6).
    for nth in 1..=6 {
        let dir = tempfile::tempdir().unwrap();
        let frames = write_log(dir.path());
        let damaged = frames.iter().position(|f| f.segment == 2).unwrap() + 1;
        flip(&segment_path(dir.path(), 2), frames[damaged].offset + 21);
        let before = ids(dir.path());
        assert_eq!(
            before.len(),
            7,
            "one call per segment 3..=6, one link, one replacement"
        );
        let ffs = FaultFs::new(std_fs());
        ffs.arm(Fault {
            nth,
            path_contains: ".wal".into(),
            ..Fault::once(Op::Rename, FaultKind::Eio)
        });
        let err = Wal::open_with_fs(
            Arc::new(ffs.clone()),
            dir.path(),
            WalOptions::default(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        let (_wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
        let m = report
            .mid_log
            .expect("the interrupted move is finished and reported");
        assert!(m.resumed, "nth={nth}");
        assert_eq!((m.at_segment, m.at_offset), (2, frames[damaged].offset));
        assert_eq!(m.segments.len(), before.len() - 2);
        assert_eq!(ids(dir.path()), vec![0, 1, 2]);
        assert_eq!(live_frames(dir.path()), damaged, "nth={nth}");
    }
}

/// A power cut at any step of a move-aside (a failed call there, then only what was made
/// durable survives): the next open still ends the valid log before the damage, reports it as
/// mid-log, and every original segment from the damaged one on is kept in a `damaged-*`
/// directory.
#[test]
fn a_power_cut_during_a_move_aside_loses_no_segment() {
    let ops = [Op::Create, Op::Sync, Op::Rename, Op::SyncDir];
    let mut injected_runs = 0;
    for op in ops {
        for nth in 1..=8 {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("wal");
            let frames = write_log(&dir);
            let damaged = frames.iter().position(|f| f.segment == 2).unwrap() + 1;
            flip(&segment_path(&dir, 2), frames[damaged].offset + 21);
            let originals: Vec<(u64, Vec<u8>)> = ids(&dir)
                .into_iter()
                .filter(|id| *id >= 2)
                .map(|id| (id, fs::read(segment_path(&dir, id)).unwrap()))
                .collect();
            let pc = tidemark_fs::PowerCutFs::new(root.path()).unwrap();
            let ffs = FaultFs::new(Arc::new(pc.clone()));
            ffs.arm(Fault {
                nth,
                ..Fault::once(op, FaultKind::Eio)
            });
            let opened =
                Wal::open_with_fs(Arc::new(ffs.clone()), &dir, WalOptions::default(), None);
            if ffs.injected() == 0 {
                continue;
            }
            injected_runs += 1;
            drop(opened);
            let image = root.path().join("image");
            pc.crash_image(&image).unwrap();
            let wal_dir = image.join("wal");
            let (_wal, report) = Wal::open(&wal_dir, WalOptions::default(), None).unwrap();
            let m = report
                .mid_log
                .unwrap_or_else(|| panic!("{op:?}@{nth}: damage not reported"));
            assert_eq!((m.at_segment, m.at_offset), (2, frames[damaged].offset));
            assert_eq!(live_frames(&wal_dir), damaged, "{op:?}@{nth}");
            let kept: Vec<PathBuf> = fs::read_dir(&wal_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .flat_map(|d| fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
                .collect();
            for (id, bytes) in &originals {
                let name = format!("{id:016x}.wal");
                assert!(
                    kept.iter().any(|p| p.file_name().unwrap() == name.as_str()
                        && fs::read(p).unwrap() == *bytes),
                    "{op:?}@{nth}: segment {id} lost"
                );
            }
        }
    }
    assert!(injected_runs >= 10, "{injected_runs}");
}
