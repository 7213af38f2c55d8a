//! `mskflow-assessment`: the FCP assessment service on its own, over the
//! embedded SQLite event store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use mskflow_assessment::{Options, Policy, Service};
use mskflow_eventlog_sqlite::SqliteEventLog;

/// FCP assessment: worklist, clinician slots, bookings and outcomes (gRPC).
#[derive(Debug, Parser)]
#[command(name = "mskflow-assessment", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "MSKFLOW_ASSESSMENT_GRPC_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    grpc_addr: SocketAddr,
    /// The embedded event store file (created if missing).
    #[arg(long, env = "MSKFLOW_DB", default_value = "mskflow.db")]
    db: PathBuf,
    /// A policy file (TOML, e.g. `max_missed = 2`); defaults otherwise.
    #[arg(long, env = "MSKFLOW_ASSESSMENT_POLICY")]
    policy: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let policy = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading policy {}", path.display()))?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", path.display()))?
        }
        None => Policy::default(),
    };

    let store = SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: args.db.clone(),
        ..mskflow_eventlog_sqlite::Options::default()
    })
    .with_context(|| format!("opening event store {}", args.db.display()))?;
    let log: Arc<dyn mskflow_eventlog::EventLog> = Arc::new(store.clone());

    let service = Service::build(
        Options {
            grpc_addr: args.grpc_addr,
            policy,
        },
        log,
    )
    .await
    .context("starting assessment")?;
    tracing::info!(addr = %service.local_addr(), "mskflow-assessment listening");

    let result = service.run(shutdown_signal()).await;
    // In-flight work has finished: let the store commit what is queued.
    store.close().await;
    result.context("serving assessment")
}

/// Completes on Ctrl-C or SIGTERM. A second signal exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
