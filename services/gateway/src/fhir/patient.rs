//! `Patient`: the patient exactly as the referrer sent them.
//!
//! The gateway keeps no patient record of its own: each referral carries its
//! Patient as sent (in `ReferralDetails::fhir_json` on its `ReferralReceived`
//! event, read back from the log: see [`crate::sent`]). The `Patient/{id}`
//! view gathers every referral that carried the same NHS number, in the order
//! received: version `n` is the Patient as the `n`-th of them sent it, and the
//! id is the id of the first (ids are never derived from the NHS number).
//! A caller sees only the versions carried by referrals it may see; a Patient
//! with none answers 404, as an unknown id does.
//!
//! Routes: `GET /Patient/{id}`, `GET /Patient/{id}/_history`,
//! `GET /Patient/{id}/_history/{vid}` and `GET /Patient?identifier=…&_id=…`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::fhir::request::{base_url, with_sent};
use crate::state::{AppState, FHIR_JSON};
use crate::views::{ReferralView, Views};
use crate::{render, search};

/// The Patient id in a path; an id that is not a UUID is simply not known.
fn patient_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_known(raw))
}

fn not_known(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("Patient/{id} is not known"))
}

/// The versions of a Patient (1-based, over every referral that carried
/// them) that `principal` may see.
fn visible<'a>(
    versions: Vec<&'a ReferralView>,
    principal: &Principal,
) -> Vec<(usize, &'a ReferralView)> {
    versions
        .into_iter()
        .enumerate()
        .map(|(i, view)| (i + 1, view))
        .filter(|(_, view)| principal.may_see(view))
        .collect()
}

fn versions_of<'a>(
    views: &'a Views,
    id: &Uuid,
    principal: &Principal,
) -> Vec<(usize, &'a ReferralView)> {
    views
        .patient(id)
        .map(|all| visible(all, principal))
        .unwrap_or_default()
}

fn resource_response(resource: &Value, version: usize, view: &ReferralView) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((header::ETAG, format!("W/\"{version}\"")))
        .insert_header((header::LAST_MODIFIED, view.created.to_rfc2822()))
        .body(resource.to_string())
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

/// `GET /Patient/{id}`: the latest version the caller may see.
pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = patient_id(&path)?;
    let principal = crate::auth::principal(&req)?;
    let latest = state.views.read(|views| {
        versions_of(views, &id, &principal)
            .last()
            .map(|(n, view)| (*n, (*view).clone()))
    });
    let (n, view) = latest.ok_or_else(|| not_known(id))?;
    let view = with_sent(&state, view).await?;
    Ok(resource_response(&render::patient(id, n, &view), n, &view))
}

/// `GET /Patient/{id}/_history/{vid}`: one version (vread).
pub async fn vread(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, raw_version) = path.into_inner();
    let id = patient_id(&raw_id)?;
    let principal = crate::auth::principal(&req)?;
    let version: usize = raw_version.parse().map_err(|_| {
        ApiError::not_found(format!(
            "Patient/{id}/_history/{raw_version} is not a version"
        ))
    })?;
    let (n, view) = state.views.read(|views| {
        let versions = versions_of(views, &id, &principal);
        if versions.is_empty() {
            return Err(not_known(id));
        }
        versions
            .into_iter()
            .find(|(n, _)| *n == version)
            .map(|(n, view)| (n, view.clone()))
            .ok_or_else(|| ApiError::not_found(format!("Patient/{id} has no version {version}")))
    })?;
    let view = with_sent(&state, view).await?;
    Ok(resource_response(&render::patient(id, n, &view), n, &view))
}

/// `GET /Patient/{id}/_history`: a `history` Bundle, newest first.
pub async fn history(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = patient_id(&path)?;
    let principal = crate::auth::principal(&req)?;
    let base = base_url(&state, &req);
    let versions: Vec<(usize, ReferralView)> = state.views.read(|views| {
        versions_of(views, &id, &principal)
            .into_iter()
            .rev()
            .map(|(n, view)| (n, view.clone()))
            .collect()
    });
    let mut entries: Vec<Value> = Vec::with_capacity(versions.len());
    for (n, view) in versions {
        let view = with_sent(&state, view).await?;
        entries.push(json!({
            "fullUrl": format!("{base}/Patient/{id}"),
            "resource": render::patient(id, n, &view),
            "request": {"method": if n <= 1 { "POST" } else { "PUT" }, "url": format!("Patient/{id}")},
            "response": {"status": if n <= 1 { "201" } else { "200" }, "etag": format!("W/\"{n}\"")},
        }));
    }
    if entries.is_empty() {
        return Err(not_known(id));
    }
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(
        json!({
            "resourceType": "Bundle",
            "type": "history",
            "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{base}/Patient/{id}/_history")}],
            "entry": entries,
        })
        .to_string(),
    ))
}

/// `GET /Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|…`: a
/// `searchset` of the latest visible version of each matching Patient.
pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req)?;
    let search = search::PatientSearch::parse(&pairs)
        .map_err(|e| ApiError::bad_request(IssueType::NotSupported, e.0))?;
    let principal = crate::auth::principal(&req)?;
    let base = base_url(&state, &req);
    let (total, page) = state.views.read(|views| {
        let matched: Vec<(Uuid, usize, &ReferralView)> = search
            .run(views)
            .into_iter()
            .filter_map(|all| {
                let id = all.first()?.referral_id;
                let (n, latest) = visible(all, &principal).pop()?;
                Some((id, n, latest))
            })
            .collect();
        let total = matched.len();
        let page: Vec<(Uuid, usize, ReferralView)> = matched
            .into_iter()
            .skip(search.offset)
            .take(search.count)
            .map(|(id, n, view)| (id, n, view.clone()))
            .collect();
        (total, page)
    });
    let mut rendered = Vec::with_capacity(page.len());
    for (id, n, view) in page {
        let view = with_sent(&state, view).await?;
        rendered.push(render::patient(id, n, &view));
    }
    let page = rendered;
    let link = |offset: usize| format!("{base}/Patient?{}", search::with_offset(&pairs, offset));
    let mut links = vec![("self", link(search.offset)), ("first", link(0))];
    if search.offset > 0 {
        links.push(("previous", link(search.offset.saturating_sub(search.count))));
    }
    if search.count > 0 && search.offset + search.count < total {
        links.push(("next", link(search.offset + search.count)));
    }
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(render::searchset(&base, &links, page, total).to_string()))
}
