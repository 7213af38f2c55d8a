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

fn rec_code(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
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
        409 => (
            "REC_CONFLICT",
            "409: The Receiver has already processed this request.",
        ),
        413 => (
            "REC_PAYLOAD_TOO_LARGE",
            "413: The request body is too large.",
        ),
        415 => (
            "REC_UNSUPPORTED_MEDIA_TYPE",
            "415: The Receiver does not accept this content type.",
        ),
        422 => (
            "REC_UNPROCESSABLE_ENTITY",
            "422: The Receiver could not process the resource.",
        ),
        503 => ("REC_UNAVAILABLE", "503: The Receiver is unavailable."),
        504 => ("REC_GATEWAY_TIMEOUT", "504: The Receiver timed out."),
        _ => (
            "REC_SERVER_ERROR",
            "500: The Receiver has encountered an error.",
        ),
    }
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
        let (code, display) = rec_code(self.status);
        let issues: Vec<Issue> = self
            .issues
            .iter()
            .cloned()
            .map(|mut i| {
                if i.details.is_none() {
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
        res.content_type(crate::http::FHIR_JSON)
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
        Code::DeadlineExceeded => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            IssueType::Timeout,
            format!("intake timed out: {}", status.message()),
        ),
        _ => ApiError::internal(format!("intake failed: {}", status.message())),
    }
}
