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
    parse_id(name.strip_suffix(".wal")?)
}

/// Sixteen lower-case hex digits, as the writer names files (`{:016x}`); nothing else (no
/// sign, no upper case), so no two names stand for one id.
fn parse_id(hex: &str) -> Option<u64> {
    let digits = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    digits.then(|| u64::from_str_radix(hex, 16).ok())?
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
    list_by_name(fs, dir, |name| parse_id(name.strip_suffix(".spare")?))
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
    // The file's pages before this offset were handed back (see `drop_behind`).
    let mut dropped_to = 0u64;
    let damaged = |pos: u64, why: &str| Ok((Some(header), ScanEnd::Damaged(pos, why.into())));
    loop {
        let have = buf.len() - at;
        if have < FRAME_HEADER_LEN && !eof {
            drop_behind(file.as_ref(), &mut dropped_to, pos);
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
            drop_behind(file.as_ref(), &mut dropped_to, pos);
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

/// Hands back the pages of the part of a segment scanned since the last call (`..pos`): a
/// scan reads each byte once, and the next chunks are then read into the pages just freed
/// instead of new ones (see [`tidemark_fs::ReadableFile::drop_cached`]). The page holding
/// `pos` stays (the kernel drops whole pages only): the log may append there next.
fn drop_behind(file: &dyn ReadableFile, dropped_to: &mut u64, pos: u64) {
    file.drop_cached(*dropped_to, pos.saturating_sub(*dropped_to));
    *dropped_to = (*dropped_to).max(pos);
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

/// What a seal frame's header holds at its offset 8: the kind byte, then three zero
/// reserved bytes.
const SEAL_MARKER: [u8; 4] = [format::FrameKind::Seal as u8, 0, 0, 0];
// `seal_follows` skips zeros unread: no marker may begin with a zero byte.
const _: () = assert!(
    SEAL_MARKER[0] != 0,
    "a seal marker must not begin with a zero byte"
);
/// Where [`SEAL_MARKER`] sits in a frame.
const SEAL_MARKER_AT: usize = 8;

/// The epochs a seal after a segment's damage may have and still be of the segment's own
/// life. Invariant kept by the writer: epochs never go down in the log, and the frames of
/// epoch `E` come after `SEAL(E - 1)` (pipelining reads `E` while `E - 1` commits, after its
/// seal). So from the epoch `last_before` of the last valid frame before the damage, a seal
/// of epoch `E` has the seals of `last_before + 1 ..= E - 1` before it; allowing for
/// `SEAL(last_before)` and the damaged frame itself, at least `E - last_before - 2` whole
/// seals lie between the damage and it, each at least a frame header long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealEpochs {
    /// Unknown (the segment's header is not its own): every epoch.
    Any,
    /// From the segment header's first epoch, and, when the epoch of the last valid frame
    /// before the damage is known, no further past it than the bytes since the damage can
    /// hold seals.
    Within {
        first: u64,
        last_before: Option<u64>,
    },
}

impl SealEpochs {
    /// Whether a frame of epoch `epoch` starting `since` bytes after the damage can be one of
    /// the segment's own.
    fn allows(self, epoch: u64, since: u64) -> bool {
        match self {
            SealEpochs::Any => true,
            SealEpochs::Within { first, last_before } => {
                let reach = last_before.map_or(u64::MAX, |last| {
                    last.saturating_add(2)
                        .saturating_add(since / FRAME_HEADER_LEN as u64)
                });
                epoch >= first && epoch <= reach
            }
        }
    }
}

/// True when a seal frame whose header and CRC check out under one of `bindings`, of an epoch
/// `epochs` allows, starts at or after `from` in `file` (`len` bytes long).
///
/// The epochs are checked from the candidate's header, before its payload is read: a reused
/// file's older frames were candidates by the hundred (an older frame of epoch 2 has
/// `02 00 00 00` in its epoch field, which reads as a seal marker, its CRC before it as a
/// length, 1 in 64 below the maximum payload, and the next 8 bytes as a huge epoch), each read
/// and checksummed up to the file's end: 1.0 s of a restart's WAL open, 5.4 GB checksummed
/// for 39 MB of older bytes.
///
/// Candidates are found by [`SEAL_MARKER`] with a vectorised substring search over chunks of
/// [`SCAN_CHUNK`] read into one buffer, and only those are decoded (one longer than what is in
/// memory is read whole from the file). Why not [`salvage_frames`] over the whole rest: after
/// a crash on a reused segment file the bytes past the damage are tens of MB of an older
/// segment's frames, which its byte-by-byte scan took ~220 ms to cross, and reading them all
/// into memory ~50 ms (`cargo bench -p tidemark-benches --bench wal -- wal_open_after_crash`).
/// Every seal that scan finds is found here too (a superset: a seal inside another valid
/// frame's payload counts as well, which only errs towards calling damage mid-log).
pub(crate) fn seal_follows(
    file: &mut dyn ReadableFile,
    from: u64,
    len: u64,
    bindings: &[FrameBinding],
    epochs: SealEpochs,
) -> std::io::Result<bool> {
    let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK);
    // Only where the file may hold data: a marker begins with its frame kind, never zero, so
    // none begins in what the file system knows to be zeros (a reused file's zeroed rest),
    // which is skipped unread. A marker begun in the data may end in the zeros after it: each
    // part is searched to a marker's length past its end. (A candidate's header before its
    // marker may lie in zeros: it is read from the file.) The parts are asked for before
    // anything is read: reading zeroed ranges caches them, and cached they count as data.
    for part in file.data_ranges(from, len)? {
        let end = (part.end + SEAL_MARKER.len() as u64 - 1).min(len);
        if seal_in_part(file, &mut buf, from, part.start, end, len, bindings, epochs)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`seal_follows`] over the bytes `start..end` of `file` (`len` bytes long), for a search
/// begun at `from` (`start >= from`: the parts `data_ranges` gives from there).
#[allow(clippy::too_many_arguments)]
fn seal_in_part(
    file: &mut dyn ReadableFile,
    buf: &mut Vec<u8>,
    from: u64,
    start: u64,
    end: u64,
    len: u64,
    bindings: &[FrameBinding],
    epochs: SealEpochs,
) -> std::io::Result<bool> {
    let mut chunk = start;
    while chunk < end {
        let want = (SCAN_CHUNK as u64).min(end - chunk);
        file.seek(SeekFrom::Start(chunk))?;
        buf.clear();
        Read::take(&mut *file, want).read_to_end(buf)?;
        for m in memchr::memmem::find_iter(&buf[..], &SEAL_MARKER) {
            let Some(start) = (chunk + m as u64).checked_sub(SEAL_MARKER_AT as u64) else {
                continue;
            };
            if start < from {
                continue;
            }
            let in_memory = start
                .checked_sub(chunk)
                .and_then(|at| buf.get(at as usize..));
            let own_epoch = |epoch: u64| epochs.allows(epoch, start - from);
            let Some(frame) = candidate_frame(file, in_memory, start, len, own_epoch)? else {
                continue;
            };
            // The marker makes it a seal; its CRC under one of the bindings makes it valid.
            if bindings.iter().any(|&b| decode_frame(b, &frame).is_ok()) {
                return Ok(true);
            }
        }
        if buf.len() < SEAL_MARKER.len() || want < SCAN_CHUNK as u64 {
            break;
        }
        // The next chunk starts where a marker not wholly in this one may begin.
        chunk += (buf.len() - (SEAL_MARKER.len() - 1)) as u64;
    }
    Ok(false)
}

/// The whole frame (header and payload) whose header starts at `start` of `file` (`len`
/// bytes long), if its header is a frame's of an epoch `own_epoch` accepts and the frame fits
/// in the file: from `in_memory` (the bytes from `start` on that a chunk holds) when it
/// holds it whole, else read from the file (a length field of older bytes must not make it
/// read past the file's end).
fn candidate_frame<'b>(
    file: &mut dyn ReadableFile,
    in_memory: Option<&'b [u8]>,
    start: u64,
    len: u64,
    own_epoch: impl Fn(u64) -> bool,
) -> std::io::Result<Option<std::borrow::Cow<'b, [u8]>>> {
    let whole = |bytes: &[u8]| -> Option<usize> {
        let head = bytes.first_chunk::<FRAME_HEADER_LEN>()?;
        let h = decode_frame_header(head).ok()?;
        own_epoch(h.epoch).then_some(FRAME_HEADER_LEN + h.len)
    };
    if let Some(bytes) = in_memory {
        if let Some(n) = whole(bytes) {
            if let Some(frame) = bytes.get(..n) {
                return Ok(Some(std::borrow::Cow::Borrowed(frame)));
            }
        } else if bytes.len() >= FRAME_HEADER_LEN {
            return Ok(None); // not a frame's header
        }
    }
    let mut head = [0u8; FRAME_HEADER_LEN];
    file.seek(SeekFrom::Start(start))?;
    if read_full(&mut &mut *file, &mut head)? < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let Some(n) = whole(&head).filter(|&n| start + n as u64 <= len) else {
        return Ok(None);
    };
    let mut frame = vec![0u8; n];
    frame[..FRAME_HEADER_LEN].copy_from_slice(&head);
    if read_full(&mut &mut *file, &mut frame[FRAME_HEADER_LEN..])? < n - FRAME_HEADER_LEN {
        return Ok(None);
    }
    Ok(Some(std::borrow::Cow::Owned(frame)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{encode_frame, FrameKind};
    use proptest::prelude::*;

    /// [`seal_follows`] over `bytes` from `from`, in memory.
    fn seal_in(binding: FrameBinding, bytes: &[u8], from: u64) -> bool {
        let mut file = std::io::Cursor::new(bytes.to_vec());
        seal_follows(
            &mut file,
            from,
            bytes.len() as u64,
            &[binding],
            SealEpochs::Any,
        )
        .unwrap()
    }

    /// Seals found the slow way: a resynchronising scan from every offset.
    fn seal_by_salvage(binding: FrameBinding, bytes: &[u8]) -> bool {
        salvage_frames(binding, bytes, 0)
            .iter()
            .any(|(_, f)| f.kind == FrameKind::Seal)
    }

    proptest! {
        /// Damaged bytes, then frames of this segment and of another one (a reused file's
        /// older frames), some cut short: the fast search answers as the scan does.
        #[test]
        fn the_seal_search_agrees_with_the_resynchronising_scan(
            junk in proptest::collection::vec(any::<u8>(), 0..40),
            frames in proptest::collection::vec((0u8..3, any::<bool>(), 0u64..4, proptest::collection::vec(any::<u8>(), 0..30)), 0..12),
            cut in any::<proptest::sample::Index>(),
        ) {
            let ours = FrameBinding::Segment(7);
            let mut bytes = junk;
            for (kind, own, epoch, payload) in frames {
                let kind = [FrameKind::Record, FrameKind::Seal, FrameKind::Marker][kind as usize];
                let binding = if own { ours } else { FrameBinding::Segment(3) };
                encode_frame(binding, kind, epoch, &payload, &mut bytes);
            }
            let end = if bytes.is_empty() { 0 } else { cut.index(bytes.len() + 1) };
            let bytes = &bytes[..end];
            prop_assert_eq!(seal_in(ours, bytes, 0), seal_by_salvage(ours, bytes));
            let from = (end / 3) as u64;
            prop_assert_eq!(seal_in(ours, bytes, from), seal_by_salvage(ours, &bytes[from as usize..]));
        }
    }

    #[test]
    fn a_seal_of_another_segment_or_cut_short_does_not_count() {
        let mut other = Vec::new();
        encode_frame(
            FrameBinding::Segment(3),
            FrameKind::Seal,
            2,
            b"p",
            &mut other,
        );
        assert!(!seal_in(FrameBinding::Segment(7), &other, 0));
        let mut ours = Vec::new();
        encode_frame(
            FrameBinding::Segment(7),
            FrameKind::Seal,
            2,
            b"positions",
            &mut ours,
        );
        assert!(seal_in(FrameBinding::Segment(7), &ours, 0));
        assert!(!seal_in(
            FrameBinding::Segment(7),
            &ours[..ours.len() - 1],
            0
        ));
    }

    /// A seal whose marker or body crosses from one chunk into the next is found, at every
    /// offset around the chunk boundary; so is one longer than a chunk.
    #[test]
    fn a_seal_across_chunks_is_found() {
        let ours = FrameBinding::Segment(7);
        for shift in 0..40usize {
            let mut bytes = vec![0xEEu8; SCAN_CHUNK - 20 + shift];
            encode_frame(ours, FrameKind::Seal, 2, b"positions", &mut bytes);
            bytes.extend_from_slice(&[0xEE; 7]);
            assert!(seal_in(ours, &bytes, 0), "shift {shift}");
            assert!(
                !seal_in(ours, &bytes, (SCAN_CHUNK + shift) as u64),
                "from past it"
            );
        }
        let mut big = vec![0xEEu8; 100];
        encode_frame(
            ours,
            FrameKind::Seal,
            2,
            &vec![1u8; SCAN_CHUNK * 2],
            &mut big,
        );
        assert!(seal_in(ours, &big, 0));
    }

    /// Counts the bytes read through it.
    struct Counted<F = std::io::Cursor<Vec<u8>>> {
        inner: F,
        read: u64,
    }

    impl<F: Read> Read for Counted<F> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<F: Seek> Seek for Counted<F> {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(to)
        }
    }

    impl tidemark_fs::ReadableFile for Counted {}

    impl tidemark_fs::ReadableFile for Counted<std::fs::File> {
        fn data_ranges(
            &mut self,
            from: u64,
            len: u64,
        ) -> std::io::Result<Vec<std::ops::Range<u64>>> {
            self.inner.data_ranges(from, len)
        }
    }

    /// [`seal_follows`] for any seal from `from` in `inner`: whether one follows, and the bytes
    /// read to say so.
    fn search_counted<F>(inner: F, from: u64, len: u64, binding: FrameBinding) -> (bool, u64)
    where
        Counted<F>: tidemark_fs::ReadableFile,
    {
        let mut counted = Counted { inner, read: 0 };
        let found = seal_follows(&mut counted, from, len, &[binding], SealEpochs::Any).unwrap();
        (found, counted.read)
    }

    /// A reused file's zeroed rest (`zero_range`, as the WAL zeroes a reused segment) is
    /// skipped, not read, by the search for a seal after a torn tail: a seal after it is still
    /// found, and with none after it the search reads a fraction of the zeros. Where the file
    /// system cannot say where zeros are, every byte is read and the answers are the same.
    #[test]
    fn the_search_for_a_seal_skips_a_reused_files_zeroed_rest() {
        let ours = FrameBinding::Segment(9);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000009.wal");
        let fs = tidemark_fs::std_fs();
        // Frames, then 32 MB of an older life, zeroed as a reused file is; then, in one file,
        // a seal after the zeros.
        let mut frames = Vec::new();
        for i in 0..100u32 {
            encode_frame(ours, FrameKind::Record, 3, &i.to_le_bytes(), &mut frames);
        }
        let mut seal = Vec::new();
        encode_frame(ours, FrameKind::Seal, 3, b"seal", &mut seal);
        let zeroed: u64 = 32 << 20;
        let write = |tail: &[u8]| {
            let mut f = fs.create_new(&path).unwrap();
            f.write_all(&frames).unwrap();
            f.write_all(&vec![0xA5u8; zeroed as usize]).unwrap();
            f.write_all(tail).unwrap();
            f.sync_all().unwrap();
            if f.zero_range(frames.len() as u64, zeroed).is_err() {
                // No zeroing here: write zeros (the search then reads them).
                drop(f);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[frames.len()..frames.len() + zeroed as usize].fill(0);
                std::fs::write(&path, bytes).unwrap();
            }
        };
        // Through the file (its zeroed ranges skipped where known), or through its bytes in
        // memory (every byte read): whether a seal follows the frames, and the bytes read.
        let search = |skips: bool| {
            let len = std::fs::metadata(&path).unwrap().len();
            let from = frames.len() as u64;
            if skips {
                search_counted(std::fs::File::open(&path).unwrap(), from, len, ours)
            } else {
                let bytes = std::io::Cursor::new(std::fs::read(&path).unwrap());
                search_counted(bytes, from, len, ours)
            }
        };
        // Whether this file system tells zeroed ranges apart, asked before anything reads
        // them (read, they are cached and count as data).
        let holes = |path: &Path| {
            let len = std::fs::metadata(path).unwrap().len();
            let file = std::fs::File::open(path).unwrap();
            let trusted = tidemark_fs::reports_zeroed_ranges(&file);
            let parts = { file }.data_ranges(0, len).unwrap();
            let skips = parts != Vec::from_iter(std::iter::once(0..len));
            assert_eq!(
                skips, trusted,
                "a file system trusted to report zeroed ranges: {parts:?}"
            );
            skips
        };
        write(&seal);
        let skips = holes(&path);
        let (found, read) = search(true);
        assert!(found, "the seal after the zeros is found");
        assert_eq!(search(false).0, found);
        if skips {
            assert!(
                read < zeroed / 4,
                "read {read} bytes to cross {zeroed} zeroed bytes"
            );
        } else {
            eprintln!("this file system does not report zeroed ranges: every byte read ({read})");
        }
        std::fs::remove_file(&path).unwrap();
        write(&[]);
        let skips = holes(&path);
        let (found, read) = search(true);
        assert!(!found);
        assert_eq!(search(false).0, found);
        if skips {
            assert!(
                read < zeroed / 4,
                "read {read} bytes of zeros to find no seal"
            );
        }
    }

    /// A seal whose bytes after its kind are all zero (epoch 0, no payload), its kind the
    /// last byte before a zeroed range: the part searched before the zeros runs on past them
    /// for the rest of the marker, and the seal is found, as in the same bytes searched whole.
    #[test]
    fn a_seal_marker_running_into_a_zeroed_range_is_found() {
        let ours = FrameBinding::Segment(9);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000009.wal");
        // A record frame up to the seal's start, 8 bytes before block 1, so the seal's kind
        // byte is the block's last; then more records, zeroed.
        let mut bytes = Vec::new();
        let seal_at = 4096 - SEAL_MARKER_AT - 1;
        encode_frame(
            ours,
            FrameKind::Record,
            0,
            &vec![7u8; seal_at - FRAME_HEADER_LEN],
            &mut bytes,
        );
        assert_eq!(bytes.len(), seal_at);
        encode_frame(ours, FrameKind::Seal, 0, b"", &mut bytes);
        assert!(
            bytes[4096..].iter().all(|&b| b == 0),
            "the seal's tail is zeros"
        );
        for i in 0..4_000u32 {
            encode_frame(ours, FrameKind::Record, 0, &i.to_le_bytes(), &mut bytes);
        }
        let mut f = tidemark_fs::std_fs().create_new(&path).unwrap();
        f.write_all(&bytes).unwrap();
        f.sync_all().unwrap();
        let zeroed = bytes.len() as u64 - 4096;
        let zeroing = f.zero_range(4096, zeroed);
        drop(f);
        bytes[4096..].fill(0);
        let len = bytes.len() as u64;
        let parts = std::fs::File::open(&path)
            .unwrap()
            .data_ranges(0, len)
            .unwrap();
        let trusted = tidemark_fs::reports_zeroed_ranges(&std::fs::File::open(&path).unwrap());
        if zeroing.is_err() || !trusted {
            eprintln!("this file system does not report zeroed ranges ({zeroing:?}, {parts:?})");
        } else {
            // The last, partly filled block was zeroed by a write: data.
            assert_eq!(
                parts[0],
                0..4096,
                "the zeroed blocks are left out: {parts:?}"
            );
            assert!(
                parts[1..].iter().all(|p| p.end - p.start < 4096),
                "{parts:?}"
            );
        }
        let mut file = std::fs::File::open(&path).unwrap();
        assert!(seal_follows(&mut file, 0, len, &[ours], SealEpochs::Any).unwrap());
        assert!(seal_in(ours, &bytes, 0), "the same bytes searched whole");
    }

    /// A reused file's older life full of epoch-2 frames: each one's epoch field reads as a
    /// seal marker at its header's offset 12, and its CRC before it as a length (1 in 64 below
    /// the maximum payload). Candidates older than the segment's first epoch are dropped from
    /// their header: the search reads the file about once, a seal older than the segment's
    /// first epoch does not count even under the segment's binding, and a seal of the
    /// segment's own life after them is found.
    #[test]
    fn frames_older_than_the_segment_are_not_candidates() {
        let (old, ours) = (FrameBinding::Segment(1), FrameBinding::Segment(9));
        let mut bytes = Vec::new();
        for i in 0..20_000u32 {
            encode_frame(
                old,
                FrameKind::Record,
                2,
                &i.to_le_bytes().repeat(8),
                &mut bytes,
            );
        }
        let search = |bytes: &[u8], epochs: SealEpochs| {
            let len = bytes.len() as u64;
            let mut file = Counted {
                inner: std::io::Cursor::new(bytes.to_vec()),
                read: 0,
            };
            let found = seal_follows(&mut file, 0, len, &[ours], epochs).unwrap();
            (found, file.read)
        };
        let within = SealEpochs::Within {
            first: 10,
            last_before: Some(12),
        };
        assert!(!search(&bytes, within).0);
        // Older seals longer than the search's chunk: each candidate would be read again whole
        // from the file; dropped from its header, the file is read about once.
        let mut long_seals = Vec::new();
        for _ in 0..4 {
            encode_frame(
                old,
                FrameKind::Seal,
                2,
                &vec![7u8; 3 * SCAN_CHUNK / 2],
                &mut long_seals,
            );
        }
        let len = long_seals.len() as u64;
        let (found, read) = search(&long_seals, within);
        assert!(!found);
        assert!(read < len * 3 / 2, "read {read} bytes of a {len}-byte file");
        let mut older_seal = bytes.clone();
        encode_frame(ours, FrameKind::Seal, 2, b"{}", &mut older_seal);
        assert!(
            !search(&older_seal, within).0,
            "a seal older than the segment counted"
        );
        assert!(
            search(&older_seal, SealEpochs::Any).0,
            "without epochs every seal counts"
        );
        // Epoch 13 at the damage is the next one; 14 here is one the bytes since the damage
        // could not hold the seals of, unless as many frame headers as lie between.
        let mut own = Vec::new();
        encode_frame(ours, FrameKind::Seal, 14, b"{}", &mut own);
        assert!(
            search(&own, within).0,
            "the segment's own seal was not found"
        );
        let mut far = Vec::new();
        encode_frame(ours, FrameKind::Seal, 15, b"{}", &mut far);
        assert!(
            !search(&far, within).0,
            "a seal three epochs on with no seal between counted"
        );
        let mut padded = vec![0u8; FRAME_HEADER_LEN];
        encode_frame(ours, FrameKind::Seal, 15, b"{}", &mut padded);
        assert!(
            search(&padded, within).0,
            "room for one more seal was not allowed"
        );
        encode_frame(ours, FrameKind::Seal, 13, b"{}", &mut bytes);
        assert!(
            search(&bytes, within).0,
            "the segment's own seal after older bytes was not found"
        );
        // With no frame read before the damage, only the first epoch bounds it.
        let unknown = SealEpochs::Within {
            first: 10,
            last_before: None,
        };
        assert!(search(&far, unknown).0 && !search(&older_seal, unknown).0);
    }
}
