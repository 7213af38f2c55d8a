//! Referral intake: records referrals, triages them against a versioned rule
//! set (red flags, age, STarT Back), and serves `mskflow.intake.v1.IntakeService`.
//!
//! - [`domain`]: the pure referral aggregate (`handle` / `apply`).
//! - [`rules`]: the triage rule set, loaded from TOML and evaluated purely.
//! - [`service`]: the application service over an [`EventLog`].
//! - [`grpc`]: the tonic adapter.
//!
//! [`Service::build`] and [`Service::run`] let one process host every service
//! or this one alone (`mskflow-intake`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mskflow_eventlog::{Envelope, EventLog};
use mskflow_proto::intake::v1::intake_service_server::IntakeServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;

pub mod domain;
pub mod grpc;
pub mod index;
pub mod rules;
pub mod service;

pub use domain::{ReferralState, Status};
pub use rules::RuleSet;
pub use service::{Clock, Intake, Rejection, Submitted, SystemClock};

/// Errors of the intake service. Rejections of a referral are not errors
/// (see [`Rejection`]); these are failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule file was refused. Start-up only: the service does not start.
    #[error(transparent)]
    Rules(#[from] rules::Error),
    /// The event store failed. gRPC `UNAVAILABLE` when the store is
    /// unavailable or closed (retry), `INTERNAL` otherwise; HTTP 503
    /// OperationOutcome `transient` or 500 `exception`.
    #[error("event store: {0}")]
    Store(#[from] mskflow_eventlog::Error),
    /// The duplicate index on disk could not be opened, read or kept up.
    /// gRPC `UNAVAILABLE`.
    #[error("duplicate index: {0}")]
    Index(#[from] mskflow_projection::Error),
    /// A stored intake event could not be decoded. gRPC `INTERNAL`; HTTP 500
    /// `exception`. The reason names the position only, never content.
    #[error("stored {event_type} event at {stream_id}#{sequence} cannot be decoded: {reason}")]
    Decode {
        stream_id: String,
        sequence: u64,
        event_type: String,
        reason: String,
    },
    /// An event could not be encoded (a bug). gRPC `INTERNAL`; HTTP 500
    /// `exception`.
    #[error("cannot encode {event_type} event: {reason}")]
    Encode {
        event_type: &'static str,
        reason: String,
    },
    /// The referral changed while a command was being decided (a concurrent
    /// command won). gRPC `ABORTED` (retry); HTTP 409 `conflict`.
    #[error("referral {referral_id} changed concurrently; retry")]
    Conflict { referral_id: uuid::Uuid },
    /// The gRPC listener could not be bound. Start-up only.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// gRPC server reflection could not be built. Start-up only.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed while serving. The process exits.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl Error {
    pub(crate) fn decode(envelope: &Envelope, e: &serde_json::Error) -> Self {
        Error::Decode {
            stream_id: envelope.stream_id.clone(),
            sequence: envelope.sequence,
            event_type: envelope.event_type.clone(),
            reason: json_error_reason(e),
        }
    }
}

pub(crate) use mskflow_eventlog::json_error_reason;

/// Start-up options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to serve gRPC (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// A triage rule file to use instead of the built-in one.
    pub rules_path: Option<PathBuf>,
    /// Where the duplicate index keeps its file.
    pub projections: mskflow_projection::Options,
}

/// The intake service, built and bound, ready to run.
#[derive(Debug)]
pub struct Service {
    intake: Arc<Intake>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Service {
    /// Load the rules, rebuild the duplicate index from the log, and bind
    /// the gRPC listener.
    pub async fn build(options: Options, log: Arc<dyn EventLog>) -> Result<Self, Error> {
        Self::build_with_clock(options, log, Arc::new(SystemClock)).await
    }

    /// [`Service::build`] with an injected clock (tests).
    pub async fn build_with_clock(
        options: Options,
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let rules = match &options.rules_path {
            Some(path) => RuleSet::from_path(path)?,
            None => RuleSet::default_rules()?,
        };
        tracing::info!(
            rule_set_version = rules.version(),
            rules_path = ?options.rules_path,
            "triage rules loaded"
        );
        let intake =
            Arc::new(Intake::open(log, Arc::new(rules), clock, &options.projections).await?);
        let listener = TcpListener::bind(options.grpc_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: options.grpc_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: options.grpc_addr,
            source,
        })?;
        Ok(Self {
            intake,
            listener,
            local_addr,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The application service (for in-process callers).
    pub fn intake(&self) -> Arc<Intake> {
        Arc::clone(&self.intake)
    }

    fn router(&self) -> Result<Router, Error> {
        Ok(
            mskflow_proto::server_with_reflection()?.add_service(IntakeServiceServer::new(
                grpc::IntakeGrpc::new(self.intake()),
            )),
        )
    }

    /// Serve until `shutdown` completes, then finish in-flight requests and
    /// return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let router = self.router()?;
        tracing::info!(addr = %self.local_addr, "intake gRPC serving");
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await?;
        tracing::info!("intake gRPC stopped");
        Ok(())
    }
}
