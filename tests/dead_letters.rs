//! Dead letters over the real all-in-one: an event a consumer can never
//! handle is set aside on `deadletter-{consumer}` without stopping the
//! consumer, and operators list, retry and discard it with
//! `mskflow dead-letters`.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use mskflow_eventlog::{Envelope, ExpectedVersion, Metadata, NewEvent};
use mskflow_events::assessment::{
    AssessmentCompleted, AssessmentEvent, AssessmentRequested, DistressScreen, Outcome,
};
use mskflow_events::operations::{EventDeadLettered, OperationsEvent};
use mskflow_events::types::{FcpPriority, Pathway};
use tokio::process::Command;
use uuid::Uuid;

/// An `AssessmentCompleted` whose payload does not decode, on a fresh
/// `assessment-{id}` stream. Returns its event id.
async fn append_poison(app: &App) -> TestResult<Uuid> {
    let event_id = Uuid::new_v4();
    let poison = NewEvent {
        event_id,
        event_type: "AssessmentCompleted".to_owned(),
        schema_version: mskflow_events::SCHEMA_VERSION,
        occurred_at: Utc::now(),
        payload: serde_json::json!({ "referral_id": "not a uuid", "outcomes": 7 }),
    };
    app.log()?
        .append(
            &format!("assessment-{}", Uuid::new_v4()),
            ExpectedVersion::NoStream,
            vec![poison],
            &Metadata {
                correlation_id: Uuid::new_v4(),
                ..Metadata::default()
            },
        )
        .await?;
    Ok(event_id)
}

/// The operations events on `deadletter-{consumer}` about `event_id`.
async fn dead_letter_events(
    app: &App,
    consumer: &str,
    event_id: Uuid,
) -> TestResult<Vec<OperationsEvent>> {
    let stream = app
        .log()?
        .read_stream(&format!("deadletter-{consumer}"), 1)
        .await?;
    Ok(stream
        .iter()
        .map(mskflow_eventlog::decode::<OperationsEvent>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|e| e.event_id() == event_id)
        .collect())
}

/// Wait (bounded) until `deadletter-{consumer}` holds an `EventDeadLettered`
/// for `event_id` with `attempts`.
async fn dead_lettered(
    app: &App,
    consumer: &str,
    event_id: Uuid,
    attempts: u32,
) -> TestResult<EventDeadLettered> {
    for _ in 0..100 {
        for e in dead_letter_events(app, consumer, event_id).await? {
            if let OperationsEvent::EventDeadLettered(d) = e
                && d.attempts == attempts
            {
                return Ok(d);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{event_id} not dead-lettered by {consumer} with {attempts} attempts").into())
}

/// Run `mskflow dead-letters ARGS --data-dir DIR`; returns (success, stdout,
/// stderr).
async fn dead_letters_cli(app: &App, args: &[&str]) -> TestResult<(bool, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .arg("dead-letters")
        .args(args)
        .arg("--data-dir")
        .arg(&app.dir)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

async fn append_assessment(
    app: &App,
    stream: &str,
    expected: ExpectedVersion,
    event: &AssessmentEvent,
) -> TestResult {
    let new = mskflow_eventlog::new_event(event, mskflow_events::SCHEMA_VERSION, Utc::now())?;
    app.log()?
        .append(
            stream,
            expected,
            vec![new],
            &Metadata {
                correlation_id: Uuid::new_v4(),
                ..Metadata::default()
            },
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_listed_and_discarded() -> TestResult {
    let app = spawn_app().await?;
    let poison = append_poison(&app).await?;

    // A valid assessment right behind it still reaches the waiting list.
    let referral_id = Uuid::new_v4();
    let stream = format!("assessment-{referral_id}");
    append_assessment(
        &app,
        &stream,
        ExpectedVersion::NoStream,
        &AssessmentEvent::AssessmentRequested(AssessmentRequested {
            referral_id,
            priority: FcpPriority::Routine,
            pathway: Pathway::Knee,
            triaged_at: Utc::now(),
        }),
    )
    .await?;
    append_assessment(
        &app,
        &stream,
        ExpectedVersion::Exact(1),
        &AssessmentEvent::AssessmentCompleted(AssessmentCompleted {
            referral_id,
            slot_id: Uuid::new_v4(),
            clinician_id: "fcp-7".to_owned(),
            findings_summary: "knee pain on stairs".to_owned(),
            shared_decision_made: true,
            decision_aid: None,
            work_discussed: false,
            fit_note_issued: false,
            psychological_distress: DistressScreen::Negative,
            bmi: None,
            smoking_status: None,
            outcomes: vec![Outcome::CommunityPhysiotherapy],
        }),
    )
    .await?;

    let letter = dead_lettered(&app, "scheduling", poison, 1).await?;
    assert_eq!(letter.consumer, "scheduling");
    assert_eq!(letter.event_type, "AssessmentCompleted");
    assert!(letter.stream_id.starts_with("assessment-"));
    assert_eq!(letter.sequence, 1);
    // The reason says what went wrong, never what the payload holds.
    assert!(!letter.reason.contains("not a uuid"), "{}", letter.reason);
    assert!(
        letter.reason.contains("cannot be decoded"),
        "{}",
        letter.reason
    );

    let mut waitlisted = false;
    for _ in 0..100 {
        let rehab = app
            .log()?
            .read_stream(&format!("rehab-{referral_id}"), 1)
            .await?;
        if rehab.iter().any(|e| e.event_type == "PatientWaitlisted") {
            waitlisted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waitlisted, "the event after the poison was not handled");

    // Listed, with where it is and why.
    let (ok, list, err) = dead_letters_cli(&app, &["list", "--consumer", "scheduling"]).await?;
    assert!(ok, "list failed: {err}");
    let line = list
        .lines()
        .find(|l| l.contains(&poison.to_string()))
        .ok_or_else(|| format!("{poison} not listed:\n{list}"))?;
    assert!(line.starts_with("scheduling"), "{line}");
    assert!(line.contains("AssessmentCompleted"), "{line}");
    assert!(line.contains(&format!("{}#1", letter.stream_id)), "{line}");
    assert!(line.contains("attempts 1"), "{line}");
    let (ok, all, _) = dead_letters_cli(&app, &["list"]).await?;
    assert!(ok && all.contains(&poison.to_string()), "{all}");

    // `status` counts it.
    let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .args(["status", "--url", "http://127.0.0.1:9", "--data-dir"])
        .arg(&app.dir)
        .output()
        .await?;
    let status = String::from_utf8(out.stdout)?;
    assert!(status.contains("scheduling 1"), "{status}");

    // A reason is required to discard.
    let id = poison.to_string();
    let (ok, _, _) = dead_letters_cli(
        &app,
        &["discard", &id, "--consumer", "scheduling", "--by", "ops"],
    )
    .await?;
    assert!(!ok, "discard without a reason must fail");

    let (ok, out, err) = dead_letters_cli(
        &app,
        &[
            "discard",
            &id,
            "--consumer",
            "scheduling",
            "--reason",
            "test data written by hand",
            "--by",
            "ops-on-call",
        ],
    )
    .await?;
    assert!(ok, "discard failed: {out} {err}");

    let (ok, list, _) = dead_letters_cli(&app, &["list", "--consumer", "scheduling"]).await?;
    assert!(ok);
    assert!(
        !list.contains(&id),
        "discarded letter still listed:\n{list}"
    );
    assert!(list.contains("no open dead letters"), "{list}");
    let discarded = dead_letter_events(&app, "scheduling", poison)
        .await?
        .into_iter()
        .find_map(|e| match e {
            OperationsEvent::DeadLetterDiscarded(d) => Some(d),
            _ => None,
        })
        .ok_or("no DeadLetterDiscarded in the log")?;
    assert_eq!(discarded.reason, "test data written by hand");
    assert_eq!(discarded.discarded_by, "ops-on-call");

    // A discarded letter cannot be discarded or retried again.
    let (ok, _, err) = dead_letters_cli(
        &app,
        &["retry", &id, "--consumer", "scheduling", "--by", "ops"],
    )
    .await?;
    assert!(!ok, "retry of a discarded letter must fail");
    assert!(err.contains("no longer open"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_retry_that_fails_again_counts_another_attempt() -> TestResult {
    let app = spawn_app().await?;
    let poison = append_poison(&app).await?;
    dead_lettered(&app, "scheduling", poison, 1).await?;

    let id = poison.to_string();
    let (ok, out, err) = dead_letters_cli(
        &app,
        &["retry", &id, "--consumer", "scheduling", "--by", "ops"],
    )
    .await?;
    assert!(ok, "retry failed: {out} {err}");

    // The running consumer tries it again; it still does not decode.
    let again = dead_lettered(&app, "scheduling", poison, 2).await?;
    assert_eq!(again.event_type, "AssessmentCompleted");
    let events = dead_letter_events(&app, "scheduling", poison).await?;
    let types: Vec<&str> = events.iter().map(OperationsEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "EventDeadLettered",
            "DeadLetterRetryRequested",
            "EventDeadLettered"
        ]
    );

    let (ok, list, _) = dead_letters_cli(&app, &["list", "--consumer", "scheduling"]).await?;
    assert!(ok);
    let line = list
        .lines()
        .find(|l| l.contains(&id))
        .ok_or_else(|| format!("{poison} not listed:\n{list}"))?;
    assert!(line.contains("attempts 2"), "{line}");

    // Unknown consumers and events are refused.
    let (ok, _, _) = dead_letters_cli(&app, &["list", "--consumer", "nobody"]).await?;
    assert!(!ok);
    let unknown = Uuid::new_v4().to_string();
    let (ok, _, err) = dead_letters_cli(
        &app,
        &["retry", &unknown, "--consumer", "scheduling", "--by", "ops"],
    )
    .await?;
    assert!(!ok);
    assert!(err.contains("no dead letter"), "{err}");

    // Nothing else was dead-lettered along the way.
    let all: Vec<Envelope> = app.all_events().await?;
    assert_eq!(
        all.iter()
            .filter(|e| e.event_type == "EventDeadLettered")
            .count(),
        2
    );
    Ok(())
}
