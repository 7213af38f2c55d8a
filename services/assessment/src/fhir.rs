//! The outbound FHIR R4 `ServiceRequest` of an onward referral. Pure.

use chrono::{DateTime, SecondsFormat, Utc};
use mskflow_events::NhsNumber;
use mskflow_events::assessment::OnwardDestination;
use serde_json::{Value, json};
use uuid::Uuid;

/// Identifier system of mskflow referral ids.
pub const REFERRAL_ID_SYSTEM: &str = "https://fhir.mskflow.org/Id/referral";
/// Identifier system of onward referral ids.
pub const ONWARD_REFERRAL_ID_SYSTEM: &str = "https://fhir.mskflow.org/Id/onward-referral";
/// Code system of onward referral destinations.
pub const DESTINATION_SYSTEM: &str = "https://fhir.mskflow.org/CodeSystem/onward-destination";
/// Identifier system of FCP clinicians' local staff ids.
pub const CLINICIAN_ID_SYSTEM: &str = "https://fhir.mskflow.org/Id/clinician";

/// What an onward referral says.
#[derive(Debug, Clone, Copy)]
pub struct OnwardRequest<'a> {
    pub onward_referral_id: Uuid,
    pub referral_id: Uuid,
    pub destination: OnwardDestination,
    pub reason: &'a str,
    pub nhs_number: &'a NhsNumber,
    pub findings_summary: &'a str,
    pub clinician_id: &'a str,
    pub authored_on: DateTime<Utc>,
}

/// Build the `ServiceRequest`: status active, intent order, the patient by
/// NHS number, the reason and the assessment summary.
pub fn onward_service_request(req: &OnwardRequest<'_>) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "id": req.onward_referral_id.to_string(),
        "identifier": [{
            "system": ONWARD_REFERRAL_ID_SYSTEM,
            "value": req.onward_referral_id.to_string(),
        }],
        "basedOn": [{
            "identifier": {
                "system": REFERRAL_ID_SYSTEM,
                "value": req.referral_id.to_string(),
            }
        }],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "code": {
            "coding": [{
                "system": DESTINATION_SYSTEM,
                "code": req.destination.code(),
                "display": req.destination.display(),
            }],
            "text": format!("Referral to {}", req.destination.display()),
        },
        "subject": {
            "identifier": {
                "system": mskflow_events::NHS_NUMBER_SYSTEM,
                "value": req.nhs_number.as_str(),
            }
        },
        "authoredOn": req.authored_on.to_rfc3339_opts(SecondsFormat::Secs, true),
        "requester": {
            "identifier": {
                "system": CLINICIAN_ID_SYSTEM,
                "value": req.clinician_id,
            },
            "display": "First Contact Practitioner",
        },
        "reasonCode": [{ "text": req.reason }],
        "note": [{
            "text": format!("FCP assessment summary: {}", req.findings_summary),
        }],
    })
}
