//! The intake application service: identifies the referral, refuses
//! duplicates, runs the domain and appends its events durably.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, decode, new_event};
use mskflow_events::intake::{IntakeEvent, ReferralDetails};
use mskflow_projection::{FollowTask, Projector};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Command, DomainError, ReferralState};
use crate::index::{self, Overlay, RequestIndex};
use crate::rules::RuleSet;

pub use mskflow_events::intake::{REFERRAL_ID_NAMESPACE, referral_id};

/// The stream of one referral.
pub fn stream_id(referral_id: Uuid) -> String {
    format!("referral-{referral_id}")
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A referral recorded and triaged.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub referral_id: Uuid,
    /// The stream's version after the append.
    pub version: u64,
    pub state: ReferralState,
}

/// A submission refused for a business reason (nothing was appended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The request id was already processed, or the referral is already
    /// recorded. gRPC `ALREADY_EXISTS` with the referral id in metadata; HTTP
    /// 409 OperationOutcome `duplicate`.
    Duplicate { referral_id: Uuid },
    /// The referral refuses the command (see [`DomainError`] for how each
    /// reason crosses a boundary).
    Refused(DomainError),
}

/// The intake application service.
#[derive(Debug)]
pub struct Intake {
    log: Arc<dyn EventLog>,
    rules: Arc<RuleSet>,
    clock: Arc<dyn Clock>,
    /// The duplicate index on disk, following the log.
    index: Projector<RequestIndex>,
    _follow: FollowTask,
    /// This instance's requests not yet in the stored index.
    overlay: Overlay,
}

/// Holds a request id in the overlay while its append is in flight, and
/// frees it unless the append succeeded, even when the caller gives up (the
/// future is dropped) half-way.
struct Reservation<'a> {
    overlay: &'a Overlay,
    request_id: Uuid,
    kept: bool,
}

impl Reservation<'_> {
    fn keep(mut self, position: u64) {
        self.overlay.recorded(self.request_id, position);
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.overlay.release(self.request_id);
        }
    }
}

impl Intake {
    /// Open the service over a log. The duplicate index resumes from its
    /// stored checkpoint in `projections` (or is rebuilt by replay when it
    /// has none that fits this log) and then follows the log.
    pub async fn open(
        log: Arc<dyn EventLog>,
        rules: Arc<RuleSet>,
        clock: Arc<dyn Clock>,
        projections: &mskflow_projection::Options,
    ) -> Result<Self, Error> {
        let (index, following, catch_up) = Projector::open(&log, projections, RequestIndex).await?;
        tracing::info!(
            events = catch_up.events,
            applied = catch_up.applied,
            rule_set_version = rules.version(),
            "intake index ready"
        );
        let follow = index.spawn(following);
        Ok(Self {
            log,
            rules,
            clock,
            index,
            _follow: follow,
            overlay: Overlay::default(),
        })
    }

    /// Reserve `request_id` for `referral_id` unless it was processed
    /// already (then the referral it mapped to).
    async fn reserve(
        &self,
        request_id: Uuid,
        referral_id: Uuid,
    ) -> Result<Result<Reservation<'_>, Uuid>, Error> {
        if let Err(existing) = self
            .overlay
            .reserve(request_id, referral_id, self.index.applied())
        {
            return Ok(Err(existing));
        }
        let reservation = Reservation {
            overlay: &self.overlay,
            request_id,
            kept: false,
        };
        match self
            .index
            .read(move |conn| index::stored_referral(conn, request_id))
            .await?
        {
            Some(existing) => Ok(Err(existing)),
            None => Ok(Ok(reservation)),
        }
    }

    /// Requests held in memory by the duplicate index (in flight, or
    /// recorded and not yet folded into the stored index).
    pub fn pending_requests(&self) -> usize {
        self.overlay.len()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Record a referral and triage it. `Ok(Err(_))` is a business refusal
    /// (nothing appended); `Err(_)` an infrastructure failure.
    pub async fn submit(
        &self,
        request_id: Uuid,
        correlation_id: Uuid,
        traceparent: Option<String>,
        details: ReferralDetails,
    ) -> Result<Result<Submitted, Rejection>, Error> {
        let referral_id = referral_id(request_id, &details);
        let reservation = match self.reserve(request_id, referral_id).await? {
            Ok(reservation) => reservation,
            Err(existing) => {
                tracing::info!(%request_id, referral_id = %existing, "request already processed");
                return Ok(Err(Rejection::Duplicate {
                    referral_id: existing,
                }));
            }
        };

        let now = self.clock.now();
        // A referral recorded already under another request id has a stream:
        // the append below expects none, so the store refuses it.
        let events = match domain::handle(
            &ReferralState::default(),
            Command::Submit {
                referral_id,
                request_id,
                details,
                today: now.date_naive(),
            },
            &self.rules,
        ) {
            Ok(events) => events,
            Err(DomainError::AlreadyRecorded { referral_id }) => {
                return Ok(Err(Rejection::Duplicate { referral_id }));
            }
            Err(other) => return Ok(Err(Rejection::Refused(other))),
        };
        let new_events = events
            .iter()
            .map(|e| {
                new_event(e, mskflow_events::SCHEMA_VERSION, now).map_err(|source| Error::Encode {
                    event_type: e.event_type(),
                    reason: crate::json_error_reason(&source),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = Metadata {
            causation_id: Some(request_id),
            correlation_id,
            traceparent,
            tracestate: None,
        };
        let stream = stream_id(referral_id);
        match self
            .log
            .append(&stream, ExpectedVersion::NoStream, new_events, &metadata)
            .await
        {
            Ok(appended) => {
                reservation.keep(appended.position);
                let mut state = domain::fold(&events);
                state.version = appended.version;
                tracing::info!(
                    %referral_id,
                    %request_id,
                    %correlation_id,
                    status = state.status.map_or("", |s| s.code()),
                    rule_id = state.rule_id.as_deref().unwrap_or(""),
                    rule_set_version = self.rules.version(),
                    "referral recorded"
                );
                Ok(Ok(Submitted {
                    referral_id,
                    version: appended.version,
                    state,
                }))
            }
            Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                // The store already holds this referral (another request won).
                drop(reservation);
                tracing::info!(%request_id, %referral_id, "referral already recorded (store)");
                Ok(Err(Rejection::Duplicate { referral_id }))
            }
            Err(e) => {
                drop(reservation);
                tracing::warn!(%request_id, %referral_id, error = %e, "referral append failed");
                Err(e.into())
            }
        }
    }

    /// Cancel an active referral at its sender's request. The referral is
    /// found by the same identity as on submission (sender ODS code and
    /// ServiceRequest.identifier).
    #[allow(
        clippy::too_many_arguments,
        reason = "one request's fields, passed through from gRPC"
    )]
    pub async fn cancel(
        &self,
        request_id: Uuid,
        correlation_id: Uuid,
        traceparent: Option<String>,
        details: &ReferralDetails,
        status: mskflow_events::intake::CancellationStatus,
        expected_version: Option<u64>,
    ) -> Result<Result<Submitted, Rejection>, Error> {
        if details.service_request_identifier.is_none() {
            return Ok(Err(Rejection::Refused(DomainError::NotFound)));
        }
        let referral_id = referral_id(request_id, details);
        let reservation = match self.reserve(request_id, referral_id).await? {
            Ok(reservation) => reservation,
            Err(existing) => {
                return Ok(Err(Rejection::Duplicate {
                    referral_id: existing,
                }));
            }
        };
        let Some(state) = self.get(referral_id).await? else {
            return Ok(Err(Rejection::Refused(DomainError::NotFound)));
        };
        // The caller's version (If-Match) is the one the append checks, so
        // of two cancellations at the same version only one is recorded.
        if expected_version.is_some_and(|v| v != state.version) {
            return Err(Error::Conflict { referral_id });
        }
        let events = match domain::handle(
            &state,
            Command::Cancel {
                request_id,
                status,
                requested_by: details.sender.ods_code.clone(),
                message_id: details.sender.message_id.clone(),
            },
            &self.rules,
        ) {
            Ok(events) => events,
            Err(e) => return Ok(Err(Rejection::Refused(e))),
        };
        let now = self.clock.now();
        let new_events = events
            .iter()
            .map(|e| {
                new_event(e, mskflow_events::SCHEMA_VERSION, now).map_err(|source| Error::Encode {
                    event_type: e.event_type(),
                    reason: crate::json_error_reason(&source),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = Metadata {
            causation_id: Some(request_id),
            correlation_id,
            traceparent,
            tracestate: None,
        };
        match self
            .log
            .append(
                &stream_id(referral_id),
                ExpectedVersion::Exact(state.version),
                new_events,
                &metadata,
            )
            .await
        {
            Ok(appended) => {
                reservation.keep(appended.position);
                let mut state = events.iter().fold(state, domain::apply);
                state.version = appended.version;
                tracing::info!(%referral_id, %request_id, %correlation_id, status = status.code(), "referral cancelled");
                Ok(Ok(Submitted {
                    referral_id,
                    version: appended.version,
                    state,
                }))
            }
            Err(mskflow_eventlog::Error::WrongExpectedVersion { .. }) => {
                // Something else changed the referral meanwhile: the caller
                // may retry and will see its current state.
                Err(Error::Conflict { referral_id })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The current state of a referral, or `None` if it is not recorded.
    pub async fn get(&self, referral_id: Uuid) -> Result<Option<ReferralState>, Error> {
        let envelopes = self.log.read_stream(&stream_id(referral_id), 1).await?;
        let Some(last) = envelopes.last() else {
            return Ok(None);
        };
        let mut state = ReferralState::default();
        for envelope in &envelopes {
            // Other services may add their own events to the referral stream.
            if !IntakeEvent::TYPES.contains(&envelope.event_type.as_str()) {
                continue;
            }
            let event = decode::<IntakeEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?;
            state = domain::apply(state, &event);
        }
        if !state.exists() {
            return Ok(None);
        }
        state.version = last.sequence;
        Ok(Some(state))
    }
}
