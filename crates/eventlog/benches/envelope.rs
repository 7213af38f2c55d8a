//! Envelope encode + decode (the stored and wire form of every event) on a
//! `ReferralReceived`-sized event, beside its ceiling: a `serde_json::Value`
//! round trip of the same bytes (untyped, no field checks).
//!
//! `cargo bench -p mskflow-eventlog --bench envelope`

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mskflow_eventlog::Envelope;
use uuid::Uuid;

const FHIR: &str = include_str!("../../fhir/tests/fixtures/referral-message.json");

/// A received referral as intake records it: the details and the FHIR JSON
/// as sent.
fn envelope() -> Envelope {
    let referral_id = Uuid::new_v4();
    Envelope {
        event_id: Uuid::new_v4(),
        stream_id: format!("referral-{referral_id}"),
        sequence: 1,
        position: 12_345,
        occurred_at: Utc::now(),
        recorded_at: Utc::now(),
        causation_id: Some(Uuid::new_v4()),
        correlation_id: Uuid::new_v4(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        tracestate: None,
        event_type: "ReferralReceived".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({
            "referral_id": referral_id,
            "request_id": Uuid::new_v4(),
            "received_via": "process-message",
            "sender": {"ods_code": "A81001", "endpoint": "https://gp.example.nhs.uk/fhir/messages",
                       "message_id": Uuid::new_v4(), "software": "GP Clinical System"},
            "service_request_identifier": {"system": "https://gp.example.nhs.uk/Id/referral", "value": "REF-2026-000123"},
            "patient": {"nhs_number": "9434765919", "family": "Smith", "given": ["Jane", "Anne"],
                        "birth_date": "1968-04-12", "sex": "female", "postcode": "LS1 5HD",
                        "ethnicity": {"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory", "code": "A", "display": null}},
            "requester": {"display": "Dr Amrit Jones", "ods_code": "A81001"},
            "reason": [{"system": "http://snomed.info/sct", "code": "30989003", "display": "Knee pain"}],
            "body_site": [{"system": "http://snomed.info/sct", "code": "72696002", "display": "Knee region structure"}],
            "requested_priority": "routine",
            "red_flags": [],
            "start_back": [false, true, true, false, false, false, false, false, false],
            "note": "Right knee pain for 3 months, worse on stairs.",
            "authored_on": "2026-11-20T09:30:00+00:00",
            "fhir_json": FHIR,
        }),
    }
}

fn envelope_serde(c: &mut Criterion) {
    let env = envelope();
    let Ok(bytes) = serde_json::to_vec(&env) else {
        eprintln!("the envelope does not serialise");
        std::process::exit(1);
    };
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_decode", |b| {
        b.iter(|| {
            let out = serde_json::to_vec(black_box(&env)).unwrap_or_default();
            serde_json::from_slice::<Envelope>(black_box(&out)).is_ok()
        })
    });
    group.bench_function("ceiling_value_round_trip", |b| {
        b.iter(|| {
            let value: serde_json::Value =
                serde_json::from_slice(black_box(&bytes)).unwrap_or_default();
            serde_json::to_vec(black_box(&value)).unwrap_or_default()
        })
    });
    group.finish();
}

criterion_group!(benches, envelope_serde);
criterion_main!(benches);
