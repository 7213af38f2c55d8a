//! The FHIR API, one module per resource family: each holds the handlers
//! of its routes (the route table is in [`crate::http`]). Below them:
//! [`request`] (what every handler does with a request and its answer),
//! [`intake`] (referrals submitted and cancelled over gRPC), [`referral`]
//! (the searches and histories a referral's Task and ServiceRequest share).

pub mod appointment;
pub mod audit_event;
pub mod encounter;
pub mod intake;
pub mod messaging;
pub mod metadata;
pub mod patient;
pub mod questionnaire;
pub mod referral;
pub mod request;
pub mod schedule;
pub mod service_request;
pub mod subscription;
pub mod task;
