//! The read models' types: a referral's view and what it holds, and the
//! capacity (classes and 1:1 slots) the Schedules and Slots show.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::assessment::{DischargeReason, OnwardDestination, Outcome, Slot};
use mskflow_events::intake::{ReferralDetails, StartBackScore};
use mskflow_events::scheduling::{
    BookedSession, ClassScheduled, DischargeReason as RehabDischargeReason, Programme,
    SchedulingEvent, SlotPublished,
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
pub(crate) const APPOINTMENT_NAMESPACE: Uuid =
    Uuid::from_u128(0x5d2c_7a19_3e4b_4f08_9c61_2b7e_0a8d_4f35);

pub(crate) fn fcp_appointment_id(referral_id: Uuid, slot_id: Uuid) -> Uuid {
    Uuid::new_v5(
        &APPOINTMENT_NAMESPACE,
        format!("fcp\u{1f}{referral_id}\u{1f}{slot_id}").as_bytes(),
    )
}

pub(crate) fn rehab_appointment_id(referral_id: Uuid, place: &str, session_no: u32) -> Uuid {
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
    pub(crate) fn apply(&mut self, envelope: &Envelope, event: SchedulingEvent) -> bool {
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
    pub(crate) fn set_appointment(
        &mut self,
        id: Uuid,
        status: AppointmentStatus,
        at: DateTime<Utc>,
    ) {
        if let Some(a) = self.appointments.iter_mut().find(|a| a.id == id) {
            a.status = status;
            a.last_updated = at;
        }
    }

    pub(crate) fn rehab_session(&self, session_no: u32) -> Option<Uuid> {
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
