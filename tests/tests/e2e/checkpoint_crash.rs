//! Crash tests of the checkpoint crate: a child appends to the WAL or writes checkpoints and is
//! SIGKILLed at random moments, many times; every reopen must hold exactly a clean prefix that
//! includes everything the child reported durable.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::Rng;
use tidemark_checkpoint::store::{CheckpointStore, StoreOptions};
use tidemark_checkpoint::wal::FrameKind;
use tidemark_checkpoint::{Wal, WalOptions, WalPosition, WalReader};
use tidemark_tests::torture::{payload, store_keys};

const EXE: &str = env!("CARGO_BIN_EXE_checkpoint-torture");

/// Runs the child in `mode` on `dir`, kills it after a random delay, and returns the last
/// "durable <n>" it printed (0 if none).
fn run_and_kill(mode: &str, dir: &Path, rng: &mut impl Rng) -> u64 {
    let mut child = Command::new(EXE)
        .arg(mode)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn torture child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line
                .strip_prefix("durable ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = n;
                let _ = tx.send(n);
            }
        }
        last
    });
    // Wait for the child to make some progress, then let it run a random while longer.
    let _ = rx.recv_timeout(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(rng.random_range(1..120)));
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    reader.join().expect("reader")
}

#[test]
fn wal_survives_sigkill_mid_append_many_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut acknowledged = 0;
    for round in 0..25 {
        acknowledged = acknowledged.max(run_and_kill("wal", dir.path(), &mut rng));
        let (_wal, report) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
        let records: Vec<Vec<u8>> = WalReader::new(dir.path(), WalPosition::default())
            .map(|f| f.unwrap().1)
            .filter(|f| f.kind == FrameKind::Record)
            .map(|f| f.payload)
            .collect();
        assert!(
            records.len() as u64 >= acknowledged,
            "round {round}: sealed frames lost ({} < {acknowledged})",
            records.len()
        );
        for (i, p) in records.iter().enumerate() {
            assert_eq!(
                *p,
                payload(i as u64),
                "round {round}: frame {i} is not what was appended"
            );
        }
        assert!(report.frames >= acknowledged);
    }
    assert!(acknowledged > 0, "the child never made anything durable");
}

#[test]
fn checkpoints_are_all_or_nothing_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut acknowledged = 0;
    for round in 0..25 {
        acknowledged = acknowledged.max(run_and_kill("store", dir.path(), &mut rng));
        let store = CheckpointStore::open(dir.path(), StoreOptions { retain: 5 }).unwrap();
        let latest = store.latest().unwrap().expect("a checkpoint");
        let c = latest.epoch;
        assert!(
            c >= acknowledged,
            "round {round}: checkpoint {acknowledged} was acknowledged but {c} is the newest"
        );
        // Exactly the keys of epochs max(1, c-5)..=c: nothing of a torn checkpoint c+1.
        let expected: BTreeSet<(Vec<u8>, i64)> = (c.saturating_sub(5).max(1)..=c)
            .flat_map(store_keys)
            .collect();
        let got: BTreeSet<(Vec<u8>, i64)> = store.dedup_entries().unwrap().into_iter().collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "round {round}: state of checkpoint {c} is not exact"
        );
        assert!(
            got == expected,
            "round {round}: state differs from checkpoint {c}'s"
        );
        assert_eq!(latest.counts.read, c * 1000);
    }
}

/// The changelog path (issue 22): checkpoint records are synced, state deltas are gathered in
/// the background and ingested later (staged SST files). After any SIGKILL, the newest record's
/// `state_epoch` never claims more than the store really kept: every key of the epochs up to
/// it (still above the watermark) is there, nothing of an epoch after the record is, and the
/// store plus the deltas after `state_epoch` (the changelog) is exactly the state of the record.
#[test]
fn the_state_never_claims_more_than_was_synced_under_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut acknowledged = 0;
    let mut lagging = 0;
    let mut noted_ahead = 0;
    for round in 0..25 {
        acknowledged = acknowledged.max(run_and_kill("changelog", dir.path(), &mut rng));
        let store = CheckpointStore::open(dir.path(), StoreOptions { retain: 5 }).unwrap();
        let latest = store.latest().unwrap().expect("a checkpoint");
        let c = latest.epoch;
        assert!(
            c >= acknowledged,
            "round {round}: record {acknowledged} was acknowledged but {c} is the newest"
        );
        assert!(latest.state_epoch <= c);
        if latest.state_epoch < c {
            lagging += 1;
        }
        // The store's own note of its ingested state may be newer than the record's
        // `state_epoch` (a restart reads the changelog from there): it must hold as well.
        let noted = store.state_ingested().unwrap();
        assert!(
            noted.is_none_or(|e| e <= c),
            "round {round}: the store notes state through {noted:?}, past record {c}"
        );
        if noted.is_some_and(|e| e > latest.state_epoch) {
            noted_ahead += 1;
        }
        let m = latest.state_epoch.max(noted.unwrap_or(0));
        let w = c as i64 - 5;
        let got: BTreeSet<(Vec<u8>, i64)> = store
            .dedup_entries()
            .unwrap()
            .into_iter()
            .filter(|(_, t)| *t >= w)
            .collect();
        let synced: BTreeSet<(Vec<u8>, i64)> = (c.saturating_sub(5).max(1)..=m)
            .flat_map(store_keys)
            .collect();
        assert!(
            got.is_superset(&synced),
            "round {round}: record {c} claims state through {m}, but {} of those keys are gone",
            synced.difference(&got).count()
        );
        // The key index (the state's only copy since store format 2) has every key the record
        // claims, with its time.
        let claimed: Vec<&(Vec<u8>, i64)> = synced.iter().collect();
        let keys: Vec<&[u8]> = claimed.iter().map(|(k, _)| k.as_slice()).collect();
        let looked = store.lookup_dedup_keys(&keys).unwrap();
        for ((k, t), found) in claimed.iter().zip(looked) {
            assert_eq!(
                found,
                Some(*t),
                "round {round}: record {c} claims state through {m}, but the key index lacks {}",
                String::from_utf8_lossy(k)
            );
        }
        let all: BTreeSet<(Vec<u8>, i64)> = (c.saturating_sub(5).max(1)..=c)
            .flat_map(store_keys)
            .collect();
        assert!(
            got.is_subset(&all),
            "round {round}: the store holds keys of no epoch up to {c}"
        );
        // Restored = store + changelog (epochs m+1..=c), filtered by the watermark: exact.
        let restored: BTreeSet<(Vec<u8>, i64)> = got
            .into_iter()
            .chain((m + 1..=c).flat_map(store_keys).filter(|(_, t)| *t >= w))
            .collect();
        assert_eq!(
            restored, all,
            "round {round}: restored state of record {c} is not exact"
        );
    }
    assert!(acknowledged > 0, "the child never made anything durable");
    eprintln!(
        "{lagging} of 25 kills left the state behind its record (the changelog was needed); \
         in {noted_ahead} the store's note was ahead of the record"
    );
}
