//! FHIR search over the referral views: parameters, prefixes, sorting and
//! paging. Pure: no HTTP, no I/O.

use std::collections::BTreeSet;
use std::ops::Bound;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use mskflow_events::NHS_NUMBER_SYSTEM;
use uuid::Uuid;

use crate::render;
use crate::views::{ReferralView, TimeIndex, Views};

/// Default and largest page sizes.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// `_count`: a non-negative integer, capped at [`MAX_COUNT`].
fn parse_count(raw: &str) -> Result<usize, Invalid> {
    raw.parse::<usize>()
        .map(|n| n.min(MAX_COUNT))
        .map_err(|_| Invalid("_count must be a non-negative integer".into()))
}

/// `_offset`: a non-negative integer.
fn parse_offset(raw: &str) -> Result<usize, Invalid> {
    raw.parse::<usize>()
        .map_err(|_| Invalid("_offset must be a non-negative integer".into()))
}

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

    fn sort_keys(self) -> &'static [&'static str] {
        match self {
            Resource::Task => &["_lastUpdated", "authored-on", "_id"],
            Resource::ServiceRequest => &["_lastUpdated", "authored", "_id"],
        }
    }
}

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
                || self.patients.iter().any(|raw| {
                    token_matches(
                        raw,
                        Some(NHS_NUMBER_SYSTEM),
                        view.details.patient.nhs_number.as_str(),
                    )
                }))
            && (self.based_on.is_empty() || self.based_on.contains(&Some(view.referral_id)))
    }
}

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

    fn matches(&self, patient: &[&ReferralView]) -> bool {
        let Some(first) = patient.first() else {
            return false;
        };
        let nhs_number = first.details.patient.nhs_number.as_str();
        self.ids
            .iter()
            .all(|alternatives| alternatives.contains(&Some(first.referral_id)))
            && self.identifiers.iter().all(|alternatives| {
                alternatives
                    .iter()
                    .any(|raw| token_matches(raw, Some(NHS_NUMBER_SYSTEM), nhs_number))
            })
    }
}

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

/// A search the client asked for that we cannot do: HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// One comparison on a date parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A date or instant parameter value: the half-open range it denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateFilter {
    prefix: Prefix,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl DateFilter {
    fn parse(raw: &str) -> Result<Self, Invalid> {
        let (prefix, value) = match raw.get(..2) {
            Some("eq") => (Prefix::Eq, &raw[2..]),
            Some("ne") => (Prefix::Ne, &raw[2..]),
            Some("lt") => (Prefix::Lt, &raw[2..]),
            Some("le") => (Prefix::Le, &raw[2..]),
            Some("gt") => (Prefix::Gt, &raw[2..]),
            Some("ge") => (Prefix::Ge, &raw[2..]),
            _ => (Prefix::Eq, raw),
        };
        let (start, end) = parse_date_range(value).ok_or_else(|| {
            Invalid(format!(
                "'{raw}' is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or an instant)"
            ))
        })?;
        Ok(Self { prefix, start, end })
    }

    fn matches(&self, t: DateTime<Utc>) -> bool {
        match self.prefix {
            Prefix::Eq => t >= self.start && t < self.end,
            Prefix::Ne => t < self.start || t >= self.end,
            Prefix::Lt => t < self.start,
            Prefix::Le => t < self.end,
            Prefix::Gt => t >= self.end,
            Prefix::Ge => t >= self.start,
        }
    }
}

fn day_start(d: NaiveDate) -> Option<DateTime<Utc>> {
    d.and_hms_opt(0, 0, 0).map(|n| Utc.from_utc_datetime(&n))
}

/// The range `[start, end)` a FHIR date or dateTime denotes.
fn parse_date_range(value: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
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

/// `system|value`, `|value` or `value`.
fn token(raw: &str) -> (Option<&str>, &str) {
    match raw.split_once('|') {
        Some((system, value)) => (Some(system), value),
        None => (None, raw),
    }
}

fn token_matches(raw: &str, system: Option<&str>, value: &str) -> bool {
    let (want_system, want_value) = token(raw);
    want_value == value && want_system.is_none_or(|s| s.is_empty() || Some(s) == system)
}

/// The referral id in `ServiceRequest/{id}`, a URL ending that way, or a bare id.
fn reference_id(value: &str) -> Option<uuid::Uuid> {
    if value.contains('/') && !value.contains("ServiceRequest/") && !value.contains("Task/") {
        return None;
    }
    uuid::Uuid::parse_str(value.rsplit('/').next().unwrap_or(value)).ok()
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

/// A range of an ordered (time, id) index.
#[derive(Debug, Clone, Copy)]
enum TimeBounds {
    /// Nothing can match (the filters contradict each other).
    Empty,
    Range(Bound<(DateTime<Utc>, Uuid)>, Bound<(DateTime<Utc>, Uuid)>),
}

impl TimeBounds {
    fn iter<'a>(
        &self,
        index: &'a TimeIndex,
    ) -> Box<dyn DoubleEndedIterator<Item = &'a (DateTime<Utc>, Uuid)> + 'a> {
        match *self {
            TimeBounds::Empty => Box::new(std::iter::empty()),
            TimeBounds::Range(lo, hi) => Box::new(index.range((lo, hi))),
        }
    }
}

/// Where the candidates of a search come from (see [`Search::plan`]).
enum Source<'a> {
    /// Referral ids filed under the status codes asked for (disjoint).
    Codes(Vec<&'a BTreeSet<Uuid>>),
    /// A range of the authored or last-updated index.
    Range {
        authored: bool,
        index: &'a TimeIndex,
        bounds: TimeBounds,
    },
}

/// The order of a search's results: each sort key in turn, then the id.
fn order(
    sort: &[(String, bool)],
    a: &(Vec<SortPart>, &ReferralView),
    b: &(Vec<SortPart>, &ReferralView),
) -> std::cmp::Ordering {
    for (i, (_, descending)) in sort.iter().enumerate() {
        let ord = a.0[i].cmp(&b.0[i]);
        let ord = if *descending { ord.reverse() } else { ord };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    a.1.referral_id.cmp(&b.1.referral_id)
}

/// One part of a sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SortPart {
    Time(DateTime<Utc>),
    Id(uuid::Uuid),
}

/// One parsed parameter (all values of a repeated parameter must hold; the
/// comma-separated values within one are alternatives).
#[derive(Debug, Clone)]
enum Filter {
    Id(Vec<uuid::Uuid>),
    Reference(Vec<Option<uuid::Uuid>>),
    Status(Vec<String>),
    BusinessStatus(Vec<String>),
    Priority(Vec<String>),
    Identifier(Vec<String>),
    PatientIdentifier(Vec<String>),
    LastUpdated(DateFilter),
    Authored(DateFilter),
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct Search {
    pub resource: Resource,
    filters: Vec<Filter>,
    pub count: usize,
    pub offset: usize,
    sort: Vec<(String, bool)>,
    pub summary_count: bool,
}

impl Search {
    /// Parse the query parameters of a search on `resource`.
    pub fn parse(resource: Resource, pairs: &[(String, String)]) -> Result<Self, Invalid> {
        let mut search = Search {
            resource,
            filters: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            sort: Vec::new(),
            summary_count: false,
        };
        for (key, raw) in pairs {
            let alternatives = || raw.split(',').map(str::to_owned).collect::<Vec<_>>();
            let filter = match (resource, key.as_str()) {
                (_, "_count") => {
                    search.count = parse_count(raw)?;
                    continue;
                }
                (_, "_offset") => {
                    search.offset = parse_offset(raw)?;
                    continue;
                }
                (_, "_summary") if raw == "count" => {
                    search.summary_count = true;
                    continue;
                }
                (_, "_summary") if raw == "false" => continue,
                (_, "_format") => continue,
                (_, "_sort") => {
                    for key in raw.split(',') {
                        let (name, descending) = match key.strip_prefix('-') {
                            Some(n) => (n, true),
                            None => (key, false),
                        };
                        if !resource.sort_keys().contains(&name) {
                            return Err(Invalid(format!(
                                "cannot sort {} by '{name}' (sortable: {})",
                                resource.name(),
                                resource.sort_keys().join(", ")
                            )));
                        }
                        search.sort.push((name.to_owned(), descending));
                    }
                    continue;
                }
                (_, "_id") => Filter::Id(
                    raw.split(',')
                        .map(|v| uuid::Uuid::parse_str(v).unwrap_or_else(|_| uuid::Uuid::nil()))
                        .collect(),
                ),
                (_, "_lastUpdated") => Filter::LastUpdated(DateFilter::parse(raw)?),
                (Resource::Task, "focus" | "based-on") => {
                    Filter::Reference(raw.split(',').map(reference_id).collect())
                }
                (_, "status") => Filter::Status(alternatives()),
                (Resource::Task, "business-status") => Filter::BusinessStatus(alternatives()),
                (Resource::ServiceRequest, "priority") => Filter::Priority(alternatives()),
                (Resource::ServiceRequest, "identifier") => Filter::Identifier(alternatives()),
                (
                    _,
                    "patient:identifier" | "subject:identifier" | "patient.identifier"
                    | "subject.identifier",
                ) => Filter::PatientIdentifier(alternatives()),
                (Resource::Task, "authored-on") | (Resource::ServiceRequest, "authored") => {
                    Filter::Authored(DateFilter::parse(raw)?)
                }
                (_, other) => {
                    let supported: Vec<&str> =
                        resource.parameters().iter().map(|(n, _)| *n).collect();
                    return Err(Invalid(format!(
                        "search parameter '{other}' is not supported on {} (supported: {}, patient:identifier, _count, _offset, _sort, _summary)",
                        resource.name(),
                        supported.join(", ")
                    )));
                }
            };
            search.filters.push(filter);
        }
        Ok(search)
    }

    fn status_of(&self, view: &ReferralView) -> &'static str {
        match self.resource {
            Resource::Task => render::task_status(view),
            Resource::ServiceRequest => render::service_request_status(view),
        }
    }

    fn authored(&self, view: &ReferralView) -> DateTime<Utc> {
        authored(self.resource, view)
    }

    fn last_updated(&self, view: &ReferralView) -> DateTime<Utc> {
        last_updated(self.resource, view)
    }

    fn matches(&self, view: &ReferralView) -> bool {
        self.filters.iter().all(|f| self.holds(f, view))
    }

    /// Whether `view` passes every filter but those `answered` marks (the
    /// ones the candidates' index already answered exactly).
    fn matches_unanswered(&self, view: &ReferralView, answered: &[bool]) -> bool {
        self.filters
            .iter()
            .zip(answered)
            .all(|(f, done)| *done || self.holds(f, view))
    }

    fn holds(&self, f: &Filter, view: &ReferralView) -> bool {
        match f {
            Filter::Id(ids) => ids.contains(&view.referral_id),
            Filter::Reference(ids) => ids.contains(&Some(view.referral_id)),
            Filter::Status(s) => s.iter().any(|s| s == self.status_of(view)),
            Filter::BusinessStatus(s) => s.iter().any(|s| {
                token_matches(
                    s,
                    Some(render::BUSINESS_STATUS_SYSTEM),
                    render::business_status(view).0,
                )
            }),
            Filter::Priority(p) => p
                .iter()
                .any(|p| p == view.details.requested_priority.code()),
            Filter::Identifier(ids) => view
                .details
                .service_request_identifier
                .as_ref()
                .is_some_and(|i| {
                    ids.iter()
                        .any(|raw| token_matches(raw, i.system.as_deref(), &i.value))
                }),
            Filter::PatientIdentifier(ids) => ids.iter().any(|raw| {
                token_matches(
                    raw,
                    Some(NHS_NUMBER_SYSTEM),
                    view.details.patient.nhs_number.as_str(),
                )
            }),
            Filter::LastUpdated(d) => d.matches(self.last_updated(view)),
            Filter::Authored(d) => d.matches(self.authored(view)),
        }
    }

    /// The referral ids filed under the codes one status or business-status
    /// filter asks for (disjoint sets: a referral has one status), or `None`
    /// when `f` is neither.
    fn code_sets<'a>(&self, f: &Filter, views: &'a Views) -> Option<Vec<&'a BTreeSet<Uuid>>> {
        let index = views.index();
        let mut codes: Vec<&str> = match f {
            Filter::Status(alternatives) => alternatives.iter().map(String::as_str).collect(),
            Filter::BusinessStatus(alternatives) => alternatives
                .iter()
                .filter_map(|raw| {
                    let (system, value) = token(raw);
                    system
                        .is_none_or(|s| s.is_empty() || s == render::BUSINESS_STATUS_SYSTEM)
                        .then_some(value)
                })
                .collect(),
            _ => return None,
        };
        codes.sort_unstable();
        codes.dedup();
        Some(
            codes
                .into_iter()
                .filter_map(|code| match f {
                    Filter::BusinessStatus(_) => index.with_business_status(code),
                    _ => index.with_status(self.resource, code),
                })
                .collect(),
        )
    }

    /// The time range every `ge`/`gt`/`le`/`lt`/`eq` filter on one date
    /// parameter allows together (`ne` is left to the filters), as bounds on
    /// an ordered (time, id) index, and which filters it answers. `None`
    /// when no such filter is on that parameter.
    fn time_range(&self, authored: bool) -> Option<(TimeBounds, Vec<bool>)> {
        let mut lo: Option<DateTime<Utc>> = None;
        let mut hi: Option<DateTime<Utc>> = None;
        let mut answered = vec![false; self.filters.len()];
        for (i, f) in self.filters.iter().enumerate() {
            let d = match (f, authored) {
                (Filter::Authored(d), true) | (Filter::LastUpdated(d), false) => d,
                _ => continue,
            };
            // Each prefix allows the half-open range [from, to).
            let (from, to) = match d.prefix {
                Prefix::Eq => (Some(d.start), Some(d.end)),
                Prefix::Lt => (None, Some(d.start)),
                Prefix::Le => (None, Some(d.end)),
                Prefix::Gt => (Some(d.end), None),
                Prefix::Ge => (Some(d.start), None),
                Prefix::Ne => continue,
            };
            lo = lo.max(from);
            hi = match (hi, to) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            answered[i] = true;
        }
        if !answered.contains(&true) {
            return None;
        }
        let bounds = match (lo, hi) {
            (Some(lo), Some(hi)) if lo >= hi => TimeBounds::Empty,
            _ => TimeBounds::Range(
                lo.map_or(Bound::Unbounded, |t| Bound::Included((t, Uuid::nil()))),
                hi.map_or(Bound::Unbounded, |t| Bound::Excluded((t, Uuid::nil()))),
            ),
        };
        Some((bounds, answered))
    }

    /// How to find the candidates of a search that no id, reference or NHS
    /// number narrows: the most selective status, business-status or date
    /// filter, looked up in the views' indexes; how many candidates that
    /// gives; and which filters the lookup answers exactly. `None` when no
    /// filter is indexed.
    fn plan<'a>(&self, views: &'a Views) -> Option<(usize, Source<'a>, Vec<bool>)> {
        let mut best: Option<(usize, Source<'a>, Vec<bool>)> = None;
        for (i, f) in self.filters.iter().enumerate() {
            let Some(sets) = self.code_sets(f, views) else {
                continue;
            };
            let size: usize = sets.iter().map(|s| s.len()).sum();
            if best.as_ref().is_none_or(|(n, _, _)| size < *n) {
                let mut answered = vec![false; self.filters.len()];
                answered[i] = true;
                best = Some((size, Source::Codes(sets), answered));
            }
        }
        for authored in [true, false] {
            let Some((bounds, answered)) = self.time_range(authored) else {
                continue;
            };
            let index = if authored {
                views.index().authored(self.resource)
            } else {
                views.index().last_updated(self.resource)
            };
            // Count only as far as the best so far.
            let cap = best.as_ref().map_or(usize::MAX, |(n, _, _)| *n);
            let size = bounds.iter(index).take(cap).count();
            if size < cap {
                best = Some((
                    size,
                    Source::Range {
                        authored,
                        index,
                        bounds,
                    },
                    answered,
                ));
            }
        }
        best
    }

    /// The ordered index of the first sort key, when it is a time
    /// (`_lastUpdated`, `authored`), and whether it is the authored one.
    fn sort_index<'a>(
        &self,
        views: &'a Views,
        sort: &[(String, bool)],
    ) -> Option<(&'a TimeIndex, bool, bool)> {
        let (key, descending) = sort.first()?;
        match key.as_str() {
            "_lastUpdated" => Some((
                views.index().last_updated(self.resource),
                false,
                *descending,
            )),
            "authored" | "authored-on" => {
                Some((views.index().authored(self.resource), true, *descending))
            }
            _ => None,
        }
    }

    /// Count the matches and take the page by walking an ordered index in
    /// the order of the first sort key: no sort but among matches that tie
    /// on it (ordered by the other keys, then id, as [`Search::run`] does).
    fn walk<'a, 'i>(
        &self,
        views: &'a Views,
        entries: impl Iterator<Item = &'i (DateTime<Utc>, Uuid)>,
        keep: impl Fn(&ReferralView) -> bool,
        sort: &[(String, bool)],
    ) -> (usize, Vec<&'a ReferralView>) {
        let end = self.offset.saturating_add(self.count);
        let mut total = 0usize;
        let mut page: Vec<&ReferralView> = Vec::new();
        let mut group: Vec<&ReferralView> = Vec::new();
        let mut group_time: Option<DateTime<Utc>> = None;
        let mut flush = |group: &mut Vec<&'a ReferralView>, total: &mut usize| {
            let n = group.len();
            if *total < end && *total + n > self.offset {
                if n > 1 {
                    let mut keyed: Vec<(Vec<SortPart>, &ReferralView)> =
                        group.iter().map(|v| (self.key(sort, v), *v)).collect();
                    keyed.sort_by(|a, b| order(sort, a, b));
                    group.clear();
                    group.extend(keyed.into_iter().map(|(_, v)| v));
                }
                for (i, v) in group.iter().enumerate() {
                    if (self.offset..end).contains(&(*total + i)) {
                        page.push(*v);
                    }
                }
            }
            *total += n;
            group.clear();
        };
        for (t, id) in entries {
            if group_time != Some(*t) {
                flush(&mut group, &mut total);
                group_time = Some(*t);
            }
            if let Some(v) = views.referral(id)
                && keep(v)
            {
                group.push(v);
            }
        }
        flush(&mut group, &mut total);
        (total, page)
    }

    /// The referrals an indexed parameter narrows the search to: `_id`,
    /// `focus` / `based-on` by id, `patient:identifier` by NHS number. `None`
    /// when no parameter is indexed (every referral is a candidate).
    fn indexed<'a>(&self, views: &'a Views) -> Option<Vec<&'a ReferralView>> {
        let mut found: Vec<&ReferralView> = self.filters.iter().find_map(|f| match f {
            Filter::Id(ids) => Some(ids.iter().filter_map(|id| views.referral(id)).collect()),
            Filter::Reference(ids) => Some(
                ids.iter()
                    .flatten()
                    .filter_map(|id| views.referral(id))
                    .collect(),
            ),
            Filter::PatientIdentifier(raws) => Some(
                raws.iter()
                    .flat_map(|raw| {
                        let (system, value) = token(raw);
                        if system.is_none_or(|s| s.is_empty() || s == NHS_NUMBER_SYSTEM) {
                            views.referrals_of_patient(value)
                        } else {
                            Vec::new()
                        }
                    })
                    .collect(),
            ),
            _ => None,
        })?;
        found.sort_by_key(|v| v.referral_id);
        found.dedup_by_key(|v| v.referral_id);
        Some(found)
    }

    /// The sort key of a view: one part per sort parameter.
    fn key(&self, sort: &[(String, bool)], view: &ReferralView) -> Vec<SortPart> {
        sort.iter()
            .map(|(key, _)| match key.as_str() {
                "_lastUpdated" => SortPart::Time(self.last_updated(view)),
                "authored" | "authored-on" => SortPart::Time(self.authored(view)),
                _ => SortPart::Id(view.referral_id),
            })
            .collect()
    }

    /// Run the search for a caller who may see what `visible` allows: the
    /// number of matches and the page asked for (`_offset`, `_count`; empty
    /// for `_summary=count`), sorted as [`Search::run`] sorts.
    ///
    /// An id, reference or NHS number looks its referrals up (see
    /// [`Search::indexed`]); otherwise the most selective status,
    /// business-status or date filter gives the candidates from the views'
    /// indexes (see [`Search::plan`]) when they are fewer than half the
    /// referrals; otherwise every referral is read once, in a scan. When the
    /// candidates are a range of the time the page is sorted by first, that
    /// range is walked in order, so nothing is sorted but ties; otherwise
    /// sort keys are computed once per match, and only the matches up to the
    /// end of the page are sorted.
    pub fn page<'a>(
        &self,
        views: &'a Views,
        visible: impl Fn(&ReferralView) -> bool,
    ) -> (usize, Vec<&'a ReferralView>) {
        let sort = if self.sort.is_empty() {
            vec![("_lastUpdated".to_owned(), true)]
        } else {
            self.sort.clone()
        };
        let keep = |v: &&ReferralView| visible(v) && self.matches(v);
        let matched: Vec<&ReferralView> = if let Some(found) = self.indexed(views) {
            found.into_iter().filter(keep).collect()
        } else {
            // Looking a referral up by id costs more than reading the next
            // one in a scan: candidates from an index pay only when they are
            // a minority of the referrals.
            let plan = self
                .plan(views)
                .filter(|(size, _, _)| size.saturating_mul(2) < views.len());
            let wants_page = !self.summary_count && self.count > 0;
            // A range of the time the page is sorted by: walk it in order
            // rather than sort it.
            if wants_page
                && let Some((index, authored, descending)) = self.sort_index(views, &sort)
                && let Some((
                    _,
                    Source::Range {
                        authored: a,
                        bounds,
                        ..
                    },
                    answered,
                )) = &plan
                && *a == authored
            {
                let keep = |v: &ReferralView| visible(v) && self.matches_unanswered(v, answered);
                return if descending {
                    self.walk(views, bounds.iter(index).rev(), keep, &sort)
                } else {
                    self.walk(views, bounds.iter(index), keep, &sort)
                };
            }
            match plan {
                Some((size, source, answered)) => {
                    let mut found: Vec<&ReferralView> = Vec::with_capacity(size);
                    let keep =
                        |v: &&ReferralView| visible(v) && self.matches_unanswered(v, &answered);
                    match source {
                        Source::Codes(sets) => found.extend(
                            sets.into_iter()
                                .flatten()
                                .filter_map(|id| views.referral(id))
                                .filter(keep),
                        ),
                        Source::Range { index, bounds, .. } => found.extend(
                            bounds
                                .iter(index)
                                .filter_map(|(_, id)| views.referral(id))
                                .filter(keep),
                        ),
                    }
                    found
                }
                None => views.referrals_unordered().filter(keep).collect(),
            }
        };
        let total = matched.len();
        let end = self.offset.saturating_add(self.count).min(total);
        if self.summary_count || end <= self.offset {
            return (total, Vec::new());
        }
        let mut keyed: Vec<(Vec<SortPart>, &ReferralView)> = matched
            .into_iter()
            .map(|v| (self.key(&sort, v), v))
            .collect();
        let order = |a: &(Vec<SortPart>, &ReferralView), b: &(Vec<SortPart>, &ReferralView)| {
            order(&sort, a, b)
        };
        if end < keyed.len() {
            keyed.select_nth_unstable_by(end - 1, order);
            keyed.truncate(end);
        }
        keyed.sort_by(order);
        (
            total,
            keyed
                .into_iter()
                .skip(self.offset)
                .map(|(_, v)| v)
                .collect(),
        )
    }

    /// Matching views, sorted (newest update first unless `_sort` says
    /// otherwise).
    pub fn run<'a>(&self, views: impl Iterator<Item = &'a ReferralView>) -> Vec<&'a ReferralView> {
        let mut matched: Vec<&ReferralView> = views.filter(|v| self.matches(v)).collect();
        let sort = if self.sort.is_empty() {
            vec![("_lastUpdated".to_owned(), true)]
        } else {
            self.sort.clone()
        };
        matched.sort_by(|a, b| {
            for (key, descending) in &sort {
                let ord = match key.as_str() {
                    "_lastUpdated" => self.last_updated(a).cmp(&self.last_updated(b)),
                    "authored" | "authored-on" => self.authored(a).cmp(&self.authored(b)),
                    _ => a.referral_id.cmp(&b.referral_id),
                };
                let ord = if *descending { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            a.referral_id.cmp(&b.referral_id)
        });
        matched
    }
}

/// A query string with `_offset` replaced (for paging links).
pub fn with_offset(pairs: &[(String, String)], offset: usize) -> String {
    let mut out: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "_offset")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    out.push(format!("_offset={offset}"));
    out.join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn date_prefixes_follow_the_fhir_ranges() -> Result<(), Invalid> {
        let day = DateFilter::parse("2026-11-23")?;
        assert!(day.matches(at("2026-11-23T00:00:00Z")));
        assert!(day.matches(at("2026-11-23T23:59:59Z")));
        assert!(!day.matches(at("2026-11-24T00:00:00Z")));
        assert!(DateFilter::parse("ge2026-11")?.matches(at("2026-11-01T00:00:00Z")));
        assert!(!DateFilter::parse("ge2026-11")?.matches(at("2026-10-31T23:59:59Z")));
        assert!(DateFilter::parse("lt2026")?.matches(at("2025-12-31T23:59:59Z")));
        assert!(!DateFilter::parse("lt2026")?.matches(at("2026-01-01T00:00:00Z")));
        assert!(DateFilter::parse("gt2026-11-23")?.matches(at("2026-11-24T00:00:00Z")));
        assert!(!DateFilter::parse("gt2026-11-23")?.matches(at("2026-11-23T12:00:00Z")));
        assert!(DateFilter::parse("le2026-11-23T10:00:00Z")?.matches(at("2026-11-23T10:00:00Z")));
        assert!(DateFilter::parse("ne2026-11-23")?.matches(at("2026-11-22T10:00:00Z")));
        assert!(DateFilter::parse("2026-13-01").is_err());
        assert!(DateFilter::parse("yesterday").is_err());
        Ok(())
    }

    #[test]
    fn tokens_match_with_or_without_a_system() {
        assert!(token_matches(
            "https://fhir.nhs.uk/Id/nhs-number|9434765919",
            Some(NHS_NUMBER_SYSTEM),
            "9434765919"
        ));
        assert!(token_matches(
            "9434765919",
            Some(NHS_NUMBER_SYSTEM),
            "9434765919"
        ));
        assert!(token_matches(
            "|9434765919",
            Some(NHS_NUMBER_SYSTEM),
            "9434765919"
        ));
        assert!(!token_matches(
            "https://other|9434765919",
            Some(NHS_NUMBER_SYSTEM),
            "9434765919"
        ));
        assert!(!token_matches(
            "9434765870",
            Some(NHS_NUMBER_SYSTEM),
            "9434765919"
        ));
    }

    #[test]
    fn unknown_parameters_and_sorts_are_refused() {
        let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(Search::parse(Resource::Task, &p("colour", "blue")).is_err());
        assert!(Search::parse(Resource::Task, &p("_sort", "colour")).is_err());
        assert!(Search::parse(Resource::Task, &p("_count", "-1")).is_err());
        assert!(Search::parse(Resource::ServiceRequest, &p("focus", "x")).is_err());
        assert!(Search::parse(Resource::Task, &p("_sort", "-_lastUpdated,_id")).is_ok());
        assert_eq!(
            Search::parse(Resource::Task, &p("_count", "5000"))
                .map(|s| s.count)
                .ok(),
            Some(MAX_COUNT)
        );
    }

    /// A valid NHS number for `n` (modulus 11).
    fn nhs(n: u64) -> String {
        (0..)
            .map(|k| format!("943{:06}", n * 7 + k))
            .find_map(|digits| {
                let sum: u32 = digits
                    .bytes()
                    .zip((2..=10).rev())
                    .map(|(b, w)| u32::from(b - b'0') * w)
                    .sum();
                match 11 - sum % 11 {
                    10 => None,
                    11 => Some(format!("{digits}0")),
                    c => Some(format!("{digits}{c}")),
                }
            })
            .unwrap_or_default()
    }

    /// `n` referrals of `n / 3` patients, authored on different days,
    /// alternately triaged, received at increasing times.
    fn caseload(n: u64) -> Result<Views, Box<dyn std::error::Error>> {
        use mskflow_events::IntakeEvent;
        use mskflow_events::intake::{
            PatientDetails, ReferralDetails, ReferralReceived, ReferralTriaged, Sender,
        };
        use mskflow_events::types::{
            FcpPriority, NhsNumber, Pathway, ReceivedVia, RequestPriority,
        };
        let mut views = Views::default();
        let mut position = 0;
        for i in 0..n {
            let id = uuid::Uuid::from_u128(u128::from((i * 7919) % 1000) + 1);
            let details = ReferralDetails {
                received_via: ReceivedVia::ProcessMessage,
                sender: Sender {
                    ods_code: None,
                    endpoint: None,
                    message_id: None,
                    software: None,
                },
                service_request_identifier: None,
                patient: PatientDetails {
                    nhs_number: NhsNumber::parse(&nhs(i % (n / 3).max(1)))?,
                    family: None,
                    given: vec![],
                    birth_date: None,
                    sex: None,
                    postcode: None,
                    ethnicity: None,
                },
                requester: None,
                reason: vec![],
                body_site: vec![],
                requested_priority: RequestPriority::Routine,
                red_flags: vec![],
                start_back: None,
                note: None,
                authored_on: Some(format!(
                    "2026-{:02}-{:02}",
                    1 + (i * 5) % 12,
                    1 + (i * 3) % 28
                )),
                fhir_json: "{}".to_owned(),
            };
            let mut events = vec![IntakeEvent::ReferralReceived(ReferralReceived {
                referral_id: id,
                request_id: id,
                referral: details,
            })];
            if i % 2 == 0 {
                events.push(IntakeEvent::ReferralTriaged(ReferralTriaged {
                    referral_id: id,
                    rule_set_version: "1".into(),
                    rule_id: "default".into(),
                    priority: FcpPriority::Routine,
                    pathway: Pathway::Knee,
                    start_back: None,
                    reasons: vec![],
                }));
            }
            for (sequence, event) in events.iter().enumerate() {
                position += 1;
                let at = Utc
                    .timestamp_opt(1_780_000_000 + (position as i64 % 17) * 60, 0)
                    .single()
                    .unwrap_or_default();
                let new = mskflow_eventlog::new_event(event, 1, at)?;
                views.apply(&mskflow_eventlog::Envelope {
                    event_id: new.event_id,
                    stream_id: format!("referral-{id}"),
                    sequence: sequence as u64 + 1,
                    position,
                    occurred_at: at,
                    recorded_at: at,
                    causation_id: None,
                    correlation_id: uuid::Uuid::nil(),
                    traceparent: None,
                    tracestate: None,
                    event_type: new.event_type,
                    schema_version: 1,
                    payload: new.payload,
                })?;
            }
        }
        Ok(views)
    }

    #[test]
    fn indexed_partial_sort_pages_match_a_full_scan() -> Result<(), Box<dyn std::error::Error>> {
        let views = caseload(60)?;
        let some_id = views
            .referrals()
            .nth(5)
            .map(|v| v.referral_id)
            .unwrap_or_default();
        let queries: Vec<(Resource, String)> = vec![
            (Resource::Task, String::new()),
            (Resource::Task, "status=accepted&_count=7&_offset=3".into()),
            (
                Resource::Task,
                "status=received&_sort=-authored-on,_id&_count=4".into(),
            ),
            (
                Resource::ServiceRequest,
                "_sort=authored&_count=10&_offset=50".into(),
            ),
            (
                Resource::ServiceRequest,
                "_sort=-authored&authored=ge2026-06&_count=5".into(),
            ),
            (
                Resource::ServiceRequest,
                format!("patient:identifier={NHS_NUMBER_SYSTEM}|{}", nhs(4)),
            ),
            (
                Resource::ServiceRequest,
                format!("patient:identifier={},{}&_sort=_id", nhs(4), nhs(5)),
            ),
            (
                Resource::ServiceRequest,
                format!("patient:identifier=https://other|{}", nhs(4)),
            ),
            (Resource::Task, format!("focus=ServiceRequest/{some_id}")),
            (
                Resource::Task,
                format!("_id={some_id},{some_id}&status=accepted,received"),
            ),
            (Resource::Task, "_count=0".into()),
            (Resource::Task, "_offset=1000".into()),
            (Resource::Task, "_summary=count".into()),
        ];
        for (resource, query) in queries {
            let pairs: Vec<(String, String)> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let search = Search::parse(resource, &pairs)?;
            let full = search.run(views.referrals());
            let expected: Vec<uuid::Uuid> = if search.summary_count {
                Vec::new()
            } else {
                full.iter()
                    .skip(search.offset)
                    .take(search.count)
                    .map(|v| v.referral_id)
                    .collect()
            };
            let (total, page) = search.page(&views, |_| true);
            let got: Vec<uuid::Uuid> = page.iter().map(|v| v.referral_id).collect();
            assert_eq!(total, full.len(), "{query}");
            assert_eq!(got, expected, "{query}");
            // Visibility applies before counting.
            let (hidden, _) = search.page(&views, |_| false);
            assert_eq!(hidden, 0, "{query}");
        }
        Ok(())
    }

    #[test]
    fn patients_gather_every_referral_of_one_nhs_number() -> Result<(), Box<dyn std::error::Error>>
    {
        let views = caseload(9)?;
        let p = |q: &str| -> Result<Vec<Vec<&ReferralView>>, Invalid> {
            let pairs: Vec<(String, String)> = q
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Ok(PatientSearch::parse(&pairs)?.run(&views))
        };
        // 9 referrals of 3 patients: 3 each, in the order received.
        assert_eq!(p("")?.len(), 3);
        let found = p(&format!("identifier={NHS_NUMBER_SYSTEM}|{}", nhs(1)))?;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), 3);
        let id = found[0][0].referral_id;
        assert_eq!(views.patient(&id).map(|v| v.len()), Some(3));
        // Only the first referral's id is the Patient's.
        assert!(views.patient(&found[0][1].referral_id).is_none());
        assert_eq!(p(&format!("_id={id}"))?.len(), 1);
        assert_eq!(p(&format!("_id={id}&identifier={}", nhs(2)))?.len(), 0);
        assert!(p(&format!("identifier=https://other|{}", nhs(1)))?.is_empty());
        assert!(p("name=Smith").is_err());
        Ok(())
    }

    #[test]
    fn paging_links_keep_the_other_parameters() {
        let pairs = vec![
            ("status".to_owned(), "accepted".to_owned()),
            ("_offset".to_owned(), "10".to_owned()),
            (
                "patient:identifier".to_owned(),
                "https://fhir.nhs.uk/Id/nhs-number|9434765919".to_owned(),
            ),
        ];
        assert_eq!(
            with_offset(&pairs, 20),
            "status=accepted&patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9434765919&_offset=20"
        );
    }
}
