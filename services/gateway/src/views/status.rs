//! The FHIR statuses of a referral (`Task.status`, `ServiceRequest.status`,
//! `Task.businessStatus`), derived from its view. The search indexes file
//! referrals under them and the rendering shows them.

use mskflow_events::intake::CancellationStatus;

use crate::views::model::{AssessmentStage, ReferralStatus, ReferralView, RehabStage};

/// FHIR `Task.status` for a referral status.
pub fn task_status(view: &ReferralView) -> &'static str {
    match view.status {
        ReferralStatus::Received => "received",
        ReferralStatus::Triaged => match (
            view.assessment.as_ref().map(|a| a.stage),
            view.rehab.as_ref().map(|r| r.stage),
        ) {
            (_, Some(RehabStage::Completed | RehabStage::Discharged)) => "completed",
            (_, Some(_)) => "in-progress",
            (None | Some(AssessmentStage::AwaitingAppointment), None) => "accepted",
            (Some(AssessmentStage::Booked | AssessmentStage::Assessed), None) => "in-progress",
            (Some(AssessmentStage::Discharged), None) => "completed",
        },
        ReferralStatus::Redirected | ReferralStatus::Rejected => "rejected",
        ReferralStatus::Cancelled => match &view.cancellation {
            Some(c) if c.status == CancellationStatus::EnteredInError => "entered-in-error",
            _ => "cancelled",
        },
    }
}

/// FHIR `ServiceRequest.status` for a referral status.
pub fn service_request_status(view: &ReferralView) -> &'static str {
    match view.status {
        ReferralStatus::Received | ReferralStatus::Triaged => {
            if task_status(view) == "completed" {
                "completed"
            } else {
                "active"
            }
        }
        ReferralStatus::Redirected | ReferralStatus::Rejected => "revoked",
        ReferralStatus::Cancelled => match &view.cancellation {
            Some(c) if c.status == CancellationStatus::EnteredInError => "entered-in-error",
            _ => "revoked",
        },
    }
}

/// `Task.businessStatus`: where the referral is on the pathway.
pub fn business_status(view: &ReferralView) -> (&'static str, &'static str) {
    if view.status == ReferralStatus::Triaged
        && let Some(r) = &view.rehab
    {
        return match r.stage {
            RehabStage::Waiting | RehabStage::Offered => (
                "awaiting-rehabilitation",
                "Waiting for community rehabilitation",
            ),
            RehabStage::Booked => ("rehabilitation-booked", "Community rehabilitation booked"),
            RehabStage::Completed => (
                "rehabilitation-completed",
                "Community rehabilitation completed",
            ),
            RehabStage::Discharged => ("discharged", "Discharged"),
        };
    }
    if view.status == ReferralStatus::Triaged
        && let Some(a) = &view.assessment
    {
        return match a.stage {
            AssessmentStage::AwaitingAppointment => (
                "awaiting-assessment",
                "Awaiting First Contact Practitioner appointment",
            ),
            AssessmentStage::Booked => (
                "assessment-booked",
                "First Contact Practitioner appointment booked",
            ),
            AssessmentStage::Assessed => ("assessed", "Assessed by a First Contact Practitioner"),
            AssessmentStage::Discharged => ("discharged", "Discharged"),
        };
    }
    (view.status.code(), business_display(view.status))
}

fn business_display(status: ReferralStatus) -> &'static str {
    match status {
        ReferralStatus::Received => "Referral received",
        ReferralStatus::Triaged => "Triaged to First Contact Practitioner",
        ReferralStatus::Redirected => "Redirected (red flag)",
        ReferralStatus::Rejected => "Rejected",
        ReferralStatus::Cancelled => "Cancelled by the referrer",
    }
}
