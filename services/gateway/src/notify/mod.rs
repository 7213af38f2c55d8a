//! Closing the loop: the referrer is sent a `servicerequest-response`
//! message Bundle (Booking and Referral Standard) with the referral's Task at
//! every status change, posted to the endpoint its referral message gave
//! (`MessageHeader.source.endpoint`), when that endpoint is registered.
//!
//! Messages go out in log order, so per referral in order of the changes;
//! each is retried on 408/429/5xx with backoff, never resent after a 409
//! duplicate answer, and given up (dead letter) after the last attempt. Every
//! attempt is an event on `notify-{message id}`; the message id is derived
//! from the event that caused it, so a redelivered event sends nothing new.
//!
//! Active FHIR Subscriptions ([`crate::subscription`]) of the referral's
//! organisation are told too, each with its own message id (subscription id
//! and causing event) and its own strictly increasing counter, kept with the
//! subscriptions in the worker's small state file ([`state`]): numbered once
//! per causing event, in log order, and written before the notification is
//! sent, so a restart or a redelivery goes on from the same count.
//!
//! The worker is a checkpointed consumer (`gateway-notifications`): a
//! restart resumes after its checkpoint. Each message shows the Task as it
//! was at its change: the referral's view is folded afresh from the
//! referral's own streams up to the event's log position ([`crate::as_at`]),
//! so the worker keeps no copy of the views. When its state file cannot be
//! resumed (new, or on a log without stable positions such as Kafka's
//! index), the worker reads the log once from the first event instead,
//! numbering again in the same order and sending nothing already settled
//! (on Kafka a subscription's creation and a referral's change sit on
//! different topics, so a change made while a subscription was being
//! created may be counted on one side of it or the other after that).
//!
//! A new subscription is first sent its handshake, as a message like any
//! other (message id from the subscription id and its creation event, same
//! retries and dead letter); the outcome is recorded on the subscription's
//! stream (`SubscriptionActivated` / `SubscriptionErrored`). Only a
//! subscription whose handshake was answered is told of changes. The worker
//! handles the log in order and the handshake is settled before the next
//! event, so changes made while it was pending are sent after it succeeds,
//! in log order, and none are sent to a subscription in error. Seen again,
//! the outcome is read back from the handshake's own `notify-{id}` stream, so
//! the counters come out the same.

pub mod state;

use std::sync::Arc;

use mskflow_eventlog::{
    Envelope, EventLog, ExpectedVersion, Metadata, StartFrom, decode, new_event,
};
use mskflow_events::delivery::DeliveryEvent;
use mskflow_events::subscription::{
    SubscriptionActivated, SubscriptionErrored, SubscriptionEvent, SubscriptionStatusEvent,
    stream_id,
};
use uuid::Uuid;

use crate::delivery::{Consume, Message, Options, Outbox};
use crate::render;
use crate::subscription::{self, Handshake, SubscriptionView};
use crate::views::ReferralView;

use self::state::State;

/// The worker's consumer name.
pub const CONSUMER: &str = "gateway-notifications";

/// Namespace of notification message ids (UUIDv5 of the causing event).
const NOTIFY_NAMESPACE: Uuid = Uuid::from_u128(0x2f6b_0d41_8a3c_4e97_b512_6c0e_9d7a_31f8);

/// Namespace of subscription notification ids (UUIDv5 of the subscription
/// id and the causing event id).
const SUBSCRIPTION_NAMESPACE: Uuid = Uuid::from_u128(0x9d42_7e15_c3a0_4f6b_8e21_5a7c_0b93_d6e4);

/// Events that change what the referrer sees on its Task.
pub const NOTIFYING: &[&str] = &[
    "ReferralTriaged",
    "ReferralRedirected",
    "ReferralRejected",
    "ReferralCancelled",
    "AssessmentBooked",
    "AssessmentRescheduled",
    "AssessmentCompleted",
    "EpisodeDischarged",
    "PlaceBooked",
    "CourseCompleted",
    "RehabDischarged",
];

/// The notification worker: folds the changed referral as it was at each
/// change, and keeps only the subscriptions (in [`State`]).
#[derive(Debug)]
pub struct Worker {
    outbox: Outbox,
    /// The log, to read back the referral as sent (not kept in the views).
    log: Arc<dyn EventLog>,
    /// Registered referrer endpoints (prefixes); nothing else is called.
    registered: Vec<String>,
    base_url: String,
    /// The subscriptions: handshakes, counters, creation and deletion.
    state: State,
}

impl Worker {
    /// A worker with its state opened in `projections` (`None`: a temporary
    /// directory), and where its subscription to the log starts: after its
    /// checkpoint, or from the first event when the state was rebuilt.
    pub async fn open(
        log: Arc<dyn EventLog>,
        options: &Options,
        registered: Vec<String>,
        base_url: String,
        projections: Option<mskflow_projection::Options>,
    ) -> Result<(Self, StartFrom), mskflow_eventlog::Error> {
        let (state, start) = State::open(log.as_ref(), projections).await?;
        let worker = Self {
            outbox: Outbox::new(log.clone(), options),
            log,
            registered,
            base_url,
            state,
        };
        Ok((worker, start))
    }

    fn registered(&self, endpoint: &str) -> bool {
        self.registered
            .iter()
            .any(|r| endpoint.starts_with(r.as_str()))
    }
}

/// The referral an event belongs to (every pathway event carries it).
fn referral_of(envelope: &Envelope) -> Option<Uuid> {
    envelope
        .payload
        .get("referral_id")
        .and_then(|v| v.as_str())
        .and_then(|v| Uuid::parse_str(v).ok())
}

#[async_trait::async_trait]
impl Consume for Worker {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    async fn handle(&mut self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error> {
        if SubscriptionEvent::TYPES.contains(&envelope.event_type.as_str()) {
            self.state.apply(envelope).await?;
            if envelope.event_type == "SubscriptionCreated" {
                return self.handshake(envelope).await;
            }
            return Ok(());
        }
        if !NOTIFYING.contains(&envelope.event_type.as_str()) || self.registered.is_empty() {
            return Ok(());
        }
        let Some(referral_id) = referral_of(envelope) else {
            return Ok(());
        };
        let message_id = Uuid::new_v5(&NOTIFY_NAMESPACE, envelope.event_id.as_bytes());
        let stream = format!("notify-{message_id}");
        let referrer_settled = self.outbox.settled(&stream).await?;
        if referrer_settled && self.told(envelope.position).next().is_none() {
            // Nothing left to send because of this event: no need to fold.
            return Ok(());
        }
        let Some(view) =
            crate::as_at::referral(self.log.as_ref(), referral_id, envelope.position).await?
        else {
            return Ok(());
        };
        let endpoint = view
            .details
            .sender
            .endpoint
            .clone()
            .filter(|e| !referrer_settled && self.registered(e));
        if let Some(endpoint) = endpoint {
            let mut view = view.clone();
            crate::sent::fill(self.log.as_ref(), &mut view).await?;
            let request_message = view.details.sender.message_id.clone().unwrap_or_default();
            let mut bundle = render::response_message(&self.base_url, &request_message, &view);
            bundle["id"] = serde_json::json!(message_id.to_string());
            let msg = Message {
                stream,
                message_id,
                referral_id,
                url: endpoint,
                body: bundle.to_string(),
                label: "referrer".to_owned(),
            };
            self.outbox.send(msg, envelope).await?;
        }
        self.notify_subscribers(envelope, &view).await
    }
}

impl Worker {
    /// Tell every active subscription of the referral's organisation, in
    /// order of subscription. The counter of each (`events-since-subscription-start`)
    /// moves once per causing event, also when the handler is retried.
    async fn notify_subscribers(
        &mut self,
        envelope: &Envelope,
        view: &ReferralView,
    ) -> Result<(), mskflow_eventlog::Error> {
        let matching: Vec<SubscriptionView> = self
            .told(envelope.position)
            .filter(|s| s.matches(view))
            .cloned()
            .collect();
        let mut numbered = Vec::with_capacity(matching.len());
        for s in matching {
            let number = self
                .state
                .number(s.id, envelope.position, envelope.event_id)
                .await?;
            numbered.push((s, number));
        }
        for (s, number) in numbered {
            let message_id = message_id(s.id, envelope.event_id);
            let stream = format!("notify-{message_id}");
            if self.outbox.settled(&stream).await? {
                continue;
            }
            let Some(number) = number else {
                // Numbered before a later event was; that one is only
                // numbered once this one is settled, so this cannot be.
                tracing::error!(subscription_id = %s.id, position = envelope.position, "an unsettled notification before the last numbered one; not sent");
                continue;
            };
            let bundle = subscription::notification(
                &self.base_url,
                &s,
                number,
                view,
                envelope.occurred_at,
                message_id,
            );
            let msg = Message {
                stream,
                message_id,
                referral_id: view.referral_id,
                url: s.endpoint.clone(),
                body: bundle.to_string(),
                label: "subscription".to_owned(),
            };
            self.outbox.send(msg, envelope).await?;
        }
        Ok(())
    }

    /// The subscriptions told of changes at log position `position`: not
    /// deleted by then, handshake answered, endpoint registered (in order of
    /// subscription id).
    fn told(&self, position: u64) -> impl Iterator<Item = &SubscriptionView> {
        self.state
            .subscriptions()
            .filter(move |t| t.active_at(position) && t.handshake == Some(Handshake::Active))
            .map(|t| &t.view)
            .filter(|s| self.registered(&s.endpoint))
    }
}

/// The message id of what a subscription is sent because of one event.
fn message_id(subscription_id: Uuid, event_id: Uuid) -> Uuid {
    let mut name = subscription_id.as_bytes().to_vec();
    name.extend_from_slice(event_id.as_bytes());
    Uuid::new_v5(&SUBSCRIPTION_NAMESPACE, &name)
}

impl Worker {
    /// Send a new subscription its handshake (unless already settled, or the
    /// subscription already deleted), then record the outcome on its stream
    /// (unless already recorded).
    async fn handshake(&mut self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error> {
        let Ok(SubscriptionEvent::SubscriptionCreated(created)) =
            decode::<SubscriptionEvent>(envelope)
        else {
            tracing::error!(
                position = envelope.position,
                "subscription creation does not decode; no handshake"
            );
            return Ok(());
        };
        let id = created.subscription_id;
        let Some(s) = self.state.get(&id).map(|t| t.view.clone()) else {
            return Ok(());
        };
        let deleted = self
            .log
            .read_stream(&stream_id(id), 1)
            .await?
            .iter()
            .any(|e| e.event_type == "SubscriptionDeleted");
        if deleted {
            // Deleted before its handshake was sent: nothing to tell it.
            return Ok(());
        }
        let message_id = message_id(id, envelope.event_id);
        let stream = format!("notify-{message_id}");
        let outcome = if self.registered(&s.endpoint) {
            if !self.outbox.settled(&stream).await? {
                let bundle =
                    subscription::handshake(&self.base_url, &s, envelope.occurred_at, message_id);
                let msg = Message {
                    stream: stream.clone(),
                    message_id,
                    referral_id: Uuid::nil(),
                    url: s.endpoint.clone(),
                    body: bundle.to_string(),
                    label: "subscription".to_owned(),
                };
                self.outbox.send(msg, envelope).await?;
            }
            self.outcome(&stream, id, message_id).await?
        } else {
            SubscriptionStatusEvent::SubscriptionErrored(SubscriptionErrored {
                subscription_id: id,
                handshake_id: message_id,
                http_status: None,
                reason: "the endpoint is not a registered referrer endpoint".to_owned(),
            })
        };
        let handshake = match &outcome {
            SubscriptionStatusEvent::SubscriptionActivated(_) => Handshake::Active,
            SubscriptionStatusEvent::SubscriptionErrored(_) => Handshake::Error,
        };
        self.state.settle_handshake(id, handshake).await?;
        self.record(envelope, &outcome).await?;
        tracing::info!(subscription_id = %id, outcome = outcome.event_type(), "subscription handshake settled");
        Ok(())
    }

    /// The handshake's outcome from its attempts on `stream`.
    async fn outcome(
        &self,
        stream: &str,
        subscription_id: Uuid,
        handshake_id: Uuid,
    ) -> Result<SubscriptionStatusEvent, mskflow_eventlog::Error> {
        let mut last_failure = None;
        for envelope in self.log.read_stream(stream, 1).await? {
            match decode::<DeliveryEvent>(&envelope) {
                Ok(DeliveryEvent::OutboundDelivered(d)) => {
                    return Ok(SubscriptionStatusEvent::SubscriptionActivated(
                        SubscriptionActivated {
                            subscription_id,
                            handshake_id,
                            http_status: d.http_status,
                        },
                    ));
                }
                Ok(DeliveryEvent::OutboundDeliveryFailed(f)) => last_failure = Some(f),
                Err(_) => {}
            }
        }
        let (http_status, reason) = match last_failure {
            Some(f) => (
                f.http_status,
                format!(
                    "handshake failed after {} attempt(s): {}",
                    f.attempt, f.reason
                ),
            ),
            None => (None, "handshake not sent".to_owned()),
        };
        Ok(SubscriptionStatusEvent::SubscriptionErrored(
            SubscriptionErrored {
                subscription_id,
                handshake_id,
                http_status,
                reason,
            },
        ))
    }

    /// Record the outcome on the subscription's stream, once.
    async fn record(
        &self,
        cause: &Envelope,
        outcome: &SubscriptionStatusEvent,
    ) -> Result<(), mskflow_eventlog::Error> {
        let stream = stream_id(outcome.subscription_id());
        let recorded = self
            .log
            .read_stream(&stream, 1)
            .await?
            .iter()
            .any(|e| SubscriptionStatusEvent::TYPES.contains(&e.event_type.as_str()));
        if recorded {
            return Ok(());
        }
        let new = new_event(outcome, mskflow_events::SCHEMA_VERSION, chrono::Utc::now()).map_err(
            |e| mskflow_eventlog::Error::InvalidAppend {
                stream_id: stream.clone(),
                reason: e.to_string(),
            },
        )?;
        let (traceparent, tracestate) = mskflow_telemetry::current_trace_context();
        let metadata = Metadata {
            causation_id: Some(cause.event_id),
            correlation_id: cause.correlation_id,
            traceparent: traceparent.or_else(|| cause.traceparent.clone()),
            tracestate: tracestate.or_else(|| cause.tracestate.clone()),
        };
        self.log
            .append(&stream, ExpectedVersion::Any, vec![new], &metadata)
            .await
            .map(|_| ())
    }
}
