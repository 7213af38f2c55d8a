//! The `scheduling` consumer: puts patients on the rehab waiting list when
//! their FCP assessment chose 1:1 physiotherapy, a group programme
//! (ESCAPE-pain) or strength and balance.
//!
//! Delivery is at-least-once. A redelivered `AssessmentCompleted` finds the
//! episode already there (`AlreadyExists`) and is skipped: one episode per
//! referral. The checkpoint is committed only after a batch is handled.
//!
//! Each event is handled in a `consume` span continuing the trace of its
//! envelope. An event that can never be handled is set aside on
//! `deadletter-scheduling` (see `mskflow-consumer`), and operators' retry
//! requests on that stream are carried out here.

use std::sync::Arc;

use mskflow_eventlog::{Envelope, decode};
use mskflow_events::assessment::{AssessmentEvent, GroupProgramme, Outcome};
use mskflow_events::scheduling::{PatientChoices, PatientWaitlisted, Programme};
use uuid::Uuid;

use crate::Error;
use crate::domain::DomainError;
use crate::service::{Rejection, Scheduling};

/// The consumer's name (its checkpoint in the log).
pub const CONSUMER: &str = "scheduling";

/// What handling one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The patient joined the waiting list for this programme.
    Waitlisted {
        referral_id: Uuid,
        programme: Programme,
    },
    /// Already on the list (a redelivery).
    AlreadyWaitlisted { referral_id: Uuid },
    /// Not an event (or an outcome) this consumer acts on.
    Ignored,
}

/// The rehab programme an assessment outcome asks for, if any, with its
/// course length.
pub fn programme_for(outcome: &Outcome, one_to_one_sessions: u32) -> Option<(Programme, u32)> {
    match outcome {
        Outcome::CommunityPhysiotherapy => Some((Programme::OneToOne, one_to_one_sessions)),
        Outcome::GroupProgramme {
            programme: GroupProgramme::EscapePain,
        } => Some((Programme::EscapePain, 12)),
        Outcome::StrengthAndBalance => Some((Programme::StrengthAndBalance, 12)),
        _ => None,
    }
}

/// The durable `scheduling` consumer.
pub type Consumer = mskflow_consumer::Durable<Waitlister>;

/// Subscribe as [`CONSUMER`] from the stored checkpoint.
pub async fn open(scheduling: Arc<Scheduling>) -> Result<Consumer, Error> {
    let log = scheduling.log().clone();
    Ok(Consumer::open(log, CONSUMER, Waitlister { scheduling }).await?)
}

/// What the consumer does with an assessment outcome: put the patient on
/// the rehab waiting list.
#[derive(Debug)]
pub struct Waitlister {
    scheduling: Arc<Scheduling>,
}

impl Waitlister {
    /// The priority and pathway the assessment episode was opened with.
    async fn episode_request(
        &self,
        referral_id: Uuid,
    ) -> Result<
        Option<(
            mskflow_events::types::FcpPriority,
            mskflow_events::types::Pathway,
        )>,
        Error,
    > {
        let events = self
            .scheduling
            .log()
            .read_stream(&format!("assessment-{referral_id}"), 1)
            .await?;
        for e in &events {
            if e.event_type == "AssessmentRequested"
                && let Ok(AssessmentEvent::AssessmentRequested(r)) = decode::<AssessmentEvent>(e)
            {
                return Ok(Some((r.priority, r.pathway)));
            }
        }
        Ok(None)
    }

    /// Handle one event.
    pub async fn handle(&self, envelope: &Envelope) -> Result<Handled, Error> {
        if envelope.event_type != "AssessmentCompleted" {
            return Ok(Handled::Ignored);
        }
        let AssessmentEvent::AssessmentCompleted(done) =
            decode::<AssessmentEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?
        else {
            return Ok(Handled::Ignored);
        };
        let policy = self.scheduling.policy();
        // One rehab episode per referral: the first rehab outcome chosen.
        let Some((programme, sessions)) = done
            .outcomes
            .iter()
            .find_map(|o| programme_for(o, policy.one_to_one_sessions))
        else {
            return Ok(Handled::Ignored);
        };
        let referral_id = done.referral_id;
        let Some((priority, pathway)) = self.episode_request(referral_id).await? else {
            tracing::warn!(%referral_id, "assessment completed without a request on its stream; skipped");
            return Ok(Handled::Ignored);
        };
        let waitlisted = PatientWaitlisted {
            referral_id,
            priority,
            pathway,
            programme,
            sessions,
            need_recorded_at: envelope.occurred_at,
            choices: PatientChoices::default(),
        };
        match self.scheduling.add_to_waiting_list(waitlisted).await? {
            Ok(_) => {
                tracing::info!(%referral_id, programme = %programme, "patient waitlisted for rehab");
                Ok(Handled::Waitlisted {
                    referral_id,
                    programme,
                })
            }
            Err(Rejection::Domain(DomainError::AlreadyExists { .. })) => {
                Ok(Handled::AlreadyWaitlisted { referral_id })
            }
            Err(other) => {
                tracing::error!(%referral_id, error = %other, "rehab waiting list refused the patient");
                Ok(Handled::Ignored)
            }
        }
    }
}

impl mskflow_consumer::EventHandler for Waitlister {
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
