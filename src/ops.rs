//! Operator commands: `status`, `replay` and `dead-letters`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use mskflow_eventlog::{EventLog as _, StartFrom};
use mskflow_eventlog_sqlite::{Options, SqliteEventLog};
use mskflow_gateway::views::Views;

use crate::Config;

const BATCH: usize = 1000;

/// The log the dead-letter commands work on: Kafka when `store` names
/// brokers (`--kafka-brokers` / `MSKFLOW_KAFKA_BROKERS`), otherwise the
/// embedded store of `config`.
struct OpsLog {
    log: std::sync::Arc<dyn mskflow_eventlog::EventLog>,
    embedded: Option<SqliteEventLog>,
}

impl OpsLog {
    async fn open(config: &Config, store: &mskflow_store::StoreArgs) -> anyhow::Result<Self> {
        if store.kafka_brokers.is_some() {
            // A client of its own: the state directory (and the Kafka index
            // file in it) belongs to a service instance, which may be
            // running and holds that file.
            let store = &mskflow_store::StoreArgs {
                state_dir: None,
                ..store.clone()
            };
            let opened = mskflow_store::open(store, "mskflow-ops")
                .await
                .context("opening the Kafka event log")?;
            return Ok(Self {
                log: opened.log,
                embedded: None,
            });
        }
        let embedded = open_store(config)?;
        Ok(Self {
            log: std::sync::Arc::new(embedded.clone()),
            embedded: Some(embedded),
        })
    }

    async fn close(&self) {
        if let Some(s) = &self.embedded {
            s.close().await;
        }
    }
}

/// Open the configured store (the services may be running: WAL allows it).
pub(crate) fn open_store(config: &Config) -> anyhow::Result<SqliteEventLog> {
    let path = config.event_store_path();
    anyhow::ensure!(
        path.exists(),
        "no event store at {} (is data_dir right? `mskflow config check` prints it)",
        path.display()
    );
    SqliteEventLog::open(Options {
        path: path.clone(),
        read_connections: 1,
        ..Options::default()
    })
    .with_context(|| format!("opening the event store {}", path.display()))
}

/// Replay the whole log into the gateway's views, reporting progress.
async fn replay_views(
    store: &SqliteEventLog,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<(Views, u64, u64)> {
    let mut sub = store
        .subscribe("mskflow-ops-replay", StartFrom::Beginning)
        .await
        .context("opening a replay subscription")?;
    let mut views = Views::default();
    let (mut events, mut skipped) = (0u64, 0u64);
    loop {
        let batch = sub.poll_batch(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            events += 1;
            if let Err(err) = views.apply(e) {
                skipped += 1;
                tracing::warn!(error = %err, position = e.position, "event does not apply to the views");
            }
        }
        if let Some(p) = progress {
            p.set_position(batch.last().map_or(0, |e| e.position));
        }
    }
    Ok((views, events, skipped))
}

/// `mskflow status`: the store, the consumers, the referral counts and the
/// health of the running services.
pub async fn status(config: &Config, gateway_url: Option<String>) -> anyhow::Result<String> {
    let store = open_store(config)?;
    let head = store.head().await?;
    let size = std::fs::metadata(config.event_store_path())
        .map(|m| m.len())
        .unwrap_or(0);
    let mut out = String::new();
    writeln!(
        out,
        "event store   {} (head position {head}, {:.1} MiB)",
        config.event_store_path().display(),
        size as f64 / 1_048_576.0
    )?;
    let counts = store.counts_by_type().await?;
    let listed: Vec<String> = counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    writeln!(
        out,
        "events        {}",
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        }
    )?;
    let (views, _, skipped) = replay_views(&store, None).await?;
    let by_status: Vec<String> = views
        .count_by_status()
        .iter()
        .map(|(s, n)| format!("{} {n}", s.code()))
        .collect();
    writeln!(
        out,
        "referrals     {} (total {})",
        by_status.join(", "),
        views.len()
    )?;
    if skipped > 0 {
        writeln!(
            out,
            "              {skipped} events do not apply to the views: see `mskflow replay`"
        )?;
    }
    writeln!(
        out,
        "consumers     gateway-views (in memory, replays from the log at start)"
    )?;
    let options = mskflow_projection::Options::in_dir(config.projections_dir());
    for name in PROJECTIONS {
        let line = match mskflow_projection::stored(&options, name)? {
            Some(s) => format!(
                "{name}: on disk, checkpoint {}, lag {}, {:.1} MiB",
                s.checkpoint,
                head.saturating_sub(s.checkpoint),
                s.bytes as f64 / 1_048_576.0
            ),
            None => format!("{name}: not built yet (built from the log at the next start)"),
        };
        writeln!(out, "              {line}")?;
    }
    for (name, position) in store.checkpoints().await? {
        if name.starts_with("mskflow-ops") || name.starts_with("test-") {
            continue;
        }
        writeln!(
            out,
            "              {name}: checkpoint {position}, lag {}",
            head.saturating_sub(position)
        )?;
    }
    let dead_letters = mskflow_consumer::load_all(&store, CONSUMERS).await?;
    let open: Vec<String> = CONSUMERS
        .iter()
        .map(|c| format!("{c} {}", dead_letters.open_count(c)))
        .collect();
    writeln!(
        out,
        "dead letters  {} open (see `mskflow dead-letters list`)",
        open.join(", ")
    )?;
    store.close().await;

    let tls = config.gateway.tls.cert_file.as_ref();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = gateway_url.unwrap_or_else(|| format!("{scheme}://{}", config.gateway.addr));
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(3));
    // The gateway's own certificate chain is trusted for this check (it
    // may be issued by a private CA); a gateway that requires client
    // certificates answers the handshake with an error, reported below.
    if let Some(chain) = tls.and_then(|f| std::fs::read(f).ok()) {
        for cert in reqwest::Certificate::from_pem_bundle(&chain).unwrap_or_default() {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client.build()?;
    let health = match client.get(format!("{url}/health/ready")).send().await {
        Ok(res) => {
            let code = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            let checks = body["checks"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!(
                "{} ({checks})",
                if code == 200 { "ready" } else { "NOT READY" }
            )
        }
        Err(e) => format!("unreachable ({})", e.without_url()),
    };
    writeln!(out, "services      gateway {url}: {health}")?;
    Ok(out)
}

/// `mskflow replay`: rebuild the gateway views from the log with a progress
/// bar and report what they hold; with `reset`, also move a durable
/// consumer's checkpoint back to the start so it reprocesses every event on
/// its next start (handlers are idempotent by event id).
pub async fn replay(config: &Config, reset: Option<String>) -> anyhow::Result<String> {
    let store = open_store(config)?;
    let head = store.head().await?;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let (views, events, skipped) = replay_views(&store, Some(&bar)).await?;
    bar.finish_and_clear();
    let mut out = String::new();
    writeln!(
        out,
        "replayed {events} events in {:.2} s: {} referrals, {skipped} events skipped",
        started.elapsed().as_secs_f64(),
        views.len()
    )?;
    for (s, n) in views.count_by_status() {
        writeln!(out, "  {:<11} {n}", s.code())?;
    }
    if let Some(consumer) = reset {
        store.set_checkpoint(&consumer, 0).await?;
        writeln!(
            out,
            "checkpoint of consumer '{consumer}' reset to 0: it replays the log on its next start"
        )?;
    }
    store.close().await;
    Ok(out)
}

/// What `mskflow replay` does to a read model kept on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delete its file and fold every event into a new one.
    Rebuild,
    /// Bring it up to the log's head, rebuild a copy from the first event
    /// in a temporary directory, and compare every row of the two.
    Check,
}

/// What `action` did to one read model.
#[derive(Debug)]
pub struct ProjectionRun {
    pub name: &'static str,
    /// The line to print.
    pub line: String,
    /// False when a check found the kept copy different from a rebuild.
    pub consistent: bool,
    /// The rebuild from the first event.
    pub rebuilt: mskflow_projection::CatchUp,
}

/// Carry out `action` on one read model.
async fn on_projection<P: mskflow_projection::Projection>(
    action: Action,
    log: &std::sync::Arc<dyn mskflow_eventlog::EventLog>,
    options: &mskflow_projection::Options,
    make: impl Fn() -> P,
) -> anyhow::Result<ProjectionRun> {
    use mskflow_projection::Projector;
    let fresh = match action {
        Action::Rebuild => {
            mskflow_projection::remove(options, P::NAME)?;
            options.clone()
        }
        Action::Check => mskflow_projection::Options::temporary()?,
    };
    let (rebuilt, _following, catch_up) = Projector::open(log, &fresh, make())
        .await
        .with_context(|| format!("rebuilding {}", P::NAME))?;
    // The file and its write-ahead log (a fresh build sits mostly in the
    // log until SQLite checkpoints it).
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", rebuilt.path().display())).ok())
        .map(|m| m.len())
        .sum();
    let built = format!(
        "{} events read, {} folded, in {:.2} s ({:.0} events/s), {:.1} MiB",
        catch_up.events,
        catch_up.applied,
        catch_up.elapsed.as_secs_f64(),
        catch_up.rate(),
        size as f64 / 1_048_576.0
    );
    let run = |line: String, consistent: bool| ProjectionRun {
        name: P::NAME,
        line,
        consistent,
        rebuilt: catch_up.clone(),
    };
    if action == Action::Rebuild {
        return Ok(run(format!("rebuilt {:<24} {built}", P::NAME), true));
    }
    let (kept, _following, caught_up) = Projector::open(log, options, make())
        .await
        .with_context(|| format!("opening {}", P::NAME))?;
    let (kept, rebuilt) = (kept.dump().await?, rebuilt.dump().await?);
    let rows: usize = kept.iter().map(|(_, r)| r.len()).sum();
    if kept == rebuilt {
        return Ok(run(
            format!(
                "consistent {:<21} {rows} rows equal a rebuild ({built}); kept copy: {:?}",
                P::NAME,
                caught_up.opened
            ),
            true,
        ));
    }
    let first = kept
        .iter()
        .zip(&rebuilt)
        .find(|(a, b)| a != b)
        .map_or_else(
            || "a table is missing".to_owned(),
            |((table, a), (_, b))| {
                format!(
                    "table {table}: {} rows kept, {} rebuilt; first difference: kept {:?}, rebuilt {:?}",
                    a.len(),
                    b.len(),
                    a.iter().find(|r| !b.contains(r)),
                    b.iter().find(|r| !a.contains(r))
                )
            },
        );
    Ok(run(format!("DIFFERS    {:<21} {first}", P::NAME), false))
}

/// The read models kept on disk, by name (`mskflow replay --rebuild NAME`).
pub const PROJECTIONS: &[&str] = &[
    <mskflow_intake::index::RequestIndex as mskflow_projection::Projection>::NAME,
    <mskflow_assessment::projection::AssessmentView as mskflow_projection::Projection>::NAME,
    <mskflow_scheduling::waiting::WaitingList as mskflow_projection::Projection>::NAME,
    <mskflow_outcomes::view::OutcomesView as mskflow_projection::Projection>::NAME,
    <mskflow_analytics::store::AnalyticsFacts as mskflow_projection::Projection>::NAME,
];

/// `mskflow replay --rebuild NAME|all` and `--check NAME|all`, while the
/// services are stopped (a running process keeps its files open). A check
/// that finds a difference is an error.
pub async fn projections(config: &Config, name: &str, action: Action) -> anyhow::Result<String> {
    let (out, _) = run_projections(config, name, action).await?;
    Ok(out)
}

/// [`projections`], with what each run did.
pub async fn run_projections(
    config: &Config,
    name: &str,
    action: Action,
) -> anyhow::Result<(String, Vec<ProjectionRun>)> {
    use mskflow_projection::Projection as _;
    anyhow::ensure!(
        name == "all" || PROJECTIONS.contains(&name),
        "unknown read model '{name}' (one of: all, {})",
        PROJECTIONS.join(", ")
    );
    let url = format!("http://{}/health/live", config.gateway.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    anyhow::ensure!(
        client.get(&url).send().await.is_err(),
        "mskflow is running (its gateway answers at {url}): stop it first"
    );
    let store = open_store(config)?;
    let log: std::sync::Arc<dyn mskflow_eventlog::EventLog> = std::sync::Arc::new(store.clone());
    let options = mskflow_projection::Options::in_dir(config.projections_dir());
    let wanted = |n: &str| name == "all" || name == n;
    let mut runs = Vec::new();
    let started = std::time::Instant::now();
    use mskflow_analytics::store::AnalyticsFacts;
    use mskflow_assessment::projection::AssessmentView;
    use mskflow_intake::index::RequestIndex;
    use mskflow_outcomes::view::OutcomesView;
    use mskflow_scheduling::waiting::WaitingList;
    if wanted(RequestIndex::NAME) {
        runs.push(on_projection(action, &log, &options, || RequestIndex).await?);
    }
    if wanted(AssessmentView::NAME) {
        runs.push(on_projection(action, &log, &options, || AssessmentView).await?);
    }
    if wanted(WaitingList::NAME) {
        runs.push(on_projection(action, &log, &options, || WaitingList).await?);
    }
    if wanted(OutcomesView::NAME) {
        runs.push(on_projection(action, &log, &options, || OutcomesView).await?);
    }
    if wanted(AnalyticsFacts::NAME) {
        // The attributes are fixed with the IMD lookup the gateway uses.
        let ctx = crate::analyst_stream(config)?.context;
        runs.push(
            on_projection(action, &log, &options, || AnalyticsFacts::new(ctx.clone())).await?,
        );
    }
    let mut out = String::new();
    for run in &runs {
        writeln!(out, "{}", run.line)?;
    }
    let differ: Vec<&str> = runs
        .iter()
        .filter(|r| !r.consistent)
        .map(|r| r.name)
        .collect();
    writeln!(
        out,
        "done in {:.2} s (head position {})",
        started.elapsed().as_secs_f64(),
        store.head().await?
    )?;
    store.close().await;
    anyhow::ensure!(
        differ.is_empty(),
        "{out}read models differ from a rebuild: {}",
        differ.join(", ")
    );
    Ok((out, runs))
}

/// The durable consumers, each with its dead-letter stream
/// `deadletter-{consumer}`.
pub const CONSUMERS: &[&str] = &[
    mskflow_assessment::consumer::CONSUMER,
    mskflow_scheduling::consumer::CONSUMER,
    mskflow_outcomes::consumer::CONSUMER,
];

fn known_consumer(consumer: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        CONSUMERS.contains(&consumer),
        "unknown consumer '{consumer}' (one of: {})",
        CONSUMERS.join(", ")
    );
    Ok(())
}

/// `mskflow dead-letters list`: the open dead letters (set aside and
/// neither resolved nor discarded), of one consumer or all.
pub async fn dead_letters_list(
    config: &Config,
    store: &mskflow_store::StoreArgs,
    consumer: Option<&str>,
) -> anyhow::Result<String> {
    let consumers: Vec<&str> = match consumer {
        Some(c) => {
            known_consumer(c)?;
            vec![c]
        }
        None => CONSUMERS.to_vec(),
    };
    let ops = OpsLog::open(config, store).await?;
    let letters = mskflow_consumer::load_all(ops.log.as_ref(), &consumers).await;
    ops.close().await;
    let letters = letters?;
    let mut out = String::new();
    let mut open = 0usize;
    for d in letters.open() {
        open += 1;
        let l = &d.last;
        let retry = if d.status == mskflow_consumer::DeadLetterStatus::RetryRequested {
            " (retry requested)"
        } else {
            ""
        };
        writeln!(
            out,
            "{}  {}  {}  {}#{}  position {}  attempts {}{retry}  reason: {}",
            l.consumer,
            l.event_id,
            l.event_type,
            l.stream_id,
            l.sequence,
            l.position,
            l.attempts,
            l.reason
        )?;
    }
    if open == 0 {
        writeln!(out, "no open dead letters")?;
    }
    Ok(out)
}

/// `mskflow dead-letters retry`: ask the consumer to handle an open dead
/// letter again. The running consumer carries it out and records the result.
pub async fn dead_letters_retry(
    config: &Config,
    store: &mskflow_store::StoreArgs,
    consumer: &str,
    event_id: uuid::Uuid,
    by: &str,
) -> anyhow::Result<String> {
    known_consumer(consumer)?;
    let ops = OpsLog::open(config, store).await?;
    let result = mskflow_consumer::request_retry(ops.log.as_ref(), consumer, event_id, by).await;
    ops.close().await;
    result?.with_context(|| format!("retry of {event_id} for consumer '{consumer}'"))?;
    Ok(format!(
        "retry of {event_id} requested from consumer '{consumer}': it is tried again when the consumer runs\n"
    ))
}

/// `mskflow dead-letters discard`: give up on an open dead letter, with a
/// reason.
pub async fn dead_letters_discard(
    config: &Config,
    store: &mskflow_store::StoreArgs,
    consumer: &str,
    event_id: uuid::Uuid,
    reason: &str,
    by: &str,
) -> anyhow::Result<String> {
    known_consumer(consumer)?;
    anyhow::ensure!(!reason.trim().is_empty(), "a reason is required");
    let ops = OpsLog::open(config, store).await?;
    let result = mskflow_consumer::discard(ops.log.as_ref(), consumer, event_id, reason, by).await;
    ops.close().await;
    result?.with_context(|| format!("discard of {event_id} for consumer '{consumer}'"))?;
    Ok(format!(
        "dead letter {event_id} of consumer '{consumer}' discarded\n"
    ))
}
