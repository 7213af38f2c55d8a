use super::*;
use chrono::TimeZone;
use mskflow_events::intake::{PatientDetails, ReferralReceived, ReferralTriaged, Sender};
use mskflow_events::types::{FcpPriority, Pathway};
use mskflow_events::types::{NhsNumber, ReceivedVia, RequestPriority};

fn details() -> Result<ReferralDetails, mskflow_events::types::Error> {
    Ok(ReferralDetails {
        received_via: ReceivedVia::ProcessMessage,
        sender: Sender {
            ods_code: None,
            endpoint: None,
            message_id: None,
            software: None,
        },
        service_request_identifier: None,
        patient: PatientDetails {
            nhs_number: Some(NhsNumber::parse("9434765919")?),
            family: None,
            given: vec![],
            birth_date: None,
            sex: None,
            postcode: None,
            ethnicity: None,
        },
        requester: None,
        reason: vec![],
        body_site: vec![],
        requested_priority: RequestPriority::Routine,
        red_flags: vec![],
        start_back: None,
        note: None,
        authored_on: None,
        fhir_json: "{}".to_owned(),
    })
}

fn envelope(
    event: &IntakeEvent,
    referral: Uuid,
    sequence: u64,
    position: u64,
) -> Result<Envelope, serde_json::Error> {
    let at = Utc
        .timestamp_opt(1_700_000_000 + position as i64, 0)
        .single()
        .unwrap_or_default();
    let new = mskflow_eventlog::new_event(event, 1, at)?;
    Ok(Envelope {
        event_id: new.event_id,
        stream_id: format!("referral-{referral}"),
        sequence,
        position,
        occurred_at: at,
        recorded_at: at,
        causation_id: None,
        correlation_id: Uuid::nil(),
        traceparent: None,
        tracestate: None,
        event_type: new.event_type,
        schema_version: 1,
        payload: new.payload,
    })
}

fn log() -> Result<Vec<Envelope>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for i in 0..5u64 {
        let id = Uuid::from_u128(u128::from(i) + 1);
        out.push(envelope(
            &IntakeEvent::ReferralReceived(ReferralReceived {
                referral_id: id,
                request_id: id,
                referral: details()?,
            }),
            id,
            1,
            i * 2 + 1,
        )?);
        out.push(envelope(
            &IntakeEvent::ReferralTriaged(ReferralTriaged {
                referral_id: id,
                rule_set_version: "1".into(),
                rule_id: "default".into(),
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                start_back: None,
                reasons: vec![],
            }),
            id,
            2,
            i * 2 + 2,
        )?);
    }
    Ok(out)
}

#[test]
fn the_referral_as_sent_stays_in_the_log_not_in_the_views() -> Result<(), Box<dyn std::error::Error>>
{
    let id = Uuid::from_u128(42);
    let sent = r#"{"resourceType":"Bundle","type":"message"}"#;
    let received = envelope(
        &IntakeEvent::ReferralReceived(ReferralReceived {
            referral_id: id,
            request_id: id,
            referral: ReferralDetails {
                fhir_json: sent.to_owned(),
                ..details()?
            },
        }),
        id,
        1,
        1,
    )?;
    let mut views = Views::default();
    views.apply(&received)?;
    let view = views.referral(&id).ok_or("missing")?;
    assert!(view.details.fhir_json.is_empty());
    assert_eq!(
        crate::sent::from_events(std::slice::from_ref(&received)).as_deref(),
        Some(sent)
    );
    Ok(())
}

#[test]
fn replay_from_empty_gives_identical_views_and_redelivery_changes_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    let events = log()?;
    let mut live = Views::default();
    for e in &events {
        assert!(live.apply(e)?);
    }
    // At-least-once delivery: everything again is a no-op.
    let before = live.clone();
    for e in &events {
        assert!(!live.apply(e)?);
    }
    assert_eq!(live, before);
    let mut replayed = Views::default();
    for e in &events {
        replayed.apply(e)?;
    }
    assert_eq!(replayed, live);
    assert_eq!(replayed.len(), 5);
    let first = replayed.referral(&Uuid::from_u128(1)).ok_or("missing")?;
    assert_eq!((first.status, first.version), (ReferralStatus::Triaged, 2));
    Ok(())
}

#[test]
fn a_decision_without_its_referral_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
    let events = log()?;
    let mut views = Views::default();
    assert!(matches!(
        views.apply(&events[1]),
        Err(Error::UnknownReferral { .. })
    ));
    assert!(views.is_empty());
    Ok(())
}

fn subscription_envelope(
    event: &SubscriptionEvent,
    id: Uuid,
    sequence: u64,
) -> Result<Envelope, serde_json::Error> {
    let new = mskflow_eventlog::new_event(event, 1, Utc::now())?;
    Ok(Envelope {
        event_id: new.event_id,
        stream_id: mskflow_events::subscription::stream_id(id),
        sequence,
        position: 100 + sequence,
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

#[test]
fn subscriptions_replay_idempotently_and_match_only_their_organisation()
-> Result<(), Box<dyn std::error::Error>> {
    use mskflow_events::subscription::{SubscriptionCreated, SubscriptionDeleted};
    let id = Uuid::from_u128(42);
    let created = subscription_envelope(
        &SubscriptionEvent::SubscriptionCreated(SubscriptionCreated {
            subscription_id: id,
            owner_ods: "A81001".to_owned(),
            client_id: "gp".to_owned(),
            topic: crate::subscription::TOPIC.to_owned(),
            endpoint: "https://gp.example/fhir".to_owned(),
            payload_content: "full-resource".to_owned(),
            filter: None,
            reason: None,
        }),
        id,
        1,
    )?;
    let deleted = subscription_envelope(
        &SubscriptionEvent::SubscriptionDeleted(SubscriptionDeleted {
            subscription_id: id,
            client_id: "gp".to_owned(),
        }),
        id,
        2,
    )?;
    let mut views = Views::default();
    assert!(views.apply(&created)?);
    assert!(
        !views.apply(&created)?,
        "a redelivered event changes nothing"
    );
    let mut referral = log()?
        .first()
        .map(|e| {
            let mut v = Views::default();
            v.apply(e).map(|_| v)
        })
        .transpose()?
        .and_then(|v| v.referrals().next().cloned())
        .ok_or("no referral")?;
    let active = views
        .subscriptions()
        .next()
        .ok_or("no subscription")?
        .clone();
    assert!(active.active);
    assert!(
        !active.matches(&referral),
        "a referral with no sender is no one's"
    );
    referral.details.sender.ods_code = Some(mskflow_events::OdsCode::parse("a81001")?);
    assert!(active.matches(&referral));
    referral.details.sender.ods_code = Some(mskflow_events::OdsCode::parse("B82002")?);
    assert!(
        !active.matches(&referral),
        "another organisation's referral"
    );
    referral.details.sender.ods_code = Some(mskflow_events::OdsCode::parse("A81001")?);
    assert!(views.apply(&deleted)?);
    assert!(
        !views.apply(&created)?,
        "an old event does not turn it back on"
    );
    let off = views.subscriptions().next().ok_or("no subscription")?;
    assert!(!off.active);
    assert_eq!(off.version, 2);
    assert!(!off.matches(&referral), "an off subscription hears nothing");
    Ok(())
}

/// The types the log may leave out of the views' subscription are exactly
/// those `apply` ignores: an event of any other type changes nothing, even
/// with a payload that would not decode, and every type `apply` folds is
/// named.
#[test]
fn the_event_types_named_are_the_ones_applied() -> Result<(), Box<dyn std::error::Error>> {
    let named = Views::event_types();
    let mut views = Views::default();
    for e in &log()? {
        assert!(named.contains(&e.event_type.as_str()), "{}", e.event_type);
        views.apply(e)?;
    }
    let before = views.clone();
    let others = [
        mskflow_events::outcomes::OutcomeEvent::TYPES,
        mskflow_events::audit::AuditEvent::TYPES,
        mskflow_events::operations::OperationsEvent::TYPES,
        mskflow_events::subscription::SubscriptionStatusEvent::TYPES,
    ]
    .concat();
    for (n, event_type) in others.iter().enumerate() {
        assert!(!named.contains(event_type), "{event_type}");
        let mut e = log()?.remove(0);
        e.event_type = (*event_type).to_owned();
        e.payload = serde_json::json!({ "not": "this type's payload" });
        e.position = 1_000 + n as u64;
        assert!(!views.apply(&e)?, "{event_type} changed the views");
    }
    assert_eq!(views, before);
    Ok(())
}

#[test]
fn a_patient_without_an_nhs_number_is_their_own_patient_reachable_by_id_only()
-> Result<(), Box<dyn std::error::Error>> {
    let mut views = Views::default();
    let unidentified = |n: u128| -> Result<Envelope, Box<dyn std::error::Error>> {
        let id = Uuid::from_u128(n);
        let mut referral = details()?;
        referral.received_via = ReceivedVia::SelfReferral;
        referral.patient.nhs_number = None;
        Ok(envelope(
            &IntakeEvent::ReferralReceived(ReferralReceived {
                referral_id: id,
                request_id: id,
                referral,
            }),
            id,
            1,
            n as u64,
        )?)
    };
    for e in log()? {
        views.apply(&e)?;
    }
    views.apply(&unidentified(100)?)?;
    views.apply(&unidentified(101)?)?;
    let (a, b) = (Uuid::from_u128(100), Uuid::from_u128(101));
    // Two people who gave no NHS number are not merged into one patient.
    let pa = views.patient(&a).ok_or("no Patient for the first")?;
    let pb = views.patient(&b).ok_or("no Patient for the second")?;
    assert_eq!(
        (pa.len(), pa[0].referral_id, pb.len(), pb[0].referral_id),
        (1, a, 1, b)
    );
    // Their filing key is not an identifier a search can name.
    assert!(views.referrals_of_patient(&format!("~{a}")).is_empty());
    assert!(views.referrals_of_patient("").is_empty());
    // The five identified referrals share one patient.
    assert_eq!(views.referrals_of_patient("9434765919").len(), 5);
    assert_eq!(views.patients().count(), 3);
    let task = crate::render::task(views.referral(&a).ok_or("missing")?);
    assert_eq!(
        task["for"],
        serde_json::json!({"reference": format!("Patient/{a}")})
    );
    let task = crate::render::task(views.referral(&Uuid::from_u128(1)).ok_or("missing")?);
    assert_eq!(task["for"]["identifier"]["value"], "9434765919");
    Ok(())
}
