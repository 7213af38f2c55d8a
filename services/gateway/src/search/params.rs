//! What every search shares: paging counts, the error of a search the
//! server cannot do, date prefixes, tokens, references, paging links.

use chrono::{DateTime, Utc};

use crate::views::index::parse_date_range;

/// Default and largest page sizes.
pub const DEFAULT_COUNT: usize = 50;

pub const MAX_COUNT: usize = 1000;

/// `_count`: a non-negative integer, capped at [`MAX_COUNT`].
pub(crate) fn parse_count(raw: &str) -> Result<usize, Invalid> {
    raw.parse::<usize>()
        .map(|n| n.min(MAX_COUNT))
        .map_err(|_| Invalid("_count must be a non-negative integer".into()))
}

/// `_offset`: a non-negative integer.
pub(crate) fn parse_offset(raw: &str) -> Result<usize, Invalid> {
    raw.parse::<usize>()
        .map_err(|_| Invalid("_offset must be a non-negative integer".into()))
}

/// A search the client asked for that we cannot do: HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// One comparison on a date parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A date or instant parameter value: the half-open range it denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateFilter {
    pub(crate) prefix: Prefix,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
}

impl DateFilter {
    pub(crate) fn parse(raw: &str) -> Result<Self, Invalid> {
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

    pub(crate) fn matches(&self, t: DateTime<Utc>) -> bool {
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

/// `system|value`, `|value` or `value`.
pub(crate) fn token(raw: &str) -> (Option<&str>, &str) {
    match raw.split_once('|') {
        Some((system, value)) => (Some(system), value),
        None => (None, raw),
    }
}

pub(crate) fn token_matches(raw: &str, system: Option<&str>, value: &str) -> bool {
    let (want_system, want_value) = token(raw);
    want_value == value && want_system.is_none_or(|s| s.is_empty() || Some(s) == system)
}

/// Whether any of the `raws` tokens names this patient's NHS number (never
/// for a patient who gave none).
pub(crate) fn names_the_patient(
    raws: &[String],
    patient: &mskflow_events::intake::PatientDetails,
) -> bool {
    patient.nhs_number.as_ref().is_some_and(|n| {
        raws.iter()
            .any(|raw| token_matches(raw, Some(mskflow_events::NHS_NUMBER_SYSTEM), n.as_str()))
    })
}

/// The referral id in `ServiceRequest/{id}`, a URL ending that way, or a bare id.
pub(crate) fn reference_id(value: &str) -> Option<uuid::Uuid> {
    if value.contains('/') && !value.contains("ServiceRequest/") && !value.contains("Task/") {
        return None;
    }
    uuid::Uuid::parse_str(value.rsplit('/').next().unwrap_or(value)).ok()
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

pub(crate) fn encode(s: &str) -> String {
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
