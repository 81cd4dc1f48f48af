//! In-memory backends with the same semantics as Redis, for unit tests and
//! single-process use.
//!
//! Time comes from a [`Clock`](crate::clock::Clock), so tests expire TTLs
//! and idle times by advancing a [`ManualClock`](crate::clock::ManualClock)
//! instead of sleeping. Each backend is a cheap handle: clones share state.
//! [`set_available`](MemoryBus::set_available) simulates an outage, so
//! callers' fall-back paths can be tested too.

mod bus;
mod liveness;
mod registry;

pub use bus::{MemoryBus, MemoryBusBuilder};
pub use liveness::MemoryLiveness;
pub use registry::MemoryRegistry;

use crate::error::{Error, Result};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

/// A switch that makes every call fail as if the store were down.
#[derive(Debug, Clone, Default)]
struct Outage(Arc<AtomicBool>);

impl Outage {
    fn set_down(&self, down: bool) {
        self.0.store(down, Ordering::SeqCst);
    }

    fn is_down(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn check(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.is_down() {
            Err(Error::unavailable(format!(
                "{} failed: in-memory store is offline (simulated outage)",
                what()
            )))
        } else {
            Ok(())
        }
    }
}
