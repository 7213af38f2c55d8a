//! The rehab waiting list, kept on disk (`scheduling-waiting-list.db`).
//!
//! Two tables, folded from the `rehab-{referral_id}` streams:
//!
//! * `episodes`: every rehab episode's folded [`EpisodeState`] (JSON) and
//!   stream version, so each event is applied to the state it follows and a
//!   redelivered event (sequence at most the version) changes nothing;
//! * `waiting`: the episodes on the waiting list now, with the columns the
//!   list is filtered and ordered on (programme; clinical priority, then the
//!   time the need was recorded, then the referral id) in an index.
//!
//! The projection is for the list only: decisions on an episode read its
//! stream ([`crate::Scheduling`] does).

use mskflow_eventlog::{Envelope, decode};
use mskflow_events::scheduling::{PatientWaitlisted, Programme, SchedulingEvent};
use mskflow_projection::columns::{
    json_column, sequence, skip_json, sortable, stored_state, uuid_column,
};
use mskflow_projection::rusqlite::{self, Connection, Transaction, params};
use mskflow_projection::{ApplyError, Projection};
use uuid::Uuid;

use crate::domain::{Aggregate, EpisodeState, EpisodeStatus};

/// Stream prefix of rehab episodes (`rehab-slot-` streams are slots).
const EPISODE_PREFIX: &str = "rehab-";
const SLOT_PREFIX: &str = "rehab-slot-";

/// The waiting list's projection.
#[derive(Debug, Default)]
pub struct WaitingList;

fn episode_id(stream_id: &str) -> Option<Uuid> {
    if stream_id.starts_with(SLOT_PREFIX) {
        return None;
    }
    stream_id
        .strip_prefix(EPISODE_PREFIX)
        .and_then(|rest| Uuid::parse_str(rest).ok())
}

/// Clinical priority as its rank (urgent first), the order of the enum.
fn priority_rank(w: &PatientWaitlisted) -> i64 {
    w.priority as i64
}

impl Projection for WaitingList {
    const NAME: &'static str = "scheduling-waiting-list";
    const VERSION: u32 = 1;
    const SCHEMA: &'static str = "
        CREATE TABLE episodes (
            referral_id BLOB    PRIMARY KEY,
            version     INTEGER NOT NULL,
            state       TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE waiting (
            referral_id      BLOB    PRIMARY KEY,
            priority         INTEGER NOT NULL,
            need_recorded_at TEXT    NOT NULL,
            programme        TEXT    NOT NULL,
            waitlisted       TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX waiting_order ON waiting (priority, need_recorded_at, referral_id);
        CREATE INDEX waiting_by_programme
            ON waiting (programme, priority, need_recorded_at, referral_id);
    ";

    fn wants(&self, envelope: &Envelope) -> bool {
        envelope.stream_id.starts_with(EPISODE_PREFIX)
            && !envelope.stream_id.starts_with(SLOT_PREFIX)
            && SchedulingEvent::TYPES.contains(&envelope.event_type.as_str())
    }

    fn event_types(&self) -> Option<Vec<&'static str>> {
        Some(SchedulingEvent::TYPES.to_vec())
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        let Some(referral_id) = episode_id(&envelope.stream_id) else {
            return Ok(());
        };
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
            Some(text) => serde_json::from_str::<EpisodeState>(&text).map_err(|e| skip_json(&e))?,
            None => EpisodeState::default(),
        };
        let event = decode::<SchedulingEvent>(envelope).map_err(|e| skip_json(&e))?;
        let mut state = state.apply(&event);
        state.set_version(envelope.sequence);
        let json = serde_json::to_string(&state).map_err(|e| skip_json(&e))?;
        tx.prepare_cached(
            "INSERT INTO episodes (referral_id, version, state) VALUES (?1, ?2, ?3) \
             ON CONFLICT (referral_id) DO UPDATE SET version = excluded.version, state = excluded.state",
        )?
        .execute(params![
            key,
            sequence(envelope.sequence),
            json
        ])?;
        match (&state.waitlisted, state.status) {
            (Some(w), Some(EpisodeStatus::Waiting)) => {
                let entry = serde_json::to_string(w).map_err(|e| skip_json(&e))?;
                tx.prepare_cached(
                    "INSERT INTO waiting (referral_id, priority, need_recorded_at, programme, waitlisted) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (referral_id) DO UPDATE SET priority = excluded.priority, \
                     need_recorded_at = excluded.need_recorded_at, programme = excluded.programme, \
                     waitlisted = excluded.waitlisted",
                )?
                .execute(params![
                    key,
                    priority_rank(w),
                    sortable(w.need_recorded_at),
                    w.programme.code(),
                    entry
                ])?;
            }
            _ => {
                tx.prepare_cached("DELETE FROM waiting WHERE referral_id = ?1")?
                    .execute([key])?;
            }
        }
        Ok(())
    }
}

/// The waiting patients (of `programme` when given), by clinical priority,
/// then time waited (longest first), then referral id.
pub(crate) fn waiting(
    conn: &Connection,
    programme: Option<Programme>,
) -> rusqlite::Result<Vec<PatientWaitlisted>> {
    let mut out = Vec::new();
    let mut push = |row: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
        let text: String = row.get(0)?;
        out.push(json_column(0, &text)?);
        Ok(())
    };
    match programme {
        Some(p) => {
            let mut stmt = conn.prepare_cached(
                "SELECT waitlisted FROM waiting WHERE programme = ?1 \
                 ORDER BY priority, need_recorded_at, referral_id",
            )?;
            let mut rows = stmt.query([p.code()])?;
            while let Some(row) = rows.next()? {
                push(row)?;
            }
        }
        None => {
            let mut stmt = conn.prepare_cached(
                "SELECT waitlisted FROM waiting ORDER BY priority, need_recorded_at, referral_id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                push(row)?;
            }
        }
    }
    Ok(out)
}

/// Every row of the waiting list's tables, sorted by key: to compare a
/// rebuilt projection with an incrementally maintained one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    /// `(referral id, version, state JSON)`.
    pub episodes: Vec<(Uuid, i64, String)>,
    /// `(referral id, priority rank, need recorded at, programme, entry JSON)`.
    pub waiting: Vec<(Uuid, i64, String, String, String)>,
}

pub(crate) fn dump(conn: &Connection) -> rusqlite::Result<Dump> {
    let mut dump = Dump::default();
    let mut stmt =
        conn.prepare("SELECT referral_id, version, state FROM episodes ORDER BY referral_id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        dump.episodes
            .push((uuid_column(0, &id)?, row.get(1)?, row.get(2)?));
    }
    let mut stmt = conn.prepare(
        "SELECT referral_id, priority, need_recorded_at, programme, waitlisted \
         FROM waiting ORDER BY referral_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        dump.waiting.push((
            uuid_column(0, &id)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        ));
    }
    Ok(dump)
}
