//! The official FHIR R4 examples against the gateway, and everything the
//! gateway answers checked by an external validator (the R4 JSON schema).
//!
//! `scripts/fhir-tools.sh` installs the examples (npm `hl7.fhir.r4.examples`)
//! and the validator (`scripts/fhir-validate.mjs`: ajv with the R4
//! `fhir.schema.json`) once, under `~/.cache/mskflow/fhir-tools` (or
//! `$MSKFLOW_FHIR_TOOLS`); this test calls it, so it is a no-op once cached.
//!
//! Every official `ServiceRequest`, `Task`, `Patient` and `Bundle` example is
//! posted the way the gateway takes that resource:
//!
//! - `ServiceRequest`: `POST /ServiceRequest` with its subject `Patient`
//!   example contained, once as published and once prepared as a referrer
//!   would send it (an NHS number on the Patient, the requester's ODS code,
//!   an identifier);
//! - `Patient`: as the subject of a referral message (`$process-message`),
//!   once as published and once with an NHS number added; an accepted one
//!   must then read back (`GET /Patient/{id}`, and by identifier) exactly as
//!   it was sent;
//! - `Bundle`: `$process-message`, the only route that takes a Bundle;
//! - `Task`: `POST /Task` (the gateway creates Tasks itself: 405).
//!
//! Each answer is 2xx, or 4xx with an `OperationOutcome` whose issues carry a
//! severity, a code and, for validation failures, an `expression` naming the
//! element. Never 5xx. What the gateway answered, and what it serves on reads
//! and searches of what was accepted, must all pass the validator.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a failure")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use uuid::Uuid;

use common::fhir_validator::{fhir_tools, validate};
use common::{TestResult, spawn_app};

const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// The organisation of the development access token.
const SENDER_ODS: &str = "A81001";

/// Issue codes that report a validation failure: each must name the element.
const VALIDATION_CODES: &[&str] = &[
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "code-invalid",
];

/// The official examples of `resource_type`, by file name.
fn examples(dir: &Path, resource_type: &str) -> TestResult<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{resource_type}-")) && name.ends_with(".json") {
            let value: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(&name))?)?;
            out.push((name, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Valid NHS numbers (modulus 11) in the 999 test range, each new.
#[derive(Debug, Default)]
struct NhsNumbers(u32);

impl NhsNumbers {
    fn next(&mut self) -> String {
        loop {
            self.0 += 1;
            let digits = format!("999{:06}", self.0);
            let sum: u32 = digits
                .chars()
                .zip((2..=10).rev())
                .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
                .sum();
            match 11 - sum % 11 {
                10 => continue,
                11 => return format!("{digits}0"),
                c => return format!("{digits}{c}"),
            }
        }
    }
}

/// An HTTP client of the running gateway with its development token.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .header("X-Request-Id", Uuid::new_v4().to_string())
            .header("X-Correlation-Id", Uuid::new_v4().to_string());
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn post(&self, path: &str, body: String) -> TestResult<(u16, Value)> {
        let res = self
            .request(reqwest::Method::POST, path)
            .header("Content-Type", "application/fhir+json")
            .header("Prefer", "return=representation")
            .body(body)
            .send()
            .await?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn get(&self, path: &str) -> TestResult<(u16, Value)> {
        let res = self.request(reqwest::Method::GET, path).send().await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await?))
    }
}

/// Counts per example type.
#[derive(Debug, Default)]
struct Tally {
    posted: usize,
    accepted: usize,
    refused: usize,
    /// Answers by HTTP status and first issue code, e.g. `400 required`.
    answers: BTreeMap<String, usize>,
}

/// What the run saw.
#[derive(Debug, Default)]
struct Run {
    tally: BTreeMap<String, Tally>,
    /// Every resource the gateway answered with.
    resources: Vec<(String, Value)>,
    /// Contract breaches (5xx, an issue without code, ...).
    problems: Vec<String>,
    /// Referral ids accepted (Task/ServiceRequest ids).
    referrals: Vec<String>,
    /// (NHS number, the Patient as sent) of accepted referrals.
    patients: Vec<(String, Value)>,
}

impl Run {
    /// Check one answer to a post of `what` and record it.
    fn answer(&mut self, kind: &str, what: &str, status: u16, body: Value) {
        let tally = self.tally.entry(kind.to_owned()).or_default();
        tally.posted += 1;
        let first_code = body["issue"][0]["code"].as_str().unwrap_or_default();
        *tally
            .answers
            .entry(format!("{status} {first_code}").trim().to_owned())
            .or_default() += 1;

        if status >= 500 {
            self.problems
                .push(format!("{what}: answered {status}: {body}"));
            return;
        }
        if (200..300).contains(&status) {
            tally.accepted += 1;
            if let Some(id) = accepted_referral_id(&body) {
                self.referrals.push(id);
            }
        } else {
            tally.refused += 1;
            self.check_outcome(what, status, &body);
        }
        if body.is_object() {
            self.resources.push((format!("answer to {what}"), body));
        }
    }

    fn check_outcome(&mut self, what: &str, status: u16, body: &Value) {
        if body["resourceType"] != "OperationOutcome" {
            self.problems.push(format!(
                "{what}: {status} without an OperationOutcome: {body}"
            ));
            return;
        }
        let issues = body["issue"].as_array().cloned().unwrap_or_default();
        if issues.is_empty() {
            self.problems
                .push(format!("{what}: {status} with no issue"));
        }
        for issue in issues {
            let code = issue["code"].as_str().unwrap_or_default();
            if code.is_empty() || issue["severity"].as_str().is_none_or(str::is_empty) {
                self.problems.push(format!(
                    "{what}: an issue without code or severity: {issue}"
                ));
            }
            let validation = matches!(status, 400 | 422) && VALIDATION_CODES.contains(&code);
            let located = issue["expression"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x.as_str().is_some_and(|s| !s.is_empty())));
            if validation && !located {
                self.problems
                    .push(format!("{what}: a {code} issue names no element: {issue}"));
            }
        }
    }
}

/// The referral id of an accepted post: a ServiceRequest answered, or the
/// Task in a response message.
fn accepted_referral_id(body: &Value) -> Option<String> {
    match body["resourceType"].as_str()? {
        "ServiceRequest" => body["id"].as_str().map(str::to_owned),
        "Bundle" => body["entry"].as_array()?.iter().find_map(|e| {
            (e["resource"]["resourceType"] == "Task")
                .then(|| e["resource"]["id"].as_str().map(str::to_owned))
                .flatten()
        }),
        _ => None,
    }
}

/// The ServiceRequest example with its subject Patient example contained
/// (`#id`) when the examples have it. `prepared` adds what a referrer sends:
/// an NHS number on the Patient, the requester's ODS code, an identifier.
fn service_request_referral(
    sr: &Value,
    patients: &BTreeMap<String, Value>,
    prepared: Option<&str>,
) -> Value {
    let mut sr = sr.clone();
    let subject = sr["subject"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(id) = subject.strip_prefix("Patient/")
        && let Some(patient) = patients.get(id)
    {
        let mut patient = patient.clone();
        if let Some(nhs) = prepared {
            add_nhs_number(&mut patient, nhs);
        }
        // A contained resource carries no version metadata of its own.
        if let Some(meta) = patient.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
        }
        let contained = sr["contained"].as_array().cloned().unwrap_or_default();
        let mut all = vec![patient];
        all.extend(contained);
        sr["contained"] = Value::Array(all);
        sr["subject"] = json!({"reference": format!("#{id}")});
    }
    if prepared.is_some() {
        sr["requester"] = json!({"identifier": {"system": ODS_SYSTEM, "value": SENDER_ODS}});
        sr["identifier"] = json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": Uuid::new_v4().to_string()}]);
    }
    sr
}

fn add_nhs_number(patient: &mut Value, nhs: &str) {
    let mut identifiers = patient["identifier"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    identifiers.push(json!({"system": NHS_NUMBER_SYSTEM, "value": nhs}));
    patient["identifier"] = Value::Array(identifiers);
}

/// The canonical referral message with `patient` as its subject (keeping
/// the example's own id) and a fresh message and referral identifier.
fn message_with_patient(template: &Value, patient: &Value) -> TestResult<Value> {
    let mut bundle = template.clone();
    let entries = bundle["entry"].as_array_mut().ok_or("no entries")?;
    for e in entries.iter_mut() {
        match e["resource"]["resourceType"].as_str() {
            Some("Patient") => e["resource"] = patient.clone(),
            Some("MessageHeader") => e["resource"]["id"] = json!(Uuid::new_v4().to_string()),
            Some("ServiceRequest") => {
                e["resource"]["identifier"] = json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": Uuid::new_v4().to_string()}]);
            }
            _ => {}
        }
    }
    Ok(bundle)
}

/// A served Patient without what the server sets (`id`, version metadata).
fn as_sent(patient: &Value) -> Value {
    let mut p = patient.clone();
    if let Some(o) = p.as_object_mut() {
        o.remove("id");
        if let Some(meta) = o.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                o.remove("meta");
            }
        }
    }
    p
}

/// Every resource in a Bundle's entries, for validation on its own (the
/// schema's error for a nested resource is vague).
fn with_entries(what: &str, resource: &Value) -> Vec<(String, Value)> {
    let mut out = vec![(what.to_owned(), resource.clone())];
    if resource["resourceType"] == "Bundle" {
        for (i, e) in resource["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if e["resource"].is_object() {
                out.push((format!("{what} entry[{i}]"), e["resource"].clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_examples_round_trip_and_every_answer_validates() -> TestResult {
    let tools = fhir_tools()?;
    let dir = tools.join("node_modules/hl7.fhir.r4.examples");
    let app = spawn_app().await?;
    let client = Client {
        http: reqwest::Client::new(),
        base: app.base.clone(),
        token: Some(common::test_token()),
    };
    let mut run = Run::default();
    let mut nhs_numbers = NhsNumbers::default();

    // Patients: as the subject of a referral message.
    let template = common::fixture("referral-message.json")?;
    let patients = examples(&dir, "Patient")?;
    for (name, patient) in &patients {
        let (status, body) = client
            .post(
                "$process-message",
                message_with_patient(&template, patient)?.to_string(),
            )
            .await?;
        run.answer("Patient (as published)", name, status, body);

        let nhs = nhs_numbers.next();
        let mut with_nhs = patient.clone();
        add_nhs_number(&mut with_nhs, &nhs);
        let (status, body) = client
            .post(
                "$process-message",
                message_with_patient(&template, &with_nhs)?.to_string(),
            )
            .await?;
        if (200..300).contains(&status) {
            run.patients.push((nhs, with_nhs));
        }
        run.answer(
            "Patient (NHS number added)",
            &format!("{name} with an NHS number"),
            status,
            body,
        );
    }

    // ServiceRequests: plain create, the subject Patient contained.
    let by_id: BTreeMap<String, Value> = patients
        .iter()
        .filter_map(|(_, p)| Some((p["id"].as_str()?.to_owned(), p.clone())))
        .collect();
    for (name, sr) in examples(&dir, "ServiceRequest")? {
        let body = service_request_referral(&sr, &by_id, None);
        let (status, answer) = client.post("ServiceRequest", body.to_string()).await?;
        run.answer("ServiceRequest (as published)", &name, status, answer);

        let nhs = nhs_numbers.next();
        let body = service_request_referral(&sr, &by_id, Some(&nhs));
        let (status, answer) = client.post("ServiceRequest", body.to_string()).await?;
        run.answer(
            "ServiceRequest (prepared)",
            &format!("{name} prepared"),
            status,
            answer,
        );
    }

    // Tasks: the gateway makes its own.
    for (name, task) in examples(&dir, "Task")? {
        let (status, answer) = client.post("Task", task.to_string()).await?;
        run.answer("Task", &name, status, answer);
    }

    // Bundles: $process-message (only messages are referrals).
    for (name, bundle) in examples(&dir, "Bundle")? {
        let (status, answer) = client.post("$process-message", bundle.to_string()).await?;
        run.answer("Bundle", &name, status, answer);
    }

    // Patients read back exactly as sent.
    let mut round_trips = 0;
    for (nhs, sent) in run.patients.clone() {
        let (status, found) = client
            .get(&format!("Patient?identifier={NHS_NUMBER_SYSTEM}%7C{nhs}"))
            .await?;
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["total"], 1, "one Patient per NHS number: {found}");
        let id = found["entry"][0]["resource"]["id"]
            .as_str()
            .ok_or("no Patient id")?
            .to_owned();
        let (status, read) = client.get(&format!("Patient/{id}")).await?;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["meta"]["versionId"], "1");
        assert_eq!(
            as_sent(&read),
            as_sent(&sent),
            "Patient/{id} is not as sent"
        );
        let (status, history) = client.get(&format!("Patient/{id}/_history")).await?;
        assert_eq!(status, 200, "{history}");
        assert_eq!(history["total"], 1);
        run.resources.push(("Patient search".into(), found));
        run.resources.push(("Patient read".into(), read));
        run.resources.push(("Patient history".into(), history));
        round_trips += 1;
    }

    // Reads and searches of what was accepted.
    let mut reads = Vec::new();
    for id in &run.referrals {
        reads.push(format!("Task/{id}"));
        reads.push(format!("ServiceRequest/{id}"));
        reads.push(format!("Task/{id}/_history"));
        reads.push(format!("ServiceRequest/{id}/_history/1"));
        reads.push(format!("Task?focus=ServiceRequest/{id}"));
    }
    reads.extend(
        [
            "metadata",
            "Task?status=accepted,rejected&_count=50",
            "ServiceRequest?authored=ge2000-01-01&_sort=-authored&_count=50",
            "ServiceRequest?_count=2",
            "Patient?_count=50",
            "MessageDefinition",
            "MessageDefinition/servicerequest-request",
            "Questionnaire",
            "Questionnaire/msk-hq",
            "Appointment",
            "Schedule",
            "Slot",
            "Task/00000000-0000-0000-0000-000000000000",
            "Patient/00000000-0000-0000-0000-000000000000",
            "Task?colour=blue",
        ]
        .map(str::to_owned),
    );
    if let Some((nhs, _)) = run.patients.first() {
        reads.push(format!(
            "ServiceRequest?patient:identifier={NHS_NUMBER_SYSTEM}%7C{nhs}"
        ));
    }
    for path in &reads {
        let (status, body) = client.get(path).await?;
        assert!(status < 500, "GET {path}: {status} {body}");
        run.resources
            .extend(with_entries(&format!("GET {path}"), &body));
    }

    // Answers to posts: each Bundle's entries on their own too.
    let answers = std::mem::take(&mut run.resources);
    let resources: Vec<(String, Value)> = answers
        .iter()
        .flat_map(|(what, r)| with_entries(what, r))
        .collect();
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in &resources {
        *types
            .entry(r["resourceType"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let failures = validate(&tools, &resources)?;

    println!("official FHIR R4 examples (hl7.fhir.r4.examples 4.0.1) posted to the gateway:");
    println!(
        "  {:<32} {:>6} {:>9} {:>8}",
        "kind", "posted", "accepted", "refused"
    );
    for (kind, t) in &run.tally {
        println!(
            "  {kind:<32} {:>6} {:>9} {:>8}   {}",
            t.posted,
            t.accepted,
            t.refused,
            t.answers
                .iter()
                .map(|(a, n)| format!("{a}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  Patients read back exactly as sent: {round_trips}");
    println!(
        "resources validated against the R4 JSON schema: {} ({}), failures: {}",
        resources.len(),
        types
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        failures.len()
    );
    for f in &failures {
        println!("  {f}");
    }
    for p in &run.problems {
        println!("  contract: {p}");
    }
    assert!(
        run.problems.is_empty(),
        "{} answers broke the contract",
        run.problems.len()
    );
    assert!(
        failures.is_empty(),
        "{} resources failed validation",
        failures.len()
    );
    assert!(round_trips > 0, "no Patient example was accepted");
    assert!(
        run.tally.values().map(|t| t.posted).sum::<usize>() > 50,
        "too few examples found in {}",
        dir.display()
    );
    Ok(())
}
