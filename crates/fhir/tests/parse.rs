//! Referral parsing against the fixtures, and every refusal's status, issue
//! type and location.

#![allow(clippy::unwrap_used, reason = "test fixtures are known-good")]

use chrono::NaiveDate;
use mskflow_events::intake::{
    Coding, Identifier, PatientDetails, ReferralDetails, Requester, Sender, StartBackAnswers,
};
use mskflow_events::types::{ReceivedVia, RedFlag, RequestPriority, Sex};
use mskflow_events::{NhsNumber, OdsCode};
use mskflow_fhir::{FhirError, IssueType, parse_process_message, parse_service_request};
use serde_json::{Value, json};

const MESSAGE: &str = include_str!("fixtures/referral-message.json");
const SERVICE_REQUEST: &str = include_str!("fixtures/referral-service-request.json");

fn message() -> Value {
    serde_json::from_str(MESSAGE).unwrap()
}

fn service_request() -> Value {
    serde_json::from_str(SERVICE_REQUEST).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Entry `i`'s resource of a message.
fn entry(v: &mut Value, i: usize) -> &mut Value {
    &mut v["entry"][i]["resource"]
}

fn message_err(v: &Value) -> FhirError {
    match parse_process_message(&bytes(v)) {
        Ok(_) => panic!("expected the message to be refused"),
        Err(e) => e,
    }
}

fn sr_err(v: &Value) -> FhirError {
    match parse_service_request(&bytes(v)) {
        Ok(_) => panic!("expected the ServiceRequest to be refused"),
        Err(e) => e,
    }
}

/// The error has exactly one issue, of this status, type and location.
fn assert_single(e: &FhirError, status: u16, code: IssueType, expression: Option<&str>) {
    assert_eq!(e.status, status, "{e}");
    assert_eq!(e.issues.len(), 1, "{e}");
    assert_eq!(e.issues[0].code, code, "{e}");
    assert_eq!(e.issues[0].expression.as_deref(), expression, "{e}");
}

fn snomed(code: &str, display: &str) -> Coding {
    Coding {
        system: Some("http://snomed.info/sct".into()),
        code: code.into(),
        display: Some(display.into()),
    }
}

fn expected_patient(given: &[&str]) -> PatientDetails {
    PatientDetails {
        nhs_number: Some(NhsNumber::parse("9434765919").unwrap()),
        family: Some("Smith".into()),
        given: given.iter().map(|g| (*g).to_owned()).collect(),
        birth_date: NaiveDate::from_ymd_opt(1968, 4, 12),
        sex: Some(Sex::Female),
        postcode: Some("LS1 5HD".into()),
        ethnicity: Some(Coding {
            system: Some("https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory".into()),
            code: "A".into(),
            display: Some("British, Mixed British".into()),
        }),
    }
}

#[test]
fn canonical_message_parses_to_the_expected_referral() {
    let parsed = parse_process_message(MESSAGE.as_bytes()).unwrap();
    assert_eq!(parsed.message_id, "5b1e7c2a-0d4f-4a8e-b3c6-7d9e0f1a2b3c");
    assert_eq!(parsed.event_code, "servicerequest-request");
    assert_eq!(parsed.reason.as_deref(), Some("new"));
    assert_eq!(parsed.bundle_version.as_deref(), Some("1"));
    let expected = ReferralDetails {
        received_via: ReceivedVia::ProcessMessage,
        sender: Sender {
            ods_code: Some(OdsCode::parse("A81001").unwrap()),
            endpoint: Some("https://gp.example.nhs.uk/fhir/messages".into()),
            message_id: Some("5b1e7c2a-0d4f-4a8e-b3c6-7d9e0f1a2b3c".into()),
            software: Some("GP Clinical System".into()),
        },
        service_request_identifier: Some(Identifier {
            system: Some("https://gp.example.nhs.uk/Id/referral".into()),
            value: "REF-2026-000123".into(),
        }),
        patient: expected_patient(&["Jane", "Anne"]),
        requester: Some(Requester {
            display: Some("Dr Amrit Jones".into()),
            ods_code: Some(OdsCode::parse("A81001").unwrap()),
        }),
        reason: vec![snomed("30989003", "Knee pain")],
        body_site: vec![snomed("72696002", "Knee region structure")],
        requested_priority: RequestPriority::Routine,
        red_flags: vec![],
        start_back: Some(StartBackAnswers([
            false, true, true, false, false, false, false, false, false,
        ])),
        note: Some(
            "Right knee pain for 3 months, worse on stairs. No locking or giving way.".into(),
        ),
        authored_on: Some("2026-11-20T09:30:00+00:00".into()),
        fhir_json: MESSAGE.to_owned(),
    };
    assert_eq!(parsed.referral, expected);
}

#[test]
fn canonical_service_request_parses_to_the_expected_referral() {
    let referral = parse_service_request(SERVICE_REQUEST.as_bytes()).unwrap();
    let expected = ReferralDetails {
        received_via: ReceivedVia::ServiceRequestCreate,
        sender: Sender {
            ods_code: Some(OdsCode::parse("A81001").unwrap()),
            endpoint: None,
            message_id: None,
            software: None,
        },
        service_request_identifier: Some(Identifier {
            system: Some("https://gp.example.nhs.uk/Id/referral".into()),
            value: "REF-2026-000124".into(),
        }),
        patient: expected_patient(&["Jane"]),
        requester: Some(Requester {
            display: Some("The Health Centre".into()),
            ods_code: Some(OdsCode::parse("A81001").unwrap()),
        }),
        reason: vec![snomed("30989003", "Knee pain")],
        body_site: vec![snomed("72696002", "Knee region structure")],
        requested_priority: RequestPriority::Routine,
        red_flags: vec![],
        start_back: None,
        note: Some("Left knee pain for six weeks, improving slowly.".into()),
        authored_on: Some("2026-11-20T10:15:00+00:00".into()),
        fhir_json: SERVICE_REQUEST.to_owned(),
    };
    assert_eq!(referral, expected);
}

#[test]
fn fhir_json_keeps_elements_the_models_drop() {
    let mut v = message();
    entry(&mut v, 1)["x-local-element"] = json!("kept");
    let body = bytes(&v);
    let parsed = parse_process_message(&body).unwrap();
    assert!(parsed.referral.fhir_json.contains("x-local-element"));
    assert_eq!(parsed.referral.fhir_json.as_bytes(), body.as_slice());
}

#[test]
fn red_flags_present_when_true_once_each() {
    let mut v = message();
    entry(&mut v, 6)["valueBoolean"] = json!(true);
    entry(&mut v, 7)["valueBoolean"] = json!(true);
    // The same finding twice is one red flag.
    let mut copy = entry(&mut v, 6).clone();
    copy["id"] = json!("copy");
    v["entry"].as_array_mut().unwrap().push(
        json!({"fullUrl": "urn:uuid:0f0f0f0f-0000-4000-8000-000000000001", "resource": copy}),
    );
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert_eq!(
        parsed.referral.red_flags,
        vec![RedFlag::HistoryOfCancer, RedFlag::PersistentJointSwelling]
    );
}

#[test]
fn entered_in_error_red_flags_are_ignored() {
    let mut v = message();
    entry(&mut v, 6)["valueBoolean"] = json!(true);
    entry(&mut v, 6)["status"] = json!("entered-in-error");
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert!(parsed.referral.red_flags.is_empty());
}

#[test]
fn contained_red_flags_and_start_back_in_a_plain_service_request() {
    let mut v = service_request();
    v["contained"][1]["valueBoolean"] = json!(true);
    let items: Vec<Value> = (1..=9)
        .map(|n| json!({"linkId": n.to_string(), "answer": [{"valueBoolean": n >= 5}]}))
        .collect();
    v["contained"].as_array_mut().unwrap().push(json!({
        "resourceType": "QuestionnaireResponse",
        "id": "sb",
        "questionnaire": "https://fhir.mskflow.org/Questionnaire/start-back|1.0",
        "status": "completed",
        "item": [{"linkId": "group", "item": items}]
    }));
    let referral = parse_service_request(&bytes(&v)).unwrap();
    assert_eq!(referral.red_flags, vec![RedFlag::NightPain]);
    let answers = referral.start_back.unwrap();
    assert_eq!(
        answers.0,
        [false, false, false, false, true, true, true, true, true]
    );
}

#[test]
fn relative_references_resolve_against_full_urls_and_ids() {
    let mut v = message();
    // Patient found by resourceType/id, Organization by the tail of its fullUrl.
    v["entry"][2]["fullUrl"] = json!("https://gp.example.nhs.uk/fhir/Patient/pat-1");
    entry(&mut v, 2)["id"] = json!("pat-1");
    entry(&mut v, 1)["subject"] = json!({"reference": "Patient/pat-1"});
    v["entry"][3]["fullUrl"] = json!("https://gp.example.nhs.uk/fhir/Organization/org-1");
    entry(&mut v, 3).as_object_mut().unwrap().remove("id");
    entry(&mut v, 0)["sender"] = json!({"reference": "Organization/org-1"});
    entry(&mut v, 4)["organization"] = json!({"reference": "Organization/org-1"});
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert_eq!(
        parsed
            .referral
            .patient
            .nhs_number
            .as_ref()
            .map(|n| n.as_str()),
        Some("9434765919")
    );
    assert_eq!(
        parsed
            .referral
            .sender
            .ods_code
            .as_ref()
            .map(OdsCode::as_str),
        Some("A81001")
    );
    assert_eq!(
        parsed
            .referral
            .requester
            .and_then(|r| r.ods_code)
            .as_ref()
            .map(OdsCode::as_str),
        Some("A81001")
    );
}

#[test]
fn sender_identifier_wins_and_requester_org_is_the_fallback() {
    let mut v = message();
    entry(&mut v, 0)["sender"] = json!({
        "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "y12345"}
    });
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert_eq!(
        parsed
            .referral
            .sender
            .ods_code
            .as_ref()
            .map(OdsCode::as_str),
        Some("Y12345")
    );

    entry(&mut v, 0).as_object_mut().unwrap().remove("sender");
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert_eq!(
        parsed
            .referral
            .sender
            .ods_code
            .as_ref()
            .map(OdsCode::as_str),
        Some("A81001")
    );
}

#[test]
fn message_id_falls_back_to_the_bundle_id_and_priority_defaults_to_routine() {
    let mut v = message();
    entry(&mut v, 0).as_object_mut().unwrap().remove("id");
    entry(&mut v, 1).as_object_mut().unwrap().remove("priority");
    v["meta"].as_object_mut().unwrap().remove("versionId");
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert_eq!(parsed.message_id, "3f9c2a64-8d1e-4c5b-9a7f-1e2d3c4b5a60");
    assert_eq!(parsed.referral.requested_priority, RequestPriority::Routine);
    assert_eq!(parsed.bundle_version, None);

    entry(&mut v, 1)["priority"] = json!("urgent");
    let parsed = parse_process_message(&bytes(&v)).unwrap();
    assert_eq!(parsed.referral.requested_priority, RequestPriority::Urgent);
}

#[test]
fn bars_event_system_is_accepted() {
    let mut v = message();
    entry(&mut v, 0)["eventCoding"]["system"] =
        json!("https://fhir.nhs.uk/CodeSystem/message-events-bars");
    assert!(parse_process_message(&bytes(&v)).is_ok());
}

#[test]
fn partial_birth_date_is_not_a_full_date() {
    let mut v = service_request();
    v["contained"][0]["birthDate"] = json!("1968-04");
    let referral = parse_service_request(&bytes(&v)).unwrap();
    assert_eq!(referral.patient.birth_date, None);
}

// ---- refusals ----

#[test]
fn malformed_json() {
    for parse in [
        |b: &[u8]| parse_process_message(b).err(),
        |b: &[u8]| parse_service_request(b).err(),
    ] {
        let e = parse(b"{\"resourceType\": \"Bundle\",").unwrap();
        assert_single(&e, 400, IssueType::Structure, None);
    }
}

#[test]
fn json_that_is_not_an_object() {
    let e = parse_process_message(b"[1, 2, 3]").unwrap_err();
    assert_single(&e, 400, IssueType::Structure, None);
    let e = parse_service_request(b"\"ServiceRequest\"").unwrap_err();
    assert_single(&e, 400, IssueType::Structure, None);
}

#[test]
fn wrong_resource_type() {
    let e = parse_process_message(SERVICE_REQUEST.as_bytes()).unwrap_err();
    assert_single(&e, 400, IssueType::Invalid, Some("resourceType"));
    let e = parse_service_request(MESSAGE.as_bytes()).unwrap_err();
    assert_single(&e, 400, IssueType::Invalid, Some("resourceType"));
    let e = parse_service_request(b"{\"status\": \"active\"}").unwrap_err();
    assert_single(&e, 400, IssueType::Required, Some("resourceType"));
}

#[test]
fn non_utf8_body() {
    let mut body = SERVICE_REQUEST.as_bytes().to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    let e = parse_service_request(&body).unwrap_err();
    assert_single(&e, 400, IssueType::Structure, None);
    let e = parse_process_message(&[b'{', 0xc3, 0x28, b'}']).unwrap_err();
    assert_single(&e, 400, IssueType::Structure, None);
}

#[test]
fn bundle_not_of_type_message() {
    let mut v = message();
    v["type"] = json!("collection");
    assert_single(
        &message_err(&v),
        400,
        IssueType::Invalid,
        Some("Bundle.type"),
    );
}

#[test]
fn bundle_type_outside_its_value_set() {
    let mut v = message();
    v["type"] = json!("parcel");
    assert_single(
        &message_err(&v),
        400,
        IssueType::CodeInvalid,
        Some("Bundle.type"),
    );
}

#[test]
fn first_entry_not_a_message_header() {
    let mut v = message();
    v["entry"].as_array_mut().unwrap().swap(0, 1);
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[0].resource"),
    );
}

#[test]
fn unsupported_event_code() {
    let mut v = message();
    entry(&mut v, 0)["eventCoding"]["code"] = json!("servicerequest-cancelled");
    assert_single(
        &message_err(&v),
        422,
        IssueType::NotSupported,
        Some("Bundle.entry[0].resource.eventCoding"),
    );
}

#[test]
fn missing_subject() {
    let mut v = message();
    entry(&mut v, 1).as_object_mut().unwrap().remove("subject");
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[1].resource.subject"),
    );
    let mut v = service_request();
    v.as_object_mut().unwrap().remove("subject");
    assert_single(
        &sr_err(&v),
        400,
        IssueType::Required,
        Some("ServiceRequest.subject"),
    );
}

#[test]
fn unresolvable_subject_reference() {
    let mut v = message();
    entry(&mut v, 1)["subject"] = json!({"reference": "Patient/not-in-the-message"});
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[1].resource.subject"),
    );
    let mut v = service_request();
    v["subject"] = json!({"reference": "#someone-else"});
    assert_single(
        &sr_err(&v),
        400,
        IssueType::Required,
        Some("ServiceRequest.subject"),
    );
    // A reference to a server we cannot read is not resolvable either.
    v["subject"] = json!({"reference": "https://elsewhere.example/fhir/Patient/1"});
    assert_single(
        &sr_err(&v),
        400,
        IssueType::Required,
        Some("ServiceRequest.subject"),
    );
}

#[test]
fn subject_that_is_not_a_patient() {
    let mut v = message();
    entry(&mut v, 1)["subject"] =
        json!({"reference": "urn:uuid:0c8a6d3e-2f1b-4e7a-9d5c-3b2a1f0e9d8c"});
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[1].resource.subject"),
    );
}

#[test]
fn no_nhs_number() {
    let mut v = message();
    entry(&mut v, 2)["identifier"] =
        json!([{"system": "https://fhir.example.org/Id/local", "value": "12345"}]);
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[2].resource.identifier"),
    );
    let mut v = service_request();
    v["contained"][0]
        .as_object_mut()
        .unwrap()
        .remove("identifier");
    assert_single(
        &sr_err(&v),
        400,
        IssueType::Required,
        Some("ServiceRequest.contained[0].identifier"),
    );
}

#[test]
fn invalid_nhs_number_check_digit() {
    let mut v = message();
    entry(&mut v, 2)["identifier"][0]["value"] = json!("9434765918");
    let e = message_err(&v);
    assert_single(
        &e,
        422,
        IssueType::Value,
        Some("Bundle.entry[2].resource.identifier[0].value"),
    );
    assert!(!e.issues[0].diagnostics.contains("943476591"), "{e}");
    assert!(!e.to_string().contains("943476591"), "{e}");
}

#[test]
fn bad_priority_code() {
    let mut v = message();
    entry(&mut v, 1)["priority"] = json!("whenever");
    assert_single(
        &message_err(&v),
        400,
        IssueType::CodeInvalid,
        Some("Bundle.entry[1].resource.priority"),
    );
    let mut v = service_request();
    v["priority"] = json!("whenever");
    assert_single(
        &sr_err(&v),
        400,
        IssueType::CodeInvalid,
        Some("ServiceRequest.priority"),
    );
}

#[test]
fn bad_gender() {
    let mut v = service_request();
    v["contained"][0]["gender"] = json!("f");
    assert_single(
        &sr_err(&v),
        400,
        IssueType::CodeInvalid,
        Some("ServiceRequest.contained[0].gender"),
    );
    let mut v = message();
    entry(&mut v, 2)["gender"] = json!("woman");
    assert_single(
        &message_err(&v),
        400,
        IssueType::CodeInvalid,
        Some("Bundle.entry[2].resource.gender"),
    );
}

#[test]
fn wrong_json_type_names_the_element_without_echoing_it() {
    let mut v = message();
    entry(&mut v, 2)["name"][0]["family"] = json!(["Smith"]);
    assert_single(
        &message_err(&v),
        400,
        IssueType::Structure,
        Some("Bundle.entry[2].resource.name[0].family"),
    );
    let mut v = service_request();
    v["contained"][0]["active"] = json!("Jane Smith");
    let e = sr_err(&v);
    assert_single(
        &e,
        400,
        IssueType::Structure,
        Some("ServiceRequest.contained[0].active"),
    );
    assert!(!e.issues[0].diagnostics.contains("Smith"), "{e}");
}

#[test]
fn unknown_red_flag_code() {
    let mut v = message();
    entry(&mut v, 6)["code"]["coding"][0]["code"] = json!("sore-elbow");
    assert_single(
        &message_err(&v),
        422,
        IssueType::CodeInvalid,
        Some("Bundle.entry[6].resource.code.coding[0].code"),
    );
}

#[test]
fn red_flag_missing_value() {
    let mut v = message();
    entry(&mut v, 7)
        .as_object_mut()
        .unwrap()
        .remove("valueBoolean");
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[7].resource.valueBoolean"),
    );
    let mut v = service_request();
    v["contained"][1]
        .as_object_mut()
        .unwrap()
        .remove("valueBoolean");
    assert_single(
        &sr_err(&v),
        400,
        IssueType::Required,
        Some("ServiceRequest.contained[1].valueBoolean"),
    );
}

#[test]
fn red_flag_value_of_another_type() {
    let mut v = message();
    entry(&mut v, 7)
        .as_object_mut()
        .unwrap()
        .remove("valueBoolean");
    entry(&mut v, 7)["valueString"] = json!("yes");
    assert_single(
        &message_err(&v),
        422,
        IssueType::Value,
        Some("Bundle.entry[7].resource.value"),
    );
}

#[test]
fn incomplete_start_back_names_each_missing_item() {
    let mut v = message();
    let qr = entry(&mut v, 8);
    qr["item"].as_array_mut().unwrap().remove(3); // item 4
    qr["item"][5]["answer"] = json!([{"valueString": "maybe"}]); // item 7
    let e = message_err(&v);
    assert_eq!(e.status, 422, "{e}");
    let found: Vec<(IssueType, Option<&str>)> = e
        .issues
        .iter()
        .map(|i| (i.code, i.expression.as_deref()))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                IssueType::Required,
                Some("Bundle.entry[8].resource.item.where(linkId='4')")
            ),
            (
                IssueType::Required,
                Some("Bundle.entry[8].resource.item.where(linkId='7')")
            ),
        ]
    );
    assert!(e.issues[0].diagnostics.contains("item 4"));
}

#[test]
fn status_other_than_active() {
    let mut v = service_request();
    v["status"] = json!("draft");
    assert_single(
        &sr_err(&v),
        422,
        IssueType::Value,
        Some("ServiceRequest.status"),
    );
}

#[test]
fn invalid_ods_code() {
    let mut v = service_request();
    v["requester"]["identifier"]["value"] = json!("A8-1001");
    assert_single(
        &sr_err(&v),
        422,
        IssueType::Value,
        Some("ServiceRequest.requester.identifier.value"),
    );
    let mut v = message();
    entry(&mut v, 3)["identifier"][0]["value"] = json!("X");
    // Both the sender and the requester (via the PractitionerRole) lead to it.
    let e = message_err(&v);
    assert_eq!(e.status, 422, "{e}");
    assert!(
        e.issues.iter().all(|i| i.code == IssueType::Value
            && i.expression.as_deref() == Some("Bundle.entry[3].resource.identifier[0].value")),
        "{e}"
    );
    assert!(!e.issues.is_empty());
}

#[test]
fn every_problem_is_reported_in_one_pass() {
    let mut v = message();
    entry(&mut v, 0)["eventCoding"]["code"] = json!("servicerequest-cancelled");
    entry(&mut v, 1)["status"] = json!("on-hold");
    entry(&mut v, 2)["identifier"][0]["value"] = json!("1234567890");
    entry(&mut v, 6)["code"]["coding"][0]["code"] = json!("sore-elbow");
    let e = message_err(&v);
    assert_eq!(e.status, 422, "{e}");
    let mut codes: Vec<&str> = e.issues.iter().map(|i| i.code.code()).collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        ["code-invalid", "not-supported", "value", "value"],
        "{e}"
    );

    // One problem that calls for 400 makes the whole answer 400.
    entry(&mut v, 7)
        .as_object_mut()
        .unwrap()
        .remove("valueBoolean");
    let e = message_err(&v);
    assert_eq!(e.status, 400, "{e}");
    assert_eq!(e.issues.len(), 5, "{e}");
}

#[test]
fn structure_problems_in_several_resources_are_all_reported() {
    let mut v = message();
    entry(&mut v, 1)["priority"] = json!("whenever");
    entry(&mut v, 2)["gender"] = json!("woman");
    entry(&mut v, 5)["name"] = json!("Dr Jones");
    let e = message_err(&v);
    assert_eq!(e.status, 400, "{e}");
    let expressions: Vec<&str> = e
        .issues
        .iter()
        .filter_map(|i| i.expression.as_deref())
        .collect();
    assert!(
        expressions.contains(&"Bundle.entry[1].resource.priority"),
        "{e}"
    );
    assert!(
        expressions.contains(&"Bundle.entry[2].resource.gender"),
        "{e}"
    );
    assert!(
        expressions
            .iter()
            .any(|x| x.starts_with("Bundle.entry[5].resource")),
        "{e}"
    );
}

#[test]
fn message_without_a_service_request() {
    let mut v = message();
    v["entry"].as_array_mut().unwrap().remove(1);
    assert_single(
        &message_err(&v),
        400,
        IssueType::Required,
        Some("Bundle.entry[0].resource.focus"),
    );
}
