use super::*;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};

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
