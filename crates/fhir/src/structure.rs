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
    let value: Value = strict_json(text).map_err(|e| {
        let message = e.to_string();
        // Our own messages quote no values, only element names.
        if let Some(rest) = message.strip_prefix(TOO_COSTLY_MARK) {
            return Box::new(Issue::error(IssueType::TooCostly, rest.to_owned()));
        }
        let diagnostics = match message.strip_prefix(STRICT_MARK) {
            Some(rest) => format!("the body is not valid FHIR JSON: {rest}"),
            None => format!(
                "the body is not well-formed JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        };
        Box::new(Issue::error(IssueType::Structure, diagnostics))
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

/// Reads JSON into a [`Value`] as FHIR requires it: an object never names
/// the same element twice, and no string (key or value) holds a control
/// character other than tab, CR and LF (FHIR `string`). `serde_json` alone
/// keeps the last of two equal keys, which would let the models and the
/// stored raw JSON disagree about, say, which NHS number was sent.
struct Strict;

/// Marker at the start of the errors [`Strict`] raises.
const STRICT_MARK: &str = "strict: ";
/// Marker of the error for an array longer than [`MAX_ARRAY_ITEMS`].
const TOO_COSTLY_MARK: &str = "too-costly: ";
/// Longest JSON array read: no element of a referral repeats more often,
/// and a longer one is refused while it is read, before it fills memory.
pub(crate) const MAX_ARRAY_ITEMS: usize = 10_000;

fn control_free(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.visit_string(v.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        if control_free(&v) {
            Ok(Value::String(v))
        } else {
            Err(E::custom(format!(
                "{STRICT_MARK}a string holds a control character (FHIR strings may not)"
            )))
        }
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        use serde::de::Error as _;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            if items.len() == MAX_ARRAY_ITEMS {
                return Err(A::Error::custom(format!(
                    "{TOO_COSTLY_MARK}an array has more than {MAX_ARRAY_ITEMS} items"
                )));
            }
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error as _;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if !control_free(&key) {
                return Err(A::Error::custom(format!(
                    "{STRICT_MARK}an element name holds a control character"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!(
                    "{STRICT_MARK}element '{}' appears twice in one object",
                    truncate(&key)
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parse JSON text with [`Strict`]'s rules; the whole text must be one value.
fn strict_json(text: &str) -> Result<Value, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
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
