//! The questions, in plain English, with the codes their answers carry.
//! The web form and the call handler's form render these; the licensed
//! questionnaires (STarT Back, MSK-HQ) are not worded here: their items
//! come from the outcomes service's Questionnaires (with the wording an
//! operator holds a licence for), and only their structure is checked here.

use mskflow_events::selfreferral::{BodyArea, ProblemDuration, WorkStatus};
use mskflow_events::types::{RedFlag, Sex};

/// A red-flag question: its form field, its wording and the flag a "yes"
/// records. Asked before any other health question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedFlagQuestion {
    pub field: &'static str,
    pub text: &'static str,
    pub flag: RedFlag,
}

/// The red-flag questions, cauda equina first.
pub const RED_FLAGS: &[RedFlagQuestion] = &[
    RedFlagQuestion {
        field: "rf-saddle",
        text: "Do you have numbness or tingling between your legs or around your bottom (the area you would sit on a saddle)?",
        flag: RedFlag::SaddleAnaesthesia,
    },
    RedFlagQuestion {
        field: "rf-bladder",
        text: "Have you recently had problems controlling your bladder or bowels, or found you cannot pee?",
        flag: RedFlag::BladderOrBowelDysfunction,
    },
    RedFlagQuestion {
        field: "rf-both-legs",
        text: "Do you have pain, numbness or weakness in both legs that is getting worse?",
        flag: RedFlag::BilateralNeurologicalSymptoms,
    },
    RedFlagQuestion {
        field: "rf-cancer",
        text: "Have you ever had cancer?",
        flag: RedFlag::HistoryOfCancer,
    },
    RedFlagQuestion {
        field: "rf-weight",
        text: "Have you lost weight recently without trying?",
        flag: RedFlag::UnexplainedWeightLoss,
    },
    RedFlagQuestion {
        field: "rf-fever",
        text: "Do you have a high temperature, or feel hot and shivery and generally unwell?",
        flag: RedFlag::FeverOrSystemicIllness,
    },
    RedFlagQuestion {
        field: "rf-injury",
        text: "Did the problem start after a bad fall, a car accident or another serious injury?",
        flag: RedFlag::SignificantTrauma,
    },
];

/// Answers to a question with one choice: code and label.
pub type Choices<T> = &'static [(T, &'static str)];

pub const SEX: Choices<Sex> = &[
    (Sex::Female, "Female"),
    (Sex::Male, "Male"),
    (Sex::Other, "Other"),
    (Sex::Unknown, "I would rather not say"),
];

pub const BODY_AREAS: Choices<BodyArea> = &[
    (BodyArea::LowerBack, "Lower back"),
    (BodyArea::Neck, "Neck"),
    (BodyArea::Shoulder, "Shoulder"),
    (BodyArea::ElbowWristHand, "Elbow, wrist or hand"),
    (BodyArea::Hip, "Hip"),
    (BodyArea::Knee, "Knee"),
    (BodyArea::AnkleFoot, "Ankle or foot"),
    (BodyArea::ManyJoints, "Several joints"),
];

pub const DURATIONS: Choices<ProblemDuration> = &[
    (ProblemDuration::UnderSixWeeks, "Less than 6 weeks"),
    (
        ProblemDuration::SixWeeksToThreeMonths,
        "6 weeks to 3 months",
    ),
    (ProblemDuration::ThreeToTwelveMonths, "3 to 12 months"),
    (ProblemDuration::OverAYear, "More than a year"),
];

pub const WORK: Choices<WorkStatus> = &[
    (WorkStatus::Working, "Working (including self-employed)"),
    (WorkStatus::OffSick, "Off work because of this problem"),
    (
        WorkStatus::NotWorkingForOtherReasons,
        "Not working for another reason",
    ),
    (WorkStatus::Retired, "Retired"),
    (WorkStatus::Student, "In education"),
];

/// Number of MSK-HQ items (each scored 0..=4, higher is better).
pub const MSK_HQ_ITEMS: usize = 14;
/// Highest score of an MSK-HQ item.
pub const MSK_HQ_MAX: u8 = 4;
/// Number of STarT Back items: 1..8 agree (1) / disagree (0), item 9 on
/// five levels (1..=5), of which "very much" (4) and "extremely" (5) score 1.
pub const START_BACK_ITEMS: usize = 9;

/// The SNOMED CT reason and body site of a body area (the codes intake's
/// pathway table reads).
pub fn snomed(
    area: BodyArea,
) -> (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
) {
    match area {
        BodyArea::LowerBack => (
            "279039007",
            "Low back pain",
            Some(("122496007", "Lumbar spine structure")),
        ),
        BodyArea::Neck => (
            "81680005",
            "Neck pain",
            Some(("122494005", "Cervical spine structure")),
        ),
        BodyArea::Shoulder => (
            "45326000",
            "Shoulder pain",
            Some(("16982005", "Shoulder region structure")),
        ),
        BodyArea::ElbowWristHand => (
            "53057004",
            "Hand pain",
            Some(("85562004", "Hand structure")),
        ),
        BodyArea::Hip => (
            "49218002",
            "Hip pain",
            Some(("24136001", "Hip joint structure")),
        ),
        BodyArea::Knee => (
            "30989003",
            "Knee pain",
            Some(("72696002", "Knee region structure")),
        ),
        BodyArea::AnkleFoot => (
            "47933007",
            "Foot pain",
            Some(("56459004", "Foot structure")),
        ),
        BodyArea::ManyJoints => ("57676002", "Joint pain", None),
    }
}

/// The label of a choice's code.
pub fn label<T: PartialEq + Copy>(choices: Choices<T>, code: T) -> &'static str {
    choices
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("", |(_, l)| l)
}
