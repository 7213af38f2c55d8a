//! Read models kept on disk, each with its checkpoint.
//!
//! A [`Projection`] folds events into tables of its own SQLite file
//! (`<dir>/<name>.db`). The [`Projector`] applies each batch of events and
//! moves the projection's checkpoint (the log position of the batch's last
//! event) **in one transaction**, so after a crash the state and the
//! checkpoint always agree: a restart resumes after the checkpoint and never
//! replays from zero. Queries read the stored state through a few read-only
//! connections, whose SQLite page caches are the bounded cache in front of
//! the tables; nothing holds every row in memory.
//!
//! The file is rebuilt from the log (deleted and replayed from the first
//! event), and the log says why, when:
//!
//! * the stored schema version differs from [`Projection::VERSION`] (the
//!   code's shape of the state changed);
//! * the log's identity ([`EventLog::log_id`]) differs from the one the
//!   checkpoint was read under (the event file or the Kafka index file was
//!   replaced), or the log has no stable positions;
//! * an operator asked for it ([`remove`], `mskflow replay --rebuild NAME`).
//!
//! Durability: the projection file runs `synchronous=NORMAL` in WAL mode.
//! A power cut can lose its last transactions, but never half of one, and
//! the checkpoint goes back with them: the events are replayed from the log,
//! which is the record.

pub mod columns;
mod pool;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mskflow_eventlog::{Envelope, EventLog, StartFrom, StoredEvent, Subscription};
pub use rusqlite;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction};
use tokio::sync::watch;

use crate::pool::ReadPool;

/// Where projections keep their files and how much each may cache.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of the projection files (`<dir>/<name>.db`).
    pub dir: PathBuf,
    /// SQLite page cache of the writing connection, in KiB.
    pub write_cache_kib: u32,
    /// SQLite page cache of each reading connection, in KiB.
    pub read_cache_kib: u32,
    /// Read-only connections per projection (at least 1).
    pub read_connections: usize,
    /// Most events applied in one transaction.
    pub batch: usize,
    /// Keeps a temporary directory alive while any copy of these options is.
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Options {
    /// Projections kept in `dir` (created if missing).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            write_cache_kib: 4096,
            read_cache_kib: 2048,
            read_connections: 2,
            batch: 2048,
            _temp: None,
        }
    }

    /// Projections in a new temporary directory, removed when the last copy
    /// of these options is dropped: they rebuild at every start.
    pub fn temporary() -> Result<Self, std::io::Error> {
        let temp = tempfile::Builder::new()
            .prefix("mskflow-projections-")
            .tempdir()?;
        let mut options = Self::in_dir(temp.path());
        options._temp = Some(Arc::new(temp));
        Ok(options)
    }

    /// The file of projection `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.db"))
    }
}

/// Failures of a projection's store or of the log under it.
///
/// They happen at start-up (the process reports them and exits non-zero) or
/// while following the log (the projector logs them, reports not-ready, and
/// retries). Reaching a request, a failed read is HTTP 503 with
/// OperationOutcome `transient` / gRPC `UNAVAILABLE`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The projection's file could not be opened, created or written.
    #[error("projection {name} ({path}): {context}: {source}")]
    Store {
        name: &'static str,
        path: PathBuf,
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The projection's directory or file could not be made or removed.
    #[error("projection {name} ({path}): {source}")]
    Io {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The event log could not be read.
    #[error("projection {name}: {source}")]
    Log {
        name: &'static str,
        #[source]
        source: mskflow_eventlog::Error,
    },
    /// A blocking task was cancelled or panicked (shutdown).
    #[error("projection {name}: {context}")]
    Stopped { name: &'static str, context: String },
}

impl Error {
    /// True when the failure is of the state store (the disk), not the log.
    pub fn is_store(&self) -> bool {
        matches!(self, Error::Store { .. } | Error::Io { .. })
    }
}

/// Why one event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event cannot be folded (undecodable payload, unknown shape): it is
    /// skipped, logged without its content and counted
    /// (`mskflow_projection_skipped_events_total`); the checkpoint moves on.
    #[error("event skipped: {0}")]
    Skip(String),
    /// The state store failed: the whole batch is rolled back and retried.
    #[error("state store: {0}")]
    Store(#[from] rusqlite::Error),
}

/// A read model folded from the log into tables of its own file.
///
/// `apply` must be deterministic and idempotent by construction of the
/// tables it writes (keys and upserts), so a rebuilt projection equals the
/// incrementally maintained one.
pub trait Projection: Send + 'static {
    /// The file name and the subscription's consumer name (`gateway-views`).
    const NAME: &'static str;
    /// The shape of the stored state. Change it whenever `SCHEMA` or what
    /// `apply` writes changes: a stored file of another version rebuilds.
    const VERSION: u32;
    /// SQL creating the projection's tables and indexes in a new file.
    const SCHEMA: &'static str;

    /// Whether the event concerns this projection, decided cheaply from the
    /// envelope's stream id and type (its payload may not be parsed yet:
    /// see [`Projection::apply_stored`]). Others only move the checkpoint.
    fn wants(&self, envelope: &Envelope) -> bool;

    /// The event types `wants` can accept, when it accepts only some: the
    /// log then leaves the others out where it stores them
    /// ([`EventLog::subscribe_types`]), so a rebuild reads and decodes only
    /// these. `None` (the default): every event is read.
    fn event_types(&self) -> Option<Vec<&'static str>> {
        None
    }

    /// Fold one event into the tables, inside the batch's transaction.
    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError>;

    /// Fold one event as the log handed it over, its payload possibly still
    /// the stored text: what the [`Projector`] calls. The default parses the
    /// payload (a payload that is not JSON is skipped) and calls
    /// [`Projection::apply`]; a projection that needs only a few fields of
    /// large payloads reads them from the text instead
    /// ([`StoredEvent::decode`], [`StoredEvent::read`]), and must fold
    /// exactly as `apply` does.
    fn apply_stored(
        &mut self,
        tx: &Transaction<'_>,
        event: &mut StoredEvent,
    ) -> Result<(), ApplyError> {
        let envelope = event
            .parse()
            .map_err(|e| ApplyError::Skip(mskflow_eventlog::json_error_reason(&e)))?;
        self.apply(tx, envelope)
    }

    /// Write whatever `apply` kept back for the batch (a write-behind of
    /// rows touched many times in one batch), inside its transaction, just
    /// before the checkpoint moves.
    fn flush(&mut self, _tx: &Transaction<'_>) -> rusqlite::Result<()> {
        Ok(())
    }

    /// The batch's transaction committed, up to log position `position`.
    /// Projections that keep something in memory (an overlay of writes not
    /// yet folded, a cache) settle it here.
    fn committed(&mut self, _position: u64) {}

    /// The batch's transaction was rolled back: forget whatever `apply`
    /// changed in memory since the last commit.
    fn rolled_back(&mut self) {}
}

/// Delete projection `name`'s file, so its next open rebuilds it from the
/// log. Only while no process has it open. Returns whether a file was there.
pub fn remove(options: &Options, name: &'static str) -> Result<bool, Error> {
    let path = options.path_of(name);
    let mut removed = false;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&file) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    name,
                    path: file,
                    source,
                });
            }
        }
    }
    Ok(removed)
}

/// What a projection's file holds, read without opening it for writing
/// (`mskflow status`): `None` when there is no file yet.
pub fn stored(options: &Options, name: &'static str) -> Result<Option<Stored>, Error> {
    let path = options.path_of(name);
    if !path.exists() {
        return Ok(None);
    }
    let store_err = |source| Error::Store {
        name,
        path: path.clone(),
        context: "reading its checkpoint",
        source,
    };
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(store_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(store_err)?;
    let size = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum();
    Ok(read_meta(&conn)
        .map_err(store_err)?
        .map(|(version, _, checkpoint)| Stored {
            version: u32::try_from(version).unwrap_or(0),
            checkpoint: u64::try_from(checkpoint).unwrap_or(0),
            bytes: size,
        }))
}

/// A projection file's version, checkpoint and size on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub version: u32,
    pub checkpoint: u64,
    /// The file and its write-ahead log.
    pub bytes: u64,
}

/// What opening found, for the start-up log line and the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The stored state was current: resumed after its checkpoint.
    Resumed { checkpoint: u64 },
    /// The state was (re)built from the first event, for this reason.
    Rebuilt { reason: String },
}

/// What a catch-up did.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUp {
    pub opened: Opened,
    /// Events of the log the catch-up went past: those it read, and those
    /// of other types the log left out ([`Projection::event_types`]).
    pub events: u64,
    /// Events the log returned (wanted or not).
    pub read: u64,
    /// Events the projection folded.
    pub applied: u64,
    pub elapsed: Duration,
}

impl CatchUp {
    /// Events read per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Writer<P> {
    conn: Connection,
    projection: P,
}

struct Inner<P: Projection> {
    path: PathBuf,
    writer: Mutex<Writer<P>>,
    reads: ReadPool,
    /// The log position of the last committed batch.
    applied: watch::Sender<u64>,
    ready: AtomicBool,
    skipped: AtomicU64,
    lag: AtomicU64,
    batch: usize,
}

/// A projection kept on disk and following the log. Clones share it.
pub struct Projector<P: Projection> {
    inner: Arc<Inner<P>>,
}

impl<P: Projection> Clone for Projector<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: Projection> std::fmt::Debug for Projector<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("name", &P::NAME)
            .field("path", &self.inner.path)
            .field("applied", &*self.inner.applied.borrow())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const META_SCHEMA: &str = "
CREATE TABLE projection_meta (
    version    INTEGER NOT NULL,
    log_id     TEXT,
    checkpoint INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);
";

/// The stored (version, log id, checkpoint), if the file has them.
fn read_meta(conn: &Connection) -> rusqlite::Result<Option<(i64, Option<String>, i64)>> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'projection_meta')",
        [],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    conn.query_row(
        "SELECT version, log_id, checkpoint FROM projection_meta LIMIT 1",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )
    .optional()
}

fn open_writer(path: &Path, cache_kib: u32) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Open or create the file, deciding whether its state can be resumed.
fn open_store<P: Projection>(
    options: &Options,
    log_id: Option<&str>,
) -> Result<(Connection, Opened), Error> {
    let path = options.path_of(P::NAME);
    let store_err = |context: &'static str| {
        let path = path.clone();
        move |source| Error::Store {
            name: P::NAME,
            path,
            context,
            source,
        }
    };
    std::fs::create_dir_all(&options.dir).map_err(|source| Error::Io {
        name: P::NAME,
        path: options.dir.clone(),
        source,
    })?;
    let conn = open_writer(&path, options.write_cache_kib).map_err(store_err("opening"))?;
    let reason = match read_meta(&conn).map_err(store_err("reading its version"))? {
        None => "new".to_owned(),
        Some((version, _, _)) if version != i64::from(P::VERSION) => format!(
            "stored schema version {version}, this build's is {}",
            P::VERSION
        ),
        Some(_) if log_id.is_none() => {
            "the event log has no stable positions (folded afresh at each start)".to_owned()
        }
        Some((_, stored, _)) if stored.as_deref() != log_id => {
            "the event log was replaced since its checkpoint".to_owned()
        }
        Some((_, _, checkpoint)) => {
            let checkpoint = u64::try_from(checkpoint).unwrap_or(0);
            return Ok((conn, Opened::Resumed { checkpoint }));
        }
    };
    drop(conn);
    remove(options, P::NAME)?;
    let mut conn = open_writer(&path, options.write_cache_kib).map_err(store_err("creating"))?;
    let tx = conn.transaction().map_err(store_err("creating"))?;
    tx.execute_batch(META_SCHEMA)
        .map_err(store_err("creating its tables"))?;
    tx.execute_batch(P::SCHEMA)
        .map_err(store_err("creating its tables"))?;
    tx.execute(
        "INSERT INTO projection_meta (version, log_id, checkpoint, updated_at) VALUES (?1, ?2, 0, ?3)",
        rusqlite::params![i64::from(P::VERSION), log_id, chrono::Utc::now().to_rfc3339()],
    )
    .map_err(store_err("creating its tables"))?;
    tx.commit().map_err(store_err("creating its tables"))?;
    if reason != "new" {
        metrics::counter!("mskflow_projection_rebuilds_total", "projection" => P::NAME)
            .increment(1);
    }
    Ok((conn, Opened::Rebuilt { reason }))
}

impl<P: Projection> Projector<P> {
    /// Open projection `projection` in `options.dir` over `log` and catch up
    /// with the log: from the stored checkpoint when the stored state is
    /// current, otherwise (logged, with the reason) from the first event.
    /// Returns the projector, ready, and the subscription to [`follow`] with.
    ///
    /// [`follow`]: Projector::follow
    pub async fn open(
        log: &Arc<dyn EventLog>,
        options: &Options,
        projection: P,
    ) -> Result<(Self, Following, CatchUp), Error> {
        let started = Instant::now();
        let log_id = log.log_id();
        let opts = options.clone();
        let (conn, opened) =
            blocking(P::NAME, move || open_store::<P>(&opts, log_id.as_deref())).await??;
        let path = options.path_of(P::NAME);
        let reads = ReadPool::open(
            &path,
            options.read_connections.max(1),
            options.read_cache_kib,
        )
        .map_err(|source| Error::Store {
            name: P::NAME,
            path: path.clone(),
            context: "opening its readers",
            source,
        })?;
        let checkpoint = match opened {
            Opened::Resumed { checkpoint } => checkpoint,
            Opened::Rebuilt { .. } => 0,
        };
        match &opened {
            Opened::Resumed { checkpoint } => {
                tracing::info!(
                    projection = P::NAME,
                    checkpoint,
                    "projection resumes after its checkpoint"
                );
            }
            Opened::Rebuilt { reason } if reason == "new" => {
                tracing::info!(
                    projection = P::NAME,
                    "projection built from the first event"
                );
            }
            Opened::Rebuilt { reason } => {
                tracing::warn!(projection = P::NAME, %reason, "projection rebuilding from the first event");
            }
        }
        let projector = Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Writer { conn, projection }),
                reads,
                applied: watch::channel(checkpoint).0,
                ready: AtomicBool::new(false),
                skipped: AtomicU64::new(0),
                lag: AtomicU64::new(0),
                batch: options.batch.max(1),
            }),
        };
        let types = lock(&projector.inner.writer).projection.event_types();
        let start = StartFrom::After(checkpoint);
        let subscribed = match &types {
            Some(types) => log.subscribe_types(P::NAME, start, types).await,
            None => log.subscribe(P::NAME, start).await,
        };
        let mut sub = subscribed.map_err(|source| Error::Log {
            name: P::NAME,
            source,
        })?;
        let mut read = 0_u64;
        let mut applied = 0_u64;
        // The next batch is read while the last one is stored: the log's
        // reads and the projection's writes run on two threads.
        let log_err = |source| Error::Log {
            name: P::NAME,
            source,
        };
        let mut batch = sub
            .poll_stored(projector.inner.batch)
            .await
            .map_err(log_err)?;
        let mut scanned = sub.scanned();
        while let Some(to) = read_to(&batch, scanned).filter(|to| *to > projector.applied()) {
            read += batch.len() as u64;
            let (stored, next) = tokio::join!(
                projector.apply_batch(std::mem::take(&mut batch), to),
                sub.poll_stored(projector.inner.batch)
            );
            applied += stored?;
            batch = next.map_err(log_err)?;
            scanned = sub.scanned();
        }
        let events = projector.applied().saturating_sub(checkpoint);
        projector.inner.ready.store(true, Ordering::Release);
        let catch_up = CatchUp {
            opened,
            events,
            read,
            applied,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            projection = P::NAME,
            events,
            read,
            applied,
            ms = catch_up.elapsed.as_millis() as u64,
            position = projector.applied(),
            "projection caught up with the log"
        );
        Ok((projector, Following { sub }, catch_up))
    }

    /// Apply one batch and checkpoint `last` (its last event's position, or
    /// further when the log read past events left out) in one transaction;
    /// returns how many events the projection folded.
    async fn apply_batch(&self, mut batch: Vec<StoredEvent>, last: u64) -> Result<u64, Error> {
        let inner = Arc::clone(&self.inner);
        let folded = blocking(P::NAME, move || {
            let mut guard = lock(&inner.writer);
            let Writer { conn, projection } = &mut *guard;
            let result = apply_in_tx(conn, projection, &mut batch, last, &inner.skipped);
            match result {
                Ok(folded) => {
                    projection.committed(last);
                    Ok(folded)
                }
                Err(source) => {
                    projection.rolled_back();
                    Err(Error::Store {
                        name: P::NAME,
                        path: inner.path.clone(),
                        context: "applying a batch",
                        source,
                    })
                }
            }
        })
        .await??;
        self.inner.applied.send_replace(last);
        metrics::gauge!("mskflow_projection_position", "projection" => P::NAME).set(last as f64);
        Ok(folded)
    }

    /// Follow the log until `shutdown` resolves. A batch that cannot be
    /// stored is retried (with back-off) until it is; meanwhile the
    /// projection reports not ready.
    pub async fn follow(
        &self,
        following: Following,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let Following { mut sub } = following;
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        let mut pending: Option<Vec<StoredEvent>> = None;
        loop {
            let batch = match pending.take() {
                Some(batch) => batch,
                None => tokio::select! {
                    () = &mut shutdown => return,
                    batch = sub.next_stored(self.inner.batch) => match batch {
                        Ok(batch) => batch,
                        Err(e) => {
                            self.inner.ready.store(false, Ordering::Release);
                            tracing::error!(projection = P::NAME, error = %e, "projection cannot read the event log; retrying");
                            tokio::select! {
                                () = &mut shutdown => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                },
            };
            let Some(last) = read_to(&batch, sub.scanned()) else {
                continue;
            };
            match self.apply_batch(batch.clone(), last).await {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.inner.ready.store(true, Ordering::Release);
                    if let Ok(lag) = sub.lag().await {
                        self.inner.lag.store(lag, Ordering::Relaxed);
                        metrics::gauge!("mskflow_projection_lag", "projection" => P::NAME)
                            .set(lag as f64);
                    }
                }
                Err(e) => {
                    self.inner.ready.store(false, Ordering::Release);
                    tracing::error!(projection = P::NAME, error = %e, "projection cannot store a batch; retrying it");
                    pending = Some(batch);
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Run a query on one of the read-only connections. It sees what the
    /// last committed batch left (never half a batch).
    pub async fn read<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(P::NAME, move || {
            inner.reads.with(f).map_err(|source| Error::Store {
                name: P::NAME,
                path: inner.path.clone(),
                context: "reading",
                source,
            })
        })
        .await?
    }

    /// Run `f` on the projection's in-memory part (overlays, caches), under
    /// the writer's lock: keep it short.
    pub fn with_projection<R>(&self, f: impl FnOnce(&mut P) -> R) -> R {
        f(&mut lock(&self.inner.writer).projection)
    }

    /// Wait until the projection has applied log position `position`, for
    /// at most `timeout`. Read-your-writes: an append's `Appended.position`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        let wait = rx.wait_for(|applied| *applied >= position);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// The log position of the last committed batch.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// True once caught up at start-up, false while the log or the store
    /// cannot be reached.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Events stored in the log but not yet applied, as of the last batch.
    pub fn lag(&self) -> u64 {
        self.inner.lag.load(Ordering::Relaxed)
    }

    /// Events that could not be applied (logged as errors).
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Every row of the projection's own tables, as text, sorted: two
    /// projections built from the same events dump the same.
    pub async fn dump(&self) -> Result<Dump, Error> {
        self.read(dump_tables).await
    }

    /// The projection's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Follow the log on a task of its own, until the returned handle is
    /// dropped (its owner goes away) or the runtime stops.
    pub fn spawn(&self, following: Following) -> FollowTask {
        let projector = self.clone();
        FollowTask(tokio::spawn(async move {
            projector.follow(following, std::future::pending()).await;
        }))
    }
}

/// A projector following the log on its own task; dropping it stops it.
/// A batch being stored when it stops is committed whole or not at all.
#[derive(Debug)]
pub struct FollowTask(tokio::task::JoinHandle<()>);

impl Drop for FollowTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A projection's tables: (table name, its rows as text, sorted).
pub type Dump = Vec<(String, Vec<String>)>;

fn dump_tables(conn: &Connection) -> rusqlite::Result<Dump> {
    use rusqlite::types::ValueRef;
    let mut names = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table'          AND name NOT IN ('projection_meta') AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names: Vec<String> = names
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\""))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query([])?;
        let mut lines = Vec::new();
        while let Some(row) = rows.next()? {
            let mut line = String::new();
            for i in 0..columns {
                if i > 0 {
                    line.push('|');
                }
                match row.get_ref(i)? {
                    ValueRef::Null => line.push_str("NULL"),
                    ValueRef::Integer(v) => line.push_str(&v.to_string()),
                    ValueRef::Real(v) => line.push_str(&v.to_string()),
                    ValueRef::Text(t) => line.push_str(&String::from_utf8_lossy(t)),
                    ValueRef::Blob(b) => {
                        for byte in b {
                            line.push_str(&format!("{byte:02x}"));
                        }
                    }
                }
            }
            lines.push(line);
        }
        lines.sort_unstable();
        out.push((name, lines));
    }
    Ok(out)
}

/// How far a batch takes the projection: its last event, or further when
/// the subscription read past events it left out (`scanned`, as it was
/// right after reading the batch). `None` for an empty batch that moved
/// nothing.
fn read_to(batch: &[StoredEvent], scanned: Option<u64>) -> Option<u64> {
    let last = batch.last().map(|e| e.envelope().position);
    match (last, scanned) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The subscription a [`Projector`] follows after its catch-up.
#[derive(Debug)]
pub struct Following {
    sub: Box<dyn Subscription>,
}

fn apply_in_tx<P: Projection>(
    conn: &mut Connection,
    projection: &mut P,
    batch: &mut [StoredEvent],
    last: u64,
    skipped: &AtomicU64,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut folded = 0_u64;
    for event in batch {
        if !projection.wants(event.envelope()) {
            continue;
        }
        match projection.apply_stored(&tx, event) {
            Ok(()) => folded += 1,
            Err(ApplyError::Skip(reason)) => {
                skipped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("mskflow_projection_skipped_events_total", "consumer" => P::NAME)
                    .increment(1);
                tracing::error!(
                    projection = P::NAME,
                    position = event.envelope().position,
                    event_type = %event.envelope().event_type,
                    %reason,
                    "event skipped by the projection"
                );
            }
            Err(ApplyError::Store(e)) => return Err(e),
        }
    }
    projection.flush(&tx)?;
    tx.prepare_cached("UPDATE projection_meta SET checkpoint = ?1, updated_at = ?2")?
        .execute(rusqlite::params![
            i64::try_from(last).unwrap_or(i64::MAX),
            chrono::Utc::now().to_rfc3339()
        ])?;
    tx.commit()?;
    Ok(folded)
}

async fn blocking<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Stopped {
            name,
            context: format!("blocking task failed: {e}"),
        })
}
