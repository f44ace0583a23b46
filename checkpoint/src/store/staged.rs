//! The changelog path's state write: dedup deltas written as sorted SST files beside the store
//! ([`CheckpointStore::stage_state`]), then made part of it by ingestion
//! ([`StagedState::ingest`]).
//!
//! Why not `WriteBatch`es into the memtables, flushed once a second (the path before)? Profiled
//! on 2 cores with 2M keys (`tidemark bench --dedup`, perf per thread): the state writer's
//! batches through RocksDB's skip lists took 849 samples and the flushes 741, together 62% of
//! the main thread's own time, on the core the Parquet encoder and the Kafka client share. The
//! delta is already durable in the engine's WAL and needs no memtable: one sort and one
//! sequential SST file is all the store needs to hold it. (Format 1 stores wrote two, one per
//! order: the second sort and file were half the state writer's work, issue 22.)
//!
//! Layout: `<store>/state-staging/<first>-<last>.dedup_by_key.sst`, epochs `first..=last`;
//! written in parts (`CheckpointStore::stage_packed_in_parts`),
//! `<first>-<last>.<i>.dedup_by_key.sst` for part `i`, the parts' key ranges disjoint and ingested together.
//! The directory holds only files being written or waiting for their ingestion: ingestion
//! moves them into the store (`move_files`), and [`CheckpointStore::open`] deletes whatever a
//! crash left there (never part of the store: only an ingestion makes a file part of it).
//!
//! Crash safety: the ingestion is atomic and durable when it returns (RocksDB syncs the file
//! and its MANIFEST edit); a crash before that leaves the store without the staged keys, which
//! the WAL's changelog still holds (the durable epoch is published only after the ingestion).

use std::path::{Path, PathBuf};

use rocksdb::{IngestExternalFileOptions, SstFileWriter};

use super::pair_sort::{split_indices_by_key_range, KeyOrder, Pair, Pairs, Subset};
use super::threads::on_threads;
use super::{
    dedup_options, for_each_newest_in_key_order, record, CheckpointStore, PackedKeys, StoreError,
    CF_DEDUP_BY_KEY,
};

/// The staging directory's name inside the store directory.
pub(super) const STAGING_DIR: &str = "state-staging";

/// Dedup deltas written into SST files beside the store, not part of it yet (a crash now loses
/// them; the WAL keeps them). [`StagedState::ingest`] makes them part of the store, durably.
#[must_use = "staged state is not in the store until it is ingested"]
#[derive(Debug)]
pub struct StagedState {
    /// The staged files, their key ranges disjoint; none when the deltas held no key.
    files: Vec<PathBuf>,
    /// Distinct keys staged.
    entries: usize,
    /// CPU time of the threads that wrote parts besides the caller's (`Duration::ZERO` for
    /// one part): the caller's own thread time does not include it.
    helper_cpu: std::time::Duration,
}

impl StagedState {
    /// No file staged: the deltas held no key to write.
    fn nothing() -> Self {
        Self {
            files: Vec::new(),
            entries: 0,
            helper_cpu: std::time::Duration::ZERO,
        }
    }

    /// Entries staged (each distinct key once).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// CPU time the threads writing parts other than the caller's used.
    pub fn helper_cpu(&self) -> std::time::Duration {
        self.helper_cpu
    }

    /// Files staged (more than one when written in parts, `CheckpointStore::stage_packed_in_parts`).
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Makes the staged files part of `store` (moved, not copied), all of them or none: one
    /// ingestion. Returns the entries ingested.
    pub fn ingest(self, store: &CheckpointStore) -> Result<usize, StoreError> {
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        if let Some(first) = self.files.first() {
            let cf = store.cf(CF_DEDUP_BY_KEY)?;
            store
                .db
                .ingest_external_file_cf_opts(cf, &opts, self.files.iter().collect())
                .map_err(|source| StoreError::Rocks {
                    op: "ingest staged dedup state",
                    path: first.clone(),
                    source,
                })?;
        }
        Ok(self.entries)
    }
}

/// The staged file of epochs `first..=last` in `dir`, or of its `part` when it is written in
/// parts (the layout in the module documentation).
fn staged_file(dir: &Path, first: u64, last: u64, part: Option<usize>) -> PathBuf {
    match part {
        None => dir.join(format!("{first}-{last}.{CF_DEDUP_BY_KEY}.sst")),
        Some(i) => dir.join(format!("{first}-{last}.{i}.{CF_DEDUP_BY_KEY}.sst")),
    }
}

/// The memory [`CheckpointStore::stage_packed_in_parts`] keeps from one write to the next:
/// the parts' index lists, a sort for each part, and one for a write not split.
#[derive(Default)]
pub(super) struct PartsScratch {
    /// Each part's indices into the gathered keys.
    groups: Vec<Vec<u32>>,
    /// Each part's sort, behind a lock because the parts' writer is shared by their threads
    /// (each part locks its own: never contended). The index lists are not shrunk: at most
    /// 4 bytes a key of the largest write (`MAX_GATHERED_KEYS` bounds it); the sorts shrink
    /// as [`KeyOrder::clear`] does.
    orders: Vec<std::sync::Mutex<KeyOrder>>,
    /// The sort of a write that is not split.
    whole: KeyOrder,
}

impl CheckpointStore {
    /// Writes `inserts` (the dedup deltas of epochs `first..=last`, in epoch order) into one
    /// sorted SST file, synced, in the staging directory (module documentation). A key given
    /// twice keeps its newest time (a key is accepted again only after its older entry fell
    /// below a watermark, so newer is later).
    pub fn stage_state<'k>(
        &self,
        first: u64,
        last: u64,
        inserts: impl IntoIterator<Item = (&'k [u8], i64)>,
    ) -> Result<StagedState, StoreError> {
        let pairs: Vec<Pair> = inserts.into_iter().collect();
        if pairs.is_empty() {
            return Ok(StagedState::nothing());
        }
        let path = staged_file(&self.staging_dir()?, first, last, None);
        let entries = self.write_sorted_group(&path, &pairs)?;
        Ok(StagedState {
            files: vec![path],
            entries,
            ..StagedState::nothing()
        })
    }

    /// [`CheckpointStore::stage_state`] of the pairs of `keys` at or above `floor`, sorted
    /// with `order` (whose memory the state writer keeps from one write to the next) where
    /// they lie: no vector of pairs, no sort buffer allocated per write. One file.
    pub(super) fn stage_packed(
        &self,
        first: u64,
        last: u64,
        keys: &PackedKeys,
        floor: i64,
        order: &mut KeyOrder,
    ) -> Result<StagedState, StoreError> {
        let kept = |&(_, t): &(&[u8], i64)| t >= floor;
        if !order.sort(keys, Some(floor)) {
            return self.stage_state(first, last, keys.iter().filter(kept));
        }
        if order.is_empty() {
            order.clear();
            return Ok(StagedState::nothing());
        }
        let path = staged_file(&self.staging_dir()?, first, last, None);
        let entries = self.write_sorted(&path, keys, order)?;
        order.clear();
        Ok(StagedState {
            files: vec![path],
            entries,
            ..StagedState::nothing()
        })
    }

    /// [`CheckpointStore::stage_packed`] in up to `parts` files of disjoint key ranges,
    /// written on as many threads and ingested together ([`StagedState::ingest`]; the split:
    /// [`split_indices_by_key_range`]), with the memory `scratch` keeps
    /// from one write to the next: the parts are index lists into `keys` and each is sorted
    /// by a [`KeyOrder`] of its own. Why: the parts path is taken when somebody waits for the
    /// write (a run's last), and fresh memory for a copy of the pairs, their groups and each
    /// group's sort was faulted in at every such write (~80 bytes a key; a third of the state
    /// writer's samples at the end of a 2M-key bench run, README "Dedup's cost").
    pub(super) fn stage_packed_in_parts(
        &self,
        first: u64,
        last: u64,
        keys: &PackedKeys,
        floor: i64,
        scratch: &mut PartsScratch,
        parts: usize,
    ) -> Result<StagedState, StoreError> {
        let groups = match split_indices_by_key_range(keys, floor, parts, &mut scratch.groups) {
            Some(n) if n >= 2 => n,
            _ => return self.stage_packed(first, last, keys, floor, &mut scratch.whole),
        };
        let dir = self.staging_dir()?;
        if scratch.orders.len() < groups {
            scratch.orders.resize_with(groups, Default::default);
        }
        let files: Vec<PathBuf> = (0..groups)
            .map(|i| staged_file(&dir, first, last, Some(i)))
            .collect();
        let (index_groups, orders) = (&scratch.groups, &scratch.orders);
        let part_thread = || std::thread::Builder::new().name("tidemark-state-part".into());
        let (written, helper_cpu) =
            on_threads(groups, part_thread, &dir, "writing staged state", |i| {
                let subset = Subset {
                    pairs: keys,
                    indices: &index_groups[i],
                };
                // A lock poisoned by a part that panicked in an earlier write: its order is
                // sorted afresh here all the same.
                let mut order = orders[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !order.sort(&subset, None) {
                    // Unreachable: a subset's indices are `u32`s, so its count fits one.
                    return Err(StoreError::Foreign {
                        path: files[i].clone(),
                        message: "a part of the staged state has more keys than a u32 counts"
                            .into(),
                    });
                }
                let entries = self.write_sorted(&files[i], &subset, &order)?;
                order.clear();
                Ok(entries)
            })?;
        Ok(StagedState {
            files,
            entries: written.iter().sum(),
            helper_cpu,
        })
    }

    /// The staging directory, made if missing.
    fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self.path.join(STAGING_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create the state staging directory",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Writes the pairs of `pairs` that `order` sorted last into the SST file at `path` in
    /// key order (a key given twice once, with its newest time). Returns the entries written.
    fn write_sorted<P: Pairs + ?Sized>(
        &self,
        path: &Path,
        pairs: &P,
        order: &KeyOrder,
    ) -> Result<usize, StoreError> {
        let mut entries = 0;
        self.write_sst(path, |w| {
            entries =
                order.for_each_newest(pairs, |key, time| w.put(key, record::time_prefix(time)))?;
            Ok(())
        })?;
        Ok(entries)
    }

    /// Writes `pairs` into the SST file at `path` in key order (a key given twice once, with
    /// its newest time). Returns the entries written.
    fn write_sorted_group(&self, path: &Path, pairs: &[Pair]) -> Result<usize, StoreError> {
        let mut entries = 0;
        self.write_sst(path, |w| {
            entries = for_each_newest_in_key_order(pairs, |key, time| {
                w.put(key, record::time_prefix(time))
            })?;
            Ok(())
        })?;
        Ok(entries)
    }

    /// Writes a synced, uncompressed SST file at `path` with the options of `dedup_by_key`
    /// (its Bloom filter); `fill` puts its entries, in strictly ascending key order.
    fn write_sst(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut SstFileWriter) -> Result<(), rocksdb::Error>,
    ) -> Result<(), StoreError> {
        let rocks = |op: &'static str| {
            move |source| StoreError::Rocks {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let mut options = dedup_options(self.evict_below.clone());
        // Uncompressed: LZ4 was the writer's top item (16% of its CPU, profiled) on keys that
        // compress little; the file's entries get compressed if a compaction rewrites them.
        options.set_compression_type(rocksdb::DBCompressionType::None);
        let mut writer = SstFileWriter::create(&options);
        writer
            .open(path)
            .map_err(rocks("create staged state file"))?;
        fill(&mut writer).map_err(rocks("write staged state file"))?;
        writer.finish().map_err(rocks("finish staged state file"))
    }

    /// Deletes what a crash left in the staging directory (never part of the store).
    pub(super) fn clear_staging(path: &Path) -> Result<(), StoreError> {
        let dir = path.join(STAGING_DIR);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "clear the state staging directory",
                path: dir,
                source,
            }),
        }
    }
}
