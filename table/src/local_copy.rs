//! One data file copied from a local table to another local table, verified, written through
//! the destination's [`FileSystem`] seam — the fast path of replication between two local
//! tables (see `replicate.rs`), doing what [`crate::copy::copy_verified`] does through the
//! object-store API with a fraction of its memory traffic: one reused buffer of at most
//! [`LOCAL_BUFFER_BYTES`] (the object-store reads allocate and zero a fresh buffer per chunk,
//! for the source read and again for the read-back), an in-kernel copy of the bytes, and the
//! read-back done on the temporary file while the kernel already writes it back.
//!
//! Steps: the source's size is checked against the log's; its bytes are read into the buffer
//! and their CRC-32 computed, chunk by chunk, and each chunk is appended to a [`DurableFile`]
//! beside the destination by the kernel (`copy_file_range` through
//! [`tidemark_fs::WritableFile::copy_from`]: in alternating runs on this project's 2-core VM,
//! writing from a user buffer took 2-4x the system time in about half the rounds, the
//! kernel copy did not; writeback started after each chunk); the source must still have the size, modification time and
//! inode it had; the temporary file is read back (with [`Verify::SizeAndChecksum`], the
//! default: its size and CRC-32 must be the source's; with [`Verify::Size`] its size only);
//! then it is fsynced and renamed under its final name — **without** the directory fsync:
//! the caller gets the directory back and must fsync it ([`tidemark_fs::PendingDirSyncs`])
//! before anything refers to the file.
//!
//! Invariants: nothing appears under the final name unless the whole content was read back
//! and matched and was fsynced; a failed or mismatching copy leaves no file under the final
//! name and removes its temporary file; a source that is not the size the log says, or that
//! changes while read, is an error naming it.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path as FsPath, PathBuf};

use tidemark_fs::{parent_dir, DurableFile, FileSystem};

use crate::copy::{CopyError, ReadSums, Verify};

/// The largest buffer a local copy reads into: big enough for few system calls, small enough
/// to stay in the CPU's cache between the read, the checksum and the write.
pub const LOCAL_BUFFER_BYTES: usize = 1 << 20;

/// What a local copy needs.
pub(crate) struct LocalCopy<'a> {
    /// The destination's file system.
    pub(crate) fs: &'a dyn FileSystem,
    /// The source file.
    pub(crate) from: &'a FsPath,
    /// The destination file (absent: callers take this path only for a new file).
    pub(crate) to: &'a FsPath,
    /// The size the log says the source has.
    pub(crate) expected_size: Option<u64>,
    /// How the written file is checked.
    pub(crate) verify: Verify,
    /// Bytes per read (capped at [`LOCAL_BUFFER_BYTES`]).
    pub(crate) chunk_bytes: usize,
    /// Called with the number of source bytes read, as they are read.
    pub(crate) progress: &'a (dyn Fn(u64) + Send + Sync),
}

/// A file placed under its final name whose directory entry is not durable yet.
#[derive(Debug)]
pub(crate) struct Placed {
    /// Size and CRC-32 of the bytes read from the source (and read back).
    pub(crate) sums: ReadSums,
    /// The directory to fsync before anything refers to the file.
    pub(crate) dir: PathBuf,
}

/// An I/O error on `path` as the object-store error the copy errors carry (`NotFound` kept, so
/// a source file gone is told apart).
fn io_err(path: &FsPath, e: io::Error) -> object_store::Error {
    let location = path.display().to_string();
    match e.kind() {
        io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: location,
            source: Box::new(e),
        },
        _ => object_store::Error::Generic {
            store: "local file system",
            source: format!("{location}: {e}").into(),
        },
    }
}

fn read_err(path: &FsPath) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |e| CopyError::Read {
        file: path.display().to_string(),
        source: io_err(path, e),
    }
}

fn write_err(path: &FsPath) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |e| CopyError::Write {
        file: path.display().to_string(),
        source: io_err(path, e),
    }
}

/// Copies and verifies one file; see the module documentation. Blocking.
pub(crate) fn copy_local(c: &LocalCopy<'_>) -> Result<Placed, CopyError> {
    let source = File::open(c.from).map_err(read_err(c.from))?;
    let before = source.metadata().map_err(read_err(c.from))?;
    let size = before.len();
    if let Some(expected) = c.expected_size {
        if expected != size {
            return Err(CopyError::SourceSize {
                file: c.from.display().to_string(),
                expected,
                actual: size,
            });
        }
    }
    let dir = parent_dir(c.to);
    tidemark_fs::create_dir_durably(c.fs, &dir).map_err(|(_, at, e)| write_err(&at)(e))?;
    let mut out = DurableFile::create(c.fs, c.to).map_err(write_err(c.to))?;
    let chunk = c.chunk_bytes.clamp(1, LOCAL_BUFFER_BYTES);
    let mut buf = vec![0u8; chunk.min(size.max(1) as usize)];
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0u64;
    while offset < size {
        let n = buf.len().min((size - offset) as usize);
        let part = &mut buf[..n];
        source.read_exact_at(part, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                changed(
                    c.from,
                    format!("it had {size} bytes, a read at {offset} came back short"),
                )
            } else {
                read_err(c.from)(e)
            }
        })?;
        crc.update(part);
        // The kernel copies the same range (no second pass through the buffer); the
        // read-back below checks that the copy holds the bytes summed here.
        out.append_from(&source, offset, n as u64).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                changed(
                    c.from,
                    format!("it had {size} bytes, a copy at {offset} came back short"),
                )
            } else {
                write_err(c.to)(e)
            }
        })?;
        out.start_writeback(offset, n as u64);
        offset += n as u64;
        (c.progress)(n as u64);
        crate::fault::copy_delay();
    }
    let after = std::fs::metadata(c.from).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            changed(c.from, "it was deleted".into())
        } else {
            read_err(c.from)(e)
        }
    })?;
    if after.len() != size {
        return Err(changed(
            c.from,
            format!("it had {size} bytes, now {}", after.len()),
        ));
    }
    if after.ino() != before.ino()
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec()
    {
        return Err(changed(
            c.from,
            "it was modified (same size, new version)".into(),
        ));
    }
    let expected = ReadSums {
        size,
        crc32: Some(crc.finalize()),
    };
    let found = match c.verify {
        Verify::SizeAndChecksum => read_back(&out, &mut buf).map_err(read_err(c.to))?,
        Verify::Size => ReadSums {
            size: out.written_len().map_err(read_err(c.to))?,
            crc32: expected.crc32,
        },
    };
    if found != expected {
        // Dropping `out` removes the temporary file: nothing was placed.
        return Err(CopyError::Mismatch {
            file: c.to.display().to_string(),
            expected,
            found: ReadSums {
                size: found.size,
                crc32: found.crc32.filter(|_| found.size == size),
            },
        });
    }
    let dir = out.place(false).map_err(write_err(c.to))?;
    Ok(Placed {
        sums: expected,
        dir,
    })
}

fn changed(path: &FsPath, detail: String) -> CopyError {
    CopyError::SourceChanged {
        file: path.display().to_string(),
        detail,
    }
}

/// The size and CRC-32 of what `out` holds, read back through the file system.
fn read_back(out: &DurableFile<'_>, buf: &mut [u8]) -> io::Result<ReadSums> {
    let mut file = out.read_back()?;
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        crc.update(&buf[..n]);
        size += n as u64;
    }
    Ok(ReadSums {
        size,
        crc32: Some(crc.finalize()),
    })
}

#[cfg(test)]
#[path = "local_copy_tests.rs"]
mod tests;
