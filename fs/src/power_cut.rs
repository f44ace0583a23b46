//! [`PowerCutFs`]: the real file system plus a record of what is durable, so a test can see what
//! a power cut would leave.
//!
//! The model (the POSIX contract, no more):
//! - a file's content is durable as of its last `fsync`/`fdatasync`; a file never synced
//!   comes back empty;
//! - a directory entry (a created, renamed, linked or removed name) is durable once its
//!   directory is fsynced; until then a crash brings back the entry as it was at that
//!   directory's last fsync;
//! - directories themselves are durable once created (Tidemark creates them at start-up);
//! - files that existed under the root when the wrapper was made are durable as they were.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::std_fs::StdFs;
use crate::{parent_dir, FileSystem, ReadableFile, WritableFile};

#[derive(Debug, Default)]
struct State {
    next_inode: u64,
    /// Durable content of each file (`None`: never synced).
    synced: HashMap<u64, Option<Vec<u8>>>,
    /// Names as the running system sees them.
    current: HashMap<PathBuf, u64>,
    /// Names as a crash would leave them.
    durable: HashMap<PathBuf, u64>,
}

impl State {
    fn new_inode(&mut self, content: Option<Vec<u8>>) -> u64 {
        self.next_inode += 1;
        self.synced.insert(self.next_inode, content);
        self.next_inode
    }

    /// The inode of `path`, registering a file made outside this wrapper as durable as it is.
    fn inode_of(&mut self, path: &Path) -> io::Result<u64> {
        if let Some(&i) = self.current.get(path) {
            return Ok(i);
        }
        let content = std::fs::read(path)?;
        let i = self.new_inode(Some(content));
        self.current.insert(path.to_path_buf(), i);
        self.durable.insert(path.to_path_buf(), i);
        Ok(i)
    }
}

/// The real file system with a durability record; see the module documentation.
#[derive(Clone)]
pub struct PowerCutFs {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for PowerCutFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerCutFs")
            .field("root", &self.root)
            .finish()
    }
}

impl PowerCutFs {
    /// Tracks files under `root` (an absolute path); what is there now counts as durable.
    pub fn new(root: &Path) -> io::Result<Self> {
        let fs = Self {
            root: root.to_path_buf(),
            state: Arc::default(),
        };
        let mut files = Vec::new();
        walk(root, &mut files)?;
        {
            let mut s = fs.lock();
            for f in files {
                s.inode_of(&f)?;
            }
        }
        Ok(fs)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes into `dest` (created if needed) the tree under the root that a power cut at
    /// this instant would leave: durable names only, each with its durable content.
    pub fn crash_image(&self, dest: &Path) -> io::Result<()> {
        let mut dirs = Vec::new();
        walk_dirs(&self.root, &mut dirs)?;
        std::fs::create_dir_all(dest)?;
        for d in dirs {
            if let Ok(rel) = d.strip_prefix(&self.root) {
                std::fs::create_dir_all(dest.join(rel))?;
            }
        }
        let s = self.lock();
        for (path, inode) in &s.durable {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let content = s.synced.get(inode).cloned().flatten().unwrap_or_default();
            let target = dest.join(rel);
            std::fs::create_dir_all(parent_dir(&target))?;
            std::fs::write(target, content)?;
        }
        Ok(())
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk_dirs(&p, out)?;
        }
    }
    Ok(())
}

struct TrackedFile {
    inner: Box<dyn WritableFile>,
    inode: u64,
    fs: PowerCutFs,
}

impl fmt::Debug for TrackedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedFile")
            .field("inode", &self.inode)
            .finish()
    }
}

impl TrackedFile {
    fn record_sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        let name = s
            .current
            .iter()
            .find(|(_, &i)| i == self.inode)
            .map(|(p, _)| p.clone());
        if let Some(name) = name {
            let content = std::fs::read(&name)?;
            s.synced.insert(self.inode, Some(content));
        }
        Ok(())
    }
}

impl WritableFile for TrackedFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()?;
        self.record_sync()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.inner.sync_all()?;
        self.record_sync()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }

    fn drop_cached(&mut self, offset: u64, len: u64) {
        self.inner.drop_cached(offset, len)
    }

    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.zero_range(offset, len)
    }

    fn copy_from(&mut self, src: &std::fs::File, src_offset: u64, len: u64) -> io::Result<()> {
        self.inner.copy_from(src, src_offset, len)
    }
}

impl FileSystem for PowerCutFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFs.create_dir_all(dir)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inner = StdFs.create_new(path)?;
        let inode = {
            let mut s = self.lock();
            let i = s.new_inode(None);
            s.current.insert(path.to_path_buf(), i);
            i
        };
        Ok(Box::new(TrackedFile {
            inner,
            inode,
            fs: self.clone(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inner = StdFs.open_append(path)?;
        let inode = self.lock().inode_of(path)?;
        Ok(Box::new(TrackedFile {
            inner,
            inode,
            fs: self.clone(),
        }))
    }

    fn open_overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inner = StdFs.open_overwrite(path)?;
        let inode = self.lock().inode_of(path)?;
        Ok(Box::new(TrackedFile {
            inner,
            inode,
            fs: self.clone(),
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        StdFs.open_read(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdFs.read_dir(dir)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        StdFs.len(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let i = s.inode_of(from)?;
        StdFs.rename(from, to)?;
        s.current.remove(from);
        s.current.insert(to.to_path_buf(), i);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let i = s.inode_of(from)?;
        StdFs.hard_link(from, to)?;
        s.current.insert(to.to_path_buf(), i);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.inode_of(path)?;
        StdFs.remove_file(path)?;
        s.current.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFs.sync_dir(dir)?;
        let mut s = self.lock();
        let in_dir = |p: &Path| parent_dir(p) == dir;
        s.durable.retain(|p, _| !in_dir(p));
        let now: Vec<(PathBuf, u64)> = s
            .current
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable.extend(now);
        Ok(())
    }
}
