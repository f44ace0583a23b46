//! [`TableLocation`]: where a Delta table lives — an [`ObjectStore`] and the table's root
//! prefix inside it — so that everything in this crate reads and writes tables through
//! `Arc<dyn ObjectStore>` only. The URI is opened by
//! [`tidemark_connectors::table_store::TableStore`]: local tables (`file://` URLs and plain
//! paths) get a [`DurableLocalStore`] (every write temp file + fsync + rename + directory
//! fsync); `s3://bucket/prefix` tables an S3 client with conditional writes and retries.
//!
//! [`DurableLocalStore`]: tidemark_connectors::durable_store::DurableLocalStore

use std::fmt;
use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use tidemark_connectors::table_store::TableStore;
pub use tidemark_connectors::table_store::TableStoreError as LocationError;
use tidemark_fs::SharedFs;

/// A Delta table's store and root prefix. Cheap to clone.
#[derive(Clone)]
pub struct TableLocation {
    store: Arc<dyn ObjectStore>,
    root: Path,
    display: String,
    opened: Option<TableStore>,
    local_dir: Option<std::path::PathBuf>,
    /// The file system a local table is written through (`None` for object stores and
    /// tables made from a bare store).
    local_fs: Option<SharedFs>,
}

impl fmt::Debug for TableLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableLocation")
            .field("uri", &self.display)
            .field("root", &self.root)
            .finish()
    }
}

impl fmt::Display for TableLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Opens `uri` (a `file://`/`s3://` URL or a plain path, relative to the working directory)
/// with the real file system; see [`TableLocation::parse_with_fs`].
pub fn open_store(uri: &str) -> Result<TableLocation, LocationError> {
    TableLocation::parse_with_fs(uri, tidemark_fs::std_fs())
}

impl TableLocation {
    /// A table at `root` inside any object store (`display` names it in errors and logs).
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, display: impl Into<String>) -> Self {
        Self {
            store,
            root,
            display: display.into(),
            opened: None,
            local_dir: None,
            local_fs: None,
        }
    }

    /// Opens `uri`: a `file://` URL or a plain path (made absolute against the working
    /// directory; it need not exist yet) becomes a [`DurableLocalStore`] writing through `fs`
    /// (tests pass a `FaultFs`); `s3://bucket/prefix` an S3 store configured from the usual AWS
    /// settings. Any other scheme is refused, naming it.
    ///
    /// [`DurableLocalStore`]: tidemark_connectors::durable_store::DurableLocalStore
    pub fn parse_with_fs(uri: &str, fs: SharedFs) -> Result<Self, LocationError> {
        let mut location = Self::from_table_store(TableStore::parse(uri, fs.clone())?);
        if location.local_dir.is_some() {
            location.local_fs = Some(fs);
        }
        Ok(location)
    }

    /// The table a [`TableStore`] opened.
    pub fn from_table_store(opened: TableStore) -> Self {
        let display = match opened.local_dir() {
            Some(dir) => dir.display().to_string(),
            None => opened.url().to_string(),
        };
        Self {
            store: opened.store().clone(),
            root: opened.root().clone(),
            display,
            local_dir: opened.local_dir().map(FsPath::to_path_buf),
            opened: Some(opened),
            local_fs: None,
        }
    }

    /// The store the table is in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The table's root prefix inside [`Self::store`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local directory of a local table (`None` for other stores).
    pub fn local_dir(&self) -> Option<&FsPath> {
        self.local_dir.as_deref()
    }

    /// The file system a local table opened with [`Self::parse_with_fs`] is written through
    /// (the same its store writes through): lets a copy between local tables write files
    /// itself, through the same seam (`None` otherwise).
    pub fn local_fs(&self) -> Option<&SharedFs> {
        self.local_fs.as_ref()
    }

    /// The location `relative` (`/`-separated) below this one, in the same store (a backup's
    /// copy of a table inside a backup directory, say).
    pub fn join(&self, relative: &str) -> Result<Self, object_store::path::Error> {
        let root = self.child(relative)?;
        let local_dir = self.local_dir.as_ref().map(|d| d.join(relative));
        let display = match &local_dir {
            Some(d) => d.display().to_string(),
            None => format!("{}/{relative}", self.url().trim_end_matches('/')),
        };
        Ok(Self {
            store: self.store.clone(),
            root,
            display,
            opened: None,
            local_dir,
            local_fs: self.local_fs.clone(),
        })
    }

    /// The location one level up (`None` at the store's root).
    pub fn parent(&self) -> Option<Self> {
        let parts: Vec<_> = self.root.parts().collect();
        let (_, up) = parts.split_last()?;
        let local_dir = self.local_dir.as_ref().map(|d| tidemark_fs::parent_dir(d));
        let url = self.url();
        let display = match &local_dir {
            Some(d) => d.display().to_string(),
            None => {
                let trimmed = url.trim_end_matches('/');
                trimmed[..trimmed.rfind('/').unwrap_or(trimmed.len())].to_string()
            }
        };
        Some(Self {
            store: self.store.clone(),
            root: up.iter().cloned().collect(),
            display,
            opened: None,
            local_dir,
            local_fs: self.local_fs.clone(),
        })
    }

    /// The [`TableStore`] this location was opened from (`None` for [`Self::new`]).
    pub fn table_store(&self) -> Option<&TableStore> {
        self.opened.as_ref()
    }

    /// The table as a URL string (`file:///...` for local tables), as deltalake opens it.
    pub fn url(&self) -> String {
        match (&self.opened, &self.local_dir) {
            (Some(opened), _) => opened.url().to_string(),
            (None, Some(dir)) => url::Url::from_directory_path(dir)
                .map(|u| u.to_string())
                .unwrap_or_else(|()| self.display.clone()),
            (None, None) => self.display.clone(),
        }
    }

    /// The object at `relative` (a decoded path relative to the table root, `/`-separated).
    pub fn child(&self, relative: &str) -> Result<Path, object_store::path::Error> {
        let rel = Path::parse(relative)?;
        Ok(self.root.parts().chain(rel.parts()).collect())
    }

    /// The table's `_delta_log/` prefix.
    pub fn log_dir(&self) -> Path {
        self.root.clone().join("_delta_log")
    }

    /// The object path relative to the table root (`None` when outside the table).
    pub fn relative(&self, location: &Path) -> Option<String> {
        location.prefix_match(&self.root).map(|parts| {
            parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    #[test]
    fn plain_paths_and_file_urls_name_the_same_table() {
        let dir = tempfile::tempdir().unwrap();
        let a = open_store(dir.path().to_str().unwrap()).unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap().to_string();
        let b = open_store(&url).unwrap();
        assert_eq!(a.root(), b.root());
        assert_eq!(a.local_dir(), b.local_dir());
        assert_eq!(a.log_dir().to_string(), format!("{}/_delta_log", a.root()));
        let child = a.child("x=1/part-0.parquet").unwrap();
        assert_eq!(a.relative(&child).as_deref(), Some("x=1/part-0.parquet"));
    }

    #[test]
    fn other_schemes_are_refused_by_name_and_s3_is_opened() {
        let err = open_store("gs://bucket/table").unwrap_err();
        assert!(err.to_string().contains("gs://"), "{err}");
        let s3 = open_store("s3://bucket/tables/orders/").unwrap();
        assert_eq!(s3.url(), "s3://bucket/tables/orders");
        assert_eq!(s3.root().as_ref(), "tables/orders");
        assert!(s3.local_dir().is_none());
    }

    #[test]
    fn joined_and_parent_locations_keep_the_store_and_name_the_place() {
        let s3 = open_store("s3://bucket/backups/orders").unwrap();
        let b = s3.join("0001-full-v0-v3/table").unwrap();
        assert_eq!(b.root().as_ref(), "backups/orders/0001-full-v0-v3/table");
        assert_eq!(
            b.to_string(),
            "s3://bucket/backups/orders/0001-full-v0-v3/table"
        );
        let up = s3.parent().unwrap();
        assert_eq!(up.root().as_ref(), "backups");
        assert_eq!(up.to_string(), "s3://bucket/backups");
        let dir = tempfile::tempdir().unwrap();
        let local = open_store(dir.path().to_str().unwrap()).unwrap();
        let j = local.join("a/table").unwrap();
        assert_eq!(j.local_dir(), Some(dir.path().join("a/table").as_path()));
        assert_eq!(
            j.relative(&j.child("x.parquet").unwrap()).as_deref(),
            Some("x.parquet")
        );
        assert_eq!(
            j.parent().unwrap().local_dir(),
            Some(dir.path().join("a").as_path())
        );
    }

    #[test]
    fn relative_paths_are_made_absolute_and_normalized() {
        let loc = open_store("some/./dir/../table").unwrap();
        let dir = loc.local_dir().unwrap();
        assert!(dir.is_absolute());
        assert!(dir.ends_with("some/table"), "{}", dir.display());
    }
}
