//! `/analytics`: the built-in analytical views (waits, outcomes, DNA,
//! conversion), kept current from the event log.
//!
//! - `GET /analytics`: the list of views and splits.
//! - `GET /analytics/dashboard`: an HTML page with charts of the waits and
//!   outcome change (and tables of every view), drawn in the browser from
//!   the views below with the token the user enters.
//! - `GET /analytics/{view}?split=imd_decile&format=csv`: one view as JSON
//!   (`{"view", "split", "rows"}`) or, with `format=csv` or
//!   `Accept: text/csv`, as CSV. An unknown view is 404, an unknown split or
//!   format 400, each with an OperationOutcome; 503 until the first replay
//!   of the log has finished.
//!
//! Every request needs a bearer token whose scopes allow reading
//! `Analytics` (`system/Analytics.read`, or a wildcard such as
//! `system/*.read`): 401 `login` without a valid one, 403 `forbidden` when
//! its scopes do not allow it.
//!
//! The views are aggregates (no pseudonyms, no identifiers); what each
//! holds is defined in `mskflow_analytics::views`. Deprivation deciles come
//! from the illustrative postcode lookup shipped with `mskflow-analytics`
//! unless one is given to [`AnalyticsStore::new`]; `mskflow export` loads
//! the official one with `--imd-lookup`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_analytics::views::{Split, Table, View, ViewOptions, Views};
use mskflow_analytics::{Context, ImdLookup, Pseudonymiser};
use mskflow_eventlog::{EventLog, StartFrom, Subscription};
use mskflow_fhir::IssueType;
use serde_json::json;

use crate::error::ApiError;

/// The consumer name of the analytics follower.
pub const CONSUMER: &str = "gateway-analytics";
const BATCH: usize = 1000;
const CSV: &str = "text/csv; charset=utf-8";

/// The live analytical views, shared by the HTTP workers.
#[derive(Debug)]
pub struct AnalyticsStore {
    views: RwLock<Views>,
    ctx: Context,
    ready: AtomicBool,
}

impl AnalyticsStore {
    /// An empty store. `imd`: the postcode to IMD decile lookup, or `None`
    /// for the illustrative one shipped with `mskflow-analytics`.
    pub fn new(imd: Option<ImdLookup>, options: ViewOptions) -> Self {
        let imd = imd
            .or_else(|| ImdLookup::example().ok())
            .unwrap_or_default();
        // Aggregated views carry no pseudonyms: the key only satisfies the
        // attribute builder and is never kept or shown.
        let key = [
            uuid::Uuid::new_v4().into_bytes(),
            uuid::Uuid::new_v4().into_bytes(),
        ]
        .concat();
        #[allow(
            clippy::expect_used,
            reason = "a 32-byte key always meets the 16-byte minimum"
        )]
        let pseudonymiser = Pseudonymiser::new(&key).expect("a 32-byte key is long enough");
        Self {
            views: RwLock::new(Views::new(options)),
            ctx: Context { pseudonymiser, imd },
            ready: AtomicBool::new(false),
        }
    }

    /// Fold a batch of events in.
    pub fn apply_batch(&self, batch: &[mskflow_eventlog::Envelope]) {
        let mut views = match self.views.write() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        for envelope in batch {
            views.observe(envelope, &self.ctx);
        }
    }

    /// One view's table.
    pub fn table(&self, view: View, split: Split) -> Table {
        let views = match self.views.read() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        views.table(view, split)
    }

    /// Whether the first replay of the log has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Default for AnalyticsStore {
    fn default() -> Self {
        Self::new(None, ViewOptions::default())
    }
}

/// Replay the whole log into `store`, then follow it until `shutdown`
/// resolves. The views live in memory, so every start replays from the
/// beginning; read errors are logged and retried with backoff.
pub async fn run(
    log: Arc<dyn EventLog>,
    store: Arc<AnalyticsStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    let mut sub: Box<dyn Subscription> = loop {
        tokio::select! {
            () = &mut shutdown => return,
            caught = catch_up(&log, &store) => match caught {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::error!(error = %e, "analytics views cannot replay the event log; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    store.ready.store(true, Ordering::Release);
    tracing::info!("analytics views replayed");
    backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            batch = sub.next_batch(BATCH) => match batch {
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    store.apply_batch(&batch);
                }
                Err(e) => {
                    tracing::error!(error = %e, "analytics views cannot read the event log; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Replay from the beginning; the subscription is left at the head.
async fn catch_up(
    log: &Arc<dyn EventLog>,
    store: &AnalyticsStore,
) -> Result<Box<dyn Subscription>, mskflow_eventlog::Error> {
    let fresh = AnalyticsStore::new(Some(store.ctx.imd.clone()), store.options());
    let mut sub = log.subscribe(CONSUMER, StartFrom::Beginning).await?;
    loop {
        let batch = sub.poll_batch(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        fresh.apply_batch(&batch);
    }
    // Swap the replayed views in whole, so a retried replay never mixes
    // with a partial one.
    let replayed = match fresh.views.into_inner() {
        Ok(v) => v,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut views = match store.views.write() {
        Ok(v) => v,
        Err(poisoned) => poisoned.into_inner(),
    };
    *views = replayed;
    Ok(sub)
}

impl AnalyticsStore {
    fn options(&self) -> ViewOptions {
        match self.views.read() {
            Ok(v) => v.options(),
            Err(poisoned) => poisoned.into_inner().options(),
        }
    }
}

/// Mount `/analytics` and `/analytics/{view}`. Needs a
/// `web::Data<AnalyticsStore>` in the app data.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The page holds no data (its script reads the views with the token
    // the user gives it), so it is served without one.
    cfg.service(
        web::resource("/analytics/dashboard")
            .route(web::get().to(dashboard))
            .default_service(web::to(not_allowed)),
    )
    .service(
        web::scope("/analytics")
            // A bearer token allowed to read `Analytics`.
            .wrap(actix_web::middleware::from_fn(
                crate::auth::authorise_analytics,
            ))
            .service(
                web::resource("")
                    .route(web::get().to(index))
                    .default_service(web::to(not_allowed)),
            )
            .service(
                web::resource("/{view}")
                    .route(web::get().to(view))
                    .default_service(web::to(not_allowed)),
            ),
    );
}

/// The charts page: static HTML and script, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-cache"))
        .body(DASHBOARD)
}

async fn not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        "the analytics views are read with GET",
    ))
}

async fn index(req: HttpRequest) -> HttpResponse {
    let base = req.path().trim_end_matches('/').to_owned();
    let views: Vec<_> = View::ALL
        .iter()
        .map(|v| {
            json!({
                "view": v.code(),
                "description": v.description(),
                "href": format!("{base}/{}", v.code()),
            })
        })
        .collect();
    let splits: Vec<&str> = Split::ALL.iter().map(|s| s.code()).collect();
    HttpResponse::Ok().json(json!({
        "views": views,
        "splits": splits,
        "formats": ["json", "csv"],
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The answer's format: `format=` wins; otherwise CSV when the client
/// accepts `text/csv` and not JSON first.
fn format(req: &HttpRequest, query: Option<&str>) -> Result<Format, ApiError> {
    match query {
        Some("json") => return Ok(Format::Json),
        Some("csv") => return Ok(Format::Csv),
        Some(other) => {
            return Err(ApiError::bad_request(
                IssueType::CodeInvalid,
                format!("unknown format {other:?}: expected json or csv"),
            )
            .at("format"));
        }
        None => {}
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let first = accept
        .split(',')
        .map(|m| m.split(';').next().unwrap_or_default().trim())
        .find(|m| *m == "text/csv" || m.ends_with("json"));
    Ok(if first == Some("text/csv") {
        Format::Csv
    } else {
        Format::Json
    })
}

async fn view(
    store: web::Data<AnalyticsStore>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Some(view) = View::parse(&path) else {
        return Err(ApiError::not_found(format!(
            "no analytics view {:?}: see /analytics",
            path.as_str()
        )));
    };
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::bad_request(IssueType::Invalid, "the query string cannot be read"))?
        .into_inner();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let split = match param("split") {
        None | Some("") => Split::None,
        Some(code) => Split::parse(code).map_err(|e| {
            ApiError::bad_request(IssueType::CodeInvalid, e.to_string()).at("split")
        })?,
    };
    let format = format(&req, param("format"))?;
    if !store.is_ready() {
        return Err(ApiError::unavailable(
            "the analytics views are still replaying the event log",
        ));
    }
    let table = store.table(view, split);
    Ok(match format {
        Format::Json => HttpResponse::Ok().json(&table),
        Format::Csv => HttpResponse::Ok()
            .content_type(CSV)
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-by-{}.csv\"",
                    view.code(),
                    split.code()
                ),
            ))
            .body(table.to_csv()),
    })
}
