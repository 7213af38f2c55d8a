//! Named consumers reading the whole log in position order.

use std::sync::Arc;

use async_trait::async_trait;
use mskflow_eventlog::{Envelope, Error, Subscription};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::watch;

use crate::Inner;
use crate::read::{ENVELOPE_COLUMNS, head_position, query_envelopes, unavailable};

/// The stored checkpoint of `consumer`, 0 if it has none.
pub(crate) fn stored_checkpoint(conn: &Connection, consumer: &str) -> Result<u64, Error> {
    let position: Option<i64> = conn
        .query_row(
            "SELECT position FROM checkpoints WHERE consumer = ?1",
            [consumer],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| unavailable(format!("reading checkpoint of {consumer}"), e))?;
    let position = position.unwrap_or(0);
    u64::try_from(position).map_err(|_| Error::Corrupt {
        position: 0,
        reason: format!("checkpoint of {consumer} is negative ({position})"),
    })
}

/// A subscription over the embedded store.
///
/// It remembers the position of the last event it returned (`cursor`) and
/// the last position it stored (`committed`). Waiting is driven by the head
/// position the writer publishes after each commit, with a periodic poll as
/// a fallback for writes made by another process on the same file.
pub(crate) struct SqliteSubscription {
    inner: Arc<Inner>,
    consumer: String,
    cursor: u64,
    committed: u64,
    head: watch::Receiver<u64>,
}

impl std::fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscription")
            .field("consumer", &self.consumer)
            .field("cursor", &self.cursor)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl SqliteSubscription {
    pub(crate) fn new(inner: Arc<Inner>, consumer: String, cursor: u64) -> Self {
        let head = inner.head.clone();
        Self {
            inner,
            consumer,
            cursor,
            committed: cursor,
            head,
        }
    }

    /// Read up to `max` events after the cursor and move the cursor past
    /// them. A `max` of 0 is taken as 1, so `next_batch` can keep its promise
    /// of never returning an empty batch.
    async fn fetch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        let after = i64::try_from(self.cursor).unwrap_or(i64::MAX);
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let batch = self
            .inner
            .read(move |conn| {
                query_envelopes(
                    conn,
                    &format!(
                        "SELECT {ENVELOPE_COLUMNS} FROM events \
                         WHERE position > ?1 ORDER BY position LIMIT ?2"
                    ),
                    rusqlite::params![after, limit],
                )
            })
            .await?;
        if let Some(last) = batch.last() {
            self.cursor = last.position;
        }
        Ok(batch)
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        loop {
            // Mark the current head as seen before reading, so a commit that
            // lands after the read below still wakes the wait.
            self.head.borrow_and_update();
            let batch = self.fetch(max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                changed = self.head.changed() => {
                    // The writer is gone: the store was closed.
                    if changed.is_err() {
                        return Err(Error::Closed);
                    }
                }
                () = tokio::time::sleep(self.inner.poll_interval) => {}
            }
        }
    }

    async fn poll_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        self.fetch(max).await
    }

    async fn commit(&mut self) -> Result<(), Error> {
        if self.cursor == self.committed {
            return Ok(());
        }
        self.inner.checkpoint(&self.consumer, self.cursor).await?;
        self.committed = self.cursor;
        Ok(())
    }

    async fn lag(&self) -> Result<u64, Error> {
        let head = self.inner.read(head_position).await?;
        Ok(head.saturating_sub(self.cursor))
    }
}
