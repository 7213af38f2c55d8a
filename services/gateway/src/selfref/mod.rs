//! Patient self-referral over the web, and the same questions taken by a
//! call handler on the phone. The questions and rules are
//! `mskflow_selfreferral`'s (pure); this module serves them as HTML pages
//! (`pages.rs` over `html.rs`, our own NHS-style stylesheet, no scripts),
//! protects them (`guard.rs`: per-client rate limit, CSRF cookie, body
//! limit) and records what they end with (`record.rs`: the referral through
//! intake, the self-referral's own event, the MSK-HQ baseline).
//!
//! - `GET /self-referral`: step 1; `POST /self-referral`: each next step,
//!   the refusal (too young, out of area), the safety-netting advice (a red
//!   flag) or, at the end, the confirmation with a reference number.
//! - `GET|POST /self-referral/telephone`: the call handler's form (a bearer
//!   token allowed to create `ServiceRequest`s; the token's client id is
//!   recorded as who took the call).
//! - `GET|POST /self-referral/status`: a referral's progress by reference
//!   number and date of birth.
//!
//! No answer is ever logged: only referral ids, event types and outcomes.

mod guard;
mod html;
mod pages;
mod record;

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use chrono::{NaiveDate, Utc};
use mskflow_events::types::ReceivedVia;
use mskflow_selfreferral::{Answers, Area, FieldError, Outcome, Reference, Step, decide};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::{Access, Authenticator};
use crate::state::State;
use guard::RateLimiter;
use pages::{FormCtx, Instruments, Item};
use record::{Ending, Route};

/// Largest form body accepted (the whole form is a few kilobytes).
const FORM_LIMIT: usize = 32 * 1024;

/// Configuration of self-referral.
#[derive(Debug, Clone)]
pub struct Options {
    /// Who may use the service.
    pub area: Area,
    /// Requests per client (IP address) per minute, over all the pages.
    pub requests_per_minute: u32,
}

impl Default for Options {
    fn default() -> Self {
        let practices = [
            ("A81001", "Riverside Surgery"),
            ("A81002", "Park Lane Medical Centre"),
            ("A81004", "Hillside Health Centre"),
        ]
        .map(|(c, n)| (c.to_owned(), n.to_owned()));
        Self {
            area: Area::new("this area", &practices, 16).unwrap_or_else(|_| Area {
                name: "this area".to_owned(),
                practices: vec![],
                min_age: 16,
            }),
            requests_per_minute: 120,
        }
    }
}

/// What the self-referral handlers share.
#[derive(Debug)]
pub struct SelfReferral {
    area: Area,
    limiter: RateLimiter,
}

impl SelfReferral {
    pub fn new(options: Options) -> Self {
        Self {
            limiter: RateLimiter::new(options.requests_per_minute),
            area: options.area,
        }
    }
}

type Shared = web::Data<SelfReferral>;
type Form = web::Form<Vec<(String, String)>>;

/// The routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let form = web::FormConfig::default().limit(FORM_LIMIT);
    cfg.service(
        web::scope("/self-referral")
            .app_data(form)
            .service(
                web::resource("")
                    .route(web::get().to(start))
                    .route(web::post().to(step)),
            )
            .service(web::resource("/style.css").route(web::get().to(style)))
            .service(
                web::resource("/telephone")
                    .route(web::get().to(telephone_start))
                    .route(web::post().to(telephone_step)),
            )
            .service(
                web::resource("/status")
                    .route(web::get().to(status_start))
                    .route(web::post().to(status_lookup)),
            ),
    );
}

const STYLE: &str = include_str!("style.css");

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(STYLE)
}

/// An HTML answer with the pages' security headers (and the CSRF cookie).
fn html(req: &HttpRequest, status: StatusCode, token: Option<&str>, body: String) -> HttpResponse {
    let mut res = HttpResponseBuilder::new(status);
    res.content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if let Some(t) = token {
        res.insert_header((header::SET_COOKIE, guard::cookie(req, t)));
    }
    res.body(body)
}

fn problem(req: &HttpRequest, status: StatusCode, title: &str, message: &str) -> HttpResponse {
    html(req, status, None, pages::problem_page(title, message))
}

/// The rate limit: `Some(answer)` when this client has used its share.
fn limited(sr: &SelfReferral, req: &HttpRequest) -> Option<HttpResponse> {
    sr.limiter
        .check(guard::client_ip(req), Instant::now())
        .err()
        .map(|wait| {
            let mut res = problem(
                req,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "You have sent too many requests in a short time. Wait a minute, then try again.",
            );
            if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            res
        })
}

/// The posted fields, split into the answers and the form's own fields
/// (CSRF token, key, step).
struct Posted {
    answers: Answers,
    csrf: Option<String>,
    key: Option<Uuid>,
    step: Option<Step>,
}

fn posted(form: Form) -> Posted {
    let mut p = Posted {
        answers: Answers::default(),
        csrf: None,
        key: None,
        step: None,
    };
    for (name, value) in form.into_inner() {
        match name.as_str() {
            "csrf" => p.csrf = Some(value),
            "key" => p.key = Uuid::parse_str(value.trim()).ok(),
            "step" => p.step = Step::from_number(&value),
            _ if mskflow_selfreferral::step_of(&name).is_some() || name == "reference" => {
                p.answers.0.entry(name).or_insert(value);
            }
            _ => {}
        }
    }
    p
}

/// The checks every post passes first: the rate limit, then the CSRF token.
fn accept(sr: &SelfReferral, req: &HttpRequest, form: Form) -> Result<Posted, Box<HttpResponse>> {
    if let Some(res) = limited(sr, req) {
        return Err(Box::new(res));
    }
    let p = posted(form);
    if !guard::valid_post(req, p.csrf.as_deref()) {
        return Err(Box::new(refused_post(req)));
    }
    Ok(p)
}

/// A post whose form's own fields (key, step) are missing or malformed.
fn unreadable(req: &HttpRequest) -> HttpResponse {
    problem(
        req,
        StatusCode::BAD_REQUEST,
        "Sorry, there is a problem",
        "This form could not be read. Start again.",
    )
}

/// A post without the token of its cookie (expired, another site's).
fn refused_post(req: &HttpRequest) -> HttpResponse {
    tracing::info!("self-referral post refused: missing or wrong CSRF token");
    problem(
        req,
        StatusCode::FORBIDDEN,
        "Your session has ended",
        "We could not match this form to your visit, so nothing was sent. Start again.",
    )
}

/// The token of the visit: the cookie's, or a new one.
fn token_of(req: &HttpRequest) -> (String, bool) {
    match guard::cookie_token(req) {
        Some(t) => (t, false),
        None => (guard::new_token(), true),
    }
}

async fn start(sr: Shared, req: HttpRequest) -> HttpResponse {
    if let Some(res) = limited(&sr, &req) {
        return res;
    }
    let (token, _) = token_of(&req);
    let ctx = FormCtx {
        action: "/self-referral",
        csrf: &token,
        key: Uuid::new_v4(),
        area: &sr.area,
        instruments: &Instruments::default(),
    };
    let body = pages::step_page(Step::Eligibility, &Answers::default(), &[], &ctx);
    html(&req, StatusCode::OK, Some(&token), body)
}

async fn step(state: State, sr: Shared, req: HttpRequest, form: Form) -> HttpResponse {
    let p = match accept(&sr, &req, form) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let (Some(key), Some(upto)) = (p.key, p.step) else {
        return unreadable(&req);
    };
    let route = Route {
        via: ReceivedVia::SelfReferral,
        taken_by: None,
    };
    let csrf = p.csrf.unwrap_or_default();
    answer(
        &state,
        &sr,
        &req,
        &p.answers,
        key,
        upto,
        route,
        &csrf,
        "/self-referral",
    )
    .await
}

/// Decide on the answers so far and answer with the page that follows.
#[allow(
    clippy::too_many_arguments,
    reason = "the two forms' handlers share it"
)]
async fn answer(
    state: &State,
    sr: &SelfReferral,
    req: &HttpRequest,
    answers: &Answers,
    key: Uuid,
    upto: Step,
    route: Route<'_>,
    csrf: &str,
    action: &str,
) -> HttpResponse {
    let telephone = route.via == ReceivedVia::Telephone;
    let ask = |step: Step, errors: Vec<FieldError>, instruments: Instruments| {
        let ctx = FormCtx {
            action,
            csrf,
            key,
            area: &sr.area,
            instruments: &instruments,
        };
        let body = match route.taken_by {
            Some(who) if telephone => pages::telephone_page(answers, &errors, &ctx, who),
            _ => pages::step_page(step, answers, &errors, &ctx),
        };
        let status = if errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        html(req, status, None, body)
    };
    match decide(&sr.area, answers, upto, today()) {
        Outcome::Ask { step, errors } => {
            let instruments = if step == Step::Questionnaires || telephone {
                match instruments(state).await {
                    Ok(i) => i,
                    Err(res) => return res(req),
                }
            } else {
                Instruments::default()
            };
            ask(step, errors, instruments)
        }
        Outcome::Refused(why) => {
            tracing::info!(
                route = route.via.code(),
                "self-referral refused: not eligible"
            );
            html(
                req,
                StatusCode::OK,
                None,
                pages::refused_page(&why, &sr.area),
            )
        }
        Outcome::SafetyNet {
            net,
            practice,
            about,
        } => {
            let ending = Ending::SafetyNet {
                net: &net,
                practice: &practice,
                about: &about,
            };
            match record::record(state, req, key, route, ending).await {
                Ok(_) => html(
                    req,
                    StatusCode::OK,
                    None,
                    pages::safety_net_page(&net, Reference::of_key(key).as_str(), telephone),
                ),
                // The advice matters more than the record: show it anyway.
                Err(e) => {
                    tracing::error!(status = %e.status, "a safety-netted self-referral was not recorded");
                    html(
                        req,
                        StatusCode::SERVICE_UNAVAILABLE,
                        None,
                        pages::safety_net_page(&net, Reference::of_key(key).as_str(), telephone),
                    )
                }
            }
        }
        Outcome::Complete(submission) => {
            match record::record(state, req, key, route, Ending::Complete(&submission)).await {
                Ok(_) => html(
                    req,
                    StatusCode::OK,
                    None,
                    pages::confirmation_page(Reference::of_key(key).as_str(), route.taken_by),
                ),
                Err(e) => {
                    tracing::error!(status = %e.status, "a self-referral was not recorded");
                    problem(
                        req,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Sorry, there is a problem with the service",
                        "Your referral was not sent. Try again in a few minutes, or contact your GP practice.",
                    )
                }
            }
        }
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

type Failure = Box<dyn FnOnce(&HttpRequest) -> HttpResponse>;

/// The STarT Back and MSK-HQ items, as the outcomes service serves them
/// (with the licensed wording where the operator configured it).
async fn instruments(state: &State) -> Result<Instruments, Failure> {
    let fetch = |measure: &'static str| async move {
        crate::fhir::questionnaire::questionnaire(state, measure)
            .await
            .map(|q| items(&q, measure))
    };
    match (fetch("start-back").await, fetch("msk-hq").await) {
        (Ok(start_back), Ok(msk_hq)) => Ok(Instruments { start_back, msk_hq }),
        _ => Err(Box::new(|req: &HttpRequest| {
            problem(
                req,
                StatusCode::SERVICE_UNAVAILABLE,
                "Sorry, there is a problem with the service",
                "Try again in a few minutes.",
            )
        })),
    }
}

/// The items of a FHIR Questionnaire: link id, text and answer options.
fn items(questionnaire: &Value, measure: &str) -> Vec<Item> {
    let str_of = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    questionnaire
        .get("item")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    let options = item
                        .get("answerOption")
                        .and_then(Value::as_array)
                        .map(|opts| {
                            opts.iter()
                                .filter_map(|o| o.get("valueCoding"))
                                .map(|c| {
                                    let code = str_of(c, "code");
                                    let label =
                                        c.get("display").and_then(Value::as_str).map_or_else(
                                            || neutral_answer(measure, &code),
                                            str::to_owned,
                                        );
                                    (code, label)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Item {
                        link_id: str_of(item, "linkId"),
                        text: str_of(item, "text"),
                        options,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An answer label where no licensed wording is configured.
fn neutral_answer(measure: &str, code: &str) -> String {
    match (measure, code) {
        ("msk-hq", "0") => "0 (worst)".to_owned(),
        ("msk-hq", "4") => "4 (best)".to_owned(),
        _ => code.to_owned(),
    }
}

/// The call handler: a valid bearer token allowed to create ServiceRequests.
fn call_handler(req: &HttpRequest) -> Result<String, Box<HttpResponse>> {
    let Some(auth) = req.app_data::<web::Data<Authenticator>>() else {
        return Err(Box::new(problem(
            req,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sorry, there is a problem",
            "Sign-in is not configured.",
        )));
    };
    let principal = crate::auth::bearer(req.headers())
        .ok_or_else(|| "no token".to_owned())
        .and_then(|t| auth.verify(t).map_err(|e| e.0));
    match principal {
        Ok(p) if p.allows("ServiceRequest", Access::Create) => Ok(p.client_id),
        Ok(_) => Err(Box::new(problem(
            req,
            StatusCode::FORBIDDEN,
            "You cannot take referrals",
            "Your account is not allowed to record referrals.",
        ))),
        Err(_) => {
            let mut res = problem(
                req,
                StatusCode::UNAUTHORIZED,
                "Sign in to take a referral",
                "This page is for the service's call handlers. Sign in first.",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Err(Box::new(res))
        }
    }
}

async fn telephone_start(state: State, sr: Shared, req: HttpRequest) -> HttpResponse {
    if let Some(res) = limited(&sr, &req) {
        return res;
    }
    let who = match call_handler(&req) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    let instruments = match instruments(&state).await {
        Ok(i) => i,
        Err(res) => return res(&req),
    };
    let (token, _) = token_of(&req);
    let ctx = FormCtx {
        action: "/self-referral/telephone",
        csrf: &token,
        key: Uuid::new_v4(),
        area: &sr.area,
        instruments: &instruments,
    };
    let body = pages::telephone_page(&Answers::default(), &[], &ctx, &who);
    html(&req, StatusCode::OK, Some(&token), body)
}

async fn telephone_step(state: State, sr: Shared, req: HttpRequest, form: Form) -> HttpResponse {
    let p = match accept(&sr, &req, form) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let who = match call_handler(&req) {
        Ok(w) => w,
        Err(res) => return *res,
    };
    let Some(key) = p.key else {
        return unreadable(&req);
    };
    let route = Route {
        via: ReceivedVia::Telephone,
        taken_by: Some(&who),
    };
    let csrf = p.csrf.unwrap_or_default();
    answer(
        &state,
        &sr,
        &req,
        &p.answers,
        key,
        Step::Questionnaires,
        route,
        &csrf,
        "/self-referral/telephone",
    )
    .await
}

async fn status_start(sr: Shared, req: HttpRequest) -> HttpResponse {
    if let Some(res) = limited(&sr, &req) {
        return res;
    }
    let (token, _) = token_of(&req);
    html(
        &req,
        StatusCode::OK,
        Some(&token),
        pages::status_form(&token, &Answers::default(), &[]),
    )
}

/// A referral's progress, for whoever knows both its reference number and
/// the patient's date of birth. Any mismatch gets the same answer as an
/// unknown reference.
async fn status_lookup(state: State, sr: Shared, req: HttpRequest, form: Form) -> HttpResponse {
    let p = match accept(&sr, &req, form) {
        Ok(p) => p,
        Err(res) => return *res,
    };
    let csrf = p.csrf.unwrap_or_default();
    let a = &p.answers;
    let reference = a.get("reference").and_then(Reference::parse);
    let dob = a
        .get("dob")
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let mut errors = Vec::new();
    if reference.is_none() {
        errors.push(FieldError {
            field: "reference".to_owned(),
            message: "Enter your reference number, like MSK-7K3Q-9XPD".to_owned(),
        });
    }
    if dob.is_none() {
        errors.push(FieldError {
            field: "dob".to_owned(),
            message: "Enter your date of birth".to_owned(),
        });
    }
    let (Some(reference), Some(dob)) = (reference, dob) else {
        return html(
            &req,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            pages::status_form(&csrf, a, &errors),
        );
    };
    let id = mskflow_selfreferral::referral_id(&reference);
    let found = state.views.read(|v| {
        v.referral(&id)
            .filter(|r| r.details.patient.birth_date == Some(dob))
            .map(crate::views::status::business_status)
    });
    match found {
        Some((code, label)) => html(
            &req,
            StatusCode::OK,
            None,
            pages::status_page(reference.as_str(), code, label),
        ),
        None => {
            let errors = vec![FieldError {
                field: "reference".to_owned(),
                message: "No referral matches this reference number and date of birth. Check them and try again".to_owned(),
            }];
            html(
                &req,
                StatusCode::NOT_FOUND,
                None,
                pages::status_form(&csrf, a, &errors),
            )
        }
    }
}
