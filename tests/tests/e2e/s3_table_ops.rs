//! Table operations on `s3://` tables (issue 16), against the S3-compatible server
//! `scripts/test` starts (moto, two buckets = two "regions") and tansu: replication between
//! buckets and to/from local disk (incremental, `--follow`, the writer lock object), backups and
//! restores through S3, verify (and repair) on S3, optimize + vacuum on S3, history/cat/export.
//! Source tables are written by the real pipeline straight to S3.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use tidemark_table::{open_store, TableLocation};
use tidemark_tests::{
    broker, drain_stderr, have_python, order_json, produce_range, python_json, s3_server,
    stderr_of, summary, Fixture, S3Server,
};
use tidemark_tools::audit;

use super::{ok, ok_json, s, tidemark, topic_and_fixture, EXE};

/// A pipeline writing `s3://<bucket 0>/<name>-...` from a fresh topic of `n` orders (3
/// partitions, small epochs: several versions), run to the end once.
struct S3Table {
    fixture: Fixture,
    uri: String,
    brokers: String,
    topic: String,
    ends: BTreeMap<(String, i32), i64>,
    produced: u64,
}

impl S3Table {
    async fn new(brokers: &str, s3: &S3Server, name: &str, n: u64) -> Self {
        let (plain, ends) = topic_and_fixture(brokers, name, 3, n, "").await;
        let topic = ends.keys().next().unwrap().0.clone();
        let uri = s3.table_uri(0, name);
        let fixture = Fixture::with_table_uri(
            Path::new(EXE),
            brokers,
            &topic,
            &uri,
            "[checkpoint]\ninterval_ms = 200\nmax_records = 600\n",
        );
        drop(plain);
        let table = Self {
            fixture,
            uri,
            brokers: brokers.to_string(),
            topic,
            ends,
            produced: n,
        };
        table.run();
        table
    }

    /// Runs the pipeline until caught up.
    fn run(&self) {
        let out = self.fixture.run_to_end(&[]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        summary(&out);
    }

    /// Produces `n` more orders and runs the pipeline over them.
    fn grow(&mut self, n: u64) {
        let counts = produce_range(
            &self.brokers,
            &self.topic,
            3,
            self.produced..self.produced + n,
            order_json,
        );
        for (partition, count) in counts {
            *self.ends.entry(partition).or_insert(0) += count;
        }
        self.produced += n;
        self.run();
    }
}

/// Every object under `uri` (relative path -> bytes).
async fn objects(uri: &str) -> BTreeMap<String, Vec<u8>> {
    let at = open_store(uri).unwrap();
    let listed: Vec<object_store::ObjectMeta> = at
        .store()
        .list(Some(at.root()))
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for meta in listed {
        let bytes = at.store().get(&meta.location).await.unwrap().bytes().await;
        out.insert(
            at.relative(&meta.location).unwrap(),
            bytes.unwrap().to_vec(),
        );
    }
    out
}

/// The `_delta_log/` commits (`*.json`) of a table's objects.
fn commits(objects: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    objects
        .iter()
        .filter(|(k, _)| k.starts_with("_delta_log/") && k.ends_with(".json"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The files of a local directory (relative path -> bytes).
fn local_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The `.parquet` objects of a table, sorted.
async fn data_files(uri: &str) -> Vec<String> {
    objects(uri)
        .await
        .into_keys()
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

fn newest_version(objects: &BTreeMap<String, Vec<u8>>) -> u64 {
    commits(objects)
        .keys()
        .filter_map(|k| {
            k.trim_start_matches("_delta_log/")
                .trim_end_matches(".json")
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}

/// The lock object `replicate` takes beside an S3 replica.
fn lock_location(replica: &str) -> (TableLocation, object_store::path::Path) {
    let at = open_store(replica).unwrap();
    let (path, _) = tidemark_table::replica_lock::object_lock_path(&at);
    (at, path)
}

/// A holder as `tidemark` writes it into a lock object.
fn holder_json(host: &str, pid: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "pid": pid, "host": host, "boot_id": null, "proc_start": null,
        "started": "2026-11-30T14:00:00Z", "command": "tidemark replicate", "token": "x",
    }))
    .unwrap()
}

/// Replication s3 -> s3 (another bucket), incremental and byte for byte, readable by delta-rs
/// and DuckDB; s3 -> local (audited exactly once) and local -> s3; the replica's lock object:
/// a holder elsewhere refuses, a dead holder on this host is broken, none is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn replication_from_s3_to_another_bucket_is_incremental_and_byte_for_byte() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let mut source = S3Table::new(&brokers, &s3, "s3-repl", 2_000).await;
    let replica = s3.table_uri(1, "s3-repl-replica");

    let first = ok_json(&["replicate", "--from", &source.uri, "--to", &replica]);
    assert!(first["versions_copied"].as_u64().unwrap() >= 3, "{first}");
    let src = objects(&source.uri).await;
    let dst = objects(&replica).await;
    assert_eq!(
        commits(&dst),
        commits(&src),
        "the replica's log is the source's"
    );
    assert_eq!(
        first["replica_version"].as_u64(),
        Some(newest_version(&src))
    );

    // Incremental: only what the source gained is copied.
    let before = newest_version(&src);
    source.grow(1_500);
    let second = ok_json(&["replicate", "--from", &source.uri, "--to", &replica]);
    let src = objects(&source.uri).await;
    let gained = newest_version(&src) - before;
    assert!(gained > 0);
    assert_eq!(second["versions_copied"].as_u64(), Some(gained), "{second}");
    let dst = objects(&replica).await;
    assert_eq!(commits(&dst), commits(&src));
    for (name, bytes) in &dst {
        assert_eq!(
            src.get(name),
            Some(bytes),
            "{name} differs from the source's"
        );
    }
    let (at, lock) = lock_location(&replica);
    assert!(
        at.store().head(&lock).await.is_err(),
        "the lock object is deleted at the end"
    );

    if have_python() {
        let view = python_json("read_s3_table.py", &[&replica]);
        assert_eq!(view["delta_rs_rows"], source.produced, "{view}");
        assert_eq!(view["duckdb_distinct_offsets"], source.produced, "{view}");
    }

    // s3 -> local disk: the local copy audits exactly once; local -> s3 round trips.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local-replica");
    ok_json(&["replicate", "--from", &replica, "--to", s(&local)]);
    let report = audit::check_exactly_once(&local, &source.ends).unwrap();
    assert!(
        report.ok(),
        "missing {:?}, duplicated {:?}, unexpected {:?}",
        report.missing.first(),
        report.duplicated.first(),
        report.unexpected.first()
    );
    assert_eq!(report.rows, source.produced);
    let back = s3.table_uri(0, "s3-repl-back");
    ok_json(&["replicate", "--from", s(&local), "--to", &back]);
    let back_objects = objects(&back).await;
    assert_eq!(commits(&back_objects), commits(&src));
    assert_eq!(local_files(&local).len(), back_objects.len());

    // The lock object: a holder on another host is never presumed dead.
    source.grow(300);
    at.store()
        .put(&lock, holder_json("some-other-host", 4242).into())
        .await
        .unwrap();
    let refused = tidemark(&["replicate", "--from", &source.uri, "--to", &replica]);
    assert!(!refused.status.success());
    let err = stderr_of(&refused);
    assert!(
        err.contains("some-other-host")
            && err.contains("aws s3 rm")
            && err.contains("tidemark-writer.lock"),
        "{err}"
    );
    // A holder on this host that is gone (a SIGKILLed run) is broken and replication resumes.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    at.store()
        .put(&lock, holder_json(host.trim(), u32::MAX - 1).into())
        .await
        .unwrap();
    let out = tidemark(&["replicate", "--from", &source.uri, "--to", &replica]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("broke the stale lock"),
        "{}",
        stderr_of(&out)
    );
    assert!(at.store().head(&lock).await.is_err());
    assert_eq!(
        commits(&objects(&replica).await),
        commits(&objects(&source.uri).await)
    );
}

/// `replicate --follow` between buckets keeps up with a pipeline writing to S3, holds the lock
/// object while it runs (a second replicate is refused naming it) and deletes it on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn replicate_follow_keeps_an_s3_replica_up_to_date() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let mut source = S3Table::new(&brokers, &s3, "s3-follow", 1_000).await;
    let replica = s3.table_uri(1, "s3-follow-replica");
    let mut follower = std::process::Command::new(EXE)
        .args([
            "replicate",
            "--from",
            &source.uri,
            "--to",
            &replica,
            "--follow",
        ])
        .args(["--interval", "200ms"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain_stderr(&mut follower);
    let (at, lock) = lock_location(&replica);
    let caught_up = |want: u64| {
        let replica = replica.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let have = objects(&replica).await;
                if !commits(&have).is_empty() && newest_version(&have) >= want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the follower did not reach version {want}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    caught_up(newest_version(&objects(&source.uri).await)).await;
    assert!(at.store().head(&lock).await.is_ok(), "held while following");
    let second = tidemark(&["replicate", "--from", &source.uri, "--to", &replica]);
    assert!(!second.status.success());
    assert!(
        stderr_of(&second).contains("still running"),
        "{}",
        stderr_of(&second)
    );

    source.grow(800);
    let src = objects(&source.uri).await;
    caught_up(newest_version(&src)).await;
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    let out = follower.wait_with_output().unwrap();
    let log = stderr.join().unwrap();
    assert!(out.status.success(), "{log}");
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(last["stopped_because"], "shutdown", "{last}");
    assert_eq!(commits(&objects(&replica).await), commits(&src));
    assert!(at.store().head(&lock).await.is_err(), "released on SIGTERM");
}

/// A backup chain on S3 (full, then incremental), listed and restored into an S3 prefix (and
/// onto local disk, audited) at the newest and an older version; the restored logs are the
/// source's byte for byte; a restore into a non-empty prefix is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_and_restore_round_trip_through_s3() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let mut source = S3Table::new(&brokers, &s3, "s3-backup", 1_500).await;
    let backups = s3.table_uri(1, "s3-backups");
    let full = ok_json(&["backup", "--from", &source.uri, "--to", &backups, "--json"]);
    assert_eq!(full["kind"], "full", "{full}");
    let first_version = full["last_version"].as_u64().unwrap();
    let first_rows = source.produced;
    source.grow(1_000);
    let incr = ok_json(&["backup", "--from", &source.uri, "--to", &backups, "--json"]);
    assert_eq!(incr["kind"], "incremental", "{incr}");
    assert_eq!(incr["first_version"].as_u64(), Some(first_version + 1));
    let up_to_date = ok_json(&["backup", "--from", &source.uri, "--to", &backups, "--json"]);
    assert_eq!(up_to_date["kind"], "up_to_date");
    let listed = ok_json(&["backup", "list", &backups, "--json"]);
    let rows = listed["backups"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(rows.iter().all(|b| b["chain_ok"] == true), "{listed}");
    let (bucket_at, _) = lock_location(&backups);
    let lock = bucket_at.child(".tidemark-backup.lock").unwrap();
    assert!(bucket_at.store().head(&lock).await.is_err(), "no lock left");

    let src = objects(&source.uri).await;
    let newest = newest_version(&src);
    let restored = s3.table_uri(0, "s3-restored");
    let report = ok_json(&["restore-backup", &backups, "--to", &restored, "--json"]);
    assert_eq!(report["version"].as_u64(), Some(newest), "{report}");
    let got = objects(&restored).await;
    assert_eq!(commits(&got), commits(&src));
    for (name, bytes) in &got {
        assert_eq!(src.get(name), Some(bytes), "{name}");
    }
    if have_python() {
        let view = python_json("read_s3_table.py", &[&restored]);
        assert_eq!(view["delta_rs_rows"], source.produced, "{view}");
    }
    // An in-place restore (Delta RESTORE) of the S3 copy back to the full backup's version.
    let v = first_version.to_string();
    ok_json(&[
        "restore",
        &restored,
        "--version",
        &v,
        "--no-pipeline",
        "--json",
    ]);
    let csv = ok(&["cat", &restored, "--all", "--format", "csv"]);
    assert_eq!(
        csv.lines().count() as u64,
        first_rows + 1,
        "restored to version {v}"
    );
    // Into the same (now non-empty) prefix: refused, nothing mixed.
    let again = tidemark(&["restore-backup", &backups, "--to", &restored]);
    assert!(!again.status.success());
    assert!(
        stderr_of(&again).contains("is not empty"),
        "{}",
        stderr_of(&again)
    );

    // An older version, from the full backup alone, onto local disk: exactly its rows.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("restored-v");
    let v = first_version.to_string();
    ok_json(&[
        "restore-backup",
        &backups,
        "--to",
        s(&local),
        "--version",
        &v,
        "--json",
    ]);
    let local_log = commits(&local_files(&local));
    let src_log: BTreeMap<_, _> = commits(&src)
        .into_iter()
        .filter(|(k, _)| local_log.contains_key(k))
        .collect();
    assert_eq!(local_log, src_log);
    let csv = ok(&["cat", s(&local), "--all", "--format", "csv"]);
    assert_eq!(
        csv.lines().count() as u64,
        first_rows + 1,
        "the restored version holds the first backup's rows (and a header)"
    );

    // Retention on S3: a dry run names nothing to delete while one chain exists.
    let out = ok(&["backup", "prune", &backups, "--keep-full", "1", "--dry-run"]);
    assert!(out.contains("would keep 2 backups"), "{out}");
}

/// verify on S3: clean at first; a truncated and a deleted data file are reported by name and
/// reason (exit 1); --repair-from an S3 backup puts them back and verify is clean again;
/// --deep with the backup's manifest compares checksums.
#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_damaged_objects_on_s3_and_repairs_them_from_an_s3_backup() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let source = S3Table::new(&brokers, &s3, "s3-verify", 1_500).await;
    let backups = s3.table_uri(1, "s3-verify-backups");
    ok_json(&["backup", "--from", &source.uri, "--to", &backups, "--json"]);
    let clean = ok_json(&["verify", &source.uri, "--json"]);
    assert_eq!(clean["bad"].as_array().unwrap().len(), 0, "{clean}");
    let deep = ok_json(&[
        "verify",
        &source.uri,
        "--deep",
        "--manifest",
        &backups,
        "--json",
    ]);
    assert!(deep["checksums_compared"].as_u64().unwrap() >= 2, "{deep}");

    let data: Vec<String> = objects(&source.uri)
        .await
        .into_keys()
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    assert!(data.len() >= 2);
    let at = open_store(&source.uri).unwrap();
    let truncated = at.child(&data[0]).unwrap();
    let bytes = at
        .store()
        .get(&truncated)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    at.store()
        .put(&truncated, bytes.slice(..bytes.len() / 2).into())
        .await
        .unwrap();
    at.store()
        .delete(&at.child(&data[1]).unwrap())
        .await
        .unwrap();

    let out = tidemark(&["verify", &source.uri, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: BTreeMap<String, String> = report["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["path"].as_str().unwrap().to_string(),
                b["problem"]["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        bad.get(&data[0]).map(String::as_str),
        Some("size_mismatch"),
        "{report}"
    );
    assert_eq!(
        bad.get(&data[1]).map(String::as_str),
        Some("missing"),
        "{report}"
    );

    let repaired = ok_json(&["verify", &source.uri, "--repair-from", &backups, "--json"]);
    assert_eq!(repaired["still_bad"], 0, "{repaired}");
    let clean = ok_json(&[
        "verify",
        &source.uri,
        "--deep",
        "--manifest",
        &backups,
        "--json",
    ]);
    assert_eq!(clean["bad"].as_array().unwrap().len(), 0, "{clean}");
    if have_python() {
        let view = python_json("read_s3_table.py", &[&source.uri]);
        assert_eq!(view["delta_rs_rows"], source.produced, "{view}");
    }
}

/// optimize and vacuum on S3: compaction leaves the small files unreferenced; a dry run lists
/// them and deletes nothing; those a replica has not copied yet are kept, named as needed by
/// it; once it has, --execute deletes exactly them and the table still reads whole. Then
/// history, cat and export read the S3 table, at the newest and an older version.
#[tokio::test(flavor = "multi_thread")]
async fn optimize_vacuum_history_and_cat_on_an_s3_table() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let mut source = S3Table::new(&brokers, &s3, "s3-vacuum", 1_800).await;
    let replica = s3.table_uri(1, "s3-vacuum-replica");
    ok_json(&["replicate", "--from", &source.uri, "--to", &replica]);
    let copied: Vec<String> = data_files(&source.uri).await;
    // history / cat / export of the S3 table, at the newest and an older version.
    let history = ok_json(&["history", &source.uri, "--json"]);
    let versions = history.as_array().unwrap();
    assert_eq!(
        versions.len() as u64,
        newest_version(&objects(&source.uri).await) + 1,
        "{history}"
    );
    let out = ok(&["cat", &source.uri, "--all", "--format", "csv"]);
    assert_eq!(
        out.lines().count() as u64,
        source.produced + 1,
        "header + every row"
    );
    let out = ok(&[
        "cat",
        &source.uri,
        "--version",
        "1",
        "--all",
        "--format",
        "json",
    ]);
    let v1_rows = out.lines().count() as u64;
    assert!(
        v1_rows > 0 && v1_rows < source.produced,
        "version 1 holds {v1_rows} rows"
    );
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("v1.csv");
    ok(&["export", &source.uri, "--version", "1", "--to", s(&export)]);
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(text.lines().count() as u64, v1_rows + 1);
    source.grow(900);
    let small = data_files(&source.uri).await;
    let not_copied: Vec<&String> = small.iter().filter(|f| !copied.contains(f)).collect();
    assert!(!not_copied.is_empty());
    let optimized = ok_json(&["optimize", &source.uri]);
    assert!(optimized.is_object(), "{optimized}");

    let vacuum = |extra: &[&str]| {
        let mut args = vec![
            "vacuum",
            source.uri.as_str(),
            "--retain",
            "0s",
            "--force",
            "--json",
        ];
        args.extend_from_slice(extra);
        ok_json(&args)
    };
    let paths = |v: &serde_json::Value, key: &str| -> Vec<String> {
        let mut p: Vec<String> = v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap().to_string())
            .collect();
        p.sort();
        p
    };
    let dry = vacuum(&["--replica", &replica]);
    assert_eq!(paths(&dry, "delete"), copied, "{dry}");
    assert_eq!(
        paths(&dry, "blocked").iter().collect::<Vec<_>>(),
        not_copied,
        "{dry}"
    );
    assert!(dry.to_string().contains("not copied yet"), "{dry}");
    let present = data_files(&source.uri).await;
    for f in &small {
        assert!(present.contains(f), "the dry run deleted {f}");
    }
    ok_json(&["replicate", "--from", &source.uri, "--to", &replica]);
    let dry = vacuum(&["--replica", &replica]);
    assert_eq!(paths(&dry, "delete"), small, "{dry}");
    let done = vacuum(&["--replica", &replica, "--execute"]);
    assert_eq!(done["deleted"].as_u64(), Some(small.len() as u64), "{done}");
    let after = objects(&source.uri).await;
    for f in &small {
        assert!(!after.contains_key(f), "{f} was not deleted");
    }
    let clean = ok_json(&["verify", &source.uri, "--json"]);
    assert_eq!(clean["bad"].as_array().unwrap().len(), 0, "{clean}");
    if have_python() {
        let view = python_json("read_s3_table.py", &[&source.uri]);
        assert_eq!(view["delta_rs_rows"], source.produced, "{view}");
    }

    // After the vacuum, version 1 cannot be read any more: refused by name, not half-read.
    let gone = tidemark(&["cat", &source.uri, "--version", "1", "--all"]);
    assert!(!gone.status.success());
    assert!(
        stderr_of(&gone).contains("missing from storage"),
        "{}",
        stderr_of(&gone)
    );
    let history = ok_json(&["history", &source.uri, "--json"]);
    let versions = history.as_array().unwrap();
    assert_eq!(
        versions.len() as u64,
        newest_version(&after) + 1,
        "{history}"
    );
    assert!(history.to_string().contains("OPTIMIZE"), "{history}");
    let out = ok(&["cat", &source.uri, "--all", "--format", "csv"]);
    assert_eq!(
        out.lines().count() as u64,
        source.produced + 1,
        "header + every row"
    );
}

/// The multipart uploads S3 holds (started, neither completed nor aborted) under `uri`, as
/// boto3 lists them (a reader sharing no code with Tidemark).
fn pending_uploads(uri: &str) -> Vec<String> {
    let url = url::Url::parse(uri).unwrap();
    let script = "import boto3, json, os, sys\n\
s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'], region_name='us-east-1')\n\
r = s3.list_multipart_uploads(Bucket=sys.argv[1], Prefix=sys.argv[2])\n\
print(json.dumps([u['Key'] for u in r.get('Uploads', [])]))\n";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            url.host_str().unwrap(),
            url.path().trim_start_matches('/'),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A big file goes to S3 as a multipart upload of parts S3 accepts (>= 5 MiB but the last),
/// whole and verified; a copy cancelled part-way (parts already uploaded) leaves no object
/// under the final name and no pending multipart upload (it is aborted).
#[tokio::test(flavor = "multi_thread")]
async fn big_files_go_to_s3_in_multipart_uploads_and_a_cancelled_one_is_aborted() {
    let Some(s3) = s3_server() else {
        return;
    };
    s3.set_process_env();
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src_dir = open_store(s(dir.path())).unwrap();
    let bytes: Vec<u8> = (0..(23u64 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("big.parquet"), &bytes).unwrap();
    let from = src_dir.child("big.parquet").unwrap();
    let dest = open_store(&s3.table_uri(1, "multipart")).unwrap();
    let to = dest.child("part-0.parquet").unwrap();
    let options = tidemark_table::CopyOptions {
        chunk_bytes: 1 << 20,
        ..tidemark_table::CopyOptions::default()
    };
    let outcome = tidemark_table::copy_verified(
        src_dir.store().as_ref(),
        &from,
        dest.store().as_ref(),
        &to,
        &options,
    )
    .await
    .unwrap();
    assert_eq!(outcome.size(), bytes.len() as u64);
    let got = dest.store().get(&to).await.unwrap().bytes().await.unwrap();
    assert!(got == bytes, "the object is the file");
    let e_tag = dest
        .store()
        .head(&to)
        .await
        .unwrap()
        .e_tag
        .unwrap_or_default();
    assert!(
        e_tag.contains("-5"),
        "a 5-part upload's ETag ends in -5: {e_tag}"
    );

    // Cancelled once 12 MiB were read (two parts sent): aborted, nothing visible.
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&read);
    let progress = move |n: u64| {
        counter.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    };
    let cancelled_to = dest.child("cancelled.parquet").unwrap();
    let options = tidemark_table::CopyOptions {
        chunk_bytes: 1 << 20,
        progress: Some(&progress),
        ..tidemark_table::CopyOptions::default()
    };
    let copy = tidemark_table::copy_verified(
        src_dir.store().as_ref(),
        &from,
        dest.store().as_ref(),
        &cancelled_to,
        &options,
    );
    let watch = async {
        while read.load(std::sync::atomic::Ordering::SeqCst) < 12 << 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        r = copy => panic!("the copy finished before it could be cancelled: {:?}", r.map(|o| o.size())),
        () = watch => {}
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = pending_uploads(&dest.url());
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upload never aborted: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dest.store().head(&cancelled_to).await.is_err(),
        "no object under the final name"
    );
}
