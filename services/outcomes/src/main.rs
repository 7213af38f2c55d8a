//! `mskflow-outcomes`: the outcome collection service on its own, over the
//! event log it is configured with (the embedded file or Kafka).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mskflow_outcomes::{Mic, Options, Policy, Service};

/// Outcome collection: PROM schedules, scores and change (gRPC).
#[derive(Debug, Parser)]
#[command(name = "mskflow-outcomes", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "MSKFLOW_OUTCOMES_GRPC_ADDR",
        default_value = "127.0.0.1:50054"
    )]
    grpc_addr: SocketAddr,
    /// The event log: the embedded file (default) or Kafka.
    #[command(flatten)]
    store: mskflow_store::StoreArgs,
    /// Address of the operations endpoint (/metrics, /health/live, /health/ready).
    #[arg(
        long,
        env = "MSKFLOW_OUTCOMES_OPS_ADDR",
        default_value = "127.0.0.1:9467"
    )]
    ops_addr: SocketAddr,
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "MSKFLOW_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format: json or pretty.
    #[arg(long, env = "MSKFLOW_LOG_FORMAT", default_value = "json")]
    log_format: mskflow_telemetry::LogFormat,
    /// Follow-up questionnaires are due this many months after discharge.
    #[arg(long, env = "MSKFLOW_OUTCOMES_FOLLOW_UP_MONTHS", default_value_t = 6)]
    follow_up_months: u32,
    /// A questionnaire is overdue this many days after it was due.
    #[arg(long, env = "MSKFLOW_OUTCOMES_OVERDUE_DAYS", default_value_t = 28)]
    overdue_days: u32,
    /// Minimal important change of the MSK-HQ total.
    #[arg(long, env = "MSKFLOW_OUTCOMES_MIC_MSK_HQ", default_value_t = 5.0)]
    mic_msk_hq: f64,
    /// Minimal important change of the EQ-5D-5L index.
    #[arg(long, env = "MSKFLOW_OUTCOMES_MIC_EQ5D_INDEX", default_value_t = 0.08)]
    mic_eq5d_index: f64,
    /// Minimal important change of the PSFS mean.
    #[arg(long, env = "MSKFLOW_OUTCOMES_MIC_PSFS", default_value_t = 2.0)]
    mic_psfs: f64,
    /// An EQ-5D-5L value set file (CSV `profile,index`, all 3125 profiles),
    /// for another country or a newer set; recorded under its file name.
    /// Without it the built-in England value set (Devlin et al. 2018,
    /// `england-devlin-2018`) is used.
    #[arg(long, env = "MSKFLOW_OUTCOMES_EQ5D_VALUE_SET")]
    eq5d_value_set: Option<PathBuf>,
    /// Licence file (TOML or JSON) with the licensed item wording.
    #[arg(long, env = "MSKFLOW_OUTCOMES_LICENCE_FILE")]
    licence_file: Option<PathBuf>,
    /// Seconds between overdue sweeps.
    #[arg(long, env = "MSKFLOW_OUTCOMES_SWEEP_SECS", default_value_t = 3600)]
    sweep_secs: u64,
}

/// The process allocator (see `mskflow`'s main: glibc's spent about a third
/// of a service's CPU on short-lived buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mskflow_telemetry::init(&mskflow_telemetry::Settings {
        service: "mskflow-outcomes".to_owned(),
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;

    let store = mskflow_store::open(&args.store, "mskflow-outcomes")
        .await
        .context("opening the event log")?;
    let log = store.log.clone();

    let options = Options {
        policy: Policy {
            follow_up_months: args.follow_up_months,
            overdue_after_days: args.overdue_days,
            mic: Mic {
                msk_hq: args.mic_msk_hq,
                eq5d_index: args.mic_eq5d_index,
                psfs: args.mic_psfs,
            },
            ..Policy::default()
        },
        value_set_path: args.eq5d_value_set,
        licence_path: args.licence_file,
        overdue_sweep_interval: Duration::from_secs(args.sweep_secs.max(1)),
        projections: store.projections.clone(),
        ..Options::new(args.grpc_addr)
    };
    let service = Service::build(options, log.clone())
        .await
        .context("starting outcomes")?;
    tracing::info!(addr = %service.local_addr(), "mskflow-outcomes listening");

    let result = mskflow_telemetry::ops::alongside(
        args.ops_addr,
        mskflow_telemetry::ops::store_readiness(log.clone()),
        service.run(mskflow_telemetry::shutdown_signal()),
    )
    .await
    .context("binding the operations endpoint")?;
    store.close().await;
    telemetry.shutdown();
    result.context("serving outcomes")
}
