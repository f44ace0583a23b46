//! Topic ids from the broker, through librdkafka's DescribeTopics admin call.
//!
//! A topic deleted and recreated under the same name gets a new topic id (KIP-516); its offsets
//! start over, so positions stored for the old topic mean nothing in the new one. rdkafka 0.39
//! has no wrapper for DescribeTopics, so this module calls librdkafka (2.12, bundled) directly
//! and keeps every raw object inside one function that frees it on every path.
//!
//! A broker that does not report topic ids (an all-zero id, or a request it does not support)
//! yields `None` for the topic: callers then fall back to checks that need no id.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Each of `topics` with its id as the broker reports it (`rd_kafka_Uuid_base64str` form), or
/// `None` when the broker does not report ids. Blocks for at most about `timeout`.
///
/// Errors are librdkafka's codes as [`KafkaError::MetadataFetch`] (so the source's error
/// classification applies): a timeout as `OperationTimedOut`, an unknown topic as
/// `UnknownTopicOrPartition`.
pub fn describe_topic_ids<C: ClientContext>(
    client: &Client<C>,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, Option<String>>, KafkaError> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(t.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| KafkaError::MetadataFetch(RDKafkaErrorCode::InvalidArgument))?;
    let mut name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let started = Instant::now();
    // Metadata (what DescribeTopics asks for) is served by every broker; librdkafka would send
    // it to the controller, which some brokers (librdkafka's own mock cluster) name as a node
    // they do not list, so the request would wait for it until the timeout. Ask the broker
    // that just answered a metadata request instead (or the first one listed).
    let metadata = client.fetch_metadata(Some(&topics[0]), timeout)?;
    let listed: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
    let broker = if listed.contains(&metadata.orig_broker_id()) {
        metadata.orig_broker_id()
    } else {
        *listed
            .first()
            .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown))?
    };
    let left = timeout.saturating_sub(started.elapsed());
    let timeout_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
    let rk = client.native_ptr();

    // Every raw object is created here and destroyed below, whatever happened in between.
    // SAFETY: `rk` is the live client handle owned by `client`, borrowed for this call.
    // `name_ptrs` points at NUL-terminated strings (`names`) alive until the end of this
    // function; librdkafka copies them into the collection.
    let collection = unsafe {
        rd::rd_kafka_TopicCollection_of_topic_names(name_ptrs.as_mut_ptr(), name_ptrs.len())
    };
    // SAFETY: `rk` is live (see above); the queue is destroyed below.
    let queue = unsafe { rd::rd_kafka_queue_new(rk) };
    // SAFETY: `rk` is live; the options are destroyed below.
    let options = unsafe {
        rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        )
    };
    let result = if collection.is_null() || queue.is_null() || options.is_null() {
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))
    } else {
        // SAFETY: all three objects are non-null and owned by this function; `rk` is live.
        unsafe { request(rk, collection, options, queue, broker, timeout_ms, topics) }
    };
    // SAFETY: each pointer was returned by its constructor above, is destroyed exactly once
    // here, and nothing created from it outlives this point (`request` copies what it
    // returns into owned Strings and destroys its event).
    unsafe {
        if !options.is_null() {
            rd::rd_kafka_AdminOptions_destroy(options);
        }
        if !queue.is_null() {
            rd::rd_kafka_queue_destroy(queue);
        }
        if !collection.is_null() {
            rd::rd_kafka_TopicCollection_destroy(collection);
        }
    }
    result
}

/// Sends the request and reads its result event (destroyed before returning).
///
/// # Safety
/// `rk` is a live client handle; `collection`, `options` and `queue` are live, non-null and
/// created for `rk`, and outlive this call.
unsafe fn request(
    rk: *mut rd::rd_kafka_t,
    collection: *mut rd::rd_kafka_TopicCollection_t,
    options: *mut rd::rd_kafka_AdminOptions_t,
    queue: *mut rd::rd_kafka_queue_t,
    broker: i32,
    timeout_ms: i32,
    topics: &[String],
) -> Result<BTreeMap<String, Option<String>>, KafkaError> {
    let mut errstr = [0 as c_char; 256];
    // SAFETY: `options` is live; `errstr` is a writable buffer of the given size.
    let err = unsafe {
        rd::rd_kafka_AdminOptions_set_broker(options, broker, errstr.as_mut_ptr(), errstr.len())
    };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(KafkaError::MetadataFetch(err.into()));
    }
    // SAFETY: `options` is live; `errstr` is a writable buffer of the given size.
    let err = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(KafkaError::MetadataFetch(err.into()));
    }
    // SAFETY: per this function's contract; librdkafka copies what it needs from
    // `collection` and `options` before returning and posts the result on `queue`.
    unsafe { rd::rd_kafka_DescribeTopics(rk, collection, options, queue) };
    // The request timeout bounds the wait; the margin covers the result's delivery.
    let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64 + 1000);
    let event = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        // SAFETY: `queue` is live. A returned event is ours to destroy.
        let event = unsafe { rd::rd_kafka_queue_poll(queue, left.as_millis().max(1) as i32) };
        if event.is_null() {
            continue;
        }
        // SAFETY: `event` is a live event returned by the poll above.
        if unsafe { rd::rd_kafka_event_type(event) } == rd::RD_KAFKA_EVENT_DESCRIBETOPICS_RESULT {
            break event;
        }
        // SAFETY: not our result (nothing else is posted on this queue): destroyed once.
        unsafe { rd::rd_kafka_event_destroy(event) };
    };
    // SAFETY: `event` is the live DescribeTopics result; it is destroyed once, after every
    // string read from it was copied.
    let parsed = unsafe { read_result(event, topics) };
    unsafe { rd::rd_kafka_event_destroy(event) };
    parsed
}

/// Reads a DescribeTopics result event (without destroying it).
///
/// # Safety
/// `event` is a live `RD_KAFKA_EVENT_DESCRIBETOPICS_RESULT` event.
unsafe fn read_result(
    event: *mut rd::rd_kafka_event_t,
    topics: &[String],
) -> Result<BTreeMap<String, Option<String>>, KafkaError> {
    let unknown = || topics.iter().map(|t| (t.clone(), None)).collect();
    // SAFETY: `event` is live.
    let code: RDKafkaErrorCode = unsafe { rd::rd_kafka_event_error(event) }.into();
    if code != RDKafkaErrorCode::NoError {
        return if unsupported(code) {
            Ok(unknown())
        } else {
            Err(KafkaError::MetadataFetch(code))
        };
    }
    // SAFETY: `event` is live and of the DescribeTopics result type.
    let result = unsafe { rd::rd_kafka_event_DescribeTopics_result(event) };
    if result.is_null() {
        return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail));
    }
    let mut count = 0usize;
    // SAFETY: `result` is live (owned by `event`); the array has `count` elements.
    let descriptions = unsafe { rd::rd_kafka_DescribeTopics_result_topics(result, &mut count) };
    let mut ids: BTreeMap<String, Option<String>> = unknown();
    for i in 0..count {
        // SAFETY: `i < count`, the array's length; each element is a live description owned
        // by `event`.
        let description = unsafe { *descriptions.add(i) };
        if description.is_null() {
            continue;
        }
        // SAFETY: `description` is live; the name is a NUL-terminated string it owns, copied.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_TopicDescription_name(description)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `description` is live; the error (if any) is owned by it.
        let error = unsafe { rd::rd_kafka_TopicDescription_error(description) };
        if !error.is_null() {
            // SAFETY: `error` is live (owned by `description`).
            let code: RDKafkaErrorCode = unsafe { rd::rd_kafka_error_code(error) }.into();
            if code != RDKafkaErrorCode::NoError {
                if unsupported(code) {
                    continue;
                }
                return Err(KafkaError::MetadataFetch(code));
            }
        }
        // SAFETY: `description` is live; the uuid is owned by it.
        let uuid = unsafe { rd::rd_kafka_TopicDescription_topic_id(description) };
        let id = if uuid.is_null() {
            None
        } else {
            // SAFETY: `uuid` is live; the base64 string is owned by it (copied at once).
            unsafe {
                let zero = rd::rd_kafka_Uuid_most_significant_bits(uuid) == 0
                    && rd::rd_kafka_Uuid_least_significant_bits(uuid) == 0;
                let text = rd::rd_kafka_Uuid_base64str(uuid);
                (!zero && !text.is_null())
                    .then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
            }
        };
        if let Some(slot) = ids.get_mut(&name) {
            *slot = id;
        }
    }
    Ok(ids)
}

/// Codes meaning "this broker cannot tell topic ids".
fn unsupported(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::NotImplemented
            | RDKafkaErrorCode::InvalidRequest
    )
}

/// What a stored topic id and the broker's say about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicIdCheck {
    /// Both known and equal: the same topic.
    Same,
    /// Both known and different: the topic was deleted and recreated.
    Changed {
        /// The id stored with the positions.
        stored: String,
        /// The id the broker reports now.
        broker: String,
    },
    /// One side does not know (an older table, a broker without ids): fall back to checks
    /// that need no id.
    Unknown,
}

/// Compares the id stored with a topic's positions and the broker's.
pub fn check_topic_id(stored: Option<&str>, broker: Option<&str>) -> TopicIdCheck {
    match (stored, broker) {
        (Some(s), Some(b)) if s == b => TopicIdCheck::Same,
        (Some(s), Some(b)) => TopicIdCheck::Changed {
            stored: s.to_string(),
            broker: b.to_string(),
        },
        _ => TopicIdCheck::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    #[test]
    fn ids_compare() {
        assert_eq!(check_topic_id(Some("a"), Some("a")), TopicIdCheck::Same);
        assert_eq!(
            check_topic_id(Some("a"), Some("b")),
            TopicIdCheck::Changed {
                stored: "a".into(),
                broker: "b".into()
            }
        );
        assert_eq!(check_topic_id(None, Some("b")), TopicIdCheck::Unknown);
        assert_eq!(check_topic_id(Some("a"), None), TopicIdCheck::Unknown);
        assert_eq!(check_topic_id(None, None), TopicIdCheck::Unknown);
    }

    #[test]
    fn unsupported_codes_mean_no_id() {
        assert!(unsupported(RDKafkaErrorCode::UnsupportedVersion));
        assert!(!unsupported(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!unsupported(RDKafkaErrorCode::OperationTimedOut));
    }

    /// librdkafka's mock cluster (whose metadata names a controller it does not list: the
    /// request must not wait for it) answers with the topic's id.
    #[test]
    fn mock_cluster_answers() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("orders", 2, 1).expect("topic");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("consumer");
        let ids = describe_topic_ids(
            consumer.client(),
            &["orders".to_string()],
            Duration::from_secs(10),
        )
        .expect("describe");
        // The mock cluster reports ids (librdkafka 2.12): one, stable across calls.
        assert_eq!(ids.keys().collect::<Vec<_>>(), ["orders"]);
        let id = ids["orders"]
            .clone()
            .expect("the mock cluster reports topic ids");
        let again = describe_topic_ids(
            consumer.client(),
            &["orders".to_string()],
            Duration::from_secs(10),
        )
        .expect("describe again");
        assert_eq!(again["orders"].as_deref(), Some(id.as_str()));
        assert_eq!(
            describe_topic_ids(consumer.client(), &[], Duration::from_secs(1)).unwrap(),
            BTreeMap::new()
        );
    }
}
