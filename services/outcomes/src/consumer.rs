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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mskflow_eventlog::{Envelope, StartFrom, Subscription};

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
}

impl Consumer {
    /// Subscribe as [`CONSUMER`] from the stored checkpoint.
    pub async fn open(outcomes: Arc<Outcomes>) -> Result<Self, Error> {
        let sub = outcomes
            .log()
            .subscribe(CONSUMER, StartFrom::Checkpoint)
            .await?;
        Ok(Self { outcomes, sub })
    }

    /// Handle one event, retrying store failures until they pass. An event
    /// that can never be handled is logged and skipped so it cannot stop
    /// every referral behind it.
    async fn handle_retrying(&self, envelope: &Envelope) -> Result<Handled, Error> {
        loop {
            match self.outcomes.handle_event(envelope).await {
                Ok(h) => return Ok(h),
                Err(Error::Store(mskflow_eventlog::Error::Closed)) => {
                    return Err(Error::Store(mskflow_eventlog::Error::Closed));
                }
                Err(e @ (Error::Store(_) | Error::Conflict { .. })) => {
                    tracing::warn!(position = envelope.position, error = %e, "store failure; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => {
                    tracing::error!(position = envelope.position, stream_id = %envelope.stream_id, event_type = %envelope.event_type, error = %e, "event cannot be handled; skipped");
                    return Ok(Handled::Ignored);
                }
            }
        }
    }

    /// Handle a batch (durably); does not commit.
    async fn handle_batch(&self, batch: &[Envelope]) -> Result<Vec<Handled>, Error> {
        let mut handled = Vec::with_capacity(batch.len());
        for envelope in batch {
            handled.push(self.handle_retrying(envelope).await?);
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
