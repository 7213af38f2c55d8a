//! The scheduling application service: reads an aggregate's stream, asks the
//! domain for new events, and appends them with the stream version it read.
//!
//! Every append is optimistic: a writer that lost a race re-reads the
//! stream and decides again, up to [`Policy::max_attempts`] times. Two
//! bookings racing for the last place in a class therefore never both
//! succeed: the loser re-reads, sees the class full, and is refused.
//!
//! A booking touches two streams (the class or slot, then the episode).
//! The place is taken first; if the episode then refuses the booking, the
//! place is released again.
//!
//! The waiting list is a projection on disk ([`WaitingList`]), resumed
//! from its checkpoint at start-up and following the log. Nothing here
//! holds the list in memory: a query reads it, after waiting until the
//! projection has applied this instance's last append (read-your-writes).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, decode, new_event};
use mskflow_events::scheduling::{
    CancelledBy, DayOfWeek, DischargeReason, PatientWaitlisted, Place, Programme, SchedulingEvent,
    VenueRegistered,
};
use mskflow_events::types::ContactMode;
use mskflow_projection::{CatchUp, FollowTask, Projector};
use uuid::Uuid;

use crate::Error;
use crate::domain::{
    Aggregate, ClassCommand, ClassSpec, ClassState, DomainError, EpisodeCommand, EpisodeState,
    EpisodeStatus, PlaceInfo, Policy, SlotCommand, SlotState, VenueCommand, VenueState,
};
use crate::waiting::{self, WaitingList};

/// How long a query waits for the waiting list to apply this instance's
/// own appends.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream of a venue.
pub fn venue_stream(venue_id: &str) -> String {
    format!("venue-{venue_id}")
}

/// The stream of a class and its enrolments.
pub fn class_stream(class_id: Uuid) -> String {
    format!("class-{class_id}")
}

/// The stream of a 1:1 slot.
pub fn slot_stream(slot_id: Uuid) -> String {
    format!("rehab-slot-{slot_id}")
}

/// The stream of a patient's rehab episode.
pub fn episode_stream(referral_id: Uuid) -> String {
    format!("rehab-{referral_id}")
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A request refused for a business reason (nothing was appended, or what
/// was appended was undone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The domain refused it; see each [`DomainError`] variant for its code.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The stream kept changing under the request. gRPC `ABORTED`; HTTP 409
    /// OperationOutcome `conflict`. The caller may retry.
    #[error("{stream_id} changed {attempts} times while this request ran: retry")]
    Contended { stream_id: String, attempts: u32 },
}

/// `Ok(Ok(_))` done; `Ok(Err(_))` refused for a business reason; `Err(_)`
/// an infrastructure failure.
pub type Outcome<T> = Result<Result<T, Rejection>, Error>;

/// Which waiting patients to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitingFilter {
    pub programme: Option<Programme>,
    /// Only patients this class or slot would suit (programme and choices).
    pub place: Option<Place>,
}

/// How to publish a 1:1 slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpec {
    pub slot_id: Uuid,
    pub clinician: String,
    pub venue_id: String,
    pub starts_at: chrono::NaiveDateTime,
    pub ends_at: chrono::NaiveDateTime,
    pub mode: ContactMode,
}

/// The scheduling application service.
#[derive(Debug)]
pub struct Scheduling {
    log: Arc<dyn EventLog>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    /// The waiting list on disk, following the log.
    waiting: Projector<WaitingList>,
    _follow: FollowTask,
    /// What the waiting list's catch-up at start-up did.
    catch_up: CatchUp,
    /// The log position of this instance's last append: queries wait until
    /// the waiting list has applied it.
    written: AtomicU64,
}

impl Scheduling {
    /// Open the service over a log. The waiting list resumes from its
    /// stored checkpoint in `projections` (or is rebuilt by replay when it
    /// has none that fits this log) and then follows the log.
    pub async fn open(
        log: Arc<dyn EventLog>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        projections: &mskflow_projection::Options,
    ) -> Result<Self, Error> {
        let (waiting, following, catch_up) =
            Projector::open(&log, projections, WaitingList).await?;
        tracing::info!(
            events = catch_up.events,
            applied = catch_up.applied,
            ms = catch_up.elapsed.as_millis() as u64,
            "rehab waiting list ready"
        );
        let follow = waiting.spawn(following);
        Ok(Self {
            log,
            policy,
            clock,
            waiting,
            _follow: follow,
            catch_up,
            written: AtomicU64::new(0),
        })
    }

    /// What the waiting list's catch-up with the log did at start-up
    /// (events read after its checkpoint, or from the first event when it
    /// was rebuilt).
    pub fn catch_up(&self) -> &CatchUp {
        &self.catch_up
    }

    /// Wait until the waiting list has applied this instance's appends.
    async fn caught_up(&self) -> Result<(), Error> {
        let position = self.written.load(Ordering::Acquire);
        if self.waiting.applied() >= position
            || self
                .waiting
                .wait_for(position, READ_YOUR_WRITES_TIMEOUT)
                .await
        {
            Ok(())
        } else {
            Err(Error::Behind { position })
        }
    }

    /// Every row of the stored waiting list, sorted (once it has applied
    /// this instance's appends).
    pub async fn waiting_list_dump(&self) -> Result<waiting::Dump, Error> {
        self.caught_up().await?;
        Ok(self.waiting.read(waiting::dump).await?)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The event log this service writes to.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Read and fold one aggregate's stream.
    async fn load<A: Aggregate>(&self, stream_id: &str) -> Result<A, Error> {
        let envelopes = self.log.read_stream(stream_id, 1).await?;
        let mut state = A::default();
        for envelope in &envelopes {
            if !SchedulingEvent::TYPES.contains(&envelope.event_type.as_str()) {
                continue;
            }
            let event =
                decode::<SchedulingEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?;
            state = state.apply(&event);
        }
        if let Some(last) = envelopes.last() {
            state.set_version(last.sequence);
        }
        Ok(state)
    }

    /// Decide and append on one stream with optimistic concurrency, retrying
    /// a bounded number of times when another writer got there first.
    async fn execute<A: Aggregate>(
        &self,
        stream_id: &str,
        correlation_id: Uuid,
        decide: impl Fn(&A) -> Result<Vec<SchedulingEvent>, DomainError>,
    ) -> Outcome<(A, Vec<SchedulingEvent>)> {
        let attempts = self.policy.max_attempts.max(1);
        for attempt in 1..=attempts {
            let state = self.load::<A>(stream_id).await?;
            let events = match decide(&state) {
                Ok(events) => events,
                Err(e) => return Ok(Err(e.into())),
            };
            if events.is_empty() {
                return Ok(Ok((state, events)));
            }
            let now = self.clock.now();
            let new_events = events
                .iter()
                .map(|e| {
                    new_event(e, mskflow_events::SCHEMA_VERSION, now).map_err(|source| {
                        Error::Encode {
                            event_type: e.event_type(),
                            reason: crate::json_error_reason(&source),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            // The events carry the caller's trace, so consumers continue it.
            let (traceparent, tracestate) = mskflow_telemetry::current_trace_context();
            let metadata = Metadata {
                causation_id: None,
                correlation_id,
                traceparent,
                tracestate,
            };
            match self
                .log
                .append(
                    stream_id,
                    ExpectedVersion::Exact(state.version()),
                    new_events,
                    &metadata,
                )
                .await
            {
                Ok(appended) => {
                    self.written.fetch_max(appended.position, Ordering::AcqRel);
                    let mut next = events.iter().fold(state, A::apply);
                    next.set_version(appended.version);
                    return Ok(Ok((next, events)));
                }
                Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                    tracing::debug!(stream_id, attempt, "lost an append race; re-reading");
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(stream_id, attempts, "gave up after repeated append races");
        Ok(Err(Rejection::Contended {
            stream_id: stream_id.to_owned(),
            attempts,
        }))
    }

    /// Run an episode command and keep the waiting list in step.
    async fn on_episode(
        &self,
        referral_id: Uuid,
        decide: impl Fn(&EpisodeState) -> Result<Vec<SchedulingEvent>, DomainError>,
    ) -> Outcome<(EpisodeState, Vec<SchedulingEvent>)> {
        let result = self
            .execute::<EpisodeState>(&episode_stream(referral_id), referral_id, |s| decide(s))
            .await?;
        if let Ok((state, events)) = &result {
            for event in events {
                tracing::info!(
                    %referral_id,
                    event_type = event.event_type(),
                    status = state.status.map_or("", EpisodeStatus::code),
                    "rehab episode changed"
                );
            }
        }
        Ok(result)
    }

    // ------------------------------------------------------------ capacity

    pub async fn register_venue(&self, venue_id: String, name: String) -> Outcome<VenueRegistered> {
        let stream = venue_stream(&venue_id);
        let cmd = VenueCommand::Register { venue_id, name };
        Ok(self
            .execute::<VenueState>(&stream, Uuid::new_v4(), |s| s.handle(cmd.clone()))
            .await?
            .and_then(|(state, _)| {
                state.venue.ok_or_else(|| {
                    Rejection::Domain(DomainError::NotFound {
                        what: "venue",
                        id: stream.clone(),
                    })
                })
            }))
    }

    pub async fn venue(&self, venue_id: &str) -> Result<Option<VenueRegistered>, Error> {
        Ok(self
            .load::<VenueState>(&venue_stream(venue_id))
            .await?
            .venue)
    }

    async fn require_venue(&self, venue_id: &str) -> Result<Result<(), Rejection>, Error> {
        Ok(match self.venue(venue_id).await? {
            Some(_) => Ok(()),
            None => Err(DomainError::NotFound {
                what: "venue",
                id: venue_id.to_owned(),
            }
            .into()),
        })
    }

    /// Schedule a class at a registered venue.
    pub async fn schedule_class(&self, spec: ClassSpec) -> Outcome<ClassState> {
        if let Err(r) = self.require_venue(&spec.venue_id).await? {
            return Ok(Err(r));
        }
        let stream = class_stream(spec.class_id);
        let policy = &self.policy;
        let cmd = ClassCommand::Schedule(spec);
        let result = self
            .execute::<ClassState>(&stream, Uuid::new_v4(), |s| s.handle(cmd.clone(), policy))
            .await?;
        if let Ok((state, _)) = &result
            && let Some(c) = &state.class
        {
            tracing::info!(
                class_id = %c.class_id,
                programme = %c.programme,
                venue_id = c.venue_id,
                capacity = c.capacity,
                sessions = c.session_dates.len(),
                "class scheduled"
            );
        }
        Ok(result.map(|(state, _)| state))
    }

    /// Publish a 1:1 slot at a registered venue.
    pub async fn publish_slot(&self, spec: SlotSpec) -> Outcome<SlotState> {
        if let Err(r) = self.require_venue(&spec.venue_id).await? {
            return Ok(Err(r));
        }
        let stream = slot_stream(spec.slot_id);
        let cmd = SlotCommand::Publish {
            slot_id: spec.slot_id,
            clinician: spec.clinician,
            venue_id: spec.venue_id,
            starts_at: spec.starts_at,
            ends_at: spec.ends_at,
            mode: spec.mode,
        };
        Ok(self
            .execute::<SlotState>(&stream, Uuid::new_v4(), |s| s.handle(cmd.clone()))
            .await?
            .map(|(state, _)| state))
    }

    pub async fn class(&self, class_id: Uuid) -> Result<Option<ClassState>, Error> {
        let state = self.load::<ClassState>(&class_stream(class_id)).await?;
        Ok(state.class.is_some().then_some(state))
    }

    pub async fn slot(&self, slot_id: Uuid) -> Result<Option<SlotState>, Error> {
        let state = self.load::<SlotState>(&slot_stream(slot_id)).await?;
        Ok(state.slot.is_some().then_some(state))
    }

    /// What an episode needs to know about a place.
    pub async fn place_info(&self, place: Place) -> Outcome<PlaceInfo> {
        Ok(match place {
            Place::Class { class_id } => match self.class(class_id).await? {
                Some(state) => {
                    let session_starts = state.session_starts();
                    match state.class {
                        Some(c) => Ok(PlaceInfo {
                            place,
                            programme: c.programme,
                            venue_id: c.venue_id,
                            days: c.days,
                            mode: ContactMode::FaceToFace,
                            session_starts,
                        }),
                        None => Err(not_found("class", class_id)),
                    }
                }
                None => Err(not_found("class", class_id)),
            },
            Place::Slot { slot_id } => match self.slot(slot_id).await?.and_then(|s| s.slot) {
                Some(s) => Ok(PlaceInfo {
                    place,
                    programme: Programme::OneToOne,
                    venue_id: s.venue_id,
                    days: vec![DayOfWeek::of(s.starts_at.date())],
                    mode: s.mode,
                    session_starts: vec![s.starts_at],
                }),
                None => Err(not_found("slot", slot_id)),
            },
        })
    }

    // ------------------------------------------------------------ waiting list

    /// Put a patient on the rehab waiting list.
    pub async fn add_to_waiting_list(
        &self,
        waitlisted: PatientWaitlisted,
    ) -> Outcome<EpisodeState> {
        let referral_id = waitlisted.referral_id;
        let cmd = EpisodeCommand::Waitlist(waitlisted);
        Ok(self
            .on_episode(referral_id, |s| s.handle(cmd.clone(), &self.policy))
            .await?
            .map(|(state, _)| state))
    }

    /// Waiting patients, by clinical priority then time waited (longest
    /// first).
    pub async fn waiting_list(&self, filter: WaitingFilter) -> Outcome<Vec<PatientWaitlisted>> {
        let info = match filter.place {
            Some(place) => match self.place_info(place).await? {
                Ok(info) => Some(info),
                Err(r) => return Ok(Err(r)),
            },
            None => None,
        };
        // A place narrows the list to its programme: read only that part.
        let programme = match (&info, filter.programme) {
            (Some(i), Some(p)) if i.programme != p => return Ok(Ok(Vec::new())),
            (Some(i), _) => Some(i.programme),
            (None, p) => p,
        };
        self.caught_up().await?;
        let mut list = self
            .waiting
            .read(move |conn| waiting::waiting(conn, programme))
            .await?;
        if let Some(i) = &info {
            list.retain(|w| w.choices.accepts(&i.venue_id, &i.days, i.mode));
        }
        Ok(Ok(list))
    }

    /// Offer a class or slot to a waiting patient.
    pub async fn make_offer(&self, referral_id: Uuid, place: Place) -> Outcome<EpisodeState> {
        let info = match self.place_info(place).await? {
            Ok(info) => info,
            Err(r) => return Ok(Err(r)),
        };
        let offer_id = Uuid::new_v4();
        let cmd = EpisodeCommand::MakeOffer {
            offer_id,
            place: info,
        };
        Ok(self
            .on_episode(referral_id, |s| s.handle(cmd.clone(), &self.policy))
            .await?
            .map(|(state, _)| state))
    }

    /// Record the patient's answer to an offer. A decline returns the patient
    /// to the list with the original wait.
    pub async fn respond_to_offer(
        &self,
        referral_id: Uuid,
        offer_id: Uuid,
        accept: bool,
    ) -> Outcome<EpisodeState> {
        let cmd = EpisodeCommand::RespondToOffer { offer_id, accept };
        Ok(self
            .on_episode(referral_id, |s| s.handle(cmd.clone(), &self.policy))
            .await?
            .map(|(state, _)| state))
    }

    // ------------------------------------------------------------ booking

    /// Enrol a patient in a class course.
    pub async fn book_class(&self, referral_id: Uuid, class_id: Uuid) -> Outcome<EpisodeState> {
        self.book(referral_id, Place::Class { class_id }).await
    }

    /// Book a patient into a 1:1 slot.
    pub async fn book_slot(&self, referral_id: Uuid, slot_id: Uuid) -> Outcome<EpisodeState> {
        self.book(referral_id, Place::Slot { slot_id }).await
    }

    async fn book(&self, referral_id: Uuid, place: Place) -> Outcome<EpisodeState> {
        let info = match self.place_info(place).await? {
            Ok(info) => info,
            Err(r) => return Ok(Err(r)),
        };
        let book = EpisodeCommand::Book(info);
        // Ask the episode first, so a booking it would refuse takes no place.
        let episode = self
            .load::<EpisodeState>(&episode_stream(referral_id))
            .await?;
        if let Err(e) = episode.handle(book.clone(), &self.policy) {
            return Ok(Err(e.into()));
        }
        // Take the place: the contended step. `AlreadyBooked` means the
        // place was taken for this patient before (by a concurrent identical
        // request, or a booking whose episode append never happened); the
        // episode decides below.
        match self.take(referral_id, place).await? {
            Ok(()) | Err(Rejection::Domain(DomainError::AlreadyBooked)) => {}
            Err(r) => {
                tracing::info!(%referral_id, reason = %r, "booking refused");
                return Ok(Err(r));
            }
        }
        let booked = self
            .on_episode(referral_id, |s| s.handle(book.clone(), &self.policy))
            .await;
        match booked {
            Ok(Ok((state, _))) => Ok(Ok(state)),
            other => {
                // The episode refused (it changed under us) or the store
                // failed. The episode is the authority: unless it holds the
                // place (a concurrent identical request booked it), give the
                // place back.
                let held = matches!(
                    self.episode(referral_id).await,
                    Ok(Some(e)) if e.status == Some(EpisodeStatus::Booked)
                        && e.held_places().contains(&place)
                );
                if !held {
                    self.release(referral_id, place).await;
                }
                other.map(|r| r.map(|(state, _)| state))
            }
        }
    }

    async fn take(&self, referral_id: Uuid, place: Place) -> Outcome<()> {
        Ok(match place {
            Place::Class { class_id } => {
                let policy = &self.policy;
                let cmd = ClassCommand::Enrol {
                    class_id,
                    referral_id,
                };
                self.execute::<ClassState>(&class_stream(class_id), referral_id, |s| {
                    s.handle(cmd.clone(), policy)
                })
                .await?
                .map(|_| ())
            }
            Place::Slot { slot_id } => {
                let cmd = SlotCommand::Book {
                    slot_id,
                    referral_id,
                };
                self.execute::<SlotState>(&slot_stream(slot_id), referral_id, |s| {
                    s.handle(cmd.clone())
                })
                .await?
                .map(|_| ())
            }
        })
    }

    /// Give a place back. Best effort: a failure is logged (the place stays
    /// taken until released by hand), never returned.
    async fn release(&self, referral_id: Uuid, place: Place) {
        let result = match place {
            Place::Class { class_id } => {
                let policy = &self.policy;
                let cmd = ClassCommand::Release {
                    class_id,
                    referral_id,
                };
                self.execute::<ClassState>(&class_stream(class_id), referral_id, |s| {
                    s.handle(cmd.clone(), policy)
                })
                .await
                .map(|r| r.map(|_| ()))
            }
            Place::Slot { slot_id } => {
                let cmd = SlotCommand::Release {
                    slot_id,
                    referral_id,
                };
                self.execute::<SlotState>(&slot_stream(slot_id), referral_id, |s| {
                    s.handle(cmd.clone())
                })
                .await
                .map(|r| r.map(|_| ()))
            }
        };
        match result {
            Ok(Ok(()) | Err(Rejection::Domain(DomainError::NotBooked))) => {}
            Ok(Err(r)) => tracing::warn!(%referral_id, ?place, reason = %r, "place not released"),
            Err(e) => tracing::error!(%referral_id, ?place, error = %e, "place not released"),
        }
    }

    // ------------------------------------------------------------ the course

    /// Record that the patient attended or did not attend a session. Under
    /// the DNA policy, the last allowed miss ends the episode.
    pub async fn record_attendance(
        &self,
        referral_id: Uuid,
        session_no: u32,
        attended: bool,
    ) -> Outcome<EpisodeState> {
        let cmd = EpisodeCommand::RecordAttendance {
            session_no,
            attended,
        };
        self.course_step(referral_id, cmd).await
    }

    /// Cancel one session. Neither side's cancellation counts as a DNA; a
    /// cancelled 1:1 slot is freed so the patient can be re-booked.
    pub async fn cancel_session(
        &self,
        referral_id: Uuid,
        session_no: u32,
        by: CancelledBy,
    ) -> Outcome<EpisodeState> {
        self.course_step(
            referral_id,
            EpisodeCommand::CancelSession { session_no, by },
        )
        .await
    }

    /// End the episode before the course is over.
    pub async fn discharge(
        &self,
        referral_id: Uuid,
        reason: DischargeReason,
    ) -> Outcome<EpisodeState> {
        self.course_step(referral_id, EpisodeCommand::Discharge { reason })
            .await
    }

    async fn course_step(&self, referral_id: Uuid, cmd: EpisodeCommand) -> Outcome<EpisodeState> {
        let (state, events) = match self
            .on_episode(referral_id, |s| s.handle(cmd.clone(), &self.policy))
            .await?
        {
            Ok(done) => done,
            Err(r) => return Ok(Err(r)),
        };
        for event in &events {
            match event {
                SchedulingEvent::RehabDischarged(d) => {
                    if d.notify_referrer {
                        tracing::info!(%referral_id, reason = %d.reason, "referrer to be told of rehab discharge");
                    }
                    for place in state.held_places() {
                        self.release(referral_id, place).await;
                    }
                }
                SchedulingEvent::SessionCancelled(c) => {
                    if let Some(s) = state.sessions.get(&c.session_no)
                        && let Place::Slot { .. } = s.place
                    {
                        self.release(referral_id, s.place).await;
                    }
                }
                _ => {}
            }
        }
        Ok(Ok(state))
    }

    /// The current state of an episode, or `None` if the patient was never
    /// put on the rehab waiting list.
    pub async fn episode(&self, referral_id: Uuid) -> Result<Option<EpisodeState>, Error> {
        let state = self
            .load::<EpisodeState>(&episode_stream(referral_id))
            .await?;
        Ok(state.status.is_some().then_some(state))
    }
}

fn not_found(what: &'static str, id: Uuid) -> Rejection {
    Rejection::Domain(DomainError::NotFound {
        what,
        id: id.to_string(),
    })
}
