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
    /// HTTPS to receivers: extra trusted CAs and a client certificate.
    pub tls: crate::tls::OutboundOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: BTreeMap::new(),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            tls: crate::tls::OutboundOptions::default(),
        }
    }
}

/// The outbound HTTP client: HTTPS with the system trust store, the extra
/// CA bundle and client certificate of `options.tls`, and the per-attempt
/// timeout.
pub fn client(options: &Options) -> Result<reqwest::Client, crate::tls::Error> {
    crate::tls::client(&options.tls, options.timeout)
}

/// How an attempt ended.
enum Attempt {
    Delivered(u16),
    Retry { status: Option<u16>, reason: String },
    Permanent { status: Option<u16>, reason: String },
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// Stream recording its attempts (`delivery-{id}`, `notify-{id}`).
    pub stream: String,
    pub message_id: Uuid,
    pub referral_id: Uuid,
    pub url: String,
    pub body: String,
    /// Bounded metric label (destination, or `referrer`).
    pub label: String,
}

/// Sends messages with retries and records every attempt as an event.
#[derive(Debug, Clone)]
pub struct Outbox {
    log: Arc<dyn EventLog>,
    client: reqwest::Client,
    max_attempts: u32,
    initial_backoff: Duration,
}

impl Outbox {
    /// An outbox sending with [`client`]. The gateway checks the TLS
    /// settings at start-up ([`client`] there); should they fail here all the
    /// same, the client falls back to the system trust store alone and no
    /// client certificate, so a receiver that needs either refuses it.
    pub fn new(log: Arc<dyn EventLog>, options: &Options) -> Self {
        let client = client(options).unwrap_or_else(|e| {
            tracing::error!(error = %e, "outbound TLS settings unusable; using the system trust store only");
            reqwest::Client::builder()
                .timeout(options.timeout)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        });
        Self {
            log,
            client,
            max_attempts: options.max_attempts.max(1),
            initial_backoff: options.initial_backoff,
        }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    async fn attempt(&self, msg: &Message, envelope: &Envelope) -> Attempt {
        let mut request = self
            .client
            .post(&msg.url)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", msg.message_id.to_string())
            .header("X-Correlation-Id", envelope.correlation_id.to_string())
            .body(msg.body.clone());
        if let (Some(tp), _) = mskflow_telemetry::current_trace_context() {
            request = request.header("traceparent", tp);
        }
        match request.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                match status {
                    // 409: the receiver already has it (never resend after a duplicate).
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

    /// Record a delivery event on `stream` (one writer per stream: us).
    pub async fn record(
        &self,
        stream: &str,
        event: DeliveryEvent,
        envelope: &Envelope,
    ) -> Result<(), mskflow_eventlog::Error> {
        let new =
            new_event(&event, mskflow_events::SCHEMA_VERSION, chrono::Utc::now()).map_err(|e| {
                mskflow_eventlog::Error::InvalidAppend {
                    stream_id: stream.to_owned(),
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
        self.log
            .append(stream, ExpectedVersion::Any, vec![new], &metadata)
            .await
            .map(|_| ())
    }

    /// Whether the message on `stream` was already delivered or given up.
    pub async fn settled(&self, stream: &str) -> Result<bool, mskflow_eventlog::Error> {
        let events = self.log.read_stream(stream, 1).await?;
        Ok(events.iter().any(|e| match decode::<DeliveryEvent>(e) {
            Ok(DeliveryEvent::OutboundDelivered(_)) => true,
            Ok(DeliveryEvent::OutboundDeliveryFailed(f)) => !f.will_retry,
            Err(_) => false,
        }))
    }

    /// Send with retries and backoff until delivered or given up; every
    /// attempt is recorded.
    pub async fn send(
        &self,
        msg: Message,
        envelope: &Envelope,
    ) -> Result<(), mskflow_eventlog::Error> {
        let mut backoff = self.initial_backoff;
        for attempt in 1..=self.max_attempts {
            let (status, reason, retryable) = match self.attempt(&msg, envelope).await {
                Attempt::Delivered(status) => {
                    tracing::info!(message_id = %msg.message_id, referral_id = %msg.referral_id, target = %msg.label, attempt, "message delivered");
                    metrics::counter!("mskflow_outbound_delivered_total", "target" => msg.label.clone()).increment(1);
                    let delivered = OutboundDelivered {
                        message_id: msg.message_id,
                        referral_id: msg.referral_id,
                        endpoint: msg.url.clone(),
                        http_status: status,
                        attempts: attempt,
                    };
                    return self
                        .record(
                            &msg.stream,
                            DeliveryEvent::OutboundDelivered(delivered),
                            envelope,
                        )
                        .await;
                }
                Attempt::Retry { status, reason } => (status, reason, true),
                Attempt::Permanent { status, reason } => (status, reason, false),
            };
            let will_retry = retryable && attempt < self.max_attempts;
            tracing::warn!(message_id = %msg.message_id, target = %msg.label, attempt, will_retry, reason = %reason, "delivery failed");
            if will_retry {
                metrics::counter!("mskflow_outbound_retries_total", "target" => msg.label.clone())
                    .increment(1);
            } else {
                metrics::counter!("mskflow_outbound_dead_letters_total", "target" => msg.label.clone()).increment(1);
            }
            let failed = OutboundDeliveryFailed {
                message_id: msg.message_id,
                referral_id: msg.referral_id,
                endpoint: Some(msg.url.clone()),
                http_status: status,
                reason,
                attempt,
                will_retry,
            };
            self.record(
                &msg.stream,
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
}

/// A consumer of the log that handles one event at a time, in order.
#[async_trait::async_trait]
pub trait Consume: Send {
    fn name(&self) -> &'static str;
    async fn handle(&mut self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error>;
}

/// Run a consumer from `start` until `shutdown`, committing after each
/// batch. A store failure while handling an event is retried (the event is
/// settled before the next one), so order per referral is kept.
pub async fn run(
    log: Arc<dyn EventLog>,
    start: StartFrom,
    mut consumer: impl Consume,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let name = consumer.name();
    let mut sub = loop {
        match log.subscribe(name, start).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::error!(consumer = name, error = %e, "cannot subscribe; retrying");
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
                tracing::warn!(consumer = name, error = %e, "cannot read the log; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        for envelope in &batch {
            let span = tracing::info_span!(
                "consume",
                otel.name = %format!("{name} {}", envelope.event_type),
                otel.kind = "consumer",
                consumer = name,
                position = envelope.position,
            );
            mskflow_telemetry::set_remote_parent(
                &span,
                envelope.traceparent.as_deref(),
                envelope.tracestate.as_deref(),
            );
            loop {
                let handled = tokio::select! {
                    () = &mut shutdown => return,
                    r = tracing::Instrument::instrument(consumer.handle(envelope), span.clone()) => r,
                };
                match handled {
                    Ok(()) => break,
                    Err(mskflow_eventlog::Error::Closed) => return,
                    Err(e) => {
                        tracing::error!(consumer = name, error = %e, position = envelope.position, "event could not be settled; retrying");
                        tokio::select! {
                            () = &mut shutdown => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        }
        if let Err(e) = sub.commit().await {
            tracing::warn!(consumer = name, error = %e, "could not commit; events will be checked again");
        }
    }
}

/// The onward-referral delivery worker.
#[derive(Debug)]
pub struct Worker {
    outbox: Outbox,
    endpoints: BTreeMap<String, String>,
}

impl Worker {
    pub fn new(log: Arc<dyn EventLog>, options: Options) -> Self {
        Self {
            outbox: Outbox::new(log, &options),
            endpoints: options.endpoints,
        }
    }

    /// Deliver the message an envelope asks for, if it is an onward referral.
    pub async fn deliver(&self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error> {
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
        let stream = format!("delivery-{message_id}");
        if self.outbox.settled(&stream).await? {
            return Ok(());
        }
        let destination = onward.destination.code();
        let Some(base) = self.endpoints.get(destination) else {
            tracing::warn!(%message_id, destination, "no endpoint configured for onward referrals");
            metrics::counter!("mskflow_outbound_dead_letters_total", "target" => destination)
                .increment(1);
            let failed = OutboundDeliveryFailed {
                message_id,
                referral_id: onward.referral_id,
                endpoint: None,
                http_status: None,
                reason: format!("no endpoint configured for destination {destination}"),
                attempt: 0,
                will_retry: false,
            };
            return self
                .outbox
                .record(
                    &stream,
                    DeliveryEvent::OutboundDeliveryFailed(failed),
                    envelope,
                )
                .await;
        };
        let msg = Message {
            stream,
            message_id,
            referral_id: onward.referral_id,
            url: format!("{}/ServiceRequest", base.trim_end_matches('/')),
            body: onward.service_request.to_string(),
            label: destination.to_owned(),
        };
        self.outbox.send(msg, envelope).await
    }
}

#[async_trait::async_trait]
impl Consume for Worker {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    async fn handle(&mut self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error> {
        self.deliver(envelope).await
    }
}
