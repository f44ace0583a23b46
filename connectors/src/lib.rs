//! Sources and sinks for Tidemark.
//!
//! - [`ids`]: typed numbers ([`Epoch`]) where numbers of different meaning meet.
//! - [`record`]: the record a source yields and the positions it stands at.
//! - [`source`]: the [`source::Source`] trait the engine drives.
//! - [`kafka`]: a Kafka source whose positions Tidemark owns (assign + seek, no auto-commit).
//! - [`kafka_group`]: a worker's membership in its pipeline's consumer group (scale-out).
//! - [`kafka_cluster`]: the cluster id a source reads, and offsets by time (for failovers).
//! - [`kafka_topic_id`]: topic ids from the broker (DescribeTopics), to tell a recreated topic.
//! - [`mm2`]: MirrorMaker 2's offset translations (offset-syncs, checkpoints) in its binary format.
//! - [`dead_letter`]: records that cannot be written, kept whole with why, in their own table.
//! - [`decode`]: JSON messages to Arrow record batches, with errors naming the record at fault.
//! - [`delta`]: a Delta Lake sink that commits one epoch per Delta commit, with a `txn` action.
//! - [`durable_store`]: the local disk as an object store whose writes are durable (temp file,
//!   fsync, link/rename, directory fsync) through the `tidemark-fs` seam.
//! - [`partition_claims`]: per-partition `txn` claims that fence workers sharing a pipeline.
//! - [`parquet_file`]: an epoch's rows as a Parquet file with its Delta `add` action and stats.
//! - [`dictionary_choice`]: which columns of a data file are dictionary-encoded, from its first
//!   rows.
//!
//! This crate never imports the engine or the checkpoint crate.

pub mod dead_letter;
pub mod decode;
pub mod delta;
pub mod dictionary_choice;
pub mod durable_store;
pub mod epoch_encoder;
pub mod ids;
pub mod kafka;
pub mod kafka_cluster;
mod kafka_fetched;
pub mod kafka_group;
pub mod kafka_topic_id;
pub mod mm2;
pub mod multipart;
pub mod parquet_file;
pub mod partition_claims;
pub mod record;
pub mod source;
pub mod table_store;

pub use ids::{Epoch, TableVersion};
pub use record::{Positions, SourceRecord, TopicPartition};
