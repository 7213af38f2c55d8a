//! `GET /fhir/metadata` states exactly what the server does. The test reads
//! the CapabilityStatement, validates it with the R4 JSON schema (the
//! external validator the FHIR example test uses), builds a real caseload
//! (a referral booked, assessed and on a class; a Subscription), and then
//! exercises every declared capability against the live routes: each
//! interaction with a valid request, versioning and history, conditional
//! create, every search parameter (and an undeclared one refused), every
//! format, every operation. A capability declared but not served, or one
//! the test does not know how to exercise, fails the test.

mod common;

use actix_web::http::StatusCode as ReceiverStatus;
use common::fhir_validator::{fhir_tools, validate};
use common::receiver::Receiver;
use common::*;
use mskflow_proto::assessment::v1 as apb;
use mskflow_proto::assessment::v1::assessment_service_client::AssessmentServiceClient;
use mskflow_proto::scheduling::v1 as spb;
use mskflow_proto::scheduling::v1::scheduling_service_client::SchedulingServiceClient;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number|9434765919";

/// One live instance of each resource type, to exercise it with.
struct Caseload {
    /// Resource type -> id of an instance the test token may read.
    ids: BTreeMap<&'static str, String>,
    referral: String,
    subscription_endpoint: String,
}

fn string(v: &Value) -> TestResult<String> {
    Ok(v.as_str()
        .ok_or_else(|| format!("not a string: {v}"))?
        .to_owned())
}

async fn first_id(app: &App, search: &str) -> TestResult<String> {
    let (status, bundle) = app.get_json(search).await?;
    assert_eq!(status, 200, "{search}: {bundle}");
    string(&bundle["entry"][0]["resource"]["id"])
}

fn write(method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
    client()
        .request(method, url)
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
}

fn subscription(endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Tell the practice when a referral changes",
        "criteria": mskflow_gateway::subscription::TOPIC,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}
    })
}

fn msk_hq_response(referral: &str, timepoint: &str) -> Value {
    json!({
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint", "code": timepoint}]},
        "questionnaire": "https://fhir.mskflow.org/Questionnaire/msk-hq",
        "basedOn": [{"reference": format!("ServiceRequest/{referral}")}],
        "item": (1..=14).map(|l| json!({"linkId": l.to_string(), "answer": [{"valueInteger": 2}]})).collect::<Vec<_>>()
    })
}

/// A referral triaged, booked with an FCP and assessed (Appointment,
/// Encounter), a class (Schedule, Slot), and a Subscription.
async fn caseload(app: &App, endpoint: &str) -> TestResult<Caseload> {
    let running = app.running.as_ref().ok_or("not running")?;
    let mut assessment =
        AssessmentServiceClient::connect(format!("http://{}", running.assessment_addr)).await?;
    let mut scheduling =
        SchedulingServiceClient::connect(format!("http://{}", running.scheduling_addr)).await?;
    let mut ids = BTreeMap::new();

    let r = app.post_message(&new_referral_message()?).await?;
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await?;
    let referral = string(&entries_of(&answer, "Task")[0]["id"])?;
    task_when(app, &referral, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
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
            referral_id: referral.clone(),
            slot_id: slot_id.to_string(),
        })
        .await?;
    task_when(app, &referral, "booked", |t| {
        business(t) == "assessment-booked"
    })
    .await?;
    assessment
        .complete_assessment(apb::CompleteAssessmentRequest {
            referral_id: referral.clone(),
            findings_summary: "Knee osteoarthritis; exercise-based management agreed".to_owned(),
            shared_decision_made: true,
            work_discussed: true,
            psychological_distress: "negative".to_owned(),
            outcomes: vec![apb::Outcome {
                outcome: "group-programme".to_owned(),
                programme: Some("escape-pain".to_owned()),
                ..apb::Outcome::default()
            }],
            ..apb::CompleteAssessmentRequest::default()
        })
        .await?;
    task_when(app, &referral, "waiting for rehab", |t| {
        business(t) == "awaiting-rehabilitation"
    })
    .await?;
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

    ids.insert("ServiceRequest", referral.clone());
    ids.insert("Task", referral.clone());
    ids.insert("Encounter", referral.clone());
    ids.insert(
        "Patient",
        first_id(app, &format!("Patient?identifier={NHS}")).await?,
    );
    ids.insert(
        "Appointment",
        first_id(
            app,
            &format!("Appointment?based-on=ServiceRequest/{referral}"),
        )
        .await?,
    );
    ids.insert("Schedule", class.class_id.clone());
    ids.insert(
        "Slot",
        first_id(app, &format!("Slot?schedule=Schedule/{}", class.class_id)).await?,
    );
    ids.insert("Questionnaire", "msk-hq".to_owned());
    ids.insert("MessageDefinition", "servicerequest-request".to_owned());
    let subscription_endpoint = format!("{endpoint}/notify");
    let r = write(reqwest::Method::POST, format!("{}/Subscription", app.base))
        .body(subscription(&subscription_endpoint).to_string())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let created: Value = r.json().await?;
    ids.insert("Subscription", string(&created["id"])?);
    Ok(Caseload {
        ids,
        referral,
        subscription_endpoint,
    })
}

/// A valid create of `t`; `None` when the test has no body for it.
fn create_body(t: &str, caseload: &Caseload) -> TestResult<Option<Value>> {
    Ok(match t {
        "ServiceRequest" => {
            let mut sr = fixture("referral-service-request.json")?;
            sr["identifier"] = json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": Uuid::new_v4().to_string()}]);
            Some(sr)
        }
        "Subscription" => Some(subscription(&caseload.subscription_endpoint)),
        "QuestionnaireResponse" => Some(msk_hq_response(&caseload.referral, "first-contact")),
        _ => None,
    })
}

/// A value of a search parameter of type `kind` that the server can parse.
fn search_value(t: &str, name: &str, kind: &str, caseload: &Caseload) -> (String, String) {
    let referral = &caseload.referral;
    match (name, kind) {
        ("patient" | "subject", _) => (format!("{name}:identifier"), NHS.to_owned()),
        ("_id", _) => (
            name.to_owned(),
            caseload.ids.get(t).cloned().unwrap_or_default(),
        ),
        ("identifier", _) if t == "Patient" => (name.to_owned(), NHS.to_owned()),
        ("identifier", _) => (
            name.to_owned(),
            "https://fhir.example-gp.nhs.uk/Id/referral|unknown".to_owned(),
        ),
        ("schedule", _) => (
            name.to_owned(),
            format!("Schedule/{}", caseload.ids["Schedule"]),
        ),
        ("entity", _) => (name.to_owned(), format!("ServiceRequest/{referral}")),
        ("agent", _) => (name.to_owned(), TEST_CLIENT.to_owned()),
        (_, "date") => (name.to_owned(), "ge2020-01-01".to_owned()),
        (_, "number") => (name.to_owned(), "1".to_owned()),
        (_, "reference") => (name.to_owned(), format!("ServiceRequest/{referral}")),
        _ => (name.to_owned(), "active".to_owned()),
    }
}

fn codes<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["code"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_capability_is_served() -> TestResult {
    let receiver = Receiver::start(0, ReceiverStatus::OK)?;
    let endpoints = vec![receiver.url.clone()];
    let app = spawn_app_with(|c| c.gateway.referrer_endpoints = endpoints.clone()).await?;

    // The statement is open (no token) and valid R4.
    let res = anonymous_client()
        .get(format!("{}/metadata", app.base))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    let cs: Value = res.json().await?;
    let tools = fhir_tools()?;
    let failures = validate(&tools, &[("GET metadata".to_owned(), cs.clone())])?;
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let rest = &cs["rest"][0];
    assert_eq!(rest["mode"], "server");
    assert!(
        rest.get("interaction").is_none(),
        "system-level interactions declared but none are served: {}",
        rest["interaction"]
    );

    let caseload = caseload(&app, &receiver.url).await?;

    // Formats: each declared one is accepted and answered as FHIR JSON; an
    // undeclared one is refused.
    for f in cs["format"].as_array().ok_or("no format")? {
        let f = f.as_str().ok_or("format")?;
        let res = client()
            .get(format!("{}/metadata", app.base))
            .query(&[("_format", f)])
            .send()
            .await?;
        assert_eq!(res.status().as_u16(), 200, "_format={f}");
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("application/fhir+json"), "{f}: {ct}");
        let mime = if f == "json" { "application/json" } else { f };
        let res = client()
            .get(format!("{}/Task/{}", app.base, caseload.referral))
            .header("Accept", mime)
            .send()
            .await?;
        assert_eq!(res.status().as_u16(), 200, "Accept: {mime}");
    }
    for undeclared in ["xml", "application/fhir+xml", "text/turtle"] {
        let (status, _) = app
            .get_json(&format!("metadata?_format={undeclared}"))
            .await?;
        assert_eq!(status, 406, "_format={undeclared} is not declared");
    }

    // Operations.
    for op in rest["operation"].as_array().ok_or("no operations")? {
        match op["name"].as_str() {
            Some("process-message") => {
                let r = app.post_message(&new_referral_message()?).await?;
                assert_eq!(r.status().as_u16(), 200);
                let answer: Value = r.json().await?;
                assert_eq!(answer["type"], "message", "{answer}");
            }
            other => return Err(format!("operation {other:?} is declared; exercise it").into()),
        }
    }

    let resources = rest["resource"].as_array().ok_or("no resources")?;
    let mut deletes = Vec::new();
    for r in resources {
        let t = r["type"].as_str().ok_or("no type")?;
        let interactions = codes(r, "interaction");
        let id = caseload.ids.get(t).cloned();
        let path = |suffix: &str| match &id {
            Some(id) => Ok(format!("{}/{t}/{id}{suffix}", app.base)),
            None => Err(format!("{t}: no instance to exercise {suffix:?} on")),
        };
        for i in &interactions {
            match *i {
                "read" => {
                    let res = client().get(path("")?).send().await?;
                    assert_eq!(res.status().as_u16(), 200, "{t} read");
                    let etag = res
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body: Value = res.json().await?;
                    assert_eq!(body["resourceType"], t);
                    assert_eq!(body["id"].as_str(), id.as_deref());
                    if matches!(
                        r["versioning"].as_str(),
                        Some("versioned" | "versioned-update")
                    ) {
                        let version = string(&body["meta"]["versionId"])?;
                        assert_eq!(etag, Some(format!("W/\"{version}\"")), "{t} ETag");
                    }
                }
                "vread" => {
                    let res = client().get(path("/_history/1")?).send().await?;
                    assert_eq!(res.status().as_u16(), 200, "{t} vread");
                    let body: Value = res.json().await?;
                    assert_eq!(body["meta"]["versionId"], "1", "{t} vread");
                }
                "history-instance" => {
                    let res = client().get(path("/_history")?).send().await?;
                    assert_eq!(res.status().as_u16(), 200, "{t} history");
                    let body: Value = res.json().await?;
                    assert_eq!(body["type"], "history", "{t} history");
                    assert!(body["total"].as_u64() >= Some(1), "{t} history: {body}");
                }
                "search-type" => {
                    let (status, body) = app.get_json(t).await?;
                    assert_eq!(status, 200, "{t} search: {body}");
                    assert_eq!(body["type"], "searchset");
                }
                "create" => {
                    let body = create_body(t, &caseload)?
                        .ok_or_else(|| format!("{t} create is declared; exercise it"))?;
                    let res = write(reqwest::Method::POST, format!("{}/{t}", app.base))
                        .body(body.to_string())
                        .send()
                        .await?;
                    assert_eq!(res.status().as_u16(), 201, "{t} create");
                    let created: Value = res.json().await?;
                    assert_eq!(created["resourceType"], t);
                    if t == "Subscription" {
                        deletes.push(string(&created["id"])?);
                    }
                }
                "update" => {
                    // Sending the resource as it is changes nothing: 200.
                    let (_, current) = app.get_json(&format!("{t}/{}", caseload.referral)).await?;
                    let res = write(reqwest::Method::PUT, path("")?)
                        .body(current.to_string())
                        .send()
                        .await?;
                    assert_eq!(res.status().as_u16(), 200, "{t} update");
                    if r["versioning"] == "versioned-update" {
                        let res = write(reqwest::Method::PUT, path("")?)
                            .header("If-Match", "W/\"999\"")
                            .body(current.to_string())
                            .send()
                            .await?;
                        assert_eq!(res.status().as_u16(), 412, "{t} stale If-Match");
                    }
                    assert_eq!(r["updateCreate"], false, "{t}: update does not create");
                }
                "delete" => {
                    let victim = deletes
                        .pop()
                        .ok_or_else(|| format!("{t}: nothing created to delete"))?;
                    let res = write(
                        reqwest::Method::DELETE,
                        format!("{}/{t}/{victim}", app.base),
                    )
                    .send()
                    .await?;
                    assert!(res.status().is_success(), "{t} delete: {}", res.status());
                    let (status, _) = app.get_json(&format!("{t}/{victim}")).await?;
                    assert!(
                        status == 404 || status == 410 || status == 200,
                        "{t} after delete: {status}"
                    );
                }
                other => {
                    return Err(format!("{t}: interaction {other} is declared; exercise it").into());
                }
            }
        }
        // Interactions not declared are not served.
        if !interactions.contains(&"create") {
            let res = write(reqwest::Method::POST, format!("{}/{t}", app.base))
                .body(json!({"resourceType": t}).to_string())
                .send()
                .await?;
            assert_eq!(res.status().as_u16(), 405, "{t} create is not declared");
        }
        if !interactions.contains(&"delete")
            && let Ok(url) = path("")
        {
            let res = write(reqwest::Method::DELETE, url).send().await?;
            assert_eq!(res.status().as_u16(), 405, "{t} delete is not declared");
        }

        // History and versioning agree with the interactions.
        let history = interactions.contains(&"history-instance");
        assert_eq!(
            r["readHistory"].as_bool(),
            Some(interactions.contains(&"vread")),
            "{t} readHistory"
        );
        assert_eq!(history, interactions.contains(&"vread"), "{t}");

        // Conditional interactions.
        match r["conditionalCreate"].as_bool() {
            Some(true) => {
                assert!(interactions.contains(&"create"), "{t}");
                let body = create_body(t, &caseload)?
                    .ok_or_else(|| format!("{t}: conditional create declared; exercise it"))?;
                let identifier = &body["identifier"][0];
                let condition = format!(
                    "identifier={}|{}",
                    string(&identifier["system"])?,
                    string(&identifier["value"])?
                );
                let first = write(reqwest::Method::POST, format!("{}/{t}", app.base))
                    .header("If-None-Exist", &condition)
                    .body(body.to_string())
                    .send()
                    .await?;
                assert_eq!(first.status().as_u16(), 201, "{t} conditional create");
                let first: Value = first.json().await?;
                let again = write(reqwest::Method::POST, format!("{}/{t}", app.base))
                    .header("If-None-Exist", &condition)
                    .body(body.to_string())
                    .send()
                    .await?;
                assert_eq!(
                    again.status().as_u16(),
                    200,
                    "{t} conditional create, again"
                );
                let again: Value = again.json().await?;
                assert_eq!(again["id"], first["id"], "the existing {t} is answered");
            }
            Some(false) => {}
            None => return Err(format!("{t}: conditionalCreate is not stated").into()),
        }
        assert_eq!(
            r["conditionalUpdate"], false,
            "{t}: exercise a conditional update"
        );
        assert_eq!(
            r["conditionalDelete"], "not-supported",
            "{t}: exercise a conditional delete"
        );
        assert_eq!(
            r["conditionalRead"], "not-supported",
            "{t}: exercise a conditional read"
        );
        if r["conditionalDelete"] == "not-supported" && interactions.contains(&"search-type") {
            let res = write(reqwest::Method::DELETE, format!("{}/{t}?_id=x", app.base))
                .send()
                .await?;
            assert_eq!(res.status().as_u16(), 405, "{t}: no conditional delete");
        }
        assert!(
            r.get("versioning").is_some(),
            "{t}: versioning is not stated"
        );

        // Search parameters: each declared one is accepted; an undeclared
        // one is refused (the server's policy: 400 not-supported).
        let params = r["searchParam"].as_array().ok_or("no searchParam")?;
        if !interactions.contains(&"search-type") {
            assert!(params.is_empty(), "{t} declares parameters but no search");
            continue;
        }
        for p in params {
            let name = p["name"].as_str().ok_or("no name")?;
            let kind = p["type"].as_str().ok_or("no type")?;
            let (param, value) = search_value(t, name, kind, &caseload);
            let res = client()
                .get(format!("{}/{t}", app.base))
                .query(&[(param.as_str(), value.as_str())])
                .send()
                .await?;
            let status = res.status().as_u16();
            let body: Value = res.json().await?;
            assert_eq!(status, 200, "{t}?{param}={value}: {body}");
            assert_eq!(body["type"], "searchset", "{t}?{param}={value}");
        }
        let (status, body) = app.get_json(&format!("{t}?colour=blue")).await?;
        assert_eq!(status, 400, "{t}?colour=blue: {body}");
        assert_eq!(body["issue"][0]["code"], "not-supported", "{body}");
    }
    Ok(())
}
