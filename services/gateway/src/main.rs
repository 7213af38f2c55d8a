//! `mskflow-gateway`: the FHIR gateway as its own process.

use std::net::SocketAddr;

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
    /// The event log: the embedded file (shared with intake on one
    /// machine) or Kafka.
    #[command(flatten)]
    store: mskflow_store::StoreArgs,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MSKFLOW_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Public base URL of the FHIR API.
    #[arg(long, env = "MSKFLOW_BASE_URL")]
    base_url: Option<String>,
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "MSKFLOW_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Authentication: `jwt` (tokens signed by the configured keys) or
    /// `dev` (a random key made at start-up; a development token is printed).
    #[arg(long, env = "MSKFLOW_GATEWAY_AUTH_MODE", default_value = "dev")]
    auth_mode: String,
    /// A JSON Web Key Set file of the token issuer's public keys.
    #[arg(long, env = "MSKFLOW_GATEWAY_AUTH_JWKS_FILE")]
    auth_jwks_file: Option<std::path::PathBuf>,
    /// A file holding a shared HS256 secret (at least 32 bytes).
    #[arg(long, env = "MSKFLOW_GATEWAY_AUTH_HS256_SECRET_FILE")]
    auth_hs256_secret_file: Option<std::path::PathBuf>,
    /// Required token issuer (`iss`).
    #[arg(long, env = "MSKFLOW_GATEWAY_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// Required token audience (`aud`).
    #[arg(long, env = "MSKFLOW_GATEWAY_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// ODS codes of provider organisations (may read every referral).
    #[arg(long, env = "MSKFLOW_GATEWAY_AUTH_PROVIDER_ODS", value_delimiter = ',')]
    auth_provider_ods: Vec<String>,
    /// Self-referral: the area's name, shown to people.
    #[arg(long, env = "MSKFLOW_SELF_REFERRAL_AREA")]
    self_referral_area: Option<String>,
    /// Self-referral: the area's GP practices, `ODS=Name` (comma-separated
    /// in the environment variable).
    #[arg(long, env = "MSKFLOW_SELF_REFERRAL_PRACTICES", value_delimiter = ',')]
    self_referral_practice: Vec<String>,
    /// PEM certificate chain for HTTPS; the listener serves HTTPS only when
    /// set (with --tls-key-file).
    #[arg(long, env = "MSKFLOW_GATEWAY_TLS_CERT_FILE")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the HTTPS certificate.
    #[arg(long, env = "MSKFLOW_GATEWAY_TLS_KEY_FILE")]
    tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA bundle for client certificates: when set, every client must
    /// present a certificate issued by one of them (mutual TLS).
    #[arg(long, env = "MSKFLOW_GATEWAY_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<std::path::PathBuf>,
    /// Extra PEM CA bundle trusted for outbound HTTPS (besides the system
    /// trust store).
    #[arg(long, env = "MSKFLOW_GATEWAY_OUTBOUND_CA_FILE")]
    outbound_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate presented to outbound receivers (mutual TLS).
    #[arg(long, env = "MSKFLOW_GATEWAY_OUTBOUND_CLIENT_CERT_FILE")]
    outbound_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the outbound client certificate.
    #[arg(long, env = "MSKFLOW_GATEWAY_OUTBOUND_CLIENT_KEY_FILE")]
    outbound_client_key_file: Option<std::path::PathBuf>,
    /// File holding the pseudonymisation secret of the analysts' stream
    /// (or the secret itself in `MSKFLOW_ANALYTICS_SECRET`). The stream is
    /// published only when a secret is given.
    #[arg(long, env = "MSKFLOW_ANALYTICS_SECRET_FILE")]
    analytics_secret_file: Option<std::path::PathBuf>,
    /// Postcode to IMD decile lookup (CSV `postcode,decile`) for the
    /// analysts' stream and `/analytics`; the illustrative one when unset.
    #[arg(long, env = "MSKFLOW_ANALYTICS_IMD_LOOKUP")]
    analytics_imd_lookup: Option<std::path::PathBuf>,
    /// The analysts' stream file on the embedded store (JSON Lines); by
    /// default `analytics/analyst-events.jsonl` next to `--db`. With Kafka
    /// the stream goes to the topic `{prefix}.analytics.v1` instead.
    #[arg(long, env = "MSKFLOW_ANALYTICS_STREAM_FILE")]
    analytics_stream_file: Option<std::path::PathBuf>,
    /// Log format: json or pretty.
    #[arg(long, env = "MSKFLOW_LOG_FORMAT", default_value = "json")]
    log_format: mskflow_telemetry::LogFormat,
}

/// The process allocator (see `mskflow`'s main: glibc's spent about a third
/// of a service's CPU on short-lived buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = mskflow_telemetry::init(&mskflow_telemetry::Settings {
        service: "mskflow-gateway".to_owned(),
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;
    let store = mskflow_store::open(&args.store, "mskflow-gateway")
        .await
        .context("opening the event log")?;
    let (analyst_stream, analytics_imd) = analyst_stream(&args)?;
    let service = mskflow_gateway::Service::build(
        mskflow_gateway::Options {
            http_addr: args.http_addr,
            intake_url: args.intake_url,
            outcomes_url: args.outcomes_url,
            body_limit: args.body_limit,
            base_url: args.base_url,
            auth: mskflow_gateway::auth::Options {
                mode: match args.auth_mode.as_str() {
                    "jwt" => mskflow_gateway::auth::Mode::Jwt,
                    "dev" => mskflow_gateway::auth::Mode::Dev,
                    other => anyhow::bail!("--auth-mode {other}: expected jwt or dev"),
                },
                jwks_file: args.auth_jwks_file,
                hs256_secret_file: args.auth_hs256_secret_file,
                issuer: args.auth_issuer,
                audience: args.auth_audience,
                provider_ods: args.auth_provider_ods,
                ..Default::default()
            },
            tls: mskflow_gateway::tls::Options {
                cert_file: args.tls_cert_file,
                key_file: args.tls_key_file,
                client_ca_file: args.tls_client_ca_file,
            },
            outbound: mskflow_gateway::delivery::Options {
                tls: mskflow_gateway::tls::OutboundOptions {
                    ca_file: args.outbound_ca_file,
                    client_cert_file: args.outbound_client_cert_file,
                    client_key_file: args.outbound_client_key_file,
                },
                ..Default::default()
            },
            analyst_stream,
            analytics_imd,
            projections: Some(store.projections.clone()),
            self_referral: self_referral(&args.self_referral_area, &args.self_referral_practice)?,
            ..Default::default()
        },
        store.log.clone(),
    )
    .await?;
    tracing::info!(addr = %service.local_addr()?, tls = service.is_tls(), "gateway listening");
    let result = service.run(mskflow_telemetry::shutdown_signal()).await;
    store.close().await;
    telemetry.shutdown();
    Ok(result?)
}

/// The analysts' stream when a secret is configured, and the IMD lookup
/// (for the stream and `/analytics`).
fn analyst_stream(
    args: &Args,
) -> anyhow::Result<(
    Option<mskflow_gateway::AnalystStream>,
    Option<mskflow_analytics::ImdLookup>,
)> {
    let imd = mskflow_analytics::publish::load_imd(args.analytics_imd_lookup.as_deref())?;
    let Some(secret) =
        mskflow_analytics::publish::load_secret(args.analytics_secret_file.as_deref())?
    else {
        return Ok((None, Some(imd)));
    };
    let pseudonymiser = mskflow_analytics::Pseudonymiser::new(&secret)?;
    let path = args.analytics_stream_file.clone().unwrap_or_else(|| {
        args.store
            .db
            .parent()
            .unwrap_or_else(|| std::path::Path::new(""))
            .join("analytics")
            .join("analyst-events.jsonl")
    });
    let sink = mskflow_store::analyst_sink(&args.store, "mskflow-gateway-analytics", &path)
        .context("the analysts' stream")?;
    Ok((
        Some(mskflow_gateway::AnalystStream {
            sink,
            context: mskflow_analytics::Context {
                pseudonymiser,
                imd: imd.clone(),
            },
        }),
        Some(imd),
    ))
}

/// The self-referral options: the defaults, with the area and practices
/// given on the command line.
fn self_referral(
    area: &Option<String>,
    practices: &[String],
) -> anyhow::Result<mskflow_gateway::selfref::Options> {
    let mut options = mskflow_gateway::selfref::Options::default();
    if practices.is_empty() && area.is_none() {
        return Ok(options);
    }
    let pairs = practices
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(c, n)| (c.trim().to_owned(), n.trim().to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--self-referral-practice {p}: expected ODS=Name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = area.clone().unwrap_or_else(|| options.area.name.clone());
    let pairs = if pairs.is_empty() {
        options
            .area
            .practices
            .iter()
            .map(|p| (p.ods.as_str().to_owned(), p.name.clone()))
            .collect()
    } else {
        pairs
    };
    options.area = mskflow_selfreferral::Area::new(&name, &pairs, options.area.min_age)?;
    Ok(options)
}
