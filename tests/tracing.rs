//! One trace follows a referral from the HTTP request through the gRPC call
//! and the event append to the consumer that handles the event.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use mskflow_telemetry::opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_spans_gateway_intake_append_and_consumer() -> TestResult {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let telemetry = mskflow_telemetry::init_with_provider(
        &mskflow_telemetry::Settings {
            service: "mskflow-test".to_owned(),
            log_format: mskflow_telemetry::LogFormat::Json,
            otlp_endpoint: None,
        },
        provider.clone(),
    )?;
    let mut app = spawn_app().await?;
    // A caller that sends its own trace context: everything joins its trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = client()
        .post(format!("{}/$process-message", app.base))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", uuid::Uuid::new_v4().to_string())
        .header("X-Correlation-Id", uuid::Uuid::new_v4().to_string())
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .body(new_referral_message()?.to_string())
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    // The consumer spans close as the views apply; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.stop().await?;
    provider.force_flush()?;

    let spans = exporter.get_finished_spans()?;
    let mut by_trace: HashMap<String, HashSet<String>> = HashMap::new();
    for s in &spans {
        by_trace
            .entry(s.span_context.trace_id().to_string())
            .or_default()
            .insert(s.name.to_string());
    }
    let names = by_trace
        .get(caller_trace)
        .ok_or_else(|| format!("no span joined the caller's trace: {by_trace:?}"))?;
    for expected in [
        "POST /fhir/$process-message",
        "IntakeService/SubmitReferral",
        "eventlog.append",
        "gateway-views ReferralReceived",
        "gateway-views ReferralTriaged",
    ] {
        assert!(
            names.contains(expected),
            "span {expected} is not in the trace: {names:?}"
        );
    }
    // And the event in the log carries the trace context for other consumers.
    let log = mskflow_eventlog_sqlite::SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: app.dir.join("events.db"),
        ..Default::default()
    })?;
    use mskflow_eventlog::EventLog as _;
    let mut sub = log
        .subscribe("trace-check", mskflow_eventlog::StartFrom::Beginning)
        .await?;
    let events = sub.poll_batch(100).await?;
    assert!(!events.is_empty());
    for e in &events {
        let tp = e.traceparent.as_deref().unwrap_or_default();
        assert!(tp.contains(caller_trace), "{} carries {tp:?}", e.event_type);
    }
    telemetry.shutdown();
    Ok(())
}
