//! Power cuts during replication (`PowerCutFs`): the replica's directory entries and file
//! contents are tracked as the POSIX contract makes them durable, and after every directory
//! fsync — every moment a name becomes durable — the tree a power cut would leave is checked:
//! its commits are contiguous from version 0, each is the source's commit byte for byte, and
//! every data file a commit adds is there, whole (the source's bytes). Data files are placed
//! without their directory fsync and their directories synced once per commit
//! ([`tidemark_fs::PendingDirSyncs`]), so a missing batch sync shows up here as a durable
//! commit whose files are gone after the cut.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidemark_fs::{FileSystem, PowerCutFs, ReadableFile, WritableFile};

use super::*;
use crate::location::open_store;
use crate::test_support::{tree, HandTable};

/// The replica's file system: a [`PowerCutFs`] whose every directory fsync is followed by a
/// check of the crash image; `skip_sync_of` leaves out the fsyncs of one directory (to show
/// the check catches a missing one).
#[derive(Debug)]
struct CheckEverySync {
    power: PowerCutFs,
    source: PathBuf,
    images: PathBuf,
    skip_sync_of: Option<PathBuf>,
    /// The next fsync of this directory fails with EIO (and syncs nothing).
    fail_sync_of: Mutex<Option<PathBuf>>,
    checks: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl CheckEverySync {
    fn check_now(&self) {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        let image = self.images.join(format!("image-{n}"));
        self.power.crash_image(&image).unwrap();
        if let Err(e) = check_image(&image, &self.source) {
            self.failures
                .lock()
                .unwrap()
                .push(format!("crash image {n}: {e}"));
        }
        std::fs::remove_dir_all(&image).unwrap();
    }
}

impl FileSystem for CheckEverySync {
    fn create_dir_all(&self, dir: &FsPath) -> io::Result<()> {
        self.power.create_dir_all(dir)
    }
    fn create_new(&self, path: &FsPath) -> io::Result<Box<dyn WritableFile>> {
        self.power.create_new(path)
    }
    fn open_append(&self, path: &FsPath) -> io::Result<Box<dyn WritableFile>> {
        self.power.open_append(path)
    }
    fn open_read(&self, path: &FsPath) -> io::Result<Box<dyn ReadableFile>> {
        self.power.open_read(path)
    }
    fn read_dir(&self, dir: &FsPath) -> io::Result<Vec<PathBuf>> {
        self.power.read_dir(dir)
    }
    fn len(&self, path: &FsPath) -> io::Result<u64> {
        self.power.len(path)
    }
    fn rename(&self, from: &FsPath, to: &FsPath) -> io::Result<()> {
        self.power.rename(from, to)
    }
    fn hard_link(&self, from: &FsPath, to: &FsPath) -> io::Result<()> {
        self.power.hard_link(from, to)
    }
    fn remove_file(&self, path: &FsPath) -> io::Result<()> {
        self.power.remove_file(path)
    }
    fn sync_dir(&self, dir: &FsPath) -> io::Result<()> {
        {
            let mut fail = self.fail_sync_of.lock().unwrap();
            if fail.as_deref() == Some(dir) {
                *fail = None;
                return Err(io::Error::other(format!(
                    "injected EIO on the fsync of {}",
                    dir.display()
                )));
            }
        }
        if self.skip_sync_of.as_deref() != Some(dir) {
            self.power.sync_dir(dir)?;
        }
        self.check_now();
        Ok(())
    }
}

/// What a power cut left at `image` is a readable version of the source table at `source`.
fn check_image(image: &FsPath, source: &FsPath) -> Result<(), String> {
    let files = tree(image);
    let mut versions = Vec::new();
    for name in files.keys() {
        if let Some(v) = name
            .strip_prefix("_delta_log/")
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    for (i, v) in versions.iter().enumerate() {
        if *v != i as u64 {
            return Err(format!("commits {versions:?}: version {i} missing"));
        }
    }
    let source_file = |name: &str| std::fs::read(source.join(name)).ok();
    for v in versions {
        let name = format!("_delta_log/{}", commit_file_name(v));
        let commit = &files[&name];
        if Some(commit) != source_file(&name).as_ref() {
            return Err(format!("commit {v} is torn ({} bytes)", commit.len()));
        }
        for line in std::str::from_utf8(commit).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(path) = action
                .get("add")
                .and_then(|a| a.get("path"))
                .and_then(|p| p.as_str())
            else {
                continue;
            };
            let decoded = percent_encoding::percent_decode_str(path)
                .decode_utf8()
                .unwrap()
                .into_owned();
            match files.get(&decoded) {
                None => return Err(format!("commit {v} adds {decoded}, missing after the cut")),
                Some(bytes) if Some(bytes) != source_file(&decoded).as_ref() => {
                    return Err(format!(
                        "commit {v} adds {decoded}, torn after the cut ({} bytes)",
                        bytes.len()
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn checked_fs(src_dir: &FsPath, dst_dir: &FsPath, skip_data_dir_sync: bool) -> Arc<CheckEverySync> {
    std::fs::create_dir_all(dst_dir).unwrap();
    Arc::new(CheckEverySync {
        power: PowerCutFs::new(dst_dir).unwrap(),
        source: src_dir.to_path_buf(),
        images: dst_dir.with_extension("images"),
        skip_sync_of: skip_data_dir_sync.then(|| dst_dir.to_path_buf()),
        fail_sync_of: Mutex::default(),
        checks: AtomicU64::new(0),
        failures: Mutex::default(),
    })
}

/// Replicates a table of several versions (three data files each) in two rounds through a
/// [`CheckEverySync`]; returns it for its checks and failures, and the final crash image's
/// files.
async fn replicate_with_cuts(
    skip_data_dir_sync: bool,
) -> (
    Arc<CheckEverySync>,
    BTreeMap<String, Vec<u8>>,
    BTreeMap<String, Vec<u8>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    for i in 0..4 {
        t.append(3, 3000 + i * 517, i % 2 == 1);
    }
    let fs = checked_fs(&src_dir, &dst_dir, skip_data_dir_sync);
    let dst = TableLocation::parse_with_fs(dst_dir.to_str().unwrap(), fs.clone()).unwrap();
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    let options = ReplicateOptions {
        chunk_bytes: 1024,
        ..ReplicateOptions::default()
    };
    let r = Replicator::new(src, dst, options).unwrap();
    assert!(r.local.is_some(), "the local fast path is the one tested");
    r.round(&NoObserver).await.unwrap();
    for i in 0..3 {
        t.append(2, 2000 + i * 100, true);
    }
    r.round(&NoObserver).await.unwrap();
    let last = dir.path().join("last");
    fs.power.crash_image(&last).unwrap();
    (fs, tree(&last), tree(&src_dir))
}

#[tokio::test]
async fn a_power_cut_at_any_moment_leaves_no_commit_without_its_whole_data_files() {
    let (fs, last, source) = replicate_with_cuts(false).await;
    let failures = fs.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}");
    // Every commit's directory fsync was checked (8 versions), and at least one batch sync
    // of the data directory per round.
    let checks = fs.checks.load(Ordering::SeqCst);
    assert!(checks >= 10, "only {checks} checks");
    // After the rounds, the whole replica survives a cut: it is the source.
    assert_eq!(
        last.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );
    assert_eq!(last, source);
}

/// The check is not vacuous: without the data directory's fsync (the batch sync before each
/// commit), a cut leaves commits whose data files are gone.
#[tokio::test]
async fn the_power_cut_check_catches_a_missing_data_directory_fsync() {
    let (fs, _, _) = replicate_with_cuts(true).await;
    let failures = fs.failures.lock().unwrap().clone();
    assert!(
        failures.iter().any(|f| f.contains("missing after the cut")),
        "{failures:#?}"
    );
}

/// A failed batch fsync of the data directory stops the round before the commit that needs
/// it; a new run (another process) finds the files placed, keeps them, and fsyncs their
/// directory before writing the commit — a name left by a run that died between a rename and
/// its directory fsync is made durable too.
#[tokio::test]
async fn a_failed_data_directory_fsync_stops_before_the_commit_and_a_rerun_syncs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    t.append(2, 3000, false);
    let fs = checked_fs(&src_dir, &dst_dir, false);
    let dst = TableLocation::parse_with_fs(dst_dir.to_str().unwrap(), fs.clone()).unwrap();
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    let r = Replicator::new(src.clone(), dst.clone(), ReplicateOptions::default()).unwrap();
    r.round(&NoObserver).await.unwrap();
    let v = t.append(2, 4000, true);
    *fs.fail_sync_of.lock().unwrap() = Some(dst_dir.clone());
    let err = r.round(&NoObserver).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {v}"))
            && msg.contains("injected EIO")
            && msg.contains("dst"),
        "{msg}"
    );
    assert_eq!(
        LogListing::list(&dst).await.unwrap().newest_version(),
        Some(v - 1)
    );

    let r = Replicator::new(src, dst, ReplicateOptions::default()).unwrap();
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(
        (
            report.versions_copied,
            report.files_copied,
            report.files_already_present
        ),
        (1, 0, 2)
    );
    let failures = fs.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}");
    let last = dir.path().join("last");
    fs.power.crash_image(&last).unwrap();
    assert_eq!(tree(&last), tree(&src_dir));
}
