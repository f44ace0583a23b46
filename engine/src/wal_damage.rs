//! WAL damage before the log's end, remembered until the operator accepts it.
//!
//! The WAL's open moves damaged segments to `wal/damaged-<ms>/` once; the start decision then
//! refuses while the table does not hold what they held. So that the refusal holds on every
//! later start too (a supervisor restarting the process must not slip past it), recovery writes
//! `PENDING` (the newest epoch the damaged part held) into that directory as soon as the open
//! reports the move; a start with `--accept-wal-damage` renames it to `ACCEPTED`. Invariant: a
//! `PENDING` file exists exactly for damage found and not accepted since.

use std::path::{Path, PathBuf};

use tidemark_checkpoint::wal::DAMAGED_PREFIX;

/// The marker of damage that refused a start and is not accepted yet.
pub const PENDING: &str = "PENDING";
/// The marker of damage the operator accepted (`--accept-wal-damage`).
pub const ACCEPTED: &str = "ACCEPTED";

/// Damage directories under `wal_dir` with a `PENDING` marker, with the newest epoch each held.
pub fn pending(wal_dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(wal_dir) else {
        return Ok(out);
    };
    for entry in entries {
        let dir = entry?.path();
        let named_damaged = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(DAMAGED_PREFIX));
        if !named_damaged {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join(PENDING)) {
            let epoch = text.trim().parse().unwrap_or(u64::MAX);
            out.push((dir, epoch));
        }
    }
    Ok(out)
}

/// Marks the damage in `dir` as refusing starts until accepted (fsynced).
pub fn mark_pending(dir: &Path, newest_epoch: u64) -> std::io::Result<()> {
    tidemark_fs::write_file_durably(
        &tidemark_fs::StdFs,
        &dir.join(PENDING),
        newest_epoch.to_string().as_bytes(),
        false,
    )
}

/// Marks the damage in `dir` as accepted by the operator.
pub fn mark_accepted(dir: &Path) -> std::io::Result<()> {
    std::fs::rename(dir.join(PENDING), dir.join(ACCEPTED))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_damage_is_found_until_accepted() {
        let wal = tempfile::tempdir().unwrap();
        let dir = wal.path().join("damaged-1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(wal.path().join("other")).unwrap();
        assert!(pending(wal.path()).unwrap().is_empty());
        mark_pending(&dir, 7).unwrap();
        assert_eq!(pending(wal.path()).unwrap(), vec![(dir.clone(), 7)]);
        mark_accepted(&dir).unwrap();
        assert!(pending(wal.path()).unwrap().is_empty());
        assert!(dir.join(ACCEPTED).exists());
    }
}
