//! `Task`: the referrer's view of where the referral is (`GET /Task/{id}`,
//! `GET /Task?…`; history in [`crate::fhir::referral`]).

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::fhir::referral::search;
use crate::fhir::request::{parse_id, read_response};
use crate::state::State;
use crate::{render, search};

pub(crate) async fn read_task(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Task")?;
    let principal = crate::auth::principal(&req)?;
    state
        .views
        .read(|v| {
            v.referral(&id)
                .filter(|r| principal.may_see(r))
                .map(|r| read_response(&render::task(r), r.task_version()))
        })
        .ok_or_else(|| ApiError::not_found(format!("Task/{id} is not known")))
}

pub(crate) async fn search_tasks(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    search(&state, &req, search::Resource::Task, render::task).await
}
