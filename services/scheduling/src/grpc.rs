//! The `mskflow.scheduling.v1.SchedulingService` gRPC server.
//!
//! Every request is parsed in full before anything is done; all malformed
//! fields are reported together as `BadRequest` field violations.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use mskflow_events::scheduling::{
    CancelledBy, DayOfWeek, DischargeReason, PatientChoices, PatientWaitlisted, Place, Programme,
};
use mskflow_events::types::{ContactMode, FcpPriority, Pathway};
use mskflow_proto::convert::{FieldViolation, Invalid};
use mskflow_proto::scheduling::v1 as pb;
use mskflow_proto::scheduling::v1::scheduling_service_server::SchedulingService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::Error;
use crate::domain::{ClassSpec, ClassState, DomainError, EpisodeState, SlotState};
use crate::service::{Rejection, Scheduling, SlotSpec, WaitingFilter};

/// gRPC adapter over [`Scheduling`].
#[derive(Debug, Clone)]
pub struct SchedulingGrpc {
    scheduling: Arc<Scheduling>,
}

impl SchedulingGrpc {
    pub fn new(scheduling: Arc<Scheduling>) -> Self {
        Self { scheduling }
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
            Error::WaitingList(_) | Error::Behind { .. } => {
                Status::unavailable(format!("waiting list unavailable, retry: {e}"))
            }
            _ => Status::internal(format!("scheduling failed: {e}")),
        }
    }
}

/// How refusals reach the caller (see each [`DomainError`] variant).
impl From<Rejection> for Status {
    fn from(r: Rejection) -> Self {
        let message = r.to_string();
        match r {
            Rejection::Contended { .. } => Status::aborted(message),
            Rejection::Domain(e) => match e {
                DomainError::AlreadyExists { .. } | DomainError::AlreadyBooked => {
                    Status::already_exists(message)
                }
                DomainError::NotFound { .. } | DomainError::UnknownSession { .. } => {
                    Status::not_found(message)
                }
                DomainError::Invalid { field, reason } => Invalid(vec![FieldViolation {
                    field: field.to_owned(),
                    description: reason,
                }])
                .into_status(),
                DomainError::ClassFull { .. } | DomainError::SlotTaken { .. } => {
                    Status::resource_exhausted(message)
                }
                DomainError::NotBooked
                | DomainError::WrongStatus { .. }
                | DomainError::ChoiceNotMet
                | DomainError::ProgrammeMismatch { .. }
                | DomainError::OfferMismatch(_)
                | DomainError::SessionAlreadyRecorded { .. }
                | DomainError::CourseFullyBooked => Status::failed_precondition(message),
            },
        }
    }
}

/// Collects every malformed field of a request.
#[derive(Debug, Default)]
struct Fields(Vec<FieldViolation>);

impl Fields {
    fn bad(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        });
    }

    fn parse<T, E>(
        &mut self,
        field: &str,
        value: &str,
        parse: impl Fn(&str) -> Result<T, E>,
        what: &str,
    ) -> Option<T> {
        match parse(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.bad(field, what.to_owned());
                None
            }
        }
    }

    fn uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        self.parse(field, value, Uuid::parse_str, "must be a UUID")
    }

    /// A UUID, or a new one when empty.
    fn uuid_or_new(&mut self, field: &str, value: &str) -> Option<Uuid> {
        if value.is_empty() {
            Some(Uuid::new_v4())
        } else {
            self.uuid(field, value)
        }
    }

    fn code<T>(
        &mut self,
        field: &str,
        value: &str,
        parse: impl Fn(&str) -> Result<T, mskflow_events::types::Error>,
        all: &[&str],
    ) -> Option<T> {
        match parse(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.bad(field, format!("must be one of: {}", all.join(", ")));
                None
            }
        }
    }

    fn codes<T>(
        &mut self,
        field: &str,
        values: &[String],
        parse: impl Fn(&str) -> Result<T, mskflow_events::types::Error>,
        all: &[&str],
    ) -> Vec<T> {
        values
            .iter()
            .filter_map(|v| self.code(field, v, &parse, all))
            .collect()
    }

    fn text(&mut self, field: &str, value: &str, max: usize) -> Option<String> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            self.bad(field, "is required");
            None
        } else if trimmed.chars().count() > max {
            self.bad(field, format!("must be at most {max} characters"));
            None
        } else {
            Some(trimmed.to_owned())
        }
    }

    fn venue_id(&mut self, field: &str, value: &str) -> Option<String> {
        let ok = (1..=64).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Some(value.to_owned())
        } else {
            self.bad(field, "must be 1 to 64 lower-case letters, digits or '-'");
            None
        }
    }

    fn date(&mut self, field: &str, value: &str) -> Option<NaiveDate> {
        self.parse(
            field,
            value,
            |v| NaiveDate::parse_from_str(v, "%Y-%m-%d"),
            "must be a date YYYY-MM-DD",
        )
    }

    fn time(&mut self, field: &str, value: &str) -> Option<NaiveTime> {
        self.parse(
            field,
            value,
            |v| {
                NaiveTime::parse_from_str(v, "%H:%M")
                    .or_else(|_| NaiveTime::parse_from_str(v, "%H:%M:%S"))
            },
            "must be a time HH:MM",
        )
    }

    fn local_datetime(&mut self, field: &str, value: &str) -> Option<NaiveDateTime> {
        self.parse(
            field,
            value,
            |v| {
                NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S")
                    .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M"))
            },
            "must be a local date-time YYYY-MM-DDTHH:MM[:SS]",
        )
    }

    fn instant(&mut self, field: &str, value: &str) -> Option<DateTime<Utc>> {
        self.parse(
            field,
            value,
            |v| DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)),
            "must be an RFC 3339 date-time",
        )
    }

    fn place(&mut self, field: &str, place: Option<&pb::Place>) -> Option<Place> {
        match place.and_then(|p| p.place.as_ref()) {
            Some(pb::place::Place::ClassId(id)) => self
                .uuid(&format!("{field}.class_id"), id)
                .map(|class_id| Place::Class { class_id }),
            Some(pb::place::Place::SlotId(id)) => self
                .uuid(&format!("{field}.slot_id"), id)
                .map(|slot_id| Place::Slot { slot_id }),
            None => {
                self.bad(field, "a class_id or slot_id is required");
                None
            }
        }
    }

    /// `Ok(())` if nothing was malformed, else the `INVALID_ARGUMENT` status.
    fn check(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0).into_status())
        }
    }
}

fn codes_of<T: Copy>(all: &[T], code: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|c| code(*c)).collect()
}

fn programmes() -> Vec<&'static str> {
    codes_of(Programme::ALL, Programme::code)
}
fn days() -> Vec<&'static str> {
    codes_of(DayOfWeek::ALL, DayOfWeek::code)
}
fn modes() -> Vec<&'static str> {
    codes_of(ContactMode::ALL, ContactMode::code)
}

/// Unwrap a parsed value once [`Fields::check`] passed.
fn parsed<T>(value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| Status::internal("request parsing lost a field"))
}

fn outcome<T, U>(
    result: Result<Result<T, Rejection>, Error>,
    to_pb: impl FnOnce(T) -> U,
) -> Result<Response<U>, Status> {
    match result? {
        Ok(value) => Ok(Response::new(to_pb(value))),
        Err(r) => Err(r.into()),
    }
}

fn local(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn choices_to_pb(c: &PatientChoices) -> pb::Choices {
    pb::Choices {
        venue_ids: c.venue_ids.clone(),
        days: c.days.iter().map(|d| d.code().to_owned()).collect(),
        modes: c.modes.iter().map(|m| m.code().to_owned()).collect(),
    }
}

fn place_to_pb(place: Place) -> pb::Place {
    pb::Place {
        place: Some(match place {
            Place::Class { class_id } => pb::place::Place::ClassId(class_id.to_string()),
            Place::Slot { slot_id } => pb::place::Place::SlotId(slot_id.to_string()),
        }),
    }
}

/// The wire form of a class.
pub fn class_to_pb(state: &ClassState) -> pb::ClassState {
    let Some(c) = &state.class else {
        return pb::ClassState::default();
    };
    pb::ClassState {
        class_id: c.class_id.to_string(),
        programme: c.programme.code().to_owned(),
        venue_id: c.venue_id.clone(),
        days: c.days.iter().map(|d| d.code().to_owned()).collect(),
        start_time: c.start_time.format("%H:%M").to_string(),
        duration_minutes: c.duration_minutes,
        capacity: c.capacity,
        session_dates: c.session_dates.iter().map(ToString::to_string).collect(),
        enrolled: u32::try_from(state.enrolled.len()).unwrap_or(u32::MAX),
        places_left: state.places_left(),
        version: state.version,
    }
}

/// The wire form of a slot.
pub fn slot_to_pb(state: &SlotState) -> pb::Slot {
    let Some(s) = &state.slot else {
        return pb::Slot::default();
    };
    pb::Slot {
        slot_id: s.slot_id.to_string(),
        clinician: s.clinician.clone(),
        venue_id: s.venue_id.clone(),
        starts_at: local(s.starts_at),
        ends_at: local(s.ends_at),
        mode: s.mode.code().to_owned(),
        booked_by: state.booked_by.map(|r| r.to_string()).unwrap_or_default(),
    }
}

/// The wire form of an episode.
pub fn episode_to_pb(state: &EpisodeState) -> pb::Episode {
    let Some(w) = &state.waitlisted else {
        return pb::Episode::default();
    };
    pb::Episode {
        referral_id: w.referral_id.to_string(),
        status: state.status.map_or("", |s| s.code()).to_owned(),
        priority: w.priority.code().to_owned(),
        pathway: w.pathway.code().to_owned(),
        programme: w.programme.code().to_owned(),
        need_recorded_at: w.need_recorded_at.to_rfc3339(),
        choices: Some(choices_to_pb(&w.choices)),
        course_sessions: state.course_sessions,
        offer: state.offer.as_ref().map(|o| pb::Offer {
            offer_id: o.offer_id.to_string(),
            place: Some(place_to_pb(o.place)),
            first_session_at: local(o.first_session_at),
        }),
        sessions: state
            .sessions
            .values()
            .map(|s| pb::Session {
                session_no: s.session.session_no,
                starts_at: local(s.session.starts_at),
                venue_id: s.session.venue_id.clone(),
                mode: s.session.mode.code().to_owned(),
                status: s.status.code().to_owned(),
            })
            .collect(),
        attended: state.attended,
        missed: state.missed,
        cancelled: state.cancelled,
        discharge_reason: state.discharge.as_ref().map(|d| d.reason.code().to_owned()),
        notify_referrer: state.discharge.as_ref().is_some_and(|d| d.notify_referrer),
        version: state.version,
    }
}

fn waiting_to_pb(w: &PatientWaitlisted) -> pb::WaitingPatient {
    pb::WaitingPatient {
        referral_id: w.referral_id.to_string(),
        priority: w.priority.code().to_owned(),
        pathway: w.pathway.code().to_owned(),
        programme: w.programme.code().to_owned(),
        need_recorded_at: w.need_recorded_at.to_rfc3339(),
        choices: Some(choices_to_pb(&w.choices)),
    }
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

/// A server span for one call, continuing the caller's trace if the request
/// carries W3C trace context.
fn server_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let incoming = metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        // W3C trace context is 55 characters; anything far longer is not one.
        .filter(|v| v.len() <= 256);
    let span = tracing::info_span!(
        "scheduling.rpc",
        otel.name = format!("SchedulingService/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        trace_id = tracing::field::Empty,
    );
    mskflow_telemetry::set_remote_parent(&span, incoming, None);
    if let Some(id) = mskflow_telemetry::trace_id_of(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Run a call inside its span and count it (by method and status code).
async fn observe<T>(
    method: &'static str,
    span: tracing::Span,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = call.instrument(span).await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!("mskflow_grpc_requests_total", "method" => method, "code" => format!("{code:?}")).increment(1);
    metrics::histogram!("mskflow_grpc_request_duration_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
    result
}

#[tonic::async_trait]
impl SchedulingService for SchedulingGrpc {
    async fn register_venue(
        &self,
        request: Request<pb::RegisterVenueRequest>,
    ) -> Result<Response<pb::Venue>, Status> {
        let span = server_span("RegisterVenue", request.metadata());
        observe("RegisterVenue", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let venue_id = f.venue_id("venue_id", &body.venue_id);
            let name = f.text("name", &body.name, 200);
            f.check()?;
            outcome(
                self.scheduling
                    .register_venue(parsed(venue_id)?, parsed(name)?)
                    .await,
                |v| pb::Venue {
                    venue_id: v.venue_id,
                    name: v.name,
                },
            )
        })
        .await
    }

    async fn schedule_class(
        &self,
        request: Request<pb::ScheduleClassRequest>,
    ) -> Result<Response<pb::ClassState>, Status> {
        let span = server_span("ScheduleClass", request.metadata());
        observe("ScheduleClass", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let class_id = f.uuid_or_new("class_id", &body.class_id);
            let programme = f.code(
                "programme",
                &body.programme,
                Programme::parse,
                &programmes(),
            );
            let venue_id = f.venue_id("venue_id", &body.venue_id);
            let days_of_week = f.codes("days", &body.days, DayOfWeek::parse, &days());
            let start_time = f.time("start_time", &body.start_time);
            let start_date = f.date("start_date", &body.start_date);
            f.check()?;
            let spec = ClassSpec {
                class_id: parsed(class_id)?,
                programme: parsed(programme)?,
                venue_id: parsed(venue_id)?,
                days: days_of_week,
                start_time: parsed(start_time)?,
                duration_minutes: body.duration_minutes,
                capacity: nonzero(body.capacity),
                start_date: parsed(start_date)?,
                sessions: nonzero(body.sessions),
            };
            outcome(self.scheduling.schedule_class(spec).await, |s| {
                class_to_pb(&s)
            })
        })
        .await
    }

    async fn publish_slot(
        &self,
        request: Request<pb::PublishSlotRequest>,
    ) -> Result<Response<pb::Slot>, Status> {
        let span = server_span("PublishSlot", request.metadata());
        observe("PublishSlot", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let slot_id = f.uuid_or_new("slot_id", &body.slot_id);
            let clinician = f.text("clinician", &body.clinician, 64);
            let venue_id = f.venue_id("venue_id", &body.venue_id);
            let starts_at = f.local_datetime("starts_at", &body.starts_at);
            let ends_at = f.local_datetime("ends_at", &body.ends_at);
            let mode = f.code("mode", &body.mode, ContactMode::parse, &modes());
            f.check()?;
            let spec = SlotSpec {
                slot_id: parsed(slot_id)?,
                clinician: parsed(clinician)?,
                venue_id: parsed(venue_id)?,
                starts_at: parsed(starts_at)?,
                ends_at: parsed(ends_at)?,
                mode: parsed(mode)?,
            };
            outcome(self.scheduling.publish_slot(spec).await, |s| slot_to_pb(&s))
        })
        .await
    }

    async fn add_to_waiting_list(
        &self,
        request: Request<pb::AddToWaitingListRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("AddToWaitingList", request.metadata());
        observe("AddToWaitingList", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            let priority = f.code(
                "priority",
                &body.priority,
                FcpPriority::parse,
                &codes_of(FcpPriority::ALL, FcpPriority::code),
            );
            let pathway = f.code(
                "pathway",
                &body.pathway,
                Pathway::parse,
                &codes_of(Pathway::ALL, Pathway::code),
            );
            let programme = f.code(
                "programme",
                &body.programme,
                Programme::parse,
                &programmes(),
            );
            let need_recorded_at = f.instant("need_recorded_at", &body.need_recorded_at);
            let choices = body.choices.unwrap_or_default();
            for (i, v) in choices.venue_ids.iter().enumerate() {
                f.venue_id(&format!("choices.venue_ids[{i}]"), v);
            }
            let chosen_days = f.codes("choices.days", &choices.days, DayOfWeek::parse, &days());
            let chosen_modes = f.codes(
                "choices.modes",
                &choices.modes,
                ContactMode::parse,
                &modes(),
            );
            f.check()?;
            let programme = parsed(programme)?;
            let sessions = match (nonzero(body.sessions), programme) {
                (Some(n), _) => n,
                (None, Programme::OneToOne) => self.scheduling.policy().one_to_one_sessions,
                (None, p) => crate::domain::default_course_length(p),
            };
            let waitlisted = PatientWaitlisted {
                referral_id: parsed(referral_id)?,
                priority: parsed(priority)?,
                pathway: parsed(pathway)?,
                programme,
                sessions,
                need_recorded_at: parsed(need_recorded_at)?,
                choices: PatientChoices {
                    venue_ids: choices.venue_ids,
                    days: chosen_days,
                    modes: chosen_modes,
                },
            };
            outcome(self.scheduling.add_to_waiting_list(waitlisted).await, |s| {
                episode_to_pb(&s)
            })
        })
        .await
    }

    async fn list_waiting_list(
        &self,
        request: Request<pb::ListWaitingListRequest>,
    ) -> Result<Response<pb::ListWaitingListResponse>, Status> {
        let span = server_span("ListWaitingList", request.metadata());
        observe("ListWaitingList", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let programme = body
                .programme
                .as_deref()
                .and_then(|p| f.code("programme", p, Programme::parse, &programmes()));
            let class = body.class_id.as_deref().and_then(|c| f.uuid("class_id", c));
            let slot = body.slot_id.as_deref().and_then(|s| f.uuid("slot_id", s));
            if class.is_some() && slot.is_some() {
                f.bad("slot_id", "give a class_id or a slot_id, not both");
            }
            f.check()?;
            let place = class
                .map(|class_id| Place::Class { class_id })
                .or(slot.map(|slot_id| Place::Slot { slot_id }));
            outcome(
                self.scheduling
                    .waiting_list(WaitingFilter { programme, place })
                    .await,
                |list| pb::ListWaitingListResponse {
                    patients: list.iter().map(waiting_to_pb).collect(),
                },
            )
        })
        .await
    }

    async fn make_offer(
        &self,
        request: Request<pb::MakeOfferRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("MakeOffer", request.metadata());
        observe("MakeOffer", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            let place = f.place("place", body.place.as_ref());
            f.check()?;
            outcome(
                self.scheduling
                    .make_offer(parsed(referral_id)?, parsed(place)?)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn respond_to_offer(
        &self,
        request: Request<pb::RespondToOfferRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("RespondToOffer", request.metadata());
        observe("RespondToOffer", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            let offer_id = f.uuid("offer_id", &body.offer_id);
            f.check()?;
            outcome(
                self.scheduling
                    .respond_to_offer(parsed(referral_id)?, parsed(offer_id)?, body.accept)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn book_class(
        &self,
        request: Request<pb::BookClassRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("BookClass", request.metadata());
        observe("BookClass", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            let class_id = f.uuid("class_id", &body.class_id);
            f.check()?;
            outcome(
                self.scheduling
                    .book_class(parsed(referral_id)?, parsed(class_id)?)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn book_slot(
        &self,
        request: Request<pb::BookSlotRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("BookSlot", request.metadata());
        observe("BookSlot", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            let slot_id = f.uuid("slot_id", &body.slot_id);
            f.check()?;
            outcome(
                self.scheduling
                    .book_slot(parsed(referral_id)?, parsed(slot_id)?)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn record_attendance(
        &self,
        request: Request<pb::RecordAttendanceRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("RecordAttendance", request.metadata());
        observe("RecordAttendance", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            if body.session_no == 0 {
                f.bad("session_no", "sessions are numbered from 1");
            }
            f.check()?;
            outcome(
                self.scheduling
                    .record_attendance(parsed(referral_id)?, body.session_no, body.attended)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn cancel_session(
        &self,
        request: Request<pb::CancelSessionRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("CancelSession", request.metadata());
        observe("CancelSession", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            if body.session_no == 0 {
                f.bad("session_no", "sessions are numbered from 1");
            }
            let by = f.code(
                "by",
                &body.by,
                CancelledBy::parse,
                &codes_of(CancelledBy::ALL, CancelledBy::code),
            );
            f.check()?;
            outcome(
                self.scheduling
                    .cancel_session(parsed(referral_id)?, body.session_no, parsed(by)?)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn discharge(
        &self,
        request: Request<pb::DischargeRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("Discharge", request.metadata());
        observe("Discharge", span, async move {
            let body = request.into_inner();
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &body.referral_id);
            let reason = f.code(
                "reason",
                &body.reason,
                DischargeReason::parse,
                &codes_of(DischargeReason::ALL, DischargeReason::code),
            );
            f.check()?;
            outcome(
                self.scheduling
                    .discharge(parsed(referral_id)?, parsed(reason)?)
                    .await,
                |s| episode_to_pb(&s),
            )
        })
        .await
    }

    async fn get_episode(
        &self,
        request: Request<pb::GetEpisodeRequest>,
    ) -> Result<Response<pb::Episode>, Status> {
        let span = server_span("GetEpisode", request.metadata());
        observe("GetEpisode", span, async move {
            let mut f = Fields::default();
            let referral_id = f.uuid("referral_id", &request.get_ref().referral_id);
            f.check()?;
            let referral_id = parsed(referral_id)?;
            match self.scheduling.episode(referral_id).await? {
                Some(state) => Ok(Response::new(episode_to_pb(&state))),
                None => Err(Status::not_found(format!(
                    "no rehab episode for referral {referral_id}"
                ))),
            }
        })
        .await
    }

    async fn get_class(
        &self,
        request: Request<pb::GetClassRequest>,
    ) -> Result<Response<pb::ClassState>, Status> {
        let span = server_span("GetClass", request.metadata());
        observe("GetClass", span, async move {
            let mut f = Fields::default();
            let class_id = f.uuid("class_id", &request.get_ref().class_id);
            f.check()?;
            let class_id = parsed(class_id)?;
            match self.scheduling.class(class_id).await? {
                Some(state) => Ok(Response::new(class_to_pb(&state))),
                None => Err(Status::not_found(format!(
                    "class {class_id} does not exist"
                ))),
            }
        })
        .await
    }
}
