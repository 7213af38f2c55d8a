//! Events of the assessment streams.
//!
//! - `assessment-{referral_id}`: one episode of First Contact Practitioner
//!   (FCP) assessment per triaged referral ([`AssessmentEvent`]).
//! - `fcp-slot-{slot_id}`: one stream per clinician appointment slot
//!   ([`SlotEvent`]); a slot is held by at most one referral at a time.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{ContactMode, FcpPriority, Pathway};

/// An FCP clinician's appointment slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Slot {
    pub slot_id: Uuid,
    /// The clinician's local staff identifier (never a name).
    pub clinician_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub mode: ContactMode,
    /// Venue of a face-to-face slot (site name or ODS site code).
    pub location: Option<String>,
}

/// Who asked for a change to an appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Party {
    Patient,
    Service,
}

/// Decision aids used in shared decision making (NICE NG226, NG100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionAid {
    HipOsteoarthritis,
    KneeOsteoarthritis,
    RheumatoidArthritis,
}

/// Result of the psychological distress screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DistressScreen {
    NotScreened,
    Negative,
    Positive,
}

/// Smoking status as recorded at assessment. Part of the clinical record
/// only: never a barrier to any onward referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SmokingStatus {
    Never,
    Former,
    Current,
}

/// Group exercise programmes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GroupProgramme {
    /// ESCAPE-pain: knee and hip pain only; 12 sessions, twice a week for
    /// six weeks.
    EscapePain,
}

/// Services an FCP can refer on to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnwardDestination {
    Orthopaedics,
    Rheumatology,
    PainService,
    Imaging,
    /// NHS Talking Therapies.
    TalkingTherapies,
    SocialPrescribing,
    WeightManagement,
}

impl OnwardDestination {
    /// The wire code (`pain-service`).
    pub fn code(self) -> &'static str {
        match self {
            OnwardDestination::Orthopaedics => "orthopaedics",
            OnwardDestination::Rheumatology => "rheumatology",
            OnwardDestination::PainService => "pain-service",
            OnwardDestination::Imaging => "imaging",
            OnwardDestination::TalkingTherapies => "talking-therapies",
            OnwardDestination::SocialPrescribing => "social-prescribing",
            OnwardDestination::WeightManagement => "weight-management",
        }
    }

    /// A human name for the destination service.
    pub fn display(self) -> &'static str {
        match self {
            OnwardDestination::Orthopaedics => "Orthopaedic service",
            OnwardDestination::Rheumatology => "Rheumatology service",
            OnwardDestination::PainService => "Pain management service",
            OnwardDestination::Imaging => "Diagnostic imaging",
            OnwardDestination::TalkingTherapies => "NHS Talking Therapies",
            OnwardDestination::SocialPrescribing => "Social prescribing",
            OnwardDestination::WeightManagement => "Weight management service",
        }
    }

    pub const ALL: &'static [OnwardDestination] = &[
        OnwardDestination::Orthopaedics,
        OnwardDestination::Rheumatology,
        OnwardDestination::PainService,
        OnwardDestination::Imaging,
        OnwardDestination::TalkingTherapies,
        OnwardDestination::SocialPrescribing,
        OnwardDestination::WeightManagement,
    ];
}

/// One outcome chosen at assessment; an assessment has one or more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Advice and supported self-management, optionally with a digital
    /// self-management app (e.g. SelfBack, getUBetter).
    AdviceAndSelfManagement { app: Option<String> },
    /// Community physiotherapy / rehabilitation, one to one.
    CommunityPhysiotherapy,
    /// A group exercise programme.
    GroupProgramme { programme: GroupProgramme },
    /// Strength and balance / falls prevention.
    StrengthAndBalance,
    /// Fracture liaison service after a fragility fracture.
    FractureLiaison,
    /// Referral on to another service.
    OnwardReferral {
        destination: OnwardDestination,
        /// The clinical reason for the referral.
        reason: String,
    },
    /// Discharge back to the referrer.
    Discharge,
}

/// Delivery of an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// Why an episode of assessment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DischargeReason {
    /// The assessment's outcome plan.
    AssessmentOutcome,
    /// The did-not-attend policy.
    DidNotAttend,
    /// The appointment was cancelled and the episode with it.
    Cancelled,
}

/// A triaged referral now awaits an FCP appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssessmentRequested {
    pub referral_id: Uuid,
    pub priority: FcpPriority,
    pub pathway: Pathway,
    /// When triage decided (the time waited is counted from here).
    pub triaged_at: DateTime<Utc>,
}

/// An appointment was booked in a clinician's slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssessmentBooked {
    pub referral_id: Uuid,
    pub slot: Slot,
}

/// A booked appointment moved to another slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssessmentRescheduled {
    pub referral_id: Uuid,
    pub previous_slot_id: Uuid,
    pub slot: Slot,
    pub requested_by: Party,
    pub reason: Option<String>,
}

/// An appointment (or, when no appointment was booked, the wait for one)
/// was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssessmentCancelled {
    pub referral_id: Uuid,
    /// The cancelled appointment's slot, if one was booked.
    pub slot_id: Option<Uuid>,
    pub cancelled_by: Party,
    pub reason: String,
}

/// The patient did not attend (DNA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentMissed {
    pub referral_id: Uuid,
    pub slot_id: Uuid,
    /// Appointments missed in this episode so far, this one included.
    pub missed_count: u32,
}

/// The FCP assessed the patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssessmentCompleted {
    pub referral_id: Uuid,
    pub slot_id: Uuid,
    pub clinician_id: String,
    /// The clinician's summary of findings (free text).
    pub findings_summary: String,
    pub shared_decision_made: bool,
    pub decision_aid: Option<DecisionAid>,
    pub work_discussed: bool,
    pub fit_note_issued: bool,
    pub psychological_distress: DistressScreen,
    /// Body mass index as recorded. Clinical record only.
    pub bmi: Option<f64>,
    /// Smoking status as recorded. Clinical record only.
    pub smoking_status: Option<SmokingStatus>,
    pub outcomes: Vec<Outcome>,
}

/// An outbound referral to another service, waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OnwardReferralRequested {
    pub onward_referral_id: Uuid,
    pub referral_id: Uuid,
    pub destination: OnwardDestination,
    pub reason: String,
    /// The outbound FHIR R4 `ServiceRequest`.
    pub service_request: serde_json::Value,
    pub delivery: DeliveryState,
}

/// The episode of assessment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EpisodeDischarged {
    pub referral_id: Uuid,
    pub reason: DischargeReason,
    /// Whether the referrer must be sent a discharge notice.
    pub notify_referrer: bool,
}

/// Events of an `assessment-{referral_id}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum AssessmentEvent {
    AssessmentRequested(AssessmentRequested),
    AssessmentBooked(AssessmentBooked),
    AssessmentRescheduled(AssessmentRescheduled),
    AssessmentCancelled(AssessmentCancelled),
    AppointmentMissed(AppointmentMissed),
    AssessmentCompleted(AssessmentCompleted),
    OnwardReferralRequested(OnwardReferralRequested),
    EpisodeDischarged(EpisodeDischarged),
}

impl AssessmentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            AssessmentEvent::AssessmentRequested(_) => "AssessmentRequested",
            AssessmentEvent::AssessmentBooked(_) => "AssessmentBooked",
            AssessmentEvent::AssessmentRescheduled(_) => "AssessmentRescheduled",
            AssessmentEvent::AssessmentCancelled(_) => "AssessmentCancelled",
            AssessmentEvent::AppointmentMissed(_) => "AppointmentMissed",
            AssessmentEvent::AssessmentCompleted(_) => "AssessmentCompleted",
            AssessmentEvent::OnwardReferralRequested(_) => "OnwardReferralRequested",
            AssessmentEvent::EpisodeDischarged(_) => "EpisodeDischarged",
        }
    }

    /// Every assessment event type name.
    pub const TYPES: &'static [&'static str] = &[
        "AssessmentRequested",
        "AssessmentBooked",
        "AssessmentRescheduled",
        "AssessmentCancelled",
        "AppointmentMissed",
        "AssessmentCompleted",
        "OnwardReferralRequested",
        "EpisodeDischarged",
    ];
}

/// Why a held slot was given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SlotReleaseReason {
    /// The appointment in it was cancelled.
    Cancelled,
    /// The appointment moved to another slot.
    Rescheduled,
    /// The slot was taken but the booking did not reach the episode.
    BookingAbandoned,
}

/// A clinician published a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FcpSlotPublished {
    pub slot: Slot,
}

/// A slot was taken for a referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FcpSlotBooked {
    pub slot_id: Uuid,
    pub referral_id: Uuid,
}

/// A slot was given back and can be booked again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FcpSlotReleased {
    pub slot_id: Uuid,
    /// The referral that held it.
    pub referral_id: Uuid,
    pub reason: SlotReleaseReason,
}

/// Events of an `fcp-slot-{slot_id}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SlotEvent {
    FcpSlotPublished(FcpSlotPublished),
    FcpSlotBooked(FcpSlotBooked),
    FcpSlotReleased(FcpSlotReleased),
}

impl SlotEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            SlotEvent::FcpSlotPublished(_) => "FcpSlotPublished",
            SlotEvent::FcpSlotBooked(_) => "FcpSlotBooked",
            SlotEvent::FcpSlotReleased(_) => "FcpSlotReleased",
        }
    }

    /// Every slot event type name.
    pub const TYPES: &'static [&'static str] =
        &["FcpSlotPublished", "FcpSlotBooked", "FcpSlotReleased"];
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "AssessmentRequested",
            schemars::schema_for!(AssessmentRequested),
        ),
        ("AssessmentBooked", schemars::schema_for!(AssessmentBooked)),
        (
            "AssessmentRescheduled",
            schemars::schema_for!(AssessmentRescheduled),
        ),
        (
            "AssessmentCancelled",
            schemars::schema_for!(AssessmentCancelled),
        ),
        (
            "AppointmentMissed",
            schemars::schema_for!(AppointmentMissed),
        ),
        (
            "AssessmentCompleted",
            schemars::schema_for!(AssessmentCompleted),
        ),
        (
            "OnwardReferralRequested",
            schemars::schema_for!(OnwardReferralRequested),
        ),
        (
            "EpisodeDischarged",
            schemars::schema_for!(EpisodeDischarged),
        ),
        ("FcpSlotPublished", schemars::schema_for!(FcpSlotPublished)),
        ("FcpSlotBooked", schemars::schema_for!(FcpSlotBooked)),
        ("FcpSlotReleased", schemars::schema_for!(FcpSlotReleased)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_serialise_with_kebab_case_codes() -> Result<(), serde_json::Error> {
        let o = Outcome::OnwardReferral {
            destination: OnwardDestination::PainService,
            reason: "persistent pain".to_owned(),
        };
        assert_eq!(
            serde_json::to_value(&o)?,
            serde_json::json!({"outcome": "onward-referral", "destination": "pain-service", "reason": "persistent pain"})
        );
        let unit = serde_json::to_value(Outcome::CommunityPhysiotherapy)?;
        assert_eq!(
            unit,
            serde_json::json!({"outcome": "community-physiotherapy"})
        );
        let back: Outcome = serde_json::from_value(unit)?;
        assert_eq!(back, Outcome::CommunityPhysiotherapy);
        for d in OnwardDestination::ALL {
            assert_eq!(serde_json::to_value(d)?, serde_json::json!(d.code()));
        }
        Ok(())
    }
}
