//! What a referral's `Task` and `ServiceRequest` share: the search that
//! answers a `searchset` Bundle with paging links, and the history rebuilt
//! from the log (`_history`, vread).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::fhir::request::{
    Render, base_url, fhir_ok, parse_id, query_pairs, read_response, visible,
};
use crate::state::{AppState, State};
use crate::{render, search};

/// Run a search and answer a `searchset` Bundle with paging links. A
/// ServiceRequest page reads its referrals as sent back from the log.
pub(crate) async fn search(
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

/// Every version of a referral's resource, rebuilt from the log: version
/// `v` is the state after the first `v` events. A Task's versions include the
/// assessment and rehabilitation streams' events; a ServiceRequest's only the
/// referral's.
pub(crate) async fn versions(
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

pub(crate) fn history_path(path: &str) -> Result<(&'static str, Render), ApiError> {
    if path.contains("/Task/") {
        Ok(("Task", render::task))
    } else if path.contains("/ServiceRequest/") {
        Ok(("ServiceRequest", render::service_request))
    } else {
        Err(ApiError::not_found(format!("no history at {path}")))
    }
}

/// `GET /{type}/{id}/_history`: a `history` Bundle, newest first.
pub(crate) async fn history(
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
pub(crate) async fn vread(
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
