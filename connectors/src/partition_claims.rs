//! Per-partition claims in the table: what fences workers that share one pipeline.
//!
//! When several workers split a pipeline's partitions (see [`crate::kafka_group`]), each
//! commit also carries, for every partition it covers (read at least one offset of; a run's
//! first commit: every partition it holds a position for), a Delta
//! `txn` action `{appId: "<pipeline>/partition/<topic>/<partition>", version: next offset}`.
//! A commit covering partition `p` from offset `s` is made only when the table's claim of `p`
//! is `s` (or `p` has no claim yet), and it lands only at the version right after the state
//! that was checked (the sink's put-if-absent commits). So the claims form, per partition, a
//! chain of contiguous offset ranges: no two commits ever cover the same offsets of a
//! partition, whichever workers wrote them and whatever the group did in between; a worker
//! that lost a partition (revoked, paused past its session) has its stale commit refused with
//! [`PartitionTaken`]. A newly assigned partition starts at its claim, whoever wrote it.
//!
//! Wire shape: the txn action of the Delta protocol; `version` is the next offset to read
//! (an `i64`, never negative). Readers that do not know Tidemark see ordinary app ids.

use std::collections::BTreeMap;

use crate::delta::EpochCommitInfo;
use crate::record::TopicPartition;

/// The txn app id under which the table records `tp`'s claim for `pipeline`.
pub fn claim_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("{pipeline}/partition/{}/{}", tp.topic, tp.partition)
}

/// One partition a commit covers: read from `start` (`None`: from the partition's beginning,
/// no position known) up to `end` (the next offset to read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRange {
    /// The partition.
    pub partition: TopicPartition,
    /// Where the commit's range starts.
    pub start: Option<i64>,
    /// Where it ends: the claim the commit writes.
    pub end: i64,
}

/// The partitions `info` claims: those whose end position differs from their start; with
/// `adopt`, every partition it has a position for, read or not (a run's first commit: so a
/// partition that stays quiet still gets a claim, and its start never depends on older
/// history than the claims).
pub fn claimed_ranges(info: &EpochCommitInfo, adopt: bool) -> Vec<ClaimedRange> {
    info.end_positions
        .iter()
        .filter_map(|(tp, end)| {
            let start = info.start_positions.get(&tp.topic, tp.partition);
            (adopt || start != Some(end)).then_some(ClaimedRange {
                partition: tp,
                start,
                end,
            })
        })
        .collect()
}

/// The worker id of `app_id` when it is the txn appId of a worker of `pipeline`
/// (`<pipeline>.<worker>`; worker ids hold no `.`, so the workers of a pipeline named
/// `<pipeline>.x` are not taken for this one's).
pub fn worker_of<'a>(pipeline: &str, app_id: &'a str) -> Option<&'a str> {
    let worker = app_id.strip_prefix(pipeline)?.strip_prefix('.')?;
    (!worker.is_empty() && !worker.contains('.')).then_some(worker)
}

/// A partition's claim as the table holds it, and the worker whose commit wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClaimHolder {
    /// The partition (`topic/partition`).
    pub partition: String,
    /// The next offset the claim records.
    pub next_offset: i64,
    /// The worker whose newest commit records that offset for the partition (its id after
    /// `<pipeline>.`); `None` when no commit of the history read does.
    pub worker: Option<String>,
    /// The table version of that commit.
    pub table_version: Option<u64>,
}

/// Each claim of `claims` (the table's `txn` claims; `None`: no claim), with the worker of the
/// newest of `commits` (newest first: table version and commitInfo; workers of `pipeline` have
/// commitInfo pipeline ids `<pipeline>.<id>`) whose end position for the partition is the
/// claimed offset.
pub fn holders<'a>(
    pipeline: &str,
    claims: &BTreeMap<TopicPartition, Option<i64>>,
    commits: impl IntoIterator<Item = (u64, &'a EpochCommitInfo)> + Clone,
) -> Vec<ClaimHolder> {
    claims
        .iter()
        .filter_map(|(tp, claim)| {
            let next = (*claim)?;
            let writer = commits.clone().into_iter().find_map(|(version, info)| {
                wrote_claim(pipeline, info, &tp.topic, tp.partition, next)
                    .then(|| Some((worker_of(pipeline, &info.pipeline_id)?.to_string(), version)))?
            });
            Some(ClaimHolder {
                partition: tp.to_string(),
                next_offset: next,
                worker: writer.as_ref().map(|(w, _)| w.clone()),
                table_version: writer.map(|(_, v)| v),
            })
        })
        .collect()
}

/// The partitions the workers of `pipeline` recorded positions for in `commits`.
pub fn partitions_of_workers<'a>(
    pipeline: &str,
    commits: impl IntoIterator<Item = &'a EpochCommitInfo>,
) -> std::collections::BTreeSet<TopicPartition> {
    commits
        .into_iter()
        .filter(|c| worker_of(pipeline, &c.pipeline_id).is_some())
        .flat_map(|c| c.end_positions.iter().map(|(tp, _)| tp))
        .collect()
}

/// Per claimed partition, the dedup floor recorded by the commit that wrote its claim: the
/// newest of `commits` (newest first) from a worker of `pipeline` whose end position for the
/// partition is the claim. The floor is the partition's `dedup_floor` there, else the commit's
/// watermark (`None`: that commit kept the partition's whole history in state). A partition
/// whose claim-writing commit is not among `commits` is absent: the caller decides.
pub fn dedup_floors<'a>(
    pipeline: &str,
    claims: &crate::record::Positions,
    commits: impl IntoIterator<Item = &'a EpochCommitInfo>,
) -> BTreeMap<TopicPartition, Option<i64>> {
    let mut floors = BTreeMap::new();
    let wanted = claims.iter().count();
    for info in commits {
        if floors.len() == wanted {
            break;
        }
        for (tp, claim) in claims.iter() {
            if floors.contains_key(&tp)
                || !wrote_claim(pipeline, info, &tp.topic, tp.partition, claim)
            {
                continue;
            }
            let recorded = info
                .partitions
                .iter()
                .find(|p| p.topic == tp.topic && p.partition == tp.partition)
                .and_then(|p| p.dedup_floor);
            floors.insert(tp, recorded.or(info.watermark));
        }
    }
    floors
}

/// Whether `info` is the commit that wrote a claim of `next` for `topic/partition`: a commit of
/// a worker of `pipeline` whose end position for the partition is `next`.
fn wrote_claim(
    pipeline: &str,
    info: &EpochCommitInfo,
    topic: &str,
    partition: i32,
    next: i64,
) -> bool {
    worker_of(pipeline, &info.pipeline_id).is_some()
        && info.end_positions.get(topic, partition) == Some(next)
}

/// A commit was refused: another writer claimed a partition it covers since this worker took
/// its start position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition {partition} was committed by another worker of the pipeline up to offset {claimed}, but this commit starts it at {}: this worker no longer owns it (revoked, or paused past its session timeout); the commit is refused and the partition is left to its owner", .start.map_or("its beginning".to_string(), |s| format!("offset {s}")))]
pub struct PartitionTaken {
    /// The partition.
    pub partition: TopicPartition,
    /// The table's claim (next offset) found.
    pub claimed: i64,
    /// Where the refused commit started it.
    pub start: Option<i64>,
}

/// Checks `ranges` against the table's claims (`claims[tp]`: the claim found, `None` for
/// none): a range may be committed only where it starts at the claim, or the partition has no
/// claim yet. Pure: the sink gathers the claims of the state it is about to commit on.
pub fn check(
    ranges: &[ClaimedRange],
    claims: &BTreeMap<TopicPartition, Option<i64>>,
) -> Result<(), PartitionTaken> {
    for r in ranges {
        if let Some(Some(claimed)) = claims.get(&r.partition) {
            if r.start != Some(*claimed) {
                return Err(PartitionTaken {
                    partition: r.partition.clone(),
                    claimed: *claimed,
                    start: r.start,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    #[test]
    fn a_workers_app_id_names_one_pipeline() {
        assert_eq!(worker_of("p", "p.w1"), Some("w1"));
        assert_eq!(worker_of("p", "p.x.w1"), None, "a worker of pipeline p.x");
        assert_eq!(worker_of("p.x", "p.x.w1"), Some("w1"));
        assert_eq!(worker_of("p", "p"), None);
        assert_eq!(worker_of("p", "p."), None);
        assert_eq!(worker_of("p", "pq.w1"), None);
    }

    #[test]
    fn app_ids_name_pipeline_topic_and_partition() {
        assert_eq!(claim_app_id("orders", &tp(3)), "orders/partition/t/3");
    }

    #[test]
    fn a_commit_claims_only_partitions_it_read() {
        let mut info: EpochCommitInfo = serde_json::from_str(
            r#"{"pipeline_id":"p","epoch":1,"start_positions":{},"end_positions":{},"records_read":0,"rows_written":0,"records_skipped":0}"#,
        )
        .unwrap();
        info.start_positions.set("t", 0, 5);
        info.start_positions.set("t", 1, 7);
        info.end_positions = info.start_positions.clone();
        info.end_positions.set("t", 1, 9);
        info.end_positions.set("t", 2, 4);
        assert_eq!(
            claimed_ranges(&info, true).len(),
            3,
            "adopting claims all three"
        );
        assert_eq!(
            claimed_ranges(&info, false),
            vec![
                ClaimedRange {
                    partition: tp(1),
                    start: Some(7),
                    end: 9
                },
                ClaimedRange {
                    partition: tp(2),
                    start: None,
                    end: 4
                },
            ]
        );
    }

    fn commit(worker: &str, ranges: &[(i32, Option<i64>, i64)]) -> EpochCommitInfo {
        let mut info: EpochCommitInfo = serde_json::from_str(
            r#"{"pipeline_id":"p","epoch":1,"start_positions":{},"end_positions":{},"records_read":0,"rows_written":0,"records_skipped":0}"#,
        )
        .unwrap();
        info.pipeline_id = worker.to_string();
        for (p, start, end) in ranges {
            if let Some(s) = start {
                info.start_positions.set("t", *p, *s);
            }
            info.end_positions.set("t", *p, *end);
        }
        info
    }

    #[test]
    fn a_claims_floor_comes_from_the_newest_commit_that_wrote_the_claim() {
        let mut newest = commit("p.w2", &[(0, Some(5), 9), (1, Some(3), 3)]);
        newest.watermark = Some(500);
        newest.partitions = vec![crate::delta::PartitionPosition {
            cluster_id: None,
            topic: "t".into(),
            topic_id: None,
            partition: 1,
            next_offset: 3,
            last_timestamp_ms: None,
            dedup_floor: Some(700),
        }];
        let mut older = commit("p.w1", &[(0, Some(1), 5), (1, Some(0), 3), (2, None, 4)]);
        older.watermark = Some(100);
        let mut other_pipeline = commit("q.w1", &[(2, None, 4)]);
        other_pipeline.watermark = Some(900);
        let mut claims = crate::record::Positions::new();
        claims.set("t", 0, 9);
        claims.set("t", 1, 3);
        claims.set("t", 2, 4);
        claims.set("t", 3, 8);
        let floors = dedup_floors("p", &claims, [&other_pipeline, &newest, &older]);
        assert_eq!(
            floors.get(&tp(0)),
            Some(&Some(500)),
            "the commit's watermark"
        );
        assert_eq!(
            floors.get(&tp(1)),
            Some(&Some(700)),
            "the recorded floor wins"
        );
        assert_eq!(
            floors.get(&tp(2)),
            Some(&Some(100)),
            "another pipeline's commit never counts"
        );
        assert_eq!(floors.get(&tp(3)), None, "no commit wrote that claim");
    }

    #[test]
    fn each_claim_names_the_worker_whose_newest_commit_wrote_it() {
        let newest = commit("p.w2", &[(0, Some(5), 9), (1, Some(3), 3)]);
        let older = commit("p.w1", &[(0, None, 5), (1, None, 3)]);
        let other = commit("q.w9", &[(2, None, 50)]);
        let commits = [(7, &newest), (6, &other), (4, &older)];
        let partitions = partitions_of_workers("p", commits.iter().map(|(_, c)| *c));
        assert_eq!(partitions.len(), 2, "{partitions:?}");
        let claims = BTreeMap::from([(tp(0), Some(9)), (tp(1), Some(3)), (tp(2), None)]);
        assert_eq!(
            holders("p", &claims, commits),
            vec![
                ClaimHolder {
                    partition: "t/0".into(),
                    next_offset: 9,
                    worker: Some("w2".into()),
                    table_version: Some(7)
                },
                ClaimHolder {
                    partition: "t/1".into(),
                    next_offset: 3,
                    worker: Some("w2".into()),
                    table_version: Some(7)
                },
            ]
        );
        let unknown = BTreeMap::from([(tp(0), Some(42))]);
        assert_eq!(holders("p", &unknown, commits)[0].worker, None);
    }

    #[test]
    fn refusal_names_partition_claim_and_start() {
        let ranges = vec![ClaimedRange {
            partition: tp(1),
            start: Some(7),
            end: 9,
        }];
        let claims = BTreeMap::from([(tp(1), Some(12))]);
        let e = check(&ranges, &claims).unwrap_err();
        let msg = e.to_string();
        for want in ["t/1", "offset 12", "offset 7", "refused"] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
    }

    /// A model of workers committing ranges of one partition through the check: whatever
    /// the interleaving of stale starts, the landed ranges tile the offsets without overlap.
    #[derive(Debug, Clone)]
    struct Try {
        /// Which worker tries.
        worker: usize,
        /// How many records it read since its start.
        read: i64,
        /// Whether it first re-reads its start from the table (a newly assigned partition).
        refresh: bool,
    }

    fn tries() -> impl Strategy<Value = Vec<Try>> {
        prop::collection::vec(
            (0usize..3, 1i64..20, any::<bool>()).prop_map(|(worker, read, refresh)| Try {
                worker,
                read,
                refresh,
            }),
            1..60,
        )
    }

    proptest! {
        #[test]
        fn landed_ranges_never_overlap_and_leave_no_gap(tries in tries()) {
            let mut claim: Option<i64> = None;
            let mut starts: [Option<i64>; 3] = [None; 3];
            let mut landed: Vec<(Option<i64>, i64)> = Vec::new();
            for t in tries {
                if t.refresh {
                    starts[t.worker] = claim;
                }
                let start = starts[t.worker];
                let end = start.unwrap_or(0) + t.read;
                let ranges = vec![ClaimedRange { partition: tp(0), start, end }];
                let claims = BTreeMap::from([(tp(0), claim)]);
                match check(&ranges, &claims) {
                    Ok(()) => {
                        landed.push((start, end));
                        claim = Some(end);
                        starts[t.worker] = Some(end);
                    }
                    Err(e) => {
                        prop_assert_eq!(e.claimed, claim.unwrap_or(-1));
                        // The refused worker re-reads the claim (what the engine does).
                        starts[t.worker] = claim;
                    }
                }
            }
            let mut next = 0;
            for (start, end) in landed {
                prop_assert_eq!(start.unwrap_or(0), next);
                prop_assert!(end > next);
                next = end;
            }
            prop_assert_eq!(Some(next).filter(|n| *n > 0), claim);
        }
    }
}
