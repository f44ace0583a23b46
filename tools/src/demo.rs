//! `tidemark demo`: the whole product on one machine with no external service.
//!
//! It starts librdkafka's in-process mock cluster (a real Kafka-protocol listener on
//! 127.0.0.1), produces a stream of order events with producer retries and malformed messages,
//! runs the real pipeline (the default settings plus watermark dedup) as a child process,
//! kills it with SIGKILL part-way, restarts it, produces more, deletes the checkpoint
//! directory and runs it a third time, and then audits the table and the dead-letter table
//! independently of deltalake ([`crate::audit`]). It prints only what it checked.

use std::collections::{BTreeMap, BTreeSet};
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

use crate::audit::{self, Coordinates};
use crate::child::KillOnDrop;
use crate::child_log::strip_ansi;

const TOPIC: &str = "orders";
const PIPELINE_ID: &str = "demo-orders";
/// The dedup window of the demo's pipeline.
const ALLOWED_LATENESS_MS: u64 = 60_000;
/// First line of the config the demo writes: marks a directory the demo may replace.
const DEMO_CONFIG_MARK: &str = "# Written by `tidemark demo`.";
/// What the demo prints to show how to read the table with engines that share no code with
/// Tidemark (the table's path is its last argument); the demo runs it when python3 can.
const PYTHON_QUERY: &str = "import sys, duckdb, deltalake; t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_dataset(); print(duckdb.sql('select count(*), count(distinct order_id) from t').fetchall()[0])";

/// The faults the demo injects, listed by `tidemark demo --help`.
const DEMO_FAULTS: &str = "\
The pipeline runs with the default settings plus watermark dedup on order_id. Faults injected:
  - producer retries: some order events are sent twice, as after a lost ack (--duplicate-rate);
    the pipeline drops and counts each second copy
  - malformed messages: broken JSON, invalid UTF-8, a field of the wrong type (--malformed-rate);
    they land in the dead-letter table (orders_dead_letters) with their reason
  - SIGKILL of the pipeline after --kill-after-epochs commits, then a restart
  - the checkpoint directory (WAL and checkpoint store) deleted before the third run, which
    resumes from the table alone; the first message it reads is a producer retry of an order
    written before the loss
Then both tables are audited by replaying their _delta_log and reading the Parquet files:
every Kafka offset once as a row, a dropped duplicate or a dead letter; every order id once.";

/// Options of `tidemark demo` (the faults it injects are in [`DEMO_FAULTS`]).
#[derive(Debug, Clone, Args)]
#[command(after_help = DEMO_FAULTS)]
pub struct DemoOptions {
    /// Directory for the demo's tables, config, checkpoint directory and logs (its previous
    /// content is replaced).
    #[arg(long, default_value = "tidemark-demo")]
    pub dir: PathBuf,
    /// Messages to produce (half before the SIGKILL run, half before the run after the
    /// checkpoint loss).
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Share of order events the producer sends twice (a retry after a lost ack).
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

/// What the generator sent, to check the tables against.
#[derive(Debug, Default)]
struct Produced {
    total: u64,
    /// Producer retries sent (the second copy of an order event).
    duplicates: u64,
    malformed: u64,
    /// Next offset of each partition (= messages sent to it).
    per_partition: BTreeMap<(String, i32), i64>,
    /// Every valid order id sent.
    orders: BTreeSet<String>,
    /// Coordinates of the producer retries: the pipeline must drop each.
    retries: BTreeSet<Coordinates>,
    /// Coordinates of the malformed messages, with the dead-letter reason each must get.
    dead: BTreeMap<Coordinates, &'static str>,
}

/// The stream generator: the producer, the random source and what was sent so far.
struct Generator {
    producer: ThreadedProducer<DefaultProducerContext>,
    rng: StdRng,
    produced: Produced,
    /// Index of the next order event.
    next: u64,
    /// The newest valid order sent: (partition, order id, value).
    last_valid: Option<(i32, String, String)>,
}

/// librdkafka's in-process mock cluster.
type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A run's JSON summary line, and its wall time.
struct RunResult {
    summary: serde_json::Value,
    secs: f64,
}

/// Runs the demo, by stage: prepare --dir, start the mock cluster, produce the first half,
/// run the pipeline with a SIGKILL and a restart, produce the second half, delete the
/// checkpoint directory and run again, audit the tables; an error if any check fails.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&options.duplicate_rate)
        || !(0.0..1.0).contains(&options.malformed_rate)
    {
        bail!("--duplicate-rate and --malformed-rate must be in [0, 1)");
    }
    let dir = prepare_dir(&options.dir)?;
    println!(
        "Tidemark demo: Kafka (in-process mock cluster) -> Delta table, through a SIGKILL and a lost checkpoint store"
    );
    let cluster = start_cluster(options.partitions)?;
    let brokers = cluster.bootstrap_servers();
    let config_path = write_config(&dir, &brokers, options.records)?;
    println!(
        "  pipeline      {}: the defaults plus [dedup] key = [\"order_id\"], event_time = \"created_at\", allowed_lateness_ms = {ALLOWED_LATENESS_MS}",
        config_path.display()
    );
    let mut generator = Generator::new(&brokers, options.seed)?;
    produce_stream(&mut generator, &options, options.records / 2, "produced")?;
    let table_dir = dir.join("orders");
    let mut runs =
        run_killed_and_restarted(&dir, &config_path, &table_dir, options.kill_after_epochs)?;
    produce_stream(&mut generator, &options, options.records, "produced")?;
    check_nothing_dropped(&brokers, &generator.produced)?;
    runs.push(run_after_checkpoint_loss(&dir, &config_path)?);
    let produced = generator.finish();
    let (failures, rows) = audit_tables(&table_dir, &produced)?;
    query_with_python(&table_dir, rows);
    let pipeline_secs: f64 = runs.iter().map(|r| r.secs).sum();
    println!(
        "  throughput    {:.0} records/s end to end ({} records in {:.2} s across the three runs, incl. both recoveries)",
        produced.total as f64 / pipeline_secs,
        produced.total,
        pipeline_secs
    );
    println!(
        "  logs          {} (and run-2.log, run-3.log)",
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

/// Produces messages until `up_to` have been sent in all, and says what they hold.
fn produce_stream(
    generator: &mut Generator,
    options: &DemoOptions,
    up_to: u64,
    label: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let before = (
        generator.produced.total,
        generator.produced.duplicates,
        generator.produced.malformed,
    );
    let resent = generator.produce(options, up_to)?;
    let p = &generator.produced;
    println!(
        "  {label:<13} {} messages to {TOPIC} ({} partitions) in {:.1} s: {} producer retries (duplicates{}), {} malformed",
        p.total - before.0,
        options.partitions,
        started.elapsed().as_secs_f64(),
        p.duplicates - before.1,
        if resent {
            ", the first a retry of the newest order already in the table"
        } else {
            ""
        },
        p.malformed - before.2
    );
    Ok(())
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
/// up; returns both runs (run 1 with no summary).
fn run_killed_and_restarted(
    dir: &Path,
    config_path: &Path,
    table_dir: &Path,
    kill_after_epochs: u64,
) -> anyhow::Result<Vec<RunResult>> {
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let started = Instant::now();
    let mut first = spawn_run(&exe, config_path, &dir.join("run-1.log"))?;
    let killed_at = kill_after_commits(&mut first, table_dir, kill_after_epochs)?;
    let first = RunResult {
        summary: serde_json::Value::Null,
        secs: started.elapsed().as_secs_f64(),
    };
    match killed_at {
        Some(version) => println!(
            "  run 1         killed with SIGKILL after {:.2} s, table at version {version}",
            first.secs
        ),
        None => println!("  run 1         finished before it could be killed (no crash was shown)"),
    }
    let second = run_to_end(&exe, dir, config_path, 2)?;
    print_run(2, &second);
    Ok(vec![first, second])
}

/// Deletes the pipeline's checkpoint directory (WAL and checkpoint store), then runs it until
/// caught up and shows the log line saying it resumed from the table.
fn run_after_checkpoint_loss(dir: &Path, config_path: &Path) -> anyhow::Result<RunResult> {
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let state_dir = dir.join(".tidemark").join(PIPELINE_ID);
    std::fs::remove_dir_all(&state_dir)
        .with_context(|| format!("cannot delete {}", state_dir.display()))?;
    println!(
        "  fault 2       deleted the checkpoint directory {} (WAL and checkpoint store)",
        state_dir.display()
    );
    let third = run_to_end(&exe, dir, config_path, 3)?;
    print_run(3, &third);
    let log_path = dir.join("run-3.log");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("cannot read {}", log_path.display()))?;
    match strip_ansi(&log)
        .lines()
        .find(|l| l.contains("CHECKPOINT STORE LOST"))
    {
        Some(line) => println!("                log: {}", log_message(line)),
        None => bail!(
            "run 3 did not say it resumed from the table; see {}",
            log_path.display()
        ),
    }
    Ok(third)
}

/// Runs the pipeline until caught up, logging to `run-<n>.log`; its summary and wall time.
fn run_to_end(exe: &Path, dir: &Path, config_path: &Path, n: u32) -> anyhow::Result<RunResult> {
    let log = dir.join(format!("run-{n}.log"));
    let started = Instant::now();
    let child = spawn_run(exe, config_path, &log)?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for run {n}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("run {n} failed ({}); see {}", output.status, log.display());
    }
    let summary = crate::child_log::summary_line(&output.stdout)
        .with_context(|| format!("run {n} printed no summary"))?;
    Ok(RunResult { summary, secs })
}

fn print_run(n: u32, run: &RunResult) {
    let s = &run.summary;
    let first_commit = match s["first_commit_ms"].as_u64() {
        Some(ms) => format!("first commit {ms} ms after start"),
        None => "no commit".to_string(),
    };
    println!(
        "  run {n}         recovery case {}, {first_commit}; resumed at epoch {}, caught up: {} epochs, {} records read, {} duplicates dropped, {} dead-lettered",
        s["recovery"]["case"].as_str().unwrap_or("?"),
        s["first_epoch"],
        s["epochs_committed"],
        s["records_read"],
        s["duplicates"],
        s["dead_letters"]
    );
}

/// A log line from its level on, without the timestamp, target and fields.
fn log_message(line: &str) -> String {
    let line = line.trim();
    let level_at = ["ERROR", "WARN", "INFO"]
        .iter()
        .filter_map(|l| line.find(l))
        .min()
        .unwrap_or(0);
    let (level, rest) = line[level_at..].split_once(' ').unwrap_or(("", line));
    let message = match rest.find("CHECKPOINT STORE LOST") {
        Some(at) => &rest[at..],
        None => rest,
    };
    let message = message.split(" table_txn=").next().unwrap_or(message);
    format!("{level} {message}")
}

/// The audit (log replay + Parquet, no deltalake snapshot code): prints each check and
/// returns the names of those that failed, and the table's rows.
fn audit_tables(
    table_dir: &Path,
    produced: &Produced,
) -> anyhow::Result<(Vec<&'static str>, usize)> {
    let mut failures = Vec::new();
    let replay = check_offsets(table_dir, produced, &mut failures)?;
    check_duplicates(&replay, produced, &mut failures);
    check_dead_letters(table_dir, produced, &mut failures)?;
    let rows = check_orders(table_dir, &replay, produced, &mut failures)?;
    Ok((failures, rows))
}

/// Every produced Kafka offset once: as a row, as a dead letter, or (the producer retries, and
/// only those) in neither table. Returns the log replay.
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
    let dropped: BTreeSet<Coordinates> = report.missing.iter().cloned().collect();
    let ok = report.duplicated.is_empty()
        && report.unexpected.is_empty()
        && report.skipped == 0
        && dropped == produced.retries;
    if ok {
        println!(
            "  exactly-once  OK: all {} Kafka offsets accounted for once: {} rows + {} dropped duplicates + {} dead letters, none twice",
            produced.total,
            report.rows,
            dropped.len(),
            report.dead_letters
        );
    } else {
        let lost: Vec<_> = dropped.difference(&produced.retries).take(3).collect();
        let written: Vec<_> = produced.retries.difference(&dropped).take(3).collect();
        println!(
            "  exactly-once  FAILED: {} missing (first {lost:?}), {} producer retries written (first {written:?}), {} doubled, {} unexpected, {} skipped (first doubled: {:?})",
            dropped.difference(&produced.retries).count(),
            produced.retries.difference(&dropped).count(),
            report.duplicated.len(),
            report.unexpected.len(),
            report.skipped,
            report.duplicated.first()
        );
        failures.push("exactly-once");
    }
    Ok(replay)
}

/// The pipeline's own count of dropped duplicates (summed over the commits) is the number of
/// producer retries sent.
fn check_duplicates(
    replay: &audit::LogReplay,
    produced: &Produced,
    failures: &mut Vec<&'static str>,
) {
    let counted: u64 = replay.epochs.iter().map(|(_, e)| e.duplicates).sum();
    let late: u64 = replay.epochs.iter().map(|(_, e)| e.late).sum();
    if counted == produced.duplicates && late == 0 {
        println!(
            "  duplicates    {counted} dropped (the pipeline's count, summed over the table's commits) = {} producer retries sent; none written, none late",
            produced.duplicates
        );
    } else {
        failures.push("duplicates");
        println!(
            "  duplicates    FAILED: {counted} dropped and {late} late, but {} producer retries were sent",
            produced.duplicates
        );
    }
}

/// Every malformed message once in the dead-letter table, with the reason it should have.
fn check_dead_letters(
    table_dir: &Path,
    produced: &Produced,
    failures: &mut Vec<&'static str>,
) -> anyhow::Result<()> {
    let Some(dlq) = audit::dead_letter_dir(table_dir) else {
        if produced.dead.is_empty() {
            println!("  dead letters  none (no malformed message was produced)");
        } else {
            failures.push("dead letters");
            println!(
                "  dead letters  FAILED: {} malformed messages produced but no dead-letter table",
                produced.dead.len()
            );
        }
        return Ok(());
    };
    let letters = audit::read_dead_letters(&dlq)?;
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, reason) in &letters {
        *by_reason.entry(reason.as_str()).or_default() += 1;
    }
    let reasons = by_reason
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let got: BTreeMap<Coordinates, &str> = letters
        .iter()
        .map(|(c, r)| (c.clone(), r.as_str()))
        .collect();
    let expected: BTreeMap<Coordinates, &str> =
        produced.dead.iter().map(|(c, r)| (c.clone(), *r)).collect();
    if got.len() == letters.len() && got == expected {
        println!(
            "  dead letters  {} in {}: {reasons} (each malformed message once, with its reason and raw bytes)",
            letters.len(),
            dlq.display()
        );
    } else {
        failures.push("dead letters");
        println!(
            "  dead letters  FAILED: {} in {} ({reasons}), but {} malformed messages were produced",
            letters.len(),
            dlq.display(),
            produced.dead.len()
        );
    }
    Ok(())
}

/// Every produced order id exactly once in the table's live files; returns the rows.
fn check_orders(
    table_dir: &Path,
    replay: &audit::LogReplay,
    produced: &Produced,
    failures: &mut Vec<&'static str>,
) -> anyhow::Result<usize> {
    let ids = audit::read_string_column(table_dir, &replay.live_files, "order_id")?;
    let rows = ids.len();
    let distinct: BTreeSet<String> = ids.into_iter().flatten().collect();
    if distinct.len() == rows && distinct == produced.orders {
        println!(
            "  orders        OK: {rows} rows, {} distinct order ids: every order produced exactly once",
            distinct.len()
        );
    } else {
        failures.push("orders");
        println!(
            "  orders        FAILED: {rows} rows, {} distinct order ids, {} order ids produced",
            distinct.len(),
            produced.orders.len()
        );
    }
    Ok(rows)
}

/// Prints how to query the table with Python deltalake and DuckDB, and runs that query when
/// python3 has both (the audit read `rows` rows).
fn query_with_python(table_dir: &Path, rows: usize) {
    let path = table_dir.display().to_string();
    let shown = if path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        path.clone()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    };
    println!("  query         python3 -c \"{PYTHON_QUERY}\" {shown}");
    let out = Command::new("python3")
        .args(["-c", PYTHON_QUERY])
        .arg(&path)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let verdict = if got == format!("({rows}, {rows})") {
                "as the audit read"
            } else {
                "NOT what the audit read"
            };
            println!(
                "                -> {got} (rows, distinct order ids) read by Python deltalake + DuckDB, {verdict}"
            )
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError") => {
            println!("                (not run: this python3 lacks deltalake or duckdb; pip install deltalake duckdb)")
        }
        Ok(out) => println!(
            "                (the query failed here: {})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("no error output")
        ),
        Err(_) => println!("                (not run: no python3 here)"),
    }
}

fn demo_config(brokers: &str, epoch_records: u64) -> String {
    format!(
        r#"{DEMO_CONFIG_MARK}
# The default settings (dead letters to orders_dead_letters, checkpoint directory
# .tidemark/{PIPELINE_ID}) plus watermark dedup; max_records only so the SIGKILL lands part-way.
pipeline_id = "{PIPELINE_ID}"

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
max_records = {epoch_records}

[dedup]
key = ["order_id"]
event_time = "created_at"
allowed_lateness_ms = {ALLOWED_LATENESS_MS}
"#
    )
}

impl Generator {
    fn new(brokers: &str, seed: u64) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("enable.idempotence", "true")
            // The mock cluster keeps at most 5 MiB (or 100k messages) per partition, counted as
            // stored: compressed batches let the default 200k orders fit in 4 partitions.
            .set("compression.type", "gzip")
            .create()
            .context("cannot create the demo producer")?;
        Ok(Self {
            producer,
            rng: StdRng::seed_from_u64(seed),
            produced: Produced::default(),
            next: 0,
            last_valid: None,
        })
    }

    /// Sends one message; returns its coordinates (the idempotent producer keeps a
    /// partition's messages in send order, so its offset is the count sent before it).
    fn send(&mut self, partition: i32, key: &[u8], value: &[u8]) -> anyhow::Result<Coordinates> {
        let record = BaseRecord::to(TOPIC)
            .partition(partition)
            .key(key)
            .payload(value);
        crate::produce::send_retrying(&self.producer, record)
            .context("producing a demo message")?;
        self.produced.total += 1;
        let next = self
            .produced
            .per_partition
            .entry((TOPIC.to_string(), partition))
            .or_default();
        let offset = *next;
        *next += 1;
        Ok((TOPIC.to_string(), partition, offset))
    }

    /// Produces until `up_to` messages were sent in all, and flushes. A later call first
    /// re-sends the newest valid order of the earlier ones (a retry arriving after a
    /// restart); returns true when it did.
    fn produce(&mut self, options: &DemoOptions, up_to: u64) -> anyhow::Result<bool> {
        let base_ms: i64 = 1_764_000_000_000;
        let currencies = ["EUR", "USD", "GBP", "JPY"];
        let mut resent = false;
        if let Some((partition, order_id, value)) = self.last_valid.clone() {
            if self.produced.total < up_to && options.duplicate_rate > 0.0 {
                let at = self.send(partition, order_id.as_bytes(), value.as_bytes())?;
                self.produced.retries.insert(at);
                self.produced.duplicates += 1;
                resent = true;
            }
        }
        while self.produced.total < up_to {
            let i = self.next;
            self.next += 1;
            let partition = (i % options.partitions as u64) as i32;
            let order_id = format!("o-{i:08}");
            if self.rng.random_bool(options.malformed_rate) {
                let (bad, reason): (Vec<u8>, &'static str) = match i % 3 {
                    0 => (
                        format!(r#"{{"order_id":"{order_id}","amount":"#).into_bytes(),
                        "malformed_json",
                    ),
                    1 => (
                        format!(r#"{{"order_id":"{order_id}","customer":"c","amount":"twelve","currency":"EUR","created_at":"2026-01-01T00:00:00Z"}}"#).into_bytes(),
                        "schema_mismatch",
                    ),
                    _ => (vec![0xff, 0xfe, 0x00, 0x13], "malformed_json"),
                };
                let at = self.send(partition, order_id.as_bytes(), &bad)?;
                self.produced.dead.insert(at, reason);
                self.produced.malformed += 1;
                continue;
            }
            let rng = &mut self.rng;
            let value = format!(
                r#"{{"order_id":"{order_id}","customer":"c-{}","amount":{:.2},"currency":"{}","created_at":{}}}"#,
                rng.random_range(0..5000),
                rng.random_range(1.0..500.0),
                currencies[rng.random_range(0..currencies.len())],
                (base_ms + i as i64 * 7) * 1000
            );
            // A producer retry: the same message sent again, as after a lost ack.
            let retry = self.produced.total + 1 < up_to && rng.random_bool(options.duplicate_rate);
            self.send(partition, order_id.as_bytes(), value.as_bytes())?;
            if retry {
                let at = self.send(partition, order_id.as_bytes(), value.as_bytes())?;
                self.produced.retries.insert(at);
                self.produced.duplicates += 1;
            }
            self.produced.orders.insert(order_id.clone());
            self.last_valid = Some((partition, order_id, value));
        }
        self.producer
            .flush(Timeout::After(Duration::from_secs(60)))
            .context("flushing the demo producer")?;
        Ok(resent)
    }

    fn finish(self) -> Produced {
        self.produced
    }
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

fn spawn_run(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<KillOnDrop> {
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
        .map(KillOnDrop::new)
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
