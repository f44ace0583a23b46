//! A backup directory: one subdirectory (or, on an object store, one prefix) per backup
//! (`<id>/MANIFEST`, `<id>/table/...`), a lock, and nothing else that matters. It lives on the
//! local disk (a path or `file://` URL) or on an object store (`s3://bucket/prefix`).
//!
//! Taking a backup or pruning holds the directory's lock exclusively; listing and restoring
//! hold it shared, so locally a prune never deletes a backup under a restore. Locally an
//! exclusive open waits up to [`EXCLUSIVE_LOCK_WAIT`] for the lock: its shared holders are
//! short reads (a running pipeline reads the chains before cleaning up its Delta log), and a
//! scheduled backup must not fail because one coincided with it.
//! - Locally the lock is an `flock` on `<DIR>/.tidemark-backup.lock` (exclusive or shared).
//! - On an object store it is the lock object `<DIR>/.tidemark-backup.lock`, created with
//!   put-if-absent naming its holder ([`crate::object_lock`]), taken by backups and prunes
//!   only: list, restore and repair take no lock there (an object store has no shared lock).
//!   A prune racing a restore cannot make it restore wrong data (every file restored is
//!   checked against its manifest's SHA-256): the restore fails naming the missing file.
//!
//! A backup without a manifest is an unfinished backup (a crash before its manifest was
//! written): it is listed as such and never used. On an object store the manifest is one
//! `put`, visible whole or not at all; locally it is written durably (temporary file, fsync,
//! rename, directory fsync).

use std::fs::File;
use std::path::Path;
use tidemark_connectors::table_store::{put_settled, ConditionalPut};

use object_store::ObjectStoreExt;
use tidemark_fs::SharedFs;

use super::chain::Catalog;
use super::manifest::{BackupId, Manifest, ManifestError, MANIFEST_FILE, TABLE_DIR};
use crate::location::TableLocation;
use crate::object_lock::{ObjectLock, ObjectLockError};

/// The lock's name inside a backup directory (a file locally, an object on a store).
pub const LOCK_FILE: &str = ".tidemark-backup.lock";

/// How long a local exclusive open (a backup or a prune) waits for the lock before it gives
/// up naming the directory.
pub const EXCLUSIVE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// An object store request failed.
    #[error("backup directory {path}: {source}")]
    Store {
        /// The object.
        path: String,
        /// The error.
        source: Box<object_store::Error>,
    },
    /// Another process holds the lock.
    #[error("backup directory {path} is in use by another tidemark backup or prune (lock {LOCK_FILE} held); try again when it ends")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The lock object of a backup directory on an object store.
    #[error(transparent)]
    ObjectLock(#[from] ObjectLockError),
    /// The directory does not exist.
    #[error("backup directory {path} does not exist")]
    Missing {
        /// The directory.
        path: String,
    },
    /// Not a location a backup directory can be.
    #[error("backup directory {path}: {reason}")]
    BadPath {
        /// The location as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// Writing a manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DirError + '_ {
    move |source| DirError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn store_err(path: impl ToString) -> impl FnOnce(object_store::Error) -> DirError {
    move |source| DirError::Store {
        path: path.to_string(),
        source: Box::new(source),
    }
}

/// The lock a [`BackupDir`] holds.
#[derive(Debug)]
enum DirLock {
    /// A local directory's `flock` (exclusive or shared).
    Flock(#[allow(dead_code)] File),
    /// The lock object of a directory on an object store.
    Object(ObjectLock),
    /// Read access on an object store: no lock (see the module documentation).
    Unlocked,
}

/// An open backup directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct BackupDir {
    root: TableLocation,
    lock: DirLock,
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

/// Opens the backup directory `uri` (a path, `file://` or `s3://` URL) through `fs`.
fn location(uri: &str, fs: SharedFs) -> Result<TableLocation, DirError> {
    TableLocation::parse_with_fs(uri, fs).map_err(|e| DirError::BadPath {
        path: uri.to_string(),
        reason: e.to_string(),
    })
}

impl BackupDir {
    /// Opens `uri` for taking backups or pruning (created if missing), locked exclusively.
    pub async fn open_exclusive(uri: &str) -> Result<Self, DirError> {
        Self::open_exclusive_on(tidemark_fs::std_fs(), uri).await
    }

    /// [`Self::open_exclusive`] writing through `fs` (local directories; tests inject faults).
    pub async fn open_exclusive_on(fs: SharedFs, uri: &str) -> Result<Self, DirError> {
        Self::open_exclusive_within(fs, uri, EXCLUSIVE_LOCK_WAIT).await
    }

    /// [`Self::open_exclusive_on`], waiting at most `wait` for a local lock.
    async fn open_exclusive_within(
        fs: SharedFs,
        uri: &str,
        wait: std::time::Duration,
    ) -> Result<Self, DirError> {
        let root = location(uri, fs)?;
        match root.local_dir() {
            Some(path) => {
                std::fs::create_dir_all(path).map_err(io(path))?;
                let started = std::time::Instant::now();
                let mut told = false;
                let file = loop {
                    match flock(path, true) {
                        Err(DirError::Locked { .. }) if started.elapsed() < wait => {
                            if !std::mem::replace(&mut told, true) {
                                tracing::info!(dir = %path.display(), wait_s = wait.as_secs(), "the backup directory's lock is held (a pipeline reading its chains, a listing, a restore or another backup): waiting for it");
                            }
                            tokio::time::sleep(LOCK_POLL).await;
                        }
                        locked => break locked?,
                    }
                };
                Ok(Self {
                    root,
                    lock: DirLock::Flock(file),
                })
            }
            None => {
                let lock_path = root.child(LOCK_FILE).map_err(|e| DirError::BadPath {
                    path: uri.to_string(),
                    reason: e.to_string(),
                })?;
                let lock_uri = format!("{}/{LOCK_FILE}", root.url().trim_end_matches('/'));
                let lock = ObjectLock::acquire(
                    root.store().clone(),
                    lock_path,
                    &lock_uri,
                    &format!("backup directory {root}"),
                    "tidemark backup",
                )
                .await?;
                Ok(Self {
                    root,
                    lock: DirLock::Object(lock),
                })
            }
        }
    }

    /// Opens an existing `uri` for reading (list, restore, repair), locked shared (locally).
    pub async fn open_shared(uri: &str) -> Result<Self, DirError> {
        Self::open_shared_at(location(uri, tidemark_fs::std_fs())?).await
    }

    async fn open_shared_at(root: TableLocation) -> Result<Self, DirError> {
        match root.local_dir() {
            Some(path) => {
                if !path.is_dir() {
                    return Err(DirError::Missing {
                        path: path.display().to_string(),
                    });
                }
                let file = flock(path, false)?;
                Ok(Self {
                    root,
                    lock: DirLock::Flock(file),
                })
            }
            None => {
                let listed = root
                    .store()
                    .list_with_delimiter(Some(root.root()))
                    .await
                    .map_err(store_err(&root))?;
                if listed.common_prefixes.is_empty() && listed.objects.is_empty() {
                    return Err(DirError::Missing {
                        path: root.to_string(),
                    });
                }
                Ok(Self {
                    root,
                    lock: DirLock::Unlocked,
                })
            }
        }
    }

    /// Releases the lock (deletes the lock object on an object store; see
    /// [`ObjectLock::release`]).
    pub async fn release(self) {
        if let DirLock::Object(lock) = self.lock {
            let uri = lock.uri().to_string();
            if let Err(e) = lock.release().await {
                tracing::warn!(lock = %uri, "could not delete the backup directory's lock object: {e}; the next run on this host breaks it");
            }
        }
    }

    /// The directory.
    pub fn location(&self) -> &TableLocation {
        &self.root
    }

    /// The local directory (`None` on an object store).
    pub fn path(&self) -> Option<&Path> {
        self.root.local_dir()
    }

    /// The location of backup `id`.
    pub fn backup_location(&self, id: &BackupId) -> Result<TableLocation, DirError> {
        backup_location(&self.root, id)
    }

    /// Where backup `id` keeps its copy of the table's files.
    pub fn table_location(&self, id: &BackupId) -> Result<TableLocation, DirError> {
        table_location(&self.root, id)
    }

    /// Prepares backup `id`'s place (creates its local directories).
    pub fn create_backup(&self, id: &BackupId) -> Result<TableLocation, DirError> {
        let table = self.table_location(id)?;
        if let Some(dir) = table.local_dir() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Ok(table)
    }

    /// Writes backup `id`'s manifest, the last step of a backup: durably through `fs` locally
    /// (then the directory entry made durable), in one `put` on an object store.
    pub async fn write_manifest(&self, fs: &SharedFs, manifest: &Manifest) -> Result<(), DirError> {
        let at = self.backup_location(&manifest.id)?;
        match at.local_dir() {
            Some(dir) => {
                manifest.write(fs.as_ref(), dir)?;
                if let Some(path) = self.path() {
                    sync_dir(path)?;
                }
                Ok(())
            }
            None => {
                let object = at.child(MANIFEST_FILE).map_err(|e| DirError::BadPath {
                    path: at.to_string(),
                    reason: e.to_string(),
                })?;
                let bytes = manifest.encode()?;
                // Settled: a manifest that landed but whose answer was lost is this backup's.
                let put = put_settled(
                    at.store().as_ref(),
                    &object,
                    bytes::Bytes::from(bytes),
                    object_store::PutMode::Create,
                )
                .await
                .map_err(store_err(format!("{at}/{MANIFEST_FILE}")))?;
                if put == ConditionalPut::Refused {
                    return Err(store_err(format!("{at}/{MANIFEST_FILE}"))(
                        object_store::Error::AlreadyExists {
                            path: object.to_string(),
                            source: "another backup's manifest is already there".into(),
                        },
                    ));
                }
                Ok(())
            }
        }
    }

    /// Reads every backup's manifest.
    pub async fn scan(&self) -> Result<Scan, DirError> {
        let names = match self.path() {
            Some(path) => local_subdirectories(path)?,
            None => {
                let listed = self
                    .root
                    .store()
                    .list_with_delimiter(Some(self.root.root()))
                    .await
                    .map_err(store_err(&self.root))?;
                listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            }
        };
        let mut manifests = Vec::new();
        let mut scan = Scan::default();
        for name in names {
            let read = match self.root.join(&name) {
                Ok(at) => read_manifest_at(&at).await,
                Err(e) => Err(e.to_string()),
            };
            match read {
                Ok(Some(m)) if m.id.as_str() == name => manifests.push(m),
                Ok(Some(m)) => scan.unreadable.push((
                    name.clone(),
                    format!("its manifest names backup {} (moved or renamed?)", m.id),
                )),
                Ok(None) => scan.unfinished.push(name),
                Err(e) => scan.unreadable.push((name, e)),
            }
        }
        scan.unfinished.sort();
        scan.unreadable.sort();
        scan.catalog = Catalog::new(manifests);
        Ok(scan)
    }

    /// Deletes backup `id`: first its manifest (durably, so a crash part-way leaves an
    /// unfinished backup that is never used, not a backup missing files), then the rest.
    pub async fn delete(&self, id: &BackupId) -> Result<(), DirError> {
        let at = self.backup_location(id)?;
        if let Some(dir) = at.local_dir() {
            let manifest = dir.join(MANIFEST_FILE);
            match std::fs::remove_file(&manifest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&manifest)(e)),
            }
            sync_dir(dir)?;
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
            if let Some(path) = self.path() {
                sync_dir(path)?;
            }
            return Ok(());
        }
        let store = at.store();
        let manifest = at.child(MANIFEST_FILE).map_err(|e| DirError::BadPath {
            path: at.to_string(),
            reason: e.to_string(),
        })?;
        match store.delete(&manifest).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(format!("{at}/{MANIFEST_FILE}"))(e)),
        }
        use futures::TryStreamExt;
        let objects: Vec<object_store::ObjectMeta> = store
            .list(Some(at.root()))
            .try_collect()
            .await
            .map_err(store_err(&at))?;
        for object in objects {
            match store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(&object.location)(e)),
            }
        }
        Ok(())
    }
}

/// `<dir>/<id>`.
fn backup_location(root: &TableLocation, id: &BackupId) -> Result<TableLocation, DirError> {
    root.join(id.as_str()).map_err(|e| DirError::BadPath {
        path: format!("{root}/{id}"),
        reason: e.to_string(),
    })
}

/// `<dir>/<id>/table`.
fn table_location(root: &TableLocation, id: &BackupId) -> Result<TableLocation, DirError> {
    root.join(&format!("{}/{TABLE_DIR}", id.as_str()))
        .map_err(|e| DirError::BadPath {
            path: format!("{root}/{id}"),
            reason: e.to_string(),
        })
}

/// How often a waiting exclusive open tries the lock again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn flock(path: &Path, exclusive: bool) -> Result<File, DirError> {
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
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DirError::Locked {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&lock_path)(e)),
    }
}

/// The names of the subdirectories of `path` (not hidden ones).
fn local_subdirectories(path: &Path) -> Result<Vec<String>, DirError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads `<at>/MANIFEST`; `Ok(None)` when there is none.
async fn read_manifest_at(at: &TableLocation) -> Result<Option<Manifest>, String> {
    if let Some(dir) = at.local_dir() {
        return Manifest::read(dir).map_err(|e| e.to_string());
    }
    let object = at.child(MANIFEST_FILE).map_err(|e| e.to_string())?;
    match at.store().get(&object).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| e.to_string())?;
            Manifest::decode(&bytes)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("{at}/{MANIFEST_FILE}: {e}")),
    }
}

fn sync_dir(dir: &Path) -> Result<(), DirError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Backups read from a path given as either one backup (it holds a `MANIFEST`) or a backup
/// directory: their catalog, and the directory holding them (the backup's parent for one
/// backup), whose `<id>/table` are their copies.
#[derive(Debug)]
pub struct Backups {
    /// The complete backups.
    pub catalog: Catalog,
    /// The directory holding them.
    pub root: TableLocation,
    /// The open directory (holding its shared lock) when a directory was given.
    pub dir: Option<BackupDir>,
}

impl Backups {
    /// Where backup `id` keeps its copy of the table's files.
    pub fn table_location(&self, id: &BackupId) -> Result<TableLocation, DirError> {
        table_location(&self.root, id)
    }
}

/// Reads `uri` (a path, `file://` or `s3://` URL) as either one backup or a backup directory.
pub async fn catalog_of(uri: &str) -> Result<Backups, String> {
    let at = location(uri, tidemark_fs::std_fs()).map_err(|e| e.to_string())?;
    match read_manifest_at(&at).await {
        Ok(Some(m)) => {
            let root = at
                .parent()
                .ok_or_else(|| format!("{uri}: a backup at the store's root has no directory"))?;
            Ok(Backups {
                catalog: Catalog::new([m]),
                root,
                dir: None,
            })
        }
        Ok(None) => {
            let dir = BackupDir::open_shared_at(at)
                .await
                .map_err(|e| e.to_string())?;
            let scan = dir.scan().await.map_err(|e| e.to_string())?;
            Ok(Backups {
                catalog: scan.catalog,
                root: dir.location().clone(),
                dir: Some(dir),
            })
        }
        Err(e) => Err(format!("{uri}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_exclusive_open_is_refused_naming_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().display().to_string();
        let first = BackupDir::open_exclusive(&uri).await.unwrap();
        let err = BackupDir::open_exclusive_within(
            tidemark_fs::std_fs(),
            &uri,
            std::time::Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        assert!(BackupDir::open_shared(&uri).await.is_err());
        drop(first);
        let a = BackupDir::open_shared(&uri).await.unwrap();
        let _b = BackupDir::open_shared(&uri).await.unwrap();
        drop(a);
    }

    /// A backup that starts while a reader holds the lock shared (a pipeline reading the
    /// chains before its log cleanup) waits for it instead of failing.
    #[tokio::test]
    async fn an_exclusive_open_waits_for_a_short_shared_holder() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().display().to_string();
        drop(BackupDir::open_exclusive(&uri).await.unwrap());
        let reader = BackupDir::open_shared(&uri).await.unwrap();
        let released = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(reader);
        });
        let started = std::time::Instant::now();
        let writer = BackupDir::open_exclusive(&uri).await.unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        released.await.unwrap();
        drop(writer);
    }

    #[tokio::test]
    async fn unfinished_and_unreadable_backups_are_listed_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("0000000000001-full-v0-v0/table")).unwrap();
        std::fs::create_dir_all(dir.path().join("0000000000002-full-v1-v1")).unwrap();
        std::fs::write(
            dir.path()
                .join("0000000000002-full-v1-v1")
                .join(MANIFEST_FILE),
            b"garbage",
        )
        .unwrap();
        let d = BackupDir::open_shared(&uri).await.unwrap();
        let scan = d.scan().await.unwrap();
        assert_eq!(
            scan.unfinished,
            vec!["0000000000001-full-v0-v0".to_string()]
        );
        assert_eq!(scan.unreadable.len(), 1);
        assert_eq!(scan.catalog.backups().count(), 0);
    }
}
