//! Class bookings per second and booking latency through the application
//! service, on a temporary SQLite store with the production settings.
//!
//! Each booking reads the episode and the class, appends the enrolment to
//! the class stream with an exact expected version (re-reading and retrying
//! when it loses a race) and appends `PlaceBooked` to the episode. Workers
//! book into the same classes at once, so races are part of the figure.
//!
//! Run: `cargo bench -p mskflow-scheduling --bench booking`
//! (`MSKFLOW_BENCH_BOOKINGS` sets the bookings per case, default 1200).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
use mskflow_events::scheduling::{DayOfWeek, PatientChoices, PatientWaitlisted, Programme};
use mskflow_events::types::{FcpPriority, Pathway};
use mskflow_scheduling::domain::ClassSpec;
use mskflow_scheduling::{Policy, Scheduling, SystemClock};
use uuid::Uuid;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CLASS_SIZE: usize = 12;

struct Figures {
    bookings: usize,
    refused: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(workers: usize, bookings: usize) -> BenchResult<Figures> {
    let dir = tempfile::tempdir()?;
    let store = SqliteEventLog::open(Options {
        path: dir.path().join("bench.db"),
        ..Options::default()
    })?;
    let scheduling = Arc::new(
        Scheduling::open(
            Arc::new(store.clone()),
            Policy::default(),
            Arc::new(SystemClock),
            &mskflow_projection::Options::in_dir(dir.path().join("projections")),
        )
        .await?,
    );
    scheduling
        .register_venue("leeds-central".to_owned(), "Leeds Central".to_owned())
        .await??;
    let classes = bookings.div_ceil(CLASS_SIZE);
    let mut class_ids = Vec::with_capacity(classes);
    for _ in 0..classes {
        let class_id = Uuid::new_v4();
        scheduling
            .schedule_class(ClassSpec {
                class_id,
                programme: Programme::EscapePain,
                venue_id: "leeds-central".to_owned(),
                days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
                start_time: NaiveTime::from_hms_opt(10, 0, 0).ok_or("time")?,
                duration_minutes: 60,
                capacity: Some(CLASS_SIZE as u32),
                start_date: NaiveDate::from_ymd_opt(2026, 3, 4).ok_or("date")?,
                sessions: None,
            })
            .await??;
        class_ids.push(class_id);
    }
    let recorded = Utc
        .with_ymd_and_hms(2026, 1, 5, 9, 0, 0)
        .single()
        .ok_or("time")?;
    let mut patients = Vec::with_capacity(bookings);
    for _ in 0..bookings {
        let referral_id = Uuid::new_v4();
        scheduling
            .add_to_waiting_list(PatientWaitlisted {
                referral_id,
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                programme: Programme::EscapePain,
                sessions: 12,
                need_recorded_at: recorded,
                choices: PatientChoices::default(),
            })
            .await??;
        patients.push(referral_id);
    }

    // Patient i goes to class i / CLASS_SIZE: every class fills exactly, and
    // consecutive patients (taken by different workers) race for it.
    let work: Arc<Vec<(Uuid, Uuid)>> = Arc::new(
        patients
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, class_ids[i / CLASS_SIZE]))
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let scheduling = Arc::clone(&scheduling);
        let work = Arc::clone(&work);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut refused = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((referral_id, class_id)) = work.get(i).copied() else {
                    break;
                };
                let t = Instant::now();
                match scheduling.book_class(referral_id, class_id).await? {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => refused += 1,
                }
            }
            Ok::<_, mskflow_scheduling::Error>((latencies, refused))
        }));
    }
    let mut latencies = Vec::with_capacity(bookings);
    let mut refused = 0;
    for task in tasks {
        let (l, r) = task.await??;
        latencies.extend(l);
        refused += r;
    }
    let elapsed = started.elapsed();
    store.close().await;
    latencies.sort_unstable();
    Ok(Figures {
        bookings: latencies.len(),
        refused,
        elapsed,
        latencies,
    })
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let bookings: usize = std::env::var("MSKFLOW_BENCH_BOOKINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not,
    // and then a short smoke run is enough.
    let bookings = if std::env::args().any(|a| a == "--bench") {
        bookings
    } else {
        bookings.min(24)
    };
    println!(
        "class bookings through the scheduling service (SQLite, WAL, synchronous=FULL), {bookings} per case, classes of {CLASS_SIZE}"
    );
    println!(
        "{:>8} {:>10} {:>9} {:>13} {:>10} {:>10} {:>10}",
        "workers", "bookings", "refused", "bookings/s", "p50 ms", "p99 ms", "max ms"
    );
    for workers in [1, 8, 32] {
        let f = run(workers, bookings).await?;
        let per_second = f.bookings as f64 / f.elapsed.as_secs_f64();
        println!(
            "{:>8} {:>10} {:>9} {:>13.0} {:>10.2} {:>10.2} {:>10.2}",
            workers,
            f.bookings,
            f.refused,
            per_second,
            percentile(&f.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&f.latencies, 0.99).as_secs_f64() * 1e3,
            f.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
        );
    }
    Ok(())
}
