//! Events of outbound delivery (stream `delivery-{message id}`): messages the
//! gateway sends to other systems, such as onward referrals to secondary
//! care, with every attempt recorded.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The message was accepted by the receiving system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutboundDelivered {
    /// The message (for onward referrals: the onward referral id).
    pub message_id: Uuid,
    pub referral_id: Uuid,
    /// Where it was sent.
    pub endpoint: String,
    /// The receiver's HTTP status.
    pub http_status: u16,
    /// Attempts it took, this one included.
    pub attempts: u32,
}

/// An attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutboundDeliveryFailed {
    pub message_id: Uuid,
    pub referral_id: Uuid,
    pub endpoint: Option<String>,
    /// The receiver's HTTP status, if it answered.
    pub http_status: Option<u16>,
    /// Why (never message contents).
    pub reason: String,
    pub attempt: u32,
    /// `false` once delivery has been given up (dead letter).
    pub will_retry: bool,
}

/// Events of a `delivery-{message id}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum DeliveryEvent {
    OutboundDelivered(OutboundDelivered),
    OutboundDeliveryFailed(OutboundDeliveryFailed),
}

impl DeliveryEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            DeliveryEvent::OutboundDelivered(_) => "OutboundDelivered",
            DeliveryEvent::OutboundDeliveryFailed(_) => "OutboundDeliveryFailed",
        }
    }

    pub const TYPES: &'static [&'static str] = &["OutboundDelivered", "OutboundDeliveryFailed"];
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "OutboundDelivered",
            schemars::schema_for!(OutboundDelivered),
        ),
        (
            "OutboundDeliveryFailed",
            schemars::schema_for!(OutboundDeliveryFailed),
        ),
    ]
}
