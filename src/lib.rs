//! The all-in-one process: every service on the embedded event store, wired
//! together the same way as the split deployment (the gateway calls intake
//! over gRPC on loopback).

pub mod config;
pub mod export;
pub mod kafka_bench;
pub mod load;
pub mod ops;
pub mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use mskflow_eventlog::EventLog;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::Config;

/// A running all-in-one system.
#[derive(Debug)]
pub struct Running {
    pub gateway_addr: SocketAddr,
    /// The gateway's development bearer token (`gateway.auth.mode = "dev"`).
    pub dev_token: Option<String>,
    pub intake_addr: SocketAddr,
    pub assessment_addr: SocketAddr,
    pub scheduling_addr: SocketAddr,
    pub outcomes_addr: SocketAddr,
    pub log: Arc<dyn EventLog>,
    store: mskflow_eventlog_sqlite::SqliteEventLog,
    stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Start every service on the embedded store described by `config`.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let path = config.event_store_path();
    let store = mskflow_eventlog_sqlite::SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: path.clone(),
        ..Default::default()
    })
    .with_context(|| format!("opening the event store {}", path.display()))?;
    let log: Arc<dyn EventLog> =
        Arc::new(mskflow_eventlog::Instrumented::new(Arc::new(store.clone())));
    let projections = mskflow_projection::Options::in_dir(config.projections_dir());
    let (stop, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let intake = mskflow_intake::Service::build(
        mskflow_intake::Options {
            grpc_addr: config.intake.grpc_addr,
            rules_path: config.intake.rules.clone(),
            projections: projections.clone(),
        },
        log.clone(),
    )
    .await
    .context("starting intake")?;
    let intake_addr = intake.local_addr();
    let shutdown = stopped(rx.clone());
    tasks.spawn(async move { intake.run(shutdown).await.context("intake") });

    anyhow::ensure!(
        config.assessment.max_missed >= 1,
        "assessment.max_missed must be at least 1"
    );
    let assessment_policy = mskflow_assessment::domain::Policy {
        max_missed: config.assessment.max_missed,
    };
    let assessment = mskflow_assessment::Service::build(
        mskflow_assessment::Options {
            grpc_addr: config.assessment.grpc_addr,
            policy: assessment_policy,
            projections: projections.clone(),
        },
        log.clone(),
    )
    .await
    .context("starting assessment")?;
    let assessment_addr = assessment.local_addr();
    let shutdown = stopped(rx.clone());
    tasks.spawn(async move { assessment.run(shutdown).await.context("assessment") });

    let scheduling = mskflow_scheduling::Service::build(
        mskflow_scheduling::Options {
            grpc_addr: config.scheduling.grpc_addr,
            policy: config.scheduling.policy.clone(),
            projections: projections.clone(),
        },
        log.clone(),
    )
    .await
    .context("starting scheduling")?;
    let scheduling_addr = scheduling.local_addr();
    let shutdown = stopped(rx.clone());
    tasks.spawn(async move { scheduling.run(shutdown).await.context("scheduling") });

    let mut outcomes_options = mskflow_outcomes::Options::new(config.outcomes.grpc_addr);
    outcomes_options.policy.follow_up_months = config.outcomes.follow_up_months;
    outcomes_options.policy.overdue_after_days = config.outcomes.overdue_after_days;
    outcomes_options.value_set_path = config.outcomes.eq5d_value_set.clone();
    outcomes_options.licence_path = config.outcomes.licence_file.clone();
    outcomes_options.projections = projections.clone();
    let outcomes = mskflow_outcomes::Service::build(outcomes_options, log.clone())
        .await
        .context("starting outcomes")?;
    let outcomes_addr = outcomes.local_addr();
    let shutdown = stopped(rx.clone());
    tasks.spawn(async move { outcomes.run(shutdown).await.context("outcomes") });

    let analyst_stream = analyst_stream(config)?;
    let gateway = mskflow_gateway::Service::build(
        mskflow_gateway::Options {
            http_addr: config.gateway.addr,
            intake_url: format!("http://{intake_addr}"),
            outcomes_url: format!("http://{outcomes_addr}"),
            body_limit: config.gateway.body_limit,
            base_url: config.gateway.base_url.clone(),
            workers: config.gateway.workers,
            outbound: mskflow_gateway::delivery::Options {
                endpoints: config.gateway.outbound.endpoints.clone(),
                max_attempts: config.gateway.outbound.max_attempts,
                initial_backoff: std::time::Duration::from_millis(
                    config.gateway.outbound.initial_backoff_ms,
                ),
                tls: config.gateway.outbound.tls(),
                ..Default::default()
            },
            referrer_endpoints: config.gateway.referrer_endpoints.clone(),
            max_view_lag: config.gateway.max_view_lag,
            auth: config.gateway.auth.options(),
            tls: config.gateway.tls.options(),
            analytics_imd: Some(analyst_stream.context.imd.clone()),
            analyst_stream: Some(analyst_stream),
            projections: Some(projections.clone()),
            self_referral: config.gateway.self_referral.options()?,
        },
        log.clone(),
    )
    .await
    .context("starting the gateway")?;
    let gateway_addr = gateway.local_addr().context("gateway address")?;
    let dev_token = gateway.dev_token().map(str::to_owned);
    let shutdown = stopped(rx.clone());
    tasks.spawn(async move { gateway.run(shutdown).await.context("gateway") });

    Ok(Running {
        gateway_addr,
        dev_token,
        intake_addr,
        assessment_addr,
        scheduling_addr,
        outcomes_addr,
        log,
        store,
        stop,
        tasks,
    })
}

/// The analysts' stream of the all-in-one process: the JSON Lines file
/// `[analytics] stream_file`, pseudonymised with the configured secret (the
/// file `secret_file`, else `MSKFLOW_ANALYTICS_SECRET`), else a secret made
/// once in the data directory and reused on later runs.
pub fn analyst_stream(config: &Config) -> anyhow::Result<mskflow_gateway::AnalystStream> {
    use mskflow_analytics::publish::{load_imd, load_or_create_secret, load_secret};
    let secret = match load_secret(config.analytics.secret_file.as_deref())? {
        Some(secret) => secret,
        None if config.analytics.secret_file.is_some() => {
            anyhow::bail!("the analytics secret file is empty")
        }
        None => load_or_create_secret(&config.generated_secret_path())?,
    };
    let pseudonymiser =
        mskflow_analytics::Pseudonymiser::new(&secret).context("the analytics secret")?;
    let imd =
        load_imd(config.analytics.imd_lookup.as_deref()).context("the analytics IMD lookup")?;
    let path = config.analyst_stream_path();
    tracing::info!(path = %path.display(), "analysts' stream: JSON Lines file");
    Ok(mskflow_gateway::AnalystStream {
        sink: Arc::new(mskflow_analytics::JsonlSink::new(path)),
        context: mskflow_analytics::Context { pseudonymiser, imd },
    })
}

impl Running {
    /// The embedded store (operators' tools and tests).
    pub fn store(&self) -> &mskflow_eventlog_sqlite::SqliteEventLog {
        &self.store
    }

    /// Ask every service to stop, wait for them to drain, then close the
    /// store (its writer commits whatever is queued).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let result = self.join().await;
        self.store.close().await;
        result
    }

    /// Run until `shutdown` resolves or a service fails.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown => {}
            Some(done) = self.tasks.join_next() => {
                let _ = self.stop.send(true);
                let first = done.context("service task panicked").and_then(|r| r);
                self.join().await?;
                self.store.close().await;
                return first.and(Err(anyhow::anyhow!("a service stopped unexpectedly")));
            }
        }
        self.stop().await
    }

    async fn join(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done.context("service task panicked").and_then(|r| r) {
                tracing::error!(error = %format!("{e:#}"), "service failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
