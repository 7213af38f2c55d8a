//! Publishing records to a topic outside the event log (the analysts'
//! stream): an idempotent producer with `acks=all` and the append timeout
//! of the adapter's own producer, returning only when every record of a
//! call is acknowledged.

use std::fmt;

use futures::future::join_all;
use mskflow_eventlog::Error;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::{Options, Producers};

/// One record: its key, its headers (name, value) and its body.
pub type Record = (String, Vec<(String, String)>, Vec<u8>);

/// A producer for one topic.
pub struct TopicPublisher {
    options: Options,
    topic: String,
    producer: Producers,
}

impl fmt::Debug for TopicPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicPublisher")
            .field("brokers", &self.options.brokers)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicPublisher {
    /// A publisher to `topic` on the brokers of `options` (the topic must
    /// exist: `mskflow topics create`). Connects lazily.
    pub fn new(options: &Options, topic: impl Into<String>) -> Result<Self, Error> {
        Ok(Self {
            options: options.clone(),
            topic: topic.into(),
            producer: Producers::new(options)?,
        })
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Send every record and wait for every acknowledgement. `Ok` means
    /// all of them are stored with `acks=all`; on `Err` (gRPC
    /// `UNAVAILABLE`) some may be stored, so the caller publishing again
    /// may duplicate records (consumers de-duplicate).
    pub async fn publish(&self, records: Vec<Record>) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let (generation, producer) = self.producer.current();
        let timeout = Timeout::After(self.options.append_timeout);
        let sends = records.iter().map(|(key, headers, body)| {
            let hdrs = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k.as_str(),
                    value: Some(v.as_str()),
                })
            });
            producer.send(
                FutureRecord::to(&self.topic)
                    .key(key.as_str())
                    .payload(body.as_slice())
                    .headers(hdrs),
                timeout,
            )
        });
        // The producer gives each record up at the append timeout; the
        // outer bound only guards against a send that never resolves.
        let bound = self.options.append_timeout * 2 + std::time::Duration::from_secs(1);
        let results = tokio::time::timeout(bound, join_all(sends))
            .await
            .map_err(|_| Error::Unavailable {
                context: format!("producing to {}", self.topic),
                source: "the brokers did not acknowledge the records in time".into(),
            })?;
        let mut first: Option<KafkaError> = None;
        let mut failed = 0usize;
        for r in results {
            if let Err((e, _)) = r {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => {
                tracing::warn!(topic = %self.topic, failed, error = %e, "records not acknowledged by the brokers");
                if !matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull)
                ) {
                    self.producer.replace(generation);
                }
                Err(Error::Unavailable {
                    context: format!("producing {failed} records to {}", self.topic),
                    source: Box::new(e),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test set-up")]
mod tests {
    use std::time::Duration;

    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Headers as _;

    use super::*;
    use crate::testing::Broker;
    use crate::{TopicSettings, create_topics};

    #[tokio::test]
    async fn every_record_is_acknowledged_and_readable_with_its_key_and_headers()
    -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let broker = Broker::start()?;
        let mut options = Options::new(broker.bootstrap(), "publish-test");
        options.topics = TopicSettings {
            prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
            partitions: 2,
            replication: 1,
        };
        create_topics(&options).await?;
        let topic = options.topics.analytics_topic();
        let publisher = TopicPublisher::new(&options, topic.clone())?;
        assert_eq!(publisher.topic(), topic);
        publisher.publish(Vec::new()).await?;
        let records: Vec<Record> = (0..5)
            .map(|n| {
                (
                    format!("key-{n}"),
                    vec![("event_type".to_owned(), format!("Type{n}"))],
                    format!("{{\"n\":{n}}}").into_bytes(),
                )
            })
            .collect();
        publisher.publish(records).await?;

        let consumer: StreamConsumer = options
            .client_config("reader")
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[topic.as_str()])?;
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
            let key = String::from_utf8(m.key().unwrap_or_default().to_vec())?;
            let body = String::from_utf8(m.payload().unwrap_or_default().to_vec())?;
            let header = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event_type"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            seen.push((key, header, body));
        }
        seen.sort();
        for (n, (key, header, body)) in seen.iter().enumerate() {
            assert_eq!(key, &format!("key-{n}"));
            assert_eq!(header.as_deref(), Some(format!("Type{n}").as_str()));
            assert_eq!(body, &format!("{{\"n\":{n}}}"));
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_broker_fails_within_the_timeout()
    -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut options = Options::new(addr.to_string(), "publish-down");
        options.append_timeout = Duration::from_millis(500);
        let publisher = TopicPublisher::new(&options, "nowhere.analytics.v1")?;
        let started = std::time::Instant::now();
        let err = publisher
            .publish(vec![("k".to_owned(), Vec::new(), b"{}".to_vec())])
            .await
            .err();
        assert!(matches!(err, Some(Error::Unavailable { .. })), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    }
}
