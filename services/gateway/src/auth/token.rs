//! Bearer tokens: the configured keys, verification, SMART scopes and the
//! caller they name ([`Principal`]).

use std::path::{Path, PathBuf};

use actix_web::HttpMessage as _;
use actix_web::http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
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
pub(crate) struct Claims {
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

pub(crate) struct Key {
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

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn jwks_keys(path: &Path) -> Result<Vec<Key>, Error> {
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

pub(crate) fn random_secret() -> Vec<u8> {
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
