//! A topic mirror between two Kafka clusters, as MirrorMaker 2 or cluster linking would keep
//! one for a secondary region: every record of the source topic is copied to the same
//! partition of the target topic with its key, value and timestamp, never its offset (the
//! target's offsets are its own: pre-seeded or compacted partitions differ). For the failover
//! tests and `tidemark drill`.
//!
//! Optionally ([`Mirror::publish_mm2`]) it also publishes offset translations on the target
//! cluster exactly as MirrorMaker 2 does (same topics, same binary records, see
//! [`tidemark_connectors::mm2`]): an offset sync for the first record it copies of each
//! partition and then every `every` records (MM2: `offset.lag.max`), each from the offset the
//! target acknowledged for that record (delivery reports, never computed); and, for a consumer
//! group, checkpoints translating the group's committed offsets on the source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use tidemark_connectors::mm2;

use crate::produce::{flush_patiently, send_retrying};

/// What a mirror copied so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorProgress {
    /// Per source partition, the next source offset to copy.
    pub next: BTreeMap<i32, i64>,
    /// Records copied in all.
    pub copied: u64,
}

/// Delivery reports of the copies: (partition, source offset, target offset) of each record
/// the target acknowledged.
/// Kept only while translations are published ([`Mirror::publish_mm2`]).
#[derive(Default)]
struct Deliveries {
    enabled: Arc<std::sync::atomic::AtomicBool>,
    delivered: Arc<Mutex<Vec<(i32, i64, i64)>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The record's offset on the source.
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, upstream: Box<i64>) {
        if !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok(m) = result {
            if let Ok(mut d) = self.delivered.lock() {
                d.push((m.partition(), *upstream, m.offset()));
            }
        }
    }
}

/// What MirrorMaker 2 translations the mirror publishes on the target cluster (topics must
/// exist there).
#[derive(Debug, Clone)]
pub struct Mm2Publishing {
    /// The offset-syncs topic (`mm2-offset-syncs.<target alias>.internal`), if any.
    pub offset_syncs_topic: Option<String>,
    /// An offset sync every this many records of a partition (after its first one).
    pub every: i64,
    /// The checkpoints topic (`<source alias>.checkpoints.internal`) and the consumer group
    /// whose committed offsets (on the source) it translates, if any.
    pub checkpoints: Option<(String, String)>,
}

/// What the mirror published of [`Mm2Publishing`].
#[derive(Debug, Clone, Default)]
struct Mm2State {
    publishing: Option<Mm2Publishing>,
    /// Per partition: every (source offset, target offset) acknowledged so far.
    offsets: BTreeMap<i32, BTreeMap<i64, i64>>,
    /// Per partition: the source offset of the last offset sync published.
    last_sync: BTreeMap<i32, i64>,
}

/// A running mirror of one topic: `step` copies what is there.
pub struct Mirror {
    consumer: BaseConsumer,
    producer: ThreadedProducer<Deliveries>,
    delivered: Arc<Mutex<Vec<(i32, i64, i64)>>>,
    recording: Arc<std::sync::atomic::AtomicBool>,
    from: String,
    to: String,
    topic: String,
    target_topic: String,
    progress: MirrorProgress,
    mm2: Mm2State,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Mirror::new_from`] goes on asking for the source topic's metadata, in rounds
/// of [`TIMEOUT`] (so it may wait up to one round more). Why: tansu under another client's
/// heavy produce load (CI, a drill beside a build) was seen to leave one 10 s metadata request
/// unanswered, which failed a DR drill round though nothing was wrong; the request may simply
/// be asked again.
pub(crate) const METADATA_PATIENCE: Duration = Duration::from_secs(120);

/// `topic`'s metadata from `consumer`'s cluster (`brokers`) and the rounds it took, asked as
/// [`ask_in_rounds`] asks.
fn fetch_metadata_in_rounds(
    consumer: &BaseConsumer,
    brokers: &str,
    topic: &str,
    round: Duration,
    patience: Duration,
) -> Result<(Metadata, u32), KafkaError> {
    ask_in_rounds(
        brokers,
        &format!("metadata of {topic}"),
        round,
        patience,
        |r| consumer.fetch_metadata(Some(topic), r),
    )
}

/// `partition`'s high watermark from `consumer`'s cluster (`brokers`), asked as
/// [`ask_in_rounds`] asks, in rounds of [`TIMEOUT`]: the drill's and the mirror's catch-up
/// read partition ends under the same load as the metadata.
pub(crate) fn high_watermark_in_rounds<C: Consumer>(
    consumer: &C,
    brokers: &str,
    topic: &str,
    partition: i32,
    patience: Duration,
) -> Result<i64, KafkaError> {
    let what = format!("the high watermark of {topic}/{partition}");
    ask_in_rounds(brokers, &what, TIMEOUT, patience, |r| {
        consumer.fetch_watermarks(topic, partition, r)
    })
    .map(|((_, high), _)| high)
}

/// What `ask` answers (`what`, for messages) from the cluster of `brokers`, and the rounds it
/// took: asked in rounds of `round` while the broker does not answer, until `patience` has
/// passed. A round that times out is asked again; so is one that fails for want of a usable
/// broker while one of `brokers` accepts TCP connections (a broker too slow to finish the
/// connection's handshake, even on the first round of a new consumer), or after a round timed
/// out (librdkafka closes a connection whose request timed out). Brokers that accept no
/// connection (a wrong address, nothing listening) fail at the first round; a broker that
/// accepts TCP and then refuses the handshake (TLS) is asked until `patience`. Any other
/// error is returned at once.
fn ask_in_rounds<T>(
    brokers: &str,
    what: &str,
    round: Duration,
    patience: Duration,
    mut ask: impl FnMut(Duration) -> Result<T, KafkaError>,
) -> Result<(T, u32), KafkaError> {
    let started = Instant::now();
    let mut rounds = 0;
    let mut timed_out = false;
    loop {
        rounds += 1;
        let code = match ask(round) {
            Ok(answer) => return Ok((answer, rounds)),
            Err(KafkaError::MetadataFetch(code)) => code,
            Err(e) => return Err(e),
        };
        let again = match code {
            RDKafkaErrorCode::OperationTimedOut => true,
            RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown => {
                timed_out || accepts_connections(brokers, round)
            }
            _ => false,
        };
        if !again || started.elapsed() >= patience {
            return Err(KafkaError::MetadataFetch(code));
        }
        timed_out |= code == RDKafkaErrorCode::OperationTimedOut;
        eprintln!(
            "{what}: no answer from {brokers} after {} s ({code}); asking again",
            started.elapsed().as_secs()
        );
    }
}

/// True when one of `brokers` (comma-separated, as librdkafka takes them) accepts a TCP
/// connection within `within`: a broker is there, if slow.
fn accepts_connections(brokers: &str, within: Duration) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    brokers
        .split(',')
        .filter_map(|b| socket_address(b).to_socket_addrs().ok())
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, within).is_ok())
}

/// One entry of a broker list as librdkafka reads it, as `host:port`: without its
/// `PROTOCOL://` prefix, and on Kafka's port 9092 when it names none.
fn socket_address(broker: &str) -> String {
    let broker = broker.trim();
    let broker = broker.split_once("://").map_or(broker, |(_, rest)| rest);
    let has_port = match broker.rsplit_once(':') {
        // `[::1]:9092` has one; a bare IPv6 address (`::1`) does not.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        broker.to_string()
    } else {
        format!("{broker}:9092")
    }
}

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
        let (metadata, _) =
            fetch_metadata_in_rounds(&consumer, from, topic, TIMEOUT, METADATA_PATIENCE)?;
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
        let context = Deliveries::default();
        let delivered = context.delivered.clone();
        let recording = context.enabled.clone();
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", to)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create_with_context(context)?;
        Ok(Self {
            consumer,
            producer,
            delivered,
            recording,
            from: from.to_string(),
            to: to.to_string(),
            topic: topic.to_string(),
            target_topic: target_topic.to_string(),
            progress,
            mm2: Mm2State::default(),
        })
    }

    /// Publishes MirrorMaker 2 translations from now on (at each [`Mirror::catch_up`]).
    pub fn publish_mm2(mut self, publishing: Mm2Publishing) -> Self {
        self.mm2.publishing = Some(publishing);
        self.recording
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
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
            let mut record: BaseRecord<'_, [u8], [u8], Box<i64>> =
                BaseRecord::with_opaque_to(&self.target_topic, Box::new(m.offset()))
                    .partition(m.partition());
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
                high_watermark_in_rounds(
                    &self.consumer,
                    &self.from,
                    &self.topic,
                    *p,
                    METADATA_PATIENCE,
                )
                .map(|high| (*p, high))
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
        flush_patiently(&self.producer, "the mirror")?;
        self.publish_translations()?;
        Ok(copied)
    }

    /// Publishes the offset syncs and checkpoints due for what the target acknowledged.
    fn publish_translations(&mut self) -> Result<(), KafkaError> {
        let delivered = match self.delivered.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return Ok(()),
        };
        for (p, up, down) in delivered {
            self.mm2.offsets.entry(p).or_default().insert(up, down);
        }
        let Some(publishing) = self.mm2.publishing.clone() else {
            return Ok(());
        };
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.to)
            .set("enable.idempotence", "true")
            .create()?;
        if let Some(topic) = &publishing.offset_syncs_topic {
            for (p, offsets) in &self.mm2.offsets {
                for (up, down) in offsets {
                    let due = match self.mm2.last_sync.get(p) {
                        None => true,
                        Some(last) => up - last >= publishing.every.max(1),
                    };
                    if !due {
                        continue;
                    }
                    let (key, value) = mm2::encode_offset_sync(&mm2::OffsetSync {
                        topic: self.topic.clone(),
                        partition: *p,
                        upstream_offset: *up,
                        downstream_offset: *down,
                    });
                    send_retrying(
                        &producer,
                        BaseRecord::to(topic)
                            .key(key.as_slice())
                            .payload(value.as_slice()),
                    )?;
                    self.mm2.last_sync.insert(*p, *up);
                }
            }
        }
        if let Some((topic, group)) = &publishing.checkpoints {
            let reader: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.from)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut asked = TopicPartitionList::new();
            for p in self.progress.next.keys() {
                asked.add_partition(&self.topic, *p);
            }
            let committed = reader.committed_offsets(asked, TIMEOUT)?;
            for element in committed.elements() {
                let Offset::Offset(upstream) = element.offset() else {
                    continue;
                };
                // MM2's translation: the nearest acknowledged record at or before the group's
                // offset; its target offset, plus one when it is before (never too late).
                let Some((up, down)) = self
                    .mm2
                    .offsets
                    .get(&element.partition())
                    .and_then(|o| o.range(..=upstream).next_back())
                else {
                    continue;
                };
                let downstream = if *up == upstream { *down } else { down + 1 };
                let (key, value) = mm2::encode_checkpoint(&mm2::Checkpoint {
                    group: group.clone(),
                    topic: self.target_topic.clone(),
                    partition: element.partition(),
                    upstream_offset: upstream,
                    downstream_offset: downstream,
                    metadata: String::new(),
                });
                send_retrying(
                    &producer,
                    BaseRecord::to(topic)
                        .key(key.as_slice())
                        .payload(value.as_slice()),
                )?;
            }
        }
        flush_patiently(&producer, "the mirror's offset syncs")?;
        Ok(())
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
    flush_patiently(&producer, "the seeding of the mirror's target")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;

    use super::{
        accepts_connections, fetch_metadata_in_rounds, high_watermark_in_rounds, socket_address,
        KafkaError,
    };

    fn consumer(brokers: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap()
    }

    /// `t`'s metadata fetched in rounds of 1 s (patience 20 s) while the cluster's broker
    /// answers after 4 s, for the first 2.5 s; returns it and the rounds it took.
    fn fetch_while_slow_for_a_while(
        cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        consumer: BaseConsumer,
        brokers: String,
    ) -> (rdkafka::metadata::Metadata, u32) {
        cluster
            .broker_round_trip_time(1, Duration::from_secs(4))
            .unwrap();
        let fetching = std::thread::spawn(move || {
            let round = Duration::from_secs(1);
            fetch_metadata_in_rounds(&consumer, &brokers, "t", round, Duration::from_secs(20))
        });
        std::thread::sleep(Duration::from_millis(2500));
        cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
        fetching.join().unwrap().unwrap()
    }

    /// A connected broker slow to answer for a while: the first 1 s round times out, and
    /// rounds of 1 s within a patience of 20 s get the topic's partitions once it answers
    /// again.
    #[test]
    fn the_metadata_request_is_asked_again_while_the_broker_does_not_answer() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let consumer = consumer(&brokers);
        // Connected: the bootstrap connection, then the one to the broker the metadata names
        // (until both are up, a slow round fails for want of a usable broker instead).
        let round = Duration::from_secs(5);
        for _ in 0..2 {
            fetch_metadata_in_rounds(&consumer, &brokers, "t", round, Duration::ZERO)
                .expect("the connection is up");
            std::thread::sleep(Duration::from_millis(300));
        }
        let (metadata, rounds) = fetch_while_slow_for_a_while(&cluster, consumer, brokers);
        assert!(rounds >= 2, "answered at once by a slow broker");
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        assert_eq!(partitions, [0, 1, 2]);
    }

    /// The same broker slow from the first request on, before any connection of the mirror's
    /// consumer is up (a mirror's consumer is always new): rounds go on until it answers.
    #[test]
    fn a_broker_slow_from_the_first_request_is_asked_again() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let consumer = consumer(&brokers);
        let (metadata, rounds) = fetch_while_slow_for_a_while(&cluster, consumer, brokers);
        assert!(rounds >= 2, "answered at once by a slow broker");
        assert_eq!(metadata.topics()[0].partitions().len(), 3);
    }

    /// A broker list entry as librdkafka takes it is probed where librdkafka connects.
    #[test]
    fn broker_entries_are_probed_at_their_host_and_port() {
        assert_eq!(socket_address(" 127.0.0.1:19092"), "127.0.0.1:19092");
        assert_eq!(socket_address("PLAINTEXT://b1:9093"), "b1:9093");
        assert_eq!(socket_address("SSL://b1"), "b1:9092");
        assert_eq!(socket_address("b1"), "b1:9092");
        assert_eq!(socket_address("[::1]:9094"), "[::1]:9094");
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = open.local_addr().unwrap().port();
        let within = Duration::from_secs(1);
        assert!(accepts_connections(
            &format!("PLAINTEXT://127.0.0.1:{port}"),
            within
        ));
        drop(open);
        assert!(!accepts_connections(&format!("127.0.0.1:{port}"), within));
    }

    /// The cost the retry's doc names: an address that accepts TCP and then closes every
    /// connection (not a Kafka broker, or one refusing the handshake) is asked until the
    /// patience, not failed at the first round.
    #[test]
    fn an_address_that_accepts_and_closes_is_asked_until_the_patience() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let brokers = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        let patience = Duration::from_secs(4);
        let started = Instant::now();
        let result = fetch_metadata_in_rounds(
            &consumer(&brokers),
            &brokers,
            "t",
            Duration::from_millis(500),
            patience,
        );
        assert!(result.is_err());
        assert!(
            started.elapsed() >= patience,
            "gave up after {:?}, before the patience",
            started.elapsed()
        );
    }

    /// Brokers that cannot be reached at all (nothing listens there) are not waited out: the
    /// error comes after the first round, not after the patience.
    #[test]
    fn brokers_never_reached_fail_without_the_patience() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let brokers = closed.local_addr().unwrap().to_string();
        drop(closed);
        let started = Instant::now();
        let round = Duration::from_secs(1);
        let result = fetch_metadata_in_rounds(
            &consumer(&brokers),
            &brokers,
            "t",
            round,
            Duration::from_secs(60),
        );
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited {:?} for brokers that refuse connections",
            started.elapsed()
        );
    }

    /// A partition's high watermark from a broker that accepts connections and never answers
    /// (one overloaded past its request timeouts) is asked again until the patience has
    /// passed, and its last error is returned.
    #[test]
    fn a_silent_broker_is_asked_again_for_a_high_watermark_until_the_patience() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let brokers = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
            }
        });
        let started = Instant::now();
        // Past the first 10 s round: a second one is asked.
        let result = high_watermark_in_rounds(
            &consumer(&brokers),
            &brokers,
            "t",
            0,
            Duration::from_secs(12),
        );
        let took = started.elapsed();
        assert!(
            matches!(result, Err(KafkaError::MetadataFetch(_))),
            "{result:?}"
        );
        assert!(took >= Duration::from_secs(19), "one round only: {took:?}");
    }

    /// A high watermark from brokers nothing listens at fails at the first round, without the
    /// patience.
    #[test]
    fn a_high_watermark_from_brokers_never_reached_fails_without_the_patience() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let brokers = closed.local_addr().unwrap().to_string();
        drop(closed);
        let started = Instant::now();
        let result = high_watermark_in_rounds(
            &consumer(&brokers),
            &brokers,
            "t",
            0,
            Duration::from_secs(120),
        );
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited {:?} for brokers that refuse connections",
            started.elapsed()
        );
    }
}
