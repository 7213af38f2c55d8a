//! intake service
