//! `mskflow-scheduling`: the rehab scheduling service on its own, over the
//! event log it is configured with (the embedded file or Kafka).

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use mskflow_scheduling::{Options, Policy, Service};

/// Rehab scheduling: classes, 1:1 slots, waiting list and bookings (gRPC).
#[derive(Debug, Parser)]
#[command(name = "mskflow-scheduling", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "MSKFLOW_SCHEDULING_GRPC_ADDR",
        default_value = "127.0.0.1:50053"
    )]
    grpc_addr: SocketAddr,
    /// The event log: the embedded file (default) or Kafka.
    #[command(flatten)]
    store: mskflow_store::StoreArgs,
    /// Address of the operations endpoint (/metrics, /health/live, /health/ready).
    #[arg(
        long,
        env = "MSKFLOW_SCHEDULING_OPS_ADDR",
        default_value = "127.0.0.1:9466"
    )]
    ops_addr: SocketAddr,
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "MSKFLOW_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format: json or pretty.
    #[arg(long, env = "MSKFLOW_LOG_FORMAT", default_value = "json")]
    log_format: mskflow_telemetry::LogFormat,
    /// Sessions a patient may miss before the episode ends (DNA policy).
    #[arg(long, env = "MSKFLOW_SCHEDULING_MAX_MISSED", default_value_t = 2)]
    max_missed_sessions: u32,
    /// Do not tell the referrer when the DNA policy ends an episode.
    #[arg(long)]
    no_dna_referrer_notice: bool,
    /// Places in a class when the class does not say.
    #[arg(long, env = "MSKFLOW_SCHEDULING_CLASS_SIZE", default_value_t = 10)]
    default_class_size: u32,
    /// The largest class that may be scheduled.
    #[arg(long, env = "MSKFLOW_SCHEDULING_MAX_CLASS_SIZE", default_value_t = 12)]
    max_class_size: u32,
    /// Sessions of a 1:1 course when the request does not say.
    #[arg(
        long,
        env = "MSKFLOW_SCHEDULING_ONE_TO_ONE_SESSIONS",
        default_value_t = 6
    )]
    one_to_one_sessions: u32,
}

/// The process allocator (see `mskflow`'s main: glibc's spent about a third
/// of a service's CPU on short-lived buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mskflow_telemetry::init(&mskflow_telemetry::Settings {
        service: "mskflow-scheduling".to_owned(),
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;

    let store = mskflow_store::open(&args.store, "mskflow-scheduling")
        .await
        .context("opening the event log")?;
    let log = store.log.clone();

    let service = Service::build(
        Options {
            grpc_addr: args.grpc_addr,
            policy: Policy {
                max_missed_sessions: args.max_missed_sessions,
                notify_referrer_on_dna: !args.no_dna_referrer_notice,
                default_class_size: args.default_class_size,
                max_class_size: args.max_class_size,
                one_to_one_sessions: args.one_to_one_sessions,
                ..Policy::default()
            },
            projections: store.projections.clone(),
        },
        log.clone(),
    )
    .await
    .context("starting scheduling")?;
    tracing::info!(addr = %service.local_addr(), "mskflow-scheduling listening");

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
    result.context("serving scheduling")
}
