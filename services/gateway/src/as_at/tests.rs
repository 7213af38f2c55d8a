//! The per-referral fold equals the whole views at every position, over a
//! generated caseload of several referrals whose events interleave.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, StartFrom, new_event};
use mskflow_events::IntakeEvent;
use mskflow_events::assessment::{
    AppointmentMissed, AssessmentBooked, AssessmentEvent, AssessmentRequested, DeliveryState,
    EpisodeDischarged, OnwardDestination, OnwardReferralRequested, Slot,
};
use mskflow_events::delivery::{DeliveryEvent, OutboundDelivered, OutboundDeliveryFailed};
use mskflow_events::intake::{
    CancellationStatus, PatientDetails, ReferralCancelled, ReferralDetails, ReferralReceived,
    ReferralTriaged, Sender,
};
use mskflow_events::scheduling::{
    DischargeReason, PatientChoices, PatientWaitlisted, Programme, RehabDischarged,
    SchedulingEvent, SessionAttended,
};
use mskflow_events::types::{
    ContactMode, FcpPriority, NhsNumber, Pathway, ReceivedVia, RequestPriority,
};
use uuid::Uuid;

use crate::views::Views;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn details(n: u64) -> Result<ReferralDetails, Box<dyn std::error::Error>> {
    let numbers = ["9434765919", "9449306753", "9449310394", "9449305552"];
    Ok(ReferralDetails {
        received_via: ReceivedVia::ProcessMessage,
        sender: Sender {
            ods_code: None,
            endpoint: Some(format!("https://gp.example/{n}")),
            message_id: Some(format!("message-{n}")),
            software: None,
        },
        service_request_identifier: None,
        patient: PatientDetails {
            nhs_number: Some(NhsNumber::parse(numbers[(n % 4) as usize])?),
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
        fhir_json: format!("{{\"n\":{n}}}"),
    })
}

/// A small deterministic generator (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// The next event of referral `n` at `step` of its pathway: (stream, event).
fn step(
    n: u64,
    id: Uuid,
    step: usize,
) -> Result<Option<(String, mskflow_eventlog::NewEvent)>, Box<dyn std::error::Error>> {
    let at = Utc
        .timestamp_opt(1_700_000_000 + (n as i64) * 1000 + step as i64, 0)
        .single()
        .unwrap_or_default();
    let slot = |k: u128| Slot {
        slot_id: Uuid::from_u128(id.as_u128() ^ k),
        clinician_id: "fcp-1".to_owned(),
        start: at,
        end: at + chrono::Duration::minutes(30),
        mode: ContactMode::Video,
        location: None,
    };
    let onward = Uuid::from_u128(id.as_u128() ^ 0xfeed);
    let referral = format!("referral-{id}");
    let assessment = format!("assessment-{id}");
    let rehab = format!("rehab-{id}");
    let delivery = format!("delivery-{onward}");
    let intake = |e: IntakeEvent| new_event(&e, 1, at);
    let fcp = |e: AssessmentEvent| new_event(&e, 1, at);
    let sched = |e: SchedulingEvent| new_event(&e, 1, at);
    let out = |e: DeliveryEvent| new_event(&e, 1, at);
    let event = match step {
        0 => (
            referral,
            intake(IntakeEvent::ReferralReceived(ReferralReceived {
                referral_id: id,
                request_id: id,
                referral: details(n)?,
            }))?,
        ),
        1 => (
            referral,
            intake(IntakeEvent::ReferralTriaged(ReferralTriaged {
                referral_id: id,
                rule_set_version: "1".to_owned(),
                rule_id: "default".to_owned(),
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                start_back: None,
                reasons: vec!["knee".to_owned()],
            }))?,
        ),
        2 => (
            assessment,
            fcp(AssessmentEvent::AssessmentRequested(AssessmentRequested {
                referral_id: id,
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                triaged_at: at,
            }))?,
        ),
        3 => (
            assessment,
            fcp(AssessmentEvent::AssessmentBooked(AssessmentBooked {
                referral_id: id,
                slot: slot(1),
            }))?,
        ),
        4 => (
            assessment,
            fcp(AssessmentEvent::AppointmentMissed(AppointmentMissed {
                referral_id: id,
                slot_id: slot(1).slot_id,
                missed_count: 1,
            }))?,
        ),
        5 => (
            assessment,
            fcp(AssessmentEvent::AssessmentBooked(AssessmentBooked {
                referral_id: id,
                slot: slot(2),
            }))?,
        ),
        6 => (
            assessment,
            fcp(AssessmentEvent::OnwardReferralRequested(
                OnwardReferralRequested {
                    onward_referral_id: onward,
                    referral_id: id,
                    destination: OnwardDestination::Orthopaedics,
                    reason: "opinion".to_owned(),
                    service_request: serde_json::json!({"resourceType": "ServiceRequest"}),
                    delivery: DeliveryState::Pending,
                },
            ))?,
        ),
        7 => (
            delivery,
            out(DeliveryEvent::OutboundDeliveryFailed(
                OutboundDeliveryFailed {
                    message_id: onward,
                    referral_id: id,
                    endpoint: Some("https://ortho.example".to_owned()),
                    http_status: Some(503),
                    reason: "receiver answered 503".to_owned(),
                    attempt: 1,
                    will_retry: true,
                },
            ))?,
        ),
        // A status message to the referrer: changes no view.
        8 => (
            format!("notify-{}", Uuid::from_u128(id.as_u128() ^ 0xbeef)),
            out(DeliveryEvent::OutboundDelivered(OutboundDelivered {
                message_id: id,
                referral_id: id,
                endpoint: "https://gp.example".to_owned(),
                http_status: 200,
                attempts: 1,
            }))?,
        ),
        9 => (
            delivery,
            out(DeliveryEvent::OutboundDelivered(OutboundDelivered {
                message_id: onward,
                referral_id: id,
                endpoint: "https://ortho.example".to_owned(),
                http_status: 201,
                attempts: 2,
            }))?,
        ),
        10 => (
            rehab,
            sched(SchedulingEvent::PatientWaitlisted(PatientWaitlisted {
                referral_id: id,
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                programme: Programme::OneToOne,
                sessions: 4,
                need_recorded_at: at,
                choices: PatientChoices {
                    venue_ids: vec![],
                    days: vec![],
                    modes: vec![],
                },
            }))?,
        ),
        11 => (
            rehab,
            sched(SchedulingEvent::SessionAttended(SessionAttended {
                referral_id: id,
                session_no: 1,
            }))?,
        ),
        12 => (
            assessment,
            fcp(AssessmentEvent::EpisodeDischarged(EpisodeDischarged {
                referral_id: id,
                reason: mskflow_events::assessment::DischargeReason::AssessmentOutcome,
                notify_referrer: true,
            }))?,
        ),
        13 => (
            rehab,
            sched(SchedulingEvent::RehabDischarged(RehabDischarged {
                referral_id: id,
                reason: DischargeReason::GoalsMet,
                notify_referrer: true,
            }))?,
        ),
        14 => (
            referral,
            intake(IntakeEvent::ReferralCancelled(ReferralCancelled {
                referral_id: id,
                request_id: Uuid::from_u128(id.as_u128() ^ 0xcafe),
                status: CancellationStatus::Revoked,
                cancelled_by: None,
                message_id: None,
            }))?,
        ),
        _ => return Ok(None),
    };
    Ok(Some(event))
}

#[tokio::test]
async fn the_fold_at_a_position_equals_the_whole_views() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log: Arc<dyn EventLog> = Arc::new(mskflow_eventlog_sqlite::SqliteEventLog::open(
        mskflow_eventlog_sqlite::Options {
            path: dir.path().join("events.db"),
            ..mskflow_eventlog_sqlite::Options::default()
        },
    )?);
    for seed in [1_u64, 7, 42] {
        let mut rng = Lcg(seed);
        let referrals: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut steps = vec![0_usize; referrals.len()];
        // Interleave the referrals' pathways at random until all are done.
        while steps.iter().any(|s| *s <= 14) {
            let n = rng.next(referrals.len() as u64) as usize;
            if steps[n] > 14 {
                continue;
            }
            if let Some((stream, event)) = step(n as u64, referrals[n], steps[n])? {
                log.append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![event],
                    &Metadata::default(),
                )
                .await?;
            }
            // Some pathways stop early (a referral never assessed).
            steps[n] += if n == 4 && steps[n] == 1 { 14 } else { 1 };
        }
        let mut sub = log
            .subscribe(&format!("fold-test-{seed}"), StartFrom::Beginning)
            .await?;
        let mut whole = Views::default();
        let mut checked = 0;
        loop {
            let batch = sub.poll_batch(256).await?;
            if batch.is_empty() {
                break;
            }
            for envelope in batch {
                let _ = whole.apply(&envelope);
                for id in &referrals {
                    let folded = super::referral(log.as_ref(), *id, envelope.position).await?;
                    assert_eq!(
                        folded.as_ref(),
                        whole.referral(id),
                        "referral {id} at position {} ({})",
                        envelope.position,
                        envelope.event_type
                    );
                    checked += usize::from(folded.is_some());
                }
            }
        }
        assert!(checked > 100, "the caseload was folded ({checked} views)");
        let done = whole.referral(&referrals[0]).ok_or("referral 0")?;
        assert_eq!(done.onward.len(), 1, "the onward referral is on the view");
        assert_eq!(done.onward[0].delivery, "delivered");
        assert!(done.rehab.is_some() && done.assessment.is_some());
    }
    Ok(())
}
