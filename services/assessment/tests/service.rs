//! The assessment application service and consumer over the real embedded
//! SQLite store.

mod common;

use std::sync::Arc;

use common::{
    BoxError, TestResult, as_log, at, consume, open_assessment, open_store, slot, triage,
};
use mskflow_assessment::consumer::Handled;
use mskflow_assessment::service::{slot_stream_id, stream_id};
use mskflow_assessment::{AssessmentRecord, DomainError, Policy, Rejection, Status};
use mskflow_eventlog::{ExpectedVersion, Metadata, new_event};
use mskflow_events::assessment::{
    DecisionAid, DischargeReason, DistressScreen, FcpSlotBooked, OnwardDestination, Outcome, Party,
    SlotEvent, SmokingStatus,
};
use mskflow_events::types::{FcpPriority, Pathway};
use uuid::Uuid;

#[tokio::test]
async fn triage_becomes_one_worklist_entry_even_when_delivered_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    triage(&*log, a, FcpPriority::Soon, Pathway::Knee, at(0)).await?;
    triage(&*log, b, FcpPriority::Routine, Pathway::Hip, at(5)).await?;
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;

    // First delivery, then a "crash": no commit.
    let mut first = mskflow_assessment::consumer::open(Arc::clone(&assessment)).await?;
    let handled = first.process_available().await?;
    let requested: Vec<Uuid> = handled
        .iter()
        .filter_map(|h| match h {
            Handled::Requested { referral_id, .. } => Some(*referral_id),
            _ => None,
        })
        .collect();
    assert_eq!(requested, [a, b]);
    drop(first);

    // Redelivered from the old checkpoint: nothing new is appended.
    let mut second = mskflow_assessment::consumer::open(Arc::clone(&assessment)).await?;
    let handled = second.process_available().await?;
    let again: Vec<Uuid> = handled
        .iter()
        .filter_map(|h| match h {
            Handled::AlreadyRequested { referral_id } => Some(*referral_id),
            Handled::Requested { .. } => Some(Uuid::nil()),
            Handled::Ignored => None,
        })
        .collect();
    assert_eq!(again, [a, b], "redelivery must not open a second episode");
    second.commit().await?;
    drop(second);

    // After the commit nothing is delivered again.
    let mut third = mskflow_assessment::consumer::open(Arc::clone(&assessment)).await?;
    assert!(third.process_available().await?.is_empty());

    for id in [a, b] {
        let events = log.read_stream(&stream_id(id), 1).await?;
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["AssessmentRequested"]);
        // Traced back to the triage that caused it.
        assert!(events[0].causation_id.is_some());
    }
    let worklist = assessment.worklist(None).await?;
    assert_eq!(
        worklist.iter().map(|e| e.referral_id).collect::<Vec<_>>(),
        [a, b]
    );
    assert_eq!(worklist[0].triaged_at, at(0));
    assert_eq!(worklist[0].priority, FcpPriority::Soon);

    // The read model is rebuilt by replay after a restart.
    drop(assessment);
    store.close().await;
    let store = open_store(dir.path())?;
    let assessment = open_assessment(as_log(&store), Policy::default(), dir.path()).await?;
    assert_eq!(assessment.worklist(None).await?, worklist);
    assert_eq!(assessment.worklist(Some(Pathway::Hip)).await?.len(), 1);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn worklist_is_ordered_by_priority_then_time_waited() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    // Appended out of order on purpose.
    let cases = [
        ("routine-old", FcpPriority::Routine, 0),
        ("urgent-new", FcpPriority::Urgent, 50),
        ("soon-new", FcpPriority::Soon, 40),
        ("routine-new", FcpPriority::Routine, 30),
        ("urgent-old", FcpPriority::Urgent, 10),
        ("soon-old", FcpPriority::Soon, 20),
    ];
    let mut ids = std::collections::HashMap::new();
    for (name, priority, minutes) in cases {
        let id = Uuid::new_v4();
        ids.insert(id, name);
        triage(&*log, id, priority, Pathway::Shoulder, at(minutes)).await?;
    }
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    let order: Vec<&str> = assessment
        .worklist(None)
        .await?
        .iter()
        .filter_map(|e| ids.get(&e.referral_id).copied())
        .collect();
    assert_eq!(
        order,
        [
            "urgent-old",
            "urgent-new",
            "soon-old",
            "soon-new",
            "routine-old",
            "routine-new"
        ]
    );

    // Booked referrals leave the worklist; a DNA puts them back in place.
    let urgent_old = assessment.worklist(None).await?[0].referral_id;
    let s = Uuid::new_v4();
    assessment.publish_slots(vec![slot(s, 0)]).await??;
    assessment.book(urgent_old, s).await??;
    assert!(
        assessment
            .worklist(None)
            .await?
            .iter()
            .all(|e| e.referral_id != urgent_old)
    );
    let state = assessment.record_missed(urgent_old, s).await??;
    assert_eq!(state.status, Some(Status::AwaitingBooking));
    let first = &assessment.worklist(None).await?[0];
    assert_eq!((first.referral_id, first.missed), (urgent_old, 1));
    store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bookings_of_one_slot_never_both_succeed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let mut referrals = Vec::new();
    for i in 0..20 {
        let id = Uuid::new_v4();
        triage(&*log, id, FcpPriority::Routine, Pathway::Knee, at(i)).await?;
        referrals.push(id);
    }
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    assert_eq!(assessment.worklist(None).await?.len(), 20);

    let mut lost_races = 0_usize;
    for round in 0..100 {
        let slot_id = Uuid::new_v4();
        assessment
            .publish_slots(vec![slot(slot_id, round)])
            .await??;
        let tasks: Vec<_> = referrals
            .iter()
            .map(|&referral_id| {
                let assessment = Arc::clone(&assessment);
                tokio::spawn(async move { assessment.book(referral_id, slot_id).await })
            })
            .collect();
        let mut winners = Vec::new();
        for (task, referral_id) in futures::future::join_all(tasks)
            .await
            .into_iter()
            .zip(&referrals)
        {
            match task?? {
                Ok(state) => {
                    assert_eq!(state.status, Some(Status::Booked));
                    winners.push(*referral_id);
                }
                Err(Rejection::Conflict { .. }) => lost_races += 1,
                Err(Rejection::Slot { .. }) => {}
                Err(other) => return Err(format!("round {round}: unexpected {other:?}").into()),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let winner = winners[0];
        // The store agrees: one FcpSlotBooked, for the winner, and only the
        // winner's episode is booked.
        let slot_events = log.read_stream(&slot_stream_id(slot_id), 1).await?;
        let holders: Vec<Uuid> = slot_events
            .iter()
            .filter_map(|e| match mskflow_eventlog::decode::<SlotEvent>(e) {
                Ok(SlotEvent::FcpSlotBooked(b)) => Some(b.referral_id),
                _ => None,
            })
            .collect();
        assert_eq!(holders, [winner], "round {round}");
        assert_eq!(assessment.worklist(None).await?.len(), 19, "round {round}");
        // Put the winner back on the worklist for the next round.
        assessment
            .cancel(winner, Party::Service, "test round over".to_owned(), false)
            .await??;
        assert_eq!(
            assessment.slot(slot_id).await?.and_then(|s| s.held_by),
            None,
            "round {round}: cancelled slot released"
        );
    }
    // The bookings really raced: some lost on the optimistic check itself.
    assert!(lost_races > 0, "no booking ever lost a race");
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_slot_held_by_a_booking_that_never_reached_the_episode_is_released_on_start() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let (referral, other) = (Uuid::new_v4(), Uuid::new_v4());
    triage(&*log, referral, FcpPriority::Urgent, Pathway::Knee, at(0)).await?;
    triage(&*log, other, FcpPriority::Routine, Pathway::Knee, at(1)).await?;
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    let (held, kept) = (Uuid::new_v4(), Uuid::new_v4());
    assessment
        .publish_slots(vec![slot(held, 0), slot(kept, 60)])
        .await??;
    // A properly booked slot must survive the repair.
    assessment.book(other, kept).await??;
    // The first half of a booking, then a crash before the episode append.
    let taken = SlotEvent::FcpSlotBooked(FcpSlotBooked {
        slot_id: held,
        referral_id: referral,
    });
    log.append(
        &slot_stream_id(held),
        ExpectedVersion::Exact(1),
        vec![new_event(&taken, 1, at(0))?],
        &Metadata::default(),
    )
    .await?;
    drop(assessment);

    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    assert_eq!(assessment.slot(held).await?.and_then(|s| s.held_by), None);
    assert_eq!(
        assessment.slot(kept).await?.and_then(|s| s.held_by),
        Some(other)
    );
    let released = log.read_stream(&slot_stream_id(held), 1).await?;
    assert_eq!(
        released.last().map(|e| e.event_type.as_str()),
        Some("FcpSlotReleased")
    );
    // The patient is still waiting and the slot can be booked.
    assert_eq!(assessment.worklist(None).await?[0].referral_id, referral);
    let state = assessment.book(referral, held).await??;
    assert_eq!(state.booking.map(|b| b.slot_id), Some(held));
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn rescheduling_and_cancelling_free_the_slots_they_leave() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    triage(&*log, a, FcpPriority::Routine, Pathway::Foot, at(0)).await?;
    triage(&*log, b, FcpPriority::Routine, Pathway::Foot, at(1)).await?;
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    assessment
        .publish_slots(vec![slot(s1, 0), slot(s2, 30)])
        .await??;

    assessment.book(a, s1).await??;
    // Another patient cannot take a held slot.
    assert!(matches!(
        assessment.book(b, s1).await?,
        Err(Rejection::Slot { .. })
    ));
    // Booking the same episode twice is refused by the domain.
    assert_eq!(
        assessment.book(a, s2).await?,
        Err(Rejection::Domain(DomainError::AlreadyBooked))
    );
    let moved = assessment
        .reschedule(a, s2, Party::Patient, Some("work shift".to_owned()))
        .await??;
    assert_eq!(moved.booking.map(|s| s.slot_id), Some(s2));
    assert_eq!(assessment.slot(s1).await?.and_then(|s| s.held_by), None);
    assert_eq!(assessment.free_slots().await?.len(), 1);
    // The freed slot is bookable by someone else.
    assessment.book(b, s1).await??;
    let cancelled = assessment
        .cancel(a, Party::Patient, "unwell".to_owned(), false)
        .await??;
    assert_eq!(cancelled.status, Some(Status::AwaitingBooking));
    assert_eq!(assessment.slot(s2).await?.and_then(|s| s.held_by), None);

    // Unknowns.
    assert_eq!(
        assessment
            .book(Uuid::new_v4(), s2)
            .await?
            .err()
            .map(|r| matches!(r, Rejection::EpisodeNotFound { .. })),
        Some(true)
    );
    assert_eq!(
        assessment
            .book(a, Uuid::new_v4())
            .await?
            .err()
            .map(|r| matches!(r, Rejection::SlotNotFound { .. })),
        Some(true)
    );
    // Publishing the same slot again is a retry; changed details are not.
    assessment.publish_slots(vec![slot(s1, 0)]).await??;
    assert!(matches!(
        assessment.publish_slots(vec![slot(s1, 5)]).await?,
        Err(Rejection::Slot { .. })
    ));
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn two_dnas_discharge_and_an_orthopaedic_referral_goes_out() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let (dna, ortho) = (Uuid::new_v4(), Uuid::new_v4());
    triage(&*log, dna, FcpPriority::Routine, Pathway::Knee, at(0)).await?;
    triage(&*log, ortho, FcpPriority::Routine, Pathway::Hip, at(1)).await?;
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    let slots: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    assessment
        .publish_slots(
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| slot(*s, i as i64 * 30))
                .collect(),
        )
        .await??;

    assessment.book(dna, slots[0]).await??;
    assessment.record_missed(dna, slots[0]).await??;
    assessment.book(dna, slots[1]).await??;
    let state = assessment.record_missed(dna, slots[1]).await??;
    assert_eq!(state.status, Some(Status::Discharged));
    assert_eq!(state.discharge_reason, Some(DischargeReason::DidNotAttend));
    assert!(state.notify_referrer);
    assert!(
        assessment
            .worklist(None)
            .await?
            .iter()
            .all(|e| e.referral_id != dna)
    );
    assert_eq!(assessment.get(dna).await?.map(|s| s.missed), Some(2));

    assessment.book(ortho, slots[2]).await??;
    let state = assessment
        .complete(
            ortho,
            AssessmentRecord {
                findings_summary: "Severe hip OA, night pain, failed 6 months of physio".to_owned(),
                shared_decision_made: true,
                decision_aid: Some(DecisionAid::HipOsteoarthritis),
                work_discussed: true,
                fit_note_issued: true,
                psychological_distress: DistressScreen::Positive,
                bmi: Some(45.0),
                smoking_status: Some(SmokingStatus::Current),
                outcomes: vec![
                    Outcome::OnwardReferral {
                        destination: OnwardDestination::Orthopaedics,
                        reason: "consider total hip replacement".to_owned(),
                    },
                    Outcome::OnwardReferral {
                        destination: OnwardDestination::TalkingTherapies,
                        reason: "distress screen positive".to_owned(),
                    },
                ],
            },
        )
        .await??;
    assert_eq!(state.status, Some(Status::Assessed));
    let destinations: Vec<OnwardDestination> = state
        .onward_referrals
        .iter()
        .map(|o| o.destination)
        .collect();
    assert_eq!(
        destinations,
        [
            OnwardDestination::Orthopaedics,
            OnwardDestination::TalkingTherapies
        ]
    );
    // The patient is identified by the NHS number intake recorded.
    let sr = &state.onward_referrals[0].service_request;
    assert_eq!(sr["subject"]["identifier"]["value"], "9434765919");
    let types: Vec<String> = log
        .read_stream(&stream_id(ortho), 1)
        .await?
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        [
            "AssessmentRequested",
            "AssessmentBooked",
            "AssessmentCompleted",
            "OnwardReferralRequested",
            "OnwardReferralRequested"
        ]
    );
    let discharged = assessment
        .discharge(ortho, DischargeReason::AssessmentOutcome, true)
        .await??;
    assert_eq!(discharged.status, Some(Status::Discharged));
    store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_bookings_of_the_same_slot_leave_it_booked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let mut referrals = Vec::new();
    for i in 0..10 {
        let id = Uuid::new_v4();
        triage(&*log, id, FcpPriority::Urgent, Pathway::Hand, at(i)).await?;
        referrals.push(id);
    }
    let assessment = open_assessment(Arc::clone(&log), Policy::default(), dir.path()).await?;
    consume(&assessment).await?;
    for (round, &referral) in referrals.iter().enumerate() {
        let slot_id = Uuid::new_v4();
        assessment
            .publish_slots(vec![slot(slot_id, round as i64)])
            .await??;
        // A slot already held by this referral from an interrupted booking.
        if round % 2 == 0 {
            let taken = SlotEvent::FcpSlotBooked(FcpSlotBooked {
                slot_id,
                referral_id: referral,
            });
            log.append(
                &slot_stream_id(slot_id),
                ExpectedVersion::Exact(1),
                vec![new_event(&taken, 1, at(0))?],
                &Metadata::default(),
            )
            .await?;
        }
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let assessment = Arc::clone(&assessment);
                tokio::spawn(async move { assessment.book(referral, slot_id).await })
            })
            .collect();
        let mut ok = 0;
        for task in futures::future::join_all(tasks).await {
            match task?? {
                Ok(state) => {
                    assert_eq!(state.booking.map(|b| b.slot_id), Some(slot_id));
                    ok += 1;
                }
                Err(Rejection::Conflict { .. } | Rejection::Slot { .. }) => {}
                Err(other) => return Err(format!("round {round}: unexpected {other:?}").into()),
            }
        }
        assert!(ok >= 1, "round {round}: no booking succeeded");
        let episode = assessment.get(referral).await?.ok_or("no episode")?;
        assert_eq!(episode.booking.map(|b| b.slot_id), Some(slot_id));
        // Losing retries did not free the slot the winner booked.
        let events = log.read_stream(&slot_stream_id(slot_id), 1).await?;
        assert_eq!(
            events.last().map(|e| e.event_type.as_str()),
            Some("FcpSlotBooked"),
            "round {round}"
        );
    }
    store.close().await;
    Ok(())
}
