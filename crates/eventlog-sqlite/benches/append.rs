//! Append throughput of the embedded store with 1, 16 and 64 concurrent
//! writers, on a temporary file with the production settings (WAL,
//! `synchronous=FULL`, group commit).
//!
//! Run: `cargo bench -p mskflow-eventlog-sqlite --bench append`
//! (`MSKFLOW_BENCH_SECS` sets the seconds per case, default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent};
use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
use uuid::Uuid;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A payload of about the size of a triaged referral event.
fn payload(n: u64) -> serde_json::Value {
    serde_json::json!({
        "referral_id": Uuid::new_v4(),
        "pathway": "back_and_radicular_pain",
        "priority": "routine",
        "rule_version": "2026-01",
        "findings": [
            {"code": "no-red-flags", "system": "https://fhir.mskflow.org/CodeSystem/msk-red-flag"}
        ],
        "start_back": {"total": 3, "psychosocial": 1, "risk": "low"},
        "sequence_hint": n,
        "padding": "x".repeat(256),
    })
}

struct Figures {
    appends: u64,
    elapsed: Duration,
    commits: u64,
    latencies: Vec<Duration>,
}

async fn run(writers: usize, duration: Duration) -> BenchResult<Figures> {
    let dir = tempfile::tempdir()?;
    let log = Arc::new(SqliteEventLog::open(Options {
        path: dir.path().join("bench.db"),
        ..Options::default()
    })?);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut version = 0;
            let metadata = Metadata {
                correlation_id: Uuid::new_v4(),
                ..Metadata::default()
            };
            let stream = format!("bench-{w}");
            while Instant::now() < deadline {
                let event = NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: "ReferralTriaged".to_owned(),
                    schema_version: 1,
                    occurred_at: Utc::now(),
                    payload: payload(version),
                };
                let expected = match version {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v),
                };
                let t = Instant::now();
                version = log
                    .append(&stream, expected, vec![event], &metadata)
                    .await?
                    .version;
                latencies.push(t.elapsed());
            }
            Ok::<_, mskflow_eventlog::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let stats = log.stats();
    log.close().await;
    latencies.sort_unstable();
    Ok(Figures {
        appends: stats.appends,
        elapsed,
        commits: stats.commits,
        latencies,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() -> BenchResult<()> {
    let secs = std::env::var("MSKFLOW_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{:>7} {:>9} {:>11} {:>8} {:>10} {:>9} {:>9}",
        "writers", "appends", "appends/s", "commits", "mean batch", "p50 ms", "p99 ms"
    );
    for writers in [1, 16, 64] {
        let f = runtime.block_on(run(writers, Duration::from_secs(secs)))?;
        println!(
            "{:>7} {:>9} {:>11.0} {:>8} {:>10.1} {:>9.2} {:>9.2}",
            writers,
            f.appends,
            f.appends as f64 / f.elapsed.as_secs_f64(),
            f.commits,
            f.appends as f64 / f.commits.max(1) as f64,
            percentile(&f.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&f.latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
