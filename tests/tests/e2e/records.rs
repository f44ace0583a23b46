//! Records that must not stop or bend the pipeline (issue 11, items 7, 8 and 11), against
//! tansu with SIGKILLs: a record larger than `errors.max_record_bytes`, a far-future event time
//! with dedup on, and a redo after a config change.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use tidemark_engine::fault;
use tidemark_tests::{
    broker, create_topic, order_json_except, produce_messages, stderr_of, summary, unique_topic,
    Fixture, Message,
};
use tidemark_tools::audit;

use super::{assert_exactly_once, topic_of_values_and_fixture, EXE};

/// Runs the pipeline with the crash point `spec` armed and asserts it was SIGKILLed there.
fn run_crashing_at(fixture: &Fixture, spec: &str) {
    let out = fixture.run_to_end(&[(fault::ENV, spec)]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the pipeline must be killed at {spec}, it ended with {:?}:\n{}",
        out.status,
        stderr_of(&out)
    );
}

/// The dead letters next to the fixture's table, by coordinates.
fn dead_letters(fixture: &Fixture) -> BTreeMap<(String, i32, i64), Vec<String>> {
    let dir = audit::dead_letter_dir(&fixture.table).expect("dead-letter table exists");
    let mut out: BTreeMap<_, Vec<String>> = BTreeMap::new();
    for (c, reason) in audit::read_dead_letters(&dir).unwrap() {
        out.entry(c).or_default().push(reason);
    }
    out
}

/// A value of about 3 KiB for the `note` column: over `max_record_bytes = 2048`.
fn oversized_json(i: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"id-{i:09}","n":{i},"note":"{}"}}"#,
        "x".repeat(3000)
    )
    .into_bytes()
}

fn is_oversized(i: u64) -> bool {
    i % 97 == 5
}

/// A fresh topic of `n` order records over `partitions`, those where [`is_oversized`] holds
/// [`oversized_json`], and a pipeline fixture reading it with `max_record_bytes = 2048` and
/// epochs of `max_records`; returns the topic, the fixture and each partition's end offset.
async fn oversized_topic_and_fixture(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    n: u64,
    max_records: u64,
) -> (String, Fixture, BTreeMap<(String, i32), i64>) {
    topic_of_values_and_fixture(
        brokers,
        prefix,
        partitions,
        n,
        order_json_except(is_oversized, oversized_json),
        &format!(
            "[checkpoint]\ninterval_ms = 200\nmax_records = {max_records}\n\n[errors]\nmax_record_bytes = 2048\n"
        ),
    )
    .await
}

/// Item 7: records over `errors.max_record_bytes` go to the dead-letter table as `too_large`,
/// exactly once, through a SIGKILL mid-epoch (unsealed replay) and one after a seal (redo);
/// every other record is in the table exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_records_are_dead_lettered_exactly_once_across_sigkills() {
    let Some(brokers) = broker() else { return };
    let n = 2_000u64;
    let (topic, fixture, ends) =
        oversized_topic_and_fixture(&brokers, "oversized", 2, n, 150).await;
    run_crashing_at(&fixture, "after_wal_append@3");
    run_crashing_at(&fixture, "after_seal@2");
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    let oversized: BTreeSet<(String, i32, i64)> = (0..n)
        .filter(|i| is_oversized(*i))
        .map(|i| (topic.clone(), (i % 2) as i32, (i / 2) as i64))
        .collect();
    let letters = dead_letters(&fixture);
    let got: BTreeSet<_> = letters.keys().cloned().collect();
    assert_eq!(
        got, oversized,
        "dead letters are exactly the oversized records"
    );
    for (c, reasons) in &letters {
        assert_eq!(reasons, &["too_large".to_string()], "{c:?}");
    }
    // The letters keep the size, not the value.
    let dlq = audit::dead_letter_dir(&fixture.table).unwrap();
    let dlq_files = audit::replay_log(&dlq).unwrap().live_files;
    let messages = audit::read_string_column(&dlq, &dlq_files, "message").unwrap();
    assert_eq!(messages.len(), oversized.len());
    for m in messages {
        let m = m.expect("a message");
        assert!(
            m.contains("original_size=") && m.contains("value not kept"),
            "{m}"
        );
    }
    assert_exactly_once(&fixture, &ends, n - oversized.len() as u64).await;
    let s = summary(&out);
    assert_eq!(s["totals"]["read"], n, "{s}");
    assert_eq!(s["totals"]["dead_lettered"], oversized.len() as u64, "{s}");
    // Without dedup there is no verdict time to report.
    assert!(
        s["dedup_verdict_share"].is_null()
            && s["dedup_table_growth_ms"].is_null()
            && s["dedup_sweep_ms"].is_null(),
        "{s}"
    );
    // The CPU the run used is reported all the same: the process's, and the reading thread's
    // within it.
    let cpu = s["cpu_secs"].as_f64().unwrap();
    let reading = s["reading_thread_cpu_secs"].as_f64().unwrap();
    assert!(reading > 0.0 && reading <= cpu, "{s}");
    // And the time that thread waited for a core (Linux keeps it for every thread).
    let waiting = s["reading_thread_waiting_secs"].as_f64().unwrap();
    assert!(waiting <= s["elapsed_secs"].as_f64().unwrap(), "{s}");
    assert!(
        s["dedup_state_writer_cpu_secs"].is_null() && s["dedup_verdict_cpu_secs"].is_null(),
        "{s}"
    );
}

const TS_COLUMNS: &str = r#"columns = [
  { name = "id", type = "string", nullable = false },
  { name = "ts", type = "long", nullable = false },
]"#;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Item 8: with dedup on, far-future event times (ten days ahead, default skew one hour) are
/// dead-lettered as `event_time_in_future` exactly once across a SIGKILL after a seal, and do
/// not freeze the watermark: every record after them is written, none is late.
#[tokio::test(flavor = "multi_thread")]
async fn far_future_event_times_are_dead_lettered_and_do_not_freeze_the_watermark() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("future");
    create_topic(&brokers, &topic, 1).await;
    let base = now_ms() - 600_000;
    let far = now_ms() + 10 * 24 * 3_600_000;
    let mut messages: Vec<Message> = Vec::new();
    let mut future = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for i in 0..900i64 {
        let (id, ts) = if i % 150 == 100 {
            future.insert(i);
            (format!("future-{i}"), far + i)
        } else {
            ids.insert(format!("r-{i}"));
            (format!("r-{i}"), base + i)
        };
        let value = format!(r#"{{"id":"{id}","ts":{ts}}}"#).into_bytes();
        messages.push((0, Some(id.into_bytes()), Some(value)));
    }
    let mut next = BTreeMap::new();
    produce_messages(&brokers, &topic, &messages, &mut next);
    let fixture = Fixture::with_columns(
        Path::new(EXE),
        &brokers,
        &topic,
        TS_COLUMNS,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 100\n\n\
         [dedup]\nkey = [\"id\"]\nevent_time = \"ts\"\nallowed_lateness_ms = 60000\n",
    );
    run_crashing_at(&fixture, "after_seal@2");
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    let letters = dead_letters(&fixture);
    let want: BTreeMap<(String, i32, i64), Vec<String>> = future
        .iter()
        .map(|o| {
            (
                (topic.clone(), 0, *o),
                vec!["event_time_in_future".to_string()],
            )
        })
        .collect();
    assert_eq!(letters, want);
    let replay = audit::replay_log(&fixture.table).unwrap();
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    for id in audit::read_string_column(&fixture.table, &replay.live_files, "id").unwrap() {
        *written.entry(id.expect("no null id")).or_default() += 1;
    }
    assert!(
        written.values().all(|n| *n == 1),
        "an id written twice: {written:?}"
    );
    assert_eq!(
        written.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "every on-time record is written once"
    );
    let s = summary(&out);
    let t = &s["totals"];
    assert_eq!(t["read"], 900, "{s}");
    assert_eq!(t["late"], 0, "{s}");
    assert_eq!(t["dead_lettered"], future.len() as u64, "{s}");
    let watermark = s["watermark"].as_i64();
    assert!(
        watermark.is_none_or(|w| w <= (base + 900) * 1000),
        "the watermark followed a far-future event time: {s}"
    );
}

/// Item 11: a sealed epoch is not redone under a changed setting that decides its content:
/// the restart is refused naming the setting and both values; with the old value restored it
/// completes exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_redo_after_a_config_change_is_refused_naming_the_setting() {
    let Some(brokers) = broker() else { return };
    let n = 600u64;
    let (topic, fixture, ends) = oversized_topic_and_fixture(&brokers, "redocfg", 1, n, 200).await;
    run_crashing_at(&fixture, "after_seal");
    let original = std::fs::read_to_string(&fixture.config).unwrap();
    let changed = original.replace("max_record_bytes = 2048", "max_record_bytes = 4096");
    assert_ne!(original, changed);
    std::fs::write(&fixture.config, &changed).unwrap();

    let refused = fixture.run_to_end(&[]);
    let log = stderr_of(&refused);
    assert!(
        !refused.status.success(),
        "a changed redo must be refused: {log}"
    );
    assert!(
        log.contains("errors.max_record_bytes"),
        "setting not named: {log}"
    );
    assert!(
        log.contains("\"2048\"") && log.contains("\"4096\""),
        "values not named: {log}"
    );
    assert!(
        log.contains("restore the old value"),
        "no way forward given: {log}"
    );
    let replay = audit::replay_log(&fixture.table).unwrap();
    assert!(replay.epochs.is_empty(), "nothing committed while refused");

    std::fs::write(&fixture.config, &original).unwrap();
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["recovery"]["case"], "redo_epoch");
    let oversized: BTreeSet<(String, i32, i64)> = (0..n)
        .filter(|i| is_oversized(*i))
        .map(|i| (topic.clone(), 0, i as i64))
        .collect();
    let letters = dead_letters(&fixture);
    assert_eq!(letters.keys().cloned().collect::<BTreeSet<_>>(), oversized);
    assert_exactly_once(&fixture, &ends, n - oversized.len() as u64).await;
}

/// A device that fails while a restart reads the WAL, with dedup off (with dedup on:
/// `dedup::a_wal_read_error_at_restart_fails_the_start_or_falls_back_to_the_scan`): killed
/// after a seal, so the restart must read the sealed epoch back. Every read failing, and the
/// first read failing once (a transient error), each fail the start with nothing changed;
/// the next start redoes the epoch and writes every record exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_wal_read_error_at_restart_without_dedup_fails_the_start_and_loses_nothing() {
    let Some(brokers) = broker() else { return };
    let n = 2_000u64;
    let (_, fixture, ends) = topic_of_values_and_fixture(
        &brokers,
        "wal-read-eio-plain",
        2,
        n,
        tidemark_tests::order_json,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 300\n",
    )
    .await;
    run_crashing_at(&fixture, "after_seal@3");
    let status: serde_json::Value = serde_json::from_slice(&fixture.status(true).stdout).unwrap();
    assert_eq!(status["next_case"], "redo_epoch", "{status}");
    for fault in ["read:eio:/wal/@1:sticky", "read:eio:/wal/@1"] {
        super::a_start_that_cannot_read_its_wal_fails_and_changes_nothing(&fixture, &status, fault);
    }
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["recovery"]["case"], "redo_epoch");
    assert_exactly_once(&fixture, &ends, n).await;
}
