//! The epoch protocol's recovery decision, as pure logic with no I/O (ARCHITECTURE.md,
//! "Recovery"). The engine gathers the three facts — checkpoint `c` with its `t`, whether the
//! WAL holds `SEAL(c+1)`, and the table's txn version `v` — and this module says what to do.
//!
//! Invariants it keeps (checked exhaustively in the tests):
//! - it never asks to commit an epoch the table already holds (`RedoEpoch(e)` only if `e > v`);
//! - it never continues past a table it does not explain (`v < t`, `v > c+1`, `t < v <= c`
//!   all refuse, naming the numbers);
//! - the next epoch it hands out is always above `v`.

use std::fmt;

/// What recovery found on start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryFacts {
    /// Epoch of the newest checkpoint (0: none).
    pub checkpoint_epoch: u64,
    /// Newest epoch that made a Delta commit, as recorded in that checkpoint (`t <= c`).
    pub committed_epoch: u64,
    /// Whether the WAL holds `SEAL(c+1)`.
    pub next_sealed: bool,
    /// The table's txn version for the pipeline (0: none).
    pub table_txn: u64,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryDecision {
    /// No seal after the checkpoint: replay the unsealed WAL records of `epoch` through dedup
    /// and keep reading the source after them.
    ResumeEpoch {
        /// The open epoch (`c+1`).
        epoch: u64,
    },
    /// `SEAL(c+1)` and the table holds `c+1`: the commit landed, the checkpoint did not. Replay
    /// the epoch's WAL records through dedup and write checkpoint `epoch`; do not commit.
    WriteMissingCheckpoint {
        /// The epoch (`c+1`).
        epoch: u64,
    },
    /// `SEAL(c+1)` and the table is at `t`: redo epoch `epoch` from its WAL records (same
    /// records, same result) and commit it.
    RedoEpoch {
        /// The epoch (`c+1`).
        epoch: u64,
    },
    /// The table is behind the checkpoint (restored, lagging replica, damage): refuse unless a
    /// rewind to a retained checkpoint with `t <= table_txn` is asked for.
    TableBehind {
        /// `v`.
        table_txn: u64,
        /// `t`.
        committed_epoch: u64,
    },
    /// The table holds epochs this checkpoint cannot explain: another writer uses the pipeline
    /// id, or the store belongs to another table. Refuse.
    ForeignProgress {
        /// `v`.
        table_txn: u64,
        /// `c`.
        checkpoint_epoch: u64,
        /// `t`.
        committed_epoch: u64,
    },
    /// The checkpoint itself is inconsistent (`t > c`). Refuse.
    CorruptCheckpoint {
        /// `c`.
        checkpoint_epoch: u64,
        /// `t`.
        committed_epoch: u64,
    },
}

impl fmt::Display for RecoveryDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ResumeEpoch { epoch } => write!(f, "no seal after the checkpoint: replay the unsealed WAL records and continue epoch {epoch}"),
            Self::WriteMissingCheckpoint { epoch } => write!(f, "epoch {epoch} is sealed and in the table but not checkpointed: rebuild its state from the WAL and write checkpoint {epoch}"),
            Self::RedoEpoch { epoch } => write!(f, "epoch {epoch} is sealed but not in the table: redo it from the WAL"),
            Self::TableBehind { table_txn, committed_epoch } => write!(f, "the table's txn version {table_txn} is behind the checkpoint's committed epoch {committed_epoch}: refusing to start (rewind to a checkpoint whose committed epoch is <= {table_txn} to replay from there)"),
            Self::ForeignProgress { table_txn, checkpoint_epoch, committed_epoch } => write!(f, "the table's txn version {table_txn} cannot follow checkpoint {checkpoint_epoch} (committed epoch {committed_epoch}): another writer uses this pipeline id, or the checkpoint store belongs to another table; refusing to start"),
            Self::CorruptCheckpoint { checkpoint_epoch, committed_epoch } => write!(f, "checkpoint {checkpoint_epoch} claims committed epoch {committed_epoch} > itself: the store is corrupt; refusing to start"),
        }
    }
}

/// Decides recovery from `facts`.
pub fn decide(facts: RecoveryFacts) -> RecoveryDecision {
    let RecoveryFacts {
        checkpoint_epoch: c,
        committed_epoch: t,
        next_sealed,
        table_txn: v,
    } = facts;
    if t > c {
        return RecoveryDecision::CorruptCheckpoint {
            checkpoint_epoch: c,
            committed_epoch: t,
        };
    }
    if v < t {
        return RecoveryDecision::TableBehind {
            table_txn: v,
            committed_epoch: t,
        };
    }
    let next = c + 1;
    match (next_sealed, v) {
        (true, v) if v == next => RecoveryDecision::WriteMissingCheckpoint { epoch: next },
        (_, v) if v == t => {
            if next_sealed {
                RecoveryDecision::RedoEpoch { epoch: next }
            } else {
                RecoveryDecision::ResumeEpoch { epoch: next }
            }
        }
        _ => RecoveryDecision::ForeignProgress {
            table_txn: v,
            checkpoint_epoch: c,
            committed_epoch: t,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_facts() -> impl Iterator<Item = RecoveryFacts> {
        (0..7u64).flat_map(|c| {
            (0..9u64).flat_map(move |t| {
                [false, true].into_iter().flat_map(move |next_sealed| {
                    (0..10u64).map(move |v| RecoveryFacts {
                        checkpoint_epoch: c,
                        committed_epoch: t,
                        next_sealed,
                        table_txn: v,
                    })
                })
            })
        })
    }

    #[test]
    fn every_case_of_the_architecture_is_decided_as_written() {
        for f in all_facts() {
            let (c, t, s, v) = (
                f.checkpoint_epoch,
                f.committed_epoch,
                f.next_sealed,
                f.table_txn,
            );
            let d = decide(f);
            let expected = if t > c {
                RecoveryDecision::CorruptCheckpoint {
                    checkpoint_epoch: c,
                    committed_epoch: t,
                }
            } else if v < t {
                RecoveryDecision::TableBehind {
                    table_txn: v,
                    committed_epoch: t,
                }
            } else if s && v == c + 1 {
                RecoveryDecision::WriteMissingCheckpoint { epoch: c + 1 }
            } else if s && v == t {
                RecoveryDecision::RedoEpoch { epoch: c + 1 }
            } else if !s && v == t {
                RecoveryDecision::ResumeEpoch { epoch: c + 1 }
            } else {
                RecoveryDecision::ForeignProgress {
                    table_txn: v,
                    checkpoint_epoch: c,
                    committed_epoch: t,
                }
            };
            assert_eq!(d, expected, "{f:?}");
        }
    }

    #[test]
    fn no_decision_writes_an_epoch_the_table_holds_or_numbers_below_it() {
        for f in all_facts() {
            match decide(f) {
                RecoveryDecision::RedoEpoch { epoch } | RecoveryDecision::ResumeEpoch { epoch } => {
                    assert!(epoch > f.table_txn, "{f:?} would rewrite epoch {epoch}")
                }
                RecoveryDecision::WriteMissingCheckpoint { epoch } => {
                    assert_eq!(
                        epoch, f.table_txn,
                        "{f:?}: only a landed commit is checkpointed"
                    )
                }
                refusal => assert!(!refusal.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn refusals_name_both_numbers() {
        let d = decide(RecoveryFacts {
            checkpoint_epoch: 9,
            committed_epoch: 7,
            next_sealed: false,
            table_txn: 4,
        });
        let msg = d.to_string();
        assert!(
            msg.contains("txn version 4") && msg.contains("committed epoch 7"),
            "{msg}"
        );
    }
}
