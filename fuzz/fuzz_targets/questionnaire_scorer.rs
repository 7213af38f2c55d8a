//! A patient's answers on arbitrary bytes: the QuestionnaireResponse
//! reader, then the outcomes scorer on whatever it reads.
//!
//! Properties: no panic; a refusal is a 400 OperationOutcome; a score is
//! only ever produced within its measure's range.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mskflow_events::outcomes::{ItemAnswer, Measure, Score};
use mskflow_fhir::parse_questionnaire_response;
use mskflow_outcomes::ValueSet;
use mskflow_outcomes::scoring;

fn value_set() -> &'static ValueSet {
    static SET: OnceLock<ValueSet> = OnceLock::new();
    SET.get_or_init(ValueSet::england)
}

fn check(score: &Score) {
    match score {
        Score::MskHq { total } => assert!(*total <= 56, "MSK-HQ {total}"),
        Score::StartBack(s) => {
            assert!(
                s.total <= 9 && s.psychosocial <= 5 && s.psychosocial <= s.total,
                "{s:?}"
            )
        }
        Score::Eq5d5l { profile, vas, .. } => {
            assert_eq!(profile.len(), 5);
            assert!(
                profile.bytes().all(|b| (b'1'..=b'5').contains(&b)),
                "{profile}"
            );
            assert!(*vas <= 100, "VAS {vas}");
        }
        Score::Psfs { mean, activities } => {
            assert!((0.0..=10.0).contains(mean), "PSFS {mean}");
            assert!((1..=5).contains(activities), "{activities} activities");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = match parse_questionnaire_response(data) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.status, 400);
            assert_eq!(e.operation_outcome()["resourceType"], "OperationOutcome");
            return;
        }
    };
    let Ok(measure) = Measure::parse(&parsed.measure) else {
        return;
    };
    let answers: Vec<ItemAnswer> = parsed
        .answers
        .iter()
        .map(|(link_id, value)| ItemAnswer {
            link_id: link_id.clone(),
            value: *value,
        })
        .collect();
    if let Ok(score) = scoring::score(measure, &answers, value_set()) {
        assert_eq!(score.measure(), measure);
        check(&score);
    }
});
