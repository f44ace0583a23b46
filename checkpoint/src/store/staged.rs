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
//! Layout: `<store>/state-staging/<first>-<last>.dedup_by_key.sst`, epochs `first..=last`.
//! The directory holds only files being written or waiting for their ingestion: ingestion
//! moves them into the store (`move_files`), and [`CheckpointStore::open`] deletes whatever a
//! crash left there (never part of the store: only an ingestion makes a file part of it).
//!
//! Crash safety: the ingestion is atomic and durable when it returns (RocksDB syncs the file
//! and its MANIFEST edit); a crash before that leaves the store without the staged keys, which
//! the WAL's changelog still holds (the durable epoch is published only after the ingestion).

use std::path::{Path, PathBuf};

use rocksdb::{IngestExternalFileOptions, SstFileWriter};

use super::{
    dedup_options, record, sort_in_key_index_order, CheckpointStore, StoreError, CF_DEDUP_BY_KEY,
};

/// The staging directory's name inside the store directory.
pub(super) const STAGING_DIR: &str = "state-staging";

/// Dedup deltas written into SST files beside the store, not part of it yet (a crash now loses
/// them; the WAL keeps them). [`StagedState::ingest`] makes them part of the store, durably.
#[must_use = "staged state is not in the store until it is ingested"]
#[derive(Debug)]
pub struct StagedState {
    /// The staged file; `None` when the deltas held no key.
    file: Option<PathBuf>,
    /// Distinct keys staged.
    entries: usize,
}

impl StagedState {
    /// Entries staged (each distinct key once).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Makes the staged file part of `store` (moved, not copied). Returns the entries
    /// ingested.
    pub fn ingest(self, store: &CheckpointStore) -> Result<usize, StoreError> {
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        if let Some(file) = &self.file {
            let cf = store.cf(CF_DEDUP_BY_KEY)?;
            store
                .db
                .ingest_external_file_cf_opts(cf, &opts, vec![file])
                .map_err(|source| StoreError::Rocks {
                    op: "ingest staged dedup state",
                    path: file.clone(),
                    source,
                })?;
        }
        Ok(self.entries)
    }
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
        let mut pairs: Vec<(&[u8], i64)> = inserts.into_iter().collect();
        if pairs.is_empty() {
            return Ok(StagedState {
                file: None,
                entries: 0,
            });
        }
        let dir = self.path.join(STAGING_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create the state staging directory",
            path: dir.clone(),
            source,
        })?;
        // A key's times rising: the newest of a key given twice is the last of its run.
        sort_in_key_index_order(&mut pairs);
        let file = dir.join(format!("{first}-{last}.{CF_DEDUP_BY_KEY}.sst"));
        let mut entries = 0;
        self.write_sst(&file, |w| {
            for (i, &(key, time)) in pairs.iter().enumerate() {
                if pairs.get(i + 1).is_none_or(|next| next.0 != key) {
                    w.put(key, record::time_prefix(time))?;
                    entries += 1;
                }
            }
            Ok(())
        })?;
        Ok(StagedState {
            file: Some(file),
            entries,
        })
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
