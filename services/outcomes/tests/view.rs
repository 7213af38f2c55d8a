//! The outcomes view on disk: resumed after a restart, rebuilt when
//! deleted, and a rebuild equal to the incrementally maintained view over a
//! generated caseload.

mod common;

use mskflow_projection::testing::{Rng, log_events};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::{TestClock, TestResult, append_pathway_event, as_log, at, open_store};
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::outcomes::{Measure, Timepoint};
use mskflow_outcomes::consumer;
use mskflow_outcomes::scoring::answers_in_order;
use mskflow_outcomes::service::DueItem;
use mskflow_outcomes::view::Dump;
use mskflow_outcomes::{LicensedTexts, Outcomes, Policy, Submission, ValueSet};
use mskflow_projection::Opened;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PROJECTION: &str = "outcomes-view";

/// The outcome events the view folds.
const OUTCOME_EVENTS: [&str; 5] = [
    "QuestionnaireScheduled",
    "QuestionnaireSent",
    "QuestionnaireCompleted",
    "QuestionnaireOverdue",
    "OutcomeChangeRecorded",
];

fn projections(dir: &Path) -> mskflow_projection::Options {
    mskflow_projection::Options::in_dir(dir)
}

async fn open_at(
    store: &SqliteEventLog,
    clock: &Arc<TestClock>,
    dir: &Path,
) -> Result<Arc<Outcomes>, BoxError> {
    Ok(Arc::new(
        Outcomes::open(
            as_log(store),
            Policy::default(),
            ValueSet::england(),
            LicensedTexts::none(),
            clock.clone(),
            &projections(dir),
        )
        .await?,
    ))
}

/// A caseload in progress: the referrals and the test's clock.
struct Caseload {
    referrals: Vec<Uuid>,
    clock: Arc<TestClock>,
    now: DateTime<Utc>,
}

impl Caseload {
    fn new(clock: Arc<TestClock>) -> Self {
        let now = at(2026, 1, 5);
        clock.set(now);
        Self {
            referrals: Vec::new(),
            clock,
            now,
        }
    }

    /// Run `steps` random commands: pathway events (first contact,
    /// discharge) handled by the consumer, questionnaires sent and
    /// completed, the clock moved on and the overdue sweep run. Refusals
    /// are part of the caseload and ignored.
    async fn run(&mut self, outcomes: &Arc<Outcomes>, rng: &mut Rng, steps: usize) -> TestResult {
        let log = outcomes.log().clone();
        let mut consumer = consumer::open(outcomes.clone()).await?;
        for step in 0..steps {
            if self.referrals.is_empty() {
                self.referrals.push(Uuid::new_v4());
            }
            let rid = self.referrals[rng.below(self.referrals.len())];
            match rng.below(20) {
                0..=3 => {
                    let rid = Uuid::new_v4();
                    self.referrals.push(rid);
                    append_pathway_event(
                        &*log,
                        &format!("assessment-{rid}"),
                        "AssessmentRequested",
                        rid,
                        self.now,
                    )
                    .await?;
                    consumer.process_available().await?;
                }
                4 | 5 => {
                    let (stream, event_type) = match rng.below(3) {
                        0 => (format!("assessment-{rid}"), "EpisodeDischarged"),
                        1 => (format!("rehab-{rid}"), "RehabDischarged"),
                        _ => (format!("rehab-{rid}"), "CourseCompleted"),
                    };
                    append_pathway_event(&*log, &stream, event_type, rid, self.now).await?;
                    consumer.process_available().await?;
                }
                6..=9 => {
                    let measure = Measure::ALL[rng.below(Measure::ALL.len())];
                    let timepoint = [Timepoint::FirstContact, Timepoint::Discharge][rng.below(2)];
                    let _ = outcomes.mark_sent(rid, measure, timepoint).await?;
                }
                10..=15 => {
                    let timepoint = [Timepoint::FirstContact, Timepoint::Discharge][rng.below(2)];
                    let values: Vec<i32> = (0..14)
                        .map(|_| i32::try_from(rng.below(5)).unwrap_or(0))
                        .collect();
                    let _ = outcomes
                        .submit(Submission {
                            referral_id: rid,
                            response_id: Uuid::new_v4(),
                            measure: Measure::MskHq,
                            timepoint,
                            answers: answers_in_order(Measure::MskHq, &values),
                            correlation_id: None,
                            traceparent: None,
                        })
                        .await?;
                }
                16 | 17 => {
                    let days = i64::try_from(rng.below(20)).unwrap_or(0);
                    self.now += chrono::Duration::days(days);
                    self.clock.set(self.now);
                    outcomes.sweep_overdue().await?;
                }
                _ => {
                    outcomes.list_due(self.now, 20).await?;
                }
            }
            if step % 25 == 0 {
                outcomes.list_due(self.now, 1000).await?;
            }
        }
        consumer.process_available().await?;
        Ok(())
    }
}

/// What the queries answer, and the tables behind them.
#[derive(Debug, PartialEq)]
struct Answers {
    due_now: Vec<DueItem>,
    due_first_five: Vec<DueItem>,
    due_ever: Vec<DueItem>,
    dump: Dump,
}

async fn answers(outcomes: &Outcomes, now: DateTime<Utc>) -> Result<Answers, BoxError> {
    Ok(Answers {
        due_now: outcomes.list_due(now, 1000).await?,
        due_first_five: outcomes.list_due(now, 5).await?,
        due_ever: outcomes.list_due(at(2100, 1, 1), 100_000).await?,
        dump: outcomes.view_dump().await?,
    })
}

#[tokio::test]
async fn the_view_resumes_after_a_restart_reading_only_new_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("projections");
    let store = open_store(dir.path())?;
    let clock = TestClock::new(at(2026, 1, 5));
    let mut caseload = Caseload::new(clock.clone());
    let mut rng = Rng(0x0c0_0001);
    let outcomes = open_at(&store, &clock, &ours).await?;
    caseload.run(&outcomes, &mut rng, 150).await?;
    let before = answers(&outcomes, caseload.now).await?;
    assert!(!before.due_ever.is_empty());
    drop(outcomes);

    // Reopened over the same files: the same answers, nothing replayed.
    let outcomes = open_at(&store, &clock, &ours).await?;
    assert!(matches!(outcomes.catch_up().opened, Opened::Resumed { .. }));
    assert_eq!(outcomes.catch_up().events, 0);
    assert_eq!(answers(&outcomes, caseload.now).await?, before);
    drop(outcomes);

    // Meanwhile another instance (its own projections) moves the log on.
    let (logged, _) = log_events(&store).await?;
    let other = open_at(&store, &clock, &dir.path().join("other")).await?;
    caseload.run(&other, &mut rng, 60).await?;
    let expected = answers(&other, caseload.now).await?;
    drop(other);
    let (now_logged, _) = log_events(&store).await?;
    assert!(now_logged > logged);

    // Ours resumes after its checkpoint: it reads only the new events.
    let outcomes = open_at(&store, &clock, &ours).await?;
    assert!(matches!(outcomes.catch_up().opened, Opened::Resumed { .. }));
    assert_eq!(outcomes.catch_up().events, now_logged - logged);
    assert_eq!(answers(&outcomes, caseload.now).await?, expected);
    drop(outcomes);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_view_is_rebuilt_with_the_same_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ours = dir.path().join("projections");
    let store = open_store(dir.path())?;
    let clock = TestClock::new(at(2026, 1, 5));
    let mut caseload = Caseload::new(clock.clone());
    let mut rng = Rng(0x0c0_0002);
    let outcomes = open_at(&store, &clock, &ours).await?;
    caseload.run(&outcomes, &mut rng, 150).await?;
    let before = answers(&outcomes, caseload.now).await?;
    drop(outcomes);

    assert!(mskflow_projection::remove(&projections(&ours), PROJECTION)?);
    let outcomes = open_at(&store, &clock, &ours).await?;
    assert!(matches!(outcomes.catch_up().opened, Opened::Rebuilt { .. }));
    assert_eq!(outcomes.catch_up().events, log_events(&store).await?.0);
    assert_eq!(answers(&outcomes, caseload.now).await?, before);
    drop(outcomes);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_rebuilt_view_equals_the_incremental_one_over_a_generated_caseload() -> TestResult {
    for seed in [0x0a11_ce01_u64, 0x0b0b_0002] {
        let dir = tempfile::tempdir()?;
        let store = open_store(dir.path())?;
        let clock = TestClock::new(at(2026, 1, 5));
        let mut caseload = Caseload::new(clock.clone());
        let mut rng = Rng(seed);
        let live = open_at(&store, &clock, &dir.path().join("live")).await?;
        caseload.run(&live, &mut rng, 400).await?;
        let incremental = answers(&live, caseload.now).await?;

        let (_, types) = log_events(&store).await?;
        for t in OUTCOME_EVENTS {
            assert!(types.contains(t), "seed {seed:#x}: the caseload has no {t}");
        }

        // Built from the first event in a directory of its own.
        let rebuilt = open_at(&store, &clock, &dir.path().join("rebuilt")).await?;
        assert!(matches!(rebuilt.catch_up().opened, Opened::Rebuilt { .. }));
        assert_eq!(
            answers(&rebuilt, caseload.now).await?,
            incremental,
            "seed {seed:#x}"
        );

        // And the due list equals the one folded from each stream.
        let mut folded = Vec::new();
        for rid in &caseload.referrals {
            if let Some(state) = live.get(*rid).await? {
                folded.extend(
                    state
                        .entries
                        .values()
                        .filter(|e| {
                            e.completed.is_none() && e.due.is_some_and(|d| d <= caseload.now)
                        })
                        .map(|e| DueItem {
                            referral_id: *rid,
                            entry: e.clone(),
                        }),
                );
            }
        }
        folded.sort_by_key(|d| {
            (
                d.entry.due,
                d.referral_id,
                d.entry.measure,
                d.entry.timepoint,
            )
        });
        folded.dedup();
        assert_eq!(incremental.due_now, folded, "seed {seed:#x}");
        drop((live, rebuilt));
        store.close().await;
    }
    Ok(())
}
