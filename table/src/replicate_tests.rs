use std::path::Path as FsPath;
use std::sync::Arc;

use tidemark_fs::{Fault, FaultFs, FaultKind, Op};

use super::*;
use crate::location::open_store;
use crate::test_support::{deltalake_files, tree, HandTable};

// ---------------------------------------------------------------- the plan, pure

fn facts(commits: &[u64], checkpoints: &[u64], replica: Option<u64>) -> PlanFacts {
    PlanFacts {
        source_commits: commits.iter().copied().collect(),
        source_checkpoints: checkpoints.iter().copied().collect(),
        replica_newest: replica,
        newest_matches: replica.map(|_| true),
        full: false,
    }
}

#[test]
fn the_plan_copies_what_the_replica_lacks_in_log_order() {
    let all: Vec<u64> = (0..=9).collect();
    assert_eq!(
        plan(&facts(&all, &[], None)),
        Ok(Plan::Incremental { from: 0, to: 9 })
    );
    assert_eq!(
        plan(&facts(&all, &[5], Some(3))),
        Ok(Plan::Incremental { from: 4, to: 9 })
    );
    assert_eq!(
        plan(&facts(&all, &[], Some(9))),
        Ok(Plan::UpToDate { version: 9 })
    );
    // An empty replica of a log that starts at 0 copies every commit (not the checkpoint)...
    assert_eq!(
        plan(&facts(&all, &[5], None)),
        Ok(Plan::Incremental { from: 0, to: 9 })
    );
    // ...and with --full starts from the newest checkpoint.
    let mut full = facts(&all, &[5, 8], None);
    full.full = true;
    assert_eq!(
        plan(&full),
        Ok(Plan::FromCheckpoint {
            checkpoint: 8,
            to: 9
        })
    );
}

#[test]
fn the_plan_starts_an_empty_replica_at_a_cleaned_logs_checkpoint() {
    // Commits 0..=5 cleaned up, checkpoint at 6 (commit 6 gone too).
    assert_eq!(
        plan(&facts(&[7, 8], &[6], None)),
        Ok(Plan::FromCheckpoint {
            checkpoint: 6,
            to: 8
        })
    );
    // Only a checkpoint.
    assert_eq!(
        plan(&facts(&[], &[6], None)),
        Ok(Plan::FromCheckpoint {
            checkpoint: 6,
            to: 6
        })
    );
    // A checkpoint followed by a gap is no starting point; an older one with every later
    // commit is.
    assert_eq!(
        plan(&facts(&[3, 4, 5, 7], &[2, 5], None)),
        Err(Refusal::NoStartingPoint {
            oldest_commit: Some(3)
        })
    );
    assert_eq!(
        plan(&facts(&[3, 4, 5, 6, 7], &[2, 5], None)),
        Ok(Plan::FromCheckpoint {
            checkpoint: 5,
            to: 7
        })
    );
}

#[test]
fn the_plan_refuses_divergence_a_replica_ahead_and_a_cleaned_up_log() {
    let all: Vec<u64> = (0..=9).collect();
    let mut diverged = facts(&all, &[], Some(4));
    diverged.newest_matches = Some(false);
    assert_eq!(plan(&diverged), Err(Refusal::Diverged { version: 4 }));
    // Divergence wins over --full: a different table is never overwritten.
    diverged.full = true;
    assert_eq!(plan(&diverged), Err(Refusal::Diverged { version: 4 }));
    assert_eq!(
        plan(&facts(&all, &[], Some(12))),
        Err(Refusal::ReplicaAhead {
            replica: 12,
            source: 9
        })
    );
    // The replica needs 4; the source holds 6..=9 and a checkpoint at 6.
    let cleaned = facts(&[6, 7, 8, 9], &[6], Some(3));
    assert_eq!(
        plan(&cleaned),
        Err(Refusal::LogCleanedUp {
            needed: 4,
            oldest_commit: Some(6)
        })
    );
    let mut full = cleaned.clone();
    full.full = true;
    assert_eq!(
        plan(&full),
        Ok(Plan::FromCheckpoint {
            checkpoint: 6,
            to: 9
        })
    );
    assert_eq!(plan(&facts(&[], &[], None)), Err(Refusal::SourceEmpty));
}

// ---------------------------------------------------------------- real tables on disk

/// Every file of the replica is the source's file of that name, byte for byte (no temporary
/// file left); it holds every source commit up to its newest version; deltalake reads the
/// same snapshot from both at every version the replica holds.
async fn assert_replica_equal(source: &FsPath, replica: &FsPath) {
    let src = tree(source);
    let dst = tree(replica);
    let dst_log = LogListing::list(&open_store(replica.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    for (name, bytes) in &dst {
        assert!(
            !name.contains(".tidemark-tmp-"),
            "temporary file left: {name}"
        );
        assert_eq!(
            Some(bytes),
            src.get(name),
            "{name} differs from (or is missing in) the source"
        );
    }
    let newest = dst_log.newest_version().unwrap();
    let first = dst_log.oldest_commit().unwrap_or(newest);
    // Every source commit from the replica's oldest to its newest is there.
    for v in first..=newest {
        let name = format!("_delta_log/{}", commit_file_name(v));
        if let Some(bytes) = src.get(&name) {
            assert_eq!(dst.get(&name), Some(bytes), "commit {name} not replicated");
        }
    }
    for v in first..=newest {
        assert_eq!(
            deltalake_files(replica, v).await,
            deltalake_files(source, v).await,
            "version {v}"
        );
    }
}

#[tokio::test]
async fn a_replica_is_the_source_byte_for_byte_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    for i in 0..4 {
        t.append(3, 1000 + i * 100, i % 2 == 1);
    }
    let r = Replicator::new(
        open_store(src_dir.to_str().unwrap()).unwrap(),
        open_store(dst_dir.to_str().unwrap()).unwrap(),
        ReplicateOptions {
            chunk_bytes: 512,
            ..ReplicateOptions::default()
        },
    )
    .unwrap();
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(report.plan, Plan::Incremental { from: 0, to: 4 });
    assert_eq!(
        (
            report.versions_copied,
            report.files_copied,
            report.replica_version
        ),
        (5, 12, Some(4))
    );
    assert_replica_equal(&src_dir, &dst_dir).await;
    assert!(r.lag().await.unwrap().caught_up());

    t.append(2, 5000, true);
    t.append(1, 10, false);
    let lag = r.lag().await.unwrap();
    assert_eq!(lag.versions_behind, 2);
    assert_eq!(lag.seconds_behind, 2.0);
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(report.plan, Plan::Incremental { from: 5, to: 6 });
    assert_eq!((report.versions_copied, report.files_copied), (2, 3));
    assert_replica_equal(&src_dir, &dst_dir).await;
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(report.plan, Plan::UpToDate { version: 6 });
    assert_eq!(report.bytes_copied, 0);
}

#[tokio::test]
async fn a_failed_commit_write_leaves_the_replica_at_its_last_whole_version_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    t.append(2, 3000, false);
    let fault = FaultFs::new(tidemark_fs::std_fs());
    let dst = crate::location::TableLocation::parse_with_fs(
        dst_dir.to_str().unwrap(),
        Arc::new(fault.clone()),
    )
    .unwrap();
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    let r = Replicator::new(src.clone(), dst.clone(), ReplicateOptions::default()).unwrap();
    r.round(&NoObserver).await.unwrap();
    t.append(3, 4000, true);
    // The commit file of version 2 fails with EIO (its data files were written).
    fault.arm(Fault {
        path_contains: commit_file_name(2),
        ..Fault::once(Op::Write, FaultKind::Eio)
    });
    let err = r.round(&NoObserver).await.unwrap_err();
    assert_eq!(fault.injected(), 1);
    assert!(err.to_string().contains(&commit_file_name(2)), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
    let log = LogListing::list(&dst).await.unwrap();
    assert_eq!(
        log.newest_version(),
        Some(1),
        "no commit 2 after a failed write"
    );
    assert_replica_equal(&src_dir, &dst_dir).await;
    // The rerun keeps the three data files already copied (verified, not rewritten).
    let r = Replicator::new(src, dst, ReplicateOptions::default()).unwrap();
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(
        (
            report.versions_copied,
            report.files_copied,
            report.files_already_present
        ),
        (1, 0, 3)
    );
    assert_replica_equal(&src_dir, &dst_dir).await;
}

#[tokio::test]
async fn a_diverged_replica_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    t.append(1, 100, false);
    let mut other = HandTable::create(&dst_dir);
    other.append(1, 101, false);
    let r = Replicator::new(
        open_store(src_dir.to_str().unwrap()).unwrap(),
        open_store(dst_dir.to_str().unwrap()).unwrap(),
        ReplicateOptions {
            full: true,
            ..ReplicateOptions::default()
        },
    )
    .unwrap();
    let before = tree(&dst_dir);
    let err = r.round(&NoObserver).await.unwrap_err();
    assert!(
        matches!(
            err,
            ReplicateError::Refused {
                refusal: Refusal::Diverged { version: 1 },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    for needle in [
        format!("{}/_delta_log/{}", dst_dir.display(), commit_file_name(1)),
        format!("{}/_delta_log/{}", src_dir.display(), commit_file_name(1)),
        "diverged".to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} not in {msg}");
    }
    assert_eq!(tree(&dst_dir), before, "a refused round writes nothing");
    // A replica ahead of its source: refused too.
    other.append(1, 5, false);
    other.append(1, 5, false);
    std::fs::remove_dir_all(&src_dir).unwrap();
    let mut t = HandTable::create(&src_dir);
    t.append(1, 101, false);
    let err = r.round(&NoObserver).await.unwrap_err();
    assert!(
        matches!(
            err,
            ReplicateError::Refused {
                refusal: Refusal::ReplicaAhead {
                    replica: 3,
                    source: 1
                },
                ..
            }
        ),
        "{err}"
    );
}

async fn checkpoint(dir: &FsPath) {
    let url = url::Url::from_directory_path(dir).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cleaned_up_source_log_is_refused_and_full_copies_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    for _ in 0..3 {
        t.append(2, 700, true);
    }
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    let dst = open_store(dst_dir.to_str().unwrap()).unwrap();
    let r = Replicator::new(src.clone(), dst.clone(), ReplicateOptions::default()).unwrap();
    r.round(&NoObserver).await.unwrap(); // replica at 3
    for _ in 0..4 {
        t.append(2, 900, true);
    }
    checkpoint(&src_dir).await; // at 7
    t.append(1, 50, false); // 8
    for v in 0..=6 {
        std::fs::remove_file(src_dir.join("_delta_log").join(commit_file_name(v))).unwrap();
    }
    let err = r.round(&NoObserver).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ReplicateError::Refused {
                refusal: Refusal::LogCleanedUp {
                    needed: 4,
                    oldest_commit: Some(7)
                },
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("--full") && msg.contains("cleaned up"),
        "{msg}"
    );

    let full = Replicator::new(
        src.clone(),
        dst.clone(),
        ReplicateOptions {
            full: true,
            ..ReplicateOptions::default()
        },
    )
    .unwrap();
    let report = full.round(&NoObserver).await.unwrap();
    assert_eq!(
        report.plan,
        Plan::FromCheckpoint {
            checkpoint: 7,
            to: 8
        }
    );
    let dst_log = LogListing::list(&dst).await.unwrap();
    assert!(dst_log.checkpoint(7).is_some() && dst_log.last_checkpoint().is_some());
    assert_eq!(
        deltalake_files(&dst_dir, 8).await,
        deltalake_files(&src_dir, 8).await
    );
    assert_eq!(
        deltalake_files(&dst_dir, 7).await,
        deltalake_files(&src_dir, 7).await
    );

    // An empty replica of this source starts at the checkpoint without being asked.
    let fresh_dir = dir.path().join("fresh");
    let fresh = Replicator::new(
        src,
        open_store(fresh_dir.to_str().unwrap()).unwrap(),
        ReplicateOptions::default(),
    )
    .unwrap();
    let report = fresh.round(&NoObserver).await.unwrap();
    assert_eq!(
        report.plan,
        Plan::FromCheckpoint {
            checkpoint: 7,
            to: 8
        }
    );
    assert_replica_equal(&src_dir, &fresh_dir).await;

    // Killed right after the checkpoint file (before commits 7 and 8 were copied): the replica
    // is at version 7 through its checkpoint; the next round copies commit 7, then 8.
    for v in [7, 8] {
        std::fs::remove_file(fresh_dir.join("_delta_log").join(commit_file_name(v))).unwrap();
    }
    std::fs::remove_file(fresh_dir.join("_delta_log/_last_checkpoint")).unwrap();
    assert_eq!(
        deltalake_files(&fresh_dir, 7).await,
        deltalake_files(&src_dir, 7).await
    );
    let report = fresh.round(&NoObserver).await.unwrap();
    assert_eq!(report.plan, Plan::Incremental { from: 8, to: 8 });
    assert_replica_equal(&src_dir, &fresh_dir).await;
    // Byte for byte the source (whose log starts at checkpoint 7), data files included.
    let mut live_source = tree(&src_dir);
    live_source.retain(|name, _| {
        !name.ends_with(".parquet") || name.starts_with("_delta_log/") || {
            deltalake_files_sync(&src_dir).contains(&name.to_string())
        }
    });
    assert_eq!(
        tree(&fresh_dir).keys().collect::<Vec<_>>(),
        live_source.keys().collect::<Vec<_>>()
    );
}

/// The live files of `dir` at version 8 as deltalake reads them, callable from a `retain`
/// closure (on its own thread and runtime).
fn deltalake_files_sync(dir: &FsPath) -> Vec<String> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move { deltalake_files(&dir, 8).await })
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn checkpoints_follow_once_the_replica_holds_their_version_and_temporaries_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    t.append(2, 100, false);
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    let dst = open_store(dst_dir.to_str().unwrap()).unwrap();
    let r = Replicator::new(src.clone(), dst.clone(), ReplicateOptions::default()).unwrap();
    r.round(&NoObserver).await.unwrap();
    checkpoint(&src_dir).await; // a checkpoint of version 1, made after the replica has it
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(report.plan, Plan::UpToDate { version: 1 });
    assert_eq!(
        report.checkpoint_files_copied, 2,
        "checkpoint + _last_checkpoint"
    );
    let log = LogListing::list(&dst).await.unwrap();
    assert!(log.checkpoint(1).is_some() && log.last_checkpoint().is_some());
    assert_replica_equal(&src_dir, &dst_dir).await;

    // A leftover of an interrupted durable write (a killed replicate) is removed at start.
    let leftover = dst_dir.join(".part 9-0%.parquet.tidemark-tmp-123-456");
    std::fs::write(&leftover, b"half a file").unwrap();
    let r = Replicator::new(src, dst, ReplicateOptions::default()).unwrap();
    let report = r.round(&NoObserver).await.unwrap();
    assert_eq!(report.temp_files_removed, 1);
    assert!(!leftover.exists());
}

#[tokio::test]
async fn a_data_file_not_of_its_logged_size_stops_before_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    let mut t = HandTable::create(&src_dir);
    let v = t.append(1, 100, false);
    let damaged = src_dir.join(&t.live[0]);
    std::fs::write(&damaged, [0u8; 99]).unwrap();
    let r = Replicator::new(
        open_store(src_dir.to_str().unwrap()).unwrap(),
        open_store(dst_dir.to_str().unwrap()).unwrap(),
        ReplicateOptions::default(),
    )
    .unwrap();
    let err = r.round(&NoObserver).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {v}")) && msg.contains("the log says 100"),
        "{msg}"
    );
    assert!(!dst_dir
        .join("_delta_log")
        .join(commit_file_name(v))
        .exists());
    // Deleted from the source (VACUUM): named, with the way out.
    std::fs::remove_file(&damaged).unwrap();
    let err = r.round(&NoObserver).await.unwrap_err();
    assert!(
        matches!(err, ReplicateError::SourceFileMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--full"), "{err}");
}
