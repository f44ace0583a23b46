//! The `tidemark` command line: `run` and `status` from the engine ([`tidemark_engine`]),
//! `demo` and `bench` from the tools ([`tidemark_tools`]).
//!
//! A library as well as the `tidemark` binary so that the crash tests' binary
//! (`tests/src/bin/tidemark-under-test.rs`) is the same CLI built with the `crash-points` feature.

mod backup_cmds;
mod failback;
mod failover;
mod maintenance_cmds;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use tidemark_engine::config::PipelineConfig;
use tidemark_engine::pipeline::{self, RunOptions, Shutdown};
use tidemark_tools::bench::{self, BenchOptions};
use tidemark_tools::demo::{self, DemoOptions};

mod replicate;
mod timetravel;

/// Tidemark moves records from Kafka into a Delta Lake table exactly once, and survives crashes.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version)]
#[command(
    after_help = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug, or \
RUST_LOG=info,tidemark_engine=debug) to see more, --log-format json for log shippers.\n\
Start with `tidemark demo`: it needs no broker and shows a crash and an exactly-once check."
)]
struct Cli {
    /// Log lines as text (default) or as one JSON object per line (for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

/// `tidemark run`'s arguments (each one's help text is its doc comment).
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The pipeline config (see README.md, "Configuration").
    #[arg(long, short)]
    config: PathBuf,
    /// Stop once every partition is read up to where it ended when the run started.
    #[arg(long)]
    until_caught_up: bool,
    /// The table was restored behind the checkpoint store: rewind to this retained
    /// checkpoint epoch (see `tidemark status`) and replay from the table's progress.
    #[arg(long, value_name = "EPOCH")]
    rewind_to: Option<u64>,
    /// The WAL was damaged before its end (its damaged segments were moved aside): go on,
    /// re-reading from Kafka at the checkpoint's positions what those segments held.
    #[arg(long)]
    accept_wal_damage: bool,
    /// Serve /metrics (Prometheus), /healthz, /readyz and a live status page (/) on this
    /// address, e.g. 127.0.0.1:9464 (overrides `observability.http`).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Run as this worker of a pipeline shared by several processes (scale-out): the
    /// config's `source.group` names the consumer group the workers join to share out
    /// the partitions. Each worker gets its own state directory (`<state>/workers/<ID>`)
    /// and txn appId (`<pipeline_id>.<ID>`); the table's per-partition claims keep two
    /// workers from ever committing one partition. Letters, digits, '-', '_', '.'.
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline from a TOML config until Ctrl-C / SIGTERM (or until caught up).
    ///
    /// Each epoch is logged to a write-ahead log, sealed, committed to Delta in ONE commit
    /// (with a `txn` action) and checkpointed in RocksDB. On start, recovery compares the
    /// checkpoint, the WAL and the table and says in the log which case it found; so the
    /// pipeline can be killed at any moment and restarted: nothing is lost or written twice,
    /// even if the checkpoint directory is deleted (it then resumes from the table).
    /// Ctrl-C or SIGTERM finishes the current epoch and stops; a second signal exits at once.
    /// At the end one JSON line with the run's counts and recovery report goes to stdout.
    Run(RunArgs),
    /// Show the last checkpoint, the WAL, the table's txn version, and what recovery would do
    /// on the next start. Read-only: safe while the pipeline runs.
    Status {
        /// The pipeline config.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Apply the health rules of /readyz instead (a process holds the pipeline, no commit
        /// stall while records wait, the watermark moves): exit 0 when ready, 1 when not, 2
        /// when the check itself fails. For cron jobs and Kubernetes exec probes.
        #[arg(long)]
        check: bool,
        /// With `source.group`: show this worker's own state directory, WAL and checkpoint
        /// (without it, status lists the workers and each partition's claim).
        #[arg(long, value_name = "ID")]
        worker_id: Option<String>,
    },
    /// Self-contained demo: an in-process Kafka mock cluster, producer retries, malformed
    /// messages, a SIGKILL and a lost checkpoint store, and an exactly-once audit of the resulting
    /// Delta tables. Needs no external service.
    Demo(DemoOptions),
    /// Measure checkpoint interval against throughput and recovery cost on this machine.
    ///
    /// Produces one synthetic stream (in-process mock cluster unless --brokers is given), runs
    /// the real pipeline over it once per interval into a fresh table, then once more per
    /// interval with a SIGKILL mid-epoch and a restart. Prints a table, then per row the CPU a
    /// record cost, the cores kept busy and the records/s this machine's cores allow at that
    /// cost, and writes bench.csv, bench.json and bench.svg (throughput and recovery time
    /// against interval) to --dir.
    Bench(BenchOptions),
    // The help text is ReplicateArgs' doc comment (cli/src/replicate.rs).
    Replicate(replicate::ReplicateArgs),
    // The help text is FailoverArgs' doc comment (cli/src/failover.rs).
    Failover(failover::FailoverArgs),
    /// Self-contained regional DR drill: two Kafka clusters (in-process mock clusters unless
    /// --brokers PRIMARY,SECONDARY), a mirror that keeps keys, values and timestamps but not
    /// offsets, a pipeline with a `replicate --follow` replica, a SIGKILL of the whole primary
    /// side at a random moment, `tidemark failover`, an exactly-once audit of the secondary
    /// table against the report, and the old primary restarted to show it fenced.
    Drill(tidemark_tools::drill::DrillOptions),
    // The help text is FailbackArgs' doc comment (cli/src/failback.rs).
    Failback(failback::FailbackArgs),
    /// Measure replication lag behind a running pipeline (needs a broker; see
    /// scripts/bench-replicate, which starts tansu and also measures throughput against cp -r).
    BenchReplicate(tidemark_tools::bench_replicate::ReplicateBenchOptions),
    /// Back up a Delta table into a backup directory: full, or incremental after the newest
    /// backup there (only the new commits and the files they add); `backup list DIR`,
    /// `backup prune DIR --keep-full K`.
    Backup(backup_cmds::BackupArgs),
    /// Rebuild a readable Delta table at any covered version (or time) from a chain of
    /// backups, checking every file's SHA-256 against its manifest.
    RestoreBackup(backup_cmds::RestoreBackupArgs),
    /// Find corrupt or missing data files of a table's snapshot (and repair them from a
    /// backup); exits 1 when a file is bad.
    Verify(backup_cmds::VerifyArgs),
    /// A table's versions: time, operation, Tidemark pipeline/epoch/generation, rows and
    /// files added, files removed.
    History(timetravel::HistoryArgs),
    /// Print a table's rows as of a version or a time (time travel).
    Cat(timetravel::CatArgs),
    /// Write a table's rows as of a version or a time to a Parquet or CSV file.
    Export(timetravel::ExportArgs),
    /// Make a table equal to an earlier version with one new commit (Delta RESTORE),
    /// coordinated with the Tidemark pipeline that writes it.
    Restore(timetravel::RestoreArgs),
    /// Measure Delta commit latency as the log grows (commit 100 against the last one), with
    /// the pipeline's checkpoints every N commits; writes commits.csv.
    BenchCommits(tidemark_tools::bench_commits::CommitBenchOptions),
    /// Throughput of a pipeline shared by 1, 2, 4 ... workers (`source.group`, `--worker-id`)
    /// against the broker's plain-consumer ceiling, and the commit conflicts per minute that
    /// sharing one table costs, per checkpoint interval; writes workers.csv.
    BenchWorkers(tidemark_tools::bench_workers::WorkerBenchOptions),
    /// Read a topic with a plain consumer and nothing else (the broker's consume ceiling that
    /// `tidemark bench` measures beside the pipeline); prints one JSON summary line.
    #[command(hide = true)]
    BenchConsume(tidemark_tools::consume_ceiling::ConsumeOptions),
    // The help texts are the args' doc comments (cli/src/maintenance_cmds.rs).
    Optimize(maintenance_cmds::OptimizeArgs),
    Vacuum(maintenance_cmds::VacuumArgs),
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,deltalake_core=warn,buoyant_kernel=warn,librdkafka=warn")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidemark: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Status {
                config,
                json,
                check: true,
                ..
            } => status_check(config, json).await,
            Command::Status {
                config,
                json,
                worker_id,
                ..
            } => status(config, json, worker_id)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Demo(options) => demo::run(options).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(options) => bench::run(options).await.map(|()| ExitCode::SUCCESS),
            Command::Replicate(args) => replicate::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Failover(args) => failover::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Failback(args) => match failback::set_aside(&args) {
                Ok(Some(replicate)) => match Cli::try_parse_from(replicate) {
                    Ok(Cli {
                        command: Command::Replicate(r),
                        ..
                    }) => replicate::run(r).await.map(|()| ExitCode::SUCCESS),
                    Ok(_) => Err(anyhow::anyhow!("failback: not a replicate command")),
                    Err(e) => Err(e.into()),
                },
                Ok(None) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e),
            },
            Command::Drill(options) => tidemark_tools::drill::run(options)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::BenchReplicate(options) => tidemark_tools::bench_replicate::run(options)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Backup(args) => backup_cmds::backup(args).await.map(|()| ExitCode::SUCCESS),
            Command::RestoreBackup(args) => {
                backup_cmds::restore(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::BenchWorkers(options) => tidemark_tools::bench_workers::run(options)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::BenchCommits(options) => tidemark_tools::bench_commits::run(options)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::BenchConsume(options) => {
                let summary = tokio::task::spawn_blocking(move || {
                    tidemark_tools::consume_ceiling::run(&options)
                })
                .await??;
                println!("{}", serde_json::to_string(&summary)?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Optimize(args) => maintenance_cmds::optimize(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Vacuum(args) => maintenance_cmds::vacuum(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            // Bad files were listed above; the exit code says so to scripts.
            Command::Verify(args) => backup_cmds::verify(args).await.map(|clean| {
                if clean {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }),
            Command::History(args) => timetravel::run_history(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Cat(args) => timetravel::run_cat(args).await.map(|()| ExitCode::SUCCESS),
            Command::Export(args) => timetravel::run_export(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Restore(args) => timetravel::run_restore(args)
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    // A connect still waiting for an unreachable broker must not hold the exit back.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidemark: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `status --check`: exit 0 ready, 1 not ready, 2 the check failed.
async fn status_check(config_path: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let checked = async {
        let config = PipelineConfig::load(&config_path)?;
        anyhow::Ok(tidemark_engine::status::check(&config).await?)
    };
    match checked.await {
        Ok(check) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            } else {
                println!("{}: {}", check.pipeline_id, check.health);
            }
            Ok(ExitCode::from(if check.health.ready { 0 } else { 1 }))
        }
        Err(e) => {
            eprintln!("tidemark: status --check failed: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn status(config_path: PathBuf, json: bool, worker_id: Option<String>) -> anyhow::Result<()> {
    let mut config = PipelineConfig::load(&config_path)?;
    if let Some(id) = worker_id {
        config.as_worker(&id)?;
    }
    let status = tidemark_engine::status::status(&config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        config: config_path,
        until_caught_up,
        rewind_to,
        accept_wal_damage,
        http,
        worker_id,
    } = args;
    let mut config = PipelineConfig::load(&config_path)?;
    if let Some(addr) = http {
        config.set_http(addr)?;
    }
    let shutdown = Shutdown::new();
    pipeline::install_signal_handlers(shutdown.clone());
    if let Some(id) = worker_id {
        config.as_worker(&id)?;
        if rewind_to.is_some() || accept_wal_damage {
            anyhow::bail!("--rewind-to and --accept-wal-damage do not apply to a worker: a worker always resumes from the table's claims (its WAL is re-read from Kafka)");
        }
        let summary = tidemark_engine::worker::run_worker(
            &config,
            RunOptions {
                until_caught_up,
                ..RunOptions::default()
            },
            shutdown,
        )
        .await?;
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    if config.source.group.is_some() {
        anyhow::bail!(
            "{}: source.group is set: start each worker with `tidemark run --worker-id <id>`",
            config_path.display()
        );
    }
    let summary = pipeline::run(
        &config,
        RunOptions {
            until_caught_up,
            rewind_to,
            accept_wal_damage,
            ..RunOptions::default()
        },
        shutdown,
    )
    .await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
