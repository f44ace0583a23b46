//! Backups and restores on a failing disk (faults no SIGKILL can produce): EIO on a write, a
//! failed fsync, a failed rename or link, a full disk. A backup whose writes failed must never
//! count as taken, and the chain must stay restorable; a restore that failed part-way must leave
//! a table whose newest commit has every one of its files, whole.

use std::path::Path;
use std::sync::Arc;

use tidemark_fs::{Fault, FaultFs, FaultKind, Op, SharedFs};

use super::chain::Target;
use super::dir::BackupDir;
use super::take::{take_backup, take_backup_on, BackupOptions};
use crate::location::open_store;
use crate::restore_backup::{restore_backup, restore_backup_on};
use crate::test_support::{deltalake_files, tree, HandTable};

fn options() -> BackupOptions {
    BackupOptions {
        full: false,
        keep_full: None,
    }
}

fn u(path: &Path) -> String {
    path.display().to_string()
}

async fn complete_backups(dir: &Path) -> usize {
    BackupDir::open_shared(&u(dir))
        .await
        .unwrap()
        .scan()
        .await
        .unwrap()
        .catalog
        .backups()
        .count()
}

/// The faults tried, each on the first matching call after arming.
fn faults() -> Vec<(&'static str, Fault)> {
    let on = |op: Op, path: &str, kind: FaultKind| Fault {
        path_contains: path.to_string(),
        partial: true,
        ..Fault::once(op, kind)
    };
    vec![
        (
            "EIO writing a data file",
            on(Op::Write, ".parquet", FaultKind::Eio),
        ),
        (
            "failed fsync of a data file",
            on(Op::Sync, ".parquet", FaultKind::Eio),
        ),
        (
            "EIO writing a commit",
            on(Op::Write, ".json", FaultKind::Eio),
        ),
        (
            "failed rename of a commit",
            on(Op::Rename, ".json", FaultKind::Eio),
        ),
        (
            "EIO writing the manifest",
            on(Op::Write, "MANIFEST", FaultKind::Eio),
        ),
        (
            "failed fsync of the manifest",
            on(Op::Sync, "MANIFEST", FaultKind::Eio),
        ),
        (
            "failed link of the manifest",
            on(Op::Rename, "MANIFEST", FaultKind::Eio),
        ),
        (
            "a full disk",
            Fault {
                sticky: true,
                ..on(Op::Write, "", FaultKind::DiskFull)
            },
        ),
    ]
}

#[tokio::test]
async fn a_backup_whose_writes_fail_never_counts_and_the_chain_stays_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("source");
    let backups = dir.path().join("backups");
    let mut t = HandTable::create(&src_dir);
    t.append(2, 700, false);
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    take_backup(&src, &u(&backups), options()).await.unwrap();
    let fault = FaultFs::new(tidemark_fs::std_fs());
    let faulty: SharedFs = Arc::new(fault.clone());
    for (what, f) in faults() {
        t.append(2, 900, true);
        let before = complete_backups(&backups).await;
        let injected_before = fault.injected();
        fault.arm(f);
        let err = take_backup_on(faulty.clone(), &src, &u(&backups), options())
            .await
            .expect_err(what);
        assert!(
            fault.injected() > injected_before,
            "{what}: no fault was injected"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(".parquet") || msg.contains(".json") || msg.contains("MANIFEST"),
            "{what}: the error names no file: {msg}"
        );
        assert_eq!(
            complete_backups(&backups).await,
            before,
            "{what}: a failed backup counts as taken"
        );
        fault.clear();
        // The disk is repaired: the next backup covers what the failed one did not.
        let report = take_backup_on(faulty.clone(), &src, &u(&backups), options())
            .await
            .unwrap_or_else(|e| panic!("{what}: the backup after the fault: {e}"));
        assert_eq!(report.last_version, t.next - 1, "{what}");
        assert_eq!(complete_backups(&backups).await, before + 1, "{what}");
    }
    // Every version of the table restores from the chain, equal to the source.
    for v in 1..t.next {
        let dest = dir.path().join(format!("restored-{v}"));
        restore_backup(&u(&backups), &u(&dest), Target::Version(v), None)
            .await
            .unwrap_or_else(|e| panic!("restore of version {v}: {e}"));
        assert_eq!(
            deltalake_files(&dest, v).await,
            deltalake_files(&src_dir, v).await,
            "version {v}"
        );
    }
}

#[tokio::test]
async fn a_restore_that_fails_part_way_leaves_only_whole_versions() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("source");
    let backups = dir.path().join("backups");
    let mut t = HandTable::create(&src_dir);
    for _ in 0..5 {
        t.append(3, 2_000, true);
    }
    let src = open_store(src_dir.to_str().unwrap()).unwrap();
    take_backup(&src, &u(&backups), options()).await.unwrap();
    let newest = t.next - 1;
    let source_files = tree(&src_dir);
    let fault = FaultFs::new(tidemark_fs::std_fs());
    let faulty: SharedFs = Arc::new(fault.clone());
    // A fault at every write and every fsync the restore makes, one at a time.
    let mut tried = 0;
    for op in [Op::Write, Op::Sync, Op::Rename] {
        for nth in 1.. {
            let dest = dir.path().join(format!("restore-{op:?}-{nth}"));
            fault.clear();
            let injected_before = fault.injected();
            fault.arm(Fault {
                nth,
                partial: true,
                ..Fault::once(op, FaultKind::Eio)
            });
            let result = restore_backup_on(
                faulty.clone(),
                &u(&backups),
                &u(&dest),
                Target::Version(newest),
                None,
            )
            .await;
            if fault.injected() == injected_before {
                // Fewer than `nth` such calls: the restore ran clean.
                result.unwrap();
                assert_eq!(
                    deltalake_files(&dest, newest).await,
                    deltalake_files(&src_dir, newest).await
                );
                break;
            }
            tried += 1;
            let err = result.expect_err(&format!(
                "{op:?}@{nth}: an injected fault must fail the restore"
            ));
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("restore-{op:?}-{nth}/")) && msg.contains("injected"),
                "{op:?}@{nth}: the error names neither the file nor the fault: {msg}"
            );
            // What is there is whole: every file is the source's file of that name (no
            // temporary left behind), and the newest restored commit has all its files.
            let restored = tree(&dest);
            for (name, bytes) in &restored {
                assert!(
                    !name.contains(".tidemark-tmp-"),
                    "{op:?}@{nth}: temporary {name}"
                );
                assert_eq!(Some(bytes), source_files.get(name), "{op:?}@{nth}: {name}");
            }
            let log = crate::log::LogListing::list(&open_store(dest.to_str().unwrap()).unwrap())
                .await
                .unwrap();
            if let Some(v) = log.newest_version() {
                assert_eq!(
                    deltalake_files(&dest, v).await,
                    deltalake_files(&src_dir, v).await,
                    "{op:?}@{nth}: version {v}"
                );
            }
            // A second restore into a partial destination is refused, never mixed with it; one
            // into a destination the failure left empty runs.
            fault.clear();
            let again =
                restore_backup(&u(&backups), &u(&dest), Target::Version(newest), None).await;
            if restored.is_empty() {
                again.unwrap_or_else(|e| panic!("{op:?}@{nth}: rerun into an empty dir: {e}"));
            } else {
                assert!(
                    again.is_err(),
                    "{op:?}@{nth}: a restore into a partial table ran"
                );
            }
        }
    }
    assert!(tried >= 20, "only {tried} faults were injected");
}
