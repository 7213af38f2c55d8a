//! The event envelope and the event-log port.
//!
//! Events are the record. Every service appends its events to streams (one
//! stream per referral, or per aggregate such as a group class) through the
//! [`EventLog`] port, and every projection or downstream consumer reads them
//! back through a [`Subscription`]. Adapters implement the port: the embedded
//! single-file store (`mskflow-eventlog-sqlite`) and, in production, Kafka.

mod instrumented;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use instrumented::Instrumented;

/// One stored event with everything needed to trace and order it.
///
/// The wire form (`serde`) is the envelope analysts and consumers see; the
/// payload is the event body as JSON, so old payloads can be upcast by the
/// reader (see `mskflow-events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of this event; consumers de-duplicate on it.
    pub event_id: Uuid,
    /// The stream (aggregate) this event belongs to: the referral id for
    /// referral events.
    pub stream_id: String,
    /// 1-based position of the event in its stream.
    pub sequence: u64,
    /// Position in the whole log (embedded) or the partition offset (Kafka).
    /// Informational: ordering is only guaranteed within a stream.
    pub position: u64,
    /// When the thing happened, as the domain saw it.
    pub occurred_at: DateTime<Utc>,
    /// When the log made it durable.
    pub recorded_at: DateTime<Utc>,
    /// The event or request that caused this one.
    pub causation_id: Option<Uuid>,
    /// Ties every event of one journey (for a referral: its first request).
    pub correlation_id: Uuid,
    /// W3C trace context (`traceparent`), if the writer had one.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, if any.
    pub tracestate: Option<String>,
    /// Event type name, e.g. `ReferralReceived`.
    pub event_type: String,
    /// Version of the payload schema for this event type.
    pub schema_version: u32,
    /// The event body.
    pub payload: serde_json::Value,
}

/// An event to append: the caller decides its id, type and time; the log
/// assigns sequence, position and recorded-at.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// Metadata shared by all events of one append.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    pub causation_id: Option<Uuid>,
    pub correlation_id: Uuid,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// What the writer believes the stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check (use only for streams with a single writer by construction).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last sequence must be exactly this (0 = empty).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (its last sequence).
    pub version: u64,
    /// Position of the last appended event in the log.
    pub position: u64,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// After the consumer's stored checkpoint, or the beginning if it has none.
    Checkpoint,
    /// From the first event, ignoring any stored checkpoint (replay). Commits
    /// still move the stored checkpoint forward.
    Beginning,
    /// After this log position, ignoring any stored checkpoint: a projection
    /// that keeps its own checkpoint beside its state resumes here. Only
    /// meaningful while [`EventLog::log_id`] is the one the position was
    /// read under.
    After(u64),
}

/// Errors of the event log. Each variant says how it crosses a boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Optimistic concurrency: the stream moved on since the writer read it.
    /// gRPC `ABORTED`; HTTP 409 with OperationOutcome `conflict`.
    #[error("stream {stream_id}: expected version {expected}, found {actual}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// An event with this id is already stored (a retried append).
    /// gRPC `ALREADY_EXISTS`; HTTP 409 `duplicate`.
    #[error("event {event_id} is already stored (stream {stream_id})")]
    DuplicateEvent { stream_id: String, event_id: Uuid },
    /// The append was refused before touching the store (e.g. empty batch).
    /// gRPC `INVALID_ARGUMENT`; HTTP 500 (a caller bug, not the sender's).
    #[error("invalid append to stream {stream_id}: {reason}")]
    InvalidAppend { stream_id: String, reason: String },
    /// The store could not be read or written. gRPC `UNAVAILABLE`;
    /// HTTP 503 with OperationOutcome `transient`.
    #[error("event store unavailable ({context}): {source}")]
    Unavailable {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored data could not be decoded. gRPC `DATA_LOSS`; HTTP 500 `exception`.
    #[error("corrupt event at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    /// The log has been shut down. gRPC `UNAVAILABLE`; HTTP 503 `transient`.
    #[error("event log is closed")]
    Closed,
}

/// The event-log port.
#[async_trait]
pub trait EventLog: Send + Sync + fmt::Debug {
    /// Append events to a stream atomically, checking the expected version.
    /// Returns only once the events are durable.
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, Error>;

    /// Read a stream's events with `sequence >= from_sequence`, in order.
    async fn read_stream(
        &self,
        stream_id: &str,
        from_sequence: u64,
    ) -> Result<Vec<Envelope>, Error>;

    /// Open a subscription to every event of the log for a named consumer.
    async fn subscribe(
        &self,
        consumer: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, Error>;

    /// Open a subscription for a named consumer that wants only events of
    /// these types. An adapter that can filter where the events are stored
    /// does, so events of other types are neither read nor decoded; others
    /// return every event (the default), so a consumer still checks each
    /// event's type. A filtering subscription reports how far it has read
    /// past what it left out ([`Subscription::scanned`]).
    async fn subscribe_types(
        &self,
        consumer: &str,
        start: StartFrom,
        types: &[&str],
    ) -> Result<Box<dyn Subscription>, Error> {
        let _ = types;
        self.subscribe(consumer, start).await
    }

    /// Cheap liveness check of the underlying store.
    async fn ping(&self) -> Result<(), Error>;

    /// Identity of this log's position numbering: a position read under one
    /// id names the same event for as long as the log answers the same id
    /// (the embedded file keeps one for its lifetime). `None` when positions
    /// are not stable across restarts (a log folded afresh in memory at each
    /// start): a projection then rebuilds from the beginning.
    fn log_id(&self) -> Option<String> {
        None
    }
}

/// A named consumer's view of the log.
///
/// Delivery is at-least-once: a consumer that stops before `commit` sees the
/// uncommitted events again, so handlers must be idempotent by `event_id`.
#[async_trait]
pub trait Subscription: Send + Sync + fmt::Debug {
    /// Wait for and return the next batch of at most `max` events. Never an
    /// empty batch, except from a filtering subscription
    /// ([`EventLog::subscribe_types`]) that has read past events it left
    /// out: its [`Subscription::scanned`] then moved.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error>;

    /// Return the next batch if one is available now, otherwise an empty vec.
    async fn poll_batch(&mut self, max: usize) -> Result<Vec<Envelope>, Error>;

    /// [`Subscription::next_batch`] for a read model: an adapter that holds
    /// payloads as text may hand them over unparsed ([`StoredEvent`]); the
    /// default parses them, as `next_batch` does.
    async fn next_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let batch = self.next_batch(max).await?;
        Ok(batch.into_iter().map(StoredEvent::parsed).collect())
    }

    /// [`Subscription::poll_batch`] with payloads possibly unparsed, as
    /// [`Subscription::next_stored`].
    async fn poll_stored(&mut self, max: usize) -> Result<Vec<StoredEvent>, Error> {
        let batch = self.poll_batch(max).await?;
        Ok(batch.into_iter().map(StoredEvent::parsed).collect())
    }

    /// Durably record that every event returned so far has been handled.
    async fn commit(&mut self) -> Result<(), Error>;

    /// Consumer lag: events stored but not yet returned, if known.
    async fn lag(&self) -> Result<u64, Error>;

    /// The log position this subscription has read up to, counting the
    /// events a filtering subscription left out: at least the position of
    /// the last event it returned. `None` when it returns every event (the
    /// last event returned is then how far it has read).
    fn scanned(&self) -> Option<u64> {
        None
    }
}

/// Serialise a domain event into a [`NewEvent`].
///
/// `T` is an adjacently tagged serde enum (`{"type": .., "data": ..}`); the
/// tag becomes `event_type` and the content the payload.
pub fn new_event<T: Serialize>(
    event: &T,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
) -> Result<NewEvent, serde_json::Error> {
    let value = serde_json::to_value(event)?;
    let (event_type, payload) = split_tagged(value)?;
    Ok(NewEvent {
        event_id: Uuid::new_v4(),
        event_type,
        schema_version,
        occurred_at,
        payload,
    })
}

fn split_tagged(
    value: serde_json::Value,
) -> Result<(String, serde_json::Value), serde_json::Error> {
    use serde::de::Error as _;
    match value {
        serde_json::Value::Object(mut map) => {
            let event_type = match map.remove("type") {
                Some(serde_json::Value::String(t)) => t,
                _ => return Err(serde_json::Error::custom("event has no string `type` tag")),
            };
            let payload = map.remove("data").unwrap_or(serde_json::Value::Null);
            Ok((event_type, payload))
        }
        _ => Err(serde_json::Error::custom("event is not a tagged object")),
    }
}

/// A JSON error's category and place, without its message (which may quote
/// stored data, patient data included): safe to log and to return.
pub fn json_error_reason(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// Decode an envelope's payload back into an adjacently tagged enum `T`.
///
/// The payload is read where it is, not copied: `T` sees the map
/// `{"type": <event_type>, "data": <payload>}` without it being built (a
/// `ReferralReceived` carries the whole FHIR message, and each of its
/// consumers decodes it).
pub fn decode<T: serde::de::DeserializeOwned>(envelope: &Envelope) -> Result<T, serde_json::Error> {
    T::deserialize(Tagged {
        event_type: &envelope.event_type,
        payload: Some(&envelope.payload),
    })
}

/// Decode an event of type `event_type` whose payload is the JSON text
/// `payload` into an adjacently tagged enum `T`, straight from the text.
pub fn decode_text<T: serde::de::DeserializeOwned>(
    event_type: &str,
    payload: &str,
) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(payload);
    let value = T::deserialize(Tagged {
        event_type,
        payload: Some(&mut de),
    })?;
    de.end()?;
    Ok(value)
}

/// An event as a read model folds it: the envelope and, when the log hands
/// it over unparsed, the payload as the JSON text it stored. A read model
/// then reads the fields it needs from the text, instead of the whole
/// payload being built as a [`serde_json::Value`] first (a
/// `ReferralReceived` carries the whole FHIR message).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    envelope: Envelope,
    /// The payload's text; the envelope's `payload` is `Null` meanwhile.
    text: Option<String>,
}

impl StoredEvent {
    /// An event whose payload is already parsed.
    pub fn parsed(envelope: Envelope) -> Self {
        Self {
            envelope,
            text: None,
        }
    }

    /// An event whose payload is still the stored text `payload` (the
    /// envelope's own `payload` is ignored and left `Null`).
    pub fn unparsed(mut envelope: Envelope, payload: String) -> Self {
        envelope.payload = serde_json::Value::Null;
        Self {
            envelope,
            text: Some(payload),
        }
    }

    /// The envelope. Its `payload` is `Null` while [`Self::payload_text`]
    /// holds the payload: read the payload with [`Self::decode`] or
    /// [`Self::read`], or [`Self::parse`] it first.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The payload's stored text, if it has not been parsed.
    pub fn payload_text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Parse the payload into the envelope, if it is still text.
    pub fn parse(&mut self) -> Result<&Envelope, serde_json::Error> {
        if let Some(text) = self.text.take() {
            match serde_json::from_str(&text) {
                Ok(payload) => self.envelope.payload = payload,
                Err(e) => {
                    self.text = Some(text);
                    return Err(e);
                }
            }
        }
        Ok(&self.envelope)
    }

    /// The envelope with its payload parsed.
    pub fn into_envelope(mut self) -> Result<Envelope, serde_json::Error> {
        self.parse()?;
        Ok(self.envelope)
    }

    /// Decode the event into an adjacently tagged enum `T` (as [`decode`]),
    /// from the text when the payload is still text.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match &self.text {
            Some(text) => decode_text(&self.envelope.event_type, text),
            None => decode(&self.envelope),
        }
    }

    /// Read the payload alone into `T` (a struct naming the fields wanted;
    /// the others are passed over), from the text when it is still text.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match &self.text {
            Some(text) => serde_json::from_str(text),
            None => T::deserialize(&self.envelope.payload),
        }
    }
}

/// An event type and its payload, deserialised as the adjacently tagged map
/// `{"type": .., "data": ..}`; the payload is any deserialiser (a parsed
/// value or the stored text).
struct Tagged<'t, D> {
    event_type: &'t str,
    payload: Option<D>,
}

impl<'de, D: serde::Deserializer<'de, Error = serde_json::Error>> serde::Deserializer<'de>
    for Tagged<'_, D>
{
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedMap {
            tagged: self,
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The two entries of [`Tagged`], in order.
struct TaggedMap<'t, D> {
    tagged: Tagged<'t, D>,
    next: u8,
}

impl<'de, D: serde::Deserializer<'de, Error = serde_json::Error>> serde::de::MapAccess<'de>
    for TaggedMap<'_, D>
{
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer as _;
        let key = match self.next {
            0 => "type",
            1 => "data",
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::Error as _;
        use serde::de::IntoDeserializer as _;
        self.next += 1;
        match self.next {
            1 => seed.deserialize(self.tagged.event_type.into_deserializer()),
            _ => match self.tagged.payload.take() {
                Some(payload) => seed.deserialize(payload),
                None => Err(serde_json::Error::custom("the payload was read already")),
            },
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(2_usize.saturating_sub(usize::from(self.next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Sample {
        Happened { n: u32 },
    }

    /// `ev` as the store hands it back.
    fn stored(ev: NewEvent) -> Envelope {
        Envelope {
            event_id: ev.event_id,
            stream_id: "s".into(),
            sequence: 1,
            position: 1,
            occurred_at: ev.occurred_at,
            recorded_at: ev.occurred_at,
            causation_id: None,
            correlation_id: Uuid::nil(),
            traceparent: None,
            tracestate: None,
            event_type: ev.event_type,
            schema_version: 1,
            payload: ev.payload,
        }
    }

    #[test]
    fn new_event_and_decode_round_trip() -> Result<(), serde_json::Error> {
        let ev = new_event(&Sample::Happened { n: 7 }, 1, Utc::now())?;
        assert_eq!(ev.event_type, "Happened");
        assert_eq!(ev.payload, serde_json::json!({"n": 7}));
        let env = stored(ev);
        assert_eq!(decode::<Sample>(&env)?, Sample::Happened { n: 7 });

        // Decoded in place, it fails where the map built in full fails.
        let built = |env: &Envelope| {
            serde_json::from_value::<Sample>(serde_json::json!({
                "type": env.event_type, "data": env.payload
            }))
        };
        let mut other = env.clone();
        other.event_type = "Unheard".into();
        assert!(decode::<Sample>(&other).is_err() && built(&other).is_err());
        let mut wrong = env.clone();
        wrong.payload = serde_json::json!({"n": "seven"});
        assert!(decode::<Sample>(&wrong).is_err() && built(&wrong).is_err());
        wrong.payload = serde_json::Value::Null;
        assert!(decode::<Sample>(&wrong).is_err() && built(&wrong).is_err());
        Ok(())
    }

    #[test]
    fn decode_of_the_text_equals_decode_of_the_value() -> Result<(), serde_json::Error> {
        let ev = new_event(&Sample::Happened { n: 7 }, 1, Utc::now())?;
        let env = stored(ev);
        let text = serde_json::to_string(&env.payload)?;
        let unparsed = StoredEvent::unparsed(env.clone(), text.clone());
        assert_eq!(unparsed.envelope().payload, serde_json::Value::Null);
        assert_eq!(unparsed.payload_text(), Some(text.as_str()));
        assert_eq!(unparsed.decode::<Sample>()?, decode::<Sample>(&env)?);
        #[derive(Debug, PartialEq, Deserialize)]
        struct N {
            n: u32,
        }
        assert_eq!(unparsed.read::<N>()?, N { n: 7 });
        assert_eq!(StoredEvent::parsed(env.clone()).read::<N>()?, N { n: 7 });
        assert_eq!(unparsed.clone().into_envelope()?, env);

        // Bad text fails to decode, to read and to parse, and stays text.
        let mut bad = StoredEvent::unparsed(env.clone(), r#"{"n": "seven"}"#.into());
        assert!(bad.decode::<Sample>().is_err() && bad.read::<N>().is_err());
        let mut cut = StoredEvent::unparsed(env.clone(), r#"{"n": 7"#.into());
        assert!(cut.decode::<Sample>().is_err() && cut.parse().is_err());
        assert!(cut.payload_text().is_some());
        let mut trailing = StoredEvent::unparsed(env, r#"{"n": 7} x"#.into());
        assert!(trailing.decode::<Sample>().is_err() && trailing.parse().is_err());
        assert!(bad.parse().is_ok() && bad.payload_text().is_none());
        Ok(())
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Shapes {
        Unit,
        Tuple(u8, String),
        Nested { inner: Vec<Option<Sample>> },
    }

    #[test]
    fn decode_in_place_equals_decode_of_the_built_map() -> Result<(), serde_json::Error> {
        for shape in [
            Shapes::Unit,
            Shapes::Tuple(3, "x".into()),
            Shapes::Nested {
                inner: vec![None, Some(Sample::Happened { n: 1 })],
            },
        ] {
            let ev = new_event(&shape, 1, Utc::now())?;
            let env = stored(ev);
            assert_eq!(decode::<Shapes>(&env)?, shape);
            let text = serde_json::to_string(&env.payload)?;
            assert_eq!(decode_text::<Shapes>(&env.event_type, &text)?, shape);
        }
        Ok(())
    }
}
