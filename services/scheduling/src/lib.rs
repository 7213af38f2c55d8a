//! scheduling service
