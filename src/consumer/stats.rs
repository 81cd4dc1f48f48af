//! Counters of one runner, readable while it runs.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of a [`Runner`](super::Runner); [`snapshot`](Self::snapshot) reads them.
#[derive(Debug, Default)]
pub struct RunnerStats {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    released: AtomicU64,
    trimmed_before_handled: AtomicU64,
    leases_lost: AtomicU64,
    store_errors: AtomicU64,
}

/// The counters of a runner at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RunnerCounts {
    /// Entries handed to the handler (retries and takeovers included).
    pub delivered: u64,
    /// Entries acknowledged after the handler succeeded.
    pub acked: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries taken over from idle consumers (the runner's own restart included).
    pub reclaimed: u64,
    /// Unfinished entries handed back at shutdown, uncounted.
    pub released: u64,
    /// Pending entries found trimmed from the stream before they were handled.
    pub trimmed_before_handled: u64,
    /// Entries whose lease another consumer took while the handler still ran.
    pub leases_lost: u64,
    /// Store calls that failed and were retried.
    pub store_errors: u64,
}

impl RunnerStats {
    /// Read every counter.
    pub fn snapshot(&self) -> RunnerCounts {
        RunnerCounts {
            delivered: self.delivered.load(Relaxed),
            acked: self.acked.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            reclaimed: self.reclaimed.load(Relaxed),
            released: self.released.load(Relaxed),
            trimmed_before_handled: self.trimmed_before_handled.load(Relaxed),
            leases_lost: self.leases_lost.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
        }
    }
}

macro_rules! adders {
    ($($field:ident => $add:ident),* $(,)?) => {
        impl RunnerStats {
            $(pub(crate) fn $add(&self, n: u64) { self.$field.fetch_add(n, Relaxed); })*
        }
    };
}

adders! {
    delivered => add_delivered,
    acked => add_acked,
    retried => add_retried,
    dead_lettered => add_dead_lettered,
    reclaimed => add_reclaimed,
    released => add_released,
    trimmed_before_handled => add_trimmed,
    leases_lost => add_leases_lost,
    store_errors => add_store_errors,
}
