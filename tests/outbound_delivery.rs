//! Onward referrals reach the receiving system: retried with backoff on
//! 503, the same request id on every attempt, the state visible on the Task,
//! and given up (dead letter) when the receiver keeps failing.

mod common;

use std::time::Duration;

use actix_web::http::StatusCode;
use common::receiver::Receiver;
use common::*;
use mskflow_proto::assessment::v1 as apb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use serde_json::Value;
use uuid::Uuid;

/// Refer a patient on to `destination` through a full FCP assessment.
async fn refer_on(app: &App, destination: &str) -> TestResult<String> {
    let running = app.running.as_ref().ok_or("not running")?;
    let mut assessment =
        AssessmentServiceClient::connect(format!("http://{}", running.assessment_addr)).await?;
    let answer: Value = app
        .post_message(&new_referral_message()?)
        .await?
        .json()
        .await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    task_when(app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    let slot_id = Uuid::new_v4();
    let start = chrono::Utc::now() + chrono::Duration::days(2);
    assessment
        .publish_slots(apb::PublishSlotsRequest {
            slots: vec![apb::Slot {
                slot_id: slot_id.to_string(),
                clinician_id: "fcp-004".to_owned(),
                start: start.to_rfc3339(),
                end: (start + chrono::Duration::minutes(30)).to_rfc3339(),
                mode: "video".to_owned(),
                location: None,
            }],
        })
        .await?;
    assessment
        .book_assessment(apb::BookAssessmentRequest {
            referral_id: id.clone(),
            slot_id: slot_id.to_string(),
        })
        .await?;
    assessment
        .complete_assessment(apb::CompleteAssessmentRequest {
            referral_id: id.clone(),
            findings_summary: "Advanced knee osteoarthritis; surgical opinion wanted".to_owned(),
            shared_decision_made: true,
            psychological_distress: "negative".to_owned(),
            bmi: Some(41.0),
            smoking_status: Some("current".to_owned()),
            outcomes: vec![apb::Outcome {
                outcome: "onward-referral".to_owned(),
                destination: Some(destination.to_owned()),
                reason: Some("Consider knee replacement".to_owned()),
                ..apb::Outcome::default()
            }],
            ..apb::CompleteAssessmentRequest::default()
        })
        .await?;
    Ok(id)
}

fn onward_output(task: &Value) -> Option<String> {
    task["output"]
        .as_array()?
        .iter()
        .find(|o| o["type"]["coding"][0]["code"] == "onward-referral")
        .and_then(|o| o["valueReference"]["display"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onward_referral_is_delivered_after_retries() -> TestResult {
    let receiver = Receiver::start(2, StatusCode::CREATED)?;
    let url = receiver.url.clone();
    let app = spawn_app_with(|c| {
        c.gateway
            .outbound
            .endpoints
            .insert("orthopaedics".to_owned(), url.clone());
        c.gateway.outbound.initial_backoff_ms = 20;
    })
    .await?;
    let id = refer_on(&app, "orthopaedics").await?;
    let task = task_when(&app, &id, "delivered", |t| {
        onward_output(t).is_some_and(|d| d.ends_with("(delivered)"))
    })
    .await?;
    assert_eq!(
        onward_output(&task).as_deref(),
        Some("Orthopaedic service (delivered)")
    );

    let seen = receiver.requests();
    assert_eq!(seen.len(), 3, "two 503s, then accepted");
    assert!(
        seen.iter().all(|r| r.request_id == seen[0].request_id),
        "the same X-Request-Id on every attempt"
    );
    assert!(seen.iter().all(|r| r.path == "/fhir/ServiceRequest"));
    let body = &seen[2].body;
    assert_eq!(body["resourceType"], "ServiceRequest");
    assert!(
        body.to_string().contains("9434765919"),
        "the receiver gets the patient"
    );

    // Every attempt is on record.
    let attempts: Vec<(String, Value)> = app
        .all_events()
        .await?
        .into_iter()
        .filter(|e| e.stream_id.starts_with("delivery-"))
        .map(|e| (e.event_type, e.payload))
        .collect();
    let types: Vec<&str> = attempts.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "OutboundDeliveryFailed",
            "OutboundDeliveryFailed",
            "OutboundDelivered"
        ]
    );
    assert_eq!(attempts[0].1["http_status"], 503);
    assert_eq!(attempts[2].1["attempts"], 3);
    check_event_schemas(&app).await?;
    receiver.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_leaves_a_dead_letter() -> TestResult {
    let receiver = Receiver::start(usize::MAX, StatusCode::CREATED)?;
    let url = receiver.url.clone();
    let app = spawn_app_with(|c| {
        c.gateway
            .outbound
            .endpoints
            .insert("imaging".to_owned(), url.clone());
        c.gateway.outbound.max_attempts = 3;
        c.gateway.outbound.initial_backoff_ms = 10;
    })
    .await?;
    let id = refer_on(&app, "imaging").await?;
    let task = task_when(&app, &id, "failed", |t| {
        onward_output(t).is_some_and(|d| d.ends_with("(failed)"))
    })
    .await?;
    assert_eq!(
        onward_output(&task).as_deref(),
        Some("Diagnostic imaging (failed)")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests().len(), 3, "no attempt after giving up");

    // A destination with no endpoint is recorded as failed at once.
    let id = refer_on(&app, "rheumatology").await?;
    task_when(&app, &id, "failed", |t| {
        onward_output(t).is_some_and(|d| d == "Rheumatology service (failed)")
    })
    .await?;
    receiver.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrer_hears_of_every_change_in_order_after_a_failed_delivery() -> TestResult {
    let receiver = Receiver::start(1, StatusCode::CREATED)?;
    let url = receiver.url.clone();
    let endpoint = format!("{url}/ServiceRequest");
    let app = spawn_app_with(|c| {
        c.gateway.referrer_endpoints.push(url.clone());
        c.gateway.outbound.initial_backoff_ms = 20;
    })
    .await?;
    let mut bundle = new_referral_message()?;
    with_resource(&mut bundle, "MessageHeader", |h| {
        h["source"]["endpoint"] = serde_json::json!(endpoint)
    })?;
    let answer: Value = app.post_message(&bundle).await?.json().await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;

    // Book the FCP appointment: a second change to tell.
    let running = app.running.as_ref().ok_or("not running")?;
    let mut assessment =
        AssessmentServiceClient::connect(format!("http://{}", running.assessment_addr)).await?;
    let slot_id = Uuid::new_v4();
    let start = chrono::Utc::now() + chrono::Duration::days(1);
    assessment
        .publish_slots(apb::PublishSlotsRequest {
            slots: vec![apb::Slot {
                slot_id: slot_id.to_string(),
                clinician_id: "fcp-009".to_owned(),
                start: start.to_rfc3339(),
                end: (start + chrono::Duration::minutes(30)).to_rfc3339(),
                mode: "telephone".to_owned(),
                location: None,
            }],
        })
        .await?;
    assessment
        .book_assessment(apb::BookAssessmentRequest {
            referral_id: id.clone(),
            slot_id: slot_id.to_string(),
        })
        .await?;

    let seen = receiver.wait_for(3).await;
    assert_eq!(
        seen.len(),
        3,
        "one failed attempt, its retry, then the booking"
    );
    assert_eq!(
        seen[0].request_id, seen[1].request_id,
        "a retry carries the same X-Request-Id"
    );
    assert_ne!(seen[1].request_id, seen[2].request_id);
    let statuses: Vec<String> = seen
        .iter()
        .map(|r| {
            let b = &r.body;
            let task = entries_of(b, "Task")
                .first()
                .map(|t| business(t).to_owned())
                .unwrap_or_default();
            let header = &entries_of(b, "MessageHeader")[0];
            assert_eq!(header["eventCoding"]["code"], "servicerequest-response");
            task
        })
        .collect();
    assert_eq!(statuses, vec!["triaged", "triaged", "assessment-booked"]);
    check_event_schemas(&app).await?;
    receiver.stop().await;
    Ok(())
}

/// Each message's Task: (status, businessStatus, meta.versionId).
fn task_of(message: &Value) -> (String, String, String) {
    let task = entries_of(message, "Task")
        .first()
        .map(|t| (*t).clone())
        .unwrap_or_default();
    (
        task["status"].as_str().unwrap_or_default().to_owned(),
        business(&task).to_owned(),
        task["meta"]["versionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_referrer_hears_each_change_once_as_it_was() -> TestResult {
    let receiver = Receiver::start(0, StatusCode::OK)?;
    let url = receiver.url.clone();
    let endpoint = format!("{url}/ServiceRequest");
    let configure = |c: &mut mskflow::Config| {
        c.gateway.referrer_endpoints.push(url.clone());
        c.gateway.outbound.initial_backoff_ms = 20;
    };
    let mut app = spawn_app_with(configure).await?;
    let mut bundle = new_referral_message()?;
    with_resource(&mut bundle, "MessageHeader", |h| {
        h["source"]["endpoint"] = serde_json::json!(endpoint)
    })?;
    let answer: Value = app.post_message(&bundle).await?.json().await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    // Book the FCP appointment: a second change, told before the restart.
    let running = app.running.as_ref().ok_or("not running")?;
    let mut assessment =
        AssessmentServiceClient::connect(format!("http://{}", running.assessment_addr)).await?;
    let slot_id = Uuid::new_v4();
    let start = chrono::Utc::now() + chrono::Duration::days(1);
    assessment
        .publish_slots(apb::PublishSlotsRequest {
            slots: vec![apb::Slot {
                slot_id: slot_id.to_string(),
                clinician_id: "fcp-011".to_owned(),
                start: start.to_rfc3339(),
                end: (start + chrono::Duration::minutes(30)).to_rfc3339(),
                mode: "telephone".to_owned(),
                location: None,
            }],
        })
        .await?;
    assessment
        .book_assessment(apb::BookAssessmentRequest {
            referral_id: id.clone(),
            slot_id: slot_id.to_string(),
        })
        .await?;
    let before = receiver.wait_for(2).await;
    assert_eq!(before.len(), 2, "the triage, then the booking");

    // Restart: the worker resumes from its checkpoint; then the referrer
    // withdraws the referral.
    app.stop().await?;
    let kept = app;
    assert!(
        kept.dir
            .join("projections")
            .join("gateway-notifications.db")
            .exists(),
        "the worker's subscriptions and counters are kept for its resumption"
    );
    let app = spawn_app_in_with(&kept.dir, configure).await?;
    assert_eq!(
        app.post_message(&as_update(&bundle, "revoked")?)
            .await?
            .status()
            .as_u16(),
        200
    );
    task_when(&app, &id, "cancelled", |t| t["status"] == "cancelled").await?;
    let seen = receiver.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen_now = receiver.requests();
    assert_eq!(seen.len(), 3, "one message per change");
    assert_eq!(seen_now.len(), 3, "nothing sent twice after the restart");
    let ids: std::collections::BTreeSet<&str> =
        seen.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three distinct messages");
    let tasks: Vec<(String, String, String)> = seen.iter().map(|r| task_of(&r.body)).collect();
    let expected = [
        ("accepted", "triaged", "2"),
        ("in-progress", "assessment-booked", "4"),
        ("cancelled", "cancelled", "5"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(s, b, v)| ((*s).to_owned(), (*b).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(
        tasks, expected,
        "each message shows the Task as it was at its change (as the replaying worker sent them)"
    );
    receiver.stop().await;
    Ok(())
}
