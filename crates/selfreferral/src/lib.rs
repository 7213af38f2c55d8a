//! Patient self-referral, as a pure core (no I/O): the questions asked, in
//! their order (red flags first of the health questions), who may use the
//! service ([`Area`]: age 16 and over, registered with one of the area's GP
//! practices), the red-flag safety-netting rules ([`safety_net`]), the
//! parsing of answers as posted ([`Answers`] into [`Submission`]), the
//! reference number a person is given ([`Reference`]) and the referral the
//! answers make ([`referral_details`]), which intake triages like any other.
//!
//! The web form and the call handler's form in the gateway ask the same
//! questions through this crate; only their route differs
//! (`self-referral` or `telephone`).

mod area;
mod form;
pub mod questions;
mod reference;
mod referral;
mod safety;

pub use area::{Area, Eligibility, Practice, age_on};
pub use form::{
    AboutYou, Answers, FieldError, MAX_TEXT, Outcome, Problem, Questionnaires, Step, Submission,
    decide, start_back_asked, step_of,
};
pub use reference::Reference;
pub use referral::{REFERENCE_SYSTEM, Referral, referral_details, referral_id};
pub use safety::{SAFETY_NET_RULES_VERSION, SafetyNet, safety_net};

/// Version of the question set (recorded with every submission).
pub const QUESTIONS_VERSION: &str = "self-referral-2026.1";

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A practice code that is not an ODS code. Start-up only: the gateway
    /// does not start with it.
    #[error("GP practice {code:?} is not an ODS code: {source}")]
    Practice {
        code: String,
        source: mskflow_events::types::Error,
    },
}

#[cfg(test)]
mod tests;
