//! Conversions between the gRPC messages and the domain's event types.
//!
//! `Referral` → [`ReferralDetails`] is fallible: the gRPC edge is an edge like
//! any other and re-checks everything it is given.

use chrono::NaiveDate;
use mskflow_events::intake::{
    Coding, Identifier, PatientDetails, ReferralDetails, Requester, Sender, StartBackAnswers,
};
use mskflow_events::types::{NhsNumber, OdsCode, ReceivedVia, RedFlag, RequestPriority, Sex};

use crate::intake::v1 as pb;

/// One field that failed to convert: the FHIR element path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// A referral message that does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid referral: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<FieldViolation>);

impl Invalid {
    /// A gRPC `INVALID_ARGUMENT` status with a `BadRequest` detail.
    pub fn into_status(self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::new();
        for v in &self.0 {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, self.to_string(), details)
    }
}

/// Field violations carried by a status, if it has a `BadRequest` detail.
pub fn violations(status: &tonic::Status) -> Vec<FieldViolation> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn coding_to_pb(c: Coding) -> pb::Coding {
    pb::Coding {
        system: c.system,
        code: c.code,
        display: c.display,
    }
}

fn coding_from_pb(c: pb::Coding) -> Coding {
    Coding {
        system: c.system,
        code: c.code,
        display: c.display,
    }
}

impl From<ReferralDetails> for pb::Referral {
    fn from(d: ReferralDetails) -> Self {
        pb::Referral {
            received_via: d.received_via.code().to_owned(),
            sender: Some(pb::Sender {
                ods_code: d.sender.ods_code.map(String::from),
                endpoint: d.sender.endpoint,
                message_id: d.sender.message_id,
                software: d.sender.software,
            }),
            service_request_identifier: d.service_request_identifier.map(|i| pb::Identifier {
                system: i.system,
                value: i.value,
            }),
            patient: Some(pb::Patient {
                nhs_number: d.patient.nhs_number.map(String::from).unwrap_or_default(),
                family: d.patient.family,
                given: d.patient.given,
                birth_date: d
                    .patient
                    .birth_date
                    .map(|b| b.format("%Y-%m-%d").to_string()),
                sex: d.patient.sex.map(|s| s.code().to_owned()),
                postcode: d.patient.postcode,
                ethnicity: d.patient.ethnicity.map(coding_to_pb),
            }),
            requester: d.requester.map(|r| pb::Requester {
                display: r.display,
                ods_code: r.ods_code.map(String::from),
            }),
            reason: d.reason.into_iter().map(coding_to_pb).collect(),
            body_site: d.body_site.into_iter().map(coding_to_pb).collect(),
            requested_priority: d.requested_priority.code().to_owned(),
            red_flags: d.red_flags.iter().map(|f| f.code().to_owned()).collect(),
            start_back: d.start_back.map(|a| a.0.to_vec()).unwrap_or_default(),
            note: d.note,
            authored_on: d.authored_on,
            fhir_json: d.fhir_json,
        }
    }
}

impl TryFrom<pb::Referral> for ReferralDetails {
    type Error = Invalid;

    fn try_from(r: pb::Referral) -> Result<Self, Self::Error> {
        let mut errs = Vec::new();
        let mut bad = |field: &str, description: String| {
            errs.push(FieldViolation {
                field: field.to_owned(),
                description,
            });
        };
        let received_via = ReceivedVia::parse(&r.received_via)
            .map_err(|e| bad("received_via", e.to_string()))
            .ok();
        let requested_priority = RequestPriority::parse(&r.requested_priority)
            .map_err(|e| bad("ServiceRequest.priority", e.to_string()))
            .ok();
        let sender = r.sender.unwrap_or_default();
        let sender_ods = match sender.ods_code.as_deref().map(OdsCode::parse) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                bad("MessageHeader.sender", e.to_string());
                None
            }
            None => None,
        };
        let patient = r.patient.unwrap_or_default();
        // Empty: the patient gave none, which only a self-referral may do.
        let nhs_number = match patient.nhs_number.as_str() {
            "" if received_via.is_some_and(ReceivedVia::from_the_patient) => Some(None),
            "" => {
                bad(
                    "Patient.identifier",
                    "an NHS number is required (only a self-referral may leave it out)".to_owned(),
                );
                None
            }
            n => NhsNumber::parse(n)
                .map_err(|e| bad("Patient.identifier", e.to_string()))
                .ok()
                .map(Some),
        };
        let birth_date = match patient.birth_date.as_deref() {
            Some(b) => NaiveDate::parse_from_str(b, "%Y-%m-%d")
                .map_err(|e| bad("Patient.birthDate", format!("not a full date: {e}")))
                .ok(),
            None => None,
        };
        let sex = match patient.sex.as_deref().map(Sex::parse) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                bad("Patient.gender", e.to_string());
                None
            }
            None => None,
        };
        let requester = match r.requester {
            Some(req) => {
                let ods = match req.ods_code.as_deref().map(OdsCode::parse) {
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => {
                        bad("ServiceRequest.requester", e.to_string());
                        None
                    }
                    None => None,
                };
                Some(Requester {
                    display: req.display,
                    ods_code: ods,
                })
            }
            None => None,
        };
        let mut red_flags = Vec::with_capacity(r.red_flags.len());
        for code in &r.red_flags {
            match RedFlag::parse(code) {
                Ok(f) => red_flags.push(f),
                Err(e) => bad("ServiceRequest.supportingInfo", e.to_string()),
            }
        }
        let start_back = match r.start_back.len() {
            0 => None,
            9 => {
                let mut a = [false; 9];
                a.copy_from_slice(&r.start_back);
                Some(StartBackAnswers(a))
            }
            n => {
                bad(
                    "QuestionnaireResponse.item",
                    format!("STarT Back needs 9 answers, got {n}"),
                );
                None
            }
        };
        match (received_via, requested_priority, nhs_number) {
            (Some(received_via), Some(requested_priority), Some(nhs_number)) if errs.is_empty() => {
                Ok(ReferralDetails {
                    received_via,
                    sender: Sender {
                        ods_code: sender_ods,
                        endpoint: sender.endpoint,
                        message_id: sender.message_id,
                        software: sender.software,
                    },
                    service_request_identifier: r.service_request_identifier.map(|i| Identifier {
                        system: i.system,
                        value: i.value,
                    }),
                    patient: PatientDetails {
                        nhs_number,
                        family: patient.family,
                        given: patient.given,
                        birth_date,
                        sex,
                        postcode: patient.postcode,
                        ethnicity: patient.ethnicity.map(coding_from_pb),
                    },
                    requester,
                    reason: r.reason.into_iter().map(coding_from_pb).collect(),
                    body_site: r.body_site.into_iter().map(coding_from_pb).collect(),
                    requested_priority,
                    red_flags,
                    start_back,
                    note: r.note,
                    authored_on: r.authored_on,
                    fhir_json: r.fhir_json,
                })
            }
            _ => Err(Invalid(errs)),
        }
    }
}
