//! Named crash points of the epoch protocol, armed through the environment, for crash tests.
//!
//! They live in this crate (the lowest one) because three of them sit inside it: the middle of
//! a checkpoint write, the middle of WAL truncation and the middle of a store's migration from
//! format 1; the engine calls the others.
//!
//! `TIDEMARK_CRASH_AT=<point>` kills the process with SIGKILL the first time it reaches
//! `<point>`; `<point>@<n>` on the n-th time.
//!
//! Compiled in only with the cargo feature `crash-points` (the crash tests enable it). Without
//! it, [`hit`] is an empty `#[inline(always)]` function: a release build's hot path carries no
//! check at all, and the environment variable is ignored. The names, [`parse`] and
//! [`CrashPoint::ALL`] exist either way, so callers compile the same with and without it.
//!
//! `mid_checkpoint_write` sits between building the checkpoint's RocksDB `WriteBatch` and
//! applying it. A SIGKILL there cannot leave a torn batch: the batch is only in this process's
//! memory until `write_opt` hands it to RocksDB, which applies a batch atomically (one record in
//! RocksDB's own log, replayed whole or not at all). So this point tests "crash after the Delta
//! commit, before the checkpoint" (like `after_delta_commit`), not a torn batch. That RocksDB
//! never shows part of a batch, even when its log file is cut at any byte inside the batch, is
//! shown by the store test `a_checkpoint_batch_cut_at_any_byte_is_all_or_nothing`. The point
//! is kept because the engine's crash tests name it.

use std::fmt;
use std::str::FromStr;
#[cfg(feature = "crash-points")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "crash-points")]
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const ENV: &str = "TIDEMARK_CRASH_AT";

/// Every place the pipeline can be made to crash, in protocol order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Records were read from the source; none of the batch is in the WAL yet.
    BeforeWalAppend,
    /// A batch of records is in the WAL (written, maybe not synced); the epoch is open.
    AfterWalAppend,
    /// `SEAL(e)` is durable; nothing of the epoch is in the table.
    AfterSeal,
    /// The epoch is sealed, its rows decoded; no Parquet file is written yet.
    BeforeParquetWrite,
    /// Parquet files are written (and fsynced), the Delta commit is not.
    AfterParquetWrite,
    /// The Delta commit landed; the checkpoint is not written.
    AfterDeltaCommit,
    /// Inside the checkpoint write: the RocksDB batch is built but not applied. Not a torn
    /// batch (RocksDB batches are atomic; see the module documentation).
    MidCheckpointWrite,
    /// The checkpoint is durable; the WAL is not truncated.
    AfterCheckpoint,
    /// Between two segment deletions of WAL truncation.
    DuringTruncation,
    /// The state writer's gathered dedup deltas are written as staged SST files beside the
    /// store, not ingested: a crash loses them (the next open deletes the files); the WAL
    /// still holds them.
    AfterStateWrite,
    /// The store's dedup state is synced (the staged files ingested, and noted in the store's
    /// `state_ingested`), but no checkpoint record names it yet and the WAL still holds the
    /// deltas it covers (the sync is ahead of WAL truncation).
    AfterStateSync,
    /// A Delta log checkpoint is due after a commit (the epoch is committed and checkpointed
    /// in the store); nothing of the Delta checkpoint is written.
    BeforeDeltaCheckpoint,
    /// The Delta checkpoint's temporary file was created (empty), under a hidden name.
    DeltaCheckpointTmpCreated,
    /// The Delta checkpoint's temporary file is written and fsynced; not under its final name.
    DeltaCheckpointBeforePlace,
    /// The Delta checkpoint file is under its final name; `_last_checkpoint` still names the
    /// previous checkpoint.
    DeltaCheckpointAfterPlace,
    /// The Delta checkpoint and `_last_checkpoint` are written; expired log files not cleaned.
    AfterDeltaCheckpoint,
    /// Between two deletions of expired `_delta_log` files.
    DuringDeltaLogCleanup,
    /// An in-pipeline compaction round is due; nothing of it is written.
    BeforeCompaction,
    /// A format 1 store is being migrated at its first read-write open: its dedup entries
    /// are copied into the key index (not synced); `dedup` still holds them and the version is
    /// still 1.
    DuringFormatMigration,
}

impl CrashPoint {
    /// All points, for tests that crash at each.
    pub const ALL: [CrashPoint; 11] = [
        CrashPoint::BeforeWalAppend,
        CrashPoint::AfterWalAppend,
        CrashPoint::AfterSeal,
        CrashPoint::BeforeParquetWrite,
        CrashPoint::AfterParquetWrite,
        CrashPoint::AfterDeltaCommit,
        CrashPoint::MidCheckpointWrite,
        CrashPoint::AfterCheckpoint,
        CrashPoint::DuringTruncation,
        CrashPoint::AfterStateWrite,
        CrashPoint::AfterStateSync,
    ];

    /// The points of the Delta log maintenance (checkpoints every N commits, expired-log
    /// cleanup), in the order they are reached: reached only when a Delta checkpoint is due, so
    /// they are not in [`CrashPoint::ALL`] (whose points every epoch reaches).
    pub const DELTA_LOG: [CrashPoint; 7] = [
        CrashPoint::BeforeDeltaCheckpoint,
        CrashPoint::DeltaCheckpointTmpCreated,
        CrashPoint::DeltaCheckpointBeforePlace,
        CrashPoint::DeltaCheckpointAfterPlace,
        CrashPoint::AfterDeltaCheckpoint,
        CrashPoint::DuringDeltaLogCleanup,
        CrashPoint::BeforeCompaction,
    ];

    /// The points of a store's migration from an older format, reached only when a store of
    /// that format is opened read-write.
    pub const STORE_MIGRATION: [CrashPoint; 1] = [CrashPoint::DuringFormatMigration];

    /// True for the points of the dedup state's changelog path (reached only with dedup on).
    pub fn is_state_point(self) -> bool {
        matches!(
            self,
            CrashPoint::AfterStateWrite | CrashPoint::AfterStateSync
        )
    }

    /// The name used in [`ENV`].
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeWalAppend => "before_wal_append",
            CrashPoint::AfterWalAppend => "after_wal_append",
            CrashPoint::AfterSeal => "after_seal",
            CrashPoint::BeforeParquetWrite => "before_parquet_write",
            CrashPoint::AfterParquetWrite => "after_parquet_write",
            CrashPoint::AfterDeltaCommit => "after_delta_commit",
            CrashPoint::MidCheckpointWrite => "mid_checkpoint_write",
            CrashPoint::AfterCheckpoint => "after_checkpoint",
            CrashPoint::DuringTruncation => "during_truncation",
            CrashPoint::AfterStateWrite => "after_state_write",
            CrashPoint::AfterStateSync => "after_state_sync",
            CrashPoint::BeforeDeltaCheckpoint => "before_delta_checkpoint",
            CrashPoint::DeltaCheckpointTmpCreated => "delta_checkpoint_tmp_created",
            CrashPoint::DeltaCheckpointBeforePlace => "delta_checkpoint_before_place",
            CrashPoint::DeltaCheckpointAfterPlace => "delta_checkpoint_after_place",
            CrashPoint::AfterDeltaCheckpoint => "after_delta_checkpoint",
            CrashPoint::DuringDeltaLogCleanup => "during_delta_log_cleanup",
            CrashPoint::BeforeCompaction => "before_compaction",
            CrashPoint::DuringFormatMigration => "during_format_migration",
        }
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CrashPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let every = || {
            CrashPoint::ALL
                .into_iter()
                .chain(CrashPoint::DELTA_LOG)
                .chain(CrashPoint::STORE_MIGRATION)
        };
        every().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = every().map(|p| p.name()).collect();
            format!("unknown crash point {s:?}; known: {}", names.join(", "))
        })
    }
}

/// An armed crash: which point, and on which hit (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    /// The point.
    pub point: CrashPoint,
    /// Crash on this hit of the point.
    pub on_hit: u64,
}

/// Parses `point` or `point@n`.
pub fn parse(spec: &str) -> Result<Armed, String> {
    let (name, hit) = match spec.split_once('@') {
        Some((n, h)) => (
            n,
            h.parse::<u64>()
                .ok()
                .filter(|h| *h >= 1)
                .ok_or_else(|| format!("bad hit count in {ENV}={spec:?}: want a number >= 1"))?,
        ),
        None => (spec, 1),
    };
    Ok(Armed {
        point: name.trim().parse()?,
        on_hit: hit,
    })
}

#[cfg(feature = "crash-points")]
fn armed() -> Option<Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        match parse(&spec) {
            Ok(a) => {
                tracing::warn!(point = %a.point, on_hit = a.on_hit, "crash point armed");
                Some(a)
            }
            Err(e) => {
                // A test that mistypes a point must not pass by never crashing.
                eprintln!("tidemark: {e}");
                std::process::exit(2);
            }
        }
    })
}

#[cfg(feature = "crash-points")]
static HITS: AtomicU64 = AtomicU64::new(0);

/// True when `point` is the armed point (crash-points builds; always false without them): lets
/// a caller install a hook (a file-system wrapper) only when a test asks for it.
pub fn is_armed(point: CrashPoint) -> bool {
    #[cfg(feature = "crash-points")]
    {
        armed().is_some_and(|a| a.point == point)
    }
    #[cfg(not(feature = "crash-points"))]
    {
        let _ = point;
        false
    }
}

/// Crashes the process here with SIGKILL if `point` is armed and this is the armed hit.
#[cfg(feature = "crash-points")]
pub fn hit(point: CrashPoint) {
    let Some(a) = armed() else { return };
    if a.point != point {
        return;
    }
    let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if n == a.on_hit {
        eprintln!("tidemark: crash point {point} reached (hit {n}): SIGKILL");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // kill(2) to ourselves with SIGKILL does not return; if it somehow did, do not go on.
        std::process::abort();
    }
}

/// Crash points are not compiled in (no `crash-points` feature): does nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn hit(_point: CrashPoint) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse("after_parquet_write@3").unwrap(),
            Armed {
                point: CrashPoint::AfterParquetWrite,
                on_hit: 3
            }
        );
        assert_eq!(parse("after_delta_commit").unwrap().on_hit, 1);
        assert!(parse("after_lunch")
            .unwrap_err()
            .contains("after_parquet_write"));
        assert!(parse("after_delta_commit@0").is_err());
        for p in CrashPoint::ALL
            .into_iter()
            .chain(CrashPoint::DELTA_LOG)
            .chain(CrashPoint::STORE_MIGRATION)
        {
            assert_eq!(p.name().parse::<CrashPoint>().unwrap(), p);
        }
    }
}
