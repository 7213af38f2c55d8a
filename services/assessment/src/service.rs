//! The assessment application service: reads streams, runs the domain,
//! appends durably, and keeps the read model ([`Projection`]) current.
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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mskflow_eventlog::{
    Appended, Envelope, EventLog, ExpectedVersion, Metadata, NewEvent, StartFrom, Subscription,
    decode, new_event,
};
use mskflow_events::assessment::{AssessmentEvent, Party, Slot, SlotEvent, SlotReleaseReason};
use mskflow_events::intake::IntakeEvent;
use mskflow_events::types::Pathway;
use mskflow_events::{NhsNumber, SCHEMA_VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, AssessmentRecord, Command, DomainError, EpisodeState, Policy};
use crate::projection::{EPISODE_PREFIX, Projection, SLOT_PREFIX, WorklistEntry};
use crate::slot::{self, SlotError, SlotState};

/// Consumer name of the read model's replay (never committed).
const PROJECTION_CONSUMER: &str = "assessment-projection";
/// Events read per batch.
const BATCH: usize = 512;
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

/// How far the read model has got.
#[derive(Debug, Clone, Default)]
struct Progress {
    position: u64,
    /// Set when an event could not be applied: the read model stops.
    failed: Option<String>,
}

/// The read model shared by the service and its projector task.
#[derive(Debug)]
struct View {
    projection: Mutex<Projection>,
    progress: watch::Sender<Progress>,
}

impl View {
    /// The projection holds plain data updated one event at a time, so it
    /// is consistent even if a holder panicked.
    fn lock(&self) -> MutexGuard<'_, Projection> {
        self.projection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn apply_batch(&self, batch: &[Envelope]) -> Result<(), Error> {
        let mut projection = self.lock();
        let mut result = Ok(());
        for envelope in batch {
            if let Err(e) = projection.apply(envelope) {
                result = Err(e);
                break;
            }
        }
        let position = projection.position();
        drop(projection);
        self.progress.send_modify(|p| {
            p.position = position;
            if let Err(e) = &result {
                p.failed = Some(e.to_string());
            }
        });
        result
    }

    async fn wait_for(&self, position: u64) -> Result<(), Error> {
        let mut rx = self.progress.subscribe();
        let waited = tokio::time::timeout(
            READ_YOUR_WRITES_TIMEOUT,
            rx.wait_for(|p| p.position >= position || p.failed.is_some()),
        )
        .await;
        match waited {
            Ok(Ok(p)) => match &p.failed {
                Some(reason) => Err(Error::Projection(reason.clone())),
                None => Ok(()),
            },
            Ok(Err(_)) => Err(Error::Projection("read model stopped".to_owned())),
            Err(_) => Err(Error::Projection(format!(
                "read model did not reach position {position} in time"
            ))),
        }
    }
}

/// Aborts the projector task when the service is dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The assessment application service.
#[derive(Debug)]
pub struct Assessment {
    log: Arc<dyn EventLog>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    view: Arc<View>,
    _projector: AbortOnDrop,
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
    /// Open the service over a log: rebuild the read model by replaying
    /// the log, release dangling slot holds (see the module docs), and
    /// start following the log.
    pub async fn open(
        log: Arc<dyn EventLog>,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        policy.validate()?;
        let (progress, _) = watch::channel(Progress::default());
        let view = Arc::new(View {
            projection: Mutex::new(Projection::default()),
            progress,
        });
        let mut sub = log
            .subscribe(PROJECTION_CONSUMER, StartFrom::Beginning)
            .await?;
        let mut replayed = 0_usize;
        loop {
            let batch = sub.poll_batch(BATCH).await?;
            if batch.is_empty() {
                break;
            }
            replayed += batch.len();
            view.apply_batch(&batch)?;
        }
        let dangling = view.lock().dangling_holds();
        let projector = tokio::spawn(follow(sub, Arc::clone(&view)));
        let service = Self {
            log,
            policy,
            clock,
            view,
            _projector: AbortOnDrop(projector),
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
            events = replayed,
            released = dangling.len(),
            max_missed = service.policy.max_missed,
            "assessment read model rebuilt"
        );
        Ok(service)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub(crate) fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Wait until the read model has applied the log up to `position`.
    pub async fn wait_for(&self, position: u64) -> Result<(), Error> {
        self.view.wait_for(position).await
    }

    /// Referrals awaiting an FCP appointment, in worklist order.
    pub fn worklist(&self, pathway: Option<Pathway>) -> Vec<WorklistEntry> {
        self.view.lock().worklist(pathway)
    }

    /// Published slots nobody holds, earliest first.
    pub fn free_slots(&self) -> Vec<Slot> {
        self.view
            .lock()
            .free_slots()
            .into_iter()
            .filter_map(|s| s.slot.clone())
            .collect()
    }

    /// The read model's view of a slot.
    pub fn slot(&self, slot_id: Uuid) -> Option<SlotState> {
        self.view.lock().slot(slot_id).cloned()
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
                return Ok(Some(r.referral.patient.nhs_number));
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

/// Follow the log into the read model until the log closes or an event
/// cannot be applied.
async fn follow(mut sub: Box<dyn Subscription>, view: Arc<View>) {
    loop {
        match sub.next_batch(BATCH).await {
            Ok(batch) => {
                if let Err(e) = view.apply_batch(&batch) {
                    tracing::error!(error = %e, "assessment read model stopped");
                    return;
                }
            }
            Err(mskflow_eventlog::Error::Closed) => {
                view.progress.send_modify(|p| {
                    p.failed = Some("event log closed".to_owned());
                });
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "assessment read model cannot read the log; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
