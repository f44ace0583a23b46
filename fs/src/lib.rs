//! The file-system seam of Tidemark (after tikv's raft-engine): every file Tidemark writes
//! itself — WAL segments, Parquet data files, Delta commit files — goes through a
//! [`FileSystem`], so tests can see faults that no SIGKILL produces:
//!
//! - [`StdFs`]: the real file system (what a release build uses).
//! - [`FaultFs`]: wraps another file system and makes a chosen call fail with EIO or ENOSPC
//!   (a failed write, possibly after writing part of the buffer; a failed fsync; a failed
//!   rename...), once or from then on.
//! - [`PowerCutFs`]: wraps the real file system and records what is durable: file contents as
//!   of their last fsync, directory entries as of their directory's last fsync.
//!   [`PowerCutFs::crash_image`] writes what a power cut at this instant would leave, so a
//!   test fails if any one fsync the protocol relies on were missing.
//!
//! Reads are part of the seam only where the writer reads its own files back (the WAL scan).

mod fault;
mod lock;
mod power_cut;
mod std_fs;

use std::fmt;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fault::{Fault, FaultFs, FaultKind, Op};
pub use lock::{try_lock_file, LockAttempt};
pub use power_cut::PowerCutFs;
pub use std_fs::{
    cached_pages, fadvise_will_need, in_memory_file_system, reports_zeroed_ranges, StdFs,
};

/// A file open for writing through a [`FileSystem`].
pub trait WritableFile: Send + fmt::Debug {
    /// Writes all of `buf` at the end of what this handle wrote (append mode) or at its
    /// position (a new file, or one opened to be written over).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the file's data is durable when this returns.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`: data and metadata are durable when this returns.
    fn sync_all(&mut self) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes (not durable until a sync).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Asks the kernel to start writing back `len` bytes at `offset` without waiting: a hint
    /// that moves fsync work earlier; never needed for durability.
    fn start_writeback(&mut self, _offset: u64, _len: u64) {}
    /// Asks the kernel to drop the page-cache pages of `len` bytes at `offset` that are
    /// already written back (a hint: dirty pages and pages still being written stay, and no
    /// byte of the file changes). Why: a writer that never reads its bytes again hands their
    /// pages back at once, so its next writes reuse pages just freed instead of taking new
    /// ones (on a VM that returns free memory to its host, a new page costs a fault to the
    /// host: the WAL's copies into the page cache ran at 0.34 GB/s into such pages, against
    /// 4.5 GB/s into pages just freed). A `len` of 0 drops nothing.
    fn drop_cached(&mut self, _offset: u64, _len: u64) {}
    /// Makes `len` bytes at `offset` read as zeros without writing them, the file's size and
    /// its allocated blocks kept (`fallocate(FALLOC_FL_ZERO_RANGE)`; where the file system
    /// has no such mode, a hole punched instead: `Unsupported` where it has neither). Why:
    /// writing over a file whose pages are not cached reads each partly written page from
    /// disk first, unless the file system knows the page holds zeros. An error says the file
    /// is unchanged or the range only partly zeroed: a caller that only wanted the speed goes
    /// on without it.
    fn zero_range(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Appends `len` bytes of `src` read from `src_offset`, as [`Self::write_all`] of them
    /// would. The real file system copies inside the kernel (`copy_file_range`: no copy
    /// through a user buffer); this default reads and writes through one. A source shorter
    /// than `src_offset + len` is an `UnexpectedEof` error (part may have been appended).
    fn copy_from(&mut self, src: &std::fs::File, src_offset: u64, len: u64) -> io::Result<()> {
        copy_through_buffer(self, src, src_offset, len)
    }
}

/// [`WritableFile::copy_from`] through a user buffer (the default, and the fallback where the
/// kernel cannot copy between the two files).
pub fn copy_through_buffer<W: WritableFile + ?Sized>(
    out: &mut W,
    src: &std::fs::File,
    src_offset: u64,
    len: u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        src.read_exact_at(&mut buf[..n], src_offset + done)?;
        out.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// A file open for reading through a [`FileSystem`].
pub trait ReadableFile: Read + Seek + Send {
    /// Asks the kernel to drop the page-cache pages of `len` bytes at `offset` (a hint, as
    /// [`WritableFile::drop_cached`]). Why: a reader that reads a file once (the WAL's scan
    /// at a restart) hands each part's pages back once past it, so the parts after it are
    /// read into pages just freed instead of new ones (on these VMs a cold read of 350 MB
    /// took 417-602 ms, and 114-138 ms dropping 16 MB behind). A `len` of 0 drops nothing.
    fn drop_cached(&self, _offset: u64, _len: u64) {}
    /// The parts of `from..len` where the file may hold bytes other than zeros, in order
    /// (`lseek` with `SEEK_DATA` and `SEEK_HOLE`: holes, and on ext4 and XFS unwritten
    /// extents not in the page cache, are left out without being read). Why: a WAL segment
    /// file is reused with its old bytes zeroed (`WritableFile::zero_range`), and a restart
    /// that looked for a seal after the valid frames of such a file read the whole zeroed
    /// rest (tens of MB the kernel fills with zeros into fresh pages) to find none. Ask before
    /// reading: a zeroed range once read is cached, and then counts as data. The default,
    /// and a file system that cannot tell, give `from..len` whole. Moves the read position
    /// (seek before reading).
    fn data_ranges(&mut self, from: u64, len: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
        Ok(whole_range(from, len))
    }
}

/// `from..len` as the one part of [`ReadableFile::data_ranges`] where nothing is known to be
/// zeros (none when it is empty).
fn whole_range(from: u64, len: u64) -> Vec<std::ops::Range<u64>> {
    (from < len).then_some(from..len).into_iter().collect()
}

impl ReadableFile for std::fs::File {
    fn drop_cached(&self, offset: u64, len: u64) {
        std_fs::fadvise_dont_need(self, offset, len);
    }

    fn data_ranges(&mut self, from: u64, len: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
        Ok(std_fs::data_ranges(self, from, len))
    }
}

impl<T: AsRef<[u8]> + Send> ReadableFile for io::Cursor<T> {}

/// The file operations Tidemark's own writers use. Paths are absolute or relative to the
/// process's working directory, as with `std::fs`.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// `mkdir -p`. Directories are treated as durable once created.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates `path`, failing if it exists, open for writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing `path` for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing `path` to be written over from its start: neither truncated nor in
    /// append mode, so writes replace its bytes in order and its length stays until they pass
    /// it. Why: the WAL reuses old segment files, whose allocated blocks a write over costs
    /// less than a new file's (`tidemark_checkpoint::wal::format`). A file system that cannot
    /// answers `Unsupported` (the default), and the WAL makes new files.
    fn open_overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: this file system does not open files to be written over",
                path.display()
            ),
        ))
    }
    /// Opens `path` for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>>;
    /// The entries of `dir` (full paths, any order).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// The size of `path` in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Renames `from` to `to`, replacing `to` (durable after a sync of both directories).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Links `to` to the file at `from`; fails with `AlreadyExists` if `to` exists
    /// (put-if-absent). Durable after a sync of `to`'s directory.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path` (durable after a sync of its directory).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Fsyncs the directory `dir`: entries created, renamed or removed in it become durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// True if `path` exists.
    fn exists(&self, path: &Path) -> bool {
        self.len(path).is_ok()
    }
}

/// A file system shared by the writers of one process.
pub type SharedFs = Arc<dyn FileSystem>;

/// The real file system, shared.
pub fn std_fs() -> SharedFs {
    Arc::new(StdFs)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` if missing; a newly created directory's entry is fsynced in its parent (so a
/// file made durable in it is reachable after a power cut). The failing step is returned
/// with the error: `"create directory"` or `"fsync directory"`, and the path at fault.
pub fn create_dir_durably(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<(), (&'static str, PathBuf, io::Error)> {
    if fs.exists(dir) {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .map_err(|e| ("create directory", dir.to_path_buf(), e))?;
    let parent = parent_dir(dir);
    fs.sync_dir(&parent)
        .map_err(|e| ("fsync directory", parent, e))
}

/// Writes `bytes` to `path` durably and whole: into a temporary file beside it, fsynced, then
/// renamed over `path` (or linked to it when `if_absent`, failing with `AlreadyExists` if
/// `path` exists), then the directory fsynced. A crash at any point leaves either no file or
/// the whole file under `path`, never part of it. The temporary file is removed on failure.
pub fn write_file_durably(
    fs: &dyn FileSystem,
    path: &Path,
    bytes: &[u8],
    if_absent: bool,
) -> io::Result<()> {
    let mut file = DurableFile::create(fs, path)?;
    file.append(bytes)?;
    file.commit(if_absent)
}

/// A file written piece by piece under a temporary name beside `path` and placed under
/// `path` only whole and durable, by [`DurableFile::commit`] — the streaming form of
/// [`write_file_durably`], for files too big to hold in memory.
///
/// Invariant: nothing ever appears under `path` except by `commit`, and only after the whole
/// content was fsynced. A `DurableFile` dropped without `commit` removes its temporary file
/// (best effort: a crash leaves a hidden `.<name>.tidemark-tmp-*` file, never a wrong final one).
#[derive(Debug)]
pub struct DurableFile<'a> {
    fs: &'a dyn FileSystem,
    path: PathBuf,
    tmp: PathBuf,
    file: Option<Box<dyn WritableFile>>,
}

impl<'a> DurableFile<'a> {
    /// The bytes written to the temporary file so far.
    pub fn written_len(&self) -> io::Result<u64> {
        self.fs.len(&self.tmp)
    }

    /// Creates the temporary file beside `path`.
    pub fn create(fs: &'a dyn FileSystem, path: &Path) -> io::Result<Self> {
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let tmp = dir.join(temporary_name(
            &name.to_string_lossy(),
            std::process::id(),
            unique_suffix(),
        ));
        let file = fs.create_new(&tmp)?;
        Ok(Self {
            fs,
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// Appends `bytes` to the temporary file.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Err(io::Error::other("the durable file was already placed")),
        }
    }

    /// Appends `len` bytes of `src` from `src_offset` to the temporary file (see
    /// [`WritableFile::copy_from`]).
    pub fn append_from(
        &mut self,
        src: &std::fs::File,
        src_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.copy_from(src, src_offset, len),
            None => Err(io::Error::other("the durable file was already placed")),
        }
    }

    /// Asks the kernel to start writing back `len` bytes at `offset` of the temporary file
    /// (see [`WritableFile::start_writeback`]): the final fsync then waits for less.
    pub fn start_writeback(&mut self, offset: u64, len: u64) {
        if let Some(f) = self.file.as_mut() {
            f.start_writeback(offset, len);
        }
    }

    /// Opens the temporary file for reading: a writer checks what it wrote (a read-back
    /// checksum) before the file is placed under its name.
    pub fn read_back(&self) -> io::Result<Box<dyn ReadableFile>> {
        self.fs.open_read(&self.tmp)
    }

    /// Fsyncs the content, places it under `path` (renamed over it, or linked to it when
    /// `if_absent`: `AlreadyExists` if `path` exists) and fsyncs the directory.
    pub fn commit(self, if_absent: bool) -> io::Result<()> {
        let fs = self.fs;
        let dir = self.place(if_absent)?;
        fs.sync_dir(&dir)
    }

    /// [`Self::commit`] without the directory fsync: the content is durable and the name is
    /// visible, but the name is durable only once the returned directory is fsynced. For
    /// writers that place many files and fsync their directories once
    /// ([`PendingDirSyncs`]) before anything refers to the files.
    pub fn place(mut self, if_absent: bool) -> io::Result<PathBuf> {
        let Some(mut file) = self.file.take() else {
            return Err(io::Error::other("the durable file was already placed"));
        };
        let placed = file.sync_all().and_then(|()| {
            drop(file);
            if if_absent {
                self.fs.hard_link(&self.tmp, &self.path)
            } else {
                self.fs.rename(&self.tmp, &self.path)
            }
        });
        match placed {
            Ok(()) => {
                if if_absent {
                    // The link is the final name; the temporary name goes. Losing this
                    // removal to a crash leaves a hidden temporary file, never a wrong final one.
                    let _ = self.fs.remove_file(&self.tmp);
                }
                Ok(parent_dir(&self.path))
            }
            Err(e) => {
                let _ = self.fs.remove_file(&self.tmp);
                Err(e)
            }
        }
    }
}

/// Directories holding names placed without their directory fsync ([`DurableFile::place`]):
/// one fsync per directory makes all of them durable at once, instead of one per file.
///
/// Invariant (kept by [`Self::sync`]): every directory added before `sync` started is fsynced
/// when it returns `Ok`; a directory added while it runs stays pending for the next `sync`;
/// after a failed fsync the directories not yet synced stay pending.
#[derive(Debug, Default)]
pub struct PendingDirSyncs {
    dirs: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
}

impl PendingDirSyncs {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<PathBuf>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `dir` holds a name not yet durable.
    pub fn add(&self, dir: PathBuf) {
        self.lock().insert(dir);
    }

    /// True when no directory waits for its fsync.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The directories pending now.
    pub fn pending(&self) -> Vec<PathBuf> {
        self.lock().iter().cloned().collect()
    }

    /// Fsyncs every pending directory through `fs`; returns how many were synced. On an
    /// error, names the directory; it and those after it stay pending.
    pub fn sync(&self, fs: &dyn FileSystem) -> Result<usize, (PathBuf, io::Error)> {
        let dirs = std::mem::take(&mut *self.lock());
        let mut synced = 0;
        let mut rest = dirs.into_iter();
        while let Some(dir) = rest.next() {
            if let Err(e) = fs.sync_dir(&dir) {
                let mut pending = self.lock();
                pending.insert(dir.clone());
                pending.extend(rest);
                return Err((dir, e));
            }
            synced += 1;
        }
        Ok(synced)
    }
}

impl Drop for DurableFile<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = self.fs.remove_file(&self.tmp);
        }
    }
}

/// The marker in every temporary name of [`DurableFile`].
pub const TEMPORARY_MARKER: &str = ".tidemark-tmp-";

/// The name of a [`DurableFile`]'s temporary file, beside the final file `name`:
/// `.<name>.tidemark-tmp-<pid>-<n>` — hidden (readers of a Delta table skip it), naming the
/// writing process (`pid`, so a sweep can tell a dead writer's leftover from a live
/// writer's file in progress) and unique within it (`n`).
pub fn temporary_name(name: &str, pid: u32, n: u64) -> String {
    format!(".{name}{TEMPORARY_MARKER}{pid}-{n}")
}

/// A temporary name of [`DurableFile`] taken apart (see [`temporary_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporaryName<'a> {
    /// The final file's name.
    pub final_name: &'a str,
    /// The process that wrote it.
    pub pid: u32,
    /// Its number within that process.
    pub n: u64,
}

/// Parses a name written by [`temporary_name`]; `None` for any other name (strict: both
/// numbers must be plain decimal).
pub fn parse_temporary_name(name: &str) -> Option<TemporaryName<'_>> {
    let hidden = name.strip_prefix('.')?;
    let (final_name, numbers) = hidden.rsplit_once(TEMPORARY_MARKER)?;
    let (pid, n) = numbers.split_once('-')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if final_name.is_empty() || !decimal(pid) || !decimal(n) {
        return None;
    }
    Some(TemporaryName {
        final_name,
        pid: pid.parse().ok()?,
        n: n.parse().ok()?,
    })
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) << 32) | nanos
}

/// True when an I/O error says the disk is full (ENOSPC, EDQUOT).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests;
