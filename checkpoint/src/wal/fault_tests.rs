//! I/O faults through [`FaultFs`]: a failed call poisons the WAL, leaves no half frame, and a
//! reopen yields exactly what was acknowledged.

use std::sync::Arc;

use proptest::prelude::*;
use tidemark_fs::{is_disk_full, std_fs, Fault, FaultFs, FaultKind, Op};

use super::*;

type F = (FrameKind, u64, Vec<u8>);

fn fault_wal(dir: &Path, segment_size: u64, sync: SyncPolicy) -> (Wal, FaultFs) {
    let ffs = FaultFs::new(std_fs());
    let (wal, _) = Wal::open_with_fs(
        Arc::new(ffs.clone()),
        dir,
        WalOptions { segment_size, sync },
        None,
    )
    .unwrap();
    (wal, ffs)
}

fn reopen(dir: &Path) -> (Vec<F>, RecoveryReport) {
    let (_wal, report) = Wal::open(dir, WalOptions::default(), None).unwrap();
    let frames = WalReader::new(dir, WalPosition::default())
        .map(|r| r.map(|(_, f)| (f.kind, f.epoch, f.payload)).unwrap())
        .collect();
    (frames, report)
}

fn fault(op: Op, kind: FaultKind) -> Fault {
    Fault {
        path_contains: ".wal".into(),
        ..Fault::once(op, kind)
    }
}

/// Every write-side call fails as poisoned, naming the segment and the first error.
fn assert_poisoned(wal: &mut Wal, first: &str) {
    let errs = [
        wal.append(FrameKind::Record, 9, b"x").unwrap_err(),
        wal.commit().unwrap_err(),
        wal.seal(9, b"s").unwrap_err(),
        wal.sync().unwrap_err(),
        wal.start_new_segment(9).unwrap_err(),
    ];
    for e in errs {
        let msg = e.to_string();
        assert!(matches!(e, WalError::Poisoned { .. }), "{msg}");
        assert!(msg.contains(".wal") && msg.contains(first), "{msg}");
    }
    assert!(wal.poisoned().is_some());
}

/// Appends and commits `n` frames of epoch `epoch` (each its own batch), returning them.
fn acked_frames(wal: &mut Wal, epoch: u64, n: usize) -> Vec<F> {
    (0..n)
        .map(|i| {
            let p = vec![i as u8; 30 + i];
            wal.append(FrameKind::Record, epoch, &p).unwrap();
            wal.commit().unwrap();
            (FrameKind::Record, epoch, p)
        })
        .collect()
}

#[test]
fn disk_full_during_an_append_poisons_and_leaves_no_half_frame() {
    for partial in [false, true] {
        for cut_fails in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, ffs) = fault_wal(dir.path(), 1 << 20, SyncPolicy::EveryBatch);
            let mut acked = acked_frames(&mut wal, 1, 5);
            wal.seal(1, b"seal-1").unwrap();
            acked.push((FrameKind::Seal, 1, b"seal-1".to_vec()));
            let good_len = wal.end().offset;
            ffs.arm(Fault {
                partial,
                ..fault(Op::Write, FaultKind::DiskFull)
            });
            if cut_fails {
                ffs.arm(fault(Op::SetLen, FaultKind::Eio));
            }
            wal.append(FrameKind::Record, 2, &[7u8; 100]).unwrap();
            let e = wal.commit().unwrap_err();
            assert!(
                matches!(&e, WalError::Io { source, .. } if is_disk_full(source)),
                "{e}"
            );
            assert_poisoned(&mut wal, "No space left");
            let seg = segment_path(dir.path(), 0);
            let on_disk = std::fs::metadata(&seg).unwrap().len();
            if cut_fails && partial {
                assert_eq!(
                    on_disk,
                    good_len + 60,
                    "half of the frame is left by the fault"
                );
            } else {
                assert_eq!(on_disk, good_len, "cut back to the last whole frame");
            }
            drop(wal);
            let (frames, report) = reopen(dir.path());
            assert_eq!(frames, acked, "partial={partial} cut_fails={cut_fails}");
            assert_eq!(
                report.truncation.is_some(),
                cut_fails && partial,
                "a half frame left behind is a torn tail at reopen"
            );
            assert!(report.mid_log.is_none());
        }
    }
}

#[test]
fn a_failed_seal_fsync_poisons_and_is_never_taken_for_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, ffs) = fault_wal(dir.path(), 1 << 20, SyncPolicy::EveryBatch);
    let acked = acked_frames(&mut wal, 1, 4);
    ffs.arm(fault(Op::Sync, FaultKind::DiskFull));
    let e = wal.seal(1, b"seal-1").unwrap_err();
    assert!(e.to_string().contains("fsync"), "{e}");
    // fsyncgate: the retry must not succeed even though the disk would now accept it.
    ffs.clear();
    assert_poisoned(&mut wal, "fsync");
    drop(wal);
    let (frames, report) = reopen(dir.path());
    assert_eq!(frames, acked, "the unacknowledged seal is cut back");
    assert!(report.damage().is_none());
}

#[test]
fn a_failed_commit_fsync_cuts_back_to_the_last_synced_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, ffs) = fault_wal(dir.path(), 1 << 20, SyncPolicy::EveryBatch);
    let acked = acked_frames(&mut wal, 1, 3);
    ffs.arm(fault(Op::Sync, FaultKind::Eio));
    wal.append(FrameKind::Record, 1, b"lost").unwrap();
    wal.commit().unwrap_err();
    assert_poisoned(&mut wal, "fsync");
    drop(wal);
    assert_eq!(reopen(dir.path()).0, acked);
}

#[test]
fn every_failure_of_a_segment_roll_poisons_and_loses_nothing_acknowledged() {
    let cases: Vec<(&str, Vec<Fault>)> = vec![
        ("create", vec![fault(Op::Create, FaultKind::DiskFull)]),
        (
            "header write",
            vec![Fault {
                partial: true,
                ..fault(Op::Write, FaultKind::DiskFull)
            }],
        ),
        (
            "header write, cleanup fails",
            vec![
                Fault {
                    partial: true,
                    ..fault(Op::Write, FaultKind::DiskFull)
                },
                fault(Op::Remove, FaultKind::Eio),
            ],
        ),
        ("header fsync", vec![fault(Op::Sync, FaultKind::Eio)]),
        (
            "directory fsync",
            vec![Fault {
                path_contains: String::new(),
                ..fault(Op::SyncDir, FaultKind::Eio)
            }],
        ),
    ];
    for (name, faults) in cases {
        let dir = tempfile::tempdir().unwrap();
        // Three 50-byte frames fill a 200-byte segment: the fourth rolls.
        let (mut wal, ffs) = fault_wal(dir.path(), 200, SyncPolicy::EveryBatch);
        let acked = acked_frames(&mut wal, 1, 3);
        assert_eq!(wal.segments().len(), 1, "{name}");
        for f in faults {
            ffs.arm(f);
        }
        let e = wal.append(FrameKind::Record, 2, &[1u8; 40]).unwrap_err();
        assert!(ffs.injected() > 0, "{name}: {e}");
        assert_poisoned(&mut wal, "");
        drop(wal);
        let (frames, report) = reopen(dir.path());
        assert_eq!(frames, acked, "{name}");
        assert!(report.mid_log.is_none(), "{name}: {report:?}");
    }
}

#[derive(Debug, Clone)]
enum Step {
    Append(u8, usize),
    Commit,
    Seal,
    Arm(Op, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<u8>(), 0usize..120).prop_map(|(b, n)| Step::Append(b, n)),
        3 => Just(Step::Commit),
        2 => Just(Step::Seal),
        1 => (prop_oneof![
            Just(Op::Write), Just(Op::Sync), Just(Op::Create), Just(Op::SyncDir), Just(Op::SetLen)
        ], any::<bool>()).prop_map(|(op, partial)| Step::Arm(op, partial)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Random appends, commits, seals and faults against a model: once a call fails every
    /// later one fails as poisoned, and a reopen yields a prefix of the appended frames that
    /// holds every acknowledged one (commit under EveryBatch, seal always), whole frames only.
    #[test]
    fn random_faults_never_lose_an_acknowledged_frame(
        steps in proptest::collection::vec(step(), 1..60),
        segment_size in 100u64..600,
        every_batch in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let sync = if every_batch { SyncPolicy::EveryBatch } else { SyncPolicy::OnSeal };
        let (mut wal, ffs) = fault_wal(dir.path(), segment_size, sync);
        let mut appended: Vec<F> = Vec::new();
        let mut acked = 0usize;
        let mut epoch = 1;
        let mut failed = false;
        // The seal frame of a seal that failed after writing it: present after a reopen if
        // cutting it back failed too (unacknowledged, but never a half frame).
        let mut failed_seal: Option<F> = None;
        for s in steps {
            let r = match s {
                Step::Append(b, n) => {
                    let p = vec![b; n];
                    wal.append(FrameKind::Record, epoch, &p).map(|_| appended.push((FrameKind::Record, epoch, p)))
                }
                Step::Commit => wal.commit().map(|_| if every_batch { acked = appended.len() }),
                Step::Seal => {
                    let r = wal.seal(epoch, b"seal").map(|_| ());
                    match &r {
                        Ok(()) => {
                            appended.push((FrameKind::Seal, epoch, b"seal".to_vec()));
                            acked = appended.len();
                            epoch += 1;
                        }
                        Err(WalError::Poisoned { .. }) => {}
                        Err(_) => failed_seal = Some((FrameKind::Seal, epoch, b"seal".to_vec())),
                    }
                    r
                }
                Step::Arm(op, partial) => {
                    ffs.arm(Fault { partial, path_contains: String::new(), ..Fault::once(op, FaultKind::DiskFull) });
                    Ok(())
                }
            };
            match r {
                Err(WalError::Poisoned { .. }) => prop_assert!(failed, "poisoned before any failure"),
                Err(_) => {
                    prop_assert!(!failed, "a call after the first failure was not refused as poisoned");
                    failed = true;
                }
                Ok(()) => prop_assert!(!failed || matches!(s, Step::Arm(..)), "a call succeeded on a poisoned WAL"),
            }
        }
        drop(wal);
        appended.extend(failed_seal);
        let (frames, report) = reopen(dir.path());
        prop_assert!(report.mid_log.is_none(), "{:?}", report);
        prop_assert!(frames.len() <= appended.len(), "more frames than appended");
        prop_assert!(frames.len() >= acked, "lost acknowledged frames: {} < {}", frames.len(), acked);
        prop_assert_eq!(&frames[..], &appended[..frames.len()], "not a prefix of what was appended");
    }
}
