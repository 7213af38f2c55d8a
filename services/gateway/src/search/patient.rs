//! `Patient` search: by id and by NHS number.

use mskflow_events::NHS_NUMBER_SYSTEM;

use crate::search::params::{
    DEFAULT_COUNT, Invalid, names_the_patient, parse_count, parse_offset, token,
};
use crate::views::{ReferralView, Views};

/// Search parameters of `Patient`.
pub const PATIENT_PARAMETERS: &[(&str, &str)] = &[("_id", "token"), ("identifier", "token")];

/// A parsed `Patient` search: `_id` and `identifier` (the NHS number), each
/// a comma-separated list of alternatives; repeated parameters must all hold.
#[derive(Debug, Clone)]
pub struct PatientSearch {
    ids: Vec<Vec<Option<uuid::Uuid>>>,
    identifiers: Vec<Vec<String>>,
    pub count: usize,
    pub offset: usize,
}

impl PatientSearch {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, Invalid> {
        let mut s = PatientSearch {
            ids: Vec::new(),
            identifiers: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
        };
        for (key, raw) in pairs {
            match key.as_str() {
                "_count" => s.count = parse_count(raw)?,
                "_offset" => s.offset = parse_offset(raw)?,
                "_format" => {}
                "_id" => s.ids.push(
                    raw.split(',')
                        .map(|v| uuid::Uuid::parse_str(v).ok())
                        .collect(),
                ),
                "identifier" => s
                    .identifiers
                    .push(raw.split(',').map(str::to_owned).collect()),
                other => {
                    return Err(Invalid(format!(
                        "search parameter '{other}' is not supported on Patient (supported: _id, identifier, _count, _offset)"
                    )));
                }
            }
        }
        Ok(s)
    }

    /// The matching Patient views (each the referrals that carried the
    /// patient, in the order received), by Patient id. An `identifier` or
    /// `_id` is looked up in the views' index; only a search with neither
    /// reads every patient.
    pub fn run<'a>(&self, views: &'a Views) -> Vec<Vec<&'a ReferralView>> {
        let mut matched: Vec<Vec<&ReferralView>> = if let Some(first) = self.identifiers.first() {
            first
                .iter()
                .filter_map(|raw| {
                    let (system, value) = token(raw);
                    system
                        .is_none_or(|s| s.is_empty() || s == NHS_NUMBER_SYSTEM)
                        .then(|| views.referrals_of_patient(value))
                })
                .filter(|p| !p.is_empty())
                .collect()
        } else if let Some(first) = self.ids.first() {
            first
                .iter()
                .flatten()
                .filter_map(|id| views.patient(id))
                .collect()
        } else {
            views.patients().collect()
        };
        matched.retain(|p| self.matches(p));
        matched.sort_by_key(|p| p.first().map(|r| r.referral_id));
        matched.dedup_by_key(|p| p.first().map(|r| r.referral_id));
        matched
    }

    pub(crate) fn matches(&self, patient: &[&ReferralView]) -> bool {
        let Some(first) = patient.first() else {
            return false;
        };
        self.ids
            .iter()
            .all(|alternatives| alternatives.contains(&Some(first.referral_id)))
            && self
                .identifiers
                .iter()
                .all(|alternatives| names_the_patient(alternatives, &first.details.patient))
    }
}
