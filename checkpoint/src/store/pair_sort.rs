//! Sorting a state delta's `(key, event time)` pairs in the key index's byte order, with
//! integer comparisons where the plain comparison calls `memcmp`.
//!
//! Why: the state writer sorts every key of every delta. Each comparison of two keys was a
//! `memcmp` call, and keys that share a
//! long prefix (`order-000000…`, a tenant id, a date) make each call compare that prefix
//! again: `memcmp` was the largest item (28% of samples) in a `perf record` of the criterion
//! bench `dedup_state_stage` (`benches/benches/checkpoint.rs`), whose time fell by about a fifth
//! with this (the README has the figures).
//!
//! How: each pair gets a sort key computed once: the 8 bytes of its key after the prefix
//! every key of the delta shares, big-endian and zero-padded (the window). Pairs are sorted by
//! it, and by the plain comparison only where the sort keys tie.
//!
//! Invariant (why the order is exactly the plain one): keys compare as bytes; all of them
//! share the skipped prefix, so they differ first inside or after the window. Inside it, the
//! first differing byte decides both comparisons alike (a key that ends there is padded with
//! zeros: below any other byte, as a shorter key is below a longer one it is a prefix of, and
//! equal to a zero byte, which ties and is settled by the plain comparison). After it, the
//! windows tie and the plain comparison decides. Property-tested against the plain sort.

/// Sorts `pairs` by key, a key's times rising: the key index's byte order. By each pair's
/// sort key first (the module documentation), by the plain comparison where those tie.
pub(super) fn sort_in_key_index_order(pairs: &mut [(&[u8], i64)]) {
    let plain = |a: &(&[u8], i64), b: &(&[u8], i64)| a.0.cmp(b.0).then(a.1.cmp(&b.1));
    if pairs.len() < 2 || u32::try_from(pairs.len()).is_err() {
        pairs.sort_unstable_by(plain);
        return;
    }
    let skip = shared_prefix_len(pairs);
    let mut keyed: Vec<(u64, u32)> = pairs
        .iter()
        .enumerate()
        // `i` fits: the length was checked against `u32` above.
        .map(|(i, &(key, _))| (window(key, skip), i as u32))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| plain(&pairs[a.1 as usize], &pairs[b.1 as usize]))
    });
    let sorted: Vec<(&[u8], i64)> = keyed.iter().map(|k| pairs[k.1 as usize]).collect();
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
        fn the_order_is_exactly_the_plain_comparison(pairs in keys()) {
            let mut ours: Vec<(&[u8], i64)> = pairs.iter().map(|(k, t)| (k.as_slice(), *t)).collect();
            let mut plain = ours.clone();
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
