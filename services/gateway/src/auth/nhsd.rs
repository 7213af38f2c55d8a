//! The NHSD headers of the Booking and Referral Standard, decoded.

use actix_web::HttpMessage as _;
use actix_web::http::header::HeaderMap;
use base64::Engine as _;
use mskflow_events::audit::AuditIdentifier;
use mskflow_fhir::IssueType;

use crate::error::ApiError;

/// The NHSD headers of the Booking and Referral Standard, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NhsdHeaders {
    /// `NHSD-Target-Identifier`: base64 JSON `{"value", "system"}`.
    pub target_identifier: Option<AuditIdentifier>,
    /// `NHSD-End-User-Organisation`: base64 JSON Organization; its ODS
    /// identifier (or first identifier).
    pub end_user_organisation: Option<AuditIdentifier>,
    /// `NHSD-Requesting-Software`: base64 JSON Device; its name and version.
    pub requesting_software: Option<String>,
}

pub const NHSD_TARGET_IDENTIFIER: &str = "NHSD-Target-Identifier";

pub const NHSD_END_USER_ORGANISATION: &str = "NHSD-End-User-Organisation";

pub const NHSD_REQUESTING_SOFTWARE: &str = "NHSD-Requesting-Software";

pub(crate) fn header_json(
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(raw) = headers.get(name) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::bad_request(
            IssueType::Invalid,
            format!("header {name} must be a base64-encoded JSON object: {why}"),
        )
        .at(format!("header:{name}"))
    };
    let text = raw.to_str().map_err(|_| bad("it is not ASCII"))?.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| bad("it is not base64"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| bad("it does not decode to JSON"))?;
    if !value.is_object() {
        return Err(bad("it does not decode to a JSON object"));
    }
    Ok(Some(value))
}

pub(crate) fn identifier_of(value: &serde_json::Value) -> Option<AuditIdentifier> {
    let v = value["value"].as_str()?.trim();
    (!v.is_empty()).then(|| AuditIdentifier {
        system: value["system"].as_str().map(str::to_owned),
        value: v.to_owned(),
    })
}

impl NhsdHeaders {
    /// Decode and validate the headers that are present. A malformed header
    /// crosses the HTTP boundary as 400 `invalid` (`REC_BAD_REQUEST`) with
    /// the header named in `expression`.
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut out = Self::default();
        if let Some(v) = header_json(headers, NHSD_TARGET_IDENTIFIER)? {
            out.target_identifier = Some(identifier_of(&v).ok_or_else(|| {
                ApiError::bad_request(
                    IssueType::Required,
                    format!("header {NHSD_TARGET_IDENTIFIER} must hold {{\"value\", \"system\"}} with a value"),
                )
                .at(format!("header:{NHSD_TARGET_IDENTIFIER}"))
            })?);
        }
        if let Some(v) = header_json(headers, NHSD_END_USER_ORGANISATION)? {
            let identifiers = v["identifier"].as_array().cloned().unwrap_or_default();
            let chosen = identifiers
                .iter()
                .find(|i| i["system"] == mskflow_events::ODS_SYSTEM)
                .or_else(|| identifiers.first())
                .and_then(identifier_of);
            if v["resourceType"] != "Organization" || chosen.is_none() {
                return Err(ApiError::bad_request(
                    IssueType::Required,
                    format!("header {NHSD_END_USER_ORGANISATION} must be an Organization with an identifier (its ODS code)"),
                )
                .at(format!("header:{NHSD_END_USER_ORGANISATION}")));
            }
            out.end_user_organisation = chosen;
        }
        if let Some(v) = header_json(headers, NHSD_REQUESTING_SOFTWARE)? {
            let name = v["deviceName"][0]["name"]
                .as_str()
                .or_else(|| v["name"].as_str())
                .or_else(|| v["identifier"][0]["value"].as_str())
                .map(str::trim)
                .filter(|n| !n.is_empty());
            let Some(name) = name else {
                return Err(ApiError::bad_request(
                    IssueType::Required,
                    format!("header {NHSD_REQUESTING_SOFTWARE} must be a Device with a deviceName"),
                )
                .at(format!("header:{NHSD_REQUESTING_SOFTWARE}")));
            };
            let version = v["version"][0]["value"].as_str();
            out.requesting_software = Some(match version {
                Some(ver) => format!("{name} {ver}"),
                None => name.to_owned(),
            });
        }
        Ok(out)
    }
}

/// The decoded NHSD headers of a request that passed [`authorise`].
pub fn nhsd(req: &actix_web::HttpRequest) -> NhsdHeaders {
    req.extensions()
        .get::<NhsdHeaders>()
        .cloned()
        .unwrap_or_default()
}
