//! assessment service
