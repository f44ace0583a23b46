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

    /// `(key, event_time)` in the order they were pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], i64)> + '_ {
        self.entries.iter().enumerate().map(|(i, &(end, t))| {
            let start = if i == 0 { 0 } else { self.entries[i - 1].0 };
            (&self.bytes[start..end], t)
        })
    }

    /// The pairs whose event time is at or above `watermark` (all when `None`), in order.
    pub fn at_or_above(self, watermark: Option<i64>) -> Self {
        match watermark {
            Some(w) if self.entries.iter().any(|&(_, t)| t < w) => {
                // At most all of them: sized once, never doubled (`with_capacity`).
                let mut kept = PackedKeys::with_capacity(self.len(), self.key_bytes());
                for (k, t) in self.iter().filter(|&(_, t)| t >= w) {
                    kept.push(k, t);
                }
                kept
            }
            _ => self,
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

    proptest! {
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
            let kept: Vec<(Vec<u8>, i64)> = p.at_or_above(w).iter().map(|(k, t)| (k.to_vec(), t)).collect();
            let want: Vec<(Vec<u8>, i64)> = pairs.into_iter().filter(|(_, t)| w.is_none_or(|w| *t >= w)).collect();
            prop_assert_eq!(kept, want);
        }
    }
}
