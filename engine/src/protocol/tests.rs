//! The start decision against hand-written tables of facts -> case (each row is a scenario
//! written out by hand, not derived from `decide`'s own rules), plus exhaustive invariants.

use super::*;

fn cp(epoch: u64, committed_epoch: u64) -> StoreFacts {
    StoreFacts::Checkpoint {
        epoch,
        committed_epoch,
    }
}

/// Facts with checkpoints on and nothing unusual.
fn facts(store: StoreFacts, sealed: bool, frames: bool, v: u64) -> StartFacts {
    StartFacts {
        checkpoints: true,
        store,
        next_sealed: sealed,
        wal_has_frames: frames || sealed,
        table_txn: v,
        table_continues_checkpoint: false,
        wal_damage_newest_epoch: None,
        accept_wal_damage: false,
        rewind: None,
        state_changelog_complete: true,
    }
}

use FromTableReason as R;
use StartCase as S;

#[test]
fn the_ordinary_cases_of_the_architecture() {
    let rows: &[(&str, StartFacts, StartCase)] = &[
        (
            "first start ever",
            facts(StoreFacts::Empty, false, false, 0),
            S::Fresh,
        ),
        (
            "killed in epoch 1 before its seal",
            facts(StoreFacts::Empty, false, true, 0),
            S::ResumeEpoch { epoch: 1 },
        ),
        (
            "killed after SEAL(1), before its commit",
            facts(StoreFacts::Empty, true, true, 0),
            S::RedoEpoch { epoch: 1 },
        ),
        // Issue 11 item 4: the first epoch's commit landed, its checkpoint did not.
        (
            "killed after commit 1, before checkpoint 1",
            facts(StoreFacts::Empty, true, true, 1),
            S::WriteMissingCheckpoint { epoch: 1 },
        ),
        (
            "clean restart after checkpoint 7",
            facts(cp(7, 7), false, false, 7),
            S::ResumeEpoch { epoch: 8 },
        ),
        (
            "killed mid epoch 8",
            facts(cp(7, 7), false, true, 7),
            S::ResumeEpoch { epoch: 8 },
        ),
        (
            "killed after SEAL(8)",
            facts(cp(7, 7), true, true, 7),
            S::RedoEpoch { epoch: 8 },
        ),
        (
            "killed after commit 8",
            facts(cp(7, 7), true, true, 8),
            S::WriteMissingCheckpoint { epoch: 8 },
        ),
        // Epochs 6 and 7 needed no commit (all records deduplicated away would still commit,
        // but an epoch with nothing at all is never opened): t may trail c.
        (
            "checkpoint 7 with committed epoch 5, table at 5",
            facts(cp(7, 5), false, false, 5),
            S::ResumeEpoch { epoch: 8 },
        ),
        (
            "same, SEAL(8) logged",
            facts(cp(7, 5), true, true, 5),
            S::RedoEpoch { epoch: 8 },
        ),
        (
            "same, commit 8 landed",
            facts(cp(7, 5), true, true, 8),
            S::WriteMissingCheckpoint { epoch: 8 },
        ),
    ];
    for (what, f, want) in rows {
        assert_eq!(decide(*f), *want, "{what}: {f:?}");
    }
}

#[test]
fn starts_without_a_usable_store() {
    let rows: &[(&str, StartFacts, StartCase)] = &[
        (
            "state directory deleted, table at 12",
            facts(StoreFacts::Lost, false, false, 12),
            S::FromTable {
                reason: R::StoreLost,
                table_txn: 12,
            },
        ),
        (
            "store corrupt, WAL still sealed",
            facts(StoreFacts::Lost, true, true, 3),
            S::FromTable {
                reason: R::StoreLost,
                table_txn: 3,
            },
        ),
        (
            "checkpoints turned on after running without them",
            facts(StoreFacts::Empty, false, false, 5),
            S::FromTable {
                reason: R::NoCheckpointYet,
                table_txn: 5,
            },
        ),
        (
            "state lost before any commit",
            facts(StoreFacts::Lost, false, true, 0),
            S::FromTable {
                reason: R::StoreLost,
                table_txn: 0,
            },
        ),
        (
            "checkpoints off",
            StartFacts {
                checkpoints: false,
                ..facts(cp(4, 4), true, true, 9)
            },
            S::FromTable {
                reason: R::CheckpointsOff,
                table_txn: 9,
            },
        ),
        (
            "a rewind with checkpoints off",
            StartFacts {
                checkpoints: false,
                rewind: Some(RewindFacts {
                    to: 2,
                    target_committed_epoch: Some(2),
                }),
                ..facts(cp(4, 4), false, false, 1)
            },
            S::Refuse(Refusal::RewindWithoutStore { to: 2 }),
        ),
    ];
    for (what, f, want) in rows {
        assert_eq!(decide(*f), *want, "{what}: {f:?}");
    }
}

#[test]
fn refusals_and_rewinds() {
    let rewind = |to, tc| {
        Some(RewindFacts {
            to,
            target_committed_epoch: tc,
        })
    };
    let rows: &[(&str, StartFacts, StartCase)] = &[
        (
            "checkpoint claims more than itself",
            facts(cp(3, 4), false, false, 4),
            S::Refuse(Refusal::CorruptCheckpoint {
                checkpoint_epoch: 3,
                committed_epoch: 4,
            }),
        ),
        (
            "table restored to 4, store at 9",
            facts(cp(9, 9), false, false, 4),
            S::Refuse(Refusal::TableBehind {
                table_txn: 4,
                committed_epoch: 9,
            }),
        ),
        (
            "rewind to 4 (committed 4), table at 4",
            StartFacts {
                rewind: rewind(4, Some(4)),
                ..facts(cp(9, 9), false, false, 4)
            },
            S::FromTable {
                reason: R::Rewind,
                table_txn: 4,
            },
        ),
        (
            "rewind to 3 (committed 2), table at 4",
            StartFacts {
                rewind: rewind(3, Some(2)),
                ..facts(cp(9, 9), false, false, 4)
            },
            S::FromTable {
                reason: R::Rewind,
                table_txn: 4,
            },
        ),
        (
            "rewind to 6 (committed 6), table at 4",
            StartFacts {
                rewind: rewind(6, Some(6)),
                ..facts(cp(9, 9), false, false, 4)
            },
            S::Refuse(Refusal::RewindTargetAhead {
                to: 6,
                committed_epoch: 6,
                table_txn: 4,
            }),
        ),
        (
            "rewind to an epoch not retained",
            StartFacts {
                rewind: rewind(1, None),
                ..facts(cp(9, 9), false, false, 4)
            },
            S::Refuse(Refusal::RewindTargetMissing { to: 1 }),
        ),
        (
            "rewind asked, table not behind",
            StartFacts {
                rewind: rewind(5, Some(5)),
                ..facts(cp(9, 9), false, false, 9)
            },
            S::Refuse(Refusal::RewindNotNeeded {
                to: 5,
                table_txn: 9,
                committed_epoch: 9,
            }),
        ),
        (
            "another writer two epochs ahead",
            facts(cp(7, 7), true, true, 9),
            S::Refuse(Refusal::ForeignProgress {
                table_txn: 9,
                checkpoint_epoch: 7,
                committed_epoch: 7,
            }),
        ),
        (
            "table between t and c",
            facts(cp(7, 5), false, false, 6),
            S::Refuse(Refusal::ForeignProgress {
                table_txn: 6,
                checkpoint_epoch: 7,
                committed_epoch: 5,
            }),
        ),
        (
            "commit 8 landed but does not continue checkpoint 7, no seal",
            facts(cp(7, 7), false, true, 8),
            S::Refuse(Refusal::ForeignProgress {
                table_txn: 8,
                checkpoint_epoch: 7,
                committed_epoch: 7,
            }),
        ),
        (
            "an empty store, WAL frames of epoch 1, a table at 2",
            facts(StoreFacts::Empty, false, true, 2),
            S::Refuse(Refusal::ForeignProgress {
                table_txn: 2,
                checkpoint_epoch: 0,
                committed_epoch: 0,
            }),
        ),
    ];
    for (what, f, want) in rows {
        assert_eq!(decide(*f), *want, "{what}: {f:?}");
    }
}

#[test]
fn wal_damage_and_lost_seals() {
    let damaged = |newest, accept, f: StartFacts| StartFacts {
        wal_damage_newest_epoch: Some(newest),
        accept_wal_damage: accept,
        ..f
    };
    let continues = |f: StartFacts| StartFacts {
        table_continues_checkpoint: true,
        ..f
    };
    let rows: &[(&str, StartFacts, StartCase)] = &[
        // Issue 11 item 5: a lost seal of an epoch whose commit landed is not another writer.
        (
            "seal of 8 lost, commit 8 landed and continues checkpoint 7",
            continues(facts(cp(7, 7), false, false, 8)),
            S::FromTable {
                reason: R::SealLostCommitLanded,
                table_txn: 8,
            },
        ),
        (
            "seal of 1 lost (its records still logged), commit 1 landed",
            continues(facts(StoreFacts::Empty, false, true, 1)),
            S::FromTable {
                reason: R::SealLostCommitLanded,
                table_txn: 1,
            },
        ),
        (
            "damage held epoch 8, table at 7",
            damaged(8, false, facts(cp(7, 7), false, true, 7)),
            S::Refuse(Refusal::WalDamaged {
                newest_epoch: 8,
                table_txn: 7,
            }),
        ),
        (
            "same, accepted: re-read from the checkpoint",
            damaged(8, true, facts(cp(7, 7), false, true, 7)),
            S::ResumeEpoch { epoch: 8 },
        ),
        (
            "damage held epoch 8 and its seal, commit 8 landed",
            damaged(8, false, continues(facts(cp(7, 7), false, true, 8))),
            S::FromTable {
                reason: R::SealLostCommitLanded,
                table_txn: 8,
            },
        ),
        (
            "damage held only checkpointed epochs",
            damaged(7, false, facts(cp(7, 7), false, false, 7)),
            S::ResumeEpoch { epoch: 8 },
        ),
    ];
    for (what, f, want) in rows {
        assert_eq!(decide(*f), *want, "{what}: {f:?}");
    }
}

fn all_facts() -> impl Iterator<Item = StartFacts> {
    let stores = (0..6u64)
        .flat_map(|c| (0..7u64).map(move |t| cp(c, t)))
        .chain([StoreFacts::Empty, StoreFacts::Lost]);
    stores.flat_map(|store| {
        (0..8u64).flat_map(move |v| {
            (0..32u8).flat_map(move |bits| {
                let rewinds = [
                    None,
                    Some(RewindFacts {
                        to: 2,
                        target_committed_epoch: None,
                    }),
                    Some(RewindFacts {
                        to: 2,
                        target_committed_epoch: Some(2),
                    }),
                ];
                [
                    (None, false),
                    (Some(3u64), false),
                    (Some(6), false),
                    (Some(6), true),
                ]
                .into_iter()
                .flat_map(move |(damage, accepted)| {
                    rewinds.into_iter().map(move |rewind| StartFacts {
                        checkpoints: bits & 1 == 0,
                        store,
                        next_sealed: bits & 2 != 0,
                        wal_has_frames: bits & 6 != 0,
                        table_txn: v,
                        table_continues_checkpoint: bits & 8 != 0,
                        wal_damage_newest_epoch: damage,
                        accept_wal_damage: accepted,
                        rewind,
                        state_changelog_complete: bits & 16 == 0,
                    })
                })
            })
        })
    })
}

#[test]
fn no_decision_rewrites_an_epoch_the_table_holds_or_numbers_below_it() {
    for f in all_facts() {
        let v = f.table_txn;
        match decide(f) {
            S::RedoEpoch { epoch } | S::ResumeEpoch { epoch } => {
                assert!(epoch > v, "{f:?} would rewrite epoch {epoch}")
            }
            S::WriteMissingCheckpoint { epoch } => {
                assert_eq!(epoch, v, "{f:?}: only a landed commit is checkpointed")
            }
            S::Fresh => assert_eq!(v, 0, "{f:?}"),
            S::FromTable { table_txn, .. } => assert_eq!(table_txn, v, "{f:?}"),
            S::Refuse(_) => {}
        }
    }
}

/// A worker of a shared pipeline starts from the table whatever its state directory holds:
/// never a redo of a sealed epoch (its partitions may have moved), never a refusal, and its
/// epochs continue after its own txn version.
#[test]
fn a_worker_always_starts_from_the_table_after_its_own_epochs() {
    let mut n = 0;
    for f in all_facts() {
        n += 1;
        assert_eq!(
            decide_for_worker(f),
            S::FromTable {
                reason: R::GroupWorker,
                table_txn: f.table_txn
            },
            "{f:?}"
        );
    }
    assert!(n > 100, "only {n} fact sets");
}

#[test]
fn unaccepted_wal_damage_above_the_table_never_starts() {
    for f in all_facts() {
        if let (Some(n), true) = (f.wal_damage_newest_epoch, f.checkpoints) {
            if n > f.table_txn && f.store != StoreFacts::Lost && !f.accept_wal_damage {
                assert!(
                    matches!(decide(f), S::Refuse(_)),
                    "{f:?} -> {:?}",
                    decide(f)
                );
            }
        }
    }
}

/// Issue 22: the checkpoint's dedup state is synced only through an earlier epoch and the WAL
/// holds the deltas after it (the changelog). Rows written out by hand.
#[test]
fn a_lost_state_changelog_resumes_from_the_table() {
    let lost = |f: StartFacts| StartFacts {
        state_changelog_complete: false,
        ..f
    };
    let rows: &[(&str, StartFacts, StartCase)] = &[
        (
            "state synced through 5, checkpoint 7, changelog 6..7 in the WAL, killed mid epoch 8",
            facts(cp(7, 7), false, true, 7),
            S::ResumeEpoch { epoch: 8 },
        ),
        (
            "same, killed after SEAL(8)",
            facts(cp(7, 7), true, true, 7),
            S::RedoEpoch { epoch: 8 },
        ),
        (
            "same, killed after commit 8",
            facts(cp(7, 7), true, true, 8),
            S::WriteMissingCheckpoint { epoch: 8 },
        ),
        (
            "changelog of 6..7 damaged, killed mid epoch 8",
            lost(facts(cp(7, 7), false, true, 7)),
            S::FromTable {
                reason: R::StateChangelogLost,
                table_txn: 7,
            },
        ),
        (
            "changelog lost, clean restart",
            lost(facts(cp(7, 7), false, false, 7)),
            S::FromTable {
                reason: R::StateChangelogLost,
                table_txn: 7,
            },
        ),
        (
            "changelog lost, SEAL(8) logged",
            lost(facts(cp(7, 7), true, true, 7)),
            S::FromTable {
                reason: R::StateChangelogLost,
                table_txn: 7,
            },
        ),
        (
            "changelog lost, commit 8 landed",
            lost(facts(cp(7, 7), true, true, 8)),
            S::FromTable {
                reason: R::StateChangelogLost,
                table_txn: 8,
            },
        ),
        (
            "changelog lost, but the table is behind: still refused",
            lost(facts(cp(7, 7), false, false, 5)),
            S::Refuse(Refusal::TableBehind {
                table_txn: 5,
                committed_epoch: 7,
            }),
        ),
        (
            "changelog lost, another writer: still refused",
            lost(facts(cp(7, 7), false, false, 9)),
            S::Refuse(Refusal::ForeignProgress {
                table_txn: 9,
                checkpoint_epoch: 7,
                committed_epoch: 7,
            }),
        ),
        (
            "changelog lost and unaccepted damage above the table: still refused",
            StartFacts {
                wal_damage_newest_epoch: Some(8),
                ..lost(facts(cp(7, 7), false, true, 7))
            },
            S::Refuse(Refusal::WalDamaged {
                newest_epoch: 8,
                table_txn: 7,
            }),
        ),
    ];
    for (what, f, want) in rows {
        assert_eq!(decide(*f), *want, "{what}: {f:?}");
    }
}

#[test]
fn an_incomplete_changelog_never_continues_from_the_checkpoint() {
    for f in all_facts().filter(|f| !f.state_changelog_complete) {
        assert!(
            !matches!(
                decide(f),
                S::Fresh
                    | S::ResumeEpoch { .. }
                    | S::RedoEpoch { .. }
                    | S::WriteMissingCheckpoint { .. }
            ),
            "{f:?} -> {:?}",
            decide(f)
        );
    }
}

#[test]
fn refusals_name_both_numbers() {
    let d = decide(facts(cp(9, 7), false, false, 4));
    let msg = d.to_string();
    assert!(
        msg.contains("txn version 4") && msg.contains("committed epoch 7"),
        "{msg}"
    );
}

/// Issue 19, pipelined epochs: a run at checkpoint 4 (table at 4) commits epoch 5 while epoch
/// 6 is read, then commits 6 while 7 is read. Killed after each step, the WAL after the newest
/// checkpoint is read by the tail scan (`wal_tail`), the facts follow, and the decision is the
/// one written here by hand for that step: never a commit of an epoch the table holds, and the
/// read-ahead frames of the next epoch are never replayed into the sealed one.
#[test]
fn a_pipelined_run_killed_at_each_step_of_either_epoch() {
    use crate::wal_tail::{TailFrame as F, TailScan, TailStep};
    // (step, frames appended after checkpoint 4's position, new checkpoint, table txn,
    // expected case). A new checkpoint `c` restarts the frames after it with those given.
    type Step = (&'static str, Vec<(u64, F)>, Option<u64>, u64, StartCase);
    let steps: Vec<Step> = vec![
        (
            "epoch 5 read",
            vec![(5, F::Data), (5, F::Data)],
            None,
            4,
            S::ResumeEpoch { epoch: 5 },
        ),
        (
            "SEAL(5)",
            vec![(5, F::Seal)],
            None,
            4,
            S::RedoEpoch { epoch: 5 },
        ),
        (
            "epoch 6 read while 5 commits",
            vec![(6, F::Data)],
            None,
            4,
            S::RedoEpoch { epoch: 5 },
        ),
        (
            "commit 5 landed",
            vec![],
            None,
            5,
            S::WriteMissingCheckpoint { epoch: 5 },
        ),
        (
            "more of 6 read",
            vec![(6, F::Data)],
            None,
            5,
            S::WriteMissingCheckpoint { epoch: 5 },
        ),
        // Checkpoint 5 is at the position after SEAL(5): epoch 6's frames follow it.
        (
            "checkpoint 5",
            vec![(6, F::Data), (6, F::Data)],
            Some(5),
            5,
            S::ResumeEpoch { epoch: 6 },
        ),
        (
            "SEAL(6)",
            vec![(6, F::Seal)],
            None,
            5,
            S::RedoEpoch { epoch: 6 },
        ),
        (
            "epoch 7 read while 6 commits",
            vec![(7, F::Data)],
            None,
            5,
            S::RedoEpoch { epoch: 6 },
        ),
        (
            "commit 6 landed",
            vec![],
            None,
            6,
            S::WriteMissingCheckpoint { epoch: 6 },
        ),
        (
            "checkpoint 6",
            vec![(7, F::Data)],
            Some(6),
            6,
            S::ResumeEpoch { epoch: 7 },
        ),
    ];
    let mut c = 4;
    let mut after_checkpoint: Vec<(u64, F)> = Vec::new();
    for (what, appended, checkpoint, v, want) in steps {
        match checkpoint {
            Some(new) => {
                c = new;
                after_checkpoint = appended;
            }
            None => after_checkpoint.extend(appended),
        }
        let mut scan = TailScan::new(c + 1);
        let mut replayed = 0;
        for (epoch, kind) in &after_checkpoint {
            match scan.frame(*epoch, *kind) {
                Ok(TailStep::Replay) => replayed += 1,
                Ok(_) => {}
                Err(e) => panic!("{what}: the scan refused a pipelined WAL: {e}"),
            }
        }
        let replayable = after_checkpoint
            .iter()
            .filter(|(e, k)| *e == c + 1 && *k == F::Data)
            .count();
        assert_eq!(
            replayed,
            replayable,
            "{what}: only epoch {}'s frames are replayed",
            c + 1
        );
        let f = facts(cp(c, c), scan.sealed(), replayed > 0, v);
        let got = decide(f);
        assert_eq!(got, want, "{what}: {f:?}");
        if let S::RedoEpoch { epoch } | S::ResumeEpoch { epoch } = got {
            assert!(
                epoch > v,
                "{what}: epoch {epoch} again, the table holds {v}"
            );
        }
    }
}
