//! Issue 14, regional failover, against two tansu brokers (two Kafka clusters: scripts/test
//! starts the second one and sets TIDEMARK_TEST_BROKERS_SECONDARY).
//!
//! The secondary's topic is a mirror of the primary's (keys, values, timestamps; not offsets)
//! whose partitions were pre-seeded with a different number of old records each, so any reuse
//! of the primary's offsets on the secondary would read the wrong records (and the audit would
//! find them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tidemark_tests::{
    create_topic, order_json, order_json_unless, produce_range, stderr_of, two_brokers,
    unique_topic, Fixture, TEST_LOG_FILTER,
};
use tidemark_tools::audit;
use tidemark_tools::mirror::{seed_partitions, Mirror, Mm2Publishing};

use super::EXE;

const PARTITIONS: i32 = 3;
const DEDUP: &str =
    "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n";
/// Ids of the records pre-seeded into the secondary's partitions (never produced upstream).
const FILLER_BASE: u64 = 900_000_000;

fn tidemark(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env("RUST_LOG", TEST_LOG_FILTER)
        .env_remove(tidemark_engine::fault::ENV)
        .output()
        .expect("run tidemark")
}

/// `tidemark failover --config <fixture's> --until-caught-up --margin 2s --report <dir>/<report>`
/// plus `extra`; fails the test when it fails. Returns its output and the parsed report.
fn failover(fixture: &Fixture, report: &str, extra: &[&str]) -> (Output, serde_json::Value) {
    let report_path = fixture.dir.path().join(report);
    let mut args = vec![
        "failover",
        "--config",
        fixture.config.to_str().unwrap(),
        "--until-caught-up",
        "--margin",
        "2s",
        "--report",
        report_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = tidemark(&args);
    ok(&format!("failover {extra:?}"), &out);
    let parsed = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    (out, parsed)
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        stderr_of(out)
    );
}

/// Every id in the table's live rows, with how many times each appears.
fn ids_in(table: &Path) -> BTreeMap<String, u64> {
    let replay = audit::replay_log(table).expect("replay log");
    let mut ids = BTreeMap::new();
    for id in audit::read_string_column(table, &replay.live_files, "id").expect("read ids") {
        *ids.entry(id.expect("id is never null")).or_insert(0) += 1;
    }
    ids
}

/// The ids of `topic`'s records on `brokers` from `start` (partition -> offset) to the end.
fn ids_from(brokers: &str, topic: &str, start: &BTreeMap<i32, i64>) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "failover-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for (p, o) in start {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .unwrap();
        ends.insert(*p, high);
    }
    consumer.assign(&tpl).unwrap();
    let mut next: BTreeMap<i32, i64> = start.clone();
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ends.iter().any(|(p, e)| next[p] < *e) {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
        next.insert(m.partition(), m.offset() + 1);
    }
    ids
}

/// Both brokers (`None` when absent outside CI), a new topic on each, and the secondary's
/// partitions pre-seeded with `seeded(p)` day-old filler records: the mirror's offsets differ
/// from the primary's, so a failover that reused offsets would be caught.
async fn mirrored_topic(
    prefix: &str,
    seeded: impl Fn(i32) -> u64,
) -> Option<(String, String, String)> {
    let (primary_brokers, secondary_brokers) = two_brokers()?;
    let topic = unique_topic(prefix);
    create_topic(&primary_brokers, &topic, PARTITIONS).await;
    create_topic(&secondary_brokers, &topic, PARTITIONS).await;
    let day_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 86_400_000;
    seed_partitions(
        &secondary_brokers,
        &topic,
        PARTITIONS,
        seeded,
        day_ago,
        |p, i| order_json(FILLER_BASE + 1000 * p as u64 + i),
    )
    .unwrap();
    Some((primary_brokers, secondary_brokers, topic))
}

/// The whole scenario: a primary pipeline replicated (then running ahead of its replica), a
/// mirror offset differently, a refused start against the wrong cluster, the failover (by
/// time, dedup rebuilt from the replica), an independent audit of the secondary table against
/// the report, and the old primary fenced when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_mirrored_cluster_loses_and_doubles_nothing_and_fences_the_old_primary() {
    // The mirror's offsets: each secondary partition starts with 5, 17 and 29 old records.
    let Some((primary_brokers, secondary_brokers, topic)) =
        mirrored_topic("failover", |p| 5 + 12 * p as u64).await
    else {
        return;
    };

    let secondary = Fixture::new(Path::new(EXE), &secondary_brokers, &topic, DEDUP);
    let replica_table = secondary.table.clone();
    let primary = Fixture::new(
        Path::new(EXE),
        &primary_brokers,
        &topic,
        &format!(
            "{DEDUP}\n[replica]\ntable_uri = \"{}\"\n",
            replica_table.display()
        ),
    );

    // The primary reads 3000 records; the replica gets them; then 2000 more the replica lacks.
    let (first, second) = (3000u64, 2000u64);
    produce_range(&primary_brokers, &topic, PARTITIONS, 0..first, order_json);
    ok("primary run 1", &primary.run_to_end(&[]));
    let (from, to) = (
        primary.table.display().to_string(),
        replica_table.display().to_string(),
    );
    ok(
        "replicate",
        &tidemark(&["replicate", "--from", &from, "--to", &to]),
    );
    produce_range(
        &primary_brokers,
        &topic,
        PARTITIONS,
        first..first + second,
        order_json,
    );
    ok("primary run 2", &primary.run_to_end(&[]));
    let primary_version = audit::replay_log(&primary.table).unwrap().version;

    // The mirror copies everything the primary cluster holds (it runs in the other region).
    let mut mirror = Mirror::new(&primary_brokers, &secondary_brokers, &topic, &topic).unwrap();
    let copied = mirror.catch_up(Duration::from_secs(120)).unwrap();
    assert_eq!(copied, first + second);

    // The region is lost. A plain start against the mirrored cluster is refused, naming both.
    let wrong = secondary.run_to_end(&[]);
    let text = stderr_of(&wrong);
    assert!(
        !wrong.status.success(),
        "a start on another cluster must be refused:\n{text}"
    );
    assert!(
        text.contains("tansu_cluster") && text.contains("tidemark_secondary"),
        "the refusal names both cluster ids:\n{text}"
    );

    let replica_ids = ids_in(&replica_table);
    assert_eq!(
        replica_ids.len() as u64,
        first,
        "the replica holds the first part"
    );
    let (out, report) = failover(&secondary, "report.json", &["--primary-table", &from]);
    eprintln!(
        "{}",
        stderr_of(&out)
            .lines()
            .filter(|l| !l.contains(" INFO "))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Independent audit: every produced id exactly once, no pre-seeded record.
    let ids = ids_in(&replica_table);
    let want: BTreeSet<String> = (0..first + second)
        .map(|i| {
            serde_json::from_slice::<serde_json::Value>(&order_json(i)).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "ids twice in the secondary table: {doubled:?}"
    );
    let have: BTreeSet<String> = ids.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&have).take(10).collect();
    let unexpected: Vec<_> = have.difference(&want).take(10).collect();
    assert!(
        missing.is_empty(),
        "ids missing from the secondary table: {missing:?}"
    );
    assert!(
        unexpected.is_empty(),
        "ids that were never produced (offset reuse?): {unexpected:?}"
    );

    // The report's figures match the audit.
    let starts: BTreeMap<i32, i64> = report["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["partition"].as_i64().unwrap() as i32,
                s["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let reread = ids_from(&secondary_brokers, &topic, &starts);
    let expected_duplicates = reread
        .iter()
        .filter(|id| replica_ids.contains_key(*id))
        .count() as u64;
    assert!(
        expected_duplicates > 0,
        "the margin makes the failover re-read some records"
    );
    assert_eq!(
        report["records_read"].as_u64(),
        Some(reread.len() as u64),
        "{report:#}"
    );
    assert_eq!(
        report["duplicates_dropped"].as_u64(),
        Some(expected_duplicates),
        "{report:#}"
    );
    assert_eq!(report["late_dropped"].as_u64(), Some(0), "{report:#}");
    assert_eq!(report["rows_written"].as_u64(), Some(second), "{report:#}");
    assert_eq!(report["missing_rows"].as_u64(), Some(0), "{report:#}");
    assert_eq!(
        report["replica_lag"]["records"].as_u64(),
        Some(second),
        "{report:#}"
    );
    assert!(
        report["replica_lag"]["versions"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert_eq!(report["from_cluster"].as_str(), Some("tansu_cluster"));
    assert_eq!(report["to_cluster"].as_str(), Some("tidemark_secondary"));
    assert_eq!(report["generation"].as_u64(), Some(2));
    assert!(report["rto_ms"].as_u64().is_some(), "{report:#}");
    // Every start is at or after the pre-seeded records of its partition.
    for (p, o) in &starts {
        assert!(
            *o >= 5 + 12 * *p as i64,
            "partition {p} starts at {o}, inside the pre-seeded records"
        );
    }

    // The old primary comes back: fenced by the replica's newer generation, writes nothing.
    produce_range(
        &primary_brokers,
        &topic,
        PARTITIONS,
        first + second..first + second + 30,
        order_json,
    );
    let back = primary.run_to_end(&[]);
    let text = stderr_of(&back);
    assert!(
        !back.status.success(),
        "the old primary must be fenced:\n{text}"
    );
    assert!(text.contains("FENCED"), "{text}");
    assert_eq!(
        audit::replay_log(&primary.table).unwrap().version,
        primary_version
    );

    // The secondary goes on as a plain `run` (its cluster and generation are its own now).
    let again = secondary.run_to_end(&[]);
    ok("secondary run after failover", &again);
}

/// `tidemark drill` against the two tansu brokers, 10 rounds: each kills the whole primary side
/// (pipeline, replicator, producer) at a random moment after the replica's first commit (so
/// mid-epoch, mid-commit or mid-replication), fails over, audits the secondary table (every
/// acknowledged id once, no pre-seeded record), checks the report against the audit, and
/// restarts the old primary to see it fenced. The drill exits non-zero if any check fails.
///
/// Two tests of 5 rounds each, side by side (the suite's longest test was this one, ~4 min at
/// load 8). Each drill draws its own random seed (kill moments), and a round's pre-seeding
/// depends on its number modulo 5, so the two halves cover what one drill of 10 rounds did.
/// Round topics are named by round, process id and time, so the two never share one.
#[test]
fn ten_randomized_drills_against_two_brokers_keep_exactly_once_fence_the_old_primary_and_fail_back_1_to_5(
) {
    randomized_drills(5);
}

/// The second half of the ten drills (see the test before).
#[test]
fn ten_randomized_drills_against_two_brokers_keep_exactly_once_fence_the_old_primary_and_fail_back_6_to_10(
) {
    randomized_drills(5);
}

/// Runs `tidemark drill --rounds <rounds>` against the two brokers and checks every round's
/// report.
fn randomized_drills(rounds: usize) {
    let Some((primary, secondary)) = two_brokers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = tidemark(&[
        "drill",
        "--brokers",
        &format!("{primary},{secondary}"),
        "--dir",
        dir.path().join("drill").to_str().unwrap(),
        "--rounds",
        &rounds.to_string(),
        "--records",
        "15000",
        "--rate",
        "3000",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "drill failed: {}\n{stdout}\n{}",
        out.status,
        stderr_of(&out)
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("the drill's JSON line");
    let reports = json["rounds"].as_array().unwrap();
    assert_eq!(reports.len(), rounds);
    for r in reports {
        assert_eq!(r["old_primary_fenced"], true);
        assert_eq!(r["report"]["missing_rows"], 0);
        assert_eq!(r["rows"], r["produced"], "{r:#}");
        // The failback: every id (those the secondary region produced too) once in the primary.
        let fb = &r["failback"];
        assert_eq!(
            fb["rows"].as_u64(),
            Some(r["produced"].as_u64().unwrap() + fb["produced_in_secondary"].as_u64().unwrap()),
            "{r:#}"
        );
    }
}

/// The high watermark of each partition of `topic` on `brokers`.
fn ends(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

fn id_of(i: u64) -> String {
    serde_json::from_slice::<serde_json::Value>(&order_json(i)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Failback drill: failover, the secondary region writes on (records produced there), then the
/// primary returns: `tidemark failback` sets the primary's unreplicated tail aside (listed
/// exactly: its versions and rows) and replicates the secondary's table back; the records the
/// secondary region produced are mirrored back; `tidemark failover --reason failback` moves the
/// pipeline home by time. The primary table then holds every id exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_sets_the_unreplicated_tail_aside_and_the_primary_holds_every_id_once() {
    let Some((primary_brokers, secondary_brokers, topic)) =
        mirrored_topic("failback", |p| 3 + 4 * p as u64).await
    else {
        return;
    };
    let secondary = Fixture::new(Path::new(EXE), &secondary_brokers, &topic, DEDUP);
    let primary = Fixture::new(
        Path::new(EXE),
        &primary_brokers,
        &topic,
        &format!(
            "{DEDUP}\n[replica]\ntable_uri = \"{}\"\n",
            secondary.table.display()
        ),
    );
    let (from, to) = (
        primary.table.display().to_string(),
        secondary.table.display().to_string(),
    );
    // Primary: 2000 replicated, then 1000 that only the primary table holds (its tail).
    produce_range(&primary_brokers, &topic, PARTITIONS, 0..2000, order_json);
    ok("primary run 1", &primary.run_to_end(&[]));
    ok(
        "replicate",
        &tidemark(&["replicate", "--from", &from, "--to", &to]),
    );
    let replicated_version = audit::replay_log(&secondary.table).unwrap().version;
    produce_range(&primary_brokers, &topic, PARTITIONS, 2000..3000, order_json);
    ok("primary run 2", &primary.run_to_end(&[]));
    let primary_replay = audit::replay_log(&primary.table).unwrap();
    let tail_versions: Vec<i64> = (replicated_version + 1..=primary_replay.version).collect();
    let tail_rows: u64 = primary_replay
        .epochs
        .iter()
        .filter(|(v, _)| *v > replicated_version)
        .map(|(_, info)| info.rows_written)
        .sum();
    assert_eq!(tail_rows, 1000);
    Mirror::new(&primary_brokers, &secondary_brokers, &topic, &topic)
        .unwrap()
        .catch_up(Duration::from_secs(120))
        .unwrap();

    // Failover; the secondary region then produces 1000 records of its own.
    failover(&secondary, "failover.json", &[]);
    let produced_there = ends(&secondary_brokers, &topic);
    produce_range(
        &secondary_brokers,
        &topic,
        PARTITIONS,
        3000..4000,
        order_json,
    );
    ok("secondary run", &secondary.run_to_end(&[]));

    // The primary region returns: failback.
    let out = tidemark(&["failback", "--from", &to, "--to", &from]);
    ok("failback", &out);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let listing: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find(|l| l.contains("from_version"))
            .expect("the set-aside listing"),
    )
    .unwrap();
    let listed: Vec<i64> = listing["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        listed, tail_versions,
        "the set-aside tail is listed exactly: {listing:#}"
    );
    let listed_rows: u64 = listing["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(listed_rows, tail_rows, "{listing:#}");
    let aside = Path::new(listing["dir"].as_str().unwrap());
    assert!(aside.join("set_aside.json").exists());
    // The primary table is now the secondary's, byte for byte in its log.
    assert_eq!(
        audit::replay_log(&primary.table).unwrap().version,
        audit::replay_log(&secondary.table).unwrap().version
    );
    // What the secondary region produced goes back to the primary cluster.
    Mirror::new_from(
        &secondary_brokers,
        &primary_brokers,
        &topic,
        &topic,
        &produced_there,
    )
    .unwrap()
    .catch_up(Duration::from_secs(120))
    .unwrap();
    let (_, report) = failover(&primary, "failback.json", &["--reason", "failback"]);
    assert_eq!(report["generation"].as_u64(), Some(3), "{report:#}");
    assert_eq!(report["from_cluster"].as_str(), Some("tidemark_secondary"));

    let ids = ids_in(&primary.table);
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(
        doubled.is_empty(),
        "ids twice in the primary table: {doubled:?}"
    );
    let want: BTreeSet<String> = (0..4000).map(id_of).collect();
    let have: BTreeSet<String> = ids.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&have).take(10).collect();
    let unexpected: Vec<_> = have.difference(&want).take(10).collect();
    assert!(missing.is_empty(), "missing after failback: {missing:?}");
    assert!(unexpected.is_empty(), "never produced: {unexpected:?}");
}

/// Every id of `0..n` exactly once in `table`, and nothing else (no pre-seeded filler).
fn assert_every_id_once(table: &Path, n: u64) {
    let ids = ids_in(table);
    let doubled: Vec<_> = ids.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(
        doubled.is_empty(),
        "ids twice in {}: {doubled:?}",
        table.display()
    );
    let want: BTreeSet<String> = (0..n).map(id_of).collect();
    let have: BTreeSet<String> = ids.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&have).take(10).collect();
    let unexpected: Vec<_> = have.difference(&want).take(10).collect();
    assert!(missing.is_empty(), "ids missing: {missing:?}");
    assert!(
        unexpected.is_empty(),
        "ids never produced (offset reuse, or pre-seeded records read?): {unexpected:?}"
    );
}

/// The report's starts: partition -> (offset, method).
fn starts_of(report: &serde_json::Value) -> BTreeMap<i32, (i64, String)> {
    report["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["partition"].as_i64().unwrap() as i32,
                (
                    s["offset"].as_i64().unwrap(),
                    s["method"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Records read and duplicates dropped as the report gives them, against an independent
/// count: the records from the report's starts to the end of the mirrored topic, and those
/// of them whose id the replica held before the failover.
fn assert_reread_figures(
    report: &serde_json::Value,
    brokers: &str,
    topic: &str,
    replica_ids: &BTreeMap<String, u64>,
) -> u64 {
    let starts: BTreeMap<i32, i64> = starts_of(report)
        .into_iter()
        .map(|(p, (o, _))| (p, o))
        .collect();
    let reread = ids_from(brokers, topic, &starts);
    let duplicates = reread
        .iter()
        .filter(|id| replica_ids.contains_key(*id))
        .count() as u64;
    assert_eq!(
        report["records_read"].as_u64(),
        Some(reread.len() as u64),
        "{report:#}"
    );
    assert_eq!(
        report["duplicates_dropped"].as_u64(),
        Some(duplicates),
        "{report:#}"
    );
    duplicates
}

/// MirrorMaker 2's offset syncs (published by the test mirror on the secondary, in MM2's
/// binary format, every 70 records of a partition): the failover starts each partition at its
/// translated offset and says so. Partition 2 was never read before the failure and its
/// mirror holds 29 pre-seeded records the primary never had: the sync of its first record
/// starts it after them (from its beginning it would write them). Exactly once (independent
/// audit), and the re-read figures match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_mm2_offset_syncs_starts_at_translated_offsets_exactly_once() {
    let Some((primary_brokers, secondary_brokers, topic)) =
        mirrored_topic("mm2syncs", |p| 5 + 12 * p as u64).await
    else {
        return;
    };
    let syncs_topic = tidemark_connectors::mm2::offset_syncs_topic("secondary");
    create_topic(&secondary_brokers, &syncs_topic, 1).await;
    let secondary = Fixture::new(Path::new(EXE), &secondary_brokers, &topic, DEDUP);
    let primary = Fixture::new(
        Path::new(EXE),
        &primary_brokers,
        &topic,
        &format!(
            "{DEDUP}\n[replica]\ntable_uri = \"{}\"\n",
            secondary.table.display()
        ),
    );
    let (from, to) = (
        primary.table.display().to_string(),
        secondary.table.display().to_string(),
    );
    // 3000 records into partitions 0 and 1 only, replicated; then 2000 into all three.
    produce_range(&primary_brokers, &topic, 2, 0..3000, order_json);
    ok("primary run 1", &primary.run_to_end(&[]));
    ok(
        "replicate",
        &tidemark(&["replicate", "--from", &from, "--to", &to]),
    );
    produce_range(&primary_brokers, &topic, PARTITIONS, 3000..5000, order_json);
    ok("primary run 2", &primary.run_to_end(&[]));
    Mirror::new(&primary_brokers, &secondary_brokers, &topic, &topic)
        .unwrap()
        .publish_mm2(Mm2Publishing {
            offset_syncs_topic: Some(syncs_topic.clone()),
            every: 70,
            checkpoints: None,
        })
        .catch_up(Duration::from_secs(120))
        .unwrap();

    let replica_ids = ids_in(&secondary.table);
    let (out, report) = failover(
        &secondary,
        "report.json",
        &["--mm2-target-alias", "secondary"],
    );
    let text = stderr_of(&out);
    let starts = starts_of(&report);
    for (p, (_, method)) in &starts {
        assert_eq!(method, "translated", "partition {p}: {report:#}");
    }
    assert!(
        text.contains("translated"),
        "the printed report says so:\n{text}"
    );
    // Partition 0 and 1 were read up to 1500: the nearest sync is of offset 1470 (every 70
    // from 0), so the start is just after its record, 29 records before the true position.
    for p in [0, 1] {
        let s = &report["starts"][p as usize];
        assert_eq!(s["translation"]["via"], "offset_sync", "{report:#}");
        assert_eq!(s["translation"]["upstream_offset"], 1470, "{report:#}");
        assert_eq!(s["offset"].as_i64(), Some(5 + 12 * p + 1471), "{report:#}");
    }
    // Partition 2, never read: the sync of its first record, right after the filler.
    assert_eq!(starts[&2].0, 29, "{report:#}");
    assert_eq!(report["starts"][2]["translation"]["upstream_offset"], 0);
    assert!(report["translations"]["offset_syncs"].as_u64().unwrap() > 0);

    assert_every_id_once(&secondary.table, 5000);
    let duplicates = assert_reread_figures(&report, &secondary_brokers, &topic, &replica_ids);
    assert_eq!(
        duplicates,
        2 * 29,
        "the translated overlap: 29 records in each read partition"
    );
    assert_eq!(report["missing_rows"], serde_json::Value::Null);
}

/// MirrorMaker 2 checkpoints of a consumer group (the group committed offsets on the primary
/// cluster for partitions 0 and 1; the test mirror translates them as MM2 does): partitions 0
/// and 1 start at their translations, partition 2 (never read before the failure, no
/// checkpoint, its mirror holding only mirrored records) from its beginning, and the report
/// says which per partition. Exactly once (independent audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_mm2_checkpoints_translates_the_groups_partitions_and_reads_a_never_read_one_from_its_beginning(
) {
    let Some((primary_brokers, secondary_brokers, topic)) =
        mirrored_topic("mm2cp", |p| if p == 2 { 0 } else { 5 + 12 * p as u64 }).await
    else {
        return;
    };
    let checkpoints_topic = tidemark_connectors::mm2::checkpoints_topic("primary");
    create_topic(&secondary_brokers, &checkpoints_topic, 1).await;
    let secondary = Fixture::new(Path::new(EXE), &secondary_brokers, &topic, DEDUP);
    let primary = Fixture::new(
        Path::new(EXE),
        &primary_brokers,
        &topic,
        &format!(
            "{DEDUP}\n[replica]\ntable_uri = \"{}\"\n",
            secondary.table.display()
        ),
    );
    let (from, to) = (
        primary.table.display().to_string(),
        secondary.table.display().to_string(),
    );
    produce_range(&primary_brokers, &topic, 2, 0..3000, order_json);
    ok("primary run 1", &primary.run_to_end(&[]));
    ok(
        "replicate",
        &tidemark(&["replicate", "--from", &from, "--to", &to]),
    );
    // A consumer group of the primary region has read what the replica holds and committed.
    let group = "orders-auditors";
    {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &primary_brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in [0, 1] {
            tpl.add_partition_offset(&topic, p, Offset::Offset(1500))
                .unwrap();
        }
        consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .unwrap();
    }
    produce_range(&primary_brokers, &topic, PARTITIONS, 3000..5000, order_json);
    ok("primary run 2", &primary.run_to_end(&[]));
    Mirror::new(&primary_brokers, &secondary_brokers, &topic, &topic)
        .unwrap()
        .publish_mm2(Mm2Publishing {
            offset_syncs_topic: None,
            every: 100,
            checkpoints: Some((checkpoints_topic.clone(), group.to_string())),
        })
        .catch_up(Duration::from_secs(120))
        .unwrap();

    let replica_ids = ids_in(&secondary.table);
    let (out, report) = failover(
        &secondary,
        "report.json",
        &["--mm2-source-alias", "primary", "--mm2-group", group],
    );
    let starts = starts_of(&report);
    assert_eq!(
        starts[&0],
        (5 + 1500, "translated".to_string()),
        "{report:#}"
    );
    assert_eq!(
        starts[&1],
        (17 + 1500, "translated".to_string()),
        "{report:#}"
    );
    assert_eq!(starts[&2], (0, "from_beginning".to_string()), "{report:#}");
    assert_eq!(report["starts"][0]["translation"]["via"], "checkpoint");
    assert_eq!(report["translations"]["checkpoints"], 2, "{report:#}");
    let text = stderr_of(&out);
    assert!(
        text.contains("from the beginning") && text.contains("never read"),
        "the printed report says how partition 2 started:\n{text}"
    );
    assert_every_id_once(&secondary.table, 5000);
    let duplicates = assert_reread_figures(&report, &secondary_brokers, &topic, &replica_ids);
    assert_eq!(
        duplicates, 0,
        "checkpoints of exactly the replica's positions"
    );
}

/// The key of each record of `topic` on `brokers` from `start` to the end.
fn keys_from(brokers: &str, topic: &str, start: &BTreeMap<i32, i64>) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "failover-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for (p, o) in start {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .unwrap();
        ends.insert(*p, high);
    }
    consumer.assign(&tpl).unwrap();
    let mut next = start.clone();
    let mut keys = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ends.iter().any(|(p, e)| next[p] < *e) {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        keys.push(m.key().map(<[u8]>::to_vec).unwrap_or_default());
        next.insert(m.partition(), m.offset() + 1);
    }
    keys
}

/// Poisoned records inside the failover's overlap appear once in the dead-letter output: the
/// primary dead-letters every tenth record, its dead-letter table is replicated with the
/// table, the failover re-reads the overlap from the mirror (other offsets), and the
/// dead-letter table then holds each poisoned record exactly once; the report counts the
/// letters it did not write again, as an independent count finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_records_reread_after_a_failover_are_written_once() {
    let Some((primary_brokers, secondary_brokers, topic)) =
        mirrored_topic("failoverdlq", |p| 5 + 12 * p as u64).await
    else {
        return;
    };
    let poisoned = |i: u64| i % 10 == 7;
    let values = order_json_unless(poisoned);
    let secondary = Fixture::new(Path::new(EXE), &secondary_brokers, &topic, DEDUP);
    let primary = Fixture::new(
        Path::new(EXE),
        &primary_brokers,
        &topic,
        &format!(
            "{DEDUP}\n[replica]\ntable_uri = \"{}\"\n",
            secondary.table.display()
        ),
    );
    let dlq = |f: &Fixture| f.dir.path().join("table_dead_letters");
    produce_range(&primary_brokers, &topic, PARTITIONS, 0..3000, &values);
    ok("primary run 1", &primary.run_to_end(&[]));
    for (from, to) in [
        (primary.table.clone(), secondary.table.clone()),
        (dlq(&primary), dlq(&secondary)),
    ] {
        ok(
            "replicate",
            &tidemark(&[
                "replicate",
                "--from",
                from.to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
            ]),
        );
    }
    produce_range(&primary_brokers, &topic, PARTITIONS, 3000..5000, &values);
    ok("primary run 2", &primary.run_to_end(&[]));
    Mirror::new(&primary_brokers, &secondary_brokers, &topic, &topic)
        .unwrap()
        .catch_up(Duration::from_secs(120))
        .unwrap();
    let held_before: BTreeSet<Vec<u8>> = audit::read_dead_letter_keys(&dlq(&secondary))
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        held_before.len(),
        300,
        "the replicated dead letters of the first part"
    );

    let (_, report) = failover(&secondary, "report.json", &[]);

    // Every poisoned record exactly once in the dead-letter table, nothing else.
    let mut letters: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for k in audit::read_dead_letter_keys(&dlq(&secondary)).unwrap() {
        *letters.entry(k.unwrap()).or_insert(0) += 1;
    }
    let doubled: Vec<_> = letters
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| (String::from_utf8_lossy(k).to_string(), *n))
        .take(10)
        .collect();
    assert!(
        doubled.is_empty(),
        "dead letters written twice: {doubled:?}"
    );
    let want: BTreeSet<Vec<u8>> = (0..5000)
        .filter(|i| poisoned(*i))
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    let have: BTreeSet<Vec<u8>> = letters.keys().cloned().collect();
    assert_eq!(have, want, "each poisoned record's letter, once");
    // Independent: the poisoned records the failover re-read whose letter the replica held.
    let starts: BTreeMap<i32, i64> = starts_of(&report)
        .into_iter()
        .map(|(p, (o, _))| (p, o))
        .collect();
    let reread_held = keys_from(&secondary_brokers, &topic, &starts)
        .into_iter()
        .filter(|k| held_before.contains(k))
        .count() as u64;
    assert!(
        reread_held > 0,
        "the overlap holds poisoned records: {report:#}"
    );
    assert_eq!(
        report["dead_letters_already_held"].as_u64(),
        Some(reread_held),
        "{report:#}"
    );
    // The rows: every good id once.
    let ids = ids_in(&secondary.table);
    assert!(ids.values().all(|n| *n == 1));
    assert_eq!(ids.len() as u64, 5000 - want.len() as u64);
}

/// `tidemark drill --mm2-sync-every 50` against the two tansu brokers, 3 rounds: the mirror
/// publishes MirrorMaker 2 offset syncs, each failover starts every partition from them (the
/// drill fails a round otherwise), and the exactly-once audit, the report's figures and the
/// fencing hold as in the by-time drills.
#[test]
fn randomized_drills_with_mm2_offset_syncs_start_translated_and_keep_exactly_once() {
    let Some((primary, secondary)) = two_brokers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = tidemark(&[
        "drill",
        "--brokers",
        &format!("{primary},{secondary}"),
        "--dir",
        dir.path().join("drill").to_str().unwrap(),
        "--rounds",
        "3",
        "--records",
        "9000",
        "--rate",
        "3000",
        "--mm2-sync-every",
        "50",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "drill failed: {}\n{stdout}\n{}",
        out.status,
        stderr_of(&out)
    );
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("the drill's JSON line");
    let rounds = json["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for r in rounds {
        assert_eq!(r["old_primary_fenced"], true);
        assert_eq!(r["rows"], r["produced"], "{r:#}");
        for s in r["report"]["starts"].as_array().unwrap() {
            assert_eq!(s["method"], "translated", "{r:#}");
            assert_eq!(s["translation"]["via"], "offset_sync", "{r:#}");
        }
        // The overlap is what lies after the nearest sync: fewer than 50 per partition.
        assert!(
            r["report"]["duplicates_dropped"].as_u64().unwrap() < 50 * 3,
            "{r:#}"
        );
    }
}
