//! Messaging: `POST /$process-message` (a Booking and Referral Standard
//! referral, or its `update` cancelling it) and the `MessageDefinition` of
//! what the server accepts.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_fhir::IssueType;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;
use crate::fhir::intake::{cancel_referral, submit};
use crate::fhir::request::{
    base_url, check_content_type, fhir_ok, query_pairs, read_body, request_ids,
};
use crate::render;
use crate::render::MESSAGE_EVENT_SYSTEM;
use crate::state::{AppState, FHIR_JSON, State};

pub(crate) async fn process_message(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (request_id, correlation_id) = request_ids(&req)?;
    check_content_type(&req)?;
    let body = read_body(&state, &req, payload).await?;
    let mut parsed = mskflow_fhir::parse_process_message(&body)?;
    crate::auth::principal(&req)?.check_sender(
        parsed
            .referral
            .sender
            .ods_code
            .as_ref()
            .map(mskflow_events::OdsCode::as_str),
    )?;
    if parsed.bundle_version.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            IssueType::Required,
            "Bundle.meta.versionId is required (Booking and Referral Standard)",
        )
        .at("Bundle.meta.versionId"));
    }
    if parsed.event_code != "servicerequest-request" {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            format!(
                "message event '{}' is not supported; send servicerequest-request",
                parsed.event_code
            ),
        )
        .at("Bundle.entry[0].resource.eventCoding"));
    }
    if parsed.reason.as_deref() == Some("update") {
        return cancel(&state, &req, request_id, correlation_id, parsed).await;
    }
    if parsed.referral.sender.software.is_none() {
        parsed.referral.sender.software = crate::auth::nhsd(&req).requesting_software;
    }
    let view = submit(
        &state,
        &req,
        request_id,
        correlation_id,
        parsed.referral.into(),
    )
    .await?;
    Ok(message_response(&state, &req, &parsed.message_id, &view))
}

/// The `servicerequest-response` message answering a `$process-message`,
/// with the referral's Task as `Location`.
pub(crate) fn message_response(
    state: &AppState,
    req: &HttpRequest,
    message_id: &str,
    view: &crate::views::ReferralView,
) -> HttpResponse {
    let base = base_url(state, req);
    let body = render::response_message(&base, message_id, view);
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((
            header::LOCATION,
            format!("{base}/Task/{}", view.referral_id),
        ))
        .body(body.to_string())
}

/// A Booking and Referral Standard `update`: cancellation when the
/// ServiceRequest's status is `revoked` or `entered-in-error`, only while the
/// referral is active. Other updates (amendments) are not supported.
pub(crate) async fn cancel(
    state: &AppState,
    req: &HttpRequest,
    request_id: Uuid,
    correlation_id: Uuid,
    parsed: mskflow_fhir::ParsedMessage,
) -> Result<HttpResponse, ApiError> {
    if !matches!(
        parsed.service_request_status.as_str(),
        "revoked" | "entered-in-error"
    ) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            "an update may only cancel a referral (ServiceRequest.status revoked or entered-in-error); amendments are not supported: cancel and send a new referral",
        )
        .at("ServiceRequest.status"));
    }
    if parsed.referral.service_request_identifier.is_none() {
        return Err(ApiError::bad_request(
            IssueType::Required,
            "an update must carry the ServiceRequest.identifier of the referral it changes",
        )
        .at("ServiceRequest.identifier"));
    }
    let view = cancel_referral(
        state,
        request_id,
        correlation_id,
        &parsed.service_request_status,
        parsed.referral.into(),
        None,
    )
    .await?;
    Ok(message_response(state, req, &parsed.message_id, &view))
}

pub(crate) async fn message_definitions(
    state: State,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&req)?;
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_count" | "_format"))
    {
        return Err(ApiError::bad_request(
            IssueType::NotSupported,
            format!("search parameter '{k}' is not supported on MessageDefinition"),
        ));
    }
    let base = base_url(&state, &req);
    let links = [("self", format!("{base}/MessageDefinition"))];
    Ok(fhir_ok(
        StatusCode::OK,
        &render::searchset(&base, &links, vec![message_definition()], 1),
    ))
}

pub(crate) async fn read_message_definition(
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let definition = message_definition();
    if definition["id"] == path.as_str() {
        Ok(fhir_ok(StatusCode::OK, &definition))
    } else {
        Err(ApiError::not_found(format!(
            "MessageDefinition/{path} is not known"
        )))
    }
}

/// The message this server accepts on `$process-message`, and what it
/// requires of it.
pub fn message_definition() -> Value {
    json!({
        "resourceType": "MessageDefinition",
        "id": "servicerequest-request",
        "url": "https://fhir.mskflow.org/MessageDefinition/servicerequest-request",
        "version": "1",
        "name": "MskReferralRequest",
        "title": "MSK referral request",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "mskflow",
        "description": "A referral to the community MSK service, sent as a Bundle of type message. Required: X-Request-Id and X-Correlation-Id headers (UUIDs); Bundle.meta.versionId; MessageHeader as the first entry with eventCoding servicerequest-request, focus on the ServiceRequest and source.endpoint for replies; a ServiceRequest with status active, subject referencing a Patient entry with an NHS number (https://fhir.nhs.uk/Id/nhs-number, modulus 11 check digit). Optional: ServiceRequest.identifier (duplicates of the same sender and identifier are refused), reasonCode and bodySite (SNOMED CT) for the pathway, priority, red-flag Observations (code system https://fhir.mskflow.org/CodeSystem/msk-red-flag, valueBoolean), and a STarT Back QuestionnaireResponse (https://fhir.mskflow.org/Questionnaire/start-back, items 1-9, valueBoolean).",
        "eventCoding": {"system": MESSAGE_EVENT_SYSTEM, "code": "servicerequest-request"},
        "category": "consequence",
        "focus": [
            {"code": "ServiceRequest", "min": 1, "max": "1"}
        ],
        "responseRequired": "always",
        "allowedResponse": [{
            "message": "https://fhir.mskflow.org/MessageDefinition/servicerequest-response",
            "situation": "Accepted: a response message with the Task (status accepted, or rejected when redirected or not for this service) and the ServiceRequest. Refused: an OperationOutcome with the Booking and Referral Standard error code."
        }]
    })
}
