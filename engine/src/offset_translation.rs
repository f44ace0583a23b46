//! Where a partition starts on a mirrored cluster when MirrorMaker 2's offset translations are
//! at hand (pure; the records come from [`tidemark_connectors::mm2`]).
//!
//! The table's progress says, per partition, the *next offset* `N` on the old cluster: every
//! record before `N` is in the table. A start on the new cluster is safe when it is never
//! later than the new offset of the record at `N` (anything before it that is read again is
//! dropped by the dedup state rebuilt from the table). Two translations give such a start:
//!
//! - an **offset sync** `(u, d)`, `u <= N`: the record at `u` upstream is at `d` downstream,
//!   and the mirror keeps order, so the record at `N` is at `d` (if `u == N`) or after `d`
//!   (`d + 1` is safe). The sync with the greatest `u <= N` gives the nearest start (MM2's
//!   own `OffsetSyncStore::translateDownstream` does the same).
//! - a **checkpoint** of a consumer group `(u, d)`, `u <= N`: MM2 translated the group's
//!   committed offset `u` to `d`, never after the record at `u`, which is not after the one
//!   at `N`. So `d` is safe.
//!
//! Of the candidates the latest start wins (all are safe; the latest re-reads least). A
//! candidate outside the partition's offsets on the new cluster (`[low, high]`, e.g. a
//! translation of a deleted or recreated topic) is not used. Without any, the caller starts
//! the partition by time.

use std::collections::BTreeMap;

use serde::Serialize;
use tidemark_connectors::mm2::{Checkpoint, OffsetSync};

/// How a partition's start on the new cluster was found (in the failover report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMethod {
    /// From MirrorMaker 2's offset translations.
    Translated,
    /// By time: the last committed record's timestamp minus the margin (or `--from-time`).
    ByTime,
    /// The table never read the partition: from its beginning on the new cluster.
    FromBeginning,
}

impl StartMethod {
    /// The word the report prints.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Translated => "translated",
            StartMethod::ByTime => "by time",
            StartMethod::FromBeginning => "from the beginning",
        }
    }
}

/// Which translation gave a start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Translation {
    /// `offset_sync` or `checkpoint`.
    pub via: &'static str,
    /// The translation's upstream offset (old cluster), `<=` the table's next offset.
    pub upstream_offset: i64,
    /// Its downstream offset (new cluster).
    pub downstream_offset: i64,
}

/// MirrorMaker 2's translations for the topics a pipeline reads, by (topic, partition).
#[derive(Debug, Clone, Default)]
pub struct Translations {
    /// Offset syncs: (upstream, downstream), in the order read.
    syncs: BTreeMap<(String, i32), Vec<(i64, i64)>>,
    /// Checkpoints of the chosen group: (upstream, downstream), in the order read.
    checkpoints: BTreeMap<(String, i32), Vec<(i64, i64)>>,
}

impl Translations {
    /// The translations among `syncs` and those `checkpoints` of consumer group `group`.
    /// Topics are matched by name: the pipeline's topics must be named the same on both
    /// clusters (MM2's `IdentityReplicationPolicy`, or a mirror keeping names).
    pub fn new(syncs: &[OffsetSync], checkpoints: &[Checkpoint], group: Option<&str>) -> Self {
        let mut t = Self::default();
        for s in syncs {
            t.syncs
                .entry((s.topic.clone(), s.partition))
                .or_default()
                .push((s.upstream_offset, s.downstream_offset));
        }
        for c in checkpoints
            .iter()
            .filter(|c| Some(c.group.as_str()) == group)
        {
            t.checkpoints
                .entry((c.topic.clone(), c.partition))
                .or_default()
                .push((c.upstream_offset, c.downstream_offset));
        }
        t
    }

    /// True when there is no translation at all.
    pub fn is_empty(&self) -> bool {
        self.syncs.is_empty() && self.checkpoints.is_empty()
    }

    /// The safe start on the new cluster for the partition whose next offset on the old one
    /// is `next_offset`, and the translation it came from; `None` when no translation applies
    /// within `[low, high]` (the partition's offsets on the new cluster).
    pub fn translate(
        &self,
        topic: &str,
        partition: i32,
        next_offset: i64,
        low: i64,
        high: i64,
    ) -> Option<(i64, Translation)> {
        let key = (topic.to_string(), partition);
        let nearest = |list: Option<&Vec<(i64, i64)>>| {
            // The greatest upstream offset <= next_offset; of equal ones the last read.
            list?.iter().filter(|(u, _)| *u <= next_offset).fold(
                None,
                |best: Option<(i64, i64)>, &(u, d)| match best {
                    Some((bu, _)) if bu > u => best,
                    _ => Some((u, d)),
                },
            )
        };
        let mut candidates = Vec::new();
        if let Some((u, d)) = nearest(self.syncs.get(&key)) {
            let start = if u == next_offset {
                d
            } else {
                d.saturating_add(1)
            };
            candidates.push((start, "offset_sync", u, d));
        }
        if let Some((u, d)) = nearest(self.checkpoints.get(&key)) {
            candidates.push((d, "checkpoint", u, d));
        }
        candidates
            .into_iter()
            .filter(|(start, ..)| (low..=high).contains(start))
            .max_by_key(|(start, ..)| *start)
            .map(|(start, via, u, d)| {
                (
                    start,
                    Translation {
                        via,
                        upstream_offset: u,
                        downstream_offset: d,
                    },
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sync(p: i32, u: i64, d: i64) -> OffsetSync {
        OffsetSync {
            topic: "o".into(),
            partition: p,
            upstream_offset: u,
            downstream_offset: d,
        }
    }

    fn cp(group: &str, p: i32, u: i64, d: i64) -> Checkpoint {
        Checkpoint {
            group: group.into(),
            topic: "o".into(),
            partition: p,
            upstream_offset: u,
            downstream_offset: d,
            metadata: String::new(),
        }
    }

    #[test]
    fn the_nearest_sync_at_or_before_the_next_offset_gives_the_start() {
        let t = Translations::new(
            &[sync(0, 0, 5), sync(0, 50, 55), sync(0, 100, 105)],
            &[],
            None,
        );
        // Exactly synced: that record's offset.
        assert_eq!(t.translate("o", 0, 50, 0, 1000).unwrap().0, 55);
        // Between syncs: just after the nearest one before.
        let (start, tr) = t.translate("o", 0, 99, 0, 1000).unwrap();
        assert_eq!(start, 56);
        assert_eq!(tr.via, "offset_sync");
        assert_eq!((tr.upstream_offset, tr.downstream_offset), (50, 55));
        // A never-read partition (next offset 0) is translated by a sync of offset 0.
        assert_eq!(t.translate("o", 0, 0, 0, 1000).unwrap().0, 5);
        // Other partitions and topics have none.
        assert!(t.translate("o", 1, 99, 0, 1000).is_none());
        assert!(t.translate("x", 0, 99, 0, 1000).is_none());
        // A start outside the partition's offsets is not used.
        assert!(t.translate("o", 0, 99, 60, 1000).is_none());
        assert!(t.translate("o", 0, 200, 0, 100).is_none());
    }

    #[test]
    fn checkpoints_count_for_the_named_group_only_and_the_latest_safe_start_wins() {
        let cps = [cp("g", 0, 40, 44), cp("other", 0, 90, 95)];
        let t = Translations::new(&[sync(0, 0, 5)], &cps, Some("g"));
        let (start, tr) = t.translate("o", 0, 90, 0, 1000).unwrap();
        assert_eq!((start, tr.via), (44, "checkpoint"));
        // A checkpoint after the table's position is not safe.
        let t = Translations::new(&[], &[cp("g", 0, 91, 96)], Some("g"));
        assert!(t.translate("o", 0, 90, 0, 1000).is_none());
        // No group named: checkpoints are not used.
        assert!(Translations::new(&[], &cps, None).is_empty());
    }

    proptest! {
        /// A mirror with any offset shift per record (pre-seeded, compacted): the start is
        /// never after the record at the next offset, and never before the nearest sync.
        #[test]
        fn a_translated_start_is_never_after_the_true_position(
            gaps in proptest::collection::vec(1i64..4, 1..200),
            seeded in 0i64..50,
            every in 1usize..40,
            next in 0usize..200,
        ) {
            // downstream[i]: where upstream record i landed (gaps: compaction downstream).
            let mut downstream = Vec::new();
            let mut at = seeded;
            for g in &gaps {
                downstream.push(at);
                at += g;
            }
            let high = at;
            let syncs: Vec<_> = downstream
                .iter()
                .enumerate()
                .filter(|(i, _)| i % every == 0)
                .map(|(i, d)| sync(0, i as i64, *d))
                .collect();
            let t = Translations::new(&syncs, &[], None);
            let next = next.min(downstream.len() - 1);
            let (start, tr) = t.translate("o", 0, next as i64, 0, high).unwrap();
            prop_assert!(start <= downstream[next], "start {} after the true {}", start, downstream[next]);
            prop_assert!(start > tr.downstream_offset || tr.upstream_offset == next as i64);
            prop_assert!(tr.upstream_offset <= next as i64);
            prop_assert!(next as i64 - tr.upstream_offset < every as i64);
        }
    }
}
