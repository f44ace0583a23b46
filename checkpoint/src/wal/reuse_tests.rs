//! Spare segment files written over as later segments (`format.rs`, "Why version 2 binds each
//! frame to its segment id"): reused, never read back as frames of the new segment, cut to
//! their frames when the log moves on (after a stop or a crash, by the next open), and exact
//! after a crash at each step.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use tidemark_fs::{Fault, FaultFs, FaultKind, Op};

use std::path::PathBuf;

use super::*;

type F = (FrameKind, u64, Vec<u8>);

const SEGMENT: u64 = 400;

fn options() -> WalOptions {
    WalOptions {
        segment_size: SEGMENT,
        sync: SyncPolicy::EveryBatch,
    }
}

fn read_all(dir: &Path) -> Vec<F> {
    WalReader::new(dir, WalPosition::default())
        .map(|r| r.map(|(_, f)| (f.kind, f.epoch, f.payload)).unwrap())
        .collect()
}

/// Appends `per_epoch` records of `size` bytes and a seal for each epoch in `epochs`; returns
/// what it appended.
fn write_epochs(
    wal: &mut Wal,
    epochs: std::ops::RangeInclusive<u64>,
    per_epoch: usize,
    size: usize,
) -> Vec<F> {
    let mut out = Vec::new();
    for epoch in epochs {
        for i in 0..per_epoch {
            let p = vec![(epoch * 7 + i as u64) as u8; size];
            wal.append(FrameKind::Record, epoch, &p).unwrap();
            wal.commit().unwrap();
            out.push((FrameKind::Record, epoch, p));
        }
        let seal = format!("seal-{epoch}").into_bytes();
        wal.seal(epoch, &seal).unwrap();
        out.push((FrameKind::Seal, epoch, seal));
    }
    out
}

fn names(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// What the log reads after its front was dropped before `epoch`: a suffix of `frames`
/// holding at least every frame of `epoch` on (a kept segment may start in an earlier epoch).
fn kept_from(dir: &Path, frames: &[F], epoch: u64) -> Vec<F> {
    let kept = read_all(dir);
    assert!(kept.len() <= frames.len());
    assert_eq!(
        kept,
        frames[frames.len() - kept.len()..],
        "a suffix of what was written"
    );
    let needed = frames.iter().filter(|f| f.1 >= epoch).count();
    assert!(
        kept.len() >= needed,
        "every frame of epoch {epoch} on is kept"
    );
    kept
}

/// A log of six epochs in `dir` (through `fs`) whose segments before epoch 6 were dropped,
/// into spares where the file system allows; returns it and the frames it still reads.
fn log_with_spares(fs: SharedFs, dir: &Path) -> (Wal, Vec<F>) {
    let (mut wal, _) = Wal::open_with_fs(fs, dir, options(), None).unwrap();
    let frames = write_epochs(&mut wal, 1..=6, 3, 90);
    wal.truncate_before(6).unwrap();
    let kept = kept_from(dir, &frames, 6);
    (wal, kept)
}

/// A log whose front was dropped into spares, then written on over them: the big first
/// frames leave each spare holding older frames past what its new life writes.
fn log_over_spares(dir: &Path) -> (Wal, Vec<F>) {
    let (mut wal, _) = Wal::open(dir, options(), None).unwrap();
    let all = write_epochs(&mut wal, 1..=6, 3, 90);
    assert_eq!(wal.truncate_before(5).unwrap(), wal.spares().len());
    assert!(!wal.spares().is_empty() && wal.spares().len() <= MAX_SPARES);
    let mut kept = kept_from(dir, &all, 5);
    kept.extend(write_epochs(&mut wal, 7..=8, 2, 10));
    (wal, kept)
}

#[test]
fn dropped_segments_become_spares_and_later_segments_reuse_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), options(), None).unwrap();
    let frames = write_epochs(&mut wal, 1..=8, 3, 90);
    let before = segment_files(dir.path()).unwrap();
    let dropped = wal.truncate_before(8).unwrap();
    assert!(
        dropped > MAX_SPARES,
        "the test must drop more than the spares kept: {dropped}"
    );
    // The oldest ones are kept as spares (their files, same inodes), the rest deleted.
    let spares = names(dir.path(), ".spare");
    assert_eq!(spares.len(), MAX_SPARES, "{spares:?}");
    let inodes: Vec<u64> = before[..MAX_SPARES]
        .iter()
        .map(|(_, p, _)| {
            let spare = p.with_extension("spare");
            assert!(
                spare.exists(),
                "{} kept as {}",
                p.display(),
                spare.display()
            );
            fs::metadata(&spare).unwrap().ino()
        })
        .collect();
    let kept = kept_from(dir.path(), &frames, 8);
    // The next segments are those files, written over with smaller frames: each file holds
    // older bytes past its new frames until the log moves on.
    let more = write_epochs(&mut wal, 9..=10, 5, 30);
    assert!(
        names(dir.path(), ".spare").len() < MAX_SPARES,
        "spares were reused"
    );
    let live: Vec<u64> = segment_files(dir.path())
        .unwrap()
        .iter()
        .map(|(_, p, _)| fs::metadata(p).unwrap().ino())
        .collect();
    assert!(
        inodes.iter().any(|i| live.contains(i)),
        "a spare's file became a segment: spares {inodes:?}, live {live:?}"
    );
    let mut expected = kept;
    expected.extend(more.clone());
    assert_eq!(
        read_all(dir.path()),
        expected,
        "no older frame is read back"
    );
    // A stop leaves the reused last segment uncut; the open cuts it, as a reused file.
    drop(wal);
    let (_wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    assert!(report.mid_log.is_none(), "{report:?}");
    assert!(
        report.truncation.as_ref().is_some_and(|t| t.reused_file),
        "{report:?}"
    );
    assert_eq!(read_all(dir.path()), expected);
}

#[test]
fn a_crash_on_a_reused_segment_reads_back_exactly_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, expected) = log_over_spares(dir.path());
    let live = wal.segments();
    let (last_id, _, written) = *live.last().unwrap();
    // A crash: no drop, so the reused file keeps the older bytes after its frames.
    std::mem::forget(wal);
    let on_disk = fs::metadata(segment_path(dir.path(), last_id))
        .unwrap()
        .len();
    assert!(
        on_disk > written,
        "the reused file holds older bytes past its frames"
    );
    let (mut wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    let t = report.truncation.as_ref().expect("the older bytes are cut");
    assert!(t.reused_file, "{t:?}");
    assert_eq!(t.at, written);
    assert!(
        report.mid_log.is_none(),
        "older frames (seals among them) are not this log's: {report:?}"
    );
    assert_eq!(read_all(dir.path()), expected);
    // The log goes on from there.
    wal.seal(9, b"after").unwrap();
    let mut more = expected;
    more.push((FrameKind::Seal, 9, b"after".to_vec()));
    assert_eq!(read_all(dir.path()), more);
}

#[test]
fn damage_inside_a_reused_segment_is_still_told_from_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = log_over_spares(dir.path());
    let (last_id, _, written) = *wal.segments().last().unwrap();
    std::mem::forget(wal);
    let path = segment_path(dir.path(), last_id);
    // A flipped bit in the reused segment's first frame, before its own (valid) seal: damage
    // before the end, moved aside, as in a new file.
    let mut bytes = fs::read(&path).unwrap();
    bytes[SEGMENT_HEADER_LEN + 25] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    assert!(written > SEGMENT_HEADER_LEN as u64 + 60);
    assert_damage_moved_aside_from_the_first_frame(dir.path(), options(), last_id);
}

/// The same with segments of many pages: the reused file's older bytes past its first page
/// were zeroed by the WAL (`zero_range`) and, after the crash, are still zeros the file system
/// knows of, which the search for a seal after the damage skips unread
/// (`ReadableFile::data_ranges`). The damage is flipped in place, so they stay so; the seal of
/// the segment's own life, in the data before them, is still found.
#[test]
fn damage_inside_a_reused_segment_with_a_zeroed_rest_is_still_told_from_its_end() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let big = WalOptions {
        segment_size: 64 << 10,
        sync: SyncPolicy::EveryBatch,
    };
    let (mut wal, _) = Wal::open(dir.path(), big, None).unwrap();
    write_epochs(&mut wal, 1..=6, 30, 2_000);
    wal.truncate_before(5).unwrap();
    assert!(!wal.spares().is_empty());
    wal.start_new_segment(7).unwrap();
    write_epochs(&mut wal, 7..=7, 3, 2_000);
    let (last_id, _, written) = *wal.segments().last().unwrap();
    std::mem::forget(wal);
    let path = segment_path(dir.path(), last_id);
    let at = (SEGMENT_HEADER_LEN + 25) as u64;
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    }
    let mut file = fs::File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    assert!(
        len > written + 8192,
        "a reused file longer than its new life: {len}"
    );
    if tidemark_fs::reports_zeroed_ranges(&file) {
        let parts = tidemark_fs::ReadableFile::data_ranges(&mut file, 0, len).unwrap();
        let listed: u64 = parts.iter().map(|p| p.end - p.start).sum();
        assert!(
            listed < len / 2,
            "the reused file's zeroed rest is left out: {parts:?} of {len} bytes"
        );
    }
    drop(file);
    assert_damage_moved_aside_from_the_first_frame(dir.path(), big, last_id);
}

/// Opens the log in `dir`: the damage in segment `id`'s first frame is before the end (a valid
/// seal of the segment follows it), so the open moves it aside from that frame.
fn assert_damage_moved_aside_from_the_first_frame(dir: &Path, options: WalOptions, id: u64) {
    let (_wal, report) = Wal::open(dir, options, None).unwrap();
    let m = report
        .mid_log
        .as_ref()
        .expect("a valid seal of the segment follows the damage");
    assert_eq!((m.at_segment, m.at_offset), (id, SEGMENT_HEADER_LEN as u64));
}

/// A log with spares in `dir` as a roll leaves it between renaming its first spare to the
/// next segment and writing that segment's header: the file under the new name still has the
/// old header (another id) and the old frames. Returns the frames the log reads, the renamed
/// file's path and the id it had as a spare. (The log is dropped: a stop and a crash leave
/// the same files.)
fn spare_renamed_as_next(dir: &Path) -> (Vec<F>, PathBuf, u64) {
    let (wal, kept) = log_with_spares(std_fs(), dir);
    let (spare_id, spare) = wal.spares()[0].clone();
    let (last_id, _, _) = *wal.segments().last().unwrap();
    drop(wal);
    let next = segment_path(dir, last_id + 1);
    fs::rename(&spare, &next).unwrap();
    (kept, next, spare_id)
}

#[test]
fn a_crash_between_reusing_a_spare_and_writing_its_header_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, next, spare_id) = spare_renamed_as_next(dir.path());
    let (mut wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    let t = report
        .truncation
        .as_ref()
        .expect("a segment whose header is not its own is torn");
    assert_eq!(t.at, 0, "{t:?} (spare was segment {spare_id})");
    assert!(
        report.mid_log.is_none(),
        "a crash is not damage: {report:?}"
    );
    assert!(!next.exists(), "the torn segment is removed");
    assert_eq!(read_all(dir.path()), kept);
    let more = write_epochs(&mut wal, 7..=7, 1, 5);
    let mut expected = kept;
    expected.extend(more);
    assert_eq!(read_all(dir.path()), expected);
}

#[test]
fn the_next_segment_id_passes_every_spare_when_the_live_log_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = log_with_spares(std_fs(), dir.path());
    let newest_spare = wal.spares().iter().map(|(id, _)| *id).max().unwrap();
    drop(wal);
    for (_, p, _) in segment_files(dir.path()).unwrap() {
        fs::remove_file(p).unwrap();
    }
    // Only spares left: the next segments are written over them, under ids none of their
    // older frames carries.
    let (mut wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    assert_eq!(report.frames, 0);
    let first = wal.start_new_segment(1).unwrap();
    assert!(
        first.segment > newest_spare,
        "{} after spare {newest_spare}",
        first.segment
    );
    let frames = write_epochs(&mut wal, 1..=2, 2, 10);
    std::mem::forget(wal);
    let (_wal, _) = Wal::open(dir.path(), options(), None).unwrap();
    assert_eq!(read_all(dir.path()), frames);
}

#[test]
fn a_failed_cut_of_a_reused_segment_poisons_the_log_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultFs::new(Arc::new(tidemark_fs::StdFs));
    let (mut wal, _) =
        Wal::open_with_fs(Arc::new(faults.clone()), dir.path(), options(), None).unwrap();
    let written = write_epochs(&mut wal, 1..=6, 3, 90);
    wal.truncate_before(5).unwrap();
    let mut acked = kept_from(dir.path(), &written, 5);
    acked.extend(write_epochs(&mut wal, 7..=7, 1, 10));
    // The roll away from the reused segment must cut it first; the cut fails (EIO).
    faults.arm(Fault::once(Op::SetLen, FaultKind::Eio));
    let mut failed = false;
    for i in 0..20u8 {
        match wal
            .append(FrameKind::Record, 8, &[i; 90])
            .and_then(|_| wal.commit())
        {
            Ok(_) => acked.push((FrameKind::Record, 8, vec![i; 90])),
            Err(e) => {
                failed = true;
                assert!(wal.poisoned().is_some(), "{e}");
                break;
            }
        }
    }
    assert!(failed, "a roll was reached and its cut failed");
    assert!(wal.append(FrameKind::Record, 8, b"x").is_err(), "poisoned");
    std::mem::forget(wal);
    let (_wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    assert!(report.mid_log.is_none(), "{report:?}");
    assert_eq!(read_all(dir.path()), acked);
}

#[test]
fn a_spare_deleted_by_hand_makes_the_roll_create_a_file_instead() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, mut kept) = log_with_spares(std_fs(), dir.path());
    for (_, spare) in wal.spares().to_vec() {
        fs::remove_file(spare).unwrap();
    }
    kept.extend(write_epochs(&mut wal, 7..=9, 3, 90));
    assert!(wal.poisoned().is_none());
    assert_eq!(read_all(dir.path()), kept);
}

/// A file system that cannot open a file to be written over (the trait's default).
#[derive(Debug)]
struct NoOverwrite;

impl tidemark_fs::FileSystem for NoOverwrite {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        tidemark_fs::StdFs.create_dir_all(dir)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn tidemark_fs::WritableFile>> {
        tidemark_fs::StdFs.create_new(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn tidemark_fs::WritableFile>> {
        tidemark_fs::StdFs.open_append(path)
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn tidemark_fs::ReadableFile>> {
        tidemark_fs::StdFs.open_read(path)
    }
    fn read_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        tidemark_fs::StdFs.read_dir(dir)
    }
    fn len(&self, path: &Path) -> std::io::Result<u64> {
        tidemark_fs::StdFs.len(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        tidemark_fs::StdFs.rename(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        tidemark_fs::StdFs.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        tidemark_fs::StdFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        tidemark_fs::StdFs.sync_dir(dir)
    }
}

#[test]
fn a_file_system_that_cannot_write_over_files_keeps_no_spares() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, mut frames) = log_with_spares(Arc::new(NoOverwrite), dir.path());
    for epoch in 7..=12 {
        frames.extend(write_epochs(&mut wal, epoch..=epoch, 3, 90));
        wal.truncate_before(epoch).unwrap();
        frames = kept_from(dir.path(), &frames, epoch);
    }
    assert!(wal.poisoned().is_none());
    assert!(wal.spares().is_empty(), "{:?}", wal.spares());
    assert!(
        names(dir.path(), ".spare").is_empty(),
        "no spare left on disk"
    );
}

#[test]
fn a_reader_ends_at_a_last_segment_whose_header_is_another_ones() {
    let dir = tempfile::tempdir().unwrap();
    // A roll in progress: the spare renamed, its new header not written yet.
    let (kept, _, _) = spare_renamed_as_next(dir.path());
    assert_eq!(
        read_all(dir.path()),
        kept,
        "the older segment's frames are not read"
    );
}

#[test]
fn a_reused_file_written_past_its_old_end_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let small = WalOptions {
        segment_size: 200,
        sync: SyncPolicy::EveryBatch,
    };
    let (mut wal, _) = Wal::open(dir.path(), small, None).unwrap();
    let frames = write_epochs(&mut wal, 1..=6, 3, 40);
    wal.truncate_before(6).unwrap();
    let mut kept = kept_from(dir.path(), &frames, 6);
    assert!(!wal.spares().is_empty());
    drop(wal);
    // Reopened with bigger segments: each spare (at most 200 bytes) is written past its end,
    // so no roll needs a cut; a cut would fail here.
    let faults = FaultFs::new(Arc::new(tidemark_fs::StdFs));
    let (mut wal, _) =
        Wal::open_with_fs(Arc::new(faults.clone()), dir.path(), options(), None).unwrap();
    faults.arm(Fault {
        sticky: true,
        ..Fault::once(Op::SetLen, FaultKind::Eio)
    });
    let spares = wal.spares().len();
    kept.extend(write_epochs(&mut wal, 7..=9, 3, 90));
    assert!(wal.poisoned().is_none());
    assert!(wal.spares().len() < spares, "the rolls reused spares");
    assert_eq!(faults.injected(), 0, "no cut was attempted");
    assert_eq!(read_all(dir.path()), kept);
}

/// The checkpoint names a position in a segment that is gone at open (removed as torn, or
/// moved aside): the segment made again under that id is a new file, never a spare, so a
/// scan from that position never starts in a spare's older bytes.
#[test]
fn a_segment_made_again_under_the_checkpointed_id_is_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = log_with_spares(std_fs(), dir.path());
    assert!(!wal.spares().is_empty());
    let (last_id, _, _) = *wal.segments().last().unwrap();
    drop(wal);
    fs::remove_file(segment_path(dir.path(), last_id)).unwrap();
    let checkpointed = WalPosition {
        segment: last_id,
        offset: 150,
    };
    let (mut wal, report) = Wal::open(dir.path(), options(), Some(checkpointed)).unwrap();
    assert!(report.end < checkpointed, "{report:?}");
    let spares: Vec<u64> = wal
        .spares()
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().ino())
        .collect();
    let at = wal.start_new_segment(7).unwrap();
    assert_eq!(at.segment, last_id, "the id is made again");
    let made = fs::metadata(segment_path(dir.path(), last_id)).unwrap();
    assert!(!spares.contains(&made.ino()), "not a spare's file");
    assert_eq!(
        made.len(),
        SEGMENT_HEADER_LEN as u64,
        "a new file: its header alone"
    );
}

#[test]
fn only_names_the_writer_gives_are_segments_or_spares() {
    use crate::wal::segment::parse_segment_name;
    assert_eq!(parse_segment_name("000000000000000a.wal"), Some(10));
    assert_eq!(parse_segment_name("000000000000000A.wal"), None);
    assert_eq!(parse_segment_name("+00000000000000a.wal"), None);
    assert_eq!(parse_segment_name("00000000000000a.wal"), None);
}

/// Rewrites segment `id` at `path` as a build before version 2 wrote it: a version 1 header
/// and the same frames, their CRCs unbound.
fn rewrite_as_version_1(path: &Path, id: u64) {
    use format::{decode_frame, VERSION_UNBOUND};
    let bytes = fs::read(path).unwrap();
    let mut header = SegmentHeader::decode(&bytes).unwrap().encode();
    header[8..10].copy_from_slice(&VERSION_UNBOUND.to_le_bytes());
    header[10..12].copy_from_slice(&0u16.to_le_bytes());
    let crc = crc32fast::hash(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut out = header.to_vec();
    let mut at = SEGMENT_HEADER_LEN;
    while let Ok((frame, len)) = decode_frame(FrameBinding::Segment(id), &bytes[at..]) {
        encode_frame(
            FrameBinding::Unbound,
            frame.kind,
            frame.epoch,
            &frame.payload,
            &mut out,
        );
        at += len;
    }
    fs::write(path, out).unwrap();
}

/// A version 1 segment the log drops is deleted, never kept as a spare (its unbound older
/// frames would pass under either binding after a torn header of its next life); the
/// version 2 segments written after it still are.
#[test]
fn a_version_1_segment_is_deleted_not_kept_as_a_spare() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), options(), None).unwrap();
    let mut frames = write_epochs(&mut wal, 1..=6, 3, 90);
    drop(wal);
    let old = segment_files(dir.path()).unwrap();
    assert!(old.len() > 2, "{old:?}");
    for (id, path, _) in &old {
        rewrite_as_version_1(path, *id);
    }
    let (mut wal, _) = Wal::open(dir.path(), options(), None).unwrap();
    assert_eq!(read_all(dir.path()), frames, "version 1 segments are read");
    frames.extend(write_epochs(&mut wal, 7..=12, 3, 90));
    let newest_v1 = old.last().unwrap().0;
    while wal.segments().first().is_some_and(|s| s.0 <= newest_v1) {
        let next_epoch = wal.segments()[1].1;
        assert!(wal.truncate_before(next_epoch + 1).unwrap() > 0);
    }
    assert!(
        wal.spares().iter().all(|(id, _)| *id > newest_v1),
        "a version 1 segment became a spare: {:?}",
        wal.spares()
    );
    // Version 2 segments dropped become spares as before.
    let newest = wal.segments().last().unwrap().1;
    wal.truncate_before(newest).unwrap();
    assert!(!wal.spares().is_empty());
    assert!(wal.spares().len() <= MAX_SPARES);
}

/// Every failure of a roll onto a spare (the file system refusing to write over it, the
/// header's write, its fsync, the directory's fsync) poisons the log and loses nothing
/// acknowledged, as a roll onto a new file does (`fault_tests.rs`); a spare that cannot be
/// renamed makes the roll create a new file instead. The next open finds no damage.
#[test]
fn every_failure_of_a_roll_onto_a_spare_poisons_or_falls_back_and_loses_nothing() {
    let cases = [
        ("write over", Op::Create, FaultKind::Eio, false, true),
        ("header write", Op::Write, FaultKind::DiskFull, true, true),
        ("header fsync", Op::Sync, FaultKind::Eio, false, true),
        ("directory fsync", Op::SyncDir, FaultKind::Eio, false, true),
        ("rename", Op::Rename, FaultKind::Eio, false, false),
    ];
    for (name, op, kind, partial, poisons) in cases {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultFs::new(Arc::new(tidemark_fs::StdFs));
        let (mut wal, mut acked) = log_with_spares(Arc::new(faults.clone()), dir.path());
        let spares = wal.spares().len();
        assert!(spares > 0, "{name}");
        let next = wal.segments().last().unwrap().0 + 1;
        // Only the new segment's calls (the directory's for its fsync) fail.
        let path_contains = if op == Op::SyncDir {
            String::new()
        } else {
            segment::segment_name(next)
        };
        faults.arm(Fault {
            path_contains,
            partial,
            ..Fault::once(op, kind)
        });
        let rolled = wal.start_new_segment(7);
        assert_eq!(faults.injected(), 1, "{name}: the fault was reached");
        assert_eq!(
            wal.spares().len(),
            spares - 1,
            "{name}: the roll took a spare"
        );
        assert_eq!(rolled.is_err(), poisons, "{name}: {rolled:?}");
        if poisons {
            assert!(wal.poisoned().is_some(), "{name}");
        } else {
            let p = vec![7u8; 60];
            wal.append(FrameKind::Record, 7, &p).unwrap();
            wal.commit().unwrap();
            acked.push((FrameKind::Record, 7, p));
        }
        drop(wal);
        let (_wal, report) = Wal::open(dir.path(), options(), None).unwrap();
        assert!(report.mid_log.is_none(), "{name}: {report:?}");
        assert_eq!(read_all(dir.path()), acked, "{name}");
    }
}

/// Segments moved aside as damaged keep their ids from the next roll's spares: the damaged
/// segment's valid part stays in the live log, the later segments are only in the `damaged-*`
/// directory, and the next of them a later open's log makes again is a new file, as a
/// checkpoint position may point into it (`newest_id_known` counts the ids in `damaged-*`
/// directories).
#[test]
fn a_segment_made_again_under_an_id_moved_aside_is_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = log_with_spares(std_fs(), dir.path());
    assert!(!wal.spares().is_empty());
    let live = wal.segments();
    assert!(live.len() >= 2, "{live:?}");
    let damaged_id = live[live.len() - 2].0;
    drop(wal);
    // Damage before later valid seals: moved aside with every later segment, not cut.
    let path = segment_path(dir.path(), damaged_id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[SEGMENT_HEADER_LEN + 25] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let (wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    let moved = report.mid_log.as_ref().expect("damage before the end");
    assert_eq!(moved.at_segment, damaged_id);
    drop(wal);
    // A later open: the moved ids are no longer in the live log's listing.
    let (mut wal, report) = Wal::open(dir.path(), options(), None).unwrap();
    assert!(report.damage().is_none(), "{report:?}");
    let next = segment_path(dir.path(), damaged_id + 1);
    assert!(
        !next.exists(),
        "the later segment is only in the damaged directory"
    );
    let spares: Vec<u64> = wal
        .spares()
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().ino())
        .collect();
    assert!(!spares.is_empty());
    let at = wal.start_new_segment(7).unwrap();
    assert_eq!(at.segment, damaged_id + 1, "a moved id is made again");
    let made = fs::metadata(&next).unwrap();
    assert!(!spares.contains(&made.ino()), "not a spare's file");
}
