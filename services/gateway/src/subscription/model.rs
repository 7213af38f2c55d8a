//! A FHIR Subscription as its events leave it (pure; the views keep one per
//! subscription), and the backport IG's canonical URLs.

use chrono::{DateTime, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::subscription::{SubscriptionEvent, SubscriptionStatusEvent};
use serde::Serialize;
use uuid::Uuid;

use crate::views::model::ReferralView;

/// The one topic offered: the referral's Task changed status.
pub const TOPIC: &str = "https://fhir.mskflow.org/SubscriptionTopic/referral-status";

/// Backport extension on `Subscription.channel.payload`.
pub const PAYLOAD_CONTENT_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";

/// Backport extension on `Subscription.criteria` (one filter).
pub const FILTER_CRITERIA_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";

/// Profile of the R4 Subscription the gateway stores.
pub const SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";

/// Profile of the notification `Bundle`.
pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";

/// Profile of the notification's status `Parameters`.
pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// How much of the changed resource a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadContent {
    Empty,
    IdOnly,
    FullResource,
}

impl PayloadContent {
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "empty" => Some(Self::Empty),
            "id-only" => Some(Self::IdOnly),
            "full-resource" => Some(Self::FullResource),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::IdOnly => "id-only",
            Self::FullResource => "full-resource",
        }
    }
}

/// Where a subscription's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Handshake {
    /// Created; the handshake is not answered yet.
    Requested,
    /// The endpoint answered the handshake: notifications are sent.
    Active,
    /// The handshake failed: nothing is sent.
    Error,
}

/// One subscription as its events left it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubscriptionView {
    pub id: Uuid,
    /// Its stream's version (`meta.versionId`).
    pub version: u64,
    /// `false` once deleted.
    pub active: bool,
    /// The handshake's outcome (only from the subscription's own stream: the
    /// shared views leave it `requested`).
    pub handshake: Handshake,
    /// Why the handshake failed (`Subscription.error`).
    pub error: Option<String>,
    pub owner_ods: String,
    pub topic: String,
    pub endpoint: String,
    pub payload_content: PayloadContent,
    pub filter: Option<String>,
    pub reason: Option<String>,
    pub last_updated: DateTime<Utc>,
}

impl SubscriptionView {
    /// Apply one event of its stream; `None` for a stream that does not
    /// start with its creation.
    pub fn evolve(
        current: Option<Self>,
        envelope: &Envelope,
        event: &SubscriptionEvent,
    ) -> Option<Self> {
        match (current, event) {
            (None, SubscriptionEvent::SubscriptionCreated(e)) => Some(Self {
                id: e.subscription_id,
                version: envelope.sequence,
                active: true,
                handshake: Handshake::Requested,
                error: None,
                owner_ods: e.owner_ods.clone(),
                topic: e.topic.clone(),
                endpoint: e.endpoint.clone(),
                payload_content: PayloadContent::parse(&e.payload_content)
                    .unwrap_or(PayloadContent::IdOnly),
                filter: e.filter.clone(),
                reason: e.reason.clone(),
                last_updated: envelope.recorded_at,
            }),
            (Some(mut s), SubscriptionEvent::SubscriptionDeleted(_)) => {
                s.active = false;
                s.version = envelope.sequence;
                s.last_updated = envelope.recorded_at;
                Some(s)
            }
            (current, _) => current,
        }
    }

    /// Apply the outcome of its handshake. An outcome recorded after the
    /// subscription was deleted only moves its version.
    pub fn evolve_status(
        current: Option<Self>,
        envelope: &Envelope,
        event: &SubscriptionStatusEvent,
    ) -> Option<Self> {
        let mut s = current?;
        s.version = envelope.sequence;
        s.last_updated = envelope.recorded_at;
        match event {
            SubscriptionStatusEvent::SubscriptionActivated(_) => {
                s.handshake = Handshake::Active;
                s.error = None;
            }
            SubscriptionStatusEvent::SubscriptionErrored(e) => {
                s.handshake = Handshake::Error;
                s.error = Some(e.reason.clone());
            }
        }
        Some(s)
    }

    /// `Subscription.status`: `off` once deleted, else the handshake's.
    pub fn status_code(&self) -> &'static str {
        match (self.active, self.handshake) {
            (false, _) => "off",
            (true, Handshake::Requested) => "requested",
            (true, Handshake::Active) => "active",
            (true, Handshake::Error) => "error",
        }
    }

    /// Whether a change of this referral is told to this subscription: it is
    /// active and the referral is the subscribing organisation's.
    pub fn matches(&self, referral: &ReferralView) -> bool {
        if !self.active {
            return false;
        }
        let sender = referral.details.sender.ods_code.as_ref().or_else(|| {
            referral
                .details
                .requester
                .as_ref()
                .and_then(|r| r.ods_code.as_ref())
        });
        sender.is_some_and(|s| s.as_str().eq_ignore_ascii_case(&self.owner_ods))
    }
}
