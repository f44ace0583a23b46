//! Sorting a state delta's `(key, event time)` pairs in the byte orders of the two dedup
//! column families, with integer comparisons where the plain comparison calls `memcmp`.
//!
//! Why: the state writer sorts every key of every delta twice, once per column family. In the
//! key index's order each comparison of two keys was a `memcmp` call, and keys that share a
//! long prefix (`order-000000…`, a tenant id, a date) make each call compare that prefix
//! again: `memcmp` was the largest item (28% of samples) in a `perf record` of the criterion
//! bench `dedup_state_stage` (`benches/benches/checkpoint.rs`), whose time fell by about a fifth
//! with this (the README has the figures). (The time order compares times first, so it only
//! reaches the keys when two entries share an event time, which is common at millisecond
//! resolution.)
//!
//! How: each pair gets a sort key computed once: the 8 bytes of its key after the prefix
//! every key of the delta shares, big-endian and zero-padded (the window), preceded by the
//! event time for the time order. Pairs are sorted by it, and by the plain comparison only
//! where the sort keys tie.
//!
//! Invariant (why the order is exactly the plain one): keys compare as bytes; all of them
//! share the skipped prefix, so they differ first inside or after the window. Inside it, the
//! first differing byte decides both comparisons alike (a key that ends there is padded with
//! zeros: below any other byte, as a shorter key is below a longer one it is a prefix of, and
//! equal to a zero byte, which ties and is settled by the plain comparison). After it, the
//! windows tie and the plain comparison decides. Property-tested against the plain sorts.

use std::cmp::Ordering;

/// Sorts `pairs` by event time, then key: the `dedup` column family's byte order
/// ([`super::record::time_prefix`] preserves the order of times).
pub(super) fn sort_in_dedup_order(pairs: &mut [(&[u8], i64)]) {
    sort_by_sort_key(pairs, true, |a, b| (a.1, a.0).cmp(&(b.1, b.0)));
}

/// Sorts `pairs` by key, a key's times rising: the key index's byte order.
pub(super) fn sort_in_key_index_order(pairs: &mut [(&[u8], i64)]) {
    sort_by_sort_key(pairs, false, |a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
}

/// Sorts `pairs` in the order `plain` gives, by each pair's sort key first (the module
/// documentation): `(time, window)` with `time_first`, `(0, window)` without.
fn sort_by_sort_key<'k>(
    pairs: &mut [(&'k [u8], i64)],
    time_first: bool,
    plain: impl Fn(&(&'k [u8], i64), &(&'k [u8], i64)) -> Ordering,
) {
    if pairs.len() < 2 || u32::try_from(pairs.len()).is_err() {
        pairs.sort_unstable_by(&plain);
        return;
    }
    let skip = shared_prefix_len(pairs);
    let mut keyed: Vec<(i64, u64, u32)> = pairs
        .iter()
        .enumerate()
        .map(|(i, &(key, time))| {
            let time = if time_first { time } else { 0 };
            // `i` fits: the length was checked against `u32` above.
            (time, window(key, skip), i as u32)
        })
        .collect();
    keyed.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| plain(&pairs[a.2 as usize], &pairs[b.2 as usize]))
    });
    let sorted: Vec<(&'k [u8], i64)> = keyed.iter().map(|k| pairs[k.2 as usize]).collect();
    pairs.copy_from_slice(&sorted);
}

/// The length of the prefix every key of `pairs` shares.
fn shared_prefix_len(pairs: &[(&[u8], i64)]) -> usize {
    let Some((first, _)) = pairs.first() else {
        return 0;
    };
    let mut len = first.len();
    for (key, _) in &pairs[1..] {
        len = len.min(key.len());
        len = first[..len]
            .iter()
            .zip(&key[..len])
            .position(|(a, b)| a != b)
            .unwrap_or(len);
        if len == 0 {
            break;
        }
    }
    len
}

/// The 8 bytes of `key` after its first `skip`, big-endian, zero-padded past its end.
fn window(key: &[u8], skip: usize) -> u64 {
    let rest = key.get(skip..).unwrap_or_default();
    let n = rest.len().min(8);
    let mut bytes = [0u8; 8];
    bytes[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys built to stress the window: a shared prefix, then few distinct bytes (zeros
    /// among them), of lengths that end inside, at and after the window.
    fn keys() -> impl Strategy<Value = Vec<(Vec<u8>, i64)>> {
        let prefix =
            proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), any::<u8>()], 0..12);
        let suffix =
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8)], 0..14);
        (
            prefix,
            proptest::collection::vec((suffix, -3i64..3), 0..200),
        )
            .prop_map(|(p, rest)| {
                rest.into_iter()
                    .map(|(s, t)| {
                        let mut k = p.clone();
                        k.extend(s);
                        (k, t)
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn both_orders_are_exactly_the_plain_comparisons(pairs in keys()) {
            let mut ours: Vec<(&[u8], i64)> = pairs.iter().map(|(k, t)| (k.as_slice(), *t)).collect();
            let mut plain = ours.clone();
            sort_in_dedup_order(&mut ours);
            plain.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
            prop_assert_eq!(&ours, &plain);
            sort_in_key_index_order(&mut ours);
            plain.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
            prop_assert_eq!(&ours, &plain);
        }
    }

    #[test]
    fn the_shared_prefix_and_the_window() {
        let pairs: Vec<(&[u8], i64)> = vec![(b"order-0012", 0), (b"order-0099", 0), (b"order-", 0)];
        assert_eq!(shared_prefix_len(&pairs), 6);
        assert_eq!(shared_prefix_len(&pairs[..2]), 8);
        assert_eq!(shared_prefix_len(&[]), 0);
        assert_eq!(
            window(b"order-0012", 8),
            u64::from_be_bytes(*b"12\0\0\0\0\0\0")
        );
        assert_eq!(window(b"ab", 5), 0);
    }
}
