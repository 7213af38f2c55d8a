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

use std::sync::Arc;

use mskflow_eventlog::{Envelope, ExpectedVersion, decode};
use mskflow_events::intake::IntakeEvent;
use tracing::Span;
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Command, EpisodeState};
use crate::service::{Assessment, stream_id};

/// The consumer's name (its checkpoint in the log).
pub const CONSUMER: &str = "assessment";

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

/// The durable `assessment` consumer.
pub type Consumer = mskflow_consumer::Durable<Requester>;

/// Subscribe as [`CONSUMER`] from the stored checkpoint.
pub async fn open(assessment: Arc<Assessment>) -> Result<Consumer, Error> {
    let log = assessment.log().clone();
    Ok(Consumer::open(log, CONSUMER, Requester { assessment }).await?)
}

/// What the consumer does with a triage: request the FCP assessment.
#[derive(Debug)]
pub struct Requester {
    assessment: Arc<Assessment>,
}

impl Requester {
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
}

impl mskflow_consumer::EventHandler for Requester {
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

    /// Wait until the worklist has seen every episode the batch requested.
    async fn after_batch(&self, handled: &[Handled]) -> Result<(), Error> {
        let position = handled
            .iter()
            .filter_map(|h| match h {
                Handled::Requested { position, .. } => Some(*position),
                _ => None,
            })
            .max();
        if let Some(position) = position {
            self.assessment.wait_for(position).await?;
        }
        Ok(())
    }
}
