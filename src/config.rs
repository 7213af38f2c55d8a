//! Configuration in layers: defaults, a TOML file, the environment
//! (`MSKFLOW__SECTION__KEY`, e.g. `MSKFLOW__GATEWAY__ADDR`), then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything the all-in-one process needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded event store lives.
    pub data_dir: PathBuf,
    /// `json` (default) or `pretty`.
    pub log_format: String,
    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`); traces
    /// are not exported when unset.
    pub otlp_endpoint: Option<String>,
    pub gateway: Gateway,
    pub intake: Intake,
    pub assessment: Assessment,
    pub scheduling: Scheduling,
    pub outcomes: Outcomes,
    pub analytics: Analytics,
}

/// `[analytics]`: the analysts' stream the gateway publishes live (a JSON
/// Lines file on the embedded store).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analytics {
    /// File holding the pseudonymisation secret. When unset (and
    /// `MSKFLOW_ANALYTICS_SECRET` is not set either), a random secret is
    /// made once in `<data_dir>/analytics/secret` and kept, so pseudonyms
    /// stay the same from run to run.
    pub secret_file: Option<PathBuf>,
    /// Postcode to IMD decile lookup (CSV `postcode,decile`); the
    /// illustrative one shipped with mskflow when unset.
    pub imd_lookup: Option<PathBuf>,
    /// The live stream file; `<data_dir>/analytics/analyst-events.jsonl`
    /// when unset.
    pub stream_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub addr: SocketAddr,
    /// Largest accepted request body in bytes.
    pub body_limit: usize,
    /// Public base URL of the FHIR API; derived from requests when unset.
    pub base_url: Option<String>,
    pub workers: usize,
    /// Outbound delivery of onward referrals.
    pub outbound: Outbound,
    /// Registered referrer endpoints (URL prefixes): a referral whose
    /// `MessageHeader.source.endpoint` starts with one is sent a status
    /// message at every change. None by default.
    pub referrer_endpoints: Vec<String>,
    /// `/health/ready` fails when the FHIR views lag the log by more events.
    pub max_view_lag: u64,
    /// Bearer-token authentication of the FHIR API.
    pub auth: Auth,
    /// HTTPS on the gateway's listener; plain HTTP when unset.
    pub tls: Tls,
    /// Patient self-referral: the area served and its GP practices.
    #[serde(default)]
    pub self_referral: SelfReferral,
}

/// `[gateway.self_referral]`: who may refer themselves (the web form at
/// `/self-referral`, the call handlers' form at `/self-referral/telephone`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfReferral {
    /// The area's name, shown to people ("registered with a GP practice in
    /// {area}").
    pub area: String,
    /// The area's GP practices: ODS code to the name people know it by.
    pub practices: std::collections::BTreeMap<String, String>,
    /// Youngest age served.
    pub min_age: u32,
    /// Requests per client (IP address) per minute.
    pub requests_per_minute: u32,
}

impl Default for SelfReferral {
    fn default() -> Self {
        let defaults = mskflow_gateway::selfref::Options::default();
        Self {
            area: defaults.area.name.clone(),
            practices: defaults
                .area
                .practices
                .iter()
                .map(|p| (p.ods.as_str().to_owned(), p.name.clone()))
                .collect(),
            min_age: defaults.area.min_age,
            requests_per_minute: defaults.requests_per_minute,
        }
    }
}

impl SelfReferral {
    /// The gateway's options; a practice code that is not an ODS code is
    /// refused.
    pub fn options(
        &self,
    ) -> Result<mskflow_gateway::selfref::Options, mskflow_selfreferral::Error> {
        let practices: Vec<(String, String)> = self
            .practices
            .iter()
            .map(|(c, n)| (c.clone(), n.clone()))
            .collect();
        Ok(mskflow_gateway::selfref::Options {
            area: mskflow_selfreferral::Area::new(&self.area, &practices, self.min_age)?,
            requests_per_minute: self.requests_per_minute,
        })
    }
}

/// `[gateway.tls]`: HTTPS (and optionally mutual TLS) on the gateway's
/// listener. Off by default; with a certificate and key the listener serves
/// HTTPS only (TLS 1.2 or later).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, every client must present a certificate
    /// issued by one of these CAs (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl Tls {
    /// The gateway's options.
    pub fn options(&self) -> mskflow_gateway::tls::Options {
        mskflow_gateway::tls::Options {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
        }
    }
}

/// `[gateway.auth]`: how the FHIR API checks bearer tokens. There is no mode
/// without authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `dev` (default: a random HS256 key made at start-up and a development
    /// token printed on stderr) or `jwt` (the keys below).
    pub mode: mskflow_gateway::auth::Mode,
    /// JSON Web Key Set of the token issuer (RS256, ES256, ...).
    pub jwks_file: Option<PathBuf>,
    /// File holding a shared HS256 secret (at least 32 bytes).
    pub hs256_secret_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// ODS codes whose tokens may read every referral (the MSK service).
    pub provider_ods: Vec<String>,
    /// Token endpoint advertised in the CapabilityStatement.
    pub token_url: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            mode: mskflow_gateway::auth::Mode::Dev,
            jwks_file: None,
            hs256_secret_file: None,
            issuer: None,
            audience: None,
            provider_ods: Vec::new(),
            token_url: None,
        }
    }
}

impl Auth {
    /// The gateway's options.
    pub fn options(&self) -> mskflow_gateway::auth::Options {
        mskflow_gateway::auth::Options {
            mode: self.mode,
            jwks_file: self.jwks_file.clone(),
            hs256_secret_file: self.hs256_secret_file.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            provider_ods: self.provider_ods.clone(),
            token_url: self.token_url.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// FHIR base URL of the receiving system per onward destination
    /// (`orthopaedics`, `rheumatology`, `pain-service`, `imaging`,
    /// `talking-therapies`, `social-prescribing`, `weight-management`).
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// Attempts before a message is given up (dead letter).
    pub max_attempts: u32,
    /// Delay before the second attempt, doubled for each further one.
    pub initial_backoff_ms: u64,
    /// Extra PEM CA bundle trusted for HTTPS receivers (HSCN or internal
    /// CAs), besides the system trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to receivers (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

impl Outbound {
    /// The gateway's outbound TLS options.
    pub fn tls(&self) -> mskflow_gateway::tls::OutboundOptions {
        mskflow_gateway::tls::OutboundOptions {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intake {
    /// gRPC listen address of intake (the gateway calls it here).
    pub grpc_addr: SocketAddr,
    /// Triage rule file; the built-in rule set when unset.
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assessment {
    /// gRPC listen address of FCP assessment.
    pub grpc_addr: SocketAddr,
    /// Appointments a patient may miss before the episode ends (DNA policy).
    pub max_missed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// gRPC listen address of rehab scheduling.
    pub grpc_addr: SocketAddr,
    /// Class sizes, course lengths and the DNA policy.
    pub policy: mskflow_scheduling::domain::Policy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcomes {
    /// gRPC listen address of outcome collection.
    pub grpc_addr: SocketAddr,
    /// Follow-up questionnaires this many months after discharge.
    pub follow_up_months: u32,
    /// A questionnaire is overdue this many days after it was due.
    pub overdue_after_days: u32,
    /// EQ-5D-5L value set file (CSV `profile,index`) for another country or a
    /// newer set; the built-in England value set (Devlin et al. 2018,
    /// `england-devlin-2018`) when unset.
    pub eq5d_value_set: Option<PathBuf>,
    /// Licensed questionnaire wording (TOML or JSON); none when unset.
    pub licence_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".mskflow"),
            log_format: "json".to_owned(),
            otlp_endpoint: None,
            gateway: Gateway {
                addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                body_limit: 1024 * 1024,
                base_url: None,
                workers: 2,
                outbound: Outbound {
                    endpoints: Default::default(),
                    max_attempts: 6,
                    initial_backoff_ms: 500,
                    ca_file: None,
                    client_cert_file: None,
                    client_key_file: None,
                },
                referrer_endpoints: Vec::new(),
                max_view_lag: 10_000,
                auth: Auth::default(),
                tls: Tls::default(),
                self_referral: SelfReferral::default(),
            },
            intake: Intake {
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
                rules: None,
            },
            assessment: Assessment {
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
                max_missed: 2,
            },
            scheduling: Scheduling {
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50053)),
                policy: mskflow_scheduling::domain::Policy::default(),
            },
            outcomes: Outcomes {
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50054)),
                follow_up_months: 6,
                overdue_after_days: 28,
                eq5d_value_set: None,
                licence_file: None,
            },
            analytics: Analytics::default(),
        }
    }
}

impl Config {
    /// Load defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("MSKFLOW__").split("__"))
            .extract()
            .map_err(Box::new)
    }

    /// Defaults on `data_dir`, every listener on a free loopback port (tests,
    /// load runs).
    pub fn ephemeral(data_dir: &Path) -> Self {
        let mut config = Self {
            data_dir: data_dir.to_path_buf(),
            ..Self::default()
        };
        config.gateway.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.intake.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.assessment.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.scheduling.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.outcomes.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    /// The embedded event store file.
    pub fn event_store_path(&self) -> PathBuf {
        self.data_dir.join("events.db")
    }

    /// Where the read models keep their files (one SQLite file each).
    pub fn projections_dir(&self) -> PathBuf {
        self.data_dir.join("projections")
    }

    /// The live analysts' stream file.
    pub fn analyst_stream_path(&self) -> PathBuf {
        self.analytics
            .stream_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("analytics").join("analyst-events.jsonl"))
    }

    /// Where the secret made for the embedded default is kept.
    pub fn generated_secret_path(&self) -> PathBuf {
        self.data_dir.join("analytics").join("secret")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own error type"
    )]
    fn file_then_environment_override_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("mskflow.toml");
        std::fs::write(
            &file,
            "data_dir = \"/var/lib/mskflow\"\n[gateway]\nbody_limit = 2048\n",
        )?;
        figment::Jail::expect_with(|jail| {
            jail.set_env("MSKFLOW__GATEWAY__ADDR", "0.0.0.0:9000");
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("/var/lib/mskflow"));
            assert_eq!(c.gateway.body_limit, 2048);
            assert_eq!(c.gateway.addr, SocketAddr::from(([0, 0, 0, 0], 9000)));
            assert_eq!(c.intake, Config::default().intake);
            assert_eq!(c.scheduling, Config::default().scheduling);
            Ok(())
        });
        Ok(())
    }

    #[test]
    fn auth_defaults_to_dev_and_cannot_be_switched_off() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            Config::default().gateway.auth.mode,
            mskflow_gateway::auth::Mode::Dev
        );
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("mskflow.toml");
        std::fs::write(
            &file,
            "[gateway.auth]\nmode = \"jwt\"\nhs256_secret_file = \"/etc/mskflow/secret\"\nprovider_ods = [\"RR8\"]\n",
        )?;
        let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
        assert_eq!(c.gateway.auth.mode, mskflow_gateway::auth::Mode::Jwt);
        assert_eq!(c.gateway.auth.provider_ods, vec!["RR8".to_owned()]);
        std::fs::write(&file, "[gateway.auth]\nmode = \"none\"\n")?;
        assert!(
            Config::load(Some(&file)).is_err(),
            "mode none must not load"
        );
        Ok(())
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own error type"
    )]
    fn tls_is_off_by_default_and_set_from_file_or_environment()
    -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(Config::default().gateway.tls, Tls::default());
        assert!(!Config::default().gateway.tls.options().is_on());
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("mskflow.toml");
        std::fs::write(
            &file,
            "[gateway.tls]\ncert_file = \"/etc/mskflow/tls/tls.crt\"\n[gateway.outbound]\nca_file = \"/etc/mskflow/hscn-ca.pem\"\n",
        )?;
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "MSKFLOW__GATEWAY__TLS__KEY_FILE",
                "/etc/mskflow/tls/tls.key",
            );
            jail.set_env(
                "MSKFLOW__GATEWAY__TLS__CLIENT_CA_FILE",
                "/etc/mskflow/ca.pem",
            );
            let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            let tls = c.gateway.tls.options();
            assert_eq!(
                tls.cert_file,
                Some(PathBuf::from("/etc/mskflow/tls/tls.crt"))
            );
            assert_eq!(
                tls.key_file,
                Some(PathBuf::from("/etc/mskflow/tls/tls.key"))
            );
            assert_eq!(
                tls.client_ca_file,
                Some(PathBuf::from("/etc/mskflow/ca.pem"))
            );
            assert_eq!(
                c.gateway.outbound.tls().ca_file,
                Some(PathBuf::from("/etc/mskflow/hscn-ca.pem"))
            );
            assert_eq!(c.gateway.outbound.max_attempts, 6);
            Ok(())
        });
        Ok(())
    }

    #[test]
    fn analytics_defaults_under_the_data_dir_and_loads_from_file()
    -> Result<(), Box<dyn std::error::Error>> {
        let c = Config::default();
        assert_eq!(c.analytics, Analytics::default());
        assert_eq!(
            c.analyst_stream_path(),
            PathBuf::from(".mskflow/analytics/analyst-events.jsonl")
        );
        assert_eq!(
            c.generated_secret_path(),
            PathBuf::from(".mskflow/analytics/secret")
        );
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("mskflow.toml");
        std::fs::write(
            &file,
            "[analytics]\nsecret_file = \"/run/secrets/analytics\"\nimd_lookup = \"/etc/mskflow/imd.csv\"\nstream_file = \"/var/lib/mskflow/stream.jsonl\"\n",
        )?;
        let c = Config::load(Some(&file)).map_err(|e| e.to_string())?;
        assert_eq!(
            c.analytics.secret_file,
            Some(PathBuf::from("/run/secrets/analytics"))
        );
        assert_eq!(
            c.analytics.imd_lookup,
            Some(PathBuf::from("/etc/mskflow/imd.csv"))
        );
        assert_eq!(
            c.analyst_stream_path(),
            PathBuf::from("/var/lib/mskflow/stream.jsonl")
        );
        std::fs::write(&file, "[analytics]\nsecret = \"inline\"\n")?;
        assert!(Config::load(Some(&file)).is_err(), "unknown key refused");
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("mskflow.toml");
        std::fs::write(&file, "[gateway]\nbody_limt = 2048\n")?;
        let err = Config::load(Some(&file))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("body_limt"), "{err}");
        Ok(())
    }
}
