//! `OperationOutcome` output is valid R4: it reads back through the models.

#![allow(clippy::unwrap_used, reason = "tests")]

use fhir_sdk::r4b::resources::OperationOutcome;
use mskflow_fhir::{
    FhirError, Issue, IssueType, Severity, operation_outcome, parse_process_message,
};
use serde_json::json;

fn read_back(value: &serde_json::Value) -> OperationOutcome {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn issues_round_trip_through_the_r4_model() {
    let issues = vec![
        Issue::error(
            IssueType::Value,
            "invalid NHS number: check digit does not match",
        )
        .at("Bundle.entry[2].resource.identifier[0].value"),
        Issue {
            severity: Severity::Warning,
            code: IssueType::CodeInvalid,
            diagnostics: "unknown red flag".into(),
            expression: None,
            details: Some((
                "https://fhir.nhs.uk/CodeSystem/http-error-codes".into(),
                "REC_UNPROCESSABLE_ENTITY".into(),
                "422: The Receiver could not process the resource.".into(),
            )),
        },
    ];
    let json = operation_outcome(&issues);
    assert_eq!(json["resourceType"], "OperationOutcome");
    assert_eq!(json["issue"][0]["severity"], "error");
    assert_eq!(json["issue"][0]["code"], "value");
    assert_eq!(
        json["issue"][0]["expression"],
        json!(["Bundle.entry[2].resource.identifier[0].value"])
    );
    assert_eq!(json["issue"][1]["severity"], "warning");
    assert!(json["issue"][1].get("expression").is_none());

    let oo = read_back(&json);
    assert_eq!(oo.issue.len(), 2);
    let first = oo.issue[0].as_ref().unwrap();
    assert_eq!(first.severity.as_ref(), "error");
    assert_eq!(first.code.as_ref(), "value");
    assert_eq!(
        first.diagnostics.as_deref(),
        Some("invalid NHS number: check digit does not match")
    );
    assert_eq!(
        first.expression,
        vec![Some(
            "Bundle.entry[2].resource.identifier[0].value".to_owned()
        )]
    );
    let second = oo.issue[1].as_ref().unwrap();
    assert_eq!(second.code.as_ref(), "code-invalid");
    let coding = second.details.as_ref().unwrap().coding[0].as_ref().unwrap();
    assert_eq!(coding.code.as_deref(), Some("REC_UNPROCESSABLE_ENTITY"));
    assert_eq!(
        coding.system.as_deref(),
        Some("https://fhir.nhs.uk/CodeSystem/http-error-codes")
    );
}

#[test]
fn every_issue_type_and_severity_is_an_r4_code() {
    let types = [
        IssueType::Invalid,
        IssueType::Structure,
        IssueType::Required,
        IssueType::Value,
        IssueType::Invariant,
        IssueType::Security,
        IssueType::Login,
        IssueType::Forbidden,
        IssueType::NotSupported,
        IssueType::Duplicate,
        IssueType::NotFound,
        IssueType::TooLong,
        IssueType::CodeInvalid,
        IssueType::Conflict,
        IssueType::BusinessRule,
        IssueType::Processing,
        IssueType::Transient,
        IssueType::Exception,
        IssueType::Throttled,
        IssueType::TooCostly,
        IssueType::Timeout,
        IssueType::Informational,
    ];
    let severities = [
        Severity::Fatal,
        Severity::Error,
        Severity::Warning,
        Severity::Information,
    ];
    let issues: Vec<Issue> = types
        .iter()
        .zip(severities.iter().cycle())
        .map(|(t, s)| Issue {
            severity: *s,
            code: *t,
            diagnostics: t.code().to_owned(),
            expression: None,
            details: None,
        })
        .collect();
    let oo = read_back(&operation_outcome(&issues));
    let codes: Vec<String> = oo
        .issue
        .iter()
        .map(|i| i.as_ref().unwrap().code.as_ref().to_owned())
        .collect();
    let expected: Vec<&str> = types.iter().map(IssueType::code).collect();
    assert_eq!(codes, expected);
}

#[test]
fn empty_issue_list_is_still_a_valid_outcome() {
    let oo = read_back(&operation_outcome(&[]));
    assert_eq!(oo.issue.len(), 1);
}

#[test]
fn a_real_refusal_becomes_a_valid_outcome() {
    let e: FhirError =
        parse_process_message(br#"{"resourceType":"Bundle","type":"message","entry":[]}"#)
            .unwrap_err();
    assert_eq!(e.status, 400);
    let json = e.operation_outcome();
    let oo = read_back(&json);
    let issue = oo.issue[0].as_ref().unwrap();
    assert_eq!(issue.code.as_ref(), "required");
    assert_eq!(
        issue.expression,
        vec![Some("Bundle.entry[0].resource".to_owned())]
    );
}

#[test]
fn error_display_names_status_codes_and_locations() {
    let e = FhirError::unprocessable(vec![
        Issue::error(IssueType::NotSupported, "event not supported")
            .at("Bundle.entry[0].resource.eventCoding"),
    ]);
    assert_eq!(
        e.to_string(),
        "FHIR input refused (422); not-supported at Bundle.entry[0].resource.eventCoding: event not supported"
    );
    assert_eq!(FhirError::bad_request(vec![]).status, 400);
}
