//! `[errors] quarantine`: Kafka records the pipeline must never write to the table, by their
//! coordinates — for a burst of bad (but schema-valid) records that was restored away from the
//! table (`tidemark restore`) and must not come back when the pipeline rewinds and re-reads
//! from Kafka. A quarantined record is treated like an invalid one with reason `quarantined`:
//! dead-lettered whole (default) or skipped and listed in its epoch's commitInfo, so every
//! Kafka offset is still accounted for.
//!
//! Each entry is `<topic>/<partition>@<first>..<end>` (offsets `first` up to but not including
//! `end`, as Kafka positions count) or `<topic>/<partition>@<offset>` for one record: the
//! coordinates Tidemark prints for a record (`orders/0@120`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

/// One quarantined range of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Offsets `first..end`.
    pub offsets: Range<i64>,
}

impl fmt::Display for QuarantineRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}..{}",
            self.topic, self.partition, self.offsets.start, self.offsets.end
        )
    }
}

impl std::str::FromStr for QuarantineRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{s:?}: {why}; write <topic>/<partition>@<first>..<end> (end not included) or <topic>/<partition>@<offset>")
        };
        let (tp, offsets) = s.rsplit_once('@').ok_or_else(|| bad("no '@'"))?;
        let (topic, partition) = tp.rsplit_once('/').ok_or_else(|| bad("no '/'"))?;
        if topic.is_empty() {
            return Err(bad("no topic"));
        }
        let partition: i32 = partition
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| bad("the partition is not a number"))?;
        let number = |t: &str| {
            t.parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| bad("an offset is not a non-negative number"))
        };
        let offsets = match offsets.split_once("..") {
            Some((a, b)) => number(a)?..number(b)?,
            None => {
                let o = number(offsets)?;
                o..o.checked_add(1).ok_or_else(|| bad("offset too large"))?
            }
        };
        if offsets.is_empty() {
            return Err(bad("the range is empty (end must be greater than first)"));
        }
        Ok(Self {
            topic: topic.to_string(),
            partition,
            offsets,
        })
    }
}

/// The quarantined ranges, by topic and partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quarantine {
    ranges: BTreeMap<(String, i32), Vec<Range<i64>>>,
}

impl Quarantine {
    /// Parses the config's entries; an error names the entry.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut q = Self::default();
        for e in entries {
            let r: QuarantineRange = e.parse()?;
            q.ranges
                .entry((r.topic, r.partition))
                .or_default()
                .push(r.offsets);
        }
        Ok(q)
    }

    /// True when nothing is quarantined.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// True when the record at `topic/partition@offset` is quarantined.
    pub fn contains(&self, topic: &str, partition: i32, offset: i64) -> bool {
        // Few ranges per partition: a scan is enough.
        self.ranges
            .iter()
            .filter(|((t, p), _)| t == topic && *p == partition)
            .any(|(_, rs)| rs.iter().any(|r| r.contains(&offset)))
    }

    /// The canonical text (sorted), for the epoch's settings.
    pub fn canonical(&self) -> String {
        let mut out = Vec::new();
        for ((t, p), rs) in &self.ranges {
            let mut rs = rs.clone();
            rs.sort_by_key(|r| (r.start, r.end));
            for r in rs {
                out.push(
                    QuarantineRange {
                        topic: t.clone(),
                        partition: *p,
                        offsets: r,
                    }
                    .to_string(),
                );
            }
        }
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_parse_and_name_what_is_wrong() {
        let q = Quarantine::parse(&["orders/0@120..200".into(), "my/topic/3@7".into()]).unwrap();
        assert!(q.contains("orders", 0, 120) && q.contains("orders", 0, 199));
        assert!(!q.contains("orders", 0, 200) && !q.contains("orders", 0, 119));
        assert!(!q.contains("orders", 1, 150));
        assert!(q.contains("my/topic", 3, 7) && !q.contains("my/topic", 3, 8));
        for bad in [
            "orders@1..2",
            "orders/x@1",
            "orders/0@5..5",
            "orders/0@-1",
            "/0@1",
            "orders/0",
        ] {
            let err = Quarantine::parse(&[bad.into()]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    proptest! {
        #[test]
        fn a_range_round_trips_and_holds_exactly_its_offsets(
            topic in "[a-z][a-z0-9._/-]{0,12}",
            partition in 0i32..64,
            first in 0i64..1_000_000,
            len in 1i64..1000,
            probe in 0i64..1_002_000,
        ) {
            let r = QuarantineRange { topic: topic.clone(), partition, offsets: first..first + len };
            let parsed: QuarantineRange = r.to_string().parse().unwrap();
            prop_assert_eq!(&parsed, &r);
            let q = Quarantine::parse(&[r.to_string()]).unwrap();
            prop_assert_eq!(q.contains(&topic, partition, probe), (first..first + len).contains(&probe));
            prop_assert!(!q.contains(&topic, partition + 1, probe));
        }
    }
}
