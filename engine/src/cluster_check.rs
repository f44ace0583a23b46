//! Positions know their Kafka cluster (pure): offsets mean something only on the cluster they
//! were read from, and a mirrored cluster has other offsets for the same records. A start
//! against a cluster other than the one the table's progress belongs to is refused, naming
//! both ids, unless it is a failover start (whose positions were found by time on the new
//! cluster).

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCase {
    /// The broker is the cluster the progress belongs to.
    Same,
    /// The table records no cluster yet (a new table, or commits older than cluster ids).
    FirstRecorded,
    /// The broker reports no cluster id: nothing to compare (said in the log).
    BrokerReportsNone,
    /// A failover start onto another cluster: the positions were translated by time.
    Failover {
        /// The cluster the table's progress belongs to.
        from: String,
        /// The broker's.
        to: String,
    },
}

/// A start against another cluster than the progress's, not as a failover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the table's progress belongs to Kafka cluster {recorded:?} but the brokers ({brokers}) are cluster {broker:?}: offsets of one cluster mean nothing on another (a mirror has other offsets for the same records), so Tidemark refuses to resume. If this is a failover to a mirrored cluster, start with `tidemark failover --config <this config>` (positions are found by time); otherwise fix `source.brokers`")]
pub struct ClusterMismatch {
    /// The cluster id the table's newest commit records.
    pub recorded: String,
    /// The cluster id the brokers report.
    pub broker: String,
    /// The configured brokers.
    pub brokers: String,
}

/// The cluster decision: `recorded` by the table's newest commit, reported by the `broker`.
pub fn check(
    recorded: Option<&str>,
    broker: Option<&str>,
    brokers: &str,
    failover: bool,
) -> Result<ClusterCase, ClusterMismatch> {
    match (recorded, broker) {
        (_, None) => Ok(ClusterCase::BrokerReportsNone),
        (None, Some(_)) => Ok(ClusterCase::FirstRecorded),
        (Some(r), Some(b)) if r == b => Ok(ClusterCase::Same),
        (Some(r), Some(b)) if failover => Ok(ClusterCase::Failover {
            from: r.to_string(),
            to: b.to_string(),
        }),
        (Some(r), Some(b)) => Err(ClusterMismatch {
            recorded: r.to_string(),
            broker: b.to_string(),
            brokers: brokers.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn another_cluster_is_refused_naming_both_unless_failing_over() {
        let err = check(Some("east"), Some("west"), "b:9092", false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"east\"") && text.contains("\"west\"") && text.contains("b:9092"),
            "{text}"
        );
        assert_eq!(
            check(Some("east"), Some("west"), "b:9092", true),
            Ok(ClusterCase::Failover {
                from: "east".into(),
                to: "west".into()
            })
        );
        assert_eq!(
            check(Some("east"), Some("east"), "b", false),
            Ok(ClusterCase::Same)
        );
        assert_eq!(
            check(None, Some("east"), "b", false),
            Ok(ClusterCase::FirstRecorded)
        );
        assert_eq!(
            check(Some("east"), None, "b", false),
            Ok(ClusterCase::BrokerReportsNone)
        );
    }

    proptest! {
        #[test]
        fn refused_exactly_when_both_known_differ_and_not_failing_over(
            recorded in proptest::option::of("[ab]"),
            broker in proptest::option::of("[ab]"),
            failover: bool,
        ) {
            let refused = check(recorded.as_deref(), broker.as_deref(), "x", failover).is_err();
            let differ = matches!((&recorded, &broker), (Some(r), Some(b)) if r != b);
            prop_assert_eq!(refused, differ && !failover);
        }
    }
}
