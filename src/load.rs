//! `mskflow load`: post generated referral messages over HTTP and report
//! throughput and latency.
//!
//! Two ways to drive the load:
//!
//! * as fast as possible (closed loop): `--concurrency` clients on keep-alive
//!   connections each post the next referral as soon as the previous one is
//!   answered; latency runs from the send to the answer;
//! * at a fixed rate (open loop, `--rate N/s`): referral `i` is due at
//!   `start + i / N`; latency runs from that intended send time, so a
//!   stalled server is charged for the requests it held up (no coordinated
//!   omission).
//!
//! Against `--url` (a running gateway) or, by default, against the whole
//! system started in this process on a temporary data directory. With
//! `--end-to-end` (in-process only) it also measures how long after the 2xx
//! the referral's triage decision (`ReferralTriaged`, `ReferralRedirected` or
//! `ReferralRejected`) becomes visible on the analysts' stream: read through
//! a subscription of the log and converted by
//! [`mskflow_analytics::to_analyst_event`].
//!
//! Latencies go into HDR histograms (microsecond resolution, three
//! significant figures). `--json FILE` writes the [`Report`].

pub mod referrals;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use mskflow_eventlog::{EventLog, StartFrom};
use serde::Serialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use referrals::Generator;

/// Options of `mskflow load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base FHIR URL of a running gateway (e.g. http://127.0.0.1:8080/fhir).
    /// Repeat it (or separate with commas) to spread the clients over
    /// several gateways: client `i` posts to URL `i mod n`. Default: start
    /// every service in this process on a temporary directory.
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// Bearer token for --url (otherwise MSKFLOW_LOAD_TOKEN). The in-process
    /// system gets its own key and signs one token per sending practice.
    #[arg(long, env = "MSKFLOW_LOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --url: the gateways' shared HS256 secret (the file their
    /// `--auth-hs256-secret-file` names); one token per sending practice is
    /// signed with it, as in-process, instead of --token.
    #[arg(long, conflicts_with = "token")]
    pub hs256_secret_file: Option<PathBuf>,
    /// Sending practice (ODS code) of every referral; must be the token's
    /// organisation. Default with --url: A81001.
    #[arg(long)]
    pub ods: Option<String>,
    /// Referrals to post (default 5000, or rate x duration with --rate).
    #[arg(long, short = 'n')]
    pub referrals: Option<u64>,
    /// Concurrent HTTP clients (keep-alive connections).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Fixed arrival rate, e.g. `1000/s` (open loop). Default: as fast as
    /// the clients can go.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Seconds to run at `--rate` (when --referrals is not given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Also measure from the 2xx to the triage decision on the analysts'
    /// stream (in-process only).
    #[arg(long)]
    pub end_to_end: bool,
    /// After the run, replay the whole log into fresh gateway views and
    /// report events/s (in-process only).
    #[arg(long)]
    pub replay: bool,
    /// Process whose resident memory to report (default: this process when
    /// in-process, none with --url).
    #[arg(long)]
    pub rss_pid: Option<u32>,
    /// Seed of the referral mix (the same seed gives the same referrals).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After the referrals, post one MSK-HQ QuestionnaireResponse (first
    /// contact) per accepted referral to `POST /fhir/QuestionnaireResponse`
    /// (scored by the outcomes service, durably recorded) and report how
    /// many were scored per second.
    #[arg(long)]
    pub questionnaires: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Sample the process's resident memory and open file descriptors every
    /// this many seconds during the run (soak runs); 0 = only at the end.
    #[arg(long, default_value_t = 0.0)]
    pub sample_every: f64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s").trim();
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "rate must be a positive number per second, e.g. 1000/s (got {s})"
        )),
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Replay of the whole log into fresh gateway views.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
}

/// A read model kept on disk, rebuilt from the log after the run.
#[derive(Debug, Clone, Serialize)]
pub struct Rebuild {
    pub name: String,
    pub events: u64,
    pub folded: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
}

/// The in-process system stopped after the run and started again on the
/// same data directory.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// From the start call to every service ready (the gateway serving).
    pub seconds_to_ready: f64,
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `max` (closed loop) or `rate` (open loop).
    pub mode: &'static str,
    /// `in-process` or the URL.
    pub target: String,
    pub target_rate: Option<f64>,
    pub concurrency: usize,
    pub referrals: u64,
    pub accepted: u64,
    pub failed: u64,
    /// Status codes (or `error`) of failed requests, with counts.
    pub failures: HashMap<String, u64>,
    pub seconds: f64,
    /// Accepted referrals per second of the run.
    pub throughput: f64,
    /// 2xx latency (open loop: from the intended send time).
    pub latency_ms: Percentiles,
    /// From the 2xx to the triage decision on the analysts' stream.
    pub end_to_end_ms: Option<Percentiles>,
    /// Resident memory at the end (MiB), and its peak.
    pub rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub replay: Option<Replay>,
    /// With `--replay`: the restart on the same data, and each read model
    /// kept on disk rebuilt from the log.
    pub restart: Option<Restart>,
    pub rebuilds: Vec<Rebuild>,
    /// Resident memory and open file descriptors during the run
    /// (`--sample-every`), the first taken before the first request.
    pub samples: Vec<Sample>,
    /// The QuestionnaireResponse phase (`--questionnaires`).
    pub questionnaires: Option<QuestionnaireRun>,
    /// The generated mix: red flags and STarT Back risks.
    pub red_flags: u64,
    pub start_back: HashMap<String, u64>,
}

/// One bearer token per sending practice (or only `ods`), signed with the
/// gateways' HS256 secret.
fn practice_tokens(secret: &[u8], ods: Option<&str>) -> anyhow::Result<HashMap<String, String>> {
    let codes: Vec<String> = match ods {
        Some(o) => vec![o.to_owned()],
        None => (0..referrals::PRACTICES)
            .map(Generator::practice_code)
            .collect(),
    };
    let mut tokens = HashMap::new();
    for ods in codes {
        let claims =
            mskflow_gateway::auth::TokenClaims::new("mskflow-load", &ods, "system/*.*", 86_400);
        let token = mskflow_gateway::auth::sign_hs256(secret, &claims)?;
        tokens.insert(ods, token);
    }
    Ok(tokens)
}

/// An HS256 secret file as the gateway reads it (one trailing newline is
/// not part of the secret).
fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut secret =
        std::fs::read(path).with_context(|| format!("reading the secret {}", path.display()))?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
    }
    anyhow::ensure!(
        secret.len() >= 32,
        "the HS256 secret in {} is shorter than 32 bytes",
        path.display()
    );
    Ok(secret)
}

/// POST a FHIR JSON body with fresh request and correlation ids, and the
/// practice's token when there is one.
async fn post_fhir(
    client: &reqwest::Client,
    url: &str,
    token: Option<&String>,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    let mut req = client.post(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .body(body)
        .send()
        .await
}

/// The QuestionnaireResponse phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionnaireRun {
    pub posted: u64,
    /// Answered 201: scored and recorded.
    pub scored: u64,
    pub failed: u64,
    pub failures: HashMap<String, u64>,
    pub seconds: f64,
    /// Scored responses per second of the phase.
    pub throughput: f64,
    pub latency_ms: Percentiles,
}

/// Post one MSK-HQ response (first contact, answers drawn from `seed`) for
/// each of `referrals` (id, sending practice) with `concurrency` clients.
async fn questionnaire_phase(
    client: &reqwest::Client,
    base: &str,
    tokens: &Arc<HashMap<String, String>>,
    referrals: Vec<(Uuid, String)>,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<QuestionnaireRun> {
    // The item codes from the Questionnaire the gateway serves.
    let mut req = client.get(format!("{base}/Questionnaire/msk-hq"));
    if let Some(token) = tokens.values().next() {
        req = req.bearer_auth(token);
    }
    let questionnaire: serde_json::Value = req
        .send()
        .await
        .context("reading Questionnaire/msk-hq")?
        .error_for_status()
        .context("reading Questionnaire/msk-hq")?
        .json()
        .await?;
    let link_ids: Vec<String> = questionnaire["item"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["linkId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!link_ids.is_empty(), "Questionnaire/msk-hq has no items");
    let (link_ids, referrals) = (Arc::new(link_ids), Arc::new(referrals));
    let url = format!("{base}/QuestionnaireResponse");
    let next = Arc::new(AtomicU64::new(0));
    let bar = indicatif::ProgressBar::new(referrals.len() as u64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, url, next, bar) = (client.clone(), url.clone(), next.clone(), bar.clone());
        let (tokens, link_ids, referrals) = (tokens.clone(), link_ids.clone(), referrals.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram()?;
            let mut failures: HashMap<String, u64> = HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, practice)) = usize::try_from(i).ok().and_then(|i| referrals.get(i))
                else {
                    break;
                };
                let mut rng = referrals::Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let items: Vec<serde_json::Value> = link_ids
                    .iter()
                    .map(|l| {
                        serde_json::json!({"linkId": l, "answer": [{"valueInteger": rng.below(5)}]})
                    })
                    .collect();
                let body = serde_json::json!({
                    "resourceType": "QuestionnaireResponse",
                    "status": "completed",
                    "meta": {"tag": [{"system": "https://fhir.mskflow.org/CodeSystem/prom-timepoint", "code": "first-contact"}]},
                    "questionnaire": "https://fhir.mskflow.org/Questionnaire/msk-hq",
                    "basedOn": [{"reference": format!("ServiceRequest/{id}")}],
                    "item": items,
                });
                let sent = Instant::now();
                let res =
                    post_fhir(&client, &url, tokens.get(practice), body.to_string().into()).await;
                match res {
                    Ok(res) if res.status().is_success() => {
                        let _ = res.bytes().await;
                        let _ = latency.record(micros(sent.elapsed()).min(600_000_000));
                    }
                    Ok(res) => {
                        let status = res.status().as_u16().to_string();
                        let _ = res.bytes().await;
                        *failures.entry(status).or_insert(0) += 1;
                    }
                    Err(_) => *failures.entry("error".to_owned()).or_insert(0) += 1,
                }
                bar.inc(1);
            }
            Ok::<_, anyhow::Error>((latency, failures))
        }));
    }
    let mut latency = histogram()?;
    let mut failures: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let (l, f) = t.await.context("a client task panicked")??;
        latency.add(&l).context("merging histograms")?;
        for (k, v) in f {
            *failures.entry(k).or_insert(0) += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let scored = latency.len();
    Ok(QuestionnaireRun {
        posted: referrals.len() as u64,
        scored,
        failed: failures.values().sum(),
        failures,
        seconds,
        throughput: scored as f64 / seconds.max(1e-9),
        latency_ms: Percentiles::of(&latency),
    })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 us .. 10 min, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
pub fn rss_mib(pid: Option<u32>) -> Option<(f64, f64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn open_fds(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/fd"),
        None => "/proc/self/fd".to_owned(),
    };
    Some(std::fs::read_dir(path).ok()?.count() as u64)
}

/// One reading of the measured process during a run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first request was due.
    pub at_seconds: f64,
    /// Referrals answered 2xx so far.
    pub accepted: u64,
    pub rss_mib: f64,
    pub open_fds: u64,
}

/// Sample `pid` (this process if `None`) every `every` until aborted.
async fn sample_resources(
    pid: Option<u32>,
    every: Duration,
    started: Instant,
    accepted: Arc<AtomicU64>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (Some((rss, _)), Some(fds)) = (rss_mib(pid), open_fds(pid)) else {
            return;
        };
        let sample = Sample {
            at_seconds: started.elapsed().as_secs_f64(),
            accepted: accepted.load(Ordering::Relaxed),
            rss_mib: rss,
            open_fds: fds,
        };
        if let Ok(mut all) = samples.lock() {
            all.push(sample);
        }
    }
}

/// Matches 2xx answers with decisions seen on the analysts' stream.
#[derive(Debug)]
struct EndToEnd {
    answered: HashMap<Uuid, Instant>,
    seen: HashMap<Uuid, Instant>,
    histogram: Histogram<u64>,
}

impl EndToEnd {
    fn answered(&mut self, id: Uuid, at: Instant) {
        match self.seen.remove(&id) {
            // Visible before the answer left: a latency of (almost) zero.
            Some(seen) => self.record(seen.saturating_duration_since(at)),
            None => {
                self.answered.insert(id, at);
            }
        }
    }

    fn seen(&mut self, id: Uuid, at: Instant) {
        match self.answered.remove(&id) {
            Some(ok) => self.record(at.saturating_duration_since(ok)),
            None => {
                self.seen.insert(id, at);
            }
        }
    }

    fn record(&mut self, d: Duration) {
        // Saturates at the histogram's top; a latency is never lost.
        let _ = self.histogram.record(micros(d).min(600_000_000));
    }
}

const DECISIONS: &[&str] = &["ReferralTriaged", "ReferralRedirected", "ReferralRejected"];

/// Follow the log as the analysts' stream does, noting when each referral's
/// triage decision becomes visible.
async fn follow_analysts_stream(
    log: Arc<dyn EventLog>,
    tracker: Arc<Mutex<EndToEnd>>,
) -> anyhow::Result<()> {
    let ctx = mskflow_analytics::Context {
        pseudonymiser: mskflow_analytics::Pseudonymiser::new(Uuid::new_v4().as_bytes())?,
        imd: mskflow_analytics::ImdLookup::example()?,
    };
    let mut patients = mskflow_analytics::PatientIndex::new();
    let mut sub = log
        .subscribe(
            &format!("load-e2e-{}", Uuid::new_v4()),
            StartFrom::Beginning,
        )
        .await?;
    loop {
        let batch = sub.next_batch(1000).await?;
        let now = Instant::now();
        let mut seen = Vec::new();
        for envelope in &batch {
            patients.observe(envelope, &ctx);
            if !DECISIONS.contains(&envelope.event_type.as_str()) {
                continue;
            }
            if let Some(event) = mskflow_analytics::to_analyst_event(envelope, &patients, &ctx)
                && let Some(key) = event.referral_key
            {
                seen.push(key);
            }
        }
        let mut t = tracker.lock().await;
        for key in seen {
            t.seen(key, now);
        }
    }
}

/// Fold the whole log into fresh gateway views.
async fn replay(log: &dyn EventLog) -> anyhow::Result<Replay> {
    let mut sub = log
        .subscribe(
            &format!("load-replay-{}", Uuid::new_v4()),
            StartFrom::Beginning,
        )
        .await?;
    let mut views = mskflow_gateway::views::Views::default();
    let started = Instant::now();
    let mut events = 0u64;
    loop {
        let batch = sub.poll_batch(1000).await?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            views.apply(e).context("replaying into the gateway views")?;
        }
        events += batch.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(&views);
    Ok(Replay {
        events,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
    })
}

#[derive(Debug)]
struct WorkerResult {
    latency: Histogram<u64>,
    failures: HashMap<String, u64>,
    red_flags: u64,
    start_back: HashMap<String, u64>,
}

/// Run the load and return the report.
pub async fn run(args: &LoadArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let in_process = args.url.is_empty();
    anyhow::ensure!(
        in_process || !(args.end_to_end || args.replay),
        "--end-to-end and --replay need the in-process system (no --url)"
    );
    let total = match (args.referrals, args.rate) {
        (Some(n), _) => n,
        (None, Some(rate)) => (rate * args.duration).round() as u64,
        (None, None) => 5000,
    };

    let tmp = tempfile::tempdir().context("creating a temporary data directory")?;
    // Bearer tokens by sending practice.
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut in_process_config = None;
    let (running, bases, practice) = if in_process {
        let mut config = crate::Config::ephemeral(tmp.path());
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let secret_file = tmp.path().join("load-hs256.secret");
        std::fs::write(&secret_file, &secret).context("writing the load run's key")?;
        config.gateway.auth.mode = mskflow_gateway::auth::Mode::Jwt;
        config.gateway.auth.hs256_secret_file = Some(secret_file);
        tokens = practice_tokens(secret.as_bytes(), args.ods.as_deref())?;
        let running = crate::start(&config).await?;
        let base = format!("http://{}/fhir", running.gateway_addr);
        in_process_config = Some(config);
        (Some(running), vec![base], args.ods.clone())
    } else {
        let bases: Vec<String> = args
            .url
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .collect();
        anyhow::ensure!(
            bases.iter().all(|b| !b.is_empty()),
            "--url must not be empty"
        );
        match &args.hs256_secret_file {
            Some(path) => {
                let secret = read_secret(path)?;
                tokens = practice_tokens(&secret, args.ods.as_deref())?;
                (None, bases, args.ods.clone())
            }
            None => {
                let ods = args.ods.clone().unwrap_or_else(|| "A81001".to_owned());
                if let Some(t) = &args.token {
                    tokens.insert(ods.clone(), t.clone());
                }
                (None, bases, Some(ods))
            }
        }
    };
    let base = bases.first().cloned().unwrap_or_default();
    let tokens = Arc::new(tokens);

    let tracker = Arc::new(Mutex::new(EndToEnd {
        answered: HashMap::new(),
        seen: HashMap::new(),
        histogram: histogram()?,
    }));
    let follower = match (&running, args.end_to_end) {
        (Some(r), true) => Some(tokio::spawn(follow_analysts_stream(
            r.log.clone(),
            tracker.clone(),
        ))),
        _ => None,
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()?;
    let urls: Vec<String> = bases
        .iter()
        .map(|b| format!("{b}/$process-message"))
        .collect();
    let generator = Arc::new(Generator::new(args.seed, Uuid::new_v4())?.from_practice(practice));
    let next = Arc::new(AtomicU64::new(0));
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} posting [{bar:40}] {pos}/{len} referrals ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let measured_pid = match (args.rss_pid, in_process) {
        (Some(pid), _) => Some(Some(pid)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    let accepted_so_far = Arc::new(AtomicU64::new(0));
    // Accepted referrals (id, practice), kept for `--questionnaires`.
    let accepted_ids: Arc<std::sync::Mutex<Vec<(Uuid, String)>>> = Arc::default();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let sampler = match measured_pid {
        Some(pid) if args.sample_every > 0.0 => Some(tokio::spawn(sample_resources(
            pid,
            Duration::from_secs_f64(args.sample_every),
            started,
            accepted_so_far.clone(),
            samples.clone(),
        ))),
        _ => None,
    };
    let mut tasks = Vec::with_capacity(args.concurrency);
    for n in 0..args.concurrency {
        let tokens = tokens.clone();
        let url = urls.get(n % urls.len().max(1)).cloned().unwrap_or_default();
        let (client, url, next, generator, bar, tracker, accepted_so_far) = (
            client.clone(),
            url,
            next.clone(),
            generator.clone(),
            bar.clone(),
            tracker.clone(),
            accepted_so_far.clone(),
        );
        let (rate, e2e) = (args.rate, args.end_to_end);
        let keep_ids = args.questionnaires.then(|| accepted_ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = WorkerResult {
                latency: histogram()?,
                failures: HashMap::new(),
                red_flags: 0,
                start_back: HashMap::new(),
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let referral = generator.referral(i)?;
                r.red_flags += u64::from(referral.red_flag.is_some());
                if let Some(risk) = referral.start_back {
                    *r.start_back
                        .entry(format!("{risk:?}").to_lowercase())
                        .or_insert(0) += 1;
                }
                let intended = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let token = tokens.get(&referral.practice);
                let res = post_fhir(&client, &url, token, referral.body).await;
                match res {
                    Ok(res) if res.status().is_success() => {
                        let id = res
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|l| l.rsplit('/').next())
                            .and_then(|s| Uuid::parse_str(s).ok());
                        let _ = res.bytes().await;
                        let now = Instant::now();
                        let _ = r.latency.record(micros(now - intended).min(600_000_000));
                        accepted_so_far.fetch_add(1, Ordering::Relaxed);
                        if e2e && let Some(id) = id {
                            tracker.lock().await.answered(id, now);
                        }
                        if let (Some(ids), Some(id)) = (&keep_ids, id)
                            && let Ok(mut ids) = ids.lock()
                        {
                            ids.push((id, referral.practice.clone()));
                        }
                    }
                    Ok(res) => {
                        let status = res.status().as_u16().to_string();
                        let _ = res.bytes().await;
                        *r.failures.entry(status).or_insert(0) += 1;
                    }
                    Err(_) => *r.failures.entry("error".to_owned()).or_insert(0) += 1,
                }
                bar.inc(1);
            }
            Ok::<_, anyhow::Error>(r)
        }));
    }

    let mut latency = histogram()?;
    let mut failures: HashMap<String, u64> = HashMap::new();
    let mut red_flags = 0;
    let mut start_back: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let r = t.await.context("a client task panicked")??;
        latency.add(&r.latency).context("merging histograms")?;
        for (k, v) in r.failures {
            *failures.entry(k).or_insert(0) += v;
        }
        for (k, v) in r.start_back {
            *start_back.entry(k).or_insert(0) += v;
        }
        red_flags += r.red_flags;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let questionnaires = if args.questionnaires {
        let ids = accepted_ids
            .lock()
            .map(|mut ids| std::mem::take(&mut *ids))
            .unwrap_or_default();
        Some(questionnaire_phase(&client, &base, &tokens, ids, args.concurrency, args.seed).await?)
    } else {
        None
    };

    let end_to_end = match follower {
        Some(follower) => {
            // Wait (bounded) for the stream to catch up with every answer.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && !tracker.lock().await.answered.is_empty() {
                if follower.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            follower.abort();
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), follower).await {
                return Err(e.context("following the analysts' stream"));
            }
            Some(Percentiles::of(&tracker.lock().await.histogram))
        }
        None => None,
    };

    let rss = measured_pid.and_then(rss_mib);
    if let Some(sampler) = sampler {
        sampler.abort();
        if let (Some(pid), Some((rss, _)), Ok(mut all)) = (measured_pid, rss, samples.lock()) {
            all.push(Sample {
                at_seconds: started.elapsed().as_secs_f64(),
                accepted: accepted_so_far.load(Ordering::Relaxed),
                rss_mib: rss,
                open_fds: open_fds(pid).unwrap_or(0),
            });
        }
    }
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let replayed = match (&running, args.replay) {
        (Some(r), true) => Some(replay(r.log.as_ref()).await?),
        _ => None,
    };
    if let Some(r) = running {
        r.stop().await?;
    }
    let (mut restart, mut rebuilds) = (None, Vec::new());
    if let (Some(config), true) = (&in_process_config, args.replay) {
        let t = Instant::now();
        let again = crate::start(config).await?;
        let seconds_to_ready = t.elapsed().as_secs_f64();
        restart = Some(Restart { seconds_to_ready });
        again.stop().await?;
        let (_, runs) =
            crate::ops::run_projections(config, "all", crate::ops::Action::Rebuild).await?;
        rebuilds = runs
            .into_iter()
            .map(|r| Rebuild {
                name: r.name.to_owned(),
                events: r.rebuilt.events,
                folded: r.rebuilt.applied,
                seconds: r.rebuilt.elapsed.as_secs_f64(),
                events_per_sec: r.rebuilt.rate(),
            })
            .collect();
    }

    let accepted = latency.len();
    Ok(Report {
        mode: if args.rate.is_some() { "rate" } else { "max" },
        target: if in_process {
            "in-process".to_owned()
        } else {
            bases.join(",")
        },
        target_rate: args.rate,
        concurrency: args.concurrency,
        referrals: total,
        accepted,
        failed: failures.values().sum(),
        failures,
        seconds,
        throughput: accepted as f64 / seconds.max(1e-9),
        latency_ms: Percentiles::of(&latency),
        end_to_end_ms: end_to_end,
        rss_mib: rss.map(|r| r.0),
        peak_rss_mib: rss.map(|r| r.1),
        replay: replayed,
        restart,
        rebuilds,
        samples,
        questionnaires,
        red_flags,
        start_back,
    })
}

impl Report {
    /// The report as text for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        let pct = |name: &str, p: &Percentiles, out: &mut String| {
            writeln!(
                out,
                "{name:<22} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (mean {:.2} ms, n = {})",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean, p.count
            )
        };
        match self.target_rate {
            Some(rate) => writeln!(
                out,
                "target:                {} at {rate:.0}/s (open loop, {} clients)",
                self.target, self.concurrency
            )?,
            None => writeln!(
                out,
                "target:                {} as fast as possible ({} clients)",
                self.target, self.concurrency
            )?,
        }
        writeln!(
            out,
            "referrals:             {} posted, {} accepted, {} failed {:?}",
            self.referrals, self.accepted, self.failed, self.failures
        )?;
        let mut risks: Vec<_> = self.start_back.iter().collect();
        risks.sort();
        writeln!(
            out,
            "mix:                   {} with red flags, STarT Back {risks:?}",
            self.red_flags
        )?;
        writeln!(
            out,
            "throughput:            {:.0} referrals/s over {:.2} s",
            self.throughput, self.seconds
        )?;
        pct("latency (2xx):", &self.latency_ms, out)?;
        if let Some(p) = &self.end_to_end_ms {
            pct("2xx -> analysts:", p, out)?;
        }
        if let (Some(rss), Some(peak)) = (self.rss_mib, self.peak_rss_mib) {
            writeln!(
                out,
                "resident memory:       {rss:.1} MiB (peak {peak:.1} MiB)"
            )?;
        }
        if let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) {
            let max_rss = self.samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
            let max_fds = self.samples.iter().map(|s| s.open_fds).max().unwrap_or(0);
            writeln!(
                out,
                "resources ({} samples): RSS {:.1} -> {:.1} MiB (max {max_rss:.1}), open fds {} -> {} (max {max_fds}), from {} to {} accepted",
                self.samples.len(),
                first.rss_mib,
                last.rss_mib,
                first.open_fds,
                last.open_fds,
                first.accepted,
                last.accepted
            )?;
        }
        if let Some(q) = &self.questionnaires {
            writeln!(
                out,
                "questionnaires:        {} MSK-HQ responses posted, {} scored, {} failed {:?}",
                q.posted, q.scored, q.failed, q.failures
            )?;
            writeln!(
                out,
                "scoring throughput:    {:.0} responses scored/s over {:.2} s",
                q.throughput, q.seconds
            )?;
            pct("latency (response):", &q.latency_ms, out)?;
        }
        if let Some(r) = &self.replay {
            writeln!(
                out,
                "replay into views:     {} events in {:.2} s = {:.0} events/s",
                r.events, r.seconds, r.events_per_sec
            )?;
        }
        if let Some(r) = &self.restart {
            writeln!(
                out,
                "restart to ready:      {:.2} s on the same data",
                r.seconds_to_ready
            )?;
        }
        for r in &self.rebuilds {
            writeln!(
                out,
                "rebuild {:<24} {} events ({} folded) in {:.2} s = {:.0} events/s",
                r.name, r.events, r.folded, r.seconds, r.events_per_sec
            )?;
        }
        Ok(())
    }
}

/// `mskflow load`: run, print, and write the JSON report if asked.
pub async fn command(args: &LoadArgs) -> anyhow::Result<String> {
    let report = run(args).await?;
    if let Some(path) = &args.json {
        write_json_report(path, &report)?;
    }
    Ok(report.render())
}

/// Write a command's report as pretty JSON to `path`, creating its
/// directory if need be.
pub(crate) fn write_json_report(
    path: &std::path::Path,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!(parse_rate("1000/s"), Ok(1000.0));
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn end_to_end_pairs_answers_with_decisions_in_either_order() {
        let mut t = EndToEnd {
            answered: HashMap::new(),
            seen: HashMap::new(),
            histogram: histogram().unwrap(),
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        t.answered(a, t0);
        t.seen(a, t0 + Duration::from_millis(5));
        t.seen(b, t0);
        t.answered(b, t0 + Duration::from_millis(1));
        assert!(t.answered.is_empty() && t.seen.is_empty());
        assert_eq!(t.histogram.len(), 2);
        let p = Percentiles::of(&t.histogram);
        assert!((4.9..5.1).contains(&p.max), "{p:?}");
        assert!(p.p50 < 0.01, "{p:?}");
    }

    #[test]
    fn own_resident_memory_is_read() {
        let (rss, peak) = rss_mib(None).unwrap();
        assert!(rss > 0.0 && peak >= rss);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_in_process_run_accepts_every_referral() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("load.json");
        let args = LoadArgs {
            url: Vec::new(),
            token: None,
            hs256_secret_file: None,
            ods: None,
            referrals: Some(60),
            concurrency: 4,
            rate: None,
            duration: 1.0,
            end_to_end: true,
            replay: true,
            rss_pid: None,
            seed: 3,
            json: Some(json.clone()),
            sample_every: 0.05,
            questionnaires: true,
        };
        let text = command(&args).await.unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["accepted"], 60, "{text}");
        assert_eq!(report["failed"], 0, "{text}");
        assert_eq!(report["end_to_end_ms"]["count"], 60, "{text}");
        // Two intake events per referral at least.
        assert!(
            report["replay"]["events"].as_u64().unwrap() >= 120,
            "{text}"
        );
        // Restarted on the same data, and the intake index rebuilt with one
        // request id per referral.
        assert!(report["restart"]["seconds_to_ready"].as_f64().unwrap() > 0.0);
        let intake = report["rebuilds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "intake-index")
            .unwrap();
        assert_eq!(intake["folded"], 60, "{text}");
        assert!(text.contains("rebuild intake-index"), "{text}");
        assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
        assert!(text.contains("throughput:"));
        let samples = report["samples"].as_array().unwrap();
        assert!(samples.len() >= 2, "{text}");
        let last = &samples[samples.len() - 1];
        assert_eq!(last["accepted"], 60, "{text}");
        assert!(last["open_fds"].as_u64().unwrap() > 3, "{text}");
        assert!(last["rss_mib"].as_f64().unwrap() > 1.0, "{text}");
        assert!(text.contains("open fds"), "{text}");
        // One MSK-HQ response per accepted referral, each scored.
        let q = &report["questionnaires"];
        assert_eq!(
            (&q["posted"], &q["scored"]),
            (&serde_json::json!(60), &serde_json::json!(60)),
            "{text}"
        );
        assert_eq!(q["failed"], 0, "{text}");
        // Replayed after the responses: one more event per referral.
        assert!(
            report["replay"]["events"].as_u64().unwrap() >= 180,
            "{text}"
        );
        assert!(text.contains("responses scored/s"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_spreads_over_several_urls_with_tokens_signed_by_the_shared_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("hs256.secret");
        std::fs::write(&secret_file, format!("{}\n", "k".repeat(40))).unwrap();
        let mut config = crate::Config::ephemeral(dir.path());
        config.gateway.auth.mode = mskflow_gateway::auth::Mode::Jwt;
        config.gateway.auth.hs256_secret_file = Some(secret_file.clone());
        let running = crate::start(&config).await.unwrap();
        let base = format!("http://{}/fhir", running.gateway_addr);
        let args = LoadArgs {
            url: vec![base.clone(), format!("{base}/")],
            token: None,
            hs256_secret_file: Some(secret_file.clone()),
            ods: None,
            referrals: Some(20),
            concurrency: 4,
            rate: None,
            duration: 1.0,
            end_to_end: false,
            replay: false,
            rss_pid: None,
            seed: 5,
            json: None,
            sample_every: 0.0,
            questionnaires: false,
        };
        let report = run(&args).await.unwrap();
        assert_eq!((report.accepted, report.failed), (20, 0), "{report:?}");
        assert_eq!(report.target, format!("{base},{base}"));

        // A secret the gateways do not share is refused on every request.
        let other = dir.path().join("other.secret");
        std::fs::write(&other, "x".repeat(40)).unwrap();
        let refused = run(&LoadArgs {
            hs256_secret_file: Some(other),
            referrals: Some(4),
            ..args.clone()
        })
        .await
        .unwrap();
        assert_eq!(refused.accepted, 0);
        assert_eq!(refused.failures.get("401"), Some(&4), "{refused:?}");
        running.stop().await.unwrap();

        let short = dir.path().join("short.secret");
        std::fs::write(&short, "short\n").unwrap();
        assert!(read_secret(&short).is_err());
        assert_eq!(read_secret(&secret_file).unwrap().len(), 40);
    }

    #[test]
    fn another_processs_open_file_descriptors_are_counted() {
        // A child with stdin, stdout and stderr (and whatever the test
        // harness lets it inherit, such as a jobserver pipe).
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let fds = open_fds(Some(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(fds.is_some_and(|n| (3..16).contains(&n)), "{fds:?}");
        assert_eq!(open_fds(Some(u32::MAX)), None);
    }
}
