//! Venues, group classes and 1:1 slots.

use std::collections::BTreeSet;

use chrono::{Days, NaiveDate, NaiveDateTime, NaiveTime};
use mskflow_events::scheduling::{
    ClassEnrolled, ClassPlaceReleased, ClassScheduled, DayOfWeek, Programme, SchedulingEvent,
    SlotBooked, SlotPublished, SlotReleased, VenueRegistered,
};
use mskflow_events::types::ContactMode;
use uuid::Uuid;

use super::{Aggregate, DomainError, Policy, default_course_length};

/// The longest a course may run: past this, `course_dates` stops looking.
const MAX_COURSE_DAYS: u64 = 2 * 366;
/// The most sessions one course may have.
pub const MAX_SESSIONS: u32 = 104;

/// The first `sessions` dates on or after `start` that fall on one of `days`.
///
/// Returns fewer dates only when `days` is empty or the course would run
/// past two years.
pub fn course_dates(start: NaiveDate, days: &[DayOfWeek], sessions: u32) -> Vec<NaiveDate> {
    let mut dates = Vec::with_capacity(sessions as usize);
    if days.is_empty() {
        return dates;
    }
    for offset in 0..MAX_COURSE_DAYS {
        if dates.len() >= sessions as usize {
            break;
        }
        let Some(date) = start.checked_add_days(Days::new(offset)) else {
            break;
        };
        if days.contains(&DayOfWeek::of(date)) {
            dates.push(date);
        }
    }
    dates
}

// ---------------------------------------------------------------- venue

/// A venue's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VenueState {
    pub venue: Option<VenueRegistered>,
    pub version: u64,
}

/// What may be asked of a venue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VenueCommand {
    Register { venue_id: String, name: String },
}

impl VenueState {
    pub fn handle(&self, cmd: VenueCommand) -> Result<Vec<SchedulingEvent>, DomainError> {
        match cmd {
            VenueCommand::Register { venue_id, name } => {
                if self.venue.is_some() {
                    return Err(DomainError::AlreadyExists {
                        what: "venue",
                        id: venue_id,
                    });
                }
                Ok(vec![SchedulingEvent::VenueRegistered(VenueRegistered {
                    venue_id,
                    name,
                })])
            }
        }
    }
}

impl Aggregate for VenueState {
    fn apply(mut self, event: &SchedulingEvent) -> Self {
        if let SchedulingEvent::VenueRegistered(e) = event {
            self.venue = Some(e.clone());
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

// ---------------------------------------------------------------- class

/// How to schedule a class. `capacity` and `sessions` fall back to the
/// policy's class size and the programme's course length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    pub class_id: Uuid,
    pub programme: Programme,
    pub venue_id: String,
    pub days: Vec<DayOfWeek>,
    pub start_time: NaiveTime,
    pub duration_minutes: u32,
    pub capacity: Option<u32>,
    pub start_date: NaiveDate,
    pub sessions: Option<u32>,
}

/// A class and who holds its places.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassState {
    pub class: Option<ClassScheduled>,
    pub enrolled: BTreeSet<Uuid>,
    pub version: u64,
}

/// What may be asked of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassCommand {
    Schedule(ClassSpec),
    /// Take a place (fails when the class is full).
    Enrol {
        class_id: Uuid,
        referral_id: Uuid,
    },
    /// Free a place (discharge, or a booking undone).
    Release {
        class_id: Uuid,
        referral_id: Uuid,
    },
}

impl ClassState {
    pub fn places_left(&self) -> u32 {
        let capacity = self.class.as_ref().map_or(0, |c| c.capacity);
        capacity.saturating_sub(u32::try_from(self.enrolled.len()).unwrap_or(u32::MAX))
    }

    /// Local start of every session.
    pub fn session_starts(&self) -> Vec<NaiveDateTime> {
        self.class.as_ref().map_or_else(Vec::new, |c| {
            c.session_dates
                .iter()
                .map(|d| d.and_time(c.start_time))
                .collect()
        })
    }

    fn scheduled(&self, class_id: Uuid) -> Result<&ClassScheduled, DomainError> {
        self.class.as_ref().ok_or(DomainError::NotFound {
            what: "class",
            id: class_id.to_string(),
        })
    }

    pub fn handle(
        &self,
        cmd: ClassCommand,
        policy: &Policy,
    ) -> Result<Vec<SchedulingEvent>, DomainError> {
        match cmd {
            ClassCommand::Schedule(spec) => self.schedule(spec, policy),
            ClassCommand::Enrol {
                class_id,
                referral_id,
            } => {
                let class = self.scheduled(class_id)?;
                if self.enrolled.contains(&referral_id) {
                    return Err(DomainError::AlreadyBooked);
                }
                if self.places_left() == 0 {
                    return Err(DomainError::ClassFull {
                        class_id,
                        capacity: class.capacity,
                    });
                }
                Ok(vec![SchedulingEvent::ClassEnrolled(ClassEnrolled {
                    class_id,
                    referral_id,
                })])
            }
            ClassCommand::Release {
                class_id,
                referral_id,
            } => {
                self.scheduled(class_id)?;
                if !self.enrolled.contains(&referral_id) {
                    return Err(DomainError::NotBooked);
                }
                Ok(vec![SchedulingEvent::ClassPlaceReleased(
                    ClassPlaceReleased {
                        class_id,
                        referral_id,
                    },
                )])
            }
        }
    }

    fn schedule(
        &self,
        spec: ClassSpec,
        policy: &Policy,
    ) -> Result<Vec<SchedulingEvent>, DomainError> {
        if self.class.is_some() {
            return Err(DomainError::AlreadyExists {
                what: "class",
                id: spec.class_id.to_string(),
            });
        }
        if !spec.programme.is_group() {
            return Err(DomainError::Invalid {
                field: "programme",
                reason: "a class must run a group programme".to_owned(),
            });
        }
        let mut days = spec.days;
        days.sort_unstable();
        days.dedup();
        if days.is_empty() {
            return Err(DomainError::Invalid {
                field: "days",
                reason: "at least one day of the week is required".to_owned(),
            });
        }
        let default_length = default_course_length(spec.programme);
        let sessions = spec.sessions.unwrap_or(default_length);
        if spec.programme == Programme::EscapePain {
            // ESCAPE-pain: 12 sessions, twice a week for 6 weeks.
            if days.len() != 2 {
                return Err(DomainError::Invalid {
                    field: "days",
                    reason: "ESCAPE-pain meets twice a week: give exactly two days".to_owned(),
                });
            }
            if sessions != default_length {
                return Err(DomainError::Invalid {
                    field: "sessions",
                    reason: format!("an ESCAPE-pain course has {default_length} sessions"),
                });
            }
        }
        if !(1..=MAX_SESSIONS).contains(&sessions) {
            return Err(DomainError::Invalid {
                field: "sessions",
                reason: format!("must be between 1 and {MAX_SESSIONS}"),
            });
        }
        let capacity = spec.capacity.unwrap_or(policy.default_class_size);
        if !(1..=policy.max_class_size).contains(&capacity) {
            return Err(DomainError::Invalid {
                field: "capacity",
                reason: format!("must be between 1 and {}", policy.max_class_size),
            });
        }
        if !(1..=24 * 60).contains(&spec.duration_minutes) {
            return Err(DomainError::Invalid {
                field: "duration_minutes",
                reason: "must be between 1 and 1440".to_owned(),
            });
        }
        let session_dates = course_dates(spec.start_date, &days, sessions);
        if session_dates.len() != sessions as usize {
            return Err(DomainError::Invalid {
                field: "start_date",
                reason: "the course dates cannot be generated from it".to_owned(),
            });
        }
        Ok(vec![SchedulingEvent::ClassScheduled(ClassScheduled {
            class_id: spec.class_id,
            programme: spec.programme,
            venue_id: spec.venue_id,
            days,
            start_time: spec.start_time,
            duration_minutes: spec.duration_minutes,
            capacity,
            session_dates,
        })])
    }
}

impl Aggregate for ClassState {
    fn apply(mut self, event: &SchedulingEvent) -> Self {
        match event {
            SchedulingEvent::ClassScheduled(e) => self.class = Some(e.clone()),
            SchedulingEvent::ClassEnrolled(e) => {
                self.enrolled.insert(e.referral_id);
            }
            SchedulingEvent::ClassPlaceReleased(e) => {
                self.enrolled.remove(&e.referral_id);
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

// ---------------------------------------------------------------- slot

/// A clinician's 1:1 slot and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotState {
    pub slot: Option<SlotPublished>,
    pub booked_by: Option<Uuid>,
    pub version: u64,
}

/// What may be asked of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotCommand {
    Publish {
        slot_id: Uuid,
        clinician: String,
        venue_id: String,
        starts_at: NaiveDateTime,
        ends_at: NaiveDateTime,
        mode: ContactMode,
    },
    Book {
        slot_id: Uuid,
        referral_id: Uuid,
    },
    Release {
        slot_id: Uuid,
        referral_id: Uuid,
    },
}

impl SlotState {
    fn published(&self, slot_id: Uuid) -> Result<&SlotPublished, DomainError> {
        self.slot.as_ref().ok_or(DomainError::NotFound {
            what: "slot",
            id: slot_id.to_string(),
        })
    }

    pub fn handle(&self, cmd: SlotCommand) -> Result<Vec<SchedulingEvent>, DomainError> {
        match cmd {
            SlotCommand::Publish {
                slot_id,
                clinician,
                venue_id,
                starts_at,
                ends_at,
                mode,
            } => {
                if self.slot.is_some() {
                    return Err(DomainError::AlreadyExists {
                        what: "slot",
                        id: slot_id.to_string(),
                    });
                }
                if ends_at <= starts_at {
                    return Err(DomainError::Invalid {
                        field: "ends_at",
                        reason: "must be after starts_at".to_owned(),
                    });
                }
                Ok(vec![SchedulingEvent::SlotPublished(SlotPublished {
                    slot_id,
                    clinician,
                    venue_id,
                    starts_at,
                    ends_at,
                    mode,
                })])
            }
            SlotCommand::Book {
                slot_id,
                referral_id,
            } => {
                self.published(slot_id)?;
                match self.booked_by {
                    Some(holder) if holder == referral_id => Err(DomainError::AlreadyBooked),
                    Some(_) => Err(DomainError::SlotTaken { slot_id }),
                    None => Ok(vec![SchedulingEvent::SlotBooked(SlotBooked {
                        slot_id,
                        referral_id,
                    })]),
                }
            }
            SlotCommand::Release {
                slot_id,
                referral_id,
            } => {
                self.published(slot_id)?;
                if self.booked_by != Some(referral_id) {
                    return Err(DomainError::NotBooked);
                }
                Ok(vec![SchedulingEvent::SlotReleased(SlotReleased {
                    slot_id,
                    referral_id,
                })])
            }
        }
    }
}

impl Aggregate for SlotState {
    fn apply(mut self, event: &SchedulingEvent) -> Self {
        match event {
            SchedulingEvent::SlotPublished(e) => self.slot = Some(e.clone()),
            SchedulingEvent::SlotBooked(e) => self.booked_by = Some(e.referral_id),
            SchedulingEvent::SlotReleased(e) if self.booked_by == Some(e.referral_id) => {
                self.booked_by = None;
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
    use super::super::fold;
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn spec(capacity: u32) -> ClassSpec {
        ClassSpec {
            class_id: Uuid::from_u128(1),
            programme: Programme::EscapePain,
            venue_id: "leeds-central".to_owned(),
            days: vec![DayOfWeek::Thursday, DayOfWeek::Monday],
            start_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            duration_minutes: 60,
            capacity: Some(capacity),
            // A Wednesday: the course starts on Thursday 5 March.
            start_date: NaiveDate::from_ymd_opt(2026, 3, 4).unwrap(),
            sessions: None,
        }
    }

    /// Given a class of `capacity` with `enrolled` patients.
    fn given_class(capacity: u32, enrolled: u128) -> Result<Vec<SchedulingEvent>, DomainError> {
        let mut events = ClassState::default()
            .handle(ClassCommand::Schedule(spec(capacity)), &Policy::default())?;
        for n in 0..enrolled {
            events.push(SchedulingEvent::ClassEnrolled(ClassEnrolled {
                class_id: Uuid::from_u128(1),
                referral_id: Uuid::from_u128(100 + n),
            }));
        }
        Ok(events)
    }

    fn when(
        given: &[SchedulingEvent],
        cmd: ClassCommand,
    ) -> Result<Vec<SchedulingEvent>, DomainError> {
        fold::<ClassState>(given).handle(cmd, &Policy::default())
    }

    fn enrol(n: u128) -> ClassCommand {
        ClassCommand::Enrol {
            class_id: Uuid::from_u128(1),
            referral_id: Uuid::from_u128(n),
        }
    }

    #[test]
    fn escape_pain_course_is_12_sessions_twice_weekly_over_6_weeks() -> TestResult {
        let events = when(&[], ClassCommand::Schedule(spec(10)))?;
        let [SchedulingEvent::ClassScheduled(class)] = events.as_slice() else {
            return Err(format!("unexpected {events:?}").into());
        };
        let dates = &class.session_dates;
        assert_eq!(dates.len(), 12);
        assert_eq!(dates.first(), NaiveDate::from_ymd_opt(2026, 3, 5).as_ref());
        assert_eq!(dates.last(), NaiveDate::from_ymd_opt(2026, 4, 13).as_ref());
        // Within six weeks of the first session.
        assert!((dates[11] - dates[0]).num_days() < 42);
        // Six weeks from the first session, two sessions in each.
        let first = dates[0];
        for week in 0..6 {
            let in_week = dates
                .iter()
                .filter(|d| (**d - first).num_days() / 7 == week)
                .count();
            assert_eq!(in_week, 2, "week {week}");
        }
        assert!(
            dates
                .iter()
                .all(|d| matches!(DayOfWeek::of(*d), DayOfWeek::Monday | DayOfWeek::Thursday))
        );
        assert!(dates.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(class.days, vec![DayOfWeek::Monday, DayOfWeek::Thursday]);
        assert_eq!(class.capacity, 10);
        Ok(())
    }

    #[test]
    fn escape_pain_needs_two_days_and_twelve_sessions() {
        let mut one_day = spec(10);
        one_day.days = vec![DayOfWeek::Monday];
        assert!(matches!(
            when(&[], ClassCommand::Schedule(one_day)),
            Err(DomainError::Invalid { field: "days", .. })
        ));
        let mut ten = spec(10);
        ten.sessions = Some(10);
        assert!(matches!(
            when(&[], ClassCommand::Schedule(ten)),
            Err(DomainError::Invalid {
                field: "sessions",
                ..
            })
        ));
    }

    #[test]
    fn class_size_is_bounded_by_the_policy() {
        for capacity in [0, 13] {
            assert!(matches!(
                when(&[], ClassCommand::Schedule(spec(capacity))),
                Err(DomainError::Invalid {
                    field: "capacity",
                    ..
                })
            ));
        }
        let mut default = spec(1);
        default.capacity = None;
        let events = when(&[], ClassCommand::Schedule(default));
        assert!(matches!(
            events.as_deref(),
            Ok([SchedulingEvent::ClassScheduled(ClassScheduled {
                capacity: 10,
                ..
            })])
        ));
    }

    #[test]
    fn the_last_place_can_be_taken() -> TestResult {
        let given = given_class(8, 7)?;
        assert_eq!(fold::<ClassState>(&given).places_left(), 1);
        let events = when(&given, enrol(999))?;
        assert_eq!(
            events,
            vec![SchedulingEvent::ClassEnrolled(ClassEnrolled {
                class_id: Uuid::from_u128(1),
                referral_id: Uuid::from_u128(999),
            })]
        );
        Ok(())
    }

    #[test]
    fn a_full_class_refuses_enrolment() -> TestResult {
        let given = given_class(8, 8)?;
        assert_eq!(
            when(&given, enrol(999)),
            Err(DomainError::ClassFull {
                class_id: Uuid::from_u128(1),
                capacity: 8
            })
        );
        Ok(())
    }

    #[test]
    fn a_released_place_can_be_taken_again() -> TestResult {
        let mut given = given_class(8, 8)?;
        given.extend(when(
            &given,
            ClassCommand::Release {
                class_id: Uuid::from_u128(1),
                referral_id: Uuid::from_u128(100),
            },
        )?);
        assert_eq!(when(&given, enrol(999))?.len(), 1);
        Ok(())
    }

    #[test]
    fn the_same_patient_cannot_enrol_twice() -> TestResult {
        let given = given_class(8, 1)?;
        assert_eq!(when(&given, enrol(100)), Err(DomainError::AlreadyBooked));
        Ok(())
    }

    #[test]
    fn enrolment_in_an_unknown_class_is_not_found() {
        assert!(matches!(
            when(&[], enrol(1)),
            Err(DomainError::NotFound { what: "class", .. })
        ));
    }

    #[test]
    fn a_slot_is_booked_once() -> TestResult {
        let slot_id = Uuid::from_u128(7);
        let start = NaiveDate::from_ymd_opt(2026, 3, 5)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let mut given = SlotState::default().handle(SlotCommand::Publish {
            slot_id,
            clinician: "physio-17".to_owned(),
            venue_id: "leeds-central".to_owned(),
            starts_at: start,
            ends_at: start + chrono::Duration::minutes(30),
            mode: ContactMode::Telephone,
        })?;
        let book = |n: u128| SlotCommand::Book {
            slot_id,
            referral_id: Uuid::from_u128(n),
        };
        given.extend(fold::<SlotState>(&given).handle(book(1))?);
        assert_eq!(
            fold::<SlotState>(&given).handle(book(2)),
            Err(DomainError::SlotTaken { slot_id })
        );
        given.extend(fold::<SlotState>(&given).handle(SlotCommand::Release {
            slot_id,
            referral_id: Uuid::from_u128(1),
        })?);
        assert_eq!(fold::<SlotState>(&given).handle(book(2))?.len(), 1);
        Ok(())
    }

    #[test]
    fn a_slot_must_end_after_it_starts() {
        let start = NaiveDate::from_ymd_opt(2026, 3, 5)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        assert!(matches!(
            SlotState::default().handle(SlotCommand::Publish {
                slot_id: Uuid::from_u128(7),
                clinician: "physio-17".to_owned(),
                venue_id: "v".to_owned(),
                starts_at: start,
                ends_at: start,
                mode: ContactMode::Video,
            }),
            Err(DomainError::Invalid {
                field: "ends_at",
                ..
            })
        ));
    }
}
