//! A process killed with SIGKILL in the middle of accepting referrals restarts
//! with every referral it answered 2xx present exactly once, and no partial
//! referral.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::Mutex;

/// Start the `mskflow` binary on `dir` and return it with its FHIR base URL.
async fn start_binary(dir: &std::path::Path) -> TestResult<(Child, String)> {
    let mut child = all_in_one_command(dir)
        .envs(test_auth_env(dir)?)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()?;
    let base = gateway_url(&mut child).await?;
    Ok((child, base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_of_referrals_loses_nothing_acknowledged() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut child, base) = start_binary(tmp.path()).await?;

    // Acknowledged referrals: referral id -> the sender's identifier value.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for _ in 0..8 {
        let acked = acked.clone();
        let base = base.clone();
        writers.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..10_000 {
                let Ok(bundle) = new_referral_message() else {
                    return;
                };
                let ident = bundle["entry"]
                    .as_array()
                    .and_then(|e| {
                        e.iter()
                            .find(|e| e["resource"]["resourceType"] == "ServiceRequest")
                    })
                    .map(|e| {
                        e["resource"]["identifier"][0]["value"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .unwrap_or_default();
                let sent = client
                    .post(format!("{base}/$process-message"))
                    .header("Content-Type", "application/fhir+json")
                    .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
                    .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
                    .body(bundle.to_string())
                    .send()
                    .await;
                let Ok(res) = sent else { return };
                if !res.status().is_success() {
                    continue;
                }
                let Ok(answer) = res.json::<Value>().await else {
                    return;
                };
                let Some(id) = entries_of(&answer, "Task")
                    .first()
                    .and_then(|t| t["id"].as_str())
                    .map(str::to_owned)
                else {
                    return;
                };
                acked.lock().await.insert(id, ident);
            }
        }));
    }
    // Let the load run, then kill without warning.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.start_kill()?; // SIGKILL
    child.wait().await?;
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() >= 20,
        "too few referrals acknowledged before the kill: {}",
        acked.len()
    );

    // The store itself: every referral whole (received + decision), and no
    // sender identifier recorded twice.
    {
        let log =
            mskflow_eventlog_sqlite::SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
                path: tmp.path().join("events.db"),
                ..Default::default()
            })?;
        use mskflow_eventlog::EventLog as _;
        let mut sub = log
            .subscribe("crash-check", mskflow_eventlog::StartFrom::Beginning)
            .await?;
        let mut streams: HashMap<String, Vec<String>> = HashMap::new();
        let mut identifiers: HashMap<String, usize> = HashMap::new();
        loop {
            let batch = sub.poll_batch(1000).await?;
            if batch.is_empty() {
                break;
            }
            for e in batch {
                // Other services' streams (assessment) follow on; the
                // referral streams are what intake acknowledged.
                if !e.stream_id.starts_with("referral-") {
                    continue;
                }
                if e.event_type == "ReferralReceived" {
                    let ident = e.payload["service_request_identifier"]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    *identifiers.entry(ident).or_default() += 1;
                }
                streams
                    .entry(e.stream_id.clone())
                    .or_default()
                    .push(e.event_type.clone());
            }
        }
        for (stream, types) in &streams {
            assert_eq!(types.len(), 2, "stream {stream} is partial: {types:?}");
            assert_eq!(types[0], "ReferralReceived", "stream {stream}: {types:?}");
        }
        for (id, ident) in &acked {
            assert!(
                streams.contains_key(&format!("referral-{id}")),
                "acknowledged referral {id} is missing"
            );
            assert_eq!(
                identifiers.get(ident).copied(),
                Some(1),
                "referral {ident} is not present exactly once"
            );
        }
        eprintln!(
            "acknowledged before SIGKILL: {}, recorded: {}",
            acked.len(),
            streams.len()
        );
        log.close().await;
    }

    // The restarted process serves every acknowledged referral.
    let (mut child, base) = start_binary(tmp.path()).await?;
    let client = client();
    for id in acked.keys() {
        let res = client.get(format!("{base}/Task/{id}")).send().await?;
        assert_eq!(
            res.status().as_u16(),
            200,
            "acknowledged referral {id} is not served after the restart"
        );
        let task: Value = res.json().await?;
        assert_eq!(task["status"], "accepted");
    }
    child.start_kill()?;
    child.wait().await?;

    // Every read model kept on disk, resumed after the kill and killed
    // again, equals a rebuild from the log row for row.
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["replay", "--check", "all"])
        .env("MSKFLOW__GATEWAY__ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    let out = String::from_utf8_lossy(&check.stdout);
    eprintln!("{out}{}", String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "read models differ from a rebuild");
    for name in [
        "intake-index",
        "assessment-view",
        "scheduling-waiting-list",
        "outcomes-view",
        "analytics-facts",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("consistent") && l.contains(name)),
            "{name} was not checked: {out}"
        );
    }
    Ok(())
}
