//! Issue 13, replication: `tidemark replicate` against tables a real pipeline writes (tansu).
//!
//! - A replica followed while the pipeline writes equals its source at every version (delta-rs
//!   in Python reads both at each version), holds every Kafka record once, and `tidemark status`
//!   shows its lag.
//! - SIGKILLs of `replicate` at random moments (>= 25, with copies slowed so kills land inside
//!   them) never leave a replica with a missing or torn file or commit; deltalake opens it after
//!   every kill; the restart completes it to equal the source. A delta-rs checkpoint in the
//!   source is copied too, `_last_checkpoint` only after it (a crash point between them).
//! - One writer per replica: a second `replicate` into a followed replica is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use tidemark_tests::{
    broker, create_topic, drain_stderr, order_json, produce_range, unique_topic, Fixture,
    TEST_LOG_FILTER,
};
use tidemark_tools::audit;

use super::EXE;

/// Every file under `dir` (relative path -> bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), bytes);
            }
        }
    }
    out
}

fn is_temporary(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with('.') && f.contains(".tidemark-tmp-"))
}

/// What a replica must be at any moment, even right after a SIGKILL: every commit from 0 to
/// its newest is the source's, byte for byte; every other file (data files of its versions,
/// and of the next version not committed yet) is the source's file of that name, whole; deltalake
/// opens it and every file of its newest snapshot is there. Returns the replica's newest
/// version and how many temporary files (of interrupted writes) it holds.
async fn assert_consistent_replica(source: &Path, replica: &Path) -> (Option<u64>, usize) {
    let src = tree(source);
    let dst = tree(replica);
    let mut temporaries = 0;
    let mut versions = Vec::new();
    for (name, bytes) in &dst {
        if is_temporary(name) {
            temporaries += 1;
            continue;
        }
        // The source may have written a checkpoint file meanwhile; anything else must match.
        assert_eq!(
            src.get(name).map(Vec::len),
            Some(bytes.len()),
            "replica file {name} is not the source's (missing there or another size)"
        );
        assert!(
            src.get(name) == Some(bytes),
            "replica file {name} differs from the source's"
        );
        if let Some(v) = name
            .strip_prefix("_delta_log/")
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    let newest = versions.last().copied();
    assert_eq!(
        versions,
        (0..newest.map_or(0, |n| n + 1)).collect::<Vec<_>>(),
        "the replica's commits are not 0..=newest"
    );
    if newest.is_some() {
        let url = url::Url::from_directory_path(replica).unwrap();
        let table = deltalake::open_table(url)
            .await
            .unwrap_or_else(|e| panic!("deltalake cannot open the replica: {e}"));
        // A running replicate may have added versions since the listing above.
        let opened = table.version();
        assert!(
            opened >= newest,
            "deltalake opened {opened:?}, the log holds {newest:?}"
        );
        for uri in table.get_file_uris().unwrap() {
            let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(&uri));
            let rel = path.strip_prefix(replica).unwrap().display().to_string();
            let here = dst.get(&rel).cloned().or_else(|| std::fs::read(&path).ok());
            assert!(
                here.is_some() && here.as_ref() == src.get(&rel),
                "version {opened:?} refers to {rel}: missing in the replica or not the source's"
            );
        }
    }
    (newest, temporaries)
}

/// Data files in the replica that its newest version does not refer to (files of the next
/// version, copied before its commit).
async fn uncommitted_data_files(replica: &Path) -> usize {
    let on_disk = tree(replica)
        .into_keys()
        .filter(|k| k.ends_with(".parquet") && !k.starts_with("_delta_log/") && !is_temporary(k))
        .count();
    let referenced =
        match deltalake::open_table(url::Url::from_directory_path(replica).unwrap()).await {
            Ok(t) => t.get_file_uris().unwrap().count(),
            Err(_) => 0,
        };
    on_disk - referenced
}

/// Compares both tables at every version with delta-rs (Python) and pyarrow.
fn compare_versions(source: &Path, replica: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/compare_versions.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(source)
        .arg(replica)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "compare_versions.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn replicate(from: &Path, to: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(EXE)
        .arg("replicate")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(args)
        .env("RUST_LOG", TEST_LOG_FILTER)
        .env_remove("TIDEMARK_CRASH_AT")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidemark replicate")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our live child's.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn last_json(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON summary line")
}

#[tokio::test(flavor = "multi_thread")]
async fn replicate_follows_a_writing_pipeline_and_equals_the_source_at_every_version() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("replicate");
    create_topic(&brokers, &topic, 2).await;
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 700\n\n[replica]\ntable_uri = \"replica\"\n",
    );
    let replica = fixture.dir.path().join("replica");
    // The first records, so the table exists before replication starts.
    let mut ends = produce_range(&brokers, &topic, 2, 0..2_000, order_json);
    let mut pipeline = fixture.spawn(false, &[]);
    let pipeline_log = drain_stderr(&mut pipeline);
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit::replay_log(&fixture.table).map_or(true, |r| r.epochs.is_empty()) {
        assert!(Instant::now() < deadline, "no first commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut follower = replicate(
        &fixture.table,
        &replica,
        &["--follow", "--interval", "200ms"],
        &[],
    );
    let follower_log = drain_stderr(&mut follower);

    // Produce in bursts while both run; look at the replica between bursts.
    let producer = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            let mut ends = BTreeMap::new();
            for burst in 0..8u64 {
                let range = 2_000 + burst * 1_500..2_000 + (burst + 1) * 1_500;
                for (k, n) in produce_range(&brokers, &topic, 2, range, order_json) {
                    *ends.entry(k).or_insert(0) += n;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            ends
        })
    };
    let mut looks = 0;
    let mut saw_lag_in_status = false;
    while !producer.is_finished() {
        let (newest, _) = assert_consistent_replica(&fixture.table, &replica).await;
        looks += u64::from(newest.is_some());
        let status = fixture.status(true);
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        saw_lag_in_status |= status["replica"]["lag"]["versions_behind"].is_u64();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for (k, n) in producer.join().unwrap() {
        *ends.entry(k).or_insert(0) += n;
    }
    assert!(looks >= 3, "the replica was looked at only {looks} times");
    assert!(saw_lag_in_status, "status never showed the replica's lag");

    // The pipeline catches up and stops; the follower catches up with it.
    let total: i64 = ends.values().sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let read = audit::replay_log(&fixture.table)
            .ok()
            .and_then(|r| r.epochs.last().map(|(_, e)| e.end_positions.clone()))
            .map_or(0, |p| {
                ends.keys()
                    .map(|(t, part)| p.get(t, *part).unwrap_or(0))
                    .sum::<i64>()
            });
        if read == total {
            break;
        }
        assert!(Instant::now() < deadline, "the pipeline did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&pipeline, libc::SIGTERM);
    let out = pipeline.wait().unwrap();
    assert!(out.success(), "pipeline: {}", pipeline_log.join().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = fixture.status(true);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if s["replica"]["lag"]["versions_behind"] == 0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status["replica"]["lag"]["replica_version"],
        status["table"]["version"]
    );
    let text = fixture.status(false);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("replica") && text.contains("caught up"),
        "{text}"
    );
    signal(&follower, libc::SIGTERM);
    let out = follower.wait_with_output().unwrap();
    let log = follower_log.join().unwrap();
    assert!(out.status.success(), "replicate: {log}");
    let summary = last_json(&out.stdout);
    assert_eq!(summary["stopped_because"], "shutdown", "{summary}");
    assert!(summary["rounds"].as_u64().unwrap() >= 3, "{summary}");
    assert!(
        summary["versions_copied"].as_u64().unwrap() >= 5,
        "{summary}"
    );

    // Byte for byte, and version by version through an independent reader.
    let (newest, temporaries) = assert_consistent_replica(&fixture.table, &replica).await;
    assert_eq!(temporaries, 0);
    let src_log: Vec<String> = tree(&fixture.table)
        .into_keys()
        .filter(|k| k.starts_with("_delta_log/"))
        .collect();
    let dst_log: Vec<String> = tree(&replica)
        .into_keys()
        .filter(|k| k.starts_with("_delta_log/"))
        .collect();
    assert_eq!(src_log, dst_log);
    let compared = compare_versions(&fixture.table, &replica);
    assert_eq!(compared["mismatches"], serde_json::json!([]), "{compared}");
    assert_eq!(compared["replica_version"].as_u64(), newest);
    assert_eq!(compared["rows"].as_i64(), Some(total), "{compared}");
    // The replica alone holds every Kafka record once.
    let report = audit::check_exactly_once(&replica, &ends).unwrap();
    assert!(report.ok() && report.rows == total as u64, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_of_replicate_never_leave_a_missing_or_torn_file() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("replicate-kill");
    create_topic(&brokers, &topic, 1).await;
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        "[checkpoint]\ninterval_ms = 60000\nmax_records = 400\n",
    );
    let ends = produce_range(&brokers, &topic, 1, 0..16_000, order_json);
    let out = fixture.run_to_end(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let source_version = audit::replay_log(&fixture.table).unwrap().version as u64;
    assert!(source_version >= 40, "only {source_version} versions");
    // A Delta checkpoint (written by delta-rs) at the newest version, so that kills also land
    // in checkpoint copies, and a crash point right after its file.
    let checkpointed = Command::new("python3")
        .args([
            "-c",
            "import sys, deltalake; deltalake.DeltaTable(sys.argv[1]).create_checkpoint()",
        ])
        .arg(&fixture.table)
        .output()
        .expect("python3");
    assert!(
        checkpointed.status.success(),
        "create_checkpoint: {}",
        String::from_utf8_lossy(&checkpointed.stderr)
    );
    let last_checkpoint = fixture.table.join("_delta_log/_last_checkpoint");
    assert!(last_checkpoint.exists());

    // Copies crawl (2 KiB chunks, 15 ms each) so that kills land inside them.
    let slow = [("TIDEMARK_FAULT_COPY_DELAY_MS", "15")];
    let args = ["--chunk-size", "2KiB", "--parallel", "2"];
    let mut rng = rand::rng();
    let mut replica_no = 0;
    let mut replica = fixture.dir.path().join("replica-0");
    let (mut kills, mut temporaries_seen, mut mid_version) = (0, 0, 0);
    while kills < 25 {
        let mut child = replicate(&fixture.table, &replica, &args, &slow);
        let log = drain_stderr(&mut child);
        tokio::time::sleep(Duration::from_millis(rng.random_range(60..450))).await;
        if child.try_wait().unwrap().is_none() {
            signal(&child, libc::SIGKILL);
            kills += 1;
        }
        let status = child.wait().unwrap();
        let log = log.join().unwrap();
        let (_, temporaries) = assert_consistent_replica(&fixture.table, &replica).await;
        temporaries_seen += temporaries;
        mid_version += usize::from(uncommitted_data_files(&replica).await > 0);
        if status.success() {
            // Caught up before the kill: start a fresh replica to keep killing copies.
            assert!(log.contains("replication round done"), "{log}");
            replica_no += 1;
            replica = fixture.dir.path().join(format!("replica-{replica_no}"));
        }
    }
    // Crash points at the exact steps, into a fresh replica.
    let stepped = fixture.dir.path().join("replica-steps");
    for point in [
        "replicate_after_data_file@2",
        "replicate_before_commit_file@3",
        "replicate_after_commit_file@2",
        "replicate_after_checkpoint_file@1",
    ] {
        let mut child = replicate(
            &fixture.table,
            &stepped,
            &[],
            &[("TIDEMARK_CRASH_AT", point)],
        );
        let log = drain_stderr(&mut child);
        let status = child.wait().unwrap();
        let log = log.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{point}: {log}");
        assert!(log.contains("crash point reached"), "{point}: {log}");
        assert_consistent_replica(&fixture.table, &stepped).await;
        // Data files of later versions are copied while earlier commits are written, so a
        // kill leaves any number of them (uncommitted: invisible); before a commit file, at
        // least that version's own data file is among them.
        let extra = uncommitted_data_files(&stepped).await;
        if point.starts_with("replicate_after_checkpoint_file") {
            // The checkpoint file is there; `_last_checkpoint` (written only once every part
            // is) is not: readers never look for a checkpoint that is not whole.
            let log = stepped.join("_delta_log");
            assert!(
                std::fs::read_dir(&log).unwrap().flatten().any(|e| e
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".checkpoint.parquet")),
                "{point}"
            );
            assert!(!log.join("_last_checkpoint").exists(), "{point}");
        } else if !point.starts_with("replicate_after_commit_file") {
            assert!(extra >= 1, "{point}: {extra}");
        }
    }
    // Both replicas complete on a clean run and equal the source.
    for replica in [&replica, &stepped] {
        let out = replicate(&fixture.table, replica, &[], &[])
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = last_json(&out.stdout);
        assert_eq!(
            summary["replica_version"].as_u64(),
            Some(source_version),
            "{summary}"
        );
        let (newest, temporaries) = assert_consistent_replica(&fixture.table, replica).await;
        assert_eq!((newest, temporaries), (Some(source_version), 0));
        let compared = compare_versions(&fixture.table, replica);
        assert_eq!(compared["mismatches"], serde_json::json!([]), "{compared}");
        let report = audit::check_exactly_once(replica, &ends).unwrap();
        assert!(report.ok() && report.rows == 16_000, "{report:?}");
        assert_eq!(
            std::fs::read(replica.join("_delta_log/_last_checkpoint")).unwrap(),
            std::fs::read(&last_checkpoint).unwrap()
        );
    }

    // One writer per replica: a second `replicate` into a replica being followed is refused,
    // naming the holder, and changes nothing.
    let followed = fixture.dir.path().join("replica-followed");
    let mut follower = replicate(&fixture.table, &followed, &["--follow"], &[]);
    let follower_log = drain_stderr(&mut follower);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !followed.join("_delta_log/_last_checkpoint").exists() {
        assert!(Instant::now() < deadline, "the follower did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = tree(&followed);
    let second = replicate(&fixture.table, &followed, &[], &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second writer ran: {err}");
    assert!(
        err.contains("being written by another tidemark process")
            && err.contains(&format!("pid {}", follower.id())),
        "{err}"
    );
    assert_eq!(
        tree(&followed),
        before,
        "the refused run changed the replica"
    );
    signal(&follower, libc::SIGTERM);
    assert!(follower.wait().unwrap().success());
    drop(follower_log.join());
    // The lock went with its holder.
    let out = replicate(&fixture.table, &followed, &[], &[])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The kills must have landed inside copies, or no torn copy was ever tested.
    assert!(
        mid_version + temporaries_seen > 0,
        "no SIGKILL of {kills} landed inside a copy"
    );
    eprintln!(
        "replicate kill test: {kills} SIGKILLs over {} replica(s); {mid_version} left data files of an uncommitted version, {temporaries_seen} temporary files seen (swept by the next run)",
        replica_no + 1
    );
}
