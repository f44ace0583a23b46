//! Backups, restores and verify, end to end through the `tidemark` binary; the tables are
//! written and read back independently by delta-rs (Python) and DuckDB
//! (`tests/python/backup_table.py`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_tests::{broker, drain_stderr, have_python, order_json, produce_range, stderr_of};
use tidemark_tools::audit;

use super::{assert_exactly_once, ok_json, s, tidemark, topic_of_values_and_fixture, EXE};

fn py(args: &[&str]) -> serde_json::Value {
    tidemark_tests::python_json("backup_table.py", args)
}

/// One change to the table at `table`: returns (new version, data files it added).
fn step(table: &Path, op: &str, i: u64) -> (u64, Vec<String>) {
    let v = py(&["step", table.to_str().unwrap(), op, &i.to_string()]);
    let added = v["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    (v["version"].as_u64().unwrap(), added)
}

/// A scratch directory with where a test's source table and its backups go (`src`,
/// `backups` in it); `None` (skip) without Python, only outside CI.
fn scratch() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    if !have_python() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, backups) = (dir.path().join("src"), dir.path().join("backups"));
    Some((dir, src, backups))
}

/// `tidemark backup --from table --to backups <extra> --json`, which must succeed: its report.
fn backup_json(table: &Path, backups: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["backup", "--from", s(table), "--to", s(backups)];
    args.extend(extra);
    args.push("--json");
    ok_json(&args)
}

/// `tidemark restore-backup backups --to dest <extra> --json`, which must succeed: its report.
fn restore_json(backups: &Path, dest: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["restore-backup", s(backups), "--to", s(dest)];
    args.extend(extra);
    args.push("--json");
    ok_json(&args)
}

/// `tidemark verify table <extra> --deep --manifest backups --json`.
fn verify_deep_json(table: &Path, backups: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify", s(table)];
    args.extend(extra);
    args.extend(["--deep", "--manifest", s(backups), "--json"]);
    tidemark(&args)
}

/// Delta-rs and DuckDB read `restored` as the same rows as `src` at `version`.
fn assert_restores(src: &Path, version: u64, restored: &Path) -> serde_json::Value {
    let compared = py(&[
        "compare",
        s(src),
        &format!("{version}:{}", restored.display()),
    ]);
    assert_eq!(compared[0]["equal"], true, "{compared}");
    compared
}

/// Backups after each of 8 changes (appends, a multi-file append, a delete, a checkpoint, an
/// overwrite): a full one, then 7 incrementals, each copying only the new commit and the
/// files it adds. Every covered version restores to exactly the rows time travel on the
/// source shows (delta-rs and DuckDB on the restored table); a timestamp restores the
/// version committed at or before it; a non-empty destination is refused; retention keeps
/// the newest chain.
#[test]
fn an_incremental_chain_restores_every_version_like_time_travel() {
    let Some((dir, src, backups)) = scratch() else {
        return;
    };
    let ops = [
        "append",
        "append_many",
        "append",
        "delete",
        "checkpoint",
        "append_many",
        "overwrite",
        "append",
    ];
    let mut ids: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (version, added) = step(&src, op, i as u64);
        let report = backup_json(&src, &backups, &[]);
        assert_eq!(report["last_version"], version, "{report}");
        if i == 0 {
            assert_eq!(report["kind"], "full", "{report}");
        } else {
            assert_eq!(report["kind"], "incremental", "{report}");
            assert_eq!(report["parent"], ids[i - 1].as_str(), "{report}");
            assert_eq!(report["first_version"], version, "{report}");
            // Only what changed: the version's data files and its commit file.
            assert_eq!(report["data_files"], added.len(), "{op}: {report}");
            assert_eq!(report["files"], added.len() + 1, "{op}: {report}");
        }
        ids.push(report["id"].as_str().unwrap().to_string());
    }
    let again = backup_json(&src, &backups, &[]);
    assert_eq!(again["kind"], "up_to_date", "{again}");

    let list = ok_json(&["backup", "list", s(&backups), "--json"]);
    let listed = list["backups"].as_array().unwrap();
    assert_eq!(listed.len(), ops.len(), "{list}");
    assert!(listed.iter().all(|b| b["chain_ok"] == true), "{list}");

    // Every covered version, restored, against time travel on the source.
    let newest = ops.len() as u64 - 1;
    let mut pairs = Vec::new();
    for v in 0..=newest {
        let dest = dir.path().join(format!("restored-{v}"));
        let report = restore_json(&backups, &dest, &["--version", &v.to_string()]);
        assert_eq!(report["version"], v);
        pairs.push(format!("{v}:{}", dest.display()));
    }
    let mut args = vec!["compare", s(&src)];
    args.extend(pairs.iter().map(String::as_str));
    let compared = py(&args);
    for c in compared.as_array().unwrap() {
        assert_eq!(c["equal"], true, "{c}");
        assert_eq!(c["restored_version"], c["version"], "{c}");
        assert_eq!(c["duckdb_rows"], c["rows"], "{c}");
    }
    assert_eq!(compared.as_array().unwrap().len() as u64, newest + 1);

    // A timestamp: the newest version committed at or before it.
    let history = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json; from deltalake import DeltaTable; print(json.dumps({h['version']: h['timestamp'] for h in DeltaTable(sys.argv[1]).history()}))",
            s(&src),
        ])
        .output()
        .unwrap();
    let times: BTreeMap<String, i64> = serde_json::from_slice(&history.stdout).unwrap();
    let t5 = times["5"];
    assert!(times["6"] > t5, "{times:?}");
    let dest = dir.path().join("restored-at-time");
    let report = restore_json(
        &backups,
        &dest,
        &["--timestamp", &(times["6"] - 1).to_string()],
    );
    assert_eq!(report["version"], 5, "{report}");

    // Never into a non-empty directory.
    let out = tidemark(&["restore-backup", s(&backups), "--to", s(&dest)]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("is not empty"),
        "{}",
        stderr_of(&out)
    );

    // Retention: a new full backup with --keep-full 1 deletes the old chain whole.
    let report = backup_json(&src, &backups, &["--full", "--keep-full", "1"]);
    assert_eq!(report["kind"], "full");
    assert_eq!(
        report["pruned"].as_array().unwrap().len(),
        ops.len(),
        "{report}"
    );
    let list = ok_json(&["backup", "list", s(&backups), "--json"]);
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    let out = tidemark(&[
        "restore-backup",
        s(&backups),
        "--to",
        s(&dir.path().join("gone")),
        "--version",
        "2",
    ]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("version 2 is not covered") && err.contains(&format!("covered: {newest}")),
        "{err}"
    );
}

/// Flipped bytes, truncated and deleted Parquet files: `verify --deep --manifest` finds every
/// one and names the version that added it; `--repair-from` puts back those a backup holds
/// and says which it could not.
#[test]
fn verify_finds_every_corrupt_file_and_repairs_those_a_backup_holds() {
    let Some((dir, table, backups)) = scratch() else {
        return;
    };
    let mut added_by: BTreeMap<String, u64> = BTreeMap::new();
    for (i, op) in ["append", "append_many", "append_many", "append_many"]
        .iter()
        .enumerate()
    {
        let (v, added) = step(&table, op, i as u64);
        added_by.extend(added.into_iter().map(|p| (p, v)));
    }
    backup_json(&table, &backups, &[]);
    let backed_up: Vec<String> = added_by.keys().cloned().collect();
    let (v, after) = step(&table, "append_many", 9);
    added_by.extend(after.iter().map(|p| (p.clone(), v)));

    let seed: u64 = rand::rng().random();
    eprintln!("corruption seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pool = backed_up.clone();
    let mut pick = |pool: &mut Vec<String>| pool.swap_remove(rng.random_range(0..pool.len()));
    let flipped: Vec<String> = (0..3).map(|_| pick(&mut pool)).collect();
    let truncated: Vec<String> = (0..3).map(|_| pick(&mut pool)).collect();
    let deleted: Vec<String> = (0..3).map(|_| pick(&mut pool)).collect();
    let mut fresh = after.clone();
    let fresh_truncated = pick(&mut fresh);
    let fresh_deleted = pick(&mut fresh);
    let mut rng = StdRng::seed_from_u64(seed ^ 1);
    for f in &flipped {
        let path = table.join(f);
        let mut bytes = std::fs::read(&path).unwrap();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= rng.random_range(1..=255u8);
        }
        std::fs::write(&path, bytes).unwrap();
    }
    for f in truncated.iter().chain([&fresh_truncated]) {
        let path = table.join(f);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(rng.random_range(0..len)).unwrap();
    }
    for f in deleted.iter().chain([&fresh_deleted]) {
        std::fs::remove_file(table.join(f)).unwrap();
    }
    let mut all_bad: BTreeSet<String> = flipped
        .iter()
        .chain(&truncated)
        .chain(&deleted)
        .cloned()
        .collect();
    all_bad.insert(fresh_truncated.clone());
    all_bad.insert(fresh_deleted.clone());

    let bad_of = |out: &Output| -> BTreeMap<String, (serde_json::Value, String)> {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        report["bad"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["path"].as_str().unwrap().to_string(),
                    (
                        b["added_in"].clone(),
                        b["problem"]["reason"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    };

    // Shallow: the missing and cut files at least (a flipped byte inside a page may not show
    // without decoding and a checksum).
    let out = tidemark(&["verify", s(&table), "--json"]);
    assert!(!out.status.success(), "bad files must fail verify");
    let shallow = bad_of(&out);
    for f in truncated
        .iter()
        .chain(&deleted)
        .chain([&fresh_truncated, &fresh_deleted])
    {
        assert!(
            shallow.contains_key(f),
            "{f} not found by the shallow verify: {shallow:?}"
        );
    }

    // Deep, with the backup's checksums: exactly the corrupted files, each with its version.
    let out = verify_deep_json(&table, &backups, &[]);
    assert!(!out.status.success());
    let deep = bad_of(&out);
    assert_eq!(
        deep.keys().cloned().collect::<BTreeSet<_>>(),
        all_bad,
        "{deep:?}"
    );
    for (f, (added_in, reason)) in &deep {
        assert_eq!(added_in["version"], added_by[f], "{f}: {added_in}");
        if deleted.contains(f) || *f == fresh_deleted {
            assert_eq!(reason, "missing", "{f}");
        } else if truncated.contains(f) || *f == fresh_truncated {
            assert_eq!(reason, "size_mismatch", "{f}");
        }
    }
    // An older version's snapshot: the files added after it are not its concern.
    let out = verify_deep_json(&table, &backups, &["--version", "3"]);
    let at_3 = bad_of(&out);
    let mut expect_3 = all_bad.clone();
    expect_3.remove(&fresh_truncated);
    expect_3.remove(&fresh_deleted);
    assert_eq!(at_3.keys().cloned().collect::<BTreeSet<_>>(), expect_3);
    // The text report names each file, its version and the reason.
    let out = tidemark(&["verify", s(&table), "--deep", "--manifest", s(&backups)]);
    let text = String::from_utf8_lossy(&out.stdout);
    for f in &all_bad {
        assert!(
            text.contains(&format!("BAD       {f} (added in version {})", added_by[f])),
            "{f} not reported: {text}"
        );
    }

    // Repair (deep, so the flipped bytes are found by the backup's checksums): every file
    // the backup holds is put back; the two newer ones cannot be.
    let out = tidemark(&[
        "verify",
        s(&table),
        "--deep",
        "--repair-from",
        s(&backups),
        "--json",
    ]);
    assert!(!out.status.success(), "two files cannot be repaired");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repairs = report["repairs"].as_array().unwrap();
    assert_eq!(repairs.len(), all_bad.len(), "{report}");
    for r in repairs {
        let path = r["path"].as_str().unwrap();
        let expect_repaired = path != fresh_truncated && path != fresh_deleted;
        assert_eq!(r["repaired"], expect_repaired, "{r}");
        if !expect_repaired {
            assert!(
                r["reason"].as_str().unwrap().contains("no backup holds"),
                "{r}"
            );
        }
    }
    assert_eq!(report["still_bad"], 2);
    let out = verify_deep_json(&table, &backups, &[]);
    let left = bad_of(&out);
    assert_eq!(
        left.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([fresh_truncated.clone(), fresh_deleted.clone()])
    );
    // The repaired files are the backed-up bytes again.
    for f in flipped.iter().chain(&truncated).chain(&deleted) {
        let (id, _) = find_backup_copy(&backups, f);
        assert_eq!(
            std::fs::read(table.join(f)).unwrap(),
            std::fs::read(&id).unwrap(),
            "{f}"
        );
    }
    // A damaged backup copy is never restored: the restore names the backup and the file.
    let victim = &flipped[0];
    let (copy, _) = find_backup_copy(&backups, victim);
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&copy, bytes).unwrap();
    let out = tidemark(&[
        "restore-backup",
        s(&backups),
        "--to",
        s(&dir.path().join("r")),
    ]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(victim.as_str()) && err.contains("is damaged"),
        "{err}"
    );
    // Nor used for a repair.
    std::fs::remove_file(table.join(victim)).unwrap();
    let out = tidemark(&["verify", s(&table), "--repair-from", s(&backups), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = report["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == victim.as_str())
        .unwrap();
    assert_eq!(r["repaired"], false, "{report}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("no longer matches its manifest"),
        "{report}"
    );
}

/// A log cleaned up to a checkpoint: an incremental after a backup whose versions the log
/// no longer holds is refused (saying to take --full); a full backup starts at the
/// checkpoint and restores the same rows as the source.
#[test]
fn a_cleaned_up_log_refuses_an_incremental_and_a_full_backup_starts_at_the_checkpoint() {
    let Some((dir, src, backups)) = scratch() else {
        return;
    };
    step(&src, "append", 0);
    let (_, many) = step(&src, "append_many", 1);
    backup_json(&src, &backups, &[]);
    step(&src, "append", 2);
    // A checkpoint of version 2, then version 3; then the log cleaned up to the checkpoint.
    let (v, _) = step(&src, "checkpoint", 3);
    assert_eq!(v, 3);
    let log = src.join("_delta_log");
    assert!(log.join("00000000000000000002.checkpoint.parquet").exists());
    for old in 0..=2 {
        std::fs::remove_file(log.join(format!("{old:020}.json"))).unwrap();
    }
    let out = tidemark(&["backup", "--from", s(&src), "--to", s(&backups)]);
    assert!(
        !out.status.success(),
        "an incremental across a cleaned-up log"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("--full") && err.contains("00000000000000000001.json"),
        "{err}"
    );

    let report = backup_json(&src, &backups, &["--full"]);
    assert_eq!(report["kind"], "full");
    let id = report["id"].as_str().unwrap();
    let copied = backups.join(id).join("table/_delta_log");
    assert!(copied
        .join("00000000000000000002.checkpoint.parquet")
        .exists());
    assert!(copied.join("00000000000000000003.json").exists());
    assert!(!copied.join("00000000000000000002.json").exists());
    // `_last_checkpoint` is kept only with the checkpoint it names.
    assert_eq!(
        std::fs::read(copied.join("_last_checkpoint")).unwrap(),
        std::fs::read(log.join("_last_checkpoint")).unwrap()
    );
    let dest = dir.path().join("restored");
    let report = restore_json(&backups, &dest, &[]);
    assert_eq!(report["version"], 3);
    let compared = assert_restores(&src, 3, &dest);
    assert_eq!(compared[0]["restored_version"], 3, "{compared}");
    // A file the checkpoint holds (its adding commit is gone) is reported as added at or
    // before the checkpoint's version.
    let out = tidemark(&["verify", s(&dest), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_file(dest.join(&many[3])).unwrap();
    let out = tidemark(&["verify", s(&dest), "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bad"][0]["path"], many[3].as_str(), "{report}");
    assert_eq!(report["bad"][0]["added_in"]["at_or_before"], 2, "{report}");
}

/// `tidemark backup` SIGKILLed at random moments: a killed backup leaves a directory without
/// a manifest, listed as unfinished and never used; every backup that has a manifest restores
/// exactly; the next backup after the kills succeeds.
#[test]
fn a_killed_backup_is_never_taken_for_a_whole_one() {
    let Some((dir, src, backups)) = scratch() else {
        return;
    };
    step(&src, "append_wide", 0);
    let (version, _) = step(&src, "append_many", 1);
    let mut rng = rand::rng();
    for _ in 0..6 {
        let before = std::fs::read_dir(&backups).map_or(0, |d| d.count());
        // Copies slowed down (5 ms per chunk read), so the kill lands while files are copied.
        let mut child = std::process::Command::new(EXE)
            .args(["backup", "--from", s(&src), "--to", s(&backups), "--full"])
            .env("TIDEMARK_FAULT_COPY_DELAY_MS", "5")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&backups).map_or(0, |d| d.count()) <= before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
    }
    let list = ok_json(&["backup", "list", s(&backups), "--json"]);
    let whole = list["backups"].as_array().unwrap().len();
    let unfinished = list["unfinished"].as_array().unwrap().len();
    // A kill before the backup's directory was made leaves nothing.
    assert!(whole + unfinished <= 6, "{list}");
    assert!(unfinished > 0, "no kill landed mid-backup: {list}");
    assert!(list["unreadable"].as_array().unwrap().is_empty(), "{list}");
    for b in list["backups"].as_array().unwrap() {
        // Each whole backup alone restores the source's rows.
        let one = dir
            .path()
            .join(format!("only-{}", b["id"].as_str().unwrap()));
        std::fs::create_dir_all(&one).unwrap();
        std::fs::rename(
            backups.join(b["id"].as_str().unwrap()),
            one.join(b["id"].as_str().unwrap()),
        )
        .unwrap();
        let dest = dir
            .path()
            .join(format!("restored-{}", b["id"].as_str().unwrap()));
        restore_json(&one, &dest, &[]);
        assert_restores(&src, version, &dest);
    }
    // The next backup ignores the unfinished ones.
    let report = backup_json(&src, &backups, &[]);
    assert_eq!(report["kind"], "full", "{report}");
    let dest = dir.path().join("restored-after");
    restore_json(&backups, &dest, &[]);
    assert_restores(&src, version, &dest);
}

/// A file with a deletion vector (whose own file backups do not copy yet) is refused, for
/// an incremental and for a full backup, naming the file and the version.
#[test]
fn a_deletion_vector_is_refused_not_backed_up_incompletely() {
    let Some((_dir, src, backups)) = scratch() else {
        return;
    };
    let (_, added) = step(&src, "append", 0);
    backup_json(&src, &backups, &[]);
    // Version 1 re-adds the file with a deletion vector (as a DV-writing engine would).
    let path = &added[0];
    let size = std::fs::metadata(src.join(path)).unwrap().len();
    let commit = format!(
        "{{\"remove\":{{\"path\":\"{path}\",\"dataChange\":true,\"deletionTimestamp\":1}}}}\n{{\"add\":{{\"path\":\"{path}\",\"size\":{size},\"partitionValues\":{{\"part\":\"0\"}},\"modificationTime\":1,\"dataChange\":true,\"deletionVector\":{{\"storageType\":\"u\",\"pathOrInlineDv\":\"ab^-aqEH.-t@S}}K{{vb[*k^\",\"offset\":4,\"sizeInBytes\":40,\"cardinality\":3}}}}}}\n"
    );
    std::fs::write(src.join("_delta_log/00000000000000000001.json"), commit).unwrap();
    for full in [false, true] {
        let mut args = vec!["backup", "--from", s(&src), "--to", s(&backups)];
        if full {
            args.push("--full");
        }
        let out = tidemark(&args);
        assert!(!out.status.success(), "full={full}");
        let err = stderr_of(&out);
        assert!(
            err.contains("deletion vector")
                && err.contains(path.as_str())
                && err.contains("version 1"),
            "full={full}: {err}"
        );
    }
}

/// The backup's copy of table file `rel` (the only backup in `backups`).
fn find_backup_copy(backups: &Path, rel: &str) -> (PathBuf, ()) {
    for e in std::fs::read_dir(backups).unwrap() {
        let p = e.unwrap().path().join("table").join(rel);
        if p.exists() {
            return (p, ());
        }
    }
    panic!("{rel} not in any backup");
}

/// Scenario "accidental table delete": a pipeline runs while backups are taken; the table
/// directory is deleted under it; the operator stops it, restores the newest backup into the
/// table's path and restarts it with `--rewind-to` (the table is behind the checkpoint
/// store). Every Kafka record ends up in the table exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn accidental_table_delete_is_undone_by_restore_backup_and_a_rewind() {
    let Some(brokers) = broker() else { return };
    let (topic, fixture, mut ends) = topic_of_values_and_fixture(
        &brokers,
        "backup-delete",
        2,
        3_000,
        order_json,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 400\nretain = 1000\n",
    )
    .await;
    let backups = fixture.dir.path().join("backups");
    let mut child = fixture.spawn(false, &[]);
    let log = drain_stderr(&mut child);
    let wait_rows = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows = audit::replay_log(&fixture.table)
                .ok()
                .and_then(|r| audit::read_coordinates(&fixture.table, &r.live_files).ok())
                .map_or(0, |c| c.len() as u64);
            if rows >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pipeline did not reach {n} rows"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Backups while the pipeline writes: a full one, then incrementals as more arrives.
    wait_rows(1_000);
    let mut taken = 0;
    let mut backup = || {
        backup_json(&fixture.table, &backups, &[]);
        taken += 1;
    };
    backup();
    for round in 1..=3u64 {
        for (k, n) in produce_range(
            &brokers,
            &topic,
            2,
            round * 3_000..(round + 1) * 3_000,
            order_json,
        ) {
            *ends.entry(k).or_insert(0) += n;
        }
        wait_rows(1_000 + round * 3_000);
        backup();
    }
    assert_eq!(taken, 4);
    let list = ok_json(&["backup", "list", s(&backups), "--json"]);
    let kinds: Vec<&str> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "full", "{list}");
    assert!(kinds[1..].iter().all(|k| *k == "incremental"), "{list}");

    // The pipeline commits past the newest backup (so the restored table will be behind
    // the checkpoint store)...
    for (k, n) in produce_range(&brokers, &topic, 2, 12_000..13_000, order_json) {
        *ends.entry(k).or_insert(0) += n;
    }
    wait_rows(13_000);
    // ... then the accident: the table directory is deleted while the pipeline runs and
    // records keep coming; then the operator stops the pipeline.
    std::fs::remove_dir_all(&fixture.table).unwrap();
    for (k, n) in produce_range(&brokers, &topic, 2, 13_000..14_000, order_json) {
        *ends.entry(k).or_insert(0) += n;
    }
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill has no memory-safety preconditions; the pid is our live child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let _ = log.join();
    if fixture.table.exists() {
        // Whatever the pipeline wrote after the delete is not the table: out of the way.
        std::fs::rename(
            &fixture.table,
            fixture.dir.path().join("table-after-delete"),
        )
        .unwrap();
    }

    let report = restore_json(&backups, &fixture.table, &[]);
    let replay = audit::replay_log(&fixture.table).unwrap();
    assert_eq!(report["version"], replay.version, "{report}");
    let restored_epoch = replay.txn["test"];
    assert!(restored_epoch > 0);

    // The table is behind the checkpoint store: `status` says so, a plain start would
    // refuse; the rewind path replays from the table's progress.
    let status = String::from_utf8_lossy(&fixture.status(false).stdout).to_string();
    assert!(status.contains("behind the checkpoint"), "{status}");
    let rewind = restored_epoch.to_string();
    let out = fixture
        .spawn_with(true, &["--rewind-to", &rewind], &[])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        tidemark_tests::summary(&out)["recovery"]["case"],
        "rewind",
        "{}",
        stderr_of(&out)
    );
    assert_exactly_once(&fixture, &ends, 14_000).await;
    // And the restored-then-continued table verifies clean.
    let out = tidemark(&[
        "verify",
        s(&fixture.table),
        "--deep",
        "--manifest",
        s(&backups),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
