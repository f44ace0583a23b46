//! A writer lock on an object store (S3 has no `flock`): one small lock object created with
//! put-if-absent, naming its holder.
//!
//! # Lock object format
//!
//! A JSON object ([`Holder`]): `{"pid": 123, "host": "ip-10-0-0-7", "boot_id": "...",
//! "proc_start": 4567, "started": "2026-11-30T14:00:00Z", "command": "tidemark replicate",
//! "token": "<pid>-<nanos>"}`. Unknown fields are ignored; a lock object that is not this JSON
//! is shown raw in the refusal and never broken automatically.
//!
//! Invariants kept here:
//! - A lock is held only on a store that refuses a second put-if-absent: right after creating
//!   the lock object, a second create of it must fail, or the lock is deleted and refused
//!   ([`ObjectLockError::NoPutIfAbsent`]) — a store that silently overwrites could let two
//!   writers in.
//! - A lock is taken only by a put-if-absent (`If-None-Match: *`) of the lock object, or by a
//!   conditional overwrite (`If-Match: <etag>`) of a lock object judged stale: two processes
//!   breaking one stale lock at once cannot both win, the second's overwrite fails its
//!   precondition and it is refused naming the first.
//! - A lock is judged stale only when its holder ran on *this* host and is provably gone (this
//!   host booted since, or no process with its pid and start time exists; [`judge`]). A holder
//!   on another host is never presumed dead: the refusal names the lock object and how to
//!   remove it by hand once that process is known to be gone.
//! - [`ObjectLock::release`] deletes the lock object only while it still holds this lock's
//!   token (a lock broken by someone else is left alone).
//! - A process killed with SIGKILL leaves its lock object behind; the next run on the same host
//!   breaks it, a run elsewhere is refused with the holder's description.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

/// Why a lock object could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ObjectLockError {
    /// Another process holds the lock (or may: it ran on another host).
    #[error(
        "{what} is locked by another tidemark process ({holder}; lock object {lock}): {advice}"
    )]
    Held {
        /// What the lock protects.
        what: String,
        /// The lock object's URI.
        lock: String,
        /// The holder as described by the lock object.
        holder: String,
        /// What to do.
        advice: String,
    },
    /// The store accepted a second put-if-absent of the lock object: it does not implement
    /// conditional writes, so no lock (and no safe concurrent commit) is possible on it.
    #[error("lock object {lock} of {what}: the store accepted a second put-if-absent of it ({detail}); it does not implement conditional writes (If-None-Match: *), so two writers could not be kept apart: refusing. Use S3 or an S3-compatible store with conditional writes")]
    NoPutIfAbsent {
        /// What the lock protects.
        what: String,
        /// The lock object's URI.
        lock: String,
        /// What the probe saw.
        detail: String,
    },
    /// The store refused or failed a request.
    #[error("lock object {lock} of {what}: {op} failed: {source}")]
    Store {
        /// What the lock protects.
        what: String,
        /// The lock object's URI.
        lock: String,
        /// What was being done.
        op: &'static str,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
}

/// Who holds a lock: written into the lock object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's process id.
    pub pid: u32,
    /// The holder's host name.
    pub host: String,
    /// The holder host's boot id (Linux `/proc/sys/kernel/random/boot_id`), if known.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The holder process's start time in clock ticks since boot (`/proc/<pid>/stat`), if
    /// known: tells a reused pid from the holder.
    #[serde(default)]
    pub proc_start: Option<u64>,
    /// The holder's pid namespace (Linux `/proc/self/ns/pid`), if known: containers on one
    /// host share its name and boot id but not their pids.
    #[serde(default)]
    pub pid_ns: Option<String>,
    /// When the lock was taken (RFC 3339).
    pub started: String,
    /// The command holding it.
    pub command: String,
    /// Unique to this acquisition (release deletes only its own lock).
    pub token: String,
}

impl Holder {
    /// This process, running `command`.
    pub fn this_process(command: &str) -> Self {
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            pid,
            host: Host::current().name,
            boot_id: Host::current().boot_id,
            proc_start: proc_start(pid),
            pid_ns: Host::current().pid_ns,
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command: command.to_string(),
            token: format!("{pid}-{nanos}"),
        }
    }

    /// One line naming the holder.
    pub fn describe(&self) -> String {
        format!(
            "pid {} on host {} since {} running {}",
            self.pid, self.host, self.started, self.command
        )
    }
}

/// This host as far as [`judge`] needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The host name.
    pub name: String,
    /// The boot id, if known.
    pub boot_id: Option<String>,
    /// This process's pid namespace, if known.
    pub pid_ns: Option<String>,
}

impl Host {
    /// The host this process runs on.
    pub fn current() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Self {
            name: read("/proc/sys/kernel/hostname")
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "unknown-host".into()),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|l| l.display().to_string()),
        }
    }
}

/// The start time (clock ticks since boot) of process `pid` on this host, `None` when no such
/// process exists (or this is not Linux).
pub fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; starttime is field 22, the 20th after the name.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// True when the lock object at `path` holds `token` (read back after an ambiguous answer).
async fn holds_token(store: &dyn ObjectStore, path: &Path, token: &str) -> bool {
    let Ok(got) = store.get(path).await else {
        return false;
    };
    let Ok(bytes) = got.bytes().await else {
        return false;
    };
    serde_json::from_slice::<Holder>(&bytes).is_ok_and(|h| h.token == token)
}

/// Whether the holder of a lock is still there, as far as this host can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (or might: a process with its pid exists and its start time matches or is
    /// unknown).
    Alive,
    /// It is gone, with why (the lock may be broken).
    Gone(String),
    /// It ran on another host: this host cannot tell.
    Elsewhere,
}

/// Judges `holder` from `here`, where `start_of(pid)` is the start time of a live process
/// with that pid on this host (`None`: no such process). Pure; see the module invariants.
pub fn judge(holder: &Holder, here: &Host, start_of: &dyn Fn(u32) -> Option<u64>) -> Liveness {
    if holder.host != here.name {
        return Liveness::Elsewhere;
    }
    // Another boot id or pid namespace under the same host name: a rebooted host, or another
    // machine or container that shares the name. This host cannot tell which, so it never
    // breaks such a lock (a live writer elsewhere would be let in beside a second one).
    if let (Some(theirs), Some(ours)) = (&holder.boot_id, &here.boot_id) {
        if theirs != ours {
            return Liveness::Elsewhere;
        }
    }
    if let (Some(theirs), Some(ours)) = (&holder.pid_ns, &here.pid_ns) {
        if theirs != ours {
            return Liveness::Elsewhere;
        }
    }
    match (start_of(holder.pid), holder.proc_start) {
        (None, _) => Liveness::Gone(format!("no process {} on this host", holder.pid)),
        (Some(now), Some(then)) if now != then => Liveness::Gone(format!(
            "process {} on this host is another process (pid reused)",
            holder.pid
        )),
        _ => Liveness::Alive,
    }
}

/// A held lock object. Release it with [`ObjectLock::release`]; dropping it without releasing
/// deletes it in the background when a Tokio runtime is running (best effort: a lock left
/// behind is broken by the next run on this host, see the module documentation).
#[derive(Debug)]
pub struct ObjectLock {
    store: Arc<dyn ObjectStore>,
    path: Path,
    uri: String,
    token: String,
    released: bool,
}

impl ObjectLock {
    /// Takes the lock object `path` in `store` for `command`, `what` naming what it protects
    /// and `uri` the lock object in messages.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: Path,
        uri: &str,
        what: &str,
        command: &str,
    ) -> Result<Self, ObjectLockError> {
        let holder = Holder::this_process(command);
        let body = Bytes::from(serde_json::to_vec(&holder).unwrap_or_default());
        let store_err = |op: &'static str| {
            let (what, lock) = (what.to_string(), uri.to_string());
            move |source| ObjectLockError::Store {
                what,
                lock,
                op,
                source: Box::new(source),
            }
        };
        let lock = |token: String| Self {
            store: Arc::clone(&store),
            path: path.clone(),
            uri: uri.to_string(),
            token,
            released: false,
        };
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match store
            .put_opts(&path, PutPayload::from_bytes(body.clone()), create)
            .await
        {
            Ok(_) => {
                tracing::debug!(lock = %uri, "took the lock object");
                let taken = lock(holder.token);
                // The lock is only worth anything if the store refuses a second create: try
                // one (with the same bytes, harmless if the store wrongly accepts it).
                let again = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                let refused = match store
                    .put_opts(&path, PutPayload::from_bytes(body), again)
                    .await
                {
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => None,
                    Ok(_) => Some("the second write succeeded".to_string()),
                    Err(object_store::Error::NotImplemented { .. })
                    | Err(object_store::Error::NotSupported { .. }) => {
                        Some("conditional writes are not implemented".to_string())
                    }
                    Err(e) => {
                        drop(taken.release().await);
                        return Err(store_err("check put-if-absent with")(e));
                    }
                };
                if let Some(detail) = refused {
                    drop(taken.release().await);
                    return Err(ObjectLockError::NoPutIfAbsent {
                        what: what.to_string(),
                        lock: uri.to_string(),
                        detail,
                    });
                }
                return Ok(taken);
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(store_err("create")(e)),
        }
        // Held: read who holds it, and break it only when its holder is provably gone.
        let existing = match store.get(&path).await {
            Ok(r) => r,
            // Released in between: one more try, refused if someone else got it.
            Err(object_store::Error::NotFound { .. }) => {
                let create = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                return match store
                    .put_opts(&path, PutPayload::from_bytes(body), create)
                    .await
                {
                    Ok(_) => Ok(lock(holder.token)),
                    Err(e) => Err(store_err("create")(e)),
                };
            }
            Err(e) => return Err(store_err("read")(e)),
        };
        let version = UpdateVersion {
            e_tag: existing.meta.e_tag.clone(),
            version: existing.meta.version.clone(),
        };
        let bytes = existing.bytes().await.map_err(store_err("read"))?;
        let remove_by_hand = format!(
            "once that process is known to be gone, remove the lock object (aws s3 rm {uri}) and run this again"
        );
        let held = |holder: String, advice: String| ObjectLockError::Held {
            what: what.to_string(),
            lock: uri.to_string(),
            holder,
            advice,
        };
        let Ok(theirs) = serde_json::from_slice::<Holder>(&bytes) else {
            return Err(held(
                format!(
                    "unreadable lock object: {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
                remove_by_hand,
            ));
        };
        // Our own create, whose answer was lost and whose retry found it: the lock is ours
        // (and that retry was refused, so the store does refuse a second create).
        if theirs.token == holder.token {
            tracing::debug!(lock = %uri, "took the lock object (a retried create found our own)");
            return Ok(lock(holder.token));
        }
        match judge(&theirs, &Host::current(), &proc_start) {
            Liveness::Alive => Err(held(
                theirs.describe(),
                "it is still running; stop it first (two writers would remove each other's files)"
                    .into(),
            )),
            Liveness::Elsewhere => Err(held(theirs.describe(), remove_by_hand)),
            Liveness::Gone(why) => {
                let update = PutOptions {
                    mode: PutMode::Update(version),
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&path, PutPayload::from_bytes(body), update)
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(lock = %uri, "broke the stale lock of {} ({why})", theirs.describe());
                        Ok(lock(holder.token))
                    }
                    Err(object_store::Error::Precondition { .. })
                    | Err(object_store::Error::AlreadyExists { .. })
                        if !holds_token(store.as_ref(), &path, &holder.token).await =>
                    {
                        Err(held(
                            format!(
                                "another process broke the stale lock of {} first",
                                theirs.describe()
                            ),
                            "it is running now; stop it first".into(),
                        ))
                    }
                    // Our replacement landed; its answer was lost.
                    Err(object_store::Error::Precondition { .. })
                    | Err(object_store::Error::AlreadyExists { .. }) => {
                        tracing::warn!(lock = %uri, "broke the stale lock of {} ({why})", theirs.describe());
                        Ok(lock(holder.token))
                    }
                    Err(e) => Err(store_err("replace the stale lock")(e)),
                }
            }
        }
    }

    /// The lock object's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Deletes the lock object if it is still this lock's.
    pub async fn release(mut self) -> Result<(), object_store::Error> {
        self.released = true;
        release(self.store.as_ref(), &self.path, &self.token).await
    }
}

async fn release(
    store: &dyn ObjectStore,
    path: &Path,
    token: &str,
) -> Result<(), object_store::Error> {
    let bytes = match store.get(path).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<Holder>(&bytes) {
        Ok(h) if h.token == token => store.delete(path).await,
        _ => {
            tracing::warn!(lock = %path, "the lock object is no longer ours (broken by another process): left alone");
            Ok(())
        }
    }
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (store, path, token) = (
                Arc::clone(&self.store),
                self.path.clone(),
                self.token.clone(),
            );
            handle.spawn(async move {
                if let Err(e) = release(store.as_ref(), &path, &token).await {
                    tracing::warn!(lock = %path, "could not delete the lock object: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn holder(host: &str, pid: u32, boot: Option<&str>, start: Option<u64>) -> Holder {
        Holder {
            pid,
            host: host.into(),
            boot_id: boot.map(Into::into),
            proc_start: start,
            pid_ns: Some("pid:[1]".into()),
            started: "2026-11-30T14:00:00Z".into(),
            command: "tidemark replicate".into(),
            token: "t".into(),
        }
    }

    #[test]
    fn only_a_holder_on_this_host_that_is_provably_gone_is_judged_gone() {
        let here = Host {
            name: "a".into(),
            boot_id: Some("boot-1".into()),
            pid_ns: Some("pid:[1]".into()),
        };
        let alive = |pid: u32| (pid == 7).then_some(100);
        let h = holder("b", 8, Some("boot-1"), Some(100));
        assert_eq!(judge(&h, &here, &alive), Liveness::Elsewhere);
        let h = holder("a", 7, Some("boot-1"), Some(100));
        assert_eq!(judge(&h, &here, &alive), Liveness::Alive);
        let h = holder("a", 7, None, None);
        assert_eq!(judge(&h, &here, &alive), Liveness::Alive);
        // The same host name after another boot, or in another pid namespace: maybe another
        // machine or container, never judged gone.
        let h = holder("a", 7, Some("boot-0"), Some(100));
        assert_eq!(judge(&h, &here, &alive), Liveness::Elsewhere);
        let mut h = holder("a", 8, Some("boot-1"), Some(100));
        h.pid_ns = Some("pid:[2]".into());
        assert_eq!(judge(&h, &here, &alive), Liveness::Elsewhere);
        for h in [
            holder("a", 8, Some("boot-1"), Some(100)),
            holder("a", 7, Some("boot-1"), Some(99)),
        ] {
            assert!(
                matches!(judge(&h, &here, &alive), Liveness::Gone(_)),
                "{h:?}"
            );
        }
    }

    #[test]
    fn this_process_is_alive_by_its_own_judgement() {
        let me = Holder::this_process("test");
        assert!(me.proc_start.is_some());
        assert_eq!(judge(&me, &Host::current(), &proc_start), Liveness::Alive);
    }

    #[tokio::test]
    async fn a_second_taker_is_refused_naming_the_holder_and_gets_it_after_release() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("t/.x.lock");
        let first = ObjectLock::acquire(store.clone(), path.clone(), "mem://t/.x.lock", "t", "one")
            .await
            .unwrap();
        let err = ObjectLock::acquire(store.clone(), path.clone(), "mem://t/.x.lock", "t", "two")
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ObjectLockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("running one"),
            "{msg}"
        );
        first.release().await.unwrap();
        assert!(store.head(&path).await.is_err(), "released means deleted");
        let second =
            ObjectLock::acquire(store.clone(), path.clone(), "mem://t/.x.lock", "t", "two")
                .await
                .unwrap();
        second.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_lock_of_a_dead_process_here_is_broken_one_elsewhere_is_not() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("t/.x.lock");
        let here = Host::current();
        // A pid that does not exist (beyond pid_max).
        let mut dead = holder(&here.name, u32::MAX - 1, here.boot_id.as_deref(), Some(1));
        dead.pid_ns = here.pid_ns.clone();
        store
            .put(&path, serde_json::to_vec(&dead).unwrap().into())
            .await
            .unwrap();
        let lock = ObjectLock::acquire(store.clone(), path.clone(), "mem://l", "t", "new")
            .await
            .unwrap();
        let held: Holder =
            serde_json::from_slice(&store.get(&path).await.unwrap().bytes().await.unwrap())
                .unwrap();
        assert_eq!(held.pid, std::process::id());
        lock.release().await.unwrap();

        dead.host = "some-other-host".into();
        store
            .put(&path, serde_json::to_vec(&dead).unwrap().into())
            .await
            .unwrap();
        let err = ObjectLock::acquire(store.clone(), path.clone(), "mem://l", "t", "new")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("aws s3 rm mem://l"), "{err}");
    }

    #[tokio::test]
    async fn release_leaves_a_lock_that_is_no_longer_ours() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("l");
        let lock = ObjectLock::acquire(store.clone(), path.clone(), "mem://l", "t", "a")
            .await
            .unwrap();
        let other = holder("h", 1, None, None);
        store
            .put(&path, serde_json::to_vec(&other).unwrap().into())
            .await
            .unwrap();
        lock.release().await.unwrap();
        assert!(store.head(&path).await.is_ok());
    }

    /// A store that ignores conditional writes (every put overwrites).
    #[derive(Debug)]
    struct Unconditional(InMemory);

    impl std::fmt::Display for Unconditional {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Unconditional")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Unconditional {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            _opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0
                .put_opts(location, payload, PutOptions::default())
                .await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_store_without_conditional_writes_is_refused_and_left_clean() {
        let store: Arc<dyn ObjectStore> = Arc::new(Unconditional(InMemory::new()));
        let path = Path::from("t/.x.lock");
        let err = ObjectLock::acquire(store.clone(), path.clone(), "mem://l", "t", "a")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ObjectLockError::NoPutIfAbsent { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("conditional writes"), "{err}");
        assert!(
            store.head(&path).await.is_err(),
            "no lock object left behind"
        );
    }
}
