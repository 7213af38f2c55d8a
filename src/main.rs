//! `mskflow`: the whole system in one process, and the operator's commands.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mskflow::Config;

/// MSK referral pathway: FHIR gateway, intake and triage on an embedded,
/// durable event store.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML). Environment variables `MSKFLOW__SECTION__KEY`
    /// override it.
    #[arg(long, short, global = true, env = "MSKFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded event store (overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process (the default).
    Run {
        /// Gateway HTTP address, e.g. 127.0.0.1:8080 (port 0 picks one).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Intake gRPC address.
        #[arg(long)]
        grpc_addr: Option<std::net::SocketAddr>,
        /// Export traces to this OTLP/gRPC endpoint (e.g. http://127.0.0.1:4317).
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// The event store, consumers, referral counts and service health.
    Status {
        /// Gateway base URL (default: from the configuration).
        #[arg(long)]
        url: Option<String>,
    },
    /// Rebuild the gateway views from the log (progress bar), report them,
    /// and optionally reset a durable consumer to replay from the start; or
    /// (`--rebuild`) rebuild read models kept on disk.
    Replay {
        /// Consumer whose checkpoint to reset to 0.
        #[arg(long)]
        reset_consumer: Option<String>,
        /// Rebuild a read model kept on disk (or `all`) from the log, with
        /// the services stopped; prints events/s per read model.
        #[arg(long, value_name = "NAME", conflicts_with = "reset_consumer")]
        rebuild: Option<String>,
        /// Check a read model kept on disk (or `all`) against a rebuild from
        /// the log, row by row, with the services stopped; fails on any
        /// difference.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["reset_consumer", "rebuild"])]
        check: Option<String>,
    },
    /// Events a consumer could not handle: list, retry or discard them
    /// (in the embedded store, or on Kafka when brokers are named).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
        #[command(flatten)]
        store: mskflow_store::StoreArgs,
    },
    /// Write the analysts' stream (pseudonymised, no patient identifiers)
    /// to files: analyst-events.jsonl and analyst-events.csv (and Parquet
    /// with --parquet), and every aggregate view under views/.
    Export {
        /// Directory to write the files to.
        #[arg(long)]
        out: PathBuf,
        /// File holding the pseudonymisation secret (otherwise the
        /// MSKFLOW_ANALYTICS_SECRET environment variable). Required.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Postcode to IMD decile lookup, CSV `postcode,decile` (default: the
        /// illustrative file shipped with mskflow).
        #[arg(long)]
        imd_lookup: Option<PathBuf>,
        /// Also write the stream (analyst-events.parquet) and every view
        /// (views/*.parquet) as Apache Parquet.
        #[arg(long)]
        parquet: bool,
    },
    /// Post generated referral messages over HTTP (in-process system by
    /// default) and report throughput and latency percentiles.
    Load(mskflow::load::LoadArgs),
    /// The brokers' own ceiling for mskflow's traffic: keyed records
    /// produced (acks=all, idempotent) and read back by a plain client,
    /// sized like the topic set's records, and (with --referrals) that
    /// ceiling in referrals per second.
    KafkaBench(mskflow::kafka_bench::KafkaBenchArgs),
    /// The Kafka topic set: create what is missing, or check it.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
        #[command(flatten)]
        store: mskflow_store::StoreArgs,
    },
    /// Check the configuration and print it as resolved.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create every topic of the set that does not exist (partitions,
    /// replication, retention as code); existing topics are left alone.
    Create,
    /// Compare the brokers' topics with the set; exits non-zero on a
    /// difference.
    Check,
    /// Print the topic set without contacting a broker.
    List,
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// The open dead letters (neither resolved nor discarded).
    List {
        /// Only this consumer's (assessment, scheduling, outcomes).
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Ask the consumer to handle the event again (when it runs).
    Retry {
        /// The id of the dead-lettered event.
        event_id: uuid::Uuid,
        #[arg(long)]
        consumer: String,
        /// Who asks (default: the USER environment variable).
        #[arg(long)]
        by: Option<String>,
    },
    /// Give up on the event for good.
    Discard {
        /// The id of the dead-lettered event.
        event_id: uuid::Uuid,
        #[arg(long)]
        consumer: String,
        /// Why (recorded; must not quote patient data).
        #[arg(long)]
        reason: String,
        /// Who discards (default: the USER environment variable).
        #[arg(long)]
        by: Option<String>,
    },
}

/// The operator: `--by`, else the `USER` environment variable.
fn operator(by: Option<String>) -> anyhow::Result<String> {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .context("who is acting is recorded: pass --by NAME (USER is not set)")
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Load and validate the configuration, print the result as TOML.
    Check,
}

/// mimalloc as the process allocator: every service allocates many small,
/// short-lived buffers from many threads (JSON text and trees, protobuf,
/// Kafka records); under load glibc's malloc took about 30 % of the
/// gateway's CPU samples (`perf record` during `scripts/kafka-load.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    match cli.command.unwrap_or(Command::Run {
        http_addr: None,
        grpc_addr: None,
        otlp_endpoint: None,
    }) {
        Command::Status { url } => {
            print!("{}", mskflow::ops::status(&config, url).await?);
            Ok(())
        }
        Command::Replay {
            reset_consumer,
            rebuild,
            check,
        } => {
            use mskflow::ops::{Action, projections, replay};
            let out = match (rebuild, check) {
                (Some(name), _) => projections(&config, &name, Action::Rebuild).await?,
                (None, Some(name)) => projections(&config, &name, Action::Check).await?,
                (None, None) => replay(&config, reset_consumer).await?,
            };
            print!("{out}");
            Ok(())
        }
        Command::DeadLetters { action, store } => {
            let out = match action {
                DeadLetterAction::List { consumer } => {
                    mskflow::ops::dead_letters_list(&config, &store, consumer.as_deref()).await?
                }
                DeadLetterAction::Retry {
                    event_id,
                    consumer,
                    by,
                } => {
                    mskflow::ops::dead_letters_retry(
                        &config,
                        &store,
                        &consumer,
                        event_id,
                        &operator(by)?,
                    )
                    .await?
                }
                DeadLetterAction::Discard {
                    event_id,
                    consumer,
                    reason,
                    by,
                } => {
                    mskflow::ops::dead_letters_discard(
                        &config,
                        &store,
                        &consumer,
                        event_id,
                        &reason,
                        &operator(by)?,
                    )
                    .await?
                }
            };
            print!("{out}");
            Ok(())
        }
        Command::Export {
            out,
            secret_file,
            imd_lookup,
            parquet,
        } => {
            let options = mskflow::export::ExportOptions {
                out,
                secret_file,
                imd_lookup,
                parquet,
            };
            print!("{}", mskflow::export::export(&config, &options).await?);
            Ok(())
        }
        Command::Topics { action, store } => {
            let action = match action {
                TopicsAction::Create => mskflow::topics::Action::Create,
                TopicsAction::Check => mskflow::topics::Action::Check,
                TopicsAction::List => mskflow::topics::Action::List,
            };
            print!("{}", mskflow::topics::run(action, &store).await?);
            Ok(())
        }
        Command::KafkaBench(args) => {
            print!("{}", mskflow::kafka_bench::command(&args).await?);
            Ok(())
        }
        Command::Load(args) => {
            print!("{}", mskflow::load::command(&args).await?);
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let format: mskflow_telemetry::LogFormat = config.log_format.parse()?;
            let _ = format;
            print!("{}", toml_string(&config)?);
            Ok(())
        }
        Command::Run {
            http_addr,
            grpc_addr,
            otlp_endpoint,
        } => {
            if let Some(a) = http_addr {
                config.gateway.addr = a;
            }
            if let Some(a) = grpc_addr {
                config.intake.grpc_addr = a;
            }
            if let Some(e) = otlp_endpoint {
                config.otlp_endpoint = Some(e);
            }
            let telemetry = mskflow_telemetry::init(&mskflow_telemetry::Settings {
                service: "mskflow".to_owned(),
                log_format: config.log_format.parse()?,
                otlp_endpoint: config.otlp_endpoint.clone(),
            })?;
            let running = mskflow::start(&config).await?;
            let url = format!("http://{}/fhir", running.gateway_addr);
            println!(
                "mskflow is running on the embedded event store {}",
                config.event_store_path().display()
            );
            println!("  FHIR gateway:  {url}");
            println!("  intake gRPC:       {}", running.intake_addr);
            println!("  assessment gRPC:   {}", running.assessment_addr);
            println!("  scheduling gRPC:   {}", running.scheduling_addr);
            println!("  outcomes gRPC:     {}", running.outcomes_addr);
            println!("Post a referral (TOKEN: the bearer token printed on stderr in dev mode):");
            println!(
                "  curl -s -X POST {url}/\\$process-message -H 'Content-Type: application/fhir+json' \
                 -H \"Authorization: Bearer $TOKEN\" \
                 -H \"X-Request-Id: $(cat /proc/sys/kernel/random/uuid)\" \
                 -H \"X-Correlation-Id: $(cat /proc/sys/kernel/random/uuid)\" \
                 --data @crates/fhir/tests/fixtures/referral-message.json"
            );
            println!("ready");
            let result = running
                .run_until(mskflow_telemetry::shutdown_signal())
                .await;
            tracing::info!(ok = result.is_ok(), "mskflow stopped");
            telemetry.shutdown();
            result
        }
    }
}

fn toml_string(config: &Config) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(config)?)
}
