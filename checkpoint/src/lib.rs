//! Tidemark's durable state: a write-ahead log ([`wal`]) for the epoch protocol.
//!
//! This crate imports nothing from the other Tidemark crates: the engine builds on it, never the
//! other way round.

pub mod wal;

pub use wal::{SyncPolicy, Wal, WalError, WalOptions, WalPosition, WalReader};
