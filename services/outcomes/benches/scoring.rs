//! QuestionnaireResponses scored per second: pure scoring, and through the
//! application service (score + append to a temporary SQLite store).
//!
//! `cargo bench -p mskflow-outcomes --bench scoring`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use mskflow_eventlog::EventLog;
use mskflow_eventlog_sqlite::SqliteEventLog;
use mskflow_events::outcomes::{Measure, Timepoint};
use mskflow_outcomes::scoring::{self, answers_in_order};
use mskflow_outcomes::{LicensedTexts, Outcomes, Policy, Submission, SystemClock, ValueSet};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn pure(value_set: &ValueSet, n: u32) -> Result<(), BoxError> {
    let inputs = [
        (
            Measure::MskHq,
            answers_in_order(Measure::MskHq, &[4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1]),
        ),
        (
            Measure::StartBack,
            answers_in_order(Measure::StartBack, &[1, 0, 1, 0, 1, 0, 1, 0, 4]),
        ),
        (
            Measure::Eq5d5l,
            answers_in_order(Measure::Eq5d5l, &[1, 2, 3, 4, 5, 60]),
        ),
        (
            Measure::Psfs,
            answers_in_order(Measure::Psfs, &[3, 5, 7, 9, 2]),
        ),
    ];
    for (measure, answers) in &inputs {
        let started = Instant::now();
        for _ in 0..n {
            black_box(scoring::score(*measure, black_box(answers), value_set)?);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "pure scoring     {:<10} {n:>7} responses in {secs:>6.3}s = {:>10.0} responses/s",
            measure.code(),
            f64::from(n) / secs
        );
    }
    Ok(())
}

async fn through_service(concurrency: usize, n: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let store = SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: dir.path().join("bench.db"),
        ..mskflow_eventlog_sqlite::Options::default()
    })?;
    let log: Arc<dyn EventLog> = Arc::new(store.clone());
    let outcomes = Arc::new(
        Outcomes::open(
            log,
            Policy::default(),
            ValueSet::england(),
            LicensedTexts::none(),
            Arc::new(SystemClock),
            &mskflow_projection::Options::in_dir(dir.path().join("projections")),
        )
        .await?,
    );
    let answers = answers_in_order(Measure::MskHq, &[2; 14]);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let outcomes = Arc::clone(&outcomes);
        let answers = answers.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / concurrency {
                outcomes
                    .submit(Submission {
                        referral_id: Uuid::new_v4(),
                        response_id: Uuid::new_v4(),
                        measure: Measure::MskHq,
                        timepoint: Timepoint::FirstContact,
                        answers: answers.clone(),
                        correlation_id: None,
                        traceparent: None,
                    })
                    .await?
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = (n / concurrency) * concurrency;
    println!(
        "through service  msk-hq     {done:>7} responses in {secs:>6.3}s = {:>10.0} responses/s ({concurrency} concurrent callers, SQLite, durable)",
        done as f64 / secs
    );
    store.close().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let value_set = ValueSet::england();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not,
    // and then a short smoke run is enough.
    let scale = if std::env::args().any(|a| a == "--bench") {
        1
    } else {
        100
    };
    pure(&value_set, 200_000 / scale)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        through_service(1, 2_000 / scale as usize).await?;
        through_service(32, 20_000 / scale as usize).await
    })
}
