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
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RenameTargetMode, UploadPart,
};
use tidemark_fs::{parent_dir, write_file_durably, SharedFs};

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
    if fs.exists(dir) {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .map_err(|e| store_err("create directory", dir, e))?;
    let parent = parent_dir(dir);
    fs.sync_dir(&parent)
        .map_err(|e| store_err("fsync directory", &parent, e))
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
        // Parts are gathered in memory and written whole at `complete`: a file appears under
        // its final name only complete and durable.
        Ok(Box::new(BufferedUpload {
            fs: self.fs.clone(),
            path: self.path_of(location)?,
            parts: Vec::new(),
        }))
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

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.local.list_with_offset(prefix, offset)
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

/// A multipart upload kept in memory and written whole, durably, at `complete`.
#[derive(Debug)]
struct BufferedUpload {
    fs: SharedFs,
    path: PathBuf,
    parts: Vec<PutPayload>,
}

#[async_trait]
impl MultipartUpload for BufferedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts.push(data);
        Box::pin(async { Ok(()) })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let mut bytes = Vec::new();
        for part in self.parts.drain(..) {
            for chunk in part.iter() {
                bytes.extend_from_slice(chunk);
            }
        }
        let (fs, path) = (self.fs.clone(), self.path.clone());
        DurableLocalStore::blocking(move || put_durably(&fs, &path, &bytes, false)).await?;
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts.clear();
        Ok(())
    }
}
