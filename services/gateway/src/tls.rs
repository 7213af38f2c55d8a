//! TLS on both sides of the gateway, with the system OpenSSL.
//!
//! Inbound: a PEM certificate chain and private key make the listener serve
//! HTTPS only (TLS 1.2 or later); a client CA bundle makes it require and
//! verify client certificates (mutual TLS). Outbound: the HTTP client used
//! for onward delivery, referrer notifications and subscriptions trusts the
//! system store plus an optional extra CA bundle, and may present a client
//! certificate.
//!
//! Every problem is found at start-up and names the file concerned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslAcceptorBuilder, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;

/// Inbound TLS: off unless a certificate and key are given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// PEM certificate chain served to clients (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of CAs whose client certificates are accepted; when set,
    /// every client must present one (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl Options {
    /// Whether any TLS setting is given.
    pub fn is_on(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.client_ca_file.is_some()
    }
}

/// TLS set-up failures. They stop start-up (the process reports them); none
/// reaches an HTTP client, so none has an HTTP status or gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate without its key, a key without its certificate, or a
    /// client CA without a server certificate.
    #[error("TLS: {given} is set but {missing} is not")]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    /// A file cannot be read.
    #[error("TLS: cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be (no PEM certificate, bad key).
    #[error("TLS: the {what} {} is not usable: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("TLS: the private key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// OpenSSL refused the settings.
    #[error("TLS: {0}")]
    Setup(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl ToString) -> Error {
    Error::Invalid {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<X509>, Error> {
    let pem = read(what, path)?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| invalid(what, path, e))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// A certificate chain and its private key, checked to belong together.
struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl Identity {
    fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        names: (&'static str, &'static str),
    ) -> Result<Option<Self>, Error> {
        let (cert, key) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => {
                return Err(Error::Incomplete {
                    given: names.0,
                    missing: names.1,
                });
            }
            (None, Some(_)) => {
                return Err(Error::Incomplete {
                    given: names.1,
                    missing: names.0,
                });
            }
        };
        let chain = certificates("certificate", cert)?;
        let key_pem = read("private key", key)?;
        let private =
            PKey::private_key_from_pem(&key_pem).map_err(|e| invalid("private key", key, e))?;
        let matches = chain
            .first()
            .and_then(|leaf| leaf.public_key().ok())
            .is_some_and(|public| public.public_eq(&private));
        if !matches {
            return Err(Error::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        Ok(Some(Self {
            chain,
            key: private,
        }))
    }

    fn leaf(&self) -> Option<&X509> {
        self.chain.first()
    }
}

/// `CN=…, O=…` of a certificate's subject.
fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .map(|e| {
            let name = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The HTTPS acceptor for the gateway's listener, or `None` when TLS is off.
/// Logs `gateway TLS on` with the certificate's subject and expiry.
pub fn acceptor(options: &Options) -> Result<Option<SslAcceptorBuilder>, Error> {
    let Some(identity) = Identity::load(
        options.cert_file.as_deref(),
        options.key_file.as_deref(),
        ("tls.cert_file", "tls.key_file"),
    )?
    else {
        if options.client_ca_file.is_some() {
            return Err(Error::Incomplete {
                given: "tls.client_ca_file",
                missing: "tls.cert_file",
            });
        }
        return Ok(None);
    };
    let setup = |e: openssl::error::ErrorStack| Error::Setup(e.to_string());
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(setup)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(setup)?;
    let mut chain = identity.chain.iter();
    if let Some(leaf) = chain.next() {
        builder.set_certificate(leaf).map_err(setup)?;
    }
    for extra in chain {
        builder.add_extra_chain_cert(extra.clone()).map_err(setup)?;
    }
    builder.set_private_key(&identity.key).map_err(setup)?;
    builder
        .check_private_key()
        .map_err(|_| Error::KeyMismatch {
            cert: options.cert_file.clone().unwrap_or_default(),
            key: options.key_file.clone().unwrap_or_default(),
        })?;
    let mutual = if let Some(ca_file) = &options.client_ca_file {
        for ca in certificates("client CA bundle", ca_file)? {
            builder.add_client_ca(&ca).map_err(setup)?;
            builder.cert_store_mut().add_cert(ca).map_err(setup)?;
        }
        builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        true
    } else {
        false
    };
    if let Some(leaf) = identity.leaf() {
        tracing::info!(
            subject = %subject(leaf),
            not_after = %leaf.not_after(),
            mutual_tls = mutual,
            "gateway TLS on"
        );
    }
    Ok(Some(builder))
}

/// Outbound TLS: the system trust store, plus these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundOptions {
    /// Extra PEM CA bundle trusted for receivers (HSCN or internal CAs).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain presented to receivers (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

/// The outbound HTTP client: HTTPS with the system trust store plus
/// `options`, each request limited to `timeout`.
pub fn client(options: &OutboundOptions, timeout: Duration) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(ca_file) = &options.ca_file {
        for ca in certificates("outbound CA bundle", ca_file)? {
            let pem = ca
                .to_pem()
                .map_err(|e| invalid("outbound CA bundle", ca_file, e))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| invalid("outbound CA bundle", ca_file, e))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = Identity::load(
        options.client_cert_file.as_deref(),
        options.client_key_file.as_deref(),
        ("outbound.client_cert_file", "outbound.client_key_file"),
    )? {
        let (cert_file, key_file) = (
            options.client_cert_file.as_deref().unwrap_or(Path::new("")),
            options.client_key_file.as_deref().unwrap_or(Path::new("")),
        );
        let mut chain_pem = Vec::new();
        for cert in &identity.chain {
            chain_pem.extend(
                cert.to_pem()
                    .map_err(|e| invalid("client certificate", cert_file, e))?,
            );
        }
        // The native TLS backend takes PKCS#8 keys only; convert whatever
        // PEM key form was given.
        let key_pem = identity
            .key
            .private_key_to_pem_pkcs8()
            .map_err(|e| invalid("client private key", key_file, e))?;
        let id = reqwest::Identity::from_pkcs8_pem(&chain_pem, &key_pem)
            .map_err(|e| invalid("client certificate", cert_file, e))?;
        builder = builder.identity(id);
    }
    builder.build().map_err(|e| Error::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, std::io::Error> {
        let path = dir.join(name);
        std::fs::write(&path, data)?;
        Ok(path)
    }

    /// A self-signed certificate and its key, as PEM.
    fn self_signed(cn: &str) -> Result<(Vec<u8>, Vec<u8>), Box<dyn std::error::Error>> {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048)?)?;
        let mut name = openssl::x509::X509NameBuilder::new()?;
        name.append_entry_by_text("CN", cn)?;
        let name = name.build();
        let mut b = X509::builder()?;
        b.set_version(2)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(openssl::asn1::Asn1Time::days_from_now(0)?.as_ref())?;
        b.set_not_after(openssl::asn1::Asn1Time::days_from_now(1)?.as_ref())?;
        b.sign(&key, openssl::hash::MessageDigest::sha256())?;
        Ok((b.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
    }

    #[test]
    fn off_when_nothing_is_set() -> Result<(), Box<dyn std::error::Error>> {
        assert!(acceptor(&Options::default())?.is_none());
        assert!(!Options::default().is_on());
        client(&OutboundOptions::default(), Duration::from_secs(1))?;
        Ok(())
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = self_signed("localhost")?;
        let options = Options {
            cert_file: Some(write(dir.path(), "cert.pem", &cert)?),
            key_file: Some(write(dir.path(), "key.pem", &key)?),
            client_ca_file: Some(write(dir.path(), "ca.pem", &cert)?),
        };
        assert!(acceptor(&options)?.is_some());
        let outbound = OutboundOptions {
            ca_file: options.cert_file.clone(),
            client_cert_file: options.cert_file.clone(),
            client_key_file: options.key_file.clone(),
        };
        client(&outbound, Duration::from_secs(1))?;
        Ok(())
    }

    #[test]
    fn half_a_pair_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (cert, _) = self_signed("localhost")?;
        let cert = write(dir.path(), "cert.pem", &cert)?;
        let only_cert = Options {
            cert_file: Some(cert.clone()),
            ..Options::default()
        };
        let err = acceptor(&only_cert).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("TLS: tls.cert_file is set but tls.key_file is not")
        );
        let only_ca = Options {
            client_ca_file: Some(cert.clone()),
            ..Options::default()
        };
        assert!(matches!(acceptor(&only_ca), Err(Error::Incomplete { .. })));
        let only_key = OutboundOptions {
            client_key_file: Some(cert),
            ..OutboundOptions::default()
        };
        assert!(matches!(
            client(&only_key, Duration::from_secs(1)),
            Err(Error::Incomplete {
                given: "outbound.client_key_file",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn missing_unusable_and_mismatched_files_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (cert, _) = self_signed("localhost")?;
        let (_, other_key) = self_signed("elsewhere")?;
        let cert = write(dir.path(), "cert.pem", &cert)?;
        let other_key = write(dir.path(), "other-key.pem", &other_key)?;
        let garbage = write(dir.path(), "garbage.pem", b"not a certificate")?;
        let missing = dir.path().join("missing-key.pem");

        let err = acceptor(&Options {
            cert_file: Some(cert.clone()),
            key_file: Some(missing.clone()),
            client_ca_file: None,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("private key"), "{err}");

        let err = acceptor(&Options {
            cert_file: Some(cert.clone()),
            key_file: Some(other_key.clone()),
            client_ca_file: None,
        })
        .err();
        assert!(matches!(err, Some(Error::KeyMismatch { .. })), "{err:?}");

        let err = acceptor(&Options {
            cert_file: Some(garbage.clone()),
            key_file: Some(other_key),
            client_ca_file: None,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains(&garbage.display().to_string()), "{err}");

        let err = client(
            &OutboundOptions {
                ca_file: Some(garbage.clone()),
                ..OutboundOptions::default()
            },
            Duration::from_secs(1),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains(&garbage.display().to_string()), "{err}");
        Ok(())
    }
}
