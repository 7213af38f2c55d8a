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

use std::sync::Arc;

use mskflow_eventlog::Envelope;
use tracing::Span;

use crate::Error;
use crate::service::{Handled, Outcomes};

/// The consumer's name (its checkpoint in the log).
pub const CONSUMER: &str = "outcomes";

/// The durable `outcomes` consumer.
pub type Consumer = mskflow_consumer::Durable<Scheduler>;

/// Subscribe as [`CONSUMER`] from the stored checkpoint.
pub async fn open(outcomes: Arc<Outcomes>) -> Result<Consumer, Error> {
    let log = outcomes.log().clone();
    Ok(Consumer::open(log, CONSUMER, Scheduler { outcomes }).await?)
}

/// What the consumer does with an event: schedule questionnaires.
#[derive(Debug)]
pub struct Scheduler {
    outcomes: Arc<Outcomes>,
}

impl mskflow_consumer::EventHandler for Scheduler {
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
