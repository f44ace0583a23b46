//! Tests of the Delta sink against real tables on disk, with injected I/O faults, simulated
//! power cuts and two racing writers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::Int64Type;
use deltalake::kernel::DataType;
use proptest::prelude::*;
use tidemark_fs::{
    Fault, FaultFs, FaultKind, FileSystem, Op, PowerCutFs, ReadableFile, WritableFile,
};

use super::*;

/// Epoch `n` of a test (test epochs are written as plain numbers).
fn ep(n: i64) -> Epoch {
    Epoch::from_txn(n)
}

const APP: &str = "orders";

fn columns() -> Vec<StructField> {
    vec![
        StructField::new("id", DataType::LONG, false),
        StructField::new("name", DataType::STRING, true),
    ]
}

fn url_of(dir: &Path) -> Url {
    Url::from_directory_path(dir).unwrap()
}

fn options(fs: SharedFs, run: u32) -> SinkOptions {
    SinkOptions {
        fs,
        run_id: RunId::from_u32(run),
    }
}

async fn open(dir: &Path, fs: SharedFs, run: u32) -> DeltaSink {
    DeltaSink::open_or_create_with(&url_of(dir), APP, "t", columns(), options(fs, run))
        .await
        .unwrap()
}

fn batch(sink: &DeltaSink, ids: std::ops::Range<i64>) -> RecordBatch {
    let names: Vec<String> = ids.clone().map(|i| format!("n{i}")).collect();
    RecordBatch::try_new(
        sink.arrow_schema().clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap()
}

fn info(epoch: i64) -> EpochCommitInfo {
    let epoch = ep(epoch);
    EpochCommitInfo {
        pipeline_id: APP.into(),
        epoch,
        start_positions: Positions::new(),
        end_positions: Positions::new(),
        records_read: 0,
        rows_written: 0,
        records_skipped: 0,
        skipped: Vec::new(),
        duplicates: 0,
        cross_partition_duplicates: 0,
        late: 0,
        dead_lettered: 0,
        watermark: None,
        run_id: None,
        topic_ids: BTreeMap::new(),
        cluster_id: None,
        partitions: Vec::new(),
        generation: None,
    }
}

/// How many commits in `_delta_log` carry the txn `{APP, epoch}`, read from the JSON itself.
fn commits_of_epoch(root: &Path, epoch: i64) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(root.join("_delta_log")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["txn"]["appId"] == APP && v["txn"]["version"] == epoch {
                n += 1;
            }
        }
    }
    n
}

/// Live files of the table at `root`, each with the size its add action records.
async fn live_files(root: &Path) -> Vec<(String, i64)> {
    let table = deltalake::open_table(url_of(root)).await.unwrap();
    table
        .snapshot()
        .unwrap()
        .log_data()
        .into_iter()
        .map(|f| (f.path().to_string(), f.size()))
        .collect()
}

fn data_files_on_disk(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".parquet"))
        .collect()
}

proptest! {
    /// A data file's name gives back its epoch, part and run, for its own pipeline only
    /// (never for one whose id shares a prefix); old names without a run id and temporary
    /// uploads still parse, and are told apart.
    #[test]
    fn file_names_round_trip_strictly(
        epoch in 0i64..1_000_000_000_000,
        part in 0usize..100_000,
        run in any::<u32>(),
        suffix in "[a-z0-9-]{1,6}",
    ) {
        let run = RunId::from_u32(run);
        let name = data_file_name("orders", ep(epoch), part, run);
        let want = DataFileName { epoch: ep(epoch), part, run: Some(run), temporary: false };
        prop_assert_eq!(parse_data_file_name("orders", &name), Some(want));
        // Other pipelines, including ids that extend or shorten this one.
        prop_assert_eq!(parse_data_file_name(&format!("orders-{suffix}"), &name), None);
        prop_assert_eq!(parse_data_file_name("order", &name), None);
        let other = data_file_name(&format!("orders-{suffix}"), ep(epoch), part, run);
        prop_assert_eq!(parse_data_file_name("orders", &other), None);
        // A pipeline whose id looks like a file-name tail.
        let tricky = data_file_name(&format!("orders-e{epoch:012}-p{part:04}"), ep(epoch), part, run);
        prop_assert_eq!(parse_data_file_name("orders", &tricky), None);
        // Old names (no run id).
        let old = format!("tidemark-orders-e{epoch:012}-p{part:04}.snappy.parquet");
        prop_assert_eq!(
            parse_data_file_name("orders", &old),
            Some(DataFileName { run: None, ..want })
        );
        // Temporary uploads.
        let tmp = format!(".{name}.tidemark-tmp-12-34");
        prop_assert_eq!(
            parse_data_file_name("orders", &tmp),
            Some(DataFileName { temporary: true, ..want })
        );
        let staged = format!("{old}#3");
        prop_assert_eq!(
            parse_data_file_name("orders", &staged),
            Some(DataFileName { run: None, temporary: true, ..want })
        );
        // Damaged names.
        prop_assert_eq!(parse_data_file_name("orders", &format!("{name}x")), None);
        prop_assert_eq!(parse_data_file_name("orders", &name.replace("-r", "-R")), None);
        prop_assert_eq!(parse_data_file_name("orders", &format!("{old}#")), None);
    }
}

#[test]
fn run_ids_print_and_parse_as_8_hex_digits() {
    let r = RunId::from_u32(0x00ab_cdef);
    assert_eq!(r.to_string(), "00abcdef");
    assert_eq!("00abcdef".parse::<RunId>(), Ok(r));
    for bad in ["abcdef", "00ABCDEF", "00abcdefg", "+0abcdef", ""] {
        assert!(bad.parse::<RunId>().is_err(), "{bad:?}");
    }
    assert_eq!(RunId::for_process(), RunId::for_process());
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json, "00abcdef");
}

#[test]
fn commit_infos_without_a_run_id_still_parse() {
    let mut v = serde_json::to_value(info(3)).unwrap();
    assert!(v.get("run_id").is_none(), "no key written for None");
    v.as_object_mut().unwrap().remove("run_id");
    let back: EpochCommitInfo = serde_json::from_value(v).unwrap();
    assert_eq!(back.run_id, None);
    let mut with = info(3);
    with.run_id = Some(RunId::from_u32(7));
    let v = serde_json::to_value(&with).unwrap();
    assert_eq!(v["run_id"], "00000007");
    assert_eq!(serde_json::from_value::<EpochCommitInfo>(v).unwrap(), with);
}

#[test]
fn commit_infos_without_topic_ids_still_parse() {
    let v = serde_json::to_value(info(3)).unwrap();
    assert!(v.get("topic_ids").is_none(), "no key written when empty");
    let back: EpochCommitInfo = serde_json::from_value(v).unwrap();
    assert!(back.topic_ids.is_empty());
    let mut with = info(3);
    with.topic_ids
        .insert("orders".into(), "im+2f2KhSEO8QcmbqAlrnw".into());
    let v = serde_json::to_value(&with).unwrap();
    assert_eq!(v["topic_ids"]["orders"], "im+2f2KhSEO8QcmbqAlrnw");
    assert_eq!(serde_json::from_value::<EpochCommitInfo>(v).unwrap(), with);
}

#[tokio::test]
async fn recorded_topic_ids_come_from_the_newest_commit_that_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = open(dir.path(), tidemark_fs::std_fs(), 1).await;
    assert!(sink.recorded_topic_ids().await.unwrap().is_empty());
    let ids = |id: &str| BTreeMap::from([("orders".to_string(), id.to_string())]);
    for (epoch, recorded) in [(1, ids("old")), (2, ids("A")), (3, BTreeMap::new())] {
        let mut i = info(epoch);
        i.topic_ids = recorded;
        let b = batch(&sink, epoch * 10..epoch * 10 + 1);
        let (adds, _) = sink.write_epoch_files(ep(epoch), &[b]).await.unwrap();
        sink.commit_epoch(adds, &i).await.unwrap();
    }
    // Epoch 3 did not know the ids (a broker without them): epoch 2's are the last known.
    assert_eq!(sink.recorded_topic_ids().await.unwrap(), ids("A"));
}

#[test]
fn transient_errors_are_told_from_permanent_ones() {
    fn e(source: impl std::error::Error + Send + Sync + 'static) -> DeltaSinkError {
        DeltaSinkError {
            op: "test",
            table: "t".into(),
            file: None,
            source: Box::new(source),
        }
    }
    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: msg.into(),
        }
    }
    let transient = [
        e(io::Error::from(io::ErrorKind::TimedOut)),
        e(io::Error::from(io::ErrorKind::ConnectionReset)),
        e(io::Error::from(io::ErrorKind::Interrupted)),
        e(io::Error::from_raw_os_error(libc::EMFILE)),
        e(io::Error::other("Too many open files (os error 24)")),
        e(generic(
            "Server returned non-2xx status code: 503 Service Unavailable",
        )),
        e(generic(
            "Server returned non-2xx status code: 500 Internal Server Error",
        )),
        e(generic("SlowDown: Please reduce your request rate")),
        e(generic("request throttled")),
        e(DeltaTableError::ObjectStore {
            source: object_store::Error::Generic {
                store: "S3",
                source: Box::new(io::Error::from(io::ErrorKind::ConnectionReset)),
            },
        }),
    ];
    for t in &transient {
        assert!(t.is_transient(), "should be transient: {t}");
    }
    let permanent = [
        e(io::Error::from_raw_os_error(libc::ENOSPC)),
        e(io::Error::from(io::ErrorKind::PermissionDenied)),
        e(io::Error::from(io::ErrorKind::NotFound)),
        e(DeltaTableError::VersionAlreadyExists(3)),
        e(DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(0),
        }),
        e(DeltaTableError::NotATable("x".into())),
        e(arrow::error::ArrowError::SchemaError(
            "column missing".into(),
        )),
        e(object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        }),
        e(generic("version 503 already exists")),
    ];
    for p in &permanent {
        assert!(!p.is_transient(), "should not be transient: {p}");
    }
    assert!(permanent[0].is_disk_full());
    assert!(!permanent[1].is_disk_full());
}

/// Item 0: the live files are read through the table's store for a table given as an absolute
/// path, a relative path or a file:// URL, only the projected column, batch by batch.
#[tokio::test]
async fn read_columns_works_for_paths_relative_and_absolute_and_file_urls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    let mut sink = open(&root, tidemark_fs::std_fs(), 1).await;
    for (epoch, ids) in [(1, 0..10), (2, 10..25)] {
        let b = batch(&sink, ids);
        let (adds, _) = sink.write_epoch_files(ep(epoch), &[b]).await.unwrap();
        let out = sink.commit_epoch(adds, &info(epoch)).await.unwrap();
        assert!(matches!(out, CommitOutcome::Committed { .. }));
    }
    let absolute = root.to_str().unwrap().to_string();
    let cwd = std::env::current_dir().unwrap();
    let ups = "../".repeat(cwd.components().count() - 1);
    let relative = format!("{ups}{}", absolute.trim_start_matches('/'));
    let file_url = url_of(&root).to_string();
    for given in [absolute, relative, file_url] {
        let url = table_url(&given).unwrap();
        assert_eq!(url.scheme(), "file", "{given}");
        let sink = DeltaSink::open_existing(&url, APP).await.unwrap().unwrap();
        let mut stream = sink.read_columns(&["id".to_string()]).unwrap();
        let mut ids = BTreeSet::new();
        while let Some(b) = stream.try_next().await.unwrap() {
            assert_eq!(b.num_columns(), 1, "only the projected column is read");
            let col = b.column(0).as_primitive::<Int64Type>();
            assert_eq!(col.null_count(), 0);
            ids.extend(col.values().iter().copied());
        }
        assert_eq!(
            ids,
            (0..25).collect::<BTreeSet<i64>>(),
            "table given as {given}"
        );
    }
}

/// Item 1: an error after the commit file landed (the `_delta_log` directory fsync fails) is
/// resolved against the table: `Committed` with the right version, the files kept and
/// referenced, a retried call still `Committed`, and `discard_files` deletes none of them.
#[tokio::test]
async fn an_error_after_the_commit_landed_reports_committed_and_keeps_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    let faults = FaultFs::new(tidemark_fs::std_fs());
    let mut sink = open(&root, Arc::new(faults.clone()), 1).await;
    let b = batch(&sink, 0..100);
    let (adds, _) = sink.write_epoch_files(ep(1), &[b]).await.unwrap();
    faults.arm(Fault {
        path_contains: "_delta_log".into(),
        ..Fault::once(Op::SyncDir, FaultKind::Eio)
    });
    let out = sink.commit_epoch(adds.clone(), &info(1)).await.unwrap();
    assert_eq!(
        faults.injected(),
        1,
        "the fault fired after the commit file was linked"
    );
    assert_eq!(
        out,
        CommitOutcome::Committed {
            version: TableVersion::new(1)
        }
    );
    assert_eq!(
        sink.commit_epoch(adds.clone(), &info(1)).await.unwrap(),
        CommitOutcome::Committed {
            version: TableVersion::new(1)
        },
        "a retry by the same run finds its own commit"
    );
    sink.discard_files(&adds).await;
    let live = live_files(&root).await;
    for add in &adds {
        assert!(root.join(&add.path).exists(), "{} deleted", add.path);
        assert!(
            live.iter().any(|(p, _)| *p == add.path),
            "{} not referenced",
            add.path
        );
    }
    assert_eq!(commits_of_epoch(&root, 1), 1);
    assert_eq!(sink.txn_version().await.unwrap(), Some(ep(1)));
}

/// Item 2: two writers (different runs) racing on the same epochs: exactly one commit per
/// epoch, the loser's files unreferenced (and discarded by it), the winner's all present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_commit_each_epoch_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    let mut a = open(&root, tidemark_fs::std_fs(), 0xa).await;
    let mut b = open(&root, tidemark_fs::std_fs(), 0xb).await;
    let (mut wins_a, mut wins_b) = (0, 0);
    for epoch in 1..=8 {
        let (adds_a, _) = a
            .write_epoch_files(ep(epoch), &[batch(&a, 0..10)])
            .await
            .unwrap();
        let (adds_b, _) = b
            .write_epoch_files(ep(epoch), &[batch(&b, 0..10)])
            .await
            .unwrap();
        let epoch_info = info(epoch);
        let (out_a, out_b) = tokio::join!(
            a.commit_epoch(adds_a.clone(), &epoch_info),
            b.commit_epoch(adds_b.clone(), &epoch_info)
        );
        let won_a = matches!(out_a, Ok(CommitOutcome::Committed { .. }));
        let won_b = matches!(out_b, Ok(CommitOutcome::Committed { .. }));
        assert!(
            won_a ^ won_b,
            "epoch {epoch}: exactly one wins: {out_a:?} / {out_b:?}"
        );
        let (loser_out, winner_adds, loser_adds) = if won_a {
            wins_a += 1;
            (&out_b, &adds_a, &adds_b)
        } else {
            wins_b += 1;
            (&out_a, &adds_b, &adds_a)
        };
        assert!(
            matches!(loser_out, Ok(CommitOutcome::AlreadyCommitted { txn_version }) if *txn_version == ep(epoch)),
            "epoch {epoch}: the loser is told: {loser_out:?}"
        );
        if won_a {
            b.discard_files(loser_adds).await
        } else {
            a.discard_files(loser_adds).await
        }
        assert_eq!(commits_of_epoch(&root, epoch), 1, "epoch {epoch}");
        let live = live_files(&root).await;
        for add in winner_adds {
            assert!(root.join(&add.path).exists());
            assert!(live.iter().any(|(p, _)| *p == add.path));
        }
        for add in loser_adds {
            assert!(!live.iter().any(|(p, _)| *p == add.path));
            assert!(
                !root.join(&add.path).exists(),
                "the loser discards its own files"
            );
        }
    }
    eprintln!("wins: a {wins_a}, b {wins_b}");
}

/// Item 2(c): the sweep deletes uncommitted files of the caller's runs and old-format names,
/// and leaves (and lists) files of other runs; `next_free_part` sees every run's files.
#[tokio::test]
async fn the_sweep_deletes_only_files_of_owned_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    let mut a = open(&root, tidemark_fs::std_fs(), 1).await;
    let mut b = open(&root, tidemark_fs::std_fs(), 2).await;
    let (adds, _) = a
        .write_epoch_files(ep(1), &[batch(&a, 0..5)])
        .await
        .unwrap();
    a.commit_epoch(adds.clone(), &info(1)).await.unwrap();
    let (a2, _) = a
        .write_epoch_files(ep(2), &[batch(&a, 0..5)])
        .await
        .unwrap();
    let (b1, _) = b
        .write_epoch_files(ep(1), &[batch(&b, 0..5)])
        .await
        .unwrap();
    let (b2, _) = b
        .write_epoch_files(ep(2), &[batch(&b, 0..5)])
        .await
        .unwrap();
    let legacy = "tidemark-orders-e000000000003-p0000.snappy.parquet";
    std::fs::write(root.join(legacy), b"x").unwrap();
    let other_pipeline = data_file_name("orders-x", ep(2), 0, RunId::from_u32(1));
    std::fs::write(root.join(&other_pipeline), b"x").unwrap();

    // A new run (3) of the process that owned run 1.
    let mut c = open(&root, tidemark_fs::std_fs(), 3).await;
    let report = c
        .sweep_uncommitted_files(ep(1), &[RunId::from_u32(1)])
        .await
        .unwrap();
    let deleted: BTreeSet<_> = report.deleted.iter().cloned().collect();
    let foreign: BTreeSet<_> = report.foreign.iter().cloned().collect();
    assert_eq!(
        deleted,
        BTreeSet::from([a2[0].path.clone(), legacy.to_string()])
    );
    assert_eq!(
        foreign,
        BTreeSet::from([b1[0].path.clone(), b2[0].path.clone()])
    );
    let on_disk = data_files_on_disk(&root);
    assert_eq!(
        on_disk,
        BTreeSet::from([
            adds[0].path.clone(),
            b1[0].path.clone(),
            b2[0].path.clone(),
            other_pipeline
        ])
    );
    assert_eq!(
        c.next_free_part(ep(2)).await.unwrap(),
        1,
        "run 2's part 0 is taken"
    );
    assert_eq!(c.next_free_part(ep(4)).await.unwrap(), 0);
}

/// Item 6 (disk full): ENOSPC during the Parquet write and during the commit: an error naming
/// the table and file, no partial file under a final name, and after the disk is repaired a
/// retry commits the epoch exactly once.
#[tokio::test]
async fn disk_full_during_write_and_commit_then_retry_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    let faults = FaultFs::new(tidemark_fs::std_fs());
    let mut sink = open(&root, Arc::new(faults.clone()), 1).await;
    let full = |path: &str| Fault {
        path_contains: path.into(),
        sticky: true,
        partial: true,
        ..Fault::once(Op::Write, FaultKind::DiskFull)
    };

    faults.arm(full(".parquet"));
    let err = sink
        .write_epoch_files(ep(1), &[batch(&sink, 0..50)])
        .await
        .unwrap_err();
    let name = data_file_name(APP, ep(1), 0, RunId::from_u32(1));
    let msg = err.to_string();
    assert!(msg.contains(sink.uri()) && msg.contains(&name), "{msg}");
    assert!(err.is_disk_full() && !err.is_transient(), "{msg}");
    assert!(data_files_on_disk(&root).is_empty(), "nothing left behind");
    faults.clear();

    let (adds, _) = sink
        .write_epoch_files(ep(1), &[batch(&sink, 0..50)])
        .await
        .unwrap();
    faults.arm(full("_delta_log"));
    let err = sink.commit_epoch(adds.clone(), &info(1)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(sink.uri()) && msg.contains("00000000000000000001.json"),
        "{msg}"
    );
    assert!(err.is_disk_full() && !err.is_transient(), "{msg}");
    let log: Vec<_> = std::fs::read_dir(root.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        log,
        ["00000000000000000000.json"],
        "no commit, no temporary file"
    );
    faults.clear();

    let out = sink.commit_epoch(adds.clone(), &info(1)).await.unwrap();
    assert_eq!(
        out,
        CommitOutcome::Committed {
            version: TableVersion::new(1)
        }
    );
    assert_eq!(commits_of_epoch(&root, 1), 1);
    let live = live_files(&root).await;
    assert_eq!(live.len(), 1);
    assert_eq!(
        std::fs::metadata(root.join(&live[0].0)).unwrap().len() as i64,
        live[0].1
    );
}

/// Which fsync a [`DropSync`] file system leaves out.
#[derive(Debug, Clone)]
enum Dropped {
    Nothing,
    /// File fsyncs of paths containing this text.
    FileSync(&'static str),
    /// Fsyncs of this directory.
    DirSync(PathBuf),
}

/// A file system that silently skips one kind of fsync: the code under test "with that fsync
/// deleted", to show the power-cut test would catch it.
#[derive(Debug)]
struct DropSync {
    inner: SharedFs,
    dropped: Dropped,
}

#[derive(Debug)]
struct DropSyncFile {
    inner: Box<dyn WritableFile>,
    skip: bool,
}

impl WritableFile for DropSyncFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.skip {
            Ok(())
        } else {
            self.inner.sync_data()
        }
    }
    fn sync_all(&mut self) -> io::Result<()> {
        if self.skip {
            Ok(())
        } else {
            self.inner.sync_all()
        }
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl DropSync {
    fn wrap(&self, path: &Path, f: Box<dyn WritableFile>) -> Box<dyn WritableFile> {
        let skip =
            matches!(&self.dropped, Dropped::FileSync(t) if path.to_string_lossy().contains(t));
        Box::new(DropSyncFile { inner: f, skip })
    }
}

impl FileSystem for DropSync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Ok(self.wrap(path, self.inner.create_new(path)?))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Ok(self.wrap(path, self.inner.open_append(path)?))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        self.inner.open_read(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.read_dir(dir)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        self.inner.len(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match &self.dropped {
            Dropped::DirSync(d) if d == dir => Ok(()),
            _ => self.inner.sync_dir(dir),
        }
    }
}

/// What a power cut right now would leave must hold the commit: the version, the txn version
/// `epoch`, and every referenced data file whole (its add action's size).
async fn check_crash_image(image: &Path, version: u64, epoch: i64) -> Result<(), String> {
    let table = deltalake::open_table(url_of(image))
        .await
        .map_err(|e| format!("open: {e}"))?;
    if table.version() != Some(version) {
        return Err(format!("version {:?}, want {version}", table.version()));
    }
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    let txn = snapshot
        .transaction_version(table.log_store().as_ref(), APP)
        .await
        .map_err(|e| e.to_string())?;
    if txn != Some(epoch) {
        return Err(format!("txn version {txn:?}, want {epoch}"));
    }
    let files: Vec<_> = snapshot
        .log_data()
        .into_iter()
        .map(|f| (f.path().to_string(), f.size()))
        .collect();
    if files.len() as i64 != epoch {
        return Err(format!("{} live files, want {epoch}", files.len()));
    }
    for (path, size) in files {
        let len = std::fs::metadata(image.join(&path))
            .map_err(|e| format!("{path}: {e}"))?
            .len();
        if len as i64 != size {
            return Err(format!("{path}: {len} bytes, the add action says {size}"));
        }
    }
    Ok(())
}

/// Creates a table through a [`PowerCutFs`] (with `dropped` fsyncs skipped) and commits three
/// epochs; after each `Committed`, checks the crash image. The first failed check is returned.
async fn power_cut_scenario(dropped: impl Fn(&Path) -> Dropped) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    std::fs::create_dir_all(&root).unwrap();
    let power = PowerCutFs::new(&root).unwrap();
    let fs: SharedFs = Arc::new(DropSync {
        inner: Arc::new(power.clone()),
        dropped: dropped(&root),
    });
    let mut sink = open(&root, fs, 1).await;
    for epoch in 1..=3 {
        let (adds, _) = sink
            .write_epoch_files(ep(epoch), &[batch(&sink, 0..(100 * epoch))])
            .await
            .unwrap();
        let out = sink.commit_epoch(adds, &info(epoch)).await.unwrap();
        let CommitOutcome::Committed { version } = out else {
            panic!("epoch {epoch}: {out:?}");
        };
        let image = dir.path().join(format!("image-{epoch}"));
        power.crash_image(&image).unwrap();
        check_crash_image(&image, version.get(), epoch)
            .await
            .map_err(|e| format!("after epoch {epoch}: {e}"))?;
    }
    Ok(())
}

/// Item 7 / "Faults SIGKILL cannot show": every commit the sink reports is in what a power cut
/// right after would leave, with its data files whole.
#[tokio::test]
async fn a_power_cut_after_committed_keeps_the_commit_and_its_files() {
    power_cut_scenario(|_| Dropped::Nothing).await.unwrap();
}

/// The power-cut test is not vacuous: with any one fsync of the write path left out, it fails.
#[tokio::test]
async fn the_power_cut_test_catches_each_missing_fsync() {
    type Choice = Box<dyn Fn(&Path) -> Dropped>;
    let cases: [(&str, Choice); 4] = [
        (
            "data file fsync",
            Box::new(|_| Dropped::FileSync(".parquet")),
        ),
        (
            "commit file fsync",
            Box::new(|_| Dropped::FileSync(".json")),
        ),
        (
            "table directory fsync",
            Box::new(|r| Dropped::DirSync(r.to_path_buf())),
        ),
        (
            "_delta_log directory fsync",
            Box::new(|r| Dropped::DirSync(r.join("_delta_log"))),
        ),
    ];
    for (what, dropped) in cases {
        let result = power_cut_scenario(dropped).await;
        eprintln!("without the {what}: {result:?}");
        assert!(
            result.is_err(),
            "the power-cut test does not notice a missing {what}"
        );
    }
}

/// A timeout writing the create commit or an epoch's commit is transient (the engine retries
/// it), whatever layers deltalake wraps around the store's error.
#[tokio::test]
async fn a_timeout_creating_or_committing_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("table");
    let faults = FaultFs::new(tidemark_fs::std_fs());
    let timeout = Fault {
        path_contains: "_delta_log".into(),
        ..Fault::once(Op::Write, FaultKind::TimedOut)
    };
    faults.arm(timeout.clone());
    let shared: SharedFs = Arc::new(faults.clone());
    let err = DeltaSink::open_or_create_with(
        &url_of(&root),
        APP,
        "t",
        columns(),
        options(shared.clone(), 1),
    )
    .await
    .err()
    .expect("the create commit times out");
    assert!(err.is_transient(), "{err} / {:?}", err.source);
    let mut sink = open(&root, shared, 1).await;
    let (adds, _) = sink
        .write_epoch_files(ep(1), &[batch(&sink, 0..5)])
        .await
        .unwrap();
    faults.arm(timeout);
    let err = sink.commit_epoch(adds, &info(1)).await.unwrap_err();
    assert!(err.is_transient(), "{err} / {:?}", err.source);
}

/// Two writers starting together on a table that does not exist yet both open it: the one
/// whose create commit loses the race uses the table the other created (one create commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_creating_one_table_at_once_both_open_it() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("table");
        let url = url_of(&root);
        let open_one = |run| {
            let url = url.clone();
            tokio::spawn(async move {
                DeltaSink::open_or_create_with(
                    &url,
                    APP,
                    "t",
                    columns(),
                    options(tidemark_fs::std_fs(), run),
                )
                .await
                .map(|s| s.table_version())
            })
        };
        let (a, b) = tokio::join!(open_one(1), open_one(2));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} / {b:?}");
        let log: Vec<_> = std::fs::read_dir(root.join("_delta_log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        assert_eq!(log, ["00000000000000000000.json"], "round {round}");
    }
}

/// The commitInfo format with cluster-aware positions: older commitInfos (without `cluster_id`,
/// `partitions`, `generation`) still read, and absent fields are not written.
#[test]
fn a_commit_info_without_cluster_fields_reads_and_none_are_written_when_unknown() {
    let old = r#"{"pipeline_id":"orders","epoch":3,"start_positions":{},"end_positions":{"t":{"0":5}},"records_read":5,"rows_written":5,"records_skipped":0}"#;
    let parsed: EpochCommitInfo = serde_json::from_str(old).unwrap();
    assert_eq!(parsed.cluster_id, None);
    assert!(parsed.partitions.is_empty());
    assert_eq!(parsed.generation, None);
    let text = serde_json::to_string(&info(1)).unwrap();
    for key in [
        "cluster_id",
        "partitions",
        "generation",
        "cross_partition_duplicates",
    ] {
        assert!(
            !text.contains(key),
            "{key} written although unknown: {text}"
        );
    }
}

fn partition_position() -> impl Strategy<Value = PartitionPosition> {
    (
        proptest::option::of("[a-z0-9_-]{1,12}"),
        "[a-z]{1,8}",
        proptest::option::of("[A-Za-z0-9]{22}"),
        0i32..64,
        0i64..i64::MAX,
        proptest::option::of(0i64..4_000_000_000_000),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(
            |(
                cluster_id,
                topic,
                topic_id,
                partition,
                next_offset,
                last_timestamp_ms,
                dedup_floor,
            )| {
                PartitionPosition {
                    cluster_id,
                    topic,
                    topic_id,
                    partition,
                    next_offset,
                    last_timestamp_ms,
                    dedup_floor,
                }
            },
        )
}

proptest! {
    /// Cluster-aware positions round-trip through the commitInfo's JSON exactly, inside a
    /// whole `EpochCommitInfo`, and an unknown extra field (a newer writer's) is ignored.
    #[test]
    fn cluster_aware_positions_round_trip(
        parts in proptest::collection::vec(partition_position(), 0..8),
        cluster in proptest::option::of("[a-z_]{1,16}"),
        generation in proptest::option::of(1u64..1000),
    ) {
        let mut i = info(7);
        i.partitions = parts;
        i.cluster_id = cluster;
        i.generation = generation;
        let mut json = serde_json::to_value(&i).unwrap();
        let back: EpochCommitInfo = serde_json::from_value(json.clone()).unwrap();
        prop_assert_eq!(&back, &i);
        json["a_field_of_a_newer_version"] = serde_json::json!(1);
        let back: EpochCommitInfo = serde_json::from_value(json).unwrap();
        prop_assert_eq!(back, i);
    }
}

/// Generation fencing in the sink: once another writer opened generation 2 in the table, a
/// writer of generation 1 can never commit (refused before writing, naming both numbers),
/// while the generation-2 writer commits; opening a generation that is not newer is refused.
#[tokio::test]
async fn a_writer_of_an_older_generation_never_commits_after_a_newer_one_opened_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = open(dir.path(), tidemark_fs::std_fs(), 1).await;
    old.set_generation(1);
    let b = batch(&old, 0..3);
    let (adds, _) = old.write_epoch_files(ep(1), &[b]).await.unwrap();
    old.commit_epoch(adds, &info(1)).await.unwrap();
    assert_eq!(old.table_generation().unwrap(), 1);

    let mut new = open(dir.path(), tidemark_fs::std_fs(), 2).await;
    let opened = GenerationOpened {
        pipeline_id: APP.into(),
        generation: 2,
        previous: 1,
        reason: "failover".into(),
        cluster_id: Some("west".into()),
        opened_at_ms: 1,
    };
    new.open_generation(&opened).await.unwrap();
    assert_eq!(new.table_generation().unwrap(), 2);

    // The old writer's snapshot is older than the generation commit: the commit refreshes,
    // sees generation 2, and refuses.
    let b = batch(&old, 3..6);
    let (adds, _) = old.write_epoch_files(ep(2), &[b]).await.unwrap();
    let err = old.commit_epoch(adds, &info(2)).await.unwrap_err();
    let fenced = err.fenced().expect("a fencing error");
    assert_eq!((fenced.table_generation, fenced.writer_generation), (2, 1));
    assert!(!err.is_transient(), "fencing is never retried");
    assert!(err.to_string().contains("FENCED"), "{err}");

    new.set_generation(2);
    let b = batch(&new, 3..6);
    let (adds, _) = new.write_epoch_files(ep(2), &[b]).await.unwrap();
    new.commit_epoch(adds, &info(2)).await.unwrap();
    let newest = new.progress().await.unwrap().1.unwrap();
    assert_eq!(newest.info.generation, Some(2));
    // The generation commit itself is fenced: not newer than the table's.
    assert!(new
        .open_generation(&opened)
        .await
        .unwrap_err()
        .fenced()
        .is_some());
}

/// A crash mid-checkpoint leaves `_delta_log/.<name>.tidemark-tmp-<pid>-<n>`: the start-up
/// sweep removes those of dead writers, and nothing else — not a live writer's (another
/// process still running), not this process's own, not another program's hidden file.
#[tokio::test]
async fn the_start_up_sweep_removes_temporaries_dead_writers_left_in_the_log_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = open(dir.path(), tidemark_fs::std_fs(), 1).await;
    let log = dir.path().join("_delta_log");
    let dead_pid = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let mut live = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let dead_checkpoint =
        tidemark_fs::temporary_name("00000000000000000009.checkpoint.parquet", dead_pid, 7);
    let dead_hint = tidemark_fs::temporary_name("_last_checkpoint", dead_pid, 8);
    let kept = [
        tidemark_fs::temporary_name("00000000000000000009.checkpoint.parquet", live.id(), 1),
        tidemark_fs::temporary_name("00000000000000000010.json", std::process::id(), 2),
        ".00000000000000000009.checkpoint.parquet.tmp-other-writer".to_string(),
        ".00000000000000000009.checkpoint.parquet.tidemark-tmp-x-1".to_string(),
    ];
    for name in kept.iter().chain([&dead_checkpoint, &dead_hint]) {
        std::fs::write(log.join(name), b"partial").unwrap();
    }
    let report = sink
        .sweep_uncommitted_files(Epoch::ZERO, &[])
        .await
        .unwrap();
    live.kill().unwrap();
    live.wait().unwrap();
    let mut removed = report.log_temporaries.clone();
    removed.sort();
    let mut want = vec![dead_checkpoint.clone(), dead_hint.clone()];
    want.sort();
    assert_eq!(removed, want);
    let left: BTreeSet<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &kept {
        assert!(left.contains(name), "{name} was removed: {left:?}");
    }
    assert!(!left.contains(&dead_checkpoint) && !left.contains(&dead_hint));
    // The next checkpoint sweeps too (nothing of dead writers is left now) and the table reads.
    sink.write_log_checkpoint().await.unwrap();
    assert!(sink.sweep_log_temporaries().unwrap().is_empty());
}

/// Epoch commits after the sink's own go through its tail: one put-if-absent each, the log
/// not re-read (the loaded state stays where the first commit left it). Another writer's
/// commit in between makes the next try lose its version; the sink then re-reads the table
/// and commits after it. Every epoch lands once, at consecutive versions, and deltalake
/// reads them all with the right txn version.
#[tokio::test]
async fn commits_after_its_own_skip_the_log_reread_and_another_writers_commit_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = open(dir.path(), tidemark_fs::std_fs(), 1).await;
    let mut versions = Vec::new();
    for e in 1..=5 {
        let (adds, _) = sink
            .write_epoch_files(ep(e), &[batch(&sink, e * 10..e * 10 + 10)])
            .await
            .unwrap();
        match sink.commit_epoch(adds, &info(e)).await.unwrap() {
            CommitOutcome::Committed { version } => versions.push(version.get()),
            other => panic!("epoch {e}: {other:?}"),
        }
    }
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        sink.table.version(),
        Some(1),
        "epochs 2-5 did not re-read the log"
    );
    assert_eq!(
        sink.own_tail,
        Some(OwnTail {
            version: 5,
            txn: ep(5),
            unread: 4
        })
    );
    assert_eq!(sink.table_version(), Some(5));

    // Another pipeline commits version 6.
    let mut other = DeltaSink::open_or_create_with(
        &url_of(dir.path()),
        "other",
        "t",
        columns(),
        options(tidemark_fs::std_fs(), 2),
    )
    .await
    .unwrap();
    let (adds, _) = other
        .write_epoch_files(ep(1), &[batch(&other, 1000..1010)])
        .await
        .unwrap();
    let mut other_info = info(1);
    other_info.pipeline_id = "other".into();
    assert!(matches!(
        other.commit_epoch(adds, &other_info).await.unwrap(),
        CommitOutcome::Committed { version } if version.get() == 6
    ));

    let (adds, _) = sink
        .write_epoch_files(ep(6), &[batch(&sink, 60..70)])
        .await
        .unwrap();
    assert!(matches!(
        sink.commit_epoch(adds, &info(6)).await.unwrap(),
        CommitOutcome::Committed { version } if version.get() == 7
    ));
    assert_eq!(
        sink.table.version(),
        Some(7),
        "the lost try re-read the table"
    );
    assert_eq!(commits_of_epoch(dir.path(), 6), 1);
    let table = deltalake::open_table(url_of(dir.path())).await.unwrap();
    assert_eq!(table.version(), Some(7));
    let snapshot = table.snapshot().unwrap();
    assert_eq!(snapshot.log_data().into_iter().count(), 7);
    assert_eq!(
        snapshot
            .transaction_version(table.log_store().as_ref(), APP)
            .await
            .unwrap(),
        Some(6)
    );
    // A fresh reader of the sink sees the same.
    let (txn, progress) = open(dir.path(), tidemark_fs::std_fs(), 3)
        .await
        .progress()
        .await
        .unwrap();
    assert_eq!(txn, Some(ep(6)));
    assert_eq!(progress.unwrap().table_version.get(), 7);
}

/// Two workers of one pipeline (own app ids, shared claims) on one local table: a commit
/// covering a partition another worker claimed since its start is refused, names the
/// partition, and writes nothing; the claims give the next start to whoever asks.
#[tokio::test]
async fn a_partition_claimed_by_another_worker_refuses_the_stale_commit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let (mut w1, mut w2) = two_workers(&root, tidemark_fs::std_fs()).await;
    // Partition 0 from `start` to `end`, partition 1 (no records) at offset 3.
    let range = |epoch: i64, start: Option<i64>, end: i64| {
        covering(epoch, &[(0, start, end), (1, Some(3), 3)])
    };
    commit_rows(&mut w1, &range(1, None, 5), 0..5)
        .await
        .unwrap();

    // w2 was given partition 0 before w1's commit landed: it started from the beginning.
    let err = commit_rows(&mut w2, &range(1, None, 3), 0..3)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), (0, 5, None));
    assert!(err.to_string().contains("t/0"), "{err}");
    assert!(
        !err.is_transient(),
        "a refusal is final, never retried: {err}"
    );
    assert_eq!(
        w2.txn_version().await.unwrap(),
        None,
        "the refused commit wrote nothing"
    );

    // Re-reading the claims gives w2 its start; partition 1 (no records) is claimed too, at
    // its position: w1's first commit adopted every partition it held a position for.
    let wanted = BTreeSet::from([
        TopicPartition {
            topic: "t".into(),
            partition: 0,
        },
        TopicPartition {
            topic: "t".into(),
            partition: 1,
        },
    ]);
    let claims = w2.partition_claims(APP, &wanted).await.unwrap();
    assert_eq!((claims.get("t", 0), claims.get("t", 1)), (Some(5), Some(3)));
    commit_rows(&mut w2, &range(1, Some(5), 8), 5..8)
        .await
        .unwrap();

    // w1 still believes it owns partition 0 from offset 5: refused, whichever commit path.
    let err = commit_rows(&mut w1, &range(2, Some(5), 9), 5..9)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err).1, 8, "{err}");
    let claims = w1.partition_claims(APP, &wanted).await.unwrap();
    assert_eq!(claims.get("t", 0), Some(8));
    let table = deltalake::open_table(url_of(&root)).await.unwrap();
    let rows: usize = live_files(&root).await.len();
    assert_eq!(rows, 2, "two commits landed: {:?}", table.version());
}

/// A partition this worker has not claimed yet in its run, claimed by another worker before
/// the run's first commit: a later commit of the run that covers it is checked against that
/// claim and refused, even when it could go through the sink's own tail (no other writer
/// committed since the run's first commit, which did not cover the partition).
#[tokio::test]
async fn a_partition_first_read_after_the_runs_first_commit_is_checked_against_its_claim() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let (mut w1, mut w2) = two_workers(&root, tidemark_fs::std_fs()).await;
    // w2 writes partition 0 from its beginning.
    commit_rows(&mut w2, &covering(1, &[(0, None, 5)]), 0..5)
        .await
        .unwrap();

    // w1's run started when partition 0 had no claim (no position for it): its first commit
    // covers partition 1 only, and lands after w2's.
    commit_rows(&mut w1, &covering(1, &[(1, Some(3), 4)]), 0..1)
        .await
        .unwrap();

    // Then w1 reads partition 0 from its beginning: refused, w2 holds it up to offset 5.
    let again = covering(2, &[(1, Some(4), 4), (0, None, 5)]);
    let err = commit_rows(&mut w1, &again, 0..5).await.unwrap_err();
    assert_eq!(refusal(&err), (0, 5, None));
    assert_eq!(
        live_files(&root).await.len(),
        2,
        "the refused commit wrote nothing"
    );
}

/// Writes rows `rows` as `info`'s epoch through `sink` and commits them: landed, or the error.
async fn commit_rows(
    sink: &mut DeltaSink,
    info: &EpochCommitInfo,
    rows: std::ops::Range<i64>,
) -> Result<(), DeltaSinkError> {
    let (adds, _) = sink
        .write_epoch_files(info.epoch, &[batch(sink, rows)])
        .await
        .unwrap();
    let out = sink.commit_epoch(adds, info).await?;
    assert!(matches!(out, CommitOutcome::Committed { .. }), "{out:?}");
    Ok(())
}

/// What a claim refusal names: the partition, its claim in the table, and the refused
/// commit's start there (`None`: from the partition's beginning). Panics on another error.
fn refusal(err: &DeltaSinkError) -> (i32, i64, Option<i64>) {
    let taken = err
        .partition_taken()
        .unwrap_or_else(|| panic!("not a claim refusal: {err}"));
    (taken.partition.partition, taken.claimed, taken.start)
}

/// Two workers' sinks of pipeline `APP` on one new local table at `root` (`orders`, and
/// `orders/w2` with its own app id), each claiming partitions; the first one's files go
/// through `w1_fs`.
async fn two_workers(root: &Path, w1_fs: SharedFs) -> (DeltaSink, DeltaSink) {
    let mut w1 = open(root, w1_fs, 1).await;
    let fs = tidemark_fs::std_fs();
    let mut w2 = DeltaSink::open_existing_with(&url_of(root), "orders/w2", options(fs, 2))
        .await
        .unwrap()
        .unwrap();
    w1.claim_partitions(APP);
    w2.claim_partitions(APP);
    (w1, w2)
}

/// A partition this worker's run did claim, taken by another worker in between (its commit
/// made this worker's next commit, of another partition, re-read the table): a later commit
/// of the taken partition through the sink's own tail is checked against the new claim too,
/// not against what the run claimed before.
#[tokio::test]
async fn a_partition_taken_between_two_commits_of_the_run_is_refused_through_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let (mut w1, mut w2) = two_workers(&root, tidemark_fs::std_fs()).await;
    commit_rows(&mut w1, &covering(1, &[(0, None, 5)]), 0..5)
        .await
        .unwrap();

    // w2 takes partition 0 (w1 was paused past its session) and writes 5..8.
    commit_rows(&mut w2, &covering(1, &[(0, Some(5), 8)]), 5..8)
        .await
        .unwrap();

    // w1 commits partition 1: its tail is gone (w2's commit took the version), so the table
    // is re-read, and partition 1 has no claim: it lands.
    let other = covering(2, &[(0, Some(5), 5), (1, None, 2)]);
    commit_rows(&mut w1, &other, 0..2).await.unwrap();

    // w1 still believes it owns partition 0 from offset 5: refused, though no writer
    // committed since w1's last commit.
    let stale = covering(3, &[(0, Some(5), 9), (1, Some(2), 2)]);
    let err = commit_rows(&mut w1, &stale, 5..9).await.unwrap_err();
    assert_eq!(refusal(&err), (0, 8, Some(5)));
    assert_eq!(
        live_files(&root).await.len(),
        3,
        "the refused commit wrote nothing"
    );
}

/// A commit that landed before an error (the `_delta_log` directory fsync fails) claims its
/// partitions like any other: the run's next commits start where it ended, first on the path
/// that re-reads the table and then through the sink's own tail; another worker's commit of
/// that partition is refused, and so is a stale commit of the run itself through its tail.
#[tokio::test]
async fn a_commit_landed_before_an_error_claims_its_partitions_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let faults = FaultFs::new(tidemark_fs::std_fs());
    let (mut w1, mut w2) = two_workers(&root, Arc::new(faults.clone())).await;
    faults.arm(Fault {
        path_contains: "_delta_log".into(),
        ..Fault::once(Op::SyncDir, FaultKind::Eio)
    });
    commit_rows(&mut w1, &covering(1, &[(0, None, 5)]), 0..5)
        .await
        .unwrap();
    assert_eq!(
        faults.injected(),
        1,
        "the fault fired after the commit landed"
    );
    assert_eq!(w1.own_tail, None, "an error leaves no tail to commit after");

    commit_rows(&mut w1, &covering(2, &[(0, Some(5), 8)]), 5..8)
        .await
        .unwrap();
    commit_rows(&mut w1, &covering(3, &[(0, Some(8), 10)]), 8..10)
        .await
        .unwrap();
    assert!(
        matches!(
            w1.own_tail,
            Some(OwnTail {
                version: 3,
                unread: 1,
                ..
            })
        ),
        "epoch 3 went through the tail: {:?}",
        w1.own_tail
    );

    let err = commit_rows(&mut w2, &covering(1, &[(0, None, 4)]), 0..4)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), (0, 10, None));

    // w2's refusal wrote nothing, so w1's tail still holds: a stale start is refused there.
    let stale = covering(4, &[(0, Some(8), 12)]);
    let err = commit_rows(&mut w1, &stale, 8..12).await.unwrap_err();
    assert_eq!(refusal(&err), (0, 10, Some(8)));
    assert_eq!(
        live_files(&root).await.len(),
        3,
        "only the three landed commits"
    );
}

/// The commit info of `epoch` covering partitions of topic `t`: `(partition, start, end)`,
/// `start` `None` for a partition read from its beginning.
fn covering(epoch: i64, ranges: &[(i32, Option<i64>, i64)]) -> EpochCommitInfo {
    let mut i = info(epoch);
    for &(partition, start, end) in ranges {
        if let Some(start) = start {
            i.start_positions.set("t", partition, start);
        }
        i.end_positions.set("t", partition, end);
    }
    i
}
