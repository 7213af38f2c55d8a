//! Built-in analytical views over the pathway events: waiting times, PROM
//! outcomes, did-not-attend rates and conversion to orthopaedics, each split
//! by a patient attribute.
//!
//! [`Views`] folds [`Envelope`]s one at a time into per-referral facts
//! ([`ReferralFacts`]) and answers aggregate questions from them as
//! [`Table`]s. It is pure: the caller reads the log (the gateway's follower,
//! `mskflow export`) and feeds every event to [`Views::observe`]. Feeding an
//! event twice has no further effect (de-duplicated by event id), so
//! at-least-once delivery gives exactly-once counts.
//!
//! # Definitions
//!
//! - **Referral received**: the `ReferralReceived` event's time. Only
//!   referrals whose `ReferralReceived` was seen appear in any view.
//! - **Triaged**: the first triage decision (`ReferralTriaged`,
//!   `ReferralRedirected` or `ReferralRejected`).
//! - **First contact**: the first attended First Contact Practitioner
//!   appointment (`AssessmentCompleted`), dated by the start of the slot it
//!   was booked in (the event's own time when the slot is unknown).
//! - **Treatment**: the first attended rehabilitation session or class
//!   (`SessionAttended`), dated by the session's booked date (the event's
//!   own time when the session is unknown).
//! - **Waits** are whole calendar days between the date of referral and the
//!   date of the milestone (UTC dates for instants, the clinic's local date
//!   for sessions). The **median** is the middle value (the mean of the two
//!   middle values for an even count); the **92nd percentile** uses the
//!   *nearest-rank* method: the value at rank `ceil(0.92 × n)` of the values
//!   sorted ascending (so with fewer than 13 values it is the largest).
//! - **Outcomes** use the MSK-HQ changes the outcomes service recorded
//!   (`OutcomeChangeRecorded`, first contact to discharge or to follow-up),
//!   with the minimal important change in force when each was recorded. One
//!   row per pathway, rehabilitation programme (`none` when the patient had
//!   no rehabilitation) and later timepoint.
//! - **DNA**: appointments booked (FCP bookings, and each rehabilitation
//!   session booked), attended, not attended, cancelled (by either side, not
//!   a DNA); the DNA rate is `dna / (attended + dna)`, the share of
//!   appointments that should have happened and did not.
//! - **Conversion**: referrals per referring practice (ODS code) and how
//!   many an FCP referred on to orthopaedics (an `onward-referral` outcome or
//!   an `OnwardReferralRequested` with destination `orthopaedics`).
//! - Rates, shares and means are rounded to 4 decimal places; a metric with
//!   nothing to measure (no values, a zero denominator) is `null` in JSON and
//!   empty in CSV.
//!
//! # Splits
//!
//! Every view can be split by [`Split`]: none, IMD decile, ethnic category,
//! sex, age band (at referral) or route (how the referral came in: clinical
//! systems, self-referral, telephone). A referral whose attribute is not recorded
//! falls in the group `unknown`.
//!
//! # Small numbers
//!
//! Off by default. With [`ViewOptions::min_group_size`] set to `k`, every
//! row whose base count (wait count, episodes, appointments booked,
//! referrals) is between 1 and `k - 1` has all its metrics replaced by
//! `null`, and the table gains a `suppressed` column (`true` for those rows).
//! Integrated care systems commonly publish with `k = 5`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use mskflow_eventlog::{Envelope, StoredEvent};
use mskflow_events::types::{NhsNumber, OdsCode, ReceivedVia, Sex};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Context, Demographics, Error, PatientAttributes};

/// The group of a referral whose attribute is not recorded.
pub const UNKNOWN: &str = "unknown";

/// The MSK-HQ measure code.
const MSK_HQ: &str = "msk-hq";

/// The patient attribute a view is split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// One group for everyone.
    None,
    /// Index of Multiple Deprivation decile of the home postcode.
    ImdDecile,
    /// Ethnic category code as sent by the referrer.
    Ethnicity,
    /// `male`, `female`, `other` or `unknown`.
    Sex,
    /// Age band at referral.
    AgeBand,
    /// How the referral came in (`received_via`): clinical systems,
    /// `self-referral` or `telephone`.
    Route,
}

impl Split {
    pub const ALL: &'static [Split] = &[
        Split::None,
        Split::ImdDecile,
        Split::Ethnicity,
        Split::Sex,
        Split::AgeBand,
        Split::Route,
    ];

    /// The query-string code (`imd_decile`), which is also the name of the
    /// group column.
    pub fn code(self) -> &'static str {
        match self {
            Split::None => "none",
            Split::ImdDecile => "imd_decile",
            Split::Ethnicity => "ethnicity",
            Split::Sex => "sex",
            Split::AgeBand => "age_band",
            Split::Route => "route",
        }
    }

    pub fn parse(code: &str) -> Result<Self, Error> {
        Split::ALL
            .iter()
            .copied()
            .find(|s| s.code() == code)
            .ok_or_else(|| Error::UnknownSplit(code.to_owned()))
    }

    /// The group of a referral with these attributes, `None` for no split.
    fn group(self, attrs: &PatientAttributes) -> Option<String> {
        let value = match self {
            Split::None => return None,
            Split::ImdDecile => attrs.imd_decile.map(|d| d.to_string()),
            Split::Ethnicity => attrs.ethnicity_code.clone(),
            Split::Sex => attrs.sex.clone(),
            Split::AgeBand => attrs.age_band.clone(),
            Split::Route => attrs.route.clone(),
        };
        Some(
            value
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| UNKNOWN.to_owned()),
        )
    }
}

/// The built-in views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    Waits,
    Outcomes,
    Dna,
    Conversion,
}

impl View {
    pub const ALL: &'static [View] = &[View::Waits, View::Outcomes, View::Dna, View::Conversion];

    /// The view's name in URLs and file names.
    pub fn code(self) -> &'static str {
        match self {
            View::Waits => "waits",
            View::Outcomes => "outcomes",
            View::Dna => "dna",
            View::Conversion => "conversion",
        }
    }

    /// One line saying what the view holds.
    pub fn description(self) -> &'static str {
        match self {
            View::Waits => {
                "Days from referral to triage, to first FCP contact and to first treatment: \
                 count, median and 92nd percentile (nearest rank)"
            }
            View::Outcomes => {
                "MSK-HQ change from first contact to discharge or follow-up per pathway and \
                 programme: episodes, mean change, share reaching the minimal important change"
            }
            View::Dna => {
                "FCP and rehabilitation appointments booked, attended, not attended (DNA), \
                 cancelled, and the DNA rate"
            }
            View::Conversion => {
                "Referrals per referring practice and the share referred on to orthopaedics"
            }
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        View::ALL.iter().copied().find(|v| v.code() == code)
    }
}

/// How the views are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ViewOptions {
    /// Suppress the metrics of groups smaller than this (see the module
    /// documentation). `None`: no suppression.
    pub min_group_size: Option<u64>,
}

/// Appointment counts of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Appointments {
    pub booked: u64,
    pub attended: u64,
    pub dna: u64,
    pub cancelled: u64,
}

impl Appointments {
    fn add(&mut self, other: &Appointments) {
        self.booked += other.booked;
        self.attended += other.attended;
        self.dna += other.dna;
        self.cancelled += other.cancelled;
    }
}

/// An MSK-HQ change from first contact to a later timepoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreChange {
    pub baseline: f64,
    pub later: f64,
    pub change: f64,
    pub reached_minimal_important_change: bool,
}

/// What is known about one referral (stored as JSON by the analytics read
/// model, `crate::store`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferralFacts {
    /// The patient's attributes at referral (no pseudonym: aggregate views
    /// do not need one).
    pub attributes: PatientAttributes,
    pub received_at: Option<DateTime<Utc>>,
    pub triaged_at: Option<DateTime<Utc>>,
    pub first_contact: Option<NaiveDate>,
    pub first_treatment: Option<NaiveDate>,
    /// Pathway code (`knee`).
    pub pathway: Option<String>,
    /// Rehabilitation programme code (`escape-pain`).
    pub programme: Option<String>,
    pub fcp: Appointments,
    pub rehab: Appointments,
    /// MSK-HQ changes by later timepoint code (`discharge`, `follow-up`).
    pub msk_hq: BTreeMap<String, ScoreChange>,
    pub referred_to_orthopaedics: bool,
    // Ordered maps: the stored JSON is the same however the facts were
    // built, so a rebuilt read model equals the incrementally kept one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    fcp_slots: BTreeMap<Uuid, DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sessions: BTreeMap<u32, NaiveDate>,
}

/// The event types the views fold.
pub const EVENT_TYPES: &[&str] = &[
    "ReferralReceived",
    "ReferralTriaged",
    "AssessmentRequested",
    "ReferralRedirected",
    "ReferralRejected",
    "AssessmentBooked",
    "AssessmentRescheduled",
    "AssessmentCancelled",
    "AppointmentMissed",
    "AssessmentCompleted",
    "OnwardReferralRequested",
    "PatientWaitlisted",
    "PlaceBooked",
    "SessionAttended",
    "SessionMissed",
    "SessionCancelled",
    "OutcomeChangeRecorded",
];

/// An event the views fold: an envelope, or an event as a read model is
/// handed it, its payload possibly still the stored text.
pub trait Folded {
    /// The envelope (its payload possibly not parsed: read it with
    /// [`Folded::payload`]).
    fn header(&self) -> &Envelope;
    /// The payload read into `T`, `None` when it cannot be.
    fn payload<T: DeserializeOwned>(&self) -> Option<T>;
}

impl Folded for Envelope {
    fn header(&self) -> &Envelope {
        self
    }

    fn payload<T: DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(&self.payload).ok()
    }
}

impl Folded for StoredEvent {
    fn header(&self) -> &Envelope {
        self.envelope()
    }

    fn payload<T: DeserializeOwned>(&self) -> Option<T> {
        self.read().ok()
    }
}

/// The referral an event the views fold is about (every such payload names
/// it as `referral_id`).
pub fn referral_of(event: &impl Folded) -> Option<Uuid> {
    if !EVENT_TYPES.contains(&event.header().event_type.as_str()) {
        return None;
    }
    read::<ReferralRef>(event).map(|r| r.referral_id)
}

/// The fields of a `ReferralReceived` payload the views read; the rest (the
/// FHIR message among it) is passed over, not kept.
#[derive(Deserialize)]
pub(crate) struct Received {
    pub(crate) referral_id: Uuid,
    received_via: ReceivedVia,
    sender: OdsOf,
    patient: PatientOf,
    requester: Option<OdsOf>,
}

#[derive(Deserialize)]
struct OdsOf {
    ods_code: Option<OdsCode>,
}

#[derive(Deserialize)]
struct PatientOf {
    /// Unused, but read (and so checked) as the whole event would be: an
    /// invalid NHS number makes the event unreadable. A self-referral may
    /// have none.
    #[serde(rename = "nhs_number", default)]
    _nhs_number: Option<NhsNumber>,
    birth_date: Option<NaiveDate>,
    sex: Option<Sex>,
    postcode: Option<String>,
    ethnicity: Option<CodeOf>,
}

#[derive(Deserialize)]
struct CodeOf {
    code: String,
}

/// A `ReferralReceived` event's fields the views read, `None` for another
/// event or a payload they cannot read.
pub(crate) fn received(event: &impl Folded) -> Option<Received> {
    if event.header().event_type != "ReferralReceived" {
        return None;
    }
    read(event)
}

impl ReferralFacts {
    /// Fold one event of this referral in (see [`referral_of`]). Returns
    /// `None` for events the views do not use and payloads they cannot read.
    pub fn fold(&mut self, event: &impl Folded, ctx: &Context) -> Option<()> {
        let envelope = event.header();
        let at = envelope.occurred_at;
        match envelope.event_type.as_str() {
            "ReferralReceived" => {
                let r: Received = read(event)?;
                self.fold_received(&r, at, ctx);
            }
            "ReferralTriaged" | "AssessmentRequested" => {
                let e: WithPathway = read(event)?;
                if envelope.event_type == "ReferralTriaged" {
                    self.triaged_at = earliest(self.triaged_at, at);
                }
                if self.pathway.is_none() {
                    self.pathway = e.pathway;
                }
            }
            "ReferralRedirected" | "ReferralRejected" => {
                read::<ReferralRef>(event)?;
                self.triaged_at = earliest(self.triaged_at, at);
            }
            "AssessmentBooked" | "AssessmentRescheduled" => {
                let e: Booked = read(event)?;
                // A reschedule moves the appointment: not a new booking.
                if envelope.event_type == "AssessmentBooked" {
                    self.fcp.booked += 1;
                }
                self.fcp_slots.insert(e.slot.slot_id, e.slot.start);
            }
            "AssessmentCancelled" => {
                read::<ReferralRef>(event)?;
                self.fcp.cancelled += 1;
            }
            "AppointmentMissed" => {
                read::<ReferralRef>(event)?;
                self.fcp.dna += 1;
            }
            "AssessmentCompleted" => {
                let e: Completed = read(event)?;
                self.fcp.attended += 1;
                let seen = self
                    .fcp_slots
                    .get(&e.slot_id)
                    .copied()
                    .unwrap_or(at)
                    .date_naive();
                self.first_contact = earliest(self.first_contact, seen);
                if e.outcomes.iter().any(|o| {
                    o.outcome == "onward-referral"
                        && o.destination.as_deref() == Some("orthopaedics")
                }) {
                    self.referred_to_orthopaedics = true;
                }
            }
            "OnwardReferralRequested" => {
                let e: Onward = read(event)?;
                if e.destination == "orthopaedics" {
                    self.referred_to_orthopaedics = true;
                }
            }
            "PatientWaitlisted" => {
                let e: Waitlisted = read(event)?;
                self.programme = Some(e.programme);
                if self.pathway.is_none() {
                    self.pathway = e.pathway;
                }
            }
            "PlaceBooked" => {
                let e: PlaceBooked = read(event)?;
                self.rehab.booked += e.sessions.len() as u64;
                for s in e.sessions {
                    self.sessions.insert(s.session_no, s.starts_at.date());
                }
            }
            "SessionAttended" => {
                let e: Session = read(event)?;
                self.rehab.attended += 1;
                let date = self
                    .sessions
                    .get(&e.session_no)
                    .copied()
                    .unwrap_or_else(|| at.date_naive());
                self.first_treatment = earliest(self.first_treatment, date);
            }
            "SessionMissed" => {
                read::<ReferralRef>(event)?;
                self.rehab.dna += 1;
            }
            "SessionCancelled" => {
                read::<ReferralRef>(event)?;
                self.rehab.cancelled += 1;
            }
            "OutcomeChangeRecorded" => {
                let e: Change = read(event)?;
                if e.measure != MSK_HQ {
                    return None;
                }
                self.msk_hq.insert(
                    e.to,
                    ScoreChange {
                        baseline: e.baseline,
                        later: e.later,
                        change: e.change,
                        reached_minimal_important_change: e.reached_minimal_important_change,
                    },
                );
            }
            _ => return None,
        }
        Some(())
    }

    /// Fold a received referral in (as [`ReferralFacts::fold`] does its
    /// `ReferralReceived` event, received at `at`).
    pub(crate) fn fold_received(&mut self, r: &Received, at: DateTime<Utc>, ctx: &Context) {
        let practice = r.requester.as_ref().and_then(|q| q.ods_code.as_ref());
        self.attributes = PatientAttributes::unpseudonymised(
            Demographics {
                birth_date: r.patient.birth_date,
                sex: r.patient.sex,
                ethnicity_code: r.patient.ethnicity.as_ref().map(|c| c.code.as_str()),
                postcode: r.patient.postcode.as_deref(),
                practice: practice.or(r.sender.ods_code.as_ref()),
                route: r.received_via,
            },
            at.date_naive(),
            ctx,
        );
        self.received_at = earliest(self.received_at, at);
    }

    /// Days from referral to a milestone date.
    fn days_to(&self, date: Option<NaiveDate>) -> Option<i64> {
        let received = self.received_at?.date_naive();
        Some((date? - received).num_days())
    }
}

/// The live views: per-referral facts, folded from the event log.
#[derive(Debug, Clone, Default)]
pub struct Views {
    options: ViewOptions,
    referrals: HashMap<Uuid, ReferralFacts>,
    seen: HashSet<Uuid>,
}

// Payload fields the views read (serde ignores the rest).

#[derive(Deserialize)]
struct ReferralRef {
    referral_id: Uuid,
}

#[derive(Deserialize)]
struct WithPathway {
    pathway: Option<String>,
}

#[derive(Deserialize)]
struct SlotRef {
    slot_id: Uuid,
    start: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Booked {
    slot: SlotRef,
}

#[derive(Deserialize)]
struct OutcomeRef {
    outcome: String,
    destination: Option<String>,
}

#[derive(Deserialize)]
struct Completed {
    slot_id: Uuid,
    #[serde(default)]
    outcomes: Vec<OutcomeRef>,
}

#[derive(Deserialize)]
struct Onward {
    destination: String,
}

#[derive(Deserialize)]
struct Waitlisted {
    pathway: Option<String>,
    programme: String,
}

#[derive(Deserialize)]
struct SessionRef {
    session_no: u32,
    starts_at: NaiveDateTime,
}

#[derive(Deserialize)]
struct PlaceBooked {
    sessions: Vec<SessionRef>,
}

#[derive(Deserialize)]
struct Session {
    session_no: u32,
}

#[derive(Deserialize)]
struct Change {
    measure: String,
    to: String,
    baseline: f64,
    later: f64,
    change: f64,
    reached_minimal_important_change: bool,
}

fn read<T: DeserializeOwned>(event: &impl Folded) -> Option<T> {
    event.payload()
}

fn earliest<T: Ord + Copy>(current: Option<T>, candidate: T) -> Option<T> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

impl Views {
    pub fn new(options: ViewOptions) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    pub fn options(&self) -> ViewOptions {
        self.options
    }

    /// Referrals seen (received or not).
    pub fn len(&self) -> usize {
        self.referrals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.referrals.is_empty()
    }

    /// What is known about a referral.
    pub fn facts(&self, referral_id: &Uuid) -> Option<&ReferralFacts> {
        self.referrals.get(referral_id)
    }

    /// Fold one event in. Events of types the views do not use, and
    /// payloads they cannot read, are ignored; an event already observed
    /// (same event id) is ignored. Returns whether the event changed the
    /// views.
    pub fn observe(&mut self, envelope: &Envelope, ctx: &Context) -> bool {
        if self.seen.contains(&envelope.event_id) {
            return false;
        }
        let applied = self.apply(envelope, ctx).is_some();
        if applied {
            self.seen.insert(envelope.event_id);
        }
        applied
    }

    fn apply(&mut self, envelope: &Envelope, ctx: &Context) -> Option<()> {
        let referral_id = referral_of(envelope)?;
        let mut facts = self.referrals.remove(&referral_id).unwrap_or_default();
        let applied = facts.fold(envelope, ctx);
        // An event that does not apply leaves no empty entry behind.
        if applied.is_some() || facts != ReferralFacts::default() {
            self.referrals.insert(referral_id, facts);
        }
        applied
    }

    /// The table of `view` split by `split`.
    pub fn table(&self, view: View, split: Split) -> Table {
        let mut builder = TableBuilder::new(view, split, self.options);
        for facts in self.referrals.values() {
            builder.add(facts);
        }
        builder.finish()
    }

    /// Waits from referral to triage, first contact and treatment.
    pub fn waits(&self, split: Split) -> Table {
        self.table(View::Waits, split)
    }

    /// MSK-HQ change per pathway, programme and later timepoint.
    pub fn outcomes(&self, split: Split) -> Table {
        self.table(View::Outcomes, split)
    }

    /// Appointments booked, attended and missed, per service.
    pub fn dna(&self, split: Split) -> Table {
        self.table(View::Dna, split)
    }

    /// Referrals per practice and the share referred on to orthopaedics.
    pub fn conversion(&self, split: Split) -> Table {
        self.table(View::Conversion, split)
    }
}

#[derive(Default)]
struct OutcomeAcc {
    n: u64,
    baseline: f64,
    later: f64,
    change: f64,
    reached: u64,
}

/// What a view accumulates per row.
enum Acc {
    Waits(BTreeMap<RowKey, [Vec<i64>; 3]>),
    Outcomes(BTreeMap<RowKey, OutcomeAcc>),
    Dna(BTreeMap<RowKey, [Appointments; 3]>),
    Conversion(BTreeMap<RowKey, (u64, u64)>),
}

/// One view's table built from referral facts fed one at a time, so that
/// the facts can be streamed from storage instead of held in memory; what
/// it keeps is per group (the waits' day counts: 8 bytes a referral).
pub struct TableBuilder {
    view: View,
    split: Split,
    options: ViewOptions,
    acc: Acc,
}

impl std::fmt::Debug for TableBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableBuilder")
            .field("view", &self.view)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

impl TableBuilder {
    pub fn new(view: View, split: Split, options: ViewOptions) -> Self {
        let acc = match view {
            View::Waits => Acc::Waits(BTreeMap::new()),
            View::Outcomes => Acc::Outcomes(BTreeMap::new()),
            View::Dna => Acc::Dna(BTreeMap::new()),
            View::Conversion => Acc::Conversion(BTreeMap::new()),
        };
        Self {
            view,
            split,
            options,
            acc,
        }
    }

    /// Count one referral in (referrals not received are left out).
    pub fn add(&mut self, f: &ReferralFacts) {
        if f.received_at.is_none() {
            return;
        }
        let group = self.split.group(&f.attributes);
        match &mut self.acc {
            Acc::Waits(groups) => {
                let waits = [
                    f.days_to(f.triaged_at.map(|t| t.date_naive())),
                    f.days_to(f.first_contact),
                    f.days_to(f.first_treatment),
                ];
                let entry = groups.entry(RowKey::new(vec![], group)).or_default();
                for (i, w) in waits.into_iter().enumerate() {
                    if let Some(w) = w {
                        entry[i].push(w);
                    }
                }
            }
            Acc::Outcomes(groups) => {
                for (timepoint, c) in &f.msk_hq {
                    let key = RowKey::new(
                        vec![
                            f.pathway.clone().unwrap_or_else(|| UNKNOWN.to_owned()),
                            f.programme.clone().unwrap_or_else(|| "none".to_owned()),
                            timepoint.clone(),
                        ],
                        group.clone(),
                    );
                    let acc = groups.entry(key).or_default();
                    acc.n += 1;
                    acc.baseline += c.baseline;
                    acc.later += c.later;
                    acc.change += c.change;
                    acc.reached += u64::from(c.reached_minimal_important_change);
                }
            }
            Acc::Dna(groups) => {
                let entry = groups.entry(RowKey::new(vec![], group)).or_default();
                entry[0].add(&f.fcp);
                entry[1].add(&f.rehab);
                entry[2].add(&f.fcp);
                entry[2].add(&f.rehab);
            }
            Acc::Conversion(groups) => {
                let practice = f
                    .attributes
                    .practice_ods
                    .clone()
                    .unwrap_or_else(|| UNKNOWN.to_owned());
                let entry = groups
                    .entry(RowKey::new(vec![practice], group))
                    .or_default();
                entry.0 += 1;
                entry.1 += u64::from(f.referred_to_orthopaedics);
            }
        }
    }

    /// The table.
    pub fn finish(self) -> Table {
        let (split, options) = (self.split, self.options);
        match self.acc {
            Acc::Waits(groups) => waits_table(groups, split, options),
            Acc::Outcomes(groups) => outcomes_table(groups, split, options),
            Acc::Dna(groups) => dna_table(groups, split, options),
            Acc::Conversion(groups) => conversion_table(groups, split, options),
        }
    }
}

fn waits_table(
    groups: BTreeMap<RowKey, [Vec<i64>; 3]>,
    split: Split,
    options: ViewOptions,
) -> Table {
    const INTERVALS: [&str; 3] = [
        "referral-to-triage",
        "referral-to-first-contact",
        "referral-to-treatment",
    ];
    let mut table = Table::new(View::Waits, split, &["interval"]);
    table.columns.extend(
        ["count", "median_days", "p92_days"]
            .iter()
            .map(|c| (*c).to_owned()),
    );
    // One row per interval even with no referrals in a group.
    for (key, mut values) in groups {
        for (i, name) in INTERVALS.iter().enumerate() {
            let v = &mut values[i];
            v.sort_unstable();
            let count = v.len() as u64;
            table.push(
                &key,
                &[name],
                count,
                vec![
                    Value::from(count),
                    median(v).map_or(Value::Null, |m| Value::from(round4(m))),
                    nearest_rank(v, 92).map_or(Value::Null, Value::from),
                ],
                options,
            );
        }
    }
    table
}

fn outcomes_table(
    groups: BTreeMap<RowKey, OutcomeAcc>,
    split: Split,
    options: ViewOptions,
) -> Table {
    let mut table = Table::new(
        View::Outcomes,
        split,
        &["pathway", "programme", "timepoint"],
    );
    table.columns.extend(
        [
            "episodes",
            "mean_baseline",
            "mean_later",
            "mean_change",
            "reached_mic",
            "reached_mic_share",
        ]
        .iter()
        .map(|c| (*c).to_owned()),
    );
    for (key, acc) in groups {
        let n = acc.n as f64;
        table.push(
            &key,
            &[],
            acc.n,
            vec![
                Value::from(acc.n),
                ratio(acc.baseline, n),
                ratio(acc.later, n),
                ratio(acc.change, n),
                Value::from(acc.reached),
                ratio(acc.reached as f64, n),
            ],
            options,
        );
    }
    table
}

fn dna_table(
    groups: BTreeMap<RowKey, [Appointments; 3]>,
    split: Split,
    options: ViewOptions,
) -> Table {
    let mut table = Table::new(View::Dna, split, &["service"]);
    table.columns.extend(
        ["booked", "attended", "dna", "cancelled", "dna_rate"]
            .iter()
            .map(|c| (*c).to_owned()),
    );
    for (key, services) in groups {
        for (name, a) in ["fcp-assessment", "rehabilitation", "all"]
            .iter()
            .zip(services)
        {
            table.push(
                &key,
                &[name],
                a.booked,
                vec![
                    Value::from(a.booked),
                    Value::from(a.attended),
                    Value::from(a.dna),
                    Value::from(a.cancelled),
                    ratio(a.dna as f64, (a.attended + a.dna) as f64),
                ],
                options,
            );
        }
    }
    table
}

fn conversion_table(
    groups: BTreeMap<RowKey, (u64, u64)>,
    split: Split,
    options: ViewOptions,
) -> Table {
    let mut table = Table::new(View::Conversion, split, &["practice_ods"]);
    table.columns.extend(
        ["referrals", "referred_to_orthopaedics", "conversion_rate"]
            .iter()
            .map(|c| (*c).to_owned()),
    );
    for (key, (referrals, ortho)) in groups {
        table.push(
            &key,
            &[],
            referrals,
            vec![
                Value::from(referrals),
                Value::from(ortho),
                ratio(ortho as f64, referrals as f64),
            ],
            options,
        );
    }
    table
}

/// The median of sorted values: the middle one, or the mean of the two
/// middle ones for an even count.
pub fn median(sorted: &[i64]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    if n % 2 == 1 {
        sorted.get(mid).map(|v| *v as f64)
    } else {
        match (sorted.get(mid - 1), sorted.get(mid)) {
            (Some(a), Some(b)) => Some((*a as f64 + *b as f64) / 2.0),
            _ => None,
        }
    }
}

/// The `p`th percentile of sorted values by the nearest-rank method: the
/// value at 1-based rank `ceil(p / 100 × n)`.
pub fn nearest_rank(sorted: &[i64], p: u32) -> Option<i64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (usize::try_from(p).ok()? * n).div_ceil(100).clamp(1, n);
    sorted.get(rank - 1).copied()
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// `num / den` rounded to 4 places, `null` when `den` is zero.
fn ratio(num: f64, den: f64) -> Value {
    if den == 0.0 {
        Value::Null
    } else {
        Value::from(round4(num / den))
    }
}

/// A group value, ordered numerically where both are numbers, with
/// `unknown` last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupValue(String);

impl Ord for GroupValue {
    fn cmp(&self, other: &Self) -> Ordering {
        let unknown = |s: &str| s == UNKNOWN;
        unknown(&self.0)
            .cmp(&unknown(&other.0))
            .then_with(|| match (self.0.parse::<u64>(), other.0.parse::<u64>()) {
                (Ok(a), Ok(b)) => a.cmp(&b),
                _ => Ordering::Equal,
            })
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for GroupValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A row's key: the view's own key columns, then the split group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    keys: Vec<GroupValue>,
    group: Option<GroupValue>,
}

impl RowKey {
    fn new(keys: Vec<String>, group: Option<String>) -> Self {
        Self {
            keys: keys.into_iter().map(GroupValue).collect(),
            group: group.map(GroupValue),
        }
    }
}

/// One view's answer: rows of group columns then metrics.
///
/// JSON: `{"view": "waits", "split": "imd_decile", "rows": [{..}]}`, each
/// row an object in column order. CSV: [`Table::to_csv`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub view: String,
    pub split: String,
    /// Column names in order (also the CSV header).
    #[serde(skip)]
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

impl Table {
    /// An empty table whose first columns are the view's `keys`, then the
    /// split's group column.
    fn new(view: View, split: Split, keys: &[&str]) -> Self {
        let mut columns: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        if split != Split::None {
            columns.push(split.code().to_owned());
        }
        Self {
            view: view.code().to_owned(),
            split: split.code().to_owned(),
            columns,
            rows: Vec::new(),
        }
    }

    /// Add a row: the key's columns (`extra` keys first, then the row key's
    /// own, then the group), then `metrics` in column order, suppressed if
    /// `base` is a small number.
    fn push(
        &mut self,
        key: &RowKey,
        extra: &[&str],
        base: u64,
        metrics: Vec<Value>,
        options: ViewOptions,
    ) {
        let suppress = options.min_group_size.is_some_and(|k| base > 0 && base < k);
        if options.min_group_size.is_some()
            && self.columns.last().map(String::as_str) != Some("suppressed")
        {
            self.columns.push("suppressed".to_owned());
        }
        let values = extra
            .iter()
            .map(|e| Value::from(*e))
            .chain(key.keys.iter().map(|k| Value::from(k.0.clone())))
            .chain(key.group.iter().map(|g| Value::from(g.0.clone())))
            .chain(
                metrics
                    .into_iter()
                    .map(|m| if suppress { Value::Null } else { m }),
            )
            .chain(options.min_group_size.map(|_| Value::Bool(suppress)));
        let row: Map<String, Value> = self.columns.iter().cloned().zip(values).collect();
        self.rows.push(row);
    }

    /// The table as CSV: a header line, then one line per row (RFC 4180
    /// quoting, `\n` line ends; `null` is an empty field).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            crate::csv_field(&mut out, c);
        }
        out.push('\n');
        for row in &self.rows {
            for (i, c) in self.columns.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let text = match row.get(c) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                };
                crate::csv_field(&mut out, &text);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test fixtures are built from literals known to be valid"
)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};
    use mskflow_events::assessment::{
        self as a, AssessmentEvent, DistressScreen, OnwardDestination, Outcome,
    };
    use mskflow_events::intake::{
        self as i, Coding, IntakeEvent, PatientDetails, ReferralDetails, Requester, Sender,
    };
    use mskflow_events::outcomes::{self as o, Measure, OutcomeEvent, Timepoint};
    use mskflow_events::scheduling::{
        self as s, BookedSession, PatientChoices, Place, Programme, SchedulingEvent,
    };
    use mskflow_events::types::{
        ContactMode, FcpPriority, Pathway, ReceivedVia, RedirectDestination, RequestPriority, Sex,
        Urgency,
    };
    use mskflow_events::{NhsNumber, OdsCode};
    use serde_json::json;

    use super::*;
    use crate::{ImdLookup, Pseudonymiser};

    fn ctx() -> Context {
        Context {
            pseudonymiser: Pseudonymiser::new(b"a test secret of at least 16 bytes").unwrap(),
            imd: ImdLookup::example().unwrap(),
        }
    }

    fn rid(n: u128) -> Uuid {
        Uuid::from_u128(0xA000 + n)
    }

    /// 2026-03-`day` at `hour`:00 UTC.
    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    /// 2026-03-`day` 10:00 local clinic time.
    fn local(day: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 3, day)
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap()
    }

    fn envelope<T: Serialize>(event: &T, occurred_at: DateTime<Utc>) -> Envelope {
        let e = mskflow_eventlog::new_event(event, 1, occurred_at).unwrap();
        Envelope {
            event_id: e.event_id,
            stream_id: "s".to_owned(),
            sequence: 1,
            position: 1,
            occurred_at,
            recorded_at: occurred_at,
            causation_id: None,
            correlation_id: Uuid::nil(),
            traceparent: None,
            tracestate: None,
            event_type: e.event_type,
            schema_version: 1,
            payload: e.payload,
        }
    }

    struct Patient {
        practice: &'static str,
        postcode: Option<&'static str>,
        sex: Sex,
        ethnicity: &'static str,
        born: (i32, u32, u32),
    }

    fn received(id: Uuid, p: &Patient) -> Envelope {
        let e = IntakeEvent::ReferralReceived(i::ReferralReceived {
            referral_id: id,
            request_id: Uuid::from_u128(1),
            referral: ReferralDetails {
                received_via: ReceivedVia::ProcessMessage,
                sender: Sender {
                    ods_code: Some(OdsCode::parse("X26").unwrap()),
                    endpoint: None,
                    message_id: None,
                    software: None,
                },
                service_request_identifier: None,
                patient: PatientDetails {
                    nhs_number: Some(NhsNumber::parse("9434765919").unwrap()),
                    family: Some("Family".to_owned()),
                    given: vec![],
                    birth_date: NaiveDate::from_ymd_opt(p.born.0, p.born.1, p.born.2),
                    sex: Some(p.sex),
                    postcode: p.postcode.map(str::to_owned),
                    ethnicity: Some(Coding {
                        system: None,
                        code: p.ethnicity.to_owned(),
                        display: None,
                    }),
                },
                requester: Some(Requester {
                    display: None,
                    ods_code: Some(OdsCode::parse(p.practice).unwrap()),
                }),
                reason: vec![],
                body_site: vec![],
                requested_priority: RequestPriority::Routine,
                red_flags: vec![],
                start_back: None,
                note: None,
                authored_on: None,
                fhir_json: "{}".to_owned(),
            },
        });
        envelope(&e, at(2, 9))
    }

    fn triaged(id: Uuid, pathway: Pathway, when: DateTime<Utc>) -> Envelope {
        envelope(
            &IntakeEvent::ReferralTriaged(i::ReferralTriaged {
                referral_id: id,
                rule_set_version: "1".to_owned(),
                rule_id: "default".to_owned(),
                priority: FcpPriority::Routine,
                pathway,
                start_back: None,
                reasons: vec![],
            }),
            when,
        )
    }

    fn slot(n: u128, start: DateTime<Utc>) -> a::Slot {
        a::Slot {
            slot_id: Uuid::from_u128(0x5000 + n),
            clinician_id: "fcp-1".to_owned(),
            start,
            end: start,
            mode: ContactMode::FaceToFace,
            location: None,
        }
    }

    fn booked(id: Uuid, slot: &a::Slot) -> Envelope {
        envelope(
            &AssessmentEvent::AssessmentBooked(a::AssessmentBooked {
                referral_id: id,
                slot: slot.clone(),
            }),
            at(2, 12),
        )
    }

    fn missed(id: Uuid, slot: &a::Slot) -> Envelope {
        envelope(
            &AssessmentEvent::AppointmentMissed(a::AppointmentMissed {
                referral_id: id,
                slot_id: slot.slot_id,
                missed_count: 1,
            }),
            slot.start,
        )
    }

    fn assessed(id: Uuid, slot: &a::Slot, outcomes: Vec<Outcome>) -> Envelope {
        envelope(
            &AssessmentEvent::AssessmentCompleted(a::AssessmentCompleted {
                referral_id: id,
                slot_id: slot.slot_id,
                clinician_id: "fcp-1".to_owned(),
                findings_summary: String::new(),
                shared_decision_made: true,
                decision_aid: None,
                work_discussed: false,
                fit_note_issued: false,
                psychological_distress: DistressScreen::Negative,
                bmi: None,
                smoking_status: None,
                outcomes,
            }),
            // Recorded later than the appointment: the slot dates the contact.
            slot.start + chrono::Duration::days(1),
        )
    }

    fn waitlisted(id: Uuid, programme: Programme) -> Envelope {
        envelope(
            &SchedulingEvent::PatientWaitlisted(s::PatientWaitlisted {
                referral_id: id,
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                programme,
                sessions: 2,
                need_recorded_at: at(10, 9),
                choices: PatientChoices::default(),
            }),
            at(10, 9),
        )
    }

    fn place_booked(id: Uuid, days: &[u32]) -> Envelope {
        envelope(
            &SchedulingEvent::PlaceBooked(s::PlaceBooked {
                referral_id: id,
                place: Place::Class {
                    class_id: Uuid::nil(),
                },
                sessions: days
                    .iter()
                    .enumerate()
                    .map(|(n, d)| BookedSession {
                        session_no: n as u32 + 1,
                        starts_at: local(*d),
                        venue_id: "v".to_owned(),
                        mode: ContactMode::FaceToFace,
                    })
                    .collect(),
            }),
            at(11, 9),
        )
    }

    fn session(id: Uuid, session_no: u32, attended: bool) -> Envelope {
        let e = if attended {
            SchedulingEvent::SessionAttended(s::SessionAttended {
                referral_id: id,
                session_no,
            })
        } else {
            SchedulingEvent::SessionMissed(s::SessionMissed {
                referral_id: id,
                session_no,
                missed_total: 1,
            })
        };
        // Recorded at the end of the month: the booked session dates it.
        envelope(&e, at(31, 9))
    }

    fn change(id: Uuid, to: Timepoint, baseline: f64, later: f64) -> Envelope {
        envelope(
            &OutcomeEvent::OutcomeChangeRecorded(o::OutcomeChangeRecorded {
                referral_id: id,
                measure: Measure::MskHq,
                from: Timepoint::FirstContact,
                to,
                baseline,
                later,
                change: later - baseline,
                minimal_important_change: 5.0,
                reached_minimal_important_change: later - baseline >= 5.0,
            }),
            at(31, 9),
        )
    }

    /// Five referrals, all received 2026-03-02 09:00 UTC:
    ///
    /// | | practice | IMD | triaged | FCP contact | treatment | DNAs |
    /// |-|-|-|-|-|-|-|
    /// | A | B86001 | 3 | 03-02 (0 d) | 03-05 (3 d) | 03-20 (18 d) | rehab session 1 |
    /// | B | B86001 | 1 | 03-03 (1 d) | 03-09 (7 d) | - | - |
    /// | C | B86002 | 10 | 03-02 (0 d) | 03-16 (14 d) | 03-23 (21 d) | FCP 03-12 |
    /// | D | B86002 | unknown | 03-04 (2 d) | - | - | - |
    /// | E | B86003 | 5 | redirected 03-02 (0 d) | - | - | - |
    ///
    /// B is referred on to orthopaedics. MSK-HQ: A 28 -> 36 at discharge
    /// and 28 -> 40 at follow-up; B 20 -> 23 at discharge.
    fn events() -> Vec<Envelope> {
        let patients = [
            Patient {
                practice: "B86001",
                postcode: Some("LS1 5HD"),
                sex: Sex::Female,
                ethnicity: "A",
                born: (1961, 7, 23),
            },
            Patient {
                practice: "B86001",
                postcode: Some("BD1 1HY"),
                sex: Sex::Male,
                ethnicity: "M",
                born: (1990, 1, 1),
            },
            Patient {
                practice: "B86002",
                postcode: Some("S1 2HE"),
                sex: Sex::Female,
                ethnicity: "A",
                born: (1950, 5, 5),
            },
            Patient {
                practice: "B86002",
                postcode: Some("ZZ9 9ZZ"),
                sex: Sex::Other,
                ethnicity: "",
                born: (2000, 2, 2),
            },
            Patient {
                practice: "B86003",
                postcode: Some("LS6 2QN"),
                sex: Sex::Male,
                ethnicity: "R",
                born: (1975, 3, 1),
            },
        ];
        let (ra, rb, rc, rd, re) = (rid(1), rid(2), rid(3), rid(4), rid(5));
        let mut ev: Vec<Envelope> = [ra, rb, rc, rd, re]
            .iter()
            .zip(&patients)
            .map(|(id, p)| received(*id, p))
            .collect();
        // A
        let sa = slot(1, at(5, 10));
        ev.extend([
            triaged(ra, Pathway::Knee, at(2, 9)),
            booked(ra, &sa),
            assessed(
                ra,
                &sa,
                vec![Outcome::GroupProgramme {
                    programme: a::GroupProgramme::EscapePain,
                }],
            ),
            waitlisted(ra, Programme::EscapePain),
            place_booked(ra, &[17, 20]),
            session(ra, 1, false),
            session(ra, 2, true),
            change(ra, Timepoint::Discharge, 28.0, 36.0),
            change(ra, Timepoint::FollowUp, 28.0, 40.0),
        ]);
        // B
        let sb = slot(2, at(9, 10));
        ev.extend([
            triaged(rb, Pathway::Knee, at(3, 9)),
            booked(rb, &sb),
            assessed(
                rb,
                &sb,
                vec![Outcome::OnwardReferral {
                    destination: OnwardDestination::Orthopaedics,
                    reason: "x".to_owned(),
                }],
            ),
            waitlisted(rb, Programme::EscapePain),
            change(rb, Timepoint::Discharge, 20.0, 23.0),
        ]);
        // C
        let (sc1, sc2) = (slot(3, at(12, 10)), slot(4, at(16, 10)));
        ev.extend([
            triaged(rc, Pathway::Hip, at(2, 9)),
            booked(rc, &sc1),
            missed(rc, &sc1),
            booked(rc, &sc2),
            assessed(rc, &sc2, vec![Outcome::CommunityPhysiotherapy]),
            waitlisted(rc, Programme::OneToOne),
            place_booked(rc, &[23]),
            session(rc, 1, true),
        ]);
        // D
        ev.push(triaged(rd, Pathway::Shoulder, at(4, 9)));
        // E
        ev.push(envelope(
            &IntakeEvent::ReferralRedirected(i::ReferralRedirected {
                referral_id: re,
                rule_set_version: "1".to_owned(),
                rule_id: "cauda-equina".to_owned(),
                destination: RedirectDestination::EmergencyDepartment,
                urgency: Urgency::Emergency,
                red_flags: vec![],
                reason: String::new(),
            }),
            at(2, 10),
        ));
        ev
    }

    fn views_of(events: &[Envelope], options: ViewOptions) -> Views {
        let ctx = ctx();
        let mut views = Views::new(options);
        for e in events {
            views.observe(e, &ctx);
        }
        views
    }

    fn row<'a>(table: &'a Table, keys: &[(&str, &str)]) -> &'a Map<String, Value> {
        table
            .rows
            .iter()
            .find(|r| keys.iter().all(|(k, v)| r.get(*k) == Some(&json!(v))))
            .unwrap_or_else(|| panic!("no row {keys:?} in {}", table.to_csv()))
    }

    #[test]
    fn median_and_nearest_rank_percentile() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[4]), Some(4.0));
        // Even count: mean of the two middle values, (2 + 3) / 2.
        assert_eq!(median(&[1, 2, 3, 10]), Some(2.5));
        assert_eq!(nearest_rank(&[], 92), None);
        // n = 4: rank ceil(0.92 * 4) = ceil(3.68) = 4.
        assert_eq!(nearest_rank(&[1, 2, 3, 10], 92), Some(10));
        // n = 25: rank ceil(0.92 * 25) = 23.
        let v: Vec<i64> = (1..=25).collect();
        assert_eq!(nearest_rank(&v, 92), Some(23));
        // n = 13: rank ceil(11.96) = 12.
        let v: Vec<i64> = (1..=13).collect();
        assert_eq!(nearest_rank(&v, 92), Some(12));
        assert_eq!(nearest_rank(&v, 50), Some(7));
    }

    #[test]
    fn facts_follow_the_referral() {
        let views = views_of(&events(), ViewOptions::default());
        assert_eq!(views.len(), 5);
        let a = views.facts(&rid(1)).unwrap();
        assert_eq!(a.attributes.imd_decile, Some(3));
        assert_eq!(a.attributes.practice_ods.as_deref(), Some("B86001"));
        assert_eq!(a.attributes.patient_pseudonym, None);
        assert_eq!(a.attributes.age_band.as_deref(), Some("55-64"));
        assert_eq!(a.first_contact, NaiveDate::from_ymd_opt(2026, 3, 5));
        // Session 1 was missed; session 2 (03-20) is the first treatment.
        assert_eq!(a.first_treatment, NaiveDate::from_ymd_opt(2026, 3, 20));
        assert_eq!(a.programme.as_deref(), Some("escape-pain"));
        assert_eq!(
            a.rehab,
            Appointments {
                booked: 2,
                attended: 1,
                dna: 1,
                cancelled: 0
            }
        );
        assert!(views.facts(&rid(2)).unwrap().referred_to_orthopaedics);
        assert!(!views.facts(&rid(3)).unwrap().referred_to_orthopaedics);
    }

    #[test]
    fn waits_without_split() {
        let t = views_of(&events(), ViewOptions::default()).waits(Split::None);
        assert_eq!(t.rows.len(), 3);
        // Triage: A 0, B 1, C 0, D 2, E 0 -> [0, 0, 0, 1, 2]; median the
        // 3rd value = 0; p92 rank ceil(0.92 * 5) = ceil(4.6) = 5 -> 2.
        let r = row(&t, &[("interval", "referral-to-triage")]);
        assert_eq!(r["count"], json!(5));
        assert_eq!(r["median_days"], json!(0.0));
        assert_eq!(r["p92_days"], json!(2));
        // First contact: A 3, B 7, C 14 (the attended slot, not the missed
        // one) -> median 7; p92 rank ceil(2.76) = 3 -> 14.
        let r = row(&t, &[("interval", "referral-to-first-contact")]);
        assert_eq!(r["count"], json!(3));
        assert_eq!(r["median_days"], json!(7.0));
        assert_eq!(r["p92_days"], json!(14));
        // Treatment: A 18, C 21 -> median (18 + 21) / 2 = 19.5; p92 rank
        // ceil(1.84) = 2 -> 21.
        let r = row(&t, &[("interval", "referral-to-treatment")]);
        assert_eq!(r["count"], json!(2));
        assert_eq!(r["median_days"], json!(19.5));
        assert_eq!(r["p92_days"], json!(21));
    }

    #[test]
    fn waits_by_imd_decile_are_ordered_with_unknown_last() {
        let t = views_of(&events(), ViewOptions::default()).waits(Split::ImdDecile);
        let deciles: Vec<&str> = t
            .rows
            .iter()
            .filter(|r| r["interval"] == "referral-to-triage")
            .filter_map(|r| r["imd_decile"].as_str())
            .collect();
        // B 1, A 3, E 5, C 10, D unknown postcode.
        assert_eq!(deciles, ["1", "3", "5", "10", "unknown"]);
        let r = row(
            &t,
            &[
                ("interval", "referral-to-first-contact"),
                ("imd_decile", "10"),
            ],
        );
        assert_eq!(
            (r["count"].clone(), r["p92_days"].clone()),
            (json!(1), json!(14))
        );
        let r = row(
            &t,
            &[
                ("interval", "referral-to-first-contact"),
                ("imd_decile", "unknown"),
            ],
        );
        assert_eq!(r["count"], json!(0));
        assert_eq!(r["median_days"], Value::Null);
        let r = row(
            &t,
            &[
                ("interval", "referral-to-triage"),
                ("imd_decile", "unknown"),
            ],
        );
        assert_eq!(r["median_days"], json!(2.0));
    }

    #[test]
    fn dna_rates() {
        let t = views_of(&events(), ViewOptions::default()).dna(Split::None);
        // FCP: booked A 1 + B 1 + C 2 = 4; attended 3; DNA 1 (C);
        // rate 1 / (3 + 1) = 0.25.
        let r = row(&t, &[("service", "fcp-assessment")]);
        assert_eq!(
            [&r["booked"], &r["attended"], &r["dna"], &r["dna_rate"]],
            [&json!(4), &json!(3), &json!(1), &json!(0.25)]
        );
        // Rehab: booked A 2 + C 1 = 3; attended 2; DNA 1; 1 / 3 = 0.3333.
        let r = row(&t, &[("service", "rehabilitation")]);
        assert_eq!(
            [&r["booked"], &r["attended"], &r["dna"], &r["dna_rate"]],
            [&json!(3), &json!(2), &json!(1), &json!(0.3333)]
        );
        // All: 7 booked, 5 attended, 2 DNA; 2 / 7 = 0.2857.
        let r = row(&t, &[("service", "all")]);
        assert_eq!(
            [&r["booked"], &r["attended"], &r["dna"], &r["dna_rate"]],
            [&json!(7), &json!(5), &json!(2), &json!(0.2857)]
        );
        // By sex: men (B, E) had 1 FCP booking and no DNA: rate 0 / 1 = 0.
        let t = views_of(&events(), ViewOptions::default()).dna(Split::Sex);
        let r = row(&t, &[("service", "all"), ("sex", "male")]);
        assert_eq!([&r["booked"], &r["dna_rate"]], [&json!(1), &json!(0.0)]);
        // Nobody with sex `other` (D) had an appointment: no rate.
        let r = row(&t, &[("service", "all"), ("sex", "other")]);
        assert_eq!([&r["booked"], &r["dna_rate"]], [&json!(0), &Value::Null]);
    }

    #[test]
    fn conversion_per_practice() {
        let t = views_of(&events(), ViewOptions::default()).conversion(Split::None);
        // B86001: A and B, B referred on: 1 / 2 = 0.5. B86002: C and D, none.
        let r = row(&t, &[("practice_ods", "B86001")]);
        assert_eq!(
            [
                &r["referrals"],
                &r["referred_to_orthopaedics"],
                &r["conversion_rate"]
            ],
            [&json!(2), &json!(1), &json!(0.5)]
        );
        let r = row(&t, &[("practice_ods", "B86002")]);
        assert_eq!(
            [&r["referrals"], &r["conversion_rate"]],
            [&json!(2), &json!(0.0)]
        );
        assert_eq!(
            t.to_csv(),
            "practice_ods,referrals,referred_to_orthopaedics,conversion_rate\n\
             B86001,2,1,0.5\n\
             B86002,2,0,0.0\n\
             B86003,1,0,0.0\n"
        );
    }

    #[test]
    fn outcomes_per_pathway_programme_and_timepoint() {
        let t = views_of(&events(), ViewOptions::default()).outcomes(Split::None);
        assert_eq!(t.rows.len(), 2);
        // Knee / ESCAPE-pain at discharge: A 28 -> 36 (+8, reached 5), B
        // 20 -> 23 (+3, not reached). Means: baseline (28 + 20) / 2 = 24,
        // later (36 + 23) / 2 = 29.5, change (8 + 3) / 2 = 5.5; share 1 / 2.
        let r = row(&t, &[("pathway", "knee"), ("timepoint", "discharge")]);
        assert_eq!(r["programme"], "escape-pain");
        assert_eq!(
            [
                &r["episodes"],
                &r["mean_baseline"],
                &r["mean_later"],
                &r["mean_change"],
                &r["reached_mic"],
                &r["reached_mic_share"]
            ],
            [
                &json!(2),
                &json!(24.0),
                &json!(29.5),
                &json!(5.5),
                &json!(1),
                &json!(0.5)
            ]
        );
        // Follow-up: A only, 28 -> 40 = +12.
        let r = row(&t, &[("pathway", "knee"), ("timepoint", "follow-up")]);
        assert_eq!(
            [&r["episodes"], &r["mean_change"]],
            [&json!(1), &json!(12.0)]
        );
        // By IMD decile: B (decile 1) alone at discharge, +3, not reached.
        let t = views_of(&events(), ViewOptions::default()).outcomes(Split::ImdDecile);
        let r = row(&t, &[("timepoint", "discharge"), ("imd_decile", "1")]);
        assert_eq!(
            [&r["episodes"], &r["mean_change"], &r["reached_mic_share"]],
            [&json!(1), &json!(3.0), &json!(0.0)]
        );
    }

    #[test]
    fn observing_twice_changes_nothing() {
        let events = events();
        let once = views_of(&events, ViewOptions::default());
        let mut twice = once.clone();
        let ctx = ctx();
        for e in &events {
            assert!(!twice.observe(e, &ctx), "{} applied twice", e.event_type);
        }
        for view in View::ALL {
            for split in Split::ALL {
                assert_eq!(once.table(*view, *split), twice.table(*view, *split));
            }
        }
        // An unrelated or unreadable event is ignored.
        let mut odd = events[0].clone();
        odd.event_id = Uuid::from_u128(99);
        odd.event_type = "SessionAttended".to_owned();
        odd.payload = json!({"session_no": "x"});
        assert!(!twice.observe(&odd, &ctx));
    }

    #[test]
    fn small_groups_are_suppressed_when_asked() {
        let options = ViewOptions {
            min_group_size: Some(2),
        };
        let t = views_of(&events(), options).conversion(Split::None);
        assert_eq!(
            t.to_csv(),
            "practice_ods,referrals,referred_to_orthopaedics,conversion_rate,suppressed\n\
             B86001,2,1,0.5,false\n\
             B86002,2,0,0.0,false\n\
             B86003,,,,true\n"
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["rows"][2]["referrals"], Value::Null);
        assert_eq!(json["rows"][2]["suppressed"], true);
    }

    #[test]
    fn json_shape_and_csv_quoting() {
        let mut events = events();
        // An ethnic category code with characters CSV must quote.
        if let Some(p) = events[0].payload.get_mut("patient") {
            p["ethnicity"]["code"] = json!("A, \"x\"");
        }
        let t = views_of(&events, ViewOptions::default()).conversion(Split::Ethnicity);
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["view"], "conversion");
        assert_eq!(json["split"], "ethnicity");
        let keys: Vec<&String> = json["rows"][0].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "practice_ods",
                "ethnicity",
                "referrals",
                "referred_to_orthopaedics",
                "conversion_rate"
            ]
        );
        let csv = t.to_csv();
        assert!(csv.contains("B86001,\"A, \"\"x\"\"\",1,0,0.0\n"), "{csv}");
        // D has an empty code: unknown.
        assert!(csv.contains("B86002,unknown,1,0,0.0\n"), "{csv}");
    }

    #[test]
    fn splits_parse_and_unknown_ones_are_refused() {
        for s in Split::ALL {
            assert_eq!(Split::parse(s.code()).unwrap(), *s);
        }
        assert!(matches!(
            Split::parse("postcode"),
            Err(Error::UnknownSplit(s)) if s == "postcode"
        ));
        for v in View::ALL {
            assert_eq!(View::parse(v.code()), Some(*v));
        }
        assert_eq!(View::parse("nope"), None);
    }
}
