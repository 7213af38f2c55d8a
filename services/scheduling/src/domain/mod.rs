//! The scheduling aggregates: pure decision (`handle`) and evolution (`apply`).
//!
//! - [`capacity`]: venues, group classes (with their enrolments) and
//!   clinicians' 1:1 slots: the records whose capacity is contended.
//! - [`episode`]: a patient's rehab episode, from the waiting list to
//!   completion or discharge.
//!
//! No I/O and no clock here: times come in the commands, and whatever a
//! decision needs to know about another aggregate (a class's venue and days,
//! a slot's mode) is looked up by the service layer and passed in.

use mskflow_events::scheduling::{Programme, SchedulingEvent};
use serde::Deserialize;
use uuid::Uuid;

pub mod capacity;
pub mod episode;

pub use capacity::{
    ClassCommand, ClassSpec, ClassState, SlotCommand, SlotState, VenueCommand, VenueState,
    course_dates,
};
pub use episode::{EpisodeCommand, EpisodeState, EpisodeStatus, PlaceInfo, SessionStatus};

/// Local scheduling rules (*configurable*).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Sessions a patient may miss; reaching it ends the episode (DNA).
    pub max_missed_sessions: u32,
    /// Whether the referrer is told when the DNA policy ends an episode.
    pub notify_referrer_on_dna: bool,
    /// Places in a class when the class does not say.
    pub default_class_size: u32,
    /// The largest class that may be scheduled.
    pub max_class_size: u32,
    /// Sessions of a 1:1 course when the request does not say.
    pub one_to_one_sessions: u32,
    /// Attempts at an append that loses an optimistic-concurrency race
    /// before the request is refused.
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_missed_sessions: 2,
            notify_referrer_on_dna: true,
            default_class_size: 10,
            max_class_size: 12,
            one_to_one_sessions: 6,
            max_attempts: 32,
        }
    }
}

/// Sessions in a programme's course when the class does not say.
pub fn default_course_length(programme: Programme) -> u32 {
    match programme {
        // ESCAPE-pain: 12 sessions, twice a week for 6 weeks.
        Programme::EscapePain => 12,
        Programme::StrengthAndBalance => 12,
        Programme::OneToOne => 6,
    }
}

/// A command an aggregate refuses. Business outcomes, not failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The record is already there. gRPC `ALREADY_EXISTS`; HTTP 409
    /// OperationOutcome `duplicate`.
    #[error("{what} {id} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// The record does not exist. gRPC `NOT_FOUND`; HTTP 404 `not-found`.
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    /// A value breaks a scheduling rule. gRPC `INVALID_ARGUMENT` with a
    /// `BadRequest` violation on `field`; HTTP 400 `invalid`.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// No place left in the class. gRPC `RESOURCE_EXHAUSTED`; HTTP 409
    /// `conflict`.
    #[error("class {class_id} is full ({capacity} places)")]
    ClassFull { class_id: Uuid, capacity: u32 },
    /// The slot is booked by someone else. gRPC `RESOURCE_EXHAUSTED`; HTTP
    /// 409 `conflict`.
    #[error("slot {slot_id} is already booked")]
    SlotTaken { slot_id: Uuid },
    /// The patient already holds this place. gRPC `ALREADY_EXISTS`; HTTP 409
    /// `duplicate`.
    #[error("the patient already holds this place")]
    AlreadyBooked,
    /// The patient does not hold this place. gRPC `FAILED_PRECONDITION`;
    /// HTTP 409 `business-rule`.
    #[error("the patient does not hold this place")]
    NotBooked,
    /// The episode is not in a state that allows this. gRPC
    /// `FAILED_PRECONDITION`; HTTP 409 `business-rule`.
    #[error("cannot {action}: episode is {status}")]
    WrongStatus {
        action: &'static str,
        status: &'static str,
    },
    /// The place does not fit the patient's choice of venue, day or mode.
    /// gRPC `FAILED_PRECONDITION`; HTTP 409 `business-rule`.
    #[error("the place does not fit the patient's choice of venue, day or mode")]
    ChoiceNotMet,
    /// The place is for another programme. gRPC `FAILED_PRECONDITION`; HTTP
    /// 409 `business-rule`.
    #[error("the place is for {offered}, the patient waits for {needed}")]
    ProgrammeMismatch {
        needed: Programme,
        offered: Programme,
    },
    /// The offer is not the open one, or the place is not the accepted
    /// offer. gRPC `FAILED_PRECONDITION`; HTTP 409 `business-rule`.
    #[error("offer does not match: {0}")]
    OfferMismatch(&'static str),
    /// No such session in the episode. gRPC `NOT_FOUND`; HTTP 404
    /// `not-found`.
    #[error("session {session_no} is not booked in this episode")]
    UnknownSession { session_no: u32 },
    /// The session's outcome is already recorded. gRPC `FAILED_PRECONDITION`;
    /// HTTP 409 `business-rule`.
    #[error("session {session_no} is already {status}")]
    SessionAlreadyRecorded {
        session_no: u32,
        status: &'static str,
    },
    /// Every session of the course is already booked. gRPC
    /// `FAILED_PRECONDITION`; HTTP 409 `business-rule`.
    #[error("every session of the course is already booked")]
    CourseFullyBooked,
}

/// An aggregate folded from scheduling events.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// Evolve the state by one event.
    fn apply(self, event: &SchedulingEvent) -> Self;
    /// Record the stream version the state was folded to.
    fn set_version(&mut self, version: u64);
    /// The stream version the state was folded to (0: no events).
    fn version(&self) -> u64;
}

/// Fold events into an aggregate's state (version left at 0).
pub fn fold<'a, A: Aggregate>(events: impl IntoIterator<Item = &'a SchedulingEvent>) -> A {
    events.into_iter().fold(A::default(), A::apply)
}
