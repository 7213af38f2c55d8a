use chrono::{NaiveDate, TimeZone, Utc};
use mskflow_events::intake::referral_id as intake_referral_id;
use mskflow_events::selfreferral::{BodyArea, SafetyNetAdvice};
use mskflow_events::types::{ReceivedVia, RedFlag, StartBackRisk};
use mskflow_events::{NhsNumber, RED_FLAG_SYSTEM};
use proptest::prelude::*;
use uuid::Uuid;

use crate::questions::RED_FLAGS;
use crate::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn area() -> Result<Area, Error> {
    Area::new(
        "Leeds",
        &[
            ("B86001".to_owned(), "Park Surgery".to_owned()),
            ("B86002".to_owned(), "Hill Medical Centre".to_owned()),
        ],
        16,
    )
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 2).unwrap_or_default()
}

/// Answers to every step of a low-risk back-pain referral.
fn complete() -> Answers {
    let mut a: Vec<(String, String)> = [
        ("dob", "1980-03-27"),
        ("practice", "b86001"),
        ("given", "Sam"),
        ("family", "Jones"),
        ("nhs_number", "943 476 5919"),
        ("sex", "female"),
        ("postcode", "ls14ap"),
        ("phone", "07700 900982"),
        ("body_area", "lower-back"),
        ("duration", "6-weeks-to-3-months"),
        ("work", "working"),
        ("worse", "Sitting for long"),
        ("consent", "yes"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for q in RED_FLAGS {
        a.push((q.field.to_owned(), "no".to_owned()));
    }
    // STarT Back: items 1 and 2 agree, item 9 "slightly": total 2, low risk.
    for i in 1..=9 {
        let v = match i {
            1 | 2 => "1",
            9 => "2",
            _ => "0",
        };
        a.push((format!("sb-{i}"), v.to_owned()));
    }
    for i in 1..=14 {
        a.push((format!("mskhq-{i}"), "3".to_owned()));
    }
    Answers(a.into_iter().collect())
}

/// When the tests' forms are sent.
fn submitted_at() -> Result<chrono::DateTime<Utc>, &'static str> {
    Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0)
        .single()
        .ok_or("time")
}

fn with(mut a: Answers, field: &str, value: &str) -> Answers {
    a.0.insert(field.to_owned(), value.to_owned());
    a
}

#[test]
fn nhs_numbers_are_checked_by_modulus_11() -> TestResult {
    let a = area()?;
    for (n, ok) in [
        ("9434765919", true),
        ("943 476 5919", true),
        ("9434765918", false),
        ("943476591", false),
        ("94347659A9", false),
    ] {
        let outcome = decide(
            &a,
            &with(complete(), "nhs_number", n),
            Step::AboutYou,
            today(),
        );
        match outcome {
            Outcome::Ask {
                step: Step::Symptoms,
                errors,
            } => assert!(ok && errors.is_empty(), "{n}"),
            Outcome::Ask {
                step: Step::AboutYou,
                errors,
            } => {
                assert!(!ok, "{n}");
                assert_eq!(errors.len(), 1);
                assert_eq!(errors[0].field, "nhs_number");
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn the_nhs_number_may_be_left_out() -> TestResult {
    let mut blank = complete();
    blank.0.remove("nhs_number");
    let spaces = with(complete(), "nhs_number", "   ");
    for answers in [blank, spaces] {
        let Outcome::Complete(s) = decide(&area()?, &answers, Step::Questionnaires, today()) else {
            return Err("not complete without an NHS number".into());
        };
        assert_eq!(s.about.nhs_number, None);
        let reference = Reference::of_key(Uuid::from_u128(8));
        let at = submitted_at()?;
        let d = referral_details(&s.referral(ReceivedVia::SelfReferral, &reference), at);
        assert_eq!(d.patient.nhs_number, None);
        let sr: serde_json::Value = serde_json::from_str(&d.fhir_json)?;
        // No empty identifier array: FHIR arrays are absent or non-empty.
        assert!(sr["contained"][0].get("identifier").is_none());
        assert_eq!(sr["contained"][0]["birthDate"], "1980-03-27");
    }
    Ok(())
}

#[test]
fn eligibility_needs_age_16_and_a_practice_in_the_area() -> TestResult {
    let a = area()?;
    let sixteenth = NaiveDate::from_ymd_opt(2010, 12, 2).ok_or("date")?;
    let day_before = NaiveDate::from_ymd_opt(2010, 12, 3).ok_or("date")?;
    assert!(matches!(
        a.eligibility(sixteenth, "B86002", today()),
        Eligibility::Eligible(p) if p.name == "Hill Medical Centre"
    ));
    assert_eq!(
        a.eligibility(day_before, "B86002", today()),
        Eligibility::TooYoung { min_age: 16 }
    );
    assert_eq!(
        a.eligibility(sixteenth, "Y99999", today()),
        Eligibility::OutOfArea
    );
    assert_eq!(
        decide(
            &a,
            &with(complete(), "practice", "not-listed"),
            Step::Eligibility,
            today()
        ),
        Outcome::Refused(Eligibility::OutOfArea)
    );
    assert!(matches!(
        decide(&a, &with(complete(), "dob", "2030-01-01"), Step::Eligibility, today()),
        Outcome::Ask { step: Step::Eligibility, errors } if errors[0].field == "dob"
    ));
    assert!(Area::new("x", &[("not an ods code!".to_owned(), "x".to_owned())], 16).is_err());
    Ok(())
}

#[test]
fn age_counts_whole_years() {
    let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
    assert_eq!(age_on(d(2000, 2, 29), d(2016, 2, 28)), 15);
    assert_eq!(age_on(d(2000, 2, 29), d(2016, 2, 29)), 16);
    assert_eq!(age_on(d(2030, 1, 1), d(2026, 1, 1)), 0);
}

#[test]
fn cauda_equina_answers_stop_the_form_with_999() -> TestResult {
    let a = area()?;
    for field in ["rf-saddle", "rf-bladder", "rf-both-legs"] {
        // A yes stops the form even with later questions unanswered.
        let mut answers = with(complete(), field, "yes");
        answers.0.remove("rf-fever");
        answers.0.remove("body_area");
        match decide(&a, &answers, Step::Symptoms, today()) {
            Outcome::SafetyNet { net, .. } => {
                assert_eq!(net.advice, SafetyNetAdvice::Emergency, "{field}");
                assert_eq!(net.rule_set_version, SAFETY_NET_RULES_VERSION);
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn other_red_flags_send_to_the_gp_or_111() -> TestResult {
    let a = area()?;
    for field in ["rf-cancer", "rf-weight", "rf-fever", "rf-injury"] {
        match decide(
            &a,
            &with(complete(), field, "yes"),
            Step::Questionnaires,
            today(),
        ) {
            Outcome::SafetyNet { net, .. } => {
                assert_eq!(net.advice, SafetyNetAdvice::UrgentGp, "{field}");
                assert_eq!(net.red_flags.len(), 1);
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // Emergency wins over urgent.
    let net = safety_net(&[
        RedFlag::HistoryOfCancer,
        RedFlag::SaddleAnaesthesia,
        RedFlag::HistoryOfCancer,
    ])
    .ok_or("no advice")?;
    assert_eq!(net.advice, SafetyNetAdvice::Emergency);
    assert_eq!(
        net.red_flags,
        vec![RedFlag::SaddleAnaesthesia, RedFlag::HistoryOfCancer]
    );
    assert_eq!(safety_net(&[]), None);
    Ok(())
}

#[test]
fn unanswered_red_flags_are_asked_again() -> TestResult {
    let mut answers = complete();
    answers.0.remove("rf-injury");
    assert!(matches!(
        decide(&area()?, &answers, Step::Questionnaires, today()),
        Outcome::Ask { step: Step::Symptoms, errors } if errors.len() == 1 && errors[0].field == "rf-injury"
    ));
    Ok(())
}

#[test]
fn a_complete_back_pain_form_is_scored() -> TestResult {
    let Outcome::Complete(s) = decide(&area()?, &complete(), Step::Questionnaires, today()) else {
        return Err("not complete".into());
    };
    assert_eq!(s.about.postcode, "LS1 4AP");
    assert_eq!(s.practice.ods.as_str(), "B86001");
    assert_eq!(s.problem.body_area, BodyArea::LowerBack);
    assert_eq!(s.questionnaires.msk_hq_score(), 42);
    let sb = s
        .questionnaires
        .start_back_answers()
        .ok_or("no STarT Back")?
        .score();
    assert_eq!(
        (sb.total, sb.psychosocial, sb.risk),
        (2, 0, StartBackRisk::Low)
    );
    // Item 9 scores from "very much" (4).
    let high = decide(
        &area()?,
        &with(complete(), "sb-9", "4"),
        Step::Questionnaires,
        today(),
    );
    let Outcome::Complete(h) = high else {
        return Err("not complete".into());
    };
    assert_eq!(
        h.questionnaires
            .start_back_answers()
            .ok_or("sb")?
            .score()
            .total,
        3
    );
    Ok(())
}

#[test]
fn questionnaires_and_consent_are_required() -> TestResult {
    let a = area()?;
    let mut answers = with(complete(), "mskhq-3", "5");
    answers.0.remove("consent");
    answers.0.remove("sb-9");
    let Outcome::Ask {
        step: Step::Questionnaires,
        errors,
    } = decide(&a, &answers, Step::Questionnaires, today())
    else {
        return Err("not asked again".into());
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["sb-9", "mskhq-3", "consent"]);
    // STarT Back is asked for back pain only.
    let mut knee = with(complete(), "body_area", "knee");
    for i in 1..=9 {
        knee.0.remove(&format!("sb-{i}"));
    }
    let Outcome::Complete(s) = decide(&a, &knee, Step::Questionnaires, today()) else {
        return Err("knee not complete".into());
    };
    assert_eq!(s.questionnaires.start_back, None);
    Ok(())
}

#[test]
fn the_referral_is_a_self_referral_with_the_same_id_intake_derives() -> TestResult {
    let Outcome::Complete(s) = decide(&area()?, &complete(), Step::Questionnaires, today()) else {
        return Err("not complete".into());
    };
    let reference = Reference::of_key(Uuid::from_u128(7));
    let at = submitted_at()?;
    let d = referral_details(&s.referral(ReceivedVia::SelfReferral, &reference), at);
    assert_eq!(d.received_via, ReceivedVia::SelfReferral);
    assert_eq!(
        intake_referral_id(Uuid::new_v4(), &d),
        referral_id(&reference)
    );
    assert_eq!(d.patient.nhs_number, Some(NhsNumber::parse("9434765919")?));
    assert_eq!(d.reason[0].code, "279039007");
    assert_eq!(
        d.requester
            .as_ref()
            .and_then(|r| r.ods_code.as_ref())
            .map(|c| c.as_str()),
        Some("B86001")
    );
    let sr: serde_json::Value = serde_json::from_str(&d.fhir_json)?;
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert_eq!(sr["contained"][0]["birthDate"], "1980-03-27");
    assert_eq!(sr["contained"][0]["identifier"][0]["value"], "9434765919");
    assert_eq!(sr["identifier"][0]["value"], reference.as_str());
    let flagged = referral_details(
        &Referral {
            route: ReceivedVia::Telephone,
            reference: &reference,
            practice: &s.practice,
            about: &s.about,
            red_flags: &[RedFlag::SaddleAnaesthesia],
            problem: None,
            start_back: None,
        },
        at,
    );
    assert!(flagged.reason.is_empty());
    assert_eq!(flagged.red_flags, vec![RedFlag::SaddleAnaesthesia]);
    let sr: serde_json::Value = serde_json::from_str(&flagged.fhir_json)?;
    assert_eq!(
        sr["supportingInfo"][0]["identifier"]["system"],
        RED_FLAG_SYSTEM
    );
    Ok(())
}

#[test]
fn references_read_back_forgivingly() {
    let r = Reference::of_key(Uuid::from_u128(42));
    assert_eq!(r, Reference::of_key(Uuid::from_u128(42)));
    assert_ne!(r, Reference::of_key(Uuid::from_u128(43)));
    assert!(r.as_str().starts_with("MSK-") && r.as_str().len() == 13);
    let typed = r.as_str().to_lowercase().replace('-', " ");
    assert_eq!(Reference::parse(&typed), Some(r.clone()));
    assert_eq!(
        Reference::parse("MSK-0O1I-LL00"),
        Reference::parse("msk 0011 1100")
    );
    assert_eq!(Reference::parse("MSK-123"), None);
    assert_eq!(Reference::parse("MSK-UUUU-UUUU"), None);
}

proptest! {
    #[test]
    fn decide_never_panics(fields in proptest::collection::btree_map("[a-z_0-9-]{1,12}", ".{0,40}", 0..30)) {
        let _ = decide(&area().unwrap_or_else(|_| unreachable!()), &Answers(fields), Step::Questionnaires, today());
    }

    #[test]
    fn any_reference_parses_back(n in any::<u128>()) {
        let r = Reference::of_key(Uuid::from_u128(n));
        prop_assert_eq!(Reference::parse(r.as_str()), Some(r));
    }
}
