//! FHIR referral message parse + validate, beside its ceiling: reading the
//! same bytes into a `serde_json::Value` (the least any JSON reader does).
//!
//! `cargo bench -p mskflow-fhir --bench parse`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MESSAGE: &[u8] = include_bytes!("../tests/fixtures/referral-message.json");

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("fhir_parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_process_message", |b| {
        b.iter(|| mskflow_fhir::parse_process_message(black_box(MESSAGE)).is_ok())
    });
    group.bench_function("ceiling_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(MESSAGE)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
