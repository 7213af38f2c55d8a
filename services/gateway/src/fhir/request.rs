//! What every FHIR handler does with its request and its answer: the base
//! URL, the required request ids, the content type, the body (limited in size
//! and time), ids in paths, query pairs, and the caller's view of a referral.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use mskflow_fhir::IssueType;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::{AppState, BODY_TIMEOUT, FHIR_JSON, X_CORRELATION_ID, X_REQUEST_ID};

/// Renders one view as a FHIR resource.
pub(crate) type Render = fn(&crate::views::ReferralView) -> Value;

pub(crate) fn fhir_ok(status: StatusCode, body: &Value) -> HttpResponse {
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

pub(crate) fn header_uuid(req: &HttpRequest, name: &str) -> Result<Uuid, ApiError> {
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

pub(crate) fn parse_id(raw: &str, resource: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        // The id is echoed only in part: it is whatever the client sent.
        let shown: String = raw.chars().take(64).collect();
        ApiError::not_found(format!("{resource}/{shown} is not known"))
    })
}

pub(crate) fn read_response(resource: &Value, version: u64) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{version}\"")))
        .body(resource.to_string())
}

pub(crate) fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    Ok(
        web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|e| {
                ApiError::bad_request(IssueType::Invalid, format!("invalid query string: {e}"))
            })?
            .into_inner(),
    )
}

/// The referral exists and the caller may see it; otherwise 404, the same
/// answer as for an unknown id (existence is not leaked).
pub(crate) fn visible(
    state: &AppState,
    req: &HttpRequest,
    id: Uuid,
    resource: &str,
) -> Result<(), ApiError> {
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
