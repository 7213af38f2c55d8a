//! The referral aggregate: pure decision (`handle`) and evolution (`apply`).
//!
//! No I/O here: the service layer reads the stream, folds it with [`apply`],
//! asks [`handle`] for new events and appends them.

use chrono::NaiveDate;
use mskflow_events::intake::{
    CancellationStatus, IntakeEvent, ReferralCancelled, ReferralDetails, ReferralReceived,
    ReferralRedirected, ReferralRejected, ReferralTriaged, StartBackScore,
};
use mskflow_events::types::OdsCode;
use mskflow_events::types::{FcpPriority, Pathway, RedirectDestination, Urgency};
use uuid::Uuid;

use crate::rules::{Decision, RuleSet};

/// Where a referral is in intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Received,
    Triaged,
    Redirected,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Triaged => "triaged",
            Status::Redirected => "redirected",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }
}

/// A referral's intake state, folded from its events. The default value is
/// the state of a referral that has no events yet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReferralState {
    pub referral_id: Option<Uuid>,
    /// `None` until the referral is received.
    pub status: Option<Status>,
    /// Number of events applied (the stream version).
    pub version: u64,
    /// The request that delivered the referral.
    pub request_id: Option<Uuid>,
    pub rule_set_version: Option<String>,
    pub rule_id: Option<String>,
    pub priority: Option<FcpPriority>,
    pub pathway: Option<Pathway>,
    pub start_back: Option<StartBackScore>,
    pub destination: Option<RedirectDestination>,
    pub urgency: Option<Urgency>,
    /// Machine reason of a rejection (e.g. `under-16`).
    pub reason_code: Option<String>,
    /// Reason of a redirection or rejection.
    pub reason: Option<String>,
    /// The organisation that sent the referral (only it may cancel).
    pub sender_ods: Option<OdsCode>,
}

impl ReferralState {
    /// Whether the referral has been recorded.
    pub fn exists(&self) -> bool {
        self.status.is_some()
    }
}

/// What may be asked of a referral.
#[allow(
    clippy::large_enum_variant,
    reason = "commands are handled one at a time; boxing the referral would only add indirection"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Record a new referral and triage it.
    Submit {
        referral_id: Uuid,
        request_id: Uuid,
        details: ReferralDetails,
        /// The referral date: ages are computed on it.
        today: NaiveDate,
    },
    /// Withdraw an active referral at its sender's request.
    Cancel {
        request_id: Uuid,
        status: CancellationStatus,
        /// The organisation asking (must be the one that sent it).
        requested_by: Option<OdsCode>,
        message_id: Option<String>,
    },
}

/// A command the referral refuses. Business outcomes, not failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The referral is already recorded. gRPC `ALREADY_EXISTS` (with the
    /// referral id in metadata); HTTP 409 OperationOutcome `duplicate`.
    #[error("referral {referral_id} is already recorded")]
    AlreadyRecorded { referral_id: Uuid },
    /// No such referral. gRPC `NOT_FOUND`; HTTP 404 `not-found`.
    #[error("referral is not recorded")]
    NotFound,
    /// Only an active (received or triaged) referral can be cancelled.
    /// gRPC `FAILED_PRECONDITION`; HTTP 422 `business-rule`.
    #[error("referral {referral_id} is {status} and can no longer be cancelled")]
    NotActive {
        referral_id: Uuid,
        status: &'static str,
    },
    /// Another organisation asked. gRPC `PERMISSION_DENIED`; HTTP 403 `forbidden`.
    #[error("only the organisation that sent referral {referral_id} may cancel it")]
    NotSender { referral_id: Uuid },
}

/// Decide which events a command produces.
pub fn handle(
    state: &ReferralState,
    cmd: Command,
    rules: &RuleSet,
) -> Result<Vec<IntakeEvent>, DomainError> {
    match cmd {
        Command::Submit {
            referral_id,
            request_id,
            details,
            today,
        } => {
            if state.exists() {
                return Err(DomainError::AlreadyRecorded {
                    referral_id: state.referral_id.unwrap_or(referral_id),
                });
            }
            let rule_set_version = rules.version().to_owned();
            let decision = match rules.evaluate(&details, today) {
                Decision::Redirect {
                    rule_id,
                    destination,
                    urgency,
                    red_flags,
                    reason,
                } => IntakeEvent::ReferralRedirected(ReferralRedirected {
                    referral_id,
                    rule_set_version,
                    rule_id,
                    destination,
                    urgency,
                    red_flags,
                    reason,
                }),
                Decision::Reject {
                    rule_id,
                    reason_code,
                    reason,
                } => IntakeEvent::ReferralRejected(ReferralRejected {
                    referral_id,
                    rule_set_version,
                    rule_id,
                    reason_code,
                    reason,
                }),
                Decision::Triage {
                    rule_id,
                    priority,
                    pathway,
                    start_back,
                    reasons,
                } => IntakeEvent::ReferralTriaged(ReferralTriaged {
                    referral_id,
                    rule_set_version,
                    rule_id,
                    priority,
                    pathway,
                    start_back,
                    reasons,
                }),
            };
            Ok(vec![
                IntakeEvent::ReferralReceived(ReferralReceived {
                    referral_id,
                    request_id,
                    referral: details,
                }),
                decision,
            ])
        }
        Command::Cancel {
            request_id,
            status,
            requested_by,
            message_id,
        } => {
            let (Some(referral_id), Some(current)) = (state.referral_id, state.status) else {
                return Err(DomainError::NotFound);
            };
            if !matches!(current, Status::Received | Status::Triaged) {
                return Err(DomainError::NotActive {
                    referral_id,
                    status: current.code(),
                });
            }
            if state.sender_ods.is_some() && requested_by != state.sender_ods {
                return Err(DomainError::NotSender { referral_id });
            }
            Ok(vec![IntakeEvent::ReferralCancelled(ReferralCancelled {
                referral_id,
                request_id,
                status,
                cancelled_by: requested_by,
                message_id,
            })])
        }
    }
}

/// Evolve the state by one event.
pub fn apply(mut state: ReferralState, event: &IntakeEvent) -> ReferralState {
    state.version += 1;
    match event {
        IntakeEvent::ReferralReceived(e) => {
            state.referral_id = Some(e.referral_id);
            state.request_id = Some(e.request_id);
            state.status = Some(Status::Received);
            state.sender_ods = e.referral.sender.ods_code.clone();
        }
        IntakeEvent::ReferralTriaged(e) => {
            state.status = Some(Status::Triaged);
            state.rule_set_version = Some(e.rule_set_version.clone());
            state.rule_id = Some(e.rule_id.clone());
            state.priority = Some(e.priority);
            state.pathway = Some(e.pathway);
            state.start_back = e.start_back;
        }
        IntakeEvent::ReferralRedirected(e) => {
            state.status = Some(Status::Redirected);
            state.rule_set_version = Some(e.rule_set_version.clone());
            state.rule_id = Some(e.rule_id.clone());
            state.destination = Some(e.destination);
            state.urgency = Some(e.urgency);
            state.reason = Some(e.reason.clone());
        }
        IntakeEvent::ReferralRejected(e) => {
            state.status = Some(Status::Rejected);
            state.rule_set_version = Some(e.rule_set_version.clone());
            state.rule_id = Some(e.rule_id.clone());
            state.reason_code = Some(e.reason_code.clone());
            state.reason = Some(e.reason.clone());
        }
        IntakeEvent::ReferralCancelled(e) => {
            state.status = Some(Status::Cancelled);
            state.reason_code = Some(e.status.code().to_owned());
        }
    }
    state
}

/// Fold a stream of events into a state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a IntakeEvent>) -> ReferralState {
    events.into_iter().fold(ReferralState::default(), apply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mskflow_events::intake::Coding;
    use mskflow_events::intake::{PatientDetails, Sender, StartBackAnswers};
    use mskflow_events::types::{NhsNumber, ReceivedVia, RedFlag, RequestPriority, StartBackRisk};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const REFERRAL: Uuid = Uuid::from_u128(0x1111);
    const REQUEST: Uuid = Uuid::from_u128(0x2222);

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default()
    }

    fn snomed(code: &str) -> Coding {
        Coding {
            system: Some(crate::rules::SNOMED_SYSTEM.to_owned()),
            code: code.to_owned(),
            display: None,
        }
    }

    /// A 45-year-old with low back pain, nothing else.
    fn referral() -> Result<ReferralDetails, Box<dyn std::error::Error>> {
        Ok(ReferralDetails {
            received_via: ReceivedVia::ProcessMessage,
            sender: Sender {
                ods_code: None,
                endpoint: None,
                message_id: None,
                software: None,
            },
            service_request_identifier: None,
            patient: PatientDetails {
                nhs_number: Some(NhsNumber::parse("9434765919")?),
                family: None,
                given: vec![],
                birth_date: NaiveDate::from_ymd_opt(1981, 5, 2),
                sex: None,
                postcode: None,
                ethnicity: None,
            },
            requester: None,
            reason: vec![snomed("279039007")],
            body_site: vec![],
            requested_priority: RequestPriority::Routine,
            red_flags: vec![],
            start_back: None,
            note: None,
            authored_on: None,
            fhir_json: "{}".to_owned(),
        })
    }

    /// Given `given`, when a submit of `details`, then the events.
    fn when_submitted(
        given: &[IntakeEvent],
        details: ReferralDetails,
    ) -> Result<Vec<IntakeEvent>, Box<dyn std::error::Error>> {
        let rules = RuleSet::default_rules()?;
        let state = fold(given);
        Ok(handle(
            &state,
            Command::Submit {
                referral_id: REFERRAL,
                request_id: REQUEST,
                details,
                today: today(),
            },
            &rules,
        )?)
    }

    /// The decision event of a fresh submit, after checking the received event.
    fn decision(details: ReferralDetails) -> Result<IntakeEvent, Box<dyn std::error::Error>> {
        let events = when_submitted(&[], details.clone())?;
        let [received, decision]: [IntakeEvent; 2] = events
            .try_into()
            .map_err(|e: Vec<IntakeEvent>| format!("expected 2 events, got {}", e.len()))?;
        assert_eq!(
            received,
            IntakeEvent::ReferralReceived(ReferralReceived {
                referral_id: REFERRAL,
                request_id: REQUEST,
                referral: details,
            })
        );
        Ok(decision)
    }

    fn triaged(details: ReferralDetails) -> Result<ReferralTriaged, Box<dyn std::error::Error>> {
        match decision(details)? {
            IntakeEvent::ReferralTriaged(t) => {
                assert_eq!(t.rule_set_version, "2026.1");
                assert_eq!(t.referral_id, REFERRAL);
                Ok(t)
            }
            other => Err(format!("expected triaged, got {other:?}").into()),
        }
    }

    #[test]
    fn every_red_flag_redirects_with_the_rule_version() -> TestResult {
        use RedFlag as F;
        use RedirectDestination as D;
        let cases = [
            (
                F::SaddleAnaesthesia,
                "suspected-cauda-equina",
                D::EmergencyDepartment,
                Urgency::Emergency,
            ),
            (
                F::BladderOrBowelDysfunction,
                "suspected-cauda-equina",
                D::EmergencyDepartment,
                Urgency::Emergency,
            ),
            (
                F::BilateralNeurologicalSymptoms,
                "suspected-cauda-equina",
                D::EmergencyDepartment,
                Urgency::Emergency,
            ),
            (
                F::HistoryOfCancer,
                "suspected-cancer",
                D::UrgentSuspectedCancer,
                Urgency::Urgent,
            ),
            (
                F::UnexplainedWeightLoss,
                "suspected-cancer",
                D::UrgentSuspectedCancer,
                Urgency::Urgent,
            ),
            (
                F::FeverOrSystemicIllness,
                "suspected-infection",
                D::UrgentMedicalAssessment,
                Urgency::Urgent,
            ),
            (
                F::Immunosuppression,
                "suspected-infection",
                D::UrgentMedicalAssessment,
                Urgency::Urgent,
            ),
            (
                F::IntravenousDrugUse,
                "suspected-infection",
                D::UrgentMedicalAssessment,
                Urgency::Urgent,
            ),
            (
                F::SignificantTrauma,
                "suspected-fracture",
                D::FractureClinic,
                Urgency::Urgent,
            ),
            (
                F::OsteoporosisOrSteroidUse,
                "suspected-fracture",
                D::FractureClinic,
                Urgency::Urgent,
            ),
            (
                F::InflammatoryMorningStiffness,
                "suspected-inflammatory-arthritis",
                D::UrgentRheumatology,
                Urgency::Urgent,
            ),
            (
                F::PersistentJointSwelling,
                "suspected-inflammatory-arthritis",
                D::UrgentRheumatology,
                Urgency::Urgent,
            ),
        ];
        for (flag, rule, destination, urgency) in cases {
            let mut details = referral()?;
            details.red_flags = vec![flag];
            match decision(details)? {
                IntakeEvent::ReferralRedirected(r) => {
                    assert_eq!(r.rule_id, rule, "{flag}");
                    assert_eq!(r.destination, destination, "{flag}");
                    assert_eq!(r.urgency, urgency, "{flag}");
                    assert_eq!(r.rule_set_version, "2026.1", "{flag}");
                    assert_eq!(r.red_flags, vec![flag]);
                    assert!(!r.reason.is_empty());
                }
                other => return Err(format!("{flag}: expected redirect, got {other:?}").into()),
            }
        }
        Ok(())
    }

    #[test]
    fn night_pain_alone_does_not_redirect() -> TestResult {
        let mut details = referral()?;
        details.red_flags = vec![RedFlag::NightPain];
        assert_eq!(triaged(details)?.pathway, Pathway::BackAndRadicularPain);
        Ok(())
    }

    #[test]
    fn cauda_equina_beats_cancer() -> TestResult {
        let mut details = referral()?;
        details.red_flags = vec![RedFlag::HistoryOfCancer, RedFlag::SaddleAnaesthesia];
        match decision(details)? {
            IntakeEvent::ReferralRedirected(r) => {
                assert_eq!(r.rule_id, "suspected-cauda-equina");
                assert_eq!(r.destination, RedirectDestination::EmergencyDepartment);
                // Only the flags that made this rule fire are recorded.
                assert_eq!(r.red_flags, vec![RedFlag::SaddleAnaesthesia]);
                Ok(())
            }
            other => Err(format!("expected redirect, got {other:?}").into()),
        }
    }

    #[test]
    fn red_flags_beat_the_age_rule() -> TestResult {
        let mut details = referral()?;
        details.patient.birth_date = NaiveDate::from_ymd_opt(2015, 1, 1);
        details.red_flags = vec![RedFlag::SignificantTrauma];
        assert!(matches!(
            decision(details)?,
            IntakeEvent::ReferralRedirected(_)
        ));
        Ok(())
    }

    #[test]
    fn under_16_is_rejected() -> TestResult {
        let mut details = referral()?;
        // 16th birthday tomorrow: still 15 on the referral date.
        details.patient.birth_date = NaiveDate::from_ymd_opt(2010, 11, 24);
        match decision(details)? {
            IntakeEvent::ReferralRejected(r) => {
                assert_eq!(r.rule_id, "under-16");
                assert_eq!(r.reason_code, "under-16");
                assert_eq!(r.rule_set_version, "2026.1");
                assert!(r.reason.contains("paediatric"));
            }
            other => return Err(format!("expected reject, got {other:?}").into()),
        }
        // 16 today: accepted.
        let mut details = referral()?;
        details.patient.birth_date = NaiveDate::from_ymd_opt(2010, 11, 23);
        assert_eq!(triaged(details)?.rule_id, "default");
        // Unknown birth date: the age rule cannot hold.
        let mut details = referral()?;
        details.patient.birth_date = None;
        assert_eq!(triaged(details)?.rule_id, "default");
        Ok(())
    }

    #[test]
    fn plain_back_pain_is_routine_fcp() -> TestResult {
        let t = triaged(referral()?)?;
        assert_eq!(t.rule_id, "default");
        assert_eq!(t.priority, FcpPriority::Routine);
        assert_eq!(t.pathway, Pathway::BackAndRadicularPain);
        assert_eq!(t.start_back, None);
        assert!(!t.reasons.is_empty());
        Ok(())
    }

    fn start_back(bits: [u8; 9]) -> StartBackAnswers {
        StartBackAnswers(bits.map(|b| b == 1))
    }

    #[test]
    fn start_back_scores_are_recorded_and_high_risk_is_soon() -> TestResult {
        let cases = [
            (
                [1, 1, 1, 0, 0, 0, 0, 0, 0],
                3,
                0,
                StartBackRisk::Low,
                FcpPriority::Routine,
            ),
            (
                [1, 1, 1, 1, 1, 0, 0, 0, 0],
                5,
                1,
                StartBackRisk::Medium,
                FcpPriority::Routine,
            ),
            (
                [1, 1, 1, 1, 1, 1, 1, 0, 0],
                7,
                3,
                StartBackRisk::Medium,
                FcpPriority::Routine,
            ),
            (
                [0, 0, 0, 0, 1, 1, 1, 1, 0],
                4,
                4,
                StartBackRisk::High,
                FcpPriority::Soon,
            ),
            (
                [1, 1, 1, 1, 1, 1, 1, 1, 1],
                9,
                5,
                StartBackRisk::High,
                FcpPriority::Soon,
            ),
        ];
        for (bits, total, psychosocial, risk, priority) in cases {
            let mut details = referral()?;
            details.start_back = Some(start_back(bits));
            let t = triaged(details)?;
            assert_eq!(
                t.start_back,
                Some(StartBackScore {
                    total,
                    psychosocial,
                    risk
                }),
                "{bits:?}"
            );
            assert_eq!(t.priority, priority, "{bits:?}");
            assert_eq!(t.pathway, Pathway::BackAndRadicularPain);
        }
        Ok(())
    }

    #[test]
    fn requested_urgent_is_urgent_and_beats_start_back() -> TestResult {
        for requested in [
            RequestPriority::Urgent,
            RequestPriority::Asap,
            RequestPriority::Stat,
        ] {
            let mut details = referral()?;
            details.requested_priority = requested;
            details.start_back = Some(start_back([1; 9]));
            let t = triaged(details)?;
            assert_eq!(t.priority, FcpPriority::Urgent, "{requested}");
            assert!(t.reasons.iter().any(|r| r.starts_with("requested-urgent")));
        }
        Ok(())
    }

    #[test]
    fn each_pathway_by_code() -> TestResult {
        let by_reason = [
            ("279039007", Pathway::BackAndRadicularPain),
            ("161891005", Pathway::BackAndRadicularPain),
            ("23056005", Pathway::BackAndRadicularPain),
            ("49218002", Pathway::Hip),
            ("30989003", Pathway::Knee),
            ("45326000", Pathway::Shoulder),
            ("53057004", Pathway::Hand),
            ("47933007", Pathway::Foot),
            ("69896004", Pathway::Inflammatory),
            ("1912002", Pathway::FallsFracture),
            ("22253000", Pathway::Other), // pain, unspecified
        ];
        for (code, pathway) in by_reason {
            let mut details = referral()?;
            details.reason = vec![snomed(code)];
            assert_eq!(triaged(details)?.pathway, pathway, "reason {code}");
        }
        let by_site = [
            ("37822005", Pathway::BackAndRadicularPain),
            ("24136001", Pathway::Hip),
            ("72696002", Pathway::Knee),
        ];
        for (code, pathway) in by_site {
            let mut details = referral()?;
            details.reason = vec![snomed("22253000")];
            details.body_site = vec![snomed(code)];
            assert_eq!(triaged(details)?.pathway, pathway, "body site {code}");
        }
        Ok(())
    }

    #[test]
    fn codes_from_other_systems_do_not_match() -> TestResult {
        let mut details = referral()?;
        details.reason = vec![Coding {
            system: Some("http://hl7.org/fhir/sid/icd-10".to_owned()),
            code: "30989003".to_owned(),
            display: None,
        }];
        assert_eq!(triaged(details)?.pathway, Pathway::Other);
        Ok(())
    }

    #[test]
    fn resubmitting_an_existing_referral_is_refused() -> TestResult {
        let given = when_submitted(&[], referral()?)?;
        let again = when_submitted(&given, referral()?);
        match again {
            Err(e) => match e.downcast_ref::<DomainError>() {
                Some(DomainError::AlreadyRecorded { referral_id }) => {
                    assert_eq!(*referral_id, REFERRAL);
                    Ok(())
                }
                Some(other) => Err(format!("wrong refusal: {other}").into()),
                None => Err(e),
            },
            Ok(events) => Err(format!("resubmit accepted: {events:?}").into()),
        }
    }

    #[test]
    fn apply_folds_the_state() -> TestResult {
        let mut details = referral()?;
        details.start_back = Some(start_back([0, 0, 0, 0, 1, 1, 1, 1, 0]));
        let events = when_submitted(&[], details)?;
        let state = fold(&events);
        assert_eq!(state.status, Some(Status::Triaged));
        assert_eq!(state.version, 2);
        assert_eq!(state.referral_id, Some(REFERRAL));
        assert_eq!(state.request_id, Some(REQUEST));
        assert_eq!(state.rule_set_version.as_deref(), Some("2026.1"));
        assert_eq!(state.priority, Some(FcpPriority::Soon));
        assert_eq!(state.pathway, Some(Pathway::BackAndRadicularPain));
        assert_eq!(state.start_back.map(|s| s.risk), Some(StartBackRisk::High));

        let mut details = referral()?;
        details.red_flags = vec![RedFlag::SaddleAnaesthesia];
        let state = fold(&when_submitted(&[], details)?);
        assert_eq!(state.status, Some(Status::Redirected));
        assert_eq!(
            state.destination,
            Some(RedirectDestination::EmergencyDepartment)
        );
        assert_eq!(state.urgency, Some(Urgency::Emergency));
        assert!(state.reason.is_some());
        Ok(())
    }

    fn cancel_by(
        ods: Option<&str>,
        status: CancellationStatus,
    ) -> Result<Command, Box<dyn std::error::Error>> {
        Ok(Command::Cancel {
            request_id: Uuid::from_u128(0x3333),
            status,
            requested_by: ods.map(OdsCode::parse).transpose()?,
            message_id: None,
        })
    }

    fn sent_by(ods: &str) -> Result<ReferralDetails, Box<dyn std::error::Error>> {
        let mut details = referral()?;
        details.sender.ods_code = Some(OdsCode::parse(ods)?);
        Ok(details)
    }

    #[test]
    fn the_sender_cancels_an_active_referral() -> TestResult {
        let given = when_submitted(&[], sent_by("A81001")?)?;
        let state = fold(&given);
        let events = handle(
            &state,
            cancel_by(Some("A81001"), CancellationStatus::Revoked)?,
            &RuleSet::default_rules()?,
        )?;
        assert!(matches!(
            events.as_slice(),
            [IntakeEvent::ReferralCancelled(ReferralCancelled {
                status: CancellationStatus::Revoked,
                ..
            })]
        ));
        let after = events.iter().fold(state, apply);
        assert_eq!(after.status, Some(Status::Cancelled));
        // Not twice.
        let again = handle(
            &after,
            cancel_by(Some("A81001"), CancellationStatus::EnteredInError)?,
            &RuleSet::default_rules()?,
        );
        assert!(matches!(
            again,
            Err(DomainError::NotActive {
                status: "cancelled",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn only_active_referrals_of_the_same_sender_can_be_cancelled() -> TestResult {
        let state = fold(&when_submitted(&[], sent_by("A81001")?)?);
        let other = handle(
            &state,
            cancel_by(Some("B82002"), CancellationStatus::Revoked)?,
            &RuleSet::default_rules()?,
        );
        assert!(matches!(other, Err(DomainError::NotSender { .. })));
        let mut red = sent_by("A81001")?;
        red.red_flags = vec![RedFlag::SaddleAnaesthesia];
        let redirected = fold(&when_submitted(&[], red)?);
        let refused = handle(
            &redirected,
            cancel_by(Some("A81001"), CancellationStatus::Revoked)?,
            &RuleSet::default_rules()?,
        );
        assert!(matches!(
            refused,
            Err(DomainError::NotActive {
                status: "redirected",
                ..
            })
        ));
        let unknown = handle(
            &ReferralState::default(),
            cancel_by(Some("A81001"), CancellationStatus::Revoked)?,
            &RuleSet::default_rules()?,
        );
        assert_eq!(unknown, Err(DomainError::NotFound));
        Ok(())
    }
}
