//! `tidemark drill`: a self-contained regional DR drill on one machine.
//!
//! Two Kafka clusters (two in-process librdkafka mock clusters by default, or two real brokers
//! with `--brokers PRIMARY,SECONDARY`), a mirror between them that keeps keys, values and
//! timestamps but not offsets (the secondary's partitions are pre-seeded with old records, a
//! different number each), a primary pipeline and a `tidemark replicate --follow` replica, a
//! SIGKILL of the whole primary side (pipeline, replicator, producer) at a random moment, a
//! `tidemark failover` into the replica against the mirrored cluster, an independent
//! exactly-once audit of the secondary table (every produced id once, no pre-seeded record),
//! a check that the report's figures match the audit, and the old primary restarted to see it
//! fenced. Each round prints its RPO/RTO line; `--rounds` repeats with fresh topics and tables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::audit;
use crate::child::KillOnDrop;
use crate::child_log::tail_of;
use crate::mirror::{seed_partitions, Mirror, METADATA_PATIENCE};
use crate::produce::{flush_patiently, send_retrying};

/// Lines of a failed child's log quoted in the drill's error.
const LOG_TAIL_LINES: usize = 15;

/// The drill's error for a failed child: `what` failed, its log, and the log's last lines (a
/// test's temporary directory, and the log with it, is gone by the time the error is read).
fn child_failed(what: impl std::fmt::Display, log: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} (see {}; its last lines:\n{})",
        log.display(),
        tail_of(log, LOG_TAIL_LINES)
    )
}

/// Options of `tidemark drill`.
#[derive(Debug, Clone, Args)]
pub struct DrillOptions {
    /// Two brokers, `PRIMARY,SECONDARY` (two Kafka clusters, e.g. two tansu); default: two
    /// in-process librdkafka mock clusters (no external service).
    #[arg(long, value_name = "PRIMARY,SECONDARY")]
    pub brokers: Option<String>,
    /// Directory for the drill's tables, configs, state and logs (its previous content is
    /// replaced).
    #[arg(long, default_value = "tidemark-drill")]
    pub dir: PathBuf,
    /// Drills to run, each with a fresh topic and tables and its own random kill moment.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Records the producer may send per round (it is stopped by the kill).
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Producer rate, records per second (paced so that the kill lands mid-stream).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Kill the primary side only once the replica holds at least this many epochs (for RTO
    /// measurements with a big replica; default: after the first).
    #[arg(long, default_value_t = 1)]
    pub kill_after_replicated_epochs: i64,
    /// Kill the primary side only once the replica holds at least this many rows (the RTO
    /// benchmark: a dedup state of this many keys to rebuild from the replica).
    #[arg(long, default_value_t = 0)]
    pub kill_after_replicated_rows: u64,
    /// The failover's safety margin (passed to `tidemark failover --margin`).
    #[arg(long, default_value = "3s")]
    pub margin: String,
    /// Seed of the kill moments (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The mirror also publishes MirrorMaker 2 offset syncs (every N records of a partition,
    /// MM2's binary format, on the secondary as `mm2-offset-syncs.drill-secondary.internal`)
    /// and the failover uses them (`--mm2-target-alias drill-secondary`): every partition must
    /// then start "translated".
    #[arg(long, value_name = "N")]
    pub mm2_sync_every: Option<i64>,
}

/// MirrorMaker 2's alias of the drill's secondary cluster (`--mm2-sync-every`).
const MM2_TARGET_ALIAS: &str = "drill-secondary";

/// One round's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DrillRound {
    /// Round number.
    pub round: u32,
    /// Ms after the first replicated commit the primary side was killed.
    pub killed_after_ms: u64,
    /// Primary and replica versions at the kill.
    pub primary_version: i64,
    /// The replica's.
    pub replica_version: i64,
    /// Records the producer had sent (acknowledged) when the region failed.
    pub produced: u64,
    /// Rows in the secondary table after the failover.
    pub rows: u64,
    /// The failover report.
    pub report: serde_json::Value,
    /// Ms the `tidemark failover` process took in all.
    pub failover_ms: u64,
    /// The old primary, restarted, was fenced.
    pub old_primary_fenced: bool,
    /// Bytes of the replica table (data files and log) at the failover.
    pub replica_bytes: u64,
    /// Rows the replica held at the failover (the dedup keys to rebuild).
    pub replica_rows: u64,
    /// The failback.
    pub failback: FailbackOutcome,
}

/// What a round's failback did.
#[derive(Debug, Clone, Serialize)]
pub struct FailbackOutcome {
    /// Records the secondary region produced while it ran the pipeline.
    pub produced_in_secondary: u64,
    /// The primary's versions set aside (its unreplicated tail).
    pub set_aside_versions: Vec<u64>,
    /// Their rows.
    pub set_aside_rows: u64,
    /// Rows in the primary table after the failback (every id once).
    pub rows: u64,
    /// The failback's RTO (its `failover --reason failback` report).
    pub rto_ms: Option<u64>,
}

/// The high watermark of each partition.
fn partition_ends(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    (0..partitions)
        .map(|p| {
            let high = crate::mirror::high_watermark_in_rounds(
                &consumer,
                brokers,
                topic,
                p,
                METADATA_PATIENCE,
            )?;
            Ok((p, high))
        })
        .collect()
}

/// The failback of a round: the secondary region produces and writes on; the primary returns:
/// `tidemark failback` (tail set aside and listed, the secondary's table replicated back), the
/// secondary's own records mirrored back, `tidemark failover --reason failback`; then the
/// primary table must hold every id once and the listing must be exactly the unreplicated tail.
#[allow(clippy::too_many_arguments)]
fn failback(
    exe: &Path,
    base: &Path,
    round: u32,
    topic: &str,
    (primary, secondary): (&str, &str),
    (primary_config, secondary_config): (&Path, &Path),
    (primary_table, replica_table): (&Path, &Path),
    (primary_version, replica_version): (i64, i64),
    sent: u64,
    options: &DrillOptions,
) -> anyhow::Result<FailbackOutcome> {
    let logs = base.join("logs");
    let cfg = |p: &Path| p.display().to_string();
    // The unreplicated tail, from the primary's own log (what failback must list).
    let primary_replay = audit::replay_log(primary_table)?;
    let tail: Vec<u64> =
        ((replica_version + 1).max(0) as u64..=primary_version.max(0) as u64).collect();
    let tail_rows: u64 = primary_replay
        .epochs
        .iter()
        .filter(|(v, _)| *v > replica_version)
        .map(|(_, info)| info.rows_written)
        .sum();
    // The secondary region produces on its own cluster and its pipeline writes it.
    let ends_there = partition_ends(secondary, topic, options.partitions)?;
    let extra = 1000u64;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", secondary)
        .set("enable.idempotence", "true")
        .create()?;
    for i in sent..sent + extra {
        let (id, value) = order(round, i);
        let record = BaseRecord::to(topic)
            .partition((i % options.partitions as u64) as i32)
            .key(id.as_bytes())
            .payload(&value);
        send_retrying(&producer, record)?;
    }
    flush_patiently(&producer, "the secondary region's producer")?;
    let run = Command::new(exe)
        .args([
            "run",
            "--config",
            &cfg(secondary_config),
            "--until-caught-up",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.join("secondary-run.log"))?)
        .status()?;
    if !run.success() {
        return Err(child_failed(
            format!("the secondary's run failed: {run}"),
            &logs.join("secondary-run.log"),
        ));
    }
    // The primary region returns.
    let out = Command::new(exe)
        .args([
            "failback",
            "--from",
            &cfg(replica_table),
            "--to",
            &cfg(primary_table),
        ])
        .stderr(std::fs::File::create(logs.join("failback.log"))?)
        .output()?;
    if !out.status.success() {
        return Err(child_failed(
            format!("tidemark failback failed: {}", out.status),
            &logs.join("failback.log"),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let listing: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find(|l| l.contains("from_version"))
            .context("failback printed no set-aside listing")?,
    )?;
    let listed: Vec<u64> = listing["versions"]
        .as_array()
        .context("listing without versions")?
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    let listed_rows: u64 = listing["versions"]
        .as_array()
        .context("listing without versions")?
        .iter()
        .filter_map(|v| v["rows"].as_u64())
        .sum();
    if listed != tail || listed_rows != tail_rows {
        bail!("failback listed versions {listed:?} ({listed_rows} rows) but the unreplicated tail is {tail:?} ({tail_rows} rows)");
    }
    Mirror::new_from(secondary, primary, topic, topic, &ends_there)?
        .catch_up(Duration::from_secs(120))?;
    let report_path = base.join("failback-report.json");
    let status = Command::new(exe)
        .args([
            "failover",
            "--config",
            &cfg(primary_config),
            "--reason",
            "failback",
            "--until-caught-up",
            "--margin",
            &options.margin,
            "--report",
            &cfg(&report_path),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.join("failback-failover.log"))?)
        .status()?;
    if !status.success() {
        return Err(child_failed(
            format!("the failover back failed: {status}"),
            &logs.join("failback-failover.log"),
        ));
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let ids = ids_in(primary_table)?;
    let want: BTreeSet<String> = (0..sent + extra).map(|i| order(round, i).0).collect();
    let doubled = ids.values().filter(|n| **n > 1).count();
    let missing = want.iter().filter(|id| !ids.contains_key(*id)).count();
    let unexpected = ids.keys().filter(|id| !want.contains(*id)).count();
    if doubled + missing + unexpected > 0 {
        bail!("after failback the primary table has {doubled} ids twice, {missing} missing, {unexpected} never produced");
    }
    Ok(FailbackOutcome {
        produced_in_secondary: extra,
        set_aside_versions: listed,
        set_aside_rows: listed_rows,
        rows: ids.len() as u64,
        rto_ms: report["rto_ms"].as_u64(),
    })
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Runs the drill; an error if any round's check fails.
pub async fn run(options: DrillOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("cannot clear {}", options.dir.display()))?;
    }
    std::fs::create_dir_all(&options.dir)?;
    let dir = std::path::absolute(&options.dir)?;
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    // The mock clusters live as long as the drill.
    let mocks: Option<(
        MockCluster<'static, DefaultProducerContext>,
        MockCluster<'static, DefaultProducerContext>,
    )> = match options.brokers {
        Some(_) => None,
        None => Some((
            MockCluster::new(1).context("cannot start a mock cluster")?,
            MockCluster::new(1).context("cannot start a mock cluster")?,
        )),
    };
    let (primary, secondary) = match (&options.brokers, &mocks) {
        (Some(b), _) => {
            let (p, s) = b
                .split_once(',')
                .context("--brokers takes PRIMARY,SECONDARY (two clusters)")?;
            (p.to_string(), s.to_string())
        }
        (None, Some((p, s))) => (p.bootstrap_servers(), s.bootstrap_servers()),
        (None, None) => unreachable!("mock clusters exist when no brokers are given"),
    };
    println!(
        "Tidemark DR drill: primary {primary}, secondary {secondary} ({}), {} round(s), seed {seed}",
        if mocks.is_some() { "two in-process mock clusters" } else { "given brokers" },
        options.rounds
    );
    if options.mm2_sync_every.is_some() {
        let syncs = tidemark_connectors::mm2::offset_syncs_topic(MM2_TARGET_ALIAS);
        match &mocks {
            Some((_, s)) => s.create_topic(&syncs, 1, 1)?,
            None => crate::bench::create_topic(&secondary, &syncs, 1).await?,
        }
    }
    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        // The process id too: two drills on one broker never share a round's topic.
        let topic = format!(
            "drill-{round}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        match &mocks {
            Some((p, s)) => {
                p.create_topic(&topic, options.partitions, 1)?;
                s.create_topic(&topic, options.partitions, 1)?;
            }
            None => {
                crate::bench::create_topic(&primary, &topic, options.partitions).await?;
                crate::bench::create_topic(&secondary, &topic, options.partitions).await?;
            }
        }
        let kill_delay = Duration::from_millis(rng.random_range(0..2500));
        let r = drill_round(
            &exe, &dir, round, &topic, &primary, &secondary, &options, kill_delay,
        )
        .await
        .with_context(|| format!("drill round {round} (topic {topic})"))?;
        let rep = &r.report;
        println!(
            "  round {round:>3}  replica {} rows, {:.1} MB; failback: {} versions / {} rows set aside, primary {} rows, every id once, RTO {:?} ms; killed {} ms after the first replicated commit (primary v{}, replica v{}); produced {}; RPO: replica {} versions / {} records / {:.1} s behind; re-read {}, duplicates dropped {}, missing {}; RTO {} ms; exactly-once OK; old primary fenced",
            r.replica_rows,
            r.replica_bytes as f64 / 1e6,
            r.failback.set_aside_versions.len(),
            r.failback.set_aside_rows,
            r.failback.rows,
            r.failback.rto_ms,
            r.killed_after_ms,
            r.primary_version,
            r.replica_version,
            r.produced,
            rep["replica_lag"]["versions"],
            rep["replica_lag"]["records"],
            rep["replica_lag"]["seconds"].as_f64().unwrap_or(0.0),
            rep["records_reread"],
            rep["duplicates_dropped"],
            rep["missing_rows"],
            rep["rto_ms"],
        );
        rounds.push(r);
    }
    let rto: Vec<u64> = rounds
        .iter()
        .filter_map(|r| r.report["rto_ms"].as_u64())
        .collect();
    println!(
        "  summary    {} round(s) OK (failover and failback); RTO ms min {} / max {}",
        rounds.len(),
        rto.iter().min().copied().unwrap_or(0),
        rto.iter().max().copied().unwrap_or(0)
    );
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({"seed": seed, "rounds": rounds}))?
    );
    Ok(())
}

const DEDUP: &str =
    "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 600000\n";

fn write_config(
    path: &Path,
    brokers: &str,
    topic: &str,
    table: &Path,
    replica: Option<&Path>,
) -> anyhow::Result<()> {
    let mut text = format!(
        "pipeline_id = \"drill\"\n\n[source]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\n[sink]\ntable_uri = \"{}\"\ncolumns = [\n  {{ name = \"id\", type = \"string\", nullable = false }},\n  {{ name = \"n\", type = \"long\" }},\n]\n\n[checkpoint]\ninterval_ms = 200\n\n{DEDUP}",
        table.display()
    );
    if let Some(r) = replica {
        text.push_str(&format!("\n[replica]\ntable_uri = \"{}\"\n", r.display()));
    }
    std::fs::create_dir_all(path.parent().context("config has a parent")?)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<KillOnDrop> {
    let log_file = std::fs::File::create(log)?;
    Command::new(exe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map(KillOnDrop::new)
        .with_context(|| format!("cannot start {} {}", exe.display(), args.join(" ")))
}

fn table_version(table: &Path) -> i64 {
    audit::replay_log(table).map_or(-1, |r| r.version)
}

/// Rows the table's Tidemark commits wrote, as their commitInfos say.
fn rows_committed(replay: &audit::LogReplay) -> u64 {
    replay
        .epochs
        .iter()
        .map(|(_, info)| info.rows_written)
        .sum()
}

/// How many partitions the table's newest Tidemark commit has read from.
fn partitions_read(replay: &audit::LogReplay) -> usize {
    replay
        .epochs
        .last()
        .map_or(0, |(_, info)| info.end_positions.iter().count())
}

/// True once the replica holds what the kill waits for: enough versions, every partition read,
/// enough rows (one replay of its log per look).
fn replica_ready(replica_table: &Path, options: &DrillOptions) -> bool {
    let Ok(replay) = audit::replay_log(replica_table) else {
        return false;
    };
    replay.version >= options.kill_after_replicated_epochs.max(1)
        && partitions_read(&replay) >= options.partitions as usize
        && (options.kill_after_replicated_rows == 0
            || rows_committed(&replay) >= options.kill_after_replicated_rows)
}

/// Every id of the table's live rows with its count.
fn ids_in(table: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let replay = audit::replay_log(table)?;
    let mut ids = BTreeMap::new();
    for id in audit::read_string_column(table, &replay.live_files, "id")? {
        *ids.entry(id.context("a null id")?).or_insert(0) += 1;
    }
    Ok(ids)
}

/// The ids of the records of `topic` on `brokers` from `start` to the partitions' ends.
fn ids_from(brokers: &str, topic: &str, start: &BTreeMap<i32, i64>) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tidemark-drill-audit")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for (p, o) in start {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
        ends.insert(
            *p,
            crate::mirror::high_watermark_in_rounds(
                &consumer,
                brokers,
                topic,
                *p,
                METADATA_PATIENCE,
            )?,
        );
    }
    consumer.assign(&tpl)?;
    let mut next = start.clone();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ends
        .iter()
        .any(|(p, e)| next.get(p).copied().unwrap_or(0) < *e)
    {
        if Instant::now() > deadline {
            bail!("reading {topic} for the audit timed out");
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        ids.push(v["id"].as_str().unwrap_or_default().to_string());
        next.insert(m.partition(), m.offset() + 1);
    }
    Ok(ids)
}

fn order(round: u32, i: u64) -> (String, Vec<u8>) {
    let id = format!("d{round}-{i:09}");
    let value = format!(r#"{{"id":"{id}","n":{i}}}"#).into_bytes();
    (id, value)
}

#[allow(clippy::too_many_arguments)]
async fn drill_round(
    exe: &Path,
    dir: &Path,
    round: u32,
    topic: &str,
    primary: &str,
    secondary: &str,
    options: &DrillOptions,
    kill_delay: Duration,
) -> anyhow::Result<DrillRound> {
    let base = dir.join(format!("round-{round:03}"));
    let (primary_table, replica_table) = (base.join("primary/table"), base.join("secondary/table"));
    let (primary_config, secondary_config) = (
        base.join("primary/pipeline.toml"),
        base.join("secondary/pipeline.toml"),
    );
    write_config(
        &primary_config,
        primary,
        topic,
        &primary_table,
        Some(&replica_table),
    )?;
    write_config(&secondary_config, secondary, topic, &replica_table, None)?;
    // The mirror's own offsets: old records first, a different number per partition.
    let day_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - 86_400_000;
    let round_seed = round as u64;
    seed_partitions(
        secondary,
        topic,
        options.partitions,
        |p| 1 + 7 * round_seed % 5 + 11 * p as u64,
        day_ago,
        |p, i| format!(r#"{{"id":"filler-{p}-{i}","n":0}}"#).into_bytes(),
    )?;

    // The primary region: a paced producer, the pipeline, the replicator.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, produced, brokers, topic) = (
            stop.clone(),
            produced.clone(),
            primary.to_string(),
            topic.to_string(),
        );
        let (records, partitions, rate) =
            (options.records, options.partitions, options.rate.max(1));
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .create()?;
            let mut sent = 0;
            let started = Instant::now();
            while sent < records && !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    if sent == records {
                        break;
                    }
                    let (id, value) = order(round, sent);
                    let record = BaseRecord::to(&topic)
                        .partition((sent % partitions as u64) as i32)
                        .key(id.as_bytes())
                        .payload(&value);
                    send_retrying(&producer, record)?;
                    sent += 1;
                }
                produced.store(sent, Ordering::Relaxed);
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            // What the primary cluster acknowledged is what the region produced.
            flush_patiently(&producer, "the primary region's producer")?;
            Ok(sent)
        })
    };
    let stop_mirror = Arc::new(AtomicBool::new(false));
    let mirror = {
        let (stop, p, s, t, every) = (
            stop_mirror.clone(),
            primary.to_string(),
            secondary.to_string(),
            topic.to_string(),
            options.mm2_sync_every,
        );
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut m = Mirror::new(&p, &s, &t, &t)?;
            if let Some(every) = every {
                m = m.publish_mm2(crate::mirror::Mm2Publishing {
                    offset_syncs_topic: Some(tidemark_connectors::mm2::offset_syncs_topic(
                        MM2_TARGET_ALIAS,
                    )),
                    every,
                    checkpoints: None,
                });
            }
            while !stop.load(Ordering::Relaxed) {
                m.step(Duration::from_millis(200))?;
            }
            // The producer has stopped and flushed: copy everything the primary holds.
            m.catch_up(Duration::from_secs(120))?;
            Ok(m.progress().copied)
        })
    };
    let logs = base.join("logs");
    std::fs::create_dir_all(&logs)?;
    let cfg = |p: &Path| p.display().to_string();
    let mut pipeline = spawn(
        exe,
        &["run", "--config", &cfg(&primary_config)],
        &logs.join("primary-run.log"),
    )?;
    // The replicator follows the table once the pipeline has created it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !primary_table
        .join("_delta_log/00000000000000000000.json")
        .exists()
    {
        if Instant::now() > deadline {
            return Err(child_failed(
                "the primary pipeline did not create its table within 60 s",
                &logs.join("primary-run.log"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut replicator = spawn(
        exe,
        &[
            "replicate",
            "--from",
            &cfg(&primary_table),
            "--to",
            &cfg(&replica_table),
            "--follow",
            "--interval",
            "200ms",
        ],
        &logs.join("replicate.log"),
    )?;
    // The kill: at a random moment after the replica holds a first pipeline commit.
    let deadline =
        Instant::now() + Duration::from_secs(120 + options.records / options.rate.max(1));
    // (Every partition must have been read once: a partition the replica's progress does not
    // know starts at its beginning on the mirror, and the pre-seeded records there are not
    // the primary's; a real mirror's beginning is the source's.)
    while !replica_ready(&replica_table, options) {
        if Instant::now() > deadline {
            return Err(child_failed(
                "the replica got too few pipeline commits within its time (the replicator's log)",
                &logs.join("replicate.log"),
            ));
        }
        if let Some(status) = pipeline.try_wait()? {
            return Err(child_failed(
                format!("the primary pipeline ended before the kill: {status}"),
                &logs.join("primary-run.log"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(kill_delay);
    pipeline.kill()?;
    replicator.kill()?;
    pipeline.wait()?;
    replicator.wait()?;
    stop.store(true, Ordering::Relaxed);
    let sent = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let (primary_version, replica_version) =
        (table_version(&primary_table), table_version(&replica_table));
    // The mirror (secondary region) copies what the primary cluster holds.
    stop_mirror.store(true, Ordering::Relaxed);
    let copied = mirror
        .join()
        .map_err(|_| anyhow::anyhow!("mirror panicked"))??;
    if copied != sent {
        bail!("the mirror copied {copied} records but the producer sent {sent}");
    }

    let replica_ids = ids_in(&replica_table)?;
    let replica_bytes = dir_bytes(&replica_table);
    let report_path = base.join("failover-report.json");
    let started = Instant::now();
    let mut failover_args = vec![
        "failover".to_string(),
        "--config".to_string(),
        cfg(&secondary_config),
        "--until-caught-up".to_string(),
        "--margin".to_string(),
        options.margin.clone(),
        "--primary-table".to_string(),
        cfg(&primary_table),
        "--report".to_string(),
        cfg(&report_path),
    ];
    if options.mm2_sync_every.is_some() {
        failover_args.extend([
            "--mm2-target-alias".to_string(),
            MM2_TARGET_ALIAS.to_string(),
        ]);
    }
    let out = Command::new(exe)
        .args(&failover_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.join("failover.log"))?)
        .status()?;
    let failover_ms = started.elapsed().as_millis() as u64;
    if !out.success() {
        return Err(child_failed(
            format!("tidemark failover failed: {out}"),
            &logs.join("failover.log"),
        ));
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    if options.mm2_sync_every.is_some() {
        let untranslated: Vec<String> = report["starts"]
            .as_array()
            .context("report without starts")?
            .iter()
            .filter(|s| s["method"] != "translated")
            .map(|s| format!("partition {}: {}", s["partition"], s["method"]))
            .collect();
        if !untranslated.is_empty() {
            bail!("with MM2 offset syncs every partition must start translated: {untranslated:?}");
        }
    }

    // The audit: every acknowledged id exactly once, nothing else.
    let ids = ids_in(&replica_table)?;
    let want: BTreeSet<String> = (0..sent).map(|i| order(round, i).0).collect();
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|id| !ids.contains_key(*id))
        .take(5)
        .collect();
    let unexpected: Vec<_> = ids
        .keys()
        .filter(|id| !want.contains(*id))
        .take(5)
        .collect();
    if !doubled.is_empty() || !missing.is_empty() || !unexpected.is_empty() {
        bail!("exactly-once audit FAILED: twice {doubled:?}, missing {missing:?}, never produced {unexpected:?}");
    }
    // The report matches the audit.
    let starts: BTreeMap<i32, i64> = report["starts"]
        .as_array()
        .context("report without starts")?
        .iter()
        .filter_map(|s| Some((s["partition"].as_i64()? as i32, s["offset"].as_i64()?)))
        .collect();
    let reread = ids_from(secondary, topic, &starts)?;
    let expected_duplicates = reread
        .iter()
        .filter(|id| replica_ids.contains_key(*id))
        .count() as u64;
    let checks = [
        ("records_read", reread.len() as u64),
        ("duplicates_dropped", expected_duplicates),
        ("rows_written", sent - replica_ids.len() as u64),
        ("missing_rows", 0),
    ];
    for (field, want) in checks {
        if report[field].as_u64() != Some(want) {
            bail!(
                "report field {field} = {} but the audit says {want}",
                report[field]
            );
        }
    }
    // The old primary comes back: fenced, writes nothing.
    let before = table_version(&primary_table);
    let back = Command::new(exe)
        .args([
            "run",
            "--config",
            &cfg(&primary_config),
            "--until-caught-up",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.join("old-primary.log"))?)
        .status()?;
    let log = std::fs::read_to_string(logs.join("old-primary.log"))?;
    let fenced =
        !back.success() && log.contains("FENCED") && table_version(&primary_table) == before;
    if !fenced {
        bail!(
            "the old primary was not fenced ({back}; see {})",
            logs.join("old-primary.log").display()
        );
    }
    let failback = failback(
        exe,
        &base,
        round,
        topic,
        (primary, secondary),
        (&primary_config, &secondary_config),
        (&primary_table, &replica_table),
        (primary_version, replica_version),
        sent,
        options,
    )?;
    Ok(DrillRound {
        round,
        failback,
        killed_after_ms: kill_delay.as_millis() as u64,
        primary_version,
        replica_version,
        produced: sent,
        rows: ids.len() as u64,
        report,
        failover_ms,
        old_primary_fenced: fenced,
        replica_bytes,
        replica_rows: replica_ids.len() as u64,
    })
}
