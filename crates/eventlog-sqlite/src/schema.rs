//! Opening connections and migrating the schema.
//!
//! The schema version lives in SQLite's `user_version` pragma. Version 0 is a
//! new, empty file; each migration step moves it forward by one inside the
//! same transaction as its DDL, so a crash mid-migration leaves the old
//! version in place.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::Error;

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// How long a connection waits for another connection's (or process's) lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const MIGRATION_1: &str = "
CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 1),
    occurred_at    TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    causation_id   TEXT,
    correlation_id TEXT    NOT NULL,
    traceparent    TEXT,
    tracestate     TEXT,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    UNIQUE (stream_id, sequence)
);
CREATE TABLE checkpoints (
    consumer   TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);
";

/// Version 2: the log's identity (`EventLog::log_id`), a random UUID made
/// once per file, so that projections kept beside the file can tell that a
/// stored checkpoint was read from this very log and not from one deleted
/// and started anew under the same name.
const MIGRATION_2: &str = "
CREATE TABLE log_identity (
    id         TEXT NOT NULL,
    created_at TEXT NOT NULL
);
";

/// The log's identity, made by migration 2.
pub(crate) fn log_id(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("SELECT id FROM log_identity LIMIT 1", [], |row| row.get(0))
}

/// Open the single read-write connection: WAL, `synchronous=FULL`, migrated.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, Error> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    // FULL: every commit fsyncs the WAL, so an acknowledged append survives
    // power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Open one read-only connection for the read pool.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let migrate_err = |source| Error::Migrate {
        path: path.to_path_buf(),
        source,
    };
    // IMMEDIATE: two processes opening a new file at once must not both
    // create the tables.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(migrate_err)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(migrate_err)?;
    if found > SCHEMA_VERSION {
        return Err(Error::UnsupportedSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        tx.execute_batch(MIGRATION_1).map_err(migrate_err)?;
    }
    if found < 2 {
        tx.execute_batch(MIGRATION_2).map_err(migrate_err)?;
        tx.execute(
            "INSERT INTO log_identity (id, created_at) VALUES (?1, ?2)",
            rusqlite::params![
                uuid::Uuid::new_v4().to_string(),
                chrono::Utc::now().to_rfc3339()
            ],
        )
        .map_err(migrate_err)?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(migrate_err)?;
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "migrated event store schema"
        );
    }
    tx.commit().map_err(migrate_err)
}
