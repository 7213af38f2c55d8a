//! `mskflow-gateway`: the FHIR gateway as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

/// The mskflow FHIR gateway.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// HTTP listen address.
    #[arg(long, env = "MSKFLOW_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Intake gRPC endpoint.
    #[arg(
        long,
        env = "MSKFLOW_INTAKE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    intake_url: String,
    /// Outcomes gRPC endpoint (QuestionnaireResponse scoring, Questionnaires).
    #[arg(
        long,
        env = "MSKFLOW_OUTCOMES_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    outcomes_url: String,
    /// Embedded event store file (shared with intake on one machine).
    #[arg(long, env = "MSKFLOW_DB", default_value = "mskflow.db")]
    db: PathBuf,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MSKFLOW_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Public base URL of the FHIR API.
    #[arg(long, env = "MSKFLOW_BASE_URL")]
    base_url: Option<String>,
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "MSKFLOW_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format: json or pretty.
    #[arg(long, env = "MSKFLOW_LOG_FORMAT", default_value = "json")]
    log_format: mskflow_telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mskflow_telemetry::init(&mskflow_telemetry::Settings {
        service: "mskflow-gateway".to_owned(),
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;
    let log = mskflow_eventlog_sqlite::SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: args.db.clone(),
        ..Default::default()
    })
    .with_context(|| format!("opening the event store {}", args.db.display()))?;
    let service = mskflow_gateway::Service::build(
        mskflow_gateway::Options {
            http_addr: args.http_addr,
            intake_url: args.intake_url,
            outcomes_url: args.outcomes_url,
            body_limit: args.body_limit,
            base_url: args.base_url,
            ..Default::default()
        },
        Arc::new(mskflow_eventlog::Instrumented::new(Arc::new(log))),
    )
    .await?;
    tracing::info!(addr = %service.local_addr()?, "gateway listening");
    let result = service.run(mskflow_telemetry::shutdown_signal()).await;
    telemetry.shutdown();
    Ok(result?)
}
