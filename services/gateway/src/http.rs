//! The HTTP edge, at the top of the gateway: the route table
//! ([`configure`]: which handler in [`crate::fhir`] serves each path), the
//! middleware every request passes ([`observe`]: span, metrics, request ids;
//! content negotiation), and the operational endpoints (`/health/*`,
//! `/metrics`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::error::ApiError;
use crate::fhir;
use crate::state::{State, X_CORRELATION_ID, X_REQUEST_ID};

/// The route table: every path the gateway serves, and the handler in
/// [`crate::fhir`] that serves it. Each path answers 405 for a method it
/// does not route; an unknown path answers 404.
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
                    .route(web::get().to(fhir::metadata::metadata))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/$process-message")
                    .route(web::post().to(fhir::messaging::process_message))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest")
                    .route(web::post().to(fhir::service_request::create_service_request))
                    .route(web::get().to(fhir::service_request::search_service_requests))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest/{id}")
                    .route(web::get().to(fhir::service_request::read_service_request))
                    .route(web::put().to(fhir::service_request::update_service_request))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Subscription")
                    .route(web::post().to(fhir::subscription::create))
                    .route(web::get().to(fhir::subscription::search))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Subscription/{id}")
                    .route(web::get().to(fhir::subscription::read))
                    .route(web::delete().to(fhir::subscription::delete))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task")
                    .route(web::get().to(fhir::task::search_tasks))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Appointment")
                    .route(web::get().to(fhir::appointment::search_appointments))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Appointment/{id}")
                    .route(web::get().to(fhir::appointment::read_appointment))
                    .default_service(web::to(not_allowed)),
            )
            .service(web::resource("/Encounter").default_service(web::to(not_allowed)))
            .service(
                web::resource("/QuestionnaireResponse")
                    .route(web::post().to(fhir::questionnaire::submit_questionnaire_response))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Questionnaire")
                    .route(web::get().to(fhir::questionnaire::search_questionnaires))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Questionnaire/{id}")
                    .route(web::get().to(fhir::questionnaire::read_questionnaire))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Schedule")
                    .route(web::get().to(fhir::schedule::search_schedules))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Schedule/{id}")
                    .route(web::get().to(fhir::schedule::read_schedule))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Slot")
                    .route(web::get().to(fhir::schedule::search_slots))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Slot/{id}")
                    .route(web::get().to(fhir::schedule::read_slot))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Encounter/{id}")
                    .route(web::get().to(fhir::encounter::read_encounter))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/MessageDefinition")
                    .route(web::get().to(fhir::messaging::message_definitions))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/MessageDefinition/{id}")
                    .route(web::get().to(fhir::messaging::read_message_definition))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task/{id}/_history")
                    .route(web::get().to(fhir::referral::history))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task/{id}/_history/{vid}")
                    .route(web::get().to(fhir::referral::vread))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest/{id}/_history")
                    .route(web::get().to(fhir::referral::history))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/ServiceRequest/{id}/_history/{vid}")
                    .route(web::get().to(fhir::referral::vread))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Task/{id}")
                    .route(web::get().to(fhir::task::read_task))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient")
                    .route(web::get().to(fhir::patient::search))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient/{id}")
                    .route(web::get().to(fhir::patient::read))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient/{id}/_history")
                    .route(web::get().to(fhir::patient::history))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/Patient/{id}/_history/{vid}")
                    .route(web::get().to(fhir::patient::vread))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/AuditEvent")
                    .route(web::get().to(fhir::audit_event::search))
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
