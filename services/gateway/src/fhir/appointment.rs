//! `Appointment`: FCP and rehabilitation appointments of a referral.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::Value;

use crate::error::ApiError;
use crate::fhir::request::{base_url, fhir_ok, parse_id, query_pairs};
use crate::state::State;
use crate::{render, search};

pub(crate) async fn read_appointment(
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

pub(crate) async fn search_appointments(
    state: State,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
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
