//! Producing for the demo and the bench: a send that waits out a full local queue.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

/// Sends `record`, polling and retrying while librdkafka's local queue is full; any other
/// error is returned (never retried forever).
pub fn send_retrying<K: ToBytes + ?Sized, P: ToBytes + ?Sized, C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
