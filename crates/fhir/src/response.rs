//! `QuestionnaireResponse`: a patient's answers to an outcome measure.
//!
//! The response names its measure by `questionnaire` (our canonical URL,
//! `https://fhir.mskflow.org/Questionnaire/{measure}`), the referral by
//! `basedOn` (`ServiceRequest/{id}`), and the timepoint by a `meta.tag` from
//! `https://fhir.mskflow.org/CodeSystem/prom-timepoint` (`first-contact`,
//! `discharge`, `follow-up`). Each answer is an integer: `valueInteger`, or
//! the `code` of a `valueCoding`.

use fhir_sdk::r4b::resources::QuestionnaireResponse;
use serde_json::Value;
use uuid::Uuid;

use crate::outcome::{FhirError, Issue, IssueType};
use crate::referral::{MAX_ISSUES, MAX_RESOURCES};
use crate::structure::{read_resource, typed};

/// Canonical URL prefix of the Questionnaires we serve.
pub const QUESTIONNAIRE_BASE: &str = "https://fhir.mskflow.org/Questionnaire";
/// Code system of outcome timepoints (`meta.tag`).
pub const TIMEPOINT_SYSTEM: &str = "https://fhir.mskflow.org/CodeSystem/prom-timepoint";

/// A parsed QuestionnaireResponse.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedResponse {
    /// The measure code (`msk-hq`, `start-back`, `eq-5d-5l`, `psfs`).
    pub measure: String,
    pub referral_id: Uuid,
    /// `first-contact`, `discharge` or `follow-up`.
    pub timepoint: String,
    /// `(linkId, value)` for every answered item, in order.
    pub answers: Vec<(String, i32)>,
}

fn answer_value(answer: &Value) -> Option<i32> {
    if let Some(v) = answer.get("valueInteger").and_then(Value::as_i64) {
        return i32::try_from(v).ok();
    }
    answer
        .get("valueCoding")
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
}

/// Parse `POST /QuestionnaireResponse`. Structure problems are 400; a
/// missing measure, referral, timepoint or a non-integer answer 400 with the
/// element named. Scoring rules (ranges, missing items) are the outcomes
/// service's, reported as 422.
pub fn parse_questionnaire_response(body: &[u8]) -> Result<ParsedResponse, FhirError> {
    let (_, object) = read_resource(body, "QuestionnaireResponse")?;
    let raw = Value::Object(object);
    // The models check the structure (status codes, types).
    typed::<QuestionnaireResponse>(&raw, "QuestionnaireResponse")
        .map_err(|issue| FhirError::bad_request(vec![*issue]))?;
    let mut issues = Vec::new();
    let mut bad =
        |code: IssueType, text: String, at: &str| issues.push(Issue::error(code, text).at(at));

    let measure = match raw.get("questionnaire").and_then(Value::as_str) {
        Some(q) => match q
            .strip_prefix(QUESTIONNAIRE_BASE)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(m) if !m.is_empty() => Some(m.split('|').next().unwrap_or(m).to_owned()),
            _ => {
                bad(
                    IssueType::CodeInvalid,
                    format!("questionnaire must be one of ours ({QUESTIONNAIRE_BASE}/{{measure}})"),
                    "QuestionnaireResponse.questionnaire",
                );
                None
            }
        },
        None => {
            bad(
                IssueType::Required,
                "questionnaire is required".to_owned(),
                "QuestionnaireResponse.questionnaire",
            );
            None
        }
    };
    let referral_id = raw
        .get("basedOn")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("reference").and_then(Value::as_str))
        .find_map(|r| {
            r.strip_prefix("ServiceRequest/")
                .and_then(|id| Uuid::parse_str(id).ok())
        });
    if referral_id.is_none() {
        bad(
            IssueType::Required,
            "basedOn must reference the referral (ServiceRequest/{id})".to_owned(),
            "QuestionnaireResponse.basedOn",
        );
    }
    let timepoint = raw
        .get("meta")
        .and_then(|m| m.get("tag"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|t| t.get("system").and_then(Value::as_str) == Some(TIMEPOINT_SYSTEM))
        .and_then(|t| t.get("code").and_then(Value::as_str))
        .map(str::to_owned);
    if timepoint.is_none() {
        bad(
            IssueType::Required,
            format!("meta.tag with system {TIMEPOINT_SYSTEM} must give the timepoint"),
            "QuestionnaireResponse.meta.tag",
        );
    }
    let item_count = raw
        .get("item")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if item_count > MAX_RESOURCES {
        return Err(FhirError::bad_request(vec![
            Issue::error(
                IssueType::TooCostly,
                format!("{item_count} items: a response carries at most {MAX_RESOURCES}"),
            )
            .at("QuestionnaireResponse.item"),
        ]));
    }
    let mut answers = Vec::new();
    for (i, item) in raw
        .get("item")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let link_id = item
            .get("linkId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(answer) = item
            .get("answer")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        else {
            continue; // unanswered: the outcomes service decides whether that is allowed
        };
        match answer_value(answer) {
            Some(v) => answers.push((link_id, v)),
            None => bad(
                IssueType::Value,
                format!(
                    "item {link_id}: the answer must be valueInteger or a valueCoding with an integer code"
                ),
                &format!("QuestionnaireResponse.item[{i}].answer[0]"),
            ),
        }
    }
    if issues.len() > MAX_ISSUES {
        let further = issues.len() - MAX_ISSUES;
        issues.truncate(MAX_ISSUES);
        issues.push(Issue::error(
            IssueType::TooCostly,
            format!("{further} further issues were found and are not listed"),
        ));
    }
    match (measure, referral_id, timepoint) {
        (Some(measure), Some(referral_id), Some(timepoint)) if issues.is_empty() => {
            Ok(ParsedResponse {
                measure,
                referral_id,
                timepoint,
                answers,
            })
        }
        _ => Err(FhirError::bad_request(issues)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response() -> Value {
        json!({
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "meta": {"tag": [{"system": TIMEPOINT_SYSTEM, "code": "first-contact"}]},
            "questionnaire": "https://fhir.mskflow.org/Questionnaire/psfs",
            "basedOn": [{"reference": "ServiceRequest/6f1c2f7e-0b7a-4c55-9a43-3f1f0e1d2c01"}],
            "item": [
                {"linkId": "activity-1", "answer": [{"valueInteger": 4}]},
                {"linkId": "activity-2", "answer": [{"valueCoding": {"code": "6"}}]}
            ]
        })
    }

    #[test]
    fn a_complete_response_parses() -> Result<(), FhirError> {
        let parsed = parse_questionnaire_response(response().to_string().as_bytes())?;
        assert_eq!(parsed.measure, "psfs");
        assert_eq!(parsed.timepoint, "first-contact");
        assert_eq!(
            parsed.answers,
            vec![("activity-1".to_owned(), 4), ("activity-2".to_owned(), 6)]
        );
        Ok(())
    }

    #[test]
    fn missing_context_is_named() {
        let mut r = response();
        r["basedOn"] = json!([]);
        r["meta"] = json!({});
        r["questionnaire"] = json!("http://example.org/Questionnaire/x");
        let err = parse_questionnaire_response(r.to_string().as_bytes()).err();
        let expressions: Vec<String> = err
            .map(|e| {
                e.issues
                    .iter()
                    .filter_map(|i| i.expression.clone())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            expressions,
            vec![
                "QuestionnaireResponse.questionnaire",
                "QuestionnaireResponse.basedOn",
                "QuestionnaireResponse.meta.tag"
            ]
        );
    }

    #[test]
    fn a_bad_status_is_a_structure_error() {
        let mut r = response();
        r["status"] = json!("finished-ish");
        let err = parse_questionnaire_response(r.to_string().as_bytes()).err();
        assert_eq!(err.map(|e| e.status), Some(400));
    }
}
