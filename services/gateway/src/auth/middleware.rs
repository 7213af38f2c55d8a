//! The middlewares on `/fhir` (authenticate, authorise the route's scope,
//! check the NHSD headers, record the access on the audit trail) and on
//! `/analytics`.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, ResponseError as _, web};
use mskflow_fhir::IssueType;

use crate::error::ApiError;

use crate::auth::nhsd::NhsdHeaders;
use crate::auth::token::{Access, Authenticator, InvalidToken, Principal};

/// What a request under `/fhir` needs: the resource type and access, or
/// `None` for open endpoints (`/fhir/metadata`).
pub fn requirement(method: &actix_web::http::Method, path: &str) -> Option<(String, Access)> {
    use actix_web::http::Method;
    let rest = path.strip_prefix("/fhir")?.trim_start_matches('/');
    let mut segments = rest.split('/').filter(|s| !s.is_empty());
    let resource = segments.next().unwrap_or_default();
    if resource == "metadata" {
        return None;
    }
    if resource == "$process-message" {
        return Some(("ServiceRequest".to_owned(), Access::Create));
    }
    let has_id = segments.next().is_some();
    let access = match *method {
        Method::GET | Method::HEAD if has_id => Access::Read,
        Method::GET | Method::HEAD => Access::Search,
        Method::POST => Access::Create,
        Method::PUT | Method::PATCH => Access::Update,
        Method::DELETE => Access::Delete,
        _ => Access::Read,
    };
    Some((resource.to_owned(), access))
}

pub(crate) fn allowed(principal: &Principal, resource: &str, access: Access) -> bool {
    if resource == "ServiceRequest" && access == Access::Create {
        // `$process-message` and ServiceRequest create: a referral message
        // may be granted as ServiceRequest or as Bundle writes.
        return principal.allows("ServiceRequest", access) || principal.allows("Bundle", access);
    }
    principal.allows(resource, access)
}

/// The 401 answer: `WWW-Authenticate` and an OperationOutcome (`login`,
/// `REC_UNAUTHORIZED`).
pub fn unauthorized(reason: &str) -> actix_web::HttpResponse {
    let error = ApiError::new(StatusCode::UNAUTHORIZED, IssueType::Login, reason);
    let mut res = error.error_response();
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        reason.replace(['"', '\\'], "")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The middleware on `/fhir`: authenticate, authorise the route's scope,
/// validate the NHSD headers, then record the access on the audit stream.
pub async fn authorise(
    req: actix_web::dev::ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some((resource, access)) = requirement(req.method(), req.path()) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        let e = ApiError::internal("authentication is not configured");
        return Ok(req.into_response(e.error_response()));
    };
    let recorder = req.app_data::<web::Data<crate::audit::Recorder>>().cloned();
    let mut record = crate::audit::Pending::of(&req);
    // Decoded leniently for the audit record even where not validated.
    let nhsd = NhsdHeaders::parse(req.headers());
    if let Ok(h) = &nhsd {
        record.nhsd(h);
    }
    let res = match authenticate(&auth, &req) {
        Err(InvalidToken(reason)) => req.into_response(unauthorized(&reason)),
        Ok(principal) => {
            record.principal(&principal);
            if !allowed(&principal, &resource, access) {
                req.into_response(forbidden(&resource, access))
            } else if let (true, Err(e)) = (resource_is_message(req.path()), &nhsd) {
                req.into_response(e.error_response())
            } else {
                req.extensions_mut().insert(principal);
                if let Ok(h) = nhsd {
                    req.extensions_mut().insert(h);
                }
                next.call(req).await?.map_into_boxed_body()
            }
        }
    };
    match recorder {
        Some(recorder) if record.is_patient_data() => Ok(recorder.finish(record, res).await),
        _ => Ok(res),
    }
}

/// The caller named by the request's bearer token.
pub(crate) fn authenticate(
    auth: &Authenticator,
    req: &actix_web::dev::ServiceRequest,
) -> Result<Principal, InvalidToken> {
    match bearer(req.headers()) {
        None => Err(InvalidToken("an access token is required".to_owned())),
        Some(token) => auth.verify(token),
    }
}

/// The 403 answer for a token whose scopes do not grant `access` on
/// `resource` (`forbidden`, `REC_FORBIDDEN`).
pub(crate) fn forbidden(resource: &str, access: Access) -> actix_web::HttpResponse {
    let verb = match access {
        Access::Create => "create",
        Access::Read => "read",
        Access::Update => "update",
        Access::Delete => "delete",
        Access::Search => "search",
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        IssueType::Forbidden,
        format!("the access token's scopes do not allow {verb} on {resource}"),
    )
    .error_response()
}

/// What the analytics views are granted as: `system/Analytics.read` (or a
/// wildcard such as `system/*.read`).
pub const ANALYTICS_RESOURCE: &str = "Analytics";

/// The middleware on `/analytics`: the aggregate views need a valid token
/// whose scopes allow reading [`ANALYTICS_RESOURCE`]. They hold no patient
/// data, so the access is not audited and no NHSD headers are required.
pub async fn authorise_analytics(
    req: actix_web::dev::ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        let e = ApiError::internal("authentication is not configured");
        return Ok(req.into_response(e.error_response()));
    };
    match authenticate(&auth, &req) {
        Err(InvalidToken(reason)) => Ok(req.into_response(unauthorized(&reason))),
        Ok(principal) if !principal.allows(ANALYTICS_RESOURCE, Access::Read) => {
            Ok(req.into_response(forbidden(ANALYTICS_RESOURCE, Access::Read)))
        }
        Ok(_) => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}

pub(crate) fn resource_is_message(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/$process-message")
}
