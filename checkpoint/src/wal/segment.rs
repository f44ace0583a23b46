//! Segment files through the file-system seam: naming, listing, reading headers and frames.
//! No repair and no writing here: [`super::recovery`] decides, the writer in [`super`] writes.

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tidemark_fs::{FileSystem, ReadableFile};

use super::error::{io_err, WalError};
use super::format::{
    self, decode_frame, decode_frame_header, frame_crc_ok, Frame, FrameBinding, FrameError,
    FrameRef, HeaderError, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// The file name of segment `id`: `<id:016x>.wal`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_name(id))
}

/// See [`segment_path`].
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:016x}.wal")
}

/// The segment id in a file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The file name of a spare that was segment `id`: `<id:016x>.spare` (see [`super::format`]).
pub(crate) fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.spare"))
}

/// The spares directly in `dir` as `(id they last were, path)`, oldest first.
pub(crate) fn list_spares(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, WalError> {
    list_by_name(fs, dir, |name| {
        let hex = name.strip_suffix(".spare")?;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
    })
}

/// The segments directly in `dir` as `(id, path)`, oldest first. Subdirectories (such as
/// moved-aside `damaged-*` ones) and temporary files are not segments.
pub(crate) fn list_segments(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, WalError> {
    list_by_name(fs, dir, parse_segment_name)
}

/// The entries directly in `dir` whose file name `id_of` reads an id from, as `(id, path)`,
/// by id.
fn list_by_name(
    fs: &dyn FileSystem,
    dir: &Path,
    id_of: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for path in fs.read_dir(dir).map_err(io_err("list", dir))? {
        let id = path.file_name().and_then(|n| n.to_str()).and_then(&id_of);
        if let Some(id) = id {
            out.push((id, path));
        }
    }
    out.sort();
    Ok(out)
}

/// A segment open for reading, positioned after its header, and the header (or why it is
/// torn or damaged).
pub(crate) type OpenSegment = (Box<dyn ReadableFile>, Result<SegmentHeader, String>);

/// Opens a segment and reads its header: `Ok((file, Err(reason)))` when the header is torn or
/// damaged; a newer format version is an error (such a segment is never touched).
pub(crate) fn open_segment(fs: &dyn FileSystem, path: &Path) -> Result<OpenSegment, WalError> {
    let mut file = fs.open_read(path).map_err(io_err("open", path))?;
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

/// Where a scan of one segment stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Clean end of the segment at this length.
    Clean(u64),
    /// Damage at this offset (0: the header), and why.
    Damaged(u64, String),
}

/// Bytes a scan reads at a time (more when one frame is larger).
const SCAN_CHUNK: usize = 1 << 20;

/// Reads frames of one segment from `offset`, calling `f` with each valid frame's offset.
/// Returns the header (`None` if it is damaged or `header_ok` refuses it, with why) and where
/// the valid frames end. No frame reaches `f` before the header is known good: a segment
/// whose header is refused is damaged from offset 0, so none of its frames is in the log.
/// Reads in chunks of [`SCAN_CHUNK`] and hands each frame over borrowed from the chunk (no
/// copy or allocation per frame); a frame is damaged exactly when [`read_frame`] says so.
pub(crate) fn scan_segment(
    fs: &dyn FileSystem,
    path: &Path,
    offset: u64,
    header_ok: impl FnOnce(&SegmentHeader) -> Result<(), String>,
    mut f: impl FnMut(u64, FrameRef<'_>),
) -> Result<(Option<SegmentHeader>, ScanEnd), WalError> {
    let (mut file, header) = open_segment(fs, path)?;
    let header = match header.and_then(|h| header_ok(&h).map(|()| h)) {
        Ok(h) => h,
        Err(why) => return Ok((None, ScanEnd::Damaged(0, why))),
    };
    let binding = header.binding();
    let mut pos = offset.max(SEGMENT_HEADER_LEN as u64);
    file.seek(SeekFrom::Start(pos))
        .map_err(io_err("seek", path))?;
    let mut buf: Vec<u8> = Vec::new();
    // `buf[at..]` is what is read and not yet scanned; `eof` once the file has no more.
    let mut at = 0usize;
    let mut eof = false;
    let damaged = |pos: u64, why: &str| Ok((Some(header), ScanEnd::Damaged(pos, why.into())));
    loop {
        let have = buf.len() - at;
        if have < FRAME_HEADER_LEN && !eof {
            eof = refill(&mut file, &mut buf, &mut at, FRAME_HEADER_LEN)
                .map_err(io_err("read", path))?;
            continue;
        }
        if have == 0 {
            return Ok((Some(header), ScanEnd::Clean(pos)));
        }
        let Some(head) = buf[at..].first_chunk::<FRAME_HEADER_LEN>().copied() else {
            return damaged(pos, "frame header is torn");
        };
        let h = match decode_frame_header(&head) {
            Ok(h) => h,
            Err(FrameError::Corrupt(why)) => return damaged(pos, why),
            Err(FrameError::Short) => return damaged(pos, "frame header is torn"),
        };
        let len = FRAME_HEADER_LEN + h.len;
        if have < len && !eof {
            eof = refill(&mut file, &mut buf, &mut at, len).map_err(io_err("read", path))?;
            continue;
        }
        let Some(payload) = buf.get(at + FRAME_HEADER_LEN..at + len) else {
            return damaged(pos, "frame payload is torn");
        };
        if !frame_crc_ok(binding, &head, h.crc, payload) {
            return damaged(pos, "frame checksum mismatch");
        }
        f(
            pos,
            FrameRef {
                kind: h.kind,
                epoch: h.epoch,
                payload,
            },
        );
        at += len;
        pos += len as u64;
    }
}

/// Moves the unscanned bytes `buf[at..]` to the front and reads until at least `need` bytes
/// are there (or the file ends; then returns true).
///
/// Reads into the buffer's spare capacity (`read_to_end`), so what a chunk does not fill is never
/// written: a `resize` to the chunk first zero-filled 1 MB for every segment, however small
/// (byte by byte in debug builds, where a test opening a WAL of many small segments 25 times went
/// from 9 s to over 100 s).
fn refill(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    at: &mut usize,
    need: usize,
) -> std::io::Result<bool> {
    buf.drain(..*at);
    *at = 0;
    let have = buf.len();
    let want = need.max(SCAN_CHUNK);
    buf.reserve(want - have);
    let got = r.by_ref().take((want - have) as u64).read_to_end(buf)?;
    Ok(have + got < want)
}

/// Every frame whose header and CRC check out in `bytes` (of a segment bound by `binding`)
/// from `from` on, found by trying each byte offset after a bad one (a resynchronising scan),
/// as `(offset, frame)`. Used to tell damage before the end from a torn tail, and to say what
/// a moved-aside part held. A reused file's older frames are not the segment's: never found.
pub(crate) fn salvage_frames(
    binding: FrameBinding,
    bytes: &[u8],
    from: usize,
) -> Vec<(usize, Frame)> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos + FRAME_HEADER_LEN <= bytes.len() {
        match decode_frame(binding, &bytes[pos..]) {
            Ok((frame, len)) => {
                out.push((pos, frame));
                pos += len;
            }
            Err(_) => pos += 1,
        }
    }
    out
}

/// The result of reading one frame.
pub(crate) enum ReadFrame {
    /// Clean end of the file.
    Eof,
    /// A frame that is torn or damaged.
    Bad(&'static str),
    /// A valid frame.
    Frame(Frame),
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Reads the next frame of a segment bound by `binding`.
pub(crate) fn read_frame(binding: FrameBinding, r: &mut impl Read) -> std::io::Result<ReadFrame> {
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
    if !frame_crc_ok(binding, &head, h.crc, &payload) {
        return Ok(ReadFrame::Bad("frame checksum mismatch"));
    }
    Ok(ReadFrame::Frame(Frame {
        kind: h.kind,
        epoch: h.epoch,
        payload,
    }))
}

/// Reads a whole file through the seam.
pub(crate) fn read_file(fs: &dyn FileSystem, path: &Path) -> Result<Vec<u8>, WalError> {
    let mut f = fs.open_read(path).map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io_err("read", path))?;
    Ok(bytes)
}
