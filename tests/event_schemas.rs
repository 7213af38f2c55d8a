//! Every event the system really emits matches its JSON Schema in `schemas/`.

mod common;

use common::*;

#[tokio::test]
async fn emitted_events_match_their_schemas() -> TestResult {
    let app = spawn_app().await?;
    // One referral of each outcome: triaged (with STarT Back if the fixture
    // has it), redirected, rejected (under 16).
    let triaged = new_referral_message()?;
    assert_eq!(app.post_message(&triaged).await?.status().as_u16(), 200);
    let mut redirected = new_referral_message()?;
    add_red_flag(&mut redirected, "persistent-joint-swelling", true)?;
    assert_eq!(app.post_message(&redirected).await?.status().as_u16(), 200);
    let mut child = new_referral_message()?;
    let year = chrono::Utc::now().format("%Y").to_string().parse::<i32>()? - 8;
    with_resource(&mut child, "Patient", |p| {
        p["birthDate"] = serde_json::json!(format!("{year}-01-01"))
    })?;
    assert_eq!(app.post_message(&child).await?.status().as_u16(), 200);
    // And one cancelled by its referrer.
    assert_eq!(
        app.post_message(&as_update(&triaged, "revoked")?)
            .await?
            .status()
            .as_u16(),
        200
    );

    let seen = check_event_schemas(&app).await?;
    let expected: std::collections::BTreeSet<String> = mskflow_events::IntakeEvent::TYPES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert!(
        seen.is_superset(&expected),
        "every intake event type should have been emitted and checked: {seen:?}"
    );
    Ok(())
}
