//! Which request ids have been processed: the duplicate index.
//!
//! The index is a projection on disk (`intake-index.db`, table `requests`:
//! request id -> referral id, from `ReferralReceived` and
//! `ReferralCancelled`), resumed from its checkpoint at start-up. In memory
//! sits only an overlay of this instance's requests that are in flight, or
//! recorded but not yet folded into the table; entries leave it once the
//! projection has passed their position, so it stays as small as the number
//! of requests in flight.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use mskflow_eventlog::{Envelope, StoredEvent};
use mskflow_projection::rusqlite::{OptionalExtension, Transaction, params};
use mskflow_projection::{ApplyError, Projection};
use serde::Deserialize;
use uuid::Uuid;

/// The stored index.
#[derive(Debug, Default)]
pub struct RequestIndex;

/// The events the index folds.
const EVENT_TYPES: &[&str] = &["ReferralReceived", "ReferralCancelled"];

/// The two fields the index reads of `ReferralReceived` and
/// `ReferralCancelled` payloads; the rest (the FHIR message of a received
/// referral among it) is passed over, not kept.
#[derive(Deserialize)]
struct RequestRef {
    referral_id: Uuid,
    request_id: Uuid,
}

impl RequestIndex {
    fn insert(
        tx: &Transaction<'_>,
        ids: Result<RequestRef, serde_json::Error>,
    ) -> Result<(), ApplyError> {
        let ids = ids.map_err(|e| ApplyError::Skip(mskflow_eventlog::json_error_reason(&e)))?;
        tx.prepare_cached(
            "INSERT INTO requests (request_id, referral_id) VALUES (?1, ?2) \
             ON CONFLICT (request_id) DO NOTHING",
        )?
        .execute(params![
            ids.request_id.as_bytes().as_slice(),
            ids.referral_id.as_bytes().as_slice()
        ])?;
        Ok(())
    }
}

impl Projection for RequestIndex {
    const NAME: &'static str = "intake-index";
    const VERSION: u32 = 1;
    const SCHEMA: &'static str = "
        CREATE TABLE requests (
            request_id  BLOB PRIMARY KEY,
            referral_id BLOB NOT NULL
        ) WITHOUT ROWID;
    ";

    fn wants(&self, envelope: &Envelope) -> bool {
        EVENT_TYPES.contains(&envelope.event_type.as_str())
    }

    fn event_types(&self) -> Option<Vec<&'static str>> {
        Some(EVENT_TYPES.to_vec())
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        if !self.wants(envelope) {
            return Ok(());
        }
        Self::insert(tx, RequestRef::deserialize(&envelope.payload))
    }

    /// Reads the two ids straight from the stored text.
    fn apply_stored(
        &mut self,
        tx: &Transaction<'_>,
        event: &mut StoredEvent,
    ) -> Result<(), ApplyError> {
        if !self.wants(event.envelope()) {
            return Ok(());
        }
        Self::insert(tx, event.read::<RequestRef>())
    }
}

/// The referral a stored request id maps to.
pub(crate) fn stored_referral(
    conn: &mskflow_projection::rusqlite::Connection,
    request_id: Uuid,
) -> mskflow_projection::rusqlite::Result<Option<Uuid>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT referral_id FROM requests WHERE request_id = ?1")?
        .query_row([request_id.as_bytes().as_slice()], |row| row.get(0))
        .optional()?;
    Ok(bytes.and_then(|b| Uuid::from_slice(&b).ok()))
}

/// An entry of the overlay.
#[derive(Debug, Clone, Copy)]
struct Pending {
    referral_id: Uuid,
    /// The log position of the append that recorded it; `None` while the
    /// append is in flight.
    position: Option<u64>,
}

/// This instance's requests not yet in the stored index.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    entries: Mutex<HashMap<Uuid, Pending>>,
}

impl Overlay {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Pending>> {
        // Every update is one insert or remove: consistent after a panic.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserve `request_id` for `referral_id`, or say which referral holds
    /// it already. Entries the projection has folded (position at most
    /// `applied`) are dropped on the way.
    pub(crate) fn reserve(
        &self,
        request_id: Uuid,
        referral_id: Uuid,
        applied: u64,
    ) -> Result<(), Uuid> {
        let mut entries = self.lock();
        if let Some(existing) = entries.get(&request_id) {
            return Err(existing.referral_id);
        }
        if entries.len() >= 256 {
            entries.retain(|_, p| p.position.is_none_or(|pos| pos > applied));
        }
        entries.insert(
            request_id,
            Pending {
                referral_id,
                position: None,
            },
        );
        Ok(())
    }

    /// The append recorded the request at `position`.
    pub(crate) fn recorded(&self, request_id: Uuid, position: u64) {
        if let Some(p) = self.lock().get_mut(&request_id) {
            p.position = Some(position);
        }
    }

    /// The request was not recorded: free its id.
    pub(crate) fn release(&self, request_id: Uuid) {
        self.lock().remove(&request_id);
    }

    /// Requests held in memory (in flight or not yet folded).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
