//! The FHIR R4 gateway: the front door for GP and hospital systems.
//!
//! It parses referrals (`mskflow-fhir`), hands them to intake over gRPC (even
//! in one process, so the split deployment runs the same code), and serves
//! `Task` and `ServiceRequest` views built only from events.

pub mod analytics;
pub mod as_at;
pub mod audit;
pub mod auth;
pub mod delivery;
pub mod error;
pub mod fhir;
pub mod http;
pub mod notify;
pub mod projection;
pub mod render;
pub mod search;
pub mod selfref;
pub mod sent;
pub mod state;
pub mod subscription;
pub mod tls;
pub mod views;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, middleware, web};
use mskflow_eventlog::EventLog;
use mskflow_proto::intake::v1::intake_service_client::IntakeServiceClient;

use crate::projection::ViewStore;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen for HTTP (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// The intake service's gRPC endpoint, e.g. `http://127.0.0.1:50051`.
    pub intake_url: String,
    /// The outcomes service's gRPC endpoint (QuestionnaireResponse, Questionnaire).
    pub outcomes_url: String,
    /// Largest accepted request body in bytes (default 1 MiB).
    pub body_limit: usize,
    /// Public base URL of the FHIR API (`https://host/fhir`); derived from the
    /// request when not set.
    pub base_url: Option<String>,
    /// HTTP worker threads.
    pub workers: usize,
    /// Outbound delivery of onward referrals.
    pub outbound: delivery::Options,
    /// Registered referrer endpoints (URL prefixes) that receive status
    /// messages; none when empty.
    pub referrer_endpoints: Vec<String>,
    /// Readiness fails when the views lag the log by more events than this.
    pub max_view_lag: u64,
    /// Bearer-token authentication of `/fhir` (dev mode by default).
    pub auth: auth::Options,
    /// HTTPS (and mutual TLS) on the listener; plain HTTP when off.
    pub tls: tls::Options,
    /// The analysts' stream published live (`mskflow.analytics.v1` or a
    /// JSON Lines file); nothing is published when `None`.
    pub analyst_stream: Option<AnalystStream>,
    /// Postcode to IMD decile lookup of the `/analytics` views; the
    /// analyst stream's lookup when that is set, else the illustrative one
    /// shipped with `mskflow-analytics`.
    pub analytics_imd: Option<mskflow_analytics::ImdLookup>,
    /// Where the gateway's read models kept on disk live (the analytics
    /// facts, the notification worker's subscriptions and counters); a
    /// temporary directory, rebuilt at each start, when `None`.
    pub projections: Option<mskflow_projection::Options>,
    /// Patient self-referral (web form, telephone): the area served, the
    /// rate limit.
    pub self_referral: selfref::Options,
}

/// Where the analysts' stream goes and how it is pseudonymised.
#[derive(Debug, Clone)]
pub struct AnalystStream {
    pub sink: Arc<dyn mskflow_analytics::Sink>,
    pub context: mskflow_analytics::Context,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            intake_url: "http://127.0.0.1:50051".to_owned(),
            outcomes_url: "http://127.0.0.1:50054".to_owned(),
            body_limit: 1024 * 1024,
            base_url: None,
            workers: 2,
            outbound: delivery::Options::default(),
            referrer_endpoints: Vec::new(),
            max_view_lag: 10_000,
            auth: auth::Options::default(),
            tls: tls::Options::default(),
            analyst_stream: None,
            analytics_imd: None,
            projections: None,
            self_referral: selfref::Options::default(),
        }
    }
}

/// Errors starting or running the gateway. They end the process (the binary
/// reports them); none reaches an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid intake endpoint {url}: {source}")]
    IntakeEndpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot replay the event log into the views: {0}")]
    Replay(#[from] mskflow_eventlog::Error),
    #[error("HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    #[error("authentication: {0}")]
    Auth(#[from] auth::Error),
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

/// The listener's TLS settings, ready for the server.
struct Acceptor(openssl::ssl::SslAcceptorBuilder);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

/// A built gateway, listening but not yet serving.
#[derive(Debug)]
pub struct Service {
    listener: TcpListener,
    acceptor: Option<Acceptor>,
    options: Options,
    log: Arc<dyn EventLog>,
    views: Arc<ViewStore>,
    subscription: Box<dyn mskflow_eventlog::Subscription>,
    authenticator: Arc<auth::Authenticator>,
    intake: IntakeServiceClient<tonic::transport::Channel>,
    outcomes: mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient<
        tonic::transport::Channel,
    >,
}

impl Service {
    /// Bind the listener, replay the log into the views, and prepare the
    /// intake client (connected lazily, so start-up order does not matter).
    pub async fn build(options: Options, log: Arc<dyn EventLog>) -> Result<Self, Error> {
        let authenticator = Arc::new(auth::Authenticator::new(&options.auth)?);
        let acceptor = tls::acceptor(&options.tls)?.map(Acceptor);
        // Found now rather than at the first delivery.
        delivery::client(&options.outbound)?;
        let listener = TcpListener::bind(options.http_addr).map_err(|source| Error::Bind {
            addr: options.http_addr,
            source,
        })?;
        let channel = tonic::transport::Endpoint::from_shared(options.intake_url.clone())
            .map_err(|source| Error::IntakeEndpoint {
                url: options.intake_url.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        mskflow_telemetry::install_metrics();
        let outcomes = tonic::transport::Endpoint::from_shared(options.outcomes_url.clone())
            .map_err(|source| Error::IntakeEndpoint {
                url: options.outcomes_url.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let views = Arc::new(ViewStore::default());
        let subscription = projection::catch_up(&log, &views).await?;
        tracing::info!(
            referrals = views.read(|v| v.len()),
            "gateway views replayed"
        );
        if let Some(token) = authenticator.dev_token() {
            tracing::warn!(
                "development authentication is on: a random key made at start-up signs tokens; configure gateway.auth.mode = \"jwt\" for any real use"
            );
            eprintln!(
                "\n==== mskflow DEVELOPMENT bearer token (valid 12 h, this process only; scopes: {}, ods: {}) ====\nAuthorization: Bearer {token}\n==== end of development token ====\n",
                auth::DEV_SCOPES,
                auth::DEV_ODS
            );
        }
        Ok(Self {
            listener,
            acceptor,
            options,
            log,
            views,
            subscription,
            authenticator,
            intake: IntakeServiceClient::new(channel),
            outcomes:
                mskflow_proto::outcomes::v1::outcomes_service_client::OutcomesServiceClient::new(
                    outcomes,
                ),
        })
    }

    /// Whether the listener serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.acceptor.is_some()
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// The development bearer token, when running in dev mode.
    pub fn dev_token(&self) -> Option<&str> {
        self.authenticator.dev_token()
    }

    /// The live views (for tests and the operator's tools).
    pub fn views(&self) -> Arc<ViewStore> {
        self.views.clone()
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let scheme = if self.acceptor.is_some() {
            "https"
        } else {
            "http"
        };
        let public_base = match (&self.options.base_url, self.listener.local_addr()) {
            (Some(b), _) => b.clone(),
            (None, Ok(addr)) => format!("{scheme}://{addr}/fhir"),
            (None, Err(_)) => format!("{scheme}://localhost/fhir"),
        };
        let state = web::Data::new(state::AppState {
            views: self.views.clone(),
            log: self.log.clone(),
            intake: self.intake,
            outcomes: self.outcomes,
            base_url: self.options.base_url.clone(),
            body_limit: self.options.body_limit,
            wait_timeout: Duration::from_secs(10),
            intake_timeout: Duration::from_secs(30),
            max_view_lag: self.options.max_view_lag,
            referrer_endpoints: self.options.referrer_endpoints.clone(),
        });
        let authenticator = web::Data::from(self.authenticator.clone());
        let (recorder, auditing) = audit::Recorder::start(self.log.clone());
        let recorder = web::Data::new(recorder);
        let imd = self
            .options
            .analyst_stream
            .as_ref()
            .map(|s| s.context.imd.clone())
            .or_else(|| self.options.analytics_imd.clone());
        let analytics_store = Arc::new(analytics::AnalyticsStore::new(
            imd,
            mskflow_analytics::views::ViewOptions::default(),
            self.options.projections.clone(),
        ));
        let analytics_data = web::Data::from(analytics_store.clone());
        let selfref_data = web::Data::new(selfref::SelfReferral::new(
            self.options.self_referral.clone(),
        ));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(authenticator.clone())
                .app_data(recorder.clone())
                .app_data(analytics_data.clone())
                .app_data(selfref_data.clone())
                .wrap(middleware::from_fn(http::observe))
                .configure(analytics::configure)
                .configure(selfref::configure)
                .configure(http::configure)
        })
        .workers(self.options.workers.max(1))
        .disable_signals()
        .shutdown_timeout(10)
        // A request head not complete in 5 s gets 408 and the connection is
        // closed (slow-loris); the body has `http::BODY_TIMEOUT`.
        .client_request_timeout(Duration::from_secs(5));
        let server = match self.acceptor {
            Some(Acceptor(builder)) => server.listen_openssl(self.listener, builder),
            None => server.listen(self.listener),
        }
        .map_err(Error::Server)?
        .run();
        let handle = server.handle();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let follower = tokio::spawn(projection::follow(
            self.subscription,
            self.views.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let (deliver_stop_tx, mut deliver_stop_rx) = tokio::sync::watch::channel(false);
        let worker = delivery::Worker::new(self.log.clone(), self.options.outbound.clone());
        let delivering = tokio::spawn(delivery::run(
            self.log.clone(),
            mskflow_eventlog::StartFrom::Checkpoint,
            worker,
            async move {
                let _ = deliver_stop_rx.wait_for(|s| *s).await;
            },
        ));
        let mut notify_stop_rx = deliver_stop_tx.subscribe();
        let notifier = notify::Worker::open(
            self.log.clone(),
            &self.options.outbound,
            self.options.referrer_endpoints.clone(),
            public_base,
            self.options.projections.clone(),
        )
        .await;
        let notifying = match notifier {
            Ok((notifier, start)) => Some(tokio::spawn(delivery::run(
                self.log.clone(),
                start,
                notifier,
                async move {
                    let _ = notify_stop_rx.wait_for(|s| *s).await;
                },
            ))),
            Err(e) => {
                tracing::error!(error = %e, "notification state cannot be opened; no status messages or notifications are sent");
                None
            }
        };
        let mut analytics_stop_rx = deliver_stop_tx.subscribe();
        let analysing = tokio::spawn(analytics::run(
            self.log.clone(),
            analytics_store,
            async move {
                let _ = analytics_stop_rx.wait_for(|s| *s).await;
            },
        ));
        let publishing = match self.options.analyst_stream.clone() {
            Some(stream) => {
                let mut publish_stop_rx = deliver_stop_tx.subscribe();
                Some(tokio::spawn(mskflow_analytics::publish::run(
                    self.log.clone(),
                    stream.sink,
                    stream.context,
                    async move {
                        let _ = publish_stop_rx.wait_for(|s| *s).await;
                    },
                )))
            }
            None => {
                tracing::info!(
                    "analysts' stream not published: no pseudonymisation secret configured"
                );
                None
            }
        };
        let stopper = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("gateway stopping: finishing in-flight requests");
            handle.stop(true).await;
        });
        let result = server.await.map_err(Error::Server);
        // No request is in flight any more: append what is queued, then stop.
        auditing.stop(Duration::from_secs(10)).await;
        let _ = stop_tx.send(());
        let _ = deliver_stop_tx.send(true);
        let _ = follower.await;
        let _ = delivering.await;
        if let Some(notifying) = notifying {
            let _ = notifying.await;
        }
        let _ = analysing.await;
        if let Some(publishing) = publishing {
            let _ = publishing.await;
        }
        stopper.abort();
        result
    }
}
