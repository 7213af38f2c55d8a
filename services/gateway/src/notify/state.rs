//! What the notification worker keeps of the FHIR Subscriptions: a row per
//! subscription in its own small SQLite file (`gateway-notifications.db`
//! beside the gateway's other read models), never anything per referral.
//!
//! Each row holds where the subscription was created and deleted in the
//! log, its handshake's outcome and its counter (the number given to its
//! last notification, the log position and id of the event that numbered
//! it). The worker is a checkpointed consumer, at least once: after a crash
//! it sees again the events after its checkpoint, which this file may
//! already have counted. So every change here is idempotent by log
//! position: a subscription is active at position `p` when created before
//! `p` and not deleted at or before it; an event numbered already keeps its
//! number; an event at or below the last numbered position (other than that
//! event itself) was handled whole before the later one was numbered, so
//! its messages are settled and it needs no number.
//!
//! The file is written (synchronously, `synchronous=FULL`) before the
//! notification it numbers is sent, so its counters are never behind what a
//! receiver saw. When it cannot be resumed (new, another schema version, the
//! event log replaced, or a log without stable positions such as Kafka's
//! index), it is started empty and the worker reads the log from its first
//! event once, as a rebuild, skipping every message already settled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use mskflow_eventlog::{Envelope, EventLog, StartFrom, decode};
use mskflow_events::subscription::{SubscriptionEvent, stream_id};
use mskflow_projection::rusqlite::{self, Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::subscription::{Handshake, SubscriptionView};

/// The file's name (the consumer's, `notify::CONSUMER`).
pub const NAME: &str = "gateway-notifications";

/// The stored shape; a file of another version is started afresh.
const VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE notify_meta (version INTEGER NOT NULL, log_id TEXT);
CREATE TABLE subscription (
    id               TEXT PRIMARY KEY,
    created_position INTEGER NOT NULL,
    deleted_position INTEGER,
    handshake        TEXT,
    counter          INTEGER NOT NULL,
    counter_position INTEGER NOT NULL,
    counter_event    TEXT NOT NULL
);
";

/// One subscription as the worker knows it.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// As its creation left it (the views keep no more while it is active).
    pub view: SubscriptionView,
    pub created: u64,
    pub deleted: Option<u64>,
    /// The handshake's outcome; `None` while not settled.
    pub handshake: Option<Handshake>,
    pub counter: u64,
    pub counter_position: u64,
    pub counter_event: Uuid,
}

impl Tracked {
    /// Whether it exists and is not deleted at log position `position`.
    pub fn active_at(&self, position: u64) -> bool {
        self.created < position && self.deleted.is_none_or(|d| d > position)
    }
}

/// The subscriptions, in memory (few) and written through to the file.
#[derive(Debug)]
pub struct State {
    conn: Arc<Mutex<Connection>>,
    subscriptions: BTreeMap<Uuid, Tracked>,
    /// Keeps a temporary directory alive while the worker runs.
    _options: Option<mskflow_projection::Options>,
}

fn store_error(context: &str) -> impl FnOnce(rusqlite::Error) -> mskflow_eventlog::Error + '_ {
    move |e| mskflow_eventlog::Error::Unavailable {
        context: format!("notification state: {context}"),
        source: Box::new(e),
    }
}

fn handshake_code(h: Option<Handshake>) -> Option<&'static str> {
    match h? {
        Handshake::Active => Some("active"),
        Handshake::Error => Some("error"),
        Handshake::Requested => None,
    }
}

fn parse_handshake(code: Option<String>) -> Option<Handshake> {
    match code.as_deref() {
        Some("active") => Some(Handshake::Active),
        Some("error") => Some(Handshake::Error),
        _ => None,
    }
}

type Row = (String, i64, Option<i64>, Option<String>, i64, i64, String);

/// The opened file and, when it can be resumed, its rows.
type OpenedFile = (Connection, Option<Vec<Row>>);

/// Open the file and say where the worker starts: after its checkpoint when
/// the stored rows can be resumed, else from the first event (rebuild).
fn open_file(
    options: &mskflow_projection::Options,
    log_id: Option<&str>,
) -> Result<OpenedFile, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(&options.dir)?;
    let path = options.path_of(NAME);
    let open = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    };
    let conn = open()?;
    let stored: Option<(i64, Option<String>)> = conn
        .query_row(
            "SELECT version, log_id FROM notify_meta LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .unwrap_or(None);
    let reason = match stored {
        None => "new",
        Some((version, _)) if version != VERSION => "stored under another schema version",
        Some(_) if log_id.is_none() => "the event log has no stable positions",
        Some((_, stored)) if stored.as_deref() != log_id => "the event log was replaced",
        Some(_) => {
            let rows = {
                let mut stmt = conn.prepare(
                    "SELECT id, created_position, deleted_position, handshake, counter, counter_position, counter_event FROM subscription",
                )?;
                stmt.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<Row>>>()?
            };
            return Ok((conn, Some(rows)));
        }
    };
    drop(conn);
    mskflow_projection::remove(options, NAME)?;
    let mut conn = open()?;
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.execute(
        "INSERT INTO notify_meta (version, log_id) VALUES (?1, ?2)",
        params![VERSION, log_id],
    )?;
    tx.commit()?;
    if reason == "new" {
        tracing::info!(
            file = NAME,
            "notification state is new: the worker reads the log from its first event"
        );
    } else {
        tracing::warn!(
            file = NAME,
            reason,
            "notification state rebuilt: the worker reads the log from its first event"
        );
    }
    Ok((conn, None))
}

impl State {
    /// Open the state in `options.dir` (`None`: a temporary directory, so a
    /// rebuild at each start). A file that cannot be opened is logged and
    /// replaced by one in memory (a rebuild).
    pub async fn open(
        log: &dyn EventLog,
        options: Option<mskflow_projection::Options>,
    ) -> Result<(Self, StartFrom), mskflow_eventlog::Error> {
        let options = options.or_else(|| mskflow_projection::Options::temporary().ok());
        let log_id = log.log_id();
        let opened = match options.clone() {
            Some(o) => tokio::task::spawn_blocking(move || {
                open_file(&o, log_id.as_deref()).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
            None => Err("no directory for the notification state".to_owned()),
        };
        let (conn, rows) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(error = %e, "notification state cannot be kept on disk; kept in memory and rebuilt from the first event");
                let conn = Connection::open_in_memory()
                    .and_then(|c| c.execute_batch(SCHEMA).map(|()| c))
                    .map_err(store_error("opening in memory"))?;
                (conn, None)
            }
        };
        let mut state = Self {
            conn: Arc::new(Mutex::new(conn)),
            subscriptions: BTreeMap::new(),
            _options: options,
        };
        let Some(rows) = rows else {
            return Ok((state, StartFrom::Beginning));
        };
        match state.load(log, rows).await {
            Ok(()) => {
                tracing::info!(
                    file = NAME,
                    subscriptions = state.subscriptions.len(),
                    "notification state resumed: the worker resumes after its checkpoint"
                );
                Ok((state, StartFrom::Checkpoint))
            }
            Err(e) => {
                // Rows without their views would number wrongly: start over.
                tracing::error!(error = %e, "notification state cannot be read back; rebuilt from the first event");
                state.subscriptions.clear();
                let conn = Arc::clone(&state.conn);
                tokio::task::spawn_blocking(move || {
                    conn.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .execute("DELETE FROM subscription", [])
                        .map(|_| ())
                        .map_err(store_error("clearing"))
                })
                .await
                .map_err(|e| mskflow_eventlog::Error::Unavailable {
                    context: "notification state".to_owned(),
                    source: Box::new(e),
                })??;
                Ok((state, StartFrom::Beginning))
            }
        }
    }

    /// The stored rows, each with its view read back from its stream.
    async fn load(
        &mut self,
        log: &dyn EventLog,
        rows: Vec<Row>,
    ) -> Result<(), mskflow_eventlog::Error> {
        for (id, created, deleted, handshake, counter, counter_position, counter_event) in rows {
            let Ok(id) = Uuid::parse_str(&id) else {
                continue;
            };
            let events = log.read_stream(&stream_id(id), 1).await?;
            let Some(view) = events.iter().find_map(created_view) else {
                tracing::warn!(subscription_id = %id, "a tracked subscription's creation was not found");
                continue;
            };
            let position = |v: i64| u64::try_from(v).unwrap_or(0);
            self.subscriptions.insert(
                id,
                Tracked {
                    view,
                    created: position(created),
                    deleted: deleted.map(position),
                    handshake: parse_handshake(handshake),
                    counter: position(counter),
                    counter_position: position(counter_position),
                    counter_event: Uuid::parse_str(&counter_event).unwrap_or_else(|_| Uuid::nil()),
                },
            );
        }
        Ok(())
    }

    /// Every subscription, by id.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Tracked> {
        self.subscriptions.values()
    }

    pub fn get(&self, id: &Uuid) -> Option<&Tracked> {
        self.subscriptions.get(id)
    }

    /// Fold a `SubscriptionCreated` or `SubscriptionDeleted` event (others,
    /// and events seen already, change nothing).
    pub async fn apply(&mut self, envelope: &Envelope) -> Result<(), mskflow_eventlog::Error> {
        let Ok(event) = decode::<SubscriptionEvent>(envelope) else {
            tracing::debug!(
                position = envelope.position,
                "notification state skipped an undecodable subscription event"
            );
            return Ok(());
        };
        match event {
            SubscriptionEvent::SubscriptionCreated(e) => {
                if self.subscriptions.contains_key(&e.subscription_id) {
                    return Ok(());
                }
                let Some(view) = created_view(envelope) else {
                    return Ok(());
                };
                let tracked = Tracked {
                    view,
                    created: envelope.position,
                    deleted: None,
                    handshake: None,
                    counter: 0,
                    counter_position: 0,
                    counter_event: Uuid::nil(),
                };
                self.save(e.subscription_id, &tracked).await?;
                self.subscriptions.insert(e.subscription_id, tracked);
            }
            SubscriptionEvent::SubscriptionDeleted(e) => {
                let Some(mut tracked) = self.subscriptions.get(&e.subscription_id).cloned() else {
                    return Ok(());
                };
                if tracked.deleted.is_some() || envelope.position <= tracked.created {
                    return Ok(());
                }
                tracked.deleted = Some(envelope.position);
                self.save(e.subscription_id, &tracked).await?;
                self.subscriptions.insert(e.subscription_id, tracked);
            }
        }
        Ok(())
    }

    /// Record the outcome of a subscription's handshake.
    pub async fn settle_handshake(
        &mut self,
        id: Uuid,
        handshake: Handshake,
    ) -> Result<(), mskflow_eventlog::Error> {
        let Some(mut tracked) = self.subscriptions.get(&id).cloned() else {
            return Ok(());
        };
        if tracked.handshake == Some(handshake) {
            return Ok(());
        }
        tracked.handshake = Some(handshake);
        self.save(id, &tracked).await?;
        self.subscriptions.insert(id, tracked);
        Ok(())
    }

    /// The number of the notification subscription `id` is sent because of
    /// the event `event_id` at `position`: the next one the first time the
    /// event is seen, the same one when it is seen again; `None` for an
    /// event before the last numbered one (handled whole already).
    pub async fn number(
        &mut self,
        id: Uuid,
        position: u64,
        event_id: Uuid,
    ) -> Result<Option<u64>, mskflow_eventlog::Error> {
        let Some(mut tracked) = self.subscriptions.get(&id).cloned() else {
            return Ok(None);
        };
        if tracked.counter_event == event_id {
            return Ok(Some(tracked.counter));
        }
        if position <= tracked.counter_position {
            return Ok(None);
        }
        tracked.counter += 1;
        tracked.counter_position = position;
        tracked.counter_event = event_id;
        self.save(id, &tracked).await?;
        let number = tracked.counter;
        self.subscriptions.insert(id, tracked);
        Ok(Some(number))
    }

    /// Write one subscription's row.
    async fn save(&self, id: Uuid, t: &Tracked) -> Result<(), mskflow_eventlog::Error> {
        let conn = Arc::clone(&self.conn);
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let row = (
            id.to_string(),
            as_i64(t.created),
            t.deleted.map(as_i64),
            handshake_code(t.handshake),
            as_i64(t.counter),
            as_i64(t.counter_position),
            t.counter_event.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.execute(
                "INSERT INTO subscription (id, created_position, deleted_position, handshake, counter, counter_position, counter_event)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET created_position = ?2, deleted_position = ?3,
                    handshake = ?4, counter = ?5, counter_position = ?6, counter_event = ?7",
                params![row.0, row.1, row.2, row.3, row.4, row.5, row.6],
            )
            .map(|_| ())
            .map_err(store_error("writing a subscription"))
        })
        .await
        .map_err(|e| mskflow_eventlog::Error::Unavailable {
            context: "notification state".to_owned(),
            source: Box::new(e),
        })?
    }
}

/// The view a `SubscriptionCreated` envelope makes.
fn created_view(envelope: &Envelope) -> Option<SubscriptionView> {
    if envelope.event_type != "SubscriptionCreated" {
        return None;
    }
    let event = decode::<SubscriptionEvent>(envelope).ok()?;
    SubscriptionView::evolve(None, envelope, &event)
}

#[cfg(test)]
mod tests;
