//! `GET /fhir/AuditEvent`: the audit trail ([`crate::audit`]) searched by
//! date, agent and entity, newest first; the provider role only.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use mskflow_events::audit::{AuditEvent, AuditRecorded, audit_stream};
use mskflow_fhir::IssueType;
use serde_json::{Value, json};

use crate::audit::render;
use crate::error::ApiError;

/// A `date` search bound, as an instant range.
fn date_bounds(raw: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let bad = || {
        ApiError::bad_request(
            IssueType::Invalid,
            format!(
                "date '{raw}' is not a date (YYYY-MM-DD) or instant, with an optional prefix eq, ge, gt, le, lt"
            ),
        )
        .at("date")
    };
    let (prefix, value) = match raw.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &raw[2..]),
        _ => ("eq", raw),
    };
    let (start, end) = if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let start = day.and_time(NaiveTime::MIN).and_utc();
        let end = day
            .checked_add_days(Days::new(1))
            .ok_or_else(bad)?
            .and_time(NaiveTime::MIN)
            .and_utc();
        (start, end)
    } else {
        let at = DateTime::parse_from_rfc3339(value)
            .map_err(|_| bad())?
            .with_timezone(&Utc);
        (at, at + chrono::Duration::milliseconds(1))
    };
    Ok(match prefix {
        "ge" => (start, DateTime::<Utc>::MAX_UTC),
        "gt" => (end, DateTime::<Utc>::MAX_UTC),
        "le" => (DateTime::<Utc>::MIN_UTC, end),
        "lt" => (DateTime::<Utc>::MIN_UTC, start),
        _ => (start, end),
    })
}

/// Days searched when no `date` is given.
pub const DEFAULT_DAYS: u64 = 7;

/// How far back a search reaches (ten years).
pub const MAX_DAYS: i64 = 3660;

/// `GET /fhir/AuditEvent?date=&agent=&entity=&_count=`: newest first.
/// Needs scope `AuditEvent` read (the middleware) and the provider role.
pub async fn search(
    state: web::Data<crate::state::AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let principal = crate::auth::principal(&req)?;
    if !principal.provider {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "the audit trail is open to the provider role only",
        ));
    }
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| {
            ApiError::bad_request(IssueType::Invalid, format!("invalid query string: {e}"))
        })?
        .into_inner();
    let now = Utc::now();
    let (mut from, mut to) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    let mut dated = false;
    let mut agents = Vec::new();
    let mut entities = Vec::new();
    let mut count = 100usize;
    for (k, v) in &pairs {
        match k.as_str() {
            "date" => {
                let (lo, hi) = date_bounds(v)?;
                from = from.max(lo);
                to = to.min(hi);
                dated = true;
            }
            "agent" => agents.extend(v.split(',').map(str::to_owned)),
            "entity" => entities.extend(v.split(',').map(str::to_owned)),
            "_count" => {
                count = v.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(IssueType::Invalid, "_count must be a number")
                })?;
                count = count.min(1000);
            }
            "_format" => {}
            other => {
                return Err(ApiError::bad_request(
                    IssueType::NotSupported,
                    format!(
                        "search parameter '{other}' is not supported on AuditEvent (supported: date, agent, entity, _count)"
                    ),
                ));
            }
        }
    }
    if !dated {
        from = now - chrono::Duration::days(DEFAULT_DAYS as i64 - 1);
        from = from.date_naive().and_time(NaiveTime::MIN).and_utc();
    }
    // Only days that can hold records: none are written in the future, and
    // an open lower bound reaches back `MAX_DAYS` (reading a day without
    // records is one index lookup).
    let first_day = from
        .max(now - chrono::Duration::days(MAX_DAYS))
        .date_naive();
    let last_day = to.min(now + chrono::Duration::days(1)).date_naive();
    let mut matched: Vec<AuditRecorded> = Vec::new();
    let mut day = first_day;
    while day <= last_day {
        let stream = audit_stream(day);
        let events = state
            .log
            .read_stream(&stream, 1)
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot read the audit trail: {e}")))?;
        for e in events {
            let Ok(AuditEvent::AuditRecorded(r)) = mskflow_eventlog::decode::<AuditEvent>(&e)
            else {
                continue;
            };
            let in_range = r.recorded >= from && r.recorded < to;
            let agent_ok = agents.is_empty()
                || r.agent
                    .client_id
                    .as_ref()
                    .is_some_and(|c| agents.iter().any(|a| a == c));
            let entity_ok = entities.is_empty()
                || entities.iter().any(|wanted| {
                    r.resource_ids
                        .iter()
                        .any(|id| id == wanted || id.rsplit('/').next() == Some(wanted.as_str()))
                });
            if in_range && agent_ok && entity_ok {
                matched.push(r);
            }
        }
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    matched.sort_by_key(|r| std::cmp::Reverse(r.recorded));
    let total = matched.len();
    let base = crate::fhir::request::base_url(&state, &req);
    let entries: Vec<Value> = matched
        .iter()
        .take(count)
        .map(|r| {
            json!({
                "fullUrl": format!("{base}/AuditEvent/{}", r.audit_id),
                "resource": render(r),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let body = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": format!("{base}/AuditEvent?{}", req.query_string())}],
        "entry": entries,
    });
    Ok(HttpResponse::Ok()
        .content_type(crate::state::FHIR_JSON)
        .body(body.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn date_prefixes() {
        let (lo, hi) = date_bounds("2026-11-23").unwrap();
        assert_eq!(lo.to_rfc3339(), "2026-11-23T00:00:00+00:00");
        assert_eq!(hi.to_rfc3339(), "2026-11-24T00:00:00+00:00");
        let (lo, _) = date_bounds("gt2026-11-23").unwrap();
        assert_eq!(lo.to_rfc3339(), "2026-11-24T00:00:00+00:00");
        let (_, hi) = date_bounds("lt2026-11-23T10:00:00Z").unwrap();
        assert_eq!(hi.to_rfc3339(), "2026-11-23T10:00:00+00:00");
        assert!(date_bounds("yesterday").is_err());
    }
}
