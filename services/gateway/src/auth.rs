//! OAuth2 bearer tokens (JWT) and SMART-on-FHIR system scopes on `/fhir`.
//!
//! Every request under `/fhir` except `GET /fhir/metadata` must carry
//! `Authorization: Bearer <JWT>`. The signature is checked against the
//! configured keys (a JWKS file: RS256, RS384, RS512, PS256, ES256, ES384,
//! EdDSA; and/or a shared HS256 secret), then `exp`, `nbf`, and `iss` / `aud`
//! when configured, with 60 s of clock skew.
//!
//! Claims the gateway reads:
//!
//! * `client_id` (else `sub`): who is calling; recorded on every audit event.
//! * `scope`: space-separated SMART system scopes, v1 (`system/Task.read`,
//!   `system/ServiceRequest.write`, `system/*.*`) or v2
//!   (`system/Task.rs`, `system/ServiceRequest.cu`).
//! * `ods`: ODS code of the calling organisation. A referrer sees only the
//!   referrals its organisation sent; another organisation's referral answers
//!   404, exactly as an unknown one.
//! * `role`: `"provider"` (a string or an array holding it) marks the MSK
//!   service's own systems, which may read every referral. Organisations
//!   listed in `provider_ods` are providers too.
//!
//! In `dev` mode (the embedded default) the gateway makes a random HS256 key
//! at start-up and prints a ready-made token for it; there is no mode without
//! authentication.

use std::path::{Path, PathBuf};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, ResponseError as _, web};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use mskflow_events::audit::AuditIdentifier;
use mskflow_fhir::IssueType;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::views::ReferralView;

/// The ODS code in the development token (a sample GP practice).
pub const DEV_ODS: &str = "A81001";
/// Scopes of the development token.
pub const DEV_SCOPES: &str = "system/*.* system/AuditEvent.read";
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 60;

/// How tokens are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tokens signed by the configured keys (JWKS file and/or HS256 secret).
    Jwt,
    /// A random HS256 key made at start-up, and a development token printed
    /// on stderr. Never for production.
    #[default]
    Dev,
}

/// Authentication settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub mode: Mode,
    /// A JSON Web Key Set file of the token issuer's public keys.
    pub jwks_file: Option<PathBuf>,
    /// A file holding the shared HS256 secret (at least 32 bytes; one
    /// trailing newline is ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// ODS codes of provider organisations (may read every referral).
    pub provider_ods: Vec<String>,
    /// The authorisation server's token endpoint, advertised in the
    /// CapabilityStatement (SMART `oauth-uris`).
    pub token_url: Option<String>,
}

/// Errors loading the key set. They stop the gateway from starting; none
/// reaches an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable JSON Web Key Set: {reason}")]
    Jwks { path: PathBuf, reason: String },
    #[error("the HS256 secret in {path} is shorter than 32 bytes")]
    ShortSecret { path: PathBuf },
    #[error("auth mode jwt needs gateway.auth.jwks_file or gateway.auth.hs256_secret_file")]
    NoKeys,
    #[error("cannot sign the development token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// What a request does to a resource type (SMART v2 letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::Create => 'c',
            Access::Read => 'r',
            Access::Update => 'u',
            Access::Delete => 'd',
            Access::Search => 's',
        }
    }
}

/// One `system/{type}.{permissions}` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// A resource type or `*`.
    pub resource: String,
    /// SMART v2 letters (`cruds`) granted; v1 `read` is `rs`, `write` is
    /// `cud`, `*` is all.
    pub permissions: String,
}

impl Scope {
    /// Parse one scope; `None` for anything not a system scope.
    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix("system/")?;
        let (resource, perms) = rest.split_once('.')?;
        // v2 scopes may carry a query (`?category=...`); it narrows nothing here.
        let perms = perms.split('?').next().unwrap_or_default();
        if resource.is_empty() {
            return None;
        }
        let permissions = match perms {
            "read" => "rs".to_owned(),
            "write" => "cud".to_owned(),
            "*" => "cruds".to_owned(),
            v2 if !v2.is_empty() && v2.chars().all(|c| "cruds".contains(c)) => v2.to_owned(),
            _ => return None,
        };
        Some(Self {
            resource: resource.to_owned(),
            permissions,
        })
    }

    pub fn allows(&self, resource: &str, access: Access) -> bool {
        (self.resource == "*" || self.resource == resource)
            && self.permissions.contains(access.letter())
    }
}

/// The caller, as its token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    /// ODS code of the calling organisation (claim `ods`), upper-cased.
    pub ods: Option<String>,
    pub scopes: Vec<Scope>,
    /// May read every referral (claim `role: "provider"` or a configured
    /// provider ODS code).
    pub provider: bool,
}

impl Principal {
    /// Whether any scope grants `access` on `resource`.
    pub fn allows(&self, resource: &str, access: Access) -> bool {
        self.scopes.iter().any(|s| s.allows(resource, access))
    }

    /// Whether this caller may see the referral: providers see all,
    /// referrers the referrals their organisation sent.
    pub fn may_see(&self, view: &ReferralView) -> bool {
        if self.provider {
            return true;
        }
        let sender = view
            .details
            .sender
            .ods_code
            .as_ref()
            .or_else(|| {
                view.details
                    .requester
                    .as_ref()
                    .and_then(|r| r.ods_code.as_ref())
            })
            .map(|o| o.as_str());
        matches!((sender, self.ods.as_deref()), (Some(s), Some(o)) if s.eq_ignore_ascii_case(o))
    }

    /// A referral may only be sent in the name of the caller's organisation.
    ///
    /// Crosses the HTTP boundary as 403 `forbidden` (`REC_FORBIDDEN`).
    pub fn check_sender(&self, sender_ods: Option<&str>) -> Result<(), ApiError> {
        match (sender_ods, self.ods.as_deref()) {
            (Some(s), Some(o)) if s.eq_ignore_ascii_case(o) => Ok(()),
            (Some(s), Some(o)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                IssueType::Forbidden,
                format!(
                    "the message is sent by organisation {s} but the access token is for organisation {o}"
                ),
            )
            .at("MessageHeader.sender")),
            (_, None) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                IssueType::Forbidden,
                "the access token names no organisation (claim 'ods'); it cannot send referrals",
            )),
            (None, Some(_)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                IssueType::Forbidden,
                "the referral names no sending organisation to match the access token",
            )
            .at("MessageHeader.sender")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    ods: Option<String>,
    #[serde(default)]
    role: Option<serde_json::Value>,
}

/// Claims of a token this crate signs (development token, tests).
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub sub: String,
    pub client_id: String,
    pub scope: String,
    pub ods: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub iat: u64,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl TokenClaims {
    /// Claims valid from now for `lifetime_seconds`.
    pub fn new(client_id: &str, ods: &str, scope: &str, lifetime_seconds: u64) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        Self {
            sub: client_id.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            ods: ods.to_owned(),
            role: None,
            iat: now,
            exp: now + lifetime_seconds,
            iss: None,
            aud: None,
        }
    }
}

/// Sign `claims` with an HS256 secret.
pub fn sign_hs256(secret: &[u8], claims: &TokenClaims) -> Result<String, Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(Error::Sign)
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Why a token was refused (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken(pub String);

/// Checks bearer tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    provider_ods: Vec<String>,
    mode: Mode,
    dev_token: Option<String>,
    token_url: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn jwks_keys(path: &Path) -> Result<Vec<Key>, Error> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
    let bad = |reason: String| Error::Jwks {
        path: path.to_path_buf(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(&read(path)?)
        .map_err(|e| bad(mskflow_eventlog::json_error_reason(&e)))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match (jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(a), _) => Algorithm::try_from(a).map_err(|e| bad(e.to_string()))?,
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(p)) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err(bad("unsupported elliptic curve".to_owned())),
            },
            (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
            (None, _) => {
                return Err(bad(
                    "a key has no 'alg' and its type does not imply one".to_owned()
                ));
            }
        };
        if matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(bad(
                "symmetric keys do not belong in a JWKS file; use hs256_secret_file".to_owned(),
            ));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("it holds no keys".to_owned()));
    }
    Ok(keys)
}

fn random_secret() -> Vec<u8> {
    // Two v4 UUIDs: 244 bits from the operating system's generator.
    let mut secret = Vec::with_capacity(32);
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret
}

impl Authenticator {
    /// Load the keys. In dev mode, make a random HS256 key and a development
    /// token (12 hours) for it.
    pub fn new(options: &Options) -> Result<Self, Error> {
        let mut keys = Vec::new();
        let mut dev_token = None;
        match options.mode {
            Mode::Dev => {
                let secret = random_secret();
                let mut claims = TokenClaims::new("mskflow-dev", DEV_ODS, DEV_SCOPES, 12 * 60 * 60);
                claims.role = Some("provider".to_owned());
                claims.iss.clone_from(&options.issuer);
                claims.aud.clone_from(&options.audience);
                dev_token = Some(sign_hs256(&secret, &claims)?);
                keys.push(Key {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(&secret),
                });
            }
            Mode::Jwt => {
                if let Some(path) = &options.jwks_file {
                    keys.extend(jwks_keys(path)?);
                }
                if let Some(path) = &options.hs256_secret_file {
                    let mut secret = read(path)?;
                    if secret.last() == Some(&b'\n') {
                        secret.pop();
                    }
                    if secret.len() < 32 {
                        return Err(Error::ShortSecret { path: path.clone() });
                    }
                    keys.push(Key {
                        kid: None,
                        algorithm: Algorithm::HS256,
                        key: DecodingKey::from_secret(&secret),
                    });
                }
                if keys.is_empty() {
                    return Err(Error::NoKeys);
                }
            }
        }
        Ok(Self {
            keys,
            issuer: options.issuer.clone(),
            audience: options.audience.clone(),
            provider_ods: options
                .provider_ods
                .iter()
                .map(|o| o.trim().to_ascii_uppercase())
                .collect(),
            mode: options.mode,
            dev_token,
            token_url: options.token_url.clone(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The token endpoint to advertise, if configured.
    pub fn token_url(&self) -> Option<&str> {
        self.token_url.as_deref()
    }

    /// The development token (dev mode only).
    pub fn dev_token(&self) -> Option<&str> {
        self.dev_token.as_deref()
    }

    /// Check a bearer token and describe its holder.
    pub fn verify(&self, token: &str) -> Result<Principal, InvalidToken> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| InvalidToken("the token is not a JWT".to_owned()))?;
        let mut last = InvalidToken(format!(
            "no key accepts tokens signed with {:?}",
            header.alg
        ));
        for key in self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        }) {
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = LEEWAY_SECONDS;
            validation.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            match &self.audience {
                Some(aud) => {
                    validation.set_audience(&[aud]);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            validation.set_required_spec_claims(&required);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(self.principal(data.claims)),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = InvalidToken(
                        match e.kind() {
                            K::ExpiredSignature => "the token has expired",
                            K::ImmatureSignature => "the token is not valid yet (nbf)",
                            K::InvalidIssuer => "the token's issuer is not accepted",
                            K::InvalidAudience => "the token's audience is not this server",
                            K::InvalidSignature => "the token's signature does not verify",
                            K::MissingRequiredClaim(_) => "the token lacks a required claim",
                            _ => "the token is not valid",
                        }
                        .to_owned(),
                    );
                    if !matches!(e.kind(), K::InvalidSignature) {
                        // The signature verified: no other key will do better.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn principal(&self, claims: Claims) -> Principal {
        let ods = claims
            .ods
            .map(|o| o.trim().to_ascii_uppercase())
            .filter(|o| !o.is_empty());
        let role_provider = match &claims.role {
            Some(serde_json::Value::String(r)) => r == "provider",
            Some(serde_json::Value::Array(a)) => a.iter().any(|r| r == "provider"),
            _ => false,
        };
        let provider = role_provider
            || ods
                .as_ref()
                .is_some_and(|o| self.provider_ods.iter().any(|p| p == o));
        Principal {
            client_id: claims
                .client_id
                .or(claims.sub)
                .unwrap_or_else(|| "unknown".to_owned()),
            ods,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(Scope::parse)
                .collect(),
            provider,
        }
    }
}

/// What a request under `/fhir` needs: the resource type and access, or
/// `None` for open endpoints (`/fhir/metadata`).
pub fn requirement(method: &actix_web::http::Method, path: &str) -> Option<(String, Access)> {
    use actix_web::http::Method;
    let rest = path.strip_prefix("/fhir")?.trim_start_matches('/');
    let mut segments = rest.split('/').filter(|s| !s.is_empty());
    let resource = segments.next().unwrap_or_default();
    if resource == "metadata" {
        return None;
    }
    if resource == "$process-message" {
        return Some(("ServiceRequest".to_owned(), Access::Create));
    }
    let has_id = segments.next().is_some();
    let access = match *method {
        Method::GET | Method::HEAD if has_id => Access::Read,
        Method::GET | Method::HEAD => Access::Search,
        Method::POST => Access::Create,
        Method::PUT | Method::PATCH => Access::Update,
        Method::DELETE => Access::Delete,
        _ => Access::Read,
    };
    Some((resource.to_owned(), access))
}

fn allowed(principal: &Principal, resource: &str, access: Access) -> bool {
    if resource == "ServiceRequest" && access == Access::Create {
        // `$process-message` and ServiceRequest create: a referral message
        // may be granted as ServiceRequest or as Bundle writes.
        return principal.allows("ServiceRequest", access) || principal.allows("Bundle", access);
    }
    principal.allows(resource, access)
}

/// The 401 answer: `WWW-Authenticate` and an OperationOutcome (`login`,
/// `REC_UNAUTHORIZED`).
pub fn unauthorized(reason: &str) -> actix_web::HttpResponse {
    let error = ApiError::new(StatusCode::UNAUTHORIZED, IssueType::Login, reason);
    let mut res = error.error_response();
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        reason.replace(['"', '\\'], "")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

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

fn header_json(headers: &HeaderMap, name: &str) -> Result<Option<serde_json::Value>, ApiError> {
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

fn identifier_of(value: &serde_json::Value) -> Option<AuditIdentifier> {
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

/// The middleware on `/fhir`: authenticate, authorise the route's scope,
/// validate the NHSD headers, then record the access on the audit stream.
pub async fn authorise(
    req: actix_web::dev::ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some((resource, access)) = requirement(req.method(), req.path()) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        let e = ApiError::internal("authentication is not configured");
        return Ok(req.into_response(e.error_response()));
    };
    let recorder = req.app_data::<web::Data<crate::audit::Recorder>>().cloned();
    let mut record = crate::audit::Pending::of(&req);
    // Decoded leniently for the audit record even where not validated.
    let nhsd = NhsdHeaders::parse(req.headers());
    if let Ok(h) = &nhsd {
        record.nhsd(h);
    }
    let res = match authenticate(&auth, &req) {
        Err(InvalidToken(reason)) => req.into_response(unauthorized(&reason)),
        Ok(principal) => {
            record.principal(&principal);
            if !allowed(&principal, &resource, access) {
                req.into_response(forbidden(&resource, access))
            } else if let (true, Err(e)) = (resource_is_message(req.path()), &nhsd) {
                req.into_response(e.error_response())
            } else {
                req.extensions_mut().insert(principal);
                if let Ok(h) = nhsd {
                    req.extensions_mut().insert(h);
                }
                next.call(req).await?.map_into_boxed_body()
            }
        }
    };
    match recorder {
        Some(recorder) if record.is_patient_data() => Ok(recorder.finish(record, res).await),
        _ => Ok(res),
    }
}

/// The caller named by the request's bearer token.
fn authenticate(
    auth: &Authenticator,
    req: &actix_web::dev::ServiceRequest,
) -> Result<Principal, InvalidToken> {
    match bearer(req.headers()) {
        None => Err(InvalidToken("an access token is required".to_owned())),
        Some(token) => auth.verify(token),
    }
}

/// The 403 answer for a token whose scopes do not grant `access` on
/// `resource` (`forbidden`, `REC_FORBIDDEN`).
fn forbidden(resource: &str, access: Access) -> actix_web::HttpResponse {
    let verb = match access {
        Access::Create => "create",
        Access::Read => "read",
        Access::Update => "update",
        Access::Delete => "delete",
        Access::Search => "search",
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        IssueType::Forbidden,
        format!("the access token's scopes do not allow {verb} on {resource}"),
    )
    .error_response()
}

/// What the analytics views are granted as: `system/Analytics.read` (or a
/// wildcard such as `system/*.read`).
pub const ANALYTICS_RESOURCE: &str = "Analytics";

/// The middleware on `/analytics`: the aggregate views need a valid token
/// whose scopes allow reading [`ANALYTICS_RESOURCE`]. They hold no patient
/// data, so the access is not audited and no NHSD headers are required.
pub async fn authorise_analytics(
    req: actix_web::dev::ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        let e = ApiError::internal("authentication is not configured");
        return Ok(req.into_response(e.error_response()));
    };
    match authenticate(&auth, &req) {
        Err(InvalidToken(reason)) => Ok(req.into_response(unauthorized(&reason))),
        Ok(principal) if !principal.allows(ANALYTICS_RESOURCE, Access::Read) => {
            Ok(req.into_response(forbidden(ANALYTICS_RESOURCE, Access::Read)))
        }
        Ok(_) => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}

fn resource_is_message(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/$process-message")
}

/// The caller of a request that passed [`authorise`].
///
/// Missing only if a route escaped the middleware: crosses the HTTP boundary
/// as 401 `login`.
pub fn principal(req: &actix_web::HttpRequest) -> Result<Principal, ApiError> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            IssueType::Login,
            "an access token is required",
        )
    })
}

/// The decoded NHSD headers of a request that passed [`authorise`].
pub fn nhsd(req: &actix_web::HttpRequest) -> NhsdHeaders {
    req.extensions()
        .get::<NhsdHeaders>()
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_scopes() {
        let s = |raw: &str| Scope::parse(raw).unwrap();
        assert!(s("system/Task.read").allows("Task", Access::Read));
        assert!(s("system/Task.read").allows("Task", Access::Search));
        assert!(!s("system/Task.read").allows("Task", Access::Create));
        assert!(!s("system/Task.read").allows("ServiceRequest", Access::Read));
        assert!(s("system/ServiceRequest.write").allows("ServiceRequest", Access::Create));
        assert!(s("system/*.read").allows("Appointment", Access::Search));
        assert!(s("system/*.*").allows("Encounter", Access::Update));
        assert!(s("system/Task.rs").allows("Task", Access::Search));
        assert!(!s("system/Task.rs").allows("Task", Access::Update));
        assert!(s("system/ServiceRequest.c").allows("ServiceRequest", Access::Create));
        assert!(s("system/ServiceRequest.cu").allows("ServiceRequest", Access::Update));
        assert!(s("system/Task.rs?status=accepted").allows("Task", Access::Read));
        for bad in [
            "patient/Task.read",
            "user/*.*",
            "system/Task.x",
            "system/.read",
            "openid",
            "system/Task",
        ] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes_map_to_resource_and_access() {
        use actix_web::http::Method;
        let r = |m: Method, p: &str| requirement(&m, p);
        assert_eq!(r(Method::GET, "/fhir/metadata"), None);
        assert_eq!(
            r(Method::POST, "/fhir/$process-message"),
            Some(("ServiceRequest".to_owned(), Access::Create))
        );
        assert_eq!(
            r(Method::GET, "/fhir/Task/1/_history/2"),
            Some(("Task".to_owned(), Access::Read))
        );
        assert_eq!(
            r(Method::GET, "/fhir/Task"),
            Some(("Task".to_owned(), Access::Search))
        );
        assert_eq!(
            r(Method::POST, "/fhir/QuestionnaireResponse"),
            Some(("QuestionnaireResponse".to_owned(), Access::Create))
        );
        assert_eq!(r(Method::GET, "/health/live"), None);
    }

    #[test]
    fn tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        let secret = b"0123456789abcdef0123456789abcdef";
        std::fs::write(&secret_file, secret).unwrap();
        let auth = Authenticator::new(&Options {
            mode: Mode::Jwt,
            hs256_secret_file: Some(secret_file),
            issuer: Some("https://auth.example".to_owned()),
            audience: Some("mskflow".to_owned()),
            provider_ods: vec!["rr8".to_owned()],
            ..Default::default()
        })
        .unwrap();
        let mut claims = TokenClaims::new("gp", "a81001", "system/Task.read", 300);
        claims.iss = Some("https://auth.example".to_owned());
        claims.aud = Some("mskflow".to_owned());
        let p = auth.verify(&sign_hs256(secret, &claims).unwrap()).unwrap();
        assert_eq!(p.ods.as_deref(), Some("A81001"));
        assert!(!p.provider);
        assert!(p.allows("Task", Access::Read));

        let mut provider = claims.clone();
        provider.ods = "RR8".to_owned();
        assert!(
            auth.verify(&sign_hs256(secret, &provider).unwrap())
                .unwrap()
                .provider
        );

        let mut wrong_aud = claims.clone();
        wrong_aud.aud = Some("other".to_owned());
        assert!(
            auth.verify(&sign_hs256(secret, &wrong_aud).unwrap())
                .is_err()
        );
        let mut wrong_iss = claims.clone();
        wrong_iss.iss = None;
        assert!(
            auth.verify(&sign_hs256(secret, &wrong_iss).unwrap())
                .is_err()
        );
        // Within the 60 s skew an expired token still passes; beyond, not.
        let mut skew = claims.clone();
        skew.exp = jsonwebtoken::get_current_timestamp() - 30;
        assert!(auth.verify(&sign_hs256(secret, &skew).unwrap()).is_ok());
        skew.exp = jsonwebtoken::get_current_timestamp() - 120;
        assert_eq!(
            auth.verify(&sign_hs256(secret, &skew).unwrap()),
            Err(InvalidToken("the token has expired".to_owned()))
        );
        assert!(
            auth.verify(&sign_hs256(b"another-secret-another-secret-xx", &claims).unwrap())
                .is_err()
        );
        assert!(auth.verify("not.a.jwt").is_err());
    }

    /// Test-only keys, made for these tests and used nowhere else.
    const TEST_EC_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQge5fXsr4f17FqKzjx\ngCjnV47cZc8PiDFQrRc3tFkDv22hRANCAATM8fF7xj6eL7M8KK7fRIQXUUjYoK9X\nfYhRG9+WlENLcV3ayBrWW0RpWOFrhaH0ZRM+1va5rRSs7l7RFvLPPURw\n-----END PRIVATE KEY-----\n";
    const TEST_RSA_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCz7l/J3kvJBGv+\nGUi8Km9twu/WnREQcssBz3zPxdd77qDUylLVmIK3GWsw6NZCvdEOI9yd99ARe7aJ\nOVKxujXItRvgNi2LzUAVXpFO3l7OLd4JlURnfy1L9HILAmroSnDjEqGZChW0UA1k\n5Gz4TAGANUSqZo5Fo64DxTmuIqcH+jIgGaH4qg+C09FiZF6oiKPhf2FKTQJ7RAwY\nyJkCFbgIEDRughAeafzUBjAq/hcPfLoLkOSYBPV/U53r5CJgKFdund2Z1Fl6PZtz\nW5akvFmjoaLDYTozOacEDy+rpqHIXgB7nC6hLTx4SnHFJ1QRu7Jzl+dAi2eGxEfG\nPuIe5HV/AgMBAAECggEAAhlTQ7sUnj0vd1DbMNq73wdpndLKOqtkI9rERXY028y+\nUo0jpzs2tyUUQ4dLzI6DTEttzOfxpOqRCAvDo7Ac5YD7WMO5B0r3JuiqAEYGzBfr\n4ae8mwp4QE0TMX6vOZN4uqVifjMIasiOR3GEtebJE7JLYUN+AGD27DNWR2o/EZA8\nDl9BGvfFVe7oVCL/bnfpcSVLDDedCctFlvbJD/OeByDnTnh7/gYo0MWR2RrSPmmp\nyTyxmaWygLRESek6gzlDCBHdzH+HsQ+iK+PgAXnK/STYIqAhguvmGMxs977qNnDj\nuCbk/Zr+XCKZXNhHxokWYsPfozmVF8ztSL/Z7dB94QKBgQDzfnS7/MrAECGdEQ5X\n8BUKJqQzRu7faD+49v2jvGY8JZnSFlJWaSEkuOXd1xgrOvQt9eH57SDJGt8cSV5+\nsJgtanHtKyAFNRUzgNtCHDM1IHOeEWN1ya/AimokpOSbMzSfamn5Pw4+tzB6MDDF\n1WamQZpeHJ41JVewQd/XcG4WnwKBgQC9LCwFjb66MyioKgxVl1pZQA0tLCqmiZ7m\nudxcqhVJvaagKwzplxitmhOOi0K6XC69Ae7t5uYh4JkCKUwRs/3pnLv5BEbEQAas\nwMJVFentyLgN6f24rLVCKRp9Us9vG2fxtmk+wmX+Nqab2WTZ+b23sVFIer+3hsEd\nkbhjsteVIQKBgAnfKZppgErTHJnClENKb3/u2x9dE9go4NR95wCZZcewepEC6Kmq\nL3bOrDsXOlqeVEH8wwGf9IFSvpLmApe+Tx0gQKgt5Glxon9pDPqcLBNOUoGpENA4\nshBrTCxaJw6Hv+1qogtB3DD8ulFp3MBYi4XYCQshu+RJtEloEkwoub3fAoGAHriU\nsZYyWiTCvoSNmjzJJGNdgG+Cwabp0khuu/G3IVGWRL6ZCzpJfK/f6y88d+1Ofc1Z\nkvMDfo7t6kbwnpNfcdfNQwRpxacsLlPje1PiuIX3NfNBDAOoMAVi0uVm4IFP4RYh\ng1qom58ecYLdePSw1asLKz0b818D75xhmHdLwWECgYA/jTxmZf2IpLp1UuKfK4Vm\n118nHEpurkrwB6Z52CnYPNnAr42/FXTdsElhsV0yA88VLW5eyGGwuph6DavGJoG6\n2bboXd5s+/gGAa8hGcw6l85KzXEjBNZlcH8Gpiuexhbxz3j8aUrJSsfV2EEqkgEn\ntYQg5Z30AJd/nhAh3QQpAg==\n-----END PRIVATE KEY-----\n";

    #[test]
    fn jwks_keys_verify_rs256_and_es256() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig",
                 "x": "zPHxe8Y-ni-zPCiu30SEF1FI2KCvV32IURvflpRDS3E", "y": "XdrIGtZbRGlY4WuFofRlEz7W9rmtFKzuXtEW8s89RHA"},
                {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
                 "n": "s-5fyd5LyQRr_hlIvCpvbcLv1p0REHLLAc98z8XXe-6g1MpS1ZiCtxlrMOjWQr3RDiPcnffQEXu2iTlSsbo1yLUb4DYti81AFV6RTt5ezi3eCZVEZ38tS_RyCwJq6Epw4xKhmQoVtFANZORs-EwBgDVEqmaORaOuA8U5riKnB_oyIBmh-KoPgtPRYmReqIij4X9hSk0Ce0QMGMiZAhW4CBA0boIQHmn81AYwKv4XD3y6C5DkmAT1f1Od6-QiYChXbp3dmdRZej2bc1uWpLxZo6Giw2E6MzmnBA8vq6ahyF4Ae5wuoS08eEpxxSdUEbuyc5fnQItnhsRHxj7iHuR1fw", "e": "AQAB"}
            ]})
            .to_string(),
        )
        .unwrap();
        let auth = Authenticator::new(&Options {
            mode: Mode::Jwt,
            jwks_file: Some(jwks),
            ..Default::default()
        })
        .unwrap();
        let claims = TokenClaims::new("hospital", "RR8", "system/Task.read", 300);
        for (alg, kid, pem) in [
            (Algorithm::ES256, "ec-1", TEST_EC_KEY),
            (Algorithm::RS256, "rsa-1", TEST_RSA_KEY),
        ] {
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
                _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            };
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some(kid.to_owned());
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            let p = auth.verify(&token).unwrap();
            assert_eq!(p.client_id, "hospital", "{alg:?}");
            // The same token with a byte of its signature changed fails.
            let mut tampered: Vec<char> = token.chars().collect();
            let i = tampered.len() - 10;
            tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
            let tampered: String = tampered.into_iter().collect();
            assert!(auth.verify(&tampered).is_err(), "{alg:?}");
        }
        // HS256 tokens are not accepted when only a JWKS is configured.
        let hs = sign_hs256(b"0123456789abcdef0123456789abcdef", &claims).unwrap();
        assert!(auth.verify(&hs).is_err());
    }

    #[test]
    fn dev_mode_signs_a_token_it_accepts() {
        let auth = Authenticator::new(&Options::default()).unwrap();
        let p = auth.verify(auth.dev_token().unwrap()).unwrap();
        assert!(p.provider);
        assert_eq!(p.ods.as_deref(), Some(DEV_ODS));
        assert!(p.allows("AuditEvent", Access::Search));
        // Another start-up, another key.
        let other = Authenticator::new(&Options::default()).unwrap();
        assert!(other.verify(auth.dev_token().unwrap()).is_err());
    }

    #[test]
    fn jwt_mode_without_keys_does_not_start() {
        let e = Authenticator::new(&Options {
            mode: Mode::Jwt,
            ..Default::default()
        });
        assert!(matches!(e, Err(Error::NoKeys)));
    }

    #[test]
    fn nhsd_headers_decode_or_are_refused() {
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::STANDARD.encode(v.to_string().as_bytes())
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HeaderName::from_static("nhsd-target-identifier"),
            HeaderValue::from_str(&b64(
                serde_json::json!({"value": "MSK-1", "system": "urn:ietf:rfc:3986"}),
            ))
            .unwrap(),
        );
        headers.insert(
            header::HeaderName::from_static("nhsd-end-user-organisation"),
            HeaderValue::from_str(&b64(serde_json::json!({"resourceType": "Organization", "identifier": [{"system": mskflow_events::ODS_SYSTEM, "value": "A81001"}], "name": "The Health Centre"}))).unwrap(),
        );
        headers.insert(
            header::HeaderName::from_static("nhsd-requesting-software"),
            HeaderValue::from_str(&b64(serde_json::json!({"resourceType": "Device", "deviceName": [{"name": "GP System", "type": "manufacturer-name"}], "version": [{"value": "4.2"}]}))).unwrap(),
        );
        let h = NhsdHeaders::parse(&headers).unwrap();
        assert_eq!(h.target_identifier.unwrap().value, "MSK-1");
        assert_eq!(h.end_user_organisation.unwrap().value, "A81001");
        assert_eq!(h.requesting_software.as_deref(), Some("GP System 4.2"));

        headers.insert(
            header::HeaderName::from_static("nhsd-target-identifier"),
            HeaderValue::from_static("%%%not-base64"),
        );
        let e = NhsdHeaders::parse(&headers).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.issues[0].expression.as_deref(),
            Some("header:NHSD-Target-Identifier")
        );
    }
}
