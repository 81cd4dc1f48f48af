//! The reference design's application patterns, built only on the
//! contracts: the fleet monitor, the stream topology and request/reply.
//!
//! Each is re-exported at the crate root (`fleetwire::monitor`,
//! `fleetwire::topology`, `fleetwire::request`).

pub mod monitor;
pub mod request;
pub mod topology;
