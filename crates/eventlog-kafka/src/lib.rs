//! The Kafka adapter of the event-log port.
//!
//! * **Topics**: one per service (`mskflow.intake.v1`, …), one dead-letter
//!   topic per durable consumer, one for operator records (`topics.rs`);
//!   besides the log, the analysts' topic (`mskflow.analytics.v1`), written
//!   through a [`TopicPublisher`] (`publish.rs`).
//!   Every record is keyed by the referral id, so one referral's streams in a
//!   topic share a partition and keep their order.
//! * **Append**: one record per `append` (atomic for every reader), sent by
//!   an idempotent producer with `acks=all`. The append returns once the
//!   record is durable on the brokers **and** this instance's index has
//!   decided it (see `index.rs`): every instance decides every record the
//!   same way, in partition order, so optimistic concurrency holds across
//!   instances and a stale writer is refused (`WrongExpectedVersion`).
//! * **Causal order**: each record carries its writer's applied frontier;
//!   readers apply it only after what its writer had seen (except the
//!   gateway topic: audit and delivery attempts cause nothing elsewhere).
//! * **Reads**: every instance folds the topics it follows
//!   ([`Options::follow`]: a service's instances read their own service's
//!   topics and those whose events they consume; the gateway and the tools
//!   read all) into a local index kept in a SQLite file of its own (`disk.rs`, [`Options::index_path`]):
//!   accepted events in local order, stream versions, event ids, every
//!   record's decision and each partition's next offset, stored in one
//!   transaction per batch. `read_stream` and `StartFrom::Beginning` /
//!   `StartFrom::After` subscriptions read the file; memory holds only
//!   bounded caches. A restart resumes each partition at its stored offset,
//!   so positions are stable and `log_id` is the file's identity (with no
//!   path, a temporary file rebuilt at each start).
//! * **Durable consumers** (`StartFrom::Checkpoint`): a Kafka consumer group
//!   per consumer name shares the partitions among instances; offsets are
//!   committed only when the handler calls `commit`, after its effects are
//!   durable. A rebalance re-delivers what was not committed; handlers are
//!   idempotent by event id and expected version, so each effect is applied
//!   once.
//!
//! See `docs/adr/0004-kafka-event-log.md` for the reasoning.

pub mod bench;
mod disk;
mod index;
pub mod publish;
mod record;
pub mod topics;

#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use mskflow_eventlog::{
    Appended, Envelope, Error, EventLog, ExpectedVersion, Metadata, NewEvent, StartFrom,
    StoredEvent, Subscription,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use uuid::Uuid;

use crate::disk::{Identity, Location, Opened, SqliteStore};
use crate::index::{Batch, Decided, Incoming, Index, Outcome, Place, Store as _, Tp};
pub use crate::publish::TopicPublisher;
use crate::record::{AppendRecord, FORMAT, WireEvent, headers, partition_key};
pub use crate::topics::{TopicSettings, TopicSpec, reads_of, service_of_consumer};

/// Adapter settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// `bootstrap.servers`, e.g. `kafka-0:9092,kafka-1:9092`.
    pub brokers: String,
    /// `client.id` prefix (the service name and instance).
    pub client_id: String,
    /// The topic set.
    pub topics: TopicSettings,
    /// Consumer group session timeout. Lower is faster failover and more
    /// spurious rebalances; 10 s is a common production value.
    pub session_timeout: Duration,
    /// How long an append may take in all: the brokers' acknowledgement
    /// and this instance's index reading the record back. When the brokers
    /// are down an append fails with `Error::Unavailable` after this long
    /// (the producer gives the record up at the same deadline, so a failed
    /// append is not written later). A record the brokers did store before
    /// the failure is decided like any other: a retry of the same append
    /// finds it (`WrongExpectedVersion` or `DuplicateEvent`).
    pub append_timeout: Duration,
    /// Extra librdkafka settings (`security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanisms`, …), applied to every client.
    pub extra: Vec<(String, String)>,
    /// Where a consumer group's members read their records: from this
    /// instance's index (the default: the brokers serve one fetcher per
    /// instance) or each from the brokers.
    pub group_reads: GroupReads,
    /// `fetch.wait.max.ms` of the index's consumer (and of group members
    /// that fetch): how long the brokers may hold a fetch open while no
    /// record arrives.
    pub fetch_wait: Duration,
    /// The producer's `linger.ms`: how long a record waits for others to
    /// share its request.
    pub linger: Duration,
    /// This instance's index file (SQLite; one per instance): kept across
    /// restarts, so the index resumes at its stored offsets. `None`: a
    /// temporary file, removed when the log is dropped (the index is
    /// rebuilt from the start of the topics at each start).
    pub index_path: Option<PathBuf>,
    /// The service this instance runs (`topics::reads_of`): the index
    /// follows the topics that service reads, the dead-letter topics of its
    /// consumers and the operations topic. `None` (or a service that reads
    /// everything): every topic of the log.
    pub follow: Option<String>,
}

impl Options {
    /// Settings for a broker at `brokers` with everything else defaulted.
    pub fn new(brokers: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: client_id.into(),
            topics: TopicSettings::default(),
            session_timeout: Duration::from_secs(10),
            append_timeout: Duration::from_secs(5),
            extra: Vec::new(),
            group_reads: GroupReads::default(),
            fetch_wait: FETCH_WAIT,
            linger: LINGER,
            index_path: None,
            follow: None,
        }
    }

    /// The log's topics this instance follows ([`Options::follow`]).
    pub fn followed_topics(&self) -> Vec<String> {
        self.topics.followed(self.follow.as_deref())
    }

    /// The topics a durable consumer's group reads: those its service
    /// reads, of those this instance follows.
    fn group_topics(&self, consumer: &str) -> Vec<String> {
        let followed = self.followed_topics();
        self.topics
            .followed(Some(service_of_consumer(consumer)))
            .into_iter()
            .filter(|t| followed.contains(t))
            .collect()
    }

    fn client_config(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id));
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

/// Where a durable consumer's records come from (see
/// [`Options::group_reads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupReads {
    /// From this instance's index: the group shares out the partitions and
    /// keeps the committed offsets; its members fetch nothing.
    #[default]
    Index,
    /// Each member fetches its partitions' records from the brokers and
    /// waits for the index to decide each.
    Brokers,
}

impl std::str::FromStr for GroupReads {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "index" => Ok(Self::Index),
            "brokers" => Ok(Self::Brokers),
            other => Err(format!("{other:?}: expected index or brokers")),
        }
    }
}

/// The producer's default `linger.ms`.
pub const LINGER: Duration = Duration::from_millis(1);

/// A duration as librdkafka milliseconds (at least 1).
fn millis(d: Duration) -> String {
    d.as_millis().clamp(1, i32::MAX as u128).to_string()
}

fn unavailable(context: impl Into<String>, e: KafkaError) -> Error {
    Error::Unavailable {
        context: context.into(),
        source: Box::new(e),
    }
}

/// How many recent decisions stay in memory for their writers (older ones
/// are read from the index file).
const RECENT_DECISIONS: usize = 8192;

/// What this instance's readers can see of the index: the state of its last
/// stored batch. Bounded: offsets per partition and the recent decisions.
#[derive(Debug, Default)]
struct View {
    /// Next offset per partition, as stored.
    offsets: HashMap<Tp, i64>,
    /// Events stored (the last position).
    events: u64,
    /// Records read but waiting for their writer's frontier.
    stalled: usize,
    recent: HashMap<Place, Decided>,
    /// `recent`'s places, oldest first.
    recent_order: VecDeque<Place>,
}

impl View {
    fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.offsets
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Take in a stored batch.
    fn stored(&mut self, batch: Batch, events: u64, stalled: usize) {
        self.offsets.extend(batch.offsets);
        self.events = events;
        self.stalled = stalled;
        for (place, decided) in batch.decided {
            if self.recent.insert(place.clone(), decided).is_none() {
                self.recent_order.push_back(place);
            }
        }
        while self.recent_order.len() > RECENT_DECISIONS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }
}

/// What every clone of the log and its subscriptions share.
#[derive(Debug)]
struct Shared {
    /// The index file (reads see whole stored batches).
    store: Arc<SqliteStore>,
    view: RwLock<View>,
    /// Bumped whenever the index stores a batch.
    changed: watch::Sender<u64>,
    /// Records the index consumer fetched since this log opened.
    fetched: AtomicU64,
    /// Bounds the reads of the file running at once (each holds one of its
    /// reading connections).
    reads: tokio::sync::Semaphore,
}

/// Run a blocking index-file call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable {
            context: "reading the Kafka index".to_owned(),
            source: Box::new(e),
        })?
}

impl Shared {
    fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        match self.view.read() {
            Ok(g) => f(&g),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut View) -> T) -> T {
        match self.view.write() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Run a read of the index file on a blocking thread, at most
    /// [`CONCURRENT_READS`] at once.
    async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteStore) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self.reads.acquire().await.map_err(|_| Error::Closed)?;
        let store = self.store.clone();
        blocking(move || f(&store)).await
    }

    /// Accepted events after the first `from`, at most `max`, from the file.
    async fn slice(&self, from: u64, max: usize) -> Result<Vec<Envelope>, Error> {
        self.query(move |store| store.slice(from, max)).await
    }

    /// Wait until the index has decided the record at this place. Recent
    /// decisions are in memory; older ones (evicted, or from before a
    /// restart) are read from the file.
    async fn outcome(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        timeout: Option<Duration>,
    ) -> Result<Decided, Error> {
        let mut rx = self.changed.subscribe();
        let place = (topic.to_owned(), partition, offset);
        let wait = async {
            loop {
                let (recent, applied) = self.read(|v| {
                    (
                        v.recent.get(&place).cloned(),
                        v.next_offset(topic, partition) > offset,
                    )
                });
                if let Some(d) = recent {
                    return Ok(d);
                }
                if applied {
                    let (t, p, o) = place.clone();
                    return self
                        .query(move |store| store.decided(&t, p, o))
                        .await?
                        .ok_or_else(|| Error::Unavailable {
                            context: format!("{topic}/{partition}@{offset}"),
                            source: "the Kafka index has no decision for a record below its \
                                     applied offset (the index started after it)"
                                .into(),
                        });
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        };
        match timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait)
                .await
                .map_err(|_| Error::Unavailable {
                    context: format!("waiting for {topic}/{partition}@{offset} to be applied"),
                    source: "the local index did not reach the record in time".into(),
                })?,
        }
    }
}

/// The Kafka event log. Cheap to clone; the index follows the topics in
/// the background until the last clone is dropped.
#[derive(Clone)]
pub struct KafkaEventLog {
    inner: Arc<Inner>,
}

struct Inner {
    options: Options,
    /// The topics the index follows ([`Options::followed_topics`]).
    followed: Vec<String>,
    producer: Producers,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// The index's consumer loop, until [`KafkaEventLog::close`].
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The idempotent producer every append of one log sends with. The time
/// it waits for an acknowledgement is the append timeout, so a record is
/// either acknowledged within an append or given up by then.
fn new_producer(options: &Options) -> Result<FutureProducer, Error> {
    options
        .client_config("producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", millis(options.linger))
        .set("message.timeout.ms", millis(options.append_timeout))
        .set("request.timeout.ms", millis(options.append_timeout))
        .create()
        .map_err(|e| unavailable("creating the producer", e))
}

/// The idempotent producer of a log or a publisher, replaced when the
/// brokers refuse its records (not a timeout: a broker that restarted may no
/// longer accept an idempotent producer's sequence, and would refuse every
/// later record of it). A new producer gets a new producer id.
pub(crate) struct Producers {
    options: Options,
    /// The producer and its generation (bumped each time it is replaced).
    current: RwLock<(u64, FutureProducer)>,
}

impl Producers {
    pub(crate) fn new(options: &Options) -> Result<Self, Error> {
        Ok(Self {
            options: options.clone(),
            current: RwLock::new((0, new_producer(options)?)),
        })
    }

    /// The producer to send with, and its generation.
    pub(crate) fn current(&self) -> (u64, FutureProducer) {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the producer of generation `failed`. Only the first of
    /// several sends that saw the same producer fail replaces it.
    pub(crate) fn replace(&self, failed: u64) {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0 != failed {
            return;
        }
        match new_producer(&self.options) {
            Ok(p) => {
                tracing::warn!(
                    generation = failed + 1,
                    "producer replaced after refused records"
                );
                *guard = (failed + 1, p);
            }
            Err(e) => {
                tracing::warn!(error = %e, "replacing the producer failed; keeping the old one")
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for KafkaEventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaEventLog")
            .field("brokers", &self.inner.options.brokers)
            .field("prefix", &self.inner.options.topics.prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaEventLog {
    /// Connect, check that the topic set exists, open the index file and
    /// start following the topics from its stored offsets. Returns once the
    /// index has caught up with the topics as they were at start, so reads
    /// and appends see everything recorded before.
    pub async fn open(options: Options) -> Result<Self, Error> {
        let names = options.followed_topics();
        check_topics(&options).await?;

        let producer = Producers::new(&options)?;

        let ends = {
            let brokers = options.brokers.clone();
            let names = names.clone();
            let probe: BaseConsumer = options
                .client_config("probe")
                .set("group.id", format!("{}-probe", options.client_id))
                .create()
                .map_err(|e| unavailable("creating the metadata client", e))?;
            tokio::task::spawn_blocking(move || topic_ends(&probe, &names))
                .await
                .map_err(|e| Error::Unavailable {
                    context: format!("reading topic metadata from {brokers}"),
                    source: Box::new(e),
                })??
        };
        let identity = Identity {
            prefix: options.topics.prefix.clone(),
            topics: options
                .topics
                .specs()
                .into_iter()
                .filter(|s| names.contains(&s.name))
                .map(|s| (s.name, s.partitions))
                .collect(),
        };
        let location = match &options.index_path {
            Some(path) => Location::File(path.clone()),
            None => Location::Temporary,
        };
        let (store, opened) = {
            let ends = ends.clone();
            blocking(move || {
                SqliteStore::open(location, &identity, |stored| {
                    stale_offsets(&stored.offsets, &ends)
                })
            })
            .await?
        };
        let store = Arc::new(store);
        let index = {
            let store = store.clone();
            let options = options.clone();
            blocking(move || open_index(store, &options)).await?
        };
        let stored = index.offsets().clone();
        match &opened {
            Opened::Resumed => tracing::info!(
                path = %store.path().display(),
                partitions = stored.len(),
                "Kafka index resumes at its stored offsets"
            ),
            Opened::Fresh { reason } if reason == "new" => tracing::info!(
                path = %store.path().display(),
                "Kafka index built from the start of the topics"
            ),
            Opened::Fresh { reason } => tracing::warn!(
                path = %store.path().display(),
                %reason,
                "Kafka index started afresh from the start of the topics"
            ),
        }
        let events = index.events();
        let partitions: Vec<Tp> = ends.keys().cloned().collect();
        let consumer = index_consumer(&options, &partitions, &stored)?;

        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store,
            view: RwLock::new(View {
                offsets: stored,
                events,
                ..View::default()
            }),
            changed,
            fetched: AtomicU64::new(0),
            reads: tokio::sync::Semaphore::new(CONCURRENT_READS),
        });
        let (stop, stop_rx) = watch::channel(false);
        let follower = tokio::spawn(follow(
            options.clone(),
            partitions,
            consumer,
            index,
            shared.clone(),
            stop_rx,
        ));

        let log = Self {
            inner: Arc::new(Inner {
                followed: names,
                options,
                producer,
                shared,
                stop,
                follower: std::sync::Mutex::new(Some(follower)),
            }),
        };
        log.catch_up(&ends).await?;
        Ok(log)
    }

    /// Wait until the index has applied every record below `ends`. A first
    /// start over a long history may take a while: it fails only when the
    /// index stores nothing for [`CATCH_UP_STALL`].
    async fn catch_up(&self, ends: &Ends) -> Result<(), Error> {
        let mut rx = self.inner.shared.changed.subscribe();
        let reached = |v: &View| {
            ends.iter()
                .all(|((t, p), end)| v.next_offset(t, *p) >= *end)
        };
        while !self.inner.shared.read(reached) {
            match tokio::time::timeout(CATCH_UP_STALL, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    return Err(Error::Unavailable {
                        context: "catching up with the topics".to_owned(),
                        source: format!(
                            "the index stored nothing for {} s before reaching the end of the topics",
                            CATCH_UP_STALL.as_secs()
                        )
                        .into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Stop following the topics and wait until the index has stored its
    /// last batch. Appends and reads fail afterwards; the index file is let
    /// go once the last clone of the log (and its subscriptions) is dropped.
    pub async fn close(&self) {
        let _ = self.inner.stop.send(true);
        let handle = match self.inner.follower.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Records read but waiting for causes not yet read (normally 0).
    pub fn stalled(&self) -> usize {
        self.inner.shared.read(|v| v.stalled)
    }

    /// Events in the local index.
    pub fn indexed(&self) -> usize {
        usize::try_from(self.inner.shared.read(|v| v.events)).unwrap_or(usize::MAX)
    }

    /// Records the index fetched from the brokers since this log opened
    /// (after a restart, only those past its stored offsets).
    pub fn records_fetched(&self) -> u64 {
        self.inner.shared.fetched.load(Ordering::Relaxed)
    }

    /// The index file.
    pub fn index_path(&self) -> &std::path::Path {
        self.inner.shared.store.path()
    }

    /// The topic set this log uses.
    pub fn topics(&self) -> &TopicSettings {
        &self.inner.options.topics
    }

    fn local_subscription(
        &self,
        start: StartFrom,
        types: Option<Arc<[String]>>,
    ) -> LocalSubscription {
        LocalSubscription {
            shared: self.inner.shared.clone(),
            rx: self.inner.shared.changed.subscribe(),
            cursor: match start {
                StartFrom::After(position) => position,
                _ => 0,
            },
            types,
        }
    }

    /// The topics this instance follows ([`Options::follow`]).
    pub fn followed_topics(&self) -> &[String] {
        &self.inner.followed
    }

    /// The topic of `stream_id` when this instance does not follow it.
    fn unfollowed(&self, stream_id: &str) -> Option<String> {
        let topic = self.inner.options.topics.topic_for_stream(stream_id);
        (!self.inner.followed.contains(&topic)).then_some(topic)
    }
}

/// The least time an append waits for its own index after the brokers
/// acknowledged the record.
const INDEX_GRACE: Duration = Duration::from_secs(1);

/// Most reads of the index file running at once (the file's readers keep
/// as many connections open, and one more for the index's own lookups).
const CONCURRENT_READS: usize = 8;

/// How long opening waits for the index to store its next batch while it
/// catches up with the topics.
const CATCH_UP_STALL: Duration = Duration::from_secs(300);

/// The default of [`Options::fetch_wait`].
pub const FETCH_WAIT: Duration = Duration::from_millis(20);

/// Most records the index decides and stores in one transaction.
const INDEX_BATCH: usize = 2000;

/// Where each topic-partition ends (its high watermark).
type Ends = HashMap<(String, i32), i64>;

/// Every partition of `names` and where each ends now.
fn topic_ends(client: &BaseConsumer, names: &[String]) -> Result<Ends, Error> {
    let timeout = Duration::from_secs(10);
    let mut ends = HashMap::new();
    for name in names {
        let metadata = client
            .fetch_metadata(Some(name), timeout)
            .map_err(|e| unavailable(format!("metadata of {name}"), e))?;
        for topic in metadata.topics() {
            for p in topic.partitions() {
                let (_, high) = client
                    .fetch_watermarks(name, p.id(), timeout)
                    .map_err(|e| unavailable(format!("end of {name}/{}", p.id()), e))?;
                ends.insert((name.clone(), p.id()), high);
            }
        }
    }
    Ok(ends)
}

/// Every partition of `names` from the beginning, and where each ends now.
fn whole_topics(
    client: &BaseConsumer,
    names: &[String],
) -> Result<(TopicPartitionList, Ends), Error> {
    let ends = topic_ends(client, names)?;
    let mut tpl = TopicPartitionList::new();
    for (name, partition) in ends.keys() {
        tpl.add_partition_offset(name, *partition, Offset::Beginning)
            .map_err(|e| unavailable(format!("assigning {name}/{partition}"), e))?;
    }
    Ok((tpl, ends))
}

/// Why stored offsets cannot be resumed on these brokers: a partition the
/// index has applied further than the brokers hold (the topics were
/// re-created, or this is another cluster).
fn stale_offsets(stored: &HashMap<Tp, i64>, ends: &Ends) -> Option<String> {
    stored.iter().find_map(|((topic, partition), next)| {
        let end = ends.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
        (*next > end).then(|| {
            format!(
                "it applied {topic}/{partition} up to offset {next}, the brokers hold {end} \
                 (topics re-created or another cluster)"
            )
        })
    })
}

/// The index's consumer: every partition, each from its stored offset (or
/// the beginning when it has none).
fn index_consumer(
    options: &Options,
    partitions: &[Tp],
    stored: &HashMap<Tp, i64>,
) -> Result<StreamConsumer<Logging>, Error> {
    let consumer: StreamConsumer<Logging> = options
        .client_config("index")
        .set(
            "group.id",
            format!("{}-index-{}", options.client_id, Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", millis(options.fetch_wait))
        .create_with_context(Logging::new("index"))
        .map_err(|e| unavailable("creating the index consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for tp in partitions {
        let offset = match stored.get(tp) {
            Some(next) if *next > 0 => Offset::Offset(*next),
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(&tp.0, tp.1, offset)
            .map_err(|e| unavailable(format!("assigning {}/{}", tp.0, tp.1), e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| unavailable("assigning the topics to the index", e))?;
    Ok(consumer)
}

/// One record as fetched, decoded on a blocking thread.
struct Fetched {
    topic: String,
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
}

impl Fetched {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Decide a batch of fetched records and store the decisions in one
/// transaction. Returns what was stored and the index's event count and
/// stalled records afterwards.
fn apply_fetched(
    index: &mut Index<Arc<SqliteStore>>,
    fetched: Vec<Fetched>,
) -> Result<(Batch, u64, usize), Error> {
    for f in fetched {
        let incoming = Incoming::decode(&f.topic, f.partition, f.offset, f.payload.as_deref());
        if let Err(reason) = &incoming.record {
            tracing::error!(
                topic = %incoming.topic,
                partition = incoming.partition,
                offset = incoming.offset,
                reason,
                "undecodable record skipped"
            );
        }
        index.offer(incoming)?;
    }
    let batch = index.flush()?;
    Ok((batch, index.events(), index.stalled()))
}

/// The index on `store`, following the topics `options` say.
fn open_index(
    store: Arc<SqliteStore>,
    options: &Options,
) -> Result<Index<Arc<SqliteStore>>, Error> {
    let index = Index::open(store)?;
    Ok(match options.follow {
        Some(_) => index.following(options.followed_topics()),
        None => index,
    })
}

/// The index's consumer loop: a batch of whatever has arrived, decided and
/// stored in one transaction, then published to readers and writers. A
/// failure of the index file drops the batch's decisions and starts again
/// from the stored offsets (with a new consumer), after a pause.
async fn follow(
    options: Options,
    partitions: Vec<Tp>,
    mut consumer: StreamConsumer<Logging>,
    index: Index<Arc<SqliteStore>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut index = Some(index);
    loop {
        let Some(mut current) = index.take() else {
            // Lost to a failure: reopen it from the file.
            let store = shared.store.clone();
            let opts = options.clone();
            let reopened = blocking(move || open_index(store, &opts))
                .await
                .and_then(|i| {
                    let stored = i.offsets().clone();
                    let c = index_consumer(&options, &partitions, &stored)?;
                    Ok((i, c))
                });
            match reopened {
                Ok((i, c)) => {
                    index = Some(i);
                    consumer = c;
                    tracing::info!("Kafka index reopened at its stored offsets");
                }
                Err(e) => {
                    tracing::error!(error = %e, "reopening the Kafka index failed; retrying");
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            continue;
        };
        let mut fetched = tokio::select! {
            _ = stop.changed() => break,
            m = consumer.recv() => match m {
                Ok(m) => vec![Fetched::of(&m)],
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event topics failed; retrying");
                    index = Some(current);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        while fetched.len() < INDEX_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => fetched.push(Fetched::of(&m)),
                _ => break,
            }
        }
        shared
            .fetched
            .fetch_add(fetched.len() as u64, Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || {
            let r = apply_fetched(&mut current, fetched);
            (current, r)
        })
        .await;
        match result {
            Ok((i, Ok((batch, events, stalled)))) => {
                index = Some(i);
                let applied = !batch.decided.is_empty();
                shared.write(|v| v.stored(batch, events, stalled));
                if applied {
                    shared.changed.send_modify(|g| *g = g.wrapping_add(1));
                }
            }
            Ok((_, Err(e))) => {
                tracing::error!(error = %e, "the Kafka index could not store a batch; resuming from its stored offsets");
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the Kafka index task failed; resuming from its stored offsets");
            }
        }
    }
    tracing::debug!("index follower stopped");
}

/// Logs librdkafka's messages and rebalances through `tracing`; for a
/// group member that reads its records from the index, also pauses every
/// partition it is given (the brokers send it no records) and keeps the
/// assignment for the subscription.
#[derive(Debug, Clone)]
struct Logging {
    name: String,
    assigned: Option<Arc<Assigned>>,
}

impl Logging {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            assigned: None,
        }
    }
}

impl ClientContext for Logging {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(client = %self.name, fac, "{log_message}")
            }
            L::Warning => tracing::warn!(client = %self.name, fac, "{log_message}"),
            _ => tracing::debug!(client = %self.name, fac, "{log_message}"),
        }
    }
}

impl ConsumerContext for Logging {
    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(
                    consumer = %self.name,
                    partitions = ?partitions_of(tpl),
                    "partitions assigned"
                );
                if let Some(assigned) = &self.assigned {
                    if let Err(e) = base.pause(tpl) {
                        tracing::warn!(consumer = %self.name, error = %e, "pausing the assigned partitions failed; their records are fetched and ignored");
                    }
                    assigned.assign(tps_of(tpl));
                }
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(
                    consumer = %self.name,
                    partitions = ?partitions_of(tpl),
                    "partitions revoked"
                );
                if let Some(assigned) = &self.assigned {
                    assigned.revoke(&tps_of(tpl));
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "rebalance failed")
            }
        }
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// The partitions a group member holds, as the last rebalance left them,
/// and a generation bumped at every change.
#[derive(Debug)]
struct Assigned {
    held: std::sync::Mutex<(u64, Vec<Tp>)>,
    changed: watch::Sender<u64>,
}

impl Assigned {
    fn new() -> Self {
        Self {
            held: std::sync::Mutex::new((0, Vec::new())),
            changed: watch::channel(0).0,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Tp>)) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.0 += 1;
        f(&mut held.1);
        self.changed.send_replace(held.0);
    }

    fn assign(&self, tps: Vec<Tp>) {
        self.update(|held| {
            for tp in tps {
                if !held.contains(&tp) {
                    held.push(tp);
                }
            }
        });
    }

    fn revoke(&self, tps: &[Tp]) {
        self.update(|held| held.retain(|tp| !tps.contains(tp)));
    }

    /// The generation and the partitions held.
    fn get(&self) -> (u64, Vec<Tp>) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

#[async_trait]
impl EventLog for KafkaEventLog {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, Error> {
        if events.is_empty() {
            return Err(Error::InvalidAppend {
                stream_id: stream_id.to_owned(),
                reason: "no events".to_owned(),
            });
        }
        if let Some(topic) = self.unfollowed(stream_id) {
            return Err(Error::InvalidAppend {
                stream_id: stream_id.to_owned(),
                reason: format!(
                    "its topic {topic} is not one this instance follows, so it could not read the append back"
                ),
            });
        }
        let deadline = tokio::time::Instant::now() + self.inner.options.append_timeout;
        let shared = &self.inner.shared;
        // A writer that is already behind cannot win: refuse without a
        // round trip. (Being level locally proves nothing: the decision is
        // made in partition order below.)
        let (actual, duplicate) = {
            let stream = stream_id.to_owned();
            let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
            shared
                .query(move |store| {
                    let actual = store.read_version(&stream)?;
                    for id in ids {
                        if store.read_contains_event(&id)? {
                            return Ok((actual, Some(id)));
                        }
                    }
                    Ok((actual, None))
                })
                .await?
        };
        let behind = match expected {
            ExpectedVersion::Any => false,
            ExpectedVersion::NoStream => actual > 0,
            ExpectedVersion::Exact(v) => actual > v,
        };
        if behind {
            return Err(Error::WrongExpectedVersion {
                stream_id: stream_id.to_owned(),
                expected,
                actual,
            });
        }
        if let Some(event_id) = duplicate {
            return Err(Error::DuplicateEvent {
                stream_id: stream_id.to_owned(),
                event_id,
            });
        }
        let frontier = shared.read(|v| index::frontier(&v.offsets));
        // The gateway topic (audit, delivery and notification attempts)
        // causes nothing on any other stream, so no record waits for it:
        // otherwise every record would wait until a reader had caught up
        // with the audit trail, which after an outage is a long backlog.
        let gateway_topic = self.inner.options.topics.service_topic("gateway");
        let frontier: Vec<_> = frontier
            .into_iter()
            .filter(|f| f.topic != gateway_topic)
            .collect();
        let topic = self.inner.options.topics.topic_for_stream(stream_id);
        let event_types = events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let record = AppendRecord {
            format: FORMAT,
            append_id: Uuid::new_v4(),
            stream_id: stream_id.to_owned(),
            expected: expected.into(),
            written_at: chrono::Utc::now(),
            metadata: metadata.into(),
            events: events.into_iter().map(WireEvent::from).collect(),
            after: frontier,
        };
        let body = serde_json::to_vec(&record).map_err(|e| Error::InvalidAppend {
            stream_id: stream_id.to_owned(),
            reason: mskflow_eventlog::json_error_reason(&e),
        })?;
        let append_uuid = record.append_id;
        let append_id = append_uuid.to_string();
        let format = FORMAT.to_string();
        let mut hdrs = OwnedHeaders::new()
            .insert(Header {
                key: headers::APPEND_ID,
                value: Some(append_id.as_str()),
            })
            .insert(Header {
                key: headers::STREAM_ID,
                value: Some(stream_id),
            })
            .insert(Header {
                key: headers::EVENT_TYPES,
                value: Some(event_types.as_str()),
            })
            .insert(Header {
                key: headers::FORMAT,
                value: Some(format.as_str()),
            });
        if let Some(tp) = &metadata.traceparent {
            hdrs = hdrs.insert(Header {
                key: headers::TRACEPARENT,
                value: Some(tp.as_str()),
            });
        }
        let (generation, producer) = self.inner.producer.current();
        let send = producer.send(
            FutureRecord::to(&topic)
                .key(partition_key(stream_id))
                .payload(&body)
                .headers(hdrs),
            Timeout::After(self.inner.options.append_timeout),
        );
        let delivery = match tokio::time::timeout_at(deadline, send).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err((e, _))) => {
                tracing::warn!(%topic, error = %e, "append not acknowledged by the brokers");
                if !matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull)
                ) {
                    self.inner.producer.replace(generation);
                }
                return Err(unavailable(format!("producing to {topic}"), e));
            }
            Err(_) => {
                tracing::warn!(%topic, "append not acknowledged by the brokers in time");
                return Err(Error::Unavailable {
                    context: format!("producing to {topic}"),
                    source: "the brokers did not acknowledge the record in time".into(),
                });
            }
        };
        // The record is stored; what remains is reading it back. Give the
        // index at least a moment even when the acknowledgement was slow.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(INDEX_GRACE);
        let decided = shared
            .outcome(&topic, delivery.partition, delivery.offset, Some(left))
            .await?;
        // The place must hold this very record. A broker that lost
        // acknowledged records (storage not flushed before a crash) hands
        // their offsets out again; the index, which had applied the lost
        // records, would otherwise answer with another record's decision.
        if decided.append_id != Some(append_uuid) {
            tracing::error!(
                %topic,
                partition = delivery.partition,
                offset = delivery.offset,
                "the acknowledged offset holds another record; brokers reused an offset"
            );
            return Err(Error::Unavailable {
                context: format!("{topic}/{}@{}", delivery.partition, delivery.offset),
                source:
                    "the brokers acknowledged the record at an offset that holds another record"
                        .into(),
            });
        }
        let outcome = decided.outcome;
        match outcome {
            Outcome::Accepted {
                first,
                count,
                version,
            } => Ok(Appended {
                version,
                position: first + count,
            }),
            Outcome::WrongVersion {
                stream_id,
                expected,
                actual,
            } => Err(Error::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            }),
            Outcome::Duplicate {
                stream_id,
                event_id,
            } => Err(Error::DuplicateEvent {
                stream_id,
                event_id,
            }),
            Outcome::Undecodable { reason } => Err(Error::Corrupt {
                position: u64::try_from(delivery.offset).unwrap_or_default(),
                reason,
            }),
        }
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_sequence: u64,
    ) -> Result<Vec<Envelope>, Error> {
        if let Some(topic) = self.unfollowed(stream_id) {
            return Err(Error::Unavailable {
                context: format!("reading stream {stream_id}"),
                source: format!("its topic {topic} is not one this instance follows").into(),
            });
        }
        let stream = stream_id.to_owned();
        self.inner
            .shared
            .query(move |store| store.read_stream(&stream, from_sequence))
            .await
    }

    /// A replaying subscription of some types reads only their rows from the
    /// index file; a durable consumer gets every event.
    async fn subscribe_types(
        &self,
        consumer: &str,
        start: StartFrom,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        match start {
            StartFrom::Beginning | StartFrom::After(_) => {
                let types: Arc<[String]> = types.iter().map(|t| (*t).to_owned()).collect();
                Ok(Box::new(self.local_subscription(start, Some(types))))
            }
            StartFrom::Checkpoint => self.subscribe(consumer, start).await,
        }
    }

    async fn subscribe(
        &self,
        consumer: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, Error> {
        match start {
            // Positions are those of this instance's index file, stable
            // for as long as it keeps its `log_id`.
            StartFrom::Beginning | StartFrom::After(_) => {
                Ok(Box::new(self.local_subscription(start, None)))
            }
            StartFrom::Checkpoint => {
                let options = &self.inner.options;
                let group = options.topics.group(consumer);
                let assigned =
                    (options.group_reads == GroupReads::Index).then(|| Arc::new(Assigned::new()));
                let kafka: StreamConsumer<Logging> = options
                    .client_config(consumer)
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("fetch.wait.max.ms", millis(options.fetch_wait))
                    .set(
                        "session.timeout.ms",
                        options.session_timeout.as_millis().to_string(),
                    )
                    .set(
                        "heartbeat.interval.ms",
                        (options.session_timeout.as_millis() / 4)
                            .max(100)
                            .to_string(),
                    )
                    .create_with_context(Logging {
                        name: group.clone(),
                        assigned: assigned.clone(),
                    })
                    .map_err(|e| unavailable(format!("creating consumer group {group}"), e))?;
                let names = options.group_topics(consumer);
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                kafka
                    .subscribe(&refs)
                    .map_err(|e| unavailable(format!("subscribing {group}"), e))?;
                let kafka = Arc::new(kafka);
                let reads = assigned.map(|assigned| IndexReads {
                    assigned_rx: assigned.changed.subscribe(),
                    assigned,
                    generation: 0,
                    cursors: BTreeMap::new(),
                    index_rx: self.inner.shared.changed.subscribe(),
                    turn: 0,
                    _poller: keep_polled(kafka.clone(), group.clone()),
                });
                Ok(Box::new(GroupSubscription {
                    log: self.clone(),
                    name: consumer.to_owned(),
                    group,
                    consumer: kafka,
                    shared: self.inner.shared.clone(),
                    uncommitted: HashMap::new(),
                    commit_pending: false,
                    handed_out: false,
                    reads,
                }))
            }
        }
    }

    /// The index file's identity: its positions stay valid across restarts
    /// for as long as the file keeps it (a file started afresh gets a new
    /// one).
    fn log_id(&self) -> Option<String> {
        Some(self.inner.shared.store.log_id().to_owned())
    }

    async fn ping(&self) -> Result<(), Error> {
        let (_, producer) = self.inner.producer.current();
        let brokers = self.inner.options.brokers.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
                .map_err(|e| unavailable(format!("brokers {brokers}"), e))
        })
        .await
        .map_err(|e| Error::Unavailable {
            context: "pinging the brokers".to_owned(),
            source: Box::new(e),
        })?
    }
}

/// Every event, in this instance's order, from the start (or a position),
/// read from the index file.
struct LocalSubscription {
    shared: Arc<Shared>,
    rx: watch::Receiver<u64>,
    /// Position read up to: of the last event returned or, filtering, of
    /// the last event looked at.
    cursor: u64,
    /// The event types returned (`None`: every event).
    types: Option<Arc<[String]>>,
}

impl LocalSubscription {
    /// Up to `max` events after the cursor (a `max` of 0 is taken as 1),
    /// payloads as the stored text; moves the cursor past what was read.
    async fn fetch(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        self.rx.mark_unchanged();
        let from = self.cursor;
        let max = max.max(1);
        let Some(types) = self.types.clone() else {
            let batch = self
                .shared
                .query(move |store| store.slice_stored(from, max))
                .await?;
            if let Some(last) = batch.last() {
                self.cursor = last.envelope().position;
            }
            return Ok(batch);
        };
        // Every position up to the published count is in the file.
        let head = self.shared.read(|v| v.events);
        if head <= from {
            return Ok(Vec::new());
        }
        let (batch, scanned) = self
            .shared
            .query(move |store| store.slice_types(from, head, max, &types))
            .await?;
        self.cursor = self.cursor.max(scanned);
        Ok(batch)
    }

    /// Wait for events after the cursor. A filtering subscription that read
    /// past events it leaves out returns (empty), so its reader can move its
    /// checkpoint ([`Subscription::scanned`]).
    async fn next(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        loop {
            let before = self.cursor;
            let batch = self.fetch(max).await?;
            if !batch.is_empty() || self.cursor > before {
                return Ok(batch);
            }
            if self.rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }
}

/// Parse the payloads of events read as stored text.
fn parsed(batch: Vec<StoredEvent>) -> Result<Vec<Envelope>, Error> {
    batch.into_iter().map(disk::parse_stored).collect()
}

impl fmt::Debug for LocalSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSubscription")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Subscription for LocalSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        parsed(self.next(max).await?)
    }

    async fn poll_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        parsed(self.fetch(max).await?)
    }

    /// The payloads stay the stored text.
    async fn next_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        self.next(max).await
    }

    /// The payloads stay the stored text.
    async fn poll_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        self.fetch(max).await
    }

    async fn commit(&mut self) -> Result<(), Error> {
        // Replaying subscriptions start from the beginning every time.
        Ok(())
    }

    async fn lag(&self) -> Result<u64, Error> {
        Ok(self.shared.read(|v| v.events).saturating_sub(self.cursor))
    }

    fn scanned(&self) -> Option<u64> {
        self.types.as_ref().map(|_| self.cursor)
    }
}

/// A durable consumer: one member of the consumer group of its name.
struct GroupSubscription {
    /// Where records it cannot read are set aside.
    log: KafkaEventLog,
    /// The consumer's name (`assessment`, …).
    name: String,
    group: String,
    consumer: Arc<StreamConsumer<Logging>>,
    shared: Arc<Shared>,
    /// Next offset to commit per partition handed out since the last commit.
    uncommitted: HashMap<(String, i32), i64>,
    /// The last commit failed because the brokers could not be reached; its
    /// offsets are back in `uncommitted` and are committed again as soon as
    /// the brokers answer, even while no new records arrive. Also set when
    /// only records without events for this consumer (refused or
    /// undecodable) were read since the last commit: their offsets are
    /// committed while idle, so the group's lag reaches zero.
    commit_pending: bool,
    /// Events were returned since the last commit (only the handler may
    /// commit those).
    handed_out: bool,
    /// Reading the held partitions' records from this instance's index
    /// ([`GroupReads::Index`]); `None`: from the brokers.
    reads: Option<IndexReads>,
}

/// A group member's reads from the index: the group only shares out the
/// partitions (and keeps the committed offsets); the records themselves,
/// already fetched and decided by the index, are read from its file.
struct IndexReads {
    assigned: Arc<Assigned>,
    assigned_rx: watch::Receiver<u64>,
    /// The assignment generation `cursors` were set for.
    generation: u64,
    /// The next offset to hand out of each partition held.
    cursors: BTreeMap<Tp, i64>,
    /// Bumped whenever the index stores a batch.
    index_rx: watch::Receiver<u64>,
    /// The partition to read first next time (so that one busy partition
    /// does not hold the others back).
    turn: usize,
    /// Stops the task that keeps the membership polled when dropped.
    _poller: watch::Sender<bool>,
}

/// What one pass over the held partitions found: the events to hand out,
/// the records no reader can decode, and where each partition's cursor
/// moves once they are handled.
#[derive(Default)]
struct Found {
    events: Vec<Envelope>,
    undecodable: Vec<(String, i32, i64, String)>,
    moves: Vec<(Tp, i64)>,
}

/// Poll a consumer group member for as long as its subscription lives, so
/// that it keeps its membership, heartbeats and takes part in rebalances
/// (its partitions are paused: records it gets anyway, fetched before a
/// pause took effect, are dropped; the index has them).
fn keep_polled(consumer: Arc<StreamConsumer<Logging>>, group: String) -> watch::Sender<bool> {
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                m = consumer.recv() => {
                    if let Err(e) = m {
                        tracing::warn!(%group, error = %e, "consumer error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    });
    stop
}

impl fmt::Debug for GroupSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSubscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// The event type shown for a dead-lettered record that did not decode.
pub const UNDECODABLE_RECORD: &str = "(undecodable record)";

/// Names the dead letters of undecodable records (by topic, partition and
/// offset).
const UNDECODABLE_NAMESPACE: Uuid = Uuid::from_u128(0x6d73_6b66_6c6f_775f_756e_6465_636f_6465);

/// How often a durable consumer tries a failed commit again while idle.
const COMMIT_RETRY: Duration = Duration::from_secs(1);

impl GroupSubscription {
    /// Put offsets of a failed commit back, unless newer ones were handed
    /// out since.
    fn keep_uncommitted(&mut self, offsets: Vec<((String, i32), i64)>) {
        for (tp, next) in offsets {
            let slot = self.uncommitted.entry(tp).or_insert(next);
            *slot = (*slot).max(next);
        }
        self.commit_pending = true;
    }

    /// Set aside a record no reader can decode on this consumer's
    /// dead-letter stream (`deadletter-{consumer}`), so operators see it in
    /// `mskflow dead-letters`, and move on. The dead letter's id is derived
    /// from the record's place, so a redelivery records nothing new. The
    /// reason names the decode failure, never the record's content.
    async fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: &str,
    ) -> Result<(), Error> {
        use mskflow_events::operations::{EventDeadLettered, OperationsEvent, dead_letter_stream};
        let place = format!("{topic}/{partition}@{offset}");
        let record_id = Uuid::new_v5(&UNDECODABLE_NAMESPACE, place.as_bytes());
        let event = OperationsEvent::EventDeadLettered(EventDeadLettered {
            consumer: self.name.clone(),
            event_id: record_id,
            stream_id: format!("kafka:{topic}/{partition}"),
            sequence: 0,
            position: u64::try_from(offset).unwrap_or_default(),
            event_type: UNDECODABLE_RECORD.to_owned(),
            reason: reason.to_owned(),
            attempts: 1,
        });
        let mut new =
            mskflow_eventlog::new_event(&event, mskflow_events::SCHEMA_VERSION, chrono::Utc::now())
                .map_err(|e| Error::InvalidAppend {
                    stream_id: dead_letter_stream(&self.name),
                    reason: mskflow_eventlog::json_error_reason(&e),
                })?;
        new.event_id = Uuid::new_v5(
            &UNDECODABLE_NAMESPACE,
            format!("{}/dead-lettered/{place}", self.name).as_bytes(),
        );
        tracing::error!(
            consumer = %self.name,
            %topic,
            partition,
            offset,
            reason,
            "undecodable record; dead-lettered"
        );
        let stream = dead_letter_stream(&self.name);
        let metadata = Metadata {
            causation_id: None,
            correlation_id: record_id,
            traceparent: None,
            tracestate: None,
        };
        loop {
            match self
                .log
                .append(&stream, ExpectedVersion::Any, vec![new.clone()], &metadata)
                .await
            {
                Ok(_) | Err(Error::DuplicateEvent { .. }) => return Ok(()),
                Err(e @ Error::Unavailable { .. }) => {
                    tracing::warn!(consumer = %self.name, error = %e, "store failure writing a dead letter; retrying");
                    tokio::time::sleep(COMMIT_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a rebalance: start each partition held at the group's
    /// committed offset (the beginning when it has none), as a consumer
    /// that fetches would. What was handed out and not committed is handed
    /// out again (handlers are idempotent).
    async fn refresh(&mut self) -> Result<(), Error> {
        let Some(reads) = &mut self.reads else {
            return Ok(());
        };
        let (generation, held) = reads.assigned.get();
        if generation == reads.generation {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in &held {
                tpl.add_partition(topic, *partition);
            }
            if tpl.count() == 0 {
                return Ok(Vec::new());
            }
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .map_err(|e| unavailable(format!("committed offsets of {group}"), e))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| {
                    let at = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    ((e.topic().to_owned(), e.partition()), at)
                })
                .collect::<Vec<_>>())
        })
        .await
        .map_err(|e| Error::Unavailable {
            context: format!("committed offsets of {}", self.group),
            source: Box::new(e),
        })??;
        reads.cursors = committed.into_iter().collect();
        reads.generation = generation;
        tracing::debug!(group = %self.group, generation, partitions = reads.cursors.len(), "reading the held partitions from the index");
        Ok(())
    }

    /// One pass over the held partitions: records the index has decided
    /// past each cursor, at most `max` events in all.
    async fn find(&mut self, max: usize) -> Result<Found, Error> {
        let Some(reads) = &mut self.reads else {
            return Ok(Found::default());
        };
        let work: Vec<(Tp, i64, i64)> = self.shared.read(|v| {
            reads
                .cursors
                .iter()
                .map(|(tp, at)| (tp.clone(), *at, v.next_offset(&tp.0, tp.1)))
                .filter(|(_, at, end)| at < end)
                .collect()
        });
        let mut found = Found::default();
        if work.is_empty() {
            return Ok(found);
        }
        let start = reads.turn % work.len();
        reads.turn = reads.turn.wrapping_add(1);
        for (tp, at, end) in work[start..].iter().chain(&work[..start]) {
            let room = max.saturating_sub(found.events.len());
            if room == 0 {
                break;
            }
            let (topic, partition, from) = (tp.0.clone(), tp.1, *at);
            let decided = self
                .shared
                .query(move |store| store.decided_from(&topic, partition, from, room))
                .await?;
            let mut next = *at;
            let complete = decided.len() < room;
            for (offset, d) in decided {
                match d.outcome {
                    Outcome::Accepted { first, count, .. } => {
                        let count = usize::try_from(count).unwrap_or(usize::MAX);
                        found.events.extend(self.shared.slice(first, count).await?);
                    }
                    Outcome::Undecodable { reason } => {
                        found.undecodable.push((tp.0.clone(), tp.1, offset, reason));
                    }
                    Outcome::WrongVersion { .. } | Outcome::Duplicate { .. } => {}
                }
                next = offset + 1;
                if found.events.len() >= max {
                    break;
                }
            }
            if complete && found.events.len() < max {
                // Everything below the index's offset was read.
                next = next.max(*end);
            }
            if next > *at {
                found.moves.push((tp.clone(), next));
            }
        }
        Ok(found)
    }

    /// Read from the index once: dead-letter what does not decode, move
    /// the cursors, and return the events.
    async fn take_from_index(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        self.refresh().await?;
        let found = self.find(max.max(1)).await?;
        for (topic, partition, offset, reason) in &found.undecodable {
            self.dead_letter(topic, *partition, *offset, reason).await?;
        }
        if let Some(reads) = &mut self.reads {
            for (tp, next) in found.moves {
                if let Some(at) = reads.cursors.get_mut(&tp) {
                    *at = next;
                    self.uncommitted.insert(tp, next);
                }
            }
        }
        if !found.events.is_empty() {
            self.handed_out = true;
        }
        Ok(found.events)
    }

    /// [`Subscription::next_batch`] from the index: wait until the index
    /// has stored records past a cursor, or the assignment changes.
    async fn next_from_index(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        loop {
            if let Some(reads) = &mut self.reads {
                reads.index_rx.mark_unchanged();
                reads.assigned_rx.mark_unchanged();
            }
            let batch = match self.take_from_index(max).await {
                Ok(b) => b,
                Err(e @ Error::Unavailable { .. }) => {
                    tracing::warn!(group = %self.group, error = %e, "reading the held partitions failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !batch.is_empty() {
                self.commit_pending = false;
                return Ok(batch);
            }
            if !self.handed_out && !self.uncommitted.is_empty() {
                self.commit_pending = true;
            }
            let Some(reads) = &mut self.reads else {
                return Ok(Vec::new());
            };
            let commit_pending = self.commit_pending;
            let retry = tokio::select! {
                r = reads.index_rx.changed() => {
                    if r.is_err() {
                        return Err(Error::Closed);
                    }
                    false
                }
                _ = reads.assigned_rx.changed() => false,
                () = tokio::time::sleep(COMMIT_RETRY), if commit_pending => true,
            };
            if retry {
                self.commit().await?;
            }
        }
    }

    async fn collect(
        &mut self,
        first: (String, i32, i64),
        max: usize,
    ) -> Result<Vec<Envelope>, Error> {
        let mut places = vec![first];
        while places.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => places.push((m.topic().to_owned(), m.partition(), m.offset())),
                _ => break,
            }
        }
        let mut out = Vec::new();
        for (topic, partition, offset) in places {
            let decided = self.shared.outcome(&topic, partition, offset, None).await?;
            match decided.outcome {
                Outcome::Accepted { first, count, .. } => {
                    let count = usize::try_from(count).unwrap_or(usize::MAX);
                    out.extend(self.shared.slice(first, count).await?);
                }
                Outcome::Undecodable { reason } => {
                    self.dead_letter(&topic, partition, offset, &reason).await?;
                }
                Outcome::WrongVersion { .. } | Outcome::Duplicate { .. } => {}
            }
            self.uncommitted.insert((topic, partition), offset + 1);
        }
        if !out.is_empty() {
            self.handed_out = true;
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for GroupSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        if self.reads.is_some() {
            return self.next_from_index(max).await;
        }
        loop {
            let received = if self.commit_pending {
                match tokio::time::timeout(COMMIT_RETRY, self.consumer.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.commit().await?;
                        continue;
                    }
                }
            } else {
                self.consumer.recv().await
            };
            let first = match received {
                Ok(m) => (m.topic().to_owned(), m.partition(), m.offset()),
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let batch = self.collect(first, max.max(1)).await?;
            if !batch.is_empty() {
                // The handler commits this batch (and anything kept).
                self.commit_pending = false;
                return Ok(batch);
            }
            if !self.handed_out && !self.uncommitted.is_empty() {
                self.commit_pending = true;
            }
        }
    }

    async fn poll_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error> {
        if self.reads.is_some() {
            return self.take_from_index(max).await;
        }
        let first = match self.consumer.recv().now_or_never() {
            Some(Ok(m)) => (m.topic().to_owned(), m.partition(), m.offset()),
            _ => return Ok(Vec::new()),
        };
        self.collect(first, max.max(1)).await
    }

    /// Commit what was handed out. A commit refused because a rebalance
    /// took the partitions away is not an error: the new owner handles
    /// those events again, and handlers are idempotent. Nor is a commit the
    /// brokers cannot take now (an outage): the offsets are kept and
    /// committed once the brokers answer; until then a restart would see
    /// those events again, which handlers tolerate the same way.
    async fn commit(&mut self) -> Result<(), Error> {
        let pending: Vec<((String, i32), i64)> = self.uncommitted.drain().collect();
        self.commit_pending = false;
        self.handed_out = false;
        if pending.is_empty() {
            return Ok(());
        }
        let keep = pending.clone();
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        let result = tokio::task::spawn_blocking(move || {
            let assigned = consumer.assignment().unwrap_or_default();
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in pending {
                if assigned.find_partition(&topic, partition).is_none() {
                    continue;
                }
                tpl.add_partition_offset(&topic, partition, Offset::Offset(next))?;
            }
            if tpl.count() == 0 {
                return Ok(());
            }
            consumer.commit(&tpl, CommitMode::Sync)
        })
        .await;
        match result {
            Ok(Ok(())) => {
                tracing::debug!(%group, "offsets committed");
                Ok(())
            }
            Ok(Err(e)) => {
                let rebalancing = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::RebalanceInProgress
                            | RDKafkaErrorCode::IllegalGeneration
                            | RDKafkaErrorCode::UnknownMemberId
                            | RDKafkaErrorCode::State
                    )
                );
                if rebalancing {
                    tracing::info!(%group, error = %e, "commit refused during a rebalance; the events will be handled again");
                } else {
                    tracing::warn!(%group, error = %e, "commit failed; kept and tried again");
                    self.keep_uncommitted(keep);
                }
                Ok(())
            }
            Err(e) => Err(Error::Unavailable {
                context: format!("committing offsets of {group}"),
                source: Box::new(e),
            }),
        }
    }

    async fn lag(&self) -> Result<u64, Error> {
        if let Some(reads) = &self.reads {
            return Ok(self.shared.read(|v| {
                reads
                    .cursors
                    .iter()
                    .map(|(tp, at)| (v.next_offset(&tp.0, tp.1) - at).max(0) as u64)
                    .sum()
            }));
        }
        let position = match self.consumer.position() {
            Ok(p) => p,
            Err(e) => return Err(unavailable("consumer position", e)),
        };
        Ok(self.shared.read(|v| {
            position
                .elements()
                .iter()
                .map(|e| {
                    let at = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    (v.next_offset(e.topic(), e.partition()) - at).max(0) as u64
                })
                .sum()
        }))
    }
}

/// Create every topic of the set that does not exist yet. Returns the names
/// created. Existing topics are left alone (`check_topics` compares them).
pub async fn create_topics(options: &Options) -> Result<Vec<String>, Error> {
    let admin: AdminClient<DefaultClientContext> = options
        .client_config("admin")
        .create()
        .map_err(|e| unavailable("creating the admin client", e))?;
    let specs = options.topics.specs();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication),
                ),
                |t, (k, v)| t.set(k, v.as_str()),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| unavailable("creating topics", e))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Unavailable {
                    context: format!("creating topic {name}"),
                    source: Box::new(KafkaError::AdminOp(code)),
                });
            }
        }
    }
    Ok(created)
}

/// One problem found by [`check_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicProblem {
    Missing(String),
    Partitions {
        topic: String,
        expected: i32,
        actual: i32,
    },
}

impl fmt::Display for TopicProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicProblem::Missing(t) => write!(f, "topic {t} does not exist"),
            TopicProblem::Partitions {
                topic,
                expected,
                actual,
            } => write!(
                f,
                "topic {topic} has {actual} partitions, expected {expected}"
            ),
        }
    }
}

/// Compare the brokers' topics with the set. `Ok(vec![])` means all good.
pub async fn topic_problems(options: &Options) -> Result<Vec<TopicProblem>, Error> {
    let client: BaseConsumer = options
        .client_config("check")
        .create()
        .map_err(|e| unavailable("creating the metadata client", e))?;
    let specs = options.topics.specs();
    let brokers = options.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = client
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| unavailable(format!("metadata from {brokers}"), e))?;
        let mut problems = Vec::new();
        for spec in specs {
            match metadata.topics().iter().find(|t| t.name() == spec.name) {
                Some(t) if !t.partitions().is_empty() => {
                    let actual = t.partitions().len() as i32;
                    if actual != spec.partitions {
                        problems.push(TopicProblem::Partitions {
                            topic: spec.name,
                            expected: spec.partitions,
                            actual,
                        });
                    }
                }
                _ => problems.push(TopicProblem::Missing(spec.name)),
            }
        }
        Ok(problems)
    })
    .await
    .map_err(|e| Error::Unavailable {
        context: "checking topics".to_owned(),
        source: Box::new(e),
    })?
}

async fn check_topics(options: &Options) -> Result<(), Error> {
    let problems = topic_problems(options).await?;
    if problems.is_empty() {
        return Ok(());
    }
    let list = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::Unavailable {
        context: "checking the topic set".to_owned(),
        source: format!("{list} (run `mskflow topics create`)").into(),
    })
}

/// How far a durable consumer's group is behind: for every partition of the
/// topics its service follows ([`TopicSettings::followed`]), the high
/// watermark minus the group's committed offset (a partition the group never
/// committed counts from its low watermark). Zero when the group has
/// committed everything stored.
pub async fn group_lag(options: &Options, consumer: &str) -> Result<u64, Error> {
    let group = options.topics.group(consumer);
    let client: BaseConsumer = options
        .client_config("lag")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| unavailable("creating the lag client", e))?;
    let names = options.topics.followed(Some(service_of_consumer(consumer)));
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let (tpl, _) = whole_topics(&client, &names)?;
        let committed = client
            .committed_offsets(tpl, timeout)
            .map_err(|e| unavailable(format!("committed offsets of {group}"), e))?;
        let mut lag = 0u64;
        for e in committed.elements() {
            let (low, high) = client
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .map_err(|err| {
                    unavailable(format!("end of {}/{}", e.topic(), e.partition()), err)
                })?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            lag += u64::try_from(high - at).unwrap_or_default();
        }
        Ok(lag)
    })
    .await
    .map_err(|e| Error::Unavailable {
        context: "reading consumer lag".to_owned(),
        source: Box::new(e),
    })?
}
