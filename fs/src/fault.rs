//! [`FaultFs`]: injected I/O errors for tests (EIO, ENOSPC, a failed fsync), at a chosen call.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{FileSystem, ReadableFile, SharedFs, WritableFile};

/// The kind of call a fault is armed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`WritableFile::write_all`].
    Write,
    /// [`WritableFile::sync_data`] or [`WritableFile::sync_all`].
    Sync,
    /// [`FileSystem::create_new`] or [`FileSystem::open_overwrite`] (reusing a file stands
    /// in for creating one).
    Create,
    /// [`FileSystem::rename`] or [`FileSystem::hard_link`].
    Rename,
    /// [`FileSystem::remove_file`].
    Remove,
    /// [`FileSystem::sync_dir`].
    SyncDir,
    /// [`WritableFile::set_len`].
    SetLen,
    /// [`WritableFile::zero_range`] (a file system that refuses it, or a device that fails).
    ZeroRange,
    /// A `read` of a file opened by [`FileSystem::open_read`]: a bad sector, a device that
    /// fails while a restart reads its logs (the open itself succeeds). `nth` counts calls to
    /// `read`, which a reader's buffering decides (not frames or bytes).
    Read,
}

/// The error a fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: the disk is full.
    DiskFull,
    /// ETIMEDOUT: a network file system or device that timed out (a transient error).
    TimedOut,
}

impl FaultKind {
    fn error(self, op: Op, path: &Path) -> io::Error {
        let code = match self {
            FaultKind::Eio => libc::EIO,
            FaultKind::DiskFull => libc::ENOSPC,
            FaultKind::TimedOut => libc::ETIMEDOUT,
        };
        let os = io::Error::from_raw_os_error(code);
        io::Error::new(
            os.kind(),
            format!("{os} (injected fault on {op:?} of {})", path.display()),
        )
    }
}

/// One armed fault: the `nth` call (1-based, counted from arming) of `op` on a path whose
/// text contains `path_contains` fails with `kind`; with `sticky`, every later matching call
/// fails too (a dead disk, a full disk). A failing [`Op::Write`] with `partial` writes the first
/// half of the buffer before failing, as a real short write can.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The call.
    pub op: Op,
    /// Which matching call fails first (1 = the next one).
    pub nth: u64,
    /// Only paths containing this text count (`""`: all).
    pub path_contains: String,
    /// The error returned.
    pub kind: FaultKind,
    /// Keep failing after the first failure.
    pub sticky: bool,
    /// A failed write writes half of its buffer first.
    pub partial: bool,
}

impl Fault {
    /// The next call of `op` on any path fails once with `kind`.
    pub fn once(op: Op, kind: FaultKind) -> Self {
        Self {
            op,
            nth: 1,
            path_contains: String::new(),
            kind,
            sticky: false,
            partial: false,
        }
    }
}

#[derive(Debug, Default)]
struct Armed {
    faults: Vec<(Fault, u64, bool)>,
    injected: u64,
}

impl Armed {
    /// Whether this call fails, and how.
    fn check(&mut self, op: Op, path: &Path) -> Option<(FaultKind, bool)> {
        let text = path.to_string_lossy();
        let mut hit = None;
        for (fault, seen, fired) in &mut self.faults {
            if fault.op != op || !text.contains(fault.path_contains.as_str()) {
                continue;
            }
            *seen += 1;
            if (*seen == fault.nth) || (*fired && fault.sticky) {
                *fired = true;
                hit = Some((fault.kind, fault.partial));
            }
        }
        if hit.is_some() {
            self.injected += 1;
        }
        hit
    }
}

/// A file system that fails where it is told to; see [`Fault`].
#[derive(Clone)]
pub struct FaultFs {
    inner: SharedFs,
    armed: Arc<Mutex<Armed>>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFs")
            .field("inner", &self.inner)
            .finish()
    }
}

impl FaultFs {
    /// Wraps `inner`, with no fault armed.
    pub fn new(inner: SharedFs) -> Self {
        Self {
            inner,
            armed: Arc::default(),
        }
    }

    /// Arms `fault` (counting its calls from now).
    pub fn arm(&self, fault: Fault) {
        self.lock().faults.push((fault, 0, false));
    }

    /// Disarms every fault (the disk is repaired, space freed).
    pub fn clear(&self) {
        self.lock().faults.clear();
    }

    /// How many calls failed by injection so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Armed> {
        // A test that panicked while holding the lock has failed already; its state is
        // still usable for reporting.
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        match self.lock().check(op, path) {
            Some((kind, _)) => Err(kind.error(op, path)),
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn WritableFile>,
    path: PathBuf,
    fs: FaultFs,
}

impl WritableFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let hit = self.fs.lock().check(Op::Write, &self.path);
        match hit {
            Some((kind, partial)) => {
                if partial && buf.len() > 1 {
                    self.inner.write_all(&buf[..buf.len() / 2])?;
                }
                Err(kind.error(Op::Write, &self.path))
            }
            None => self.inner.write_all(buf),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.fs.check(Op::Sync, &self.path)?;
        self.inner.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.fs.check(Op::Sync, &self.path)?;
        self.inner.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.check(Op::SetLen, &self.path)?;
        self.inner.set_len(len)
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }

    fn drop_cached(&mut self, offset: u64, len: u64) {
        self.inner.drop_cached(offset, len)
    }

    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.fs.check(Op::ZeroRange, &self.path)?;
        self.inner.zero_range(offset, len)
    }

    fn copy_from(&mut self, src: &std::fs::File, src_offset: u64, len: u64) -> io::Result<()> {
        let hit = self.fs.lock().check(Op::Write, &self.path);
        match hit {
            Some((kind, partial)) => {
                if partial && len > 1 {
                    self.inner.copy_from(src, src_offset, len / 2)?;
                }
                Err(kind.error(Op::Write, &self.path))
            }
            None => self.inner.copy_from(src, src_offset, len),
        }
    }
}

/// A file opened for reading through a [`FaultFs`]: its reads fail where [`Op::Read`] faults
/// say (seeks never fail).
struct FaultReader {
    inner: Box<dyn ReadableFile>,
    path: PathBuf,
    fs: FaultFs,
}

impl io::Read for FaultReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fs.check(Op::Read, &self.path)?;
        self.inner.read(buf)
    }
}

impl io::Seek for FaultReader {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl ReadableFile for FaultReader {
    fn drop_cached(&self, offset: u64, len: u64) {
        self.inner.drop_cached(offset, len)
    }

    fn data_ranges(&mut self, from: u64, len: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
        self.inner.data_ranges(from, len)
    }
}

impl FileSystem for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.check(Op::Create, path)?;
        let inner = self.inner.create_new(path)?;
        Ok(Box::new(FaultFile {
            inner,
            path: path.to_path_buf(),
            fs: self.clone(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inner = self.inner.open_append(path)?;
        Ok(Box::new(FaultFile {
            inner,
            path: path.to_path_buf(),
            fs: self.clone(),
        }))
    }

    /// Fails as a [`Op::Create`] would: reusing a file stands in for creating one.
    fn open_overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.check(Op::Create, path)?;
        let inner = self.inner.open_overwrite(path)?;
        Ok(Box::new(FaultFile {
            inner,
            path: path.to_path_buf(),
            fs: self.clone(),
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        let inner = self.inner.open_read(path)?;
        Ok(Box::new(FaultReader {
            inner,
            path: path.to_path_buf(),
            fs: self.clone(),
        }))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.read_dir(dir)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.inner.len(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        self.inner.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        self.inner.hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        self.inner.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, dir)?;
        self.inner.sync_dir(dir)
    }
}
