//! The RocksDB checkpoint store: positions, watermark, table version, dedup state, history.
//!
//! Column families:
//! - `meta`: `format_version` (u32 LE), `current` (epoch, u64 BE), and `state_ingested`
//!   (epoch, u64 BE): the newest epoch whose delta the [`StateWriter`] has ingested, written
//!   (unsynced) after the ingestion is durable, so a lower bound of what `dedup_by_key` holds, possibly newer than the newest record's `state_epoch` (which can only name
//!   a state durable before the record was written). A restart reads the changelog from there
//!   (`CheckpointStore::state_ingested`).
//! - `history`: epoch (u64 BE) -> [`CheckpointRecord`]; the newest `retain` are kept, so a
//!   rewind can pick an older one.
//! - `dedup_by_key`: the dedup state, dedup key -> event time ([`record::time_prefix`], 8
//!   bytes), with a Bloom filter. The engine loads it into memory at start
//!   ([`CheckpointStore::for_each_dedup_entry_from`], entries below the watermark skipped) and
//!   looks keys up in it ([`CheckpointStore::lookup_dedup_keys`]) while that load still runs
//!   (so the first verdicts need not wait for millions of keys to load). A put of a key again
//!   (accepted again after its eviction) overwrites its older time. Entries below the watermark
//!   of a durable record are dropped by a compaction filter; one still on disk (or an older
//!   version resurfacing once a newer one was dropped, which is older still) is below every
//!   watermark a load or a lookup uses, so both skip it.
//! - `dedup`: format 1's copy of the state in event-time order ([`record::dedup_entry_key`]
//!   -> empty). Format 2 writes nothing there: one copy of each key is half the state writer's
//!   sorting and file writing (issue 22), and the key index alone answers every read. Opening
//!   a format 1 store read-write migrates it ([`CheckpointStore::open`]: the entries copied
//!   into `dedup_by_key` where its `dedup_key_index` mark says they are not all there already,
//!   then `dedup` emptied and the version raised, in one synced batch); a read-only open of one
//!   reads `dedup` as before.
//!
//! Two ways to write a checkpoint:
//! - [`CheckpointStore::write`]: ONE synced `WriteBatch` (record, history entry, `current`
//!   pointer, dedup inserts, history pruning), so after a crash either all of it is
//!   visible or none. The record's `state_epoch` is its own epoch.
//! - the changelog path, on the run's critical path: [`CheckpointStore::write_record`] (the
//!   record alone, one small synced batch), then the epoch's dedup delta through the
//!   [`StateWriter`]: gathered with the next ones for up to a second, written as one sorted SST
//!   file (or, when somebody waits for it, several of disjoint key ranges written in parallel)
//!   beside the store ([`CheckpointStore::stage_state`]: no
//!   memtable, no RocksDB log) and made part of the store by ingestion
//!   ([`StagedState::ingest`], durable when it returns; `staged.rs` says why and how). The
//!   delta's keys are durable in the engine's WAL already (its state-delta frames, before the
//!   epoch's seal), so the record says how far the store's state is durable (`state_epoch`)
//!   and the WAL keeps every later delta.
//!
//! **Eviction** writes no tombstone: entries below the watermark of the newest durable record
//! ([`CheckpointStore::set_evict_below`]; at open, the newest record's) are dropped by a
//! compaction filter when their file is compacted. (A range tombstone `[0, w)` in format 1's
//! time-ordered files made each span the whole key space, so every compaction rewrote the whole
//! state: measured, RocksDB's compaction took more CPU than the pipeline's own work.) Entries
//! below the watermark that are still on disk are never read: every load and every lookup
//! filters by it.
//!
//! Invariants (the recovery argument in `engine/src/dedup.rs` rests on them): the delta of
//! epoch `e` reaches the store only after a record of epoch `>= e` is durable, deltas are
//! ingested in epoch order, and a record names `state_epoch = m` only once every delta up to `m`
//! is ingested. So after any crash `dedup_by_key` holds, at or above the newest record's
//! watermark, the state of `state_epoch` plus some prefix of the later deltas (up to the newest
//! record's epoch), nothing more.

mod error;
#[cfg(feature = "test-support")]
pub mod format_1_image;
mod packed;
mod pair_sort;
pub mod record;
mod staged;
mod state_writer;
mod threads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tracing::{debug, info};

pub use error::{classify_rocks, StoreError, StoreErrorKind};
pub use packed::{KeyBuffers, PackedKeys};
use pair_sort::for_each_newest_in_key_order;
pub use record::{ChangelogStart, CheckpointRecord, Counts, RecordError, SourcePosition};
pub use staged::StagedState;
pub use state_writer::{StateDelta, StateHold, StateWriter, SYNC_EVERY_ENV};

/// The store layout version this build writes: 2, the dedup state in `dedup_by_key` alone
/// (module documentation). Format 1 stores are migrated when opened read-write.
pub const STORE_FORMAT_VERSION: u32 = 2;

/// Format 1: the dedup state in `dedup` (time-ordered), `dedup_by_key` an index of it.
const FORMAT_TIME_ORDERED: u32 = 1;

/// Entries copied per batch when a format 1 store's `dedup` is copied into `dedup_by_key`.
const MIGRATION_BATCH: usize = 100_000;

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
    /// Dedup entries below this event time may be dropped by compaction and are never read
    /// (`i64::MIN`: none): the watermark of a durable checkpoint record.
    evict_below: Arc<AtomicI64>,
    /// The state is format 1's `dedup` column family, not `dedup_by_key`: only in a format 1
    /// store opened read-only (a read-write open migrates it).
    time_ordered: bool,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Keys of a [`CheckpointStore::lookup_dedup_keys`] batch from which it is split over two
/// threads: half of such a batch (~0.27 µs a key on one thread in the `dedup_lookup` bench,
/// so ~140 µs and more) is well above a thread's start (tens of µs). Not tuned by a bench.
pub(crate) const PARALLEL_LOOKUP_KEYS: usize = 1024;

/// `look_up` of `keys` in two halves, the second on a thread made by `thread`, the answers
/// joined in the order of `keys` ([`threads::on_threads`]: a thread that cannot start leaves
/// its half to this thread; one that panics fails the lookup, naming the store at `path`).
/// Apart from [`CheckpointStore::lookup_dedup_keys`] so that tests make both happen.
fn in_two_halves<T: Send>(
    keys: &[&[u8]],
    thread: impl Fn() -> std::thread::Builder,
    path: &Path,
    look_up: impl Fn(&[&[u8]]) -> Result<Vec<T>, StoreError> + Sync,
) -> Result<Vec<T>, StoreError> {
    let halves = keys.split_at(keys.len() / 2);
    let half = |i: usize| if i == 0 { halves.0 } else { halves.1 };
    let (answers, _) = threads::on_threads(2, thread, path, "looking up dedup keys", |i| {
        look_up(half(i))
    })?;
    Ok(answers.into_iter().flatten().collect())
}

/// The options of `dedup_by_key`: [`db_options`], a Bloom filter (lookups of absent keys are
/// cheap) and the compaction filter that drops entries below `evict_below` (the time is the
/// value).
fn dedup_options(evict_below: Arc<AtomicI64>) -> Options {
    let mut o = db_options();
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(false);
    o.set_block_based_table_factory(&table);
    // Deltas come as ingested files (`staged.rs`), one a second: rare compactions keep the
    // background work near one write per key (profiled: compacting after every small flush
    // cost more CPU than the pipeline's own work). The memtable only takes the synced
    // checkpoint path's inserts.
    o.set_write_buffer_size(64 << 20);
    o.set_max_write_buffer_number(4);
    o.set_level_zero_file_num_compaction_trigger(16);
    o.set_level_zero_slowdown_writes_trigger(64);
    o.set_level_zero_stop_writes_trigger(128);
    o.set_target_file_size_base(32 << 20);
    o.set_compaction_filter(
        "tidemark-evict-below-watermark",
        move |_level, _key: &[u8], value: &[u8]| {
            let w = evict_below.load(Ordering::Acquire);
            match record::time_of_prefix(value) {
                Some(time) if time < w => rocksdb::compaction_filter::Decision::Remove,
                _ => rocksdb::compaction_filter::Decision::Keep,
            }
        },
    );
    o
}

/// Read options for one pass over cold data: the block cache is not filled with it (nor
/// evicted for it), and reads go ahead in big steps.
fn cold_scan() -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    ro.fill_cache(false);
    ro.set_readahead_size(4 << 20);
    ro
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

    /// Asks the kernel to read every table file of the store into the page cache, from a
    /// thread of its own ([`tidemark_fs::fadvise_will_need`], whose submission may wait for
    /// the disk's queue: never on the caller's path), and returns at once. For a restart whose
    /// replay looks keys up in the store while its dedup state loads: other starts need not
    /// share the disk with it. A file it cannot open or advise is left to be read when needed;
    /// the thread ends once every file is advised.
    ///
    /// Why: the staged files' pages were dropped as they were written (RocksDB's
    /// `SstFileWriter` invalidates them), so each lookup that passes a Bloom filter (a
    /// duplicate, or a false positive in any of the level-0 files recovery keeps) read a block
    /// from disk, synchronously, on the thread that gives verdicts: `pread` was 14% of that
    /// thread's samples in a profile of a 10M-key restart. Read ahead in big sequential
    /// steps, the files are in memory by the time the replay needs them, or soon after.
    pub fn read_tables_ahead(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return;
        };
        let tables: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|e| e == "sst"))
            .collect();
        let advise = move || {
            for table in &tables {
                let advised =
                    std::fs::File::open(table).and_then(|f| tidemark_fs::fadvise_will_need(&f));
                if let Err(e) = advised {
                    tracing::debug!(file = %table.display(), error = %e, "no read-ahead for a store table file");
                }
            }
        };
        let spawned = std::thread::Builder::new()
            .name("tidemark-read-ahead".into())
            .spawn(advise);
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to read the store's tables ahead");
        }
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
            // Format 1's; empty in format 2 (module documentation).
            ColumnFamilyDescriptor::new(CF_DEDUP, held(db_options())),
            ColumnFamilyDescriptor::new(CF_DEDUP_BY_KEY, held(dedup_options(evict_below.clone()))),
        ];
        let db = DB::open_cf_descriptors(&held(db_options()), path, cfs).map_err(rocks("open"))?;
        // Staged state a crash left behind was never part of the store (`staged.rs`); only
        // now, with RocksDB's lock held, is no other process staging here.
        Self::clear_staging(path)?;
        let store = Self {
            db: Arc::new(db),
            evict_below,
            time_ordered: false,
            path: path.to_path_buf(),
            options: StoreOptions {
                retain: options.retain.max(1),
            },
        };
        let meta = store.cf(CF_META)?;
        // Nothing below the newest durable record's watermark is needed again (a migration
        // need not copy it either).
        store.floor_at_newest_record()?;
        match store.format_version()? {
            Some(found) => {
                if found > STORE_FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
                if found <= FORMAT_TIME_ORDERED {
                    store.migrate_from_time_ordered()?;
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
        info!(path = %path.display(), format = STORE_FORMAT_VERSION, "checkpoint store opened");
        Ok(store)
    }

    /// The layout version `meta` records (`None`: a new store, or one from before versions).
    fn format_version(&self) -> Result<Option<u32>, StoreError> {
        let meta = self.cf(CF_META)?;
        let Some(v) = self
            .db
            .get_cf(meta, KEY_FORMAT)
            .map_err(self.rocks("read format version"))?
        else {
            return Ok(None);
        };
        <[u8; 4]>::try_from(v.as_slice())
            .map(|b| Some(u32::from_le_bytes(b)))
            .map_err(|_| StoreError::Foreign {
                path: self.path.clone(),
                message: "format_version is not 4 bytes".into(),
            })
    }

    /// Sets the eviction floor to the newest record's watermark: nothing below it is read
    /// again (module documentation).
    fn floor_at_newest_record(&self) -> Result<(), StoreError> {
        if let Some(latest) = self.latest()? {
            self.set_evict_below(latest.watermark);
        }
        Ok(())
    }

    /// Makes a format 1 store a format 2 one (module documentation): the entries of `dedup`
    /// copied into `dedup_by_key` unless its `dedup_key_index` mark says they are all there
    /// (a key's newest time wins, as in the key index), then, in one synced batch, `dedup`
    /// emptied and the version raised. A crash before that batch leaves a format 1 store that
    /// the next open migrates again; the copies are idempotent.
    fn migrate_from_time_ordered(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let (meta, dedup, by_key) = (
            self.cf(CF_META)?,
            self.cf(CF_DEDUP)?,
            self.cf(CF_DEDUP_BY_KEY)?,
        );
        let indexed = self
            .db
            .get_cf(meta, KEY_KEY_INDEX)
            .map_err(self.rocks("read key index mark"))?
            .is_some();
        let mut copied = 0u64;
        if !indexed {
            let mut batch = WriteBatch::default();
            // Event-time order: a key's newer time is put after its older one. Entries below
            // the floor (the newest record's watermark) are never read again: not copied.
            let floor = self.evict_below.load(Ordering::Acquire);
            self.for_each_time_ordered_entry(Some(floor), |key, time| {
                batch.put_cf(by_key, key, record::time_prefix(time));
                copied += 1;
                if batch.len() >= MIGRATION_BATCH {
                    let full = std::mem::take(&mut batch);
                    // Unsynced: the synced batch below makes them durable (one RocksDB log).
                    self.db.write(full).map_err(self.rocks("copy dedup state"))
                } else {
                    Ok(())
                }
            })?;
            self.db
                .write(batch)
                .map_err(self.rocks("copy dedup state"))?;
        }
        // A crash here leaves a format 1 store (its copy, unsynced, maybe partly in the key
        // index, where the next open's copy puts the same entries again).
        crate::fault::hit(crate::fault::CrashPoint::DuringFormatMigration);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(dedup, Vec::<u8>::new(), vec![0xffu8; 64]);
        batch.delete_cf(meta, KEY_KEY_INDEX);
        batch.put_cf(meta, KEY_FORMAT, STORE_FORMAT_VERSION.to_le_bytes());
        self.write_synced(batch)?;
        // Space back now rather than at some later compaction; the data is gone either way.
        if let Err(e) = self
            .db
            .delete_file_in_range_cf(dedup, Vec::<u8>::new(), vec![0xffu8; 64])
        {
            tracing::warn!(store = %self.path.display(), error = %e, "could not delete format 1 dedup files after the migration (compaction will)");
        }
        info!(
            store = %self.path.display(),
            copied,
            indexed,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint store migrated from format 1 (time-ordered dedup state) to format 2"
        );
        Ok(())
    }

    /// The event time of each of `keys` in the dedup state, as the store holds it now (`None`:
    /// not there). A time below the caller's watermark means "not in state" (an eviction
    /// compaction has not applied yet). Batched: one RocksDB `MultiGet`, the Bloom filter
    /// answering most absent keys without reading a block; a batch of
    /// `PARALLEL_LOOKUP_KEYS` (1,024) or more is split in two, the second half looked up on a thread
    /// of its own (the answers are the same: lookups only read).
    ///
    /// Why two threads: a restart's replay checks every record against the store while its
    /// load runs, on the one thread that gives verdicts, and each absent key probes the Bloom
    /// filter of every level-0 file (the compaction hold keeps them, `CompactionHold`), a
    /// cache miss each, while a core sits partly idle. `cargo bench -p tidemark-benches
    /// --bench checkpoint -- dedup_lookup` (9.6M keys in 12 files, 8,192 absent keys): 2.19 ms
    /// on one thread, 1.21 ms split.
    pub fn lookup_dedup_keys(&self, keys: &[&[u8]]) -> Result<Vec<Option<i64>>, StoreError> {
        if keys.len() < PARALLEL_LOOKUP_KEYS {
            return self.lookup_dedup_keys_on_one_thread(keys);
        }
        let thread = || std::thread::Builder::new().name("tidemark-lookup".into());
        in_two_halves(keys, thread, &self.path, |half| {
            self.lookup_dedup_keys_on_one_thread(half)
        })
    }

    /// [`CheckpointStore::lookup_dedup_keys`] on this thread whatever the batch's size: one
    /// `MultiGet` (public for the bench that compares the two, `dedup_lookup`).
    pub fn lookup_dedup_keys_on_one_thread(
        &self,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<i64>>, StoreError> {
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
    /// A format 1 store (an older build's, not opened read-write since) is read as it is.
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
        let mut store = Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
            options: StoreOptions::default(),
            evict_below: Arc::new(AtomicI64::new(i64::MIN)),
            time_ordered: false,
        };
        store.time_ordered = store
            .format_version()?
            .is_none_or(|f| f <= FORMAT_TIME_ORDERED);
        store.floor_at_newest_record()?;
        Ok(store)
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
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(self.rocks("reset checkpoints"))?;
        // The state starts over: a rewind's keys may be older than the forgotten watermark.
        self.evict_below.store(i64::MIN, Ordering::Release);
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

    /// Files at level 0 of the dedup state: for tests of the compaction hold.
    #[cfg(test)]
    fn dedup_files_at_level0(&self) -> Result<u64, StoreError> {
        let cf = self.cf(CF_DEDUP_BY_KEY)?;
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
    /// `evict_below` are never read again (and dropped by compaction). Synced before it returns. Every delta given to the
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
        let inserted = self.delta_into(&mut batch, inserts)?;
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

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(self.rocks("write checkpoint"))
    }

    /// Adds a dedup delta's inserts to `batch` and returns their count. (Its eviction is the
    /// compaction filter's, once the batch is durable: [`CheckpointStore::write`].)
    fn delta_into<'k>(
        &self,
        batch: &mut WriteBatch,
        inserts: impl IntoIterator<Item = (&'k [u8], i64)>,
    ) -> Result<usize, StoreError> {
        let by_key = self.cf(CF_DEDUP_BY_KEY)?;
        // In key order: a memtable's skip list inserts a sorted run right after its last
        // insert instead of searching from the top each time (in event-time order, i.e. in
        // random key order, each put was a search). The same sort as a staged file's, each
        // key once with its newest time (as the batch's last put of a key would leave it).
        let pairs: Vec<(&[u8], i64)> = inserts.into_iter().collect();
        for_each_newest_in_key_order(&pairs, |key, time| {
            batch.put_cf(by_key, key, record::time_prefix(time));
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|never| match never {})
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

    /// Visits every dedup entry as `(key, event_time)` at or above the eviction watermark (the
    /// newest record's at open), with the key borrowed from the iterator (no allocation per
    /// entry). Returns the count.
    pub fn for_each_dedup_entry(&self, visit: impl FnMut(&[u8], i64)) -> Result<u64, StoreError> {
        self.for_each_dedup_entry_from(None, visit)
    }

    /// [`CheckpointStore::for_each_dedup_entry`] for the entries with event time at or above
    /// `from` too: the state load at start, on the restart's critical path (1M keys must load
    /// in well under a second). In key order (format 1 stores opened read-only: event-time
    /// order). Entries below the watermark whose eviction no compaction has applied yet are
    /// never visited.
    pub fn for_each_dedup_entry_from(
        &self,
        from: Option<i64>,
        mut visit: impl FnMut(&[u8], i64),
    ) -> Result<u64, StoreError> {
        let from = from
            .unwrap_or(i64::MIN)
            .max(self.evict_below.load(Ordering::Acquire));
        if self.time_ordered {
            return self.for_each_time_ordered_entry(Some(from), |key, time| {
                visit(key, time);
                Ok(())
            });
        }
        let by_key = self.cf(CF_DEDUP_BY_KEY)?;
        let mut it = self.db.raw_iterator_cf_opt(by_key, cold_scan());
        it.seek_to_first();
        let mut n = 0u64;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let time = record::time_of_prefix(value).ok_or_else(|| StoreError::Foreign {
                path: self.path.clone(),
                message: "dedup_by_key value is not 8 bytes".into(),
            })?;
            if time >= from {
                visit(key, time);
                n += 1;
            }
            it.next();
        }
        it.status().map_err(self.rocks("scan dedup state"))?;
        Ok(n)
    }

    /// Visits format 1's time-ordered `dedup` entries at or above `from`, in event-time order,
    /// until `visit` fails: a read-only view of a format 1 store, and its migration.
    fn for_each_time_ordered_entry(
        &self,
        from: Option<i64>,
        mut visit: impl FnMut(&[u8], i64) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let dedup = self.cf(CF_DEDUP)?;
        let mut it = self.db.raw_iterator_cf_opt(dedup, cold_scan());
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
            visit(key, time)?;
            n += 1;
            it.next();
        }
        it.status().map_err(self.rocks("scan dedup state"))?;
        Ok(n)
    }

    /// Every dedup entry `(key, event_time)` at or above the eviction watermark, collected (for
    /// tools and tests; the engine uses [`CheckpointStore::for_each_dedup_entry_from`]).
    pub fn dedup_entries(&self) -> Result<Vec<(Vec<u8>, i64)>, StoreError> {
        let mut out = Vec::new();
        self.for_each_dedup_entry(|k, t| out.push((k.to_vec(), t)))?;
        Ok(out)
    }

    /// RocksDB's estimate of the number of dedup entries: enough to presize the in-memory map.
    pub fn estimated_dedup_entries(&self) -> u64 {
        self.cf(if self.time_ordered {
            CF_DEDUP
        } else {
            CF_DEDUP_BY_KEY
        })
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
