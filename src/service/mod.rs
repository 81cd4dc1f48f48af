//! Service lifecycle (filled in below).
