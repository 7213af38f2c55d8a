//! The read model, kept on disk (`assessment-view.db`): every episode and
//! slot, folded from the log in log order, resumed from its checkpoint.
//!
//! Tables:
//!
//! * `episodes`: each episode's folded state (JSON of [`StoredEpisode`]) and
//!   stream version, with the worklist's columns (status, priority,
//!   triaged-at, pathway) and the worklist order (urgent, soon, routine;
//!   within a priority the longest wait first; then referral id) as an index
//!   over the episodes awaiting booking;
//! * `episode_slots`: the slots each episode legitimately holds (its
//!   booking, and those it used up), for the dangling-hold check;
//! * `slots`: each slot's folded [`SlotState`] (JSON) and version, with its
//!   start and holder, indexed for the free slots (earliest first) and the
//!   held ones.
//!
//! Redelivered events (sequence at most the stored version) change nothing,
//! so replaying the log from empty gives the same tables. Decisions never
//! read this: they fold the aggregate's stream.

use chrono::{DateTime, Utc};
use mskflow_eventlog::{Envelope, decode};
use mskflow_events::assessment::{AssessmentEvent, DischargeReason, Slot, SlotEvent};
use mskflow_events::types::{FcpPriority, Pathway};
use mskflow_projection::columns::{
    json_column, sequence, skip_json, sortable, stored_state, uuid_column,
};
use mskflow_projection::rusqlite::{self, Connection, OptionalExtension, Transaction, params};
use mskflow_projection::{ApplyError, Projection};
use uuid::Uuid;

use crate::domain::{self, EpisodeState, Status};
use crate::slot::{self, SlotState};

/// Stream prefix of episodes.
pub const EPISODE_PREFIX: &str = "assessment-";
/// Stream prefix of clinician slots.
pub const SLOT_PREFIX: &str = "fcp-slot-";

/// A referral awaiting an FCP appointment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorklistEntry {
    pub referral_id: Uuid,
    pub priority: FcpPriority,
    pub pathway: Pathway,
    pub triaged_at: DateTime<Utc>,
    pub missed: u32,
}

/// A slot held by a referral whose episode does not account for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DanglingHold {
    pub slot_id: Uuid,
    pub referral_id: Uuid,
    /// The slot stream's version.
    pub version: u64,
}

/// The stored part of an episode's state: what the worklist and the
/// dangling-hold check need. The assessment's outcomes and onward referrals
/// (the outbound `ServiceRequest`, patient-identifiable) stay in the log;
/// [`domain::apply`] never reads them, so folding the stored part gives the
/// same stored part as folding the whole state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredEpisode {
    pub referral_id: Option<Uuid>,
    pub status: Option<Status>,
    pub version: u64,
    pub priority: Option<FcpPriority>,
    pub pathway: Option<Pathway>,
    pub triaged_at: Option<DateTime<Utc>>,
    pub booking: Option<Slot>,
    pub used_slots: Vec<Uuid>,
    pub missed: u32,
    pub discharge_reason: Option<DischargeReason>,
    pub notify_referrer: bool,
}

impl From<&EpisodeState> for StoredEpisode {
    fn from(s: &EpisodeState) -> Self {
        Self {
            referral_id: s.referral_id,
            status: s.status,
            version: s.version,
            priority: s.priority,
            pathway: s.pathway,
            triaged_at: s.triaged_at,
            booking: s.booking.clone(),
            used_slots: s.used_slots.clone(),
            missed: s.missed,
            discharge_reason: s.discharge_reason,
            notify_referrer: s.notify_referrer,
        }
    }
}

impl From<StoredEpisode> for EpisodeState {
    fn from(s: StoredEpisode) -> Self {
        Self {
            referral_id: s.referral_id,
            status: s.status,
            version: s.version,
            priority: s.priority,
            pathway: s.pathway,
            triaged_at: s.triaged_at,
            booking: s.booking,
            used_slots: s.used_slots,
            missed: s.missed,
            discharge_reason: s.discharge_reason,
            notify_referrer: s.notify_referrer,
            ..Self::default()
        }
    }
}

/// The assessment read model's projection.
#[derive(Debug, Default)]
pub struct AssessmentView;

fn id_after(stream_id: &str, prefix: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix(prefix)
        .and_then(|rest| Uuid::parse_str(rest).ok())
}

impl AssessmentView {
    fn apply_episode(
        tx: &Transaction<'_>,
        envelope: &Envelope,
        referral_id: Uuid,
    ) -> Result<(), ApplyError> {
        let key = referral_id.as_bytes().as_slice();
        let Some(stored) = stored_state(
            tx,
            "SELECT version, state FROM episodes WHERE referral_id = ?1",
            key,
            envelope.sequence,
        )?
        else {
            return Ok(());
        };
        let state = match stored {
            Some(text) => EpisodeState::from(
                serde_json::from_str::<StoredEpisode>(&text).map_err(|e| skip_json(&e))?,
            ),
            None => EpisodeState::default(),
        };
        let event = decode::<AssessmentEvent>(envelope).map_err(|e| skip_json(&e))?;
        let mut state = domain::apply(state, &event);
        state.version = envelope.sequence;
        let stored = StoredEpisode::from(&state);
        let json = serde_json::to_string(&stored).map_err(|e| skip_json(&e))?;
        tx.prepare_cached(
            "INSERT INTO episodes \
             (referral_id, version, status, priority, pathway, triaged_at, state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (referral_id) DO UPDATE SET version = excluded.version, \
             status = excluded.status, priority = excluded.priority, \
             pathway = excluded.pathway, triaged_at = excluded.triaged_at, state = excluded.state",
        )?
        .execute(params![
            key,
            sequence(envelope.sequence),
            state.status.map(Status::code),
            state.priority.map(|p| p as i64),
            state.pathway.map(Pathway::code),
            state.triaged_at.map(sortable),
            json
        ])?;
        tx.prepare_cached("DELETE FROM episode_slots WHERE referral_id = ?1")?
            .execute([key])?;
        let held = state
            .booking
            .iter()
            .map(|b| b.slot_id)
            .chain(state.used_slots.iter().copied());
        for slot_id in held {
            tx.prepare_cached(
                "INSERT INTO episode_slots (referral_id, slot_id) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![key, slot_id.as_bytes().as_slice()])?;
        }
        Ok(())
    }

    fn apply_slot(
        tx: &Transaction<'_>,
        envelope: &Envelope,
        slot_id: Uuid,
    ) -> Result<(), ApplyError> {
        let key = slot_id.as_bytes().as_slice();
        let Some(stored) = stored_state(
            tx,
            "SELECT version, state FROM slots WHERE slot_id = ?1",
            key,
            envelope.sequence,
        )?
        else {
            return Ok(());
        };
        let state = match stored {
            Some(text) => serde_json::from_str::<SlotState>(&text).map_err(|e| skip_json(&e))?,
            None => SlotState::default(),
        };
        let event = decode::<SlotEvent>(envelope).map_err(|e| skip_json(&e))?;
        let mut state = slot::apply(state, &event);
        state.version = envelope.sequence;
        let json = serde_json::to_string(&state).map_err(|e| skip_json(&e))?;
        tx.prepare_cached(
            "INSERT INTO slots (slot_id, version, start, held_by, state) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (slot_id) DO UPDATE SET version = excluded.version, \
             start = excluded.start, held_by = excluded.held_by, state = excluded.state",
        )?
        .execute(params![
            key,
            sequence(envelope.sequence),
            state.slot.as_ref().map(|s| sortable(s.start)),
            state.held_by.map(|r| r.as_bytes().to_vec()),
            json
        ])?;
        Ok(())
    }
}

impl Projection for AssessmentView {
    const NAME: &'static str = "assessment-view";
    const VERSION: u32 = 1;
    const SCHEMA: &'static str = "
        CREATE TABLE episodes (
            referral_id BLOB    PRIMARY KEY,
            version     INTEGER NOT NULL,
            status      TEXT,
            priority    INTEGER,
            pathway     TEXT,
            triaged_at  TEXT,
            state       TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX worklist ON episodes (priority, triaged_at, referral_id)
            WHERE status = 'awaiting-booking';
        CREATE TABLE episode_slots (
            referral_id BLOB NOT NULL,
            slot_id     BLOB NOT NULL,
            PRIMARY KEY (referral_id, slot_id)
        ) WITHOUT ROWID;
        CREATE TABLE slots (
            slot_id BLOB    PRIMARY KEY,
            version INTEGER NOT NULL,
            start   TEXT,
            held_by BLOB,
            state   TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX free_slots ON slots (start, slot_id)
            WHERE start IS NOT NULL AND held_by IS NULL;
        CREATE INDEX held_slots ON slots (held_by) WHERE held_by IS NOT NULL;
    ";

    fn wants(&self, envelope: &Envelope) -> bool {
        let stream = envelope.stream_id.as_str();
        let event_type = envelope.event_type.as_str();
        (stream.starts_with(EPISODE_PREFIX) && AssessmentEvent::TYPES.contains(&event_type))
            || (stream.starts_with(SLOT_PREFIX) && SlotEvent::TYPES.contains(&event_type))
    }

    fn event_types(&self) -> Option<Vec<&'static str>> {
        Some([AssessmentEvent::TYPES, SlotEvent::TYPES].concat())
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        if let Some(referral_id) = id_after(&envelope.stream_id, EPISODE_PREFIX) {
            Self::apply_episode(tx, envelope, referral_id)
        } else if let Some(slot_id) = id_after(&envelope.stream_id, SLOT_PREFIX) {
            Self::apply_slot(tx, envelope, slot_id)
        } else {
            Ok(())
        }
    }
}

/// Referrals awaiting an appointment (on `pathway` when given): urgent,
/// soon, routine; within a priority the longest wait first (ties by
/// referral id, so the order is total and stable across rebuilds).
pub fn worklist(
    conn: &Connection,
    pathway: Option<Pathway>,
) -> rusqlite::Result<Vec<WorklistEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT referral_id, state FROM episodes \
         WHERE status = 'awaiting-booking' AND (?1 IS NULL OR pathway = ?1) \
         ORDER BY priority, triaged_at, referral_id",
    )?;
    let mut rows = stmt.query([pathway.map(Pathway::code)])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        let text: String = row.get(1)?;
        let e: StoredEpisode = json_column(1, &text)?;
        if let (Some(priority), Some(pathway), Some(triaged_at)) =
            (e.priority, e.pathway, e.triaged_at)
        {
            out.push(WorklistEntry {
                referral_id: uuid_column(0, &id)?,
                priority,
                pathway,
                triaged_at,
                missed: e.missed,
            });
        }
    }
    Ok(out)
}

/// Published slots nobody holds, earliest first (ties by slot id).
pub fn free_slots(conn: &Connection) -> rusqlite::Result<Vec<Slot>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state FROM slots WHERE start IS NOT NULL AND held_by IS NULL \
         ORDER BY start, slot_id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let text: String = row.get(0)?;
        let state: SlotState = json_column(0, &text)?;
        out.extend(state.slot);
    }
    Ok(out)
}

/// A published slot's state.
pub fn slot(conn: &Connection, slot_id: Uuid) -> rusqlite::Result<Option<SlotState>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT state FROM slots WHERE slot_id = ?1")?
        .query_row([slot_id.as_bytes().as_slice()], |row| row.get(0))
        .optional()?;
    let state: Option<SlotState> = text.map(|t| json_column(0, &t)).transpose()?;
    Ok(state.filter(|s| s.slot.is_some()))
}

/// Slots held by a referral whose episode neither has them booked nor
/// used them up: what is left when a booking stopped half-way.
pub fn dangling_holds(conn: &Connection) -> rusqlite::Result<Vec<DanglingHold>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.slot_id, s.held_by, s.version FROM slots s \
         WHERE s.held_by IS NOT NULL AND NOT EXISTS ( \
             SELECT 1 FROM episode_slots e \
             WHERE e.referral_id = s.held_by AND e.slot_id = s.slot_id) \
         ORDER BY s.slot_id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let slot_id: Vec<u8> = row.get(0)?;
        let held_by: Vec<u8> = row.get(1)?;
        let version: i64 = row.get(2)?;
        out.push(DanglingHold {
            slot_id: uuid_column(0, &slot_id)?,
            referral_id: uuid_column(1, &held_by)?,
            version: u64::try_from(version).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Every row of the read model's tables, sorted by key: to compare a
/// rebuilt read model with an incrementally maintained one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    pub episodes: Vec<EpisodeRow>,
    /// `(referral id, slot id)`.
    pub episode_slots: Vec<(Uuid, Uuid)>,
    pub slots: Vec<SlotRow>,
}

/// One stored row of `episodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeRow {
    pub referral_id: Uuid,
    pub version: i64,
    pub status: Option<String>,
    pub priority: Option<i64>,
    pub pathway: Option<String>,
    pub triaged_at: Option<String>,
    /// The [`StoredEpisode`] as JSON.
    pub state: String,
}

/// One stored row of `slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRow {
    pub slot_id: Uuid,
    pub version: i64,
    pub start: Option<String>,
    pub held_by: Option<Uuid>,
    /// The [`SlotState`] as JSON.
    pub state: String,
}

pub fn dump(conn: &Connection) -> rusqlite::Result<Dump> {
    let mut dump = Dump::default();
    let mut stmt = conn.prepare(
        "SELECT referral_id, version, status, priority, pathway, triaged_at, state \
         FROM episodes ORDER BY referral_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        dump.episodes.push(EpisodeRow {
            referral_id: uuid_column(0, &id)?,
            version: row.get(1)?,
            status: row.get(2)?,
            priority: row.get(3)?,
            pathway: row.get(4)?,
            triaged_at: row.get(5)?,
            state: row.get(6)?,
        });
    }
    let mut stmt = conn
        .prepare("SELECT referral_id, slot_id FROM episode_slots ORDER BY referral_id, slot_id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let referral: Vec<u8> = row.get(0)?;
        let slot: Vec<u8> = row.get(1)?;
        dump.episode_slots
            .push((uuid_column(0, &referral)?, uuid_column(1, &slot)?));
    }
    let mut stmt =
        conn.prepare("SELECT slot_id, version, start, held_by, state FROM slots ORDER BY slot_id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        let held_by: Option<Vec<u8>> = row.get(3)?;
        dump.slots.push(SlotRow {
            slot_id: uuid_column(0, &id)?,
            version: row.get(1)?,
            start: row.get(2)?,
            held_by: held_by.map(|b| uuid_column(3, &b)).transpose()?,
            state: row.get(4)?,
        });
    }
    Ok(dump)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use mskflow_events::assessment::AssessmentRequested;

    use super::*;

    fn envelope(
        position: u64,
        referral_id: Uuid,
        priority: FcpPriority,
        minute: u32,
    ) -> Result<Envelope, serde_json::Error> {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 23, 9, minute, 0)
            .single()
            .unwrap_or_default();
        let event = AssessmentEvent::AssessmentRequested(AssessmentRequested {
            referral_id,
            priority,
            pathway: Pathway::Knee,
            triaged_at: at,
        });
        let new = mskflow_eventlog::new_event(&event, 1, at)?;
        Ok(Envelope {
            event_id: new.event_id,
            stream_id: format!("{EPISODE_PREFIX}{referral_id}"),
            sequence: 1,
            position,
            occurred_at: at,
            recorded_at: at,
            causation_id: None,
            correlation_id: Uuid::nil(),
            traceparent: None,
            tracestate: None,
            event_type: new.event_type,
            schema_version: 1,
            payload: new.payload,
        })
    }

    /// The tables in memory, with `log` applied in one transaction.
    fn fold(log: &[&Envelope]) -> Result<Connection, Box<dyn std::error::Error>> {
        let mut conn = Connection::open_in_memory()?;
        conn.execute_batch(AssessmentView::SCHEMA)?;
        let tx = conn.transaction()?;
        let mut view = AssessmentView;
        for e in log {
            if view.wants(e) {
                view.apply(&tx, e).map_err(|e| e.to_string())?;
            }
        }
        tx.commit()?;
        Ok(conn)
    }

    #[test]
    fn replay_and_redelivery_give_the_same_worklist() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let log = [
            envelope(1, a, FcpPriority::Routine, 0)?,
            envelope(2, b, FcpPriority::Urgent, 30)?,
            envelope(3, c, FcpPriority::Routine, 10)?,
        ];
        let once = fold(&log.iter().collect::<Vec<_>>())?;
        let ids: Vec<Uuid> = worklist(&once, None)?
            .iter()
            .map(|e| e.referral_id)
            .collect();
        assert_eq!(ids, [b, a, c]);
        // Delivered twice (at-least-once): nothing changes.
        let twice = fold(&log.iter().chain(log.iter()).collect::<Vec<_>>())?;
        assert_eq!(worklist(&twice, None)?, worklist(&once, None)?);
        assert_eq!(dump(&twice)?, dump(&once)?);
        assert!(worklist(&twice, Some(Pathway::Hip))?.is_empty());
        Ok(())
    }

    #[test]
    fn an_undecodable_event_is_skipped_not_folded() -> Result<(), Box<dyn std::error::Error>> {
        let mut bad = envelope(1, Uuid::from_u128(9), FcpPriority::Soon, 0)?;
        bad.payload = serde_json::json!({"referral_id": "not a uuid"});
        let mut conn = Connection::open_in_memory()?;
        conn.execute_batch(AssessmentView::SCHEMA)?;
        let tx = conn.transaction()?;
        assert!(matches!(
            AssessmentView.apply(&tx, &bad),
            Err(ApplyError::Skip(_))
        ));
        tx.commit()?;
        assert_eq!(dump(&conn)?, Dump::default());
        Ok(())
    }
}
