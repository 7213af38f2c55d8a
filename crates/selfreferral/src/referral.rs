//! The referral a self-referral makes: `ReferralDetails` for intake (source
//! `self-referral` or `telephone`), with a FHIR `ServiceRequest` (the
//! patient contained) as the record of what was sent.

use chrono::{DateTime, SecondsFormat, Utc};
use mskflow_events::intake::{
    Coding, Identifier, PatientDetails, ReferralDetails, Requester, Sender, StartBackAnswers,
    referral_id_of,
};
use mskflow_events::types::{ReceivedVia, RedFlag, RequestPriority};
use mskflow_events::{NHS_NUMBER_SYSTEM, ODS_SYSTEM, RED_FLAG_SYSTEM};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::area::Practice;
use crate::form::{AboutYou, Problem, Submission};
use crate::questions::{self, DURATIONS, WORK};
use crate::reference::Reference;

/// Identifier system of self-referral reference numbers
/// (`ServiceRequest.identifier`).
pub const REFERENCE_SYSTEM: &str = "https://fhir.mskflow.org/Id/self-referral";
const SNOMED: &str = "http://snomed.info/sct";
/// SNOMED CT "Self-referral" (the ServiceRequest's category).
const SELF_REFERRAL_CODE: &str = "185927001";

/// The referral id of the self-referral with this reference (intake derives
/// the same id from the ServiceRequest identifier).
pub fn referral_id(reference: &Reference) -> Uuid {
    referral_id_of(None, &identifier(reference))
}

fn identifier(reference: &Reference) -> Identifier {
    Identifier {
        system: Some(REFERENCE_SYSTEM.to_owned()),
        value: reference.as_str().to_owned(),
    }
}

/// What a form says about the referral it makes.
#[derive(Debug, Clone, Copy)]
pub struct Referral<'a> {
    /// `self-referral` or `telephone`.
    pub route: ReceivedVia,
    pub reference: &'a Reference,
    pub practice: &'a Practice,
    pub about: &'a AboutYou,
    /// The red flags answered yes (the form stopped at them).
    pub red_flags: &'a [RedFlag],
    /// Absent when the form stopped at the red-flag questions.
    pub problem: Option<&'a Problem>,
    pub start_back: Option<StartBackAnswers>,
}

impl Submission {
    /// The referral a completed form makes, by `route`.
    pub fn referral<'a>(&'a self, route: ReceivedVia, reference: &'a Reference) -> Referral<'a> {
        Referral {
            route,
            reference,
            practice: &self.practice,
            about: &self.about,
            red_flags: &[],
            problem: Some(&self.problem),
            start_back: self.questionnaires.start_back_answers(),
        }
    }
}

/// The referral to submit to intake, sent at `at`.
pub fn referral_details(r: &Referral<'_>, at: DateTime<Utc>) -> ReferralDetails {
    let Referral {
        route,
        reference,
        practice,
        about,
        red_flags,
        problem,
        start_back,
    } = *r;
    let authored_on = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let (reason, body_site) = match problem.map(|p| questions::snomed(p.body_area)) {
        Some((code, display, site)) => (
            vec![coding(SNOMED, code, display)],
            site.map(|(c, d)| coding(SNOMED, c, d))
                .into_iter()
                .collect(),
        ),
        None => (vec![], vec![]),
    };
    let note = problem.map(|p| {
        let mut note = format!(
            "Self-referral. How long: {}. Work: {}.",
            questions::label(DURATIONS, p.duration),
            questions::label(WORK, p.work_status)
        );
        if let Some(worse) = &p.worse {
            note.push_str(" What makes it worse: ");
            note.push_str(worse);
        }
        note
    });
    let requester_display = match route {
        ReceivedVia::Telephone => "Self-referral by telephone",
        _ => "Self-referral",
    };
    let fhir_json = service_request(
        reference,
        practice,
        about,
        red_flags,
        &reason,
        &body_site,
        note.as_deref(),
        &authored_on,
    );
    ReferralDetails {
        received_via: route,
        sender: Sender {
            ods_code: None,
            endpoint: None,
            message_id: None,
            software: Some("mskflow self-referral".to_owned()),
        },
        service_request_identifier: Some(identifier(reference)),
        patient: PatientDetails {
            nhs_number: about.nhs_number.clone(),
            family: Some(about.family.clone()),
            given: vec![about.given.clone()],
            birth_date: Some(about.birth_date),
            sex: Some(about.sex),
            postcode: Some(about.postcode.clone()),
            ethnicity: None,
        },
        requester: Some(Requester {
            display: Some(requester_display.to_owned()),
            ods_code: Some(practice.ods.clone()),
        }),
        reason,
        body_site,
        requested_priority: RequestPriority::Routine,
        red_flags: red_flags.to_vec(),
        start_back,
        note,
        authored_on: Some(authored_on),
        fhir_json: fhir_json.to_string(),
    }
}

fn coding(system: &str, code: &str, display: &str) -> Coding {
    Coding {
        system: Some(system.to_owned()),
        code: code.to_owned(),
        display: Some(display.to_owned()),
    }
}

fn coding_json(c: &Coding) -> Value {
    json!({"system": c.system, "code": c.code, "display": c.display})
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, each a part of the resource"
)]
fn service_request(
    reference: &Reference,
    practice: &Practice,
    about: &AboutYou,
    red_flags: &[RedFlag],
    reason: &[Coding],
    body_site: &[Coding],
    note: Option<&str>,
    authored_on: &str,
) -> Value {
    let mut telecom = vec![json!({"system": "phone", "value": about.phone})];
    if let Some(email) = &about.email {
        telecom.push(json!({"system": "email", "value": email}));
    }
    let mut patient = json!({
        "resourceType": "Patient",
        "id": "patient",
        "name": [{"family": about.family, "given": [about.given]}],
        "gender": about.sex.code(),
        "birthDate": about.birth_date.to_string(),
        "address": [{"postalCode": about.postcode}],
        "telecom": telecom,
        "generalPractitioner": [{
            "identifier": {"system": ODS_SYSTEM, "value": practice.ods.as_str()},
            "display": practice.name,
        }],
    });
    if let Some(n) = &about.nhs_number {
        patient["identifier"] = json!([{"system": NHS_NUMBER_SYSTEM, "value": n.as_str()}]);
    }
    let mut sr = json!({
        "resourceType": "ServiceRequest",
        "contained": [patient],
        "identifier": [{"system": REFERENCE_SYSTEM, "value": reference.as_str()}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": SELF_REFERRAL_CODE, "display": "Self-referral"}]}],
        "priority": "routine",
        "subject": {"reference": "#patient"},
        "requester": {"reference": "#patient"},
        "authoredOn": authored_on,
    });
    if !reason.is_empty() {
        sr["reasonCode"] = json!([{"coding": reason.iter().map(coding_json).collect::<Vec<_>>()}]);
    }
    if !body_site.is_empty() {
        sr["bodySite"] = json!([{"coding": body_site.iter().map(coding_json).collect::<Vec<_>>()}]);
    }
    if !red_flags.is_empty() {
        sr["supportingInfo"] = json!(red_flags
            .iter()
            .map(|f| json!({"display": f.code(), "identifier": {"system": RED_FLAG_SYSTEM, "value": f.code()}}))
            .collect::<Vec<_>>());
    }
    if let Some(note) = note {
        sr["note"] = json!([{"text": note}]);
    }
    sr
}
