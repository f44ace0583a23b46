//! `tidemark demo`: the whole product on one machine with no external service.
//!
//! It starts librdkafka's in-process mock cluster (a real Kafka-protocol listener on
//! 127.0.0.1), produces a stream of order events with some producer duplicates and some
//! malformed messages, runs the real pipeline as a child process, kills it with SIGKILL
//! part-way, restarts it, and then audits the table independently of deltalake
//! ([`crate::audit`]). It prints only what it checked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;

use crate::audit;

const TOPIC: &str = "orders";
/// First line of the config the demo writes: marks a directory the demo may replace.
const DEMO_CONFIG_MARK: &str = "# Written by `tidemark demo`.";

/// Options of `tidemark demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoOptions {
    /// Directory for the demo's table, config and logs (its previous content is replaced).
    #[arg(long, default_value = "tidemark-demo")]
    pub dir: PathBuf,
    /// Order events to produce.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Share of events the producer sends twice (a retry after a lost ack).
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    /// Share of messages that are malformed or do not fit the schema.
    #[arg(long, default_value_t = 0.001)]
    pub malformed_rate: f64,
    /// Epochs the first run commits before it is killed with SIGKILL.
    #[arg(long, default_value_t = 3)]
    pub kill_after_epochs: u64,
    /// Seed of the generated stream (same seed, same stream).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What the generator sent, to check the table against.
#[derive(Debug, Default)]
struct Produced {
    total: u64,
    duplicates: u64,
    malformed: u64,
    per_partition: BTreeMap<(String, i32), i64>,
    /// order_id -> how many valid messages carried it.
    orders: HashMap<String, u64>,
}

/// librdkafka's in-process mock cluster.
type Cluster = MockCluster<'static, DefaultProducerContext>;

/// Runs the demo, by stage: prepare --dir, start the mock cluster and produce the stream, run
/// the pipeline with a SIGKILL and a restart, audit the table; an error if any check fails.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&options.duplicate_rate)
        || !(0.0..1.0).contains(&options.malformed_rate)
    {
        bail!("--duplicate-rate and --malformed-rate must be in [0, 1)");
    }
    let dir = prepare_dir(&options.dir)?;
    println!(
        "Tidemark demo: Kafka (in-process mock cluster) -> Delta table, with a SIGKILL part-way"
    );
    let cluster = start_cluster(options.partitions)?;
    let brokers = cluster.bootstrap_servers();
    let produced = produce_stream(&brokers, &options)?;
    let config_path = write_config(&dir, &brokers, options.records)?;
    let table_dir = dir.join("orders");
    let pipeline_secs =
        run_killed_and_restarted(&dir, &config_path, &table_dir, options.kill_after_epochs)?;
    let failures = audit_table(&table_dir, &produced)?;
    println!(
        "  throughput    {:.0} records/s end to end ({} records in {:.2} s across both runs, incl. the crash and restart)",
        produced.total as f64 / pipeline_secs,
        produced.total,
        pipeline_secs
    );
    println!(
        "  logs          {} and run-2.log",
        dir.join("run-1.log").display()
    );
    drop(cluster);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("demo checks failed: {}", failures.join(", "))
    }
}

/// Resolves --dir and gives the demo an empty directory there, replacing an earlier demo's
/// (and refusing any other non-empty one).
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve --dir {}", dir.display()))?;
    if dir.exists() {
        let ours = std::fs::read_to_string(dir.join("pipeline.toml"))
            .is_ok_and(|t| t.starts_with(DEMO_CONFIG_MARK));
        let empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none());
        if !ours && !empty {
            bail!(
                "--dir {} exists and is not an earlier demo's directory; pick another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot clear the demo directory {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Starts the mock cluster with the demo topic.
fn start_cluster(partitions: i32) -> anyhow::Result<Cluster> {
    let cluster = MockCluster::new(1).context("cannot start librdkafka's mock cluster")?;
    cluster
        .create_topic(TOPIC, partitions, 1)
        .context("cannot create the demo topic")?;
    Ok(cluster)
}

/// Produces the stream, says what it holds, and checks the cluster kept all of it.
fn produce_stream(brokers: &str, options: &DemoOptions) -> anyhow::Result<Produced> {
    let produce_started = Instant::now();
    let produced = produce(brokers, options)?;
    println!(
        "  produced      {} messages to {TOPIC} ({} partitions) in {:.1} s: {} producer duplicates, {} malformed",
        produced.total,
        options.partitions,
        produce_started.elapsed().as_secs_f64(),
        produced.duplicates,
        produced.malformed
    );
    check_nothing_dropped(brokers, &produced)?;
    Ok(produced)
}

/// Writes the demo's `pipeline.toml` into `dir`.
fn write_config(dir: &Path, brokers: &str, records: u64) -> anyhow::Result<PathBuf> {
    let config_path = dir.join("pipeline.toml");
    // About 20 epochs whatever the stream length, so the kill lands part-way.
    let epoch_records = (records / 20).clamp(500, 50_000);
    std::fs::write(&config_path, demo_config(brokers, epoch_records))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    Ok(config_path)
}

/// Run 1 of the pipeline, SIGKILLed after `kill_after_epochs` commits, then run 2 until caught
/// up; returns the seconds from the start of run 1 to the end of run 2.
fn run_killed_and_restarted(
    dir: &Path,
    config_path: &Path,
    table_dir: &Path,
    kill_after_epochs: u64,
) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let pipeline_started = Instant::now();
    let mut first = spawn_run(&exe, config_path, &dir.join("run-1.log"))?;
    let killed_at = kill_after_commits(&mut first, table_dir, kill_after_epochs)?;
    match killed_at {
        Some(version) => println!(
            "  run 1         killed with SIGKILL after {:.2} s, table at version {version}",
            pipeline_started.elapsed().as_secs_f64()
        ),
        None => println!("  run 1         finished before it could be killed (no crash was shown)"),
    }
    let second = spawn_run(&exe, config_path, &dir.join("run-2.log"))?;
    let output = second.wait_with_output().context("waiting for run 2")?;
    if !output.status.success() {
        bail!(
            "run 2 failed ({}); see {}",
            output.status,
            dir.join("run-2.log").display()
        );
    }
    let pipeline_secs = pipeline_started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("run 2 printed no summary")?;
    println!(
        "  run 2         resumed at epoch {}, caught up: {} epochs, {} records read",
        summary["first_epoch"], summary["epochs_committed"], summary["records_read"]
    );
    Ok(pipeline_secs)
}

/// The audit (log replay + Parquet, no deltalake snapshot code): prints each check and
/// returns the names of those that failed.
fn audit_table(table_dir: &Path, produced: &Produced) -> anyhow::Result<Vec<&'static str>> {
    let mut failures = Vec::new();
    let replay = check_offsets(table_dir, produced, &mut failures)?;
    check_orders(table_dir, &replay, produced, &mut failures)?;
    Ok(failures)
}

/// Every produced Kafka offset once in the table or listed as skipped, and as many skipped as
/// malformed were produced. Returns the log replay.
fn check_offsets(
    table_dir: &Path,
    produced: &Produced,
    failures: &mut Vec<&'static str>,
) -> anyhow::Result<audit::LogReplay> {
    let replay = audit::replay_log(table_dir)?;
    let report = audit::check_exactly_once(table_dir, &produced.per_partition)?;
    println!(
        "  table         {}: version {}, {} live Parquet files, {} rows, {} epochs committed",
        table_dir.display(),
        replay.version,
        replay.live_files.len(),
        report.rows,
        replay.epochs.len()
    );
    println!(
        "  skipped       {} invalid messages, each listed by topic/partition/offset in its epoch's commitInfo",
        report.skipped
    );
    if report.ok() {
        println!(
            "  exactly-once  OK: all {} Kafka offsets accounted for once ({} rows + {} skipped), none twice",
            produced.total,
            report.rows,
            report.skipped
        );
    } else {
        println!(
            "  exactly-once  FAILED: {} missing, {} doubled, {} unexpected (first: {:?} {:?})",
            report.missing.len(),
            report.duplicated.len(),
            report.unexpected.len(),
            report.missing.first(),
            report.duplicated.first()
        );
        failures.push("exactly-once");
    }
    if report.skipped != produced.malformed {
        failures.push("skipped count");
        println!(
            "  skipped       FAILED: {} skipped but {} malformed were produced",
            report.skipped, produced.malformed
        );
    }
    Ok(replay)
}

/// Every produced order id in the table's live files exactly as often as it was produced.
fn check_orders(
    table_dir: &Path,
    replay: &audit::LogReplay,
    produced: &Produced,
    failures: &mut Vec<&'static str>,
) -> anyhow::Result<()> {
    let mut in_table: HashMap<String, u64> = HashMap::new();
    for id in audit::read_string_column(table_dir, &replay.live_files, "order_id")? {
        *in_table.entry(id.unwrap_or_default()).or_default() += 1;
    }
    if in_table == produced.orders {
        println!(
            "  orders        OK: all {} order ids present, each as often as produced ({} producer duplicates kept: watermark dedup is not configured in this demo)",
            produced.orders.len(),
            produced.duplicates
        );
    } else {
        failures.push("orders");
        println!("  orders        FAILED: the table's order ids differ from what was produced");
    }
    Ok(())
}

fn demo_config(brokers: &str, epoch_records: u64) -> String {
    format!(
        r#"{DEMO_CONFIG_MARK}
pipeline_id = "demo-orders"

[source]
brokers = "{brokers}"
topics = ["{TOPIC}"]

[sink]
table_uri = "orders"
source_columns = true
columns = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "customer", type = "string", nullable = false }},
  {{ name = "amount", type = "double", nullable = false }},
  {{ name = "currency", type = "string", nullable = false }},
  {{ name = "created_at", type = "timestamp", nullable = false }},
]

[checkpoint]
interval_ms = 500
max_records = {epoch_records}

[errors]
on_invalid_record = "skip"
"#
    )
}

fn produce(brokers: &str, options: &DemoOptions) -> anyhow::Result<Produced> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        // The mock cluster keeps at most 5 MiB (or 100k messages) per partition, counted as
        // stored: compressed batches let the default 200k orders fit in 4 partitions.
        .set("compression.type", "gzip")
        .create()
        .context("cannot create the demo producer")?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut produced = Produced::default();
    let base_ms: i64 = 1_764_000_000_000;
    let currencies = ["EUR", "USD", "GBP", "JPY"];
    let send =
        |partition: i32, key: &[u8], value: &[u8], produced: &mut Produced| -> anyhow::Result<()> {
            let record = BaseRecord::to(TOPIC)
                .partition(partition)
                .key(key)
                .payload(value);
            crate::produce::send_retrying(&producer, record).context("producing a demo message")?;
            produced.total += 1;
            *produced
                .per_partition
                .entry((TOPIC.to_string(), partition))
                .or_default() += 1;
            Ok(())
        };
    let mut i: u64 = 0;
    while produced.total < options.records {
        let partition = (i % options.partitions as u64) as i32;
        let order_id = format!("o-{i:08}");
        if rng.random_bool(options.malformed_rate) {
            let bad: Vec<u8> = match i % 3 {
                0 => format!(r#"{{"order_id":"{order_id}","amount":"#).into_bytes(),
                1 => format!(r#"{{"order_id":"{order_id}","customer":"c","amount":"twelve","currency":"EUR","created_at":"2026-01-01T00:00:00Z"}}"#).into_bytes(),
                _ => vec![0xff, 0xfe, 0x00, 0x13],
            };
            send(partition, order_id.as_bytes(), &bad, &mut produced)?;
            produced.malformed += 1;
        } else {
            let value = format!(
                r#"{{"order_id":"{order_id}","customer":"c-{}","amount":{:.2},"currency":"{}","created_at":{}}}"#,
                rng.random_range(0..5000),
                rng.random_range(1.0..500.0),
                currencies[rng.random_range(0..currencies.len())],
                (base_ms + i as i64 * 7) * 1000
            );
            // A producer duplicate: the same message sent again, as after a lost ack.
            let duplicate =
                produced.total + 1 < options.records && rng.random_bool(options.duplicate_rate);
            for _ in 0..1 + u64::from(duplicate) {
                send(
                    partition,
                    order_id.as_bytes(),
                    value.as_bytes(),
                    &mut produced,
                )?;
                *produced.orders.entry(order_id.clone()).or_default() += 1;
            }
            produced.duplicates += u64::from(duplicate);
        }
        i += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(60)))
        .context("flushing the demo producer")?;
    Ok(produced)
}

/// The mock cluster silently drops a partition's oldest messages past its size limit; the
/// exactly-once check counts from offset 0, so make sure nothing was dropped.
fn check_nothing_dropped(brokers: &str, produced: &Produced) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tidemark-demo-check")
        .create()
        .context("cannot create the demo's watermark reader")?;
    for (topic, partition) in produced.per_partition.keys() {
        let (low, _) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(10))
            .context("reading the demo topic's watermarks")?;
        if low > 0 {
            bail!(
                "the in-process mock cluster dropped the first {low} messages of {topic}/{partition} \
                 (it keeps at most 5 MiB or 100k messages per partition): use fewer --records or \
                 more --partitions"
            );
        }
    }
    Ok(())
}

fn spawn_run(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--until-caught-up")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

/// Waits until the table has `epochs` commits after its creation, then SIGKILLs `child`.
/// Returns the table version seen at the kill, or `None` if the child ended first.
fn kill_after_commits(
    child: &mut Child,
    table_dir: &Path,
    epochs: u64,
) -> anyhow::Result<Option<u64>> {
    let log_dir = table_dir.join("_delta_log");
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("run 1 failed before it could be killed ({status})");
            }
            return Ok(None);
        }
        let commits = std::fs::read_dir(&log_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count() as u64
            })
            .unwrap_or(0);
        if commits > epochs {
            child.kill().context("SIGKILL of run 1")?;
            child.wait()?;
            return Ok(Some(commits - 1));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
