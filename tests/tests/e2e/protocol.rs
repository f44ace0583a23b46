//! The epoch protocol against tansu: every crash point, SIGKILL chaos with the producer still
//! writing, a torn or corrupted WAL tail, a lost checkpoint store, a table restored behind the
//! store, and a slow commit. Every test ends with the independent exactly-once audit.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use tidemark_engine::fault::CrashPoint;
use tidemark_engine::read_ahead::READ_AHEAD_FIRST_ENV;
use tidemark_tests::{
    broker, create_topic, drain_stderr, order_json, order_json_unless, produce, produce_range,
    stderr_of, summary, unique_topic, Fixture,
};
use tidemark_tools::audit;

use super::hardening::{set_table_path, TablePath};
use super::{assert_exactly_once, topic_and_fixture, topic_of_values_and_fixture, EXE};

type Ends = BTreeMap<(String, i32), i64>;

/// `name` from the environment as a number, `default` when unset or not a number.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn committed(fixture: &Fixture) -> i64 {
    audit::replay_log(&fixture.table)
        .ok()
        .and_then(|r| r.txn.get("test").copied())
        .unwrap_or(0)
}

fn assert_no_orphans(fixture: &Fixture) {
    let replay = audit::replay_log(&fixture.table).unwrap();
    let orphans = fixture.orphan_files(&replay.live_files);
    assert!(orphans.is_empty(), "orphan Parquet files: {orphans:?}");
}

/// The WAL's newest segment (its path) and the byte offset just past its last whole frame
/// (the segment's own frames, read with the WAL's reader; a torn frame after them, or a reused
/// file's older bytes, are not counted).
fn newest_segment_and_frames_end(fixture: &Fixture) -> (PathBuf, u64) {
    use tidemark_checkpoint::wal::format::frame_len;
    use tidemark_checkpoint::wal::segment_files;
    use tidemark_checkpoint::{WalPosition, WalReader};
    let dir = fixture.state_dir().join("wal");
    let (id, path, _) = segment_files(&dir).unwrap().pop().expect("a WAL segment");
    let from = WalPosition {
        segment: id,
        offset: 0,
    };
    let end = WalReader::new(&dir, from)
        .map_while(Result::ok)
        .filter(|(at, _)| at.segment == id)
        .map(|(at, f)| at.offset + frame_len(f.payload.len()) as u64)
        .last()
        .unwrap_or(0);
    (path, end)
}

/// What each crash point must lead to on restart: recovery case and epochs in the table
/// before the restart, for a crash at the point's first hit (`@1`: the first epoch, before any
/// checkpoint exists) or its second (`@2`). With pipelined epochs the run is driven with
/// [`READ_AHEAD_FIRST_ENV`], so each commit starts with the next epoch's first batch logged:
/// the schedule (and so the expected case) is deterministic.
pub(super) fn expected(point: CrashPoint, hit: u32) -> (&'static str, i64) {
    if hit == 1 {
        return match point {
            CrashPoint::BeforeWalAppend => ("fresh", 0),
            CrashPoint::AfterWalAppend => ("resume_epoch", 0),
            CrashPoint::AfterSeal
            | CrashPoint::BeforeParquetWrite
            | CrashPoint::AfterParquetWrite => ("redo_epoch", 0),
            // Issue 11 item 4: the first commit landed, the first checkpoint did not.
            CrashPoint::AfterDeltaCommit | CrashPoint::MidCheckpointWrite => {
                ("write_missing_checkpoint", 1)
            }
            CrashPoint::AfterCheckpoint | CrashPoint::DuringTruncation => ("resume_epoch", 1),
            // Dedup's changelog path: `dedup::state_changelog_crashes_keep_dedup_exact`.
            CrashPoint::AfterStateWrite | CrashPoint::AfterStateSync => ("resume_epoch", 1),
            // Reached only when a Delta checkpoint or compaction is due (not in
            // `CrashPoint::ALL`): tested in `maintenance`; or when a format 1 store is
            // migrated: `dedup::a_format_1_store_is_migrated_at_restart_and_dedup_stays_exact`.
            p @ (CrashPoint::BeforeDeltaCheckpoint
            | CrashPoint::DeltaCheckpointTmpCreated
            | CrashPoint::DeltaCheckpointBeforePlace
            | CrashPoint::DeltaCheckpointAfterPlace
            | CrashPoint::AfterDeltaCheckpoint
            | CrashPoint::DuringDeltaLogCleanup
            | CrashPoint::BeforeCompaction
            | CrashPoint::DuringFormatMigration) => unreachable!("{p} is not in CrashPoint::ALL"),
        };
    }
    match point {
        // Pipelined epochs (issue 19) under `READ_AHEAD_FIRST_ENV`: the second batch is the
        // first of epoch 2, read while epoch 1 commits, before anything of epoch 1 is written.
        CrashPoint::BeforeWalAppend | CrashPoint::AfterWalAppend => ("redo_epoch", 0),
        CrashPoint::AfterSeal | CrashPoint::BeforeParquetWrite | CrashPoint::AfterParquetWrite => {
            ("redo_epoch", 1)
        }
        CrashPoint::AfterDeltaCommit | CrashPoint::MidCheckpointWrite => {
            ("write_missing_checkpoint", 2)
        }
        CrashPoint::AfterCheckpoint => ("resume_epoch", 2),
        CrashPoint::DuringTruncation => ("resume_epoch", 1),
        CrashPoint::AfterStateWrite | CrashPoint::AfterStateSync => ("resume_epoch", 2),
        // Reached only when a Delta checkpoint or compaction is due (not in
        // `CrashPoint::ALL`): tested in `maintenance`; or when a format 1 store is migrated:
        // `dedup::a_format_1_store_is_migrated_at_restart_and_dedup_stays_exact`.
        p @ (CrashPoint::BeforeDeltaCheckpoint
        | CrashPoint::DeltaCheckpointTmpCreated
        | CrashPoint::DeltaCheckpointBeforePlace
        | CrashPoint::DeltaCheckpointAfterPlace
        | CrashPoint::AfterDeltaCheckpoint
        | CrashPoint::DuringDeltaLogCleanup
        | CrashPoint::BeforeCompaction
        | CrashPoint::DuringFormatMigration) => unreachable!("{p} is not in CrashPoint::ALL"),
    }
}

/// Every crash point (at its first hit and a later one) recovers as the protocol says: the
/// even-numbered runs of [`crash_point_runs`] here, the odd ones in the next test (two tests so
/// they run side by side; together they are the whole list).
#[tokio::test(flavor = "multi_thread")]
async fn each_crash_point_recovers_as_the_protocol_says() {
    crash_points_recover_as_the_protocol_says(0).await;
}

/// The odd-numbered runs of [`crash_point_runs`] (see the test before).
#[tokio::test(flavor = "multi_thread")]
async fn each_crash_point_recovers_as_the_protocol_says_odd_runs() {
    crash_points_recover_as_the_protocol_says(1).await;
}

/// Every crash point the protocol test arms, at its first hit and a later one.
fn crash_point_runs() -> impl Iterator<Item = (CrashPoint, u32)> {
    CrashPoint::ALL
        .into_iter()
        // The state points are reached only with dedup on: tested in `dedup`.
        .filter(|p| !p.is_state_point())
        .flat_map(|p| [(p, 1u32), (p, 2)])
        // Truncation's first deletion is hit 1 (the crash falls before its second).
        .filter(|(p, hit)| *p != CrashPoint::DuringTruncation || *hit == 1)
}

/// Runs the runs of [`crash_point_runs`] whose index is `half` modulo 2 (each run's table path
/// form and dedup setting follow from its index in the whole list, as before the split).
async fn crash_points_recover_as_the_protocol_says(half: usize) {
    let Some(brokers) = broker() else { return };
    let mut report = Vec::new();
    let forms = [TablePath::Relative, TablePath::Absolute, TablePath::FileUrl];
    for (k, (point, hit)) in crash_point_runs()
        .enumerate()
        .filter(|(k, _)| k % 2 == half)
    {
        // Every recovery path with dedup on and off, and the table named by a relative path,
        // an absolute path and a file:// URL (no duplicates in the stream: same rows either way).
        let (form, dedup) = (forms[k % 3], (k / 3) % 2 == 1);
        let extra = format!(
            // Small segments: an epoch spans many, so truncation deletes several.
            "[checkpoint]\ninterval_ms = 300\nmax_records = 500\nwal_segment_bytes = 4096\n{}",
            if dedup {
                "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n"
            } else {
                ""
            }
        );
        let (fixture, ends) = topic_and_fixture(&brokers, point.name(), 3, 3_000, &extra).await;
        set_table_path(&fixture, form);
        let spec = format!("{}@{hit} ({form:?}, dedup {dedup})", point.name());
        let spec_env = format!("{}@{hit}", point.name());
        let mut env = vec![
            (tidemark_engine::fault::ENV, spec_env.as_str()),
            (READ_AHEAD_FIRST_ENV, "1"),
        ];
        if point == CrashPoint::DuringTruncation && dedup {
            // With dedup, truncation waits for the background state sync (at most once a
            // second): sync at once, so a short run reaches a truncation at all.
            env.push((tidemark_checkpoint::store::SYNC_EVERY_ENV, "0"));
        }
        let crashed = fixture.run_to_end(&env);
        assert_eq!(
            crashed.status.signal(),
            Some(libc::SIGKILL),
            "{point}: no crash: {}",
            stderr_of(&crashed)
        );
        let (case, committed_before) = expected(point, hit);
        if point == CrashPoint::DuringTruncation && dedup {
            // With dedup the WAL is truncated only up to the epoch whose state delta the store
            // has synced (in the background, after the checkpoint): the first truncation that
            // deletes two segments comes an epoch or more later.
            assert!(
                committed(&fixture) >= committed_before,
                "{spec}: epochs in the table at the crash"
            );
        } else {
            assert_eq!(
                committed(&fixture),
                committed_before,
                "{spec}: epochs in the table at the crash"
            );
        }
        if point == CrashPoint::AfterSeal && hit == 2 {
            // status tells what recovery will do, without changing anything.
            let text = String::from_utf8_lossy(&fixture.status(false).stdout).to_string();
            assert!(text.contains("sealed but not in the table"), "{text}");
            let json: serde_json::Value =
                serde_json::from_slice(&fixture.status(true).stdout).unwrap();
            assert_eq!(json["checkpoint"]["epoch"], 1, "{json}");
            assert_eq!(json["wal"]["sealed_after_checkpoint"], 2, "{json}");
            assert_eq!(json["table"]["txn_version"], 1, "{json}");
        }
        if point == CrashPoint::AfterParquetWrite && hit == 2 {
            let replay = audit::replay_log(&fixture.table).unwrap();
            assert!(
                !fixture.orphan_files(&replay.live_files).is_empty(),
                "{point}: the crash must follow a Parquet write"
            );
        }
        if point == CrashPoint::DuringTruncation {
            assert!(
                tidemark_checkpoint::wal::segment_files(&fixture.state_dir().join("wal"))
                    .unwrap()
                    .len()
                    > 1,
                "{point}: truncation was cut short, segments must remain"
            );
        }
        // Records in the table at the crash: once the whole stream is committed (with dedup a
        // truncation can come that late) no next epoch is left to have been logged.
        let read_at_crash: u64 = audit::replay_log(&fixture.table)
            .unwrap()
            .epochs
            .iter()
            .map(|(_, info)| info.records_read)
            .sum();
        let out = fixture.run_to_end(&[]);
        assert!(out.status.success(), "{spec}: {}", stderr_of(&out));
        let s = summary(&out);
        assert_eq!(s["recovery"]["case"], case, "{spec}: {s}");
        let replayed = s["recovery"]["replayed_records"].as_u64().unwrap();
        match (point, hit) {
            _ if read_at_crash == 3_000 => {
                assert_eq!(replayed, 0, "{spec}: the whole stream was committed")
            }
            // A landed epoch's checkpoint comes from its commit's counts (and with dedup the
            // delta its WAL logged): its records are not replayed.
            _ if case == "write_missing_checkpoint" => {
                assert_eq!(replayed, 0, "{spec}: the landed epoch was replayed")
            }
            // After a checkpoint (and during the truncation that follows it) the WAL holds the
            // next epoch's records, read and logged while the checkpointed epoch committed:
            // they are replayed.
            (
                CrashPoint::AfterWalAppend
                | CrashPoint::AfterSeal
                | CrashPoint::AfterCheckpoint
                | CrashPoint::DuringTruncation,
                _,
            )
            | (CrashPoint::BeforeWalAppend, 2) => {
                assert!(replayed > 0, "{spec}: nothing replayed from the WAL")
            }
            (CrashPoint::BeforeWalAppend, _) => assert_eq!(replayed, 0, "{spec}"),
            _ => {}
        }
        if point == CrashPoint::AfterParquetWrite {
            assert!(s["recovery"]["orphan_files_deleted"].as_u64().unwrap() >= 1);
        }
        assert_no_orphans(&fixture);
        assert_exactly_once(&fixture, &ends, 3_000).await;
        report.push(format!(
            "{spec}: case {case}, replayed {replayed}, first commit after {} ms",
            s["first_commit_ms"]
        ));
    }
    eprintln!("crash points:\n  {}", report.join("\n  "));
}

/// Kills the pipeline at random moments (including during recovery) while a producer is still
/// writing; scale with TIDEMARK_CHAOS_RECORDS and TIDEMARK_CHAOS_KILLS.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_sigkills_while_producing_keep_exactly_once() {
    let Some(brokers) = broker() else { return };
    let _exclusive = tidemark_tests::broker_exclusive().await;
    let records = env_u64("TIDEMARK_CHAOS_RECORDS", 500_000);
    let kills_wanted = env_u64("TIDEMARK_CHAOS_KILLS", 50);
    let partitions = 3;
    let topic = unique_topic("chaos");
    create_topic(&brokers, &topic, partitions).await;
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        "[checkpoint]\ninterval_ms = 250\nmax_records = 20000\nwal_segment_bytes = 1048576\n",
    );
    // The producer writes in paced chunks for most of the kill phase.
    let producer = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            let chunk = (records / 100).max(1);
            let mut ends: Ends = BTreeMap::new();
            let mut i = 0;
            while i < records {
                let end = (i + chunk).min(records);
                for (k, n) in produce_range(&brokers, &topic, partitions, i..end, order_json) {
                    *ends.entry(k).or_insert(0) += n;
                }
                i = end;
                std::thread::sleep(Duration::from_millis(300));
            }
            ends
        })
    };
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut cases: BTreeMap<String, u64> = BTreeMap::new();
    // Kills by protocol phase, from what each killed run got to (issue 11: the test must
    // show that kills landed after a seal, after a Delta commit and during recovery).
    let mut phases: BTreeMap<&'static str, u64> = BTreeMap::new();
    // Every 4th run is killed by a crash point at a random hit instead of a timer, cycling
    // through the points whose windows are too short for a timer to find reliably.
    let aimed = [
        CrashPoint::AfterSeal,
        CrashPoint::AfterDeltaCommit,
        CrashPoint::AfterParquetWrite,
        CrashPoint::AfterCheckpoint,
    ];
    let started = Instant::now();
    // A kill during recovery needs a short timer to fall inside a short window: should none
    // of the planned kills have landed there, up to 30 more timed kills aim at it.
    let recovery_kill_missing =
        |phases: &BTreeMap<&'static str, u64>| !phases.contains_key("during_recovery");
    while kills < kills_wanted || (recovery_kill_missing(&phases) && kills < kills_wanted + 30) {
        let extra = kills >= kills_wanted;
        let armed = (kills % 4 == 1 && !extra).then(|| {
            let point = aimed[(kills as usize / 4) % aimed.len()];
            (
                point,
                format!("{}@{}", point.name(), rng.random_range(1..4)),
            )
        });
        let env: Vec<(&str, &str)> = armed
            .iter()
            .map(|(_, spec)| (tidemark_engine::fault::ENV, spec.as_str()))
            .collect();
        let mut child = fixture.spawn(false, &env);
        let log = drain_stderr(&mut child);
        // Random moment: a third of the kills fall in the first 300 ms (recovery, connect),
        // the rest anywhere in the next few epochs.
        let ms = if armed.is_some() {
            // Give the crash point time to fire (the producer is still writing).
            8_000
        } else if extra || rng.random_bool(0.33) {
            rng.random_range(0..300)
        } else {
            rng.random_range(300..3500)
        };
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let by_crash_point = match child.try_wait().unwrap() {
            Some(status) if armed.is_some() && status.signal() == Some(libc::SIGKILL) => true,
            Some(status) => {
                let log = log.join().unwrap();
                panic!("pipeline exited on its own ({status}): {log}");
            }
            None => {
                child.kill().unwrap();
                false
            }
        };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        kills += 1;
        let log = log.join().unwrap();
        // "During recovery": the run had locked its state directory (recovery had begun) and
        // had not finished recovering.
        let phase = match (&armed, by_crash_point) {
            (Some((CrashPoint::AfterSeal, _)), true) => "after_seal",
            (Some((CrashPoint::AfterDeltaCommit, _)), true) => "after_delta_commit",
            (Some((_, _)), true) => "other_crash_point",
            _ if log.contains("state directory locked") && !log.contains("recovery done") => {
                "during_recovery"
            }
            _ if !log.contains("state directory locked") => "before_recovery",
            _ => "timed_after_recovery",
        };
        *phases.entry(phase).or_default() += 1;
        for line in log
            .lines()
            .filter(|l| l.contains("first commit after start"))
        {
            if let Some(case) = line.split("case=").nth(1) {
                let case = case.split_whitespace().next().unwrap_or("");
                let case = case.trim_matches('"').to_string();
                *cases.entry(case).or_default() += 1;
            }
        }
    }
    eprintln!("chaos: kills by phase {phases:?}");
    for phase in ["after_seal", "after_delta_commit", "during_recovery"] {
        assert!(
            phases.get(phase).copied().unwrap_or(0) >= 1,
            "no kill landed {phase}: {phases:?}"
        );
    }
    let kill_phase = started.elapsed();
    let ends = producer.join().expect("producer thread");
    let total: i64 = ends.values().sum();
    assert_eq!(total as u64, records);
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = summary(&out);
    eprintln!(
        "chaos: {kills} SIGKILLs over {:.0} s, {records} records on {partitions} partitions; recovery cases of runs that reached a commit: {cases:?}; final run: {s}",
        kill_phase.as_secs_f64()
    );
    assert_no_orphans(&fixture);
    assert_exactly_once(&fixture, &ends, records).await;
    let t = &s["totals"];
    assert_eq!(
        t["read"], records,
        "totals over all runs must count each record once: {t}"
    );
    assert_eq!(t["written"], records, "{t}");
}

/// Cuts the newest WAL segment at a random byte of its frames, or flips a byte of its last
/// frame, between crashed runs: recovery cuts the damaged tail, says so, and nothing is lost
/// or doubled (also when that segment is a reused file).
#[tokio::test(flavor = "multi_thread")]
async fn torn_and_corrupted_wal_tails_are_cut_and_nothing_is_lost() {
    // The damage made at byte `damaged_at` of `segment` was found when the next run reports a
    // cut of that segment at or before it: as a torn tail, or, when the segment is a reused
    // file (its end then holds an older segment's bytes, which no tail damage can be told
    // from), as that file cut to its frames. A reused file's cut past the damage (the open of
    // an undamaged one) does not count.
    fn cut_reported(log: &str, damaged: &Option<(PathBuf, u64)>) -> bool {
        let Some((segment, damaged_at)) = damaged else {
            return false;
        };
        // Its file name: the log prints the path as the pipeline's config spells it.
        let segment = segment.file_name().unwrap().to_string_lossy().into_owned();
        log.lines()
            .filter(|l| {
                l.contains("torn tail cut off")
                    || l.contains("a reused file, was cut to its frames")
            })
            .filter(|l| l.contains(&segment))
            .filter_map(|l| {
                l.split(" at=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .any(|at| at <= *damaged_at)
    }
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "torn",
        3,
        6_000,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 700\nwal_segment_bytes = 65536\n",
    )
    .await;
    let mut rng = rand::rng();
    let mut damage_reported = 0;
    // The segment damaged after the last crashed run, and the first byte damaged.
    let mut damaged: Option<(PathBuf, u64)> = None;
    for round in 0..6 {
        let spec = format!("after_wal_append@{}", 2 + round % 3);
        let out = fixture.run_to_end(&[(tidemark_engine::fault::ENV, &spec)]);
        let log = stderr_of(&out);
        if cut_reported(&log, &damaged.take()) {
            damage_reported += 1;
        }
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{log}");
        // Where the newest segment's frames end: a reused file holds an older segment's
        // bytes after them, so the damage goes inside the frames, not at the file's end.
        let (newest, len) = newest_segment_and_frames_end(&fixture);
        if len <= 40 {
            continue;
        }
        if round % 2 == 0 {
            let cut = rng.random_range(33..len);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)
                .unwrap()
                .set_len(cut)
                .unwrap();
            damaged = Some((newest, cut));
        } else {
            let mut bytes = std::fs::read(&newest).unwrap();
            let at = len as usize - 1 - rng.random_range(0..4usize);
            bytes[at] ^= 0x5a;
            std::fs::write(&newest, bytes).unwrap();
            damaged = Some((newest, at as u64));
        }
    }
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    if cut_reported(&stderr_of(&out), &damaged) {
        damage_reported += 1;
    }
    assert!(
        damage_reported >= 2,
        "recovery must report the cut tails ({damage_reported} reported)"
    );
    assert_no_orphans(&fixture);
    assert_exactly_once(&fixture, &ends, 6_000).await;
}

/// The checkpoint directory deleted between runs, then the store made unreadable: the
/// pipeline resumes from the table's own progress, says so loudly, and stays exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn lost_checkpoint_store_resumes_from_the_table() {
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "lost-store",
        3,
        6_000,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 600\n",
    )
    .await;
    // The kill lands in the read-ahead of the epoch after the one committing; with the
    // read-ahead first, before that commit writes its file. Otherwise (a loaded CI machine
    // once) the committing epoch's Parquet file was written first, and deleting the state
    // directory below forgets that run: its file is another run's then, which the start-up
    // sweep rightly leaves for a vacuum, and it stayed an orphan.
    let crash = [
        (tidemark_engine::fault::ENV, "after_wal_append@4"),
        (READ_AHEAD_FIRST_ENV, "1"),
    ];
    let out = fixture.run_to_end(&crash);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    assert!(committed(&fixture) >= 2);
    std::fs::remove_dir_all(fixture.state_dir()).unwrap();

    let out = fixture.run_to_end(&crash);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    let log = stderr_of(&out);
    assert!(log.contains("CHECKPOINT STORE LOST"), "{log}");
    // Now garbage instead of a store.
    let current = fixture.state_dir().join("store").join("CURRENT");
    std::fs::write(&current, b"not a manifest name\n").unwrap();

    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let log = stderr_of(&out);
    assert!(log.contains("CHECKPOINT STORE UNREADABLE"), "{log}");
    let s = summary(&out);
    assert_eq!(s["recovery"]["store_lost"], true, "{s}");
    assert_eq!(s["recovery"]["case"], "from_table", "{s}");
    // No checkpoint had them: the running totals were rebuilt from the table's commits.
    assert_eq!(s["totals"]["read"], 6_000, "{s}");
    assert_eq!(s["totals"]["written"], 6_000, "{s}");
    assert_no_orphans(&fixture);
    assert_exactly_once(&fixture, &ends, 6_000).await;
}

/// The store lost after an epoch's dead-letter commit and before its main commit, then the
/// epoch re-read with other boundaries (`max_records` raised between the runs): the
/// dead-letter table still holds every bad record exactly once, none skipped, none doubled.
#[tokio::test(flavor = "multi_thread")]
async fn lost_store_between_the_two_commits_keeps_dead_letters_exactly_once() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("lost-dlq");
    create_topic(&brokers, &topic, 1).await;
    let bad = |i: u64| i % 7 == 3;
    let n = 3_000;
    let ends = produce(&brokers, &topic, 1, n, order_json_unless(bad));
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        "[checkpoint]\ninterval_ms = 600000\nmax_records = 500\n",
    );
    // Epochs 1 and 2 commit; epoch 3 commits its dead letters, then the process dies.
    let crash = [(tidemark_engine::fault::ENV, "before_parquet_write@3")];
    let out = fixture.run_to_end(&crash);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(committed(&fixture), 2);
    std::fs::remove_dir_all(fixture.state_dir()).unwrap();
    let config = std::fs::read_to_string(&fixture.config).unwrap();
    std::fs::write(
        &fixture.config,
        config.replace("max_records = 500", "max_records = 700"),
    )
    .unwrap();

    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("CHECKPOINT STORE LOST"));
    let bad_count = (0..n).filter(|i| bad(*i)).count();
    let dlq = audit::dead_letter_dir(&fixture.table).expect("dead-letter table");
    let letters = audit::read_dead_letters(&dlq).unwrap();
    assert_eq!(
        letters.len(),
        bad_count,
        "each bad record once in the dead-letter table"
    );
    assert_no_orphans(&fixture);
    assert_exactly_once(&fixture, &ends, n - bad_count as u64).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The table restored from an older copy: start refuses with both numbers; `--rewind-to`
/// a retained checkpoint replays the gap, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn table_behind_the_store_refuses_then_rewinds() {
    let Some(brokers) = broker() else { return };
    let (topic, fixture, mut ends) = topic_of_values_and_fixture(
        &brokers,
        "behind",
        2,
        3_000,
        order_json,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 500\nretain = 100\n",
    )
    .await;
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v = committed(&fixture);
    let backup = fixture.dir.path().join("table-backup");
    copy_dir(&fixture.table, &backup);

    for (k, n) in produce_range(&brokers, &topic, 2, 3_000..6_000, order_json) {
        *ends.entry(k).or_insert(0) += n;
    }
    let out = fixture.run_to_end(&[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let t = committed(&fixture);
    assert!(t > v);

    std::fs::remove_dir_all(&fixture.table).unwrap();
    std::fs::rename(&backup, &fixture.table).unwrap();
    let out = fixture.run_to_end(&[]);
    assert!(
        !out.status.success(),
        "a table behind the store must refuse"
    );
    let log = stderr_of(&out);
    assert!(
        log.contains(&format!("txn version {v}"))
            && log.contains(&format!("committed epoch {t}"))
            && log.contains("--rewind-to"),
        "{log}"
    );
    let status = String::from_utf8_lossy(&fixture.status(false).stdout).to_string();
    assert!(status.contains("behind the checkpoint"), "{status}");

    let rewind_to = v.to_string();
    let out = fixture
        .spawn_with(true, &["--rewind-to", &rewind_to], &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(summary(&out)["recovery"]["case"], "rewind");
    assert_no_orphans(&fixture);
    assert_exactly_once(&fixture, &ends, 6_000).await;
}

/// A Delta commit that takes seconds: the consumer is polled all along and the run goes on.
/// `polls_during_commit` counts the batches asked of the source during a commit (not the waits
/// at the read-ahead cap), so 1,500-record epochs of a 2,000-record stream keep the next epoch
/// under its cap for the whole commit.
#[tokio::test(flavor = "multi_thread")]
async fn slow_commits_keep_the_consumer_polled() {
    let Some(brokers) = broker() else { return };
    let (fixture, ends) = topic_and_fixture(
        &brokers,
        "slow-commit",
        2,
        2_000,
        "[checkpoint]\ninterval_ms = 300\nmax_records = 1500\n",
    )
    .await;
    let out = fixture.run_to_end(&[(tidemark_engine::io_faults::COMMIT_DELAY_ENV, "2500")]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let log = stderr_of(&out);
    let polls: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("epoch committed"))
        .filter_map(|l| l.split("polls_during_commit=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(polls.len() >= 2, "{log}");
    // 2.5 s at one poll per <= 100 ms is ~25; allow for a loaded machine, but a consumer left
    // unpolled during the commit would show 1.
    assert!(
        polls.iter().all(|p| *p >= 10),
        "polls during commits: {polls:?}"
    );
    assert_exactly_once(&fixture, &ends, 2_000).await;
}

/// The epochs of the WAL's frames in order, with `true` for a seal (read after a crash).
fn wal_frames(fixture: &Fixture) -> Vec<(u64, bool)> {
    use tidemark_checkpoint::wal::FrameKind;
    use tidemark_checkpoint::{WalPosition, WalReader};
    WalReader::new(&fixture.state_dir().join("wal"), WalPosition::default())
        .map_while(Result::ok)
        .map(|(_, f)| (f.epoch, f.kind == FrameKind::Seal))
        .collect()
}

/// The newest checkpoint's epoch (0: none), read from the store after a crash.
fn checkpoint_epoch(fixture: &Fixture) -> u64 {
    use tidemark_checkpoint::{CheckpointStore, StoreOptions};
    let store = CheckpointStore::open(
        &fixture.state_dir().join("store"),
        StoreOptions { retain: 10 },
    )
    .unwrap();
    store.latest().unwrap().map_or(0, |c| c.epoch)
}

/// Issue 19: pipelined epochs. A SIGKILL while epoch `e` commits and epoch `e+1` is being read,
/// at each protocol step of either epoch: the WAL holds `SEAL(e)` followed by frames of `e+1`
/// (checked before the restart), and the restart recovers as the protocol says and writes every
/// record exactly once. Every step with dedup off and with dedup on.
#[tokio::test(flavor = "multi_thread")]
async fn kills_while_an_epoch_commits_and_the_next_is_read_recover_exactly_once() {
    let Some(brokers) = broker() else { return };
    // (point, hit, e: the committing epoch, case, epochs in the table at the crash, frames of
    // e+1 expected after SEAL(e)).
    let runs: [(CrashPoint, u32, u64, &str, i64, bool); 8] = [
        // Steps of e+1 while e = 1 commits (its first batch is read before e's writes).
        (CrashPoint::BeforeWalAppend, 2, 1, "redo_epoch", 0, false),
        (CrashPoint::AfterWalAppend, 2, 1, "redo_epoch", 0, true),
        // Steps of e = 2 with frames of e+1 = 3 in the WAL.
        (CrashPoint::BeforeParquetWrite, 2, 2, "redo_epoch", 1, true),
        (CrashPoint::AfterParquetWrite, 2, 2, "redo_epoch", 1, true),
        (
            CrashPoint::AfterDeltaCommit,
            2,
            2,
            "write_missing_checkpoint",
            2,
            true,
        ),
        (
            CrashPoint::MidCheckpointWrite,
            2,
            2,
            "write_missing_checkpoint",
            2,
            true,
        ),
        (CrashPoint::AfterCheckpoint, 2, 2, "resume_epoch", 2, true),
        (CrashPoint::AfterSeal, 2, 2, "redo_epoch", 1, false),
    ];
    let mut report = Vec::new();
    let both = runs
        .into_iter()
        .flat_map(|run| [false, true].map(|dedup| (run, dedup)));
    for ((point, hit, e, case, before, read_ahead), dedup) in both {
        // Epochs of 500 records; `max_records` bounds the read-ahead too, so epoch e+1's
        // first batch (up to 500 records) is in the WAL before e writes anything.
        let extra = format!(
            "[checkpoint]\ninterval_ms = 300\nmax_records = 500\n{}",
            if dedup {
                "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n"
            } else {
                ""
            }
        );
        let (fixture, ends) = topic_and_fixture(
            &brokers,
            &format!("pipe-{}-dedup-{dedup}", point.name()),
            3,
            3_000,
            &extra,
        )
        .await;
        let spec = format!("{}@{hit} (dedup {dedup})", point.name());
        let crash = format!("{}@{hit}", point.name());
        let crashed = fixture.run_to_end(&[
            (tidemark_engine::fault::ENV, crash.as_str()),
            (READ_AHEAD_FIRST_ENV, "1"),
        ]);
        assert_eq!(
            crashed.status.signal(),
            Some(libc::SIGKILL),
            "{spec}: no crash: {}",
            stderr_of(&crashed)
        );
        assert_eq!(committed(&fixture), before, "{spec}: epochs in the table");
        // The WAL's shape at the crash.
        let frames = wal_frames(&fixture);
        let c = checkpoint_epoch(&fixture);
        let seal_at = frames.iter().position(|f| *f == (e, true));
        let next_after_seal = seal_at
            .map(|i| frames[i + 1..].iter().any(|(epoch, _)| *epoch == e + 1))
            .unwrap_or(false);
        assert!(
            seal_at.is_some(),
            "{spec}: SEAL({e}) not in the WAL: {frames:?}"
        );
        let crash_log = stderr_of(&crashed);
        let waits: Vec<&str> = crash_log
            .lines()
            .filter(|l| l.contains(READ_AHEAD_FIRST_ENV))
            .collect();
        assert_eq!(
            next_after_seal,
            read_ahead,
            "{spec}: frames of epoch {} after SEAL({e}) (checkpoint {c}); waits that ran out: {waits:?}",
            e + 1
        );
        assert!(
            !frames.iter().any(|(epoch, seal)| *seal && *epoch > e),
            "{spec}: epoch {} sealed while {e} was not checkpointed",
            e + 1
        );
        let out = fixture.run_to_end(&[]);
        assert!(out.status.success(), "{spec}: {}", stderr_of(&out));
        let s = summary(&out);
        assert_eq!(s["recovery"]["case"], case, "{spec}: {s}");
        assert_no_orphans(&fixture);
        assert_exactly_once(&fixture, &ends, 3_000).await;
        report.push(format!(
            "{spec}: checkpoint {c}, WAL {} frames, case {case}, replayed {}",
            frames.len(),
            s["recovery"]["replayed_records"]
        ));
    }
    eprintln!("pipelined crashes:\n  {}", report.join("\n  "));
}
