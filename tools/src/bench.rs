//! `tidemark bench`: checkpoint interval against throughput and recovery cost, end to end.
//!
//! It produces one fixed synthetic stream (record size, key cardinality, duplicate rate,
//! partitions) into a broker — librdkafka's in-process mock cluster by default, or any
//! bootstrap address — then runs the real pipeline as a child process over the whole stream
//! once per interval, each into a fresh table, and once more per interval with a SIGKILL
//! mid-epoch followed by a restart. It reports what each run's summary and wall clock say:
//! nothing is estimated. Output: a table on the terminal, `bench.csv`, `bench.json` and
//! `bench.svg` (throughput and recovery time against interval).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use serde::Serialize;

const TOPIC: &str = "bench";
const MARK: &str = "# Written by `tidemark bench`.";

/// Options of `tidemark bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchOptions {
    /// Directory for tables, configs, logs and results (its previous content is replaced).
    #[arg(long, default_value = "tidemark-bench")]
    pub dir: PathBuf,
    /// Records in the stream.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Approximate size of each JSON record in bytes (5 columns; the last one pads).
    #[arg(long, default_value_t = 200)]
    pub record_bytes: usize,
    /// Partitions of the topic (the mock cluster keeps at most 100k messages per partition).
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Distinct keys (0: every record its own key).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Share of records sent twice (a producer retry).
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    /// Checkpoint intervals to run, e.g. `50ms,200ms,1s,5s,none` (`none`: WAL and checkpoint
    /// store off, epochs as long as the longest interval).
    #[arg(long, default_value = "50ms,200ms,1s,5s,none")]
    pub intervals: String,
    /// Use this broker instead of the in-process mock cluster (e.g. a tansu address).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Turn watermark dedup on (key = id, event time = created_at, lateness 1 h: with the
    /// stream's 1 ms per record, every key of the first 3.6M records stays in state).
    #[arg(long)]
    pub dedup: bool,
    /// Run every interval twice per round, with dedup off and on (rows `<interval>` and
    /// `<interval>+dedup`), on the same stream in the same run, and print what dedup costs.
    #[arg(long)]
    pub compare_dedup: bool,
    /// `dedup.allowed_lateness_ms` of the dedup runs: the stream's event time moves 1 ms per
    /// record, so every key of the last this-many records stays in state (raise it to bench a
    /// bigger state, e.g. 10800000 keeps 10M keys).
    #[arg(long, default_value_t = 3_600_000)]
    pub dedup_lateness_ms: u64,
    /// `dedup.expected_keys` of the dedup runs: the state's table sized for this many keys at
    /// start (as a user who knows the state's size sets it), so a run that fills the state
    /// from empty does not count its table's growth. 0 (default): the table grows, and the
    /// summary shows what the growth cost.
    #[arg(long, default_value_t = 0)]
    pub dedup_expected_keys: u64,
    /// `checkpoint.max_records` of every run: an epoch also ends at this many records, if
    /// its interval has not ended it first. 0 (default): no cap, so each epoch lasts its
    /// interval, which is what the bench measures. A pipeline's own default is 100000: give
    /// that to see restarts as such a pipeline has them (a restart replays at most the one
    /// epoch its crash left open or uncommitted; the cap bounds that epoch's size). The
    /// bench's `max_bytes` stays 4 GiB (a pipeline's default is 64 MiB).
    #[arg(long, default_value_t = 0)]
    pub epoch_max_records: u64,
    /// Another `tidemark` executable (e.g. a build of an older commit) to run every variant
    /// with as well, in the same rounds on the same stream (rows `<name>@base`), and print this
    /// build's throughput against it.
    #[arg(long)]
    pub baseline_exe: Option<PathBuf>,
    /// Skip the SIGKILL-and-restart run per interval.
    #[arg(long)]
    pub no_recovery: bool,
    /// When the recovery run is SIGKILLed, as a share (0..1) of the measured run time.
    #[arg(long, default_value_t = 0.5)]
    pub crash_at: f64,
    /// Restarts per SIGKILL: the crash image (state directory and table as the kill left
    /// them) is kept aside and restarted this many times, each from the same image; the
    /// recovery columns are those of the median restart. Why: where a kill lands decides how
    /// much a restart replays, so one restart per kill mixes that with the restart's own
    /// spread (first commits of 274 to 1,054 ms for the same 1 s interval on one machine).
    /// An odd N has a true median (of an even N, the upper middle one is shown, as for every
    /// median of the bench). Rows whose table is on object storage (`--table-uri`) restart
    /// once: the image cannot hold it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub restarts: u64,
    /// Seed of the generated stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Throughput runs per interval, interleaved by round (every variant once a round, in
    /// the listed order in odd rounds and reversed in even ones, so none always runs right
    /// after another); each row is the median run. An even count balances the order.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Also run each interval with metrics on (`observability.http`, scraped once a second
    /// like Prometheus would, as `<interval>+metrics`) in the same rounds, and print the
    /// throughput with metrics against without.
    #[arg(long)]
    pub metrics: bool,
    /// Also run every variant writing to a table on object storage under this prefix
    /// (`s3://bucket/prefix`, with the usual AWS settings: environment, profile,
    /// `AWS_ENDPOINT_URL` for S3-compatible stores), in the same rounds on the same stream
    /// (rows `<interval>@s3`), and print its throughput and commit latency against the
    /// local-disk table's. Each run writes a fresh table under the prefix (left there).
    #[arg(long)]
    pub table_uri: Option<String>,
    /// Skip the plain consumer run of each round (`tidemark bench-consume`: the same topic
    /// read by a consumer that does nothing else, the broker's consume ceiling every row is
    /// also given as a share of).
    #[arg(long)]
    pub no_ceiling: bool,
    /// Keep each variant's last table, WAL and checkpoint store under --dir (for a look at
    /// them after the bench). Without it only the logs and configs are kept: a 2M-record
    /// `--compare-dedup --baseline-exe` bench otherwise leaves 2-3 GB behind.
    #[arg(long)]
    pub keep_runs: bool,
}

/// One interval's measurements.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchRow {
    /// The interval as given (`none` for no checkpoint).
    pub interval: String,
    /// Interval in milliseconds (the epoch length for `none`).
    pub interval_ms: u64,
    /// `checkpoint.max_records` of the run (`--epoch-max-records`, or the uncapped value).
    pub epoch_max_records: u64,
    /// Records read.
    pub records: u64,
    /// Wall time of the run (process start to exit), seconds.
    pub wall_secs: f64,
    /// Records per second end to end.
    pub records_per_sec: f64,
    /// Input megabytes (key + value) per second.
    pub mb_per_sec: f64,
    /// Median seal-to-checkpoint time per epoch, ms.
    pub commit_ms_p50: f64,
    /// 99th percentile of the same, ms.
    pub commit_ms_p99: f64,
    /// Parquet files written.
    pub parquet_files: u64,
    /// Delta versions written (epoch commits).
    pub delta_versions: u64,
    /// WAL bytes appended.
    pub wal_bytes: u64,
    /// Share of wall time spent writing checkpoints.
    pub checkpoint_share: f64,
    /// With dedup: share of wall time spent on dedup verdicts, on whichever thread gave them
    /// (the run summary's `dedup_verdict_share`).
    pub dedup_verdict_share: Option<f64>,
    /// With dedup: ms of that the state's key table spent growing.
    pub dedup_table_growth_ms: Option<f64>,
    /// With dedup: ms of that the state spent sweeping evicted keys out of its table.
    pub dedup_sweep_ms: Option<f64>,
    /// With dedup: CPU seconds spent on verdicts (the summary's `dedup_verdict_cpu_secs`).
    pub dedup_verdict_cpu_secs: Option<f64>,
    /// With dedup: CPU seconds of the state writer's thread (the summary's
    /// `dedup_state_writer_cpu_secs`).
    pub dedup_state_writer_cpu_secs: Option<f64>,
    /// Peak RSS of the pipeline process, MiB.
    pub peak_rss_mib: f64,
    /// CPU seconds the pipeline process used, every thread (the run summary's `cpu_secs`;
    /// `None` from a build that does not report it).
    pub cpu_secs: Option<f64>,
    /// Of them, the reading thread's (the summary's `reading_thread_cpu_secs`).
    pub reading_thread_cpu_secs: Option<f64>,
    /// Seconds the reading thread waited for a core (the summary's
    /// `reading_thread_waiting_secs`).
    pub reading_thread_waiting_secs: Option<f64>,
    /// CPU seconds the bench's own process used while the run went on: the in-process
    /// cluster serving the stream (and the `--metrics` scraper), on the same cores.
    pub bench_process_cpu_secs: Option<f64>,
    /// Records/s of every throughput run of this interval (the row shows the median run).
    pub all_records_per_sec: Vec<f64>,
    /// After a SIGKILL mid-epoch: ms from restart to the first commit (of the median
    /// restart with `--restarts`).
    pub recovery_first_commit_ms: Option<u64>,
    /// The same for every restart of the crash image, in the order they ran (`None`: that
    /// restart committed nothing, as a run without checkpoints may not before it ends).
    pub recovery_first_commit_ms_all: Vec<Option<u64>>,
    /// The same restart: ms to its first commit of records read from the broker (the first
    /// commit holds the records replayed from the WAL).
    pub recovery_first_source_commit_ms: Option<u64>,
    /// Records replayed from the WAL by that restart.
    pub recovery_replayed: Option<u64>,
    /// ms the recovery itself took (before the source connected).
    pub recovery_ms: Option<u64>,
    /// Dedup keys loaded from the checkpoint by that restart.
    pub recovery_dedup_keys: Option<u64>,
    /// Peak RSS of that restarted process, MiB.
    pub recovery_peak_rss_mib: Option<f64>,
    /// Whether the runs of this row had dedup on.
    pub dedup: bool,
}

/// `200ms`, `1s` or `none` (no checkpoints) as milliseconds.
pub(crate) fn parse_interval(s: &str) -> anyhow::Result<Option<u64>> {
    let s = s.trim();
    if s == "none" {
        return Ok(None);
    }
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        bail!("interval {s:?}: write it as e.g. 200ms, 1s or none");
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("interval {s:?} is not a number of ms or s"))?;
    if n == 0 {
        bail!("interval {s:?} must be greater than 0");
    }
    Ok(Some(n * mult))
}

/// A checkpoint interval to measure: its name as given, and milliseconds (`None`: no checkpoint).
type Interval = (String, Option<u64>);

/// One kind of run: a row of the results.
#[derive(Debug, Clone)]
struct Variant {
    /// The row's name: the interval, with `+dedup` in a `--compare-dedup` bench.
    name: String,
    /// Milliseconds (`None`: no checkpoint).
    interval: Option<u64>,
    /// Dedup on.
    dedup: bool,
    /// Metrics on and scraped (`--metrics`; the name ends with `+metrics`).
    metrics: bool,
    /// The pipeline executable (`None`: this one).
    exe: Option<PathBuf>,
    /// The object-store prefix the runs write fresh tables under (`--table-uri`; `None`: a
    /// local table in the run's directory).
    table_base: Option<String>,
}

/// The suffix of a variant writing to the object-store table (`--table-uri`).
const ON_OBJECT_STORE: &str = "@s3";

impl Variant {
    /// The `sink.table_uri` of one run (`tag` tells runs apart): `table` in the run's directory,
    /// or a fresh table under `--table-uri`.
    fn table_uri(&self, tag: &str) -> String {
        match &self.table_base {
            None => "table".into(),
            Some(base) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                let name: String = self
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}/{name}-{tag}-{nanos}-{n}", base.trim_end_matches('/'))
            }
        }
    }
}

/// The runs `options` asks for, per interval: with dedup as `--dedup` says, or off then on
/// with `--compare-dedup`.
fn variants(intervals: &[Interval], options: &BenchOptions) -> Vec<Variant> {
    let mut exes = vec![(None, "")];
    if let Some(base) = &options.baseline_exe {
        exes.push((Some(base.clone()), "@base"));
    }
    intervals
        .iter()
        .flat_map(|(name, interval)| {
            let exes = exes.clone();
            exes.into_iter().flat_map(move |(exe, tag)| {
                let one = |dedup: bool, metrics: bool, suffix: &str| Variant {
                    name: format!(
                        "{name}{suffix}{}{tag}",
                        if metrics { WITH_METRICS } else { "" }
                    ),
                    interval: *interval,
                    dedup,
                    metrics,
                    exe: exe.clone(),
                    table_base: None,
                };
                let dedups: &[(bool, &str)] = if options.compare_dedup {
                    &[(false, ""), (true, "+dedup")]
                } else {
                    &[(options.dedup, "")]
                };
                let metrics: &[bool] = if options.metrics {
                    &[false, true]
                } else {
                    &[false]
                };
                // Metrics outermost: a dedup-off row stays right before its dedup-on row.
                metrics
                    .iter()
                    .flat_map(|&m| {
                        dedups
                            .iter()
                            .map(move |&(dedup, suffix)| (dedup, m, suffix))
                    })
                    .map(|(dedup, m, suffix)| one(dedup, m, suffix))
                    .collect::<Vec<_>>()
            })
        })
        // --table-uri: each variant on the local disk, then right after it on the object store.
        .flat_map(|local: Variant| {
            let remote = options.table_uri.as_ref().map(|base| Variant {
                name: format!("{}{ON_OBJECT_STORE}", local.name),
                table_base: Some(base.clone()),
                ..local.clone()
            });
            std::iter::once(local).chain(remote)
        })
        .collect()
}

/// librdkafka's in-process mock cluster.
type Cluster = MockCluster<'static, DefaultProducerContext>;

/// One throughput run of a variant.
struct ThroughputRun {
    /// Wall seconds, the child's start to its exit.
    wall: f64,
    /// CPU seconds the bench's own process used meanwhile (the in-process cluster serving
    /// the stream).
    bench_cpu: Option<f64>,
    /// The run's summary line.
    summary: serde_json::Value,
}

/// Per interval, each of its throughput runs.
type Runs = Vec<Vec<ThroughputRun>>;

/// What every run of one bench shares.
struct Setup {
    /// The bench's directory (absolute).
    dir: PathBuf,
    /// Bootstrap address of the broker.
    brokers: String,
    /// The topic holding the stream.
    topic: String,
    /// The longest interval: the epoch length of the `none` runs.
    longest: u64,
    /// Records produced.
    produced: u64,
    /// Their key + value bytes.
    bytes: u64,
    /// The `tidemark` executable the runs start.
    exe: PathBuf,
    /// `--keep-runs`: leave each run's table, WAL and store in place.
    keep_runs: bool,
    /// `checkpoint.max_records` of every run: `--epoch-max-records`, or
    /// [`UNCAPPED_EPOCH_RECORDS`] without it.
    epoch_max_records: u64,
}

/// Runs the benchmark, by stage: parse the intervals, prepare --dir, start the broker and
/// produce the stream, the throughput rounds, per interval a SIGKILL-and-restart run, results.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let intervals = parse_intervals(&options.intervals)?;
    let longest = intervals
        .iter()
        .filter_map(|(_, i)| *i)
        .max()
        .unwrap_or(1000);
    let dir = prepare_dir(&options.dir)?;
    // The mock cluster (without --brokers) lives until the bench ends.
    let (_cluster, brokers, topic) = start_broker(&options).await?;
    let (produced, bytes) = produce_stream(&brokers, &topic, &options)?;
    let exe = std::env::current_exe().context("cannot find the tidemark executable")?;
    let setup = Setup {
        dir,
        brokers,
        topic,
        longest,
        produced,
        bytes,
        exe,
        keep_runs: options.keep_runs,
        epoch_max_records: epoch_max_records(options.epoch_max_records),
    };
    let rounds = options.repeat.max(1);
    let variants = variants(&intervals, &options);
    let (runs, ceiling) = throughput_runs(
        &setup,
        &variants,
        rounds,
        options.bench_dedup(),
        !options.no_ceiling,
    )?;
    let mut rows = Vec::new();
    for (variant, these) in variants.iter().zip(runs) {
        let mut row = median_row(&setup, variant, these);
        if !options.no_recovery && !variant.metrics {
            recovery_run(&setup, &options, variant, &mut row)?;
        }
        rows.push(row);
    }
    write_results(&setup, &rows, rounds, options.record_bytes, &ceiling)
}

/// `--intervals`, e.g. `50ms,200ms,1s,5s,none`.
fn parse_intervals(list: &str) -> anyhow::Result<Vec<Interval>> {
    let intervals: Vec<Interval> = list
        .split(',')
        .map(|s| Ok((s.trim().to_string(), parse_interval(s)?)))
        .collect::<anyhow::Result<_>>()?;
    if intervals.is_empty() {
        bail!("--intervals is empty");
    }
    Ok(intervals)
}

/// Resolves --dir, replaces an earlier bench's directory there (refusing any other non-empty
/// one) and marks the new one as the bench's.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve --dir {}", dir.display()))?;
    if dir.exists() {
        let ours =
            std::fs::read_to_string(dir.join("bench.mark")).is_ok_and(|t| t.starts_with(MARK));
        let empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none());
        if !ours && !empty {
            bail!(
                "--dir {} exists and is not an earlier bench's directory; pick another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.mark"), MARK)?;
    Ok(dir)
}

/// The broker and topic of the stream: the mock cluster (returned, to keep it alive) with the
/// topic `bench`, or with --brokers a fresh topic created there.
async fn start_broker(options: &BenchOptions) -> anyhow::Result<(Option<Cluster>, String, String)> {
    let Some(brokers) = &options.brokers else {
        let cluster = MockCluster::new(1).context("cannot start librdkafka's mock cluster")?;
        cluster
            .create_topic(TOPIC, options.partitions, 1)
            .context("cannot create the bench topic")?;
        let brokers = cluster.bootstrap_servers();
        return Ok((Some(cluster), brokers, TOPIC.to_string()));
    };
    let topic = format!("tidemark-bench-{}", std::process::id());
    create_topic(brokers, &topic, options.partitions).await?;
    Ok((None, brokers.clone(), topic))
}

/// Produces the stream and says so; returns (records, key + value bytes).
fn produce_stream(
    brokers: &str,
    topic: &str,
    options: &BenchOptions,
) -> anyhow::Result<(u64, u64)> {
    let started = Instant::now();
    let (produced, bytes) = produce(brokers, topic, &options.shape())?;
    println!(
        "tidemark bench: {produced} records ({:.1} MB of JSON, ~{} B each) into {topic} ({} partitions, {}) in {:.1} s",
        bytes as f64 / 1e6,
        bytes / produced.max(1),
        options.partitions,
        if options.brokers.is_some() { brokers } else { "in-process mock cluster" },
        started.elapsed().as_secs_f64()
    );
    Ok((produced, bytes))
}

/// The order of the variants' runs in round `round` (0-based) of `n` variants: as listed in
/// even rounds, reversed in odd ones. Why: a run leaves the machine in a state the next one
/// starts from (memory it freed, files still being written back, pages the host took back),
/// so with one fixed order a variant always following another carries that as a bias of its
/// own. Measured: three comparisons of the same dedup-off code, one build always run first,
/// gave it a commit p50 of 159–167 ms at 1 s against 123–133 ms for the one run second.
/// Reversed every other round, each variant runs before and after each other one.
fn round_order(round: usize, n: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// Throughput runs, interleaved by round so a slow moment of the machine hits every interval
/// alike. Each run must read the whole stream. With `ceiling`, each round starts with a plain
/// consumer run (records/s of each returned beside the runs).
fn throughput_runs(
    setup: &Setup,
    variants: &[Variant],
    rounds: usize,
    dedup: BenchDedup,
    ceiling: bool,
) -> anyhow::Result<(Runs, Vec<f64>)> {
    let produced = setup.produced;
    let mut runs: Runs = variants.iter().map(|_| Vec::new()).collect();
    let mut ceiling_rates = Vec::new();
    for round in 0..rounds {
        if ceiling {
            let rate = consume_run(setup)?;
            eprintln!(
                "  round {}/{rounds} {:>12}: {rate:.0} records/s",
                round + 1,
                "consumer"
            );
            ceiling_rates.push(rate);
        }
        for i in round_order(round, variants.len()) {
            let v = &variants[i];
            let name = &v.name;
            let run_dir = setup.dir.join(format!("run-{name}"));
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir)?;
            }
            let config = write_config(
                &run_dir,
                &setup.brokers,
                &setup.topic,
                &v.table_uri(&format!("round{}", round + 1)),
                v.interval,
                setup.longest,
                v.dedup.then_some(dedup),
                setup.epoch_max_records,
            )?;
            let scraper = if v.metrics {
                Some(Scraper::start(&config)?)
            } else {
                None
            };
            let t0 = Instant::now();
            let own_cpu0 = tidemark_checkpoint::cpu_time::process();
            let exe = v.exe.as_ref().unwrap_or(&setup.exe);
            let summary = run_child(exe, &config, &run_dir.join("run.log"), &[]);
            let wall = t0.elapsed().as_secs_f64();
            let own_cpu = own_cpu0
                .zip(tidemark_checkpoint::cpu_time::process())
                .map(|(a, b)| b.saturating_sub(a).as_secs_f64());
            let scrapes = scraper.map(Scraper::stop);
            let summary = summary?;
            if scrapes == Some(0) {
                bail!(
                    "interval {name}: /metrics was never scraped; see {}",
                    run_dir.join("run.log").display()
                );
            }
            let read = summary["records_read"].as_u64().unwrap_or(0);
            if read != produced {
                bail!(
                    "interval {name}: the run read {read} records, {produced} were produced (see {})",
                    run_dir.join("run.log").display()
                );
            }
            eprintln!(
                "  round {}/{rounds} {name:>12}: {:.0} records/s{}",
                round + 1,
                read as f64 / wall,
                scrapes
                    .map(|n| format!(" ({n} scrapes of /metrics)"))
                    .unwrap_or_default()
            );
            runs[i].push(ThroughputRun {
                wall,
                bench_cpu: own_cpu,
                summary,
            });
            if !setup.keep_runs {
                keep_only_logs(&run_dir)?;
            }
        }
    }
    Ok((runs, ceiling_rates))
}

/// One plain consumer run over the whole stream (`tidemark bench-consume` as a child, timed
/// from its start to its exit like a pipeline run); its records/s.
fn consume_run(setup: &Setup) -> anyhow::Result<f64> {
    consume_rate(&setup.exe, &setup.brokers, &setup.topic, setup.produced)
}

/// One plain consumer run (`exe bench-consume`) over `topic`, which holds `produced` records:
/// its records/s, from its start to its exit.
pub(crate) fn consume_rate(
    exe: &Path,
    brokers: &str,
    topic: &str,
    produced: u64,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let out = consume_command(exe, brokers, topic, produced, &[])
        .output()
        .with_context(|| format!("cannot run {} bench-consume", exe.display()))?;
    let wall = t0.elapsed().as_secs_f64();
    check_consumed(&out, produced)?;
    Ok(produced as f64 / wall)
}

/// `exe bench-consume` of `topic` (only `partitions` when not empty), expecting `expect`
/// records.
pub(crate) fn consume_command(
    exe: &Path,
    brokers: &str,
    topic: &str,
    expect: u64,
    partitions: &[i32],
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("bench-consume")
        .args(["--brokers", brokers, "--topic", topic])
        .args(["--expect", &expect.to_string()]);
    if !partitions.is_empty() {
        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
        cmd.args(["--partitions", &list.join(",")]);
    }
    cmd.env("RUST_LOG", "warn").stdin(Stdio::null());
    cmd
}

/// Checks a plain consumer run exited well having read `expected` records.
pub(crate) fn check_consumed(out: &std::process::Output, expected: u64) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "the plain consumer run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let summary = crate::child_log::summary_line(&out.stdout)
        .context("no summary line from the plain consumer run")?;
    let read = summary["records"].as_u64().unwrap_or(0);
    if read != expected {
        bail!("the plain consumer read {read} records, {expected} were expected");
    }
    Ok(())
}

/// One interval's row from its throughput runs: the median run, with every run's rate.
fn median_row(setup: &Setup, variant: &Variant, mut these: Vec<ThroughputRun>) -> BenchRow {
    let (name, interval) = (&variant.name, variant.interval);
    let produced = setup.produced;
    // In round order: a --compare-dedup bench pairs the rounds.
    let all_rates: Vec<f64> = these.iter().map(|r| produced as f64 / r.wall).collect();
    these.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let ThroughputRun {
        wall,
        bench_cpu,
        summary,
    } = these.swap_remove(these.len() / 2);
    let read = produced;
    BenchRow {
        interval: name.to_string(),
        interval_ms: interval.unwrap_or(setup.longest),
        epoch_max_records: setup.epoch_max_records,
        records: read,
        wall_secs: wall,
        records_per_sec: read as f64 / wall,
        mb_per_sec: setup.bytes as f64 / 1e6 / wall,
        commit_ms_p50: summary["commit_ms_p50"].as_f64().unwrap_or(0.0),
        commit_ms_p99: summary["commit_ms_p99"].as_f64().unwrap_or(0.0),
        parquet_files: summary["files_written"].as_u64().unwrap_or(0),
        delta_versions: summary["epochs_committed"].as_u64().unwrap_or(0),
        wal_bytes: summary["wal_bytes"].as_u64().unwrap_or(0),
        checkpoint_share: summary["checkpoint_time_share"].as_f64().unwrap_or(0.0),
        dedup_verdict_share: summary["dedup_verdict_share"].as_f64(),
        dedup_table_growth_ms: summary["dedup_table_growth_ms"].as_f64(),
        dedup_sweep_ms: summary["dedup_sweep_ms"].as_f64(),
        dedup_verdict_cpu_secs: summary["dedup_verdict_cpu_secs"].as_f64(),
        bench_process_cpu_secs: bench_cpu,
        dedup_state_writer_cpu_secs: summary["dedup_state_writer_cpu_secs"].as_f64(),
        peak_rss_mib: summary["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
        cpu_secs: summary["cpu_secs"].as_f64(),
        reading_thread_cpu_secs: summary["reading_thread_cpu_secs"].as_f64(),
        reading_thread_waiting_secs: summary["reading_thread_waiting_secs"].as_f64(),
        all_records_per_sec: all_rates,
        recovery_first_commit_ms: None,
        recovery_first_commit_ms_all: Vec::new(),
        recovery_first_source_commit_ms: None,
        recovery_replayed: None,
        recovery_ms: None,
        recovery_dedup_keys: None,
        recovery_peak_rss_mib: None,
        dedup: variant.dedup,
    }
}

/// The pipeline's log line once it is connected to the source and about to read.
const CONNECTED: &str = "records waiting at start";
/// The pipeline's log line once it has stopped reading and committing.
const STOPPED: &str = "pipeline stopped";

/// SIGKILLs a run of `interval` part-way, restarts it (`--restarts` times from the same
/// crash image, for a table on local disk), and fills `row`'s recovery columns from the
/// restart's summary (the median restart's).
fn recovery_run(
    setup: &Setup,
    options: &BenchOptions,
    variant: &Variant,
    row: &mut BenchRow,
) -> anyhow::Result<()> {
    let (name, interval) = (&variant.name, variant.interval);
    eprint!("  {name:>12}: SIGKILL mid-epoch and restart ...");
    let rec_dir = setup.dir.join(format!("recovery-{name}"));
    // SIGKILL from outside at that share of the measured run time: the middle of the
    // stream, most likely inside an open epoch (crash points are compiled only into
    // test builds, so the release binary is killed as an operator's kill -9 would). The clock
    // starts when the run has connected to the source ("records waiting at start"), so the
    // kill lands in the reading however long the start took. A run that finishes before its
    // kill (the stream is short, the machine fast), or — with checkpoints — a kill that left
    // nothing to replay, is taken again from scratch with half the delay: this measures replay.
    let exe = variant.exe.as_ref().unwrap_or(&setup.exe);
    let mut kill_after =
        Duration::from_secs_f64(row.wall_secs * options.crash_at.clamp(0.05, 0.95));
    let mut attempt = 0;
    let summary = loop {
        attempt += 1;
        if attempt > 5 {
            bail!("interval {name}: 5 recovery runs were not killed mid-stream (last kill {kill_after:?} after \"{CONNECTED}\"); a longer stream (--records) gives it time");
        }
        if rec_dir.exists() {
            std::fs::remove_dir_all(&rec_dir)
                .with_context(|| format!("cannot clear {}", rec_dir.display()))?;
        }
        let config = write_config(
            &rec_dir,
            &setup.brokers,
            &setup.topic,
            &variant.table_uri(&format!("recovery{attempt}")),
            interval,
            setup.longest,
            variant.dedup.then_some(options.bench_dedup()),
            setup.epoch_max_records,
        )?;
        let log = rec_dir.join("run-1.log");
        let finished = run_child_killed(exe, &config, &log, Some(CONNECTED), kill_after)?;
        kill_after /= 2;
        if finished {
            continue;
        }
        // A table on object storage is outside the image: its restarts could not start over.
        let restarts = if variant.table_base.is_some() {
            1
        } else {
            options.restarts
        };
        let image = (restarts > 1)
            .then(|| {
                CrashImage::keep(
                    &rec_dir,
                    &setup.dir.join(format!("recovery-{name}.crash-image")),
                )
            })
            .transpose()?;
        let summary = run_child(exe, &config, &rec_dir.join("run-2.log"), &[])?;
        let replayed = summary["recovery"]["replayed_records"]
            .as_u64()
            .unwrap_or(0);
        if interval.is_some() && replayed == 0 {
            continue;
        }
        let mut summaries = vec![summary];
        if let Some(image) = &image {
            for restart in 2..=restarts {
                image.restore(&rec_dir)?;
                let log = rec_dir.join(format!("run-{}.log", restart + 1));
                let again = run_child(exe, &config, &log, &[])?;
                let replayed_again = again["recovery"]["replayed_records"].as_u64().unwrap_or(0);
                if replayed_again != replayed {
                    bail!("restart {restart} of the crash image replayed {replayed_again} records, the first {replayed}: the image was not restored whole (see {})", log.display());
                }
                summaries.push(again);
            }
        }
        row.recovery_first_commit_ms_all = summaries
            .iter()
            .map(|s| s["first_commit_ms"].as_u64())
            .collect();
        break median_restart(summaries);
    };
    if row.recovery_first_commit_ms_all.len() > 1 {
        let all = &row.recovery_first_commit_ms_all;
        let committed = || all.iter().flatten();
        eprint!(
            " median of {} restarts of one crash image ({} to {} ms, {} without a commit):",
            all.len(),
            committed().min().unwrap_or(&0),
            committed().max().unwrap_or(&0),
            all.iter().filter(|t| t.is_none()).count()
        );
    }
    if !setup.keep_runs {
        keep_only_logs(&rec_dir)?;
    }
    row.recovery_first_commit_ms = summary["first_commit_ms"].as_u64();
    row.recovery_first_source_commit_ms = summary["first_source_commit_ms"].as_u64();
    row.recovery_replayed = summary["recovery"]["replayed_records"].as_u64();
    row.recovery_ms = summary["recovery"]["recovery_ms"].as_u64();
    row.recovery_dedup_keys = summary["recovery"]["dedup_keys_loaded"].as_u64();
    row.recovery_peak_rss_mib = summary["peak_rss_bytes"]
        .as_u64()
        .map(|b| b as f64 / 1048576.0);
    eprintln!(
        " {} ms to first commit ({} replayed, {} dedup keys loaded, recovery {} ms, peak RSS {:.0} MiB), {} ms to the first commit of new records",
        row.recovery_first_commit_ms.unwrap_or(0),
        row.recovery_replayed.unwrap_or(0),
        row.recovery_dedup_keys.unwrap_or(0),
        row.recovery_ms.unwrap_or(0),
        row.recovery_peak_rss_mib.unwrap_or(0.0),
        row.recovery_first_source_commit_ms.unwrap_or(0),
    );
    Ok(())
}

/// The restart whose first commit is the median of `summaries` (by `stats`' definition, as
/// [`median_row`]: the upper of the two middle ones when they are even; a restart without a
/// commit counts as the slowest): its row shows one real restart, not a mix of several.
fn median_restart(mut summaries: Vec<serde_json::Value>) -> serde_json::Value {
    summaries.sort_by_key(|s| s["first_commit_ms"].as_u64().unwrap_or(u64::MAX));
    let middle = summaries.len() / 2;
    summaries.swap_remove(middle)
}

/// Copies the directory tree `from` to `to` (made; files, directories; a symbolic link is
/// an error, none is expected in a state directory or a local table).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let entries =
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", src.display()))?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        } else {
            bail!(
                "{} is neither a file nor a directory: not copied",
                src.display()
            );
        }
    }
    Ok(())
}

/// A copy of a killed run's directory (state and local table) to restart again from;
/// removed when dropped, whatever stopped the bench.
struct CrashImage(PathBuf);

impl CrashImage {
    /// Copies `rec_dir` to `image` (a partial copy is removed).
    fn keep(rec_dir: &Path, image: &Path) -> anyhow::Result<Self> {
        let kept = Self(image.to_path_buf());
        copy_dir(rec_dir, image)?;
        settle_writeback();
        Ok(kept)
    }

    /// Puts `rec_dir` back as the image holds it, keeping the runs' logs (`run-*.log`: the
    /// image holds only the killed run's, the same file).
    fn restore(&self, rec_dir: &Path) -> anyhow::Result<()> {
        let listed = || format!("cannot list {}", rec_dir.display());
        for entry in std::fs::read_dir(rec_dir).with_context(listed)? {
            let entry = entry.with_context(listed)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("run-") && name.ends_with(".log") {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("cannot remove {}", path.display()))?;
        }
        copy_dir(&self.0, rec_dir)?;
        settle_writeback();
        Ok(())
    }
}

/// Writes back every dirty page before a restart of a crash image is timed. The image's copy
/// leaves hundreds of MB dirty that a real kill does not, and the restart's first fsync (on
/// ext4 with `data=ordered`, a journal commit) would wait for them: restarts of one image at
/// 200 ms took 4.9-5.4 s to the first commit with the copy's writeback in them, 0.4 s
/// without.
fn settle_writeback() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

impl Drop for CrashImage {
    fn drop(&mut self) {
        if let Err(e) = remove_if_there(&self.0) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Deletes what a finished run left in `run_dir` except its logs (`*.log`) and its
/// `pipeline.toml`: the table, the WAL and the checkpoint store are what fill a disk (a 2M-record
/// run leaves hundreds of MB), and nothing after the run reads them. Deleting them also drops
/// their dirty pages, which the next run would otherwise share the disk with.
fn keep_only_logs(run_dir: &Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(run_dir).with_context(|| format!("cannot list {}", run_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", run_dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".log") || name == "pipeline.toml" {
            continue;
        }
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_dir() {
            remove_if_there(&path)?;
        } else {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes the directory tree `dir`; one that is not there is no error.
fn remove_if_there(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Prints the table and each interval against the no-checkpoint throughput, and writes
/// bench.csv, bench.json and bench.svg.
fn write_results(
    setup: &Setup,
    rows: &[BenchRow],
    rounds: usize,
    record_bytes: usize,
    ceiling: &[f64],
) -> anyhow::Result<()> {
    let dir = &setup.dir;
    let table = render_table(rows);
    println!("{table}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    print!("{}", render_cpu(rows, cores));
    std::fs::write(dir.join("bench.csv"), render_csv(rows))?;
    std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(rows)?)?;
    std::fs::write(
        dir.join("bench.svg"),
        render_svg(rows, setup.produced, record_bytes),
    )?;
    let rates = |r: &BenchRow| {
        r.all_records_per_sec
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match rows.iter().find(|r| r.interval == "none") {
        Some(none) => {
            for r in rows {
                println!(
                    "  {:>12}: {:.0}% of the no-checkpoint throughput (median of {rounds}; runs: {})",
                    r.interval,
                    100.0 * r.records_per_sec / none.records_per_sec,
                    rates(r)
                );
            }
        }
        None => {
            for r in rows {
                println!("  {:>12}: runs: {}", r.interval, rates(r));
            }
        }
    }
    for with in rows.iter().filter(|r| r.interval.ends_with(WITH_METRICS)) {
        let base = with.interval.trim_end_matches(WITH_METRICS);
        if let Some(without) = rows.iter().find(|r| r.interval == base) {
            println!(
                "  metrics at {base}: {:.0} records/s with, {:.0} without (medians of {rounds}): {:+.2}%",
                with.records_per_sec,
                without.records_per_sec,
                100.0 * (with.records_per_sec / without.records_per_sec - 1.0)
            );
        }
    }
    // --compare-dedup: each dedup row against the row before it (same interval, dedup off),
    // round by round (the two ran back to back on the same stream).
    for pair in rows.windows(2) {
        let (off, on) = (&pair[0], &pair[1]);
        if off.dedup || !on.dedup || on.interval_ms != off.interval_ms {
            continue;
        }
        let per_round = round_ratios(&on.all_records_per_sec, &off.all_records_per_sec);
        let shown: Vec<String> = per_round
            .iter()
            .map(|r| format!("{:.0}%", r * 100.0))
            .collect();
        println!(
            "  {:>12}: dedup on at {:.0}% of dedup off (median of the per-round ratios; rounds: {}); medians {:.0} vs {:.0} records/s; checkpoint share {:.2}% vs {:.2}%{}{}",
            on.interval,
            crate::stats::median_f64(&per_round) * 100.0,
            shown.join(", "),
            on.records_per_sec,
            off.records_per_sec,
            on.checkpoint_share * 100.0,
            off.checkpoint_share * 100.0,
            verdict_cost(on),
            dedup_cpu(on, off, cores),
        );
    }
    // --baseline-exe: this build against the baseline, variant by variant, round by round.
    for base in rows.iter().filter(|r| r.interval.ends_with("@base")) {
        let name = base.interval.trim_end_matches("@base");
        let Some(this) = rows.iter().find(|r| r.interval == name) else {
            continue;
        };
        let per_round = round_ratios(&this.all_records_per_sec, &base.all_records_per_sec);
        println!(
            "  {name:>12}: this build at {:.0}% of the baseline's throughput (median of the per-round ratios); medians {:.0} vs {:.0} records/s; commit p50 {:.0} vs {:.0} ms; checkpoint share {:.2}% vs {:.2}%",
            crate::stats::median_f64(&per_round) * 100.0,
            this.records_per_sec,
            base.records_per_sec,
            this.commit_ms_p50,
            base.commit_ms_p50,
            this.checkpoint_share * 100.0,
            base.checkpoint_share * 100.0,
        );
    }
    // --table-uri: the object-store table against the local one, variant by variant, round by
    // round (the two ran back to back on the same stream).
    for remote in rows
        .iter()
        .filter(|r| r.interval.ends_with(ON_OBJECT_STORE))
    {
        let name = remote.interval.trim_end_matches(ON_OBJECT_STORE);
        let Some(local) = rows.iter().find(|r| r.interval == name) else {
            continue;
        };
        let per_round = round_ratios(&remote.all_records_per_sec, &local.all_records_per_sec);
        println!(
            "  {name:>12}: object-store table at {:.0}% of the local table's throughput (median of the per-round ratios); medians {:.0} vs {:.0} records/s; commit p50 {:.0} vs {:.0} ms, p99 {:.0} vs {:.0} ms",
            crate::stats::median_f64(&per_round) * 100.0,
            remote.records_per_sec,
            local.records_per_sec,
            remote.commit_ms_p50,
            local.commit_ms_p50,
            remote.commit_ms_p99,
            local.commit_ms_p99,
        );
    }
    if !ceiling.is_empty() {
        let median = crate::stats::median_f64(ceiling);
        println!(
            "  plain consumer (the broker's consume ceiling, nothing else done): {median:.0} records/s (median of {rounds}; runs: {})",
            ceiling
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in rows {
            let per_round = round_ratios(&r.all_records_per_sec, ceiling);
            println!(
                "  {:>12}: {:.0}% of the plain consumer (median of the per-round ratios)",
                r.interval,
                crate::stats::median_f64(&per_round) * 100.0
            );
        }
        std::fs::write(
            dir.join("ceiling.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "what": "records/s of a plain consumer reading the whole stream (tidemark bench-consume), one run per round",
                "runs": ceiling,
                "median": median,
            }))?,
        )?;
    }
    println!(
        "results: {0}/bench.csv, {0}/bench.json, plot {0}/bench.svg{1}",
        dir.display(),
        if ceiling.is_empty() {
            ""
        } else {
            ", ceiling.json"
        }
    );
    Ok(())
}

/// What the dedup verdicts took of `row`'s median run, as the `--compare-dedup` line ends:
/// `; verdicts X% of the wall time (the key table's growth Y ms)`, or
/// nothing when the run did not report it (an older build as `--baseline-exe`).
fn verdict_cost(row: &BenchRow) -> String {
    let Some(share) = row.dedup_verdict_share else {
        return String::new();
    };
    let sweeps = row
        .dedup_sweep_ms
        .map(|ms| format!(", its sweeps of evicted keys {ms:.0} ms"))
        .unwrap_or_default();
    let growth = row
        .dedup_table_growth_ms
        .map(|ms| format!(" (the key table's growth {ms:.0} ms{sweeps})"))
        .unwrap_or_default();
    format!("; verdicts {:.1}% of the wall time{growth}", share * 100.0)
}

/// What dedup added to the CPU a record costs, as the `--compare-dedup` line ends: `; CPU per
/// record X vs Y µs (of the D µs dedup adds: verdicts V µs, the state writer W µs, the rest R
/// µs): at equal cores busy dedup on would be at P% of off; keeping the C cores the bench's own
/// process left busy, at most Q%`. P is the ratio of the two costs
/// (what the throughput ratio is when both runs keep the same cores busy); Q is the dedup
/// run's ceiling on the `cores` the bench's own process (the in-process cluster) left it, over
/// the dedup-off run's measured rate (what it could reach at today's cost were it alone to
/// keep those cores busy). The split needs the dedup run's verdict and state-writer CPU; the
/// rest is the residual (the changelog's WAL frames, more memory touched, and the two runs'
/// noise). Nothing when either row did not report CPU time.
fn dedup_cpu(on: &BenchRow, off: &BenchRow, cores: usize) -> String {
    let (Some(on_cost), Some(off_cost)) = (on.cpu_micros_per_record(), off.cpu_micros_per_record())
    else {
        return String::new();
    };
    let per_record = |secs: Option<f64>| secs.map(|s| s * 1e6 / on.records.max(1) as f64);
    let split = match (
        per_record(on.dedup_verdict_cpu_secs),
        per_record(on.dedup_state_writer_cpu_secs),
    ) {
        (Some(v), Some(w)) => format!(
            " (of the {:.2} µs dedup adds: verdicts {v:.2} µs, the state writer {w:.2} µs, the rest {:.2} µs)",
            on_cost - off_cost,
            on_cost - off_cost - v - w
        ),
        _ => String::new(),
    };
    // The cores the pipeline could have: the machine's, less what the bench's own process
    // (the in-process cluster serving the stream) kept busy during the dedup run.
    let left = on.cores_left(cores);
    let which = match on.bench_process_cores() {
        Some(_) => format!("the {left:.2} cores the bench's own process left"),
        None => format!("all {cores} cores"),
    };
    let ceiling = left * 1e6 / on_cost.max(1e-9);
    format!(
        "; CPU per record {on_cost:.2} vs {off_cost:.2} µs{split}: at equal cores busy dedup on would be at {:.0}% of off; keeping {which} busy, at most {:.0}%",
        100.0 * off_cost / on_cost.max(1e-9),
        100.0 * ceiling / off.records_per_sec.max(1e-9),
    )
}

/// Round by round, `a`'s rate over `b`'s (the two ran back to back on the same stream).
fn round_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

/// The suffix of an interval run with metrics on (`--metrics`).
const WITH_METRICS: &str = "+metrics";

/// Scrapes a run's `/metrics` once a second, as Prometheus would, while the run lasts.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Scraper {
    /// Turns metrics on in `config` (a free loopback port) and starts scraping it.
    fn start(config: &Path) -> anyhow::Result<Self> {
        use std::io::Write;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut file = std::fs::OpenOptions::new().append(true).open(config)?;
        writeln!(file, "\n[observability]\nhttp = \"{addr}\"")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut scrapes = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if scrape(&addr).is_ok_and(|body| body.contains("tidemark_records_read_total")) {
                    scrapes += 1;
                }
            }
            scrapes
        });
        Ok(Self { stop, thread })
    }

    /// Stops scraping; returns how many scrapes succeeded.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// One `GET /metrics` over plain HTTP/1.0.
fn scrape(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

pub(crate) async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("admin client")?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

/// `checkpoint.max_records` of a bench run without `--epoch-max-records`: more than any
/// bench's epoch reads, so the interval alone ends its epochs.
pub(crate) const UNCAPPED_EPOCH_RECORDS: u64 = 100_000_000;

/// `checkpoint.max_records` of a run given `--epoch-max-records cap` (0: uncapped).
fn epoch_max_records(cap: u64) -> u64 {
    if cap == 0 {
        UNCAPPED_EPOCH_RECORDS
    } else {
        cap
    }
}

// One parameter per setting a bench run's config varies by, as the callers name them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_config(
    dir: &Path,
    brokers: &str,
    topic: &str,
    table_uri: &str,
    interval: Option<u64>,
    longest: u64,
    dedup: Option<BenchDedup>,
    max_records: u64,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let (interval_ms, enabled) = match interval {
        Some(ms) => (ms, true),
        None => (longest, false),
    };
    let dedup = match dedup {
        Some(BenchDedup {
            lateness_ms,
            expected_keys,
        }) => {
            // Written only when set: a baseline build older than the setting refuses it.
            let sized = if expected_keys > 0 {
                format!("expected_keys = {expected_keys}\n")
            } else {
                String::new()
            };
            format!(
                "\n[dedup]\nkey = [\"id\"]\nevent_time = \"created_at\"\nallowed_lateness_ms = {lateness_ms}\n{sized}"
            )
        }
        None => String::new(),
    };
    let text = format!(
        r#"{MARK}
pipeline_id = "bench"
[source]
brokers = "{brokers}"
topics = ["{topic}"]
[sink]
table_uri = "{table_uri}"
source_columns = true
columns = [
  {{ name = "id", type = "string", nullable = false }},
  {{ name = "customer", type = "string", nullable = false }},
  {{ name = "amount", type = "double", nullable = false }},
  {{ name = "created_at", type = "timestamp", nullable = false }},
  {{ name = "note", type = "string" }},
]
[checkpoint]
interval_ms = {interval_ms}
max_records = {max_records}
max_bytes = 4294967296
enabled = {enabled}
{dedup}"#
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn run_child_raw(
    exe: &Path,
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<std::process::Output> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .arg("--until-caught-up")
        .env_remove("TIDEMARK_CRASH_AT")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))
}

/// Runs the pipeline and SIGKILLs it `after` its start — or, with `wait_for`, `after` the
/// first line of its log containing that text; returns true if it finished (or had logged
/// that it stopped) before the kill.
fn run_child_killed(
    exe: &Path,
    config: &Path,
    log: &Path,
    wait_for: Option<&str>,
    after: Duration,
) -> anyhow::Result<bool> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .arg("--until-caught-up")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map(crate::child::KillOnDrop::new)
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let mut until = wait_for.is_none().then(|| Instant::now() + after);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        match (until, wait_for) {
            (Some(t), _) if Instant::now() >= t => break,
            (None, Some(text)) if std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) => {
                until = Some(Instant::now() + after);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    child.wait()?;
    // Killed while exiting, its work done: not a kill mid-stream either.
    Ok(std::fs::read_to_string(log).is_ok_and(|l| l.contains(STOPPED)))
}

fn run_child(
    exe: &Path,
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let out = run_child_raw(exe, config, log, env)?;
    if !out.status.success() {
        bail!(
            "pipeline run failed ({}); see {}",
            out.status,
            log.display()
        );
    }
    crate::child_log::summary_line(&out.stdout)
        .with_context(|| format!("no summary line from the run; see {}", log.display()))
}

/// What the bench stream looks like: shared by `tidemark bench` and `bench-workers`.
pub(crate) struct StreamShape {
    /// Records to produce.
    pub records: u64,
    /// Approximate JSON bytes per record.
    pub record_bytes: usize,
    /// Partitions of the topic (record i goes to partition i % partitions).
    pub partitions: i32,
    /// Distinct `id`s (0: all distinct).
    pub keys: u64,
    /// Share of records that repeat the previous one.
    pub duplicate_rate: f64,
    /// Seed of the random fields.
    pub seed: u64,
}

/// The `[dedup]` settings of a bench's dedup runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BenchDedup {
    /// `dedup.allowed_lateness_ms`.
    pub lateness_ms: u64,
    /// `dedup.expected_keys`.
    pub expected_keys: u64,
}

impl BenchOptions {
    fn bench_dedup(&self) -> BenchDedup {
        BenchDedup {
            lateness_ms: self.dedup_lateness_ms,
            expected_keys: self.dedup_expected_keys,
        }
    }

    fn shape(&self) -> StreamShape {
        StreamShape {
            records: self.records,
            record_bytes: self.record_bytes,
            partitions: self.partitions,
            keys: self.keys,
            duplicate_rate: self.duplicate_rate,
            seed: self.seed,
        }
    }
}

/// Produces the stream; returns (records, key + value bytes).
pub(crate) fn produce(brokers: &str, topic: &str, o: &StreamShape) -> anyhow::Result<(u64, u64)> {
    if !(0.0..1.0).contains(&o.duplicate_rate) {
        bail!("--duplicate-rate must be in [0, 1)");
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        // The mock cluster keeps at most 5 MiB per partition, counted compressed.
        .set("compression.type", "lz4")
        .create()
        .context("cannot create the bench producer")?;
    let mut rng = StdRng::seed_from_u64(o.seed);
    let base_us: i64 = 1_764_000_000_000_000;
    let mut sent = 0u64;
    let mut bytes = 0u64;
    let mut i = 0u64;
    let mut last = String::new();
    while sent < o.records {
        let value = if sent > 0 && rng.random_bool(o.duplicate_rate) {
            last.clone()
        } else {
            let key = if o.keys > 0 { i % o.keys } else { i };
            let mut v = format!(
                r#"{{"id":"o-{key:012}","customer":"c-{:06}","amount":{}.{:02},"created_at":{},"note":""#,
                rng.random_range(0..100_000),
                rng.random_range(0..10_000),
                rng.random_range(0..100),
                base_us + i as i64 * 1000
            );
            while v.len() + 2 < o.record_bytes {
                v.push('x');
            }
            v.push_str("\"}");
            i += 1;
            v
        };
        let partition = (sent % o.partitions as u64) as i32;
        let record = BaseRecord::<(), _>::to(topic)
            .partition(partition)
            .payload(value.as_bytes());
        crate::produce::send_retrying(&producer, record).context("producing a bench record")?;
        bytes += value.len() as u64;
        last = value;
        sent += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(120)))
        .context("flushing the bench producer")?;
    Ok((sent, bytes))
}

impl BenchRow {
    /// `cpu` seconds over the run's wall time: the cores (or, for one thread, the share of a
    /// core) they kept busy on average.
    fn per_wall(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.map(|cpu| cpu / self.wall_secs.max(1e-9))
    }

    /// Cores the pipeline process kept busy on average.
    fn cores_busy(&self) -> Option<f64> {
        self.per_wall(self.cpu_secs)
    }

    /// CPU microseconds the pipeline process spent per record, all threads together.
    fn cpu_micros_per_record(&self) -> Option<f64> {
        self.cpu_secs
            .map(|cpu| cpu * 1e6 / self.records.max(1) as f64)
    }

    /// Cores the bench's own process kept busy while the run went on.
    fn bench_process_cores(&self) -> Option<f64> {
        self.per_wall(self.bench_process_cpu_secs)
    }

    /// Of `cores`, those the bench's own process left the pipeline (all of them when its CPU
    /// is not known).
    fn cores_left(&self, cores: usize) -> f64 {
        (cores as f64 - self.bench_process_cores().unwrap_or(0.0)).max(0.0)
    }

    /// Share of the wall time the reading thread was on a core.
    fn reading_thread_busy(&self) -> Option<f64> {
        self.per_wall(self.reading_thread_cpu_secs)
    }

    /// Share of the wall time the reading thread waited for a core.
    fn reading_thread_waiting(&self) -> Option<f64> {
        self.per_wall(self.reading_thread_waiting_secs)
    }
}

/// The CPU section printed after the table: per row, the CPU a record cost, the cores kept
/// busy, how busy the reading thread was, and the records/s the machine's cores would allow at
/// that cost were nothing else in the way. Why: on few cores throughput is bounded by the
/// CPU per record as much as by any stage; this says which bound a row is near. Empty when no
/// row reported CPU time.
fn render_cpu(rows: &[BenchRow], cores: usize) -> String {
    let mut s = String::new();
    if rows.iter().all(|r| r.cpu_secs.is_none()) {
        return s;
    }
    let _ = writeln!(
        s,
        "  CPU of the pipeline process (every thread; the bench's own process, which produces the stream and serves it on the in-process cluster, is not counted), {cores} cores here:"
    );
    for r in rows {
        let (Some(per_record), Some(busy)) = (r.cpu_micros_per_record(), r.cores_busy()) else {
            continue;
        };
        let waiting = r
            .reading_thread_waiting()
            .map(|w| format!(" and waiting for one {:.0}%", w * 100.0))
            .unwrap_or_default();
        let reading = r
            .reading_thread_busy()
            .map(|b| {
                format!(
                    ", reading thread on a core {:.0}%{waiting} of the wall time",
                    b * 100.0
                )
            })
            .unwrap_or_default();
        let ceiling = |cores: f64| cores * 1e6 / per_record.max(1e-9);
        let bench = r
            .bench_process_cores()
            .map(|b| {
                format!(
                    " ({:.0} with what the bench's own process left of them: it kept {b:.2} cores busy meanwhile)",
                    ceiling(r.cores_left(cores))
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:>12}: {per_record:.2} µs per record, {busy:.2} cores busy{reading}; at this cost {cores} cores allow at most {:.0} records/s{bench}",
            r.interval,
            ceiling(cores as f64),
        );
    }
    s
}

fn render_table(rows: &[BenchRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:>12} {:>10} {:>7} {:>9} {:>8} {:>8} {:>6} {:>6} {:>9} {:>7} {:>7} {:>9} {:>8}",
        "interval",
        "records/s",
        "MB/s",
        "commit50",
        "commit99",
        "files",
        "vers",
        "wal MB",
        "ckpt %",
        "RSS MiB",
        "rec ms",
        "replayed",
        "recov ms"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>12} {:>10.0} {:>7.1} {:>9.1} {:>8.1} {:>8} {:>6} {:>6.1} {:>9.2} {:>7.0} {:>7} {:>9} {:>8}",
            r.interval,
            r.records_per_sec,
            r.mb_per_sec,
            r.commit_ms_p50,
            r.commit_ms_p99,
            r.parquet_files,
            r.delta_versions,
            r.wal_bytes as f64 / 1e6,
            r.checkpoint_share * 100.0,
            r.peak_rss_mib,
            r.recovery_first_commit_ms.map_or("-".into(), |v| v.to_string()),
            r.recovery_replayed.map_or("-".into(), |v| v.to_string()),
            r.recovery_ms.map_or("-".into(), |v| v.to_string()),
        );
    }
    s
}

fn render_csv(rows: &[BenchRow]) -> String {
    let mut s = String::from("interval,interval_ms,epoch_max_records,records,wall_secs,records_per_sec,mb_per_sec,commit_ms_p50,commit_ms_p99,parquet_files,delta_versions,wal_bytes,checkpoint_share,peak_rss_mib,recovery_first_commit_ms,recovery_replayed,recovery_ms,cpu_secs,reading_thread_cpu_secs,reading_thread_waiting_secs\n");
    for r in rows {
        let o = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.1},{:.2},{:.2},{:.2},{},{},{},{:.4},{:.1},{},{},{},{},{},{}",
            r.interval,
            r.interval_ms,
            r.epoch_max_records,
            r.records,
            r.wall_secs,
            r.records_per_sec,
            r.mb_per_sec,
            r.commit_ms_p50,
            r.commit_ms_p99,
            r.parquet_files,
            r.delta_versions,
            r.wal_bytes,
            r.checkpoint_share,
            r.peak_rss_mib,
            o(r.recovery_first_commit_ms),
            o(r.recovery_replayed),
            o(r.recovery_ms),
            f(r.cpu_secs),
            f(r.reading_thread_cpu_secs),
            f(r.reading_thread_waiting_secs),
        );
    }
    s
}

/// Two panels side by side: throughput and time-to-first-commit after a SIGKILL, against the
/// intervals in the order run (categorical x axis).
fn render_svg(rows: &[BenchRow], records: u64, record_bytes: usize) -> String {
    let (w, h) = (900.0, 380.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">tidemark bench: {records} records of ~{record_bytes} B, checkpoint interval against throughput and recovery</text>
"#,
        w / 2.0
    );
    type Value = fn(&BenchRow) -> Option<f64>;
    let panels: [(&str, Value, &str); 2] = [
        (
            "records/s end to end",
            |r: &BenchRow| Some(r.records_per_sec),
            "#1f77b4",
        ),
        (
            "ms to first commit after SIGKILL",
            |r: &BenchRow| r.recovery_first_commit_ms.map(|v| v as f64),
            "#d62728",
        ),
    ];
    for (p, (title, value, color)) in panels.iter().enumerate() {
        let x0 = 70.0 + p as f64 * 450.0;
        let (pw, ph, y0) = (340.0, 260.0, 50.0);
        let vals: Vec<Option<f64>> = rows.iter().map(value).collect();
        let max = vals.iter().flatten().cloned().fold(0.0, f64::max).max(1.0) * 1.1;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{title}</text>"#,
            x0 + pw / 2.0,
            y0 - 8.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        for t in 0..=4 {
            let v = max * t as f64 / 4.0;
            let y = y0 + ph - ph * t as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{:.0}</text>"##,
                x0 + pw,
                x0 - 4.0,
                y + 4.0,
                v
            );
        }
        let n = rows.len().max(1) as f64;
        let mut points = Vec::new();
        for (i, (r, v)) in rows.iter().zip(&vals).enumerate() {
            let x = x0 + pw * (i as f64 + 0.5) / n;
            let _ = writeln!(
                s,
                r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + ph + 16.0,
                r.interval
            );
            if let Some(v) = v {
                let y = y0 + ph - ph * v / max;
                points.push(format!("{x:.1},{y:.1}"));
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="10">{v:.0}</text>"#,
                    y - 8.0
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">checkpoint interval</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 34.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over two rounds every variant runs right before and right after each of its
    /// neighbours, and every round runs each variant once.
    #[test]
    fn rounds_alternate_the_order_of_the_variants() {
        assert_eq!(round_order(0, 4), [0, 1, 2, 3]);
        assert_eq!(round_order(1, 4), [3, 2, 1, 0]);
        assert_eq!(round_order(2, 4), [0, 1, 2, 3]);
        for round in 0..5 {
            let mut order = round_order(round, 7);
            order.sort_unstable();
            assert_eq!(order, (0..7).collect::<Vec<_>>());
        }
        let follows = |round: usize, a: usize, b: usize| {
            round_order(round, 4).windows(2).any(|w| w == [a, b])
        };
        assert!(follows(0, 0, 1) && follows(1, 1, 0));
    }

    /// The text of a bench run's config written into `dir` (1 s interval), with `dedup` and
    /// `checkpoint.max_records = max_records`.
    fn written_config(dir: &Path, dedup: Option<BenchDedup>, max_records: u64) -> String {
        let path = write_config(
            dir,
            "127.0.0.1:9092",
            "t",
            "table",
            Some(1000),
            1000,
            dedup,
            max_records,
        )
        .unwrap();
        std::fs::read_to_string(path).unwrap()
    }

    /// `--epoch-max-records` becomes `checkpoint.max_records`; without it the epochs are
    /// uncapped, so the interval alone ends them.
    #[test]
    fn the_epoch_cap_is_the_runs_max_records() {
        let dir = tempfile::tempdir().unwrap();
        // As the bench writes it: the flag's value made a run's cap once, at setup.
        let config = |cap: u64| {
            let max_records = epoch_max_records(cap);
            written_config(&dir.path().join(format!("c{cap}")), None, max_records)
        };
        let checkpoint = |text: &str| {
            let parsed: toml::Value = toml::from_str(text).unwrap();
            parsed["checkpoint"]["max_records"].as_integer().unwrap()
        };
        assert_eq!(checkpoint(&config(100_000)), 100_000);
        assert_eq!(epoch_max_records(100_000), 100_000, "the rows' cap");
        assert_eq!(
            checkpoint(&config(0)),
            UNCAPPED_EPOCH_RECORDS as i64,
            "no cap given: uncapped"
        );
    }

    /// `dedup.expected_keys` is written only when set: a `--baseline-exe` older than the
    /// setting refuses a config that names it.
    #[test]
    fn the_dedup_runs_name_expected_keys_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let config = |expected_keys: u64| {
            let dedup = BenchDedup {
                lateness_ms: 1_000,
                expected_keys,
            };
            written_config(
                &dir.path().join(format!("k{expected_keys}")),
                Some(dedup),
                UNCAPPED_EPOCH_RECORDS,
            )
        };
        let unset = config(0);
        assert!(unset.contains("allowed_lateness_ms = 1000"), "{unset}");
        assert!(!unset.contains("expected_keys"), "{unset}");
        let set = config(2_000_000);
        let dedup = &set[set.find("[dedup]").unwrap()..];
        assert!(dedup.contains("\nexpected_keys = 2000000\n"), "{set}");
    }

    #[test]
    fn the_median_restart_is_a_real_one_the_upper_middle_when_even() {
        let runs = |ms: &[u64]| -> Vec<serde_json::Value> {
            ms.iter()
                .enumerate()
                .map(|(i, m)| serde_json::json!({"first_commit_ms": m, "run": i}))
                .collect()
        };
        let median = median_restart(runs(&[900, 300, 500]));
        assert_eq!(
            (median["first_commit_ms"].as_u64(), median["run"].as_u64()),
            (Some(500), Some(2))
        );
        assert_eq!(
            median_restart(runs(&[700, 400, 600, 500]))["first_commit_ms"],
            600
        );
        assert_eq!(median_restart(runs(&[42]))["first_commit_ms"], 42);
        // A restart without a commit is the slowest, never the median of faster ones.
        let mut three = runs(&[300, 200, 100]);
        three[2] = serde_json::json!({"run": 2});
        assert_eq!(median_restart(three)["first_commit_ms"], 300);
    }

    /// A restart's directory goes back to the crash image whole (nested files, nothing the
    /// restart added), and the restarts' logs stay.
    #[test]
    fn a_crash_image_is_restored_whole_keeping_the_restart_logs() {
        let dir = tempfile::tempdir().unwrap();
        let (rec, image) = (dir.path().join("rec"), dir.path().join("image"));
        std::fs::create_dir_all(rec.join(".tidemark/wal")).unwrap();
        std::fs::write(rec.join(".tidemark/wal/0.wal"), b"frames").unwrap();
        std::fs::write(rec.join("run-1.log"), b"killed run").unwrap();
        let kept = CrashImage::keep(&rec, &image).unwrap();
        // The first restart changes the state and adds files and its log.
        std::fs::write(rec.join(".tidemark/wal/0.wal"), b"changed").unwrap();
        std::fs::write(rec.join(".tidemark/wal/1.wal"), b"new").unwrap();
        std::fs::write(rec.join("run-2.log"), b"first restart").unwrap();
        kept.restore(&rec).unwrap();
        let read = |p: &str| std::fs::read(rec.join(p)).unwrap();
        assert_eq!(read(".tidemark/wal/0.wal"), b"frames");
        assert!(!rec.join(".tidemark/wal/1.wal").exists());
        assert_eq!(read("run-1.log"), b"killed run");
        assert_eq!(read("run-2.log"), b"first restart");
        // The image goes with its guard; removing what is gone is no error.
        drop(kept);
        assert!(!image.exists());
        remove_if_there(&image).unwrap();
    }

    #[test]
    fn a_finished_run_keeps_its_logs_and_config_only() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run-1s");
        std::fs::create_dir_all(run.join(".tidemark/wal")).unwrap();
        std::fs::create_dir_all(run.join("table/_delta_log")).unwrap();
        std::fs::write(run.join(".tidemark/wal/00000001.wal"), b"wal").unwrap();
        std::fs::write(run.join("table/part-0.parquet"), b"rows").unwrap();
        std::fs::write(run.join("dead-letters.jsonl"), b"{}").unwrap();
        std::fs::write(run.join("run.log"), b"log").unwrap();
        std::fs::write(run.join("run-2.log"), b"log 2").unwrap();
        std::fs::write(run.join("pipeline.toml"), b"toml").unwrap();
        keep_only_logs(&run).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["pipeline.toml", "run-2.log", "run.log"]);
        assert_eq!(std::fs::read(run.join("run.log")).unwrap(), b"log");
    }

    #[test]
    fn intervals_parse_with_units_and_none() {
        assert_eq!(parse_interval("50ms").unwrap(), Some(50));
        assert_eq!(parse_interval("5s").unwrap(), Some(5000));
        assert_eq!(parse_interval(" none ").unwrap(), None);
        assert!(parse_interval("5m").is_err());
        assert!(parse_interval("0ms").is_err());
    }

    fn cpu_row(interval: &str, wall: f64, cpu: Option<f64>, reading: Option<f64>) -> BenchRow {
        BenchRow {
            interval: interval.into(),
            records: 2_000_000,
            wall_secs: wall,
            records_per_sec: 2_000_000.0 / wall,
            cpu_secs: cpu,
            reading_thread_cpu_secs: reading,
            ..Default::default()
        }
    }

    /// The CPU section's figures come from the summary's CPU seconds: per record, cores busy,
    /// the reading thread's share of the wall time and the ceiling the cores allow.
    #[test]
    fn the_cpu_section_says_what_a_record_costs_and_what_the_cores_allow() {
        let off = cpu_row("1s", 4.0, Some(5.0), Some(2.0));
        let on = BenchRow {
            reading_thread_waiting_secs: Some(1.0),
            ..cpu_row("1s+dedup", 5.0, Some(8.2), Some(4.5))
        };
        let text = render_cpu(&[off.clone(), on.clone()], 2);
        assert!(text.contains("2 cores here"), "{text}");
        assert!(
            text.contains("1s: 2.50 µs per record, 1.25 cores busy, reading thread on a core 50% of the wall time; at this cost 2 cores allow at most 800000 records/s"),
            "{text}"
        );
        assert!(
            text.contains("1s+dedup: 4.10 µs per record, 1.64 cores busy, reading thread on a core 90% and waiting for one 20% of the wall time; at this cost 2 cores allow at most 487805 records/s"),
            "{text}"
        );
        // Equal cores busy: 2.50 / 4.10 = 61%. All 2 cores busy: 2 / 4.10 µs = 487,805
        // records/s against the dedup-off run's 500,000: 98%.
        assert_eq!(
            dedup_cpu(&on, &off, 2),
            "; CPU per record 4.10 vs 2.50 µs: at equal cores busy dedup on would be at 61% of off; keeping all 2 cores busy, at most 98%"
        );
        // With the verdicts' and the state writer's CPU, dedup's cost is split up: 1.60 µs in
        // all, 0.4 s / 2M = 0.2 µs of verdicts, 0.6 s / 2M = 0.3 µs of writing.
        let split = BenchRow {
            dedup_verdict_cpu_secs: Some(0.4),
            dedup_state_writer_cpu_secs: Some(0.6),
            ..on.clone()
        };
        assert_eq!(
            dedup_cpu(&split, &off, 2),
            "; CPU per record 4.10 vs 2.50 µs (of the 1.60 µs dedup adds: verdicts 0.20 µs, the state writer 0.30 µs, the rest 1.10 µs): at equal cores busy dedup on would be at 61% of off; keeping all 2 cores busy, at most 98%"
        );
        // With the bench's own CPU known, the ceiling is that of the cores it left: 0.5 s over
        // the dedup run's 5 s is 0.10 cores, so 1.90 cores at 4.10 µs, 463,415 records/s: 93%.
        let shared = BenchRow {
            bench_process_cpu_secs: Some(0.5),
            ..on.clone()
        };
        assert!(
            dedup_cpu(&shared, &off, 2)
                .ends_with("keeping the 1.90 cores the bench's own process left busy, at most 93%"),
            "{}",
            dedup_cpu(&shared, &off, 2)
        );
        // A build that does not report CPU time (an older --baseline-exe): nothing said.
        let old = cpu_row("1s@base", 4.0, None, None);
        assert_eq!(render_cpu(std::slice::from_ref(&old), 2), "");
        assert_eq!(dedup_cpu(&on, &old, 2), "");
        // The bench's own CPU meanwhile (the in-process cluster serving the stream) leaves the
        // pipeline less: 1.0 s over 4.0 s is 0.25 cores, and 1.75 cores at 2.5 µs allow 700k.
        let shared = BenchRow {
            bench_process_cpu_secs: Some(1.0),
            ..off.clone()
        };
        let text = render_cpu(&[shared], 2);
        assert!(
            text.contains("at most 800000 records/s (700000 with what the bench's own process left of them: it kept 0.25 cores busy meanwhile)"),
            "{text}"
        );
        // Without the reading thread's figure, the rest is still said.
        let text = render_cpu(&[cpu_row("1s", 4.0, Some(5.0), None)], 4);
        assert!(
            text.contains("1s: 2.50 µs per record, 1.25 cores busy; at this cost 4 cores allow at most 1600000 records/s"),
            "{text}"
        );
    }

    /// `--table-uri`: each variant runs on the local disk, then right after it on the object
    /// store, each run into a fresh table under the prefix.
    #[test]
    fn table_uri_adds_an_object_store_run_after_each_variant() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: BenchOptions,
        }
        let cli = Cli::parse_from([
            "bench",
            "--intervals",
            "200ms,1s",
            "--table-uri",
            "s3://b/p/",
        ]);
        let intervals = parse_intervals(&cli.options.intervals).unwrap();
        let all = variants(&intervals, &cli.options);
        let names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["200ms", "200ms@s3", "1s", "1s@s3"]);
        assert_eq!(all[0].table_uri("round1"), "table");
        let uri = all[1].table_uri("round1");
        assert!(uri.starts_with("s3://b/p/200ms-s3-round1-"), "{uri}");
        assert_ne!(uri, all[1].table_uri("round1"), "a fresh table per run");
    }
}
