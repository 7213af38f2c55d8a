//! The outcomes view, kept on disk (`outcomes-view.db`).
//!
//! Two tables, folded from the `outcomes-{referral_id}` streams:
//!
//! * `referrals`: each referral's folded [`OutcomeState`] (JSON) and stream
//!   version, so each event is applied to the state it follows and a
//!   redelivered event (sequence at most the version) changes nothing;
//! * `entries`: one row per questionnaire (referral, measure, timepoint)
//!   with the columns the due list and the overdue sweep filter and order on
//!   (due date, completed, overdue), indexed by due date over the
//!   questionnaires not completed.
//!
//! The view is for those lists only: decisions read the referral's stream
//! ([`crate::Outcomes`] does).

use mskflow_projection::columns::{
    json_column, sequence, skip_json, sortable, stored_state, uuid_column,
};
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use mskflow_eventlog::{Envelope, decode};
use mskflow_events::outcomes::{OutcomeChangeRecorded, OutcomeEvent};
use mskflow_projection::rusqlite::{self, Connection, Transaction, params};
use mskflow_projection::{ApplyError, Projection};
use uuid::Uuid;

use crate::domain::{self, Entry, OutcomeState};
use crate::service::{DueItem, STREAM_PREFIX};

/// The outcomes view's projection.
#[derive(Debug, Default)]
pub struct OutcomesView;

/// The stored form of an [`OutcomeState`] (its entries as a list: JSON
/// object keys are strings).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    referral_id: Option<Uuid>,
    version: u64,
    triggers: BTreeSet<Uuid>,
    entries: Vec<Entry>,
    changes: Vec<OutcomeChangeRecorded>,
}

impl From<&OutcomeState> for Stored {
    fn from(s: &OutcomeState) -> Self {
        Self {
            referral_id: s.referral_id,
            version: s.version,
            triggers: s.triggers.clone(),
            entries: s.entries.values().cloned().collect(),
            changes: s.changes.clone(),
        }
    }
}

impl From<Stored> for OutcomeState {
    fn from(s: Stored) -> Self {
        Self {
            referral_id: s.referral_id,
            version: s.version,
            triggers: s.triggers,
            entries: s
                .entries
                .into_iter()
                .map(|e| ((e.measure, e.timepoint), e))
                .collect::<BTreeMap<_, _>>(),
            changes: s.changes,
        }
    }
}

fn referral_of(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix(STREAM_PREFIX)
        .and_then(|rest| Uuid::parse_str(rest).ok())
}

impl Projection for OutcomesView {
    const NAME: &'static str = "outcomes-view";
    const VERSION: u32 = 1;
    const SCHEMA: &'static str = "
        CREATE TABLE referrals (
            referral_id BLOB    PRIMARY KEY,
            version     INTEGER NOT NULL,
            state       TEXT    NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE entries (
            referral_id BLOB    NOT NULL,
            measure     INTEGER NOT NULL,
            timepoint   INTEGER NOT NULL,
            due         TEXT,
            completed   INTEGER NOT NULL,
            overdue     INTEGER NOT NULL,
            entry       TEXT    NOT NULL,
            PRIMARY KEY (referral_id, measure, timepoint)
        ) WITHOUT ROWID;
        CREATE INDEX entries_open_by_due
            ON entries (due, referral_id, measure, timepoint) WHERE completed = 0;
    ";

    fn wants(&self, envelope: &Envelope) -> bool {
        envelope.stream_id.starts_with(STREAM_PREFIX)
            && OutcomeEvent::TYPES.contains(&envelope.event_type.as_str())
    }

    fn event_types(&self) -> Option<Vec<&'static str>> {
        Some(OutcomeEvent::TYPES.to_vec())
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        let Some(referral_id) = referral_of(&envelope.stream_id) else {
            return Ok(());
        };
        let key = referral_id.as_bytes().as_slice();
        let Some(stored) = stored_state(
            tx,
            "SELECT version, state FROM referrals WHERE referral_id = ?1",
            key,
            envelope.sequence,
        )?
        else {
            return Ok(());
        };
        let state = match stored {
            Some(text) => OutcomeState::from(
                serde_json::from_str::<Stored>(&text).map_err(|e| skip_json(&e))?,
            ),
            None => OutcomeState::default(),
        };
        let event = decode::<OutcomeEvent>(envelope).map_err(|e| skip_json(&e))?;
        let mut state = domain::apply(state, &event);
        state.version = envelope.sequence;
        let json = serde_json::to_string(&Stored::from(&state)).map_err(|e| skip_json(&e))?;
        tx.prepare_cached(
            "INSERT INTO referrals (referral_id, version, state) VALUES (?1, ?2, ?3) \
             ON CONFLICT (referral_id) DO UPDATE SET version = excluded.version, state = excluded.state",
        )?
        .execute(params![
            key,
            sequence(envelope.sequence),
            json
        ])?;
        for entry in state.entries.values() {
            let row = serde_json::to_string(entry).map_err(|e| skip_json(&e))?;
            tx.prepare_cached(
                "INSERT INTO entries (referral_id, measure, timepoint, due, completed, overdue, entry) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (referral_id, measure, timepoint) DO UPDATE SET due = excluded.due, \
                 completed = excluded.completed, overdue = excluded.overdue, entry = excluded.entry",
            )?
            .execute(params![
                key,
                entry.measure as i64,
                entry.timepoint as i64,
                entry.due.map(sortable),
                entry.completed.is_some(),
                entry.overdue,
                row
            ])?;
        }
        Ok(())
    }
}

/// Questionnaires not completed whose due date is reached by `as_of`,
/// oldest first (then by referral, measure and timepoint), at most `limit`.
pub(crate) fn due(
    conn: &Connection,
    as_of: DateTime<Utc>,
    limit: usize,
) -> rusqlite::Result<Vec<DueItem>> {
    let mut stmt = conn.prepare_cached(
        "SELECT referral_id, entry FROM entries \
         WHERE completed = 0 AND due IS NOT NULL AND due <= ?1 \
         ORDER BY due, referral_id, measure, timepoint LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![
        sortable(as_of),
        i64::try_from(limit).unwrap_or(i64::MAX)
    ])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        let entry: String = row.get(1)?;
        out.push(DueItem {
            referral_id: uuid_column(0, &id)?,
            entry: json_column(1, &entry)?,
        });
    }
    Ok(out)
}

/// Referrals with a questionnaire neither completed nor marked overdue
/// whose due date is before `due_before`.
pub(crate) fn overdue_candidates(
    conn: &Connection,
    due_before: DateTime<Utc>,
) -> rusqlite::Result<Vec<Uuid>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT referral_id FROM entries \
         WHERE completed = 0 AND overdue = 0 AND due IS NOT NULL AND due < ?1 \
         ORDER BY referral_id",
    )?;
    let mut rows = stmt.query([sortable(due_before)])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        out.push(uuid_column(0, &id)?);
    }
    Ok(out)
}

/// Every row of the view's tables, sorted by key: to compare a rebuilt
/// view with an incrementally maintained one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dump {
    /// `(referral id, version, state JSON)`.
    pub referrals: Vec<(Uuid, i64, String)>,
    pub entries: Vec<EntryRow>,
}

/// One stored row of `entries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    pub referral_id: Uuid,
    /// Ranks in the order of the enums.
    pub measure: i64,
    pub timepoint: i64,
    pub due: Option<String>,
    pub completed: bool,
    pub overdue: bool,
    /// The [`Entry`] as JSON.
    pub entry: String,
}

pub(crate) fn dump(conn: &Connection) -> rusqlite::Result<Dump> {
    let mut dump = Dump::default();
    let mut stmt =
        conn.prepare("SELECT referral_id, version, state FROM referrals ORDER BY referral_id")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        dump.referrals
            .push((uuid_column(0, &id)?, row.get(1)?, row.get(2)?));
    }
    let mut stmt = conn.prepare(
        "SELECT referral_id, measure, timepoint, due, completed, overdue, entry \
         FROM entries ORDER BY referral_id, measure, timepoint",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        dump.entries.push(EntryRow {
            referral_id: uuid_column(0, &id)?,
            measure: row.get(1)?,
            timepoint: row.get(2)?,
            due: row.get(3)?,
            completed: row.get(4)?,
            overdue: row.get(5)?,
            entry: row.get(6)?,
        });
    }
    Ok(dump)
}
