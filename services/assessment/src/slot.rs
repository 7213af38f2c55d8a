//! A clinician slot (`fcp-slot-{slot_id}`): published once, then held by at
//! most one referral at a time. Pure.

use mskflow_events::assessment::{
    FcpSlotBooked, FcpSlotPublished, FcpSlotReleased, Slot, SlotEvent, SlotReleaseReason,
};
use uuid::Uuid;

/// A slot's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SlotState {
    /// `None` until published.
    pub slot: Option<Slot>,
    /// The referral holding the slot.
    pub held_by: Option<Uuid>,
    /// Number of events applied (the stream version).
    pub version: u64,
}

/// A slot operation refused. gRPC `FAILED_PRECONDITION` (`NOT_FOUND` for
/// [`SlotError::NotPublished`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("slot is not published")]
    NotPublished,
    #[error("slot is already published")]
    AlreadyPublished,
    #[error("slot is already held by another referral")]
    Taken,
    #[error("slot is not held by this referral")]
    NotHeld,
    #[error("a slot must end after it starts")]
    EndsBeforeStart,
}

/// Publish a new slot.
pub fn publish(state: &SlotState, slot: Slot) -> Result<SlotEvent, SlotError> {
    if state.slot.is_some() {
        return Err(SlotError::AlreadyPublished);
    }
    if slot.end <= slot.start {
        return Err(SlotError::EndsBeforeStart);
    }
    Ok(SlotEvent::FcpSlotPublished(FcpSlotPublished { slot }))
}

/// Take the slot for a referral.
pub fn take(state: &SlotState, referral_id: Uuid) -> Result<SlotEvent, SlotError> {
    let slot = state.slot.as_ref().ok_or(SlotError::NotPublished)?;
    if state.held_by.is_some() {
        return Err(SlotError::Taken);
    }
    Ok(SlotEvent::FcpSlotBooked(FcpSlotBooked {
        slot_id: slot.slot_id,
        referral_id,
    }))
}

/// Give the slot back.
pub fn release(
    state: &SlotState,
    referral_id: Uuid,
    reason: SlotReleaseReason,
) -> Result<SlotEvent, SlotError> {
    let slot = state.slot.as_ref().ok_or(SlotError::NotPublished)?;
    if state.held_by != Some(referral_id) {
        return Err(SlotError::NotHeld);
    }
    Ok(SlotEvent::FcpSlotReleased(FcpSlotReleased {
        slot_id: slot.slot_id,
        referral_id,
        reason,
    }))
}

/// Evolve the state by one event.
pub fn apply(mut state: SlotState, event: &SlotEvent) -> SlotState {
    state.version += 1;
    match event {
        SlotEvent::FcpSlotPublished(e) => state.slot = Some(e.slot.clone()),
        SlotEvent::FcpSlotBooked(e) => state.held_by = Some(e.referral_id),
        SlotEvent::FcpSlotReleased(_) => state.held_by = None,
    }
    state
}
