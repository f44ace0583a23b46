//! A topic mirror between two Kafka clusters, as MirrorMaker 2 or cluster linking would keep
//! one for a secondary region: every record of the source topic is copied to the same
//! partition of the target topic with its key, value and timestamp, never its offset (the
//! target's offsets are its own: pre-seeded or compacted partitions differ). For the failover
//! tests and `tidemark drill`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::produce::send_retrying;

/// What a mirror copied so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorProgress {
    /// Per source partition, the next source offset to copy.
    pub next: BTreeMap<i32, i64>,
    /// Records copied in all.
    pub copied: u64,
}

/// A running mirror of one topic: `step` copies what is there.
pub struct Mirror {
    consumer: BaseConsumer,
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    target_topic: String,
    progress: MirrorProgress,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Mirror {
    /// A mirror of `topic` on `from` into `target_topic` on `to` (both existing, the target
    /// with at least as many partitions), copying from the source's beginning.
    pub fn new(from: &str, to: &str, topic: &str, target_topic: &str) -> Result<Self, KafkaError> {
        Self::new_from(from, to, topic, target_topic, &BTreeMap::new())
    }

    /// [`Mirror::new`] copying each partition from the offset `start` gives (its beginning
    /// where it gives none): e.g. only what a failed-over region produced itself, back.
    pub fn new_from(
        from: &str,
        to: &str,
        topic: &str,
        target_topic: &str,
        start: &BTreeMap<i32, i64>,
    ) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", from)
            .set("group.id", format!("tidemark-mirror-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut assignment = TopicPartitionList::new();
        let mut progress = MirrorProgress::default();
        for p in &partitions {
            match start.get(p) {
                Some(o) => assignment.add_partition_offset(topic, *p, Offset::Offset(*o))?,
                None => assignment.add_partition_offset(topic, *p, Offset::Beginning)?,
            }
            progress.next.insert(*p, start.get(p).copied().unwrap_or(0));
        }
        consumer.assign(&assignment)?;
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", to)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()?;
        Ok(Self {
            consumer,
            producer,
            topic: topic.to_string(),
            target_topic: target_topic.to_string(),
            progress,
        })
    }

    /// Copies what arrives within `wait`; returns how many records.
    pub fn step(&mut self, wait: Duration) -> Result<u64, KafkaError> {
        let deadline = Instant::now() + wait;
        let mut copied = 0;
        while Instant::now() < deadline {
            let Some(message) = self.consumer.poll(Duration::from_millis(50)) else {
                if copied > 0 {
                    break;
                }
                continue;
            };
            let m = message?;
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.target_topic).partition(m.partition());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            send_retrying(&self.producer, record)?;
            self.progress.next.insert(m.partition(), m.offset() + 1);
            copied += 1;
        }
        self.progress.copied += copied;
        Ok(copied)
    }

    /// Copies until every partition is copied up to the source's end as of this call, then
    /// flushes the target.
    pub fn catch_up(&mut self, timeout: Duration) -> Result<u64, KafkaError> {
        let ends: Vec<(i32, i64)> = self
            .progress
            .next
            .keys()
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, *p, TIMEOUT)
                    .map(|(_, high)| (*p, high))
            })
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let mut copied = 0;
        while ends
            .iter()
            .any(|(p, end)| self.progress.next.get(p).copied().unwrap_or(0) < *end)
        {
            if started.elapsed() > timeout {
                return Err(KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
                ));
            }
            copied += self.step(Duration::from_millis(500))?;
        }
        self.producer.flush(Timeout::After(TIMEOUT))?;
        Ok(copied)
    }

    /// What was copied.
    pub fn progress(&self) -> &MirrorProgress {
        &self.progress
    }
}

/// Pre-seeds each partition `p` of `topic` on `brokers` with `count(p)` records dated
/// `timestamp_ms` whose values come from `value(p, i)`: the target's offsets then differ from
/// the source's by a different amount per partition.
pub fn seed_partitions(
    brokers: &str,
    topic: &str,
    partitions: i32,
    count: impl Fn(i32) -> u64,
    timestamp_ms: i64,
    value: impl Fn(i32, u64) -> Vec<u8>,
) -> Result<(), KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    for p in 0..partitions {
        for i in 0..count(p) {
            let v = value(p, i);
            let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .partition(p)
                .payload(v.as_slice())
                .timestamp(timestamp_ms);
            send_retrying(&producer, record)?;
        }
    }
    producer.flush(Timeout::After(TIMEOUT))?;
    Ok(())
}
