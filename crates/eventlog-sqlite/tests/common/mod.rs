//! Helpers shared by the integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use mskflow_eventlog::{Metadata, NewEvent};
use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
use uuid::Uuid;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub fn options(path: &Path) -> Options {
    Options {
        path: path.to_path_buf(),
        ..Options::default()
    }
}

pub fn open(dir: &tempfile::TempDir) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
    SqliteEventLog::open(options(&dir.path().join("events.db")))
}

/// An event with a fixed, sub-second occurred-at so round trips are exact.
pub fn event(n: u32) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: format!("Happened{n}"),
        schema_version: n % 3 + 1,
        occurred_at: Utc
            .timestamp_opt(1_790_000_000 + i64::from(n), 123_456_789)
            .single()
            .unwrap_or_default(),
        payload: serde_json::json!({ "n": n, "nested": { "list": [1, 2.5, "x"], "none": null } }),
    }
}

pub fn metadata() -> Metadata {
    Metadata {
        causation_id: Some(Uuid::new_v4()),
        correlation_id: Uuid::new_v4(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        tracestate: Some("congo=t61rcWkgMzE".to_owned()),
    }
}

/// Wait at most this long for anything that should be prompt.
pub const PATIENCE: Duration = Duration::from_secs(10);
