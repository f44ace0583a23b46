//! Which Kafka cluster a source reads, and offsets by time on it: what a failover to a
//! mirrored cluster needs (a mirror keeps keys, values and timestamps, never offsets).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{blocking, KafkaSourceConfig, KafkaSourceError};
use crate::record::TopicPartition;

/// A consumer for one-off metadata questions: never subscribes, never commits.
fn metadata_consumer(config: &KafkaSourceConfig) -> Result<BaseConsumer, KafkaSourceError> {
    let mut client = ClientConfig::new();
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        // Lookups read single records (see `search_by_time`): no waiting for full fetches.
        .set("fetch.wait.max.ms", "10");
    create(client, config)
}

/// A client of `config`'s brokers with `client`'s settings and the source's own properties
/// (security settings among them) over them.
fn create(
    client: ClientConfig,
    config: &KafkaSourceConfig,
) -> Result<BaseConsumer, KafkaSourceError> {
    with_source_settings(client, config)
        .create()
        .map_err(|source| KafkaSourceError::Create {
            brokers: config.brokers.clone(),
            source: Box::new(source),
        })
}

/// `client` with `config`'s brokers and the source's own properties over its settings.
fn with_source_settings(mut client: ClientConfig, config: &KafkaSourceConfig) -> ClientConfig {
    client.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.properties {
        if !k.starts_with("tidemark.") {
            client.set(k, v);
        }
    }
    client
}

/// The settings of the cluster-id lookup's client: the source's, without a `group.id` (a
/// consumer of a group takes ~100 ms to close, and the lookup is on the start's path).
fn cluster_id_client(config: &KafkaSourceConfig) -> ClientConfig {
    with_source_settings(ClientConfig::new(), config)
}

/// The cluster id the brokers of `config` report (`None` when they report none, or do not
/// answer within `timeout`: the caller decides whether that may pass).
///
/// The id comes with a metadata response, and librdkafka's own lookup only waits for one: a
/// new client that has not asked for metadata by the time it connects asks on its one-second
/// timer, so a pipeline's start waited ~1 s for the id in a third of the runs of `tidemark
/// bench` (~30% of a 2M-record run's wall time). [`ask_for_metadata`] asks at once instead;
/// the id is then read from what the answer left behind.
pub fn fetch_cluster_id(
    config: &KafkaSourceConfig,
    timeout: Duration,
) -> Result<Option<String>, KafkaSourceError> {
    let consumer = create(cluster_id_client(config), config)?;
    let deadline = std::time::Instant::now() + timeout;
    Ok(blocking(|| {
        ask_for_metadata(&consumer, config, timeout);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        consumer.client().fetch_cluster_id(left)
    })
    .filter(|id| !id.is_empty()))
}

/// Asks the brokers for the metadata of the source's first topic and waits up to `timeout`
/// for the answer, which leaves the cluster id with the client. An error (no broker answered
/// in time, say) is only logged: the id lookup after it waits out what is left of the
/// timeout.
fn ask_for_metadata(consumer: &BaseConsumer, config: &KafkaSourceConfig, timeout: Duration) {
    if let Err(e) = consumer.fetch_metadata(config.topics.first().map(String::as_str), timeout) {
        tracing::debug!(error = %e, brokers = %config.brokers, "metadata for the cluster id not answered; waiting for it");
    }
}

/// Where each partition's first record with a timestamp at or after the asked time is
/// (`offsets_for_times`), on the cluster of `config`. A partition with no such record gets its
/// end offset (the next record produced there). Every partition of `config.topics` is
/// answered: those not in `times` at the time `default_ms` (`None`: their beginning).
pub fn offsets_for_times(
    config: &KafkaSourceConfig,
    times: &[(TopicPartition, i64)],
    default_ms: Option<i64>,
    timeout: Duration,
) -> Result<Vec<(TopicPartition, i64)>, KafkaSourceError> {
    let consumer = metadata_consumer(config)?;
    let mut asked = TopicPartitionList::new();
    let mut all = Vec::new();
    for tp in every_partition(&consumer, config, timeout)? {
        let at = times
            .iter()
            .find(|(t, _)| *t == tp)
            .map(|(_, ms)| *ms)
            .or(default_ms);
        let offset = match at {
            Some(ms) => Offset::Offset(ms),
            None => Offset::Beginning,
        };
        asked
            .add_partition_offset(&tp.topic, tp.partition, offset)
            .map_err(|source| lookup_error(&tp, source))?;
        all.push(tp);
    }
    let answered = blocking(|| consumer.offsets_for_times(asked, timeout)).map_err(|source| {
        KafkaSourceError::Metadata {
            topic: config.topics.join(","),
            brokers: config.brokers.clone(),
            source: Box::new(source),
        }
    })?;
    let mut out = Vec::new();
    for tp in all {
        let element = answered
            .find_partition(&tp.topic, tp.partition)
            .ok_or_else(|| {
                lookup_error(
                    &tp,
                    KafkaError::OffsetFetch(rdkafka::types::RDKafkaErrorCode::UnknownPartition),
                )
            })?;
        element
            .error()
            .map_err(|source| lookup_error(&tp, source))?;
        let (low, high) = blocking(|| consumer.fetch_watermarks(&tp.topic, tp.partition, timeout))
            .map_err(|source| lookup_error(&tp, source))?;
        let asked_ms = times
            .iter()
            .find(|(t, _)| *t == tp)
            .map(|(_, ms)| *ms)
            .or(default_ms);
        let offset = match (element.offset(), asked_ms) {
            (Offset::Offset(o), Some(ms)) if o >= 0 => {
                let o = o.clamp(low, high);
                // Kafka's answer is the earliest offset whose timestamp is >= ms: the record
                // there is not older, the one before it is. A broker that answers otherwise
                // (seen: an answer for a time after the newest record) is searched instead.
                let at_ok = o == high
                    || blocking(|| timestamp_at(&consumer, &tp, o, timeout))
                        .map_err(|source| lookup_error(&tp, source))?
                        .is_some_and(|ts| ts >= ms);
                let before_ok = o == low
                    || blocking(|| timestamp_at(&consumer, &tp, o - 1, timeout))
                        .map_err(|source| lookup_error(&tp, source))?
                        .is_none_or(|ts| ts < ms);
                if at_ok && before_ok {
                    o
                } else {
                    tracing::warn!(partition = %tp, time_ms = ms, answered = o, "the brokers' offset for this time does not fit the records' timestamps: searching by reading timestamps instead");
                    blocking(|| search_by_time(&consumer, &tp, low, high, ms, timeout))
                        .map_err(|source| lookup_error(&tp, source))?
                }
            }
            (Offset::Offset(o), None) if o >= 0 => o.clamp(low, high),
            (Offset::Beginning, _) | (_, None) => low,
            // "No record at or after the time": true only if the newest record is older.
            (_, Some(ms)) if high > low => {
                let newest = blocking(|| timestamp_at(&consumer, &tp, high - 1, timeout))
                    .map_err(|source| lookup_error(&tp, source))?;
                if newest.is_some_and(|ts| ts >= ms) {
                    tracing::warn!(partition = %tp, time_ms = ms, "the brokers answered \"no record at or after this time\" although the partition's newest record is not older (no timestamp index, e.g. librdkafka's mock cluster): searching by reading timestamps (binary search; assumes timestamps do not decrease along the partition, the margin covers small disorder)");
                    blocking(|| search_by_time(&consumer, &tp, low, high, ms, timeout))
                        .map_err(|source| lookup_error(&tp, source))?
                } else {
                    high
                }
            }
            _ => high,
        };
        out.push((tp, offset));
    }
    Ok(out)
}

/// The timestamp of the record at `offset` (read with a one-off assignment).
fn timestamp_at(
    consumer: &BaseConsumer,
    tp: &TopicPartition,
    offset: i64,
    timeout: Duration,
) -> Result<Option<i64>, KafkaError> {
    use rdkafka::message::Message;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == tp.partition && m.offset() >= offset => {
                return Ok(m.timestamp().to_millis());
            }
            Some(Err(e)) => return Err(e),
            _ => {}
        }
    }
    Err(KafkaError::OffsetFetch(
        rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
    ))
}

/// The first offset in `[low, high)` whose record's timestamp is `>= ms` (`high` if none),
/// by binary search over records read one by one: for brokers that cannot look offsets up by
/// time. Assumes timestamps do not decrease along the partition.
fn search_by_time(
    consumer: &BaseConsumer,
    tp: &TopicPartition,
    low: i64,
    high: i64,
    ms: i64,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ts = timestamp_at(consumer, tp, mid, timeout)?.unwrap_or(i64::MIN);
        if ts >= ms {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

fn lookup_error(tp: &TopicPartition, source: KafkaError) -> KafkaSourceError {
    KafkaSourceError::Watermarks {
        partition: tp.clone(),
        source: Box::new(source),
    }
}

/// Every record (key, value) of `topic` on the cluster of `config`, each partition read from
/// its beginning to its end as of this call; `None` when the topic does not exist. For small
/// internal topics (MirrorMaker 2's offset-syncs and checkpoints, see [`crate::mm2`]).
#[allow(clippy::type_complexity)]
pub fn read_whole_topic(
    config: &KafkaSourceConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>>, KafkaSourceError> {
    use rdkafka::message::Message;
    let consumer = metadata_consumer(config)?;
    let partitions = match blocking(|| crate::kafka::topic_partitions(&consumer, topic, timeout)) {
        Ok(p) => p,
        Err(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        )) => return Ok(None),
        Err(source) => {
            return Err(KafkaSourceError::Metadata {
                topic: topic.to_string(),
                brokers: config.brokers.clone(),
                source: Box::new(source),
            })
        }
    };
    let mut ends = std::collections::BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let tp = TopicPartition {
            topic: topic.to_string(),
            partition: p,
        };
        let (low, high) = blocking(|| consumer.fetch_watermarks(topic, p, timeout))
            .map_err(|source| lookup_error(&tp, source))?;
        if high > low {
            ends.insert(p, (low, high));
            assignment
                .add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|source| lookup_error(&tp, source))?;
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(Some(records));
    }
    consumer
        .assign(&assignment)
        .map_err(|source| KafkaSourceError::Metadata {
            topic: topic.to_string(),
            brokers: config.brokers.clone(),
            source: Box::new(source),
        })?;
    let mut next: std::collections::BTreeMap<i32, i64> =
        ends.iter().map(|(p, (low, _))| (*p, *low)).collect();
    let deadline = std::time::Instant::now() + timeout;
    while ends.iter().any(|(p, (_, high))| next[p] < *high) {
        if std::time::Instant::now() > deadline {
            let (p, _) = ends
                .iter()
                .find(|(p, (_, high))| next[*p] < *high)
                .map(|(p, e)| (*p, *e))
                .unwrap_or_default();
            return Err(lookup_error(
                &TopicPartition {
                    topic: topic.to_string(),
                    partition: p,
                },
                KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::RequestTimedOut),
            ));
        }
        match blocking(|| consumer.poll(Duration::from_millis(100))) {
            Some(Ok(m)) => {
                next.insert(m.partition(), m.offset() + 1);
                records.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
            }
            Some(Err(source)) => {
                return Err(KafkaSourceError::Metadata {
                    topic: topic.to_string(),
                    brokers: config.brokers.clone(),
                    source: Box::new(source),
                })
            }
            None => {}
        }
    }
    Ok(Some(records))
}

/// The low and high watermark of every partition of `config.topics`.
pub fn watermarks(
    config: &KafkaSourceConfig,
    timeout: Duration,
) -> Result<Vec<(TopicPartition, i64, i64)>, KafkaSourceError> {
    let consumer = metadata_consumer(config)?;
    let mut out = Vec::new();
    for tp in every_partition(&consumer, config, timeout)? {
        let (low, high) = blocking(|| consumer.fetch_watermarks(&tp.topic, tp.partition, timeout))
            .map_err(|source| lookup_error(&tp, source))?;
        out.push((tp, low, high));
    }
    Ok(out)
}

/// Every partition of `config.topics`, from the cluster's metadata (errors name the topic and
/// the brokers).
fn every_partition(
    consumer: &BaseConsumer,
    config: &KafkaSourceConfig,
    timeout: Duration,
) -> Result<Vec<TopicPartition>, KafkaSourceError> {
    let mut out = Vec::new();
    for topic in &config.topics {
        let partitions = blocking(|| crate::kafka::topic_partitions(consumer, topic, timeout))
            .map_err(|source| KafkaSourceError::Metadata {
                topic: topic.clone(),
                brokers: config.brokers.clone(),
                source: Box::new(source),
            })?;
        out.extend(partitions.into_iter().map(|partition| TopicPartition {
            topic: topic.clone(),
            partition,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use super::*;

    fn config(brokers: String) -> KafkaSourceConfig {
        crate::kafka::tests::config(brokers, "orders")
    }

    /// The id asked for at once is the id librdkafka's own lookup waits for, on every try.
    #[test]
    fn the_cluster_id_is_the_one_the_brokers_report() {
        let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
        cluster.create_topic("orders", 2, 1).expect("topic");
        let config = config(cluster.bootstrap_servers());
        let waited = create(cluster_id_client(&config), &config)
            .expect("client")
            .client()
            .fetch_cluster_id(Duration::from_secs(30))
            .expect("the mock cluster reports an id");
        assert!(!waited.is_empty());
        for _ in 0..5 {
            let asked = fetch_cluster_id(&config, Duration::from_secs(30)).expect("lookup");
            assert_eq!(asked.as_deref(), Some(waited.as_str()));
        }
    }

    /// The id is there the moment the metadata answer is: read without any wait right after
    /// [`ask_for_metadata`] (a fresh client has none of its own so soon; librdkafka's lookup
    /// alone waits for its one-second timer). The lookup's client is of no group.
    #[test]
    fn asking_for_metadata_leaves_the_id_at_once_with_a_client_of_no_group() {
        let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
        cluster.create_topic("orders", 2, 1).expect("topic");
        let config = config(cluster.bootstrap_servers());
        let settings = cluster_id_client(&config);
        assert_eq!(settings.get("group.id"), None);
        for _ in 0..5 {
            let consumer = create(settings.clone(), &config).expect("client");
            ask_for_metadata(&consumer, &config, Duration::from_secs(30));
            let id = consumer.client().fetch_cluster_id(Duration::ZERO);
            assert!(
                id.is_some_and(|id| !id.is_empty()),
                "no id right after the metadata answer"
            );
        }
    }

    /// Brokers that never answer: no id, once the timeout is spent (spent once, not once by
    /// the metadata request and again by the wait for the id).
    #[test]
    fn unanswered_brokers_give_no_id_within_the_timeout() {
        let timeout = Duration::from_secs(2);
        let started = Instant::now();
        let id = fetch_cluster_id(&config("127.0.0.1:1".into()), timeout).expect("lookup");
        assert_eq!(id, None);
        assert!(
            started.elapsed() < timeout * 2,
            "took {:?} with a timeout of {timeout:?}",
            started.elapsed()
        );
    }
}
