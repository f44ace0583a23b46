//! Sorting a state delta's `(key, event time)` pairs in the key index's byte order, with
//! integer comparisons where the plain comparison calls `memcmp`. Every write path of the
//! state (a staged file, a synced batch) sorts with a [`KeyOrder`] (the state writer's kept
//! from one write to the next; [`for_each_newest_in_key_order`] makes one for a slice), which
//! carries short keys inline; [`split_indices_by_key_range`] splits a delta by the same
//! windows.
//!
//! Why: the state writer sorts every key of every delta. Each comparison of two keys was a
//! `memcmp` call, and keys that share a
//! long prefix (`order-000000…`, a tenant id, a date) make each call compare that prefix
//! again: `memcmp` was the largest item (28% of samples) in a `perf record` of the criterion
//! bench `dedup_state_stage` (`benches/benches/checkpoint.rs`), whose time fell by about a fifth
//! with this (the README has the figures).
//!
//! How: each pair gets a sort key computed once from the bytes of its key after the prefix
//! every key of the delta shares, 8 at a time, big-endian and zero-padded (a window; the sort
//! uses two, 16 bytes). Pairs are sorted by it, and by the rest of the comparison only where
//! the sort keys tie. [`split_indices_by_key_range`] cuts the delta at quantiles of the first
//! window.
//!
//! Invariant (why the order is exactly the plain one): keys compare as bytes; all of them
//! share the skipped prefix, so they differ first inside or after the window. Inside it, the
//! first differing byte decides both comparisons alike (a key that ends there is padded with
//! zeros: below any other byte, as a shorter key is below a longer one it is a prefix of, and
//! equal to a zero byte, which ties and is settled by the plain comparison). After it, the
//! windows tie and the plain comparison decides. Property-tested against the plain sort.

/// The plain order of pairs: by key bytes, a key's times rising (the key index's order).
fn plain_order(a: &Pair<'_>, b: &Pair<'_>) -> std::cmp::Ordering {
    a.0.cmp(b.0).then(a.1.cmp(&b.1))
}

/// A key and its event time, as the state writer sorts them.
pub(super) type Pair<'k> = (&'k [u8], i64);

/// Fewest pairs a part of [`split_indices_by_key_range`] is meant to hold: below that, a thread's
/// start and a file of its own cost more than sorting and writing the pairs on one thread.
pub(super) const MIN_PART: usize = 1 << 15;

/// Splits the pairs of `pairs` whose time is at or above `floor` into at most `parts`
/// groups whose key ranges do not overlap, in key-index order (every key of a group below
/// every key of the next), so that each group can be sorted and written on a thread of its
/// own and the files together are the one sorted file. Equal keys always fall in the same
/// group. The groups are indices into `pairs` (a [`Subset`] each), written into `groups`,
/// whose vectors keep their memory from one call to the next: no pair is copied, and the
/// index lists, the largest memory a split takes, are not taken again. Returns how many
/// groups hold indices (the first ones; fewer than two means no split: the kept pairs are
/// too few, under [`MIN_PART`] a group, or their keys do not spread). `None` when `pairs`
/// holds more pairs than a `u32` indexes.
///
/// How: the groups' bounds are quantiles of a sample of the kept pairs' sort keys (the
/// windows of the module documentation, after the prefix all pairs share), and a pair's
/// group is the number of bounds at or below its window. Why the groups are ordered: the
/// window never decreases along the key order (the module's invariant), so a pair in a lower
/// group has a smaller window, hence a smaller key.
pub(super) fn split_indices_by_key_range<P: Pairs + ?Sized>(
    pairs: &P,
    floor: i64,
    parts: usize,
    groups: &mut Vec<Vec<u32>>,
) -> Option<usize> {
    u32::try_from(pairs.count()).ok()?;
    for g in groups.iter_mut() {
        g.clear();
    }
    if split_parts(pairs.count(), parts) < 2 {
        // Too few pairs, kept or not (a write asked for one part, say): no pass over them.
        return Some(0);
    }
    let keep = |time: i64| time >= floor;
    // Split by the kept pairs only: pairs the floor drops neither make a split worth its
    // threads nor place its bounds.
    let kept = (0..pairs.count())
        .filter(|&i| keep(pairs.pair(i).1))
        .count();
    let parts = split_parts(kept, parts);
    if parts < 2 {
        return Some(0);
    }
    // Over every pair, kept or not: a prefix they all share, the kept ones share.
    let skip = shared_prefix_len(pairs);
    let Some(bounds) = range_bounds(pairs, skip, parts, kept, keep) else {
        return Some(0);
    };
    if groups.len() <= bounds.len() {
        groups.resize_with(bounds.len() + 1, Vec::new);
    }
    for i in 0..pairs.count() {
        let (key, time) = pairs.pair(i);
        if keep(time) {
            // `i` fits: the count was checked against `u32` above.
            groups[group_of(&bounds, window(key, skip))].push(i as u32);
        }
    }
    // Empty groups go last, so the first ones are used (none is expected to be empty: each
    // bound is a kept pair's window above the smallest sampled).
    groups[..=bounds.len()].sort_by_key(Vec::is_empty);
    Some(groups.iter().take_while(|g| !g.is_empty()).count())
}

/// The parts a split of `pairs` pairs into at most `parts` can have, [`MIN_PART`] pairs a
/// part at least: fewer than two means no split.
fn split_parts(pairs: usize, parts: usize) -> usize {
    parts.min(pairs / MIN_PART.max(1))
}

/// The bounds between at most `parts` (at least two) groups of the `kept` pairs of `pairs`
/// that `keep` accepts by their time ([`split_indices_by_key_range`]'s quantiles of their windows
/// after `skip` bytes), ascending and distinct, each above the smallest window sampled (so
/// no group is empty for want of pairs below it); `None` where the keys do not spread.
fn range_bounds<P: Pairs + ?Sized>(
    pairs: &P,
    skip: usize,
    parts: usize,
    kept: usize,
    keep: impl Fn(i64) -> bool,
) -> Option<Vec<u64>> {
    let step = (kept / (64 * parts)).max(1);
    let mut sample: Vec<u64> = (0..pairs.count())
        .map(|i| pairs.pair(i))
        .filter(|&(_, time)| keep(time))
        .step_by(step)
        .map(|(key, _)| window(key, skip))
        .collect();
    sample.sort_unstable();
    let first = *sample.first()?;
    let mut bounds: Vec<u64> = (1..parts)
        .map(|j| sample[j * sample.len() / parts])
        .collect();
    // A bound at the smallest window would leave the first group empty, equal bounds one
    // between them.
    bounds.dedup();
    bounds.retain(|&b| b > first);
    (!bounds.is_empty()).then_some(bounds)
}

/// The group of a pair whose window is `w`: the number of bounds at or below it.
fn group_of(bounds: &[u64], w: u64) -> usize {
    bounds.partition_point(|&b| b <= w)
}

/// Some of a [`Pairs`]'s pairs, by index (a group of [`split_indices_by_key_range`]): sorted
/// and written by a [`KeyOrder`] like any pairs, without a copy of them.
pub(super) struct Subset<'a, P: ?Sized> {
    /// All the pairs.
    pub(super) pairs: &'a P,
    /// Which of `pairs` are in this subset (indices into it).
    pub(super) indices: &'a [u32],
}

impl<P: Pairs + ?Sized> Pairs for Subset<'_, P> {
    fn count(&self) -> usize {
        self.indices.len()
    }
    fn pair(&self, i: usize) -> (&[u8], i64) {
        self.pairs.pair(self.indices[i] as usize)
    }
}

/// A pair as [`for_each_newest_in_key_order`] sorts it: the 16 bytes of its key after the
/// shared prefix (big-endian, zero-padded), the key's length, the pair's index and time. 32
/// bytes, the key inline: where it fits, the sorted entries alone give each key back, in
/// order, without a read of the pair (a cache miss per key in a delta of a million).
#[derive(Clone, Copy)]
struct Entry {
    hi: u64,
    lo: u64,
    len: u32,
    index: u32,
    time: i64,
}

impl Entry {
    /// True when the entry carries its whole key (it ends within the 16 bytes after the
    /// `skip` bytes every key of the sort shares), so the pair need not be read back.
    fn inline(&self, skip: usize) -> bool {
        self.len as usize <= skip + 16
    }
}

/// Pairs the sort reads by index: a delta as a slice of pairs, or packed (the state writer's
/// gathered keys, sorted where they lie, without a vector of pairs built for them).
pub(super) trait Pairs {
    /// How many pairs.
    fn count(&self) -> usize;
    /// The `i`th pair (`i < count()`).
    fn pair(&self, i: usize) -> (&[u8], i64);
}

impl Pairs for [Pair<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn pair(&self, i: usize) -> (&[u8], i64) {
        self[i]
    }
}

impl Pairs for super::PackedKeys {
    fn count(&self) -> usize {
        self.len()
    }
    fn pair(&self, i: usize) -> (&[u8], i64) {
        self.get(i)
    }
}

/// Calls `put` once per distinct key of `pairs`, in key-index byte order, with its newest
/// time (the last of its run once sorted with times rising); returns how many keys it was
/// called with. The order and the times are exactly those of sorting plainly
/// ([`plain_order`]) and keeping the last pair of each key (property-tested).
pub(super) fn for_each_newest_in_key_order<E>(
    pairs: &[Pair<'_>],
    mut put: impl FnMut(&[u8], i64) -> Result<(), E>,
) -> Result<usize, E> {
    let mut order = KeyOrder::default();
    if order.sort(pairs, None) {
        return order.for_each_newest(pairs, put);
    }
    // Not a delta the writer gathers (it writes every 4M keys): the plain way.
    let mut sorted = pairs.to_vec();
    sorted.sort_unstable_by(plain_order);
    let mut n = 0;
    for (i, &(key, time)) in sorted.iter().enumerate() {
        if sorted.get(i + 1).is_none_or(|next| next.0 != key) {
            put(key, time)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The key order of a set of pairs, in memory kept from one sort to the next: the state
/// writer sorts every second's keys with one of these, so its entries (32 bytes a key, tens
/// of MB) are not fresh memory each time (README, "Dedup's cost").
///
/// Why not a sort of indices by window (this module's first form): the pairs and then their
/// key bytes are read back
/// in sorted, hence random, order: two cache misses per key in the state writer's deltas.
/// Here the keys that end within 16 bytes after the prefix all pairs share are carried
/// inline in the sorted entries ([`Entry`]) and rebuilt from them; only longer keys are read
/// back.
///
/// Invariant (why the order is the plain one): all keys share the skipped prefix. Two keys
/// whose 16 padded bytes differ are ordered by them (two windows: the module documentation). Where they tie and both keys end within them, the shorter is the
/// prefix of the other (the padding is zeros), so length decides; where either is longer,
/// the plain comparison does.
#[derive(Default)]
pub(super) struct KeyOrder {
    /// The sorted entries of the last [`KeyOrder::sort`].
    entries: Vec<Entry>,
    /// The prefix every pair of the last sort shares.
    skip: usize,
    /// Pairs the last sort was given (kept or not): what its memory is measured against.
    given: usize,
}

impl KeyOrder {
    /// Sorts the pairs whose time is at or above `floor` (all when `None`). False, and nothing
    /// sorted, when there are more pairs than a `u32` indexes (the caller sorts them plainly).
    pub(super) fn sort<P: Pairs + ?Sized>(&mut self, pairs: &P, floor: Option<i64>) -> bool {
        let entries = &mut self.entries;
        entries.clear();
        let count = pairs.count();
        self.given = count;
        if u32::try_from(count).is_err() {
            return false;
        }
        // Over every pair, kept or not: a prefix they all share, the kept ones share.
        let skip = shared_prefix_len(pairs);
        self.skip = skip;
        let floor = floor.unwrap_or(i64::MIN);
        entries.reserve(count);
        entries.extend((0..count).filter_map(|index| {
            let (key, time) = pairs.pair(index);
            // `index` fits: the count was checked against `u32` above; so does a key's
            // length capped there.
            (time >= floor).then(|| Entry {
                hi: window(key, skip),
                lo: window(key, skip + 8),
                len: key.len().min(u32::MAX as usize) as u32,
                index: index as u32,
                time,
            })
        }));
        // By the 16 bytes first, with the cheapest comparison (most keys differ there), then
        // each run of equal 16 bytes (a key given again, or keys longer than them) by the rest.
        entries.sort_unstable_by_key(|e| (u128::from(e.hi) << 64) | u128::from(e.lo));
        let rest = |a: &Entry, b: &Entry| {
            if a.inline(skip) && b.inline(skip) {
                a.len.cmp(&b.len)
            } else {
                pairs
                    .pair(a.index as usize)
                    .0
                    .cmp(pairs.pair(b.index as usize).0)
            }
            .then(a.time.cmp(&b.time))
        };
        for run in entries.chunk_by_mut(|a, b| (a.hi, a.lo) == (b.hi, b.lo)) {
            if run.len() > 1 {
                run.sort_unstable_by(rest);
            }
        }
        true
    }

    /// True when the last sort kept no pair.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Calls `put` once per distinct key of the last sort, in key-index byte order, with its
    /// newest time; returns how many keys it was called with. `pairs` must be the pairs
    /// sorted last.
    pub(super) fn for_each_newest<P: Pairs + ?Sized, E>(
        &self,
        pairs: &P,
        mut put: impl FnMut(&[u8], i64) -> Result<(), E>,
    ) -> Result<usize, E> {
        let entries = &self.entries;
        let Some(first) = entries.first() else {
            return Ok(0);
        };
        let skip = self.skip;
        let same_key = |a: &Entry, b: &Entry| {
            (a.hi, a.lo, a.len) == (b.hi, b.lo, b.len)
                && (a.inline(skip)
                    || pairs.pair(a.index as usize).0 == pairs.pair(b.index as usize).0)
        };
        let mut key = pairs.pair(first.index as usize).0[..skip].to_vec();
        let mut n = 0;
        for (i, e) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| same_key(e, next)) {
                continue;
            }
            if e.inline(skip) {
                key.truncate(skip);
                key.extend_from_slice(&e.hi.to_be_bytes());
                key.extend_from_slice(&e.lo.to_be_bytes());
                key.truncate(e.len as usize);
                put(&key, e.time)?;
            } else {
                put(pairs.pair(e.index as usize).0, e.time)?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Drops the last sort's entries, keeping their memory for the next sort: all of it while
    /// that is at most four times the pairs the last sort was given, else twice them (as
    /// [`super::PackedKeys::clear_keeping_memory`] does).
    pub(super) fn clear(&mut self) {
        super::packed::clear_keeping_room(&mut self.entries, self.given);
    }
}

/// The length of the prefix every key of `pairs` shares.
fn shared_prefix_len<P: Pairs + ?Sized>(pairs: &P) -> usize {
    if pairs.count() == 0 {
        return 0;
    }
    let first = pairs.pair(0).0;
    let mut len = first.len();
    for key in (1..pairs.count()).map(|i| pairs.pair(i).0) {
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
        keys_with_suffixes_shorter_than(14)
    }

    /// Keys of any length around the 16 inline bytes, sharing prefixes, with zero bytes; half
    /// the cases drawn from a small pool, so that keys come back, long ones included, and
    /// some pool keys share a 16-byte head, so that long keys tie in their inline bytes and
    /// only the whole key orders them.
    fn keys_of_any_length() -> impl Strategy<Value = Vec<(Vec<u8>, i64)>> {
        let prefix =
            proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), any::<u8>()], 0..12);
        let head = prop_oneof![Just(Vec::new()), Just(vec![1u8; 16])];
        let suffix =
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8)], 0..30);
        let pool =
            proptest::collection::vec((head, suffix).prop_map(|(h, s)| [h, s].concat()), 1..12);
        let pooled = (prefix, pool).prop_flat_map(|(p, pool)| {
            proptest::collection::vec((proptest::sample::select(pool), -3i64..3), 0..200).prop_map(
                move |v| {
                    v.into_iter()
                        .map(|(s, t)| ([p.clone(), s].concat(), t))
                        .collect()
                },
            )
        });
        prop_oneof![keys_with_suffixes_shorter_than(30).boxed(), pooled.boxed()]
    }

    /// A shared prefix (up to 11 bytes), then up to `suffix_max - 1` bytes from a few
    /// distinct ones (zeros among them); times from a few.
    fn keys_with_suffixes_shorter_than(
        suffix_max: usize,
    ) -> impl Strategy<Value = Vec<(Vec<u8>, i64)>> {
        let prefix =
            proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), any::<u8>()], 0..12);
        let suffix = proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8)],
            0..suffix_max,
        );
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

    /// The drawn pairs repeated, at least `copies` times and until there are enough to be
    /// split in `parts` ([`MIN_PART`] a group).
    fn enough_to_split(pairs: &[(Vec<u8>, i64)], copies: usize, parts: usize) -> Vec<Pair<'_>> {
        pairs
            .iter()
            .cycle()
            .take(pairs.len() * copies.max(MIN_PART * parts / pairs.len().max(1) + 1))
            .map(|(k, t)| (k.as_slice(), *t))
            .collect()
    }

    /// Checks that `groups`, none empty, each sorted, joined in order, are `plain` (sorted
    /// plainly): no two groups overlap or share a key.
    fn assert_joined_groups_are<'k>(
        groups: impl IntoIterator<Item = Vec<Pair<'k>>>,
        plain: &[Pair<'k>],
    ) -> Result<(), TestCaseError> {
        let mut joined: Vec<Pair> = Vec::new();
        for mut g in groups {
            prop_assert!(!g.is_empty());
            g.sort_by(plain_order);
            if let (Some(last), Some(first)) = (joined.last(), g.first()) {
                prop_assert!(last.0 < first.0, "groups overlap or share a key");
            }
            joined.extend(g);
        }
        prop_assert_eq!(&joined, &plain);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The index split, with its groups' memory kept from a call before (here of more
        /// pairs and more parts), holds each pair at or above the floor once and no other;
        /// its groups, each sorted, joined in order, are the plain sort of those pairs, equal
        /// keys in one group; it splits in at most the parts asked.
        #[test]
        fn index_groups_sorted_and_joined_are_the_plain_sort_of_the_kept_pairs(
            pairs in keys(),
            copies in 1usize..400,
            parts in 1usize..6,
            floor in -3i64..3,
        ) {
            let big = enough_to_split(&pairs, copies, parts);
            let mut groups = Vec::new();
            // An earlier, bigger call leaves stale indices that must not survive.
            let earlier: Vec<Pair> = (0..MIN_PART * 6)
                .map(|i| (&b"stale-key-0123456789"[i % 20..], -5))
                .collect();
            split_indices_by_key_range(earlier.as_slice(), i64::MIN, 6, &mut groups);
            let used = split_indices_by_key_range(big.as_slice(), floor, parts, &mut groups)
                .expect("the count fits a u32");
            prop_assert!(used <= parts.max(1));
            if used < 2 {
                // Not split: the caller sorts the kept pairs whole.
                prop_assert!(groups.iter().skip(1).all(Vec::is_empty));
                return Ok(());
            }
            prop_assert!(groups[used..].iter().all(Vec::is_empty));
            let mut kept: Vec<Pair> = big.iter().copied().filter(|p| p.1 >= floor).collect();
            kept.sort_by(plain_order);
            let parts = groups[..used]
                .iter()
                .map(|g| g.iter().map(|&i| big[i as usize]).collect());
            assert_joined_groups_are(parts, &kept)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Each distinct key once, in the plain byte order, with its newest time: what sorting
        /// plainly and keeping each key's last pair gives.
        #[test]
        fn newest_in_key_order_is_the_plain_sort_deduplicated(pairs in keys_of_any_length()) {
            let ours_in: Vec<Pair> = pairs.iter().map(|(k, t)| (k.as_slice(), *t)).collect();
            let mut plain = ours_in.clone();
            plain.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
            let mut want: Vec<(Vec<u8>, i64)> = Vec::new();
            for (i, &(k, t)) in plain.iter().enumerate() {
                if plain.get(i + 1).is_none_or(|next| next.0 != k) {
                    want.push((k.to_vec(), t));
                }
            }
            let mut got: Vec<(Vec<u8>, i64)> = Vec::new();
            let n = for_each_newest_in_key_order(&ours_in, |k, t| {
                got.push((k.to_vec(), t));
                Ok::<(), ()>(())
            })
            .unwrap();
            prop_assert_eq!(n, want.len());
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// One `KeyOrder` used for two sorts in turn (its memory kept between them), over
        /// packed keys and a floor: each gives the distinct keys at or above the floor, in
        /// the plain order, with their newest times.
        #[test]
        fn a_reused_key_order_over_packed_keys_is_the_plain_sort_above_the_floor(
            first in keys_of_any_length(),
            second in keys_of_any_length(),
            floors in (proptest::option::of(-3i64..4), proptest::option::of(-3i64..4)),
        ) {
            let mut order = KeyOrder::default();
            for (pairs, floor) in [(&first, floors.0), (&second, floors.1)] {
                let mut packed = super::super::PackedKeys::default();
                for (k, t) in pairs {
                    packed.push(k, *t);
                }
                let mut plain: Vec<(&[u8], i64)> = pairs
                    .iter()
                    .map(|(k, t)| (k.as_slice(), *t))
                    .filter(|&(_, t)| floor.is_none_or(|f| t >= f))
                    .collect();
                plain.sort_by(plain_order);
                let want: Vec<(Vec<u8>, i64)> = plain
                    .iter()
                    .enumerate()
                    .filter(|&(i, &(k, _))| plain.get(i + 1).is_none_or(|next| next.0 != k))
                    .map(|(_, &(k, t))| (k.to_vec(), t))
                    .collect();
                prop_assert!(order.sort(&packed, floor));
                prop_assert_eq!(order.is_empty(), want.is_empty());
                let mut got = Vec::new();
                let n = order
                    .for_each_newest(&packed, |k, t| {
                        got.push((k.to_vec(), t));
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                prop_assert_eq!(n, want.len());
                prop_assert_eq!(got, want);
                order.clear();
            }
        }
    }

    /// Keys that spread are split into as many groups as asked, of similar sizes.
    #[test]
    fn spread_keys_split_into_the_parts_asked() {
        let keys: Vec<Vec<u8>> = (0..4 * MIN_PART as u64)
            .map(|i| {
                format!("order-{:012}", i.wrapping_mul(0x9E37_79B9) % 1_000_000_007).into_bytes()
            })
            .collect();
        let pairs: Vec<(&[u8], i64)> = keys.iter().map(|k| (k.as_slice(), 0)).collect();
        let split = |pairs: &[Pair], parts: usize| {
            let mut groups = Vec::new();
            let n = split_indices_by_key_range(pairs, i64::MIN, parts, &mut groups).unwrap();
            groups.truncate(n);
            groups
        };
        let groups = split(&pairs, 2);
        assert_eq!(groups.len(), 2);
        assert!(
            groups.iter().all(|g| g.len() > MIN_PART),
            "{:?}",
            groups.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(split(&pairs, 1).len() < 2);
        assert!(split(&pairs[..MIN_PART], 2).len() < 2, "too few to split");
        let same: Vec<(&[u8], i64)> = vec![(b"k".as_slice(), 1); 4 * MIN_PART];
        assert!(split(&same, 4).len() < 2, "one key does not spread");
    }

    #[test]
    fn the_shared_prefix_and_the_window() {
        let pairs: Vec<(&[u8], i64)> = vec![(b"order-0012", 0), (b"order-0099", 0), (b"order-", 0)];
        assert_eq!(shared_prefix_len(pairs.as_slice()), 6);
        assert_eq!(shared_prefix_len(&pairs[..2]), 8);
        assert_eq!(shared_prefix_len::<[Pair]>(&[]), 0);
        assert_eq!(
            window(b"order-0012", 8),
            u64::from_be_bytes(*b"12\0\0\0\0\0\0")
        );
        assert_eq!(window(b"ab", 5), 0);
    }
}
