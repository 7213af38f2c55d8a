//! The episode aggregate: given events, when a command, then events or a
//! refusal. No I/O.

use chrono::{DateTime, TimeZone, Utc};
use mskflow_assessment::domain::{
    AssessmentRecord, Command, DomainError, EpisodeState, Policy, PolicyError, Status, fold, handle,
};
use mskflow_events::NhsNumber;
use mskflow_events::assessment::{
    AppointmentMissed, AssessmentBooked, AssessmentCancelled, AssessmentEvent, AssessmentRequested,
    AssessmentRescheduled, DecisionAid, DeliveryState, DischargeReason, DistressScreen,
    EpisodeDischarged, GroupProgramme, OnwardDestination, Outcome, Party, Slot, SmokingStatus,
};
use mskflow_events::types::{ContactMode, FcpPriority, Pathway};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const REFERRAL: Uuid = Uuid::from_u128(0xa11ce);

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, hour, 0, 0)
        .single()
        .unwrap_or_default()
}

fn slot(n: u128) -> Slot {
    let hour = 8 + (n as u32 % 10);
    Slot {
        slot_id: Uuid::from_u128(n),
        clinician_id: "fcp-07".to_owned(),
        start: at(hour),
        end: at(hour + 1),
        mode: ContactMode::FaceToFace,
        location: Some("Riverside Health Centre".to_owned()),
    }
}

fn requested(pathway: Pathway) -> AssessmentEvent {
    AssessmentEvent::AssessmentRequested(AssessmentRequested {
        referral_id: REFERRAL,
        priority: FcpPriority::Routine,
        pathway,
        triaged_at: at(7),
    })
}

fn booked(n: u128) -> AssessmentEvent {
    AssessmentEvent::AssessmentBooked(AssessmentBooked {
        referral_id: REFERRAL,
        slot: slot(n),
    })
}

fn missed(n: u128, count: u32) -> AssessmentEvent {
    AssessmentEvent::AppointmentMissed(AppointmentMissed {
        referral_id: REFERRAL,
        slot_id: Uuid::from_u128(n),
        missed_count: count,
    })
}

fn discharged(reason: DischargeReason) -> AssessmentEvent {
    AssessmentEvent::EpisodeDischarged(EpisodeDischarged {
        referral_id: REFERRAL,
        reason,
        notify_referrer: true,
    })
}

/// Given these events (and a policy)...
struct Given {
    events: Vec<AssessmentEvent>,
    policy: Policy,
}

fn given(events: impl IntoIterator<Item = AssessmentEvent>) -> Given {
    Given {
        events: events.into_iter().collect(),
        policy: Policy::default(),
    }
}

impl Given {
    fn with_max_missed(mut self, max_missed: u32) -> Self {
        self.policy = Policy { max_missed };
        self
    }

    /// ...when this command: the events it produces, or the refusal.
    fn when(&self, cmd: Command) -> Result<Vec<AssessmentEvent>, DomainError> {
        handle(&fold(&self.events), cmd, &self.policy)
    }

    /// The state after the given events and what `cmd` produced.
    fn state_after(&self, cmd: Command) -> Result<EpisodeState, DomainError> {
        let new = self.when(cmd)?;
        Ok(fold(self.events.iter().chain(new.iter())))
    }
}

fn dna(n: u128) -> Command {
    Command::RecordDna {
        slot_id: Uuid::from_u128(n),
    }
}

fn record(outcomes: Vec<Outcome>) -> AssessmentRecord {
    AssessmentRecord {
        findings_summary: "Medial knee pain 6 months, mechanical, no effusion".to_owned(),
        shared_decision_made: true,
        decision_aid: Some(DecisionAid::KneeOsteoarthritis),
        work_discussed: true,
        fit_note_issued: false,
        psychological_distress: DistressScreen::Negative,
        bmi: None,
        smoking_status: None,
        outcomes,
    }
}

fn complete(outcomes: Vec<Outcome>) -> Result<Command, Box<dyn std::error::Error>> {
    Ok(Command::Complete {
        record: record(outcomes),
        nhs_number: Some(NhsNumber::parse("9434765919")?),
        now: at(12),
    })
}

fn ortho(reason: &str) -> Outcome {
    Outcome::OnwardReferral {
        destination: OnwardDestination::Orthopaedics,
        reason: reason.to_owned(),
    }
}

#[test]
fn a_triaged_referral_is_requested_once() {
    let cmd = Command::Request {
        referral_id: REFERRAL,
        priority: FcpPriority::Routine,
        pathway: Pathway::Knee,
        triaged_at: at(7),
    };
    assert_eq!(
        given([]).when(cmd.clone()),
        Ok(vec![requested(Pathway::Knee)])
    );
    assert_eq!(
        given([requested(Pathway::Knee)]).when(cmd),
        Err(DomainError::AlreadyRequested)
    );
}

#[test]
fn booking_an_awaiting_episode() {
    assert_eq!(
        given([requested(Pathway::Knee)]).when(Command::Book { slot: slot(1) }),
        Ok(vec![booked(1)])
    );
}

#[test]
fn booking_twice_or_without_a_request_is_refused() {
    assert_eq!(
        given([requested(Pathway::Knee), booked(1)]).when(Command::Book { slot: slot(2) }),
        Err(DomainError::AlreadyBooked)
    );
    assert_eq!(
        given([]).when(Command::Book { slot: slot(2) }),
        Err(DomainError::NotRequested)
    );
    let mut backwards = slot(3);
    backwards.end = backwards.start;
    assert_eq!(
        given([requested(Pathway::Knee)]).when(Command::Book { slot: backwards }),
        Err(DomainError::SlotEndsBeforeStart)
    );
}

#[test]
fn first_dna_returns_the_patient_to_the_worklist() -> TestResult {
    let g = given([requested(Pathway::Knee), booked(1)]);
    assert_eq!(g.when(dna(1)), Ok(vec![missed(1, 1)]));
    let state = g.state_after(dna(1))?;
    assert_eq!(state.status, Some(Status::AwaitingBooking));
    assert_eq!(state.booking, None);
    assert_eq!(state.missed, 1);
    // The missed slot stays with the episode (it was used up).
    assert!(state.holds(Uuid::from_u128(1)));
    Ok(())
}

#[test]
fn second_dna_discharges_and_tells_the_referrer() -> TestResult {
    let g = given([requested(Pathway::Knee), booked(1), missed(1, 1), booked(2)]);
    assert_eq!(
        g.when(dna(2)),
        Ok(vec![
            missed(2, 2),
            discharged(DischargeReason::DidNotAttend)
        ])
    );
    let state = g.state_after(dna(2))?;
    assert_eq!(state.status, Some(Status::Discharged));
    assert_eq!(state.discharge_reason, Some(DischargeReason::DidNotAttend));
    assert!(state.notify_referrer);
    Ok(())
}

#[test]
fn dna_after_a_reschedule_counts_against_the_new_slot() {
    let rescheduled = AssessmentEvent::AssessmentRescheduled(AssessmentRescheduled {
        referral_id: REFERRAL,
        previous_slot_id: Uuid::from_u128(1),
        slot: slot(2),
        requested_by: Party::Patient,
        reason: None,
    });
    let g = given([requested(Pathway::Knee), booked(1), rescheduled.clone()]);
    // The old appointment is no longer the one to miss.
    assert_eq!(g.when(dna(1)), Err(DomainError::WrongSlot));
    assert_eq!(g.when(dna(2)), Ok(vec![missed(2, 1)]));
    // After a first DNA, a rebooked and rescheduled appointment missed
    // again ends the episode.
    let g = given([
        requested(Pathway::Knee),
        booked(3),
        missed(3, 1),
        booked(1),
        rescheduled,
    ]);
    assert_eq!(
        g.when(dna(2)),
        Ok(vec![
            missed(2, 2),
            discharged(DischargeReason::DidNotAttend)
        ])
    );
}

#[test]
fn dna_policy_of_one_discharges_at_once() {
    assert_eq!(
        given([requested(Pathway::Knee), booked(1)])
            .with_max_missed(1)
            .when(dna(1)),
        Ok(vec![
            missed(1, 1),
            discharged(DischargeReason::DidNotAttend)
        ])
    );
}

#[test]
fn dna_policy_of_three_allows_two_misses() {
    let g =
        given([requested(Pathway::Knee), booked(1), missed(1, 1), booked(2)]).with_max_missed(3);
    assert_eq!(g.when(dna(2)), Ok(vec![missed(2, 2)]));
    let g = given([
        requested(Pathway::Knee),
        booked(1),
        missed(1, 1),
        booked(2),
        missed(2, 2),
        booked(3),
    ])
    .with_max_missed(3);
    assert_eq!(
        g.when(dna(3)),
        Ok(vec![
            missed(3, 3),
            discharged(DischargeReason::DidNotAttend)
        ])
    );
}

#[test]
fn dna_without_a_booking_is_refused() {
    assert_eq!(
        given([requested(Pathway::Knee)]).when(dna(1)),
        Err(DomainError::NotBooked)
    );
    assert_eq!(
        given([
            requested(Pathway::Knee),
            booked(1),
            missed(1, 1),
            booked(2),
            missed(2, 2),
            discharged(DischargeReason::DidNotAttend)
        ])
        .when(dna(2)),
        Err(DomainError::Discharged)
    );
}

#[test]
fn cancellation_by_either_side_returns_to_the_worklist() -> TestResult {
    for by in [Party::Patient, Party::Service] {
        let g = given([requested(Pathway::Hip), booked(1)]);
        let cmd = Command::Cancel {
            by,
            reason: "clinician unwell".to_owned(),
            end_episode: false,
        };
        assert_eq!(
            g.when(cmd.clone()),
            Ok(vec![AssessmentEvent::AssessmentCancelled(
                AssessmentCancelled {
                    referral_id: REFERRAL,
                    slot_id: Some(Uuid::from_u128(1)),
                    cancelled_by: by,
                    reason: "clinician unwell".to_owned(),
                }
            )])
        );
        let state = g.state_after(cmd)?;
        assert_eq!(state.status, Some(Status::AwaitingBooking));
        // A cancelled slot is not the episode's any more: it is freed.
        assert!(!state.holds(Uuid::from_u128(1)));
        assert_eq!(state.missed, 0);
    }
    Ok(())
}

#[test]
fn a_patient_withdrawing_ends_the_episode() -> TestResult {
    let cmd = Command::Cancel {
        by: Party::Patient,
        reason: "symptoms resolved".to_owned(),
        end_episode: true,
    };
    let events = given([requested(Pathway::Shoulder), booked(1)]).when(cmd.clone())?;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], discharged(DischargeReason::Cancelled));
    // Also while still waiting, with no appointment.
    let events = given([requested(Pathway::Shoulder)]).when(cmd)?;
    match &events[..] {
        [
            AssessmentEvent::AssessmentCancelled(c),
            AssessmentEvent::EpisodeDischarged(d),
        ] => {
            assert_eq!(c.slot_id, None);
            assert_eq!(d.reason, DischargeReason::Cancelled);
            assert!(d.notify_referrer);
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    Ok(())
}

#[test]
fn cancelling_nothing_or_without_reason_is_refused() {
    let cmd = |reason: &str, end_episode| Command::Cancel {
        by: Party::Service,
        reason: reason.to_owned(),
        end_episode,
    };
    assert_eq!(
        given([requested(Pathway::Knee)]).when(cmd("x", false)),
        Err(DomainError::NotBooked)
    );
    assert_eq!(
        given([requested(Pathway::Knee), booked(1)]).when(cmd("  ", false)),
        Err(DomainError::MissingReason {
            what: "cancellation"
        })
    );
}

#[test]
fn rescheduling_moves_the_booking() -> TestResult {
    let g = given([requested(Pathway::Knee), booked(1)]);
    let cmd = Command::Reschedule {
        slot: slot(2),
        requested_by: Party::Service,
        reason: Some("clinic moved".to_owned()),
    };
    let state = g.state_after(cmd)?;
    assert_eq!(
        state.booking.as_ref().map(|b| b.slot_id),
        Some(Uuid::from_u128(2))
    );
    assert!(!state.holds(Uuid::from_u128(1)));
    assert_eq!(
        g.when(Command::Reschedule {
            slot: slot(1),
            requested_by: Party::Service,
            reason: None
        }),
        Err(DomainError::SameSlot)
    );
    assert_eq!(
        given([requested(Pathway::Knee)]).when(Command::Reschedule {
            slot: slot(1),
            requested_by: Party::Patient,
            reason: None
        }),
        Err(DomainError::NotBooked)
    );
    Ok(())
}

#[test]
fn completion_with_several_outcomes() -> TestResult {
    let outcomes = vec![
        Outcome::AdviceAndSelfManagement {
            app: Some("getUBetter".to_owned()),
        },
        Outcome::GroupProgramme {
            programme: GroupProgramme::EscapePain,
        },
        Outcome::OnwardReferral {
            destination: OnwardDestination::WeightManagement,
            reason: "patient asked for support".to_owned(),
        },
    ];
    let g = given([requested(Pathway::Knee), booked(1)]);
    let events = g.when(complete(outcomes.clone())?)?;
    let types: Vec<&str> = events.iter().map(AssessmentEvent::event_type).collect();
    assert_eq!(types, ["AssessmentCompleted", "OnwardReferralRequested"]);
    match &events[0] {
        AssessmentEvent::AssessmentCompleted(c) => {
            assert_eq!(c.outcomes, outcomes);
            assert_eq!(c.slot_id, Uuid::from_u128(1));
            assert_eq!(c.clinician_id, "fcp-07");
            assert_eq!(c.decision_aid, Some(DecisionAid::KneeOsteoarthritis));
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    let state = g.state_after(complete(outcomes.clone())?)?;
    assert_eq!(state.status, Some(Status::Assessed));
    assert_eq!(state.outcomes, outcomes);
    assert_eq!(state.onward_referrals.len(), 1);
    // The slot the assessment happened in stays used.
    assert!(state.holds(Uuid::from_u128(1)));
    Ok(())
}

#[test]
fn a_discharge_outcome_ends_the_episode_and_tells_the_referrer() -> TestResult {
    let events = given([requested(Pathway::Hand), booked(1)]).when(complete(vec![
        Outcome::AdviceAndSelfManagement { app: None },
        Outcome::Discharge,
    ])?)?;
    assert_eq!(
        events.last(),
        Some(&discharged(DischargeReason::AssessmentOutcome))
    );
    Ok(())
}

#[test]
fn escape_pain_is_for_knee_and_hip_only() -> TestResult {
    let escape = || {
        vec![Outcome::GroupProgramme {
            programme: GroupProgramme::EscapePain,
        }]
    };
    for pathway in [Pathway::Knee, Pathway::Hip] {
        assert!(
            given([requested(pathway), booked(1)])
                .when(complete(escape())?)
                .is_ok()
        );
    }
    for pathway in [
        Pathway::Shoulder,
        Pathway::BackAndRadicularPain,
        Pathway::Foot,
    ] {
        assert_eq!(
            given([requested(pathway), booked(1)]).when(complete(escape())?),
            Err(DomainError::EscapePainPathway { pathway })
        );
    }
    Ok(())
}

#[test]
fn completion_refusals() -> TestResult {
    let g = given([requested(Pathway::Knee), booked(1)]);
    assert_eq!(g.when(complete(vec![])?), Err(DomainError::NoOutcomes));
    assert_eq!(
        given([requested(Pathway::Knee)]).when(complete(vec![Outcome::Discharge])?),
        Err(DomainError::NotBooked)
    );
    assert_eq!(
        g.when(complete(vec![
            Outcome::CommunityPhysiotherapy,
            Outcome::CommunityPhysiotherapy
        ])?),
        Err(DomainError::DuplicateOutcome)
    );
    assert_eq!(
        g.when(complete(vec![ortho("a"), ortho("b")])?),
        Err(DomainError::DuplicateOutcome)
    );
    assert_eq!(
        g.when(complete(vec![ortho(" ")])?),
        Err(DomainError::MissingReason {
            what: "onward referral"
        })
    );
    let mut no_sdm = record(vec![Outcome::CommunityPhysiotherapy]);
    no_sdm.shared_decision_made = false;
    assert_eq!(
        g.when(Command::Complete {
            record: no_sdm,
            nhs_number: None,
            now: at(12)
        }),
        Err(DomainError::DecisionAidWithoutSharedDecision)
    );
    assert_eq!(
        g.when(Command::Complete {
            record: record(vec![ortho("severe OA")]),
            nhs_number: None,
            now: at(12)
        }),
        Err(DomainError::PatientUnknown)
    );
    // Completed once: not again.
    let done = g.state_after(complete(vec![Outcome::CommunityPhysiotherapy])?)?;
    assert_eq!(
        handle(
            &done,
            complete(vec![Outcome::CommunityPhysiotherapy])?,
            &Policy::default()
        ),
        Err(DomainError::AlreadyAssessed)
    );
    Ok(())
}

#[test]
fn an_orthopaedic_referral_carries_an_outbound_service_request() -> TestResult {
    let events = given([requested(Pathway::Hip), booked(1)]).when(complete(vec![ortho(
        "end-stage hip OA, wishes to consider THR",
    )])?)?;
    let onward = match &events[..] {
        [
            AssessmentEvent::AssessmentCompleted(_),
            AssessmentEvent::OnwardReferralRequested(o),
        ] => o,
        other => return Err(format!("unexpected {other:?}").into()),
    };
    assert_eq!(onward.destination, OnwardDestination::Orthopaedics);
    assert_eq!(onward.delivery, DeliveryState::Pending);
    let sr = &onward.service_request;
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert_eq!(sr["status"], "active");
    assert_eq!(sr["intent"], "order");
    assert_eq!(
        sr["subject"]["identifier"]["system"],
        mskflow_events::NHS_NUMBER_SYSTEM
    );
    assert_eq!(sr["subject"]["identifier"]["value"], "9434765919");
    assert_eq!(sr["code"]["coding"][0]["code"], "orthopaedics");
    assert_eq!(
        sr["reasonCode"][0]["text"],
        "end-stage hip OA, wishes to consider THR"
    );
    let note = sr["note"][0]["text"].as_str().ok_or("no note")?;
    assert!(note.contains("Medial knee pain 6 months"), "{note}");
    assert_eq!(
        sr["basedOn"][0]["identifier"]["value"],
        REFERRAL.to_string()
    );
    assert_eq!(sr["authoredOn"], "2026-11-23T12:00:00Z");
    assert_eq!(sr["id"], onward.onward_referral_id.to_string());
    Ok(())
}

#[test]
fn bmi_and_smoking_never_block_an_orthopaedic_referral() -> TestResult {
    for (bmi, smoking) in [
        (Some(45.0), Some(SmokingStatus::Current)),
        (Some(60.0), Some(SmokingStatus::Current)),
        (Some(45.0), None),
        (None, Some(SmokingStatus::Current)),
    ] {
        let mut r = record(vec![ortho("severe knee OA, failed conservative care")]);
        r.bmi = bmi;
        r.smoking_status = smoking;
        let events = given([requested(Pathway::Knee), booked(1)]).when(Command::Complete {
            record: r,
            nhs_number: Some(NhsNumber::parse("9434765919")?),
            now: at(12),
        })?;
        let referred = events.iter().any(|e| {
            matches!(e, AssessmentEvent::OnwardReferralRequested(o)
                if o.destination == OnwardDestination::Orthopaedics)
        });
        assert!(referred, "BMI {bmi:?}, smoking {smoking:?}: {events:?}");
        match &events[0] {
            AssessmentEvent::AssessmentCompleted(c) => {
                assert_eq!(c.bmi, bmi);
                assert_eq!(c.smoking_status, smoking);
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    Ok(())
}

#[test]
fn discharge_after_assessment_but_not_while_booked() -> TestResult {
    let cmd = Command::Discharge {
        reason: DischargeReason::AssessmentOutcome,
        notify_referrer: true,
    };
    assert_eq!(
        given([requested(Pathway::Knee), booked(1)]).when(cmd.clone()),
        Err(DomainError::DischargeWhileBooked)
    );
    let g = given([requested(Pathway::Knee), booked(1)]);
    let assessed = g.state_after(complete(vec![Outcome::CommunityPhysiotherapy])?)?;
    assert_eq!(
        handle(&assessed, cmd.clone(), &Policy::default()),
        Ok(vec![discharged(DischargeReason::AssessmentOutcome)])
    );
    Ok(())
}

#[test]
fn policy_refuses_non_clinical_criteria_and_bad_values() {
    assert_eq!(Policy::from_toml("").ok(), Some(Policy { max_missed: 2 }));
    assert_eq!(
        Policy::from_toml("max_missed = 3").ok(),
        Some(Policy { max_missed: 3 })
    );
    for text in [
        "max_missed = 2\northopaedic_max_bmi = 40",
        "[onward.orthopaedics]\nrequire_non_smoker = true",
        "BMI_limit = 35",
    ] {
        assert!(
            matches!(
                Policy::from_toml(text),
                Err(PolicyError::NonClinicalCriterion { .. })
            ),
            "{text}"
        );
    }
    assert!(matches!(
        Policy::from_toml("max_missed = 0"),
        Err(PolicyError::Invalid(_))
    ));
    assert!(matches!(
        Policy::from_toml("max_mised = 2"),
        Err(PolicyError::Parse(_))
    ));
}
