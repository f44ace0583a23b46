//! End-to-end tests of the Kafka -> Delta path against a real broker (tansu, via scripts/test),
//! the epoch protocol's crash, chaos and recovery tests (module `protocol`), the checkpoint
//! crate's SIGKILL crash tests (module `checkpoint_crash`),
//! plus the broker-free demo.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tidemark_tests::{
    broker, create_topic, have_python, order_json, order_json_except, order_json_unless, produce,
    summary, unique_topic, Fixture,
};
use tidemark_tools::audit;

#[path = "e2e/backup.rs"]
mod backup;
#[path = "e2e/checkpoint_crash.rs"]
mod checkpoint_crash;
#[path = "e2e/dedup.rs"]
mod dedup;
#[path = "e2e/failover.rs"]
mod failover;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/maintenance.rs"]
mod maintenance;
#[path = "e2e/observability.rs"]
mod observability;
#[path = "e2e/protocol.rs"]
mod protocol;
#[path = "e2e/records.rs"]
mod records;
#[path = "e2e/replicate.rs"]
mod replicate;
#[path = "e2e/restore.rs"]
mod restore;
#[path = "e2e/s3.rs"]
mod s3;
#[path = "e2e/s3_pipeline.rs"]
mod s3_pipeline;
#[path = "e2e/s3_table_ops.rs"]
mod s3_table_ops;
#[path = "e2e/scale_out.rs"]
mod scale_out;
#[path = "e2e/topology.rs"]
mod topology;

const EXE: &str = env!("CARGO_BIN_EXE_tidemark-under-test");

/// Runs the tidemark binary under test with `args` (`RUST_LOG=info`).
pub(crate) fn tidemark(args: &[&str]) -> std::process::Output {
    std::process::Command::new(EXE)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

/// [`tidemark`] that must succeed; its stdout.
pub(crate) fn ok(args: &[&str]) -> String {
    let out = tidemark(args);
    assert!(
        out.status.success(),
        "tidemark {args:?}: {}",
        tidemark_tests::stderr_of(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// [`ok`] whose stdout is one JSON document.
pub(crate) fn ok_json(args: &[&str]) -> serde_json::Value {
    let stdout = ok(args);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("tidemark {args:?} printed no JSON ({e}): {stdout}"))
}

/// A path as a command-line argument.
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh topic with `n` order records over `partitions`, and a pipeline fixture reading it
/// with `extra` config; returns the fixture and each partition's end offset.
async fn topic_and_fixture(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    n: u64,
    extra: &str,
) -> (Fixture, std::collections::BTreeMap<(String, i32), i64>) {
    let (_, fixture, ends) =
        topic_of_values_and_fixture(brokers, prefix, partitions, n, order_json, extra).await;
    (fixture, ends)
}

/// Like [`topic_and_fixture`] with `value(i)` as the i-th record; returns the topic too.
async fn topic_of_values_and_fixture(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    n: u64,
    value: impl Fn(u64) -> Vec<u8>,
    extra: &str,
) -> (
    String,
    Fixture,
    std::collections::BTreeMap<(String, i32), i64>,
) {
    let topic = unique_topic(prefix);
    create_topic(brokers, &topic, partitions).await;
    let ends = produce(brokers, &topic, partitions, n, value);
    let fixture = Fixture::new(Path::new(EXE), brokers, &topic, extra);
    (topic, fixture, ends)
}

/// The table read back through deltalake: live files and the pipeline's txn version.
async fn deltalake_view(table: &Path) -> (BTreeSet<String>, Option<i64>) {
    let url = url::Url::from_directory_path(table).unwrap();
    let t = deltalake::open_table(url)
        .await
        .expect("deltalake opens the table");
    let root = format!("{}/", table.display());
    let files = t
        .get_file_uris()
        .unwrap()
        .map(|u| {
            let path = u.strip_prefix("file://").unwrap_or(&u).to_string();
            path.strip_prefix(&root).unwrap_or(&path).to_string()
        })
        .collect();
    let txn = t
        .snapshot()
        .unwrap()
        .transaction_version(t.log_store().as_ref(), "test")
        .await
        .unwrap();
    (files, txn)
}

/// Asserts exactly-once both ways (independent replay and deltalake), and that epochs are
/// 1..=n with each committed once.
async fn assert_exactly_once(
    fixture: &Fixture,
    ends: &std::collections::BTreeMap<(String, i32), i64>,
    expect_rows: u64,
) {
    let report = audit::check_exactly_once(&fixture.table, ends).unwrap();
    assert!(
        report.ok(),
        "missing {:?}, duplicated {:?}, unexpected {:?}",
        &report.missing[..report.missing.len().min(5)],
        &report.duplicated[..report.duplicated.len().min(5)],
        &report.unexpected[..report.unexpected.len().min(5)]
    );
    assert_eq!(report.rows, expect_rows);
    let replay = audit::replay_log(&fixture.table).unwrap();
    let epochs: Vec<u64> = replay.epochs.iter().map(|(_, e)| e.epoch.get()).collect();
    let expected: Vec<u64> = (1..=epochs.len() as u64).collect();
    assert_eq!(
        epochs, expected,
        "epochs must be 1..=n, each committed once"
    );
    let (files, txn) = deltalake_view(&fixture.table).await;
    assert_eq!(
        files, replay.live_files,
        "deltalake and the log replay disagree on live files"
    );
    assert_eq!(txn, replay.txn.get("test").copied());
    assert_eq!(txn, epochs.last().map(|e| *e as i64));
}

/// Starts `fixture` with its WAL's reads failing as `fault` (a `TIDEMARK_FAULT_FS` read spec)
/// says, after a kill whose `tidemark status --json` was `status`: the start must fail, name
/// the WAL file and the failed read, and change nothing: every WAL file keeps its name and
/// bytes (a cut or a rewrite keeps the names), and `status` shows the same checkpoint and
/// next case. A failing device is not damage to repair.
fn a_start_that_cannot_read_its_wal_fails_and_changes_nothing(
    fixture: &Fixture,
    status: &serde_json::Value,
    fault: &str,
) {
    let wal = fixture.state_dir().join("wal");
    let files = || {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap_or_default())
            })
            .collect();
        files.sort();
        files
    };
    let before = files();
    let out = fixture.run_to_end(&[(tidemark_engine::io_faults::ENV, fault)]);
    let err = tidemark_tests::stderr_of(&out);
    assert!(
        !out.status.success(),
        "{fault}: a start that cannot read its WAL must fail: {err}"
    );
    assert!(
        err.contains("injected fault on Read of") && err.contains("/wal/"),
        "{fault}: the error names the WAL file and the failed read: {err}"
    );
    assert!(
        files() == before,
        "{fault}: a failed read changed the WAL: {err}"
    );
    let after: serde_json::Value = serde_json::from_slice(&fixture.status(true).stdout).unwrap();
    for field in ["epoch", "counts", "positions", "table_version"] {
        assert_eq!(
            after["checkpoint"][field], status["checkpoint"][field],
            "{fault}: {field}: {after}"
        );
    }
    assert_eq!(after["next_case"], status["next_case"], "{fault}: {after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_record_fails_naming_topic_partition_offset() {
    let Some(brokers) = broker() else { return };
    for (bad, reason) in [
        (b"{\"id\":\"x\",\"n\":".to_vec(), "malformed_json"),
        (
            b"{\"id\":\"x\",\"n\":\"seven\"}".to_vec(),
            "schema_mismatch",
        ),
    ] {
        let (topic, fixture, _) = topic_of_values_and_fixture(
            &brokers,
            "invalid",
            1,
            20,
            order_json_except(|i| i == 13, move |_| bad.clone()),
            "[errors]\non_invalid_record = \"fail\"\n",
        )
        .await;
        let out = fixture.run_to_end(&[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a bad record must stop the pipeline: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{topic}/0@13")),
            "coordinates not named: {stderr}"
        );
        assert!(
            stderr.contains(reason),
            "reason {reason} not named: {stderr}"
        );
        // Nothing of the failing epoch is in the table.
        let replay = audit::replay_log(&fixture.table).unwrap();
        assert!(replay.live_files.is_empty() && replay.epochs.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skipped_records_are_listed_in_commit_info() {
    let Some(brokers) = broker() else { return };
    let (_, fixture, ends) = topic_of_values_and_fixture(
        &brokers,
        "skip",
        2,
        1_000,
        order_json_unless(|i| i % 97 == 0),
        "[errors]\non_invalid_record = \"skip\"\n",
    )
    .await;
    let out = fixture.run_to_end(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = (0..1_000u64).filter(|i| i % 97 == 0).count() as u64;
    assert_eq!(summary(&out)["records_skipped"], bad);
    let report = audit::check_exactly_once(&fixture.table, &ends).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.skipped, bad);
    assert_eq!(report.rows, 1_000 - bad);
}

#[test]
fn bad_config_fails_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        "pipeline_id = \"p\"\n[source]\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\n[sink]\ntable_uri = \"t\"\n[checkpoint]\nmax_records = 0\n",
    )
    .unwrap();
    let out = std::process::Command::new(EXE)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkpoint.max_records"), "{stderr}");
}

#[test]
fn demo_runs_without_any_external_service() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(EXE)
        // The defaults, exactly as the README's quick start runs them.
        .args(["demo", "--dir"])
        .arg(&demo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Debug build, 2 shared cores: the release build takes a few seconds.
    assert!(started.elapsed() < Duration::from_secs(60), "{stdout}");
    for shown in [
        "killed with SIGKILL",
        "run 3         recovery case from_table",
        "log: ERROR CHECKPOINT STORE LOST",
        "exactly-once  OK",
        "orders        OK",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not in\n{stdout}");
    }

    // What the demo printed...
    let produced_lines: Vec<&str> = demo_lines(&stdout, "produced");
    assert_eq!(produced_lines.len(), 2, "{stdout}");
    let retries_sent: u64 = produced_lines
        .iter()
        .map(|l| number_before(l, " producer retries"))
        .sum();
    let messages: u64 = produced_lines
        .iter()
        .map(|l| number_before(l, " messages"))
        .sum();
    let duplicates_line = demo_lines(&stdout, "duplicates")[0];
    let dropped = number_before(duplicates_line, " dropped");
    let dead_line = demo_lines(&stdout, "dead letters")[0];
    let orders_line = demo_lines(&stdout, "orders")[0];

    // ... against an independent read of both tables.
    let table = demo.join("orders");
    let replay = audit::replay_log(&table).unwrap();
    let ids: Vec<String> = audit::read_string_column(&table, &replay.live_files, "order_id")
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    let rows = ids.len() as u64;
    assert_eq!(
        distinct.len() as u64,
        rows,
        "an order id twice in the table"
    );
    assert!(
        orders_line.contains(&format!("{rows} rows, {rows} distinct order ids")),
        "{orders_line}"
    );
    let dlq = audit::dead_letter_dir(&table).expect("a dead-letter table");
    assert!(
        dead_line.contains(&dlq.display().to_string()),
        "{dead_line}"
    );
    let letters = audit::read_dead_letters(&dlq).unwrap();
    let mut by_reason: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, reason) in &letters {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    assert!(
        by_reason.contains_key("malformed_json") && by_reason.contains_key("schema_mismatch"),
        "{by_reason:?}"
    );
    for (reason, n) in &by_reason {
        assert!(dead_line.contains(&format!("{n} {reason}")), "{dead_line}");
    }
    let dead = letters.len() as u64;
    // The Kafka offsets the table says it read (its newest commit's end positions): each is a
    // row, a dead letter or a dropped duplicate, and the duplicates are the producer retries.
    let last = &replay.epochs.last().unwrap().1;
    let ends: std::collections::BTreeMap<(String, i32), i64> = (0..4)
        .map(|p| {
            let end = last.end_positions.get("orders", p).unwrap_or(0);
            (("orders".to_string(), p), end)
        })
        .collect();
    let read: u64 = ends.values().map(|e| *e as u64).sum();
    assert_eq!(read, messages, "the table read every message produced");
    let report = audit::check_exactly_once(&table, &ends).unwrap();
    assert!(
        report.duplicated.is_empty() && report.unexpected.is_empty(),
        "{report:?}"
    );
    assert_eq!((report.rows, report.dead_letters), (rows, dead));
    assert_eq!(report.missing.len() as u64, read - rows - dead);
    assert!(retries_sent > 0);
    assert_eq!(read - rows - dead, retries_sent, "{stdout}");
    assert_eq!(dropped, retries_sent, "{stdout}");
    let counted: u64 = replay.epochs.iter().map(|(_, e)| e.duplicates).sum();
    assert_eq!(counted, retries_sent, "the pipeline's own count");

    // --help lists the faults the demo injects.
    let help = std::process::Command::new(EXE)
        .args(["demo", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for fault in [
        "producer retries",
        "malformed messages",
        "SIGKILL",
        "checkpoint directory",
    ] {
        assert!(help.contains(fault), "{fault:?} not in\n{help}");
    }
}

/// The demo's output lines whose label (after the two-space indent) is `label`.
fn demo_lines<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| {
            l.strip_prefix("  ")
                .and_then(|l| l.strip_prefix(label))
                .is_some_and(|rest| rest.starts_with("  "))
        })
        .collect()
}

/// The number just before the first `what` in `line`.
fn number_before(line: &str, what: &str) -> u64 {
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} not in {line}"));
    let digits: String = line[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number before {what:?} in {line}"))
}

/// Runs `tidemark bench` with `args` and `--dir <a temporary directory>/bench`, which must
/// succeed: the directory (kept while the guard lives), the bench's path and its stdout.
fn run_bench(args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench");
    let out = std::process::Command::new(EXE)
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(&bench)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, bench, stdout)
}

#[test]
fn bench_measures_each_interval_and_writes_table_csv_json_svg() {
    let (_dir, bench, stdout) = run_bench(&[
        "--records",
        "40000",
        "--partitions",
        "4",
        "--duplicate-rate",
        "0",
        // Short epochs: the source reads ~100k records/s here, so a kill mid-stream finds
        // sealed epochs not yet committed (what recovery replays).
        "--intervals",
        "20ms,none",
        // Each kill's crash image restarted twice.
        "--restarts",
        "2",
        // The tables stay for the exactly-once audit at the end.
        "--keep-runs",
    ]);
    assert!(
        stdout.contains("of the no-checkpoint throughput"),
        "{stdout}"
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bench.join("bench.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let (cp, none) = (&rows[0], &rows[1]);
    assert!(cp["wal_bytes"].as_u64().unwrap() > 40_000 * 200, "{cp}");
    assert_eq!(none["wal_bytes"], 0, "no WAL without checkpoints: {none}");
    assert!(cp["recovery_replayed"].as_u64().unwrap() > 0, "{cp}");
    assert!(cp["recovery_first_commit_ms"].as_u64().is_some(), "{cp}");
    // Two restarts of one crash image; the row shows the upper (the bench's median of two).
    let all: Vec<u64> = cp["recovery_first_commit_ms_all"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(all.len(), 2, "{cp}");
    assert_eq!(
        cp["recovery_first_commit_ms"],
        all.iter().max().copied().unwrap(),
        "{cp}"
    );
    assert!(bench.join("recovery-20ms/run-3.log").exists());
    assert!(!bench.join("recovery-20ms.crash-image").exists());
    // Without checkpoints too, each restart is listed (null for one that committed nothing).
    assert_eq!(
        none["recovery_first_commit_ms_all"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{none}"
    );
    assert!(!bench.join("recovery-none.crash-image").exists());
    let csv = std::fs::read_to_string(bench.join("bench.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let svg = std::fs::read_to_string(bench.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    // The plain consumer's ceiling, one run per round (3 by default), each a real rate.
    assert!(stdout.contains("of the plain consumer"), "{stdout}");
    let ceiling: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bench.join("ceiling.json")).unwrap()).unwrap();
    let runs = ceiling["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{ceiling}");
    assert!(runs.iter().all(|r| r.as_f64().unwrap() > 0.0), "{ceiling}");
    // Every run, crashed or not, and with or without checkpoints, holds the stream exactly once.
    let ends: std::collections::BTreeMap<(String, i32), i64> =
        (0..4).map(|p| (("bench".to_string(), p), 10_000)).collect();
    for run in ["run-20ms", "run-none", "recovery-20ms", "recovery-none"] {
        let report = audit::check_exactly_once(&bench.join(run).join("table"), &ends).unwrap();
        assert!(report.ok() && report.rows == 40_000, "{run}: {report:?}");
    }
}

#[test]
fn bench_leaves_only_logs_and_configs_of_its_runs_by_default() {
    let (_dir, bench, _) = run_bench(&[
        "--records",
        "4000",
        "--partitions",
        "2",
        "--intervals",
        "50ms",
        "--repeat",
        "1",
        "--no-ceiling",
    ]);
    for run in ["run-50ms", "recovery-50ms"] {
        let mut left: Vec<String> = std::fs::read_dir(bench.join(run))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert!(
            left.contains(&"pipeline.toml".to_string()),
            "{run}: {left:?}"
        );
        assert!(
            left.iter()
                .all(|f| f == "pipeline.toml" || f.ends_with(".log")),
            "{run} keeps more than its logs and config: {left:?}"
        );
    }
    assert!(bench.join("run-50ms/run.log").exists());
    assert!(bench.join("recovery-50ms/run-2.log").exists());
    assert!(bench.join("bench.json").exists());
}

#[test]
fn python_delta_rs_and_duckdb_read_the_table() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = std::process::Command::new(EXE)
        .args(["demo", "--records", "10000", "--dir"])
        .arg(&demo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\nlast lines of the run logs:\n{}",
        String::from_utf8_lossy(&out.stdout),
        tidemark_tests::stderr_of(&out),
        ["run-1.log", "run-2.log", "run-3.log"]
            .iter()
            .map(|l| {
                let text = std::fs::read_to_string(demo.join(l)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {l}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
    let table = demo.join("orders");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_table.py");
    let read = std::process::Command::new("python3")
        .arg(script)
        .arg(&table)
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    let replay = audit::replay_log(&table).unwrap();
    let rows = audit::read_coordinates(&table, &replay.live_files)
        .unwrap()
        .len() as u64;
    assert_eq!(got["version"], replay.version);
    assert_eq!(got["delta_rs_rows"], rows);
    assert_eq!(got["duckdb_rows"], rows);
    assert_eq!(got["duckdb_distinct_offsets"], rows);
    assert_eq!(
        got["newest_epoch"],
        replay.epochs.last().unwrap().1.epoch.get()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_current_epoch_and_stops_cleanly() {
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "sigterm",
        2,
        20_000,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 1000\n",
    )
    .await;
    // Not --until-caught-up: only the signal ends this run.
    let child = fixture.spawn(false, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while audit::replay_log(&fixture.table).map_or(true, |r| r.epochs.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "no epoch committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `tidemark status` reads while the pipeline holds its store and WAL open.
    let status = fixture.status(true);
    assert!(
        status.status.success(),
        "status while running: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(json["checkpoint"]["epoch"].as_u64().unwrap() >= 1, "{json}");
    assert!(
        json["table"]["txn_version"].as_i64().unwrap() >= 1,
        "{json}"
    );
    // SAFETY: kill has no memory-safety preconditions; the pid is our live child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["stopped_because"], "shutdown");
    // What the run says it wrote is exactly what the table holds: the epoch in flight was
    // committed, not dropped, and nothing after it was started.
    let replay = audit::replay_log(&fixture.table).unwrap();
    let last = &replay.epochs.last().unwrap().1;
    assert_eq!(s["epochs_committed"], replay.epochs.len());
    assert_eq!(
        serde_json::to_value(&last.end_positions).unwrap(),
        s["positions"]
    );
    let rows = audit::read_coordinates(&fixture.table, &replay.live_files)
        .unwrap()
        .len() as u64;
    assert_eq!(s["rows_written"], rows);
    // A restart finishes the stream exactly once.
    let out = fixture.run_to_end(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_exactly_once(&fixture, &ends, 20_000).await;
    // For lag tools: the consumer group holds the positions of the last checkpoint.
    assert_eq!(committed_offsets(&brokers, "tidemark-test", &ends), ends);
}

/// The offsets `group` has committed for the partitions of `ends` (-1 where none).
fn committed_offsets(
    brokers: &str,
    group: &str,
    ends: &std::collections::BTreeMap<(String, i32), i64>,
) -> std::collections::BTreeMap<(String, i32), i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    for (topic, partition) in ends.keys() {
        list.add_partition(topic, *partition);
    }
    let got = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => -1,
            };
            ((e.topic().to_string(), e.partition()), offset)
        })
        .collect()
}
