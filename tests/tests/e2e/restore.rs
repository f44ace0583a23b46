//! History, time travel reads and in-place restores, end to end through the `tidemark`
//! binary; tables read back independently by delta-rs (Python) and DuckDB
//! (`tests/python/timetravel_table.py`, `tests/python/backup_table.py`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use tidemark_tests::{
    broker, drain_stderr, have_python, order_json, produce_range, stderr_of, summary,
};
use tidemark_tools::audit;

use super::{assert_exactly_once, ok, ok_json, s, tidemark, topic_of_values_and_fixture};

fn python(script: &str, args: &[&str]) -> serde_json::Value {
    tidemark_tests::python_json(script, args)
}

/// Rows of `table` at `version` ("latest" or a number) as delta-rs time travel reads them.
fn snapshot(table: &Path, version: &str) -> serde_json::Value {
    python("timetravel_table.py", &["snapshot", s(table), version])
}

fn refused(args: &[&str]) -> String {
    let out = tidemark(args);
    assert!(
        !out.status.success(),
        "tidemark {args:?} should have been refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr_of(&out)
}

fn newest_version(table: &Path) -> u64 {
    audit::replay_log(table).unwrap().version as u64
}

/// `tidemark cat --format json` rows, one JSON object a line.
fn cat_rows(table: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["cat", s(table), "--all", "--format", "json"];
    args.extend(extra);
    ok(&args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Delta table written by delta-rs (appends, a multi-file append, a delete, a checkpoint,
/// an overwrite, partitioned): `tidemark restore` to each of several versions gives exactly
/// the rows delta-rs time travel shows for that version (delta-rs and DuckDB read the
/// restored table); a restore is undone by restoring the version before it; `--timestamp`;
/// a file the version needs that was deleted refuses the restore, naming the file and
/// `restore-backup`, and changes nothing; `history` shows each restore.
#[test]
fn restore_round_trip_equals_time_travel() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let ops = [
        "append",
        "append_many",
        "append",
        "delete",
        "checkpoint",
        "overwrite",
        "append",
    ];
    for (i, op) in ops.iter().enumerate() {
        python("backup_table.py", &["step", s(&table), op, &i.to_string()]);
    }
    let mut newest = newest_version(&table);
    assert_eq!(newest, 6);

    // Restore to versions before and after the delete, the checkpoint and the overwrite.
    for n in [1u64, 3, 4, 6] {
        let want = snapshot(&table, &n.to_string());
        let report = ok_json(&[
            "restore",
            s(&table),
            "--version",
            &n.to_string(),
            "--no-pipeline",
            "--json",
        ]);
        assert_eq!(report["restored_version"], n, "{report}");
        assert_eq!(report["new_version"], newest + 1, "{report}");
        let got = snapshot(&table, "latest");
        assert_eq!(got["version"], newest + 1);
        assert_eq!(
            got["rows"], want["rows"],
            "restore to {n} != time travel to {n}"
        );
        assert_eq!(got["duckdb_rows"], want["duckdb_rows"]);
        newest += 1;
    }

    // Undo the last restore: back to the version before it.
    let before_last = snapshot(&table, &(newest - 1).to_string());
    ok_json(&[
        "restore",
        s(&table),
        "--version",
        &(newest - 1).to_string(),
        "--no-pipeline",
        "--json",
    ]);
    newest += 1;
    assert_eq!(snapshot(&table, "latest")["rows"], before_last["rows"]);

    // --timestamp: the newest version committed at or before it.
    let history = ok_json(&["history", s(&table), "--json"]);
    let versions = history.as_array().unwrap();
    assert_eq!(versions.len() as u64, newest + 1, "{history}");
    assert_eq!(versions[0]["operation"], "RESTORE");
    assert_eq!(versions[0]["restored_to"], newest - 2);
    let v2 = versions.iter().find(|v| v["version"] == 2).unwrap();
    let t2 = v2["timestamp_ms"].as_i64().unwrap();
    let want = snapshot(&table, "2");
    ok_json(&[
        "restore",
        s(&table),
        "--timestamp",
        &t2.to_string(),
        "--no-pipeline",
        "--json",
    ]);
    newest += 1;
    assert_eq!(snapshot(&table, "latest")["rows"], want["rows"]);
    let text = ok(&["history", s(&table), "--limit", "1"]);
    assert!(text.contains("RESTORE to v2"), "{text}");

    // A vacuumed file: version 6 (before the overwrite's successor) needs files the newest
    // version does not; one of them deleted refuses the restore by name.
    let (newest_files, v6_files) = (live_files_at(&table, newest), live_files_at(&table, 6));
    let needed: Vec<&String> = v6_files.difference(&newest_files).collect();
    assert!(!needed.is_empty());
    std::fs::remove_file(table.join(needed[0])).unwrap();
    let err = refused(&["restore", s(&table), "--version", "6", "--no-pipeline"]);
    assert!(
        err.contains(needed[0].as_str()) && err.contains("restore-backup"),
        "{err}"
    );
    assert_eq!(
        newest_version(&table),
        newest,
        "a refused restore changed nothing"
    );
    // A version in the future is refused, naming the newest.
    let err = refused(&["restore", s(&table), "--version", "999", "--no-pipeline"]);
    assert!(
        err.contains("999") && err.contains(&newest.to_string()),
        "{err}"
    );
}

/// Live data files of `table` at `version` (delta-rs).
fn live_files_at(table: &Path, version: u64) -> BTreeSet<String> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys, json; from deltalake import DeltaTable; t = DeltaTable(sys.argv[1], version=int(sys.argv[2])); print(json.dumps(t.get_add_actions(flatten=True).column('path').to_pylist()))")
        .arg(table)
        .arg(version.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<String>>(&out.stdout)
        .unwrap()
        .into_iter()
        .collect()
}

fn wait_rows(table: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = audit::replay_log(table)
            .ok()
            .and_then(|r| audit::read_coordinates(table, &r.live_files).ok())
            .map_or(0, |c| c.len() as u64);
        if rows >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline did not reach {n} rows"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pipeline's table: `cat` and `export` at a version equal delta-rs time travel; a
/// restore without the pipeline's config is refused, naming the pipeline; with it, refused
/// while the pipeline runs; `--while-running` restores under it, and the pipeline's next
/// commit stops it (the table went back); the restore equals time travel; a plain restart
/// refuses (table behind the checkpoint store); the printed `--rewind-to` resumes it, and
/// every Kafka record is in the table exactly once (independent audit and deltalake),
/// including those restored away; the versions restored away are still readable.
#[tokio::test(flavor = "multi_thread")]
async fn restore_then_rewind_leaves_every_record_exactly_once() {
    let Some(brokers) = broker() else { return };
    if !have_python() {
        return;
    }
    let (topic, fixture, mut ends) = topic_of_values_and_fixture(
        &brokers,
        "restore-rewind",
        2,
        2_000,
        order_json,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 200\nretain = 1000\n",
    )
    .await;
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let table = fixture.table.clone();
    let config = s(&fixture.config).to_string();
    let good = newest_version(&table);
    let good_rows = snapshot(&table, &good.to_string());
    assert_eq!(good_rows["rows"].as_array().unwrap().len(), 2_000);

    // Time travel reads of that version: cat and export equal delta-rs.
    let exported = fixture.dir.path().join("v.parquet");
    ok(&[
        "export",
        s(&table),
        "--version",
        &good.to_string(),
        "--to",
        s(&exported),
    ]);
    let file = python("timetravel_table.py", &["file", s(&exported)]);
    assert_eq!(file["rows"], good_rows["rows"]);
    assert_eq!(file["columns"], good_rows["columns"]);
    let csv = fixture.dir.path().join("v.csv");
    ok(&[
        "export",
        s(&table),
        "--version",
        &good.to_string(),
        "--to",
        s(&csv),
    ]);
    let csv_rows = python("timetravel_table.py", &["file", s(&csv)]);
    assert_eq!(csv_rows["rows"].as_array().unwrap().len(), 2_000);

    // More records, the pipeline running.
    let mut child = fixture.spawn(false, &[]);
    let log = drain_stderr(&mut child);
    for (k, n) in produce_range(&brokers, &topic, 2, 2_000..3_000, order_json) {
        *ends.entry(k).or_insert(0) += n;
    }
    wait_rows(&table, 3_000);
    let before = newest_version(&table);
    assert!(before > good);
    let cat = cat_rows(&table, &["--version", &good.to_string()]);
    assert_eq!(cat.len(), 2_000);
    let mid = snapshot(&table, &good.to_string());
    assert_eq!(mid["rows"], good_rows["rows"]);

    let v = good.to_string();
    let err = refused(&["restore", s(&table), "--version", &v]);
    assert!(err.contains("test") && err.contains("--config"), "{err}");
    let err = refused(&["restore", s(&table), "--version", &v, "--config", &config]);
    assert!(err.contains("running"), "{err}");
    let report = ok_json(&[
        "restore",
        s(&table),
        "--version",
        &v,
        "--config",
        &config,
        "--while-running",
        "--json",
    ]);
    assert_eq!(report["restored_version"], good, "{report}");
    let pipeline = &report["pipelines"][0];
    assert_eq!(pipeline["pipeline"], "test", "{report}");
    let restored_epoch = pipeline["epoch_after"].as_u64().unwrap();
    let rewind_to = report["resume"]["rewind_to"]
        .as_u64()
        .expect("a rewind target");
    assert!(
        report["resume"]["command"]
            .as_str()
            .unwrap()
            .contains(&format!("--rewind-to {rewind_to}")),
        "{report}"
    );
    // Restore == time travel, read by delta-rs and DuckDB.
    let restored = snapshot(&table, "latest");
    assert_eq!(restored["rows"], good_rows["rows"]);
    assert_eq!(restored["duckdb_rows"], 2_000);

    // The running pipeline's next commit finds the table went back and stops.
    for (k, n) in produce_range(&brokers, &topic, 2, 3_000..3_500, order_json) {
        *ends.entry(k).or_insert(0) += n;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline kept running after the table was restored under it"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = log.join().unwrap();
    assert!(!status.success());
    assert!(stderr.contains("went back"), "{stderr}");

    // A plain start refuses; the printed rewind resumes.
    let out = fixture.run_to_end(&[]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("--rewind-to"),
        "{}",
        stderr_of(&out)
    );
    let out = fixture
        .spawn_with(true, &["--rewind-to", &rewind_to.to_string()], &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["recovery"]["case"], "rewind");
    assert_exactly_once(&fixture, &ends, 3_500).await;
    let replay = audit::replay_log(&table).unwrap();
    assert!(replay
        .epochs
        .iter()
        .any(|(_, e)| e.epoch.get() == restored_epoch + 1));

    // The versions restored away still read (their files were not swept).
    let away = snapshot(&table, &before.to_string());
    assert_eq!(away["rows"].as_array().unwrap().len(), 3_000);
    assert_eq!(
        cat_rows(&table, &["--version", &before.to_string()]).len(),
        3_000
    );
    let history = ok_json(&["history", s(&table), "--json"]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["operation"] == "RESTORE"
                && h["restored_to"] == good
                && h["epoch"] == restored_epoch),
        "{history}"
    );
}

/// The seed's Scenario 3, as the README's "Time travel and restore" flow: a producer emits a
/// burst of schema-valid bad records (and retries of earlier records) among good ones while
/// the pipeline (dedup on `id`) runs; detect (time travel: the newest version without a bad
/// row), pause (stop the pipeline), restore that version, quarantine the bad offsets, resume
/// with `--rewind-to`. The final table holds every good record exactly once and no bad one;
/// the bad records are in the dead-letter table as `quarantined`; every Kafka offset is a row,
/// a dead letter or a dropped producer retry.
#[tokio::test(flavor = "multi_thread")]
async fn scenario_3_bad_records_are_restored_away_and_the_rest_written_once() {
    let Some(brokers) = broker() else { return };
    let bad = |i: u64| {
        format!(r#"{{"id":"bad-{i:09}","n":-1,"note":"corrupt record from a broken producer"}}"#)
            .into_bytes()
    };
    let (topic, fixture, mut ends) = topic_of_values_and_fixture(
        &brokers,
        "scenario-3",
        2,
        1_000,
        order_json,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 100\nretain = 1000\n\n[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 3600000\n",
    )
    .await;
    let table = fixture.table.clone();
    let config = s(&fixture.config).to_string();
    let mut child = fixture.spawn(false, &[]);
    let log = drain_stderr(&mut child);
    wait_rows(&table, 1_000);
    // Good records, the bad burst, retries of earlier good records, more good records.
    let mut produce = |range: std::ops::Range<u64>, value: &dyn Fn(u64) -> Vec<u8>| {
        for (k, n) in produce_range(&brokers, &topic, 2, range, value) {
            *ends.entry(k).or_insert(0) += n;
        }
    };
    produce(1_000..1_100, &order_json);
    produce(1_100..1_300, &bad);
    produce(950..1_000, &order_json); // producer retries: duplicates by id
    produce(1_300..1_700, &order_json);
    wait_rows(&table, 1_700); // 1,500 good + 200 bad (the 50 retries are dropped)
    let newest = newest_version(&table);

    // Detect: time travel to find the newest version with no bad row; the bad rows'
    // coordinates from the newest version.
    let is_bad = |r: &serde_json::Value| r["n"].as_i64() == Some(-1);
    let bad_rows: Vec<serde_json::Value> = cat_rows(&table, &[])
        .into_iter()
        .filter(|r| is_bad(r))
        .collect();
    assert_eq!(bad_rows.len(), 200);
    let last_good = (0..newest)
        .rev()
        .find(|v| {
            !cat_rows(&table, &["--version", &v.to_string()])
                .iter()
                .any(is_bad)
        })
        .unwrap();
    let mut quarantine: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for r in &bad_rows {
        let (p, o) = (
            r["_kafka_partition"].as_i64().unwrap(),
            r["_kafka_offset"].as_i64().unwrap(),
        );
        let e = quarantine.entry(p).or_insert((o, o + 1));
        *e = (e.0.min(o), e.1.max(o + 1));
    }
    let ranges: Vec<String> = quarantine
        .iter()
        .map(|(p, (a, b))| format!("\"{topic}/{p}@{a}..{b}\""))
        .collect();
    let spanned: i64 = quarantine.values().map(|(a, b)| b - a).sum();
    assert_eq!(spanned, 200, "the burst is contiguous in each partition");

    // Pause: stop the pipeline (SIGTERM finishes its epoch).
    // SAFETY: kill has no memory-safety preconditions; the pid is our live child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let _ = log.join();

    // Restore the last good version, coordinated with the pipeline.
    let report = ok_json(&[
        "restore",
        s(&table),
        "--version",
        &last_good.to_string(),
        "--config",
        &config,
        "--json",
    ]);
    let rewind_to = report["resume"]["rewind_to"]
        .as_u64()
        .expect("a rewind target");
    assert!(cat_rows(&table, &[]).iter().all(|r| !is_bad(r)));

    // Quarantine the burst, resume with the rewind.
    let mut text = std::fs::read_to_string(&fixture.config).unwrap();
    text += &format!("\n[errors]\nquarantine = [{}]\n", ranges.join(", "));
    std::fs::write(&fixture.config, text).unwrap();
    let out = fixture
        .spawn_with(true, &["--rewind-to", &rewind_to.to_string()], &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["recovery"]["case"], "rewind");

    // Good records exactly once, no bad one.
    let rows = cat_rows(&table, &[]);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let distinct: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "an id twice in the table");
    let expected: BTreeSet<String> = (0..1_100)
        .chain(1_300..1_700)
        .map(|i| format!("id-{i:09}"))
        .collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let extra: Vec<&&str> = distinct.difference(&expected).take(5).collect();
    let lacking: Vec<&&str> = expected.difference(&distinct).take(5).collect();
    assert!(
        extra.is_empty() && lacking.is_empty(),
        "ids not expected in the table (first 5): {extra:?}; good ids missing (first 5): {lacking:?}"
    );
    // Read independently too (delta-rs + DuckDB).
    let latest = snapshot(&table, "latest");
    assert_eq!(latest["rows"].as_array().unwrap().len(), 1_500);
    assert_eq!(latest["duckdb_rows"], 1_500);
    // Every Kafka offset once: a row, a quarantined dead letter, or a dropped retry.
    let report = audit::check_exactly_once(&table, &ends).unwrap();
    assert!(
        report.duplicated.is_empty() && report.unexpected.is_empty(),
        "{report:?}"
    );
    assert_eq!((report.rows, report.dead_letters), (1_500, 200));
    assert_eq!(
        report.missing.len(),
        50,
        "only the 50 producer retries are not rows"
    );
    let letters = audit::read_dead_letters(&audit::dead_letter_dir(&table).unwrap()).unwrap();
    assert!(letters.iter().all(|(_, reason)| reason == "quarantined"));
}
