//! An [`EventLog`] decorator that records metrics and spans for any adapter.
//!
//! Metrics: `mskflow_event_append_duration_seconds` (histogram),
//! `mskflow_events_appended_total`, `mskflow_event_append_failures_total`
//! (by reason), and `mskflow_consumer_lag{consumer, partition}` after every
//! batch a subscription returns.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::{
    Appended, Envelope, Error, EventLog, ExpectedVersion, Metadata, NewEvent, StartFrom,
    StoredEvent, Subscription,
};

/// Wraps an adapter with metrics and tracing.
#[derive(Debug, Clone)]
pub struct Instrumented {
    inner: Arc<dyn EventLog>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn EventLog>) -> Self {
        Self { inner }
    }
}

fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::WrongExpectedVersion { .. } => "wrong-expected-version",
        Error::DuplicateEvent { .. } => "duplicate-event",
        Error::InvalidAppend { .. } => "invalid",
        Error::Unavailable { .. } => "unavailable",
        Error::Corrupt { .. } => "corrupt",
        Error::Closed => "closed",
    }
}

/// The kind of a stream (`referral` for `referral-…`), a bounded label.
fn stream_kind(stream_id: &str) -> String {
    stream_id
        .rsplit_once('-')
        .map(|(kind, _)| kind.split('-').next().unwrap_or(kind))
        .unwrap_or("other")
        .to_owned()
}

#[async_trait]
impl EventLog for Instrumented {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, Error> {
        let count = events.len() as u64;
        let kind = stream_kind(stream_id);
        let span = tracing::info_span!("eventlog.append", otel.kind = "producer", stream_kind = %kind, events = count);
        let started = Instant::now();
        let result = self
            .inner
            .append(stream_id, expected, events, metadata)
            .instrument(span)
            .await;
        metrics::histogram!("mskflow_event_append_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics::counter!("mskflow_events_appended_total", "stream_kind" => kind).increment(count),
            Err(e) => metrics::counter!("mskflow_event_append_failures_total", "reason" => failure_reason(e)).increment(1),
        }
        result
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_sequence: u64,
    ) -> Result<Vec<Envelope>, Error> {
        self.inner.read_stream(stream_id, from_sequence).await
    }

    async fn subscribe(
        &self,
        consumer: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, Error> {
        let inner = self.inner.subscribe(consumer, start).await?;
        Ok(Box::new(InstrumentedSubscription {
            inner,
            consumer: consumer.to_owned(),
        }))
    }

    async fn subscribe_types(
        &self,
        consumer: &str,
        start: StartFrom,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        let inner = self.inner.subscribe_types(consumer, start, types).await?;
        Ok(Box::new(InstrumentedSubscription {
            inner,
            consumer: consumer.to_owned(),
        }))
    }

    async fn ping(&self) -> Result<(), Error> {
        self.inner.ping().await
    }

    fn log_id(&self) -> Option<String> {
        self.inner.log_id()
    }
}

#[derive(Debug)]
struct InstrumentedSubscription {
    inner: Box<dyn Subscription>,
    consumer: String,
}

impl InstrumentedSubscription {
    async fn record_lag(&self) {
        if let Ok(lag) = self.inner.lag().await {
            metrics::gauge!("mskflow_consumer_lag", "consumer" => self.consumer.clone(), "partition" => "0")
                .set(lag as f64);
        }
    }
}

#[async_trait]
impl Subscription for InstrumentedSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        let batch = self.inner.next_batch(max).await?;
        self.record_lag().await;
        Ok(batch)
    }

    async fn poll_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        let batch = self.inner.poll_batch(max).await?;
        self.record_lag().await;
        Ok(batch)
    }

    async fn next_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let batch = self.inner.next_stored(max).await?;
        self.record_lag().await;
        Ok(batch)
    }

    async fn poll_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let batch = self.inner.poll_stored(max).await?;
        self.record_lag().await;
        Ok(batch)
    }

    async fn commit(&mut self) -> Result<(), Error> {
        self.inner.commit().await
    }

    async fn lag(&self) -> Result<u64, Error> {
        self.inner.lag().await
    }

    fn scanned(&self) -> Option<u64> {
        self.inner.scanned()
    }
}

#[cfg(test)]
mod tests {
    use super::stream_kind;

    #[test]
    fn stream_kinds_are_bounded_labels() {
        assert_eq!(
            stream_kind("referral-6f1c2f7e-0b7a-4c55-9a43-3f1f0e1d2c01"),
            "referral"
        );
        assert_eq!(
            stream_kind("fcp-slot-6f1c2f7e-0b7a-4c55-9a43-3f1f0e1d2c01"),
            "fcp"
        );
        assert_eq!(stream_kind("plain"), "other");
    }
}
