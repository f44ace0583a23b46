//! [`TableLocation`]: where a Delta table lives — an [`ObjectStore`] and the table's root
//! prefix inside it — so that everything in this crate reads and writes tables through
//! `Arc<dyn ObjectStore>` only. Local tables (`file://` URLs and plain paths) get a
//! [`DurableLocalStore`] (every write temp file + fsync + rename + directory fsync); another
//! store (`s3://`, later) slots in through [`TableLocation::new`].

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use tidemark_connectors::durable_store::DurableLocalStore;
use tidemark_fs::SharedFs;
use url::Url;

/// A table location that cannot be used, naming it.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// Not a URL this build can open.
    #[error(
        "table {uri}: the scheme {scheme}:// is not supported (use a local path or file:// URL)"
    )]
    UnsupportedScheme {
        /// The location as given.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// The path cannot be made absolute or is not valid as an object-store path.
    #[error("table {uri}: {reason}")]
    BadPath {
        /// The location as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A Delta table's store and root prefix. Cheap to clone.
#[derive(Clone)]
pub struct TableLocation {
    store: Arc<dyn ObjectStore>,
    root: Path,
    display: String,
    local_dir: Option<PathBuf>,
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

/// Opens `uri` (a `file://` URL or a plain path, relative to the working directory) on the
/// real file system; see [`TableLocation::parse_with_fs`].
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
            local_dir: None,
        }
    }

    /// Opens `uri`: a `file://` URL or a plain path (made absolute against the working
    /// directory; it need not exist yet) becomes a [`DurableLocalStore`] writing through `fs`
    /// (tests pass a `FaultFs`). Any other scheme is refused, naming it.
    pub fn parse_with_fs(uri: &str, fs: SharedFs) -> Result<Self, LocationError> {
        let dir = match Url::parse(uri) {
            Ok(url) if url.scheme() == "file" => {
                url.to_file_path().map_err(|()| LocationError::BadPath {
                    uri: uri.to_string(),
                    reason: "not a local file URL".into(),
                })?
            }
            // A one-letter "scheme" is a Windows drive, never a URL here.
            Ok(url) if url.scheme().len() > 1 => {
                return Err(LocationError::UnsupportedScheme {
                    uri: uri.to_string(),
                    scheme: url.scheme().to_string(),
                })
            }
            _ => PathBuf::from(uri),
        };
        Self::local(&dir, fs).map_err(|reason| LocationError::BadPath {
            uri: uri.to_string(),
            reason,
        })
    }

    /// The local directory `dir` (absolute or relative to the working directory).
    fn local(dir: &FsPath, fs: SharedFs) -> Result<Self, String> {
        let abs = std::path::absolute(dir).map_err(|e| format!("cannot make it absolute: {e}"))?;
        let abs = normalize(&abs);
        let root = Path::from_absolute_path(&abs).map_err(|e| e.to_string())?;
        Ok(Self {
            store: Arc::new(DurableLocalStore::new(fs)),
            root,
            display: abs.display().to_string(),
            local_dir: Some(abs),
        })
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

    /// The table as a URL string (`file:///...` for local tables), as deltalake opens it.
    pub fn url(&self) -> String {
        match &self.local_dir {
            Some(dir) => Url::from_directory_path(dir)
                .map(|u| u.to_string())
                .unwrap_or_else(|()| self.display.clone()),
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

/// Removes `.` and resolves `..` lexically (the table need not exist yet).
fn normalize(path: &FsPath) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn other_schemes_are_refused_by_name() {
        let err = open_store("s3://bucket/table").unwrap_err();
        assert!(err.to_string().contains("s3://"), "{err}");
    }

    #[test]
    fn relative_paths_are_made_absolute_and_normalized() {
        let loc = open_store("some/./dir/../table").unwrap();
        let dir = loc.local_dir().unwrap();
        assert!(dir.is_absolute());
        assert!(dir.ends_with("some/table"), "{}", dir.display());
    }
}
