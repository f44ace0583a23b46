//! The pipeline on an `s3://` table (issue 16), against the S3-compatible server `scripts/test`
//! starts (moto) and tansu: every crash point and a SIGKILL chaos run end exactly once, a lost
//! state directory is recovered from the table, two writers race on one table, transient store
//! errors injected by [`S3FaultProxy`] are retried, and a store without conditional writes is
//! refused. Every verdict comes from the independent audit reading the table through the store
//! (`audit::store`), never from the pipeline's own account.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use tidemark_engine::fault::CrashPoint;
use tidemark_tests::{
    broker, create_topic, drain_stderr, order_json, order_json_unless, produce, produce_range,
    s3_server, stderr_of, summary, unique_topic, FaultPlan, Fixture, S3FaultProxy, S3Server,
};
use tidemark_tools::audit::{self, store as table_audit};

use super::EXE;

type Ends = BTreeMap<(String, i32), i64>;

const DEDUP: &str =
    "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n";

/// A topic with `n` order records and a pipeline writing it into a fresh table on `s3`.
async fn s3_fixture(
    brokers: &str,
    s3: &S3Server,
    prefix: &str,
    n: u64,
    extra: &str,
) -> (Fixture, String, Ends) {
    let topic = unique_topic(prefix);
    create_topic(brokers, &topic, 3).await;
    let ends = produce(brokers, &topic, 3, n, order_json);
    let uri = s3.table_uri(0, prefix);
    let fixture = Fixture::with_table_uri(Path::new(EXE), brokers, &topic, &uri, extra);
    (fixture, uri, ends)
}

/// The pipeline's txn version in the table (0 before its first commit).
async fn committed(uri: &str, pipeline: &str) -> i64 {
    let table = table_audit::open(uri).unwrap();
    table_audit::replay_log(&table)
        .await
        .ok()
        .and_then(|r| r.txn.get(pipeline).copied())
        .unwrap_or(0)
}

/// The independent verdict on the S3 table: every record of `ends` once (rows, skips, dead
/// letters); each pipeline's epochs 1..=n, each committed once, its txn version n; every live
/// file present in the bucket and no data file the table does not reference. Returns the
/// replay.
async fn assert_exactly_once_on_s3(uri: &str, ends: &Ends, rows: u64) -> audit::LogReplay {
    let table = table_audit::open(uri).unwrap();
    let report = table_audit::check_exactly_once(&table, ends).await.unwrap();
    assert!(
        report.ok(),
        "{uri}: missing {:?}, duplicated {:?}, unexpected {:?}",
        &report.missing[..report.missing.len().min(5)],
        &report.duplicated[..report.duplicated.len().min(5)],
        &report.unexpected[..report.unexpected.len().min(5)]
    );
    assert_eq!(report.rows, rows, "{uri}");
    let replay = table_audit::replay_log(&table).await.unwrap();
    let mut per_pipeline: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, info) in &replay.epochs {
        per_pipeline
            .entry(info.pipeline_id.as_str())
            .or_default()
            .push(info.epoch.get());
    }
    for (pipeline, epochs) in &per_pipeline {
        let expected: Vec<u64> = (1..=epochs.len() as u64).collect();
        assert_eq!(
            epochs, &expected,
            "{uri}: {pipeline}'s epochs must be 1..=n, each once"
        );
        assert_eq!(
            replay.txn.get(*pipeline).copied(),
            Some(epochs.len() as i64),
            "{uri}: {pipeline}'s txn version"
        );
    }
    let orphans = table_audit::unreferenced_files(&table, &replay.live_files)
        .await
        .unwrap();
    assert!(
        orphans.is_empty(),
        "{uri}: unreferenced data files {orphans:?}"
    );
    // Every live file is there (the audit read them all: a missing one fails above), and
    // deltalake agrees on which they are.
    tidemark_connectors::table_store::register_s3_log_store();
    let mut view = deltalake::DeltaTableBuilder::from_url(table.url().clone())
        .unwrap()
        .with_storage_backend(table.store().clone(), table.url().clone())
        .build()
        .unwrap();
    view.load().await.expect("deltalake opens the S3 table");
    let files: BTreeSet<String> = view
        .get_file_uris()
        .unwrap()
        .map(|u| u.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(files, replay.live_files, "{uri}: deltalake and the replay");
    replay
}

/// Every crash point of the epoch protocol, at its second hit, on an S3 table (dedup off and
/// on in turn): the restart recovers by the case the protocol says and the table holds every
/// record once. Then the state directory is lost: the next run takes its progress from the
/// table (and, with dedup, rebuilds the dedup state from the table's key and time columns),
/// writes nothing again, and the table still holds every record once.
#[tokio::test(flavor = "multi_thread")]
async fn each_crash_point_recovers_exactly_once_on_s3() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let n = 3_000u64;
    let points: Vec<CrashPoint> = CrashPoint::ALL
        .into_iter()
        .filter(|p| !p.is_state_point() && *p != CrashPoint::DuringTruncation)
        .collect();
    let mut report = Vec::new();
    for (k, point) in points.into_iter().enumerate() {
        let dedup = k % 2 == 1;
        let extra = format!(
            "[checkpoint]\ninterval_ms = 300\nmax_records = 500\n{}",
            if dedup { DEDUP } else { "" }
        );
        let (fixture, uri, ends) = s3_fixture(&brokers, &s3, point.name(), n, &extra).await;
        let spec = format!("{}@2 (dedup {dedup})", point.name());
        let crash = format!("{}@2", point.name());
        // The schedule `protocol::expected` assumes (pipelined epochs, see there).
        let crashed = fixture.run_to_end(&[
            (tidemark_engine::fault::ENV, crash.as_str()),
            (tidemark_engine::read_ahead::READ_AHEAD_FIRST_ENV, "1"),
        ]);
        assert_eq!(
            crashed.status.signal(),
            Some(libc::SIGKILL),
            "{spec}: no crash: {}",
            stderr_of(&crashed)
        );
        let (case, before) = super::protocol::expected(point, 2);
        assert_eq!(
            committed(&uri, "test").await,
            before,
            "{spec}: epochs at the crash"
        );
        if point == CrashPoint::AfterParquetWrite {
            let table = table_audit::open(&uri).unwrap();
            let replay = table_audit::replay_log(&table).await.unwrap();
            let left = table_audit::unreferenced_files(&table, &replay.live_files)
                .await
                .unwrap();
            assert!(!left.is_empty(), "{spec}: the crash must follow an upload");
        }
        let out = fixture.run_to_end(&[]);
        assert!(out.status.success(), "{spec}: {}", stderr_of(&out));
        let s = summary(&out);
        assert_eq!(s["recovery"]["case"], case, "{spec}: {s}");
        if case == "write_missing_checkpoint" {
            // The landed epoch's commit, read from the table on S3, gives its counts: nothing
            // is replayed.
            assert_eq!(s["recovery"]["replayed_records"], 0, "{spec}: {s}");
        }
        if point == CrashPoint::AfterParquetWrite {
            assert!(
                s["recovery"]["orphan_files_deleted"].as_u64().unwrap() >= 1,
                "{spec}: the start-up sweep deletes the uploaded, uncommitted file: {s}"
            );
        }
        assert_exactly_once_on_s3(&uri, &ends, n).await;
        report.push(format!("{spec}: {case}"));
        if point == CrashPoint::AfterSeal {
            // The local disk is lost: WAL and checkpoint store gone; the table carries progress.
            std::fs::remove_dir_all(fixture.state_dir()).unwrap();
            let out = fixture.run_to_end(&[]);
            assert!(out.status.success(), "lost state: {}", stderr_of(&out));
            let s = summary(&out);
            assert_eq!(s["rows_written"], 0, "lost state: nothing again: {s}");
            assert_exactly_once_on_s3(&uri, &ends, n).await;
            report.push(format!(
                "lost state dir after {spec}: progress from the table"
            ));
        }
    }
    eprintln!("S3 crash points:\n  {}", report.join("\n  "));
}

/// A lost state directory with dedup on: the dedup state is rebuilt from the S3 table (its
/// key and event-time columns, streamed), so producer duplicates of records already in the
/// table are still dropped after the loss.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_state_dir_rebuilds_dedup_state_from_the_s3_table() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let n = 2_000u64;
    let extra = format!("[checkpoint]\ninterval_ms = 300\nmax_records = 500\n{DEDUP}");
    let (fixture, uri, _) = s3_fixture(&brokers, &s3, "s3-dedup-lost", n, &extra).await;
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["rows_written"], n);
    std::fs::remove_dir_all(fixture.state_dir()).unwrap();
    // The producer resends the first 500 records (same ids): duplicates.
    let topic = std::fs::read_to_string(&fixture.config)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("topics = [\"")?
                .strip_suffix("\"]")
                .map(str::to_string)
        })
        .unwrap();
    produce_range(&brokers, &topic, 3, 0..500, order_json);
    let out = fixture.run_to_end(&[]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("dedup state rebuilt from the table"), "{log}");
    let s = summary(&out);
    assert_eq!(
        s["rows_written"], 0,
        "the resent records are duplicates: {s}"
    );
    let table = table_audit::open(&uri).unwrap();
    let replay = table_audit::replay_log(&table).await.unwrap();
    let ids = table_audit::read_coordinates(&table, &replay.live_files)
        .await
        .unwrap();
    assert_eq!(ids.len() as u64, n);
}

/// SIGKILLs at random moments (and at aimed crash points) while a producer writes, the table
/// and its dead-letter table on S3, dedup and Delta checkpoints on: the final run ends with
/// every record once (malformed ones once in the dead-letter table).
#[tokio::test(flavor = "multi_thread")]
async fn chaos_sigkills_on_s3_keep_exactly_once() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let records = 20_000u64;
    // Malformed records go to the dead-letter table, also on S3.
    let bad = |i: u64| i % 997 == 5;
    let dead = (0..records).filter(|i| bad(*i)).count() as u64;
    let kills_wanted = 10;
    let topic = unique_topic("s3-chaos");
    create_topic(&brokers, &topic, 3).await;
    let uri = s3.table_uri(0, "chaos");
    let fixture = Fixture::with_table_uri(
        Path::new(EXE),
        &brokers,
        &topic,
        &uri,
        &format!(
            "[checkpoint]\ninterval_ms = 250\nmax_records = 2000\n{DEDUP}[maintenance]\ncheckpoint_every = 4\n"
        ),
    );
    let producer = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            let mut ends: Ends = BTreeMap::new();
            for chunk in 0..20 {
                let range = chunk * 1_000..(chunk + 1) * 1_000;
                for (k, n) in produce_range(&brokers, &topic, 3, range, order_json_unless(bad)) {
                    *ends.entry(k).or_insert(0) += n;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            ends
        })
    };
    let aimed = [
        CrashPoint::AfterDeltaCommit,
        CrashPoint::AfterParquetWrite,
        CrashPoint::AfterSeal,
    ];
    let mut rng = rand::rng();
    let mut by_point = 0;
    let started = Instant::now();
    for kill in 0..kills_wanted {
        let armed = (kill % 3 == 1).then(|| {
            let point = aimed[(kill / 3) % aimed.len()];
            format!("{}@{}", point.name(), rng.random_range(1..3))
        });
        let env: Vec<(&str, &str)> = armed
            .iter()
            .map(|spec| (tidemark_engine::fault::ENV, spec.as_str()))
            .collect();
        let mut child = fixture.spawn(false, &env);
        let log = drain_stderr(&mut child);
        let ms = if armed.is_some() {
            10_000
        } else {
            rng.random_range(200..4_000)
        };
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match child.try_wait().unwrap() {
            Some(status) if armed.is_some() && status.signal() == Some(libc::SIGKILL) => {
                by_point += 1
            }
            Some(status) => panic!(
                "pipeline exited on its own ({status}): {}",
                log.join().unwrap()
            ),
            None => child.kill().unwrap(),
        }
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let _ = log.join();
    }
    let ends = producer.join().unwrap();
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = summary(&out);
    eprintln!(
        "S3 chaos: {kills_wanted} SIGKILLs ({by_point} at crash points) over {:.0} s; final run {s}",
        started.elapsed().as_secs_f64()
    );
    assert!(by_point >= 1, "no kill landed at a crash point");
    assert_exactly_once_on_s3(&uri, &ends, records - dead).await;
    let report = table_audit::check_exactly_once(&table_audit::open(&uri).unwrap(), &ends)
        .await
        .unwrap();
    assert_eq!(
        report.dead_letters, dead,
        "dead letters in the S3 dead-letter table"
    );
    assert_eq!(s["totals"]["written"], records - dead, "{s}");
    // Maintenance ran on S3: Delta checkpoints and `_last_checkpoint` are in the log.
    let table = table_audit::open(&uri).unwrap();
    let names = table_audit::log_file_names(&table).await.unwrap();
    assert!(
        names.iter().any(|n| n.ends_with(".checkpoint.parquet"))
            && names.iter().any(|n| n == "_last_checkpoint"),
        "no Delta checkpoint on S3: {names:?}"
    );
}

/// Two pipelines (ids `test` and `rival`, each its own topic) commit to one S3 table at once,
/// every 100 ms: conditional writes let one commit win each version; the loser re-checks and
/// commits at a later version. The log has one commit per version (no gap), each pipeline's
/// epochs are 1..=n once each, every live file exists, and none is left unreferenced.
#[tokio::test(flavor = "multi_thread")]
async fn two_writers_racing_on_one_s3_table_commit_each_epoch_once() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let n = 4_000u64;
    let extra = "[checkpoint]\ninterval_ms = 100\nmax_records = 150\n";
    let (first, uri, mut ends) = s3_fixture(&brokers, &s3, "s3-race-a", n, extra).await;
    let topic_b = unique_topic("s3-race-b");
    create_topic(&brokers, &topic_b, 3).await;
    ends.extend(produce(&brokers, &topic_b, 3, n, order_json));
    let second = Fixture::with_table_uri(Path::new(EXE), &brokers, &topic_b, &uri, extra);
    let text = std::fs::read_to_string(&second.config).unwrap();
    std::fs::write(
        &second.config,
        text.replacen("pipeline_id = \"test\"", "pipeline_id = \"rival\"", 1),
    )
    .unwrap();
    let env = [(
        "RUST_LOG",
        "info,tidemark_connectors=debug,buoyant_kernel=warn,deltalake_core=warn,librdkafka=warn",
    )];
    let mut a = first.spawn(true, &env);
    let mut b = second.spawn(true, &env);
    let (log_a, log_b) = (drain_stderr(&mut a), drain_stderr(&mut b));
    let (sa, sb) = (a.wait().unwrap(), b.wait().unwrap());
    let (log_a, log_b) = (log_a.join().unwrap(), log_b.join().unwrap());
    // Both logs on a failure: what one writer saw of the other's commits is half the story.
    assert!(
        sa.success() && sb.success(),
        "writer a ({sa}):\n{log_a}\n\nwriter b ({sb}):\n{log_b}"
    );
    let lost = |log: &str| log.matches("another commit came first").count();
    let races = lost(&log_a) + lost(&log_b);
    let whole = |log: &str| log.matches("reading the table whole").count();
    eprintln!(
        "S3 race: {} whole re-reads after a state update missed an own commit",
        whole(&log_a) + whole(&log_b)
    );
    let replay = assert_exactly_once_on_s3(&uri, &ends, 2 * n).await;
    let epochs = replay.epochs.len();
    eprintln!(
        "S3 race: {epochs} epoch commits of two writers in versions 1..={}, {races} commits lost a race and were retried",
        replay.version
    );
    assert!(
        races >= 1,
        "the writers never raced (no lost put-if-absent)"
    );
    // Version 0 creates the table (one of the writers; the other's create lost).
    assert_eq!(replay.version as usize, epochs, "one commit per version");
}

/// A share of the S3 requests fail (503 SlowDown, 500, a dropped connection before the
/// request reaches the store, and one dropped after the store applied it), and the answers of
/// the commits of versions 1, 2 and 3 are lost after they landed: the client retries, the sink resolves
/// each ambiguous commit against the table (its own commit found: committed, not redone), and
/// every record lands once.
#[tokio::test(flavor = "multi_thread")]
async fn transient_s3_errors_are_retried_and_nothing_is_lost_or_doubled() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let n = 4_000u64;
    let extra = format!("[checkpoint]\ninterval_ms = 200\nmax_records = 250\n{DEDUP}");
    let (fixture, uri, ends) = s3_fixture(&brokers, &s3, "s3-faults", n, &extra).await;
    let plan = FaultPlan {
        // Epochs 1, 2 and 3 land and the answers are lost.
        lose_commit_answers: 3,
        ..FaultPlan::transient(0.2, 16)
    };
    let proxy = S3FaultProxy::start(&s3, plan);
    let endpoint = proxy.server().endpoint;
    let out = fixture.run_to_end(&[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(summary(&out)["rows_written"], n);
    let counts = proxy.counts();
    let faults = counts.total_faults();
    eprintln!(
        "S3 faults: {} requests, injected {faults} ({:?} by kind), {} on writes",
        counts.requests.load(Ordering::Relaxed),
        counts
            .faults
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        counts.faulted_writes.load(Ordering::Relaxed)
    );
    assert!(
        faults > 0 && counts.faulted_writes.load(Ordering::Relaxed) > 0,
        "the proxy must have injected transient faults, some on writes"
    );
    assert_eq!(
        counts.lost_commit_answers.load(Ordering::Relaxed),
        3,
        "the answers of three landed commits were lost"
    );
    // Each was found in the table (the retry found the version taken): counted as committed,
    // not written again.
    let resolved = log.matches("the commit landed before an error").count();
    eprintln!("S3 faults: {resolved} lost commit answers resolved against the table");
    // At least the three planned ones: a random fault after the server applied a commit PUT is a
    // lost answer too, resolved the same way.
    assert!(
        resolved >= 3,
        "each lost answer resolved against the table: {log}"
    );
    // The audit reads straight from the server, not through the proxy.
    assert_exactly_once_on_s3(&uri, &ends, n).await;
    // A restart through the faulty proxy adds nothing.
    let again = fixture.run_to_end(&[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(summary(&again)["rows_written"], 0);
    assert_exactly_once_on_s3(&uri, &ends, n).await;
}

/// A store that ignores `If-None-Match` (the proxy strips it) would let two writers both
/// commit one version: the pipeline refuses to start, says why and what the store must
/// support, and writes no commit. Through the real store it runs; `status` then reads the
/// table without writing anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_without_conditional_writes_is_refused_at_start() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let (fixture, uri, _) = s3_fixture(&brokers, &s3, "s3-no-cond", 100, "").await;
    let proxy = S3FaultProxy::start(&s3, FaultPlan::without_conditional_writes());
    let endpoint = proxy.server().endpoint;
    let out = fixture.run_to_end(&[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    let log = stderr_of(&out);
    assert!(!out.status.success(), "must refuse: {log}");
    assert!(
        log.contains("does not refuse a second put-if-absent")
            && log.contains("If-None-Match")
            && log.contains(&uri),
        "the refusal names the table and what the store lacks: {log}"
    );
    let table = table_audit::open(&uri).unwrap();
    assert!(
        table_audit::replay_log(&table).await.is_err(),
        "no commit may be written through such a store"
    );
    // The same table through the real server works.
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["rows_written"], 100);
    // `status` only looks: through a pass-through proxy it reads the table and writes nothing
    // (no put-if-absent probe either: read-only credentials suffice).
    let looking = S3FaultProxy::start(&s3, FaultPlan::transient(0.0, 0));
    let out = std::process::Command::new(EXE)
        .args(["status", "--json", "--config"])
        .arg(&fixture.config)
        .env("RUST_LOG", "warn")
        .env("AWS_ENDPOINT_URL", looking.server().endpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["table"]["txn_version"],
        committed(&uri, "test").await,
        "{status}"
    );
    let counts = looking.counts();
    assert!(
        counts.requests.load(Ordering::Relaxed) > 0,
        "status went around the proxy"
    );
    assert_eq!(
        counts.writes.load(Ordering::Relaxed),
        0,
        "status wrote to the store"
    );
}

/// An order record with a `note` of `bytes` pseudo-random hex characters (they do not
/// compress: the Parquet file is about as big as the notes).
fn big_order(bytes: usize) -> impl Fn(u64) -> Vec<u8> {
    move |i| {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let note: String = (0..bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_digit((x % 16) as u32, 16).unwrap_or('0')
            })
            .collect();
        format!(r#"{{"id":"id-{i:09}","n":{i},"note":"{note}"}}"#).into_bytes()
    }
}

/// An epoch whose Parquet file passes the multipart threshold (16 MiB) is uploaded to S3 in
/// parts, and the upload completes before the commit references it: the table reads back whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_epoch_file_is_uploaded_to_s3_in_parts() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let n = 30u64;
    let topic = unique_topic("s3-multipart");
    create_topic(&brokers, &topic, 1).await;
    let ends = produce(&brokers, &topic, 1, n, big_order(700_000));
    let uri = s3.table_uri(0, "multipart");
    let fixture = Fixture::with_table_uri(
        Path::new(EXE),
        &brokers,
        &topic,
        &uri,
        "[checkpoint]\ninterval_ms = 20000\nmax_records = 1000\n",
    );
    let proxy = S3FaultProxy::start(&s3, FaultPlan::transient(0.0, 0));
    let endpoint = proxy.server().endpoint;
    let out = fixture.run_to_end(&[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = summary(&out);
    assert_eq!(s["rows_written"], n, "{s}");
    let counts = proxy.counts();
    let (started, completed) = (
        counts.multipart_started.load(Ordering::Relaxed),
        counts.multipart_completed.load(Ordering::Relaxed),
    );
    eprintln!("S3 multipart: {started} uploads started, {completed} completed; run {s}");
    assert!(started >= 1, "no multipart upload: {s}");
    assert_eq!(started, completed, "every multipart upload completed");
    assert_exactly_once_on_s3(&uri, &ends, n).await;
}
