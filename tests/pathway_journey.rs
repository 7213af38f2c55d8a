//! A referral carried over real sockets from intake through FCP assessment
//! to a completed 12-session ESCAPE-pain course, with the referrer's Task
//! correct at each step.

mod common;

use common::*;
use mskflow_proto::assessment::v1 as apb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use mskflow_proto::scheduling::v1 as spb;
use mskflow_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use serde_json::Value;
use uuid::Uuid;

fn mskflow_fhir_timepoints() -> &'static str {
    "https://fhir.mskflow.org/CodeSystem/prom-timepoint"
}

fn output_int(task: &Value, code: &str) -> Option<i64> {
    task["output"]
        .as_array()?
        .iter()
        .find(|o| o["type"]["coding"][0]["code"] == code)
        .and_then(|o| o["valueInteger"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_to_fcp_assessment_to_a_completed_escape_pain_course() -> TestResult {
    let app = spawn_app().await?;
    let running = app.running.as_ref().ok_or("not running")?;
    let mut assessment =
        AssessmentServiceClient::connect(format!("http://{}", running.assessment_addr)).await?;
    let mut scheduling =
        SchedulingServiceClient::connect(format!("http://{}", running.scheduling_addr)).await?;

    // 1. The GP's referral (knee pain) is triaged to an FCP.
    let answer: Value = app
        .post_message(&new_referral_message()?)
        .await?
        .json()
        .await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let task = task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    assert_eq!(task["status"], "accepted");
    let worklist = assessment
        .list_worklist(apb::ListWorklistRequest::default())
        .await?
        .into_inner();
    assert!(
        worklist.entries.iter().any(|e| e.referral_id == id),
        "not on the FCP worklist"
    );

    // 2. Booked with an FCP: the Task moves to in-progress.
    let slot_id = Uuid::new_v4();
    let start = chrono::Utc::now() + chrono::Duration::days(3);
    assessment
        .publish_slots(apb::PublishSlotsRequest {
            slots: vec![apb::Slot {
                slot_id: slot_id.to_string(),
                clinician_id: "fcp-017".to_owned(),
                start: start.to_rfc3339(),
                end: (start + chrono::Duration::minutes(30)).to_rfc3339(),
                mode: "face-to-face".to_owned(),
                location: Some("Riverside Health Centre".to_owned()),
            }],
        })
        .await?;
    assessment
        .book_assessment(apb::BookAssessmentRequest {
            referral_id: id.clone(),
            slot_id: slot_id.to_string(),
        })
        .await?;
    let task = task_when(&app, &id, "booked", |t| business(t) == "assessment-booked").await?;
    assert_eq!(task["status"], "in-progress");
    let nhs = "https://fhir.nhs.uk/Id/nhs-number|9434765919";
    let (_, appts) = app
        .get_json(&format!(
            "Appointment?based-on=ServiceRequest/{id}&patient:identifier={nhs}"
        ))
        .await?;
    assert_eq!(appts["total"], 1);
    let fcp = appts["entry"][0]["resource"].clone();
    assert_eq!(fcp["status"], "booked");
    assert_eq!(
        fcp["serviceType"][0]["text"],
        "First Contact Practitioner assessment"
    );
    let fcp_id = fcp["id"].as_str().ok_or("no appointment id")?.to_owned();
    let (status, _) = app.get_json(&format!("Encounter/{id}")).await?;
    assert_eq!(status, 404, "no Encounter before the assessment");

    // 3. Assessed: ESCAPE-pain chosen; the patient joins the rehab list.
    assessment
        .complete_assessment(apb::CompleteAssessmentRequest {
            referral_id: id.clone(),
            findings_summary: "Knee osteoarthritis; exercise-based management agreed".to_owned(),
            shared_decision_made: true,
            decision_aid: Some("knee-osteoarthritis".to_owned()),
            work_discussed: true,
            psychological_distress: "negative".to_owned(),
            outcomes: vec![
                apb::Outcome {
                    outcome: "group-programme".to_owned(),
                    programme: Some("escape-pain".to_owned()),
                    ..apb::Outcome::default()
                },
                apb::Outcome {
                    outcome: "onward-referral".to_owned(),
                    destination: Some("imaging".to_owned()),
                    reason: Some("Persistent effusion: ultrasound".to_owned()),
                    ..apb::Outcome::default()
                },
            ],
            ..apb::CompleteAssessmentRequest::default()
        })
        .await?;
    let task = task_when(&app, &id, "waiting for rehab", |t| {
        business(t) == "awaiting-rehabilitation"
    })
    .await?;
    assert_eq!(task["status"], "in-progress");
    let outputs = task["output"].to_string();
    assert!(outputs.contains("group-programme-escape-pain"), "{outputs}");
    // The FCP appointment happened; the Encounter records it; the onward
    // referral is a ServiceRequest of its own.
    let (_, fcp) = app.get_json(&format!("Appointment/{fcp_id}")).await?;
    assert_eq!(fcp["status"], "fulfilled");
    let (status, encounter) = app.get_json(&format!("Encounter/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(encounter["status"], "finished");
    assert_eq!(encounter["class"]["code"], "AMB");
    assert_eq!(
        encounter["appointment"][0]["reference"],
        format!("Appointment/{fcp_id}")
    );
    let onward = task["output"]
        .as_array()
        .ok_or("no outputs")?
        .iter()
        .find(|o| o["type"]["coding"][0]["code"] == "onward-referral")
        .and_then(|o| o["valueReference"]["reference"].as_str())
        .ok_or("no onward referral on the Task")?
        .to_owned();
    let (status, outbound) = app.get_json(&onward).await?;
    assert_eq!(status, 200, "{onward}");
    assert_eq!(outbound["resourceType"], "ServiceRequest");
    assert_eq!(outbound["intent"], "order");
    assert!(
        outbound.to_string().contains("9434765919"),
        "the outbound referral names the patient"
    );
    let waiting = scheduling
        .list_waiting_list(spb::ListWaitingListRequest {
            programme: Some("escape-pain".to_owned()),
            ..spb::ListWaitingListRequest::default()
        })
        .await?
        .into_inner();
    assert!(
        waiting.patients.iter().any(|p| p.referral_id == id),
        "not on the ESCAPE-pain list"
    );

    // 4. A class: 12 sessions, twice a week for 6 weeks; booked.
    scheduling
        .register_venue(spb::RegisterVenueRequest {
            venue_id: "riverside".to_owned(),
            name: "Riverside Health Centre".to_owned(),
        })
        .await?;
    let class = scheduling
        .schedule_class(spb::ScheduleClassRequest {
            programme: "escape-pain".to_owned(),
            venue_id: "riverside".to_owned(),
            days: vec!["tuesday".to_owned(), "friday".to_owned()],
            start_time: "10:00".to_owned(),
            duration_minutes: 60,
            capacity: 10,
            start_date: (chrono::Utc::now() + chrono::Duration::days(14))
                .format("%Y-%m-%d")
                .to_string(),
            ..spb::ScheduleClassRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(class.session_dates.len(), 12);
    // The class is a Schedule with 12 free session Slots.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let schedule = loop {
        let (status, schedule) = app
            .get_json(&format!("Schedule/{}", class.class_id))
            .await?;
        if status == 200 || tokio::time::Instant::now() > deadline {
            break schedule;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        schedule["serviceType"][0]["text"],
        "ESCAPE-pain group programme"
    );
    assert_eq!(schedule["actor"][0]["display"], "Riverside Health Centre");
    let (_, slots) = app
        .get_json(&format!(
            "Slot?schedule=Schedule/{}&status=free",
            class.class_id
        ))
        .await?;
    assert_eq!(slots["total"], 12);
    scheduling
        .book_class(spb::BookClassRequest {
            referral_id: id.clone(),
            class_id: class.class_id.clone(),
        })
        .await?;
    let task = task_when(&app, &id, "rehab booked", |t| {
        business(t) == "rehabilitation-booked"
    })
    .await?;
    assert_eq!(output_int(&task, "rehab-sessions"), Some(12));

    // 5. Twelve sessions attended: the course completes and so does the Task.
    for session_no in 1..=12 {
        scheduling
            .record_attendance(spb::RecordAttendanceRequest {
                referral_id: id.clone(),
                session_no,
                attended: true,
            })
            .await?;
    }
    let task = task_when(&app, &id, "completed", |t| {
        business(t) == "rehabilitation-completed"
    })
    .await?;
    assert_eq!(task["status"], "completed");
    assert_eq!(output_int(&task, "rehab-attended"), Some(12));
    let (_, sr) = app.get_json(&format!("ServiceRequest/{id}")).await?;
    assert_eq!(sr["status"], "completed");

    // Every step is in the Task's history, rebuilt from the log.
    let (_, history) = app.get_json(&format!("Task/{id}/_history")).await?;
    let statuses: Vec<&str> = history["entry"]
        .as_array()
        .ok_or("no history")?
        .iter()
        .rev()
        .filter_map(|e| e["resource"]["businessStatus"]["coding"][0]["code"].as_str())
        .collect();
    for step in [
        "received",
        "awaiting-assessment",
        "assessment-booked",
        "awaiting-rehabilitation",
        "rehabilitation-booked",
        "rehabilitation-completed",
    ] {
        assert!(
            statuses.contains(&step),
            "history lacks {step}: {statuses:?}"
        );
    }
    assert_eq!(history["entry"][0]["resource"], task);

    // The patient answers MSK-HQ at first contact through the gateway; the
    // response is scored.
    let (status, q) = app.get_json("Questionnaire/msk-hq").await?;
    assert_eq!(status, 200);
    assert_eq!(q["resourceType"], "Questionnaire");
    let items: Vec<String> = q["item"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter_map(|i| i["linkId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(items.len(), 14);
    let response = |answers: &[(String, i64)]| {
        serde_json::json!({
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "meta": {"tag": [{"system": mskflow_fhir_timepoints(), "code": "first-contact"}]},
            "questionnaire": "https://fhir.mskflow.org/Questionnaire/msk-hq",
            "basedOn": [{"reference": format!("ServiceRequest/{id}")}],
            "item": answers.iter().map(|(l, v)| serde_json::json!({"linkId": l, "answer": [{"valueInteger": v}]})).collect::<Vec<_>>()
        })
    };
    let mut answers: Vec<(String, i64)> = items.iter().map(|l| (l.clone(), 2)).collect();
    answers[6].1 = 7; // out of range
    let r = app
        .post("QuestionnaireResponse", &response(&answers), Uuid::new_v4())
        .await?;
    assert_eq!(r.status().as_u16(), 422);
    let outcome: Value = r.json().await?;
    assert!(
        outcome.to_string().contains("item.where(linkId='7')"),
        "{outcome}"
    );
    answers[6].1 = 2;
    let r = app
        .post("QuestionnaireResponse", &response(&answers), Uuid::new_v4())
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let scored: Value = r.json().await?;
    assert_eq!(
        scored["extension"][0]["valueDecimal"], 28.0,
        "14 items scored 2 = 28"
    );

    // Outcome measures were scheduled at first contact, discharge and
    // follow-up (6 months after the course ended).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let timepoints = loop {
        let mut timepoints: Vec<String> = app
            .all_events()
            .await?
            .iter()
            .filter(|e| {
                e.stream_id == format!("outcomes-{id}") && e.event_type == "QuestionnaireScheduled"
            })
            .filter_map(|e| e.payload["timepoint"].as_str().map(str::to_owned))
            .collect();
        timepoints.sort();
        timepoints.dedup();
        if timepoints.len() == 3 || tokio::time::Instant::now() > deadline {
            break timepoints;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(timepoints, vec!["discharge", "first-contact", "follow-up"]);

    // Every event of the journey matches its published schema.
    let seen = check_event_schemas(&app).await?;
    for t in [
        "AssessmentRequested",
        "AssessmentBooked",
        "AssessmentCompleted",
        "FcpSlotBooked",
        "PatientWaitlisted",
        "ClassEnrolled",
        "PlaceBooked",
        "SessionAttended",
        "CourseCompleted",
    ] {
        assert!(seen.contains(t), "{t} was not emitted: {seen:?}");
    }
    Ok(())
}
