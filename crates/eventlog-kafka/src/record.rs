//! The wire form of one append: one Kafka record per `append` call.
//!
//! An append of several events to one stream travels as a single record, so
//! it is atomic on every reader. The record carries the writer's expected
//! version (checked by every reader in partition order, see `index.rs`) and
//! the writer's applied frontier (so every reader applies it only after what
//! its writer had seen: causal order across topics).

use chrono::{DateTime, Utc};
use mskflow_eventlog::{ExpectedVersion, Metadata, NewEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the record format. Readers refuse formats they do not know
/// (recorded as undecodable and skipped, never guessed at).
pub const FORMAT: u32 = 1;

/// Kafka header names on every record (for tools such as `kcat` and for
/// analysts; the body is authoritative).
pub mod headers {
    pub const APPEND_ID: &str = "mskflow-append-id";
    pub const STREAM_ID: &str = "mskflow-stream-id";
    pub const EVENT_TYPES: &str = "mskflow-event-types";
    pub const FORMAT: &str = "mskflow-record-format";
    pub const TRACEPARENT: &str = "traceparent";
}

/// One append, as written to the service's topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppendRecord {
    pub format: u32,
    /// Unique per `append` call: the writer finds its outcome by it.
    pub append_id: Uuid,
    pub stream_id: String,
    pub expected: WireExpected,
    /// When the writer sent it: becomes `recorded_at` on every reader, so
    /// every instance shows the same time.
    pub written_at: DateTime<Utc>,
    pub metadata: WireMetadata,
    pub events: Vec<WireEvent>,
    /// The writer's applied frontier: for each topic-partition, the next
    /// offset it had applied when it wrote. Readers wait until they have
    /// applied as much before applying this record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<FrontierEntry>,
}

/// `ExpectedVersion` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "version", rename_all = "snake_case")]
pub enum WireExpected {
    Any,
    NoStream,
    Exact(u64),
}

impl From<ExpectedVersion> for WireExpected {
    fn from(e: ExpectedVersion) -> Self {
        match e {
            ExpectedVersion::Any => WireExpected::Any,
            ExpectedVersion::NoStream => WireExpected::NoStream,
            ExpectedVersion::Exact(v) => WireExpected::Exact(v),
        }
    }
}

impl From<WireExpected> for ExpectedVersion {
    fn from(e: WireExpected) -> Self {
        match e {
            WireExpected::Any => ExpectedVersion::Any,
            WireExpected::NoStream => ExpectedVersion::NoStream,
            WireExpected::Exact(v) => ExpectedVersion::Exact(v),
        }
    }
}

impl WireExpected {
    /// Does a stream currently at `version` satisfy this expectation?
    pub fn allows(self, version: u64) -> bool {
        match self {
            WireExpected::Any => true,
            WireExpected::NoStream => version == 0,
            WireExpected::Exact(v) => version == v,
        }
    }
}

/// `Metadata` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl From<&Metadata> for WireMetadata {
    fn from(m: &Metadata) -> Self {
        Self {
            causation_id: m.causation_id,
            correlation_id: m.correlation_id,
            traceparent: m.traceparent.clone(),
            tracestate: m.tracestate.clone(),
        }
    }
}

/// `NewEvent` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl From<NewEvent> for WireEvent {
    fn from(e: NewEvent) -> Self {
        Self {
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            occurred_at: e.occurred_at,
            payload: e.payload,
        }
    }
}

/// One entry of a frontier: `topic`/`partition` applied up to (not
/// including) `next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontierEntry {
    #[serde(rename = "t")]
    pub topic: String,
    #[serde(rename = "p")]
    pub partition: i32,
    #[serde(rename = "o")]
    pub next: i64,
}

/// The Kafka record key of a stream: the referral id when the stream is
/// `{kind}-{uuid}` (so every stream of one referral in a topic shares a
/// partition), otherwise the stream id itself.
pub fn partition_key(stream_id: &str) -> &str {
    if stream_id.len() > 37 {
        let (head, tail) = stream_id.split_at(stream_id.len() - 36);
        if head.ends_with('-') && Uuid::parse_str(tail).is_ok() {
            return tail;
        }
    }
    stream_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referral_streams_are_keyed_by_the_referral_id() {
        let id = "0b6f3b3c-7a36-4d5e-9a51-3f1f0c2b8a11";
        assert_eq!(partition_key(&format!("referral-{id}")), id);
        assert_eq!(partition_key(&format!("rehab-slot-{id}")), id);
        assert_eq!(
            partition_key("deadletter-assessment"),
            "deadletter-assessment"
        );
        assert_eq!(partition_key("audit-2026-11-23"), "audit-2026-11-23");
        assert_eq!(partition_key(id), id);
    }

    #[test]
    fn expectations() {
        assert!(WireExpected::Any.allows(7));
        assert!(WireExpected::NoStream.allows(0));
        assert!(!WireExpected::NoStream.allows(1));
        assert!(WireExpected::Exact(3).allows(3));
        assert!(!WireExpected::Exact(3).allows(4));
    }
}
