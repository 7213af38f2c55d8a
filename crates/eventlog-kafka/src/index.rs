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
//! topics. An instance that follows only some topics (its service's, see
//! `topics::reads_of`) waits only for causes on those: the others it never
//! reads. Sequences are therefore local to an instance (they always were:
//! two instances interleave partitions differently); decisions are not, as
//! each stream's records are decided in its own partition's order.
//!
//! What has been decided lives in a [`Store`] (`disk.rs`: one SQLite file
//! per instance). The index keeps in memory only the decisions of the batch
//! being applied, which [`Index::flush`] stores in one transaction together
//! with the next offset of each partition, and the few records waiting for
//! their frontier (not stored: a restart resumes at the stored offsets and
//! fetches them again). No I/O here beyond the store's calls; `lib.rs` feeds
//! it from Kafka.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use mskflow_eventlog::{Envelope, Error, ExpectedVersion};
use uuid::Uuid;

use crate::record::{AppendRecord, FORMAT, FrontierEntry};

/// A topic-partition.
pub type Tp = (String, i32);

/// A record's place: topic, partition, offset.
pub type Place = (String, i32, i64);

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
    /// Its events are the accepted events `first..first + count` in local
    /// order (0-based: their positions are `first + 1 ..= first + count`);
    /// the stream is now at `version`.
    Accepted {
        first: u64,
        count: u64,
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

/// The decision on one record and the append it carried (none for an
/// undecodable record): its writer checks that the offset the brokers
/// acknowledged holds its own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub outcome: Outcome,
    pub append_id: Option<Uuid>,
}

/// What one [`Index::flush`] stores, in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    /// Accepted events, in local order, with their positions.
    pub events: Vec<Envelope>,
    /// The new version of every stream the batch appended to.
    pub versions: HashMap<String, u64>,
    /// Every record decided, in the order decided.
    pub decided: Vec<(Place, Decided)>,
    /// The next offset to apply of every partition the batch moved.
    pub offsets: HashMap<Tp, i64>,
}

/// What a store holds when an index opens it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The next offset to apply, per partition (absent: from the start).
    pub offsets: HashMap<Tp, i64>,
    /// How many events were accepted (the last position).
    pub events: u64,
}

/// Where the index keeps what it decided. Reads see whole batches only:
/// what the last [`Store::commit`] stored.
pub trait Store {
    /// The stored offsets and event count.
    fn stored(&self) -> Result<Stored, Error>;
    /// A stream's version (its last sequence; 0 when it has no events).
    fn version(&self, stream_id: &str) -> Result<u64, Error>;
    /// Has an event with this id been accepted?
    fn contains_event(&self, event_id: &Uuid) -> Result<bool, Error>;
    /// A stream's events with `sequence >= from`, in order.
    fn read_stream(&self, stream_id: &str, from: u64) -> Result<Vec<Envelope>, Error>;
    /// Accepted events in local order after the first `from`, at most `max`.
    fn slice(&self, from: u64, max: usize) -> Result<Vec<Envelope>, Error>;
    /// The decision on the record at this place, if it was applied.
    fn decided(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<Decided>, Error>;
    /// Store a batch: all of it or, on error, nothing.
    fn commit(&self, batch: &Batch) -> Result<(), Error>;
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn stored(&self) -> Result<Stored, Error> {
        (**self).stored()
    }
    fn version(&self, stream_id: &str) -> Result<u64, Error> {
        (**self).version(stream_id)
    }
    fn contains_event(&self, event_id: &Uuid) -> Result<bool, Error> {
        (**self).contains_event(event_id)
    }
    fn read_stream(&self, stream_id: &str, from: u64) -> Result<Vec<Envelope>, Error> {
        (**self).read_stream(stream_id, from)
    }
    fn slice(&self, from: u64, max: usize) -> Result<Vec<Envelope>, Error> {
        (**self).slice(from, max)
    }
    fn decided(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<Decided>, Error> {
        (**self).decided(topic, partition, offset)
    }
    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        (**self).commit(batch)
    }
}

/// The fold. See the module documentation.
///
/// After an error from [`Index::offer`] or [`Index::flush`] the index is
/// ahead of its store (or half-way through a decision): drop it and open a
/// new one on the store, which resumes at the stored offsets.
#[derive(Debug)]
pub struct Index<S> {
    store: S,
    /// Next offset to apply per partition, counting the unflushed batch.
    applied: HashMap<Tp, i64>,
    /// Events accepted, counting the unflushed batch.
    len: u64,
    batch: Batch,
    /// Event ids accepted in the unflushed batch.
    batch_ids: HashSet<Uuid>,
    waiting: HashMap<Tp, VecDeque<Incoming>>,
    stalled: usize,
    /// The topics this instance reads, when not all of them
    /// ([`Index::following`]).
    follows: Option<HashSet<String>>,
}

impl<S: Store> Index<S> {
    /// An index resuming from what `store` holds.
    pub fn open(store: S) -> Result<Self, Error> {
        let stored = store.stored()?;
        Ok(Self {
            store,
            applied: stored.offsets,
            len: stored.events,
            batch: Batch::default(),
            batch_ids: HashSet::new(),
            waiting: HashMap::new(),
            stalled: 0,
            follows: None,
        })
    }

    /// This index is offered the records of `topics` only: a frontier entry
    /// on any other topic is a cause this instance never reads, so a record
    /// does not wait for it. (Its effects on the topics read are ordered by
    /// their own frontiers.)
    #[must_use]
    pub fn following<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.follows = Some(topics.into_iter().map(Into::into).collect());
        self
    }

    fn follows(&self, topic: &str) -> bool {
        self.follows.as_ref().is_none_or(|f| f.contains(topic))
    }

    /// Offer the next record of a partition (records of one partition must
    /// be offered in offset order). Returns how many records were applied
    /// (this one and any it unblocked); 0 when it has to wait for its
    /// writer's frontier. Applied records are stored by the next
    /// [`Index::flush`].
    pub fn offer(&mut self, incoming: Incoming) -> Result<usize, Error> {
        let tp = (incoming.topic.clone(), incoming.partition);
        if incoming.offset < self.next_offset(&tp.0, tp.1) {
            // Already applied (a re-fetch after a reconnect).
            return Ok(0);
        }
        // The usual case: nothing waits in this partition and the record's
        // causes are applied.
        if self.waiting.get(&tp).is_none_or(VecDeque::is_empty) && self.ready(&incoming) {
            self.apply(incoming)?;
            return Ok(1 + if self.stalled > 0 { self.drain()? } else { 0 });
        }
        self.stalled += 1;
        self.waiting.entry(tp).or_default().push_back(incoming);
        self.drain()
    }

    /// Apply every waiting record whose frontier is satisfied.
    fn drain(&mut self) -> Result<usize, Error> {
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
                    self.apply(record)?;
                    applied += 1;
                    progressed = true;
                }
            }
            self.waiting.retain(|_, q| !q.is_empty());
            if !progressed {
                return Ok(applied);
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
                    || !self.follows(&f.topic)
                    || self.next_offset(&f.topic, f.partition) >= f.next
            }),
        }
    }

    fn apply(&mut self, incoming: Incoming) -> Result<(), Error> {
        let decided = match incoming.record {
            Err(reason) => Decided {
                outcome: Outcome::Undecodable { reason },
                append_id: None,
            },
            Ok(record) => {
                let append_id = Some(record.append_id);
                Decided {
                    outcome: self.decide(record)?,
                    append_id,
                }
            }
        };
        let tp = (incoming.topic, incoming.partition);
        self.applied.insert(tp.clone(), incoming.offset + 1);
        self.batch.offsets.insert(tp.clone(), incoming.offset + 1);
        self.batch
            .decided
            .push(((tp.0, tp.1, incoming.offset), decided));
        Ok(())
    }

    /// A stream's version, counting the unflushed batch.
    fn version(&self, stream_id: &str) -> Result<u64, Error> {
        match self.batch.versions.get(stream_id) {
            Some(v) => Ok(*v),
            None => self.store.version(stream_id),
        }
    }

    /// Was this event accepted, counting the unflushed batch?
    fn accepted(&self, event_id: &Uuid) -> Result<bool, Error> {
        Ok(self.batch_ids.contains(event_id) || self.store.contains_event(event_id)?)
    }

    /// Decide one record. Every lookup comes before the first change, so an
    /// error leaves the batch as it was.
    fn decide(&mut self, record: AppendRecord) -> Result<Outcome, Error> {
        let version = self.version(&record.stream_id)?;
        if !record.expected.allows(version) {
            return Ok(Outcome::WrongVersion {
                stream_id: record.stream_id,
                expected: record.expected.into(),
                actual: version,
            });
        }
        let mut seen = HashSet::new();
        for e in &record.events {
            if !seen.insert(e.event_id) || self.accepted(&e.event_id)? {
                return Ok(Outcome::Duplicate {
                    stream_id: record.stream_id,
                    event_id: e.event_id,
                });
            }
        }
        let first = self.len;
        let count = record.events.len() as u64;
        for (i, e) in record.events.into_iter().enumerate() {
            let i = i as u64;
            self.batch_ids.insert(e.event_id);
            self.batch.events.push(Envelope {
                event_id: e.event_id,
                stream_id: record.stream_id.clone(),
                sequence: version + i + 1,
                position: first + i + 1,
                occurred_at: e.occurred_at,
                recorded_at: record.written_at,
                causation_id: record.metadata.causation_id,
                correlation_id: record.metadata.correlation_id,
                traceparent: record.metadata.traceparent.clone(),
                tracestate: record.metadata.tracestate.clone(),
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
            });
        }
        self.len += count;
        self.batch
            .versions
            .insert(record.stream_id, version + count);
        Ok(Outcome::Accepted {
            first,
            count,
            version: version + count,
        })
    }

    /// Store every decision since the last flush in one transaction, and
    /// return them (empty when there were none). On error nothing is
    /// stored and the index must be reopened (see [`Index`]).
    pub fn flush(&mut self) -> Result<Batch, Error> {
        if self.batch.decided.is_empty() {
            return Ok(Batch::default());
        }
        self.store.commit(&self.batch)?;
        self.batch_ids.clear();
        Ok(std::mem::take(&mut self.batch))
    }

    /// Next offset to apply in a partition (counting the unflushed batch).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.applied
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Next offset to apply per partition (counting the unflushed batch;
    /// the stored offsets right after [`Index::open`] or a flush).
    pub fn offsets(&self) -> &HashMap<Tp, i64> {
        &self.applied
    }

    /// Events accepted (counting the unflushed batch): the last position.
    pub fn events(&self) -> u64 {
        self.len
    }

    /// Records read but waiting for their writer's frontier.
    pub fn stalled(&self) -> usize {
        self.stalled
    }

    /// The store under the index.
    #[cfg(test)]
    pub fn store(&self) -> &S {
        &self.store
    }
}

/// The frontier a writer puts on its record: every partition applied up to
/// `next` (partitions at 0 left out), in a stable order.
pub fn frontier(applied: &HashMap<Tp, i64>) -> Vec<FrontierEntry> {
    let mut f: Vec<FrontierEntry> = applied
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

/// A store in memory, for tests of the fold without a file.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: std::sync::Mutex<Memory>,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct Memory {
    log: Vec<Envelope>,
    streams: HashMap<String, Vec<usize>>,
    event_ids: HashSet<Uuid>,
    decided: HashMap<Place, Decided>,
    offsets: HashMap<Tp, i64>,
}

#[cfg(test)]
impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[cfg(test)]
impl Store for MemoryStore {
    fn stored(&self) -> Result<Stored, Error> {
        Ok(self.with(|m| Stored {
            offsets: m.offsets.clone(),
            events: m.log.len() as u64,
        }))
    }
    fn version(&self, stream_id: &str) -> Result<u64, Error> {
        Ok(self.with(|m| m.streams.get(stream_id).map_or(0, |v| v.len() as u64)))
    }
    fn contains_event(&self, event_id: &Uuid) -> Result<bool, Error> {
        Ok(self.with(|m| m.event_ids.contains(event_id)))
    }
    fn read_stream(&self, stream_id: &str, from: u64) -> Result<Vec<Envelope>, Error> {
        Ok(self.with(|m| {
            let skip = from.saturating_sub(1) as usize;
            m.streams
                .get(stream_id)
                .map(|ix| ix.iter().skip(skip).map(|&i| m.log[i].clone()).collect())
                .unwrap_or_default()
        }))
    }
    fn slice(&self, from: u64, max: usize) -> Result<Vec<Envelope>, Error> {
        Ok(self.with(|m| {
            let from = (from as usize).min(m.log.len());
            let end = from.saturating_add(max).min(m.log.len());
            m.log[from..end].to_vec()
        }))
    }
    fn decided(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<Decided>, Error> {
        Ok(self.with(|m| {
            m.decided
                .get(&(topic.to_owned(), partition, offset))
                .cloned()
        }))
    }
    fn commit(&self, batch: &Batch) -> Result<(), Error> {
        self.with(|m| {
            for e in &batch.events {
                m.streams
                    .entry(e.stream_id.clone())
                    .or_default()
                    .push(m.log.len());
                m.event_ids.insert(e.event_id);
                m.log.push(e.clone());
            }
            for (place, d) in &batch.decided {
                m.decided.insert(place.clone(), d.clone());
            }
            m.offsets
                .extend(batch.offsets.iter().map(|(k, v)| (k.clone(), *v)));
        });
        Ok(())
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

    type Mem = Index<Arc<MemoryStore>>;

    fn new_index() -> Mem {
        Index::open(Arc::new(MemoryStore::default())).unwrap()
    }

    /// Offer one record and store what it applied (one batch per record).
    fn offer(index: &mut Mem, incoming: Incoming) -> usize {
        let applied = index.offer(incoming).unwrap();
        index.flush().unwrap();
        applied
    }

    fn outcome(index: &Mem, t: &str, p: i32, o: i64) -> Option<Outcome> {
        index.store().decided(t, p, o).unwrap().map(|d| d.outcome)
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
        let mut index = new_index();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let c = Uuid::new_v4();
        offer(
            &mut index,
            incoming("t", 0, 0, record("s", WireExpected::NoStream, &[a])),
        );
        // Both writers read version 1 and append.
        offer(
            &mut index,
            incoming("t", 0, 1, record("s", WireExpected::Exact(1), &[b])),
        );
        offer(
            &mut index,
            incoming("t", 0, 2, record("s", WireExpected::Exact(1), &[c])),
        );
        assert_eq!(
            outcome(&index, "t", 0, 1),
            Some(Outcome::Accepted {
                first: 1,
                count: 1,
                version: 2
            })
        );
        assert!(matches!(
            outcome(&index, "t", 0, 2),
            Some(Outcome::WrongVersion { actual: 2, .. })
        ));
        let events = index.store().read_stream("s", 1).unwrap();
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
        let mut index = new_index();
        let a = Uuid::new_v4();
        offer(
            &mut index,
            incoming("t", 0, 0, record("s", WireExpected::Any, &[a])),
        );
        offer(
            &mut index,
            incoming("t", 0, 1, record("s", WireExpected::Any, &[a])),
        );
        assert!(matches!(
            outcome(&index, "t", 0, 1),
            Some(Outcome::Duplicate { .. })
        ));
        assert_eq!(index.store().stored().unwrap().events, 1);
    }

    #[test]
    fn effects_wait_for_their_causes_across_topics() {
        let mut index = new_index();
        let cause = Uuid::new_v4();
        let effect = Uuid::new_v4();
        // The effect's writer had applied intake/0 up to offset 1.
        let mut r = record("assessment-x", WireExpected::NoStream, &[effect]);
        r.after = vec![FrontierEntry {
            topic: "intake".to_owned(),
            partition: 0,
            next: 1,
        }];
        assert_eq!(offer(&mut index, incoming("assessment", 0, 0, r)), 0);
        assert_eq!(index.stalled(), 1);
        assert_eq!(index.store().stored().unwrap().events, 0);
        // The cause arrives: both apply, cause first.
        let applied = offer(
            &mut index,
            incoming(
                "intake",
                0,
                0,
                record("referral-x", WireExpected::NoStream, &[cause]),
            ),
        );
        assert_eq!(applied, 2);
        assert_eq!(index.stalled(), 0);
        let order: Vec<Uuid> = index
            .store()
            .slice(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(order, vec![cause, effect]);
    }

    #[test]
    fn an_instance_that_does_not_read_the_causes_topic_does_not_wait_for_it() {
        let mut index = new_index().following(["assessment"]);
        let effect = Uuid::new_v4();
        let mut r = record("assessment-x", WireExpected::NoStream, &[effect]);
        r.after = vec![
            FrontierEntry {
                topic: "intake".to_owned(),
                partition: 0,
                next: 1,
            },
            FrontierEntry {
                topic: "assessment".to_owned(),
                partition: 1,
                next: 1,
            },
        ];
        // It still waits for a cause on a topic it reads ...
        assert_eq!(offer(&mut index, incoming("assessment", 0, 0, r)), 0);
        assert_eq!(index.stalled(), 1);
        // ... and applies once that cause is in, never waiting for intake.
        let cause = record("assessment-y", WireExpected::NoStream, &[Uuid::new_v4()]);
        assert_eq!(offer(&mut index, incoming("assessment", 1, 0, cause)), 2);
        assert_eq!(index.stalled(), 0);
        assert!(matches!(
            outcome(&index, "assessment", 0, 0),
            Some(Outcome::Accepted { .. })
        ));
    }

    #[test]
    fn undecodable_records_are_skipped_alike_and_counted_as_applied() {
        let mut index = new_index();
        offer(&mut index, Incoming::decode("t", 0, 0, Some(b"{not json")));
        offer(&mut index, Incoming::decode("t", 0, 1, None));
        assert!(matches!(
            outcome(&index, "t", 0, 0),
            Some(Outcome::Undecodable { .. })
        ));
        assert_eq!(index.next_offset("t", 0), 2);
        // A re-fetched record is ignored.
        assert_eq!(offer(&mut index, Incoming::decode("t", 0, 1, None)), 0);
    }

    #[test]
    fn a_batch_is_one_decision() {
        let mut index = new_index();
        let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        offer(
            &mut index,
            incoming("t", 0, 0, record("s", WireExpected::NoStream, &ids)),
        );
        assert_eq!(index.store().version("s").unwrap(), 3);
        assert_eq!(index.store().read_stream("s", 2).unwrap().len(), 2);
        assert_eq!(
            frontier(&index.store().stored().unwrap().offsets),
            vec![FrontierEntry {
                topic: "t".to_owned(),
                partition: 0,
                next: 1
            }]
        );
    }

    #[test]
    fn a_reopened_index_resumes_where_its_store_ends_and_decides_alike() {
        let store = Arc::new(MemoryStore::default());
        let mut index = Index::open(store.clone()).unwrap();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        index
            .offer(incoming(
                "t",
                0,
                0,
                record("s", WireExpected::NoStream, &[a]),
            ))
            .unwrap();
        index
            .offer(incoming(
                "t",
                1,
                0,
                record("u", WireExpected::NoStream, &[b]),
            ))
            .unwrap();
        let flushed = index.flush().unwrap();
        assert_eq!(flushed.decided.len(), 2);
        assert_eq!(flushed.events.len(), 2);
        // Decided but not flushed: lost with the index.
        index
            .offer(incoming(
                "t",
                0,
                1,
                record("s", WireExpected::Exact(1), &[Uuid::new_v4()]),
            ))
            .unwrap();
        drop(index);

        let mut index = Index::open(store.clone()).unwrap();
        assert_eq!(index.next_offset("t", 0), 1);
        assert_eq!(index.next_offset("t", 1), 1);
        // A re-fetched record already stored is ignored.
        assert_eq!(
            index
                .offer(incoming(
                    "t",
                    0,
                    0,
                    record("s", WireExpected::NoStream, &[a])
                ))
                .unwrap(),
            0
        );
        // The stale writer is refused after the restart, the next position
        // follows the stored ones, and a stored id is still a duplicate.
        index
            .offer(incoming(
                "t",
                0,
                1,
                record("s", WireExpected::NoStream, &[Uuid::new_v4()]),
            ))
            .unwrap();
        index
            .offer(incoming(
                "t",
                0,
                2,
                record("s", WireExpected::Exact(1), &[Uuid::new_v4()]),
            ))
            .unwrap();
        index
            .offer(incoming("t", 1, 1, record("u", WireExpected::Any, &[a])))
            .unwrap();
        index.flush().unwrap();
        assert!(matches!(
            outcome(&index, "t", 0, 1),
            Some(Outcome::WrongVersion { actual: 1, .. })
        ));
        assert_eq!(
            outcome(&index, "t", 0, 2),
            Some(Outcome::Accepted {
                first: 2,
                count: 1,
                version: 2
            })
        );
        assert!(matches!(
            outcome(&index, "t", 1, 1),
            Some(Outcome::Duplicate { event_id, .. }) if event_id == a
        ));
        let positions: Vec<u64> = store
            .slice(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(positions, vec![1, 2, 3]);
    }

    #[test]
    fn a_record_waiting_for_its_causes_is_not_stored_and_is_fetched_again() {
        let store = Arc::new(MemoryStore::default());
        let mut index = Index::open(store.clone()).unwrap();
        let mut r = record("assessment-x", WireExpected::NoStream, &[Uuid::new_v4()]);
        r.after = vec![FrontierEntry {
            topic: "intake".to_owned(),
            partition: 0,
            next: 1,
        }];
        assert_eq!(
            index
                .offer(incoming("assessment", 0, 0, r.clone()))
                .unwrap(),
            0
        );
        index.flush().unwrap();
        drop(index);
        // The stored offset stays before it: a restart reads it again.
        let mut index = Index::open(store.clone()).unwrap();
        assert_eq!(index.next_offset("assessment", 0), 0);
        assert_eq!(index.offer(incoming("assessment", 0, 0, r)).unwrap(), 0);
        let cause = record("referral-x", WireExpected::NoStream, &[Uuid::new_v4()]);
        assert_eq!(index.offer(incoming("intake", 0, 0, cause)).unwrap(), 2);
        let flushed = index.flush().unwrap();
        assert_eq!(flushed.decided.len(), 2);
        assert_eq!(store.stored().unwrap().offsets.len(), 2);
    }

    /// A store whose next commit fails (a full disk, say).
    #[derive(Debug, Default)]
    struct Failing {
        inner: MemoryStore,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Store for Failing {
        fn stored(&self) -> Result<Stored, Error> {
            self.inner.stored()
        }
        fn version(&self, stream_id: &str) -> Result<u64, Error> {
            self.inner.version(stream_id)
        }
        fn contains_event(&self, event_id: &Uuid) -> Result<bool, Error> {
            self.inner.contains_event(event_id)
        }
        fn read_stream(&self, stream_id: &str, from: u64) -> Result<Vec<Envelope>, Error> {
            self.inner.read_stream(stream_id, from)
        }
        fn slice(&self, from: u64, max: usize) -> Result<Vec<Envelope>, Error> {
            self.inner.slice(from, max)
        }
        fn decided(
            &self,
            topic: &str,
            partition: i32,
            offset: i64,
        ) -> Result<Option<Decided>, Error> {
            self.inner.decided(topic, partition, offset)
        }
        fn commit(&self, batch: &Batch) -> Result<(), Error> {
            if self.fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::Unavailable {
                    context: "test".to_owned(),
                    source: "disk full".into(),
                });
            }
            self.inner.commit(batch)
        }
    }

    #[test]
    fn after_a_failed_flush_a_reopened_index_decides_the_batch_again_alike() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let records = vec![
            incoming("t", 0, 0, record("s", WireExpected::NoStream, &[a])),
            incoming("t", 0, 1, record("s", WireExpected::Exact(1), &[b])),
            incoming(
                "t",
                0,
                2,
                record("s", WireExpected::Exact(1), &[Uuid::new_v4()]),
            ),
            incoming("t", 0, 3, record("u", WireExpected::Any, &[a])),
        ];
        let store = Arc::new(Failing::default());
        let mut index = Index::open(store.clone()).unwrap();
        index.offer(records[0].clone()).unwrap();
        index.flush().unwrap();
        for r in &records[1..] {
            index.offer(r.clone()).unwrap();
        }
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(index.flush().is_err());
        drop(index);
        // Nothing of the failed batch is stored; the reopened index resumes
        // before it and, fed the same records again, decides them alike.
        assert_eq!(
            store.stored().unwrap().offsets.get(&("t".to_owned(), 0)),
            Some(&1)
        );
        let mut index = Index::open(store.clone()).unwrap();
        for r in &records {
            index.offer(r.clone()).unwrap();
        }
        index.flush().unwrap();
        let mut reference = new_index();
        for r in &records {
            offer(&mut reference, r.clone());
        }
        for o in 0..4 {
            assert_eq!(
                store.decided("t", 0, o).unwrap(),
                reference.store().decided("t", 0, o).unwrap()
            );
        }
        assert_eq!(
            store.slice(0, 10).unwrap(),
            reference.store().slice(0, 10).unwrap()
        );
        assert_eq!(store.version("s").unwrap(), 2);
    }
}
