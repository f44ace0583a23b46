//! `tidemark failover`: the command line around [`tidemark_engine::failover`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tidemark_engine::config::PipelineConfig;
use tidemark_engine::failover::{self, FailoverOptions, Mm2Options};
use tidemark_engine::pipeline::{self, RunOptions, Shutdown};

/// Start the pipeline in the secondary region: against the replica table and a mirrored Kafka
/// cluster, nothing lost and nothing doubled, the old primary fenced.
///
/// The config is the secondary's: `sink.table_uri` is the replica (kept by `tidemark
/// replicate`), `source.brokers` the mirrored cluster (MirrorMaker 2 or any mirror keeping
/// keys, values and timestamps). Offsets differ on a mirror, so each partition starts by time:
/// the Kafka timestamp of the last record the replica holds from it, minus --margin, looked up
/// with offsets_for_times. The watermark dedup state is rebuilt from the replica's rows, so the
/// records read again are dropped as duplicates (and counted). Without [dedup] the failover is
/// refused unless --accept-duplicates.
///
/// First of all it opens a new *generation* in the table (one metaData commit): a writer of an
/// older generation (the old primary coming back) can never commit into it. The state
/// directory's checkpoint store and WAL, if any, are set aside (kept, never resumed).
///
/// Where MirrorMaker 2 publishes offset translations on the new cluster, a partition starts
/// from them instead of by time (the nearest safe offset: never after the first record the
/// table lacks), and the report says per partition "translated", "by time" or "from the
/// beginning" (a partition the table never read). --mm2-target-alias reads the offset syncs
/// (mm2-offset-syncs.<alias>.internal: MM2 keeps it on the new cluster only with
/// offset-syncs.topic.location = target; needs no consumer group). --mm2-source-alias with
/// --mm2-group reads that group's checkpoints (<alias>.checkpoints.internal; Tidemark commits
/// no group offsets, so name a group that reads the same topics and commits). Topics must keep
/// their names on the mirror (MM2's IdentityReplicationPolicy). Partitions without a
/// translation start by time.
///
/// It runs until caught up, prints the RPO/RTO report and writes it as JSON (--report), then
/// keeps running as the pipeline (unless --until-caught-up). Later starts in this region are a
/// plain `tidemark run --config <same file>`.
///
/// Failback is the same command in the other direction, after `tidemark failback` copied the
/// secondary's table back (see README, Regional failover).
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The secondary's pipeline config.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Read every partition from this time instead (RFC 3339, e.g. 2026-11-30T10:00:00Z, or
    /// milliseconds since the epoch).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from_time: Option<i64>,
    /// Safety margin before each partition's last committed timestamp (e.g. 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = crate::replicate::parse_duration)]
    pub margin: Duration,
    /// Fail over without [dedup]: the re-read overlap is then written a second time.
    #[arg(long)]
    pub accept_duplicates: bool,
    /// The primary's table, if it can still be read: the report then gives the replica's lag
    /// behind it at the failure and the rows the new table lacks.
    #[arg(long, value_name = "TABLE")]
    pub primary_table: Option<String>,
    /// Where to write the report as JSON.
    #[arg(long, value_name = "FILE", default_value = "failover-report.json")]
    pub report: PathBuf,
    /// Stop once caught up (after the report) instead of running on.
    #[arg(long)]
    pub until_caught_up: bool,
    /// MirrorMaker 2's alias of the new cluster: use the offset syncs it keeps there
    /// (mm2-offset-syncs.<alias>.internal).
    #[arg(long, value_name = "ALIAS")]
    pub mm2_target_alias: Option<String>,
    /// MirrorMaker 2's alias of the old cluster: use the checkpoints of --mm2-group
    /// (<alias>.checkpoints.internal on the new cluster).
    #[arg(long, value_name = "ALIAS", requires = "mm2_group")]
    pub mm2_source_alias: Option<String>,
    /// The consumer group whose MirrorMaker 2 checkpoints translate the table's positions.
    /// Needs MirrorMaker 2 from Kafka 3.5 on: earlier versions translated checkpoints by offset
    /// arithmetic (KAFKA-14666) and could name an offset past the true record, which would skip
    /// records; with an older MM2 use --mm2-target-alias (offset syncs) or by-time starts.
    #[arg(long, value_name = "GROUP", requires = "mm2_source_alias")]
    pub mm2_group: Option<String>,
    /// Recorded with the new generation: `failover` or `failback`.
    #[arg(long, default_value = "failover", value_parser = ["failover", "failback"])]
    pub reason: String,
}

/// `--from-time`: RFC 3339 or milliseconds since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    failover::parse_time_ms(s)
}

/// Runs the command.
pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = PipelineConfig::load(&args.config)?;
    let primary_table = args
        .primary_table
        .as_deref()
        .map(failover::table_url)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let options = FailoverOptions {
        from_time_ms: args.from_time,
        margin: args.margin,
        accept_duplicates: args.accept_duplicates,
        primary_table,
        reason: args.reason.clone(),
        mm2: Mm2Options {
            target_alias: args.mm2_target_alias.clone(),
            source_alias: args.mm2_source_alias.clone(),
            group: args.mm2_group.clone(),
        },
    };
    let shutdown = Shutdown::new();
    pipeline::install_signal_handlers(shutdown.clone());
    let (report, summary) = failover::run(&config, &options, shutdown.clone(), started).await?;
    eprint!("{}", report.render());
    failover::write_report(&args.report, &report)
        .with_context(|| format!("writing {}", args.report.display()))?;
    eprintln!("  report         {}", args.report.display());
    println!("{}", serde_json::to_string(&summary)?);
    if args.until_caught_up || shutdown.requested() {
        return Ok(());
    }
    let summary = pipeline::run(&config, RunOptions::default(), shutdown).await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
