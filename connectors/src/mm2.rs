//! MirrorMaker 2's offset translations, as its internal topics hold them: what a failover to a
//! mirrored cluster uses (where present) instead of a start by time.
//!
//! MirrorMaker 2 keeps two kinds of translation records, both in Kafka's binary `Struct`
//! encoding (`org.apache.kafka.common.protocol.types`), as its classes `OffsetSync`
//! (connect/mirror) and `Checkpoint` (connect/mirror-client) write them:
//!
//! ```text
//! Kafka Struct types: INT16, INT32, INT64 = 2, 4, 8 bytes, big-endian two's complement;
//!                     STRING = INT16 length n (0 <= n <= 32767), then n bytes of UTF-8.
//!
//! offset-syncs topic  mm2-offset-syncs.<target alias>.internal
//!   (on the SOURCE cluster unless MM2 runs with offset-syncs.topic.location = target)
//!   key    topic: STRING, partition: INT32              -- the upstream (source) topic
//!   value  upstreamOffset: INT64, offset: INT64          -- one record's offset on each side
//!
//! checkpoints topic   <source alias>.checkpoints.internal   (on the TARGET cluster)
//!   key    group: STRING, topic: STRING, partition: INT32  -- topic as named downstream
//!   value  version: INT16 (= 0), upstreamOffset: INT64, offset: INT64, metadata: STRING
//!          -- a consumer group's committed offset upstream, and its translation downstream
//! ```
//!
//! Both are decoded strictly: a record with bytes left over, a short read, a negative string
//! length, invalid UTF-8 or (checkpoints) a version other than 0 is an error naming why, never
//! a guess. [`encode_offset_sync`] and [`encode_checkpoint`] write the same bytes (the test
//! mirror uses them to publish translations as MirrorMaker 2 would); a proptest round-trips
//! both, and fixed byte strings pin the layout.

/// Why an MM2 record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mm2DecodeError {
    /// Fewer bytes than the field needs.
    #[error("MirrorMaker 2 {what}: field {field} needs {needed} bytes, {left} left")]
    Short {
        /// Key or value of which record kind.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// A string with a negative length.
    #[error("MirrorMaker 2 {what}: field {field} has a negative string length {length}")]
    NegativeLength {
        /// Key or value of which record kind.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// The length read.
        length: i16,
    },
    /// A string that is not UTF-8.
    #[error("MirrorMaker 2 {what}: field {field} is not UTF-8")]
    NotUtf8 {
        /// Key or value of which record kind.
        what: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Bytes after the last field.
    #[error("MirrorMaker 2 {what}: {left} bytes after the last field")]
    Trailing {
        /// Key or value of which record kind.
        what: &'static str,
        /// Bytes left over.
        left: usize,
    },
    /// A checkpoint value of a version this decoder does not know.
    #[error("MirrorMaker 2 checkpoint value of version {version} (only version 0 is known)")]
    Version {
        /// The version read.
        version: i16,
    },
    /// The record had no key or no value.
    #[error("MirrorMaker 2 {what} record without a {part}")]
    Missing {
        /// Which record kind.
        what: &'static str,
        /// `key` or `value`.
        part: &'static str,
    },
}

/// One `OffsetSync`: the record at `upstream_offset` of the source partition is at
/// `downstream_offset` of the mirrored partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetSync {
    /// The topic as named on the source cluster.
    pub topic: String,
    /// Its partition (the mirror keeps partitions).
    pub partition: i32,
    /// The record's offset on the source cluster.
    pub upstream_offset: i64,
    /// The same record's offset on the target cluster.
    pub downstream_offset: i64,
}

/// One `Checkpoint`: consumer group `group` had committed `upstream_offset` on the source
/// cluster; MM2 translated it to `downstream_offset` on the target cluster (never after the
/// true position of that record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The consumer group.
    pub group: String,
    /// The topic as named on the target cluster.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// The group's committed offset upstream.
    pub upstream_offset: i64,
    /// Its translation downstream.
    pub downstream_offset: i64,
    /// The commit's metadata string.
    pub metadata: String,
}

/// The offset-syncs topic of a mirror into the cluster named `target_alias`.
pub fn offset_syncs_topic(target_alias: &str) -> String {
    format!("mm2-offset-syncs.{target_alias}.internal")
}

/// The checkpoints topic of a mirror from the cluster named `source_alias`.
pub fn checkpoints_topic(source_alias: &str) -> String {
    format!("{source_alias}.checkpoints.internal")
}

/// A reader of Kafka `Struct` fields over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], Mm2DecodeError> {
        if self.bytes.len() < n {
            return Err(Mm2DecodeError::Short {
                what: self.what,
                field,
                needed: n,
                left: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn int16(&mut self, field: &'static str) -> Result<i16, Mm2DecodeError> {
        let b = self.take(field, 2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn int32(&mut self, field: &'static str) -> Result<i32, Mm2DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(field, 4)?);
        Ok(i32::from_be_bytes(a))
    }

    fn int64(&mut self, field: &'static str) -> Result<i64, Mm2DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(field, 8)?);
        Ok(i64::from_be_bytes(a))
    }

    fn string(&mut self, field: &'static str) -> Result<String, Mm2DecodeError> {
        let length = self.int16(field)?;
        let n = usize::try_from(length).map_err(|_| Mm2DecodeError::NegativeLength {
            what: self.what,
            field,
            length,
        })?;
        let b = self.take(field, n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Mm2DecodeError::NotUtf8 {
            what: self.what,
            field,
        })
    }

    fn end(self) -> Result<(), Mm2DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Mm2DecodeError::Trailing {
                what: self.what,
                left: self.bytes.len(),
            })
        }
    }
}

/// Writes a Kafka `STRING`. Kafka refuses longer strings than 32767 bytes when writing; names
/// and metadata are far shorter, and a longer one is cut at a character boundary.
fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(i16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &s.as_bytes()[..end];
    out.extend_from_slice(&(end as i16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A record's key and value, both required (`what` names the record kind in the error).
fn key_and_value<'a>(
    what: &'static str,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
) -> Result<(&'a [u8], &'a [u8]), Mm2DecodeError> {
    let missing = |part| Mm2DecodeError::Missing { what, part };
    Ok((key.ok_or(missing("key"))?, value.ok_or(missing("value"))?))
}

/// Decodes an offset-syncs record (key and value as stored).
pub fn decode_offset_sync(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<OffsetSync, Mm2DecodeError> {
    let (key, value) = key_and_value("offset sync", key, value)?;
    let mut k = Reader {
        bytes: key,
        what: "offset sync key",
    };
    let topic = k.string("topic")?;
    let partition = k.int32("partition")?;
    k.end()?;
    let mut v = Reader {
        bytes: value,
        what: "offset sync value",
    };
    let upstream_offset = v.int64("upstreamOffset")?;
    let downstream_offset = v.int64("offset")?;
    v.end()?;
    Ok(OffsetSync {
        topic,
        partition,
        upstream_offset,
        downstream_offset,
    })
}

/// The key and value bytes MM2 writes for `sync`.
pub fn encode_offset_sync(sync: &OffsetSync) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::with_capacity(2 + sync.topic.len() + 4);
    put_string(&mut key, &sync.topic);
    key.extend_from_slice(&sync.partition.to_be_bytes());
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&sync.upstream_offset.to_be_bytes());
    value.extend_from_slice(&sync.downstream_offset.to_be_bytes());
    (key, value)
}

/// Decodes a checkpoints record (key and value as stored).
pub fn decode_checkpoint(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Checkpoint, Mm2DecodeError> {
    let (key, value) = key_and_value("checkpoint", key, value)?;
    let mut v = Reader {
        bytes: value,
        what: "checkpoint value",
    };
    let version = v.int16("version")?;
    if version != 0 {
        return Err(Mm2DecodeError::Version { version });
    }
    let upstream_offset = v.int64("upstreamOffset")?;
    let downstream_offset = v.int64("offset")?;
    let metadata = v.string("metadata")?;
    v.end()?;
    let mut k = Reader {
        bytes: key,
        what: "checkpoint key",
    };
    let group = k.string("group")?;
    let topic = k.string("topic")?;
    let partition = k.int32("partition")?;
    k.end()?;
    Ok(Checkpoint {
        group,
        topic,
        partition,
        upstream_offset,
        downstream_offset,
        metadata,
    })
}

/// The key and value bytes MM2 writes for `checkpoint` (value version 0).
pub fn encode_checkpoint(checkpoint: &Checkpoint) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::new();
    put_string(&mut key, &checkpoint.group);
    put_string(&mut key, &checkpoint.topic);
    key.extend_from_slice(&checkpoint.partition.to_be_bytes());
    let mut value = Vec::new();
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&checkpoint.upstream_offset.to_be_bytes());
    value.extend_from_slice(&checkpoint.downstream_offset.to_be_bytes());
    put_string(&mut value, &checkpoint.metadata);
    (key, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_layout_is_kafkas_struct_encoding() {
        let (k, v) = encode_offset_sync(&OffsetSync {
            topic: "ab".into(),
            partition: 3,
            upstream_offset: 258,
            downstream_offset: -1,
        });
        assert_eq!(k, [0, 2, b'a', b'b', 0, 0, 0, 3]);
        assert_eq!(
            v,
            [0, 0, 0, 0, 0, 0, 1, 2, 255, 255, 255, 255, 255, 255, 255, 255]
        );
        let (k, v) = encode_checkpoint(&Checkpoint {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            upstream_offset: 7,
            downstream_offset: 9,
            metadata: String::new(),
        });
        assert_eq!(k, [0, 1, b'g', 0, 1, b't', 0, 0, 0, 1]);
        assert_eq!(
            v,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0]
        );
    }

    #[test]
    fn damaged_records_are_refused_naming_why() {
        let (k, v) = encode_checkpoint(&Checkpoint {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            upstream_offset: 7,
            downstream_offset: 9,
            metadata: "m".into(),
        });
        let mut v1 = v.clone();
        v1[1] = 1;
        assert_eq!(
            decode_checkpoint(Some(&k), Some(&v1)),
            Err(Mm2DecodeError::Version { version: 1 })
        );
        let mut longer = v.clone();
        longer.push(0);
        assert!(matches!(
            decode_checkpoint(Some(&k), Some(&longer)),
            Err(Mm2DecodeError::Trailing { left: 1, .. })
        ));
        assert!(matches!(
            decode_checkpoint(Some(&k[..k.len() - 1]), Some(&v)),
            Err(Mm2DecodeError::Short {
                field: "partition",
                ..
            })
        ));
        assert!(matches!(
            decode_offset_sync(Some(&[0xff, 0xff]), Some(&[0; 16])),
            Err(Mm2DecodeError::NegativeLength { length: -1, .. })
        ));
        assert!(matches!(
            decode_offset_sync(Some(&[0, 1, 0xff, 0, 0, 0, 0]), Some(&[0; 16])),
            Err(Mm2DecodeError::NotUtf8 { field: "topic", .. })
        ));
        assert!(matches!(
            decode_offset_sync(None, Some(&[0; 16])),
            Err(Mm2DecodeError::Missing { part: "key", .. })
        ));
        let text = decode_checkpoint(Some(&k), Some(&longer))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("checkpoint value") && text.contains("1 bytes"),
            "{text}"
        );
    }

    proptest! {
        #[test]
        fn offset_syncs_round_trip(
            topic in "\\PC{0,40}",
            partition in any::<i32>(),
            up in any::<i64>(),
            down in any::<i64>(),
        ) {
            let sync = OffsetSync { topic, partition, upstream_offset: up, downstream_offset: down };
            let (k, v) = encode_offset_sync(&sync);
            prop_assert_eq!(decode_offset_sync(Some(&k), Some(&v)), Ok(sync));
            // Any cut of the value is refused, never misread.
            for cut in 0..v.len() {
                prop_assert!(decode_offset_sync(Some(&k), Some(&v[..cut])).is_err());
            }
        }

        #[test]
        fn checkpoints_round_trip(
            group in "\\PC{0,40}",
            topic in "\\PC{0,40}",
            partition in any::<i32>(),
            up in any::<i64>(),
            down in any::<i64>(),
            metadata in "\\PC{0,60}",
        ) {
            let c = Checkpoint { group, topic, partition, upstream_offset: up, downstream_offset: down, metadata };
            let (k, v) = encode_checkpoint(&c);
            prop_assert_eq!(decode_checkpoint(Some(&k), Some(&v)), Ok(c));
            for cut in 0..k.len() {
                prop_assert!(decode_checkpoint(Some(&k[..cut]), Some(&v)).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(k in proptest::collection::vec(any::<u8>(), 0..40), v in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_offset_sync(Some(&k), Some(&v));
            let _ = decode_checkpoint(Some(&k), Some(&v));
        }
    }
}
