//! The checkpoint record and its versioned binary encoding. Pure, no I/O.
//!
//! ```text
//! u8   record format version (1)
//! u64  epoch                  the epoch this checkpoint completes (c)
//! u64  committed_epoch        newest epoch that made a Delta commit (t <= c)
//! i64  table_version          Delta version of that commit, -1 if none
//! i64  watermark              event-time watermark in micros, i64::MIN if none
//! u64  wal_segment, u64 wal_offset   where WAL recovery starts scanning
//! u64  created_at_ms
//! u64 x 5  counts: read, written, duplicates, late, dead_lettered (totals so far)
//! u32  n positions, then n x { u16 len, source name bytes, i32 partition, i64 next offset }
//! u64  state_epoch            (version 2) newest epoch whose dedup-state changes are durable
//!                             in the store (<= epoch); version 1: = epoch
//! u64  state_wal_segment, u64 state_wal_offset   (version 2) where the WAL's state-delta
//!                             frames of epochs state_epoch+1 ..= epoch begin (just after
//!                             SEAL(state_epoch)); version 1: = wal_segment, wal_offset
//! u8   changelog index        (version 3) 1 if present, 0 if not; versions 1 and 2: absent
//!   u32 n, then n x { u64 epoch, u64 segment, u64 offset }   where each epoch of the
//!                             changelog (state_epoch+1 ..= epoch, in order) begins its state
//!                             delta: the log's end just before its first state-delta frame
//!                             (its seal, when the delta is empty) was appended, so the frame
//!                             is there or, when the WAL rolled, at the next segment's start
//! ```
//! All integers little-endian. Version 1 and 2 records (older builds) still decode.
//!
//! The changelog index lets a restart read the state deltas the store lacks where they are,
//! instead of scanning every frame from `state_wal_*` to `wal_*` (at a 200 ms interval with the
//! state writer syncing once a second, ~90% of the frames a restart's WAL open checked were
//! records of epochs already committed). Recovery trusts it only when it lists exactly the
//! changelog's epochs and every frame it points to checks out; otherwise it scans as before.

/// Version of the record encoding written by this build.
pub const RECORD_VERSION: u8 = 3;

/// Where one epoch's state delta begins in the WAL: an entry of a checkpoint's changelog
/// index ([`CheckpointRecord::changelog_starts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChangelogStart {
    /// The epoch.
    pub epoch: u64,
    /// WAL segment where its delta begins: the log's end before its first state-delta frame
    /// (its seal when the delta is empty) was appended; the frame is there, or at the start of
    /// the next segment when the WAL rolled.
    pub segment: u64,
    /// Offset in that segment.
    pub offset: u64,
}

/// One source partition's next offset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePosition {
    /// Source name (e.g. a Kafka topic).
    pub source: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to read.
    pub offset: i64,
}

/// Counts that must always add up: read = written + duplicates + late + dead_lettered. The
/// one shape of record accounting: an epoch's counts, a checkpoint's running totals, a run's
/// summary and `tidemark status` are all `Counts`, added with `+`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Counts {
    /// Records read.
    pub read: u64,
    /// Rows written.
    pub written: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late records dropped.
    pub late: u64,
    /// Records sent to the dead-letter sink.
    pub dead_lettered: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.read += other.read;
        self.written += other.written;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.dead_lettered += other.dead_lettered;
    }
}

impl std::ops::Add for Counts {
    type Output = Self;

    fn add(mut self, other: Self) -> Self {
        self += other;
        self
    }
}

impl Counts {
    /// True when `read = written + duplicates + late + dead_lettered`.
    pub fn add_up(&self) -> bool {
        self.read == self.written + self.duplicates + self.late + self.dead_lettered
    }
}

/// Everything a checkpoint records besides the dedup state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckpointRecord {
    /// The epoch this checkpoint completes.
    pub epoch: u64,
    /// The newest epoch that made a Delta commit.
    pub committed_epoch: u64,
    /// The Delta table version of that commit (`None` if no commit yet).
    pub table_version: Option<i64>,
    /// Event-time watermark (micros), if any.
    pub watermark: Option<i64>,
    /// WAL position where recovery starts scanning.
    pub wal_segment: u64,
    /// Offset in that segment.
    pub wal_offset: u64,
    /// Wall-clock time of the checkpoint (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Totals so far.
    pub counts: Counts,
    /// Next offset per source partition.
    pub positions: Vec<SourcePosition>,
    /// The newest epoch whose dedup-state changes are durable in the store (`<= epoch`): the
    /// changes of epochs `state_epoch + 1 ..= epoch` are only in the WAL (their state-delta
    /// frames, from `state_wal_*`), which keeps them until a later checkpoint's state covers
    /// them.
    pub state_epoch: u64,
    /// WAL segment where the state-delta frames after `state_epoch` begin.
    pub state_wal_segment: u64,
    /// Offset in that segment.
    pub state_wal_offset: u64,
    /// Where each epoch of the changelog (`state_epoch + 1 ..= epoch`) begins its state delta
    /// in the WAL, when the writer knew every one (`None`: unknown, or a record of an older
    /// build; a restart then scans the WAL from `state_wal_*`).
    pub changelog_starts: Option<Vec<ChangelogStart>>,
}

/// Bytes that are not a checkpoint record this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Written by a newer build.
    #[error("checkpoint record version {0} is newer than this build's {RECORD_VERSION}")]
    NewerVersion(u8),
    /// Truncated or garbled.
    #[error("checkpoint record is damaged: {0}")]
    Damaged(&'static str),
}

impl CheckpointRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.positions.len() * 32);
        b.push(RECORD_VERSION);
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&self.committed_epoch.to_le_bytes());
        b.extend_from_slice(&self.table_version.unwrap_or(-1).to_le_bytes());
        b.extend_from_slice(&self.watermark.unwrap_or(i64::MIN).to_le_bytes());
        b.extend_from_slice(&self.wal_segment.to_le_bytes());
        b.extend_from_slice(&self.wal_offset.to_le_bytes());
        b.extend_from_slice(&self.created_at_ms.to_le_bytes());
        let c = &self.counts;
        for n in [c.read, c.written, c.duplicates, c.late, c.dead_lettered] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b.extend_from_slice(&(self.positions.len() as u32).to_le_bytes());
        for p in &self.positions {
            let name = p.source.as_bytes();
            let len = name.len().min(u16::MAX as usize);
            b.extend_from_slice(&(len as u16).to_le_bytes());
            b.extend_from_slice(&name[..len]);
            b.extend_from_slice(&p.partition.to_le_bytes());
            b.extend_from_slice(&p.offset.to_le_bytes());
        }
        for n in [
            self.state_epoch,
            self.state_wal_segment,
            self.state_wal_offset,
        ] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        match &self.changelog_starts {
            None => b.push(0),
            Some(starts) => {
                b.push(1);
                b.extend_from_slice(&(starts.len() as u32).to_le_bytes());
                for s in starts {
                    for n in [s.epoch, s.segment, s.offset] {
                        b.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
        b
    }

    /// Decodes a record.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(b);
        let version = r.u8()?;
        if version > RECORD_VERSION {
            return Err(RecordError::NewerVersion(version));
        }
        if version == 0 {
            return Err(RecordError::Damaged("unknown record version"));
        }
        let epoch = r.u64()?;
        let committed_epoch = r.u64()?;
        let table_version = Some(r.i64()?).filter(|v| *v >= 0);
        let watermark = Some(r.i64()?).filter(|w| *w != i64::MIN);
        let wal_segment = r.u64()?;
        let wal_offset = r.u64()?;
        let created_at_ms = r.u64()?;
        let counts = Counts {
            read: r.u64()?,
            written: r.u64()?,
            duplicates: r.u64()?,
            late: r.u64()?,
            dead_lettered: r.u64()?,
        };
        let n = r.u32()? as usize;
        let mut positions = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let len = r.u16()? as usize;
            let name = r.take(len)?;
            let source = String::from_utf8(name.to_vec())
                .map_err(|_| RecordError::Damaged("source name is not UTF-8"))?;
            positions.push(SourcePosition {
                source,
                partition: r.i32()?,
                offset: r.i64()?,
            });
        }
        let (state_epoch, state_wal_segment, state_wal_offset) = if version >= 2 {
            (r.u64()?, r.u64()?, r.u64()?)
        } else {
            (epoch, wal_segment, wal_offset)
        };
        if state_epoch > epoch {
            return Err(RecordError::Damaged(
                "state epoch after the checkpoint's epoch",
            ));
        }
        let changelog_starts = if version >= 3 {
            match r.u8()? {
                0 => None,
                1 => {
                    let n = r.u32()? as usize;
                    let mut starts = Vec::with_capacity(n.min(4096));
                    for _ in 0..n {
                        starts.push(ChangelogStart {
                            epoch: r.u64()?,
                            segment: r.u64()?,
                            offset: r.u64()?,
                        });
                    }
                    Some(starts)
                }
                _ => return Err(RecordError::Damaged("changelog index flag is not 0 or 1")),
            }
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(RecordError::Damaged("trailing bytes"));
        }
        Ok(Self {
            epoch,
            committed_epoch,
            table_version,
            watermark,
            wal_segment,
            wal_offset,
            created_at_ms,
            counts,
            positions,
            state_epoch,
            state_wal_segment,
            state_wal_offset,
            changelog_starts,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Damaged("record is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

/// Key of a dedup entry: event time (sign bit flipped, big-endian, so byte order is time
/// order) followed by the dedup key. Eviction below a watermark is one range delete.
pub fn dedup_entry_key(event_time: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    write_dedup_entry_key(&mut k, event_time, key);
    k
}

/// [`dedup_entry_key`] into a reused buffer (cleared first).
pub fn write_dedup_entry_key(buf: &mut Vec<u8>, event_time: i64, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&time_prefix(event_time));
    buf.extend_from_slice(key);
}

/// The 8-byte ordered prefix of an event time.
pub fn time_prefix(event_time: i64) -> [u8; 8] {
    ((event_time as u64) ^ (1 << 63)).to_be_bytes()
}

/// The event time [`time_prefix`] encoded (`None` unless 8 bytes).
pub fn time_of_prefix(b: &[u8]) -> Option<i64> {
    let head: [u8; 8] = b.try_into().ok()?;
    Some((u64::from_be_bytes(head) ^ (1 << 63)) as i64)
}

/// Splits a dedup entry key into event time and dedup key.
pub fn split_dedup_entry_key(k: &[u8]) -> Option<(i64, &[u8])> {
    let head: [u8; 8] = k.get(..8)?.try_into().ok()?;
    Some(((u64::from_be_bytes(head) ^ (1 << 63)) as i64, &k[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = CheckpointRecord> {
        (
            (
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(0i64..i64::MAX),
                proptest::option::of(i64::MIN + 1..i64::MAX),
            ),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            any::<[u64; 5]>(),
            proptest::collection::vec(("[a-z.-]{0,20}", any::<i32>(), any::<i64>()), 0..10),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::option::of(proptest::collection::vec(any::<(u64, u64, u64)>(), 0..8)),
        )
            .prop_map(
                |(
                    (epoch, committed_epoch, table_version, watermark),
                    (seg, off, at),
                    c,
                    pos,
                    st,
                    starts,
                )| {
                    CheckpointRecord {
                        epoch,
                        committed_epoch,
                        table_version,
                        watermark,
                        wal_segment: seg,
                        wal_offset: off,
                        created_at_ms: at,
                        counts: Counts {
                            read: c[0],
                            written: c[1],
                            duplicates: c[2],
                            late: c[3],
                            dead_lettered: c[4],
                        },
                        positions: pos
                            .into_iter()
                            .map(|(source, partition, offset)| SourcePosition {
                                source,
                                partition,
                                offset,
                            })
                            .collect(),
                        state_epoch: st.0.min(epoch),
                        state_wal_segment: st.1,
                        state_wal_offset: st.2,
                        changelog_starts: starts.map(|v| {
                            v.into_iter()
                                .map(|(epoch, segment, offset)| ChangelogStart {
                                    epoch,
                                    segment,
                                    offset,
                                })
                                .collect()
                        }),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn records_round_trip(r in record()) {
            prop_assert_eq!(CheckpointRecord::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn truncated_records_are_rejected(r in record(), cut in any::<proptest::sample::Index>()) {
            let b = r.encode();
            let cut = cut.index(b.len());
            prop_assert!(CheckpointRecord::decode(&b[..cut]).is_err());
        }

        #[test]
        fn dedup_keys_sort_by_time_and_round_trip(a in any::<i64>(), b in any::<i64>(), k in proptest::collection::vec(any::<u8>(), 0..20)) {
            let (ka, kb) = (dedup_entry_key(a, &k), dedup_entry_key(b, &k));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert_eq!(split_dedup_entry_key(&ka), Some((a, &k[..])));
        }
    }

    #[test]
    fn newer_record_version_is_named() {
        let mut b = CheckpointRecord::decode(&record_bytes()).unwrap().encode();
        b[0] = 7;
        assert_eq!(
            CheckpointRecord::decode(&b),
            Err(RecordError::NewerVersion(7))
        );
    }

    fn record_bytes() -> Vec<u8> {
        CheckpointRecord {
            epoch: 3,
            committed_epoch: 2,
            table_version: Some(5),
            watermark: None,
            wal_segment: 0,
            wal_offset: 32,
            created_at_ms: 1,
            counts: Counts::default(),
            positions: vec![SourcePosition {
                source: "t".into(),
                partition: 0,
                offset: 9,
            }],
            state_epoch: 3,
            state_wal_segment: 0,
            state_wal_offset: 32,
            changelog_starts: None,
        }
        .encode()
    }

    /// A version 1 record (older builds) reads with its state as durable as the checkpoint.
    #[test]
    fn a_version_1_record_has_its_state_at_its_epoch() {
        let mut v2 = CheckpointRecord::decode(&record_bytes()).unwrap();
        v2.state_epoch = 1;
        v2.state_wal_offset = 7;
        let mut b = v2.encode();
        // Without the state fields (24 bytes) and the changelog index flag (1).
        b.truncate(b.len() - 25);
        b[0] = 1;
        let v1 = CheckpointRecord::decode(&b).unwrap();
        assert_eq!(
            (v1.state_epoch, v1.state_wal_segment, v1.state_wal_offset),
            (3, 0, 32)
        );
    }

    /// A version 2 record (the build before the changelog index) reads with no index, so a
    /// restart scans its changelog.
    #[test]
    fn a_version_2_record_has_no_changelog_index() {
        let mut r = CheckpointRecord::decode(&record_bytes()).unwrap();
        r.state_epoch = 1;
        let mut b = r.encode();
        b.truncate(b.len() - 1);
        b[0] = 2;
        let v2 = CheckpointRecord::decode(&b).unwrap();
        assert_eq!(v2, r);
        assert_eq!(v2.changelog_starts, None);
        // And a version 3 record with an index keeps it.
        r.changelog_starts = Some(vec![
            ChangelogStart {
                epoch: 2,
                segment: 4,
                offset: 100,
            },
            ChangelogStart {
                epoch: 3,
                segment: 5,
                offset: 32,
            },
        ]);
        assert_eq!(CheckpointRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn a_changelog_index_flag_other_than_0_or_1_is_damage() {
        let mut b = record_bytes();
        let last = b.len() - 1;
        b[last] = 2;
        assert!(CheckpointRecord::decode(&b).is_err());
    }

    #[test]
    fn a_state_epoch_after_the_checkpoint_is_damage() {
        let mut r = CheckpointRecord::decode(&record_bytes()).unwrap();
        r.state_epoch = r.epoch + 1;
        assert!(CheckpointRecord::decode(&r.encode()).is_err());
    }
}
