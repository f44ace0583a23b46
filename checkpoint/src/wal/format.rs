//! The WAL's on-disk byte format: segment headers and frames. Pure encode/decode, no I/O.
//!
//! # Segment file `<segment_id:016x>.wal`
//!
//! ```text
//! offset size field
//! 0      8    magic        b"TIDEWAL\0"
//! 8      2    version      u16 LE, 2 (1 is still read); a newer version is refused, never
//!                          guessed at
//! 10     2    flags        u16 LE: bit 0 `RECYCLED` (the file was an older segment's; its
//!                          bytes after the last frame written are that segment's), others 0
//! 12     8    segment_id   u64 LE, equals the number in the file name
//! 20     8    first_epoch  u64 LE, epoch of the first frame written to this segment
//! 28     4    header_crc   u32 LE, CRC32 of bytes 0..28
//! 32     ...  frames, back to back
//! ```
//!
//! # Frame
//!
//! ```text
//! offset size field
//! 0      4    len          u32 LE, payload length (at most MAX_PAYLOAD)
//! 4      4    crc          u32 LE, CRC32 over the segment id (u64 LE; version 2 only), then
//!                          bytes 0..4 (len) and 8..(20+len) (kind, epoch, payload)
//! 8      1    kind         1 = record, 2 = seal, 3 = marker; 0 and others are invalid
//! 9      3    reserved     zero
//! 12     8    epoch        u64 LE
//! 20     len  payload
//! ```
//!
//! The CRC covers the length, so a flipped length bit is caught like a flipped payload bit; a
//! zero-filled tail (kind 0) or a length past `MAX_PAYLOAD` ends the valid log as well.
//!
//! **Why version 2 binds each frame to its segment id.** The WAL reuses the files of segments
//! it no longer needs (`<id:016x>.spare`, see the directory layout): writing over a file
//! costs no block allocation, and the truncation that frees it no unlink (measured: with no
//! spares kept, each 200 ms epoch's checkpoint took ~10 ms instead of 1-2 ms, one 64 MB
//! segment deleted per epoch). Its pages are no longer cached by
//! then (the log drops them as it goes, see `mod.rs`), so a reused file is zeroed first with
//! its blocks kept (`WritableFile::zero_range`), and nothing is read before it is written
//! over. Where the file system cannot zero, a reused file still holds its older frames after
//! the last one written into it. Those were bound to another (older) segment id, so under this
//! segment's id their CRC fails: they end the valid log exactly as a torn tail does, and can
//! never be read as frames of this segment. Ids only grow, and a reused id never belongs to a
//! spare's older frames (`recovery.rs` keeps the next id past every spare's). A version 1
//! segment is read with the CRC as it was, and never kept as a spare (`Wal::truncate_before`
//! deletes it): its unbound frames would pass under either binding.
//!
//! # Directory layout
//!
//! ```text
//! <wal dir>/<segment_id:016x>.wal      the live log; ids are consecutive (a gap is damage)
//! <wal dir>/<segment_id:016x>.spare    a segment the log no longer needs, kept (a few at most)
//!                                      to be written over as a later segment; never read
//! <wal dir>/damaged-<unix ms>/         segments moved aside at open (damage before the end):
//!     <segment_id:016x>.wal            the damaged segment, whole (its valid part before the
//!                                      damage also stays in the live log), and every later one
//!     REPAIR                           while the move is in progress: its manifest, so an
//!                                      open after a crash finishes it
//!     REPORT                           the same manifest once the move is done
//! ```
//!
//! The manifest is text, one `key=value` per line: `segment=<id>` (decimal), `offset=<byte
//! offset of the damage, 0 for the header or a missing segment>`, `reason=<one line>`.
//! Nothing in Tidemark deletes a `damaged-*` directory: it is evidence for the operator.

/// Segment magic.
pub const MAGIC: [u8; 8] = *b"TIDEWAL\0";
/// The format version this code writes (and the newest it reads).
pub const VERSION: u16 = 2;
/// The oldest format version this code reads: frames not bound to their segment id.
pub const VERSION_UNBOUND: u16 = 1;
/// Header flag: the file was an older segment's (see the module documentation).
pub const FLAG_RECYCLED: u16 = 1;
/// Size of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 20;
/// Largest payload accepted (a larger length field is treated as corruption).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// What a frame means to the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A source record of an epoch.
    Record = 1,
    /// `SEAL(epoch, positions)`: the epoch's content is final.
    Seal = 2,
    /// Any other protocol marker.
    Marker = 3,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Record),
            2 => Some(FrameKind::Seal),
            3 => Some(FrameKind::Marker),
            _ => None,
        }
    }
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's id.
    pub segment_id: u64,
    /// Epoch of its first frame.
    pub first_epoch: u64,
    /// The format version it was written in ([`VERSION_UNBOUND`] or [`VERSION`]).
    pub version: u16,
    /// True when the file was an older segment's ([`FLAG_RECYCLED`]).
    pub recycled: bool,
}

/// What a segment's frame CRCs cover besides the frame itself (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameBinding {
    /// Version 1: the frame alone.
    Unbound,
    /// Version 2: the segment id, then the frame.
    Segment(u64),
}

impl FrameBinding {
    /// A CRC hasher that has taken in the binding.
    fn hasher(self) -> crc32fast::Hasher {
        let mut hasher = crc32fast::Hasher::new();
        if let FrameBinding::Segment(id) = self {
            hasher.update(&id.to_le_bytes());
        }
        hasher
    }
}

/// Why bytes are not a valid segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short,
    /// Not a Tidemark WAL segment, or its header is damaged.
    Corrupt(&'static str),
    /// Written by a newer (or unknown) format version.
    Version(u16),
}

impl SegmentHeader {
    /// The header of a new segment in the current format.
    pub fn new(segment_id: u64, first_epoch: u64, recycled: bool) -> Self {
        Self {
            segment_id,
            first_epoch,
            version: VERSION,
            recycled,
        }
    }

    /// How the segment's frames are bound to it.
    pub fn binding(&self) -> FrameBinding {
        if self.version == VERSION_UNBOUND {
            FrameBinding::Unbound
        } else {
            FrameBinding::Segment(self.segment_id)
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.recycled { FLAG_RECYCLED } else { 0 };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.segment_id.to_le_bytes());
        b[20..28].copy_from_slice(&self.first_epoch.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Short);
        }
        let crc = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        if crc32fast::hash(&b[0..28]) != crc {
            return Err(HeaderError::Corrupt("header checksum mismatch"));
        }
        if b[0..8] != MAGIC {
            return Err(HeaderError::Corrupt("bad magic"));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if !(VERSION_UNBOUND..=VERSION).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        let flags = u16::from_le_bytes([b[10], b[11]]);
        if flags & !FLAG_RECYCLED != 0 || (version == VERSION_UNBOUND && flags != 0) {
            return Err(HeaderError::Corrupt("unknown header flags"));
        }
        Ok(Self {
            segment_id: le_u64(&b[12..20]),
            first_epoch: le_u64(&b[20..28]),
            version,
            recycled: flags & FLAG_RECYCLED != 0,
        })
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A frame as decoded from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame means.
    pub kind: FrameKind,
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame as a borrowed view.
    pub fn as_ref(&self) -> FrameRef<'_> {
        FrameRef {
            kind: self.kind,
            epoch: self.epoch,
            payload: &self.payload,
        }
    }
}

/// A frame borrowed from the bytes it was read in: what a scan hands over without copying
/// each payload into a buffer of its own (the WAL's open visits millions of frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// What the frame means.
    pub kind: FrameKind,
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Opaque payload.
    pub payload: &'a [u8],
}

/// Appends the encoding of a frame of a segment bound by `binding` to `out`.
pub fn encode_frame(
    binding: FrameBinding,
    kind: FrameKind,
    epoch: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(payload);
    let mut hasher = binding.hasher();
    hasher.update(&out[start..start + 4]);
    hasher.update(&out[start + 8..]);
    let crc = hasher.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Size of a frame with `payload_len` bytes of payload.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// A frame header that passed its sanity checks; the CRC is checked once the payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: usize,
    /// Stored CRC.
    pub crc: u32,
    /// Kind.
    pub kind: FrameKind,
    /// Epoch.
    pub epoch: u64,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the frame does (a torn write).
    Short,
    /// The frame is damaged or is not a frame at all.
    Corrupt(&'static str),
}

/// Decodes the fixed-size part of a frame.
pub fn decode_frame_header(b: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FrameError> {
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let kind = FrameKind::from_byte(b[8]).ok_or(FrameError::Corrupt("unknown frame kind"))?;
    if b[9..12] != [0, 0, 0] {
        return Err(FrameError::Corrupt("reserved bytes not zero"));
    }
    if len > MAX_PAYLOAD {
        return Err(FrameError::Corrupt("length beyond the maximum payload"));
    }
    Ok(FrameHeader {
        len,
        crc,
        kind,
        epoch: le_u64(&b[12..20]),
    })
}

/// Checks the CRC of a frame of a segment bound by `binding`, given its header bytes and
/// payload.
pub fn frame_crc_ok(
    binding: FrameBinding,
    header: &[u8; FRAME_HEADER_LEN],
    stored: u32,
    payload: &[u8],
) -> bool {
    let mut hasher = binding.hasher();
    hasher.update(&header[0..4]);
    hasher.update(&header[8..]);
    hasher.update(payload);
    hasher.finalize() == stored
}

/// Decodes one whole frame of a segment bound by `binding` from the start of `b`; returns it
/// and its encoded length.
pub fn decode_frame(binding: FrameBinding, b: &[u8]) -> Result<(Frame, usize), FrameError> {
    let head: &[u8; FRAME_HEADER_LEN] = b
        .get(..FRAME_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Short)?;
    let h = decode_frame_header(head)?;
    let payload = b
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len)
        .ok_or(FrameError::Short)?;
    if !frame_crc_ok(binding, head, h.crc, payload) {
        return Err(FrameError::Corrupt("checksum mismatch"));
    }
    Ok((
        Frame {
            kind: h.kind,
            epoch: h.epoch,
            payload: payload.to_vec(),
        },
        frame_len(h.len),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::Record),
            Just(FrameKind::Seal),
            Just(FrameKind::Marker)
        ]
    }

    fn binding() -> impl Strategy<Value = FrameBinding> {
        prop_oneof![
            Just(FrameBinding::Unbound),
            any::<u64>().prop_map(FrameBinding::Segment)
        ]
    }

    fn header() -> impl Strategy<Value = SegmentHeader> {
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(id, first, old, recycled)| {
                if old {
                    SegmentHeader {
                        segment_id: id,
                        first_epoch: first,
                        version: VERSION_UNBOUND,
                        recycled: false,
                    }
                } else {
                    SegmentHeader::new(id, first, recycled)
                }
            },
        )
    }

    proptest! {
        #[test]
        fn frames_round_trip(b in binding(), k in kind(), epoch in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = Vec::new();
            encode_frame(b, k, epoch, &payload, &mut buf);
            prop_assert_eq!(buf.len(), frame_len(payload.len()));
            let (frame, used) = decode_frame(b, &buf).unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(frame, Frame { kind: k, epoch, payload });
        }

        #[test]
        fn any_bit_flip_in_a_frame_is_detected(b in binding(), payload in proptest::collection::vec(any::<u8>(), 0..64), bit in any::<proptest::sample::Index>()) {
            let mut buf = Vec::new();
            encode_frame(b, FrameKind::Record, 7, &payload, &mut buf);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(b, &buf).is_err());
        }

        /// A frame of one segment is never a frame of another: what keeps a reused file's
        /// older frames out of the log (the module documentation).
        #[test]
        fn a_frame_is_valid_only_in_its_own_segment(a in any::<u64>(), other in any::<u64>(), k in kind(), epoch in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..128)) {
            prop_assume!(a != other);
            let mut buf = Vec::new();
            encode_frame(FrameBinding::Segment(a), k, epoch, &payload, &mut buf);
            prop_assert_eq!(
                decode_frame(FrameBinding::Segment(other), &buf),
                Err(FrameError::Corrupt("checksum mismatch"))
            );
            prop_assert!(decode_frame(FrameBinding::Unbound, &buf).is_err());
        }

        #[test]
        fn headers_round_trip_and_detect_flips(h in header(), bit in 0usize..(SEGMENT_HEADER_LEN * 8)) {
            let mut b = h.encode();
            prop_assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(SegmentHeader::decode(&b).is_err());
        }
    }

    /// A version 1 segment (written before frames were bound) is read unbound, a version 2
    /// one bound to its id.
    #[test]
    fn the_binding_follows_the_version() {
        let v2 = SegmentHeader::new(9, 1, true);
        assert_eq!(v2.binding(), FrameBinding::Segment(9));
        let mut v1 = v2.encode();
        v1[8..10].copy_from_slice(&VERSION_UNBOUND.to_le_bytes());
        v1[10..12].copy_from_slice(&0u16.to_le_bytes());
        let crc = crc32fast::hash(&v1[0..28]);
        v1[28..32].copy_from_slice(&crc.to_le_bytes());
        let h = SegmentHeader::decode(&v1).unwrap();
        assert_eq!((h.version, h.recycled), (VERSION_UNBOUND, false));
        assert_eq!(h.binding(), FrameBinding::Unbound);
    }

    #[test]
    fn newer_version_is_refused_by_number() {
        let mut b = SegmentHeader::new(1, 1, false).encode();
        b[8..10].copy_from_slice(&3u16.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Version(3)));
    }

    #[test]
    fn unknown_flags_are_damage() {
        let mut b = SegmentHeader::new(1, 1, false).encode();
        b[10..12].copy_from_slice(&2u16.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(HeaderError::Corrupt("unknown header flags"))
        );
    }
}
