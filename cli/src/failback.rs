//! `tidemark failback`: the primary's unreplicated tail set aside, then the secondary's table
//! replicated back over the primary's (see [`tidemark_table::set_aside`]).

use anyhow::Context;

/// Copy the secondary's table back over the primary's after a failover (first step of a
/// failback).
///
/// The versions the primary committed after the last one its replica held (what the failover
/// left behind: those records were re-read from the mirrored cluster by the secondary) are set
/// aside, never merged: listed with their versions, epochs and row counts, and moved (commit
/// files newest first, then their data files) into `<primary>/_tidemark_set_aside/<ms>/` with a
/// `set_aside.json`. Then the secondary's table is replicated onto the primary's common prefix
/// in log order, exactly as `tidemark replicate` does. Stop the secondary's pipeline first (or
/// run this again once it has stopped: the replication resumes).
///
/// Then move the pipeline back: `tidemark failover --config primary.toml --reason failback`
/// (by-time start on the primary cluster, a new generation).
///
/// Local tables only (paths or file:// URLs) for now.
#[derive(Debug, clap::Args)]
pub struct FailbackArgs {
    /// The secondary's table (the one written since the failover).
    #[arg(long, value_name = "TABLE")]
    pub from: String,
    /// The primary's table (to be brought back).
    #[arg(long, value_name = "TABLE")]
    pub to: String,
    /// Only list what would be set aside.
    #[arg(long)]
    pub dry_run: bool,
}

fn local(table: &str) -> anyhow::Result<std::path::PathBuf> {
    let url = tidemark_engine::failover::table_url(table).map_err(anyhow::Error::msg)?;
    if url.scheme() != "file" {
        anyhow::bail!("{table}: failback supports local tables only for now");
    }
    url.to_file_path()
        .map_err(|()| anyhow::anyhow!("{table} is not a local path"))
}

/// Runs the command; returns the replicate arguments to run next (unless a dry run).
pub fn set_aside(args: &FailbackArgs) -> anyhow::Result<Option<Vec<String>>> {
    let (secondary, primary) = (local(&args.from)?, local(&args.to)?);
    let report = tidemark_table::set_aside::set_aside_tail(&primary, &secondary, args.dry_run)
        .with_context(|| {
            format!(
                "setting aside the unreplicated tail of {}",
                primary.display()
            )
        })?;
    let rows: u64 = report.versions.iter().map(|v| v.rows).sum();
    eprintln!(
        "failback: the primary's unreplicated tail starts at version {}: {} version(s), {} row(s){}",
        report.from_version,
        report.versions.len(),
        rows,
        match (&report.dir, args.dry_run) {
            (_, true) => " (dry run: nothing moved)".to_string(),
            (Some(d), _) => format!(", set aside in {}", d.display()),
            (None, _) => String::new(),
        }
    );
    for v in &report.versions {
        eprintln!(
            "  version {:>6}  epoch {:>6}  rows {:>8}  files {}",
            v.version,
            v.epoch.map_or("-".into(), |e| e.to_string()),
            v.rows,
            v.files.len()
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    if args.dry_run {
        return Ok(None);
    }
    Ok(Some(vec![
        "tidemark".into(),
        "replicate".into(),
        "--from".into(),
        secondary.display().to_string(),
        "--to".into(),
        primary.display().to_string(),
    ]))
}
