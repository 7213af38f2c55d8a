//! FHIR Subscriptions (R4 topic-based backport, rest-hook) over real sockets:
//! a receiver is first sent the handshake (retried like any message), then
//! told every status change of its organisation's referrals in order,
//! numbered without gaps, across a restart, and nothing after the
//! subscription is deleted; an endpoint that never answers the handshake
//! leaves the subscription in error and is told nothing. And the referrer's
//! cancellation by `PUT /ServiceRequest/{id}` with `If-Match`.

mod common;

use std::time::Duration;

use actix_web::http::StatusCode;
use common::receiver::Receiver;
use common::*;
use mskflow_proto::assessment::v1 as apb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use serde_json::{Value, json};
use uuid::Uuid;

const TOPIC: &str = mskflow_gateway::subscription::TOPIC;
const PAYLOAD_CONTENT: &str = mskflow_gateway::subscription::PAYLOAD_CONTENT_URL;

fn subscription(endpoint: &str, payload_content: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Tell the practice when a referral changes",
        "criteria": TOPIC,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": payload_content}]}
        }
    })
}

async fn subscribe(
    app: &App,
    http: &reqwest::Client,
    body: &Value,
) -> TestResult<(u16, Option<String>, Value)> {
    let res = http
        .post(format!("{}/Subscription", app.base))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .body(body.to_string())
        .send()
        .await?;
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, location, res.json().await?))
}

/// A parameter of the notification's status `Parameters`.
fn parameter<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["parameter"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The subscription's status once it is `want` (or after 15 s, as it is).
async fn subscription_when(app: &App, id: &str, want: &str) -> TestResult<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, sub) = app.get_json(&format!("Subscription/{id}")).await?;
        assert_eq!(status, 200, "{sub}");
        if sub["status"] == want || tokio::time::Instant::now() > deadline {
            return Ok(sub);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Check a handshake Bundle (Subscriptions Backport IG): only the status
/// `Parameters`, `type` handshake, `status` requested, counter 0, no focus.
fn assert_handshake(bundle: &Value, sub_id: &str) -> TestResult {
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(1),
        "a handshake carries no focus entries: {bundle}"
    );
    let status = &bundle["entry"][0]["resource"];
    assert_eq!(status["resourceType"], "Parameters");
    assert_eq!(
        status["meta"]["profile"][0],
        mskflow_gateway::subscription::STATUS_PROFILE
    );
    assert_eq!(parameter(status, "type")["valueCode"], "handshake");
    assert_eq!(parameter(status, "status")["valueCode"], "requested");
    assert_eq!(parameter(status, "topic")["valueCanonical"], TOPIC);
    assert!(
        parameter(status, "subscription")["valueReference"]["reference"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!("Subscription/{sub_id}"))),
        "{bundle}"
    );
    assert_eq!(counter(bundle)?, 0);
    assert!(parameter(status, "notification-event").is_null());
    Ok(())
}

/// `events-since-subscription-start` of a notification Bundle.
fn counter(bundle: &Value) -> TestResult<u64> {
    Ok(parameter(
        &bundle["entry"][0]["resource"],
        "events-since-subscription-start",
    )["valueString"]
        .as_str()
        .ok_or("no counter")?
        .parse()?)
}

async fn new_referral(app: &App) -> TestResult<(Value, String)> {
    let bundle = new_referral_message()?;
    let answer: Value = app.post_message(&bundle).await?.json().await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    task_when(app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    Ok((bundle, id))
}

async fn book_assessment(app: &App, referral_id: &str) -> TestResult {
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
            referral_id: referral_id.to_owned(),
            slot_id: slot_id.to_string(),
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hears_every_change_in_order_until_it_unsubscribes() -> TestResult {
    let ours = Receiver::start(1, StatusCode::OK)?;
    let theirs = Receiver::start(0, StatusCode::OK)?;
    let (our_url, their_url) = (ours.url.clone(), theirs.url.clone());
    let endpoints = vec![our_url.clone(), their_url.clone()];
    let configure = |c: &mut mskflow::Config| {
        c.gateway.referrer_endpoints = endpoints.clone();
        c.gateway.outbound.initial_backoff_ms = 20;
    };
    let mut app = spawn_app_with(configure).await?;

    // Our organisation (the fixtures' sender) subscribes for full resources.
    let (status, location, sub) = subscribe(
        &app,
        &client(),
        &subscription(&format!("{our_url}/notify"), "full-resource"),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(
        sub["status"], "requested",
        "active only once the handshake is answered"
    );
    assert_eq!(sub["meta"]["versionId"], "1");
    let sub_id = sub["id"].as_str().ok_or("no id")?.to_owned();
    assert!(
        location.is_some_and(|l| l.contains(&format!("/Subscription/{sub_id}"))),
        "Location names the subscription"
    );
    // Another organisation subscribes too: it must hear nothing of ours.
    let mut other = claims("other-practice", "B82002", "system/Subscription.*");
    other.role = None;
    let other_client = client_with_token(&token_for(&other)?);
    let (status, _, theirs_sub) = subscribe(
        &app,
        &other_client,
        &subscription(&format!("{their_url}/notify"), "id-only"),
    )
    .await?;
    assert_eq!(status, 201, "{theirs_sub}");
    // The handshake: the first attempt fails, its retry is answered.
    let active = subscription_when(&app, &sub_id, "active").await?;
    assert_eq!(active["status"], "active", "{active}");
    assert_eq!(active["meta"]["versionId"], "2");
    assert!(active.get("error").is_none());
    let handshakes = ours.wait_for(2).await;
    assert_eq!(handshakes.len(), 2, "a failed handshake, then its retry");
    for h in &handshakes {
        assert_handshake(&h.body, &sub_id)?;
    }
    assert_eq!(
        handshakes[0].request_id, handshakes[1].request_id,
        "a retry carries the same X-Request-Id"
    );
    // Each organisation lists only its own.
    let (status, list) = app.get_json("Subscription").await?;
    assert_eq!(status, 200);
    let listed: Vec<&str> = entries_of(&list, "Subscription")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(listed.contains(&sub_id.as_str()), "{list}");
    let (_, requested) = app.get_json("Subscription?status=requested").await?;
    assert!(
        !entries_of(&requested, "Subscription")
            .iter()
            .any(|s| s["id"] == sub_id.as_str()),
        "an active subscription is not listed as requested: {requested}"
    );
    assert!(!listed.contains(&theirs_sub["id"].as_str().unwrap_or_default()));

    // Two changes of one referral: triaged, then the FCP appointment booked.
    let (_, referral) = new_referral(&app).await?;
    book_assessment(&app, &referral).await?;
    let got = ours.wait_for(4).await;
    assert_eq!(
        got.len(),
        4,
        "the handshake (failed, then retried), the triage, then the booking"
    );
    assert!(got.iter().all(|r| r.path == "/fhir/notify"));
    let mut tasks = Vec::new();
    for bundle in got[2..].iter().map(|r| &r.body) {
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "history");
        let status = &bundle["entry"][0]["resource"];
        assert_eq!(status["resourceType"], "Parameters");
        assert_eq!(
            status["meta"]["profile"][0],
            mskflow_gateway::subscription::STATUS_PROFILE
        );
        assert_eq!(parameter(status, "topic")["valueCanonical"], TOPIC);
        assert_eq!(parameter(status, "type")["valueCode"], "event-notification");
        assert!(
            parameter(status, "subscription")["valueReference"]["reference"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!("Subscription/{sub_id}")))
        );
        let event = &parameter(status, "notification-event")["part"];
        let focus = event
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "focus"))
            .ok_or("no focus")?;
        assert!(
            focus["valueReference"]["reference"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!("Task/{referral}")))
        );
        let task = &bundle["entry"][1]["resource"];
        assert_eq!(
            task["resourceType"], "Task",
            "full-resource carries the Task"
        );
        assert_eq!(task["id"], referral.as_str());
        tasks.push((counter(bundle)?, business(task).to_owned()));
    }
    tasks.dedup();
    assert_eq!(
        tasks,
        vec![
            (1, "triaged".to_owned()),
            (2, "assessment-booked".to_owned())
        ]
    );

    // A restart keeps the subscription and its count; nothing is sent twice.
    app.stop().await?;
    let _kept = app;
    let app = spawn_app_in_with(&_kept.dir, configure).await?;
    let (status, after) = app.get_json(&format!("Subscription/{sub_id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(after["status"], "active");
    let (bundle, second) = new_referral(&app).await?;
    let got = ours.wait_for(5).await;
    assert_eq!(
        got.len(),
        5,
        "only the new change after the restart (no second handshake)"
    );
    assert_eq!(counter(&got[4].body)?, 3, "the count goes on without a gap");
    assert_eq!(got[4].body["entry"][1]["resource"]["id"], second.as_str());

    // Deleted: turned off, and the next change is not sent.
    let res = client()
        .delete(format!("{}/Subscription/{sub_id}", app.base))
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 204);
    let (_, off) = app.get_json(&format!("Subscription/{sub_id}")).await?;
    assert_eq!(off["status"], "off");
    assert_eq!(off["meta"]["versionId"], "3");
    assert_eq!(
        app.post_message(&as_update(&bundle, "revoked")?)
            .await?
            .status()
            .as_u16(),
        200
    );
    task_when(&app, &second, "cancelled", |t| t["status"] == "cancelled").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ours.requests().len(),
        5,
        "nothing after the subscription is off"
    );
    let their_requests = theirs.requests();
    assert_eq!(
        their_requests.len(),
        1,
        "another organisation's subscription hears only its handshake, nothing of these referrals"
    );
    assert_handshake(
        &their_requests[0].body,
        theirs_sub["id"].as_str().unwrap_or_default(),
    )?;
    check_event_schemas(&app).await?;
    ours.stop().await;
    theirs.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_leaves_the_subscription_in_error_and_unnotified() -> TestResult {
    let never = Receiver::start(usize::MAX, StatusCode::OK)?;
    let url = never.url.clone();
    let app = spawn_app_with(|c| {
        c.gateway.referrer_endpoints = vec![url.clone()];
        c.gateway.outbound.initial_backoff_ms = 20;
        c.gateway.outbound.max_attempts = 3;
    })
    .await?;
    let (status, _, sub) = subscribe(
        &app,
        &client(),
        &subscription(&format!("{url}/notify"), "id-only"),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["status"], "requested");
    let sub_id = sub["id"].as_str().ok_or("no id")?.to_owned();

    let errored = subscription_when(&app, &sub_id, "error").await?;
    assert_eq!(errored["status"], "error", "{errored}");
    let reason = errored["error"].as_str().ok_or("no Subscription.error")?;
    assert!(reason.contains("503"), "{reason}");
    let tried = never.requests();
    assert_eq!(tried.len(), 3, "every attempt, then given up");
    for t in &tried {
        assert_handshake(&t.body, &sub_id)?;
        assert_eq!(t.request_id, tried[0].request_id);
    }
    let (_, listed) = app.get_json("Subscription?status=error").await?;
    assert_eq!(listed["total"], 1, "{listed}");

    // A change of one of its organisation's referrals is not sent to it.
    let (_, referral) = new_referral(&app).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        never.requests().len(),
        3,
        "a subscription in error is sent no notifications"
    );
    let events = app.all_events().await?;
    let outcomes: Vec<&str> = events
        .iter()
        .filter(|e| e.stream_id == format!("subscription-{sub_id}"))
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(outcomes, vec!["SubscriptionCreated", "SubscriptionErrored"]);
    assert!(
        events
            .iter()
            .any(|e| e.stream_id == format!("referral-{referral}")
                && e.event_type == "ReferralTriaged"),
        "the referral did change"
    );
    check_event_schemas(&app).await?;
    never.stop().await;
    Ok(())
}

#[tokio::test]
async fn subscriptions_the_server_does_not_offer_are_refused_by_element() -> TestResult {
    let endpoint = "http://127.0.0.1:9/fhir";
    let app = spawn_app_with(|c| c.gateway.referrer_endpoints.push(endpoint.to_owned())).await?;
    let good = subscription(&format!("{endpoint}/notify"), "id-only");
    let mut unknown_topic = good.clone();
    unknown_topic["criteria"] = json!("https://elsewhere.example/SubscriptionTopic/x");
    let mut unregistered = good.clone();
    unregistered["channel"]["endpoint"] = json!("https://unregistered.example/fhir/notify");
    let mut websocket = good.clone();
    websocket["channel"]["type"] = json!("websocket");
    let mut no_criteria = good.clone();
    no_criteria
        .as_object_mut()
        .ok_or("not an object")?
        .remove("criteria");
    for (body, status, expression) in [
        (&unknown_topic, 422, "Subscription.criteria"),
        (&unregistered, 422, "Subscription.channel.endpoint"),
        (&websocket, 422, "Subscription.channel.type"),
        (&no_criteria, 400, "Subscription.criteria"),
    ] {
        let (got, _, outcome) = subscribe(&app, &client(), body).await?;
        assert_eq!(got, status, "{expression}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert_eq!(
            outcome["issue"][0]["expression"][0], expression,
            "{outcome}"
        );
    }
    // Nothing was recorded for them.
    let (_, list) = app.get_json("Subscription").await?;
    assert_eq!(list["total"], 0, "{list}");
    // A good one is accepted, with id-only as asked.
    let (got, _, created) = subscribe(&app, &client(), &good).await?;
    assert_eq!(got, 201, "{created}");
    assert_eq!(
        created["channel"]["_payload"]["extension"][0]["valueCode"],
        "id-only"
    );
    // The capability statement lists Subscription.
    let (_, cs) = app.get_json("metadata").await?;
    let listed = cs["rest"][0]["resource"]
        .as_array()
        .ok_or("no resources")?
        .iter()
        .any(|r| r["type"] == "Subscription");
    assert!(listed);
    Ok(())
}

async fn put(
    app: &App,
    id: &str,
    body: &Value,
    if_match: Option<&str>,
) -> TestResult<reqwest::Response> {
    let mut req = client()
        .put(format!("{}/ServiceRequest/{id}", app.base))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .body(body.to_string());
    if let Some(v) = if_match {
        req = req.header("If-Match", v);
    }
    Ok(req.send().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_update_cancels_once_and_refuses_stale_versions() -> TestResult {
    let app = spawn_app().await?;
    let (_, id) = new_referral(&app).await?;
    let res = app.get(&format!("ServiceRequest/{id}")).await?;
    let etag = res
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .ok_or("no ETag")?
        .to_owned();
    let version: u64 = etag.trim_start_matches("W/").trim_matches('"').parse()?;
    let current: Value = res.json().await?;

    // Anything but the status is not for changing.
    let mut other_subject = current.clone();
    other_subject["subject"] = json!({"reference": "Patient/someone-else"});
    other_subject["status"] = json!("revoked");
    let res = put(&app, &id, &other_subject, Some(&etag)).await?;
    assert_eq!(res.status().as_u16(), 422);
    let outcome: Value = res.json().await?;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "ServiceRequest.subject"
    );

    let mut revoked = current.clone();
    revoked["status"] = json!("revoked");
    // A stale version: 412, and nothing changes.
    let stale = format!("W/\"{}\"", version - 1);
    let res = put(&app, &id, &revoked, Some(&stale)).await?;
    assert_eq!(res.status().as_u16(), 412);
    let outcome: Value = res.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["conflict"]);
    let (_, task) = app.get_json(&format!("Task/{id}")).await?;
    assert_ne!(task["status"], "cancelled");

    // Two at once with the same version: exactly one wins.
    let (a, b) = tokio::join!(
        put(&app, &id, &revoked, Some(&etag)),
        put(&app, &id, &revoked, Some(&etag))
    );
    let (a, b) = (a?, b?);
    let mut codes = vec![a.status().as_u16(), b.status().as_u16()];
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 412]);
    let winner = if a.status().as_u16() == 200 { a } else { b };
    let new_etag = winner
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .ok_or("no ETag")?
        .to_owned();
    assert_eq!(new_etag, format!("W/\"{}\"", version + 1));
    let updated: Value = winner.json().await?;
    assert_eq!(updated["status"], "revoked");
    task_when(&app, &id, "cancelled", |t| t["status"] == "cancelled").await?;
    let cancellations = app
        .all_events()
        .await?
        .iter()
        .filter(|e| e.event_type == "ReferralCancelled" && e.stream_id == format!("referral-{id}"))
        .count();
    assert_eq!(cancellations, 1);

    // Without If-Match the update applies to the current version; Prefer is
    // honoured.
    let (_, second) = new_referral(&app).await?;
    let (_, mut current) = app.get_json(&format!("ServiceRequest/{second}")).await?;
    current["status"] = json!("entered-in-error");
    let res = client()
        .put(format!("{}/ServiceRequest/{second}", app.base))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .header("Prefer", "return=minimal")
        .body(current.to_string())
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers().get("etag").is_some());
    assert!(res.bytes().await?.is_empty(), "return=minimal has no body");
    task_when(&app, &second, "entered in error", |t| {
        t["status"] == "entered-in-error"
    })
    .await?;

    // Other resources still have no update.
    let res = client()
        .put(format!("{}/Task/{id}", app.base))
        .header("Content-Type", "application/fhir+json")
        .body(task.to_string())
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 405);
    Ok(())
}
