//! The epoch protocol's start decision, as pure logic with no I/O (ARCHITECTURE.md,
//! "Recovery"). Every start — a first start, a restart after a crash, a lost store, checkpoints
//! off, a rewind, a damaged WAL — gathers [`StartFacts`] and asks [`decide`] what to do; the
//! engine's recovery only carries the answer out, and `tidemark status` shows the same answer.
//!
//! Invariants it keeps (checked against hand-written tables and exhaustively in the tests):
//! - it never asks to commit an epoch the table already holds (`RedoEpoch(e)` and
//!   `ResumeEpoch(e)` only if `e > v`; `WriteMissingCheckpoint(e)` only if `e == v`);
//! - it never continues past a table it does not explain (`v < t` without a valid rewind,
//!   `v > c+1`, `t < v <= c`, a commit of `c+1` that does not start where `c` ends: refuse);
//! - it never continues past WAL damage that held records the table does not hold, unless the
//!   operator accepted re-reading them from the source;
//! - it never continues from a checkpoint whose dedup state it cannot restore exactly (the
//!   store's synced state plus the WAL's changelog after it): without the whole changelog it
//!   resumes from the table, which rebuilds the state from the rows;
//! - the next epoch it hands out is always above `v`.

use std::fmt;

/// What the checkpoint store held at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFacts {
    /// The store opened and holds checkpoint `epoch` (`c`) with its committed epoch (`t`).
    Checkpoint {
        /// `c`.
        epoch: u64,
        /// `t`: the newest epoch that made a Delta commit, as recorded in that checkpoint.
        committed_epoch: u64,
    },
    /// The store opened and holds no checkpoint yet (a first start, or a crash before the
    /// first checkpoint): like a checkpoint 0 with committed epoch 0.
    Empty,
    /// The store is gone (the state directory was deleted while the table has commits or the
    /// WAL has frames) or corrupt (moved aside): the table is the only truth.
    Lost,
}

impl StoreFacts {
    /// How a start sees its store, from what the store held (`checkpoint`: its newest
    /// checkpoint's `c` and `t`), whether it was `replaced` (corrupt or foreign, moved aside),
    /// whether it `existed` before this start, and whether anything else shows the pipeline ran
    /// before (`ran_before`: table commits of the pipeline or WAL frames). A store that is
    /// missing while the pipeline ran before was lost (the state directory was deleted).
    pub fn classify(
        checkpoint: Option<(u64, u64)>,
        replaced: bool,
        existed: bool,
        ran_before: bool,
    ) -> Self {
        match checkpoint {
            _ if replaced || (!existed && ran_before) => Self::Lost,
            Some((epoch, committed_epoch)) => Self::Checkpoint {
                epoch,
                committed_epoch,
            },
            None => Self::Empty,
        }
    }
}

/// A `--rewind-to` request and what the store holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewindFacts {
    /// The requested checkpoint epoch.
    pub to: u64,
    /// That checkpoint's committed epoch, if it is retained.
    pub target_committed_epoch: Option<u64>,
}

/// Everything the start decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFacts {
    /// `checkpoint.enabled`: false means no WAL and no checkpoints; the table alone says where
    /// to resume.
    pub checkpoints: bool,
    /// The checkpoint store.
    pub store: StoreFacts,
    /// The WAL holds `SEAL(c+1)`.
    pub next_sealed: bool,
    /// The WAL holds frames after the checkpoint (records of `c+1`, sealed or not).
    pub wal_has_frames: bool,
    /// The table's txn version for the pipeline (`v`, 0: none).
    pub table_txn: u64,
    /// The table's commit of `c+1` (when `v == c+1`) starts where checkpoint `c` ends: it
    /// continues this store's history (its seal was lost, its commit landed).
    pub table_continues_checkpoint: bool,
    /// The WAL was damaged before its end; its damaged part (moved aside) held frames of
    /// epochs up to this one.
    pub wal_damage_newest_epoch: Option<u64>,
    /// The operator accepted re-reading from the source what a damaged WAL held.
    pub accept_wal_damage: bool,
    /// A `--rewind-to` request.
    pub rewind: Option<RewindFacts>,
    /// The WAL holds the whole changelog of the checkpoint's dedup state: the state deltas of
    /// every epoch after the store's synced `state_epoch` up to `c` (trivially true when the
    /// state is synced through `c`, with dedup off, or without a checkpoint).
    pub state_changelog_complete: bool,
}

/// Why a start resumes from the table's own progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FromTableReason {
    /// `checkpoint.enabled = false`.
    CheckpointsOff,
    /// The checkpoint store is gone or corrupt.
    StoreLost,
    /// The table holds `c+1` and it continues checkpoint `c`, but the WAL lost its seal (WAL
    /// damage or loss after the commit landed).
    SealLostCommitLanded,
    /// A rewind: the table is behind the store, restarting from the table.
    Rewind,
    /// The store holds no checkpoint and the WAL nothing, but the table has commits (the
    /// pipeline ran with checkpoints off before, or a crash came before the first checkpoint
    /// and the WAL was set aside).
    NoCheckpointYet,
    /// The checkpoint's dedup state lags its epoch (its later deltas only in the WAL) and the
    /// WAL no longer holds all of them (damage, lost segments): the state is rebuilt from the
    /// table's rows instead.
    StateChangelogLost,
    /// A worker of a pipeline shared by several (see [`decide_for_worker`]).
    GroupWorker,
}

/// What to do on start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartCase {
    /// Nothing anywhere: epoch 1 from the start of every partition.
    Fresh,
    /// No seal after the checkpoint: replay the unsealed WAL records of `epoch` (`c+1`), seal
    /// and commit them, continue after them.
    ResumeEpoch {
        /// `c+1`.
        epoch: u64,
    },
    /// `SEAL(c+1)` and the table is at `t`: redo `epoch` from its WAL records and commit it.
    RedoEpoch {
        /// `c+1`.
        epoch: u64,
    },
    /// `SEAL(c+1)` and the table holds `c+1`: the commit landed, the checkpoint did not.
    /// Write checkpoint `epoch` with the counts of the epoch's commit and (with dedup) the state
    /// delta its WAL logged before the seal, when the commit is the sealing run's own; else
    /// replay the epoch's records through dedup to rebuild both. Do not commit.
    WriteMissingCheckpoint {
        /// `c+1`.
        epoch: u64,
    },
    /// Resume from the table's newest commit of the pipeline (epoch `table_txn`): positions
    /// and dedup state come from the table; the WAL is set aside.
    FromTable {
        /// Why.
        reason: FromTableReason,
        /// `v`.
        table_txn: u64,
    },
    /// Refuse to start.
    Refuse(Refusal),
}

/// Why a start is refused; each names its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The checkpoint claims a committed epoch above itself (`t > c`).
    CorruptCheckpoint {
        /// `c`.
        checkpoint_epoch: u64,
        /// `t`.
        committed_epoch: u64,
    },
    /// The table is behind the checkpoint (`v < t`): restored, lagging replica, damage.
    TableBehind {
        /// `v`.
        table_txn: u64,
        /// `t`.
        committed_epoch: u64,
    },
    /// The table holds epochs this checkpoint cannot explain.
    ForeignProgress {
        /// `v`.
        table_txn: u64,
        /// `c`.
        checkpoint_epoch: u64,
        /// `t`.
        committed_epoch: u64,
    },
    /// The WAL was damaged before its end and held epochs the table does not hold.
    WalDamaged {
        /// Newest epoch the damaged part held.
        newest_epoch: u64,
        /// `v`.
        table_txn: u64,
    },
    /// `--rewind-to` names a checkpoint the store does not retain.
    RewindTargetMissing {
        /// The requested epoch.
        to: u64,
    },
    /// `--rewind-to` names a checkpoint whose committed epoch the table does not hold.
    RewindTargetAhead {
        /// The requested epoch.
        to: u64,
        /// Its committed epoch.
        committed_epoch: u64,
        /// `v`.
        table_txn: u64,
    },
    /// `--rewind-to` was given but the table is not behind the store.
    RewindNotNeeded {
        /// The requested epoch.
        to: u64,
        /// `v`.
        table_txn: u64,
        /// `t`.
        committed_epoch: u64,
    },
    /// `--rewind-to` needs retained checkpoints, and there are none (lost store, checkpoints
    /// off).
    RewindWithoutStore {
        /// The requested epoch.
        to: u64,
    },
}

impl StartCase {
    /// A short name for logs, the run summary and `status --json`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::ResumeEpoch { .. } => "resume_epoch",
            Self::RedoEpoch { .. } => "redo_epoch",
            Self::WriteMissingCheckpoint { .. } => "write_missing_checkpoint",
            Self::FromTable { reason, .. } => match reason {
                FromTableReason::CheckpointsOff => "table_only",
                FromTableReason::StoreLost => "from_table",
                FromTableReason::SealLostCommitLanded => "seal_lost_commit_landed",
                FromTableReason::Rewind => "rewind",
                FromTableReason::NoCheckpointYet => "no_checkpoint_yet",
                FromTableReason::StateChangelogLost => "state_changelog_lost",
                FromTableReason::GroupWorker => "group_worker",
            },
            Self::Refuse(_) => "refused",
        }
    }
}

impl fmt::Display for StartCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fresh => write!(f, "nothing committed or logged yet: start epoch 1 from the start of every partition"),
            Self::ResumeEpoch { epoch } => write!(f, "no seal after the checkpoint: replay the unsealed WAL records and continue epoch {epoch}"),
            Self::RedoEpoch { epoch } => write!(f, "epoch {epoch} is sealed but not in the table: redo it from the WAL"),
            Self::WriteMissingCheckpoint { epoch } => write!(f, "epoch {epoch} is sealed and in the table but not checkpointed: rebuild its state from the WAL and write checkpoint {epoch}"),
            Self::FromTable { reason, table_txn } => match reason {
                FromTableReason::CheckpointsOff => write!(f, "checkpoints are off: resume from the table's newest Tidemark commit (epoch {table_txn})"),
                FromTableReason::StoreLost => write!(f, "the checkpoint store is lost: resume from the table's newest Tidemark commit (epoch {table_txn}) and rebuild state from the table"),
                FromTableReason::SealLostCommitLanded => write!(f, "epoch {table_txn} is in the table and continues the checkpoint, but its WAL seal is lost: resume from the table's newest commit and rebuild state from the table"),
                FromTableReason::Rewind => write!(f, "rewind: restart from the table's progress at epoch {table_txn}"),
                FromTableReason::NoCheckpointYet => write!(f, "no checkpoint yet and nothing in the WAL, but the table holds epoch {table_txn}: resume from the table"),
                FromTableReason::StateChangelogLost => write!(f, "the WAL lost part of the dedup state's changelog the checkpoint needs: resume from the table's newest Tidemark commit (epoch {table_txn}) and rebuild state from the table"),
                FromTableReason::GroupWorker => write!(f, "a worker of a shared pipeline: resume each assigned partition at the table's claim of it (whichever worker wrote it), continuing this worker's epochs after {table_txn}; the WAL's records are re-read from Kafka"),
            },
            Self::Refuse(r) => write!(f, "{r}"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::CorruptCheckpoint { checkpoint_epoch, committed_epoch } => write!(f, "checkpoint {checkpoint_epoch} claims committed epoch {committed_epoch} > itself: the store is corrupt; refusing to start"),
            Self::TableBehind { table_txn, committed_epoch } => write!(f, "the table's txn version {table_txn} is behind the checkpoint's committed epoch {committed_epoch}: refusing to start (rewind to a checkpoint whose committed epoch is <= {table_txn} to replay from there)"),
            Self::ForeignProgress { table_txn, checkpoint_epoch, committed_epoch } => write!(f, "the table's txn version {table_txn} cannot follow checkpoint {checkpoint_epoch} (committed epoch {committed_epoch}): another writer uses this pipeline id, or the checkpoint store belongs to another table; refusing to start"),
            Self::WalDamaged { newest_epoch, table_txn } => write!(f, "the WAL is damaged before its end and its damaged part held epochs up to {newest_epoch}, but the table's txn version is {table_txn}: refusing to start (the damaged segments were moved aside, not deleted; start with --accept-wal-damage to re-read what they held from Kafka at the checkpoint's positions)"),
            Self::RewindTargetMissing { to } => write!(f, "--rewind-to {to}: no retained checkpoint of epoch {to}"),
            Self::RewindTargetAhead { to, committed_epoch, table_txn } => write!(f, "--rewind-to {to}: checkpoint {to} has committed epoch {committed_epoch} but the table's txn version is {table_txn}; pick one whose committed epoch is <= {table_txn}"),
            Self::RewindNotNeeded { to, table_txn, committed_epoch } => write!(f, "--rewind-to {to} was given but the table is not behind the checkpoint (txn version {table_txn}, committed epoch {committed_epoch}); start without it"),
            Self::RewindWithoutStore { to } => write!(f, "--rewind-to {to}: there are no retained checkpoints (the store is lost or checkpoints are off); start without it"),
        }
    }
}

/// The start of a worker of a pipeline shared by several, whatever its state directory holds:
/// its partitions may have moved since it wrote its WAL, so it resumes from the table, where
/// the claims say where each partition stands (see `tidemark_connectors::partition_claims`).
/// Whatever its WAL holds was either committed (the claims include it) or not (re-read from
/// Kafka): nothing is lost or doubled, and a stale sealed epoch is never redone.
pub fn decide_for_worker(facts: StartFacts) -> StartCase {
    StartCase::FromTable {
        reason: FromTableReason::GroupWorker,
        table_txn: facts.table_txn,
    }
}

/// Decides what a start does from `facts`.
pub fn decide(facts: StartFacts) -> StartCase {
    match decide_from_checkpoint(facts) {
        StartCase::Fresh
        | StartCase::ResumeEpoch { .. }
        | StartCase::RedoEpoch { .. }
        | StartCase::WriteMissingCheckpoint { .. }
            if !facts.state_changelog_complete =>
        {
            StartCase::FromTable {
                reason: FromTableReason::StateChangelogLost,
                table_txn: facts.table_txn,
            }
        }
        case => case,
    }
}

/// [`decide`] before the dedup state's changelog is considered.
fn decide_from_checkpoint(facts: StartFacts) -> StartCase {
    let v = facts.table_txn;
    let refuse = StartCase::Refuse;
    if !facts.checkpoints || facts.store == StoreFacts::Lost {
        if let Some(r) = facts.rewind {
            return refuse(Refusal::RewindWithoutStore { to: r.to });
        }
        let reason = if facts.checkpoints {
            FromTableReason::StoreLost
        } else {
            FromTableReason::CheckpointsOff
        };
        return StartCase::FromTable {
            reason,
            table_txn: v,
        };
    }
    let (c, t) = match facts.store {
        StoreFacts::Checkpoint {
            epoch,
            committed_epoch,
        } => (epoch, committed_epoch),
        StoreFacts::Empty | StoreFacts::Lost => (0, 0),
    };
    if t > c {
        return refuse(Refusal::CorruptCheckpoint {
            checkpoint_epoch: c,
            committed_epoch: t,
        });
    }
    if let Some(newest_epoch) = facts.wal_damage_newest_epoch {
        if newest_epoch > v && !facts.accept_wal_damage {
            return refuse(Refusal::WalDamaged {
                newest_epoch,
                table_txn: v,
            });
        }
    }
    if v < t {
        return match facts.rewind {
            None => refuse(Refusal::TableBehind {
                table_txn: v,
                committed_epoch: t,
            }),
            Some(RewindFacts {
                to,
                target_committed_epoch: None,
            }) => refuse(Refusal::RewindTargetMissing { to }),
            Some(RewindFacts {
                to,
                target_committed_epoch: Some(tc),
            }) if tc > v => refuse(Refusal::RewindTargetAhead {
                to,
                committed_epoch: tc,
                table_txn: v,
            }),
            Some(_) => StartCase::FromTable {
                reason: FromTableReason::Rewind,
                table_txn: v,
            },
        };
    }
    if let Some(r) = facts.rewind {
        return refuse(Refusal::RewindNotNeeded {
            to: r.to,
            table_txn: v,
            committed_epoch: t,
        });
    }
    if facts.store == StoreFacts::Empty && !facts.wal_has_frames && v > 0 {
        return StartCase::FromTable {
            reason: FromTableReason::NoCheckpointYet,
            table_txn: v,
        };
    }
    let next = c + 1;
    if v == t {
        return if facts.next_sealed {
            StartCase::RedoEpoch { epoch: next }
        } else if c == 0 && v == 0 && !facts.wal_has_frames {
            StartCase::Fresh
        } else {
            StartCase::ResumeEpoch { epoch: next }
        };
    }
    if v == next {
        if facts.next_sealed {
            return StartCase::WriteMissingCheckpoint { epoch: next };
        }
        if facts.table_continues_checkpoint {
            return StartCase::FromTable {
                reason: FromTableReason::SealLostCommitLanded,
                table_txn: v,
            };
        }
    }
    refuse(Refusal::ForeignProgress {
        table_txn: v,
        checkpoint_epoch: c,
        committed_epoch: t,
    })
}

#[cfg(test)]
mod tests;
