//! Writes the JSON Schema of `AnalystEvent` into `schemas/analytics/`.
//! Run from anywhere: `cargo run -p mskflow-analytics --bin analytics-schema`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/analytics")
        });
    std::fs::create_dir_all(&dir)?;
    let (name, text) = mskflow_analytics::schema_file()?;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    println!("{}", path.display());
    Ok(())
}
