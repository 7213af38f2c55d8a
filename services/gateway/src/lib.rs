//! gateway service
