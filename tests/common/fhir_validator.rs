//! The external FHIR R4 validator the tests share: `scripts/fhir-tools.sh`
//! installs the R4 JSON schema and ajv (npm) once under
//! `~/.cache/mskflow/fhir-tools` (or `$MSKFLOW_FHIR_TOOLS`), and
//! `scripts/fhir-validate.mjs` checks resources against it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{TestResult, repo_root};

/// Install (or find) the tools; the directory `fhir-tools.sh` printed.
pub fn fhir_tools() -> TestResult<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/fhir-tools.sh"))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "scripts/fhir-tools.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8(out.stdout)?;
    let dir = stdout
        .lines()
        .last()
        .ok_or("fhir-tools.sh printed nothing")?;
    Ok(PathBuf::from(dir.trim()))
}

/// Run the validator over `resources`; the failures, each described.
pub fn validate(tools: &Path, resources: &[(String, Value)]) -> TestResult<Vec<String>> {
    let file = tempfile::NamedTempFile::new()?;
    let list: Vec<&Value> = resources.iter().map(|(_, r)| r).collect();
    std::fs::write(file.path(), serde_json::to_vec(&list)?)?;
    let out = std::process::Command::new("node")
        .arg(repo_root().join("scripts/fhir-validate.mjs"))
        .arg(tools)
        .arg(file.path())
        .output()?;
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "the validator did not answer ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if results.len() != resources.len() {
        return Err("the validator skipped resources".into());
    }
    Ok(results
        .iter()
        .zip(resources)
        .filter(|(r, _)| r["errors"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|(r, (what, resource))| {
            format!(
                "{} from {what}: {}\n  {}",
                resource["resourceType"].as_str().unwrap_or("?"),
                r["errors"],
                resource.to_string().chars().take(400).collect::<String>()
            )
        })
        .collect())
}
