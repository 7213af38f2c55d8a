//! A receiving system for the outbound tests: a real HTTP server on
//! 127.0.0.1:0 that records every POST and can fail the first ones.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App as ActixApp, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

use super::TestResult;

/// One request the receiver was sent.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// Its `X-Request-Id` (empty when absent).
    pub request_id: String,
    /// The body as JSON (`null` when it is not JSON).
    pub body: Value,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    fail_first: usize,
}

/// The running receiver.
pub struct Receiver {
    /// Its FHIR base URL (`http://127.0.0.1:PORT/fhir`).
    pub url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// Start a receiver that answers 503 to the first `fail_first` requests
    /// and `ok` to every later one.
    pub fn start(fail_first: usize, ok: StatusCode) -> TestResult<Self> {
        let state = Arc::new(Mutex::new(State {
            fail_first,
            ..State::default()
        }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            ActixApp::new().app_data(data.clone()).default_service(
                web::post().to(
                    move |req: HttpRequest,
                          body: web::Bytes,
                          state: web::Data<Arc<Mutex<State>>>| async move {
                        let request_id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                        s.requests.push(Request {
                            path: req.path().to_owned(),
                            request_id,
                            body,
                        });
                        if s.requests.len() <= s.fail_first {
                            HttpResponse::ServiceUnavailable().finish()
                        } else {
                            HttpResponse::build(ok).finish()
                        }
                    },
                ),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))?;
        let addr = server.addrs().first().copied().ok_or("no address")?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            url: format!("http://{addr}/fhir"),
            state,
            handle,
        })
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests
            .clone()
    }

    /// The requests once there are at least `n` (or after 15 s, whatever
    /// arrived).
    pub async fn wait_for(&self, n: usize) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let seen = self.requests();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the server.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}
