//! The FHIR API's security over real sockets: bearer tokens, SMART scopes,
//! organisation boundaries, NHSD headers and the audit trail.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

/// Post a referral message with `client`.
async fn post_message_with(
    app: &App,
    client: &reqwest::Client,
    body: &Value,
    extra: &[(&str, String)],
) -> TestResult<reqwest::Response> {
    let mut rb = client
        .post(format!("{}/$process-message", app.base))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string());
    for (k, v) in extra {
        rb = rb.header(*k, v);
    }
    Ok(rb.body(body.to_string()).send().await?)
}

async fn get_with(app: &App, client: &reqwest::Client, path: &str) -> TestResult<(u16, Value)> {
    let res = client.get(format!("{}/{path}", app.base)).send().await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

/// The BaRS error code of an OperationOutcome's first issue.
fn bars_code(outcome: &Value) -> &str {
    outcome["issue"][0]["details"]["coding"][0]["code"]
        .as_str()
        .unwrap_or_default()
}

/// Submit one referral (as the test organisation) and return its id.
async fn one_referral(app: &App) -> TestResult<String> {
    let res = app.post_message(&new_referral_message()?).await?;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await?;
    let task = entries_of(&body, "Task");
    Ok(task
        .first()
        .and_then(|t| t["id"].as_str())
        .ok_or("no Task in the answer")?
        .to_owned())
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string().as_bytes())
}

#[tokio::test]
async fn tokens_are_required_checked_and_scoped() -> TestResult {
    let app = spawn_app().await?;
    let id = one_referral(&app).await?;

    // No token: 401 with a challenge and a BaRS OperationOutcome.
    let res = anonymous_client()
        .get(format!("{}/Task/{id}", app.base))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 401);
    let challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    let outcome: Value = res.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["login"]);
    assert_eq!(bars_code(&outcome), "REC_UNAUTHORIZED");

    // The CapabilityStatement and the health checks stay open, and say how
    // to authenticate.
    let res = anonymous_client()
        .get(format!("{}/metadata", app.base))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    let cs: Value = res.json().await?;
    assert_eq!(
        cs["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    let live = anonymous_client()
        .get(app.base.replace("/fhir", "/health/live"))
        .send()
        .await?;
    assert_eq!(live.status().as_u16(), 200);

    // A token signed with another key.
    let mut c = claims(TEST_CLIENT, TEST_ODS, "system/*.*");
    c.role = Some("provider".to_owned());
    let forged = mskflow_gateway::auth::sign_hs256(b"not-the-secret-not-the-secret-xx", &c)?;
    let (status, outcome) =
        get_with(&app, &client_with_token(&forged), &format!("Task/{id}")).await?;
    assert_eq!((status, bars_code(&outcome)), (401, "REC_UNAUTHORIZED"));

    // Expired beyond the 60 s clock skew.
    let mut expired = c.clone();
    expired.exp = expired.iat - 600;
    let (status, outcome) = get_with(
        &app,
        &client_with_token(&token_for(&expired)?),
        &format!("Task/{id}"),
    )
    .await?;
    assert_eq!(status, 401);
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{outcome}"
    );

    // Valid, but the scopes do not cover the interaction: 403.
    let task_reader = client_with_token(&token_for(&claims("reader", TEST_ODS, "system/Task.rs"))?);
    let (status, _) = get_with(&app, &task_reader, &format!("Task/{id}")).await?;
    assert_eq!(status, 200);
    let (status, outcome) = get_with(&app, &task_reader, &format!("ServiceRequest/{id}")).await?;
    assert_eq!(status, 403);
    assert_eq!(issue_codes(&outcome), vec!["forbidden"]);
    assert_eq!(bars_code(&outcome), "REC_FORBIDDEN");
    let res = post_message_with(&app, &task_reader, &new_referral_message()?, &[]).await?;
    assert_eq!(res.status().as_u16(), 403);

    // SMART v1 write and v2 create both allow sending a referral.
    for scope in [
        "system/ServiceRequest.write",
        "system/ServiceRequest.c",
        "system/Bundle.write",
    ] {
        let sender = client_with_token(&token_for(&claims("gp", TEST_ODS, scope))?);
        let res = post_message_with(&app, &sender, &new_referral_message()?, &[]).await?;
        assert_eq!(res.status().as_u16(), 200, "{scope}");
    }
    Ok(())
}

#[tokio::test]
async fn organisations_see_only_their_own_referrals() -> TestResult {
    let app = spawn_app_with(|c| c.gateway.auth.provider_ods = vec!["RR8".to_owned()]).await?;
    let id = one_referral(&app).await?;
    let (status, _) = app.get_json(&format!("Task/{id}")).await?;
    assert_eq!(status, 200);

    let sender_org = client_with_token(&token_for(&claims("gp-a", TEST_ODS, "system/*.read"))?);
    let other_org = client_with_token(&token_for(&claims("gp-b", "B82002", "system/*.read"))?);
    let provider_by_ods = client_with_token(&token_for(&claims("msk", "RR8", "system/*.read"))?);
    let mut by_role = claims("msk-2", "X99999", "system/*.read");
    by_role.role = Some("provider".to_owned());
    let provider_by_role = client_with_token(&token_for(&by_role)?);

    for path in [
        format!("Task/{id}"),
        format!("ServiceRequest/{id}"),
        format!("Task/{id}/_history"),
        format!("ServiceRequest/{id}/_history/1"),
    ] {
        let (status, _) = get_with(&app, &sender_org, &path).await?;
        assert_eq!(status, 200, "sender reads {path}");
        for provider in [&provider_by_ods, &provider_by_role] {
            let (status, _) = get_with(&app, provider, &path).await?;
            assert_eq!(status, 200, "provider reads {path}");
        }
        // Another organisation: the same answer as for an unknown id.
        let (status, outcome) = get_with(&app, &other_org, &path).await?;
        assert_eq!(status, 404, "other organisation reads {path}");
        assert_eq!(issue_codes(&outcome), vec!["not-found"]);
    }
    let unknown = Uuid::new_v4();
    let (_, unknown_outcome) = get_with(&app, &other_org, &format!("Task/{unknown}")).await?;
    let (_, hidden_outcome) = get_with(&app, &other_org, &format!("Task/{id}")).await?;
    assert_eq!(
        unknown_outcome["issue"][0]["diagnostics"]
            .as_str()
            .map(|d| d.replace(&unknown.to_string(), "ID")),
        hidden_outcome["issue"][0]["diagnostics"]
            .as_str()
            .map(|d| d.replace(&id, "ID")),
    );

    for search in ["Task", "ServiceRequest", "Task?_summary=count"] {
        let (_, own) = get_with(&app, &sender_org, search).await?;
        assert_eq!(own["total"], 1, "sender searches {search}");
        let (_, other) = get_with(&app, &other_org, search).await?;
        assert_eq!(other["total"], 0, "other organisation searches {search}");
        let (_, all) = get_with(&app, &provider_by_ods, search).await?;
        assert_eq!(all["total"], 1, "provider searches {search}");
    }

    // Sending in another organisation's name is refused.
    let impostor = client_with_token(&token_for(&claims("gp-b", "B82002", "system/*.*"))?);
    let res = post_message_with(&app, &impostor, &new_referral_message()?, &[]).await?;
    assert_eq!(res.status().as_u16(), 403);
    let outcome: Value = res.json().await?;
    assert_eq!(issue_codes(&outcome), vec!["forbidden"]);
    assert_eq!(outcome["issue"][0]["expression"][0], "MessageHeader.sender");
    assert_eq!(
        intake_event_count(&app).await?,
        2,
        "the refused referral left a trace"
    );
    Ok(())
}

/// Poll the audit trail until `check` holds for the searchset.
async fn audit_when(app: &App, query: &str, check: impl Fn(&Value) -> bool) -> TestResult<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, bundle) = app.get_json(&format!("AuditEvent?{query}")).await?;
        assert_eq!(status, 200, "{bundle}");
        if check(&bundle) {
            return Ok(bundle);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("audit trail never matched for {query}: {bundle}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reads_and_writes_are_audited_and_served_as_audit_events() -> TestResult {
    let app = spawn_app().await?;
    let id = one_referral(&app).await?;
    let (status, _) = app.get_json(&format!("Task/{id}")).await?;
    assert_eq!(status, 200);
    let nhs = "9434765919";
    let (status, found) = app
        .get_json(&format!(
            "Task?patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}"
        ))
        .await?;
    assert_eq!(status, 200);
    // A refused read is audited too.
    let other = client_with_token(&token_for(&claims("gp-b", "B82002", "system/*.read"))?);
    let (status, _) = get_with(&app, &other, &format!("Task/{id}")).await?;
    assert_eq!(status, 404);

    let bundle = audit_when(&app, &format!("entity=Task/{id}"), |b| {
        b["total"].as_u64().unwrap_or(0) >= 4
    })
    .await?;
    let events: Vec<&Value> = entries_of(&bundle, "AuditEvent");
    let find = |sub: &str, agent: &str| {
        events.iter().copied().find(|e| {
            e["subtype"][0]["code"] == sub && e["agent"][0]["who"]["identifier"]["value"] == agent
        })
    };
    let write = find("operation", TEST_CLIENT).ok_or("no audit of the referral message")?;
    assert_eq!(write["type"]["code"], "rest");
    assert_eq!(write["action"], "E");
    assert_eq!(write["outcome"], "0");
    assert_eq!(write["agent"][1]["who"]["identifier"]["value"], TEST_ODS);
    let read = find("read", TEST_CLIENT).ok_or("no audit of the read")?;
    assert_eq!(read["action"], "R");
    assert_eq!(read["entity"][0]["what"]["reference"], format!("Task/{id}"));
    assert!(read["recorded"].as_str().is_some());
    assert_eq!(
        read["source"]["observer"]["display"],
        "mskflow FHIR gateway"
    );
    let search = find("search-type", TEST_CLIENT).ok_or("no audit of the search")?;
    if found["total"] == 1 {
        assert!(
            search["entity"].as_array().is_some_and(|a| a
                .iter()
                .any(|e| e["what"]["reference"] == format!("Task/{id}"))),
            "{search}"
        );
    }
    let refused = find("read", "gp-b").ok_or("no audit of the refused read")?;
    assert_eq!(refused["outcome"], "4");

    // Filters: by agent, and by date.
    let today = chrono::Utc::now().date_naive();
    let by_agent = audit_when(&app, "agent=gp-b", |b| b["total"] == 1).await?;
    assert_eq!(entries_of(&by_agent, "AuditEvent").len(), 1);
    let (_, tomorrow) = app.get_json(&format!("AuditEvent?date=gt{today}")).await?;
    assert_eq!(tomorrow["total"], 0);
    let (_, limited) = app
        .get_json(&format!("AuditEvent?date=ge{today}&_count=1"))
        .await?;
    assert_eq!(entries_of(&limited, "AuditEvent").len(), 1);
    assert!(limited["total"].as_u64().unwrap_or(0) >= 4);

    // No NHS number anywhere in the audit trail; the query is kept masked.
    let audits: Vec<mskflow_eventlog::Envelope> = app
        .all_events()
        .await?
        .into_iter()
        .filter(|e| e.event_type == "AuditRecorded")
        .collect();
    assert!(audits.iter().all(|e| e.stream_id.starts_with("audit-")));
    assert!(!audits.iter().any(|e| e.payload.to_string().contains(nhs)));
    assert!(audits.iter().any(|e| {
        e.payload["query"]
            .as_str()
            .is_some_and(|q| q.contains("nhs-number|***"))
    }));
    // Audit events are not for analysts, and match their schema.
    assert!(!mskflow_analytics::is_exported("AuditRecorded"));
    check_event_schemas(&app).await?;

    // Only providers with the AuditEvent scope read the trail.
    let gp = client_with_token(&token_for(&claims("gp", TEST_ODS, "system/*.read"))?);
    let (status, _) = get_with(&app, &gp, "AuditEvent").await?;
    assert_eq!(status, 403);
    let mut no_scope = claims("msk", "RR8", "system/Task.read");
    no_scope.role = Some("provider".to_owned());
    let (status, _) = get_with(
        &app,
        &client_with_token(&token_for(&no_scope)?),
        "AuditEvent",
    )
    .await?;
    assert_eq!(status, 403);
    Ok(())
}

#[tokio::test]
async fn nhsd_headers_are_validated_and_recorded() -> TestResult {
    let app = spawn_app().await?;
    let headers = [
        (
            "NHSD-Target-Identifier",
            b64(&json!({"value": "msk-triage-service", "system": "urn:ietf:rfc:3986"})),
        ),
        (
            "NHSD-End-User-Organisation",
            b64(&json!({
                "resourceType": "Organization",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "A81001"}],
                "name": "The Health Centre"
            })),
        ),
        (
            "NHSD-Requesting-Software",
            b64(&json!({
                "resourceType": "Device",
                "deviceName": [{"name": "Practice System", "type": "manufacturer-name"}],
                "version": [{"value": "7.1"}]
            })),
        ),
    ];
    let mut bundle = new_referral_message()?;
    // The header speaks for the software when the message does not.
    with_resource(&mut bundle, "MessageHeader", |h| {
        if let Some(source) = h["source"].as_object_mut() {
            source.remove("software");
        }
    })?;
    let res = post_message_with(&app, &client(), &bundle, &headers).await?;
    assert_eq!(res.status().as_u16(), 200);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let found =
            app.all_events().await?.into_iter().find(|e| {
                e.event_type == "AuditRecorded" && e.payload["interaction"] == "operation"
            });
        if let Some(e) = found {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no audit record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let agent = &audit.payload["agent"];
    assert_eq!(agent["target_identifier"]["value"], "msk-triage-service");
    assert_eq!(agent["end_user_organisation"]["value"], "A81001");
    assert_eq!(agent["requesting_software"], "Practice System 7.1");
    let received = app
        .all_events()
        .await?
        .into_iter()
        .find(|e| e.event_type == "ReferralReceived")
        .ok_or("no referral")?;
    assert_eq!(
        received.payload["sender"]["software"],
        "Practice System 7.1"
    );

    // Malformed headers: 400, the header named.
    for (name, value) in [
        ("NHSD-Target-Identifier", "not base64 at all!".to_owned()),
        ("NHSD-Target-Identifier", b64(&json!({"system": "urn:x"}))),
        (
            "NHSD-End-User-Organisation",
            b64(&json!({"resourceType": "Patient"})),
        ),
        (
            "NHSD-Requesting-Software",
            base64::engine::general_purpose::STANDARD.encode(b"plain words"),
        ),
    ] {
        let res =
            post_message_with(&app, &client(), &new_referral_message()?, &[(name, value)]).await?;
        assert_eq!(res.status().as_u16(), 400, "{name}");
        let outcome: Value = res.json().await?;
        assert_eq!(bars_code(&outcome), "REC_BAD_REQUEST");
        assert_eq!(
            outcome["issue"][0]["expression"][0],
            format!("header:{name}"),
            "{outcome}"
        );
    }
    assert_eq!(
        intake_event_count(&app).await?,
        2,
        "a refused message was recorded"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_token_printed_at_start_up_works() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut child = all_in_one_command(tmp.path())
        .env("RUST_LOG", "warn")
        .env("MSKFLOW__LOG_FORMAT", "json")
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (token_tx, token_rx) = tokio::sync::oneshot::channel::<(String, bool)>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut token = None;
        let mut warned = false;
        let mut tx = Some(token_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("WARN") && line.contains("development authentication") {
                warned = true;
            }
            if let Some(t) = line.trim().strip_prefix("Authorization: Bearer ") {
                token = Some(t.to_owned());
            }
            if line.contains("end of development token")
                && let (Some(t), Some(tx)) = (token.clone(), tx.take())
            {
                let _ = tx.send((t, warned));
            }
        }
    });
    let base = gateway_url(&mut child).await?;
    let (token, warned) = tokio::time::timeout(Duration::from_secs(10), token_rx).await??;
    assert!(warned, "dev mode must log a warning");

    let res = anonymous_client()
        .get(format!("{base}/Task"))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 401);
    let res = client_with_token(&token)
        .get(format!("{base}/Task"))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    let res = client_with_token(&token)
        .post(format!("{base}/$process-message"))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .body(new_referral_message()?.to_string())
        .send()
        .await?;
    assert_eq!(
        res.status().as_u16(),
        200,
        "the dev token sends as the sample practice"
    );
    // The test token (another key) is refused by this process.
    let res = client().get(format!("{base}/Task")).send().await?;
    assert_eq!(res.status().as_u16(), 401);
    child.start_kill()?;
    let _ = child.wait().await;
    Ok(())
}
