//! The HTTP edge: routes, headers, body limits and content negotiation.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use mskflow_eventlog::EventLog;
use mskflow_fhir::IssueType;
use mskflow_proto::intake::v1 as pb;
use mskflow_proto::intake::v1::intake_service_client::IntakeServiceClient;
use serde_json::Value;
use tonic::transport::Channel;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::error::{ApiError, from_grpc};
use crate::projection::ViewStore;
use crate::{render, search};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_CORRELATION_ID: &str = "x-correlation-id";
/// The extension on a scored EQ-5D-5L `QuestionnaireResponse` naming the
/// value set that gave its index (`england-devlin-2018` by default).
pub const EQ5D_VALUE_SET_EXTENSION: &str =
    "https://fhir.mskflow.org/StructureDefinition/eq5d-value-set";
/// The whole request body must arrive within this time of the handler
/// starting to read it; a slower client (slow-loris, or a Content-Length
/// larger than what is sent) gets 408 and the connection is closed. The
/// request head has its own limit (the HTTP server's request timeout).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the HTTP workers.
#[derive(Debug)]
pub struct AppState {
    pub views: Arc<ViewStore>,
    pub log: Arc<dyn EventLog>,
    pub intake: IntakeServiceClient<Channel>,
    pub outcomes:
        mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient<Channel>,
    pub base_url: Option<String>,
    pub body_limit: usize,
    pub wait_timeout: Duration,
    pub intake_timeout: Duration,
    /// Readiness fails when the views are further behind the log than this.
    pub max_view_lag: u64,
    /// Registered referrer endpoints (URL prefixes): the only places
    /// notifications and subscriptions may point to.
    pub referrer_endpoints: Vec<String>,
}

type State = web::Data<AppState>;

/// Renders one view as a FHIR resource.
type Render = fn(&crate::views::ReferralView) -> Value;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health/live")
            .route(web::get().to(live))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/health/ready")
            .route(web::get().to(ready))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics_text))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::scope("/fhir")
            // Bearer tokens, scopes, NHSD headers and the audit trail
            // (`/fhir/metadata` stays open).
            .wrap(actix_web::middleware::from_fn(crate::auth::authorise))
            .service(
                web::resource("/metadata")
                    .route(web::get().to(metadata))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/$process-message")
                    .route(web::post().to(process_message))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest")
                    .route(web::post().to(create_service_request))
                    .route(web::get().to(search_service_requests))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest/{id}")
                    .route(web::get().to(read_service_request))
                    .route(web::put().to(update_service_request))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Subscription")
                    .route(web::post().to(crate::subscription::create))
                    .route(web::get().to(crate::subscription::search))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Subscription/{id}")
                    .route(web::get().to(crate::subscription::read))
                    .route(web::delete().to(crate::subscription::delete))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task")
                    .route(web::get().to(search_tasks))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Appointment")
                    .route(web::get().to(search_appointments))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Appointment/{id}")
                    .route(web::get().to(read_appointment))
                    .default_service(web::to(not_allowed)),
            )
            .service(web::resource("/Encounter").default_service(web::to(not_allowed)))
            .service(
                web::resource("/QuestionnaireResponse")
                    .route(web::post().to(submit_questionnaire_response))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Questionnaire")
                    .route(web::get().to(search_questionnaires))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Questionnaire/{id}")
                    .route(web::get().to(read_questionnaire))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Schedule")
                    .route(web::get().to(search_schedules))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Schedule/{id}")
                    .route(web::get().to(read_schedule))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Slot")
                    .route(web::get().to(search_slots))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Slot/{id}")
                    .route(web::get().to(read_slot))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Encounter/{id}")
                    .route(web::get().to(read_encounter))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/MessageDefinition")
                    .route(web::get().to(message_definitions))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/MessageDefinition/{id}")
                    .route(web::get().to(read_message_definition))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task/{id}/_history")
                    .route(web::get().to(history))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task/{id}/_history/{vid}")
                    .route(web::get().to(vread))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest/{id}/_history")
                    .route(web::get().to(history))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest/{id}/_history/{vid}")
                    .route(web::get().to(vread))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task/{id}")
                    .route(web::get().to(read_task))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient")
                    .route(web::get().to(crate::patient::search))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient/{id}")
                    .route(web::get().to(crate::patient::read))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient/{id}/_history")
                    .route(web::get().to(crate::patient::history))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient/{id}/_history/{vid}")
                    .route(web::get().to(crate::patient::vread))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/AuditEvent")
                    .route(web::get().to(crate::audit::search))
                    .default_service(web::to(not_allowed)),
            ),
    )
    .default_service(web::to(not_found));
}

/// Every request: a server span (child of the caller's `traceparent`),
/// request metrics, and `X-Request-Id` / `X-Correlation-Id` echoed on the
/// answer.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let request_id = req.headers().get(X_REQUEST_ID).cloned();
    let correlation_id = req.headers().get(X_CORRELATION_ID).cloned();
    let method = req.method().to_string();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    );
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    mskflow_telemetry::set_remote_parent(
        &span,
        header("traceparent").as_deref(),
        header("tracestate").as_deref(),
    );
    if let Some(id) = mskflow_telemetry::trace_id_of(&span) {
        span.record("trace_id", id);
    }
    if let Some(id) = correlation_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
    {
        span.record("correlation_id", tracing::field::display(id));
    }
    let started = std::time::Instant::now();
    let mut res = match negotiate(&req) {
        Err(e) => req.into_response(actix_web::ResponseError::error_response(&e)),
        Ok(()) => next
            .call(req)
            .instrument(span.clone())
            .await?
            .map_into_boxed_body(),
    };
    let status = res.status().as_u16();
    span.record("http.response.status_code", status);
    metrics::counter!(
        "mskflow_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("mskflow_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    for (name, value) in [
        (X_REQUEST_ID, request_id),
        (X_CORRELATION_ID, correlation_id),
    ] {
        if let Some(v) = value {
            res.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
    Ok(res)
}

/// Content negotiation: this server speaks FHIR JSON only. `_format` and
/// `Accept` asking for anything else get 406.
fn negotiate(req: &ServiceRequest) -> Result<(), ApiError> {
    if !req.path().starts_with("/fhir") {
        return Ok(());
    }
    let json_ok = |mime: &str| {
        let mime = mime
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        matches!(
            mime.as_str(),
            "application/fhir+json"
                | "application/json"
                | "json"
                | "*/*"
                | "application/*"
                | ""
                | "application/json+fhir"
        )
    };
    let format = req
        .query_string()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "_format")
        .map(|(_, v)| percent_decoded(v));
    if let Some(f) = format
        && !json_ok(&f)
    {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("_format {f} is not supported: this server speaks application/fhir+json"),
        ));
    }
    if let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        && !accept.split(',').any(json_ok)
    {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("cannot answer in '{accept}': this server speaks application/fhir+json"),
        ));
    }
    Ok(())
}

/// A query value with its `%XX` escapes decoded (`+` is kept: in `_format`
/// it is the `+` of `fhir+json`).
fn percent_decoded(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fhir_ok(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

pub(crate) fn base_url(state: &AppState, req: &HttpRequest) -> String {
    match &state.base_url {
        Some(b) => b.trim_end_matches('/').to_owned(),
        None => {
            let info = req.connection_info();
            format!("{}://{}/fhir", info.scheme(), info.host())
        }
    }
}

fn header_uuid(req: &HttpRequest, name: &str) -> Result<Uuid, ApiError> {
    let value = req.headers().get(name).ok_or_else(|| {
        ApiError::bad_request(
            IssueType::Invalid,
            format!("header {name} is required (a UUID)"),
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .ok_or_else(|| {
            ApiError::bad_request(IssueType::Invalid, format!("header {name} must be a UUID"))
        })
}

/// `X-Request-Id` and `X-Correlation-Id`, required on every write.
pub(crate) fn request_ids(req: &HttpRequest) -> Result<(Uuid, Uuid), ApiError> {
    Ok((
        header_uuid(req, X_REQUEST_ID)?,
        header_uuid(req, X_CORRELATION_ID)?,
    ))
}

pub(crate) fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/fhir+json" || mime == "application/json" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            format!("Content-Type must be application/fhir+json, got '{ct}'"),
        ))
    }
}

/// Read the body, refusing more than the configured limit without buffering it.
pub(crate) async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!(
                "request body is larger than the limit of {} bytes",
                state.body_limit
            ),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > state.body_limit
    {
        return Err(too_large());
    }
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(
                    IssueType::Structure,
                    format!("could not read the body: {e}"),
                )
            })?;
            if body.len() + chunk.len() > state.body_limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                IssueType::Timeout,
                format!(
                    "the request body did not arrive within {} seconds",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?
}

/// Submit to intake over gRPC, then wait until the views show the result.
async fn submit(
    state: &AppState,
    req: &HttpRequest,
    request_id: Uuid,
    correlation_id: Uuid,
    referral: pb::Referral,
) -> Result<crate::views::ReferralView, ApiError> {
    let mut request = tonic::Request::new(pb::SubmitReferralRequest {
        request_id: request_id.to_string(),
        correlation_id: correlation_id.to_string(),
        referral: Some(referral),
    });
    request.set_timeout(state.intake_timeout);
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        && let Ok(v) = tp.parse()
    {
        request.metadata_mut().insert("traceparent", v);
    }
    let mut client = state.intake.clone();
    let response = client.submit_referral(request).await.map_err(|s| {
        tracing::info!(code = ?s.code(), %request_id, "intake refused the referral");
        from_grpc(&s)
    })?;
    let submitted = response.into_inner();
    let referral_id = Uuid::parse_str(&submitted.referral_id)
        .map_err(|_| ApiError::internal("intake answered with an invalid referral id"))?;
    tracing::info!(%referral_id, %request_id, version = submitted.version, "referral recorded");
    let view = state
        .views
        .wait_for(referral_id, submitted.version, state.wait_timeout)
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueType::Transient,
                format!("referral {referral_id} was recorded but its Task is not yet readable; poll Task/{referral_id}"),
            )
        })?;
    with_sent(state, view).await
}

/// `view` with the referral as sent read back from the log (the views do
/// not keep it in memory: see [`crate::sent`]).
pub(crate) async fn with_sent(
    state: &AppState,
    mut view: crate::views::ReferralView,
) -> Result<crate::views::ReferralView, ApiError> {
    crate::sent::fill(state.log.as_ref(), &mut view)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the referral as sent: {e}")))?;
    Ok(view)
}

async fn process_message(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (request_id, correlation_id) = request_ids(&req)?;
    check_content_type(&req)?;
    let body = read_body(&state, &req, payload).await?;
    let mut parsed = mskflow_fhir::parse_process_message(&body)?;
    crate::auth::principal(&req)?.check_sender(
        parsed
            .referral
            .sender
            .ods_code
            .as_ref()
            .map(mskflow_events::OdsCode::as_str),
    )?;
    if parsed.bundle_version.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            IssueType::Required,
            "Bundle.meta.versionId is required (Booking and Referral Standard)",
        )
        .at("Bundle.meta.versionId"));
    }
    if parsed.event_code != "servicerequest-request" {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            format!(
                "message event '{}' is not supported; send servicerequest-request",
                parsed.event_code
            ),
        )
        .at("Bundle.entry[0].resource.eventCoding"));
    }
    if parsed.reason.as_deref() == Some("update") {
        return cancel(&state, &req, request_id, correlation_id, parsed).await;
    }
    if parsed.referral.sender.software.is_none() {
        parsed.referral.sender.software = crate::auth::nhsd(&req).requesting_software;
    }
    let view = submit(
        &state,
        &req,
        request_id,
        correlation_id,
        parsed.referral.into(),
    )
    .await?;
    Ok(message_response(&state, &req, &parsed.message_id, &view))
}

/// The `servicerequest-response` message answering a `$process-message`,
/// with the referral's Task as `Location`.
fn message_response(
    state: &AppState,
    req: &HttpRequest,
    message_id: &str,
    view: &crate::views::ReferralView,
) -> HttpResponse {
    let base = base_url(state, req);
    let body = render::response_message(&base, message_id, view);
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((
            header::LOCATION,
            format!("{base}/Task/{}", view.referral_id),
        ))
        .body(body.to_string())
}

/// A Booking and Referral Standard `update`: cancellation when the
/// ServiceRequest's status is `revoked` or `entered-in-error`, only while the
/// referral is active. Other updates (amendments) are not supported.
async fn cancel(
    state: &AppState,
    req: &HttpRequest,
    request_id: Uuid,
    correlation_id: Uuid,
    parsed: mskflow_fhir::ParsedMessage,
) -> Result<HttpResponse, ApiError> {
    if !matches!(
        parsed.service_request_status.as_str(),
        "revoked" | "entered-in-error"
    ) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            "an update may only cancel a referral (ServiceRequest.status revoked or entered-in-error); amendments are not supported: cancel and send a new referral",
        )
        .at("ServiceRequest.status"));
    }
    if parsed.referral.service_request_identifier.is_none() {
        return Err(ApiError::bad_request(
            IssueType::Required,
            "an update must carry the ServiceRequest.identifier of the referral it changes",
        )
        .at("ServiceRequest.identifier"));
    }
    let view = cancel_referral(
        state,
        request_id,
        correlation_id,
        &parsed.service_request_status,
        parsed.referral.into(),
        None,
    )
    .await?;
    Ok(message_response(state, req, &parsed.message_id, &view))
}

/// Cancel a referral through intake (the one cancellation path, for the
/// `update` message and for `PUT /ServiceRequest/{id}`) and wait until the
/// views show it. With `expected_version`, intake records the cancellation
/// only if the referral is still at that version (checked by the event
/// log's append, so of two racing cancellations one wins); otherwise it
/// answers ABORTED (409 `conflict` here).
async fn cancel_referral(
    state: &AppState,
    request_id: Uuid,
    correlation_id: Uuid,
    status: &str,
    referral: pb::Referral,
    expected_version: Option<u64>,
) -> Result<crate::views::ReferralView, ApiError> {
    let mut request = tonic::Request::new(pb::CancelReferralRequest {
        request_id: request_id.to_string(),
        correlation_id: correlation_id.to_string(),
        status: status.to_owned(),
        referral: Some(referral),
        expected_version,
    });
    request.set_timeout(state.intake_timeout);
    let (traceparent, _) = mskflow_telemetry::current_trace_context();
    if let Some(v) = traceparent.and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("traceparent", v);
    }
    let mut client = state.intake.clone();
    let answer = client
        .cancel_referral(request)
        .await
        .map_err(|s| from_grpc(&s))?
        .into_inner();
    let referral_id = Uuid::parse_str(&answer.referral_id)
        .map_err(|_| ApiError::internal("intake answered with an invalid referral id"))?;
    tracing::info!(%referral_id, %request_id, "referral cancelled by its sender");
    let view = state
        .views
        .wait_for(referral_id, answer.version, state.wait_timeout)
        .await
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "referral {referral_id} was cancelled; poll Task/{referral_id}"
            ))
        })?;
    with_sent(state, view).await
}

/// `If-Match: W/"n"` (or `"n"`): the version an update is made against;
/// `None` without the header or for `*`.
fn if_match(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    raw.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| {
            ApiError::bad_request(
                IssueType::Invalid,
                "If-Match must be a version ETag such as W/\"3\"",
            )
        })
}

/// Elements of a ServiceRequest a client may send differently from the
/// server's copy without changing anything.
const UPDATE_IGNORED: &[&str] = &["id", "meta", "text", "status"];

/// `PUT /ServiceRequest/{id}`: the only change accepted is the referrer's
/// cancellation (`status` `revoked` or `entered-in-error`), through the same
/// path as the `update` message. `If-Match` is honoured (412 on a stale
/// version); the answer is shaped by `Prefer` like a create's.
async fn update_service_request(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "ServiceRequest")?;
    visible(&state, &req, id, "ServiceRequest")?;
    let (request_id, correlation_id) = request_ids(&req)?;
    check_content_type(&req)?;
    let expected = if_match(&req)?;
    let body = read_body(&state, &req, payload).await?;
    let sent: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            IssueType::Structure,
            format!(
                "the body is not JSON: {}",
                mskflow_eventlog::json_error_reason(&e)
            ),
        )
    })?;
    if sent["resourceType"] != "ServiceRequest" {
        return Err(
            ApiError::bad_request(IssueType::Invalid, "the body must be a ServiceRequest")
                .at("ServiceRequest.resourceType"),
        );
    }
    if sent["id"] != id.to_string().as_str() {
        return Err(ApiError::bad_request(
            IssueType::Invalid,
            "ServiceRequest.id must be the id in the URL",
        )
        .at("ServiceRequest.id"));
    }
    let view = state
        .views
        .read(|v| v.referral(&id).cloned())
        .ok_or_else(|| ApiError::not_found(format!("ServiceRequest/{id} is not known")))?;
    crate::auth::principal(&req)?.check_sender(
        view.details
            .sender
            .ods_code
            .as_ref()
            .map(mskflow_events::OdsCode::as_str),
    )?;
    let view = with_sent(&state, view).await?;
    let current = render::service_request(&view);
    let empty = serde_json::Map::new();
    let sent_fields = sent.as_object().unwrap_or(&empty);
    let current_fields = current.as_object().unwrap_or(&empty);
    if let Some(changed) = sent_fields
        .keys()
        .chain(current_fields.keys())
        .filter(|k| !UPDATE_IGNORED.contains(&k.as_str()))
        .find(|k| sent_fields.get(*k) != current_fields.get(*k))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            format!("ServiceRequest.{changed} cannot be changed: an update may only cancel a referral; cancel and send a new referral instead"),
        )
        .at(format!("ServiceRequest.{changed}")));
    }
    let status = sent["status"].as_str().ok_or_else(|| {
        ApiError::bad_request(IssueType::Required, "ServiceRequest.status is required")
            .at("ServiceRequest.status")
    })?;
    let base = base_url(&state, &req);
    if current["status"] == status {
        // Nothing to change.
        if expected.is_some_and(|v| v != view.version) {
            return Err(stale(id));
        }
        return Ok(created(&req, StatusCode::OK, &base, &view));
    }
    if !matches!(status, "revoked" | "entered-in-error") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            "an update may only cancel a referral (ServiceRequest.status revoked or entered-in-error)",
        )
        .at("ServiceRequest.status"));
    }
    if view.details.service_request_identifier.is_none() {
        // Intake finds a referral to cancel by its sender and identifier.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::BusinessRule,
            "this referral was sent without a ServiceRequest.identifier and cannot be cancelled by its sender",
        )
        .at("ServiceRequest.identifier"));
    }
    let mut referral = view.details.clone();
    referral.sender.message_id = None;
    let updated = cancel_referral(
        &state,
        request_id,
        correlation_id,
        status,
        referral.into(),
        expected,
    )
    .await
    .map_err(|e| {
        let conflict = e.status == StatusCode::CONFLICT
            && e.issues
                .first()
                .is_some_and(|i| i.code == IssueType::Conflict);
        if expected.is_some() && conflict {
            stale(id)
        } else {
            e
        }
    })?;
    Ok(created(&req, StatusCode::OK, &base, &updated))
}

/// 412: the resource is no longer at the version of `If-Match`.
fn stale(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        IssueType::Conflict,
        format!("ServiceRequest/{id} has changed since the version in If-Match; read it again"),
    )
    .at("ServiceRequest.meta.versionId")
}

/// `Prefer: return=minimal | representation | OperationOutcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

fn prefer_return(req: &HttpRequest) -> Return {
    let prefer = req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("return="))
        .next_back()
        .map(str::trim);
    match prefer {
        Some("minimal") => Return::Minimal,
        Some("OperationOutcome") => Return::OperationOutcome,
        _ => Return::Representation,
    }
}

/// The answer to a create, shaped by `Prefer`.
fn created(
    req: &HttpRequest,
    status: StatusCode,
    base: &str,
    view: &crate::views::ReferralView,
) -> HttpResponse {
    let id = view.referral_id;
    let mut res = HttpResponse::build(status);
    res.insert_header((
        header::LOCATION,
        format!("{base}/ServiceRequest/{id}/_history/{}", view.version),
    ))
    .insert_header((header::ETAG, format!("W/\"{}\"", view.version)))
    .insert_header((header::LAST_MODIFIED, view.last_updated.to_rfc2822()))
    .insert_header((
        header::LINK,
        format!("<{base}/Task/{id}>; rel=\"related\"; type=\"Task\""),
    ));
    match prefer_return(req) {
        Return::Minimal => res.finish(),
        Return::Representation => res
            .content_type(FHIR_JSON)
            .body(render::service_request(view).to_string()),
        Return::OperationOutcome => res.content_type(FHIR_JSON).body(
            mskflow_fhir::operation_outcome(&[mskflow_fhir::Issue {
                severity: mskflow_fhir::Severity::Information,
                code: IssueType::Informational,
                diagnostics: format!(
                    "referral ServiceRequest/{id} recorded; its Task is Task/{id}"
                ),
                expression: None,
                details: None,
            }])
            .to_string(),
        ),
    }
}

/// `If-None-Exist: identifier=system|value`: the referral already recorded
/// under that identifier, if any (FHIR conditional create).
fn existing_for(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Option<crate::views::ReferralView>, ApiError> {
    let Some(raw) = req
        .headers()
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let pairs = web::Query::<Vec<(String, String)>>::from_query(raw.trim_start_matches('?'))
        .map_err(|e| {
            ApiError::bad_request(IssueType::Invalid, format!("invalid If-None-Exist: {e}"))
        })?
        .into_inner();
    let search = search::Search::parse(search::Resource::ServiceRequest, &pairs).map_err(|e| {
        ApiError::bad_request(
            IssueType::Invalid,
            format!("invalid If-None-Exist: {}", e.0),
        )
    })?;
    let principal = crate::auth::principal(req)?;
    let matched: Vec<crate::views::ReferralView> = state.views.read(|views| {
        search
            .run(views.referrals().filter(|r| principal.may_see(r)))
            .into_iter()
            .cloned()
            .collect()
    });
    match matched.len() {
        0 => Ok(None),
        1 => Ok(matched.into_iter().next()),
        n => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            IssueType::Duplicate,
            format!("If-None-Exist matches {n} referrals; be more specific"),
        )),
    }
}

async fn create_service_request(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (request_id, correlation_id) = request_ids(&req)?;
    check_content_type(&req)?;
    let body = read_body(&state, &req, payload).await?;
    let referral = mskflow_fhir::parse_service_request(&body)?;
    crate::auth::principal(&req)?.check_sender(
        referral
            .sender
            .ods_code
            .as_ref()
            .map(mskflow_events::OdsCode::as_str),
    )?;
    let base = base_url(&state, &req);
    if let Some(existing) = existing_for(&state, &req)? {
        let existing = with_sent(&state, existing).await?;
        return Ok(created(&req, StatusCode::OK, &base, &existing));
    }
    let view = submit(&state, &req, request_id, correlation_id, referral.into()).await?;
    Ok(created(&req, StatusCode::CREATED, &base, &view))
}

fn parse_id(raw: &str, resource: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        // The id is echoed only in part: it is whatever the client sent.
        let shown: String = raw.chars().take(64).collect();
        ApiError::not_found(format!("{resource}/{shown} is not known"))
    })
}

fn read_response(resource: &Value, version: u64) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{version}\"")))
        .body(resource.to_string())
}

async fn read_task(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Task")?;
    let principal = crate::auth::principal(&req)?;
    state
        .views
        .read(|v| {
            v.referral(&id)
                .filter(|r| principal.may_see(r))
                .map(|r| read_response(&render::task(r), r.task_version()))
        })
        .ok_or_else(|| ApiError::not_found(format!("Task/{id} is not known")))
}

async fn read_service_request(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "ServiceRequest")?;
    let principal = crate::auth::principal(&req)?;
    let referral = state
        .views
        .read(|v| v.referral(&id).filter(|r| principal.may_see(r)).cloned());
    if let Some(view) = referral {
        let view = with_sent(&state, view).await?;
        return Ok(read_response(&render::service_request(&view), view.version));
    }
    state
        .views
        .read(|v| {
            v.onward_referral(&id)
                .filter(|(r, _)| principal.may_see(r))
                .map(|(r, o)| read_response(&render::onward_service_request(r, o), 1))
        })
        .ok_or_else(|| ApiError::not_found(format!("ServiceRequest/{id} is not known")))
}

fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    Ok(
        web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|e| {
                ApiError::bad_request(IssueType::Invalid, format!("invalid query string: {e}"))
            })?
            .into_inner(),
    )
}

/// Run a search and answer a `searchset` Bundle with paging links. A
/// ServiceRequest page reads its referrals as sent back from the log.
async fn search(
    state: &AppState,
    req: &HttpRequest,
    resource: search::Resource,
    render_one: Render,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req)?;
    let search = search::Search::parse(resource, &pairs)
        .map_err(|e| ApiError::bad_request(IssueType::NotSupported, e.0))?;
    let base = base_url(state, req);
    let principal = crate::auth::principal(req)?;
    let (total, page) = if resource == search::Resource::ServiceRequest {
        let (total, mut matched) = state.views.read(|views| {
            let (total, matched) = search.page(views, |r| principal.may_see(r));
            (total, matched.into_iter().cloned().collect::<Vec<_>>())
        });
        crate::sent::fill_all(state.log.as_ref(), &mut matched)
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("cannot read the referrals as sent: {e}"))
            })?;
        (
            total,
            matched.iter().map(render_one).collect::<Vec<Value>>(),
        )
    } else {
        state.views.read(|views| {
            let (total, matched) = search.page(views, |r| principal.may_see(r));
            let page: Vec<Value> = matched.into_iter().map(render_one).collect();
            (total, page)
        })
    };
    let link = |offset: usize| {
        format!(
            "{base}/{}?{}",
            resource.name(),
            search::with_offset(&pairs, offset)
        )
    };
    let mut links = vec![("self", link(search.offset)), ("first", link(0))];
    if search.offset > 0 {
        links.push(("previous", link(search.offset.saturating_sub(search.count))));
    }
    if !search.summary_count && search.count > 0 && search.offset + search.count < total {
        links.push(("next", link(search.offset + search.count)));
    }
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, page, total),
    ))
}

async fn search_tasks(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    search(&state, &req, search::Resource::Task, render::task).await
}

async fn search_service_requests(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    search(
        &state,
        &req,
        search::Resource::ServiceRequest,
        render::service_request,
    )
    .await
}

/// Every version of a referral's resource, rebuilt from the log: version
/// `v` is the state after the first `v` events. A Task's versions include the
/// assessment and rehabilitation streams' events; a ServiceRequest's only the
/// referral's.
async fn versions(
    state: &AppState,
    id: Uuid,
    resource: &str,
) -> Result<Vec<(u64, crate::views::ReferralView)>, ApiError> {
    let read = |stream: String| async move {
        state
            .log
            .read_stream(&stream, 1)
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot read the history: {e}")))
    };
    let mut events = read(format!("referral-{id}")).await?;
    if resource == "Task" {
        events.extend(read(format!("assessment-{id}")).await?);
        events.extend(read(format!("rehab-{id}")).await?);
        let onward: Vec<Uuid> = state
            .views
            .read(|v| {
                v.referral(&id)
                    .map(|r| r.onward.iter().map(|o| o.id).collect())
            })
            .unwrap_or_default();
        for o in onward {
            events.extend(read(format!("delivery-{o}")).await?);
        }
        events.sort_by_key(|e| e.position);
    }
    let mut views = crate::views::Views::default();
    let mut out = Vec::new();
    let sent = crate::sent::from_events(&events).unwrap_or_default();
    for e in &events {
        views
            .apply(e)
            .map_err(|err| ApiError::internal(format!("history of {id} does not replay: {err}")))?;
        if let Some(v) = views.referral(&id) {
            let version = if resource == "Task" {
                v.task_version()
            } else {
                v.version
            };
            let mut v = v.clone();
            v.details.fhir_json.clone_from(&sent);
            out.push((version, v));
        }
    }
    Ok(out)
}

fn history_path(path: &str) -> Result<(&'static str, Render), ApiError> {
    if path.contains("/Task/") {
        Ok(("Task", render::task))
    } else if path.contains("/ServiceRequest/") {
        Ok(("ServiceRequest", render::service_request))
    } else {
        Err(ApiError::not_found(format!("no history at {path}")))
    }
}

/// The referral exists and the caller may see it; otherwise 404, the same
/// answer as for an unknown id (existence is not leaked).
fn visible(state: &AppState, req: &HttpRequest, id: Uuid, resource: &str) -> Result<(), ApiError> {
    let principal = crate::auth::principal(req)?;
    if state
        .views
        .read(|v| v.referral(&id).is_some_and(|r| principal.may_see(r)))
    {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("{resource}/{id} is not known")))
    }
}

/// `GET /{type}/{id}/_history`: a `history` Bundle, newest first.
async fn history(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (resource, render_one) = history_path(req.path())?;
    let id = parse_id(&path, resource)?;
    visible(&state, &req, id, resource)?;
    let versions = versions(&state, id, resource).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("{resource}/{id} is not known")));
    }
    let base = base_url(&state, &req);
    let entries: Vec<Value> = versions
        .iter()
        .rev()
        .map(|(version, v)| {
            serde_json::json!({
                "fullUrl": format!("{base}/{resource}/{id}"),
                "resource": render_one(v),
                "request": {"method": if *version <= 1 { "POST" } else { "PUT" }, "url": format!("{resource}/{id}")},
                "response": {"status": if *version <= 1 { "201" } else { "200" }, "etag": format!("W/\"{version}\"")},
            })
        })
        .collect();
    Ok(fhir_ok(
        StatusCode::OK,
        &serde_json::json!({
            "resourceType": "Bundle",
            "type": "history",
            "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{base}/{resource}/{id}/_history")}],
            "entry": entries,
        }),
    ))
}

/// `GET /{type}/{id}/_history/{vid}`: one version (vread).
async fn vread(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (resource, render_one) = history_path(req.path())?;
    let (raw_id, raw_version) = path.into_inner();
    let id = parse_id(&raw_id, resource)?;
    visible(&state, &req, id, resource)?;
    let version: u64 = raw_version.parse().map_err(|_| {
        ApiError::not_found(format!(
            "{resource}/{id}/_history/{raw_version} is not a version"
        ))
    })?;
    versions(&state, id, resource)
        .await?
        .into_iter()
        .find(|(v, _)| *v == version)
        .map(|(v, view)| read_response(&render_one(&view), v))
        .ok_or_else(|| ApiError::not_found(format!("{resource}/{id} has no version {version}")))
}

async fn read_appointment(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Appointment")?;
    let principal = crate::auth::principal(&req)?;
    state
        .views
        .read(|v| {
            v.appointment(&id)
                .filter(|(r, _)| principal.may_see(r))
                .map(|(r, a)| fhir_ok(StatusCode::OK, &render::appointment(r, a)))
        })
        .ok_or_else(|| ApiError::not_found(format!("Appointment/{id} is not known")))
}

async fn search_appointments(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req)?;
    let search = search::AppointmentSearch::parse(&pairs)
        .map_err(|e| ApiError::bad_request(IssueType::NotSupported, e.0))?;
    let base = base_url(&state, &req);
    let principal = crate::auth::principal(&req)?;
    let (total, page) = state.views.read(|views| {
        // Earliest first.
        let mut matched: Vec<(&crate::views::ReferralView, &crate::views::AppointmentView)> = views
            .referrals()
            .filter(|r| principal.may_see(r))
            .flat_map(|r| {
                r.appointments
                    .iter()
                    .filter(|a| search.matches(r, a))
                    .map(move |a| (r, a))
            })
            .collect();
        matched.sort_by_key(|(_, a)| (a.start, a.id));
        let total = matched.len();
        let page: Vec<Value> = matched
            .into_iter()
            .skip(search.offset)
            .take(search.count)
            .map(|(r, a)| render::appointment(r, a))
            .collect();
        (total, page)
    });
    let link =
        |offset: usize| format!("{base}/Appointment?{}", search::with_offset(&pairs, offset));
    let mut links = vec![("self", link(search.offset)), ("first", link(0))];
    if search.count > 0 && search.offset + search.count < total {
        links.push(("next", link(search.offset + search.count)));
    }
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, page, total),
    ))
}

/// Every Schedule: one per class, one per clinician with 1:1 slots.
fn all_schedules(capacity: &crate::views::Capacity) -> Vec<Value> {
    let mut out: Vec<Value> = capacity
        .classes
        .values()
        .map(|c| render::class_schedule(capacity, c))
        .collect();
    let mut clinicians: Vec<(&str, &str)> = capacity
        .slots
        .values()
        .map(|s| {
            (
                s.published.clinician.as_str(),
                s.published.venue_id.as_str(),
            )
        })
        .collect();
    clinicians.sort();
    clinicians.dedup_by(|a, b| a.0 == b.0);
    out.extend(clinicians.into_iter().map(|(c, v)| {
        render::clinician_schedule(c, capacity.venues.get(v).map_or(v, String::as_str))
    }));
    out
}

/// Every Slot: the sessions of each class and the 1:1 slots.
fn all_slots(capacity: &crate::views::Capacity) -> Vec<Value> {
    let mut out: Vec<Value> = capacity
        .classes
        .values()
        .flat_map(render::class_slots)
        .collect();
    out.extend(capacity.slots.values().map(render::rehab_slot));
    out
}

async fn read_schedule(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Schedule")?.to_string();
    state
        .views
        .read(|v| {
            all_schedules(v.capacity())
                .into_iter()
                .find(|s| s["id"] == id.as_str())
        })
        .map(|s| fhir_ok(StatusCode::OK, &s))
        .ok_or_else(|| ApiError::not_found(format!("Schedule/{id} is not known")))
}

async fn search_schedules(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req)?;
    let mut ids = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "_id" => ids.extend(v.split(',').map(str::to_owned)),
            "_count" | "_format" => {}
            other => {
                return Err(ApiError::bad_request(
                    IssueType::NotSupported,
                    format!(
                        "search parameter '{other}' is not supported on Schedule (supported: _id)"
                    ),
                ));
            }
        }
    }
    let base = base_url(&state, &req);
    let matched: Vec<Value> = state.views.read(|v| {
        all_schedules(v.capacity())
            .into_iter()
            .filter(|s| ids.is_empty() || ids.iter().any(|id| s["id"] == id.as_str()))
            .collect()
    });
    let total = matched.len();
    let links = [("self", format!("{base}/Schedule?{}", req.query_string()))];
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, matched, total),
    ))
}

async fn read_slot(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Slot")?.to_string();
    state
        .views
        .read(|v| {
            all_slots(v.capacity())
                .into_iter()
                .find(|s| s["id"] == id.as_str())
        })
        .map(|s| fhir_ok(StatusCode::OK, &s))
        .ok_or_else(|| ApiError::not_found(format!("Slot/{id} is not known")))
}

async fn search_slots(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req)?;
    let search = search::SlotSearch::parse(&pairs)
        .map_err(|e| ApiError::bad_request(IssueType::NotSupported, e.0))?;
    let (count, offset) = pairs
        .iter()
        .fold((search::DEFAULT_COUNT, 0usize), |(c, o), (k, v)| {
            match k.as_str() {
                "_count" => (v.parse().map_or(c, |n: usize| n.min(search::MAX_COUNT)), o),
                "_offset" => (c, v.parse().unwrap_or(o)),
                _ => (c, o),
            }
        });
    let base = base_url(&state, &req);
    let mut matched: Vec<Value> = state.views.read(|v| {
        all_slots(v.capacity())
            .into_iter()
            .filter(|s| search.matches(s))
            .collect()
    });
    matched.sort_by(|a, b| a["start"].as_str().cmp(&b["start"].as_str()));
    let total = matched.len();
    let link = |o: usize| format!("{base}/Slot?{}", search::with_offset(&pairs, o));
    let mut links = vec![("self", link(offset)), ("first", link(0))];
    if count > 0 && offset + count < total {
        links.push(("next", link(offset + count)));
    }
    let page: Vec<Value> = matched.into_iter().skip(offset).take(count).collect();
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, page, total),
    ))
}

/// The measures whose Questionnaires the outcomes service serves.
const MEASURES: &[&str] = &["msk-hq", "start-back", "eq-5d-5l", "psfs"];

async fn questionnaire(state: &AppState, measure: &str) -> Result<Value, ApiError> {
    use mskflow_proto::outcomes::v1 as opb;
    let mut client = state.outcomes.clone();
    let mut request = tonic::Request::new(opb::GetQuestionnaireRequest {
        measure: measure.to_owned(),
    });
    request.set_timeout(state.intake_timeout);
    let answer = client
        .get_questionnaire(request)
        .await
        .map_err(|s| from_grpc(&s))?
        .into_inner();
    serde_json::from_str(&answer.questionnaire_json).map_err(|_| {
        ApiError::internal("the outcomes service answered with an invalid Questionnaire")
    })
}

/// `GET /Questionnaire/{measure}`: the measure's Questionnaire (item codes
/// and answer scores; licensed wording only when a licence is configured).
async fn read_questionnaire(
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !MEASURES.contains(&path.as_str()) {
        return Err(ApiError::not_found(format!(
            "Questionnaire/{path} is not known (known: {})",
            MEASURES.join(", ")
        )));
    }
    Ok(fhir_ok(
        StatusCode::OK,
        &questionnaire(&state, &path).await?,
    ))
}

async fn search_questionnaires(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some((k, _)) = query_pairs(&req)?
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_count" | "_format"))
    {
        return Err(ApiError::bad_request(
            IssueType::NotSupported,
            format!("search parameter '{k}' is not supported on Questionnaire"),
        ));
    }
    let mut all = Vec::new();
    for m in MEASURES {
        all.push(questionnaire(&state, m).await?);
    }
    let base = base_url(&state, &req);
    let total = all.len();
    let links = [("self", format!("{base}/Questionnaire"))];
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, all, total),
    ))
}

/// `POST /QuestionnaireResponse`: score the answers (outcomes service) and
/// answer the response with its score as an extension.
async fn submit_questionnaire_response(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use mskflow_proto::outcomes::v1 as opb;
    let (request_id, correlation_id) = request_ids(&req)?;
    check_content_type(&req)?;
    let body = read_body(&state, &req, payload).await?;
    let parsed = mskflow_fhir::parse_questionnaire_response(&body)?;
    visible(&state, &req, parsed.referral_id, "ServiceRequest")?;
    let mut request = tonic::Request::new(opb::SubmitResponseRequest {
        referral_id: parsed.referral_id.to_string(),
        measure: parsed.measure.clone(),
        timepoint: parsed.timepoint.clone(),
        answers: parsed
            .answers
            .iter()
            .map(|(link_id, value)| opb::ItemAnswer {
                link_id: link_id.clone(),
                value: *value,
            })
            .collect(),
        response_id: request_id.to_string(),
        correlation_id: correlation_id.to_string(),
    });
    request.set_timeout(state.intake_timeout);
    let (traceparent, _) = mskflow_telemetry::current_trace_context();
    if let Some(v) = traceparent.and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("traceparent", v);
    }
    let mut client = state.outcomes.clone();
    let scored = client
        .submit_response(request)
        .await
        .map_err(|s| {
            let mut e = from_grpc(&s);
            // Item problems point at the item in FHIR terms.
            for issue in &mut e.issues {
                if let Some(x) = issue.expression.as_mut()
                    && let Some(link) = x
                        .strip_prefix("answers[link_id=")
                        .and_then(|r| r.strip_suffix(']'))
                {
                    *x = format!("QuestionnaireResponse.item.where(linkId='{link}')");
                }
            }
            e
        })?
        .into_inner();
    let mut resource: Value = serde_json::from_slice(&body).unwrap_or_default();
    resource["id"] = serde_json::json!(scored.response_id);
    if let Some(score) = scored.score {
        let mut ext = vec![serde_json::json!({
            "url": "https://fhir.mskflow.org/StructureDefinition/prom-score",
            "valueDecimal": score.value,
        })];
        if let Some(value_set) = &score.value_set {
            ext.push(serde_json::json!({
                "url": EQ5D_VALUE_SET_EXTENSION,
                "valueString": value_set,
            }));
        }
        for change in &scored.changes {
            ext.push(serde_json::json!({
                "url": "https://fhir.mskflow.org/StructureDefinition/prom-change",
                "extension": [
                    {"url": "from", "valueCode": change.from},
                    {"url": "change", "valueDecimal": change.change},
                    {"url": "reachedMinimalImportantChange", "valueBoolean": change.reached_minimal_important_change}
                ]
            }));
        }
        resource["extension"] = Value::Array(ext);
    }
    let base = base_url(&state, &req);
    Ok(HttpResponse::Created()
        .content_type(FHIR_JSON)
        .insert_header((
            header::LOCATION,
            format!("{base}/QuestionnaireResponse/{}", scored.response_id),
        ))
        .body(resource.to_string()))
}

async fn read_encounter(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Encounter")?;
    let principal = crate::auth::principal(&req)?;
    state
        .views
        .read(|v| {
            v.referral(&id)
                .filter(|r| principal.may_see(r))
                .and_then(render::encounter)
                .map(|e| fhir_ok(StatusCode::OK, &e))
        })
        .ok_or_else(|| ApiError::not_found(format!("Encounter/{id} is not known")))
}

async fn message_definitions(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req)?;
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_count" | "_format"))
    {
        return Err(ApiError::bad_request(
            IssueType::NotSupported,
            format!("search parameter '{k}' is not supported on MessageDefinition"),
        ));
    }
    let base = base_url(&state, &req);
    let links = [("self", format!("{base}/MessageDefinition"))];
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, vec![render::message_definition()], 1),
    ))
}

async fn read_message_definition(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let definition = render::message_definition();
    if definition["id"] == path.as_str() {
        Ok(fhir_ok(StatusCode::OK, &definition))
    } else {
        Err(ApiError::not_found(format!(
            "MessageDefinition/{path} is not known"
        )))
    }
}

async fn metadata(state: State, req: HttpRequest) -> HttpResponse {
    fhir_ok(
        StatusCode::OK,
        &render::capability_statement(
            &base_url(&state, &req),
            req.app_data::<web::Data<crate::auth::Authenticator>>()
                .and_then(|a| a.token_url()),
        ),
    )
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(mskflow_telemetry::render_metrics())
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "pass"}))
}

/// Readiness: the event store answers, the views have replayed the log, and
/// they are no further behind it than `max_view_lag` events.
async fn ready(state: State) -> HttpResponse {
    let store = state.log.ping().await;
    let replayed = state.views.is_ready();
    let lag = state.views.lag();
    let caught_up = replayed && lag <= state.max_view_lag;
    let body = serde_json::json!({
        "status": if store.is_ok() && caught_up { "pass" } else { "fail" },
        "checks": {
            "event-store": match &store { Ok(()) => "pass".to_owned(), Err(e) => format!("fail: {e}") },
            "views": if !replayed {
                "fail: replaying".to_owned()
            } else if lag > state.max_view_lag {
                format!("fail: {lag} events behind (threshold {})", state.max_view_lag)
            } else {
                "pass".to_owned()
            },
        },
        "lag": lag,
    });
    if store.is_ok() && caught_up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.path()
    )))
}

async fn not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        format!("{} is not supported on {}", req.method(), req.path()),
    ))
}
