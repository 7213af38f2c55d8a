//! A projection kept on disk over the real embedded store: resumed after
//! its checkpoint, rebuilt when its version or the log changes, batches
//! rolled back whole, undecodable events skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mskflow_eventlog::{Envelope, EventLog, ExpectedVersion, Metadata, NewEvent};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_projection::rusqlite::{Transaction, params};
use mskflow_projection::{ApplyError, Opened, Options, Projection, Projector};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Counts events per stream and sums their `n`.
#[derive(Debug, Default)]
struct Totals {
    /// Fail the next this-many applies with a store error.
    fail: Arc<AtomicUsize>,
}

const TOTALS_SCHEMA: &str = "
    CREATE TABLE totals (
        stream_id TEXT PRIMARY KEY,
        events    INTEGER NOT NULL,
        sum       INTEGER NOT NULL
    );
";

fn fold(tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
    let n = envelope
        .payload
        .get("n")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| ApplyError::Skip("no n".to_owned()))?;
    tx.prepare_cached(
        "INSERT INTO totals (stream_id, events, sum) VALUES (?1, 1, ?2) \
         ON CONFLICT (stream_id) DO UPDATE SET events = events + 1, sum = sum + ?2",
    )?
    .execute(params![envelope.stream_id, n])?;
    Ok(())
}

impl Projection for Totals {
    const NAME: &'static str = "totals";
    const VERSION: u32 = 1;
    const SCHEMA: &'static str = TOTALS_SCHEMA;

    fn wants(&self, envelope: &Envelope) -> bool {
        envelope.stream_id.starts_with("counter-")
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ApplyError::Store(
                mskflow_projection::rusqlite::Error::InvalidQuery,
            ));
        }
        fold(tx, envelope)
    }
}

/// The same projection at a later version of its stored shape.
#[derive(Debug, Default)]
struct TotalsV2;

impl Projection for TotalsV2 {
    const NAME: &'static str = "totals";
    const VERSION: u32 = 2;
    const SCHEMA: &'static str = TOTALS_SCHEMA;

    fn wants(&self, envelope: &Envelope) -> bool {
        envelope.stream_id.starts_with("counter-")
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        fold(tx, envelope)
    }
}

fn event(n: i64) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "Counted".to_owned(),
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        payload: serde_json::json!({ "n": n }),
    }
}

fn open_log(dir: &std::path::Path) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
    SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: dir.join("events.db"),
        ..Default::default()
    })
}

async fn append(log: &SqliteEventLog, stream: &str, values: &[i64]) -> TestResult {
    for &n in values {
        log.append(
            stream,
            ExpectedVersion::Any,
            vec![event(n)],
            &Metadata::default(),
        )
        .await?;
    }
    Ok(())
}

async fn dump<P: Projection>(
    projector: &Projector<P>,
) -> Result<Vec<(String, i64, i64)>, mskflow_projection::Error> {
    projector
        .read(|conn| {
            let mut stmt =
                conn.prepare("SELECT stream_id, events, sum FROM totals ORDER BY stream_id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
}

fn as_log(log: &SqliteEventLog) -> Arc<dyn EventLog> {
    Arc::new(log.clone())
}

#[tokio::test]
async fn a_restart_resumes_after_the_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options::in_dir(dir.path().join("projections"));
    let log = open_log(dir.path())?;
    append(&log, "counter-a", &[1, 2, 3]).await?;
    append(&log, "other-x", &[100]).await?;
    append(&log, "counter-b", &[10]).await?;

    let (projector, _following, catch_up) =
        Projector::open(&as_log(&log), &options, Totals::default()).await?;
    assert_eq!(
        catch_up.opened,
        Opened::Rebuilt {
            reason: "new".to_owned()
        }
    );
    assert_eq!((catch_up.events, catch_up.applied), (5, 4));
    assert_eq!(
        dump(&projector).await?,
        vec![
            ("counter-a".to_owned(), 3, 6),
            ("counter-b".to_owned(), 1, 10)
        ]
    );
    let checkpoint = projector.applied();
    drop(projector);

    append(&log, "counter-a", &[4]).await?;
    let (projector, _following, catch_up) =
        Projector::open(&as_log(&log), &options, Totals::default()).await?;
    assert_eq!(catch_up.opened, Opened::Resumed { checkpoint });
    // Only the event appended while it was closed is read again.
    assert_eq!((catch_up.events, catch_up.applied), (1, 1));
    assert_eq!(
        dump(&projector).await?,
        vec![
            ("counter-a".to_owned(), 4, 10),
            ("counter-b".to_owned(), 1, 10)
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_new_version_or_another_log_rebuilds_and_says_why() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options::in_dir(dir.path().join("projections"));
    let log = open_log(dir.path())?;
    append(&log, "counter-a", &[1, 2]).await?;
    let (v1, _f, _) = Projector::open(&as_log(&log), &options, Totals::default()).await?;
    let expected = dump(&v1).await?;
    drop(v1);

    let (v2, _f, catch_up) = Projector::open(&as_log(&log), &options, TotalsV2).await?;
    match &catch_up.opened {
        Opened::Rebuilt { reason } => assert!(reason.contains("schema version 1"), "{reason}"),
        other => panic!("expected a rebuild, got {other:?}"),
    }
    assert_eq!(catch_up.events, 2);
    assert_eq!(dump(&v2).await?, expected);
    drop(v2);

    // The event file is replaced by a new one: the stored checkpoint means
    // nothing there.
    log.close().await;
    drop(log);
    for name in ["events.db", "events.db-wal", "events.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let log = open_log(dir.path())?;
    append(&log, "counter-z", &[7]).await?;
    let (v2, _f, catch_up) = Projector::open(&as_log(&log), &options, TotalsV2).await?;
    match &catch_up.opened {
        Opened::Rebuilt { reason } => assert!(reason.contains("replaced"), "{reason}"),
        other => panic!("expected a rebuild, got {other:?}"),
    }
    assert_eq!(dump(&v2).await?, vec![("counter-z".to_owned(), 1, 7)]);
    Ok(())
}

#[tokio::test]
async fn a_failed_batch_is_rolled_back_whole_and_retried() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut options = Options::in_dir(dir.path().join("projections"));
    options.batch = 100;
    let log = open_log(dir.path())?;
    let fail = Arc::new(AtomicUsize::new(0));
    let (projector, following, _) = Projector::open(
        &as_log(&log),
        &options,
        Totals {
            fail: Arc::clone(&fail),
        },
    )
    .await?;
    let _task = projector.spawn(following);

    // One apply fails with a store error: nothing of its batch may stay,
    // and the retry must not count any event of it twice.
    let before = projector.applied();
    log.append(
        "counter-a",
        ExpectedVersion::Any,
        vec![event(1), event(2), event(3)],
        &Metadata::default(),
    )
    .await?;
    fail.store(1, Ordering::SeqCst);
    let appended = log
        .append(
            "counter-a",
            ExpectedVersion::Any,
            vec![event(4)],
            &Metadata::default(),
        )
        .await?;
    assert!(
        projector
            .wait_for(appended.position, Duration::from_secs(10))
            .await,
        "the projection never caught up after a failed batch (applied {} of {})",
        projector.applied(),
        appended.position
    );
    assert!(projector.applied() > before);
    assert_eq!(
        dump(&projector).await?,
        vec![("counter-a".to_owned(), 4, 10)]
    );
    assert_eq!(fail.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn an_undecodable_event_is_skipped_and_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options::in_dir(dir.path().join("projections"));
    let log = open_log(dir.path())?;
    append(&log, "counter-a", &[5]).await?;
    let mut bad = event(0);
    bad.payload = serde_json::json!({ "not": "a count" });
    log.append(
        "counter-a",
        ExpectedVersion::Any,
        vec![bad],
        &Metadata::default(),
    )
    .await?;
    append(&log, "counter-a", &[6]).await?;
    let (projector, _f, catch_up) =
        Projector::open(&as_log(&log), &options, Totals::default()).await?;
    assert_eq!(catch_up.applied, 2);
    assert_eq!(projector.skipped(), 1);
    assert_eq!(
        dump(&projector).await?,
        vec![("counter-a".to_owned(), 2, 11)]
    );
    Ok(())
}

#[tokio::test]
async fn removing_the_file_rebuilds_the_same_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = Options::in_dir(dir.path().join("projections"));
    let log = open_log(dir.path())?;
    let (projector, following, _) =
        Projector::open(&as_log(&log), &options, Totals::default()).await?;
    let task = projector.spawn(following);
    // Built incrementally, batch by batch, while events arrive.
    let mut last = 0;
    for i in 0..200_i64 {
        let appended = log
            .append(
                &format!("counter-{}", i % 7),
                ExpectedVersion::Any,
                vec![event(i)],
                &Metadata::default(),
            )
            .await?;
        last = appended.position;
    }
    assert!(projector.wait_for(last, Duration::from_secs(10)).await);
    let incremental = dump(&projector).await?;
    drop(task);
    drop(projector);

    assert!(mskflow_projection::remove(&options, "totals")?);
    let (rebuilt, _f, catch_up) =
        Projector::open(&as_log(&log), &options, Totals::default()).await?;
    assert_eq!(
        catch_up.opened,
        Opened::Rebuilt {
            reason: "new".to_owned()
        }
    );
    assert_eq!(dump(&rebuilt).await?, incremental);
    assert_eq!(incremental.len(), 7);
    Ok(())
}

/// Totals that name the one event type they fold, so the store leaves the
/// others out.
#[derive(Debug, Default)]
struct CountedOnly;

impl Projection for CountedOnly {
    const NAME: &'static str = "counted-only";
    const VERSION: u32 = 1;
    const SCHEMA: &'static str = TOTALS_SCHEMA;

    fn wants(&self, envelope: &Envelope) -> bool {
        envelope.event_type == "Counted"
    }

    fn event_types(&self) -> Option<Vec<&'static str>> {
        Some(vec!["Counted"])
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        fold(tx, envelope)
    }
}

async fn append_other(log: &SqliteEventLog, stream: &str, count: usize) -> TestResult {
    for _ in 0..count {
        let mut e = event(0);
        e.event_type = "Ignored".to_owned();
        log.append(stream, ExpectedVersion::Any, vec![e], &Metadata::default())
            .await?;
    }
    Ok(())
}

/// A projection naming its event types reads only those, yet its checkpoint
/// and `wait_for` move past the events left out: a restart does not read
/// them again, and a caller waiting for the position of an event the
/// projection does not fold is answered at once.
#[tokio::test]
async fn events_left_out_by_type_still_move_the_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut options = Options::in_dir(dir.path().join("projections"));
    options.batch = 4;
    let log = open_log(dir.path())?;
    append(&log, "counter-a", &[1, 2]).await?;
    append_other(&log, "other-x", 9).await?;
    append(&log, "counter-a", &[3]).await?;
    append_other(&log, "other-x", 5).await?;
    let head = 2 + 9 + 1 + 5;

    let (projector, following, catch_up) =
        Projector::open(&as_log(&log), &options, CountedOnly).await?;
    assert_eq!(catch_up.applied, 3, "{catch_up:?}");
    assert_eq!(
        catch_up.read, 3,
        "only the wanted events are read: {catch_up:?}"
    );
    assert_eq!(catch_up.events, head, "{catch_up:?}");
    assert_eq!(
        projector.applied(),
        head,
        "the checkpoint passed the tail left out"
    );
    assert_eq!(
        dump(&projector).await?,
        vec![("counter-a".to_owned(), 3, 6)]
    );

    // Following: an event left out moves the position too.
    let _task = projector.spawn(following);
    append_other(&log, "other-x", 1).await?;
    assert!(
        projector.wait_for(head + 1, Duration::from_secs(5)).await,
        "waiting for an event left out ends once the log is read past it"
    );
    append(&log, "counter-b", &[10]).await?;
    assert!(projector.wait_for(head + 2, Duration::from_secs(5)).await);
    assert_eq!(
        dump(&projector).await?,
        vec![
            ("counter-a".to_owned(), 3, 6),
            ("counter-b".to_owned(), 1, 10)
        ]
    );
    drop(_task);
    drop(projector);

    // A restart resumes after the stored checkpoint: nothing is read again.
    append_other(&log, "other-x", 3).await?;
    let (again, _following, catch_up) =
        Projector::open(&as_log(&log), &options, CountedOnly).await?;
    assert_eq!(
        catch_up.opened,
        Opened::Resumed {
            checkpoint: head + 2
        }
    );
    assert_eq!(catch_up.applied, 0, "{catch_up:?}");
    assert_eq!((catch_up.read, catch_up.events), (0, 3), "{catch_up:?}");
    assert_eq!(again.applied(), head + 5);
    Ok(())
}
