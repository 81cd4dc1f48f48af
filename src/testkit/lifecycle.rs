//! Lifecycle conformance (see service).
