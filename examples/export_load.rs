//! Export load run: fills a fresh embedded store with the events of many
//! complete referral journeys, then times `mskflow export` (the analysts'
//! stream and every aggregate view) over it.
//!
//! `cargo run --release --example export_load -- [REFERRALS] [DATA_DIR]`
//! (default 100000 referrals in a temporary directory). With `DATA_DIR` the
//! store is kept, so the command line can be timed on it too:
//! `MSKFLOW_ANALYTICS_SECRET=... mskflow export --data-dir DATA_DIR --out OUT`.
//!
//! Each journey: `ReferralReceived`, `ReferralTriaged`; FCP
//! `AssessmentRequested`, `AssessmentBooked` (one in ten missed and booked
//! again), `AssessmentCompleted` (one in twenty referred on to
//! orthopaedics); for half, a six-session 1:1 course (`PatientWaitlisted`,
//! `PlaceBooked`, six attended or missed sessions, `CourseCompleted`); and
//! MSK-HQ at first contact and discharge with the change. Practices, postcodes,
//! sexes and birth dates vary with the referral number.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use clap::Parser as _;
use futures::StreamExt as _;
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, new_event};
use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
use mskflow_events::assessment::{self as a, AssessmentEvent, DistressScreen, Outcome};
use mskflow_events::intake::{
    self as i, Coding, IntakeEvent, PatientDetails, ReferralDetails, Requester, Sender,
};
use mskflow_events::outcomes::{self as o, ItemAnswer, Measure, OutcomeEvent, Score, Timepoint};
use mskflow_events::scheduling::{
    self as s, BookedSession, PatientChoices, Place, Programme, SchedulingEvent,
};
use mskflow_events::types::{ContactMode, FcpPriority, Pathway, ReceivedVia, RequestPriority, Sex};
use mskflow_events::{NhsNumber, OdsCode};
use uuid::Uuid;

#[derive(Debug, clap::Parser)]
struct Cli {
    /// Referral journeys to write.
    #[arg(default_value_t = 100_000)]
    referrals: u64,
    /// Data directory to fill (kept afterwards); a temporary one otherwise.
    data_dir: Option<std::path::PathBuf>,
    /// Concurrent writers (appends share fsyncs in groups).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Also write the stream and the views as Parquet.
    #[arg(long)]
    parquet: bool,
}

const PRACTICES: [&str; 8] = [
    "B86001", "B86002", "B86003", "B86004", "B83001", "B83002", "B82001", "B87001",
];
const POSTCODES: [&str; 11] = [
    "LS1 5HD", "LS6 2QN", "LS17 6AA", "BD1 1HY", "BD9 4RR", "HX1 1UJ", "WF1 2EB", "HG1 1DP",
    "YO1 7HH", "S1 2HE", "ZZ1 1ZZ",
];
const PATHWAYS: [Pathway; 4] = [
    Pathway::Knee,
    Pathway::Hip,
    Pathway::BackAndRadicularPain,
    Pathway::Shoulder,
];

fn event<T: serde::Serialize>(e: &T, at: DateTime<Utc>) -> anyhow::Result<NewEvent> {
    Ok(new_event(e, 1, at)?)
}

/// The streams and events of journey `n`.
fn journey(n: u64, nhs: &NhsNumber) -> anyhow::Result<Vec<(String, Vec<NewEvent>)>> {
    let id = Uuid::new_v4();
    let k = usize::try_from(n).unwrap_or_default();
    let received = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default()
        + Duration::minutes(i64::try_from(n % 500_000).unwrap_or_default());
    let pathway = PATHWAYS[k % PATHWAYS.len()];
    let ods = |c: &str| OdsCode::parse(c).ok();
    let referral = IntakeEvent::ReferralReceived(i::ReferralReceived {
        referral_id: id,
        request_id: Uuid::new_v4(),
        referral: ReferralDetails {
            received_via: ReceivedVia::ProcessMessage,
            sender: Sender {
                ods_code: ods(PRACTICES[k % PRACTICES.len()]),
                endpoint: None,
                message_id: None,
                software: None,
            },
            service_request_identifier: None,
            patient: PatientDetails {
                nhs_number: Some(nhs.clone()),
                family: Some("Example".to_owned()),
                given: vec!["Pat".to_owned()],
                birth_date: NaiveDate::from_ymd_opt(
                    1940 + i32::try_from(n % 60).unwrap_or_default(),
                    3,
                    14,
                ),
                sex: Some(if n.is_multiple_of(2) {
                    Sex::Female
                } else {
                    Sex::Male
                }),
                postcode: Some(POSTCODES[k % POSTCODES.len()].to_owned()),
                ethnicity: Some(Coding {
                    system: None,
                    code: ["A", "B", "H", "M", "R"][k % 5].to_owned(),
                    display: None,
                }),
            },
            requester: Some(Requester {
                display: None,
                ods_code: ods(PRACTICES[k % PRACTICES.len()]),
            }),
            reason: vec![],
            body_site: vec![],
            requested_priority: RequestPriority::Routine,
            red_flags: vec![],
            start_back: None,
            note: None,
            authored_on: None,
            fhir_json: "{\"resourceType\":\"Bundle\"}".to_owned(),
        },
    });
    let triaged = IntakeEvent::ReferralTriaged(i::ReferralTriaged {
        referral_id: id,
        rule_set_version: "load".to_owned(),
        rule_id: "default".to_owned(),
        priority: FcpPriority::Routine,
        pathway,
        start_back: None,
        reasons: vec![],
    });
    let mut streams = vec![(
        format!("referral-{id}"),
        vec![
            event(&referral, received)?,
            event(&triaged, received + Duration::minutes(1))?,
        ],
    )];

    // FCP assessment: one in ten misses the first appointment.
    let slot = |days: i64| a::Slot {
        slot_id: Uuid::new_v4(),
        clinician_id: "fcp-1".to_owned(),
        start: received + Duration::days(days),
        end: received + Duration::days(days) + Duration::minutes(30),
        mode: ContactMode::FaceToFace,
        location: None,
    };
    let mut fcp = vec![event(
        &AssessmentEvent::AssessmentRequested(a::AssessmentRequested {
            referral_id: id,
            priority: FcpPriority::Routine,
            pathway,
            triaged_at: received,
        }),
        received,
    )?];
    if n.is_multiple_of(10) {
        let missed = slot(3);
        fcp.push(event(
            &AssessmentEvent::AssessmentBooked(a::AssessmentBooked {
                referral_id: id,
                slot: missed.clone(),
            }),
            received,
        )?);
        fcp.push(event(
            &AssessmentEvent::AppointmentMissed(a::AppointmentMissed {
                referral_id: id,
                slot_id: missed.slot_id,
                missed_count: 1,
            }),
            missed.start,
        )?);
    }
    let seen = slot(5 + i64::try_from(n % 40).unwrap_or_default());
    let rehab = n.is_multiple_of(2);
    let mut outcomes = vec![if rehab {
        Outcome::CommunityPhysiotherapy
    } else {
        Outcome::AdviceAndSelfManagement { app: None }
    }];
    if n % 20 == 1 {
        outcomes.push(Outcome::OnwardReferral {
            destination: a::OnwardDestination::Orthopaedics,
            reason: "joint replacement".to_owned(),
        });
    }
    fcp.push(event(
        &AssessmentEvent::AssessmentBooked(a::AssessmentBooked {
            referral_id: id,
            slot: seen.clone(),
        }),
        received,
    )?);
    fcp.push(event(
        &AssessmentEvent::AssessmentCompleted(a::AssessmentCompleted {
            referral_id: id,
            slot_id: seen.slot_id,
            clinician_id: "fcp-1".to_owned(),
            findings_summary: "findings".to_owned(),
            shared_decision_made: true,
            decision_aid: None,
            work_discussed: true,
            fit_note_issued: false,
            psychological_distress: DistressScreen::Negative,
            bmi: None,
            smoking_status: None,
            outcomes,
        }),
        seen.start,
    )?);
    streams.push((format!("assessment-{id}"), fcp));

    // Half have a six-session 1:1 course; one session in eight is missed.
    let course_start = seen.start + Duration::days(14);
    if rehab {
        let sessions: Vec<BookedSession> = (1..=6u32)
            .map(|no| BookedSession {
                session_no: no,
                starts_at: (course_start + Duration::days(7 * i64::from(no - 1))).naive_utc(),
                venue_id: "riverside".to_owned(),
                mode: ContactMode::FaceToFace,
            })
            .collect();
        let mut ev = vec![
            event(
                &SchedulingEvent::PatientWaitlisted(s::PatientWaitlisted {
                    referral_id: id,
                    priority: FcpPriority::Routine,
                    pathway,
                    programme: Programme::OneToOne,
                    sessions: 6,
                    need_recorded_at: seen.start,
                    choices: PatientChoices::default(),
                }),
                seen.start,
            )?,
            event(
                &SchedulingEvent::PlaceBooked(s::PlaceBooked {
                    referral_id: id,
                    place: Place::Slot {
                        slot_id: Uuid::new_v4(),
                    },
                    sessions,
                }),
                seen.start,
            )?,
        ];
        let mut missed = 0;
        for no in 1..=6u32 {
            let at = course_start + Duration::days(7 * i64::from(no - 1));
            let e = if (n + u64::from(no)).is_multiple_of(8) {
                missed += 1;
                SchedulingEvent::SessionMissed(s::SessionMissed {
                    referral_id: id,
                    session_no: no,
                    missed_total: missed,
                })
            } else {
                SchedulingEvent::SessionAttended(s::SessionAttended {
                    referral_id: id,
                    session_no: no,
                })
            };
            ev.push(event(&e, at)?);
        }
        ev.push(event(
            &SchedulingEvent::CourseCompleted(s::CourseCompleted {
                referral_id: id,
                attended: 6 - missed,
                missed,
                cancelled: 0,
            }),
            course_start + Duration::days(36),
        )?);
        streams.push((format!("rehab-{id}"), ev));
    }

    // MSK-HQ at first contact and discharge.
    let base = u8::try_from(15 + n % 20).unwrap_or(20);
    let later = base + u8::try_from(n % 11).unwrap_or(0);
    let discharged = course_start + Duration::days(40);
    let completed = |timepoint, total: u8, at| {
        OutcomeEvent::QuestionnaireCompleted(o::QuestionnaireCompleted {
            referral_id: id,
            response_id: Uuid::new_v4(),
            measure: Measure::MskHq,
            timepoint,
            answers: (1..=14)
                .map(|l| ItemAnswer {
                    link_id: l.to_string(),
                    value: i32::from(total) / 14,
                })
                .collect(),
            score: Score::MskHq { total },
            completed_at: at,
        })
    };
    let change = f64::from(later) - f64::from(base);
    streams.push((
        format!("outcomes-{id}"),
        vec![
            event(
                &completed(Timepoint::FirstContact, base, seen.start),
                seen.start,
            )?,
            event(
                &completed(Timepoint::Discharge, later, discharged),
                discharged,
            )?,
            event(
                &OutcomeEvent::OutcomeChangeRecorded(o::OutcomeChangeRecorded {
                    referral_id: id,
                    measure: Measure::MskHq,
                    from: Timepoint::FirstContact,
                    to: Timepoint::Discharge,
                    baseline: f64::from(base),
                    later: f64::from(later),
                    change,
                    minimal_important_change: 5.0,
                    reached_minimal_important_change: change >= 5.0,
                }),
                discharged,
            )?,
        ],
    ));
    Ok(streams)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tmp = tempfile::tempdir()?;
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    std::fs::create_dir_all(&data_dir)?;
    let config = mskflow::Config {
        data_dir: data_dir.clone(),
        ..mskflow::Config::default()
    };
    let store = SqliteEventLog::open(Options {
        path: config.event_store_path(),
        ..Options::default()
    })?;
    let log: Arc<dyn EventLog> = Arc::new(store.clone());
    let nhs = NhsNumber::parse("9434765919").context("the sample NHS number")?;

    let filling = Instant::now();
    let mut written = futures::stream::iter(0..cli.referrals)
        .map(|n| {
            let log = log.clone();
            let nhs = nhs.clone();
            async move {
                let mut events = 0u64;
                for (stream, batch) in journey(n, &nhs)? {
                    events += batch.len() as u64;
                    let meta = Metadata {
                        correlation_id: Uuid::new_v4(),
                        ..Metadata::default()
                    };
                    log.append(&stream, ExpectedVersion::NoStream, batch, &meta)
                        .await?;
                }
                anyhow::Ok(events)
            }
        })
        .buffer_unordered(cli.concurrency.max(1));
    let mut events = 0u64;
    while let Some(n) = written.next().await {
        events += n?;
    }
    drop(written);
    let fill_secs = filling.elapsed().as_secs_f64();
    store.close().await;
    println!(
        "filled {} with {events} events of {} referrals in {fill_secs:.1}s",
        config.event_store_path().display(),
        cli.referrals
    );

    // A fixed secret is fine for a throwaway benchmark store.
    let secret_file = tmp.path().join("secret");
    std::fs::write(&secret_file, "an export load secret, not for real data\n")?;
    let options = mskflow::export::ExportOptions {
        out: tmp.path().join("export"),
        secret_file: Some(secret_file),
        imd_lookup: None,
        parquet: cli.parquet,
    };
    let started = Instant::now();
    let report = mskflow::export::export(&config, &options).await?;
    let secs = started.elapsed().as_secs_f64();
    print!("{report}");
    println!(
        "export: {events} events in {secs:.2}s = {:.0} events/s",
        events as f64 / secs
    );
    Ok(())
}
