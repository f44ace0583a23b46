//! Backups of a Delta table: full snapshots and incrementals chained to them, each with a
//! [`manifest::Manifest`] written last; [`chain`] holds the pure logic of which backups make
//! which version and which may be pruned.

pub mod chain;
pub mod manifest;
