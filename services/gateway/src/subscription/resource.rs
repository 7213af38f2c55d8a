//! A Subscription as FHIR: the resource, the parsing of one a client posts,
//! and the notification and handshake Bundles sent to its endpoint.

use actix_web::http::StatusCode;
use chrono::{DateTime, Utc};
use mskflow_fhir::IssueType;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;
use crate::views::ReferralView;

use crate::subscription::model::*;

/// The R4 Subscription resource.
pub fn render(s: &SubscriptionView) -> Value {
    let mut resource = json!({
        "resourceType": "Subscription",
        "id": s.id.to_string(),
        "meta": {
            "versionId": s.version.to_string(),
            "lastUpdated": s.last_updated.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "profile": [SUBSCRIPTION_PROFILE],
        },
        "status": s.status_code(),
        "reason": s.reason.clone().unwrap_or_else(|| "Referral status changes".to_owned()),
        "criteria": s.topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": s.endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": s.payload_content.code()}]},
        },
    });
    if let Some(error) = &s.error {
        resource["error"] = json!(error);
    }
    if let Some(filter) = &s.filter {
        resource["_criteria"] =
            json!({"extension": [{"url": FILTER_CRITERIA_URL, "valueString": filter}]});
    }
    resource
}

/// What a `POST /Subscription` asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub endpoint: String,
    pub payload_content: PayloadContent,
    pub filter: Option<String>,
    pub reason: Option<String>,
}

pub(crate) fn unprocessable(code: IssueType, diagnostics: impl Into<String>, at: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, diagnostics).at(at)
}

pub(crate) fn extension_value<'a>(element: &'a Value, url: &str, key: &str) -> Option<&'a Value> {
    element["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
        .map(|e| &e[key])
}

/// Check a Subscription from a client against what this server offers.
///
/// Missing elements are 400 `required`; values this server does not offer
/// are 422 (`not-supported`, `value`), each naming the element.
pub fn parse(body: &[u8], owner_ods: &str, registered: &[String]) -> Result<Requested, ApiError> {
    let resource: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            IssueType::Structure,
            format!(
                "the body is not JSON: {}",
                mskflow_eventlog::json_error_reason(&e)
            ),
        )
    })?;
    if resource["resourceType"] != "Subscription" {
        return Err(ApiError::bad_request(
            IssueType::Invalid,
            "the body must be a Subscription resource",
        )
        .at("Subscription.resourceType"));
    }
    let required =
        |at: &str| ApiError::bad_request(IssueType::Required, format!("{at} is required")).at(at);
    let criteria = resource["criteria"]
        .as_str()
        .ok_or_else(|| required("Subscription.criteria"))?;
    let channel = &resource["channel"];
    let channel_type = channel["type"]
        .as_str()
        .ok_or_else(|| required("Subscription.channel.type"))?;
    if criteria != TOPIC {
        return Err(unprocessable(
            IssueType::NotSupported,
            format!("unknown subscription topic; this server offers only {TOPIC}"),
            "Subscription.criteria",
        ));
    }
    if channel_type != "rest-hook" {
        return Err(unprocessable(
            IssueType::NotSupported,
            "only the rest-hook channel is supported",
            "Subscription.channel.type",
        ));
    }
    let endpoint = channel["endpoint"]
        .as_str()
        .ok_or_else(|| required("Subscription.channel.endpoint"))?;
    if !registered.iter().any(|r| endpoint.starts_with(r.as_str())) {
        return Err(unprocessable(
            IssueType::Value,
            "the endpoint is not a registered referrer endpoint",
            "Subscription.channel.endpoint",
        ));
    }
    match channel["payload"].as_str() {
        None | Some("application/fhir+json") => {}
        Some(_) => {
            return Err(unprocessable(
                IssueType::NotSupported,
                "notifications are sent as application/fhir+json only",
                "Subscription.channel.payload",
            ));
        }
    }
    let payload_content =
        match extension_value(&channel["_payload"], PAYLOAD_CONTENT_URL, "valueCode") {
            None => PayloadContent::IdOnly,
            Some(v) => v.as_str().and_then(PayloadContent::parse).ok_or_else(|| {
                unprocessable(
                    IssueType::CodeInvalid,
                    "payload content must be empty, id-only or full-resource",
                    "Subscription.channel.payload.extension('backport-payload-content')",
                )
            })?,
        };
    let filter = match extension_value(&resource["_criteria"], FILTER_CRITERIA_URL, "valueString") {
        None => None,
        Some(v) => Some(parse_filter(v.as_str().unwrap_or_default(), owner_ods)?),
    };
    Ok(Requested {
        endpoint: endpoint.to_owned(),
        payload_content,
        filter,
        reason: resource["reason"].as_str().map(str::to_owned),
    })
}

/// The one filter supported: the subscriber's own organisation, as
/// `ServiceRequest?requester=ODS` or `Task?owner=ODS` (optionally as
/// `Organization/ODS`). Every subscription is limited to it anyway.
pub(crate) fn parse_filter(raw: &str, owner_ods: &str) -> Result<String, ApiError> {
    let refused = || {
        unprocessable(
            IssueType::NotSupported,
            format!(
                "the only filter supported is the subscriber's own organisation: ServiceRequest?requester={owner_ods} or Task?owner={owner_ods}"
            ),
            "Subscription.criteria.extension('backport-filter-criteria')",
        )
    };
    let value = raw
        .strip_prefix("ServiceRequest?requester=")
        .or_else(|| raw.strip_prefix("Task?owner="))
        .ok_or_else(refused)?;
    let ods = value.strip_prefix("Organization/").unwrap_or(value);
    if ods.eq_ignore_ascii_case(owner_ods) {
        Ok(raw.to_owned())
    } else {
        Err(refused())
    }
}

/// A notification: a `history` Bundle whose first entry is the backport
/// subscription status (`Parameters`), then the Task for `full-resource`.
pub fn notification(
    base: &str,
    s: &SubscriptionView,
    events_since_start: u64,
    referral: &ReferralView,
    occurred_at: DateTime<Utc>,
    bundle_id: Uuid,
) -> Value {
    let task_url = format!("{base}/Task/{}", referral.referral_id);
    let mut event = vec![
        json!({"name": "event-number", "valueString": events_since_start.to_string()}),
        json!({"name": "timestamp", "valueInstant": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
    ];
    if s.payload_content != PayloadContent::Empty {
        event.push(json!({"name": "focus", "valueReference": {"reference": task_url}}));
    }
    let mut entries = vec![status_entry(
        base,
        s,
        bundle_id,
        ("active", "event-notification"),
        events_since_start,
        Some(event),
    )];
    match s.payload_content {
        PayloadContent::Empty => {}
        PayloadContent::IdOnly => entries.push(json!({
            "fullUrl": task_url,
            "request": {"method": "PUT", "url": format!("Task/{}", referral.referral_id)},
            "response": {"status": "200"},
        })),
        PayloadContent::FullResource => entries.push(json!({
            "fullUrl": task_url,
            "resource": crate::render::task(referral),
            "request": {"method": "PUT", "url": format!("Task/{}", referral.referral_id)},
            "response": {"status": "200", "etag": format!("W/\"{}\"", referral.task_version())},
        })),
    }
    history_bundle(bundle_id, occurred_at, entries)
}

/// The handshake: a `history` Bundle whose only entry is the status
/// `Parameters` with `type` `handshake`, `status` `requested` and
/// `events-since-subscription-start` 0 (no notification event, no focus).
pub fn handshake(base: &str, s: &SubscriptionView, at: DateTime<Utc>, bundle_id: Uuid) -> Value {
    let status = status_entry(base, s, bundle_id, ("requested", "handshake"), 0, None);
    history_bundle(bundle_id, at, vec![status])
}

/// The Bundle entry holding the backport subscription status `Parameters`:
/// the subscription, its topic, (`status`, `type`), the event count and,
/// for an event notification, the `notification-event` parts.
pub(crate) fn status_entry(
    base: &str,
    s: &SubscriptionView,
    bundle_id: Uuid,
    (status, kind): (&str, &str),
    events_since_start: u64,
    event: Option<Vec<Value>>,
) -> Value {
    let mut parameter = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{}", s.id)}}),
        json!({"name": "topic", "valueCanonical": s.topic}),
        json!({"name": "status", "valueCode": status}),
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "events-since-subscription-start", "valueString": events_since_start.to_string()}),
    ];
    if let Some(event) = event {
        parameter.push(json!({"name": "notification-event", "part": event}));
    }
    json!({
        "fullUrl": format!("urn:uuid:{bundle_id}"),
        "resource": {
            "resourceType": "Parameters",
            "id": bundle_id.to_string(),
            "meta": {"profile": [STATUS_PROFILE]},
            "parameter": parameter,
        },
        "request": {"method": "GET", "url": format!("{base}/Subscription/{}/$status", s.id)},
        "response": {"status": "200"},
    })
}

/// A notification Bundle (`history`, the backport notification profile).
pub(crate) fn history_bundle(bundle_id: Uuid, at: DateTime<Utc>, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": bundle_id.to_string(),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "entry": entries,
    })
}
