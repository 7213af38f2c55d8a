//! Helpers shared by the scheduling integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use mskflow_eventlog::EventLog;
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::scheduling::{DayOfWeek, PatientChoices, PatientWaitlisted, Programme};
use mskflow_events::types::{FcpPriority, Pathway};
use mskflow_scheduling::Clock;
use uuid::Uuid;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub fn open_store(dir: &Path) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
    SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: dir.join("scheduling.db"),
        ..mskflow_eventlog_sqlite::Options::default()
    })
}

pub fn as_log(store: &SqliteEventLog) -> Arc<dyn EventLog> {
    Arc::new(store.clone())
}

/// A clock stopped at 1 March 2026, 09:00 UTC.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0)
            .single()
            .unwrap_or_default()
    }
}

/// The instant `day` days into January 2026, 09:00 UTC.
pub fn january(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, 9, 0, 0)
        .single()
        .unwrap_or_default()
}

/// A Wednesday: courses starting here meet first on the Thursday.
pub fn start_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 4).unwrap_or_default()
}

/// A knee patient waiting for ESCAPE-pain, any venue, Mondays and Thursdays.
pub fn escape_pain_patient(priority: FcpPriority, recorded: DateTime<Utc>) -> PatientWaitlisted {
    PatientWaitlisted {
        referral_id: Uuid::new_v4(),
        priority,
        pathway: Pathway::Knee,
        programme: Programme::EscapePain,
        sessions: 12,
        need_recorded_at: recorded,
        choices: PatientChoices {
            venue_ids: vec![],
            days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
            modes: vec![],
        },
    }
}

/// The real store, counting the appends it refused for a stale expected
/// version (to show that a race really happened).
#[derive(Debug)]
pub struct CountingConflicts {
    pub inner: SqliteEventLog,
    pub conflicts: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl EventLog for CountingConflicts {
    async fn append(
        &self,
        stream_id: &str,
        expected: mskflow_eventlog::ExpectedVersion,
        events: Vec<mskflow_eventlog::NewEvent>,
        metadata: &mskflow_eventlog::Metadata,
    ) -> Result<mskflow_eventlog::Appended, mskflow_eventlog::Error> {
        let result = self
            .inner
            .append(stream_id, expected, events, metadata)
            .await;
        if let Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) = &result {
            self.conflicts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_sequence: u64,
    ) -> Result<Vec<mskflow_eventlog::Envelope>, mskflow_eventlog::Error> {
        self.inner.read_stream(stream_id, from_sequence).await
    }

    async fn subscribe(
        &self,
        consumer: &str,
        start: mskflow_eventlog::StartFrom,
    ) -> Result<Box<dyn mskflow_eventlog::Subscription>, mskflow_eventlog::Error> {
        self.inner.subscribe(consumer, start).await
    }

    async fn ping(&self) -> Result<(), mskflow_eventlog::Error> {
        self.inner.ping().await
    }

    fn log_id(&self) -> Option<String> {
        self.inner.log_id()
    }
}
