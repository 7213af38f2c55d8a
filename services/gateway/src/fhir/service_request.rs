//! `ServiceRequest`: create (conditional on `If-None-Exist`), read, search,
//! and update (the referrer's cancellation, `If-Match` honoured); the answer
//! to a write is shaped by `Prefer`.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::fhir::intake::{cancel_referral, submit};
use crate::fhir::referral::search;
use crate::fhir::request::{
    base_url, check_content_type, parse_id, read_body, read_response, request_ids, visible,
    with_sent,
};
use crate::state::{AppState, FHIR_JSON, State};
use crate::{render, search};

/// `If-Match: W/"n"` (or `"n"`): the version an update is made against;
/// `None` without the header or for `*`.
pub(crate) fn if_match(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
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
pub(crate) const UPDATE_IGNORED: &[&str] = &["id", "meta", "text", "status"];

/// `PUT /ServiceRequest/{id}`: the only change accepted is the referrer's
/// cancellation (`status` `revoked` or `entered-in-error`), through the same
/// path as the `update` message. `If-Match` is honoured (412 on a stale
/// version); the answer is shaped by `Prefer` like a create's.
pub(crate) async fn update_service_request(
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
pub(crate) fn stale(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        IssueType::Conflict,
        format!("ServiceRequest/{id} has changed since the version in If-Match; read it again"),
    )
    .at("ServiceRequest.meta.versionId")
}

/// `Prefer: return=minimal | representation | OperationOutcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

pub(crate) fn prefer_return(req: &HttpRequest) -> Return {
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
pub(crate) fn created(
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
pub(crate) fn existing_for(
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

pub(crate) async fn create_service_request(
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

pub(crate) async fn read_service_request(
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

pub(crate) async fn search_service_requests(
    state: State,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    search(
        &state,
        &req,
        search::Resource::ServiceRequest,
        render::service_request,
    )
    .await
}
