//! Issue 11's everyday faults against tansu: a lost store with dedup on for every form of table
//! path, a second instance of a pipeline, two writers with different state directories, a
//! store held open by another process, and a stop requested while recovering or connecting.
//! Each ends with an independent audit of the table.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tidemark_tests::{
    broker, create_topic, drain_stderr, produce_messages, stderr_of, summary, unique_topic,
    Fixture, Message,
};
use tidemark_tools::audit;

use super::{assert_exactly_once, topic_and_fixture, EXE};

const DEDUP_COLUMNS: &str = r#"columns = [
  { name = "id", type = "string" },
  { name = "n", type = "long" },
  { name = "ts", type = "timestamp" },
  { name = "note", type = "string" },
]"#;

const DEDUP: &str = "[dedup]\nkey = [\"id\"]\nevent_time = \"ts\"\nallowed_lateness_ms = 3600000\n";

fn dedup_message(i: u64, partitions: i32) -> Message {
    // Event times within the lateness of each other, on the wall clock's side of "now".
    let ts_us = (1_760_000_000_000i64 + i as i64) * 1000;
    let json = format!(r#"{{"id":"id-{i:07}","n":{i},"ts":{ts_us},"note":"record {i}"}}"#);
    (
        (i % partitions as u64) as i32,
        None,
        Some(json.into_bytes()),
    )
}

/// How a test names the table in `sink.table_uri`.
#[derive(Debug, Clone, Copy)]
pub(super) enum TablePath {
    Relative,
    Absolute,
    FileUrl,
}

/// Rewrites the fixture's `table_uri` (the same directory) in `form`.
pub(super) fn set_table_path(fixture: &Fixture, form: TablePath) {
    let uri = match form {
        TablePath::Relative => "table".to_string(),
        TablePath::Absolute => fixture.table.display().to_string(),
        TablePath::FileUrl => url::Url::from_directory_path(&fixture.table)
            .unwrap()
            .to_string(),
    };
    let config = std::fs::read_to_string(&fixture.config).unwrap();
    std::fs::write(
        &fixture.config,
        config.replace("table_uri = \"table\"", &format!("table_uri = \"{uri}\"")),
    )
    .unwrap();
}

/// The ids in the table, each with how often it appears.
fn ids_in_table(fixture: &Fixture) -> BTreeMap<String, u64> {
    let replay = audit::replay_log(&fixture.table).unwrap();
    let mut counts = BTreeMap::new();
    for id in audit::read_string_column(&fixture.table, &replay.live_files, "id").unwrap() {
        *counts.entry(id.unwrap_or_default()).or_insert(0) += 1;
    }
    counts
}

/// Issue 11 item 0: a deleted checkpoint directory with dedup on (and off) resumes from the
/// table for a relative path, an absolute path and a file:// URL; after the restart, producer
/// retries of records written before the loss are dropped as duplicates (the dedup state was
/// rebuilt from the table) and every id is in the table once.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_store_resumes_from_the_table_for_every_path_form_with_dedup_on_and_off() {
    let Some(brokers) = broker() else { return };
    let partitions = 2;
    let n = 2_000u64;
    for form in [TablePath::Relative, TablePath::Absolute, TablePath::FileUrl] {
        for dedup in [true, false] {
            let what = format!("{form:?}, dedup {dedup}");
            let topic = unique_topic("lost-dedup");
            create_topic(&brokers, &topic, partitions).await;
            let mut next = BTreeMap::new();
            let first: Vec<Message> = (0..n).map(|i| dedup_message(i, partitions)).collect();
            produce_messages(&brokers, &topic, &first, &mut next);
            let extra = format!(
                "[checkpoint]\ninterval_ms = 300\nmax_records = 300\n{}",
                if dedup { DEDUP } else { "" }
            );
            let fixture =
                Fixture::with_columns(Path::new(EXE), &brokers, &topic, DEDUP_COLUMNS, &extra);
            set_table_path(&fixture, form);
            let out = fixture.run_to_end(&[(tidemark_engine::fault::ENV, "after_wal_append@4")]);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{what}: {}",
                stderr_of(&out)
            );
            std::fs::remove_dir_all(fixture.state_dir()).unwrap();
            // Producer retries of the first half, after the loss.
            let again: Vec<Message> = (0..n / 2).map(|i| dedup_message(i, partitions)).collect();
            produce_messages(&brokers, &topic, &again, &mut next);

            let out = fixture.run_to_end(&[]);
            let log = stderr_of(&out);
            assert!(out.status.success(), "{what}: {log}");
            assert!(log.contains("CHECKPOINT STORE LOST"), "{what}: {log}");
            let s = summary(&out);
            assert_eq!(s["recovery"]["case"], "from_table", "{what}: {s}");
            let ids = ids_in_table(&fixture);
            assert_eq!(ids.len() as u64, n, "{what}: every id in the table");
            if dedup {
                assert!(
                    ids.values().all(|c| *c == 1),
                    "{what}: an id twice after the lost store"
                );
                assert_eq!(s["totals"]["duplicates"], n / 2, "{what}: {s}");
                assert_eq!(s["totals"]["read"], n + n / 2, "{what}: {s}");
            } else {
                let twice = ids.values().filter(|c| **c == 2).count() as u64;
                assert_eq!(twice, n / 2, "{what}: without dedup, retries are rows");
            }
        }
    }
}

/// Issue 11 item 2: a second `tidemark run` of the same config fails fast naming the holder
/// and touches nothing: the first run's store, WAL and in-flight files are intact and it
/// finishes exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_fails_fast_and_changes_nothing() {
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "twice",
        2,
        4_000,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 400\n",
    )
    .await;
    // Slow commits keep the first instance mid-epoch while the second starts.
    let mut first = fixture.spawn(
        false,
        &[(tidemark_engine::io_faults::COMMIT_DELAY_ENV, "400")],
    );
    // Drain its log as it comes: a full pipe would block the pipeline.
    let first_log = drain_stderr(&mut first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit::replay_log(&fixture.table)
        .ok()
        .and_then(|r| r.txn.get("test").copied())
        .unwrap_or(0)
        < 2
    {
        assert!(first.try_wait().unwrap().is_none(), "first instance exited");
        assert!(Instant::now() < deadline, "first instance did not commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs_before = std::fs::read_to_string(fixture.state_dir().join("runs")).unwrap();
    let lock_before = std::fs::read_to_string(fixture.state_dir().join("LOCK")).unwrap();
    let started = Instant::now();
    let second = fixture.run_to_end(&[]);
    let log = stderr_of(&second);
    assert!(
        !second.status.success(),
        "the second instance must refuse: {log}"
    );
    assert!(
        log.contains("in use by another tidemark process")
            && log.contains(&format!("pid {}", first.id())),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the second instance must fail fast"
    );
    assert!(!log.contains("STORE"), "the store was touched: {log}");
    // It never got past the lock: no run of it recorded, the holder's lock file as it was.
    let runs_after = std::fs::read_to_string(fixture.state_dir().join("runs")).unwrap();
    let lock_after = std::fs::read_to_string(fixture.state_dir().join("LOCK")).unwrap();
    assert_eq!(
        runs_before, runs_after,
        "the second instance recorded a run"
    );
    assert_eq!(
        lock_before, lock_after,
        "the second instance rewrote the lock file"
    );
    // The first one goes on undisturbed to the end.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let replay = audit::replay_log(&fixture.table).unwrap();
        let read: i64 = replay
            .epochs
            .last()
            .map(|(_, e)| e.end_positions.iter().map(|(_, o)| o).sum())
            .unwrap_or(0);
        if read >= 4_000 {
            break;
        }
        assert!(first.try_wait().unwrap().is_none(), "first instance died");
        assert!(Instant::now() < deadline, "first instance did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    let log = first_log.join().unwrap();
    assert!(status.success(), "{log}");
    assert_exactly_once(&fixture, &ends, 4_000).await;
}

/// Issue 11 item 2, fencing through the table: two writers of one pipeline id with different
/// state directories race over the same stream. At most one commit per epoch lands, a loser
/// stops with a clear error and deletes nothing the winner committed; a final run completes
/// the stream exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_writers_with_different_state_dirs_never_double_an_epoch() {
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "two-writers",
        2,
        6_000,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 300\n",
    )
    .await;
    let other_config = fixture.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&fixture.config).unwrap();
    std::fs::write(
        &other_config,
        format!("{text}\n").replace(
            "[checkpoint]\n",
            "[checkpoint]\ndir = \".tidemark/other\"\n",
        ),
    )
    .unwrap();
    let spawn_other = || {
        std::process::Command::new(EXE)
            .args(["run", "--until-caught-up", "--config"])
            .arg(&other_config)
            .env("RUST_LOG", tidemark_tests::TEST_LOG_FILTER)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both start together and both logs are drained as they come, so neither stalls on a
    // full pipe while the other races.
    let mut a = fixture.spawn(true, &[]);
    let mut b = spawn_other();
    let (log_a, log_b) = (drain_stderr(&mut a), drain_stderr(&mut b));
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    let (la, lb) = (log_a.join().unwrap(), log_b.join().unwrap());
    let mut losers = 0;
    for (status, log) in [(sa, &la), (sb, &lb)] {
        if !status.success() {
            losers += 1;
            assert!(
                log.contains("already in the table") || log.contains("another writer"),
                "a losing writer must say why: {log}"
            );
        }
    }
    // Whatever happened, every epoch number is in the log once and no referenced file is
    // missing.
    let replay = audit::replay_log(&fixture.table).unwrap();
    let epochs: Vec<u64> = replay.epochs.iter().map(|(_, e)| e.epoch.get()).collect();
    let distinct: BTreeSet<u64> = epochs.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        epochs.len(),
        "an epoch committed twice: {epochs:?}"
    );
    for f in &replay.live_files {
        assert!(
            fixture.table.join(f).exists(),
            "referenced file {f} deleted"
        );
    }
    // The race happened: a writer lost, or commits of both runs are in the table.
    let runs: BTreeSet<String> = replay
        .epochs
        .iter()
        .filter_map(|(_, e)| e.run_id.map(|r| r.to_string()))
        .collect();
    assert!(
        losers >= 1 || runs.len() >= 2,
        "the two writers did not race (losers {losers}, runs {runs:?})"
    );
    // A writer that lost an epoch refuses to go on with its own state (the table moved past
    // its checkpoint: "another writer uses this pipeline id") — that is the fencing working.
    // The winner finishes the stream.
    let winner_ok = if sa.success() {
        fixture.run_to_end(&[])
    } else {
        spawn_other().wait_with_output().unwrap()
    };
    assert!(winner_ok.status.success(), "{}", stderr_of(&winner_ok));
    if !sa.success() {
        let out = fixture.run_to_end(&[]);
        assert!(
            !out.status.success() && stderr_of(&out).contains("another writer"),
            "the losing state directory must refuse to continue: {}",
            stderr_of(&out)
        );
    }
    let rows: u64 = audit::check_exactly_once(&fixture.table, &ends)
        .unwrap()
        .rows;
    assert_eq!(rows, 6_000);
    let report = audit::check_exactly_once(&fixture.table, &ends).unwrap();
    assert!(
        report.ok(),
        "duplicated {:?}",
        &report.duplicated[..report.duplicated.len().min(5)]
    );
}

/// Issue 11 item 3: a store another process holds open (its RocksDB lock taken) is an error
/// that stops the start and changes nothing — never "store lost".
#[tokio::test(flavor = "multi_thread")]
async fn a_store_held_by_another_process_is_not_a_lost_store() {
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "store-held",
        2,
        2_000,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 500\n",
    )
    .await;
    let out = fixture.run_to_end(&[(tidemark_engine::fault::ENV, "after_wal_append@3")]);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    let store_dir = fixture.state_dir().join("store");
    let held = tidemark_checkpoint::CheckpointStore::open(&store_dir, Default::default())
        .expect("the test opens the store");
    let before: Vec<_> = std::fs::read_dir(fixture.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = fixture.run_to_end(&[]);
    let log = stderr_of(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        !log.contains("STORE LOST") && !log.contains("UNREADABLE"),
        "{log}"
    );
    assert!(
        log.to_lowercase().contains("lock"),
        "the error names the lock: {log}"
    );
    let after: Vec<_> = std::fs::read_dir(fixture.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing moved aside or created");
    drop(held);
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_ne!(summary(&out)["recovery"]["case"], "from_table");
    assert_exactly_once(&fixture, &ends, 2_000).await;
}

/// Waits until the state directory's lock file names process `pid`.
async fn wait_for_lock(fixture: &Fixture, pid: u32) {
    let lock = fixture.state_dir().join("LOCK");
    let want = format!("pid {pid}\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.starts_with(&want)) {
        assert!(Instant::now() < deadline, "pid {pid} never took the lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Issue 11 item 12: SIGTERM while the source cannot connect (no broker answers) and while
/// recovery runs stops the process cleanly and soon.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_connect_or_recovery_stops_cleanly() {
    let Some(brokers) = broker() else { return };
    // No broker listens on port 1 of loopback: the connect waits for metadata.
    let fixture = Fixture::new(Path::new(EXE), "127.0.0.1:1", "nowhere", "");
    let child = fixture.spawn(false, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "SIGTERM during connect took {:?}",
        stopped.elapsed()
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["stopped_because"], "shutdown");

    // During recovery: a SIGTERM at random early moments of a restart that redoes an epoch.
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "term-recovery",
        2,
        2_000,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 500\n",
    )
    .await;
    // Delays count from the moment the child holds the lock (its handler is installed by then).
    for delay_ms in [0u64, 30, 100, 300] {
        let out = fixture.run_to_end(&[(tidemark_engine::fault::ENV, "after_seal@2")]);
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGKILL),
            "{}",
            stderr_of(&out)
        );
        let child = fixture.spawn(false, &[]);
        // The lock file names the child once it holds the state directory: its signal handler
        // is installed by then (before the lock is taken), and recovery is about to begin.
        wait_for_lock(&fixture, child.id()).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "SIGTERM {delay_ms} ms after the lock: {}",
            stderr_of(&out)
        );
    }
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_exactly_once(&fixture, &ends, 2_000).await;
}

/// Issue 11, faults no SIGKILL produces: a full disk or a failing device during the WAL
/// append, the Parquet write and the Delta commit stop the pipeline naming the file; a restart
/// once the disk is fine leaves every record in the table exactly once and no orphan file. A
/// transient error (a timeout) on the Parquet write or the commit is retried and the run goes on.
#[tokio::test(flavor = "multi_thread")]
async fn disk_full_and_io_errors_stop_the_pipeline_and_lose_nothing() {
    let Some(brokers) = broker() else { return };
    for spec in [
        "write:enospc:/wal/@3:sticky",
        "sync:eio:/wal/@4",
        "write:enospc:.parquet@3:sticky",
        "write:enospc:_delta_log@3:sticky",
        "sync:eio:_delta_log@2:sticky",
        "write:etimedout:.parquet@2",
        "write:etimedout:_delta_log@2",
    ] {
        let (fixture, ends) = topic_and_fixture(
            &brokers,
            "io-fault",
            2,
            3_000,
            "[checkpoint]\ninterval_ms = 200\nmax_records = 400\n",
        )
        .await;
        let out = fixture.run_to_end(&[(tidemark_engine::io_faults::ENV, spec)]);
        let log = stderr_of(&out);
        if spec.contains("etimedout") {
            // Transient: retried with backoff, and the run goes on to the end.
            assert!(out.status.success(), "{spec}: {log}");
            assert!(
                log.contains("transient storage error, retrying"),
                "{spec}: the retry is logged: {log}"
            );
            assert_exactly_once(&fixture, &ends, 3_000).await;
            continue;
        }
        assert!(
            !out.status.success(),
            "{spec}: the fault must stop the run: {log}"
        );
        let path_text = spec.split(':').nth(2).unwrap().split('@').next().unwrap();
        assert!(
            log.contains("injected fault") && log.contains(path_text),
            "{spec}: the error names the failed call and its file: {log}"
        );
        let out = fixture.run_to_end(&[]);
        assert!(out.status.success(), "{spec}: {}", stderr_of(&out));
        let replay = audit::replay_log(&fixture.table).unwrap();
        let orphans = fixture.orphan_files(&replay.live_files);
        assert!(orphans.is_empty(), "{spec}: orphan files {orphans:?}");
        assert_exactly_once(&fixture, &ends, 3_000).await;
    }
}

/// Issue 11 item 5: a WAL damaged before its end (a byte flipped in a middle segment of a sealed,
/// uncommitted epoch) refuses the start, naming the case and the way on; the refusal holds on the
/// next start too; `--accept-wal-damage` re-reads the lost records from Kafka, exactly once. With
/// dedup off (relative table path) and on (absolute path).
#[tokio::test(flavor = "multi_thread")]
async fn wal_damage_before_the_end_refuses_until_accepted() {
    let Some(brokers) = broker() else { return };
    for (dedup, form) in [(false, TablePath::Relative), (true, TablePath::Absolute)] {
        let what = format!("dedup {dedup}, {form:?}");
        let extra = format!(
            "[checkpoint]\ninterval_ms = 300\nmax_records = 500\nwal_segment_bytes = 4096\n{}",
            if dedup {
                "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n"
            } else {
                ""
            }
        );
        let (fixture, ends) = topic_and_fixture(&brokers, "wal-damage", 2, 3_000, &extra).await;
        set_table_path(&fixture, form);
        let out = fixture.run_to_end(&[(tidemark_engine::fault::ENV, "after_seal@2")]);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{what}: {}",
            stderr_of(&out)
        );
        let wal = fixture.state_dir().join("wal");
        let mut segments: Vec<_> = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segments.sort();
        assert!(segments.len() >= 3, "{what}: {segments:?}");
        let middle = &segments[segments.len() / 2];
        let mut bytes = std::fs::read(middle).unwrap();
        bytes[40] ^= 0x5a;
        std::fs::write(middle, bytes).unwrap();

        for attempt in 0..2 {
            let out = fixture.run_to_end(&[]);
            let log = stderr_of(&out);
            assert!(
                !out.status.success(),
                "{what}, start {attempt}: must refuse: {log}"
            );
            assert!(
                log.contains("damaged before its end") && log.contains("--accept-wal-damage"),
                "{what}, start {attempt}: {log}"
            );
        }
        // `tidemark status` shows the same decision a start takes.
        let status: serde_json::Value =
            serde_json::from_slice(&fixture.status(true).stdout).unwrap();
        assert_eq!(status["next_case"], "refused", "{what}: {status}");
        let out = fixture
            .spawn_with(true, &["--accept-wal-damage"], &[])
            .wait_with_output()
            .unwrap();
        assert!(out.status.success(), "{what}: {}", stderr_of(&out));
        assert_exactly_once(&fixture, &ends, 3_000).await;
    }
}

/// Issue 11 item 5, the other half: the WAL lost the seal of an epoch whose commit landed (cut
/// just before the seal frame after a crash between the Delta commit and the checkpoint). The
/// start is not taken for another writer: the table's commit continues the checkpoint, so the
/// pipeline resumes from the table and stays exactly once. Dedup off and on.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_seal_of_a_landed_commit_resumes_from_the_table() {
    let Some(brokers) = broker() else { return };
    for dedup in [false, true] {
        let extra = format!(
            "[checkpoint]\ninterval_ms = 300\nmax_records = 500\n{}",
            if dedup {
                "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n"
            } else {
                ""
            }
        );
        let (fixture, ends) = topic_and_fixture(&brokers, "seal-lost", 2, 3_000, &extra).await;
        let out = fixture.run_to_end(&[(tidemark_engine::fault::ENV, "after_delta_commit@2")]);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "dedup {dedup}: {}",
            stderr_of(&out)
        );
        let wal = fixture.state_dir().join("wal");
        let newest = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .max()
            .unwrap();
        let bytes = std::fs::read(&newest).unwrap();
        // The seal's payload is JSON starting with its start positions; its frame header (20
        // bytes) comes just before. Cut the segment there: a clean end without the seal.
        let needle = b"{\"start_positions\"";
        let at = bytes
            .windows(needle.len())
            .rposition(|w| w == needle)
            .expect("the seal frame");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .unwrap()
            .set_len((at - 20) as u64)
            .unwrap();
        let out = fixture.run_to_end(&[]);
        let log = stderr_of(&out);
        assert!(out.status.success(), "dedup {dedup}: {log}");
        assert!(log.contains("WAL SEAL LOST"), "dedup {dedup}: {log}");
        assert_eq!(
            summary(&out)["recovery"]["case"],
            "seal_lost_commit_landed",
            "dedup {dedup}"
        );
        assert_exactly_once(&fixture, &ends, 3_000).await;
    }
}
