//! HTTP health server.
