//! `mskflow export` writes the analysts' stream: every line is a valid
//! AnalystEvent, nothing in it identifies the patient, and the same patient
//! carries the same pseudonym throughout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The patient-identifying values and free text of a referral message.
fn identifying_values(bundle: &Value) -> Vec<String> {
    let mut values = Vec::new();
    for patient in entries_of(bundle, "Patient") {
        for id in patient["identifier"].as_array().into_iter().flatten() {
            values.extend(id["value"].as_str().map(str::to_owned));
        }
        for name in patient["name"].as_array().into_iter().flatten() {
            values.extend(name["family"].as_str().map(str::to_owned));
            for g in name["given"].as_array().into_iter().flatten() {
                values.extend(g.as_str().map(str::to_owned));
            }
        }
        for a in patient["address"].as_array().into_iter().flatten() {
            if let Some(pc) = a["postalCode"].as_str() {
                values.push(pc.to_owned());
                values.push(pc.replace(' ', ""));
            }
            for line in a["line"].as_array().into_iter().flatten() {
                values.extend(line.as_str().map(str::to_owned));
            }
        }
        values.extend(patient["birthDate"].as_str().map(str::to_owned));
    }
    for sr in entries_of(bundle, "ServiceRequest") {
        for n in sr["note"].as_array().into_iter().flatten() {
            values.extend(n["text"].as_str().map(str::to_owned));
        }
    }
    values.retain(|v| v.len() >= 4);
    values
}

fn export_command(app: &App) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mskflow"));
    cmd.arg("export")
        .arg("--data-dir")
        .arg(&app.dir)
        .env_remove("MSKFLOW_ANALYTICS_SECRET")
        .env_remove("MSKFLOW_CONFIG");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_pseudonymised_valid_and_stable() -> TestResult {
    let app = spawn_app().await?;
    let bundle = new_referral_message()?;
    let secrets = identifying_values(&bundle);
    assert!(
        secrets.len() >= 4,
        "the fixture should carry identifiers to look for: {secrets:?}"
    );
    assert_eq!(app.post_message(&bundle).await?.status().as_u16(), 200);
    assert_eq!(
        app.post_message(&new_referral_message()?)
            .await?
            .status()
            .as_u16(),
        200
    );
    let mut red = new_referral_message()?;
    add_red_flag(&mut red, "saddle-anaesthesia", true)?;
    assert_eq!(app.post_message(&red).await?.status().as_u16(), 200);
    // Let the assessment service pick up a triaged referral, so the export
    // holds events of more than one service.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app
        .all_events()
        .await?
        .iter()
        .any(|e| e.event_type == "AssessmentRequested")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "assessment never picked up the referral"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tmp = tempfile::tempdir()?;
    let secret_file = tmp.path().join("secret");
    std::fs::write(&secret_file, "an export secret for this test only\n")?;
    let out_dir = tmp.path().join("out");
    let output = export_command(&app)
        .arg("--out")
        .arg(&out_dir)
        .arg("--secret-file")
        .arg(&secret_file)
        .arg("--parquet")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "export failed: {stdout}\n{stderr}");
    assert!(stdout.contains("exported"), "{stdout}");
    assert!(stderr.contains("ILLUSTRATIVE"), "{stderr}");

    let jsonl = std::fs::read_to_string(out_dir.join("analyst-events.jsonl"))?;
    let csv = std::fs::read_to_string(out_dir.join("analyst-events.csv"))?;
    for s in &secrets {
        assert!(!jsonl.contains(s.as_str()), "the JSONL leaks {s:?}");
        assert!(!csv.contains(s.as_str()), "the CSV leaks {s:?}");
        assert!(!stdout.contains(s.as_str()) && !stderr.contains(s.as_str()));
    }

    let schema: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("schemas/analytics/analyst-event.v1.schema.json"),
    )?)?;
    let validator = jsonschema::validator_for(&schema)?;
    let mut types = BTreeSet::new();
    let mut pseudonyms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let lines: Vec<&str> = jsonl.lines().collect();
    for line in &lines {
        let event: Value = serde_json::from_str(line)?;
        if let Err(e) = validator.validate(&event) {
            return Err(format!("invalid analyst event: {e}\n{event}").into());
        }
        types.insert(event["event_type"].as_str().unwrap_or_default().to_owned());
        if let Some(key) = event["referral_key"].as_str() {
            let p = event["patient_pseudonym"]
                .as_str()
                .ok_or_else(|| format!("no pseudonym on a referral event: {event}"))?;
            pseudonyms
                .entry(key.to_owned())
                .or_default()
                .insert(p.to_owned());
        }
    }
    for t in [
        "ReferralReceived",
        "ReferralTriaged",
        "ReferralRedirected",
        "AssessmentRequested",
    ] {
        assert!(types.contains(t), "{t} missing from {types:?}");
    }
    assert_eq!(pseudonyms.len(), 3, "three referrals: {pseudonyms:?}");
    for (referral, ps) in &pseudonyms {
        assert_eq!(ps.len(), 1, "referral {referral} has pseudonyms {ps:?}");
    }
    // The three referrals are of one patient (the same fixture): one pseudonym.
    let all: BTreeSet<&String> = pseudonyms.values().flatten().collect();
    assert_eq!(all.len(), 1, "{all:?}");
    // The CSV has the header and one row per JSONL line.
    assert!(csv.starts_with("event_id,event_type,"), "{csv}");
    assert_eq!(csv.lines().count(), lines.len() + 1);

    // The Parquet file holds the same events, in the same order.
    let parquet = std::fs::File::open(out_dir.join("analyst-events.parquet"))?;
    let reader = parquet::file::reader::SerializedFileReader::new(parquet)?;
    let ids: Vec<String> = parquet::file::reader::FileReader::get_row_iter(&reader, None)?
        .map(|row| -> TestResult<String> {
            let row = row?;
            let (_, id) = row.get_column_iter().next().ok_or("no column")?;
            Ok(id.to_string().trim_matches('"').to_owned())
        })
        .collect::<TestResult<_>>()?;
    let jsonl_ids: Vec<String> = lines
        .iter()
        .map(|l| -> TestResult<String> {
            let v: Value = serde_json::from_str(l)?;
            Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<TestResult<_>>()?;
    assert_eq!(ids, jsonl_ids);
    assert!(
        stdout.contains(&format!("({} rows)", lines.len())),
        "{stdout}"
    );
    // Each view as CSV and as Parquet.
    let views = std::fs::read_dir(out_dir.join("views"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<BTreeSet<_>>();
    assert!(views.contains("waits-by-imd_decile.parquet"), "{views:?}");
    assert_eq!(views.len(), 2 * 4 * 6, "{views:?}");

    // Without a secret the export refuses to run.
    let refused = export_command(&app)
        .arg("--out")
        .arg(tmp.path().join("refused"))
        .output()
        .await?;
    let refused_err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        refused_err.contains("pseudonymisation secret is required"),
        "{refused_err}"
    );
    assert!(!tmp.path().join("refused").exists());
    Ok(())
}
