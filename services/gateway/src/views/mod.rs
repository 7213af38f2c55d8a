//! Read models behind the FHIR views: built only from events.
//!
//! [`Views::apply`] is pure and idempotent (an event at or below a referral's
//! version is skipped), so replaying the log from empty rebuilds exactly the
//! same views; `tests` prove it.

pub mod index;
pub mod model;
pub mod status;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::IntakeEvent;
use mskflow_events::assessment::{AssessmentEvent, Slot};
use mskflow_events::delivery::DeliveryEvent;
use mskflow_events::intake::{PatientDetails, ReferralDetails};
use mskflow_events::scheduling::{Programme, SchedulingEvent};
use mskflow_events::subscription::SubscriptionEvent;
use serde::Serialize;
use uuid::Uuid;

pub use index::{Resource, SearchIndex, TimeIndex, authored, last_updated};
pub use model::*;

use index::IndexKeys;

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
    /// Appointment id -> referral id.
    appointments: BTreeMap<Uuid, Uuid>,
    /// Onward referral id -> referral id.
    onward: BTreeMap<Uuid, Uuid>,
    capacity: Capacity,
    /// [`patient_key`] -> the referrals that carried that patient, in the
    /// order received (the `Patient` views and patient searches). Derived from
    /// `referrals`, so not serialised.
    #[serde(skip)]
    patients: BTreeMap<String, Vec<Uuid>>,
    /// FHIR Subscriptions, active and off.
    subscriptions: BTreeMap<Uuid, crate::subscription::model::SubscriptionView>,
    /// Search indexes over `referrals`, refiled whenever a referral changes.
    /// Derived, so not serialised.
    #[serde(skip)]
    index: SearchIndex,
}

/// Where a referral's patient is filed: their NHS number, or, for a
/// self-referral that gave none, a key of that referral alone (`~` and the
/// referral id, never ten digits), so that patient is their own `Patient`
/// until identified.
pub fn patient_key(referral_id: Uuid, patient: &PatientDetails) -> String {
    match &patient.nhs_number {
        Some(n) => n.as_str().to_owned(),
        None => format!("~{referral_id}"),
    }
}

impl Views {
    /// Every event type [`Views::apply`] folds; it ignores the others.
    pub fn event_types() -> Vec<&'static str> {
        [
            SubscriptionEvent::TYPES,
            AssessmentEvent::TYPES,
            DeliveryEvent::TYPES,
            SchedulingEvent::TYPES,
            IntakeEvent::TYPES,
        ]
        .concat()
    }

    /// Apply one event. Returns whether it changed anything. Events of other
    /// services are ignored; events already applied are skipped.
    pub fn apply(&mut self, envelope: &Envelope) -> Result<bool, Error> {
        if SubscriptionEvent::TYPES.contains(&envelope.event_type.as_str()) {
            return self.apply_subscription(envelope);
        }
        let touched = if AssessmentEvent::TYPES.contains(&envelope.event_type.as_str()) {
            self.apply_assessment(envelope)
        } else if DeliveryEvent::TYPES.contains(&envelope.event_type.as_str()) {
            self.apply_delivery(envelope)
        } else if SchedulingEvent::TYPES.contains(&envelope.event_type.as_str())
            && envelope.stream_id.starts_with("rehab-")
            && !envelope.stream_id.starts_with("rehab-slot-")
        {
            self.apply_rehab(envelope)
        } else if IntakeEvent::TYPES.contains(&envelope.event_type.as_str()) {
            self.apply_intake(envelope)
        } else if SchedulingEvent::TYPES.contains(&envelope.event_type.as_str()) {
            let event: SchedulingEvent =
                mskflow_eventlog::decode(envelope).map_err(|source| Error::Decode {
                    event_id: envelope.event_id,
                    event_type: envelope.event_type.clone(),
                    source,
                })?;
            return Ok(self.capacity.apply(envelope, event));
        } else {
            return Ok(false);
        };
        match touched {
            Ok(Some(id)) => {
                self.refile(id);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                // A referral may have changed before the event was found
                // wanting: keep the indexes in step all the same.
                if let Error::UnknownReferral { referral_id, .. } = &e {
                    self.refile(*referral_id);
                }
                Err(e)
            }
        }
    }

    /// File referral `id` in the search indexes as it stands now.
    fn refile(&mut self, id: Uuid) {
        if let Some(view) = self.referrals.get(&id) {
            self.index.file(id, IndexKeys::of(view));
        }
    }

    /// The search indexes over the referrals.
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// An intake event; the referral it changed, if any.
    fn apply_intake(&mut self, envelope: &Envelope) -> Result<Option<Uuid>, Error> {
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
            return Ok(None);
        }
        match event {
            IntakeEvent::ReferralReceived(e) => {
                let carried = self
                    .patients
                    .entry(patient_key(referral_id, &e.referral.patient))
                    .or_default();
                if !carried.contains(&referral_id) {
                    carried.push(referral_id);
                }
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
                        // The referral as sent is not kept in memory: see
                        // `crate::sent`.
                        details: ReferralDetails {
                            fhir_json: String::new(),
                            ..e.referral
                        },
                        rule_set_version: None,
                        rule_id: None,
                        decision: None,
                        cancellation: None,
                        assessment: None,
                        rehab: None,
                        appointments: Vec::new(),
                        onward: Vec::new(),
                        assessed: None,
                        deliveries: 0,
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
        Ok(Some(referral_id))
    }

    fn apply_assessment(&mut self, envelope: &Envelope) -> Result<Option<Uuid>, Error> {
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
            return Ok(None);
        }
        if let AssessmentEvent::AssessmentRequested(e) = &event {
            view.assessment = Some(AssessmentView {
                version: envelope.sequence,
                stage: AssessmentStage::AwaitingAppointment,
                priority: e.priority,
                appointment: None,
                missed: 0,
                outcomes: Vec::new(),
                discharge: None,
                last_updated: envelope.recorded_at,
            });
            return Ok(Some(referral_id));
        }
        // Appointments, the Encounter and outbound referrals.
        let at = envelope.recorded_at;
        let book = |view: &mut ReferralView, slot: &Slot| {
            let id = fcp_appointment_id(referral_id, slot.slot_id);
            view.appointments.push(AppointmentView {
                id,
                kind: AppointmentKind::FcpAssessment {
                    slot_id: slot.slot_id,
                    clinician_id: slot.clinician_id.clone(),
                },
                status: AppointmentStatus::Booked,
                start: slot.start,
                end: Some(slot.end),
                mode: slot.mode,
                location: slot.location.clone(),
                last_updated: at,
            });
            id
        };
        match &event {
            AssessmentEvent::AssessmentBooked(e) => {
                let id = book(view, &e.slot);
                self.appointments.insert(id, referral_id);
            }
            AssessmentEvent::AssessmentRescheduled(e) => {
                view.set_appointment(
                    fcp_appointment_id(referral_id, e.previous_slot_id),
                    AppointmentStatus::Cancelled,
                    at,
                );
                let id = book(view, &e.slot);
                self.appointments.insert(id, referral_id);
            }
            AssessmentEvent::AssessmentCancelled(e) => {
                if let Some(slot_id) = e.slot_id {
                    view.set_appointment(
                        fcp_appointment_id(referral_id, slot_id),
                        AppointmentStatus::Cancelled,
                        at,
                    );
                }
            }
            AssessmentEvent::AppointmentMissed(e) => {
                view.set_appointment(
                    fcp_appointment_id(referral_id, e.slot_id),
                    AppointmentStatus::Noshow,
                    at,
                );
            }
            AssessmentEvent::AssessmentCompleted(e) => {
                let id = fcp_appointment_id(referral_id, e.slot_id);
                view.set_appointment(id, AppointmentStatus::Fulfilled, at);
                view.assessed = Some(AssessedView {
                    appointment_id: id,
                    clinician_id: e.clinician_id.clone(),
                    recorded: at,
                    outcomes: e.outcomes.clone(),
                });
            }
            AssessmentEvent::OnwardReferralRequested(e) => {
                view.onward.push(OnwardView {
                    id: e.onward_referral_id,
                    destination: e.destination,
                    service_request: e.service_request.clone(),
                    recorded: at,
                    delivery: "pending",
                    attempts: 0,
                    delivery_reason: None,
                });
                self.onward.insert(e.onward_referral_id, referral_id);
            }
            _ => {}
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
            // Kept on the referral (`ReferralView::onward`), above.
            AssessmentEvent::OnwardReferralRequested(_) => {}
            AssessmentEvent::EpisodeDischarged(e) => {
                a.stage = AssessmentStage::Discharged;
                a.discharge = Some(e.reason);
            }
        }
        Ok(Some(referral_id))
    }

    fn apply_rehab(&mut self, envelope: &Envelope) -> Result<Option<Uuid>, Error> {
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
            _ => return Ok(None),
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
            return Ok(None);
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
            return Ok(Some(referral_id));
        }
        let at = envelope.recorded_at;
        match &event {
            SchedulingEvent::PlaceBooked(e) => {
                // A re-booking supersedes sessions still booked.
                for a in &mut view.appointments {
                    if matches!(a.kind, AppointmentKind::RehabSession { .. })
                        && a.status == AppointmentStatus::Booked
                    {
                        a.status = AppointmentStatus::Cancelled;
                        a.last_updated = at;
                    }
                }
                let place = serde_json::to_string(&e.place).unwrap_or_default();
                let programme = view
                    .rehab
                    .as_ref()
                    .map_or(Programme::OneToOne, |r| r.programme);
                let of = e.sessions.len() as u32;
                for session in &e.sessions {
                    let id = rehab_appointment_id(referral_id, &place, session.session_no);
                    view.appointments.push(AppointmentView {
                        id,
                        kind: AppointmentKind::RehabSession {
                            programme,
                            session_no: session.session_no,
                            of,
                        },
                        status: AppointmentStatus::Booked,
                        // Clinic times are recorded as local times; shown as UTC.
                        start: Utc.from_utc_datetime(&session.starts_at),
                        end: None,
                        mode: session.mode,
                        location: Some(session.venue_id.clone()),
                        last_updated: at,
                    });
                    self.appointments.insert(id, referral_id);
                }
            }
            SchedulingEvent::SessionAttended(e) => {
                if let Some(id) = view.rehab_session(e.session_no) {
                    view.set_appointment(id, AppointmentStatus::Fulfilled, at);
                }
            }
            SchedulingEvent::SessionMissed(e) => {
                if let Some(id) = view.rehab_session(e.session_no) {
                    view.set_appointment(id, AppointmentStatus::Noshow, at);
                }
            }
            SchedulingEvent::SessionCancelled(e) => {
                if let Some(id) = view.rehab_session(e.session_no) {
                    view.set_appointment(id, AppointmentStatus::Cancelled, at);
                }
            }
            _ => {}
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
        Ok(Some(referral_id))
    }

    fn apply_delivery(&mut self, envelope: &Envelope) -> Result<Option<Uuid>, Error> {
        // Status messages to referrers (`notify-…`) do not change the views.
        if !envelope.stream_id.starts_with("delivery-") {
            return Ok(None);
        }
        let event: DeliveryEvent =
            mskflow_eventlog::decode(envelope).map_err(|source| Error::Decode {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                source,
            })?;
        let (message_id, referral_id) = match &event {
            DeliveryEvent::OutboundDelivered(e) => (e.message_id, e.referral_id),
            DeliveryEvent::OutboundDeliveryFailed(e) => (e.message_id, e.referral_id),
        };
        let unknown = || Error::UnknownReferral {
            event_id: envelope.event_id,
            event_type: envelope.event_type.clone(),
            referral_id,
        };
        let referral = self.referrals.get_mut(&referral_id).ok_or_else(unknown)?;
        let index = referral
            .onward
            .iter()
            .position(|o| o.id == message_id)
            .ok_or_else(unknown)?;
        referral.deliveries += 1;
        let onward = &mut referral.onward[index];
        match event {
            DeliveryEvent::OutboundDelivered(e) => {
                onward.delivery = "delivered";
                onward.attempts = e.attempts;
                onward.delivery_reason = None;
            }
            DeliveryEvent::OutboundDeliveryFailed(e) => {
                onward.delivery = if e.will_retry { "retrying" } else { "failed" };
                onward.attempts = e.attempt;
                onward.delivery_reason = Some(e.reason);
            }
        }
        Ok(Some(referral_id))
    }

    /// Rehab capacity: venues, classes, 1:1 slots.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// An appointment and its referral.
    pub fn appointment(&self, id: &Uuid) -> Option<(&ReferralView, &AppointmentView)> {
        let referral = self.referrals.get(self.appointments.get(id)?)?;
        referral
            .appointments
            .iter()
            .find(|a| a.id == *id)
            .map(|a| (referral, a))
    }

    /// An outbound referral and the referral it came from.
    pub fn onward_referral(&self, id: &Uuid) -> Option<(&ReferralView, &OnwardView)> {
        let referral = self.referrals.get(self.onward.get(id)?)?;
        referral
            .onward
            .iter()
            .find(|o| o.id == *id)
            .map(|o| (referral, o))
    }

    pub fn referral(&self, id: &Uuid) -> Option<&ReferralView> {
        self.referrals.get(id)
    }

    /// Every subscription, active and off, by id.
    pub fn subscriptions(
        &self,
    ) -> impl Iterator<Item = &crate::subscription::model::SubscriptionView> {
        self.subscriptions.values()
    }

    fn apply_subscription(&mut self, envelope: &Envelope) -> Result<bool, Error> {
        let event: SubscriptionEvent =
            mskflow_eventlog::decode(envelope).map_err(|source| Error::Decode {
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                source,
            })?;
        let id = match &event {
            SubscriptionEvent::SubscriptionCreated(e) => e.subscription_id,
            SubscriptionEvent::SubscriptionDeleted(e) => e.subscription_id,
        };
        let current = self.subscriptions.remove(&id);
        if let Some(s) = &current
            && envelope.sequence <= s.version
        {
            self.subscriptions.insert(id, s.clone());
            return Ok(false);
        }
        match crate::subscription::model::SubscriptionView::evolve(current, envelope, &event) {
            Some(s) => {
                self.subscriptions.insert(id, s);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The referrals that carried the patient with this NHS number, in the
    /// order received (empty when none did, or when `nhs_number` is not
    /// ten digits: patients without one are reachable only by id).
    pub fn referrals_of_patient(&self, nhs_number: &str) -> Vec<&ReferralView> {
        if nhs_number.len() != 10 || !nhs_number.bytes().all(|b| b.is_ascii_digit()) {
            return Vec::new();
        }
        self.referrals_filed_under(nhs_number)
    }

    fn referrals_filed_under(&self, key: &str) -> Vec<&ReferralView> {
        self.patients
            .get(key)
            .map(|ids| ids.iter().filter_map(|id| self.referrals.get(id)).collect())
            .unwrap_or_default()
    }

    /// A `Patient` view: its id is the id of the first referral that carried
    /// the patient; its versions are every referral that carried them, in
    /// the order received. `None` when `id` is not such a first referral.
    pub fn patient(&self, id: &Uuid) -> Option<Vec<&ReferralView>> {
        let first = self.referrals.get(id)?;
        let all =
            self.referrals_filed_under(&patient_key(first.referral_id, &first.details.patient));
        (all.first().map(|r| r.referral_id) == Some(*id)).then_some(all)
    }

    /// Every `Patient` view (see [`Views::patient`]), by [`patient_key`].
    pub fn patients(&self) -> impl Iterator<Item = Vec<&ReferralView>> {
        self.patients
            .values()
            .map(|ids| ids.iter().filter_map(|id| self.referrals.get(id)).collect())
    }

    /// Every referral, in no particular order (searches sort what they
    /// match).
    pub fn referrals_unordered(&self) -> impl Iterator<Item = &ReferralView> {
        self.referrals.values()
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

    /// Patients waiting for an FCP appointment, and for rehabilitation.
    pub fn waiting_lists(&self) -> (usize, usize) {
        let active = |r: &&ReferralView| r.status == ReferralStatus::Triaged;
        let fcp = self
            .referrals
            .values()
            .filter(active)
            .filter(|r| {
                r.assessment
                    .as_ref()
                    .is_some_and(|a| a.stage == AssessmentStage::AwaitingAppointment)
            })
            .count();
        let rehab = self
            .referrals
            .values()
            .filter(active)
            .filter(|r| {
                r.rehab
                    .as_ref()
                    .is_some_and(|x| matches!(x.stage, RehabStage::Waiting | RehabStage::Offered))
            })
            .count();
        (fcp, rehab)
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
