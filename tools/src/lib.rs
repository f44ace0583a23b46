//! Tools around the Tidemark runtime, outside the engine library: none of them is on the
//! pipeline's path, and the engine does not depend on them.
//!
//! - [`audit`]: an independent reader of a Delta table for exactly-once checks (log replay and
//!   Parquet, no deltalake snapshot code); used by `tidemark demo` and the e2e tests.
//! - [`demo`]: `tidemark demo`, the self-contained demo on librdkafka's in-process mock cluster.
//! - [`bench`]: `tidemark bench`, checkpoint interval against throughput and recovery.
//! - [`bench_commits`]: `tidemark bench-commits`, Delta commit latency as the log grows.
//! - [`bench_workers`]: `tidemark bench-workers`, throughput of 1, 2, 4 ... workers of one pipeline.
//! - [`bench_replicate`]: `tidemark bench-replicate`, replication lag behind a running pipeline.
//! - [`drill`]: `tidemark drill`, a regional DR drill (two clusters, mirror, SIGKILL, failover).
//! - [`mirror`]: a topic mirror between two clusters (keys, values, timestamps; not offsets).
//! - [`consume_ceiling`]: `tidemark bench-consume`, a plain consumer: the broker's ceiling.
//! - [`child`]: child processes killed when dropped still running.
//! - [`child_log`]: reading what a pipeline child process logged.
//! - [`produce`]: a retrying send shared by the demo, the bench and the tests.
//!
//! The demo and the bench run the real pipeline as a child process: the `tidemark` executable
//! they are running in (`std::env::current_exe`), so they are offered only by that binary.

pub mod audit;
pub mod bench;
pub mod bench_commits;
pub mod bench_replicate;
pub mod bench_workers;
pub mod child;
pub mod child_log;
pub mod consume_ceiling;
pub mod demo;
pub mod drill;
pub mod mirror;
pub mod produce;
pub mod stats;
