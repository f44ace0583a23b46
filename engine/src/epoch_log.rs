//! What the engine writes into WAL frames: source records, batch clocks and seals. Pure
//! encode/decode.
//!
//! # Record frame payload (frame kind `Record`, frame epoch = the record's epoch)
//!
//! ```text
//! u8   version      1, or 2 for a too-large stub (below)
//! u8   flags        bit 0: timestamp present, bit 1: key present, bit 2: value present,
//!                   bit 3: too-large stub (version 2 only)
//! u16  topic length, then the topic's UTF-8 bytes
//! i32  partition
//! i64  offset
//! i64  timestamp_ms                 only if flag bit 0
//! u32  key length, key bytes        only if flag bit 1
//! u32  value length, value bytes    only if flag bit 2
//! u64  original key + value bytes   only if flag bit 3
//! ```
//! All integers little-endian. The WAL frame around it carries length, CRC32 and epoch.
//!
//! **Too-large stub** (version 2, flag bit 3; bit 2 never set): a record whose key + value
//! cannot fit one WAL frame ([`fits_in_frame`]) is logged without its value, with its original
//! size, and with its key only if the key is at most [`MAX_KEPT_KEY_BYTES`]. Such a record is
//! always dead-lettered as `too_large` (the first time and on every replay alike), so it can
//! never make a WAL append fail and wedge restarts. Every other record is written as version
//! 1, byte for byte as before, so a WAL without stubs reads in older builds too.
//!
//! # Marker frame payload (frame kind `Marker`, frame epoch = the epoch being read)
//!
//! ```text
//! u8   marker type  1 = batch clock
//! i64  wall_clock_ms                (type 1) Unix time in ms when the batch was logged
//! ```
//! `log_records` writes a batch-clock marker before each batch's records. The clock of the
//! batch is what decides `event_time_in_future` (see `dedup.max_event_time_skew_ms`), so a
//! replay decides it from the WAL, exactly as the first time. Record frames with no clock
//! before them (a WAL written by an older build) are replayed without that check. Markers of
//! another type are skipped by this build (and types 2 and 3 by builds before each).
//!
//! **State delta** (marker type 3; with dedup, written just before the epoch's seal, in the
//! same synced write): the keys the epoch added to the dedup state (those still at or above
//! the watermark decided at the seal), split over as many frames as needed, each key after
//! the first of a frame written as what it adds to the key before it:
//!
//! ```text
//! u8   marker type  3 = state delta
//! u32  n keys in this frame
//! n x { varint shared       leading bytes it shares with the frame's key before it (0 first)
//!       varint suffix length, suffix bytes
//!       varint time delta   zigzag(event_time - the time before it; 0 before the first) }
//! ```
//! Varints are LEB128 (7 bits a byte, low bits first). Why this form: the delta is on the
//! seal's synced write, and its fsync was most of a dedup epoch's seal (~100 ms of a 1 s
//! epoch, 2M keys at 30 bytes each in the old form). Keys decided in WAL order run by
//! partition and share prefixes, and their times are close, so a key takes about a third of
//! the old form's bytes (README, "Dedup's cost"). Builds before it wrote marker type 2,
//! `n x { i64 event_time, u32 key length, key bytes }`, which this build still reads (a WAL
//! written before an upgrade); builds before this one skip type 3, so a downgrade over a WAL
//! holding one finds its delta short of the seal's count and takes the paths for a changelog
//! that is not whole (a WAL scan, or the table).
//! The seal after them counts the epoch's delta keys (`state_keys`), so a scan knows the
//! delta is whole. They are the dedup state's changelog: the checkpoint store applies an
//! epoch's delta without a sync, and the WAL keeps these frames until a later checkpoint's
//! state covers them (see `checkpoint/src/store/mod.rs`).
//!
//! # Seal frame payload (frame kind `Seal`)
//!
//! JSON [`SealInfo`]: the epoch's start and end positions, its record count, the watermark
//! decided at the seal and (since the `settings` field exists) the settings that decided the
//! epoch's content. From the seal on, the epoch is exactly the record frames of its number
//! before the seal.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidemark_checkpoint::store::{PackedKeys, SourcePosition};
use tidemark_checkpoint::wal::format::MAX_PAYLOAD;
use tidemark_checkpoint::wal::FrameKind;
use tidemark_connectors::delta::RunId;
use tidemark_connectors::{Positions, SourceRecord};

/// Version byte of the record payload this build writes for a whole record.
pub const RECORD_PAYLOAD_VERSION: u8 = 1;
/// Version byte of a too-large stub (flag bit 3).
pub const STUB_PAYLOAD_VERSION: u8 = 2;

const HAS_TIMESTAMP: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_VALUE: u8 = 4;
const TOO_LARGE: u8 = 8;

/// Keys up to this many bytes are kept in a too-large stub and its dead letter; a longer key
/// is dropped like the value (the dead letter still names the record and its size).
pub const MAX_KEPT_KEY_BYTES: usize = 4096;
/// Longest topic name this build plans for (Kafka allows 249 bytes).
pub const MAX_TOPIC_BYTES: usize = 255;
/// Payload bytes of a whole record besides topic, key and value (version, flags, topic
/// length, partition, offset, timestamp, key and value lengths).
pub const RECORD_OVERHEAD: usize = 1 + 1 + 2 + 4 + 8 + 8 + 4 + 4;
/// The most key + value bytes one WAL frame holds whatever the topic: the ceiling of
/// `errors.max_record_bytes`.
pub const MAX_RECORD_BYTES: usize = MAX_PAYLOAD - RECORD_OVERHEAD - MAX_TOPIC_BYTES;

/// Marker type of a batch clock.
const MARKER_BATCH_CLOCK: u8 = 1;
/// Marker type of a state delta as builds before the compact form wrote it (still read).
const MARKER_STATE_DELTA: u8 = 2;
/// Marker type of a state delta in the compact form (what this build writes).
const MARKER_STATE_DELTA_COMPACT: u8 = 3;
/// Most bytes a LEB128 varint of a `u64` takes.
const VARINT_MAX: usize = 10;
/// Most key bytes a compact state-delta frame of two or more keys stands for, written and
/// read: a key that shares all of the one before it costs ~3 bytes of frame, so without a
/// bound a damaged or crafted 64 MiB frame could ask the decoder for terabytes.
const STATE_DELTA_RAW_BYTES: usize = 4 * STATE_DELTA_FRAME_BYTES;
/// Key bytes per state-delta frame before the next frame starts (far below a frame's limit).
const STATE_DELTA_FRAME_BYTES: usize = 1 << 20;

/// Bytes that are not a record payload this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochLogError {
    /// A newer build wrote it.
    #[error("WAL record payload version {0} is not supported by this build (it reads versions {RECORD_PAYLOAD_VERSION} and {STUB_PAYLOAD_VERSION})")]
    Version(u8),
    /// Shorter than its fields say, or otherwise garbled.
    #[error("WAL record payload is damaged: {0}")]
    Damaged(&'static str),
    /// A seal payload that is not valid JSON of a [`SealInfo`].
    #[error("WAL seal payload is damaged: {0}")]
    Seal(String),
}

/// Key + value bytes of `record`: what `errors.max_record_bytes` limits.
pub fn record_size(record: &SourceRecord) -> usize {
    record.key.as_ref().map_or(0, Vec::len) + record.payload.as_ref().map_or(0, Vec::len)
}

/// Length of `record`'s whole (version 1) payload.
fn encoded_len(record: &SourceRecord) -> usize {
    2 + 2
        + record.topic.len()
        + 4
        + 8
        + record.timestamp_ms.map_or(0, |_| 8)
        + record.key.as_ref().map_or(0, |k| 4 + k.len())
        + record.payload.as_ref().map_or(0, |v| 4 + v.len())
}

/// True when `record` fits one WAL frame of at most `max_payload` bytes whole.
pub fn fits_in(record: &SourceRecord, max_payload: usize) -> bool {
    encoded_len(record) <= max_payload
}

/// True when `record` fits one WAL frame whole; otherwise it is logged as a too-large stub.
pub fn fits_in_frame(record: &SourceRecord) -> bool {
    fits_in(record, MAX_PAYLOAD)
}

/// Appends the payload of `record` to `out`: the whole record, or a too-large stub when it
/// does not fit a WAL frame. Returns true for a stub.
pub fn encode_record(record: &SourceRecord, out: &mut Vec<u8>) -> bool {
    encode_record_within(record, MAX_PAYLOAD, out)
}

/// [`encode_record`] against a frame limit of `max_payload` bytes (tests use a small one).
pub fn encode_record_within(record: &SourceRecord, max_payload: usize, out: &mut Vec<u8>) -> bool {
    let stub = !fits_in(record, max_payload);
    let key = record
        .key
        .as_ref()
        .filter(|k| !stub || k.len() <= MAX_KEPT_KEY_BYTES);
    let value = record.payload.as_ref().filter(|_| !stub);
    let mut flags = 0;
    if record.timestamp_ms.is_some() {
        flags |= HAS_TIMESTAMP;
    }
    if key.is_some() {
        flags |= HAS_KEY;
    }
    if value.is_some() {
        flags |= HAS_VALUE;
    }
    if stub {
        flags |= TOO_LARGE;
        out.push(STUB_PAYLOAD_VERSION);
    } else {
        out.push(RECORD_PAYLOAD_VERSION);
    }
    out.push(flags);
    let topic = record.topic.as_bytes();
    // Kafka topic names are at most 249 bytes, far below u16::MAX.
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&record.partition.to_le_bytes());
    out.extend_from_slice(&record.offset.to_le_bytes());
    if let Some(ts) = record.timestamp_ms {
        out.extend_from_slice(&ts.to_le_bytes());
    }
    for bytes in [key, value].into_iter().flatten() {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    if stub {
        out.extend_from_slice(&(record_size(record) as u64).to_le_bytes());
    }
    stub
}

/// A record as the WAL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRecord {
    /// The record (for a too-large stub: no value, and no key if it was long).
    pub record: SourceRecord,
    /// For a too-large stub, the record's original key + value bytes.
    pub too_large: Option<u64>,
}

/// Appends a batch-clock marker payload (the wall clock, Unix ms, of the batch that follows).
pub fn encode_batch_clock(wall_clock_ms: i64, out: &mut Vec<u8>) {
    out.push(MARKER_BATCH_CLOCK);
    out.extend_from_slice(&wall_clock_ms.to_le_bytes());
}

/// The batch clock in a marker payload; `None` for a marker of another type.
pub fn decode_batch_clock(payload: &[u8]) -> Result<Option<i64>, EpochLogError> {
    match payload.split_first() {
        Some((&MARKER_BATCH_CLOCK, rest)) => {
            let ms: [u8; 8] = rest
                .try_into()
                .map_err(|_| EpochLogError::Damaged("batch clock marker is not 9 bytes"))?;
            Ok(Some(i64::from_le_bytes(ms)))
        }
        _ => Ok(None),
    }
}

/// Encodes `keys` as state-delta marker payloads (module documentation), one per frame of at
/// most about [`STATE_DELTA_FRAME_BYTES`], and hands each to `append`. Returns the keys
/// encoded. A key longer than a frame holds cannot occur (keys come from records that fit a
/// frame), and is an error.
pub fn log_state_delta<E>(
    keys: &PackedKeys,
    buf: &mut Vec<u8>,
    mut append: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut iter = keys.iter().peekable();
    let mut total = 0u64;
    while iter.peek().is_some() {
        buf.clear();
        buf.push(MARKER_STATE_DELTA_COMPACT);
        buf.extend_from_slice(&0u32.to_le_bytes());
        let mut n = 0u32;
        let mut raw = 0usize;
        // Each frame stands alone: its first key shares nothing, its first time is against 0.
        let (mut prev_key, mut prev_time): (&[u8], i64) = (&[], 0);
        while let Some((key, time)) = iter.peek().copied() {
            if n > 0
                && (buf.len() + 3 * VARINT_MAX + key.len() > STATE_DELTA_FRAME_BYTES
                    || raw + key.len() > STATE_DELTA_RAW_BYTES)
            {
                break;
            }
            raw += key.len();
            let shared = prev_key.iter().zip(key).take_while(|(a, b)| a == b).count();
            put_varint(buf, shared as u64);
            put_varint(buf, (key.len() - shared) as u64);
            buf.extend_from_slice(&key[shared..]);
            put_varint(buf, zigzag(time.wrapping_sub(prev_time)));
            (prev_key, prev_time) = (key, time);
            n += 1;
            iter.next();
        }
        buf[1..5].copy_from_slice(&n.to_le_bytes());
        total += u64::from(n);
        append(buf)?;
    }
    Ok(total)
}

/// Appends `v` as a LEB128 varint (7 bits a byte, low first; the high bit says more follow).
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads a LEB128 varint off the front of `bytes`; `None` if it is cut short or longer than
/// a `u64` holds.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(VARINT_MAX) {
        let bits = u64::from(b & 0x7F);
        if i == VARINT_MAX - 1 && b > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b < 0x80 {
            *bytes = &bytes[i + 1..];
            return Some(v);
        }
    }
    None
}

/// A signed difference as an unsigned number small when the difference is small either way.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The keys of a state-delta marker payload (either form), appended to `out`; `Ok(false)`
/// for a marker of another type (nothing appended).
pub fn decode_state_delta(payload: &[u8], out: &mut PackedKeys) -> Result<bool, EpochLogError> {
    let damaged = || EpochLogError::Damaged("state delta marker is cut short");
    match payload.split_first() {
        Some((&MARKER_STATE_DELTA, rest)) => {
            let (n, mut rest) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
            for _ in 0..u32::from_le_bytes(*n) {
                let (time, r) = rest.split_first_chunk::<8>().ok_or_else(damaged)?;
                let (len, r) = r.split_first_chunk::<4>().ok_or_else(damaged)?;
                let len = u32::from_le_bytes(*len) as usize;
                if r.len() < len {
                    return Err(damaged());
                }
                out.push(&r[..len], i64::from_le_bytes(*time));
                rest = &r[len..];
            }
            if !rest.is_empty() {
                return Err(EpochLogError::Damaged(
                    "state delta marker has trailing bytes",
                ));
            }
            Ok(true)
        }
        Some((&MARKER_STATE_DELTA_COMPACT, rest)) => {
            let (n, mut rest) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
            let mut prev_time = 0i64;
            let mut prev_len = 0usize;
            let mut raw = 0usize;
            for i in 0..u32::from_le_bytes(*n) {
                let shared = take_varint(&mut rest).ok_or_else(damaged)?;
                let suffix = take_varint(&mut rest).ok_or_else(damaged)?;
                let shared = usize::try_from(shared)
                    .ok()
                    .filter(|&s| s <= prev_len)
                    .ok_or(EpochLogError::Damaged(
                        "state delta key shares more than the key before it holds",
                    ))?;
                let suffix = usize::try_from(suffix)
                    .ok()
                    .filter(|&s| s <= rest.len())
                    .ok_or_else(damaged)?;
                raw += shared + suffix;
                if i > 0 && raw > STATE_DELTA_RAW_BYTES {
                    return Err(EpochLogError::Damaged(
                        "state delta frame stands for more key bytes than one is written with",
                    ));
                }
                let (bytes, r) = rest.split_at(suffix);
                rest = r;
                let delta = take_varint(&mut rest).ok_or_else(damaged)?;
                let time = prev_time.wrapping_add(unzigzag(delta));
                out.push_after_shared(shared, bytes, time);
                (prev_time, prev_len) = (time, shared + suffix);
            }
            if !rest.is_empty() {
                return Err(EpochLogError::Damaged(
                    "state delta marker has trailing bytes",
                ));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The frames `log_records` appends for one batch read from the source: the batch-clock
/// marker, then each record (a too-large stub where it does not fit a frame). `append` gets
/// each frame's kind and payload. Returns the indexes of the records logged as stubs.
pub fn log_batch<E>(
    wall_clock_ms: i64,
    records: &[SourceRecord],
    buf: &mut Vec<u8>,
    mut append: impl FnMut(FrameKind, &[u8]) -> Result<(), E>,
) -> Result<Vec<usize>, E> {
    buf.clear();
    encode_batch_clock(wall_clock_ms, buf);
    append(FrameKind::Marker, buf)?;
    let mut stubs = Vec::new();
    for (i, r) in records.iter().enumerate() {
        buf.clear();
        if encode_record(r, buf) {
            stubs.push(i);
        }
        append(FrameKind::Record, buf)?;
    }
    Ok(stubs)
}

/// One batch of an epoch read back from the WAL, with the clock logged before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayBatch {
    /// The batch's wall clock (Unix ms); `None` when no marker preceded it (older build).
    pub clock_ms: Option<i64>,
    /// Its records in WAL order.
    pub records: Vec<SourceRecord>,
    /// Too-large stubs among them: (index in `records`, original key + value bytes).
    pub too_large: Vec<(usize, u64)>,
}

/// An epoch's record frames read back from the WAL, in batches as they were logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// The batches in WAL order.
    pub batches: Vec<ReplayBatch>,
}

impl Replay {
    /// A batch-clock marker: the records after it belong to a new batch with this clock.
    pub fn clock(&mut self, wall_clock_ms: i64) {
        self.batches.push(ReplayBatch {
            clock_ms: Some(wall_clock_ms),
            ..ReplayBatch::default()
        });
    }

    /// A record frame.
    pub fn push(&mut self, logged: LoggedRecord) {
        if self.batches.is_empty() {
            self.batches.push(ReplayBatch::default());
        }
        let Some(batch) = self.batches.last_mut() else {
            return;
        };
        if let Some(size) = logged.too_large {
            batch.too_large.push((batch.records.len(), size));
        }
        batch.records.push(logged.record);
    }

    /// A record or marker frame read back (a seal is the caller's).
    pub fn add_frame(
        &mut self,
        kind: FrameKind,
        payload: &[u8],
        decoder: &mut RecordDecoder,
    ) -> Result<(), EpochLogError> {
        match kind {
            FrameKind::Record => self.push(decoder.decode(payload)?),
            FrameKind::Marker => {
                if let Some(ms) = decode_batch_clock(payload)? {
                    self.clock(ms);
                }
            }
            FrameKind::Seal => {}
        }
        Ok(())
    }

    /// Records in all batches.
    pub fn len(&self) -> usize {
        self.batches.iter().map(|b| b.records.len()).sum()
    }

    /// True when no record was logged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes record payloads, sharing one `Arc<str>` per topic name.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    topics: Vec<Arc<str>>,
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EpochLogError> {
        if self.0.len() < n {
            return Err(EpochLogError::Damaged("shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EpochLogError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, EpochLogError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        Ok(self.take(len)?.to_vec())
    }
}

impl RecordDecoder {
    /// Decodes one record payload (a whole record or a too-large stub).
    pub fn decode(&mut self, payload: &[u8]) -> Result<LoggedRecord, EpochLogError> {
        let mut c = Cursor(payload);
        let [version, flags] = c.array()?;
        let allowed = match version {
            RECORD_PAYLOAD_VERSION => HAS_TIMESTAMP | HAS_KEY | HAS_VALUE,
            STUB_PAYLOAD_VERSION => HAS_TIMESTAMP | HAS_KEY | TOO_LARGE,
            v => return Err(EpochLogError::Version(v)),
        };
        if flags & !allowed != 0 {
            return Err(EpochLogError::Damaged("unknown flags"));
        }
        if version == STUB_PAYLOAD_VERSION && flags & TOO_LARGE == 0 {
            return Err(EpochLogError::Damaged(
                "a version 2 payload without the stub flag",
            ));
        }
        let topic_len = u16::from_le_bytes(c.array()?) as usize;
        let topic = std::str::from_utf8(c.take(topic_len)?)
            .map_err(|_| EpochLogError::Damaged("topic is not UTF-8"))?;
        let topic = match self.topics.iter().find(|t| &***t == topic) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(topic);
                self.topics.push(t.clone());
                t
            }
        };
        let partition = i32::from_le_bytes(c.array()?);
        let offset = i64::from_le_bytes(c.array()?);
        let timestamp_ms = if flags & HAS_TIMESTAMP != 0 {
            Some(i64::from_le_bytes(c.array()?))
        } else {
            None
        };
        let key = if flags & HAS_KEY != 0 {
            Some(c.bytes()?)
        } else {
            None
        };
        let value = if flags & HAS_VALUE != 0 {
            Some(c.bytes()?)
        } else {
            None
        };
        let too_large = if flags & TOO_LARGE != 0 {
            Some(u64::from_le_bytes(c.array()?))
        } else {
            None
        };
        if !c.0.is_empty() {
            return Err(EpochLogError::Damaged("trailing bytes"));
        }
        Ok(LoggedRecord {
            record: SourceRecord {
                topic,
                partition,
                offset,
                timestamp_ms,
                key,
                payload: value,
            },
            too_large,
        })
    }
}

/// What a seal frame records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealInfo {
    /// Positions at the start of the epoch.
    pub start_positions: Positions,
    /// Positions after its last record: where the next epoch starts.
    pub end_positions: Positions,
    /// Record frames of the epoch before the seal.
    pub records: u64,
    /// The event-time watermark decided at this seal (micros), in effect from the next epoch.
    #[serde(default)]
    pub watermark: Option<i64>,
    /// The settings that decided the epoch's content, in canonical form (setting name ->
    /// value; see `RecordProcessor::settings`). A redo compares them with the current config
    /// and refuses if any differs. Absent in seals written before this field existed (then
    /// nothing is compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<BTreeMap<String, String>>,
    /// Keys in the state-delta frames logged just before this seal (with dedup and
    /// checkpoints on); absent when none were logged (dedup off, or an older build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_keys: Option<u64>,
    /// The run (the Delta sink's run id) that sealed the epoch and logged its state delta. A
    /// start that finds the epoch in the table trusts that delta instead of replaying the
    /// epoch only when this run's commit is the one there (a redo by a later run, whose keys
    /// are its own replay's, is replayed again). Absent in seals of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
}

impl SealInfo {
    /// The seal payload.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing maps of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a seal payload.
    pub fn decode(payload: &[u8]) -> Result<Self, EpochLogError> {
        serde_json::from_slice(payload).map_err(|e| EpochLogError::Seal(e.to_string()))
    }
}

/// Positions as the checkpoint store keeps them.
pub fn to_store_positions(p: &Positions) -> Vec<SourcePosition> {
    p.iter()
        .map(|(tp, offset)| SourcePosition {
            source: tp.topic,
            partition: tp.partition,
            offset,
        })
        .collect()
}

/// Positions from the checkpoint store's form.
pub fn from_store_positions(v: &[SourcePosition]) -> Positions {
    let mut p = Positions::new();
    for s in v {
        p.set(&s.source, s.partition, s.offset);
    }
    p
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = SourceRecord> {
        (
            "[a-z._-]{1,40}",
            any::<i32>(),
            any::<i64>(),
            any::<Option<i64>>(),
            any::<Option<Vec<u8>>>(),
            any::<Option<Vec<u8>>>(),
        )
            .prop_map(
                |(topic, partition, offset, ts, key, payload)| SourceRecord {
                    topic: Arc::from(topic.as_str()),
                    partition,
                    offset,
                    timestamp_ms: ts,
                    key,
                    payload,
                },
            )
    }

    fn whole(r: SourceRecord) -> LoggedRecord {
        LoggedRecord {
            record: r,
            too_large: None,
        }
    }

    /// Offset 1 of partition 0 of topic `t`, with no timestamp, key or payload.
    fn bare_record() -> SourceRecord {
        SourceRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: None,
            payload: None,
        }
    }

    /// Keys of a run (a shared prefix, rising times) take a few bytes each in the compact
    /// form, where the old form took 12 plus the key.
    #[test]
    fn a_run_of_keys_is_written_compactly() {
        let mut packed = PackedKeys::default();
        for i in 0..10_000i64 {
            packed.push(
                format!("order-{:012}", 7_000_000 + i).as_bytes(),
                1_700_000_000_000 + i,
            );
        }
        let mut bytes = 0;
        log_state_delta(&packed, &mut Vec::new(), |p| {
            bytes += p.len();
            Ok::<(), ()>(())
        })
        .unwrap();
        let old_form = 5 + 10_000 * (12 + 18);
        assert!(
            bytes * 4 < old_form,
            "{bytes} bytes against {old_form} in the old form"
        );
    }

    /// A frame of keys that each repeat a long key before them (a few bytes each) is damage
    /// once it stands for more than a frame's key bytes: the decoder never multiplies a small
    /// frame into a huge one. A writer's frames stay under the bound.
    #[test]
    fn a_frame_that_stands_for_too_many_key_bytes_is_damage() {
        let long = vec![b'k'; 1 << 20];
        let repeats = 8u32;
        let mut f = vec![MARKER_STATE_DELTA_COMPACT];
        f.extend_from_slice(&(1 + repeats).to_le_bytes());
        put_varint(&mut f, 0);
        put_varint(&mut f, long.len() as u64);
        f.extend_from_slice(&long);
        put_varint(&mut f, 0);
        for _ in 0..repeats {
            put_varint(&mut f, long.len() as u64);
            put_varint(&mut f, 0);
            put_varint(&mut f, 0);
        }
        let mut out = PackedKeys::default();
        let err = decode_state_delta(&f, &mut out).unwrap_err();
        assert!(err.to_string().contains("more key bytes"), "{err}");
        assert!(out.key_bytes() <= STATE_DELTA_RAW_BYTES + long.len());
        // The writer splits the same keys into frames that read back.
        let mut packed = PackedKeys::default();
        for _ in 0..=repeats {
            packed.push(&long, 0);
        }
        let mut back = PackedKeys::default();
        log_state_delta(&packed, &mut Vec::new(), |p| {
            decode_state_delta(p, &mut back).map(|_| ())
        })
        .unwrap();
        assert_eq!(back, packed);
    }

    /// A frame's first key shares nothing, even when keys of earlier frames were read into
    /// the same buffer: one that claims to is damage.
    #[test]
    fn a_frames_first_key_shares_nothing() {
        let mut out = PackedKeys::default();
        out.push(b"earlier", 1);
        let mut f = vec![MARKER_STATE_DELTA_COMPACT];
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&[3, 1, b'x', 0]);
        assert!(decode_state_delta(&f, &mut out).is_err());
    }

    /// A key that claims more shared bytes than the key before it has is damage, not a
    /// wrong key; so are a varint longer than a u64 and trailing bytes.
    #[test]
    fn impossible_compact_deltas_are_damage() {
        let frame = |body: &[u8]| {
            let mut f = vec![MARKER_STATE_DELTA_COMPACT];
            f.extend_from_slice(&2u32.to_le_bytes());
            f.extend_from_slice(body);
            f
        };
        // First key "ab" (time 0), second shares 3 bytes of it.
        let shares_too_much = frame(&[0, 2, b'a', b'b', 0, 3, 0, 0]);
        let err = decode_state_delta(&shares_too_much, &mut PackedKeys::default()).unwrap_err();
        assert!(err.to_string().contains("shares more"), "{err}");
        let fine = frame(&[0, 2, b'a', b'b', 0, 1, 1, b'c', 2]);
        let mut back = PackedKeys::default();
        assert!(decode_state_delta(&fine, &mut back).unwrap());
        let got: Vec<(Vec<u8>, i64)> = back.iter().map(|(k, t)| (k.to_vec(), t)).collect();
        assert_eq!(got, vec![(b"ab".to_vec(), 0), (b"ac".to_vec(), 1)]);
        let mut trailing = fine.clone();
        trailing.push(0);
        assert!(decode_state_delta(&trailing, &mut PackedKeys::default()).is_err());
        let long_varint = frame(&[0xFF; 11]);
        assert!(decode_state_delta(&long_varint, &mut PackedKeys::default()).is_err());
    }

    proptest! {
        #[test]
        fn records_round_trip(r in record()) {
            let mut buf = Vec::new();
            prop_assert!(!encode_record(&r, &mut buf));
            prop_assert_eq!(buf[0], RECORD_PAYLOAD_VERSION);
            prop_assert_eq!(RecordDecoder::default().decode(&buf).unwrap(), whole(r));
        }

        /// Against any frame limit, a record is logged whole when it fits and as a bounded
        /// stub otherwise, and the stub reads back as the record without its value (and
        /// without a long key), with its original size.
        #[test]
        fn a_record_too_large_for_a_frame_becomes_a_bounded_stub(
            r in record(),
            big_key in any::<bool>(),
            limit in 40usize..400,
        ) {
            let mut r = r;
            if big_key {
                r.key = Some(vec![7; MAX_KEPT_KEY_BYTES + 1]);
            }
            let mut buf = Vec::new();
            let stub = encode_record_within(&r, limit, &mut buf);
            prop_assert_eq!(stub, !fits_in(&r, limit));
            let back = RecordDecoder::default().decode(&buf).unwrap();
            if stub {
                prop_assert_eq!(buf[0], STUB_PAYLOAD_VERSION);
                prop_assert!(buf.len() <= RECORD_OVERHEAD + r.topic.len() + 8 + MAX_KEPT_KEY_BYTES);
                prop_assert_eq!(back.too_large, Some(record_size(&r) as u64));
                let kept_key = r.key.clone().filter(|k| k.len() <= MAX_KEPT_KEY_BYTES);
                let want = SourceRecord { key: kept_key, payload: None, ..r.clone() };
                prop_assert_eq!(back.record, want);
            } else {
                prop_assert!(buf.len() <= limit);
                prop_assert_eq!(back, whole(r));
            }
        }

        /// A state delta reads back whole, in order, over as many frames as it needs; a cut
        /// frame is an error; other markers are not deltas; a batch replay skips deltas.
        #[test]
        fn state_deltas_round_trip_over_frames(
            keys in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), any::<i64>()), 0..200),
            big in proptest::collection::vec(any::<u8>(), 0..(STATE_DELTA_FRAME_BYTES / 3)),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut packed = PackedKeys::default();
            for (k, t) in &keys {
                packed.push(k, *t);
            }
            // Keys big enough that the delta spans frames.
            packed.push(&big, 1);
            packed.push(&big, 2);
            packed.push(&big, 3);
            let mut frames = Vec::new();
            let n = log_state_delta(&packed, &mut Vec::new(), |p| {
                frames.push(p.to_vec());
                Ok::<(), ()>(())
            }).unwrap();
            prop_assert_eq!(n, packed.len() as u64);
            prop_assert!(big.len() < STATE_DELTA_FRAME_BYTES / 3 || frames.len() > 1);
            let mut back = PackedKeys::default();
            for f in &frames {
                prop_assert!(f.len() <= STATE_DELTA_FRAME_BYTES + 12 + big.len());
                prop_assert!(decode_state_delta(f, &mut back).unwrap());
                prop_assert_eq!(decode_batch_clock(f).unwrap(), None);
                let mut replay = Replay::default();
                replay.add_frame(FrameKind::Marker, f, &mut RecordDecoder::default()).unwrap();
                prop_assert!(replay.is_empty());
            }
            prop_assert_eq!(&back, &packed);
            let f = &frames[0];
            let cut = cut.index(f.len());
            if cut >= 5 && cut < f.len() {
                prop_assert!(decode_state_delta(&f[..cut], &mut PackedKeys::default()).is_err());
            }
            let mut clock = Vec::new();
            encode_batch_clock(5, &mut clock);
            prop_assert!(!decode_state_delta(&clock, &mut PackedKeys::default()).unwrap());
        }

        /// A WAL written before the compact form (marker type 2) still reads back the same
        /// keys.
        #[test]
        fn old_form_state_deltas_still_read(
            keys in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), any::<i64>()), 0..100),
        ) {
            let mut f = vec![MARKER_STATE_DELTA];
            f.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            let mut want = PackedKeys::default();
            for (k, t) in &keys {
                f.extend_from_slice(&t.to_le_bytes());
                f.extend_from_slice(&(k.len() as u32).to_le_bytes());
                f.extend_from_slice(k);
                want.push(k, *t);
            }
            let mut back = PackedKeys::default();
            prop_assert!(decode_state_delta(&f, &mut back).unwrap());
            prop_assert_eq!(back, want);
        }

        /// Any bytes after a compact marker read as keys or as damage, never a panic. (The
        /// bound on the key bytes a frame stands for is tested with a frame built to pass it,
        /// `a_frame_that_stands_for_too_many_key_bytes_is_damage`: 300 random bytes cannot.)
        #[test]
        fn any_compact_frame_reads_or_is_damage(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut f = vec![MARKER_STATE_DELTA_COMPACT];
            f.extend_from_slice(&body);
            let _ = decode_state_delta(&f, &mut PackedKeys::default());
        }

        /// Varints and zigzag give back every value, and take no more bytes than they need.
        #[test]
        fn varints_round_trip(v in any::<u64>(), d in any::<i64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), (64 - v.leading_zeros() as usize).max(1).div_ceil(7));
            buf.extend_from_slice(&tail);
            let mut rest = buf.as_slice();
            prop_assert_eq!(take_varint(&mut rest), Some(v));
            prop_assert_eq!(rest, tail.as_slice());
            prop_assert_eq!(unzigzag(zigzag(d)), d);
            prop_assert!(zigzag(d) <= 2 * d.unsigned_abs());
        }

        #[test]
        fn a_cut_payload_is_an_error_not_a_wrong_record(r in record(), cut in 0usize..64, limit in 40usize..400) {
            for limit in [MAX_PAYLOAD, limit] {
                let mut buf = Vec::new();
                encode_record_within(&r, limit, &mut buf);
                let cut = cut.min(buf.len() - 1);
                prop_assert!(RecordDecoder::default().decode(&buf[..cut]).is_err());
            }
        }

        /// What `log_batch` appends reads back as the same batches, clocks and stubs.
        #[test]
        fn logged_batches_replay_as_logged(
            batches in proptest::collection::vec((any::<i64>(), proptest::collection::vec(record(), 0..5)), 0..4),
        ) {
            let mut frames = Vec::new();
            let mut buf = Vec::new();
            let mut want = Replay::default();
            for (clock, records) in &batches {
                let stubs = log_batch(*clock, records, &mut buf, |kind, payload| {
                    frames.push((kind, payload.to_vec()));
                    Ok::<(), ()>(())
                }).unwrap();
                prop_assert!(stubs.is_empty());
                want.clock(*clock);
                for r in records {
                    want.push(whole(r.clone()));
                }
            }
            let mut got = Replay::default();
            let mut decoder = RecordDecoder::default();
            for (kind, payload) in &frames {
                got.add_frame(*kind, payload, &mut decoder).unwrap();
            }
            prop_assert_eq!(got.len(), batches.iter().map(|b| b.1.len()).sum::<usize>());
            prop_assert_eq!(got, want);
        }

        #[test]
        fn seals_round_trip(
            offsets in proptest::collection::vec((0i32..8, 0i64..1_000_000), 0..8),
            n in any::<u64>(),
            settings in proptest::option::of(proptest::collection::btree_map("[a-z._]{1,12}", ".{0,12}", 0..5)),
            with_run in any::<bool>(),
        ) {
            let mut end = Positions::new();
            for (p, o) in offsets { end.set("t", p, o); }
            let s = SealInfo { start_positions: Positions::new(), end_positions: end, records: n, watermark: Some(n as i64), settings, state_keys: Some(n), run_id: with_run.then(RunId::generate) };
            prop_assert_eq!(SealInfo::decode(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn a_seal_of_an_older_build_has_no_settings() {
        let old =
            br#"{"start_positions":{},"end_positions":{"t":{"0":5}},"records":5,"watermark":null}"#;
        let seal = SealInfo::decode(old).unwrap();
        assert_eq!(seal.settings, None);
        assert_eq!(seal.run_id, None);
        assert_eq!(seal.records, 5);
    }

    #[test]
    fn batch_clocks_round_trip_and_other_markers_are_skipped() {
        let mut buf = Vec::new();
        encode_batch_clock(1_764_000_000_123, &mut buf);
        assert_eq!(buf.len(), 9);
        assert_eq!(decode_batch_clock(&buf), Ok(Some(1_764_000_000_123)));
        assert_eq!(decode_batch_clock(br#"{"run":"x"}"#), Ok(None));
        assert_eq!(decode_batch_clock(&[]), Ok(None));
        assert!(decode_batch_clock(&buf[..5]).is_err());
        // Records before any clock (a WAL of an older build) form a batch without one.
        let mut replay = Replay::default();
        let r = bare_record();
        replay.push(whole(r.clone()));
        replay.clock(7);
        replay.push(whole(r));
        let clocks: Vec<Option<i64>> = replay.batches.iter().map(|b| b.clock_ms).collect();
        assert_eq!(clocks, [None, Some(7)]);
    }

    /// The wedge of issue 11 item 7: the whole payload of a record over the frame limit is
    /// more than a frame may hold (the WAL refuses it, every restart again); the payload
    /// logged for it now is a small stub.
    #[test]
    fn a_record_over_the_real_frame_limit_is_logged_as_a_small_stub() {
        let r = SourceRecord {
            topic: Arc::from("orders"),
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_764_000_000_000),
            key: Some(b"k-1".to_vec()),
            payload: Some(vec![b'x'; MAX_PAYLOAD]),
        };
        assert!(!fits_in_frame(&r));
        assert!(record_size(&r) > MAX_RECORD_BYTES);
        let mut buf = Vec::new();
        let stubs = log_batch(1, std::slice::from_ref(&r), &mut buf, |kind, payload| {
            assert!(
                payload.len() <= 64,
                "{kind:?} frame of {} bytes",
                payload.len()
            );
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(stubs, [0]);
        let back = RecordDecoder::default().decode(&buf).unwrap();
        assert_eq!(back.too_large, Some(MAX_PAYLOAD as u64 + 3));
        assert_eq!(back.record.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(back.record.payload, None);
        assert_eq!((back.record.partition, back.record.offset), (3, 42));
        // A record of exactly MAX_RECORD_BYTES fits with the longest topic.
        let edge = SourceRecord {
            topic: Arc::from("t".repeat(MAX_TOPIC_BYTES).as_str()),
            partition: 0,
            offset: 0,
            timestamp_ms: Some(0),
            key: Some(Vec::new()),
            payload: Some(vec![0; MAX_RECORD_BYTES]),
        };
        assert!(fits_in_frame(&edge));
    }

    #[test]
    fn a_newer_version_is_named() {
        let mut buf = Vec::new();
        encode_record(&bare_record(), &mut buf);
        buf[0] = 9;
        assert_eq!(
            RecordDecoder::default().decode(&buf),
            Err(EpochLogError::Version(9))
        );
    }

    #[test]
    fn store_positions_round_trip() {
        let mut p = Positions::new();
        p.set("a", 0, 5);
        p.set("b", 3, 7);
        assert_eq!(from_store_positions(&to_store_positions(&p)), p);
    }
}
