//! [`PackedKeys`]: `(key, event time)` pairs packed in one buffer, in order, with no allocation
//! per key. The shape an epoch's dedup-state delta travels in: from the engine's state to the
//! WAL's state-delta frames, to the store's state writer, and in chunks of a restart's load.

/// `(key, event_time)` pairs packed in one buffer, in order (see the module documentation).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackedKeys {
    bytes: Vec<u8>,
    /// (end offset in `bytes`, event time) per key.
    entries: Vec<(usize, i64)>,
}

impl PackedKeys {
    /// Empty, with room for `keys` pairs of `key_bytes` key bytes in all: a buffer filled to
    /// about a known size never grows by doubling (each step a copy into fresh memory).
    pub fn with_capacity(keys: usize, key_bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(key_bytes),
            entries: Vec::with_capacity(keys),
        }
    }

    /// Pairs and key bytes it holds before it grows: what [`PackedKeys::with_capacity`] gave,
    /// or more.
    pub fn capacity(&self) -> (usize, usize) {
        (self.entries.capacity(), self.bytes.capacity())
    }

    /// Appends one pair.
    pub fn push(&mut self, key: &[u8], event_time: i64) {
        self.bytes.extend_from_slice(key);
        self.entries.push((self.bytes.len(), event_time));
    }

    /// Appends a pair whose key is the first `shared` bytes of the last key pushed followed
    /// by `suffix` (a state delta's compact form). `shared` must be at most the last key's
    /// length (the decoder checks it).
    pub fn push_after_shared(&mut self, shared: usize, suffix: &[u8], event_time: i64) {
        let last_start = self.start(self.entries.len().saturating_sub(1));
        debug_assert!(
            shared <= self.bytes.len() - last_start,
            "shares more than the last key"
        );
        let shared = shared.min(self.bytes.len() - last_start);
        self.bytes
            .extend_from_within(last_start..last_start + shared);
        self.bytes.extend_from_slice(suffix);
        self.entries.push((self.bytes.len(), event_time));
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total key bytes.
    pub fn key_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The `i`th pair pushed (`i < len()`): random access for the state writer's sort, which
    /// reads a long key back by its index.
    pub fn get(&self, i: usize) -> (&[u8], i64) {
        let (end, t) = self.entries[i];
        (&self.bytes[self.start(i)..end], t)
    }

    /// Where the `i`th key's bytes begin: where the one before it ends.
    fn start(&self, i: usize) -> usize {
        match i {
            0 => 0,
            i => self.entries[i - 1].0,
        }
    }

    /// Appends every pair of `other`, in order: one copy of its key bytes (the state writer
    /// gathers epochs' deltas into one buffer it keeps, and gives theirs back).
    pub fn extend_from(&mut self, other: &PackedKeys) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.entries
            .extend(other.entries.iter().map(|&(end, t)| (base + end, t)));
    }

    /// Empties it and keeps its memory for the next fill: all of it while that is at most
    /// four times what this fill used, else twice this fill (a buffer that once took a
    /// restart's many epochs does not keep that size for good, and fills that vary do not
    /// free and grow it by turns).
    ///
    /// Why keep it at all: on the virtual machines measured (README, "Dedup's cost"), memory
    /// given back to the system comes back as pages the host must fault in again, at a
    /// fraction of a copy's speed; a buffer refilled every second should stay put.
    pub fn clear_keeping_memory(&mut self) {
        let (keys, bytes) = (self.entries.len(), self.bytes.len());
        clear_keeping_room(&mut self.entries, keys);
        clear_keeping_room(&mut self.bytes, bytes);
    }

    /// `(key, event_time)` in the order they were pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], i64)> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The pairs whose event time is at or above `watermark` (all when `None`), in order, in
    /// this buffer's own memory: the kept pairs move to the front. (A copy into a new buffer
    /// dropped this one, an epoch buffer taken from `KeyBuffers`, whenever a key was late.)
    pub fn at_or_above(mut self, watermark: Option<i64>) -> Self {
        let Some(w) = watermark else {
            return self;
        };
        // Invariant: the first `kept` entries are the pairs kept so far, their bytes
        // `..to`; every byte from `start` on is unread (`to <= start`).
        let (mut kept, mut to, mut start) = (0, 0, 0);
        for i in 0..self.entries.len() {
            let (end, t) = self.entries[i];
            if t >= w {
                if to != start {
                    self.bytes.copy_within(start..end, to);
                }
                to += end - start;
                self.entries[kept] = (to, t);
                kept += 1;
            }
            start = end;
        }
        self.entries.truncate(kept);
        self.bytes.truncate(to);
        self
    }
}

/// Empties `v` and keeps its memory while that is at most four times `used` (what its last
/// fill held), else twice `used`: the rule of every buffer the state writer keeps between
/// fills ([`PackedKeys::clear_keeping_memory`], the sort's entries).
pub(super) fn clear_keeping_room<T>(v: &mut Vec<T>, used: usize) {
    v.clear();
    if v.capacity() > 4 * used {
        v.shrink_to(2 * used);
    }
}

/// Emptied [`PackedKeys`] handed back for the next epoch's keys: the state writer gives each
/// delta's buffer back once it has copied it, and the dedup state takes one at each seal
/// instead of allocating (each epoch's buffer, tens of MB at 1 s epochs, was fresh memory).
#[derive(Debug, Default)]
pub struct KeyBuffers {
    free: std::sync::Mutex<Vec<PackedKeys>>,
}

/// Buffers [`KeyBuffers`] keeps; more given back are freed. Two: the one being filled is
/// taken, one may wait in the writer's queue.
const KEPT_BUFFERS: usize = 2;

impl KeyBuffers {
    /// Keeps `keys`' memory for a later [`KeyBuffers::take`] (its pairs are dropped; its room
    /// as [`PackedKeys::clear_keeping_memory`] keeps it), so the next epoch's keys go into
    /// pages already faulted in.
    pub fn give(&self, mut keys: PackedKeys) {
        keys.clear_keeping_memory();
        if let Ok(mut free) = self.free.lock() {
            if free.len() < KEPT_BUFFERS {
                free.push(keys);
            }
        }
    }

    /// An empty buffer with room for `keys` pairs of `key_bytes` bytes: a kept one (grown
    /// where it is short) or a new one; the dedup state takes each epoch's here.
    pub fn take(&self, keys: usize, key_bytes: usize) -> PackedKeys {
        let kept = self.free.lock().ok().and_then(|mut free| free.pop());
        match kept {
            Some(mut p) => {
                p.entries.reserve(keys);
                p.bytes.reserve(key_bytes);
                p
            }
            None => PackedKeys::with_capacity(keys, key_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A buffer made with room for its pairs takes them without moving: no doubling, no copy.
    #[test]
    fn pairs_within_the_capacity_go_in_without_a_move() {
        let mut p = PackedKeys::with_capacity(100, 1_000);
        assert!(p.capacity().0 >= 100 && p.capacity().1 >= 1_000);
        let (entries, bytes) = (p.entries.as_ptr(), p.bytes.as_ptr());
        for i in 0..100u32 {
            p.push(format!("key-{i:05}").as_bytes(), i64::from(i));
        }
        assert_eq!((p.entries.as_ptr(), p.bytes.as_ptr()), (entries, bytes));
        assert_eq!(p.len(), 100);
    }

    /// A buffer given back comes back empty with its memory (no new allocation), grown where
    /// more is asked; no more than two are kept.
    #[test]
    fn given_buffers_come_back_empty_with_their_memory() {
        let pool = KeyBuffers::default();
        let mut p = PackedKeys::with_capacity(1_000, 10_000);
        for i in 0..400u32 {
            p.push(&i.to_le_bytes().repeat(3), 1);
        }
        let (entries, bytes) = (p.entries.as_ptr(), p.bytes.as_ptr());
        pool.give(p);
        let back = pool.take(500, 5_000);
        assert!(back.is_empty());
        assert_eq!(
            (back.entries.as_ptr(), back.bytes.as_ptr()),
            (entries, bytes)
        );
        pool.give(back);
        let grown = pool.take(4_000, 40_000);
        assert!(grown.capacity().0 >= 4_000 && grown.capacity().1 >= 40_000);
        for _ in 0..3 {
            pool.give(PackedKeys::with_capacity(1, 1));
        }
        assert_eq!(pool.free.lock().unwrap().len(), 2);
        assert!(pool.take(1, 1).is_empty());
    }

    /// Cleared, a buffer keeps at most twice what it held.
    #[test]
    fn a_cleared_buffer_keeps_at_most_twice_its_fill() {
        let mut p = PackedKeys::with_capacity(10_000, 100_000);
        p.push(b"abc", 1);
        p.clear_keeping_memory();
        assert!(p.is_empty());
        assert!(
            p.capacity().0 <= 2 && p.capacity().1 <= 6,
            "{:?}",
            p.capacity()
        );
        let mut q = PackedKeys::with_capacity(100, 1_000);
        for i in 0..100u8 {
            q.push(&[i; 10], 0);
        }
        q.clear_keeping_memory();
        assert!(q.capacity().0 >= 100 && q.capacity().1 >= 1_000);
    }

    proptest! {
        /// `get` and `extend_from` give the pairs pushed, in order.
        #[test]
        fn get_and_extend_from_give_the_pairs_pushed(
            a in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), any::<i64>()), 0..30),
            b in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), any::<i64>()), 0..30),
        ) {
            let (mut pa, mut pb) = (PackedKeys::default(), PackedKeys::default());
            for (k, t) in &a {
                pa.push(k, *t);
            }
            for (k, t) in &b {
                pb.push(k, *t);
            }
            pa.extend_from(&pb);
            let all: Vec<(Vec<u8>, i64)> = a.iter().chain(&b).cloned().collect();
            prop_assert_eq!(pa.len(), all.len());
            for (i, (k, t)) in all.iter().enumerate() {
                let (gk, gt) = pa.get(i);
                prop_assert_eq!((gk, gt), (k.as_slice(), *t));
            }
        }

        #[test]
        fn pairs_come_back_in_order_and_filter_by_time(
            pairs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..30), any::<i64>()), 0..50),
            w in proptest::option::of(any::<i64>()),
        ) {
            let mut p = PackedKeys::default();
            for (k, t) in &pairs {
                p.push(k, *t);
            }
            let back: Vec<(Vec<u8>, i64)> = p.iter().map(|(k, t)| (k.to_vec(), t)).collect();
            prop_assert_eq!(&back, &pairs);
            let room = p.capacity();
            let mut filtered = p.at_or_above(w);
            prop_assert_eq!(filtered.capacity(), room, "filtered in its own memory");
            let kept: Vec<(Vec<u8>, i64)> = filtered.iter().map(|(k, t)| (k.to_vec(), t)).collect();
            let mut want: Vec<(Vec<u8>, i64)> = pairs.into_iter().filter(|(_, t)| w.is_none_or(|w| *t >= w)).collect();
            prop_assert_eq!(&kept, &want);
            // Still a whole buffer: a pair pushed after the filter comes back after the rest.
            filtered.push(b"after", 7);
            want.push((b"after".to_vec(), 7));
            let back: Vec<(Vec<u8>, i64)> = filtered.iter().map(|(k, t)| (k.to_vec(), t)).collect();
            prop_assert_eq!(back, want);
        }
    }
}
