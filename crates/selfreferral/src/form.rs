//! The answers as posted, step by step: each step is checked in order, and
//! the first that fails is asked again with its errors. A "yes" to a red
//! flag stops the form; an ineligible person is refused with the reason.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use mskflow_events::NhsNumber;
use mskflow_events::intake::StartBackAnswers;
use mskflow_events::selfreferral::{BodyArea, ProblemDuration, WorkStatus};
use mskflow_events::types::{RedFlag, Sex};

use crate::area::{Area, Eligibility, Practice};
use crate::questions::{
    BODY_AREAS, Choices, DURATIONS, MSK_HQ_ITEMS, MSK_HQ_MAX, RED_FLAGS, SEX, START_BACK_ITEMS,
    WORK,
};
use crate::safety::{SafetyNet, safety_net};

/// The steps of the web form, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Age and GP practice.
    Eligibility,
    /// Name, NHS number, contact details.
    AboutYou,
    /// The red-flag questions (first of the health questions).
    Symptoms,
    /// Body area, how long, what makes it worse, work.
    Problem,
    /// STarT Back (back pain), MSK-HQ and consent.
    Questionnaires,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Eligibility,
        Step::AboutYou,
        Step::Symptoms,
        Step::Problem,
        Step::Questionnaires,
    ];

    /// 1-based position.
    pub fn number(self) -> usize {
        Step::ALL
            .iter()
            .position(|s| *s == self)
            .map_or(1, |i| i + 1)
    }

    pub fn from_number(n: &str) -> Option<Step> {
        let n: usize = n.trim().parse().ok()?;
        Step::ALL.get(n.checked_sub(1)?).copied()
    }

    /// The page heading.
    pub fn title(self) -> &'static str {
        match self {
            Step::Eligibility => "Can you use this service?",
            Step::AboutYou => "About you",
            Step::Symptoms => "Urgent symptoms",
            Step::Problem => "Your problem",
            Step::Questionnaires => "How the problem affects you",
        }
    }

    fn next(self) -> Option<Step> {
        Step::ALL.get(self.number()).copied()
    }
}

/// One problem with one answer, worded for the person answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The form field (and the id of its input).
    pub field: String,
    pub message: String,
}

/// The answers as posted (field name to value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers(pub BTreeMap<String, String>);

impl Answers {
    /// The trimmed answer to `field`, `None` when blank.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .get(field)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Name, identity and contact details.
#[derive(Clone, PartialEq, Eq)]
pub struct AboutYou {
    pub given: String,
    pub family: String,
    /// Optional (validated by modulus 11 when given).
    pub nhs_number: Option<NhsNumber>,
    pub birth_date: NaiveDate,
    pub sex: Sex,
    pub postcode: String,
    pub phone: String,
    pub email: Option<String>,
}

impl std::fmt::Debug for AboutYou {
    /// Patient-identifiable: only the NHS number's masked form is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AboutYou")
            .field("nhs_number", &self.nhs_number)
            .finish_non_exhaustive()
    }
}

/// The problem, in the person's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub body_area: BodyArea,
    pub duration: ProblemDuration,
    /// What makes it worse (free text, at most [`MAX_TEXT`] characters).
    pub worse: Option<String>,
    pub work_status: WorkStatus,
}

/// The questionnaires' answers, as scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Questionnaires {
    /// STarT Back item codes as answered (items 1..8: 0 or 1; item 9: 1..=5),
    /// for back pain.
    pub start_back: Option<[u8; START_BACK_ITEMS]>,
    /// MSK-HQ items 1..14, each 0..=4.
    pub msk_hq: [u8; MSK_HQ_ITEMS],
}

impl Questionnaires {
    /// The STarT Back answers as intake scores them.
    pub fn start_back_answers(&self) -> Option<StartBackAnswers> {
        self.start_back.map(|codes| {
            let mut items = [false; START_BACK_ITEMS];
            for (i, code) in codes.iter().enumerate() {
                items[i] = if i == START_BACK_ITEMS - 1 {
                    *code >= 4
                } else {
                    *code == 1
                };
            }
            StartBackAnswers(items)
        })
    }

    /// MSK-HQ total, 0..=56 (higher is better).
    pub fn msk_hq_score(&self) -> u8 {
        self.msk_hq.iter().sum()
    }
}

/// Everything a completed form says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub practice: Practice,
    pub about: AboutYou,
    pub problem: Problem,
    pub questionnaires: Questionnaires,
}

/// What to do with the answers so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ask this step (again, with `errors` when some answers are wrong).
    Ask { step: Step, errors: Vec<FieldError> },
    /// The person cannot use the service (too young, out of area).
    Refused(Eligibility),
    /// A red flag: stop and tell them where to go. The referral is still
    /// recorded (and redirected by intake).
    SafetyNet {
        net: SafetyNet,
        practice: Practice,
        about: AboutYou,
    },
    /// Every step answered.
    Complete(Box<Submission>),
}

/// Longest free-text answer.
pub const MAX_TEXT: usize = 500;

/// Check the answers of every step up to and including `upto`, in order.
pub fn decide(area: &Area, answers: &Answers, upto: Step, today: NaiveDate) -> Outcome {
    let ask = |step, errors| Outcome::Ask { step, errors };
    // 1. Eligibility.
    let mut errors = Vec::new();
    let birth_date = date_of_birth(answers, "dob", today, &mut errors);
    let practice = answers.get("practice");
    if practice.is_none() {
        errors.push(error("practice", "Select your GP practice"));
    }
    let (Some(birth_date), Some(practice), true) = (birth_date, practice, errors.is_empty()) else {
        return ask(Step::Eligibility, errors);
    };
    let practice = match area.eligibility(birth_date, practice, today) {
        Eligibility::Eligible(p) => p,
        refused => return Outcome::Refused(refused),
    };
    if upto == Step::Eligibility {
        return ask(Step::AboutYou, vec![]);
    }
    // 2. About you.
    let about = match about_you(answers, birth_date) {
        Ok(a) => a,
        Err(errors) => return ask(Step::AboutYou, errors),
    };
    if upto == Step::AboutYou {
        return ask(Step::Symptoms, vec![]);
    }
    // 3. Red flags.
    let mut red_flags: Vec<RedFlag> = Vec::new();
    let mut errors = Vec::new();
    for q in RED_FLAGS {
        match answers.get(q.field) {
            Some("yes") => red_flags.push(q.flag),
            Some("no") => {}
            _ => errors.push(error(q.field, "Answer yes or no")),
        }
    }
    // A "yes" stops the form even when another question is unanswered.
    if let Some(net) = safety_net(&red_flags) {
        return Outcome::SafetyNet {
            net,
            practice,
            about,
        };
    }
    if !errors.is_empty() {
        return ask(Step::Symptoms, errors);
    }
    if upto == Step::Symptoms {
        return ask(Step::Problem, vec![]);
    }
    // 4. The problem.
    let mut errors = Vec::new();
    let body_area = choice(
        answers,
        "body_area",
        BODY_AREAS,
        "Select where the problem is",
        &mut errors,
    );
    let duration = choice(
        answers,
        "duration",
        DURATIONS,
        "Select how long you have had the problem",
        &mut errors,
    );
    let work_status = choice(
        answers,
        "work",
        WORK,
        "Select what best describes your work",
        &mut errors,
    );
    let worse = text(answers, "worse", false, &mut errors);
    let (Some(body_area), Some(duration), Some(work_status), true) =
        (body_area, duration, work_status, errors.is_empty())
    else {
        return ask(Step::Problem, errors);
    };
    let problem = Problem {
        body_area,
        duration,
        worse,
        work_status,
    };
    if upto == Step::Problem {
        return ask(Step::Questionnaires, vec![]);
    }
    // 5. Questionnaires and consent.
    let mut errors = Vec::new();
    let start_back = asks_start_back(body_area).then(|| {
        let mut codes = [0u8; START_BACK_ITEMS];
        for (i, code) in codes.iter_mut().enumerate() {
            let (min, max) = if i == START_BACK_ITEMS - 1 {
                (1, 5)
            } else {
                (0, 1)
            };
            *code = score(answers, &format!("sb-{}", i + 1), min, max, &mut errors);
        }
        codes
    });
    let mut msk_hq = [0u8; MSK_HQ_ITEMS];
    for (i, code) in msk_hq.iter_mut().enumerate() {
        *code = score(
            answers,
            &format!("mskhq-{}", i + 1),
            0,
            MSK_HQ_MAX,
            &mut errors,
        );
    }
    if answers.get("consent") != Some("yes") {
        errors.push(error(
            "consent",
            "Confirm that you agree, so the service can use your answers to care for you",
        ));
    }
    if !errors.is_empty() {
        return ask(Step::Questionnaires, errors);
    }
    debug_assert!(Step::Questionnaires.next().is_none());
    Outcome::Complete(Box::new(Submission {
        practice,
        about,
        problem,
        questionnaires: Questionnaires { start_back, msk_hq },
    }))
}

/// Whether STarT Back is asked (back pain).
pub(crate) fn asks_start_back(area: BodyArea) -> bool {
    area == BodyArea::LowerBack
}

fn error(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

fn date_of_birth(
    answers: &Answers,
    field: &str,
    today: NaiveDate,
    errors: &mut Vec<FieldError>,
) -> Option<NaiveDate> {
    let Some(raw) = answers.get(field) else {
        errors.push(error(field, "Enter your date of birth"));
        return None;
    };
    match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(d) if d > today => {
            errors.push(error(field, "Your date of birth must be in the past"));
            None
        }
        Ok(d) if crate::area::age_on(d, today) > 120 => {
            errors.push(error(field, "Check the year of your date of birth"));
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            errors.push(error(
                field,
                "Enter your date of birth as a real date, for example 27 3 1980",
            ));
            None
        }
    }
}

fn text(
    answers: &Answers,
    field: &str,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match answers.get(field) {
        None if required => {
            errors.push(error(field, "Enter an answer"));
            None
        }
        None => None,
        Some(v) if v.chars().count() > MAX_TEXT => {
            errors.push(error(
                field,
                &format!("Your answer must be {MAX_TEXT} characters or fewer"),
            ));
            None
        }
        Some(v) if v.chars().any(|c| c.is_control() && c != '\n' && c != '\r') => {
            errors.push(error(
                field,
                "Remove the special characters from your answer",
            ));
            None
        }
        Some(v) => Some(v.to_owned()),
    }
}

fn choice<T: Copy + PartialEq + CodeOf>(
    answers: &Answers,
    field: &str,
    choices: Choices<T>,
    missing: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    let found = answers
        .get(field)
        .and_then(|v| choices.iter().find(|(c, _)| c.code_of() == v))
        .map(|(c, _)| *c);
    if found.is_none() {
        errors.push(error(field, missing));
    }
    found
}

fn score(answers: &Answers, field: &str, min: u8, max: u8, errors: &mut Vec<FieldError>) -> u8 {
    match answers.get(field).and_then(|v| v.parse::<u8>().ok()) {
        Some(v) if (min..=max).contains(&v) => v,
        _ => {
            errors.push(error(field, "Select an answer"));
            0
        }
    }
}

/// The code an answer is posted as.
pub trait CodeOf {
    fn code_of(self) -> &'static str;
}

macro_rules! code_of {
    ($($t:ty),*) => {$(impl CodeOf for $t { fn code_of(self) -> &'static str { self.code() } })*};
}
code_of!(Sex, BodyArea, ProblemDuration, WorkStatus);

fn about_you(answers: &Answers, birth_date: NaiveDate) -> Result<AboutYou, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = |field: &str, what: &str, errors: &mut Vec<FieldError>| match answers.get(field) {
        None => {
            errors.push(error(field, &format!("Enter your {what}")));
            None
        }
        Some(v) if v.chars().count() > 100 || v.chars().any(char::is_control) => {
            errors.push(error(
                field,
                &format!("Enter your {what} in 100 characters or fewer"),
            ));
            None
        }
        Some(v) => Some(v.to_owned()),
    };
    let given = name("given", "first name", &mut errors);
    let family = name("family", "last name", &mut errors);
    // Optional: a referral without it goes ahead; only an onward referral
    // to a hospital waits until it is known.
    let nhs_number = match answers.get("nhs_number").map(NhsNumber::parse) {
        None => Some(None),
        Some(Err(_)) => {
            errors.push(error(
                "nhs_number",
                "Enter a valid NHS number: 10 digits, like 943 476 5919. Check each digit against your NHS App or a letter from the NHS",
            ));
            None
        }
        Some(Ok(n)) => Some(Some(n)),
    };
    let sex = choice(answers, "sex", SEX, "Select an answer", &mut errors);
    let postcode = answers.get("postcode").and_then(postcode);
    if postcode.is_none() {
        errors.push(error("postcode", "Enter a real postcode, like LS1 4AP"));
    }
    let phone = answers.get("phone").and_then(phone);
    if phone.is_none() {
        errors.push(error(
            "phone",
            "Enter a phone number, like 07700 900 982 or 0113 496 0000",
        ));
    }
    let email = match answers.get("email") {
        None => None,
        Some(e) if e.len() <= 254 && e.contains('@') && !e.contains(char::is_whitespace) => {
            Some(e.to_owned())
        }
        Some(_) => {
            errors.push(error(
                "email",
                "Enter an email address in the correct format, like name@example.com",
            ));
            None
        }
    };
    match (given, family, nhs_number, sex, postcode, phone) {
        (Some(given), Some(family), Some(nhs_number), Some(sex), Some(postcode), Some(phone))
            if errors.is_empty() =>
        {
            Ok(AboutYou {
                given,
                family,
                nhs_number,
                birth_date,
                sex,
                postcode,
                phone,
                email,
            })
        }
        _ => Err(errors),
    }
}

/// A UK postcode, normalised (`ls14ap` to `LS1 4AP`).
fn postcode(raw: &str) -> Option<String> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let ok = (5..=7).contains(&compact.len())
        && compact.chars().all(|c| c.is_ascii_alphanumeric())
        && compact.starts_with(|c: char| c.is_ascii_alphabetic())
        && {
            let inward = &compact[compact.len() - 3..];
            let mut b = inward.chars();
            b.next().is_some_and(|c| c.is_ascii_digit()) && b.all(|c| c.is_ascii_alphabetic())
        };
    ok.then(|| {
        format!(
            "{} {}",
            &compact[..compact.len() - 3],
            &compact[compact.len() - 3..]
        )
    })
}

/// A phone number: 10 to 15 digits, with spaces, dashes, brackets or a
/// leading `+`.
fn phone(raw: &str) -> Option<String> {
    let digits = raw.chars().filter(char::is_ascii_digit).count();
    let allowed = raw
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || " -()".contains(c) || (c == '+' && i == 0));
    (allowed && (10..=15).contains(&digits)).then(|| raw.to_owned())
}

/// The step a form field belongs to; `None` for a field that is not an
/// answer (such fields are never carried from page to page).
pub fn step_of(field: &str) -> Option<Step> {
    let numbered = |prefix: &str, max: usize| {
        field
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| (1..=max).contains(&n))
    };
    match field {
        "dob" | "practice" => Some(Step::Eligibility),
        "given" | "family" | "nhs_number" | "sex" | "postcode" | "phone" | "email" => {
            Some(Step::AboutYou)
        }
        "body_area" | "duration" | "worse" | "work" => Some(Step::Problem),
        "consent" => Some(Step::Questionnaires),
        f if RED_FLAGS.iter().any(|q| q.field == f) => Some(Step::Symptoms),
        _ if numbered("sb-", START_BACK_ITEMS) || numbered("mskhq-", MSK_HQ_ITEMS) => {
            Some(Step::Questionnaires)
        }
        _ => None,
    }
}

impl Submission {
    /// Whether STarT Back was asked.
    pub fn asks_start_back(&self) -> bool {
        asks_start_back(self.problem.body_area)
    }
}

/// Whether STarT Back is asked for the body area answered so far.
pub fn start_back_asked(answers: &Answers) -> bool {
    answers
        .get("body_area")
        .and_then(|c| BodyArea::parse(c).ok())
        .is_some_and(asks_start_back)
}
