//! What the integration team runs the system with: metrics, readiness,
//! logs free of patient identifiers, and a graceful stop on SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn metrics_describe_requests_appends_lag_and_referrals() -> TestResult {
    let app = spawn_app().await?;
    assert_eq!(
        app.post_message(&new_referral_message()?)
            .await?
            .status()
            .as_u16(),
        200
    );
    let text = client()
        .get(app.base.replace("/fhir", "/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for needle in [
        "mskflow_http_requests_total{method=\"POST\",route=\"/fhir/$process-message\",status=\"200\"}",
        "mskflow_http_request_duration_seconds_bucket{method=\"POST\",route=\"/fhir/$process-message\",le=\"",
        "mskflow_grpc_requests_total{method=\"SubmitReferral\",code=\"Ok\"}",
        "mskflow_event_append_duration_seconds_bucket{le=\"",
        "mskflow_events_appended_total{stream_kind=\"referral\"}",
        "mskflow_consumer_lag{consumer=\"gateway-views\",partition=\"0\"}",
        "mskflow_referrals{status=\"triaged\"}",
        "mskflow_waiting_list{list=\"fcp-assessment\"}",
        "mskflow_waiting_list{list=\"rehabilitation\"}",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn readiness_turns_false_when_the_store_is_gone() -> TestResult {
    let app = spawn_app().await?;
    let ready = app.base.replace("/fhir", "/health/ready");
    assert_eq!(client().get(&ready).send().await?.status().as_u16(), 200);
    let running = app.running.as_ref().ok_or("not running")?;
    running.store().close().await;
    let res = client().get(&ready).send().await?;
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = res.json().await?;
    assert_eq!(body["status"], "fail");
    assert!(
        body["checks"]["event-store"]
            .as_str()
            .unwrap_or_default()
            .starts_with("fail"),
        "{body}"
    );
    // Liveness is not readiness: the process is still alive.
    let live = client()
        .get(app.base.replace("/fhir", "/health/live"))
        .send()
        .await?;
    assert_eq!(live.status().as_u16(), 200);
    Ok(())
}

/// Values in the canonical referral that identify the patient.
fn identifying_values(bundle: &Value) -> Vec<String> {
    let mut values = Vec::new();
    for patient in entries_of(bundle, "Patient") {
        for id in patient["identifier"].as_array().into_iter().flatten() {
            values.extend(id["value"].as_str().map(str::to_owned));
        }
        for name in patient["name"].as_array().into_iter().flatten() {
            values.extend(name["family"].as_str().map(str::to_owned));
            for g in name["given"].as_array().into_iter().flatten() {
                values.extend(g.as_str().map(str::to_owned));
            }
        }
        for a in patient["address"].as_array().into_iter().flatten() {
            values.extend(a["postalCode"].as_str().map(str::to_owned));
            for line in a["line"].as_array().into_iter().flatten() {
                values.extend(line.as_str().map(str::to_owned));
            }
        }
        values.extend(patient["birthDate"].as_str().map(str::to_owned));
    }
    for sr in entries_of(bundle, "ServiceRequest") {
        for n in sr["note"].as_array().into_iter().flatten() {
            values.extend(n["text"].as_str().map(str::to_owned));
        }
    }
    values.retain(|v| v.len() >= 4);
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journey_logs_no_patient_identifiers_and_sigterm_stops_cleanly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut child = all_in_one_command(tmp.path())
        .envs(test_auth_env(tmp.path())?)
        .env("RUST_LOG", "trace,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,actix_server=info,actix_http=info,mio=info")
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let log_lines = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let base = gateway_url(&mut child).await?;

    // A journey with accepted, redirected, duplicate and refused referrals.
    let mut bundle = new_referral_message()?;
    let secrets = identifying_values(&bundle);
    assert!(
        secrets.len() >= 4,
        "the fixture should carry identifiers to look for: {secrets:?}"
    );
    let post = |body: String, request_id: uuid::Uuid| {
        client()
            .post(format!("{base}/$process-message"))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", request_id.to_string())
            .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
            .body(body)
            .send()
    };
    let rid = uuid::Uuid::new_v4();
    assert_eq!(post(bundle.to_string(), rid).await?.status().as_u16(), 200);
    assert_eq!(post(bundle.to_string(), rid).await?.status().as_u16(), 409);
    let mut red = new_referral_message()?;
    add_red_flag(&mut red, "saddle-anaesthesia", true)?;
    assert_eq!(
        post(red.to_string(), uuid::Uuid::new_v4())
            .await?
            .status()
            .as_u16(),
        200
    );
    with_resource(&mut bundle, "Patient", |p| {
        p["identifier"][0]["value"] = serde_json::json!("9434765918")
    })?;
    assert_eq!(
        post(bundle.to_string(), uuid::Uuid::new_v4())
            .await?
            .status()
            .as_u16(),
        422
    );
    let task: Value = client()
        .get(format!("{base}/Task?_count=10"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(task["total"], 2);

    // SIGTERM: drain and exit 0.
    let pid = child.id().ok_or("no pid")?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(
        status.success(),
        "mskflow exited with {status} after SIGTERM"
    );

    let lines = log_lines.await?;
    assert!(
        lines.len() > 10,
        "expected a real log, got {} lines",
        lines.len()
    );
    let mut with_trace = 0;
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).map_err(|e| format!("not a JSON log line ({e}): {line}"))?;
        if parsed["span"]["trace_id"].is_string() || parsed["trace_id"].is_string() {
            with_trace += 1;
        }
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a log line carries patient data ({secret}): {line}"
            );
        }
        assert!(
            !line.contains("9434765918"),
            "a log line carries the refused NHS number: {line}"
        );
    }
    assert!(with_trace > 0, "no log line carries a trace id");
    assert!(
        lines.iter().any(|l| l.contains("shutdown signal received")),
        "no drain message logged"
    );
    Ok(())
}

#[tokio::test]
async fn status_and_replay_commands_report_the_store_and_the_services() -> TestResult {
    let app = spawn_app().await?;
    assert_eq!(
        app.post_message(&new_referral_message()?)
            .await?
            .status()
            .as_u16(),
        200
    );
    let mut red = new_referral_message()?;
    add_red_flag(&mut red, "significant-trauma", true)?;
    assert_eq!(app.post_message(&red).await?.status().as_u16(), 200);
    let gateway = app.base.trim_end_matches("/fhir").to_owned();
    // The assessment service picks up the triaged referral asynchronously.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app
        .all_events()
        .await?
        .iter()
        .any(|e| e.event_type == "AssessmentRequested")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "assessment never picked up the referral"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every consumer (assessment, scheduling, outcomes) settles at the head:
    // intake's 4 events, the FCP worklist entry, two first-contact
    // questionnaires and the audit records of the two referral messages.
    let needles = [
        "head position 9",
        "ReferralReceived 2",
        "ReferralRedirected 1",
        "AssessmentRequested 1",
        "QuestionnaireScheduled 2",
        "AuditRecorded 2",
        "assessment: checkpoint 9, lag 0",
        "outcomes: checkpoint 9, lag 0",
        "scheduling: checkpoint 9, lag 0",
        "triaged 1, redirected 1",
        "(total 2)",
        "ready (event-store pass, views pass)",
        "intake-index: on disk, checkpoint",
        "analytics-facts: on disk, checkpoint",
    ];
    // Consumers commit just after their appends: look again until they have
    // (bounded).
    let mut text = String::new();
    for _ in 0..100 {
        let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
            .args(["status", "--url", &gateway, "--data-dir"])
            .arg(&app.dir)
            .output()
            .await?;
        text = String::from_utf8(out.stdout)?;
        assert!(
            out.status.success(),
            "status failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if needles.iter().all(|n| text.contains(n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for needle in needles {
        assert!(text.contains(needle), "status lacks '{needle}':\n{text}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .args(["replay", "--reset-consumer", "assessment", "--data-dir"])
        .arg(&app.dir)
        .output()
        .await?;
    let text = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "replay failed: {text}");
    assert!(text.contains("replayed 9 events"), "{text}");
    assert!(text.contains("2 referrals, 0 events skipped"), "{text}");
    assert!(
        text.contains("checkpoint of consumer 'assessment' reset to 0"),
        "{text}"
    );

    // An unreachable gateway is reported, not hidden.
    let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .args(["status", "--url", "http://127.0.0.1:9", "--data-dir"])
        .arg(&app.dir)
        .output()
        .await?;
    assert!(String::from_utf8(out.stdout)?.contains("unreachable"));
    Ok(())
}
