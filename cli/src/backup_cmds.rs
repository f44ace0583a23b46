//! `tidemark backup`, `tidemark restore-backup` and `tidemark verify`: the command-line side
//! of [`tidemark_table`]'s backups, restores and corrupt-file detection.

use anyhow::Context;
use clap::{Args, Subcommand};

use tidemark_table::backup::chain::{format_ranges, Catalog, Target};
use tidemark_table::backup::dir::BackupDir;
use tidemark_table::backup::take::prune_locked;
use tidemark_table::backup::{take_backup, BackupOptions};
use tidemark_table::location::open_store;
use tidemark_table::replica_lock::TableLock;
use tidemark_table::restore_backup::restore_backup;
use tidemark_table::verify::{verify_table, VerifyOptions};

/// `tidemark backup`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(after_help = "Examples:\n  \
tidemark backup --from tables/orders --to /backups/orders            # full the first time, then incremental\n  \
tidemark backup --from tables/orders --to /backups/orders --full     # start a new chain\n  \
tidemark backup --from tables/orders --to /backups/orders --keep-full 2\n  \
tidemark backup list /backups/orders\n  \
tidemark restore-backup /backups/orders --to /restore/orders --version 42\n  \
tidemark backup --from s3://lake/orders --to s3://lake-dr/backups/orders   # on S3 (see README)\n\n\
Each backup is a directory <created-ms>-<full|incr>-v<first>-v<last> in DIR holding the files it \
copied under table/ and a MANIFEST (versions, every file's size and SHA-256, the parent \
backup) written last: a directory without a MANIFEST is an unfinished backup and is never used.")]
pub struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// The table to back up (a path, file:// or s3://bucket/prefix URL).
    #[arg(long, value_name = "SRC", required = true)]
    from: Option<String>,
    /// The backup directory (a path, file:// or s3://bucket/prefix URL; created if missing;
    /// holds many backups, possibly of chains).
    #[arg(long, value_name = "DIR", required = true)]
    to: Option<String>,
    /// Take a full backup (a snapshot of the newest version and every file it needs) even
    /// when an incremental is possible. Without it, the backup continues the newest backup
    /// in DIR: only the commits after its newest version and the files they add are copied
    /// (the first backup in DIR is always full).
    #[arg(long)]
    full: bool,
    /// After the backup, keep only the K newest full backups and the incrementals built on
    /// them; older chains are deleted whole (a chain still needed is never broken).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    keep_full: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// List the backups in DIR: chains, versions covered, files, sizes, times.
    List {
        /// The backup directory (a path, file:// or s3:// URL).
        dir: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retention on its own: keep the K newest full backups and their chains.
    Prune {
        /// The backup directory (a path, file:// or s3:// URL).
        dir: String,
        /// Full backups to keep (at least 1).
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        keep_full: u64,
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `tidemark restore-backup`.
#[derive(Debug, Args)]
#[command(
    after_help = "The version comes from the shortest chain of backups covering it \
(`tidemark backup list DIR` shows what is covered). Every file is checked against its \
manifest's SHA-256 while restoring. To bring a pipeline's table back, stop the pipeline, restore \
into the table's path, and start it with `tidemark run --rewind-to EPOCH` (an epoch at or before \
the restored table's newest, see `tidemark status`): it re-reads from Kafka what the table lost."
)]
pub struct RestoreBackupArgs {
    /// The backup directory (a path, file:// or s3://bucket/prefix URL).
    dir: String,
    /// Where to rebuild the table: a new or empty directory, or an empty s3:// prefix.
    #[arg(long, value_name = "DST")]
    to: String,
    /// The version to restore (default: the newest covered).
    #[arg(long, value_name = "N", conflicts_with = "timestamp")]
    version: Option<u64>,
    /// Restore the newest covered version committed at or before this time: RFC 3339
    /// (2026-11-30T08:00:00Z) or milliseconds since the epoch.
    #[arg(long, value_name = "T")]
    timestamp: Option<String>,
    /// The table to restore when DIR holds backups of several (its metaData.id, see
    /// `tidemark backup list`).
    #[arg(long)]
    table_id: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `tidemark verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "Checks, for every data file the snapshot references: present; size \
equal to its add action's; Parquet footer readable; row count equal to the add's numRecords. \
--deep also decodes every page and compares each file's SHA-256 with a backup manifest \
(--manifest, else --repair-from). Each bad file is printed with the version that added it and \
the reason; the exit code is 1 when anything is (still) bad.\n\nExamples:\n  \
tidemark verify tables/orders\n  \
tidemark verify tables/orders --deep --manifest /backups/orders\n  \
tidemark verify tables/orders --repair-from /backups/orders"
)]
pub struct VerifyArgs {
    /// The table (a path, file:// or s3://bucket/prefix URL).
    table: String,
    /// Verify this version's snapshot (default: the newest).
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// A backup directory (or one backup) whose manifests give the checksums for --deep.
    #[arg(long, value_name = "BACKUP")]
    manifest: Option<String>,
    /// Decode every page of every file and compare checksums with the backup manifests.
    #[arg(long)]
    deep: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Put back each bad or missing file from this backup directory (or backup) when a
    /// backup holds it with the log's size and its copy matches its manifest's SHA-256;
    /// written durably, then checked again. Says what it repaired and what it could not.
    #[arg(long, value_name = "BACKUP")]
    repair_from: Option<String>,
}

/// Runs `tidemark backup ...`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BackupCommand::List { dir, json }) => list(dir, json).await,
        Some(BackupCommand::Prune {
            dir,
            keep_full,
            dry_run,
        }) => prune(dir, keep_full as usize, dry_run).await,
        None => {
            let (Some(from), Some(to)) = (args.from, args.to) else {
                anyhow::bail!("tidemark backup needs --from SRC and --to DIR");
            };
            let source = open_store(&from)?;
            let report = take_backup(
                &source,
                &to,
                BackupOptions {
                    full: args.full,
                    keep_full: args.keep_full.map(|k| k as usize),
                },
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                match &report.id {
                    Some(id) => println!(
                        "backup {id}: {} of versions {}..={}, {} files ({} data), {} bytes in {} ms{}",
                        report.kind,
                        report.first_version,
                        report.last_version,
                        report.files,
                        report.data_files,
                        report.bytes,
                        report.elapsed_ms,
                        report
                            .parent
                            .as_ref()
                            .map(|p| format!(", after {p}"))
                            .unwrap_or_default()
                    ),
                    None => println!(
                        "up to date: version {} is already in backup {}",
                        report.last_version,
                        report.parent.as_ref().map(|p| p.as_str()).unwrap_or("?")
                    ),
                }
                for id in &report.pruned {
                    println!("pruned {id}");
                }
            }
            Ok(())
        }
    }
}

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

async fn list(dir: String, json: bool) -> anyhow::Result<()> {
    let backups = BackupDir::open_shared(&dir).await?;
    let scan = backups.scan().await?;
    let catalog = &scan.catalog;
    let rows: Vec<serde_json::Value> = catalog
        .backups()
        .map(|m| {
            let chain = catalog.chain(&m.id);
            serde_json::json!({
                "id": m.id,
                "kind": if m.is_full() { "full" } else { "incremental" },
                "parent": m.parent,
                "table_id": m.table_id,
                "source": m.source,
                "first_version": m.first_version,
                "last_version": m.last_version,
                "files": m.files.len(),
                "bytes": m.bytes(),
                "created": ms_to_rfc3339(m.created_ms as i64),
                "chain_ok": chain.is_ok(),
                "chain_root": chain.as_ref().ok().map(|c| c[0].id.clone()),
                "chain_error": chain.as_ref().err().map(|e| e.to_string()),
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": dir,
                "backups": rows,
                "unfinished": scan.unfinished,
                "unreadable": scan.unreadable,
            }))?
        );
        return Ok(());
    }
    print!("{}", render_list(catalog));
    for name in &scan.unfinished {
        println!("unfinished  {name} (no MANIFEST: an interrupted backup, never used)");
    }
    for (name, why) in &scan.unreadable {
        println!("unreadable  {name}: {why}");
    }
    Ok(())
}

fn render_list(catalog: &Catalog) -> String {
    let mut out = String::new();
    if catalog.backups().next().is_none() {
        return "no backups\n".into();
    }
    for table in catalog.table_ids() {
        let covered = format_ranges(&catalog.covered_ranges(Some(table)).unwrap_or_default());
        out += &format!("table {table}: restorable versions {covered}\n");
        let mut roots: Vec<_> = catalog
            .backups()
            .filter(|m| m.table_id == table && m.is_full())
            .collect();
        roots.sort_by_key(|m| (m.created_ms, m.id.clone()));
        for root in roots {
            let members: Vec<_> = catalog
                .backups()
                .filter(|m| catalog.chain(&m.id).is_ok_and(|c| c[0].id == root.id))
                .collect();
            let last = members.iter().map(|m| m.last_version).max().unwrap_or(0);
            let bytes: u64 = members.iter().map(|m| m.bytes()).sum();
            out += &format!(
                "  chain from {}: versions {}..={}, {} backups, {} bytes\n",
                root.id,
                root.first_version,
                last,
                members.len(),
                bytes
            );
            for m in members {
                out += &format!(
                    "    {:<44} {:<11} versions {:<14} {:>7} files {:>14} bytes  {}\n",
                    m.id.as_str(),
                    if m.is_full() { "full" } else { "incremental" },
                    if m.first_version == m.last_version {
                        m.first_version.to_string()
                    } else {
                        format!("{}..={}", m.first_version, m.last_version)
                    },
                    m.files.len(),
                    m.bytes(),
                    ms_to_rfc3339(m.created_ms as i64)
                );
            }
        }
        for m in catalog.backups().filter(|m| m.table_id == table) {
            if let Err(e) = catalog.chain(&m.id) {
                out += &format!("  BROKEN {}: {e}\n", m.id);
            }
        }
    }
    out
}

async fn prune(dir: String, keep_full: usize, dry_run: bool) -> anyhow::Result<()> {
    let backups = BackupDir::open_exclusive(&dir).await?;
    let result = prune_in(&backups, keep_full, dry_run).await;
    backups.release().await;
    result
}

async fn prune_in(backups: &BackupDir, keep_full: usize, dry_run: bool) -> anyhow::Result<()> {
    let catalog = backups.scan().await?.catalog;
    if dry_run {
        let plan = catalog.prune_plan(keep_full);
        for id in &plan.delete {
            println!("would delete {id}");
        }
        println!("would keep {} backups", plan.keep.len());
        return Ok(());
    }
    let deleted = prune_locked(backups, &catalog, keep_full).await?;
    for id in &deleted {
        println!("deleted {id}");
    }
    println!("{} backups deleted", deleted.len());
    Ok(())
}

/// A `--timestamp` argument: RFC 3339 or milliseconds since the epoch (shared by
/// `restore-backup` and the time-travel commands).
pub(crate) fn parse_timestamp(t: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .with_context(|| {
            format!("--timestamp {t:?}: give RFC 3339 (2026-11-30T08:00:00Z) or ms since the epoch")
        })
}

/// Runs `tidemark restore-backup ...`.
pub async fn restore(args: RestoreBackupArgs) -> anyhow::Result<()> {
    let target = match (args.version, &args.timestamp) {
        (Some(v), _) => Target::Version(v),
        (None, Some(t)) => Target::Timestamp(parse_timestamp(t)?),
        (None, None) => Target::Latest,
    };
    // One writer per destination (the same lock as `replicate`'s).
    let dest = open_store(&args.to).context("--to")?;
    let lock = TableLock::acquire(&dest, "tidemark restore-backup").await?;
    let report = restore_backup(&args.dir, &args.to, target, args.table_id.as_deref()).await;
    lock.release().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "restored version {} into {}: {} files ({} data), {} bytes in {} ms, from {}",
            report.version,
            dest,
            report.files,
            report.data_files,
            report.bytes,
            report.elapsed_ms,
            report
                .chain
                .iter()
                .map(|b| b.as_str())
                .collect::<Vec<_>>()
                .join(" <- ")
        );
    }
    Ok(())
}

/// Runs `tidemark verify ...`; `Ok(false)` when a file is (still) bad.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let report = verify_table(
        &args.table,
        &VerifyOptions {
            version: args.version,
            deep: args.deep,
            manifest: args.manifest,
            repair_from: args.repair_from,
        },
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(report.ok())
}
