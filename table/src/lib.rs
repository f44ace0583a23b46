//! Copies of Delta tables: backups, restores from backups, and corrupt-file detection.

pub mod backup;
pub mod progress;
pub mod restore_backup;
pub mod snapshot;
pub mod verify;

// The repl helper's foundation (uncommitted copy while it is in progress).
pub mod copy;
pub mod location;
pub mod log;
