//! eventlog-sqlite
