//! Helpers shared by the assessment integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use mskflow_assessment::{Assessment, Policy, SystemClock};
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, new_event};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::assessment::Slot;
use mskflow_events::intake::{
    IntakeEvent, PatientDetails, ReferralDetails, ReferralReceived, ReferralTriaged, Sender,
};
use mskflow_events::types::{
    ContactMode, FcpPriority, NhsNumber, Pathway, ReceivedVia, RequestPriority,
};
use uuid::Uuid;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn open_store(dir: &Path) -> Result<SqliteEventLog, mskflow_eventlog_sqlite::Error> {
    SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: dir.join("assessment.db"),
        ..mskflow_eventlog_sqlite::Options::default()
    })
}

pub fn as_log(store: &SqliteEventLog) -> Arc<dyn EventLog> {
    Arc::new(store.clone())
}

/// Assessment over `log`, its read model kept under `dir`.
pub async fn open_assessment(
    log: Arc<dyn EventLog>,
    policy: Policy,
    dir: &Path,
) -> Result<Arc<Assessment>, mskflow_assessment::Error> {
    Ok(Arc::new(
        Assessment::open(
            log,
            policy,
            Arc::new(SystemClock),
            &mskflow_projection::Options::in_dir(dir.join("projections")),
        )
        .await?,
    ))
}

/// A fixed day, `minutes` after 08:00.
pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0)
        .single()
        .unwrap_or_default()
        + Duration::minutes(minutes)
}

pub fn slot(slot_id: Uuid, minutes: i64) -> Slot {
    Slot {
        slot_id,
        clinician_id: "fcp-07".to_owned(),
        start: at(24 * 60 + minutes),
        end: at(24 * 60 + minutes + 30),
        mode: ContactMode::Video,
        location: None,
    }
}

/// Append what intake records for a triaged referral: `ReferralReceived`
/// and `ReferralTriaged` on `referral-{id}`, triaged at `triaged_at`.
pub async fn triage(
    log: &dyn EventLog,
    referral_id: Uuid,
    priority: FcpPriority,
    pathway: Pathway,
    triaged_at: DateTime<Utc>,
) -> Result<(), BoxError> {
    let details = ReferralDetails {
        received_via: ReceivedVia::ProcessMessage,
        sender: Sender {
            ods_code: None,
            endpoint: None,
            message_id: None,
            software: None,
        },
        service_request_identifier: None,
        patient: PatientDetails {
            nhs_number: Some(NhsNumber::parse("9434765919")?),
            family: None,
            given: vec![],
            birth_date: None,
            sex: None,
            postcode: None,
            ethnicity: None,
        },
        requester: None,
        reason: vec![],
        body_site: vec![],
        requested_priority: RequestPriority::Routine,
        red_flags: vec![],
        start_back: None,
        note: None,
        authored_on: None,
        fhir_json: "{}".to_owned(),
    };
    let events = [
        IntakeEvent::ReferralReceived(ReferralReceived {
            referral_id,
            request_id: Uuid::new_v4(),
            referral: details,
        }),
        IntakeEvent::ReferralTriaged(ReferralTriaged {
            referral_id,
            rule_set_version: "test".to_owned(),
            rule_id: "default".to_owned(),
            priority,
            pathway,
            start_back: None,
            reasons: vec![],
        }),
    ];
    let new = events
        .iter()
        .map(|e| new_event(e, 1, triaged_at))
        .collect::<Result<Vec<_>, _>>()?;
    log.append(
        &format!("referral-{referral_id}"),
        ExpectedVersion::NoStream,
        new,
        &Metadata {
            correlation_id: Uuid::new_v4(),
            ..Metadata::default()
        },
    )
    .await?;
    Ok(())
}

/// Run the consumer over everything available and commit.
pub async fn consume(assessment: &Arc<Assessment>) -> Result<(), BoxError> {
    let mut consumer = mskflow_assessment::consumer::open(Arc::clone(assessment)).await?;
    consumer.process_available().await?;
    consumer.commit().await?;
    Ok(())
}
