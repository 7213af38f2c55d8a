//! The `mskflow.assessment.v1.AssessmentService` gRPC server.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use mskflow_events::assessment::{
    DischargeReason, GroupProgramme, OnwardDestination, Outcome, Party, Slot,
};
use mskflow_events::types::{ContactMode, Pathway};
use mskflow_proto::assessment::v1 as pb;
use mskflow_proto::assessment::v1::assessment_service_server::AssessmentService;
use mskflow_proto::convert::{FieldViolation, Invalid};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{AssessmentRecord, DomainError, EpisodeState};
use crate::service::{Assessment, Rejection};
use crate::{Error, WorklistEntry};

/// gRPC adapter over [`Assessment`].
#[derive(Debug, Clone)]
pub struct AssessmentGrpc {
    assessment: Arc<Assessment>,
}

impl AssessmentGrpc {
    pub fn new(assessment: Arc<Assessment>) -> Self {
        Self { assessment }
    }
}

/// How infrastructure failures reach the caller. Messages name streams and
/// positions, never patient data.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::Store(
                mskflow_eventlog::Error::Unavailable { .. } | mskflow_eventlog::Error::Closed,
            )
            | Error::Projection(_)
            | Error::View(_) => Status::unavailable(format!("retry: {e}")),
            _ => Status::internal(format!("assessment failed: {e}")),
        }
    }
}

/// How refusals reach the caller.
fn rejection_status(r: Rejection) -> Status {
    let message = r.to_string();
    match r {
        Rejection::EpisodeNotFound { .. }
        | Rejection::SlotNotFound { .. }
        | Rejection::Domain(DomainError::NotRequested) => Status::not_found(message),
        Rejection::Domain(_) | Rejection::Slot { .. } => Status::failed_precondition(message),
        Rejection::Conflict { .. } => Status::aborted(message),
    }
}

/// Collects field violations of one request.
#[derive(Debug, Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    fn uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        match Uuid::parse_str(value) {
            Ok(id) => Some(id),
            Err(_) => {
                self.add(field, "must be a UUID");
                None
            }
        }
    }

    fn time(&mut self, field: &str, value: &str) -> Option<DateTime<Utc>> {
        match DateTime::parse_from_rfc3339(value) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                self.add(field, "must be an RFC 3339 date-time");
                None
            }
        }
    }

    /// A kebab-case code of a serde enum.
    fn code<T: DeserializeOwned>(&mut self, field: &str, value: &str, allowed: &str) -> Option<T> {
        match serde_json::from_value(serde_json::Value::String(value.to_owned())) {
            Ok(v) => Some(v),
            Err(_) => {
                self.add(field, format!("must be one of {allowed}"));
                None
            }
        }
    }

    fn non_empty(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.add(field, "is required");
        }
    }

    /// `Ok(value)` if nothing was violated.
    fn finish<T>(self, value: Option<T>) -> Result<T, Status> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => {
                let mut v = self.0;
                if v.is_empty() {
                    v.push(FieldViolation {
                        field: "request".to_owned(),
                        description: "is invalid".to_owned(),
                    });
                }
                Err(Invalid(v).into_status())
            }
        }
    }
}

fn code_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn slot_from_pb(v: &mut Violations, prefix: &str, s: pb::Slot) -> Option<Slot> {
    let slot_id = v.uuid(&format!("{prefix}.slot_id"), &s.slot_id);
    v.non_empty(&format!("{prefix}.clinician_id"), &s.clinician_id);
    let start = v.time(&format!("{prefix}.start"), &s.start);
    let end = v.time(&format!("{prefix}.end"), &s.end);
    let mode = ContactMode::parse(&s.mode)
        .map_err(|_| {
            v.add(
                format!("{prefix}.mode"),
                "must be one of face-to-face, telephone, video",
            );
        })
        .ok();
    if let (Some(start), Some(end)) = (start, end)
        && end <= start
    {
        v.add(format!("{prefix}.end"), "must be after start");
    }
    Some(Slot {
        slot_id: slot_id?,
        clinician_id: s.clinician_id,
        start: start?,
        end: end?,
        mode: mode?,
        location: s.location.filter(|l| !l.trim().is_empty()),
    })
}

fn slot_to_pb(s: &Slot) -> pb::Slot {
    pb::Slot {
        slot_id: s.slot_id.to_string(),
        clinician_id: s.clinician_id.clone(),
        start: time(s.start),
        end: time(s.end),
        mode: s.mode.code().to_owned(),
        location: s.location.clone(),
    }
}

const OUTCOMES: &str = "advice-and-self-management, community-physiotherapy, group-programme, strength-and-balance, fracture-liaison, onward-referral, discharge";
const DESTINATIONS: &str = "orthopaedics, rheumatology, pain-service, imaging, talking-therapies, social-prescribing, weight-management";

fn outcome_from_pb(v: &mut Violations, prefix: &str, o: pb::Outcome) -> Option<Outcome> {
    match o.outcome.as_str() {
        "advice-and-self-management" => Some(Outcome::AdviceAndSelfManagement {
            app: o.app.filter(|a| !a.trim().is_empty()),
        }),
        "community-physiotherapy" => Some(Outcome::CommunityPhysiotherapy),
        "group-programme" => {
            let field = format!("{prefix}.programme");
            match o.programme.as_deref() {
                Some(p) => v
                    .code::<GroupProgramme>(&field, p, "escape-pain")
                    .map(|programme| Outcome::GroupProgramme { programme }),
                None => {
                    v.add(field, "is required for a group programme");
                    None
                }
            }
        }
        "strength-and-balance" => Some(Outcome::StrengthAndBalance),
        "fracture-liaison" => Some(Outcome::FractureLiaison),
        "onward-referral" => {
            let field = format!("{prefix}.destination");
            let destination = match o.destination.as_deref() {
                Some(d) => v.code::<OnwardDestination>(&field, d, DESTINATIONS),
                None => {
                    v.add(field, "is required for an onward referral");
                    None
                }
            };
            let reason = o.reason.unwrap_or_default();
            v.non_empty(&format!("{prefix}.reason"), &reason);
            Some(Outcome::OnwardReferral {
                destination: destination?,
                reason,
            })
        }
        "discharge" => Some(Outcome::Discharge),
        _ => {
            v.add(
                format!("{prefix}.outcome"),
                format!("must be one of {OUTCOMES}"),
            );
            None
        }
    }
}

fn outcome_to_pb(o: &Outcome) -> pb::Outcome {
    let mut out = pb::Outcome::default();
    match o {
        Outcome::AdviceAndSelfManagement { app } => {
            out.outcome = "advice-and-self-management".to_owned();
            out.app = app.clone();
        }
        Outcome::CommunityPhysiotherapy => out.outcome = "community-physiotherapy".to_owned(),
        Outcome::GroupProgramme { programme } => {
            out.outcome = "group-programme".to_owned();
            out.programme = Some(code_of(programme));
        }
        Outcome::StrengthAndBalance => out.outcome = "strength-and-balance".to_owned(),
        Outcome::FractureLiaison => out.outcome = "fracture-liaison".to_owned(),
        Outcome::OnwardReferral {
            destination,
            reason,
        } => {
            out.outcome = "onward-referral".to_owned();
            out.destination = Some(destination.code().to_owned());
            out.reason = Some(reason.clone());
        }
        Outcome::Discharge => out.outcome = "discharge".to_owned(),
    }
    out
}

/// The wire form of an episode.
pub fn episode_to_pb(referral_id: Uuid, s: &EpisodeState) -> pb::Episode {
    pb::Episode {
        referral_id: referral_id.to_string(),
        status: s.status.map_or("", |st| st.code()).to_owned(),
        version: s.version,
        priority: s.priority.map(|p| p.code().to_owned()).unwrap_or_default(),
        pathway: s.pathway.map(|p| p.code().to_owned()).unwrap_or_default(),
        triaged_at: s.triaged_at.map(time).unwrap_or_default(),
        booking: s.booking.as_ref().map(slot_to_pb),
        missed_count: s.missed,
        outcomes: s.outcomes.iter().map(outcome_to_pb).collect(),
        onward_referrals: s
            .onward_referrals
            .iter()
            .map(|o| pb::OnwardReferral {
                onward_referral_id: o.onward_referral_id.to_string(),
                destination: o.destination.code().to_owned(),
                delivery: code_of(&o.delivery),
                service_request_json: o.service_request.to_string(),
            })
            .collect(),
        discharge_reason: s.discharge_reason.as_ref().map(code_of),
        notify_referrer: s.notify_referrer,
    }
}

fn entry_to_pb(e: &WorklistEntry) -> pb::WorklistEntry {
    pb::WorklistEntry {
        referral_id: e.referral_id.to_string(),
        priority: e.priority.code().to_owned(),
        pathway: e.pathway.code().to_owned(),
        triaged_at: time(e.triaged_at),
        missed_count: e.missed,
    }
}

fn answer(
    referral_id: Uuid,
    result: Result<EpisodeState, Rejection>,
) -> Result<Response<pb::Episode>, Status> {
    match result {
        Ok(state) => Ok(Response::new(episode_to_pb(referral_id, &state))),
        Err(r) => Err(rejection_status(r)),
    }
}

#[tonic::async_trait]
impl AssessmentService for AssessmentGrpc {
    async fn publish_slots(
        &self,
        request: Request<pb::PublishSlotsRequest>,
    ) -> Result<Response<pb::PublishSlotsResponse>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        if body.slots.is_empty() {
            v.add("slots", "at least one slot is required");
        }
        let slots: Vec<Option<Slot>> = body
            .slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| slot_from_pb(&mut v, &format!("slots[{i}]"), s))
            .collect();
        let slots = v.finish(slots.into_iter().collect::<Option<Vec<_>>>())?;
        match self.assessment.publish_slots(slots).await? {
            Ok(ids) => Ok(Response::new(pb::PublishSlotsResponse {
                slot_ids: ids.iter().map(Uuid::to_string).collect(),
            })),
            Err(r) => Err(rejection_status(r)),
        }
    }

    async fn list_worklist(
        &self,
        request: Request<pb::ListWorklistRequest>,
    ) -> Result<Response<pb::ListWorklistResponse>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let pathway = match body.pathway.as_deref() {
            Some(p) => match Pathway::parse(p) {
                Ok(p) => Some(Some(p)),
                Err(e) => {
                    v.add("pathway", e.to_string());
                    None
                }
            },
            None => Some(None),
        };
        let pathway = v.finish(pathway)?;
        Ok(Response::new(pb::ListWorklistResponse {
            entries: self
                .assessment
                .worklist(pathway)
                .await?
                .iter()
                .map(entry_to_pb)
                .collect(),
        }))
    }

    async fn book_assessment(
        &self,
        request: Request<pb::BookAssessmentRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &body.referral_id);
        let slot_id = v.uuid("slot_id", &body.slot_id);
        let (referral_id, slot_id) = v.finish(referral_id.zip(slot_id))?;
        answer(
            referral_id,
            self.assessment.book(referral_id, slot_id).await?,
        )
    }

    async fn reschedule_assessment(
        &self,
        request: Request<pb::RescheduleAssessmentRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &body.referral_id);
        let slot_id = v.uuid("new_slot_id", &body.new_slot_id);
        let by = v.code::<Party>("requested_by", &body.requested_by, "patient, service");
        let (referral_id, (slot_id, by)) = v.finish(referral_id.zip(slot_id.zip(by)))?;
        answer(
            referral_id,
            self.assessment
                .reschedule(referral_id, slot_id, by, body.reason)
                .await?,
        )
    }

    async fn cancel_assessment(
        &self,
        request: Request<pb::CancelAssessmentRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &body.referral_id);
        let by = v.code::<Party>("cancelled_by", &body.cancelled_by, "patient, service");
        v.non_empty("reason", &body.reason);
        let (referral_id, by) = v.finish(referral_id.zip(by))?;
        answer(
            referral_id,
            self.assessment
                .cancel(referral_id, by, body.reason, body.end_episode)
                .await?,
        )
    }

    async fn record_missed_appointment(
        &self,
        request: Request<pb::RecordMissedAppointmentRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &body.referral_id);
        let slot_id = v.uuid("slot_id", &body.slot_id);
        let (referral_id, slot_id) = v.finish(referral_id.zip(slot_id))?;
        answer(
            referral_id,
            self.assessment.record_missed(referral_id, slot_id).await?,
        )
    }

    async fn complete_assessment(
        &self,
        request: Request<pb::CompleteAssessmentRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &body.referral_id);
        v.non_empty("findings_summary", &body.findings_summary);
        let decision_aid = match body.decision_aid.as_deref() {
            Some(d) => v
                .code(
                    "decision_aid",
                    d,
                    "hip-osteoarthritis, knee-osteoarthritis, rheumatoid-arthritis",
                )
                .map(Some),
            None => Some(None),
        };
        let distress = v.code(
            "psychological_distress",
            &body.psychological_distress,
            "not-screened, negative, positive",
        );
        let smoking = match body.smoking_status.as_deref() {
            Some(s) => v
                .code("smoking_status", s, "never, former, current")
                .map(Some),
            None => Some(None),
        };
        if let Some(bmi) = body.bmi
            && !(bmi.is_finite() && bmi > 0.0)
        {
            v.add("bmi", "must be a positive number");
        }
        if body.outcomes.is_empty() {
            v.add("outcomes", "at least one outcome is required");
        }
        let outcomes: Option<Vec<Outcome>> = body
            .outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| outcome_from_pb(&mut v, &format!("outcomes[{i}]"), o))
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        let parsed = (|| {
            Some((
                referral_id?,
                AssessmentRecord {
                    findings_summary: body.findings_summary,
                    shared_decision_made: body.shared_decision_made,
                    decision_aid: decision_aid?,
                    work_discussed: body.work_discussed,
                    fit_note_issued: body.fit_note_issued,
                    psychological_distress: distress?,
                    bmi: body.bmi,
                    smoking_status: smoking?,
                    outcomes: outcomes?,
                },
            ))
        })();
        let (referral_id, record) = v.finish(parsed)?;
        answer(
            referral_id,
            self.assessment.complete(referral_id, record).await?,
        )
    }

    async fn discharge_episode(
        &self,
        request: Request<pb::DischargeEpisodeRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let body = request.into_inner();
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &body.referral_id);
        let reason = v.code::<DischargeReason>(
            "reason",
            &body.reason,
            "assessment-outcome, did-not-attend, cancelled",
        );
        let (referral_id, reason) = v.finish(referral_id.zip(reason))?;
        answer(
            referral_id,
            self.assessment
                .discharge(referral_id, reason, body.notify_referrer)
                .await?,
        )
    }

    async fn get_episode(
        &self,
        request: Request<pb::GetEpisodeRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let mut v = Violations::default();
        let referral_id = v.uuid("referral_id", &request.get_ref().referral_id);
        let referral_id = v.finish(referral_id)?;
        match self.assessment.get(referral_id).await? {
            Some(state) => Ok(Response::new(episode_to_pb(referral_id, &state))),
            None => Err(Status::not_found(format!(
                "no assessment episode for referral {referral_id}"
            ))),
        }
    }
}
