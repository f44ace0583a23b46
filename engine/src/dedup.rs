//! Watermark deduplication, as pure logic with no I/O (ARCHITECTURE.md, "Deduplication and
//! late data").
//!
//! Two parts with different rules about time:
//! - [`DedupState`] decides each record: `Late` if its event time is below the watermark in
//!   effect for the epoch, `Duplicate` if its key is in state, else `Accept` (and the key enters
//!   state). It never reads a clock: its verdicts are a pure function of (state, watermark,
//!   batch clocks, records in order), which is what makes replaying an epoch from the WAL safe.
//!   The batch clock is the wall clock `log_records` read and logged in the WAL before the
//!   batch ([`DedupState::set_batch_clock`]); an event time beyond it plus the allowed skew is
//!   refused ([`DedupState::in_future`]) before it can move the watermark.
//! - [`WatermarkTracker`] computes the NEXT watermark at a seal from per-partition maximum event
//!   times and wall-clock idleness. It is not deterministic (idleness is wall-clock), so its
//!   result is recorded in the seal and the checkpoint and never recomputed on replay.
//!
//! Invariants: the watermark never decreases ([`DedupState::advance`] keeps the larger); each
//! key is in state at most once; after `advance(w)`, no key below `w` remains in state.
//!
//! **Eviction is lazy.** The state is the entries in memory at or above the watermark: an
//! advance changes the watermark only, and every read (a check, a lookup of the part still
//! loading, [`DedupState::entries`], [`DedupState::len`]) skips an entry below it. A check that
//! finds its key's entry below the watermark overwrites its time (the key was evicted, so it
//! is accepted again), a new key takes the slot of the first evicted entry on its probe path
//! ([`KeyTable::insert_unless`]), and the entries below the watermark leave memory in one pass
//! only when the table is full and would otherwise grow ([`DedupState::sweep_if_full`]). Why: an eager
//! eviction scanned the whole table at every seal once keys fell out of the window. In a
//! 13.5M-record run with 3.6M keys in state at 200 ms that scan was 19% of the process's CPU
//! samples (`perf`, 41% of the reading thread's), and the bench's 2M-record runs never
//! evicted, so they did not show it.
//!
//! **Restoring state after a crash** ([`DedupState::load`], [`DedupState::load_changelog`]).
//! The checkpoint store holds the state of its record's `state_epoch` m, plus possibly some
//! prefix of the later epochs' deltas (ingested ahead of any record; see `checkpoint/src/store/mod.rs`), and
//! the WAL holds the deltas of epochs m+1 ..= c. The state of checkpoint c is then exactly
//! `{(k, t) in store ∪ deltas : t >= w_c}`, whatever prefix of the later deltas the store kept:
//! every key an epoch adds has `t >=` the watermark then in effect, so no eviction before it can
//! remove it; an eviction removes everything below a watermark, so what it removes is below
//! `w_c` anyway; and a key is accepted again only after its earlier entry was evicted, i.e.
//! after that entry fell below some watermark `<= w_c`, so after the filter each key is there
//! once. (Property-tested below against a model with a crash at every point.)
//!
//! **A state still loading** ([`DedupState::loading`]). A restart with millions of keys would
//! wait seconds for the store's entries to reach memory before its first verdict. Instead the
//! state starts with the keys recovery has at hand (the WAL's changelog) in memory and the rest
//! behind [`ColdKeys`]: the store, read in the background into a map of its own, and answering
//! point lookups meanwhile. The state is then `memory ∪ {(k, t) in cold : t >= w}` for the
//! current watermark `w`, and a check asks memory first, then the cold part (in batches:
//! [`DedupState::prefetch`]). Exactness: a key accepted while loading is in neither part
//! at or above `w` (that is what accepting means), so memory never holds a key the cold part
//! holds at or above `w`; an eviction takes the keys below `w` out of memory's state (every
//! read skips them), and the cold part's are ignored by every later lookup since `w` only
//! rises. When the load ends, memory's entries at or above the current `w` are added over the
//! loaded map's (whose entries below `w` every read skips alike) (a key in both has
//! the same time, from the changelog a store may already hold): the same set, now in one map.
//! So no verdict depends on how far the load has come (property-tested below).
//!
//! Event times are microseconds since the Unix epoch.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::dedup_key::DedupKey;
use crate::key_table::KeyTable;

/// FxHash (rustc's hasher) with a final mix: dedup keys are not attacker-chosen hash-flooding input in a
/// single-tenant pipeline, and SipHash cost ~40% of a lookup in the `records` bench.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(FX_SEED);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(FX_SEED);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(FX_SEED);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weak, and hashbrown picks buckets by low bits:
        // finish with MurmurHash3's fmix64 so every input bit reaches them.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The hash of a dedup key (FxHash with the final mix): the state's table places keys by it
/// ([`crate::key_table`]), and a worker's record of which partition accepted a key
/// ([`crate::partition_dedup`]) keys by it.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(key)
}

/// A record's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// New key, on time: written.
    Accept,
    /// Its key is in state: dropped and counted.
    Duplicate,
    /// Its event time is below the watermark: dropped (or dead-lettered) and counted.
    Late,
}

/// `(key, event_time)` pairs packed in one buffer: the keys an epoch added (its state delta,
/// logged before its seal and applied to the store after its checkpoint), and the chunks a
/// restart loads state in.
pub use tidemark_checkpoint::store::PackedKeys;

/// The part of a [`DedupState`] not in memory yet: a restart's load of the store, still
/// running (see the module documentation). Implemented over the checkpoint store by recovery,
/// over a model in tests.
pub trait ColdKeys: Send {
    /// The event time of each of `keys` in the not-yet-loaded part (`None`: not there; a time
    /// below the watermark counts as not there).
    fn lookup(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<i64>>, ColdError>;
    /// The not-yet-loaded part as a state of its own, once its load has ended (`None` while
    /// it runs). Called until it returns a state, not after.
    fn poll_loaded(&mut self) -> Result<Option<DedupState>, ColdError>;
}

/// A lookup in, or the load of, the not-yet-loaded part of the state failed: no verdict can be
/// given (the message names the store and what failed).
#[derive(Debug, thiserror::Error)]
#[error("the dedup state still loading cannot be read: {0}")]
pub struct ColdError(pub String);

/// The not-yet-loaded part and what was looked up in it for the current batch.
struct Cold {
    keys: Box<dyn ColdKeys>,
    /// Answers of the last [`DedupState::prefetch`]: key -> its time in the cold part.
    probed: HashMap<DedupKey, Option<i64>, BuildHasherDefault<FxHasher>>,
}

/// Entries [`insert_warmed`] takes at a time.
const WARM_CHUNK: usize = 32;

/// Hands `entries` to `insert` in chunks, each chunk's home slots in `table` prefetched first
/// ([`KeyTable::warm`]): those fetches depend on nothing but their key, so their cache misses
/// overlap, and the inserts find their slots cached. For bulk inserts (a changelog,
/// the merge of a loaded part): ~0.5-1M inserts one by one into a table of millions of keys
/// paid a memory latency each.
fn insert_warmed<'k>(
    table: &mut KeyTable,
    entries: impl Iterator<Item = (&'k [u8], i64)>,
    mut insert: impl FnMut(&mut KeyTable, &[u8], i64),
) {
    let mut chunk: Vec<(&[u8], i64)> = Vec::with_capacity(WARM_CHUNK);
    let mut entries = entries.peekable();
    while entries.peek().is_some() {
        chunk.clear();
        chunk.extend(entries.by_ref().take(WARM_CHUNK));
        table.warm(chunk.iter().map(|(k, _)| *k));
        for (k, t) in &chunk {
            insert(table, k, *t);
        }
    }
}

/// The test every read of the state applies to an entry's time: at or above `watermark`
/// it is state; below it the key is evicted, whether or not a sweep removed its entry yet.
/// (The workers' `KeyOrigins` apply the same test to their floor.)
pub fn at_or_above(watermark: Option<i64>) -> impl Fn(i64) -> bool + Copy {
    move |t| watermark.is_none_or(|w| t >= w)
}

/// The keys a table must have room for so that `expected` keys in state never make it grow:
/// a third more, for the evicted keys held until a sweep. A sweep of a table whose live keys
/// are at most `expected` then frees at least a quarter of it, so it never grows
/// ([`DedupState::sweep_if_full`]). (~57 bytes of table per expected key.)
pub fn table_room(expected: usize) -> usize {
    // 4/3 of `expected`, rounded up: a sweep at `len * 4 <= max_len * 3` keeps the table.
    expected.saturating_add(expected.div_ceil(3))
}

/// The dedup state: keys with their event times, and the watermark in effect.
#[derive(Default)]
pub struct DedupState {
    keys: KeyTable,
    /// The part of the state still loading (see the module documentation); `None` once loaded.
    cold: Option<Cold>,
    watermark: Option<i64>,
    /// No entry the table holds, evicted ones not swept yet included, has an event time below
    /// this (a lower bound, exact after each sweep): a full table with nothing below the
    /// watermark grows without a sweep, and [`DedupState::len`] counts without a pass. Every
    /// insert, load and merge lowers it.
    oldest: i64,
    /// Keys accepted since the last [`DedupState::take_inserted`], in order.
    inserted: PackedKeys,
    /// Wall clock (Unix ms) of the batch being decided, as logged in the WAL.
    batch_clock_ms: Option<i64>,
    /// Keys the table keeps room for ([`DedupState::expect_keys`]); a loaded part taken over
    /// is given that room too.
    expected_keys: usize,
    /// Time spent sweeping evicted entries out of memory ([`DedupState::sweep_time`]).
    sweeping: Duration,
    /// Where the state writer gives emptied delta buffers back
    /// ([`DedupState::take_key_buffers_from`]); until one runs, a pool nobody fills, whose
    /// `take` allocates.
    key_buffers: std::sync::Arc<tidemark_checkpoint::store::KeyBuffers>,
}

impl std::fmt::Debug for DedupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupState")
            .field("held", &self.keys.len())
            .field("loading", &self.cold.is_some())
            .field("watermark", &self.watermark)
            .finish()
    }
}

impl DedupState {
    /// Empty state with room for `capacity` keys and `watermark` in effect: the start of a
    /// load from a checkpoint ([`DedupState::load`] each entry).
    pub fn with_capacity(capacity: usize, watermark: Option<i64>) -> Self {
        Self {
            keys: KeyTable::with_capacity(capacity),
            cold: None,
            watermark,
            oldest: i64::MAX,
            inserted: PackedKeys::default(),
            batch_clock_ms: None,
            expected_keys: 0,
            sweeping: Duration::ZERO,
            key_buffers: std::sync::Arc::default(),
        }
    }

    /// A state still loading: `cold` holds what is not in memory yet (see the module
    /// documentation); the changelog goes in with [`DedupState::load_changelog`] as usual.
    pub fn loading(cold: Box<dyn ColdKeys>, watermark: Option<i64>) -> Self {
        let mut state = Self::with_capacity(0, watermark);
        state.cold = Some(Cold {
            keys: cold,
            probed: HashMap::default(),
        });
        state
    }

    /// True while part of the state is still loading.
    pub fn is_loading(&self) -> bool {
        self.cold.is_some()
    }

    /// Looks up in the part still loading, in one batch, the `keys` memory does not hold, so
    /// the checks that follow need no lookup each. Takes in the loaded part first if its load
    /// has ended. Nothing to do once loaded.
    pub fn prefetch<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<(), ColdError> {
        if !self.poll_loaded()? {
            return Ok(());
        }
        let (keys_in_memory, live) = (&self.keys, at_or_above(self.watermark));
        let Some(cold) = self.cold.as_mut() else {
            return Ok(());
        };
        cold.probed.clear();
        let missing: Vec<&[u8]> = keys
            .into_iter()
            .filter(|k| keys_in_memory.get(k).is_none_or(|t| !live(t)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let times = cold.keys.lookup(&missing)?;
        for (k, t) in missing.into_iter().zip(times) {
            cold.probed.insert(DedupKey::from(k), t);
        }
        Ok(())
    }

    /// Takes in the loaded part if its load has ended; true while still loading.
    fn poll_loaded(&mut self) -> Result<bool, ColdError> {
        let Some(cold) = self.cold.as_mut() else {
            return Ok(false);
        };
        let Some(mut loaded) = cold.keys.poll_loaded()? else {
            return Ok(true);
        };
        // Memory's entries at or above the current watermark over the loaded part's (the
        // merged state's reads skip what is below it, from either part).
        self.cold = None;
        let memory = std::mem::take(&mut self.keys);
        // The merged table is sized once, for both parts and at least the expected keys.
        let room = (memory.len() + loaded.keys.len()).max(table_room(self.expected_keys));
        if memory.len() <= loaded.keys.len() {
            // The growth this thread paid: memory's so far and this merge's, not the loading
            // thread's.
            let (paid, loader_paid) = (memory.growth_time(), loaded.keys.growth_time());
            loaded.keys.reserve(room - loaded.keys.len());
            let (oldest, live) = (&mut loaded.oldest, at_or_above(self.watermark));
            // Memory's evicted entries are not state: they must not cover the loaded part's.
            // (By the module documentation's argument memory's entry for a key is never older
            // than the loaded part's, so this cannot change the merge; it keeps the merge from
            // resting on that argument, and a mutation of it survives every test.)
            let memory_live = memory.iter().filter(|(_, t)| live(*t));
            insert_warmed(&mut loaded.keys, memory_live, |table, k, t| {
                *oldest = (*oldest).min(t);
                table.insert(k, t);
            });
            let merge = loaded.keys.growth_time().saturating_sub(loader_paid);
            loaded.keys.set_growth_time(paid + merge);
            self.keys = loaded.keys;
        } else {
            // Fewer inserts the other way round (memory keeps its entries where both hold a
            // key): `self.oldest` already bounds memory's entries.
            let mut memory = memory;
            memory.reserve(room - memory.len());
            let live = at_or_above(self.watermark);
            // The loaded part's entries in state (its table may hold evicted ones too) go in
            // unless memory holds the key in state; an evicted entry of memory's gives way.
            let loaded_live = loaded.keys.iter().filter(|(_, t)| live(*t));
            insert_warmed(&mut memory, loaded_live, |table, k, t| {
                table.insert_unless(k, t, live);
            });
            self.keys = memory;
        }
        self.oldest = self.oldest.min(loaded.oldest);
        Ok(false)
    }

    /// The cold part's time for `key` (a lookup unless prefetched), `None` when not there at
    /// or above the watermark.
    fn cold_time(&mut self, key: &[u8]) -> Result<Option<i64>, ColdError> {
        let Some(cold) = self.cold.as_mut() else {
            return Ok(None);
        };
        let t = match cold.probed.get(key) {
            Some(t) => *t,
            None => cold.keys.lookup(&[key])?.into_iter().next().flatten(),
        };
        Ok(t.filter(|t| at_or_above(self.watermark)(*t)))
    }

    /// Sets the wall clock (Unix ms) of the batch about to be decided: the value logged in the
    /// WAL before the batch (`None` for records logged by a build that logged no clock: then
    /// no event time counts as in the future).
    pub fn set_batch_clock(&mut self, wall_clock_ms: Option<i64>) {
        self.batch_clock_ms = wall_clock_ms;
    }

    /// The batch clock in effect.
    pub fn batch_clock(&self) -> Option<i64> {
        self.batch_clock_ms
    }

    /// True when `event_time` (micros) is more than `max_skew_micros` after the batch clock:
    /// such a record must not reach the watermark (one far-future event time would freeze it).
    pub fn in_future(&self, event_time: i64, max_skew_micros: i64) -> bool {
        self.batch_clock_ms
            .is_some_and(|ms| event_time > ms.saturating_mul(1000).saturating_add(max_skew_micros))
    }

    /// State loaded from a checkpoint: `entries` and the watermark in effect.
    pub fn from_entries<K: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (K, i64)>,
        watermark: Option<i64>,
    ) -> Self {
        let entries = entries.into_iter();
        let mut state = Self::with_capacity(entries.size_hint().0, watermark);
        for (k, t) in entries {
            state.load(k.as_ref(), t);
        }
        state
    }

    /// Adds one checkpointed entry (it is in the store already, so it is not recorded as
    /// inserted). Entries below the watermark are not state (their eviction was not
    /// persisted yet): they are skipped.
    pub fn load(&mut self, key: &[u8], event_time: i64) {
        if self.is_live(event_time) {
            self.keys.insert(key, event_time);
            self.oldest = self.oldest.min(event_time);
        }
    }

    /// Adds an epoch's delta read back from the WAL's changelog (see the module documentation):
    /// like [`DedupState::load`], the keys at or above the watermark, not recorded as inserted
    /// (the changelog is already durable; the store gets it from there).
    pub fn load_changelog(&mut self, delta: &PackedKeys) {
        // See `insert_warmed`: a million inserts one by one pay one memory latency after
        // another.
        let (live, oldest) = (at_or_above(self.watermark), &mut self.oldest);
        insert_warmed(&mut self.keys, delta.iter(), |table, k, t| {
            if live(t) {
                table.insert(k, t);
                *oldest = (*oldest).min(t);
            }
        });
    }

    /// The event time `key` has in memory, if it is there (whatever the watermark): for a
    /// loaded state answering lookups as the cold part of another ([`ColdKeys::lookup`]).
    pub fn time_of(&self, key: &[u8]) -> Option<i64> {
        self.keys.get(key)
    }

    /// Makes room in memory for `additional` more keys at once: recovery, before loading a
    /// changelog of known size (one allocation instead of moving everything at each growth;
    /// with the std map this measured ~0.3 s for 1.1M keys).
    pub fn reserve(&mut self, additional: usize) {
        self.keys.reserve(additional);
    }

    /// [`DedupState::reserve`] with the table's pages faulted in at once on two threads:
    /// recovery, which fills the table from the changelog and the replay right after, on one
    /// thread that would otherwise wait for each fresh page in turn.
    pub fn reserve_faulted_in(&mut self, additional: usize) {
        self.keys.reserve_faulted_in(additional);
    }

    /// Keeps room in the table for `keys` keys (`dedup.expected_keys`) and the evicted ones a
    /// sweep removes ([`table_room`]): a state that fills to its expected size never stops the
    /// reading thread to grow, also once its window slides. Changes no verdict.
    /// While a part still loads, memory's table is left as it is: the merge that takes the
    /// loaded part over gives the room (and a load sized for it, `load_dedup_state`, moves
    /// nothing then), where sizing memory's now would fault in pages for a table the merge
    /// may drop.
    pub fn expect_keys(&mut self, keys: usize) {
        self.expected_keys = keys;
        if self.cold.is_none() {
            self.keys
                .reserve(table_room(keys).saturating_sub(self.keys.len()));
        }
    }

    /// The watermark in effect.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Time the state's key table has spent growing on the thread that owns the state
    /// ([`KeyTable::growth_time`]; a part loaded in the background brings none of its loading
    /// thread's).
    pub fn growth_time(&self) -> Duration {
        self.keys.growth_time()
    }

    /// Time this state has spent sweeping evicted entries out of memory (the growth a sweep
    /// may end with is in [`DedupState::growth_time`]): what lazy eviction costs the thread
    /// that decides.
    pub fn sweep_time(&self) -> Duration {
        self.sweeping
    }

    /// Keys in state (in memory: while loading, the keys not loaded yet are not counted).
    /// A pass over the table when evicted entries may still be held (summaries, recovery,
    /// tests); [`DedupState::held`] is the O(1) figure for every checkpoint's metrics.
    pub fn len(&self) -> usize {
        match self.watermark {
            Some(w) if self.oldest < w => self.keys.count_times(at_or_above(Some(w))),
            _ => self.keys.len(),
        }
    }

    /// Entries the state's table holds in memory: the keys in state plus evicted ones the
    /// next sweep removes (module documentation). What the memory holds, in O(1).
    pub fn held(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is in state.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() || self.len() == 0
    }

    /// Prefetches the home slot of each of `keys` without deciding or changing anything, so
    /// that the checks that follow find it in the CPU's cache. Why: with millions of keys each
    /// check misses the cache, and checks one by one pay one memory latency after another;
    /// these fetches depend on nothing but their key, so their misses overlap. (A hint only:
    /// no verdict depends on it; a long key's bytes, kept apart, are not fetched.)
    pub fn warm<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        self.keys.warm(keys);
    }

    /// Decides one record. Fails only while the state is loading, when the part not loaded
    /// yet cannot be read.
    pub fn check(&mut self, key: &[u8], event_time: i64) -> Result<Verdict, ColdError> {
        if self.watermark.is_some_and(|w| event_time < w) {
            return Ok(Verdict::Late);
        }
        // While loading, a key memory does not hold may be in the part not loaded yet (module
        // documentation); otherwise memory decides alone.
        if self.cold.is_some() && self.live_time(key).is_none() && self.cold_time(key)?.is_some() {
            return Ok(Verdict::Duplicate);
        }
        self.sweep_if_full();
        if !self
            .keys
            .insert_unless(key, event_time, at_or_above(self.watermark))
        {
            return Ok(Verdict::Duplicate);
        }
        self.inserted.push(key, event_time);
        self.oldest = self.oldest.min(event_time);
        self.fault_in_growth_if_coming();
        Ok(Verdict::Accept)
    }

    /// Has the key table fault its next growth's memory in ahead, on another thread
    /// ([`KeyTable::fault_in_next_growth`]), once it nears that growth with no entry below
    /// the watermark: no sweep can free room then, so the growth is coming. With evicted
    /// entries in the table, a sweep may free the room instead, and memory faulted in for a
    /// growth that never comes would stay with the table (half its size again).
    fn fault_in_growth_if_coming(&mut self) {
        if self.keys.nearing_growth() && self.watermark.is_none_or(|w| self.oldest >= w) {
            self.keys.fault_in_next_growth();
        }
    }

    /// Moves the watermark to `to` (if higher), which evicts every key below it: they stop
    /// being state at once, and their entries leave memory at the next sweep (module
    /// documentation). Returns the watermark now in effect. (While loading, the part not
    /// loaded yet is filtered by the watermark at each lookup and when it is taken in.)
    pub fn advance(&mut self, to: Option<i64>) -> Option<i64> {
        self.watermark = match (self.watermark, to) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.watermark
    }

    /// True when an entry of time `t` is state: at or above the watermark in effect.
    fn is_live(&self, t: i64) -> bool {
        at_or_above(self.watermark)(t)
    }

    /// The time `key` has in state in memory (an entry below the watermark is not state).
    fn live_time(&self, key: &[u8]) -> Option<i64> {
        self.keys.get(key).filter(|t| self.is_live(*t))
    }

    /// Removes the entries below the watermark from memory when the table is full and would
    /// otherwise grow for the next key, and grows it now if that freed less than a quarter of
    /// its room: a sweep then frees room for at least a quarter of the table's keys, so the
    /// scan costs at most ~5 slots per key inserted (where an eviction at each seal scanned
    /// the whole table per epoch). Changes no verdict: only entries no read counts are removed.
    fn sweep_if_full(&mut self) {
        let Some(w) = self.watermark else {
            return;
        };
        if self.oldest >= w || !self.keys.is_full() {
            return;
        }
        let started = Instant::now();
        let (mut oldest, live) = (i64::MAX, at_or_above(Some(w)));
        self.keys.retain(|t| {
            let keep = live(t);
            if keep {
                oldest = oldest.min(t);
            }
            keep
        });
        self.oldest = oldest;
        self.sweeping += started.elapsed();
        if self.keys.len() * 4 > self.keys.max_len() * 3 {
            self.keys.reserve(self.keys.len() / 2);
        }
    }

    /// The keys accepted since the last call that are still at or above the watermark: what
    /// the next checkpoint must insert.
    ///
    /// The next epoch's buffer starts with room for an eighth more than this one took: an
    /// epoch's keys (~1M at 1 s) then go in without the buffer doubling, each doubling a copy
    /// into fresh memory (perf: most of the deciding thread's page faults). Where the state
    /// writer runs, that buffer is one it gave back ([`DedupState::take_key_buffers_from`]):
    /// memory kept, not freed and faulted in again each epoch (a given-back buffer keeps at
    /// most twice its last delta's fill, so one big epoch does not size them for good).
    pub fn take_inserted(&mut self) -> PackedKeys {
        let (keys, bytes) = (self.inserted.len(), self.inserted.key_bytes());
        let (keys, bytes) = (keys + keys / 8, bytes + bytes / 8);
        let next = self.key_buffers.take(keys, bytes);
        std::mem::replace(&mut self.inserted, next).at_or_above(self.watermark)
    }

    /// Takes the next epochs' key buffers from `buffers`, where the state writer hands each
    /// delta's buffer back once copied
    /// ([`StateWriter::start_with_buffers`](tidemark_checkpoint::store::StateWriter::start_with_buffers)),
    /// so epoch buffers are reused instead of faulted in again.
    pub fn take_key_buffers_from(
        &mut self,
        buffers: std::sync::Arc<tidemark_checkpoint::store::KeyBuffers>,
    ) {
        self.key_buffers = buffers;
    }

    /// Gives back what [`DedupState::take_inserted`] took, when its caller does not checkpoint
    /// it after all (a redo whose replayed delta is not the one its WAL logged): the next
    /// checkpoint inserts it as if it had never been taken. Keys accepted since are kept after it.
    pub fn restore_inserted(&mut self, mut keys: PackedKeys) {
        keys.extend_from(&std::mem::take(&mut self.inserted));
        self.inserted = keys;
    }

    /// Waits for the part still loading and takes it in (tests and tools: [`DedupState::entries`]
    /// then lists the whole state).
    pub fn finish_loading(&mut self) -> Result<(), ColdError> {
        while self.poll_loaded()? {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Every `(key, event_time)` in memory, in no order (tests and tools; while loading, the
    /// part not loaded yet is not listed: [`DedupState::finish_loading`] first).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], i64)> + '_ {
        self.keys.iter().filter(|(_, t)| self.is_live(*t))
    }

    /// [`DedupState::entries`] owned and sorted: two states compared in tests.
    #[cfg(test)]
    pub(crate) fn sorted_entries(&self) -> Vec<(Vec<u8>, i64)> {
        let mut entries: Vec<(Vec<u8>, i64)> =
            self.entries().map(|(k, t)| (k.to_vec(), t)).collect();
        entries.sort();
        entries
    }
}

/// Per-partition progress of event time, for the next watermark.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    lateness_micros: i64,
    idle_timeout: Duration,
    /// Few entries (one per assigned partition): a linear scan beats hashing, and needs no
    /// allocation per record.
    partitions: Vec<((String, i32), PartitionTime)>,
    /// Index of the last partition observed (records come in runs of one partition).
    last: usize,
}

#[derive(Debug, Clone, Copy)]
struct PartitionTime {
    max_event: Option<i64>,
    last_seen: Instant,
}

impl WatermarkTracker {
    /// A tracker for `partitions`, all active from `now` with no event time seen yet (so none
    /// can advance the watermark until each has a record or goes idle).
    pub fn new(
        partitions: impl IntoIterator<Item = (String, i32)>,
        lateness_micros: i64,
        idle_timeout: Duration,
        now: Instant,
    ) -> Self {
        let mut t = Self {
            lateness_micros,
            idle_timeout,
            partitions: Vec::new(),
            last: 0,
        };
        t.register(partitions, now);
        t
    }

    /// Adds `partitions` not yet known, active from `now` with no event time seen (the
    /// source's full assignment, known once it connects).
    pub fn register(&mut self, partitions: impl IntoIterator<Item = (String, i32)>, now: Instant) {
        for p in partitions {
            if !self.partitions.iter().any(|(q, _)| *q == p) {
                self.partitions.push((
                    p,
                    PartitionTime {
                        max_event: None,
                        last_seen: now,
                    },
                ));
            }
        }
    }

    /// Notes a record of `partition` with `event_time` seen at `now`.
    pub fn observe(&mut self, topic: &str, partition: i32, event_time: i64, now: Instant) {
        let hit = |(q, _): &((String, i32), PartitionTime)| q.1 == partition && q.0 == topic;
        let i = match self.partitions.get(self.last) {
            Some(e) if hit(e) => self.last,
            _ => match self.partitions.iter().position(hit) {
                Some(i) => i,
                None => {
                    self.partitions.push((
                        (topic.to_string(), partition),
                        PartitionTime {
                            max_event: None,
                            last_seen: now,
                        },
                    ));
                    self.partitions.len() - 1
                }
            },
        };
        self.last = i;
        let slot = &mut self.partitions[i].1;
        slot.last_seen = now;
        slot.max_event = Some(slot.max_event.map_or(event_time, |m| m.max(event_time)));
    }

    /// The watermark the partitions allow at `now`: min over active partitions of their max
    /// event time, minus the allowed lateness; `None` while an active partition has seen
    /// nothing or no partition is active. (The caller keeps it monotonic.)
    pub fn candidate(&self, now: Instant) -> Option<i64> {
        let mut min: Option<i64> = None;
        for (_, p) in &self.partitions {
            if now.saturating_duration_since(p.last_seen) > self.idle_timeout {
                continue;
            }
            let m = p.max_event?;
            min = Some(min.map_or(m, |x: i64| x.min(m)));
        }
        min.map(|m| m.saturating_sub(self.lateness_micros))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_event_times_beyond_the_batch_clock_plus_skew_are_in_the_future() {
        let mut s = DedupState::default();
        assert!(
            !s.in_future(i64::MAX, 0),
            "no clock logged: never in the future"
        );
        s.set_batch_clock(Some(1_000));
        assert_eq!(s.batch_clock(), Some(1_000));
        assert!(!s.in_future(1_000_000 + 5, 5));
        assert!(s.in_future(1_000_000 + 6, 5));
        assert!(!s.in_future(i64::MIN, 0));
        s.set_batch_clock(Some(i64::MAX));
        assert!(!s.in_future(i64::MAX, i64::MAX), "saturates, never wraps");
    }

    /// The buffer of an epoch's inserted keys starts with room for the last epoch's and an
    /// eighth more, so a like epoch never grows it.
    #[test]
    fn the_next_epochs_inserted_keys_have_room_from_the_start() {
        let mut s = DedupState::default();
        for i in 0..800u32 {
            s.check(format!("k{i:04}").as_bytes(), 100).unwrap();
        }
        assert_eq!(s.take_inserted().len(), 800);
        let (keys, bytes) = s.inserted.capacity();
        assert!(
            keys >= 900 && bytes >= 5 * 900,
            "room for {keys} keys, {bytes} bytes"
        );
        assert!(s.inserted.is_empty());
    }

    /// Keys taken for a checkpoint that does not happen come back ahead of those accepted
    /// since, in order: the next take gives them all, as if the first had never been.
    #[test]
    fn inserted_keys_given_back_come_first_in_the_next_take() {
        let mut s = DedupState::default();
        for k in ["a", "b", "c"] {
            s.check(k.as_bytes(), 100).unwrap();
        }
        let taken = s.take_inserted();
        s.check(b"d", 100).unwrap();
        s.restore_inserted(taken);
        let all: Vec<(Vec<u8>, i64)> = s
            .take_inserted()
            .iter()
            .map(|(k, t)| (k.to_vec(), t))
            .collect();
        let want: Vec<(Vec<u8>, i64)> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| (k.as_bytes().to_vec(), 100))
            .collect();
        assert_eq!(all, want);
        assert!(s.take_inserted().is_empty());
    }

    #[test]
    fn duplicates_and_late_records_are_told_apart() {
        let mut s = DedupState::default();
        assert_eq!(s.check(b"a", 100).unwrap(), Verdict::Accept);
        assert_eq!(s.check(b"a", 100).unwrap(), Verdict::Duplicate);
        assert_eq!(s.check(b"a", 500).unwrap(), Verdict::Duplicate);
        s.advance(Some(200));
        assert_eq!(s.check(b"b", 199).unwrap(), Verdict::Late);
        assert_eq!(
            s.check(b"a", 250).unwrap(),
            Verdict::Accept,
            "a was evicted below 200"
        );
        assert_eq!(s.advance(Some(50)), Some(200), "never backwards");
    }

    #[test]
    fn an_evicted_key_still_in_memory_is_not_state_and_is_accepted_again_in_place() {
        let mut s = DedupState::default();
        assert_eq!(s.check(b"a", 100).unwrap(), Verdict::Accept);
        assert_eq!(s.check(b"b", 300).unwrap(), Verdict::Accept);
        s.advance(Some(200));
        // Lazy: the entry is held until a sweep, but no read counts it.
        assert_eq!((s.held(), s.len()), (2, 1));
        assert_eq!(s.sorted_entries(), vec![(b"b".to_vec(), 300)]);
        assert!(!s.is_empty());
        assert_eq!(s.check(b"a", 250).unwrap(), Verdict::Accept);
        assert_eq!(
            s.held(),
            2,
            "the evicted entry took the new time, no second entry"
        );
        assert_eq!(s.check(b"a", 260).unwrap(), Verdict::Duplicate);
        assert_eq!(
            s.take_inserted().len(),
            2,
            "b, and a at 250 (its entry at 100 is below the watermark)"
        );
        s.advance(Some(400));
        assert!(s.is_empty());
        assert_eq!(s.held(), 2);
    }

    /// Evicted entries leave memory when the table is full, so a state whose window fits the
    /// table never makes it grow, however many keys pass through it.
    #[test]
    fn a_sliding_window_of_keys_sweeps_and_never_grows_the_table() {
        let mut s = DedupState::default();
        // At most 1,000 keys in state: the last nine epochs' after each advance, and the next
        // epoch's 100 before it. (Sized for exactly 1,000, a sweep at each epoch's start
        // would free a tenth of the table, and it would grow: `table_room`'s margin is what
        // keeps it.)
        s.expect_keys(1_000);
        let (room, grown) = (s.keys.max_len(), s.growth_time());
        let mut swept = false;
        for epoch in 0..200i64 {
            for i in 0..100i64 {
                let key = (epoch * 100 + i).to_le_bytes();
                assert_eq!(s.check(&key, epoch * 100 + i).unwrap(), Verdict::Accept);
            }
            s.advance(Some((epoch - 8) * 100));
            assert_eq!(s.len(), (epoch.min(8) as usize + 1) * 100, "epoch {epoch}");
            assert!(s.held() <= room, "epoch {epoch}: {} held", s.held());
            swept |= s.held() < (epoch as usize + 1) * 100 && epoch > 20;
            // An old key comes back: it is late, not a duplicate.
            if epoch >= 9 {
                assert_eq!(s.check(&0i64.to_le_bytes(), 0).unwrap(), Verdict::Late);
            }
        }
        assert!(swept);
        assert_eq!(s.keys.max_len(), room, "the table never grew");
        assert_eq!(s.growth_time(), grown);
        let mut expected: Vec<(Vec<u8>, i64)> = (19_100..20_000i64)
            .map(|t| (t.to_le_bytes().to_vec(), t))
            .collect();
        expected.sort();
        assert_eq!(s.sorted_entries(), expected);
    }

    /// A state whose table nears its growth with no entry below the watermark has the
    /// growth's memory faulted in ahead, before the growth; one whose table holds an evicted
    /// entry (a sweep may free room instead) does not, up to the sweep.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_growth_is_faulted_in_ahead_only_when_no_sweep_can_free_room() {
        // Over 2 MB of slots: a mapping, which is what is faulted in ahead.
        let mut s = DedupState::with_capacity(100_000, Some(0));
        let room = s.keys.max_len();
        let mut i = 1u64;
        while !s.keys.growth_faulted_in_ahead() {
            assert_eq!(
                s.check(&i.to_be_bytes(), i as i64).unwrap(),
                Verdict::Accept
            );
            assert_eq!(
                s.keys.max_len(),
                room,
                "grew before its memory was faulted in"
            );
            i += 1;
        }
        let mut s = DedupState::with_capacity(100_000, Some(0));
        s.check(b"evicted", 1).unwrap();
        s.advance(Some(2));
        let mut i = 2u64;
        while s.keys.len() < s.keys.max_len() {
            s.check(&i.to_be_bytes(), i as i64).unwrap();
            assert!(
                !s.keys.growth_faulted_in_ahead(),
                "faulted in at {} keys with an evicted one",
                s.keys.len()
            );
            i += 1;
        }
    }

    /// A window that outgrows the table: a sweep that frees less than a quarter of the room
    /// grows the table at once, so sweeps do not follow each other key by key.
    #[test]
    fn a_sweep_that_frees_little_grows_the_table() {
        let mut s = DedupState::with_capacity(1_000, None);
        // One old key, then the table filled with keys that stay in state.
        assert_eq!(s.check(b"old", 0).unwrap(), Verdict::Accept);
        let mut t = 0i64;
        while !s.keys.is_full() {
            t += 1;
            assert_eq!(s.check(&t.to_le_bytes(), 10).unwrap(), Verdict::Accept);
        }
        let room = s.keys.max_len();
        assert_eq!(s.held(), room);
        s.advance(Some(5));
        assert_eq!(s.check(b"new", 10).unwrap(), Verdict::Accept);
        assert_eq!(s.held(), room, "the sweep removed the old key");
        assert!(s.keys.max_len() >= room + room / 4, "and the table grew");
        assert_eq!(s.len(), room);
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark_back() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(
            [("t".to_string(), 0), ("t".to_string(), 1)],
            10,
            Duration::from_secs(5),
            t0,
        );
        w.observe("t", 0, 1_000, t0);
        assert_eq!(w.candidate(t0), None, "partition 1 has seen nothing yet");
        w.observe("t", 1, 400, t0);
        assert_eq!(w.candidate(t0), Some(390));
        w.observe("t", 0, 2_000, t0 + Duration::from_secs(6));
        assert_eq!(
            w.candidate(t0 + Duration::from_secs(6)),
            Some(1_990),
            "partition 1 idle for 6 s > 5 s"
        );
    }

    /// The store's part of a state still loading, as a test model: lookups answer from
    /// `store`; the load ends at the `loaded_after`-th poll with the entries at or above the
    /// restart's watermark (what the store's load gives).
    struct ModelCold {
        store: std::collections::BTreeMap<Vec<u8>, i64>,
        watermark: Option<i64>,
        polls: usize,
        loaded_after: usize,
    }

    impl ModelCold {
        /// `store` without a watermark, loaded at the second poll.
        fn loaded_at_second_poll(store: std::collections::BTreeMap<Vec<u8>, i64>) -> Self {
            Self {
                store,
                watermark: None,
                polls: 0,
                loaded_after: 1,
            }
        }
    }

    impl ColdKeys for ModelCold {
        fn lookup(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<i64>>, ColdError> {
            Ok(keys.iter().map(|k| self.store.get(*k).copied()).collect())
        }

        fn poll_loaded(&mut self) -> Result<Option<DedupState>, ColdError> {
            self.polls += 1;
            if self.polls <= self.loaded_after {
                return Ok(None);
            }
            let w = self.watermark;
            Ok(Some(DedupState::from_entries(
                self.store
                    .iter()
                    .filter(|(_, t)| w.is_none_or(|w| **t >= w))
                    .map(|(k, t)| (k.clone(), *t)),
                w,
            )))
        }
    }

    /// The state's growth time is what the thread owning it paid: when the part loaded in
    /// the background is taken in, the growth its loading thread paid is not counted (the run
    /// summary reports this time as the verdicts' thread's).
    #[test]
    fn a_loaded_part_brings_none_of_its_loaders_growth_time() {
        let store: std::collections::BTreeMap<Vec<u8>, i64> = (0..5_000u32)
            .map(|i| (format!("k{i}").into_bytes(), 100))
            .collect();
        // As the model's load gives them: filtered, so of unknown count (the table grows).
        let loaded_alone = DedupState::from_entries(
            store.iter().filter(|_| true).map(|(k, t)| (k.clone(), *t)),
            None,
        );
        assert!(
            loaded_alone.growth_time() > Duration::ZERO,
            "the loading thread's table grows from empty"
        );
        let mut s = DedupState::loading(Box::new(ModelCold::loaded_at_second_poll(store)), None);
        for i in 0..10u32 {
            assert_eq!(
                s.check(format!("new{i}").as_bytes(), 200).unwrap(),
                Verdict::Accept
            );
        }
        s.finish_loading().unwrap();
        assert_eq!(s.len(), 5_010);
        // Neither memory's 10 keys nor the merge (room for 5,010 in the loaded table) grew.
        assert_eq!(s.growth_time(), Duration::ZERO);
    }

    /// `dedup.expected_keys`: a state sized for its keys never grows while it fills to them,
    /// also after a part loaded in the background is taken over (whichever table the merge
    /// keeps), and gives the verdicts an unsized one gives.
    #[test]
    fn a_state_expecting_its_keys_never_grows_and_decides_the_same() {
        let check_all = |s: &mut DedupState, from: u32, to: u32| -> Vec<Verdict> {
            (from..to)
                .map(|i| s.check(format!("k{}", i % 6_000).as_bytes(), 100).unwrap())
                .collect()
        };
        let mut grown = DedupState::default();
        let mut sized = DedupState::default();
        sized.expect_keys(6_000);
        let sized_at_start = sized.growth_time();
        let verdicts = check_all(&mut grown, 0, 8_000);
        assert_eq!(check_all(&mut sized, 0, 8_000), verdicts);
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == Verdict::Duplicate)
                .count(),
            2_000
        );
        assert!(
            grown.growth_time() > Duration::ZERO,
            "the unsized table grew"
        );
        assert_eq!(
            sized.growth_time(),
            sized_at_start,
            "the sized table did not"
        );

        // Taken over after a load: the loaded table (more keys than memory's) and memory's
        // (more keys than the loaded part) both keep room for the expected keys.
        for (stored, in_memory) in [(3_000u32, 10u32), (10, 3_000)] {
            let store = (0..stored)
                .map(|i| (format!("s{i}").into_bytes(), 100))
                .collect();
            let mut s =
                DedupState::loading(Box::new(ModelCold::loaded_at_second_poll(store)), None);
            s.expect_keys(20_000);
            for i in 0..in_memory {
                assert_eq!(
                    s.check(format!("m{i}").as_bytes(), 200).unwrap(),
                    Verdict::Accept
                );
            }
            s.finish_loading().unwrap();
            let before = s.growth_time();
            for i in 0..(20_000 - stored - in_memory) {
                assert_eq!(
                    s.check(format!("n{i}").as_bytes(), 300).unwrap(),
                    Verdict::Accept
                );
            }
            assert_eq!(s.len(), 20_000);
            assert_eq!(
                s.growth_time(),
                before,
                "{stored} stored, {in_memory} in memory: no growth after the takeover"
            );
        }
    }

    #[test]
    fn a_failed_lookup_while_loading_is_an_error_not_a_verdict() {
        struct Broken;
        impl ColdKeys for Broken {
            fn lookup(&mut self, _: &[&[u8]]) -> Result<Vec<Option<i64>>, ColdError> {
                Err(ColdError("disk gone".into()))
            }
            fn poll_loaded(&mut self) -> Result<Option<DedupState>, ColdError> {
                Ok(None)
            }
        }
        let mut s = DedupState::loading(Box::new(Broken), Some(10));
        assert_eq!(
            s.check(b"a", 5).unwrap(),
            Verdict::Late,
            "late needs no lookup"
        );
        let e = s.check(b"a", 50).unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
        assert!(s.prefetch([&b"b"[..]]).is_err());
    }

    /// The key the proptests use for `k`: one byte, or (every fourth) 30 bytes, so the
    /// state's long keys (kept apart from their slots) are decided through the same paths.
    fn key(k: u8) -> Vec<u8> {
        if k.is_multiple_of(4) {
            vec![k; 30]
        } else {
            vec![k]
        }
    }

    fn records() -> impl Strategy<Value = Vec<(u8, i64)>> {
        proptest::collection::vec((0u8..40, 0i64..1_000), 0..300)
    }

    fn run(
        state: &mut DedupState,
        input: &[(u8, i64)],
        epochs: &[usize],
        marks: &[i64],
    ) -> Vec<Verdict> {
        let mut out = Vec::new();
        let mut at = 0;
        for (i, &len) in epochs.iter().enumerate() {
            let end = (at + len).min(input.len());
            for &(k, t) in &input[at..end] {
                out.push(state.check(&key(k), t).unwrap());
            }
            at = end;
            state.advance(marks.get(i).copied());
            state.take_inserted();
        }
        for &(k, t) in &input[at..] {
            out.push(state.check(&key(k), t).unwrap());
        }
        out
    }

    proptest! {
        /// Same input, same order, same epoch boundaries and watermarks -> same verdicts, and
        /// a crash anywhere followed by a replay from the last checkpoint gives them too.
        #[test]
        fn replay_after_a_crash_anywhere_gives_the_same_verdicts(
            input in records(),
            epochs in proptest::collection::vec(1usize..60, 1..8),
            marks in proptest::collection::vec(0i64..1_000, 8),
            crash_epoch in 0usize..8,
        ) {
            let mut marks = marks;
            marks.sort_unstable();
            let reference = run(&mut DedupState::default(), &input, &epochs, &marks);

            // Crash inside epoch `crash_epoch`: state = checkpoint before it (entries + watermark
            // as stored), then the epoch is replayed from the WAL and the run goes on.
            let crash_epoch = crash_epoch.min(epochs.len());
            let done: usize = epochs[..crash_epoch].iter().sum::<usize>().min(input.len());
            let mut before = DedupState::default();
            let prefix = run(&mut before, &input[..done], &epochs[..crash_epoch], &marks);
            let entries: Vec<(Vec<u8>, i64)> = before.entries().map(|(k, t)| (k.to_vec(), t)).collect();
            let mut restored = DedupState::from_entries(entries, before.watermark());
            let rest = run(&mut restored, &input[done..], &epochs[crash_epoch..], &marks[crash_epoch.min(marks.len())..]);
            let mut replayed = prefix;
            replayed.extend(rest);
            prop_assert_eq!(replayed, reference);
        }

        /// The changelog recovery of the module documentation: epochs run, each checkpoint's
        /// delta is logged (the WAL) and applied to a store model in order; the store syncs
        /// now and then (its durable state then covers every delta applied). A crash after any
        /// checkpoint keeps the synced state plus ANY prefix of the deltas applied after it;
        /// restoring (that store, then the WAL's deltas after the synced epoch, all filtered by
        /// the newest checkpoint's watermark) gives exactly the live state, and the run goes on
        /// with the same verdicts.
        #[test]
        fn the_store_plus_the_changelog_restores_the_exact_state_after_any_crash(
            input in records(),
            epochs in proptest::collection::vec(1usize..40, 1..10),
            marks in proptest::collection::vec(0i64..1_000, 10),
            syncs in proptest::collection::vec(any::<bool>(), 10),
            crash_after in 0usize..10,
            kept in any::<proptest::sample::Index>(),
        ) {
            use std::collections::BTreeSet;
            let mut marks = marks;
            marks.sort_unstable();
            let crash_after = crash_after.min(epochs.len() - 1);
            // Store model: the synced set, and the deltas applied since (not synced).
            let mut synced: BTreeSet<(Vec<u8>, i64)> = BTreeSet::new();
            let mut synced_epoch = 0usize;
            let mut unsynced: Vec<(PackedKeys, Option<i64>)> = Vec::new();
            let mut wal: Vec<(PackedKeys, Option<i64>)> = Vec::new();
            let apply = |set: &mut BTreeSet<(Vec<u8>, i64)>, (keys, w): &(PackedKeys, Option<i64>)| {
                if let Some(w) = w {
                    set.retain(|(_, t)| t >= w);
                }
                for (k, t) in keys.iter() {
                    set.insert((k.to_vec(), t));
                }
            };
            let mut live = DedupState::default();
            let mut at = 0;
            for (e, &len) in epochs.iter().enumerate().take(crash_after + 1) {
                let end = (at + len).min(input.len());
                for &(k, t) in &input[at..end] {
                    live.check(&key(k), t).unwrap();
                }
                at = end;
                let w = live.advance(Some(marks[e]));
                let delta = (live.take_inserted(), w);
                wal.push(delta.clone());
                unsynced.push(delta);
                if syncs[e] {
                    for d in unsynced.drain(..) {
                        apply(&mut synced, &d);
                    }
                    synced_epoch = e + 1;
                }
            }
            // The crash: the store keeps the synced state plus a prefix of the rest.
            let mut store = synced.clone();
            for d in &unsynced[..kept.index(unsynced.len() + 1)] {
                apply(&mut store, d);
            }
            let w = live.watermark();
            let mut restored = DedupState::with_capacity(0, w);
            for (k, t) in &store {
                restored.load(k, *t);
            }
            for (keys, _) in &wal[synced_epoch..] {
                restored.load_changelog(keys);
            }
            prop_assert_eq!(restored.sorted_entries(), live.sorted_entries());
            // And the rest of the stream gets the same verdicts from either.
            for &(k, t) in &input[at..] {
                prop_assert_eq!(restored.check(&key(k), t).unwrap(), live.check(&key(k), t).unwrap());
            }
        }

        /// A state still loading gives the verdicts (and the deltas) of the same state fully
        /// loaded, whatever the load's progress: the cold part is a store model holding the
        /// state at the restart, entries below the watermark not evicted yet, and for the
        /// changelog's keys the entry or not (a delta applied or not before the crash); the
        /// load ends after any number of polls (or not within the run); batches are prefetched
        /// or not.
        #[test]
        fn a_state_still_loading_decides_as_the_loaded_one_at_any_load_progress(
            before in records(),
            after in records(),
            mark0 in 0i64..1_000,
            in_changelog in proptest::collection::vec(any::<(bool, bool)>(), 40),
            junk in proptest::collection::vec((0u8..60, 0i64..1_000), 0..20),
            epochs in proptest::collection::vec(1usize..40, 1..8),
            marks in proptest::collection::vec(0i64..1_000, 8),
            loaded_after in 0usize..12,
            prefetch in proptest::collection::vec(any::<bool>(), 8),
        ) {
            use std::collections::BTreeMap;
            // The state at the restart.
            let mut s0 = DedupState::default();
            for &(k, t) in &before {
                s0.check(&key(k), t).unwrap();
            }
            let w0 = s0.advance(Some(mark0));
            let entries: Vec<(u8, i64)> = s0.entries().map(|(k, t)| (k[0], t)).collect();
            // The store: the state, minus (or with an older time for) some changelog keys,
            // plus junk below the watermark; the changelog: some of the state's keys.
            let mut store: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            for &(k, t) in &junk {
                let t = w0.map_or(t, |w| t.min(w - 1));
                store.insert(key(k), t);
            }
            let mut changelog = PackedKeys::default();
            for &(k, t) in &entries {
                let (logged, applied) = in_changelog[k as usize % in_changelog.len()];
                if logged {
                    changelog.push(&key(k), t);
                }
                if !logged || applied {
                    store.insert(key(k), t);
                } else if w0.is_some() {
                    store.remove(&key(k));
                }
            }
            let mut full = DedupState::from_entries(entries.iter().map(|&(k, t)| (key(k), t)), w0);
            let mut partial = DedupState::loading(
                Box::new(ModelCold { store, watermark: w0, polls: 0, loaded_after }),
                w0,
            );
            partial.load_changelog(&changelog);
            let mut marks = marks;
            marks.sort_unstable();
            let mut at = 0;
            for (e, &len) in epochs.iter().enumerate() {
                let end = (at + len).min(after.len());
                let batch = &after[at..end];
                if prefetch[e] {
                    let keys: Vec<Vec<u8>> = batch.iter().map(|&(k, _)| key(k)).collect();
                    partial.prefetch(keys.iter().map(|k| &k[..])).unwrap();
                }
                for &(k, t) in batch {
                    prop_assert_eq!(partial.check(&key(k), t).unwrap(), full.check(&key(k), t).unwrap());
                }
                at = end;
                prop_assert_eq!(partial.advance(Some(marks[e])), full.advance(Some(marks[e])));
                prop_assert_eq!(partial.take_inserted(), full.take_inserted());
            }
            partial.finish_loading().unwrap();
            prop_assert_eq!(partial.sorted_entries(), full.sorted_entries());
            for &(k, t) in &after[at..] {
                prop_assert_eq!(partial.check(&key(k), t).unwrap(), full.check(&key(k), t).unwrap());
            }
        }

        /// Each accepted key is unique while in state; nothing below the watermark stays.
        #[test]
        fn state_holds_each_key_once_and_nothing_below_the_watermark(
            input in records(),
            marks in proptest::collection::vec(0i64..1_000, 1..10),
        ) {
            let mut s = DedupState::default();
            let chunk = input.len() / marks.len() + 1;
            let mut mark = i64::MIN;
            for (part, &m) in input.chunks(chunk).zip(&marks) {
                let mut accepted = std::collections::HashSet::new();
                for &(k, t) in part {
                    match s.check(&key(k), t).unwrap() {
                        Verdict::Accept => prop_assert!(accepted.insert(k)),
                        Verdict::Late => prop_assert!(t < mark),
                        Verdict::Duplicate => {}
                    }
                }
                mark = mark.max(m);
                s.advance(Some(m));
                prop_assert!(s.entries().all(|(_, t)| t >= mark));
                prop_assert_eq!(s.watermark(), Some(mark));
            }
        }
    }

    /// One operation on a state in [`lazy_eviction_matches_an_eager_model`].
    #[derive(Debug, Clone)]
    enum ModelOp {
        Check(u8, i64),
        Advance(i64),
        Take,
        /// A restart from the state's entries (`from_entries`).
        Restart,
        /// A restart through a background load: (polls before the load ends, which keys go
        /// to the store, the changelog or both, and which junk below the watermark the
        /// store holds).
        Loading(usize, u64),
        Prefetch(Vec<u8>),
        Count,
        Poll,
    }

    fn model_op() -> impl Strategy<Value = ModelOp> {
        prop_oneof![
            20 => (0u8..30, 0i64..80).prop_map(|(k, t)| ModelOp::Check(k, t)),
            3 => (0i64..80).prop_map(ModelOp::Advance),
            2 => Just(ModelOp::Take),
            1 => Just(ModelOp::Restart),
            1 => (0usize..6, any::<u64>()).prop_map(|(a, b)| ModelOp::Loading(a, b)),
            2 => proptest::collection::vec(0u8..30, 0..8).prop_map(ModelOp::Prefetch),
            2 => Just(ModelOp::Count),
            1 => Just(ModelOp::Poll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Lazy eviction decides, lists, counts and hands over deltas exactly as an eager
        /// model that drops every key below the watermark at each advance: from a 16-slot
        /// table (so sweeps and growth happen often, also while a part still loads), with
        /// times equal to the watermark common, and restarts from entries and through a
        /// background load whose store holds evicted junk. (Written by a review of the lazy
        /// eviction; it catches a lost `oldest` bound and a `>` for `>=` in the sweep.)
        #[test]
        fn lazy_eviction_matches_an_eager_model(
            ops in proptest::collection::vec(model_op(), 0..400),
        ) {
            use std::collections::BTreeMap;
            let mut s = DedupState::default();
            let mut model: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            let mut w: Option<i64> = None;
            let mut inserted: Vec<(Vec<u8>, i64)> = Vec::new();
            for op in ops {
                match op {
                    ModelOp::Check(k, t) => {
                        let k = key(k);
                        let expect = if w.is_some_and(|w| t < w) {
                            Verdict::Late
                        } else if model.contains_key(&k) {
                            Verdict::Duplicate
                        } else {
                            model.insert(k.clone(), t);
                            inserted.push((k.clone(), t));
                            Verdict::Accept
                        };
                        prop_assert_eq!(s.check(&k, t).unwrap(), expect);
                    }
                    ModelOp::Advance(to) => {
                        let now = w.map_or(to, |w| w.max(to));
                        w = Some(now);
                        model.retain(|_, t| *t >= now);
                        prop_assert_eq!(s.advance(Some(to)), w);
                    }
                    ModelOp::Take => {
                        let got: Vec<(Vec<u8>, i64)> =
                            s.take_inserted().iter().map(|(k, t)| (k.to_vec(), t)).collect();
                        let want: Vec<(Vec<u8>, i64)> = inserted
                            .drain(..)
                            .filter(|(_, t)| w.is_none_or(|w| *t >= w))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                    ModelOp::Restart => {
                        s.finish_loading().unwrap();
                        let _ = s.take_inserted();
                        inserted.clear();
                        let e: Vec<(Vec<u8>, i64)> =
                            s.entries().map(|(k, t)| (k.to_vec(), t)).collect();
                        s = DedupState::from_entries(e, s.watermark());
                    }
                    ModelOp::Loading(loaded_after, bits) => {
                        s.finish_loading().unwrap();
                        let _ = s.take_inserted();
                        inserted.clear();
                        let mut store: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
                        if let Some(w) = w {
                            for j in 0..5u8 {
                                if (bits >> (40 + j)) & 1 == 1 {
                                    store.insert(key(j * 5), w - 1 - i64::from(j));
                                }
                            }
                        }
                        let mut changelog = PackedKeys::default();
                        for (i, (k, t)) in model.iter().enumerate() {
                            match (bits >> ((2 * i) % 40)) & 3 {
                                0 => {
                                    store.insert(k.clone(), *t);
                                }
                                1 => changelog.push(k, *t),
                                _ => {
                                    store.insert(k.clone(), *t);
                                    changelog.push(k, *t);
                                }
                            }
                        }
                        let cold = ModelCold { store, watermark: w, polls: 0, loaded_after };
                        s = DedupState::loading(Box::new(cold), w);
                        s.load_changelog(&changelog);
                    }
                    ModelOp::Prefetch(ks) => {
                        let ks: Vec<Vec<u8>> = ks.into_iter().map(key).collect();
                        s.prefetch(ks.iter().map(|k| &k[..])).unwrap();
                    }
                    ModelOp::Count => {
                        if !s.is_loading() {
                            prop_assert_eq!(s.len(), model.len());
                            prop_assert_eq!(s.is_empty(), model.is_empty());
                            let want: Vec<(Vec<u8>, i64)> =
                                model.iter().map(|(k, t)| (k.clone(), *t)).collect();
                            prop_assert_eq!(s.sorted_entries(), want);
                        }
                    }
                    ModelOp::Poll => s.finish_loading().unwrap(),
                }
            }
            s.finish_loading().unwrap();
            prop_assert_eq!(s.len(), model.len());
            let want: Vec<(Vec<u8>, i64)> = model.iter().map(|(k, t)| (k.clone(), *t)).collect();
            prop_assert_eq!(s.sorted_entries(), want);
        }
    }
}
