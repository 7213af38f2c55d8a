//! Writes the JSON Schema of every event type into `schemas/events/`.
//! Run from the repository root: `cargo run -p mskflow-events --bin schemas`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/events"));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in mskflow_events::schema_files()? {
        let path = dir.join(&name);
        std::fs::write(&path, text)?;
        println!("{}", path.display());
    }
    Ok(())
}
