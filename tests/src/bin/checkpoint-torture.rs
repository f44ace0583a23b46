//! Child process for the checkpoint crate's crash tests: appends to a WAL, or writes
//! checkpoints, forever, printing what is durable; the test SIGKILLs it at random moments.
//!
//!   checkpoint-torture wal <dir>     frame i carries payload(i); a seal every 50 frames;
//!                                    prints "durable <n>" once frames 0..n are sealed
//!   checkpoint-torture store <dir>   checkpoint e inserts 1000 keys at time e and evicts below
//!                                    e - 5; prints "durable <e>" once it is written
//!   checkpoint-torture changelog <dir>   the same epochs on the changelog path: record e
//!                                    alone (synced, naming the state writer's synced epoch),
//!                                    then the delta to the background state writer (gathered,
//!                                    ingested about once a second); prints "durable <e>"
//!
//! Each run continues where the recovered state ends.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use tidemark_checkpoint::store::{
    CheckpointRecord, CheckpointStore, Counts, PackedKeys, StateDelta, StateWriter, StoreOptions,
};
use tidemark_checkpoint::wal::FrameKind;
use tidemark_checkpoint::{SyncPolicy, Wal, WalOptions, WalPosition};
use tidemark_tests::torture::{payload, store_keys};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: checkpoint-torture wal|store <dir>");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    let mut out = std::io::stdout();
    match mode.as_str() {
        "wal" => {
            let options = WalOptions {
                segment_size: 16 << 10,
                sync: SyncPolicy::OnSeal,
            };
            let (mut wal, _) = Wal::open(dir, options, None).expect("open wal");
            let mut i = tidemark_checkpoint::WalReader::new(dir, WalPosition::default())
                .filter(|f| matches!(f, Ok((_, f)) if f.kind == FrameKind::Record))
                .count() as u64;
            loop {
                wal.append(FrameKind::Record, i / 50, &payload(i))
                    .expect("append");
                i += 1;
                if i.is_multiple_of(7) {
                    wal.commit().expect("commit");
                }
                if i.is_multiple_of(50) {
                    wal.seal(i / 50, &i.to_le_bytes()).expect("seal");
                    writeln!(out, "durable {i}").expect("stdout");
                    out.flush().expect("stdout");
                }
            }
        }
        "store" => {
            let store = CheckpointStore::open(dir, StoreOptions { retain: 5 }).expect("open store");
            let mut epoch = store
                .latest()
                .expect("latest")
                .map(|r| r.epoch)
                .unwrap_or(0);
            loop {
                epoch += 1;
                let record = record(epoch);
                store
                    .write(&record, kv(&store_keys(epoch)), Some(epoch as i64 - 5))
                    .expect("checkpoint");
                writeln!(out, "durable {epoch}").expect("stdout");
                out.flush().expect("stdout");
            }
        }
        "changelog" => {
            let store = CheckpointStore::open(dir, StoreOptions { retain: 5 }).expect("open store");
            let latest = store.latest().expect("latest");
            let (mut epoch, synced) = latest.map_or((0, 0), |r| (r.epoch, r.state_epoch));
            let writer = StateWriter::start(store.clone(), synced);
            // The deltas the store may lack come back from the changelog (here: recomputed).
            for e in synced + 1..=epoch {
                writer.queue(delta(e)).expect("queue");
            }
            loop {
                epoch += 1;
                let mut record = record(epoch);
                record.state_epoch = writer.durable_epoch();
                store.write_record(&record).expect("checkpoint record");
                writer.queue(delta(epoch)).expect("queue");
                writeln!(out, "durable {epoch}").expect("stdout");
                out.flush().expect("stdout");
            }
        }
        other => {
            eprintln!("unknown mode {other:?}");
            ExitCode::from(2)
        }
    }
}

/// Checkpoint `epoch` of both store modes (its state synced through itself).
fn record(epoch: u64) -> CheckpointRecord {
    CheckpointRecord {
        epoch,
        committed_epoch: epoch,
        table_version: Some(epoch as i64),
        watermark: Some(epoch as i64 - 5),
        wal_segment: 0,
        wal_offset: 0,
        created_at_ms: 0,
        counts: Counts {
            read: epoch * 1000,
            written: epoch * 1000,
            ..Counts::default()
        },
        positions: Vec::new(),
        state_epoch: epoch,
        state_wal_segment: 0,
        state_wal_offset: 0,
        changelog_starts: None,
    }
}

/// Epoch `epoch`'s state delta: its keys, eviction below `epoch - 5`.
fn delta(epoch: u64) -> StateDelta {
    let mut inserts = PackedKeys::default();
    for (k, t) in store_keys(epoch) {
        inserts.push(&k, t);
    }
    StateDelta {
        epoch,
        inserts,
        evict_below: Some(epoch as i64 - 5),
    }
}

/// The store takes borrowed `(key, event_time)` pairs.
fn kv(v: &[(Vec<u8>, i64)]) -> impl Iterator<Item = (&[u8], i64)> + '_ {
    v.iter().map(|(k, t)| (k.as_slice(), *t))
}
