//! FHIR R4 JSON for the views: `Task`, `ServiceRequest`, `Patient`,
//! `Appointment`, `Encounter`, `Schedule`, `Slot` and the `Bundle`s that carry
//! them. Pure: no HTTP. (The CapabilityStatement is built in
//! [`crate::fhir::metadata`], the MessageDefinition in
//! [`crate::fhir::messaging`].)

use mskflow_events::{NHS_NUMBER_SYSTEM, ODS_SYSTEM};
use serde_json::{Value, json};

use mskflow_events::assessment::{DischargeReason, Outcome};

use mskflow_events::scheduling::Programme;
use mskflow_events::types::ContactMode;

use crate::views::{
    AppointmentKind, AppointmentView, AssessmentStage, AssessmentView, Capacity, ClassView,
    Decision, OnwardView, ReferralView, RehabSlotView,
};

/// Code system of our referral business statuses (`Task.businessStatus`).
pub const BUSINESS_STATUS_SYSTEM: &str = "https://fhir.mskflow.org/CodeSystem/referral-status";
/// Identifier system of referral ids we assign.
pub const REFERRAL_ID_SYSTEM: &str = "https://fhir.mskflow.org/Id/referral";
/// Code system of triage outputs (`Task.output.type`).
pub const TRIAGE_OUTPUT_SYSTEM: &str = "https://fhir.mskflow.org/CodeSystem/triage-output";
/// NHS Booking and Referral Standard message events.
pub const MESSAGE_EVENT_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/message-event";

pub use crate::views::status::{business_status, service_request_status, task_status};

fn instant(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn outcome_code(o: &Outcome) -> String {
    match o {
        Outcome::AdviceAndSelfManagement { .. } => "advice-and-self-management".to_owned(),
        Outcome::CommunityPhysiotherapy => "community-physiotherapy".to_owned(),
        Outcome::GroupProgramme { .. } => "group-programme-escape-pain".to_owned(),
        Outcome::StrengthAndBalance => "strength-and-balance".to_owned(),
        Outcome::FractureLiaison => "fracture-liaison".to_owned(),
        Outcome::OnwardReferral { destination, .. } => {
            format!("onward-referral-{}", destination.code())
        }
        Outcome::Discharge => "discharge".to_owned(),
    }
}

/// Task outputs describing the assessment.
fn assessment_outputs(a: &AssessmentView, outputs: &mut Vec<Value>) {
    if let Some(slot) = &a.appointment
        && a.stage == AssessmentStage::Booked
    {
        outputs.push(output(
            "appointment-start",
            "FCP appointment",
            &instant(&slot.start),
        ));
        outputs.push(output(
            "appointment-mode",
            "FCP appointment mode",
            slot.mode.code(),
        ));
    }
    if a.missed > 0 {
        outputs.push(json!({
            "type": {"coding": [{"system": TRIAGE_OUTPUT_SYSTEM, "code": "appointments-missed", "display": "Appointments missed"}]},
            "valueInteger": a.missed,
        }));
    }
    for o in &a.outcomes {
        outputs.push(output(
            "assessment-outcome",
            "Assessment outcome",
            &outcome_code(o),
        ));
    }

    if let Some(reason) = a.discharge {
        let code = match reason {
            DischargeReason::AssessmentOutcome => "assessment-outcome",
            DischargeReason::DidNotAttend => "did-not-attend",
            DischargeReason::Cancelled => "cancelled",
        };
        outputs.push(output("discharge-reason", "Discharge reason", code));
    }
}

fn output(code: &str, display: &str, value: &str) -> Value {
    json!({
        "type": {"coding": [{"system": TRIAGE_OUTPUT_SYSTEM, "code": code, "display": display}]},
        "valueString": value,
    })
}

/// The workflow `Task` the referrer polls: `focus` and `basedOn` are the
/// ServiceRequest.
pub fn task(view: &ReferralView) -> Value {
    let id = view.referral_id.to_string();
    let mut task = json!({
        "resourceType": "Task",
        "id": id,
        "meta": {"versionId": view.task_version().to_string(), "lastUpdated": instant(&view.task_last_updated())},
        "identifier": [{"system": REFERRAL_ID_SYSTEM, "value": id}],
        "basedOn": [{"reference": format!("ServiceRequest/{id}")}],
        "status": task_status(view),
        "businessStatus": {"coding": [{
            "system": BUSINESS_STATUS_SYSTEM,
            "code": business_status(view).0,
            "display": business_status(view).1,
        }]},
        "intent": "order",
        "priority": view.details.requested_priority.code(),
        "focus": {"reference": format!("ServiceRequest/{id}")},
        "for": patient_reference(view),
        "authoredOn": instant(&view.created),
        "lastModified": instant(&view.task_last_updated()),
    });
    if let Some(ods) = view.details.sender.ods_code.as_ref() {
        task["requester"] = json!({"identifier": {"system": ODS_SYSTEM, "value": ods.as_str()}});
    }
    let mut outputs = Vec::new();
    if let Some(v) = &view.rule_set_version {
        outputs.push(output("rule-set-version", "Triage rule set version", v));
    }
    if let Some(r) = &view.rule_id {
        outputs.push(output("rule-id", "Triage rule", r));
    }
    match &view.decision {
        Some(Decision::Triaged {
            priority,
            pathway,
            start_back,
            ..
        }) => {
            outputs.push(output("pathway", "Pathway", pathway.code()));
            outputs.push(output("priority", "FCP priority", priority.code()));
            if let Some(s) = start_back {
                outputs.push(output("start-back-risk", "STarT Back risk", s.risk.code()));
                outputs.push(json!({
                    "type": {"coding": [{"system": TRIAGE_OUTPUT_SYSTEM, "code": "start-back-total", "display": "STarT Back total score"}]},
                    "valueInteger": s.total,
                }));
                outputs.push(json!({
                    "type": {"coding": [{"system": TRIAGE_OUTPUT_SYSTEM, "code": "start-back-psychosocial", "display": "STarT Back psychosocial subscore"}]},
                    "valueInteger": s.psychosocial,
                }));
            }
        }
        Some(Decision::Redirected {
            destination,
            urgency,
            reason,
            ..
        }) => {
            task["statusReason"] = json!({"text": reason});
            outputs.push(output(
                "redirect-destination",
                "Redirected to",
                destination.code(),
            ));
            outputs.push(output("urgency", "Urgency", urgency.code()));
        }
        Some(Decision::Rejected {
            reason_code,
            reason,
        }) => {
            task["statusReason"] = json!({
                "coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": reason_code}],
                "text": reason,
            });
        }
        None => {}
    }
    if let Some(a) = &view.assessment {
        assessment_outputs(a, &mut outputs);
    }
    for o in &view.onward {
        outputs.push(json!({
            "type": {"coding": [{"system": TRIAGE_OUTPUT_SYSTEM, "code": "onward-referral", "display": "Onward referral"}]},
            "valueReference": {"reference": format!("ServiceRequest/{}", o.id), "display": format!("{} ({})", o.destination.display(), o.delivery)},
        }));
    }
    if let Some(r) = &view.rehab {
        outputs.push(output(
            "rehab-programme",
            "Rehabilitation programme",
            r.programme.code(),
        ));
        for (code, display, n) in [
            ("rehab-sessions", "Sessions in the course", r.sessions),
            ("rehab-attended", "Sessions attended", r.attended),
            ("rehab-missed", "Sessions missed", r.missed),
        ] {
            outputs.push(json!({
                "type": {"coding": [{"system": TRIAGE_OUTPUT_SYSTEM, "code": code, "display": display}]},
                "valueInteger": n,
            }));
        }
        if let Some(first) = r.booked.first() {
            outputs.push(output(
                "rehab-first-session",
                "First session",
                &first.starts_at.to_string(),
            ));
        }
        if let Some(reason) = r.discharge {
            outputs.push(output(
                "rehab-discharge-reason",
                "Rehabilitation discharge reason",
                reason.code(),
            ));
        }
    }
    if !outputs.is_empty() {
        task["output"] = Value::Array(outputs);
    }
    task
}

/// The ServiceRequest exactly as the referrer sent it (every element, known or
/// not), with our id, version and current status.
pub fn service_request(view: &ReferralView) -> Value {
    let original = serde_json::from_str::<Value>(&view.details.fhir_json)
        .ok()
        .and_then(extract_service_request)
        .unwrap_or_else(|| json!({"resourceType": "ServiceRequest", "intent": "order"}));
    let mut sr = original;
    let id = view.referral_id.to_string();
    sr["id"] = json!(id);
    sr["meta"] =
        json!({"versionId": view.version.to_string(), "lastUpdated": instant(&view.last_updated)});
    sr["status"] = json!(service_request_status(view));
    sr
}

/// The referral's Patient exactly as the referrer sent it (every element,
/// known or not), as version `version` of `Patient/{id}`: the id is the
/// Patient view's, `meta.versionId` and `meta.lastUpdated` say which referral
/// carried it and when (other `meta` elements, such as profiles, are kept).
pub fn patient(id: uuid::Uuid, version: usize, view: &ReferralView) -> Value {
    let nhs_number = view.details.patient.nhs_number.as_ref().map(|n| n.as_str());
    let mut patient = serde_json::from_str::<Value>(&view.details.fhir_json)
        .ok()
        .and_then(|sent| patient_as_sent(&sent, nhs_number))
        .unwrap_or_else(|| match nhs_number {
            Some(n) => json!({
                "resourceType": "Patient",
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": n}],
            }),
            None => json!({"resourceType": "Patient"}),
        });
    patient["id"] = json!(id.to_string());
    if !patient["meta"].is_object() {
        patient["meta"] = json!({});
    }
    patient["meta"]["versionId"] = json!(version.to_string());
    patient["meta"]["lastUpdated"] = json!(instant(&view.created));
    patient
}

/// How a resource about the referral points at its patient: by NHS number,
/// or, for a self-referral that gave none, by the `Patient` view of that
/// referral (its id is the referral's).
fn patient_reference(view: &ReferralView) -> Value {
    match &view.details.patient.nhs_number {
        Some(n) => json!({"identifier": {"system": NHS_NUMBER_SYSTEM, "value": n.as_str()}}),
        None => json!({"reference": format!("Patient/{}", view.referral_id)}),
    }
}

/// The Patient in a referral as sent (a Bundle's entries, a ServiceRequest's
/// contained resources) whose NHS number is `nhs_number`; with none, the
/// first Patient (a self-referral carries only the person referring).
fn patient_as_sent(sent: &Value, nhs_number: Option<&str>) -> Option<Value> {
    let is_the_patient = |r: &Value| {
        let Some(nhs_number) = nhs_number else {
            return r.get("resourceType").and_then(Value::as_str) == Some("Patient");
        };
        r.get("resourceType").and_then(Value::as_str) == Some("Patient")
            && r.get("identifier")
                .and_then(Value::as_array)
                .is_some_and(|ids| {
                    ids.iter().any(|i| {
                        i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM)
                            && i.get("value").and_then(Value::as_str).is_some_and(|v| {
                                v.chars()
                                    .filter(|c| !c.is_whitespace())
                                    .eq(nhs_number.chars())
                            })
                    })
                })
    };
    fn with_contained(r: &Value) -> impl Iterator<Item = &Value> {
        std::iter::once(r).chain(
            r.get("contained")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
    }
    let entries = sent
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"));
    with_contained(sent)
        .chain(entries.flat_map(with_contained))
        .find(|r| is_the_patient(r))
        .cloned()
}

fn extract_service_request(value: Value) -> Option<Value> {
    match value.get("resourceType").and_then(Value::as_str) {
        Some("ServiceRequest") => Some(value),
        Some("Bundle") => value
            .get("entry")?
            .as_array()?
            .iter()
            .filter_map(|e| e.get("resource"))
            .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("ServiceRequest"))
            .cloned(),
        _ => None,
    }
}

/// An `Appointment`: the FCP assessment or one rehab session.
pub fn appointment(view: &ReferralView, a: &AppointmentView) -> Value {
    let (service, description, practitioner) = match &a.kind {
        AppointmentKind::FcpAssessment { clinician_id, .. } => (
            "First Contact Practitioner assessment".to_owned(),
            "First Contact Practitioner assessment".to_owned(),
            Some(clinician_id.clone()),
        ),
        AppointmentKind::RehabSession {
            programme,
            session_no,
            of,
        } => {
            let name = match programme {
                Programme::OneToOne => "Community physiotherapy (1:1)",
                Programme::EscapePain => "ESCAPE-pain group programme",
                Programme::StrengthAndBalance => "Strength and balance group",
            };
            (
                name.to_owned(),
                format!("{name}: session {session_no} of {of}"),
                None,
            )
        }
    };
    let mut participants = vec![json!({
        "actor": patient_reference(view),
        "status": "accepted"
    })];
    if let Some(p) = practitioner {
        participants.push(json!({"actor": {"display": format!("FCP {p}")}, "status": "accepted"}));
    }
    if let Some(l) = &a.location {
        participants.push(json!({"actor": {"display": l}, "status": "accepted"}));
    }
    let mut out = json!({
        "resourceType": "Appointment",
        "id": a.id.to_string(),
        "meta": {"lastUpdated": instant(&a.last_updated)},
        "status": a.status.code(),
        "serviceType": [{"text": service}],
        "appointmentType": {"text": a.mode.code()},
        "description": description,
        "start": instant(&a.start),
        "basedOn": [{"reference": format!("ServiceRequest/{}", view.referral_id)}],
        "participant": participants,
    });
    if let Some(end) = a.end {
        out["end"] = json!(instant(&end));
    }
    out
}

/// The FCP assessment as an `Encounter`, once it took place.
pub fn encounter(view: &ReferralView) -> Option<Value> {
    let assessed = view.assessed.as_ref()?;
    let appointment = view
        .appointments
        .iter()
        .find(|a| a.id == assessed.appointment_id);
    let class = match appointment.map(|a| a.mode) {
        Some(ContactMode::FaceToFace) | None => ("AMB", "ambulatory"),
        Some(ContactMode::Telephone | ContactMode::Video) => ("VR", "virtual"),
    };
    let mut encounter = json!({
        "resourceType": "Encounter",
        "id": view.referral_id.to_string(),
        "meta": {"lastUpdated": instant(&assessed.recorded)},
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class.0, "display": class.1},
        "serviceType": {"text": "First Contact Practitioner assessment"},
        "subject": patient_reference(view),
        "basedOn": [{"reference": format!("ServiceRequest/{}", view.referral_id)}],
        "appointment": [{"reference": format!("Appointment/{}", assessed.appointment_id)}],
        "participant": [{"individual": {"display": format!("FCP {}", assessed.clinician_id)}}],
    });
    if let Some(a) = appointment {
        encounter["period"] =
            json!({"start": instant(&a.start), "end": instant(&a.end.unwrap_or(a.start))});
    }
    Some(encounter)
}

/// An outbound referral to another service, as the ServiceRequest to send.
pub fn onward_service_request(view: &ReferralView, onward: &OnwardView) -> Value {
    let mut sr = onward.service_request.clone();
    sr["id"] = json!(onward.id.to_string());
    sr["meta"] = json!({"versionId": "1", "lastUpdated": instant(&onward.recorded)});
    if sr.get("basedOn").is_none() {
        sr["basedOn"] = json!([{"reference": format!("ServiceRequest/{}", view.referral_id)}]);
    }
    sr
}

const SLOT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7c3e_91a2_4d5f_4b60_8e17_3a9c_2f04_b6d1);

fn local(date: chrono::NaiveDate, time: chrono::NaiveTime) -> String {
    // Clinic times are local times; rendered as UTC.
    instant(&chrono::TimeZone::from_utc_datetime(
        &chrono::Utc,
        &date.and_time(time),
    ))
}

fn programme_name(p: Programme) -> &'static str {
    match p {
        Programme::OneToOne => "Community physiotherapy (1:1)",
        Programme::EscapePain => "ESCAPE-pain group programme",
        Programme::StrengthAndBalance => "Strength and balance group",
    }
}

/// The Schedule id of a 1:1 clinician.
pub fn clinician_schedule_id(clinician: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &SLOT_NAMESPACE,
        format!("clinician\u{1f}{clinician}").as_bytes(),
    )
}

/// The Slot id of one session of a class.
pub fn class_session_slot_id(class_id: uuid::Uuid, session: usize) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &SLOT_NAMESPACE,
        format!("class\u{1f}{class_id}\u{1f}{session}").as_bytes(),
    )
}

/// A group class as a `Schedule`.
pub fn class_schedule(capacity: &Capacity, c: &ClassView) -> Value {
    let s = &c.scheduled;
    let venue = capacity
        .venues
        .get(&s.venue_id)
        .cloned()
        .unwrap_or_else(|| s.venue_id.clone());
    let mut out = json!({
        "resourceType": "Schedule",
        "id": s.class_id.to_string(),
        "meta": {"versionId": c.version.to_string(), "lastUpdated": instant(&c.last_updated)},
        "active": true,
        "serviceType": [{"text": programme_name(s.programme)}],
        "actor": [{"display": venue}],
        "comment": format!("{} places, {} enrolled, {} sessions", s.capacity, c.enrolled.len(), s.session_dates.len()),
    });
    if let (Some(first), Some(last)) = (s.session_dates.first(), s.session_dates.last()) {
        out["planningHorizon"] =
            json!({"start": local(*first, s.start_time), "end": local(*last, s.start_time)});
    }
    out
}

/// A clinician's 1:1 slots as a `Schedule`.
pub fn clinician_schedule(clinician: &str, venue: &str) -> Value {
    json!({
        "resourceType": "Schedule",
        "id": clinician_schedule_id(clinician).to_string(),
        "active": true,
        "serviceType": [{"text": programme_name(Programme::OneToOne)}],
        "actor": [{"display": format!("Clinician {clinician}")}, {"display": venue}],
    })
}

/// The sessions of a class as `Slot`s: busy once the class is full.
pub fn class_slots(c: &ClassView) -> Vec<Value> {
    let s = &c.scheduled;
    let full = c.enrolled.len() as u32 >= s.capacity;
    s.session_dates
        .iter()
        .enumerate()
        .map(|(i, date)| {
            let end = s.start_time + chrono::Duration::minutes(i64::from(s.duration_minutes));
            json!({
                "resourceType": "Slot",
                "id": class_session_slot_id(s.class_id, i + 1).to_string(),
                "serviceType": [{"text": programme_name(s.programme)}],
                "schedule": {"reference": format!("Schedule/{}", s.class_id)},
                "status": if full { "busy" } else { "free" },
                "start": local(*date, s.start_time),
                "end": local(*date, end),
                "comment": format!("session {} of {}; {} of {} places left", i + 1, s.session_dates.len(), s.capacity.saturating_sub(c.enrolled.len() as u32), s.capacity),
            })
        })
        .collect()
}

/// A 1:1 rehab slot as a `Slot`.
pub fn rehab_slot(slot: &RehabSlotView) -> Value {
    let p = &slot.published;
    json!({
        "resourceType": "Slot",
        "id": p.slot_id.to_string(),
        "meta": {"versionId": slot.version.to_string(), "lastUpdated": instant(&slot.last_updated)},
        "serviceType": [{"text": programme_name(Programme::OneToOne)}],
        "appointmentType": {"text": p.mode.code()},
        "schedule": {"reference": format!("Schedule/{}", clinician_schedule_id(&p.clinician))},
        "status": if slot.booked_by.is_some() { "busy" } else { "free" },
        "start": local(p.starts_at.date(), p.starts_at.time()),
        "end": local(p.ends_at.date(), p.ends_at.time()),
    })
}

/// A `searchset` Bundle.
pub fn searchset(
    base: &str,
    links: &[(&str, String)],
    resources: Vec<Value>,
    total: usize,
) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let full_url = format!(
                "{base}/{}/{}",
                r.get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                r.get("id").and_then(Value::as_str).unwrap_or_default()
            );
            json!({"fullUrl": full_url, "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links.iter().map(|(relation, url)| json!({"relation": relation, "url": url})).collect::<Vec<_>>(),
        "entry": entries,
    })
}

/// The response message to `$process-message`: a `MessageHeader` answering
/// the request's, then the Task and the ServiceRequest.
pub fn response_message(base: &str, request_message_id: &str, view: &ReferralView) -> Value {
    let id = view.referral_id;
    let header_id = uuid::Uuid::new_v4().to_string();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant(&view.last_updated)},
        "type": "message",
        "timestamp": instant(&chrono::Utc::now()),
        "entry": [
            {
                "fullUrl": format!("urn:uuid:{header_id}"),
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": header_id,
                    "eventCoding": {"system": MESSAGE_EVENT_SYSTEM, "code": "servicerequest-response"},
                    "source": {"endpoint": base, "software": "mskflow", "version": env!("CARGO_PKG_VERSION")},
                    "response": {"identifier": request_message_id, "code": "ok"},
                    "focus": [{"reference": format!("{base}/Task/{id}")}],
                }
            },
            {"fullUrl": format!("{base}/Task/{id}"), "resource": task(view)},
            {"fullUrl": format!("{base}/ServiceRequest/{id}"), "resource": service_request(view)},
        ]
    })
}
