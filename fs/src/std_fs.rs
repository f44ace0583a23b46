//! [`StdFs`]: the real file system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::{FileSystem, ReadableFile, WritableFile};

/// The real file system, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

/// A real file open for writing.
#[derive(Debug)]
pub struct StdFile(File);

impl WritableFile for StdFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn drop_cached(&mut self, offset: u64, len: u64) {
        fadvise_dont_need(&self.0, offset, len);
    }

    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            if len == 0 {
                return Ok(());
            }
            let fd = self.0.as_raw_fd();
            let call = |mode: libc::c_int| {
                // SAFETY: the fd is open for the lifetime of `self.0`; the call reads no
                // memory of ours.
                let r =
                    unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
                if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            // Zeroed, blocks kept (ext4, XFS); where the file system has no such mode (tmpfs,
            // btrfs), a hole: reads as zeros too. Any other error is the caller's.
            match call(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    call(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).map_err(|e| {
                        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                            io::Error::new(io::ErrorKind::Unsupported, e)
                        } else {
                            e
                        }
                    })
                }
                done => done,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (offset, len);
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }

    fn start_writeback(&mut self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: the fd is open for the lifetime of `self.0`; the call reads no memory of
            // ours. Errors are ignored: this is only a hint, durability comes from fsync.
            unsafe {
                libc::sync_file_range(
                    self.0.as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }

    /// `copy_file_range(2)`: the kernel copies from the source's page cache into this file's,
    /// no user buffer in between; where it cannot (another file system, an old kernel), the
    /// bytes go through a buffer.
    fn copy_from(&mut self, src: &File, src_offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let mut off_in = src_offset as libc::loff_t;
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(1 << 30) as usize;
                // SAFETY: both fds are open for the duration of the call; `off_in` is a valid
                // loff_t the kernel updates; a null `off_out` uses (and advances) this file's
                // position, where `write_all` would write.
                let n = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        &mut off_in,
                        self.0.as_raw_fd(),
                        std::ptr::null_mut(),
                        want,
                        0,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // Not possible between these two files: copy the rest through a buffer.
                        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                            return crate::copy_through_buffer(
                                self,
                                src,
                                src_offset + done,
                                len - done,
                            )
                        }
                        _ => return Err(e),
                    }
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the source ended at byte {} of the {} to copy",
                            src_offset + done,
                            src_offset + len
                        ),
                    ));
                }
                done += n as u64;
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        crate::copy_through_buffer(self, src, src_offset, len)
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().create_new(true).write(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }

    fn open_overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().write(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        Ok(Box::new(File::open(path)?))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// How many of the file's pages are in the page cache, and how many pages it has
/// (`mincore(2)` over a read-only mapping, which faults nothing in). Why: tests check what a
/// writer leaves cached (the WAL drops the pages it will not read again), and an operator's
/// diagnostic can too.
pub fn cached_pages(path: &Path) -> io::Result<(usize, usize)> {
    cached_pages_of(path)
        .map_err(|e| io::Error::new(e.kind(), format!("page cache of {}: {e}", path.display())))
}

fn cached_pages_of(path: &Path) -> io::Result<(usize, usize)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let f = File::open(path)?;
        let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Ok((0, 0));
        }
        // SAFETY: sysconf reads no memory of ours.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(io::Error::other)?;
        let pages = len.div_ceil(page);
        // SAFETY: a fresh shared read-only mapping of an open file, unmapped below; nothing
        // reads through it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut vec = vec![0u8; pages];
        // SAFETY: `addr` maps `len` bytes; `vec` has one byte per page of them.
        let r = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        let err = io::Error::last_os_error();
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(addr, len) };
        if r != 0 {
            return Err(err);
        }
        Ok((vec.iter().filter(|b| **b & 1 != 0).count(), pages))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// File system types by their `statfs` magic number (`f_type`).
#[cfg(target_os = "linux")]
const TMPFS_MAGIC: i64 = 0x0102_1994;
#[cfg(target_os = "linux")]
const RAMFS_MAGIC: i64 = 0x8584_58f6;
#[cfg(target_os = "linux")]
const EXT4_MAGIC: i64 = 0xEF53;
#[cfg(target_os = "linux")]
const XFS_MAGIC: i64 = 0x5846_5342;
#[cfg(target_os = "linux")]
const BTRFS_MAGIC: i64 = 0x9123_683E;

/// The file system type `statfs` or `fstatfs` filled `st` with.
#[cfg(target_os = "linux")]
fn magic(st: &libc::statfs) -> i64 {
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    kind
}

/// Whether `path` is on a file system whose files live only in memory (tmpfs, ramfs): their
/// pages cannot be dropped from the page cache, since that is where the data is. Why: a test
/// of [`WritableFile::drop_cached`] skips there instead of failing.
pub fn in_memory_file_system(path: &Path) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `c` is a NUL-terminated path; `st` is written by the call before it is read.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("statfs {}: {e}", path.display()),
            ));
        }
        Ok([TMPFS_MAGIC, RAMFS_MAGIC].contains(&magic(&st)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(false)
    }
}

/// Parts of a file [`data_ranges`] lists at most; the rest of the file after them is one
/// more part (a file of many small holes is read as if it had none).
const MAX_DATA_RANGES: usize = 64;

/// The parts of `from..len` of `f` that may hold data (see
/// [`crate::ReadableFile::data_ranges`]), by `SEEK_DATA` and `SEEK_HOLE` in turn; the whole
/// range where either call fails for another reason than `ENXIO` (no data after).
pub(crate) fn data_ranges(f: &File, from: u64, len: u64) -> Vec<std::ops::Range<u64>> {
    if !reports_zeroed_ranges(f) {
        return crate::whole_range(from, len);
    }
    let mut parts = Vec::new();
    let mut at = from;
    while at < len {
        if parts.len() == MAX_DATA_RANGES {
            parts.push(at..len);
            break;
        }
        let data = match seek(f, at, Seek::Data) {
            Found::At(d) => d.max(at),
            Found::Nothing => break,
            Found::Unknown => {
                parts.push(at..len);
                break;
            }
        };
        if data >= len {
            break;
        }
        let hole = match seek(f, data, Seek::Hole) {
            Found::At(h) if h > data => h.min(len),
            _ => len,
        };
        parts.push(data..hole);
        at = hole;
    }
    parts
}

/// True when `f` lives on a file system whose `SEEK_DATA` and `SEEK_HOLE` are trusted to
/// tell zeroed ranges (unwritten extents, holes) from data: ext4, XFS, btrfs, tmpfs. Why: a
/// caller skips what they call zeros unread ([`crate::ReadableFile::data_ranges`]), and the
/// WAL's search for a seal after damage is one such caller, where a hole reported wrongly
/// (an old kernel's bug, a FUSE file system) would hide a seal. Elsewhere every byte is read.
pub fn reports_zeroed_ranges(f: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `st` is written by the call before it is read; the fd is open for the
        // lifetime of `f`.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
            return false;
        }
        [EXT4_MAGIC, XFS_MAGIC, BTRFS_MAGIC, TMPFS_MAGIC].contains(&magic(&st))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = f;
        false
    }
}

/// What `lseek` with `SEEK_DATA` or `SEEK_HOLE` is asked for.
enum Seek {
    Data,
    Hole,
}

/// What `lseek` answered.
enum Found {
    At(u64),
    /// `ENXIO`: no data (or no hole) at or after the offset.
    Nothing,
    /// Any other failure, or not Linux: nothing known.
    Unknown,
}

fn seek(f: &File, offset: u64, what: Seek) -> Found {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(at) = libc::off_t::try_from(offset) else {
            return Found::Unknown;
        };
        let whence = match what {
            Seek::Data => libc::SEEK_DATA,
            Seek::Hole => libc::SEEK_HOLE,
        };
        // SAFETY: the fd is open for the lifetime of `f`; the call reads no memory of ours
        // (it moves the file's position, which every reader here sets before reading).
        let found = unsafe { libc::lseek(f.as_raw_fd(), at, whence) };
        if found >= 0 {
            return Found::At(found as u64);
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            return Found::Nothing;
        }
        Found::Unknown
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (f, offset, what);
        Found::Unknown
    }
}

/// `posix_fadvise(DONTNEED)` of `len` bytes at `offset` of `f` (see
/// [`WritableFile::drop_cached`]); nothing for a `len` of 0 (which would mean "to the end").
pub(crate) fn fadvise_dont_need(f: &File, offset: u64, len: u64) {
    if len > 0 {
        // Errors are ignored: this is only a hint.
        let _ = fadvise(f, offset, len, Advice::DontNeed);
    }
}

/// `posix_fadvise(WILLNEED)` of the whole of `f`: the kernel starts reading it into the page
/// cache and returns (submitting the reads may wait for the disk's queue, so callers advise
/// from a thread of their own). Why: a file about to be read at random places (a RocksDB
/// table a restart looks keys up in) is then read in big sequential steps instead. An error
/// says the hint was not taken; nothing else changes. Off Linux, nothing happens.
pub fn fadvise_will_need(f: &File) -> io::Result<()> {
    fadvise(f, 0, 0, Advice::WillNeed)
}

/// The `posix_fadvise` advice this crate gives.
enum Advice {
    DontNeed,
    WillNeed,
}

/// `posix_fadvise` of `len` bytes at `offset` of `f` (a `len` of 0: to the end).
fn fadvise(f: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let advice = match advice {
            Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
            Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
        };
        // SAFETY: the fd is open for the lifetime of `f`; the call reads no memory of ours
        // and changes no file.
        let rc = unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                advice,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len, advice);
    Ok(())
}
