//! Tidemark's durable state, as a library the engine can trust blindly:
//!
//! - [`wal`]: the write-ahead log of the epoch protocol (segmented, CRC-framed, group commit,
//!   torn-tail recovery); its byte format is documented in [`wal::format`].
//! - [`store`]: the RocksDB checkpoint store (positions, watermark, table version, dedup state,
//!   checkpoint history, snapshots); its record format is documented in [`store::record`].
//!
//! - [`fault`]: named crash points of the epoch protocol, compiled in only with the
//!   `crash-points` feature and inert unless `TIDEMARK_CRASH_AT` arms one.
//!
//! All WAL file I/O goes through a [`tidemark_fs::FileSystem`] ([`Wal::open_with_fs`]), so
//! tests inject I/O errors and power cuts; [`Wal::open`] uses the real file system.
//!
//! This crate imports nothing from the other Tidemark crates but the file-system seam
//! (`tidemark-fs`): the engine builds on it, never the other way round.

pub mod cpu_time;
pub mod fault;
pub mod store;
pub mod wal;

pub use store::{
    CheckpointRecord, CheckpointStore, CompactionHold, StoreError, StoreErrorKind, StoreOptions,
};
pub use wal::{
    MidLogDamage, RecoveryReport, SyncPolicy, Truncation, Wal, WalDamage, WalError, WalOptions,
    WalPosition, WalReader,
};
