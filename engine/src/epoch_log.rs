//! What the engine writes into WAL frames: source records and seals. Pure encode/decode.
//!
//! # Record frame payload (frame kind `Record`, frame epoch = the record's epoch)
//!
//! ```text
//! u8   version      1
//! u8   flags        bit 0: timestamp present, bit 1: key present, bit 2: value present
//! u16  topic length, then the topic's UTF-8 bytes
//! i32  partition
//! i64  offset
//! i64  timestamp_ms                 only if flag bit 0
//! u32  key length, key bytes        only if flag bit 1
//! u32  value length, value bytes    only if flag bit 2
//! ```
//! All integers little-endian. The WAL frame around it carries length, CRC32 and epoch.
//!
//! # Seal frame payload (frame kind `Seal`)
//!
//! JSON [`SealInfo`]: the epoch's start and end positions and its record count. From the seal
//! on, the epoch is exactly the record frames of its number before the seal.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidemark_checkpoint::store::SourcePosition;
use tidemark_connectors::{Positions, SourceRecord};

/// Version byte of the record payload this build writes.
pub const RECORD_PAYLOAD_VERSION: u8 = 1;

const HAS_TIMESTAMP: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_VALUE: u8 = 4;

/// Bytes that are not a record payload this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochLogError {
    /// A newer build wrote it.
    #[error("WAL record payload version {0} is not supported by this build (it reads version {RECORD_PAYLOAD_VERSION})")]
    Version(u8),
    /// Shorter than its fields say, or otherwise garbled.
    #[error("WAL record payload is damaged: {0}")]
    Damaged(&'static str),
    /// A seal payload that is not valid JSON of a [`SealInfo`].
    #[error("WAL seal payload is damaged: {0}")]
    Seal(String),
}

/// Appends the payload of `record` to `out`.
pub fn encode_record(record: &SourceRecord, out: &mut Vec<u8>) {
    let mut flags = 0;
    if record.timestamp_ms.is_some() {
        flags |= HAS_TIMESTAMP;
    }
    if record.key.is_some() {
        flags |= HAS_KEY;
    }
    if record.payload.is_some() {
        flags |= HAS_VALUE;
    }
    out.push(RECORD_PAYLOAD_VERSION);
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
    for bytes in [&record.key, &record.payload].into_iter().flatten() {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
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
    /// Decodes one record payload.
    pub fn decode(&mut self, payload: &[u8]) -> Result<SourceRecord, EpochLogError> {
        let mut c = Cursor(payload);
        let [version, flags] = c.array()?;
        if version != RECORD_PAYLOAD_VERSION {
            return Err(EpochLogError::Version(version));
        }
        if flags & !(HAS_TIMESTAMP | HAS_KEY | HAS_VALUE) != 0 {
            return Err(EpochLogError::Damaged("unknown flags"));
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
        if !c.0.is_empty() {
            return Err(EpochLogError::Damaged("trailing bytes"));
        }
        Ok(SourceRecord {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            payload: value,
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

    proptest! {
        #[test]
        fn records_round_trip(r in record()) {
            let mut buf = Vec::new();
            encode_record(&r, &mut buf);
            prop_assert_eq!(RecordDecoder::default().decode(&buf).unwrap(), r);
        }

        #[test]
        fn a_cut_payload_is_an_error_not_a_wrong_record(r in record(), cut in 0usize..64) {
            let mut buf = Vec::new();
            encode_record(&r, &mut buf);
            let cut = cut.min(buf.len() - 1);
            prop_assert!(RecordDecoder::default().decode(&buf[..cut]).is_err());
        }

        #[test]
        fn seals_round_trip(offsets in proptest::collection::vec((0i32..8, 0i64..1_000_000), 0..8), n in any::<u64>()) {
            let mut end = Positions::new();
            for (p, o) in offsets { end.set("t", p, o); }
            let s = SealInfo { start_positions: Positions::new(), end_positions: end, records: n, watermark: Some(n as i64) };
            prop_assert_eq!(SealInfo::decode(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn a_newer_version_is_named() {
        let mut buf = Vec::new();
        encode_record(
            &SourceRecord {
                topic: Arc::from("t"),
                partition: 0,
                offset: 1,
                timestamp_ms: None,
                key: None,
                payload: None,
            },
            &mut buf,
        );
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
