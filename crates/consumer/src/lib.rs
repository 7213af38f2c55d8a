//! Shared mechanics of the durable log consumers (`assessment`,
//! `scheduling`, `outcomes`): the span each event is handled in, and dead
//! letters.
//!
//! * [`consume_span`] opens the `consume` span of one event as a child of the
//!   trace in its envelope; [`metadata_for`] gives the events a handler
//!   appends that span's trace context (or the envelope's when nothing is
//!   traced), so one trace follows a referral through every consumer.
//! * [`DeadLetterQueue`] sets aside an event a consumer can never handle on
//!   `deadletter-{consumer}` ([`mskflow_events::operations`]) instead of
//!   stopping the consumer, and carries out operators' retry requests.
//!   Operators' commands ([`request_retry`], [`discard`], [`load_all`]) go
//!   through the same stream.
//!
//! This crate sits between the port (`mskflow-eventlog`, which knows no
//! domain types) and the services; it knows no service's types either.
//! Every failure here is a store failure, so functions return the port's
//! [`mskflow_eventlog::Error`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mskflow_eventlog::{Envelope, EventLog, ExpectedVersion, Metadata, NewEvent, decode};
use mskflow_events::operations::{
    DEAD_LETTER_STREAM_PREFIX, DeadLetterDiscarded, DeadLetterResolved, DeadLetterRetryRequested,
    EventDeadLettered, OperationsEvent, dead_letter_stream,
};
use tracing::{Instrument as _, Span};
use uuid::Uuid;

pub use mskflow_events::operations::{DeadLetter, DeadLetterStatus, DeadLetters};

/// Counter of events set aside, labelled by `consumer`.
pub const DEAD_LETTERS_TOTAL: &str = "mskflow_dead_letters_total";

/// Pause before retrying a store failure.
const RETRY: Duration = Duration::from_millis(250);

/// The span one consumer handles one event in: `consume`, named
/// `"{consumer} {event_type}"` for OpenTelemetry, a child of the trace in
/// the envelope's `traceparent`/`tracestate` (if any).
pub fn consume_span(consumer: &str, envelope: &Envelope) -> Span {
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{consumer} {}", envelope.event_type),
        otel.kind = "consumer",
        consumer,
        event_type = %envelope.event_type,
        position = envelope.position,
    );
    mskflow_telemetry::set_remote_parent(
        &span,
        envelope.traceparent.as_deref(),
        envelope.tracestate.as_deref(),
    );
    span
}

/// The trace context events appended while handling `envelope` in `span`
/// carry: the span's, or the envelope's when the span is not traced.
pub fn trace_context_for(span: &Span, envelope: &Envelope) -> (Option<String>, Option<String>) {
    match mskflow_telemetry::trace_context_of(span) {
        (Some(traceparent), tracestate) => (Some(traceparent), tracestate),
        (None, _) => (envelope.traceparent.clone(), envelope.tracestate.clone()),
    }
}

/// Metadata of events caused by `envelope` and appended in `span`: caused by
/// it, in its correlation, carrying the trace context of
/// [`trace_context_for`].
pub fn metadata_for(span: &Span, envelope: &Envelope) -> Metadata {
    let (traceparent, tracestate) = trace_context_for(span, envelope);
    Metadata {
        causation_id: Some(envelope.event_id),
        correlation_id: envelope.correlation_id,
        traceparent,
        tracestate,
    }
}

/// A copy of `envelope` whose trace context is [`trace_context_for`], for
/// handlers that pass the envelope's trace context on themselves.
pub fn with_trace_of(span: &Span, envelope: &Envelope) -> Envelope {
    let (traceparent, tracestate) = trace_context_for(span, envelope);
    Envelope {
        traceparent,
        tracestate,
        ..envelope.clone()
    }
}

/// What a retry request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The event was handled: `DeadLetterResolved` recorded.
    Resolved,
    /// It failed again: a new `EventDeadLettered` with this many attempts.
    FailedAgain { attempts: u32 },
    /// Nothing to do: the dead letter is unknown, or no retry of it is
    /// pending (a redelivered request, or one already carried out).
    NothingPending,
}

/// One consumer's dead letters on `deadletter-{consumer}`.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    log: Arc<dyn EventLog>,
    consumer: String,
    stream_id: String,
}

impl DeadLetterQueue {
    pub fn new(log: Arc<dyn EventLog>, consumer: &str) -> Self {
        Self {
            log,
            consumer: consumer.to_owned(),
            stream_id: dead_letter_stream(consumer),
        }
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The dead-letter stream, `deadletter-{consumer}`.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The consumer's dead letters, folded from its stream.
    pub async fn load(&self) -> Result<DeadLetters, mskflow_eventlog::Error> {
        Ok(load_stream(self.log.as_ref(), &self.stream_id).await?.0)
    }

    /// Set aside an event the consumer cannot handle, with a `reason` that
    /// must not quote its payload. An event already on the stream (a
    /// redelivery after a restart) is not recorded twice. Store failures
    /// are retried until the store answers or is closed.
    ///
    /// Returns whether a new dead letter was recorded.
    pub async fn record(
        &self,
        envelope: &Envelope,
        reason: &str,
        metadata: &Metadata,
    ) -> Result<bool, mskflow_eventlog::Error> {
        let known = self.load().await?;
        if known.get(&self.consumer, envelope.event_id).is_some() {
            tracing::debug!(consumer = %self.consumer, event_id = %envelope.event_id, "event already dead-lettered");
            return Ok(false);
        }
        self.dead_letter(
            EventDeadLettered {
                consumer: self.consumer.clone(),
                event_id: envelope.event_id,
                stream_id: envelope.stream_id.clone(),
                sequence: envelope.sequence,
                position: envelope.position,
                event_type: envelope.event_type.clone(),
                reason: reason.to_owned(),
                attempts: 1,
            },
            metadata,
        )
        .await?;
        Ok(true)
    }

    async fn dead_letter(
        &self,
        event: EventDeadLettered,
        metadata: &Metadata,
    ) -> Result<(), mskflow_eventlog::Error> {
        let id = derived_id(
            event.event_id,
            &format!("{}/dead-lettered/{}", self.consumer, event.attempts),
        );
        tracing::error!(
            consumer = %self.consumer,
            event_id = %event.event_id,
            stream_id = %event.stream_id,
            position = event.position,
            event_type = %event.event_type,
            attempts = event.attempts,
            reason = %event.reason,
            "event cannot be handled; dead-lettered"
        );
        append_retrying(
            self.log.as_ref(),
            &self.stream_id,
            &OperationsEvent::EventDeadLettered(event),
            id,
            metadata,
        )
        .await?;
        metrics::counter!(DEAD_LETTERS_TOTAL, "consumer" => self.consumer.clone()).increment(1);
        Ok(())
    }

    /// The retry request in `envelope`, if it is one for this consumer.
    pub fn retry_request(&self, envelope: &Envelope) -> Option<DeadLetterRetryRequested> {
        if envelope.stream_id != self.stream_id || envelope.event_type != "DeadLetterRetryRequested"
        {
            return None;
        }
        match decode::<OperationsEvent>(envelope) {
            Ok(OperationsEvent::DeadLetterRetryRequested(r)) if r.consumer == self.consumer => {
                Some(r)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(consumer = %self.consumer, position = envelope.position, error_kind = ?e.classify(), "retry request does not decode; ignored");
                None
            }
        }
    }

    /// Carry out a retry request: read the original event, hand it to
    /// `handle` (which answers `Ok(Err(reason))` when it fails for good),
    /// and record `DeadLetterResolved` or a new `EventDeadLettered` with one
    /// more attempt. A request with no pending retry does nothing.
    pub async fn retry<E, F>(
        &self,
        request: &DeadLetterRetryRequested,
        metadata: &Metadata,
        handle: F,
    ) -> Result<RetryOutcome, E>
    where
        E: From<mskflow_eventlog::Error>,
        F: AsyncFnOnce(&Envelope) -> Result<Result<(), String>, E>,
    {
        let known = self.load().await?;
        let Some(letter) = known
            .get(&self.consumer, request.event_id)
            .filter(|d| d.status == DeadLetterStatus::RetryRequested)
        else {
            tracing::debug!(consumer = %self.consumer, event_id = %request.event_id, "no retry pending");
            return Ok(RetryOutcome::NothingPending);
        };
        let last = letter.last.clone();
        let original = self
            .log
            .read_stream(&last.stream_id, last.sequence)
            .await?
            .into_iter()
            .find(|e| e.event_id == last.event_id);
        let result = match original {
            Some(original) => handle(&original).await?,
            None => Err(format!(
                "event not found at {}#{}",
                last.stream_id, last.sequence
            )),
        };
        match result {
            Ok(()) => {
                let id = derived_id(
                    last.event_id,
                    &format!("{}/resolved/{}", self.consumer, last.attempts),
                );
                append_retrying(
                    self.log.as_ref(),
                    &self.stream_id,
                    &OperationsEvent::DeadLetterResolved(DeadLetterResolved {
                        consumer: self.consumer.clone(),
                        event_id: last.event_id,
                    }),
                    id,
                    metadata,
                )
                .await?;
                tracing::info!(consumer = %self.consumer, event_id = %last.event_id, "dead letter resolved by retry");
                Ok(RetryOutcome::Resolved)
            }
            Err(reason) => {
                let attempts = last.attempts.saturating_add(1);
                self.dead_letter(
                    EventDeadLettered {
                        reason,
                        attempts,
                        ..last
                    },
                    metadata,
                )
                .await?;
                Ok(RetryOutcome::FailedAgain { attempts })
            }
        }
    }
}

/// How a durable consumer treats a handler's failure ([`consume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The log is closed (shutdown): stop, without dead-lettering.
    Stop,
    /// Transient (the store is unavailable, a version race): retry the same
    /// event after a pause, for as long as it takes.
    Retry,
    /// The event can never be handled: set it aside on the dead-letter
    /// stream and move on.
    Poison,
}

/// What differs between the durable consumers: how one event is handled,
/// and what a failure means. [`consume`] does the rest.
pub trait EventHandler: Sync {
    /// What handling an event gives back.
    type Handled;
    /// The handler's error.
    type Error: From<mskflow_eventlog::Error> + std::fmt::Display + Send;
    /// Handle one event (idempotently: it may be delivered again).
    fn handle_event(
        &self,
        envelope: &Envelope,
    ) -> impl std::future::Future<Output = Result<Self::Handled, Self::Error>> + Send;
    /// What a failure means to the consumer loop.
    fn classify(error: &Self::Error) -> Failure;
    /// The answer for a retry request or a dead-lettered event.
    fn ignored() -> Self::Handled;
    /// Called after every event of a batch is handled, before the batch is
    /// committed (e.g. to wait until a read model has seen what the batch
    /// appended). Nothing by default.
    fn after_batch(
        &self,
        _handled: &[Self::Handled],
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Events a durable consumer asks for at a time.
pub const BATCH: usize = 256;

/// A durable consumer: a service's [`EventHandler`] on its own
/// checkpointed subscription, with its dead-letter queue.
///
/// Delivery is at-least-once: the checkpoint is committed only after every
/// event of a batch is handled (and [`EventHandler::after_batch`] passed),
/// so after a crash the batch is delivered again and the handler must be
/// idempotent. A failed commit is logged and the batch is handled again
/// later; a broker outage does not stop the consumer.
#[derive(Debug)]
pub struct Durable<H> {
    handler: H,
    sub: Box<dyn mskflow_eventlog::Subscription>,
    dead_letters: DeadLetterQueue,
}

impl<H: EventHandler + Send> Durable<H> {
    /// Subscribe `handler` as the consumer `name` from its stored
    /// checkpoint.
    pub async fn open(
        log: Arc<dyn EventLog>,
        name: &str,
        handler: H,
    ) -> Result<Self, mskflow_eventlog::Error> {
        let sub = log
            .subscribe(name, mskflow_eventlog::StartFrom::Checkpoint)
            .await?;
        Ok(Self {
            handler,
            sub,
            dead_letters: DeadLetterQueue::new(log, name),
        })
    }

    /// The service's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Handle a batch (each event through [`consume`]), then
    /// [`EventHandler::after_batch`]. Does not commit.
    async fn handle_batch(&self, batch: &[Envelope]) -> Result<Vec<H::Handled>, H::Error> {
        let mut handled = Vec::with_capacity(batch.len());
        for envelope in batch {
            handled.push(consume(&self.handler, &self.dead_letters, envelope).await?);
        }
        self.handler.after_batch(&handled).await?;
        Ok(handled)
    }

    /// Handle every event available now, without committing.
    pub async fn process_available(&mut self) -> Result<Vec<H::Handled>, H::Error> {
        let mut all = Vec::new();
        loop {
            let batch = self.sub.poll_batch(BATCH).await?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(self.handle_batch(&batch).await?);
        }
    }

    /// Record that everything returned so far is handled.
    pub async fn commit(&mut self) -> Result<(), H::Error> {
        Ok(self.sub.commit().await?)
    }

    /// Consume until `shutdown` completes, committing after each batch. A
    /// batch in hand is finished before shutdown is honoured, so its
    /// checkpoint can be committed. Returns when the log is closed, or with
    /// the handler's error when it fails for good outside an event (an
    /// event that can never be handled is dead-lettered instead).
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), H::Error>
    where
        H: Sync,
        H::Handled: Send,
    {
        tokio::pin!(shutdown);
        let name = self.dead_letters.consumer().to_owned();
        tracing::info!(consumer = %name, "consumer started");
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => break,
                batch = self.sub.next_batch(BATCH) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(mskflow_eventlog::Error::Closed) => break,
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "consumer cannot read the log; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            match self.handle_batch(&batch).await {
                Ok(_) => {}
                Err(e) if H::classify(&e) == Failure::Stop => break,
                Err(e) => return Err(e),
            }
            match self.sub.commit().await {
                Ok(()) => {}
                Err(mskflow_eventlog::Error::Closed) => break,
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "consumer could not commit; events will be redelivered");
                }
            }
        }
        tracing::info!(consumer = %name, "consumer stopped");
        Ok(())
    }
}

/// Handle one event the way every durable consumer does, in its `consume`
/// span ([`consume_span`]): carry out an operator's retry request for this
/// consumer, or hand the event to the handler, retrying what it classifies
/// as [`Failure::Retry`] and dead-lettering what it classifies as
/// [`Failure::Poison`], so one bad event cannot stop every referral behind
/// it.
pub async fn consume<T: EventHandler>(
    handler: &T,
    dead_letters: &DeadLetterQueue,
    envelope: &Envelope,
) -> Result<T::Handled, T::Error> {
    let span = consume_span(dead_letters.consumer(), envelope);
    async {
        let metadata = metadata_for(&Span::current(), envelope);
        if let Some(request) = dead_letters.retry_request(envelope) {
            dead_letters
                .retry(&request, &metadata, async |original: &Envelope| {
                    Ok::<_, T::Error>(handle_retrying(handler, original).await?.map(|_| ()))
                })
                .await?;
            return Ok(T::ignored());
        }
        match handle_retrying(handler, envelope).await? {
            Ok(h) => Ok(h),
            Err(reason) => {
                dead_letters.record(envelope, &reason, &metadata).await?;
                Ok(T::ignored())
            }
        }
    }
    .instrument(span)
    .await
}

/// The handler until it passes or fails for good: `Ok(Err(reason))` for an
/// event that can never be handled (the reason names no payload content).
async fn handle_retrying<T: EventHandler>(
    handler: &T,
    envelope: &Envelope,
) -> Result<Result<T::Handled, String>, T::Error> {
    loop {
        match handler.handle_event(envelope).await {
            Ok(h) => return Ok(Ok(h)),
            Err(e) => match T::classify(&e) {
                Failure::Stop => return Err(e),
                Failure::Retry => {
                    tracing::warn!(position = envelope.position, error = %e, "transient failure; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Failure::Poison => return Ok(Err(e.to_string())),
            },
        }
    }
}

/// Why an operator's command was refused. Reaches only the command line
/// (`mskflow dead-letters`), which reports it and exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No dead letter with that event id for that consumer.
    #[error("no dead letter with that event id for this consumer")]
    Unknown,
    /// It is no longer open (resolved or discarded).
    #[error("the dead letter is no longer open ({0:?})")]
    NotOpen(DeadLetterStatus),
}

/// Every consumer's dead letters, folded from every `deadletter-*` stream
/// of `consumers`.
pub async fn load_all(
    log: &dyn EventLog,
    consumers: &[&str],
) -> Result<DeadLetters, mskflow_eventlog::Error> {
    let mut all = DeadLetters::default();
    for consumer in consumers {
        for envelope in log.read_stream(&dead_letter_stream(consumer), 1).await? {
            apply_envelope(&mut all, &envelope);
        }
    }
    Ok(all)
}

/// Ask `consumer` to try an open dead letter again (operator command). The
/// consumer sees the request through its subscription and records the
/// result.
pub async fn request_retry(
    log: &dyn EventLog,
    consumer: &str,
    event_id: Uuid,
    requested_by: &str,
) -> Result<Result<(), Refused>, mskflow_eventlog::Error> {
    let event = OperationsEvent::DeadLetterRetryRequested(DeadLetterRetryRequested {
        consumer: consumer.to_owned(),
        event_id,
        requested_by: requested_by.to_owned(),
    });
    operator_append(log, consumer, event_id, event).await
}

/// Discard an open dead letter for good (operator command).
pub async fn discard(
    log: &dyn EventLog,
    consumer: &str,
    event_id: Uuid,
    reason: &str,
    discarded_by: &str,
) -> Result<Result<(), Refused>, mskflow_eventlog::Error> {
    let event = OperationsEvent::DeadLetterDiscarded(DeadLetterDiscarded {
        consumer: consumer.to_owned(),
        event_id,
        reason: reason.to_owned(),
        discarded_by: discarded_by.to_owned(),
    });
    operator_append(log, consumer, event_id, event).await
}

/// Append an operator's event if the dead letter is open, checking the
/// stream's version so it cannot race a consumer's or another operator's
/// write unseen.
async fn operator_append(
    log: &dyn EventLog,
    consumer: &str,
    event_id: Uuid,
    event: OperationsEvent,
) -> Result<Result<(), Refused>, mskflow_eventlog::Error> {
    let stream_id = dead_letter_stream(consumer);
    let (letters, version) = load_stream(log, &stream_id).await?;
    match letters.get(consumer, event_id) {
        None => return Ok(Err(Refused::Unknown)),
        Some(d) if !d.status.is_open() => return Ok(Err(Refused::NotOpen(d.status))),
        Some(_) => {}
    }
    let metadata = Metadata {
        causation_id: None,
        correlation_id: Uuid::new_v4(),
        traceparent: None,
        tracestate: None,
    };
    log.append(
        &stream_id,
        ExpectedVersion::Exact(version),
        vec![to_new_event(&stream_id, &event, Uuid::new_v4())?],
        &metadata,
    )
    .await?;
    Ok(Ok(()))
}

/// Fold one stream; also returns its version (last sequence).
async fn load_stream(
    log: &dyn EventLog,
    stream_id: &str,
) -> Result<(DeadLetters, u64), mskflow_eventlog::Error> {
    let mut letters = DeadLetters::default();
    let mut version = 0;
    for envelope in log.read_stream(stream_id, 1).await? {
        version = envelope.sequence;
        apply_envelope(&mut letters, &envelope);
    }
    Ok((letters, version))
}

fn apply_envelope(letters: &mut DeadLetters, envelope: &Envelope) {
    debug_assert!(envelope.stream_id.starts_with(DEAD_LETTER_STREAM_PREFIX));
    match decode::<OperationsEvent>(envelope) {
        Ok(event) => letters.apply(&event, Some(envelope.occurred_at)),
        Err(e) => {
            tracing::warn!(stream_id = %envelope.stream_id, sequence = envelope.sequence, error_kind = ?e.classify(), "dead-letter event does not decode; ignored");
        }
    }
}

/// A stable id for an event derived from another, so a repeated write is
/// refused by the store as a duplicate.
fn derived_id(event_id: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&event_id, what.as_bytes())
}

fn to_new_event(
    stream_id: &str,
    event: &OperationsEvent,
    event_id: Uuid,
) -> Result<NewEvent, mskflow_eventlog::Error> {
    let mut new = mskflow_eventlog::new_event(event, mskflow_events::SCHEMA_VERSION, Utc::now())
        .map_err(|e| mskflow_eventlog::Error::InvalidAppend {
            stream_id: stream_id.to_owned(),
            reason: format!("cannot encode {}: {:?}", event.event_type(), e.classify()),
        })?;
    new.event_id = event_id;
    Ok(new)
}

/// Append one consumer-written event (single writer: `ExpectedVersion::Any`),
/// retrying store failures until the store answers or closes. A duplicate
/// (the same write repeated after a restart) counts as written.
async fn append_retrying(
    log: &dyn EventLog,
    stream_id: &str,
    event: &OperationsEvent,
    event_id: Uuid,
    metadata: &Metadata,
) -> Result<(), mskflow_eventlog::Error> {
    let new = to_new_event(stream_id, event, event_id)?;
    loop {
        match log
            .append(stream_id, ExpectedVersion::Any, vec![new.clone()], metadata)
            .await
        {
            Ok(_) | Err(mskflow_eventlog::Error::DuplicateEvent { .. }) => return Ok(()),
            Err(e @ mskflow_eventlog::Error::Unavailable { .. }) => {
                tracing::warn!(stream_id, error = %e, "store failure writing a dead letter; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use mskflow_eventlog_sqlite::{Options, SqliteEventLog};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn store(dir: &tempfile::TempDir) -> Result<Arc<dyn EventLog>, Box<dyn std::error::Error>> {
        let log = SqliteEventLog::open(Options {
            path: dir.path().join("log.db"),
            ..Options::default()
        })?;
        Ok(Arc::new(log))
    }

    async fn poison(log: &dyn EventLog) -> Result<Envelope, Box<dyn std::error::Error>> {
        let event = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "AssessmentCompleted".to_owned(),
            schema_version: 1,
            occurred_at: Utc::now(),
            payload: serde_json::json!({"not": "an assessment"}),
        };
        let stream = format!("assessment-{}", Uuid::new_v4());
        log.append(
            &stream,
            ExpectedVersion::Any,
            vec![event],
            &Metadata::default(),
        )
        .await?;
        Ok(log.read_stream(&stream, 1).await?.remove(0))
    }

    #[tokio::test]
    async fn record_retry_and_discard_through_the_store() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = store(&dir)?;
        let queue = DeadLetterQueue::new(log.clone(), "scheduling");
        let bad = poison(log.as_ref()).await?;
        let meta = Metadata::default();

        assert!(
            queue
                .record(&bad, "Data error at line 1 column 2", &meta)
                .await?
        );
        // A redelivery is not recorded twice.
        assert!(!queue.record(&bad, "again", &meta).await?);
        let letters = load_all(log.as_ref(), &["scheduling", "outcomes"]).await?;
        assert_eq!(letters.open_count("scheduling"), 1);

        // No retry pending: nothing happens.
        let outcome = queue
            .retry::<mskflow_eventlog::Error, _>(
                &DeadLetterRetryRequested {
                    consumer: "scheduling".into(),
                    event_id: bad.event_id,
                    requested_by: "ops".into(),
                },
                &meta,
                async |_| Ok(Ok(())),
            )
            .await?;
        assert_eq!(outcome, RetryOutcome::NothingPending);

        // A retry that fails again counts one more attempt.
        assert_eq!(
            request_retry(log.as_ref(), "scheduling", bad.event_id, "ops").await?,
            Ok(())
        );
        let stream = log.read_stream("deadletter-scheduling", 1).await?;
        let request = queue
            .retry_request(stream.last().unwrap())
            .ok_or("a retry request")?;
        let outcome = queue
            .retry::<mskflow_eventlog::Error, _>(&request, &meta, async |original| {
                assert_eq!(original.event_id, bad.event_id);
                Ok(Err("still broken".to_owned()))
            })
            .await?;
        assert_eq!(outcome, RetryOutcome::FailedAgain { attempts: 2 });

        // A retry that succeeds resolves it.
        request_retry(log.as_ref(), "scheduling", bad.event_id, "ops").await??;
        let outcome = queue
            .retry::<mskflow_eventlog::Error, _>(&request, &meta, async |_| Ok(Ok(())))
            .await?;
        assert_eq!(outcome, RetryOutcome::Resolved);
        assert_eq!(queue.load().await?.open_count("scheduling"), 0);

        // Closed dead letters refuse operators' commands.
        assert_eq!(
            discard(log.as_ref(), "scheduling", bad.event_id, "x", "ops").await?,
            Err(Refused::NotOpen(DeadLetterStatus::Resolved))
        );
        assert_eq!(
            discard(log.as_ref(), "scheduling", Uuid::new_v4(), "x", "ops").await?,
            Err(Refused::Unknown)
        );

        // A retry request for another consumer is not ours.
        let other = DeadLetterQueue::new(log.clone(), "outcomes");
        assert!(other.retry_request(stream.last().unwrap()).is_none());
        Ok(())
    }

    #[test]
    fn metadata_falls_back_to_the_envelope_trace_context() {
        let envelope = Envelope {
            event_id: Uuid::new_v4(),
            stream_id: "referral-1".into(),
            sequence: 1,
            position: 9,
            occurred_at: Utc::now(),
            recorded_at: Utc::now(),
            causation_id: None,
            correlation_id: Uuid::new_v4(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("a=b".into()),
            event_type: "ReferralTriaged".into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
        };
        let span = consume_span("assessment", &envelope);
        let meta = metadata_for(&span, &envelope);
        assert_eq!(meta.causation_id, Some(envelope.event_id));
        assert_eq!(meta.correlation_id, envelope.correlation_id);
        assert_eq!(meta.traceparent, envelope.traceparent);
        assert_eq!(meta.tracestate, envelope.tracestate);
        assert_eq!(with_trace_of(&span, &envelope), envelope);
    }
}
