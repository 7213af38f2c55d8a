//! Red-flag safety-netting: an answer that suggests cauda equina syndrome
//! stops the form with "call 999 or go to A&E now"; any other red flag stops
//! it with "contact your GP practice urgently, or NHS 111". The rules are
//! data with a version, recorded with the advice given.

use mskflow_events::selfreferral::SafetyNetAdvice;
use mskflow_events::types::RedFlag;

/// Version of the safety-netting rules below.
pub const SAFETY_NET_RULES_VERSION: &str = "self-referral-safety-net-2026.1";

/// Red flags that suggest cauda equina syndrome: an emergency.
const EMERGENCY: &[RedFlag] = &[
    RedFlag::SaddleAnaesthesia,
    RedFlag::BladderOrBowelDysfunction,
    RedFlag::BilateralNeurologicalSymptoms,
];

/// The advice for a set of red-flag answers, and the flags that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNet {
    pub advice: SafetyNetAdvice,
    pub red_flags: Vec<RedFlag>,
    pub rule_set_version: &'static str,
}

/// What to tell a person who answered yes to `red_flags`; `None` when no
/// red flag was answered yes (the form goes on).
pub fn safety_net(red_flags: &[RedFlag]) -> Option<SafetyNet> {
    if red_flags.is_empty() {
        return None;
    }
    let advice = if red_flags.iter().any(|f| EMERGENCY.contains(f)) {
        SafetyNetAdvice::Emergency
    } else {
        SafetyNetAdvice::UrgentGp
    };
    let mut red_flags = red_flags.to_vec();
    red_flags.sort();
    red_flags.dedup();
    Some(SafetyNet {
        advice,
        red_flags,
        rule_set_version: SAFETY_NET_RULES_VERSION,
    })
}
