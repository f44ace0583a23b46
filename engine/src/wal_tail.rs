//! What the WAL may hold after the newest checkpoint `c`, frame by frame, as pure logic (the
//! recovery scan feeds it each frame's epoch and kind; its shapes are tested on their own).
//!
//! With pipelined epochs ([`crate::read_ahead`]) epoch `c+2` is read and logged while `c+1`
//! commits, and is sealed only after `c+1`'s checkpoint. So after checkpoint `c` the log holds,
//! in order: frames of `c+1` (records, batch clocks, its state delta), maybe `SEAL(c+1)`, and
//! only after that seal, maybe frames of `c+2` (records, batch clocks, a state delta whose seal
//! was not written). Never `SEAL(c+2)` (that would need checkpoint `c+1`), never a frame of `c+1`
//! after its seal, never an epoch out of that order. The frames of `c+2` are not replayed:
//! whatever recovery does with `c+1` (redo it, or write its missing checkpoint), the next epoch
//! starts at `SEAL(c+1)`'s end positions and re-reads them from the source.

/// A WAL frame's kind as the scan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailFrame {
    /// A record, a batch clock or a state delta frame.
    Data,
    /// A `SEAL`.
    Seal,
}

/// What to do with one frame after the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailStep {
    /// A frame of `c+1` before its seal: replayed.
    Replay,
    /// `SEAL(c+1)`.
    Seal,
    /// A frame of `c+2` logged while `c+1` committed: not replayed (re-read from the source).
    ReadAhead,
}

/// The scan of the WAL after checkpoint `c` (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailScan {
    /// `c+1`.
    epoch: u64,
    sealed: bool,
    read_ahead: u64,
}

impl TailScan {
    /// A scan of the frames after checkpoint `epoch - 1`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            sealed: false,
            read_ahead: 0,
        }
    }

    /// The next frame, of `epoch` and `kind`: what to do with it, or why the log cannot follow
    /// this checkpoint.
    pub fn frame(&mut self, epoch: u64, kind: TailFrame) -> Result<TailStep, String> {
        let e = self.epoch;
        match (epoch, kind) {
            (x, TailFrame::Data) if x == e && !self.sealed => Ok(TailStep::Replay),
            (x, TailFrame::Seal) if x == e && !self.sealed => {
                self.sealed = true;
                Ok(TailStep::Seal)
            }
            (x, _) if x == e => Err(format!("frame of epoch {e} after SEAL({e})")),
            (x, TailFrame::Data) if x == e + 1 && self.sealed => {
                self.read_ahead += 1;
                Ok(TailStep::ReadAhead)
            }
            (x, TailFrame::Seal) if x == e + 1 && self.sealed => Err(format!(
                "SEAL({x}) while epoch {e} has no checkpoint: the WAL does not belong to this \
                 checkpoint store"
            )),
            (x, _) if x == e + 1 => Err(format!("frame of epoch {x} before SEAL({e})")),
            (x, _) => Err(format!(
                "frame of epoch {x} after checkpoint {}: the WAL does not belong to this \
                 checkpoint store",
                e - 1
            )),
        }
    }

    /// True once `SEAL(c+1)` was seen.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    /// Frames of `c+2` seen (logged while `c+1` committed).
    pub fn read_ahead_frames(&self) -> u64 {
        self.read_ahead
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{TailFrame, TailScan, TailStep};

    /// The frames a pipelined run leaves after checkpoint `c` (epoch `e = c+1`): `n1` frames
    /// of `e`, its seal if `sealed`, then `n2` frames of `e+1` read while `e` committed.
    fn pipelined(e: u64, n1: usize, sealed: bool, n2: usize) -> Vec<(u64, TailFrame)> {
        let mut v = vec![(e, TailFrame::Data); n1];
        if sealed {
            v.push((e, TailFrame::Seal));
            v.extend(vec![(e + 1, TailFrame::Data); n2]);
        }
        v
    }

    fn scan(e: u64, frames: &[(u64, TailFrame)]) -> Result<(TailScan, Vec<TailStep>), String> {
        let mut s = TailScan::new(e);
        let steps = frames
            .iter()
            .map(|(epoch, kind)| s.frame(*epoch, *kind))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((s, steps))
    }

    #[test]
    fn the_shapes_of_a_crash_while_an_epoch_commits_and_the_next_is_read() {
        // Frames of e+1 after SEAL(e): e's commit was in flight (or landed, checkpoint not).
        let (s, steps) = scan(5, &pipelined(5, 3, true, 2)).unwrap();
        assert!(s.sealed());
        assert_eq!(s.read_ahead_frames(), 2);
        assert_eq!(
            steps,
            [
                TailStep::Replay,
                TailStep::Replay,
                TailStep::Replay,
                TailStep::Seal,
                TailStep::ReadAhead,
                TailStep::ReadAhead
            ]
        );
        // The read-ahead epoch's state delta without its seal (a crash inside the seal).
        assert!(scan(5, &[(5, TailFrame::Seal), (6, TailFrame::Data)]).is_ok());
    }

    #[test]
    fn shapes_no_pipelined_run_leaves_are_refused() {
        let bad: [&[(u64, TailFrame)]; 6] = [
            // Two sealed epochs after one checkpoint: the next is sealed only after the
            // committing one's checkpoint.
            &[
                (5, TailFrame::Seal),
                (6, TailFrame::Data),
                (6, TailFrame::Seal),
            ],
            // A frame of e after its seal, also after the read-ahead's.
            &[(5, TailFrame::Seal), (5, TailFrame::Data)],
            &[
                (5, TailFrame::Seal),
                (6, TailFrame::Data),
                (5, TailFrame::Data),
            ],
            // The next epoch before e's seal.
            &[(5, TailFrame::Data), (6, TailFrame::Data)],
            // Two epochs ahead, or behind the checkpoint.
            &[(5, TailFrame::Seal), (7, TailFrame::Data)],
            &[(4, TailFrame::Data)],
        ];
        for frames in bad {
            assert!(scan(5, frames).is_err(), "{frames:?} accepted");
        }
    }

    proptest! {
        /// A crash at any frame of a pipelined run (any prefix of its log) leaves a tail the
        /// scan accepts: exactly the frames of `c+1` before the cut are replayed, the seal is
        /// seen iff it was written, and the read-ahead frames are counted, never replayed.
        #[test]
        fn every_cut_of_a_pipelined_log_is_read_exactly(
            e in 1u64..1000, n1 in 0usize..20, sealed: bool, n2 in 0usize..20, cut in 0usize..45,
        ) {
            let log = pipelined(e, n1, sealed, n2);
            let cut = cut.min(log.len());
            let (s, steps) = scan(e, &log[..cut]).unwrap();
            let replayed = steps.iter().filter(|s| **s == TailStep::Replay).count();
            prop_assert_eq!(replayed, cut.min(n1));
            prop_assert_eq!(s.sealed(), sealed && cut > n1);
            prop_assert_eq!(s.read_ahead_frames() as usize, cut.saturating_sub(n1 + 1));
        }

        /// Any frame of another epoch inserted anywhere in a valid log is refused or read as
        /// part of the shape (never silently replayed as `c+1`).
        #[test]
        fn a_foreign_frame_never_joins_the_replay(
            e in 2u64..1000, n1 in 0usize..10, n2 in 0usize..10, at in 0usize..25,
            delta in prop::sample::select(vec![-1i64, 2, 3]), seal: bool,
        ) {
            let mut log = pipelined(e, n1, true, n2);
            let at = at.min(log.len());
            let kind = if seal { TailFrame::Seal } else { TailFrame::Data };
            log.insert(at, ((e as i64 + delta) as u64, kind));
            prop_assert!(scan(e, &log).is_err());
        }
    }
}
