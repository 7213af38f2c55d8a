//! Load run: starts the all-in-one system on a fresh embedded store and posts
//! referral messages over HTTP from concurrent clients, then prints accepted
//! referrals per second and latency percentiles.
//!
//! `cargo run --release --example load -- [REFERRALS] [CONCURRENCY]`
//! (defaults 5000 and 32).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

fn referral(template: &Value) -> Value {
    let mut bundle = template.clone();
    if let Some(entries) = bundle["entry"].as_array_mut() {
        for e in entries {
            if e["resource"]["resourceType"] == "ServiceRequest" {
                e["resource"]["identifier"] = json!([{
                    "system": "https://fhir.example-gp.nhs.uk/Id/referral",
                    "value": Uuid::new_v4().to_string()
                }]);
            }
        }
    }
    bundle
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let tmp = tempfile::tempdir()?;
    let config = mskflow::Config::ephemeral(tmp.path());
    let running = mskflow::start(&config).await?;
    let base = format!("http://{}/fhir", running.gateway_addr);
    let template: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/fhir/tests/fixtures/referral-message.json"
    ))?)?;
    let bodies: Vec<String> = (0..total)
        .map(|_| referral(&template).to_string())
        .collect();
    let client = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = std::sync::Arc::new(bodies);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, next, bodies) =
            (client.clone(), base.clone(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let res = client
                    .post(format!("{base}/$process-message"))
                    .header("Content-Type", "application/fhir+json")
                    .header("X-Request-Id", Uuid::new_v4().to_string())
                    .header("X-Correlation-Id", Uuid::new_v4().to_string())
                    .body(body.clone())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed());
                    }
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!("referrals posted:   {total} ({concurrency} concurrent clients)");
    println!(
        "accepted:           {} ({failures} failed)",
        latencies.len()
    );
    println!("elapsed:            {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput:         {:.0} referrals/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    for (name, p) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)] {
        println!(
            "latency {name}:        {:.1} ms",
            percentile(&latencies, p).as_secs_f64() * 1000.0
        );
    }
    println!(
        "latency max:        {:.1} ms",
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    running.stop().await?;
    Ok(())
}
