//! Tidemark's engine: the pipeline runtime and the `tidemark` CLI.
//!
//! - [`config`]: `pipeline.toml` and its validation.
//! - [`pipeline`]: the run loop (one Delta commit per epoch, resume from the table).
//! - [`fault`]: crash points armed by `TIDEMARK_CRASH_AT` for crash tests.
//! - [`audit`]: an independent reader of the table for exactly-once checks.
//! - [`demo`]: the self-contained demo on librdkafka's in-process mock cluster.
//! - [`protocol`]: the recovery decision of the epoch protocol, pure and exhaustively tested.
//! - [`cli`]: the command line.

pub mod audit;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fault;
pub mod pipeline;
pub mod protocol;
