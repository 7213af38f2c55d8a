//! The search indexes over the referrals, and the resources a referral is
//! searched as (`Task`, `ServiceRequest`) with the times each defines.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use uuid::Uuid;

use crate::views::model::ReferralView;
use crate::views::status;

/// Which resource is being searched (the parameters differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Task,
    ServiceRequest,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Task => "Task",
            Resource::ServiceRequest => "ServiceRequest",
        }
    }

    /// Search parameters supported (besides `_count`, `_offset`, `_sort`,
    /// `_summary` and `_format`), with their FHIR types, for the
    /// CapabilityStatement.
    pub fn parameters(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Resource::Task => &[
                ("_id", "token"),
                ("_lastUpdated", "date"),
                ("focus", "reference"),
                ("based-on", "reference"),
                ("status", "token"),
                ("business-status", "token"),
                ("patient", "reference"),
                ("subject", "reference"),
                ("authored-on", "date"),
            ],
            Resource::ServiceRequest => &[
                ("_id", "token"),
                ("_lastUpdated", "date"),
                ("identifier", "token"),
                ("status", "token"),
                ("priority", "token"),
                ("patient", "reference"),
                ("subject", "reference"),
                ("authored", "date"),
            ],
        }
    }

    pub(crate) fn sort_keys(self) -> &'static [&'static str] {
        match self {
            Resource::Task => &["_lastUpdated", "authored-on", "_id"],
            Resource::ServiceRequest => &["_lastUpdated", "authored", "_id"],
        }
    }
}

/// The `authored` time of a referral as `resource`: Task.authoredOn is when
/// we received it; ServiceRequest.authoredOn is what the sender wrote (when it
/// parses). What the `authored`/`authored-on` filters and sorts compare.
pub fn authored(resource: Resource, view: &ReferralView) -> DateTime<Utc> {
    match resource {
        Resource::Task => view.created,
        Resource::ServiceRequest => view
            .details
            .authored_on
            .as_deref()
            .and_then(parse_date_range)
            .map_or(view.created, |(start, _)| start),
    }
}

/// The `_lastUpdated` time of a referral as `resource`.
pub fn last_updated(resource: Resource, view: &ReferralView) -> DateTime<Utc> {
    match resource {
        Resource::Task => view.task_last_updated(),
        Resource::ServiceRequest => view.last_updated,
    }
}

/// What a referral is filed under in the [`SearchIndex`]: the values FHIR
/// searches filter and sort on, computed exactly as the searches compute
/// them ([`crate::render`], [`crate::search`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexKeys {
    task_status: &'static str,
    service_request_status: &'static str,
    business_status: &'static str,
    task_last_updated: DateTime<Utc>,
    service_request_last_updated: DateTime<Utc>,
    task_authored: DateTime<Utc>,
    service_request_authored: DateTime<Utc>,
}

impl IndexKeys {
    pub(crate) fn of(view: &ReferralView) -> Self {
        IndexKeys {
            task_status: status::task_status(view),
            service_request_status: status::service_request_status(view),
            business_status: status::business_status(view).0,
            task_last_updated: last_updated(Resource::Task, view),
            service_request_last_updated: last_updated(Resource::ServiceRequest, view),
            task_authored: authored(Resource::Task, view),
            service_request_authored: authored(Resource::ServiceRequest, view),
        }
    }
}

/// An ordered index: (time, referral id), so a time range is a range query.
pub type TimeIndex = BTreeSet<(DateTime<Utc>, Uuid)>;

/// Referral ids by the code they are filed under.
type CodeIndex = BTreeMap<&'static str, BTreeSet<Uuid>>;

/// Search indexes over the referrals: by Task and ServiceRequest status, by
/// Task business status, and ordered by last-updated and authored time (per
/// resource, as each resource defines them). Kept in step with the views by
/// [`Views::apply`]: a referral whose status or times change moves.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SearchIndex {
    /// Where each referral is filed now.
    keys: HashMap<Uuid, IndexKeys>,
    task_status: CodeIndex,
    service_request_status: CodeIndex,
    business_status: CodeIndex,
    task_last_updated: TimeIndex,
    service_request_last_updated: TimeIndex,
    task_authored: TimeIndex,
    service_request_authored: TimeIndex,
}

fn move_code(index: &mut CodeIndex, id: Uuid, old: Option<&'static str>, new: &'static str) {
    if old == Some(new) {
        return;
    }
    if let Some(old) = old
        && let Some(ids) = index.get_mut(old)
    {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(old);
        }
    }
    index.entry(new).or_default().insert(id);
}

fn move_time(index: &mut TimeIndex, id: Uuid, old: Option<DateTime<Utc>>, new: DateTime<Utc>) {
    if old == Some(new) {
        return;
    }
    if let Some(old) = old {
        index.remove(&(old, id));
    }
    index.insert((new, id));
}

impl SearchIndex {
    /// File (or refile) referral `id` under `keys`.
    pub(crate) fn file(&mut self, id: Uuid, keys: IndexKeys) {
        let old = self.keys.insert(id, keys);
        if old == Some(keys) {
            return;
        }
        move_code(
            &mut self.task_status,
            id,
            old.map(|o| o.task_status),
            keys.task_status,
        );
        move_code(
            &mut self.service_request_status,
            id,
            old.map(|o| o.service_request_status),
            keys.service_request_status,
        );
        move_code(
            &mut self.business_status,
            id,
            old.map(|o| o.business_status),
            keys.business_status,
        );
        move_time(
            &mut self.task_last_updated,
            id,
            old.map(|o| o.task_last_updated),
            keys.task_last_updated,
        );
        move_time(
            &mut self.service_request_last_updated,
            id,
            old.map(|o| o.service_request_last_updated),
            keys.service_request_last_updated,
        );
        move_time(
            &mut self.task_authored,
            id,
            old.map(|o| o.task_authored),
            keys.task_authored,
        );
        move_time(
            &mut self.service_request_authored,
            id,
            old.map(|o| o.service_request_authored),
            keys.service_request_authored,
        );
    }

    /// The referrals whose `resource` status (`Task.status` or
    /// `ServiceRequest.status`) is `code`.
    pub fn with_status(&self, resource: Resource, code: &str) -> Option<&BTreeSet<Uuid>> {
        match resource {
            Resource::Task => self.task_status.get(code),
            Resource::ServiceRequest => self.service_request_status.get(code),
        }
    }

    /// The referrals whose `Task.businessStatus` code is `code`.
    pub fn with_business_status(&self, code: &str) -> Option<&BTreeSet<Uuid>> {
        self.business_status.get(code)
    }

    /// Every referral by `resource`'s last-updated time.
    pub fn last_updated(&self, resource: Resource) -> &TimeIndex {
        match resource {
            Resource::Task => &self.task_last_updated,
            Resource::ServiceRequest => &self.service_request_last_updated,
        }
    }

    /// Every referral by `resource`'s authored time.
    pub fn authored(&self, resource: Resource) -> &TimeIndex {
        match resource {
            Resource::Task => &self.task_authored,
            Resource::ServiceRequest => &self.service_request_authored,
        }
    }
}

pub(crate) fn day_start(d: NaiveDate) -> Option<DateTime<Utc>> {
    d.and_hms_opt(0, 0, 0).map(|n| Utc.from_utc_datetime(&n))
}

/// The range `[start, end)` a FHIR date or dateTime denotes.
pub(crate) fn parse_date_range(value: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        let t = t.with_timezone(&Utc);
        return Some((t, t + chrono::Duration::milliseconds(1)));
    }
    match value.len() {
        4 => {
            let y: i32 = value.parse().ok()?;
            Some((
                day_start(NaiveDate::from_ymd_opt(y, 1, 1)?)?,
                day_start(NaiveDate::from_ymd_opt(y + 1, 1, 1)?)?,
            ))
        }
        7 => {
            let d = NaiveDate::parse_from_str(&format!("{value}-01"), "%Y-%m-%d").ok()?;
            let next = d.checked_add_months(chrono::Months::new(1))?;
            Some((day_start(d)?, day_start(next)?))
        }
        10 => {
            let d = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
            Some((day_start(d)?, day_start(d.succ_opt()?)?))
        }
        _ => None,
    }
}
