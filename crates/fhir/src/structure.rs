//! Reading JSON into the FHIR models, with the failing element's path.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serde_path_to_error::{Path, Segment};

use crate::outcome::{FhirError, Issue, IssueType};

/// Longest piece of sent text repeated in a diagnostic.
const MAX_ECHO: usize = 64;

/// Deserialize `raw` into a model type; on failure, an issue located at
/// `prefix` plus the element path the models stopped at.
pub(crate) fn typed<T: DeserializeOwned>(raw: &Value, prefix: &str) -> Result<T, Box<Issue>> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = fhir_path(prefix, e.path());
        Box::new(from_serde_message(&e.inner().to_string(), path))
    })
}

/// `prefix` + the serde path, written the FHIRPath way (`a.b[2].c`).
fn fhir_path(prefix: &str, path: &Path) -> String {
    let mut out = prefix.to_owned();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Classify a model error message.
fn from_serde_message(message: &str, path: String) -> Issue {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return Issue::error(
            IssueType::Required,
            format!("required element '{field}' is missing"),
        )
        .at(format!("{path}.{field}"));
    }
    if let Some(code) = message.strip_prefix("Unknown value: ") {
        return Issue::error(
            IssueType::CodeInvalid,
            format!(
                "'{}' is not a code of this element's value set",
                truncate(code)
            ),
        )
        .at(path);
    }
    Issue::error(IssueType::Structure, scrub(message)).at(path)
}

/// Serde messages quote the offending string (`invalid type: string "..",
/// expected ..`); the string may be patient-identifiable, so it is dropped.
fn scrub(message: &str) -> String {
    for kind in ["invalid type: string \"", "invalid value: string \""] {
        if let Some(rest) = message.strip_prefix(kind) {
            let expected = rest
                .rfind("\", expected ")
                .map(|i| &rest[i + 3..])
                .unwrap_or("");
            let head = kind.trim_end_matches(" \"");
            return if expected.is_empty() {
                head.to_owned()
            } else {
                format!("{head}, {expected}")
            };
        }
    }
    truncate(message).to_owned()
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_ECHO) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The request body as a JSON object, with every check before the models:
/// UTF-8, well-formed JSON, an object, of resource type `expected`. Each
/// failure is a 400.
pub(crate) fn read_resource<'a>(
    body: &'a [u8],
    expected: &str,
) -> Result<(&'a str, Map<String, Value>), FhirError> {
    read_object(body, expected).map_err(|issue| FhirError::bad_request(vec![*issue]))
}

fn read_object<'a>(
    body: &'a [u8],
    expected: &str,
) -> Result<(&'a str, Map<String, Value>), Box<Issue>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Box::new(Issue::error(
            IssueType::Structure,
            format!(
                "the body is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        ))
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Box::new(Issue::error(
            IssueType::Structure,
            format!(
                "the body is not well-formed JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        ))
    })?;
    let Value::Object(object) = value else {
        return Err(Box::new(Issue::error(
            IssueType::Structure,
            format!(
                "the body must be a JSON object (a FHIR {expected}), not {}",
                json_kind(&value)
            ),
        )));
    };
    match object.get("resourceType") {
        Some(Value::String(t)) if t == expected => Ok((text, object)),
        Some(Value::String(t)) => Err(Box::new(
            Issue::error(
                IssueType::Invalid,
                format!(
                    "expected a {expected} resource, got resourceType '{}'",
                    truncate(t)
                ),
            )
            .at("resourceType"),
        )),
        Some(_) => Err(Box::new(
            Issue::error(
                IssueType::Structure,
                "resourceType must be a string".to_owned(),
            )
            .at("resourceType"),
        )),
        None => Err(Box::new(
            Issue::error(
                IssueType::Required,
                format!("resourceType is missing (expected {expected})"),
            )
            .at("resourceType"),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_drops_quoted_values() {
        assert_eq!(
            scrub("invalid type: string \"Jane Smith\", expected a boolean"),
            "invalid type: string, expected a boolean"
        );
        assert_eq!(
            scrub("invalid type: integer `3`, expected a string"),
            "invalid type: integer `3`, expected a string"
        );
    }

    #[test]
    fn missing_field_becomes_required() {
        let i = from_serde_message("missing field `subject`", "ServiceRequest".into());
        assert_eq!(i.code, IssueType::Required);
        assert_eq!(i.expression.as_deref(), Some("ServiceRequest.subject"));
    }
}
