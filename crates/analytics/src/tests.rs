#![allow(
    clippy::unwrap_used,
    reason = "test fixtures are built from literals known to be valid"
)]

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::assessment::{
    self as a, AssessmentEvent, DecisionAid, DeliveryState, DistressScreen, GroupProgramme,
    OnwardDestination, Outcome, Party, SlotEvent, SlotReleaseReason, SmokingStatus,
};
use mskflow_events::intake::{
    self as i, CancellationStatus, Coding, Identifier, IntakeEvent, PatientDetails,
    ReferralDetails, Requester, Sender, StartBackAnswers,
};
use mskflow_events::outcomes::{self as o, ItemAnswer, Measure, OutcomeEvent, Score, Timepoint};
use mskflow_events::scheduling::{
    self as s, BookedSession, CancelledBy, DayOfWeek, PatientChoices, Place, Programme,
    SchedulingEvent,
};
use mskflow_events::types::{
    ContactMode, FcpPriority, Pathway, ReceivedVia, RedFlag, RedirectDestination, RequestPriority,
    Sex, Urgency,
};
use mskflow_events::{NhsNumber, OdsCode};
use serde_json::Value;
use uuid::Uuid;

use super::*;

const SECRET: &[u8] = b"a test secret of at least 16 bytes";
const NHS: &str = "9434765919";
const FAMILY: &str = "Quixleyfamily";
const GIVEN: &str = "Zebedeegiven";
const POSTCODE: &str = "LS1 5HD";
const BIRTH_DATE: &str = "1961-07-23";

/// Every identifier and free-text sentinel put into the events below.
fn forbidden() -> Vec<&'static str> {
    vec![
        NHS,
        "943 476 5919",
        FAMILY,
        GIVEN,
        POSTCODE,
        "LS15HD",
        BIRTH_DATE,
        "SENTINEL",
    ]
}

fn ctx() -> Context {
    Context {
        pseudonymiser: Pseudonymiser::new(SECRET).unwrap(),
        imd: ImdLookup::example().unwrap(),
    }
}

fn referral_id() -> Uuid {
    Uuid::from_u128(0x1234)
}

fn at(h: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, h, 0, 0).unwrap()
}

fn local(d: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 4, d)
        .unwrap()
        .and_hms_opt(10, 0, 0)
        .unwrap()
}

fn coding(code: &str) -> Coding {
    Coding {
        system: Some("http://snomed.info/sct".to_owned()),
        code: code.to_owned(),
        display: Some("SENTINEL coding display".to_owned()),
    }
}

fn received() -> i::ReferralReceived {
    i::ReferralReceived {
        referral_id: referral_id(),
        request_id: Uuid::from_u128(7),
        referral: ReferralDetails {
            received_via: ReceivedVia::ProcessMessage,
            sender: Sender {
                ods_code: Some(OdsCode::parse("B86001").unwrap()),
                endpoint: Some("https://SENTINEL.example/endpoint".to_owned()),
                message_id: Some("SENTINEL-message-id".to_owned()),
                software: Some("SENTINEL software".to_owned()),
            },
            service_request_identifier: Some(Identifier {
                system: Some("https://SENTINEL.example/id".to_owned()),
                value: "SENTINEL-sr-id".to_owned(),
            }),
            patient: PatientDetails {
                nhs_number: Some(NhsNumber::parse(NHS).unwrap()),
                family: Some(FAMILY.to_owned()),
                given: vec![GIVEN.to_owned()],
                birth_date: Some(NaiveDate::parse_from_str(BIRTH_DATE, "%Y-%m-%d").unwrap()),
                sex: Some(Sex::Female),
                postcode: Some(POSTCODE.to_owned()),
                ethnicity: Some(Coding {
                    system: Some(
                        "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory".to_owned(),
                    ),
                    code: "A".to_owned(),
                    display: Some("SENTINEL ethnicity display".to_owned()),
                }),
            },
            requester: Some(Requester {
                display: Some("Dr SENTINEL Referrer".to_owned()),
                ods_code: Some(OdsCode::parse("B86002").unwrap()),
            }),
            reason: vec![coding("279039007")],
            body_site: vec![coding("37822005")],
            requested_priority: RequestPriority::Routine,
            red_flags: vec![RedFlag::NightPain],
            start_back: Some(StartBackAnswers([
                true, false, true, false, true, false, true, false, true,
            ])),
            note: Some(format!("SENTINEL note about {FAMILY} at {POSTCODE}")),
            authored_on: Some("2026-03-01".to_owned()),
            fhir_json: format!(
                "{{\"SENTINEL\": \"{NHS} {FAMILY} {GIVEN} {POSTCODE} {BIRTH_DATE}\"}}"
            ),
        },
    }
}

fn slot() -> a::Slot {
    a::Slot {
        slot_id: Uuid::from_u128(0x51),
        clinician_id: "SENTINEL-clinician".to_owned(),
        start: at(9),
        end: at(10),
        mode: ContactMode::FaceToFace,
        location: Some("SENTINEL location".to_owned()),
    }
}

/// (type, payload) of one event of every type, with sentinels in every
/// free-text field.
fn every_event() -> Vec<(&'static str, Value)> {
    fn data(v: impl serde::Serialize) -> Value {
        serde_json::to_value(v).unwrap()["data"].clone()
    }
    let r = referral_id();
    let mut events = Vec::new();
    let intake = vec![
        IntakeEvent::ReferralReceived(received()),
        IntakeEvent::ReferralTriaged(i::ReferralTriaged {
            referral_id: r,
            rule_set_version: "2026.1".to_owned(),
            rule_id: "knee-default".to_owned(),
            priority: FcpPriority::Routine,
            pathway: Pathway::Knee,
            start_back: Some(StartBackAnswers([true; 9]).score()),
            reasons: vec!["SENTINEL reason".to_owned()],
        }),
        IntakeEvent::ReferralRedirected(i::ReferralRedirected {
            referral_id: r,
            rule_set_version: "2026.1".to_owned(),
            rule_id: "cauda-equina".to_owned(),
            destination: RedirectDestination::EmergencyDepartment,
            urgency: Urgency::Emergency,
            red_flags: vec![RedFlag::SaddleAnaesthesia],
            reason: "SENTINEL redirect reason".to_owned(),
        }),
        IntakeEvent::ReferralRejected(i::ReferralRejected {
            referral_id: r,
            rule_set_version: "2026.1".to_owned(),
            rule_id: "age".to_owned(),
            reason_code: "under-16".to_owned(),
            reason: "SENTINEL reject reason".to_owned(),
        }),
        IntakeEvent::ReferralCancelled(i::ReferralCancelled {
            referral_id: r,
            request_id: Uuid::from_u128(8),
            status: CancellationStatus::Revoked,
            cancelled_by: Some(OdsCode::parse("B86001").unwrap()),
            message_id: Some("SENTINEL-cancel-message".to_owned()),
        }),
    ];
    for e in intake {
        events.push((e.event_type(), data(&e)));
    }
    let assessment = vec![
        AssessmentEvent::AssessmentRequested(a::AssessmentRequested {
            referral_id: r,
            priority: FcpPriority::Soon,
            pathway: Pathway::Knee,
            triaged_at: at(8),
        }),
        AssessmentEvent::AssessmentBooked(a::AssessmentBooked {
            referral_id: r,
            slot: slot(),
        }),
        AssessmentEvent::AssessmentRescheduled(a::AssessmentRescheduled {
            referral_id: r,
            previous_slot_id: Uuid::from_u128(0x50),
            slot: slot(),
            requested_by: Party::Patient,
            reason: Some("SENTINEL reschedule reason".to_owned()),
        }),
        AssessmentEvent::AssessmentCancelled(a::AssessmentCancelled {
            referral_id: r,
            slot_id: Some(Uuid::from_u128(0x51)),
            cancelled_by: Party::Service,
            reason: "SENTINEL cancel reason".to_owned(),
        }),
        AssessmentEvent::AppointmentMissed(a::AppointmentMissed {
            referral_id: r,
            slot_id: Uuid::from_u128(0x51),
            missed_count: 1,
        }),
        AssessmentEvent::AssessmentCompleted(a::AssessmentCompleted {
            referral_id: r,
            slot_id: Uuid::from_u128(0x51),
            clinician_id: "SENTINEL-clinician".to_owned(),
            findings_summary: format!("SENTINEL findings for {GIVEN} {FAMILY}"),
            shared_decision_made: true,
            decision_aid: Some(DecisionAid::KneeOsteoarthritis),
            work_discussed: true,
            fit_note_issued: false,
            psychological_distress: DistressScreen::Negative,
            bmi: Some(31.5),
            smoking_status: Some(SmokingStatus::Former),
            outcomes: vec![
                Outcome::AdviceAndSelfManagement {
                    app: Some("SENTINEL app".to_owned()),
                },
                Outcome::GroupProgramme {
                    programme: GroupProgramme::EscapePain,
                },
                Outcome::OnwardReferral {
                    destination: OnwardDestination::Imaging,
                    reason: "SENTINEL onward reason".to_owned(),
                },
            ],
        }),
        AssessmentEvent::OnwardReferralRequested(a::OnwardReferralRequested {
            onward_referral_id: Uuid::from_u128(0x60),
            referral_id: r,
            destination: OnwardDestination::Imaging,
            reason: "SENTINEL onward reason".to_owned(),
            service_request: serde_json::json!({"resourceType": "ServiceRequest", "subject": {"identifier": {"value": NHS}}, "note": [{"text": "SENTINEL"}]}),
            delivery: DeliveryState::Pending,
        }),
        AssessmentEvent::EpisodeDischarged(a::EpisodeDischarged {
            referral_id: r,
            reason: a::DischargeReason::AssessmentOutcome,
            notify_referrer: true,
        }),
    ];
    for e in assessment {
        events.push((e.event_type(), data(&e)));
    }
    let slots = vec![
        SlotEvent::FcpSlotPublished(a::FcpSlotPublished { slot: slot() }),
        SlotEvent::FcpSlotBooked(a::FcpSlotBooked {
            slot_id: Uuid::from_u128(0x51),
            referral_id: r,
        }),
        SlotEvent::FcpSlotReleased(a::FcpSlotReleased {
            slot_id: Uuid::from_u128(0x51),
            referral_id: r,
            reason: SlotReleaseReason::Cancelled,
        }),
    ];
    for e in slots {
        events.push((e.event_type(), data(&e)));
    }
    let place = Place::Class {
        class_id: Uuid::from_u128(0x70),
    };
    let scheduling = vec![
        SchedulingEvent::VenueRegistered(s::VenueRegistered {
            venue_id: "leeds-central".to_owned(),
            name: "SENTINEL venue name".to_owned(),
        }),
        SchedulingEvent::ClassScheduled(s::ClassScheduled {
            class_id: Uuid::from_u128(0x70),
            programme: Programme::EscapePain,
            venue_id: "leeds-central".to_owned(),
            days: vec![DayOfWeek::Monday, DayOfWeek::Thursday],
            start_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            duration_minutes: 60,
            capacity: 10,
            session_dates: vec![NaiveDate::from_ymd_opt(2026, 4, 6).unwrap()],
        }),
        SchedulingEvent::SlotPublished(s::SlotPublished {
            slot_id: Uuid::from_u128(0x71),
            clinician: "SENTINEL-physio".to_owned(),
            venue_id: "leeds-central".to_owned(),
            starts_at: local(6),
            ends_at: local(6),
            mode: ContactMode::Telephone,
        }),
        SchedulingEvent::ClassEnrolled(s::ClassEnrolled {
            class_id: Uuid::from_u128(0x70),
            referral_id: r,
        }),
        SchedulingEvent::ClassPlaceReleased(s::ClassPlaceReleased {
            class_id: Uuid::from_u128(0x70),
            referral_id: r,
        }),
        SchedulingEvent::SlotBooked(s::SlotBooked {
            slot_id: Uuid::from_u128(0x71),
            referral_id: r,
        }),
        SchedulingEvent::SlotReleased(s::SlotReleased {
            slot_id: Uuid::from_u128(0x71),
            referral_id: r,
        }),
        SchedulingEvent::PatientWaitlisted(s::PatientWaitlisted {
            referral_id: r,
            priority: FcpPriority::Routine,
            pathway: Pathway::Knee,
            programme: Programme::EscapePain,
            sessions: 12,
            need_recorded_at: at(11),
            choices: PatientChoices {
                venue_ids: vec!["SENTINEL-near-home".to_owned()],
                days: vec![DayOfWeek::Monday],
                modes: vec![ContactMode::FaceToFace],
            },
        }),
        SchedulingEvent::OfferMade(s::OfferMade {
            referral_id: r,
            offer_id: Uuid::from_u128(0x80),
            place,
            first_session_at: local(6),
        }),
        SchedulingEvent::OfferAccepted(s::OfferAccepted {
            referral_id: r,
            offer_id: Uuid::from_u128(0x80),
        }),
        SchedulingEvent::OfferDeclined(s::OfferDeclined {
            referral_id: r,
            offer_id: Uuid::from_u128(0x80),
        }),
        SchedulingEvent::PlaceBooked(s::PlaceBooked {
            referral_id: r,
            place,
            sessions: vec![BookedSession {
                session_no: 1,
                starts_at: local(6),
                venue_id: "leeds-central".to_owned(),
                mode: ContactMode::FaceToFace,
            }],
        }),
        SchedulingEvent::SessionAttended(s::SessionAttended {
            referral_id: r,
            session_no: 1,
        }),
        SchedulingEvent::SessionMissed(s::SessionMissed {
            referral_id: r,
            session_no: 2,
            missed_total: 1,
        }),
        SchedulingEvent::SessionCancelled(s::SessionCancelled {
            referral_id: r,
            session_no: 3,
            by: CancelledBy::Patient,
        }),
        SchedulingEvent::CourseCompleted(s::CourseCompleted {
            referral_id: r,
            attended: 10,
            missed: 1,
            cancelled: 1,
        }),
        SchedulingEvent::RehabDischarged(s::RehabDischarged {
            referral_id: r,
            reason: s::DischargeReason::GoalsMet,
            notify_referrer: true,
        }),
    ];
    for e in scheduling {
        events.push((e.event_type(), data(&e)));
    }
    let outcomes = vec![
        OutcomeEvent::QuestionnaireScheduled(o::QuestionnaireScheduled {
            referral_id: r,
            measure: Measure::MskHq,
            timepoint: Timepoint::FirstContact,
            due: at(12),
            trigger_event_id: Uuid::from_u128(0x90),
            trigger_event_type: "AssessmentBooked".to_owned(),
        }),
        OutcomeEvent::QuestionnaireSent(o::QuestionnaireSent {
            referral_id: r,
            measure: Measure::MskHq,
            timepoint: Timepoint::FirstContact,
            sent_at: at(12),
        }),
        OutcomeEvent::QuestionnaireCompleted(o::QuestionnaireCompleted {
            referral_id: r,
            response_id: Uuid::from_u128(0x91),
            measure: Measure::MskHq,
            timepoint: Timepoint::FirstContact,
            answers: vec![ItemAnswer {
                link_id: "1".to_owned(),
                value: 3,
            }],
            score: Score::MskHq { total: 31 },
            completed_at: at(13),
        }),
        OutcomeEvent::QuestionnaireOverdue(o::QuestionnaireOverdue {
            referral_id: r,
            measure: Measure::Eq5d5l,
            timepoint: Timepoint::Discharge,
            due: at(12),
            days_overdue: 14,
        }),
        OutcomeEvent::OutcomeChangeRecorded(o::OutcomeChangeRecorded {
            referral_id: r,
            measure: Measure::MskHq,
            from: Timepoint::FirstContact,
            to: Timepoint::Discharge,
            baseline: 31.0,
            later: 40.0,
            change: 9.0,
            minimal_important_change: 6.0,
            reached_minimal_important_change: true,
        }),
    ];
    for e in outcomes {
        events.push((e.event_type(), data(&e)));
    }
    events
}

fn envelope(n: u64, event_type: &str, payload: Value) -> Envelope {
    Envelope {
        event_id: Uuid::from_u128(u128::from(n) + 0x1000),
        stream_id: format!("stream-{n}"),
        sequence: 1,
        position: n,
        occurred_at: at(14),
        recorded_at: at(14),
        causation_id: None,
        correlation_id: Uuid::from_u128(0x2000),
        traceparent: None,
        tracestate: None,
        event_type: event_type.to_owned(),
        schema_version: mskflow_events::SCHEMA_VERSION,
        payload,
    }
}

#[test]
fn pseudonyms_are_stable_and_keyed() {
    let nhs = NhsNumber::parse(NHS).unwrap();
    let p = Pseudonymiser::new(SECRET).unwrap();
    let first = p.pseudonym(&nhs);
    assert_eq!(first, p.pseudonym(&nhs));
    assert_eq!(first, Pseudonymiser::new(SECRET).unwrap().pseudonym(&nhs));
    assert_eq!(first.len(), 64);
    assert!(
        first
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(!first.contains(NHS));
    let other_key = Pseudonymiser::new(b"another secret, also long enough").unwrap();
    assert_ne!(first, other_key.pseudonym(&nhs));
    let other_patient = NhsNumber::parse("9434765870").unwrap();
    assert_ne!(first, p.pseudonym(&other_patient));
}

#[test]
fn pseudonym_is_hmac_sha256_of_the_number() {
    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
    mac.update(b"what do ya want for nothing?");
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // And the pseudonymiser gives the same construction for its key.
    let p = Pseudonymiser::new(SECRET).unwrap();
    let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
    mac.update(NHS.as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(p.pseudonym(&NhsNumber::parse(NHS).unwrap()), expected);
}

#[test]
fn the_secret_is_never_shown_and_short_secrets_are_refused() {
    let p = Pseudonymiser::new(SECRET).unwrap();
    let shown = format!("{p:?} {:?}", ctx());
    assert!(!shown.contains("test secret"), "{shown}");
    assert!(shown.contains("redacted"));
    assert!(matches!(
        Pseudonymiser::new(b""),
        Err(Error::SecretTooShort)
    ));
    assert!(matches!(
        Pseudonymiser::new(b"fifteen bytes!!"),
        Err(Error::SecretTooShort)
    ));
}

#[test]
fn age_bands_at_their_boundaries() {
    let born = NaiveDate::from_ymd_opt(2000, 6, 15).unwrap();
    let on = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    let band = |d| age_band(born, d);
    assert_eq!(band(on(2000, 6, 15)).as_deref(), Some("0-15"));
    assert_eq!(band(on(2016, 6, 14)).as_deref(), Some("0-15"));
    assert_eq!(band(on(2016, 6, 15)).as_deref(), Some("16-24"));
    assert_eq!(band(on(2025, 6, 14)).as_deref(), Some("16-24"));
    assert_eq!(band(on(2025, 6, 15)).as_deref(), Some("25-34"));
    assert_eq!(band(on(2035, 6, 15)).as_deref(), Some("35-44"));
    assert_eq!(band(on(2045, 6, 15)).as_deref(), Some("45-54"));
    assert_eq!(band(on(2055, 6, 15)).as_deref(), Some("55-64"));
    assert_eq!(band(on(2065, 6, 15)).as_deref(), Some("65-74"));
    assert_eq!(band(on(2075, 6, 15)).as_deref(), Some("75-84"));
    assert_eq!(band(on(2085, 6, 14)).as_deref(), Some("75-84"));
    assert_eq!(band(on(2085, 6, 15)).as_deref(), Some("85+"));
    assert_eq!(band(on(2110, 1, 1)).as_deref(), Some("85+"));
    assert_eq!(band(on(2000, 6, 14)), None);
    // Born on 29 February: 16 on 1 March of a common year.
    let leap = NaiveDate::from_ymd_opt(2008, 2, 29).unwrap();
    assert_eq!(age_band(leap, on(2024, 2, 28)).as_deref(), Some("0-15"));
    assert_eq!(age_band(leap, on(2024, 2, 29)).as_deref(), Some("16-24"));
    assert_eq!(age_band(leap, on(2025, 3, 1)).as_deref(), Some("16-24"));
}

#[test]
fn imd_lookup_normalises_postcodes() {
    let imd = ImdLookup::from_csv("# comment\npostcode,imd_decile\nLS1 5HD,3\n\n bd9  4rr , 2\n")
        .unwrap();
    assert_eq!(imd.len(), 2);
    assert_eq!(imd.decile("LS1 5HD"), Some(3));
    assert_eq!(imd.decile("ls15hd"), Some(3));
    assert_eq!(imd.decile(" l s 1 5 h d "), Some(3));
    assert_eq!(imd.decile("BD9 4RR"), Some(2));
    assert_eq!(imd.decile("ZZ9 9ZZ"), None);
    assert!(matches!(
        ImdLookup::from_csv("LS1 5HD,3\nLS2 1AA,11\n"),
        Err(Error::ImdLookup { line: 2, .. })
    ));
    assert!(matches!(
        ImdLookup::from_csv("LS1 5HD,3\nLS2 1AA,x\n"),
        Err(Error::ImdLookup { line: 2, .. })
    ));
    assert!(matches!(
        ImdLookup::from_csv("LS1 5HD\n"),
        Err(Error::ImdLookup { line: 1, .. })
    ));
    // The shipped example covers the fixtures' postcode.
    assert_eq!(ImdLookup::example().unwrap().decile("LS1 5HD"), Some(3));
}

#[test]
fn every_event_type_has_a_case_and_leaks_nothing() {
    let ctx = ctx();
    let events = every_event();
    let by_type: BTreeMap<&str, &Value> = events.iter().map(|(t, v)| (*t, v)).collect();
    let all_types = IntakeEvent::TYPES
        .iter()
        .chain(AssessmentEvent::TYPES)
        .chain(SlotEvent::TYPES)
        .chain(SchedulingEvent::TYPES)
        .chain(OutcomeEvent::TYPES);
    let mut patients = PatientIndex::new();
    let mut checked = 0;
    for (n, event_type) in all_types.enumerate() {
        let payload = by_type
            .get(event_type)
            .unwrap_or_else(|| panic!("no test case for event type {event_type}"));
        let env = envelope(n as u64, event_type, (*payload).clone());
        patients.observe(&env, &ctx);
        let out = to_analyst_event(&env, &patients, &ctx)
            .unwrap_or_else(|| panic!("{event_type} is not exported"));
        let json = serde_json::to_string(&out).unwrap();
        let csv = out.to_csv_line();
        for bad in forbidden() {
            assert!(!json.contains(bad), "{event_type} leaks {bad:?}: {json}");
            assert!(
                !csv.contains(bad),
                "{event_type} leaks {bad:?} in CSV: {csv}"
            );
        }
        assert_eq!(out.event_type, *event_type);
        assert!(out.data.is_object(), "{event_type}: {json}");
        let tied_to_referral = payload.get("referral_id").is_some();
        if tied_to_referral {
            assert_eq!(out.referral_key, Some(referral_id()), "{event_type}");
            assert_eq!(
                out.patient_pseudonym.as_deref(),
                Some(
                    ctx.pseudonymiser
                        .pseudonym(&NhsNumber::parse(NHS).unwrap())
                        .as_str()
                ),
                "{event_type}"
            );
            assert_eq!(out.age_band.as_deref(), Some("55-64"), "{event_type}");
            assert_eq!(out.sex.as_deref(), Some("female"));
            assert_eq!(out.ethnicity_code.as_deref(), Some("A"));
            assert_eq!(out.imd_decile, Some(3));
            assert_eq!(out.practice_ods.as_deref(), Some("B86002"));
        } else {
            assert_eq!(out.referral_key, None, "{event_type}");
            assert_eq!(out.patient_pseudonym, None, "{event_type}");
        }
        checked += 1;
    }
    assert_eq!(checked, events.len(), "a test case for an unknown type");
}

#[test]
fn analytical_fields_are_kept() {
    let ctx = ctx();
    let patients = PatientIndex::new();
    let events: BTreeMap<&str, Value> = every_event().into_iter().collect();
    let out = |t: &str| {
        to_analyst_event(&envelope(1, t, events[t].clone()), &patients, &ctx)
            .unwrap()
            .data
    };
    let triaged = out("ReferralTriaged");
    assert_eq!(triaged["pathway"], "knee");
    assert_eq!(triaged["rule_id"], "knee-default");
    assert_eq!(triaged["start_back"]["risk"], "high");
    assert!(triaged.get("reasons").is_none());
    let received = out("ReferralReceived");
    assert_eq!(received["red_flags"][0], "night-pain");
    assert_eq!(received["reason"][0]["code"], "279039007");
    assert!(received["reason"][0].get("display").is_none());
    let completed = out("AssessmentCompleted");
    assert_eq!(completed["outcomes"][1]["programme"], "escape-pain");
    assert_eq!(completed["outcomes"][2]["destination"], "imaging");
    assert!(completed.get("clinician_id").is_none());
    assert_eq!(out("SessionMissed")["missed_total"], 1);
    assert_eq!(out("OutcomeChangeRecorded")["change"], 9.0);
    assert_eq!(out("QuestionnaireCompleted")["score"]["total"], 31);
    assert_eq!(out("RehabDischarged")["reason"], "goals-met");
    assert_eq!(out("ClassScheduled")["capacity"], 10);
    // A referral event whose referral was never seen has no patient fields.
    let orphan = to_analyst_event(
        &envelope(1, "ReferralTriaged", events["ReferralTriaged"].clone()),
        &patients,
        &ctx,
    )
    .unwrap();
    assert_eq!(orphan.referral_key, Some(referral_id()));
    assert_eq!(orphan.patient_pseudonym, None);
}

#[test]
fn operational_and_unknown_events_are_not_exported() {
    let ctx = ctx();
    let patients = PatientIndex::new();
    for t in mskflow_events::delivery::DeliveryEvent::TYPES {
        let env = envelope(1, t, serde_json::json!({"referral_id": referral_id()}));
        assert!(to_analyst_event(&env, &patients, &ctx).is_none(), "{t}");
    }
    let env = envelope(1, "SomethingNew", serde_json::json!({"note": "SENTINEL"}));
    assert!(to_analyst_event(&env, &patients, &ctx).is_none());
    let env = envelope(1, "ReferralTriaged", serde_json::json!("not an object"));
    assert!(to_analyst_event(&env, &patients, &ctx).is_none());
}

#[test]
fn csv_quotes_the_data_column() {
    let ctx = ctx();
    let mut patients = PatientIndex::new();
    let env = envelope(1, "ReferralReceived", every_event()[0].1.clone());
    assert!(patients.observe(&env, &ctx));
    assert_eq!(patients.len(), 1);
    let line = to_analyst_event(&env, &patients, &ctx)
        .unwrap()
        .to_csv_line();
    assert!(line.ends_with("\"\n"), "{line}");
    assert!(line.contains(",\"{\"\"received_via\"\":"), "{line}");
    assert_eq!(
        csv_header().trim_end().split(',').count(),
        CSV_COLUMNS.len()
    );
}

/// The analytics read model on disk answers every view and split exactly as
/// the in-memory views do, whether maintained batch by batch while events
/// arrive or rebuilt from the log in one go.
mod stored_facts {
    use std::sync::Arc;
    use std::time::Duration;

    use mskflow_eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, StartFrom};
    use mskflow_projection::{Options, Projector};

    use super::*;
    use crate::store::{self, AnalyticsFacts};
    use crate::views::{Split, View, ViewOptions, Views};

    /// A seeded caseload: 80 referrals, each with a random subset of every
    /// event type (in pathway order, days apart), some events twice.
    fn caseload() -> Vec<NewEvent> {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut out = Vec::new();
        for k in 0..80_u128 {
            let id = Uuid::from_u128(0xabc0_0000 + k);
            for (i, (event_type, payload)) in every_event().into_iter().enumerate() {
                let keep = if event_type == "ReferralReceived" {
                    9
                } else {
                    6
                };
                if next() % 10 >= keep {
                    continue;
                }
                let mut payload = payload;
                if let Some(obj) = payload.as_object_mut() {
                    obj.insert("referral_id".to_owned(), Value::from(id.to_string()));
                }
                let day = (next() % 40) as i64 + i as i64;
                let copies = if next() % 7 == 0 { 2 } else { 1 };
                for _ in 0..copies {
                    out.push(NewEvent {
                        event_id: Uuid::new_v4(),
                        event_type: event_type.to_owned(),
                        schema_version: mskflow_events::SCHEMA_VERSION,
                        occurred_at: at(9) + chrono::Duration::days(day),
                        payload: payload.clone(),
                    });
                }
            }
        }
        out
    }

    async fn tables(
        projector: &Projector<AnalyticsFacts>,
    ) -> Result<Vec<crate::views::Table>, mskflow_projection::Error> {
        let mut out = Vec::new();
        for view in View::ALL {
            for split in Split::ALL {
                let (view, split) = (*view, *split);
                out.push(
                    projector
                        .read(move |conn| store::table(conn, view, split, ViewOptions::default()))
                        .await?,
                );
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn stored_views_equal_the_in_memory_ones_incremental_and_rebuilt()
    -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let sqlite =
            mskflow_eventlog_sqlite::SqliteEventLog::open(mskflow_eventlog_sqlite::Options {
                path: dir.path().join("events.db"),
                ..Default::default()
            })?;
        let log: Arc<dyn EventLog> = Arc::new(sqlite.clone());
        let mut options = Options::in_dir(dir.path().join("projections"));
        options.batch = 37;
        let (projector, following, _) =
            Projector::open(&log, &options, AnalyticsFacts::new(ctx())).await?;
        let task = projector.spawn(following);
        let events = caseload();
        let mut last = 0;
        for (n, chunk) in events.chunks(5).enumerate() {
            last = log
                .append(
                    &format!("caseload-{n}"),
                    ExpectedVersion::NoStream,
                    chunk.to_vec(),
                    &Metadata::default(),
                )
                .await?
                .position;
        }
        assert!(projector.wait_for(last, Duration::from_secs(20)).await);
        let incremental = tables(&projector).await?;
        drop(task);
        drop(projector);

        // The in-memory views over the same stored events.
        let mut views = Views::new(ViewOptions::default());
        let mut sub = log.subscribe("test-views", StartFrom::Beginning).await?;
        loop {
            let batch = sub.poll_batch(1000).await?;
            if batch.is_empty() {
                break;
            }
            for e in &batch {
                views.observe(e, &ctx());
            }
        }
        let expected: Vec<_> = View::ALL
            .iter()
            .flat_map(|v| Split::ALL.iter().map(|s| views.table(*v, *s)))
            .collect();
        assert!(views.len() > 60, "caseload too small: {}", views.len());
        assert!(
            expected.iter().any(|t| t.rows.len() > 1),
            "every table is trivial"
        );
        assert_eq!(incremental, expected);

        mskflow_projection::remove(&options, "analytics-facts")?;
        let (rebuilt, _f, catch_up) =
            Projector::open(&log, &options, AnalyticsFacts::new(ctx())).await?;
        // Only the event types the facts fold are read.
        let wanted = events
            .iter()
            .filter(|e| crate::views::EVENT_TYPES.contains(&e.event_type.as_str()))
            .count();
        assert_eq!(catch_up.events, events.len() as u64);
        assert_eq!(catch_up.read, wanted as u64);
        assert_eq!(tables(&rebuilt).await?, expected);
        let stored = rebuilt.read(store::count).await?;
        assert_eq!(stored, views.len() as u64);
        Ok(())
    }
}
