//! Which Kafka cluster a source reads, and offsets by time on it: what a failover to a
//! mirrored cluster needs (a mirror keeps keys, values and timestamps, never offsets).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{blocking, KafkaSourceConfig, KafkaSourceError};
use crate::record::TopicPartition;

/// A consumer for one-off metadata questions: never assigned, never commits.
fn metadata_consumer(config: &KafkaSourceConfig) -> Result<BaseConsumer, KafkaSourceError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false");
    for (k, v) in &config.properties {
        if !k.starts_with("tidemark.") {
            client.set(k, v);
        }
    }
    client.create().map_err(|source| KafkaSourceError::Create {
        brokers: config.brokers.clone(),
        source: Box::new(source),
    })
}

/// The cluster id the brokers of `config` report (`None` when they report none, or do not
/// answer within `timeout`: the caller decides whether that may pass).
pub fn fetch_cluster_id(
    config: &KafkaSourceConfig,
    timeout: Duration,
) -> Result<Option<String>, KafkaSourceError> {
    let consumer = metadata_consumer(config)?;
    Ok(blocking(|| consumer.client().fetch_cluster_id(timeout)).filter(|id| !id.is_empty()))
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
    for topic in &config.topics {
        let partitions = blocking(|| crate::kafka::topic_partitions(&consumer, topic, timeout))
            .map_err(|source| KafkaSourceError::Metadata {
                topic: topic.clone(),
                brokers: config.brokers.clone(),
                source: Box::new(source),
            })?;
        for partition in partitions {
            let tp = TopicPartition {
                topic: topic.clone(),
                partition,
            };
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
                .add_partition_offset(topic, partition, offset)
                .map_err(|source| lookup_error(&tp, source))?;
            all.push(tp);
        }
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
        let offset = match element.offset() {
            Offset::Offset(o) if o >= 0 => o.clamp(low, high),
            Offset::Beginning => low,
            // No record at or after the time: start at the end.
            _ => high,
        };
        out.push((tp, offset));
    }
    Ok(out)
}

fn lookup_error(tp: &TopicPartition, source: KafkaError) -> KafkaSourceError {
    KafkaSourceError::Watermarks {
        partition: tp.clone(),
        source: Box::new(source),
    }
}
