//! Events of FHIR Subscriptions (stream `subscription-{id}`): a receiving
//! system's standing request to be told when a referral's Task changes
//! status. The subscription is the record of these events; the gateway
//! rebuilds its subscriptions by replaying them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A subscription was created and is active.
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
}
