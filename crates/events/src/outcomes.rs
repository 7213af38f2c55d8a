//! Events of the outcome streams (`outcomes-{referral_id}`): patient-reported
//! outcome measures (PROMs) scheduled, sent, completed or overdue, and the
//! change between a baseline and a later score.
//!
//! Item answers are the scores the patient chose (item codes and numbers),
//! never free text, so these events carry no patient-identifiable data
//! beyond the referral id.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::intake::StartBackScore;
use crate::types::Error;

/// A patient-reported outcome measure.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Measure {
    /// Musculoskeletal Health Questionnaire: 14 items scored 0-4, total
    /// 0-56, higher is better.
    #[serde(rename = "msk-hq")]
    MskHq,
    /// Keele STarT Back Screening Tool: 9 items, total 0-9.
    #[serde(rename = "start-back")]
    StartBack,
    /// EQ-5D-5L: five dimensions at levels 1-5, a visual analogue scale
    /// 0-100, and an index value from a value set.
    #[serde(rename = "eq-5d-5l")]
    Eq5d5l,
    /// Patient-Specific Functional Scale: up to 5 activities scored 0-10.
    #[serde(rename = "psfs")]
    Psfs,
}

impl Measure {
    pub const ALL: &'static [Measure] = &[
        Measure::MskHq,
        Measure::StartBack,
        Measure::Eq5d5l,
        Measure::Psfs,
    ];

    /// The wire code (`msk-hq`).
    pub fn code(self) -> &'static str {
        match self {
            Measure::MskHq => "msk-hq",
            Measure::StartBack => "start-back",
            Measure::Eq5d5l => "eq-5d-5l",
            Measure::Psfs => "psfs",
        }
    }

    /// A human name.
    pub fn display(self) -> &'static str {
        match self {
            Measure::MskHq => "MSK-HQ",
            Measure::StartBack => "STarT Back",
            Measure::Eq5d5l => "EQ-5D-5L",
            Measure::Psfs => "Patient-Specific Functional Scale",
        }
    }

    pub fn parse(code: &str) -> Result<Self, Error> {
        Measure::ALL
            .iter()
            .copied()
            .find(|m| m.code() == code)
            .ok_or_else(|| Error::UnknownCode {
                what: "outcome measure",
                code: code.to_owned(),
            })
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// When in the pathway a measure is taken.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Timepoint {
    /// At first contact (the baseline).
    #[serde(rename = "first-contact")]
    FirstContact,
    /// At discharge.
    #[serde(rename = "discharge")]
    Discharge,
    /// Some months after discharge.
    #[serde(rename = "follow-up")]
    FollowUp,
}

impl Timepoint {
    pub const ALL: &'static [Timepoint] = &[
        Timepoint::FirstContact,
        Timepoint::Discharge,
        Timepoint::FollowUp,
    ];

    /// The wire code (`first-contact`).
    pub fn code(self) -> &'static str {
        match self {
            Timepoint::FirstContact => "first-contact",
            Timepoint::Discharge => "discharge",
            Timepoint::FollowUp => "follow-up",
        }
    }

    pub fn parse(code: &str) -> Result<Self, Error> {
        Timepoint::ALL
            .iter()
            .copied()
            .find(|t| t.code() == code)
            .ok_or_else(|| Error::UnknownCode {
                what: "outcome timepoint",
                code: code.to_owned(),
            })
    }
}

impl fmt::Display for Timepoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One answered item: the Questionnaire item's `linkId` and the score of the
/// chosen answer (or the number entered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ItemAnswer {
    pub link_id: String,
    pub value: i32,
}

/// The score(s) computed from one completed questionnaire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "measure")]
pub enum Score {
    /// MSK-HQ total 0-56 (higher is better).
    #[serde(rename = "msk-hq")]
    MskHq { total: u8 },
    /// STarT Back total, psychosocial subscore and risk group.
    #[serde(rename = "start-back")]
    StartBack(StartBackScore),
    /// EQ-5D-5L.
    #[serde(rename = "eq-5d-5l")]
    Eq5d5l {
        /// The five levels in dimension order, e.g. `11223`.
        profile: String,
        /// Visual analogue scale 0-100.
        vas: u8,
        /// Index value from the configured value set (1 = full health).
        index: f64,
        /// Which value set gave the index: `england-devlin-2018` for the
        /// built-in England value set (Devlin et al. 2018), else the name of
        /// the value set file the service loaded.
        value_set: String,
    },
    /// PSFS mean of the activities scored (0-10, higher is better).
    #[serde(rename = "psfs")]
    Psfs { mean: f64, activities: u8 },
}

impl Score {
    pub fn measure(&self) -> Measure {
        match self {
            Score::MskHq { .. } => Measure::MskHq,
            Score::StartBack(_) => Measure::StartBack,
            Score::Eq5d5l { .. } => Measure::Eq5d5l,
            Score::Psfs { .. } => Measure::Psfs,
        }
    }

    /// The headline number: MSK-HQ total, STarT Back total, EQ-5D-5L index,
    /// PSFS mean.
    pub fn value(&self) -> f64 {
        match self {
            Score::MskHq { total } => f64::from(*total),
            Score::StartBack(s) => f64::from(s.total),
            Score::Eq5d5l { index, .. } => *index,
            Score::Psfs { mean, .. } => *mean,
        }
    }
}

/// A questionnaire is due for a referral at a timepoint. Scheduled again
/// (with a new due date) when a later event moves the timepoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuestionnaireScheduled {
    pub referral_id: Uuid,
    pub measure: Measure,
    pub timepoint: Timepoint,
    pub due: DateTime<Utc>,
    /// The event that caused the schedule (its `event_id` and type).
    pub trigger_event_id: Uuid,
    pub trigger_event_type: String,
}

/// The questionnaire was sent to the patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuestionnaireSent {
    pub referral_id: Uuid,
    pub measure: Measure,
    pub timepoint: Timepoint,
    pub sent_at: DateTime<Utc>,
}

/// The patient's answers were received and scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuestionnaireCompleted {
    pub referral_id: Uuid,
    /// The `QuestionnaireResponse` id (retries of one response are recorded
    /// once).
    pub response_id: Uuid,
    pub measure: Measure,
    pub timepoint: Timepoint,
    pub answers: Vec<ItemAnswer>,
    pub score: Score,
    pub completed_at: DateTime<Utc>,
}

/// The questionnaire was not completed within the overdue window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuestionnaireOverdue {
    pub referral_id: Uuid,
    pub measure: Measure,
    pub timepoint: Timepoint,
    pub due: DateTime<Utc>,
    /// Days past due when found overdue.
    pub days_overdue: u32,
}

/// The change in a measure's score between two timepoints. Every measure
/// with a minimal important change is scored so that higher is better, so a
/// positive change is an improvement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeChangeRecorded {
    pub referral_id: Uuid,
    pub measure: Measure,
    pub from: Timepoint,
    pub to: Timepoint,
    pub baseline: f64,
    pub later: f64,
    /// `later - baseline`.
    pub change: f64,
    /// The minimal important change in force when recorded.
    pub minimal_important_change: f64,
    /// Whether `change >= minimal_important_change`.
    pub reached_minimal_important_change: bool,
}

/// Events of an `outcomes-{referral_id}` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum OutcomeEvent {
    QuestionnaireScheduled(QuestionnaireScheduled),
    QuestionnaireSent(QuestionnaireSent),
    QuestionnaireCompleted(QuestionnaireCompleted),
    QuestionnaireOverdue(QuestionnaireOverdue),
    OutcomeChangeRecorded(OutcomeChangeRecorded),
}

impl OutcomeEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            OutcomeEvent::QuestionnaireScheduled(_) => "QuestionnaireScheduled",
            OutcomeEvent::QuestionnaireSent(_) => "QuestionnaireSent",
            OutcomeEvent::QuestionnaireCompleted(_) => "QuestionnaireCompleted",
            OutcomeEvent::QuestionnaireOverdue(_) => "QuestionnaireOverdue",
            OutcomeEvent::OutcomeChangeRecorded(_) => "OutcomeChangeRecorded",
        }
    }

    /// Every outcome event type name.
    pub const TYPES: &'static [&'static str] = &[
        "QuestionnaireScheduled",
        "QuestionnaireSent",
        "QuestionnaireCompleted",
        "QuestionnaireOverdue",
        "OutcomeChangeRecorded",
    ];
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "QuestionnaireScheduled",
            schemars::schema_for!(QuestionnaireScheduled),
        ),
        (
            "QuestionnaireSent",
            schemars::schema_for!(QuestionnaireSent),
        ),
        (
            "QuestionnaireCompleted",
            schemars::schema_for!(QuestionnaireCompleted),
        ),
        (
            "QuestionnaireOverdue",
            schemars::schema_for!(QuestionnaireOverdue),
        ),
        (
            "OutcomeChangeRecorded",
            schemars::schema_for!(OutcomeChangeRecorded),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() -> Result<(), Error> {
        for m in Measure::ALL {
            assert_eq!(Measure::parse(m.code())?, *m);
            assert_eq!(
                serde_json::to_value(m).ok(),
                Some(serde_json::json!(m.code()))
            );
        }
        for t in Timepoint::ALL {
            assert_eq!(Timepoint::parse(t.code())?, *t);
        }
        assert!(Measure::parse("oxford-knee").is_err());
        Ok(())
    }

    #[test]
    fn score_is_tagged_by_measure() -> Result<(), serde_json::Error> {
        let s = Score::MskHq { total: 40 };
        assert_eq!(
            serde_json::to_value(&s)?,
            serde_json::json!({"measure": "msk-hq", "total": 40})
        );
        assert_eq!(s.measure(), Measure::MskHq);
        assert!((s.value() - 40.0).abs() < f64::EPSILON);
        Ok(())
    }
}
