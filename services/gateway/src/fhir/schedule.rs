//! `Schedule` and `Slot`: the classes and clinicians' 1:1 slots, from the
//! capacity view.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::Value;

use crate::error::ApiError;
use crate::fhir::request::{base_url, fhir_ok, parse_id, query_pairs};
use crate::state::State;
use crate::{render, search};

/// Every Schedule: one per class, one per clinician with 1:1 slots.
pub(crate) fn all_schedules(capacity: &crate::views::Capacity) -> Vec<Value> {
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
pub(crate) fn all_slots(capacity: &crate::views::Capacity) -> Vec<Value> {
    let mut out: Vec<Value> = capacity
        .classes
        .values()
        .flat_map(render::class_slots)
        .collect();
    out.extend(capacity.slots.values().map(render::rehab_slot));
    out
}

pub(crate) async fn read_schedule(
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
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

pub(crate) async fn search_schedules(
    state: State,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
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

pub(crate) async fn read_slot(
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
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

pub(crate) async fn search_slots(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
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
