//! Watermark dedup, late data and dead letters against tansu, with SIGKILLs in the middle.
//!
//! The stream is built so every record's fate is fixed whatever the epoch boundaries: each
//! phase's event times span 50 s < the 60 s lateness, so no record is late inside its own
//! phase; and between phases a heartbeat moves the watermark to exactly (phase end - 60 s).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_tests::{
    broker, create_topic, produce_messages, stderr_of, summary, unique_topic, Fixture, Message,
};
use tidemark_tools::audit;

use super::EXE;

const COLUMNS: &str = r#"columns = [
  { name = "id", type = "string" },
  { name = "n", type = "long" },
  { name = "ts", type = "timestamp" },
  { name = "note", type = "string" },
]"#;

const LATENESS_MS: i64 = 60_000;
const BASE_MS: i64 = 1_760_000_000_000;

fn phase_base(k: i64) -> i64 {
    BASE_MS + k * 100_000
}

fn json(id: Option<&str>, n: i64, ts_ms: Option<i64>, note: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    if let Some(id) = id {
        fields.push(format!("\"id\":\"{id}\""));
    }
    fields.push(format!("\"n\":{n}"));
    if let Some(ts) = ts_ms {
        fields.push(format!("\"ts\":{}", ts * 1000));
    }
    fields.push(format!("\"note\":\"{note}\""));
    format!("{{{}}}", fields.join(",")).into_bytes()
}

/// What the test expects, built while producing.
#[derive(Default)]
struct Expected {
    rows: BTreeSet<String>,
    dead: BTreeSet<((String, i32, i64), String)>,
    rows_again: u64,
    duplicates: u64,
    late: u64,
    read: u64,
    next: BTreeMap<i32, i64>,
}

impl Expected {
    fn send(&mut self, brokers: &str, topic: &str, batch: Vec<(Message, Fate)>) {
        let messages: Vec<Message> = batch.iter().map(|(m, _)| m.clone()).collect();
        let offsets = produce_messages(brokers, topic, &messages, &mut self.next);
        for (((partition, _, _), fate), offset) in batch.into_iter().zip(offsets) {
            self.read += 1;
            match fate {
                Fate::Row(id) => assert!(self.rows.insert(id), "test bug: id twice"),
                Fate::RowAgain => self.rows_again += 1,
                Fate::Duplicate => self.duplicates += 1,
                Fate::Dead(reason) => {
                    self.dead
                        .insert(((topic.to_string(), partition, offset), reason.to_string()));
                }
                Fate::Late => {
                    self.late += 1;
                    self.dead
                        .insert(((topic.to_string(), partition, offset), "late".to_string()));
                }
            }
        }
    }

    fn ends(&self) -> BTreeMap<i32, i64> {
        self.next.clone()
    }
}

enum Fate {
    Row(String),
    /// A key written before, evicted since: written again.
    RowAgain,
    Duplicate,
    Late,
    Dead(&'static str),
}

fn msg(partition: i32, value: Option<Vec<u8>>) -> Message {
    (partition, Some(b"k".to_vec()), value)
}

/// True once the table's newest commit has read everything up to `ends`.
fn caught_up(fixture: &Fixture, topic: &str, ends: &BTreeMap<i32, i64>) -> bool {
    let Ok(replay) = audit::replay_log(&fixture.table) else {
        return false;
    };
    let Some((_, last)) = replay.epochs.last() else {
        return ends.values().all(|e| *e == 0);
    };
    ends.iter()
        .all(|(p, end)| last.end_positions.get(topic, *p).unwrap_or(0) >= *end)
}

async fn wait_caught_up(
    fixture: &Fixture,
    child: &mut std::process::Child,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !caught_up(fixture, topic, ends) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pipeline exited ({status}) before catching up");
        }
        assert!(
            Instant::now() < deadline,
            "pipeline did not catch up to {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the pipeline with random SIGKILLs, then a long run that takes two heartbeats 1.5 s
/// apart on `active` partitions (with event time `ts_ms`), so the watermark ends at
/// `ts_ms - lateness` and idle partitions stop holding it back. Returns the last summary.
/// The heartbeat that ends a phase: on `active` partitions, at event time `ts_ms`.
struct Heartbeat<'a> {
    active: &'a [i32],
    ts_ms: i64,
    phase: i64,
}

async fn finish_phase(
    fixture: &Fixture,
    brokers: &str,
    topic: &str,
    exp: &mut Expected,
    beat: Heartbeat<'_>,
    rng: &mut StdRng,
) -> serde_json::Value {
    let Heartbeat {
        active,
        ts_ms,
        phase,
    } = beat;
    for _ in 0..2 {
        // Not until-caught-up: the run cannot end by itself, so the kill always lands.
        let mut child = fixture.spawn(false, &[]);
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500))).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline exited before its kill"
        );
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{}",
            stderr_of(&out)
        );
    }
    let mut child = fixture.spawn(false, &[]);
    // Drain stderr as it comes: a full pipe would block the pipeline's logging.
    let mut stderr = child.stderr.take().expect("piped stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    for beat in 0..2 {
        wait_caught_up(fixture, &mut child, topic, &exp.ends()).await;
        let batch = active
            .iter()
            .map(|p| {
                let id = format!("hb-{phase}-{p}-{beat}");
                (
                    msg(*p, Some(json(Some(&id), 0, Some(ts_ms), "heartbeat"))),
                    Fate::Row(id),
                )
            })
            .collect();
        exp.send(brokers, topic, batch);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    wait_caught_up(fixture, &mut child, topic, &exp.ends()).await;
    // SAFETY: kill has no memory-safety preconditions; the pid is our live child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = tidemark_tests::strip_ansi(&log.join().unwrap());
    assert!(out.status.success(), "{log}");
    summary(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_late_and_dead_letters_are_exact_across_sigkills() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("dedup");
    create_topic(&brokers, &topic, 3).await;
    let fixture = Fixture::with_columns(
        Path::new(EXE),
        &brokers,
        &topic,
        COLUMNS,
        &format!(
            "[checkpoint]\ninterval_ms = 300\nmax_records = 200\n\n[errors]\nmax_record_bytes = 2048\n\n\
             [dedup]\nkey = [\"id\"]\nevent_time = \"ts\"\nallowed_lateness_ms = {LATENESS_MS}\nidle_timeout_ms = 1000\nlate = \"dead_letter\"\n"
        ),
    );
    let mut rng = StdRng::seed_from_u64(7);
    let mut exp = Expected::default();
    let mut originals: Vec<Vec<(String, i64)>> = Vec::new();
    let mut last = serde_json::Value::Null;
    for phase in 0..3i64 {
        let active: Vec<i32> = if phase < 2 { vec![0, 1, 2] } else { vec![0, 1] };
        let base = phase_base(phase);
        let mut batch = Vec::new();
        let mut mine: Vec<(String, i64)> = Vec::new();
        for i in 0..600 {
            let id = format!("p{phase}-{i}");
            let ts = base + rng.random_range(0..50_000);
            let p = active[i % active.len()];
            batch.push((
                msg(p, Some(json(Some(&id), i as i64, Some(ts), "new"))),
                Fate::Row(id.clone()),
            ));
            mine.push((id.clone(), ts));
            // Within the window: the same record again, a little later in the stream.
            if i % 10 == 9 {
                let (id, ts) = mine[rng.random_range(0..mine.len())].clone();
                let p = active[rng.random_range(0..active.len())];
                batch.push((
                    msg(p, Some(json(Some(&id), 0, Some(ts), "retry"))),
                    Fate::Duplicate,
                ));
            }
        }
        if phase < 2 {
            // Every class of bad input, three of each.
            for j in 0..3 {
                let p = active[j % active.len()];
                let ts = Some(base + 1_000);
                let big = "x".repeat(3000);
                batch.push((
                    msg(p, Some(b"{\"id\":\"broken\",".to_vec())),
                    Fate::Dead("malformed_json"),
                ));
                batch.push((
                    msg(p, Some(b"{\"id\":\"bad\",\"n\":\"seven\"}".to_vec())),
                    Fate::Dead("schema_mismatch"),
                ));
                batch.push((
                    msg(p, Some(json(Some("huge"), 0, ts, &big))),
                    Fate::Dead("too_large"),
                ));
                batch.push((
                    msg(p, Some(json(None, 0, ts, "no id"))),
                    Fate::Dead("null_key"),
                ));
                batch.push((
                    msg(
                        p,
                        Some(json(Some(&format!("nots-{phase}-{j}")), 0, None, "no ts")),
                    ),
                    Fate::Dead("null_event_time"),
                ));
                batch.push((msg(p, None), Fate::Dead("missing_payload")));
            }
        } else {
            let old = &originals[0];
            for j in 0..40 {
                let p = active[j % active.len()];
                // Far below the watermark: late.
                let id = format!("late-{j}");
                let ts = phase_base(0) + rng.random_range(0..50_000);
                batch.push((
                    msg(p, Some(json(Some(&id), 0, Some(ts), "late"))),
                    Fate::Late,
                ));
                // A phase-0 record again with its own (now late) event time: late, not a duplicate.
                let (id, ts) = old[j].clone();
                batch.push((
                    msg(p, Some(json(Some(&id), 0, Some(ts), "old retry"))),
                    Fate::Late,
                ));
                // A phase-0 key again with a new event time: beyond the window, so a new row
                // (its first copy was evicted when the watermark passed it).
                let (id, _) = old[100 + j].clone();
                let ts = base + rng.random_range(0..50_000);
                batch.push((
                    msg(p, Some(json(Some(&id), 1, Some(ts), "beyond window"))),
                    Fate::RowAgain,
                ));
            }
        }
        exp.send(&brokers, &topic, batch);
        originals.push(mine);
        last = finish_phase(
            &fixture,
            &brokers,
            &topic,
            &mut exp,
            Heartbeat {
                active: &active,
                ts_ms: base + 50_000,
                phase,
            },
            &mut rng,
        )
        .await;
    }

    // The table: every expected id, each once (ids re-sent beyond the window appear twice).
    let replay = audit::replay_log(&fixture.table).unwrap();
    let ids = audit::read_string_column(&fixture.table, &replay.live_files, "id").unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for id in ids {
        *counts
            .entry(id.expect("no null id in the table"))
            .or_default() += 1;
    }
    let beyond: BTreeSet<String> = originals[0][100..140]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    for (id, n) in &counts {
        let want = if beyond.contains(id) { 2 } else { 1 };
        assert_eq!(*n, want, "id {id} written {n} times");
    }
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, exp.rows, "table ids differ from the expected ones");

    // The dead-letter table: exactly the bad and late records, by coordinates and reason.
    let dlq = audit::dead_letter_dir(&fixture.table).expect("dead-letter table exists");
    let dead: BTreeSet<((String, i32, i64), String)> = audit::read_dead_letters(&dlq)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(dead.len(), exp.dead.len());
    assert_eq!(dead, exp.dead);

    // The counts add up, and match what was produced.
    let t = &last["totals"];
    let n = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(n("read"), exp.read, "{t}");
    assert_eq!(
        n("read"),
        n("written") + n("duplicates") + n("late") + n("dead_lettered"),
        "{t}"
    );
    assert_eq!(n("duplicates"), exp.duplicates, "{t}");
    assert_eq!(n("written"), exp.rows.len() as u64 + exp.rows_again, "{t}");
    assert_eq!(n("late"), exp.late, "{t}");
    assert_eq!(n("dead_lettered"), exp.dead.len() as u64 - exp.late, "{t}");
    // Partition 2 went idle: it no longer holds the watermark back.
    assert_eq!(
        last["watermark"].as_i64(),
        Some((phase_base(2) + 50_000 - LATENESS_MS) * 1000),
        "{last}"
    );
}

/// After a long run with event time sliding forward, state holds only the keys inside the
/// lateness window (plus at most one epoch's worth not yet evicted), not the whole history.
/// Run twice: with the table growing from empty, and sized by `dedup.expected_keys` for every
/// key of the stream (before both partitions are read the watermark evicts nothing), where it
/// never grows and the rows written are the same.
#[tokio::test(flavor = "multi_thread")]
async fn dedup_state_stays_within_the_lateness_window() {
    let Some(brokers) = broker() else { return };
    for expected_keys in [None, Some(12_000u64)] {
        bounded_state_run(&brokers, expected_keys).await;
    }
}

/// One run of [`dedup_state_stays_within_the_lateness_window`].
async fn bounded_state_run(brokers: &str, expected_keys: Option<u64>) {
    let brokers = brokers.to_string();
    let topic = unique_topic("bounded");
    create_topic(&brokers, &topic, 2).await;
    let sized = expected_keys.map_or(String::new(), |n| format!("expected_keys = {n}\n"));
    let fixture = Fixture::with_columns(
        Path::new(EXE),
        &brokers,
        &topic,
        COLUMNS,
        &format!(
            "[checkpoint]\ninterval_ms = 200\nmax_records = 1000\n\n\
             [dedup]\nkey = [\"id\"]\nevent_time = \"ts\"\nallowed_lateness_ms = 5000\nidle_timeout_ms = 60000\n{sized}"
        ),
    );
    let total = 12_000i64;
    let messages: Vec<Message> = (0..total)
        .map(|i| {
            let id = format!("s-{i}");
            msg(
                (i % 2) as i32,
                Some(json(Some(&id), i, Some(BASE_MS + i * 10), "slide")),
            )
        })
        .collect();
    let mut next = BTreeMap::new();
    produce_messages(&brokers, &topic, &messages, &mut next);
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = summary(&out);
    let keys = s["dedup_keys"].as_u64().unwrap();
    // 5 s of event time at 10 ms per record = 500 keys in the window; the watermark moves at
    // each seal, so up to one epoch (1000 records) more may be in state.
    assert!(
        keys > 0 && keys <= 1_500,
        "keys in state: {keys} of {total}: {s}"
    );
    assert_eq!(s["totals"]["written"], total);
    // What the verdicts cost is reported: a share of the run's wall time, and of
    // it the key table's growth (the state grew from empty; sized for every key, it never
    // grew).
    let share = s["dedup_verdict_share"].as_f64().unwrap();
    let growth_ms = s["dedup_table_growth_ms"].as_f64().unwrap();
    let wall_ms = s["elapsed_secs"].as_f64().unwrap() * 1e3;
    assert!(share > 0.0 && share < 1.0, "{s}");
    // Evicted keys leave the table in sweeps, when it is full: the growing table fills up
    // again and again and sweeps; the one sized for every key never fills, so never sweeps.
    let sweep_ms = s["dedup_sweep_ms"].as_f64().unwrap();
    if expected_keys.is_some() {
        assert_eq!(growth_ms, 0.0, "{s}");
        assert_eq!(sweep_ms, 0.0, "{s}");
    } else {
        assert!(growth_ms > 0.0 && growth_ms <= share * wall_ms, "{s}");
        assert!(
            sweep_ms > 0.0 && sweep_ms + growth_ms <= share * wall_ms,
            "{s}"
        );
    }
    // The CPU the run used, all threads and the reading thread.
    let cpu = s["cpu_secs"].as_f64().unwrap();
    let reading = s["reading_thread_cpu_secs"].as_f64().unwrap();
    assert!(reading > 0.0 && reading <= cpu, "{s}");
    // The time that thread waited for a core, with dedup as without (`records.rs`).
    let waiting = s["reading_thread_waiting_secs"].as_f64().unwrap();
    assert!(waiting <= wall_ms / 1e3, "{s}");
    // The verdicts' CPU: a fresh run gives them all on the epochs' deciding threads, so it
    // lies outside the reading thread's.
    let verdicts = s["dedup_verdict_cpu_secs"].as_f64().unwrap();
    assert!(verdicts > 0.0 && verdicts <= cpu - reading, "{s}");
    // And the state writer's thread, which wrote the epochs' deltas into the store.
    let writer = s["dedup_state_writer_cpu_secs"].as_f64().unwrap();
    assert!(writer > 0.0 && writer < cpu, "{s}");
    eprintln!("bounded state: {keys} keys in state after {total} records (window: 500)");
}

/// The state writer syncs after every delta in these tests (1 s apart by default), so short
/// runs reach every state crash point.
const SYNC_NOW: (&str, &str) = (tidemark_checkpoint::store::SYNC_EVERY_ENV, "0");

/// Record `i` of the state-crash stream: mostly new ids; every 7th repeats the id of record
/// `i - 301` and every 11th the id of record `i - 1203` (producer retries across epochs), so
/// records of later epochs are duplicates of keys an earlier epoch added.
fn retried_order(i: u64) -> (String, bool) {
    match i {
        i if i % 7 == 3 && i >= 301 => (retried_order(i - 301).0, true),
        i if i % 11 == 5 && i >= 1203 => (retried_order(i - 1203).0, true),
        i => (format!("id-{i:09}"), false),
    }
}

fn retried_order_json(i: u64) -> Vec<u8> {
    let (id, _) = retried_order(i);
    format!(r#"{{"id":"{id}","n":{i},"note":"record {i}"}}"#).into_bytes()
}

/// The state-crash tests' config: epochs of 400 records or 200 ms, small WAL segments (so
/// truncation deletes some), dedup on the id with a 10-minute lateness (nothing evicted).
const STATE_CRASH_CONFIG: &str =
    "[checkpoint]\ninterval_ms = 200\nmax_records = 400\nwal_segment_bytes = 8192\n\
     [dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n";

/// A fixture of `n` records of the retry stream ([`retried_order`]) on a topic named after
/// `name`, run with [`STATE_CRASH_CONFIG`] until SIGKILLed at crash point `kill` (the state
/// writer syncing after every delta); returns it with its `tidemark status --json`.
async fn killed_at(
    brokers: &str,
    name: &str,
    n: u64,
    kill: &str,
) -> (super::Fixture, serde_json::Value) {
    let (_, fixture, _) = super::topic_of_values_and_fixture(
        brokers,
        name,
        3,
        n,
        retried_order_json,
        STATE_CRASH_CONFIG,
    )
    .await;
    let (_, json) = run_until_killed(&fixture, name, kill);
    (fixture, json)
}

/// Runs `fixture` (the state writer syncing after every delta) until SIGKILLed at crash point
/// `kill`, and returns the run's output with `tidemark status --json` after it.
fn run_until_killed(
    fixture: &super::Fixture,
    what: &str,
    kill: &str,
) -> (std::process::Output, serde_json::Value) {
    let out = fixture.run_to_end(&[
        (tidemark_engine::fault::ENV, kill),
        (SYNC_NOW.0, SYNC_NOW.1),
    ]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{what}: no crash at {kill}: {}",
        stderr_of(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&fixture.status(true).stdout).unwrap();
    (out, json)
}

/// [`killed_at`] the `nth` state write (before its sync), asserting the kill left the store's
/// state behind the checkpoint, so the restart reads deltas back from the WAL. Returns the
/// fixture, its `tidemark status --json` and (checkpoint epoch, state epoch).
async fn killed_with_the_state_lagging(
    brokers: &str,
    name: &str,
    n: u64,
    nth: u64,
) -> (super::Fixture, serde_json::Value, (u64, u64)) {
    let (fixture, json) = killed_at(brokers, name, n, &format!("after_state_write@{nth}")).await;
    let (c, m) = (
        json["checkpoint"]["epoch"].as_u64().unwrap(),
        json["wal"]["state_epoch"].as_u64().unwrap(),
    );
    assert!(
        m < c,
        "the state must lag its checkpoint here ({m} vs {c}): {json}"
    );
    (fixture, json, (c, m))
}

/// Restarts `fixture` after a kill whose `tidemark status --json` was `status`: the run must
/// succeed in the case status foresaw, never `state_changelog_lost` (the WAL still holds the
/// changelog), with dedup exact over the `n` records. Returns the run's summary and its case.
fn restart_with_dedup_exact(
    fixture: &super::Fixture,
    n: u64,
    status: &serde_json::Value,
    what: &str,
) -> (serde_json::Value, String) {
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{what}: {}", stderr_of(&out));
    let s = summary(&out);
    let case = s["recovery"]["case"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(
        case, "state_changelog_lost",
        "{what}: the WAL must still hold the changelog: {s}"
    );
    assert_eq!(
        status["next_case"].as_str(),
        Some(case.as_str()),
        "{what}: status foresaw another case: {status}"
    );
    // Every checkpoint this build writes carries its changelog index: a start that reads
    // back a changelog reads it where the index puts it, without scanning the records between.
    if s["recovery"]["changelog_epochs"].as_u64() > Some(0) {
        assert_eq!(
            s["recovery"]["changelog_indexed"], true,
            "{what}: the changelog was scanned, not read by the checkpoint's index: {s}"
        );
    }
    assert_dedup_exact(fixture, n, &s["totals"], what);
    (s, case)
}

/// Every id in the table once, exactly the stream's distinct ids; the totals count each retry
/// as a duplicate.
fn assert_dedup_exact(fixture: &super::Fixture, n: u64, totals: &serde_json::Value, what: &str) {
    let replay = audit::replay_log(&fixture.table).unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for id in audit::read_string_column(&fixture.table, &replay.live_files, "id").unwrap() {
        *counts.entry(id.expect("no null id")).or_default() += 1;
    }
    let want: BTreeSet<String> = (0..n).map(|i| retried_order(i).0).collect();
    let retries = (0..n).filter(|i| retried_order(*i).1).count() as u64;
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: ids written more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let got: BTreeSet<String> = counts.into_keys().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: a unique record was dropped or a foreign one written"
    );
    assert_eq!(got, want, "{what}");
    assert_eq!(
        totals["duplicates"].as_u64(),
        Some(retries),
        "{what}: {totals}"
    );
    assert_eq!(
        totals["written"].as_u64(),
        Some(want.len() as u64),
        "{what}: {totals}"
    );
}

/// Issue 22: the dedup state's changelog path under SIGKILL. The state delta of an epoch is
/// gathered in the background and ingested into the store later (staged SST files); the checkpoint record
/// names the synced epoch and the WAL keeps the deltas after it. A kill between the state
/// write and its sync (the store loses the write), between the sync and the next record (the
/// store is ahead of what any record names; the WAL still holds the deltas), and after a
/// record before the WAL's truncation: each restart restores exactly the committed epochs'
/// state, so no retry of a key an earlier epoch added is written again and no unique record is
/// dropped. Then the changelog itself is lost (the WAL deleted while the state lags): the start
/// rebuilds the state from the table instead, still exact.
#[tokio::test(flavor = "multi_thread")]
async fn state_changelog_crashes_keep_dedup_exact() {
    let Some(brokers) = broker() else { return };
    const N: u64 = 4_000;
    let points = [
        "after_state_write@2",
        "after_state_write@5",
        "after_state_sync@1",
        "after_state_sync@4",
        "after_checkpoint@3",
        "during_truncation@2",
    ];
    let mut report = Vec::new();
    for spec in points {
        let (fixture, json) = killed_at(&brokers, &spec.replace(['@', '_'], "-"), N, spec).await;
        let (s, case) = restart_with_dedup_exact(&fixture, N, &json, spec);
        let (c, m) = (
            json["checkpoint"]["epoch"].as_u64().unwrap(),
            json["wal"]["state_epoch"].as_u64().unwrap(),
        );
        let read_back = s["recovery"]["changelog_epochs"].as_u64().unwrap();
        if spec.starts_with("after_state_sync") {
            // Killed right after an ingestion no record names yet: the store's own note says
            // its state is newer than the record's, so fewer deltas are read from the WAL.
            assert!(
                m < c && read_back < c - m,
                "{spec}: {read_back} deltas read back, the record's state lags {m} vs {c}: {s}"
            );
            // `status` forecast from the same note.
            assert_eq!(
                json["wal"]["state_ingested"].as_u64(),
                Some(c - read_back),
                "{spec}: {json}"
            );
        } else {
            assert!(read_back <= c - m, "{spec}: {read_back} vs {c} - {m}: {s}");
        }
        report.push(format!(
            "{spec}: case {case}, state epoch {m} behind checkpoint {c}, {read_back} deltas read back, {} keys loaded",
            s["recovery"]["dedup_keys_loaded"]
        ));
    }

    // The changelog lost: kill between a state write and its sync, then delete the WAL.
    let (fixture, _, _) = killed_with_the_state_lagging(&brokers, "changelog-lost", N, 4).await;
    std::fs::remove_dir_all(fixture.state_dir().join("wal")).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fixture.status(true).stdout).unwrap();
    assert_eq!(json["next_case"], "state_changelog_lost", "{json}");
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = summary(&out);
    assert_eq!(s["recovery"]["case"], "state_changelog_lost", "{s}");
    assert_dedup_exact(&fixture, N, &s["totals"], "changelog lost");
    eprintln!("state crash points:\n  {}", report.join("\n  "));
}

/// Issue 22, a device that fails while a restart reads the WAL (EIO: a fault no SIGKILL
/// makes). Killed while the state lags its checkpoint, so the restart reads deltas back:
/// - every WAL read failing: the start fails, naming the segment file and the error, and
///   changes nothing (no segment set aside as damaged, no checkpoint written); with dedup
///   off: `records::a_wal_read_error_at_restart_without_dedup_fails_the_start_and_loses_nothing`;
/// - the first read failing (the changelog index's): the start scans the log from the state's
///   position instead, reads the same deltas, and dedup stays exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_wal_read_error_at_restart_fails_the_start_or_falls_back_to_the_scan() {
    let Some(brokers) = broker() else { return };
    const N: u64 = 4_000;
    let (fixture, json, (c, m)) =
        killed_with_the_state_lagging(&brokers, "wal-read-eio", N, 2).await;
    super::a_start_that_cannot_read_its_wal_fails_and_changes_nothing(
        &fixture,
        &json,
        "read:eio:/wal/@1:sticky",
    );

    let out = fixture.run_to_end(&[(tidemark_engine::io_faults::ENV, "read:eio:/wal/@1")]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = summary(&out);
    assert_eq!(s["recovery"]["case"], json["next_case"], "{s}");
    assert_eq!(
        s["recovery"]["changelog_indexed"], false,
        "the index read failed: the changelog must come from the scan: {s}"
    );
    // The deltas the store lacks (`status` forecasts them from the store's own note).
    let ingested = json["wal"]["state_ingested"].as_u64().unwrap_or(m);
    let read_back = s["recovery"]["changelog_epochs"].as_u64().unwrap();
    assert!(
        read_back > 0 && read_back == c - ingested,
        "the scan reads every delta the store lacks ({c} - {ingested}): {s}"
    );
    assert_dedup_exact(&fixture, N, &s["totals"], "a WAL read error at restart");
}

/// Issue 22, a restart's redo through the changelog path: epoch 3 is sealed and the run is
/// killed before its commit; the restart redoes it from the WAL and checkpoints it with the
/// record alone (its delta is the changelog the WAL logged before `SEAL(3)`, left to the state
/// writer, which is held until that first commit is done). The restart is then killed right
/// after that record (the state lags it: proof the redo did not write its keys with the
/// record), or after the state writer's first write or sync; each next start restores the
/// state exactly from the store plus the WAL's changelog.
#[tokio::test(flavor = "multi_thread")]
async fn a_redo_checkpointed_through_the_changelog_survives_a_kill_at_each_state_step() {
    let Some(brokers) = broker() else { return };
    changelog_checkpoint_at_restart_survives_kills(&brokers, "redo", "after_seal@3", "redo_epoch")
        .await;
}

/// The same for an epoch whose commit landed and whose checkpoint did not (killed right after
/// epoch 3's Delta commit): the restart replays it to rebuild its state and writes checkpoint
/// 3 with the record alone, its delta left to the state writer (before, that start synced the
/// whole resumed changelog and then the replayed keys with the record: ~0.7 s with ~1M keys).
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_checkpoint_written_through_the_changelog_survives_a_kill_at_each_state_step() {
    let Some(brokers) = broker() else { return };
    changelog_checkpoint_at_restart_survives_kills(
        &brokers,
        "landed",
        "after_delta_commit@3",
        "write_missing_checkpoint",
    )
    .await;
}

/// A landed epoch's checkpoint written at a restart without replaying its records (from its
/// commit's counts and the delta its WAL logged): the run that goes on holds the epoch's keys,
/// so the retries of its records later in the stream are dropped, and its totals are exact.
/// The restart's state writer syncs at its own pace, so the keys must be in memory, not only
/// in the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_landed_epoch_checkpointed_without_replay_keeps_its_keys_for_the_run_that_follows() {
    let Some(brokers) = broker() else { return };
    const N: u64 = 4_000;
    let (fixture, json) = killed_at(&brokers, "landed-no-replay", N, "after_delta_commit@3").await;
    assert_eq!(json["next_case"], "write_missing_checkpoint", "{json}");
    let (s, _) = restart_with_dedup_exact(&fixture, N, &json, "after_delta_commit@3");
    assert_eq!(
        s["recovery"]["replayed_records"], 0,
        "the landed epoch was replayed: {s}"
    );
}

/// Issue 22, store format 2: this build restarting over a store a format 1 build left (the
/// dedup state in the time-ordered `dedup` column family) migrates it at its open, and dedup
/// stays exact: no retry of a key the old store held is written again, no unique record is
/// dropped. The old store is the one of a real pipeline killed right after its third
/// checkpoint, rewritten as format 1 (`format_1_image`):
/// - without the key index (a store from before it): `tidemark status` reads it read-only
///   and foresees the restart; the first restart is killed in the middle of the migration,
///   after its copy into the key index and before the synced batch that ends it
///   (`during_format_migration`), which leaves a format 1 store; the next start migrates it
///   again, copying exactly the entries the old store held above its watermark;
/// - with the key index: migrated without a copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_format_1_store_is_migrated_at_restart_and_dedup_stays_exact() {
    let Some(brokers) = broker() else { return };
    const N: u64 = 4_000;
    for key_index in [false, true] {
        let what = if key_index {
            "format 1 with the key index"
        } else {
            "format 1 without the key index"
        };
        let name = if key_index {
            "format-1-indexed"
        } else {
            "format-1"
        };
        let (fixture, _) = killed_at(&brokers, name, N, "after_checkpoint@3").await;
        let rewritten = tidemark_checkpoint::store::format_1_image::rewrite_as_format_1(
            &fixture.state_dir().join("store"),
            key_index,
        )
        .unwrap();
        assert!(rewritten > 0, "{what}: the killed run left no dedup state");
        let migrated = format!(
            "copied={} indexed={key_index}",
            if key_index { 0 } else { rewritten }
        );
        if !key_index {
            let out =
                fixture.run_to_end(&[(tidemark_engine::fault::ENV, "during_format_migration")]);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{what}: no crash in the migration: {}",
                stderr_of(&out)
            );
        }
        let status: serde_json::Value =
            serde_json::from_slice(&fixture.status(true).stdout).unwrap();
        assert_eq!(status["next_case"], "resume_epoch", "{what}: {status}");
        let out = fixture.run_to_end(&[]);
        let stderr = stderr_of(&out);
        assert!(out.status.success(), "{what}: {stderr}");
        assert!(
            stderr.contains("migrated from format 1") && stderr.contains(&migrated),
            "{what}: no migration with {migrated} logged: {stderr}"
        );
        let s = summary(&out);
        assert_eq!(s["recovery"]["case"], "resume_epoch", "{what}: {s}");
        assert_dedup_exact(&fixture, N, &s["totals"], what);
        // Migrated once: the next start opens a format 2 store.
        let again = fixture.run_to_end(&[]);
        assert!(again.status.success(), "{what}: {}", stderr_of(&again));
        assert!(
            !stderr_of(&again).contains("migrated from format 1"),
            "{what}: migrated twice: {}",
            stderr_of(&again)
        );
    }
}

/// Kills a run at `first_kill` (leaving epoch 3 for the restart's case `case`), then kills the
/// restart right after its checkpoint record (asserting the state lags it), after the state
/// writer's first write, or after its first sync; each next start must be exact.
async fn changelog_checkpoint_at_restart_survives_kills(
    brokers: &str,
    name: &str,
    first_kill: &str,
    case: &str,
) {
    const N: u64 = 4_000;
    let mut report = Vec::new();
    for restart_kill in [
        "after_checkpoint@1",
        "after_state_write@1",
        "after_state_sync@1",
        "after_delta_commit@1",
    ] {
        let topic = format!("{name}-{}", restart_kill.replace(['@', '_'], "-"));
        let (fixture, json) = killed_at(brokers, &topic, N, first_kill).await;
        assert_eq!(json["next_case"], case, "{json}");
        let (restarted, json) = run_until_killed(&fixture, "the restart", restart_kill);
        let (c, m) = (
            json["checkpoint"]["epoch"].as_u64().unwrap(),
            json["wal"]["state_epoch"].as_u64().unwrap(),
        );
        if case == "write_missing_checkpoint" {
            // The landed epoch's checkpoint is written from its commit's counts and the delta
            // its WAL logged, without replaying its records.
            assert!(
                stderr_of(&restarted).contains("(no replay)"),
                "{restart_kill}: the landed epoch was replayed: {}",
                stderr_of(&restarted)
            );
        }
        if restart_kill == "after_checkpoint@1" {
            assert_eq!(
                c, 3,
                "the restart's checkpoint of epoch 3 is its first: {json}"
            );
            // Its totals are the table's: the counts of every commit so far.
            let epochs = audit::replay_log(&fixture.table).unwrap().epochs;
            let sum = |f: fn(&tidemark_connectors::delta::EpochCommitInfo) -> u64| -> u64 {
                epochs.iter().map(|(_, info)| f(info)).sum()
            };
            let counts = &json["checkpoint"]["counts"];
            assert_eq!(counts["read"], sum(|i| i.records_read), "{json}");
            assert_eq!(counts["written"], sum(|i| i.rows_written), "{json}");
            assert_eq!(counts["duplicates"], sum(|i| i.duplicates), "{json}");
            assert_eq!(counts["late"], sum(|i| i.late), "{json}");
            assert_eq!(
                counts["dead_lettered"],
                sum(|i| i.dead_lettered + i.records_skipped),
                "{json}"
            );
            // And its watermark is the one epoch 3 was committed under.
            let (_, third) = epochs.iter().find(|(_, i)| i.epoch.get() == 3).unwrap();
            assert_eq!(
                json["checkpoint"]["watermark"],
                serde_json::json!(third.watermark),
                "{json}"
            );
            assert!(
                m < c,
                "the restart's checkpoint must leave its delta to the changelog ({m} vs {c}): {json}"
            );
        }
        let (s, case) = restart_with_dedup_exact(&fixture, N, &json, restart_kill);
        if restart_kill == "after_delta_commit@1" {
            // The restart's own first commit landed and its checkpoint did not. After a redo,
            // that commit is the redo's (another run than the one that sealed and logged the
            // delta): the epoch is replayed. After a landed epoch, the restart's next epoch is
            // sealed and committed by one run: its logged delta is trusted, nothing replayed.
            assert_eq!(case, "write_missing_checkpoint", "{s}");
            let replayed = s["recovery"]["replayed_records"].as_u64().unwrap();
            if name == "redo" {
                assert!(
                    replayed > 0,
                    "the redo's commit was taken for the sealing run's: {s}"
                );
            } else {
                assert_eq!(replayed, 0, "{s}");
            }
        }
        report.push(format!(
            "{restart_kill}: case {case}, state epoch {m} behind checkpoint {c}, {} keys loaded",
            s["recovery"]["dedup_keys_loaded"]
        ));
    }
    eprintln!("{name} kills:\n  {}", report.join("\n  "));
}
