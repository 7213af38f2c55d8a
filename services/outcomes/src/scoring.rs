//! The outcome measures and their scoring. Pure: no I/O except
//! [`ValueSet::from_path`], which only reads the file it is given.
//!
//! Every measure is checked item by item before it is scored: an answer to
//! an item the measure does not have, the same item answered twice, a value
//! out of the item's range, or a required item missing are each reported
//! with the item's `linkId`, all at once ([`Invalid`]).
//!
//! - **MSK-HQ**: items `1`..`14`, each 0-4; total 0-56, higher is better.
//!   A partly answered MSK-HQ is refused, naming the missing items: no
//!   missing-item rule is applied, so every recorded total is a full one.
//! - **STarT Back**: items `1`..`8` are 0 (disagree) or 1 (agree); item `9`
//!   (bothersomeness) is 1-5 from "not at all" to "extremely", and scores 1
//!   for 4 ("very much") or 5 ("extremely"). Total 0-9, psychosocial
//!   subscore items 5-9, risk low (total <= 3), high (psychosocial >= 4) or
//!   medium (Keele STarT Back tool).
//! - **EQ-5D-5L**: items `mobility`, `self-care`, `usual-activities`,
//!   `pain-discomfort`, `anxiety-depression` at levels 1-5, and `vas` 0-100.
//!   The profile is the five levels in that order (`11223`); its index value
//!   comes from the configured [`ValueSet`].
//! - **PSFS**: items `activity-1`..`activity-5`, each 0-10, at least one;
//!   the score is the mean of the activities scored.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use mskflow_events::intake::StartBackAnswers;
use mskflow_events::outcomes::{ItemAnswer, Measure, Score};

/// One question of a measure: its `linkId` and the range of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemDef {
    pub link_id: &'static str,
    pub min: i32,
    pub max: i32,
    /// Whether the measure cannot be scored without it.
    pub required: bool,
}

const fn item(link_id: &'static str, min: i32, max: i32, required: bool) -> ItemDef {
    ItemDef {
        link_id,
        min,
        max,
        required,
    }
}

const MSK_HQ_ITEMS: [ItemDef; 14] = [
    item("1", 0, 4, true),
    item("2", 0, 4, true),
    item("3", 0, 4, true),
    item("4", 0, 4, true),
    item("5", 0, 4, true),
    item("6", 0, 4, true),
    item("7", 0, 4, true),
    item("8", 0, 4, true),
    item("9", 0, 4, true),
    item("10", 0, 4, true),
    item("11", 0, 4, true),
    item("12", 0, 4, true),
    item("13", 0, 4, true),
    item("14", 0, 4, true),
];

const START_BACK_ITEMS: [ItemDef; 9] = [
    item("1", 0, 1, true),
    item("2", 0, 1, true),
    item("3", 0, 1, true),
    item("4", 0, 1, true),
    item("5", 0, 1, true),
    item("6", 0, 1, true),
    item("7", 0, 1, true),
    item("8", 0, 1, true),
    item("9", 1, 5, true),
];

/// EQ-5D-5L dimensions in profile order.
pub const EQ5D_DIMENSIONS: [&str; 5] = [
    "mobility",
    "self-care",
    "usual-activities",
    "pain-discomfort",
    "anxiety-depression",
];

const EQ5D_ITEMS: [ItemDef; 6] = [
    item("mobility", 1, 5, true),
    item("self-care", 1, 5, true),
    item("usual-activities", 1, 5, true),
    item("pain-discomfort", 1, 5, true),
    item("anxiety-depression", 1, 5, true),
    item("vas", 0, 100, true),
];

const PSFS_ITEMS: [ItemDef; 5] = [
    item("activity-1", 0, 10, false),
    item("activity-2", 0, 10, false),
    item("activity-3", 0, 10, false),
    item("activity-4", 0, 10, false),
    item("activity-5", 0, 10, false),
];

/// The items of a measure, in questionnaire order.
pub fn items(measure: Measure) -> &'static [ItemDef] {
    match measure {
        Measure::MskHq => &MSK_HQ_ITEMS,
        Measure::StartBack => &START_BACK_ITEMS,
        Measure::Eq5d5l => &EQ5D_ITEMS,
        Measure::Psfs => &PSFS_ITEMS,
    }
}

/// What is wrong with one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A required item was not answered.
    Missing,
    /// The value is outside the item's range.
    OutOfRange { value: i32, min: i32, max: i32 },
    /// The measure has no item with this `linkId`.
    UnknownItem,
    /// The item was answered more than once.
    Duplicate,
    /// PSFS with no activity scored.
    NoActivity,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("is not answered (every item is required)"),
            Problem::OutOfRange { value, min, max } => {
                write!(f, "value {value} is out of range {min}-{max}")
            }
            Problem::UnknownItem => f.write_str("is not an item of this questionnaire"),
            Problem::Duplicate => f.write_str("is answered more than once"),
            Problem::NoActivity => f.write_str("at least one activity must be scored"),
        }
    }
}

/// One item that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemProblem {
    pub link_id: String,
    pub problem: Problem,
}

/// A questionnaire response that cannot be scored: every failing item.
/// gRPC `INVALID_ARGUMENT` with one BadRequest field violation per item
/// (`answers[link_id=N]`); HTTP 400 OperationOutcome `invalid` with one
/// issue per item (`QuestionnaireResponse.item[linkId='N']`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{measure} cannot be scored: {}", .problems.iter().map(|p| format!("item {}: {}", p.link_id, p.problem)).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub measure: Measure,
    pub problems: Vec<ItemProblem>,
}

impl Invalid {
    /// The `linkId`s of the failing items.
    pub fn link_ids(&self) -> Vec<&str> {
        self.problems.iter().map(|p| p.link_id.as_str()).collect()
    }
}

/// Check the answers against the measure's items; return each item's value
/// by `linkId`.
fn check(measure: Measure, answers: &[ItemAnswer]) -> Result<HashMap<&str, i32>, Invalid> {
    let defs = items(measure);
    let mut values: HashMap<&str, i32> = HashMap::with_capacity(answers.len());
    let mut problems = Vec::new();
    for answer in answers {
        let link_id = answer.link_id.as_str();
        let Some(def) = defs.iter().find(|d| d.link_id == link_id) else {
            problems.push(ItemProblem {
                link_id: link_id.to_owned(),
                problem: Problem::UnknownItem,
            });
            continue;
        };
        if values.insert(link_id, answer.value).is_some() {
            problems.push(ItemProblem {
                link_id: link_id.to_owned(),
                problem: Problem::Duplicate,
            });
            continue;
        }
        if !(def.min..=def.max).contains(&answer.value) {
            problems.push(ItemProblem {
                link_id: link_id.to_owned(),
                problem: Problem::OutOfRange {
                    value: answer.value,
                    min: def.min,
                    max: def.max,
                },
            });
        }
    }
    for def in defs {
        if def.required && !values.contains_key(def.link_id) {
            problems.push(ItemProblem {
                link_id: def.link_id.to_owned(),
                problem: Problem::Missing,
            });
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(Invalid { measure, problems })
    }
}

/// A value checked by [`check`] (in range, so small and non-negative).
fn get(values: &HashMap<&str, i32>, link_id: &str) -> u8 {
    values
        .get(link_id)
        .and_then(|v| u8::try_from(*v).ok())
        .unwrap_or(0)
}

/// Score a questionnaire response. EQ-5D-5L needs the value set.
pub fn score(
    measure: Measure,
    answers: &[ItemAnswer],
    value_set: &ValueSet,
) -> Result<Score, Invalid> {
    match measure {
        Measure::MskHq => msk_hq(answers),
        Measure::StartBack => start_back(answers),
        Measure::Eq5d5l => eq5d5l(answers, value_set),
        Measure::Psfs => psfs(answers),
    }
}

/// MSK-HQ total (all 14 items required).
pub fn msk_hq(answers: &[ItemAnswer]) -> Result<Score, Invalid> {
    let values = check(Measure::MskHq, answers)?;
    let total = MSK_HQ_ITEMS
        .iter()
        .map(|d| get(&values, d.link_id))
        .sum::<u8>();
    Ok(Score::MskHq { total })
}

/// STarT Back total, psychosocial subscore and risk.
pub fn start_back(answers: &[ItemAnswer]) -> Result<Score, Invalid> {
    let values = check(Measure::StartBack, answers)?;
    let mut agreed = [false; 9];
    for (i, def) in START_BACK_ITEMS.iter().enumerate() {
        let v = get(&values, def.link_id);
        agreed[i] = if def.link_id == "9" { v >= 4 } else { v == 1 };
    }
    Ok(Score::StartBack(StartBackAnswers(agreed).score()))
}

/// EQ-5D-5L profile, VAS and index.
pub fn eq5d5l(answers: &[ItemAnswer], value_set: &ValueSet) -> Result<Score, Invalid> {
    let values = check(Measure::Eq5d5l, answers)?;
    let levels = EQ5D_DIMENSIONS.map(|d| get(&values, d));
    let profile: String = levels.iter().map(|l| char::from(b'0' + *l)).collect();
    let index = value_set.index(&levels);
    Ok(Score::Eq5d5l {
        profile,
        vas: get(&values, "vas"),
        index,
        value_set: value_set.name().to_owned(),
    })
}

/// PSFS mean of the activities scored.
pub fn psfs(answers: &[ItemAnswer]) -> Result<Score, Invalid> {
    let values = check(Measure::Psfs, answers)?;
    if values.is_empty() {
        return Err(Invalid {
            measure: Measure::Psfs,
            problems: vec![ItemProblem {
                link_id: "activity-1".to_owned(),
                problem: Problem::NoActivity,
            }],
        });
    }
    let sum: i32 = values.values().sum();
    let n = values.len();
    Ok(Score::Psfs {
        mean: f64::from(sum) / n as f64,
        activities: u8::try_from(n).unwrap_or(u8::MAX),
    })
}

/// Why a value set file was refused. Start-up only: the service does not
/// start with a bad value set.
#[derive(Debug, thiserror::Error)]
pub enum ValueSetError {
    #[error("cannot read EQ-5D-5L value set {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("EQ-5D-5L value set {name}, line {line}: {reason}")]
    Line {
        name: String,
        line: usize,
        reason: String,
    },
    #[error(
        "EQ-5D-5L value set {name} has {found} of the 3125 profiles (first missing: {first_missing})"
    )]
    Incomplete {
        name: String,
        found: usize,
        first_missing: String,
    },
}

/// An EQ-5D-5L value set: the index value of every one of the 3125
/// profiles, and the name every score it gave is recorded under.
///
/// The built-in one is the England value set ([`ValueSet::england`]);
/// another country's set, or a newer one, is loaded from a CSV file
/// ([`ValueSet::from_path`]: `profile,index`, `#` comment lines).
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSet {
    name: String,
    /// Index by profile number (levels 1-5 as digits 0-4, base 5).
    index: Vec<f64>,
}

/// The stable id of the England value set, recorded with every score it
/// gives (`Score::Eq5d5l::value_set`, the `QuestionnaireCompleted` event,
/// the FHIR extension on the scored `QuestionnaireResponse`).
pub const ENGLAND_DEVLIN_2018: &str = "england-devlin-2018";

/// The citation of the England value set.
pub const ENGLAND_DEVLIN_2018_CITATION: &str = "Devlin NJ, Shah KK, Feng Y, Mulhern B, van Hout B. \
     Valuing health-related quality of life: An EQ-5D-5L value set for England. \
     Health Economics 2018;27(1):7-22. doi:10.1002/hec.3564";

/// The England value set's model (Devlin et al. 2018, the additive model of
/// the published value set): the decrement of levels 2, 3, 4 and 5 of each
/// dimension, in the order mobility, self-care, usual activities,
/// pain/discomfort, anxiety/depression. Level 1 decrements nothing; there is
/// no constant. The index of a profile is 1 minus the sum of its five
/// decrements, rounded to 3 decimals: 11111 = 1, 55555 = -0.285.
pub const ENGLAND_DEVLIN_2018_DECREMENTS: [[f64; 4]; 5] = [
    [0.058, 0.076, 0.207, 0.274],
    [0.050, 0.080, 0.164, 0.203],
    [0.050, 0.063, 0.162, 0.184],
    [0.063, 0.084, 0.276, 0.335],
    [0.078, 0.104, 0.285, 0.289],
];

fn profile_number(levels: &[u8; 5]) -> usize {
    levels
        .iter()
        .fold(0, |n, l| n * 5 + usize::from(l.saturating_sub(1).min(4)))
}

/// The levels (1-5) of a profile number, the inverse of `profile_number`.
fn profile_levels(mut n: usize) -> [u8; 5] {
    let mut levels = [1u8; 5];
    for l in levels.iter_mut().rev() {
        *l = 1 + u8::try_from(n % 5).unwrap_or(0);
        n /= 5;
    }
    levels
}

impl ValueSet {
    /// The EQ-5D-5L value set for England (Devlin et al. 2018,
    /// [`ENGLAND_DEVLIN_2018_CITATION`]), generated from its coefficients
    /// ([`ENGLAND_DEVLIN_2018_DECREMENTS`]); named [`ENGLAND_DEVLIN_2018`].
    pub fn england() -> Self {
        Self::additive(ENGLAND_DEVLIN_2018, &ENGLAND_DEVLIN_2018_DECREMENTS)
    }

    /// A value set from an additive model without a constant: the index of
    /// a profile is 1 minus the decrements of its levels (`decrements[d][l -
    /// 2]` for dimension `d` at level `l` >= 2), rounded to 3 decimals as
    /// value sets are published.
    pub fn additive(name: &str, decrements: &[[f64; 4]; 5]) -> Self {
        let index = (0..3125usize)
            .map(|n| {
                let levels = profile_levels(n);
                let lost: f64 = levels
                    .iter()
                    .zip(decrements)
                    .map(|(level, row)| match level {
                        2..=5 => row[usize::from(level - 2)],
                        _ => 0.0,
                    })
                    .sum();
                ((1.0 - lost) * 1000.0).round() / 1000.0
            })
            .collect();
        Self {
            name: name.to_owned(),
            index,
        }
    }

    /// The value set as a CSV file [`ValueSet::parse`] reads back: a header
    /// line, then `profile,index` for all 3125 profiles in order.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("profile,index\n");
        for (n, v) in self.index.iter().enumerate() {
            let profile: String = profile_levels(n)
                .iter()
                .map(|l| char::from(b'0' + l))
                .collect();
            out.push_str(&format!("{profile},{v:.3}\n"));
        }
        out
    }

    /// Load a value set file; its name is the file name.
    pub fn from_path(path: &Path) -> Result<Self, ValueSetError> {
        let text = std::fs::read_to_string(path).map_err(|source| ValueSetError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        Self::parse(&name, &text)
    }

    /// Parse CSV text: an optional `profile,index` header, then one line per
    /// profile. Every profile must be present exactly once.
    pub fn parse(name: &str, text: &str) -> Result<Self, ValueSetError> {
        let err = |line: usize, reason: String| ValueSetError::Line {
            name: name.to_owned(),
            line,
            reason,
        };
        let mut index = vec![f64::NAN; 3125];
        let mut found = 0;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((profile, value)) = line.split_once(',') else {
                return Err(err(line_no, "expected 'profile,index'".to_owned()));
            };
            let (profile, value) = (profile.trim(), value.trim());
            if profile.eq_ignore_ascii_case("profile") {
                continue;
            }
            let bytes = profile.as_bytes();
            if bytes.len() != 5 || !bytes.iter().all(|b| (b'1'..=b'5').contains(b)) {
                return Err(err(
                    line_no,
                    format!("profile '{profile}' is not five levels 1-5"),
                ));
            }
            let levels = [0, 1, 2, 3, 4].map(|k| bytes[k] - b'0');
            let v: f64 = value
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v <= 1.0)
                .ok_or_else(|| err(line_no, format!("index '{value}' is not a number <= 1")))?;
            let n = profile_number(&levels);
            if !index[n].is_nan() {
                return Err(err(line_no, format!("profile {profile} appears twice")));
            }
            index[n] = v;
            found += 1;
        }
        if let Some(missing) = index.iter().position(|v| v.is_nan()) {
            return Err(ValueSetError::Incomplete {
                name: name.to_owned(),
                found,
                first_missing: profile_levels(missing)
                    .iter()
                    .map(|l| char::from(b'0' + l))
                    .collect(),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            index,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The index of a profile (levels 1-5).
    pub fn index(&self, levels: &[u8; 5]) -> f64 {
        self.index
            .get(profile_number(levels))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Answers as `linkId -> value` (for building test and benchmark inputs).
pub fn answers<'a>(pairs: impl IntoIterator<Item = (&'a str, i32)>) -> Vec<ItemAnswer> {
    pairs
        .into_iter()
        .map(|(link_id, value)| ItemAnswer {
            link_id: link_id.to_owned(),
            value,
        })
        .collect()
}

/// Answers to every item of a measure with one value each, in item order.
pub fn answers_in_order(measure: Measure, values: &[i32]) -> Vec<ItemAnswer> {
    items(measure)
        .iter()
        .zip(values)
        .map(|(d, v)| ItemAnswer {
            link_id: d.link_id.to_owned(),
            value: *v,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use mskflow_events::types::StartBackRisk;

    use super::*;

    fn vs() -> ValueSet {
        ValueSet::england()
    }

    #[test]
    fn msk_hq_worked_example() {
        // 4,4,3,3,2,2,1,1,0,0,4,3,2,1 = 30
        let a = answers_in_order(Measure::MskHq, &[4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 4, 3, 2, 1]);
        assert_eq!(msk_hq(&a), Ok(Score::MskHq { total: 30 }));
        let best = answers_in_order(Measure::MskHq, &[4; 14]);
        assert_eq!(msk_hq(&best), Ok(Score::MskHq { total: 56 }));
        let worst = answers_in_order(Measure::MskHq, &[0; 14]);
        assert_eq!(msk_hq(&worst), Ok(Score::MskHq { total: 0 }));
    }

    #[test]
    fn msk_hq_missing_items_are_named() {
        let mut a = answers_in_order(Measure::MskHq, &[2; 14]);
        a.retain(|x| x.link_id != "3" && x.link_id != "12");
        let e = msk_hq(&a).unwrap_err();
        assert_eq!(e.link_ids(), vec!["3", "12"]);
        assert!(e.problems.iter().all(|p| p.problem == Problem::Missing));
        assert!(e.to_string().contains("item 3"), "{e}");
    }

    #[test]
    fn msk_hq_out_of_range_unknown_and_duplicate_items_are_named() {
        let mut a = answers_in_order(Measure::MskHq, &[2; 14]);
        a[6].value = 5; // item 7
        a[9].value = -1; // item 10
        a.push(ItemAnswer {
            link_id: "15".to_owned(),
            value: 1,
        });
        a.push(ItemAnswer {
            link_id: "1".to_owned(),
            value: 1,
        });
        let e = msk_hq(&a).unwrap_err();
        assert_eq!(e.link_ids(), vec!["7", "10", "15", "1"]);
        assert_eq!(
            e.problems[0].problem,
            Problem::OutOfRange {
                value: 5,
                min: 0,
                max: 4
            }
        );
        assert_eq!(e.problems[2].problem, Problem::UnknownItem);
        assert_eq!(e.problems[3].problem, Problem::Duplicate);
    }

    #[test]
    fn start_back_worked_examples() {
        // Items 1-4 agree, 5-8 disagree, bothersomeness "moderately" (3):
        // total 4, psychosocial 0, medium.
        let a = answers_in_order(Measure::StartBack, &[1, 1, 1, 1, 0, 0, 0, 0, 3]);
        let Ok(Score::StartBack(s)) = start_back(&a) else {
            panic!("not scored")
        };
        assert_eq!(
            (s.total, s.psychosocial, s.risk),
            (4, 0, StartBackRisk::Medium)
        );
        // Items 5-8 agree and item 9 "very much" (4): psychosocial 5, high.
        let a = answers_in_order(Measure::StartBack, &[0, 0, 0, 0, 1, 1, 1, 1, 4]);
        let Ok(Score::StartBack(s)) = start_back(&a) else {
            panic!("not scored")
        };
        assert_eq!(
            (s.total, s.psychosocial, s.risk),
            (5, 5, StartBackRisk::High)
        );
        // Only item 9 "extremely" (5): total 1, low.
        let a = answers_in_order(Measure::StartBack, &[0, 0, 0, 0, 0, 0, 0, 0, 5]);
        let Ok(Score::StartBack(s)) = start_back(&a) else {
            panic!("not scored")
        };
        assert_eq!(
            (s.total, s.psychosocial, s.risk),
            (1, 1, StartBackRisk::Low)
        );
    }

    #[test]
    fn start_back_missing_and_out_of_range() {
        let a = answers_in_order(Measure::StartBack, &[1, 2, 0, 0, 0, 0, 0, 0]);
        let e = start_back(&a).unwrap_err();
        assert_eq!(e.link_ids(), vec!["2", "9"]);
        let a = answers_in_order(Measure::StartBack, &[0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let e = start_back(&a).unwrap_err();
        assert_eq!(e.link_ids(), vec!["9"]);
        assert_eq!(
            e.problems[0].problem,
            Problem::OutOfRange {
                value: 0,
                min: 1,
                max: 5
            }
        );
    }

    #[test]
    fn eq5d5l_worked_example() {
        let a = answers_in_order(Measure::Eq5d5l, &[1, 1, 2, 2, 3, 70]);
        let s = eq5d5l(&a, &vs()).unwrap();
        let Score::Eq5d5l {
            profile,
            vas,
            index,
            value_set,
        } = s
        else {
            panic!("not EQ-5D-5L")
        };
        assert_eq!(profile, "11223");
        assert_eq!(vas, 70);
        // England (Devlin 2018): 1 - (0 + 0 + 0.050 + 0.063 + 0.104) = 0.783.
        assert!((index - 0.783).abs() < 1e-9, "{index}");
        assert_eq!(value_set, ENGLAND_DEVLIN_2018);
    }

    #[test]
    fn eq5d5l_missing_and_out_of_range() {
        let a = answers([("mobility", 1), ("self-care", 6), ("vas", 101)]);
        let e = eq5d5l(&a, &vs()).unwrap_err();
        assert_eq!(
            e.link_ids(),
            vec![
                "self-care",
                "vas",
                "usual-activities",
                "pain-discomfort",
                "anxiety-depression"
            ]
        );
    }

    #[test]
    fn england_value_set_gives_the_published_values() {
        let vs = vs();
        assert_eq!(vs.name(), "england-devlin-2018");
        // Devlin et al. 2018: index = 1 - the decrement of each dimension's
        // level (mobility, self-care, usual activities, pain/discomfort,
        // anxiety/depression); no constant.
        for (profile, expected) in [
            ("11111", 1.0),
            // 1 - 0.078 (anxiety/depression 2)
            ("11112", 0.922),
            // 1 - 0.058 (mobility 2)
            ("21111", 0.942),
            // 1 - (0.274 + 0.203 + 0.184 + 0.335 + 0.289) = 1 - 1.285
            ("55555", -0.285),
            // 1 - (0 + 0.050 + 0.063 + 0.276 + 0.289) = 1 - 0.678
            ("12345", 0.322),
            // 1 - 0.063 (pain/discomfort 2)
            ("11121", 0.937),
            // 1 - 0.050 (usual activities 2)
            ("11211", 0.950),
            // 1 - 0.050 (self-care 2)
            ("12111", 0.950),
            // 1 - 0.289 (anxiety/depression 5)
            ("11115", 0.711),
            // 1 - 0.274 (mobility 5)
            ("51111", 0.726),
            // 1 - (0.076 + 0.080 + 0.063 + 0.084 + 0.104) = 1 - 0.407
            ("33333", 0.593),
            // 1 - (0.207 + 0.164 + 0.162 + 0.276 + 0.285) = 1 - 1.094
            ("44444", -0.094),
            // 1 - (0.274 + 0.164 + 0.063 + 0.063 + 0) = 1 - 0.564
            ("54321", 0.436),
            // 1 - (0 + 0 + 0.050 + 0.063 + 0.104) = 1 - 0.217
            ("11223", 0.783),
        ] {
            let b = profile.as_bytes();
            let levels = [0, 1, 2, 3, 4].map(|k| b[k] - b'0');
            let got = vs.index(&levels);
            assert!(
                (got - expected).abs() < 1e-9,
                "{profile}: {got} != {expected}"
            );
        }
    }

    #[test]
    fn england_value_set_is_monotone_and_round_trips_as_csv() {
        let vs = vs();
        for n in 0..3125 {
            let levels = profile_levels(n);
            assert_eq!(profile_number(&levels), n);
            let v = vs.index(&levels);
            assert!((-0.285..=1.0).contains(&v), "{levels:?} {v}");
            // One level worse in any dimension never scores higher.
            for d in 0..5 {
                if levels[d] < 5 {
                    let mut worse = levels;
                    worse[d] += 1;
                    assert!(vs.index(&worse) < v, "{levels:?} -> {worse:?}");
                }
            }
        }
        let csv = vs.to_csv();
        assert_eq!(csv.lines().count(), 3126);
        assert!(csv.contains("\n12345,0.322\n"), "{}", &csv[..100]);
        let loaded = ValueSet::parse(ENGLAND_DEVLIN_2018, &csv).unwrap();
        assert_eq!(loaded, vs);
    }

    #[test]
    fn a_value_set_file_replaces_the_default_under_its_own_name() {
        // Another country's set, or a newer one: here the England table with
        // one profile changed, so the file is seen to be used.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eq5d5l-newer-set.csv");
        let csv = vs().to_csv().replace("\n11112,0.922\n", "\n11112,0.900\n");
        std::fs::write(&path, format!("# a newer value set\n{csv}")).unwrap();
        let loaded = ValueSet::from_path(&path).unwrap();
        assert_eq!(loaded.name(), "eq5d5l-newer-set");
        assert!((loaded.index(&[1, 1, 1, 1, 2]) - 0.9).abs() < 1e-9);
        let a = answers_in_order(Measure::Eq5d5l, &[1, 1, 1, 1, 2, 90]);
        let Score::Eq5d5l { value_set, .. } = eq5d5l(&a, &loaded).unwrap() else {
            panic!("not EQ-5D-5L")
        };
        assert_eq!(value_set, "eq5d5l-newer-set");
    }

    #[test]
    fn value_set_refuses_incomplete_or_bad_files() {
        let e = ValueSet::parse("t", "profile,index\n11111,1.0\n").unwrap_err();
        assert!(
            matches!(&e, ValueSetError::Incomplete { found: 1, first_missing, .. } if first_missing == "11112"),
            "{e}"
        );
        let e = ValueSet::parse("t", "11116,0.5\n").unwrap_err();
        assert!(matches!(e, ValueSetError::Line { line: 1, .. }), "{e}");
        let e = ValueSet::parse("t", "11111,x\n").unwrap_err();
        assert!(matches!(e, ValueSetError::Line { line: 1, .. }), "{e}");
        let dup = format!("11111,1.0\n{}", ValueSet::england().to_csv());
        let e = ValueSet::parse("t", &dup).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn psfs_worked_example_and_errors() {
        let a = answers([("activity-1", 3), ("activity-2", 6), ("activity-4", 7)]);
        let Score::Psfs { mean, activities } = psfs(&a).unwrap() else {
            panic!("not PSFS")
        };
        assert_eq!(activities, 3);
        assert!((mean - 16.0 / 3.0).abs() < 1e-9);
        let e = psfs(&[]).unwrap_err();
        assert_eq!(e.link_ids(), vec!["activity-1"]);
        assert_eq!(e.problems[0].problem, Problem::NoActivity);
        let e = psfs(&answers([("activity-2", 11), ("activity-6", 1)])).unwrap_err();
        assert_eq!(e.link_ids(), vec!["activity-2", "activity-6"]);
    }

    #[test]
    fn score_dispatches_by_measure() {
        let a = answers_in_order(Measure::MskHq, &[1; 14]);
        assert_eq!(score(Measure::MskHq, &a, &vs()).unwrap().value(), 14.0);
        // MSK-HQ answers are not a STarT Back response.
        assert!(score(Measure::StartBack, &a, &vs()).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn any_answers() -> impl Strategy<Value = Vec<ItemAnswer>> {
        proptest::collection::vec(
            (
                prop_oneof![
                    (1..=16u8).prop_map(|n| n.to_string()),
                    Just("vas".to_owned()),
                    Just("mobility".to_owned()),
                    (0..=6u8).prop_map(|n| format!("activity-{n}")),
                ],
                -3..=120i32,
            )
                .prop_map(|(link_id, value)| ItemAnswer { link_id, value }),
            0..20,
        )
    }

    proptest! {
        /// Any answers either score within the measure's range or are
        /// refused naming at least one item; nothing panics.
        #[test]
        fn scores_stay_in_range_or_name_an_item(answers in any_answers()) {
            let vs = ValueSet::england();
            for measure in Measure::ALL {
                match score(*measure, &answers, &vs) {
                    Ok(s) => {
                        let v = s.value();
                        let (lo, hi) = match measure {
                            Measure::MskHq => (0.0, 56.0),
                            Measure::StartBack => (0.0, 9.0),
                            Measure::Eq5d5l => (-0.285, 1.0),
                            Measure::Psfs => (0.0, 10.0),
                        };
                        prop_assert!((lo..=hi).contains(&v), "{measure} {v}");
                    }
                    Err(e) => prop_assert!(!e.problems.is_empty()),
                }
            }
        }

        /// A complete MSK-HQ in range always scores the sum of its items.
        #[test]
        fn msk_hq_total_is_the_sum(values in proptest::collection::vec(0..=4i32, 14)) {
            let a = answers_in_order(Measure::MskHq, &values);
            let expected = values.iter().sum::<i32>();
            prop_assert_eq!(msk_hq(&a).map(|s| s.value()), Ok(f64::from(expected)));
        }
    }
}
