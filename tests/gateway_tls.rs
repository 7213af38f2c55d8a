//! TLS on the gateway over real sockets: HTTPS on the listener, mutual TLS,
//! HTTPS (with a client certificate) to a referrer, and start-up refusing
//! incomplete settings. A throwaway CA and its certificates are made for
//! each test.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App as ActixApp, HttpResponse, HttpServer, web};
use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::Value;
use uuid::Uuid;

/// PEM files of a test CA, a server certificate for localhost/127.0.0.1 and
/// a client certificate, all in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn new_key() -> TestResult<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// A certificate for `cn`, signed by `issuer` (self-signed when `None`).
fn certificate(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    role: &str,
) -> TestResult<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("O", "mskflow tests")?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(2)?.as_ref())?;
    match role {
        "ca" => {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
        }
        "server" => {
            b.append_extension(BasicConstraints::new().build()?)?;
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        }
        _ => {
            b.append_extension(BasicConstraints::new().build()?)?;
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        }
    }
    let (issuer_name, signing_key) = match issuer {
        Some((cert, key)) => (cert.subject_name().to_owned()?, key),
        None => (name.as_ref().to_owned()?, key),
    };
    b.set_issuer_name(&issuer_name)?;
    if role == "server" {
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))?;
        b.append_extension(san)?;
    }
    b.sign(signing_key, MessageDigest::sha256())?;
    Ok(b.build())
}

fn write(dir: &Path, name: &str, data: &[u8]) -> TestResult<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, data)?;
    Ok(path)
}

fn new_pki() -> TestResult<Pki> {
    let dir = tempfile::tempdir()?;
    let ca_key = new_key()?;
    let ca = certificate("mskflow test CA", &ca_key, None, "ca")?;
    let server_key = new_key()?;
    let server = certificate("localhost", &server_key, Some((&ca, &ca_key)), "server")?;
    let client_key = new_key()?;
    let client = certificate(
        "referrer-system",
        &client_key,
        Some((&ca, &ca_key)),
        "client",
    )?;
    let d = dir.path();
    Ok(Pki {
        ca: write(d, "ca.pem", &ca.to_pem()?)?,
        server_cert: write(d, "server.pem", &server.to_pem()?)?,
        server_key: write(d, "server-key.pem", &server_key.private_key_to_pem_pkcs8()?)?,
        client_cert: write(d, "client.pem", &client.to_pem()?)?,
        client_key: write(d, "client-key.pem", &client_key.private_key_to_pem_pkcs8()?)?,
        _dir: dir,
    })
}

/// A client that trusts the test CA only and sends the test token;
/// with `identity`, it presents the client certificate.
fn tls_client(pki: &Pki, identity: bool) -> TestResult<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", test_token()))?,
    );
    let mut b = reqwest::Client::builder()
        .default_headers(headers)
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .timeout(Duration::from_secs(10));
    if identity {
        b = b.identity(reqwest::Identity::from_pkcs8_pem(
            &std::fs::read(&pki.client_cert)?,
            &std::fs::read(&pki.client_key)?,
        )?);
    }
    Ok(b.build()?)
}

fn https_base(app: &App) -> TestResult<String> {
    let running = app.running.as_ref().ok_or("not running")?;
    Ok(format!("https://{}/fhir", running.gateway_addr))
}

async fn post_referral(client: &reqwest::Client, base: &str, bundle: &Value) -> TestResult<Value> {
    let res = client
        .post(format!("{base}/$process-message"))
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", Uuid::new_v4().to_string())
        .header("X-Correlation-Id", Uuid::new_v4().to_string())
        .body(bundle.to_string())
        .send()
        .await?;
    let status = res.status().as_u16();
    let answer: Value = res.json().await?;
    assert_eq!(status, 200, "{answer}");
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_only() -> TestResult {
    let pki = new_pki()?;
    let mut app = spawn_app_with(|c| {
        c.gateway.tls.cert_file = Some(pki.server_cert.clone());
        c.gateway.tls.key_file = Some(pki.server_key.clone());
    })
    .await?;
    let base = https_base(&app)?;
    let client = tls_client(&pki, false)?;

    let res = client.get(format!("{base}/metadata")).send().await?;
    assert_eq!(res.status().as_u16(), 200);
    let capability: Value = res.json().await?;
    assert_eq!(capability["resourceType"], "CapabilityStatement");

    let answer = post_referral(&client, &base, &new_referral_message()?).await?;
    let task = entries_of(&answer, "Task");
    assert_eq!(task.len(), 1, "{answer}");
    assert!(task[0]["id"].is_string());

    // The same port does not speak plain HTTP.
    let plain = client
        .get(format!(
            "{}/metadata",
            base.replacen("https://", "http://", 1)
        ))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status())
    );

    // A client that does not trust the test CA refuses the server.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let refused = untrusting.get(format!("{base}/metadata")).send().await;
    let err = refused
        .err()
        .ok_or("an untrusted certificate was accepted")?;
    assert!(err.is_connect(), "{err:?}");

    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() -> TestResult {
    let pki = new_pki()?;
    let mut app = spawn_app_with(|c| {
        c.gateway.tls.cert_file = Some(pki.server_cert.clone());
        c.gateway.tls.key_file = Some(pki.server_key.clone());
        c.gateway.tls.client_ca_file = Some(pki.ca.clone());
    })
    .await?;
    let base = https_base(&app)?;

    let without = tls_client(&pki, false)?
        .get(format!("{base}/metadata"))
        .send()
        .await;
    assert!(
        without.is_err(),
        "a client without a certificate was served: {:?}",
        without.map(|r| r.status())
    );

    // A certificate from another CA is refused too.
    let other = new_pki()?;
    let foreign = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .identity(reqwest::Identity::from_pkcs8_pem(
            &std::fs::read(&other.client_cert)?,
            &std::fs::read(&other.client_key)?,
        )?)
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("{base}/metadata"))
        .send()
        .await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA was accepted: {:?}",
        foreign.map(|r| r.status())
    );

    let client = tls_client(&pki, true)?;
    let res = client.get(format!("{base}/metadata")).send().await?;
    assert_eq!(res.status().as_u16(), 200);
    let answer = post_referral(&client, &base, &new_referral_message()?).await?;
    assert_eq!(entries_of(&answer, "Task").len(), 1, "{answer}");

    app.stop().await?;
    Ok(())
}

/// A referrer's system on HTTPS that requires a client certificate from the
/// test CA; returns its FHIR base URL. It records every body it is sent.
fn https_referrer(
    pki: &Pki,
    received: Arc<Mutex<Vec<Value>>>,
) -> TestResult<(String, actix_web::dev::ServerHandle)> {
    let mut tls = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    tls.set_certificate_chain_file(&pki.server_cert)?;
    tls.set_private_key_file(&pki.server_key, openssl::ssl::SslFiletype::PEM)?;
    tls.set_ca_file(&pki.ca)?;
    tls.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    let data = web::Data::new(received);
    let server = HttpServer::new(move || {
        ActixApp::new().app_data(data.clone()).route(
            "/fhir/ServiceRequest",
            web::post().to(
                |body: web::Bytes, seen: web::Data<Arc<Mutex<Vec<Value>>>>| async move {
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(json);
                    HttpResponse::Ok().finish()
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .bind_openssl(("127.0.0.1", 0), tls)?;
    let addr = server.addrs().first().copied().ok_or("no address")?;
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok((format!("https://{addr}/fhir"), handle))
}

/// Post a referral from `endpoint` and wait until its `Task` exists.
async fn refer_from(app: &App, endpoint: &str) -> TestResult<String> {
    let mut bundle = new_referral_message()?;
    with_resource(&mut bundle, "MessageHeader", |h| {
        h["source"]["endpoint"] = serde_json::json!(endpoint)
    })?;
    let answer: Value = app.post_message(&bundle).await?.json().await?;
    Ok(entries_of(&answer, "Task")
        .first()
        .and_then(|t| t["id"].as_str())
        .ok_or("no Task")?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrer_is_notified_over_mutual_tls() -> TestResult {
    let pki = new_pki()?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let (url, server) = https_referrer(&pki, received.clone())?;
    let mut app = spawn_app_with(|c| {
        c.gateway.referrer_endpoints.push(url.clone());
        c.gateway.outbound.ca_file = Some(pki.ca.clone());
        c.gateway.outbound.client_cert_file = Some(pki.client_cert.clone());
        c.gateway.outbound.client_key_file = Some(pki.client_key.clone());
        c.gateway.outbound.initial_backoff_ms = 20;
    })
    .await?;
    let id = refer_from(&app, &format!("{url}/ServiceRequest")).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let seen = loop {
        let seen = received.lock().map_err(|_| "poisoned")?.clone();
        if !seen.is_empty() || tokio::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = seen.first().ok_or("the referrer heard nothing")?;
    let header = entries_of(first, "MessageHeader");
    assert_eq!(
        header.first().map(|h| h["eventCoding"]["code"].clone()),
        Some(serde_json::json!("servicerequest-response"))
    );
    let task = entries_of(first, "Task");
    assert_eq!(
        task.first().map(|t| t["id"].clone()),
        Some(serde_json::json!(id))
    );
    // The gateway records the delivery once the referrer has answered.
    let delivered = loop {
        let delivered = app
            .all_events()
            .await?
            .into_iter()
            .filter(|e| e.event_type == "OutboundDelivered")
            .count();
        if delivered >= 1 || tokio::time::Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(delivered >= 1, "no OutboundDelivered event");
    app.stop().await?;
    server.stop(true).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_client_certificate_the_gateway_is_refused_by_the_referrer() -> TestResult {
    let pki = new_pki()?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let (url, server) = https_referrer(&pki, received.clone())?;
    let mut app = spawn_app_with(|c| {
        c.gateway.referrer_endpoints.push(url.clone());
        c.gateway.outbound.ca_file = Some(pki.ca.clone());
        c.gateway.outbound.max_attempts = 1;
    })
    .await?;
    refer_from(&app, &format!("{url}/ServiceRequest")).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let failed: Vec<_> = app
            .all_events()
            .await?
            .into_iter()
            .filter(|e| e.event_type == "OutboundDeliveryFailed")
            .collect();
        if !failed.is_empty() || tokio::time::Instant::now() > deadline {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failure = failed.first().ok_or("no failed delivery recorded")?;
    assert_eq!(failure.payload["will_retry"], false);
    assert!(
        failure.payload["http_status"].is_null(),
        "{}",
        failure.payload
    );
    assert!(received.lock().map_err(|_| "poisoned")?.is_empty());
    app.stop().await?;
    server.stop(true).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_or_unreadable_tls_settings_stop_start_up() -> TestResult {
    let pki = new_pki()?;
    let missing_key = pki.server_key.with_file_name("no-such-key.pem");
    let err = match spawn_app_with(|c| {
        c.gateway.tls.cert_file = Some(pki.server_cert.clone());
        c.gateway.tls.key_file = Some(missing_key.clone());
    })
    .await
    {
        Ok(mut app) => {
            app.stop().await?;
            return Err("started with a missing key file".into());
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&missing_key.display().to_string()),
        "the error does not name the file: {err}"
    );

    let err = match spawn_app_with(|c| {
        c.gateway.tls.cert_file = Some(pki.server_cert.clone());
    })
    .await
    {
        Ok(mut app) => {
            app.stop().await?;
            return Err("started with a certificate but no key".into());
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tls.key_file"), "{err}");

    // A key that is not the certificate's.
    let err = match spawn_app_with(|c| {
        c.gateway.tls.cert_file = Some(pki.server_cert.clone());
        c.gateway.tls.key_file = Some(pki.client_key.clone());
    })
    .await
    {
        Ok(mut app) => {
            app.stop().await?;
            return Err("started with a key of another certificate".into());
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("does not match"), "{err}");

    let missing_ca = pki.ca.with_file_name("no-such-ca.pem");
    let err = match spawn_app_with(|c| {
        c.gateway.outbound.ca_file = Some(missing_ca.clone());
    })
    .await
    {
        Ok(mut app) => {
            app.stop().await?;
            return Err("started with a missing outbound CA file".into());
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&missing_ca.display().to_string()), "{err}");
    Ok(())
}
