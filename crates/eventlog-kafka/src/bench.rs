//! The brokers' own ceiling, measured with a plain client: keyed records
//! produced with `acks=all` by an idempotent producer (as every append is),
//! read back by a consumer of the same partitions while they are written,
//! with record sizes taken from mskflow's own topics. Nothing of the event
//! log runs here: no index, no decisions, no frontier; what this reaches is
//! what the brokers (and librdkafka) can do for mskflow's traffic.
//!
//! * [`profile_topics`] reads the topic set after a load run: how many
//!   records each topic holds (from its offsets) and their mean size (from
//!   the newest records of each partition).
//! * [`run`] writes `records` records to a topic of its own with the same
//!   partition count, sizes drawn from a [`SizeMix`], and reports records/s,
//!   MB/s, the produce acknowledgement and produce-to-consume latencies.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use mskflow_eventlog::Error;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use uuid::Uuid;

use crate::{Options, millis, unavailable};

/// The header carrying the send time (microseconds since the Unix epoch).
const SENT_AT: &str = "mskflow.bench.sent-at";

/// Record sizes to draw from: `(bytes, weight)`, the weight being the share
/// of records of that size (for a profile, the topic's record count).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeMix(pub Vec<(usize, u64)>);

impl SizeMix {
    /// The mix of a profiled topic set: each topic's mean record size,
    /// weighted by its record count. `None` when the topics are empty.
    pub fn of_profile(profile: &[TopicProfile]) -> Option<Self> {
        let sizes: Vec<(usize, u64)> = profile
            .iter()
            .filter(|t| t.records > 0 && t.mean_bytes > 0.0)
            .map(|t| (t.mean_bytes.round() as usize, t.records))
            .collect();
        (!sizes.is_empty()).then_some(Self(sizes))
    }

    /// Parse `BYTES:WEIGHT,BYTES:WEIGHT` (a weight may be left out: 1).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut sizes = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (bytes, weight) = part.split_once(':').unwrap_or((part, "1"));
            let bytes: usize = bytes
                .trim()
                .parse()
                .map_err(|_| format!("record size {bytes:?} is not a number of bytes"))?;
            let weight: u64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {weight:?} is not a whole number"))?;
            if bytes == 0 || weight == 0 {
                return Err(format!("{part}: sizes and weights must be above 0"));
            }
            sizes.push((bytes, weight));
        }
        if sizes.is_empty() {
            return Err("no record sizes given".to_owned());
        }
        Ok(Self(sizes))
    }

    /// The mean record size of the mix.
    pub fn mean(&self) -> f64 {
        let total: u64 = self.0.iter().map(|(_, w)| w).sum();
        let bytes: f64 = self.0.iter().map(|(b, w)| *b as f64 * *w as f64).sum();
        bytes / total.max(1) as f64
    }

    /// The size of record `i`: spread evenly, so any run of records holds
    /// the mix's shares (a low-discrepancy walk over the weights).
    pub fn size(&self, i: u64) -> usize {
        let total: u64 = self.0.iter().map(|(_, w)| w).sum::<u64>().max(1);
        // The fractional part of i times the golden ratio, in [0, total).
        let at = ((i as f64 * 0.618_033_988_749_895).fract() * total as f64) as u64;
        let mut acc = 0;
        for (bytes, weight) in &self.0 {
            acc += weight;
            if at < acc {
                return *bytes;
            }
        }
        self.0.last().map_or(1, |(b, _)| *b)
    }
}

impl Default for SizeMix {
    /// mskflow's traffic without a profile: one referral record (the FHIR
    /// message in `ReferralReceived` with its triage, about 9 kB) to about
    /// seven smaller ones (assessment, outcomes, audit, analytics; under
    /// 1 kB).
    fn default() -> Self {
        Self(vec![(9_400, 1), (800, 7)])
    }
}

impl fmt::Display for SizeMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(b, w)| format!("{b}:{w}")).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// One topic of the set, as found after a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicProfile {
    pub topic: String,
    /// Records in the topic (high minus low watermark, every partition).
    pub records: u64,
    /// Mean size (key, value and headers) of the records sampled.
    pub mean_bytes: f64,
    /// How many records the mean was taken over.
    pub sampled: u64,
}

/// How many of each partition's newest records a profile reads.
const PROFILE_SAMPLE: i64 = 500;

/// Count every topic of the set (the log's topics and the analysts' topic)
/// and measure the mean size of its newest records.
pub async fn profile_topics(options: &Options) -> Result<Vec<TopicProfile>, Error> {
    let client: BaseConsumer = options
        .client_config("bench-profile")
        .set("group.id", format!("{}-profile", options.client_id))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| unavailable("creating the profile client", e))?;
    let names: Vec<String> = options.topics.specs().into_iter().map(|s| s.name).collect();
    tokio::task::spawn_blocking(move || profile_blocking(&client, &names))
        .await
        .map_err(|e| Error::Unavailable {
            context: "profiling the topics".to_owned(),
            source: Box::new(e),
        })?
}

fn profile_blocking(client: &BaseConsumer, names: &[String]) -> Result<Vec<TopicProfile>, Error> {
    let timeout = Duration::from_secs(10);
    let mut out = Vec::new();
    for name in names {
        let metadata = client
            .fetch_metadata(Some(name), timeout)
            .map_err(|e| unavailable(format!("metadata of {name}"), e))?;
        let mut records = 0u64;
        let mut tpl = TopicPartitionList::new();
        let mut wanted: HashMap<i32, i64> = HashMap::new();
        for topic in metadata.topics() {
            for p in topic.partitions() {
                let (low, high) = client
                    .fetch_watermarks(name, p.id(), timeout)
                    .map_err(|e| unavailable(format!("end of {name}/{}", p.id()), e))?;
                records += u64::try_from(high - low).unwrap_or_default();
                if high > low {
                    let from = (high - PROFILE_SAMPLE).max(low);
                    tpl.add_partition_offset(name, p.id(), Offset::Offset(from))
                        .map_err(|e| unavailable(format!("assigning {name}/{}", p.id()), e))?;
                    wanted.insert(p.id(), high);
                }
            }
        }
        let (mut sampled, mut bytes) = (0u64, 0u64);
        if !wanted.is_empty() {
            client
                .assign(&tpl)
                .map_err(|e| unavailable(format!("assigning {name}"), e))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !wanted.is_empty() && Instant::now() < deadline {
                match client.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        bytes += record_bytes(&m) as u64;
                        sampled += 1;
                        if wanted
                            .get(&m.partition())
                            .is_some_and(|h| m.offset() + 1 >= *h)
                        {
                            wanted.remove(&m.partition());
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic = %name, error = %e, "profile read failed; retrying")
                    }
                    None => {}
                }
            }
        }
        out.push(TopicProfile {
            topic: name.clone(),
            records,
            mean_bytes: if sampled == 0 {
                0.0
            } else {
                bytes as f64 / sampled as f64
            },
            sampled,
        });
    }
    Ok(out)
}

/// A record's size on the wire, roughly: key, value and headers.
fn record_bytes<M: rdkafka::Message>(m: &M) -> usize {
    let headers = m.headers().map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len) + headers
}

/// What a ceiling run does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Records to produce (and consume).
    pub records: u64,
    /// Records sent and not yet acknowledged, at most.
    pub in_flight: usize,
    pub sizes: SizeMix,
    /// The producer's `linger.ms` (mskflow's appends use 1).
    pub linger: Duration,
    /// The consumer's `fetch.wait.max.ms` (mskflow's readers use the same).
    pub fetch_wait: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            records: 20_000,
            in_flight: 1_000,
            sizes: SizeMix::default(),
            linger: Duration::from_millis(1),
            fetch_wait: crate::FETCH_WAIT,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of microsecond samples (sorted here).
    pub fn of(mut micros: Vec<u64>) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
            micros[i] as f64 / 1000.0
        };
        Self {
            count: micros.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What a ceiling run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub topic: String,
    pub partitions: i32,
    pub records: u64,
    pub consumed: u64,
    pub bytes: u64,
    pub mean_bytes: f64,
    pub in_flight: usize,
    pub sizes: SizeMix,
    /// From the first send to the last record read back.
    pub seconds: f64,
    /// Records produced and read back per second of the run.
    pub records_per_sec: f64,
    /// Megabytes (10^6) per second of the run.
    pub mb_per_sec: f64,
    /// From the send to the brokers' acknowledgement.
    pub ack_ms: Latency,
    /// From the send to the consumer receiving the record.
    pub produce_to_consume_ms: Latency,
}

impl BenchReport {
    /// The run as text.
    pub fn render(&self) -> String {
        format!(
            "broker ceiling:        {} records ({} read back) of mean {:.0} B (mix {}), {} partitions, {} in flight\n\
             ceiling throughput:    {:.0} records/s, {:.1} MB/s over {:.2} s\n\
             produce ack:           p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n\
             produce -> consume:    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
            self.records,
            self.consumed,
            self.mean_bytes,
            self.sizes,
            self.partitions,
            self.in_flight,
            self.records_per_sec,
            self.mb_per_sec,
            self.seconds,
            self.ack_ms.p50,
            self.ack_ms.p99,
            self.ack_ms.max,
            self.produce_to_consume_ms.p50,
            self.produce_to_consume_ms.p99,
            self.produce_to_consume_ms.max,
        )
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Create the bench's own topic (same partitions and replication as the
/// set's topics).
async fn create_bench_topic(options: &Options, topic: &str) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = options
        .client_config("bench-admin")
        .create()
        .map_err(|e| unavailable("creating the admin client", e))?;
    let new = NewTopic::new(
        topic,
        options.topics.partitions,
        TopicReplication::Fixed(options.topics.replication),
    );
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| unavailable("creating the bench topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Unavailable {
                    context: format!("creating topic {name}"),
                    source: Box::new(rdkafka::error::KafkaError::AdminOp(code)),
                });
            }
        }
    }
    Ok(())
}

/// Produce `bench.records` keyed records to a new topic and read them back
/// at the same time. See the module documentation.
pub async fn run(options: &Options, bench: &BenchOptions) -> Result<BenchReport, Error> {
    if bench.records == 0 || bench.in_flight == 0 {
        return Err(Error::Unavailable {
            context: "the broker ceiling".to_owned(),
            source: "records and in-flight records must be above 0".into(),
        });
    }
    let topic = format!(
        "{}.bench.{}",
        options.topics.prefix,
        Uuid::new_v4().simple()
    );
    create_bench_topic(options, &topic).await?;
    let partitions = options.topics.partitions;

    let consumer: StreamConsumer = options
        .client_config("bench-consumer")
        .set(
            "group.id",
            format!("{}-bench-{}", options.client_id, Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", millis(bench.fetch_wait))
        .create()
        .map_err(|e| unavailable("creating the bench consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .map_err(|e| unavailable(format!("assigning {topic}/{p}"), e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| unavailable("assigning the bench topic", e))?;
    let producer: FutureProducer = options
        .client_config("bench-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", millis(bench.linger))
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| unavailable("creating the bench producer", e))?;

    let total = bench.records;
    let consumed = Arc::new(AtomicU64::new(0));
    let reader = {
        let consumed = consumed.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            let mut last = Instant::now();
            while consumed.load(Ordering::Relaxed) < total {
                let m = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "bench consumer error; retrying");
                        continue;
                    }
                    Ok(Ok(m)) => m,
                };
                let now = now_micros();
                last = Instant::now();
                let sent = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == SENT_AT))
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(sent) = sent {
                    latencies.push(now.saturating_sub(sent).max(1));
                }
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            (latencies, last)
        })
    };

    // Bodies of each size, made once.
    let bodies: HashMap<usize, Vec<u8>> = bench
        .sizes
        .0
        .iter()
        .map(|(b, _)| (*b, (0..*b).map(|i| b'a' + (i % 26) as u8).collect()))
        .collect();
    let bytes = AtomicU64::new(0);
    let started = Instant::now();
    let acks: Vec<Result<u64, Error>> = futures::stream::iter(0..total)
        .map(|i| {
            let size = bench.sizes.size(i);
            let key = Uuid::new_v4().to_string();
            let append_id = Uuid::new_v4().to_string();
            let stream = format!("referral-{key}");
            let producer = &producer;
            let topic = &topic;
            let bodies = &bodies;
            let bytes = &bytes;
            async move {
                let body = bodies.get(&size).map_or(&[][..], Vec::as_slice);
                let sent = now_micros().to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: crate::record::headers::APPEND_ID,
                        value: Some(append_id.as_str()),
                    })
                    .insert(Header {
                        key: crate::record::headers::STREAM_ID,
                        value: Some(stream.as_str()),
                    })
                    .insert(Header {
                        key: SENT_AT,
                        value: Some(sent.as_str()),
                    });
                bytes.fetch_add((key.len() + body.len()) as u64, Ordering::Relaxed);
                let at = Instant::now();
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(key.as_str())
                            .payload(body)
                            .headers(headers),
                        Timeout::After(Duration::from_secs(30)),
                    )
                    .await
                    .map(|_| u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX))
                    .map_err(|(e, _)| unavailable(format!("producing to {topic}"), e))
            }
        })
        .buffer_unordered(bench.in_flight)
        .collect()
        .await;
    let mut ack = Vec::with_capacity(acks.len());
    for a in acks {
        ack.push(a?);
    }
    let (latencies, last) = reader.await.map_err(|e| Error::Unavailable {
        context: "reading the bench topic".to_owned(),
        source: Box::new(e),
    })?;
    let seconds = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    let consumed = consumed.load(Ordering::Relaxed);
    let bytes = bytes.load(Ordering::Relaxed);
    Ok(BenchReport {
        topic,
        partitions,
        records: total,
        consumed,
        bytes,
        mean_bytes: bytes as f64 / total as f64,
        in_flight: bench.in_flight,
        sizes: bench.sizes.clone(),
        seconds,
        records_per_sec: consumed as f64 / seconds,
        mb_per_sec: bytes as f64 * (consumed as f64 / total as f64) / seconds / 1e6,
        ack_ms: Latency::of(ack),
        produce_to_consume_ms: Latency::of(latencies),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_and_keeps_its_shares_over_any_run() {
        let mix = SizeMix::parse("9000:1, 700:3").unwrap();
        assert_eq!(mix.0, vec![(9000, 1), (700, 3)]);
        assert!((mix.mean() - 2775.0).abs() < 1e-9);
        let big = (0..1000).filter(|i| mix.size(*i) == 9000).count();
        assert!((230..=270).contains(&big), "{big}");
        // Any short window holds both sizes.
        let window: Vec<usize> = (500..508).map(|i| mix.size(i)).collect();
        assert!(
            window.contains(&9000) && window.contains(&700),
            "{window:?}"
        );
        assert_eq!(SizeMix::parse("512").unwrap().0, vec![(512, 1)]);
        assert!(SizeMix::parse("").is_err());
        assert!(SizeMix::parse("0:1").is_err());
        assert!(SizeMix::parse("big:1").is_err());
        assert_eq!(mix.to_string(), "9000:1,700:3");
    }

    #[test]
    fn a_profile_weights_each_topic_by_its_records() {
        let t = |topic: &str, records, mean_bytes| TopicProfile {
            topic: topic.to_owned(),
            records,
            mean_bytes,
            sampled: records,
        };
        let mix = SizeMix::of_profile(&[
            t("intake", 100, 9400.4),
            t("empty", 0, 0.0),
            t("audit", 300, 612.0),
        ])
        .unwrap();
        assert_eq!(mix.0, vec![(9400, 100), (612, 300)]);
        assert_eq!(SizeMix::of_profile(&[t("empty", 0, 0.0)]), None);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let l = Latency::of((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!((l.count, l.p50, l.p99, l.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }
}
