//! The RocksDB checkpoint store: positions, watermark, table version, dedup state, history.
//!
//! Column families:
//! - `meta`: `format_version` (u32 LE), `current` (epoch, u64 BE), and `state_ingested`
//!   (epoch, u64 BE): the newest epoch whose delta the [`StateWriter`] has ingested, written
//!   (unsynced) after the ingestion is durable, so a lower bound of what the `dedup` column
//!   families hold, possibly newer than the newest record's `state_epoch` (which can only name
//!   a state durable before the record was written). A restart reads the changelog from there
//!   (`CheckpointStore::state_ingested`).
//! - `history`: epoch (u64 BE) -> [`CheckpointRecord`]; the newest `retain` are kept, so a
//!   rewind can pick an older one.
//! - `dedup`: [`record::dedup_entry_key`] (event time, then key) -> empty. Time-ordered keys make
//!   eviction below a watermark drop whole files; the engine loads the state into memory at
//!   start from here ([`CheckpointStore::for_each_dedup_entry`]).
//! - `dedup_by_key`: dedup key -> event time ([`record::time_prefix`], 8 bytes), with a Bloom
//!   filter: the same entries as `dedup`, written in the same batches, for point lookups
//!   ([`CheckpointStore::lookup_dedup_keys`]) while a restart's load of `dedup` is still running
//!   (so the first verdicts need not wait for millions of keys to load). A put of a key again
//!   (accepted again after its eviction) overwrites its older time. Entries below the watermark
//!   of a durable record are dropped by the same compaction filter as `dedup`'s; one still on
//!   disk (or an older version resurfacing once a newer one was dropped, which is older still)
//!   is below every watermark a lookup uses, so lookups skip it.
//!   `meta` key `dedup_key_index` marks a store whose `dedup_by_key` holds every `dedup` entry
//!   (set when the store is created or reset; a store written by an older build lacks it, and
//!   a restart from it loads the whole state before its first verdict, as before).
//!
//! Two ways to write a checkpoint:
//! - [`CheckpointStore::write`]: ONE synced `WriteBatch` (record, history entry, `current`
//!   pointer, dedup inserts and eviction, history pruning), so after a crash either all of it is
//!   visible or none. The record's `state_epoch` is its own epoch.
//! - the changelog path, on the run's critical path: [`CheckpointStore::write_record`] (the
//!   record alone, one small synced batch), then the epoch's dedup delta through the
//!   [`StateWriter`]: gathered with the next ones for up to a second, written as one sorted SST
//!   file per dedup column family beside the store ([`CheckpointStore::stage_state`]: no
//!   memtable, no RocksDB log) and made part of the store by ingestion
//!   ([`StagedState::ingest`], durable when it returns; `staged.rs` says why and how). The
//!   delta's keys are durable in the engine's WAL already (its state-delta frames, before the
//!   epoch's seal), so the record says how far the store's state is durable (`state_epoch`)
//!   and the WAL keeps every later delta.
//!
//! **Eviction on the changelog path** writes no range tombstone: a tombstone `[0, w)` in every
//! flushed file made each file span the whole key space, so every compaction rewrote the whole
//! state (measured: RocksDB's compaction took more CPU than the pipeline's own work). Instead,
//! entries below the watermark of the newest durable record ([`CheckpointStore::set_evict_below`])
//! are dropped by a compaction filter when their file is compacted, and files wholly below it are
//! deleted ([`CheckpointStore::drop_files_below`]). Entries below the watermark that are still
//! on disk are never read: every load seeks to the watermark first
//! ([`CheckpointStore::for_each_dedup_entry_from`]).
//!
//! Invariants (the recovery argument in `engine/src/dedup.rs` rests on them): the delta of
//! epoch `e` reaches the store only after a record of epoch `>= e` is durable, deltas are
//! ingested in epoch order, and a record names `state_epoch = m` only once every delta up to `m`
//! is ingested. So after any crash the dedup column family holds the state of `state_epoch` plus
//! some prefix of the later deltas (up to the newest record's epoch), nothing more.

mod error;
mod packed;
mod pair_sort;
pub mod record;
mod staged;
mod state_writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tracing::{debug, info};

pub use error::{classify_rocks, StoreError, StoreErrorKind};
pub use packed::PackedKeys;
use pair_sort::{sort_in_dedup_order, sort_in_key_index_order};
pub use record::{ChangelogStart, CheckpointRecord, Counts, RecordError, SourcePosition};
pub use staged::StagedState;
pub use state_writer::{StateDelta, StateHold, StateWriter, SYNC_EVERY_ENV};

/// The store layout version this build writes.
pub const STORE_FORMAT_VERSION: u32 = 1;

const CF_META: &str = "meta";
const CF_HISTORY: &str = "history";
const CF_DEDUP: &str = "dedup";
const CF_DEDUP_BY_KEY: &str = "dedup_by_key";
const KEY_KEY_INDEX: &[u8] = b"dedup_key_index";
const KEY_FORMAT: &[u8] = b"format_version";
const KEY_CURRENT: &[u8] = b"current";
const KEY_STATE_INGESTED: &[u8] = b"state_ingested";

/// Settings of a [`CheckpointStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Checkpoints kept in history (at least 1).
    pub retain: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { retain: 10 }
    }
}

/// What one checkpoint write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointMetrics {
    /// Dedup keys inserted.
    pub inserted: usize,
    /// History entries pruned.
    pub pruned: usize,
    /// Wall time of building and writing the batch, in microseconds.
    pub micros: u64,
}

/// The RocksDB checkpoint store: see the module documentation. Clones share one open
/// database (the [`StateWriter`]'s thread holds one).
#[derive(Clone)]
pub struct CheckpointStore {
    db: Arc<DB>,
    path: PathBuf,
    options: StoreOptions,
    /// Entries of the dedup column family below this event time may be dropped by compaction
    /// (`i64::MIN`: none): the watermark of a durable checkpoint record.
    evict_below: Arc<AtomicI64>,
    /// `dedup_by_key` holds every entry of `dedup` (see the module documentation).
    key_index: bool,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The options of a dedup column family: [`db_options`] plus the compaction filter that drops
/// entries below `evict_below`, for `dedup` (`by_key` false: the time is the key's prefix) or
/// for `dedup_by_key` (the time is the value; a Bloom filter makes lookups of absent keys cheap).
fn dedup_options(evict_below: Arc<AtomicI64>, by_key: bool) -> Options {
    let mut o = db_options();
    if by_key {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(false);
        o.set_block_based_table_factory(&table);
    }
    // Deltas come as ingested files (`staged.rs`), one a second: rare compactions keep the
    // background work near one write per key (profiled: compacting after every small flush
    // cost more CPU than the pipeline's own work). The memtable only takes the synced
    // checkpoint path's inserts. Files wholly below the watermark are dropped, not compacted.
    o.set_write_buffer_size(64 << 20);
    o.set_max_write_buffer_number(4);
    o.set_level_zero_file_num_compaction_trigger(16);
    o.set_level_zero_slowdown_writes_trigger(64);
    o.set_level_zero_stop_writes_trigger(128);
    o.set_target_file_size_base(32 << 20);
    o.set_compaction_filter(
        "tidemark-evict-below-watermark",
        move |_level, key: &[u8], value: &[u8]| {
            let w = evict_below.load(Ordering::Acquire);
            let time = if by_key {
                record::time_of_prefix(value)
            } else {
                record::split_dedup_entry_key(key).map(|(time, _)| time)
            };
            match time {
                Some(time) if time < w => rocksdb::compaction_filter::Decision::Remove,
                _ => rocksdb::compaction_filter::Decision::Keep,
            }
        },
    );
    o
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Small memtables and a capped RocksDB WAL: a restart after a crash replays RocksDB's own
    // log, and with 64 MiB memtables and 1M keys that replay took 2.3 s (`tidemark bench
    // --dedup`); flushed SSTs open in milliseconds.
    o.set_write_buffer_size(8 << 20);
    o.set_max_total_wal_size(8 << 20);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

/// RocksDB's automatic compactions held off in a store opened by
/// [`CheckpointStore::open_holding_compactions`], until [`CompactionHold::release`] or drop
/// (a failure to turn them back on is logged then). Invariant: every store opened holding
/// compactions has exactly one hold, and they resume when it goes.
pub struct CompactionHold {
    store: Option<CheckpointStore>,
}

impl CompactionHold {
    /// Turns compactions back on now.
    pub fn release(mut self) -> Result<(), StoreError> {
        match self.store.take() {
            Some(store) => store.resume_compactions(),
            None => Ok(()),
        }
    }
}

impl Drop for CompactionHold {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            if let Err(e) = store.resume_compactions() {
                tracing::warn!(store = %store.path.display(), error = %e, "could not turn RocksDB's compactions back on after recovery");
            }
        }
    }
}

impl CheckpointStore {
    /// Opens (or creates) the store at `path`. Fails clearly on a newer format version.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_with(path, options, false)
    }

    /// [`CheckpointStore::open`] with RocksDB's automatic compactions off until the returned
    /// hold is released or dropped. Why: a restart opens a store whose ingested state files
    /// are due a compaction, and RocksDB started it at once, on the cores the restart's replay
    /// needs (profiled at a 10M-key restart: its compaction thread took ~0.9 of a core for
    /// the 1.9 s of the replay). A restart holds compactions until its first commit.
    pub fn open_holding_compactions(
        path: &Path,
        options: StoreOptions,
    ) -> Result<(Self, CompactionHold), StoreError> {
        let store = Self::open_with(path, options, true)?;
        let hold = CompactionHold {
            store: Some(store.clone()),
        };
        Ok((store, hold))
    }

    fn open_with(path: &Path, options: StoreOptions, hold: bool) -> Result<Self, StoreError> {
        let rocks = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| StoreError::Rocks { op, path, source }
        };
        let existed = path.join("CURRENT").exists();
        let evict_below = Arc::new(AtomicI64::new(i64::MIN));
        let held = |mut o: Options| {
            o.set_disable_auto_compactions(hold);
            o
        };
        let cfs = [
            ColumnFamilyDescriptor::new(CF_META, held(db_options())),
            ColumnFamilyDescriptor::new(CF_HISTORY, held(db_options())),
            ColumnFamilyDescriptor::new(CF_DEDUP, held(dedup_options(evict_below.clone(), false))),
            ColumnFamilyDescriptor::new(
                CF_DEDUP_BY_KEY,
                held(dedup_options(evict_below.clone(), true)),
            ),
        ];
        let db = DB::open_cf_descriptors(&held(db_options()), path, cfs).map_err(rocks("open"))?;
        // Staged state a crash left behind was never part of the store (`staged.rs`); only
        // now, with RocksDB's lock held, is no other process staging here.
        Self::clear_staging(path)?;
        let mut store = Self {
            db: Arc::new(db),
            evict_below,
            key_index: false,
            path: path.to_path_buf(),
            options: StoreOptions {
                retain: options.retain.max(1),
            },
        };
        let meta = store.cf(CF_META)?;
        match store
            .db
            .get_cf(meta, KEY_FORMAT)
            .map_err(rocks("read format version"))?
        {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| StoreError::Foreign {
                        path: path.to_path_buf(),
                        message: "format_version is not 4 bytes".into(),
                    })?;
                if found > STORE_FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
            }
            None if existed && store.latest()?.is_some() => {
                return Err(StoreError::Foreign {
                    path: path.to_path_buf(),
                    message: "has checkpoints but no format version".into(),
                })
            }
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                let mut b = WriteBatch::default();
                b.put_cf(meta, KEY_FORMAT, STORE_FORMAT_VERSION.to_le_bytes());
                store
                    .db
                    .write_opt(b, &wo)
                    .map_err(rocks("write format version"))?;
            }
        }
        store.key_index = store.open_key_index()?;
        info!(path = %path.display(), key_index = store.key_index, "checkpoint store opened");
        Ok(store)
    }

    /// Whether `dedup_by_key` is complete: marked so, or marked now because `dedup` is empty
    /// (a new store, or one whose state is empty: from here on both get every entry).
    fn open_key_index(&self) -> Result<bool, StoreError> {
        let meta = self.cf(CF_META)?;
        if self
            .db
            .get_cf(meta, KEY_KEY_INDEX)
            .map_err(self.rocks("read key index mark"))?
            .is_some()
        {
            return Ok(true);
        }
        let mut it = self.db.raw_iterator_cf(self.cf(CF_DEDUP)?);
        it.seek_to_first();
        let empty = !it.valid();
        it.status().map_err(self.rocks("scan dedup state"))?;
        if empty {
            let mut b = WriteBatch::default();
            b.put_cf(meta, KEY_KEY_INDEX, [1u8]);
            self.write_synced(b)?;
        }
        Ok(empty)
    }

    /// True when [`CheckpointStore::lookup_dedup_keys`] answers for every entry of the dedup
    /// state (see the module documentation); false for a store an older build wrote.
    pub fn has_key_index(&self) -> bool {
        self.key_index
    }

    /// The event time of each of `keys` in the dedup state, as the store holds it now (`None`:
    /// not there). A time below the caller's watermark means "not in state" (an eviction
    /// compaction has not applied yet). Batched: one RocksDB `MultiGet`, the Bloom filter
    /// answering most absent keys without reading a block.
    pub fn lookup_dedup_keys(&self, keys: &[&[u8]]) -> Result<Vec<Option<i64>>, StoreError> {
        let cf = self.cf(CF_DEDUP_BY_KEY)?;
        self.db
            .batched_multi_get_cf(cf, keys.iter().copied(), false)
            .into_iter()
            .map(|r| match r.map_err(self.rocks("look up dedup keys"))? {
                None => Ok(None),
                Some(v) => {
                    record::time_of_prefix(&v)
                        .map(Some)
                        .ok_or_else(|| StoreError::Foreign {
                            path: self.path.clone(),
                            message: "dedup_by_key value is not 8 bytes".into(),
                        })
                }
            })
            .collect()
    }

    /// Opens an existing store for reading only, without taking its lock: for tools that
    /// inspect a store a running pipeline holds open.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let db = DB::open_cf_for_read_only(
            &Options::default(),
            path,
            [CF_META, CF_HISTORY, CF_DEDUP, CF_DEDUP_BY_KEY],
            false,
        )
        .map_err(|source| StoreError::Rocks {
            op: "open read-only",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
            options: StoreOptions::default(),
            evict_below: Arc::new(AtomicI64::new(i64::MIN)),
            key_index: false,
        })
    }

    /// Forgets every checkpoint and the dedup state (one synced batch): used when the table
    /// was restored behind the store and the pipeline restarts from the table's progress.
    pub fn reset(&self) -> Result<(), StoreError> {
        let (meta, history, dedup) = (self.cf(CF_META)?, self.cf(CF_HISTORY)?, self.cf(CF_DEDUP)?);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(history, &[0u8; 8][..], &[0xffu8; 9][..]);
        batch.delete_range_cf(dedup, Vec::<u8>::new(), vec![0xffu8; 64]);
        batch.delete_range_cf(
            self.cf(CF_DEDUP_BY_KEY)?,
            Vec::<u8>::new(),
            vec![0xffu8; 64],
        );
        batch.delete_cf(meta, KEY_CURRENT);
        batch.delete_cf(meta, KEY_STATE_INGESTED);
        batch.put_cf(meta, KEY_KEY_INDEX, [1u8]);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(self.rocks("reset checkpoints"))?;
        info!(path = %self.path.display(), "checkpoint history and dedup state cleared");
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::Foreign {
            path: self.path.clone(),
            message: format!("column family {name} is missing"),
        })
    }

    fn rocks(&self, op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError + '_ {
        move |source| StoreError::Rocks {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn decode(&self, epoch: u64, bytes: &[u8]) -> Result<CheckpointRecord, StoreError> {
        CheckpointRecord::decode(bytes).map_err(|source| StoreError::Record {
            path: self.path.clone(),
            what: format!("checkpoint of epoch {epoch}"),
            source,
        })
    }

    /// Notes that the deltas of every epoch up to `epoch` are ingested (durable): called by
    /// the [`StateWriter`] after an ingestion returns. Not synced: it becomes durable with the
    /// next synced write (the next record), and a note lost to a crash only makes a restart
    /// read more of the WAL's changelog. Never moves back.
    pub fn note_state_ingested(&self, epoch: u64) -> Result<(), StoreError> {
        if self.state_ingested()?.is_some_and(|e| e >= epoch) {
            return Ok(());
        }
        let meta = self.cf(CF_META)?;
        self.db
            .put_cf(meta, KEY_STATE_INGESTED, epoch.to_be_bytes())
            .map_err(self.rocks("note the ingested state"))
    }

    /// The newest epoch whose delta the state writer noted as ingested, if any: the `dedup`
    /// column families hold the state through it (see the module documentation).
    pub fn state_ingested(&self) -> Result<Option<u64>, StoreError> {
        self.meta_epoch(KEY_STATE_INGESTED, "read the ingested state")
    }

    /// The epoch (8 bytes, big-endian) `meta` holds under `key`, if any; other bytes there are
    /// a foreign store's, named in the error.
    fn meta_epoch(&self, key: &[u8], op: &'static str) -> Result<Option<u64>, StoreError> {
        let meta = self.cf(CF_META)?;
        let Some(bytes) = self.db.get_cf(meta, key).map_err(self.rocks(op))? else {
            return Ok(None);
        };
        let epoch = <[u8; 8]>::try_from(bytes.as_slice()).map_err(|_| StoreError::Foreign {
            path: self.path.clone(),
            message: format!(
                "meta key {} holds {} bytes, not an 8-byte epoch",
                String::from_utf8_lossy(key),
                bytes.len()
            ),
        })?;
        Ok(Some(u64::from_be_bytes(epoch)))
    }

    /// Turns RocksDB's automatic compactions back on in every column family (see
    /// [`CompactionHold`]); compactions due meanwhile are scheduled at once.
    fn resume_compactions(&self) -> Result<(), StoreError> {
        let on = [("disable_auto_compactions", "false")];
        self.db
            .set_options(&on)
            .map_err(self.rocks("resume compactions"))?;
        for name in [CF_META, CF_HISTORY, CF_DEDUP, CF_DEDUP_BY_KEY] {
            self.db
                .set_options_cf(self.cf(name)?, &on)
                .map_err(self.rocks("resume compactions"))?;
        }
        Ok(())
    }

    /// Files at level 0 of the dedup column family (`by_key`: of the key index): for tests
    /// of the compaction hold.
    #[cfg(test)]
    fn dedup_files_at_level0(&self, by_key: bool) -> Result<u64, StoreError> {
        let cf = self.cf(if by_key { CF_DEDUP_BY_KEY } else { CF_DEDUP })?;
        Ok(self
            .db
            .property_int_value_cf(cf, "rocksdb.num-files-at-level0")
            .map_err(self.rocks("read level-0 file count"))?
            .unwrap_or(0))
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest checkpoint, if any.
    pub fn latest(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        match self.meta_epoch(KEY_CURRENT, "read current")? {
            Some(epoch) => self.get(epoch),
            None => Ok(None),
        }
    }

    /// The retained checkpoint of `epoch`, if any.
    pub fn get(&self, epoch: u64) -> Result<Option<CheckpointRecord>, StoreError> {
        let history = self.cf(CF_HISTORY)?;
        match self
            .db
            .get_cf(history, epoch.to_be_bytes())
            .map_err(self.rocks("read history"))?
        {
            Some(b) => Ok(Some(self.decode(epoch, &b)?)),
            None => Ok(None),
        }
    }

    /// Retained checkpoints, newest first.
    pub fn history(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        let history = self.cf(CF_HISTORY)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(history, IteratorMode::End) {
            let (k, v) = item.map_err(self.rocks("scan history"))?;
            let epoch = <[u8; 8]>::try_from(&k[..])
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            out.push(self.decode(epoch, &v)?);
        }
        Ok(out)
    }

    /// Writes checkpoint `record` atomically with the epoch's dedup changes: `inserts` are
    /// `(key, event_time)` of keys new in this epoch; entries with event time below
    /// `evict_below` are dropped. Synced before it returns. Every delta given to the
    /// [`StateWriter`] before must be ingested first ([`StateWriter::sync`]) if
    /// `record.state_epoch` claims it.
    ///
    /// Invariant (kept by the caller): a key is inserted only while it is not in state, so each
    /// key has one entry.
    pub fn write<'k>(
        &self,
        record: &CheckpointRecord,
        inserts: impl IntoIterator<Item = (&'k [u8], i64)>,
        evict_below: Option<i64>,
    ) -> Result<CheckpointMetrics, StoreError> {
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let inserted = self.delta_into(&mut batch, inserts, evict_below)?;
        let pruned = self.record_into(&mut batch, record)?;
        crate::fault::hit(crate::fault::CrashPoint::MidCheckpointWrite);
        self.write_synced(batch)?;
        // The record with this watermark is durable now.
        self.set_evict_below(evict_below);
        let metrics = CheckpointMetrics {
            inserted,
            pruned,
            micros: started.elapsed().as_micros() as u64,
        };
        debug!(epoch = record.epoch, ?metrics, "checkpoint written");
        Ok(metrics)
    }

    /// Writes checkpoint `record` alone (history entry, `current` pointer, pruning): one small
    /// synced batch, the critical-path half of the changelog path (module documentation).
    pub fn write_record(&self, record: &CheckpointRecord) -> Result<CheckpointMetrics, StoreError> {
        self.write(record, [], None)
    }

    /// Lets compaction drop dedup entries below `watermark` (it only rises). Only the
    /// watermark of a DURABLE checkpoint record may be given: a restart reads the state at or
    /// above the newest record's watermark, so nothing below it is ever needed again.
    pub fn set_evict_below(&self, watermark: Option<i64>) {
        if let Some(w) = watermark {
            self.evict_below.fetch_max(w, Ordering::AcqRel);
        }
    }

    /// Deletes the dedup column family's files whose entries are all below the eviction
    /// watermark ([`CheckpointStore::set_evict_below`]): in a sliding window, old files are
    /// not compacted again, so this is what frees their space. Metadata only.
    pub fn drop_files_below(&self) -> Result<(), StoreError> {
        let w = self.evict_below.load(Ordering::Acquire);
        if w == i64::MIN {
            return Ok(());
        }
        let dedup = self.cf(CF_DEDUP)?;
        // RocksDB includes the end: `time_prefix(w)` alone is the entry of an empty key at
        // time `w`, still live. End at time `w - 1` followed by 64 0xff bytes instead (a file
        // holding a key of time `w - 1` beyond it is kept: compaction drops its entries).
        let mut end = record::time_prefix(w.saturating_sub(1)).to_vec();
        end.extend_from_slice(&[0xff; 64]);
        self.db
            .delete_file_in_range_cf(dedup, &[0u8; 8][..], &end[..])
            .map_err(self.rocks("drop files below the watermark"))
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(self.rocks("write checkpoint"))
    }

    /// Adds a dedup delta to `batch`: eviction first, inserts after (an insert at or above the
    /// watermark survives it). Returns the inserts.
    fn delta_into<'k>(
        &self,
        batch: &mut WriteBatch,
        inserts: impl IntoIterator<Item = (&'k [u8], i64)>,
        evict_below: Option<i64>,
    ) -> Result<usize, StoreError> {
        let (dedup, by_key) = (self.cf(CF_DEDUP)?, self.cf(CF_DEDUP_BY_KEY)?);
        if let Some(w) = evict_below {
            // `dedup_by_key` is not time-ordered: its entries below `w` go by compaction once
            // the batch is durable ([`CheckpointStore::write`]), and lookups skip them meanwhile.
            batch.delete_range_cf(dedup, [0u8; 8], record::time_prefix(w));
        }
        // Each column family's puts in its own key order: `dedup` by (event time, key),
        // `dedup_by_key` by key. A memtable's skip list inserts a sorted run right after its
        // last insert instead of searching from the top each time (the key index used to get
        // its puts in event-time order, i.e. in random key order: a search per put).
        let mut pairs: Vec<(&[u8], i64)> = inserts.into_iter().collect();
        sort_in_dedup_order(&mut pairs);
        let mut entry_key = Vec::new();
        for &(key, time) in &pairs {
            record::write_dedup_entry_key(&mut entry_key, time, key);
            batch.put_cf(dedup, &entry_key, []);
        }
        // Each key is in a delta once (the caller's invariant), so key order is a total order.
        sort_in_key_index_order(&mut pairs);
        for &(key, time) in &pairs {
            batch.put_cf(by_key, key, record::time_prefix(time));
        }
        Ok(pairs.len())
    }

    /// Adds `record`, the `current` pointer and history pruning to `batch`; returns the
    /// history entries pruned.
    fn record_into(
        &self,
        batch: &mut WriteBatch,
        record: &CheckpointRecord,
    ) -> Result<usize, StoreError> {
        let (meta, history) = (self.cf(CF_META)?, self.cf(CF_HISTORY)?);
        batch.put_cf(history, record.epoch.to_be_bytes(), record.encode());
        batch.put_cf(meta, KEY_CURRENT, record.epoch.to_be_bytes());
        let mut pruned = 0;
        let keep_from = {
            let mut epochs: Vec<u64> = self
                .db
                .iterator_cf(history, IteratorMode::End)
                .take(self.options.retain)
                .filter_map(|i| i.ok())
                .filter_map(|(k, _)| <[u8; 8]>::try_from(&k[..]).ok().map(u64::from_be_bytes))
                .collect();
            epochs.push(record.epoch);
            epochs.sort_unstable_by(|a, b| b.cmp(a));
            epochs.dedup();
            epochs.get(self.options.retain - 1).copied()
        };
        if let Some(oldest_kept) = keep_from {
            for item in self.db.iterator_cf(history, IteratorMode::Start) {
                let (k, _) = item.map_err(self.rocks("scan history"))?;
                let epoch = <[u8; 8]>::try_from(&k[..])
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if epoch >= oldest_kept {
                    break;
                }
                batch.delete_cf(history, k);
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Visits every dedup entry as `(key, event_time)`, in event-time order, with the key
    /// borrowed from the iterator (no allocation per entry): the state load at start, on the
    /// restart's critical path (1M keys must load in well under a second). Returns the count.
    pub fn for_each_dedup_entry(&self, visit: impl FnMut(&[u8], i64)) -> Result<u64, StoreError> {
        self.for_each_dedup_entry_from(None, visit)
    }

    /// [`CheckpointStore::for_each_dedup_entry`] for the entries with event time at or above
    /// `from` only (it seeks past the rest): entries below the watermark whose eviction was
    /// not persisted yet are never visited.
    pub fn for_each_dedup_entry_from(
        &self,
        from: Option<i64>,
        mut visit: impl FnMut(&[u8], i64),
    ) -> Result<u64, StoreError> {
        let dedup = self.cf(CF_DEDUP)?;
        let mut ro = rocksdb::ReadOptions::default();
        // One pass over cold data: don't evict the block cache for it, read ahead in big steps.
        ro.fill_cache(false);
        ro.set_readahead_size(4 << 20);
        let mut it = self.db.raw_iterator_cf_opt(dedup, ro);
        match from {
            Some(w) => it.seek(record::time_prefix(w)),
            None => it.seek_to_first(),
        }
        let mut n = 0u64;
        while let Some(k) = it.key() {
            let (time, key) =
                record::split_dedup_entry_key(k).ok_or_else(|| StoreError::Foreign {
                    path: self.path.clone(),
                    message: "dedup entry key shorter than 8 bytes".into(),
                })?;
            visit(key, time);
            n += 1;
            it.next();
        }
        it.status().map_err(self.rocks("scan dedup state"))?;
        Ok(n)
    }

    /// Every dedup entry `(key, event_time)` in event-time order, collected (for tools and
    /// tests; the engine uses [`CheckpointStore::for_each_dedup_entry`]).
    pub fn dedup_entries(&self) -> Result<Vec<(Vec<u8>, i64)>, StoreError> {
        let mut out = Vec::new();
        self.for_each_dedup_entry(|k, t| out.push((k.to_vec(), t)))?;
        Ok(out)
    }

    /// RocksDB's estimate of the number of dedup entries: enough to presize the in-memory map.
    pub fn estimated_dedup_entries(&self) -> u64 {
        self.cf(CF_DEDUP)
            .ok()
            .and_then(|cf| {
                self.db
                    .property_int_value_cf(cf, rocksdb::properties::ESTIMATE_NUM_KEYS)
                    .ok()
                    .flatten()
            })
            .unwrap_or(0)
    }

    /// Writes a consistent copy of the store to `dir` (hard-linked SST files where possible),
    /// openable elsewhere with [`CheckpointStore::open`]. `dir` must not exist.
    pub fn snapshot(&self, dir: &Path) -> Result<(), StoreError> {
        let cp = Checkpoint::new(&self.db).map_err(self.rocks("prepare snapshot"))?;
        cp.create_checkpoint(dir)
            .map_err(|source| StoreError::Rocks {
                op: "create snapshot",
                path: dir.to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
mod tests;
