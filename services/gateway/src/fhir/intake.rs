//! Referrals submitted to and cancelled by intake over gRPC, answered once
//! the views show the result (read-your-writes).

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use mskflow_fhir::IssueType;
use mskflow_proto::intake::v1 as pb;
use uuid::Uuid;

use crate::error::{ApiError, from_grpc};
use crate::fhir::request::with_sent;
use crate::state::AppState;

/// Submit to intake over gRPC, then wait until the views show the result.
pub(crate) async fn submit(
    state: &AppState,
    req: &HttpRequest,
    request_id: Uuid,
    correlation_id: Uuid,
    referral: pb::Referral,
) -> Result<crate::views::ReferralView, ApiError> {
    let mut request = tonic::Request::new(pb::SubmitReferralRequest {
        request_id: request_id.to_string(),
        correlation_id: correlation_id.to_string(),
        referral: Some(referral),
    });
    request.set_timeout(state.intake_timeout);
    if let Some(tp) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        && let Ok(v) = tp.parse()
    {
        request.metadata_mut().insert("traceparent", v);
    }
    let mut client = state.intake.clone();
    let response = client.submit_referral(request).await.map_err(|s| {
        tracing::info!(code = ?s.code(), %request_id, "intake refused the referral");
        from_grpc(&s)
    })?;
    let submitted = response.into_inner();
    let referral_id = Uuid::parse_str(&submitted.referral_id)
        .map_err(|_| ApiError::internal("intake answered with an invalid referral id"))?;
    tracing::info!(%referral_id, %request_id, version = submitted.version, "referral recorded");
    let view = state
        .views
        .wait_for(referral_id, submitted.version, state.wait_timeout)
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueType::Transient,
                format!("referral {referral_id} was recorded but its Task is not yet readable; poll Task/{referral_id}"),
            )
        })?;
    with_sent(state, view).await
}

/// Cancel a referral through intake (the one cancellation path, for the
/// `update` message and for `PUT /ServiceRequest/{id}`) and wait until the
/// views show it. With `expected_version`, intake records the cancellation
/// only if the referral is still at that version (checked by the event
/// log's append, so of two racing cancellations one wins); otherwise it
/// answers ABORTED (409 `conflict` here).
pub(crate) async fn cancel_referral(
    state: &AppState,
    request_id: Uuid,
    correlation_id: Uuid,
    status: &str,
    referral: pb::Referral,
    expected_version: Option<u64>,
) -> Result<crate::views::ReferralView, ApiError> {
    let mut request = tonic::Request::new(pb::CancelReferralRequest {
        request_id: request_id.to_string(),
        correlation_id: correlation_id.to_string(),
        status: status.to_owned(),
        referral: Some(referral),
        expected_version,
    });
    request.set_timeout(state.intake_timeout);
    let (traceparent, _) = mskflow_telemetry::current_trace_context();
    if let Some(v) = traceparent.and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("traceparent", v);
    }
    let mut client = state.intake.clone();
    let answer = client
        .cancel_referral(request)
        .await
        .map_err(|s| from_grpc(&s))?
        .into_inner();
    let referral_id = Uuid::parse_str(&answer.referral_id)
        .map_err(|_| ApiError::internal("intake answered with an invalid referral id"))?;
    tracing::info!(%referral_id, %request_id, "referral cancelled by its sender");
    let view = state
        .views
        .wait_for(referral_id, answer.version, state.wait_timeout)
        .await
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "referral {referral_id} was cancelled; poll Task/{referral_id}"
            ))
        })?;
    with_sent(state, view).await
}
