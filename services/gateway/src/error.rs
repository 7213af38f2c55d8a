//! Every error at the HTTP edge is a FHIR `OperationOutcome`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use mskflow_fhir::{FhirError, Issue, IssueType, Severity};

/// NHS Booking and Referral Standard HTTP error codes (`issue.details`).
pub const HTTP_ERROR_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/http-error-codes";

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        for i in &self.issues {
            write!(f, "; {}: {}", i.code.code(), i.diagnostics)?;
        }
        Ok(())
    }
}

/// The standard's code for an HTTP status, where it names one. Statuses it
/// has no receiver code for (406, 412, 413, 415, 504, ...) carry only the FHIR issue
/// code, rather than a code the code system does not define.
fn rec_code(status: StatusCode) -> Option<(&'static str, &'static str)> {
    Some(match status.as_u16() {
        400 => (
            "REC_BAD_REQUEST",
            "400: The Receiver was unable to process the request.",
        ),
        401 => (
            "REC_UNAUTHORIZED",
            "401: The Receiver requires authorisation.",
        ),
        403 => ("REC_FORBIDDEN", "403: The Receiver has denied access."),
        404 => (
            "REC_NOT_FOUND",
            "404: The Receiver was unable to find the resource.",
        ),
        405 => (
            "REC_METHOD_NOT_ALLOWED",
            "405: The Receiver does not support this method.",
        ),
        408 => ("REC_TIMEOUT", "408: The Receiver timed out."),
        409 => (
            "REC_CONFLICT",
            "409: The Receiver has already processed this request.",
        ),
        422 => (
            "REC_UNPROCESSABLE_ENTITY",
            "422: The Receiver could not process the resource.",
        ),
        503 => (
            "REC_SERVICE_UNAVAILABLE",
            "503: The Receiver is unavailable.",
        ),
        500..=502 => (
            "REC_SERVER_ERROR",
            "500: The Receiver has encountered an error.",
        ),
        _ => return None,
    })
}

impl ApiError {
    pub fn new(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            issues: vec![Issue {
                severity: Severity::Error,
                code,
                diagnostics: diagnostics.into(),
                expression: None,
                details: None,
            }],
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(i) = self.issues.first_mut() {
            i.expression = Some(expression.into());
        }
        self
    }

    pub fn bad_request(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, diagnostics)
    }

    pub fn unavailable(diagnostics: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueType::Transient,
            diagnostics,
        )
    }

    pub fn internal(diagnostics: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            diagnostics,
        )
    }

    /// The OperationOutcome body, each issue carrying the standard's error code.
    pub fn outcome(&self) -> serde_json::Value {
        let rec = rec_code(self.status);
        let issues: Vec<Issue> = self
            .issues
            .iter()
            .cloned()
            .map(|mut i| {
                if let (None, Some((code, display))) = (&i.details, rec) {
                    i.details = Some((
                        HTTP_ERROR_SYSTEM.to_owned(),
                        code.to_owned(),
                        display.to_owned(),
                    ));
                }
                i
            })
            .collect();
        mskflow_fhir::operation_outcome(&issues)
    }
}

impl From<FhirError> for ApiError {
    fn from(e: FhirError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            issues: e.issues,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        // After a body that was too large or too slow, the rest of it may
        // still be on the wire: the connection cannot be reused.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            res.force_close();
        }
        res.content_type(crate::state::FHIR_JSON)
            .body(self.outcome().to_string())
    }
}

/// Map an intake gRPC status onto the HTTP answer.
pub fn from_grpc(status: &tonic::Status) -> ApiError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument => {
            let violations = mskflow_proto::convert::violations(status);
            if violations.is_empty() {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueType::Invalid,
                    status.message(),
                )
            } else {
                ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    issues: violations
                        .into_iter()
                        .map(|v| Issue {
                            severity: Severity::Error,
                            code: IssueType::Value,
                            diagnostics: v.description,
                            expression: Some(v.field),
                            details: None,
                        })
                        .collect(),
                }
            }
        }
        Code::AlreadyExists => {
            let existing = status
                .metadata()
                .get(mskflow_proto::REFERRAL_ID_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(|id| format!(" (ServiceRequest/{id})"))
                .unwrap_or_default();
            ApiError::new(
                StatusCode::CONFLICT,
                IssueType::Duplicate,
                format!("{}{existing}", status.message()),
            )
        }
        Code::NotFound => ApiError::not_found(status.message()),
        Code::FailedPrecondition => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::BusinessRule,
            status.message(),
        ),
        Code::PermissionDenied => ApiError::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            status.message(),
        ),
        Code::Aborted => ApiError::new(StatusCode::CONFLICT, IssueType::Conflict, status.message()),
        Code::Unavailable | Code::ResourceExhausted => {
            ApiError::unavailable(format!("intake unavailable: {}", status.message()))
        }
        // The call broke off (intake restarting, the connection dropped):
        // whether it was recorded is unknown, so the sender retries with the
        // same X-Request-Id and gets 409 if it was.
        Code::Unknown | Code::Cancelled => ApiError::unavailable(format!(
            "intake call interrupted: {}; retry with the same X-Request-Id",
            status.message()
        )),
        Code::DeadlineExceeded => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            IssueType::Timeout,
            format!("intake timed out: {}", status.message()),
        ),
        _ => ApiError::internal(format!("intake failed: {}", status.message())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    fn details_code(e: &ApiError) -> Option<String> {
        e.outcome()["issue"][0]["details"]["coding"][0]["code"]
            .as_str()
            .map(str::to_owned)
    }

    #[test]
    fn statuses_carry_the_standards_codes_and_no_invented_ones() {
        let unavailable = ApiError::unavailable("store down");
        assert_eq!(
            details_code(&unavailable).as_deref(),
            Some("REC_SERVICE_UNAVAILABLE")
        );
        assert_eq!(unavailable.outcome()["issue"][0]["code"], "transient");
        let duplicate = ApiError::new(StatusCode::CONFLICT, IssueType::Duplicate, "seen");
        assert_eq!(details_code(&duplicate).as_deref(), Some("REC_CONFLICT"));
        let stale = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            IssueType::Conflict,
            "stale",
        );
        assert_eq!(details_code(&stale), None);
        assert_eq!(stale.outcome()["issue"][0]["code"], "conflict");
        assert_eq!(
            details_code(&ApiError::internal("boom")).as_deref(),
            Some("REC_SERVER_ERROR")
        );
        // A call cut off by a restarting intake is transient, not a 500.
        let cut = from_grpc(&tonic::Status::unknown("transport error"));
        assert_eq!(cut.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(cut.outcome()["issue"][0]["code"], "transient");
        assert_eq!(
            from_grpc(&tonic::Status::internal("bug")).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
