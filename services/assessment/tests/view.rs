//! The read model on disk: resumed after a restart, rebuilt when deleted,
//! and a rebuild equal to the incrementally maintained one over a generated
//! caseload.

mod common;

use mskflow_projection::testing::{Rng, log_events};
use std::path::Path;
use std::sync::Arc;

use common::{BoxError, TestResult, as_log, at, consume, open_store, slot, triage};
use mskflow_assessment::projection::Dump;
use mskflow_assessment::{
    Assessment, AssessmentRecord, Policy, Status, SystemClock, WorklistEntry,
};
use mskflow_eventlog::EventLog;
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::assessment::{
    DischargeReason, DistressScreen, OnwardDestination, Outcome, Party, Slot,
};
use mskflow_events::types::{FcpPriority, Pathway};
use mskflow_projection::Opened;
use uuid::Uuid;

const PROJECTION: &str = "assessment-view";

/// The events the read model folds.
const FOLDED_EVENTS: [&str; 11] = [
    "AssessmentRequested",
    "AssessmentBooked",
    "AssessmentRescheduled",
    "AssessmentCancelled",
    "AppointmentMissed",
    "AssessmentCompleted",
    "OnwardReferralRequested",
    "EpisodeDischarged",
    "FcpSlotPublished",
    "FcpSlotBooked",
    "FcpSlotReleased",
];

fn projections(dir: &Path) -> mskflow_projection::Options {
    mskflow_projection::Options::in_dir(dir)
}

async fn open_at(store: &SqliteEventLog, dir: &Path) -> Result<Arc<Assessment>, BoxError> {
    Ok(Arc::new(
        Assessment::open(
            as_log(store),
            Policy::default(),
            Arc::new(SystemClock),
            &projections(dir),
        )
        .await?,
    ))
}

/// A caseload in progress: the referrals triaged and the slots published.
#[derive(Default)]
struct Caseload {
    referrals: Vec<Uuid>,
    slots: i64,
}

impl Caseload {
    /// A newly published slot.
    async fn new_slot(&mut self, assessment: &Assessment) -> Result<Uuid, BoxError> {
        self.slots += 1;
        let slot_id = Uuid::new_v4();
        assessment
            .publish_slots(vec![slot(slot_id, self.slots * 30)])
            .await??;
        Ok(slot_id)
    }

    /// A free slot, or a new one.
    async fn free_slot(
        &mut self,
        assessment: &Assessment,
        rng: &mut Rng,
    ) -> Result<Uuid, BoxError> {
        let free: Vec<Slot> = assessment.free_slots().await?;
        if free.is_empty() || rng.below(3) == 0 {
            return self.new_slot(assessment).await;
        }
        Ok(free[rng.below(free.len())].slot_id)
    }

    /// Run `steps` random commands, each chosen from what the episode can
    /// do now: triage (consumed into the worklist), slots published, book,
    /// reschedule, cancel, did-not-attend, assess (with onward referrals),
    /// discharge. Triage is appended to `log` as intake records it.
    /// Refusals are part of the caseload and ignored.
    async fn run(
        &mut self,
        assessment: &Arc<Assessment>,
        log: &Arc<dyn EventLog>,
        rng: &mut Rng,
        steps: usize,
    ) -> TestResult {
        for step in 0..steps {
            if self.referrals.is_empty() || rng.below(6) == 0 {
                let rid = Uuid::new_v4();
                let priority =
                    [FcpPriority::Urgent, FcpPriority::Soon, FcpPriority::Routine][rng.below(3)];
                let pathway = [Pathway::Knee, Pathway::Hip, Pathway::Shoulder][rng.below(3)];
                let minutes = i64::try_from(rng.below(600)).unwrap_or(0);
                triage(&**log, rid, priority, pathway, at(minutes)).await?;
                consume(assessment).await?;
                self.referrals.push(rid);
                continue;
            }
            let rid = self.referrals[rng.below(self.referrals.len())];
            let Some(episode) = assessment.get(rid).await? else {
                continue;
            };
            match episode.status {
                Some(Status::AwaitingBooking) => {
                    if rng.below(10) == 0 {
                        let _ = assessment
                            .cancel(rid, Party::Patient, "moved away".to_owned(), true)
                            .await?;
                    } else {
                        let slot_id = self.free_slot(assessment, rng).await?;
                        let _ = assessment.book(rid, slot_id).await?;
                    }
                }
                Some(Status::Booked) => {
                    let booked = episode.booking.as_ref().map(|b| b.slot_id);
                    match (rng.below(10), booked) {
                        (0 | 1, _) => {
                            let slot_id = self.free_slot(assessment, rng).await?;
                            let _ = assessment
                                .reschedule(rid, slot_id, Party::Service, None)
                                .await?;
                        }
                        (2, _) => {
                            let _ = assessment
                                .cancel(rid, Party::Service, "clinic closed".to_owned(), false)
                                .await?;
                        }
                        (3 | 4, Some(slot_id)) => {
                            let _ = assessment.record_missed(rid, slot_id).await?;
                        }
                        _ => {
                            let _ = assessment.complete(rid, record(rng)).await?;
                        }
                    }
                }
                Some(Status::Assessed) => {
                    let _ = assessment
                        .discharge(rid, DischargeReason::AssessmentOutcome, rng.below(2) == 0)
                        .await?;
                }
                Some(Status::Discharged) | None => {}
            }
            if step % 25 == 0 {
                assessment.worklist(None).await?;
            }
        }
        Ok(())
    }
}

fn record(rng: &mut Rng) -> AssessmentRecord {
    let outcomes = match rng.below(3) {
        0 => vec![Outcome::CommunityPhysiotherapy],
        1 => vec![Outcome::OnwardReferral {
            destination: OnwardDestination::Orthopaedics,
            reason: "consider surgery".to_owned(),
        }],
        _ => vec![Outcome::AdviceAndSelfManagement { app: None }],
    };
    AssessmentRecord {
        findings_summary: "findings".to_owned(),
        shared_decision_made: true,
        decision_aid: None,
        work_discussed: false,
        fit_note_issued: false,
        psychological_distress: DistressScreen::Negative,
        bmi: None,
        smoking_status: None,
        outcomes,
    }
}

/// What the queries answer, and the tables behind them.
#[derive(Debug, PartialEq)]
struct Answers {
    worklist: Vec<WorklistEntry>,
    knee: Vec<WorklistEntry>,
    free: Vec<Slot>,
    dump: Dump,
}

async fn answers(assessment: &Assessment) -> Result<Answers, BoxError> {
    Ok(Answers {
        worklist: assessment.worklist(None).await?,
        knee: assessment.worklist(Some(Pathway::Knee)).await?,
        free: assessment.free_slots().await?,
        dump: assessment.dump().await?,
    })
}

#[tokio::test]
async fn the_read_model_resumes_after_a_restart_reading_only_new_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("projections");
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let mut caseload = Caseload::default();
    let mut rng = Rng(0xa55e_0001);
    let assessment = open_at(&store, &ours).await?;
    caseload.run(&assessment, &log, &mut rng, 150).await?;
    let before = answers(&assessment).await?;
    assert!(!before.dump.episodes.is_empty());
    drop(assessment);

    // Reopened over the same files: the same answers, nothing replayed.
    let assessment = open_at(&store, &ours).await?;
    assert!(matches!(
        assessment.catch_up().opened,
        Opened::Resumed { .. }
    ));
    assert_eq!(assessment.catch_up().events, 0);
    assert_eq!(answers(&assessment).await?, before);
    drop(assessment);

    // Meanwhile another instance (its own projections) moves the log on.
    let (logged, _) = log_events(&store).await?;
    let other = open_at(&store, &dir.path().join("other")).await?;
    caseload.run(&other, &log, &mut rng, 60).await?;
    let expected = answers(&other).await?;
    drop(other);
    let (now_logged, _) = log_events(&store).await?;
    assert!(now_logged > logged);

    // Ours resumes after its checkpoint: it reads only the new events.
    let assessment = open_at(&store, &ours).await?;
    assert!(matches!(
        assessment.catch_up().opened,
        Opened::Resumed { .. }
    ));
    assert_eq!(assessment.catch_up().events, now_logged - logged);
    assert_eq!(answers(&assessment).await?, expected);
    drop(assessment);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_read_model_is_rebuilt_with_the_same_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("projections");
    let store = open_store(dir.path())?;
    let log = as_log(&store);
    let mut caseload = Caseload::default();
    let mut rng = Rng(0xa55e_0002);
    let assessment = open_at(&store, &ours).await?;
    caseload.run(&assessment, &log, &mut rng, 150).await?;
    let before = answers(&assessment).await?;
    drop(assessment);

    assert!(mskflow_projection::remove(&projections(&ours), PROJECTION)?);
    let assessment = open_at(&store, &ours).await?;
    assert!(matches!(
        assessment.catch_up().opened,
        Opened::Rebuilt { .. }
    ));
    assert_eq!(assessment.catch_up().events, log_events(&store).await?.0);
    assert_eq!(answers(&assessment).await?, before);
    drop(assessment);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_rebuilt_read_model_equals_the_incremental_one_over_a_generated_caseload() -> TestResult {
    for seed in [0x0a11_ce01_u64, 0x0b0b_0002] {
        let dir = tempfile::tempdir()?;
        let store = open_store(dir.path())?;
        let log = as_log(&store);
        let mut caseload = Caseload::default();
        let mut rng = Rng(seed);
        let live = open_at(&store, &dir.path().join("live")).await?;
        caseload.run(&live, &log, &mut rng, 400).await?;
        let incremental = answers(&live).await?;

        let (_, types) = log_events(&store).await?;
        for t in FOLDED_EVENTS {
            assert!(types.contains(t), "seed {seed:#x}: the caseload has no {t}");
        }

        // Built from the first event in a directory of its own.
        let rebuilt = open_at(&store, &dir.path().join("rebuilt")).await?;
        assert!(matches!(rebuilt.catch_up().opened, Opened::Rebuilt { .. }));
        assert_eq!(answers(&rebuilt).await?, incremental, "seed {seed:#x}");

        // And the worklist equals the one folded from each episode's stream.
        let mut folded = Vec::new();
        for rid in &caseload.referrals {
            if let Some(e) = live.get(*rid).await?
                && e.status == Some(Status::AwaitingBooking)
            {
                folded.push(WorklistEntry {
                    referral_id: *rid,
                    priority: e.priority.ok_or("no priority")?,
                    pathway: e.pathway.ok_or("no pathway")?,
                    triaged_at: e.triaged_at.ok_or("no triage time")?,
                    missed: e.missed,
                });
            }
        }
        folded.sort_by_key(|e| (e.priority, e.triaged_at, e.referral_id));
        assert_eq!(incremental.worklist, folded, "seed {seed:#x}");
        drop((live, rebuilt));
        store.close().await;
    }
    Ok(())
}
