//! `tidemark replicate`: the command line around [`tidemark_table::Replicator`] — options,
//! rounds (once, or `--follow`), a progress bar on a terminal (plain `tracing` lines otherwise),
//! the replication lag after each round, and one JSON summary line on stdout at the end.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tidemark_engine::pipeline::{install_signal_handlers, Shutdown};
use tidemark_table::copy::Verify;
use tidemark_table::replica_lock::TableLock;
use tidemark_table::replicate::{Observer, Plan};
use tidemark_table::{open_store, ReplicateError, ReplicateOptions, ReplicationLag, Replicator};

/// Copy a Delta table to a replica in log order, verified, resumable; optionally keep following.
///
/// For every version the replica lacks, in order: each data file the version adds (written
/// under a temporary name, fsynced, renamed; size and CRC-32 read back and compared with the
/// bytes read from the source), then the commit file itself (never replacing an existing one), then Delta
/// checkpoints and `_last_checkpoint` once the replica holds their version. So the replica is,
/// at every moment, a readable version of its source, and byte for byte the source's log.
///
/// Stop it at any moment (Ctrl-C, SIGTERM, even SIGKILL): the next run resumes where it
/// stopped, keeping the files already copied once their checksums match.
///
/// It refuses a replica that diverged from its source (its version N differs from the
/// source's version N) and, when the source's log no longer holds the versions the replica
/// needs (log cleanup), says so: `--full` then copies the source's newest checkpoint, the files
/// of its snapshot and every later commit. An empty replica of a source whose log starts at a
/// checkpoint is copied that way without asking.
///
/// Replication lag (the RPO: versions, bytes and commit-time seconds the replica lacks) is
/// logged after each round and given in the JSON summary; `tidemark status` shows it for the
/// `[replica]` of a pipeline config.
///
/// Example: `tidemark replicate --from /data/orders --to /mnt/dr/orders --follow --interval 1s`
#[derive(Debug, clap::Args)]
pub struct ReplicateArgs {
    /// The source table: a path or a file:// URL.
    #[arg(long, value_name = "TABLE")]
    pub from: String,
    /// The replica: a path or a file:// URL (created if missing; empty, or an earlier replica of
    /// the same source).
    #[arg(long, value_name = "TABLE")]
    pub to: String,
    /// Keep running: a new round every --interval until Ctrl-C / SIGTERM. Failed reads or
    /// writes are retried (logged); refusals (divergence, cleaned-up log) stop it.
    #[arg(long)]
    pub follow: bool,
    /// Pause between rounds with --follow (e.g. 500ms, 1s, 1m).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// When the source's log no longer holds the versions the replica needs (or the replica is
    /// empty): start from the source's newest checkpoint.
    #[arg(long)]
    pub full: bool,
    /// Data files copied at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// How each written file is checked: `checksum` reads it back and compares its CRC-32
    /// (and size) with the bytes read from the source; `size` compares the size only.
    #[arg(long, default_value = "checksum", value_parser = ["checksum", "size"])]
    pub verify: String,
    /// Bytes per read and per multipart part (e.g. 8MiB, 64KiB); between two local tables a
    /// data file is read at most 1 MiB at a time into one reused buffer.
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    pub chunk_size: usize,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 1s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 8MiB, 64KiB, 4096)"))?;
    let unit = match &s[split..] {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB)")),
    };
    match n.checked_mul(unit) {
        Some(0) | None => Err(format!("{s:?}: a chunk must be at least 1 byte")),
        Some(b) => Ok(b),
    }
}

/// The progress of a run, shown as a bar on a terminal or as a log line every few seconds.
struct Progress {
    bar: Option<ProgressBar>,
    planned: AtomicU64,
    read: AtomicU64,
    newest: AtomicU64,
    last_line: Mutex<Instant>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            planned: AtomicU64::new(0),
            read: AtomicU64::new(0),
            newest: AtomicU64::new(0),
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn message(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn maybe_log(&self) {
        if self.bar.is_some() {
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            tracing::info!(
                read_bytes = self.read.load(Ordering::Relaxed),
                planned_bytes = self.planned.load(Ordering::Relaxed),
                version = self.newest.load(Ordering::Relaxed),
                "copying"
            );
        }
    }
}

impl Observer for Progress {
    fn planned(&self, _plan: &Plan, _files: u64, bytes: u64) {
        self.planned.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc_length(bytes);
        }
    }

    fn bytes(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        self.maybe_log();
    }

    fn version_done(&self, version: u64) {
        self.newest.store(version, Ordering::Relaxed);
        self.message(format!("replica at version {version}"));
        self.maybe_log();
    }
}

/// The JSON summary line of a replicate run.
#[derive(Debug, Default, Serialize)]
struct Summary {
    source: String,
    replica: String,
    rounds: u64,
    versions_copied: u64,
    files_copied: u64,
    files_already_present: u64,
    bytes_copied: u64,
    checkpoint_files_copied: u64,
    temp_files_removed: u64,
    source_version: Option<u64>,
    replica_version: Option<u64>,
    elapsed_ms: u64,
    /// Bytes written per second of wall time over the whole run.
    mb_per_s: f64,
    failed_rounds: u64,
    lag: Option<ReplicationLag>,
    stopped_because: &'static str,
}

/// Errors a follower retries (I/O); the rest stop it (a refusal, a file gone from the source
/// for good, an unsupported feature).
fn retryable(e: &ReplicateError) -> bool {
    matches!(
        e,
        ReplicateError::Log(_) | ReplicateError::Copy { .. } | ReplicateError::Replica { .. }
    )
}

/// Runs `tidemark replicate`.
pub async fn run(args: ReplicateArgs) -> anyhow::Result<()> {
    let source = open_store(&args.from).context("--from")?;
    let replica = open_store(&args.to).context("--to")?;
    let options = ReplicateOptions {
        full: args.full,
        verify: if args.verify == "size" {
            Verify::Size
        } else {
            Verify::SizeAndChecksum
        },
        chunk_bytes: args.chunk_size,
        parallel: usize::from(args.parallel),
    };
    // One writer per replica: a second run would take this one's temporary files for crash
    // leftovers and remove them.
    let lock = TableLock::acquire(&replica, "tidemark replicate")
        .await
        .context("--to")?;
    let result = replicate_locked(&args, source, replica, options).await;
    lock.release().await;
    result
}

/// [`run`] once the replica is locked.
async fn replicate_locked(
    args: &ReplicateArgs,
    source: tidemark_table::TableLocation,
    replica: tidemark_table::TableLocation,
    options: ReplicateOptions,
) -> anyhow::Result<()> {
    let replicator = Replicator::new(source, replica, options)?;
    let shutdown = Shutdown::new();
    install_signal_handlers(shutdown.clone());
    tracing::info!(
        source = %replicator.source(),
        replica = %replicator.replica(),
        follow = args.follow,
        "replicating"
    );
    let started = Instant::now();
    let progress = Progress::new();
    let mut summary = Summary {
        source: replicator.source().to_string(),
        replica: replicator.replica().to_string(),
        stopped_because: "caught_up",
        ..Summary::default()
    };
    let mut backoff = args.interval;
    loop {
        let round = tokio::select! {
            r = replicator.round(&progress) => Some(r),
            () = wait_for(&shutdown) => None,
        };
        let Some(round) = round else {
            summary.stopped_because = "shutdown";
            break;
        };
        summary.rounds += 1;
        match round {
            Ok(report) => {
                backoff = args.interval;
                summary.versions_copied += report.versions_copied;
                summary.files_copied += report.files_copied;
                summary.files_already_present += report.files_already_present;
                summary.bytes_copied += report.bytes_copied;
                summary.checkpoint_files_copied += report.checkpoint_files_copied;
                summary.temp_files_removed += report.temp_files_removed;
                summary.source_version = Some(report.source_version);
                summary.replica_version = report.replica_version;
                let lag = replicator.lag().await.ok();
                if report.versions_copied > 0 || summary.rounds == 1 {
                    log_round(&report, lag.as_ref());
                }
                if let Some(lag) = &lag {
                    progress.message(format!(
                        "replica at version {}; lag {} versions, {:.1} s",
                        lag.replica_version.map_or("-".into(), |v| v.to_string()),
                        lag.versions_behind,
                        lag.seconds_behind
                    ));
                }
                summary.lag = lag;
            }
            Err(e) if args.follow && retryable(&e) => {
                summary.failed_rounds += 1;
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication round failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                progress.finish();
                return Err(e.into());
            }
        }
        if !args.follow || shutdown.requested() {
            if shutdown.requested() {
                summary.stopped_because = "shutdown";
            }
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = wait_for(&shutdown) => {
                summary.stopped_because = "shutdown";
                break;
            }
        }
    }
    progress.finish();
    let elapsed = started.elapsed();
    summary.elapsed_ms = elapsed.as_millis() as u64;
    summary.mb_per_s = summary.bytes_copied as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    if summary.lag.is_none() {
        summary.lag = replicator.lag().await.ok();
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn log_round(report: &tidemark_table::RoundReport, lag: Option<&ReplicationLag>) {
    tracing::info!(
        plan = ?report.plan,
        versions = report.versions_copied,
        files = report.files_copied,
        files_already_present = report.files_already_present,
        bytes = report.bytes_copied,
        checkpoint_files = report.checkpoint_files_copied,
        replica_version = ?report.replica_version,
        elapsed_ms = report.elapsed_ms,
        versions_behind = lag.map(|l| l.versions_behind),
        bytes_behind = lag.map(|l| l.bytes_behind),
        seconds_behind = lag.map(|l| l.seconds_behind),
        "replication round done"
    );
}

async fn wait_for(shutdown: &Shutdown) {
    while !shutdown.requested() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_with_units() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1h").unwrap_err().contains("unit"));
        assert_eq!(parse_bytes("8MiB"), Ok(8 << 20));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1GiB").is_err());
    }
}
