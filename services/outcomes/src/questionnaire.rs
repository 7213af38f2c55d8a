//! FHIR R4 `Questionnaire` resources for the measures, and the licensed
//! item wording an operator may supply.
//!
//! MSK-HQ is a licensed instrument (as are EQ-5D-5L and the STarT Back
//! tool). The Questionnaires served here carry the structure needed to
//! collect and score answers (item `linkId`s, types, answer codes and their
//! scores as the `ordinalValue` extension) and neutral labels such as
//! "MSK-HQ item 3", but **not** the licensed item wording. An operator who
//! holds a licence configures a licence file ([`LicensedTexts`], TOML or
//! JSON) giving the item texts, and the served Questionnaires then carry
//! them:
//!
//! ```toml
//! [msk-hq]
//! licence = "Licence reference of the organisation"
//! [msk-hq.items]
//! "1" = "wording of item 1"
//! # ... "2" to "14"
//! [msk-hq.answers."1"]
//! "0" = "wording of the answer scoring 0"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use mskflow_events::outcomes::Measure;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::scoring::{self, EQ5D_DIMENSIONS};

/// Base of the Questionnaire canonical URLs.
pub const QUESTIONNAIRE_BASE: &str = "https://fhir.mskflow.org/Questionnaire";
/// Base of the answer code systems.
pub const ANSWER_SYSTEM_BASE: &str = "https://fhir.mskflow.org/CodeSystem";
/// FHIR extension carrying an answer's score.
pub const ORDINAL_VALUE: &str = "http://hl7.org/fhir/StructureDefinition/ordinalValue";

/// Licensed wording for one measure.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureTexts {
    /// The licence under which the wording is used (shown as the
    /// Questionnaire's copyright).
    pub licence: String,
    /// Item text by `linkId`.
    #[serde(default)]
    pub items: BTreeMap<String, String>,
    /// Answer text by `linkId`, then by answer code.
    #[serde(default)]
    pub answers: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why a licence file was refused. Start-up only: the service does not
/// start with a bad licence file.
#[derive(Debug, thiserror::Error)]
pub enum TextsError {
    #[error("cannot read licence file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("licence file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Licensed wording by measure, loaded from the licence file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LicensedTexts(BTreeMap<Measure, MeasureTexts>);

impl LicensedTexts {
    /// No licensed wording: Questionnaires carry neutral labels only.
    pub fn none() -> Self {
        Self::default()
    }

    /// Load a licence file: JSON when its name ends in `.json`, TOML
    /// otherwise. Every item and answer it names must exist.
    pub fn from_path(path: &Path) -> Result<Self, TextsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TextsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |reason: String| TextsError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let map: BTreeMap<Measure, MeasureTexts> = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?
        };
        let texts = Self(map);
        texts.check().map_err(invalid)?;
        Ok(texts)
    }

    /// Build from already parsed wording (checked).
    pub fn from_map(map: BTreeMap<Measure, MeasureTexts>) -> Result<Self, String> {
        let texts = Self(map);
        texts.check()?;
        Ok(texts)
    }

    fn check(&self) -> Result<(), String> {
        for (measure, texts) in &self.0 {
            let defs = scoring::items(*measure);
            for link_id in texts.items.keys().chain(texts.answers.keys()) {
                if !defs.iter().any(|d| d.link_id == link_id) {
                    return Err(format!("{measure} has no item '{link_id}'"));
                }
            }
            for (link_id, answers) in &texts.answers {
                let Some(def) = defs.iter().find(|d| d.link_id == link_id) else {
                    continue;
                };
                for code in answers.keys() {
                    let ok = code
                        .parse::<i32>()
                        .is_ok_and(|v| (def.min..=def.max).contains(&v));
                    if !ok {
                        return Err(format!("{measure} item '{link_id}' has no answer '{code}'"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Measures with licensed wording.
    pub fn measures(&self) -> Vec<Measure> {
        self.0.keys().copied().collect()
    }

    /// The FHIR R4 Questionnaire of a measure, with licensed wording where
    /// configured.
    pub fn questionnaire(&self, measure: Measure) -> Value {
        build(measure, self.0.get(&measure))
    }
}

/// The FHIR R4 Questionnaire of a measure without licensed wording.
pub fn questionnaire(measure: Measure) -> Value {
    build(measure, None)
}

/// An answer option: a code, an optional label and the score it carries.
fn option(measure: Measure, code: i32, display: Option<String>, score: Option<i32>) -> Value {
    let mut coding = json!({
        "system": format!("{ANSWER_SYSTEM_BASE}/{}-answer", measure.code()),
        "code": code.to_string(),
    });
    if let Some(d) = display {
        coding["display"] = json!(d);
    }
    if let Some(s) = score {
        coding["extension"] = json!([{ "url": ORDINAL_VALUE, "valueDecimal": s }]);
    }
    json!({ "valueCoding": coding })
}

fn neutral_label(measure: Measure, link_id: &str) -> String {
    match measure {
        Measure::MskHq => format!("MSK-HQ item {link_id}"),
        Measure::StartBack => format!("STarT Back item {link_id}"),
        Measure::Eq5d5l => match link_id {
            "mobility" => "Mobility".to_owned(),
            "self-care" => "Self-care".to_owned(),
            "usual-activities" => "Usual activities".to_owned(),
            "pain-discomfort" => "Pain / discomfort".to_owned(),
            "anxiety-depression" => "Anxiety / depression".to_owned(),
            _ => "Health today, 0 (worst) to 100 (best)".to_owned(),
        },
        Measure::Psfs => {
            let n = link_id.trim_start_matches("activity-");
            format!("Activity {n}: ability today, 0 (unable) to 10 (as before the problem)")
        }
    }
}

/// Generic labels that are not instrument wording.
fn neutral_answer(measure: Measure, link_id: &str, code: i32) -> Option<String> {
    match (measure, link_id) {
        (Measure::StartBack, "9") => Some(
            [
                "Not at all",
                "Slightly",
                "Moderately",
                "Very much",
                "Extremely",
            ]
            .get(usize::try_from(code - 1).ok()?)?
            .to_string(),
        ),
        (Measure::StartBack, _) => Some(if code == 1 { "Agree" } else { "Disagree" }.to_owned()),
        (Measure::Eq5d5l, _) => Some(format!("Level {code}")),
        _ => None,
    }
}

/// The score an answer code carries, if the measure scores per answer.
fn answer_score(measure: Measure, link_id: &str, code: i32) -> Option<i32> {
    match (measure, link_id) {
        (Measure::MskHq, _) => Some(code),
        (Measure::StartBack, "9") => Some(i32::from(code >= 4)),
        (Measure::StartBack, _) => Some(code),
        _ => None,
    }
}

fn build(measure: Measure, texts: Option<&MeasureTexts>) -> Value {
    let items: Vec<Value> = scoring::items(measure)
        .iter()
        .map(|def| {
            let text = texts
                .and_then(|t| t.items.get(def.link_id).cloned())
                .unwrap_or_else(|| neutral_label(measure, def.link_id));
            let choice = !(def.link_id == "vas" || measure == Measure::Psfs);
            let mut item = json!({
                "linkId": def.link_id,
                "text": text,
                "type": if choice { "choice" } else { "integer" },
                "required": def.required,
            });
            if choice {
                let options: Vec<Value> = (def.min..=def.max)
                    .map(|code| {
                        let display = texts
                            .and_then(|t| t.answers.get(def.link_id))
                            .and_then(|a| a.get(&code.to_string()).cloned())
                            .or_else(|| neutral_answer(measure, def.link_id, code));
                        option(
                            measure,
                            code,
                            display,
                            answer_score(measure, def.link_id, code),
                        )
                    })
                    .collect();
                item["answerOption"] = Value::Array(options);
            } else {
                item["extension"] = json!([
                    { "url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": def.min },
                    { "url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": def.max },
                ]);
            }
            item
        })
        .collect();
    let mut q = json!({
        "resourceType": "Questionnaire",
        "id": measure.code(),
        "url": format!("{QUESTIONNAIRE_BASE}/{}", measure.code()),
        "name": measure.display().replace(['-', ' '], ""),
        "title": measure.display(),
        "status": "active",
        "subjectType": ["Patient"],
        "item": items,
    });
    match texts {
        Some(t) => q["copyright"] = json!(t.licence),
        None if measure != Measure::Psfs => {
            q["description"] = json!(format!(
                "Structure and scoring of {} only: the licensed item wording is not included. \
                 Configure a licence file to serve it.",
                measure.display()
            ));
        }
        None => {}
    }
    if measure == Measure::Eq5d5l {
        let order = format!(
            "Dimensions in profile order: {}.",
            EQ5D_DIMENSIONS.join(", ")
        );
        q["description"] = json!(match q["description"].as_str() {
            Some(d) => format!("{d} {order}"),
            None => order,
        });
    }
    q
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn msk_hq_has_14_scored_items_without_licensed_wording() {
        let q = questionnaire(Measure::MskHq);
        assert_eq!(q["resourceType"], "Questionnaire");
        let items = q["item"].as_array().unwrap();
        assert_eq!(items.len(), 14);
        assert_eq!(items[0]["linkId"], "1");
        assert_eq!(items[13]["linkId"], "14");
        assert_eq!(items[2]["text"], "MSK-HQ item 3");
        let options = items[0]["answerOption"].as_array().unwrap();
        assert_eq!(options.len(), 5);
        assert_eq!(options[4]["valueCoding"]["code"], "4");
        assert_eq!(options[4]["valueCoding"]["extension"][0]["valueDecimal"], 4);
        assert!(options[4]["valueCoding"].get("display").is_none());
        assert!(q.get("copyright").is_none());
    }

    #[test]
    fn licensed_wording_is_served_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("licence.toml");
        std::fs::write(
            &path,
            "[msk-hq]\nlicence = \"Licence 42\"\n[msk-hq.items]\n\"1\" = \"Configured text one\"\n[msk-hq.answers.\"1\"]\n\"0\" = \"Configured answer\"\n",
        )
        .unwrap();
        let texts = LicensedTexts::from_path(&path).unwrap();
        assert_eq!(texts.measures(), vec![Measure::MskHq]);
        let q = texts.questionnaire(Measure::MskHq);
        assert_eq!(q["copyright"], "Licence 42");
        assert_eq!(q["item"][0]["text"], "Configured text one");
        assert_eq!(
            q["item"][0]["answerOption"][0]["valueCoding"]["display"],
            "Configured answer"
        );
        assert_eq!(q["item"][1]["text"], "MSK-HQ item 2");

        std::fs::write(
            &path,
            "[msk-hq]\nlicence = \"x\"\n[msk-hq.items]\n\"15\" = \"t\"\n",
        )
        .unwrap();
        let e = LicensedTexts::from_path(&path).unwrap_err();
        assert!(e.to_string().contains("'15'"), "{e}");

        let json_path = dir.path().join("licence.json");
        std::fs::write(
            &json_path,
            r#"{"eq-5d-5l": {"licence": "L", "items": {"vas": "V"}}}"#,
        )
        .unwrap();
        let texts = LicensedTexts::from_path(&json_path).unwrap();
        assert_eq!(texts.questionnaire(Measure::Eq5d5l)["item"][5]["text"], "V");
    }

    #[test]
    fn every_measure_has_a_questionnaire_matching_its_items() {
        for m in Measure::ALL {
            let q = questionnaire(*m);
            let ids: Vec<&str> = q["item"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["linkId"].as_str().unwrap())
                .collect();
            let expected: Vec<&str> = scoring::items(*m).iter().map(|d| d.link_id).collect();
            assert_eq!(ids, expected, "{m}");
            assert_eq!(q["url"], format!("{QUESTIONNAIRE_BASE}/{}", m.code()));
        }
        let sb = questionnaire(Measure::StartBack);
        assert_eq!(sb["url"], mskflow_events::START_BACK_QUESTIONNAIRE);
        // Item 9 "very much" scores 1, "moderately" 0.
        let opts = &sb["item"][8]["answerOption"];
        assert_eq!(opts[3]["valueCoding"]["extension"][0]["valueDecimal"], 1);
        assert_eq!(opts[2]["valueCoding"]["extension"][0]["valueDecimal"], 0);
        let psfs = questionnaire(Measure::Psfs);
        assert_eq!(psfs["item"][0]["type"], "integer");
        assert_eq!(psfs["item"][0]["required"], false);
    }
}
