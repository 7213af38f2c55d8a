//! The audit trail: every read and write of patient data through the FHIR
//! API becomes an `AuditRecorded` event on the day's `audit-YYYY-MM-DD`
//! stream, and `GET /fhir/AuditEvent` ([`crate::fhir::audit_event`]) serves them as
//! FHIR `AuditEvent`s ([`render`]).
//!
//! Requests hand their record to a bounded channel; one background task
//! takes whatever has queued up and appends it (`ExpectedVersion::Any`, one
//! event per record so each envelope keeps its request's correlation id and
//! trace context; the appends of a batch run concurrently and the store
//! commits them together), so the request path does not wait for a disk
//! flush. When the channel is full, requests wait for room: an access is
//! never dropped from the trail to keep latency down. At shutdown the task
//! drains the channel before the gateway stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody as _};
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::web;
use chrono::Utc;
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata};
use mskflow_events::audit::{
    AUDIT_STREAM_PREFIX, AuditAction, AuditAgent, AuditEvent, AuditRecorded, audit_stream,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::nhsd::NhsdHeaders;
use crate::auth::token::Principal;

/// Resource types whose reads are audited (writes always are).
pub const PATIENT_DATA: &[&str] = &[
    "ServiceRequest",
    "Task",
    "Patient",
    "Appointment",
    "QuestionnaireResponse",
    "Encounter",
    "$process-message",
];

/// Records queued before requests wait for the appender.
pub const CHANNEL_CAPACITY: usize = 4096;
/// Most records in one append.
const BATCH: usize = 512;
/// Resource ids kept per record (a search page may return more).
const MAX_IDS: usize = 100;

/// The audit record of a request, filled in as it is handled.
#[derive(Debug, Clone)]
pub struct Pending {
    method: String,
    path: String,
    resource_type: String,
    interaction: &'static str,
    action: AuditAction,
    ids: Vec<String>,
    query: Option<String>,
    request_id: Option<String>,
    correlation_id: Option<String>,
    agent: AuditAgent,
    writes: bool,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// Replace NHS numbers in a query string with `***`.
pub fn mask_query(query: &str) -> String {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map(web::Query::into_inner)
        .unwrap_or_default();
    if pairs.is_empty() && !query.is_empty() {
        // Not a query we can read: keep nothing of it.
        return "***".to_owned();
    }
    pairs
        .into_iter()
        .map(|(k, v)| {
            let looks_like_nhs = |s: &str| {
                let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                digits.len() == 10 && digits.chars().all(|c| c.is_ascii_digit())
            };
            let v = if k.contains("identifier") {
                match v.rsplit_once('|') {
                    Some((system, _)) => format!("{system}|***"),
                    None => "***".to_owned(),
                }
            } else if v.split(',').any(looks_like_nhs) {
                "***".to_owned()
            } else {
                v
            };
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Pending {
    /// Describe the request (before it is handled).
    pub fn of(req: &actix_web::dev::ServiceRequest) -> Self {
        let method = req.method().as_str().to_owned();
        let path = req.path().to_owned();
        let segments: Vec<&str> = path
            .strip_prefix("/fhir")
            .unwrap_or(&path)
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let resource_type = segments.first().copied().unwrap_or_default().to_owned();
        let (interaction, action) = if resource_type.starts_with('$') {
            ("operation", AuditAction::E)
        } else {
            match (method.as_str(), segments.len()) {
                ("GET" | "HEAD", 0 | 1) => ("search-type", AuditAction::R),
                ("GET" | "HEAD", 2) => ("read", AuditAction::R),
                ("GET" | "HEAD", 3) => ("history-instance", AuditAction::R),
                ("GET" | "HEAD", _) => ("vread", AuditAction::R),
                ("POST", _) => ("create", AuditAction::C),
                ("PUT" | "PATCH", _) => ("update", AuditAction::U),
                ("DELETE", _) => ("delete", AuditAction::D),
                _ => ("operation", AuditAction::E),
            }
        };
        let ids = segments
            .get(1)
            .map(|id| vec![format!("{resource_type}/{id}")])
            .unwrap_or_default();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(200).collect::<String>())
        };
        let (traceparent, tracestate) = mskflow_telemetry::current_trace_context();
        let query = Some(req.query_string())
            .filter(|q| !q.is_empty())
            .map(mask_query);
        Self {
            writes: !matches!(method.as_str(), "GET" | "HEAD"),
            method,
            path,
            resource_type,
            interaction,
            action,
            ids,
            query,
            request_id: header(crate::state::X_REQUEST_ID),
            correlation_id: header(crate::state::X_CORRELATION_ID),
            agent: AuditAgent {
                requesting_software: header(crate::auth::nhsd::NHSD_REQUESTING_SOFTWARE)
                    .map(|_| "(undecodable)".to_owned()),
                ..Default::default()
            },
            traceparent,
            tracestate,
        }
    }

    pub fn nhsd(&mut self, h: &NhsdHeaders) {
        self.agent
            .requesting_software
            .clone_from(&h.requesting_software);
        self.agent
            .end_user_organisation
            .clone_from(&h.end_user_organisation);
        self.agent
            .target_identifier
            .clone_from(&h.target_identifier);
    }

    pub fn principal(&mut self, p: &Principal) {
        self.agent.client_id = Some(p.client_id.clone());
        self.agent.ods_code.clone_from(&p.ods);
        self.agent.provider = p.provider;
    }

    /// Reads of patient data, and every write.
    pub fn is_patient_data(&self) -> bool {
        self.writes || PATIENT_DATA.contains(&self.resource_type.as_str())
    }
}

/// Hands audit records to the background appender.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Queued>,
}

/// A record waiting for the appender, with its request's trace context.
#[derive(Debug)]
struct Queued {
    record: AuditRecorded,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

fn reference_of_location(location: &str) -> Option<String> {
    let after = location.split("/fhir/").nth(1).unwrap_or(location);
    let mut parts = after.split('/');
    let t = parts.next()?;
    let id = parts.next()?;
    (!t.is_empty() && !id.is_empty()).then(|| format!("{t}/{id}"))
}

impl Recorder {
    /// Start the appender on `log`. Stop it with [`Appender::stop`] once no
    /// request can arrive any more: it drains the queue first.
    pub fn start(log: Arc<dyn EventLog>) -> (Self, Appender) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CAPACITY);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(append_loop(log, rx, stopped));
        (Self { tx }, Appender { handle, stop })
    }

    /// Complete the record with the answer and queue it; returns the answer.
    pub async fn finish(
        &self,
        mut pending: Pending,
        res: ServiceResponse<BoxBody>,
    ) -> ServiceResponse<BoxBody> {
        let status = res.status();
        if let Some(reference) = res
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(reference_of_location)
            && !pending.ids.contains(&reference)
        {
            pending.ids.push(reference);
        }
        let res =
            if status.is_success() && matches!(pending.interaction, "search-type" | "operation") {
                // The ids of what the answer holds (a searchset or a response
                // message): the answer is already a string, so buffering it costs
                // one copy.
                let (req, res) = res.into_parts();
                let (head, body) = res.into_parts();
                match body.try_into_bytes() {
                    Ok(bytes) => {
                        collect_ids(&bytes, &mut pending.ids);
                        ServiceResponse::new(req, head.set_body(BoxBody::new(bytes)))
                    }
                    Err(body) => ServiceResponse::new(req, head.set_body(body)),
                }
            } else {
                res
            };
        let record = AuditRecorded {
            audit_id: Uuid::new_v4(),
            recorded: Utc::now(),
            agent: pending.agent,
            interaction: pending.interaction.to_owned(),
            action: pending.action,
            method: pending.method,
            path: pending.path,
            resource_type: pending.resource_type,
            resource_ids: pending.ids,
            query: pending.query,
            http_status: status.as_u16(),
            request_id: pending.request_id,
            correlation_id: pending.correlation_id,
        };
        // Waits when the queue is full: never drop an access from the trail.
        let queued = Queued {
            record,
            traceparent: pending.traceparent,
            tracestate: pending.tracestate,
        };
        if self.tx.send(queued).await.is_err() {
            tracing::error!("audit appender has stopped: an access was not recorded");
            metrics::counter!("mskflow_audit_lost_total").increment(1);
        }
        res
    }
}

/// The background appender's handle.
#[derive(Debug)]
pub struct Appender {
    handle: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Appender {
    /// Append everything queued, then stop (waits at most `limit`).
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(limit, self.handle).await.is_err() {
            tracing::error!("audit appender did not drain in time");
        }
    }
}

fn collect_ids(bytes: &[u8], ids: &mut Vec<String>) {
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    for entry in body["entry"].as_array().into_iter().flatten() {
        if ids.len() >= MAX_IDS {
            return;
        }
        let r = &entry["resource"];
        if let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str())
            && PATIENT_DATA.contains(&t)
        {
            let reference = format!("{t}/{id}");
            if !ids.contains(&reference) {
                ids.push(reference);
            }
        }
    }
}

async fn append_loop(
    log: Arc<dyn EventLog>,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        let received = if stopping {
            rx.recv_many(&mut batch, BATCH).await
        } else {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = &mut stop => {
                    // No new records; what is queued is still appended.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if received == 0 {
            break;
        }
        let mut by_day: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
        for q in batch.drain(..) {
            by_day
                .entry(audit_stream(q.record.recorded.date_naive()))
                .or_default()
                .push(q);
        }
        for (stream, records) in by_day {
            append(&log, &stream, records).await;
        }
    }
    tracing::debug!("audit appender drained");
}

/// Append each record as its own event, carrying its request's correlation
/// id and trace context in the envelope. The appends of one batch run
/// concurrently, so the store commits them together (the embedded store's
/// group commit: one flush for the batch).
async fn append(log: &Arc<dyn EventLog>, stream: &str, records: Vec<Queued>) {
    futures::future::join_all(records.into_iter().map(|q| append_one(log, stream, q))).await;
}

async fn append_one(log: &Arc<dyn EventLog>, stream: &str, queued: Queued) {
    let Queued {
        record,
        traceparent,
        tracestate,
    } = queued;
    let id = record.audit_id;
    let correlation_id = record
        .correlation_id
        .as_deref()
        .and_then(|c| Uuid::parse_str(c.trim()).ok())
        .unwrap_or(id);
    let at = record.recorded;
    let mut event = match mskflow_eventlog::new_event(
        &AuditEvent::AuditRecorded(record),
        mskflow_events::SCHEMA_VERSION,
        at,
    ) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(
                reason = %mskflow_eventlog::json_error_reason(&e),
                "audit record does not serialise"
            );
            metrics::counter!("mskflow_audit_lost_total").increment(1);
            return;
        }
    };
    event.event_id = id;
    let metadata = Metadata {
        causation_id: None,
        correlation_id,
        traceparent,
        tracestate,
    };
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=6 {
        match log
            .append(stream, ExpectedVersion::Any, vec![event.clone()], &metadata)
            .await
        {
            Ok(_) => {
                metrics::counter!("mskflow_audit_recorded_total").increment(1);
                return;
            }
            Err(e) if attempt < 6 => {
                tracing::warn!(error = %e, attempt, stream, "audit append failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, stream, audit_id = %id, "audit record could not be appended");
                metrics::counter!("mskflow_audit_lost_total").increment(1);
            }
        }
    }
}

/// Whether a stream is an audit stream.
pub fn is_audit_stream(stream_id: &str) -> bool {
    stream_id.starts_with(AUDIT_STREAM_PREFIX)
}

/// A record as a FHIR R4 `AuditEvent`.
pub fn render(r: &AuditRecorded) -> Value {
    let outcome = match r.http_status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut agents = vec![json!({
        "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP",
            "display": "information recipient"
        }]},
        "who": {
            "identifier": {
                "system": "https://fhir.mskflow.org/Id/oauth-client",
                "value": r.agent.client_id.clone().unwrap_or_else(|| "anonymous".to_owned())
            }
        },
        "requestor": true,
    })];
    if let Some(ods) = &r.agent.ods_code {
        agents[0]["who"]["display"] = json!(format!("client of organisation {ods}"));
        agents.push(json!({
            "type": {"text": "requesting organisation"},
            "who": {"identifier": {"system": mskflow_events::ODS_SYSTEM, "value": ods}},
            "requestor": false,
        }));
    }
    if let Some(org) = &r.agent.end_user_organisation {
        agents.push(json!({
            "type": {"text": "NHSD-End-User-Organisation"},
            "who": {"identifier": {"system": org.system, "value": org.value}},
            "requestor": false,
        }));
    }
    if let Some(software) = &r.agent.requesting_software {
        agents.push(json!({
            "type": {"text": "NHSD-Requesting-Software"},
            "who": {"display": software},
            "requestor": false,
        }));
    }
    let mut entities: Vec<Value> = r
        .resource_ids
        .iter()
        .map(|reference| {
            json!({
                "what": {"reference": reference},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object"
                }
            })
        })
        .collect();
    if let Some(q) = &r.query {
        use base64::Engine as _;
        entities.push(json!({
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object"
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "24",
                "display": "Query"
            },
            "description": format!("{} {}", r.resource_type, r.interaction),
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes()),
        }));
    }
    let mut detail = vec![json!({"type": "http-status", "valueString": r.http_status.to_string()})];
    if let Some(t) = &r.agent.target_identifier {
        detail.push(json!({"type": "NHSD-Target-Identifier", "valueString": format!("{}|{}", t.system.as_deref().unwrap_or_default(), t.value)}));
    }
    for (name, value) in [
        ("X-Request-Id", &r.request_id),
        ("X-Correlation-Id", &r.correlation_id),
    ] {
        if let Some(v) = value {
            detail.push(json!({"type": name, "valueString": v}));
        }
    }
    if let Some(first) = entities.first_mut() {
        first["detail"] = json!(detail);
    } else {
        entities.push(json!({
            "description": format!("{} {}", r.method, r.path),
            "detail": detail,
        }));
    }
    json!({
        "resourceType": "AuditEvent",
        "id": r.audit_id.to_string(),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation"
        },
        "subtype": [{
            "system": "http://hl7.org/fhir/restful-interaction",
            "code": r.interaction,
        }],
        "action": r.action.code(),
        "recorded": r.recorded.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "outcome": outcome,
        "outcomeDesc": format!("HTTP {}", r.http_status),
        "agent": agents,
        "source": {
            "observer": {"display": "mskflow FHIR gateway"},
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "3",
                "display": "Web Server"
            }]
        },
        "entity": entities,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_masked_in_queries() {
        let q = mask_query(
            "patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9434765919&status=accepted",
        );
        assert_eq!(
            q,
            "patient:identifier=https://fhir.nhs.uk/Id/nhs-number|***&status=accepted"
        );
        assert_eq!(
            mask_query("subject:identifier=9434765919"),
            "subject:identifier=***"
        );
        assert_eq!(mask_query("_id=943 476 5919"), "_id=***");
        assert_eq!(mask_query("_count=10"), "_count=10");
    }

    #[test]
    fn renders_an_r4_audit_event() {
        let r = AuditRecorded {
            audit_id: Uuid::new_v4(),
            recorded: Utc::now(),
            agent: AuditAgent {
                client_id: Some("gp".to_owned()),
                ods_code: Some("A81001".to_owned()),
                ..Default::default()
            },
            interaction: "read".to_owned(),
            action: AuditAction::R,
            method: "GET".to_owned(),
            path: "/fhir/Task/1".to_owned(),
            resource_type: "Task".to_owned(),
            resource_ids: vec!["Task/1".to_owned()],
            query: None,
            http_status: 404,
            request_id: None,
            correlation_id: None,
        };
        let v = render(&r);
        assert_eq!(v["type"]["code"], "rest");
        assert_eq!(v["subtype"][0]["code"], "read");
        assert_eq!(v["action"], "R");
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "gp");
        assert_eq!(v["entity"][0]["what"]["reference"], "Task/1");
    }
}
