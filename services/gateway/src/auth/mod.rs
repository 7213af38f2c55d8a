//! OAuth2 bearer tokens (JWT) and SMART-on-FHIR system scopes on `/fhir`.
//!
//! Every request under `/fhir` except `GET /fhir/metadata` must carry
//! `Authorization: Bearer <JWT>`. The signature is checked against the
//! configured keys (a JWKS file: RS256, RS384, RS512, PS256, ES256, ES384,
//! EdDSA; and/or a shared HS256 secret), then `exp`, `nbf`, and `iss` / `aud`
//! when configured, with 60 s of clock skew.
//!
//! Claims the gateway reads:
//!
//! * `client_id` (else `sub`): who is calling; recorded on every audit event.
//! * `scope`: space-separated SMART system scopes, v1 (`system/Task.read`,
//!   `system/ServiceRequest.write`, `system/*.*`) or v2
//!   (`system/Task.rs`, `system/ServiceRequest.cu`).
//! * `ods`: ODS code of the calling organisation. A referrer sees only the
//!   referrals its organisation sent; another organisation's referral answers
//!   404, exactly as an unknown one.
//! * `role`: `"provider"` (a string or an array holding it) marks the MSK
//!   service's own systems, which may read every referral. Organisations
//!   listed in `provider_ods` are providers too.
//!
//! In `dev` mode (the embedded default) the gateway makes a random HS256 key
//! at start-up and prints a ready-made token for it; there is no mode without
//! authentication.

pub mod middleware;
pub mod nhsd;
pub mod token;

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests;

pub use middleware::*;
pub use nhsd::*;
pub use token::*;
