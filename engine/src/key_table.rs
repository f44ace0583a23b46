//! The dedup state's map from key to event time, built for one access pattern: millions of
//! keys, most of them new, each checked once, in WAL order, on the thread that gives verdicts
//! (issue 22).
//!
//! Why not `std::collections::HashMap`: its table keeps control bytes and entries apart, so a
//! new key costs two cache misses (the control group, then the entry written), and only the
//! first can be fetched ahead by a lookup. Here a key's home slot holds everything a check
//! reads and writes, so fetching that one line ahead ([`KeyTable::warm`]) leaves the check
//! nothing to wait for. Measured against the std map by `cargo bench -p tidemark-benches
//! --bench records -- dedup/` (the README, "The dedup state's own table", has the figures).
//!
//! **Layout.** Open addressing with linear probing, no wrap-around: a key's home is its 64-bit
//! hash scaled to the number of homes (its top bits), and a probe runs from the home towards
//! higher indices through the `OVERFLOW` slots after the last home. Each slot is 32 bytes, aligned to 32 (two to a cache
//! line, none across two):
//!
//! ```text
//! byte  0      tag: 0 empty; 1..=24 an inline key of (tag - 1) bytes; 0xFF a long key
//! bytes 1..24  inline: the key's bytes, zero-padded
//!              long:   bytes 8..16 the key's hash (u64 LE), 16..24 its index in `long` (u64 LE)
//! bytes 24..32 the event time (i64 LE)
//! ```
//!
//! The slots are one allocation on transparent huge pages where the kernel gives them
//! ([`slots`]): a check's random read then rarely misses the TLB.
//!
//! Keys longer than [`INLINE_MAX`] bytes (a UUID as a string, say) live in `long`, and a probe
//! compares their full hash before touching them.
//!
//! **Invariant** (linear probing): for every entry at slot `p` with home `h`, every slot in
//! `h..p` is occupied. Lookups stop at the first empty slot, so they rely on it; inserts keep it
//! by taking the first empty slot from the home; [`KeyTable::retain`] keeps it by emptying a
//! whole cluster (a maximal run of occupied slots) and inserting the cluster's kept entries
//! again. Load stays at most [`MAX_LOAD_NUM`]/[`MAX_LOAD_DEN`] of the homes (the table grows by
//! half, into memory its owner may have faulted in ahead, [`KeyTable::fault_in_next_growth`]);
//! a probe that would run past the last slot grows the table first, or, at a load under one
//! half (keys whose hashes collide in their top bits), lengthens the overflow area instead:
//! growing never separates a full 64-bit collision, and memory stays proportional to the keys.

mod slots;

use slots::Slots;

/// Longest key stored in its slot.
const INLINE_MAX: usize = 23;

/// One slot (layout in the module documentation), aligned so that it never straddles two
/// cache lines: a check then reads and writes one line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot([u8; 32]);

impl Slot {
    const EMPTY: Slot = Slot([0u8; 32]);
}

impl std::ops::Deref for Slot {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::ops::DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

const EMPTY: u8 = 0;
const LONG: u8 = 0xFF;
/// Slots after the last home, so probes need no wrap-around.
const OVERFLOW: usize = 64;
const MIN_HOMES: usize = 16;
/// The table grows before more than this share of its homes is used.
const MAX_LOAD_NUM: usize = 3;
const MAX_LOAD_DEN: usize = 4;

/// A map from key bytes to event time: see the module documentation.
pub struct KeyTable {
    slots: Slots,
    /// Slots a key's home can be: `slots` also holds the overflow area after them.
    homes: usize,
    len: usize,
    /// Keys longer than [`INLINE_MAX`], by the index their slot holds.
    long: Vec<Box<[u8]>>,
    /// Indices of `long` no slot holds any more.
    free_long: Vec<usize>,
    /// Time spent growing ([`KeyTable::growth_time`]).
    growth: std::time::Duration,
    /// The number of keys from which the next growth's memory may be faulted in ahead
    /// ([`KeyTable::nearing_growth`]); `usize::MAX` once that is done, until it grows.
    fault_in_at: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// The keys from which a table of `homes` homes may fault in its next growth's memory: two thirds
/// of its homes, a twelfth of them before it grows (at three quarters). Why there: the new
/// part (half the homes) is faulted in at ~0.36 GB/s of fresh memory on the VMs measured,
/// 16 bytes a home, ~44 ns; a twelfth of the homes inserted at ~1 µs a record is ~80 ns a home,
/// so the thread is done before the growth needs it. Earlier would keep the memory of a
/// growth that never comes longer (a state that stops growing short of it).
fn fault_in_at(homes: usize) -> usize {
    homes * 2 / 3
}

/// The hash a key is placed by.
fn hash(key: &[u8]) -> u64 {
    let h = crate::dedup::key_hash(key);
    #[cfg(test)]
    if tests::CROWDED.with(std::cell::Cell::get) {
        // Every home at the top of the table, few distinct hashes: long clusters, probes off
        // the last slot, and full 64-bit collisions.
        return u64::MAX - (h & 0x7);
    }
    h
}

fn time_of(slot: &Slot) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&slot[24..32]);
    i64::from_le_bytes(b)
}

/// Writes an occupied slot's event time (bytes 24..32: the module documentation's layout).
fn set_time(slot: &mut Slot, time: i64) {
    slot[24..32].copy_from_slice(&time.to_le_bytes());
}

fn u64_at(slot: &Slot, at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&slot[at..at + 8]);
    u64::from_le_bytes(b)
}

fn long_index(slot: &Slot) -> usize {
    u64_at(slot, 16) as usize
}

/// The hash an occupied slot's key was placed by (kept in the slot for a long key).
fn slot_hash(slot: &Slot) -> u64 {
    match slot[0] {
        LONG => u64_at(slot, 8),
        tag => hash(&slot[1..tag as usize]),
    }
}

/// The tag and zero-padded bytes of the slot holding `key` (at most [`INLINE_MAX`] bytes):
/// equal to an occupied slot's first 24 bytes exactly when that slot holds `key`.
fn inline_slot(key: &[u8]) -> Slot {
    let mut slot = Slot::EMPTY;
    slot[0] = key.len() as u8 + 1;
    slot[1..=key.len()].copy_from_slice(key);
    slot
}

/// Where a probe for a key ended.
enum Probe {
    /// The key is in this slot.
    Found(usize),
    /// Not there; this is the first empty slot from its home.
    Vacant(usize),
    /// Not there, and the probe reached the last slot: the table must grow.
    Full,
}

impl KeyTable {
    /// An empty table with room for `capacity` keys before it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_homes((capacity * MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM))
    }

    /// An empty table with `homes` homes (at least [`MIN_HOMES`]).
    fn with_homes(homes: usize) -> Self {
        let homes = homes.max(MIN_HOMES);
        Self {
            slots: Slots::zeroed(homes + OVERFLOW),
            homes,
            len: 0,
            long: Vec::new(),
            free_long: Vec::new(),
            growth: std::time::Duration::ZERO,
            fault_in_at: fault_in_at(homes),
        }
    }

    /// The hash scaled to the homes (`hash * homes / 2^64`: its top bits, by a multiply, for
    /// any number of homes): below `homes`, and in the order of the hashes.
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.homes as u128) >> 64) as usize
    }

    /// Time this table has spent growing to more homes on whichever thread inserted (every
    /// entry moved, and what of the new memory was not faulted in ahead: the thread that
    /// faults it in ahead, [`KeyTable::fault_in_next_growth`], is not counted): how long its
    /// growth held the inserting thread up.
    /// (Lengthening the overflow area for colliding hashes is not counted: it moves nothing.)
    pub fn growth_time(&self) -> std::time::Duration {
        self.growth
    }

    /// Makes [`KeyTable::growth_time`] say `growth`: a table built on another thread and
    /// taken over keeps the count of the thread that owns it now (`DedupState::poll_loaded`).
    pub(crate) fn set_growth_time(&mut self, growth: std::time::Duration) {
        self.growth = growth;
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is in the table.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key held by an occupied slot.
    fn key_of<'a>(&'a self, slot: &'a Slot) -> &'a [u8] {
        match slot[0] {
            LONG => &self.long[long_index(slot)],
            tag => &slot[1..tag as usize],
        }
    }

    fn probe(&self, key: &[u8], hash: u64) -> Probe {
        let mut i = self.home(hash);
        if key.len() <= INLINE_MAX {
            // One fixed-size comparison per slot (a slice comparison is a call to `memcmp`).
            let inline = inline_slot(key);
            while let Some(slot) = self.slots.get(i) {
                if slot[0] == EMPTY {
                    return Probe::Vacant(i);
                }
                if slot[..24] == inline[..24] {
                    return Probe::Found(i);
                }
                i += 1;
            }
            return Probe::Full;
        }
        while let Some(slot) = self.slots.get(i) {
            match slot[0] {
                EMPTY => return Probe::Vacant(i),
                LONG if u64_at(slot, 8) == hash && *self.long[long_index(slot)] == *key => {
                    return Probe::Found(i);
                }
                _ => {}
            }
            i += 1;
        }
        Probe::Full
    }

    /// Removes the entry in slot `at` (its long key's storage freed), leaving a hole that
    /// breaks the probing invariant until it is filled again ([`KeyTable::fill`]) or its
    /// cluster rebuilt ([`KeyTable::retain`]).
    fn empty(&mut self, at: usize) {
        let slot = self.slots[at];
        if slot[0] == LONG {
            let index = long_index(&slot);
            self.long[index] = Box::default();
            self.free_long.push(index);
        }
        self.slots[at] = Slot::EMPTY;
        self.len -= 1;
    }

    /// Writes `key` with `time` into the empty slot `at`.
    fn fill(&mut self, at: usize, key: &[u8], hash: u64, time: i64) {
        let mut slot = if key.len() <= INLINE_MAX {
            inline_slot(key)
        } else {
            let mut slot = Slot::EMPTY;
            let index = match self.free_long.pop() {
                Some(i) => {
                    self.long[i] = key.into();
                    i
                }
                None => {
                    self.long.push(key.into());
                    self.long.len() - 1
                }
            };
            slot[0] = LONG;
            slot[8..16].copy_from_slice(&hash.to_le_bytes());
            slot[16..24].copy_from_slice(&(index as u64).to_le_bytes());
            slot
        };
        set_time(&mut slot, time);
        self.slots[at] = slot;
        self.len += 1;
    }

    /// True when the table holds two thirds of its homes or more ([`fault_in_at`]) and its
    /// next growth's memory has not been faulted in ahead yet: the moment for
    /// [`KeyTable::fault_in_next_growth`], if the owner expects the growth to come.
    pub fn nearing_growth(&self) -> bool {
        self.len >= self.fault_in_at
    }

    /// True once [`KeyTable::fault_in_next_growth`] ran for the coming growth.
    #[cfg(test)]
    pub(crate) fn growth_faulted_in_ahead(&self) -> bool {
        self.fault_in_at == usize::MAX
    }

    /// Has the memory of the next growth faulted in on another thread while checks go on
    /// (`slots::Slots::fault_in_ahead`): the growth then moves entries only, instead of also
    /// waiting for the kernel to fault in fresh pages under them. Once per growth. The owner
    /// calls it when it knows the growth is coming (the dedup state: when no sweep can free
    /// room), since the memory stays with the table whether it grows or not.
    /// Counted in [`KeyTable::growth_time`] when it moved the array (the move and the
    /// thread's start; not the faulting, which that thread does).
    pub fn fault_in_next_growth(&mut self) {
        let started = std::time::Instant::now();
        self.fault_in_at = usize::MAX;
        if self
            .slots
            .fault_in_ahead(self.next_homes() + self.overflow())
        {
            self.growth += started.elapsed();
        }
    }

    /// The event time of `key`, if it is in the table.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        match self.probe(key, hash(key)) {
            Probe::Found(i) => Some(time_of(&self.slots[i])),
            Probe::Vacant(_) | Probe::Full => None,
        }
    }

    /// Inserts `key` with `time` unless it is there: true when inserted (a key already there
    /// keeps its time). The tests' plain insert; the state uses [`KeyTable::insert_unless`].
    #[cfg(test)]
    pub fn insert_if_absent(&mut self, key: &[u8], time: i64) -> bool {
        self.insert_unless(key, time, |_| true)
    }

    /// Inserts `key` with `time` unless it is there with a time `keep_old` accepts: true when
    /// inserted, or when the entry there (a time `keep_old` refuses: an evicted key not swept
    /// yet) took `time` instead. One probe either way. A new key takes the first slot on its
    /// probe path whose entry `keep_old` refuses, if there is one, instead of the empty slot
    /// after it: that entry (another key's, evicted) is dropped, so the table holds fewer
    /// evicted entries and needs fewer sweeps. (The path stays occupied, so the probing
    /// invariant holds; the key is nowhere else, since the probe ran to an empty slot.)
    pub fn insert_unless(&mut self, key: &[u8], time: i64, keep_old: impl Fn(i64) -> bool) -> bool {
        match self.vacancy_for(key) {
            Ok((at, hash)) => {
                let home = self.home(hash);
                match (home..at).find(|&i| !keep_old(time_of(&self.slots[i]))) {
                    Some(evicted) => {
                        self.empty(evicted);
                        self.fill(evicted, key, hash, time);
                    }
                    None => self.fill(at, key, hash, time),
                }
                true
            }
            Err(at) if keep_old(time_of(&self.slots[at])) => false,
            Err(at) => {
                set_time(&mut self.slots[at], time);
                true
            }
        }
    }

    /// True when the next new key makes the table grow (its load would pass the maximum).
    pub fn is_full(&self) -> bool {
        (self.len + 1) * MAX_LOAD_DEN > self.homes * MAX_LOAD_NUM
    }

    /// The most keys the table holds before it grows.
    pub fn max_len(&self) -> usize {
        self.homes * MAX_LOAD_NUM / MAX_LOAD_DEN
    }

    /// Entries whose time `count` accepts, by one pass over the slots (no key is read).
    pub fn count_times(&self, mut count: impl FnMut(i64) -> bool) -> usize {
        self.slots
            .iter()
            .filter(|s| s[0] != EMPTY && count(time_of(s)))
            .count()
    }

    /// Inserts `key` with `time`, replacing the time of a key already there.
    pub fn insert(&mut self, key: &[u8], time: i64) {
        match self.vacancy_for(key) {
            Ok((at, hash)) => self.fill(at, key, hash, time),
            Err(at) => set_time(&mut self.slots[at], time),
        }
    }

    /// `Err(slot)` when `key` is in the table; else `Ok((slot, hash))`: the empty slot it
    /// goes in, with room made first (a key already there never makes the table grow).
    fn vacancy_for(&mut self, key: &[u8]) -> Result<(usize, u64), usize> {
        let hash = hash(key);
        loop {
            match self.probe(key, hash) {
                Probe::Found(at) => return Err(at),
                Probe::Vacant(at) if !self.is_full() => return Ok((at, hash)),
                Probe::Vacant(_) => self.grow(),
                Probe::Full => self.make_room_at_the_end(),
            }
        }
    }

    /// A probe ran off the last slot. At a normal load that is a long cluster at the top:
    /// grow. At a low one it is keys whose hashes collide in their top bits (a full 64-bit
    /// collision, which growing never separates): lengthen the overflow area instead, so
    /// such keys cost probe time, as in any hash table, but never more than their own room.
    fn make_room_at_the_end(&mut self) {
        if self.len * 2 < self.homes {
            self.lengthen_overflow();
        } else {
            self.grow();
        }
    }

    /// Twice the overflow area after the last home (the homes and every slot stay put).
    fn lengthen_overflow(&mut self) {
        let longer = self.slots.len() + self.overflow();
        self.slots = std::mem::take(&mut self.slots).extended(longer);
    }

    /// Prefetches the home slot of each of `keys`, so the checks that follow find it in the
    /// CPU's cache: these fetches depend on nothing but their key, so their misses overlap,
    /// where checks one by one would pay one memory latency after another. A hint only.
    pub fn warm<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        for key in keys {
            self.slots.prefetch(self.home(hash(key)));
        }
    }

    /// Makes room for `additional` more keys without growing.
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len + additional;
        if want * MAX_LOAD_DEN > self.homes * MAX_LOAD_NUM {
            self.grow_to((want * MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM));
        }
    }

    /// [`KeyTable::reserve`], then, when that grew the table, every page of it faulted in on
    /// two threads at once (`slots::Slots::populate`): for a restart that fills the table
    /// right away. A table with room already (a state loaded whole for `expected_keys`) is
    /// left as it is: its pages are faulted in as they are first touched, not all at once.
    pub fn reserve_faulted_in(&mut self, additional: usize) {
        let homes = self.homes;
        self.reserve(additional);
        if self.homes != homes {
            self.slots.populate(2);
        }
    }

    /// Half as many homes again: a table never sized to a power of two holds ~11M keys in
    /// ~15M homes rather than 16M or (past 12M keys) 32M.
    fn grow(&mut self) {
        self.grow_to(self.next_homes());
    }

    /// The homes of the table after its next growth (half as many again).
    fn next_homes(&self) -> usize {
        self.homes + self.homes / 2
    }

    /// Slots after the last home (probes run into them instead of wrapping around).
    fn overflow(&self) -> usize {
        self.slots.len() - self.homes
    }

    /// Grows to `homes` homes (more than now): the slot array is extended (in place where it
    /// can be: `slots.rs`) and every entry moved to its place under the new homes, inside
    /// the same array ([`KeyTable::rehome`]).
    fn grow_to(&mut self, homes: usize) {
        let started = std::time::Instant::now();
        let homes = homes.max(self.homes);
        let used = self.slots.len();
        let overflow = self.overflow();
        self.slots = std::mem::take(&mut self.slots).extended(homes + overflow);
        self.homes = homes;
        self.fault_in_at = fault_in_at(homes);
        self.rehome(used);
        self.growth += started.elapsed();
    }

    /// Moves every entry of slots `..used` (placed under fewer homes; the slots from `used`
    /// on are empty) to the first empty slot from its home under the current homes.
    ///
    /// Back to front, in place. A home under more homes is never lower (homes follow the
    /// order of the hashes at any size), so while an entry's new home is at or after its old
    /// slot `p`, every entry not moved yet (all below `p`) lies below that home: the probe
    /// from it meets only moved entries and empty slots, and the entry leaves `p` for a slot
    /// at or after `p`. Slots at or after a moved entry's home are never emptied again (only
    /// slots below `p` are), so no hole opens between a moved entry and its home. The first
    /// entry whose new home is below its slot (one pushed far from its home, near the start
    /// of the table) ends that: it and every entry below it are taken out, which leaves
    /// `0..=p` empty, and put back one by one.
    fn rehome(&mut self, used: usize) {
        let mut p = used;
        while p > 0 {
            p -= 1;
            let slot = self.slots[p];
            if slot[0] == EMPTY {
                continue;
            }
            let hash = slot_hash(&slot);
            if self.home(hash) < p {
                let mut rest = Vec::new();
                for at in 0..=p {
                    let slot = self.slots[at];
                    if slot[0] != EMPTY {
                        rest.push((slot, slot_hash(&slot)));
                        self.slots[at] = Slot::EMPTY;
                    }
                }
                for (slot, hash) in rest {
                    self.put_back(slot, hash);
                }
                return;
            }
            self.slots[p] = Slot::EMPTY;
            self.put_back(slot, hash);
        }
    }

    /// Puts an entry taken out of the table back in the first empty slot from its home (`len`
    /// counts it still) and returns that slot, lengthening the overflow area when the probe
    /// would run off the end: never a growth, which would move the entries [`KeyTable::rehome`]
    /// and [`KeyTable::retain`] are moving.
    fn put_back(&mut self, slot: Slot, hash: u64) -> usize {
        loop {
            let mut i = self.home(hash);
            while let Some(s) = self.slots.get(i) {
                if s[0] == EMPTY {
                    self.slots[i] = slot;
                    return i;
                }
                i += 1;
            }
            self.lengthen_overflow();
        }
    }

    /// Keeps the entries whose time `keep` accepts, and removes the others (see the module
    /// documentation for how the probing invariant is kept). `keep` may be asked twice about
    /// one entry: it must answer by the time alone.
    pub fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        let mut kept: Vec<(Slot, u64)> = Vec::new();
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i][0] == EMPTY {
                i += 1;
                continue;
            }
            // A cluster: slots start..end, all occupied, empty (or the table's start) before
            // it and empty (or the end) after.
            let start = i;
            while i < self.slots.len() && self.slots[i][0] != EMPTY {
                i += 1;
            }
            let end = i;
            // The entries before the cluster's first removal stay where they are: only the
            // rest is emptied and placed again.
            let Some(first) = (start..end).find(|&at| !keep(time_of(&self.slots[at]))) else {
                continue;
            };
            kept.clear();
            for at in first..end {
                let slot = self.slots[at];
                if keep(time_of(&slot)) {
                    kept.push((slot, slot_hash(&slot)));
                    self.slots[at] = Slot::EMPTY;
                } else {
                    self.empty(at);
                }
            }
            for (slot, hash) in kept.drain(..) {
                // The slot before the cluster is empty, so every kept home lies in
                // start..end, and the slots from there to `first` are still occupied; the kept
                // entries go back in their old order, so each lands at or before its old slot:
                // inside the cluster, the clusters after untouched, and no growth in the
                // middle of this scan.
                let at = self.put_back(slot, hash);
                debug_assert!(at < end, "an entry left its cluster {start}..{end}");
            }
        }
    }

    /// Every `(key, time)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], i64)> + '_ {
        self.slots
            .iter()
            .filter(|s| s[0] != EMPTY)
            .map(|s| (self.key_of(s), time_of(s)))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    thread_local! {
        /// While set, [`hash`] crowds every key at the top of the table (this thread only).
        pub(super) static CROWDED: Cell<bool> = const { Cell::new(false) };
    }

    /// The module's invariant, checked whole: no hole between an entry's home and its slot,
    /// `len` the number of entries, each long key's index held by one slot or free, never both.
    fn assert_invariant(table: &KeyTable) {
        let mut held = HashSet::new();
        let mut occupied = 0;
        for (p, slot) in table.slots.iter().enumerate() {
            if slot[0] == EMPTY {
                continue;
            }
            occupied += 1;
            let h = match slot[0] {
                LONG => {
                    assert!(held.insert(long_index(slot)), "a long index held twice");
                    u64_at(slot, 8)
                }
                tag => hash(&slot[1..tag as usize]),
            };
            let home = table.home(h);
            assert!(home <= p, "slot {p} before its home {home}");
            assert!(
                table.slots[home..p].iter().all(|s| s[0] != EMPTY),
                "a hole between home {home} and slot {p}"
            );
        }
        assert_eq!(occupied, table.len);
        for free in &table.free_long {
            assert!(!held.contains(free), "a free long index is held");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        InsertIfAbsent(Vec<u8>, i64),
        /// `insert_unless` keeping an old time at or above the third value.
        InsertUnlessBelow(Vec<u8>, i64, i64),
        Insert(Vec<u8>, i64),
        RetainAtOrAbove(i64),
        Reserve(usize),
    }

    /// Keys from a small alphabet and lengths around the inline limit, so the same key comes
    /// back and long keys are common.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        (0u8..40, prop_oneof![0usize..4, 20usize..28]).prop_map(|(k, len)| {
            let mut v = vec![k; len];
            if let Some(first) = v.first_mut() {
                *first = k.wrapping_mul(7);
            }
            v
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (key(), 0i64..100).prop_map(|(k, t)| Op::InsertIfAbsent(k, t)),
            2 => (key(), 0i64..100).prop_map(|(k, t)| Op::Insert(k, t)),
            3 => (key(), 0i64..100, 0i64..100).prop_map(|(k, t, w)| Op::InsertUnlessBelow(k, t, w)),
            1 => (0i64..100).prop_map(Op::RetainAtOrAbove),
            1 => (0usize..200).prop_map(Op::Reserve),
        ]
    }

    fn assert_same(table: &KeyTable, model: &HashMap<Vec<u8>, i64>) {
        assert_eq!(table.len(), model.len());
        assert_eq!(table.is_full(), table.len() + 1 > table.max_len());
        for w in [0, 50, 99] {
            let below = model.values().filter(|t| **t < w).count();
            assert_eq!(table.count_times(|t| t < w), below);
        }
        for (k, t) in model {
            assert_eq!(table.get(k), Some(*t), "key {k:?}");
        }
        let mut listed: Vec<(Vec<u8>, i64)> = table.iter().map(|(k, t)| (k.to_vec(), t)).collect();
        listed.sort();
        let mut expected: Vec<(Vec<u8>, i64)> =
            model.iter().map(|(k, t)| (k.clone(), *t)).collect();
        expected.sort();
        assert_eq!(listed, expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The table is a map: after any sequence of operations it holds exactly what a
        /// `HashMap` given the same operations holds, and answers every key the same.
        #[test]
        fn the_table_is_a_map(ops in proptest::collection::vec(op(), 0..400)) {
            run_against_the_model(ops)?;
        }

        /// The same with every home crowded at the top of the table (see [`hash`]): probes
        /// off the last slot, the overflow area lengthened, clusters ending at the last slot.
        #[test]
        fn the_table_is_a_map_with_crowded_hashes(ops in proptest::collection::vec(op(), 0..400)) {
            CROWDED.with(|c| c.set(true));
            let result = run_against_the_model(ops);
            CROWDED.with(|c| c.set(false));
            result?;
        }
    }

    fn run_against_the_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut table = KeyTable::default();
        let mut model: HashMap<Vec<u8>, i64> = HashMap::new();
        for op in ops {
            match op {
                Op::InsertIfAbsent(k, t) => {
                    let inserted = table.insert_if_absent(&k, t);
                    let absent = !model.contains_key(&k);
                    model.entry(k).or_insert(t);
                    prop_assert_eq!(inserted, absent);
                }
                Op::InsertUnlessBelow(k, t, w) => {
                    let taken = table.insert_unless(&k, t, |old| old >= w);
                    let kept = model.get(&k).is_some_and(|old| *old >= w);
                    if !kept {
                        model.insert(k.clone(), t);
                    }
                    prop_assert_eq!(taken, !kept);
                    // A new key may have taken the slot of another key below `w`: at most one
                    // such entry is gone, nothing else changed.
                    let mut gone = Vec::new();
                    for (mk, mt) in &model {
                        match table.get(mk) {
                            Some(tt) => prop_assert_eq!(tt, *mt),
                            None => {
                                prop_assert!(*mt < w && *mk != k, "{:?} at {} lost", mk, mt);
                                gone.push(mk.clone());
                            }
                        }
                    }
                    prop_assert!(gone.len() <= 1);
                    for g in gone {
                        model.remove(&g);
                    }
                }
                Op::Insert(k, t) => {
                    table.insert(&k, t);
                    model.insert(k, t);
                }
                Op::RetainAtOrAbove(w) => {
                    table.retain(|t| t >= w);
                    model.retain(|_, t| *t >= w);
                }
                Op::Reserve(n) => table.reserve(n),
            }
            assert_invariant(&table);
            assert_same(&table, &model);
        }
        // Absent keys are absent, inline and long.
        for k in 0u8..40 {
            for len in [0, 1, 5, 23, 30] {
                let key = vec![k; len];
                prop_assert_eq!(table.get(&key), model.get(&key).copied());
            }
        }
        Ok(())
    }

    /// Growing is timed (the run summary reports it): a table sized for its keys up front
    /// never grows and reports no time; one growing from empty does.
    #[test]
    fn only_growth_counts_as_growth_time() {
        let mut sized = KeyTable::with_capacity(10_000);
        let mut growing = KeyTable::default();
        for i in 0u32..10_000 {
            sized.insert_if_absent(&i.to_le_bytes(), 1);
            growing.insert_if_absent(&i.to_le_bytes(), 1);
        }
        assert_eq!(sized.growth_time(), std::time::Duration::ZERO);
        assert!(growing.growth_time() > std::time::Duration::ZERO);
        let before = growing.growth_time();
        for i in 0u32..10_000 {
            growing.insert_if_absent(&i.to_le_bytes(), 2);
        }
        assert_eq!(
            growing.growth_time(),
            before,
            "keys already there never grow it"
        );
    }

    /// Keys whose 64-bit hashes are all equal (and at the top of the table) cost room in
    /// proportion to their number, not a table grown until memory runs out.
    #[test]
    fn colliding_hashes_lengthen_the_overflow_instead_of_growing_the_table() {
        CROWDED.with(|c| c.set(true));
        let mut table = KeyTable::default();
        for i in 0u32..2_000 {
            // `hash` keeps 3 bits of the real hash: at most 8 distinct hashes.
            assert!(table.insert_if_absent(&i.to_le_bytes(), 1));
        }
        assert_invariant(&table);
        for i in 0u32..2_000 {
            assert_eq!(table.get(&i.to_le_bytes()), Some(1));
        }
        CROWDED.with(|c| c.set(false));
        assert!(table.slots.len() < 16_384, "{} slots", table.slots.len());
    }

    /// Removals in the middle of clusters leave every later key of a cluster reachable: with
    /// the real hash (clusters of a few slots), and with every home crowded at the top of the
    /// table (one long cluster).
    #[test]
    fn removing_from_the_middle_of_long_clusters_keeps_every_key_reachable() {
        for (crowded, keys) in [(false, 5_000u32), (true, 1_000)] {
            CROWDED.with(|c| c.set(crowded));
            let mut table = KeyTable::with_capacity(0);
            let mut model = HashMap::new();
            for i in 0..keys {
                let key = i.to_le_bytes().to_vec();
                table.insert_if_absent(&key, i64::from(i % 97));
                model.insert(key, i64::from(i % 97));
            }
            for w in [10, 40, 41, 90] {
                table.retain(|t| t >= w);
                model.retain(|_, t| *t >= w);
                assert_invariant(&table);
                assert_same(&table, &model);
            }
            CROWDED.with(|c| c.set(false));
        }
    }

    /// A key longer than the inline limit is kept whole; its slot's index is reused after it
    /// is removed.
    #[test]
    fn long_keys_are_kept_whole_and_their_room_reused() {
        let mut table = KeyTable::default();
        let a = vec![1u8; 100];
        let b = vec![2u8; 24];
        assert!(table.insert_if_absent(&a, 5));
        assert!(table.insert_if_absent(&b, 50));
        assert!(!table.insert_if_absent(&a, 7));
        assert_eq!(table.get(&a), Some(5));
        table.retain(|t| t >= 10);
        assert_eq!(table.get(&a), None);
        assert_eq!(table.free_long.len(), 1);
        let c = vec![3u8; 40];
        assert!(table.insert_if_absent(&c, 60));
        assert!(table.free_long.is_empty());
        assert_eq!(table.long.len(), 2);
        assert_eq!(table.get(&c), Some(60));
        assert_eq!(table.get(&b), Some(50));
    }

    /// Growing in place (the entries moved inside one array, `rehome`) keeps every entry
    /// reachable and the invariant whole, from every table shape the proptests reach: a
    /// table filled to just under its load limit, then grown by each factor a growth or a
    /// reserve can take, with the real hash and with crowded ones (long clusters, entries far
    /// from their homes, which take `rehome`'s path of putting the table's front back).
    #[test]
    fn growing_in_place_keeps_every_entry_at_every_factor() {
        for crowded in [false, true] {
            for keys in [1usize, 11, 12, 13, 700, 5_000] {
                for factor_pct in [101usize, 150, 200, 1_000] {
                    CROWDED.with(|c| c.set(crowded));
                    let mut table = KeyTable::with_capacity(keys);
                    let mut model = HashMap::new();
                    for i in 0..keys as u32 {
                        let mut key = i.to_le_bytes().to_vec();
                        if i % 5 == 0 {
                            key.resize(30, 0xEE); // a long key now and then
                        }
                        table.insert_if_absent(&key, i64::from(i));
                        model.insert(key, i64::from(i));
                    }
                    let homes = table.homes * factor_pct / 100 + 1;
                    table.grow_to(homes);
                    assert_eq!(table.homes, homes);
                    assert_invariant(&table);
                    assert_same(&table, &model);
                    CROWDED.with(|c| c.set(false));
                }
            }
        }
    }

    /// A table nearing its growth makes the growth's mapping ahead of it: the growth then
    /// finds its memory there (the array does not move again) and keeps every key.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_growth_finds_its_memory_made_ready_ahead() {
        // Mapped (over 2 MB of slots) from the start.
        let mut table = KeyTable::with_capacity(100_000);
        let homes = table.homes;
        let mut i = 0u64;
        while !table.nearing_growth() {
            table.insert_if_absent(&i.to_be_bytes(), i as i64);
            i += 1;
        }
        assert_eq!(table.len(), fault_in_at(homes));
        table.fault_in_next_growth();
        assert_eq!(table.fault_in_at, usize::MAX, "made ready once");
        assert!(!table.nearing_growth());
        let ready = table.slots.as_ptr();
        while table.homes == homes {
            table.insert_if_absent(&i.to_be_bytes(), i as i64);
            i += 1;
        }
        assert_eq!(
            table.slots.as_ptr(),
            ready,
            "the growth moved the array again"
        );
        assert_eq!(table.fault_in_at, fault_in_at(table.homes));
        assert_invariant(&table);
        for k in 0..i {
            assert_eq!(table.get(&k.to_be_bytes()), Some(k as i64));
        }
    }

    /// Growing from empty to many keys keeps them all (the growth path, not just one table).
    #[test]
    fn a_table_grown_from_empty_keeps_every_key() {
        let mut table = KeyTable::default();
        for i in 0u64..100_000 {
            assert!(table.insert_if_absent(&i.to_be_bytes(), i as i64));
        }
        assert_eq!(table.len(), 100_000);
        for i in 0u64..100_000 {
            assert_eq!(table.get(&i.to_be_bytes()), Some(i as i64));
            assert!(!table.insert_if_absent(&i.to_be_bytes(), 0));
        }
        assert!(table.homes * MAX_LOAD_NUM >= 100_000 * MAX_LOAD_DEN);
    }
}
