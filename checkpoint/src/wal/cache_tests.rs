//! What the log leaves in the page cache (module documentation, last invariant): the pages of
//! a closed segment go at its roll, those behind the write head as the segment grows, and a
//! spare is zeroed when it is reused, so its uncached pages are never read before being
//! written over. Where the file system refuses to zero, the log goes on exactly as before.

use std::fs;
use std::sync::Arc;

use tidemark_fs::{cached_pages, in_memory_file_system, Fault, FaultFs, FaultKind, Op};

use super::*;

const MIB: usize = 1 << 20;

fn options(segment_size: u64) -> WalOptions {
    WalOptions {
        segment_size,
        sync: SyncPolicy::EveryBatch,
    }
}

/// True (and says so) where the file system keeps files in memory only: nothing to drop.
fn skip_in_memory(dir: &Path) -> bool {
    let skip = in_memory_file_system(dir).unwrap();
    if skip {
        eprintln!("skipped: {} keeps files in memory only", dir.display());
    }
    skip
}

fn read_all(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    WalReader::new(dir, WalPosition::default())
        .map(|r| r.map(|(_, f)| (f.epoch, f.payload)).unwrap())
        .collect()
}

#[test]
fn a_closed_segment_leaves_no_page_in_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    if skip_in_memory(dir.path()) {
        return;
    }
    let (mut wal, _) = Wal::open(dir.path(), options(MIB as u64), None).unwrap();
    let mut written = Vec::new();
    for i in 0..40u8 {
        let p = vec![i; 64 << 10];
        wal.append(FrameKind::Record, 1, &p).unwrap();
        wal.commit().unwrap();
        written.push((1, p));
    }
    let segments = segment_files(dir.path()).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    for (_, path, _) in &segments[..segments.len() - 1] {
        let (cached, pages) = cached_pages(path).unwrap();
        assert_eq!(
            cached,
            0,
            "{}: {cached} of {pages} pages cached",
            path.display()
        );
    }
    assert_eq!(
        read_all(dir.path()),
        written,
        "every frame reads back from disk"
    );
}

#[test]
fn pages_behind_the_write_head_go_as_the_segment_grows() {
    let dir = tempfile::tempdir().unwrap();
    if skip_in_memory(dir.path()) {
        return;
    }
    let (mut wal, _) = Wal::open(dir.path(), options(64 << 20), None).unwrap();
    for i in 0..24u8 {
        wal.append(FrameKind::Record, 1, &vec![i; MIB]).unwrap();
        wal.commit().unwrap();
    }
    let segments = segment_files(dir.path()).unwrap();
    assert_eq!(segments.len(), 1, "one segment, still open");
    let (cached, pages) = cached_pages(&segments[0].1).unwrap();
    // Fsynced after each MiB, so what a drop covers is clean: only the chunk handed to
    // writeback last and the one after it (8 MiB) may stay, plus a large folio at each end.
    assert!(
        cached * 4096 <= 12 * MIB,
        "{cached} of {pages} pages of a 24 MiB segment cached"
    );
}

/// Segments of a few pages: a reused one is zeroed past its first page.
const SPARE_TEST_SEGMENT: u64 = 64 << 10;

/// A log whose front went into spares, written on with small frames until its last segment
/// is one of them.
fn log_on_a_spare(fs: SharedFs, dir: &Path) -> (Wal, Vec<(u64, Vec<u8>)>) {
    let (mut wal, _) = Wal::open_with_fs(fs, dir, options(SPARE_TEST_SEGMENT), None).unwrap();
    for epoch in 1..=6u64 {
        for i in 0..3u8 {
            wal.append(FrameKind::Record, epoch, &[i + 1; 9000])
                .unwrap();
            wal.commit().unwrap();
        }
        wal.seal(epoch, b"s").unwrap();
    }
    wal.truncate_before(6).unwrap();
    assert!(!wal.spares().is_empty());
    let mut kept = read_all(dir);
    for i in 0..2000u16 {
        let p = i.to_le_bytes().repeat(50);
        wal.append(FrameKind::Record, 7, &p).unwrap();
        wal.commit().unwrap();
        kept.push((7, p));
        if wal.stale_tail {
            return (wal, kept);
        }
    }
    panic!("no roll reached a spare");
}

#[test]
fn a_reused_spare_is_zeroed_past_its_first_page() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, kept) = log_on_a_spare(std_fs(), dir.path());
    let path = &wal.segments.last().unwrap().path;
    let bytes = fs::read(path).unwrap();
    let from = (wal.file_len as usize).max(ZERO_REUSED_FROM as usize);
    assert!(
        bytes.len() > from + 4096,
        "the spare was longer than its new frames: {} bytes, {from} written",
        bytes.len()
    );
    assert!(
        bytes[from..].iter().all(|b| *b == 0),
        "older bytes past the new frames"
    );
    assert_eq!(read_all(dir.path()), kept);
}

#[test]
fn a_spare_that_cannot_be_zeroed_is_written_over_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultFs::new(Arc::new(tidemark_fs::StdFs));
    faults.arm(Fault {
        sticky: true,
        ..Fault::once(Op::ZeroRange, FaultKind::Eio)
    });
    let (mut wal, mut kept) = log_on_a_spare(Arc::new(faults.clone()), dir.path());
    assert!(wal.poisoned().is_none(), "a refused zeroing is no failure");
    let path = wal.segments.last().unwrap().path.clone();
    let bytes = fs::read(&path).unwrap();
    let from = (wal.file_len as usize).max(ZERO_REUSED_FROM as usize);
    assert!(
        bytes[from..].iter().any(|b| *b != 0),
        "the older bytes stay where the zeroing failed"
    );
    for i in 0..200u16 {
        let p = i.to_le_bytes().repeat(40);
        wal.append(FrameKind::Record, 8, &p).unwrap();
        wal.commit().unwrap();
        kept.push((8, p));
    }
    assert_eq!(read_all(dir.path()), kept);
    // A stop without a cut: the open finds the reused file's older bytes past its frames.
    exact_after_a_crash(wal, dir.path(), &kept);
}

/// Abandons `wal` as a crash would (nothing cut, nothing closed) and opens the log again: it
/// reads exactly `kept`, with no damage found.
fn exact_after_a_crash(wal: Wal, dir: &Path, kept: &[(u64, Vec<u8>)]) {
    std::mem::forget(wal);
    let (_wal, report) = Wal::open(dir, options(SPARE_TEST_SEGMENT), None).unwrap();
    assert!(report.mid_log.is_none(), "{report:?}");
    assert_eq!(read_all(dir), kept, "exact after the crash");
}

#[test]
fn a_reader_of_the_running_log_ends_before_a_reused_file_whose_header_is_not_written_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, kept) = log_on_a_spare(std_fs(), dir.path());
    // A roll up to the moment between zeroing the spare it reuses and writing its header.
    wal.sync().unwrap();
    wal.cut_stale_tail().unwrap();
    let Some((_, spare)) = wal.spares().first().cloned() else {
        panic!("the test needs a spare left to reuse");
    };
    let next = segment_path(dir.path(), wal.next_id);
    fs::rename(&spare, &next).unwrap();
    let mut f = std_fs().open_overwrite(&next).unwrap();
    wal.zero_reused(f.as_mut(), &next);
    // Its first page still names the segment it was: the end of the log, not damage.
    assert_eq!(read_all(dir.path()), kept);
    let bytes = fs::read(&next).unwrap();
    assert!(bytes[ZERO_REUSED_FROM as usize..].iter().all(|b| *b == 0));
    // A crash right there: the open removes the file as a torn segment and loses nothing.
    drop(f);
    exact_after_a_crash(wal, dir.path(), &kept);
}

#[test]
fn an_open_hands_back_the_pages_of_what_it_scanned() {
    let dir = tempfile::tempdir().unwrap();
    if skip_in_memory(dir.path()) {
        return;
    }
    let mut written = Vec::new();
    {
        let (mut wal, _) = Wal::open(dir.path(), options(64 << 20), None).unwrap();
        for i in 0..24u8 {
            let p = vec![i; MIB];
            wal.append(FrameKind::Record, 1, &p).unwrap();
            wal.commit().unwrap();
            written.push((1, p));
        }
    }
    let path = segment_files(dir.path()).unwrap()[0].1.clone();
    // Cached again, as a restart after a SIGKILL may find it.
    assert_eq!(fs::read(&path).unwrap().len() as u64, wal_len(&path));
    let (cached, pages) = cached_pages(&path).unwrap();
    assert!(
        cached > pages / 2,
        "read back into the cache: {cached} of {pages}"
    );
    let mut visited = Vec::new();
    let (_wal, _) = Wal::open_visiting(
        std_fs(),
        dir.path(),
        options(64 << 20),
        Some(WalPosition::default()),
        &mut |_, f| visited.push((f.epoch, f.payload.to_vec())),
    )
    .unwrap();
    assert_eq!(visited, written, "the scan visited every frame");
    let (cached, pages) = cached_pages(&path).unwrap();
    // The last chunk scanned stays (1 MiB, plus a large folio at each end of it).
    assert!(
        cached * 4096 <= 4 * MIB,
        "{cached} of {pages} pages of a scanned 24 MiB segment cached"
    );
}

fn wal_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}
