//! The read model: every episode and slot, folded from the log in log order.
//! Pure and rebuildable: replaying the log from the beginning into
//! [`Projection::default`] gives the same result every time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mskflow_eventlog::{Envelope, decode};
use mskflow_events::assessment::{AssessmentEvent, SlotEvent};
use mskflow_events::types::{FcpPriority, Pathway};
use uuid::Uuid;

use crate::Error;
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

/// Episodes and slots by id.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    episodes: HashMap<Uuid, EpisodeState>,
    slots: HashMap<Uuid, SlotState>,
    position: u64,
}

fn id_after(stream_id: &str, prefix: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix(prefix)
        .and_then(|rest| Uuid::parse_str(rest).ok())
}

impl Projection {
    /// Apply one stored event. Events of other services are skipped, and so
    /// is an event already applied (at-least-once delivery).
    pub fn apply(&mut self, envelope: &Envelope) -> Result<(), Error> {
        self.position = self.position.max(envelope.position);
        let event_type = envelope.event_type.as_str();
        if AssessmentEvent::TYPES.contains(&event_type) {
            let Some(id) = id_after(&envelope.stream_id, EPISODE_PREFIX) else {
                return Ok(());
            };
            let state = self.episodes.entry(id).or_default();
            if envelope.sequence <= state.version {
                return Ok(());
            }
            let event =
                decode::<AssessmentEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?;
            *state = domain::apply(std::mem::take(state), &event);
        } else if SlotEvent::TYPES.contains(&event_type) {
            let Some(id) = id_after(&envelope.stream_id, SLOT_PREFIX) else {
                return Ok(());
            };
            let state = self.slots.entry(id).or_default();
            if envelope.sequence <= state.version {
                return Ok(());
            }
            let event = decode::<SlotEvent>(envelope).map_err(|e| Error::decode(envelope, &e))?;
            *state = slot::apply(std::mem::take(state), &event);
        }
        Ok(())
    }

    /// The highest log position applied.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn episode(&self, referral_id: Uuid) -> Option<&EpisodeState> {
        self.episodes.get(&referral_id).filter(|e| e.exists())
    }

    pub fn slot(&self, slot_id: Uuid) -> Option<&SlotState> {
        self.slots.get(&slot_id).filter(|s| s.slot.is_some())
    }

    /// Published slots nobody holds, earliest first.
    pub fn free_slots(&self) -> Vec<&SlotState> {
        let mut free: Vec<&SlotState> = self
            .slots
            .values()
            .filter(|s| s.slot.is_some() && s.held_by.is_none())
            .collect();
        free.sort_by_key(|s| s.slot.as_ref().map(|x| (x.start, x.slot_id)));
        free
    }

    /// Referrals awaiting an appointment: urgent, soon, routine; within a
    /// priority the longest wait first (ties by referral id, so the order
    /// is total and stable across rebuilds).
    pub fn worklist(&self, pathway: Option<Pathway>) -> Vec<WorklistEntry> {
        let mut entries: Vec<WorklistEntry> = self
            .episodes
            .iter()
            .filter(|(_, e)| e.status == Some(Status::AwaitingBooking))
            .filter_map(|(id, e)| {
                Some(WorklistEntry {
                    referral_id: *id,
                    priority: e.priority?,
                    pathway: e.pathway?,
                    triaged_at: e.triaged_at?,
                    missed: e.missed,
                })
            })
            .filter(|e| pathway.is_none_or(|p| p == e.pathway))
            .collect();
        entries.sort_by_key(|e| (e.priority, e.triaged_at, e.referral_id));
        entries
    }

    /// Slots held by a referral whose episode neither has them booked nor
    /// used them up: what is left when a booking stopped half-way.
    pub fn dangling_holds(&self) -> Vec<DanglingHold> {
        let mut out: Vec<DanglingHold> = self
            .slots
            .iter()
            .filter_map(|(slot_id, s)| {
                let referral_id = s.held_by?;
                let accounted = self
                    .episodes
                    .get(&referral_id)
                    .is_some_and(|e| e.holds(*slot_id));
                (!accounted).then_some(DanglingHold {
                    slot_id: *slot_id,
                    referral_id,
                    version: s.version,
                })
            })
            .collect();
        out.sort_by_key(|d| d.slot_id);
        out
    }
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

    #[test]
    fn replay_and_redelivery_give_the_same_worklist() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let log = [
            envelope(1, a, FcpPriority::Routine, 0)?,
            envelope(2, b, FcpPriority::Urgent, 30)?,
            envelope(3, c, FcpPriority::Routine, 10)?,
        ];
        let mut once = Projection::default();
        for e in &log {
            once.apply(e)?;
        }
        let ids: Vec<Uuid> = once.worklist(None).iter().map(|e| e.referral_id).collect();
        assert_eq!(ids, [b, a, c]);
        // Delivered twice (at-least-once): nothing changes.
        let mut twice = Projection::default();
        for e in log.iter().chain(log.iter()) {
            twice.apply(e)?;
        }
        assert_eq!(twice.worklist(None), once.worklist(None));
        assert_eq!(twice.position(), 3);
        assert!(twice.worklist(Some(Pathway::Hip)).is_empty());
        Ok(())
    }

    #[test]
    fn an_undecodable_event_is_an_error_not_a_skip() -> Result<(), Box<dyn std::error::Error>> {
        let mut bad = envelope(1, Uuid::from_u128(9), FcpPriority::Soon, 0)?;
        bad.payload = serde_json::json!({"referral_id": "not a uuid"});
        let mut p = Projection::default();
        assert!(matches!(p.apply(&bad), Err(Error::Decode { .. })));
        Ok(())
    }
}
