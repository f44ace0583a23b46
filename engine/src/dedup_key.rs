//! Compact owned dedup keys for the maps keyed by them beside the state (the keys a batch
//! looked up in a state still loading, `dedup::Cold`; which partition accepted a key,
//! `partition_dedup`): a short key costs no allocation. (The state itself keeps its keys in
//! its own table's slots: `key_table`.)
//!
//! Layout: keys up to [`INLINE_MAX`] bytes live inside the 24-byte value; longer keys in one
//! boxed slice. Both hash and compare as the `[u8]` they hold (so `HashMap<DedupKey, _>` is
//! looked up with a plain `&[u8]`: that is the invariant `Borrow<[u8]>` requires).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Longest key stored inline (an id or a short string in Arrow row form fits).
pub const INLINE_MAX: usize = 22;

/// A dedup key: see the module documentation.
#[derive(Clone)]
pub enum DedupKey {
    /// Up to [`INLINE_MAX`] bytes, stored in place; `len` bytes of `bytes` are the key.
    Inline {
        /// Bytes used.
        len: u8,
        /// The key, zero-padded.
        bytes: [u8; INLINE_MAX],
    },
    /// A longer key.
    Heap(Box<[u8]>),
}

// A map entry is this plus its value: keep it at 24 bytes.
const _: () = assert!(std::mem::size_of::<DedupKey>() == 24);

impl DedupKey {
    /// The key's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            DedupKey::Inline { len, bytes } => &bytes[..*len as usize],
            DedupKey::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for DedupKey {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE_MAX {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..key.len()].copy_from_slice(key);
            DedupKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            DedupKey::Heap(key.into())
        }
    }
}

impl Borrow<[u8]> for DedupKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for DedupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for DedupKey {}

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupKey({:02x?})", self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use proptest::prelude::*;

    use super::*;

    fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
        let mut h = DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    }

    proptest! {
        /// Round trip, and the `Borrow<[u8]>` contract: equal and hashed as the slice.
        #[test]
        fn a_key_is_its_bytes(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = DedupKey::from(key.as_slice());
            prop_assert_eq!(k.as_slice(), key.as_slice());
            prop_assert_eq!(hash_of(&k), hash_of(key.as_slice()));
            prop_assert_eq!(matches!(k, DedupKey::Inline { .. }), key.len() <= INLINE_MAX);
        }

        /// Keys that differ only in padding or length are different keys.
        #[test]
        fn different_bytes_are_different_keys(
            a in proptest::collection::vec(any::<u8>(), 0..30),
            b in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let (ka, kb) = (DedupKey::from(a.as_slice()), DedupKey::from(b.as_slice()));
            prop_assert_eq!(ka == kb, a == b);
        }
    }

    #[test]
    fn a_trailing_zero_is_part_of_the_key() {
        assert_ne!(DedupKey::from(&b"ab"[..]), DedupKey::from(&b"ab\0"[..]));
    }
}
