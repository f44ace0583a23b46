//! Tidemark's engine: the pipeline runtime only. The `tidemark` command line is the
//! `tidemark-cli` crate (`cli/`); the audit, demo, bench and test producer are `tidemark-tools`
//! (`tools/`).
//!
//! - [`config`]: `pipeline.toml` and its validation.
//! - [`pipeline`]: the run loop of the epoch protocol.
//! - [`dedup`]: watermark deduplication, pure and property-tested.
//! - [`epoch`]: the epoch being read and how records become rows or dead letters; [`epoch_log`]: what WAL frames hold.
//! - [`committer`]: seal, Delta commit, checkpoint, truncation, in protocol order.
//! - [`recovery`]: what to do on start, from the checkpoint, the WAL and the table.
//! - [`maintenance`]: Delta checkpoints, log cleanup and compaction between epochs.
//! - [`status`]: `tidemark status`, what recovery would do next.
//! - [`shutdown`]: the stop flag raised by Ctrl-C / SIGTERM.
//! - [`wal_damage`]: WAL damage remembered until the operator accepts it.
//! - [`state_lock`]: the exclusive lock on a state directory and the ids of its runs.
//! - [`fault`]: crash points armed by `TIDEMARK_CRASH_AT` for crash tests; [`io_faults`]: the
//!   file system the pipeline writes through (faults injected by `TIDEMARK_FAULT_FS` in tests).
//! - [`failover`]: `tidemark failover` (start on a mirrored cluster by MirrorMaker 2's offset
//!   translations ([`offset_translation`]) or by time, report);
//!   [`generation`]: generation fencing, pure; [`cluster_check`]: positions know their cluster.
//! - [`worker`]: one worker of a pipeline several processes share through a consumer group;
//!   [`partition_dedup`]: what dedup adds there (partition floors, cross-partition duplicates).
//! - [`protocol`]: the recovery decision of the epoch protocol, pure and exhaustively tested.
//! - [`metrics`]: the run's Prometheus metrics and live state; [`health`]: the readiness rules
//!   of `/readyz` and `tidemark status --check`; [`http`]: `/metrics`, `/healthz`, `/readyz`
//!   and the [`status_page`]; [`progress`]: progress of long work.

pub mod cluster_check;
pub mod committer;
pub mod config;
/// CPU time used by the process and by a thread (the run summary's CPU figures).
pub use tidemark_checkpoint::cpu_time;
pub mod dead_letter_overlap;
pub mod dedup;
pub mod dedup_key;
pub mod epoch;
pub mod epoch_log;
pub mod failover;
pub mod failover_audit;
pub mod generation;
pub mod health;
pub mod http;
pub mod io_faults;
mod key_table;
pub mod maintenance;
pub mod metrics;
pub mod offset_translation;
pub mod partition_dedup;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod quarantine;
pub mod read_ahead;
pub mod recovery;
pub mod replica_watch;
pub(crate) mod restart_scan;
pub mod shutdown;
pub mod state_lock;
pub mod status;
pub mod status_page;
pub mod verdicts;
pub mod wal_damage;
pub mod wal_tail;
pub mod worker;

pub use tidemark_checkpoint::fault;
