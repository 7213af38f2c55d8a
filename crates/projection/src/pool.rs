//! A few read-only connections to a projection's file.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Read-only connections, each used by one blocking task at a time. A
/// caller takes the first free one, or waits for the first.
pub(crate) struct ReadPool {
    connections: Vec<Mutex<Connection>>,
}

impl ReadPool {
    pub(crate) fn open(path: &Path, count: usize, cache_kib: u32) -> rusqlite::Result<Self> {
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
            connections.push(Mutex::new(conn));
        }
        Ok(Self { connections })
    }

    /// Run `f` on a free connection (called on a blocking thread).
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        for slot in &self.connections {
            if let Ok(conn) = slot.try_lock() {
                return f(&conn);
            }
        }
        let conn = self.connections[0]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&conn)
    }
}
