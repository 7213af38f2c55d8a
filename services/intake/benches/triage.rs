//! Triage: the intake domain's `handle` with the shipped rules on a parsed
//! referral (red-flag rules, age, STarT Back, priority and pathway tables),
//! beside its ceiling: cloning the command, which `handle` must at least
//! consume.
//!
//! `cargo bench -p mskflow-intake --bench triage`

use std::hint::black_box;

use chrono::NaiveDate;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mskflow_intake::RuleSet;
use mskflow_intake::domain::{Command, ReferralState, handle};
use uuid::Uuid;

const MESSAGE: &[u8] = include_bytes!("../../../crates/fhir/tests/fixtures/referral-message.json");

fn triage(c: &mut Criterion) {
    let (Ok(parsed), Ok(rules)) = (
        mskflow_fhir::parse_process_message(MESSAGE),
        RuleSet::default_rules(),
    ) else {
        eprintln!("the fixture or the shipped rules do not load");
        std::process::exit(1);
    };
    let command = Command::Submit {
        referral_id: Uuid::new_v4(),
        request_id: Uuid::new_v4(),
        details: parsed.referral,
        today: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default(),
    };
    let state = ReferralState::default();
    let mut group = c.benchmark_group("intake_triage");
    group.throughput(Throughput::Elements(1));
    group.bench_function("handle", |b| {
        b.iter(|| handle(black_box(&state), black_box(&command).clone(), &rules))
    });
    group.bench_function("ceiling_clone", |b| b.iter(|| black_box(&command).clone()));
    group.finish();
}

criterion_group!(benches, triage);
criterion_main!(benches);
