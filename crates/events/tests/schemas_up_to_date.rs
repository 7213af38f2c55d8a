//! `schemas/events/` must match the event types: regenerate with
//! `cargo run -p mskflow-events --bin schemas` after changing an event.

use std::path::PathBuf;

#[test]
fn committed_schemas_match_the_event_types() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/events");
    let files = mskflow_events::schema_files()?;
    assert!(!files.is_empty());
    for (name, text) in files {
        let committed = std::fs::read_to_string(dir.join(&name)).map_err(|e| {
            format!("schemas/events/{name}: {e} (run `cargo run -p mskflow-events --bin schemas`)")
        })?;
        assert!(
            committed == text,
            "schemas/events/{name} is out of date: run `cargo run -p mskflow-events --bin schemas`"
        );
    }
    Ok(())
}
