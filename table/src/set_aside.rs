//! Failback's first step: the primary table's *unreplicated tail* — the versions it committed
//! after the last one its replica holds, which a failover left behind — is set aside, never
//! merged: moved out of the table (commit files from the newest down, so the log stays a valid
//! prefix at every moment, then the data files those versions added) into
//! `_tidemark_set_aside/<ms>/`, with `set_aside.json` listing each version, its rows and files.
//! Then the secondary's table can be replicated back over the primary's common prefix.
//!
//! [`tail_start`] (pure) finds where the two logs part; local (`file://` or path) tables only.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One version set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetAsideVersion {
    /// The table version.
    pub version: u64,
    /// Rows its `add` actions hold (from their stats; 0 when a file has none).
    pub rows: u64,
    /// The Tidemark epoch it committed, if it is a Tidemark commit.
    pub epoch: Option<u64>,
    /// Data files it added (moved aside with it).
    pub files: Vec<String>,
}

/// What [`set_aside_tail`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetAside {
    /// The first version of the tail (the first the two logs do not share).
    pub from_version: u64,
    /// The versions set aside, oldest first.
    pub versions: Vec<SetAsideVersion>,
    /// Where they went (`None`: nothing to set aside).
    pub dir: Option<PathBuf>,
}

/// The first version where `primary`'s commits (version -> bytes, from 0) stop being byte
/// for byte `secondary`'s: the start of the primary's unreplicated tail. Pure.
pub fn tail_start(primary: &[Vec<u8>], secondary: &[Vec<u8>]) -> u64 {
    primary
        .iter()
        .zip(secondary.iter())
        .take_while(|(p, s)| p == s)
        .count() as u64
}

fn log_dir(table: &Path) -> PathBuf {
    table.join("_delta_log")
}

/// Every commit file of a local table, by version from 0 (stops at the first gap).
fn commits(table: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let path = log_dir(table).join(crate::log::commit_file_name(out.len() as u64));
        match std::fs::read(&path) {
            Ok(bytes) => out.push(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Rows, epoch and added files of one commit's JSON lines.
fn describe(version: u64, bytes: &[u8]) -> SetAsideVersion {
    let mut v = SetAsideVersion {
        version,
        rows: 0,
        epoch: None,
        files: Vec::new(),
    };
    for line in String::from_utf8_lossy(bytes).lines() {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(add) = json.get("add") {
            if let Some(path) = add.get("path").and_then(|p| p.as_str()) {
                v.files.push(
                    percent_encoding::percent_decode_str(path)
                        .decode_utf8_lossy()
                        .to_string(),
                );
            }
            let stats = add
                .get("stats")
                .and_then(|s| s.as_str())
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
            v.rows += stats
                .and_then(|s| s.get("numRecords").and_then(|n| n.as_u64()))
                .unwrap_or(0);
        }
        if let Some(info) = json.get("commitInfo") {
            v.epoch = info
                .get("tidemark")
                .and_then(|t| t.get("epoch"))
                .and_then(|e| e.as_u64());
        }
    }
    v
}

/// Finds the primary's unreplicated tail against `secondary` and, unless `dry_run`, moves it
/// aside (see the module documentation). Both tables are local directories.
pub fn set_aside_tail(
    primary: &Path,
    secondary: &Path,
    dry_run: bool,
) -> std::io::Result<SetAside> {
    let p = commits(primary)?;
    let s = commits(secondary)?;
    let from = tail_start(&p, &s);
    let versions: Vec<SetAsideVersion> = p
        .iter()
        .enumerate()
        .skip(from as usize)
        .map(|(v, bytes)| describe(v as u64, bytes))
        .collect();
    if versions.is_empty() || dry_run {
        return Ok(SetAside {
            from_version: from,
            versions,
            dir: None,
        });
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = primary.join("_tidemark_set_aside").join(ms.to_string());
    let aside_log = dir.join("_delta_log");
    std::fs::create_dir_all(&aside_log)?;
    let fs = tidemark_fs::std_fs();
    let listing = serde_json::to_vec_pretty(&versions).map_err(std::io::Error::other)?;
    tidemark_fs::write_file_durably(fs.as_ref(), &dir.join("set_aside.json"), &listing, false)?;
    // Newest first: at every moment the log is a valid prefix of itself.
    for v in versions.iter().rev() {
        let name = crate::log::commit_file_name(v.version);
        std::fs::rename(log_dir(primary).join(&name), aside_log.join(&name))?;
        let crc = format!("{:020}.crc", v.version);
        if log_dir(primary).join(&crc).exists() {
            std::fs::rename(log_dir(primary).join(&crc), aside_log.join(&crc))?;
        }
        fs.sync_dir(&log_dir(primary))?;
    }
    // A `_last_checkpoint` or checkpoint of a version set aside goes too.
    for entry in std::fs::read_dir(log_dir(primary))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let version = name.split('.').next().and_then(|v| v.parse::<u64>().ok());
        if version.is_some_and(|v| v >= from) || name == "_last_checkpoint" {
            std::fs::rename(entry.path(), aside_log.join(&name))?;
        }
    }
    fs.sync_dir(&log_dir(primary))?;
    for v in &versions {
        for file in &v.files {
            let from_path = primary.join(file);
            if from_path.exists() {
                let to = dir.join(file);
                std::fs::create_dir_all(tidemark_fs::parent_dir(&to))?;
                std::fs::rename(&from_path, &to)?;
            }
        }
    }
    fs.sync_dir(primary)?;
    fs.sync_dir(&aside_log)?;
    Ok(SetAside {
        from_version: from,
        versions,
        dir: Some(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_where_the_logs_part() {
        let a = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            tail_start(&[a("0"), a("1"), a("2p")], &[a("0"), a("1"), a("2s")]),
            2
        );
        assert_eq!(tail_start(&[a("0"), a("1"), a("2")], &[a("0")]), 1);
        assert_eq!(tail_start(&[a("0")], &[a("0"), a("1")]), 1);
        assert_eq!(tail_start(&[], &[a("0")]), 0);
    }
}
