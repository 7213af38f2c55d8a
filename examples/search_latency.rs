//! Search latency over a large caseload: fills a fresh embedded store with
//! referrals posted over HTTP (the whole path: FHIR parse, gRPC to intake,
//! durable append, triage), restarts the system so the gateway rebuilds its
//! views by replaying the log, then times a mix of FHIR searches over one
//! keep-alive connection and prints p50 / p99 / max per kind and the replay
//! time.
//!
//! `cargo run --release --example search_latency -- [REFERRALS] [SEARCHES]`
//! (defaults 100000 and 200 per kind). Use a separate target directory
//! (`CARGO_TARGET_DIR=...`) when another build holds the shared one.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Concurrent clients while filling the store.
const FILL_CONCURRENCY: usize = 64;

/// A valid NHS number (modulus 11) for patient `n`; numbers whose check
/// digit would be 10 are skipped.
fn nhs_number(n: u64) -> String {
    let mut k = n;
    loop {
        let digits = format!("4{:08}", k % 100_000_000);
        let sum: u32 = digits
            .bytes()
            .zip((2..=10).rev())
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        match 11 - sum % 11 {
            11 => return format!("{digits}0"),
            10 => k += 50_000_017,
            c => return format!("{digits}{c}"),
        }
    }
}

/// The `i`th referral: its own identifier, a patient shared with about one
/// in five other referrals, an authored date spread over two years, and a
/// mix of priorities.
fn referral(template: &Value, i: u64, patients: u64) -> (String, Value) {
    let nhs = nhs_number(i % patients);
    let authored = chrono::NaiveDate::from_ymd_opt(2025, 1, 1)
        .unwrap_or_default()
        .checked_add_days(chrono::Days::new(i * 7 % 730))
        .unwrap_or_default();
    let mut bundle = template.clone();
    if let Some(entries) = bundle["entry"].as_array_mut() {
        for e in entries {
            let r = &mut e["resource"];
            match r["resourceType"].as_str() {
                Some("MessageHeader") => r["id"] = json!(Uuid::new_v4().to_string()),
                Some("ServiceRequest") => {
                    r["identifier"] = json!([{
                        "system": "https://fhir.example-gp.nhs.uk/Id/referral",
                        "value": Uuid::new_v4().to_string()
                    }]);
                    r["authoredOn"] = json!(format!("{authored}T09:30:00+00:00"));
                    r["priority"] = json!(["routine", "routine", "urgent"][(i % 3) as usize]);
                }
                Some("Patient") => {
                    r["identifier"] = json!([{"system": NHS_NUMBER_SYSTEM, "value": nhs}]);
                }
                _ => {}
            }
        }
    }
    (nhs, bundle)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn client_for(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse()?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(FILL_CONCURRENCY)
        .build()?)
}

/// Post `total` referrals; the referral ids and NHS numbers accepted.
async fn fill(
    base: &str,
    token: Option<&str>,
    total: u64,
) -> anyhow::Result<Vec<(String, String)>> {
    let template: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/fhir/tests/fixtures/referral-message.json"
    ))?)?;
    let patients = (total * 4 / 5).max(1);
    let client = client_for(token)?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let template = std::sync::Arc::new(template);
    let mut tasks = Vec::new();
    for _ in 0..FILL_CONCURRENCY {
        let (client, base, next, template) = (
            client.clone(),
            base.to_owned(),
            next.clone(),
            template.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let (nhs, body) = referral(&template, i, patients);
                let res = client
                    .post(format!("{base}/$process-message"))
                    .header("Content-Type", "application/fhir+json")
                    .header("X-Request-Id", Uuid::new_v4().to_string())
                    .header("X-Correlation-Id", Uuid::new_v4().to_string())
                    .body(body.to_string())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        let id = r
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|l| l.rsplit('/').next())
                            .map(str::to_owned);
                        let _ = r.bytes().await;
                        if let Some(id) = id {
                            accepted.push((id, nhs));
                        }
                    }
                    Ok(r) => {
                        if failed == 0 {
                            eprintln!(
                                "refused: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                        failed += 1;
                    }
                    Err(e) => {
                        if failed == 0 {
                            eprintln!("failed: {e}");
                        }
                        failed += 1;
                    }
                }
            }
            (accepted, failed)
        }));
    }
    let mut accepted = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (a, f) = t.await?;
        accepted.extend(a);
        failed += f;
    }
    if failed > 0 {
        eprintln!("{failed} referrals were not accepted");
    }
    Ok(accepted)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let per_kind: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let tmp = tempfile::tempdir()?;
    let config = mskflow::Config::ephemeral(tmp.path());

    // Fill.
    let running = mskflow::start(&config).await?;
    let base = format!("http://{}/fhir", running.gateway_addr);
    let started = Instant::now();
    let referrals = fill(&base, running.dev_token.as_deref(), total).await?;
    let filled = started.elapsed();
    println!(
        "referrals accepted:  {} of {total} in {:.1} s ({:.0}/s)",
        referrals.len(),
        filled.as_secs_f64(),
        referrals.len() as f64 / filled.as_secs_f64()
    );
    running.stop().await?;

    // Restart: the gateway replays the whole log into its views.
    let started = Instant::now();
    let running = mskflow::start(&config).await?;
    let base = format!("http://{}/fhir", running.gateway_addr);
    let client = client_for(running.dev_token.as_deref())?;
    let health = format!("http://{}/health/ready", running.gateway_addr);
    loop {
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the gateway did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = started.elapsed();
    let (_, head) = client
        .get(format!("{base}/Task?_summary=count"))
        .send()
        .await?
        .json::<Value>()
        .await
        .map(|v| ((), v["total"].clone()))?;
    println!(
        "replay to ready:     {:.2} s (start-up, then views rebuilt from the log; Task total {head})",
        replay.as_secs_f64()
    );

    // Searches, one keep-alive connection, one at a time.
    anyhow::ensure!(!referrals.is_empty(), "no referral was accepted");
    let pick = |k: usize| &referrals[(k * 7919) % referrals.len()];
    type Query<'a> = Box<dyn Fn(usize) -> String + 'a>;
    let kinds: Vec<(&str, Query<'_>)> = vec![
        (
            "Task/{id} (read)",
            Box::new(move |k| format!("Task/{}", pick(k).0)),
        ),
        (
            "Task?focus=ServiceRequest/{id}",
            Box::new(move |k| format!("Task?focus=ServiceRequest/{}", pick(k).0)),
        ),
        (
            "ServiceRequest?patient:identifier=",
            Box::new(move |k| {
                format!(
                    "ServiceRequest?patient:identifier={NHS_NUMBER_SYSTEM}%7C{}",
                    pick(k).1
                )
            }),
        ),
        (
            "Patient?identifier=",
            Box::new(move |k| format!("Patient?identifier={NHS_NUMBER_SYSTEM}%7C{}", pick(k).1)),
        ),
        (
            "Task?status=accepted&_count=50",
            Box::new(|k| format!("Task?status=accepted&_count=50&_offset={}", (k % 4) * 50)),
        ),
        (
            "ServiceRequest?status=active&_count=50",
            Box::new(|_| "ServiceRequest?status=active&_count=50".to_owned()),
        ),
        (
            "ServiceRequest?authored=ge..&authored=lt..&_sort=-authored",
            Box::new(|k| {
                let month = k % 24;
                let (y, m) = (2025 + month / 12, month % 12 + 1);
                let (y2, m2) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                format!(
                    "ServiceRequest?authored=ge{y}-{m:02}-01&authored=lt{y2}-{m2:02}-01&_sort=-authored&_count=50"
                )
            }),
        ),
    ];
    println!(
        "searches over {} referrals, {per_kind} of each, one keep-alive client:",
        referrals.len()
    );
    println!(
        "  {:<60} {:>9} {:>9} {:>9} {:>8}",
        "search", "p50 ms", "p99 ms", "max ms", "matches"
    );
    for (name, query) in &kinds {
        let mut latencies = Vec::with_capacity(per_kind);
        let mut matches = 0u64;
        for k in 0..per_kind {
            let url = format!("{base}/{}", query(k));
            let t = Instant::now();
            let res = client.get(&url).send().await?;
            let status = res.status();
            let body: Value = res.json().await?;
            latencies.push(t.elapsed());
            anyhow::ensure!(status.is_success(), "{url}: {status} {body}");
            matches += body["total"].as_u64().unwrap_or(1);
        }
        latencies.sort();
        println!(
            "  {name:<60} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
            matches / per_kind as u64
        );
    }
    running.stop().await?;
    Ok(())
}
