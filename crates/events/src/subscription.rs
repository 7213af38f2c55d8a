//! Events of FHIR Subscriptions (stream `subscription-{id}`): a receiving
//! system's standing request to be told when a referral's Task changes
//! status. The subscription is the record of these events; the gateway
//! rebuilds its subscriptions by replaying them.
//!
//! A subscription starts `requested`; the outcome of its handshake (the
//! first notification, sent to the endpoint on creation) is recorded on the
//! same stream as a [`SubscriptionStatusEvent`]: `active` or `error`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A subscription was created; it is `requested` until its handshake is
/// answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionCreated {
    pub subscription_id: Uuid,
    /// ODS code of the subscribing organisation: only its referrals are told.
    pub owner_ods: String,
    /// OAuth client that created it.
    pub client_id: String,
    /// Canonical URL of the subscription topic.
    pub topic: String,
    /// `rest-hook` endpoint notifications are posted to.
    pub endpoint: String,
    /// `empty`, `id-only` or `full-resource`.
    pub payload_content: String,
    /// The one filter given, if any (e.g. `ServiceRequest?requester=A81001`).
    pub filter: Option<String>,
    /// `Subscription.reason` as given (never patient data by contract).
    pub reason: Option<String>,
}

/// A subscription was deleted: no notification is sent after this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionDeleted {
    pub subscription_id: Uuid,
    /// OAuth client that deleted it.
    pub client_id: String,
}

/// Events of a `subscription-{id}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SubscriptionEvent {
    SubscriptionCreated(SubscriptionCreated),
    SubscriptionDeleted(SubscriptionDeleted),
}

impl SubscriptionEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            SubscriptionEvent::SubscriptionCreated(_) => "SubscriptionCreated",
            SubscriptionEvent::SubscriptionDeleted(_) => "SubscriptionDeleted",
        }
    }

    pub const TYPES: &'static [&'static str] = &["SubscriptionCreated", "SubscriptionDeleted"];
}

/// The endpoint answered the handshake (2xx): the subscription is active and
/// is sent event notifications from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionActivated {
    pub subscription_id: Uuid,
    /// Message id of the handshake (its attempts are on `notify-{id}`).
    pub handshake_id: Uuid,
    /// HTTP status the endpoint answered.
    pub http_status: u16,
}

/// The handshake was not answered after the retries (or was refused): the
/// subscription is in error and is sent no event notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionErrored {
    pub subscription_id: Uuid,
    /// Message id of the handshake (its attempts are on `notify-{id}`).
    pub handshake_id: Uuid,
    /// HTTP status of the last attempt, if the endpoint answered at all.
    pub http_status: Option<u16>,
    /// Why (`Subscription.error`): the delivery failure, never patient data.
    pub reason: String,
}

/// The outcome of a subscription's handshake, on its `subscription-{id}`
/// stream after its [`SubscriptionEvent::SubscriptionCreated`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SubscriptionStatusEvent {
    SubscriptionActivated(SubscriptionActivated),
    SubscriptionErrored(SubscriptionErrored),
}

impl SubscriptionStatusEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            SubscriptionStatusEvent::SubscriptionActivated(_) => "SubscriptionActivated",
            SubscriptionStatusEvent::SubscriptionErrored(_) => "SubscriptionErrored",
        }
    }

    pub fn subscription_id(&self) -> Uuid {
        match self {
            SubscriptionStatusEvent::SubscriptionActivated(e) => e.subscription_id,
            SubscriptionStatusEvent::SubscriptionErrored(e) => e.subscription_id,
        }
    }

    pub const TYPES: &'static [&'static str] = &["SubscriptionActivated", "SubscriptionErrored"];
}

/// The stream of one subscription.
pub fn stream_id(subscription_id: Uuid) -> String {
    format!("subscription-{subscription_id}")
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "SubscriptionCreated",
            schemars::schema_for!(SubscriptionCreated),
        ),
        (
            "SubscriptionDeleted",
            schemars::schema_for!(SubscriptionDeleted),
        ),
        (
            "SubscriptionActivated",
            schemars::schema_for!(SubscriptionActivated),
        ),
        (
            "SubscriptionErrored",
            schemars::schema_for!(SubscriptionErrored),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_their_type_tag() -> Result<(), serde_json::Error> {
        let created = SubscriptionEvent::SubscriptionCreated(SubscriptionCreated {
            subscription_id: Uuid::nil(),
            owner_ods: "A81001".to_owned(),
            client_id: "gp-system".to_owned(),
            topic: "https://fhir.mskflow.org/SubscriptionTopic/referral-status".to_owned(),
            endpoint: "https://gp.example/fhir".to_owned(),
            payload_content: "id-only".to_owned(),
            filter: None,
            reason: None,
        });
        let value = serde_json::to_value(&created)?;
        assert_eq!(value["type"], created.event_type());
        assert_eq!(serde_json::from_value::<SubscriptionEvent>(value)?, created);
        assert!(SubscriptionEvent::TYPES.contains(&created.event_type()));
        Ok(())
    }

    #[test]
    fn handshake_outcomes_round_trip_apart_from_the_other_events() -> Result<(), serde_json::Error>
    {
        let id = Uuid::from_u128(7);
        let outcomes = [
            SubscriptionStatusEvent::SubscriptionActivated(SubscriptionActivated {
                subscription_id: id,
                handshake_id: Uuid::from_u128(8),
                http_status: 200,
            }),
            SubscriptionStatusEvent::SubscriptionErrored(SubscriptionErrored {
                subscription_id: id,
                handshake_id: Uuid::from_u128(8),
                http_status: Some(503),
                reason: "receiver answered 503".to_owned(),
            }),
        ];
        for outcome in outcomes {
            let value = serde_json::to_value(&outcome)?;
            assert_eq!(value["type"], outcome.event_type());
            assert_eq!(outcome.subscription_id(), id);
            assert!(SubscriptionStatusEvent::TYPES.contains(&outcome.event_type()));
            assert!(!SubscriptionEvent::TYPES.contains(&outcome.event_type()));
            assert!(serde_json::from_value::<SubscriptionEvent>(value.clone()).is_err());
            assert_eq!(
                serde_json::from_value::<SubscriptionStatusEvent>(value)?,
                outcome
            );
        }
        Ok(())
    }
}
