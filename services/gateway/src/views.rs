//! Read models behind the FHIR views: built only from events.
//!
//! [`Views::apply`] is pure and idempotent (an event at or below a referral's
//! version is skipped), so replaying the log from empty rebuilds exactly the
//! same views; `tests` prove it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::IntakeEvent;
use mskflow_events::assessment::{
    AssessmentEvent, DischargeReason, OnwardDestination, Outcome, Slot,
};
use mskflow_events::delivery::DeliveryEvent;
use mskflow_events::intake::{ReferralDetails, StartBackScore};
use mskflow_events::scheduling::{
    BookedSession, ClassScheduled, DischargeReason as RehabDischargeReason, Programme,
    SchedulingEvent, SlotPublished,
};
use mskflow_events::subscription::SubscriptionEvent;
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

/// Where an appointment stands (FHIR `Appointment.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppointmentStatus {
    Booked,
    Fulfilled,
    Noshow,
    Cancelled,
}

impl AppointmentStatus {
    pub fn code(self) -> &'static str {
        match self {
            AppointmentStatus::Booked => "booked",
            AppointmentStatus::Fulfilled => "fulfilled",
            AppointmentStatus::Noshow => "noshow",
            AppointmentStatus::Cancelled => "cancelled",
        }
    }
}

/// What an appointment is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AppointmentKind {
    /// The First Contact Practitioner assessment.
    FcpAssessment { slot_id: Uuid, clinician_id: String },
    /// One session of a rehabilitation course.
    RehabSession {
        programme: Programme,
        session_no: u32,
        of: u32,
    },
}

/// One appointment of a referral (FCP assessment or rehab session).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppointmentView {
    pub id: Uuid,
    pub kind: AppointmentKind,
    pub status: AppointmentStatus,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub mode: mskflow_events::types::ContactMode,
    /// Site name or venue id.
    pub location: Option<String>,
    pub last_updated: DateTime<Utc>,
}

/// An outbound referral to another service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnwardView {
    pub id: Uuid,
    pub destination: OnwardDestination,
    pub service_request: serde_json::Value,
    pub recorded: DateTime<Utc>,
    /// `pending`, `retrying`, `delivered` or `failed` (given up).
    pub delivery: &'static str,
    pub attempts: u32,
    pub delivery_reason: Option<String>,
}

/// Namespace of appointment ids (UUIDv5 of the referral and what was booked).
const APPOINTMENT_NAMESPACE: Uuid = Uuid::from_u128(0x5d2c_7a19_3e4b_4f08_9c61_2b7e_0a8d_4f35);

fn fcp_appointment_id(referral_id: Uuid, slot_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &APPOINTMENT_NAMESPACE,
        format!("fcp\u{1f}{referral_id}\u{1f}{slot_id}").as_bytes(),
    )
}

fn rehab_appointment_id(referral_id: Uuid, place: &str, session_no: u32) -> Uuid {
    Uuid::new_v5(
        &APPOINTMENT_NAMESPACE,
        format!("rehab\u{1f}{referral_id}\u{1f}{place}\u{1f}{session_no}").as_bytes(),
    )
}

/// A group class and who is enrolled (from the `class-{id}` stream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassView {
    pub version: u64,
    pub scheduled: ClassScheduled,
    pub enrolled: std::collections::BTreeSet<Uuid>,
    pub last_updated: DateTime<Utc>,
}

/// A 1:1 rehab slot and who holds it (from the `rehab-slot-{id}` stream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RehabSlotView {
    pub version: u64,
    pub published: SlotPublished,
    pub booked_by: Option<Uuid>,
    pub last_updated: DateTime<Utc>,
}

/// Rehab capacity: venues, classes and 1:1 slots.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Capacity {
    pub venues: BTreeMap<String, String>,
    pub classes: BTreeMap<Uuid, ClassView>,
    pub slots: BTreeMap<Uuid, RehabSlotView>,
}

impl Capacity {
    fn apply(&mut self, envelope: &Envelope, event: SchedulingEvent) -> bool {
        let at = envelope.recorded_at;
        let seq = envelope.sequence;
        match event {
            SchedulingEvent::VenueRegistered(e) => {
                self.venues.insert(e.venue_id, e.name);
            }
            SchedulingEvent::ClassScheduled(e) => {
                if self
                    .classes
                    .get(&e.class_id)
                    .is_some_and(|c| seq <= c.version)
                {
                    return false;
                }
                self.classes.insert(
                    e.class_id,
                    ClassView {
                        version: seq,
                        scheduled: e,
                        enrolled: Default::default(),
                        last_updated: at,
                    },
                );
            }
            SchedulingEvent::ClassEnrolled(e) => match self.classes.get_mut(&e.class_id) {
                Some(c) if seq > c.version => {
                    c.version = seq;
                    c.last_updated = at;
                    c.enrolled.insert(e.referral_id);
                }
                _ => return false,
            },
            SchedulingEvent::ClassPlaceReleased(e) => match self.classes.get_mut(&e.class_id) {
                Some(c) if seq > c.version => {
                    c.version = seq;
                    c.last_updated = at;
                    c.enrolled.remove(&e.referral_id);
                }
                _ => return false,
            },
            SchedulingEvent::SlotPublished(e) => {
                if self.slots.get(&e.slot_id).is_some_and(|s| seq <= s.version) {
                    return false;
                }
                self.slots.insert(
                    e.slot_id,
                    RehabSlotView {
                        version: seq,
                        published: e,
                        booked_by: None,
                        last_updated: at,
                    },
                );
            }
            SchedulingEvent::SlotBooked(e) => match self.slots.get_mut(&e.slot_id) {
                Some(s) if seq > s.version => {
                    s.version = seq;
                    s.last_updated = at;
                    s.booked_by = Some(e.referral_id);
                }
                _ => return false,
            },
            SchedulingEvent::SlotReleased(e) => match self.slots.get_mut(&e.slot_id) {
                Some(s) if seq > s.version => {
                    s.version = seq;
                    s.last_updated = at;
                    s.booked_by = None;
                }
                _ => return false,
            },
            _ => return false,
        }
        true
    }
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
    /// As received, except `fhir_json`, which is empty here: the referral as
    /// sent is read back from the log when needed ([`crate::sent`]).
    pub details: ReferralDetails,
    pub rule_set_version: Option<String>,
    pub rule_id: Option<String>,
    pub decision: Option<Decision>,
    pub cancellation: Option<Cancellation>,
    pub assessment: Option<AssessmentView>,
    pub rehab: Option<RehabView>,
    /// Every appointment, in the order booked.
    pub appointments: Vec<AppointmentView>,
    /// Outbound referrals made at assessment.
    pub onward: Vec<OnwardView>,
    /// When the FCP assessment took place (for the Encounter view).
    pub assessed: Option<AssessedView>,
    /// Delivery events applied (they change the Task's outputs).
    pub deliveries: u64,
}

/// The FCP assessment as it happened (the `Encounter`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssessedView {
    pub appointment_id: Uuid,
    pub clinician_id: String,
    pub recorded: DateTime<Utc>,
    pub outcomes: Vec<Outcome>,
}

impl ReferralView {
    fn set_appointment(&mut self, id: Uuid, status: AppointmentStatus, at: DateTime<Utc>) {
        if let Some(a) = self.appointments.iter_mut().find(|a| a.id == id) {
            a.status = status;
            a.last_updated = at;
        }
    }

    fn rehab_session(&self, session_no: u32) -> Option<Uuid> {
        self.appointments
            .iter()
            .rev()
            .find(|a| matches!(a.kind, AppointmentKind::RehabSession { session_no: n, .. } if n == session_no))
            .map(|a| a.id)
    }
}

impl ReferralView {
    /// The Task's version: every event of the referral, its assessment and
    /// its rehabilitation counts.
    pub fn task_version(&self) -> u64 {
        self.version
            + self.assessment.as_ref().map_or(0, |a| a.version)
            + self.rehab.as_ref().map_or(0, |r| r.version)
            + self.deliveries
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
    /// Appointment id -> referral id.
    appointments: BTreeMap<Uuid, Uuid>,
    /// Onward referral id -> referral id.
    onward: BTreeMap<Uuid, Uuid>,
    capacity: Capacity,
    /// NHS number -> the referrals that carried that patient, in the order
    /// received (the `Patient` views and patient searches). Derived from
    /// `referrals`, so not serialised.
    #[serde(skip)]
    patients: BTreeMap<String, Vec<Uuid>>,
    /// FHIR Subscriptions, active and off.
    subscriptions: BTreeMap<Uuid, crate::subscription::SubscriptionView>,
    /// Search indexes over `referrals`, refiled whenever a referral changes.
    /// Derived, so not serialised.
    #[serde(skip)]
    index: SearchIndex,
}

/// What a referral is filed under in the [`SearchIndex`]: the values FHIR
/// searches filter and sort on, computed exactly as the searches compute
/// them ([`crate::render`], [`crate::search`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexKeys {
    task_status: &'static str,
    service_request_status: &'static str,
    business_status: &'static str,
    task_last_updated: DateTime<Utc>,
    service_request_last_updated: DateTime<Utc>,
    task_authored: DateTime<Utc>,
    service_request_authored: DateTime<Utc>,
}

impl IndexKeys {
    fn of(view: &ReferralView) -> Self {
        use crate::search::{Resource, authored, last_updated};
        IndexKeys {
            task_status: crate::render::task_status(view),
            service_request_status: crate::render::service_request_status(view),
            business_status: crate::render::business_status(view).0,
            task_last_updated: last_updated(Resource::Task, view),
            service_request_last_updated: last_updated(Resource::ServiceRequest, view),
            task_authored: authored(Resource::Task, view),
            service_request_authored: authored(Resource::ServiceRequest, view),
        }
    }
}

/// An ordered index: (time, referral id), so a time range is a range query.
pub type TimeIndex = BTreeSet<(DateTime<Utc>, Uuid)>;

/// Referral ids by the code they are filed under.
type CodeIndex = BTreeMap<&'static str, BTreeSet<Uuid>>;

/// Search indexes over the referrals: by Task and ServiceRequest status, by
/// Task business status, and ordered by last-updated and authored time (per
/// resource, as each resource defines them). Kept in step with the views by
/// [`Views::apply`]: a referral whose status or times change moves.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SearchIndex {
    /// Where each referral is filed now.
    keys: HashMap<Uuid, IndexKeys>,
    task_status: CodeIndex,
    service_request_status: CodeIndex,
    business_status: CodeIndex,
    task_last_updated: TimeIndex,
    service_request_last_updated: TimeIndex,
    task_authored: TimeIndex,
    service_request_authored: TimeIndex,
}

fn move_code(index: &mut CodeIndex, id: Uuid, old: Option<&'static str>, new: &'static str) {
    if old == Some(new) {
        return;
    }
    if let Some(old) = old
        && let Some(ids) = index.get_mut(old)
    {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(old);
        }
    }
    index.entry(new).or_default().insert(id);
}

fn move_time(index: &mut TimeIndex, id: Uuid, old: Option<DateTime<Utc>>, new: DateTime<Utc>) {
    if old == Some(new) {
        return;
    }
    if let Some(old) = old {
        index.remove(&(old, id));
    }
    index.insert((new, id));
}

impl SearchIndex {
    /// File (or refile) referral `id` under `keys`.
    fn file(&mut self, id: Uuid, keys: IndexKeys) {
        let old = self.keys.insert(id, keys);
        if old == Some(keys) {
            return;
        }
        move_code(
            &mut self.task_status,
            id,
            old.map(|o| o.task_status),
            keys.task_status,
        );
        move_code(
            &mut self.service_request_status,
            id,
            old.map(|o| o.service_request_status),
            keys.service_request_status,
        );
        move_code(
            &mut self.business_status,
            id,
            old.map(|o| o.business_status),
            keys.business_status,
        );
        move_time(
            &mut self.task_last_updated,
            id,
            old.map(|o| o.task_last_updated),
            keys.task_last_updated,
        );
        move_time(
            &mut self.service_request_last_updated,
            id,
            old.map(|o| o.service_request_last_updated),
            keys.service_request_last_updated,
        );
        move_time(
            &mut self.task_authored,
            id,
            old.map(|o| o.task_authored),
            keys.task_authored,
        );
        move_time(
            &mut self.service_request_authored,
            id,
            old.map(|o| o.service_request_authored),
            keys.service_request_authored,
        );
    }

    /// The referrals whose `resource` status (`Task.status` or
    /// `ServiceRequest.status`) is `code`.
    pub fn with_status(
        &self,
        resource: crate::search::Resource,
        code: &str,
    ) -> Option<&BTreeSet<Uuid>> {
        match resource {
            crate::search::Resource::Task => self.task_status.get(code),
            crate::search::Resource::ServiceRequest => self.service_request_status.get(code),
        }
    }

    /// The referrals whose `Task.businessStatus` code is `code`.
    pub fn with_business_status(&self, code: &str) -> Option<&BTreeSet<Uuid>> {
        self.business_status.get(code)
    }

    /// Every referral by `resource`'s last-updated time.
    pub fn last_updated(&self, resource: crate::search::Resource) -> &TimeIndex {
        match resource {
            crate::search::Resource::Task => &self.task_last_updated,
            crate::search::Resource::ServiceRequest => &self.service_request_last_updated,
        }
    }

    /// Every referral by `resource`'s authored time.
    pub fn authored(&self, resource: crate::search::Resource) -> &TimeIndex {
        match resource {
            crate::search::Resource::Task => &self.task_authored,
            crate::search::Resource::ServiceRequest => &self.service_request_authored,
        }
    }
}

impl Views {
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
                    .entry(e.referral.patient.nhs_number.as_str().to_owned())
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
    pub fn subscriptions(&self) -> impl Iterator<Item = &crate::subscription::SubscriptionView> {
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
        match crate::subscription::SubscriptionView::evolve(current, envelope, &event) {
            Some(s) => {
                self.subscriptions.insert(id, s);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The referrals that carried the patient with this NHS number, in the
    /// order received (empty when none did).
    pub fn referrals_of_patient(&self, nhs_number: &str) -> Vec<&ReferralView> {
        self.patients
            .get(nhs_number)
            .map(|ids| ids.iter().filter_map(|id| self.referrals.get(id)).collect())
            .unwrap_or_default()
    }

    /// A `Patient` view: its id is the id of the first referral that carried
    /// the patient; its versions are every referral that carried them, in
    /// the order received. `None` when `id` is not such a first referral.
    pub fn patient(&self, id: &Uuid) -> Option<Vec<&ReferralView>> {
        let first = self.referrals.get(id)?;
        let all = self.referrals_of_patient(first.details.patient.nhs_number.as_str());
        (all.first().map(|r| r.referral_id) == Some(*id)).then_some(all)
    }

    /// Every `Patient` view (see [`Views::patient`]), by NHS number.
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
    fn the_referral_as_sent_stays_in_the_log_not_in_the_views()
    -> Result<(), Box<dyn std::error::Error>> {
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
}
