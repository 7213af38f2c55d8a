//! Telemetry shared by every binary: structured logs, OpenTelemetry traces
//! with W3C trace-context propagation, Prometheus metrics, and shutdown
//! signals.
//!
//! * Logs go to stderr, JSON by default, filtered by `RUST_LOG` (default
//!   `info`). Each line carries the fields of the current span, among them
//!   `trace_id` and `correlation_id`.
//! * Traces: every process runs an OpenTelemetry tracer, so trace ids exist
//!   (in logs and in event envelopes) even when nothing is exported. Setting
//!   an OTLP endpoint exports them over gRPC.
//! * Metrics: [`render_metrics`] renders the process's Prometheus text.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub mod ops;

pub use opentelemetry_sdk;

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
    #[error("cannot set up the OTLP exporter for {endpoint}: {reason}")]
    Otlp { endpoint: String, reason: String },
}

/// What to set up.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Names the process in logs and traces (`service.name`).
    pub service: String,
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint (e.g. `http://127.0.0.1:4317`); no export when unset.
    pub otlp_endpoint: Option<String>,
}

/// Keeps the tracer alive; [`Telemetry::shutdown`] flushes spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flush and stop trace export. Call once, at the end of a graceful stop.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing traces failed");
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer shutdown");
        }
    }
}

fn resource(service: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service.to_owned())
        .build()
}

/// Install logging and tracing for this process.
pub fn init(settings: &Settings) -> Result<Telemetry, Error> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource(&settings.service));
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| Error::Otlp {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    init_with_provider(settings, builder.build())
}

/// Install logging and tracing with a given tracer provider (tests use one
/// with an in-memory exporter).
pub fn init_with_provider(
    settings: &Settings,
    provider: SdkTracerProvider,
) -> Result<Telemetry, Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tracer = provider.tracer(settings.service.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .try_init()
        .map_err(|e| Error::AlreadyInitialised(e.to_string()))?;
    install_metrics();
    tracing::info!(service = %settings.service, version = env!("CARGO_PKG_VERSION"), "telemetry started");
    Ok(Telemetry { provider })
}

/// The W3C `traceparent` and `tracestate` of the current span, if it is
/// being traced.
pub fn current_trace_context() -> (Option<String>, Option<String>) {
    trace_context_of(&Span::current())
}

/// The W3C `traceparent` and `tracestate` of `span`.
pub fn trace_context_of(span: &Span) -> (Option<String>, Option<String>) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return (None, None);
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let state = carrier.remove("tracestate").filter(|s| !s.is_empty());
    (carrier.remove("traceparent"), state)
}

/// Make `span` a child of the remote span in `traceparent` (from a header,
/// gRPC metadata or an event envelope). Invalid or missing context is ignored.
pub fn set_remote_parent(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` as 32 hex digits, if it is being traced.
pub fn trace_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Install the process-wide Prometheus recorder (idempotent).
pub fn install_metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                // Another recorder is installed (an embedding program's):
                // ours then renders nothing rather than failing start-up.
                tracing::warn!(error = %e, "metrics recorder already installed");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

/// The Prometheus text exposition of every metric of this process.
pub fn render_metrics() -> String {
    install_metrics().render()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_and_histograms() {
        install_metrics();
        metrics::counter!("mskflow_test_total", "kind" => "a").increment(2);
        metrics::histogram!("mskflow_test_duration_seconds").record(0.003);
        let text = render_metrics();
        assert!(text.contains("mskflow_test_total{kind=\"a\"} 2"), "{text}");
        assert!(
            text.contains("mskflow_test_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
