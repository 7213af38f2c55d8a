//! First Contact Practitioner (FCP) assessment: turns triaged referrals into
//! episodes on a worklist, books them into clinicians' slots, applies the
//! did-not-attend policy, records the assessment and its outcomes (onward
//! referrals as outbound FHIR `ServiceRequest`s), and serves
//! `mskflow.assessment.v1.AssessmentService`.
//!
//! - [`domain`]: the pure episode aggregate (`handle` / `apply`) and the
//!   [`Policy`].
//! - [`slot`]: the pure clinician slot aggregate.
//! - [`projection`]: the read model on disk (worklist, slots), resumed from
//!   its checkpoint.
//! - [`service`]: the application service over an [`EventLog`], including
//!   how a booking spans two streams safely.
//! - [`consumer`]: the `assessment` consumer of intake's `ReferralTriaged`.
//! - [`grpc`]: the tonic adapter.
//!
//! [`Service::build`] and [`Service::run`] let one process host every service
//! or this one alone (`mskflow-assessment`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mskflow_eventlog::{Envelope, EventLog};
use mskflow_proto::assessment::v1::assessment_service_server::AssessmentServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;

pub mod consumer;
pub mod domain;
pub mod fhir;
pub mod grpc;
pub mod projection;
pub mod service;
pub mod slot;

pub use consumer::Consumer;
pub use domain::{AssessmentRecord, DomainError, EpisodeState, Policy, PolicyError, Status};
pub use projection::{AssessmentView, DanglingHold, WorklistEntry};
pub use service::{Assessment, Clock, Rejection, SystemClock};

/// Errors of the assessment service. Refusals of a command are not errors
/// (see [`Rejection`]); these are failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy was refused. Start-up only: the service does not start.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The event store failed. gRPC `UNAVAILABLE` when the store is
    /// unavailable or closed (retry), `INTERNAL` otherwise; HTTP 503
    /// OperationOutcome `transient` or 500 `exception`.
    #[error("event store: {0}")]
    Store(#[from] mskflow_eventlog::Error),
    /// A stored event could not be decoded. gRPC `INTERNAL`; HTTP 500
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
    /// The read model is behind or stopped. gRPC `UNAVAILABLE`; HTTP 503
    /// `transient`.
    #[error("assessment read model: {0}")]
    Projection(String),
    /// The read model on disk could not be opened, read or kept up. gRPC
    /// `UNAVAILABLE`; HTTP 503 `transient`.
    #[error("assessment read model: {0}")]
    View(#[from] mskflow_projection::Error),
    /// Something that cannot happen did (a bug). gRPC `INTERNAL`; HTTP 500
    /// `exception`.
    #[error("internal invariant broken: {0}")]
    Invariant(String),
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
    /// The consumer task failed or panicked. The process exits.
    #[error("assessment consumer stopped: {0}")]
    Consumer(String),
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
    /// The local policy (did-not-attend limit).
    pub policy: Policy,
    /// Where the read model keeps its file.
    pub projections: mskflow_projection::Options,
}

/// The assessment service, built and bound, ready to run.
#[derive(Debug)]
pub struct Service {
    assessment: Arc<Assessment>,
    consumer: Consumer,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Service {
    /// Rebuild the read model, subscribe the consumer and bind the gRPC
    /// listener.
    pub async fn build(options: Options, log: Arc<dyn EventLog>) -> Result<Self, Error> {
        Self::build_with_clock(options, log, Arc::new(SystemClock)).await
    }

    /// [`Service::build`] with an injected clock (tests).
    pub async fn build_with_clock(
        options: Options,
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let assessment =
            Arc::new(Assessment::open(log, options.policy, clock, &options.projections).await?);
        let consumer = consumer::open(Arc::clone(&assessment)).await?;
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
            assessment,
            consumer,
            listener,
            local_addr,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The application service (for in-process callers).
    pub fn assessment(&self) -> Arc<Assessment> {
        Arc::clone(&self.assessment)
    }

    fn router(&self) -> Result<Router, Error> {
        Ok(
            mskflow_proto::server_with_reflection()?.add_service(AssessmentServiceServer::new(
                grpc::AssessmentGrpc::new(self.assessment()),
            )),
        )
    }

    /// Serve gRPC and run the consumer until `shutdown` completes; then
    /// finish in-flight requests and the batch in hand, commit, and return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let router = self.router()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let trigger = Arc::clone(&stop_tx);
        tokio::spawn(async move {
            shutdown.await;
            let _ = trigger.send(true);
        });
        let consumer = tokio::spawn(self.consumer.run(stopped(stop_rx.clone())));
        tracing::info!(addr = %self.local_addr, "assessment gRPC serving");
        let served = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), stopped(stop_rx))
            .await;
        tracing::info!("assessment gRPC stopped");
        // However serving ended, the consumer stops with it.
        let _ = stop_tx.send(true);
        let consumed = match consumer.await {
            Ok(result) => result,
            Err(e) => Err(Error::Consumer(e.to_string())),
        };
        served?;
        consumed
    }
}
