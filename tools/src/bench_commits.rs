//! `tidemark bench-commits`: does a Delta commit get slower as the log grows? Commits small
//! epochs through the real Delta sink (the pipeline's: fenced txn commit, durable local
//! store) one every `--interval`, with the pipeline's log maintenance after each (a Delta
//! checkpoint every `--checkpoint-every` commits, then expired-log cleanup), and compares the
//! commit latency (commit + maintenance) around commit 100 with that around the last commit.
//!
//! Writes `commits.csv` (one line per commit: epoch, version, commit µs, maintenance µs,
//! checkpoint written) to `--dir`, and prints the medians and their ratio.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tidemark_connectors::dead_letter::{self, DeadLetter};
use tidemark_connectors::delta::{
    table_url, CheckpointSchedule, CommitOutcome, DeltaSink, EpochCommitInfo, SinkOptions,
};
use tidemark_connectors::{Epoch, Positions};

/// Options of `tidemark bench-commits`.
#[derive(Debug, Clone, Args)]
pub struct CommitBenchOptions {
    /// Directory for the table and `commits.csv` (replaced).
    #[arg(long, default_value = "tidemark-bench-commits")]
    pub dir: PathBuf,
    /// Commits to make.
    #[arg(long, default_value_t = 10_000)]
    pub commits: u64,
    /// Time from one commit's start to the next's (the checkpoint interval of a pipeline).
    #[arg(long, default_value = "200ms", value_parser = parse_ms)]
    pub interval: Duration,
    /// A Delta checkpoint every this many commits (0: none, to see the log grow unchecked).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Rows per commit.
    #[arg(long, default_value_t = 100)]
    pub rows: usize,
    /// Commits on each side of commit 100 and of the last commit that the medians cover.
    #[arg(long, default_value_t = 50)]
    pub window: u64,
    /// Compact small files every this many commits (0: never), as `[maintenance]
    /// compact_every` does in a pipeline; without it every commit adds a live file.
    #[arg(long, default_value_t = 0)]
    pub compact_every: u64,
}

fn parse_ms(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (n, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else {
        (t, 1)
    };
    n.parse::<u64>()
        .map(|n| Duration::from_millis(n * mult))
        .map_err(|_| format!("{text:?} is not a duration such as 200ms"))
}

/// Runs the bench.
pub async fn run(o: CommitBenchOptions) -> anyhow::Result<()> {
    if o.dir.exists() {
        std::fs::remove_dir_all(&o.dir).with_context(|| format!("clear {}", o.dir.display()))?;
    }
    std::fs::create_dir_all(&o.dir)?;
    let table = o.dir.join("table");
    let url = table_url(&table.display().to_string())?;
    // The dead-letter table's schema: a real Tidemark table shape, 10 columns.
    let mut sink = DeltaSink::open_or_create_with(
        &url,
        "bench",
        "bench",
        dead_letter::delta_columns(),
        SinkOptions::default(),
    )
    .await?;
    let schema = sink.arrow_schema().clone();
    let mut schedule = CheckpointSchedule::new(o.checkpoint_every, None);
    use std::io::Write as _;
    let mut csv = std::io::BufWriter::new(std::fs::File::create(o.dir.join("commits.csv"))?);
    writeln!(
        csv,
        "epoch,version,commit_us,maintenance_us,checkpoint,live_files"
    )?;
    let location = tidemark_table::open_store(&table.display().to_string())?;
    let mut live_files = 0u64;
    let mut latencies: Vec<u64> = Vec::with_capacity(o.commits as usize);
    let started = Instant::now();
    let mut last_report = Instant::now();
    for e in 1..=o.commits {
        let tick = Instant::now();
        let epoch = Epoch::new(e);
        let letters: Vec<DeadLetter> = (0..o.rows)
            .map(|i| DeadLetter {
                topic: "bench".into(),
                partition: 0,
                offset: ((e - 1) * o.rows as u64 + i as u64) as i64,
                timestamp_ms: Some(0),
                key: None,
                value: Some(format!("{{\"id\":\"e{e}-{i}\"}}").into_bytes()),
                reason: "malformed_json",
                message: "bench".into(),
            })
            .collect();
        let refs: Vec<&DeadLetter> = letters.iter().collect();
        let batch = dead_letter::to_batch(&schema, "bench", epoch, &refs)?;
        let (adds, _) = sink.write_epoch_files(epoch, &[batch]).await?;
        let info = EpochCommitInfo {
            pipeline_id: "bench".into(),
            epoch,
            start_positions: Positions::default(),
            end_positions: Positions::default(),
            records_read: o.rows as u64,
            rows_written: o.rows as u64,
            records_skipped: 0,
            skipped: vec![],
            duplicates: 0,
            cross_partition_duplicates: 0,
            late: 0,
            dead_lettered: 0,
            watermark: None,
            run_id: None,
            topic_ids: Default::default(),
            cluster_id: None,
            partitions: vec![],
            generation: None,
        };
        let t0 = Instant::now();
        let version = match sink.commit_epoch(adds, &info).await? {
            CommitOutcome::Committed { version } => version.get(),
            other => anyhow::bail!("epoch {e}: {other:?}"),
        };
        let commit_us = t0.elapsed().as_micros() as u64;
        // The pipeline's log maintenance (tidemark_engine::maintenance::LogMaintenance).
        let t1 = Instant::now();
        let mut wrote = false;
        if schedule.due(version) {
            match sink.write_log_checkpoint().await {
                Ok(v) => {
                    schedule.written(v);
                    wrote = true;
                    sink.cleanup_expired_log(None).await?;
                }
                Err(err) => {
                    tracing::warn!("checkpoint failed (due again at the next commit): {err}")
                }
            }
        }
        live_files += 1;
        if o.compact_every > 0 && e.is_multiple_of(o.compact_every) {
            let report = tidemark_table::optimize::optimize(
                &location,
                tidemark_table::optimize::OptimizeOptions {
                    target_bytes: 128 << 20,
                    max_input_bytes: None,
                },
            )
            .await?;
            live_files = report.files_after;
            if let Some(v) = report.version {
                if schedule.due(v) {
                    if let Ok(w) = sink.write_log_checkpoint().await {
                        schedule.written(w);
                    }
                }
            }
        }
        let maintenance_us = t1.elapsed().as_micros() as u64;
        latencies.push(commit_us + maintenance_us);
        writeln!(
            csv,
            "{e},{version},{commit_us},{maintenance_us},{wrote},{live_files}"
        )?;
        csv.flush()?;
        if last_report.elapsed() >= Duration::from_secs(30) {
            tracing::info!(
                commit = e,
                of = o.commits,
                version,
                commit_ms = commit_us / 1000,
                elapsed_s = started.elapsed().as_secs(),
                "bench-commits progress"
            );
            last_report = Instant::now();
        }
        if let Some(rest) = o.interval.checked_sub(tick.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let window = |center: u64| -> Vec<u64> {
        let lo = center.saturating_sub(o.window).max(1);
        let hi = (center + o.window).min(o.commits);
        (lo..=hi).map(|e| latencies[(e - 1) as usize]).collect()
    };
    let last = o.commits.saturating_sub(o.window);
    let (mut early, mut late) = (window(100.min(o.commits)), window(last));
    early.sort_unstable();
    late.sort_unstable();
    let q = |v: &[u64], p: f64| crate::stats::percentile(v, p).unwrap_or(0);
    let (m_early, m_late) = (q(&early, 0.5), q(&late, 0.5));
    let ratio = m_late as f64 / m_early.max(1) as f64;
    println!(
        "bench-commits: {} commits every {:?}, checkpoint every {} commits, compaction every {}, {} rows each ({:.0} s)",
        o.commits,
        o.interval,
        o.checkpoint_every,
        o.compact_every,
        o.rows,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  around commit 100:   p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  ({} commits)",
        m_early as f64 / 1000.0,
        q(&early, 0.9) as f64 / 1000.0,
        q(&early, 0.99) as f64 / 1000.0,
        early.len()
    );
    println!(
        "  around commit {last}: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  ({} commits)",
        m_late as f64 / 1000.0,
        q(&late, 0.9) as f64 / 1000.0,
        q(&late, 0.99) as f64 / 1000.0,
        late.len()
    );
    println!(
        "  p50 ratio {ratio:.3} ({:+.1}%); per-commit figures in {}",
        (ratio - 1.0) * 100.0,
        o.dir.join("commits.csv").display()
    );
    Ok(())
}
