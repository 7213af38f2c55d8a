//! A patient's rehab episode: waiting list, offers, booking, attendance,
//! completion and discharge.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use mskflow_events::scheduling::{
    BookedSession, CancelledBy, CourseCompleted, DayOfWeek, DischargeReason, OfferAccepted,
    OfferDeclined, OfferMade, PatientWaitlisted, Place, PlaceBooked, Programme, RehabDischarged,
    SchedulingEvent, SessionAttended, SessionCancelled, SessionMissed,
};
use mskflow_events::types::ContactMode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Aggregate, DomainError, Policy};

/// Where an episode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EpisodeStatus {
    /// On the waiting list.
    Waiting,
    /// A place was offered; the patient has not answered.
    Offered,
    /// The patient accepted an offer; the place is not booked yet.
    Accepted,
    /// Booked into a course.
    Booked,
    Completed,
    Discharged,
}

impl EpisodeStatus {
    pub fn code(self) -> &'static str {
        match self {
            EpisodeStatus::Waiting => "waiting",
            EpisodeStatus::Offered => "offered",
            EpisodeStatus::Accepted => "accepted",
            EpisodeStatus::Booked => "booked",
            EpisodeStatus::Completed => "completed",
            EpisodeStatus::Discharged => "discharged",
        }
    }

    fn is_open(self) -> bool {
        !matches!(self, EpisodeStatus::Completed | EpisodeStatus::Discharged)
    }
}

/// What became of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionStatus {
    Booked,
    Attended,
    Missed,
    Cancelled(CancelledBy),
}

impl SessionStatus {
    pub fn code(self) -> &'static str {
        match self {
            SessionStatus::Booked => "booked",
            SessionStatus::Attended => "attended",
            SessionStatus::Missed => "missed",
            SessionStatus::Cancelled(CancelledBy::Patient) => "cancelled-by-patient",
            SessionStatus::Cancelled(CancelledBy::Service) => "cancelled-by-service",
        }
    }
}

/// One session of the episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub session: BookedSession,
    pub place: Place,
    pub status: SessionStatus,
}

/// What the episode needs to know about a class or slot (looked up by the
/// service layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceInfo {
    pub place: Place,
    pub programme: Programme,
    pub venue_id: String,
    /// The days of the week the place meets on.
    pub days: Vec<DayOfWeek>,
    pub mode: ContactMode,
    /// Local start of every session the place gives.
    pub session_starts: Vec<NaiveDateTime>,
}

/// A patient's rehab episode, folded from its stream (serialized as the
/// waiting list's stored state).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EpisodeState {
    pub waitlisted: Option<PatientWaitlisted>,
    pub status: Option<EpisodeStatus>,
    /// The open or accepted offer.
    pub offer: Option<OfferMade>,
    /// Sessions by number.
    pub sessions: BTreeMap<u32, SessionState>,
    /// Sessions in the course (the class's length once a class is booked).
    pub course_sessions: u32,
    pub attended: u32,
    pub missed: u32,
    pub cancelled: u32,
    pub discharge: Option<RehabDischarged>,
    pub version: u64,
}

/// What may be asked of an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpisodeCommand {
    /// Put the patient on the waiting list.
    Waitlist(PatientWaitlisted),
    MakeOffer {
        offer_id: Uuid,
        place: PlaceInfo,
    },
    RespondToOffer {
        offer_id: Uuid,
        accept: bool,
    },
    /// Book the patient into a class course or a 1:1 slot.
    Book(PlaceInfo),
    RecordAttendance {
        session_no: u32,
        attended: bool,
    },
    CancelSession {
        session_no: u32,
        by: CancelledBy,
    },
    Discharge {
        reason: DischargeReason,
    },
}

impl EpisodeState {
    fn status_code(&self) -> &'static str {
        self.status.map_or("not on the list", EpisodeStatus::code)
    }

    fn wrong(&self, action: &'static str) -> DomainError {
        DomainError::WrongStatus {
            action,
            status: self.status_code(),
        }
    }

    fn require(&self) -> Result<(&PatientWaitlisted, EpisodeStatus), DomainError> {
        match (&self.waitlisted, self.status) {
            (Some(w), Some(s)) => Ok((w, s)),
            _ => Err(DomainError::NotFound {
                what: "rehab episode",
                id: String::from("for this referral"),
            }),
        }
    }

    /// Sessions booked and not yet attended, missed or cancelled.
    pub fn pending(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.status == SessionStatus::Booked)
            .count()
    }

    /// Places the patient still holds: the class, and every 1:1 slot whose
    /// session is still to come.
    pub fn held_places(&self) -> Vec<Place> {
        let mut places: Vec<Place> = Vec::new();
        for s in self.sessions.values() {
            let held = match s.place {
                Place::Class { .. } => true,
                Place::Slot { .. } => s.status == SessionStatus::Booked,
            };
            if held && !places.contains(&s.place) {
                places.push(s.place);
            }
        }
        places
    }

    /// Check that a place fits the programme and the patient's choices.
    fn check_fit(waitlisted: &PatientWaitlisted, info: &PlaceInfo) -> Result<(), DomainError> {
        if info.programme != waitlisted.programme {
            return Err(DomainError::ProgrammeMismatch {
                needed: waitlisted.programme,
                offered: info.programme,
            });
        }
        if info.session_starts.is_empty() {
            return Err(DomainError::Invalid {
                field: "place",
                reason: "the place has no sessions".to_owned(),
            });
        }
        if !waitlisted
            .choices
            .accepts(&info.venue_id, &info.days, info.mode)
        {
            return Err(DomainError::ChoiceNotMet);
        }
        Ok(())
    }

    pub fn handle(
        &self,
        cmd: EpisodeCommand,
        policy: &Policy,
    ) -> Result<Vec<SchedulingEvent>, DomainError> {
        if let EpisodeCommand::Waitlist(w) = cmd {
            if self.status.is_some() {
                return Err(DomainError::AlreadyExists {
                    what: "rehab episode for referral",
                    id: w.referral_id.to_string(),
                });
            }
            if w.sessions == 0 || w.sessions > super::capacity::MAX_SESSIONS {
                return Err(DomainError::Invalid {
                    field: "sessions",
                    reason: format!("must be between 1 and {}", super::capacity::MAX_SESSIONS),
                });
            }
            return Ok(vec![SchedulingEvent::PatientWaitlisted(w)]);
        }
        let (waitlisted, status) = self.require()?;
        let referral_id = waitlisted.referral_id;
        match cmd {
            EpisodeCommand::Waitlist(_) => Ok(vec![]),
            EpisodeCommand::MakeOffer { offer_id, place } => {
                if status != EpisodeStatus::Waiting {
                    return Err(self.wrong("make an offer"));
                }
                Self::check_fit(waitlisted, &place)?;
                let first_session_at =
                    place
                        .session_starts
                        .iter()
                        .min()
                        .copied()
                        .ok_or(DomainError::Invalid {
                            field: "place",
                            reason: "the place has no sessions".to_owned(),
                        })?;
                Ok(vec![SchedulingEvent::OfferMade(OfferMade {
                    referral_id,
                    offer_id,
                    place: place.place,
                    first_session_at,
                })])
            }
            EpisodeCommand::RespondToOffer { offer_id, accept } => {
                if status != EpisodeStatus::Offered {
                    return Err(self.wrong("answer an offer"));
                }
                if self.offer.as_ref().map(|o| o.offer_id) != Some(offer_id) {
                    return Err(DomainError::OfferMismatch("not the open offer"));
                }
                Ok(vec![if accept {
                    SchedulingEvent::OfferAccepted(OfferAccepted {
                        referral_id,
                        offer_id,
                    })
                } else {
                    SchedulingEvent::OfferDeclined(OfferDeclined {
                        referral_id,
                        offer_id,
                    })
                }])
            }
            EpisodeCommand::Book(info) => self.book(waitlisted, status, info),
            EpisodeCommand::RecordAttendance {
                session_no,
                attended,
            } => {
                if status != EpisodeStatus::Booked {
                    return Err(self.wrong("record attendance"));
                }
                self.pending_session(session_no)?;
                let mut events = Vec::new();
                let mut next = self.clone();
                let event = if attended {
                    SchedulingEvent::SessionAttended(SessionAttended {
                        referral_id,
                        session_no,
                    })
                } else {
                    SchedulingEvent::SessionMissed(SessionMissed {
                        referral_id,
                        session_no,
                        missed_total: self.missed + 1,
                    })
                };
                next = next.apply(&event);
                events.push(event);
                if !attended && next.missed >= policy.max_missed_sessions {
                    events.push(SchedulingEvent::RehabDischarged(RehabDischarged {
                        referral_id,
                        reason: DischargeReason::DidNotAttend,
                        notify_referrer: policy.notify_referrer_on_dna,
                    }));
                } else if let Some(done) = next.completion() {
                    events.push(done);
                }
                Ok(events)
            }
            EpisodeCommand::CancelSession { session_no, by } => {
                if status != EpisodeStatus::Booked {
                    return Err(self.wrong("cancel a session"));
                }
                self.pending_session(session_no)?;
                let event = SchedulingEvent::SessionCancelled(SessionCancelled {
                    referral_id,
                    session_no,
                    by,
                });
                let next = self.clone().apply(&event);
                let mut events = vec![event];
                events.extend(next.completion());
                Ok(events)
            }
            EpisodeCommand::Discharge { reason } => {
                if !status.is_open() {
                    return Err(self.wrong("discharge"));
                }
                Ok(vec![SchedulingEvent::RehabDischarged(RehabDischarged {
                    referral_id,
                    reason,
                    notify_referrer: true,
                })])
            }
        }
    }

    fn pending_session(&self, session_no: u32) -> Result<(), DomainError> {
        let session = self
            .sessions
            .get(&session_no)
            .ok_or(DomainError::UnknownSession { session_no })?;
        if session.status != SessionStatus::Booked {
            return Err(DomainError::SessionAlreadyRecorded {
                session_no,
                status: session.status.code(),
            });
        }
        Ok(())
    }

    fn book(
        &self,
        waitlisted: &PatientWaitlisted,
        status: EpisodeStatus,
        info: PlaceInfo,
    ) -> Result<Vec<SchedulingEvent>, DomainError> {
        match status {
            EpisodeStatus::Waiting => Self::check_fit(waitlisted, &info)?,
            EpisodeStatus::Accepted => {
                if self.offer.as_ref().map(|o| o.place) != Some(info.place) {
                    return Err(DomainError::OfferMismatch(
                        "the place is not the accepted offer",
                    ));
                }
                Self::check_fit(waitlisted, &info)?;
            }
            // Further 1:1 sessions, and re-booking after a cancellation.
            EpisodeStatus::Booked if matches!(info.place, Place::Slot { .. }) => {
                Self::check_fit(waitlisted, &info)?;
                if self.sessions.values().any(|s| s.place == info.place) {
                    return Err(DomainError::AlreadyBooked);
                }
                let delivered = self.attended + self.missed;
                if delivered + u32::try_from(self.pending()).unwrap_or(u32::MAX)
                    >= self.course_sessions
                {
                    return Err(DomainError::CourseFullyBooked);
                }
            }
            _ => return Err(self.wrong("book a place")),
        }
        let first_no = self
            .sessions
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        let sessions = info
            .session_starts
            .iter()
            .zip(first_no..)
            .map(|(starts_at, session_no)| BookedSession {
                session_no,
                starts_at: *starts_at,
                venue_id: info.venue_id.clone(),
                mode: info.mode,
            })
            .collect();
        Ok(vec![SchedulingEvent::PlaceBooked(PlaceBooked {
            referral_id: waitlisted.referral_id,
            place: info.place,
            sessions,
        })])
    }

    /// `CourseCompleted` if every session of the course is accounted for.
    fn completion(&self) -> Option<SchedulingEvent> {
        let waitlisted = self.waitlisted.as_ref()?;
        if self.status != Some(EpisodeStatus::Booked) || self.pending() > 0 {
            return None;
        }
        let group = waitlisted.programme.is_group();
        // A group course runs on fixed dates: a cancelled session is
        // accounted for. A 1:1 course needs its sessions delivered (a
        // cancelled one is re-booked).
        let done = if group {
            true
        } else {
            self.attended + self.missed >= self.course_sessions
        };
        done.then_some(SchedulingEvent::CourseCompleted(CourseCompleted {
            referral_id: waitlisted.referral_id,
            attended: self.attended,
            missed: self.missed,
            cancelled: self.cancelled,
        }))
    }

    fn set_session(&mut self, session_no: u32, status: SessionStatus) {
        if let Some(s) = self.sessions.get_mut(&session_no) {
            s.status = status;
        }
    }
}

impl Aggregate for EpisodeState {
    fn apply(mut self, event: &SchedulingEvent) -> Self {
        match event {
            SchedulingEvent::PatientWaitlisted(e) => {
                self.course_sessions = e.sessions;
                self.waitlisted = Some(e.clone());
                self.status = Some(EpisodeStatus::Waiting);
            }
            SchedulingEvent::OfferMade(e) => {
                self.offer = Some(e.clone());
                self.status = Some(EpisodeStatus::Offered);
            }
            SchedulingEvent::OfferAccepted(_) => self.status = Some(EpisodeStatus::Accepted),
            SchedulingEvent::OfferDeclined(_) => {
                // Back on the list; the wait still counts from the need.
                self.offer = None;
                self.status = Some(EpisodeStatus::Waiting);
            }
            SchedulingEvent::PlaceBooked(e) => {
                if matches!(e.place, Place::Class { .. }) {
                    self.course_sessions = u32::try_from(e.sessions.len()).unwrap_or(u32::MAX);
                }
                for s in &e.sessions {
                    self.sessions.insert(
                        s.session_no,
                        SessionState {
                            session: s.clone(),
                            place: e.place,
                            status: SessionStatus::Booked,
                        },
                    );
                }
                self.offer = None;
                self.status = Some(EpisodeStatus::Booked);
            }
            SchedulingEvent::SessionAttended(e) => {
                self.attended += 1;
                self.set_session(e.session_no, SessionStatus::Attended);
            }
            SchedulingEvent::SessionMissed(e) => {
                self.missed += 1;
                self.set_session(e.session_no, SessionStatus::Missed);
            }
            SchedulingEvent::SessionCancelled(e) => {
                self.cancelled += 1;
                self.set_session(e.session_no, SessionStatus::Cancelled(e.by));
            }
            SchedulingEvent::CourseCompleted(_) => self.status = Some(EpisodeStatus::Completed),
            SchedulingEvent::RehabDischarged(e) => {
                self.discharge = Some(e.clone());
                self.status = Some(EpisodeStatus::Discharged);
            }
            _ => {}
        }
        self
    }
    fn set_version(&mut self, version: u64) {
        self.version = version;
    }
    fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test fixtures are constants")]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};
    use mskflow_events::scheduling::PatientChoices;
    use mskflow_events::types::{FcpPriority, Pathway};

    use super::super::fold;
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const CLASS: Place = Place::Class {
        class_id: Uuid::from_u128(1),
    };
    fn referral() -> Uuid {
        Uuid::from_u128(42)
    }

    fn waitlisted(programme: Programme, sessions: u32) -> SchedulingEvent {
        SchedulingEvent::PatientWaitlisted(PatientWaitlisted {
            referral_id: referral(),
            priority: FcpPriority::Routine,
            pathway: Pathway::Knee,
            programme,
            sessions,
            need_recorded_at: Utc.with_ymd_and_hms(2026, 1, 10, 9, 0, 0).unwrap(),
            choices: PatientChoices {
                venue_ids: vec!["leeds-central".to_owned()],
                days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
                modes: vec![],
            },
        })
    }

    /// An ESCAPE-pain class at Leeds Central, Mondays and Thursdays 10:00.
    fn class_info() -> PlaceInfo {
        let dates = super::super::course_dates(
            NaiveDate::from_ymd_opt(2026, 3, 5).unwrap(),
            &[DayOfWeek::Monday, DayOfWeek::Thursday],
            12,
        );
        PlaceInfo {
            place: CLASS,
            programme: Programme::EscapePain,
            venue_id: "leeds-central".to_owned(),
            days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
            mode: ContactMode::FaceToFace,
            session_starts: dates
                .into_iter()
                .map(|d| d.and_hms_opt(10, 0, 0).unwrap())
                .collect(),
        }
    }

    fn slot_info(n: u128, mode: ContactMode) -> PlaceInfo {
        let start = NaiveDate::from_ymd_opt(2026, 3, 2)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap()
            + chrono::Duration::days(i64::try_from(n).unwrap());
        PlaceInfo {
            place: Place::Slot {
                slot_id: Uuid::from_u128(n),
            },
            programme: Programme::OneToOne,
            venue_id: "leeds-central".to_owned(),
            days: vec![DayOfWeek::of(start.date())],
            mode,
            session_starts: vec![start],
        }
    }

    /// Given `given`, when `cmd` (default policy), then the events.
    fn when(
        given: &[SchedulingEvent],
        cmd: EpisodeCommand,
    ) -> Result<Vec<SchedulingEvent>, DomainError> {
        fold::<EpisodeState>(given).handle(cmd, &Policy::default())
    }

    /// Run `cmd` and add its events to `given`.
    fn then_add(given: &mut Vec<SchedulingEvent>, cmd: EpisodeCommand) -> TestResult {
        let events = when(given, cmd)?;
        given.extend(events);
        Ok(())
    }

    /// Given a patient booked into the 12-session class.
    fn given_booked_class() -> Result<Vec<SchedulingEvent>, Box<dyn std::error::Error>> {
        let mut given = vec![waitlisted(Programme::EscapePain, 12)];
        then_add(&mut given, EpisodeCommand::Book(class_info()))?;
        Ok(given)
    }

    fn attend(session_no: u32, attended: bool) -> EpisodeCommand {
        EpisodeCommand::RecordAttendance {
            session_no,
            attended,
        }
    }

    fn types(events: &[SchedulingEvent]) -> Vec<&'static str> {
        events.iter().map(SchedulingEvent::event_type).collect()
    }

    #[test]
    fn booking_a_class_books_every_session_of_the_course() -> TestResult {
        let given = given_booked_class()?;
        let state = fold::<EpisodeState>(&given);
        assert_eq!(state.status, Some(EpisodeStatus::Booked));
        assert_eq!(state.sessions.len(), 12);
        assert_eq!(state.course_sessions, 12);
        assert_eq!(
            state.sessions.keys().copied().collect::<Vec<_>>(),
            (1..=12).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn one_dna_is_recorded_and_the_course_goes_on() -> TestResult {
        let given = given_booked_class()?;
        let events = when(&given, attend(1, false))?;
        assert_eq!(
            events,
            vec![SchedulingEvent::SessionMissed(SessionMissed {
                referral_id: referral(),
                session_no: 1,
                missed_total: 1
            })]
        );
        Ok(())
    }

    #[test]
    fn a_second_dna_discharges_and_tells_the_referrer() -> TestResult {
        let mut given = given_booked_class()?;
        then_add(&mut given, attend(1, false))?;
        then_add(&mut given, attend(2, true))?;
        let events = when(&given, attend(3, false))?;
        assert_eq!(
            events,
            vec![
                SchedulingEvent::SessionMissed(SessionMissed {
                    referral_id: referral(),
                    session_no: 3,
                    missed_total: 2
                }),
                SchedulingEvent::RehabDischarged(RehabDischarged {
                    referral_id: referral(),
                    reason: DischargeReason::DidNotAttend,
                    notify_referrer: true
                })
            ]
        );
        given.extend(events);
        let state = fold::<EpisodeState>(&given);
        assert_eq!(state.status, Some(EpisodeStatus::Discharged));
        // The class place is still held until the service releases it.
        assert_eq!(state.held_places(), vec![CLASS]);
        assert!(matches!(
            when(&given, attend(4, true)),
            Err(DomainError::WrongStatus { .. })
        ));
        Ok(())
    }

    #[test]
    fn the_dna_policy_is_configurable() -> TestResult {
        let mut given = given_booked_class()?;
        let policy = Policy {
            max_missed_sessions: 3,
            notify_referrer_on_dna: false,
            ..Policy::default()
        };
        for n in 1..=2 {
            let events = fold::<EpisodeState>(&given).handle(attend(n, false), &policy)?;
            assert_eq!(types(&events), ["SessionMissed"]);
            given.extend(events);
        }
        let events = fold::<EpisodeState>(&given).handle(attend(3, false), &policy)?;
        assert_eq!(
            events.last(),
            Some(&SchedulingEvent::RehabDischarged(RehabDischarged {
                referral_id: referral(),
                reason: DischargeReason::DidNotAttend,
                notify_referrer: false
            }))
        );
        Ok(())
    }

    #[test]
    fn a_service_cancelled_session_is_not_a_dna() -> TestResult {
        let mut given = given_booked_class()?;
        then_add(&mut given, attend(1, false))?;
        let events = when(
            &given,
            EpisodeCommand::CancelSession {
                session_no: 2,
                by: CancelledBy::Service,
            },
        )?;
        assert_eq!(
            events,
            vec![SchedulingEvent::SessionCancelled(SessionCancelled {
                referral_id: referral(),
                session_no: 2,
                by: CancelledBy::Service
            })]
        );
        given.extend(events);
        let state = fold::<EpisodeState>(&given);
        assert_eq!((state.missed, state.cancelled), (1, 1));
        // The next real DNA is the second one, and it ends the episode.
        assert_eq!(
            types(&when(&given, attend(3, false))?),
            ["SessionMissed", "RehabDischarged"]
        );
        Ok(())
    }

    #[test]
    fn a_patient_cancelled_session_is_not_a_dna_either() -> TestResult {
        let mut given = given_booked_class()?;
        then_add(
            &mut given,
            EpisodeCommand::CancelSession {
                session_no: 1,
                by: CancelledBy::Patient,
            },
        )?;
        assert_eq!(types(&when(&given, attend(2, false))?), ["SessionMissed"]);
        Ok(())
    }

    #[test]
    fn a_session_is_recorded_once() -> TestResult {
        let mut given = given_booked_class()?;
        then_add(&mut given, attend(1, true))?;
        assert!(matches!(
            when(&given, attend(1, false)),
            Err(DomainError::SessionAlreadyRecorded { session_no: 1, .. })
        ));
        assert_eq!(
            when(&given, attend(13, true)),
            Err(DomainError::UnknownSession { session_no: 13 })
        );
        Ok(())
    }

    #[test]
    fn the_course_completes_when_all_12_sessions_are_accounted_for() -> TestResult {
        let mut given = given_booked_class()?;
        then_add(&mut given, attend(1, false))?;
        then_add(
            &mut given,
            EpisodeCommand::CancelSession {
                session_no: 2,
                by: CancelledBy::Service,
            },
        )?;
        for n in 3..=11 {
            let events = when(&given, attend(n, true))?;
            assert_eq!(types(&events), ["SessionAttended"], "session {n}");
            given.extend(events);
        }
        let events = when(&given, attend(12, true))?;
        assert_eq!(
            events,
            vec![
                SchedulingEvent::SessionAttended(SessionAttended {
                    referral_id: referral(),
                    session_no: 12
                }),
                SchedulingEvent::CourseCompleted(CourseCompleted {
                    referral_id: referral(),
                    attended: 10,
                    missed: 1,
                    cancelled: 1
                })
            ]
        );
        given.extend(events);
        assert_eq!(
            fold::<EpisodeState>(&given).status,
            Some(EpisodeStatus::Completed)
        );
        Ok(())
    }

    #[test]
    fn early_discharge_ends_the_episode_and_tells_the_referrer() -> TestResult {
        let mut given = given_booked_class()?;
        then_add(&mut given, attend(1, true))?;
        let events = when(
            &given,
            EpisodeCommand::Discharge {
                reason: DischargeReason::GoalsMet,
            },
        )?;
        assert_eq!(
            events,
            vec![SchedulingEvent::RehabDischarged(RehabDischarged {
                referral_id: referral(),
                reason: DischargeReason::GoalsMet,
                notify_referrer: true
            })]
        );
        given.extend(events);
        assert!(matches!(
            when(
                &given,
                EpisodeCommand::Discharge {
                    reason: DischargeReason::GoalsMet
                }
            ),
            Err(DomainError::WrongStatus { .. })
        ));
        Ok(())
    }

    #[test]
    fn declining_an_offer_returns_to_the_list_with_the_original_wait() -> TestResult {
        let mut given = vec![waitlisted(Programme::EscapePain, 12)];
        let offer_id = Uuid::from_u128(9);
        then_add(
            &mut given,
            EpisodeCommand::MakeOffer {
                offer_id,
                place: class_info(),
            },
        )?;
        let before = fold::<EpisodeState>(&given);
        assert_eq!(before.status, Some(EpisodeStatus::Offered));
        let events = when(
            &given,
            EpisodeCommand::RespondToOffer {
                offer_id,
                accept: false,
            },
        )?;
        assert_eq!(
            events,
            vec![SchedulingEvent::OfferDeclined(OfferDeclined {
                referral_id: referral(),
                offer_id
            })]
        );
        given.extend(events);
        let after = fold::<EpisodeState>(&given);
        assert_eq!(after.status, Some(EpisodeStatus::Waiting));
        assert_eq!(
            after.waitlisted.map(|w| w.need_recorded_at),
            Some(Utc.with_ymd_and_hms(2026, 1, 10, 9, 0, 0).unwrap())
        );
        // And may be offered again.
        assert_eq!(
            types(&when(
                &given,
                EpisodeCommand::MakeOffer {
                    offer_id: Uuid::from_u128(10),
                    place: class_info()
                }
            )?),
            ["OfferMade"]
        );
        Ok(())
    }

    #[test]
    fn an_accepted_offer_books_only_the_offered_place() -> TestResult {
        let mut given = vec![waitlisted(Programme::OneToOne, 2)];
        let offer_id = Uuid::from_u128(9);
        then_add(
            &mut given,
            EpisodeCommand::MakeOffer {
                offer_id,
                place: slot_info(3, ContactMode::FaceToFace),
            },
        )?;
        assert_eq!(
            when(
                &given,
                EpisodeCommand::RespondToOffer {
                    offer_id: Uuid::from_u128(1),
                    accept: true
                }
            ),
            Err(DomainError::OfferMismatch("not the open offer"))
        );
        then_add(
            &mut given,
            EpisodeCommand::RespondToOffer {
                offer_id,
                accept: true,
            },
        )?;
        assert!(matches!(
            when(
                &given,
                EpisodeCommand::Book(slot_info(10, ContactMode::FaceToFace))
            ),
            Err(DomainError::OfferMismatch(_))
        ));
        assert_eq!(
            types(&when(
                &given,
                EpisodeCommand::Book(slot_info(3, ContactMode::FaceToFace))
            )?),
            ["PlaceBooked"]
        );
        Ok(())
    }

    #[test]
    fn offers_respect_the_patients_choice_and_programme() {
        let given = vec![waitlisted(Programme::EscapePain, 12)];
        let mut elsewhere = class_info();
        elsewhere.venue_id = "bradford".to_owned();
        assert_eq!(
            when(
                &given,
                EpisodeCommand::MakeOffer {
                    offer_id: Uuid::from_u128(9),
                    place: elsewhere
                }
            ),
            Err(DomainError::ChoiceNotMet)
        );
        let mut tuesdays = class_info();
        tuesdays.days = vec![DayOfWeek::Tuesday, DayOfWeek::Thursday];
        assert_eq!(
            when(&given, EpisodeCommand::Book(tuesdays)),
            Err(DomainError::ChoiceNotMet)
        );
        assert_eq!(
            when(
                &given,
                EpisodeCommand::Book(slot_info(3, ContactMode::FaceToFace))
            ),
            Err(DomainError::ProgrammeMismatch {
                needed: Programme::EscapePain,
                offered: Programme::OneToOne
            })
        );
    }

    #[test]
    fn one_to_one_sessions_are_booked_and_rebooked_slot_by_slot() -> TestResult {
        // Video slots on the patient's days (Monday and Thursday).
        let mut given = vec![waitlisted(Programme::OneToOne, 2)];
        then_add(
            &mut given,
            EpisodeCommand::Book(slot_info(0, ContactMode::Video)),
        )?; // Mon 2 Mar
        then_add(
            &mut given,
            EpisodeCommand::Book(slot_info(3, ContactMode::Video)),
        )?; // Thu 5 Mar
        assert_eq!(
            when(
                &given,
                EpisodeCommand::Book(slot_info(7, ContactMode::Video))
            ),
            Err(DomainError::CourseFullyBooked)
        );
        then_add(&mut given, attend(1, true))?;
        then_add(
            &mut given,
            EpisodeCommand::CancelSession {
                session_no: 2,
                by: CancelledBy::Patient,
            },
        )?;
        let state = fold::<EpisodeState>(&given);
        assert_eq!(state.status, Some(EpisodeStatus::Booked));
        assert!(state.held_places().is_empty());
        // Re-booked into another slot: session 3.
        then_add(
            &mut given,
            EpisodeCommand::Book(slot_info(7, ContactMode::Video)),
        )?; // Mon 9 Mar
        assert_eq!(
            fold::<EpisodeState>(&given).held_places(),
            vec![Place::Slot {
                slot_id: Uuid::from_u128(7)
            }]
        );
        assert_eq!(
            types(&when(&given, attend(3, true))?),
            ["SessionAttended", "CourseCompleted"]
        );
        Ok(())
    }

    #[test]
    fn commands_on_an_unknown_episode_are_not_found() {
        assert!(matches!(
            when(&[], attend(1, true)),
            Err(DomainError::NotFound { .. })
        ));
    }

    #[test]
    fn a_patient_is_waitlisted_once() {
        let given = vec![waitlisted(Programme::EscapePain, 12)];
        let SchedulingEvent::PatientWaitlisted(w) = waitlisted(Programme::EscapePain, 12) else {
            return;
        };
        assert!(matches!(
            when(&given, EpisodeCommand::Waitlist(w)),
            Err(DomainError::AlreadyExists { .. })
        ));
    }
}
