//! FHIR Subscriptions, topic-based in the style of the HL7 "Subscriptions R5
//! Backport" IG for R4: one topic ([`TOPIC`], a referral's Task changed
//! status), `rest-hook` channels only, to registered referrer endpoints.
//!
//! A subscription is the events of its stream `subscription-{id}`
//! (`SubscriptionCreated`, `SubscriptionDeleted`, and the handshake's
//! outcome `SubscriptionActivated` / `SubscriptionErrored`), so it survives a
//! restart and rebuilds by replay. Each is limited to the referrals of the
//! subscribing organisation (the token's ODS code). Notifications are sent by
//! the notification worker ([`crate::notify`]) through the same outbox as
//! the referrer messages.
//!
//! A new subscription is `requested`: the worker first sends the endpoint a
//! `handshake` notification ([`handshake`]). A 2xx answer makes it `active`;
//! a failure after the retries makes it `error` (`Subscription.error` says
//! why), and an errored subscription is sent nothing more.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use mskflow_eventlog::{Envelope, ExpectedVersion, Metadata, decode, new_event};
use mskflow_events::subscription::{
    SubscriptionCreated, SubscriptionDeleted, SubscriptionEvent, SubscriptionStatusEvent, stream_id,
};
use mskflow_fhir::IssueType;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;
use crate::http::{AppState, FHIR_JSON};
use crate::views::ReferralView;

/// The one topic offered: the referral's Task changed status.
pub const TOPIC: &str = "https://fhir.mskflow.org/SubscriptionTopic/referral-status";
/// Backport extension on `Subscription.channel.payload`.
pub const PAYLOAD_CONTENT_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
/// Backport extension on `Subscription.criteria` (one filter).
pub const FILTER_CRITERIA_URL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
/// Profile of the R4 Subscription the gateway stores.
pub const SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
/// Profile of the notification `Bundle`.
pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
/// Profile of the notification's status `Parameters`.
pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// How much of the changed resource a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadContent {
    Empty,
    IdOnly,
    FullResource,
}

impl PayloadContent {
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "empty" => Some(Self::Empty),
            "id-only" => Some(Self::IdOnly),
            "full-resource" => Some(Self::FullResource),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::IdOnly => "id-only",
            Self::FullResource => "full-resource",
        }
    }
}

/// Where a subscription's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Handshake {
    /// Created; the handshake is not answered yet.
    Requested,
    /// The endpoint answered the handshake: notifications are sent.
    Active,
    /// The handshake failed: nothing is sent.
    Error,
}

/// One subscription as its events left it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubscriptionView {
    pub id: Uuid,
    /// Its stream's version (`meta.versionId`).
    pub version: u64,
    /// `false` once deleted.
    pub active: bool,
    /// The handshake's outcome (only from the subscription's own stream: the
    /// shared views leave it `requested`).
    pub handshake: Handshake,
    /// Why the handshake failed (`Subscription.error`).
    pub error: Option<String>,
    pub owner_ods: String,
    pub topic: String,
    pub endpoint: String,
    pub payload_content: PayloadContent,
    pub filter: Option<String>,
    pub reason: Option<String>,
    pub last_updated: DateTime<Utc>,
}

impl SubscriptionView {
    /// Apply one event of its stream; `None` for a stream that does not
    /// start with its creation.
    pub fn evolve(
        current: Option<Self>,
        envelope: &Envelope,
        event: &SubscriptionEvent,
    ) -> Option<Self> {
        match (current, event) {
            (None, SubscriptionEvent::SubscriptionCreated(e)) => Some(Self {
                id: e.subscription_id,
                version: envelope.sequence,
                active: true,
                handshake: Handshake::Requested,
                error: None,
                owner_ods: e.owner_ods.clone(),
                topic: e.topic.clone(),
                endpoint: e.endpoint.clone(),
                payload_content: PayloadContent::parse(&e.payload_content)
                    .unwrap_or(PayloadContent::IdOnly),
                filter: e.filter.clone(),
                reason: e.reason.clone(),
                last_updated: envelope.recorded_at,
            }),
            (Some(mut s), SubscriptionEvent::SubscriptionDeleted(_)) => {
                s.active = false;
                s.version = envelope.sequence;
                s.last_updated = envelope.recorded_at;
                Some(s)
            }
            (current, _) => current,
        }
    }

    /// Apply the outcome of its handshake. An outcome recorded after the
    /// subscription was deleted only moves its version.
    pub fn evolve_status(
        current: Option<Self>,
        envelope: &Envelope,
        event: &SubscriptionStatusEvent,
    ) -> Option<Self> {
        let mut s = current?;
        s.version = envelope.sequence;
        s.last_updated = envelope.recorded_at;
        match event {
            SubscriptionStatusEvent::SubscriptionActivated(_) => {
                s.handshake = Handshake::Active;
                s.error = None;
            }
            SubscriptionStatusEvent::SubscriptionErrored(e) => {
                s.handshake = Handshake::Error;
                s.error = Some(e.reason.clone());
            }
        }
        Some(s)
    }

    /// `Subscription.status`: `off` once deleted, else the handshake's.
    pub fn status_code(&self) -> &'static str {
        match (self.active, self.handshake) {
            (false, _) => "off",
            (true, Handshake::Requested) => "requested",
            (true, Handshake::Active) => "active",
            (true, Handshake::Error) => "error",
        }
    }

    /// Whether a change of this referral is told to this subscription: it is
    /// active and the referral is the subscribing organisation's.
    pub fn matches(&self, referral: &ReferralView) -> bool {
        if !self.active {
            return false;
        }
        let sender = referral.details.sender.ods_code.as_ref().or_else(|| {
            referral
                .details
                .requester
                .as_ref()
                .and_then(|r| r.ods_code.as_ref())
        });
        sender.is_some_and(|s| s.as_str().eq_ignore_ascii_case(&self.owner_ods))
    }
}

/// The R4 Subscription resource.
pub fn render(s: &SubscriptionView) -> Value {
    let mut resource = json!({
        "resourceType": "Subscription",
        "id": s.id.to_string(),
        "meta": {
            "versionId": s.version.to_string(),
            "lastUpdated": s.last_updated.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "profile": [SUBSCRIPTION_PROFILE],
        },
        "status": s.status_code(),
        "reason": s.reason.clone().unwrap_or_else(|| "Referral status changes".to_owned()),
        "criteria": s.topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": s.endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": s.payload_content.code()}]},
        },
    });
    if let Some(error) = &s.error {
        resource["error"] = json!(error);
    }
    if let Some(filter) = &s.filter {
        resource["_criteria"] =
            json!({"extension": [{"url": FILTER_CRITERIA_URL, "valueString": filter}]});
    }
    resource
}

/// What a `POST /Subscription` asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub endpoint: String,
    pub payload_content: PayloadContent,
    pub filter: Option<String>,
    pub reason: Option<String>,
}

fn unprocessable(code: IssueType, diagnostics: impl Into<String>, at: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, diagnostics).at(at)
}

fn extension_value<'a>(element: &'a Value, url: &str, key: &str) -> Option<&'a Value> {
    element["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
        .map(|e| &e[key])
}

/// Check a Subscription from a client against what this server offers.
///
/// Missing elements are 400 `required`; values this server does not offer
/// are 422 (`not-supported`, `value`), each naming the element.
pub fn parse(body: &[u8], owner_ods: &str, registered: &[String]) -> Result<Requested, ApiError> {
    let resource: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            IssueType::Structure,
            format!(
                "the body is not JSON: {}",
                mskflow_eventlog::json_error_reason(&e)
            ),
        )
    })?;
    if resource["resourceType"] != "Subscription" {
        return Err(ApiError::bad_request(
            IssueType::Invalid,
            "the body must be a Subscription resource",
        )
        .at("Subscription.resourceType"));
    }
    let required =
        |at: &str| ApiError::bad_request(IssueType::Required, format!("{at} is required")).at(at);
    let criteria = resource["criteria"]
        .as_str()
        .ok_or_else(|| required("Subscription.criteria"))?;
    let channel = &resource["channel"];
    let channel_type = channel["type"]
        .as_str()
        .ok_or_else(|| required("Subscription.channel.type"))?;
    if criteria != TOPIC {
        return Err(unprocessable(
            IssueType::NotSupported,
            format!("unknown subscription topic; this server offers only {TOPIC}"),
            "Subscription.criteria",
        ));
    }
    if channel_type != "rest-hook" {
        return Err(unprocessable(
            IssueType::NotSupported,
            "only the rest-hook channel is supported",
            "Subscription.channel.type",
        ));
    }
    let endpoint = channel["endpoint"]
        .as_str()
        .ok_or_else(|| required("Subscription.channel.endpoint"))?;
    if !registered.iter().any(|r| endpoint.starts_with(r.as_str())) {
        return Err(unprocessable(
            IssueType::Value,
            "the endpoint is not a registered referrer endpoint",
            "Subscription.channel.endpoint",
        ));
    }
    match channel["payload"].as_str() {
        None | Some("application/fhir+json") => {}
        Some(_) => {
            return Err(unprocessable(
                IssueType::NotSupported,
                "notifications are sent as application/fhir+json only",
                "Subscription.channel.payload",
            ));
        }
    }
    let payload_content =
        match extension_value(&channel["_payload"], PAYLOAD_CONTENT_URL, "valueCode") {
            None => PayloadContent::IdOnly,
            Some(v) => v.as_str().and_then(PayloadContent::parse).ok_or_else(|| {
                unprocessable(
                    IssueType::CodeInvalid,
                    "payload content must be empty, id-only or full-resource",
                    "Subscription.channel.payload.extension('backport-payload-content')",
                )
            })?,
        };
    let filter = match extension_value(&resource["_criteria"], FILTER_CRITERIA_URL, "valueString") {
        None => None,
        Some(v) => Some(parse_filter(v.as_str().unwrap_or_default(), owner_ods)?),
    };
    Ok(Requested {
        endpoint: endpoint.to_owned(),
        payload_content,
        filter,
        reason: resource["reason"].as_str().map(str::to_owned),
    })
}

/// The one filter supported: the subscriber's own organisation, as
/// `ServiceRequest?requester=ODS` or `Task?owner=ODS` (optionally as
/// `Organization/ODS`). Every subscription is limited to it anyway.
fn parse_filter(raw: &str, owner_ods: &str) -> Result<String, ApiError> {
    let refused = || {
        unprocessable(
            IssueType::NotSupported,
            format!(
                "the only filter supported is the subscriber's own organisation: ServiceRequest?requester={owner_ods} or Task?owner={owner_ods}"
            ),
            "Subscription.criteria.extension('backport-filter-criteria')",
        )
    };
    let value = raw
        .strip_prefix("ServiceRequest?requester=")
        .or_else(|| raw.strip_prefix("Task?owner="))
        .ok_or_else(refused)?;
    let ods = value.strip_prefix("Organization/").unwrap_or(value);
    if ods.eq_ignore_ascii_case(owner_ods) {
        Ok(raw.to_owned())
    } else {
        Err(refused())
    }
}

/// The current state of one subscription, read from its stream (read your
/// writes: not from the views, which may lag).
async fn load(state: &AppState, id: Uuid) -> Result<Option<SubscriptionView>, ApiError> {
    let events = state
        .log
        .read_stream(&stream_id(id), 1)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the subscription: {e}")))?;
    let mut current = None;
    let undecodable = |_| ApiError::internal("a subscription event does not decode");
    for envelope in &events {
        current = if SubscriptionStatusEvent::TYPES.contains(&envelope.event_type.as_str()) {
            let event = decode::<SubscriptionStatusEvent>(envelope).map_err(undecodable)?;
            SubscriptionView::evolve_status(current, envelope, &event)
        } else {
            let event = decode::<SubscriptionEvent>(envelope).map_err(undecodable)?;
            SubscriptionView::evolve(current, envelope, &event)
        };
    }
    Ok(current)
}

async fn append(
    state: &AppState,
    id: Uuid,
    expected: ExpectedVersion,
    event: &SubscriptionEvent,
    request_id: Uuid,
    correlation_id: Uuid,
) -> Result<(), ApiError> {
    let new = new_event(event, mskflow_events::SCHEMA_VERSION, Utc::now())
        .map_err(|_| ApiError::internal("cannot encode the subscription event"))?;
    let (traceparent, tracestate) = mskflow_telemetry::current_trace_context();
    let metadata = Metadata {
        causation_id: Some(request_id),
        correlation_id,
        traceparent,
        tracestate,
    };
    match state
        .log
        .append(&stream_id(id), expected, vec![new], &metadata)
        .await
    {
        Ok(_) => Ok(()),
        Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            IssueType::Conflict,
            format!("Subscription/{id} changed meanwhile; read it and try again"),
        )),
        Err(e) => Err(ApiError::unavailable(format!(
            "cannot record the subscription: {e}"
        ))),
    }
}

fn owner(req: &HttpRequest) -> Result<(String, String), ApiError> {
    let principal = crate::auth::principal(req)?;
    let ods = principal.ods.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "the access token names no organisation (claim 'ods'); it cannot hold subscriptions",
        )
    })?;
    Ok((ods, principal.client_id))
}

fn not_known(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("Subscription/{id} is not known"))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_known(raw.chars().take(64).collect::<String>()))
}

fn answer(status: StatusCode, base: &str, s: &SubscriptionView) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{}\"", s.version)))
        .insert_header((header::LOCATION, format!("{base}/Subscription/{}", s.id)))
        .body(render(s).to_string())
}

/// `POST /Subscription`.
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (request_id, correlation_id) = crate::http::request_ids(&req)?;
    crate::http::check_content_type(&req)?;
    let body = crate::http::read_body(&state, &req, payload).await?;
    let (owner_ods, client_id) = owner(&req)?;
    let requested = parse(&body, &owner_ods, &state.referrer_endpoints)?;
    // One subscription per request id: a retried POST finds the first.
    let id = Uuid::new_v5(&SUBSCRIPTION_NAMESPACE, request_id.as_bytes());
    let event = SubscriptionEvent::SubscriptionCreated(SubscriptionCreated {
        subscription_id: id,
        owner_ods,
        client_id,
        topic: TOPIC.to_owned(),
        endpoint: requested.endpoint,
        payload_content: requested.payload_content.code().to_owned(),
        filter: requested.filter,
        reason: requested.reason,
    });
    let base = crate::http::base_url(&state, &req);
    match append(
        &state,
        id,
        ExpectedVersion::NoStream,
        &event,
        request_id,
        correlation_id,
    )
    .await
    {
        Ok(()) => {}
        Err(e) if e.status == StatusCode::CONFLICT => {
            let existing = load(&state, id).await?.ok_or_else(|| not_known(id))?;
            return Ok(answer(StatusCode::OK, &base, &existing));
        }
        Err(e) => return Err(e),
    }
    let created = load(&state, id).await?.ok_or_else(|| not_known(id))?;
    tracing::info!(subscription_id = %id, payload = created.payload_content.code(), "subscription created");
    Ok(answer(StatusCode::CREATED, &base, &created))
}

/// Namespace of subscription ids (UUIDv5 of the creating request id).
const SUBSCRIPTION_NAMESPACE: Uuid = Uuid::from_u128(0x7c1e_52a9_03d4_4b8f_a6e2_91f0_5d3b_c847);

/// The subscription if it exists and belongs to the caller's organisation;
/// otherwise 404 (existence is not leaked).
async fn own(state: &AppState, req: &HttpRequest, id: Uuid) -> Result<SubscriptionView, ApiError> {
    let (ods, _) = owner(req)?;
    load(state, id)
        .await?
        .filter(|s| s.owner_ods.eq_ignore_ascii_case(&ods))
        .ok_or_else(|| not_known(id))
}

/// `GET /Subscription/{id}`.
pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let s = own(&state, &req, id).await?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{}\"", s.version)))
        .body(render(&s).to_string()))
}

/// `GET /Subscription`: the caller's organisation's subscriptions.
pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| {
            ApiError::bad_request(IssueType::Invalid, format!("invalid query string: {e}"))
        })?
        .into_inner();
    let mut status = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "status" => status = Some(v.clone()),
            "_count" | "_format" => {}
            other => {
                return Err(ApiError::bad_request(
                    IssueType::NotSupported,
                    format!(
                        "search parameter '{other}' is not supported on Subscription (supported: status)"
                    ),
                ));
            }
        }
    }
    let (ods, _) = owner(&req)?;
    let base = crate::http::base_url(&state, &req);
    let ids: Vec<Uuid> = state.views.read(|v| {
        v.subscriptions()
            .filter(|s| s.owner_ods.eq_ignore_ascii_case(&ods))
            .map(|s| s.id)
            .collect()
    });
    // The handshake's outcome is on each subscription's own stream.
    let mut matched = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(s) = load(&state, id).await?
            && status.as_deref().is_none_or(|st| st == s.status_code())
        {
            matched.push(render(&s));
        }
    }
    let total = matched.len();
    let links = [(
        "self",
        format!("{base}/Subscription?{}", req.query_string()),
    )];
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(crate::render::searchset(&base, &links, matched, total).to_string()))
}

/// `DELETE /Subscription/{id}`: the subscription is turned off; nothing is
/// sent for changes after this.
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let s = own(&state, &req, id).await?;
    let (request_id, correlation_id) = crate::http::request_ids(&req)?;
    if s.active {
        let (_, client_id) = owner(&req)?;
        let event = SubscriptionEvent::SubscriptionDeleted(SubscriptionDeleted {
            subscription_id: id,
            client_id,
        });
        append(
            &state,
            id,
            ExpectedVersion::Exact(s.version),
            &event,
            request_id,
            correlation_id,
        )
        .await?;
        tracing::info!(subscription_id = %id, "subscription deleted");
    }
    Ok(HttpResponse::NoContent().finish())
}

/// A notification: a `history` Bundle whose first entry is the backport
/// subscription status (`Parameters`), then the Task for `full-resource`.
pub fn notification(
    base: &str,
    s: &SubscriptionView,
    events_since_start: u64,
    referral: &ReferralView,
    occurred_at: DateTime<Utc>,
    bundle_id: Uuid,
) -> Value {
    let task_url = format!("{base}/Task/{}", referral.referral_id);
    let mut event = vec![
        json!({"name": "event-number", "valueString": events_since_start.to_string()}),
        json!({"name": "timestamp", "valueInstant": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
    ];
    if s.payload_content != PayloadContent::Empty {
        event.push(json!({"name": "focus", "valueReference": {"reference": task_url}}));
    }
    let mut entries = vec![status_entry(
        base,
        s,
        bundle_id,
        ("active", "event-notification"),
        events_since_start,
        Some(event),
    )];
    match s.payload_content {
        PayloadContent::Empty => {}
        PayloadContent::IdOnly => entries.push(json!({
            "fullUrl": task_url,
            "request": {"method": "PUT", "url": format!("Task/{}", referral.referral_id)},
            "response": {"status": "200"},
        })),
        PayloadContent::FullResource => entries.push(json!({
            "fullUrl": task_url,
            "resource": crate::render::task(referral),
            "request": {"method": "PUT", "url": format!("Task/{}", referral.referral_id)},
            "response": {"status": "200", "etag": format!("W/\"{}\"", referral.task_version())},
        })),
    }
    history_bundle(bundle_id, occurred_at, entries)
}

/// The handshake: a `history` Bundle whose only entry is the status
/// `Parameters` with `type` `handshake`, `status` `requested` and
/// `events-since-subscription-start` 0 (no notification event, no focus).
pub fn handshake(base: &str, s: &SubscriptionView, at: DateTime<Utc>, bundle_id: Uuid) -> Value {
    let status = status_entry(base, s, bundle_id, ("requested", "handshake"), 0, None);
    history_bundle(bundle_id, at, vec![status])
}

/// The Bundle entry holding the backport subscription status `Parameters`:
/// the subscription, its topic, (`status`, `type`), the event count and,
/// for an event notification, the `notification-event` parts.
fn status_entry(
    base: &str,
    s: &SubscriptionView,
    bundle_id: Uuid,
    (status, kind): (&str, &str),
    events_since_start: u64,
    event: Option<Vec<Value>>,
) -> Value {
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{}", s.id)}}),
        json!({"name": "topic", "valueCanonical": s.topic}),
        json!({"name": "status", "valueCode": status}),
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "events-since-subscription-start", "valueString": events_since_start.to_string()}),
    ];
    if let Some(event) = event {
        parameter.push(json!({"name": "notification-event", "part": event}));
    }
    json!({
        "fullUrl": format!("urn:uuid:{bundle_id}"),
        "resource": {
            "resourceType": "Parameters",
            "id": bundle_id.to_string(),
            "meta": {"profile": [STATUS_PROFILE]},
            "parameter": parameter,
        },
        "request": {"method": "GET", "url": format!("{base}/Subscription/{}/$status", s.id)},
        "response": {"status": "200"},
    })
}

/// A notification Bundle (`history`, the backport notification profile).
fn history_bundle(bundle_id: Uuid, at: DateTime<Utc>, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": bundle_id.to_string(),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: &Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn valid() -> Value {
        json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "status changes",
            "criteria": TOPIC,
            "channel": {
                "type": "rest-hook",
                "endpoint": "https://gp.example/fhir/notify",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": "full-resource"}]}
            }
        })
    }

    fn registered() -> Vec<String> {
        vec!["https://gp.example/fhir".to_owned()]
    }

    /// A change made to a valid Subscription.
    type Change = Box<dyn Fn(&mut Value)>;

    fn expression(e: &ApiError) -> Option<&str> {
        e.issues.first().and_then(|i| i.expression.as_deref())
    }

    #[test]
    fn a_valid_subscription_is_accepted_with_its_payload_content() -> Result<(), ApiError> {
        let r = parse(&body(&valid()), "A81001", &registered())?;
        assert_eq!(r.payload_content, PayloadContent::FullResource);
        assert_eq!(r.endpoint, "https://gp.example/fhir/notify");
        let mut plain = valid();
        plain["channel"]["_payload"] = Value::Null;
        assert_eq!(
            parse(&body(&plain), "A81001", &registered())?.payload_content,
            PayloadContent::IdOnly
        );
        Ok(())
    }

    #[test]
    fn each_refusal_names_its_element() {
        let cases: Vec<(Change, u16, &str)> = vec![
            (
                Box::new(|v| v["criteria"] = json!("https://other.example/topic")),
                422,
                "Subscription.criteria",
            ),
            (
                Box::new(|v| v["channel"]["type"] = json!("websocket")),
                422,
                "Subscription.channel.type",
            ),
            (
                Box::new(|v| v["channel"]["endpoint"] = json!("https://evil.example/fhir")),
                422,
                "Subscription.channel.endpoint",
            ),
            (
                Box::new(|v| v["channel"]["payload"] = json!("application/fhir+xml")),
                422,
                "Subscription.channel.payload",
            ),
            (
                Box::new(|v| v["criteria"] = Value::Null),
                400,
                "Subscription.criteria",
            ),
            (
                Box::new(
                    |v| v["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "ServiceRequest?requester=B99999"}]}),
                ),
                422,
                "Subscription.criteria.extension('backport-filter-criteria')",
            ),
        ];
        for (change, status, at) in cases {
            let mut v = valid();
            change(&mut v);
            match parse(&body(&v), "A81001", &registered()) {
                Ok(_) => panic!("{at} should be refused"),
                Err(e) => {
                    assert_eq!(e.status.as_u16(), status, "{at}");
                    assert_eq!(expression(&e), Some(at));
                }
            }
        }
    }

    fn envelope(event: &impl Serialize, sequence: u64) -> Result<Envelope, serde_json::Error> {
        let new = new_event(event, 1, Utc::now())?;
        Ok(Envelope {
            event_id: new.event_id,
            stream_id: stream_id(Uuid::from_u128(5)),
            sequence,
            position: sequence,
            occurred_at: new.occurred_at,
            recorded_at: new.occurred_at,
            causation_id: None,
            correlation_id: Uuid::nil(),
            traceparent: None,
            tracestate: None,
            event_type: new.event_type,
            schema_version: 1,
            payload: new.payload,
        })
    }

    fn created() -> Result<SubscriptionView, Box<dyn std::error::Error>> {
        let event = SubscriptionEvent::SubscriptionCreated(SubscriptionCreated {
            subscription_id: Uuid::from_u128(5),
            owner_ods: "A81001".to_owned(),
            client_id: "gp".to_owned(),
            topic: TOPIC.to_owned(),
            endpoint: "https://gp.example/fhir/notify".to_owned(),
            payload_content: "id-only".to_owned(),
            filter: None,
            reason: None,
        });
        SubscriptionView::evolve(None, &envelope(&event, 1)?, &event).ok_or("not created".into())
    }

    #[test]
    fn the_status_follows_the_handshake_and_deletion() -> Result<(), Box<dyn std::error::Error>> {
        use mskflow_events::subscription::{SubscriptionActivated, SubscriptionErrored};
        let requested = created()?;
        assert_eq!(render(&requested)["status"], "requested");
        let activated = SubscriptionStatusEvent::SubscriptionActivated(SubscriptionActivated {
            subscription_id: requested.id,
            handshake_id: Uuid::from_u128(6),
            http_status: 200,
        });
        let active = SubscriptionView::evolve_status(
            Some(requested.clone()),
            &envelope(&activated, 2)?,
            &activated,
        )
        .ok_or("gone")?;
        assert_eq!(active.version, 2);
        let shown = render(&active);
        assert_eq!(shown["status"], "active");
        assert!(shown.get("error").is_none());
        let errored = SubscriptionStatusEvent::SubscriptionErrored(SubscriptionErrored {
            subscription_id: requested.id,
            handshake_id: Uuid::from_u128(6),
            http_status: Some(503),
            reason: "handshake failed after 3 attempt(s): receiver answered 503".to_owned(),
        });
        let error =
            SubscriptionView::evolve_status(Some(requested), &envelope(&errored, 2)?, &errored)
                .ok_or("gone")?;
        let shown = render(&error);
        assert_eq!(shown["status"], "error");
        assert_eq!(
            shown["error"],
            "handshake failed after 3 attempt(s): receiver answered 503"
        );
        let deleted = SubscriptionEvent::SubscriptionDeleted(SubscriptionDeleted {
            subscription_id: error.id,
            client_id: "gp".to_owned(),
        });
        let off = SubscriptionView::evolve(Some(error), &envelope(&deleted, 3)?, &deleted)
            .ok_or("gone")?;
        assert_eq!(off.status_code(), "off");
        assert!(
            SubscriptionView::evolve_status(None, &envelope(&activated, 1)?, &activated).is_none(),
            "an outcome without a creation is nothing"
        );
        Ok(())
    }

    #[test]
    fn the_handshake_has_the_backport_shape() -> Result<(), Box<dyn std::error::Error>> {
        let s = created()?;
        let id = Uuid::from_u128(9);
        let bundle = handshake("https://gw.example/fhir", &s, Utc::now(), id);
        assert_eq!(bundle["type"], "history");
        assert_eq!(bundle["meta"]["profile"][0], NOTIFICATION_PROFILE);
        let entries = bundle["entry"].as_array().ok_or("no entries")?;
        assert_eq!(entries.len(), 1, "no focus entries");
        let status = &entries[0]["resource"];
        assert_eq!(status["resourceType"], "Parameters");
        assert_eq!(status["meta"]["profile"][0], STATUS_PROFILE);
        let value = |name: &str, key: &str| {
            status["parameter"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .map(|p| p[key].clone())
                .unwrap_or(Value::Null)
        };
        assert_eq!(value("type", "valueCode"), "handshake");
        assert_eq!(value("status", "valueCode"), "requested");
        assert_eq!(value("events-since-subscription-start", "valueString"), "0");
        assert_eq!(value("topic", "valueCanonical"), TOPIC);
        assert_eq!(
            value("subscription", "valueReference")["reference"],
            format!("https://gw.example/fhir/Subscription/{}", s.id)
        );
        assert_eq!(value("notification-event", "part"), Value::Null);
        assert_eq!(
            entries[0]["request"]["url"],
            format!("https://gw.example/fhir/Subscription/{}/$status", s.id)
        );
        Ok(())
    }

    #[test]
    fn the_own_organisation_filter_is_kept() -> Result<(), ApiError> {
        let mut v = valid();
        v["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "ServiceRequest?requester=Organization/a81001"}]});
        let r = parse(&body(&v), "A81001", &registered())?;
        assert_eq!(
            r.filter.as_deref(),
            Some("ServiceRequest?requester=Organization/a81001")
        );
        Ok(())
    }
}
