//! The production shape: a Kafka-protocol broker and each service as its own
//! process (two assessment instances), a referral carried end to end over
//! HTTP, gRPC and Kafka, and an assessment instance killed mid-stream
//! without losing or doubling an effect.

mod common;

use std::collections::HashMap;

use common::kafka::{KafkaSystem, connect, eventually, kafka_env, kafka_reader, mskflow_cli};
use common::*;
use mskflow_eventlog_kafka::testing::{Broker, unique_prefix};
use mskflow_proto::assessment::v1 as apb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use mskflow_proto::outcomes::v1 as opb;
use mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient;
use mskflow_proto::scheduling::v1 as spb;
use mskflow_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_services_as_processes_carry_a_referral_over_kafka() -> TestResult {
    let broker = Broker::start()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let prefix = unique_prefix("deploy");

    let kafka_env = kafka_env(&broker, &prefix);

    // The topic set, through the operator's command.
    for (action, expect) in [("check", false), ("create", true), ("check", true)] {
        let (ok, text) = mskflow_cli(&kafka_env, &["topics", action])?;
        assert_eq!(ok, expect, "topics {action}: {text}");
    }

    // Two assessment instances.
    let mut system = KafkaSystem::start(dir, &kafka_env, 2).await?;
    let app = system.app();
    let assessment_grpc = system.assessment_grpc.clone();
    let mut assessment = AssessmentServiceClient::new(connect(&assessment_grpc[0]).await?);
    let scheduling_client = SchedulingServiceClient::new(connect(&system.scheduling_grpc).await?);
    let outcomes_client = OutcomesServiceClient::new(connect(&system.outcomes_grpc).await?);

    // 1. The referral: HTTP → gateway → gRPC → intake → Kafka → gateway views.
    let answer = app.post_message(&new_referral_message()?).await?;
    let status = answer.status();
    let answer: Value = answer.json().await?;
    assert!(status.is_success(), "{status}: {answer}");
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();

    // 2. An assessment instance (whichever owns the partition) put it on the
    //    worklist; either instance answers for it.
    let task = task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    assert_eq!(task["status"], "accepted");
    let mut other = AssessmentServiceClient::new(connect(&assessment_grpc[1]).await?);
    for client in [&mut assessment, &mut other] {
        let listed = eventually("on the worklist", 30, || {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                let w = c
                    .list_worklist(apb::ListWorklistRequest::default())
                    .await?
                    .into_inner();
                Ok(w.entries.iter().any(|e| e.referral_id == id).then_some(()))
            }
        })
        .await;
        listed?;
    }

    // 3. Booked and assessed on instance B, rehab chosen: scheduling (its
    //    own process) waitlists the patient from the Kafka event.
    let slot_id = Uuid::new_v4();
    let start = chrono::Utc::now() + chrono::Duration::days(3);
    other
        .publish_slots(apb::PublishSlotsRequest {
            slots: vec![apb::Slot {
                slot_id: slot_id.to_string(),
                clinician_id: "fcp-017".to_owned(),
                start: start.to_rfc3339(),
                end: (start + chrono::Duration::minutes(30)).to_rfc3339(),
                mode: "face-to-face".to_owned(),
                location: None,
            }],
        })
        .await?;
    other
        .book_assessment(apb::BookAssessmentRequest {
            referral_id: id.clone(),
            slot_id: slot_id.to_string(),
        })
        .await?;
    other
        .complete_assessment(apb::CompleteAssessmentRequest {
            referral_id: id.clone(),
            findings_summary: "Knee osteoarthritis".to_owned(),
            shared_decision_made: true,
            psychological_distress: "negative".to_owned(),
            outcomes: vec![apb::Outcome {
                outcome: "group-programme".to_owned(),
                programme: Some("escape-pain".to_owned()),
                ..apb::Outcome::default()
            }],
            ..apb::CompleteAssessmentRequest::default()
        })
        .await?;
    eventually("on the ESCAPE-pain list", 30, || {
        let mut c = scheduling_client.clone();
        let id = id.clone();
        async move {
            let w = c
                .list_waiting_list(spb::ListWaitingListRequest {
                    programme: Some("escape-pain".to_owned()),
                    ..spb::ListWaitingListRequest::default()
                })
                .await?
                .into_inner();
            Ok(w.patients.iter().any(|p| p.referral_id == id).then_some(()))
        }
    })
    .await?;
    // Outcomes (its own process) scheduled the first-contact questionnaire.
    eventually("PROMs scheduled", 30, || {
        let mut c = outcomes_client.clone();
        let id = id.clone();
        async move {
            let o = c
                .get_outcomes(opb::GetOutcomesRequest {
                    referral_id: id.clone(),
                })
                .await;
            Ok(o.ok()
                .filter(|o| !o.get_ref().questionnaires.is_empty())
                .map(|_| ()))
        }
    })
    .await?;
    let task = task_when(&app, &id, "waiting for rehab", |t| {
        business(t) == "awaiting-rehabilitation"
    })
    .await?;
    assert_eq!(task["status"], "in-progress");

    // 4. Kill assessment instance A while referrals arrive: B takes its
    //    partitions over; every triaged referral gets exactly one
    //    AssessmentRequested.
    let mut ids = vec![id.clone()];
    for n in 0..20 {
        if n == 5 {
            system.assessment[0].kill();
        }
        let answer = app.post_message(&new_referral_message()?).await?;
        let status = answer.status();
        let answer: Value = answer.json().await?;
        assert!(status.is_success(), "{status}: {answer}");
        ids.push(
            entries_of(&answer, "Task")[0]["id"]
                .as_str()
                .ok_or("no id")?
                .to_owned(),
        );
    }
    let worklist = eventually("all on B's worklist", 90, || {
        let mut c = other.clone();
        let ids = ids.clone();
        async move {
            let w = c
                .list_worklist(apb::ListWorklistRequest::default())
                .await?
                .into_inner();
            let mut seen: HashMap<String, usize> = HashMap::new();
            for e in &w.entries {
                *seen.entry(e.referral_id.clone()).or_default() += 1;
            }
            // The first referral was assessed; the 20 new ones wait.
            Ok(ids[1..]
                .iter()
                .all(|i| seen.contains_key(i))
                .then_some(seen))
        }
    })
    .await?;
    assert!(
        worklist.values().all(|n| *n == 1),
        "a referral listed twice: {worklist:?}"
    );
    // The record itself: one AssessmentRequested per referral on Kafka.
    let reader = kafka_reader(&broker, &prefix).await?;
    for i in &ids {
        let stream =
            mskflow_eventlog::EventLog::read_stream(&reader, &format!("assessment-{i}"), 1).await?;
        let requested = stream
            .iter()
            .filter(|e| e.event_type == "AssessmentRequested")
            .count();
        assert_eq!(
            requested, 1,
            "referral {i}: {requested} AssessmentRequested"
        );
    }
    system.gateway.check_alive()?;
    system.intake.check_alive()?;
    system.assessment[1].check_alive()?;
    system.scheduling.check_alive()?;
    system.outcomes.check_alive()?;
    Ok(())
}
