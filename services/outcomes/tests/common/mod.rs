//! Helpers shared by the outcomes integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_outcomes::Clock;
use uuid::Uuid;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub fn open_store(dir: &Path) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
    SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: dir.join("outcomes.db"),
        ..mskflow_eventlog_sqlite::Options::default()
    })
}

pub fn as_log(store: &SqliteEventLog) -> Arc<dyn EventLog> {
    Arc::new(store.clone())
}

pub fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 9, 0, 0)
        .single()
        .unwrap_or_default()
}

/// A clock the test sets.
#[derive(Debug)]
pub struct TestClock(pub Mutex<DateTime<Utc>>);

impl TestClock {
    pub fn new(t: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(t)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        if let Ok(mut g) = self.0.lock() {
            *g = t;
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|g| *g).unwrap_or_default()
    }
}

/// Append a synthetic pathway event (as the assessment or scheduling
/// service would) to `stream`, with a payload carrying `referral_id`.
pub async fn append_pathway_event(
    log: &dyn EventLog,
    stream: &str,
    event_type: &str,
    referral_id: Uuid,
    occurred_at: DateTime<Utc>,
) -> Result<Uuid, mskflow_eventlog::Error> {
    let event_id = Uuid::new_v4();
    log.append(
        stream,
        ExpectedVersion::Any,
        vec![NewEvent {
            event_id,
            event_type: event_type.to_owned(),
            schema_version: 1,
            occurred_at,
            payload: serde_json::json!({
                "referral_id": referral_id.to_string(),
                "reason": "assessment-outcome",
                "notify_referrer": true,
            }),
        }],
        &Metadata {
            correlation_id: referral_id,
            ..Metadata::default()
        },
    )
    .await?;
    Ok(event_id)
}
