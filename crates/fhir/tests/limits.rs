//! What JSON allows and FHIR does not, and the bounds that keep a refusal
//! cheap: each is a 400 with the issue type that names it.

#![allow(clippy::unwrap_used, reason = "test fixtures are known-good")]

use mskflow_fhir::{
    FhirError, IssueType, MAX_ISSUES, MAX_RESOURCES, parse_process_message,
    parse_questionnaire_response, parse_service_request,
};
use serde_json::{Value, json};

const MESSAGE: &str = include_str!("fixtures/referral-message.json");

fn message() -> Value {
    serde_json::from_str(MESSAGE).unwrap()
}

fn refusal<T: std::fmt::Debug>(result: Result<T, FhirError>) -> FhirError {
    result.expect_err("refused")
}

fn codes(e: &FhirError) -> Vec<IssueType> {
    e.issues.iter().map(|i| i.code).collect()
}

#[test]
fn the_same_element_twice_is_refused() {
    let text = serde_json::to_string(&message()).unwrap().replacen(
        r#""value":"9434765919""#,
        r#""value":"9434765919","value":"4010232137""#,
        1,
    );
    let e = refusal(parse_process_message(text.as_bytes()));
    assert_eq!(e.status, 400);
    assert_eq!(codes(&e), vec![IssueType::Structure]);
    assert!(
        e.issues[0].diagnostics.contains("'value' appears twice"),
        "{e}"
    );
    // The values themselves are not repeated.
    assert!(!e.to_string().contains("4010232137"), "{e}");
}

#[test]
fn control_characters_in_strings_are_refused_but_tab_and_newline_are_not() {
    let mut m = message();
    m["entry"][1]["resource"]["note"][0]["text"] = json!("line one\nline two\twith a tab");
    assert!(parse_process_message(m.to_string().as_bytes()).is_ok());
    for bad in ["Smith\u{0}", "Smith\u{1b}[2J", "\u{7f}"] {
        let mut m = message();
        m["entry"][2]["resource"]["name"][0]["family"] = json!(bad);
        let e = refusal(parse_process_message(m.to_string().as_bytes()));
        assert_eq!(e.status, 400);
        assert_eq!(codes(&e), vec![IssueType::Structure], "{e}");
    }
    let e = refusal(parse_service_request(
        br#"{"resourceType":"ServiceRequest","x\u0001":1}"#,
    ));
    assert_eq!(codes(&e), vec![IssueType::Structure]);
}

#[test]
fn a_resource_id_must_be_a_fhir_id() {
    for bad in ["../../etc/passwd", "", "a b", &"x".repeat(65)] {
        let mut m = message();
        m["entry"][2]["resource"]["id"] = json!(bad);
        let e = refusal(parse_process_message(m.to_string().as_bytes()));
        assert_eq!(e.status, 400, "{bad}");
        assert_eq!(codes(&e), vec![IssueType::Value]);
        assert_eq!(
            e.issues[0].expression.as_deref(),
            Some("Bundle.entry[2].resource.id")
        );
    }
    let mut m = message();
    m["entry"][2]["resource"]["id"] = json!("Patient-1.v2");
    assert!(parse_process_message(m.to_string().as_bytes()).is_ok());
}

#[test]
fn too_many_entries_are_refused_before_they_are_read() {
    let mut m = message();
    let entries = m["entry"].as_array_mut().unwrap();
    while entries.len() <= MAX_RESOURCES {
        entries.push(json!({"resource": {"resourceType": "Basic", "code": {"text": "x"}}}));
    }
    let e = refusal(parse_process_message(m.to_string().as_bytes()));
    assert_eq!(e.status, 400);
    assert_eq!(codes(&e), vec![IssueType::TooCostly]);
    assert_eq!(e.issues[0].expression.as_deref(), Some("Bundle.entry"));

    let mut m = message();
    m["entry"][1]["resource"]["contained"] =
        Value::Array(vec![json!({"resourceType": "Basic"}); MAX_RESOURCES + 1]);
    let e = refusal(parse_process_message(m.to_string().as_bytes()));
    assert!(codes(&e).contains(&IssueType::TooCostly), "{e}");
}

#[test]
fn issues_are_capped_and_the_rest_counted() {
    let entries: Vec<Value> = (0..500).map(|_| json!({"resource": 1})).collect();
    let body = json!({"resourceType": "Bundle", "type": "message", "entry": entries});
    let e = refusal(parse_process_message(body.to_string().as_bytes()));
    assert_eq!(e.issues.len(), MAX_ISSUES + 1);
    let last = e.issues.last().unwrap();
    assert_eq!(last.code, IssueType::TooCostly);
    assert!(
        last.diagnostics.starts_with("400 further issues"),
        "{}",
        last.diagnostics
    );
}

#[test]
fn a_questionnaire_response_is_bounded_too() {
    let items: Vec<Value> = (0..=MAX_RESOURCES)
        .map(|i| json!({"linkId": i.to_string(), "answer": [{"valueString": "x"}]}))
        .collect();
    let body = json!({
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "https://fhir.mskflow.org/Questionnaire/msk-hq",
        "item": items
    });
    let e = refusal(parse_questionnaire_response(body.to_string().as_bytes()));
    assert_eq!(codes(&e), vec![IssueType::TooCostly]);
}

#[test]
fn a_huge_array_is_refused_while_it_is_read() {
    let body = format!(
        r#"{{"resourceType":"Bundle","type":"message","entry":[{}0]}}"#,
        "0,".repeat(20_000)
    );
    let e = refusal(parse_process_message(body.as_bytes()));
    assert_eq!(e.status, 400);
    assert_eq!(codes(&e), vec![IssueType::TooCostly]);
    assert!(
        e.issues[0].diagnostics.contains("more than 10000 items"),
        "{e}"
    );
}
