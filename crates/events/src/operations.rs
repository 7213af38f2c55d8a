//! Events of the operations streams: dead letters.
//!
//! `deadletter-{consumer}`: one stream per durable consumer
//! ([`OperationsEvent`]). An event the consumer can never handle (it does not
//! decode, or its handler refuses it for good) is recorded here instead of
//! stopping the consumer; operators list, retry and discard dead letters.
//!
//! No event here carries payload contents of the event it refers to: the
//! `reason` names the kind and place of the failure only, never patient data.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of the dead-letter streams.
pub const DEAD_LETTER_STREAM_PREFIX: &str = "deadletter-";

/// The dead-letter stream of a consumer: `deadletter-{consumer}`.
pub fn dead_letter_stream(consumer: &str) -> String {
    format!("{DEAD_LETTER_STREAM_PREFIX}{consumer}")
}

/// A consumer could not handle an event and set it aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventDeadLettered {
    /// The consumer that failed.
    pub consumer: String,
    /// The id of the event it could not handle.
    pub event_id: Uuid,
    /// Where that event is stored: its stream, sequence and log position.
    pub stream_id: String,
    pub sequence: u64,
    pub position: u64,
    /// The type of the event it could not handle.
    pub event_type: String,
    /// Why, without payload contents (e.g. a decode error's category and
    /// place).
    pub reason: String,
    /// How many times handling was tried (1 for the first failure; each
    /// failed retry adds one).
    pub attempts: u32,
}

/// An operator asked the consumer to try a dead letter again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterRetryRequested {
    pub consumer: String,
    pub event_id: Uuid,
    /// Who asked (an operator's user name).
    pub requested_by: String,
}

/// A retried dead letter was handled: it is no longer open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterResolved {
    pub consumer: String,
    pub event_id: Uuid,
}

/// An operator decided a dead letter will never be handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterDiscarded {
    pub consumer: String,
    pub event_id: Uuid,
    /// The operator's reason (must not quote patient data).
    pub reason: String,
    /// Who discarded it.
    pub discarded_by: String,
}

/// Events of the dead-letter streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum OperationsEvent {
    EventDeadLettered(EventDeadLettered),
    DeadLetterRetryRequested(DeadLetterRetryRequested),
    DeadLetterResolved(DeadLetterResolved),
    DeadLetterDiscarded(DeadLetterDiscarded),
}

impl OperationsEvent {
    /// The event type name (the envelope's `event_type`).
    pub fn event_type(&self) -> &'static str {
        match self {
            OperationsEvent::EventDeadLettered(_) => "EventDeadLettered",
            OperationsEvent::DeadLetterRetryRequested(_) => "DeadLetterRetryRequested",
            OperationsEvent::DeadLetterResolved(_) => "DeadLetterResolved",
            OperationsEvent::DeadLetterDiscarded(_) => "DeadLetterDiscarded",
        }
    }

    /// The consumer the event is about.
    pub fn consumer(&self) -> &str {
        match self {
            OperationsEvent::EventDeadLettered(e) => &e.consumer,
            OperationsEvent::DeadLetterRetryRequested(e) => &e.consumer,
            OperationsEvent::DeadLetterResolved(e) => &e.consumer,
            OperationsEvent::DeadLetterDiscarded(e) => &e.consumer,
        }
    }

    /// The id of the dead-lettered event the event is about.
    pub fn event_id(&self) -> Uuid {
        match self {
            OperationsEvent::EventDeadLettered(e) => e.event_id,
            OperationsEvent::DeadLetterRetryRequested(e) => e.event_id,
            OperationsEvent::DeadLetterResolved(e) => e.event_id,
            OperationsEvent::DeadLetterDiscarded(e) => e.event_id,
        }
    }

    /// Every operations event type name.
    pub const TYPES: &'static [&'static str] = &[
        "EventDeadLettered",
        "DeadLetterRetryRequested",
        "DeadLetterResolved",
        "DeadLetterDiscarded",
    ];
}

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterStatus {
    /// Set aside; waiting for an operator.
    Open,
    /// An operator asked for a retry that has not finished yet.
    RetryRequested,
    /// A retry succeeded.
    Resolved,
    /// An operator discarded it.
    Discarded,
}

impl DeadLetterStatus {
    /// Open dead letters need an operator (or a retry is on its way).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            DeadLetterStatus::Open | DeadLetterStatus::RetryRequested
        )
    }
}

/// One dead letter as folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The latest failure recorded.
    pub last: EventDeadLettered,
    /// When it was last dead-lettered.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub status: DeadLetterStatus,
}

/// The dead letters of one or more consumers, folded from their streams.
///
/// Keyed by consumer and event id. A dead letter is open from its
/// `EventDeadLettered` until a `DeadLetterResolved` or `DeadLetterDiscarded`;
/// a later `EventDeadLettered` (a failed retry) opens it again with the new
/// attempt count. Events about an unknown dead letter are ignored, and
/// applying an event twice changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    letters: BTreeMap<(String, Uuid), DeadLetter>,
}

impl DeadLetters {
    /// Fold one event (with the time it occurred, if known).
    pub fn apply(&mut self, event: &OperationsEvent, at: Option<DateTime<Utc>>) {
        let key = (event.consumer().to_owned(), event.event_id());
        match event {
            OperationsEvent::EventDeadLettered(e) => {
                self.letters.insert(
                    key,
                    DeadLetter {
                        last: e.clone(),
                        dead_lettered_at: at,
                        status: DeadLetterStatus::Open,
                    },
                );
            }
            OperationsEvent::DeadLetterRetryRequested(_) => {
                if let Some(d) = self.letters.get_mut(&key)
                    && d.status == DeadLetterStatus::Open
                {
                    d.status = DeadLetterStatus::RetryRequested;
                }
            }
            OperationsEvent::DeadLetterResolved(_) => {
                if let Some(d) = self.letters.get_mut(&key) {
                    d.status = DeadLetterStatus::Resolved;
                }
            }
            OperationsEvent::DeadLetterDiscarded(_) => {
                if let Some(d) = self.letters.get_mut(&key)
                    && d.status.is_open()
                {
                    d.status = DeadLetterStatus::Discarded;
                }
            }
        }
    }

    /// A dead letter by consumer and event id, whatever its status.
    pub fn get(&self, consumer: &str, event_id: Uuid) -> Option<&DeadLetter> {
        self.letters.get(&(consumer.to_owned(), event_id))
    }

    /// Every dead letter ever recorded, by consumer then event id.
    pub fn all(&self) -> impl Iterator<Item = &DeadLetter> {
        self.letters.values()
    }

    /// The open dead letters, by consumer then event id.
    pub fn open(&self) -> impl Iterator<Item = &DeadLetter> {
        self.all().filter(|d| d.status.is_open())
    }

    /// How many dead letters of `consumer` are open.
    pub fn open_count(&self, consumer: &str) -> usize {
        self.open().filter(|d| d.last.consumer == consumer).count()
    }
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "EventDeadLettered",
            schemars::schema_for!(EventDeadLettered),
        ),
        (
            "DeadLetterRetryRequested",
            schemars::schema_for!(DeadLetterRetryRequested),
        ),
        (
            "DeadLetterResolved",
            schemars::schema_for!(DeadLetterResolved),
        ),
        (
            "DeadLetterDiscarded",
            schemars::schema_for!(DeadLetterDiscarded),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_lettered(consumer: &str, event_id: Uuid, attempts: u32) -> OperationsEvent {
        OperationsEvent::EventDeadLettered(EventDeadLettered {
            consumer: consumer.to_owned(),
            event_id,
            stream_id: "assessment-x".to_owned(),
            sequence: 3,
            position: 42,
            event_type: "AssessmentCompleted".to_owned(),
            reason: "Data error at line 1 column 2".to_owned(),
            attempts,
        })
    }

    fn retry(consumer: &str, event_id: Uuid) -> OperationsEvent {
        OperationsEvent::DeadLetterRetryRequested(DeadLetterRetryRequested {
            consumer: consumer.to_owned(),
            event_id,
            requested_by: "ops".to_owned(),
        })
    }

    fn resolved(consumer: &str, event_id: Uuid) -> OperationsEvent {
        OperationsEvent::DeadLetterResolved(DeadLetterResolved {
            consumer: consumer.to_owned(),
            event_id,
        })
    }

    fn discarded(consumer: &str, event_id: Uuid) -> OperationsEvent {
        OperationsEvent::DeadLetterDiscarded(DeadLetterDiscarded {
            consumer: consumer.to_owned(),
            event_id,
            reason: "superseded".to_owned(),
            discarded_by: "ops".to_owned(),
        })
    }

    fn fold(events: &[OperationsEvent]) -> DeadLetters {
        let mut letters = DeadLetters::default();
        for e in events {
            letters.apply(e, None);
        }
        letters
    }

    #[test]
    fn a_dead_lettered_event_is_open() {
        let id = Uuid::new_v4();
        let letters = fold(&[dead_lettered("scheduling", id, 1)]);
        let open: Vec<_> = letters.open().collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].last.event_id, id);
        assert_eq!(open[0].last.attempts, 1);
        assert_eq!(letters.open_count("scheduling"), 1);
        assert_eq!(letters.open_count("outcomes"), 0);
    }

    #[test]
    fn a_retry_request_keeps_it_open_and_a_resolution_closes_it() {
        let id = Uuid::new_v4();
        let mut letters = fold(&[dead_lettered("scheduling", id, 1), retry("scheduling", id)]);
        assert_eq!(
            letters.get("scheduling", id).map(|d| d.status),
            Some(DeadLetterStatus::RetryRequested)
        );
        assert_eq!(letters.open_count("scheduling"), 1);
        letters.apply(&resolved("scheduling", id), None);
        assert_eq!(letters.open_count("scheduling"), 0);
        assert_eq!(
            letters.get("scheduling", id).map(|d| d.status),
            Some(DeadLetterStatus::Resolved)
        );
    }

    #[test]
    fn a_failed_retry_reopens_with_more_attempts() {
        let id = Uuid::new_v4();
        let letters = fold(&[
            dead_lettered("scheduling", id, 1),
            retry("scheduling", id),
            dead_lettered("scheduling", id, 2),
        ]);
        let d = letters.get("scheduling", id);
        assert_eq!(d.map(|d| d.status), Some(DeadLetterStatus::Open));
        assert_eq!(d.map(|d| d.last.attempts), Some(2));
        assert_eq!(letters.open().count(), 1);
    }

    #[test]
    fn a_discarded_dead_letter_is_closed_and_stays_so() {
        let id = Uuid::new_v4();
        let letters = fold(&[
            dead_lettered("outcomes", id, 1),
            discarded("outcomes", id),
            // A late retry request or resolution does not reopen it.
            retry("outcomes", id),
            discarded("outcomes", id),
        ]);
        assert_eq!(letters.open().count(), 0);
        assert_eq!(
            letters.get("outcomes", id).map(|d| d.status),
            Some(DeadLetterStatus::Discarded)
        );
    }

    #[test]
    fn consumers_are_kept_apart_and_unknown_letters_ignored() {
        let id = Uuid::new_v4();
        let letters = fold(&[
            dead_lettered("scheduling", id, 1),
            dead_lettered("outcomes", id, 1),
            discarded("scheduling", id),
            resolved("assessment", Uuid::new_v4()),
        ]);
        assert_eq!(letters.open_count("scheduling"), 0);
        assert_eq!(letters.open_count("outcomes"), 1);
        assert_eq!(letters.all().count(), 2);
    }

    #[test]
    fn events_round_trip_adjacently_tagged() -> Result<(), serde_json::Error> {
        let e = dead_lettered("scheduling", Uuid::new_v4(), 1);
        let value = serde_json::to_value(&e)?;
        assert_eq!(value["type"], "EventDeadLettered");
        assert_eq!(value["data"]["attempts"], 1);
        assert_eq!(serde_json::from_value::<OperationsEvent>(value)?, e);
        for t in OperationsEvent::TYPES {
            assert!(schemas().iter().any(|(n, _)| n == t), "{t} has no schema");
        }
        Ok(())
    }
}
