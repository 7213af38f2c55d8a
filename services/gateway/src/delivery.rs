//! Outbound delivery: onward referrals made at FCP assessment are sent to the
//! receiving system as FHIR `ServiceRequest`s, with retries, backoff and a
//! dead-letter state, every attempt recorded as an event on
//! `delivery-{onward referral id}`.
//!
//! The worker is a consumer (`gateway-delivery`) of the log: at-least-once,
//! its checkpoint committed after each message is settled (delivered or given
//! up). A message already settled is skipped, so a redelivery sends nothing.
//! The receiver sees the same `X-Request-Id` on every attempt and may
//! de-duplicate on it; a 409 duplicate answer counts as delivered.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mskflow_eventlog::{
    Envelope, EventLog, ExpectedVersion, Metadata, StartFrom, decode, new_event,
};
use mskflow_events::assessment::AssessmentEvent;
use mskflow_events::delivery::{DeliveryEvent, OutboundDelivered, OutboundDeliveryFailed};
use uuid::Uuid;

/// The worker's consumer name.
pub const CONSUMER: &str = "gateway-delivery";

/// Where and how to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// FHIR base URL of the receiving system per onward destination code
    /// (`orthopaedics`, `imaging`, …). A destination without one is recorded
    /// as failed (`no endpoint configured`) and not retried.
    pub endpoints: BTreeMap<String, String>,
    /// Attempts before a message is given up (dead letter).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: BTreeMap::new(),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// How an attempt ended.
enum Attempt {
    Delivered(u16),
    Retry { status: Option<u16>, reason: String },
    Permanent { status: Option<u16>, reason: String },
}

/// The delivery worker.
#[derive(Debug)]
pub struct Worker {
    log: Arc<dyn EventLog>,
    options: Options,
    client: reqwest::Client,
}

impl Worker {
    pub fn new(log: Arc<dyn EventLog>, options: Options) -> Self {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            log,
            options,
            client,
        }
    }

    async fn attempt(
        &self,
        url: &str,
        body: &str,
        message_id: Uuid,
        envelope: &Envelope,
    ) -> Attempt {
        let mut request = self
            .client
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", message_id.to_string())
            .header("X-Correlation-Id", envelope.correlation_id.to_string())
            .body(body.to_owned());
        if let (Some(tp), _) = mskflow_telemetry::current_trace_context() {
            request = request.header("traceparent", tp);
        }
        match request.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                match status {
                    200..=299 | 409 => Attempt::Delivered(status),
                    408 | 425 | 429 | 500..=599 => Attempt::Retry {
                        status: Some(status),
                        reason: format!("receiver answered {status}"),
                    },
                    _ => Attempt::Permanent {
                        status: Some(status),
                        reason: format!("receiver refused the message ({status})"),
                    },
                }
            }
            Err(e) => Attempt::Retry {
                status: None,
                reason: format!("cannot reach the receiver: {}", e.without_url()),
            },
        }
    }

    async fn record(
        &self,
        message_id: Uuid,
        event: DeliveryEvent,
        envelope: &Envelope,
    ) -> Result<(), mskflow_eventlog::Error> {
        let new =
            new_event(&event, mskflow_events::SCHEMA_VERSION, chrono::Utc::now()).map_err(|e| {
                mskflow_eventlog::Error::InvalidAppend {
                    stream_id: format!("delivery-{message_id}"),
                    reason: e.to_string(),
                }
            })?;
        let (traceparent, tracestate) = mskflow_telemetry::current_trace_context();
        let metadata = Metadata {
            causation_id: Some(envelope.event_id),
            correlation_id: envelope.correlation_id,
            traceparent: traceparent.or_else(|| envelope.traceparent.clone()),
            tracestate: tracestate.or_else(|| envelope.tracestate.clone()),
        };
        // One writer per delivery stream: this worker.
        self.log
            .append(
                &format!("delivery-{message_id}"),
                ExpectedVersion::Any,
                vec![new],
                &metadata,
            )
            .await
            .map(|_| ())
    }

    /// Whether a message was already delivered or given up.
    async fn settled(&self, message_id: Uuid) -> Result<bool, mskflow_eventlog::Error> {
        let events = self
            .log
            .read_stream(&format!("delivery-{message_id}"), 1)
            .await?;
        Ok(events.iter().any(|e| match decode::<DeliveryEvent>(e) {
            Ok(DeliveryEvent::OutboundDelivered(_)) => true,
            Ok(DeliveryEvent::OutboundDeliveryFailed(f)) => !f.will_retry,
            Err(_) => false,
        }))
    }

    /// Deliver the message an envelope asks for, if it is an onward referral.
    pub async fn handle(&self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error> {
        if envelope.event_type != "OnwardReferralRequested" {
            return Ok(());
        }
        let Ok(AssessmentEvent::OnwardReferralRequested(onward)) =
            decode::<AssessmentEvent>(envelope)
        else {
            tracing::error!(
                position = envelope.position,
                "onward referral does not decode; not delivered"
            );
            return Ok(());
        };
        let message_id = onward.onward_referral_id;
        let referral_id = onward.referral_id;
        if self.settled(message_id).await? {
            return Ok(());
        }
        let destination = onward.destination.code();
        let Some(base) = self.options.endpoints.get(destination) else {
            tracing::warn!(%message_id, destination, "no endpoint configured for onward referrals");
            metrics::counter!("mskflow_outbound_dead_letters_total", "destination" => destination)
                .increment(1);
            let failed = OutboundDeliveryFailed {
                message_id,
                referral_id,
                endpoint: None,
                http_status: None,
                reason: format!("no endpoint configured for destination {destination}"),
                attempt: 0,
                will_retry: false,
            };
            return self
                .record(
                    message_id,
                    DeliveryEvent::OutboundDeliveryFailed(failed),
                    envelope,
                )
                .await;
        };
        let url = format!("{}/ServiceRequest", base.trim_end_matches('/'));
        let body = onward.service_request.to_string();
        let mut backoff = self.options.initial_backoff;
        let max = self.options.max_attempts.max(1);
        for attempt in 1..=max {
            let outcome = self.attempt(&url, &body, message_id, envelope).await;
            let (status, reason, retryable) = match outcome {
                Attempt::Delivered(status) => {
                    tracing::info!(%message_id, %referral_id, destination, attempt, "onward referral delivered");
                    metrics::counter!("mskflow_outbound_delivered_total", "destination" => destination).increment(1);
                    let delivered = OutboundDelivered {
                        message_id,
                        referral_id,
                        endpoint: url.clone(),
                        http_status: status,
                        attempts: attempt,
                    };
                    return self
                        .record(
                            message_id,
                            DeliveryEvent::OutboundDelivered(delivered),
                            envelope,
                        )
                        .await;
                }
                Attempt::Retry { status, reason } => (status, reason, true),
                Attempt::Permanent { status, reason } => (status, reason, false),
            };
            let will_retry = retryable && attempt < max;
            tracing::warn!(%message_id, destination, attempt, will_retry, reason = %reason, "onward referral delivery failed");
            if will_retry {
                metrics::counter!("mskflow_outbound_retries_total", "destination" => destination)
                    .increment(1);
            } else {
                metrics::counter!("mskflow_outbound_dead_letters_total", "destination" => destination).increment(1);
            }
            let failed = OutboundDeliveryFailed {
                message_id,
                referral_id,
                endpoint: Some(url.clone()),
                http_status: status,
                reason,
                attempt,
                will_retry,
            };
            self.record(
                message_id,
                DeliveryEvent::OutboundDeliveryFailed(failed),
                envelope,
            )
            .await?;
            if !will_retry {
                return Ok(());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
        Ok(())
    }

    /// Deliver until `shutdown` resolves, committing after each batch.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut sub = loop {
            match self.log.subscribe(CONSUMER, StartFrom::Checkpoint).await {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::error!(error = %e, "delivery worker cannot subscribe; retrying");
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => return,
                batch = sub.next_batch(64) => batch,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(mskflow_eventlog::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery worker cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            for envelope in &batch {
                let span = tracing::info_span!(
                    "consume",
                    otel.name = %format!("{CONSUMER} {}", envelope.event_type),
                    otel.kind = "consumer",
                    consumer = CONSUMER,
                    position = envelope.position,
                );
                mskflow_telemetry::set_remote_parent(
                    &span,
                    envelope.traceparent.as_deref(),
                    envelope.tracestate.as_deref(),
                );
                // A message is settled before the next: retry recording
                // failures (the store) until they pass or we stop.
                loop {
                    let handled = tokio::select! {
                        () = &mut shutdown => return,
                        r = tracing::Instrument::instrument(self.handle(envelope), span.clone()) => r,
                    };
                    match handled {
                        Ok(()) => break,
                        Err(mskflow_eventlog::Error::Closed) => return,
                        Err(e) => {
                            tracing::error!(error = %e, position = envelope.position, "delivery could not be recorded; retrying");
                            tokio::select! {
                                () = &mut shutdown => return,
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                }
            }
            if let Err(e) = sub.commit().await {
                tracing::warn!(error = %e, "delivery worker could not commit; messages will be checked again");
            }
        }
    }
}
