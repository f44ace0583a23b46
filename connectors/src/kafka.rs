//! A Kafka source whose positions Tidemark owns.
//!
//! The consumer never subscribes and never auto-commits: it discovers the partitions of the
//! configured topics, `assign`s them at the positions Tidemark hands it (or at the beginning of a
//! partition it has no position for), and reports the next offset per partition as it reads.
//! A position that Kafka no longer holds (deleted by retention) is an error, never a silent
//! jump (`auto.offset.reset=error`).
//!
//! **Topology changes.** Every [`DEFAULT_DISCOVERY_INTERVAL`] (or the milliseconds given by the
//! source property [`DISCOVERY_INTERVAL_PROPERTY`], which Tidemark keeps and never passes to
//! librdkafka) the source re-reads the topics' metadata — on a thread of its own, applied by
//! the next read once the broker has answered, so a broker slow to answer metadata never
//! holds up reading and sealing; a partition added meanwhile is assigned
//! from its beginning (offset 0 of a new partition) and reported once by
//! [`Source::take_added_partitions`]. At connect, stored positions are checked against the broker:
//! a stored partition the topic no longer has, or a stored position above the partition's end,
//! means the topic was deleted and recreated (or the broker lost data), and the source refuses to
//! start ([`KafkaSourceError::TopicRecreated`]), naming the topic, the partition, the stored
//! position and what the broker reports. A topic recreated with at least as many records as
//! were read cannot be told apart this way, so the source also reads each topic's id from the
//! broker ([`crate::kafka_topic_id`]); the engine records the ids next to the positions (the
//! table's commitInfo) and hands them back at the next start: a stored id that differs from
//! the broker's, for a topic with stored positions, is refused
//! ([`KafkaSourceError::TopicIdChanged`]), and so is an id that changes while running (seen by
//! the periodic discovery). A broker that reports no ids leaves only the checks above (logged
//! once).
//!
//! **Errors.** [`classify`] sorts librdkafka errors: transient ones (transport failure, all
//! brokers down, timeouts, leader not available, ...) are retried with exponential backoff
//! from [`BACKOFF_START`] doubling to [`BACKOFF_MAX`], one log line per retry; an unknown topic
//! or partition is retried for [`UNKNOWN_TOPIC_GRACE`], then fatal; everything else (offset out
//! of range under `auto.offset.reset=error`, authorization, bad configuration) stops the source
//! with the cause.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;

use crate::kafka_fetched::ConsumerQueue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::kafka_topic_id::{check_topic_id, describe_topic_ids, TopicIdCheck};
use crate::record::{Positions, SourceRecord, TopicPartition};
use crate::source::Source;

/// How long metadata and watermark requests may take before the source gives up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the periodic partition discovery may block the poll loop on one metadata request.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the source looks for partitions added to its topics, unless
/// [`DISCOVERY_INTERVAL_PROPERTY`] says otherwise.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// Source property (`[source.properties]`) setting the partition discovery interval in
/// milliseconds. Read by Tidemark, never passed to librdkafka.
pub const DISCOVERY_INTERVAL_PROPERTY: &str = "tidemark.partition.discovery.interval.ms";
/// First wait before retrying a transient Kafka error.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between two retries of a transient Kafka error.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long an unknown topic or partition is retried (metadata may lag a topic's creation)
/// before it is fatal.
pub const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(30);

/// What to do about a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The broker or network is (probably) briefly unavailable: retry with backoff.
    Transient,
    /// The topic or partition is unknown: retry for [`UNKNOWN_TOPIC_GRACE`], then stop.
    UnknownTopic,
    /// Retrying cannot help (lost offsets, authorization, configuration): stop with the cause.
    Fatal,
}

/// Sorts a librdkafka error into [`ErrorClass`]. Codes not listed are fatal: an error that
/// stops the pipeline with its cause is visible, a fatal one retried forever is not.
pub fn classify(error: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
        return ErrorClass::Fatal;
    }
    match error {
        KafkaError::NoMessageReceived | KafkaError::PartitionEOF(_) => {
            return ErrorClass::Transient
        }
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => return ErrorClass::Fatal,
        _ => {}
    }
    match error.rdkafka_error_code() {
        Some(
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::MessageTimedOut
            | C::RequestTimedOut
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::WaitingForCoordinator
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::PreferredLeaderNotAvailable
            | C::EligibleLeadersNotAvailable
            | C::ThrottlingQuotaExceeded
            | C::QueueFull
            | C::Retry
            | C::WaitCache
            | C::InProgress
            | C::PartitionEOF
            | C::Interrupted
            | C::NodeUpdate
            | C::RebootstrapRequired,
        ) => ErrorClass::Transient,
        Some(
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId,
        ) => ErrorClass::UnknownTopic,
        _ => ErrorClass::Fatal,
    }
}

/// Exponential backoff: [`BACKOFF_START`], doubling up to [`BACKOFF_MAX`]; counts attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    delay: Duration,
    /// When the current run of unknown-topic errors began.
    unknown_since: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// No failure yet.
    pub fn new() -> Self {
        Self {
            attempt: 0,
            delay: BACKOFF_START,
            unknown_since: None,
        }
    }

    /// Counts a failure: returns its attempt number (1 for the first) and how long to wait.
    pub fn failed(&mut self) -> (u32, Duration) {
        self.attempt += 1;
        let delay = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        (self.attempt, delay)
    }

    /// A success: the next failure starts over at [`BACKOFF_START`].
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Decides about `error` seen at `now`: `Some(attempt, delay)` to retry after `delay`,
    /// `None` to stop (fatal, or unknown topic for longer than [`UNKNOWN_TOPIC_GRACE`]).
    pub fn on_error(&mut self, error: &KafkaError, now: Instant) -> Option<(u32, Duration)> {
        match classify(error) {
            ErrorClass::Fatal => None,
            ErrorClass::Transient => Some(self.failed()),
            ErrorClass::UnknownTopic => {
                let since = *self.unknown_since.get_or_insert(now);
                (now.duration_since(since) < UNKNOWN_TOPIC_GRACE).then(|| self.failed())
            }
        }
    }
}

/// `0..3` or `0, 2, 5`: a partition list for messages.
fn describe_partitions(partitions: &[i32]) -> String {
    let contiguous = partitions.iter().enumerate().all(|(i, p)| *p == i as i32);
    match (contiguous, partitions.last()) {
        (true, Some(last)) => format!("{}..={last}", partitions[0]),
        _ => partitions
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Runs `f` on this thread; inside a multi-threaded tokio runtime, tells it the thread blocks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

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
    /// Only these partitions (a worker's share of a pipeline, given by its consumer group);
    /// `None`: every partition of the topics, including those added later.
    pub only: Option<BTreeSet<TopicPartition>>,
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
    #[error("topic {topic:?} does not exist on {brokers} (or has no partitions); retried for {waited_secs} s")]
    TopicMissing {
        /// Topic asked for.
        topic: String,
        /// The configured bootstrap servers.
        brokers: String,
        /// How long it was retried.
        waited_secs: u64,
    },
    /// The stored positions do not fit the topic the broker has now: it was deleted and
    /// recreated (or the broker lost data). Resuming would read a different stream mid-way.
    #[error("topic {topic:?} partition {partition}: the stored position is offset {stored}, but {broker_reports}; the topic was deleted and recreated (or the broker lost data) since this pipeline read it, so its stored positions no longer make sense and Tidemark refuses to resume mid-topic. To read the new topic from its beginning, start a new pipeline (a new pipeline_id, table and state directory); to resume this one, restore the original topic")]
    TopicRecreated {
        /// The topic.
        topic: String,
        /// The partition whose position does not fit.
        partition: i32,
        /// The next offset the checkpoint or table holds for it.
        stored: i64,
        /// What the broker reports instead (its partition count or offset range).
        broker_reports: String,
    },
    /// The topic's id differs from the one stored with the positions: the topic was deleted
    /// and recreated under the same name (possibly with as many records as were read, which
    /// the offset checks of [`KafkaSourceError::TopicRecreated`] cannot see).
    #[error("topic {topic:?} was deleted and recreated {when}: the table's commits record topic id {stored_id} for it, but the broker's topic {topic:?} has id {broker_id}; the stored positions ({positions}) belong to the old topic, so Tidemark refuses to resume mid-topic. To read the new topic from its beginning, start a new pipeline (a new pipeline_id, table and state directory); to resume this one, restore the original topic")]
    TopicIdChanged {
        /// The topic.
        topic: String,
        /// The id recorded with the positions.
        stored_id: String,
        /// The id the broker reports now.
        broker_id: String,
        /// The positions of the topic that no longer fit.
        positions: String,
        /// "since this pipeline last read it" or "while this pipeline was running".
        when: &'static str,
    },
    /// The topic ids could not be read (a fatal broker error, not "ids unsupported").
    #[error("cannot read the ids of topics {topics:?} from {brokers}: {source}")]
    TopicIds {
        /// The topics asked for.
        topics: Vec<String>,
        /// The configured bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        source: Box<KafkaError>,
    },
    /// A stop was requested while connecting (waiting out a broker outage).
    #[error("stop requested while connecting to Kafka ({brokers})")]
    Stopped {
        /// The configured bootstrap servers.
        brokers: String,
    },
    /// A source property Tidemark reads itself has a bad value.
    #[error("source property {key:?} = {value:?}: {message}")]
    Property {
        /// The property.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
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
    /// A worker could not join its pipeline's consumer group.
    #[error("cannot join consumer group {group:?} at {brokers}: {what}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Join {
        /// The group (`source.group`).
        group: String,
        /// The configured bootstrap servers.
        brokers: String,
        /// The step that failed.
        what: String,
        /// librdkafka's error, if the step was one of its calls.
        source: Option<Box<KafkaError>>,
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
    /// Shared with the discovery's metadata requests, which run on a blocking thread.
    consumer: Arc<StreamConsumer>,
    /// A metadata refresh in flight (see [`KafkaSource::discover`]): reading never waits on it.
    /// (A detached thread: a process that exits never waits for the broker's answer.)
    discovery: Option<std::sync::mpsc::Receiver<Discovered>>,
    brokers: String,
    topics: Vec<String>,
    positions: Positions,
    /// Every assigned partition, including those discovered while running.
    assigned: BTreeSet<TopicPartition>,
    /// Offset each partition starts at when no position is known (its low watermark when it
    /// was assigned).
    low_at_start: HashMap<TopicPartition, i64>,
    /// End of each partition when the source started: what "caught up" means.
    high_at_start: HashMap<TopicPartition, i64>,
    topic_names: HashMap<String, Arc<str>>,
    /// Partitions assigned by discovery and not yet reported by `take_added_partitions`.
    added: Vec<(String, i32)>,
    discovery_interval: Duration,
    next_discovery: Instant,
    /// Failures of the periodic metadata refresh.
    discovery_backoff: Backoff,
    /// Failures while reading records.
    read_backoff: Backoff,
    /// Each topic's id as the broker reported it at connect (`None`: not reported).
    broker_topic_ids: BTreeMap<String, Option<String>>,
    /// The ids handed to [`KafkaSource::connect_until`] (what the table recorded).
    stored_topic_ids: BTreeMap<String, String>,
    /// [`KafkaSourceConfig::only`].
    only: Option<BTreeSet<TopicPartition>>,
    /// The consumer's queue, for taking what is queued in a tight loop
    /// ([`crate::kafka_fetched`]; `None`: every message through `recv`).
    fetched: Option<ConsumerQueue>,
}

/// The partitions of `topic` per the broker, as an error librdkafka-style when the topic is
/// missing or its metadata carries an error (so [`classify`] can judge it).
pub(crate) fn topic_partitions(
    consumer: &impl Consumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    };
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// `topic`'s entries of `positions`, for messages (`p0=10, p1=12`).
fn topic_positions(positions: &Positions, topic: &str) -> String {
    let list: Vec<String> = positions
        .iter()
        .filter(|(tp, _)| tp.topic == topic)
        .map(|(tp, next)| format!("partition {} at offset {next}", tp.partition))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// The start-time decision on topic ids: for each topic with stored positions, a stored id
/// that differs from the broker's refuses the start. A topic without stored positions is read
/// from its beginning anyway, so a new id there is only logged. Unknown ids on either side
/// (an older table, a broker without ids) leave the offset checks alone; logged once.
fn check_ids_at_start(
    start: &Positions,
    stored: &BTreeMap<String, String>,
    broker: &BTreeMap<String, Option<String>>,
) -> Result<(), KafkaSourceError> {
    let mut unknown = Vec::new();
    for (topic, broker_id) in broker {
        let stored_id = stored.get(topic).map(String::as_str);
        match check_topic_id(stored_id, broker_id.as_deref()) {
            TopicIdCheck::Same => {}
            TopicIdCheck::Changed { stored, broker } => {
                let positions = topic_positions(start, topic);
                if start.iter().any(|(tp, _)| tp.topic == *topic) {
                    return Err(KafkaSourceError::TopicIdChanged {
                        topic: topic.clone(),
                        stored_id: stored,
                        broker_id: broker,
                        positions,
                        when: "since this pipeline last read it",
                    });
                }
                warn!(
                    topic = %topic,
                    stored_id = %stored,
                    broker_id = %broker,
                    "kafka: topic was recreated since the stored id was recorded; no position is stored for it, so it is read from its beginning"
                );
            }
            TopicIdCheck::Unknown => {
                if broker_id.is_none()
                    || (stored_id.is_none() && start.iter().any(|(tp, _)| tp.topic == *topic))
                {
                    unknown.push(topic.as_str());
                }
            }
        }
    }
    if !unknown.is_empty() {
        let broker_has_none = broker.values().all(Option::is_none);
        info!(
            topics = ?unknown,
            broker_reports_ids = !broker_has_none,
            "kafka: topic ids unknown (the broker does not report them, or the table's commits predate them): a deleted and recreated topic is recognized only by its partitions and offsets"
        );
    }
    Ok(())
}

/// Runs `op` until it succeeds, retrying what [`Backoff::on_error`] allows (sleeping on this
/// thread, one log line per retry) and checking `stop` between attempts. A final error is
/// returned as is, for the caller to wrap.
fn retry_blocking<T>(
    what: &str,
    stop: &dyn Fn() -> bool,
    mut op: impl FnMut() -> Result<T, KafkaError>,
) -> Result<Result<T, KafkaError>, ()> {
    let mut backoff = Backoff::new();
    loop {
        match op() {
            Ok(v) => return Ok(Ok(v)),
            Err(e) => match backoff.on_error(&e, Instant::now()) {
                None => return Ok(Err(e)),
                Some((attempt, delay)) => {
                    warn!(
                        error = %e,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        "kafka: {what} failed (transient); retrying"
                    );
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        if stop() {
                            return Err(());
                        }
                        std::thread::sleep(
                            until
                                .saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(100)),
                        );
                    }
                }
            },
        }
    }
}

/// Each partition's end offset (high watermark) of `config.topics`, asked of the broker once
/// with `timeout` per request: for `tidemark status --check`, which judges whether records
/// wait without running the pipeline. Nothing is assigned or committed.
pub fn fetch_partition_ends(
    config: &KafkaSourceConfig,
    timeout: Duration,
) -> Result<Vec<(String, i32, i64)>, KafkaSourceError> {
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
    let consumer: StreamConsumer = client.create().map_err(|source| KafkaSourceError::Create {
        brokers: config.brokers.clone(),
        source: Box::new(source),
    })?;
    let mut ends = Vec::new();
    for topic in &config.topics {
        let metadata_error = |source: KafkaError| KafkaSourceError::Metadata {
            topic: topic.clone(),
            brokers: config.brokers.clone(),
            source: Box::new(source),
        };
        let partitions =
            blocking(|| topic_partitions(&consumer, topic, timeout)).map_err(metadata_error)?;
        for partition in partitions {
            let (_, high) = blocking(|| consumer.fetch_watermarks(topic, partition, timeout))
                .map_err(metadata_error)?;
            ends.push((topic.clone(), partition, high));
        }
    }
    Ok(ends)
}

/// What one metadata refresh found (see [`KafkaSource::poll_discovery`]): each topic's
/// partitions, or the error of the first topic that failed (later topics are not asked), and
/// the topics' ids when the broker reported ids at connect (`None`: not asked).
struct Discovered {
    partitions: Vec<(String, Result<Vec<i32>, KafkaError>)>,
    ids: Option<Result<BTreeMap<String, Option<String>>, KafkaError>>,
}

impl Discovered {
    /// Asks the broker (blocking, up to [`DISCOVERY_TIMEOUT`] per request).
    fn fetch(consumer: &StreamConsumer, topics: &[String], with_ids: bool) -> Self {
        let mut partitions = Vec::new();
        for topic in topics {
            let listed = topic_partitions(consumer, topic, DISCOVERY_TIMEOUT);
            let failed = listed.is_err();
            partitions.push((topic.clone(), listed));
            if failed {
                return Self {
                    partitions,
                    ids: None,
                };
            }
        }
        let ids =
            with_ids.then(|| describe_topic_ids(consumer.client(), topics, DISCOVERY_TIMEOUT));
        Self { partitions, ids }
    }
}

impl KafkaSource {
    /// Connects, discovers partitions and assigns them at `start` (beginning where unknown).
    /// Transient broker errors are retried without end (see [`KafkaSource::connect_until`]).
    pub fn connect(
        config: &KafkaSourceConfig,
        start: &Positions,
    ) -> Result<Self, KafkaSourceError> {
        Self::connect_until(config, start, &BTreeMap::new(), &|| false)
    }

    /// [`KafkaSource::connect`], giving up with [`KafkaSourceError::Stopped`] once `stop`
    /// returns true while it waits out a transient error. Refuses positions that do not fit
    /// the broker's topic ([`KafkaSourceError::TopicRecreated`]), and positions of a topic
    /// whose id in `stored_ids` (topic -> id, as recorded with the positions; empty when
    /// unknown) differs from the broker's ([`KafkaSourceError::TopicIdChanged`]).
    pub fn connect_until(
        config: &KafkaSourceConfig,
        start: &Positions,
        stored_ids: &BTreeMap<String, String>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Self, KafkaSourceError> {
        let mut discovery_interval = DEFAULT_DISCOVERY_INTERVAL;
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
            if k == DISCOVERY_INTERVAL_PROPERTY {
                let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                    KafkaSourceError::Property {
                        key: k.clone(),
                        value: v.clone(),
                        message: "must be a positive number of milliseconds".into(),
                    }
                })?;
                discovery_interval = Duration::from_millis(ms);
                continue;
            }
            client.set(k, v);
        }
        let consumer: StreamConsumer =
            client.create().map_err(|source| KafkaSourceError::Create {
                brokers: config.brokers.clone(),
                source: Box::new(source),
            })?;
        let stopped = || KafkaSourceError::Stopped {
            brokers: config.brokers.clone(),
        };

        let mut assignment = TopicPartitionList::new();
        let mut low_at_start = HashMap::new();
        let mut high_at_start = HashMap::new();
        let mut positions = Positions::new();
        let mut topic_names = HashMap::new();
        for topic in &config.topics {
            let started = Instant::now();
            let partitions = retry_blocking(
                &format!("reading metadata of topic {topic:?}"),
                stop,
                || topic_partitions(&consumer, topic, METADATA_TIMEOUT),
            )
            .map_err(|()| stopped())?
            .map_err(|source| match classify(&source) {
                ErrorClass::UnknownTopic => KafkaSourceError::TopicMissing {
                    topic: topic.clone(),
                    brokers: config.brokers.clone(),
                    waited_secs: started.elapsed().as_secs(),
                },
                _ => KafkaSourceError::Metadata {
                    topic: topic.clone(),
                    brokers: config.brokers.clone(),
                    source: Box::new(source),
                },
            })?;
            // A stored partition the topic no longer has: the topic shrank, i.e. was recreated.
            for (tp, stored) in start.iter().filter(|(tp, _)| tp.topic == *topic) {
                if !partitions.contains(&tp.partition) {
                    return Err(KafkaSourceError::TopicRecreated {
                        topic: topic.clone(),
                        partition: tp.partition,
                        stored,
                        broker_reports: format!(
                            "the broker reports {} partition(s) ({}) and no partition {}",
                            partitions.len(),
                            describe_partitions(&partitions),
                            tp.partition
                        ),
                    });
                }
            }
            topic_names.insert(topic.clone(), Arc::from(topic.as_str()));
            for partition in partitions {
                let tp = TopicPartition {
                    topic: topic.clone(),
                    partition,
                };
                if config.only.as_ref().is_some_and(|only| !only.contains(&tp)) {
                    continue;
                }
                let (low, high) =
                    retry_blocking(&format!("reading the offsets of {tp}"), stop, || {
                        consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                    })
                    .map_err(|()| stopped())?
                    .map_err(|source| KafkaSourceError::Watermarks {
                        partition: tp.clone(),
                        source: Box::new(source),
                    })?;
                let offset = match start.get(topic, partition) {
                    Some(next) if next > high => {
                        return Err(KafkaSourceError::TopicRecreated {
                            topic: topic.clone(),
                            partition,
                            stored: next,
                            broker_reports: format!(
                                "the broker's partition ends at offset {high} (holds offsets {low}..{high})"
                            ),
                        });
                    }
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
        let broker_topic_ids = retry_blocking("reading topic ids", stop, || {
            describe_topic_ids(consumer.client(), &config.topics, METADATA_TIMEOUT)
        })
        .map_err(|()| stopped())?
        .map_err(|source| KafkaSourceError::TopicIds {
            topics: config.topics.clone(),
            brokers: config.brokers.clone(),
            source: Box::new(source),
        })?;
        check_ids_at_start(start, stored_ids, &broker_topic_ids)?;
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
            discovery_interval_ms = discovery_interval.as_millis() as u64,
            "kafka source assigned"
        );
        let consumer = Arc::new(consumer);
        Ok(Self {
            fetched: ConsumerQueue::of(consumer.clone()),
            consumer,
            discovery: None,
            brokers: config.brokers.clone(),
            topics: config.topics.clone(),
            positions,
            assigned: high_at_start.keys().cloned().collect(),
            low_at_start,
            high_at_start,
            topic_names,
            added: Vec::new(),
            discovery_interval,
            next_discovery: Instant::now() + discovery_interval,
            discovery_backoff: Backoff::new(),
            read_backoff: Backoff::new(),
            broker_topic_ids,
            stored_topic_ids: stored_ids.clone(),
            only: config.only.clone(),
        })
    }

    /// The id of each configured topic this source vouches for, for the engine to record
    /// with the positions: the broker's, or where the broker reports none, the stored one
    /// (kept, so a later start against a broker with ids can still check it).
    pub fn topic_ids(&self) -> BTreeMap<String, String> {
        self.topics
            .iter()
            .filter_map(|t| {
                let id = self
                    .broker_topic_ids
                    .get(t)
                    .cloned()
                    .flatten()
                    .or_else(|| self.stored_topic_ids.get(t).cloned())?;
                Some((t.clone(), id))
            })
            .collect()
    }

    /// Re-reads the topics' ids during discovery: an id that changed since connect means the
    /// topic was deleted and recreated under the running pipeline. `Ok(Err(_))` when the ids
    /// could not be read this time (logged by the caller like a failed metadata refresh).
    fn ids_unchanged(
        &self,
        ids: Option<Result<BTreeMap<String, Option<String>>, KafkaError>>,
    ) -> Result<Result<(), KafkaError>, KafkaSourceError> {
        let now = match ids {
            None => return Ok(Ok(())),
            Some(Ok(now)) => now,
            Some(Err(e)) => return Ok(Err(e)),
        };
        for (topic, at_connect) in &self.broker_topic_ids {
            let now = now.get(topic).cloned().flatten();
            if let TopicIdCheck::Changed { stored, broker } =
                check_topic_id(at_connect.as_deref(), now.as_deref())
            {
                return Err(KafkaSourceError::TopicIdChanged {
                    topic: topic.clone(),
                    stored_id: stored,
                    broker_id: broker,
                    positions: topic_positions(&self.positions, topic),
                    when: "while this pipeline was running",
                });
            }
        }
        Ok(Ok(()))
    }

    /// Re-reads the topics' metadata and assigns partitions added since, from their beginning.
    /// A failed refresh is retried with backoff (logged); it never stops the source. A
    /// partition that disappeared while running is left to the read path (librdkafka reports
    /// it as unknown, which stops the source after [`UNKNOWN_TOPIC_GRACE`]).
    /// Starts a metadata refresh on a thread of its own when one is due, and applies the one
    /// that finished, if any: the broker's answer (which a busy broker can take seconds to
    /// give, up to [`DISCOVERY_TIMEOUT`] per request) never holds up reading or sealing.
    fn poll_discovery(&mut self) -> Result<(), KafkaSourceError> {
        if self.discovery.is_none() && Instant::now() >= self.next_discovery {
            let (consumer, topics) = (self.consumer.clone(), self.topics.clone());
            let with_ids = self.broker_topic_ids.values().any(Option::is_some);
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("tidemark-discovery".into())
                .spawn(move || {
                    // The receiver may be gone (the source dropped): nothing to tell then.
                    let _ = tx.send(Discovered::fetch(&consumer, &topics, with_ids));
                });
            match spawned {
                Ok(_) => self.discovery = Some(rx),
                Err(e) => {
                    warn!(error = %e, "kafka: cannot start the partition discovery thread; retrying");
                    self.next_discovery = Instant::now() + self.discovery_interval;
                }
            }
        }
        let Some(rx) = self.discovery.as_ref() else {
            return Ok(());
        };
        match rx.try_recv() {
            Ok(found) => {
                self.discovery = None;
                self.discover(found)
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.discovery = None;
                warn!("kafka: the partition discovery thread ended without an answer; retrying");
                self.next_discovery = Instant::now() + self.discovery_interval;
                Ok(())
            }
        }
    }

    fn discover(&mut self, found: Discovered) -> Result<(), KafkaSourceError> {
        let mut new = Vec::new();
        for (topic, listed) in found.partitions {
            match listed {
                Ok(partitions) => {
                    for partition in partitions {
                        let tp = TopicPartition {
                            topic: topic.clone(),
                            partition,
                        };
                        // A worker's partitions come from its group, never from discovery.
                        if !self.assigned.contains(&tp) && self.only.is_none() {
                            new.push(tp);
                        }
                    }
                }
                Err(e) => {
                    let (attempt, delay) = self.discovery_backoff.failed();
                    let delay = delay.min(self.discovery_interval);
                    warn!(
                        topic = %topic,
                        error = %e,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        "kafka: partition discovery (metadata refresh) failed; retrying"
                    );
                    self.next_discovery = Instant::now() + delay;
                    return Ok(());
                }
            }
        }
        if let Err(e) = self.ids_unchanged(found.ids)? {
            let (attempt, delay) = self.discovery_backoff.failed();
            let delay = delay.min(self.discovery_interval);
            warn!(
                error = %e,
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                "kafka: partition discovery (topic ids) failed; retrying"
            );
            self.next_discovery = Instant::now() + delay;
            return Ok(());
        }
        self.discovery_backoff.reset();
        self.next_discovery = Instant::now() + self.discovery_interval;
        if new.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for tp in &new {
            let low = match blocking(|| {
                self.consumer
                    .fetch_watermarks(&tp.topic, tp.partition, DISCOVERY_TIMEOUT)
            }) {
                Ok((low, high)) => {
                    info!(
                        partition = %tp,
                        log_start = low,
                        end = high,
                        "kafka: new partition discovered; reading it from its beginning"
                    );
                    if low > 0 {
                        warn!(
                            partition = %tp,
                            log_start = low,
                            "new partition's offsets below its log start were deleted by the broker before this pipeline read them"
                        );
                    }
                    low
                }
                Err(e) => {
                    // Assigned at the beginning anyway; the offsets are only for the log.
                    info!(partition = %tp, error = %e, "kafka: new partition discovered (its offsets could not be read); reading it from its beginning");
                    0
                }
            };
            list.add_partition_offset(&tp.topic, tp.partition, Offset::Beginning)
                .map_err(|source| KafkaSourceError::Assign {
                    positions: format!("{tp}=beginning"),
                    source: Box::new(source),
                })?;
            self.low_at_start.insert(tp.clone(), low);
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|source| KafkaSourceError::Assign {
                positions: new
                    .iter()
                    .map(|tp| format!("{tp}=beginning"))
                    .collect::<Vec<_>>()
                    .join(", "),
                source: Box::new(source),
            })?;
        for tp in new {
            self.added.push((tp.topic.clone(), tp.partition));
            self.assigned.insert(tp);
        }
        Ok(())
    }

    /// Decides about a read error: `Ok(delay)` to wait and go on (logged), `Err` to stop.
    fn on_read_error(&mut self, source: KafkaError) -> Result<Duration, KafkaSourceError> {
        match self.read_backoff.on_error(&source, Instant::now()) {
            Some((attempt, delay)) => {
                warn!(
                    error = %source,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    brokers = %self.brokers,
                    "kafka: reading failed (transient); retrying"
                );
                Ok(delay)
            }
            None => Err(KafkaSourceError::Consume {
                source: Box::new(source),
            }),
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

    /// Every assigned `(topic, partition)`, including partitions discovered while running.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        self.assigned
            .iter()
            .map(|tp| (tp.topic.clone(), tp.partition))
            .collect()
    }

    /// Each assigned partition's end offset (high watermark) as librdkafka last saw it in a
    /// fetch response, or as it was at start when no fetch reported it yet: no request is
    /// sent, so it is cheap enough to call every second (for lag metrics).
    pub fn partition_ends(&self) -> Vec<(String, i32, i64)> {
        let rk = self.consumer.client().native_ptr();
        self.assigned
            .iter()
            .filter_map(|tp| {
                let topic = std::ffi::CString::new(tp.topic.as_str()).ok()?;
                let (mut low, mut high) = (-1i64, -1i64);
                // SAFETY: `rk` is this consumer's live handle and `topic` a NUL-terminated
                // string that outlives the call; librdkafka only reads its cached offsets.
                let err = unsafe {
                    rdkafka::bindings::rd_kafka_get_watermark_offsets(
                        rk,
                        topic.as_ptr(),
                        tp.partition,
                        &mut low,
                        &mut high,
                    )
                };
                let cached = (err
                    == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    && high >= 0)
                    .then_some(high);
                let high = cached.or_else(|| self.high_at_start.get(tp).copied())?;
                Some((tp.topic.clone(), tp.partition, high))
            })
            .collect()
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

    /// Moves up to `max` records librdkafka has fetched into `batch` (advancing the positions
    /// over each), without waiting; returns the first error met (what follows it stays
    /// queued, see [`crate::kafka_fetched`]). Nothing when there is no queue.
    fn take_fetched(&mut self, max: usize, batch: &mut Vec<SourceRecord>) -> Option<KafkaError> {
        let queue = self.fetched.as_ref()?;
        let names = &self.topic_names;
        let from = batch.len();
        let error = queue.take(
            max,
            |t| names.get(t).cloned().unwrap_or_else(|| Arc::from(t)),
            batch,
        );
        self.positions.advance_past_all(&batch[from..]);
        error
    }

    /// A record was read: transient read errors are over (said once).
    fn note_read(&mut self) {
        if self.read_backoff.attempts() > 0 {
            info!(
                after_attempts = self.read_backoff.attempts(),
                "kafka: reading again after transient errors"
            );
            self.read_backoff.reset();
        }
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
        self.poll_discovery()?;
        let mut batch = Vec::with_capacity(max_records.min(65_536));
        while batch.len() < max_records {
            // What librdkafka has fetched, in a tight loop (the common case under backlog).
            let before = batch.len();
            let error = self.take_fetched(max_records - batch.len(), &mut batch);
            if batch.len() > before {
                self.note_read();
            }
            if let Some(error) = error {
                let delay = self.on_read_error(error)?;
                tokio::time::sleep(delay).await;
                break;
            }
            if batch.len() >= max_records {
                break;
            }
            // A message already fetched is taken without arming a timer (no clock read, no
            // timer entry per message).
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
                    // Transient: hand out what was read, wait, let the caller come back.
                    let delay = self.on_read_error(source)?;
                    tokio::time::sleep(delay).await;
                    break;
                }
                Ok(Ok(msg)) => {
                    let record = self.owned(&msg);
                    drop(msg);
                    self.note_read();
                    self.positions.advance_past(&record);
                    batch.push(record);
                }
            }
        }
        Ok(batch)
    }

    fn take_added_partitions(&mut self) -> Vec<(String, i32)> {
        std::mem::take(&mut self.added)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    fn code(e: &KafkaError) -> ErrorClass {
        classify(e)
    }

    #[test]
    fn transient_errors_are_retried() {
        for c in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NetworkException,
            RDKafkaErrorCode::Resolve,
        ] {
            for e in [
                KafkaError::MessageConsumption(c),
                KafkaError::Global(c),
                KafkaError::MetadataFetch(c),
            ] {
                assert_eq!(code(&e), ErrorClass::Transient, "{e:?}");
            }
        }
    }

    #[test]
    fn fatal_errors_stop() {
        for c in [
            RDKafkaErrorCode::AutoOffsetReset,
            RDKafkaErrorCode::OffsetOutOfRange,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::SSL,
            RDKafkaErrorCode::InvalidArgument,
            RDKafkaErrorCode::Fail,
        ] {
            assert_eq!(
                code(&KafkaError::MessageConsumption(c)),
                ErrorClass::Fatal,
                "{c:?}"
            );
        }
        // librdkafka flags some errors fatal whatever their code.
        assert_eq!(
            code(&KafkaError::MessageConsumptionFatal(
                RDKafkaErrorCode::BrokerTransportFailure
            )),
            ErrorClass::Fatal
        );
        assert_eq!(
            code(&KafkaError::ClientCreation("bad".into())),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn unknown_topic_is_retried_only_for_a_while() {
        let e = KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(code(&e), ErrorClass::UnknownTopic);
        let mut b = Backoff::new();
        let t0 = Instant::now();
        assert_eq!(b.on_error(&e, t0), Some((1, BACKOFF_START)));
        assert!(b.on_error(&e, t0 + Duration::from_secs(29)).is_some());
        assert_eq!(b.on_error(&e, t0 + UNKNOWN_TOPIC_GRACE), None);
        // A success starts the grace period over.
        b.reset();
        assert!(b
            .on_error(&e, t0 + UNKNOWN_TOPIC_GRACE + Duration::from_secs(1))
            .is_some());
        let fatal = KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset);
        assert_eq!(b.on_error(&fatal, t0), None);
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_10s() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..10).map(|_| b.failed().1.as_millis() as u64).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert_eq!(b.failed(), (1, Duration::from_millis(100)));
    }

    #[test]
    fn partition_lists_read_well() {
        assert_eq!(describe_partitions(&[0, 1, 2]), "0..=2");
        assert_eq!(describe_partitions(&[0, 2]), "0, 2");
    }

    fn mock_with(
        topic: &str,
        partitions: i32,
        records: u64,
    ) -> MockCluster<'static, DefaultProducerContext> {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(topic, partitions, 1).expect("topic");
        produce(&cluster.bootstrap_servers(), topic, partitions, 0..records);
        cluster
    }

    fn produce(brokers: &str, topic: &str, partitions: i32, range: std::ops::Range<u64>) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("producer");
        for i in range {
            let payload = format!("{i}");
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition((i % partitions as u64) as i32)
                        .payload(&payload),
                )
                .map_err(|(e, _)| e)
                .expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// A source of `topic` on `brokers` with no extra properties (the unit tests' settings).
    pub(crate) fn config(brokers: String, topic: &str) -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers,
            topics: vec![topic.to_string()],
            group_id: "unit".into(),
            properties: BTreeMap::new(),
            only: None,
        }
    }

    fn refused(result: Result<KafkaSource, KafkaSourceError>) -> String {
        match result {
            Ok(_) => panic!("connect must refuse"),
            Err(e @ KafkaSourceError::TopicRecreated { .. }) => e.to_string(),
            Err(e) => panic!("wrong error: {e}"),
        }
    }

    /// A mock cluster with topic `orders` (2 partitions, `records` records), its brokers, and a
    /// source connected to it from the beginning.
    fn orders_source(
        records: u64,
    ) -> (
        MockCluster<'static, DefaultProducerContext>,
        String,
        KafkaSource,
    ) {
        let cluster = mock_with("orders", 2, records);
        let brokers = cluster.bootstrap_servers();
        let source = KafkaSource::connect(&config(brokers.clone(), "orders"), &Positions::new())
            .expect("connect");
        (cluster, brokers, source)
    }

    /// The offsets of `read`'s records of partition `p`, in the order read.
    fn partition_offsets(read: &[SourceRecord], p: i32) -> Vec<i64> {
        read.iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect()
    }

    /// Reads from `source` until at least `n` records came (30 s at most), in batches of up
    /// to 512.
    async fn read_at_least(source: &mut KafkaSource, n: usize) -> Vec<SourceRecord> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut read = Vec::new();
        while read.len() < n {
            assert!(Instant::now() < deadline, "read only {} of {n}", read.len());
            read.extend(
                source
                    .next_batch(512, Duration::from_millis(100))
                    .await
                    .expect("read"),
            );
        }
        read
    }

    /// Records taken many at a time from the consumer's queue (`kafka_fetched`) carry what
    /// was produced: topic, partition, offset, key (or none), payload (or none) and the
    /// producer's timestamp, in each partition's order, each once.
    #[tokio::test(flavor = "multi_thread")]
    async fn records_taken_in_batches_carry_every_field_as_produced() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("fields", 3, 1).expect("topic");
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        let n = 3000u64;
        for i in 0..n {
            let key = format!("k{i}");
            let payload = format!("p{i}");
            let mut record = BaseRecord::<str, str>::to("fields")
                .partition((i % 3) as i32)
                .timestamp(1_700_000_000_000 + i as i64);
            if !i.is_multiple_of(7) {
                record = record.key(key.as_str());
            }
            if !i.is_multiple_of(11) {
                record = record.payload(payload.as_str());
            }
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        let c = config(cluster.bootstrap_servers(), "fields");
        let mut source = KafkaSource::connect(&c, &Positions::new()).unwrap();
        let read = read_at_least(&mut source, n as usize).await;
        assert_eq!(read.len() as u64, n, "each record once");
        for p in 0..3 {
            let offsets = partition_offsets(&read, p);
            let expected: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(offsets, expected, "partition {p} in order, no gap");
        }
        for r in &read {
            // Partition p's offset o is record i = o * 3 + p.
            let i = r.offset as u64 * 3 + r.partition as u64;
            assert_eq!(&*r.topic, "fields");
            assert_eq!(r.timestamp_ms, Some(1_700_000_000_000 + i as i64));
            let key = (!i.is_multiple_of(7)).then(|| format!("k{i}").into_bytes());
            assert_eq!(r.key, key, "key of record {i}");
            let payload = (!i.is_multiple_of(11)).then(|| format!("p{i}").into_bytes());
            assert_eq!(r.payload, payload, "payload of record {i}");
        }
        assert_eq!(source.positions().get("fields", 0), Some(1000));
    }

    /// A fetch the broker refuses (topic authorization), queued while the source is not
    /// reading, stops the source with that cause when the batch loop takes it (an error
    /// dropped there would never be seen again: librdkafka reports it once), and every record
    /// handed out before it is in order, once, with the positions just past it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_fetch_stops_the_source_naming_the_cause() {
        let (cluster, brokers, mut source) = orders_source(100);
        let mut read = read_at_least(&mut source, 100).await;
        // One refused fetch, queued (with what follows it) while the source is not reading:
        // the next read takes it from the queue in its batch loop, which must report it.
        cluster.request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        produce(&brokers, "orders", 2, 100..150);
        std::thread::sleep(Duration::from_millis(1500));
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            assert!(
                Instant::now() < deadline,
                "the refused fetch was never reported"
            );
            match source.next_batch(1000, Duration::from_millis(100)).await {
                Ok(batch) => read.extend(batch),
                Err(e) => break e,
            }
        };
        assert!(
            error.to_string().contains("uthoriz"),
            "the error names the refusal: {error}"
        );
        for p in 0..2 {
            let offsets = partition_offsets(&read, p);
            assert_eq!(
                offsets,
                (0..offsets.len() as i64).collect::<Vec<_>>(),
                "partition {p}: in order, once, no gap"
            );
            assert_eq!(
                source.positions().get("orders", p),
                Some(offsets.len() as i64)
            );
        }
    }

    /// The periodic metadata refresh runs beside reading: a broker that takes seconds to
    /// answer it (4 s here, every request) does not hold up `next_batch`, which a refresh on
    /// the read path did for up to its 5 s timeout per request (seen on tansu under load).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_slow_metadata_refresh_never_holds_up_reading() {
        let cluster = mock_with("orders", 2, 20);
        let mut c = config(cluster.bootstrap_servers(), "orders");
        c.properties
            .insert(DISCOVERY_INTERVAL_PROPERTY.to_string(), "1".to_string());
        let mut source = KafkaSource::connect(&c, &Positions::new()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut read = 0;
        while read < 20 {
            assert!(Instant::now() < deadline, "read {read} of 20");
            read += source
                .next_batch(100, Duration::from_millis(100))
                .await
                .unwrap()
                .len();
        }
        cluster
            .broker_round_trip_time(1, Duration::from_secs(4))
            .unwrap();
        // A refresh is due at every call; each of its requests now takes 4 s.
        let started = Instant::now();
        for _ in 0..5 {
            source
                .next_batch(100, Duration::from_millis(100))
                .await
                .unwrap();
        }
        let took = started.elapsed();
        cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
        assert!(
            took < Duration::from_secs(3),
            "five reads of 100 ms took {took:?}: the metadata refresh held them up"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stored_position_past_the_end_is_refused_naming_the_topic() {
        let cluster = mock_with("orders", 2, 20);
        let mut start = Positions::new();
        start.set("orders", 0, 10);
        start.set("orders", 1, 500);
        let msg = refused(KafkaSource::connect(
            &config(cluster.bootstrap_servers(), "orders"),
            &start,
        ));
        for want in [
            "\"orders\"",
            "partition 1",
            "offset 500",
            "ends at offset 10",
            "deleted and recreated",
            "new pipeline",
        ] {
            assert!(msg.contains(want), "{want:?} not in: {msg}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stored_partition_the_topic_lacks_is_refused() {
        let cluster = mock_with("orders", 2, 20);
        let mut start = Positions::new();
        start.set("orders", 0, 10);
        start.set("orders", 3, 4);
        let msg = refused(KafkaSource::connect(
            &config(cluster.bootstrap_servers(), "orders"),
            &start,
        ));
        for want in [
            "\"orders\"",
            "partition 3",
            "offset 4",
            "2 partition(s) (0..=1)",
        ] {
            assert!(msg.contains(want), "{want:?} not in: {msg}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn positions_that_fit_are_accepted_and_bad_discovery_interval_is_refused() {
        let cluster = mock_with("orders", 2, 20);
        let mut start = Positions::new();
        start.set("orders", 0, 10);
        start.set("orders", 1, 3);
        let mut c = config(cluster.bootstrap_servers(), "orders");
        let source = KafkaSource::connect(&c, &start).expect("positions fit");
        assert_eq!(
            source.partitions(),
            [("orders".into(), 0), ("orders".into(), 1)]
        );
        drop(source);
        c.properties
            .insert(DISCOVERY_INTERVAL_PROPERTY.into(), "soon".into());
        assert!(matches!(
            KafkaSource::connect(&c, &start),
            Err(KafkaSourceError::Property { .. })
        ));
    }

    fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(t, id)| (t.to_string(), id.to_string()))
            .collect()
    }

    #[test]
    fn ids_at_start_refuse_only_a_changed_id_of_a_topic_with_positions() {
        let mut start = Positions::new();
        start.set("orders", 0, 10);
        let broker = |id: Option<&str>| {
            BTreeMap::from([
                ("orders".to_string(), id.map(str::to_string)),
                ("empty".to_string(), Some("E2".to_string())),
            ])
        };
        // Equal: accepted. The other topic has no positions: a new id there is only logged.
        let stored = ids(&[("orders", "A"), ("empty", "E1")]);
        check_ids_at_start(&start, &stored, &broker(Some("A"))).expect("same ids");
        // Unknown on either side: the offset checks alone decide.
        check_ids_at_start(&start, &BTreeMap::new(), &broker(Some("A"))).expect("no stored ids");
        check_ids_at_start(&start, &stored, &broker(None)).expect("broker without ids");
        // Different: refused, naming the topic, both ids, the positions and what to do.
        let err = check_ids_at_start(&start, &stored, &broker(Some("B"))).unwrap_err();
        assert!(matches!(err, KafkaSourceError::TopicIdChanged { .. }));
        let msg = err.to_string();
        for want in [
            "\"orders\"",
            "id A",
            "id B",
            "partition 0 at offset 10",
            "deleted and recreated",
            "new pipeline",
            "restore the original topic",
        ] {
            assert!(msg.contains(want), "{want:?} not in: {msg}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stored_topic_id_the_broker_does_not_have_is_refused() {
        let cluster = mock_with("orders", 2, 20);
        let c = config(cluster.bootstrap_servers(), "orders");
        let mut start = Positions::new();
        start.set("orders", 0, 3);
        // The mock cluster reports ids: the source vouches for the broker's.
        let source = KafkaSource::connect(&c, &start).expect("no stored ids");
        let recorded = source.topic_ids();
        let id = recorded
            .get("orders")
            .cloned()
            .expect("the mock cluster reports ids");
        drop(source);
        let source = KafkaSource::connect_until(&c, &start, &recorded, &|| false).expect("same id");
        assert_eq!(source.topic_ids(), recorded);
        drop(source);
        let stale = ids(&[("orders", "AAAAAAAAAAAAAAAAAAAAAA")]);
        let msg = match KafkaSource::connect_until(&c, &start, &stale, &|| false) {
            Err(e @ KafkaSourceError::TopicIdChanged { .. }) => e.to_string(),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a changed topic id must be refused"),
        };
        assert!(
            msg.contains("AAAAAAAAAAAAAAAAAAAAAA") && msg.contains(&id),
            "{msg}"
        );
    }

    /// The retry loop of `next_batch` against a broker that goes away and comes back
    /// (librdkafka's mock cluster: the e2e test covers the same with tansu).
    // IGNORED: after `broker_up` the consumer read nothing more within 30 s (100 of 150);
    // not yet known whether that is the mock cluster or the source. See the e2e test
    // `topology::a_broker_outage_while_running_is_retried_and_survived` (tansu).
    #[ignore]
    #[tokio::test(flavor = "multi_thread")]
    async fn reading_survives_a_broker_outage() {
        let (cluster, brokers, mut source) = orders_source(100);
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while read < 100 {
            assert!(Instant::now() < deadline, "read only {read} of 100");
            read += source
                .next_batch(1000, Duration::from_millis(100))
                .await
                .expect("read")
                .len();
        }
        cluster.broker_down(1).expect("down");
        let down_until = Instant::now() + Duration::from_secs(3);
        let mut retries = 0;
        while Instant::now() < down_until {
            let batch = source
                .next_batch(1000, Duration::from_millis(100))
                .await
                .expect("a broker outage must not fail the source");
            assert!(batch.is_empty());
            retries = retries.max(source.read_backoff.attempts());
        }
        cluster.broker_up(1).expect("up");
        produce(&brokers, "orders", 2, 100..150);
        let deadline = Instant::now() + Duration::from_secs(30);
        while read < 150 {
            assert!(
                Instant::now() < deadline,
                "read only {read} of 150 after the outage"
            );
            read += source
                .next_batch(1000, Duration::from_millis(100))
                .await
                .expect("read after the outage")
                .len();
        }
        assert_eq!(read, 150);
        assert_eq!(source.positions().get("orders", 0), Some(75));
        assert_eq!(source.positions().get("orders", 1), Some(75));
        assert!(retries > 0, "the outage was never seen as an error");
    }
}
