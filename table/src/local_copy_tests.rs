use std::io::{self, Cursor};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use tidemark_fs::{
    Fault, FaultFs, FaultKind, FileSystem, Op, PowerCutFs, ReadableFile, SharedFs, WritableFile,
};

use super::*;

fn names(dir: &FsPath) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
}

fn copy(
    fs: &dyn FileSystem,
    from: &FsPath,
    to: &FsPath,
    expected: Option<u64>,
    verify: Verify,
) -> Result<Placed, CopyError> {
    copy_local(&LocalCopy {
        fs,
        from,
        to,
        expected_size: expected,
        verify,
        // Several chunks per file.
        chunk_bytes: 4096,
        progress: &|_| {},
    })
}

#[test]
fn a_copy_is_placed_whole_with_the_sources_checksum_and_its_directory_left_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.parquet");
    let bytes = content(10_000 + 17);
    std::fs::write(&src, &bytes).unwrap();
    let root = dir.path().join("replica");
    std::fs::create_dir_all(&root).unwrap();
    let power = PowerCutFs::new(&root).unwrap();
    // A partition directory that does not exist yet.
    let to = root.join("date=2026-11-30").join("part 1.parquet");
    let placed = copy(
        &power,
        &src,
        &to,
        Some(bytes.len() as u64),
        Verify::SizeAndChecksum,
    )
    .unwrap();
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
    assert_eq!(placed.sums.size, bytes.len() as u64);
    assert_eq!(placed.sums.crc32, Some(crc32fast::hash(&bytes)));
    assert_eq!(placed.dir, root.join("date=2026-11-30"));
    assert_eq!(names(&placed.dir), vec!["part 1.parquet".to_string()]);

    // The name is not durable until the caller syncs the directory; the content is.
    let image = dir.path().join("image");
    power.crash_image(&image).unwrap();
    assert!(!image.join("date=2026-11-30/part 1.parquet").exists());
    let pending = tidemark_fs::PendingDirSyncs::default();
    pending.add(placed.dir.clone());
    assert_eq!(pending.sync(&power).unwrap(), 1);
    let image = dir.path().join("image2");
    power.crash_image(&image).unwrap();
    assert_eq!(
        std::fs::read(image.join("date=2026-11-30/part 1.parquet")).unwrap(),
        bytes
    );
    assert!(pending.pending().is_empty());

    // An empty file, with the size check only.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let placed = copy(&power, &empty, &root.join("e"), Some(0), Verify::Size).unwrap();
    assert_eq!(placed.sums.size, 0);
    assert_eq!(std::fs::read(root.join("e")).unwrap(), b"");
}

#[test]
fn a_source_not_of_its_logged_size_or_missing_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, content(5000)).unwrap();
    let root = dir.path().join("replica");
    std::fs::create_dir_all(&root).unwrap();
    let fs = tidemark_fs::std_fs();
    let err = copy(
        fs.as_ref(),
        &src,
        &root.join("a"),
        Some(4999),
        Verify::SizeAndChecksum,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            CopyError::SourceSize {
                expected: 4999,
                actual: 5000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("src"), "{err}");
    let err = copy(
        fs.as_ref(),
        &dir.path().join("gone"),
        &root.join("b"),
        None,
        Verify::SizeAndChecksum,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            CopyError::Read {
                source: object_store::Error::NotFound { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(names(&root).is_empty(), "{:?}", names(&root));
}

/// A file system whose reads of the files it wrote come back with one byte flipped: what a
/// bad disk or a bad page would show the read-back.
#[derive(Debug)]
struct FlipOnRead(SharedFs);

impl FileSystem for FlipOnRead {
    fn create_dir_all(&self, dir: &FsPath) -> io::Result<()> {
        self.0.create_dir_all(dir)
    }
    fn create_new(&self, path: &FsPath) -> io::Result<Box<dyn WritableFile>> {
        self.0.create_new(path)
    }
    fn open_append(&self, path: &FsPath) -> io::Result<Box<dyn WritableFile>> {
        self.0.open_append(path)
    }
    fn open_read(&self, path: &FsPath) -> io::Result<Box<dyn ReadableFile>> {
        let mut bytes = std::fs::read(path)?;
        if let Some(b) = bytes.get_mut(1234) {
            *b ^= 0x40;
        }
        Ok(Box::new(Cursor::new(bytes)))
    }
    fn read_dir(&self, dir: &FsPath) -> io::Result<Vec<PathBuf>> {
        self.0.read_dir(dir)
    }
    fn len(&self, path: &FsPath) -> io::Result<u64> {
        self.0.len(path)
    }
    fn rename(&self, from: &FsPath, to: &FsPath) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn hard_link(&self, from: &FsPath, to: &FsPath) -> io::Result<()> {
        self.0.hard_link(from, to)
    }
    fn remove_file(&self, path: &FsPath) -> io::Result<()> {
        self.0.remove_file(path)
    }
    fn sync_dir(&self, dir: &FsPath) -> io::Result<()> {
        self.0.sync_dir(dir)
    }
}

#[test]
fn a_read_back_that_differs_is_a_mismatch_and_nothing_is_placed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let bytes = content(9000);
    std::fs::write(&src, &bytes).unwrap();
    let root = dir.path().join("replica");
    std::fs::create_dir_all(&root).unwrap();
    let fs = FlipOnRead(tidemark_fs::std_fs());
    let err = copy(
        &fs,
        &src,
        &root.join("a"),
        Some(9000),
        Verify::SizeAndChecksum,
    )
    .unwrap_err();
    let CopyError::Mismatch {
        expected, found, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(expected.crc32, Some(crc32fast::hash(&bytes)));
    assert_eq!(found.size, 9000);
    assert_ne!(found.crc32, expected.crc32);
    assert!(
        names(&root).is_empty(),
        "no final name, no temporary: {:?}",
        names(&root)
    );
    // With the size check only, the flipped byte is not seen (what `--verify size` trades).
    copy(&fs, &src, &root.join("b"), Some(9000), Verify::Size).unwrap();
    assert_eq!(std::fs::read(root.join("b")).unwrap(), bytes);
}

#[test]
fn a_failed_write_or_fsync_leaves_neither_the_file_nor_its_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, content(20_000)).unwrap();
    let root = dir.path().join("replica");
    std::fs::create_dir_all(&root).unwrap();
    let fault = FaultFs::new(tidemark_fs::std_fs());
    for (op, kind) in [
        (Op::Write, FaultKind::DiskFull),
        (Op::Sync, FaultKind::Eio),
        (Op::Rename, FaultKind::Eio),
    ] {
        let mut f = Fault::once(op, kind);
        // A later chunk, after some bytes were written.
        if op == Op::Write {
            f.nth = 3;
            f.partial = true;
        }
        fault.arm(f);
        let err = copy(
            &fault,
            &src,
            &root.join("a"),
            Some(20_000),
            Verify::SizeAndChecksum,
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::Write { .. }), "{op:?}: {err}");
        assert!(err.to_string().contains("replica/a"), "{err}");
        assert!(names(&root).is_empty(), "{op:?}: {:?}", names(&root));
    }
    assert_eq!(fault.injected(), 3);
    copy(
        &fault,
        &src,
        &root.join("a"),
        Some(20_000),
        Verify::SizeAndChecksum,
    )
    .unwrap();
    assert_eq!(names(&root), vec!["a".to_string()]);
}

#[test]
fn a_failed_directory_sync_keeps_the_directories_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let fault = FaultFs::new(tidemark_fs::std_fs());
    let pending = tidemark_fs::PendingDirSyncs::default();
    pending.add(a.clone());
    pending.add(b.clone());
    pending.add(a.clone());
    fault.arm(Fault::once(Op::SyncDir, FaultKind::Eio));
    let (failed, e) = pending.sync(&fault).unwrap_err();
    assert_eq!(failed, a);
    assert!(e.to_string().contains("injected"), "{e}");
    assert_eq!(pending.pending(), vec![a.clone(), b.clone()]);
    assert_eq!(pending.sync(&fault).unwrap(), 2);
    assert!(pending.pending().is_empty());
    let _: Arc<dyn FileSystem> = Arc::new(fault);
}
