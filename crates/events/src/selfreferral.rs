//! Events of patient self-referral (stream `selfref-{referral id}`, written
//! by the gateway's self-referral forms): what the patient or the call
//! handler answered beyond the referral itself, and the safety-netting
//! advice given when an answer suggested a red flag. The referral proper
//! (`ReferralReceived` with `received_via` `self-referral` or `telephone`,
//! and intake's triage) is on the referral's own stream.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::intake::StartBackScore;
use crate::types::{Error, ReceivedVia, RedFlag, code_enum};

code_enum!(
    /// Where the problem is, in the patient's words.
    BodyArea, "body area" {
        LowerBack = "lower-back",
        Neck = "neck",
        Shoulder = "shoulder",
        ElbowWristHand = "elbow-wrist-hand",
        Hip = "hip",
        Knee = "knee",
        AnkleFoot = "ankle-foot",
        ManyJoints = "many-joints",
    }
);

code_enum!(
    /// How long the problem has lasted.
    ProblemDuration, "problem duration" {
        UnderSixWeeks = "under-6-weeks",
        SixWeeksToThreeMonths = "6-weeks-to-3-months",
        ThreeToTwelveMonths = "3-to-12-months",
        OverAYear = "over-a-year",
    }
);

code_enum!(
    /// The patient's work status.
    WorkStatus, "work status" {
        Working = "working",
        OffSick = "off-sick",
        NotWorkingForOtherReasons = "not-working",
        Retired = "retired",
        Student = "student",
    }
);

code_enum!(
    /// What the person was told to do instead of waiting for the service.
    SafetyNetAdvice, "safety-net advice" {
        /// Call 999 or go to A&E now (suspected cauda equina syndrome).
        Emergency = "call-999-or-go-to-a-and-e",
        /// Contact the GP practice urgently, or NHS 111.
        UrgentGp = "contact-gp-urgently-or-111",
    }
);

/// A self-referral was completed (after the referral was accepted by intake).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SelfReferralSubmitted {
    pub referral_id: Uuid,
    /// The reference number the patient was given (`MSK-XXXX-XXXX`).
    pub reference: String,
    /// `self-referral` (web form) or `telephone`.
    pub route: ReceivedVia,
    /// Who took the call (the call handler's client id), for `telephone`.
    pub taken_by: Option<String>,
    /// Version of the question set that was asked.
    pub questions_version: String,
    pub body_area: BodyArea,
    pub duration: ProblemDuration,
    pub work_status: WorkStatus,
    /// STarT Back score, for back pain.
    pub start_back: Option<StartBackScore>,
    /// MSK-HQ baseline answers (items 1..14, each 0..=4, as scored).
    pub msk_hq: Vec<u8>,
    /// MSK-HQ baseline total (0..=56, higher is better).
    pub msk_hq_score: u8,
}

/// An answer suggested a red flag: the form stopped and told the person
/// where to go instead. The referral is recorded (and redirected by intake),
/// not lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SelfReferralSafetyNetted {
    pub referral_id: Uuid,
    pub reference: String,
    pub route: ReceivedVia,
    pub taken_by: Option<String>,
    /// Version of the safety-netting rules that decided.
    pub rule_set_version: String,
    pub advice: SafetyNetAdvice,
    pub red_flags: Vec<RedFlag>,
}

/// Events of a `selfref-{referral id}` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SelfReferralEvent {
    SelfReferralSubmitted(SelfReferralSubmitted),
    SelfReferralSafetyNetted(SelfReferralSafetyNetted),
}

impl SelfReferralEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            SelfReferralEvent::SelfReferralSubmitted(_) => "SelfReferralSubmitted",
            SelfReferralEvent::SelfReferralSafetyNetted(_) => "SelfReferralSafetyNetted",
        }
    }

    pub const TYPES: &'static [&'static str] =
        &["SelfReferralSubmitted", "SelfReferralSafetyNetted"];

    /// The stream of a referral's self-referral events.
    pub fn stream_id(referral_id: Uuid) -> String {
        format!("selfref-{referral_id}")
    }
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "SelfReferralSubmitted",
            schemars::schema_for!(SelfReferralSubmitted),
        ),
        (
            "SelfReferralSafetyNetted",
            schemars::schema_for!(SelfReferralSafetyNetted),
        ),
    ]
}
