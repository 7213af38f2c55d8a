//! The indexed searches answer exactly what a scan of every referral
//! answers: a generated caseload goes through the pathway (triage, redirects,
//! rejections, cancellations, FCP assessment, rehabilitation, redelivered
//! events), then many generated searches run both ways and must agree on
//! the total and on the page, in order.

use chrono::{DateTime, TimeZone, Utc};
use mskflow_eventlog::Envelope;
use mskflow_events::IntakeEvent;
use mskflow_events::assessment::{
    AppointmentMissed, AssessmentBooked, AssessmentCancelled, AssessmentEvent, AssessmentRequested,
    DischargeReason, EpisodeDischarged, Party, Slot,
};
use mskflow_events::intake::{
    CancellationStatus, PatientDetails, ReferralCancelled, ReferralDetails, ReferralReceived,
    ReferralRedirected, ReferralRejected, ReferralTriaged, Sender,
};
use mskflow_events::scheduling::{
    CourseCompleted, DischargeReason as RehabDischargeReason, PatientWaitlisted, Programme,
    RehabDischarged, SchedulingEvent,
};
use mskflow_events::types::{
    ContactMode, FcpPriority, NhsNumber, OdsCode, Pathway, ReceivedVia, RedirectDestination,
    RequestPriority, Urgency,
};
use mskflow_gateway::render::BUSINESS_STATUS_SYSTEM;
use mskflow_gateway::search::{Resource, Search};
use mskflow_gateway::views::{ReferralView, Views};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A valid NHS number for `n` (modulus 11).
fn nhs(n: u64) -> String {
    (0..)
        .map(|k| format!("943{:06}", n * 7 + k))
        .find_map(|digits| {
            let sum: u32 = digits
                .bytes()
                .zip((2..=10).rev())
                .map(|(b, w)| u32::from(b - b'0') * w)
                .sum();
            match 11 - sum % 11 {
                10 => None,
                11 => Some(format!("{digits}0")),
                c => Some(format!("{digits}{c}")),
            }
        })
        .unwrap_or_default()
}

/// Recorded times come from a few dozen minutes, so many tie.
fn minute(rng: &mut Rng) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + rng.below(40) as i64 * 60, 0)
        .single()
        .unwrap_or_default()
}

/// One event ready to wrap: its stream, payload and type.
struct Pending {
    stream_id: String,
    event_type: String,
    payload: serde_json::Value,
}

fn pending<E: serde::Serialize>(
    stream_id: String,
    event: &E,
) -> Result<Pending, serde_json::Error> {
    let new = mskflow_eventlog::new_event(event, 1, Utc::now())?;
    Ok(Pending {
        stream_id,
        event_type: new.event_type,
        payload: new.payload,
    })
}

fn details(rng: &mut Rng, i: u64) -> Result<ReferralDetails, Box<dyn std::error::Error>> {
    let authored_on = match rng.below(6) {
        0 => None,
        1 => Some(format!("2026-{:02}", 1 + rng.below(12))),
        2 => Some("not a date".to_owned()),
        3 => Some(format!(
            "2026-{:02}-{:02}T{:02}:30:00+01:00",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24)
        )),
        _ => Some(format!(
            "2026-{:02}-{:02}",
            1 + rng.below(12),
            1 + rng.below(28)
        )),
    };
    Ok(ReferralDetails {
        received_via: ReceivedVia::ProcessMessage,
        sender: Sender {
            ods_code: Some(OdsCode::parse(if rng.chance(50) {
                "A81001"
            } else {
                "B82002"
            })?),
            endpoint: None,
            message_id: None,
            software: None,
        },
        service_request_identifier: None,
        patient: PatientDetails {
            nhs_number: Some(NhsNumber::parse(&nhs(i % 97))?),
            family: None,
            given: vec![],
            birth_date: None,
            sex: None,
            postcode: None,
            ethnicity: None,
        },
        requester: None,
        reason: vec![],
        body_site: vec![],
        requested_priority: *rng.pick(&[
            RequestPriority::Routine,
            RequestPriority::Urgent,
            RequestPriority::Asap,
        ]),
        red_flags: vec![],
        start_back: None,
        note: None,
        authored_on,
        fhir_json: "{}".to_owned(),
    })
}

/// The events of one referral on its way through the pathway, per stream
/// in order (intake, assessment, rehab), as one list in causal order.
fn journey(rng: &mut Rng, i: u64) -> Result<Vec<Pending>, Box<dyn std::error::Error>> {
    let id = Uuid::from_u128(0x1000 + u128::from(i));
    let intake = format!("referral-{id}");
    let assessment = format!("assessment-{id}");
    let rehab = format!("rehab-{id}");
    let mut out = vec![pending(
        intake.clone(),
        &IntakeEvent::ReferralReceived(ReferralReceived {
            referral_id: id,
            request_id: id,
            referral: details(rng, i)?,
        }),
    )?];
    let cancel = |rng: &mut Rng| {
        pending(
            intake.clone(),
            &IntakeEvent::ReferralCancelled(ReferralCancelled {
                referral_id: id,
                request_id: Uuid::from_u128(0x9000 + u128::from(i)),
                status: if rng.chance(50) {
                    CancellationStatus::Revoked
                } else {
                    CancellationStatus::EnteredInError
                },
                cancelled_by: None,
                message_id: None,
            }),
        )
    };
    match rng.below(8) {
        0 => {}
        1 => out.push(pending(
            intake.clone(),
            &IntakeEvent::ReferralRedirected(ReferralRedirected {
                referral_id: id,
                rule_set_version: "1".into(),
                rule_id: "red-flag".into(),
                destination: RedirectDestination::EmergencyDepartment,
                urgency: Urgency::Emergency,
                red_flags: vec![],
                reason: "red flag".into(),
            }),
        )?),
        2 => out.push(pending(
            intake.clone(),
            &IntakeEvent::ReferralRejected(ReferralRejected {
                referral_id: id,
                rule_set_version: "1".into(),
                rule_id: "out-of-scope".into(),
                reason_code: "out-of-scope".into(),
                reason: "not MSK".into(),
            }),
        )?),
        3 => out.push(cancel(rng)?),
        _ => {
            out.push(pending(
                intake.clone(),
                &IntakeEvent::ReferralTriaged(ReferralTriaged {
                    referral_id: id,
                    rule_set_version: "1".into(),
                    rule_id: "default".into(),
                    priority: FcpPriority::Routine,
                    pathway: Pathway::Knee,
                    start_back: None,
                    reasons: vec![],
                }),
            )?);
            if rng.chance(80) {
                out.push(pending(
                    assessment.clone(),
                    &AssessmentEvent::AssessmentRequested(AssessmentRequested {
                        referral_id: id,
                        priority: FcpPriority::Routine,
                        pathway: Pathway::Knee,
                        triaged_at: minute(rng),
                    }),
                )?);
                let slot = Slot {
                    slot_id: Uuid::from_u128(0x5000 + u128::from(i)),
                    clinician_id: "fcp-1".into(),
                    start: minute(rng),
                    end: minute(rng),
                    mode: ContactMode::FaceToFace,
                    location: None,
                };
                if rng.chance(70) {
                    out.push(pending(
                        assessment.clone(),
                        &AssessmentEvent::AssessmentBooked(AssessmentBooked {
                            referral_id: id,
                            slot: slot.clone(),
                        }),
                    )?);
                    match rng.below(4) {
                        0 => out.push(pending(
                            assessment.clone(),
                            &AssessmentEvent::AssessmentCancelled(AssessmentCancelled {
                                referral_id: id,
                                slot_id: Some(slot.slot_id),
                                cancelled_by: Party::Patient,
                                reason: "unwell".into(),
                            }),
                        )?),
                        1 => out.push(pending(
                            assessment.clone(),
                            &AssessmentEvent::AppointmentMissed(AppointmentMissed {
                                referral_id: id,
                                slot_id: slot.slot_id,
                                missed_count: 1,
                            }),
                        )?),
                        _ => {}
                    }
                }
                if rng.chance(30) {
                    out.push(pending(
                        assessment.clone(),
                        &AssessmentEvent::EpisodeDischarged(EpisodeDischarged {
                            referral_id: id,
                            reason: DischargeReason::AssessmentOutcome,
                            notify_referrer: false,
                        }),
                    )?);
                }
            }
            if rng.chance(35) {
                out.push(pending(
                    rehab.clone(),
                    &SchedulingEvent::PatientWaitlisted(PatientWaitlisted {
                        referral_id: id,
                        priority: FcpPriority::Routine,
                        pathway: Pathway::Knee,
                        programme: Programme::EscapePain,
                        sessions: 6,
                        need_recorded_at: minute(rng),
                        choices: Default::default(),
                    }),
                )?);
                match rng.below(3) {
                    0 => out.push(pending(
                        rehab.clone(),
                        &SchedulingEvent::CourseCompleted(CourseCompleted {
                            referral_id: id,
                            attended: 6,
                            missed: 0,
                            cancelled: 0,
                        }),
                    )?),
                    1 => out.push(pending(
                        rehab.clone(),
                        &SchedulingEvent::RehabDischarged(RehabDischarged {
                            referral_id: id,
                            reason: RehabDischargeReason::GoalsMet,
                            notify_referrer: false,
                        }),
                    )?),
                    _ => {}
                }
            }
            if rng.chance(10) {
                out.push(cancel(rng)?);
            }
        }
    }
    Ok(out)
}

/// The events of `n` referrals, interleaved at random (each stream in
/// order), with some delivered twice; sequences per stream, positions
/// global, recorded times from a few dozen minutes.
fn caseload(rng: &mut Rng, n: u64) -> Result<Vec<Envelope>, Box<dyn std::error::Error>> {
    let mut queues: Vec<std::collections::VecDeque<Pending>> = (0..n)
        .map(|i| journey(rng, i).map(Into::into))
        .collect::<Result<_, _>>()?;
    let mut sequences: std::collections::HashMap<String, u64> = Default::default();
    let mut out: Vec<Envelope> = Vec::new();
    loop {
        let open: Vec<usize> = (0..queues.len())
            .filter(|&q| !queues[q].is_empty())
            .collect();
        let Some(&q) = open.get(rng.below(open.len() as u64) as usize) else {
            break;
        };
        let Some(p) = queues[q].pop_front() else {
            break;
        };
        let sequence = sequences.entry(p.stream_id.clone()).or_default();
        *sequence += 1;
        let at = minute(rng);
        out.push(Envelope {
            event_id: Uuid::from_u128(0xe000_0000 + out.len() as u128),
            stream_id: p.stream_id,
            sequence: *sequence,
            position: out.len() as u64 + 1,
            occurred_at: at,
            recorded_at: at,
            causation_id: None,
            correlation_id: Uuid::nil(),
            traceparent: None,
            tracestate: None,
            event_type: p.event_type,
            schema_version: 1,
            payload: p.payload,
        });
        if rng.chance(5) {
            // At-least-once delivery: an earlier event again.
            let again = out[rng.below(out.len() as u64) as usize].clone();
            out.push(again);
        }
    }
    Ok(out)
}

const TASK_STATUSES: &[&str] = &[
    "received",
    "accepted",
    "in-progress",
    "completed",
    "rejected",
    "cancelled",
    "entered-in-error",
    "draft",
];
const SERVICE_REQUEST_STATUSES: &[&str] = &[
    "active",
    "completed",
    "revoked",
    "entered-in-error",
    "draft",
];
const BUSINESS_STATUSES: &[&str] = &[
    "received",
    "triaged",
    "redirected",
    "rejected",
    "cancelled",
    "awaiting-assessment",
    "assessment-booked",
    "discharged",
    "awaiting-rehabilitation",
    "rehabilitation-completed",
    "unknown",
];

fn date_value(rng: &mut Rng, authored: bool) -> String {
    let prefix = *rng.pick(&["", "eq", "ne", "lt", "le", "gt", "ge"]);
    let value = if authored {
        match rng.below(4) {
            0 => "2026".to_owned(),
            1 => format!("2026-{:02}", 1 + rng.below(12)),
            2 => format!("2026-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28)),
            _ => format!(
                "2026-{:02}-{:02}T{:02}:30:00Z",
                1 + rng.below(12),
                1 + rng.below(28),
                rng.below(24)
            ),
        }
    } else {
        // Around the recorded times: exact instants (ties), or the day.
        match rng.below(3) {
            0 => "2026-05-28".to_owned(),
            _ => minute(rng).to_rfc3339(),
        }
    };
    format!("{prefix}{value}")
}

/// A generated search: a few filters, a sort, a page.
fn query(rng: &mut Rng, resource: Resource, some_id: Uuid) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| q.push((k.to_owned(), v));
    if rng.chance(60) {
        let statuses = match resource {
            Resource::Task => TASK_STATUSES,
            Resource::ServiceRequest => SERVICE_REQUEST_STATUSES,
        };
        let n = 1 + rng.below(3);
        let v: Vec<&str> = (0..n).map(|_| *rng.pick(statuses)).collect();
        add("status", v.join(","));
    }
    if resource == Resource::Task && rng.chance(40) {
        let n = 1 + rng.below(2);
        let v: Vec<String> = (0..n)
            .map(|_| {
                let code = *rng.pick(BUSINESS_STATUSES);
                match rng.below(4) {
                    0 => format!("{BUSINESS_STATUS_SYSTEM}|{code}"),
                    1 => format!("https://other|{code}"),
                    2 => format!("|{code}"),
                    _ => code.to_owned(),
                }
            })
            .collect();
        add("business-status", v.join(","));
    }
    let authored = match resource {
        Resource::Task => "authored-on",
        Resource::ServiceRequest => "authored",
    };
    for _ in 0..rng.below(3) {
        add(authored, date_value(rng, true));
    }
    for _ in 0..rng.below(3) {
        add("_lastUpdated", date_value(rng, false));
    }
    if resource == Resource::ServiceRequest && rng.chance(20) {
        add("priority", "urgent,asap".to_owned());
    }
    if rng.chance(5) {
        add("_id", some_id.to_string());
    }
    if rng.chance(60) {
        let keys = [
            "_lastUpdated",
            "-_lastUpdated",
            authored,
            "-authored",
            "_id",
        ];
        let n = 1 + rng.below(2);
        let v: Vec<String> = (0..n)
            .map(|_| {
                let k = *rng.pick(&keys);
                if k == "-authored" && resource == Resource::Task {
                    "-authored-on".to_owned()
                } else {
                    k.to_owned()
                }
            })
            .collect();
        add("_sort", v.join(","));
    }
    add("_count", rng.below(30).to_string());
    if rng.chance(50) {
        add("_offset", rng.below(60).to_string());
    }
    if rng.chance(10) {
        add("_summary", "count".to_owned());
    }
    q
}

/// Only one organisation's referrals, as a referrer sees them.
fn sent_by_a81001(view: &ReferralView) -> bool {
    view.details
        .sender
        .ods_code
        .as_ref()
        .is_some_and(|o| o.as_str() == "A81001")
}

#[test]
fn indexed_searches_answer_what_a_scan_of_every_referral_answers() -> TestResult {
    let mut compared = 0;
    let mut nonempty = 0;
    for seed in 1..=4u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let events = caseload(&mut rng, 150 * seed)?;
        let mut views = Views::default();
        for e in &events {
            views.apply(e)?;
        }
        // The indexes are part of the views: a replay from empty rebuilds
        // exactly the same ones.
        let mut replayed = Views::default();
        for e in &events {
            replayed.apply(e)?;
        }
        assert_eq!(replayed, views);
        let some_id = views
            .referrals_unordered()
            .nth(3)
            .map(|v| v.referral_id)
            .unwrap_or_default();
        for k in 0..600 {
            let resource = if k % 2 == 0 {
                Resource::Task
            } else {
                Resource::ServiceRequest
            };
            let pairs = query(&mut rng, resource, some_id);
            let search = Search::parse(resource, &pairs)?;
            for visible in [
                &(|_: &ReferralView| true) as &dyn Fn(&ReferralView) -> bool,
                &sent_by_a81001,
            ] {
                let (total, page) = search.page(&views, visible);
                // The scan: every referral, every filter, the whole sort.
                let all = search.run(views.referrals_unordered().filter(|v| visible(v)));
                let expected: Vec<Uuid> = if search.summary_count {
                    Vec::new()
                } else {
                    all.iter()
                        .skip(search.offset)
                        .take(search.count)
                        .map(|v| v.referral_id)
                        .collect()
                };
                let got: Vec<Uuid> = page.iter().map(|v| v.referral_id).collect();
                assert_eq!(total, all.len(), "seed {seed}: {pairs:?}");
                assert_eq!(got, expected, "seed {seed}: {pairs:?}");
                compared += 1;
                if !got.is_empty() {
                    nonempty += 1;
                }
            }
        }
    }
    // The generated searches are not trivially empty.
    assert!(nonempty > compared / 4, "{nonempty} of {compared}");
    Ok(())
}

#[test]
fn a_referral_moves_between_status_sets_as_it_goes() -> TestResult {
    let mut rng = Rng(7);
    let events = caseload(&mut rng, 200)?;
    let mut views = Views::default();
    let status_of = |views: &Views, code: &str| -> Vec<Uuid> {
        let pairs = vec![
            ("status".to_owned(), code.to_owned()),
            ("_count".to_owned(), "1000".to_owned()),
        ];
        Search::parse(Resource::Task, &pairs)
            .map(|s| s.page(views, |_| true).1)
            .unwrap_or_default()
            .iter()
            .map(|v| v.referral_id)
            .collect()
    };
    for e in &events {
        views.apply(e)?;
        // After every event each referral is filed under exactly one Task
        // status, the one it renders with.
        if e.position % 97 == 0 {
            let mut filed = 0;
            for code in TASK_STATUSES {
                for id in status_of(&views, code) {
                    let view = views.referral(&id).ok_or("filed but unknown")?;
                    assert_eq!(mskflow_gateway::render::task_status(view), *code);
                    filed += 1;
                }
            }
            assert_eq!(filed, views.len());
        }
    }
    Ok(())
}
