//! A Kafka source whose positions Tidemark owns.
//!
//! The consumer never subscribes and never auto-commits: it discovers the partitions of the
//! configured topics, `assign`s them at the positions Tidemark hands it (or at the beginning of a
//! partition it has no position for), and reports the next offset per partition as it reads.
//! A position that Kafka no longer holds (deleted by retention) is an error, never a silent
//! jump (`auto.offset.reset=error`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::record::{Positions, SourceRecord, TopicPartition};
use crate::source::Source;

/// How long metadata and watermark requests may take before the source gives up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings of a [`KafkaSource`].
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics to read; every partition of each is assigned.
    pub topics: Vec<String>,
    /// Consumer group id: used only for lag tools, never to decide where to read.
    pub group_id: String,
    /// Extra librdkafka properties (e.g. `security.protocol`), applied last.
    pub properties: BTreeMap<String, String>,
}

/// Errors of the Kafka source, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// The client could not be created (bad property, unreachable library setting).
    #[error("cannot create a Kafka consumer for brokers {brokers}: {source}")]
    Create {
        /// The configured bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
    /// Metadata for a topic could not be fetched.
    #[error("cannot read metadata of topic {topic:?} from {brokers}: {source}")]
    Metadata {
        /// Topic asked for.
        topic: String,
        /// The configured bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
    /// The topic does not exist (Tidemark never creates topics).
    #[error("topic {topic:?} does not exist on {brokers} (or has no partitions)")]
    TopicMissing {
        /// Topic asked for.
        topic: String,
        /// The configured bootstrap servers.
        brokers: String,
    },
    /// Watermarks for a partition could not be fetched.
    #[error("cannot read the offsets of {partition}: {source}")]
    Watermarks {
        /// The partition asked for.
        partition: TopicPartition,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
    /// Assigning partitions at positions failed.
    #[error("cannot assign partitions at positions {positions}: {source}")]
    Assign {
        /// Positions asked for.
        positions: String,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
    /// Reading failed (including a position Kafka no longer holds).
    #[error("reading from Kafka failed: {source}")]
    Consume {
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
}

/// The Kafka source: see the module documentation.
pub struct KafkaSource {
    consumer: StreamConsumer,
    positions: Positions,
    /// Offset each partition starts at when no position is known (its low watermark at start).
    low_at_start: HashMap<TopicPartition, i64>,
    /// End of each partition when the source started: what "caught up" means.
    high_at_start: HashMap<TopicPartition, i64>,
    topic_names: HashMap<String, Arc<str>>,
    /// Records that arrived while paused: handed out first by the next `next_batch`.
    /// Positions advance only when a record is handed out, never when it is buffered.
    pending: VecDeque<SourceRecord>,
}

impl KafkaSource {
    /// Connects, discovers partitions and assigns them at `start` (beginning where unknown).
    pub fn connect(
        config: &KafkaSourceConfig,
        start: &Positions,
    ) -> Result<Self, KafkaSourceError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false")
            // librdkafka 2.x stops fetching a partition for this long once its local queue is
            // past `queued.min.messages`; its 1 s default made the consumer deliver ~1 s bursts
            // and the pipeline idle between them (`tidemark bench`: 200 ms epochs ~1 s apart).
            .set("fetch.queue.backoff.ms", "20");
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        let consumer: StreamConsumer =
            client.create().map_err(|source| KafkaSourceError::Create {
                brokers: config.brokers.clone(),
                source: Box::new(source),
            })?;

        let mut assignment = TopicPartitionList::new();
        let mut low_at_start = HashMap::new();
        let mut high_at_start = HashMap::new();
        let mut positions = Positions::new();
        let mut topic_names = HashMap::new();
        for topic in &config.topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|source| KafkaSourceError::Metadata {
                    topic: topic.clone(),
                    brokers: config.brokers.clone(),
                    source: Box::new(source),
                })?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(KafkaSourceError::TopicMissing {
                    topic: topic.clone(),
                    brokers: config.brokers.clone(),
                });
            }
            topic_names.insert(topic.clone(), Arc::from(topic.as_str()));
            for partition in partitions {
                let tp = TopicPartition {
                    topic: topic.clone(),
                    partition,
                };
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                    .map_err(|source| KafkaSourceError::Watermarks {
                        partition: tp.clone(),
                        source: Box::new(source),
                    })?;
                let offset = match start.get(topic, partition) {
                    Some(next) => {
                        positions.set(topic, partition, next);
                        Offset::Offset(next)
                    }
                    None => {
                        if low > 0 {
                            warn!(
                                partition = %tp,
                                log_start = low,
                                "no position for this partition: starting at its log start; \
                                 offsets below it were deleted by the broker before this pipeline read them"
                            );
                        }
                        Offset::Beginning
                    }
                };
                debug!(partition = %tp, low, high, ?offset, "assigning partition");
                assignment
                    .add_partition_offset(topic, partition, offset)
                    .map_err(|source| KafkaSourceError::Assign {
                        positions: start.to_string(),
                        source: Box::new(source),
                    })?;
                low_at_start.insert(tp.clone(), low);
                high_at_start.insert(tp, high);
            }
        }
        consumer
            .assign(&assignment)
            .map_err(|source| KafkaSourceError::Assign {
                positions: start.to_string(),
                source: Box::new(source),
            })?;
        info!(
            brokers = %config.brokers,
            partitions = high_at_start.len(),
            start = %start,
            "kafka source assigned"
        );
        Ok(Self {
            consumer,
            positions,
            low_at_start,
            high_at_start,
            topic_names,
            pending: VecDeque::new(),
        })
    }

    /// Keeps the consumer served while the caller's commit runs, however long it takes: what
    /// arrives is kept (up to `cap` records) for the next batch. Past `cap` it stops taking
    /// records, so librdkafka's bounded prefetch queue (`queued.max.messages.kbytes`) fills
    /// and fetching stops: that is the back-pressure. Never returns on its own: race it against
    /// the slow work. Counts its polls in `polls`.
    ///
    /// Why not `rd_kafka_pause`: a consumer that paused and resumed its partitions hung in
    /// `rd_kafka_destroy` at shutdown (observed with librdkafka 2.12.1, broker thread never
    /// exits). The assign-mode consumer has no group membership that a long gap between polls
    /// could cost (librdkafka enforces `max.poll.interval.ms` only for subscribed consumers).
    pub async fn poll_during_commit(&mut self, cap: usize, polls: &mut u64) -> KafkaSourceError {
        loop {
            *polls += 1;
            if self.pending.len() >= cap {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()).await {
                Err(_elapsed) => {}
                Ok(Err(source)) => {
                    return KafkaSourceError::Consume {
                        source: Box::new(source),
                    }
                }
                Ok(Ok(msg)) => {
                    let record = self.owned(&msg);
                    self.pending.push_back(record);
                }
            }
        }
    }

    /// Commits `positions` to the consumer group (`group.id`) so lag tools
    /// (`kafka-consumer-groups --describe`, Burrow, exporters) see how far the pipeline is.
    /// Asynchronous and advisory: Tidemark never reads these offsets back (positions come from
    /// its checkpoint and the table), so a failed commit is only logged.
    pub fn commit_positions(&self, positions: &Positions) {
        let mut list = TopicPartitionList::new();
        for (tp, next) in positions.iter() {
            if let Err(e) = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next))
            {
                warn!(partition = %tp, error = %e, "cannot list an offset to commit for lag tools");
                return;
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            warn!(error = %e, "committing offsets to the consumer group failed (lag tools only; progress is safe in the checkpoint and the table)");
        }
    }

    /// Every assigned `(topic, partition)`.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .high_at_start
            .keys()
            .map(|tp| (tp.topic.clone(), tp.partition))
            .collect();
        v.sort();
        v
    }

    /// Records taken during a commit and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Total records between the start positions and the ends seen at start (lag at start).
    pub fn lag_at_start(&self, start: &Positions) -> i64 {
        self.high_at_start
            .iter()
            .map(|(tp, high)| (high - self.start_of(start, tp)).max(0))
            .sum()
    }

    /// Where `tp` stands in `positions`, or its log start when it has no position.
    fn start_of(&self, positions: &Positions, tp: &TopicPartition) -> i64 {
        positions
            .get(&tp.topic, tp.partition)
            .unwrap_or_else(|| self.low_at_start.get(tp).copied().unwrap_or(0))
    }

    fn owned(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> SourceRecord {
        let topic = self
            .topic_names
            .get(msg.topic())
            .cloned()
            .unwrap_or_else(|| Arc::from(msg.topic()));
        SourceRecord {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
        }
    }
}

impl Drop for KafkaSource {
    /// Gives the partitions back before librdkafka destroys the client.
    fn drop(&mut self) {
        if let Err(e) = self.consumer.unassign() {
            warn!("kafka source: unassign at shutdown failed: {e}");
        }
    }
}

impl Source for KafkaSource {
    type Error = KafkaSourceError;

    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<SourceRecord>, KafkaSourceError> {
        let deadline = Instant::now() + max_wait;
        let mut batch = Vec::with_capacity(max_records.min(65_536));
        while batch.len() < max_records {
            if let Some(record) = self.pending.pop_front() {
                self.positions.advance_past(&record);
                batch.push(record);
                continue;
            }
            // A message already fetched is taken without arming a timer (the common case
            // under backlog: no clock read, no timer entry per message).
            let ready = futures::FutureExt::now_or_never(self.consumer.recv());
            let next = match ready {
                Some(result) => Ok(result),
                None => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        break;
                    }
                    tokio::time::timeout(remaining, self.consumer.recv()).await
                }
            };
            match next {
                Err(_elapsed) => break,
                Ok(Err(source)) => {
                    return Err(KafkaSourceError::Consume {
                        source: Box::new(source),
                    })
                }
                Ok(Ok(msg)) => {
                    let record = self.owned(&msg);
                    self.positions.advance_past(&record);
                    batch.push(record);
                }
            }
        }
        Ok(batch)
    }

    fn positions(&self) -> &Positions {
        &self.positions
    }

    fn caught_up(&self) -> bool {
        self.high_at_start
            .iter()
            .all(|(tp, high)| self.start_of(&self.positions, tp) >= *high)
    }
}
