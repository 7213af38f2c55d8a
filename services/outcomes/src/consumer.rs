//! The `outcomes` consumer: schedules questionnaires from the assessment
//! and scheduling services' events.
//!
//! It reads events by type name (`AssessmentRequested`, `AssessmentBooked`,
//! `EpisodeDischarged`, `RehabDischarged`, `CourseCompleted`) and the
//! referral id from the payload's `referral_id`, so it does not depend on
//! those services' types. Delivery is at-least-once: each triggering event's
//! id is recorded with the schedule it caused and appends check the stream
//! version, so an event delivered twice schedules once. The checkpoint is
//! committed only after every event of the batch is durable.
//!
//! Each event is handled in a `consume` span continuing the trace of its
//! envelope; the questionnaires it schedules carry that span's trace
//! context. An event that can never be handled is set aside on
//! `deadletter-outcomes` (see `mskflow-consumer`), and operators' retry
//! requests on that stream are carried out here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mskflow_consumer::DeadLetterQueue;
use mskflow_eventlog::{Envelope, StartFrom, Subscription};
use tracing::Span;

use crate::Error;
use crate::service::{Handled, Outcomes};

/// The consumer's name (its checkpoint in the log).
pub const CONSUMER: &str = "outcomes";
/// Events per batch.
const BATCH: usize = 256;
/// Pause before retrying a store failure.
const RETRY: Duration = Duration::from_millis(250);

/// The consumer, subscribed from its checkpoint.
#[derive(Debug)]
pub struct Consumer {
    outcomes: Arc<Outcomes>,
    sub: Box<dyn Subscription>,
    dead_letters: DeadLetterQueue,
}

impl Consumer {
    /// Subscribe as [`CONSUMER`] from the stored checkpoint.
    pub async fn open(outcomes: Arc<Outcomes>) -> Result<Self, Error> {
        let sub = outcomes
            .log()
            .subscribe(CONSUMER, StartFrom::Checkpoint)
            .await?;
        let dead_letters = DeadLetterQueue::new(outcomes.log().clone(), CONSUMER);
        Ok(Self {
            outcomes,
            sub,
            dead_letters,
        })
    }

    /// Handle one event in its `consume` span: carry out a retry request
    /// for this consumer, or handle the event (store failures retried until
    /// they pass) and dead-letter it if it can never be handled, so it
    /// cannot stop every referral behind it.
    async fn consume(&self, envelope: &Envelope) -> Result<Handled, Error> {
        mskflow_consumer::consume(self, &self.dead_letters, envelope).await
    }

    /// Handle a batch (durably); does not commit.
    async fn handle_batch(&self, batch: &[Envelope]) -> Result<Vec<Handled>, Error> {
        let mut handled = Vec::with_capacity(batch.len());
        for envelope in batch {
            handled.push(self.consume(envelope).await?);
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
        tracing::info!(consumer = CONSUMER, "outcomes consumer started");
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
            match self.handle_batch(&batch).await {
                Ok(_) => {}
                Err(Error::Store(mskflow_eventlog::Error::Closed)) => break,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.sub.commit().await {
                if matches!(e, mskflow_eventlog::Error::Closed) {
                    break;
                }
                // Not committed: the batch is delivered again and handled
                // idempotently.
                tracing::warn!(error = %e, "consumer commit failed");
            }
        }
        tracing::info!(consumer = CONSUMER, "outcomes consumer stopped");
        Ok(())
    }
}

impl mskflow_consumer::EventHandler for Consumer {
    type Handled = Handled;
    type Error = Error;

    async fn handle_event(&self, envelope: &Envelope) -> Result<Handled, Error> {
        self.outcomes
            .handle_event(&mskflow_consumer::with_trace_of(&Span::current(), envelope))
            .await
    }

    fn classify(error: &Error) -> mskflow_consumer::Failure {
        match error {
            Error::Store(mskflow_eventlog::Error::Closed) => mskflow_consumer::Failure::Stop,
            Error::Store(_) | Error::Conflict { .. } => mskflow_consumer::Failure::Retry,
            _ => mskflow_consumer::Failure::Poison,
        }
    }

    fn ignored() -> Handled {
        Handled::Ignored
    }
}
