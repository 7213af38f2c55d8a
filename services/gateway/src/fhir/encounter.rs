//! `Encounter`: the FCP assessment as it happened.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::fhir::request::{fhir_ok, parse_id};
use crate::render;
use crate::state::State;

pub(crate) async fn read_encounter(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path, "Encounter")?;
    let principal = crate::auth::principal(&req)?;
    state
        .views
        .read(|v| {
            v.referral(&id)
                .filter(|r| principal.may_see(r))
                .and_then(render::encounter)
                .map(|e| fhir_ok(StatusCode::OK, &e))
        })
        .ok_or_else(|| ApiError::not_found(format!("Encounter/{id} is not known")))
}
