//! The subscriptions' state across a restart and a redelivery.

use std::sync::Arc;

use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, StartFrom, new_event};
use mskflow_events::subscription::{
    SubscriptionCreated, SubscriptionDeleted, SubscriptionEvent, stream_id,
};
use uuid::Uuid;

use super::State;
use crate::subscription::Handshake;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn open_log(dir: &std::path::Path) -> Result<Arc<dyn EventLog>, Box<dyn std::error::Error>> {
    Ok(Arc::new(mskflow_eventlog_sqlite::SqliteEventLog::open(
        mskflow_eventlog_sqlite::Options {
            path: dir.join("events.db"),
            ..mskflow_eventlog_sqlite::Options::default()
        },
    )?))
}

async fn append(
    log: &dyn EventLog,
    event: &SubscriptionEvent,
    id: Uuid,
) -> Result<mskflow_eventlog::Envelope, Box<dyn std::error::Error>> {
    let new = new_event(event, 1, chrono::Utc::now())?;
    log.append(
        &stream_id(id),
        ExpectedVersion::Any,
        vec![new],
        &Metadata::default(),
    )
    .await?;
    let last = log.read_stream(&stream_id(id), 1).await?;
    Ok(last.last().cloned().ok_or("appended")?)
}

#[tokio::test]
async fn counters_go_on_across_a_restart_and_a_redelivery() -> TestResult {
    let dir = tempfile::tempdir()?;
    let log = open_log(dir.path())?;
    let options = mskflow_projection::Options::in_dir(dir.path().join("projections"));
    let id = Uuid::new_v4();
    let created = append(
        log.as_ref(),
        &SubscriptionEvent::SubscriptionCreated(SubscriptionCreated {
            subscription_id: id,
            owner_ods: "A81001".to_owned(),
            client_id: "gp".to_owned(),
            topic: crate::subscription::TOPIC.to_owned(),
            endpoint: "https://gp.example/notify".to_owned(),
            payload_content: "id-only".to_owned(),
            filter: None,
            reason: None,
        }),
        id,
    )
    .await?;
    let (e1, e2, e3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let p = created.position;
    {
        let (mut state, start) = State::open(log.as_ref(), Some(options.clone())).await?;
        assert_eq!(start, StartFrom::Beginning, "a new file is a rebuild");
        state.apply(&created).await?;
        state.apply(&created).await?;
        state.settle_handshake(id, Handshake::Active).await?;
        assert_eq!(state.number(id, p + 10, e1).await?, Some(1));
        assert_eq!(state.number(id, p + 10, e1).await?, Some(1), "a retry");
        assert_eq!(state.number(id, p + 12, e2).await?, Some(2));
    }
    // Restarted: resumed after the checkpoint, which is behind the file
    // (the events at p+10 and p+12 are delivered again).
    let (mut state, start) = State::open(log.as_ref(), Some(options.clone())).await?;
    assert_eq!(start, StartFrom::Checkpoint);
    let tracked = state.get(&id).ok_or("kept")?.clone();
    assert_eq!(tracked.handshake, Some(Handshake::Active));
    assert_eq!(tracked.view.owner_ods, "A81001");
    assert_eq!(tracked.created, p);
    state.apply(&created).await?;
    assert_eq!(
        state.number(id, p + 10, e1).await?,
        None,
        "handled whole before the restart"
    );
    assert_eq!(
        state.number(id, p + 12, e2).await?,
        Some(2),
        "the same number"
    );
    assert_eq!(state.number(id, p + 15, e3).await?, Some(3), "no gap");
    assert!(state.get(&id).ok_or("kept")?.active_at(p + 1));
    let deleted = append(
        log.as_ref(),
        &SubscriptionEvent::SubscriptionDeleted(SubscriptionDeleted {
            subscription_id: id,
            client_id: "gp".to_owned(),
        }),
        id,
    )
    .await?;
    state.apply(&deleted).await?;
    let tracked = state.get(&id).ok_or("kept")?;
    assert!(!tracked.active_at(deleted.position));
    assert!(!tracked.active_at(p), "not before its creation");
    drop(state);

    // Another event log under the same state directory: rebuilt, empty.
    let other = tempfile::tempdir()?;
    let other_log = open_log(other.path())?;
    let (state, start) = State::open(other_log.as_ref(), Some(options)).await?;
    assert_eq!(start, StartFrom::Beginning);
    assert_eq!(state.subscriptions().count(), 0);
    Ok(())
}
