//! A backup directory on disk: one subdirectory per backup (`<id>/MANIFEST`,
//! `<id>/table/...`), a lock file, and nothing else that matters.
//!
//! Taking a backup or pruning holds the directory's lock exclusively (`flock` on
//! `<DIR>/.tidemark-backup.lock`); listing and restoring hold it shared, so a prune never
//! deletes a backup under a restore. A subdirectory without a manifest is an unfinished
//! backup (a crash before its manifest was written): it is listed as such and never used.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::chain::Catalog;
use super::manifest::{BackupId, Manifest, MANIFEST_FILE, TABLE_DIR};

/// The lock file's name inside a backup directory.
pub const LOCK_FILE: &str = ".tidemark-backup.lock";

/// Why a backup directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// An I/O error on a named path.
    #[error("backup directory {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error("backup directory {path} is in use by another tidemark backup or prune (lock {LOCK_FILE} held); try again when it ends")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The directory does not exist.
    #[error("backup directory {path} does not exist")]
    Missing {
        /// The directory.
        path: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DirError + '_ {
    move |source| DirError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An open backup directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct BackupDir {
    path: PathBuf,
    _lock: File,
}

/// What a scan of a backup directory found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The complete backups.
    pub catalog: Catalog,
    /// Subdirectories without a manifest (unfinished backups).
    pub unfinished: Vec<String>,
    /// Subdirectories whose manifest could not be read, with why.
    pub unreadable: Vec<(String, String)>,
}

impl BackupDir {
    /// Opens `path` for taking backups or pruning (created if missing), locked exclusively.
    pub fn open_exclusive(path: &Path) -> Result<Self, DirError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        Self::lock(path, true)
    }

    /// Opens an existing `path` for reading (list, restore, repair), locked shared.
    pub fn open_shared(path: &Path) -> Result<Self, DirError> {
        if !path.is_dir() {
            return Err(DirError::Missing {
                path: path.display().to_string(),
            });
        }
        Self::lock(path, false)
    }

    fn lock(path: &Path, exclusive: bool) -> Result<Self, DirError> {
        let lock_path = path.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let locked = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match locked {
            Ok(()) => Ok(Self {
                path: path.to_path_buf(),
                _lock: file,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(DirError::Locked {
                path: path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&lock_path)(e)),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of backup `id`.
    pub fn backup_path(&self, id: &BackupId) -> PathBuf {
        self.path.join(id.as_str())
    }

    /// Where backup `id` keeps its copy of the table's files.
    pub fn table_path(&self, id: &BackupId) -> PathBuf {
        self.backup_path(id).join(TABLE_DIR)
    }

    /// Reads every backup's manifest.
    pub fn scan(&self) -> Result<Scan, DirError> {
        let mut manifests = Vec::new();
        let mut scan = Scan::default();
        let entries = std::fs::read_dir(&self.path).map_err(io(&self.path))?;
        for entry in entries {
            let entry = entry.map_err(io(&self.path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            match Manifest::read(&entry.path()) {
                Ok(Some(m)) if m.id.as_str() == name => manifests.push(m),
                Ok(Some(m)) => scan.unreadable.push((
                    name.clone(),
                    format!("its manifest names backup {} (moved or renamed?)", m.id),
                )),
                Ok(None) => scan.unfinished.push(name),
                Err(e) => scan.unreadable.push((name, e.to_string())),
            }
        }
        scan.unfinished.sort();
        scan.unreadable.sort();
        scan.catalog = Catalog::new(manifests);
        Ok(scan)
    }

    /// Deletes backup `id`: first its manifest (durably, so a crash part-way leaves an
    /// unfinished backup that is never used, not a backup missing files), then the rest.
    pub fn delete(&self, id: &BackupId) -> Result<(), DirError> {
        let dir = self.backup_path(id);
        let manifest = dir.join(MANIFEST_FILE);
        match std::fs::remove_file(&manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&manifest)(e)),
        }
        sync_dir(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        sync_dir(&self.path)
    }

    /// Makes a new backup's directory entry durable (after its manifest is written).
    pub fn sync(&self) -> Result<(), DirError> {
        sync_dir(&self.path)
    }
}

fn sync_dir(dir: &Path) -> Result<(), DirError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Reads `path` as either one backup (it holds a `MANIFEST`) or a backup directory.
pub fn catalog_of(path: &Path) -> Result<(Catalog, Option<BackupDir>), String> {
    match Manifest::read(path) {
        Ok(Some(m)) => Ok((Catalog::new([m]), None)),
        Ok(None) => {
            let dir = BackupDir::open_shared(path).map_err(|e| e.to_string())?;
            let scan = dir.scan().map_err(|e| e.to_string())?;
            Ok((scan.catalog, Some(dir)))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_exclusive_open_is_refused_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = BackupDir::open_exclusive(dir.path()).unwrap();
        let err = BackupDir::open_exclusive(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        assert!(BackupDir::open_shared(dir.path()).is_err());
        drop(first);
        let a = BackupDir::open_shared(dir.path()).unwrap();
        let _b = BackupDir::open_shared(dir.path()).unwrap();
        drop(a);
    }

    #[test]
    fn unfinished_and_unreadable_backups_are_listed_not_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("0000000000001-full-v0-v0/table")).unwrap();
        std::fs::create_dir_all(dir.path().join("0000000000002-full-v1-v1")).unwrap();
        std::fs::write(
            dir.path()
                .join("0000000000002-full-v1-v1")
                .join(MANIFEST_FILE),
            b"garbage",
        )
        .unwrap();
        let d = BackupDir::open_shared(dir.path()).unwrap();
        let scan = d.scan().unwrap();
        assert_eq!(
            scan.unfinished,
            vec!["0000000000001-full-v0-v0".to_string()]
        );
        assert_eq!(scan.unreadable.len(), 1);
        assert_eq!(scan.catalog.backups().count(), 0);
    }
}
