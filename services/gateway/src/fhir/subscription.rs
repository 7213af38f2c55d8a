//! `Subscription`: create (then the handshake, sent by [`crate::notify`]),
//! read, search and delete, each limited to the caller's organisation. A
//! subscription is the events of its stream `subscription-{id}`.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use mskflow_eventlog::{ExpectedVersion, Metadata, decode, new_event};
use mskflow_events::subscription::{
    SubscriptionCreated, SubscriptionDeleted, SubscriptionEvent, SubscriptionStatusEvent, stream_id,
};
use mskflow_fhir::IssueType;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::{AppState, FHIR_JSON};

use crate::subscription::model::*;
use crate::subscription::resource::{parse, render};

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
    let (request_id, correlation_id) = crate::fhir::request::request_ids(&req)?;
    crate::fhir::request::check_content_type(&req)?;
    let body = crate::fhir::request::read_body(&state, &req, payload).await?;
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
    let base = crate::fhir::request::base_url(&state, &req);
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
    let base = crate::fhir::request::base_url(&state, &req);
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
    let (request_id, correlation_id) = crate::fhir::request::request_ids(&req)?;
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
