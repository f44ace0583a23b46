//! Records librdkafka has already fetched, taken from the consumer's queue many at a time.
//!
//! Why: rust-rdkafka's `StreamConsumer::recv` hands out one message per call, and each call
//! builds a message stream, registers and unregisters a waker under a lock, reads the clock
//! (twice), polls the queue for one event and wraps it: measured as the reading thread's largest
//! cost after JSON decoding (`__vdso_clock_gettime`, `WakerSlab::register`/`unregister`,
//! `rd_kafka_q_pop_serve0`: ~300 of 1,800 samples per 2M records). librdkafka's
//! `rd_kafka_consume_batch_queue` takes what the queue holds in one call, without waiting
//! (timeout 0) — the same queue `recv` serves, so the two mix: the source waits with `recv`
//! when nothing is fetched and takes the backlog here.
//!
//! Invariants kept here: every message taken is destroyed exactly once, on every path; no
//! record is dropped — a consumer error in the middle of a batch returns the records before
//! it, and the records after it are kept ([`Fetched::rest`]) to be handed out first next time,
//! in order (the source's positions advance only over records handed out, so a dropped
//! record would be a gap). The source never subscribes (assign only), so no rebalance event
//! can be in the queue; other non-message events are served by librdkafka's own callbacks.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::error::KafkaError;

use crate::record::SourceRecord;

/// A reference to a consumer's queue (librdkafka's consumer queue), released on drop.
pub(crate) struct ConsumerQueue(NonNull<rd::rd_kafka_queue_t>);

// librdkafka's queues are thread-safe (every operation takes the queue's lock).
unsafe impl Send for ConsumerQueue {}
unsafe impl Sync for ConsumerQueue {}

impl ConsumerQueue {
    /// The consumer queue of `rk` (a consumer with a `group.id`); `None` if it has none.
    ///
    /// # Safety
    /// `rk` must be a live consumer handle that outlives the returned queue.
    pub(crate) unsafe fn of(rk: *mut rd::rd_kafka_t) -> Option<Self> {
        NonNull::new(unsafe { rd::rd_kafka_queue_get_consumer(rk) }).map(Self)
    }

    /// Takes up to `max` messages already in the queue (never waits) and turns them into
    /// records, in queue order; `topic` maps a topic name to the source's shared name.
    pub(crate) fn take(&self, max: usize, topic: impl Fn(&str) -> Arc<str>) -> Fetched {
        let mut fetched = Fetched::default();
        if max == 0 {
            return fetched;
        }
        let mut messages: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(max);
        // SAFETY: the queue is live (held by `self`); librdkafka writes at most `max` message
        // pointers into the buffer's spare capacity and returns how many (or -1).
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.0.as_ptr(), 0, messages.as_mut_ptr(), max)
        };
        if n <= 0 {
            return fetched;
        }
        // SAFETY: librdkafka initialised the first `n` (<= max) entries.
        unsafe { messages.set_len(n as usize) };
        for message in messages {
            // SAFETY: each pointer is a message librdkafka handed over; it is read here and
            // destroyed right after, once.
            unsafe {
                fetched.add(&*message, &topic);
                rd::rd_kafka_message_destroy(message);
            }
        }
        fetched
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the reference was taken by `rd_kafka_queue_get_consumer` and is released once.
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) };
    }
}

/// What one [`ConsumerQueue::take`] got, in queue order: records up to the first consumer
/// error, that error, and the records after it.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// The records before the first error (all of them when there is none).
    pub(crate) records: Vec<SourceRecord>,
    /// The first consumer error among the messages, if any.
    pub(crate) error: Option<KafkaError>,
    /// The records after that error, to be handed out before anything read later. (A second
    /// error after the first is logged and skipped: it carries no record.)
    pub(crate) rest: Vec<SourceRecord>,
}

impl Fetched {
    /// # Safety
    /// `m` must be a valid message handed over by librdkafka, not destroyed yet.
    unsafe fn add(&mut self, m: &rd::rd_kafka_message_t, topic: &impl Fn(&str) -> Arc<str>) {
        if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            self.push(Ok(unsafe { record_of(m, topic) }));
        } else {
            self.push(Err(KafkaError::MessageConsumption(m.err.into())));
        }
    }

    /// The next message in queue order: a record, or a consumer error.
    fn push(&mut self, message: Result<SourceRecord, KafkaError>) {
        match message {
            Ok(record) if self.error.is_none() => self.records.push(record),
            Ok(record) => self.rest.push(record),
            Err(e) if self.error.is_none() => self.error = Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "kafka: a second consumer error in one batch (no record with it)")
            }
        }
    }
}

/// `m` as an owned record: the same fields `KafkaSource::owned` takes from a `BorrowedMessage`
/// (a timestamp of -1 or of type "not available" is `None`, as `Timestamp::to_millis` says).
///
/// # Safety
/// `m` must be a valid message without error, not destroyed yet.
unsafe fn record_of(m: &rd::rd_kafka_message_t, topic: &impl Fn(&str) -> Arc<str>) -> SourceRecord {
    let bytes = |ptr: *mut std::ffi::c_void, len: usize| -> Option<Vec<u8>> {
        // SAFETY: librdkafka's key/payload pointer and length describe one buffer it owns
        // until the message is destroyed.
        (!ptr.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec())
    };
    // SAFETY: a message's topic handle is valid while the message is.
    let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)) };
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: reads the message's timestamp into `kind` and returns it.
    let ts = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
    let timestamp_ms = (ts != -1
        && kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
        .then_some(ts);
    SourceRecord {
        topic: topic(&name.to_string_lossy()),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms,
        key: bytes(m.key, m.key_len),
        payload: bytes(m.payload, m.len),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn record(offset: i64) -> SourceRecord {
        SourceRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            payload: Some(offset.to_le_bytes().to_vec()),
        }
    }

    proptest! {
        /// Whatever mix of records and errors a batch holds, no record is lost or reordered:
        /// the records before the first error, then the rest, are every record in queue order,
        /// and the error kept is the first.
        #[test]
        fn a_batch_keeps_every_record_in_order_around_the_first_error(
            items in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let mut fetched = Fetched::default();
            for (i, ok) in items.iter().enumerate() {
                fetched.push(if *ok {
                    Ok(record(i as i64))
                } else {
                    Err(KafkaError::MessageConsumption(if i % 2 == 0 {
                        RDKafkaErrorCode::BrokerTransportFailure
                    } else {
                        RDKafkaErrorCode::OffsetOutOfRange
                    }))
                });
            }
            let offsets: Vec<i64> = fetched.records.iter().chain(&fetched.rest).map(|r| r.offset).collect();
            let expected: Vec<i64> = items.iter().enumerate().filter(|(_, ok)| **ok).map(|(i, _)| i as i64).collect();
            prop_assert_eq!(offsets, expected);
            let first_error = items.iter().position(|ok| !ok);
            prop_assert_eq!(fetched.error.is_some(), first_error.is_some());
            if let Some(at) = first_error {
                prop_assert!(fetched.records.iter().all(|r| (r.offset as usize) < at));
                prop_assert!(fetched.rest.iter().all(|r| (r.offset as usize) > at));
                let code = if at % 2 == 0 { RDKafkaErrorCode::BrokerTransportFailure } else { RDKafkaErrorCode::OffsetOutOfRange };
                prop_assert_eq!(fetched.error.as_ref().and_then(|e| e.rdkafka_error_code()), Some(code));
            } else {
                prop_assert!(fetched.rest.is_empty());
            }
        }
    }
}
