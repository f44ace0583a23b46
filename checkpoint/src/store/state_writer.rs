//! [`StateWriter`]: makes epochs' dedup deltas part of the store off the run's critical path.
//!
//! One thread, one queue. A delta is queued only after the checkpoint record of its epoch is
//! durable (the caller's order). The thread copies each delta into one buffer it keeps and
//! hands the delta's own buffer back ([`KeyBuffers`]: the dedup state fills it again), gathers
//! what comes for up to [`SYNC_EVERY`], then writes it all as one sorted SST file (sorted where
//! it lies, `CheckpointStore::stage_packed`; in parts, one file each, on several threads
//! when somebody waits for the write, each part an index list into the same buffer:
//! `CheckpointStore::stage_packed_in_parts`) and ingests it
//! ([`StagedState::ingest`](super::StagedState::ingest)),
//! durable when that returns, and publishes the newest epoch whose delta is now durable
//! ([`StateWriter::durable_epoch`]); the next checkpoint record names it as its `state_epoch`,
//! and only then may the WAL drop the delta frames up to it. Keys below the newest watermark
//! received are not written at all (no record will ever read them).
//!
//! The queue is bounded, and so is what is gathered ([`MAX_GATHERED_KEYS`]): a store that
//! cannot keep up slows the checkpoints (back-pressure) instead of holding ever more deltas in
//! memory. A failed write or ingestion stops the thread; the next call on the writer returns
//! the error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvError, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::staged::PartsScratch;
use super::{CheckpointStore, KeyBuffers, PackedKeys, StoreError};
use crate::fault::{self, CrashPoint};

/// Deltas waiting for the thread before [`StateWriter::queue`] blocks.
const QUEUE_DEPTH: usize = 4;

/// Least time between two background writes: each is a new file in the store; fewer, bigger files mean less compaction. The WAL keeps the deltas meanwhile.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Keys gathered that make the thread write them at once, whether a write is due or the
/// writer is held: what bounds its memory (~40 bytes a key with 16-byte keys).
const MAX_GATHERED_KEYS: usize = 1 << 22;

/// Test builds (`crash-points`) may shorten `SYNC_EVERY` with this variable (ms), so crash
/// tests reach a sync within a short run.
pub const SYNC_EVERY_ENV: &str = "TIDEMARK_FAULT_STATE_SYNC_MS";

fn sync_every() -> Duration {
    #[cfg(feature = "crash-points")]
    if let Some(ms) = std::env::var(SYNC_EVERY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms);
    }
    SYNC_EVERY
}

/// One epoch's change to the dedup state: the keys it added (still at or above its watermark)
/// and its watermark, below which entries are never read again (compaction drops them).
#[derive(Debug, Clone, Default)]
pub struct StateDelta {
    /// The epoch.
    pub epoch: u64,
    /// Keys the epoch added, with their event times.
    pub inserts: PackedKeys,
    /// The watermark after the epoch: entries below it are evicted.
    pub evict_below: Option<i64>,
}

enum Job {
    Apply(StateDelta),
    /// Write and ingest everything gathered and queued, then answer.
    Sync(SyncSender<Result<(), StoreError>>),
    /// Write and ingest everything gathered now, not when the next write is due
    /// ([`StateWriter::write_soon`]).
    WriteNow,
}

/// The background state writer: see the module documentation.
pub struct StateWriter {
    tx: Option<SyncSender<Job>>,
    /// Set while a [`StateHold`] asks the thread not to write deltas yet.
    held: Arc<AtomicBool>,
    durable: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<StoreError>>>,
    thread: Option<JoinHandle<()>>,
    path: std::path::PathBuf,
    /// CPU microseconds the thread has used, as of its last write ([`StateWriter::cpu_time`]);
    /// [`CPU_UNKNOWN`] until a write has measured it.
    cpu_micros: Arc<AtomicU64>,
}

impl std::fmt::Debug for StateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWriter")
            .field("durable_epoch", &self.durable_epoch())
            .finish()
    }
}

impl StateWriter {
    /// Starts the writer over `store`, whose state is durable through `durable_epoch`.
    pub fn start(store: CheckpointStore, durable_epoch: u64) -> Self {
        Self::start_with_buffers(store, durable_epoch, Arc::default())
    }

    /// [`StateWriter::start`] handing each delta's buffer back to `buffers` once copied, where
    /// the dedup state takes its next epochs' ([`KeyBuffers::take`]): the engine keeps one
    /// pool for all the writers a run starts.
    pub fn start_with_buffers(
        store: CheckpointStore,
        durable_epoch: u64,
        buffers: Arc<KeyBuffers>,
    ) -> Self {
        Self::start_writing_every(store, durable_epoch, sync_every(), buffers)
    }

    /// [`StateWriter::start`] with the least time between two unasked writes given (tests
    /// make it long, so that only an asked write can make a delta durable).
    fn start_writing_every(
        store: CheckpointStore,
        durable_epoch: u64,
        every: Duration,
        buffers: Arc<KeyBuffers>,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let durable = Arc::new(AtomicU64::new(durable_epoch));
        let failed = Arc::new(Mutex::new(None));
        let path = store.path().to_path_buf();
        let held = Arc::new(AtomicBool::new(false));
        let cpu_micros = Arc::new(AtomicU64::new(CPU_UNKNOWN));
        let thread = {
            let (durable, failed, held) = (durable.clone(), failed.clone(), held.clone());
            let cpu = cpu_micros.clone();
            let buffers = buffers.clone();
            std::thread::Builder::new()
                .name("tidemark-state".into())
                .spawn(move || {
                    let cadence = Cadence {
                        every,
                        parts_when_waited: write_parts(),
                        buffers,
                    };
                    let helpers = run(
                        store,
                        rx,
                        durable,
                        durable_epoch,
                        failed,
                        held,
                        &cpu,
                        cadence,
                    );
                    note_cpu(&cpu, helpers);
                })
                .ok()
        };
        Self {
            tx: Some(tx),
            held,
            durable,
            failed,
            thread,
            path,
            cpu_micros,
        }
    }

    /// CPU time the writer's thread, and the threads that wrote parts of its writes, have used
    /// (sorting the deltas, writing and ingesting their files), as of its last write: what dedup costs off the reading thread, for the run
    /// summary. `None` before a write measured it, or where the system does not say.
    pub fn cpu_time(&self) -> Option<Duration> {
        match self.cpu_micros.load(Ordering::Relaxed) {
            CPU_UNKNOWN => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Ends the writer as dropping it does (what was queued is written and ingested first) and
    /// returns its thread's CPU time, that last write included ([`StateWriter::cpu_time`]).
    pub fn stop(mut self) -> Option<Duration> {
        self.end();
        self.cpu_time()
    }

    /// Closes the queue and waits for the thread, which ends once it has written (and
    /// ingested) what was queued.
    fn end(&mut self) {
        self.held.store(false, Ordering::Release);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The newest epoch whose delta is durable in the store.
    pub fn durable_epoch(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The error that stopped the thread, if one did (taken: reported once).
    fn check(&self) -> Result<(), StoreError> {
        let taken = self.failed.lock().ok().and_then(|mut f| f.take());
        match taken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stopped(&self) -> StoreError {
        StoreError::Foreign {
            path: self.path.clone(),
            message: "the state writer thread stopped".into(),
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.check()?;
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        if self.thread.is_none() {
            return Err(self.stopped());
        }
        let job = match tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(job)) => {
                // The caller would wait for the thread: a hold gives way (see `hold`).
                self.held.store(false, Ordering::Release);
                job
            }
            Err(TrySendError::Disconnected(_)) => {
                self.check()?;
                return Err(self.stopped());
            }
        };
        if tx.send(job).is_err() {
            self.check()?;
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Asks the thread not to write deltas until the returned hold is dropped. Best effort,
    /// never a wait on a held writer: a call that would wait for the thread (a full queue, a
    /// sync) releases the hold first, and the thread writes anyway once it has gathered
    /// `MAX_GATHERED_KEYS`. The [`StateWriter::write_soon`] hint neither releases a hold
    /// nor writes while one is held. Why: a restart's replay and first commit share the
    /// cores (two on the machines measured) with the thread's writes of the changelog the
    /// restart hands it; those deltas are durable in the WAL meanwhile, so holding them back
    /// changes only when they reach the store (and so when the WAL may drop them).
    pub fn hold(&self) -> StateHold {
        self.held.store(true, Ordering::Release);
        StateHold(self.held.clone())
    }

    /// Queues `delta` (blocks while the queue is full). Its epoch's checkpoint record must be
    /// durable already.
    pub fn queue(&self, delta: StateDelta) -> Result<(), StoreError> {
        self.send(Job::Apply(delta))
    }

    /// Asks the thread to write what it has gathered now instead of when its next write is
    /// due, and returns at once (a hint: nothing if the queue is full or a hold is on). Why: a
    /// run about to stop waits for the state writer's last write ([`StateWriter::sync`]); what
    /// was gathered before its last epoch can be written while that epoch commits, leaving only
    /// the last delta to the wait. That write, like a sync's, is made in parts on up to as
    /// many threads as the machine has cores (at most 4): the reading thread has stopped by
    /// then, and what is left of the last commit is mostly I/O.
    pub fn write_soon(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Job::WriteNow);
        }
    }

    /// Writes everything queued and gathered and makes it durable; returns the durable epoch.
    /// The write is made in parts on up to as many threads as the machine has cores (at most
    /// 4): the caller waits for it.
    pub fn sync(&self) -> Result<u64, StoreError> {
        self.held.store(false, Ordering::Release);
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Sync(reply))?;
        match answer.recv() {
            Ok(r) => r?,
            Err(RecvError) => {
                self.check()?;
                return Err(self.stopped());
            }
        }
        // A write that failed answers the sync once it has stopped the thread: its error.
        self.check()?;
        Ok(self.durable_epoch())
    }
}

/// Holds a [`StateWriter`]'s thread back from writing deltas until dropped (see
/// [`StateWriter::hold`]).
#[derive(Debug)]
pub struct StateHold(Arc<AtomicBool>);

impl Drop for StateHold {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How often a held thread looks whether its hold ended.
const HOLD_POLL: Duration = Duration::from_millis(2);

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.end();
    }
}

/// Threads a write somebody waits for is made on (`CheckpointStore::stage_packed_in_parts`):
/// the machine's cores, at most 4 (beyond that the files' ingestion and the memory bandwidth
/// gain little).
fn write_parts() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// [`StateWriter::cpu_time`] before any write has measured it.
const CPU_UNKNOWN: u64 = u64::MAX;

/// Publishes the calling thread's CPU time, plus `helpers` (its part threads'), into `cpu`
/// ([`StateWriter::cpu_time`]).
fn note_cpu(cpu: &AtomicU64, helpers: Duration) {
    if let Some(t) = crate::cpu_time::this_thread().map(|t| t + helpers) {
        cpu.store(
            u64::try_from(t.as_micros()).unwrap_or(CPU_UNKNOWN - 1),
            Ordering::Relaxed,
        );
    }
}

/// When the thread writes, and on how many threads.
#[derive(Clone)]
struct Cadence {
    /// Least time between two unasked writes.
    every: Duration,
    /// Parts of a write somebody waits for ([`write_parts`], found once per writer: it reads
    /// the process's CPU affinity and cgroup quota).
    parts_when_waited: usize,
    /// Where a delta's buffer goes once copied ([`StateWriter::start_with_buffers`]).
    buffers: Arc<KeyBuffers>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    store: CheckpointStore,
    rx: Receiver<Job>,
    durable: Arc<AtomicU64>,
    mut synced: u64,
    failed: Arc<Mutex<Option<StoreError>>>,
    held: Arc<AtomicBool>,
    cpu: &AtomicU64,
    cadence: Cadence,
) -> Duration {
    let every = cadence.every;
    let mut gathered = Gathered::default();
    let mut last_sync = Instant::now();
    // A failed write stops the thread: its error goes to `failed` (the next call on the writer
    // returns it) and a sync waiting for it is answered only after the queue is closed, so
    // no call after it can queue a delta that nothing would write.
    let mut waiting: Option<SyncSender<Result<(), StoreError>>> = None;
    let result = (|| -> Result<(), StoreError> {
        loop {
            // Wait for work; once something is gathered, at most until the next write is due
            // (while held, look again every HOLD_POLL).
            let job = if gathered.epochs.is_none() {
                match rx.recv() {
                    Ok(j) => Some(j),
                    Err(RecvError) => break,
                }
            } else {
                let wait = if held.load(Ordering::Acquire) {
                    HOLD_POLL
                } else {
                    (last_sync + every).saturating_duration_since(Instant::now())
                };
                match rx.recv_timeout(wait) {
                    Ok(j) => Some(j),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let asked = match job {
                None => false,
                // A hint: a hold keeps the writes back (`hold`).
                Some(Job::WriteNow) => !held.load(Ordering::Acquire),
                Some(Job::Apply(delta)) => {
                    // Its record is durable: what is below its watermark is never read again.
                    store.set_evict_below(delta.evict_below);
                    gathered.add(delta, &cadence.buffers);
                    false
                }
                Some(Job::Sync(reply)) => {
                    waiting = Some(reply);
                    true
                }
            };
            // Checked after every job, not only on a timeout: a queue that never empties (a
            // restart hands over many epochs at once) must not put a due write off.
            let due = !held.load(Ordering::Acquire) && last_sync.elapsed() >= every;
            if asked || due || gathered.keys.len() >= MAX_GATHERED_KEYS {
                // Somebody waits for (or will soon wait for) an asked write: on every core.
                let parts = if asked { cadence.parts_when_waited } else { 1 };
                gathered.write(&store, &mut synced, &durable, parts)?;
                last_sync = Instant::now();
                note_cpu(cpu, gathered.helper_cpu);
            }
            if let Some(reply) = waiting.take() {
                let _ = reply.send(Ok(()));
            }
        }
        // The queue closed: the writer is dropped or stopped, and its owner waits.
        gathered.write(&store, &mut synced, &durable, cadence.parts_when_waited)
    })();
    drop(rx);
    if let Err(e) = result {
        warn!(error = %e, "state writer stopped");
        if let Ok(mut f) = failed.lock() {
            *f = Some(e);
        }
    }
    if let Some(reply) = waiting {
        let _ = reply.send(Ok(()));
    }
    gathered.helper_cpu
}

/// Deltas received and not written yet: their epochs and their keys, copied in epoch order
/// into one buffer that, with the sort's, is kept from one write to the next (fresh memory
/// for each second's keys was a third of this thread's time on the VMs measured: README,
/// "Dedup's cost").
#[derive(Default)]
struct Gathered {
    /// First and newest epoch gathered; `None` when nothing is.
    epochs: Option<(u64, u64)>,
    /// The gathered deltas' keys, in epoch order.
    keys: PackedKeys,
    /// Sorts `keys` for a write, whole or in parts, its memory kept.
    scratch: PartsScratch,
    /// CPU time the threads that wrote parts of the writes so far used (the writer's own
    /// thread time does not include it; [`StateWriter::cpu_time`] adds it).
    helper_cpu: Duration,
}

impl Gathered {
    /// Takes `delta` in (its keys copied) and gives its buffer back to `buffers`.
    fn add(&mut self, delta: StateDelta, buffers: &KeyBuffers) {
        self.epochs = Some(match self.epochs {
            Some((first, last)) => (first, last.max(delta.epoch)),
            None => (delta.epoch, delta.epoch),
        });
        self.keys.extend_from(&delta.inserts);
        buffers.give(delta.inserts);
    }

    /// Writes and ingests everything gathered (the keys at or above the newest watermark
    /// received) in up to `parts` files written in parallel, then publishes the newest epoch
    /// among them as durable.
    fn write(
        &mut self,
        store: &CheckpointStore,
        synced: &mut u64,
        durable: &AtomicU64,
        parts: usize,
    ) -> Result<(), StoreError> {
        let Some((first, last)) = self.epochs else {
            return Ok(());
        };
        let floor = store.evict_below.load(Ordering::Acquire);
        // One part (`stage_packed`, whole) unless `parts` is more and the keys spread.
        let staged = store.stage_packed_in_parts(
            first,
            last,
            &self.keys,
            floor,
            &mut self.scratch,
            parts,
        )?;
        fault::hit(CrashPoint::AfterStateWrite);
        debug!(epochs = %format!("{first}..={last}"), keys = staged.entries(), files = staged.files(), "state deltas staged (not ingested)");
        self.helper_cpu += staged.helper_cpu();
        let n = staged.ingest(store)?;
        store.note_state_ingested(last)?;
        fault::hit(CrashPoint::AfterStateSync);
        self.epochs = None;
        self.keys.clear_keeping_memory();
        *synced = (*synced).max(last);
        durable.store(*synced, Ordering::Release);
        debug!(epoch = *synced, keys = n, "state synced");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint makes the writer write what it gathered without waiting for its next due
    /// write (here an hour away) or a sync.
    #[test]
    fn write_soon_writes_what_was_gathered_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            CheckpointStore::open(dir.path(), super::super::StoreOptions::default()).unwrap();
        let writer =
            StateWriter::start_writing_every(store, 0, Duration::from_secs(3600), Arc::default());
        let mut inserts = PackedKeys::default();
        inserts.push(b"k", 1);
        writer
            .queue(StateDelta {
                epoch: 1,
                inserts,
                evict_below: None,
            })
            .unwrap();
        // Held: the hint neither releases the hold nor writes (a wrong write would come within
        // milliseconds; this cannot fail when the hold is kept).
        let hold = writer.hold();
        writer.write_soon();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            writer.durable_epoch(),
            0,
            "a hint wrote while a hold was on"
        );
        assert!(
            writer.held.load(Ordering::Acquire),
            "the hint released the hold"
        );
        drop(hold);
        writer.write_soon();
        // A liveness bound, not a timing: without the hint nothing is written for an hour.
        let deadline = Instant::now() + Duration::from_secs(60);
        while writer.durable_epoch() < 1 {
            assert!(Instant::now() < deadline, "the hinted write never came");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
