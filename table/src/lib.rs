//! Delta tables as files: a table's `_delta_log` read version by version ([`log`]), files copied
//! durably and verified against their size and checksum ([`copy`]), and table replication in log
//! order on top of them; backups ([`backup`]) and restores from them ([`restore_backup`]), and
//! corrupt-file detection ([`verify`]); history, time travel reads and in-place restores
//! ([`history`], [`time_travel`], [`restore`]); a vacuum that keeps what recovery needs
//! ([`vacuum`]) and compaction ([`optimize`]).
//!
//! Everything here works on `Arc<dyn ObjectStore>` for both sides ([`location::TableLocation`]):
//! local tables (through the `fs` seam's durable writes) and `s3://` tables (S3 with conditional
//! writes and retries); a writer on an object store is kept alone by a lock object
//! ([`object_lock`]) instead of an `flock`.

pub mod backup;
pub mod copy;
pub mod fault;
pub mod history;
pub mod lag;
pub mod live;
pub mod local_copy;
pub mod location;
pub mod log;
pub mod object_lock;
pub mod optimize;
pub mod progress;
pub mod replica_lock;
pub mod replicate;
pub mod restore;
pub mod restore_backup;
pub mod set_aside;
pub mod snapshot;
pub mod time_travel;
pub mod vacuum;
pub mod verify;

#[cfg(test)]
mod test_support;

pub use copy::{
    copy_verified, digest_of, CopyError, CopyOptions, CopyOutcome, FileDigest, Sha256Sum,
};
pub use lag::{measure_lag, replication_lag, ReplicationLag};
pub use location::{open_store, LocationError, TableLocation};
pub use log::{read_commit, Commit, LogError, LogListing};
pub use replicate::{ReplicateError, ReplicateOptions, Replicator, RoundReport};
pub use snapshot::Snapshot;
