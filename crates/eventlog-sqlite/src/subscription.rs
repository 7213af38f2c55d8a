//! Named consumers reading the whole log in position order.

use std::sync::Arc;

use async_trait::async_trait;
use mskflow_eventlog::{Envelope, Error, StoredEvent, Subscription};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::watch;

use crate::Inner;
use crate::read::{
    ENVELOPE_COLUMNS, decode_row, decode_row_unparsed, head_position, query_rows, unavailable,
};

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
    /// The event types returned (`None`: every event).
    types: Option<Arc<[String]>>,
}

impl std::fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscription")
            .field("consumer", &self.consumer)
            .field("cursor", &self.cursor)
            .field("committed", &self.committed)
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

impl SqliteSubscription {
    pub(crate) fn new(
        inner: Arc<Inner>,
        consumer: String,
        cursor: u64,
        types: Option<Arc<[String]>>,
    ) -> Self {
        let head = inner.head.clone();
        Self {
            inner,
            consumer,
            cursor,
            committed: cursor,
            head,
            types,
        }
    }

    /// Read up to `max` events after the cursor and move the cursor past
    /// them, each row decoded by `decode`. A `max` of 0 is taken as 1, so
    /// `next_batch` can keep its promise of never returning an empty batch.
    async fn fetch<T: Positioned + Send + 'static>(
        &mut self,
        max: usize,
        decode: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, Error>>,
    ) -> Result<Vec<T>, Error> {
        let after = i64::try_from(self.cursor).unwrap_or(i64::MAX);
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        if let Some(types) = self.types.clone() {
            let (batch, scanned) = self
                .inner
                .read(move |conn| fetch_types(conn, after, limit, &types, decode))
                .await?;
            self.cursor = self.cursor.max(scanned);
            return Ok(batch);
        }
        let batch = self
            .inner
            .read(move |conn| {
                query_rows(
                    conn,
                    &format!(
                        "SELECT {ENVELOPE_COLUMNS} FROM events \
                         WHERE position > ?1 ORDER BY position LIMIT ?2"
                    ),
                    rusqlite::params![after, limit],
                    decode,
                )
            })
            .await?;
        if let Some(last) = batch.last() {
            self.cursor = last.position();
        }
        Ok(batch)
    }

    /// Wait for the next events after the cursor, as [`Subscription::next_batch`].
    async fn next<T: Positioned + Send + 'static>(
        &mut self,
        max: usize,
        decode: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, Error>>,
    ) -> Result<Vec<T>, Error> {
        loop {
            // Mark the current head as seen before reading, so a commit that
            // lands after the read below still wakes the wait.
            self.head.borrow_and_update();
            let before = self.cursor;
            let batch = self.fetch(max, decode).await?;
            // A filtering subscription that read past events it leaves out
            // returns (empty) so the consumer can move its checkpoint.
            if !batch.is_empty() || self.cursor > before {
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
}

/// A decoded row's log position.
trait Positioned {
    fn position(&self) -> u64;
}

impl Positioned for Envelope {
    fn position(&self) -> u64 {
        self.position
    }
}

impl Positioned for StoredEvent {
    fn position(&self) -> u64 {
        self.envelope().position
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        self.next(max, decode_row).await
    }

    async fn poll_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        self.fetch(max, decode_row).await
    }

    /// The payloads stay the stored text.
    async fn next_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        self.next(max, decode_row_unparsed).await
    }

    /// The payloads stay the stored text.
    async fn poll_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        self.fetch(max, decode_row_unparsed).await
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

    fn scanned(&self) -> Option<u64> {
        self.types.as_ref().map(|_| self.cursor)
    }
}

/// Up to `limit` events of `types` after position `after`, and the position
/// read up to: the head as of the read when fewer than `limit` were found
/// (every event up to it was looked at), else the last one returned. Rows of
/// other types are passed over without decoding their payloads.
fn fetch_types<T: Positioned>(
    conn: &Connection,
    after: i64,
    limit: i64,
    types: &[String],
    decode: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, Error>>,
) -> Result<(Vec<T>, u64), Error> {
    // Every position up to the head is committed: there is one writer, and
    // its commits are in position order.
    let head = head_position(conn)?;
    let marks = vec!["?"; types.len()].join(", ");
    let sql = format!(
        "SELECT {ENVELOPE_COLUMNS} FROM events \
         WHERE position > ?1 AND position <= ?2 AND event_type IN ({marks}) \
         ORDER BY position LIMIT {limit}"
    );
    let head_param = i64::try_from(head).unwrap_or(i64::MAX);
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&after, &head_param];
    params.extend(types.iter().map(|t| t as &dyn rusqlite::ToSql));
    let batch = query_rows(conn, &sql, params.as_slice(), decode)?;
    let scanned = match batch.last() {
        Some(last) if batch.len() as i64 >= limit => last.position(),
        _ => head,
    };
    Ok((batch, scanned))
}
