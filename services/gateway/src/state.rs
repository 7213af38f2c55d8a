//! The bottom of the HTTP side: the state every handler shares
//! ([`AppState`]) and the constants of the FHIR edge. It depends on nothing
//! of the gateway above the views' store.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use mskflow_eventlog::EventLog;
use mskflow_proto::intake::v1::intake_service_client::IntakeServiceClient;
use tonic::transport::Channel;

use crate::projection::ViewStore;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_CORRELATION_ID: &str = "x-correlation-id";

/// The whole request body must arrive within this time of the handler
/// starting to read it; a slower client (slow-loris, or a Content-Length
/// larger than what is sent) gets 408 and the connection is closed. The
/// request head has its own limit (the HTTP server's request timeout).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the HTTP workers.
#[derive(Debug)]
pub struct AppState {
    pub views: Arc<ViewStore>,
    pub log: Arc<dyn EventLog>,
    pub intake: IntakeServiceClient<Channel>,
    pub outcomes:
        mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient<Channel>,
    pub base_url: Option<String>,
    pub body_limit: usize,
    pub wait_timeout: Duration,
    pub intake_timeout: Duration,
    /// Readiness fails when the views are further behind the log than this.
    pub max_view_lag: u64,
    /// Registered referrer endpoints (URL prefixes): the only places
    /// notifications and subscriptions may point to.
    pub referrer_endpoints: Vec<String>,
}

pub type State = web::Data<AppState>;
