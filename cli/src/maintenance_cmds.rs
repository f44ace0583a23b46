//! `tidemark optimize` and `tidemark vacuum`: table maintenance from the command line (the
//! decisions live in `tidemark_table::optimize` and `tidemark_table::vacuum`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tidemark_engine::config::PipelineConfig;
use tidemark_table::open_store;
use tidemark_table::vacuum::{self, Kept, Promises};

/// Compact a table's small data files into files of about `--target-size`: ONE commit that
/// removes them and adds the merged files (`dataChange = false`: the rows do not change).
///
/// Safe beside a running pipeline: the compaction commits put-if-absent at the next free
/// version, retrying itself when a pipeline commit took that version; a pipeline commit that
/// loses its version to it re-checks its txn and commits at the next one (no data rewritten,
/// no epoch redone). If a file it merges was removed meanwhile it gives up and deletes what it
/// wrote. `[maintenance] compact_every` in the pipeline avoids even that race. Old files stay until `tidemark vacuum`.
/// Prints one JSON line: files and bytes before and after, the version committed.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// The table: a path or a URL (file:///..., s3://bucket/prefix).
    pub table: String,
    /// Target size of a compacted file (B, KiB, MiB, GiB, KB, MB, GB).
    #[arg(long, default_value = "128MiB", value_parser = tidemark_table::optimize::parse_size)]
    pub target_size: u64,
}

/// Delete data files that the table has not referenced for longer than `--retain`, keeping
/// every file something still promised needs. Dry run unless `--execute`.
///
/// Kept, and named as what blocks, whatever their age: files of a version a retained Tidemark
/// checkpoint names (a `--rewind-to` target; from `--config`'s checkpoint store), files a
/// replica has not copied yet (`[replica]` of `--config`, or `--replica`), files the newest
/// backup chain has not backed up yet (`--backups`, `[maintenance] backups` of `--config`),
/// files of an epoch in flight (written, not committed yet) and of a compaction that may still
/// commit. A retention below the table's `delta.deletedFileRetentionDuration`
/// (7 days by default) is refused unless `--force`.
#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// The table: a path or a URL (file:///..., s3://bucket/prefix). With `--config`, may be
    /// left out (the pipeline's table).
    pub table: Option<String>,
    /// The pipeline writing the table: its retained checkpoints and `[replica]` are kept.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Keep files unreferenced for less than this (e.g. 168h, 30m, 90s).
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    pub retain: Duration,
    /// Only list what would be deleted (the default).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Delete the files.
    #[arg(long)]
    pub execute: bool,
    /// Allow a retention below the table's delta.deletedFileRetentionDuration.
    #[arg(long)]
    pub force: bool,
    /// A replica of the table (besides `[replica]` of `--config`); repeatable.
    #[arg(long, value_name = "TABLE")]
    pub replica: Vec<String>,
    /// A backup directory of the table (`tidemark backup --to`, a path or s3:// URL): its
    /// newest chain is kept going; repeatable.
    #[arg(long, value_name = "DIR")]
    pub backups: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `168h`, `30m`, `90s`, `1500ms`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 168h"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("{text:?}: unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(ms))
}

/// `tidemark optimize`.
pub async fn optimize(args: OptimizeArgs) -> anyhow::Result<()> {
    let location = open_store(&args.table)?;
    let report = tidemark_table::optimize::optimize(
        &location,
        tidemark_table::optimize::OptimizeOptions {
            target_bytes: args.target_size,
            max_input_bytes: None,
        },
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `tidemark vacuum`.
pub async fn vacuum(args: VacuumArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Some(PipelineConfig::load(p)?),
        None => None,
    };
    let table = match (&args.table, &config) {
        (Some(t), _) => t.clone(),
        (None, Some(c)) => c.paths.table_url.to_string(),
        (None, None) => bail!("name the table, or give --config of the pipeline writing it"),
    };
    let location = open_store(&table)?;
    let mut promises = Promises::default();
    let mut replicas = args.replica.clone();
    if let Some(c) = &config {
        promises.retained_checkpoints =
            tidemark_engine::maintenance::retained_table_versions(c).map_err(anyhow::Error::msg)?;
        promises.pipelines.push(c.pipeline_id.clone());
        if let Some(r) = &c.paths.replica_url {
            replicas.push(r.to_string());
        }
    }
    let mut backup_dirs = args.backups.clone();
    if let Some(c) = &config {
        backup_dirs.extend(
            c.maintenance
                .backups
                .iter()
                .map(|p| p.display().to_string()),
        );
    }
    for r in replicas {
        let newest = tidemark_engine::maintenance::replica_newest_version(&r)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("read the replica {r}"))?;
        promises.replicas.push((r.clone(), newest));
    }
    for dir in &backup_dirs {
        let newest = tidemark_engine::maintenance::newest_backup_version(dir)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("read backups in {dir}"))?;
        match newest {
            Some(v) => promises.backup_chains.push((dir.clone(), v)),
            None => {
                tracing::warn!(dir = %dir, "no complete backup chain there: nothing to keep for it")
            }
        }
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let min_ms = tidemark_engine::maintenance::deleted_file_retention_ms(&location.url())
        .await
        .map_err(anyhow::Error::msg)?;
    let facts = vacuum::gather(
        &location,
        &promises,
        now_ms,
        args.retain.as_millis() as i64,
        min_ms,
        args.force,
    )
    .await?;
    let plan = vacuum::decide(&facts)?;
    let outcome = if args.execute {
        Some(vacuum::execute(&location, &plan).await?)
    } else {
        None
    };
    let spared: Vec<(String, u64)> = outcome
        .as_ref()
        .map(|o| o.spared.clone())
        .unwrap_or_default();
    let deleted = outcome.as_ref().map(|o| o.deleted);
    let blocked: Vec<(&str, Vec<String>)> = plan
        .blocked()
        .map(|(p, n)| (p, n.iter().map(|n| n.to_string()).collect()))
        .collect();
    let young = plan
        .kept
        .iter()
        .filter(|(_, k)| matches!(k, Kept::WithinRetention { .. }))
        .count();
    let live = plan
        .kept
        .iter()
        .filter(|(_, k)| matches!(k, Kept::Live))
        .count();
    if args.json {
        let out = serde_json::json!({
            "table": location.to_string(),
            "dry_run": !args.execute,
            "retain_ms": args.retain.as_millis() as u64,
            "delete": plan.delete.iter().map(|(p, s)| serde_json::json!({"path": p, "size": s})).collect::<Vec<_>>(),
            "bytes": plan.bytes(),
            "deleted": deleted,
            "planned_at_version": plan.planned_at,
            "rechecked_to_version": outcome.as_ref().map(|o| o.rechecked_to),
            "spared": spared.iter().map(|(p, v)| serde_json::json!({"path": p, "referenced_again_at": v})).collect::<Vec<_>>(),
            "blocked": blocked.iter().map(|(p, n)| serde_json::json!({"path": p, "needed_by": n})).collect::<Vec<_>>(),
            "within_retention": young,
            "live": live,
            "promises": {
                "retained_checkpoints": promises.retained_checkpoints,
                "replicas": promises.replicas,
                "backup_chains": promises.backup_chains,
            },
        });
        println!("{out}");
    } else {
        let verb = if args.execute {
            "deleted"
        } else {
            "would delete"
        };
        for (p, s) in &plan.delete {
            if let Some((_, v)) = spared.iter().find(|(sp, _)| sp == p) {
                println!("spared {p}: version {v}, committed after the plan (version {}), references it again", plan.planned_at);
            } else {
                println!("{verb} {p} ({s} bytes)");
            }
        }
        for (p, needs) in &blocked {
            println!("kept   {p}: needed by {}", needs.join("; "));
        }
        println!(
            "{}: {verb} {} files ({} bytes); kept {} needed, {} within the retention, {} live{}",
            location,
            deleted.unwrap_or(plan.delete.len()),
            plan.bytes()
                - plan
                    .delete
                    .iter()
                    .filter(|(p, _)| spared.iter().any(|(sp, _)| sp == p))
                    .map(|(_, s)| *s)
                    .sum::<u64>(),
            blocked.len(),
            young,
            live,
            if args.execute {
                ""
            } else {
                " (dry run: --execute deletes)"
            }
        );
    }
    Ok(())
}
