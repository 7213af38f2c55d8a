//! The assessment application service: reads streams, runs the domain,
//! appends durably, and answers queries from the read model on disk
//! ([`AssessmentView`]), which resumes from its checkpoint at start-up and
//! follows the log. A command waits until the read model has applied its
//! append (read-your-writes); nothing here holds every episode or slot in
//! memory.
//!
//! # Booking a slot
//!
//! A slot lives on its own stream (`fcp-slot-{slot_id}`) and an episode on
//! `assessment-{referral_id}`. Booking appends `FcpSlotBooked` (naming the
//! referral) to the slot stream with `ExpectedVersion::Exact`, then
//! `AssessmentBooked` to the episode stream with `ExpectedVersion::Exact`.
//! Two bookings racing for one slot both read the same slot version; the
//! store lets exactly one append win and the other gets
//! `WrongExpectedVersion` (reported as `ABORTED`).
//!
//! The two appends are not one transaction, so the slot stream is the
//! record of who holds a slot and the episode says which slot it uses. A
//! slot held by a referral whose episode neither has it booked nor used it
//! up (missed or assessed in it) is a *dangling hold*, and is released:
//!
//! - at once, when the episode append fails (release with
//!   `ExpectedVersion::Exact`, reason `booking-abandoned`);
//! - on the next start ([`Assessment::open`]), for holds left by a crash
//!   or a failed release between the two appends.
//!
//! Releasing rather than completing the booking keeps recovery to one rule
//! that needs no knowledge of what the caller meant: the patient is still
//! on the worklist (the episode never said booked), nobody was told of an
//! appointment, and the slot is free again. This assumes one assessment
//! service instance writes these streams (the embedded deployment).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mskflow_eventlog::{
    Appended, EventLog, ExpectedVersion, Metadata, NewEvent, decode, new_event,
};
use mskflow_events::assessment::{AssessmentEvent, Party, Slot, SlotEvent, SlotReleaseReason};
use mskflow_events::intake::IntakeEvent;
use mskflow_events::types::Pathway;
use mskflow_events::{NhsNumber, SCHEMA_VERSION};
use mskflow_projection::{CatchUp, FollowTask, Projector};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, AssessmentRecord, Command, DomainError, EpisodeState, Policy};
use crate::projection::{self, AssessmentView, EPISODE_PREFIX, SLOT_PREFIX, WorklistEntry};
use crate::slot::{self, SlotError, SlotState};

/// How long a write waits for the read model to see it.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream of one episode.
pub fn stream_id(referral_id: Uuid) -> String {
    format!("{EPISODE_PREFIX}{referral_id}")
}

/// The stream of one clinician slot.
pub fn slot_stream_id(slot_id: Uuid) -> String {
    format!("{SLOT_PREFIX}{slot_id}")
}

/// The intake stream of a referral (read for the patient's NHS number).
fn referral_stream_id(referral_id: Uuid) -> String {
    format!("referral-{referral_id}")
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

/// A command refused for a business reason (nothing was appended, or what
/// was appended has been undone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No episode for this referral. gRPC `NOT_FOUND`; HTTP 404 `not-found`.
    EpisodeNotFound { referral_id: Uuid },
    /// No such slot. gRPC `NOT_FOUND`; HTTP 404 `not-found`.
    SlotNotFound { slot_id: Uuid },
    /// The episode refuses the command. gRPC `FAILED_PRECONDITION`; HTTP 409
    /// `business-rule`.
    Domain(DomainError),
    /// The slot refuses (already held, already published). gRPC
    /// `FAILED_PRECONDITION`; HTTP 409 `conflict`.
    Slot { slot_id: Uuid, error: SlotError },
    /// A concurrent write won the race (the slot was just taken, or the
    /// episode moved on). gRPC `ABORTED`; HTTP 409 `conflict`. Re-read and
    /// retry.
    Conflict { stream_id: String },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::EpisodeNotFound { referral_id } => {
                write!(f, "no assessment episode for referral {referral_id}")
            }
            Rejection::SlotNotFound { slot_id } => write!(f, "slot {slot_id} is not published"),
            Rejection::Domain(e) => write!(f, "{e}"),
            Rejection::Slot { slot_id, error } => write!(f, "slot {slot_id}: {error}"),
            Rejection::Conflict { stream_id } => {
                write!(f, "{stream_id} was changed concurrently; re-read and retry")
            }
        }
    }
}

impl std::error::Error for Rejection {}

impl From<DomainError> for Rejection {
    fn from(e: DomainError) -> Self {
        Rejection::Domain(e)
    }
}

/// The assessment application service.
#[derive(Debug)]
pub struct Assessment {
    log: Arc<dyn EventLog>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    /// The read model on disk, following the log.
    view: Projector<AssessmentView>,
    _follow: FollowTask,
    /// What the read model's catch-up at start-up did.
    catch_up: CatchUp,
}

/// An episode's stream read back.
struct Loaded {
    state: EpisodeState,
    metadata: Metadata,
}

fn encode<T: serde::Serialize>(
    event: &T,
    event_type: &'static str,
    now: DateTime<Utc>,
) -> Result<NewEvent, Error> {
    new_event(event, SCHEMA_VERSION, now).map_err(|e| Error::Encode {
        event_type,
        reason: crate::json_error_reason(&e),
    })
}

fn encode_all(events: &[AssessmentEvent], now: DateTime<Utc>) -> Result<Vec<NewEvent>, Error> {
    events
        .iter()
        .map(|e| encode(e, e.event_type(), now))
        .collect()
}

impl Assessment {
    /// Open the service over a log: the read model resumes from its
    /// stored checkpoint in `projections` (or is rebuilt by replay when it
    /// has none that fits this log) and follows the log; then dangling slot
    /// holds are released (see the module docs).
    pub async fn open(
        log: Arc<dyn EventLog>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        projections: &mskflow_projection::Options,
    ) -> Result<Self, Error> {
        policy.validate()?;
        let (view, following, catch_up) =
            Projector::open(&log, projections, AssessmentView).await?;
        let dangling = view.read(projection::dangling_holds).await?;
        let follow = view.spawn(following);
        let service = Self {
            log,
            policy,
            clock,
            view,
            _follow: follow,
            catch_up,
        };
        for hold in &dangling {
            tracing::warn!(slot_id = %hold.slot_id, referral_id = %hold.referral_id, "releasing a slot whose booking did not complete");
            let state = service.load_slot(hold.slot_id).await?;
            service
                .release_slot(
                    hold.slot_id,
                    &state,
                    hold.referral_id,
                    SlotReleaseReason::BookingAbandoned,
                )
                .await?;
        }
        tracing::info!(
            events = service.catch_up.events,
            applied = service.catch_up.applied,
            ms = service.catch_up.elapsed.as_millis() as u64,
            released = dangling.len(),
            max_missed = service.policy.max_missed,
            "assessment read model ready"
        );
        Ok(service)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(crate) fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// What the read model's catch-up with the log did at start-up (events
    /// read after its checkpoint, or from the first event when it was
    /// rebuilt).
    pub fn catch_up(&self) -> &CatchUp {
        &self.catch_up
    }

    /// Wait until the read model has applied the log up to `position`.
    pub async fn wait_for(&self, position: u64) -> Result<(), Error> {
        if self.view.wait_for(position, READ_YOUR_WRITES_TIMEOUT).await {
            Ok(())
        } else {
            Err(Error::Projection(format!(
                "read model did not reach position {position} in time"
            )))
        }
    }

    /// Referrals awaiting an FCP appointment, in worklist order.
    pub async fn worklist(&self, pathway: Option<Pathway>) -> Result<Vec<WorklistEntry>, Error> {
        Ok(self
            .view
            .read(move |conn| projection::worklist(conn, pathway))
            .await?)
    }

    /// Published slots nobody holds, earliest first.
    pub async fn free_slots(&self) -> Result<Vec<Slot>, Error> {
        Ok(self.view.read(projection::free_slots).await?)
    }

    /// The read model's view of a slot.
    pub async fn slot(&self, slot_id: Uuid) -> Result<Option<SlotState>, Error> {
        Ok(self
            .view
            .read(move |conn| projection::slot(conn, slot_id))
            .await?)
    }

    /// Every row of the read model's tables, sorted.
    pub async fn dump(&self) -> Result<projection::Dump, Error> {
        Ok(self.view.read(projection::dump).await?)
    }

    async fn load(&self, referral_id: Uuid) -> Result<Loaded, Error> {
        let envelopes = self.log.read_stream(&stream_id(referral_id), 1).await?;
        let mut state = EpisodeState::default();
        for envelope in &envelopes {
            let event =
                decode::<AssessmentEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?;
            state = domain::apply(state, &event);
        }
        if let Some(last) = envelopes.last() {
            state.version = last.sequence;
        }
        let metadata = Metadata {
            causation_id: envelopes.last().map(|e| e.event_id),
            correlation_id: envelopes
                .first()
                .map_or_else(Uuid::new_v4, |e| e.correlation_id),
            traceparent: None,
            tracestate: None,
        };
        Ok(Loaded { state, metadata })
    }

    async fn load_slot(&self, slot_id: Uuid) -> Result<SlotState, Error> {
        let envelopes = self.log.read_stream(&slot_stream_id(slot_id), 1).await?;
        let mut state = SlotState::default();
        for envelope in &envelopes {
            let event = decode::<SlotEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?;
            state = slot::apply(state, &event);
        }
        if let Some(last) = envelopes.last() {
            state.version = last.sequence;
        }
        Ok(state)
    }

    /// The current state of an episode, read from its stream, or `None`.
    pub async fn get(&self, referral_id: Uuid) -> Result<Option<EpisodeState>, Error> {
        let loaded = self.load(referral_id).await?;
        Ok(loaded.state.exists().then_some(loaded.state))
    }

    /// Publish clinician slots, each on its own stream. Publishing a slot
    /// again with the same details is accepted (a retried request); with
    /// other details it is refused.
    pub async fn publish_slots(
        &self,
        slots: Vec<Slot>,
    ) -> Result<Result<Vec<Uuid>, Rejection>, Error> {
        for s in &slots {
            if let Err(error) = slot::publish(&SlotState::default(), s.clone()) {
                return Ok(Err(Rejection::Slot {
                    slot_id: s.slot_id,
                    error,
                }));
            }
        }
        let now = self.clock.now();
        let metadata = Metadata {
            correlation_id: Uuid::new_v4(),
            ..Metadata::default()
        };
        let mut ids = Vec::with_capacity(slots.len());
        let mut position = 0;
        for s in slots {
            let slot_id = s.slot_id;
            let event = slot::publish(&SlotState::default(), s.clone()).map_err(|_| {
                Error::Invariant("a slot that passed its check failed it again".to_owned())
            })?;
            let new = encode(&event, event.event_type(), now)?;
            match self
                .log
                .append(
                    &slot_stream_id(slot_id),
                    ExpectedVersion::NoStream,
                    vec![new],
                    &metadata,
                )
                .await
            {
                Ok(appended) => position = position.max(appended.position),
                Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                    let existing = self.load_slot(slot_id).await?;
                    if existing.slot.as_ref() != Some(&s) {
                        return Ok(Err(Rejection::Slot {
                            slot_id,
                            error: SlotError::AlreadyPublished,
                        }));
                    }
                }
                Err(e) => return Err(e.into()),
            }
            ids.push(slot_id);
        }
        self.wait_for(position).await?;
        tracing::info!(slots = ids.len(), "slots published");
        Ok(Ok(ids))
    }

    /// Append an episode's new events at the version it was read at.
    async fn append_episode(
        &self,
        referral_id: Uuid,
        loaded: &Loaded,
        events: &[AssessmentEvent],
        now: DateTime<Utc>,
    ) -> Result<Result<Appended, Rejection>, Error> {
        let stream = stream_id(referral_id);
        match self
            .log
            .append(
                &stream,
                ExpectedVersion::Exact(loaded.state.version),
                encode_all(events, now)?,
                &loaded.metadata,
            )
            .await
        {
            Ok(appended) => Ok(Ok(appended)),
            Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                Ok(Err(Rejection::Conflict { stream_id: stream }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Take a slot for a referral, at the version it was read at.
    async fn take_slot(
        &self,
        slot_id: Uuid,
        state: &SlotState,
        referral_id: Uuid,
        metadata: &Metadata,
    ) -> Result<Result<Appended, Rejection>, Error> {
        let event = match slot::take(state, referral_id) {
            Ok(e) => e,
            Err(SlotError::NotPublished) => return Ok(Err(Rejection::SlotNotFound { slot_id })),
            Err(error) => return Ok(Err(Rejection::Slot { slot_id, error })),
        };
        let stream = slot_stream_id(slot_id);
        match self
            .log
            .append(
                &stream,
                ExpectedVersion::Exact(state.version),
                vec![encode(&event, event.event_type(), self.clock.now())?],
                metadata,
            )
            .await
        {
            Ok(appended) => Ok(Ok(appended)),
            Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                Ok(Err(Rejection::Conflict { stream_id: stream }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Give a slot back if `referral_id` holds it.
    async fn release_slot(
        &self,
        slot_id: Uuid,
        state: &SlotState,
        referral_id: Uuid,
        reason: SlotReleaseReason,
    ) -> Result<(), Error> {
        let Ok(event) = slot::release(state, referral_id, reason) else {
            return Ok(());
        };
        let metadata = Metadata {
            correlation_id: Uuid::new_v4(),
            ..Metadata::default()
        };
        match self
            .log
            .append(
                &slot_stream_id(slot_id),
                ExpectedVersion::Exact(state.version),
                vec![encode(&event, event.event_type(), self.clock.now())?],
                &metadata,
            )
            .await
        {
            Ok(appended) => {
                tracing::info!(%slot_id, %referral_id, reason = ?reason, "slot released");
                self.wait_for(appended.position).await
            }
            // Someone else changed the slot: it is no longer ours to free.
            Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Release `slot_id` after the episode let go of it (or never took it),
    /// unless the episode, read afresh, does hold it (a concurrent retry of
    /// the same booking won). A failure is left to the start-up repair.
    async fn release_after(&self, slot_id: Uuid, referral_id: Uuid, reason: SlotReleaseReason) {
        let result = async {
            if self.load(referral_id).await?.state.holds(slot_id) {
                return Ok(());
            }
            let state = self.load_slot(slot_id).await?;
            self.release_slot(slot_id, &state, referral_id, reason)
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%slot_id, %referral_id, error = %e, "slot release failed; it is released on the next start");
        }
    }

    /// Book the referral into a slot (see the module docs).
    pub async fn book(
        &self,
        referral_id: Uuid,
        slot_id: Uuid,
    ) -> Result<Result<EpisodeState, Rejection>, Error> {
        let loaded = self.load(referral_id).await?;
        if !loaded.state.exists() {
            return Ok(Err(Rejection::EpisodeNotFound { referral_id }));
        }
        let slot_state = self.load_slot(slot_id).await?;
        let Some(slot) = slot_state.slot.clone() else {
            return Ok(Err(Rejection::SlotNotFound { slot_id }));
        };
        // A retried booking that already went through.
        if loaded
            .state
            .booking
            .as_ref()
            .is_some_and(|b| b.slot_id == slot_id)
        {
            return Ok(Ok(loaded.state));
        }
        let now = self.clock.now();
        let events = match domain::handle(&loaded.state, Command::Book { slot }, &self.policy) {
            Ok(events) => events,
            Err(e) => return Ok(Err(e.into())),
        };
        // Held already by this referral: the first half of an earlier
        // booking that stopped before the episode append. Finish it.
        if slot_state.held_by != Some(referral_id)
            && let Err(rejection) = self
                .take_slot(slot_id, &slot_state, referral_id, &loaded.metadata)
                .await?
        {
            return Ok(Err(rejection));
        }
        match self
            .append_episode(referral_id, &loaded, &events, now)
            .await
        {
            Ok(Ok(appended)) => {
                tracing::info!(%referral_id, %slot_id, "assessment booked");
                self.finish(&loaded, &events, appended).await.map(Ok)
            }
            other => {
                self.release_after(slot_id, referral_id, SlotReleaseReason::BookingAbandoned)
                    .await;
                other.map(|r| r.map(|_| loaded.state.clone()))
            }
        }
    }

    /// Move a booked appointment to another slot.
    pub async fn reschedule(
        &self,
        referral_id: Uuid,
        new_slot_id: Uuid,
        requested_by: Party,
        reason: Option<String>,
    ) -> Result<Result<EpisodeState, Rejection>, Error> {
        let loaded = self.load(referral_id).await?;
        if !loaded.state.exists() {
            return Ok(Err(Rejection::EpisodeNotFound { referral_id }));
        }
        let slot_state = self.load_slot(new_slot_id).await?;
        let Some(slot) = slot_state.slot.clone() else {
            return Ok(Err(Rejection::SlotNotFound {
                slot_id: new_slot_id,
            }));
        };
        let previous = loaded.state.booking.as_ref().map(|b| b.slot_id);
        let now = self.clock.now();
        let cmd = Command::Reschedule {
            slot,
            requested_by,
            reason,
        };
        let events = match domain::handle(&loaded.state, cmd, &self.policy) {
            Ok(events) => events,
            Err(e) => return Ok(Err(e.into())),
        };
        if let Err(rejection) = self
            .take_slot(new_slot_id, &slot_state, referral_id, &loaded.metadata)
            .await?
        {
            return Ok(Err(rejection));
        }
        match self
            .append_episode(referral_id, &loaded, &events, now)
            .await
        {
            Ok(Ok(appended)) => {
                if let Some(previous) = previous {
                    self.release_after(previous, referral_id, SlotReleaseReason::Rescheduled)
                        .await;
                }
                tracing::info!(%referral_id, slot_id = %new_slot_id, "assessment rescheduled");
                self.finish(&loaded, &events, appended).await.map(Ok)
            }
            other => {
                self.release_after(
                    new_slot_id,
                    referral_id,
                    SlotReleaseReason::BookingAbandoned,
                )
                .await;
                other.map(|r| r.map(|_| loaded.state.clone()))
            }
        }
    }

    /// Cancel the booked appointment (the slot is freed), or end the
    /// episode with `end_episode`.
    pub async fn cancel(
        &self,
        referral_id: Uuid,
        by: Party,
        reason: String,
        end_episode: bool,
    ) -> Result<Result<EpisodeState, Rejection>, Error> {
        let result = self
            .execute(
                referral_id,
                Command::Cancel {
                    by,
                    reason,
                    end_episode,
                },
                None,
            )
            .await?;
        if let Ok((_, events)) = &result {
            for e in events {
                if let AssessmentEvent::AssessmentCancelled(c) = e
                    && let Some(slot_id) = c.slot_id
                {
                    self.release_after(slot_id, referral_id, SlotReleaseReason::Cancelled)
                        .await;
                }
            }
        }
        Ok(result.map(|(s, _)| s))
    }

    /// Record a did-not-attend for the appointment in `slot_id`.
    pub async fn record_missed(
        &self,
        referral_id: Uuid,
        slot_id: Uuid,
    ) -> Result<Result<EpisodeState, Rejection>, Error> {
        let result = self
            .execute(referral_id, Command::RecordDna { slot_id }, None)
            .await?;
        Ok(result.map(|(s, _)| s))
    }

    /// Record the assessment and its outcomes.
    pub async fn complete(
        &self,
        referral_id: Uuid,
        record: AssessmentRecord,
    ) -> Result<Result<EpisodeState, Rejection>, Error> {
        let needs_patient = record.outcomes.iter().any(|o| {
            matches!(
                o,
                mskflow_events::assessment::Outcome::OnwardReferral { .. }
            )
        });
        let nhs_number = if needs_patient {
            self.nhs_number(referral_id).await?
        } else {
            None
        };
        let now = self.clock.now();
        let result = self
            .execute(
                referral_id,
                Command::Complete {
                    record,
                    nhs_number,
                    now,
                },
                Some(now),
            )
            .await?;
        Ok(result.map(|(s, _)| s))
    }

    /// End an episode.
    pub async fn discharge(
        &self,
        referral_id: Uuid,
        reason: mskflow_events::assessment::DischargeReason,
        notify_referrer: bool,
    ) -> Result<Result<EpisodeState, Rejection>, Error> {
        let result = self
            .execute(
                referral_id,
                Command::Discharge {
                    reason,
                    notify_referrer,
                },
                None,
            )
            .await?;
        Ok(result.map(|(s, _)| s))
    }

    /// The patient's NHS number from the referral as intake recorded it.
    async fn nhs_number(&self, referral_id: Uuid) -> Result<Option<NhsNumber>, Error> {
        let envelopes = self
            .log
            .read_stream(&referral_stream_id(referral_id), 1)
            .await?;
        for envelope in envelopes
            .iter()
            .filter(|e| e.event_type == "ReferralReceived")
        {
            if let IntakeEvent::ReferralReceived(r) =
                decode::<IntakeEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?
            {
                return Ok(r.referral.patient.nhs_number);
            }
        }
        Ok(None)
    }

    /// Read, decide, append at the read version.
    async fn execute(
        &self,
        referral_id: Uuid,
        cmd: Command,
        now: Option<DateTime<Utc>>,
    ) -> Result<Result<(EpisodeState, Vec<AssessmentEvent>), Rejection>, Error> {
        let loaded = self.load(referral_id).await?;
        if !loaded.state.exists() {
            return Ok(Err(Rejection::EpisodeNotFound { referral_id }));
        }
        let now = now.unwrap_or_else(|| self.clock.now());
        let events = match domain::handle(&loaded.state, cmd, &self.policy) {
            Ok(events) => events,
            Err(e) => return Ok(Err(e.into())),
        };
        match self
            .append_episode(referral_id, &loaded, &events, now)
            .await?
        {
            Ok(appended) => {
                let types: Vec<&str> = events.iter().map(AssessmentEvent::event_type).collect();
                tracing::info!(%referral_id, events = ?types, "episode updated");
                let state = self.finish(&loaded, &events, appended).await?;
                Ok(Ok((state, events)))
            }
            Err(rejection) => Ok(Err(rejection)),
        }
    }

    /// The state after an append, once the read model has seen it.
    async fn finish(
        &self,
        loaded: &Loaded,
        events: &[AssessmentEvent],
        appended: Appended,
    ) -> Result<EpisodeState, Error> {
        let mut state = events.iter().fold(loaded.state.clone(), domain::apply);
        state.version = appended.version;
        self.wait_for(appended.position).await?;
        Ok(state)
    }
}
