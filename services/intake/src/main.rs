//! `mskflow-intake`: the referral intake service on its own, over the
//! event log it is configured with (the embedded file or Kafka).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mskflow_intake::{Options, Service};

/// Referral intake: records referrals and triages them (gRPC).
#[derive(Debug, Parser)]
#[command(name = "mskflow-intake", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "MSKFLOW_INTAKE_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    grpc_addr: SocketAddr,
    /// The event log: the embedded file (default) or Kafka.
    #[command(flatten)]
    store: mskflow_store::StoreArgs,
    /// Address of the operations endpoint (/metrics, /health/live, /health/ready).
    #[arg(
        long,
        env = "MSKFLOW_INTAKE_OPS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    ops_addr: SocketAddr,
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "MSKFLOW_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format: json or pretty.
    #[arg(long, env = "MSKFLOW_LOG_FORMAT", default_value = "json")]
    log_format: mskflow_telemetry::LogFormat,
    /// A triage rule file to use instead of the built-in rules.
    #[arg(long, env = "MSKFLOW_INTAKE_RULES")]
    rules: Option<PathBuf>,
}

/// The process allocator (see `mskflow`'s main: glibc's spent about a third
/// of a service's CPU on short-lived buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mskflow_telemetry::init(&mskflow_telemetry::Settings {
        service: "mskflow-intake".to_owned(),
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;

    let store = mskflow_store::open(&args.store, "mskflow-intake")
        .await
        .context("opening the event log")?;
    let log = store.log.clone();

    let service = Service::build(
        Options {
            grpc_addr: args.grpc_addr,
            rules_path: args.rules,
            projections: store.projections.clone(),
        },
        log.clone(),
    )
    .await
    .context("starting intake")?;
    tracing::info!(addr = %service.local_addr(), "mskflow-intake listening");

    let result = mskflow_telemetry::ops::alongside(
        args.ops_addr,
        mskflow_telemetry::ops::store_readiness(log.clone()),
        service.run(mskflow_telemetry::shutdown_signal()),
    )
    .await
    .context("binding the operations endpoint")?;
    // In-flight requests have finished: let the store commit what is queued.
    store.close().await;
    telemetry.shutdown();
    result.context("serving intake")
}
