//! Plumbing the backends share: bus settings, the backlog guard, TTL conversion.
// Each piece is used by at least one backend; which ones depend on the features on.
#![cfg_attr(not(all(feature = "memory", feature = "redis")), allow(dead_code))]

use crate::{bus::BacklogPolicy, envelope::Codec, name::StreamName};
use std::time::Duration;

/// Settings every bus backend shares (set through the backends' builders).
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    pub(crate) max_len: u64,
    pub(crate) stream_max_len: std::collections::HashMap<StreamName, u64>,
    pub(crate) backlog: BacklogPolicy,
    pub(crate) codec: Codec,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            stream_max_len: Default::default(),
            backlog: BacklogPolicy::default(),
            codec: Codec::default(),
        }
    }
}

impl BusConfig {
    /// The cap of `stream`.
    pub(crate) fn max_len_of(&self, stream: &StreamName) -> u64 {
        // Most buses have no per-stream cap: skip hashing the name on the publish path.
        let custom = if self.stream_max_len.is_empty() {
            None
        } else {
            self.stream_max_len.get(stream)
        };
        custom.copied().unwrap_or(self.max_len).max(1)
    }
}

/// Rate-limits backlog sampling and warnings, per stream.
#[derive(Debug)]
pub(crate) struct BacklogGuard {
    policy: BacklogPolicy,
    sample_every_ms: u64,
    // Read-mostly: a publish takes the read lock and one atomic, so concurrent
    // publishers never queue behind each other here.
    streams: parking_lot::RwLock<std::collections::HashMap<StreamName, GuardState>>,
}

#[derive(Debug, Default)]
struct GuardState {
    /// Last sample time plus one (0: never sampled).
    last_sample_ms: std::sync::atomic::AtomicU64,
    last_warn_ms: parking_lot::Mutex<Option<u64>>,
}

impl BacklogGuard {
    pub(crate) fn new(policy: BacklogPolicy) -> Self {
        Self {
            policy,
            sample_every_ms: policy.sample_every.as_millis() as u64,
            streams: Default::default(),
        }
    }

    /// Whether this publish should carry a backlog sample; marks it taken.
    pub(crate) fn sample_due(&self, stream: &StreamName, now_ms: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let stamp = now_ms.saturating_add(1);
        if let Some(st) = self.streams.read().get(stream) {
            let last = st.last_sample_ms.load(Relaxed);
            let due = last == 0 || stamp.saturating_sub(last) >= self.sample_every_ms;
            // Only one of several concurrent publishers takes the sample.
            return due
                && st
                    .last_sample_ms
                    .compare_exchange(last, stamp, Relaxed, Relaxed)
                    .is_ok();
        }
        let mut streams = self.streams.write();
        let st = streams.entry(stream.clone()).or_default();
        st.last_sample_ms
            .compare_exchange(0, stamp, Relaxed, Relaxed)
            .is_ok()
    }

    /// Log `stream_backlog_high` if at risk and not warned within the interval.
    pub(crate) fn observe(&self, stream: &StreamName, now_ms: u64, length: u64, pending: u64, max_len: u64) {
        if !self.policy.at_risk(length, pending, max_len) {
            return;
        }
        let due = match self.streams.read().get(stream) {
            Some(st) => self.warn_due(&mut st.last_warn_ms.lock(), now_ms),
            None => false,
        };
        if due {
            warn_backlog(stream, length, pending, max_len);
        }
    }

    /// Whether a warning is due given the last one, at `now_ms`; marks it given.
    /// A backend that already holds per-stream state keeps `last_warn_ms` there.
    pub(crate) fn warn_due(&self, last_warn_ms: &mut Option<u64>, now_ms: u64) -> bool {
        let every = self.policy.warn_every.as_millis() as u64;
        if last_warn_ms.is_some_and(|t| now_ms.saturating_sub(t) < every) {
            return false;
        }
        *last_warn_ms = Some(now_ms);
        true
    }

    pub(crate) fn policy(&self) -> &BacklogPolicy {
        &self.policy
    }
}

/// The backlog warning, the same from every backend.
pub(crate) fn warn_backlog(stream: &StreamName, length: u64, pending: u64, max_len: u64) {
    tracing::warn!(
        event = "stream_backlog_high",
        stream = %stream,
        length,
        pending,
        max_len,
        "stream backlog high: trimming may drop unread entries"
    );
}

/// A TTL in whole milliseconds, at least 1 (Redis rejects `PX 0`).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}
