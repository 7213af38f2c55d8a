//! The waiting list on disk: resumed after a restart, rebuilt when deleted,
//! and a rebuild equal to the incrementally maintained list over a
//! generated caseload.

mod common;

use mskflow_projection::testing::{Rng, log_events};
use std::path::Path;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveTime};
use common::{
    FixedClock, TestResult, as_log, escape_pain_patient, january, open_store, start_date,
};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::scheduling::{
    CancelledBy, DayOfWeek, DischargeReason, PatientWaitlisted, Place, Programme,
};
use mskflow_events::types::{ContactMode, FcpPriority};
use mskflow_projection::Opened;
use mskflow_scheduling::domain::{ClassSpec, SessionStatus};
use mskflow_scheduling::service::SlotSpec;
use mskflow_scheduling::waiting::Dump;
use mskflow_scheduling::{EpisodeStatus, Policy, Scheduling, WaitingFilter};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PROJECTION: &str = "scheduling-waiting-list";

/// The episode events the waiting list folds.
const EPISODE_EVENTS: [&str; 10] = [
    "PatientWaitlisted",
    "OfferMade",
    "OfferAccepted",
    "OfferDeclined",
    "PlaceBooked",
    "SessionAttended",
    "SessionMissed",
    "SessionCancelled",
    "CourseCompleted",
    "RehabDischarged",
];

fn projections(dir: &Path) -> mskflow_projection::Options {
    mskflow_projection::Options::in_dir(dir)
}

async fn open_at(store: &SqliteEventLog, dir: &Path) -> Result<Scheduling, BoxError> {
    Ok(Scheduling::open(
        as_log(store),
        Policy::default(),
        Arc::new(FixedClock),
        &projections(dir),
    )
    .await?)
}

/// The places a caseload books into.
struct Places {
    classes: Vec<Uuid>,
    slots_published: u32,
}

async fn capacity(s: &Scheduling) -> Result<Places, BoxError> {
    s.register_venue("leeds-central".to_owned(), "Leeds Central".to_owned())
        .await??;
    let mut classes = Vec::new();
    for _ in 0..6 {
        let class_id = Uuid::new_v4();
        s.schedule_class(ClassSpec {
            class_id,
            programme: Programme::StrengthAndBalance,
            venue_id: "leeds-central".to_owned(),
            days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
            start_time: NaiveTime::from_hms_opt(10, 0, 0).ok_or("time")?,
            duration_minutes: 60,
            capacity: Some(12),
            start_date: start_date(),
            sessions: Some(2),
        })
        .await??;
        classes.push(class_id);
    }
    Ok(Places {
        classes,
        slots_published: 0,
    })
}

impl Places {
    /// A place for the patient: a class for a group programme, a new 1:1
    /// slot otherwise.
    async fn for_patient(
        &mut self,
        s: &Scheduling,
        rng: &mut Rng,
        programme: Programme,
    ) -> Result<Place, BoxError> {
        if programme.is_group() {
            return Ok(Place::Class {
                class_id: self.classes[rng.below(self.classes.len())],
            });
        }
        self.slots_published += 1;
        let starts_at = NaiveDate::from_ymd_opt(2026, 3, 5)
            .and_then(|d| d.and_hms_opt(8, 0, 0))
            .ok_or("date")?
            + chrono::Duration::minutes(i64::from(self.slots_published) * 30);
        let slot_id = Uuid::new_v4();
        s.publish_slot(SlotSpec {
            slot_id,
            clinician: "physio-17".to_owned(),
            venue_id: "leeds-central".to_owned(),
            starts_at,
            ends_at: starts_at + chrono::Duration::minutes(30),
            mode: ContactMode::Telephone,
        })
        .await??;
        Ok(Place::Slot { slot_id })
    }
}

fn patient(rng: &mut Rng) -> PatientWaitlisted {
    let priority = [FcpPriority::Urgent, FcpPriority::Soon, FcpPriority::Routine][rng.below(3)];
    let day = u32::try_from(rng.below(28)).unwrap_or(0) + 1;
    let mut p = escape_pain_patient(priority, january(day));
    p.programme = Programme::StrengthAndBalance;
    p.sessions = 2;
    if rng.chance(50) {
        p.programme = Programme::OneToOne;
        p.sessions = u32::try_from(rng.below(2)).unwrap_or(0) + 1;
        p.choices.days = vec![];
    }
    p
}

/// Run `steps` random commands over `patients`, each chosen from what the
/// episode can do now (refusals are part of the caseload and ignored).
async fn caseload(
    s: &Scheduling,
    places: &mut Places,
    rng: &mut Rng,
    patients: &mut Vec<PatientWaitlisted>,
    steps: usize,
) -> TestResult {
    for step in 0..steps {
        if patients.is_empty() || rng.chance(15) {
            patients.push(patient(rng));
        }
        let p = patients[rng.below(patients.len())].clone();
        let id = p.referral_id;
        let episode = s.episode(id).await?;
        let status = episode.as_ref().and_then(|e| e.status);
        match status {
            None => {
                s.add_to_waiting_list(p.clone()).await??;
            }
            Some(EpisodeStatus::Waiting) => match rng.below(10) {
                0..=4 => {
                    let place = places.for_patient(s, rng, p.programme).await?;
                    let _ = s.make_offer(id, place).await?;
                }
                5..=8 => {
                    let place = places.for_patient(s, rng, p.programme).await?;
                    let _ = book(s, id, place).await?;
                }
                _ => {
                    let _ = s.discharge(id, DischargeReason::PatientWithdrew).await?;
                }
            },
            Some(EpisodeStatus::Offered) => {
                let offer = episode
                    .as_ref()
                    .and_then(|e| e.offer.as_ref())
                    .ok_or("offered without an offer")?;
                let _ = s
                    .respond_to_offer(id, offer.offer_id, rng.chance(50))
                    .await?;
            }
            Some(EpisodeStatus::Accepted) => {
                let place = episode
                    .as_ref()
                    .and_then(|e| e.offer.as_ref())
                    .map(|o| o.place)
                    .ok_or("accepted without an offer")?;
                let _ = book(s, id, place).await?;
            }
            Some(EpisodeStatus::Booked) => {
                let pending: Vec<u32> = episode
                    .as_ref()
                    .map(|e| {
                        e.sessions
                            .iter()
                            .filter(|(_, st)| st.status == SessionStatus::Booked)
                            .map(|(no, _)| *no)
                            .collect()
                    })
                    .unwrap_or_default();
                if pending.is_empty() {
                    // A 1:1 course with a session to re-book.
                    let place = places.for_patient(s, rng, p.programme).await?;
                    let _ = book(s, id, place).await?;
                    continue;
                }
                let session_no = pending[rng.below(pending.len())];
                let _ = match rng.below(10) {
                    0..=5 => s.record_attendance(id, session_no, true).await?,
                    6 | 7 => s.record_attendance(id, session_no, false).await?,
                    8 => {
                        s.cancel_session(id, session_no, CancelledBy::Patient)
                            .await?
                    }
                    _ => {
                        s.cancel_session(id, session_no, CancelledBy::Service)
                            .await?
                    }
                };
            }
            Some(EpisodeStatus::Completed | EpisodeStatus::Discharged) => {}
        }
        // Queries interleaved with the commands (read-your-writes).
        if step % 25 == 0 {
            s.waiting_list(WaitingFilter::default()).await??;
        }
    }
    Ok(())
}

/// Book either kind of place.
async fn book(
    s: &Scheduling,
    referral_id: Uuid,
    place: Place,
) -> mskflow_scheduling::Outcome<mskflow_scheduling::EpisodeState> {
    match place {
        Place::Class { class_id } => s.book_class(referral_id, class_id).await,
        Place::Slot { slot_id } => s.book_slot(referral_id, slot_id).await,
    }
}

/// What the queries answer, and the tables behind them.
#[derive(Debug, PartialEq)]
struct Answers {
    all: Vec<PatientWaitlisted>,
    group: Vec<PatientWaitlisted>,
    one_to_one: Vec<PatientWaitlisted>,
    for_class: Vec<PatientWaitlisted>,
    dump: Dump,
}

async fn answers(s: &Scheduling, class_id: Uuid) -> Result<Answers, BoxError> {
    let by = |programme| WaitingFilter {
        programme: Some(programme),
        place: None,
    };
    Ok(Answers {
        all: s.waiting_list(WaitingFilter::default()).await??,
        group: s.waiting_list(by(Programme::StrengthAndBalance)).await??,
        one_to_one: s.waiting_list(by(Programme::OneToOne)).await??,
        for_class: s
            .waiting_list(WaitingFilter {
                programme: None,
                place: Some(Place::Class { class_id }),
            })
            .await??,
        dump: s.waiting_list_dump().await?,
    })
}

#[tokio::test]
async fn the_waiting_list_resumes_after_a_restart_reading_only_new_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("projections");
    let store = open_store(dir.path())?;
    let mut rng = Rng(0x5eed_0001);
    let mut patients = Vec::new();
    let s = open_at(&store, &ours).await?;
    let mut places = capacity(&s).await?;
    caseload(&s, &mut places, &mut rng, &mut patients, 150).await?;
    for _ in 0..4 {
        s.add_to_waiting_list(patient(&mut rng)).await??;
    }
    let before = answers(&s, places.classes[0]).await?;
    assert!(!before.all.is_empty());
    drop(s);

    // Reopened over the same files: the same answers, nothing replayed.
    let s = open_at(&store, &ours).await?;
    assert!(matches!(s.catch_up().opened, Opened::Resumed { .. }));
    assert_eq!(s.catch_up().events, 0);
    assert_eq!(answers(&s, places.classes[0]).await?, before);
    drop(s);

    // Meanwhile another instance (its own projections) moves the log on.
    let (logged, _) = log_events(&store).await?;
    let other = open_at(&store, &dir.path().join("other")).await?;
    caseload(&other, &mut places, &mut rng, &mut patients, 60).await?;
    let expected = answers(&other, places.classes[0]).await?;
    drop(other);
    let (now_logged, _) = log_events(&store).await?;
    assert!(now_logged > logged);

    // Ours resumes after its checkpoint: it reads only the new events.
    let s = open_at(&store, &ours).await?;
    assert!(matches!(s.catch_up().opened, Opened::Resumed { .. }));
    assert_eq!(s.catch_up().events, now_logged - logged);
    assert_eq!(answers(&s, places.classes[0]).await?, expected);
    drop(s);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_waiting_list_is_rebuilt_with_the_same_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("projections");
    let store = open_store(dir.path())?;
    let mut rng = Rng(0x5eed_0002);
    let mut patients = Vec::new();
    let s = open_at(&store, &ours).await?;
    let mut places = capacity(&s).await?;
    caseload(&s, &mut places, &mut rng, &mut patients, 150).await?;
    let before = answers(&s, places.classes[0]).await?;
    drop(s);

    assert!(mskflow_projection::remove(&projections(&ours), PROJECTION)?);
    let s = open_at(&store, &ours).await?;
    assert!(matches!(s.catch_up().opened, Opened::Rebuilt { .. }));
    assert_eq!(s.catch_up().events, log_events(&store).await?.0);
    assert_eq!(answers(&s, places.classes[0]).await?, before);
    drop(s);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_rebuilt_waiting_list_equals_the_incremental_one_over_a_generated_caseload() -> TestResult
{
    for seed in [0x0a11_ce01_u64, 0x0b0b_0002] {
        let dir = tempfile::tempdir()?;
        let store = open_store(dir.path())?;
        let mut rng = Rng(seed);
        let mut patients = Vec::new();
        let live = open_at(&store, &dir.path().join("live")).await?;
        let mut places = capacity(&live).await?;
        caseload(&live, &mut places, &mut rng, &mut patients, 400).await?;
        let incremental = answers(&live, places.classes[0]).await?;

        let (_, types) = log_events(&store).await?;
        for t in EPISODE_EVENTS {
            assert!(types.contains(t), "seed {seed:#x}: the caseload has no {t}");
        }

        // Built from the first event in a directory of its own.
        let rebuilt = open_at(&store, &dir.path().join("rebuilt")).await?;
        assert!(matches!(rebuilt.catch_up().opened, Opened::Rebuilt { .. }));
        assert_eq!(
            answers(&rebuilt, places.classes[0]).await?,
            incremental,
            "seed {seed:#x}"
        );

        // And both equal the list folded from each episode's stream.
        let mut folded = Vec::new();
        for p in &patients {
            if let Some(e) = live.episode(p.referral_id).await?
                && e.status == Some(EpisodeStatus::Waiting)
            {
                folded.push(e.waitlisted.ok_or("waiting without an entry")?);
            }
        }
        folded.sort_by_key(|w| (w.priority, w.need_recorded_at, w.referral_id));
        folded.dedup();
        assert_eq!(incremental.all, folded, "seed {seed:#x}");
        drop((live, rebuilt));
        store.close().await;
    }
    Ok(())
}
