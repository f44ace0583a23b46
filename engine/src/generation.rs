//! Generation fencing: which writer may commit into a table after a failover (pure).
//!
//! A table's generation is a table property (`tidemark.generation`, 1 when unset); a failover
//! opens the next one with one `metaData` commit before its first epoch. Each state directory
//! remembers the generation its writer belongs to (`<state>/generation`). [`decide`] says, from
//! those numbers alone, whether a start may go on, and under which generation:
//!
//! | facts | case |
//! |---|---|
//! | a failover start | [`GenerationCase::Open`] the next generation above every one known |
//! | the replica (`[replica]`) is of a newer generation than this writer | fenced: a failover opened it (the old primary came back) |
//! | no generation in the state directory (a fresh one, or from before generations) | [`GenerationCase::Adopt`] the table's |
//! | writer older than the table | fenced: the table was failed over (or failed back) to a newer writer |
//! | writer newer than the table | refused: the table is not the one this writer wrote (restored, replaced) |
//! | equal | [`GenerationCase::Continue`] |
//!
//! The sink checks the table's generation again before every commit (a failover that happens
//! while this writer runs), so an older generation never lands a commit after a newer one
//! opened the table.

use std::fmt;

/// What a start knows about generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationFacts {
    /// The table's generation (1 when no failover opened it).
    pub table: u64,
    /// The generation the state directory's writer belongs to, if it recorded one.
    pub writer: Option<u64>,
    /// The generation of the pipeline's replica table, when there is one and it was read.
    pub replica: Option<u64>,
    /// `tidemark failover`: this start opens a new generation.
    pub failover: bool,
}

/// What [`decide`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationCase {
    /// Write as `generation`, the table's and the writer's.
    Continue {
        /// The generation.
        generation: u64,
    },
    /// A state directory without a generation takes the table's.
    Adopt {
        /// The table's generation.
        generation: u64,
    },
    /// A failover: open `generation` in the table before anything else is written.
    Open {
        /// The new generation.
        generation: u64,
        /// The table's generation before it.
        previous: u64,
    },
    /// This writer must not write.
    Fenced(FenceReason),
}

/// Why a writer is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// The table belongs to a newer generation than the writer.
    TableNewer {
        /// The writer's generation.
        writer: u64,
        /// The table's.
        table: u64,
    },
    /// The replica was opened by a failover: a newer generation writes there now.
    ReplicaNewer {
        /// The writer's generation (the table's when the state directory has none).
        writer: u64,
        /// The replica's.
        replica: u64,
    },
    /// The table is of an older generation than the writer's state: not the table it wrote.
    TableOlder {
        /// The writer's generation.
        writer: u64,
        /// The table's.
        table: u64,
    },
}

impl fmt::Display for FenceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FenceReason::TableNewer { writer, table } => write!(
                f,
                "FENCED: the table is at generation {table} but this pipeline's state directory belongs to generation {writer}: a failover (or failback) moved the pipeline to a newer writer, and an older generation never writes again. Run this pipeline's new home instead; to move it back here use the failback sequence (`tidemark failover` against this table)"
            ),
            FenceReason::ReplicaNewer { writer, replica } => write!(
                f,
                "FENCED: the replica table is at generation {replica} but this writer is generation {writer}: a failover opened the replica in the other region, which now owns the pipeline. This (old primary) writer must not resume; fail back with the failback sequence (README, Regional failover)"
            ),
            FenceReason::TableOlder { writer, table } => write!(
                f,
                "the table is at generation {table}, older than this pipeline's state directory (generation {writer}): it is not the table this writer wrote (restored or replaced?). Refusing to write; point the config at the right table, or start with a fresh state directory to adopt the table's generation"
            ),
        }
    }
}

/// The generation decision (see the module documentation).
pub fn decide(facts: GenerationFacts) -> GenerationCase {
    if facts.failover {
        let newest = facts
            .table
            .max(facts.writer.unwrap_or(0))
            .max(facts.replica.unwrap_or(0));
        return GenerationCase::Open {
            generation: newest + 1,
            previous: facts.table,
        };
    }
    let writer = facts.writer.unwrap_or(facts.table);
    if let Some(replica) = facts.replica.filter(|r| *r > writer) {
        return GenerationCase::Fenced(FenceReason::ReplicaNewer { writer, replica });
    }
    match facts.writer {
        None => GenerationCase::Adopt {
            generation: facts.table,
        },
        Some(w) if w < facts.table => GenerationCase::Fenced(FenceReason::TableNewer {
            writer: w,
            table: facts.table,
        }),
        Some(w) if w > facts.table => GenerationCase::Fenced(FenceReason::TableOlder {
            writer: w,
            table: facts.table,
        }),
        Some(w) => GenerationCase::Continue { generation: w },
    }
}

/// The generation a start ends up writing as, when it may write.
pub fn writing_generation(case: GenerationCase) -> Option<u64> {
    match case {
        GenerationCase::Continue { generation }
        | GenerationCase::Adopt { generation }
        | GenerationCase::Open { generation, .. } => Some(generation),
        GenerationCase::Fenced(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(
        table: u64,
        writer: Option<u64>,
        replica: Option<u64>,
        failover: bool,
    ) -> GenerationFacts {
        GenerationFacts {
            table,
            writer,
            replica,
            failover,
        }
    }

    #[test]
    fn the_table_of_cases() {
        use FenceReason::*;
        use GenerationCase::*;
        let cases = [
            (facts(1, None, None, false), Adopt { generation: 1 }),
            (facts(1, Some(1), None, false), Continue { generation: 1 }),
            (
                facts(1, Some(1), Some(1), false),
                Continue { generation: 1 },
            ),
            // The old primary restarted after a failover opened generation 2 in its replica.
            (
                facts(1, Some(1), Some(2), false),
                Fenced(ReplicaNewer {
                    writer: 1,
                    replica: 2,
                }),
            ),
            // ... with a fresh state directory: still fenced by the replica.
            (
                facts(1, None, Some(2), false),
                Fenced(ReplicaNewer {
                    writer: 1,
                    replica: 2,
                }),
            ),
            // The old primary against the failed-back table (generation 3).
            (
                facts(3, Some(1), None, false),
                Fenced(TableNewer {
                    writer: 1,
                    table: 3,
                }),
            ),
            (
                facts(1, Some(2), None, false),
                Fenced(TableOlder {
                    writer: 2,
                    table: 1,
                }),
            ),
            (
                facts(1, None, None, true),
                Open {
                    generation: 2,
                    previous: 1,
                },
            ),
            // A failback opens a generation above every one seen.
            (
                facts(2, Some(1), Some(2), true),
                Open {
                    generation: 3,
                    previous: 2,
                },
            ),
            (
                facts(2, Some(4), None, true),
                Open {
                    generation: 5,
                    previous: 2,
                },
            ),
        ];
        for (f, want) in cases {
            assert_eq!(decide(f), want, "{f:?}");
        }
    }

    proptest! {
        /// Whatever the facts: a writer never writes as a generation older than the table's or
        /// the replica's; a failover always opens a generation newer than every one known;
        /// and a writer whose recorded generation differs from the table's never writes.
        #[test]
        fn an_older_generation_never_writes(
            table in 1u64..6,
            writer in proptest::option::of(1u64..6),
            replica in proptest::option::of(1u64..6),
            failover: bool,
        ) {
            let f = facts(table, writer, replica, failover);
            let case = decide(f);
            if let Some(g) = writing_generation(case) {
                prop_assert!(g >= table);
                prop_assert!(replica.is_none_or(|r| g >= r));
                if failover {
                    prop_assert!(g > table && writer.is_none_or(|w| g > w) && replica.is_none_or(|r| g > r));
                } else {
                    prop_assert_eq!(g, table);
                    prop_assert!(writer.is_none_or(|w| w == table));
                }
            } else {
                prop_assert!(!failover);
            }
        }
    }
}
