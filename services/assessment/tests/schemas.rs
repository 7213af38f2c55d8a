//! Every assessment and slot event the service really emits matches its
//! JSON Schema in `schemas/events/`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use common::{TestResult, as_log, at, consume, open_assessment, open_store, slot, triage};
use mskflow_assessment::{AssessmentRecord, Policy};
use mskflow_eventlog::StartFrom;
use mskflow_events::assessment::{
    AssessmentEvent, DistressScreen, GroupProgramme, OnwardDestination, Outcome, Party, SlotEvent,
};
use mskflow_events::types::{FcpPriority, Pathway};
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
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    triage(&*log, a, FcpPriority::Urgent, Pathway::Knee, at(0)).await?;
    triage(&*log, b, FcpPriority::Routine, Pathway::Hip, at(1)).await?;
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    let s: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    assessment
        .publish_slots(
            s.iter()
                .enumerate()
                .map(|(i, id)| slot(*id, i as i64 * 30))
                .collect(),
        )
        .await??;

    // a: booked, rescheduled, missed, rebooked, assessed with an onward
    // referral and discharged.
    assessment.book(a, s[0]).await??;
    assessment
        .reschedule(a, s[1], Party::Service, Some("clinic closed".to_owned()))
        .await??;
    assessment.record_missed(a, s[1]).await??;
    assessment.book(a, s[2]).await??;
    assessment
        .complete(
            a,
            AssessmentRecord {
                findings_summary: "Knee OA".to_owned(),
                shared_decision_made: true,
                decision_aid: None,
                work_discussed: false,
                fit_note_issued: false,
                psychological_distress: DistressScreen::NotScreened,
                bmi: Some(31.5),
                smoking_status: None,
                outcomes: vec![
                    Outcome::AdviceAndSelfManagement {
                        app: Some("SelfBack".to_owned()),
                    },
                    Outcome::GroupProgramme {
                        programme: GroupProgramme::EscapePain,
                    },
                    Outcome::OnwardReferral {
                        destination: OnwardDestination::Imaging,
                        reason: "locking".to_owned(),
                    },
                    Outcome::Discharge,
                ],
            },
        )
        .await??;
    // b: booked, then cancelled by the patient (the episode ends).
    assessment.book(b, s[3]).await??;
    assessment
        .cancel(b, Party::Patient, "moved away".to_owned(), true)
        .await??;

    let mut sub = log.subscribe("schema-check", StartFrom::Beginning).await?;
    let mut seen = BTreeSet::new();
    loop {
        let batch = sub.poll_batch(1000).await?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            let ours = AssessmentEvent::TYPES.contains(&e.event_type.as_str())
                || SlotEvent::TYPES.contains(&e.event_type.as_str());
            if !ours {
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
    let expected: BTreeSet<String> = AssessmentEvent::TYPES
        .iter()
        .chain(SlotEvent::TYPES)
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        seen, expected,
        "every event type should have been emitted and checked"
    );
    store.close().await;
    Ok(())
}
