//! The `tidemark` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::PipelineConfig;
use crate::demo::{self, DemoOptions};
use crate::pipeline::{self, RunOptions, Shutdown};

/// Tidemark moves records from Kafka into a Delta Lake table exactly once, and survives crashes.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version)]
#[command(
    after_help = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see more.\n\
Start with `tidemark demo`: it needs no broker and shows a crash and an exactly-once check."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline from a TOML config until Ctrl-C / SIGTERM (or until caught up).
    ///
    /// The pipeline resumes from the positions recorded in the table's newest Tidemark commit,
    /// so it can be killed at any moment and restarted: nothing is lost or written twice.
    /// Ctrl-C or SIGTERM finishes the current epoch and stops; a second signal exits at once.
    /// At the end one JSON line with the run's counts is printed to stdout.
    Run {
        /// The pipeline config (see README.md, "Configuration").
        #[arg(long, short)]
        config: PathBuf,
        /// Stop once every partition is read up to where it ended when the run started.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Self-contained demo: an in-process Kafka mock cluster, a SIGKILL mid-run, a restart, and
    /// an exactly-once check of the resulting Delta table. Needs no external service.
    Demo(DemoOptions),
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,deltalake_core=warn,librdkafka=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Command::Run {
                config,
                until_caught_up,
            } => run(config, until_caught_up).await,
            Command::Demo(options) => demo::run(options).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidemark: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config_path: PathBuf, until_caught_up: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(&config_path)?;
    let shutdown = Shutdown::new();
    pipeline::install_signal_handlers(shutdown.clone());
    let summary = pipeline::run(
        &config,
        &config_path,
        RunOptions { until_caught_up },
        shutdown,
    )
    .await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
