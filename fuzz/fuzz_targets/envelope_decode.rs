//! What a consumer does with a record from the log, on arbitrary bytes: the
//! envelope is read, then its payload decoded as each service's events.
//!
//! Properties: no panic; an event that decodes is written back by
//! `new_event` under the same type and decodes to the same event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mskflow_eventlog::{Envelope, decode, new_event};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(envelope: &Envelope) {
    let Ok(event) = decode::<T>(envelope) else {
        return;
    };
    let again = match new_event(&event, envelope.schema_version, envelope.occurred_at) {
        Ok(e) => e,
        Err(e) => panic!("a decoded {} does not encode: {e}", envelope.event_type),
    };
    assert_eq!(again.event_type, envelope.event_type);
    let mut stored = envelope.clone();
    stored.payload = again.payload;
    match decode::<T>(&stored) {
        Ok(back) => assert_eq!(back, event),
        Err(e) => panic!(
            "{} does not decode after encoding: {e}",
            envelope.event_type
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = serde_json::from_slice::<Envelope>(data) else {
        return;
    };
    round_trip::<mskflow_events::IntakeEvent>(&envelope);
    round_trip::<mskflow_events::assessment::AssessmentEvent>(&envelope);
    round_trip::<mskflow_events::assessment::SlotEvent>(&envelope);
    round_trip::<mskflow_events::scheduling::SchedulingEvent>(&envelope);
    round_trip::<mskflow_events::outcomes::OutcomeEvent>(&envelope);
    round_trip::<mskflow_events::delivery::DeliveryEvent>(&envelope);
    round_trip::<mskflow_events::operations::OperationsEvent>(&envelope);
});
