//! The read side: a small pool of read-only connections used from
//! `spawn_blocking`, and decoding of stored rows into envelopes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use mskflow_eventlog::{Envelope, Error, StoredEvent};
use rusqlite::{Connection, Row};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::schema;

/// Columns selected for an envelope, in the order [`decode_row`] expects.
pub(crate) const ENVELOPE_COLUMNS: &str = "position, event_id, stream_id, sequence, occurred_at, \
     recorded_at, causation_id, correlation_id, traceparent, tracestate, event_type, \
     schema_version, payload";

/// Format a timestamp as stored: RFC 3339, UTC, nanoseconds, so text order
/// is time order and the value round-trips exactly.
pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Wrap a SQLite failure for the port.
pub(crate) fn unavailable(
    context: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Unavailable {
        context: context.into(),
        source: Box::new(source),
    }
}

/// Decode one `events` row selected with [`ENVELOPE_COLUMNS`].
///
/// The outer `Result` is a SQLite failure; the inner one a row that could be
/// read but not decoded (a corrupt or foreign row).
pub(crate) fn decode_row(row: &Row<'_>) -> rusqlite::Result<Result<Envelope, Error>> {
    let envelope = match decode_header(row)? {
        Ok(envelope) => envelope,
        Err(e) => return Ok(Err(e)),
    };
    let payload = row.get_ref(12)?.as_str()?;
    // The error text of serde_json names a line and column, never the
    // payload itself.
    Ok(match serde_json::from_str(payload) {
        Ok(payload) => Ok(Envelope {
            payload,
            ..envelope
        }),
        Err(e) => Err(Error::Corrupt {
            position: envelope.position,
            reason: format!("payload is not JSON: {e}"),
        }),
    })
}

/// Decode one `events` row selected with [`ENVELOPE_COLUMNS`], leaving its
/// payload the stored text (a read model reads what it needs from it).
pub(crate) fn decode_row_unparsed(row: &Row<'_>) -> rusqlite::Result<Result<StoredEvent, Error>> {
    let envelope = match decode_header(row)? {
        Ok(envelope) => envelope,
        Err(e) => return Ok(Err(e)),
    };
    let payload: String = row.get(12)?;
    Ok(Ok(StoredEvent::unparsed(envelope, payload)))
}

/// Every column of a row but the payload (left `Null`).
fn decode_header(row: &Row<'_>) -> rusqlite::Result<Result<Envelope, Error>> {
    let position: i64 = row.get(0)?;
    let event_id = row.get_ref(1)?.as_str()?;
    let stream_id: String = row.get(2)?;
    let sequence: i64 = row.get(3)?;
    let occurred_at = row.get_ref(4)?.as_str()?;
    let recorded_at = row.get_ref(5)?.as_str()?;
    let causation_id = row.get_ref(6)?.as_str_or_null()?;
    let correlation_id = row.get_ref(7)?.as_str()?;
    let traceparent: Option<String> = row.get(8)?;
    let tracestate: Option<String> = row.get(9)?;
    let event_type: String = row.get(10)?;
    let schema_version: i64 = row.get(11)?;

    let Ok(position_u) = u64::try_from(position) else {
        return Ok(Err(Error::Corrupt {
            position: 0,
            reason: format!("negative position {position}"),
        }));
    };
    let corrupt = |reason: String| Error::Corrupt {
        position: position_u,
        reason,
    };
    let decoded = (|| {
        Ok(Envelope {
            event_id: parse_uuid("event_id", event_id)?,
            stream_id,
            sequence: u64::try_from(sequence)
                .map_err(|_| format!("invalid sequence {sequence}"))?,
            position: position_u,
            occurred_at: parse_time("occurred_at", occurred_at)?,
            recorded_at: parse_time("recorded_at", recorded_at)?,
            causation_id: causation_id
                .map(|c| parse_uuid("causation_id", c))
                .transpose()?,
            correlation_id: parse_uuid("correlation_id", correlation_id)?,
            traceparent,
            tracestate,
            event_type,
            schema_version: u32::try_from(schema_version)
                .map_err(|_| format!("invalid schema_version {schema_version}"))?,
            payload: serde_json::Value::Null,
        })
    })();
    Ok(decoded.map_err(corrupt))
}

fn parse_uuid(column: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value).map_err(|e| format!("{column} is not a UUID: {e}"))
}

fn parse_time(column: &str, value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{column} is not an RFC 3339 time: {e}"))
}

/// Run a query and decode every row into an envelope.
pub(crate) fn query_envelopes(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Envelope>, Error> {
    query_rows(conn, sql, params, decode_row)
}

/// Run a query and decode every row with `decode`.
pub(crate) fn query_rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: fn(&Row<'_>) -> rusqlite::Result<Result<T, Error>>,
) -> Result<Vec<T>, Error> {
    let sqlite = |e| unavailable("reading events", e);
    let mut stmt = conn.prepare_cached(sql).map_err(sqlite)?;
    let mut rows = stmt.query(params).map_err(sqlite)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite)? {
        out.push(decode(row).map_err(sqlite)??);
    }
    Ok(out)
}

/// Highest position stored, 0 for an empty log.
pub(crate) const HEAD_SQL: &str = "SELECT COALESCE(MAX(position), 0) FROM events";

/// Run [`HEAD_SQL`].
pub(crate) fn head_position(conn: &Connection) -> Result<u64, Error> {
    let head: i64 = conn
        .query_row(HEAD_SQL, [], |r| r.get(0))
        .map_err(|e| unavailable("reading head position", e))?;
    u64::try_from(head).map_err(|_| Error::Corrupt {
        position: 0,
        reason: format!("negative head position {head}"),
    })
}

/// A fixed-size pool of read-only connections.
///
/// A semaphore bounds how many blocking reads run at once; the connections
/// themselves sit in a plain mutex-guarded stack that is only touched for a
/// push or a pop. A connection lost to a panicking read is reopened on
/// demand.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Semaphore,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("path", &self.path)
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, conns: Vec<Connection>) -> Self {
        let size = conns.len().max(1);
        Self {
            path,
            idle: Arc::new(Mutex::new(conns)),
            permits: Semaphore::new(size),
        }
    }

    /// Run `f` on a pooled connection in a blocking thread.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let path = self.path.clone();
        let idle = Arc::clone(&self.idle);
        tokio::task::spawn_blocking(move || {
            let conn = match pooled {
                Some(conn) => conn,
                None => schema::open_reader(&path)
                    .map_err(|e| unavailable("opening a read connection", e))?,
            };
            let result = f(&conn);
            idle.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(|e| unavailable("read task failed", e))?
    }
}
