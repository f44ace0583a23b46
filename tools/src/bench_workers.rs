//! `tidemark bench-workers`: throughput of a pipeline shared by 1, 2, 4 ... workers (scale-out
//! through a consumer group), against the broker's own consume ceiling measured in the same
//! run, and the commit conflicts sharing one table costs, per checkpoint interval.
//!
//! One stream is produced once. Each round first times, per worker count n, n plain
//! consumers side by side, each on its share of the partitions (`tidemark bench-consume
//! --partitions`): the broker's own consume limit at that parallelism. Then, per interval and worker count, starts that many `tidemark
//! run --worker-id wN --until-caught-up` processes on a fresh table and times them from the
//! first start to the last exit; the table must then hold every record once (its commits'
//! rows add up to the stream, and their claimed ranges tile each partition). Workers of a
//! run stop when their partitions are read to the end, so a run includes the group's joins
//! and rebalances: the cost of scaling out, not only its steady state.
//!
//! Prints one line per (interval, workers) with median records/s (first start to last exit,
//! and between the first and the last commit, which leaves out the group's first join), their
//! shares of the plain consumer, commits and commit conflicts per minute; writes
//! `workers.csv` to `--dir`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::mocking::MockCluster;

use crate::audit;
use crate::bench::{
    check_consumed, consume_command, create_topic, produce, write_config, StreamShape,
    UNCAPPED_EPOCH_RECORDS,
};
use crate::stats::median_f64;

/// Options of `tidemark bench-workers`.
#[derive(Debug, Clone, Args)]
pub struct WorkerBenchOptions {
    /// Directory for the tables, logs and `workers.csv` (replaced).
    #[arg(long, default_value = "tidemark-bench-workers")]
    pub dir: PathBuf,
    /// Records in the stream.
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Approximate JSON bytes per record.
    #[arg(long, default_value_t = 200)]
    pub record_bytes: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Worker counts to compare, comma-separated.
    #[arg(long, default_value = "1,2,4")]
    pub workers: String,
    /// Checkpoint intervals to compare, comma-separated (e.g. `200ms,1s`).
    #[arg(long, default_value = "200ms,1s")]
    pub intervals: String,
    /// Bootstrap servers of a real broker (default: librdkafka's in-process mock cluster).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Rounds; each row is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// One timed run of `workers` workers at `interval_ms`.
#[derive(Debug, Clone)]
struct WorkerRun {
    secs: f64,
    /// Records/s between the first and the last commit (commitInfo timestamps): the rate once
    /// the group has shared out the partitions, without the joins before the first commit.
    steady: f64,
    commits: u64,
    conflicts: u64,
    refused: u64,
}

fn parse_list<T: std::str::FromStr>(text: &str, what: &str) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--{what}: {s:?} is not a number"))
        })
        .collect()
}

fn parse_interval_ms(text: &str) -> anyhow::Result<u64> {
    crate::bench::parse_interval(text)?
        .with_context(|| format!("--intervals: {text:?}: workers need checkpoints (not `none`)"))
}

/// Runs the benchmark (see the module documentation).
pub async fn run(options: WorkerBenchOptions) -> anyhow::Result<()> {
    let workers: Vec<usize> = parse_list(&options.workers, "workers")?;
    if let Some(w) = workers
        .iter()
        .find(|w| **w == 0 || **w > options.partitions.max(0) as usize)
    {
        bail!(
            "--workers: {w} worker(s) for {} partitions: each worker needs at least one partition",
            options.partitions
        );
    }
    let intervals: Vec<u64> = options
        .intervals
        .split(',')
        .map(parse_interval_ms)
        .collect::<anyhow::Result<_>>()?;
    if options.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("cannot replace {}", options.dir.display()))?;
    }
    std::fs::create_dir_all(&options.dir)?;
    let dir = std::path::absolute(&options.dir)?;

    let mut _cluster = None;
    let (brokers, topic) = match &options.brokers {
        Some(b) => {
            let topic = format!("tidemark-bench-workers-{}", std::process::id());
            create_topic(b, &topic, options.partitions).await?;
            (b.clone(), topic)
        }
        None => {
            let cluster: MockCluster<'static, _> =
                MockCluster::new(1).context("cannot start librdkafka's mock cluster")?;
            cluster
                .create_topic("tidemark-bench-workers", options.partitions, 1)
                .context("cannot create the bench topic")?;
            let b = cluster.bootstrap_servers();
            _cluster = Some(cluster);
            (b, "tidemark-bench-workers".to_string())
        }
    };
    let started = Instant::now();
    let shape = StreamShape {
        records: options.records,
        record_bytes: options.record_bytes,
        partitions: options.partitions,
        keys: 0,
        duplicate_rate: 0.0,
        seed: 42,
    };
    let (produced, bytes) = produce(&brokers, &topic, &shape)?;
    println!(
        "tidemark bench-workers: {produced} records ({:.1} MB) into {topic} ({} partitions, {}) in {:.1} s",
        bytes as f64 / 1e6,
        options.partitions,
        options.brokers.as_deref().unwrap_or("in-process mock cluster"),
        started.elapsed().as_secs_f64()
    );

    // Per worker count: as many plain consumers side by side, each on its share.
    let mut ceiling: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    let mut runs: Vec<Vec<WorkerRun>> = vec![Vec::new(); intervals.len() * workers.len()];
    for round in 1..=options.repeat {
        for (j, n) in workers.iter().enumerate() {
            let rate = consumers_rate(&exe, &brokers, &topic, &shape, *n)?;
            eprintln!(
                "  round {round}/{}  {n} plain consumer(s): {rate:.0} records/s",
                options.repeat
            );
            ceiling[j].push(rate);
        }
        for (i, interval) in intervals.iter().enumerate() {
            for (j, n) in workers.iter().enumerate() {
                let run_dir = dir.join(format!("r{round}-{interval}ms-{n}w"));
                let run = workers_run(&exe, &run_dir, &brokers, &topic, *interval, *n, produced)?;
                eprintln!(
                    "  round {round}/{}  {interval:>5} ms, {n} worker(s): {:.0} records/s ({:.0} between first and last commit), {} commits, {} conflicts, {} refused",
                    options.repeat,
                    produced as f64 / run.secs,
                    run.steady,
                    run.commits,
                    run.conflicts,
                    run.refused
                );
                runs[i * workers.len() + j].push(run);
                // Only the figures are kept: the tables are as big as the stream.
                std::fs::remove_dir_all(&run_dir).ok();
            }
        }
    }

    let ceilings: Vec<f64> = ceiling.iter().map(|c| median_f64(c)).collect();
    let mut csv = String::from(
        "interval_ms,workers,records_per_s,consumers_records_per_s,share_of_consumers,steady_records_per_s,steady_share,commits_per_min,conflicts_per_min,refused\n",
    );
    for (j, n) in workers.iter().enumerate() {
        println!(
            "{n} plain consumer(s) side by side: {:.0} records/s (median of {})",
            ceilings[j], options.repeat
        );
    }
    println!(
        "{:>9} {:>7} {:>11} {:>9} {:>11} {:>9} {:>12} {:>14} {:>8}",
        "interval",
        "workers",
        "records/s",
        "of cons.",
        "steady r/s",
        "of cons.",
        "commits/min",
        "conflicts/min",
        "refused"
    );
    for (i, interval) in intervals.iter().enumerate() {
        for (j, n) in workers.iter().enumerate() {
            let these = &runs[i * workers.len() + j];
            let rate = median_f64(
                &these
                    .iter()
                    .map(|r| produced as f64 / r.secs)
                    .collect::<Vec<_>>(),
            );
            let per_min = |f: fn(&WorkerRun) -> u64| {
                median_f64(
                    &these
                        .iter()
                        .map(|r| f(r) as f64 * 60.0 / r.secs)
                        .collect::<Vec<_>>(),
                )
            };
            let ceiling_median = ceilings[j];
            let steady = median_f64(&these.iter().map(|r| r.steady).collect::<Vec<_>>());
            let steady_share = steady / ceiling_median.max(1e-9);
            let commits = per_min(|r| r.commits);
            let conflicts = per_min(|r| r.conflicts);
            let refused: u64 = these.iter().map(|r| r.refused).sum();
            let share = rate / ceiling_median.max(1e-9);
            println!(
                "{:>7}ms {n:>7} {rate:>11.0} {:>8.0}% {steady:>11.0} {:>8.0}% {commits:>12.1} {conflicts:>14.1} {refused:>8}",
                interval,
                share * 100.0,
                steady_share * 100.0
            );
            csv.push_str(&format!(
                "{interval},{n},{rate:.0},{ceiling_median:.0},{share:.3},{steady:.0},{steady_share:.3},{commits:.1},{conflicts:.1},{refused}\n"
            ));
        }
    }
    std::fs::write(dir.join("workers.csv"), csv)?;
    println!("wrote {}", dir.join("workers.csv").display());
    Ok(())
}

/// The `timestamp` of version `version`'s commitInfo, read from its log file.
fn commit_timestamp_ms(table: &Path, version: i64) -> anyhow::Result<i64> {
    let path = table.join("_delta_log").join(format!("{version:020}.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["commitInfo"]["timestamp"].as_i64())
        .with_context(|| format!("{}: no commitInfo timestamp", path.display()))
}

/// `n` plain consumers side by side, consumer k reading partitions k, k+n, k+2n ...: their
/// records/s together (all records over the slowest one's wall time).
fn consumers_rate(
    exe: &Path,
    brokers: &str,
    topic: &str,
    shape: &StreamShape,
    n: usize,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut children = Vec::new();
    for k in 0..n {
        let partitions: Vec<i32> = (0..shape.partitions)
            .filter(|p| *p as usize % n == k)
            .collect();
        // Record i went to partition i % partitions.
        let expect = (0..shape.records)
            .filter(|i| partitions.contains(&((i % shape.partitions as u64) as i32)))
            .count() as u64;
        let child = consume_command(exe, brokers, topic, expect, &partitions)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(crate::child::KillOnDrop::new)
            .context("cannot start a plain consumer")?;
        children.push((child, expect));
    }
    for (child, expect) in children {
        check_consumed(&child.wait_with_output()?, expect)?;
    }
    Ok(shape.records as f64 / t0.elapsed().as_secs_f64())
}

/// `n` workers over a fresh table until each has read its partitions to the end; checks the
/// table holds every record once.
fn workers_run(
    exe: &Path,
    run_dir: &Path,
    brokers: &str,
    topic: &str,
    interval_ms: u64,
    n: usize,
    produced: u64,
) -> anyhow::Result<WorkerRun> {
    let config = write_config(
        run_dir,
        brokers,
        topic,
        "table",
        Some(interval_ms),
        interval_ms,
        None,
        UNCAPPED_EPOCH_RECORDS,
    )?;
    let text = std::fs::read_to_string(&config)?;
    // A group of its own per run (a group per pipeline); static membership off: tansu 0.6.0
    // assigns nothing to static members.
    let text = text.replacen(
        "[source]\n",
        &format!(
            "[source]\ngroup = \"bench-{}-{}\"\nstatic_membership = false\n",
            std::process::id(),
            run_dir.file_name().and_then(|n| n.to_str()).unwrap_or("run")
        ),
        1,
    ) + "\n[source.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n";
    std::fs::write(&config, text)?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    for w in 0..n {
        let log = std::fs::File::create(run_dir.join(format!("w{w}.log")))?;
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--worker-id", &format!("w{w}"), "--until-caught-up"])
            .env("RUST_LOG", "info,buoyant_kernel=warn,deltalake_core=warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map(crate::child::KillOnDrop::new)
            .with_context(|| format!("cannot start worker w{w}"))?;
        children.push(child);
    }
    let mut conflicts = 0;
    let mut refused = 0;
    for (w, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "worker w{w} failed ({}); see {}",
                out.status,
                run_dir.join(format!("w{w}.log")).display()
            );
        }
        let summary = crate::child_log::summary_line(&out.stdout)
            .with_context(|| format!("no summary line from worker w{w}"))?;
        conflicts += summary["commit_conflicts"].as_u64().unwrap_or(0);
        refused += summary["stale_commits_refused"].as_u64().unwrap_or(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let table = run_dir.join("table");
    let replay = audit::replay_log(&table)?;
    let rows: u64 = replay.epochs.iter().map(|(_, i)| i.rows_written).sum();
    let stamps: Vec<(i64, u64)> = replay
        .epochs
        .iter()
        .map(|(v, i)| Ok((commit_timestamp_ms(&table, *v)?, i.rows_written)))
        .collect::<anyhow::Result<_>>()?;
    let first = stamps.iter().map(|(t, _)| *t).min().unwrap_or(0);
    let last = stamps.iter().map(|(t, _)| *t).max().unwrap_or(0);
    let first_rows: u64 = stamps
        .iter()
        .filter(|(t, _)| *t == first)
        .map(|(_, r)| r)
        .sum();
    let steady = (rows - first_rows) as f64 / ((last - first).max(1) as f64 / 1000.0);
    if rows != produced {
        bail!(
            "{n} worker(s) at {interval_ms} ms: the table's commits hold {rows} rows, {produced} were produced (see {})",
            run_dir.display()
        );
    }
    Ok(WorkerRun {
        secs,
        steady,
        commits: replay.epochs.len() as u64,
        conflicts,
        refused,
    })
}
