//! A segmented, CRC-framed write-ahead log with group commit and torn-tail recovery, doing all
//! its file I/O through a [`tidemark_fs::FileSystem`] (so tests inject I/O faults and power
//! cuts).
//!
//! The byte format (and the `damaged-*` directory layout) is documented in
//! [`format`](mod@format); what open does with damage is in [`recovery`]. Invariants kept here:
//! - Frames are appended in order; a segment is created only when a frame does not fit in the
//!   current one, and the previous segment is fsynced before the new one gets its first frame,
//!   so the durable log is always a prefix of what was appended.
//! - [`Wal::seal`] returns only once the seal frame (and everything before it) is on disk.
//! - After any failed write, fsync, segment roll or cut-back the WAL is poisoned: every later
//!   write-side call returns [`WalError::Poisoned`] until it is reopened. A failed write is cut
//!   back to the segment's last good length and a failed fsync to its last synced length, so no
//!   half frame and no frame of unknown durability is left for this process to build on (a
//!   failed fsync is never retried as if it could succeed: the kernel may have dropped the
//!   pages). If that cut fails too, the next open cuts the torn tail.
//! - A segment of a newer format version is never touched: open fails.
//! - Segments the log no longer needs are kept as spares (at most [`MAX_SPARES`]) and written
//!   over as later segments (`format.rs` says why, and why their older bytes are never read).
//!   A reused file holds those older bytes after the frames written into it, so it is cut to
//!   its frames before the log moves on to the next segment (a later segment must not follow
//!   bytes that fail their CRC: that would be damage before the end); the next open cuts the
//!   last one (a stop leaves it uncut: cutting at drop would cut through a handle that may no
//!   longer be the log's only writer, or in a directory set aside).
//! - The log does not keep what it wrote in the page cache: once a part of the current
//!   segment has been handed to writeback for a while (a `WRITEBACK_CHUNK` ago), its pages
//!   are dropped, and a closed segment's at its roll (after its fsync, so all are clean).
//!   Nothing reads them again while the process runs; a restart reads its tail from disk,
//!   and its scan hands back what it has read as it goes (`segment.rs`, `drop_behind`).
//!   The next writes then take pages just freed instead of new ones. A spare is zeroed past
//!   its first page when it is reused (its blocks kept), so writing over its uncached pages
//!   reads nothing first.

pub mod format;

mod error;
mod reader;
pub mod recovery;
mod segment;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_fs::{std_fs, SharedFs, WritableFile};
use tracing::{debug, info, warn};

use error::io_err;
use format::{encode_frame, frame_len, FrameBinding, SegmentHeader, SEGMENT_HEADER_LEN};
use recovery::Segment;
use segment::{list_segments, segment_path, spare_path};

pub use error::WalError;
pub use format::{Frame, FrameKind, FrameRef};
pub use reader::WalReader;
pub use recovery::{MidLogDamage, RecoveryReport, Truncation, WalDamage, DAMAGED_PREFIX};

/// When appended frames are fsynced. A seal is always fsynced, whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync at every [`Wal::commit`] (group commit: one fsync per batch of appends).
    EveryBatch,
    /// fsync at a [`Wal::commit`] when the last fsync is at least this old.
    Interval(Duration),
    /// fsync only at [`Wal::seal`] (and at segment rolls, to keep the durable log a prefix).
    OnSeal,
}

/// Settings of a [`Wal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is rolled when the next frame would take it past this size.
    pub segment_size: u64,
    /// fsync policy for ordinary appends.
    pub sync: SyncPolicy,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 << 20,
            sync: SyncPolicy::EveryBatch,
        }
    }
}

/// A place in the log: a segment and a byte offset in it (the start of a frame or the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalPosition {
    /// Segment id.
    pub segment: u64,
    /// Byte offset inside the segment file.
    pub offset: u64,
}

/// The segment files in `dir` as `(id, path, size in bytes)`, oldest first, without opening
/// or repairing anything: for tools that inspect a log another process may be writing.
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>, WalError> {
    segment_files_in(&*std_fs(), dir)
}

/// [`segment_files`] through `fs` (the file system a [`Wal`] is opened with).
pub fn segment_files_in(
    fs: &dyn tidemark_fs::FileSystem,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf, u64)>, WalError> {
    if !fs.exists(dir) {
        return Ok(Vec::new());
    }
    list_segments(fs, dir)?
        .into_iter()
        .map(|(id, path)| {
            let size = fs.len(&path).map_err(io_err("stat", &path))?;
            Ok((id, path, size))
        })
        .collect()
}

/// Segments kept to be written over (`<id:016x>.spare`) rather than deleted: up to this many
/// times the segment size of disk (256 MB at the default size) stays in use while the log is
/// short, so that the next segments reuse allocated blocks instead of new ones, and a
/// truncation renames instead of deleting (its pages are dropped either way: see the module
/// documentation). Four cover the segments a 1 s epoch frees at ~100 MB/s; longer epochs
/// reuse these and create the rest.
pub const MAX_SPARES: usize = 4;

/// Appended bytes after which kernel writeback of the current segment is started (and the
/// pages of the chunk before dropped from the page cache).
const WRITEBACK_CHUNK: u64 = 4 << 20;

/// Where the zeroing of a reused file starts: past its first page, which holds the header
/// (see `Wal::zero_reused`).
const ZERO_REUSED_FROM: u64 = 4096;

/// The first failure that poisoned a [`Wal`].
#[derive(Debug, Clone)]
struct Poison {
    path: PathBuf,
    cause: Arc<WalError>,
}

/// The write-ahead log: see the module documentation.
#[derive(Debug)]
pub struct Wal {
    fs: SharedFs,
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<Segment>,
    /// Id of the next segment a roll creates.
    next_id: u64,
    /// Files of segments the log no longer needs, `(id they last were, path)`, oldest first:
    /// a roll writes over one of them rather than create a file (see [`MAX_SPARES`]).
    spares: Vec<(u64, PathBuf)>,
    /// True while the last segment's file is a reused one that still holds an older
    /// segment's bytes past `file_len` (cut before the next roll).
    stale_tail: bool,
    /// Ids below this may have had a file of this log (one the open removed): a roll to such
    /// an id makes a new file, never a spare.
    fresh_from: u64,
    /// Set once the file system refused to open a file to be written over: no spare is kept
    /// or reused from then on.
    reuse_unsupported: bool,
    /// Open handle of the last segment.
    file: Option<Box<dyn WritableFile>>,
    /// Bytes written to the last segment (what a reader sees).
    file_len: u64,
    /// Bytes of the last segment known durable (as of its last successful fsync, or as found
    /// at open). Invariant: `synced_len <= file_len`.
    synced_len: u64,
    /// Frames appended but not yet written (the group-commit batch).
    pending: Vec<u8>,
    unsynced: bool,
    last_sync: Instant,
    /// Offset in the current segment up to which kernel writeback has been started.
    writeback_from: u64,
    /// Offset in the current segment before which its pages were dropped from the page cache.
    /// Invariant: `dropped_to <= writeback_from`: only pages whose writeback was started a
    /// chunk earlier are dropped.
    dropped_to: u64,
    /// Set by the first failed write, fsync, roll or cut; see the module documentation. A
    /// failed removal of old segments (`truncate_before`, `reset`) does not poison: the log's
    /// tail is not in doubt, and the next truncation retries it.
    poisoned: Option<Poison>,
}

/// A copy of an I/O error for the poison record (io::Error is not Clone).
fn copy_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// A copy of `e` for the poison record.
fn copy_err(e: &WalError) -> WalError {
    match e {
        WalError::Io { op, path, source } => WalError::Io {
            op,
            path: path.clone(),
            source: copy_io(source),
        },
        WalError::UnsupportedVersion {
            path,
            found,
            supported,
        } => WalError::UnsupportedVersion {
            path: path.clone(),
            found: *found,
            supported: *supported,
        },
        WalError::Corrupt {
            path,
            offset,
            reason,
        } => WalError::Corrupt {
            path: path.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        WalError::TooLarge { len, max } => WalError::TooLarge {
            len: *len,
            max: *max,
        },
        WalError::Poisoned { path, cause } => WalError::Poisoned {
            path: path.clone(),
            cause: cause.clone(),
        },
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir` on the real file system; see [`Wal::open_with_fs`].
    pub fn open(
        dir: &Path,
        options: WalOptions,
        from: Option<WalPosition>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        Self::open_with_fs(std_fs(), dir, options, from)
    }

    /// Opens (or creates) the log in `dir`, doing all I/O through `fs`, scanning from `from`
    /// (the last checkpointed position; `None` scans everything): a torn tail is cut off,
    /// damage before the end is moved aside (see [`recovery`]); the report says which.
    pub fn open_with_fs(
        fs: SharedFs,
        dir: &Path,
        options: WalOptions,
        from: Option<WalPosition>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        Self::open_visiting(fs, dir, options, from, &mut |_, _| {})
    }

    /// [`Wal::open_with_fs`], handing `visit` each valid frame the open scans from `from`, in
    /// log order, with its position: exactly what [`Wal::reader`] from `from` yields after the
    /// open (frames past a damage are never visited; the repair keeps every visited one). Why:
    /// a restart that needs what the log holds after its checkpoint reads it in this one pass
    /// instead of scanning the same bytes again after the open.
    pub fn open_visiting(
        fs: SharedFs,
        dir: &Path,
        options: WalOptions,
        from: Option<WalPosition>,
        visit: &mut dyn FnMut(WalPosition, FrameRef<'_>),
    ) -> Result<(Self, RecoveryReport), WalError> {
        fs.create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        let recovered = recovery::recover(&*fs, dir, from, visit)?;
        let (file, file_len) = match recovered.segments.last() {
            Some(s) => {
                let f = fs.open_append(&s.path).map_err(io_err("open", &s.path))?;
                let len = fs.len(&s.path).map_err(io_err("stat", &s.path))?;
                (Some(f), len)
            }
            None => (None, 0),
        };
        let report = recovered.report;
        info!(dir = %dir.display(), segments = recovered.segments.len(), frames_scanned = report.frames, end = ?report.end, "wal opened");
        Ok((
            Self {
                fs,
                dir: dir.to_path_buf(),
                options,
                segments: recovered.segments,
                next_id: recovered.next_id,
                spares: recovered.spares,
                fresh_from: recovered.fresh_from,
                reuse_unsupported: false,
                // The open cut the last segment to its valid frames.
                stale_tail: false,
                file,
                file_len,
                synced_len: file_len,
                pending: Vec::new(),
                unsynced: false,
                last_sync: Instant::now(),
                writeback_from: 0,
                dropped_to: 0,
                poisoned: None,
            },
            report,
        ))
    }

    /// The failure that poisoned this WAL, if one did: every write-side call fails until the
    /// WAL is reopened.
    pub fn poisoned(&self) -> Option<&WalError> {
        self.poisoned.as_ref().map(|p| &*p.cause)
    }

    /// Refuses a write-side call on a poisoned WAL.
    fn check_poison(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(p) => Err(WalError::Poisoned {
                path: p.path.clone(),
                cause: p.cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records `e` as the cause of poisoning (if it is the first failure) and returns it.
    fn poison(&mut self, e: WalError) -> WalError {
        if self.poisoned.is_none() {
            let path = e.path().unwrap_or(&self.dir).to_path_buf();
            warn!(path = %path.display(), error = %e, "wal: poisoned; refusing writes until reopened");
            self.poisoned = Some(Poison {
                path,
                cause: Arc::new(copy_err(&e)),
            });
        }
        e
    }

    /// The position just past the last appended frame (pending frames included).
    pub fn end(&self) -> WalPosition {
        WalPosition {
            segment: self.segments.last().map(|s| s.id).unwrap_or(0),
            offset: self.file_len + self.pending.len() as u64,
        }
    }

    /// Adds a frame to the current batch; nothing is written until [`Wal::commit`] or
    /// [`Wal::seal`] (or until the batch must roll into a new segment).
    pub fn append(
        &mut self,
        kind: FrameKind,
        epoch: u64,
        payload: &[u8],
    ) -> Result<WalPosition, WalError> {
        self.check_poison()?;
        if payload.len() > format::MAX_PAYLOAD {
            return Err(WalError::TooLarge {
                len: payload.len(),
                max: format::MAX_PAYLOAD,
            });
        }
        let len = frame_len(payload.len()) as u64;
        let used = self.file_len + self.pending.len() as u64;
        let has_frames = used > SEGMENT_HEADER_LEN as u64;
        if self.file.is_none() || (has_frames && used + len > self.options.segment_size) {
            self.roll(epoch)?;
        }
        let at = self.end();
        let binding = self
            .segments
            .last()
            .map_or(FrameBinding::Unbound, |s| s.binding);
        encode_frame(binding, kind, epoch, payload, &mut self.pending);
        Ok(at)
    }

    /// Writes the pending batch with one write call and fsyncs it as the policy says.
    pub fn commit(&mut self) -> Result<WalPosition, WalError> {
        self.check_poison()?;
        self.write_pending()?;
        let due = match self.options.sync {
            SyncPolicy::EveryBatch => true,
            SyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            SyncPolicy::OnSeal => false,
        };
        if due {
            self.sync()?;
        }
        Ok(self.end())
    }

    /// Appends `SEAL(epoch, payload)` and returns once it and all before it are durable.
    pub fn seal(&mut self, epoch: u64, payload: &[u8]) -> Result<WalPosition, WalError> {
        self.append(FrameKind::Seal, epoch, payload)?;
        self.write_pending()?;
        self.sync()?;
        Ok(self.end())
    }

    /// Forces everything written so far to disk.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_poison()?;
        self.write_pending()?;
        if self.unsynced {
            if let (Some(f), Some(s)) = (self.file.as_mut(), self.segments.last()) {
                if let Err(e) = f.sync_data() {
                    // What the kernel holds past `synced_len` may never reach the disk: cut
                    // it, so no reader of this process sees frames that a power cut may take.
                    if let Err(cut) = f.set_len(self.synced_len) {
                        warn!(segment = %s.path.display(), error = %cut, "wal: cannot cut back after a failed fsync; the next open will");
                    }
                    self.file_len = self.synced_len;
                    let e = io_err("fsync", &s.path)(e);
                    return Err(self.poison(e));
                }
            }
            self.synced_len = self.file_len;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), WalError> {
        self.check_poison()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let (Some(f), Some(s)) = (self.file.as_mut(), self.segments.last()) else {
            return Ok(());
        };
        if let Err(e) = f.write_all(&self.pending) {
            // Part of the batch may be in the file: cut back to the last whole frame.
            if let Err(cut) = f.set_len(self.file_len) {
                warn!(segment = %s.path.display(), error = %cut, "wal: cannot cut a failed append back; the next open will");
            }
            self.pending.clear();
            let e = io_err("append", &s.path)(e);
            return Err(self.poison(e));
        }
        self.file_len += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        // Start the kernel writing what is there now (without waiting), so the fsync at the
        // seal finds little left to do: measured in `tidemark bench`, the seal's fsync of a
        // whole 1 s epoch (~40 MB) was the main cost of the WAL.
        if self.file_len - self.writeback_from >= WRITEBACK_CHUNK {
            // The chunk handed to writeback last time has had a chunk's worth of appends to
            // reach the disk: its pages go back to the kernel (those still being written stay,
            // and go at the roll), so the appends that follow reuse them.
            debug_assert!(self.dropped_to <= self.writeback_from);
            f.drop_cached(self.dropped_to, self.writeback_from - self.dropped_to);
            self.dropped_to = self.writeback_from;
            f.start_writeback(self.writeback_from, self.file_len - self.writeback_from);
            self.writeback_from = self.file_len;
        }
        Ok(())
    }

    /// Starts a new segment whose first frames belong to `first_epoch`, so the next frame
    /// lands at a position after every earlier one: recovery calls it when the valid log ended
    /// before the checkpointed position (its tail was lost), to re-anchor the checkpoint there.
    pub fn start_new_segment(&mut self, first_epoch: u64) -> Result<WalPosition, WalError> {
        self.check_poison()?;
        self.roll(first_epoch)?;
        Ok(self.end())
    }

    /// Closes the current segment (written and fsynced, and cut to its frames if it is a
    /// reused file) and starts a new one: a spare written over or a new file, its header
    /// written and fsynced, and the directory fsynced, before any frame goes in.
    fn roll(&mut self, first_epoch: u64) -> Result<(), WalError> {
        self.sync()?;
        self.cut_stale_tail().map_err(|e| self.poison(e))?;
        if let Some(f) = self.file.as_mut() {
            // Synced: every page of the closed segment is clean, so all of them go.
            f.drop_cached(0, self.file_len);
        }
        let id = self.next_id;
        let path = segment_path(&self.dir, id);
        // A spare only for an id no file of this log had before: an id the open removed
        // (a torn header) gets a new, short file, as a checkpoint position may point into it.
        let spare = if self.reuse_unsupported || id < self.fresh_from {
            None
        } else {
            self.spares.first().cloned()
        };
        let (made, recycled) = match spare {
            None => (self.make_segment(&path, id, first_epoch, false), false),
            Some((_, spare)) => {
                self.spares.remove(0);
                match self.fs.rename(&spare, &path) {
                    Err(e) => {
                        // Gone (an operator freed the disk) or not movable: a new file instead.
                        warn!(spare = %spare.display(), error = %e, "wal: cannot reuse a spare segment file; creating a new one");
                        (self.make_segment(&path, id, first_epoch, false), false)
                    }
                    Ok(()) => match self.make_segment(&path, id, first_epoch, true) {
                        Err(WalError::Io { source, .. })
                            if source.kind() == io::ErrorKind::Unsupported =>
                        {
                            // The file system cannot write over a file: reuse none from now on.
                            self.reuse_unsupported = true;
                            self.drop_spares();
                            (self.make_segment(&path, id, first_epoch, false), false)
                        }
                        made => (made, true),
                    },
                }
            }
        };
        let f = made.map_err(|e| self.poison(e))?;
        let header = SegmentHeader::new(id, first_epoch, recycled);
        self.segments.push(Segment {
            id,
            first_epoch,
            path,
            binding: header.binding(),
        });
        self.stale_tail = recycled;
        self.next_id = id + 1;
        self.file = Some(f);
        self.file_len = SEGMENT_HEADER_LEN as u64;
        self.synced_len = self.file_len;
        self.writeback_from = 0;
        self.dropped_to = 0;
        Ok(())
    }

    /// Segment `id` at `path` with its header durable: a new file, or (`reused`) a spare just
    /// renamed to `path`, its header written over. The header is fsynced, then the directory.
    /// On a failure the file goes again (best effort): a half-made segment is the log's torn
    /// tail anyway, and the next open removes it, as it removes a reused file whose header
    /// names another id (its older frames are never read as this segment's).
    fn make_segment(
        &self,
        path: &Path,
        id: u64,
        first_epoch: u64,
        reused: bool,
    ) -> Result<Box<dyn WritableFile>, WalError> {
        let mut on_disk = reused;
        let made = (|| {
            let mut f = if reused {
                self.fs
                    .open_overwrite(path)
                    .map_err(io_err("open reused segment", path))?
            } else {
                self.fs
                    .create_new(path)
                    .map_err(io_err("create segment", path))?
            };
            on_disk = true;
            if reused {
                self.zero_reused(f.as_mut(), path);
            }
            let header = SegmentHeader::new(id, first_epoch, reused);
            f.write_all(&header.encode())
                .map_err(io_err("write segment header", path))?;
            f.sync_all().map_err(io_err("fsync", path))?;
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync the directory entry of", path))?;
            Ok(f)
        })();
        if made.is_err() && on_disk {
            let _ = self.fs.remove_file(path);
            let _ = self.fs.sync_dir(&self.dir);
        }
        made
    }

    /// Zeroes a reused file past its first page (its blocks kept), so the frames written over
    /// it read nothing from disk first: its pages were dropped from the page cache while it
    /// was a live segment, and a write that covers part of an uncached page must otherwise
    /// read the rest of it. The first page keeps its bytes until the new header is written:
    /// a reader of the running log meanwhile finds another segment's header there, which it
    /// takes as the log's end (`reader.rs`), where zeros would read as damage. Only for
    /// speed: where the file system cannot, the older bytes stay (they never pass as this
    /// segment's frames, see [`format`](mod@format)) and the writes read them.
    fn zero_reused(&self, f: &mut dyn WritableFile, path: &Path) {
        let len = match self.fs.len(path) {
            Ok(len) => len,
            Err(e) => {
                warn!(segment = %path.display(), error = %e,
                    "wal: cannot stat a reused segment file to zero it; writing over it as is");
                return;
            }
        };
        if len <= ZERO_REUSED_FROM {
            return;
        }
        match f.zero_range(ZERO_REUSED_FROM, len - ZERO_REUSED_FROM) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                debug!(segment = %path.display(), error = %e,
                    "wal: cannot zero a reused segment file here; writing over it as is");
            }
            Err(e) => {
                warn!(segment = %path.display(), error = %e,
                    "wal: cannot zero a reused segment file; writing over it as is");
            }
        }
    }

    /// Deletes every spare (best effort: a spare left is deleted by a later open's WAL, or
    /// reused by a build whose file system can).
    fn drop_spares(&mut self) {
        for (_, spare) in self.spares.drain(..) {
            let _ = self.fs.remove_file(&spare);
        }
        let _ = self.fs.sync_dir(&self.dir);
    }

    /// Cuts the last segment's file to its frames if it still holds a reused file's older
    /// bytes after them, durably (see the module documentation).
    fn cut_stale_tail(&mut self) -> Result<(), WalError> {
        if !self.stale_tail {
            return Ok(());
        }
        if let (Some(f), Some(s)) = (self.file.as_mut(), self.segments.last()) {
            // Frames written past the older file's end left nothing of it: no cut, no fsync.
            let on_disk = self.fs.len(&s.path).map_err(io_err("stat", &s.path))?;
            if on_disk > self.file_len {
                f.set_len(self.file_len)
                    .map_err(io_err("cut the reused file to its frames", &s.path))?;
                f.sync_all().map_err(io_err("fsync", &s.path))?;
            }
        }
        self.stale_tail = false;
        Ok(())
    }

    /// Drops the whole log: starts a new (empty) segment for `first_epoch`, then deletes every
    /// earlier one. For a restart that does not resume from the log (the checkpoint store was
    /// lost, or the pipeline rewinds): segment ids keep growing, so no old position can point
    /// into the new log. Returns the segments and bytes deleted.
    pub fn reset(&mut self, first_epoch: u64) -> Result<(usize, u64), WalError> {
        self.check_poison()?;
        self.roll(first_epoch)?;
        let old: Vec<Segment> = self.segments.drain(..self.segments.len() - 1).collect();
        let mut bytes = 0;
        for s in &old {
            bytes += self.fs.len(&s.path).unwrap_or(0);
            self.fs
                .remove_file(&s.path)
                .map_err(io_err("remove segment", &s.path))?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync directory", &self.dir))?;
        Ok((old.len(), bytes))
    }

    /// Drops segments whose frames all belong to epochs before `epoch` (kept as spares up to
    /// [`MAX_SPARES`], deleted beyond); returns how many. The newest segment is always kept.
    pub fn truncate_before(&mut self, epoch: u64) -> Result<usize, WalError> {
        self.check_poison()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_epoch < epoch {
            if removed > 0 {
                crate::fault::hit(crate::fault::CrashPoint::DuringTruncation);
            }
            let s = self.segments.remove(0);
            // Never a version 1 segment: its older frames are unbound, so after a torn header
            // of its next life (judged under both bindings) their seals would pass as valid and
            // a torn tail would look like damage before the end.
            let keep = !self.reuse_unsupported
                && s.binding != FrameBinding::Unbound
                && self.spares.len() < MAX_SPARES
                && self.spares.iter().all(|(id, _)| *id != s.id);
            if keep {
                let spare = spare_path(&self.dir, s.id);
                self.fs
                    .rename(&s.path, &spare)
                    .map_err(io_err("keep as a spare the segment", &s.path))?;
                self.spares.push((s.id, spare));
            } else {
                self.fs
                    .remove_file(&s.path)
                    .map_err(io_err("remove segment", &s.path))?;
            }
            removed += 1;
        }
        if removed > 0 {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync directory", &self.dir))?;
        }
        Ok(removed)
    }

    /// Segments on disk: `(id, first epoch, size in bytes)` (a reused last segment's size is
    /// that of its frames, not of the older bytes after them).
    pub fn segments(&self) -> Vec<(u64, u64, u64)> {
        let last = self.segments.last().map(|s| s.id);
        self.segments
            .iter()
            .map(|s| {
                let size = if self.stale_tail && Some(s.id) == last {
                    self.file_len
                } else {
                    self.fs.len(&s.path).unwrap_or(0)
                };
                (s.id, s.first_epoch, size)
            })
            .collect()
    }

    /// Spare segment files kept to be written over: `(id they last were, path)`.
    pub fn spares(&self) -> &[(u64, PathBuf)] {
        &self.spares
    }

    /// A reader of the written frames from `from` (pending frames are not visible).
    pub fn reader(&self, from: WalPosition) -> WalReader {
        WalReader::with_fs(self.fs.clone(), &self.dir, from)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod cache_tests;
#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod power_cut_tests;
#[cfg(test)]
mod reuse_tests;
#[cfg(test)]
mod tests;
