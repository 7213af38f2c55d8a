//! The `mskflow.intake.v1.IntakeService` gRPC server.

use std::sync::Arc;
use tracing::Instrument as _;

use mskflow_events::intake::ReferralDetails;
use mskflow_proto::REFERRAL_ID_METADATA;
use mskflow_proto::intake::v1 as pb;
use mskflow_proto::intake::v1::intake_service_server::IntakeService;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::domain::ReferralState;
use crate::service::{Intake, Rejection};

/// gRPC adapter over [`Intake`].
#[derive(Debug, Clone)]
pub struct IntakeGrpc {
    intake: Arc<Intake>,
}

impl IntakeGrpc {
    pub fn new(intake: Arc<Intake>) -> Self {
        Self { intake }
    }
}

/// An `INVALID_ARGUMENT` status with one `BadRequest` field violation.
fn bad_field(field: &str, description: &str) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, description);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(value).map_err(|_| bad_field(field, "must be a UUID"))
}

/// How infrastructure failures reach the caller. Messages name streams and
/// positions, never patient data.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::Store(
                mskflow_eventlog::Error::Unavailable { .. } | mskflow_eventlog::Error::Closed,
            ) => Status::unavailable(format!("event store unavailable, retry: {e}")),
            Error::Index(_) => {
                Status::unavailable(format!("duplicate index unavailable, retry: {e}"))
            }
            Error::Conflict { .. } => Status::aborted(e.to_string()),
            _ => Status::internal(format!("intake failed: {e}")),
        }
    }
}

fn opt_code(c: Option<impl std::fmt::Display>) -> Option<String> {
    c.map(|c| c.to_string())
}

/// The wire form of a referral's state.
pub fn state_to_pb(referral_id: Uuid, state: &ReferralState) -> pb::ReferralState {
    pb::ReferralState {
        referral_id: referral_id.to_string(),
        status: state.status.map_or("", |s| s.code()).to_owned(),
        version: state.version,
        rule_set_version: state.rule_set_version.clone().unwrap_or_default(),
        rule_id: state.rule_id.clone().unwrap_or_default(),
        priority: opt_code(state.priority),
        pathway: opt_code(state.pathway),
        destination: opt_code(state.destination),
        urgency: opt_code(state.urgency),
        reason: state.reason.clone(),
    }
}

impl IntakeGrpc {
    async fn submit_inner(
        &self,
        body: pb::SubmitReferralRequest,
        traceparent: Option<String>,
    ) -> Result<Response<pb::SubmitReferralResponse>, Status> {
        let request_id = parse_uuid("request_id", &body.request_id)?;
        let correlation_id = parse_uuid("correlation_id", &body.correlation_id)?;
        tracing::Span::current().record("correlation_id", tracing::field::display(correlation_id));
        let referral = body
            .referral
            .ok_or_else(|| bad_field("referral", "is required"))?;
        let details = ReferralDetails::try_from(referral).map_err(|e| e.into_status())?;
        match self
            .intake
            .submit(request_id, correlation_id, traceparent, details)
            .await?
        {
            Ok(submitted) => {
                tracing::Span::current().record(
                    "referral_id",
                    tracing::field::display(submitted.referral_id),
                );
                Ok(Response::new(pb::SubmitReferralResponse {
                    referral_id: submitted.referral_id.to_string(),
                    version: submitted.version,
                    state: Some(state_to_pb(submitted.referral_id, &submitted.state)),
                }))
            }
            Err(rejection) => Err(rejection_status(rejection)),
        }
    }
}

/// How a business refusal crosses the gRPC boundary.
fn rejection_status(rejection: Rejection) -> Status {
    use crate::domain::DomainError;
    match rejection {
        Rejection::Duplicate { referral_id } => {
            let mut status = Status::already_exists(format!(
                "referral {referral_id} is already recorded (same request id or same referral)"
            ));
            if let Ok(v) = MetadataValue::try_from(referral_id.to_string()) {
                status.metadata_mut().insert(REFERRAL_ID_METADATA, v);
            }
            status
        }
        Rejection::Refused(e @ DomainError::AlreadyRecorded { .. }) => {
            Status::already_exists(e.to_string())
        }
        Rejection::Refused(e @ DomainError::NotFound) => Status::not_found(e.to_string()),
        Rejection::Refused(e @ DomainError::NotActive { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        Rejection::Refused(e @ DomainError::NotSender { .. }) => {
            Status::permission_denied(e.to_string())
        }
    }
}

#[tonic::async_trait]
impl IntakeService for IntakeGrpc {
    async fn submit_referral(
        &self,
        request: Request<pb::SubmitReferralRequest>,
    ) -> Result<Response<pb::SubmitReferralResponse>, Status> {
        let started = std::time::Instant::now();
        let incoming = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            // W3C trace context is 55 characters; anything far longer is
            // not one and is not stored.
            .filter(|v| v.len() <= 256)
            .map(str::to_owned);
        let span = tracing::info_span!(
            "intake.submit_referral",
            otel.name = "IntakeService/SubmitReferral",
            otel.kind = "server",
            rpc.system = "grpc",
            trace_id = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            referral_id = tracing::field::Empty,
        );
        mskflow_telemetry::set_remote_parent(&span, incoming.as_deref(), None);
        if let Some(id) = mskflow_telemetry::trace_id_of(&span) {
            span.record("trace_id", id);
        }
        // The events carry this span's context, so consumers continue the
        // same trace as children of intake.
        let traceparent = mskflow_telemetry::trace_context_of(&span).0.or(incoming);
        let result = self
            .submit_inner(request.into_inner(), traceparent)
            .instrument(span)
            .await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        metrics::counter!("mskflow_grpc_requests_total", "method" => "SubmitReferral", "code" => format!("{code:?}")).increment(1);
        metrics::histogram!("mskflow_grpc_request_duration_seconds", "method" => "SubmitReferral")
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn cancel_referral(
        &self,
        request: Request<pb::CancelReferralRequest>,
    ) -> Result<Response<pb::SubmitReferralResponse>, Status> {
        let incoming = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 256)
            .map(str::to_owned);
        let span = tracing::info_span!(
            "intake.cancel_referral",
            otel.name = "IntakeService/CancelReferral",
            otel.kind = "server",
            rpc.system = "grpc",
            trace_id = tracing::field::Empty,
        );
        mskflow_telemetry::set_remote_parent(&span, incoming.as_deref(), None);
        if let Some(id) = mskflow_telemetry::trace_id_of(&span) {
            span.record("trace_id", id);
        }
        let traceparent = mskflow_telemetry::trace_context_of(&span).0.or(incoming);
        async move {
            let body = request.into_inner();
            let request_id = parse_uuid("request_id", &body.request_id)?;
            let correlation_id = parse_uuid("correlation_id", &body.correlation_id)?;
            let status = mskflow_events::intake::CancellationStatus::parse(&body.status)
                .ok_or_else(|| {
                    bad_field(
                        "ServiceRequest.status",
                        "must be revoked or entered-in-error to cancel",
                    )
                })?;
            let referral = body
                .referral
                .ok_or_else(|| bad_field("referral", "is required"))?;
            let details = ReferralDetails::try_from(referral).map_err(|e| e.into_status())?;
            match self
                .intake
                .cancel(
                    request_id,
                    correlation_id,
                    traceparent,
                    &details,
                    status,
                    body.expected_version,
                )
                .await?
            {
                Ok(done) => Ok(Response::new(pb::SubmitReferralResponse {
                    referral_id: done.referral_id.to_string(),
                    version: done.version,
                    state: Some(state_to_pb(done.referral_id, &done.state)),
                })),
                Err(rejection) => Err(rejection_status(rejection)),
            }
        }
        .instrument(span)
        .await
    }

    async fn get_referral(
        &self,
        request: Request<pb::GetReferralRequest>,
    ) -> Result<Response<pb::ReferralState>, Status> {
        let referral_id = parse_uuid("referral_id", &request.get_ref().referral_id)?;
        match self.intake.get(referral_id).await? {
            Some(state) => Ok(Response::new(state_to_pb(referral_id, &state))),
            None => Err(Status::not_found(format!(
                "referral {referral_id} is not recorded"
            ))),
        }
    }
}
