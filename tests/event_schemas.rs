//! Every event the system really emits matches its JSON Schema in `schemas/`.

mod common;

use common::*;
use serde_json::Value;

fn load(path: &str) -> TestResult<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        repo_root().join(path),
    )?)?)
}

#[tokio::test]
async fn emitted_events_match_their_schemas() -> TestResult {
    let app = spawn_app().await?;
    // One referral of each outcome: triaged (with STarT Back if the fixture
    // has it), redirected, rejected (under 16).
    let triaged = new_referral_message()?;
    assert_eq!(app.post_message(&triaged).await?.status().as_u16(), 200);
    let mut redirected = new_referral_message()?;
    add_red_flag(&mut redirected, "persistent-joint-swelling", true)?;
    assert_eq!(app.post_message(&redirected).await?.status().as_u16(), 200);
    let mut child = new_referral_message()?;
    let year = chrono::Utc::now().format("%Y").to_string().parse::<i32>()? - 8;
    with_resource(&mut child, "Patient", |p| {
        p["birthDate"] = serde_json::json!(format!("{year}-01-01"))
    })?;
    assert_eq!(app.post_message(&child).await?.status().as_u16(), 200);
    // And one cancelled by its referrer.
    assert_eq!(app.post_message(&as_update(&triaged, "revoked")?).await?.status().as_u16(), 200);

    let envelope_schema = jsonschema::validator_for(&load("schemas/envelope.v1.schema.json")?)?;
    let events = app.all_events().await?;
    let mut seen = std::collections::BTreeSet::new();
    for e in &events {
        let envelope = serde_json::to_value(e)?;
        let errors: Vec<String> = envelope_schema
            .iter_errors(&envelope)
            .map(|err| err.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "envelope of {} breaks its schema: {errors:?}",
            e.event_type
        );
        let schema = load(&format!(
            "schemas/events/{}.v{}.schema.json",
            e.event_type, e.schema_version
        ))?;
        let validator = jsonschema::validator_for(&schema)?;
        let errors: Vec<String> = validator
            .iter_errors(&e.payload)
            .map(|err| err.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} breaks its schema: {errors:?}",
            e.event_type
        );
        seen.insert(e.event_type.clone());
    }
    let expected: std::collections::BTreeSet<String> = mskflow_events::IntakeEvent::TYPES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        seen, expected,
        "every intake event type should have been emitted and checked"
    );
    Ok(())
}
