//! Projection replay: the gateway's `Views` fold over the events of N
//! referrals (`ReferralReceived` with the FHIR JSON as sent, then the triage
//! decision), beside its ceiling: decoding the same envelopes' payloads into
//! the typed events, which the fold must do first.
//!
//! `cargo bench -p mskflow-gateway --bench replay`

use std::hint::black_box;

use chrono::{NaiveDate, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mskflow_eventlog::Envelope;
use mskflow_events::intake::IntakeEvent;
use mskflow_gateway::views::Views;
use mskflow_intake::RuleSet;
use mskflow_intake::domain::{Command, ReferralState, handle};
use uuid::Uuid;

const MESSAGE: &[u8] = include_bytes!("../../../crates/fhir/tests/fixtures/referral-message.json");

/// Referrals replayed per iteration (two events each).
const REFERRALS: usize = 5_000;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The events intake records for `n` referrals, as the log returns them.
fn envelopes(n: usize) -> BenchResult<Vec<Envelope>> {
    let parsed = mskflow_fhir::parse_process_message(MESSAGE)
        .map_err(|e| e.operation_outcome().to_string())?;
    let rules = RuleSet::default_rules()?;
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).ok_or("date")?;
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let referral_id = Uuid::new_v4();
        let events = handle(
            &ReferralState::default(),
            Command::Submit {
                referral_id,
                request_id: Uuid::new_v4(),
                details: parsed.referral.clone(),
                today,
            },
            &rules,
        )?;
        let correlation_id = Uuid::new_v4();
        for (i, event) in events.iter().enumerate() {
            let new =
                mskflow_eventlog::new_event(event, mskflow_events::SCHEMA_VERSION, Utc::now())?;
            out.push(Envelope {
                event_id: new.event_id,
                stream_id: format!("referral-{referral_id}"),
                sequence: i as u64 + 1,
                position: out.len() as u64 + 1,
                occurred_at: new.occurred_at,
                recorded_at: new.occurred_at,
                causation_id: None,
                correlation_id,
                traceparent: None,
                tracestate: None,
                event_type: new.event_type,
                schema_version: new.schema_version,
                payload: new.payload,
            });
        }
    }
    Ok(out)
}

fn replay(c: &mut Criterion) {
    let events = match envelopes(REFERRALS) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("building the events: {e}");
            std::process::exit(1);
        }
    };
    let mut group = c.benchmark_group("gateway_replay");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("views_fold", |b| {
        b.iter(|| {
            let mut views = Views::default();
            for e in black_box(&events) {
                let _ = views.apply(e);
            }
            views
        })
    });
    group.bench_function("ceiling_decode", |b| {
        b.iter(|| {
            black_box(&events)
                .iter()
                .filter(|e| mskflow_eventlog::decode::<IntakeEvent>(e).is_ok())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
