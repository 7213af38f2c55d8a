//! Append throughput of the embedded store with 1, 16 and 64 concurrent
//! writers, on a temporary file with the production settings (WAL,
//! `synchronous=FULL`, group commit).
//!
//! Beside each case, its ceiling on the same disk: appending the same number
//! of bytes to a plain file and `fdatasync`ing it, one event per sync for a
//! single writer and the case's mean group-commit batch per sync otherwise.
//!
//! Run: `cargo bench -p mskflow-eventlog-sqlite --bench append`
//! (`MSKFLOW_BENCH_SECS` sets the seconds per case, default 3;
//! `MSKFLOW_BENCH_JSON=FILE` also writes the figures as JSON). Run without
//! `--bench` (as `cargo test --all-targets` does) it is a short smoke test.

use std::io::Write as _;
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

/// Bytes of one stored event: the envelope as JSON around the payload.
fn event_bytes() -> BenchResult<usize> {
    let envelope = mskflow_eventlog::Envelope {
        event_id: Uuid::new_v4(),
        stream_id: "bench-0".to_owned(),
        sequence: 1,
        position: 1,
        occurred_at: Utc::now(),
        recorded_at: Utc::now(),
        causation_id: None,
        correlation_id: Uuid::new_v4(),
        traceparent: None,
        tracestate: None,
        event_type: "ReferralTriaged".to_owned(),
        schema_version: 1,
        payload: payload(1),
    };
    Ok(serde_json::to_vec(&envelope)?.len())
}

/// The ceiling: append `batch` events' bytes to a plain file and
/// `fdatasync` it, for `duration`. Returns events per second.
fn raw_append(
    dir: &std::path::Path,
    bytes: usize,
    batch: usize,
    duration: Duration,
) -> BenchResult<f64> {
    let path = dir.join("raw.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let chunk = vec![b'x'; bytes * batch.max(1)];
    let started = Instant::now();
    let mut events = 0usize;
    while started.elapsed() < duration {
        file.write_all(&chunk)?;
        file.sync_data()?;
        events += batch.max(1);
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

#[derive(serde::Serialize)]
struct Row {
    writers: usize,
    appends_per_sec: f64,
    mean_batch: f64,
    p50_ms: f64,
    p99_ms: f64,
    event_bytes: usize,
    ceiling_appends_per_sec: f64,
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    let bench = std::env::args().any(|a| a == "--bench");
    let duration = if bench {
        Duration::from_secs(
            std::env::var("MSKFLOW_BENCH_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3),
        )
    } else {
        Duration::from_millis(100)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bytes = event_bytes()?;
    let dir = tempfile::tempdir()?;
    println!(
        "{:>7} {:>9} {:>11} {:>8} {:>10} {:>9} {:>9} {:>14}",
        "writers", "appends", "appends/s", "commits", "mean batch", "p50 ms", "p99 ms", "ceiling/s"
    );
    let mut rows = Vec::new();
    for writers in [1, 16, 64] {
        let f = runtime.block_on(run(writers, duration))?;
        let mean_batch = f.appends as f64 / f.commits.max(1) as f64;
        let ceiling = raw_append(dir.path(), bytes, mean_batch.round() as usize, duration)?;
        let row = Row {
            writers,
            appends_per_sec: f.appends as f64 / f.elapsed.as_secs_f64(),
            mean_batch,
            p50_ms: percentile(&f.latencies, 0.50).as_secs_f64() * 1e3,
            p99_ms: percentile(&f.latencies, 0.99).as_secs_f64() * 1e3,
            event_bytes: bytes,
            ceiling_appends_per_sec: ceiling,
        };
        println!(
            "{:>7} {:>9} {:>11.0} {:>8} {:>10.1} {:>9.2} {:>9.2} {:>14.0}",
            writers,
            f.appends,
            row.appends_per_sec,
            f.commits,
            mean_batch,
            row.p50_ms,
            row.p99_ms,
            ceiling,
        );
        rows.push(row);
    }
    println!(
        "(ceiling: {bytes} bytes per event appended to a plain file, fdatasync per mean batch)"
    );
    if let Ok(path) = std::env::var("MSKFLOW_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
