//! FHIR Subscriptions, topic-based in the style of the HL7 "Subscriptions R5
//! Backport" IG for R4: one topic ([`TOPIC`], a referral's Task changed
//! status), `rest-hook` channels only, to registered referrer endpoints.
//!
//! A subscription is the events of its stream `subscription-{id}`
//! (`SubscriptionCreated`, `SubscriptionDeleted`, and the handshake's
//! outcome `SubscriptionActivated` / `SubscriptionErrored`), so it survives a
//! restart and rebuilds by replay. Each is limited to the referrals of the
//! subscribing organisation (the token's ODS code). Notifications are sent by
//! the notification worker ([`crate::notify`]) through the same outbox as
//! the referrer messages.
//!
//! A new subscription is `requested`: the worker first sends the endpoint a
//! `handshake` notification ([`handshake`]). A 2xx answer makes it `active`;
//! a failure after the retries makes it `error` (`Subscription.error` says
//! why), and an errored subscription is sent nothing more.

pub mod model;
pub mod resource;

#[cfg(test)]
mod tests;

pub use model::*;
pub use resource::*;
