//! Outcome collection: patient-reported outcome measures (PROMs) at first
//! contact, discharge and follow-up; their scores; the change from baseline
//! against the minimal important change. Serves
//! `mskflow.outcomes.v1.OutcomesService`.
//!
//! - [`scoring`]: the measures (MSK-HQ, STarT Back, EQ-5D-5L, PSFS) and
//!   their scoring, pure.
//! - [`questionnaire`]: the FHIR R4 `Questionnaire` of each measure, and the
//!   licensed wording an operator may configure.
//! - [`domain`]: the pure outcomes aggregate of a referral (`handle` /
//!   `apply`): schedules, overdue, changes.
//! - [`service`]: the application service over an [`EventLog`].
//! - [`consumer`]: schedules questionnaires from assessment and scheduling
//!   events (consumer `outcomes`).
//! - [`grpc`]: the tonic adapter.
//!
//! **Licensed instruments.** MSK-HQ (and EQ-5D-5L, STarT Back) wording is
//! licensed. Without a licence file ([`Options::licence_path`]) the
//! Questionnaires served carry item codes, answer codes and scores but not
//! the licensed wording; see [`questionnaire`].
//!
//! **EQ-5D-5L value set.** The built-in value set is the England one
//! (Devlin N, Shah K, Feng Y, Mulhern B, van Hout B. Valuing health-related
//! quality of life: An EQ-5D-5L value set for England. Health Economics
//! 2018;27:7-22), generated from its published coefficients
//! ([`ValueSet::england`]) and recorded with every score as
//! `england-devlin-2018`. Another country's set, or a newer one, is loaded
//! from a file with [`Options::value_set_path`] and recorded under the file
//! name.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mskflow_eventlog::{Envelope, EventLog};
use mskflow_proto::outcomes::v1::outcomes_service_server::OutcomesServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;

pub mod consumer;
pub mod domain;
pub mod grpc;
pub mod questionnaire;
pub mod scoring;
pub mod service;
pub mod view;

pub use domain::{Mic, Policy, Status};
pub use questionnaire::{LicensedTexts, questionnaire};
pub use scoring::ValueSet;
pub use service::{Clock, Outcomes, Recorded, Refusal, Submission, SystemClock};

/// Errors of the outcomes service. Refusals of a response are not errors
/// (see [`Refusal`]); these are failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The EQ-5D-5L value set file was refused. Start-up only.
    #[error(transparent)]
    ValueSet(#[from] scoring::ValueSetError),
    /// The licence file was refused. Start-up only.
    #[error(transparent)]
    Texts(#[from] questionnaire::TextsError),
    /// The event store failed. gRPC `UNAVAILABLE` when the store is
    /// unavailable or closed (retry), `INTERNAL` otherwise; HTTP 503
    /// OperationOutcome `transient` or 500 `exception`.
    #[error("event store: {0}")]
    Store(#[from] mskflow_eventlog::Error),
    /// Other writers kept moving the stream on. gRPC `ABORTED` (retry);
    /// HTTP 409 `conflict`.
    #[error("stream {stream_id} kept changing; gave up")]
    Conflict { stream_id: String },
    /// A stored or consumed event could not be decoded. gRPC `INTERNAL`;
    /// HTTP 500 `exception`. The reason names the position only.
    #[error("{event_type} event at {stream_id}#{sequence} cannot be decoded: {reason}")]
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
    /// Something that cannot happen did (a bug). gRPC `INTERNAL`; HTTP 500
    /// `exception`.
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// The view on disk could not be opened, read or kept up. gRPC
    /// `UNAVAILABLE`; HTTP 503 OperationOutcome `transient`.
    #[error("outcomes view: {0}")]
    View(#[from] mskflow_projection::Error),
    /// The view did not apply this instance's last append in time. gRPC
    /// `UNAVAILABLE` (retry); HTTP 503 `transient`.
    #[error("outcomes view has not reached log position {position} yet")]
    ViewBehind { position: u64 },
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
    /// Measures, follow-up interval, overdue window, minimal important
    /// changes.
    pub policy: Policy,
    /// The EQ-5D-5L value set CSV (`profile,index`), recorded under its file
    /// name; `None` = the built-in England value set (`england-devlin-2018`).
    pub value_set_path: Option<PathBuf>,
    /// A licence file (TOML, or JSON by extension) giving licensed item
    /// wording; `None` = Questionnaires without licensed wording.
    pub licence_path: Option<PathBuf>,
    /// How often to look for overdue questionnaires.
    pub overdue_sweep_interval: Duration,
    /// Where the view keeps its file.
    pub projections: mskflow_projection::Options,
}

/// A temporary directory for the view, removed with the options (the view
/// then rebuilds at every start); a directory of this process under the
/// system's temporary directory if none can be made.
fn temporary_projections() -> mskflow_projection::Options {
    mskflow_projection::Options::temporary().unwrap_or_else(|_| {
        mskflow_projection::Options::in_dir(
            std::env::temp_dir().join(format!("mskflow-outcomes-{}", std::process::id())),
        )
    })
}

impl Options {
    /// Defaults: the default policy, the England value set, no licence file,
    /// sweep hourly, the view in a temporary directory.
    pub fn new(grpc_addr: SocketAddr) -> Self {
        Self {
            grpc_addr,
            policy: Policy::default(),
            value_set_path: None,
            licence_path: None,
            overdue_sweep_interval: Duration::from_secs(3600),
            projections: temporary_projections(),
        }
    }
}

/// The outcomes service, built and bound, ready to run.
#[derive(Debug)]
pub struct Service {
    outcomes: Arc<Outcomes>,
    listener: TcpListener,
    local_addr: SocketAddr,
    sweep_interval: Duration,
}

impl Service {
    /// Load the value set and licence file, rebuild the view from the log,
    /// and bind the gRPC listener.
    pub async fn build(options: Options, log: Arc<dyn EventLog>) -> Result<Self, Error> {
        Self::build_with_clock(options, log, Arc::new(SystemClock)).await
    }

    /// [`Service::build`] with an injected clock (tests).
    pub async fn build_with_clock(
        options: Options,
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let value_set = match &options.value_set_path {
            Some(path) => ValueSet::from_path(path)?,
            None => ValueSet::england(),
        };
        let texts = match &options.licence_path {
            Some(path) => LicensedTexts::from_path(path)?,
            None => LicensedTexts::none(),
        };
        tracing::info!(
            value_set = value_set.name(),
            licensed_measures = ?texts.measures(),
            follow_up_months = options.policy.follow_up_months,
            overdue_after_days = options.policy.overdue_after_days,
            "outcomes configuration loaded"
        );
        let outcomes = Arc::new(
            Outcomes::open(
                log,
                options.policy,
                value_set,
                texts,
                clock,
                &options.projections,
            )
            .await?,
        );
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
            outcomes,
            listener,
            local_addr,
            sweep_interval: options.overdue_sweep_interval,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The application service (for in-process callers).
    pub fn outcomes(&self) -> Arc<Outcomes> {
        Arc::clone(&self.outcomes)
    }

    fn router(&self) -> Result<Router, Error> {
        Ok(
            mskflow_proto::server_with_reflection()?.add_service(OutcomesServiceServer::new(
                grpc::OutcomesGrpc::new(self.outcomes()),
            )),
        )
    }

    /// Serve gRPC, consume pathway events and sweep for overdue
    /// questionnaires until `shutdown` completes; then finish in-flight
    /// work (the consumer commits what it has handled) and return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let router = self.router()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let consumer = consumer::open(self.outcomes()).await?;
        let consumer_task = tokio::spawn(consumer.run(stopped(stop_rx.clone())));

        let outcomes = self.outcomes();
        let interval = self.sweep_interval;
        let sweep_stop = stopped(stop_rx.clone());
        let sweep_task = tokio::spawn(async move {
            tokio::pin!(sweep_stop);
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    () = &mut sweep_stop => break,
                    _ = ticker.tick() => {
                        if let Err(e) = outcomes.sweep_overdue().await {
                            tracing::warn!(error = %e, "overdue sweep failed");
                        }
                    }
                }
            }
        });

        tracing::info!(addr = %self.local_addr, "outcomes gRPC serving");
        let served = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await;
        let _ = stop_tx.send(true);
        let _ = sweep_task.await;
        let consumed = consumer_task
            .await
            .map_err(|e| Error::Invariant(format!("consumer task: {e}")))?;
        tracing::info!("outcomes stopped");
        served?;
        consumed
    }
}
