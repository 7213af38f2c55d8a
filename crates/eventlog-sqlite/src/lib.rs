//! The embedded event store: the [`EventLog`] port on one SQLite file.
//!
//! This is the default store of mskflow, so it carries the rule that an
//! accepted referral is never lost:
//!
//! - the file is in WAL mode with `synchronous=FULL`, so every commit fsyncs
//!   the WAL, and an append returns only after its transaction committed;
//! - one writer thread owns the only read-write connection and commits
//!   requests in groups (see [`SqliteEventLog::stats`]): many concurrent
//!   appends share one fsync;
//! - optimistic concurrency per stream (`ExpectedVersion`) is checked inside
//!   that transaction, so a stale append is refused, never merged;
//! - reads and subscriptions use a small pool of read-only connections on
//!   tokio's blocking threads and never wait for the writer.
//!
//! Positions come from an `AUTOINCREMENT` key assigned under SQLite's single
//! write lock, so they grow in commit order: a subscriber that has seen
//! position `p` will never later find a committed event below `p`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent};
//! use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
//!
//! let log = SqliteEventLog::open(Options { path: "mskflow.db".into(), ..Options::default() })?;
//! let event = NewEvent {
//!     event_id: uuid::Uuid::new_v4(),
//!     event_type: "ReferralReceived".into(),
//!     schema_version: 1,
//!     occurred_at: chrono::Utc::now(),
//!     payload: serde_json::json!({}),
//! };
//! log.append("referral-1", ExpectedVersion::NoStream, vec![event], &Metadata::default()).await?;
//! log.close().await;
//! # Ok(()) }
//! ```

mod read;
mod schema;
mod subscription;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use mskflow_eventlog::{
    Appended, Envelope, EventLog, ExpectedVersion, Metadata, NewEvent, StartFrom, Subscription,
};
use tokio::sync::{oneshot, watch};

use crate::read::{ENVELOPE_COLUMNS, ReadPool, query_envelopes, unavailable};
use crate::subscription::SqliteSubscription;
use crate::writer::{AppendRequest, CheckpointRequest, Counters, Request, Writer};

/// How to open the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The database file; created if missing. The WAL (`-wal`) and shared
    /// memory (`-shm`) files live next to it.
    pub path: PathBuf,
    /// Most requests committed in one transaction (one fsync); at least 1.
    pub max_batch: usize,
    /// Read-only connections for reads and subscriptions; at least 1.
    pub read_connections: usize,
    /// How often a waiting subscription looks for events written by another
    /// process; writes through this handle wake it at once.
    pub poll_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            path: PathBuf::from("mskflow.db"),
            max_batch: 512,
            read_connections: 4,
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// Counters since this handle was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Append requests that were committed.
    pub appends: u64,
    /// Write transactions committed (each one fsync of the WAL), appends
    /// and checkpoints together.
    pub commits: u64,
    /// Events written by the committed appends.
    pub events: u64,
    /// Consumer checkpoints stored.
    pub checkpoints: u64,
}

/// Failures to open the store. They happen at start-up, before any request
/// is served: the process reports them and exits non-zero. Were one to
/// reach a caller, it would be gRPC `UNAVAILABLE` / HTTP 503 with
/// OperationOutcome `transient`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, created or configured (permissions,
    /// not a database, locked for longer than the busy timeout).
    #[error("cannot open event store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite refused WAL mode (e.g. a file system without shared memory),
    /// so group commit and concurrent reads are not possible.
    #[error("event store {path} cannot use WAL mode (journal mode is {mode})")]
    NoWal { path: PathBuf, mode: String },
    /// Creating or upgrading the schema failed; the file is unchanged.
    #[error("cannot migrate event store {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer version of mskflow.
    #[error("event store {path} has schema version {found}; this build supports up to {supported}")]
    UnsupportedSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the event store writer: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The embedded event store. Clones share one writer and one read pool.
#[derive(Debug, Clone)]
pub struct SqliteEventLog {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    path: PathBuf,
    /// The file's identity (`EventLog::log_id`).
    log_id: String,
    poll_interval: Duration,
    /// `None` once closed.
    requests: Mutex<Option<Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    reads: ReadPool,
    head: watch::Receiver<u64>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventLog")
            .field("path", &self.path)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .field("head", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

impl SqliteEventLog {
    /// The position a new subscription of `consumer` starts after.
    async fn start_cursor(
        &self,
        consumer: &str,
        start: StartFrom,
    ) -> Result<u64, mskflow_eventlog::Error> {
        Ok(match start {
            StartFrom::Beginning => 0,
            StartFrom::After(position) => position,
            StartFrom::Checkpoint => {
                let name = consumer.to_owned();
                self.inner
                    .read(move |conn| subscription::stored_checkpoint(conn, &name))
                    .await?
            }
        })
    }

    /// Open (creating and migrating if needed) the store at `options.path`
    /// and start its writer thread.
    pub fn open(options: Options) -> Result<Self, Error> {
        let path = options.path.clone();
        let conn = schema::open_writer(&path)?;
        let head: i64 = conn
            .query_row(read::HEAD_SQL, [], |row| row.get(0))
            .map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
        // Positions start at 1; a negative head can only be a foreign row and
        // is reported by the readers that meet it.
        let head = u64::try_from(head).unwrap_or(0);
        let log_id = schema::log_id(&conn).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let mut readers = Vec::with_capacity(options.read_connections.max(1));
        for _ in 0..options.read_connections.max(1) {
            readers.push(schema::open_reader(&path).map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?);
        }

        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            conn,
            requests: rx,
            max_batch: options.max_batch.max(1),
            counters: Arc::clone(&counters),
            head: head_tx,
        };
        let handle = std::thread::Builder::new()
            .name("eventlog-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(Error::Spawn)?;
        tracing::info!(path = %path.display(), head, "opened event store");

        Ok(Self {
            inner: Arc::new(Inner {
                path: path.clone(),
                log_id,
                poll_interval: options.poll_interval,
                requests: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                closed: AtomicBool::new(false),
                reads: ReadPool::new(path, readers),
                head: head_rx,
                counters,
            }),
        })
    }

    /// Counters since open: appends, commits (fsync batches), events.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            appends: c.appends.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Highest position stored (0 for an empty log).
    pub async fn head(&self) -> Result<u64, mskflow_eventlog::Error> {
        self.inner.read(read::head_position).await
    }

    /// Every consumer's stored checkpoint, by name.
    pub async fn checkpoints(&self) -> Result<Vec<(String, u64)>, mskflow_eventlog::Error> {
        self.inner
            .read(|conn| {
                let mut stmt = conn
                    .prepare("SELECT consumer, position FROM checkpoints ORDER BY consumer")
                    .map_err(|e| unavailable("reading checkpoints", e))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .map_err(|e| unavailable("reading checkpoints", e))?;
                let mut out = Vec::new();
                for row in rows {
                    let (name, position) =
                        row.map_err(|e| unavailable("reading checkpoints", e))?;
                    out.push((name, u64::try_from(position).unwrap_or(0)));
                }
                Ok(out)
            })
            .await
    }

    /// How many events of each type are stored.
    pub async fn counts_by_type(&self) -> Result<Vec<(String, u64)>, mskflow_eventlog::Error> {
        self.inner
            .read(|conn| {
                let mut stmt = conn
                    .prepare("SELECT event_type, COUNT(*) FROM events GROUP BY event_type ORDER BY event_type")
                    .map_err(|e| unavailable("counting events", e))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .map_err(|e| unavailable("counting events", e))?;
                let mut out = Vec::new();
                for row in rows {
                    let (name, n) = row.map_err(|e| unavailable("counting events", e))?;
                    out.push((name, u64::try_from(n).unwrap_or(0)));
                }
                Ok(out)
            })
            .await
    }

    /// Set a consumer's checkpoint (0 makes it replay the whole log on its
    /// next start). Durable on return.
    pub async fn set_checkpoint(
        &self,
        consumer: &str,
        position: u64,
    ) -> Result<(), mskflow_eventlog::Error> {
        self.inner.checkpoint(consumer, position).await
    }

    /// Stop taking requests, let the writer commit what is queued, and wait
    /// for it to stop. Later calls on any clone fail with `Closed`.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Dropping the last sender ends the writer's loop once the queue is
        // empty. Requests already sent are still committed and answered.
        drop(lock(&self.inner.requests).take());
        let handle = lock(&self.inner.writer).take();
        if let Some(handle) = handle {
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!("event store writer panicked"),
                Err(e) => tracing::error!(error = %e, "waiting for the event store writer failed"),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Hand a request to the writer.
    fn send(&self, request: Request) -> Result<(), mskflow_eventlog::Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(mskflow_eventlog::Error::Closed);
        }
        let guard = lock(&self.requests);
        let sender = guard.as_ref().ok_or(mskflow_eventlog::Error::Closed)?;
        sender
            .send(request)
            .map_err(|_| mskflow_eventlog::Error::Closed)
    }

    /// Run a read on the pool, refusing once closed.
    async fn read<T, F>(&self, f: F) -> Result<T, mskflow_eventlog::Error>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, mskflow_eventlog::Error> + Send + 'static,
        T: Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(mskflow_eventlog::Error::Closed);
        }
        self.reads.run(f).await
    }

    /// Store a consumer's checkpoint through the writer (durable on return).
    async fn checkpoint(
        &self,
        consumer: &str,
        position: u64,
    ) -> Result<(), mskflow_eventlog::Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Checkpoint(CheckpointRequest {
            consumer: consumer.to_owned(),
            position,
            reply,
        }))?;
        answer
            .await
            .map_err(|e| unavailable("event store writer stopped", e))?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the writer after it drains its queue,
        // so that reopening the same file right away finds every append.
        drop(lock(&self.requests).take());
        if let Some(handle) = lock(&self.writer).take()
            && handle.join().is_err()
        {
            tracing::error!("event store writer panicked");
        }
    }
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, mskflow_eventlog::Error> {
        let (reply, answer) = oneshot::channel();
        self.inner.send(Request::Append(AppendRequest {
            stream_id: stream_id.to_owned(),
            expected,
            events,
            metadata: metadata.clone(),
            reply,
        }))?;
        answer
            .await
            .map_err(|e| unavailable("event store writer stopped", e))?
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_sequence: u64,
    ) -> Result<Vec<Envelope>, mskflow_eventlog::Error> {
        let Ok(from) = i64::try_from(from_sequence) else {
            return Ok(Vec::new());
        };
        let stream_id = stream_id.to_owned();
        self.inner
            .read(move |conn| {
                query_envelopes(
                    conn,
                    &format!(
                        "SELECT {ENVELOPE_COLUMNS} FROM events \
                         WHERE stream_id = ?1 AND sequence >= ?2 ORDER BY sequence"
                    ),
                    rusqlite::params![stream_id, from],
                )
            })
            .await
    }

    async fn subscribe(
        &self,
        consumer: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, mskflow_eventlog::Error> {
        let cursor = self.start_cursor(consumer, start).await?;
        tracing::debug!(consumer, cursor, "opened subscription");
        Ok(Box::new(SqliteSubscription::new(
            Arc::clone(&self.inner),
            consumer.to_owned(),
            cursor,
            None,
        )))
    }

    async fn subscribe_types(
        &self,
        consumer: &str,
        start: StartFrom,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, mskflow_eventlog::Error> {
        let cursor = self.start_cursor(consumer, start).await?;
        tracing::debug!(
            consumer,
            cursor,
            types = types.len(),
            "opened filtering subscription"
        );
        let types: Arc<[String]> = types.iter().map(|t| (*t).to_owned()).collect();
        Ok(Box::new(SqliteSubscription::new(
            Arc::clone(&self.inner),
            consumer.to_owned(),
            cursor,
            Some(types),
        )))
    }

    async fn ping(&self) -> Result<(), mskflow_eventlog::Error> {
        self.inner
            .read(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(|e| unavailable("ping", e))
            })
            .await
    }

    fn log_id(&self) -> Option<String> {
        Some(self.inner.log_id.clone())
    }
}
