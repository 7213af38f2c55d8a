//! Intake's side of the gRPC contract on arbitrary bytes: a protobuf
//! `Referral` is decoded, converted (re-validated) into `ReferralDetails`,
//! and what converts is triaged by the pure domain with the shipped rules.
//!
//! Properties: no panic; a new referral always gets `ReferralReceived`
//! then exactly one decision, recording the rule-set version; the folded
//! state exists, and the same referral a second time is `AlreadyRecorded`.

#![no_main]

use std::sync::OnceLock;

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use mskflow_events::intake::{IntakeEvent, ReferralDetails};
use mskflow_intake::RuleSet;
use mskflow_intake::domain::{self, Command, DomainError, ReferralState};
use mskflow_proto::intake::v1 as pb;
use prost::Message as _;
use uuid::Uuid;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| match RuleSet::default_rules() {
        Ok(r) => r,
        Err(e) => panic!("the shipped rules do not load: {e}"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(referral) = pb::Referral::decode(data) else {
        return;
    };
    let Ok(details) = ReferralDetails::try_from(referral) else {
        return;
    };
    let referral_id = Uuid::from_u128(1);
    let submit = |details: ReferralDetails| Command::Submit {
        referral_id,
        request_id: Uuid::from_u128(2),
        details,
        today: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap_or_default(),
    };
    let events = match domain::handle(&ReferralState::default(), submit(details.clone()), rules()) {
        Ok(events) => events,
        Err(e) => panic!("a new referral was refused: {e}"),
    };
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(events[0], IntakeEvent::ReferralReceived(_)));
    assert!(matches!(
        events[1],
        IntakeEvent::ReferralTriaged(_)
            | IntakeEvent::ReferralRedirected(_)
            | IntakeEvent::ReferralRejected(_)
    ));
    let state = domain::fold(&events);
    assert!(state.exists());
    assert_eq!(state.version, 2);
    assert_eq!(state.rule_set_version.as_deref(), Some(rules().version()));
    assert_eq!(
        domain::handle(&state, submit(details), rules()),
        Err(DomainError::AlreadyRecorded { referral_id })
    );
});
