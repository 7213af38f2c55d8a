//! `schemas/analytics/` must match `AnalystEvent`: regenerate with
//! `cargo run -p mskflow-analytics --bin analytics-schema` after changing it.

use std::path::PathBuf;

#[test]
fn committed_schema_matches_the_type() -> Result<(), Box<dyn std::error::Error>> {
    let (name, text) = mskflow_analytics::schema_file()?;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/analytics")
        .join(&name);
    let committed = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "schemas/analytics/{name}: {e} (run `cargo run -p mskflow-analytics --bin analytics-schema`)"
        )
    })?;
    assert!(
        committed == text,
        "schemas/analytics/{name} is out of date: run `cargo run -p mskflow-analytics --bin analytics-schema`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed)?;
    for field in ["event_id", "patient_pseudonym", "imd_decile", "data"] {
        assert!(schema["properties"].get(field).is_some(), "{field}");
    }
    for field in ["nhs_number", "postcode", "birth_date", "note"] {
        assert!(schema["properties"].get(field).is_none(), "{field}");
    }
    Ok(())
}

/// `schemas/asyncapi.yaml` names every pathway event type, and every schema
/// it references exists.
#[test]
fn asyncapi_covers_every_event_type() -> Result<(), Box<dyn std::error::Error>> {
    use mskflow_events::assessment::{AssessmentEvent, SlotEvent};
    use mskflow_events::outcomes::OutcomeEvent;
    use mskflow_events::scheduling::SchedulingEvent;

    let schemas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let doc = std::fs::read_to_string(schemas.join("asyncapi.yaml"))?;
    assert!(doc.starts_with("asyncapi: 2.6.0\n"));
    for topic in [
        "mskflow.intake.v1:",
        "mskflow.assessment.v1:",
        "mskflow.scheduling.v1:",
        "mskflow.outcomes.v1:",
        "mskflow.analytics.v1:",
    ] {
        assert!(doc.contains(topic), "{topic} missing");
    }
    assert!(doc.contains("$ref: './analytics/analyst-event.v1.schema.json'"));
    let types = mskflow_events::IntakeEvent::TYPES
        .iter()
        .chain(AssessmentEvent::TYPES)
        .chain(SlotEvent::TYPES)
        .chain(SchedulingEvent::TYPES)
        .chain(OutcomeEvent::TYPES);
    for t in types {
        let reference = format!("$ref: './events/{t}.v1.schema.json'");
        assert!(
            doc.contains(&reference),
            "{t} has no message in asyncapi.yaml"
        );
        assert!(
            doc.contains(&format!("- $ref: '#/components/messages/{t}'")),
            "{t} is on no channel"
        );
    }
    for line in doc.lines() {
        if let Some(rest) = line.trim().strip_prefix("$ref: './") {
            let path = rest.trim_end_matches('\'');
            assert!(schemas.join(path).is_file(), "{path} does not exist");
        }
    }
    Ok(())
}
