//! `tidemark bench-consume`: the broker's own consume ceiling for `tidemark bench`.
//!
//! A plain librdkafka consumer reads every partition of a topic from its start until it holds
//! the records the bench produced, touching each record's key and value (their bytes are
//! counted) and doing nothing else: no WAL, no decode, no Parquet, no commit. `tidemark bench`
//! runs it as a child process in every round, timed like a pipeline run (process start to
//! exit), so its rate is the most any consumer on this machine and broker could reach and the
//! pipeline's rate can be read as a share of it. Client settings are the pipeline source's
//! (`connectors/src/kafka.rs`), so the two fetch alike.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// Options of `tidemark bench-consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeOptions {
    /// Bootstrap address of the broker.
    #[arg(long)]
    pub brokers: String,
    /// The topic to read, every partition from its start.
    #[arg(long)]
    pub topic: String,
    /// Stop once this many records were read.
    #[arg(long)]
    pub expect: u64,
    /// Only these partitions (comma-separated; default every partition): one of several plain
    /// consumers sharing a topic, the ceiling of as many pipeline workers.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// Give up (an error) when no record arrived for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub idle_timeout_secs: u64,
}

/// What one plain read of the topic measured (printed as one JSON line).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConsumeSummary {
    /// Records read.
    pub records: u64,
    /// Key + value bytes read.
    pub bytes: u64,
    /// Seconds from the consumer's creation to the last record.
    pub secs: f64,
}

/// Reads `options.topic` from the start of every partition (or of `options.partitions`)
/// until `options.expect` records were read.
pub fn run(options: &ConsumeOptions) -> anyhow::Result<ConsumeSummary> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", "tidemark-bench-consume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", "20")
        .create()
        .with_context(|| format!("cannot create a consumer of {}", options.brokers))?;
    let metadata = consumer
        .fetch_metadata(Some(&options.topic), Duration::from_secs(10))
        .with_context(|| format!("cannot read the metadata of topic {}", options.topic))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == options.topic) else {
        bail!(
            "topic {} does not exist at {}",
            options.topic,
            options.brokers
        );
    };
    let mut assignment = TopicPartitionList::new();
    for p in topic.partitions() {
        if !options.partitions.is_empty() && !options.partitions.contains(&p.id()) {
            continue;
        }
        assignment
            .add_partition_offset(&options.topic, p.id(), Offset::Beginning)
            .context("building the assignment")?;
    }
    if assignment.count() == 0 {
        bail!("topic {} has no partitions", options.topic);
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot assign the partitions of {}", options.topic))?;
    let (mut records, mut bytes) = (0u64, 0u64);
    let idle = Duration::from_secs(options.idle_timeout_secs.max(1));
    let mut last_record = Instant::now();
    while records < options.expect {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes +=
                    (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
                last_record = Instant::now();
            }
            Some(Err(e)) => {
                return Err(e).with_context(|| format!("reading {}", options.topic));
            }
            None if last_record.elapsed() >= idle => bail!(
                "topic {}: no record for {} s after {records} of {} records",
                options.topic,
                idle.as_secs(),
                options.expect
            ),
            None => {}
        }
    }
    Ok(ConsumeSummary {
        records,
        bytes,
        secs: started.elapsed().as_secs_f64(),
    })
}
