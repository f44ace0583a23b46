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
        }
    }

    /// Opens `uri`: a `file://` URL or a plain path (made absolute against the working
    /// directory; it need not exist yet) becomes a [`DurableLocalStore`] writing through `fs`
    /// (tests pass a `FaultFs`); `s3://bucket/prefix` an S3 store configured from the usual AWS
    /// settings. Any other scheme is refused, naming it.
    ///
    /// [`DurableLocalStore`]: tidemark_connectors::durable_store::DurableLocalStore
    pub fn parse_with_fs(uri: &str, fs: SharedFs) -> Result<Self, LocationError> {
        Ok(Self::from_table_store(TableStore::parse(uri, fs)?))
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
            opened: Some(opened),
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
        self.opened.as_ref().and_then(TableStore::local_dir)
    }

    /// The [`TableStore`] this location was opened from (`None` for [`Self::new`]).
    pub fn table_store(&self) -> Option<&TableStore> {
        self.opened.as_ref()
    }

    /// The table as a URL string (`file:///...` for local tables), as deltalake opens it.
    pub fn url(&self) -> String {
        match &self.opened {
            Some(opened) => opened.url().to_string(),
            None => self.display.clone(),
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
    fn relative_paths_are_made_absolute_and_normalized() {
        let loc = open_store("some/./dir/../table").unwrap();
        let dir = loc.local_dir().unwrap();
        assert!(dir.is_absolute());
        assert!(dir.ends_with("some/table"), "{}", dir.display());
    }
}
