//! The `/analytics` views over real sockets: four referrals from three
//! practices in four deprivation deciles are carried through FCP assessment
//! (one missed appointment, one onward referral to orthopaedics), an
//! ESCAPE-pain class (one missed session), MSK-HQ at first contact and
//! discharge, then discharge and the follow-up questionnaire six months on;
//! the views' numbers and CSV match the hand-computed values.

mod common;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use common::*;
use mskflow_proto::assessment::v1 as apb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use mskflow_proto::outcomes::v1 as opb;
use mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient;
use mskflow_proto::scheduling::v1 as spb;
use mskflow_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use serde_json::{Value, json};
use uuid::Uuid;

/// A referral message from `practice` for a patient living at `postcode`.
fn referral(practice: &str, postcode: &str) -> TestResult<Value> {
    let mut bundle = new_referral_message()?;
    with_resource(&mut bundle, "Organization", |o| {
        o["identifier"][0]["value"] = json!(practice);
    })?;
    with_resource(&mut bundle, "Patient", |p| {
        p["address"][0]["postalCode"] = json!(postcode);
    })?;
    Ok(bundle)
}

fn root(app: &App) -> String {
    app.base.trim_end_matches("/fhir").to_owned()
}

async fn get_view(app: &App, path: &str) -> TestResult<(u16, Value)> {
    let res = client()
        .get(format!("{}/analytics{path}", root(app)))
        .send()
        .await?;
    Ok((res.status().as_u16(), res.json().await?))
}

/// A view as CSV (`Accept: text/csv`).
async fn view_csv(app: &App, path: &str) -> TestResult<String> {
    Ok(client()
        .get(format!("{}/analytics{path}", root(app)))
        .header("Accept", "text/csv")
        .send()
        .await?
        .text()
        .await?)
}

/// Poll a view until `check` holds (the follower works asynchronously).
async fn view_when(app: &App, path: &str, check: impl Fn(&Value) -> bool) -> TestResult<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get_view(app, path).await?;
        if status == 200 && check(&body) {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{path} never reached the expected state: {status} {body}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The row of `table` whose columns hold all of `keys`.
fn row<'a>(table: &'a Value, keys: &[(&str, Value)]) -> TestResult<&'a Value> {
    table["rows"]
        .as_array()
        .ok_or("no rows")?
        .iter()
        .find(|r| keys.iter().all(|(k, v)| &r[*k] == v))
        .ok_or_else(|| format!("no row {keys:?} in {table}").into())
}

fn sum(table: &Value, column: &str) -> i64 {
    table["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r[column].as_i64()).sum())
        .unwrap_or_default()
}

/// Received and triaged dates of a referral, from the log.
async fn received_and_triaged(app: &App, id: &str) -> TestResult<(DateTime<Utc>, NaiveDate)> {
    let events = app.all_events().await?;
    let of = |t: &str| {
        events
            .iter()
            .find(|e| e.event_type == t && e.payload["referral_id"] == id)
            .map(|e| e.occurred_at)
    };
    let received = of("ReferralReceived").ok_or("no ReferralReceived")?;
    let triaged = of("ReferralTriaged").ok_or("no ReferralTriaged")?;
    Ok((received, triaged.date_naive()))
}

fn nearest_rank_92(sorted: &[i64]) -> i64 {
    let rank = (92 * sorted.len()).div_ceil(100);
    sorted[rank - 1]
}

/// POST an MSK-HQ QuestionnaireResponse for `referral` at `timepoint`.
async fn submit_msk_hq(
    app: &App,
    items: &[String],
    referral: &str,
    timepoint: &str,
    values: &[i64],
) -> TestResult {
    let response = json!({
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint", "code": timepoint}]},
        "questionnaire": "https://fhir.mskflow.org/Questionnaire/msk-hq",
        "basedOn": [{"reference": format!("ServiceRequest/{referral}")}],
        "item": items.iter().zip(values).map(|(l, v)| json!({"linkId": l, "answer": [{"valueInteger": v}]})).collect::<Vec<_>>()
    });
    let r = app
        .post("QuestionnaireResponse", &response, Uuid::new_v4())
        .await?;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await?);
    Ok(())
}

/// The MSK-HQ questionnaire of `referral` at `timepoint`, once it exists and
/// `check` holds (the outcomes consumer works asynchronously).
async fn msk_hq_state(
    client: &mut OutcomesServiceClient<tonic::transport::Channel>,
    referral: &str,
    timepoint: &str,
    check: impl Fn(&opb::QuestionnaireState) -> bool,
) -> TestResult<opb::QuestionnaireState> {
    let mut last = None;
    for _ in 0..100 {
        let outcomes = client
            .get_outcomes(opb::GetOutcomesRequest {
                referral_id: referral.to_owned(),
            })
            .await?
            .into_inner();
        if let Some(q) = outcomes
            .questionnaires
            .into_iter()
            .find(|q| q.measure == "msk-hq" && q.timepoint == timepoint)
        {
            if check(&q) {
                return Ok(q);
            }
            last = Some(q);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("MSK-HQ {timepoint} questionnaire for {referral}: {last:?}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_count_waits_outcomes_dnas_and_conversions() -> TestResult {
    let app = spawn_app().await?;
    let running = app.running.as_ref().ok_or("not running")?;
    let mut assessment =
        AssessmentServiceClient::connect(format!("http://{}", running.assessment_addr)).await?;
    let mut scheduling =
        SchedulingServiceClient::connect(format!("http://{}", running.scheduling_addr)).await?;
    let mut outcomes_service =
        OutcomesServiceClient::connect(format!("http://{}", running.outcomes_addr)).await?;

    // The index lists the views; bad splits and formats are refused.
    let (status, index) = get_view(&app, "").await?;
    assert_eq!(status, 200);
    let names: Vec<&str> = index["views"]
        .as_array()
        .ok_or("no views")?
        .iter()
        .filter_map(|v| v["view"].as_str())
        .collect();
    assert_eq!(names, ["waits", "outcomes", "dna", "conversion"]);
    let (status, outcome) = get_view(&app, "/waits?split=postcode").await?;
    assert_eq!(status, 400);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(issue_codes(&outcome), ["code-invalid"]);
    let (status, outcome) = get_view(&app, "/dna?format=xml").await?;
    assert_eq!(
        (status, issue_codes(&outcome)),
        (400, vec!["code-invalid".to_owned()])
    );
    // A bearer token allowed to read `Analytics` is required.
    let url = format!("{}/analytics/waits", root(&app));
    let res = reqwest::Client::new().get(&url).send().await?;
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(issue_codes(&res.json().await?), ["login"]);
    let referrer = token_for(&claims(
        TEST_CLIENT,
        TEST_ODS,
        "system/ServiceRequest.cruds",
    ))?;
    let res = client_with_token(&referrer).get(&url).send().await?;
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(issue_codes(&res.json().await?), ["forbidden"]);
    let analyst = token_for(&claims(TEST_CLIENT, TEST_ODS, "system/Analytics.read"))?;
    let res = client_with_token(&analyst).get(&url).send().await?;
    assert_eq!(res.status().as_u16(), 200);
    let (status, outcome) = get_view(&app, "/referrals").await?;
    assert_eq!(
        (status, issue_codes(&outcome)),
        (404, vec!["not-found".to_owned()])
    );

    // (practice, postcode -> illustrative IMD decile, days to the FCP slot).
    let plan = [
        ("B86001", "LS1 5HD", 3),  // decile 3
        ("B86001", "BD1 1HY", 9),  // decile 1; misses a first slot at 5 days
        ("B86002", "S1 2HE", 7),   // decile 10
        ("B86003", "LS6 2QN", 12), // decile 5
    ];
    let mut ids = Vec::new();
    for (practice, postcode, _) in &plan {
        // Each practice sends with its own organisation's token.
        let token = token_for(&claims(TEST_CLIENT, practice, "system/*.*"))?;
        let res = client_with_token(&token)
            .post(format!("{}/$process-message", app.base))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", Uuid::new_v4().to_string())
            .header("X-Correlation-Id", Uuid::new_v4().to_string())
            .body(referral(practice, postcode)?.to_string())
            .send()
            .await?;
        let status = res.status().as_u16();
        let answer: Value = res.json().await?;
        assert_eq!(status, 200, "{practice}: {answer}");
        let id = entries_of(&answer, "Task")
            .first()
            .and_then(|t| t["id"].as_str())
            .ok_or("no Task")?
            .to_owned();
        task_when(&app, &id, "awaiting assessment", |t| {
            business(t) == "awaiting-assessment"
        })
        .await?;
        ids.push(id);
    }
    let mut received = Vec::new();
    let mut triage_days = Vec::new();
    for id in &ids {
        let (r, t) = received_and_triaged(&app, id).await?;
        triage_days.push((t - r.date_naive()).num_days());
        received.push(r);
    }

    // FCP appointments, each `days` after the referral was received.
    let slot_at = |i: usize, days: i64| -> apb::Slot {
        let start = received[i] + chrono::Duration::days(days);
        apb::Slot {
            slot_id: Uuid::new_v4().to_string(),
            clinician_id: "fcp-021".to_owned(),
            start: start.to_rfc3339(),
            end: (start + chrono::Duration::minutes(30)).to_rfc3339(),
            mode: "face-to-face".to_owned(),
            location: Some("Riverside Health Centre".to_owned()),
        }
    };
    let escape_pain = apb::Outcome {
        outcome: "group-programme".to_owned(),
        programme: Some("escape-pain".to_owned()),
        ..apb::Outcome::default()
    };
    let outcomes = [
        vec![escape_pain.clone()],
        vec![apb::Outcome {
            outcome: "onward-referral".to_owned(),
            destination: Some("orthopaedics".to_owned()),
            reason: Some("Advanced knee osteoarthritis: joint replacement".to_owned()),
            ..apb::Outcome::default()
        }],
        vec![escape_pain],
        vec![apb::Outcome {
            outcome: "advice-and-self-management".to_owned(),
            ..apb::Outcome::default()
        }],
    ];
    for (i, ((_, _, days), outcome)) in plan.iter().zip(outcomes).enumerate() {
        let id = ids[i].clone();
        if i == 1 {
            // Booked at 5 days; did not attend.
            let missed = slot_at(i, 5);
            assessment
                .publish_slots(apb::PublishSlotsRequest {
                    slots: vec![missed.clone()],
                })
                .await?;
            assessment
                .book_assessment(apb::BookAssessmentRequest {
                    referral_id: id.clone(),
                    slot_id: missed.slot_id.clone(),
                })
                .await?;
            assessment
                .record_missed_appointment(apb::RecordMissedAppointmentRequest {
                    referral_id: id.clone(),
                    slot_id: missed.slot_id,
                })
                .await?;
        }
        let slot = slot_at(i, *days);
        assessment
            .publish_slots(apb::PublishSlotsRequest {
                slots: vec![slot.clone()],
            })
            .await?;
        assessment
            .book_assessment(apb::BookAssessmentRequest {
                referral_id: id.clone(),
                slot_id: slot.slot_id,
            })
            .await?;
        assessment
            .complete_assessment(apb::CompleteAssessmentRequest {
                referral_id: id,
                findings_summary: "Knee pain".to_owned(),
                shared_decision_made: true,
                psychological_distress: "negative".to_owned(),
                outcomes: outcome,
                ..apb::CompleteAssessmentRequest::default()
            })
            .await?;
    }

    // An ESCAPE-pain class two weeks on; referrals 0 and 2 join it.
    for i in [0, 2] {
        task_when(&app, &ids[i], "waiting for rehab", |t| {
            business(t) == "awaiting-rehabilitation"
        })
        .await?;
    }
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
            start_date: (received[0] + chrono::Duration::days(14))
                .format("%Y-%m-%d")
                .to_string(),
            ..spb::ScheduleClassRequest::default()
        })
        .await?
        .into_inner();
    let session_dates: Vec<NaiveDate> = class
        .session_dates
        .iter()
        .map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d"))
        .collect::<Result<_, _>>()?;
    assert_eq!(session_dates.len(), 12);
    for i in [0, 2] {
        scheduling
            .book_class(spb::BookClassRequest {
                referral_id: ids[i].clone(),
                class_id: class.class_id.clone(),
            })
            .await?;
    }
    // Referral 0 attends session 1; referral 2 misses it and attends 2.
    for (i, session_no, attended) in [(0, 1, true), (2, 1, false), (2, 2, true)] {
        scheduling
            .record_attendance(spb::RecordAttendanceRequest {
                referral_id: ids[i].clone(),
                session_no,
                attended,
            })
            .await?;
    }

    // MSK-HQ at first contact and discharge (14 items, each 0-4):
    // 0: 28 -> 42 (+14, reaches the MIC of 5); 1: 28 -> 30 (+2);
    // 2: 14 -> 17 (+3).
    let (_, q) = app.get_json("Questionnaire/msk-hq").await?;
    let items: Vec<String> = q["item"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter_map(|i| i["linkId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(items.len(), 14);
    let scores = |n_twos: usize, rest: i64| -> Vec<i64> {
        (0..14).map(|k| if k < n_twos { 2 } else { rest }).collect()
    };
    let answers: [(usize, &str, Vec<i64>); 6] = [
        (0, "first-contact", scores(14, 2)),
        (0, "discharge", vec![3; 14]),
        (1, "first-contact", scores(14, 2)),
        (1, "discharge", scores(13, 4)),
        (2, "first-contact", vec![1; 14]),
        (2, "discharge", scores(3, 1)),
    ];
    for (i, timepoint, values) in answers {
        submit_msk_hq(&app, &items, &ids[i], timepoint, &values).await?;
    }

    // Wait until the follower has seen the whole journey.
    view_when(&app, "/outcomes", |t| sum(t, "episodes") == 3).await?;
    let dna = view_when(&app, "/dna", |t| {
        row(t, &[("service", json!("all"))]).is_ok_and(|r| r["attended"] == 6 && r["dna"] == 2)
    })
    .await?;

    // DNA. FCP: booked 1 + 2 + 1 + 1 = 5, attended 4, DNA 1: 1 / 5 = 0.2.
    // Rehab: 12 sessions booked for each of two patients = 24, attended 2,
    // DNA 1: 1 / 3 = 0.3333. All: 29 booked, 6 attended, 2 DNA: 2 / 8 = 0.25.
    for (service, booked, attended, missed, rate) in [
        ("fcp-assessment", 5, 4, 1, 0.2),
        ("rehabilitation", 24, 2, 1, 0.3333),
        ("all", 29, 6, 2, 0.25),
    ] {
        let r = row(&dna, &[("service", json!(service))])?;
        assert_eq!(
            [
                &r["booked"],
                &r["attended"],
                &r["dna"],
                &r["cancelled"],
                &r["dna_rate"]
            ],
            [
                &json!(booked),
                &json!(attended),
                &json!(missed),
                &json!(0),
                &json!(rate)
            ],
            "{service}"
        );
    }

    // Waits. Triage: four same-day decisions (or whatever the log says at
    // midnight). First contact: 3, 9, 7, 12 days -> sorted 3, 7, 9, 12;
    // median (7 + 9) / 2 = 8; 92nd percentile rank ceil(0.92 * 4) = 4 -> 12.
    // Treatment: referral 0 at session 1, referral 2 at session 2.
    let (status, waits) = get_view(&app, "/waits").await?;
    assert_eq!(status, 200);
    assert_eq!(
        (&waits["view"], &waits["split"]),
        (&json!("waits"), &json!("none"))
    );
    let r = row(&waits, &[("interval", json!("referral-to-first-contact"))])?;
    assert_eq!(
        [&r["count"], &r["median_days"], &r["p92_days"]],
        [&json!(4), &json!(8.0), &json!(12)]
    );
    let mut triage = triage_days.clone();
    triage.sort_unstable();
    let r = row(&waits, &[("interval", json!("referral-to-triage"))])?;
    assert_eq!(r["count"], 4);
    assert_eq!(r["p92_days"], json!(nearest_rank_92(&triage)));
    let treatment = [
        (session_dates[0] - received[0].date_naive()).num_days(),
        (session_dates[1] - received[2].date_naive()).num_days(),
    ];
    assert!(treatment[0] >= 14, "{treatment:?}");
    let r = row(&waits, &[("interval", json!("referral-to-treatment"))])?;
    assert_eq!(r["count"], 2);
    assert_eq!(
        r["median_days"].as_f64(),
        Some((treatment[0] + treatment[1]) as f64 / 2.0)
    );
    assert_eq!(r["p92_days"], json!(treatment[0].max(treatment[1])));

    // Split by deprivation: decile 1 is referral 1 (9 days), 3 is referral 0
    // (3), 5 is referral 3 (12), 10 is referral 2 (7).
    let (_, by_imd) = get_view(&app, "/waits?split=imd_decile").await?;
    let firsts: Vec<(String, i64)> = by_imd["rows"]
        .as_array()
        .ok_or("no rows")?
        .iter()
        .filter(|r| r["interval"] == "referral-to-first-contact")
        .map(|r| {
            (
                r["imd_decile"].as_str().unwrap_or_default().to_owned(),
                r["p92_days"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        firsts,
        [
            ("1".to_owned(), 9),
            ("3".to_owned(), 3),
            ("5".to_owned(), 12),
            ("10".to_owned(), 7)
        ]
    );

    // Outcomes. Knee / ESCAPE-pain at discharge: referrals 0 (+14, reached)
    // and 2 (+3): baseline (28 + 14) / 2 = 21, later (42 + 17) / 2 = 29.5,
    // change (14 + 3) / 2 = 8.5, 1 of 2 reached = 0.5. No programme:
    // referral 1, +2, not reached.
    let (_, outcomes) = get_view(&app, "/outcomes").await?;
    let r = row(
        &outcomes,
        &[
            ("programme", json!("escape-pain")),
            ("timepoint", json!("discharge")),
        ],
    )?;
    assert_eq!(
        [
            &r["episodes"],
            &r["mean_baseline"],
            &r["mean_later"],
            &r["mean_change"],
            &r["reached_mic"],
            &r["reached_mic_share"]
        ],
        [
            &json!(2),
            &json!(21.0),
            &json!(29.5),
            &json!(8.5),
            &json!(1),
            &json!(0.5)
        ]
    );
    let r = row(&outcomes, &[("programme", json!("none"))])?;
    assert_eq!(
        [&r["episodes"], &r["mean_change"], &r["reached_mic_share"]],
        [&json!(1), &json!(2.0), &json!(0.0)]
    );
    let pathway = r["pathway"].as_str().ok_or("no pathway")?.to_owned();

    // Conversion per practice: B86001 sent referrals 0 and 1, 1 was referred
    // on to orthopaedics: 1 / 2 = 0.5.
    let (_, conversion) = get_view(&app, "/conversion").await?;
    let r = row(&conversion, &[("practice_ods", json!("B86001"))])?;
    assert_eq!(
        [
            &r["referrals"],
            &r["referred_to_orthopaedics"],
            &r["conversion_rate"]
        ],
        [&json!(2), &json!(1), &json!(0.5)]
    );

    // The same as CSV, by `format=csv` and by `Accept: text/csv`.
    let expected = "practice_ods,imd_decile,referrals,referred_to_orthopaedics,conversion_rate\n\
                    B86001,1,1,1,1.0\n\
                    B86001,3,1,0,0.0\n\
                    B86002,10,1,0,0.0\n\
                    B86003,5,1,0,0.0\n";
    let res = client()
        .get(format!(
            "{}/analytics/conversion?split=imd_decile&format=csv",
            root(&app)
        ))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/csv")),
        "{:?}",
        res.headers()
    );
    assert_eq!(res.text().await?, expected);
    let csv = view_csv(&app, "/conversion?split=imd_decile").await?;
    assert_eq!(csv, expected);
    let csv = view_csv(&app, "/outcomes").await?;
    assert_eq!(
        csv,
        format!(
            "pathway,programme,timepoint,episodes,mean_baseline,mean_later,mean_change,reached_mic,reached_mic_share\n\
             {pathway},escape-pain,discharge,2,21.0,29.5,8.5,1,0.5\n\
             {pathway},none,discharge,1,28.0,30.0,2.0,0,0.0\n"
        )
    );

    // Discharge: referrals 0 and 2 from the class, referral 1 (referred on to
    // orthopaedics) from FCP. Each gets its follow-up questionnaire, due six
    // months (the default) after its discharge.
    let before = Utc::now();
    for i in [0, 2] {
        scheduling
            .discharge(spb::DischargeRequest {
                referral_id: ids[i].clone(),
                reason: "goals-met".to_owned(),
            })
            .await?;
    }
    assessment
        .discharge_episode(apb::DischargeEpisodeRequest {
            referral_id: ids[1].clone(),
            reason: "assessment-outcome".to_owned(),
            notify_referrer: false,
        })
        .await?;
    let after = Utc::now();
    let six_months = chrono::Months::new(6);
    // Due times are kept to the second.
    let earliest = before
        .trunc_subsecs(0)
        .checked_add_months(six_months)
        .ok_or("date")?;
    let latest = after.checked_add_months(six_months).ok_or("date")?;
    for i in [0, 1, 2] {
        // An earlier discharge (the FCP episode's) scheduled it first; the
        // later one moves it.
        msk_hq_state(&mut outcomes_service, &ids[i], "follow-up", |q| {
            let due = DateTime::parse_from_rfc3339(&q.due).map(|d| d.with_timezone(&Utc));
            q.status == "due" && due.is_ok_and(|d| earliest <= d && d <= latest)
        })
        .await?;
    }
    // The follow-up is sent to referral 0, then completed by 0, 1 and 2:
    // 0: 28 -> 35 (+7, reaches the MIC of 5); 1: 28 -> 31 (+3);
    // 2: 14 -> 14 (0).
    let sent = outcomes_service
        .mark_sent(opb::MarkSentRequest {
            referral_id: ids[0].clone(),
            measure: "msk-hq".to_owned(),
            timepoint: "follow-up".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(sent.status, "sent");
    assert!(sent.sent_at.is_some());
    for (i, values) in [(0, scores(7, 3)), (1, scores(11, 3)), (2, vec![1; 14])] {
        submit_msk_hq(&app, &items, &ids[i], "follow-up", &values).await?;
    }
    let done = msk_hq_state(&mut outcomes_service, &ids[0], "follow-up", |q| {
        q.status == "completed"
    })
    .await?;
    assert_eq!(done.score.as_ref().map(|s| s.value), Some(35.0));
    assert!(done.sent_at.is_some() && done.completed_at.is_some());
    let changes = outcomes_service
        .get_outcomes(opb::GetOutcomesRequest {
            referral_id: ids[0].clone(),
        })
        .await?
        .into_inner()
        .changes;
    let change = changes
        .iter()
        .find(|c| c.measure == "msk-hq" && c.to == "follow-up")
        .ok_or("no follow-up change")?;
    assert_eq!(
        (
            change.from.as_str(),
            change.baseline,
            change.later,
            change.change,
            change.reached_minimal_important_change
        ),
        ("first-contact", 28.0, 35.0, 7.0, true)
    );

    // Outcome change at follow-up. ESCAPE-pain: referrals 0 (+7, reached)
    // and 2 (0): baseline (28 + 14) / 2 = 21, later (35 + 14) / 2 = 24.5,
    // change (7 + 0) / 2 = 3.5, 1 of 2 reached = 0.5. No programme:
    // referral 1, 28 -> 31, +3, not reached. Discharge rows are unchanged.
    view_when(&app, "/outcomes", |t| sum(t, "episodes") == 6).await?;
    let csv = view_csv(&app, "/outcomes").await?;
    assert_eq!(
        csv,
        format!(
            "pathway,programme,timepoint,episodes,mean_baseline,mean_later,mean_change,reached_mic,reached_mic_share\n\
             {pathway},escape-pain,discharge,2,21.0,29.5,8.5,1,0.5\n\
             {pathway},escape-pain,follow-up,2,21.0,24.5,3.5,1,0.5\n\
             {pathway},none,discharge,1,28.0,30.0,2.0,0,0.0\n\
             {pathway},none,follow-up,1,28.0,31.0,3.0,0,0.0\n"
        )
    );
    let (_, outcomes) = get_view(&app, "/outcomes").await?;
    let (_, dna) = get_view(&app, "/dna").await?;

    // The charts page, in a real headless browser: it draws the same
    // numbers, and a bad token is shown as an error.
    let page = client()
        .get(format!("{}/analytics/dashboard", root(&app)))
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()
            .get("content-security-policy")
            .is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("default-src 'none'"))),
        "{:?}",
        page.headers()
    );
    let dom = rendered_dom(&format!(
        "{}/analytics/dashboard#token={analyst}",
        root(&app)
    ))
    .await?;
    assert!(dom.contains(r#"data-state="loaded""#), "{dom}");
    for drawn in [
        r#"data-label="referral-to-first-contact" data-series="median_days" data-value="8""#,
        r#"data-label="referral-to-first-contact" data-series="p92_days" data-value="12""#,
        r#"data-label="escape-pain at discharge" data-series="mean_change" data-value="8.5""#,
        r#"data-label="escape-pain at follow-up" data-series="mean_change" data-value="3.5""#,
        r#"data-label="escape-pain at follow-up" data-series="reached_mic_share" data-value="0.5""#,
        r#"data-label="none at follow-up" data-series="mean_change" data-value="3""#,
    ] {
        assert!(dom.contains(drawn), "{drawn} not drawn in {dom}");
    }
    assert!(dom.contains(r#"<table data-view="dna">"#), "{dom}");
    assert!(
        dom.contains(r#"<td data-col="dna_rate" class="n">0.25</td>"#),
        "{dom}"
    );
    let dom = rendered_dom(&format!(
        "{}/analytics/dashboard#token={analyst}&split=imd_decile",
        root(&app)
    ))
    .await?;
    for drawn in [
        r#"data-label="referral-to-first-contact (imd decile 1)" data-series="p92_days" data-value="9""#,
        r#"data-label="referral-to-first-contact (imd decile 5)" data-series="p92_days" data-value="12""#,
    ] {
        assert!(dom.contains(drawn), "{drawn} not drawn in {dom}");
    }
    let dom = rendered_dom(&format!(
        "{}/analytics/dashboard#token={referrer}",
        root(&app)
    ))
    .await?;
    assert!(dom.contains(r#"data-state="error""#), "{dom}");
    assert!(dom.contains("403"), "{dom}");

    // `mskflow export` writes the same views as CSV files.
    let out = tempfile::tempdir()?;
    let secret = out.path().join("secret");
    std::fs::write(&secret, "an export secret for this test only\n")?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .arg("export")
        .arg("--data-dir")
        .arg(&app.dir)
        .arg("--out")
        .arg(out.path())
        .arg("--secret-file")
        .arg(&secret)
        .env_remove("MSKFLOW_ANALYTICS_SECRET")
        .env_remove("MSKFLOW_CONFIG")
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let views_dir = out.path().join("views");
    assert_eq!(
        std::fs::read_to_string(views_dir.join("conversion-by-imd_decile.csv"))?,
        expected
    );
    assert_eq!(std::fs::read_dir(&views_dir)?.count(), 4 * 6);
    let waits = std::fs::read_to_string(views_dir.join("waits.csv"))?;
    assert!(
        waits.contains("referral-to-first-contact,4,8.0,12\n"),
        "{waits}"
    );

    // A restarted gateway replays the log into the same numbers.
    let dir = app.dir.clone();
    let mut app = app;
    app.stop().await?;
    let again = spawn_app_in(&dir).await?;
    let replayed = view_when(&again, "/dna", |t| sum(t, "booked") > 0).await?;
    assert_eq!(replayed, dna);
    let (_, replayed) = get_view(&again, "/outcomes").await?;
    assert_eq!(replayed, outcomes);
    Ok(())
}
