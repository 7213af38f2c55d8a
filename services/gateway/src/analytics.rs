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
//!   format 400, each with an OperationOutcome; 503 until the read model
//!   has caught up with the log at start-up.
//!
//! Every request needs a bearer token whose scopes allow reading
//! `Analytics` (`system/Analytics.read`, or a wildcard such as
//! `system/*.read`): 401 `login` without a valid one, 403 `forbidden` when
//! its scopes do not allow it.
//!
//! The views are aggregates (no pseudonyms, no identifiers); what each
//! holds is defined in `mskflow_analytics::views`. They are computed from
//! one row of facts per referral kept on disk with its checkpoint
//! (`mskflow_analytics::store`, ADR 0005), streamed into per-group figures
//! at each request. Deprivation deciles come from the example postcode
//! lookup shipped with `mskflow-analytics` unless one is given to
//! [`AnalyticsStore::new`]; `mskflow export` loads the official one with
//! `--imd-lookup`. After changing the lookup, rebuild the read model
//! (`mskflow replay --rebuild analytics-facts`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use mskflow_analytics::store::AnalyticsFacts;
use mskflow_analytics::views::{Split, Table, View, ViewOptions};
use mskflow_analytics::{Context, ImdLookup, Pseudonymiser};
use mskflow_eventlog::EventLog;
use mskflow_fhir::IssueType;
use mskflow_projection::Projector;
use serde_json::json;

use crate::error::ApiError;

const CSV: &str = "text/csv; charset=utf-8";

/// The analytical views, kept on disk (`analytics-facts.db`, see
/// `mskflow_analytics::store`) and shared by the HTTP workers.
#[derive(Debug)]
pub struct AnalyticsStore {
    ctx: Context,
    options: ViewOptions,
    projections: Option<mskflow_projection::Options>,
    /// Set once the read model has caught up with the log.
    projector: OnceLock<Projector<AnalyticsFacts>>,
}

impl AnalyticsStore {
    /// A store not yet open. `imd`: the postcode to IMD decile lookup, or
    /// `None` for the example one shipped with `mskflow-analytics`;
    /// `projections`: where the read model keeps its file (`None`: a
    /// temporary directory, rebuilt at each start).
    pub fn new(
        imd: Option<ImdLookup>,
        options: ViewOptions,
        projections: Option<mskflow_projection::Options>,
    ) -> Self {
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
            ctx: Context { pseudonymiser, imd },
            options,
            projections,
            projector: OnceLock::new(),
        }
    }

    /// One view's table, streamed from the stored facts; `None` until the
    /// read model has caught up with the log at start-up.
    pub async fn table(
        &self,
        view: View,
        split: Split,
    ) -> Option<Result<Table, mskflow_projection::Error>> {
        let projector = self.projector.get()?;
        let options = self.options;
        Some(
            projector
                .read(move |conn| mskflow_analytics::store::table(conn, view, split, options))
                .await,
        )
    }

    /// Whether the read model has caught up with the log since start-up.
    pub fn is_ready(&self) -> bool {
        self.projector.get().is_some_and(Projector::is_ready)
    }
}

/// Open the read model (resumed after its checkpoint, or rebuilt), then
/// follow the log until `shutdown` resolves; opening failures are logged
/// and retried with backoff.
pub async fn run(
    log: Arc<dyn EventLog>,
    store: Arc<AnalyticsStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    let (projector, following) = loop {
        let opened = async {
            let options = match &store.projections {
                Some(options) => options.clone(),
                None => mskflow_projection::Options::temporary().map_err(|source| {
                    mskflow_projection::Error::Io {
                        name: "analytics-facts",
                        path: std::env::temp_dir(),
                        source,
                    }
                })?,
            };
            Projector::open(&log, &options, AnalyticsFacts::new(store.ctx.clone())).await
        };
        tokio::select! {
            () = &mut shutdown => return,
            opened = opened => match opened {
                Ok((projector, following, catch_up)) => {
                    tracing::info!(events = catch_up.events, "analytics views ready");
                    break (projector, following);
                }
                Err(e) => {
                    tracing::error!(error = %e, "analytics views cannot be opened; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    let projector = store.projector.get_or_init(|| projector);
    projector.follow(following, shutdown).await;
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
    let table = match store.table(view, split).await {
        None => {
            return Err(ApiError::unavailable(
                "the analytics views are still catching up with the event log",
            ));
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "analytics views cannot be read");
            return Err(ApiError::unavailable("the analytics views cannot be read"));
        }
        Some(Ok(table)) => table,
    };
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
