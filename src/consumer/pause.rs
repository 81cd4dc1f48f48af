//! A switch that makes runners stop taking new work, and take it again.

use event_listener::Event;
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

/// Pauses every [`Runner`](super::Runner) built with it: a paused runner reads
/// and takes over nothing new, while handlers in flight finish, their acks go
/// out and their leases stay fresh. Clones share the switch.
///
/// The lifecycle's `quiet` / `resume` control commands flip it.
#[derive(Clone, Default)]
pub struct Pause {
    inner: Arc<(AtomicBool, Event)>,
}

impl fmt::Debug for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pause")
            .field("paused", &self.is_paused())
            .finish()
    }
}

impl Pause {
    /// Stop taking new work (idempotent).
    pub fn pause(&self) {
        self.set(true);
    }

    /// Take new work again (idempotent).
    pub fn resume(&self) {
        self.set(false);
    }

    /// Whether runners are paused.
    pub fn is_paused(&self) -> bool {
        self.inner.0.load(Ordering::SeqCst)
    }

    fn set(&self, paused: bool) {
        if self.inner.0.swap(paused, Ordering::SeqCst) != paused {
            self.inner.1.notify(usize::MAX);
        }
    }

    /// Resolves at the next flip.
    pub(crate) fn changed(&self) -> event_listener::EventListener {
        self.inner.1.listen()
    }
}
