//! One referral end to end over real sockets: FHIR gateway -> gRPC -> intake
//! -> durable event log -> views -> Task.

mod common;

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

fn task_output<'a>(task: &'a Value, code: &str) -> Option<&'a Value> {
    task["output"]
        .as_array()?
        .iter()
        .find(|o| o["type"]["coding"][0]["code"] == code)
}

#[tokio::test]
async fn a_message_bundle_is_accepted_and_its_task_is_readable() -> TestResult {
    let app = spawn_app().await?;
    let bundle = new_referral_message()?;
    let request_id = Uuid::new_v4();
    let res = app.post("$process-message", &bundle, request_id).await?;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.to_string().as_str())
    );
    assert!(res.headers().get("x-correlation-id").is_some());
    let answer: Value = res.json().await?;
    assert_eq!(answer["resourceType"], "Bundle");
    assert_eq!(answer["type"], "message");
    let header = entries_of(&answer, "MessageHeader");
    assert_eq!(header[0]["response"]["code"], "ok");
    let task = entries_of(&answer, "Task")[0].clone();
    let id = task["id"].as_str().ok_or("task has no id")?.to_owned();
    assert_eq!(task["status"], "accepted");
    assert_eq!(task["focus"]["reference"], format!("ServiceRequest/{id}"));

    assert!(
        ["triaged", "awaiting-assessment"].contains(&business(&task)),
        "{task}"
    );
    // The FCP worklist picks the referral up next.
    let read = task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    assert_eq!(read["status"], "accepted");
    assert_eq!(read["meta"]["versionId"], "3");
    assert_eq!(
        task_output(&read, "pathway").map(|o| &o["valueString"]),
        Some(&json!("knee"))
    );
    assert!(task_output(&read, "rule-set-version").is_some());

    for query in [
        format!("focus=ServiceRequest/{id}"),
        format!("based-on=ServiceRequest/{id}"),
        format!("focus={id}"),
    ] {
        let (status, found) = app.get_json(&format!("Task?{query}")).await?;
        assert_eq!(status, 200, "{query}");
        assert_eq!(found["type"], "searchset");
        assert_eq!(found["total"], 1, "{query}");
        assert_eq!(found["entry"][0]["resource"]["id"], id.as_str());
    }
    let (_, none) = app
        .get_json(&format!("Task?focus=ServiceRequest/{}", Uuid::new_v4()))
        .await?;
    assert_eq!(none["total"], 0);

    let (status, sr) = app.get_json(&format!("ServiceRequest/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(sr["id"], id.as_str());
    assert_eq!(sr["status"], "active");
    let sent = entries_of(&bundle, "ServiceRequest")[0];
    assert_eq!(sr["identifier"], sent["identifier"]);
    assert_eq!(sr["reasonCode"], sent["reasonCode"]);
    Ok(())
}

#[tokio::test]
async fn a_plain_service_request_is_created() -> TestResult {
    let app = spawn_app().await?;
    let mut sr = fixture("referral-service-request.json")?;
    sr["identifier"] = json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": Uuid::new_v4().to_string()}]);
    let res = app.post("ServiceRequest", &sr, Uuid::new_v4()).await?;
    assert_eq!(res.status().as_u16(), 201);
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location")?
        .to_owned();
    let created: Value = res.json().await?;
    let id = created["id"].as_str().ok_or("no id")?;
    assert!(
        location.contains(&format!("/ServiceRequest/{id}/_history/")),
        "{location}"
    );
    let (status, task) = app.get_json(&format!("Task/{id}")).await?;
    assert_eq!(status, 200);
    assert_eq!(task["status"], "accepted");
    Ok(())
}

#[tokio::test]
async fn red_flags_redirect_with_the_rule_version_recorded() -> TestResult {
    let app = spawn_app().await?;
    let mut bundle = new_referral_message()?;
    add_red_flag(&mut bundle, "saddle-anaesthesia", true)?;
    let res = app.post_message(&bundle).await?;
    assert_eq!(res.status().as_u16(), 200);
    let answer: Value = res.json().await?;
    let task = entries_of(&answer, "Task")[0];
    assert_eq!(task["status"], "rejected");
    assert_eq!(task["businessStatus"]["coding"][0]["code"], "redirected");
    assert_eq!(
        task_output(task, "redirect-destination").map(|o| &o["valueString"]),
        Some(&json!("emergency-department"))
    );
    assert_eq!(
        task_output(task, "urgency").map(|o| &o["valueString"]),
        Some(&json!("emergency"))
    );

    let events = app.all_events().await?;
    let redirected = events
        .iter()
        .find(|e| e.event_type == "ReferralRedirected")
        .ok_or("no ReferralRedirected event")?;
    let version = redirected.payload["rule_set_version"]
        .as_str()
        .unwrap_or_default();
    assert!(!version.is_empty());
    assert_eq!(
        task_output(task, "rule-set-version").map(|o| &o["valueString"]),
        Some(&json!(version))
    );

    // A red flag answered "absent" does not redirect.
    let mut calm = new_referral_message()?;
    add_red_flag(&mut calm, "saddle-anaesthesia", false)?;
    let answer: Value = app.post_message(&calm).await?.json().await?;
    assert_eq!(entries_of(&answer, "Task")[0]["status"], "accepted");
    Ok(())
}

#[tokio::test]
async fn duplicates_are_not_recorded_twice() -> TestResult {
    let app = spawn_app().await?;
    let bundle = new_referral_message()?;
    let request_id = Uuid::new_v4();
    assert_eq!(
        app.post("$process-message", &bundle, request_id)
            .await?
            .status()
            .as_u16(),
        200
    );
    let before = intake_event_count(&app).await?;

    // The same request again.
    let res = app.post("$process-message", &bundle, request_id).await?;
    assert_eq!(res.status().as_u16(), 409);
    assert_eq!(
        res.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.to_string().as_str())
    );
    let outcome: Value = res.json().await?;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(issue_codes(&outcome), vec!["duplicate"]);
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "REC_CONFLICT"
    );

    // The same referral under a new request id.
    let res = app
        .post("$process-message", &bundle, Uuid::new_v4())
        .await?;
    assert_eq!(res.status().as_u16(), 409);
    assert_eq!(intake_event_count(&app).await?, before);

    let (_, all) = app.get_json("Task").await?;
    assert_eq!(all["total"], 1);
    Ok(())
}

async fn expect_error(
    app: &App,
    resp: reqwest::Response,
    status: u16,
    code: &str,
) -> TestResult<Value> {
    let _ = app;
    assert_eq!(resp.status().as_u16(), status, "expected {status} {code}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("application/fhir+json"), "{ct}");
    let outcome: Value = resp.json().await?;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let codes = issue_codes(&outcome);
    assert!(
        codes.iter().any(|c| c == code),
        "expected issue {code}, got {codes:?}: {outcome}"
    );
    for issue in outcome["issue"].as_array().ok_or("no issues")? {
        assert!(
            issue["diagnostics"].as_str().is_some_and(|d| !d.is_empty()),
            "{issue}"
        );
    }
    Ok(outcome)
}

async fn post_raw(
    app: &App,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> TestResult<reqwest::Response> {
    let mut req = client().post(format!("{}/{path}", app.base)).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    Ok(req.send().await?)
}

fn std_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/fhir+json".to_owned()),
        ("X-Request-Id", Uuid::new_v4().to_string()),
        ("X-Correlation-Id", Uuid::new_v4().to_string()),
    ]
}

#[tokio::test]
async fn every_bad_input_gets_an_operation_outcome() -> TestResult {
    let app = spawn_app().await?;
    let events_before = intake_event_count(&app).await?;

    // Malformed JSON.
    let r = post_raw(
        &app,
        "$process-message",
        b"{\"resourceType\": \"Bundle\",".to_vec(),
        &std_headers(),
    )
    .await?;
    expect_error(&app, r, 400, "structure").await?;

    // Wrong resourceType.
    let r = app
        .post_message(&json!({"resourceType": "Patient"}))
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let r = app
        .post(
            "ServiceRequest",
            &json!({"resourceType": "Patient"}),
            Uuid::new_v4(),
        )
        .await?;
    assert_eq!(r.status().as_u16(), 400);

    // Missing subject.
    let mut b = new_referral_message()?;
    with_resource(&mut b, "ServiceRequest", |sr| {
        if let Some(o) = sr.as_object_mut() {
            o.remove("subject");
        }
    })?;
    let out = expect_error(&app, app.post_message(&b).await?, 400, "required").await?;
    assert!(out.to_string().contains("subject"), "{out}");

    // Invalid NHS number (check digit).
    let mut b = new_referral_message()?;
    with_resource(&mut b, "Patient", |p| {
        p["identifier"][0]["value"] = json!("9434765918");
    })?;
    let out = expect_error(&app, app.post_message(&b).await?, 422, "value").await?;
    assert!(
        out["issue"][0]["expression"][0]
            .as_str()
            .unwrap_or_default()
            .contains("identifier"),
        "{out}"
    );

    // Unknown code values.
    let mut b = new_referral_message()?;
    with_resource(&mut b, "ServiceRequest", |sr| {
        sr["priority"] = json!("whenever")
    })?;
    let r = app.post_message(&b).await?;
    assert!(r.status().is_client_error(), "{}", r.status());
    let mut b = new_referral_message()?;
    add_red_flag(&mut b, "itchy-elbow", true)?;
    expect_error(&app, app.post_message(&b).await?, 422, "code-invalid").await?;

    // Oversized body (default limit 1 MiB).
    let mut big = new_referral_message()?;
    with_resource(&mut big, "ServiceRequest", |sr| {
        sr["note"] = json!([{"text": "x".repeat(1024 * 1024 + 10)}])
    })?;
    expect_error(&app, app.post_message(&big).await?, 413, "too-long").await?;

    // Request ids are required UUIDs.
    let body = new_referral_message()?.to_string().into_bytes();
    let r = post_raw(
        &app,
        "$process-message",
        body.clone(),
        &[("Content-Type", "application/fhir+json".to_owned())],
    )
    .await?;
    expect_error(&app, r, 400, "invalid").await?;
    let mut h = std_headers();
    h[2].1 = "not-a-uuid".to_owned();
    let r = post_raw(&app, "$process-message", body.clone(), &h).await?;
    assert_eq!(
        r.headers()
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok()),
        Some("not-a-uuid")
    );
    expect_error(&app, r, 400, "invalid").await?;

    // Wrong content type.
    let mut h = std_headers();
    h[0].1 = "text/plain".to_owned();
    expect_error(
        &app,
        post_raw(&app, "$process-message", body, &h).await?,
        415,
        "not-supported",
    )
    .await?;

    // Unknown resources and ids.
    expect_error(
        &app,
        app.get(&format!("Task/{}", Uuid::new_v4())).await?,
        404,
        "not-found",
    )
    .await?;
    expect_error(&app, app.get("Task/not-a-uuid").await?, 404, "not-found").await?;
    expect_error(&app, app.get("Banana/1").await?, 404, "not-found").await?;
    expect_error(
        &app,
        app.get("Task?colour=blue").await?,
        400,
        "not-supported",
    )
    .await?;

    assert_eq!(
        intake_event_count(&app).await?,
        events_before,
        "a refused request changed the record"
    );
    Ok(())
}

#[tokio::test]
async fn the_capability_statement_lists_what_is_served() -> TestResult {
    let app = spawn_app().await?;
    let (status, cs) = app.get_json("metadata").await?;
    assert_eq!(status, 200);
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().ok_or("no resources")?;
    let types: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(
        types,
        vec![
            "ServiceRequest",
            "Task",
            "Patient",
            "Appointment",
            "Schedule",
            "Slot",
            "Questionnaire",
            "QuestionnaireResponse",
            "Encounter",
            "MessageDefinition",
            "Subscription",
            "AuditEvent"
        ]
    );
    let unknown = uuid::Uuid::new_v4();
    for r in resources {
        let t = r["type"].as_str().ok_or("no type")?;
        let interactions: Vec<&str> = r["interaction"]
            .as_array()
            .ok_or("no interactions")?
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        // Every declared interaction is routed (an unknown id answers 404
        // with a diagnostic naming the resource, not a routing 404/405).
        for i in &interactions {
            let res = match *i {
                "read" => app.get(&format!("{t}/{unknown}")).await?,
                "vread" => app.get(&format!("{t}/{unknown}/_history/1")).await?,
                "history-instance" => app.get(&format!("{t}/{unknown}/_history")).await?,
                "search-type" => app.get(t).await?,
                "create" => {
                    app.post(t, &json!({"resourceType": t}), uuid::Uuid::new_v4())
                        .await?
                }
                "update" => {
                    client()
                        .put(format!("{}/{t}/{unknown}", app.base))
                        .header("Content-Type", "application/fhir+json")
                        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                        .body(json!({"resourceType": t, "id": unknown.to_string()}).to_string())
                        .send()
                        .await?
                }
                "delete" => {
                    client()
                        .delete(format!("{}/{t}/{unknown}", app.base))
                        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                        .send()
                        .await?
                }
                other => return Err(format!("undeclared test for interaction {other}").into()),
            };
            let code = res.status().as_u16();
            let body: Value = res.json().await?;
            match *i {
                "search-type" => assert_eq!(code, 200, "{t} {i}"),
                "create" => assert_eq!(code, 400, "{t} create refuses an empty resource: {body}"),
                _ => {
                    assert_eq!(code, 404, "{t} {i}");
                    assert!(
                        body["issue"][0]["diagnostics"]
                            .as_str()
                            .unwrap_or_default()
                            .contains(t),
                        "{t} {i}: {body}"
                    );
                }
            }
        }
        // Interactions not declared are not served.
        if !interactions.contains(&"create") {
            let res = app
                .post(t, &json!({"resourceType": t}), uuid::Uuid::new_v4())
                .await?;
            assert_eq!(res.status().as_u16(), 405, "{t} create is not declared");
        }
        // Every declared search parameter is accepted.
        for p in r["searchParam"].as_array().ok_or("no params")? {
            let name = p["name"].as_str().ok_or("no name")?;
            let value = match p["type"].as_str() {
                Some("date") => "ge2020-01-01",
                Some("number") => "1",
                Some("reference") if name == "patient" || name == "subject" => "Patient/unknown",
                Some("reference") => "ServiceRequest/00000000-0000-0000-0000-000000000000",
                _ => "x",
            };
            let param = if name == "patient" || name == "subject" {
                format!("{name}:identifier")
            } else {
                name.to_owned()
            };
            let (status, body) = app.get_json(&format!("{t}?{param}={value}")).await?;
            assert_eq!(status, 200, "{t}?{param}={value}: {body}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn health_endpoints_answer() -> TestResult {
    let app = spawn_app().await?;
    let live = client()
        .get(app.base.replace("/fhir", "/health/live"))
        .send()
        .await?;
    assert_eq!(live.status().as_u16(), 200);
    let ready = client()
        .get(app.base.replace("/fhir", "/health/ready"))
        .send()
        .await?;
    assert_eq!(ready.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn replay_rebuilds_identical_views() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut app = spawn_app_in(tmp.path()).await?;
    for i in 0..6 {
        let mut b = new_referral_message()?;
        if i % 3 == 1 {
            add_red_flag(&mut b, "history-of-cancer", true)?;
        }
        assert_eq!(app.post_message(&b).await?.status().as_u16(), 200);
    }
    // Let the downstream services pick up the 4 triaged referrals first.
    for _ in 0..300 {
        let (_, waiting) = app
            .get_json("Task?business-status=awaiting-assessment&_summary=count")
            .await?;
        if waiting["total"] == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, tasks_before) = app.get_json("Task?_count=100").await?;
    let (_, srs_before) = app.get_json("ServiceRequest?_count=100").await?;
    assert_eq!(tasks_before["total"], 6);
    app.stop().await?;

    // A new process rebuilds every view by replaying the log from empty.
    let mut again = spawn_app_in(tmp.path()).await?;
    let (_, tasks_after) = again.get_json("Task?_count=100").await?;
    let (_, srs_after) = again.get_json("ServiceRequest?_count=100").await?;
    let strip = |mut v: Value| {
        // Links carry the (new) port; the resources must be identical.
        v["link"] = Value::Null;
        if let Some(entries) = v["entry"].as_array_mut() {
            for e in entries {
                e["fullUrl"] = Value::Null;
            }
        }
        v
    };
    assert_eq!(strip(tasks_after), strip(tasks_before));
    assert_eq!(strip(srs_after), strip(srs_before));
    again.stop().await?;
    Ok(())
}

#[tokio::test]
async fn search_filters_sorts_and_pages() -> TestResult {
    let app = spawn_app().await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut b = new_referral_message()?;
        if i == 4 {
            add_red_flag(&mut b, "fever-or-systemic-illness", true)?;
            with_resource(&mut b, "Patient", |p| {
                p["identifier"][0]["value"] = json!("9434765870")
            })?;
        }
        let answer: Value = app.post_message(&b).await?.json().await?;
        ids.push(
            entries_of(&answer, "Task")[0]["id"]
                .as_str()
                .ok_or("no id")?
                .to_owned(),
        );
    }
    // Paging: 2 per page, links carry the other parameters.
    let (status, page1) = app.get_json("Task?status=accepted&_count=2").await?;
    assert_eq!(status, 200);
    assert_eq!(page1["total"], 4);
    assert_eq!(page1["entry"].as_array().map(Vec::len), Some(2));
    let links: Vec<(String, String)> = page1["link"]
        .as_array()
        .ok_or("no links")?
        .iter()
        .map(|l| {
            (
                l["relation"].as_str().unwrap_or_default().to_owned(),
                l["url"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let next = links
        .iter()
        .find(|(r, _)| r == "next")
        .map(|(_, u)| u.clone())
        .ok_or("no next link")?;
    assert!(
        next.contains("status=accepted") && next.contains("_offset=2"),
        "{next}"
    );
    let page2: Value = client().get(&next).send().await?.json().await?;
    let page3: Value = client()
        .get(next.replace("_offset=2", "_offset=4"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page2["entry"].as_array().map(Vec::len), Some(2));
    assert!(page3["entry"].as_array().is_none_or(Vec::is_empty));
    assert!(
        !page2["link"]
            .as_array()
            .ok_or("no links")?
            .iter()
            .any(|l| l["relation"] == "next")
    );
    let mut seen: Vec<String> = [&page1, &page2]
        .iter()
        .flat_map(|p| p["entry"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "pages overlap or miss entries");

    // By patient NHS number, on both resources.
    for path in [
        "Task?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765870",
        "ServiceRequest?subject:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765870",
    ] {
        let (status, found) = app.get_json(path).await?;
        assert_eq!((status, found["total"].clone()), (200, json!(1)), "{path}");
        assert_eq!(found["entry"][0]["resource"]["id"], ids[4].as_str());
    }
    let (_, revoked) = app.get_json("ServiceRequest?status=revoked").await?;
    assert_eq!(revoked["total"], 1);
    let (_, redirected) = app.get_json("Task?business-status=redirected").await?;
    assert_eq!(redirected["total"], 1);

    // Sorting: oldest first, and the default newest first.
    let (_, asc) = app.get_json("Task?_sort=_lastUpdated&_count=10").await?;
    let (_, desc) = app.get_json("Task?_count=10").await?;
    let order = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect()
    };
    // Consumers update Tasks asynchronously (lastUpdated moves), so compare
    // with the times the entries carry rather than the posting order.
    let updated = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e["resource"]["meta"]["lastUpdated"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let mut all = ids.clone();
    all.sort();
    for (bundle, ascending) in [(&asc, true), (&desc, false)] {
        let mut found = order(bundle);
        found.sort();
        assert_eq!(found, all, "every Task once");
        let times: Vec<chrono::DateTime<chrono::FixedOffset>> = updated(bundle)
            .iter()
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .collect();
        assert_eq!(times.len(), 5);
        assert!(
            times.windows(2).all(|w| if ascending {
                w[0] <= w[1]
            } else {
                w[0] >= w[1]
            }),
            "not sorted (ascending {ascending}): {times:?}"
        );
    }

    // Date ranges.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (_, today_hits) = app
        .get_json(&format!("Task?_lastUpdated=ge{today}&_summary=count"))
        .await?;
    assert_eq!(today_hits["total"], 5);
    assert!(today_hits["entry"].as_array().is_none_or(Vec::is_empty));
    let (_, none) = app.get_json("Task?authored-on=lt2000-01-01").await?;
    assert_eq!(none["total"], 0);
    let (status, bad) = app.get_json("Task?_lastUpdated=yesterday").await?;
    assert_eq!(status, 400);
    assert_eq!(issue_codes(&bad), vec!["not-supported"]);
    Ok(())
}

#[tokio::test]
async fn history_and_vread_rebuild_each_version_from_the_log() -> TestResult {
    let app = spawn_app().await?;
    let answer: Value = app
        .post_message(&new_referral_message()?)
        .await?
        .json()
        .await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    let (status, history) = app.get_json(&format!("Task/{id}/_history")).await?;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 3);
    assert_eq!(history["entry"][0]["resource"]["meta"]["versionId"], "3");
    assert_eq!(business(&history["entry"][1]["resource"]), "triaged");
    assert_eq!(history["entry"][2]["resource"]["status"], "received");
    let (status, v1) = app.get_json(&format!("Task/{id}/_history/1")).await?;
    assert_eq!(status, 200);
    assert_eq!(v1["status"], "received");
    let (_, v3) = app.get_json(&format!("Task/{id}/_history/3")).await?;
    let (_, current) = app.get_json(&format!("Task/{id}")).await?;
    assert_eq!(v3, current);
    let (status, sr1) = app
        .get_json(&format!("ServiceRequest/{id}/_history/1"))
        .await?;
    assert_eq!((status, sr1["status"].clone()), (200, json!("active")));
    let (status, _) = app.get_json(&format!("Task/{id}/_history/4")).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn only_fhir_json_is_served() -> TestResult {
    let app = spawn_app().await?;
    let res = client()
        .get(format!("{}/metadata", app.base))
        .header("Accept", "application/fhir+xml")
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 406);
    let outcome: Value = res.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["not-supported"]);
    let (status, _) = app.get_json("metadata?_format=xml").await?;
    assert_eq!(status, 406);
    for ok in [
        "metadata?_format=json",
        "metadata?_format=application/fhir%2Bjson",
        "metadata?_format=application/fhir+json",
    ] {
        let (status, cs) = app.get_json(ok).await?;
        assert_eq!(
            (status, cs["resourceType"].clone()),
            (200, json!("CapabilityStatement")),
            "{ok}"
        );
    }
    let res = client()
        .get(format!("{}/metadata", app.base))
        .header(
            "Accept",
            "application/fhir+json, application/fhir+xml;q=0.5",
        )
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn booking_and_referral_rules_prefer_and_conditional_create() -> TestResult {
    let app = spawn_app().await?;
    // Bundle.meta.versionId is required.
    let mut b = new_referral_message()?;
    b["meta"] = json!({"lastUpdated": "2026-11-20T09:31:00+00:00"});
    let r = app.post_message(&b).await?;
    assert_eq!(r.status().as_u16(), 400);
    let outcome: Value = r.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["required"]);
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.meta.versionId"
    );

    // The MessageDefinition says what we require.
    let (status, defs) = app.get_json("MessageDefinition").await?;
    assert_eq!(status, 200);
    let def = &defs["entry"][0]["resource"];
    assert_eq!(def["eventCoding"]["code"], "servicerequest-request");
    assert!(
        def["description"]
            .as_str()
            .unwrap_or_default()
            .contains("Bundle.meta.versionId")
    );
    let (status, _) = app
        .get_json("MessageDefinition/servicerequest-request")
        .await?;
    assert_eq!(status, 200);

    // Prefer on create.
    let ident = uuid::Uuid::new_v4().to_string();
    let mut sr = fixture("referral-service-request.json")?;
    sr["identifier"] =
        json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": ident}]);
    let post = |prefer: Option<&'static str>, if_none_exist: Option<String>, body: Value| {
        let mut rb = client()
            .post(format!("{}/ServiceRequest", app.base))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
            .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
            .body(body.to_string());
        if let Some(p) = prefer {
            rb = rb.header("Prefer", p);
        }
        if let Some(c) = if_none_exist {
            rb = rb.header("If-None-Exist", c);
        }
        rb.send()
    };
    let r = post(Some("return=minimal"), None, sr.clone()).await?;
    assert_eq!(r.status().as_u16(), 201);
    assert!(r.headers().get("location").is_some());
    assert!(r.bytes().await?.is_empty());

    // Conditional create: the same identifier answers 200 with the existing
    // referral and records nothing.
    let events = intake_event_count(&app).await?;
    let condition = format!("identifier=https://fhir.example-gp.nhs.uk/Id/referral|{ident}");
    let r = post(
        Some("return=representation"),
        Some(condition.clone()),
        sr.clone(),
    )
    .await?;
    assert_eq!(r.status().as_u16(), 200);
    let existing: Value = r.json().await?;
    assert_eq!(existing["identifier"][0]["value"], ident.as_str());
    assert_eq!(intake_event_count(&app).await?, events);
    // Without the condition the same referral is a 409 duplicate.
    assert_eq!(post(None, None, sr.clone()).await?.status().as_u16(), 409);

    // Prefer: return=OperationOutcome on a new referral.
    let mut other = sr.clone();
    other["identifier"] = json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": uuid::Uuid::new_v4().to_string()}]);
    let r = post(
        Some("return=OperationOutcome"),
        Some("identifier=nothing-like-this".to_owned()),
        other,
    )
    .await?;
    assert_eq!(r.status().as_u16(), 201);
    let outcome: Value = r.json().await?;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["severity"], "information");
    Ok(())
}

#[tokio::test]
async fn the_referrer_can_cancel_an_active_referral_only() -> TestResult {
    let app = spawn_app().await?;
    let bundle = new_referral_message()?;
    let answer: Value = app.post_message(&bundle).await?.json().await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();

    // An amendment is not supported.
    let r = app.post_message(&as_update(&bundle, "active")?).await?;
    assert_eq!(r.status().as_u16(), 422);
    let outcome: Value = r.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["not-supported"]);

    // Withdrawn by the referrer.
    let r = app.post_message(&as_update(&bundle, "revoked")?).await?;
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await?;
    let task = entries_of(&answer, "Task")[0];
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["businessStatus"]["coding"][0]["code"], "cancelled");
    let (_, sr) = app.get_json(&format!("ServiceRequest/{id}")).await?;
    assert_eq!(sr["status"], "revoked");
    let (_, history) = app.get_json(&format!("Task/{id}/_history")).await?;
    assert!(
        history["total"].as_u64().unwrap_or_default() >= 3,
        "{history}"
    );
    assert_eq!(history["entry"][0]["resource"]["status"], "cancelled");

    // Not twice, and not a referral that is no longer active.
    let r = app
        .post_message(&as_update(&bundle, "entered-in-error")?)
        .await?;
    assert_eq!(r.status().as_u16(), 422);
    let outcome: Value = r.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["business-rule"]);
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "REC_UNPROCESSABLE_ENTITY"
    );

    let mut red = new_referral_message()?;
    add_red_flag(&mut red, "saddle-anaesthesia", true)?;
    assert_eq!(app.post_message(&red).await?.status().as_u16(), 200);
    assert_eq!(
        app.post_message(&as_update(&red, "revoked")?)
            .await?
            .status()
            .as_u16(),
        422
    );

    // An unknown referral.
    let r = app
        .post_message(&as_update(&new_referral_message()?, "revoked")?)
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    let outcome: Value = r.json().await?;
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "REC_NOT_FOUND"
    );

    // Entered in error.
    let other = new_referral_message()?;
    assert_eq!(app.post_message(&other).await?.status().as_u16(), 200);
    let answer: Value = app
        .post_message(&as_update(&other, "entered-in-error")?)
        .await?
        .json()
        .await?;
    assert_eq!(entries_of(&answer, "Task")[0]["status"], "entered-in-error");
    Ok(())
}
