//! `tidemark bench-replicate`: steady-state replication lag behind a running pipeline.
//!
//! Against a real broker (`--brokers`, e.g. tansu; `scripts/bench-replicate` starts one), it
//! produces JSON records at a steady rate for `--seconds`, runs the real pipeline (`tidemark
//! run`, one commit per `--commit-interval`) and `tidemark replicate --follow` as child processes,
//! and samples the replica's lag read-only every 100 ms ([`tidemark_table::measure_lag`], the
//! function `tidemark status` uses). After a warm-up it reports the versions and seconds behind
//! at p50 / p99 / max, and writes them to `<dir>/bench-replicate.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;

use crate::child::KillOnDrop;
use crate::produce::send_retrying;

/// Options of `tidemark bench-replicate`.
#[derive(Debug, Clone, Args)]
pub struct ReplicateBenchOptions {
    /// Directory for the table, the replica, configs and logs (replaced).
    #[arg(long, default_value = "tidemark-bench-replicate")]
    pub dir: PathBuf,
    /// The broker (e.g. a tansu address; `scripts/bench-replicate` starts one).
    #[arg(long)]
    pub brokers: String,
    /// How long to produce (seconds).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seconds at the start not counted (the first commits, the replica's first copy).
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Records per second produced.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// The pipeline's checkpoint interval (one Delta commit each), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// `tidemark replicate --interval`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub replicate_interval_ms: u64,
}

/// The measured lag.
#[derive(Debug, Serialize)]
struct LagReport {
    samples: usize,
    source_versions: u64,
    commits_per_s: f64,
    versions_behind_p50: u64,
    versions_behind_p99: u64,
    versions_behind_max: u64,
    seconds_behind_p50: f64,
    seconds_behind_p99: f64,
    seconds_behind_max: f64,
    records_produced: u64,
    replicate_summary: serde_json::Value,
}

fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<KillOnDrop> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .env_remove("TIDEMARK_CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map(KillOnDrop::new)
        .with_context(|| format!("cannot run {}", exe.display()))
}

fn terminate(child: &Child) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our live child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Runs the benchmark; see the module documentation.
pub async fn run(o: ReplicateBenchOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    if o.dir.exists() {
        std::fs::remove_dir_all(&o.dir)
            .with_context(|| format!("cannot clear {}", o.dir.display()))?;
    }
    std::fs::create_dir_all(&o.dir)?;
    let dir = std::path::absolute(&o.dir)?;
    let topic = format!(
        "bench-replicate-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    crate::bench::create_topic(&o.brokers, &topic, 2).await?;
    let config = dir.join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"pipeline_id = "bench-replicate"
[source]
brokers = "{brokers}"
topics = ["{topic}"]
[sink]
table_uri = "table"
columns = [
  {{ name = "id", type = "string", nullable = false }},
  {{ name = "amount", type = "double" }},
  {{ name = "note", type = "string" }},
]
[checkpoint]
interval_ms = {interval}
max_records = 100000000
max_bytes = 4294967296
[replica]
table_uri = "replica"
"#,
            brokers = o.brokers,
            interval = o.commit_interval_ms
        ),
    )?;
    let (table, replica) = (dir.join("table"), dir.join("replica"));

    // A steady producer.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer_thread = {
        let (brokers, topic, stop, produced, rate) = (
            o.brokers.clone(),
            topic.clone(),
            stop.clone(),
            produced.clone(),
            o.rate,
        );
        std::thread::spawn(move || -> anyhow::Result<()> {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "5")
                .create()?;
            let start = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while i < due {
                    let value = format!(
                        r#"{{"id":"order-{i:012}","amount":{}.5,"note":"steady record {i} of the replication lag benchmark, padded to about two hundred bytes ......................................"}}"#,
                        i % 1000
                    );
                    let key = i.to_string();
                    send_retrying(
                        &producer,
                        BaseRecord::to(&topic)
                            .partition((i % 2) as i32)
                            .key(&key)
                            .payload(&value),
                    )?;
                    i += 1;
                    produced.store(i, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            producer.flush(Duration::from_secs(30))?;
            Ok(())
        })
    };
    let config_arg = config.display().to_string();
    let mut pipeline = spawn(
        &exe,
        &["run", "--config", &config_arg],
        &dir.join("pipeline.log"),
    )?;
    // The replica follows once the table exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !table.join("_delta_log").exists() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the pipeline created no table in 60 s (see {}/pipeline.log)",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let interval = format!("{}ms", o.replicate_interval_ms);
    let (table_arg, replica_arg) = (table.display().to_string(), replica.display().to_string());
    let follower = spawn(
        &exe,
        &[
            "replicate",
            "--from",
            &table_arg,
            "--to",
            &replica_arg,
            "--follow",
            "--interval",
            &interval,
        ],
        &dir.join("replicate.log"),
    )?;

    let source = tidemark_table::open_store(&table_arg)?;
    let copy = tidemark_table::open_store(&replica_arg)?;
    let started = Instant::now();
    let mut versions = Vec::new();
    let mut seconds = Vec::new();
    let mut first_version = None;
    let mut last_version = 0;
    while started.elapsed() < Duration::from_secs(o.seconds) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() < Duration::from_secs(o.warmup) {
            continue;
        }
        match tidemark_table::measure_lag(&source, &copy).await {
            Ok(lag) => {
                let v = lag.source_version.unwrap_or(0);
                first_version.get_or_insert(v);
                last_version = v;
                versions.push(lag.versions_behind);
                seconds.push(lag.seconds_behind);
            }
            Err(e) => tracing::warn!(error = %e, "lag sample failed"),
        }
        if let Ok(Some(status)) = pipeline.try_wait() {
            anyhow::bail!(
                "the pipeline exited early ({status}); see {}/pipeline.log",
                dir.display()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    terminate(&pipeline);
    pipeline.wait()?;
    terminate(&follower);
    let out = follower.wait_with_output()?;
    let replicate_summary =
        crate::child_log::summary_line(&out.stdout).unwrap_or(serde_json::Value::Null);
    versions.sort_unstable();
    seconds.sort_by(f64::total_cmp);
    let measured_s = o.seconds.saturating_sub(o.warmup).max(1) as f64;
    let report = LagReport {
        samples: versions.len(),
        source_versions: last_version.saturating_sub(first_version.unwrap_or(0)),
        commits_per_s: last_version.saturating_sub(first_version.unwrap_or(0)) as f64 / measured_s,
        versions_behind_p50: crate::stats::percentile(&versions, 0.5).unwrap_or(0),
        versions_behind_p99: crate::stats::percentile(&versions, 0.99).unwrap_or(0),
        versions_behind_max: versions.last().copied().unwrap_or(0),
        seconds_behind_p50: crate::stats::percentile(&seconds, 0.5).unwrap_or(0.0),
        seconds_behind_p99: crate::stats::percentile(&seconds, 0.99).unwrap_or(0.0),
        seconds_behind_max: seconds.last().copied().unwrap_or(0.0),
        records_produced: produced.load(Ordering::Relaxed),
        replicate_summary,
    };
    std::fs::write(
        dir.join("bench-replicate.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "replication lag behind a pipeline committing every {} ms ({} records/s for {} s, {} s warm-up; replicate --interval {} ms):",
        o.commit_interval_ms, o.rate, o.seconds, o.warmup, o.replicate_interval_ms
    );
    println!(
        "  {} samples every 100 ms; source advanced {} versions ({:.2} commits/s)",
        report.samples, report.source_versions, report.commits_per_s
    );
    println!(
        "  versions behind  p50 {}  p99 {}  max {}",
        report.versions_behind_p50, report.versions_behind_p99, report.versions_behind_max
    );
    println!(
        "  seconds behind   p50 {:.2}  p99 {:.2}  max {:.2}",
        report.seconds_behind_p50, report.seconds_behind_p99, report.seconds_behind_max
    );
    println!(
        "  written to {}",
        dir.join("bench-replicate.json").display()
    );
    Ok(())
}
