//! A worker's membership in its pipeline's Kafka consumer group: which partitions are its own.
//!
//! Scale-out splits one pipeline's partitions among workers with Kafka's consumer-group
//! protocol (cooperative-sticky assignment; static membership through `group.instance.id`, so
//! a worker restarted within the session timeout keeps its partitions without a rebalance).
//! The group only *shares out* the partitions: this consumer subscribes, pauses every
//! partition it is given and never reads a record; the worker reads its partitions with its
//! own assign-mode [`crate::kafka::KafkaSource`] from the positions the table holds. What keeps
//! two workers from both committing a partition is the table, not the group: every commit
//! claims each partition it covers (see `crate::delta`'s partition claims).
//!
//! Protocol with the worker (the invariant kept here):
//! - every change of the assignment bumps [`Assignment::change`];
//! - a revoke waits (up to `revoke_wait`) until the worker [`GroupMembership::release`]s the
//!   change, so a worker that is alive finishes its open epoch before the partition goes to
//!   another worker. A worker that does not answer in time (paused, stuck) loses the partition
//!   anyway; its stale commit is then refused by the table's claims.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::TopicPartitionList;
use tracing::{info, warn};

use crate::kafka::{KafkaSourceConfig, KafkaSourceError};
use crate::record::TopicPartition;

/// Consumer properties the group consumer sets itself; `[source.properties]` cannot override
/// them (they still apply to the worker's own reading consumer where they mean something).
const GROUP_OWNED: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "enable.auto.commit",
];

/// How long a revoke waits for the worker to finish its open epoch by default.
pub const DEFAULT_REVOKE_WAIT: Duration = Duration::from_secs(30);

/// How a worker joins its pipeline's group.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// The consumer group every worker of the pipeline joins.
    pub group: String,
    /// This worker's id: its `group.instance.id` and `client.id`.
    pub instance_id: String,
    /// Static membership (`group.instance.id`): a restart within the session timeout keeps the
    /// worker's partitions without a rebalance. Off, every restart rebalances (some brokers,
    /// e.g. tansu 0.6.0, assign nothing to static members).
    pub static_membership: bool,
    /// How long a revoke waits for the worker to finish its open epoch.
    pub revoke_wait: Duration,
}

/// The partitions a worker owns, as of one change of the group's assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Counts the changes seen so far (0: none yet, the worker has not been given anything).
    pub change: u64,
    /// The partitions assigned after that change.
    pub partitions: BTreeSet<TopicPartition>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<MemberState>,
    changed: Condvar,
}

#[derive(Default)]
struct MemberState {
    assignment: Assignment,
    /// The newest change the worker has let go of.
    released: u64,
    /// A group error reported by the client (logged; kept for `status`).
    last_error: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MemberState> {
        // A poisoned lock only means a panic elsewhere: the state itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MemberContext {
    shared: Arc<Shared>,
    revoke_wait: Duration,
    worker: String,
}

impl ClientContext for MemberContext {}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions_of(tpl);
        if revoked.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        for tp in &revoked {
            state.assignment.partitions.remove(tp);
        }
        state.assignment.change += 1;
        let change = state.assignment.change;
        info!(worker = %self.worker, change, revoked = ?revoked, "group: partitions revoked; waiting for the worker to finish its open epoch");
        self.shared.changed.notify_all();
        let deadline = Instant::now() + self.revoke_wait;
        while state.released < change {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(worker = %self.worker, change, wait_secs = self.revoke_wait.as_secs(), "group: the worker did not let go of revoked partitions in time; they go to another worker, and a late commit of them is refused by the table");
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let added = partitions_of(tpl);
                if added.is_empty() {
                    return;
                }
                // This consumer never reads: the worker's own source does, from the table's
                // positions.
                if let Err(e) = consumer.pause(tpl) {
                    warn!(worker = %self.worker, "group: cannot pause newly assigned partitions (records fetched for them are dropped): {e}");
                }
                let mut state = self.shared.lock();
                state.assignment.partitions.extend(added.iter().cloned());
                state.assignment.change += 1;
                info!(worker = %self.worker, change = state.assignment.change, added = ?added, "group: partitions assigned");
                self.shared.changed.notify_all();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                warn!(worker = %self.worker, "group: rebalance error: {e}");
                self.shared.lock().last_error = Some(e.to_string());
            }
        }
    }
}

/// A worker's place in its pipeline's consumer group (see the module documentation). Leaving
/// it (drop) stops the group thread; with static membership the partitions stay with this
/// worker's instance id until the session times out.
pub struct GroupMembership {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GroupMembership {
    /// Joins the group of `settings`, subscribed to `config.topics`. `config.properties` apply
    /// to the group consumer too (e.g. `session.timeout.ms`).
    pub fn join(
        config: &KafkaSourceConfig,
        settings: &GroupSettings,
    ) -> Result<Self, KafkaSourceError> {
        let (group, instance_id, revoke_wait) = (
            settings.group.as_str(),
            settings.instance_id.as_str(),
            settings.revoke_wait,
        );
        let shared = Arc::new(Shared::default());
        let context = MemberContext {
            shared: shared.clone(),
            revoke_wait,
            worker: instance_id.to_string(),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", group)
            .set("group.instance.id", instance_id)
            .set("client.id", instance_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            // The paused partitions are never fetched; keep what one fetch could hold small.
            .set("fetch.max.bytes", "1048576");
        if !settings.static_membership {
            client.remove("group.instance.id");
        }
        for (k, v) in &config.properties {
            // The group's own settings are Tidemark's: a property must not move the worker
            // into another group or change how the group shares out partitions.
            if k.starts_with("tidemark.") || GROUP_OWNED.contains(&k.as_str()) {
                continue;
            }
            client.set(k, v);
        }
        let consumer: BaseConsumer<MemberContext> =
            client
                .create_with_context(context)
                .map_err(|source| KafkaSourceError::Create {
                    brokers: config.brokers.clone(),
                    source: Box::new(source),
                })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| KafkaSourceError::Join {
                group: group.to_string(),
                brokers: config.brokers.clone(),
                what: format!("subscribing to {:?}", config.topics),
                source: Some(Box::new(source)),
            })?;
        info!(group, instance = instance_id, topics = ?config.topics, "group: joining");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let shared = shared.clone();
            let worker = instance_id.to_string();
            std::thread::Builder::new()
                .name("tidemark-group".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        // Serves the group protocol (heartbeats run on librdkafka's threads;
                        // rebalances are delivered here). Records never arrive: all paused.
                        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                            warn!(worker = %worker, "group consumer: {e}");
                            shared.lock().last_error = Some(e.to_string());
                        }
                    }
                    drop(consumer);
                })
                .map_err(|e| KafkaSourceError::Join {
                    group: group.to_string(),
                    brokers: config.brokers.clone(),
                    what: format!("starting the group thread: {e}"),
                    source: None,
                })?
        };
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The partitions this worker owns now, and the change they are as of.
    pub fn assignment(&self) -> Assignment {
        self.shared.lock().assignment.clone()
    }

    /// True when the assignment changed after change `seen`.
    pub fn changed_since(&self, seen: u64) -> bool {
        self.shared.lock().assignment.change > seen
    }

    /// Waits up to `timeout` for a change after `seen`; true if one came.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> bool {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| s.assignment.change <= seen)
            .unwrap_or_else(|p| p.into_inner());
        state.assignment.change > seen
    }

    /// The worker no longer reads or commits what it owned before change `seen` (it stopped
    /// its run): a revoke waiting for it may complete.
    pub fn release(&self, seen: u64) {
        let mut state = self.shared.lock();
        if state.released < seen {
            state.released = seen;
        }
        self.shared.changed.notify_all();
    }

    /// The last error the group consumer reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }
}

impl Drop for GroupMembership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Let a revoke that waits for this worker go on: it is leaving.
        self.release(u64::MAX);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use std::collections::BTreeMap;

    fn config(brokers: String) -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers,
            topics: vec!["orders".into()],
            group_id: "unused".into(),
            properties: BTreeMap::from([("session.timeout.ms".to_string(), "6000".to_string())]),
            only: None,
        }
    }

    fn settings(worker: &str) -> GroupSettings {
        GroupSettings {
            group: "g".into(),
            instance_id: worker.into(),
            static_membership: true,
            revoke_wait: Duration::from_secs(5),
        }
    }

    fn wait_for(m: &GroupMembership, want: impl Fn(&Assignment) -> bool) -> Assignment {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = m.assignment();
            if want(&a) {
                return a;
            }
            assert!(Instant::now() < deadline, "assignment never came: {a:?}");
            m.wait_change(a.change, Duration::from_millis(200));
        }
    }

    #[test]
    fn two_workers_share_the_partitions_and_one_takes_all_when_the_other_leaves() {
        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("orders", 4, 1).expect("topic");
        let c = config(cluster.bootstrap_servers());
        let a = GroupMembership::join(&c, &settings("worker-a")).expect("a");
        let first = wait_for(&a, |x| x.partitions.len() == 4);
        let b = GroupMembership::join(&c, &settings("worker-b")).expect("b");
        // A revoke waits for the worker: release what a saw, as a worker's run loop does.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            a.release(a.assignment().change);
            let (x, y) = (a.assignment(), b.assignment());
            if x.partitions.len() + y.partitions.len() == 4 && !y.partitions.is_empty() {
                assert!(x.partitions.is_disjoint(&y.partitions), "{x:?} {y:?}");
                assert!(x.change > first.change);
                break;
            }
            assert!(Instant::now() < deadline, "never shared: {x:?} {y:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(b);
        // Static membership: b's partitions come back to a after the session timeout.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            a.release(a.assignment().change);
            if a.assignment().partitions.len() == 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never took all: {:?}",
                a.assignment()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
