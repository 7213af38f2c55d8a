//! The analysts' stream, live: the gateway publishes every pathway event,
//! pseudonymised, to `{prefix}.analytics.v1` on Kafka, or to a JSON Lines
//! file on the embedded default; across a crash and restart no event is
//! lost and pseudonyms stay the same.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use common::kafka::{KafkaSystem, eventually, kafka_env, kafka_reader, mskflow_cli};
use common::*;
use mskflow_analytics::{AnalystEvent, Pseudonymiser, is_exported};
use mskflow_eventlog::Envelope;
use mskflow_eventlog_kafka::testing::{Broker, unique_prefix};
use mskflow_events::NhsNumber;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use serde_json::{Value, json};
use uuid::Uuid;

const SECRET: &str = "the analysts' stream secret of this test";

/// One patient's identifying details, every one a value to look for.
struct Patient {
    nhs: &'static str,
    family: &'static str,
    given: &'static str,
    postcode: &'static str,
    birth_date: &'static str,
}

const PATIENT_A: Patient = Patient {
    nhs: "4857773457",
    family: "Quillfeatherfamily",
    given: "Zephyrinagiven",
    postcode: "LS1 5HD",
    birth_date: "1957-03-09",
};

const PATIENT_B: Patient = Patient {
    nhs: "4010232137",
    family: "Marrowbankfamily",
    given: "Ottilinegiven",
    postcode: "LS6 2QN",
    birth_date: "1990-11-27",
};

const NOTE: &str = "SENTINELNOTE knee pain told in free text";

/// Everything that must never reach the analysts' stream.
fn forbidden() -> Vec<String> {
    let mut out = vec![NOTE.to_owned(), "SENTINELNOTE".to_owned()];
    for p in [&PATIENT_A, &PATIENT_B] {
        out.extend([
            p.nhs.to_owned(),
            format!("{} {} {}", &p.nhs[..3], &p.nhs[3..6], &p.nhs[6..]),
            p.family.to_owned(),
            p.given.to_owned(),
            p.postcode.to_owned(),
            p.postcode.replace(' ', ""),
            p.birth_date.to_owned(),
        ]);
    }
    out
}

fn referral_for(p: &Patient) -> TestResult<Value> {
    let mut bundle = new_referral_message()?;
    with_resource(&mut bundle, "Patient", |r| {
        r["identifier"] = json!([{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": p.nhs}]);
        r["name"] = json!([{"use": "official", "family": p.family, "given": [p.given]}]);
        r["birthDate"] = json!(p.birth_date);
        r["address"] =
            json!([{"use": "home", "line": ["1 SENTINELNOTE Row"], "postalCode": p.postcode}]);
    })?;
    with_resource(&mut bundle, "ServiceRequest", |sr| {
        sr["note"] = json!([{"text": NOTE}]);
    })?;
    Ok(bundle)
}

fn pseudonym(secret: &[u8], nhs: &str) -> TestResult<String> {
    Ok(Pseudonymiser::new(secret)?.pseudonym(&NhsNumber::parse(nhs)?))
}

/// Submit a referral; its id.
async fn submit(app: &App, p: &Patient) -> TestResult<Uuid> {
    let res = app.post_message(&referral_for(p)?).await?;
    let status = res.status();
    let body: Value = res.json().await?;
    assert!(status.is_success(), "{status}: {body}");
    let id = entries_of(&body, "Task")
        .first()
        .and_then(|t| t["id"].as_str())
        .ok_or("no Task id")?;
    Ok(Uuid::parse_str(id)?)
}

fn referral_of(e: &Envelope) -> Option<Uuid> {
    e.payload["referral_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn schema_validator() -> TestResult<jsonschema::Validator> {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("schemas/analytics/analyst-event.v1.schema.json"),
    )?)?;
    Ok(jsonschema::validator_for(&schema)?)
}

/// Check one record's bytes: valid, parseable, identifier-free.
fn check_record(validator: &jsonschema::Validator, bytes: &[u8]) -> TestResult<AnalystEvent> {
    let text = std::str::from_utf8(bytes)?;
    for f in forbidden() {
        assert!(
            !text.contains(&f),
            "the analysts' stream leaks {f:?}: {text}"
        );
    }
    let value: Value = serde_json::from_str(text)?;
    if let Err(e) = validator.validate(&value) {
        return Err(format!("invalid analyst event: {e}\n{value}").into());
    }
    Ok(serde_json::from_value(value)?)
}

/// A record of the analysts' topic.
struct Record {
    key: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn topic_reader(broker: &Broker, topic: &str) -> TestResult<StreamConsumer> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("analyst-reader-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Take what the topic has for now (until it is quiet for a moment).
async fn drain(consumer: &StreamConsumer, into: &mut Vec<Record>) -> TestResult {
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await {
        let m = m?;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        into.push(Record {
            key: String::from_utf8(m.key().unwrap_or_default().to_vec())?,
            headers,
            body: m.payload().unwrap_or_default().to_vec(),
        });
    }
    Ok(())
}

/// Wait until every exported operational event of `referrals` is on the
/// analysts' topic (and, when `downstream`, some referral has reached
/// assessment, so more than intake's events are covered). Returns the
/// expected event ids.
async fn wait_published(
    system: &mut KafkaSystem,
    reader: &mskflow_eventlog_kafka::KafkaEventLog,
    consumer: &StreamConsumer,
    records: &mut Vec<Record>,
    referrals: &[Uuid],
) -> TestResult<HashSet<Uuid>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        system.check_alive()?;
        drain(consumer, records).await?;
        let ops = all_events(reader).await?;
        let expected: HashSet<Uuid> = ops
            .iter()
            .filter(|e| is_exported(&e.event_type))
            .filter(|e| referral_of(e).is_some_and(|r| referrals.contains(&r)))
            .map(|e| e.event_id)
            .collect();
        let downstream = ops.iter().any(|e| {
            e.event_type == "AssessmentRequested"
                && referral_of(e).is_some_and(|r| referrals.contains(&r))
        });
        let published: HashSet<Uuid> = records
            .iter()
            .filter_map(|r| serde_json::from_slice::<AnalystEvent>(&r.body).ok())
            .map(|e| e.event_id)
            .collect();
        let missing = expected.difference(&published).count();
        if downstream && missing == 0 && !expected.is_empty() {
            return Ok(expected);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{missing} of {} events not on the analysts' topic (downstream: {downstream})\n{}",
                expected.len(),
                system.logs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_publishes_the_analysts_topic_across_a_crash() -> TestResult {
    let broker = Broker::start()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let prefix = unique_prefix("analysts");
    let mut env = kafka_env(&broker, &prefix);
    env.push(("MSKFLOW_ANALYTICS_SECRET".into(), SECRET.into()));
    let (ok, text) = mskflow_cli(&env, &["topics", "create"])?;
    assert!(ok, "{text}");
    let topic = format!("{prefix}.analytics.v1");
    assert!(
        text.contains(&topic),
        "topics create names the analysts' topic: {text}"
    );
    let (ok, text) = mskflow_cli(&env, &["topics", "check"])?;
    assert!(ok, "{text}");

    let mut system = KafkaSystem::start(dir, &env, 1).await?;
    let app = system.app();
    let a1 = submit(&app, &PATIENT_A).await?;
    let a2 = submit(&app, &PATIENT_A).await?;
    let b1 = submit(&app, &PATIENT_B).await?;

    let reader = kafka_reader(&broker, &prefix).await?;
    let consumer = topic_reader(&broker, &topic)?;
    let mut records = Vec::new();
    let expected =
        wait_published(&mut system, &reader, &consumer, &mut records, &[a1, a2, b1]).await?;

    let validator = schema_validator()?;
    let pa = pseudonym(SECRET.as_bytes(), PATIENT_A.nhs)?;
    let pb = pseudonym(SECRET.as_bytes(), PATIENT_B.nhs)?;
    assert_ne!(pa, pb);
    let mut by_referral: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        let event = check_record(&validator, &r.body)?;
        let key = event.referral_key.unwrap_or(event.event_id);
        assert_eq!(r.key, key.to_string(), "records are keyed by referral");
        assert_eq!(r.headers.get("event_type"), Some(&event.event_type));
        assert_eq!(
            r.headers.get("schema_version").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        if let Some(referral) = event.referral_key.filter(|k| [a1, a2, b1].contains(k)) {
            assert!(event.age_band.is_some(), "{event:?}");
            assert!(event.imd_decile.is_some(), "{event:?}");
            by_referral
                .entry(referral)
                .or_default()
                .insert(event.patient_pseudonym.clone().ok_or("no pseudonym")?);
        }
    }
    let one = |id: Uuid| -> TestResult<String> {
        let set = by_referral.get(&id).ok_or("referral missing")?;
        assert_eq!(set.len(), 1, "one pseudonym per referral: {set:?}");
        Ok(set.iter().next().cloned().unwrap_or_default())
    };
    assert_eq!(one(a1)?, pa);
    assert_eq!(one(a2)?, pa, "the same patient, the same pseudonym");
    assert_eq!(one(b1)?, pb, "another patient, another pseudonym");

    // A crash: the gateway is killed and started again; the publisher
    // resumes from its checkpoint and recalls the patients it had seen.
    system.gateway.restart()?;
    let url = format!("http://{}/health/ready", system.http);
    let mut procs = system.procs_mut();
    common::kafka::wait_http_ready(&url, &mut procs).await?;
    let b2 = submit(&app, &PATIENT_B).await?;
    let all = wait_published(
        &mut system,
        &reader,
        &consumer,
        &mut records,
        &[a1, a2, b1, b2],
    )
    .await?;
    assert!(expected.is_subset(&all));
    let mut after = BTreeSet::new();
    let mut published = HashSet::new();
    for r in &records {
        let event = check_record(&validator, &r.body)?;
        published.insert(event.event_id);
        if event.referral_key == Some(b2) {
            after.insert(event.patient_pseudonym.clone().ok_or("no pseudonym")?);
            assert_eq!(r.key, b2.to_string());
        }
    }
    assert!(all.is_subset(&published), "no event lost across the crash");
    assert_eq!(
        after,
        BTreeSet::from([pb]),
        "the same pseudonym after the crash"
    );
    system.check_alive()?;
    Ok(())
}

/// The JSONL file's events (lines that parse).
fn read_stream_file(
    path: &Path,
    validator: &jsonschema::Validator,
) -> TestResult<Vec<AnalystEvent>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    let mut events = Vec::new();
    for line in text.lines() {
        // A line a crash cut short stays on its own and is skipped (its
        // events are published again); every line is checked for leaks.
        for f in forbidden() {
            assert!(!line.contains(&f), "the stream file leaks {f:?}: {line}");
        }
        if serde_json::from_str::<Value>(line).is_ok() {
            events.push(check_record(validator, line.as_bytes())?);
        }
    }
    Ok(events)
}

async fn start_all_in_one(dir: &Path) -> TestResult<(tokio::process::Child, App)> {
    let mut command = all_in_one_command(dir);
    command
        .envs(test_auth_env(dir)?)
        .env_remove("MSKFLOW_ANALYTICS_SECRET")
        .env_remove("MSKFLOW_CONFIG");
    let mut child = command.spawn()?;
    let base = gateway_url(&mut child).await?;
    Ok((child, App::remote(base)))
}

async fn wait_in_file(
    path: &Path,
    validator: &jsonschema::Validator,
    referral: Uuid,
) -> TestResult<Vec<AnalystEvent>> {
    eventually("the referral's events in the stream file", 60, || async {
        let events = read_stream_file(path, validator)?;
        let types: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.referral_key == Some(referral))
            .map(|e| e.event_type.as_str())
            .collect();
        Ok(
            (types.contains("ReferralReceived") && types.contains("ReferralTriaged"))
                .then_some(events),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mskflow_run_writes_the_stream_file_with_a_kept_secret() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let validator = schema_validator()?;
    let stream = dir.join("analytics/analyst-events.jsonl");
    let secret_path = dir.join("analytics/secret");

    let (mut child, app) = start_all_in_one(dir).await?;
    let first = submit(&app, &PATIENT_A).await?;
    let events = wait_in_file(&stream, &validator, first).await?;
    let secret = std::fs::read(&secret_path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&secret_path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    let expected = pseudonym(secret.trim_ascii_end(), PATIENT_A.nhs)?;
    for e in events.iter().filter(|e| e.referral_key == Some(first)) {
        assert_eq!(e.patient_pseudonym.as_deref(), Some(expected.as_str()));
        assert!(e.imd_decile.is_some() && e.age_band.is_some(), "{e:?}");
    }

    // SIGKILL, then run again on the same data directory.
    child.kill().await?;
    let (mut child, app) = start_all_in_one(dir).await?;
    let second = submit(&app, &PATIENT_A).await?;
    let events = wait_in_file(&stream, &validator, second).await?;
    assert_eq!(std::fs::read(&secret_path)?, secret, "the secret is kept");
    let pseudonyms: BTreeSet<_> = events
        .iter()
        .filter(|e| e.referral_key == Some(first) || e.referral_key == Some(second))
        .map(|e| e.patient_pseudonym.clone())
        .collect();
    assert_eq!(
        pseudonyms,
        BTreeSet::from([Some(expected)]),
        "one pseudonym for the patient across the restart"
    );
    assert!(
        events.iter().any(|e| e.referral_key == Some(first)),
        "the first run's events are still in the file"
    );
    child.kill().await?;
    Ok(())
}
