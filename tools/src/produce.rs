//! Producing for the demo, the bench, the drill and its mirror: a send that waits out a full local queue,
//! and a flush that waits out a slow broker.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

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

/// How long [`flush_patiently`] waits in all.
const FLUSH_PATIENCE: Duration = Duration::from_secs(180);

/// Flushes `producer`, waiting up to [`FLUSH_PATIENCE`] in 30 s rounds, with a line on
/// standard error per round that ends with records still in flight. Why: a broker under
/// another client's heavy produce load (tansu in CI, beside the chaos test) was seen to stall
/// past one 30 s flush, which failed a DR drill though nothing was lost; an idempotent
/// producer's flush may simply be asked again. Other errors return at once.
pub fn flush_patiently<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    what: &str,
) -> Result<(), KafkaError> {
    flush_in_rounds(producer, what, Duration::from_secs(30), FLUSH_PATIENCE)
}

/// [`flush_patiently`] with its round and patience given (tests use short ones).
fn flush_in_rounds<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    what: &str,
    round: Duration,
    patience: Duration,
) -> Result<(), KafkaError> {
    let started = std::time::Instant::now();
    loop {
        match producer.flush(Timeout::After(round)) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if started.elapsed() < patience =>
            {
                eprintln!(
                    "{what}: {} record(s) still in flight after {} s; waiting for the broker",
                    producer.in_flight_count(),
                    started.elapsed().as_secs()
                );
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::util::Timeout;
    use std::time::Duration;

    use super::{flush_in_rounds, send_retrying};

    /// A broker down for ~2.5 s: one 1 s flush gives up, rounds of 1 s within a patience of
    /// 20 s get every record acknowledged once it is back.
    #[test]
    fn a_flush_waits_out_a_broker_that_comes_back() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "60000")
            .create()
            .unwrap();
        send_retrying(&producer, BaseRecord::<(), _>::to("t").payload("warm")).unwrap();
        producer
            .flush(Timeout::After(Duration::from_secs(10)))
            .unwrap();
        cluster.broker_down(1).unwrap();
        for i in 0..10 {
            let payload = format!("r{i}");
            send_retrying(&producer, BaseRecord::<(), _>::to("t").payload(&payload)).unwrap();
        }
        assert!(
            producer
                .flush(Timeout::After(Duration::from_secs(1)))
                .is_err(),
            "a flush succeeded with the broker down"
        );
        let flushing = std::thread::spawn(move || {
            flush_in_rounds(
                &producer,
                "test",
                Duration::from_secs(1),
                Duration::from_secs(20),
            )
            .map(|()| producer.in_flight_count())
        });
        std::thread::sleep(Duration::from_millis(1500));
        cluster.broker_up(1).unwrap();
        assert_eq!(flushing.join().unwrap().unwrap(), 0);
    }
}
