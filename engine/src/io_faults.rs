//! The file system the pipeline writes through: the real one, or — in test builds (the
//! `crash-points` feature) — one that fails where `TIDEMARK_FAULT_FS` says, so end-to-end tests
//! can show what a full disk or a failing device does to a running pipeline.
//!
//! `TIDEMARK_FAULT_FS=<op>:<error>:<path text>@<n>[:sticky]`, several separated by `,`:
//! - `<op>`: `write`, `sync`, `create`, `rename`, `remove`, `syncdir`, `setlen`, `zerorange`
//!   (the WAL zeroing a spare segment it reuses), `read` (a read of a file the pipeline
//!   opened for reading: the WAL at a restart, say);
//! - `<error>`: `eio`, `enospc` or `etimedout` (the last is transient: the commit is retried);
//! - `<path text>`: only paths containing it count (`wal`, `.parquet`, `_delta_log`, or empty);
//! - `@<n>`: the n-th matching call fails (1 = the first);
//! - `:sticky`: every later matching call fails too (a disk that stays full).
//!
//! Slow Delta commits (test builds too), both applied by [`before_delta_commit`]:
//! - `TIDEMARK_FAULT_COMMIT_DELAY_MS=<ms>`: every Delta commit waits `<ms>` first — a slow
//!   object store, for liveness tests;
//! - `TIDEMARK_FAULT_COMMIT_HANG=<ms>@<n>`: the n-th Delta commit of the run (counting the
//!   dead-letter table's) hangs for `<ms>` — an object store that stops answering for a while,
//!   to show `/readyz` turning unhealthy and back.

use tidemark_fs::SharedFs;

/// The environment variable read by [`pipeline_fs`] in test builds.
pub const ENV: &str = "TIDEMARK_FAULT_FS";

/// The file system for the WAL and the table's files.
pub fn pipeline_fs() -> Result<SharedFs, String> {
    let fs = fault_fs()?;
    #[cfg(feature = "crash-points")]
    if delta_log_crash::wanted() {
        return Ok(std::sync::Arc::new(delta_log_crash::CrashFs::new(fs)));
    }
    Ok(fs)
}

fn fault_fs() -> Result<SharedFs, String> {
    #[cfg(feature = "crash-points")]
    if let Ok(spec) = std::env::var(ENV) {
        let fs = tidemark_fs::FaultFs::new(tidemark_fs::std_fs());
        for fault in parse(&spec)? {
            fs.arm(fault);
        }
        tracing::warn!(
            spec,
            "fault injection: the pipeline's file system fails as told"
        );
        return Ok(std::sync::Arc::new(fs));
    }
    Ok(tidemark_fs::std_fs())
}

/// The crash points inside a Delta checkpoint write and the log cleanup, which happen inside
/// deltalake: a file-system wrapper reaches them at the file operations of those files
/// (installed only when one of them is armed, test builds only).
#[cfg(feature = "crash-points")]
mod delta_log_crash {
    use std::io;
    use std::path::{Path, PathBuf};

    use tidemark_checkpoint::fault::{self, CrashPoint};
    use tidemark_fs::{FileSystem, ReadableFile, SharedFs, WritableFile};

    /// True when a point this wrapper reaches is armed.
    pub fn wanted() -> bool {
        [
            CrashPoint::DeltaCheckpointTmpCreated,
            CrashPoint::DeltaCheckpointBeforePlace,
            CrashPoint::DeltaCheckpointAfterPlace,
            CrashPoint::DuringDeltaLogCleanup,
        ]
        .into_iter()
        .any(fault::is_armed)
    }

    fn is_checkpoint(path: &Path) -> bool {
        path.to_string_lossy().contains(".checkpoint.parquet")
    }

    fn is_log_file(path: &Path) -> bool {
        let p = path.to_string_lossy();
        p.contains("_delta_log/") && (p.ends_with(".json") || p.ends_with(".parquet"))
    }

    /// Passes every call on; hits the crash points at the checkpoint's and the cleanup's file
    /// operations.
    #[derive(Debug)]
    pub struct CrashFs(SharedFs);

    impl CrashFs {
        pub fn new(inner: SharedFs) -> Self {
            Self(inner)
        }
    }

    impl FileSystem for CrashFs {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.0.create_dir_all(dir)
        }
        fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
            let f = self.0.create_new(path)?;
            if is_checkpoint(path) {
                fault::hit(CrashPoint::DeltaCheckpointTmpCreated);
            }
            Ok(f)
        }
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
            self.0.open_append(path)
        }
        fn open_overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
            self.0.open_overwrite(path)
        }
        fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
            self.0.open_read(path)
        }
        fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            self.0.read_dir(dir)
        }
        fn len(&self, path: &Path) -> io::Result<u64> {
            self.0.len(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            if is_checkpoint(to) {
                fault::hit(CrashPoint::DeltaCheckpointBeforePlace);
            }
            self.0.rename(from, to)?;
            if is_checkpoint(to) {
                self.0.sync_dir(&tidemark_fs::parent_dir(to))?;
                fault::hit(CrashPoint::DeltaCheckpointAfterPlace);
            }
            Ok(())
        }
        fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
            if is_checkpoint(to) {
                fault::hit(CrashPoint::DeltaCheckpointBeforePlace);
            }
            self.0.hard_link(from, to)?;
            if is_checkpoint(to) {
                self.0.sync_dir(&tidemark_fs::parent_dir(to))?;
                fault::hit(CrashPoint::DeltaCheckpointAfterPlace);
            }
            Ok(())
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.0.remove_file(path)?;
            if is_log_file(path) {
                self.0.sync_dir(&tidemark_fs::parent_dir(path))?;
                fault::hit(CrashPoint::DuringDeltaLogCleanup);
            }
            Ok(())
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.0.sync_dir(dir)
        }
    }
}

/// Delays every Delta commit by this many milliseconds (test builds; see the module docs).
pub const COMMIT_DELAY_ENV: &str = "TIDEMARK_FAULT_COMMIT_DELAY_MS";

/// The n-th Delta commit hangs (test builds; see the module docs).
pub const COMMIT_HANG_ENV: &str = "TIDEMARK_FAULT_COMMIT_HANG";

/// Parses a `TIDEMARK_FAULT_COMMIT_HANG` value: `(milliseconds, n-th commit)`.
pub fn parse_commit_hang(spec: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{COMMIT_HANG_ENV}={spec:?}: want <ms>@<n>, e.g. 8000@3");
    let (ms, nth) = spec.trim().split_once('@').ok_or_else(bad)?;
    let ms = ms.parse().map_err(|_| bad())?;
    let nth: u64 = nth.parse().map_err(|_| bad())?;
    if nth == 0 {
        return Err(bad());
    }
    Ok((ms, nth))
}

/// Waits before a Delta commit as `TIDEMARK_FAULT_COMMIT_DELAY_MS` and
/// `TIDEMARK_FAULT_COMMIT_HANG` say (test builds only; nothing without the `crash-points`
/// feature).
pub async fn before_delta_commit() {
    #[cfg(feature = "crash-points")]
    {
        if let Some(ms) = std::env::var(COMMIT_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            tracing::warn!(ms, "fault injection: delaying the Delta commit");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        use std::sync::atomic::{AtomicU64, Ordering};
        static COMMITS: AtomicU64 = AtomicU64::new(0);
        let Ok(spec) = std::env::var(COMMIT_HANG_ENV) else {
            return;
        };
        let n = COMMITS.fetch_add(1, Ordering::SeqCst) + 1;
        match parse_commit_hang(&spec) {
            Ok((ms, nth)) if n == nth => {
                tracing::warn!(ms, commit = n, "fault injection: the Delta commit hangs");
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                tracing::warn!(commit = n, "fault injection: the Delta commit goes on");
            }
            Ok(_) => {}
            Err(e) => {
                // A test that mistypes the fault must not pass by never hanging.
                eprintln!("tidemark: {e}");
                std::process::exit(2);
            }
        }
    }
}

/// Parses a `TIDEMARK_FAULT_FS` value.
pub fn parse(spec: &str) -> Result<Vec<tidemark_fs::Fault>, String> {
    use tidemark_fs::{Fault, FaultKind, Op};
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|one| {
            let bad = |why: &str| format!("{ENV}={spec:?}: {one:?} {why}");
            let (head, sticky) = match one.trim().strip_suffix(":sticky") {
                Some(h) => (h, true),
                None => (one.trim(), false),
            };
            let (head, nth) = head.rsplit_once('@').ok_or_else(|| bad("lacks @<n>"))?;
            let nth: u64 = nth.parse().map_err(|_| bad("has a bad count"))?;
            let mut parts = head.splitn(3, ':');
            let op = match parts.next().unwrap_or("") {
                "write" => Op::Write,
                "sync" => Op::Sync,
                "create" => Op::Create,
                "rename" => Op::Rename,
                "remove" => Op::Remove,
                "syncdir" => Op::SyncDir,
                "setlen" => Op::SetLen,
                "zerorange" => Op::ZeroRange,
                "read" => Op::Read,
                _ => return Err(bad("names no known operation")),
            };
            let kind = match parts.next().unwrap_or("") {
                "eio" => FaultKind::Eio,
                "enospc" => FaultKind::DiskFull,
                "etimedout" => FaultKind::TimedOut,
                _ => return Err(bad("names no known error (eio, enospc, etimedout)")),
            };
            Ok(Fault {
                op,
                nth: nth.max(1),
                path_contains: parts.next().unwrap_or("").to_string(),
                kind,
                sticky,
                partial: op == Op::Write,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tidemark_fs::{FaultKind, Op};

    #[test]
    fn commit_hangs_parse() {
        assert_eq!(super::parse_commit_hang("8000@3"), Ok((8000, 3)));
        for bad in ["8000", "x@1", "10@0", "10@y"] {
            assert!(super::parse_commit_hang(bad).unwrap_err().contains(bad));
        }
    }

    #[test]
    fn specs_parse_or_name_what_is_wrong() {
        let f = super::parse("write:enospc:wal@3:sticky,sync:eio:_delta_log@1,read:eio:/wal/@2")
            .unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(
            (f[2].op, f[2].kind, f[2].nth, f[2].path_contains.as_str()),
            (Op::Read, FaultKind::Eio, 2, "/wal/")
        );
        assert_eq!(
            (f[0].op, f[0].kind, f[0].nth, f[0].sticky),
            (Op::Write, FaultKind::DiskFull, 3, true)
        );
        assert_eq!(f[0].path_contains, "wal");
        assert_eq!(
            (f[1].op, f[1].kind, f[1].sticky),
            (Op::Sync, FaultKind::Eio, false)
        );
        for bad in [
            "write:enospc:wal",
            "fly:eio:x@1",
            "write:boom:x@1",
            "write:eio:x@z",
        ] {
            let e = super::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
