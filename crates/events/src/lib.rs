//! Versioned domain events: the record of the pathway.
//!
//! Each service owns one enum of past-tense events. They are adjacently tagged
//! (`{"type": "ReferralReceived", "data": {..}}`): the tag travels as the
//! envelope's `event_type`, the content as its payload, and
//! [`SCHEMA_VERSION`] as its `schema_version`. JSON Schemas in `schemas/` are
//! generated from these types (`cargo run -p mskflow-events --bin schemas`)
//! and checked against real emitted events in the tests.

pub mod assessment;
pub mod audit;
pub mod delivery;
pub mod intake;
pub mod operations;
pub mod outcomes;
pub mod scheduling;
pub mod selfreferral;
pub mod subscription;
pub mod types;

pub use intake::IntakeEvent;
pub use types::{NhsNumber, OdsCode};

/// Current payload schema version of every event type defined here.
pub const SCHEMA_VERSION: u32 = 1;

/// Code system of red-flag findings (`Observation.code` in a referral).
pub const RED_FLAG_SYSTEM: &str = "https://fhir.mskflow.org/CodeSystem/msk-red-flag";
/// Code system of STarT Back items (`QuestionnaireResponse.item.linkId` 1..9).
pub const START_BACK_QUESTIONNAIRE: &str = "https://fhir.mskflow.org/Questionnaire/start-back";
/// NHS number identifier system.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// ODS organisation code identifier system.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// Every event type, with its JSON Schema (for `schemas/`).
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    let mut all = intake::schemas();
    all.extend(assessment::schemas());
    all.extend(delivery::schemas());
    all.extend(scheduling::schemas());
    all.extend(outcomes::schemas());
    all.extend(operations::schemas());
    all.extend(audit::schemas());
    all.extend(subscription::schemas());
    all.extend(selfreferral::schemas());
    all
}

/// The files of `schemas/events/`: `{EventType}.v{SCHEMA_VERSION}.schema.json`
/// and their pretty-printed text (with a trailing newline).
pub fn schema_files() -> Result<Vec<(String, String)>, serde_json::Error> {
    schemas()
        .into_iter()
        .map(|(name, schema)| {
            let mut value = schema.to_value();
            if let Some(obj) = value.as_object_mut() {
                obj.insert(
                    "$id".to_owned(),
                    serde_json::Value::String(format!(
                        "https://fhir.mskflow.org/schemas/events/{name}.v{SCHEMA_VERSION}.schema.json"
                    )),
                );
            }
            let text = serde_json::to_string_pretty(&value)? + "\n";
            Ok((format!("{name}.v{SCHEMA_VERSION}.schema.json"), text))
        })
        .collect()
}
