//! Events of the assessment streams.

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    Vec::new()
}
