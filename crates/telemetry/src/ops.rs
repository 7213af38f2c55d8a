//! The operations endpoint of a service that has no HTTP API of its own:
//! `GET /metrics`, `GET /health/live`, `GET /health/ready`.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};

/// Answers readiness: `Ok(())` when the service can do its work, or the
/// reason it cannot.
pub type Readiness =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serve the operations endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let readiness = web::Data::new(readiness);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(readiness.clone())
            .route("/metrics", web::get().to(metrics))
            .route("/health/live", web::get().to(live))
            .route("/health/ready", web::get().to(ready))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    let stopper = tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    let result = server.await;
    stopper.abort();
    result
}

/// Bind the operations endpoint (port 0 picks one).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::render_metrics())
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "pass"}))
}

async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    match (readiness.get_ref())().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "pass"})),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "fail", "reason": reason})),
    }
}

/// Readiness of a service whose only dependency is the event store.
pub fn store_readiness(log: Arc<dyn mskflow_eventlog::EventLog>) -> Readiness {
    Arc::new(move || {
        let log = log.clone();
        Box::pin(async move { log.ping().await.map_err(|e| e.to_string()) })
    })
}

/// Run `service` with the operations endpoint beside it on `addr`; the
/// endpoint stops when the service returns.
pub async fn alongside<T>(
    addr: SocketAddr,
    readiness: Readiness,
    service: impl Future<Output = T>,
) -> std::io::Result<T> {
    let listener = bind(addr)?;
    tracing::info!(addr = %listener.local_addr()?, "operations endpoint (/metrics, /health) listening");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(listener, readiness, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let out = service.await;
    let _ = stop.send(true);
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "operations endpoint failed"),
        Err(e) => tracing::warn!(error = %e, "operations endpoint panicked"),
    }
    Ok(out)
}
