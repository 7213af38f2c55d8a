//! The local index: every instance's deterministic fold of the topics.
//!
//! Kafka gives each partition one order that every reader sees. The index
//! decides each append record in that order, the same way on every instance:
//!
//! * a record whose expected version does not match the stream's version at
//!   that point is **rejected** (the writer gets `WrongExpectedVersion`);
//! * a record carrying an event id already accepted is **rejected** as a
//!   duplicate;
//! * otherwise its events are **accepted** and get the next sequences.
//!
//! Because every record of one stream lands in one partition (keyed by
//! referral id), every instance makes the same decisions: two writers racing
//! on one version can never both win, whichever instances they run on.
//!
//! A record is applied only after the records its writer had applied (its
//! `after` frontier), so every instance sees causes before effects across
//! topics. No I/O here: `applier.rs` feeds it from Kafka.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use mskflow_eventlog::{Envelope, ExpectedVersion};
use uuid::Uuid;

use crate::record::{AppendRecord, FORMAT, FrontierEntry};

/// A topic-partition.
pub type Tp = (String, i32);

/// One record as read from a partition.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Decoded body, or why it could not be decoded.
    pub record: Result<AppendRecord, String>,
}

impl Incoming {
    /// Decode a record body.
    pub fn decode(topic: &str, partition: i32, offset: i64, payload: Option<&[u8]>) -> Self {
        let record = match payload {
            None => Err("record has no body".to_owned()),
            Some(bytes) => match serde_json::from_slice::<AppendRecord>(bytes) {
                Ok(r) if r.format == FORMAT => Ok(r),
                Ok(r) => Err(format!("unknown record format {}", r.format)),
                Err(e) => Err(mskflow_eventlog::json_error_reason(&e)),
            },
        };
        Self {
            topic: topic.to_owned(),
            partition,
            offset,
            record,
        }
    }
}

/// How a record was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its events are `log[first..first + count]`; the stream is now at
    /// `version`.
    Accepted {
        first: usize,
        count: usize,
        version: u64,
    },
    /// The stream was at `actual`, not what the writer expected.
    WrongVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// An event of the record was already accepted.
    Duplicate { stream_id: String, event_id: Uuid },
    /// The body could not be decoded (skipped by every reader alike).
    Undecodable { reason: String },
}

/// The fold. See the module documentation.
#[derive(Debug, Default)]
pub struct Index {
    log: Vec<Arc<Envelope>>,
    streams: HashMap<String, Vec<usize>>,
    event_ids: HashSet<Uuid>,
    applied: HashMap<Tp, i64>,
    outcomes: HashMap<(String, i32, i64), Outcome>,
    /// Which append each decoded record carried (its writer checks that the
    /// offset the brokers acknowledged holds its own record).
    appends: HashMap<(String, i32, i64), Uuid>,
    waiting: HashMap<Tp, VecDeque<Incoming>>,
    stalled: usize,
}

impl Index {
    /// Offer the next record of a partition (records of one partition must
    /// be offered in offset order). Returns how many records were applied
    /// (this one and any it unblocked); 0 when it has to wait for its
    /// writer's frontier.
    pub fn offer(&mut self, incoming: Incoming) -> usize {
        let tp = (incoming.topic.clone(), incoming.partition);
        if incoming.offset < self.next_offset(&tp.0, tp.1) {
            // Already applied (a re-fetch after a reconnect).
            return 0;
        }
        // The usual case: nothing waits in this partition and the record's
        // causes are applied.
        if self.waiting.get(&tp).is_none_or(VecDeque::is_empty) && self.ready(&incoming) {
            self.apply(incoming);
            return 1 + if self.stalled > 0 { self.drain() } else { 0 };
        }
        self.stalled += 1;
        self.waiting.entry(tp).or_default().push_back(incoming);
        self.drain()
    }

    /// Apply every waiting record whose frontier is satisfied.
    fn drain(&mut self) -> usize {
        let mut applied = 0;
        loop {
            let mut progressed = false;
            let keys: Vec<Tp> = self.waiting.keys().cloned().collect();
            for tp in keys {
                while let Some(front) = self.waiting.get(&tp).and_then(|q| q.front()) {
                    if !self.ready(front) {
                        break;
                    }
                    let Some(record) = self.waiting.get_mut(&tp).and_then(VecDeque::pop_front)
                    else {
                        break;
                    };
                    self.stalled -= 1;
                    self.apply(record);
                    applied += 1;
                    progressed = true;
                }
            }
            self.waiting.retain(|_, q| !q.is_empty());
            if !progressed {
                return applied;
            }
        }
    }

    fn ready(&self, incoming: &Incoming) -> bool {
        match &incoming.record {
            Err(_) => true,
            Ok(record) => record.after.iter().all(|f| {
                // A record never waits on its own partition's past (those
                // records are before it already).
                (f.topic == incoming.topic && f.partition == incoming.partition)
                    || self.next_offset(&f.topic, f.partition) >= f.next
            }),
        }
    }

    fn apply(&mut self, incoming: Incoming) {
        let key = (incoming.topic.clone(), incoming.partition, incoming.offset);
        let outcome = match incoming.record {
            Err(reason) => Outcome::Undecodable { reason },
            Ok(record) => {
                self.appends.insert(key.clone(), record.append_id);
                self.decide(record)
            }
        };
        self.applied
            .insert((incoming.topic, incoming.partition), incoming.offset + 1);
        self.outcomes.insert(key, outcome);
    }

    fn decide(&mut self, record: AppendRecord) -> Outcome {
        let version = self.version(&record.stream_id);
        if !record.expected.allows(version) {
            return Outcome::WrongVersion {
                stream_id: record.stream_id,
                expected: record.expected.into(),
                actual: version,
            };
        }
        let mut seen = HashSet::new();
        for e in &record.events {
            if self.event_ids.contains(&e.event_id) || !seen.insert(e.event_id) {
                return Outcome::Duplicate {
                    stream_id: record.stream_id,
                    event_id: e.event_id,
                };
            }
        }
        let first = self.log.len();
        let count = record.events.len();
        let indices = self.streams.entry(record.stream_id.clone()).or_default();
        for (i, e) in record.events.into_iter().enumerate() {
            let sequence = version + i as u64 + 1;
            let position = (first + i + 1) as u64;
            self.event_ids.insert(e.event_id);
            indices.push(first + i);
            self.log.push(Arc::new(Envelope {
                event_id: e.event_id,
                stream_id: record.stream_id.clone(),
                sequence,
                position,
                occurred_at: e.occurred_at,
                recorded_at: record.written_at,
                causation_id: record.metadata.causation_id,
                correlation_id: record.metadata.correlation_id,
                traceparent: record.metadata.traceparent.clone(),
                tracestate: record.metadata.tracestate.clone(),
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
            }));
        }
        Outcome::Accepted {
            first,
            count,
            version: version + count as u64,
        }
    }

    /// A stream's version (its last sequence; 0 when it has no events).
    pub fn version(&self, stream_id: &str) -> u64 {
        self.streams.get(stream_id).map_or(0, |v| v.len() as u64)
    }

    /// Has an event with this id been accepted?
    pub fn contains_event(&self, event_id: &Uuid) -> bool {
        self.event_ids.contains(event_id)
    }

    /// A stream's events with `sequence >= from`.
    pub fn read_stream(&self, stream_id: &str, from: u64) -> Vec<Envelope> {
        let Some(indices) = self.streams.get(stream_id) else {
            return Vec::new();
        };
        let skip = from.saturating_sub(1) as usize;
        indices
            .iter()
            .skip(skip)
            .filter_map(|&i| self.log.get(i).map(|e| e.as_ref().clone()))
            .collect()
    }

    /// Accepted events in local order, from index `from`, at most `max`.
    pub fn slice(&self, from: usize, max: usize) -> Vec<Envelope> {
        let end = from.saturating_add(max).min(self.log.len());
        self.log
            .get(from..end)
            .map(|s| s.iter().map(|e| e.as_ref().clone()).collect())
            .unwrap_or_default()
    }

    /// How many events have been accepted.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// No events accepted yet.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// The decision on one record, once applied.
    pub fn outcome(&self, topic: &str, partition: i32, offset: i64) -> Option<&Outcome> {
        self.outcomes.get(&(topic.to_owned(), partition, offset))
    }

    /// The append id of the record at this place, once applied (none for
    /// an undecodable record).
    pub fn append_at(&self, topic: &str, partition: i32, offset: i64) -> Option<Uuid> {
        self.appends
            .get(&(topic.to_owned(), partition, offset))
            .copied()
    }

    /// Next offset to apply in a partition.
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.applied
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Everything applied so far, for a writer's record.
    pub fn frontier(&self) -> Vec<FrontierEntry> {
        let mut f: Vec<FrontierEntry> = self
            .applied
            .iter()
            .filter(|(_, next)| **next > 0)
            .map(|((topic, partition), next)| FrontierEntry {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect();
        f.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        f
    }

    /// Records read but waiting for their writer's frontier.
    pub fn stalled(&self) -> usize {
        self.stalled
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test assertions")]
mod tests {
    use super::*;
    use crate::record::{WireEvent, WireExpected, WireMetadata};

    fn record(stream: &str, expected: WireExpected, ids: &[Uuid]) -> AppendRecord {
        AppendRecord {
            format: FORMAT,
            append_id: Uuid::new_v4(),
            stream_id: stream.to_owned(),
            expected,
            written_at: chrono::Utc::now(),
            metadata: WireMetadata {
                causation_id: None,
                correlation_id: Uuid::nil(),
                traceparent: None,
                tracestate: None,
            },
            events: ids
                .iter()
                .map(|id| WireEvent {
                    event_id: *id,
                    event_type: "Thing".to_owned(),
                    schema_version: 1,
                    occurred_at: chrono::Utc::now(),
                    payload: serde_json::json!({}),
                })
                .collect(),
            after: Vec::new(),
        }
    }

    fn incoming(t: &str, p: i32, o: i64, r: AppendRecord) -> Incoming {
        Incoming {
            topic: t.to_owned(),
            partition: p,
            offset: o,
            record: Ok(r),
        }
    }

    #[test]
    fn of_two_writers_on_one_version_exactly_one_wins() {
        let mut index = Index::default();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let c = Uuid::new_v4();
        index.offer(incoming(
            "t",
            0,
            0,
            record("s", WireExpected::NoStream, &[a]),
        ));
        // Both writers read version 1 and append.
        index.offer(incoming(
            "t",
            0,
            1,
            record("s", WireExpected::Exact(1), &[b]),
        ));
        index.offer(incoming(
            "t",
            0,
            2,
            record("s", WireExpected::Exact(1), &[c]),
        ));
        assert_eq!(
            index.outcome("t", 0, 1),
            Some(&Outcome::Accepted {
                first: 1,
                count: 1,
                version: 2
            })
        );
        assert!(matches!(
            index.outcome("t", 0, 2),
            Some(Outcome::WrongVersion { actual: 2, .. })
        ));
        let events = index.read_stream("s", 1);
        assert_eq!(
            events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_retried_append_is_a_duplicate_and_adds_nothing() {
        let mut index = Index::default();
        let a = Uuid::new_v4();
        index.offer(incoming("t", 0, 0, record("s", WireExpected::Any, &[a])));
        index.offer(incoming("t", 0, 1, record("s", WireExpected::Any, &[a])));
        assert!(matches!(
            index.outcome("t", 0, 1),
            Some(Outcome::Duplicate { .. })
        ));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn effects_wait_for_their_causes_across_topics() {
        let mut index = Index::default();
        let cause = Uuid::new_v4();
        let effect = Uuid::new_v4();
        // The effect's writer had applied intake/0 up to offset 1.
        let mut r = record("assessment-x", WireExpected::NoStream, &[effect]);
        r.after = vec![FrontierEntry {
            topic: "intake".to_owned(),
            partition: 0,
            next: 1,
        }];
        assert_eq!(index.offer(incoming("assessment", 0, 0, r)), 0);
        assert_eq!(index.stalled(), 1);
        assert!(index.is_empty());
        // The cause arrives: both apply, cause first.
        let applied = index.offer(incoming(
            "intake",
            0,
            0,
            record("referral-x", WireExpected::NoStream, &[cause]),
        ));
        assert_eq!(applied, 2);
        assert_eq!(index.stalled(), 0);
        let order: Vec<Uuid> = index.slice(0, 10).iter().map(|e| e.event_id).collect();
        assert_eq!(order, vec![cause, effect]);
    }

    #[test]
    fn undecodable_records_are_skipped_alike_and_counted_as_applied() {
        let mut index = Index::default();
        index.offer(Incoming::decode("t", 0, 0, Some(b"{not json")));
        index.offer(Incoming::decode("t", 0, 1, None));
        assert!(matches!(
            index.outcome("t", 0, 0),
            Some(Outcome::Undecodable { .. })
        ));
        assert_eq!(index.next_offset("t", 0), 2);
        // A re-fetched record is ignored.
        assert_eq!(index.offer(Incoming::decode("t", 0, 1, None)), 0);
    }

    #[test]
    fn a_batch_is_one_decision() {
        let mut index = Index::default();
        let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        index.offer(incoming(
            "t",
            0,
            0,
            record("s", WireExpected::NoStream, &ids),
        ));
        assert_eq!(index.version("s"), 3);
        assert_eq!(index.read_stream("s", 2).len(), 2);
        assert_eq!(
            index.frontier(),
            vec![FrontierEntry {
                topic: "t".to_owned(),
                partition: 0,
                next: 1
            }]
        );
    }
}
