//! The application service over the real SQLite store.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::NaiveTime;
use common::{
    CountingConflicts, FixedClock, TestResult, escape_pain_patient, january, open_store, start_date,
};
use mskflow_eventlog::EventLog;
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::scheduling::{CancelledBy, DayOfWeek, Place, Programme};
use mskflow_events::types::{ContactMode, FcpPriority};
use mskflow_scheduling::domain::ClassSpec;
use mskflow_scheduling::service::SlotSpec;
use mskflow_scheduling::{
    DomainError, EpisodeStatus, Policy, Rejection, Scheduling, WaitingFilter,
};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Fixture {
    scheduling: Arc<Scheduling>,
    store: SqliteEventLog,
    counting: Arc<CountingConflicts>,
    dir: tempfile::TempDir,
}

/// Where the tests keep the waiting list: beside the event file.
fn projections(dir: &tempfile::TempDir) -> mskflow_projection::Options {
    mskflow_projection::Options::in_dir(dir.path().join("projections"))
}

async fn open(dir: tempfile::TempDir) -> Result<Fixture, BoxError> {
    let store = open_store(dir.path())?;
    let counting = Arc::new(CountingConflicts {
        inner: store.clone(),
        conflicts: AtomicU64::new(0),
    });
    let log: Arc<dyn EventLog> = counting.clone();
    let scheduling = Arc::new(
        Scheduling::open(
            log,
            Policy::default(),
            Arc::new(FixedClock),
            &projections(&dir),
        )
        .await?,
    );
    Ok(Fixture {
        scheduling,
        store,
        counting,
        dir,
    })
}

async fn fixture() -> Result<Fixture, BoxError> {
    let f = open(tempfile::tempdir()?).await?;
    for venue in ["leeds-central", "bradford"] {
        f.scheduling
            .register_venue(venue.to_owned(), format!("{venue} clinic"))
            .await??;
    }
    Ok(f)
}

/// Schedule an ESCAPE-pain class, Mondays and Thursdays at 10:00.
async fn class(s: &Scheduling, venue: &str, capacity: u32) -> Result<Uuid, BoxError> {
    let class_id = Uuid::new_v4();
    s.schedule_class(ClassSpec {
        class_id,
        programme: Programme::EscapePain,
        venue_id: venue.to_owned(),
        days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
        start_time: NaiveTime::from_hms_opt(10, 0, 0).ok_or("time")?,
        duration_minutes: 60,
        capacity: Some(capacity),
        start_date: start_date(),
        sessions: None,
    })
    .await??;
    Ok(class_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_for_the_last_place_exactly_one_wins_100_times() -> TestResult {
    const RACERS: usize = 6;
    let f = fixture().await?;
    for round in 0..100 {
        let class_id = class(&f.scheduling, "leeds-central", 2).await?;
        // One place taken already: one left.
        let first = escape_pain_patient(FcpPriority::Routine, january(1));
        let first_id = first.referral_id;
        f.scheduling.add_to_waiting_list(first).await??;
        f.scheduling.book_class(first_id, class_id).await??;

        let mut racers = Vec::with_capacity(RACERS);
        for _ in 0..RACERS {
            let p = escape_pain_patient(FcpPriority::Routine, january(2));
            racers.push(p.referral_id);
            f.scheduling.add_to_waiting_list(p).await??;
        }
        let tasks: Vec<_> = racers
            .iter()
            .map(|referral_id| {
                let s = Arc::clone(&f.scheduling);
                let referral_id = *referral_id;
                tokio::spawn(async move { s.book_class(referral_id, class_id).await })
            })
            .collect();
        let mut won = Vec::new();
        for (task, referral_id) in tasks.into_iter().zip(&racers) {
            match task.await?? {
                Ok(state) => {
                    assert_eq!(state.status, Some(EpisodeStatus::Booked));
                    won.push(*referral_id);
                }
                Err(Rejection::Domain(DomainError::ClassFull { capacity: 2, .. })) => {}
                Err(other) => return Err(format!("round {round}: unexpected {other:?}").into()),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: winners {won:?}");
        let state = f.scheduling.class(class_id).await?.ok_or("no class")?;
        assert_eq!(state.enrolled.len(), 2, "round {round}");
        assert!(state.enrolled.contains(&first_id) && state.enrolled.contains(&won[0]));
        // The losers are still waiting, with no sessions.
        for loser in racers.iter().filter(|r| **r != won[0]) {
            let e = f.scheduling.episode(*loser).await?.ok_or("no episode")?;
            assert_eq!(e.status, Some(EpisodeStatus::Waiting));
            assert!(e.sessions.is_empty());
        }
    }
    // The racers really did collide on the class stream: appends were
    // refused for a stale version and retried.
    let conflicts = f.counting.conflicts.load(Ordering::Relaxed);
    assert!(conflicts > 0, "no append race happened in 100 rounds");
    println!("append conflicts over 100 rounds: {conflicts}");
    f.store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_booking_the_same_class_twice_at_once_keeps_one_place() -> TestResult {
    let f = fixture().await?;
    for round in 0..20 {
        let class_id = class(&f.scheduling, "leeds-central", 3).await?;
        let p = escape_pain_patient(FcpPriority::Routine, january(1));
        let id = p.referral_id;
        f.scheduling.add_to_waiting_list(p).await??;
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let s = Arc::clone(&f.scheduling);
                tokio::spawn(async move { s.book_class(id, class_id).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            if task.await??.is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1, "round {round}");
        let class = f.scheduling.class(class_id).await?.ok_or("no class")?;
        assert_eq!(
            class.enrolled.iter().copied().collect::<Vec<_>>(),
            vec![id],
            "round {round}"
        );
        let episode = f.scheduling.episode(id).await?.ok_or("no episode")?;
        assert_eq!(episode.status, Some(EpisodeStatus::Booked));
        assert_eq!(episode.sessions.len(), 12);
    }
    f.store.close().await;
    Ok(())
}

#[tokio::test]
async fn the_waiting_list_is_ordered_by_priority_then_time_waited() -> TestResult {
    let f = fixture().await?;
    let patients = [
        (FcpPriority::Routine, 2),
        (FcpPriority::Urgent, 20),
        (FcpPriority::Soon, 5),
        (FcpPriority::Routine, 1),
        (FcpPriority::Urgent, 10),
    ];
    let mut ids = Vec::new();
    for (priority, day) in patients {
        let p = escape_pain_patient(priority, january(day));
        ids.push(p.referral_id);
        f.scheduling.add_to_waiting_list(p).await??;
    }
    let list = f
        .scheduling
        .waiting_list(WaitingFilter::default())
        .await??;
    let order: Vec<Uuid> = list.iter().map(|w| w.referral_id).collect();
    assert_eq!(order, vec![ids[4], ids[1], ids[2], ids[3], ids[0]]);
    f.store.close().await;
    Ok(())
}

#[tokio::test]
async fn offers_respect_choice_and_a_decline_keeps_the_wait() -> TestResult {
    let f = fixture().await?;
    let bradford_class = class(&f.scheduling, "bradford", 10).await?;
    let leeds_class = class(&f.scheduling, "leeds-central", 10).await?;

    let mut leeds_only = escape_pain_patient(FcpPriority::Routine, january(3));
    leeds_only.choices.venue_ids = vec!["leeds-central".to_owned()];
    let mut tuesdays = escape_pain_patient(FcpPriority::Routine, january(4));
    tuesdays.choices.days = vec![DayOfWeek::Tuesday];
    let anywhere = escape_pain_patient(FcpPriority::Routine, january(5));
    let (leeds_id, tuesday_id, anywhere_id) = (
        leeds_only.referral_id,
        tuesdays.referral_id,
        anywhere.referral_id,
    );
    for p in [leeds_only, tuesdays, anywhere] {
        f.scheduling.add_to_waiting_list(p).await??;
    }

    // Who the Bradford class suits: not the Leeds-only or Tuesday patient.
    let suited = f
        .scheduling
        .waiting_list(WaitingFilter {
            programme: None,
            place: Some(Place::Class {
                class_id: bradford_class,
            }),
        })
        .await??;
    assert_eq!(
        suited.iter().map(|w| w.referral_id).collect::<Vec<_>>(),
        vec![anywhere_id]
    );
    assert_eq!(
        f.scheduling
            .make_offer(
                leeds_id,
                Place::Class {
                    class_id: bradford_class
                }
            )
            .await?,
        Err(Rejection::Domain(DomainError::ChoiceNotMet))
    );
    assert_eq!(
        f.scheduling.book_class(tuesday_id, leeds_class).await?,
        Err(Rejection::Domain(DomainError::ChoiceNotMet))
    );
    // The refused booking took no place.
    let leeds = f.scheduling.class(leeds_class).await?.ok_or("no class")?;
    assert!(leeds.enrolled.is_empty());

    // Offered, off the list; declined, back at the head with the same wait.
    let offered = f
        .scheduling
        .make_offer(
            leeds_id,
            Place::Class {
                class_id: leeds_class,
            },
        )
        .await??;
    let offer = offered.offer.ok_or("no offer")?;
    let list = f
        .scheduling
        .waiting_list(WaitingFilter::default())
        .await??;
    assert_eq!(
        list.iter().map(|w| w.referral_id).collect::<Vec<_>>(),
        vec![tuesday_id, anywhere_id]
    );
    let declined = f
        .scheduling
        .respond_to_offer(leeds_id, offer.offer_id, false)
        .await??;
    assert_eq!(declined.status, Some(EpisodeStatus::Waiting));
    let list = f
        .scheduling
        .waiting_list(WaitingFilter::default())
        .await??;
    assert_eq!(
        list.iter().map(|w| w.referral_id).collect::<Vec<_>>(),
        vec![leeds_id, tuesday_id, anywhere_id]
    );
    assert_eq!(list[0].need_recorded_at, january(3));

    // Offered again, accepted, booked.
    let offer = f
        .scheduling
        .make_offer(
            leeds_id,
            Place::Class {
                class_id: leeds_class,
            },
        )
        .await??
        .offer
        .ok_or("no offer")?;
    f.scheduling
        .respond_to_offer(leeds_id, offer.offer_id, true)
        .await??;
    let booked = f.scheduling.book_class(leeds_id, leeds_class).await??;
    assert_eq!(booked.sessions.len(), 12);

    // The waiting list survives a restart.
    f.store.close().await;
    let f = open(f.dir).await?;
    let list = f
        .scheduling
        .waiting_list(WaitingFilter::default())
        .await??;
    assert_eq!(
        list.iter().map(|w| w.referral_id).collect::<Vec<_>>(),
        vec![tuesday_id, anywhere_id]
    );
    f.store.close().await;
    Ok(())
}

#[tokio::test]
async fn two_dnas_discharge_tell_the_referrer_and_free_the_place() -> TestResult {
    let f = fixture().await?;
    let class_id = class(&f.scheduling, "leeds-central", 1).await?;
    let p = escape_pain_patient(FcpPriority::Soon, january(1));
    let id = p.referral_id;
    f.scheduling.add_to_waiting_list(p).await??;
    f.scheduling.book_class(id, class_id).await??;
    assert_eq!(
        f.scheduling
            .class(class_id)
            .await?
            .ok_or("no class")?
            .places_left(),
        0
    );
    f.scheduling.record_attendance(id, 1, false).await??;
    f.scheduling
        .cancel_session(id, 2, CancelledBy::Service)
        .await??;
    let state = f.scheduling.record_attendance(id, 3, false).await??;
    assert_eq!(state.status, Some(EpisodeStatus::Discharged));
    assert_eq!((state.missed, state.cancelled), (2, 1));
    assert!(state.discharge.as_ref().is_some_and(|d| d.notify_referrer));
    // The place went back to the class.
    assert_eq!(
        f.scheduling
            .class(class_id)
            .await?
            .ok_or("no class")?
            .places_left(),
        1
    );
    f.store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_cancelled_one_to_one_slot_is_freed_and_the_patient_rebooked() -> TestResult {
    let f = fixture().await?;
    let mut slots = Vec::new();
    for day in [5, 9] {
        let starts_at = chrono::NaiveDate::from_ymd_opt(2026, 3, day)
            .and_then(|d| d.and_hms_opt(14, 0, 0))
            .ok_or("date")?;
        let slot = f
            .scheduling
            .publish_slot(SlotSpec {
                slot_id: Uuid::new_v4(),
                clinician: "physio-17".to_owned(),
                venue_id: "leeds-central".to_owned(),
                starts_at,
                ends_at: starts_at + chrono::Duration::minutes(30),
                mode: ContactMode::Telephone,
            })
            .await??;
        slots.push(slot.slot.ok_or("no slot")?.slot_id);
    }
    let mut p = escape_pain_patient(FcpPriority::Routine, january(1));
    p.programme = Programme::OneToOne;
    p.sessions = 1;
    let id = p.referral_id;
    f.scheduling.add_to_waiting_list(p).await??;
    f.scheduling.book_slot(id, slots[0]).await??;
    // Someone else cannot take it.
    let mut other = escape_pain_patient(FcpPriority::Routine, january(2));
    other.programme = Programme::OneToOne;
    let other_id = other.referral_id;
    f.scheduling.add_to_waiting_list(other).await??;
    assert_eq!(
        f.scheduling.book_slot(other_id, slots[0]).await?,
        Err(Rejection::Domain(DomainError::SlotTaken {
            slot_id: slots[0]
        }))
    );
    // The patient cancels; the slot is free again and they re-book.
    f.scheduling
        .cancel_session(id, 1, CancelledBy::Patient)
        .await??;
    let freed = f.scheduling.slot(slots[0]).await?.ok_or("no slot")?;
    assert_eq!(freed.booked_by, None);
    let rebooked = f.scheduling.book_slot(id, slots[1]).await??;
    assert_eq!(rebooked.sessions.len(), 2);
    let done = f.scheduling.record_attendance(id, 2, true).await??;
    assert_eq!(done.status, Some(EpisodeStatus::Completed));
    f.store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_class_needs_a_registered_venue() -> TestResult {
    let f = fixture().await?;
    let result = f
        .scheduling
        .schedule_class(ClassSpec {
            class_id: Uuid::new_v4(),
            programme: Programme::EscapePain,
            venue_id: "nowhere".to_owned(),
            days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
            start_time: NaiveTime::from_hms_opt(10, 0, 0).ok_or("time")?,
            duration_minutes: 60,
            capacity: None,
            start_date: start_date(),
            sessions: None,
        })
        .await?;
    assert!(matches!(
        result,
        Err(Rejection::Domain(DomainError::NotFound {
            what: "venue",
            ..
        }))
    ));
    f.store.close().await;
    Ok(())
}
