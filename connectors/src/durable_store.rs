//! [`DurableLocalStore`]: an [`ObjectStore`] over the local disk whose every write goes through
//! a [`tidemark_fs::FileSystem`] as temp file + fsync + rename-or-link + directory fsync
//! ([`tidemark_fs::write_file_durably`]), so that what deltalake reports as written — a
//! Parquet data file, a `_delta_log` commit, a checkpoint, `_last_checkpoint` — survives a
//! power cut, and tests can inject I/O faults into it or simulate a power cut.
//!
//! deltalake's own local backend (`object_store::local::LocalFileSystem`) never fsyncs. This
//! store is installed as the table's root store for `file://` tables
//! (`DeltaTableBuilder::with_storage_backend`), so deltalake's commit path
//! (`put_opts` with [`PutMode::Create`] for `_delta_log/<version>.json`), its checkpoint writer
//! and Tidemark's own data-file uploads all use it. Reads and listings delegate to
//! `LocalFileSystem`, which reads the same files.
//!
//! Invariant kept here: a write returns `Ok` only after the file's content and its name are
//! durable; a failed write leaves no file under the final name (except when only the final
//! directory fsync failed: the name is then visible but maybe not durable, and the error says
//! so — callers find out from the table whether such a commit counts).

use std::fmt;
use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RenameTargetMode, UploadPart,
};
use tidemark_fs::{parent_dir, write_file_durably, DurableFile, SharedFs};

const STORE: &str = "DurableLocalStore";

/// A local-disk I/O failure of the durable store, naming the operation and the file.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct DurableIoError {
    /// What the store was doing (`write`, `link`, `delete`, ...).
    pub op: &'static str,
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// The local file system as an [`ObjectStore`] rooted at `/`, with every write made durable
/// through a [`SharedFs`]; see the module documentation.
#[derive(Debug, Clone)]
pub struct DurableLocalStore {
    fs: SharedFs,
    local: Arc<LocalFileSystem>,
}

impl DurableLocalStore {
    /// A store rooted at `/` writing through `fs`.
    pub fn new(fs: SharedFs) -> Self {
        Self {
            fs,
            local: Arc::new(LocalFileSystem::new()),
        }
    }

    /// The file behind `location`.
    pub fn path_of(&self, location: &Path) -> object_store::Result<PathBuf> {
        self.local.path_to_filesystem(location)
    }

    /// Runs blocking file-system work off the async threads.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> object_store::Result<T> + Send + 'static,
    ) -> object_store::Result<T> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(f)
                .await
                .map_err(|e| object_store::Error::JoinError { source: e })?,
            Err(_) => f(),
        }
    }
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE}({:?})", self.fs)
    }
}

/// Maps an I/O error on `path` to the object-store error deltalake understands
/// (`NotFound`, `AlreadyExists` — what its commit loop turns into "version exists").
fn store_err(op: &'static str, path: &FsPath, source: io::Error) -> object_store::Error {
    let location = path.display().to_string();
    let kind = source.kind();
    let err = Box::new(DurableIoError {
        op,
        path: path.to_path_buf(),
        source,
    });
    match kind {
        io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: location,
            source: err,
        },
        io::ErrorKind::AlreadyExists => object_store::Error::AlreadyExists {
            path: location,
            source: err,
        },
        _ => object_store::Error::Generic {
            store: STORE,
            source: err,
        },
    }
}

/// Creates `dir` if missing; a newly created directory's entry is fsynced in its parent.
fn ensure_dir(fs: &SharedFs, dir: &FsPath) -> object_store::Result<()> {
    tidemark_fs::create_dir_durably(fs.as_ref(), dir)
        .map_err(|(op, path, e)| store_err(op, &path, e))
}

/// Writes `bytes` to `path` durably (see [`write_file_durably`]).
fn put_durably(
    fs: &SharedFs,
    path: &FsPath,
    bytes: &[u8],
    if_absent: bool,
) -> object_store::Result<()> {
    ensure_dir(fs, &parent_dir(path))?;
    write_file_durably(fs.as_ref(), path, bytes, if_absent).map_err(|e| {
        store_err(
            if if_absent {
                "write (if absent)"
            } else {
                "write"
            },
            path,
            e,
        )
    })
}

/// True when `name`, as a path segment, is written as is (no percent-encoding): ASCII
/// letters, digits, `.`, `_` and `-` (every Delta log file name), and not `.` or `..`.
fn plain_segment(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `prefix/name` compared with `offset` as strings (object paths order as their text),
/// without building it.
fn joined_cmp(prefix: &Path, name: &str, offset: &Path) -> std::cmp::Ordering {
    let joined = prefix.as_ref().bytes().chain(*b"/").chain(name.bytes());
    if prefix.as_ref().is_empty() {
        name.bytes().cmp(offset.as_ref().bytes())
    } else {
        joined.cmp(offset.as_ref().bytes())
    }
}

/// The object paths of the files under `dir` (the directory of `prefix`), recursively, that
/// come after `offset`; as `LocalFileSystem` lists them (symbolic links followed, names it
/// takes for its own upload temporaries `<name>#<digits>` left out, a missing directory
/// empty). A plain name (see [`plain_segment`]) is compared with `offset` before its path is
/// built; any other name gets `LocalFileSystem`'s own conversion.
fn names_after(dir: &FsPath, prefix: &Path, offset: &Path) -> object_store::Result<Vec<Path>> {
    let mut out = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), prefix.clone())];
    while let Some((dir, prefix)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(store_err("list", &dir, e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(store_err("list", &dir, e)),
            };
            let name = entry.file_name();
            let plain = name.to_str().filter(|n| plain_segment(n));
            let mut file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(store_err("list", &entry.path(), e)),
            };
            if file_type.is_symlink() {
                file_type = match std::fs::metadata(entry.path()) {
                    Ok(m) => m.file_type(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(store_err("list", &entry.path(), e)),
                };
            }
            if file_type.is_dir() {
                let child = match plain {
                    Some(n) => prefix.clone().join(n),
                    None => Path::from_absolute_path(entry.path())?,
                };
                dirs.push((entry.path(), child));
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            let location = match plain {
                Some(n) if joined_cmp(&prefix, n, offset).is_le() => continue,
                Some(n) => prefix.clone().join(n),
                None => {
                    let location = Path::from_absolute_path(entry.path())?;
                    let own_temporary = location.filename().is_some_and(|f| {
                        f.split_once('#').is_some_and(|(_, suffix)| {
                            !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
                        })
                    });
                    if own_temporary || location <= *offset {
                        continue;
                    }
                    location
                }
            };
            out.push(location);
        }
    }
    Ok(out)
}

fn read_all(fs: &SharedFs, path: &FsPath) -> object_store::Result<Vec<u8>> {
    let mut f = fs.open_read(path).map_err(|e| store_err("open", path, e))?;
    let mut out = Vec::new();
    io::Read::read_to_end(&mut f, &mut out).map_err(|e| store_err("read", path, e))?;
    Ok(out)
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let if_absent = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => {
                return Err(object_store::Error::NotImplemented {
                    operation: "`put_opts` with mode `PutMode::Update`".into(),
                    implementer: STORE.into(),
                })
            }
        };
        let path = self.path_of(location)?;
        let fs = self.fs.clone();
        let bytes: Bytes = payload.into();
        Self::blocking(move || put_durably(&fs, &path, &bytes, if_absent)).await?;
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // Parts are streamed to a temporary file and placed at `complete`: a file appears
        // under its final name only complete and durable.
        Ok(Box::new(StreamingUpload::start(
            self.fs.clone(),
            self.path_of(location)?,
        )?))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.local.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.local.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    let path = this.path_of(&location)?;
                    let fs = this.fs.clone();
                    Self::blocking(move || {
                        fs.remove_file(&path)
                            .map_err(|e| store_err("delete", &path, e))?;
                        let dir = parent_dir(&path);
                        fs.sync_dir(&dir)
                            .map_err(|e| store_err("fsync directory", &dir, e))
                    })
                    .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    /// Lists like `LocalFileSystem` (recursively, unordered, hidden files included), but
    /// skips every entry at or before `offset` by its name alone, before building its path or
    /// reading its metadata: deltalake lists `_delta_log/` from the loaded version at every
    /// refresh and commit, and `LocalFileSystem` converted each of the directory's entries (all
    /// the versions the retention keeps) to an object path first, a cost growing with the log.
    /// Here an old entry costs one name comparison (see `names_after`).
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(prefix) = prefix.cloned() else {
            return self.local.list_with_offset(None, offset);
        };
        let dir = match self.path_of(&prefix) {
            Ok(dir) => dir,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let offset = offset.clone();
        let local = self.local.clone();
        futures::stream::once(async move {
            let after = Self::blocking(move || names_after(&dir, &prefix, &offset)).await?;
            // Metadata (size, mtime, e_tag) exactly as `LocalFileSystem` gives it, only for
            // the entries listed; one gone meanwhile is left out, as `LocalFileSystem` does.
            Ok::<_, object_store::Error>(
                futures::stream::iter(after)
                    .then(move |location| {
                        let local = local.clone();
                        async move {
                            match local.head(&location).await {
                                Ok(meta) => Ok(Some(meta)),
                                Err(object_store::Error::NotFound { .. }) => Ok(None),
                                Err(e) => Err(e),
                            }
                        }
                    })
                    .try_filter_map(|meta| futures::future::ready(Ok(meta))),
            )
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let (from, to) = (self.path_of(from)?, self.path_of(to)?);
        let fs = self.fs.clone();
        let if_absent = options.mode == CopyMode::Create;
        Self::blocking(move || {
            let bytes = read_all(&fs, &from)?;
            put_durably(&fs, &to, &bytes, if_absent)
        })
        .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let (from, to) = (self.path_of(from)?, self.path_of(to)?);
        let fs = self.fs.clone();
        let if_absent = options.target_mode == RenameTargetMode::Create;
        Self::blocking(move || {
            // The content must be durable before a name points at it.
            fs.open_append(&from)
                .and_then(|mut f| f.sync_all())
                .map_err(|e| store_err("fsync", &from, e))?;
            let to_dir = parent_dir(&to);
            ensure_dir(&fs, &to_dir)?;
            if if_absent {
                fs.hard_link(&from, &to)
                    .map_err(|e| store_err("link", &to, e))?;
                fs.remove_file(&from)
                    .map_err(|e| store_err("delete", &from, e))?;
            } else {
                fs.rename(&from, &to)
                    .map_err(|e| store_err("rename", &to, e))?;
            }
            fs.sync_dir(&to_dir)
                .map_err(|e| store_err("fsync directory", &to_dir, e))?;
            let from_dir = parent_dir(&from);
            if from_dir != to_dir {
                fs.sync_dir(&from_dir)
                    .map_err(|e| store_err("fsync directory", &from_dir, e))?;
            }
            Ok(())
        })
        .await
    }
}

/// What a [`StreamingUpload`] asks of its writer thread, in the order the parts were given.
enum UploadStep {
    /// Append these bytes; answer when they are written (not yet fsynced).
    Part(PutPayload, oneshot::Sender<object_store::Result<()>>),
    /// Fsync, place under the final name, fsync the directory; answer with the outcome.
    Complete(oneshot::Sender<object_store::Result<()>>),
    /// Remove the temporary file; answer when done.
    Abort(oneshot::Sender<()>),
}

/// A multipart upload streamed to a temporary file by a writer thread of its own (parts are
/// appended in the order `put_part` was called, so memory holds only the parts in flight) and
/// placed under its final name, whole and durable, at `complete` ([`DurableFile`]). Dropped or
/// aborted, it leaves no file.
#[derive(Debug)]
struct StreamingUpload {
    path: PathBuf,
    steps: std::sync::mpsc::Sender<UploadStep>,
}

impl StreamingUpload {
    fn start(fs: SharedFs, path: PathBuf) -> object_store::Result<Self> {
        let (steps, received) = std::sync::mpsc::channel();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("durable-upload".into())
            .spawn(move || write_upload(fs, writer_path, received))
            .map_err(|e| store_err("start the writer of", &path, e))?;
        Ok(Self { path, steps })
    }

    fn writer_gone(&self) -> object_store::Error {
        writer_gone(&self.path)
    }
}

/// The error of a step whose writer thread is gone (it ended after an earlier failure).
fn writer_gone(path: &FsPath) -> object_store::Error {
    store_err(
        "write",
        path,
        io::Error::other("the upload's writer thread ended early"),
    )
}

/// The writer thread of a [`StreamingUpload`]: appends parts in order, completes or aborts.
/// After a failure every later step fails with the first error's text; the temporary file is
/// removed (by [`DurableFile`]'s drop) unless completed.
fn write_upload(fs: SharedFs, path: PathBuf, steps: std::sync::mpsc::Receiver<UploadStep>) {
    let dir = parent_dir(&path);
    let mut failed: Option<String> = None;
    let created = ensure_dir(&fs, &dir).and_then(|()| {
        DurableFile::create(fs.as_ref(), &path).map_err(|e| store_err("create", &path, e))
    });
    let mut file = match created {
        Ok(file) => Some(file),
        Err(e) => {
            failed = Some(e.to_string());
            None
        }
    };
    let earlier = |failed: &Option<String>| {
        store_err(
            "write",
            &path,
            io::Error::other(format!(
                "an earlier step of this upload failed: {}",
                failed.as_deref().unwrap_or("the file was already placed")
            )),
        )
    };
    for step in steps {
        match step {
            UploadStep::Part(data, answer) => {
                let result = match file.as_mut() {
                    Some(f) if failed.is_none() => data
                        .iter()
                        .try_for_each(|chunk| f.append(chunk))
                        .map_err(|e| store_err("write", &path, e)),
                    _ => Err(earlier(&failed)),
                };
                if let Err(e) = &result {
                    failed.get_or_insert_with(|| e.to_string());
                    file = None;
                }
                let _ = answer.send(result);
            }
            UploadStep::Complete(answer) => {
                let result = match file.take() {
                    Some(f) if failed.is_none() => {
                        f.commit(false).map_err(|e| store_err("write", &path, e))
                    }
                    _ => Err(earlier(&failed)),
                };
                let _ = answer.send(result);
                return;
            }
            UploadStep::Abort(answer) => {
                drop(file.take());
                let _ = answer.send(());
                return;
            }
        }
    }
}

#[async_trait]
impl MultipartUpload for StreamingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (answer, answered) = oneshot::channel();
        let sent = self.steps.send(UploadStep::Part(data, answer));
        // The error is built only when the writer is gone, not for every part.
        let path = self.path.clone();
        Box::pin(async move {
            if sent.is_err() {
                return Err(writer_gone(&path));
            }
            answered.await.unwrap_or_else(|_| Err(writer_gone(&path)))
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let (answer, answered) = oneshot::channel();
        self.steps
            .send(UploadStep::Complete(answer))
            .map_err(|_| self.writer_gone())?;
        answered.await.unwrap_or_else(|_| Err(self.writer_gone()))?;
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let (answer, answered) = oneshot::channel();
        if self.steps.send(UploadStep::Abort(answer)).is_ok() {
            let _ = answered.await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn files_in(dir: &FsPath) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_multipart_upload_streams_its_parts_in_order_and_appears_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(tidemark_fs::std_fs());
        let path = dir.path().join("big.parquet");
        let location = Path::from_absolute_path(&path).unwrap();
        let mut upload = store.put_multipart(&location).await.unwrap();
        let mut expected = Vec::new();
        let mut pending = Vec::new();
        for i in 0..50u32 {
            let part: Vec<u8> = (0..(1000 + i * 37)).map(|b| (b + i) as u8).collect();
            expected.extend_from_slice(&part);
            pending.push(upload.put_part(PutPayload::from(part)));
        }
        // Parts are written as they come, under a temporary name only.
        for p in pending.into_iter().rev() {
            p.await.unwrap();
        }
        let names = files_in(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].contains(".tidemark-tmp-"), "{names:?}");
        assert_eq!(
            std::fs::metadata(dir.path().join(&names[0])).unwrap().len(),
            expected.len() as u64,
            "the parts are on disk before complete, not held in memory"
        );
        upload.complete().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(files_in(dir.path()), vec!["big.parquet".to_string()]);
    }

    #[tokio::test]
    async fn an_aborted_or_failed_upload_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(tidemark_fs::std_fs());
        let location = Path::from_absolute_path(dir.path().join("a.parquet")).unwrap();
        let mut upload = store.put_multipart(&location).await.unwrap();
        upload
            .put_part(PutPayload::from(vec![1u8; 4096]))
            .await
            .unwrap();
        upload.abort().await.unwrap();
        assert!(
            files_in(dir.path()).is_empty(),
            "{:?}",
            files_in(dir.path())
        );

        // A failed fsync at complete: nothing under the final name, no temporary left.
        let fault = tidemark_fs::FaultFs::new(tidemark_fs::std_fs());
        fault.arm(tidemark_fs::Fault::once(
            tidemark_fs::Op::Sync,
            tidemark_fs::FaultKind::Eio,
        ));
        let store = DurableLocalStore::new(Arc::new(fault.clone()));
        let location = Path::from_absolute_path(dir.path().join("b.parquet")).unwrap();
        let mut upload = store.put_multipart(&location).await.unwrap();
        upload
            .put_part(PutPayload::from(vec![2u8; 4096]))
            .await
            .unwrap();
        let err = upload.complete().await.unwrap_err();
        assert!(err.to_string().contains("b.parquet"), "{err}");
        assert_eq!(fault.injected(), 1);
        assert!(
            files_in(dir.path()).is_empty(),
            "{:?}",
            files_in(dir.path())
        );

        // An EIO on a part: that part and every later step fail; nothing is left.
        fault.arm(tidemark_fs::Fault::once(
            tidemark_fs::Op::Write,
            tidemark_fs::FaultKind::Eio,
        ));
        let mut upload = store.put_multipart(&location).await.unwrap();
        assert!(upload
            .put_part(PutPayload::from(vec![3u8; 10]))
            .await
            .is_err());
        assert!(upload
            .put_part(PutPayload::from(vec![4u8; 10]))
            .await
            .is_err());
        assert!(upload.complete().await.is_err());
        assert!(
            files_in(dir.path()).is_empty(),
            "{:?}",
            files_in(dir.path())
        );
    }

    /// The fast offset listing answers exactly what `LocalFileSystem` does, for plain log
    /// names, hidden temporaries, names needing percent-encoding, `LocalFileSystem`'s own
    /// upload temporaries, a sub-directory, a symbolic link, and offsets before, inside and
    /// after the names; a missing directory lists empty.
    #[tokio::test]
    async fn the_offset_listing_matches_local_file_systems() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("_delta_log");
        std::fs::create_dir_all(log.join("_staged_commits")).unwrap();
        let names = [
            "00000000000000000000.json",
            "00000000000000000001.json",
            "00000000000000000002.checkpoint.parquet",
            "00000000000000000002.json",
            "00000000000000000003.json",
            "_last_checkpoint",
            ".00000000000000000004.checkpoint.parquet.tidemark-tmp-12-34",
            "00000000000000000004.json#1",
            "part 1 % ü.json",
            "00000000000000000005.crc",
            "_staged_commits/00000000000000000006.abc.json",
        ];
        for n in names {
            std::fs::write(log.join(n), n.as_bytes()).unwrap();
        }
        std::os::unix::fs::symlink(
            log.join("00000000000000000003.json"),
            log.join("00000000000000000007.json"),
        )
        .unwrap();
        let store = DurableLocalStore::new(tidemark_fs::std_fs());
        let local = LocalFileSystem::new();
        let prefix = Path::from_absolute_path(&log).unwrap();
        let listed = |s: BoxStream<'static, object_store::Result<ObjectMeta>>| async move {
            let mut v: Vec<ObjectMeta> = s.try_collect().await.unwrap();
            v.sort_by(|a, b| a.location.cmp(&b.location));
            v
        };
        for offset in [
            "",
            "00000000000000000000",
            "00000000000000000001.json",
            "00000000000000000002",
            "00000000000000000003.json",
            "_",
            "_staged_commits",
            "part",
            "zzz",
        ] {
            let offset = Path::from(format!("{prefix}/{offset}"));
            let ours = listed(store.list_with_offset(Some(&prefix), &offset)).await;
            let theirs = listed(local.list_with_offset(Some(&prefix), &offset)).await;
            assert_eq!(ours, theirs, "offset {offset}");
        }
        let all = listed(store.list_with_offset(Some(&prefix), &Path::from(""))).await;
        // Every name but `LocalFileSystem`'s own upload temporary, and the link.
        assert_eq!(all.len(), names.len() - 1 + 1, "{all:?}");
        let missing = Path::from_absolute_path(dir.path().join("nothing")).unwrap();
        assert!(listed(store.list_with_offset(Some(&missing), &missing))
            .await
            .is_empty());
    }
}
