//! The outcomes aggregate of one referral: which questionnaires are
//! scheduled, sent, completed or overdue, and the changes between scores.
//! Pure: time is passed in with each command.
//!
//! Schedule rules:
//! - **First contact** (`AssessmentRequested` or `AssessmentBooked`): every
//!   scheduled measure is due at first contact, once; a later first-contact
//!   event does not move it.
//! - **Discharge** (`EpisodeDischarged`, `RehabDischarged`,
//!   `CourseCompleted`): every scheduled measure is due at discharge, and at
//!   follow-up [`Policy::follow_up_months`] after discharge. A later
//!   discharge (an assessment episode that ended in rehab, then the rehab
//!   course) moves the discharge and follow-up dates of questionnaires not
//!   yet sent or completed.
//! - A questionnaire not completed [`Policy::overdue_after_days`] after it
//!   was due is overdue (found by [`Command::CheckOverdue`] with the clock's
//!   time); it can still be completed.
//! - A response may be recorded for a questionnaire that was not scheduled
//!   (e.g. STarT Back at first contact); one response per measure and
//!   timepoint, and a retried response (same id) is recorded once.
//! - Completing a measure at discharge or follow-up when its first-contact
//!   baseline is completed records the change, and whether it reaches the
//!   measure's minimal important change ([`Mic`]).
//! - Each triggering event is acted on once (its id is recorded with the
//!   schedule), so a redelivered event changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Months, Utc};
use mskflow_events::outcomes::{
    ItemAnswer, Measure, OutcomeChangeRecorded, OutcomeEvent, QuestionnaireCompleted,
    QuestionnaireOverdue, QuestionnaireScheduled, QuestionnaireSent, Score, Timepoint,
};
use uuid::Uuid;

/// Minimal important change per measure, in the measure's score units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mic {
    /// MSK-HQ total points (default 5; 5-6 is commonly cited).
    pub msk_hq: f64,
    /// EQ-5D-5L index (default 0.08).
    pub eq5d_index: f64,
    /// PSFS mean points (default 2).
    pub psfs: f64,
}

impl Default for Mic {
    fn default() -> Self {
        Self {
            msk_hq: 5.0,
            eq5d_index: 0.08,
            psfs: 2.0,
        }
    }
}

impl Mic {
    /// The measure's minimal important change; `None` for measures whose
    /// change is not reported (STarT Back stratifies, it does not track).
    pub fn for_measure(&self, measure: Measure) -> Option<f64> {
        match measure {
            Measure::MskHq => Some(self.msk_hq),
            Measure::Eq5d5l => Some(self.eq5d_index),
            Measure::Psfs => Some(self.psfs),
            Measure::StartBack => None,
        }
    }
}

/// Local outcome policy (*configurable*).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The measures scheduled at each timepoint.
    pub measures: Vec<Measure>,
    /// Follow-up this many months after discharge (default 6).
    pub follow_up_months: u32,
    /// A questionnaire is overdue this many days after its due date
    /// (default 28).
    pub overdue_after_days: u32,
    pub mic: Mic,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            measures: vec![Measure::MskHq, Measure::Eq5d5l],
            follow_up_months: 6,
            overdue_after_days: 28,
            mic: Mic::default(),
        }
    }
}

/// What kind of pathway event triggers a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FirstContact,
    Discharge,
}

impl Trigger {
    /// The trigger of an event type, if it is one.
    pub fn of_event_type(event_type: &str) -> Option<Self> {
        match event_type {
            "AssessmentRequested" | "AssessmentBooked" => Some(Trigger::FirstContact),
            "EpisodeDischarged" | "RehabDischarged" | "CourseCompleted" => Some(Trigger::Discharge),
            _ => None,
        }
    }
}

/// Where a questionnaire is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Due,
    Sent,
    Completed,
    Overdue,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Due => "due",
            Status::Sent => "sent",
            Status::Completed => "completed",
            Status::Overdue => "overdue",
        }
    }
}

/// A completed questionnaire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub response_id: Uuid,
    pub score: Score,
    pub completed_at: DateTime<Utc>,
}

/// One questionnaire of a referral: a measure at a timepoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub measure: Measure,
    pub timepoint: Timepoint,
    /// `None` when completed without being scheduled.
    pub due: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub completed: Option<Completion>,
    pub overdue: bool,
}

impl Entry {
    fn new(measure: Measure, timepoint: Timepoint) -> Self {
        Self {
            measure,
            timepoint,
            due: None,
            sent_at: None,
            completed: None,
            overdue: false,
        }
    }

    pub fn status(&self) -> Status {
        if self.completed.is_some() {
            Status::Completed
        } else if self.overdue {
            Status::Overdue
        } else if self.sent_at.is_some() {
            Status::Sent
        } else {
            Status::Due
        }
    }
}

/// The outcomes of one referral, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeState {
    pub referral_id: Option<Uuid>,
    /// The stream's version (its last sequence); 0 when empty.
    pub version: u64,
    /// Ids of the events that caused schedules.
    pub triggers: BTreeSet<Uuid>,
    pub entries: BTreeMap<(Measure, Timepoint), Entry>,
    pub changes: Vec<OutcomeChangeRecorded>,
}

impl OutcomeState {
    pub fn exists(&self) -> bool {
        self.referral_id.is_some()
    }

    pub fn entry(&self, measure: Measure, timepoint: Timepoint) -> Option<&Entry> {
        self.entries.get(&(measure, timepoint))
    }

    fn completed_with(&self, response_id: Uuid) -> Option<&Entry> {
        self.entries.values().find(|e| {
            e.completed
                .as_ref()
                .is_some_and(|c| c.response_id == response_id)
        })
    }
}

/// What can be asked of a referral's outcomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A pathway event: schedule questionnaires.
    Schedule {
        referral_id: Uuid,
        trigger: Trigger,
        event_id: Uuid,
        event_type: String,
        at: DateTime<Utc>,
    },
    /// A scheduled questionnaire was sent.
    MarkSent {
        referral_id: Uuid,
        measure: Measure,
        timepoint: Timepoint,
        at: DateTime<Utc>,
    },
    /// A questionnaire response was scored.
    Complete {
        referral_id: Uuid,
        response_id: Uuid,
        measure: Measure,
        timepoint: Timepoint,
        answers: Vec<ItemAnswer>,
        score: Score,
        at: DateTime<Utc>,
    },
    /// Mark questionnaires past the overdue window.
    CheckOverdue {
        referral_id: Uuid,
        now: DateTime<Utc>,
    },
}

/// A command refused for a business reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// gRPC `NOT_FOUND`; HTTP 404 OperationOutcome `not-found`.
    #[error("{measure} at {timepoint} is not scheduled")]
    NotScheduled {
        measure: Measure,
        timepoint: Timepoint,
    },
    /// Another response already completed it. gRPC `FAILED_PRECONDITION`;
    /// HTTP 409 OperationOutcome `business-rule`.
    #[error("{measure} at {timepoint} is already completed (response {response_id})")]
    AlreadyCompleted {
        measure: Measure,
        timepoint: Timepoint,
        response_id: Uuid,
    },
}

/// Tolerance when comparing a change with the minimal important change, so
/// that a change equal to it in decimal (0.80 - 0.72 = 0.08) reaches it.
const MIC_TOLERANCE: f64 = 1e-9;

/// The follow-up date: `months` after discharge (clamped to the month's last
/// day, e.g. 31 August + 6 months = 28 or 29 February).
pub fn follow_up_due(discharge: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    discharge
        .checked_add_months(Months::new(months))
        .unwrap_or(discharge)
}

/// Decide.
pub fn handle(
    state: &OutcomeState,
    command: Command,
    policy: &Policy,
) -> Result<Vec<OutcomeEvent>, DomainError> {
    match command {
        Command::Schedule {
            referral_id,
            trigger,
            event_id,
            event_type,
            at,
        } => Ok(schedule(
            state,
            policy,
            referral_id,
            trigger,
            event_id,
            &event_type,
            at,
        )),
        Command::MarkSent {
            referral_id,
            measure,
            timepoint,
            at,
        } => {
            let Some(entry) = state.entry(measure, timepoint).filter(|e| e.due.is_some()) else {
                return Err(DomainError::NotScheduled { measure, timepoint });
            };
            if let Some(c) = &entry.completed {
                return Err(DomainError::AlreadyCompleted {
                    measure,
                    timepoint,
                    response_id: c.response_id,
                });
            }
            if entry.sent_at.is_some() {
                return Ok(vec![]);
            }
            Ok(vec![OutcomeEvent::QuestionnaireSent(QuestionnaireSent {
                referral_id,
                measure,
                timepoint,
                sent_at: at,
            })])
        }
        Command::Complete {
            referral_id,
            response_id,
            measure,
            timepoint,
            answers,
            score,
            at,
        } => {
            if state.completed_with(response_id).is_some() {
                return Ok(vec![]);
            }
            if let Some(c) = state
                .entry(measure, timepoint)
                .and_then(|e| e.completed.as_ref())
            {
                return Err(DomainError::AlreadyCompleted {
                    measure,
                    timepoint,
                    response_id: c.response_id,
                });
            }
            let later = score.value();
            let mut events = vec![OutcomeEvent::QuestionnaireCompleted(
                QuestionnaireCompleted {
                    referral_id,
                    response_id,
                    measure,
                    timepoint,
                    answers,
                    score,
                    completed_at: at,
                },
            )];
            let baseline = state
                .entry(measure, Timepoint::FirstContact)
                .and_then(|e| e.completed.as_ref());
            if let (Some(mic), Some(baseline), true) = (
                policy.mic.for_measure(measure),
                baseline,
                timepoint != Timepoint::FirstContact,
            ) {
                let baseline = baseline.score.value();
                let change = later - baseline;
                events.push(OutcomeEvent::OutcomeChangeRecorded(OutcomeChangeRecorded {
                    referral_id,
                    measure,
                    from: Timepoint::FirstContact,
                    to: timepoint,
                    baseline,
                    later,
                    change,
                    minimal_important_change: mic,
                    reached_minimal_important_change: change + MIC_TOLERANCE >= mic,
                }));
            }
            Ok(events)
        }
        Command::CheckOverdue { referral_id, now } => {
            let window = Duration::days(i64::from(policy.overdue_after_days));
            Ok(state
                .entries
                .values()
                .filter(|e| e.completed.is_none() && !e.overdue)
                .filter_map(|e| {
                    let due = e.due?;
                    (now > due + window).then(|| {
                        OutcomeEvent::QuestionnaireOverdue(QuestionnaireOverdue {
                            referral_id,
                            measure: e.measure,
                            timepoint: e.timepoint,
                            due,
                            days_overdue: u32::try_from((now - due).num_days()).unwrap_or(0),
                        })
                    })
                })
                .collect())
        }
    }
}

fn schedule(
    state: &OutcomeState,
    policy: &Policy,
    referral_id: Uuid,
    trigger: Trigger,
    event_id: Uuid,
    event_type: &str,
    at: DateTime<Utc>,
) -> Vec<OutcomeEvent> {
    if state.triggers.contains(&event_id) {
        return vec![];
    }
    let targets: Vec<(Timepoint, DateTime<Utc>)> = match trigger {
        Trigger::FirstContact => vec![(Timepoint::FirstContact, at)],
        Trigger::Discharge => vec![
            (Timepoint::Discharge, at),
            (
                Timepoint::FollowUp,
                follow_up_due(at, policy.follow_up_months),
            ),
        ],
    };
    let mut events = Vec::new();
    for measure in &policy.measures {
        for (timepoint, due) in &targets {
            let wanted = match state.entry(*measure, *timepoint) {
                None => true,
                Some(e) if e.due.is_none() => false, // completed unscheduled
                Some(_) if trigger == Trigger::FirstContact => false,
                Some(e) => e.sent_at.is_none() && e.completed.is_none() && e.due != Some(*due),
            };
            if wanted {
                events.push(OutcomeEvent::QuestionnaireScheduled(
                    QuestionnaireScheduled {
                        referral_id,
                        measure: *measure,
                        timepoint: *timepoint,
                        due: *due,
                        trigger_event_id: event_id,
                        trigger_event_type: event_type.to_owned(),
                    },
                ));
            }
        }
    }
    events
}

/// Evolve.
pub fn apply(mut state: OutcomeState, event: &OutcomeEvent) -> OutcomeState {
    let (referral_id, key) = match event {
        OutcomeEvent::QuestionnaireScheduled(e) => (e.referral_id, (e.measure, e.timepoint)),
        OutcomeEvent::QuestionnaireSent(e) => (e.referral_id, (e.measure, e.timepoint)),
        OutcomeEvent::QuestionnaireCompleted(e) => (e.referral_id, (e.measure, e.timepoint)),
        OutcomeEvent::QuestionnaireOverdue(e) => (e.referral_id, (e.measure, e.timepoint)),
        OutcomeEvent::OutcomeChangeRecorded(e) => {
            state.referral_id = Some(e.referral_id);
            state.changes.push(e.clone());
            return state;
        }
    };
    state.referral_id = Some(referral_id);
    let entry = state
        .entries
        .entry(key)
        .or_insert_with(|| Entry::new(key.0, key.1));
    match event {
        OutcomeEvent::QuestionnaireScheduled(e) => {
            entry.due = Some(e.due);
            entry.overdue = false;
            state.triggers.insert(e.trigger_event_id);
        }
        OutcomeEvent::QuestionnaireSent(e) => entry.sent_at = Some(e.sent_at),
        OutcomeEvent::QuestionnaireCompleted(e) => {
            entry.completed = Some(Completion {
                response_id: e.response_id,
                score: e.score.clone(),
                completed_at: e.completed_at,
            });
        }
        OutcomeEvent::QuestionnaireOverdue(_) => entry.overdue = true,
        OutcomeEvent::OutcomeChangeRecorded(_) => {}
    }
    state
}

/// Fold events into a state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a OutcomeEvent>) -> OutcomeState {
    events.into_iter().fold(OutcomeState::default(), apply)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 9, 0, 0).unwrap()
    }

    fn rid() -> Uuid {
        Uuid::from_u128(7)
    }

    /// Given events, when command, then events.
    fn given(events: &[OutcomeEvent]) -> OutcomeState {
        fold(events)
    }

    fn when(state: &OutcomeState, command: Command) -> Result<Vec<OutcomeEvent>, DomainError> {
        handle(state, command, &Policy::default())
    }

    fn trigger(event_type: &str, event_id: u128, at: DateTime<Utc>) -> Command {
        Command::Schedule {
            referral_id: rid(),
            trigger: Trigger::of_event_type(event_type).unwrap(),
            event_id: Uuid::from_u128(event_id),
            event_type: event_type.to_owned(),
            at,
        }
    }

    fn scheduled(events: &[OutcomeEvent]) -> Vec<(Measure, Timepoint, DateTime<Utc>)> {
        events
            .iter()
            .filter_map(|e| match e {
                OutcomeEvent::QuestionnaireScheduled(s) => Some((s.measure, s.timepoint, s.due)),
                _ => None,
            })
            .collect()
    }

    fn complete(measure: Measure, timepoint: Timepoint, score: Score, n: u128) -> Command {
        Command::Complete {
            referral_id: rid(),
            response_id: Uuid::from_u128(n),
            measure,
            timepoint,
            answers: vec![],
            score,
            at: t(2026, 3, 1),
        }
    }

    #[test]
    fn first_contact_schedules_each_measure_once() {
        let events = when(
            &given(&[]),
            trigger("AssessmentRequested", 1, t(2026, 1, 5)),
        )
        .unwrap();
        assert_eq!(
            scheduled(&events),
            vec![
                (Measure::MskHq, Timepoint::FirstContact, t(2026, 1, 5)),
                (Measure::Eq5d5l, Timepoint::FirstContact, t(2026, 1, 5)),
            ]
        );
        // Booking later is also first contact: nothing new.
        let state = given(&events);
        let again = when(&state, trigger("AssessmentBooked", 2, t(2026, 1, 9))).unwrap();
        assert!(again.is_empty());
        // The same event delivered twice: nothing new.
        assert!(
            when(&state, trigger("AssessmentRequested", 1, t(2026, 1, 5)))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn discharge_schedules_discharge_and_follow_up_six_months_later() {
        let events = when(&given(&[]), trigger("EpisodeDischarged", 3, t(2026, 2, 10))).unwrap();
        assert_eq!(
            scheduled(&events),
            vec![
                (Measure::MskHq, Timepoint::Discharge, t(2026, 2, 10)),
                (Measure::MskHq, Timepoint::FollowUp, t(2026, 8, 10)),
                (Measure::Eq5d5l, Timepoint::Discharge, t(2026, 2, 10)),
                (Measure::Eq5d5l, Timepoint::FollowUp, t(2026, 8, 10)),
            ]
        );
        // Month ends clamp.
        assert_eq!(follow_up_due(t(2026, 8, 31), 6), t(2027, 2, 28));
        // Follow-up interval is configurable.
        let policy = Policy {
            follow_up_months: 3,
            measures: vec![Measure::MskHq],
            ..Policy::default()
        };
        let events = handle(
            &given(&[]),
            trigger("CourseCompleted", 4, t(2026, 2, 10)),
            &policy,
        )
        .unwrap();
        assert_eq!(
            scheduled(&events)[1],
            (Measure::MskHq, Timepoint::FollowUp, t(2026, 5, 10))
        );
    }

    #[test]
    fn later_discharge_moves_unsent_questionnaires_only() {
        let mut history =
            when(&given(&[]), trigger("EpisodeDischarged", 3, t(2026, 2, 10))).unwrap();
        history.extend(
            when(
                &given(&history),
                Command::MarkSent {
                    referral_id: rid(),
                    measure: Measure::MskHq,
                    timepoint: Timepoint::Discharge,
                    at: t(2026, 2, 11),
                },
            )
            .unwrap(),
        );
        let events = when(
            &given(&history),
            trigger("RehabDischarged", 5, t(2026, 4, 1)),
        )
        .unwrap();
        assert_eq!(
            scheduled(&events),
            vec![
                (Measure::MskHq, Timepoint::FollowUp, t(2026, 10, 1)),
                (Measure::Eq5d5l, Timepoint::Discharge, t(2026, 4, 1)),
                (Measure::Eq5d5l, Timepoint::FollowUp, t(2026, 10, 1)),
            ]
        );
        // Redelivery of the first discharge after the second: nothing.
        history.extend(events);
        assert!(
            when(
                &given(&history),
                trigger("EpisodeDischarged", 3, t(2026, 2, 10))
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn overdue_after_the_window_with_the_injected_clock() {
        let history = when(
            &given(&[]),
            trigger("AssessmentRequested", 1, t(2026, 1, 5)),
        )
        .unwrap();
        let state = given(&history);
        let check = |now| Command::CheckOverdue {
            referral_id: rid(),
            now,
        };
        // 28 days after due: not yet.
        assert!(when(&state, check(t(2026, 2, 2))).unwrap().is_empty());
        // 29 days after due: overdue.
        let events = when(&state, check(t(2026, 2, 3))).unwrap();
        assert_eq!(events.len(), 2);
        let OutcomeEvent::QuestionnaireOverdue(o) = &events[0] else {
            panic!("not overdue: {events:?}")
        };
        assert_eq!(
            (o.measure, o.timepoint, o.days_overdue),
            (Measure::MskHq, Timepoint::FirstContact, 29)
        );
        let state = given(&[history, events].concat());
        assert_eq!(
            state
                .entry(Measure::MskHq, Timepoint::FirstContact)
                .map(Entry::status),
            Some(Status::Overdue)
        );
        // Once overdue, not again.
        assert!(when(&state, check(t(2026, 3, 3))).unwrap().is_empty());
    }

    #[test]
    fn completed_questionnaires_are_never_overdue() {
        let mut history = when(
            &given(&[]),
            trigger("AssessmentRequested", 1, t(2026, 1, 5)),
        )
        .unwrap();
        history.extend(
            when(
                &given(&history),
                complete(
                    Measure::MskHq,
                    Timepoint::FirstContact,
                    Score::MskHq { total: 30 },
                    10,
                ),
            )
            .unwrap(),
        );
        let events = when(
            &given(&history),
            Command::CheckOverdue {
                referral_id: rid(),
                now: t(2026, 6, 1),
            },
        )
        .unwrap();
        assert_eq!(events.len(), 1, "only EQ-5D-5L: {events:?}");
    }

    #[test]
    fn change_reaches_minimal_important_change() {
        let history = when(
            &given(&[]),
            complete(
                Measure::MskHq,
                Timepoint::FirstContact,
                Score::MskHq { total: 30 },
                10,
            ),
        )
        .unwrap();
        let state = given(&history);
        let events = when(
            &state,
            complete(
                Measure::MskHq,
                Timepoint::Discharge,
                Score::MskHq { total: 35 },
                11,
            ),
        )
        .unwrap();
        let OutcomeEvent::OutcomeChangeRecorded(c) = &events[1] else {
            panic!("no change: {events:?}")
        };
        assert_eq!(
            (c.from, c.to),
            (Timepoint::FirstContact, Timepoint::Discharge)
        );
        assert_eq!((c.baseline, c.later, c.change), (30.0, 35.0, 5.0));
        assert!(c.reached_minimal_important_change);

        let events = when(
            &state,
            complete(
                Measure::MskHq,
                Timepoint::FollowUp,
                Score::MskHq { total: 34 },
                12,
            ),
        )
        .unwrap();
        let OutcomeEvent::OutcomeChangeRecorded(c) = &events[1] else {
            panic!("no change: {events:?}")
        };
        assert_eq!(c.change, 4.0);
        assert!(!c.reached_minimal_important_change);
    }

    #[test]
    fn eq5d_index_change_equal_to_mic_reaches_it() {
        let eq = |index: f64| Score::Eq5d5l {
            profile: "11111".to_owned(),
            vas: 50,
            index,
            value_set: "v".to_owned(),
        };
        let state = given(
            &when(
                &given(&[]),
                complete(Measure::Eq5d5l, Timepoint::FirstContact, eq(0.72), 1),
            )
            .unwrap(),
        );
        let events = when(
            &state,
            complete(Measure::Eq5d5l, Timepoint::Discharge, eq(0.80), 2),
        )
        .unwrap();
        let OutcomeEvent::OutcomeChangeRecorded(c) = &events[1] else {
            panic!("no change")
        };
        assert!(c.reached_minimal_important_change, "{c:?}");
        // A larger configured MIC is not reached.
        let policy = Policy {
            mic: Mic {
                eq5d_index: 0.1,
                ..Mic::default()
            },
            ..Policy::default()
        };
        let events = handle(
            &state,
            complete(Measure::Eq5d5l, Timepoint::Discharge, eq(0.80), 2),
            &policy,
        )
        .unwrap();
        let OutcomeEvent::OutcomeChangeRecorded(c) = &events[1] else {
            panic!("no change")
        };
        assert!(!c.reached_minimal_important_change);
        assert_eq!(c.minimal_important_change, 0.1);
    }

    #[test]
    fn no_change_without_baseline_or_for_start_back() {
        let events = when(
            &given(&[]),
            complete(
                Measure::MskHq,
                Timepoint::Discharge,
                Score::MskHq { total: 35 },
                11,
            ),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        let sb = Score::StartBack(mskflow_events::intake::StartBackAnswers([true; 9]).score());
        let state = given(
            &when(
                &given(&[]),
                complete(Measure::StartBack, Timepoint::FirstContact, sb.clone(), 1),
            )
            .unwrap(),
        );
        let events = when(
            &state,
            complete(Measure::StartBack, Timepoint::Discharge, sb, 2),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn completion_is_idempotent_by_response_and_refuses_a_second_response() {
        let history = when(
            &given(&[]),
            complete(
                Measure::MskHq,
                Timepoint::FirstContact,
                Score::MskHq { total: 30 },
                10,
            ),
        )
        .unwrap();
        let state = given(&history);
        assert!(
            when(
                &state,
                complete(
                    Measure::MskHq,
                    Timepoint::FirstContact,
                    Score::MskHq { total: 30 },
                    10
                )
            )
            .unwrap()
            .is_empty()
        );
        assert_eq!(
            when(
                &state,
                complete(
                    Measure::MskHq,
                    Timepoint::FirstContact,
                    Score::MskHq { total: 31 },
                    99
                )
            ),
            Err(DomainError::AlreadyCompleted {
                measure: Measure::MskHq,
                timepoint: Timepoint::FirstContact,
                response_id: Uuid::from_u128(10)
            })
        );
    }

    #[test]
    fn sending_needs_a_schedule() {
        let cmd = |tp| Command::MarkSent {
            referral_id: rid(),
            measure: Measure::MskHq,
            timepoint: tp,
            at: t(2026, 1, 6),
        };
        assert!(matches!(
            when(&given(&[]), cmd(Timepoint::FirstContact)),
            Err(DomainError::NotScheduled { .. })
        ));
        let state = given(
            &when(
                &given(&[]),
                trigger("AssessmentRequested", 1, t(2026, 1, 5)),
            )
            .unwrap(),
        );
        let sent = when(&state, cmd(Timepoint::FirstContact)).unwrap();
        assert_eq!(sent.len(), 1);
        let state = given(
            &[
                when(
                    &given(&[]),
                    trigger("AssessmentRequested", 1, t(2026, 1, 5)),
                )
                .unwrap(),
                sent,
            ]
            .concat(),
        );
        assert_eq!(
            state
                .entry(Measure::MskHq, Timepoint::FirstContact)
                .map(Entry::status),
            Some(Status::Sent)
        );
        assert!(
            when(&state, cmd(Timepoint::FirstContact))
                .unwrap()
                .is_empty()
        );
    }
}
