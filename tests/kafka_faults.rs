//! Faults of the Kafka deployment, with each service as its own process:
//!
//! * the broker stops answering for 30 s (frozen with SIGSTOP: connections
//!   stay open and nothing is answered, like a hung broker or a network
//!   black hole) under a steady stream of referrals: the
//!   gateway answers 503 with an OperationOutcome within a bounded time,
//!   senders retry with the same request id, and once the broker is back
//!   every accepted referral is in the log exactly once, with its triage and
//!   assessment request exactly once, and every consumer group catches up;
//! * records a consumer cannot read are set aside on its dead-letter topic,
//!   listed by `mskflow dead-letters`, and the next referral is handled.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{
    KafkaSystem, eventually, kafka_env, kafka_reader, mskflow_cli, wait_http_ready,
};
use common::*;
use mskflow_eventlog::{EventLog as _, ExpectedVersion, Metadata, NewEvent};
use mskflow_eventlog_kafka::testing::{Broker, produce_raw, unique_prefix};
use serde_json::Value;
use uuid::Uuid;

/// The durable consumers that are Kafka consumer groups (the gateway's
/// notifications replay from the start and commit nothing).
const GROUPS: &[&str] = &["assessment", "scheduling", "outcomes", "gateway-delivery"];

/// The consumers `mskflow dead-letters` reports on that read the intake
/// topic, where the unreadable records are written.
const LISTED: &[&str] = &["assessment"];

/// Consumers of services that do not read the intake topic
/// (`topics::reads_of`): they never see a record written there.
const UNREAD: &[&str] = &["scheduling", "outcomes"];

/// One HTTP answer the sender saw.
#[derive(Debug, Clone)]
struct Answer {
    /// 0 for a connection error or client timeout.
    status: u16,
    elapsed: Duration,
    attempt: u32,
    /// Sent while the fault (broker outage, killed process) was on.
    during_outage: bool,
    /// The body's resourceType (`OperationOutcome` for errors).
    resource_type: Option<String>,
    /// The first issue's diagnostics, if any.
    diagnostics: Option<String>,
}

/// How one referral ended for its sender.
#[derive(Debug, Clone)]
struct Sent {
    request_id: Uuid,
    answers: Vec<Answer>,
}

impl Sent {
    fn last(&self) -> Option<&Answer> {
        self.answers.last()
    }
}

fn sender_client() -> TestResult<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", test_token()))?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(25))
        .build()?)
}

/// Post one referral until it is accepted (2xx) or refused as a duplicate
/// (409), retrying 503, 504 and connection errors with the same body and
/// request id. Any other answer ends it.
async fn send_until_accepted(
    client: reqwest::Client,
    url: String,
    body: Value,
    outage: Arc<Mutex<bool>>,
    give_up: Instant,
) -> Sent {
    let request_id = Uuid::new_v4();
    let mut answers = Vec::new();
    for attempt in 1.. {
        let during_outage = *outage.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let result = client
            .post(&url)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", request_id.to_string())
            .header("X-Correlation-Id", Uuid::new_v4().to_string())
            .body(body.to_string())
            .send()
            .await;
        let (status, resource_type, diagnostics) = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                let json: Value = r.json().await.unwrap_or_default();
                (
                    status,
                    json["resourceType"].as_str().map(str::to_owned),
                    json["issue"][0]["diagnostics"]
                        .as_str()
                        .map(|d| d.chars().take(160).collect()),
                )
            }
            Err(e) => (0, None, Some(e.to_string())),
        };
        answers.push(Answer {
            status,
            elapsed: started.elapsed(),
            attempt,
            during_outage: during_outage || *outage.lock().unwrap_or_else(|p| p.into_inner()),
            resource_type,
            diagnostics,
        });
        let retry = matches!(status, 0 | 503 | 504);
        if !retry || Instant::now() > give_up {
            break;
        }
        // Back off as a sender should: 0.7 s, doubling up to 2.8 s.
        let backoff = 700u64.saturating_mul(1 << attempt.min(3)) / 2;
        tokio::time::sleep(Duration::from_millis(backoff.min(5000))).await;
    }
    Sent {
        request_id,
        answers,
    }
}

/// A steady sender: 5 referrals a second for `secs` seconds, each retried
/// on its own (same body, same request id) until accepted; `fault` marks
/// the answers given while a fault is on.
fn steady_load(
    url: String,
    secs: u64,
    fault: Arc<Mutex<bool>>,
) -> TestResult<tokio::task::JoinHandle<Result<Vec<Sent>, String>>> {
    let client = sender_client()?;
    Ok(tokio::spawn(async move {
        let mut senders = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let until = Instant::now() + Duration::from_secs(secs);
        let give_up = Instant::now() + Duration::from_secs(secs + 60);
        while Instant::now() < until {
            tick.tick().await;
            let body = match new_referral_message() {
                Ok(b) => b,
                Err(e) => return Err(e.to_string()),
            };
            senders.push(tokio::spawn(send_until_accepted(
                client.clone(),
                url.clone(),
                body,
                fault.clone(),
                give_up,
            )));
        }
        let mut sent = Vec::new();
        for s in senders {
            sent.push(s.await.map_err(|e| e.to_string())?);
        }
        Ok(sent)
    }))
}

fn set(flag: &Mutex<bool>, on: bool) {
    *flag.lock().unwrap_or_else(|p| p.into_inner()) = on;
}

/// Every answer is 2xx, 409, 503 or 504 (with an OperationOutcome) or a
/// dropped connection, none slower than 15 s, and every referral ends accepted (a
/// 409 only for a retry whose earlier attempt was stored). Returns the
/// answers by status.
fn check_answers(sent: &[Sent]) -> TestResult<HashMap<u16, usize>> {
    let answers: Vec<&Answer> = sent.iter().flat_map(|s| &s.answers).collect();
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for a in &answers {
        *by_status.entry(a.status).or_default() += 1;
    }
    for a in &answers {
        assert!(
            matches!(a.status, 0 | 200..=299 | 409 | 503 | 504),
            "unexpected answer {a:?}"
        );
        if a.status >= 400 {
            assert_eq!(
                a.resource_type.as_deref(),
                Some("OperationOutcome"),
                "an error without an OperationOutcome: {a:?}"
            );
        }
        assert!(
            a.elapsed < Duration::from_secs(15),
            "an answer took {:?}: {a:?}",
            a.elapsed
        );
    }
    for s in sent {
        let last = s.last().ok_or("a sender sent nothing")?;
        assert!(
            (200..300).contains(&last.status) || last.status == 409,
            "referral {} never accepted: {:?}",
            s.request_id,
            s.answers
        );
        if last.status == 409 {
            assert!(
                last.attempt > 1,
                "a first attempt refused as a duplicate: {s:?}"
            );
        }
    }
    Ok(by_status)
}

/// The record: each sent referral exactly once, with its triage, its
/// assessment request and its first questionnaires exactly once, and
/// nothing else recorded; then every consumer group's lag returns to 0.
async fn check_record(
    broker: &Broker,
    reader: &mskflow_eventlog_kafka::KafkaEventLog,
    sent: &[Sent],
    system: &mut KafkaSystem,
) -> TestResult {
    let wanted: HashMap<Uuid, ()> = sent.iter().map(|s| (s.request_id, ())).collect();
    type Counts = HashMap<String, usize>;
    let downstream = eventually(
        "every referral triaged, requested and scheduled",
        180,
        || {
            let wanted = &wanted;
            async move {
                let events = all_events(reader).await?;
                let mut received: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
                let mut triaged: Counts = HashMap::new();
                let mut requested: Counts = HashMap::new();
                let mut scheduled: HashMap<String, Vec<String>> = HashMap::new();
                for e in &events {
                    match e.event_type.as_str() {
                        "ReferralReceived" => {
                            let request_id: Uuid =
                                serde_json::from_value(e.payload["request_id"].clone())?;
                            let referral_id: Uuid =
                                serde_json::from_value(e.payload["referral_id"].clone())?;
                            received.entry(request_id).or_default().push(referral_id);
                        }
                        "ReferralTriaged" => *triaged.entry(e.stream_id.clone()).or_default() += 1,
                        "AssessmentRequested" => {
                            *requested.entry(e.stream_id.clone()).or_default() += 1;
                        }
                        "QuestionnaireScheduled" => scheduled
                            .entry(e.stream_id.clone())
                            .or_default()
                            .push(e.payload.to_string()),
                        _ => {}
                    }
                }
                let all_there = wanted.keys().all(|r| {
                    received.get(r).is_some_and(|ids| {
                        ids.iter().all(|id| {
                            triaged.contains_key(&format!("referral-{id}"))
                                && requested.contains_key(&format!("assessment-{id}"))
                                && scheduled.contains_key(&format!("outcomes-{id}"))
                        })
                    })
                });
                Ok(all_there.then_some((received, triaged, requested, scheduled)))
            }
        },
    )
    .await;
    let (received, triaged, requested, scheduled) = match downstream {
        Ok(d) => d,
        Err(e) => return Err(format!("{e}\n{}", system.logs()).into()),
    };
    let mut per_referral = std::collections::BTreeSet::new();
    for s in sent {
        let ids = received.get(&s.request_id).cloned().unwrap_or_default();
        assert_eq!(
            ids.len(),
            1,
            "referral {}: {} ReferralReceived ({:?})",
            s.request_id,
            ids.len(),
            s.answers
        );
        let id = ids[0];
        assert_eq!(triaged.get(&format!("referral-{id}")), Some(&1), "{id}");
        assert_eq!(requested.get(&format!("assessment-{id}")), Some(&1), "{id}");
        // The same referral message: the same questionnaires, none twice.
        let q = scheduled
            .get(&format!("outcomes-{id}"))
            .cloned()
            .unwrap_or_default();
        let distinct: std::collections::BTreeSet<&String> = q.iter().collect();
        assert_eq!(
            distinct.len(),
            q.len(),
            "a questionnaire scheduled twice for {id}"
        );
        per_referral.insert(q.len());
    }
    assert_eq!(
        per_referral.len(),
        1,
        "questionnaires per referral differ: {per_referral:?}"
    );
    // Nothing but the senders' referrals was recorded.
    assert_eq!(received.len(), sent.len());

    // Every durable consumer catches up: committed offsets reach the ends.
    let mut options = mskflow_eventlog_kafka::Options::new(broker.bootstrap(), "test-lag");
    options.topics = reader.topics().clone();
    for consumer in GROUPS {
        let options = &options;
        let caught_up = eventually(&format!("{consumer} lag 0"), 90, || async move {
            let lag = mskflow_eventlog_kafka::group_lag(options, consumer).await?;
            Ok((lag == 0).then_some(()))
        })
        .await;
        if let Err(e) = caught_up {
            let lag = mskflow_eventlog_kafka::group_lag(options, consumer).await?;
            return Err(format!("{e} (lag {lag})\n{}", system.logs()).into());
        }
    }
    system.check_alive()
}

/// Broker, topics, the five services as processes and a reader that follows
/// the topics throughout.
async fn kafka_system(
    name: &str,
    dir: &std::path::Path,
) -> TestResult<(Broker, KafkaSystem, mskflow_eventlog_kafka::KafkaEventLog)> {
    let broker = Broker::start()?;
    let prefix = unique_prefix(name);
    let mut env = kafka_env(&broker, &prefix);
    // Appends fail fast while the broker is away.
    env.push(("MSKFLOW_KAFKA_APPEND_TIMEOUT_MS".into(), "3000".into()));
    let (ok, text) = mskflow_cli(&env, &["topics", "create"])?;
    assert!(ok, "topics create: {text}");
    let system = KafkaSystem::start(dir, &env, 1).await?;
    let reader = kafka_reader(&broker, &prefix).await?;
    Ok((broker, system, reader))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_under_load_loses_and_doubles_nothing() -> TestResult {
    let test_started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let (mut broker, mut system, reader) = kafka_system("outage", tmp.path()).await?;
    let url = format!("http://{}/fhir/$process-message", system.http);

    // 5 s before, 30 s outage, 8 s after.
    let outage = Arc::new(Mutex::new(false));
    let load = steady_load(url, 43, outage.clone())?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    set(&outage, true);
    broker.pause()?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    broker.resume()?;
    set(&outage, false);
    let outage_secs = stopped.elapsed().as_secs_f64();

    let sent = load.await?.map_err(|e| format!("sender: {e}"))?;
    system.check_alive()?;
    let by_status = check_answers(&sent)?;
    let answers: Vec<&Answer> = sent.iter().flat_map(|s| &s.answers).collect();
    let sample = answers
        .iter()
        .find(|a| a.status == 503)
        .and_then(|a| a.diagnostics.clone())
        .unwrap_or_default();
    eprintln!(
        "{} referrals, {} requests, answers {by_status:?}, outage {outage_secs:.1} s; a 503 said: {sample}",
        sent.len(),
        answers.len()
    );
    assert!(
        answers.iter().any(|a| a.during_outage
            && a.status == 503
            && a.resource_type.as_deref() == Some("OperationOutcome")),
        "no 503 with an OperationOutcome during the outage: {by_status:?}"
    );
    check_record(&broker, &reader, &sent, &mut system).await?;
    eprintln!("outage test took {:?}", test_started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_service_process_killed_under_load_loses_and_doubles_nothing() -> TestResult {
    let test_started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let (broker, mut system, reader) = kafka_system("crash", tmp.path()).await?;
    let url = format!("http://{}/fhir/$process-message", system.http);
    let killing = Arc::new(Mutex::new(false));
    let load = steady_load(url, 45, killing.clone())?;
    let ready = format!("http://{}/health/ready", system.http);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in [
        "intake",
        "assessment-a",
        "scheduling",
        "outcomes",
        "gateway",
    ] {
        set(&killing, true);
        let proc = system
            .procs_mut()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or("no such process")?;
        proc.restart()?;
        let mut procs = system.procs_mut();
        wait_http_ready(&ready, &mut procs).await?;
        set(&killing, false);
        eprintln!("{name} killed and restarted");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let sent = load.await?.map_err(|e| format!("sender: {e}"))?;
    system.check_alive()?;
    let by_status = check_answers(&sent)?;
    eprintln!("{} referrals, answers {by_status:?}", sent.len());
    check_record(&broker, &reader, &sent, &mut system).await?;
    eprintln!("crash test took {:?}", test_started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_dead_lettered_and_the_next_referral_is_handled() -> TestResult {
    let broker = Broker::start()?;
    let tmp = tempfile::tempdir()?;
    let prefix = unique_prefix("poison");
    let env = kafka_env(&broker, &prefix);
    let (ok, text) = mskflow_cli(&env, &["topics", "create"])?;
    assert!(ok, "topics create: {text}");
    let mut system = KafkaSystem::start(tmp.path(), &env, 1).await?;
    let app = system.app();
    let writer = kafka_reader(&broker, &prefix).await?;
    let intake_topic = writer.topics().service_topic("intake");

    // 1. Bytes that are no record at all, straight onto the intake topic.
    let referral_key = Uuid::new_v4().to_string();
    let (partition, offset) = produce_raw(
        &broker.bootstrap(),
        &intake_topic,
        &referral_key,
        b"\x00\x01 not json at all",
    )
    .await?;
    // 2. A readable record of an event type no service knows.
    let unknown_stream = format!("referral-{}", Uuid::new_v4());
    writer
        .append(
            &unknown_stream,
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "ReferralTeleported".to_owned(),
                schema_version: 1,
                occurred_at: chrono::Utc::now(),
                payload: serde_json::json!({ "to": "elsewhere" }),
            }],
            &Metadata {
                correlation_id: Uuid::new_v4(),
                ..Metadata::default()
            },
        )
        .await?;
    // 3. A known event type whose payload does not decode.
    let poison_id = Uuid::new_v4();
    writer
        .append(
            &format!("referral-{}", Uuid::new_v4()),
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: poison_id,
                event_type: "ReferralTriaged".to_owned(),
                schema_version: mskflow_events::SCHEMA_VERSION,
                occurred_at: chrono::Utc::now(),
                payload: serde_json::json!({ "referral_id": "not a uuid", "priority": 7 }),
            }],
            &Metadata {
                correlation_id: Uuid::new_v4(),
                ..Metadata::default()
            },
        )
        .await?;

    // The next good referral is still carried through.
    let answer = app.post_message(&new_referral_message()?).await?;
    let status = answer.status();
    let answer: Value = answer.json().await?;
    assert!(status.is_success(), "{status}: {answer}");
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let awaiting = task_when(&app, &id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await;
    if let Err(e) = awaiting {
        return Err(format!("{e}\n{}", system.logs()).into());
    }
    eventually("AssessmentRequested", 30, || {
        let writer = &writer;
        let id = &id;
        async move {
            let stream = writer.read_stream(&format!("assessment-{id}"), 1).await?;
            Ok(stream
                .iter()
                .any(|e| e.event_type == "AssessmentRequested")
                .then_some(()))
        }
    })
    .await?;

    // Each consumer that reads the intake topic set the unreadable bytes
    // aside; assessment (the one that reads triage) also set the
    // undecodable triage aside.
    let place = format!("{intake_topic}/{partition}");
    let listed = eventually("dead letters listed", 30, || {
        let env = &env;
        let place = &place;
        async move {
            let (ok, out) = mskflow_cli(env, &["dead-letters", "list"])?;
            if !ok {
                return Err(format!("dead-letters list failed: {out}").into());
            }
            let raw = LISTED.iter().all(|c| {
                out.lines().any(|l| {
                    l.starts_with(&format!("{c} "))
                        && l.contains(mskflow_eventlog_kafka::UNDECODABLE_RECORD)
                        && l.contains(&format!("kafka:{place}"))
                        && l.contains(&format!("position {offset} "))
                })
            });
            let triage = out.lines().any(|l| {
                l.starts_with("assessment ")
                    && l.contains(&poison_id.to_string())
                    && l.contains("ReferralTriaged")
            });
            Ok((raw && triage).then_some(out))
        }
    })
    .await;
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            let (_, out) = mskflow_cli(&env, &["dead-letters", "list"])?;
            return Err(format!("{e}: {out}\n{}", system.logs()).into());
        }
    };
    // A reason is given, and nothing of the record's content is quoted.
    assert!(listed.contains("reason: "), "{listed}");
    assert!(!listed.contains("not json at all"), "{listed}");
    assert!(!listed.contains("not a uuid"), "{listed}");
    // The unknown event type is not an error: no consumer set it aside.
    assert!(!listed.contains("ReferralTeleported"), "{listed}");

    // Dead-lettered once by each consumer group at most.
    let events = all_events(&writer).await?;
    let mut raw_letters: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| {
        e.event_type == "EventDeadLettered" && e.payload["stream_id"] == format!("kafka:{place}")
    }) {
        let consumer = e.payload["consumer"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *raw_letters.entry(consumer).or_default() += 1;
    }
    assert!(raw_letters.values().all(|n| *n == 1), "{raw_letters:?}");
    assert!(
        LISTED.iter().all(|c| raw_letters.contains_key(*c)),
        "{raw_letters:?}"
    );
    assert!(
        !UNREAD.iter().any(|c| raw_letters.contains_key(*c)),
        "{raw_letters:?}"
    );

    // Every group moves past the unreadable records.
    let mut options = mskflow_eventlog_kafka::Options::new(broker.bootstrap(), "test-lag");
    options.topics = writer.topics().clone();
    for consumer in GROUPS {
        let options = &options;
        eventually(&format!("{consumer} lag 0"), 30, || async move {
            let lag = mskflow_eventlog_kafka::group_lag(options, consumer).await?;
            Ok((lag == 0).then_some(()))
        })
        .await?;
    }
    system.check_alive()?;
    Ok(())
}
