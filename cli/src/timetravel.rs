//! `tidemark history`, `tidemark cat`, `tidemark export` and `tidemark restore`: a table's
//! versions, its rows as of a version or a time, and an in-place restore coordinated with the
//! Tidemark pipeline that writes the table (the command line side of
//! [`tidemark_table::history`], [`tidemark_table::time_travel`] and
//! [`tidemark_table::restore`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::Args;
use futures::TryStreamExt;

use crate::backup_cmds::parse_timestamp;
use tidemark_checkpoint::CheckpointStore;
use tidemark_engine::config::PipelineConfig;
use tidemark_engine::state_lock::{RunId, StateLock, StateLockError};
use tidemark_table::history::{history, VersionInfo};
use tidemark_table::location::open_store;
use tidemark_table::log::LogListing;
use tidemark_table::restore::{PipelineRewind, PreparedRestore, RestoreReport};
use tidemark_table::time_travel::{AsOf, VersionReader};

/// `tidemark history`.
#[derive(Debug, Args)]
#[command(
    after_help = "Columns: version, commit time (UTC), operation, the Tidemark pipeline \
and epoch that wrote it, the writer's failover generation ('-' when the commit records none), \
rows and files added, files removed. A RESTORE commit shows the version it restored.\n\n\
Examples:\n  tidemark history tables/orders\n  tidemark history tables/orders --limit 20 --json"
)]
pub struct HistoryArgs {
    /// The table (a path, file:// or s3://bucket/prefix URL).
    table: String,
    /// Show only the newest N versions.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print a JSON array (newest first) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Which version: `--version N` or `--timestamp T` (newest when neither).
#[derive(Debug, Args)]
pub struct AsOfArgs {
    /// Read the table as of this version.
    #[arg(long, value_name = "N", conflicts_with = "timestamp")]
    version: Option<u64>,
    /// Read the newest version committed at or before this time: RFC 3339
    /// (2026-11-30T08:00:00Z) or milliseconds since the epoch.
    #[arg(long, value_name = "T")]
    timestamp: Option<String>,
}

impl AsOfArgs {
    fn as_of(&self) -> anyhow::Result<AsOf> {
        Ok(match (self.version, &self.timestamp) {
            (Some(v), _) => AsOf::Version(v),
            (None, Some(t)) => AsOf::Timestamp(parse_timestamp(t)?),
            (None, None) => AsOf::Latest,
        })
    }
}

/// `tidemark cat`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  tidemark cat tables/orders --limit 10\n  \
tidemark cat tables/orders --version 12 --format json\n  \
tidemark cat tables/orders --timestamp 2026-11-30T08:00:00Z --format csv > orders.csv")]
pub struct CatArgs {
    /// The table (a path, file:// or s3://bucket/prefix URL).
    table: String,
    #[command(flatten)]
    as_of: AsOfArgs,
    /// Print at most this many rows.
    #[arg(long, value_name = "ROWS", default_value_t = 20)]
    limit: u64,
    /// Print every row (no --limit).
    #[arg(long, conflicts_with = "limit")]
    all: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CatFormat::Table)]
    format: CatFormat,
}

/// `cat --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CatFormat {
    /// Aligned columns for reading.
    Table,
    /// One JSON object per row.
    Json,
    /// CSV with a header line.
    Csv,
}

/// `tidemark export`.
#[derive(Debug, Args)]
#[command(
    after_help = "The format follows the extension of --to: .parquet or .csv (or give \
--format). The file is written under a temporary name and renamed when complete.\n\n\
Examples:\n  tidemark export tables/orders --version 12 --to orders-v12.parquet\n  \
tidemark export tables/orders --timestamp 2026-11-30T08:00:00Z --to orders.csv"
)]
pub struct ExportArgs {
    /// The table (a path, file:// or s3://bucket/prefix URL).
    table: String,
    #[command(flatten)]
    as_of: AsOfArgs,
    /// The file to write (.parquet or .csv).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// parquet or csv (default: from the extension of --to).
    #[arg(long, value_enum)]
    format: Option<ExportFormat>,
    /// Replace --to if it exists.
    #[arg(long)]
    overwrite: bool,
}

/// `export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// Apache Parquet (snappy).
    Parquet,
    /// CSV with a header line (RFC 4180 quoting).
    Csv,
}

/// `tidemark restore`.
#[derive(Debug, Args)]
#[command(
    after_help = "Delta RESTORE semantics: one new commit adds back the data files \
live at the version and removes the ones live now but not then (dataChange = true); the \
history stays, so the restore itself can be undone with another restore. A file the version \
needs that was vacuumed or deleted refuses the restore, naming it (rebuild the version from a \
backup with `tidemark restore-backup`).\n\n\
A table written by a Tidemark pipeline: pass its --config. The restore refuses while the \
pipeline runs (it holds its state directory's lock), sets the pipeline's progress in the \
table back to the restored version's epoch, and prints the command that resumes it: \
`tidemark run --config ... --rewind-to EPOCH` re-reads from Kafka everything after that epoch, \
so every record restored away is written again exactly once. Records that must not come back \
(a burst of bad records) are listed in the config's [errors] quarantine before resuming \
(README, \"Time travel and restore\").\n\n\
Examples:\n  tidemark restore tables/orders --version 12 --config pipeline.toml --dry-run\n  \
tidemark restore tables/orders --version 12 --config pipeline.toml\n  \
tidemark restore tables/orders --timestamp 2026-11-30T08:00:00Z --no-pipeline"
)]
pub struct RestoreArgs {
    /// The table (a path, file:// or s3://bucket/prefix URL).
    table: String,
    #[command(flatten)]
    as_of: AsOfArgs,
    /// The config of the Tidemark pipeline that writes the table: the restore checks it is
    /// stopped and says how to resume it.
    #[arg(long, short, value_name = "PIPELINE_TOML")]
    config: Option<PathBuf>,
    /// Restore although the pipeline of --config is running. Its next commit then fails
    /// (the table's progress went back under it) and it stops; restart it with the printed
    /// --rewind-to.
    #[arg(long, requires = "config")]
    while_running: bool,
    /// The table is not written by a running Tidemark pipeline any more (or the pipeline is
    /// managed otherwise): restore without --config.
    #[arg(long, conflicts_with = "config")]
    no_pipeline: bool,
    /// Say what the restore would do, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `tidemark history`.
pub async fn run_history(args: HistoryArgs) -> anyhow::Result<()> {
    let location = open_store(&args.table)?;
    let listing = LogListing::list(&location).await?;
    if listing.is_empty() {
        bail!("no Delta table at {location} (its _delta_log/ holds no commit)");
    }
    let versions = history(&location, &listing, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    print!("{}", render_history(&versions));
    if let Some(oldest) = listing.oldest_commit().filter(|v| *v > 0) {
        if args.limit.is_none_or(|l| versions.len() < l) {
            println!("(versions before {oldest} were cleaned up from the log)");
        }
    }
    Ok(())
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn render_history(versions: &[VersionInfo]) -> String {
    let mut out = format!(
        "{:>8}  {:<24}  {:<18}  {:<20}  {:>7}  {:>4}  {:>10}  {:>7}  {:>7}\n",
        "version",
        "timestamp",
        "operation",
        "pipeline",
        "epoch",
        "gen",
        "rows_added",
        "files+",
        "files-"
    );
    for v in versions {
        let operation = match (v.operation.as_deref(), v.restored_to) {
            (Some(op), Some(to)) => format!("{op} to v{to}"),
            (op, _) => op.unwrap_or("-").to_string(),
        };
        out += &format!(
            "{:>8}  {:<24}  {:<18}  {:<20}  {:>7}  {:>4}  {:>10}  {:>7}  {:>7}\n",
            v.version,
            ms_to_rfc3339(v.timestamp_ms),
            operation,
            dash(v.pipeline.as_deref()),
            dash(v.epoch),
            dash(v.generation),
            dash(v.rows_added),
            v.files_added,
            v.files_removed
        );
    }
    out
}

/// Runs `tidemark cat`.
pub async fn run_cat(args: CatArgs) -> anyhow::Result<()> {
    let location = open_store(&args.table)?;
    let reader = VersionReader::open(&location, args.as_of.as_of()?).await?;
    let limit = if args.all { u64::MAX } else { args.limit };
    let mut batches = Vec::new();
    let mut taken = 0u64;
    let mut stream = Box::pin(reader.batches());
    while taken < limit {
        let Some(batch) = stream.try_next().await? else {
            break;
        };
        let want = (limit - taken).min(batch.num_rows() as u64) as usize;
        taken += want as u64;
        batches.push(batch.slice(0, want));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        CatFormat::Table => {
            write!(out, "{}", render_table(reader.schema(), &batches)?)?;
            let total = reader
                .rows_from_stats()
                .map_or_else(String::new, |n| format!(" of {n}"));
            writeln!(
                out,
                "version {}: {taken} row(s){total} shown",
                reader.version()
            )?;
        }
        CatFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in &batches {
                writer.write(b)?;
            }
            writer.finish()?;
        }
        CatFormat::Csv => {
            write_csv_header(&mut out, reader.schema())?;
            for b in &batches {
                write_csv(&mut out, b)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs `tidemark export`.
pub async fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Some(f) => f,
        None => match args.to.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") => ExportFormat::Parquet,
            Some(e) if e.eq_ignore_ascii_case("csv") => ExportFormat::Csv,
            _ => bail!(
                "--to {}: name a .parquet or .csv file, or give --format",
                args.to.display()
            ),
        },
    };
    if args.to.exists() && !args.overwrite {
        bail!(
            "{} exists; give --overwrite to replace it",
            args.to.display()
        );
    }
    let location = open_store(&args.table)?;
    let reader = VersionReader::open(&location, args.as_of.as_of()?).await?;
    let tmp = temp_path(&args.to);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = write_export(&reader, format, file).await;
    let rows = match written {
        Ok(rows) => rows,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &args.to)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), args.to.display()))?;
    println!(
        "exported version {} of {location}: {rows} rows from {} files to {}",
        reader.version(),
        reader.files().len(),
        args.to.display()
    );
    Ok(())
}

fn temp_path(to: &Path) -> PathBuf {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    to.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

async fn write_export(
    reader: &VersionReader,
    format: ExportFormat,
    file: std::fs::File,
) -> anyhow::Result<u64> {
    let mut rows = 0u64;
    let mut stream = Box::pin(reader.batches());
    match format {
        ExportFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(
                reader
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            ));
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props))?;
            while let Some(batch) = stream.try_next().await? {
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
            }
            writer.into_inner()?.sync_all()?;
        }
        ExportFormat::Csv => {
            let mut out = std::io::BufWriter::new(file);
            write_csv_header(&mut out, reader.schema())?;
            while let Some(batch) = stream.try_next().await? {
                rows += batch.num_rows() as u64;
                write_csv(&mut out, &batch)?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        }
    }
    Ok(rows)
}

/// `batches` as aligned columns with a header line.
fn render_table(
    schema: &arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> anyhow::Result<String> {
    let options = FormatOptions::default().with_null("null");
    let mut cells: Vec<Vec<String>> =
        vec![schema.fields().iter().map(|f| f.name().clone()).collect()];
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            cells.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    let widths: Vec<usize> = (0..cells[0].len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out += &rule.join("  ");
            out.push('\n');
        }
    }
    Ok(out)
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn write_csv_header(out: &mut impl Write, schema: &arrow::datatypes::Schema) -> anyhow::Result<()> {
    let names: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| csv_field(f.name()).into_owned())
        .collect();
    writeln!(out, "{}", names.join(","))?;
    Ok(())
}

fn write_csv(out: &mut impl Write, batch: &RecordBatch) -> anyhow::Result<()> {
    let options = FormatOptions::default().with_null("");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut line = String::new();
    for row in 0..batch.num_rows() {
        line.clear();
        for (i, f) in formatters.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let value = f.value(row).to_string();
            line += &csv_field(&value);
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Runs `tidemark restore`.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let location = open_store(&args.table)?;
    let config = match &args.config {
        Some(path) => Some(PipelineConfig::load(path)?),
        None => None,
    };
    if let Some(c) = &config {
        let configured = open_store(c.paths.table_url.as_str())?;
        if configured.root() != location.root() {
            bail!(
                "{} writes {} (sink.table_uri), not {location}: pass the config of the pipeline that writes this table",
                args.config.as_deref().unwrap_or(Path::new("?")).display(),
                configured
            );
        }
    }
    // Held until the restore is committed: the pipeline cannot start meanwhile.
    let _lock = match &config {
        Some(c) => lock_pipeline(c, args.while_running || args.dry_run)?,
        None => None,
    };
    let prepared = PreparedRestore::prepare(&location, args.as_of.as_of()?).await?;
    let writers: Vec<String> = prepared.writers().map(str::to_string).collect();
    if config.is_none() && !writers.is_empty() && !args.no_pipeline {
        bail!(
            "table {location} is written by Tidemark pipeline(s) {}: pass --config <its pipeline.toml> so the restore can check that it is stopped and say how to resume it without losing or doubling a record (or --no-pipeline when no pipeline writes it any more)",
            writers.join(", ")
        );
    }
    if let Some(c) = &config {
        if !writers.contains(&c.pipeline_id) {
            tracing::warn!(pipeline = %c.pipeline_id, writers = ?writers, "the table holds no commit of the configured pipeline");
        }
    }
    let epoch_after = config
        .as_ref()
        .map(|c| prepared.txn_after(&c.pipeline_id).unwrap_or(0).max(0) as u64);
    let report = if args.dry_run {
        prepared.report()
    } else {
        prepared.commit().await?
    };
    // The pipeline's dead-letter table goes back with it, to its newest version holding no
    // epoch after the restored one: letters of re-read records are written again once.
    let dead_letters = match (&config, epoch_after) {
        (Some(c), Some(epoch)) => restore_dead_letters(c, epoch, args.dry_run).await?,
        _ => None,
    };
    let hint = match &config {
        Some(c) => Some(resume_hint(
            c,
            args.config.as_deref(),
            &report,
            epoch_after.unwrap_or(0),
        )?),
        None => None,
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["dry_run"] = args.dry_run.into();
        if let Some(h) = &hint {
            value["resume"] = serde_json::to_value(h)?;
        }
        if let Some(d) = &dead_letters {
            value["dead_letters"] = serde_json::to_value(d)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render_restore(&report, args.dry_run));
        if let Some(d) = &dead_letters {
            print!("dead-letter table: {}", render_restore(d, args.dry_run));
        }
        if let Some(h) = &hint {
            println!("{}", h.text);
        }
    }
    Ok(())
}

/// Restores the pipeline's dead-letter table (if it exists) to its newest version whose epoch
/// is at most `epoch`; `None` when it has none or is already there.
async fn restore_dead_letters(
    config: &PipelineConfig,
    epoch: u64,
    dry_run: bool,
) -> anyhow::Result<Option<RestoreReport>> {
    let location = open_store(config.paths.dead_letter_url.as_str())?;
    let listing = LogListing::list(&location).await?;
    if listing.is_empty() {
        return Ok(None);
    }
    let versions = history(&location, &listing, None).await?;
    let Some(target) = versions.iter().find(|v| {
        v.pipeline.as_deref() != Some(config.pipeline_id.as_str())
            || v.epoch.is_none_or(|e| e <= epoch)
    }) else {
        bail!("dead-letter table {location}: no version at or before epoch {epoch} of pipeline {} is left in its log; restore it from a backup", config.pipeline_id);
    };
    if Some(target.version) == listing.newest_version() {
        return Ok(None);
    }
    let prepared = PreparedRestore::prepare(&location, AsOf::Version(target.version))
        .await
        .with_context(|| format!("the table was restored, its dead-letter table {location} not yet: run the same restore again"))?;
    Ok(Some(if dry_run {
        prepared.report()
    } else {
        prepared.commit().await.with_context(|| {
            format!("the table was restored, its dead-letter table {location} not yet: run the same restore again")
        })?
    }))
}

/// Takes the pipeline's state directory lock; when the pipeline holds it, refuses unless
/// `anyway` (then `None`: the restore goes ahead without it).
fn lock_pipeline(config: &PipelineConfig, anyway: bool) -> anyhow::Result<Option<StateLock>> {
    let dir = &config.paths.state_dir;
    if !dir.exists() {
        return Ok(None);
    }
    match StateLock::acquire(dir, RunId::generate()) {
        Ok(lock) => Ok(Some(lock)),
        Err(StateLockError::Held { holder, .. }) if anyway => {
            tracing::warn!(pipeline = %config.pipeline_id, %holder, "the pipeline is running; restoring under it (--while-running or --dry-run)");
            Ok(None)
        }
        Err(StateLockError::Held { holder, .. }) => bail!(
            "pipeline {} is running ({holder}) and writes this table: stop it first (Ctrl-C or SIGTERM finishes its epoch), then restore; or give --while-running (its next commit then fails and it stops)",
            config.pipeline_id
        ),
        Err(e) => Err(e.into()),
    }
}

/// How to resume the pipeline after the restore.
#[derive(Debug, serde::Serialize)]
struct ResumeHint {
    /// The pipeline.
    pipeline: String,
    /// Its progress in the table goes back (then `rewind_to` or a lost store).
    rewound: bool,
    /// The retained checkpoint to rewind to.
    rewind_to: Option<u64>,
    /// The command to run.
    command: Option<String>,
    /// What to tell the operator.
    text: String,
}

fn resume_hint(
    config: &PipelineConfig,
    config_path: Option<&Path>,
    report: &RestoreReport,
    epoch_after: u64,
) -> anyhow::Result<ResumeHint> {
    let path = config_path.map_or_else(|| "pipeline.toml".into(), |p| p.display().to_string());
    // From the table's txn version after the restore, not from what this run changed: a
    // restore run again (nothing left to change) still points to the rewind the first needs.
    let rewind = report
        .pipelines
        .iter()
        .find(|p| p.pipeline == config.pipeline_id);
    let store_dir = tidemark_engine::recovery::store_dir(&config.paths.state_dir);
    let retained: Vec<(u64, u64)> = if store_dir.join("CURRENT").exists() {
        CheckpointStore::open_read_only(&store_dir)
            .and_then(|s| s.history())
            .with_context(|| format!("cannot read the checkpoint store {}", store_dir.display()))?
            .iter()
            .map(|r| (r.epoch, r.committed_epoch))
            .collect()
    } else {
        Vec::new()
    };
    let target = rewind_target(&retained, epoch_after);
    let restored_away = rewind.map(describe_positions).unwrap_or_default();
    let went_back = match rewind {
        Some(r) => format!("went back from epoch {} to {epoch_after}", r.epoch_now),
        None => format!("is at epoch {epoch_after}, behind its checkpoints"),
    };
    let (command, text, rewind_to) = match target {
        RewindTarget::NotNeeded => (
            format!("tidemark run --config {path}"),
            format!("pipeline {}: its checkpoints are not ahead of the table's epoch {epoch_after}; start it as usual: tidemark run --config {path}", config.pipeline_id),
            None,
        ),
        RewindTarget::To(epoch) => (
            format!("tidemark run --config {path} --rewind-to {epoch}"),
            format!(
                "pipeline {}: its progress in the table {went_back}{restored_away}. Resume it with:\n  tidemark run --config {path} --rewind-to {epoch}\nIt re-reads those records from Kafka and writes each once. Records that must not come back go into [errors] quarantine first.",
                config.pipeline_id
            ),
            Some(epoch),
        ),
        RewindTarget::NoneRetained => (
            String::new(),
            format!(
                "pipeline {}: its progress in the table {went_back}{restored_away}, and no retained checkpoint is that old (retained: {}). Move its state directory {} aside and start it: it resumes from the table (dedup state rebuilt from the rows)",
                config.pipeline_id,
                if retained.is_empty() { "none".into() } else { retained.iter().map(|(e, c)| format!("{e} (committed {c})")).collect::<Vec<_>>().join(", ") },
                config.paths.state_dir.display()
            ),
            None,
        ),
    };
    Ok(ResumeHint {
        pipeline: config.pipeline_id.clone(),
        rewound: rewind_to.is_some() || target == RewindTarget::NoneRetained,
        rewind_to,
        command: (!command.is_empty()).then_some(command),
        text,
    })
}

fn describe_positions(rewind: &PipelineRewind) -> String {
    let from = serde_json::to_string(&rewind.resume_positions).unwrap_or_default();
    let to = serde_json::to_string(&rewind.positions_now).unwrap_or_default();
    format!(" (the records from offsets {from} up to {to} were restored away)")
}

/// Where a pipeline rewinds to after its table was restored to `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RewindTarget {
    /// No retained checkpoint is ahead of the table: a plain start.
    NotNeeded,
    /// This retained checkpoint: the newest whose committed epoch the table still holds.
    To(u64),
    /// Checkpoints are ahead, none is old enough.
    NoneRetained,
}

/// `retained`: (checkpoint epoch, committed epoch), any order; `epoch`: the table's txn
/// version after the restore.
fn rewind_target(retained: &[(u64, u64)], epoch: u64) -> RewindTarget {
    if retained.iter().all(|(_, committed)| *committed <= epoch) {
        return RewindTarget::NotNeeded;
    }
    retained
        .iter()
        .filter(|(_, committed)| *committed <= epoch)
        .map(|(e, _)| *e)
        .max()
        .map_or(RewindTarget::NoneRetained, RewindTarget::To)
}

fn render_restore(r: &RestoreReport, dry_run: bool) -> String {
    let rows = |n: Option<u64>| n.map_or_else(|| "? rows".into(), |n| format!("{n} rows"));
    let head = match (dry_run, r.new_version) {
        (true, _) => format!(
            "dry run: restoring {} to version {} (newest {}) would",
            r.table, r.restored_version, r.from_version
        ),
        (false, Some(v)) => format!(
            "restored {} to version {} as version {v}:",
            r.table, r.restored_version
        ),
        (false, None) => {
            return format!(
                "{} already equals version {} (newest {}): nothing to do\n",
                r.table, r.restored_version, r.from_version
            )
        }
    };
    format!(
        "{head} re-add {} files ({} bytes, {}), remove {} files ({} bytes, {})\n",
        r.files_re_added,
        r.bytes_re_added,
        rows(r.rows_re_added),
        r.files_removed,
        r.bytes_removed,
        rows(r.rows_removed)
    )
}

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rewind_goes_to_the_newest_checkpoint_the_restored_table_still_holds() {
        // (checkpoint epoch, committed epoch)
        let retained = [(10, 10), (9, 9), (8, 7), (7, 7), (6, 6)];
        assert_eq!(rewind_target(&retained, 8), RewindTarget::To(8));
        assert_eq!(rewind_target(&retained, 7), RewindTarget::To(8));
        assert_eq!(rewind_target(&retained, 6), RewindTarget::To(6));
        assert_eq!(rewind_target(&retained, 5), RewindTarget::NoneRetained);
        assert_eq!(rewind_target(&retained, 10), RewindTarget::NotNeeded);
        assert_eq!(rewind_target(&[], 3), RewindTarget::NotNeeded);
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
