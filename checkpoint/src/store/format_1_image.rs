//! Rewrites a store as a format 1 build would have left it, for upgrade tests (cargo feature
//! `test-support`; never in a release build).
//!
//! Why: a store written by an older build is migrated at its first read-write open
//! (`CheckpointStore::open`, "Format 1" in the module documentation of `store`). The store's
//! own tests build such a store by hand; the engine's tests need one behind a real pipeline
//! (its checkpoints, its WAL changelog, its table) to show that a restart of a new build over
//! an old store keeps dedup exact, crash or no crash in the middle of the migration.
//!
//! Format 1 held the dedup state in `dedup`, keyed by (event time, key), empty values; from
//! some version on it also kept `dedup_by_key` as an index of it, marked by `dedup_key_index`
//! in `meta`. Everything else (checkpoint records, history, the changelog notes) is the same
//! in both formats, so the rewrite touches only those three things and the version.

use std::path::Path;

use rocksdb::WriteBatch;

use super::{
    record, CheckpointStore, StoreError, StoreOptions, CF_DEDUP, CF_DEDUP_BY_KEY, CF_META,
    FORMAT_TIME_ORDERED, KEY_FORMAT, KEY_KEY_INDEX,
};

/// Rewrites the format 2 store at `path` as format 1: every state entry the store would load
/// (at or above the newest record's watermark) put into `dedup` by (event time, key); with
/// `key_index`, `dedup_by_key` kept and marked as its index, without it emptied (a store from
/// before the index). Returns the entries written into `dedup`. The store must not be open
/// elsewhere (the state directory's lock is the caller's business).
pub fn rewrite_as_format_1(path: &Path, key_index: bool) -> Result<u64, StoreError> {
    let store = CheckpointStore::open(path, StoreOptions::default())?;
    let mut entries: Vec<(Vec<u8>, i64)> = Vec::new();
    store.for_each_dedup_entry_from(None, |key, time| entries.push((key.to_vec(), time)))?;
    let (meta, dedup, by_key) = (
        store.cf(CF_META)?,
        store.cf(CF_DEDUP)?,
        store.cf(CF_DEDUP_BY_KEY)?,
    );
    let mut batch = WriteBatch::default();
    for (key, time) in &entries {
        batch.put_cf(dedup, record::dedup_entry_key(*time, key), []);
    }
    if key_index {
        batch.put_cf(meta, KEY_KEY_INDEX, [1u8]);
    } else {
        batch.delete_range_cf(by_key, Vec::<u8>::new(), vec![0xffu8; 64]);
        batch.delete_cf(meta, KEY_KEY_INDEX);
    }
    batch.put_cf(meta, KEY_FORMAT, FORMAT_TIME_ORDERED.to_le_bytes());
    store.write_synced(batch)?;
    Ok(entries.len() as u64)
}
