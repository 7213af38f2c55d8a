//! Events of the audit streams: who read or changed patient data, when, what
//! and with what outcome.
//!
//! `audit-YYYY-MM-DD`: one stream per UTC day ([`AuditEvent`]), appended by
//! the FHIR gateway for every read, search and write of patient data (and
//! every refused attempt). The record holds no patient data itself: query
//! strings are stored with NHS numbers masked, and no resource contents.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of the audit streams.
pub const AUDIT_STREAM_PREFIX: &str = "audit-";

/// The audit stream of a day: `audit-YYYY-MM-DD`.
pub fn audit_stream(day: NaiveDate) -> String {
    format!("{AUDIT_STREAM_PREFIX}{}", day.format("%Y-%m-%d"))
}

/// FHIR AuditEvent.action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuditAction {
    /// Create.
    C,
    /// Read, view, search.
    R,
    /// Update.
    U,
    /// Delete.
    D,
    /// Execute (an operation such as `$process-message`).
    E,
}

impl AuditAction {
    pub fn code(self) -> &'static str {
        match self {
            AuditAction::C => "C",
            AuditAction::R => "R",
            AuditAction::U => "U",
            AuditAction::D => "D",
            AuditAction::E => "E",
        }
    }
}

/// A business identifier as carried in an NHSD header (`{system, value}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditIdentifier {
    pub system: Option<String>,
    pub value: String,
}

/// Who made the request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct AuditAgent {
    /// The client (token `client_id`, else `sub`); none when no valid token
    /// was presented.
    pub client_id: Option<String>,
    /// ODS code of the requesting organisation (token claim `ods`).
    pub ods_code: Option<String>,
    /// Whether the token carried the provider role (may read every referral).
    pub provider: bool,
    /// `NHSD-Requesting-Software`, as sent.
    pub requesting_software: Option<String>,
    /// `NHSD-End-User-Organisation`: the organisation's ODS identifier.
    pub end_user_organisation: Option<AuditIdentifier>,
    /// `NHSD-Target-Identifier`: the service the request was addressed to.
    pub target_identifier: Option<AuditIdentifier>,
}

/// One access to patient data through the FHIR API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecorded {
    /// Unique id of the record (the FHIR AuditEvent id).
    pub audit_id: Uuid,
    /// When the request was answered.
    pub recorded: DateTime<Utc>,
    pub agent: AuditAgent,
    /// FHIR restful interaction: `read`, `vread`, `history-instance`,
    /// `search-type`, `create`, `update`, `delete` or `operation`.
    pub interaction: String,
    pub action: AuditAction,
    /// HTTP method and path (ids only, never patient data).
    pub method: String,
    pub path: String,
    /// The FHIR resource type addressed (`Task`, `ServiceRequest`, ...), or
    /// the operation (`$process-message`).
    pub resource_type: String,
    /// Ids of the resources read or written, where known.
    pub resource_ids: Vec<String>,
    /// The query string with NHS numbers masked.
    pub query: Option<String>,
    /// The HTTP status of the answer.
    pub http_status: u16,
    /// `X-Request-Id` / `X-Correlation-Id` as sent (not necessarily UUIDs).
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
}

/// Events of an `audit-YYYY-MM-DD` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum AuditEvent {
    AuditRecorded(AuditRecorded),
}

impl AuditEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            AuditEvent::AuditRecorded(_) => "AuditRecorded",
        }
    }

    pub const TYPES: &'static [&'static str] = &["AuditRecorded"];
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![("AuditRecorded", schemars::schema_for!(AuditRecorded))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_type_has_a_schema() -> Result<(), serde_json::Error> {
        let e = AuditEvent::AuditRecorded(AuditRecorded {
            audit_id: Uuid::new_v4(),
            recorded: Utc::now(),
            agent: AuditAgent {
                client_id: Some("gp-system".to_owned()),
                ods_code: Some("A81001".to_owned()),
                ..Default::default()
            },
            interaction: "read".to_owned(),
            action: AuditAction::R,
            method: "GET".to_owned(),
            path: "/fhir/Task/1".to_owned(),
            resource_type: "Task".to_owned(),
            resource_ids: vec!["1".to_owned()],
            query: None,
            http_status: 200,
            request_id: None,
            correlation_id: None,
        });
        let value = serde_json::to_value(&e)?;
        assert_eq!(value["type"], e.event_type());
        assert_eq!(value["data"]["action"], "R");
        assert_eq!(serde_json::from_value::<AuditEvent>(value)?, e);
        for t in AuditEvent::TYPES {
            assert!(schemas().iter().any(|(n, _)| n == t), "{t} has no schema");
        }
        let day = NaiveDate::from_ymd_opt(2026, 11, 23)
            .ok_or_else(|| <serde_json::Error as serde::de::Error>::custom("invalid test date"))?;
        assert_eq!(audit_stream(day), "audit-2026-11-23");
        Ok(())
    }
}
