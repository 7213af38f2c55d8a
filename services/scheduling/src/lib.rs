//! Rehab scheduling: venues, clinicians' 1:1 slots and group classes
//! (ESCAPE-pain and others), the rehab waiting list, offers, bookings,
//! attendance with a did-not-attend policy, completion and discharge. Serves
//! `mskflow.scheduling.v1.SchedulingService`.
//!
//! - [`domain`]: the pure aggregates (`handle` / `apply`): venue, class,
//!   slot and the patient's rehab episode.
//! - [`service`]: the application service over an [`EventLog`], with
//!   optimistic concurrency on every stream.
//! - [`waiting`]: the rehab waiting list, a projection on disk.
//! - [`grpc`]: the tonic adapter.
//!
//! [`Service::build`] and [`Service::run`] let one process host every service
//! or this one alone (`mskflow-scheduling`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mskflow_eventlog::{Envelope, EventLog};
use mskflow_proto::scheduling::v1::scheduling_service_server::SchedulingServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;

pub mod consumer;
pub mod domain;
pub mod grpc;
pub mod service;
pub mod waiting;

pub use domain::{DomainError, EpisodeState, EpisodeStatus, Policy};
pub use service::{Clock, Outcome, Rejection, Scheduling, SystemClock, WaitingFilter};

/// Errors of the scheduling service. Refusals of a request are not errors
/// (see [`Rejection`]); these are failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event store failed. gRPC `UNAVAILABLE` when the store is
    /// unavailable or closed (retry), `INTERNAL` otherwise; HTTP 503
    /// OperationOutcome `transient` or 500 `exception`.
    #[error("event store: {0}")]
    Store(#[from] mskflow_eventlog::Error),
    /// A stored scheduling event could not be decoded. gRPC `INTERNAL`; HTTP
    /// 500 `exception`. The reason names the position only, never content.
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
    /// The waiting list on disk could not be opened, read or kept up. gRPC
    /// `UNAVAILABLE`; HTTP 503 OperationOutcome `transient`.
    #[error("waiting list: {0}")]
    WaitingList(#[from] mskflow_projection::Error),
    /// The waiting list did not apply this instance's last append in time.
    /// gRPC `UNAVAILABLE` (retry); HTTP 503 `transient`.
    #[error("waiting list has not reached log position {position} yet")]
    Behind { position: u64 },
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
    /// Class sizes, course lengths and the did-not-attend policy.
    pub policy: Policy,
    /// Where the waiting list keeps its file.
    pub projections: mskflow_projection::Options,
}

/// The scheduling service, built and bound, ready to run.
#[derive(Debug)]
pub struct Service {
    scheduling: Arc<Scheduling>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Service {
    /// Rebuild the waiting list from the log and bind the gRPC listener.
    pub async fn build(options: Options, log: Arc<dyn EventLog>) -> Result<Self, Error> {
        Self::build_with_clock(options, log, Arc::new(SystemClock)).await
    }

    /// [`Service::build`] with an injected clock (tests).
    pub async fn build_with_clock(
        options: Options,
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        tracing::info!(policy = ?options.policy, "scheduling policy");
        let scheduling =
            Arc::new(Scheduling::open(log, options.policy, clock, &options.projections).await?);
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
            scheduling,
            listener,
            local_addr,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The application service (for in-process callers).
    pub fn scheduling(&self) -> Arc<Scheduling> {
        Arc::clone(&self.scheduling)
    }

    fn router(&self) -> Result<Router, Error> {
        Ok(
            mskflow_proto::server_with_reflection()?.add_service(SchedulingServiceServer::new(
                grpc::SchedulingGrpc::new(self.scheduling()),
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
        let consumer = consumer::open(self.scheduling()).await?;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let consuming = tokio::spawn(consumer.run(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        tracing::info!(addr = %self.local_addr, "scheduling gRPC serving");
        let served = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await;
        let _ = stop_tx.send(true);
        match consuming.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduling consumer failed"),
            Err(e) => tracing::error!(error = %e, "scheduling consumer panicked"),
        }
        served?;
        tracing::info!("scheduling gRPC stopped");
        Ok(())
    }
}
