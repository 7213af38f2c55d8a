//! The intake application service over the real embedded SQLite store.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use common::{TestResult, as_log, count_events, open_store, referral};
use mskflow_eventlog::{
    Appended, Envelope, EventLog, ExpectedVersion, Metadata, NewEvent, StartFrom, Subscription,
};
use mskflow_events::IntakeEvent;
use mskflow_events::types::{FcpPriority, Pathway, RedFlag, RedirectDestination};
use mskflow_intake::service::stream_id;
use mskflow_intake::{Intake, Rejection, RuleSet, Status, SystemClock};
use uuid::Uuid;

/// Intake over `log`, its duplicate index kept under `dir`.
async fn open_intake(
    log: Arc<dyn EventLog>,
    dir: &std::path::Path,
) -> Result<Intake, mskflow_intake::Error> {
    Intake::open(
        log,
        Arc::new(RuleSet::default_rules()?),
        Arc::new(SystemClock),
        &mskflow_projection::Options::in_dir(dir.join("projections")),
    )
    .await
}

#[tokio::test]
async fn submit_records_two_durable_events_with_metadata() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let intake = open_intake(as_log(&store), dir.path()).await?;
    let (request_id, correlation_id) = (Uuid::new_v4(), Uuid::new_v4());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();

    let submitted = intake
        .submit(
            request_id,
            correlation_id,
            Some(traceparent.clone()),
            referral("R-1")?,
        )
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    assert_eq!(submitted.version, 2);
    assert_eq!(submitted.state.status, Some(Status::Triaged));
    assert_eq!(submitted.state.pathway, Some(Pathway::Knee));
    assert_eq!(submitted.state.priority, Some(FcpPriority::Routine));
    assert_eq!(submitted.state.rule_set_version.as_deref(), Some("2026.1"));
    store.close().await;

    // Durable: a fresh handle on the same file sees both events.
    let store = open_store(dir.path())?;
    let events = store
        .read_stream(&stream_id(submitted.referral_id), 1)
        .await?;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["ReferralReceived", "ReferralTriaged"]);
    for e in &events {
        assert_eq!(e.correlation_id, correlation_id);
        assert_eq!(e.causation_id, Some(request_id));
        assert_eq!(e.traceparent.as_deref(), Some(traceparent.as_str()));
        assert_eq!(e.schema_version, mskflow_events::SCHEMA_VERSION);
    }
    match mskflow_eventlog::decode::<IntakeEvent>(&events[0])? {
        IntakeEvent::ReferralReceived(r) => {
            assert_eq!(r.referral_id, submitted.referral_id);
            assert_eq!(r.request_id, request_id);
            assert_eq!(r.referral, referral("R-1")?);
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }

    // And the service reads the state back.
    let intake = open_intake(as_log(&store), dir.path()).await?;
    let state = intake
        .get(submitted.referral_id)
        .await?
        .ok_or("referral not found")?;
    assert_eq!(state, submitted.state);
    assert_eq!(intake.get(Uuid::new_v4()).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_red_flag_referral_is_redirected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let intake = open_intake(as_log(&store), dir.path()).await?;
    let mut details = referral("R-CES")?;
    details.red_flags = vec![RedFlag::BladderOrBowelDysfunction];
    let submitted = intake
        .submit(Uuid::new_v4(), Uuid::new_v4(), None, details)
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    assert_eq!(submitted.state.status, Some(Status::Redirected));
    assert_eq!(
        submitted.state.destination,
        Some(RedirectDestination::EmergencyDepartment)
    );
    let events = store
        .read_stream(&stream_id(submitted.referral_id), 1)
        .await?;
    assert_eq!(events[1].event_type, "ReferralRedirected");
    Ok(())
}

#[tokio::test]
async fn the_same_request_id_twice_is_a_duplicate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let intake = open_intake(as_log(&store), dir.path()).await?;
    let request_id = Uuid::new_v4();
    let first = intake
        .submit(request_id, Uuid::new_v4(), None, referral("R-1")?)
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    // Even with a different body, the request id was already processed.
    let again = intake
        .submit(request_id, Uuid::new_v4(), None, referral("R-2")?)
        .await?;
    assert_eq!(
        again,
        Err(Rejection::Duplicate {
            referral_id: first.referral_id
        })
    );
    assert_eq!(count_events(&store).await?, 2);
    Ok(())
}

#[tokio::test]
async fn the_same_referral_under_a_new_request_id_is_a_duplicate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let intake = open_intake(as_log(&store), dir.path()).await?;
    let first = intake
        .submit(Uuid::new_v4(), Uuid::new_v4(), None, referral("R-1")?)
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    let again = intake
        .submit(Uuid::new_v4(), Uuid::new_v4(), None, referral("R-1")?)
        .await?;
    assert_eq!(
        again,
        Err(Rejection::Duplicate {
            referral_id: first.referral_id
        })
    );
    // A different sender identifier is a different referral.
    let other = intake
        .submit(Uuid::new_v4(), Uuid::new_v4(), None, referral("R-2")?)
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    assert_ne!(other.referral_id, first.referral_id);
    assert_eq!(count_events(&store).await?, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_submits_of_one_referral_record_it_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let intake = Arc::new(open_intake(as_log(&store), dir.path()).await?);
    let details = referral("R-RACE")?;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let intake = Arc::clone(&intake);
            let details = details.clone();
            tokio::spawn(async move {
                intake
                    .submit(Uuid::new_v4(), Uuid::new_v4(), None, details)
                    .await
            })
        })
        .collect();
    let mut recorded = Vec::new();
    let mut duplicates = Vec::new();
    for result in futures::future::join_all(tasks).await {
        match result?? {
            Ok(s) => recorded.push(s.referral_id),
            Err(Rejection::Duplicate { referral_id }) => duplicates.push(referral_id),
            Err(other) => return Err(format!("unexpected refusal: {other:?}").into()),
        }
    }
    assert_eq!(recorded.len(), 1, "exactly one submit records the referral");
    assert_eq!(duplicates.len(), 19);
    assert!(duplicates.iter().all(|d| *d == recorded[0]));
    assert_eq!(count_events(&store).await?, 2);
    Ok(())
}

#[tokio::test]
async fn the_index_survives_a_restart_and_is_rebuilt_when_deleted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let request_id = Uuid::new_v4();
    let first = {
        let store = open_store(dir.path())?;
        let intake = open_intake(as_log(&store), dir.path()).await?;
        let s = intake
            .submit(request_id, Uuid::new_v4(), None, referral("R-1")?)
            .await?
            .map_err(|r| format!("refused: {r:?}"))?;
        store.close().await;
        s
    };
    let store = open_store(dir.path())?;
    let intake = open_intake(as_log(&store), dir.path()).await?;
    // Only the rebuilt index can know this request id: the body is a new
    // referral.
    assert_eq!(
        intake
            .submit(request_id, Uuid::new_v4(), None, referral("R-NEW")?)
            .await?,
        Err(Rejection::Duplicate {
            referral_id: first.referral_id
        })
    );
    assert_eq!(
        intake
            .submit(Uuid::new_v4(), Uuid::new_v4(), None, referral("R-1")?)
            .await?,
        Err(Rejection::Duplicate {
            referral_id: first.referral_id
        })
    );
    assert_eq!(count_events(&store).await?, 2);
    drop(intake);
    store.close().await;

    // Deleted, the index is rebuilt from the log and knows the same ids.
    let projections = mskflow_projection::Options::in_dir(dir.path().join("projections"));
    assert!(mskflow_projection::remove(&projections, "intake-index")?);
    let store = open_store(dir.path())?;
    let intake = open_intake(as_log(&store), dir.path()).await?;
    assert_eq!(
        intake
            .submit(request_id, Uuid::new_v4(), None, referral("R-NEWER")?)
            .await?,
        Err(Rejection::Duplicate {
            referral_id: first.referral_id
        })
    );
    assert_eq!(count_events(&store).await?, 2);
    Ok(())
}

/// The real store, with its next append failing as if the disk were gone.
#[derive(Debug)]
struct FailNextAppend {
    inner: Arc<dyn EventLog>,
    fail: AtomicBool,
}

#[async_trait]
impl EventLog for FailNextAppend {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, mskflow_eventlog::Error> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(mskflow_eventlog::Error::Unavailable {
                context: "test".to_owned(),
                source: "disk gone".into(),
            });
        }
        self.inner
            .append(stream_id, expected, events, metadata)
            .await
    }
    async fn read_stream(
        &self,
        stream_id: &str,
        from: u64,
    ) -> Result<Vec<Envelope>, mskflow_eventlog::Error> {
        self.inner.read_stream(stream_id, from).await
    }
    async fn subscribe(
        &self,
        consumer: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, mskflow_eventlog::Error> {
        self.inner.subscribe(consumer, start).await
    }
    async fn ping(&self) -> Result<(), mskflow_eventlog::Error> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_failed_append_is_an_error_and_frees_the_request_id() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = Arc::new(FailNextAppend {
        inner: as_log(&store),
        fail: AtomicBool::new(true),
    });
    let intake = open_intake(log, dir.path()).await?;
    let request_id = Uuid::new_v4();
    let failed = intake
        .submit(request_id, Uuid::new_v4(), None, referral("R-1")?)
        .await;
    assert!(
        matches!(
            failed,
            Err(mskflow_intake::Error::Store(
                mskflow_eventlog::Error::Unavailable { .. }
            ))
        ),
        "{failed:?}"
    );
    assert_eq!(count_events(&store).await?, 0);
    // The retry of the same request is not mistaken for a duplicate.
    let retried = intake
        .submit(request_id, Uuid::new_v4(), None, referral("R-1")?)
        .await?;
    assert!(retried.is_ok(), "{retried:?}");
    assert_eq!(count_events(&store).await?, 2);
    Ok(())
}
