//! Tidemark's durable state, as a library the engine can trust blindly:
//!
//! - [`wal`]: the write-ahead log of the epoch protocol (segmented, CRC-framed, group commit,
//!   torn-tail recovery); its byte format is documented in [`wal::format`].
//! - [`store`]: the RocksDB checkpoint store (positions, watermark, table version, dedup state,
//!   checkpoint history, snapshots); its record format is documented in [`store::record`].
//!
//! - [`fault`]: named crash points of the epoch protocol, inert unless `TIDEMARK_CRASH_AT` arms one.
//!
//! This crate imports nothing from the other Tidemark crates: the engine builds on it, never the
//! other way round.

pub mod fault;
pub mod store;
pub mod wal;

pub use store::{CheckpointRecord, CheckpointStore, StoreError, StoreOptions};
pub use wal::{SyncPolicy, Wal, WalError, WalOptions, WalPosition, WalReader};
