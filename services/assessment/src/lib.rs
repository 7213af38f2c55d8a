//! The assessment service. Its domain, events and gRPC API are not built yet; the
//! crate reserves its place in the workspace so the all-in-one binary and the
//! deployment files can name it.
