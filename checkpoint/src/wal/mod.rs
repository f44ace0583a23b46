//! A segmented, CRC-framed write-ahead log with group commit and torn-tail recovery.
//!
//! The byte format is documented in [`format`]. Invariants kept here:
//! - Frames are appended in order; a segment is created only when a frame does not fit in the
//!   current one, and the previous segment is fsynced before the new one gets its first frame,
//!   so the durable log is always a prefix of what was appended.
//! - [`Wal::seal`] returns only once the seal frame (and everything before it) is on disk.
//! - On open, the first bad frame (short, checksum mismatch, garbage) ends the valid log: its
//!   segment is truncated there and every later segment is removed, and both are reported
//!   through `tracing`. A segment of a newer format version is never touched: open fails.

pub mod format;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use format::{
    decode_frame_header, encode_frame, frame_crc_ok, frame_len, FrameError, HeaderError,
    SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
pub use format::{Frame, FrameKind};

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

/// A WAL operation that failed, naming the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O call failed.
    #[error("wal: {op} {path} failed: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A segment was written by a format version this build cannot read.
    #[error("wal: segment {path} has format version {found}; this build reads version {supported} (upgrade Tidemark)")]
    UnsupportedVersion {
        /// The segment.
        path: PathBuf,
        /// Version found.
        found: u16,
        /// Version supported.
        supported: u16,
    },
    /// A reader met a damaged frame (the log was damaged after it was opened).
    #[error("wal: segment {path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A frame is larger than the format allows.
    #[error("wal: payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// Maximum.
        max: usize,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A torn or damaged tail cut off at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment cut.
    pub segment: PathBuf,
    /// Where the valid log ends in it.
    pub at: u64,
    /// Bytes dropped from that segment.
    pub bytes_dropped: u64,
    /// Why the frame at `at` is not valid.
    pub reason: String,
    /// Later segments removed whole, with their sizes.
    pub removed_segments: Vec<(PathBuf, u64)>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments_scanned: usize,
    /// Valid frames scanned.
    pub frames: u64,
    /// The newest seal scanned: its epoch and payload.
    pub last_seal: Option<(u64, Vec<u8>)>,
    /// The newest epoch of any frame scanned.
    pub last_epoch: Option<u64>,
    /// The damaged tail cut off, if any.
    pub truncation: Option<Truncation>,
    /// The end of the valid log.
    pub end: WalPosition,
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    first_epoch: u64,
    path: PathBuf,
}

/// The write-ahead log: see the module documentation.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<Segment>,
    /// Open handle of the last segment and its durable-or-written length.
    file: Option<File>,
    file_len: u64,
    /// Frames appended but not yet written (the group-commit batch).
    pending: Vec<u8>,
    unsynced: bool,
    last_sync: Instant,
    /// Offset in the current segment up to which kernel writeback has been started.
    writeback_from: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(hex) = name.strip_suffix(".wal") {
            if let Ok(id) = u64::from_str_radix(hex, 16) {
                out.push((id, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Appended bytes after which kernel writeback of the current segment is started.
const WRITEBACK_CHUNK: u64 = 4 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` back to disk, without waiting
/// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability still comes from fsync; this
/// only moves the work earlier. Errors are ignored for the same reason.
fn start_writeback(f: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is open for the lifetime of `f`; the call reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

/// The segment files in `dir` as `(id, path, size in bytes)`, oldest first, without opening
/// or repairing anything: for tools that inspect a log another process may be writing.
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>, WalError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    list_segments(dir)?
        .into_iter()
        .map(|(id, path)| {
            let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
            Ok((id, path, size))
        })
        .collect()
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Where a scan of one segment stopped.
enum ScanEnd {
    /// Clean end of the segment at this length.
    Clean(u64),
    /// Damage at this offset.
    Damaged(u64, String),
}

/// Opens a segment and reads its header: `Ok((file, Err(reason)))` when the header is torn or
/// damaged; a newer format version is an error (such a segment is never touched).
fn open_segment(path: &Path) -> Result<(File, Result<SegmentHeader, String>), WalError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    let got = read_full(&mut file, &mut head).map_err(io_err("read", path))?;
    let header = match SegmentHeader::decode(&head[..got]) {
        Ok(h) => Ok(h),
        Err(HeaderError::Version(found)) => {
            return Err(WalError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: format::VERSION,
            })
        }
        Err(HeaderError::Short) => Err("segment header is torn".to_string()),
        Err(HeaderError::Corrupt(why)) => Err(why.to_string()),
    };
    Ok((file, header))
}

/// Reads frames of one segment from `offset`, calling `f` for each valid frame.
fn scan_segment(
    path: &Path,
    offset: u64,
    mut f: impl FnMut(u64, Frame),
) -> Result<(Option<SegmentHeader>, ScanEnd), WalError> {
    let (mut file, header) = open_segment(path)?;
    let header = match header {
        Ok(h) => h,
        Err(why) => return Ok((None, ScanEnd::Damaged(0, why))),
    };
    let mut pos = offset.max(SEGMENT_HEADER_LEN as u64);
    file.seek(SeekFrom::Start(pos))
        .map_err(io_err("seek", path))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    loop {
        match read_frame(&mut reader).map_err(io_err("read", path))? {
            ReadFrame::Eof => return Ok((Some(header), ScanEnd::Clean(pos))),
            ReadFrame::Bad(why) => return Ok((Some(header), ScanEnd::Damaged(pos, why.into()))),
            ReadFrame::Frame(frame) => {
                let len = frame_len(frame.payload.len()) as u64;
                f(pos, frame);
                pos += len;
            }
        }
    }
}

enum ReadFrame {
    Eof,
    Bad(&'static str),
    Frame(Frame),
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_frame(r: &mut impl Read) -> std::io::Result<ReadFrame> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    let got = read_full(r, &mut head)?;
    if got == 0 {
        return Ok(ReadFrame::Eof);
    }
    if got < FRAME_HEADER_LEN {
        return Ok(ReadFrame::Bad("frame header is torn"));
    }
    let h = match decode_frame_header(&head) {
        Ok(h) => h,
        Err(FrameError::Corrupt(why)) => return Ok(ReadFrame::Bad(why)),
        Err(FrameError::Short) => return Ok(ReadFrame::Bad("frame header is torn")),
    };
    let mut payload = vec![0u8; h.len];
    if read_full(r, &mut payload)? < h.len {
        return Ok(ReadFrame::Bad("frame payload is torn"));
    }
    if !frame_crc_ok(&head, h.crc, &payload) {
        return Ok(ReadFrame::Bad("frame checksum mismatch"));
    }
    Ok(ReadFrame::Frame(Frame {
        kind: h.kind,
        epoch: h.epoch,
        payload,
    }))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, scanning from `from` (the last checkpointed
    /// position; `None` scans everything) and cutting off a torn or damaged tail.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        from: Option<WalPosition>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let listed = list_segments(dir)?;
        let from = from.unwrap_or_default();
        let mut report = RecoveryReport::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut damage: Option<(usize, u64, String)> = None;
        for (i, (id, path)) in listed.iter().enumerate() {
            if *id < from.segment {
                // Before the checkpointed position: trusted, not rescanned. Read its header only.
                match open_segment(path)?.1 {
                    Ok(h) => segments.push(Segment {
                        id: *id,
                        first_epoch: h.first_epoch,
                        path: path.clone(),
                    }),
                    Err(why) => {
                        damage = Some((i, 0, why));
                        break;
                    }
                }
                continue;
            }
            let offset = if *id == from.segment { from.offset } else { 0 };
            report.segments_scanned += 1;
            let (header, end) = scan_segment(path, offset, |_pos, frame| {
                report.frames += 1;
                report.last_epoch = Some(frame.epoch);
                if frame.kind == FrameKind::Seal {
                    report.last_seal = Some((frame.epoch, frame.payload));
                }
            })?;
            if let Some(h) = header {
                if h.segment_id != *id {
                    damage = Some((
                        i,
                        0,
                        format!("header names segment {} but file is {}", h.segment_id, id),
                    ));
                    break;
                }
                segments.push(Segment {
                    id: *id,
                    first_epoch: h.first_epoch,
                    path: path.clone(),
                });
            }
            match end {
                ScanEnd::Clean(len) => {
                    report.end = WalPosition {
                        segment: *id,
                        offset: len,
                    }
                }
                ScanEnd::Damaged(at, why) => {
                    damage = Some((i, at, why));
                    break;
                }
            }
        }
        if let Some((i, at, reason)) = damage {
            let (_, path) = &listed[i];
            let len = fs::metadata(path).map_err(io_err("stat", path))?.len();
            let mut removed = Vec::new();
            for (_, later) in &listed[i + 1..] {
                let size = fs::metadata(later).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(later).map_err(io_err("remove damaged segment", later))?;
                removed.push((later.clone(), size));
            }
            if at == 0 {
                fs::remove_file(path).map_err(io_err("remove damaged segment", path))?;
                segments.retain(|s| &s.path != path);
            } else {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open", path))?;
                f.set_len(at).map_err(io_err("truncate", path))?;
                f.sync_all().map_err(io_err("fsync", path))?;
                report.end = WalPosition {
                    segment: listed[i].0,
                    offset: at,
                };
            }
            sync_dir(dir)?;
            if at == 0 {
                report.end = segments
                    .last()
                    .map(|s| WalPosition {
                        segment: s.id,
                        offset: fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0),
                    })
                    .unwrap_or_default();
            }
            warn!(
                segment = %path.display(),
                at,
                bytes_dropped = len - at,
                later_segments_removed = removed.len(),
                reason = %reason,
                "wal: damaged tail cut off"
            );
            report.truncation = Some(Truncation {
                segment: path.clone(),
                at,
                bytes_dropped: len - at,
                reason,
                removed_segments: removed,
            });
        }
        let (file, file_len) = match segments.last() {
            Some(s) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io_err("open", &s.path))?;
                let len = f.metadata().map_err(io_err("stat", &s.path))?.len();
                (Some(f), len)
            }
            None => (None, 0),
        };
        info!(dir = %dir.display(), segments = segments.len(), frames_scanned = report.frames, end = ?report.end, "wal opened");
        Ok((
            Self {
                dir: dir.to_path_buf(),
                options,
                segments,
                file,
                file_len,
                pending: Vec::new(),
                unsynced: false,
                last_sync: Instant::now(),
                writeback_from: 0,
            },
            report,
        ))
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
        encode_frame(kind, epoch, payload, &mut self.pending);
        Ok(at)
    }

    /// Writes the pending batch with one write call and fsyncs it as the policy says.
    pub fn commit(&mut self) -> Result<WalPosition, WalError> {
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
        self.write_pending()?;
        if self.unsynced {
            if let (Some(f), Some(s)) = (&self.file, self.segments.last()) {
                f.sync_data().map_err(io_err("fsync", &s.path))?;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (Some(f), Some(s)) = (self.file.as_mut(), self.segments.last()) else {
            return Ok(());
        };
        f.write_all(&self.pending)
            .map_err(io_err("append", &s.path))?;
        self.file_len += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        // Start the kernel writing what is there now (without waiting), so the fsync at the
        // seal finds little left to do: measured in `tidemark bench`, the seal's fsync of a
        // whole 1 s epoch (~40 MB) was the main cost of the WAL.
        if self.file_len - self.writeback_from >= WRITEBACK_CHUNK {
            start_writeback(f, self.writeback_from, self.file_len - self.writeback_from);
            self.writeback_from = self.file_len;
        }
        Ok(())
    }

    /// Starts a new segment whose first frames belong to `first_epoch`, so the next frame
    /// lands at a position after every earlier one: recovery calls it when the valid log ended
    /// before the checkpointed position (its tail was lost), to re-anchor the checkpoint there.
    pub fn start_new_segment(&mut self, first_epoch: u64) -> Result<WalPosition, WalError> {
        self.roll(first_epoch)?;
        Ok(self.end())
    }

    /// Closes the current segment (written and fsynced) and starts a new one.
    fn roll(&mut self, first_epoch: u64) -> Result<(), WalError> {
        self.sync()?;
        let id = self.segments.last().map(|s| s.id + 1).unwrap_or(0);
        let path = segment_path(&self.dir, id);
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        f.write_all(
            &SegmentHeader {
                segment_id: id,
                first_epoch,
            }
            .encode(),
        )
        .map_err(io_err("write segment header", &path))?;
        f.sync_all().map_err(io_err("fsync", &path))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            id,
            first_epoch,
            path,
        });
        self.file = Some(f);
        self.file_len = SEGMENT_HEADER_LEN as u64;
        self.writeback_from = 0;
        Ok(())
    }

    /// Drops the whole log: starts a new (empty) segment for `first_epoch`, then deletes every
    /// earlier one. For a restart that does not resume from the log (the checkpoint store was
    /// lost, or the pipeline rewinds): segment ids keep growing, so no old position can point
    /// into the new log. Returns the segments and bytes deleted.
    pub fn reset(&mut self, first_epoch: u64) -> Result<(usize, u64), WalError> {
        self.roll(first_epoch)?;
        let old: Vec<Segment> = self.segments.drain(..self.segments.len() - 1).collect();
        let mut bytes = 0;
        for s in &old {
            bytes += fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&s.path).map_err(io_err("remove segment", &s.path))?;
        }
        sync_dir(&self.dir)?;
        Ok((old.len(), bytes))
    }

    /// Deletes segments whose frames all belong to epochs before `epoch`; returns how many.
    /// The newest segment is always kept.
    pub fn truncate_before(&mut self, epoch: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_epoch < epoch {
            if removed > 0 {
                crate::fault::hit(crate::fault::CrashPoint::DuringTruncation);
            }
            let s = self.segments.remove(0);
            fs::remove_file(&s.path).map_err(io_err("remove segment", &s.path))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Segments on disk: `(id, first epoch, size in bytes)`.
    pub fn segments(&self) -> Vec<(u64, u64, u64)> {
        self.segments
            .iter()
            .map(|s| {
                (
                    s.id,
                    s.first_epoch,
                    fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect()
    }

    /// A reader of the written frames from `from` (pending frames are not visible).
    pub fn reader(&self, from: WalPosition) -> WalReader {
        WalReader::new(&self.dir, from)
    }
}

/// Streams frames from a position across segments, one frame in memory at a time.
#[derive(Debug)]
pub struct WalReader {
    segments: Vec<(u64, PathBuf)>,
    from: WalPosition,
    index: usize,
    current: Option<(BufReader<File>, u64)>,
    failed: bool,
    error: Option<WalError>,
}

impl WalReader {
    /// A reader of the log in `dir` from `from`.
    pub fn new(dir: &Path, from: WalPosition) -> Self {
        let (segments, error) = match list_segments(dir) {
            Ok(s) => (
                s.into_iter()
                    .filter(|(id, _)| *id >= from.segment)
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        Self {
            segments,
            from,
            index: 0,
            current: None,
            failed: false,
            error,
        }
    }

    fn open_next(&mut self) -> Result<bool, WalError> {
        let Some((id, path)) = self.segments.get(self.index).cloned() else {
            return Ok(false);
        };
        self.index += 1;
        let (mut f, header) = open_segment(&path)?;
        if let Err(reason) = header {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason,
            });
        }
        let start = if id == self.from.segment {
            self.from.offset.max(SEGMENT_HEADER_LEN as u64)
        } else {
            SEGMENT_HEADER_LEN as u64
        };
        f.seek(SeekFrom::Start(start))
            .map_err(io_err("seek", &path))?;
        self.current = Some((BufReader::with_capacity(1 << 16, f), start));
        Ok(true)
    }
}

impl Iterator for WalReader {
    type Item = Result<(WalPosition, Frame), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        if self.failed {
            return None;
        }
        loop {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let index = self.index;
            let (reader, pos) = self.current.as_mut()?;
            let (id, path) = &self.segments[index - 1];
            match read_frame(reader) {
                Err(e) => {
                    self.failed = true;
                    return Some(Err(WalError::Io {
                        op: "read",
                        path: path.clone(),
                        source: e,
                    }));
                }
                Ok(ReadFrame::Eof) => self.current = None,
                Ok(ReadFrame::Bad(why)) => {
                    self.failed = true;
                    return Some(Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: *pos,
                        reason: why.into(),
                    }));
                }
                Ok(ReadFrame::Frame(frame)) => {
                    let at = WalPosition {
                        segment: *id,
                        offset: *pos,
                    };
                    *pos += frame_len(frame.payload.len()) as u64;
                    return Some(Ok((at, frame)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
