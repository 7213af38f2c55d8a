//! The writer thread: group commit over the single read-write connection.
//!
//! Requests arrive on a channel. The thread blocks for the first one, drains
//! whatever else is already queued (up to `max_batch`), and runs the lot in
//! one `BEGIN IMMEDIATE` transaction. Each request runs inside its own
//! savepoint, so a refused request (stale expected version, duplicate event
//! id, empty append) is rolled back alone while the others in the batch go
//! ahead. One `COMMIT`, hence one fsync of the WAL, then every caller is
//! answered. Later requests in a batch see the effects of earlier ones, so two
//! appends to one stream in one batch are checked against each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use chrono::Utc;
use mskflow_eventlog::{Appended, Error, ExpectedVersion, Metadata, NewEvent};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{oneshot, watch};

use crate::read::{format_time, unavailable};

/// A unit of work for the writer.
pub(crate) enum Request {
    Append(AppendRequest),
    Checkpoint(CheckpointRequest),
}

pub(crate) struct AppendRequest {
    pub(crate) stream_id: String,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) metadata: Metadata,
    pub(crate) reply: oneshot::Sender<Result<Appended, Error>>,
}

pub(crate) struct CheckpointRequest {
    pub(crate) consumer: String,
    pub(crate) position: u64,
    pub(crate) reply: oneshot::Sender<Result<(), Error>>,
}

/// Counters shared between the writer and [`crate::SqliteEventLog::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appends: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) requests: Receiver<Request>,
    pub(crate) max_batch: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) head: watch::Sender<u64>,
}

/// What a request did, before the batch commits and the caller is told.
enum Done {
    Appended(Appended),
    Checkpointed,
}

/// Why one request inside the batch did not go through.
enum Refusal {
    /// A business refusal; only this request's savepoint is rolled back.
    Refused(Error),
    /// SQLite failed on this request; also rolled back alone, reported as
    /// `Unavailable`.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Self {
        Refusal::Sqlite(e)
    }
}

impl Writer {
    /// The thread body: run until every sender is gone, then drain and stop.
    pub(crate) fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // `recv` fails only once every sender has been dropped and the
        // queue is empty, so queued requests are always served.
        while let Ok(first) = self.requests.recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.requests.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
        // Fold the WAL back into the main file so a cleanly closed store is
        // one file. Failure is harmless: the next open replays the WAL.
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "WAL checkpoint on close failed");
        }
        tracing::debug!("event store writer stopped");
    }

    fn process(&mut self, batch: &mut Vec<Request>) {
        let size = batch.len();
        let span = tracing::debug_span!("eventlog_batch", size);
        let _enter = span.enter();
        let started = Instant::now();
        let recorded_at = format_time(&Utc::now());

        match execute(&mut self.conn, batch, &recorded_at) {
            Ok(outcomes) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                let mut head = 0;
                let (mut ok, mut refused) = (0usize, 0usize);
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    match (request, outcome) {
                        (Request::Append(req), Ok(Done::Appended(appended))) => {
                            ok += 1;
                            head = head.max(appended.position);
                            self.counters.appends.fetch_add(1, Ordering::Relaxed);
                            self.counters
                                .events
                                .fetch_add(req.events.len() as u64, Ordering::Relaxed);
                            // The caller may have gone away; the events are
                            // stored regardless.
                            let _ = req.reply.send(Ok(appended));
                        }
                        (Request::Append(req), Err(e)) => {
                            refused += 1;
                            let _ = req.reply.send(Err(e));
                        }
                        (Request::Checkpoint(req), Ok(Done::Checkpointed)) => {
                            self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                            let _ = req.reply.send(Ok(()));
                        }
                        (Request::Checkpoint(req), Err(e)) => {
                            let _ = req.reply.send(Err(e));
                        }
                        // `execute` answers each request with its own kind;
                        // anything else is a bug, reported, not panicked on.
                        (request, Ok(_)) => fail(request, &Arc::new(MismatchedOutcome)),
                    }
                }
                if head > 0 {
                    self.head.send_if_modified(|current| {
                        let moved = head > *current;
                        if moved {
                            *current = head;
                        }
                        moved
                    });
                }
                tracing::debug!(
                    appended = ok,
                    refused,
                    elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "committed batch"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "event store batch failed; nothing was written");
                let shared = Arc::new(e);
                for request in batch.drain(..) {
                    fail(request, &shared);
                }
            }
        }
    }
}

/// An internal inconsistency, reported as `Unavailable` rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("writer produced an outcome of the wrong kind")]
struct MismatchedOutcome;

fn fail<E>(request: Request, error: &Arc<E>)
where
    E: std::error::Error + Send + Sync + 'static,
{
    let error = || unavailable("committing a write batch", Arc::clone(error));
    match request {
        Request::Append(req) => {
            let _ = req.reply.send(Err(error()));
        }
        Request::Checkpoint(req) => {
            let _ = req.reply.send(Err(error()));
        }
    }
}

/// Run one batch in one transaction, one result per request, in order.
/// `Err` means the transaction as a whole failed and nothing was written.
fn execute(
    conn: &mut Connection,
    batch: &[Request],
    recorded_at: &str,
) -> rusqlite::Result<Vec<Result<Done, Error>>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        let outcome = match request {
            Request::Append(req) => {
                in_savepoint(&mut tx, |c| append(c, req, recorded_at).map(Done::Appended))?
            }
            Request::Checkpoint(req) => in_savepoint(&mut tx, |c| {
                checkpoint(c, req, recorded_at).map(|()| Done::Checkpointed)
            })?,
        };
        outcomes.push(outcome);
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Run one request inside its own savepoint: released on success, rolled
/// back alone on refusal. The outer `Err` (a failed savepoint statement)
/// aborts the whole batch.
fn in_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T, Refusal>,
) -> rusqlite::Result<Result<T, Error>> {
    let sp = tx.savepoint()?;
    match f(&sp) {
        Ok(done) => {
            sp.commit()?;
            Ok(Ok(done))
        }
        Err(refusal) => {
            // `finish` rolls the savepoint back (its drop behaviour) and
            // reports whether that worked.
            sp.finish()?;
            Ok(Err(match refusal {
                Refusal::Refused(e) => e,
                Refusal::Sqlite(e) => unavailable("writing to the event store", e),
            }))
        }
    }
}

fn to_i64(value: u64, what: &str, stream_id: &str) -> Result<i64, Refusal> {
    i64::try_from(value).map_err(|_| {
        Refusal::Refused(Error::InvalidAppend {
            stream_id: stream_id.to_owned(),
            reason: format!("{what} {value} is out of range"),
        })
    })
}

fn append(conn: &Connection, req: &AppendRequest, recorded_at: &str) -> Result<Appended, Refusal> {
    let stream_id = req.stream_id.as_str();
    let invalid = |reason: &str| {
        Refusal::Refused(Error::InvalidAppend {
            stream_id: stream_id.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if stream_id.is_empty() {
        return Err(invalid("the stream id is empty"));
    }
    if req.events.is_empty() {
        return Err(invalid("no events to append"));
    }

    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(sequence), 0) FROM events WHERE stream_id = ?1",
        [stream_id],
        |row| row.get(0),
    )?;
    let current = u64::try_from(current).map_err(|_| {
        Refusal::Refused(Error::Corrupt {
            position: 0,
            reason: format!("stream {stream_id} has a negative sequence"),
        })
    })?;
    let matches = match req.expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current == 0,
        ExpectedVersion::Exact(v) => current == v,
    };
    if !matches {
        return Err(Refusal::Refused(Error::WrongExpectedVersion {
            stream_id: stream_id.to_owned(),
            expected: req.expected,
            actual: current,
        }));
    }

    let meta = &req.metadata;
    let causation_id = meta.causation_id.map(|c| c.to_string());
    let correlation_id = meta.correlation_id.to_string();
    let mut existing = conn.prepare("SELECT 1 FROM events WHERE event_id = ?1")?;
    let mut insert = conn.prepare(
        "INSERT INTO events (event_id, stream_id, sequence, occurred_at, recorded_at, \
         causation_id, correlation_id, traceparent, tracestate, event_type, schema_version, \
         payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let mut sequence = current;
    let mut position = 0;
    for event in &req.events {
        let event_id = event.event_id.to_string();
        // Checked inside the savepoint, so it also catches an id repeated
        // within this same request.
        if existing
            .query_row([&event_id], |_| Ok(()))
            .optional()?
            .is_some()
        {
            return Err(Refusal::Refused(Error::DuplicateEvent {
                stream_id: stream_id.to_owned(),
                event_id: event.event_id,
            }));
        }
        sequence += 1;
        let payload = serde_json::to_string(&event.payload).map_err(|e| {
            Refusal::Refused(Error::InvalidAppend {
                stream_id: stream_id.to_owned(),
                reason: format!("payload cannot be serialised: {e}"),
            })
        })?;
        insert.execute(params![
            event_id,
            stream_id,
            to_i64(sequence, "sequence", stream_id)?,
            format_time(&event.occurred_at),
            recorded_at,
            causation_id,
            correlation_id,
            meta.traceparent,
            meta.tracestate,
            event.event_type,
            i64::from(event.schema_version),
            payload,
        ])?;
        position = conn.last_insert_rowid();
    }
    let position = u64::try_from(position).map_err(|_| {
        Refusal::Refused(Error::Corrupt {
            position: 0,
            reason: format!("negative position {position}"),
        })
    })?;
    Ok(Appended {
        version: sequence,
        position,
    })
}

fn checkpoint(
    conn: &Connection,
    req: &CheckpointRequest,
    recorded_at: &str,
) -> Result<(), Refusal> {
    let position = i64::try_from(req.position).map_err(|_| {
        Refusal::Refused(Error::Corrupt {
            position: req.position,
            reason: "checkpoint position out of range".to_owned(),
        })
    })?;
    conn.execute(
        "INSERT INTO checkpoints (consumer, position, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, \
         updated_at = excluded.updated_at",
        params![req.consumer, position, recorded_at],
    )?;
    Ok(())
}
