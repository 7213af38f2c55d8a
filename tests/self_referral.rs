//! Patient self-referral through the gateway's web form and the call
//! handlers' telephone form, driven in a real headless browser: a low-risk
//! back-pain referral lands triaged with STarT Back and the MSK-HQ baseline
//! scored, a cauda-equina answer shows the 999 advice and records the
//! redirect, a repeated submit records one referral, an out-of-area practice
//! is refused; axe-core finds no WCAG 2.2 A/AA violation on any page.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{App, TEST_CLIENT, TestResult, spawn_app_with, test_token};
use mskflow_eventlog::{Envelope, decode};
use mskflow_events::IntakeEvent;
use mskflow_events::outcomes::OutcomeEvent;
use mskflow_events::selfreferral::SelfReferralEvent;
use serde_json::{Value, json};

fn root(app: &App) -> String {
    app.base.trim_end_matches("/fhir").to_owned()
}

async fn app() -> TestResult<App> {
    spawn_app_with(|c| {
        c.gateway.self_referral.area = "Leeds".to_owned();
        c.gateway.self_referral.practices = [
            ("B86001".to_owned(), "Park Surgery".to_owned()),
            ("B86002".to_owned(), "Hill Medical Centre".to_owned()),
        ]
        .into_iter()
        .collect();
        c.gateway.self_referral.requests_per_minute = 10_000;
    })
    .await
}

/// Every page is checked with axe-core: no WCAG A/AA violation.
async fn accessible(browser: &mut Browser, page: &str, checked: &mut Vec<String>) -> TestResult {
    let violations = browser.axe_violations().await?;
    assert!(violations.is_empty(), "{page}: {violations:#?}");
    checked.push(page.to_owned());
    Ok(())
}

async fn events_when(
    app: &App,
    what: &str,
    check: impl Fn(&[Envelope]) -> bool,
) -> TestResult<Vec<Envelope>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = app.all_events().await?;
        if check(&events) {
            return Ok(events);
        }
        if tokio::time::Instant::now() > deadline {
            let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
            return Err(format!("timed out waiting for {what}; events: {types:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn intake(events: &[Envelope]) -> Vec<IntakeEvent> {
    events
        .iter()
        .filter(|e| e.stream_id.starts_with("referral-"))
        .filter_map(|e| decode::<IntakeEvent>(e).ok())
        .collect()
}

fn triage_of(
    events: &[Envelope],
    referral_id: uuid::Uuid,
) -> Option<mskflow_events::intake::ReferralTriaged> {
    intake(events).into_iter().find_map(|e| match e {
        IntakeEvent::ReferralTriaged(t) if t.referral_id == referral_id => Some(t),
        _ => None,
    })
}

fn selfref(events: &[Envelope]) -> Vec<SelfReferralEvent> {
    events
        .iter()
        .filter(|e| e.stream_id.starts_with("selfref-"))
        .filter_map(|e| decode::<SelfReferralEvent>(e).ok())
        .collect()
}

fn reference_in(html: &str) -> TestResult<String> {
    let start = html.find("MSK-").ok_or("no reference number on the page")?;
    Ok(html[start..start + 13].to_owned())
}

const ELIGIBLE: &[(&str, &str)] = &[("dob", "1980-03-27"), ("practice", "B86001")];
const ABOUT: &[(&str, &str)] = &[
    ("given", "Sam"),
    ("family", "Jones"),
    ("nhs_number", "943 476 5919"),
    ("postcode", "LS1 4AP"),
    ("phone", "07700 900982"),
    ("sex", "female"),
];
const NO_RED_FLAGS: &[(&str, &str)] = &[
    ("rf-saddle", "no"),
    ("rf-bladder", "no"),
    ("rf-both-legs", "no"),
    ("rf-cancer", "no"),
    ("rf-weight", "no"),
    ("rf-fever", "no"),
    ("rf-injury", "no"),
];

/// STarT Back items 1 and 2 agree, item 9 "slightly"; MSK-HQ 3 on every
/// item (42).
fn questionnaires() -> Vec<(String, String)> {
    let mut a: Vec<(String, String)> = (1..=9)
        .map(|i| {
            let v = match i {
                1 | 2 => "1",
                9 => "2",
                _ => "0",
            };
            (format!("sb-{i}"), v.to_owned())
        })
        .collect();
    a.extend((1..=14).map(|i| (format!("mskhq-{i}"), "3".to_owned())));
    a.push(("consent".to_owned(), "yes".to_owned()));
    a
}

fn borrowed(a: &[(String, String)]) -> Vec<(&str, &str)> {
    a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn self_referral_by_web_form_and_telephone() -> TestResult {
    let app = app().await?;
    let root = root(&app);
    let mut checked = Vec::new();
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("self-referral");
    std::fs::create_dir_all(&shots)?;

    // The pages' protection, over plain HTTP.
    let http = reqwest::Client::new();
    let page = http.get(format!("{root}/self-referral")).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert!(
        page.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict"))
    );
    let forged = http
        .post(format!("{root}/self-referral"))
        .form(&[("step", "1"), ("dob", "1980-03-27"), ("practice", "B86001")])
        .send()
        .await?;
    assert_eq!(
        forged.status().as_u16(),
        403,
        "a post without the visit's token is refused"
    );
    let huge = http
        .post(format!("{root}/self-referral"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("worse={}", "x".repeat(64 * 1024)))
        .send()
        .await?;
    assert_eq!(huge.status().as_u16(), 413, "the body limit");

    // 1. A low-risk back-pain self-referral, on a phone-sized screen.
    let mut browser = Browser::launch(390, 844).await?;
    browser.goto(&format!("{root}/self-referral")).await?;
    accessible(&mut browser, "eligibility", &mut checked).await?;
    std::fs::write(shots.join("step-1.png"), browser.screenshot().await?)?;
    browser.fill(ELIGIBLE).await?;
    browser.submit().await?;
    assert!(browser.html().await?.contains("About you"));
    accessible(&mut browser, "about you", &mut checked).await?;
    // A wrong NHS number (modulus 11) is shown as an error, linked from the
    // summary.
    browser.fill(ABOUT).await?;
    browser.fill(&[("nhs_number", "943 476 5918")]).await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(
        html.contains("There is a problem") && html.contains("Enter a valid NHS number"),
        "{html}"
    );
    assert!(html.contains(r##"href="#f-nhs_number""##));
    accessible(&mut browser, "about you, with errors", &mut checked).await?;
    browser.fill(&[("nhs_number", "943 476 5919")]).await?;
    browser.submit().await?;
    assert!(browser.html().await?.contains("Urgent symptoms"));
    accessible(&mut browser, "urgent symptoms", &mut checked).await?;
    std::fs::write(shots.join("step-3.png"), browser.screenshot().await?)?;
    browser.fill(NO_RED_FLAGS).await?;
    browser.submit().await?;
    accessible(&mut browser, "your problem", &mut checked).await?;
    browser
        .fill(&[
            ("body_area", "lower-back"),
            ("duration", "6-weeks-to-3-months"),
            ("worse", "Sitting for a long time"),
            ("work", "working"),
        ])
        .await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(
        html.contains("Your back pain"),
        "STarT Back is asked for back pain"
    );
    accessible(&mut browser, "questionnaires", &mut checked).await?;
    let answers = questionnaires();
    browser.fill(&borrowed(&answers)).await?;
    // What the browser is about to post, to post it again afterwards.
    let posted = browser
        .eval("new URLSearchParams(new FormData(document.querySelector('form'))).toString()")
        .await?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cookie = browser
        .cookie_header(&format!("{root}/self-referral"))
        .await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(html.contains("Referral sent"), "{html}");
    let reference = reference_in(&html)?;
    accessible(&mut browser, "confirmation", &mut checked).await?;
    std::fs::write(shots.join("confirmation.png"), browser.screenshot().await?)?;

    // The same form sent again (a double submit): the same reference, and
    // one referral.
    let again = http
        .post(format!("{root}/self-referral"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .body(posted)
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 200);
    assert!(again.text().await?.contains(&reference));

    let events = events_when(&app, "the MSK-HQ baseline", |events| {
        events
            .iter()
            .any(|e| e.event_type == "QuestionnaireCompleted")
    })
    .await?;
    let received: Vec<_> = intake(&events)
        .into_iter()
        .filter_map(|e| match e {
            IntakeEvent::ReferralReceived(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(received.len(), 1, "one referral for two submits");
    let referral = &received[0];
    assert_eq!(referral.referral.received_via.code(), "self-referral");
    let triaged = triage_of(&events, referral.referral_id).ok_or("not triaged")?;
    assert_eq!(triaged.pathway.code(), "back-and-radicular-pain");
    let sb = triaged.start_back.ok_or("STarT Back not scored")?;
    assert_eq!((sb.total, sb.risk.code()), (2, "low"));
    let submitted = selfref(&events);
    assert_eq!(submitted.len(), 1);
    let SelfReferralEvent::SelfReferralSubmitted(s) = &submitted[0] else {
        return Err("no SelfReferralSubmitted".into());
    };
    assert_eq!(
        (s.reference.as_str(), s.msk_hq_score, s.taken_by.as_deref()),
        (reference.as_str(), 42, None)
    );
    let baseline = events
        .iter()
        .filter(|e| e.event_type == "QuestionnaireCompleted")
        .filter_map(|e| decode::<OutcomeEvent>(e).ok())
        .find_map(|e| match e {
            OutcomeEvent::QuestionnaireCompleted(c) if c.referral_id == referral.referral_id => {
                Some(c)
            }
            _ => None,
        })
        .ok_or("no baseline")?;
    assert_eq!(
        (baseline.measure.code(), baseline.timepoint.code()),
        ("msk-hq", "first-contact")
    );
    assert_eq!(
        baseline.score,
        mskflow_events::outcomes::Score::MskHq { total: 42 }
    );

    // 2. Its progress, by reference number and date of birth only.
    browser
        .goto(&format!("{root}/self-referral/status"))
        .await?;
    accessible(&mut browser, "status", &mut checked).await?;
    browser
        .fill(&[
            ("reference", &reference.to_lowercase()),
            ("dob", "1980-03-28"),
        ])
        .await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(
        html.contains("No referral matches"),
        "another date of birth sees nothing"
    );
    accessible(&mut browser, "status, not found", &mut checked).await?;
    browser.fill(&[("dob", "1980-03-27")]).await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(
        html.contains("data-status=\"awaiting-assessment\""),
        "{html}"
    );
    accessible(&mut browser, "status, found", &mut checked).await?;

    // 3. Cauda equina: the form stops with 999, and the referral is
    // recorded as redirected.
    browser.goto(&format!("{root}/self-referral")).await?;
    browser.fill(ELIGIBLE).await?;
    browser.submit().await?;
    browser.fill(ABOUT).await?;
    browser.fill(&[("nhs_number", "401 023 2137")]).await?;
    browser.submit().await?;
    browser.fill(NO_RED_FLAGS).await?;
    browser.fill(&[("rf-bladder", "yes")]).await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(html.contains("Call 999 or go to A&amp;E now"), "{html}");
    let ce_reference = reference_in(&html)?;
    accessible(&mut browser, "999 advice", &mut checked).await?;
    std::fs::write(shots.join("call-999.png"), browser.screenshot().await?)?;
    let events = events_when(&app, "the redirect", |events| {
        intake(events)
            .iter()
            .any(|e| matches!(e, IntakeEvent::ReferralRedirected(_)))
            && selfref(events).len() == 2
    })
    .await?;
    let redirected = intake(&events)
        .into_iter()
        .find_map(|e| match e {
            IntakeEvent::ReferralRedirected(r) => Some(r),
            _ => None,
        })
        .ok_or("no redirect")?;
    assert_eq!(redirected.destination.code(), "emergency-department");
    assert_eq!(redirected.rule_id, "suspected-cauda-equina");
    let netted = selfref(&events)
        .into_iter()
        .find_map(|e| match e {
            SelfReferralEvent::SelfReferralSafetyNetted(n) => Some(n),
            _ => None,
        })
        .ok_or("no SelfReferralSafetyNetted")?;
    assert_eq!(netted.reference, ce_reference);
    assert_eq!(netted.advice.code(), "call-999-or-go-to-a-and-e");
    assert_eq!(
        netted.rule_set_version,
        mskflow_selfreferral::SAFETY_NET_RULES_VERSION
    );
    assert_eq!(netted.referral_id, redirected.referral_id);

    // 4. Another red flag: GP urgently or NHS 111.
    browser.goto(&format!("{root}/self-referral")).await?;
    browser.fill(ELIGIBLE).await?;
    browser.submit().await?;
    browser.fill(ABOUT).await?;
    browser.fill(&[("nhs_number", "943 476 5870")]).await?;
    browser.submit().await?;
    browser.fill(NO_RED_FLAGS).await?;
    browser.fill(&[("rf-fever", "yes")]).await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(
        html.contains("Contact your GP practice urgently") && html.contains("call 111"),
        "{html}"
    );
    accessible(&mut browser, "GP or 111 advice", &mut checked).await?;

    // 5. A practice outside the area is refused, plainly.
    browser.goto(&format!("{root}/self-referral")).await?;
    browser
        .fill(&[("dob", "1980-03-27"), ("practice", "not-listed")])
        .await?;
    browser.submit().await?;
    let html = browser.html().await?;
    assert!(
        html.contains("Your GP practice is not in this area")
            && html.contains("registered with a GP practice in Leeds"),
        "{html}"
    );
    accessible(&mut browser, "out of area", &mut checked).await?;
    browser.goto(&format!("{root}/self-referral")).await?;
    browser
        .fill(&[("dob", "2015-01-01"), ("practice", "B86002")])
        .await?;
    browser.submit().await?;
    assert!(browser.html().await?.contains("aged 16 and over"));
    accessible(&mut browser, "under 16", &mut checked).await?;

    // 6. The telephone route: a call handler signed in (bearer token), every
    // question on one page, recorded with who took the call.
    let unauthenticated = http
        .get(format!("{root}/self-referral/telephone"))
        .send()
        .await?;
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let mut phone = Browser::launch(1280, 900).await?;
    phone
        .set_headers(json!({"Authorization": format!("Bearer {}", test_token())}))
        .await?;
    phone
        .goto(&format!("{root}/self-referral/telephone"))
        .await?;
    assert!(phone.html().await?.contains(TEST_CLIENT));
    accessible(&mut phone, "telephone form", &mut checked).await?;
    std::fs::write(shots.join("telephone.png"), phone.screenshot().await?)?;
    let mut all: Vec<(String, String)> = [ELIGIBLE, ABOUT, NO_RED_FLAGS]
        .concat()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // The caller does not know their NHS number: it is optional.
    all.retain(|(k, _)| k != "nhs_number");
    all.extend(
        [
            ("body_area", "knee"),
            ("duration", "over-a-year"),
            ("work", "retired"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    all.extend(
        questionnaires()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("sb-")),
    );
    phone.fill(&borrowed(&all)).await?;
    phone.submit().await?;
    let html = phone.html().await?;
    assert!(
        html.contains("Referral sent") && html.contains(TEST_CLIENT),
        "{html}"
    );
    accessible(&mut phone, "telephone confirmation", &mut checked).await?;
    let events = events_when(&app, "the telephone referral", |events| {
        selfref(events).iter().any(|e| matches!(e, SelfReferralEvent::SelfReferralSubmitted(s) if s.route.code() == "telephone"))
    })
    .await?;
    let by_phone = selfref(&events)
        .into_iter()
        .find_map(|e| match e {
            SelfReferralEvent::SelfReferralSubmitted(s) if s.route.code() == "telephone" => Some(s),
            _ => None,
        })
        .ok_or("no telephone referral")?;
    assert_eq!(by_phone.taken_by.as_deref(), Some(TEST_CLIENT));
    assert_eq!(by_phone.start_back, None);
    let phoned = intake(&events)
        .into_iter()
        .find_map(|e| match e {
            IntakeEvent::ReferralReceived(r) if r.referral.received_via.code() == "telephone" => {
                Some(r)
            }
            _ => None,
        })
        .ok_or("the telephone referral did not reach intake")?;
    assert_eq!(phoned.referral.patient.nhs_number, None);
    let events = events_when(&app, "the telephone referral's triage", |events| {
        triage_of(events, phoned.referral_id).is_some()
    })
    .await?;
    let triaged = triage_of(&events, phoned.referral_id).ok_or("not triaged")?;
    assert_eq!(triaged.pathway.code(), "knee");

    // 7. Analysts see the route: waits split by it.
    let (status, waits) = get_json(&format!("{root}/analytics/waits?split=route")).await?;
    assert_eq!(status, 200, "{waits}");
    let routes: Vec<&str> = waits["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["route"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        routes.contains(&"self-referral") && routes.contains(&"telephone"),
        "{waits}"
    );

    // No answer reached the logs: the NHS numbers, names and free text are
    // in the events only.
    assert_eq!(checked.len(), 16, "{checked:?}");
    println!(
        "axe-core: no WCAG 2.2 A/AA violations on {} pages: {checked:?}",
        checked.len()
    );
    Ok(())
}

async fn get_json(url: &str) -> TestResult<(u16, Value)> {
    let res = common::client().get(url).send().await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await?))
}
