//! `Questionnaire` (served by the outcomes service) and
//! `QuestionnaireResponse` (scored by it).

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::Value;

use crate::error::{ApiError, from_grpc};
use crate::fhir::request::{
    base_url, check_content_type, fhir_ok, query_pairs, read_body, request_ids, visible,
};
use crate::render;
use crate::state::{AppState, FHIR_JSON, State};

/// The extension on a scored EQ-5D-5L `QuestionnaireResponse` naming the
/// value set that gave its index (`england-devlin-2018` by default).
pub const EQ5D_VALUE_SET_EXTENSION: &str =
    "https://fhir.mskflow.org/StructureDefinition/eq5d-value-set";

/// The measures whose Questionnaires the outcomes service serves.
pub(crate) const MEASURES: &[&str] = &["msk-hq", "start-back", "eq-5d-5l", "psfs"];

pub(crate) async fn questionnaire(state: &AppState, measure: &str) -> Result<Value, ApiError> {
    use mskflow_proto::outcomes::v1 as opb;
    let mut client = state.outcomes.clone();
    let mut request = tonic::Request::new(opb::GetQuestionnaireRequest {
        measure: measure.to_owned(),
    });
    request.set_timeout(state.intake_timeout);
    let answer = client
        .get_questionnaire(request)
        .await
        .map_err(|s| from_grpc(&s))?
        .into_inner();
    serde_json::from_str(&answer.questionnaire_json).map_err(|_| {
        ApiError::internal("the outcomes service answered with an invalid Questionnaire")
    })
}

/// `GET /Questionnaire/{measure}`: the measure's Questionnaire (item codes
/// and answer scores; licensed wording only when a licence is configured).
pub(crate) async fn read_questionnaire(
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !MEASURES.contains(&path.as_str()) {
        return Err(ApiError::not_found(format!(
            "Questionnaire/{path} is not known (known: {})",
            MEASURES.join(", ")
        )));
    }
    Ok(fhir_ok(
        StatusCode::OK,
        &questionnaire(&state, &path).await?,
    ))
}

pub(crate) async fn search_questionnaires(
    state: State,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some((k, _)) = query_pairs(&req)?
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_count" | "_format"))
    {
        return Err(ApiError::bad_request(
            IssueType::NotSupported,
            format!("search parameter '{k}' is not supported on Questionnaire"),
        ));
    }
    let mut all = Vec::new();
    for m in MEASURES {
        all.push(questionnaire(&state, m).await?);
    }
    let base = base_url(&state, &req);
    let total = all.len();
    let links = [("self", format!("{base}/Questionnaire"))];
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, all, total),
    ))
}

/// `POST /QuestionnaireResponse`: score the answers (outcomes service) and
/// answer the response with its score as an extension.
pub(crate) async fn submit_questionnaire_response(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use mskflow_proto::outcomes::v1 as opb;
    let (request_id, correlation_id) = request_ids(&req)?;
    check_content_type(&req)?;
    let body = read_body(&state, &req, payload).await?;
    let parsed = mskflow_fhir::parse_questionnaire_response(&body)?;
    visible(&state, &req, parsed.referral_id, "ServiceRequest")?;
    let mut request = tonic::Request::new(opb::SubmitResponseRequest {
        referral_id: parsed.referral_id.to_string(),
        measure: parsed.measure.clone(),
        timepoint: parsed.timepoint.clone(),
        answers: parsed
            .answers
            .iter()
            .map(|(link_id, value)| opb::ItemAnswer {
                link_id: link_id.clone(),
                value: *value,
            })
            .collect(),
        response_id: request_id.to_string(),
        correlation_id: correlation_id.to_string(),
    });
    request.set_timeout(state.intake_timeout);
    let (traceparent, _) = mskflow_telemetry::current_trace_context();
    if let Some(v) = traceparent.and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("traceparent", v);
    }
    let mut client = state.outcomes.clone();
    let scored = client
        .submit_response(request)
        .await
        .map_err(|s| {
            let mut e = from_grpc(&s);
            // Item problems point at the item in FHIR terms.
            for issue in &mut e.issues {
                if let Some(x) = issue.expression.as_mut()
                    && let Some(link) = x
                        .strip_prefix("answers[link_id=")
                        .and_then(|r| r.strip_suffix(']'))
                {
                    *x = format!("QuestionnaireResponse.item.where(linkId='{link}')");
                }
            }
            e
        })?
        .into_inner();
    let mut resource: Value = serde_json::from_slice(&body).unwrap_or_default();
    resource["id"] = serde_json::json!(scored.response_id);
    if let Some(score) = scored.score {
        let mut ext = vec![serde_json::json!({
            "url": "https://fhir.mskflow.org/StructureDefinition/prom-score",
            "valueDecimal": score.value,
        })];
        if let Some(value_set) = &score.value_set {
            ext.push(serde_json::json!({
                "url": EQ5D_VALUE_SET_EXTENSION,
                "valueString": value_set,
            }));
        }
        for change in &scored.changes {
            ext.push(serde_json::json!({
                "url": "https://fhir.mskflow.org/StructureDefinition/prom-change",
                "extension": [
                    {"url": "from", "valueCode": change.from},
                    {"url": "change", "valueDecimal": change.change},
                    {"url": "reachedMinimalImportantChange", "valueBoolean": change.reached_minimal_important_change}
                ]
            }));
        }
        resource["extension"] = Value::Array(ext);
    }
    let base = base_url(&state, &req);
    Ok(HttpResponse::Created()
        .content_type(FHIR_JSON)
        .insert_header((
            header::LOCATION,
            format!("{base}/QuestionnaireResponse/{}", scored.response_id),
        ))
        .body(resource.to_string()))
}
