//! Kill a writing process with SIGKILL and check that nothing it was told
//! had been stored is missing.
//!
//! The test binary plays both parts: `acknowledged_appends_survive_sigkill`
//! runs this same executable again, restricted to `crash_writer_child` and
//! with `CHILD_ENV` naming the database, so that test becomes a writer that
//! appends forever and prints every acknowledged event id. In a normal test
//! run `crash_writer_child` returns at once.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{TestResult, event, options};
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, StartFrom};
use mskflow_eventlog_sqlite::SqliteEventLog;
use uuid::Uuid;

const CHILD_ENV: &str = "MSKFLOW_EVENTLOG_CRASH_CHILD_DB";
const WRITERS: u32 = 8;
const STREAMS_PER_WRITER: u32 = 4;

#[test]
fn crash_writer_child() -> TestResult {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let log = Arc::new(SqliteEventLog::open(options(path.as_ref()))?);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let log = Arc::clone(&log);
            writers.push(tokio::spawn(async move {
                let mut versions = [0u64; STREAMS_PER_WRITER as usize];
                for round in 0u32.. {
                    let s = (round % STREAMS_PER_WRITER) as usize;
                    let stream = format!("crash-{w}-{s}");
                    // One to three events per append.
                    let events: Vec<_> = (0..=round % 3).map(|i| event(round * 3 + i)).collect();
                    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
                    let expected = match versions[s] {
                        0 => ExpectedVersion::NoStream,
                        v => ExpectedVersion::Exact(v),
                    };
                    let appended = log
                        .append(&stream, expected, events, &Metadata::default())
                        .await?;
                    versions[s] = appended.version;
                    println!("ACK {stream} {}", ids.join(" "));
                }
                Ok::<(), mskflow_eventlog::Error>(())
            }));
        }
        for writer in writers {
            writer.await??;
        }
        Ok(())
    })
}

#[test]
fn acknowledged_appends_survive_sigkill() -> TestResult {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("child has no stdout")?;
    let collector = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });

    // Wait until the child is writing, then let it run a little.
    let started = std::time::Instant::now();
    while !path.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
    child.kill()?; // SIGKILL
    let status = child.wait()?;
    assert!(!status.success(), "the writer was killed, not finished");
    let out = collector.join().map_err(|_| "stdout reader panicked")??;
    let out = String::from_utf8(out)?;

    // Only complete lines count: the last one may have been cut by the kill.
    let complete = match out.rfind('\n') {
        Some(end) => &out[..end],
        None => "",
    };
    let mut acknowledged: Vec<(String, Uuid)> = Vec::new();
    for line in complete.lines() {
        // The test harness may print its own text before the first line.
        let Some(at) = line.find("ACK ") else {
            continue;
        };
        let mut fields = line[at + 4..].split(' ');
        let stream = fields.next().ok_or("ACK line without stream")?.to_owned();
        for id in fields {
            acknowledged.push((stream.clone(), Uuid::parse_str(id)?));
        }
    }
    assert!(
        acknowledged.len() > 10,
        "the child acknowledged only {} events",
        acknowledged.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let log = SqliteEventLog::open(options(&path))?;
        // Everything in the file, in position order.
        let mut sub = log.subscribe("crash-check", StartFrom::Beginning).await?;
        let mut all = Vec::new();
        loop {
            let batch = sub.poll_batch(1000).await?;
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }

        let mut count_by_id: HashMap<Uuid, (String, usize)> = HashMap::new();
        let mut sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for env in &all {
            count_by_id
                .entry(env.event_id)
                .or_insert_with(|| (env.stream_id.clone(), 0))
                .1 += 1;
            sequences
                .entry(env.stream_id.clone())
                .or_default()
                .push(env.sequence);
        }
        for (stream, id) in &acknowledged {
            match count_by_id.get(id) {
                Some((stored_in, 1)) => assert_eq!(stored_in, stream),
                other => panic!("acknowledged event {id} in {stream}: found {other:?}"),
            }
        }
        for (stream, seqs) in &sequences {
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, &expected, "stream {stream} has a gap or a repeat");
        }
        // The file is usable after the crash.
        let resume = sequences.get("crash-0-0").map_or(0, |s| s.len() as u64);
        let expected = match resume {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        log.append("crash-0-0", expected, vec![event(1)], &Metadata::default())
            .await?;
        eprintln!(
            "child acknowledged {} events before SIGKILL; {} events found after reopening",
            acknowledged.len(),
            all.len()
        );
        log.close().await;
        Ok(())
    })
}
