//! `tidemark verify`: corrupt-file detection for a Delta table's snapshot.

pub mod file;
