//! FHIR search over the referral views: parameters, prefixes, sorting and
//! paging. Pure: no HTTP, no I/O.

pub mod appointment;
pub mod params;
pub mod patient;
pub mod slot;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use mskflow_events::NHS_NUMBER_SYSTEM;
use uuid::Uuid;

use crate::render;
pub use crate::views::index::{Resource, authored, last_updated};
use crate::views::{ReferralView, TimeIndex, Views};

pub use appointment::{APPOINTMENT_PARAMETERS, AppointmentSearch};
pub use params::{DEFAULT_COUNT, Invalid, MAX_COUNT, with_offset};
pub use patient::{PATIENT_PARAMETERS, PatientSearch};
pub use slot::SlotSearch;

use params::{
    DateFilter, Prefix, names_the_patient, parse_count, parse_offset, reference_id, token,
    token_matches,
};

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
            Resource::Task => crate::views::status::task_status(view),
            Resource::ServiceRequest => crate::views::status::service_request_status(view),
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
                    crate::views::status::business_status(view).0,
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
            Filter::PatientIdentifier(ids) => names_the_patient(ids, &view.details.patient),
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
