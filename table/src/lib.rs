//! Copies of Delta tables: backups, restores from backups, and corrupt-file detection.

pub mod backup;
pub mod verify;
