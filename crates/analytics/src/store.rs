//! The analytics views' read model on disk: one row of [`ReferralFacts`]
//! per referral (`analytics-facts.db`), folded by the same code as the
//! in-memory [`Views`](crate::views::Views) and read back as a stream into a
//! [`TableBuilder`], so answering a view holds per-group figures only, not
//! every referral.
//!
//! Within a batch the facts touched are kept in memory and written once at
//! its end (a referral's events come close together), so a rebuild reads
//! and writes each referral about once per batch.
//!
//! The patient attributes (age band, IMD decile, …) are fixed when the
//! referral is folded, with the IMD lookup then configured: after changing
//! the lookup, rebuild (`mskflow replay --rebuild analytics-facts`).

use std::collections::HashMap;

use mskflow_eventlog::{Envelope, StoredEvent};
use mskflow_projection::rusqlite::{self, Connection, OptionalExtension, Transaction, params};
use mskflow_projection::{ApplyError, Projection};
use uuid::Uuid;

use crate::Context;
use crate::views::{
    EVENT_TYPES, Folded, ReferralFacts, Split, Table, TableBuilder, View, ViewOptions, received,
    referral_of,
};

/// The projection (see the module documentation).
#[derive(Debug)]
pub struct AnalyticsFacts {
    ctx: Context,
    /// Facts touched by the current batch, written by `flush`.
    batch: HashMap<Uuid, ReferralFacts>,
}

impl AnalyticsFacts {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            batch: HashMap::new(),
        }
    }

    /// The facts of `referral_id`: as this batch left them, else as stored.
    fn facts(&mut self, conn: &Connection, referral_id: Uuid) -> Result<ReferralFacts, ApplyError> {
        match self.batch.remove(&referral_id) {
            Some(facts) => Ok(facts),
            None => Ok(load(conn, referral_id)?.unwrap_or_default()),
        }
    }

    fn fold(&mut self, tx: &Transaction<'_>, event: &impl Folded) -> Result<(), ApplyError> {
        let Some(referral_id) = referral_of(event) else {
            return Err(ApplyError::Skip("no readable referral id".to_owned()));
        };
        let mut facts = self.facts(tx, referral_id)?;
        // An event the views cannot read changes nothing (as in memory).
        let _ = facts.fold(event, &self.ctx);
        self.batch.insert(referral_id, facts);
        Ok(())
    }
}

fn load(conn: &Connection, referral_id: Uuid) -> Result<Option<ReferralFacts>, ApplyError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM facts WHERE referral_id = ?1")?
        .query_row([referral_id.as_bytes().as_slice()], |row| row.get(0))
        .optional()?;
    body.map(|b| {
        serde_json::from_str(&b).map_err(|e| {
            ApplyError::Skip(format!(
                "stored facts: {}",
                mskflow_eventlog::json_error_reason(&e)
            ))
        })
    })
    .transpose()
}

impl Projection for AnalyticsFacts {
    const NAME: &'static str = "analytics-facts";
    /// 2: the facts carry the referral's route (`received_via`).
    const VERSION: u32 = 2;
    const SCHEMA: &'static str = "
        CREATE TABLE facts (
            referral_id BLOB PRIMARY KEY,
            received    INTEGER NOT NULL,
            body        TEXT NOT NULL
        ) WITHOUT ROWID;
    ";

    fn wants(&self, envelope: &Envelope) -> bool {
        EVENT_TYPES.contains(&envelope.event_type.as_str())
    }

    fn event_types(&self) -> Option<Vec<&'static str>> {
        Some(EVENT_TYPES.to_vec())
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        self.fold(tx, envelope)
    }

    /// Reads the fields the facts need straight from the stored text; a
    /// received referral's payload is read once.
    fn apply_stored(
        &mut self,
        tx: &Transaction<'_>,
        event: &mut StoredEvent,
    ) -> Result<(), ApplyError> {
        if let Some(r) = received(&*event) {
            let mut facts = self.facts(tx, r.referral_id)?;
            facts.fold_received(&r, event.envelope().occurred_at, &self.ctx);
            self.batch.insert(r.referral_id, facts);
            return Ok(());
        }
        self.fold(tx, &*event)
    }

    fn flush(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO facts (referral_id, received, body) VALUES (?1, ?2, ?3) \
             ON CONFLICT (referral_id) DO UPDATE SET received = ?2, body = ?3",
        )?;
        for (referral_id, facts) in self.batch.drain() {
            if facts == ReferralFacts::default() {
                continue;
            }
            let body = serde_json::to_string(&facts)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            upsert.execute(params![
                referral_id.as_bytes().as_slice(),
                facts.received_at.is_some(),
                body
            ])?;
        }
        Ok(())
    }

    fn rolled_back(&mut self) {
        self.batch.clear();
    }
}

/// The table of `view` split by `split`, streamed from the stored facts.
pub fn table(
    conn: &Connection,
    view: View,
    split: Split,
    options: ViewOptions,
) -> rusqlite::Result<Table> {
    let mut builder = TableBuilder::new(view, split, options);
    let mut stmt = conn.prepare_cached("SELECT body FROM facts WHERE received = 1")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        match serde_json::from_str::<ReferralFacts>(&body) {
            Ok(facts) => builder.add(&facts),
            Err(e) => {
                tracing::error!(reason = %mskflow_eventlog::json_error_reason(&e), "stored analytics facts cannot be read; left out");
            }
        }
    }
    Ok(builder.finish())
}

/// Referrals with facts stored (received or not).
pub fn count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COUNT(*) FROM facts", [], |row| row.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
}
