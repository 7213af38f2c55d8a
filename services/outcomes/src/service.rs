//! The outcomes application service: scores responses, runs the domain
//! against a referral's `outcomes-{referral_id}` stream with optimistic
//! concurrency, and keeps an in-memory view of every referral's
//! questionnaires for the due list and the overdue sweep.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use mskflow_eventlog::{
    Envelope, EventLog, ExpectedVersion, Metadata, StartFrom, decode, new_event,
};
use mskflow_events::outcomes::{
    ItemAnswer, Measure, OutcomeChangeRecorded, OutcomeEvent, Score, Timepoint,
};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Command, DomainError, Entry, OutcomeState, Policy, Status, Trigger};
use crate::questionnaire::LicensedTexts;
use crate::scoring::{self, ValueSet};

/// Prefix of the outcome streams.
pub const STREAM_PREFIX: &str = "outcomes-";
/// Consumer name used to replay the log when the view is rebuilt.
const VIEW_CONSUMER: &str = "outcomes-view";
/// Events read per batch while rebuilding the view.
const REPLAY_BATCH: usize = 512;
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

/// The view holds plain data whose every update is a single insert, so it
/// is consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The outcomes application service.
#[derive(Debug)]
pub struct Outcomes {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    value_set: ValueSet,
    texts: LicensedTexts,
    view: Mutex<HashMap<Uuid, OutcomeState>>,
}

fn decode_outcome(envelope: &Envelope) -> Result<OutcomeEvent, Error> {
    decode::<OutcomeEvent>(envelope).map_err(|e| Error::decode(envelope, &e))
}

impl Outcomes {
    /// Open the service over a log, rebuilding the view by replaying every
    /// outcome event.
    pub async fn open(
        log: Arc<dyn EventLog>,
        policy: Policy,
        value_set: ValueSet,
        texts: LicensedTexts,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let mut view: HashMap<Uuid, OutcomeState> = HashMap::new();
        let mut sub = log.subscribe(VIEW_CONSUMER, StartFrom::Beginning).await?;
        let mut replayed = 0_usize;
        loop {
            let batch = sub.poll_batch(REPLAY_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for envelope in &batch {
                if !envelope.stream_id.starts_with(STREAM_PREFIX)
                    || !OutcomeEvent::TYPES.contains(&envelope.event_type.as_str())
                {
                    continue;
                }
                let event = decode_outcome(envelope)?;
                let Ok(referral_id) = Uuid::parse_str(&envelope.stream_id[STREAM_PREFIX.len()..])
                else {
                    continue;
                };
                let state = view.remove(&referral_id).unwrap_or_default();
                let mut state = domain::apply(state, &event);
                state.version = envelope.sequence;
                view.insert(referral_id, state);
                replayed += 1;
            }
        }
        tracing::info!(
            referrals = view.len(),
            events = replayed,
            value_set = value_set.name(),
            "outcomes view rebuilt"
        );
        Ok(Self {
            log,
            clock,
            policy,
            value_set,
            texts,
            view: Mutex::new(view),
        })
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
                    let mut state = events.iter().fold(state, domain::apply);
                    state.version = appended.version;
                    // Concurrent commands may finish out of order: keep
                    // the newest state.
                    let mut view = lock(&self.view);
                    if view
                        .get(&referral_id)
                        .is_none_or(|v| v.version < state.version)
                    {
                        view.insert(referral_id, state.clone());
                    }
                    drop(view);
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
        let candidates: Vec<Uuid> = lock(&self.view)
            .iter()
            .filter(|(_, s)| {
                s.entries.values().any(|e| {
                    e.completed.is_none() && !e.overdue && e.due.is_some_and(|d| now > d + window)
                })
            })
            .map(|(id, _)| *id)
            .collect();
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
    pub fn list_due(&self, as_of: DateTime<Utc>, limit: usize) -> Vec<DueItem> {
        let mut due: Vec<DueItem> = lock(&self.view)
            .iter()
            .flat_map(|(id, s)| {
                s.entries
                    .values()
                    .filter(|e| {
                        e.status() != Status::Completed && e.due.is_some_and(|d| d <= as_of)
                    })
                    .map(|e| DueItem {
                        referral_id: *id,
                        entry: e.clone(),
                    })
            })
            .collect();
        due.sort_by(|a, b| {
            (
                a.entry.due,
                a.referral_id,
                a.entry.measure,
                a.entry.timepoint,
            )
                .cmp(&(
                    b.entry.due,
                    b.referral_id,
                    b.entry.measure,
                    b.entry.timepoint,
                ))
        });
        due.truncate(limit);
        due
    }

    /// The clock's time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
