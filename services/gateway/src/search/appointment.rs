//! `Appointment` search parameters.

use crate::search::params::{
    DEFAULT_COUNT, DateFilter, Invalid, names_the_patient, parse_count, parse_offset, reference_id,
};
use crate::views::ReferralView;

/// Search parameters of `Appointment`.
pub const APPOINTMENT_PARAMETERS: &[(&str, &str)] = &[
    ("_id", "token"),
    ("status", "token"),
    ("date", "date"),
    ("patient", "reference"),
    ("based-on", "reference"),
];

/// A parsed `Appointment` search.
#[derive(Debug, Clone)]
pub struct AppointmentSearch {
    ids: Vec<uuid::Uuid>,
    statuses: Vec<String>,
    dates: Vec<DateFilter>,
    patients: Vec<String>,
    based_on: Vec<Option<uuid::Uuid>>,
    pub count: usize,
    pub offset: usize,
}

impl AppointmentSearch {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, Invalid> {
        let mut s = AppointmentSearch {
            ids: Vec::new(),
            statuses: Vec::new(),
            dates: Vec::new(),
            patients: Vec::new(),
            based_on: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
        };
        for (key, raw) in pairs {
            match key.as_str() {
                "_count" => s.count = parse_count(raw)?,
                "_offset" => s.offset = parse_offset(raw)?,
                "_format" => {}
                "_id" => s.ids.extend(
                    raw.split(',')
                        .map(|v| uuid::Uuid::parse_str(v).unwrap_or_else(|_| uuid::Uuid::nil())),
                ),
                "status" => s.statuses.extend(raw.split(',').map(str::to_owned)),
                "date" => s.dates.push(DateFilter::parse(raw)?),
                "patient:identifier" | "patient.identifier" => {
                    s.patients.extend(raw.split(',').map(str::to_owned))
                }
                "based-on" => s.based_on.extend(raw.split(',').map(reference_id)),
                other => {
                    return Err(Invalid(format!(
                        "search parameter '{other}' is not supported on Appointment (supported: _id, status, date, patient:identifier, based-on, _count, _offset)"
                    )));
                }
            }
        }
        Ok(s)
    }

    /// Whether an appointment of `view` matches.
    pub fn matches(&self, view: &ReferralView, a: &crate::views::AppointmentView) -> bool {
        (self.ids.is_empty() || self.ids.contains(&a.id))
            && (self.statuses.is_empty() || self.statuses.iter().any(|s| s == a.status.code()))
            && self.dates.iter().all(|d| d.matches(a.start))
            && (self.patients.is_empty()
                || names_the_patient(&self.patients, &view.details.patient))
            && (self.based_on.is_empty() || self.based_on.contains(&Some(view.referral_id)))
    }
}
