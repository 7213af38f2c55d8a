//! Events of the scheduling streams.

pub(crate) fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    Vec::new()
}
