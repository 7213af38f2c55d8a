//! Helpers shared by the intake integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use mskflow_eventlog::{EventLog, StartFrom};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::intake::{Coding, Identifier, PatientDetails, ReferralDetails, Sender};
use mskflow_events::types::{NhsNumber, OdsCode, ReceivedVia, RequestPriority};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub fn open_store(dir: &Path) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
    SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: dir.join("intake.db"),
        ..mskflow_eventlog_sqlite::Options::default()
    })
}

/// A routine knee-pain referral from practice A81001 with the sender's own
/// identifier `value`.
pub fn referral(value: &str) -> Result<ReferralDetails, mskflow_events::types::Error> {
    Ok(ReferralDetails {
        received_via: ReceivedVia::ProcessMessage,
        sender: Sender {
            ods_code: Some(OdsCode::parse("A81001")?),
            endpoint: None,
            message_id: None,
            software: None,
        },
        service_request_identifier: Some(Identifier {
            system: Some("https://fhir.a81001.example/referral".to_owned()),
            value: value.to_owned(),
        }),
        patient: PatientDetails {
            nhs_number: Some(NhsNumber::parse("9434765919")?),
            family: Some("Smith".to_owned()),
            given: vec!["Jo".to_owned()],
            birth_date: NaiveDate::from_ymd_opt(1970, 3, 14),
            sex: None,
            postcode: None,
            ethnicity: None,
        },
        requester: None,
        reason: vec![Coding {
            system: Some("http://snomed.info/sct".to_owned()),
            code: "30989003".to_owned(),
            display: Some("Knee pain".to_owned()),
        }],
        body_site: vec![],
        requested_priority: RequestPriority::Routine,
        red_flags: vec![],
        start_back: None,
        note: None,
        authored_on: None,
        fhir_json: "{\"resourceType\":\"Bundle\"}".to_owned(),
    })
}

/// Every event in the log, by replaying it from the beginning.
pub async fn count_events(log: &dyn EventLog) -> Result<usize, mskflow_eventlog::Error> {
    let mut sub = log
        .subscribe(
            &format!("count-{}", uuid::Uuid::new_v4()),
            StartFrom::Beginning,
        )
        .await?;
    let mut n = 0;
    loop {
        let batch = sub.poll_batch(1000).await?;
        if batch.is_empty() {
            return Ok(n);
        }
        n += batch.len();
    }
}

pub fn as_log(store: &SqliteEventLog) -> Arc<dyn EventLog> {
    Arc::new(store.clone())
}
