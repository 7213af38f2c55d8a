//! The referral as the referrer sent it: the FHIR JSON carried by the
//! `ReferralReceived` event (`ReferralDetails::fhir_json`).
//!
//! It is most of a referral's size (several kilobytes against a few hundred
//! bytes for everything else the views hold), and only a few answers need it
//! (the ServiceRequest and Patient as received, the response message), so
//! the views do not keep it in memory: [`crate::views::Views`] drops it when
//! it folds the event, and the answers that need it read it back from the
//! log, which is the record, with [`fill`].

use mskflow_eventlog::{Envelope, EventLog, decode};
use mskflow_events::intake::IntakeEvent;

use crate::views::ReferralView;

/// The FHIR JSON of the first `ReferralReceived` among `events`.
pub fn from_events(events: &[Envelope]) -> Option<String> {
    events
        .iter()
        .filter(|e| e.event_type == "ReferralReceived")
        .find_map(|e| match decode::<IntakeEvent>(e) {
            Ok(IntakeEvent::ReferralReceived(r)) => Some(r.referral.fhir_json),
            _ => None,
        })
}

/// Put the referral as sent back into `view` (a clone the caller owns),
/// reading the referral's stream. A referral whose first event cannot be
/// read back keeps an empty document; renderers then answer the minimal
/// resource they build from the view alone.
pub async fn fill(
    log: &dyn EventLog,
    view: &mut ReferralView,
) -> Result<(), mskflow_eventlog::Error> {
    if !view.details.fhir_json.is_empty() {
        return Ok(());
    }
    let stream = format!("referral-{}", view.referral_id);
    let events = log.read_stream(&stream, 1).await?;
    if let Some(json) = from_events(&events) {
        view.details.fhir_json = json;
    } else {
        tracing::warn!(referral_id = %view.referral_id, "the referral's ReferralReceived event was not found");
    }
    Ok(())
}

/// [`fill`] for every view.
pub async fn fill_all(
    log: &dyn EventLog,
    views: &mut [ReferralView],
) -> Result<(), mskflow_eventlog::Error> {
    for view in views {
        fill(log, view).await?;
    }
    Ok(())
}
