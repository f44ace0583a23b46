//! Records librdkafka has already fetched, taken from the consumer's queue in a tight loop.
//!
//! Why: rust-rdkafka's `StreamConsumer::recv` hands out one message per call, and each call
//! builds a message stream, registers and unregisters a waker under a lock, reads the clock
//! (twice), polls the queue for one event and wraps it in reference-counted handles: measured
//! as the reading thread's largest cost after JSON decoding (`__vdso_clock_gettime`,
//! `WakerSlab::register`/`unregister`, `rd_kafka_q_pop_serve0`: ~300 of 1,800 samples per 2M
//! records). Here the same queue is polled with the same event API rust-rdkafka uses
//! (`rd_kafka_queue_poll` without waiting), one event after another, each handled as
//! rust-rdkafka's `BaseConsumer::poll_queue` handles it: a fetched message becomes an owned
//! record, an error event or a message carrying an error stops the loop and is returned (the
//! events behind it stay queued, in order, for the next call), anything else is logged and
//! dropped as rust-rdkafka drops it. The source waits with `recv` when nothing is queued.
//!
//! (`rd_kafka_consume_batch_queue` was tried first and refused in review: it serves error
//! events through librdkafka's callbacks, and with no error callback set — rust-rdkafka sets
//! none, it uses events — a broker-level error such as a failed authentication would be
//! logged and dropped instead of stopping the source.)
//!
//! Invariants kept here: every event taken is destroyed exactly once, on every path (a guard
//! owns it); no record is dropped or reordered (the loop stops at the first error, and
//! positions advance only over records handed out).

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;

use crate::record::SourceRecord;

/// A reference to a consumer's queue (librdkafka's consumer queue), released on drop, before
/// the consumer it holds can be destroyed (librdkafka wants every queue reference gone before
/// its client is: the `Drop` releases the queue, then the field drops the consumer's `Arc`).
pub(crate) struct ConsumerQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    _consumer: Arc<StreamConsumer>,
}

// librdkafka's queues are thread-safe (every operation takes the queue's lock).
unsafe impl Send for ConsumerQueue {}
unsafe impl Sync for ConsumerQueue {}

/// An event taken from the queue, destroyed when dropped (with the message it holds).
struct Event(NonNull<rd::rd_kafka_event_t>);

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was handed over by `rd_kafka_queue_poll` and is destroyed once.
        unsafe { rd::rd_kafka_event_destroy(self.0.as_ptr()) };
    }
}

impl ConsumerQueue {
    /// The consumer queue of `consumer` (a consumer with a `group.id`); `None` if it has none.
    pub(crate) fn of(consumer: Arc<StreamConsumer>) -> Option<Self> {
        // SAFETY: the client handle is live while `consumer` is, which the queue holds.
        let queue = NonNull::new(unsafe {
            rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr())
        })?;
        Some(Self {
            queue,
            _consumer: consumer,
        })
    }

    /// Moves up to `max` records already queued into `out` (never waits), in queue order;
    /// `topic` maps a topic name to the source's shared name. Stops at the first error and
    /// returns it (what follows it stays queued).
    pub(crate) fn take(
        &self,
        max: usize,
        topic: impl Fn(&str) -> Arc<str>,
        out: &mut Vec<SourceRecord>,
    ) -> Option<KafkaError> {
        let mut taken = 0;
        let mut names = TopicNames::new(&topic);
        while taken < max {
            // SAFETY: the queue is live (held by `self`); a timeout of 0 never waits.
            let event = NonNull::new(unsafe { rd::rd_kafka_queue_poll(self.queue.as_ptr(), 0) })?;
            let event = Event(event);
            // SAFETY: the event is valid until `event` drops, after its last use below.
            match unsafe { handle(&event, &mut names) } {
                Handled::Record(record) => {
                    out.push(record);
                    taken += 1;
                }
                Handled::Error(e) => return Some(e),
                Handled::Nothing => {}
            }
        }
        None
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the reference was taken by `rd_kafka_queue_get_consumer` and is released once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// A topic's name as the source's shared name, mapped once per run of records of one topic
/// rather than once per record. Why: mapping is a UTF-8 check and a hash-map lookup, a share
/// of the reading thread's time per record (issue 19); records come in runs of one topic.
struct TopicNames<'a, F> {
    map: &'a F,
    /// The last name mapped, as its bytes and shared name.
    last: Option<(Vec<u8>, Arc<str>)>,
}

impl<'a, F: Fn(&str) -> Arc<str>> TopicNames<'a, F> {
    fn new(map: &'a F) -> Self {
        Self { map, last: None }
    }

    /// The shared name of the topic named `name`: what `map` gives for it (lossily decoded).
    fn shared(&mut self, name: &[u8]) -> Arc<str> {
        match &self.last {
            Some((bytes, shared)) if bytes.as_slice() == name => shared.clone(),
            _ => {
                let shared = (self.map)(&String::from_utf8_lossy(name));
                self.last = Some((name.to_vec(), shared.clone()));
                shared
            }
        }
    }
}

/// What one event gave.
enum Handled {
    Record(SourceRecord),
    Error(KafkaError),
    /// An event without a record or an error for the source (logged if unexpected).
    Nothing,
}

/// One event, handled as rust-rdkafka 0.39's `BaseConsumer::poll_queue` handles it
/// (`handle_fetch_event` + `BorrowedMessage::from_client`, `handle_error_event`).
///
/// # Safety
/// `event` must be a valid event taken from the consumer queue, not destroyed yet.
unsafe fn handle<F: Fn(&str) -> Arc<str>>(event: &Event, names: &mut TopicNames<'_, F>) -> Handled {
    let ev = event.0.as_ptr();
    // SAFETY (all calls below): `ev` is valid for the whole function (see above).
    match unsafe { rd::rd_kafka_event_type(ev) } {
        rd::RD_KAFKA_EVENT_FETCH => {
            let m = unsafe { rd::rd_kafka_event_message_next(ev) };
            // SAFETY: a message of the event, valid while the event is.
            let Some(m) = (unsafe { m.as_ref() }) else {
                return Handled::Nothing;
            };
            if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                Handled::Record(unsafe { record_of(m, names) })
            } else if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                Handled::Error(KafkaError::PartitionEOF(m.partition))
            } else {
                Handled::Error(KafkaError::MessageConsumption(m.err.into()))
            }
        }
        rd::RD_KAFKA_EVENT_ERROR => {
            let err = unsafe { rd::rd_kafka_event_error(ev) };
            if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                Handled::Nothing
            } else if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                let tp = unsafe { rd::rd_kafka_event_topic_partition(ev) };
                let partition = if tp.is_null() {
                    -1
                } else {
                    // SAFETY: a partition EOF event's topic partition, owned by the caller.
                    let p = unsafe { (*tp).partition };
                    unsafe { rd::rd_kafka_topic_partition_destroy(tp) };
                    p
                };
                Handled::Error(KafkaError::PartitionEOF(partition))
            } else if unsafe { rd::rd_kafka_event_error_is_fatal(ev) } != 0 {
                Handled::Error(KafkaError::MessageConsumptionFatal(err.into()))
            } else {
                Handled::Error(KafkaError::MessageConsumption(err.into()))
            }
        }
        other => {
            // An assign-only source without auto-commit gets no rebalance or offset-commit
            // events; rust-rdkafka ignores any other kind with a warning, as here.
            let name = unsafe { CStr::from_ptr(rd::rd_kafka_event_name(ev)) };
            tracing::warn!(event = %name.to_string_lossy(), kind = other, "kafka: ignored event on the consumer queue");
            Handled::Nothing
        }
    }
}

/// `m` as an owned record: the same fields `KafkaSource::owned` takes from a `BorrowedMessage`
/// (a timestamp of -1 or of type "not available" is `None`, as `Timestamp::to_millis` says).
///
/// # Safety
/// `m` must be a valid message without error, not destroyed yet.
unsafe fn record_of<F: Fn(&str) -> Arc<str>>(
    m: &rd::rd_kafka_message_t,
    names: &mut TopicNames<'_, F>,
) -> SourceRecord {
    let bytes = |ptr: *mut std::ffi::c_void, len: usize| -> Option<Vec<u8>> {
        // SAFETY: librdkafka's key/payload pointer and length describe one buffer it owns
        // until the message is destroyed.
        (!ptr.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec())
    };
    // SAFETY: a message's topic handle is valid while the message is.
    let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)) }.to_bytes();
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: reads the message's timestamp into `kind` and returns it.
    let ts = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
    let timestamp_ms = (ts != -1
        && kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
        .then_some(ts);
    SourceRecord {
        topic: names.shared(name),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms,
        key: bytes(m.key, m.key_len),
        payload: bytes(m.payload, m.len),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Each name maps to what the map gives for it, whatever came before; the map is asked
    /// once per run of one name, not once per record.
    #[test]
    fn a_topic_name_is_mapped_once_per_run() {
        let asked = Cell::new(0);
        let map = |t: &str| {
            asked.set(asked.get() + 1);
            Arc::from(format!("shared-{t}"))
        };
        let mut names = TopicNames::new(&map);
        let given: Vec<Arc<str>> = ["a", "a", "a", "b", "b", "a", "\u{e9}t\u{e9}"]
            .iter()
            .map(|n| names.shared(n.as_bytes()))
            .collect();
        let want = ["a", "a", "a", "b", "b", "a", "\u{e9}t\u{e9}"].map(|n| format!("shared-{n}"));
        assert_eq!(
            given.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(asked.get(), 4, "runs: a, b, a, été");
        // The name kept is the last one mapped, not the first.
        for n in ["c", "c", "c"] {
            names.shared(n.as_bytes());
        }
        assert_eq!(asked.get(), 5, "one run of c");
        // Bytes that are not UTF-8 are decoded lossily, as before.
        assert_eq!(&*names.shared(b"x\xff"), "shared-x\u{fffd}");
    }
}
