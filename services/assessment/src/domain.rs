//! The episode of FCP assessment: pure decision ([`handle`]) and evolution
//! ([`apply`]).
//!
//! No I/O here. The service layer reads the `assessment-{referral_id}`
//! stream, folds it with [`apply`], passes in what a decision needs to look
//! up (the slot, the patient's NHS number, the time) and appends what
//! [`handle`] returns.

use chrono::{DateTime, Utc};
use mskflow_events::NhsNumber;
use mskflow_events::assessment::{
    AppointmentMissed, AssessmentBooked, AssessmentCancelled, AssessmentCompleted, AssessmentEvent,
    AssessmentRequested, AssessmentRescheduled, DecisionAid, DeliveryState, DischargeReason,
    DistressScreen, EpisodeDischarged, GroupProgramme, OnwardDestination, OnwardReferralRequested,
    Outcome, Party, Slot, SmokingStatus,
};
use mskflow_events::types::{FcpPriority, Pathway};
use serde::Deserialize;
use uuid::Uuid;

use crate::fhir;

/// Namespace of onward referral ids (UUIDv5 of referral id and destination).
/// Never change it: recorded onward referral ids are derived from it.
pub const ONWARD_REFERRAL_NAMESPACE: Uuid =
    Uuid::from_u128(0x3c0e_91d4_5a27_4f86_b1e3_7d20_6a9c_4f15);

/// Where an episode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// On the worklist: needs an appointment.
    AwaitingBooking,
    Booked,
    /// Assessed; the outcome plan is under way.
    Assessed,
    Discharged,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::AwaitingBooking => "awaiting-booking",
            Status::Booked => "booked",
            Status::Assessed => "assessed",
            Status::Discharged => "discharged",
        }
    }
}

/// An onward referral as the episode records it.
#[derive(Clone, PartialEq)]
pub struct OnwardReferral {
    pub onward_referral_id: Uuid,
    pub destination: OnwardDestination,
    pub delivery: DeliveryState,
    /// The outbound `ServiceRequest` (patient-identifiable: not in `Debug`).
    pub service_request: serde_json::Value,
}

impl std::fmt::Debug for OnwardReferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnwardReferral")
            .field("onward_referral_id", &self.onward_referral_id)
            .field("destination", &self.destination)
            .field("delivery", &self.delivery)
            .finish_non_exhaustive()
    }
}

/// An episode's state, folded from its events. The default value is the
/// state of a referral with no episode yet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpisodeState {
    pub referral_id: Option<Uuid>,
    /// `None` until assessment is requested.
    pub status: Option<Status>,
    /// Number of events applied (the stream version).
    pub version: u64,
    pub priority: Option<FcpPriority>,
    pub pathway: Option<Pathway>,
    pub triaged_at: Option<DateTime<Utc>>,
    /// The current appointment, while booked.
    pub booking: Option<Slot>,
    /// Slots this episode used up: missed, or in which it was assessed.
    /// They stay held by this referral for good.
    pub used_slots: Vec<Uuid>,
    /// Appointments missed in this episode.
    pub missed: u32,
    pub outcomes: Vec<Outcome>,
    pub onward_referrals: Vec<OnwardReferral>,
    pub discharge_reason: Option<DischargeReason>,
    pub notify_referrer: bool,
}

impl EpisodeState {
    /// Whether assessment has been requested for this referral.
    pub fn exists(&self) -> bool {
        self.status.is_some()
    }

    /// Whether the episode legitimately holds `slot_id`: its current
    /// booking, or a slot it used up.
    pub fn holds(&self, slot_id: Uuid) -> bool {
        self.booking.as_ref().is_some_and(|b| b.slot_id == slot_id)
            || self.used_slots.contains(&slot_id)
    }
}

/// The local policy of the assessment service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Missed appointments (did-not-attend) that end an episode; the patient
    /// returns to the worklist after fewer. At least 1.
    #[serde(default = "default_max_missed")]
    pub max_missed: u32,
}

fn default_max_missed() -> u32 {
    2
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_missed: default_max_missed(),
        }
    }
}

/// A policy file that was refused. Start-up only: the service does not
/// start (were it to reach a caller: gRPC `INVALID_ARGUMENT`, HTTP 400
/// OperationOutcome `invalid`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or an unknown or mistyped key.
    #[error("assessment policy: {0}")]
    Parse(#[from] toml::de::Error),
    /// A key that would use a non-clinical threshold (BMI, smoking, age
    /// cut-offs for surgery) as a barrier to referral. Never allowed.
    #[error(
        "assessment policy: '{key}' is a non-clinical criterion; BMI, smoking and similar thresholds may not restrict referral"
    )]
    NonClinicalCriterion { key: String },
    /// A value out of range.
    #[error("assessment policy: {0}")]
    Invalid(&'static str),
}

/// Words that mark a key as a non-clinical restriction on referral.
const NON_CLINICAL_MARKERS: &[&str] =
    &["bmi", "smok", "weight", "tobacco", "body_mass", "nicotine"];

impl Policy {
    /// Parse a policy from TOML. Non-clinical criteria are refused by name
    /// before anything else, so the message says why.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let value: toml::Table = toml::from_str(text)?;
        fn walk(table: &toml::Table, prefix: &str) -> Result<(), PolicyError> {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let lower = key.to_ascii_lowercase();
                if NON_CLINICAL_MARKERS.iter().any(|m| lower.contains(m)) {
                    return Err(PolicyError::NonClinicalCriterion { key: path });
                }
                if let toml::Value::Table(inner) = value {
                    walk(inner, &path)?;
                }
            }
            Ok(())
        }
        walk(&value, "")?;
        let policy: Policy = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Check the values.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_missed == 0 {
            return Err(PolicyError::Invalid("max_missed must be at least 1"));
        }
        Ok(())
    }
}

/// What the FCP recorded at assessment.
#[derive(Debug, Clone, PartialEq)]
pub struct AssessmentRecord {
    pub findings_summary: String,
    pub shared_decision_made: bool,
    pub decision_aid: Option<DecisionAid>,
    pub work_discussed: bool,
    pub fit_note_issued: bool,
    pub psychological_distress: DistressScreen,
    pub bmi: Option<f64>,
    pub smoking_status: Option<SmokingStatus>,
    pub outcomes: Vec<Outcome>,
}

/// What may be asked of an episode.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Triage sent the referral to an FCP.
    Request {
        referral_id: Uuid,
        priority: FcpPriority,
        pathway: Pathway,
        triaged_at: DateTime<Utc>,
    },
    /// Book an appointment in `slot` (already taken for this referral).
    Book { slot: Slot },
    /// Move the booked appointment to `slot`.
    Reschedule {
        slot: Slot,
        requested_by: Party,
        reason: Option<String>,
    },
    /// Cancel the booked appointment (the patient returns to the worklist),
    /// or with `end_episode` end the episode as well.
    Cancel {
        by: Party,
        reason: String,
        end_episode: bool,
    },
    /// The patient did not attend the appointment in `slot_id`.
    RecordDna { slot_id: Uuid },
    /// The FCP assessed the patient.
    Complete {
        record: AssessmentRecord,
        /// The patient's NHS number (from the referral), for outbound
        /// referrals.
        nhs_number: Option<NhsNumber>,
        now: DateTime<Utc>,
    },
    /// End the episode.
    Discharge {
        reason: DischargeReason,
        notify_referrer: bool,
    },
}

/// A command the episode refuses. Business outcomes, not failures: gRPC
/// `FAILED_PRECONDITION` (except [`DomainError::NotRequested`]: `NOT_FOUND`);
/// HTTP 409 OperationOutcome `business-rule` (404 `not-found`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("assessment is already requested for this referral")]
    AlreadyRequested,
    #[error("no assessment has been requested for this referral")]
    NotRequested,
    #[error("the episode has ended")]
    Discharged,
    #[error("the episode is already booked")]
    AlreadyBooked,
    #[error("the episode has no booked appointment")]
    NotBooked,
    #[error("the episode has already been assessed")]
    AlreadyAssessed,
    #[error("the appointment is already in that slot")]
    SameSlot,
    #[error("the booked appointment is in another slot")]
    WrongSlot,
    #[error("a slot must end after it starts")]
    SlotEndsBeforeStart,
    #[error("an assessment needs at least one outcome")]
    NoOutcomes,
    #[error("the same outcome is listed twice")]
    DuplicateOutcome,
    #[error("ESCAPE-pain is for knee or hip pain only, not the {pathway} pathway")]
    EscapePainPathway { pathway: Pathway },
    #[error("a decision aid is recorded but no shared decision was made")]
    DecisionAidWithoutSharedDecision,
    #[error("the findings summary is empty")]
    EmptyFindings,
    #[error("a {what} must have a reason")]
    MissingReason { what: &'static str },
    #[error("BMI must be a positive number")]
    InvalidBmi,
    #[error("an onward referral needs the patient's NHS number, which is not on record")]
    PatientUnknown,
    #[error("discharge is not possible while an appointment is booked: cancel it first")]
    DischargeWhileBooked,
}

fn live(state: &EpisodeState) -> Result<Status, DomainError> {
    match state.status {
        None => Err(DomainError::NotRequested),
        Some(Status::Discharged) => Err(DomainError::Discharged),
        Some(s) => Ok(s),
    }
}

fn booked(state: &EpisodeState) -> Result<&Slot, DomainError> {
    match live(state)? {
        Status::Booked => state.booking.as_ref().ok_or(DomainError::NotBooked),
        Status::Assessed => Err(DomainError::AlreadyAssessed),
        _ => Err(DomainError::NotBooked),
    }
}

fn check_slot(slot: &Slot) -> Result<(), DomainError> {
    if slot.end <= slot.start {
        return Err(DomainError::SlotEndsBeforeStart);
    }
    Ok(())
}

fn referral_id(state: &EpisodeState) -> Result<Uuid, DomainError> {
    state.referral_id.ok_or(DomainError::NotRequested)
}

/// Decide which events a command produces.
pub fn handle(
    state: &EpisodeState,
    cmd: Command,
    policy: &Policy,
) -> Result<Vec<AssessmentEvent>, DomainError> {
    match cmd {
        Command::Request {
            referral_id,
            priority,
            pathway,
            triaged_at,
        } => {
            if state.exists() {
                return Err(DomainError::AlreadyRequested);
            }
            Ok(vec![AssessmentEvent::AssessmentRequested(
                AssessmentRequested {
                    referral_id,
                    priority,
                    pathway,
                    triaged_at,
                },
            )])
        }
        Command::Book { slot } => {
            match live(state)? {
                Status::AwaitingBooking => {}
                Status::Booked => return Err(DomainError::AlreadyBooked),
                Status::Assessed => return Err(DomainError::AlreadyAssessed),
                Status::Discharged => return Err(DomainError::Discharged),
            }
            check_slot(&slot)?;
            Ok(vec![AssessmentEvent::AssessmentBooked(AssessmentBooked {
                referral_id: referral_id(state)?,
                slot,
            })])
        }
        Command::Reschedule {
            slot,
            requested_by,
            reason,
        } => {
            let current = booked(state)?;
            if current.slot_id == slot.slot_id {
                return Err(DomainError::SameSlot);
            }
            check_slot(&slot)?;
            Ok(vec![AssessmentEvent::AssessmentRescheduled(
                AssessmentRescheduled {
                    referral_id: referral_id(state)?,
                    previous_slot_id: current.slot_id,
                    slot,
                    requested_by,
                    reason: reason.filter(|r| !r.trim().is_empty()),
                },
            )])
        }
        Command::Cancel {
            by,
            reason,
            end_episode,
        } => {
            let status = live(state)?;
            if reason.trim().is_empty() {
                return Err(DomainError::MissingReason {
                    what: "cancellation",
                });
            }
            let slot_id = match status {
                Status::Booked => state.booking.as_ref().map(|b| b.slot_id),
                // Waiting: only the whole episode can be cancelled.
                Status::AwaitingBooking if end_episode => None,
                Status::AwaitingBooking => return Err(DomainError::NotBooked),
                Status::Assessed => return Err(DomainError::AlreadyAssessed),
                Status::Discharged => return Err(DomainError::Discharged),
            };
            let referral_id = referral_id(state)?;
            let mut events = vec![AssessmentEvent::AssessmentCancelled(AssessmentCancelled {
                referral_id,
                slot_id,
                cancelled_by: by,
                reason,
            })];
            if end_episode {
                events.push(AssessmentEvent::EpisodeDischarged(EpisodeDischarged {
                    referral_id,
                    reason: DischargeReason::Cancelled,
                    notify_referrer: true,
                }));
            }
            Ok(events)
        }
        Command::RecordDna { slot_id } => {
            let current = booked(state)?;
            if current.slot_id != slot_id {
                return Err(DomainError::WrongSlot);
            }
            let referral_id = referral_id(state)?;
            let missed_count = state.missed.saturating_add(1);
            let mut events = vec![AssessmentEvent::AppointmentMissed(AppointmentMissed {
                referral_id,
                slot_id,
                missed_count,
            })];
            if missed_count >= policy.max_missed {
                events.push(AssessmentEvent::EpisodeDischarged(EpisodeDischarged {
                    referral_id,
                    reason: DischargeReason::DidNotAttend,
                    notify_referrer: true,
                }));
            }
            Ok(events)
        }
        Command::Complete {
            record,
            nhs_number,
            now,
        } => complete(state, record, nhs_number.as_ref(), now),
        Command::Discharge {
            reason,
            notify_referrer,
        } => {
            if live(state)? == Status::Booked {
                return Err(DomainError::DischargeWhileBooked);
            }
            Ok(vec![AssessmentEvent::EpisodeDischarged(
                EpisodeDischarged {
                    referral_id: referral_id(state)?,
                    reason,
                    notify_referrer,
                },
            )])
        }
    }
}

/// Check an assessment record against the episode. Note what is *not*
/// checked: BMI and smoking status are recorded, never used to refuse an
/// onward referral (no non-clinical thresholds for joint surgery).
fn check_record(record: &AssessmentRecord, pathway: Option<Pathway>) -> Result<(), DomainError> {
    if record.findings_summary.trim().is_empty() {
        return Err(DomainError::EmptyFindings);
    }
    if record.outcomes.is_empty() {
        return Err(DomainError::NoOutcomes);
    }
    if record.decision_aid.is_some() && !record.shared_decision_made {
        return Err(DomainError::DecisionAidWithoutSharedDecision);
    }
    if let Some(bmi) = record.bmi
        && !(bmi.is_finite() && bmi > 0.0)
    {
        return Err(DomainError::InvalidBmi);
    }
    for (i, outcome) in record.outcomes.iter().enumerate() {
        if record.outcomes[..i].contains(outcome) {
            return Err(DomainError::DuplicateOutcome);
        }
        match outcome {
            Outcome::GroupProgramme {
                programme: GroupProgramme::EscapePain,
            } => match pathway {
                Some(Pathway::Knee | Pathway::Hip) => {}
                Some(other) => return Err(DomainError::EscapePainPathway { pathway: other }),
                None => return Err(DomainError::NotRequested),
            },
            Outcome::OnwardReferral { reason, .. } if reason.trim().is_empty() => {
                return Err(DomainError::MissingReason {
                    what: "onward referral",
                });
            }
            _ => {}
        }
    }
    // The same destination twice with different reasons is one referral.
    let destinations: Vec<OnwardDestination> = onward(&record.outcomes).map(|(d, _)| d).collect();
    for (i, d) in destinations.iter().enumerate() {
        if destinations[..i].contains(d) {
            return Err(DomainError::DuplicateOutcome);
        }
    }
    Ok(())
}

fn onward(outcomes: &[Outcome]) -> impl Iterator<Item = (OnwardDestination, &str)> {
    outcomes.iter().filter_map(|o| match o {
        Outcome::OnwardReferral {
            destination,
            reason,
        } => Some((*destination, reason.as_str())),
        _ => None,
    })
}

fn complete(
    state: &EpisodeState,
    record: AssessmentRecord,
    nhs_number: Option<&NhsNumber>,
    now: DateTime<Utc>,
) -> Result<Vec<AssessmentEvent>, DomainError> {
    let slot = booked(state)?;
    check_record(&record, state.pathway)?;
    let referral_id = referral_id(state)?;
    let mut events = Vec::with_capacity(2 + record.outcomes.len());
    let mut onward_events = Vec::new();
    for (destination, reason) in onward(&record.outcomes) {
        let nhs_number = nhs_number.ok_or(DomainError::PatientUnknown)?;
        let onward_referral_id = Uuid::new_v5(
            &ONWARD_REFERRAL_NAMESPACE,
            format!("{referral_id}\u{1f}{}", destination.code()).as_bytes(),
        );
        let service_request = fhir::onward_service_request(&fhir::OnwardRequest {
            onward_referral_id,
            referral_id,
            destination,
            reason,
            nhs_number,
            findings_summary: &record.findings_summary,
            clinician_id: &slot.clinician_id,
            authored_on: now,
        });
        onward_events.push(AssessmentEvent::OnwardReferralRequested(
            OnwardReferralRequested {
                onward_referral_id,
                referral_id,
                destination,
                reason: reason.to_owned(),
                service_request,
                delivery: DeliveryState::Pending,
            },
        ));
    }
    let discharge = record.outcomes.contains(&Outcome::Discharge);
    events.push(AssessmentEvent::AssessmentCompleted(AssessmentCompleted {
        referral_id,
        slot_id: slot.slot_id,
        clinician_id: slot.clinician_id.clone(),
        findings_summary: record.findings_summary,
        shared_decision_made: record.shared_decision_made,
        decision_aid: record.decision_aid,
        work_discussed: record.work_discussed,
        fit_note_issued: record.fit_note_issued,
        psychological_distress: record.psychological_distress,
        bmi: record.bmi,
        smoking_status: record.smoking_status,
        outcomes: record.outcomes,
    }));
    events.extend(onward_events);
    if discharge {
        events.push(AssessmentEvent::EpisodeDischarged(EpisodeDischarged {
            referral_id,
            reason: DischargeReason::AssessmentOutcome,
            notify_referrer: true,
        }));
    }
    Ok(events)
}

/// Evolve the state by one event.
pub fn apply(mut state: EpisodeState, event: &AssessmentEvent) -> EpisodeState {
    state.version += 1;
    match event {
        AssessmentEvent::AssessmentRequested(e) => {
            state.referral_id = Some(e.referral_id);
            state.status = Some(Status::AwaitingBooking);
            state.priority = Some(e.priority);
            state.pathway = Some(e.pathway);
            state.triaged_at = Some(e.triaged_at);
        }
        AssessmentEvent::AssessmentBooked(e) => {
            state.status = Some(Status::Booked);
            state.booking = Some(e.slot.clone());
        }
        AssessmentEvent::AssessmentRescheduled(e) => {
            state.status = Some(Status::Booked);
            state.booking = Some(e.slot.clone());
        }
        AssessmentEvent::AssessmentCancelled(_) => {
            state.status = Some(Status::AwaitingBooking);
            state.booking = None;
        }
        AssessmentEvent::AppointmentMissed(e) => {
            state.status = Some(Status::AwaitingBooking);
            state.booking = None;
            state.used_slots.push(e.slot_id);
            state.missed = e.missed_count;
        }
        AssessmentEvent::AssessmentCompleted(e) => {
            state.status = Some(Status::Assessed);
            state.booking = None;
            state.used_slots.push(e.slot_id);
            state.outcomes = e.outcomes.clone();
        }
        AssessmentEvent::OnwardReferralRequested(e) => {
            state.onward_referrals.push(OnwardReferral {
                onward_referral_id: e.onward_referral_id,
                destination: e.destination,
                delivery: e.delivery,
                service_request: e.service_request.clone(),
            });
        }
        AssessmentEvent::EpisodeDischarged(e) => {
            state.status = Some(Status::Discharged);
            state.booking = None;
            state.discharge_reason = Some(e.reason);
            state.notify_referrer = e.notify_referrer;
        }
    }
    state
}

/// Fold a stream of events into a state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a AssessmentEvent>) -> EpisodeState {
    events.into_iter().fold(EpisodeState::default(), apply)
}
