//! The event-log settings every service binary shares, and opening the log
//! they name: the embedded SQLite file (default) or Kafka. Also where the
//! analysts' stream goes ([`analyst_sink`]): the Kafka topic next to the
//! log, or a JSON Lines file on the embedded default.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mskflow_analytics::{ANALYST_SCHEMA_VERSION, AnalystEvent, JsonlSink, Sink, SinkError};
use mskflow_eventlog::{EventLog, Instrumented};
use mskflow_eventlog_kafka::{KafkaEventLog, TopicPublisher, TopicSettings};
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
    /// Where durable consumers (consumer groups) read their records:
    /// `index` (from this instance's index of the topics; the group only
    /// shares out partitions and keeps offsets) or `brokers` (each member
    /// fetches its own).
    #[arg(long, env = "MSKFLOW_KAFKA_GROUP_READS", default_value = "index")]
    pub kafka_group_reads: mskflow_eventlog_kafka::GroupReads,
    /// `fetch.wait.max.ms` of the index's consumer: how long the brokers may
    /// hold a fetch while no record arrives.
    #[arg(long, env = "MSKFLOW_KAFKA_FETCH_WAIT_MS", default_value_t = 20)]
    pub kafka_fetch_wait_ms: u64,
    /// The producer's `linger.ms`.
    #[arg(long, env = "MSKFLOW_KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u64,
    /// Extra librdkafka settings, `key=value`, comma separated
    /// (`security.protocol=ssl,ssl.ca.location=/etc/kafka/ca.pem`).
    #[arg(long, env = "MSKFLOW_KAFKA_OPTIONS", value_delimiter = ',')]
    pub kafka_option: Vec<String>,
    /// Where this instance keeps its read models (one SQLite file per
    /// projection, with its checkpoint) and, on Kafka, its index of the
    /// topics (`kafka-index.db`: restarts resume at its stored offsets).
    /// Default: `<db>.projections/` beside the embedded file; on Kafka a
    /// temporary directory, and a temporary index, rebuilt at each start.
    /// One directory per instance.
    #[arg(long, env = "MSKFLOW_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The Kafka index's file name in the state directory.
pub const KAFKA_INDEX_FILE: &str = "kafka-index.db";

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
    /// The analysts' topic publisher could not be made.
    #[error("publishing the analysts' stream to {brokers}: {source}")]
    AnalystTopic {
        brokers: String,
        #[source]
        source: mskflow_eventlog::Error,
    },
    #[error("making a temporary directory for the read models: {0}")]
    StateDir(#[source] std::io::Error),
    #[error("opening the Kafka event log at {brokers}: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: mskflow_eventlog::Error,
    },
}

impl StoreArgs {
    /// Where the Kafka index of this instance is kept: `kafka-index.db` in
    /// the state directory, or (`None`) a temporary file.
    pub fn kafka_index_path(&self) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|dir| dir.join(KAFKA_INDEX_FILE))
    }

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
        options.index_path = self.kafka_index_path();
        options.session_timeout = Duration::from_millis(self.kafka_session_timeout_ms);
        options.append_timeout = Duration::from_millis(self.kafka_append_timeout_ms);
        options.group_reads = self.kafka_group_reads;
        options.fetch_wait = Duration::from_millis(self.kafka_fetch_wait_ms);
        options.linger = Duration::from_millis(self.kafka_linger_ms);
        // A service's instances follow the topics their service reads.
        options.follow = client_id
            .strip_prefix("mskflow-")
            .filter(|s| mskflow_eventlog_kafka::reads_of(s).is_some())
            .map(str::to_owned);
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
    /// Where this instance's read models live.
    pub projections: mskflow_projection::Options,
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
    let projections = match (&args.state_dir, args.kafka_brokers.is_some()) {
        (Some(dir), _) => mskflow_projection::Options::in_dir(dir),
        (None, false) => mskflow_projection::Options::in_dir(args.db.with_extension("projections")),
        (None, true) => mskflow_projection::Options::temporary().map_err(Error::StateDir)?,
    };
    tracing::info!(dir = %projections.dir.display(), "read models");
    if let Some(options) = args.kafka(service)? {
        let brokers = options.brokers.clone();
        let log = KafkaEventLog::open(options)
            .await
            .map_err(|source| Error::Kafka { brokers, source })?;
        tracing::info!(
            indexed = log.indexed(),
            fetched = log.records_fetched(),
            index = %log.index_path().display(),
            prefix = %log.topics().prefix,
            follows = log.followed_topics().join(","),
            "event log: Kafka"
        );
        return Ok(Store {
            log: Arc::new(Instrumented::new(Arc::new(log))),
            embedded: None,
            backend: "kafka",
            projections,
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
        projections,
    })
}

/// The analysts' stream on Kafka: one record per event on
/// `{prefix}.analytics.v1`, keyed by the referral (or, for capacity events
/// of no referral, the event id), with headers `event_type`,
/// `schema_version` (of [`AnalystEvent`]) and `content-type`.
#[derive(Debug)]
pub struct KafkaAnalystSink {
    publisher: TopicPublisher,
}

impl KafkaAnalystSink {
    pub fn new(options: &mskflow_eventlog_kafka::Options) -> Result<Self, Error> {
        let publisher =
            TopicPublisher::new(options, options.topics.analytics_topic()).map_err(|source| {
                Error::AnalystTopic {
                    brokers: options.brokers.clone(),
                    source,
                }
            })?;
        Ok(Self { publisher })
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        self.publisher.topic()
    }
}

/// The Kafka record of an analyst event: key, headers, body.
pub fn analyst_record(
    event: &AnalystEvent,
) -> Result<mskflow_eventlog_kafka::publish::Record, serde_json::Error> {
    let key = event
        .referral_key
        .unwrap_or(event.event_id)
        .hyphenated()
        .to_string();
    let headers = vec![
        ("event_type".to_owned(), event.event_type.clone()),
        (
            "schema_version".to_owned(),
            ANALYST_SCHEMA_VERSION.to_string(),
        ),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    Ok((key, headers, serde_json::to_vec(event)?))
}

#[async_trait::async_trait]
impl Sink for KafkaAnalystSink {
    async fn publish(&self, events: &[AnalystEvent]) -> Result<(), SinkError> {
        let records = events
            .iter()
            .map(analyst_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SinkError::Encode(mskflow_eventlog::json_error_reason(&e)))?;
        self.publisher
            .publish(records)
            .await
            .map_err(|e| SinkError::Unavailable {
                topic: self.publisher.topic().to_owned(),
                reason: e.to_string(),
            })
    }
}

/// Where the analysts' stream goes: the Kafka topic `{prefix}.analytics.v1`
/// when `--kafka-brokers` is set, else the JSON Lines file `embedded_path`.
pub fn analyst_sink(
    args: &StoreArgs,
    client_id: &str,
    embedded_path: &std::path::Path,
) -> Result<Arc<dyn Sink>, Error> {
    if let Some(options) = args.kafka(client_id)? {
        let sink = KafkaAnalystSink::new(&options)?;
        tracing::info!(topic = sink.topic(), "analysts' stream: Kafka");
        return Ok(Arc::new(sink));
    }
    tracing::info!(path = %embedded_path.display(), "analysts' stream: JSON Lines file");
    Ok(Arc::new(JsonlSink::new(embedded_path)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test set-up")]
mod tests {
    use super::*;

    fn args(brokers: Option<&str>) -> StoreArgs {
        StoreArgs {
            db: PathBuf::from("mskflow.db"),
            kafka_brokers: brokers.map(str::to_owned),
            kafka_topic_prefix: "test".to_owned(),
            kafka_partitions: 3,
            kafka_replication: 1,
            kafka_session_timeout_ms: 6000,
            kafka_append_timeout_ms: 500,
            kafka_group_reads: mskflow_eventlog_kafka::GroupReads::Index,
            kafka_fetch_wait_ms: 20,
            kafka_linger_ms: 1,
            kafka_option: Vec::new(),
            state_dir: None,
        }
    }

    fn event(referral: Option<uuid::Uuid>) -> AnalystEvent {
        AnalystEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: "SlotPublished".to_owned(),
            occurred_at: chrono::Utc::now(),
            recorded_at: chrono::Utc::now(),
            schema_version: 2,
            referral_key: referral,
            patient_pseudonym: None,
            age_band: None,
            sex: None,
            ethnicity_code: None,
            imd_decile: None,
            practice_ods: None,
            route: None,
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn records_are_keyed_by_referral_or_else_event_id() {
        let referral = uuid::Uuid::new_v4();
        let e = event(Some(referral));
        let (key, headers, body) = analyst_record(&e).unwrap();
        assert_eq!(key, referral.to_string());
        assert!(headers.contains(&("event_type".to_owned(), "SlotPublished".to_owned())));
        assert!(headers.contains(&(
            "schema_version".to_owned(),
            ANALYST_SCHEMA_VERSION.to_string()
        )));
        assert!(headers.contains(&("content-type".to_owned(), "application/json".to_owned())));
        let back: AnalystEvent = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, e);
        let capacity = event(None);
        assert_eq!(
            analyst_record(&capacity).unwrap().0,
            capacity.event_id.to_string()
        );
    }

    #[test]
    fn the_kafka_index_lives_in_the_state_dir_or_is_temporary() {
        let mut a = args(Some("127.0.0.1:1"));
        assert_eq!(a.kafka("test").unwrap().unwrap().index_path, None);
        a.state_dir = Some(PathBuf::from("/var/lib/mskflow/intake-0"));
        assert_eq!(
            a.kafka("test").unwrap().unwrap().index_path,
            Some(PathBuf::from("/var/lib/mskflow/intake-0/kafka-index.db"))
        );
    }

    #[test]
    fn the_kafka_tuning_reaches_the_adapter_and_parses_from_the_command_line() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            store: StoreArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--kafka-group-reads",
            "brokers",
            "--kafka-fetch-wait-ms",
            "5",
            "--kafka-linger-ms",
            "3",
        ])
        .unwrap();
        let o = cli.store.kafka("test").unwrap().unwrap();
        assert_eq!(o.group_reads, mskflow_eventlog_kafka::GroupReads::Brokers);
        assert_eq!(o.fetch_wait, Duration::from_millis(5));
        assert_eq!(o.linger, Duration::from_millis(3));
        let o = args(Some("127.0.0.1:1")).kafka("test").unwrap().unwrap();
        assert_eq!(o.group_reads, mskflow_eventlog_kafka::GroupReads::Index);
        assert_eq!(o.follow, None, "a tool follows every topic");
        let o = args(Some("127.0.0.1:1"))
            .kafka("mskflow-scheduling")
            .unwrap()
            .unwrap();
        assert_eq!(o.follow.as_deref(), Some("scheduling"));
        let o = args(Some("127.0.0.1:1"))
            .kafka("mskflow-gateway")
            .unwrap()
            .unwrap();
        assert_eq!(o.follow, None, "the gateway follows every topic");
        assert!(
            Cli::try_parse_from(["x", "--kafka-group-reads", "sometimes"]).is_err(),
            "an unknown mode is refused"
        );
    }

    #[tokio::test]
    async fn the_sink_follows_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analytics/analyst-events.jsonl");
        let embedded = analyst_sink(&args(None), "test", &path).unwrap();
        assert!(format!("{embedded:?}").contains("JsonlSink"));
        embedded.publish(&[event(None)]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        let kafka = analyst_sink(&args(Some("127.0.0.1:1")), "test", &path).unwrap();
        assert!(format!("{kafka:?}").contains("test.analytics.v1"));
    }
}
