use super::*;
use chrono::TimeZone;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[test]
fn date_prefixes_follow_the_fhir_ranges() -> Result<(), Invalid> {
    let day = DateFilter::parse("2026-11-23")?;
    assert!(day.matches(at("2026-11-23T00:00:00Z")));
    assert!(day.matches(at("2026-11-23T23:59:59Z")));
    assert!(!day.matches(at("2026-11-24T00:00:00Z")));
    assert!(DateFilter::parse("ge2026-11")?.matches(at("2026-11-01T00:00:00Z")));
    assert!(!DateFilter::parse("ge2026-11")?.matches(at("2026-10-31T23:59:59Z")));
    assert!(DateFilter::parse("lt2026")?.matches(at("2025-12-31T23:59:59Z")));
    assert!(!DateFilter::parse("lt2026")?.matches(at("2026-01-01T00:00:00Z")));
    assert!(DateFilter::parse("gt2026-11-23")?.matches(at("2026-11-24T00:00:00Z")));
    assert!(!DateFilter::parse("gt2026-11-23")?.matches(at("2026-11-23T12:00:00Z")));
    assert!(DateFilter::parse("le2026-11-23T10:00:00Z")?.matches(at("2026-11-23T10:00:00Z")));
    assert!(DateFilter::parse("ne2026-11-23")?.matches(at("2026-11-22T10:00:00Z")));
    assert!(DateFilter::parse("2026-13-01").is_err());
    assert!(DateFilter::parse("yesterday").is_err());
    Ok(())
}

#[test]
fn tokens_match_with_or_without_a_system() {
    assert!(token_matches(
        "https://fhir.nhs.uk/Id/nhs-number|9434765919",
        Some(NHS_NUMBER_SYSTEM),
        "9434765919"
    ));
    assert!(token_matches(
        "9434765919",
        Some(NHS_NUMBER_SYSTEM),
        "9434765919"
    ));
    assert!(token_matches(
        "|9434765919",
        Some(NHS_NUMBER_SYSTEM),
        "9434765919"
    ));
    assert!(!token_matches(
        "https://other|9434765919",
        Some(NHS_NUMBER_SYSTEM),
        "9434765919"
    ));
    assert!(!token_matches(
        "9434765870",
        Some(NHS_NUMBER_SYSTEM),
        "9434765919"
    ));
}

#[test]
fn unknown_parameters_and_sorts_are_refused() {
    let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    assert!(Search::parse(Resource::Task, &p("colour", "blue")).is_err());
    assert!(Search::parse(Resource::Task, &p("_sort", "colour")).is_err());
    assert!(Search::parse(Resource::Task, &p("_count", "-1")).is_err());
    assert!(Search::parse(Resource::ServiceRequest, &p("focus", "x")).is_err());
    assert!(Search::parse(Resource::Task, &p("_sort", "-_lastUpdated,_id")).is_ok());
    assert_eq!(
        Search::parse(Resource::Task, &p("_count", "5000"))
            .map(|s| s.count)
            .ok(),
        Some(MAX_COUNT)
    );
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

/// `n` referrals of `n / 3` patients, authored on different days,
/// alternately triaged, received at increasing times.
fn caseload(n: u64) -> Result<Views, Box<dyn std::error::Error>> {
    use mskflow_events::IntakeEvent;
    use mskflow_events::intake::{
        PatientDetails, ReferralDetails, ReferralReceived, ReferralTriaged, Sender,
    };
    use mskflow_events::types::{FcpPriority, NhsNumber, Pathway, ReceivedVia, RequestPriority};
    let mut views = Views::default();
    let mut position = 0;
    for i in 0..n {
        let id = uuid::Uuid::from_u128(u128::from((i * 7919) % 1000) + 1);
        let details = ReferralDetails {
            received_via: ReceivedVia::ProcessMessage,
            sender: Sender {
                ods_code: None,
                endpoint: None,
                message_id: None,
                software: None,
            },
            service_request_identifier: None,
            patient: PatientDetails {
                nhs_number: Some(NhsNumber::parse(&nhs(i % (n / 3).max(1)))?),
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
            requested_priority: RequestPriority::Routine,
            red_flags: vec![],
            start_back: None,
            note: None,
            authored_on: Some(format!(
                "2026-{:02}-{:02}",
                1 + (i * 5) % 12,
                1 + (i * 3) % 28
            )),
            fhir_json: "{}".to_owned(),
        };
        let mut events = vec![IntakeEvent::ReferralReceived(ReferralReceived {
            referral_id: id,
            request_id: id,
            referral: details,
        })];
        if i % 2 == 0 {
            events.push(IntakeEvent::ReferralTriaged(ReferralTriaged {
                referral_id: id,
                rule_set_version: "1".into(),
                rule_id: "default".into(),
                priority: FcpPriority::Routine,
                pathway: Pathway::Knee,
                start_back: None,
                reasons: vec![],
            }));
        }
        for (sequence, event) in events.iter().enumerate() {
            position += 1;
            let at = Utc
                .timestamp_opt(1_780_000_000 + (position as i64 % 17) * 60, 0)
                .single()
                .unwrap_or_default();
            let new = mskflow_eventlog::new_event(event, 1, at)?;
            views.apply(&mskflow_eventlog::Envelope {
                event_id: new.event_id,
                stream_id: format!("referral-{id}"),
                sequence: sequence as u64 + 1,
                position,
                occurred_at: at,
                recorded_at: at,
                causation_id: None,
                correlation_id: uuid::Uuid::nil(),
                traceparent: None,
                tracestate: None,
                event_type: new.event_type,
                schema_version: 1,
                payload: new.payload,
            })?;
        }
    }
    Ok(views)
}

#[test]
fn indexed_partial_sort_pages_match_a_full_scan() -> Result<(), Box<dyn std::error::Error>> {
    let views = caseload(60)?;
    let some_id = views
        .referrals()
        .nth(5)
        .map(|v| v.referral_id)
        .unwrap_or_default();
    let queries: Vec<(Resource, String)> = vec![
        (Resource::Task, String::new()),
        (Resource::Task, "status=accepted&_count=7&_offset=3".into()),
        (
            Resource::Task,
            "status=received&_sort=-authored-on,_id&_count=4".into(),
        ),
        (
            Resource::ServiceRequest,
            "_sort=authored&_count=10&_offset=50".into(),
        ),
        (
            Resource::ServiceRequest,
            "_sort=-authored&authored=ge2026-06&_count=5".into(),
        ),
        (
            Resource::ServiceRequest,
            format!("patient:identifier={NHS_NUMBER_SYSTEM}|{}", nhs(4)),
        ),
        (
            Resource::ServiceRequest,
            format!("patient:identifier={},{}&_sort=_id", nhs(4), nhs(5)),
        ),
        (
            Resource::ServiceRequest,
            format!("patient:identifier=https://other|{}", nhs(4)),
        ),
        (Resource::Task, format!("focus=ServiceRequest/{some_id}")),
        (
            Resource::Task,
            format!("_id={some_id},{some_id}&status=accepted,received"),
        ),
        (Resource::Task, "_count=0".into()),
        (Resource::Task, "_offset=1000".into()),
        (Resource::Task, "_summary=count".into()),
    ];
    for (resource, query) in queries {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let search = Search::parse(resource, &pairs)?;
        let full = search.run(views.referrals());
        let expected: Vec<uuid::Uuid> = if search.summary_count {
            Vec::new()
        } else {
            full.iter()
                .skip(search.offset)
                .take(search.count)
                .map(|v| v.referral_id)
                .collect()
        };
        let (total, page) = search.page(&views, |_| true);
        let got: Vec<uuid::Uuid> = page.iter().map(|v| v.referral_id).collect();
        assert_eq!(total, full.len(), "{query}");
        assert_eq!(got, expected, "{query}");
        // Visibility applies before counting.
        let (hidden, _) = search.page(&views, |_| false);
        assert_eq!(hidden, 0, "{query}");
    }
    Ok(())
}

#[test]
fn patients_gather_every_referral_of_one_nhs_number() -> Result<(), Box<dyn std::error::Error>> {
    let views = caseload(9)?;
    let p = |q: &str| -> Result<Vec<Vec<&ReferralView>>, Invalid> {
        let pairs: Vec<(String, String)> = q
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(PatientSearch::parse(&pairs)?.run(&views))
    };
    // 9 referrals of 3 patients: 3 each, in the order received.
    assert_eq!(p("")?.len(), 3);
    let found = p(&format!("identifier={NHS_NUMBER_SYSTEM}|{}", nhs(1)))?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
    let id = found[0][0].referral_id;
    assert_eq!(views.patient(&id).map(|v| v.len()), Some(3));
    // Only the first referral's id is the Patient's.
    assert!(views.patient(&found[0][1].referral_id).is_none());
    assert_eq!(p(&format!("_id={id}"))?.len(), 1);
    assert_eq!(p(&format!("_id={id}&identifier={}", nhs(2)))?.len(), 0);
    assert!(p(&format!("identifier=https://other|{}", nhs(1)))?.is_empty());
    assert!(p("name=Smith").is_err());
    Ok(())
}

#[test]
fn paging_links_keep_the_other_parameters() {
    let pairs = vec![
        ("status".to_owned(), "accepted".to_owned()),
        ("_offset".to_owned(), "10".to_owned()),
        (
            "patient:identifier".to_owned(),
            "https://fhir.nhs.uk/Id/nhs-number|9434765919".to_owned(),
        ),
    ];
    assert_eq!(
        with_offset(&pairs, 20),
        "status=accepted&patient:identifier=https://fhir.nhs.uk/Id/nhs-number%7C9434765919&_offset=20"
    );
}
