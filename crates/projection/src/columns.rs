//! Helpers the read models share for their tables: instants stored so that
//! text order is time order, JSON and UUID columns, and a stream's folded
//! state kept with the stream version it reached.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{OptionalExtension, Transaction};
use uuid::Uuid;

use crate::ApplyError;

/// An instant as stored: RFC 3339, UTC, nanoseconds (text order is time
/// order).
pub fn sortable(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// A stream sequence as an SQLite integer.
pub fn sequence(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

/// An event or stored state that is not the JSON expected: skipped, with
/// the error's category and place only (never the content).
pub fn skip_json(e: &serde_json::Error) -> ApplyError {
    ApplyError::Skip(mskflow_eventlog::json_error_reason(e))
}

/// Read column `index` as JSON of `T`.
pub fn json_column<T: serde::de::DeserializeOwned>(
    index: usize,
    text: &str,
) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Read column `index` as a 16-byte UUID.
pub fn uuid_column(index: usize, bytes: &[u8]) -> rusqlite::Result<Uuid> {
    Uuid::from_slice(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// The stored state of `key`, selected by `select` (`SELECT version, state
/// ... WHERE key = ?1`): `None` when the event at `sequence` is applied
/// already (at-least-once delivery), `Some(None)` when nothing is stored.
pub fn stored_state(
    tx: &Transaction<'_>,
    select: &str,
    key: &[u8],
    sequence: u64,
) -> Result<Option<Option<String>>, ApplyError> {
    let stored: Option<(i64, String)> = tx
        .prepare_cached(select)?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(match stored {
        Some((version, _)) if u64::try_from(version).unwrap_or(0) >= sequence => None,
        Some((_, state)) => Some(Some(state)),
        None => Some(None),
    })
}
