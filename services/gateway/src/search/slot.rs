//! `Slot` search: by schedule, status and start.

use chrono::{DateTime, Utc};

use crate::search::params::{DateFilter, Invalid};

/// A parsed `Slot` search: `schedule`, `status`, `start`.
#[derive(Debug, Clone, Default)]
pub struct SlotSearch {
    schedules: Vec<String>,
    statuses: Vec<String>,
    starts: Vec<DateFilter>,
}

impl SlotSearch {
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, Invalid> {
        let mut s = SlotSearch::default();
        for (key, raw) in pairs {
            match key.as_str() {
                "_count" | "_offset" | "_format" => {}
                "schedule" => s.schedules.extend(
                    raw.split(',')
                        .map(|v| v.rsplit('/').next().unwrap_or(v).to_owned()),
                ),
                "status" => s.statuses.extend(raw.split(',').map(str::to_owned)),
                "start" => s.starts.push(DateFilter::parse(raw)?),
                other => {
                    return Err(Invalid(format!(
                        "search parameter '{other}' is not supported on Slot (supported: schedule, status, start)"
                    )));
                }
            }
        }
        Ok(s)
    }

    /// Whether a rendered Slot matches.
    pub fn matches(&self, slot: &serde_json::Value) -> bool {
        let schedule = slot["schedule"]["reference"].as_str().unwrap_or_default();
        let status = slot["status"].as_str().unwrap_or_default();
        let start = slot["start"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        (self.schedules.is_empty()
            || self
                .schedules
                .iter()
                .any(|id| schedule.ends_with(id.as_str())))
            && (self.statuses.is_empty() || self.statuses.iter().any(|s| s == status))
            && self
                .starts
                .iter()
                .all(|d| start.is_some_and(|t| d.matches(t)))
    }
}
