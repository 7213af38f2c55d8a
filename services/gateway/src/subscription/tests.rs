use super::*;
use chrono::Utc;
use mskflow_eventlog::{Envelope, new_event};
use mskflow_events::subscription::{
    SubscriptionCreated, SubscriptionDeleted, SubscriptionEvent, SubscriptionStatusEvent, stream_id,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;

fn body(v: &Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn valid() -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "status changes",
        "criteria": TOPIC,
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://gp.example/fhir/notify",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": "full-resource"}]}
        }
    })
}

fn registered() -> Vec<String> {
    vec!["https://gp.example/fhir".to_owned()]
}

/// A change made to a valid Subscription.
type Change = Box<dyn Fn(&mut Value)>;

fn expression(e: &ApiError) -> Option<&str> {
    e.issues.first().and_then(|i| i.expression.as_deref())
}

#[test]
fn a_valid_subscription_is_accepted_with_its_payload_content() -> Result<(), ApiError> {
    let r = parse(&body(&valid()), "A81001", &registered())?;
    assert_eq!(r.payload_content, PayloadContent::FullResource);
    assert_eq!(r.endpoint, "https://gp.example/fhir/notify");
    let mut plain = valid();
    plain["channel"]["_payload"] = Value::Null;
    assert_eq!(
        parse(&body(&plain), "A81001", &registered())?.payload_content,
        PayloadContent::IdOnly
    );
    Ok(())
}

#[test]
fn each_refusal_names_its_element() {
    let cases: Vec<(Change, u16, &str)> = vec![
        (
            Box::new(|v| v["criteria"] = json!("https://other.example/topic")),
            422,
            "Subscription.criteria",
        ),
        (
            Box::new(|v| v["channel"]["type"] = json!("websocket")),
            422,
            "Subscription.channel.type",
        ),
        (
            Box::new(|v| v["channel"]["endpoint"] = json!("https://evil.example/fhir")),
            422,
            "Subscription.channel.endpoint",
        ),
        (
            Box::new(|v| v["channel"]["payload"] = json!("application/fhir+xml")),
            422,
            "Subscription.channel.payload",
        ),
        (
            Box::new(|v| v["criteria"] = Value::Null),
            400,
            "Subscription.criteria",
        ),
        (
            Box::new(
                |v| v["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "ServiceRequest?requester=B99999"}]}),
            ),
            422,
            "Subscription.criteria.extension('backport-filter-criteria')",
        ),
    ];
    for (change, status, at) in cases {
        let mut v = valid();
        change(&mut v);
        match parse(&body(&v), "A81001", &registered()) {
            Ok(_) => panic!("{at} should be refused"),
            Err(e) => {
                assert_eq!(e.status.as_u16(), status, "{at}");
                assert_eq!(expression(&e), Some(at));
            }
        }
    }
}

fn envelope(event: &impl Serialize, sequence: u64) -> Result<Envelope, serde_json::Error> {
    let new = new_event(event, 1, Utc::now())?;
    Ok(Envelope {
        event_id: new.event_id,
        stream_id: stream_id(Uuid::from_u128(5)),
        sequence,
        position: sequence,
        occurred_at: new.occurred_at,
        recorded_at: new.occurred_at,
        causation_id: None,
        correlation_id: Uuid::nil(),
        traceparent: None,
        tracestate: None,
        event_type: new.event_type,
        schema_version: 1,
        payload: new.payload,
    })
}

fn created() -> Result<SubscriptionView, Box<dyn std::error::Error>> {
    let event = SubscriptionEvent::SubscriptionCreated(SubscriptionCreated {
        subscription_id: Uuid::from_u128(5),
        owner_ods: "A81001".to_owned(),
        client_id: "gp".to_owned(),
        topic: TOPIC.to_owned(),
        endpoint: "https://gp.example/fhir/notify".to_owned(),
        payload_content: "id-only".to_owned(),
        filter: None,
        reason: None,
    });
    SubscriptionView::evolve(None, &envelope(&event, 1)?, &event).ok_or("not created".into())
}

#[test]
fn the_status_follows_the_handshake_and_deletion() -> Result<(), Box<dyn std::error::Error>> {
    use mskflow_events::subscription::{SubscriptionActivated, SubscriptionErrored};
    let requested = created()?;
    assert_eq!(render(&requested)["status"], "requested");
    let activated = SubscriptionStatusEvent::SubscriptionActivated(SubscriptionActivated {
        subscription_id: requested.id,
        handshake_id: Uuid::from_u128(6),
        http_status: 200,
    });
    let active = SubscriptionView::evolve_status(
        Some(requested.clone()),
        &envelope(&activated, 2)?,
        &activated,
    )
    .ok_or("gone")?;
    assert_eq!(active.version, 2);
    let shown = render(&active);
    assert_eq!(shown["status"], "active");
    assert!(shown.get("error").is_none());
    let errored = SubscriptionStatusEvent::SubscriptionErrored(SubscriptionErrored {
        subscription_id: requested.id,
        handshake_id: Uuid::from_u128(6),
        http_status: Some(503),
        reason: "handshake failed after 3 attempt(s): receiver answered 503".to_owned(),
    });
    let error = SubscriptionView::evolve_status(Some(requested), &envelope(&errored, 2)?, &errored)
        .ok_or("gone")?;
    let shown = render(&error);
    assert_eq!(shown["status"], "error");
    assert_eq!(
        shown["error"],
        "handshake failed after 3 attempt(s): receiver answered 503"
    );
    let deleted = SubscriptionEvent::SubscriptionDeleted(SubscriptionDeleted {
        subscription_id: error.id,
        client_id: "gp".to_owned(),
    });
    let off =
        SubscriptionView::evolve(Some(error), &envelope(&deleted, 3)?, &deleted).ok_or("gone")?;
    assert_eq!(off.status_code(), "off");
    assert!(
        SubscriptionView::evolve_status(None, &envelope(&activated, 1)?, &activated).is_none(),
        "an outcome without a creation is nothing"
    );
    Ok(())
}

#[test]
fn the_handshake_has_the_backport_shape() -> Result<(), Box<dyn std::error::Error>> {
    let s = created()?;
    let id = Uuid::from_u128(9);
    let bundle = handshake("https://gw.example/fhir", &s, Utc::now(), id);
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["meta"]["profile"][0], NOTIFICATION_PROFILE);
    let entries = bundle["entry"].as_array().ok_or("no entries")?;
    assert_eq!(entries.len(), 1, "no focus entries");
    let status = &entries[0]["resource"];
    assert_eq!(status["resourceType"], "Parameters");
    assert_eq!(status["meta"]["profile"][0], STATUS_PROFILE);
    let value = |name: &str, key: &str| {
        status["parameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map(|p| p[key].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(value("type", "valueCode"), "handshake");
    assert_eq!(value("status", "valueCode"), "requested");
    assert_eq!(value("events-since-subscription-start", "valueString"), "0");
    assert_eq!(value("topic", "valueCanonical"), TOPIC);
    assert_eq!(
        value("subscription", "valueReference")["reference"],
        format!("https://gw.example/fhir/Subscription/{}", s.id)
    );
    assert_eq!(value("notification-event", "part"), Value::Null);
    assert_eq!(
        entries[0]["request"]["url"],
        format!("https://gw.example/fhir/Subscription/{}/$status", s.id)
    );
    Ok(())
}

#[test]
fn the_own_organisation_filter_is_kept() -> Result<(), ApiError> {
    let mut v = valid();
    v["_criteria"] = json!({"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "ServiceRequest?requester=Organization/a81001"}]});
    let r = parse(&body(&v), "A81001", &registered())?;
    assert_eq!(
        r.filter.as_deref(),
        Some("ServiceRequest?requester=Organization/a81001")
    );
    Ok(())
}
