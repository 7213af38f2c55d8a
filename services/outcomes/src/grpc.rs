//! The `mskflow.outcomes.v1.OutcomesService` gRPC server.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use mskflow_events::outcomes::{ItemAnswer, Measure, OutcomeChangeRecorded, Score, Timepoint};
use mskflow_proto::convert::{FieldViolation, Invalid};
use mskflow_proto::outcomes::v1 as pb;
use mskflow_proto::outcomes::v1::outcomes_service_server::OutcomesService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::Error;
use crate::domain::{DomainError, Entry};
use crate::scoring;
use crate::service::{Outcomes, Refusal, Submission};

/// Largest due list returned at once.
const MAX_DUE: usize = 1000;
/// Due list size when the caller gives none.
const DEFAULT_DUE: usize = 100;

/// gRPC adapter over [`Outcomes`].
#[derive(Debug, Clone)]
pub struct OutcomesGrpc {
    outcomes: Arc<Outcomes>,
}

impl OutcomesGrpc {
    pub fn new(outcomes: Arc<Outcomes>) -> Self {
        Self { outcomes }
    }
}

fn bad_field(field: &str, description: impl Into<String>) -> Status {
    Invalid(vec![FieldViolation {
        field: field.to_owned(),
        description: description.into(),
    }])
    .into_status()
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(value).map_err(|_| bad_field(field, "must be a UUID"))
}

fn parse_measure(value: &str) -> Result<Measure, Status> {
    Measure::parse(value).map_err(|_| {
        let codes: Vec<&str> = Measure::ALL.iter().map(|m| m.code()).collect();
        bad_field("measure", format!("must be one of {}", codes.join(", ")))
    })
}

fn parse_timepoint(value: &str) -> Result<Timepoint, Status> {
    Timepoint::parse(value).map_err(|_| {
        let codes: Vec<&str> = Timepoint::ALL.iter().map(|t| t.code()).collect();
        bad_field("timepoint", format!("must be one of {}", codes.join(", ")))
    })
}

/// The field name of an answered item in violations: `answers[link_id=7]`.
pub fn answer_field(link_id: &str) -> String {
    format!("answers[link_id={link_id}]")
}

fn invalid_answers(invalid: &scoring::Invalid) -> Status {
    Invalid(
        invalid
            .problems
            .iter()
            .map(|p| FieldViolation {
                field: answer_field(&p.link_id),
                description: format!(
                    "{} item {} {}",
                    invalid.measure.display(),
                    p.link_id,
                    p.problem
                ),
            })
            .collect(),
    )
    .into_status()
}

fn domain_status(e: &DomainError) -> Status {
    match e {
        DomainError::NotScheduled { .. } => Status::not_found(e.to_string()),
        DomainError::AlreadyCompleted { .. } => Status::failed_precondition(e.to_string()),
    }
}

/// How infrastructure failures reach the caller. Messages name streams and
/// positions, never patient data.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::Store(
                mskflow_eventlog::Error::Unavailable { .. } | mskflow_eventlog::Error::Closed,
            ) => Status::unavailable(format!("event store unavailable, retry: {e}")),
            Error::Conflict { .. } => Status::aborted(e.to_string()),
            Error::View(_) | Error::ViewBehind { .. } => {
                Status::unavailable(format!("outcomes view unavailable, retry: {e}"))
            }
            _ => Status::internal(format!("outcomes failed: {e}")),
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The wire form of a score.
pub fn score_to_pb(score: &Score) -> pb::Score {
    let mut out = pb::Score {
        measure: score.measure().code().to_owned(),
        value: score.value(),
        ..pb::Score::default()
    };
    match score {
        Score::MskHq { .. } => {}
        Score::StartBack(s) => {
            out.psychosocial = Some(u32::from(s.psychosocial));
            out.risk = Some(s.risk.to_string());
        }
        Score::Eq5d5l {
            profile,
            vas,
            value_set,
            ..
        } => {
            out.profile = Some(profile.clone());
            out.vas = Some(u32::from(*vas));
            out.value_set = Some(value_set.clone());
        }
        Score::Psfs { activities, .. } => out.activities = Some(u32::from(*activities)),
    }
    out
}

/// The wire form of a change.
pub fn change_to_pb(c: &OutcomeChangeRecorded) -> pb::Change {
    pb::Change {
        measure: c.measure.code().to_owned(),
        from: c.from.code().to_owned(),
        to: c.to.code().to_owned(),
        baseline: c.baseline,
        later: c.later,
        change: c.change,
        minimal_important_change: c.minimal_important_change,
        reached_minimal_important_change: c.reached_minimal_important_change,
    }
}

/// The wire form of a questionnaire's state.
pub fn entry_to_pb(referral_id: Uuid, e: &Entry) -> pb::QuestionnaireState {
    pb::QuestionnaireState {
        referral_id: referral_id.to_string(),
        measure: e.measure.code().to_owned(),
        timepoint: e.timepoint.code().to_owned(),
        status: e.status().code().to_owned(),
        due: e.due.map(time).unwrap_or_default(),
        sent_at: e.sent_at.map(time),
        completed_at: e.completed.as_ref().map(|c| time(c.completed_at)),
        score: e.completed.as_ref().map(|c| score_to_pb(&c.score)),
    }
}

/// A server span for one call, continuing the caller's trace; and the
/// trace context to store with the events it causes.
fn server_span(method: &'static str, metadata: &MetadataMap) -> (Option<String>, tracing::Span) {
    let incoming = metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        // W3C trace context is 55 characters; anything far longer is not one.
        .filter(|v| v.len() <= 256)
        .map(str::to_owned);
    let span = tracing::info_span!(
        "outcomes.rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        trace_id = tracing::field::Empty,
    );
    mskflow_telemetry::set_remote_parent(&span, incoming.as_deref(), None);
    if let Some(id) = mskflow_telemetry::trace_id_of(&span) {
        span.record("trace_id", id);
    }
    let traceparent = mskflow_telemetry::trace_context_of(&span).0.or(incoming);
    (traceparent, span)
}

impl OutcomesGrpc {
    async fn submit_response_inner(
        &self,
        request: Request<pb::SubmitResponseRequest>,
        traceparent: Option<String>,
    ) -> Result<Response<pb::SubmitResponseResponse>, Status> {
        let body = request.into_inner();
        let referral_id = parse_uuid("referral_id", &body.referral_id)?;
        let response_id = parse_uuid("response_id", &body.response_id)?;
        let measure = parse_measure(&body.measure)?;
        let timepoint = parse_timepoint(&body.timepoint)?;
        let correlation_id = if body.correlation_id.is_empty() {
            None
        } else {
            Some(parse_uuid("correlation_id", &body.correlation_id)?)
        };
        let answers = body
            .answers
            .into_iter()
            .map(|a| ItemAnswer {
                link_id: a.link_id,
                value: a.value,
            })
            .collect();
        match self
            .outcomes
            .submit(Submission {
                referral_id,
                response_id,
                measure,
                timepoint,
                answers,
                correlation_id,
                traceparent,
            })
            .await?
        {
            Ok(recorded) => Ok(Response::new(pb::SubmitResponseResponse {
                response_id: recorded.response_id.to_string(),
                version: recorded.version,
                score: Some(score_to_pb(&recorded.score)),
                changes: recorded.changes.iter().map(change_to_pb).collect(),
            })),
            Err(Refusal::Invalid(invalid)) => Err(invalid_answers(&invalid)),
            Err(Refusal::Domain(e)) => Err(domain_status(&e)),
        }
    }

    async fn mark_sent_inner(
        &self,
        request: Request<pb::MarkSentRequest>,
    ) -> Result<Response<pb::QuestionnaireState>, Status> {
        let body = request.into_inner();
        let referral_id = parse_uuid("referral_id", &body.referral_id)?;
        let measure = parse_measure(&body.measure)?;
        let timepoint = parse_timepoint(&body.timepoint)?;
        match self
            .outcomes
            .mark_sent(referral_id, measure, timepoint)
            .await?
        {
            Ok(entry) => Ok(Response::new(entry_to_pb(referral_id, &entry))),
            Err(e) => Err(domain_status(&e)),
        }
    }

    async fn get_outcomes_inner(
        &self,
        request: Request<pb::GetOutcomesRequest>,
    ) -> Result<Response<pb::Outcomes>, Status> {
        let referral_id = parse_uuid("referral_id", &request.get_ref().referral_id)?;
        let Some(state) = self.outcomes.get(referral_id).await? else {
            return Err(Status::not_found(format!(
                "no outcomes are recorded for referral {referral_id}"
            )));
        };
        Ok(Response::new(pb::Outcomes {
            referral_id: referral_id.to_string(),
            version: state.version,
            questionnaires: state
                .entries
                .values()
                .map(|e| entry_to_pb(referral_id, e))
                .collect(),
            changes: state.changes.iter().map(change_to_pb).collect(),
        }))
    }

    async fn list_due_inner(
        &self,
        request: Request<pb::ListDueRequest>,
    ) -> Result<Response<pb::ListDueResponse>, Status> {
        let body = request.into_inner();
        let as_of = if body.as_of.is_empty() {
            self.outcomes.now()
        } else {
            DateTime::parse_from_rfc3339(&body.as_of)
                .map_err(|_| bad_field("as_of", "must be an RFC 3339 time"))?
                .with_timezone(&Utc)
        };
        let limit = match usize::try_from(body.limit).unwrap_or(MAX_DUE) {
            0 => DEFAULT_DUE,
            n => n.min(MAX_DUE),
        };
        let due = self.outcomes.list_due(as_of, limit).await?;
        Ok(Response::new(pb::ListDueResponse {
            due: due
                .iter()
                .map(|d| entry_to_pb(d.referral_id, &d.entry))
                .collect(),
        }))
    }

    async fn get_questionnaire_inner(
        &self,
        request: Request<pb::GetQuestionnaireRequest>,
    ) -> Result<Response<pb::GetQuestionnaireResponse>, Status> {
        let measure = parse_measure(&request.get_ref().measure)?;
        let q = self.outcomes.questionnaire(measure);
        Ok(Response::new(pb::GetQuestionnaireResponse {
            questionnaire_json: q.to_string(),
        }))
    }
}

#[tonic::async_trait]
impl OutcomesService for OutcomesGrpc {
    async fn submit_response(
        &self,
        request: Request<pb::SubmitResponseRequest>,
    ) -> Result<Response<pb::SubmitResponseResponse>, Status> {
        let (traceparent, span) = server_span("OutcomesService/SubmitResponse", request.metadata());
        self.submit_response_inner(request, traceparent)
            .instrument(span)
            .await
    }

    async fn mark_sent(
        &self,
        request: Request<pb::MarkSentRequest>,
    ) -> Result<Response<pb::QuestionnaireState>, Status> {
        let (_, span) = server_span("OutcomesService/MarkSent", request.metadata());
        self.mark_sent_inner(request).instrument(span).await
    }

    async fn get_outcomes(
        &self,
        request: Request<pb::GetOutcomesRequest>,
    ) -> Result<Response<pb::Outcomes>, Status> {
        let (_, span) = server_span("OutcomesService/GetOutcomes", request.metadata());
        self.get_outcomes_inner(request).instrument(span).await
    }

    async fn list_due(
        &self,
        request: Request<pb::ListDueRequest>,
    ) -> Result<Response<pb::ListDueResponse>, Status> {
        let (_, span) = server_span("OutcomesService/ListDue", request.metadata());
        self.list_due_inner(request).instrument(span).await
    }

    async fn get_questionnaire(
        &self,
        request: Request<pb::GetQuestionnaireRequest>,
    ) -> Result<Response<pb::GetQuestionnaireResponse>, Status> {
        let (_, span) = server_span("OutcomesService/GetQuestionnaire", request.metadata());
        self.get_questionnaire_inner(request).instrument(span).await
    }
}
