//! The analysts' stream: every pathway event, pseudonymised and reduced to
//! the fields analysts need.
//!
//! Operational events carry patient-identifiable data (NHS number, names,
//! address, birth date, free text). Analysts get [`AnalystEvent`]s instead:
//!
//! - the patient is a keyed pseudonym ([`Pseudonymiser`]: HMAC-SHA256 of the
//!   NHS number), stable per patient, not reversible without the key;
//! - demographics are coarsened: an age band at referral ([`age_band`]), sex,
//!   ethnic category code, and the IMD decile of the postcode ([`ImdLookup`]),
//!   never the birth date or postcode themselves;
//! - the payload is reduced to an allow-list of analytical fields per event
//!   type (codes, priorities, pathways, rule ids, dates, counts, scores);
//!   anything not on the list, including every free-text field, is dropped.
//!
//! Patient attributes come from the referral's `ReferralReceived` event and
//! are carried on every later event of that referral through a
//! [`PatientIndex`].
//!
//! Capacity events not tied to a referral (venues, classes, published slots)
//! are exported without patient fields and with `referral_key` absent, so
//! analysts can relate demand to capacity. Delivery and operations events
//! (outbound messages, dead letters) are not part of the stream: they are
//! about the system, not the pathway, and carry endpoints and operators'
//! free text.
//!
//! The translation does no I/O. [`publish`] publishes the stream live: it
//! follows the event log and hands each batch to a [`Sink`] (the Kafka
//! topic, or a JSON Lines file on the embedded default); it also loads the
//! secret and the IMD lookup for the binaries.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use hmac::{Hmac, KeyInit, Mac};
use mskflow_eventlog::Envelope;
use mskflow_events::NhsNumber;
use mskflow_events::intake::ReferralReceived;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use uuid::Uuid;

/// Version of the [`AnalystEvent`] schema.
pub const ANALYST_SCHEMA_VERSION: u32 = 1;

/// The analysts' topic.
pub const ANALYTICS_TOPIC: &str = "mskflow.analytics.v1";

/// The illustrative postcode to IMD decile lookup shipped for development
/// (made-up deciles; not the official English Indices of Deprivation).
pub const EXAMPLE_IMD_CSV: &str = include_str!("../data/imd-deciles-example.csv");

/// Shortest pseudonymisation secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

pub mod parquet_file;
pub mod publish;
pub mod store;
pub mod views;

pub use publish::{JsonlSink, SECRET_ENV, Sink, SinkError};

/// Errors of the analytics stream and views. Most stop the `mskflow export`
/// command, which exits non-zero with the message; none crosses gRPC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pseudonymisation secret is too short (or empty). Not served over
    /// HTTP/gRPC; the export refuses to run.
    #[error("the pseudonymisation secret must be at least {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
    /// A line of the IMD lookup could not be read. Not served over HTTP/gRPC;
    /// the export refuses to run.
    #[error("IMD lookup line {line}: {reason}")]
    ImdLookup { line: usize, reason: String },
    /// A view was asked for with a split it does not know. HTTP 400 with
    /// OperationOutcome `code-invalid` at the gateway's `/analytics` views.
    #[error("unknown split {0:?}: expected one of none, imd_decile, ethnicity, sex, age_band")]
    UnknownSplit(String),
    /// A secret or lookup file could not be read or written. Not served
    /// over HTTP/gRPC; the process refuses to start.
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A Parquet file could not be created, written or completed (the
    /// directory is missing, the disk is full, ...). Not served over
    /// HTTP/gRPC; the export stops with the message.
    #[error("Parquet file {path}: {source}")]
    ParquetIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Parquet encoder refused a schema or a batch of values. Not
    /// served over HTTP/gRPC; the export stops with the message.
    #[error("Parquet file {path}: {source}")]
    Parquet {
        path: std::path::PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
}

type HmacSha256 = Hmac<Sha256>;

/// Turns NHS numbers into keyed pseudonyms (hex HMAC-SHA256).
///
/// The secret is held only as the initialised MAC state: it is never logged
/// (`Debug` prints nothing of it) and never serialised.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: HmacSha256,
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymiser { secret: <redacted> }")
    }
}

impl Pseudonymiser {
    /// A pseudonymiser keyed with `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(Error::SecretTooShort);
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| Error::SecretTooShort)?;
        Ok(Self { mac })
    }

    /// The patient's pseudonym: 64 lowercase hex digits.
    pub fn pseudonym(&self, nhs_number: &NhsNumber) -> String {
        let mut mac = self.mac.clone();
        mac.update(nhs_number.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(64);
        for b in digest.iter() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The age band of someone born on `birth_date`, on the day `on`: `0-15`,
/// `16-24`, `25-34`, ... `75-84`, `85+`. `None` if born after `on`.
pub fn age_band(birth_date: NaiveDate, on: NaiveDate) -> Option<String> {
    if birth_date > on {
        return None;
    }
    let mut age = on.year() - birth_date.year();
    if (on.month(), on.day()) < (birth_date.month(), birth_date.day()) {
        age -= 1;
    }
    let band = match age {
        0..=15 => "0-15",
        16..=24 => "16-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        65..=74 => "65-74",
        75..=84 => "75-84",
        _ => "85+",
    };
    Some(band.to_owned())
}

/// A postcode as looked up: uppercase, no whitespace.
pub fn normalise_postcode(postcode: &str) -> String {
    postcode
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// Postcode -> Index of Multiple Deprivation decile (1 = most deprived).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdLookup {
    deciles: HashMap<String, u8>,
}

impl ImdLookup {
    /// Parse `postcode,decile` lines. Blank lines and lines starting with `#`
    /// are skipped, as is a first row whose decile column is not a number (a
    /// header). Deciles must be 1..=10.
    pub fn from_csv(text: &str) -> Result<Self, Error> {
        let mut deciles = HashMap::new();
        let mut seen_row = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first_row = !seen_row;
            seen_row = true;
            let mut cols = line.split(',').map(|c| c.trim().trim_matches('"'));
            let (Some(postcode), Some(decile)) = (cols.next(), cols.next()) else {
                return Err(Error::ImdLookup {
                    line: i + 1,
                    reason: "expected `postcode,decile`".to_owned(),
                });
            };
            let decile = match decile.parse::<u8>() {
                Ok(d) => d,
                Err(_) if first_row => continue,
                Err(_) => {
                    return Err(Error::ImdLookup {
                        line: i + 1,
                        reason: "the decile is not a number".to_owned(),
                    });
                }
            };
            if !(1..=10).contains(&decile) {
                return Err(Error::ImdLookup {
                    line: i + 1,
                    reason: format!("decile {decile} is outside 1..=10"),
                });
            }
            let key = normalise_postcode(postcode);
            if key.is_empty() {
                return Err(Error::ImdLookup {
                    line: i + 1,
                    reason: "empty postcode".to_owned(),
                });
            }
            deciles.insert(key, decile);
        }
        Ok(Self { deciles })
    }

    /// The illustrative lookup shipped with the crate ([`EXAMPLE_IMD_CSV`]).
    pub fn example() -> Result<Self, Error> {
        Self::from_csv(EXAMPLE_IMD_CSV)
    }

    /// The decile of a postcode, in any case and spacing; `None` if unknown.
    pub fn decile(&self, postcode: &str) -> Option<u8> {
        self.deciles.get(&normalise_postcode(postcode)).copied()
    }

    pub fn len(&self) -> usize {
        self.deciles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deciles.is_empty()
    }
}

/// What the export needs besides the events.
#[derive(Debug, Clone)]
pub struct Context {
    pub pseudonymiser: Pseudonymiser,
    pub imd: ImdLookup,
}

/// The patient attributes an analyst may see, fixed at referral.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PatientAttributes {
    pub patient_pseudonym: Option<String>,
    pub age_band: Option<String>,
    pub sex: Option<String>,
    pub ethnicity_code: Option<String>,
    pub imd_decile: Option<u8>,
    pub practice_ods: Option<String>,
    /// How the referral came in (`received_via`: `process-message`,
    /// `service-request-create`, `self-referral`, `telephone`).
    #[serde(default)]
    pub route: Option<String>,
}

impl PatientAttributes {
    /// The attributes of a received referral; the age band is taken on the
    /// day the referral was received.
    pub fn of_referral(received: &ReferralReceived, on: NaiveDate, ctx: &Context) -> Self {
        let details = &received.referral;
        let patient = &details.patient;
        let practice = details.requester.as_ref().and_then(|r| r.ods_code.as_ref());
        Self {
            patient_pseudonym: patient
                .nhs_number
                .as_ref()
                .map(|n| ctx.pseudonymiser.pseudonym(n)),
            ..Self::unpseudonymised(
                Demographics {
                    birth_date: patient.birth_date,
                    sex: patient.sex,
                    ethnicity_code: patient.ethnicity.as_ref().map(|c| c.code.as_str()),
                    postcode: patient.postcode.as_deref(),
                    practice: practice.or(details.sender.ods_code.as_ref()),
                    route: details.received_via,
                },
                on,
                ctx,
            )
        }
    }

    /// The attributes without a pseudonym (the aggregate views').
    pub(crate) fn unpseudonymised(d: Demographics<'_>, on: NaiveDate, ctx: &Context) -> Self {
        Self {
            patient_pseudonym: None,
            age_band: d.birth_date.and_then(|b| age_band(b, on)),
            sex: d.sex.map(|s| s.code().to_owned()),
            ethnicity_code: d.ethnicity_code.map(str::to_owned),
            imd_decile: d.postcode.and_then(|p| ctx.imd.decile(p)),
            practice_ods: d.practice.map(|o| o.as_str().to_owned()),
            route: Some(d.route.code().to_owned()),
        }
    }
}

/// What the patient attributes are made of, borrowed from a received
/// referral.
pub(crate) struct Demographics<'a> {
    pub(crate) birth_date: Option<NaiveDate>,
    pub(crate) sex: Option<mskflow_events::types::Sex>,
    pub(crate) ethnicity_code: Option<&'a str>,
    pub(crate) postcode: Option<&'a str>,
    /// The requester's practice, else the sender's.
    pub(crate) practice: Option<&'a mskflow_events::OdsCode>,
    pub(crate) route: mskflow_events::types::ReceivedVia,
}

/// Referral id -> the patient attributes of that referral, built from
/// `ReferralReceived` events.
#[derive(Debug, Clone, Default)]
pub struct PatientIndex {
    referrals: HashMap<Uuid, PatientAttributes>,
}

impl PatientIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the attributes of a `ReferralReceived` event; other events are
    /// ignored. Returns whether the event was a readable referral.
    pub fn observe(&mut self, envelope: &Envelope, ctx: &Context) -> bool {
        match received(envelope) {
            Some(r) => {
                let attrs =
                    PatientAttributes::of_referral(&r, envelope.occurred_at.date_naive(), ctx);
                self.referrals.insert(r.referral_id, attrs);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, referral_id: &Uuid) -> Option<&PatientAttributes> {
        self.referrals.get(referral_id)
    }

    pub fn len(&self) -> usize {
        self.referrals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.referrals.is_empty()
    }
}

fn received(envelope: &Envelope) -> Option<ReferralReceived> {
    if envelope.event_type != "ReferralReceived" {
        return None;
    }
    serde_json::from_value(envelope.payload.clone()).ok()
}

/// One event of the analysts' stream (`mskflow.analytics.v1`). Carries no
/// patient identifiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "AnalystEvent")]
pub struct AnalystEvent {
    /// The operational event's id (de-duplicate on it).
    pub event_id: Uuid,
    /// The operational event type, e.g. `ReferralTriaged`.
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// Payload schema version of the operational event.
    pub schema_version: u32,
    /// The referral id (a system-assigned id, not patient-identifying).
    /// Absent for capacity events not tied to a referral.
    pub referral_key: Option<Uuid>,
    /// Keyed pseudonym of the patient (hex HMAC-SHA256 of the NHS number):
    /// the same patient has the same pseudonym across referrals. Absent for
    /// a self-referral that gave no NHS number.
    pub patient_pseudonym: Option<String>,
    /// Age band at referral: `0-15`, `16-24`, `25-34`, ... `85+`.
    pub age_band: Option<String>,
    /// `male`, `female`, `other` or `unknown`.
    pub sex: Option<String>,
    /// Ethnic category code as sent by the referrer.
    pub ethnicity_code: Option<String>,
    /// Index of Multiple Deprivation decile of the home postcode (1 = most
    /// deprived).
    #[schemars(range(min = 1, max = 10))]
    pub imd_decile: Option<u8>,
    /// ODS code of the referring organisation (for a self-referral, the
    /// patient's GP practice).
    pub practice_ods: Option<String>,
    /// How the referral came in: `process-message`, `service-request-create`
    /// (clinical systems), `self-referral` (the patient's web form) or
    /// `telephone` (a call handler).
    #[serde(default)]
    pub route: Option<String>,
    /// The event's analytical fields only (an allow-list per event type).
    pub data: Value,
}

/// The JSON Schema of [`AnalystEvent`], with its `$id`.
pub fn schema() -> Value {
    let mut value = schemars::schema_for!(AnalystEvent).to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "$id".to_owned(),
            Value::String(format!(
                "https://fhir.mskflow.org/schemas/analytics/analyst-event.v{ANALYST_SCHEMA_VERSION}.schema.json"
            )),
        );
    }
    value
}

/// The file `schemas/analytics/analyst-event.v1.schema.json`: its name and
/// pretty-printed text (with a trailing newline).
pub fn schema_file() -> Result<(String, String), serde_json::Error> {
    Ok((
        format!("analyst-event.v{ANALYST_SCHEMA_VERSION}.schema.json"),
        serde_json::to_string_pretty(&schema())? + "\n",
    ))
}

/// A field kept from a payload.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// The value as is (codes, numbers, dates, lists of codes).
    Value(&'static str),
    /// An object, or each object of a list, reduced to these keys.
    Fields(&'static str, &'static [&'static str]),
}

use Keep::{Fields, Value as V};

const CODING: &[&str] = &["system", "code"];
const SLOT: &[&str] = &["slot_id", "start", "end", "mode"];
const PLACE: &[&str] = &["kind", "class_id", "slot_id"];

/// The allow-list of an event type, and whether the type belongs to a
/// referral. `None`: not part of the analysts' stream.
fn allow_list(event_type: &str) -> Option<&'static [Keep]> {
    let keep: &'static [Keep] = match event_type {
        // Intake.
        "ReferralReceived" => &[
            V("received_via"),
            V("requested_priority"),
            V("red_flags"),
            V("start_back"),
            V("authored_on"),
            Fields("reason", CODING),
            Fields("body_site", CODING),
        ],
        "ReferralTriaged" => &[
            V("rule_set_version"),
            V("rule_id"),
            V("priority"),
            V("pathway"),
            V("start_back"),
        ],
        "ReferralRedirected" => &[
            V("rule_set_version"),
            V("rule_id"),
            V("destination"),
            V("urgency"),
            V("red_flags"),
        ],
        "ReferralRejected" => &[V("rule_set_version"), V("rule_id"), V("reason_code")],
        "ReferralCancelled" => &[V("status"), V("cancelled_by")],
        // Assessment.
        "AssessmentRequested" => &[V("priority"), V("pathway"), V("triaged_at")],
        "AssessmentBooked" => &[Fields("slot", SLOT)],
        "AssessmentRescheduled" => &[
            V("previous_slot_id"),
            Fields("slot", SLOT),
            V("requested_by"),
        ],
        "AssessmentCancelled" => &[V("slot_id"), V("cancelled_by")],
        "AppointmentMissed" => &[V("slot_id"), V("missed_count")],
        "AssessmentCompleted" => &[
            V("slot_id"),
            V("shared_decision_made"),
            V("decision_aid"),
            V("work_discussed"),
            V("fit_note_issued"),
            V("psychological_distress"),
            Fields("outcomes", &["outcome", "programme", "destination"]),
        ],
        "OnwardReferralRequested" => &[V("onward_referral_id"), V("destination"), V("delivery")],
        "EpisodeDischarged" => &[V("reason"), V("notify_referrer")],
        "FcpSlotPublished" => &[Fields("slot", SLOT)],
        "FcpSlotBooked" => &[V("slot_id")],
        "FcpSlotReleased" => &[V("slot_id"), V("reason")],
        // Scheduling.
        "VenueRegistered" => &[V("venue_id")],
        "ClassScheduled" => &[
            V("class_id"),
            V("programme"),
            V("venue_id"),
            V("days"),
            V("start_time"),
            V("duration_minutes"),
            V("capacity"),
            V("session_dates"),
        ],
        "SlotPublished" => &[
            V("slot_id"),
            V("venue_id"),
            V("starts_at"),
            V("ends_at"),
            V("mode"),
        ],
        "ClassEnrolled" | "ClassPlaceReleased" => &[V("class_id")],
        "SlotBooked" | "SlotReleased" => &[V("slot_id")],
        "PatientWaitlisted" => &[
            V("priority"),
            V("pathway"),
            V("programme"),
            V("sessions"),
            V("need_recorded_at"),
            Fields("choices", &["days", "modes"]),
        ],
        "OfferMade" => &[V("offer_id"), Fields("place", PLACE), V("first_session_at")],
        "OfferAccepted" | "OfferDeclined" => &[V("offer_id")],
        "PlaceBooked" => &[
            Fields("place", PLACE),
            Fields("sessions", &["session_no", "starts_at", "venue_id", "mode"]),
        ],
        "SessionAttended" => &[V("session_no")],
        "SessionMissed" => &[V("session_no"), V("missed_total")],
        "SessionCancelled" => &[V("session_no"), V("by")],
        "CourseCompleted" => &[V("attended"), V("missed"), V("cancelled")],
        "RehabDischarged" => &[V("reason"), V("notify_referrer")],
        // Outcomes.
        "QuestionnaireScheduled" => &[
            V("measure"),
            V("timepoint"),
            V("due"),
            V("trigger_event_id"),
            V("trigger_event_type"),
        ],
        "QuestionnaireSent" => &[V("measure"), V("timepoint"), V("sent_at")],
        "QuestionnaireCompleted" => &[
            V("response_id"),
            V("measure"),
            V("timepoint"),
            Fields("answers", &["link_id", "value"]),
            Fields(
                "score",
                &[
                    "measure",
                    "total",
                    "psychosocial",
                    "risk",
                    "profile",
                    "vas",
                    "index",
                    "value_set",
                    "mean",
                    "activities",
                ],
            ),
            V("completed_at"),
        ],
        "QuestionnaireOverdue" => &[V("measure"), V("timepoint"), V("due"), V("days_overdue")],
        "OutcomeChangeRecorded" => &[
            V("measure"),
            V("from"),
            V("to"),
            V("baseline"),
            V("later"),
            V("change"),
            V("minimal_important_change"),
            V("reached_minimal_important_change"),
        ],
        _ => return None,
    };
    Some(keep)
}

/// Whether an event type is part of the analysts' stream.
pub fn is_exported(event_type: &str) -> bool {
    allow_list(event_type).is_some()
}

fn reduce_object(value: &Value, keys: &[&str]) -> Value {
    let Some(obj) = value.as_object() else {
        return Value::Null;
    };
    let kept: Map<String, Value> = keys
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    Value::Object(kept)
}

fn reduce(payload: &Map<String, Value>, keep: &[Keep]) -> Value {
    let mut out = Map::new();
    for k in keep {
        match *k {
            Keep::Value(name) => {
                if let Some(v) = payload.get(name) {
                    out.insert(name.to_owned(), v.clone());
                }
            }
            Keep::Fields(name, keys) => match payload.get(name) {
                Some(Value::Array(items)) => {
                    let items = items.iter().map(|i| reduce_object(i, keys)).collect();
                    out.insert(name.to_owned(), Value::Array(items));
                }
                Some(v @ Value::Object(_)) => {
                    out.insert(name.to_owned(), reduce_object(v, keys));
                }
                Some(Value::Null) => {
                    out.insert(name.to_owned(), Value::Null);
                }
                // Anything else is not what the event type defines: drop it.
                Some(_) | None => {}
            },
        }
    }
    Value::Object(out)
}

/// The analysts' view of an operational event, or `None` when the event
/// type is not part of the stream (delivery and operations events, unknown
/// types) or its payload is not an object.
///
/// A `ReferralReceived` event is described from its own payload; every other
/// event of a referral takes the patient attributes recorded in `patients`
/// (none if the referral was never seen).
pub fn to_analyst_event(
    envelope: &Envelope,
    patients: &PatientIndex,
    ctx: &Context,
) -> Option<AnalystEvent> {
    let keep = allow_list(&envelope.event_type)?;
    let payload = envelope.payload.as_object()?;
    let referral_key = payload
        .get("referral_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let attrs = match received(envelope) {
        Some(r) => Some(PatientAttributes::of_referral(
            &r,
            envelope.occurred_at.date_naive(),
            ctx,
        )),
        None => referral_key.and_then(|k| patients.get(&k).cloned()),
    }
    .unwrap_or_default();
    Some(AnalystEvent {
        event_id: envelope.event_id,
        event_type: envelope.event_type.clone(),
        occurred_at: envelope.occurred_at,
        recorded_at: envelope.recorded_at,
        schema_version: envelope.schema_version,
        referral_key,
        patient_pseudonym: attrs.patient_pseudonym,
        age_band: attrs.age_band,
        sex: attrs.sex,
        ethnicity_code: attrs.ethnicity_code,
        imd_decile: attrs.imd_decile,
        practice_ods: attrs.practice_ods,
        route: attrs.route,
        data: reduce(payload, keep),
    })
}

/// The flat CSV columns of [`AnalystEvent`] (`data` as a JSON string).
pub const CSV_COLUMNS: &[&str] = &[
    "event_id",
    "event_type",
    "occurred_at",
    "recorded_at",
    "schema_version",
    "referral_key",
    "patient_pseudonym",
    "age_band",
    "sex",
    "ethnicity_code",
    "imd_decile",
    "practice_ods",
    "route",
    "data",
];

fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The CSV header line (with a trailing newline).
pub fn csv_header() -> String {
    CSV_COLUMNS.join(",") + "\n"
}

impl AnalystEvent {
    /// One CSV line (RFC 4180 quoting, trailing newline).
    pub fn to_csv_line(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let fields = [
            self.event_id.to_string(),
            self.event_type.clone(),
            self.occurred_at.to_rfc3339(),
            self.recorded_at.to_rfc3339(),
            self.schema_version.to_string(),
            self.referral_key.map(|k| k.to_string()).unwrap_or_default(),
            opt(&self.patient_pseudonym),
            opt(&self.age_band),
            opt(&self.sex),
            opt(&self.ethnicity_code),
            self.imd_decile.map(|d| d.to_string()).unwrap_or_default(),
            opt(&self.practice_ods),
            opt(&self.route),
            self.data.to_string(),
        ];
        let mut out = String::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, f);
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests;
