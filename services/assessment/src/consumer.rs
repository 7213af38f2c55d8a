//! The `assessment` consumer: turns intake's `ReferralTriaged` into
//! `AssessmentRequested` on the referral's episode stream.
//!
//! Delivery is at-least-once. The append uses `ExpectedVersion::NoStream`,
//! so a triage delivered again (after a restart without commit) finds the
//! episode already there and is skipped: exactly one episode per referral.
//! The checkpoint is committed only after every event of the batch has been
//! handled durably.
//!
//! Each event is handled in a `consume` span continuing the trace of its
//! envelope. An event that can never be handled is set aside on
//! `deadletter-assessment` (see `mskflow-consumer`), and operators' retry
//! requests on that stream are carried out here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mskflow_consumer::DeadLetterQueue;
use mskflow_eventlog::{Envelope, ExpectedVersion, StartFrom, Subscription, decode};
use mskflow_events::intake::IntakeEvent;
use tracing::Span;
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Command, EpisodeState};
use crate::service::{Assessment, stream_id};

/// The consumer's name (its checkpoint in the log).
pub const CONSUMER: &str = "assessment";
/// Events per batch.
const BATCH: usize = 256;
/// Pause before retrying a store failure.
const RETRY: Duration = Duration::from_millis(250);

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// An episode was opened.
    Requested { referral_id: Uuid, position: u64 },
    /// The episode already existed (a redelivery).
    AlreadyRequested { referral_id: Uuid },
    /// Not an event this consumer acts on.
    Ignored,
}

/// The consumer, subscribed from its checkpoint.
#[derive(Debug)]
pub struct Consumer {
    assessment: Arc<Assessment>,
    sub: Box<dyn Subscription>,
    dead_letters: DeadLetterQueue,
}

impl Consumer {
    /// Subscribe as [`CONSUMER`] from the stored checkpoint.
    pub async fn open(assessment: Arc<Assessment>) -> Result<Self, Error> {
        let sub = assessment
            .log()
            .subscribe(CONSUMER, StartFrom::Checkpoint)
            .await?;
        let dead_letters = DeadLetterQueue::new(assessment.log().clone(), CONSUMER);
        Ok(Self {
            assessment,
            sub,
            dead_letters,
        })
    }

    /// Handle one event. Appended events carry the current span's trace
    /// context (the envelope's if the span is not traced).
    pub async fn handle(&self, envelope: &Envelope) -> Result<Handled, Error> {
        if envelope.event_type != "ReferralTriaged" {
            return Ok(Handled::Ignored);
        }
        let IntakeEvent::ReferralTriaged(triaged) =
            decode::<IntakeEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?
        else {
            return Ok(Handled::Ignored);
        };
        let referral_id = triaged.referral_id;
        let events = match domain::handle(
            &EpisodeState::default(),
            Command::Request {
                referral_id,
                priority: triaged.priority,
                pathway: triaged.pathway,
                triaged_at: envelope.occurred_at,
            },
            self.assessment.policy(),
        ) {
            Ok(events) => events,
            Err(e) => {
                return Err(Error::Invariant(format!(
                    "a new episode refused its request: {e}"
                )));
            }
        };
        let new_events = events
            .iter()
            .map(|e| {
                mskflow_eventlog::new_event(e, mskflow_events::SCHEMA_VERSION, envelope.occurred_at)
                    .map_err(|source| Error::Encode {
                        event_type: e.event_type(),
                        reason: crate::json_error_reason(&source),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = mskflow_consumer::metadata_for(&Span::current(), envelope);
        match self
            .assessment
            .log()
            .append(
                &stream_id(referral_id),
                ExpectedVersion::NoStream,
                new_events,
                &metadata,
            )
            .await
        {
            Ok(appended) => {
                tracing::info!(%referral_id, priority = %triaged.priority, pathway = %triaged.pathway, "assessment requested");
                Ok(Handled::Requested {
                    referral_id,
                    position: appended.position,
                })
            }
            Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                tracing::debug!(%referral_id, "triage already handled");
                Ok(Handled::AlreadyRequested { referral_id })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Handle one event in its `consume` span: carry out a retry request
    /// for this consumer, or handle the event (store failures retried until
    /// they pass) and dead-letter it if it can never be handled, so it
    /// cannot stop every referral behind it.
    async fn consume(&self, envelope: &Envelope) -> Result<Handled, Error> {
        mskflow_consumer::consume(self, &self.dead_letters, envelope).await
    }

    /// Handle a batch, then wait until the read model has seen what it
    /// appended. Does not commit.
    async fn handle_batch(&self, batch: &[Envelope]) -> Result<Vec<Handled>, Error> {
        let mut handled = Vec::with_capacity(batch.len());
        let mut position = 0;
        for envelope in batch {
            let h = self.consume(envelope).await?;
            if let Handled::Requested { position: p, .. } = h {
                position = position.max(p);
            }
            handled.push(h);
        }
        if position > 0 {
            self.assessment.wait_for(position).await?;
        }
        Ok(handled)
    }

    /// Handle every event available now, without committing.
    pub async fn process_available(&mut self) -> Result<Vec<Handled>, Error> {
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
    pub async fn commit(&mut self) -> Result<(), Error> {
        Ok(self.sub.commit().await?)
    }

    /// Consume until `shutdown` completes; commit after each batch.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        tokio::pin!(shutdown);
        tracing::info!(consumer = CONSUMER, "assessment consumer started");
        loop {
            let batch = tokio::select! {
                () = &mut shutdown => break,
                batch = self.sub.next_batch(BATCH) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(mskflow_eventlog::Error::Closed) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer cannot read the log; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            // A batch in hand is finished before shutdown is honoured, so
            // its checkpoint can be committed.
            match self.handle_batch(&batch).await {
                Ok(_) => {}
                Err(Error::Store(mskflow_eventlog::Error::Closed)) => break,
                Err(e) => return Err(e),
            }
            match self.sub.commit().await {
                Ok(()) => {}
                Err(mskflow_eventlog::Error::Closed) => break,
                // Not committed: the batch is delivered again and handled
                // idempotently (a broker outage must not stop the consumer).
                Err(e) => {
                    tracing::warn!(error = %e, "assessment consumer could not commit; events will be redelivered")
                }
            }
        }
        tracing::info!(consumer = CONSUMER, "assessment consumer stopped");
        Ok(())
    }
}

impl mskflow_consumer::EventHandler for Consumer {
    type Handled = Handled;
    type Error = Error;

    fn handle_event(
        &self,
        envelope: &Envelope,
    ) -> impl std::future::Future<Output = Result<Handled, Error>> + Send {
        self.handle(envelope)
    }

    fn classify(error: &Error) -> mskflow_consumer::Failure {
        match error {
            Error::Store(mskflow_eventlog::Error::Closed) => mskflow_consumer::Failure::Stop,
            Error::Store(_) => mskflow_consumer::Failure::Retry,
            _ => mskflow_consumer::Failure::Poison,
        }
    }

    fn ignored() -> Handled {
        Handled::Ignored
    }
}
