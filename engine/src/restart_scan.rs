//! What a single-process restart reads from the WAL, frame by frame, so that it is all read
//! in the one pass of the WAL's open ([`tidemark_checkpoint::Wal::open_visiting`]) instead of
//! scanning the same bytes again after the open (twice: measured, each pass of a 1 s epoch's
//! log cost ~0.2-0.44 s of a restart with dedup).
//!
//! Two readers share the pass, each fed every frame in log order with its position:
//! - [`ChangelogScan`]: the dedup state's changelog checkpoint `c`'s state lacks (the deltas of
//!   epochs `c.state_epoch + 1 ..= c.epoch`, from [`crate::recovery::state_position`] to
//!   [`crate::recovery::wal_position`]).
//! - [`EpochScan`]: what the log holds after the checkpoint (from its WAL position): the
//!   records of `c+1` in their logged batches, its seal, and the state delta logged before
//!   that seal (the changelog entry a redo of `c+1` can leave to the state writer), in the
//!   shapes [`crate::wal_tail`] accepts.
//!
//! Each ignores the frames outside its range, so feeding both the whole open gives what two
//! readers from their own positions would (property-tested against them below).
//!
//! With the checkpoint's changelog index ([`read_indexed_changelog`]) the changelog is read
//! before the open, each epoch's delta from where the index puts it to its seal, and the open
//! passes only what follows the checkpoint: with a state writer that syncs once a second and
//! 200 ms epochs, nine in ten of the frames the pass read were records of committed epochs.

use std::path::{Path, PathBuf};

use tidemark_checkpoint::store::{ChangelogStart, PackedKeys, StateDelta};
use tidemark_checkpoint::wal::format::{frame_len, FRAME_HEADER_LEN};
use tidemark_checkpoint::wal::{FrameKind, FrameRef};
use tidemark_checkpoint::{CheckpointRecord, WalPosition, WalReader};
use tidemark_fs::SharedFs;
use tracing::{info, warn};

use crate::committer::LoggedDelta;
use crate::epoch_log::{decode_state_delta, EpochLogError, RecordDecoder, Replay, SealInfo};
use crate::recovery::{wal_position, Changelog, ChangelogDelta, RecoveryError};
use crate::wal_tail::{TailFrame, TailScan, TailStep};

/// An epoch's state delta as its marker frames are read: the keys so far, and where the first
/// of its frames is (what [`ChangelogScan`] and [`EpochScan`] both gather).
#[derive(Debug, Default)]
struct DeltaFrames {
    keys: PackedKeys,
    first_at: Option<WalPosition>,
}

impl DeltaFrames {
    /// Takes the marker frame at `at` (a batch clock adds nothing).
    fn add(&mut self, at: WalPosition, payload: &[u8]) -> Result<(), EpochLogError> {
        if decode_state_delta(payload, &mut self.keys)? {
            self.first_at.get_or_insert(at);
        }
        Ok(())
    }

    /// The delta read, beginning at its first frame, or at `seal_at` when it has none; empty
    /// again for the next epoch.
    fn take(&mut self, seal_at: WalPosition) -> LoggedDelta {
        LoggedDelta {
            keys: std::mem::take(&mut self.keys),
            starts_at: self.first_at.take().unwrap_or(seal_at),
        }
    }
}

/// Reads checkpoint `c`'s changelog (see the module documentation). Incomplete (never an
/// error) when an epoch is missing, out of order, or its delta does not add up: recovery then
/// rebuilds the state from the table instead.
#[derive(Debug)]
pub(crate) struct ChangelogScan {
    /// `wal_position(c)`: the changelog is the frames before it.
    end: WalPosition,
    /// `c.epoch`.
    last: u64,
    /// The epoch whose delta is being read.
    next: u64,
    /// Its delta so far.
    delta: DeltaFrames,
    /// False once the changelog is known incomplete.
    whole: bool,
    /// True once nothing more is read (the end reached, or the changelog found incomplete).
    done: bool,
    deltas: Vec<ChangelogDelta>,
}

impl ChangelogScan {
    /// A scan for checkpoint `c`'s changelog.
    pub(crate) fn new(c: &CheckpointRecord) -> Self {
        Self {
            end: wal_position(c),
            last: c.epoch,
            // A state synced through `c` lacks nothing: complete at once.
            next: if c.state_epoch >= c.epoch {
                c.epoch + 1
            } else {
                c.state_epoch + 1
            },
            delta: DeltaFrames::default(),
            whole: true,
            done: c.state_epoch >= c.epoch,
            deltas: Vec::new(),
        }
    }

    /// Takes the frame at `at`; returns false once no later frame matters.
    pub(crate) fn feed(&mut self, at: WalPosition, frame: FrameRef<'_>) -> bool {
        if self.done {
            return false;
        }
        if at >= self.end {
            self.done = true;
            return false;
        }
        if frame.epoch != self.next {
            self.incomplete();
            return false;
        }
        match frame.kind {
            FrameKind::Marker => {
                if let Err(e) = self.delta.add(at, frame.payload) {
                    warn!(
                        epoch = frame.epoch,
                        segment = at.segment,
                        offset = at.offset,
                        "state delta frame unreadable: {e}"
                    );
                    self.incomplete();
                    return false;
                }
            }
            FrameKind::Record => {}
            FrameKind::Seal => {
                let seal = SealInfo::decode(frame.payload).ok();
                let n = seal.as_ref().and_then(|s| s.state_keys);
                if n != Some(self.delta.keys.len() as u64) {
                    self.incomplete();
                    return false;
                }
                let after = WalPosition {
                    segment: at.segment,
                    offset: at.offset + frame_len(frame.payload.len()) as u64,
                };
                let logged = self.delta.take(at);
                self.deltas.push(ChangelogDelta {
                    starts_at: logged.starts_at,
                    after_seal: after,
                    delta: StateDelta {
                        epoch: self.next,
                        inserts: logged.keys,
                        evict_below: seal.and_then(|s| s.watermark),
                    },
                });
                self.next += 1;
            }
        }
        true
    }

    fn incomplete(&mut self) {
        self.whole = false;
        self.done = true;
    }

    /// The deltas found, and whether they are the whole changelog.
    pub(crate) fn finish(self) -> Changelog {
        Changelog {
            complete: self.whole && self.next == self.last + 1,
            deltas: self.deltas,
            indexed: false,
        }
    }
}

/// Reads checkpoint `c`'s changelog where its index ([`CheckpointRecord::changelog_starts`])
/// says each epoch's delta is, instead of passing every frame from the state's position (at a
/// 200 ms interval most of those are records of epochs already committed). Each epoch is read
/// from its start to its seal, through the same [`ChangelogScan`] a full pass feeds: the frames
/// skipped are ones it ignores (records, batch clocks), so a right index gives what the pass
/// gives. `None` when `c` has no index or it does not list exactly the epochs `c.state_epoch +
/// 1 ..= c.epoch`; an incomplete changelog when a frame it points to is not that epoch's
/// delta or seal, or cannot be read (the caller then scans the log as without an index).
pub(crate) fn read_indexed_changelog(
    fs: &SharedFs,
    dir: &Path,
    c: &CheckpointRecord,
) -> Option<Changelog> {
    let starts = c.changelog_starts.as_ref()?;
    let lacks = c.state_epoch.min(c.epoch) + 1..=c.epoch;
    if !starts.iter().map(|s| s.epoch).eq(lacks) {
        return None;
    }
    let mut scan = ChangelogScan::new(c);
    for start in starts {
        if let Err(why) = feed_indexed_delta(fs, dir, start, &mut scan) {
            // The scan has not passed this epoch's seal: its changelog is incomplete.
            warn!(
                epoch = start.epoch,
                segment = start.segment,
                offset = start.offset,
                "the changelog index could not be followed to the epoch's state delta (a frame not that delta's, or a failed read): {why}"
            );
            break;
        }
    }
    Some(scan.finish())
}

/// Feeds `scan` the frames from index entry `start` to its epoch's seal. Only the epoch's
/// delta frames and its seal lie there: a frame that cannot be read, a record, a frame `scan`
/// refuses (another epoch's, a seal counting other keys) or the log's end first is the error.
fn feed_indexed_delta(
    fs: &SharedFs,
    dir: &Path,
    start: &ChangelogStart,
    scan: &mut ChangelogScan,
) -> Result<(), String> {
    let from = WalPosition {
        segment: start.segment,
        offset: start.offset,
    };
    for item in WalReader::with_fs(fs.clone(), dir, from) {
        let (at, frame) = item.map_err(|e| e.to_string())?;
        if frame.kind == FrameKind::Record || !scan.feed(at, frame.as_ref()) {
            return Err(format!(
                "a {:?} frame of epoch {} at segment {} offset {}",
                frame.kind, frame.epoch, at.segment, at.offset
            ));
        }
        if frame.kind == FrameKind::Seal {
            return Ok(());
        }
    }
    Err("the log ends before the epoch's seal".into())
}

/// What the log holds after checkpoint `c` (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct AfterCheckpointLog {
    /// The records of `c+1`, in their logged batches.
    pub records: Replay,
    /// `SEAL(c+1)`, if it is in the log.
    pub seal: Option<SealInfo>,
    /// The state delta logged before `SEAL(c+1)`, and where its frames begin, when it is whole
    /// (as many keys as the seal counts): what the changelog of a later start reads for `c+1`.
    pub logged_delta: Option<LoggedDelta>,
}

/// Reads what the log holds after the checkpoint, from `from` on (see the module
/// documentation); the first frame that cannot follow the checkpoint is the error
/// [`EpochScan::finish`] returns.
#[derive(Debug)]
pub(crate) struct EpochScan {
    from: WalPosition,
    epoch: u64,
    decoder: RecordDecoder,
    tail: TailScan,
    found: AfterCheckpointLog,
    /// The state delta of `c+1` so far.
    delta: DeltaFrames,
    /// False once a state delta frame of `c+1` could not be read.
    delta_readable: bool,
    error: Option<RecoveryError>,
}

impl EpochScan {
    /// A scan of epoch `epoch`'s frames (`c+1`) from `from` (checkpoint `c`'s WAL position).
    pub(crate) fn new(from: WalPosition, epoch: u64) -> Self {
        Self {
            from,
            epoch,
            decoder: RecordDecoder::default(),
            tail: TailScan::new(epoch),
            found: AfterCheckpointLog::default(),
            delta: DeltaFrames::default(),
            delta_readable: true,
            error: None,
        }
    }

    /// Takes the frame at `at` (frames before `from` are not this scan's).
    pub(crate) fn feed(&mut self, at: WalPosition, frame: FrameRef<'_>) {
        if at < self.from || self.error.is_some() {
            return;
        }
        if let Err(e) = self.step(at, frame) {
            self.error = Some(e);
        }
    }

    fn step(&mut self, at: WalPosition, frame: FrameRef<'_>) -> Result<(), RecoveryError> {
        let unexpected = |what: String| RecoveryError::State {
            path: PathBuf::from(format!("wal segment {} offset {}", at.segment, at.offset)),
            message: what,
        };
        let kind = match frame.kind {
            FrameKind::Seal => TailFrame::Seal,
            FrameKind::Record | FrameKind::Marker => TailFrame::Data,
        };
        match self.tail.frame(frame.epoch, kind).map_err(unexpected)? {
            TailStep::Replay => {
                if frame.kind == FrameKind::Marker && self.delta_readable {
                    // A state delta marker is part of the changelog, not of the replay; a
                    // batch clock is neither here (nothing appended).
                    self.delta_readable = self.delta.add(at, frame.payload).is_ok();
                }
                self.found
                    .records
                    .add_frame(frame.kind, frame.payload, &mut self.decoder)
                    .map_err(|e| unexpected(e.to_string()))?
            }
            TailStep::Seal => {
                let seal =
                    SealInfo::decode(frame.payload).map_err(|e| unexpected(e.to_string()))?;
                let delta = self.delta.take(at);
                if self.delta_readable && seal.state_keys == Some(delta.keys.len() as u64) {
                    self.found.logged_delta = Some(delta);
                }
                self.found.seal = Some(seal);
            }
            // Read while `epoch` committed: re-read from the source after `epoch`'s end.
            TailStep::ReadAhead => {}
        }
        Ok(())
    }

    /// What was found, or the first frame that cannot follow the checkpoint.
    pub(crate) fn finish(self) -> Result<AfterCheckpointLog, RecoveryError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.tail.read_ahead_frames() > 0 {
            info!(
                epoch = self.epoch + 1,
                frames = self.tail.read_ahead_frames(),
                "the WAL holds frames of epoch {} read while epoch {} committed: they are re-read from the source",
                self.epoch + 1,
                self.epoch
            );
        }
        Ok(self.found)
    }
}

/// Bytes a frame takes in the log (for progress).
pub(crate) fn frame_bytes(frame: FrameRef<'_>) -> u64 {
    (frame.payload.len() + FRAME_HEADER_LEN) as u64
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use tidemark_checkpoint::store::PackedKeys;
    use tidemark_checkpoint::wal::{FrameKind, FrameRef};
    use tidemark_checkpoint::{CheckpointRecord, SyncPolicy, Wal, WalOptions, WalPosition};
    use tidemark_connectors::{Positions, SourceRecord};

    use super::{read_indexed_changelog, AfterCheckpointLog, ChangelogScan, EpochScan};
    use crate::epoch_log::{encode_batch_clock, encode_record, log_state_delta, SealInfo};
    use crate::recovery::{read_changelog, state_position, wal_position, Changelog};
    use tidemark_checkpoint::store::ChangelogStart;

    /// The keys epoch `epoch` adds (`n` of them).
    fn delta(epoch: u64, n: usize) -> PackedKeys {
        let mut p = PackedKeys::default();
        for k in 0..n {
            p.push(
                format!("key-{epoch}-{k}").as_bytes(),
                (epoch * 1000) as i64 + k as i64,
            );
        }
        p
    }

    /// One epoch as the pipeline logs it: a batch clock and `records` records, then (sealed)
    /// its state delta of `keys` keys and its seal. Returns the position after the seal, and
    /// the log's end before the delta (where the committer's changelog index puts it).
    fn log_epoch(
        wal: &mut Wal,
        epoch: u64,
        records: usize,
        keys: usize,
        sealed: bool,
    ) -> (WalPosition, WalPosition) {
        let mut buf = Vec::new();
        encode_batch_clock(epoch as i64 * 10, &mut buf);
        wal.append(FrameKind::Marker, epoch, &buf).unwrap();
        for i in 0..records {
            buf.clear();
            let record = SourceRecord {
                topic: "t".into(),
                partition: 0,
                offset: (epoch * 100 + i as u64) as i64,
                timestamp_ms: Some(1),
                key: None,
                payload: Some(format!("{{\"id\":\"{epoch}-{i}\"}}").into_bytes()),
            };
            encode_record(&record, &mut buf);
            wal.append(FrameKind::Record, epoch, &buf).unwrap();
        }
        if !sealed {
            wal.commit().unwrap();
            return (wal.end(), wal.end());
        }
        let delta_at = wal.end();
        let keys = delta(epoch, keys);
        let n = log_state_delta(&keys, &mut buf, |p| {
            wal.append(FrameKind::Marker, epoch, p).map(|_| ())
        })
        .unwrap();
        let seal = SealInfo {
            start_positions: Positions::new(),
            end_positions: Positions::new(),
            records: records as u64,
            watermark: Some(epoch as i64),
            settings: None,
            state_keys: Some(n),
            run_id: None,
        };
        (wal.seal(epoch, &seal.encode()).unwrap(), delta_at)
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// What a restart takes from the log, comparable: the changelog's deltas and whether it
    /// is whole, and what follows the checkpoint (or the error).
    type Seen = (
        Vec<(u64, WalPosition, PackedKeys, Option<i64>)>,
        bool,
        Result<
            (
                crate::epoch_log::Replay,
                Option<SealInfo>,
                Option<PackedKeys>,
            ),
            String,
        >,
    );

    fn seen(changelog: Changelog, after: Result<AfterCheckpointLog, super::RecoveryError>) -> Seen {
        (
            changelog
                .deltas
                .into_iter()
                .map(|d| {
                    (
                        d.delta.epoch,
                        d.after_seal,
                        d.delta.inserts,
                        d.delta.evict_below,
                    )
                })
                .collect(),
            changelog.complete,
            after
                .map(|a| (a.records, a.seal, a.logged_delta.map(|d| d.keys)))
                .map_err(|e| e.to_string()),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The one pass of the open (both scans fed every frame it visits) reads exactly what
        /// the two readers after the open did (the changelog from the state's position, the
        /// epoch after the checkpoint from the checkpoint's), for any log shape a crash leaves
        /// (the checkpoint's epoch sealed or not, frames read ahead after its seal), any state
        /// lag, and a torn tail anywhere. Without damage, each part is also what was logged.
        /// The changelog read where the checkpoint's index puts each epoch's delta (before the
        /// open, as a restart with an index does) is the pass's changelog too.
        #[test]
        fn the_single_pass_reads_what_the_two_readers_did(
            epochs in proptest::collection::vec((0usize..5, 0usize..40), 1..6),
            checkpoint_back in 0usize..2,
            tail_records in 0usize..4,
            lag in 0usize..6,
            segment_size in 200u64..3000,
            cut in proptest::option::of(any::<proptest::sample::Index>()),
        ) {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("wal");
            let options = WalOptions { segment_size, sync: SyncPolicy::OnSeal };
            let (mut wal, _) = Wal::open(&dir, options, None).unwrap();
            let n = epochs.len() as u64;
            let mut after_seal = vec![WalPosition::default()];
            let mut delta_at = vec![WalPosition::default()];
            for (i, (records, keys)) in epochs.iter().enumerate() {
                let (after, at) = log_epoch(&mut wal, i as u64 + 1, *records, *keys, true);
                after_seal.push(after);
                delta_at.push(at);
            }
            // Checkpoint c = n (its next epoch unsealed) or n - 1 (epoch n sealed, not
            // checkpointed, maybe frames of n + 1 read ahead after its seal).
            let c = n.saturating_sub(checkpoint_back as u64);
            if tail_records > 0 {
                log_epoch(&mut wal, n + 1, tail_records, 0, false);
            }
            drop(wal);
            let s = c.saturating_sub(lag as u64);
            let record = CheckpointRecord {
                epoch: c,
                committed_epoch: c,
                table_version: None,
                watermark: None,
                wal_segment: after_seal[c as usize].segment,
                wal_offset: after_seal[c as usize].offset,
                created_at_ms: 0,
                counts: Default::default(),
                positions: Vec::new(),
                state_epoch: s,
                state_wal_segment: after_seal[s as usize].segment,
                state_wal_offset: after_seal[s as usize].offset,
                changelog_starts: Some(
                    (s + 1..=c)
                        .map(|e| ChangelogStart {
                            epoch: e,
                            segment: delta_at[e as usize].segment,
                            offset: delta_at[e as usize].offset,
                        })
                        .collect(),
                ),
            };
            if let Some(cut) = cut {
                let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
                files.sort();
                let last = files.last().unwrap();
                let len = std::fs::metadata(last).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
                f.set_len(cut.index(len as usize + 1) as u64).unwrap();
            }
            let two = root.path().join("two");
            copy_dir(&dir, &two);
            // The changelog read where the index puts it (before the open, as a restart does).
            let indexed = read_indexed_changelog(&tidemark_fs::std_fs(), &dir, &record)
                .expect("the index lists the changelog's epochs");

            // One pass.
            let mut changelog = ChangelogScan::new(&record);
            let mut after = EpochScan::new(wal_position(&record), c + 1);
            let (_, report) = Wal::open_visiting(
                tidemark_fs::std_fs(),
                &dir,
                options,
                Some(state_position(&record)),
                &mut |at, frame: FrameRef<'_>| {
                    changelog.feed(at, frame);
                    after.feed(at, frame);
                },
            )
            .unwrap();
            let single = seen(changelog.finish(), after.finish());
            let by_index = seen(indexed, Ok(AfterCheckpointLog::default()));
            prop_assert_eq!((&by_index.0, by_index.1), (&single.0, single.1));

            // Two readers after the open, as recovery read before.
            let (wal, report2) = Wal::open(&two, options, Some(state_position(&record))).unwrap();
            prop_assert_eq!(report.frames, report2.frames);
            let log = read_changelog(&record, wal.reader(state_position(&record))).unwrap();
            let mut scan = EpochScan::new(wal_position(&record), c + 1);
            for item in wal.reader(wal_position(&record)) {
                let (at, frame) = item.unwrap();
                scan.feed(at, frame.as_ref());
            }
            let double = seen(log, scan.finish());
            prop_assert_eq!(&single, &double);

            if cut.is_none() {
                let (deltas, complete, after) = single;
                prop_assert!(complete);
                let want: Vec<(u64, PackedKeys)> =
                    (s + 1..=c).map(|e| (e, delta(e, epochs[e as usize - 1].1))).collect();
                let got: Vec<(u64, PackedKeys)> = deltas.into_iter().map(|(e, _, k, _)| (e, k)).collect();
                prop_assert_eq!(got, want);
                let (records, seal, logged) = after.unwrap();
                if c < n {
                    let (r, k) = epochs[c as usize];
                    prop_assert_eq!(records.len(), r);
                    prop_assert_eq!(seal.map(|s| s.records), Some(r as u64));
                    prop_assert_eq!(logged, Some(delta(c + 1, k)));
                } else {
                    prop_assert_eq!(records.len(), tail_records);
                    prop_assert!(seal.is_none() && logged.is_none());
                }
            }
        }
    }

    /// A log of three sealed epochs (5 records, 3 keys each) and a checkpoint at 3 whose state
    /// is synced through 1, with its changelog index.
    fn indexed_log(dir: &Path) -> CheckpointRecord {
        let options = WalOptions {
            segment_size: 1 << 20,
            sync: SyncPolicy::OnSeal,
        };
        let (mut wal, _) = Wal::open(dir, options, None).unwrap();
        let mut after_seal = vec![WalPosition::default()];
        let mut delta_at = vec![WalPosition::default()];
        for e in 1..=3 {
            let (after, at) = log_epoch(&mut wal, e, 5, 3, true);
            after_seal.push(after);
            delta_at.push(at);
        }
        CheckpointRecord {
            epoch: 3,
            committed_epoch: 3,
            table_version: None,
            watermark: None,
            wal_segment: after_seal[3].segment,
            wal_offset: after_seal[3].offset,
            created_at_ms: 0,
            counts: Default::default(),
            positions: Vec::new(),
            state_epoch: 1,
            state_wal_segment: after_seal[1].segment,
            state_wal_offset: after_seal[1].offset,
            changelog_starts: Some(
                (2..=3)
                    .map(|e| ChangelogStart {
                        epoch: e,
                        segment: delta_at[e as usize].segment,
                        offset: delta_at[e as usize].offset,
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn a_right_index_reads_the_whole_changelog() {
        let root = tempfile::tempdir().unwrap();
        let record = indexed_log(root.path());
        let log = read_indexed_changelog(&tidemark_fs::std_fs(), root.path(), &record).unwrap();
        assert!(log.complete);
        let got: Vec<_> = log
            .deltas
            .into_iter()
            .map(|d| (d.delta.epoch, d.delta.inserts))
            .collect();
        assert_eq!(got, vec![(2, delta(2, 3)), (3, delta(3, 3))]);
    }

    /// A read that fails with EIO while the index is followed (a bad sector, a device that
    /// fails for a moment) gives an incomplete changelog, never a shorter complete one, so the
    /// restart scans the log instead; that scan, the device well again, reads every delta.
    /// Each read the index read makes is failed in turn (one per run), so a failure while the
    /// first epoch's delta is read and one after it was read whole are both covered.
    #[test]
    fn a_read_error_while_the_index_is_followed_gives_an_incomplete_changelog() {
        use tidemark_fs::{Fault, FaultFs, FaultKind, Op};
        let deltas = |log: Changelog| -> Vec<(u64, PackedKeys)> {
            log.deltas
                .into_iter()
                .map(|d| (d.delta.epoch, d.delta.inserts))
                .collect()
        };
        let root = tempfile::tempdir().unwrap();
        let record = indexed_log(root.path());
        let want = read_indexed_changelog(&tidemark_fs::std_fs(), root.path(), &record).unwrap();
        assert!(want.complete);
        let want = deltas(want);
        // How many epochs' deltas were read whole before each failed read.
        let mut whole_before_failure = Vec::new();
        for nth in 1.. {
            let fs = FaultFs::new(tidemark_fs::std_fs());
            fs.arm(Fault {
                nth,
                ..Fault::once(Op::Read, FaultKind::Eio)
            });
            let shared: super::SharedFs = std::sync::Arc::new(fs.clone());
            let log = read_indexed_changelog(&shared, root.path(), &record).unwrap();
            if fs.injected() == 0 {
                // Fewer reads than `nth`: every read has been failed once.
                assert!(log.complete);
                break;
            }
            assert!(
                !log.complete,
                "read {nth} failed, yet the changelog is complete"
            );
            whole_before_failure.push(log.deltas.len());
            // The scan the restart falls back to, through the same (now well) device.
            let mut scan = ChangelogScan::new(&record);
            for item in
                super::WalReader::with_fs(shared.clone(), root.path(), state_position(&record))
            {
                let (at, frame) = item.unwrap();
                scan.feed(at, frame.as_ref());
            }
            let scanned = scan.finish();
            assert!(scanned.complete);
            assert_eq!(deltas(scanned), want, "after a failed read {nth}");
        }
        assert!(
            whole_before_failure.contains(&0) && whole_before_failure.contains(&1),
            "reads failed while epoch 2's delta and then epoch 3's were read: {whole_before_failure:?}"
        );
    }

    /// An index that does not list exactly the epochs the state lacks is not used (the log is
    /// scanned instead): one missing, one too many, out of order, or none at all.
    #[test]
    fn an_index_not_listing_the_changelog_epochs_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let record = indexed_log(root.path());
        let fs = tidemark_fs::std_fs();
        let starts = record.changelog_starts.clone().unwrap();
        let with = |starts: Option<Vec<ChangelogStart>>| CheckpointRecord {
            changelog_starts: starts,
            ..record.clone()
        };
        assert!(
            read_indexed_changelog(&fs, root.path(), &with(Some(starts[1..].to_vec()))).is_none()
        );
        let mut more = starts.clone();
        more.push(ChangelogStart {
            epoch: 4,
            ..starts[1]
        });
        assert!(read_indexed_changelog(&fs, root.path(), &with(Some(more))).is_none());
        let swapped = vec![starts[1], starts[0]];
        assert!(read_indexed_changelog(&fs, root.path(), &with(Some(swapped))).is_none());
        assert!(read_indexed_changelog(&fs, root.path(), &with(None)).is_none());
    }

    /// An index entry that points at anything but the epoch's delta and seal (its records,
    /// the other epoch's delta, the middle of a frame, past the log's end) gives an incomplete
    /// changelog, never a wrong one: the caller then scans.
    #[test]
    fn an_index_pointing_elsewhere_gives_an_incomplete_changelog() {
        let root = tempfile::tempdir().unwrap();
        let record = indexed_log(root.path());
        let fs = tidemark_fs::std_fs();
        let starts = record.changelog_starts.clone().unwrap();
        let first_record_of_2 = WalPosition {
            segment: starts[0].segment,
            offset: 0,
        };
        let mut records_of_2 = None;
        for item in tidemark_checkpoint::WalReader::new(root.path(), first_record_of_2) {
            let (at, frame) = item.unwrap();
            if frame.epoch == 2 && frame.kind == FrameKind::Record {
                records_of_2 = Some(at);
                break;
            }
        }
        let records_of_2 = records_of_2.unwrap();
        let moved = |i: usize, segment: u64, offset: u64| {
            let mut s = starts.clone();
            s[i].segment = segment;
            s[i].offset = offset;
            CheckpointRecord {
                changelog_starts: Some(s),
                ..record.clone()
            }
        };
        for (what, bad) in [
            (
                "its records",
                moved(0, records_of_2.segment, records_of_2.offset),
            ),
            (
                "the other epoch's delta",
                moved(0, starts[1].segment, starts[1].offset),
            ),
            (
                "the middle of a frame",
                moved(1, starts[1].segment, starts[1].offset + 3),
            ),
            ("past the end", moved(1, starts[1].segment + 5, 0)),
        ] {
            let log = read_indexed_changelog(&fs, root.path(), &bad).unwrap();
            assert!(
                !log.complete,
                "an index pointing at {what} must not give a whole changelog"
            );
        }
    }
}
