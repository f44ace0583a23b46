//! Backups of a Delta table: full snapshots and incrementals chained to them, each with a
//! [`manifest::Manifest`] written last ([`take`]); [`chain`] holds the pure logic of which
//! backups make which version and which may be pruned; [`dir`] the backup directory (local or on S3).

pub mod chain;
pub mod dir;
pub mod manifest;
pub mod take;

#[cfg(test)]
mod fault_tests;

pub use take::{take_backup, BackupError, BackupOptions, BackupReport};
