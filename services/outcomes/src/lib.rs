//! outcomes service
