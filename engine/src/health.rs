//! The health rules shared by `/readyz` (a running pipeline judging itself) and
//! `tidemark status --check` (another process judging it from the checkpoint store, the WAL and
//! the broker): pure functions of [`HealthFacts`], tested on their own.
//!
//! A pipeline is *ready* when it has recovered and is committing:
//! - **commit stall**: records wait (Kafka holds records past the committed positions, or an
//!   epoch holds records not yet committed) and no commit landed for
//!   `observability.commit_stall_intervals` checkpoint intervals;
//! - **watermark stuck** (dedup only): records were read since the watermark last moved, and it
//!   has not moved for `observability.watermark_stuck_ms`.
//!
//! Idle is healthy: with nothing waiting, no commit is due and the watermark has nothing to
//! move it.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Everything the rules look at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthFacts {
    /// Recovery finished (a running pipeline) or a process holds the state lock (status).
    pub recovered: bool,
    /// Records read or readable but not committed: consumer lag plus the open epoch.
    pub records_waiting: u64,
    /// Time since the last commit was checkpointed (or, before the first one, since recovery
    /// ended).
    pub since_last_commit: Duration,
    /// How long without a commit counts as a stall while records wait.
    pub commit_stall_after: Duration,
    /// The watermark's progress, when dedup is on and a watermark exists.
    pub watermark: Option<WatermarkProgress>,
    /// How long an unmoving watermark is tolerated while records are read.
    pub watermark_stuck_after: Duration,
}

/// How the watermark moved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WatermarkProgress {
    /// Time since it last changed (or since it was first known).
    pub unchanged_for: Duration,
    /// Records read since then.
    pub records_read_since: u64,
}

/// One reason a pipeline is not ready.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Recovery has not finished, or no process runs the pipeline.
    NotRecovered,
    /// Records wait and nothing was committed for too long.
    CommitStalled {
        /// Seconds since the last commit.
        secs: f64,
        /// Records waiting.
        records_waiting: u64,
    },
    /// The watermark does not move although records arrive.
    WatermarkStuck {
        /// Seconds since it moved.
        secs: f64,
        /// Records read since.
        records_read: u64,
    },
    /// A fact could not be gathered (`tidemark status --check` only: e.g. the broker did not
    /// answer), so readiness cannot be vouched for.
    Unknown {
        /// What could not be read, and why.
        what: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotRecovered => f.write_str("not recovered (no process runs the pipeline, or recovery has not finished)"),
            Problem::CommitStalled {
                secs,
                records_waiting,
            } => write!(
                f,
                "commit stalled: no commit for {secs:.1} s while {records_waiting} record(s) wait"
            ),
            Problem::WatermarkStuck { secs, records_read } => write!(
                f,
                "watermark stuck: unchanged for {secs:.1} s while {records_read} record(s) were read"
            ),
            Problem::Unknown { what } => write!(f, "cannot tell: {what}"),
        }
    }
}

/// The verdict: ready when no problem was found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    /// Whether the pipeline is ready.
    pub ready: bool,
    /// Why not, if not.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ready {
            return f.write_str("ready: recovered and committing");
        }
        f.write_str("not ready: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Applies the rules of the module documentation.
pub fn evaluate(facts: &HealthFacts) -> Health {
    let mut problems = Vec::new();
    if !facts.recovered {
        problems.push(Problem::NotRecovered);
    }
    if facts.recovered
        && facts.records_waiting > 0
        && facts.since_last_commit > facts.commit_stall_after
    {
        problems.push(Problem::CommitStalled {
            secs: facts.since_last_commit.as_secs_f64(),
            records_waiting: facts.records_waiting,
        });
    }
    if let Some(w) = facts.watermark {
        if facts.recovered
            && w.records_read_since > 0
            && w.unchanged_for > facts.watermark_stuck_after
        {
            problems.push(Problem::WatermarkStuck {
                secs: w.unchanged_for.as_secs_f64(),
                records_read: w.records_read_since,
            });
        }
    }
    Health {
        ready: problems.is_empty(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn healthy() -> HealthFacts {
        HealthFacts {
            recovered: true,
            records_waiting: 100,
            since_last_commit: Duration::from_secs(1),
            commit_stall_after: Duration::from_secs(30),
            watermark: Some(WatermarkProgress {
                unchanged_for: Duration::from_secs(1),
                records_read_since: 10,
            }),
            watermark_stuck_after: Duration::from_secs(600),
        }
    }

    #[test]
    fn each_rule_fails_on_its_own() {
        assert!(evaluate(&healthy()).ready);
        let not_recovered = HealthFacts {
            recovered: false,
            ..healthy()
        };
        assert_eq!(evaluate(&not_recovered).problems, [Problem::NotRecovered]);
        let stalled = HealthFacts {
            since_last_commit: Duration::from_secs(31),
            ..healthy()
        };
        assert!(matches!(
            evaluate(&stalled).problems[..],
            [Problem::CommitStalled {
                records_waiting: 100,
                ..
            }]
        ));
        let stuck = HealthFacts {
            watermark: Some(WatermarkProgress {
                unchanged_for: Duration::from_secs(601),
                records_read_since: 5,
            }),
            ..healthy()
        };
        assert!(matches!(
            evaluate(&stuck).problems[..],
            [Problem::WatermarkStuck {
                records_read: 5,
                ..
            }]
        ));
        assert!(evaluate(&stuck).to_string().contains("watermark stuck"));
    }

    #[test]
    fn idle_is_healthy() {
        let idle = HealthFacts {
            records_waiting: 0,
            since_last_commit: Duration::from_secs(86_400),
            watermark: Some(WatermarkProgress {
                unchanged_for: Duration::from_secs(86_400),
                records_read_since: 0,
            }),
            ..healthy()
        };
        assert!(evaluate(&idle).ready);
    }

    proptest! {
        /// Ready exactly when none of the three conditions holds.
        #[test]
        fn ready_iff_no_rule_fires(
            recovered: bool,
            waiting in 0u64..3,
            since in 0u64..100,
            stall in 0u64..100,
            wm in proptest::option::of((0u64..100, 0u64..3)),
            stuck in 0u64..100,
        ) {
            let facts = HealthFacts {
                recovered,
                records_waiting: waiting,
                since_last_commit: Duration::from_secs(since),
                commit_stall_after: Duration::from_secs(stall),
                watermark: wm.map(|(u, r)| WatermarkProgress {
                    unchanged_for: Duration::from_secs(u),
                    records_read_since: r,
                }),
                watermark_stuck_after: Duration::from_secs(stuck),
            };
            let stalled = waiting > 0 && since > stall;
            let wm_stuck = wm.is_some_and(|(u, r)| r > 0 && u > stuck);
            let h = evaluate(&facts);
            prop_assert_eq!(h.ready, recovered && !stalled && !wm_stuck);
            prop_assert_eq!(h.ready, h.problems.is_empty());
        }
    }
}
