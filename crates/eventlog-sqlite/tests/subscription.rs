//! Subscriptions: order, checkpoints across reopen, at-least-once, wake-up.

mod common;

use std::time::Duration;

use common::{PATIENCE, TestResult, event, open, options};
use mskflow_eventlog::{Error, EventLog, ExpectedVersion, Metadata, StartFrom};
use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
use uuid::Uuid;

async fn append_n(log: &SqliteEventLog, from: u32, n: u32) -> Result<Vec<Uuid>, Error> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let e = event(i);
        ids.push(e.event_id);
        log.append(
            &format!("stream-{}", i % 3),
            ExpectedVersion::Any,
            vec![e],
            &Metadata::default(),
        )
        .await?;
    }
    Ok(ids)
}

#[tokio::test]
async fn checkpoint_survives_reopen_and_uncommitted_consumers_see_events_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first_ids;
    {
        let log = open(&dir)?;
        first_ids = append_n(&log, 0, 5).await?;

        let mut committed = log.subscribe("projection", StartFrom::Checkpoint).await?;
        assert_eq!(committed.lag().await?, 5);
        let batch = committed.next_batch(100).await?;
        assert_eq!(
            batch.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            first_ids
        );
        assert!(batch.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(committed.lag().await?, 0);
        assert!(committed.poll_batch(100).await?.is_empty());
        committed.commit().await?;
        assert_eq!(log.stats().checkpoints, 1);
        // Nothing new returned: a second commit does not write.
        committed.commit().await?;
        assert_eq!(log.stats().checkpoints, 1);

        // Reads in small batches, never commits.
        let mut lazy = log.subscribe("lazy", StartFrom::Checkpoint).await?;
        assert_eq!(lazy.next_batch(2).await?.len(), 2);
        assert_eq!(lazy.next_batch(2).await?.len(), 2);
        assert_eq!(lazy.next_batch(2).await?.len(), 1);
        drop((committed, lazy));
        drop(log);
    }

    let log = open(&dir)?;
    let new_ids = append_n(&log, 5, 2).await?;

    let mut resumed = log.subscribe("projection", StartFrom::Checkpoint).await?;
    assert_eq!(resumed.lag().await?, 2);
    let batch = resumed.next_batch(100).await?;
    assert_eq!(
        batch.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        new_ids
    );
    assert!(resumed.poll_batch(100).await?.is_empty());

    let mut lazy = log.subscribe("lazy", StartFrom::Checkpoint).await?;
    let again = lazy.next_batch(100).await?;
    let all: Vec<Uuid> = first_ids.iter().chain(&new_ids).copied().collect();
    assert_eq!(again.iter().map(|e| e.event_id).collect::<Vec<_>>(), all);

    // Replay ignores the checkpoint...
    let mut replay = log.subscribe("projection", StartFrom::Beginning).await?;
    assert_eq!(replay.next_batch(100).await?.len(), 7);
    // ...and its commit still stores where it got to.
    replay.commit().await?;
    let mut after_replay = log.subscribe("projection", StartFrom::Checkpoint).await?;
    assert!(after_replay.poll_batch(100).await?.is_empty());
    log.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_batch_wakes_on_append() -> TestResult {
    let dir = tempfile::tempdir()?;
    // A poll interval far longer than the test: only the writer's wake-up
    // can end the wait in time.
    let log = SqliteEventLog::open(Options {
        poll_interval: Duration::from_secs(3600),
        ..options(&dir.path().join("events.db"))
    })?;
    let mut sub = log.subscribe("waiter", StartFrom::Beginning).await?;
    let waiting = tokio::spawn(async move {
        let batch = sub.next_batch(10).await;
        (sub, batch)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "next_batch must wait while the log is empty"
    );

    let e = event(1);
    let id = e.event_id;
    log.append(
        "s",
        ExpectedVersion::NoStream,
        vec![e],
        &Metadata::default(),
    )
    .await?;
    let (_sub, batch) = tokio::time::timeout(PATIENCE, waiting).await??;
    let batch = batch?;
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].event_id, id);
    log.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_batch_sees_writes_of_another_handle_by_polling() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let reader = SqliteEventLog::open(Options {
        poll_interval: Duration::from_millis(50),
        ..options(&path)
    })?;
    // A second, independent store on the same file stands in for another
    // process: its commits do not notify `reader`.
    let other = SqliteEventLog::open(options(&path))?;

    let mut sub = reader.subscribe("remote", StartFrom::Checkpoint).await?;
    let waiting = tokio::spawn(async move { sub.next_batch(10).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    other
        .append(
            "s",
            ExpectedVersion::NoStream,
            vec![event(1), event(2)],
            &Metadata::default(),
        )
        .await?;
    let batch = tokio::time::timeout(PATIENCE, waiting).await???;
    assert_eq!(
        batch.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2]
    );

    // Both writers share the position sequence and the concurrency check.
    reader
        .append(
            "s",
            ExpectedVersion::Exact(2),
            vec![event(3)],
            &Metadata::default(),
        )
        .await?;
    let stale = other
        .append(
            "s",
            ExpectedVersion::Exact(2),
            vec![event(4)],
            &Metadata::default(),
        )
        .await;
    assert!(
        matches!(stale, Err(Error::WrongExpectedVersion { actual: 3, .. })),
        "{stale:?}"
    );
    other.close().await;
    reader.close().await;
    Ok(())
}

#[tokio::test]
async fn subscription_reports_closed_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open(&dir)?;
    log.append(
        "s",
        ExpectedVersion::NoStream,
        vec![event(1)],
        &Metadata::default(),
    )
    .await?;
    let mut sub = log.subscribe("c", StartFrom::Beginning).await?;
    assert_eq!(sub.next_batch(10).await?.len(), 1);
    log.close().await;
    let next = tokio::time::timeout(PATIENCE, sub.next_batch(10)).await?;
    assert!(matches!(next, Err(Error::Closed)), "{next:?}");
    assert!(matches!(sub.commit().await, Err(Error::Closed)));
    assert!(matches!(
        log.subscribe("d", StartFrom::Checkpoint).await,
        Err(Error::Closed)
    ));
    Ok(())
}
