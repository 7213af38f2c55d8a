//! The production shape: a Kafka-protocol broker and each service as its own
//! process (two assessment instances), a referral carried end to end over
//! HTTP, gRPC and Kafka, and an assessment instance killed mid-stream
//! without losing or doubling an effect.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A service process, killed when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn check_alive(&mut self) -> TestResult {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("{} exited ({status}):\n{}", self.name, self.output()).into());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> TestResult<String> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// The service binaries sit next to the `mskflow` binary (`cargo test
/// --workspace --all-targets` builds them).
fn binary(name: &str) -> TestResult<PathBuf> {
    let root = Path::new(env!("CARGO_BIN_EXE_mskflow"))
        .parent()
        .ok_or("no target dir")?;
    let path = root.join(name);
    if !path.exists() {
        return Err(format!(
            "{} is not built: run `cargo build --workspace --bins` (make test does)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

fn spawn(
    name: &str,
    bin: &str,
    dir: &Path,
    env: &[(String, String)],
    args: &[String],
) -> TestResult<Proc> {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let child = Command::new(binary(bin)?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .env("MSKFLOW_LOG_FORMAT", "pretty")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
    })
}

async fn wait_http_ready(url: &str, procs: &mut [&mut Proc]) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}\n{}", p.name, p.output()))
                .collect();
            return Err(format!("{url} not ready in 90 s\n{}", logs.join("\n")).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: not reached in {secs} s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_services_as_processes_carry_a_referral_over_kafka() -> TestResult {
    let broker = Broker::start()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let prefix = unique_prefix("deploy");

    let kafka_env: Vec<(String, String)> = vec![
        ("MSKFLOW_KAFKA_BROKERS".into(), broker.bootstrap()),
        ("MSKFLOW_KAFKA_TOPIC_PREFIX".into(), prefix.clone()),
        ("MSKFLOW_KAFKA_PARTITIONS".into(), "3".into()),
        ("MSKFLOW_KAFKA_REPLICATION".into(), "1".into()),
        ("MSKFLOW_KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into()),
    ];

    // The topic set, through the operator's command.
    for (action, expect) in [("check", false), ("create", true), ("check", true)] {
        let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
            .args(["topics", action])
            .envs(kafka_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), expect, "topics {action}: {text}");
    }

    let intake_grpc = free_addr()?;
    let outcomes_grpc = free_addr()?;
    let assessment_grpc = [free_addr()?, free_addr()?];
    let scheduling_grpc = free_addr()?;
    let http = free_addr()?;
    let mut env = kafka_env.clone();
    env.extend(test_auth_env(dir)?.into_iter().map(|(k, v)| {
        // The gateway binary's own variables.
        let k = k
            .replace("MSKFLOW__GATEWAY__AUTH__MODE", "MSKFLOW_GATEWAY_AUTH_MODE")
            .replace(
                "MSKFLOW__GATEWAY__AUTH__HS256_SECRET_FILE",
                "MSKFLOW_GATEWAY_AUTH_HS256_SECRET_FILE",
            );
        (k, v)
    }));
    let ops = |a: &str| -> TestResult<Vec<String>> {
        Ok(vec![
            "--grpc-addr".into(),
            a.to_owned(),
            "--ops-addr".into(),
            free_addr()?,
        ])
    };
    let mut intake = spawn("intake", "mskflow-intake", dir, &env, &ops(&intake_grpc)?)?;
    let mut assessment_a = spawn(
        "assessment-a",
        "mskflow-assessment",
        dir,
        &env,
        &ops(&assessment_grpc[0])?,
    )?;
    let mut assessment_b = spawn(
        "assessment-b",
        "mskflow-assessment",
        dir,
        &env,
        &ops(&assessment_grpc[1])?,
    )?;
    let mut scheduling = spawn(
        "scheduling",
        "mskflow-scheduling",
        dir,
        &env,
        &ops(&scheduling_grpc)?,
    )?;
    let mut outcomes = spawn(
        "outcomes",
        "mskflow-outcomes",
        dir,
        &env,
        &ops(&outcomes_grpc)?,
    )?;
    let mut gateway = spawn(
        "gateway",
        "mskflow-gateway",
        dir,
        &env,
        &[
            "--http-addr".into(),
            http.clone(),
            "--intake-url".into(),
            format!("http://{intake_grpc}"),
            "--outcomes-url".into(),
            format!("http://{outcomes_grpc}"),
        ],
    )?;
    wait_http_ready(
        &format!("http://{http}/health/ready"),
        &mut [
            &mut intake,
            &mut assessment_a,
            &mut assessment_b,
            &mut scheduling,
            &mut outcomes,
            &mut gateway,
        ],
    )
    .await?;

    let app = App::remote(format!("http://{http}/fhir"));
    let connect = |addr: String| async move {
        eventually("gRPC connect", 60, || {
            let addr = addr.clone();
            async move {
                Ok(
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                        .connect()
                        .await
                        .ok(),
                )
            }
        })
        .await
    };
    let mut assessment = AssessmentServiceClient::new(connect(assessment_grpc[0].clone()).await?);
    let scheduling_client = SchedulingServiceClient::new(connect(scheduling_grpc.clone()).await?);
    let outcomes_client = OutcomesServiceClient::new(connect(outcomes_grpc.clone()).await?);

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
    let mut other = AssessmentServiceClient::new(connect(assessment_grpc[1].clone()).await?);
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
            assessment_a.kill();
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
    let mut options = mskflow_eventlog_kafka::Options::new(broker.bootstrap(), "test-reader");
    options.topics = mskflow_eventlog_kafka::TopicSettings {
        prefix: prefix.clone(),
        partitions: 3,
        replication: 1,
    };
    let reader = mskflow_eventlog_kafka::KafkaEventLog::open(options).await?;
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
    gateway.check_alive()?;
    intake.check_alive()?;
    assessment_b.check_alive()?;
    scheduling.check_alive()?;
    outcomes.check_alive()?;
    Ok(())
}
