use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

#[test]
fn log_file_names_are_classified() {
    let v = "00000000000000000007";
    assert_eq!(
        classify(&format!("{v}.json")),
        LogFileKind::Commit { version: 7 }
    );
    assert_eq!(
        classify(&format!("{v}.crc")),
        LogFileKind::Checksum { version: 7 }
    );
    assert_eq!(
        classify(&format!("{v}.checkpoint.parquet")),
        LogFileKind::Checkpoint {
            version: 7,
            part: None
        }
    );
    assert_eq!(
        classify(&format!("{v}.checkpoint.0000000002.0000000003.parquet")),
        LogFileKind::Checkpoint {
            version: 7,
            part: Some((2, 3))
        }
    );
    assert_eq!(
        classify(&format!(
            "{v}.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.json"
        )),
        LogFileKind::Checkpoint {
            version: 7,
            part: None
        }
    );
    assert_eq!(
        classify(&format!("{v}.00000000000000000009.compacted.json")),
        LogFileKind::Compacted { from: 7, to: 9 }
    );
    assert_eq!(classify("_last_checkpoint"), LogFileKind::LastCheckpoint);
    for other in [
        "7.json",
        "_commit_1234.json.tmp",
        ".00000000000000000007.json.tidemark-tmp-1-2",
        "00000000000000000007.checkpoint.0000000004.0000000003.parquet",
        "00000000000000000007.json.tmp",
    ] {
        assert_eq!(classify(other), LogFileKind::Other, "{other}");
    }
}

async fn write(dir: &std::path::Path, name: &str, body: &str) {
    let path = dir.join("_delta_log").join(name);
    tokio::fs::create_dir_all(path.parent().unwrap())
        .await
        .unwrap();
    tokio::fs::write(path, body).await.unwrap();
}

#[tokio::test]
async fn a_listing_groups_commits_checkpoints_and_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let loc = crate::location::open_store(dir.path().to_str().unwrap()).unwrap();
    let empty = LogListing::list(&loc).await.unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.newest_version(), None);

    for v in [3u64, 4, 6] {
        write(dir.path(), &commit_file_name(v), "{\"protocol\":{}}\n").await;
    }
    // A complete multi-part checkpoint at 4, an incomplete one at 6.
    write(
        dir.path(),
        "00000000000000000004.checkpoint.0000000001.0000000002.parquet",
        "x",
    )
    .await;
    write(
        dir.path(),
        "00000000000000000004.checkpoint.0000000002.0000000002.parquet",
        "x",
    )
    .await;
    write(
        dir.path(),
        "00000000000000000006.checkpoint.0000000001.0000000002.parquet",
        "x",
    )
    .await;
    write(dir.path(), "_last_checkpoint", "{\"version\":4}").await;
    write(
        dir.path(),
        ".00000000000000000007.json.tidemark-tmp-1-2",
        "{}",
    )
    .await;
    write(dir.path(), "_sidecars/abc.parquet", "x").await;

    let log = LogListing::list(&loc).await.unwrap();
    assert_eq!(log.oldest_commit(), Some(3));
    assert_eq!(log.newest_version(), Some(6));
    assert_eq!(log.commit_gaps(), vec![5]);
    assert_eq!(
        log.complete_checkpoints()
            .map(|(v, f)| (v, f.len()))
            .collect::<Vec<_>>(),
        vec![(4, 2)]
    );
    assert!(log.checkpoint(6).is_none());
    assert_eq!(log.checkpoint_at_or_before(100).map(|(v, _)| v), Some(4));
    assert!(log.last_checkpoint().is_some());
    let mut other: Vec<&str> = log.other().iter().map(|f| f.name.as_str()).collect();
    other.sort_unstable();
    assert_eq!(
        other,
        vec![".00000000000000000007.json.tidemark-tmp-1-2", "abc.parquet"]
    );

    let read = read_commit(&loc, 4).await.unwrap();
    assert_eq!(
        read.parse(log.table()).unwrap().actions,
        vec![Action::Protocol]
    );
    let missing = read_commit(&loc, 5).await.unwrap_err();
    assert!(
        matches!(missing, LogError::MissingVersion { version: 5, .. }),
        "{missing}"
    );
    assert!(
        missing.to_string().contains("00000000000000000005.json"),
        "{missing}"
    );
}

/// The newest part of the log: from the checkpoint `_last_checkpoint` names on (older
/// commits and checkpoints left out), the whole log without a hint or with one naming an
/// incomplete checkpoint.
#[tokio::test]
async fn the_newest_listing_starts_at_the_hinted_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let loc = crate::location::open_store(dir.path().to_str().unwrap()).unwrap();
    for v in 0u64..=12 {
        write(dir.path(), &commit_file_name(v), "{\"protocol\":{}}\n").await;
    }
    write(dir.path(), "00000000000000000004.checkpoint.parquet", "x").await;
    write(dir.path(), "00000000000000000009.checkpoint.parquet", "x").await;
    let whole = LogListing::list_newest(&loc).await.unwrap();
    assert_eq!(
        (whole.oldest_commit(), whole.newest_version()),
        (Some(0), Some(12))
    );

    write(dir.path(), "_last_checkpoint", "{\"version\":9}").await;
    let newest = LogListing::list_newest(&loc).await.unwrap();
    assert_eq!(newest.oldest_commit(), Some(9));
    assert_eq!(newest.newest_version(), Some(12));
    assert_eq!(
        newest
            .complete_checkpoints()
            .map(|(v, _)| v)
            .collect::<Vec<_>>(),
        vec![9]
    );
    assert!(newest.last_checkpoint().is_some());

    // A hint naming a checkpoint that is not there (a crash before it was placed): all of it.
    write(dir.path(), "_last_checkpoint", "{\"version\":11}").await;
    let fallback = LogListing::list_newest(&loc).await.unwrap();
    assert_eq!(fallback.oldest_commit(), Some(0));
    assert_eq!(
        fallback
            .complete_checkpoints()
            .map(|(v, _)| v)
            .collect::<Vec<_>>(),
        vec![4, 9]
    );
}

#[test]
fn a_tidemark_commit_parses_with_paths_decoded_and_stats_read() {
    let stats = json!({"numRecords": 42, "minValues": {}}).to_string();
    let lines = [
        json!({"commitInfo": {"timestamp": 1_700_000_000_123i64, "operation": "WRITE",
            "tidemark": {"pipeline_id": "orders", "epoch": 9}}}),
        json!({"txn": {"appId": "orders", "version": 9}}),
        json!({"add": {"path": "day=2026-11-30/part%20one%3A1.parquet", "size": 1234,
            "partitionValues": {}, "modificationTime": 1, "dataChange": true, "stats": stats}}),
        json!({"remove": {"path": "old.parquet", "dataChange": true}}),
        json!({"cdc": {"path": "_change_data/c.parquet", "size": 7, "partitionValues": {}, "dataChange": false}}),
        json!({"domainMetadata": {"domain": "x"}}),
    ];
    let text = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let commit = parse_commit("t", 9, format!("{text}\n\n").as_bytes()).unwrap();
    assert_eq!(commit.timestamp_ms(), Some(1_700_000_000_123));
    let info = commit.commit_info().unwrap();
    assert_eq!(info.operation.as_deref(), Some("WRITE"));
    assert_eq!(info.tidemark_epoch(), Some(("orders".into(), 9)));
    let add = commit.adds().next().unwrap();
    assert_eq!(add.path.decoded, "day=2026-11-30/part one:1.parquet");
    assert_eq!(add.path.encoded, "day=2026-11-30/part%20one%3A1.parquet");
    assert_eq!(
        (add.size, add.num_records, add.data_change),
        (1234, Some(42), true)
    );
    assert_eq!(commit.removes().next().unwrap().path.decoded, "old.parquet");
    let files: Vec<(String, u64)> = commit
        .files_added()
        .map(|(p, s)| (p.decoded.clone(), s))
        .collect();
    assert_eq!(
        files,
        vec![
            ("day=2026-11-30/part one:1.parquet".to_string(), 1234),
            ("_change_data/c.parquet".to_string(), 7)
        ]
    );
    assert!(commit
        .actions
        .contains(&Action::Other("domainMetadata".into())));
    assert!(!commit.has_metadata());
}

#[test]
fn bad_lines_are_named_by_table_file_and_line() {
    let err =
        parse_commit("tbl", 3, b"{\"protocol\":{}}\n{\"add\":{\"path\":\"a\"}}\n").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tbl") && msg.contains("00000000000000000003.json"),
        "{msg}"
    );
    assert!(
        msg.contains("line 2") && msg.contains("add without a size"),
        "{msg}"
    );
    let err = parse_commit("tbl", 3, b"{\"protocol\":{}} trailing").unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
    let err = parse_commit("tbl", 3, b"{\"protocol\":{},\"txn\":{}}").unwrap_err();
    assert!(err.to_string().contains("exactly one action"), "{err}");
    let err = parse_commit("tbl", 3, b"{\"add\":{\"path\":\"a\",\"size\":-1}}").unwrap_err();
    assert!(err.to_string().contains("non-negative"), "{err}");
}

/// Percent-encodes a path the way Delta writers do (everything but unreserved characters and
/// `/`).
fn encode(path: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'=');
    utf8_percent_encode(path, SET).to_string()
}

fn arb_path() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-zA-Z0-9 _=:%#?é-]{1,12}", 1..4).prop_map(|parts| parts.join("/"))
}

proptest! {
    /// Generated add/remove/commitInfo lines, written as a Delta writer writes them, parse back
    /// to what was generated.
    #[test]
    fn action_lines_round_trip(
        path in arb_path(),
        size in 0u64..u64::MAX / 2,
        records in proptest::option::of(0u64..1_000_000_000),
        data_change in any::<bool>(),
        timestamp in any::<i64>(),
        epoch in 0u64..u64::MAX / 2,
    ) {
        let mut add = json!({"path": encode(&path), "size": size, "partitionValues": {},
            "modificationTime": 0, "dataChange": data_change});
        if let Some(n) = records {
            add["stats"] = Value::String(json!({"numRecords": n}).to_string());
        }
        let text = format!(
            "{}\n{}\n{}\n",
            json!({"commitInfo": {"timestamp": timestamp, "tidemark": {"pipeline_id": "p", "epoch": epoch}}}),
            json!({"add": add}),
            json!({"remove": {"path": encode(&path), "size": size, "dataChange": true}}),
        );
        let commit = parse_commit("t", 1, text.as_bytes()).unwrap();
        let expected_path = FilePath { decoded: path.clone(), encoded: encode(&path) };
        prop_assert_eq!(commit.actions, vec![
            Action::CommitInfo(CommitInfo {
                timestamp_ms: Some(timestamp),
                operation: None,
                operation_parameters: None,
                tidemark: Some(json!({"pipeline_id": "p", "epoch": epoch})),
            }),
            Action::Add(AddFile {
                path: expected_path.clone(),
                size,
                num_records: records,
                data_change,
                has_deletion_vector: false,
            }),
            Action::Remove(RemoveFile { path: expected_path, size: Some(size) }),
        ]);
    }

    /// Any bytes either parse or fail with an error naming the file; never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = parse_commit("t", 1, &bytes) {
            prop_assert!(e.to_string().contains("00000000000000000001.json"));
        }
    }
}

fn listing_of(commits: &BTreeSet<u64>, checkpoints: &BTreeSet<u64>) -> LogListing {
    let mut listing = LogListing::default();
    let names = commits
        .iter()
        .map(|v| commit_file_name(*v).to_string())
        .chain(
            checkpoints
                .iter()
                .map(|v| format!("{v:020}.checkpoint.parquet")),
        );
    for name in names {
        listing.insert(LogFile {
            kind: classify(&name),
            location: object_store::path::Path::from(format!("_delta_log/{name}")),
            name,
            size: 1,
            last_modified_ms: 0,
        });
    }
    listing
}

/// A cleanup seen half done (commits 0..=3 and 6 gone, 5 left over): the replay starts at the
/// oldest checkpoint the unbroken commits after it continue, not at the oldest commit present.
#[test]
fn the_oldest_replay_start_skips_a_gap_a_cleanup_in_progress_leaves() {
    let commits: BTreeSet<u64> = [4, 5, 7, 8, 9, 10].into();
    let listing = listing_of(&commits, &[5, 6, 10].into());
    assert_eq!(listing.oldest_replay_start(), Ok(Some(6)));
    assert_eq!(
        listing_of(&commits, &[5].into()).oldest_replay_start(),
        Err(6)
    );
    assert_eq!(
        listing_of(&(0..=10).collect(), &[5].into()).oldest_replay_start(),
        Ok(None)
    );
    // The newest version a checkpoint whose commit is gone: that checkpoint alone.
    assert_eq!(
        listing_of(&[3].into(), &[3, 12].into()).oldest_replay_start(),
        Ok(Some(12))
    );
    assert_eq!(LogListing::default().oldest_replay_start(), Ok(None));
}

proptest! {
    /// Against every possible start, by brute force: the start found replays every version
    /// from it to the newest one with the files present, and no older start does.
    #[test]
    fn the_oldest_replay_start_is_the_oldest_that_replays(
        commits in proptest::collection::btree_set(0u64..24, 0..24),
        checkpoints in proptest::collection::btree_set(0u64..24, 0..5),
    ) {
        let listing = listing_of(&commits, &checkpoints);
        let Some(newest) = listing.newest_version() else {
            prop_assert_eq!(listing.oldest_replay_start(), Ok(None));
            return Ok(());
        };
        let unbroken = |from: u64| (from..=newest).all(|v| commits.contains(&v));
        let expected = if unbroken(0) {
            Ok(None)
        } else {
            checkpoints.iter().copied().find(|cp| unbroken(cp + 1)).map(Some).ok_or(())
        };
        match listing.oldest_replay_start() {
            Err(missing) => {
                prop_assert_eq!(expected, Err(()));
                prop_assert!(!commits.contains(&missing) && missing <= newest);
            }
            found => prop_assert_eq!(found.map_err(|_| ()), expected),
        }
    }
}
