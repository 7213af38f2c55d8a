//! Issues, the error that carries them, and the `OperationOutcome` they become.

use serde_json::{Map, Value, json};

/// FHIR `IssueSeverity` (<http://hl7.org/fhir/ValueSet/issue-severity>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR code (`fatal`, `error`, `warning`, `information`).
    pub fn code(&self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// FHIR `IssueType` (<http://hl7.org/fhir/ValueSet/issue-type>), the codes
/// this project uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    NotSupported,
    Duplicate,
    NotFound,
    TooLong,
    CodeInvalid,
    Conflict,
    BusinessRule,
    Processing,
    Transient,
    Exception,
    Throttled,
    TooCostly,
    Timeout,
    Informational,
}

impl IssueType {
    /// The FHIR code, e.g. `code-invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::NotSupported => "not-supported",
            IssueType::Duplicate => "duplicate",
            IssueType::NotFound => "not-found",
            IssueType::TooLong => "too-long",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::Conflict => "conflict",
            IssueType::BusinessRule => "business-rule",
            IssueType::Processing => "processing",
            IssueType::Transient => "transient",
            IssueType::Exception => "exception",
            IssueType::Throttled => "throttled",
            IssueType::TooCostly => "too-costly",
            IssueType::Timeout => "timeout",
            IssueType::Informational => "informational",
        }
    }
}

/// One problem found in the input: one `OperationOutcome.issue`.
///
/// `diagnostics` never repeats patient-identifiable values (NHS number,
/// names, free text) so that an issue can be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueType,
    pub diagnostics: String,
    /// FHIRPath-like location, e.g. `Bundle.entry[2].resource.identifier`.
    pub expression: Option<String>,
    /// `issue.details.coding[0]`: (system, code, display).
    pub details: Option<(String, String, String)>,
}

impl Issue {
    /// An issue of severity `error`.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
            details: None,
        }
    }

    /// The same issue, located at `expression`.
    #[must_use]
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }
}

/// A referral that was refused: the HTTP status and every issue found.
///
/// Crosses the HTTP boundary as `status` (400 for input that is not valid
/// FHIR or lacks a required element, 422 for well-formed FHIR that breaks a
/// business or profile rule) with [`operation_outcome`] of `issues` as the
/// body. Between services it is `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(*.status, .issues))]
pub struct FhirError {
    /// 400 or 422.
    pub status: u16,
    pub issues: Vec<Issue>,
}

/// The conventional name of a crate's error type.
pub type Error = FhirError;

fn summary(status: u16, issues: &[Issue]) -> String {
    let mut s = format!("FHIR input refused ({status})");
    for i in issues {
        s.push_str("; ");
        s.push_str(i.code.code());
        if let Some(e) = &i.expression {
            s.push_str(" at ");
            s.push_str(e);
        }
        s.push_str(": ");
        s.push_str(&i.diagnostics);
    }
    s
}

impl FhirError {
    /// 400 Bad Request: not valid FHIR, or a required element is missing.
    pub fn bad_request(issues: Vec<Issue>) -> Self {
        Self {
            status: 400,
            issues,
        }
    }

    /// 422 Unprocessable Entity: valid FHIR that breaks a business rule.
    pub fn unprocessable(issues: Vec<Issue>) -> Self {
        Self {
            status: 422,
            issues,
        }
    }

    /// The body to answer with.
    pub fn operation_outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }
}

/// A FHIR R4 `OperationOutcome` carrying `issues`. An empty list gives one
/// `information` issue, since R4 requires at least one.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![json!({
            "severity": Severity::Information.code(),
            "code": IssueType::Informational.code(),
            "diagnostics": "no issues",
        })]
    } else {
        issues.iter().map(issue_json).collect()
    };
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues,
    })
}

fn issue_json(issue: &Issue) -> Value {
    let mut o = Map::new();
    o.insert("severity".into(), issue.severity.code().into());
    o.insert("code".into(), issue.code.code().into());
    if let Some((system, code, display)) = &issue.details {
        o.insert(
            "details".into(),
            json!({ "coding": [{ "system": system, "code": code, "display": display }] }),
        );
    }
    if !issue.diagnostics.is_empty() {
        o.insert("diagnostics".into(), issue.diagnostics.clone().into());
    }
    if let Some(e) = &issue.expression {
        o.insert("expression".into(), json!([e]));
    }
    Value::Object(o)
}
