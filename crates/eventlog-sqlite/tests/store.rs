//! Appends, reads, concurrency and group commit against a real file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{TestResult, event, metadata, open, options};
use mskflow_eventlog::{Error, EventLog, ExpectedVersion, Metadata};
use mskflow_eventlog_sqlite::SqliteEventLog;

#[tokio::test]
async fn append_and_read_round_trip_every_field() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open(&dir)?;
    let meta = metadata();
    let events = vec![event(1), event(2), event(3)];
    let before = Utc::now();
    let appended = log
        .append(
            "referral-a",
            ExpectedVersion::NoStream,
            events.clone(),
            &meta,
        )
        .await?;
    let after = Utc::now();
    // Another stream in between, so positions and sequences differ.
    log.append(
        "referral-b",
        ExpectedVersion::NoStream,
        vec![event(9)],
        &Metadata::default(),
    )
    .await?;
    let more = log
        .append(
            "referral-a",
            ExpectedVersion::Exact(3),
            vec![event(4)],
            &meta,
        )
        .await?;

    let stored = log.read_stream("referral-a", 1).await?;
    assert_eq!(stored.len(), 4);
    assert_eq!(appended.version, 3);
    assert_eq!(appended.position, stored[2].position);
    assert_eq!(more.version, 4);
    assert_eq!(more.position, stored[3].position);
    for (i, (env, new)) in stored.iter().zip(&events).enumerate() {
        assert_eq!(env.event_id, new.event_id);
        assert_eq!(env.stream_id, "referral-a");
        assert_eq!(env.sequence, i as u64 + 1);
        assert_eq!(env.occurred_at, new.occurred_at);
        assert!(
            env.recorded_at >= before && env.recorded_at <= after,
            "recorded_at {}",
            env.recorded_at
        );
        assert_eq!(env.causation_id, meta.causation_id);
        assert_eq!(env.correlation_id, meta.correlation_id);
        assert_eq!(env.traceparent, meta.traceparent);
        assert_eq!(env.tracestate, meta.tracestate);
        assert_eq!(env.event_type, new.event_type);
        assert_eq!(env.schema_version, new.schema_version);
        assert_eq!(env.payload, new.payload);
    }
    assert!(stored.windows(2).all(|w| w[0].position < w[1].position));
    // The event of stream b sits between a's third and fourth.
    let b = log.read_stream("referral-b", 1).await?;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].causation_id, None);
    assert_eq!(b[0].traceparent, None);
    assert!(stored[2].position < b[0].position && b[0].position < stored[3].position);

    // Reading from a later sequence, and from past the end.
    let tail = log.read_stream("referral-a", 3).await?;
    assert_eq!(
        tail.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(log.read_stream("referral-a", 5).await?.is_empty());
    assert!(log.read_stream("no-such-stream", 1).await?.is_empty());
    log.ping().await?;
    log.close().await;
    Ok(())
}

#[tokio::test]
async fn stale_appends_are_refused_and_change_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open(&dir)?;
    let meta = metadata();
    log.append(
        "s",
        ExpectedVersion::NoStream,
        vec![event(1), event(2)],
        &meta,
    )
    .await?;
    let original = log.read_stream("s", 1).await?;

    let refused = log
        .append("s", ExpectedVersion::NoStream, vec![event(3)], &meta)
        .await;
    assert!(
        matches!(&refused, Err(Error::WrongExpectedVersion { stream_id, expected: ExpectedVersion::NoStream, actual: 2 }) if stream_id == "s"),
        "{refused:?}"
    );
    for wrong in [0, 1, 3, 17] {
        let refused = log
            .append("s", ExpectedVersion::Exact(wrong), vec![event(4)], &meta)
            .await;
        assert!(
            matches!(&refused, Err(Error::WrongExpectedVersion { expected: ExpectedVersion::Exact(w), actual: 2, .. }) if *w == wrong),
            "{refused:?}"
        );
    }
    let empty = log
        .append("s", ExpectedVersion::Exact(2), vec![], &meta)
        .await;
    assert!(
        matches!(empty, Err(Error::InvalidAppend { .. })),
        "{empty:?}"
    );
    let unnamed = log
        .append("", ExpectedVersion::Any, vec![event(5)], &meta)
        .await;
    assert!(
        matches!(unnamed, Err(Error::InvalidAppend { .. })),
        "{unnamed:?}"
    );

    assert_eq!(log.read_stream("s", 1).await?, original);
    assert_eq!(log.stats().appends, 1);

    // `Any` skips the check and continues the sequence.
    let any = log
        .append("s", ExpectedVersion::Any, vec![event(6)], &meta)
        .await?;
    assert_eq!(any.version, 3);
    log.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_of_fifty_concurrent_creators_wins() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = Arc::new(open(&dir)?);
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let log = Arc::clone(&log);
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            log.append(
                "contested",
                ExpectedVersion::NoStream,
                vec![event(i)],
                &Metadata::default(),
            )
            .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await? {
            Ok(appended) => {
                won += 1;
                assert_eq!(appended.version, 1);
            }
            Err(Error::WrongExpectedVersion { actual: 1, .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(log.read_stream("contested", 1).await?.len(), 1);
    log.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_appends_share_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = Arc::new(open(&dir)?);
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = Arc::clone(&log);
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            log.append(
                &format!("referral-{i}"),
                ExpectedVersion::NoStream,
                vec![event(i)],
                &Metadata::default(),
            )
            .await
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await??.position);
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 200, "every append got its own position");

    let stats = log.stats();
    assert_eq!(stats.appends, 200);
    assert_eq!(stats.events, 200);
    assert!(stats.commits < 200, "group commit: {stats:?}");
    assert!(stats.commits >= 1);
    eprintln!("200 concurrent appends took {} commits", stats.commits);
    log.close().await;
    Ok(())
}

/// Hold SQLite's write lock from a second connection so the writer stalls
/// on its first request while the next ones queue up behind it: they are
/// then committed together, in one batch.
fn hold_write_lock(path: &std::path::Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    Ok(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_isolates_refused_requests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let log = SqliteEventLog::open(options(&path))?;
    let meta = Metadata::default();

    let blocker = hold_write_lock(&path)?;
    let plug = {
        let log = log.clone();
        tokio::spawn(async move {
            log.append(
                "plug",
                ExpectedVersion::NoStream,
                vec![event(0)],
                &Metadata::default(),
            )
            .await
        })
    };
    // Let the writer take the plug and stall on the lock.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let shared = event(1);
    let mut repeated = event(2);
    repeated.event_id = shared.event_id;
    let spawn = |stream: &'static str, expected, events| {
        let log = log.clone();
        let meta = meta.clone();
        tokio::spawn(async move { log.append(stream, expected, events, &meta).await })
    };
    // Spawned one after another with pauses, so they queue in this order.
    let mut queued = Vec::new();
    for (stream, expected, events) in [
        ("first", ExpectedVersion::NoStream, vec![shared.clone()]),
        // Its second event reuses the id just appended: the whole request
        // goes, its first event included.
        ("dup", ExpectedVersion::NoStream, vec![event(3), repeated]),
        ("third", ExpectedVersion::NoStream, vec![event(4)]),
        // Two creators of one stream in the same batch: the second sees the
        // first's row; a follow-up with Exact(1) goes through.
        ("same", ExpectedVersion::NoStream, vec![event(5)]),
        ("same", ExpectedVersion::NoStream, vec![event(6)]),
        ("same", ExpectedVersion::Exact(1), vec![event(7)]),
        ("empty", ExpectedVersion::Any, vec![]),
    ] {
        queued.push(spawn(stream, expected, events));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let commits_before = log.stats().commits;
    blocker.execute_batch("COMMIT")?;
    drop(blocker);

    plug.await??;
    let mut results = Vec::new();
    for task in queued {
        results.push(task.await?);
    }
    assert_eq!(
        log.stats().commits - commits_before,
        2,
        "plug batch + one batch for the rest"
    );

    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(Error::DuplicateEvent { stream_id, event_id }) if stream_id == "dup" && *event_id == shared.event_id),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(
        matches!(&results[3], Ok(a) if a.version == 1),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(
            &results[4],
            Err(Error::WrongExpectedVersion { actual: 1, .. })
        ),
        "{:?}",
        results[4]
    );
    assert!(
        matches!(&results[5], Ok(a) if a.version == 2),
        "{:?}",
        results[5]
    );
    assert!(
        matches!(&results[6], Err(Error::InvalidAppend { .. })),
        "{:?}",
        results[6]
    );

    assert!(log.read_stream("dup", 1).await?.is_empty());
    assert_eq!(log.read_stream("first", 1).await?.len(), 1);
    assert_eq!(log.read_stream("third", 1).await?.len(), 1);
    let same = log.read_stream("same", 1).await?;
    assert_eq!(same.len(), 2);
    assert_eq!(same[1].sequence, 2);

    // A retried append (same id, later) is refused as a duplicate too.
    let retry = log
        .append("first", ExpectedVersion::Any, vec![shared.clone()], &meta)
        .await;
    assert!(
        matches!(retry, Err(Error::DuplicateEvent { .. })),
        "{retry:?}"
    );
    log.close().await;
    Ok(())
}

#[tokio::test]
async fn appends_survive_drop_without_close() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut ids = Vec::new();
    {
        let log = open(&dir)?;
        for i in 0..20u32 {
            let e = event(i);
            ids.push(e.event_id);
            log.append(
                &format!("s{}", i % 4),
                ExpectedVersion::Any,
                vec![e],
                &Metadata::default(),
            )
            .await?;
        }
        // Dropped here, never closed.
    }
    let log = open(&dir)?;
    let mut stored = Vec::new();
    for s in 0..4 {
        let stream = log.read_stream(&format!("s{s}"), 1).await?;
        assert_eq!(
            stream.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        stored.extend(stream.into_iter().map(|e| e.event_id));
    }
    stored.sort_unstable();
    ids.sort_unstable();
    assert_eq!(stored, ids);
    // Sequences continue after reopening.
    let next = log
        .append(
            "s0",
            ExpectedVersion::Exact(5),
            vec![event(99)],
            &Metadata::default(),
        )
        .await?;
    assert_eq!(next.version, 6);
    assert_eq!(log.stats().appends, 1, "stats count from open");
    Ok(())
}

#[tokio::test]
async fn closed_store_refuses_requests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open(&dir)?;
    log.append(
        "s",
        ExpectedVersion::NoStream,
        vec![event(1)],
        &Metadata::default(),
    )
    .await?;
    let clone = log.clone();
    log.close().await;
    let append = clone
        .append(
            "s",
            ExpectedVersion::Exact(1),
            vec![event(2)],
            &Metadata::default(),
        )
        .await;
    assert!(matches!(append, Err(Error::Closed)), "{append:?}");
    assert!(matches!(
        clone.read_stream("s", 1).await,
        Err(Error::Closed)
    ));
    assert!(matches!(clone.ping().await, Err(Error::Closed)));
    // Closing twice is harmless.
    clone.close().await;

    // What was acknowledged before close is there.
    let reopened = open(&dir)?;
    assert_eq!(reopened.read_stream("s", 1).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn newer_schema_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "user_version", 99)?;
    }
    let opened = SqliteEventLog::open(options(&path));
    assert!(
        matches!(
            opened,
            Err(mskflow_eventlog_sqlite::Error::UnsupportedSchema {
                found: 99,
                supported: 2,
                ..
            })
        ),
        "{opened:?}"
    );
    Ok(())
}

#[tokio::test]
async fn file_is_in_wal_mode_with_a_schema_version() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let log = SqliteEventLog::open(options(&path))?;
    log.append(
        "s",
        ExpectedVersion::NoStream,
        vec![event(1)],
        &Metadata::default(),
    )
    .await?;
    let conn = rusqlite::Connection::open(&path)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    assert_eq!(mode, "wal");
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    assert_eq!(version, 2);
    log.close().await;
    Ok(())
}

#[tokio::test]
async fn the_log_keeps_one_identity_for_its_lifetime() -> TestResult {
    use mskflow_eventlog::EventLog as _;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let first = SqliteEventLog::open(options(&path))?;
    let id = first.log_id();
    assert!(id.is_some());
    first.close().await;
    drop(first);
    let again = SqliteEventLog::open(options(&path))?;
    assert_eq!(again.log_id(), id, "reopening keeps the identity");
    again.close().await;
    drop(again);

    // A new file under the same name is another log.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let other = SqliteEventLog::open(options(&path))?;
    assert!(other.log_id().is_some());
    assert_ne!(other.log_id(), id);
    other.close().await;
    Ok(())
}

#[tokio::test]
async fn a_version_1_file_is_migrated_and_keeps_its_events() -> TestResult {
    use mskflow_eventlog::EventLog as _;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let log = SqliteEventLog::open(options(&path))?;
    log.append(
        "s",
        ExpectedVersion::NoStream,
        vec![event(1)],
        &Metadata::default(),
    )
    .await?;
    log.close().await;
    drop(log);
    // As a build before the identity was kept left it.
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch("DROP TABLE log_identity; PRAGMA user_version = 1;")?;
    }
    let log = SqliteEventLog::open(options(&path))?;
    assert!(log.log_id().is_some());
    assert_eq!(log.read_stream("s", 1).await?.len(), 1);
    log.close().await;
    Ok(())
}

#[tokio::test]
async fn undecodable_rows_are_reported_as_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let log = SqliteEventLog::open(options(&path))?;
    log.append(
        "good",
        ExpectedVersion::NoStream,
        vec![event(1)],
        &Metadata::default(),
    )
    .await?;
    // A row written by something other than this store.
    let position = {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute(
            "INSERT INTO events (event_id, stream_id, sequence, occurred_at, recorded_at, \
             correlation_id, event_type, schema_version, payload) \
             VALUES ('not-a-uuid', 'bad', 1, 'yesterday', 'today', 'x', 'T', 1, '{')",
            [],
        )?;
        conn.last_insert_rowid() as u64
    };
    let read = log.read_stream("bad", 1).await;
    assert!(
        matches!(&read, Err(Error::Corrupt { position: p, .. }) if *p == position),
        "{read:?}"
    );
    // Other streams still read fine.
    assert_eq!(log.read_stream("good", 1).await?.len(), 1);
    let mut sub = log
        .subscribe("reader", mskflow_eventlog::StartFrom::Beginning)
        .await?;
    assert_eq!(sub.next_batch(1).await?.len(), 1);
    let corrupt = sub.next_batch(1).await;
    assert!(matches!(corrupt, Err(Error::Corrupt { .. })), "{corrupt:?}");
    log.close().await;
    Ok(())
}
