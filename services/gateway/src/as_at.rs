//! One referral's view as it was at a log position, folded afresh from the
//! referral's own streams (the notification worker's Task "as it was at that
//! change", without a second copy of every view).
//!
//! A [`ReferralView`] is changed only by events that carry its referral id,
//! and those live on the streams [`Views::apply`] folds into it:
//! `referral-{id}` (intake), `assessment-{id}` (the FCP episode),
//! `rehab-{id}` (rehabilitation) and `delivery-{onward id}` (the attempts of
//! each onward referral, named by the `OnwardReferralRequested` events of
//! the episode). Capacity streams (`slot-…`, `class-…`, `rehab-slot-…`,
//! `venue-…`) change only [`Views::capacity`], and `notify-…` streams nothing,
//! so none of them is read. Folding those streams' events up to and
//! including a position, in log order, into an empty [`Views`] leaves the
//! referral exactly as the views folded from the whole log held it at that
//! position (`tests::the_fold_at_a_position_equals_the_whole_views`).

use mskflow_eventlog::{Envelope, EventLog, decode};
use mskflow_events::assessment::AssessmentEvent;
use uuid::Uuid;

use crate::views::{ReferralView, Views};

/// The streams named by the referral id alone.
pub fn streams(referral_id: Uuid) -> [String; 3] {
    [
        format!("referral-{referral_id}"),
        format!("assessment-{referral_id}"),
        format!("rehab-{referral_id}"),
    ]
}

/// The delivery streams of the onward referrals requested among `events`.
pub fn delivery_streams(events: &[Envelope]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event_type == "OnwardReferralRequested")
        .filter_map(|e| match decode::<AssessmentEvent>(e) {
            Ok(AssessmentEvent::OnwardReferralRequested(o)) => {
                Some(format!("delivery-{}", o.onward_referral_id))
            }
            _ => None,
        })
        .collect()
}

/// Fold `events` (any order; duplicates by position are dropped) into empty
/// views and return the referral's.
pub fn fold(referral_id: Uuid, mut events: Vec<Envelope>) -> Option<ReferralView> {
    events.sort_by_key(|e| e.position);
    events.dedup_by_key(|e| e.position);
    let mut views = Views::default();
    for envelope in &events {
        if let Err(e) = views.apply(envelope) {
            tracing::debug!(error = %e, "a referral's fold skipped an event");
        }
    }
    views.referral(&referral_id).cloned()
}

/// The referral's view as the events up to and including log position
/// `position` leave it; `None` when it was not received by then.
pub async fn referral(
    log: &dyn EventLog,
    referral_id: Uuid,
    position: u64,
) -> Result<Option<ReferralView>, mskflow_eventlog::Error> {
    let mut events = Vec::new();
    for stream in streams(referral_id) {
        read_upto(log, &stream, position, &mut events).await?;
    }
    for stream in delivery_streams(&events) {
        read_upto(log, &stream, position, &mut events).await?;
    }
    Ok(fold(referral_id, events))
}

async fn read_upto(
    log: &dyn EventLog,
    stream: &str,
    position: u64,
    out: &mut Vec<Envelope>,
) -> Result<(), mskflow_eventlog::Error> {
    out.extend(
        log.read_stream(stream, 1)
            .await?
            .into_iter()
            .filter(|e| e.position <= position),
    );
    Ok(())
}

#[cfg(test)]
mod tests;
