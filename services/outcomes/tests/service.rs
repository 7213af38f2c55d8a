//! The application service and the consumer over the real SQLite store.

mod common;

use std::sync::Arc;

use common::{TestClock, TestResult, append_pathway_event, as_log, at, open_store};
use mskflow_eventlog::{EventLog, decode};
use mskflow_events::outcomes::{Measure, OutcomeEvent, Timepoint};
use mskflow_outcomes::consumer;
use mskflow_outcomes::domain::DomainError;
use mskflow_outcomes::scoring::{Problem, answers_in_order};
use mskflow_outcomes::service::{Handled, stream_id};
use mskflow_outcomes::{LicensedTexts, Outcomes, Policy, Refusal, Status, Submission, ValueSet};
use uuid::Uuid;

/// Outcomes over `log`, its view kept under `dir`.
async fn open(
    log: Arc<dyn EventLog>,
    clock: Arc<TestClock>,
    dir: &std::path::Path,
) -> Result<Arc<Outcomes>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Arc::new(
        Outcomes::open(
            log,
            Policy::default(),
            ValueSet::england(),
            LicensedTexts::none(),
            clock,
            &mskflow_projection::Options::in_dir(dir.join("projections")),
        )
        .await?,
    ))
}

async fn outcome_events(
    log: &dyn EventLog,
    referral_id: Uuid,
) -> Result<Vec<OutcomeEvent>, Box<dyn std::error::Error + Send + Sync>> {
    let envelopes = log.read_stream(&stream_id(referral_id), 1).await?;
    Ok(envelopes
        .iter()
        .map(decode::<OutcomeEvent>)
        .collect::<Result<Vec<_>, _>>()?)
}

fn msk_hq(referral_id: Uuid, timepoint: Timepoint, values: &[i32], response: u128) -> Submission {
    Submission {
        referral_id,
        response_id: Uuid::from_u128(response),
        measure: Measure::MskHq,
        timepoint,
        answers: answers_in_order(Measure::MskHq, values),
        correlation_id: None,
        traceparent: None,
    }
}

#[tokio::test]
async fn consumer_schedules_exactly_once_even_when_events_are_delivered_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let clock = TestClock::new(at(2026, 1, 5));
    let outcomes = open(log.clone(), clock, dir.path()).await?;

    let rid = Uuid::new_v4();
    let assessment = format!("assessment-{rid}");
    append_pathway_event(
        &*log,
        &assessment,
        "AssessmentRequested",
        rid,
        at(2026, 1, 5),
    )
    .await?;
    append_pathway_event(&*log, &assessment, "AssessmentBooked", rid, at(2026, 1, 8)).await?;
    append_pathway_event(
        &*log,
        &assessment,
        "AppointmentMissed",
        rid,
        at(2026, 1, 20),
    )
    .await?;
    append_pathway_event(
        &*log,
        &assessment,
        "EpisodeDischarged",
        rid,
        at(2026, 2, 10),
    )
    .await?;

    // First delivery, not committed (as if the process stopped before the
    // commit).
    let mut consumer = consumer::open(outcomes.clone()).await?;
    let first = consumer.process_available().await?;
    assert_eq!(
        first[..4],
        [
            Handled::Scheduled {
                referral_id: rid,
                count: 2
            },
            Handled::Unchanged { referral_id: rid },
            Handled::Ignored,
            Handled::Scheduled {
                referral_id: rid,
                count: 4
            },
        ]
    );
    drop(consumer);
    assert_eq!(outcome_events(&*log, rid).await?.len(), 6);

    // Second delivery of the same events: nothing new.
    let mut consumer = consumer::open(outcomes.clone()).await?;
    let second = consumer.process_available().await?;
    assert!(second.len() >= 4, "{second:?}");
    assert!(
        second
            .iter()
            .all(|h| !matches!(h, Handled::Scheduled { .. })),
        "{second:?}"
    );
    consumer.commit().await?;
    drop(consumer);

    let events = outcome_events(&*log, rid).await?;
    assert_eq!(events.len(), 6);
    let due: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            OutcomeEvent::QuestionnaireScheduled(s) => Some((s.measure, s.timepoint, s.due)),
            _ => None,
        })
        .collect();
    assert!(due.contains(&(Measure::MskHq, Timepoint::FirstContact, at(2026, 1, 5))));
    assert!(due.contains(&(Measure::Eq5d5l, Timepoint::Discharge, at(2026, 2, 10))));
    // Follow-up = discharge + 6 months.
    assert!(due.contains(&(Measure::MskHq, Timepoint::FollowUp, at(2026, 8, 10))));

    // After the commit nothing is delivered again.
    let mut consumer = consumer::open(outcomes.clone()).await?;
    assert!(consumer.process_available().await?.is_empty());

    // A rehab discharge later moves the unsent discharge and follow-up dates.
    let rehab = format!("rehab-{rid}");
    append_pathway_event(&*log, &rehab, "CourseCompleted", rid, at(2026, 4, 1)).await?;
    let third = consumer.process_available().await?;
    // The consumer also sees the outcome events it appended, and ignores them.
    assert_eq!(
        third[0],
        Handled::Scheduled {
            referral_id: rid,
            count: 4
        }
    );
    assert!(
        third[1..].iter().all(|h| *h == Handled::Ignored),
        "{third:?}"
    );
    let state = outcomes.get(rid).await?.ok_or("no outcomes")?;
    let follow_up = state
        .entry(Measure::MskHq, Timepoint::FollowUp)
        .ok_or("no follow-up")?;
    assert_eq!(follow_up.due, Some(at(2026, 10, 1)));
    consumer.commit().await?;
    drop(consumer);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn consumer_skips_an_event_without_a_referral_id() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let outcomes = open(log.clone(), TestClock::new(at(2026, 1, 5)), dir.path()).await?;
    log.append(
        "assessment-broken",
        mskflow_eventlog::ExpectedVersion::Any,
        vec![mskflow_eventlog::NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "EpisodeDischarged".to_owned(),
            schema_version: 1,
            occurred_at: at(2026, 1, 5),
            payload: serde_json::json!({"reason": "cancelled"}),
        }],
        &mskflow_eventlog::Metadata::default(),
    )
    .await?;
    let rid = Uuid::new_v4();
    append_pathway_event(
        &*log,
        &format!("assessment-{rid}"),
        "AssessmentRequested",
        rid,
        at(2026, 1, 5),
    )
    .await?;
    let mut consumer = consumer::open(outcomes).await?;
    let handled = consumer.process_available().await?;
    assert_eq!(handled[0], Handled::Ignored);
    assert_eq!(
        handled[1],
        Handled::Scheduled {
            referral_id: rid,
            count: 2
        }
    );
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn submitting_answers_records_completion_and_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let clock = TestClock::new(at(2026, 1, 6));
    let outcomes = open(log.clone(), clock.clone(), dir.path()).await?;
    let rid = Uuid::new_v4();
    append_pathway_event(
        &*log,
        &format!("assessment-{rid}"),
        "AssessmentRequested",
        rid,
        at(2026, 1, 5),
    )
    .await?;
    consumer::open(outcomes.clone())
        .await?
        .process_available()
        .await?;

    // Baseline: total 30.
    let baseline = outcomes
        .submit(msk_hq(
            rid,
            Timepoint::FirstContact,
            &[4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 4, 3, 2, 1],
            1,
        ))
        .await?
        .map_err(|e| e.to_string())?;
    assert_eq!(baseline.score.value(), 30.0);
    assert!(baseline.changes.is_empty());

    // Discharge: total 36, change +6 reaches the MIC of 5.
    clock.set(at(2026, 3, 1));
    let later = outcomes
        .submit(msk_hq(
            rid,
            Timepoint::Discharge,
            &[4, 4, 4, 4, 2, 2, 2, 2, 1, 1, 4, 3, 2, 1],
            2,
        ))
        .await?
        .map_err(|e| e.to_string())?;
    assert_eq!(later.score.value(), 36.0);
    assert_eq!(later.changes.len(), 1);
    let change = &later.changes[0];
    assert_eq!(
        (change.baseline, change.later, change.change),
        (30.0, 36.0, 6.0)
    );
    assert!(change.reached_minimal_important_change);
    assert_eq!(change.minimal_important_change, 5.0);

    let events = outcome_events(&*log, rid).await?;
    let types: Vec<&str> = events.iter().map(OutcomeEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "QuestionnaireScheduled",
            "QuestionnaireScheduled",
            "QuestionnaireCompleted",
            "QuestionnaireCompleted",
            "OutcomeChangeRecorded"
        ]
    );

    // A retry of the same response: the recorded result, nothing appended.
    let again = outcomes
        .submit(msk_hq(
            rid,
            Timepoint::Discharge,
            &[4, 4, 4, 4, 2, 2, 2, 2, 1, 1, 4, 3, 2, 1],
            2,
        ))
        .await?
        .map_err(|e| e.to_string())?;
    assert_eq!(again.score, later.score);
    assert_eq!(again.changes, later.changes);
    assert_eq!(outcome_events(&*log, rid).await?.len(), 5);

    // Another response for the same timepoint is refused.
    let refused = outcomes
        .submit(msk_hq(rid, Timepoint::Discharge, &[0; 14], 3))
        .await?;
    assert!(
        matches!(
            refused,
            Err(Refusal::Domain(DomainError::AlreadyCompleted { .. }))
        ),
        "{refused:?}"
    );

    // Unscorable answers are refused naming the item; nothing appended.
    let mut values = [2; 14];
    values[6] = 9;
    let refused = outcomes
        .submit(msk_hq(rid, Timepoint::FollowUp, &values, 4))
        .await?;
    let Err(Refusal::Invalid(invalid)) = refused else {
        return Err(format!("not refused: {refused:?}").into());
    };
    assert_eq!(invalid.link_ids(), vec!["7"]);
    assert!(matches!(
        invalid.problems[0].problem,
        Problem::OutOfRange { value: 9, .. }
    ));
    assert_eq!(outcome_events(&*log, rid).await?.len(), 5);

    let state = outcomes.get(rid).await?.ok_or("no outcomes")?;
    assert_eq!(
        state
            .entry(Measure::MskHq, Timepoint::FirstContact)
            .map(|e| e.status()),
        Some(Status::Completed)
    );
    assert_eq!(
        state
            .entry(Measure::Eq5d5l, Timepoint::FirstContact)
            .map(|e| e.status()),
        Some(Status::Due)
    );
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn overdue_sweep_uses_the_injected_clock_and_survives_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let clock = TestClock::new(at(2026, 1, 6));
    let outcomes = open(log.clone(), clock.clone(), dir.path()).await?;
    let rid = Uuid::new_v4();
    append_pathway_event(
        &*log,
        &format!("assessment-{rid}"),
        "AssessmentRequested",
        rid,
        at(2026, 1, 5),
    )
    .await?;
    consumer::open(outcomes.clone())
        .await?
        .process_available()
        .await?;

    let due = outcomes.list_due(at(2026, 1, 6), 10).await?;
    assert_eq!(due.len(), 2);
    assert!(
        due.iter()
            .all(|d| d.referral_id == rid && d.entry.status() == Status::Due)
    );
    assert!(outcomes.list_due(at(2026, 1, 4), 10).await?.is_empty());

    // Sent, then 28 days on: not yet overdue.
    outcomes
        .mark_sent(rid, Measure::MskHq, Timepoint::FirstContact)
        .await?
        .map_err(|e| e.to_string())?;
    clock.set(at(2026, 2, 2));
    assert_eq!(outcomes.sweep_overdue().await?, 0);
    // 29 days: both overdue, once.
    clock.set(at(2026, 2, 3));
    assert_eq!(outcomes.sweep_overdue().await?, 2);
    assert_eq!(outcomes.sweep_overdue().await?, 0);

    // A new process rebuilds the view from the log.
    let reopened = open(log.clone(), clock.clone(), dir.path()).await?;
    let due = reopened.list_due(at(2026, 2, 3), 10).await?;
    assert_eq!(due.len(), 2);
    assert!(
        due.iter().all(|d| d.entry.status() == Status::Overdue),
        "{due:?}"
    );
    assert_eq!(reopened.sweep_overdue().await?, 0);
    store.close().await;
    Ok(())
}
