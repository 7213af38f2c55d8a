//! The event-log settings every service binary shares, and opening the log
//! they name: the embedded SQLite file (default) or Kafka.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mskflow_eventlog::{EventLog, Instrumented};
use mskflow_eventlog_kafka::{KafkaEventLog, TopicSettings};
use mskflow_eventlog_sqlite::SqliteEventLog;

/// Where a service keeps its events (`clap` arguments and environment).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The embedded event store file (created if missing). Ignored when
    /// `--kafka-brokers` is set.
    #[arg(long, env = "MSKFLOW_DB", default_value = "mskflow.db")]
    pub db: PathBuf,
    /// Kafka `bootstrap.servers`: use Kafka as the event log instead of the
    /// embedded file.
    #[arg(long, env = "MSKFLOW_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic name prefix (`mskflow` gives `mskflow.intake.v1`).
    #[arg(long, env = "MSKFLOW_KAFKA_TOPIC_PREFIX", default_value = "mskflow")]
    pub kafka_topic_prefix: String,
    /// Partitions per service topic (used by `topics create`, checked at start).
    #[arg(long, env = "MSKFLOW_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of the topics (used by `topics create`).
    #[arg(long, env = "MSKFLOW_KAFKA_REPLICATION", default_value_t = 3)]
    pub kafka_replication: i32,
    /// Consumer-group session timeout in milliseconds.
    #[arg(
        long,
        env = "MSKFLOW_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_session_timeout_ms: u64,
    /// How long an append may wait for the brokers (and the read-back)
    /// before it fails as unavailable (gRPC `UNAVAILABLE`, HTTP 503).
    #[arg(long, env = "MSKFLOW_KAFKA_APPEND_TIMEOUT_MS", default_value_t = 5_000)]
    pub kafka_append_timeout_ms: u64,
    /// Extra librdkafka settings, `key=value`, comma separated
    /// (`security.protocol=ssl,ssl.ca.location=/etc/kafka/ca.pem`).
    #[arg(long, env = "MSKFLOW_KAFKA_OPTIONS", value_delimiter = ',')]
    pub kafka_option: Vec<String>,
}

/// Errors opening the log. They end the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --kafka-option {0:?}: expected key=value")]
    KafkaOption(String),
    #[error("opening the embedded event store {path}: {source}")]
    Embedded {
        path: PathBuf,
        #[source]
        source: mskflow_eventlog_sqlite::Error,
    },
    #[error("opening the Kafka event log at {brokers}: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: mskflow_eventlog::Error,
    },
}

impl StoreArgs {
    /// The Kafka adapter settings, when Kafka is configured.
    pub fn kafka(&self, client_id: &str) -> Result<Option<mskflow_eventlog_kafka::Options>, Error> {
        let Some(brokers) = &self.kafka_brokers else {
            return Ok(None);
        };
        let mut options = mskflow_eventlog_kafka::Options::new(brokers.clone(), client_id);
        options.topics = TopicSettings {
            prefix: self.kafka_topic_prefix.clone(),
            partitions: self.kafka_partitions,
            replication: self.kafka_replication,
        };
        options.session_timeout = Duration::from_millis(self.kafka_session_timeout_ms);
        options.append_timeout = Duration::from_millis(self.kafka_append_timeout_ms);
        for kv in self.kafka_option.iter().filter(|s| !s.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| Error::KafkaOption(kv.clone()))?;
            options
                .extra
                .push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Some(options))
    }
}

/// An open event log.
#[derive(Debug, Clone)]
pub struct Store {
    /// The log, instrumented (metrics and spans).
    pub log: Arc<dyn EventLog>,
    embedded: Option<SqliteEventLog>,
    /// Which backend, for logs and health output.
    pub backend: &'static str,
}

impl Store {
    /// Let the embedded store commit what is queued (no-op for Kafka: every
    /// acknowledged append is already on the brokers).
    pub async fn close(&self) {
        if let Some(s) = &self.embedded {
            s.close().await;
        }
    }
}

/// Open the configured log for `service` (used as the Kafka client id).
pub async fn open(args: &StoreArgs, service: &str) -> Result<Store, Error> {
    if let Some(options) = args.kafka(service)? {
        let brokers = options.brokers.clone();
        let log = KafkaEventLog::open(options)
            .await
            .map_err(|source| Error::Kafka { brokers, source })?;
        tracing::info!(
            indexed = log.indexed(),
            prefix = %log.topics().prefix,
            "event log: Kafka"
        );
        return Ok(Store {
            log: Arc::new(Instrumented::new(Arc::new(log))),
            embedded: None,
            backend: "kafka",
        });
    }
    let store = SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
        path: args.db.clone(),
        ..mskflow_eventlog_sqlite::Options::default()
    })
    .map_err(|source| Error::Embedded {
        path: args.db.clone(),
        source,
    })?;
    tracing::info!(path = %args.db.display(), "event log: embedded");
    Ok(Store {
        log: Arc::new(Instrumented::new(Arc::new(store.clone()))),
        embedded: Some(store),
        backend: "embedded",
    })
}
