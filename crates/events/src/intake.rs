//! Events of the referral intake stream (`intake`; one stream per referral).

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{
    FcpPriority, NhsNumber, OdsCode, Pathway, ReceivedVia, RedFlag, RedirectDestination,
    RequestPriority, Sex, StartBackRisk, Urgency,
};

/// A FHIR Coding, as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Coding {
    pub system: Option<String>,
    pub code: String,
    pub display: Option<String>,
}

/// A business identifier, as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Identifier {
    pub system: Option<String>,
    pub value: String,
}

/// Who sent the referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sender {
    /// ODS code of the sending organisation (MessageHeader.sender, or the
    /// requester's organisation).
    pub ods_code: Option<OdsCode>,
    /// Where replies go (MessageHeader.source.endpoint).
    pub endpoint: Option<String>,
    /// MessageHeader.id of the message that carried it, if any.
    pub message_id: Option<String>,
    /// Sending software (MessageHeader.source.software / NHSD-Requesting-Software).
    pub software: Option<String>,
}

/// The patient as the referrer described them. Patient-identifiable: stays
/// inside the operational services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PatientDetails {
    /// Absent only when the patient referred themselves without giving it
    /// (self-referral); a referral from a clinical system always has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhs_number: Option<NhsNumber>,
    pub family: Option<String>,
    pub given: Vec<String>,
    pub birth_date: Option<NaiveDate>,
    pub sex: Option<Sex>,
    pub postcode: Option<String>,
    pub ethnicity: Option<Coding>,
}

/// The referring clinician and organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Requester {
    pub display: Option<String>,
    pub ods_code: Option<OdsCode>,
}

/// STarT Back answers: item 1..9, `true` = agree / scores 1. Item 9
/// (bothersomeness) scores 1 for "very much" or "extremely".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StartBackAnswers(pub [bool; 9]);

/// A computed STarT Back score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StartBackScore {
    /// 0..=9
    pub total: u8,
    /// Items 5..=9, 0..=5
    pub psychosocial: u8,
    pub risk: StartBackRisk,
}

impl StartBackAnswers {
    /// Total 0-9; psychosocial subscore items 5-9; low when total <= 3, high
    /// when psychosocial >= 4, otherwise medium (Keele STarT Back tool).
    pub fn score(&self) -> StartBackScore {
        let total = self.0.iter().filter(|a| **a).count() as u8;
        let psychosocial = self.0[4..].iter().filter(|a| **a).count() as u8;
        let risk = if total <= 3 {
            StartBackRisk::Low
        } else if psychosocial >= 4 {
            StartBackRisk::High
        } else {
            StartBackRisk::Medium
        };
        StartBackScore {
            total,
            psychosocial,
            risk,
        }
    }
}

/// A referral as the referrer sent it (parsed from FHIR by the gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralDetails {
    pub received_via: ReceivedVia,
    pub sender: Sender,
    /// `ServiceRequest.identifier` (the sender's own id for the referral).
    pub service_request_identifier: Option<Identifier>,
    pub patient: PatientDetails,
    pub requester: Option<Requester>,
    /// Condition / reason codes (SNOMED CT).
    pub reason: Vec<Coding>,
    pub body_site: Vec<Coding>,
    pub requested_priority: RequestPriority,
    pub red_flags: Vec<RedFlag>,
    pub start_back: Option<StartBackAnswers>,
    /// Free text from the referrer (ServiceRequest.note).
    pub note: Option<String>,
    pub authored_on: Option<String>,
    /// The FHIR JSON as received (the models drop unknown elements, the
    /// record must not).
    pub fhir_json: String,
}

/// Namespace of referral ids (UUIDv5). Never change it: referral ids of
/// recorded referrals are derived from it.
pub const REFERRAL_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8a1f_3c52_6d0e_4b7a_9e21_5f6c_0d3b_7e94);

/// The referral id a submission maps to.
///
/// With a `ServiceRequest.identifier`, the id is derived from the sender's ODS
/// code (or `unknown`), the identifier system and value, so the same referral
/// sent twice maps to the same id. Without one, it is derived from the request
/// id, so a retried request maps to the same id.
pub fn referral_id(request_id: Uuid, details: &ReferralDetails) -> Uuid {
    match &details.service_request_identifier {
        Some(identifier) => referral_id_of(details.sender.ods_code.as_ref(), identifier),
        None => Uuid::new_v5(
            &REFERRAL_ID_NAMESPACE,
            format!("request\u{1f}{request_id}").as_bytes(),
        ),
    }
}

/// The referral id of a referral sent by `sender` with this
/// `ServiceRequest.identifier` (see [`referral_id`]).
pub fn referral_id_of(sender: Option<&OdsCode>, identifier: &Identifier) -> Uuid {
    let name = format!(
        "service-request\u{1f}{}\u{1f}{}\u{1f}{}",
        sender.map_or("unknown", |c| c.as_str()),
        identifier.system.as_deref().unwrap_or(""),
        identifier.value
    );
    Uuid::new_v5(&REFERRAL_ID_NAMESPACE, name.as_bytes())
}

/// A referral was received and recorded, exactly as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralReceived {
    pub referral_id: Uuid,
    /// `X-Request-Id` of the request that delivered it.
    pub request_id: Uuid,
    #[serde(flatten)]
    pub referral: ReferralDetails,
}

/// Triage sent the referral to a First Contact Practitioner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralTriaged {
    pub referral_id: Uuid,
    pub rule_set_version: String,
    /// The rule that chose the pathway, or `default`.
    pub rule_id: String,
    pub priority: FcpPriority,
    pub pathway: Pathway,
    pub start_back: Option<StartBackScore>,
    /// Human-readable reasons, one per rule that fired.
    pub reasons: Vec<String>,
}

/// A red flag redirected the referral away from the community pathway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralRedirected {
    pub referral_id: Uuid,
    pub rule_set_version: String,
    pub rule_id: String,
    pub destination: RedirectDestination,
    pub urgency: Urgency,
    pub red_flags: Vec<RedFlag>,
    pub reason: String,
}

/// The referral cannot be accepted by this service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralRejected {
    pub referral_id: Uuid,
    pub rule_set_version: String,
    pub rule_id: String,
    /// Machine code, e.g. `under-16`.
    pub reason_code: String,
    pub reason: String,
}

/// The referrer withdrew the referral (a Booking and Referral Standard
/// `update` with ServiceRequest.status `revoked` or `entered-in-error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralCancelled {
    pub referral_id: Uuid,
    /// `X-Request-Id` of the cancelling request.
    pub request_id: Uuid,
    /// `revoked` (withdrawn) or `entered-in-error` (sent by mistake).
    pub status: CancellationStatus,
    /// The sending organisation that cancelled.
    pub cancelled_by: Option<OdsCode>,
    /// MessageHeader id of the cancelling message, if any.
    pub message_id: Option<String>,
}

/// How a referral was withdrawn (FHIR ServiceRequest.status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CancellationStatus {
    #[serde(rename = "revoked")]
    Revoked,
    #[serde(rename = "entered-in-error")]
    EnteredInError,
}

impl CancellationStatus {
    pub fn code(self) -> &'static str {
        match self {
            CancellationStatus::Revoked => "revoked",
            CancellationStatus::EnteredInError => "entered-in-error",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "revoked" => Some(CancellationStatus::Revoked),
            "entered-in-error" => Some(CancellationStatus::EnteredInError),
            _ => None,
        }
    }
}

/// Events of the intake stream.
#[allow(
    clippy::large_enum_variant,
    reason = "events are handled one at a time; boxing the referral would only add indirection"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum IntakeEvent {
    ReferralReceived(ReferralReceived),
    ReferralTriaged(ReferralTriaged),
    ReferralRedirected(ReferralRedirected),
    ReferralRejected(ReferralRejected),
    ReferralCancelled(ReferralCancelled),
}

impl IntakeEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            IntakeEvent::ReferralReceived(_) => "ReferralReceived",
            IntakeEvent::ReferralTriaged(_) => "ReferralTriaged",
            IntakeEvent::ReferralRedirected(_) => "ReferralRedirected",
            IntakeEvent::ReferralRejected(_) => "ReferralRejected",
            IntakeEvent::ReferralCancelled(_) => "ReferralCancelled",
        }
    }

    /// Every intake event type name.
    pub const TYPES: &'static [&'static str] = &[
        "ReferralReceived",
        "ReferralTriaged",
        "ReferralRedirected",
        "ReferralRejected",
        "ReferralCancelled",
    ];
}

/// When the event happened (for events that carry no time of their own, the
/// caller supplies it).
pub type OccurredAt = DateTime<Utc>;

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("ReferralReceived", schemars::schema_for!(ReferralReceived)),
        ("ReferralTriaged", schemars::schema_for!(ReferralTriaged)),
        (
            "ReferralRedirected",
            schemars::schema_for!(ReferralRedirected),
        ),
        ("ReferralRejected", schemars::schema_for!(ReferralRejected)),
        (
            "ReferralCancelled",
            schemars::schema_for!(ReferralCancelled),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(bits: [u8; 9]) -> StartBackAnswers {
        StartBackAnswers(bits.map(|b| b == 1))
    }

    #[test]
    fn start_back_low_when_total_at_most_three() {
        let s = answers([0, 0, 0, 0, 1, 1, 1, 0, 0]).score();
        assert_eq!(
            (s.total, s.psychosocial, s.risk),
            (3, 3, StartBackRisk::Low)
        );
    }

    #[test]
    fn start_back_high_when_psychosocial_at_least_four() {
        let s = answers([0, 0, 0, 0, 1, 1, 1, 1, 0]).score();
        assert_eq!(
            (s.total, s.psychosocial, s.risk),
            (4, 4, StartBackRisk::High)
        );
    }

    #[test]
    fn start_back_medium_otherwise() {
        let s = answers([1, 1, 1, 1, 1, 1, 1, 0, 0]).score();
        assert_eq!(
            (s.total, s.psychosocial, s.risk),
            (7, 3, StartBackRisk::Medium)
        );
        let all = answers([1; 9]).score();
        assert_eq!(
            (all.total, all.psychosocial, all.risk),
            (9, 5, StartBackRisk::High)
        );
    }
}
