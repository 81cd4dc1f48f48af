//! The reference design's application patterns, built only on the
//! contracts: the fleet monitor, the stream topology and request/reply.
//!
//! Each is re-exported at the crate root (`fleetwire::monitor`,
//! `fleetwire::topology`, `fleetwire::request`, `fleetwire::watch`).

pub mod monitor;
pub mod request;
pub mod topology;
pub mod watch;
