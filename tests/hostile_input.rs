//! Hostile input at the HTTP edge, over real sockets against the whole
//! system in one process.
//!
//! Every malformed, oversized, deceptive or slow request must be refused
//! with a 4xx, never a 5xx, and the server must stay healthy: it still
//! answers `/health/live`, its memory stays bounded, a valid referral is
//! still accepted afterwards, and nothing recorded before is changed.
//!
//! Two kinds of refusal are checked:
//!
//! - a request that reaches the application gets a FHIR `OperationOutcome`
//!   body (`application/fhir+json`);
//! - a request whose HTTP framing is broken (a header line with a bare CR, a
//!   Content-Length that is not a number, two different Content-Lengths, a
//!   head over the HTTP layer's 128 KiB buffer or 96 header lines) never
//!   reaches it: the HTTP layer answers a bare 400 or 431 and closes the
//!   connection. There is no request to answer in FHIR terms.
//!
//! Slow clients: a request head not complete within the HTTP layer's
//! request timeout (5 s) gets 408 and the connection is closed; a body not
//! complete within the gateway's body timeout gets 408 with an
//! `OperationOutcome` (`timeout`) and the connection is closed. Both are
//! checked against a client that sends one byte a second.
//!
//! The gateway's body limit is raised to 4 MiB here so that an array of a
//! million elements fits under it.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

const BODY_LIMIT: usize = 4 * 1024 * 1024;
/// How much the test process (which runs the whole system) may grow.
const MAX_RSS_GROWTH_KB: u64 = 200 * 1024;

/// A kilobyte figure from `/proc/self/status` (`VmRSS`, `VmHWM`).
fn proc_status_kb(field: &str) -> TestResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("{field} not in /proc/self/status"))?;
    Ok(line.split_whitespace().nth(1).ok_or("no value")?.parse()?)
}

/// One request sent with the HTTP client.
struct Case {
    name: String,
    method: reqwest::Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Case {
    /// A write with the required ids and the FHIR content type.
    fn post(name: &str, path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.to_owned(),
            method: reqwest::Method::POST,
            path: path.to_owned(),
            headers: vec![
                ("content-type".into(), b"application/fhir+json".to_vec()),
                (
                    "x-request-id".into(),
                    Uuid::new_v4().to_string().into_bytes(),
                ),
                (
                    "x-correlation-id".into(),
                    Uuid::new_v4().to_string().into_bytes(),
                ),
            ],
            body: body.into(),
        }
    }

    fn message(name: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::post(name, "$process-message", body)
    }

    fn get(name: &str, path: &str) -> Self {
        Self {
            name: name.to_owned(),
            method: reqwest::Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Replace (or with `None` remove) a header.
    fn header(mut self, name: &str, value: Option<&[u8]>) -> Self {
        self.headers.retain(|(n, _)| n != name);
        if let Some(v) = value {
            self.headers.push((name.to_owned(), v.to_vec()));
        }
        self
    }
}

/// The referral message with the values at `changes` (JSON pointers)
/// replaced.
fn message_with(changes: &[(&str, Value)]) -> TestResult<Vec<u8>> {
    let mut bundle = new_referral_message()?;
    for (pointer, value) in changes {
        if let Some(slot) = bundle.pointer_mut(pointer) {
            *slot = value.clone();
            continue;
        }
        // A new element of an existing object.
        let (parent, key) = pointer.rsplit_once('/').ok_or("bad pointer")?;
        bundle
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("fixture has no {parent}"))?
            .insert(key.to_owned(), value.clone());
    }
    Ok(serde_json::to_vec(&bundle)?)
}

/// A Bundle of type message with `entries` as its entry array.
fn bundle_with_entries(entries: &str) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Bundle","meta":{{"versionId":"1"}},"type":"message","entry":{entries}}}"#
    )
    .into_bytes()
}

/// Wrong JSON types in every referral element the mapping reads.
fn wrong_types() -> TestResult<Vec<Case>> {
    let changes: &[(&str, &str, Value)] = &[
        ("Bundle.type number", "/type", json!(7)),
        ("Bundle.entry object", "/entry", json!({"resource": {}})),
        ("Bundle.meta string", "/meta", json!("1")),
        ("Bundle.meta.versionId number", "/meta/versionId", json!(1)),
        ("entry is a string", "/entry/0", json!("MessageHeader")),
        ("fullUrl number", "/entry/1/fullUrl", json!(1)),
        (
            "MessageHeader.eventCoding string",
            "/entry/0/resource/eventCoding",
            json!("servicerequest-request"),
        ),
        (
            "MessageHeader.focus string",
            "/entry/0/resource/focus",
            json!("urn:uuid:9e4d2b1a-6c3f-4d8e-a7b5-2c1d0e9f8a7b"),
        ),
        (
            "MessageHeader.sender array",
            "/entry/0/resource/sender",
            json!([]),
        ),
        (
            "MessageHeader.reason.coding string",
            "/entry/0/resource/reason/coding",
            json!("new"),
        ),
        (
            "ServiceRequest.status bool",
            "/entry/1/resource/status",
            json!(true),
        ),
        (
            "ServiceRequest.priority number",
            "/entry/1/resource/priority",
            json!(1),
        ),
        (
            "ServiceRequest.subject string",
            "/entry/1/resource/subject",
            json!("Patient/1"),
        ),
        (
            "ServiceRequest.subject.reference object",
            "/entry/1/resource/subject/reference",
            json!({"reference": "x"}),
        ),
        (
            "ServiceRequest.identifier object",
            "/entry/1/resource/identifier",
            json!({"value": "x"}),
        ),
        (
            "ServiceRequest.reasonCode string",
            "/entry/1/resource/reasonCode",
            json!("knee"),
        ),
        (
            "ServiceRequest.authoredOn number",
            "/entry/1/resource/authoredOn",
            json!(20261120),
        ),
        (
            "ServiceRequest.contained object",
            "/entry/1/resource/contained",
            json!({}),
        ),
        (
            "Patient.identifier string",
            "/entry/2/resource/identifier",
            json!("9434765919"),
        ),
        (
            "Patient NHS number as a number",
            "/entry/2/resource/identifier/0/value",
            json!(9_434_765_919_u64),
        ),
        (
            "Patient.gender array",
            "/entry/2/resource/gender",
            json!(["female"]),
        ),
        (
            "Patient.birthDate number",
            "/entry/2/resource/birthDate",
            json!(1968),
        ),
        (
            "Patient.birthDate not a date",
            "/entry/2/resource/birthDate",
            json!("1968-13-45"),
        ),
        (
            "Patient.name object",
            "/entry/2/resource/name",
            json!({"family": "x"}),
        ),
        (
            "Patient.address.postalCode number",
            "/entry/2/resource/address/0/postalCode",
            json!(1),
        ),
        (
            "Organization ODS code number",
            "/entry/3/resource/identifier/0/value",
            json!(8),
        ),
        (
            "red flag valueBoolean string",
            "/entry/6/resource/valueBoolean",
            json!("true"),
        ),
        (
            "red flag code number",
            "/entry/6/resource/code/coding/0/code",
            json!(1),
        ),
        (
            "STarT Back item answer string",
            "/entry/8/resource/item/0/answer/0/valueBoolean",
            json!("no"),
        ),
        (
            "STarT Back items object",
            "/entry/8/resource/item",
            json!({"linkId": "1"}),
        ),
        (
            "resourceType number",
            "/entry/2/resource/resourceType",
            json!(1),
        ),
        ("resourceType null", "/resourceType", Value::Null),
    ];
    changes
        .iter()
        .map(|(name, pointer, value)| {
            Ok(Case::message(
                &format!("wrong type: {name}"),
                message_with(&[(pointer, value.clone())])?,
            ))
        })
        .collect()
}

/// Requests that reach the application: each must be a 4xx
/// OperationOutcome.
fn corpus() -> TestResult<Vec<Case>> {
    let valid = serde_json::to_vec(&new_referral_message()?)?;
    let mut cases = vec![
        Case::message("empty body", Vec::new()),
        Case::message("truncated JSON", valid[..valid.len() / 2].to_vec()),
        Case::message("truncated by one byte", valid[..valid.len() - 1].to_vec()),
        Case::message("JSON null", "null"),
        Case::message("JSON array", "[]"),
        Case::message("JSON string", "\"Bundle\""),
        Case::message("trailing garbage", [valid.clone(), b"}{".to_vec()].concat()),
        Case::message(
            "nested arrays 10,000 deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        Case::message(
            "nested objects 10,000 deep in a Bundle",
            format!(
                r#"{{"resourceType":"Bundle","type":"message","x":{}1{}}}"#,
                r#"{"a":"#.repeat(10_000),
                "}".repeat(10_000)
            ),
        ),
        Case::message(
            "nested extensions 10,000 deep in a Patient",
            message_with(&[(
                "/entry/2/resource/extension",
                Value::Null, // replaced below with raw text
            )])?,
        ),
        Case::message(
            "a million numbers as entries (under the limit)",
            bundle_with_entries(&format!("[{}0]", "0,".repeat(999_999))),
        ),
        Case::message(
            "a million empty objects as entries (under the limit)",
            bundle_with_entries(&format!("[{}{{}}]", "{},".repeat(999_999))),
        ),
        Case::message(
            "a million entries without a resource (under the limit)",
            bundle_with_entries(&format!("[{}{{\"a\":0}}]", "{\"a\":0},".repeat(400_000))),
        ),
        Case::message(
            "a million strings (over the limit)",
            bundle_with_entries(&format!("[{}\"x\"]", "\"xxxxxxx\",".repeat(999_999))),
        ),
        Case::message(
            "a 3 MiB string as resourceType",
            format!(r#"{{"resourceType":"{}"}}"#, "A".repeat(3 << 20)),
        ),
        Case::message(
            "a 3 MiB NHS number",
            message_with(&[(
                "/entry/2/resource/identifier/0/value",
                json!("9".repeat(3 << 20)),
            )])?,
        ),
        Case::message(
            "a 3 MiB gender code",
            message_with(&[("/entry/2/resource/gender", json!("f".repeat(3 << 20)))])?,
        ),
        Case::message(
            "a 3 MiB message event code",
            message_with(&[(
                "/entry/0/resource/eventCoding/code",
                json!("e".repeat(3 << 20)),
            )])?,
        ),
        Case::message(
            "duplicate resourceType",
            r#"{"resourceType":"Bundle","type":"message","resourceType":"Patient"}"#,
        ),
        Case::message(
            "duplicate key inside the Patient",
            String::from_utf8(valid.clone())?.replacen(
                r#""gender":"female""#,
                r#""gender":"female","gender":"male""#,
                1,
            ),
        ),
        Case::message(
            "duplicate NHS number value",
            String::from_utf8(valid.clone())?.replacen(
                r#""value":"9434765919""#,
                r#""value":"9434765919","value":"4010232137""#,
                1,
            ),
        ),
        Case::message("invalid UTF-8", [&valid[..40], b"\xff\xfe\xc0", &valid[40..]].concat()),
        Case::message("UTF-16 body", {
            let text = String::from_utf8(valid.clone())?;
            text.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>()
        }),
        Case::message("raw NUL byte", [&valid[..40], b"\0", &valid[40..]].concat()),
        Case::message(
            "escaped NUL in resourceType",
            r#"{"resourceType":"Bundle\u0000","type":"message"}"#,
        ),
        Case::message(
            "escaped NUL in the ServiceRequest identifier",
            message_with(&[(
                "/entry/1/resource/identifier/0/value",
                json!(format!("REF\u{0}{}", Uuid::new_v4())),
            )])?,
        ),
        Case::message(
            "control character in the family name",
            message_with(&[("/entry/2/resource/name/0/family", json!("Smith\u{1b}[2J"))])?,
        ),
        Case::message("unknown resourceType", r#"{"resourceType":"Foo","type":"message"}"#),
        Case::message(
            "unknown resourceType in an entry",
            message_with(&[(
                "/entry/5/resource",
                json!({"resourceType": "Spaceship", "id": "x"}),
            )])?,
        ),
        Case::message(
            "Patient instead of Bundle",
            r#"{"resourceType":"Patient","id":"x"}"#,
        ),
        Case::message("Bundle of 10,000 entries", {
            let mut bundle = new_referral_message()?;
            let entries = bundle["entry"].as_array_mut().ok_or("no entries")?;
            for i in 0..10_000 {
                entries.push(json!({
                    "fullUrl": format!("urn:uuid:{}", Uuid::new_v4()),
                    "resource": {"resourceType": "Basic", "id": format!("b{i}"),
                                 "code": {"text": "x"}}
                }));
            }
            serde_json::to_vec(&bundle)?
        }),
        Case::message(
            "10,000 contained resources",
            message_with(&[(
                "/entry/1/resource/contained",
                Value::Array(
                    (0..10_000)
                        .map(|i| json!({"resourceType": "Basic", "id": format!("c{i}"), "code": {"text": "x"}}))
                        .collect(),
                ),
            )])?,
        ),
        Case::message(
            "10,000 issues: one per bad entry",
            bundle_with_entries(&format!("[{}{{\"resource\":1}}]", "{\"resource\":1},".repeat(9_999))),
        ),
        Case::message(
            "SQL in the NHS number",
            message_with(&[(
                "/entry/2/resource/identifier/0/value",
                json!("1'; DROP TABLE events; --"),
            )])?,
        ),
        Case::message(
            "script in the gender code",
            message_with(&[(
                "/entry/2/resource/gender",
                json!("<script>alert(1)</script>"),
            )])?,
        ),
        Case::message(
            "path traversal as the Patient id",
            message_with(&[("/entry/2/resource/id", json!("../../etc/passwd"))])?,
        ),
        Case::message(
            "path traversal as the subject reference",
            message_with(&[(
                "/entry/1/resource/subject/reference",
                json!("../../etc/passwd"),
            )])?,
        ),
        Case::message(
            "SQL as the message event",
            message_with(&[(
                "/entry/0/resource/eventCoding/code",
                json!("x' OR '1'='1"),
            )])?,
        ),
        Case::post(
            "ServiceRequest create: truncated",
            "ServiceRequest",
            r#"{"resourceType":"ServiceRequest","#,
        ),
        Case::post(
            "ServiceRequest create: 10,000 deep",
            "ServiceRequest",
            format!(
                r#"{{"resourceType":"ServiceRequest","status":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
        Case::post(
            "ServiceRequest create: a Bundle",
            "ServiceRequest",
            valid.clone(),
        ),
        Case::post(
            "QuestionnaireResponse: wrong types",
            "QuestionnaireResponse",
            r#"{"resourceType":"QuestionnaireResponse","status":1,"item":{"linkId":[]}}"#,
        ),
        Case::post(
            "QuestionnaireResponse: huge integers",
            "QuestionnaireResponse",
            json!({
                "resourceType": "QuestionnaireResponse",
                "status": "completed",
                "questionnaire": "https://fhir.mskflow.org/Questionnaire/msk-hq",
                "basedOn": [{"reference": format!("ServiceRequest/{}", Uuid::new_v4())}],
                "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint", "code": "first-contact"}]},
                "item": [{"linkId": "1", "answer": [{"valueInteger": 1e300}]},
                         {"linkId": "2", "answer": [{"valueCoding": {"code": "99999999999999999999"}}]}]
            })
            .to_string(),
        ),
        Case::post(
            "QuestionnaireResponse: 10,000 items for an unknown referral",
            "QuestionnaireResponse",
            json!({
                "resourceType": "QuestionnaireResponse",
                "status": "completed",
                "questionnaire": "https://fhir.mskflow.org/Questionnaire/../../etc/passwd",
                "basedOn": [{"reference": "ServiceRequest/../../etc/passwd"}],
                "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint", "code": "first-contact"}]},
                "item": (0..10_000).map(|i| json!({"linkId": i.to_string(), "answer": [{"valueInteger": i}]})).collect::<Vec<_>>()
            })
            .to_string(),
        ),
        // Content types.
        Case::message("text/plain", valid.clone()).header("content-type", Some(b"text/plain")),
        Case::message("XML", b"<Bundle xmlns=\"http://hl7.org/fhir\"/>".to_vec())
            .header("content-type", Some(b"application/fhir+xml")),
        Case::message("form", b"a=1".to_vec())
            .header("content-type", Some(b"application/x-www-form-urlencoded")),
        Case::message("no content type", valid.clone()).header("content-type", None),
        Case::message("content type with a NUL-free odd parameter", valid[..10].to_vec())
            .header("content-type", Some(b"application/fhir+json; charset=ebcdic; q=\"\"")),
        Case::message("multipart", b"--x\r\n\r\n--x--".to_vec())
            .header("content-type", Some(b"multipart/form-data; boundary=x")),
        Case::message("gzip the server cannot read", b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec())
            .header("content-encoding", Some(b"gzip")),
        // Headers.
        Case::message("no request id", valid.clone()).header("x-request-id", None),
        Case::message("request id not a UUID", valid.clone())
            .header("x-request-id", Some(b"../../etc/passwd")),
        Case::message("request id with SQL", valid.clone())
            .header("x-request-id", Some(b"1'; DROP TABLE events; --")),
        Case::message("request id with obs-text bytes", valid.clone())
            .header("x-request-id", Some(b"\xff\xfe\xfd")),
        Case::message("request id of 16 KiB", valid.clone())
            .header("x-request-id", Some("a".repeat(16 * 1024).as_bytes())),
        Case::message("correlation id with a script", valid.clone())
            .header("x-correlation-id", Some(b"<script>alert(1)</script>")),
        Case::message("Accept XML only", valid.clone())
            .header("accept", Some(b"application/fhir+xml")),
        // Reads with hostile ids and queries.
        Case::get("read: path traversal", "ServiceRequest/..%2F..%2Fetc%2Fpasswd"),
        Case::get("read: encoded NUL", "Task/%00"),
        Case::get("read: SQL", "Task/1'%20OR%20'1'='1"),
        Case::get("read: 8 KiB id", &format!("Task/{}", "x".repeat(8 * 1024))),
        Case::get("search: script", "Task?identifier=%3Cscript%3Ealert(1)%3C/script%3E&x=1"),
        Case::get("search: unknown parameter", "ServiceRequest?name='%20OR%201=1--"),
        Case::get("search: bad _count", "Task?_count=-1"),
        Case::get("search: huge _count", "Task?_count=99999999999999999999999"),
        Case::get("_format XML", "metadata?_format=xml"),
        Case::get("unknown endpoint", "../../../etc/passwd"),
        Case::get("vread: traversal", "Task/..%2F..%2F/_history/1"),
    ];
    // The 10,000-deep extension chain, written as text (serde_json's own
    // writer would recurse as deep).
    if let Some(c) = cases
        .iter_mut()
        .find(|c| c.name == "nested extensions 10,000 deep in a Patient")
    {
        let text = String::from_utf8(std::mem::take(&mut c.body))?;
        let chain = format!(
            "{}{{\"url\":\"https://example.org/leaf\",\"valueBoolean\":true}}{}",
            r#"[{"url":"https://example.org/x","extension":"#.repeat(10_000),
            "}]".repeat(10_000)
        );
        c.body = text
            .replacen("\"extension\":null", &format!("\"extension\":{chain}"), 1)
            .into_bytes();
    }
    cases.extend(wrong_types()?);
    Ok(cases)
}

/// Send one case; return status, content type and body.
async fn send(app: &App, case: &Case) -> TestResult<(u16, String, Vec<u8>)> {
    let mut req = client()
        .request(case.method.clone(), format!("{}/{}", app.base, case.path))
        .timeout(Duration::from_secs(20));
    for (name, value) in &case.headers {
        req = req.header(
            name.as_str(),
            reqwest::header::HeaderValue::from_bytes(value)?,
        );
    }
    if case.method == reqwest::Method::POST {
        req = req.body(case.body.clone());
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, content_type, res.bytes().await?.to_vec()))
}

/// A 4xx with an OperationOutcome that has at least one issue.
fn assert_outcome(name: &str, status: u16, content_type: &str, body: &[u8]) -> TestResult {
    assert!(
        (400..500).contains(&status),
        "{name}: expected a 4xx, got {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(400)])
    );
    assert!(
        content_type.starts_with("application/fhir+json"),
        "{name}: content type {content_type}"
    );
    let outcome: Value =
        serde_json::from_slice(body).map_err(|e| format!("{name}: body is not JSON ({e})"))?;
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{name}");
    let issues = outcome["issue"].as_array().map_or(0, Vec::len);
    assert!(issues >= 1, "{name}: no issue in {outcome}");
    assert!(
        body.len() < 256 * 1024,
        "{name}: an OperationOutcome of {} bytes ({issues} issues)",
        body.len()
    );
    Ok(())
}

/// What came back on a raw connection.
#[derive(Debug)]
struct Raw {
    /// Status of the first response, if one came.
    status: Option<u16>,
    /// Everything received.
    text: String,
    /// The server closed the connection (EOF or reset) before `wait`.
    closed: bool,
    /// How long until the server closed or `wait` ran out.
    took: Duration,
}

/// Write `chunks` on a raw connection (`gap` apart), then read until the
/// server closes it or `wait` runs out. Write errors (the server closed
/// early) end the writing.
fn raw_exchange(
    addr: SocketAddr,
    chunks: &[Vec<u8>],
    gap: Duration,
    wait: Duration,
) -> TestResult<Raw> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut received = Vec::new();
    let mut closed = false;
    let mut buf = [0_u8; 16 * 1024];
    let mut read_some = |stream: &mut TcpStream, received: &mut Vec<u8>| -> bool {
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    };
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            std::thread::sleep(gap);
            if read_some(&mut stream, &mut received) {
                closed = true;
                break;
            }
        }
        if stream.write_all(chunk).is_err() {
            break;
        }
        if started.elapsed() > wait {
            break;
        }
    }
    while !closed && started.elapsed() < wait {
        closed = read_some(&mut stream, &mut received);
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    Ok(Raw {
        status,
        text,
        closed,
        took: started.elapsed(),
    })
}

fn head(path: &str, extra: &str, body_len: usize) -> Vec<u8> {
    format!(
        "POST /fhir/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\n\
         Authorization: Bearer {}\r\nX-Request-Id: {}\r\nX-Correlation-Id: {}\r\n\
         Content-Length: {body_len}\r\n{extra}\r\n",
        test_token(),
        Uuid::new_v4(),
        Uuid::new_v4()
    )
    .into_bytes()
}

/// The response body after the head, when the head said it is FHIR JSON.
fn raw_outcome(name: &str, raw: &Raw) -> TestResult {
    let (head, body) = raw
        .text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{name}: no response head in {:?}", raw.text))?;
    let status = raw.status.ok_or_else(|| format!("{name}: no status"))?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    // Only the first response counts; a second one may follow.
    let end = body.find("HTTP/1.1 ").unwrap_or(body.len());
    assert_outcome(name, status, &content_type, &body.as_bytes()[..end])
}

async fn live(app: &App) -> TestResult<u16> {
    Ok(client()
        .get(app.base.replace("/fhir", "/health/live"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_is_refused_and_the_server_stays_healthy() -> TestResult {
    let started = Instant::now();
    let app = spawn_app_with(|c| c.gateway.body_limit = BODY_LIMIT).await?;
    let addr = app.running.as_ref().ok_or("not running")?.gateway_addr;

    // Something recorded before the corpus, to prove it is left alone.
    let first = app.post_message(&new_referral_message()?).await?;
    assert_eq!(first.status().as_u16(), 200, "{}", first.text().await?);
    let task: Value = first.json().await?;
    let first_id = entries_of(&task, "Task")[0]["id"]
        .as_str()
        .ok_or("no Task id")?
        .to_owned();
    task_when(&app, &first_id, "awaiting assessment", |t| {
        business(t) == "awaiting-assessment"
    })
    .await?;
    let before = app.all_events().await?;
    let rss_before = proc_status_kb("VmRSS:")?;

    // Slow clients run alongside the rest (each takes seconds of waiting).
    let slow_body = tokio::task::spawn_blocking(move || {
        let mut chunks = vec![head("$process-message", "", 1000)];
        chunks.extend((0..40).map(|_| b" ".to_vec()));
        raw_exchange(
            addr,
            &chunks,
            Duration::from_secs(1),
            Duration::from_secs(25),
        )
    });
    let slow_head = tokio::task::spawn_blocking(move || {
        let request = head("$process-message", "", 2);
        let chunks: Vec<Vec<u8>> = request.iter().map(|b| vec![*b]).collect();
        raw_exchange(
            addr,
            &chunks,
            Duration::from_secs(1),
            Duration::from_secs(25),
        )
    });
    let lying_short = tokio::task::spawn_blocking(move || {
        // Says 100 bytes, sends 20 and waits.
        raw_exchange(
            addr,
            &[[
                head("$process-message", "", 100),
                b"{\"resourceType\":\"Bu".to_vec(),
            ]
            .concat()],
            Duration::ZERO,
            Duration::from_secs(25),
        )
    });

    // Everything that reaches the application.
    let cases = corpus()?;
    let count = cases.len();
    let mut failures = Vec::new();
    // Twice: the first pass may leave the allocator holding freed memory;
    // a second pass that grows much further would be a leak.
    let mut rss_first_pass = 0;
    for (pass, case) in cases.iter().chain(&cases).enumerate() {
        if pass == count {
            rss_first_pass = proc_status_kb("VmRSS:")?;
        }
        let (status, content_type, body) = send(&app, case).await?;
        let first_code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|o| o["issue"][0]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if pass < count {
            println!("{status} {first_code:<14} {}", case.name);
        }
        let checked = std::panic::catch_unwind(|| {
            assert_outcome(&case.name, status, &content_type, &body).map_err(|e| e.to_string())
        });
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(panic) => failures.push(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| case.name.clone()),
            ),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Framing the HTTP layer refuses, and lies it must survive.
    let valid = serde_json::to_vec(&new_referral_message()?)?;
    let framing: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "Content-Length longer than the limit",
            head("$process-message", "", BODY_LIMIT * 1024),
            true,
        ),
        (
            "Content-Length shorter than the body",
            [head("$process-message", "", 10), valid.clone()].concat(),
            true,
        ),
        (
            "Content-Length not a number",
            b"POST /fhir/$process-message HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            false,
        ),
        (
            "Content-Length negative",
            b"POST /fhir/$process-message HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            false,
        ),
        (
            "Content-Length past u64",
            b"POST /fhir/$process-message HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n".to_vec(),
            false,
        ),
        (
            "two different Content-Lengths",
            [head("$process-message", "Content-Length: 5\r\n", 2), b"{}".to_vec()].concat(),
            false,
        ),
        (
            "Content-Length and chunked",
            [head("$process-message", "Transfer-Encoding: chunked\r\n", 2), b"0\r\n\r\n".to_vec()].concat(),
            false,
        ),
        (
            "bare CR in a header (CRLF injection)",
            [head("$process-message", "X-Note: a\rSet-Cookie: x=1\r\n", 2), b"{}".to_vec()].concat(),
            false,
        ),
        (
            "header folding (obs-fold)",
            [head("$process-message", "X-Note: a\r\n Set-Cookie: x=1\r\n", 2), b"{}".to_vec()].concat(),
            false,
        ),
        (
            "a 200 KiB header",
            head("$process-message", &format!("X-Big: {}\r\n", "a".repeat(200 * 1024)), 0),
            false,
        ),
        (
            "200 headers",
            head("$process-message", &"X-Many: 1\r\n".repeat(200), 0),
            false,
        ),
        (
            "NUL in the request line",
            b"GET /fhir/Task/\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
            false,
        ),
    ];
    for (name, bytes, reaches_app) in &framing {
        let raw = tokio::task::spawn_blocking({
            let bytes = bytes.clone();
            move || raw_exchange(addr, &[bytes], Duration::ZERO, Duration::from_secs(5))
        })
        .await??;
        let status = raw
            .status
            .ok_or_else(|| format!("{name}: no answer: {:?}", raw.text))?;
        assert!(
            (400..500).contains(&status),
            "{name}: expected a 4xx, got {}",
            raw.text
        );
        assert!(!raw.text.contains("\r\nSet-Cookie"), "{name}: {}", raw.text);
        if *reaches_app {
            raw_outcome(name, &raw)?;
        } else {
            assert!(raw.closed, "{name}: the connection stayed open");
        }
    }

    // The slow clients.
    let slow = slow_body.await??;
    assert_eq!(slow.status, Some(408), "slow body: {}", slow.text);
    raw_outcome("slow body", &slow)?;
    assert!(slow.closed, "slow body: connection left open");
    assert!(
        slow.took < Duration::from_secs(20),
        "slow body: {:?}",
        slow.took
    );
    let slow = slow_head.await??;
    assert_eq!(slow.status, Some(408), "slow head: {}", slow.text);
    assert!(slow.closed, "slow head: connection left open");
    assert!(
        slow.took < Duration::from_secs(10),
        "slow head: {:?}",
        slow.took
    );
    let short = lying_short.await??;
    assert_eq!(short.status, Some(408), "short body: {}", short.text);
    raw_outcome("short body", &short)?;
    assert!(short.closed, "short body: connection left open");

    // Still healthy, with bounded memory.
    assert_eq!(live(&app).await?, 200);
    let rss_after = proc_status_kb("VmRSS:")?;
    let peak = proc_status_kb("VmHWM:")?;
    println!(
        "{count} application cases (twice) and {} framing cases; VmRSS {rss_before} kB -> \
         {rss_first_pass} kB after one pass -> {rss_after} kB, peak {peak} kB",
        framing.len()
    );
    assert!(
        rss_after.saturating_sub(rss_first_pass) < MAX_RSS_GROWTH_KB / 4,
        "memory kept growing: {rss_first_pass} kB after one pass, {rss_after} kB after two"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < MAX_RSS_GROWTH_KB,
        "memory grew from {rss_before} kB to {rss_after} kB"
    );

    // A valid referral is still accepted, and injection-looking free text is
    // stored as text.
    let mut last = new_referral_message()?;
    with_resource(&mut last, "Patient", |p| {
        p["name"][0]["family"] = json!("O'Brien'); DROP TABLE events; --");
        p["name"][0]["given"] = json!(["<script>alert(1)</script>"]);
    })?;
    let res = app.post_message(&last).await?;
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await?);
    let answer: Value = res.json().await?;
    let last_id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no Task id")?
        .to_owned();

    // Nothing recorded before changed; intake recorded only the last
    // referral.
    let after = app.all_events().await?;
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "events recorded before the corpus changed"
    );
    let added: Vec<_> = after[before.len()..]
        .iter()
        .filter(|e| e.stream_id.starts_with("referral-"))
        .collect();
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(
        added
            .iter()
            .all(|e| e.stream_id == format!("referral-{last_id}")),
        "{added:?}"
    );
    let received = added
        .iter()
        .find(|e| e.event_type == "ReferralReceived")
        .ok_or("no ReferralReceived")?;
    let stored = received.payload.to_string();
    assert!(
        stored.contains("DROP TABLE events"),
        "free text not kept verbatim"
    );
    let (status, search) = app.get_json("ServiceRequest?_count=100").await?;
    assert_eq!(status, 200);
    assert_eq!(search["total"], 2, "{search}");
    assert_eq!(live(&app).await?, 200);

    // The fuzz targets' envelope seeds are these real events, one per type:
    // MSKFLOW_ENVELOPE_SEEDS=fuzz/corpus/envelope_decode cargo test ...
    if let Some(dir) = std::env::var_os("MSKFLOW_ENVELOPE_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        for e in app.all_events().await? {
            let path = dir.join(format!("{}.json", e.event_type));
            if !path.exists() {
                std::fs::write(path, serde_json::to_vec_pretty(&e)?)?;
            }
        }
    }

    let took = started.elapsed();
    println!("hostile input run took {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    Ok(())
}
