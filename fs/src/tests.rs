use std::path::Path;
use std::sync::Arc;

use super::*;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn unsynced_data_and_names_are_lost_in_the_crash_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("old"), b"before").unwrap();
    let fs = PowerCutFs::new(&root).unwrap();

    // Synced content, unsynced name: the file is gone after a crash.
    let mut a = fs.create_new(&root.join("a")).unwrap();
    a.write_all(b"hello").unwrap();
    a.sync_data().unwrap();
    // Synced name, content partly synced: only the synced prefix survives.
    fs.sync_dir(&root).unwrap();
    a.write_all(b" world").unwrap();
    // Removed but the directory not synced: the old file comes back.
    fs.remove_file(&root.join("old")).unwrap();
    let mut b = fs.create_new(&root.join("b")).unwrap();
    b.write_all(b"never synced").unwrap();

    let image = dir.path().join("image");
    fs.crash_image(&image).unwrap();
    assert_eq!(read(&image.join("a")), b"hello");
    assert_eq!(read(&image.join("old")), b"before");
    assert!(!image.join("b").exists(), "an unsynced name survives");

    fs.sync_dir(&root).unwrap();
    let image2 = dir.path().join("image2");
    fs.crash_image(&image2).unwrap();
    assert!(!image2.join("old").exists());
    assert_eq!(read(&image2.join("b")), b"", "unsynced content survives");
}

#[test]
fn a_durable_write_survives_a_power_cut_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let fs = PowerCutFs::new(&root).unwrap();
    write_file_durably(&fs, &root.join("f"), b"content", true).unwrap();
    let image = dir.path().join("image");
    fs.crash_image(&image).unwrap();
    assert_eq!(read(&image.join("f")), b"content");
    let names: Vec<_> = std::fs::read_dir(&image).unwrap().collect();
    assert_eq!(names.len(), 1, "temporary files left: {names:?}");
    // Put-if-absent refuses to replace.
    let e = write_file_durably(&fs, &root.join("f"), b"other", true).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(read(&root.join("f")), b"content");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
}

#[test]
fn injected_faults_fail_the_chosen_call_only() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(StdFs));
    fs.arm(Fault {
        op: Op::Write,
        nth: 2,
        path_contains: "x".into(),
        kind: FaultKind::DiskFull,
        sticky: false,
        partial: true,
    });
    let mut f = fs.create_new(&dir.path().join("x")).unwrap();
    f.write_all(b"1234").unwrap();
    let e = f.write_all(b"abcd").unwrap_err();
    assert!(is_disk_full(&e), "{e}");
    assert!(e.to_string().contains("injected"), "{e}");
    f.write_all(b"!").unwrap();
    assert_eq!(read(&dir.path().join("x")), b"1234ab!");
    assert_eq!(fs.injected(), 1);

    fs.arm(Fault {
        sticky: true,
        ..Fault::once(Op::Sync, FaultKind::Eio)
    });
    assert!(f.sync_data().is_err());
    assert!(f.sync_all().is_err(), "a sticky fault keeps failing");
    fs.clear();
    f.sync_all().unwrap();
}

#[test]
fn an_injected_read_fault_fails_that_read_of_that_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("wal-a"), dir.path().join("other"));
    std::fs::write(&a, b"0123456789").unwrap();
    std::fs::write(&b, b"abc").unwrap();
    let fs = FaultFs::new(Arc::new(StdFs));
    fs.arm(Fault {
        nth: 2,
        path_contains: "wal".into(),
        ..Fault::once(Op::Read, FaultKind::Eio)
    });
    let mut f = fs.open_read(&a).unwrap();
    let mut other = fs.open_read(&b).unwrap();
    let mut buf = [0u8; 4];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"0123");
    let mut all = Vec::new();
    other.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"abc", "another path's reads do not count");
    let e = f.read_exact(&mut buf).unwrap_err();
    let eio = io::Error::from_raw_os_error(libc::EIO);
    assert_eq!(e.kind(), eio.kind(), "{e}");
    assert!(
        e.to_string().contains(&eio.to_string())
            && e.to_string().contains("Read of")
            && e.to_string().contains("wal-a"),
        "the error says EIO on a read and names the file: {e}"
    );
    // Once: the next read goes on from where the file is (a failed read moves nothing).
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"4567");
    assert_eq!(fs.injected(), 1);
}

#[test]
fn a_failed_durable_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new(Arc::new(StdFs));
    for op in [Op::Write, Op::Sync, Op::Rename] {
        fs.arm(Fault::once(op, FaultKind::DiskFull));
        let target = dir.path().join("f");
        assert!(write_file_durably(&fs, &target, b"data", false).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{op:?} left a file"
        );
    }
}

proptest::proptest! {
    /// Every temporary name parses back to what made it; a name with something after its
    /// number, or without one, does not parse.
    #[test]
    fn temporary_names_parse_back(
        name in "[A-Za-z0-9 ._%#-]{1,40}",
        pid in proptest::prelude::any::<u32>(),
        n in proptest::prelude::any::<u64>(),
    ) {
        let tmp = temporary_name(&name, pid, n);
        proptest::prop_assert_eq!(
            parse_temporary_name(&tmp),
            Some(TemporaryName { final_name: &name, pid, n })
        );
        let with_tail = format!("{tmp}x");
        let no_n = format!(".{name}{TEMPORARY_MARKER}{pid}-");
        proptest::prop_assert_eq!(parse_temporary_name(&with_tail), None);
        proptest::prop_assert_eq!(parse_temporary_name(&no_n), None);
    }
}

#[test]
fn other_names_are_not_temporary() {
    for name in [
        "00000000000000000001.json",
        ".00000000000000000001.json",
        ".x.tidemark-tmp-12",
        ".x.tidemark-tmp--3",
        ".x.tidemark-tmp-a-3",
        "..tidemark-tmp-1-2",
        "x.tidemark-tmp-1-2",
    ] {
        assert_eq!(parse_temporary_name(name), None, "{name}");
    }
}

/// One step of [`pending_dir_syncs_make_every_placed_name_durable`].
#[derive(Debug, Clone)]
enum DirStep {
    /// Place a new file in directory `0` (of two) without its directory fsync.
    Place(usize),
    /// Sync the pending directories; with `Some(n)`, the n-th directory fsync fails.
    Sync(Option<u64>),
}

fn dir_step() -> impl proptest::strategy::Strategy<Value = DirStep> {
    use proptest::prelude::*;
    prop_oneof![
        (0..2usize).prop_map(DirStep::Place),
        proptest::option::of(1..3u64).prop_map(DirStep::Sync),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    /// [`PendingDirSyncs`] against a power cut: after a sync that returned `Ok`, every file
    /// placed before it is in the crash image, whole; after a failed one the failing directory
    /// is still pending; the next successful sync makes everything durable.
    #[test]
    fn pending_dir_syncs_make_every_placed_name_durable(
        steps in proptest::collection::vec(dir_step(), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let dirs = [root.join("a"), root.join("b")];
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        let power = PowerCutFs::new(&root).unwrap();
        let fault = FaultFs::new(Arc::new(power.clone()));
        let pending = PendingDirSyncs::default();
        let mut placed: Vec<(std::path::PathBuf, Vec<u8>)> = Vec::new();
        let mut images = 0;
        let mut check = |placed: &[(std::path::PathBuf, Vec<u8>)]| {
            images += 1;
            let image = dir.path().join(format!("image-{images}"));
            power.crash_image(&image).unwrap();
            for (path, bytes) in placed {
                let rel = path.strip_prefix(&root).unwrap();
                assert_eq!(std::fs::read(image.join(rel)).ok().as_ref(), Some(bytes), "{}", rel.display());
            }
        };
        for (i, step) in steps.iter().enumerate() {
            match step {
                DirStep::Place(d) => {
                    let path = dirs[*d].join(format!("f{i}"));
                    let bytes = format!("file {i}").into_bytes();
                    let mut f = DurableFile::create(&fault, &path).unwrap();
                    f.append(&bytes).unwrap();
                    pending.add(f.place(false).unwrap());
                    placed.push((path, bytes));
                }
                DirStep::Sync(fail) => {
                    fault.clear();
                    if let Some(n) = fail {
                        fault.arm(Fault { nth: *n, ..Fault::once(Op::SyncDir, FaultKind::Eio) });
                    }
                    let before = pending.pending();
                    match pending.sync(&fault) {
                        Ok(n) => {
                            proptest::prop_assert_eq!(n, before.len());
                            proptest::prop_assert!(pending.pending().is_empty());
                            check(&placed);
                        }
                        Err((failed, _)) => {
                            proptest::prop_assert!(before.contains(&failed));
                            proptest::prop_assert!(pending.pending().contains(&failed));
                        }
                    }
                }
            }
        }
        fault.clear();
        pending.sync(&fault).unwrap();
        check(&placed);
    }
}

/// `copy_from` appends the source's range where `write_all` would write, on the real file
/// system (`copy_file_range`) and through the buffer fallback alike; a source too short is
/// `UnexpectedEof`; `FaultFs` fails it like a write (half copied with `partial`).
#[test]
fn copy_from_appends_a_range_of_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&src_path, &bytes).unwrap();
    let src = std::fs::File::open(&src_path).unwrap();
    for (name, fs) in [
        ("std", std_fs()),
        ("fault", Arc::new(FaultFs::new(std_fs())) as SharedFs),
    ] {
        let out = dir.path().join(name);
        let mut f = fs.create_new(&out).unwrap();
        f.write_all(b"head").unwrap();
        f.copy_from(&src, 1000, 200_000).unwrap();
        f.copy_from(&src, 0, 10).unwrap();
        let err = f.copy_from(&src, 299_990, 20).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "{name}: {err}"
        );
        f.sync_all().unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&bytes[1000..201_000]);
        want.extend_from_slice(&bytes[..10]);
        let got = read(&out);
        assert_eq!(&got[..want.len()], &want[..], "{name}");
    }
    let mut buffered = Vec::new();
    struct Sink<'a>(&'a mut Vec<u8>);
    impl std::fmt::Debug for Sink<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Sink")
        }
    }
    impl WritableFile for Sink<'_> {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0.extend_from_slice(buf);
            Ok(())
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn sync_all(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn set_len(&mut self, _: u64) -> std::io::Result<()> {
            Ok(())
        }
    }
    Sink(&mut buffered).copy_from(&src, 5, 250_000).unwrap();
    assert_eq!(buffered, bytes[5..250_005]);

    let fault = FaultFs::new(std_fs());
    let out = dir.path().join("faulted");
    let mut f = fault.create_new(&out).unwrap();
    fault.arm(Fault {
        partial: true,
        ..Fault::once(Op::Write, FaultKind::DiskFull)
    });
    let err = f.copy_from(&src, 0, 1000).unwrap_err();
    assert!(is_disk_full(&err), "{err}");
    assert_eq!(read(&out), bytes[..500]);
}

#[test]
fn zero_range_reads_as_zeros_and_keeps_the_size_and_the_blocks() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut f = StdFs.create_new(&path).unwrap();
    f.write_all(&[0xAB; 4 * 4096 + 100]).unwrap();
    f.sync_all().unwrap();
    let blocks = std::fs::metadata(&path).unwrap().blocks();
    f.zero_range(4096, 2 * 4096).unwrap();
    let got = read(&path);
    assert!(got[..4096].iter().all(|b| *b == 0xAB));
    assert!(got[4096..3 * 4096].iter().all(|b| *b == 0), "zeroed");
    assert!(got[3 * 4096..].iter().all(|b| *b == 0xAB));
    // A range past the end changes no size.
    f.zero_range(3 * 4096, 1 << 20).unwrap();
    let got = read(&path);
    assert_eq!(got.len(), 4 * 4096 + 100, "the size is kept");
    assert!(got[3 * 4096..].iter().all(|b| *b == 0));
    if !in_memory_file_system(dir.path()).unwrap() {
        // Zeroed, not punched: the blocks stay allocated (what makes writing over them cheap).
        assert!(
            std::fs::metadata(&path).unwrap().blocks() >= blocks,
            "blocks freed: {blocks} then {}",
            std::fs::metadata(&path).unwrap().blocks()
        );
    }
}

#[test]
fn dropping_cached_pages_changes_no_byte_and_leaves_clean_pages_uncached() {
    let dir = tempfile::tempdir().unwrap();
    if in_memory_file_system(dir.path()).unwrap() {
        eprintln!(
            "skipped: {} keeps files in memory only",
            dir.path().display()
        );
        return;
    }
    let path = dir.path().join("f");
    // 16 MiB, half of it dropped: whole large folios (the kernel caches a file in folios of
    // up to a few MiB, and keeps one that a range covers only in part).
    let bytes: Vec<u8> = (0..(16u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut f = StdFs.create_new(&path).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
    let (before, pages) = cached_pages(&path).unwrap();
    assert!(
        before > pages / 2,
        "a file just written is cached: {before} of {pages}"
    );
    // A length of 0 drops nothing (to fadvise it would mean "to the end").
    f.drop_cached(4096, 0);
    assert_eq!(cached_pages(&path).unwrap().0, before, "nothing dropped");
    f.drop_cached(0, 8 << 20);
    let (after, _) = cached_pages(&path).unwrap();
    assert!(
        after <= pages / 2,
        "the synced half's pages went: {before} then {after} of {pages}"
    );
    assert_eq!(read(&path), bytes, "no byte changed");
}

#[test]
fn a_refused_zero_range_is_an_error_the_fault_file_system_can_inject() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let faults = FaultFs::new(Arc::new(StdFs));
    let mut f = faults.create_new(&path).unwrap();
    f.write_all(&[7; 8192]).unwrap();
    faults.arm(Fault::once(Op::ZeroRange, FaultKind::Eio));
    assert!(f.zero_range(0, 8192).is_err());
    assert_eq!(read(&path), vec![7; 8192], "nothing zeroed");
    f.zero_range(0, 4096).unwrap();
    assert!(read(&path)[..4096].iter().all(|b| *b == 0));
}

/// `data_ranges` leaves out what the file system knows to be zeros (a zeroed range, not yet
/// read), and a range with no zeroed part is one part, read directly or through [`FaultFs`].
/// On a file system it does not trust ([`crate::reports_zeroed_ranges`]) it gives the whole
/// range.
#[test]
fn data_ranges_leave_out_zeroed_ranges() {
    use crate::ReadableFile;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut f = StdFs.create_new(&path).unwrap();
    f.write_all(&vec![0xAB; 64 * 4096]).unwrap();
    f.sync_all().unwrap();
    let len = 64 * 4096;
    let mut r = std::fs::File::open(&path).unwrap();
    let whole = Vec::from_iter(std::iter::once(100..len));
    assert_eq!(r.data_ranges(100, len).unwrap(), whole);
    assert_eq!(r.data_ranges(len, len).unwrap(), []);
    f.zero_range(4096, 62 * 4096).unwrap();
    drop(f);
    let parts = r.data_ranges(100, len).unwrap();
    // A file read through the file system the tests inject faults with answers the same.
    let faults = FaultFs::new(Arc::new(StdFs));
    let through_faults = faults.open_read(&path).unwrap().data_ranges(100, len);
    assert_eq!(through_faults.unwrap(), parts, "through FaultFs");
    if !crate::reports_zeroed_ranges(&r) {
        assert_eq!(parts, whole, "not trusted here: everything is data");
        return;
    }
    assert_eq!(
        parts,
        [100..4096, 63 * 4096..len],
        "the zeroed blocks are left out"
    );
    assert_eq!(r.data_ranges(8192, 63 * 4096).unwrap(), []);
}

/// A file of many zeroed ranges is listed as the first 64 data parts, then the rest whole:
/// every byte of data is still in some part.
#[test]
fn data_ranges_list_at_most_64_parts_then_the_rest() {
    use crate::ReadableFile;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut f = StdFs.create_new(&path).unwrap();
    let blocks = 200u64;
    f.write_all(&vec![0xAB; (blocks * 4096) as usize]).unwrap();
    f.sync_all().unwrap();
    // Every other block zeroed: 100 data blocks apart.
    for b in (1..blocks).step_by(2) {
        f.zero_range(b * 4096, 4096).unwrap();
    }
    drop(f);
    let len = blocks * 4096;
    let mut r = std::fs::File::open(&path).unwrap();
    let parts = r.data_ranges(0, len).unwrap();
    if !crate::reports_zeroed_ranges(&r) {
        assert_eq!(
            parts,
            Vec::from_iter(std::iter::once(0..len)),
            "not trusted: all is data"
        );
        return;
    }
    assert_eq!(parts.len(), 65, "{parts:?}");
    assert!(parts[..64].iter().all(|p| p.end - p.start == 4096));
    assert_eq!(
        parts[64],
        127 * 4096..len,
        "the rest after the 64th part, whole"
    );
}
