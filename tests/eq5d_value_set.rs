//! EQ-5D-5L responses through the gateway are scored with the England value
//! set (Devlin et al. 2018) by default, and the set that scored them is named
//! on the answer (FHIR extension) and on the `QuestionnaireCompleted` event.

mod common;

use common::{TestResult, entries_of, new_referral_message, spawn_app};
use serde_json::{Value, json};
use uuid::Uuid;

const VALUE_SET_EXTENSION: &str = "https://fhir.mskflow.org/StructureDefinition/eq5d-value-set";
const SCORE_EXTENSION: &str = "https://fhir.mskflow.org/StructureDefinition/prom-score";

fn eq5d_response(referral: &str, timepoint: &str, levels: [i64; 5], vas: i64) -> Value {
    let dims = [
        "mobility",
        "self-care",
        "usual-activities",
        "pain-discomfort",
        "anxiety-depression",
    ];
    let mut item: Vec<Value> = dims
        .iter()
        .zip(levels)
        .map(|(l, v)| json!({"linkId": l, "answer": [{"valueInteger": v}]}))
        .collect();
    item.push(json!({"linkId": "vas", "answer": [{"valueInteger": vas}]}));
    json!({
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint", "code": timepoint}]},
        "questionnaire": "https://fhir.mskflow.org/Questionnaire/eq-5d-5l",
        "basedOn": [{"reference": format!("ServiceRequest/{referral}")}],
        "item": item
    })
}

fn extension<'a>(resource: &'a Value, url: &str) -> Option<&'a Value> {
    resource["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
}

#[tokio::test]
async fn eq5d5l_is_scored_with_the_england_value_set_and_names_it() -> TestResult {
    let app = spawn_app().await?;
    let r = app.post_message(&new_referral_message()?).await?;
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await?;
    let id = entries_of(&answer, "Task")[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();

    // 12345: 1 - (0 + 0.050 + 0.063 + 0.276 + 0.289) = 1 - 0.678 = 0.322.
    let r = app
        .post(
            "QuestionnaireResponse",
            &eq5d_response(&id, "first-contact", [1, 2, 3, 4, 5], 40),
            Uuid::new_v4(),
        )
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let scored: Value = r.json().await?;
    let index = extension(&scored, SCORE_EXTENSION).ok_or("no score")?["valueDecimal"]
        .as_f64()
        .ok_or("no index")?;
    assert!((index - 0.322).abs() < 1e-9, "{scored}");
    assert_eq!(
        extension(&scored, VALUE_SET_EXTENSION).ok_or("no value set extension")?["valueString"],
        "england-devlin-2018",
        "{scored}"
    );

    // 11112 at discharge: 1 - 0.078 = 0.922.
    let r = app
        .post(
            "QuestionnaireResponse",
            &eq5d_response(&id, "discharge", [1, 1, 1, 1, 2], 85),
            Uuid::new_v4(),
        )
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let scored: Value = r.json().await?;
    let index = extension(&scored, SCORE_EXTENSION).ok_or("no score")?["valueDecimal"]
        .as_f64()
        .ok_or("no index")?;
    assert!((index - 0.922).abs() < 1e-9, "{scored}");

    // The events name the value set too.
    let completed: Vec<Value> = app
        .all_events()
        .await?
        .into_iter()
        .filter(|e| {
            e.stream_id == format!("outcomes-{id}") && e.event_type == "QuestionnaireCompleted"
        })
        .map(|e| e.payload)
        .collect();
    assert_eq!(completed.len(), 2, "{completed:?}");
    for event in &completed {
        assert_eq!(
            event["score"]["value_set"], "england-devlin-2018",
            "{event}"
        );
    }
    Ok(())
}
