//! Whatever arrives, parsing answers (a referral or an error) and never
//! panics; every refusal is a 400 or 422 with at least one issue and a valid
//! OperationOutcome.

#![allow(clippy::unwrap_used, reason = "tests")]

use fhir_sdk::r4b::resources::OperationOutcome;
use mskflow_fhir::{FhirError, parse_process_message, parse_service_request};
use proptest::prelude::*;
use serde_json::{Map, Value};

const MESSAGE: &str = include_str!("fixtures/referral-message.json");
const SERVICE_REQUEST: &str = include_str!("fixtures/referral-service-request.json");

fn check<T>(result: Result<T, FhirError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(e.status == 400 || e.status == 422, "status {}", e.status);
        prop_assert!(!e.issues.is_empty());
        let oo: Result<OperationOutcome, _> = serde_json::from_value(e.operation_outcome());
        prop_assert!(oo.is_ok(), "{:?}", oo.err());
    }
    Ok(())
}

fn both(body: &[u8]) -> Result<(), TestCaseError> {
    check(parse_process_message(body))?;
    check(parse_service_request(body))
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("Bundle"),
            Just("ServiceRequest"),
            Just("Patient"),
            Just("Observation"),
            Just("MessageHeader"),
            Just("message"),
            Just("active"),
            Just("#pat"),
            Just("9434765919"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("resourceType".to_owned()),
                        Just("entry".to_owned()),
                        Just("resource".to_owned()),
                        Just("type".to_owned()),
                        Just("subject".to_owned()),
                        Just("reference".to_owned()),
                        Just("contained".to_owned()),
                        Just("identifier".to_owned()),
                        "[a-z]{1,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every path to a value inside `v`, as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// The fixture with one element replaced by `with`, or removed.
fn mutate(fixture: &str, pick: prop::sample::Index, with: Option<Value>) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(fixture).unwrap();
    let mut all = Vec::new();
    pointers(&v, String::new(), &mut all);
    let target = pick.get(&all).clone();
    match with {
        Some(new) => {
            if let Some(slot) = v.pointer_mut(&target) {
                *slot = new;
            }
        }
        None => {
            let (parent, key) = target.rsplit_once('/').unwrap();
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        a.remove(i);
                    }
                }
                _ => {}
            }
        }
    }
    serde_json::to_vec(&v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        both(&body)?;
    }

    #[test]
    fn arbitrary_json(v in arb_json()) {
        both(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn arbitrary_json_under_a_resource_type(
        fields in prop::collection::vec(("[a-zA-Z]{1,10}", arb_json()), 0..8),
        resource_type in prop_oneof![Just("Bundle"), Just("ServiceRequest")],
    ) {
        let mut m: Map<String, Value> = fields.into_iter().collect();
        m.insert("resourceType".into(), resource_type.into());
        both(&serde_json::to_vec(&Value::Object(m)).unwrap())?;
    }

    #[test]
    fn message_with_one_element_changed(pick in any::<prop::sample::Index>(), with in prop::option::of(arb_json())) {
        check(parse_process_message(&mutate(MESSAGE, pick, with)))?;
    }

    #[test]
    fn service_request_with_one_element_changed(pick in any::<prop::sample::Index>(), with in prop::option::of(arb_json())) {
        check(parse_service_request(&mutate(SERVICE_REQUEST, pick, with)))?;
    }
}

#[test]
fn deeply_nested_json_is_refused_not_overflowed() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        parse_process_message(deep.as_bytes()).unwrap_err().status,
        400
    );
    let deep_obj = format!(
        "{{\"resourceType\":\"ServiceRequest\",\"x\":{}1{}}}",
        "{\"a\":".repeat(100_000),
        "}".repeat(100_000)
    );
    assert_eq!(
        parse_service_request(deep_obj.as_bytes())
            .unwrap_err()
            .status,
        400
    );
}

/// Nesting as deep as the JSON reader allows, in an element the models
/// recurse into (extensions of extensions; 61 levels reach the JSON
/// reader's limit of 128), on a small (2 MiB) thread stack.
#[test]
fn deepest_accepted_nesting_fits_on_a_worker_stack() {
    let mut ext = serde_json::json!({"url": "https://example.org/leaf", "valueBoolean": true});
    for _ in 0..61 {
        ext = serde_json::json!({"url": "https://example.org/x", "extension": [ext]});
    }
    let mut v: Value = serde_json::from_str(SERVICE_REQUEST).unwrap();
    v["contained"][0]["extension"] = Value::Array(vec![ext]);
    let body = serde_json::to_vec(&v).unwrap();
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            (
                parse_service_request(&body).is_ok(),
                parse_process_message(&body).is_err(),
            )
        })
        .unwrap();
    assert_eq!(handle.join().ok(), Some((true, true)));
}
