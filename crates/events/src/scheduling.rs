//! Events of the scheduling streams.
//!
//! - `venue-{venue_id}`: [`VenueRegistered`].
//! - `class-{class_id}`: [`ClassScheduled`], then the class's enrolments
//!   ([`ClassEnrolled`], [`ClassPlaceReleased`]); writers append with an
//!   exact expected version, so two bookings can never take the same place.
//! - `rehab-slot-{slot_id}`: [`SlotPublished`], [`SlotBooked`], [`SlotReleased`].
//! - `rehab-{referral_id}`: the patient's rehab episode, from
//!   [`PatientWaitlisted`] to [`CourseCompleted`] or [`RehabDischarged`].
//!
//! Times of sessions are local clinic wall-clock times (no offset); the
//! time a need was recorded is an instant (UTC).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{ContactMode, Error, FcpPriority, Pathway};

/// Declares a closed list of kebab-case codes with `code` and `parse`.
macro_rules! codes {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $code)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            pub fn parse(code: &str) -> Result<Self, Error> {
                match code {
                    $($code => Ok($name::$variant),)+
                    other => Err(Error::UnknownCode { what: $what, code: other.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.code())
            }
        }
    };
}

codes!(
    /// What kind of rehabilitation a patient needs.
    Programme, "programme" {
        /// 1:1 community physiotherapy, booked slot by slot.
        OneToOne = "one-to-one",
        /// ESCAPE-pain group programme (knee/hip): 12 sessions, twice a week
        /// for 6 weeks.
        EscapePain = "escape-pain",
        /// Strength and balance / falls prevention group.
        StrengthAndBalance = "strength-and-balance",
    }
);

impl Programme {
    /// Whether the programme runs as a group class.
    pub fn is_group(self) -> bool {
        !matches!(self, Programme::OneToOne)
    }
}

codes!(
    /// A day of the week.
    DayOfWeek, "day of week" {
        Monday = "monday",
        Tuesday = "tuesday",
        Wednesday = "wednesday",
        Thursday = "thursday",
        Friday = "friday",
        Saturday = "saturday",
        Sunday = "sunday",
    }
);

impl DayOfWeek {
    /// The day of the week of a date.
    pub fn of(date: NaiveDate) -> Self {
        match date.weekday() {
            chrono::Weekday::Mon => DayOfWeek::Monday,
            chrono::Weekday::Tue => DayOfWeek::Tuesday,
            chrono::Weekday::Wed => DayOfWeek::Wednesday,
            chrono::Weekday::Thu => DayOfWeek::Thursday,
            chrono::Weekday::Fri => DayOfWeek::Friday,
            chrono::Weekday::Sat => DayOfWeek::Saturday,
            chrono::Weekday::Sun => DayOfWeek::Sunday,
        }
    }
}

codes!(
    /// Who cancelled a session.
    CancelledBy, "cancelled by" {
        Patient = "patient",
        Service = "service",
    }
);

codes!(
    /// Why a rehab episode ended before its course was completed.
    DischargeReason, "discharge reason" {
        /// The did-not-attend policy ended the episode.
        DidNotAttend = "did-not-attend",
        /// Goals met before the end of the course.
        GoalsMet = "goals-met",
        /// The patient chose to stop.
        PatientWithdrew = "patient-withdrew",
        /// A clinician ended the course (e.g. onward referral).
        ClinicalDecision = "clinical-decision",
    }
);

/// What the patient asked for. An empty list means "any".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct PatientChoices {
    pub venue_ids: Vec<String>,
    pub days: Vec<DayOfWeek>,
    pub modes: Vec<ContactMode>,
}

impl PatientChoices {
    /// Whether a place at `venue_id`, `mode`, meeting on every one of `days`,
    /// fits these choices.
    pub fn accepts(&self, venue_id: &str, days: &[DayOfWeek], mode: ContactMode) -> bool {
        // Venue and day only matter when the patient travels.
        let travels = mode == ContactMode::FaceToFace;
        let venue_ok =
            !travels || self.venue_ids.is_empty() || self.venue_ids.iter().any(|v| v == venue_id);
        let days_ok = self.days.is_empty() || days.iter().all(|d| self.days.contains(d));
        let mode_ok = self.modes.is_empty() || self.modes.contains(&mode);
        venue_ok && days_ok && mode_ok
    }
}

/// A class or a 1:1 slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Place {
    Class { class_id: Uuid },
    Slot { slot_id: Uuid },
}

/// One session of a patient's course.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BookedSession {
    /// 1-based number of the session in the episode.
    pub session_no: u32,
    /// Local clinic time.
    pub starts_at: NaiveDateTime,
    pub venue_id: String,
    pub mode: ContactMode,
}

/// A venue where classes and clinics run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VenueRegistered {
    pub venue_id: String,
    pub name: String,
}

/// A group class with its course dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClassScheduled {
    pub class_id: Uuid,
    pub programme: Programme,
    pub venue_id: String,
    /// The days of the week it meets.
    pub days: Vec<DayOfWeek>,
    /// Local start time of every session.
    pub start_time: NaiveTime,
    pub duration_minutes: u32,
    /// Places in the class.
    pub capacity: u32,
    /// Every session date of the course, in order.
    pub session_dates: Vec<NaiveDate>,
}

/// A clinician's 1:1 slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotPublished {
    pub slot_id: Uuid,
    /// Staff identifier of the clinician.
    pub clinician: String,
    pub venue_id: String,
    /// Local clinic time.
    pub starts_at: NaiveDateTime,
    /// Local clinic time.
    pub ends_at: NaiveDateTime,
    pub mode: ContactMode,
}

/// A patient took a place in a class (class stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClassEnrolled {
    pub class_id: Uuid,
    pub referral_id: Uuid,
}

/// A patient's place in a class was freed (class stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClassPlaceReleased {
    pub class_id: Uuid,
    pub referral_id: Uuid,
}

/// A patient took a 1:1 slot (slot stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotBooked {
    pub slot_id: Uuid,
    pub referral_id: Uuid,
}

/// A 1:1 slot was freed (slot stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotReleased {
    pub slot_id: Uuid,
    pub referral_id: Uuid,
}

/// A patient joined the rehab waiting list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PatientWaitlisted {
    pub referral_id: Uuid,
    pub priority: FcpPriority,
    pub pathway: Pathway,
    pub programme: Programme,
    /// Sessions in the course.
    pub sessions: u32,
    /// When the need was recorded: the wait is counted from here, and a
    /// declined offer does not reset it.
    pub need_recorded_at: DateTime<Utc>,
    pub choices: PatientChoices,
}

/// A place was offered to a waiting patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OfferMade {
    pub referral_id: Uuid,
    pub offer_id: Uuid,
    pub place: Place,
    /// Local clinic time of the first session offered.
    pub first_session_at: NaiveDateTime,
}

/// The patient accepted an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OfferAccepted {
    pub referral_id: Uuid,
    pub offer_id: Uuid,
}

/// The patient declined an offer and is back on the list with the original wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OfferDeclined {
    pub referral_id: Uuid,
    pub offer_id: Uuid,
}

/// The patient was booked into a class course or a 1:1 slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlaceBooked {
    pub referral_id: Uuid,
    pub place: Place,
    pub sessions: Vec<BookedSession>,
}

/// The patient attended a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionAttended {
    pub referral_id: Uuid,
    pub session_no: u32,
}

/// The patient did not attend a session (DNA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionMissed {
    pub referral_id: Uuid,
    pub session_no: u32,
    /// Sessions missed in the episode, this one included.
    pub missed_total: u32,
}

/// A session was cancelled. Neither side's cancellation is a DNA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionCancelled {
    pub referral_id: Uuid,
    pub session_no: u32,
    pub by: CancelledBy,
}

/// Every session of the course was attended or accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CourseCompleted {
    pub referral_id: Uuid,
    pub attended: u32,
    pub missed: u32,
    pub cancelled: u32,
}

/// The episode ended before its course was completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RehabDischarged {
    pub referral_id: Uuid,
    pub reason: DischargeReason,
    /// Whether the referrer must be told.
    pub notify_referrer: bool,
}

/// Events of the scheduling streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum SchedulingEvent {
    VenueRegistered(VenueRegistered),
    ClassScheduled(ClassScheduled),
    SlotPublished(SlotPublished),
    ClassEnrolled(ClassEnrolled),
    ClassPlaceReleased(ClassPlaceReleased),
    SlotBooked(SlotBooked),
    SlotReleased(SlotReleased),
    PatientWaitlisted(PatientWaitlisted),
    OfferMade(OfferMade),
    OfferAccepted(OfferAccepted),
    OfferDeclined(OfferDeclined),
    PlaceBooked(PlaceBooked),
    SessionAttended(SessionAttended),
    SessionMissed(SessionMissed),
    SessionCancelled(SessionCancelled),
    CourseCompleted(CourseCompleted),
    RehabDischarged(RehabDischarged),
}

impl SchedulingEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            SchedulingEvent::VenueRegistered(_) => "VenueRegistered",
            SchedulingEvent::ClassScheduled(_) => "ClassScheduled",
            SchedulingEvent::SlotPublished(_) => "SlotPublished",
            SchedulingEvent::ClassEnrolled(_) => "ClassEnrolled",
            SchedulingEvent::ClassPlaceReleased(_) => "ClassPlaceReleased",
            SchedulingEvent::SlotBooked(_) => "SlotBooked",
            SchedulingEvent::SlotReleased(_) => "SlotReleased",
            SchedulingEvent::PatientWaitlisted(_) => "PatientWaitlisted",
            SchedulingEvent::OfferMade(_) => "OfferMade",
            SchedulingEvent::OfferAccepted(_) => "OfferAccepted",
            SchedulingEvent::OfferDeclined(_) => "OfferDeclined",
            SchedulingEvent::PlaceBooked(_) => "PlaceBooked",
            SchedulingEvent::SessionAttended(_) => "SessionAttended",
            SchedulingEvent::SessionMissed(_) => "SessionMissed",
            SchedulingEvent::SessionCancelled(_) => "SessionCancelled",
            SchedulingEvent::CourseCompleted(_) => "CourseCompleted",
            SchedulingEvent::RehabDischarged(_) => "RehabDischarged",
        }
    }

    /// Every scheduling event type name.
    pub const TYPES: &'static [&'static str] = &[
        "VenueRegistered",
        "ClassScheduled",
        "SlotPublished",
        "ClassEnrolled",
        "ClassPlaceReleased",
        "SlotBooked",
        "SlotReleased",
        "PatientWaitlisted",
        "OfferMade",
        "OfferAccepted",
        "OfferDeclined",
        "PlaceBooked",
        "SessionAttended",
        "SessionMissed",
        "SessionCancelled",
        "CourseCompleted",
        "RehabDischarged",
    ];
}

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("VenueRegistered", schemars::schema_for!(VenueRegistered)),
        ("ClassScheduled", schemars::schema_for!(ClassScheduled)),
        ("SlotPublished", schemars::schema_for!(SlotPublished)),
        ("ClassEnrolled", schemars::schema_for!(ClassEnrolled)),
        (
            "ClassPlaceReleased",
            schemars::schema_for!(ClassPlaceReleased),
        ),
        ("SlotBooked", schemars::schema_for!(SlotBooked)),
        ("SlotReleased", schemars::schema_for!(SlotReleased)),
        (
            "PatientWaitlisted",
            schemars::schema_for!(PatientWaitlisted),
        ),
        ("OfferMade", schemars::schema_for!(OfferMade)),
        ("OfferAccepted", schemars::schema_for!(OfferAccepted)),
        ("OfferDeclined", schemars::schema_for!(OfferDeclined)),
        ("PlaceBooked", schemars::schema_for!(PlaceBooked)),
        ("SessionAttended", schemars::schema_for!(SessionAttended)),
        ("SessionMissed", schemars::schema_for!(SessionMissed)),
        ("SessionCancelled", schemars::schema_for!(SessionCancelled)),
        ("CourseCompleted", schemars::schema_for!(CourseCompleted)),
        ("RehabDischarged", schemars::schema_for!(RehabDischarged)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_matches_the_serde_tag() -> Result<(), serde_json::Error> {
        let e = SchedulingEvent::OfferDeclined(OfferDeclined {
            referral_id: Uuid::nil(),
            offer_id: Uuid::nil(),
        });
        let v = serde_json::to_value(&e)?;
        assert_eq!(v["type"], e.event_type());
        assert!(SchedulingEvent::TYPES.contains(&e.event_type()));
        assert_eq!(SchedulingEvent::TYPES.len(), schemas().len());
        Ok(())
    }

    #[test]
    fn choices_respect_venue_day_and_mode() {
        let choices = PatientChoices {
            venue_ids: vec!["leeds-central".to_owned()],
            days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
            modes: vec![ContactMode::FaceToFace, ContactMode::Video],
        };
        let mon_thu = [DayOfWeek::Monday, DayOfWeek::Thursday];
        assert!(choices.accepts("leeds-central", &mon_thu, ContactMode::FaceToFace));
        assert!(!choices.accepts("bradford", &mon_thu, ContactMode::FaceToFace));
        assert!(!choices.accepts(
            "leeds-central",
            &[DayOfWeek::Tuesday],
            ContactMode::FaceToFace
        ));
        assert!(!choices.accepts("leeds-central", &mon_thu, ContactMode::Telephone));
        // Venue does not matter for a video session.
        assert!(choices.accepts("bradford", &[DayOfWeek::Monday], ContactMode::Video));
        assert!(PatientChoices::default().accepts("x", &mon_thu, ContactMode::Telephone));
    }
}
