//! Every outcome event the service really emits matches its JSON Schema in
//! `schemas/events/`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use common::{TestClock, TestResult, append_pathway_event, as_log, at, open_store};
use mskflow_eventlog::StartFrom;
use mskflow_events::outcomes::{Measure, OutcomeEvent, Timepoint};
use mskflow_outcomes::consumer;
use mskflow_outcomes::scoring::answers_in_order;
use mskflow_outcomes::{LicensedTexts, Outcomes, Policy, Submission, ValueSet};
use uuid::Uuid;

fn schema(
    event_type: &str,
    version: u32,
) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/events")
        .join(format!("{event_type}.v{version}.schema.json"));
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[tokio::test]
async fn emitted_events_match_their_schemas() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let clock = TestClock::new(at(2026, 1, 6));
    let outcomes = Arc::new(
        Outcomes::open(
            log.clone(),
            Policy::default(),
            ValueSet::england(),
            LicensedTexts::none(),
            clock.clone(),
            &mskflow_projection::Options::in_dir(dir.path().join("projections")),
        )
        .await?,
    );
    let rid = Uuid::new_v4();
    append_pathway_event(
        &*log,
        &format!("assessment-{rid}"),
        "AssessmentRequested",
        rid,
        at(2026, 1, 5),
    )
    .await?;
    append_pathway_event(
        &*log,
        &format!("assessment-{rid}"),
        "EpisodeDischarged",
        rid,
        at(2026, 3, 5),
    )
    .await?;
    consumer::open(outcomes.clone())
        .await?
        .process_available()
        .await?;
    outcomes
        .mark_sent(rid, Measure::MskHq, Timepoint::Discharge)
        .await?
        .map_err(|e| e.to_string())?;
    let submissions = [
        (Measure::MskHq, Timepoint::FirstContact, vec![1; 14]),
        (Measure::MskHq, Timepoint::Discharge, vec![3; 14]),
        (
            Measure::StartBack,
            Timepoint::FirstContact,
            vec![1, 0, 1, 0, 1, 1, 1, 0, 5],
        ),
        (
            Measure::Eq5d5l,
            Timepoint::FirstContact,
            vec![2, 2, 3, 3, 2, 55],
        ),
        (
            Measure::Eq5d5l,
            Timepoint::Discharge,
            vec![1, 1, 2, 2, 1, 80],
        ),
        (Measure::Psfs, Timepoint::FirstContact, vec![2, 3]),
        (Measure::Psfs, Timepoint::Discharge, vec![6, 7]),
    ];
    for (measure, timepoint, values) in submissions {
        outcomes
            .submit(Submission {
                referral_id: rid,
                response_id: Uuid::new_v4(),
                measure,
                timepoint,
                answers: answers_in_order(measure, &values),
                correlation_id: None,
                traceparent: None,
            })
            .await?
            .map_err(|e| e.to_string())?;
    }
    clock.set(at(2026, 12, 1));
    assert!(outcomes.sweep_overdue().await? > 0);

    let mut sub = log
        .subscribe(
            &format!("schema-check-{}", Uuid::new_v4()),
            StartFrom::Beginning,
        )
        .await?;
    let mut seen = BTreeSet::new();
    loop {
        let batch = sub.poll_batch(500).await?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            if !OutcomeEvent::TYPES.contains(&e.event_type.as_str()) {
                continue;
            }
            let validator = jsonschema::validator_for(&schema(&e.event_type, e.schema_version)?)?;
            let errors: Vec<String> = validator
                .iter_errors(&e.payload)
                .map(|err| err.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{} breaks its schema: {errors:?}",
                e.event_type
            );
            seen.insert(e.event_type);
        }
    }
    let all: BTreeSet<String> = OutcomeEvent::TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    assert_eq!(
        seen, all,
        "every outcome event type was emitted and checked"
    );
    store.close().await;
    Ok(())
}
