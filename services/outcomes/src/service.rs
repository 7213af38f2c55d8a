//! The outcomes application service: scores responses, runs the domain
//! against a referral's `outcomes-{referral_id}` stream with optimistic
//! concurrency. The due list and the overdue sweep read the view on disk
//! ([`OutcomesView`]: every referral's questionnaires, indexed by due date),
//! resumed from its checkpoint at start-up and following the log; they wait
//! until it has applied this instance's last append (read-your-writes).
//! Nothing here holds every referral in memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mskflow_eventlog::{Envelope, EventLog, ExpectedVersion, Metadata, decode, new_event};
use mskflow_events::outcomes::{
    ItemAnswer, Measure, OutcomeChangeRecorded, OutcomeEvent, Score, Timepoint,
};
use mskflow_projection::{CatchUp, FollowTask, Projector};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Command, DomainError, Entry, OutcomeState, Policy, Trigger};
use crate::questionnaire::LicensedTexts;
use crate::scoring::{self, ValueSet};
use crate::view::{self, OutcomesView};

/// Prefix of the outcome streams.
pub const STREAM_PREFIX: &str = "outcomes-";
/// How long a query waits for the view to apply this instance's appends.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one command when other writers move the stream on.
const ATTEMPTS: usize = 5;

/// The stream of one referral's outcomes.
pub fn stream_id(referral_id: Uuid) -> String {
    format!("{STREAM_PREFIX}{referral_id}")
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

/// A completed questionnaire as received (the gateway maps a FHIR
/// `QuestionnaireResponse` to this).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub referral_id: Uuid,
    /// The `QuestionnaireResponse` id; a retry with the same id is recorded
    /// once.
    pub response_id: Uuid,
    pub measure: Measure,
    pub timepoint: Timepoint,
    pub answers: Vec<ItemAnswer>,
    /// The journey's correlation id, if the caller has one.
    pub correlation_id: Option<Uuid>,
    /// W3C trace context of the request, stored with the events.
    pub traceparent: Option<String>,
}

/// A response recorded (or found already recorded).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub response_id: Uuid,
    /// The stream's version after the append.
    pub version: u64,
    pub score: Score,
    /// Changes from the baseline recorded with this response.
    pub changes: Vec<OutcomeChangeRecorded>,
}

/// A response refused for a business reason (nothing was appended).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The answers cannot be scored. gRPC `INVALID_ARGUMENT` naming each
    /// item; HTTP 400 `invalid`.
    #[error(transparent)]
    Invalid(#[from] scoring::Invalid),
    /// The domain refused it (already completed, not scheduled).
    #[error(transparent)]
    Domain(#[from] DomainError),
}

/// A questionnaire in the due list.
#[derive(Debug, Clone, PartialEq)]
pub struct DueItem {
    pub referral_id: Uuid,
    pub entry: Entry,
}

/// What handling one pathway event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Questionnaires were scheduled (or moved).
    Scheduled { referral_id: Uuid, count: usize },
    /// The event was already acted on, or changed nothing.
    Unchanged { referral_id: Uuid },
    /// Not an event that schedules questionnaires.
    Ignored,
}

/// The outcomes application service.
#[derive(Debug)]
pub struct Outcomes {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    value_set: ValueSet,
    texts: LicensedTexts,
    /// The view on disk, following the log.
    view: Projector<OutcomesView>,
    _follow: FollowTask,
    /// What the view's catch-up at start-up did.
    catch_up: CatchUp,
    /// The log position of this instance's last append: queries wait until
    /// the view has applied it.
    written: AtomicU64,
}

fn decode_outcome(envelope: &Envelope) -> Result<OutcomeEvent, Error> {
    decode::<OutcomeEvent>(envelope).map_err(|e| Error::decode(envelope, &e))
}

impl Outcomes {
    /// Open the service over a log. The view resumes from its stored
    /// checkpoint in `projections` (or is rebuilt by replay when it has none
    /// that fits this log) and then follows the log.
    pub async fn open(
        log: Arc<dyn EventLog>,
        policy: Policy,
        value_set: ValueSet,
        texts: LicensedTexts,
        clock: Arc<dyn Clock>,
        projections: &mskflow_projection::Options,
    ) -> Result<Self, Error> {
        let (view, following, catch_up) = Projector::open(&log, projections, OutcomesView).await?;
        tracing::info!(
            events = catch_up.events,
            applied = catch_up.applied,
            ms = catch_up.elapsed.as_millis() as u64,
            value_set = value_set.name(),
            "outcomes view ready"
        );
        let follow = view.spawn(following);
        Ok(Self {
            log,
            clock,
            policy,
            value_set,
            texts,
            view,
            _follow: follow,
            catch_up,
            written: AtomicU64::new(0),
        })
    }

    /// What the view's catch-up with the log did at start-up (events read
    /// after its checkpoint, or from the first event when it was rebuilt).
    pub fn catch_up(&self) -> &CatchUp {
        &self.catch_up
    }

    /// Wait until the view has applied this instance's appends.
    async fn caught_up(&self) -> Result<(), Error> {
        let position = self.written.load(Ordering::Acquire);
        if self.view.applied() >= position
            || self.view.wait_for(position, READ_YOUR_WRITES_TIMEOUT).await
        {
            Ok(())
        } else {
            Err(Error::ViewBehind { position })
        }
    }

    /// Every row of the stored view, sorted (once it has applied this
    /// instance's appends).
    pub async fn view_dump(&self) -> Result<view::Dump, Error> {
        self.caught_up().await?;
        Ok(self.view.read(view::dump).await?)
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn value_set(&self) -> &ValueSet {
        &self.value_set
    }

    /// The FHIR R4 Questionnaire of a measure (licensed wording only when a
    /// licence file is configured).
    pub fn questionnaire(&self, measure: Measure) -> serde_json::Value {
        self.texts.questionnaire(measure)
    }

    /// A referral's outcomes read from its stream.
    async fn load(&self, referral_id: Uuid) -> Result<OutcomeState, Error> {
        let envelopes = self.log.read_stream(&stream_id(referral_id), 1).await?;
        let mut state = OutcomeState::default();
        for envelope in &envelopes {
            if OutcomeEvent::TYPES.contains(&envelope.event_type.as_str()) {
                state = domain::apply(state, &decode_outcome(envelope)?);
            }
            state.version = envelope.sequence;
        }
        Ok(state)
    }

    /// Run a command against the stream: read, decide, append with the
    /// version read, and retry when another writer moved the stream on.
    async fn execute(
        &self,
        referral_id: Uuid,
        metadata: &Metadata,
        command: impl Fn(&OutcomeState) -> Command,
    ) -> Result<Result<(OutcomeState, Vec<OutcomeEvent>), DomainError>, Error> {
        let stream = stream_id(referral_id);
        for _ in 0..ATTEMPTS {
            let state = self.load(referral_id).await?;
            let events = match domain::handle(&state, command(&state), &self.policy) {
                Ok(events) => events,
                Err(e) => return Ok(Err(e)),
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
            let expected = if state.version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(state.version)
            };
            match self
                .log
                .append(&stream, expected, new_events, metadata)
                .await
            {
                Ok(appended) => {
                    self.written.fetch_max(appended.position, Ordering::AcqRel);
                    let mut state = events.iter().fold(state, domain::apply);
                    state.version = appended.version;
                    return Ok(Ok((state, events)));
                }
                Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                    tracing::debug!(%referral_id, "outcome stream moved on; retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict { stream_id: stream })
    }

    /// Score a response and record it (with the change from the baseline
    /// when there is one). `Ok(Err(_))` is a business refusal.
    pub async fn submit(&self, submission: Submission) -> Result<Result<Recorded, Refusal>, Error> {
        let Submission {
            referral_id,
            response_id,
            measure,
            timepoint,
            answers,
            correlation_id,
            traceparent,
        } = submission;
        let score = match scoring::score(measure, &answers, &self.value_set) {
            Ok(score) => score,
            Err(invalid) => {
                tracing::info!(%referral_id, %measure, items = ?invalid.link_ids(), "response refused: cannot be scored");
                return Ok(Err(invalid.into()));
            }
        };
        let metadata = Metadata {
            causation_id: Some(response_id),
            correlation_id: correlation_id.unwrap_or(referral_id),
            traceparent,
            tracestate: None,
        };
        let at = self.clock.now();
        let (state, events) = match self
            .execute(referral_id, &metadata, |_| Command::Complete {
                referral_id,
                response_id,
                measure,
                timepoint,
                answers: answers.clone(),
                score: score.clone(),
                at,
            })
            .await?
        {
            Ok(done) => done,
            Err(e) => return Ok(Err(e.into())),
        };
        if events.is_empty() {
            // A retry of a recorded response: answer with what was recorded.
            let recorded = state
                .entries
                .values()
                .find_map(|e| {
                    e.completed
                        .as_ref()
                        .filter(|c| c.response_id == response_id)
                        .map(|c| (e.measure, e.timepoint, c.score.clone()))
                })
                .ok_or_else(|| {
                    Error::Invariant("a recorded response is not in its stream".to_owned())
                })?;
            let changes = state
                .changes
                .iter()
                .filter(|c| c.measure == recorded.0 && c.to == recorded.1)
                .cloned()
                .collect();
            return Ok(Ok(Recorded {
                response_id,
                version: state.version,
                score: recorded.2,
                changes,
            }));
        }
        let changes: Vec<OutcomeChangeRecorded> = events
            .iter()
            .filter_map(|e| match e {
                OutcomeEvent::OutcomeChangeRecorded(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        tracing::info!(
            %referral_id,
            %measure,
            %timepoint,
            score = score.value(),
            changes = changes.len(),
            "questionnaire completed"
        );
        Ok(Ok(Recorded {
            response_id,
            version: state.version,
            score,
            changes,
        }))
    }

    /// Record that a scheduled questionnaire was sent.
    pub async fn mark_sent(
        &self,
        referral_id: Uuid,
        measure: Measure,
        timepoint: Timepoint,
    ) -> Result<Result<Entry, DomainError>, Error> {
        let metadata = Metadata {
            causation_id: None,
            correlation_id: referral_id,
            traceparent: None,
            tracestate: None,
        };
        let at = self.clock.now();
        let (state, _) = match self
            .execute(referral_id, &metadata, |_| Command::MarkSent {
                referral_id,
                measure,
                timepoint,
                at,
            })
            .await?
        {
            Ok(done) => done,
            Err(e) => return Ok(Err(e)),
        };
        state
            .entry(measure, timepoint)
            .cloned()
            .map(Ok)
            .ok_or_else(|| Error::Invariant("a sent questionnaire is not in its stream".to_owned()))
    }

    /// A referral's outcomes, or `None` if nothing is recorded.
    pub async fn get(&self, referral_id: Uuid) -> Result<Option<OutcomeState>, Error> {
        let state = self.load(referral_id).await?;
        Ok(state.exists().then_some(state))
    }

    /// Act on one pathway event (assessment or scheduling): schedule
    /// questionnaires at first contact or discharge. The event is matched by
    /// type name and its referral id read from the payload's `referral_id`.
    pub async fn handle_event(&self, envelope: &Envelope) -> Result<Handled, Error> {
        let Some(trigger) = Trigger::of_event_type(&envelope.event_type) else {
            return Ok(Handled::Ignored);
        };
        let referral_id = envelope
            .payload
            .get("referral_id")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| Error::Decode {
                stream_id: envelope.stream_id.clone(),
                sequence: envelope.sequence,
                event_type: envelope.event_type.clone(),
                reason: "payload has no referral_id UUID".to_owned(),
            })?;
        let metadata = Metadata {
            causation_id: Some(envelope.event_id),
            correlation_id: envelope.correlation_id,
            traceparent: envelope.traceparent.clone(),
            tracestate: envelope.tracestate.clone(),
        };
        let (_, events) = match self
            .execute(referral_id, &metadata, |_| Command::Schedule {
                referral_id,
                trigger,
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                at: envelope.occurred_at,
            })
            .await?
        {
            Ok(done) => done,
            Err(e) => return Err(Error::Invariant(format!("scheduling refused: {e}"))),
        };
        if events.is_empty() {
            tracing::debug!(%referral_id, event_type = %envelope.event_type, "nothing to schedule");
            return Ok(Handled::Unchanged { referral_id });
        }
        tracing::info!(%referral_id, event_type = %envelope.event_type, questionnaires = events.len(), "questionnaires scheduled");
        Ok(Handled::Scheduled {
            referral_id,
            count: events.len(),
        })
    }

    /// Mark every questionnaire past the overdue window (by the clock) as
    /// overdue. Returns how many were marked.
    pub async fn sweep_overdue(&self) -> Result<usize, Error> {
        let now = self.clock.now();
        let window = chrono::Duration::days(i64::from(self.policy.overdue_after_days));
        // `now > due + window`, as the domain decides it.
        let due_before = now - window;
        self.caught_up().await?;
        let candidates = self
            .view
            .read(move |conn| view::overdue_candidates(conn, due_before))
            .await?;
        let mut marked = 0;
        for referral_id in candidates {
            let metadata = Metadata {
                causation_id: None,
                correlation_id: referral_id,
                traceparent: None,
                tracestate: None,
            };
            if let Ok((_, events)) = self
                .execute(referral_id, &metadata, |_| Command::CheckOverdue {
                    referral_id,
                    now,
                })
                .await?
            {
                marked += events.len();
            }
        }
        if marked > 0 {
            tracing::info!(questionnaires = marked, "questionnaires overdue");
        }
        Ok(marked)
    }

    /// Questionnaires whose due date is reached by `as_of` and that are not
    /// completed, oldest first, at most `limit`.
    pub async fn list_due(
        &self,
        as_of: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueItem>, Error> {
        self.caught_up().await?;
        Ok(self
            .view
            .read(move |conn| view::due(conn, as_of, limit))
            .await?)
    }

    /// The clock's time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
