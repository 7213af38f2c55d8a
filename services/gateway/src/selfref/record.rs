//! Recording a self-referral: the referral goes to intake over gRPC like any
//! other (triaged, or redirected on a red flag, by the same rules), then the
//! self-referral's own event (`SelfReferralSubmitted` or
//! `SelfReferralSafetyNetted`) is appended to `selfref-{referral id}`, and
//! the MSK-HQ baseline is scored by the outcomes service once it has
//! scheduled the first-contact questionnaire. Every step is idempotent by
//! the form's key: a second submit of the same form records nothing new.

use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use chrono::Utc;
use mskflow_eventlog::{ExpectedVersion, Metadata, new_event};
use mskflow_events::selfreferral::{
    SelfReferralEvent, SelfReferralSafetyNetted, SelfReferralSubmitted,
};
use mskflow_events::types::ReceivedVia;
use mskflow_proto::intake::v1 as pb;
use mskflow_selfreferral::{
    AboutYou, Practice, QUESTIONS_VERSION, Reference, Referral, SafetyNet, Submission,
    referral_details,
};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// How a form was taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route<'a> {
    pub via: ReceivedVia,
    /// The call handler, for `telephone`.
    pub taken_by: Option<&'a str>,
}

/// What the form ended with.
#[derive(Debug)]
pub(crate) enum Ending<'a> {
    SafetyNet {
        net: &'a SafetyNet,
        practice: &'a Practice,
        about: &'a AboutYou,
    },
    Complete(&'a Submission),
}

/// How long the MSK-HQ baseline waits for the outcomes service to schedule
/// the first-contact questionnaire.
const BASELINE_PATIENCE: Duration = Duration::from_secs(60);

/// Record the referral (intake), then the self-referral's event; answers
/// the referral's id and its status code.
pub(crate) async fn record(
    state: &AppState,
    req: &HttpRequest,
    key: Uuid,
    route: Route<'_>,
    ending: Ending<'_>,
) -> Result<(Uuid, &'static str), ApiError> {
    let reference = Reference::of_key(key);
    let now = Utc::now();
    let referral = match &ending {
        Ending::SafetyNet {
            net,
            practice,
            about,
        } => Referral {
            route: route.via,
            reference: &reference,
            practice,
            about,
            red_flags: &net.red_flags,
            problem: None,
            start_back: None,
        },
        Ending::Complete(s) => s.referral(route.via, &reference),
    };
    let details = referral_details(&referral, now);
    let correlation_id = Uuid::new_v5(&key, b"correlation");
    let (referral_id, status, new) = match crate::fhir::intake::submit(
        state,
        req,
        key,
        correlation_id,
        pb::Referral::from(details),
    )
    .await
    {
        Ok(view) => (view.referral_id, view.status.code(), true),
        // The same form sent again: intake has it (same key, same reference).
        Err(e) if e.status == StatusCode::CONFLICT => {
            let id = mskflow_selfreferral::referral_id(&reference);
            tracing::info!(referral_id = %id, "self-referral sent again");
            (id, "received", false)
        }
        Err(e) => return Err(e),
    };
    let event = match &ending {
        Ending::SafetyNet { net, .. } => {
            SelfReferralEvent::SelfReferralSafetyNetted(SelfReferralSafetyNetted {
                referral_id,
                reference: reference.to_string(),
                route: route.via,
                taken_by: route.taken_by.map(str::to_owned),
                rule_set_version: net.rule_set_version.to_owned(),
                advice: net.advice,
                red_flags: net.red_flags.clone(),
            })
        }
        Ending::Complete(s) => SelfReferralEvent::SelfReferralSubmitted(SelfReferralSubmitted {
            referral_id,
            reference: reference.to_string(),
            route: route.via,
            taken_by: route.taken_by.map(str::to_owned),
            questions_version: QUESTIONS_VERSION.to_owned(),
            body_area: s.problem.body_area,
            duration: s.problem.duration,
            work_status: s.problem.work_status,
            start_back: s.questionnaires.start_back_answers().map(|a| a.score()),
            msk_hq: s.questionnaires.msk_hq.to_vec(),
            msk_hq_score: s.questionnaires.msk_hq_score(),
        }),
    };
    append_once(state, referral_id, correlation_id, &event).await?;
    if let (Ending::Complete(s), true) = (ending, new) {
        let answers: Vec<(String, i32)> = s
            .questionnaires
            .msk_hq
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1).to_string(), i32::from(*v)))
            .collect();
        let outcomes = state.outcomes.clone();
        let timeout = state.intake_timeout;
        tokio::spawn(async move {
            submit_baseline(outcomes, timeout, referral_id, key, answers).await;
        });
    }
    Ok((referral_id, status))
}

/// Append `event` as the first of its stream; a stream that already has it
/// (the same form sent twice) is left as it is.
async fn append_once(
    state: &AppState,
    referral_id: Uuid,
    correlation_id: Uuid,
    event: &SelfReferralEvent,
) -> Result<(), ApiError> {
    let stream = SelfReferralEvent::stream_id(referral_id);
    let new = new_event(event, mskflow_events::SCHEMA_VERSION, Utc::now())
        .map_err(|_| ApiError::internal("the self-referral event could not be encoded"))?;
    let (traceparent, tracestate) = mskflow_telemetry::current_trace_context();
    let metadata = Metadata {
        causation_id: None,
        correlation_id,
        traceparent,
        tracestate,
    };
    match state
        .log
        .append(&stream, ExpectedVersion::NoStream, vec![new], &metadata)
        .await
    {
        Ok(_) => {
            tracing::info!(%referral_id, event_type = event.event_type(), "self-referral recorded");
            Ok(())
        }
        Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
            tracing::info!(%referral_id, "self-referral already recorded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(%referral_id, error = %e, "the self-referral event was not recorded");
            Err(ApiError::unavailable(
                "the self-referral could not be recorded",
            ))
        }
    }
}

/// Give the MSK-HQ baseline to the outcomes service as the first-contact
/// response, once the questionnaire is scheduled (the assessment request
/// that schedules it follows triage). The response id comes from the form's
/// key, so a repeat is recognised.
async fn submit_baseline(
    mut client: mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient<
        tonic::transport::Channel,
    >,
    timeout: Duration,
    referral_id: Uuid,
    key: Uuid,
    answers: Vec<(String, i32)>,
) {
    use mskflow_proto::outcomes::v1 as opb;
    let response_id = Uuid::new_v5(&key, b"msk-hq-baseline");
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let mut request = tonic::Request::new(opb::SubmitResponseRequest {
            referral_id: referral_id.to_string(),
            measure: "msk-hq".to_owned(),
            timepoint: "first-contact".to_owned(),
            answers: answers
                .iter()
                .map(|(link_id, value)| opb::ItemAnswer {
                    link_id: link_id.clone(),
                    value: *value,
                })
                .collect(),
            response_id: response_id.to_string(),
            correlation_id: Uuid::new_v5(&key, b"correlation").to_string(),
        });
        request.set_timeout(timeout);
        match client.submit_response(request).await {
            Ok(_) => {
                tracing::info!(%referral_id, "MSK-HQ baseline scored");
                return;
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::info!(%referral_id, "MSK-HQ baseline already recorded");
                return;
            }
            Err(s)
                if started.elapsed() < BASELINE_PATIENCE
                    && matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unavailable) =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(s) => {
                tracing::warn!(%referral_id, code = ?s.code(), "MSK-HQ baseline not recorded");
                return;
            }
        }
    }
}
