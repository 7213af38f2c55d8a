//! Read models behind the FHIR views: built only from events.
//!
//! [`Views::apply`] is pure and idempotent (an event at or below a referral's
//! version is skipped), so replaying the log from empty rebuilds exactly the
//! same views; `tests` prove it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::IntakeEvent;
use mskflow_events::assessment::{
    AssessmentEvent, DischargeReason, OnwardDestination, Outcome, Slot,
};
use mskflow_events::intake::{ReferralDetails, StartBackScore};
use mskflow_events::scheduling::{
    BookedSession, DischargeReason as RehabDischargeReason, Programme, SchedulingEvent,
};
use mskflow_events::types::{FcpPriority, Pathway, RedFlag, RedirectDestination, Urgency};
use serde::Serialize;
use uuid::Uuid;

/// Where a referral stands, as the referrer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferralStatus {
    Received,
    Triaged,
    Redirected,
    Rejected,
    Cancelled,
}

impl ReferralStatus {
    pub fn code(self) -> &'static str {
        match self {
            ReferralStatus::Received => "received",
            ReferralStatus::Triaged => "triaged",
            ReferralStatus::Redirected => "redirected",
            ReferralStatus::Rejected => "rejected",
            ReferralStatus::Cancelled => "cancelled",
        }
    }
}

/// The triage decision, once made.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Decision {
    Triaged {
        priority: FcpPriority,
        pathway: Pathway,
        start_back: Option<StartBackScore>,
        reasons: Vec<String>,
    },
    Redirected {
        destination: RedirectDestination,
        urgency: Urgency,
        red_flags: Vec<RedFlag>,
        reason: String,
    },
    Rejected {
        reason_code: String,
        reason: String,
    },
}

/// How the referrer withdrew it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cancellation {
    pub status: mskflow_events::intake::CancellationStatus,
    pub at: DateTime<Utc>,
}

/// Where the FCP assessment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssessmentStage {
    AwaitingAppointment,
    Booked,
    Assessed,
    Discharged,
}

/// The FCP assessment of a referral (from the `assessment-{id}` stream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssessmentView {
    /// The assessment stream's version.
    pub version: u64,
    pub stage: AssessmentStage,
    pub priority: FcpPriority,
    /// The booked appointment, while one is booked (and after it was used).
    pub appointment: Option<Slot>,
    pub missed: u32,
    pub outcomes: Vec<Outcome>,
    pub onward: Vec<(Uuid, OnwardDestination)>,
    pub discharge: Option<DischargeReason>,
    pub last_updated: DateTime<Utc>,
}

/// Where rehabilitation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RehabStage {
    Waiting,
    Offered,
    Booked,
    Completed,
    Discharged,
}

/// Community rehabilitation of a referral (from the `rehab-{id}` stream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RehabView {
    pub version: u64,
    pub stage: RehabStage,
    pub programme: Programme,
    pub sessions: u32,
    pub booked: Vec<BookedSession>,
    pub attended: u32,
    pub missed: u32,
    pub cancelled: u32,
    pub discharge: Option<RehabDischargeReason>,
    pub last_updated: DateTime<Utc>,
}

/// One referral's view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferralView {
    pub referral_id: Uuid,
    /// The referral stream's version (last applied sequence).
    pub version: u64,
    pub status: ReferralStatus,
    pub request_id: Uuid,
    pub correlation_id: Uuid,
    pub created: DateTime<Utc>,
    pub last_updated: DateTime<Utc>,
    pub details: ReferralDetails,
    pub rule_set_version: Option<String>,
    pub rule_id: Option<String>,
    pub decision: Option<Decision>,
    pub cancellation: Option<Cancellation>,
    pub assessment: Option<AssessmentView>,
    pub rehab: Option<RehabView>,
}

impl ReferralView {
    /// The Task's version: every event of the referral, its assessment and
    /// its rehabilitation counts.
    pub fn task_version(&self) -> u64 {
        self.version
            + self.assessment.as_ref().map_or(0, |a| a.version)
            + self.rehab.as_ref().map_or(0, |r| r.version)
    }

    /// When the Task last changed.
    pub fn task_last_updated(&self) -> DateTime<Utc> {
        let mut t = self.last_updated;
        if let Some(a) = &self.assessment {
            t = t.max(a.last_updated);
        }
        if let Some(r) = &self.rehab {
            t = t.max(r.last_updated);
        }
        t
    }
}

/// A problem applying an event. Never crosses a boundary: the projection
/// logs it, counts it and skips the event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("event {event_id} ({event_type}) does not decode: {source}")]
    Decode {
        event_id: Uuid,
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("event {event_id} ({event_type}) for unknown referral {referral_id}")]
    UnknownReferral {
        event_id: Uuid,
        event_type: String,
        referral_id: Uuid,
    },
}

/// All read models of the gateway.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Views {
    referrals: BTreeMap<Uuid, ReferralView>,
}

impl Views {
    /// Apply one event. Returns whether it changed anything. Events of other
    /// services are ignored; events already applied are skipped.
    pub fn apply(&mut self, envelope: &Envelope) -> Result<bool, Error> {
        if AssessmentEvent::TYPES.contains(&envelope.event_type.as_str()) {
            return self.apply_assessment(envelope);
        }
        if envelope.stream_id.starts_with("rehab-")
            && !envelope.stream_id.starts_with("rehab-slot-")
            && SchedulingEvent::TYPES.contains(&envelope.event_type.as_str())
        {
            return self.apply_rehab(envelope);
        }
        if !IntakeEvent::TYPES.contains(&envelope.event_type.as_str()) {
            return Ok(false);
        }
        let event: IntakeEvent =
            mskflow_eventlog::decode(envelope).map_err(|source| Error::Decode {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                source,
            })?;
        let referral_id = match &event {
            IntakeEvent::ReferralReceived(e) => e.referral_id,
            IntakeEvent::ReferralTriaged(e) => e.referral_id,
            IntakeEvent::ReferralRedirected(e) => e.referral_id,
            IntakeEvent::ReferralRejected(e) => e.referral_id,
            IntakeEvent::ReferralCancelled(e) => e.referral_id,
        };
        if let Some(view) = self.referrals.get(&referral_id)
            && envelope.sequence <= view.version
        {
            return Ok(false);
        }
        match event {
            IntakeEvent::ReferralReceived(e) => {
                self.referrals.insert(
                    referral_id,
                    ReferralView {
                        referral_id,
                        version: envelope.sequence,
                        status: ReferralStatus::Received,
                        request_id: e.request_id,
                        correlation_id: envelope.correlation_id,
                        created: envelope.recorded_at,
                        last_updated: envelope.recorded_at,
                        details: e.referral,
                        rule_set_version: None,
                        rule_id: None,
                        decision: None,
                        cancellation: None,
                        assessment: None,
                        rehab: None,
                    },
                );
            }
            other => {
                let view =
                    self.referrals
                        .get_mut(&referral_id)
                        .ok_or_else(|| Error::UnknownReferral {
                            event_id: envelope.event_id,
                            event_type: envelope.event_type.clone(),
                            referral_id,
                        })?;
                view.version = envelope.sequence;
                view.last_updated = envelope.recorded_at;
                match other {
                    IntakeEvent::ReferralTriaged(e) => {
                        view.status = ReferralStatus::Triaged;
                        view.rule_set_version = Some(e.rule_set_version);
                        view.rule_id = Some(e.rule_id);
                        view.decision = Some(Decision::Triaged {
                            priority: e.priority,
                            pathway: e.pathway,
                            start_back: e.start_back,
                            reasons: e.reasons,
                        });
                    }
                    IntakeEvent::ReferralRedirected(e) => {
                        view.status = ReferralStatus::Redirected;
                        view.rule_set_version = Some(e.rule_set_version);
                        view.rule_id = Some(e.rule_id);
                        view.decision = Some(Decision::Redirected {
                            destination: e.destination,
                            urgency: e.urgency,
                            red_flags: e.red_flags,
                            reason: e.reason,
                        });
                    }
                    IntakeEvent::ReferralRejected(e) => {
                        view.status = ReferralStatus::Rejected;
                        view.rule_set_version = Some(e.rule_set_version);
                        view.rule_id = Some(e.rule_id);
                        view.decision = Some(Decision::Rejected {
                            reason_code: e.reason_code,
                            reason: e.reason,
                        });
                    }
                    IntakeEvent::ReferralCancelled(e) => {
                        view.status = ReferralStatus::Cancelled;
                        view.cancellation = Some(Cancellation {
                            status: e.status,
                            at: envelope.recorded_at,
                        });
                    }
                    IntakeEvent::ReferralReceived(_) => {}
                }
            }
        }
        Ok(true)
    }

    fn apply_assessment(&mut self, envelope: &Envelope) -> Result<bool, Error> {
        let event: AssessmentEvent =
            mskflow_eventlog::decode(envelope).map_err(|source| Error::Decode {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                source,
            })?;
        let referral_id = match &event {
            AssessmentEvent::AssessmentRequested(e) => e.referral_id,
            AssessmentEvent::AssessmentBooked(e) => e.referral_id,
            AssessmentEvent::AssessmentRescheduled(e) => e.referral_id,
            AssessmentEvent::AssessmentCancelled(e) => e.referral_id,
            AssessmentEvent::AppointmentMissed(e) => e.referral_id,
            AssessmentEvent::AssessmentCompleted(e) => e.referral_id,
            AssessmentEvent::OnwardReferralRequested(e) => e.referral_id,
            AssessmentEvent::EpisodeDischarged(e) => e.referral_id,
        };
        let view = self
            .referrals
            .get_mut(&referral_id)
            .ok_or_else(|| Error::UnknownReferral {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                referral_id,
            })?;
        if view
            .assessment
            .as_ref()
            .is_some_and(|a| envelope.sequence <= a.version)
        {
            return Ok(false);
        }
        if let AssessmentEvent::AssessmentRequested(e) = &event {
            view.assessment = Some(AssessmentView {
                version: envelope.sequence,
                stage: AssessmentStage::AwaitingAppointment,
                priority: e.priority,
                appointment: None,
                missed: 0,
                outcomes: Vec::new(),
                onward: Vec::new(),
                discharge: None,
                last_updated: envelope.recorded_at,
            });
            return Ok(true);
        }
        let a = view
            .assessment
            .as_mut()
            .ok_or_else(|| Error::UnknownReferral {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                referral_id,
            })?;
        a.version = envelope.sequence;
        a.last_updated = envelope.recorded_at;
        match event {
            AssessmentEvent::AssessmentRequested(_) => {}
            AssessmentEvent::AssessmentBooked(e) => {
                a.stage = AssessmentStage::Booked;
                a.appointment = Some(e.slot);
            }
            AssessmentEvent::AssessmentRescheduled(e) => {
                a.stage = AssessmentStage::Booked;
                a.appointment = Some(e.slot);
            }
            AssessmentEvent::AssessmentCancelled(_) => {
                a.stage = AssessmentStage::AwaitingAppointment;
                a.appointment = None;
            }
            AssessmentEvent::AppointmentMissed(e) => {
                a.stage = AssessmentStage::AwaitingAppointment;
                a.missed = e.missed_count;
            }
            AssessmentEvent::AssessmentCompleted(e) => {
                a.stage = AssessmentStage::Assessed;
                a.outcomes = e.outcomes;
            }
            AssessmentEvent::OnwardReferralRequested(e) => {
                a.onward.push((e.onward_referral_id, e.destination));
            }
            AssessmentEvent::EpisodeDischarged(e) => {
                a.stage = AssessmentStage::Discharged;
                a.discharge = Some(e.reason);
            }
        }
        Ok(true)
    }

    fn apply_rehab(&mut self, envelope: &Envelope) -> Result<bool, Error> {
        let event: SchedulingEvent =
            mskflow_eventlog::decode(envelope).map_err(|source| Error::Decode {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                source,
            })?;
        let referral_id = match &event {
            SchedulingEvent::PatientWaitlisted(e) => e.referral_id,
            SchedulingEvent::OfferMade(e) => e.referral_id,
            SchedulingEvent::OfferAccepted(e) => e.referral_id,
            SchedulingEvent::OfferDeclined(e) => e.referral_id,
            SchedulingEvent::PlaceBooked(e) => e.referral_id,
            SchedulingEvent::SessionAttended(e) => e.referral_id,
            SchedulingEvent::SessionMissed(e) => e.referral_id,
            SchedulingEvent::SessionCancelled(e) => e.referral_id,
            SchedulingEvent::CourseCompleted(e) => e.referral_id,
            SchedulingEvent::RehabDischarged(e) => e.referral_id,
            // Capacity events live on class, slot and venue streams.
            _ => return Ok(false),
        };
        let unknown = || Error::UnknownReferral {
            event_id: envelope.event_id,
            event_type: envelope.event_type.clone(),
            referral_id,
        };
        let view = self.referrals.get_mut(&referral_id).ok_or_else(unknown)?;
        if view
            .rehab
            .as_ref()
            .is_some_and(|r| envelope.sequence <= r.version)
        {
            return Ok(false);
        }
        if let SchedulingEvent::PatientWaitlisted(e) = &event {
            view.rehab = Some(RehabView {
                version: envelope.sequence,
                stage: RehabStage::Waiting,
                programme: e.programme,
                sessions: e.sessions,
                booked: Vec::new(),
                attended: 0,
                missed: 0,
                cancelled: 0,
                discharge: None,
                last_updated: envelope.recorded_at,
            });
            return Ok(true);
        }
        let r = view.rehab.as_mut().ok_or_else(unknown)?;
        r.version = envelope.sequence;
        r.last_updated = envelope.recorded_at;
        match event {
            SchedulingEvent::OfferMade(_) => r.stage = RehabStage::Offered,
            SchedulingEvent::OfferDeclined(_) => r.stage = RehabStage::Waiting,
            SchedulingEvent::PlaceBooked(e) => {
                r.stage = RehabStage::Booked;
                r.sessions = e.sessions.len() as u32;
                r.booked = e.sessions;
            }
            SchedulingEvent::SessionAttended(_) => r.attended += 1,
            SchedulingEvent::SessionMissed(e) => r.missed = e.missed_total,
            SchedulingEvent::SessionCancelled(_) => r.cancelled += 1,
            SchedulingEvent::CourseCompleted(e) => {
                r.stage = RehabStage::Completed;
                r.attended = e.attended;
                r.missed = e.missed;
                r.cancelled = e.cancelled;
            }
            SchedulingEvent::RehabDischarged(e) => {
                r.stage = RehabStage::Discharged;
                r.discharge = Some(e.reason);
            }
            _ => {}
        }
        Ok(true)
    }

    pub fn referral(&self, id: &Uuid) -> Option<&ReferralView> {
        self.referrals.get(id)
    }

    /// Every referral, newest first.
    pub fn referrals(&self) -> impl Iterator<Item = &ReferralView> {
        let mut all: Vec<&ReferralView> = self.referrals.values().collect();
        all.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.referral_id.cmp(&b.referral_id))
        });
        all.into_iter()
    }

    /// How many referrals are in each status (every status listed).
    pub fn count_by_status(&self) -> [(ReferralStatus, usize); 5] {
        let mut counts = [
            (ReferralStatus::Received, 0),
            (ReferralStatus::Triaged, 0),
            (ReferralStatus::Redirected, 0),
            (ReferralStatus::Rejected, 0),
            (ReferralStatus::Cancelled, 0),
        ];
        for r in self.referrals.values() {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == r.status) {
                c.1 += 1;
            }
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.referrals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.referrals.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use mskflow_events::intake::{PatientDetails, ReferralReceived, ReferralTriaged, Sender};
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
                nhs_number: NhsNumber::parse("9434765919")?,
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
}
