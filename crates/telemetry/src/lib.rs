//! Logging set-up shared by every binary: structured logs to stderr, JSON by
//! default, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    #[default]
    Json,
    /// Human-readable lines (for a terminal).
    Pretty,
}

impl std::str::FromStr for LogFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "pretty" | "text" => Ok(LogFormat::Pretty),
            other => Err(Error::UnknownFormat(other.to_owned())),
        }
    }
}

/// Errors of the telemetry set-up (they end start-up with a message).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown log format '{0}' (use json or pretty)")]
    UnknownFormat(String),
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Install the global subscriber. `service` names the process in every line.
pub fn init(service: &str, format: LogFormat) -> Result<(), Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
    result.map_err(|e| Error::AlreadyInitialised(e.to_string()))?;
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        "logging started"
    );
    Ok(())
}

/// Resolves on the first SIGTERM or Ctrl-C. A second signal ends the process
/// at once (exit code 130) for an operator who will not wait for the drain.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received: draining (signal again to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
