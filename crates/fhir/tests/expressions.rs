//! Every validation rule names the element it refuses: one case per rule,
//! each asserting the status, the issue type and the FHIRPath `expression`,
//! in a message Bundle and, where the rule applies, in a plain
//! ServiceRequest with its Patient contained.

#![allow(clippy::unwrap_used, reason = "test fixtures are known-good")]

use mskflow_fhir::{FhirError, IssueType, parse_process_message, parse_service_request};
use serde_json::{Value, json};

const MESSAGE: &str = include_str!("fixtures/referral-message.json");
const SERVICE_REQUEST: &str = include_str!("fixtures/referral-service-request.json");

/// Where a case starts from.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// `$process-message`: entry 0 MessageHeader, 1 ServiceRequest,
    /// 2 Patient, 3 Organization, 4 PractitionerRole, 6 and 7 red-flag
    /// Observations, 8 STarT Back QuestionnaireResponse.
    Message,
    /// `POST /ServiceRequest`: contained 0 Patient, 1 red-flag Observation.
    ServiceRequest,
}

struct Case {
    rule: &'static str,
    input: Input,
    change: fn(&mut Value),
    status: u16,
    code: IssueType,
    expression: &'static str,
}

fn refusal(input: Input, change: fn(&mut Value)) -> Option<FhirError> {
    let mut v: Value = match input {
        Input::Message => serde_json::from_str(MESSAGE).unwrap(),
        Input::ServiceRequest => serde_json::from_str(SERVICE_REQUEST).unwrap(),
    };
    change(&mut v);
    let body = serde_json::to_vec(&v).unwrap();
    match input {
        Input::Message => parse_process_message(&body).err(),
        Input::ServiceRequest => parse_service_request(&body).err(),
    }
}

fn cases() -> Vec<Case> {
    vec![
        // NHS number: system, presence, value, modulus 11 check digit.
        Case {
            rule: "NHS number under a mistyped system",
            input: Input::Message,
            change: |v| {
                v["entry"][2]["resource"]["identifier"][0]["system"] =
                    json!("http://fhir.nhs.uk/Id/nhs-number")
            },
            status: 422,
            code: IssueType::Value,
            expression: "Bundle.entry[2].resource.identifier[0].system",
        },
        Case {
            rule: "NHS number under a retired system",
            input: Input::ServiceRequest,
            change: |v| {
                v["contained"][0]["identifier"][0]["system"] =
                    json!("https://fhir.nhs.net/Id/nhs-number")
            },
            status: 422,
            code: IssueType::Value,
            expression: "ServiceRequest.contained[0].identifier[0].system",
        },
        Case {
            rule: "no NHS number identifier",
            input: Input::Message,
            change: |v| {
                v["entry"][2]["resource"]["identifier"] =
                    json!([{"system": "https://fhir.example.org/Id/mrn", "value": "A1"}])
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.entry[2].resource.identifier",
        },
        Case {
            rule: "NHS number identifier without a value",
            input: Input::ServiceRequest,
            change: |v| {
                v["contained"][0]["identifier"] =
                    json!([{"system": "https://fhir.nhs.uk/Id/nhs-number"}])
            },
            status: 400,
            code: IssueType::Required,
            expression: "ServiceRequest.contained[0].identifier[0].value",
        },
        Case {
            rule: "NHS number failing the modulus 11 check",
            input: Input::Message,
            change: |v| v["entry"][2]["resource"]["identifier"][0]["value"] = json!("9434765918"),
            status: 422,
            code: IssueType::Value,
            expression: "Bundle.entry[2].resource.identifier[0].value",
        },
        Case {
            rule: "NHS number of the wrong length",
            input: Input::ServiceRequest,
            change: |v| v["contained"][0]["identifier"][0]["value"] = json!("94347659"),
            status: 422,
            code: IssueType::Value,
            expression: "ServiceRequest.contained[0].identifier[0].value",
        },
        // ODS codes.
        Case {
            rule: "sender ODS code that is not one",
            input: Input::Message,
            change: |v| {
                v["entry"][3]["resource"]["identifier"][0]["value"] = json!("not an ODS code!")
            },
            status: 422,
            code: IssueType::Value,
            expression: "Bundle.entry[3].resource.identifier[0].value",
        },
        Case {
            rule: "requester ODS code that is not one",
            input: Input::ServiceRequest,
            change: |v| v["requester"]["identifier"]["value"] = json!("??"),
            status: 422,
            code: IssueType::Value,
            expression: "ServiceRequest.requester.identifier.value",
        },
        Case {
            rule: "MessageHeader.sender ODS identifier that is not one",
            input: Input::Message,
            change: |v| {
                v["entry"][0]["resource"]["sender"] = json!({"identifier": {
                    "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "#"}})
            },
            status: 422,
            code: IssueType::Value,
            expression: "Bundle.entry[0].resource.sender.identifier.value",
        },
        // Required elements.
        Case {
            rule: "ServiceRequest without subject",
            input: Input::ServiceRequest,
            change: |v| {
                v.as_object_mut().unwrap().remove("subject");
            },
            status: 400,
            code: IssueType::Required,
            expression: "ServiceRequest.subject",
        },
        Case {
            rule: "ServiceRequest without intent",
            input: Input::Message,
            change: |v| {
                v["entry"][1]["resource"]
                    .as_object_mut()
                    .unwrap()
                    .remove("intent");
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.entry[1].resource.intent",
        },
        Case {
            rule: "subject that does not resolve",
            input: Input::Message,
            change: |v| {
                v["entry"][1]["resource"]["subject"] =
                    json!({"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"})
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.entry[1].resource.subject",
        },
        Case {
            rule: "message whose first entry is not its MessageHeader",
            input: Input::Message,
            change: |v| {
                let entries = v["entry"].as_array_mut().unwrap();
                entries.swap(0, 1);
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.entry[0].resource",
        },
        Case {
            rule: "MessageHeader without source",
            input: Input::Message,
            change: |v| {
                v["entry"][0]["resource"]
                    .as_object_mut()
                    .unwrap()
                    .remove("source");
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.entry[0].resource.source",
        },
        Case {
            rule: "Bundle without type",
            input: Input::Message,
            change: |v| {
                v.as_object_mut().unwrap().remove("type");
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.type",
        },
        Case {
            rule: "red flag without a value",
            input: Input::Message,
            change: |v| {
                v["entry"][6]["resource"]
                    .as_object_mut()
                    .unwrap()
                    .remove("valueBoolean");
            },
            status: 400,
            code: IssueType::Required,
            expression: "Bundle.entry[6].resource.valueBoolean",
        },
        Case {
            rule: "STarT Back item without an answer",
            input: Input::Message,
            change: |v| {
                let items = v["entry"][8]["resource"]["item"].as_array_mut().unwrap();
                items.retain(|i| i["linkId"] != "4");
            },
            status: 422,
            code: IssueType::Required,
            expression: "Bundle.entry[8].resource.item.where(linkId='4')",
        },
        // Codes: FHIR value sets, this service's own code systems, message events.
        Case {
            rule: "priority outside its value set",
            input: Input::Message,
            change: |v| v["entry"][1]["resource"]["priority"] = json!("whenever"),
            status: 400,
            code: IssueType::CodeInvalid,
            expression: "Bundle.entry[1].resource.priority",
        },
        Case {
            rule: "gender outside its value set",
            input: Input::ServiceRequest,
            change: |v| v["contained"][0]["gender"] = json!("f"),
            status: 400,
            code: IssueType::CodeInvalid,
            expression: "ServiceRequest.contained[0].gender",
        },
        Case {
            rule: "unknown red-flag code",
            input: Input::ServiceRequest,
            change: |v| v["contained"][1]["code"]["coding"][0]["code"] = json!("itchy-elbow"),
            status: 422,
            code: IssueType::CodeInvalid,
            expression: "ServiceRequest.contained[1].code.coding[0].code",
        },
        Case {
            rule: "message event of an unknown code system",
            input: Input::Message,
            change: |v| {
                v["entry"][0]["resource"]["eventCoding"]["system"] =
                    json!("https://example.org/CodeSystem/events")
            },
            status: 422,
            code: IssueType::NotSupported,
            expression: "Bundle.entry[0].resource.eventCoding",
        },
        Case {
            rule: "ServiceRequest status other than active",
            input: Input::ServiceRequest,
            change: |v| v["status"] = json!("completed"),
            status: 422,
            code: IssueType::Value,
            expression: "ServiceRequest.status",
        },
        Case {
            rule: "a JSON type the element does not have",
            input: Input::Message,
            change: |v| v["entry"][2]["resource"]["birthDate"] = json!(19680412),
            status: 400,
            code: IssueType::Structure,
            expression: "Bundle.entry[2].resource.birthDate",
        },
    ]
}

#[test]
fn every_rule_names_the_element_it_refuses() {
    let mut wrong = Vec::new();
    for case in cases() {
        let Some(e) = refusal(case.input, case.change) else {
            wrong.push(format!("{}: was accepted", case.rule));
            continue;
        };
        let found = e
            .issues
            .iter()
            .any(|i| i.code == case.code && i.expression.as_deref() == Some(case.expression));
        if e.status != case.status || !found {
            wrong.push(format!(
                "{}: expected {} {} at {}, got {e}",
                case.rule,
                case.status,
                case.code.code(),
                case.expression
            ));
        }
        // Every issue of a validation refusal is located.
        for i in &e.issues {
            if i.expression.as_deref().is_none_or(str::is_empty) {
                wrong.push(format!("{}: an issue without expression: {i:?}", case.rule));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
