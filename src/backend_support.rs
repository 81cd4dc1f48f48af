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
        self.stream_max_len
            .get(stream)
            .copied()
            .unwrap_or(self.max_len)
            .max(1)
    }
}

/// Rate-limits backlog sampling and warnings, per stream.
#[derive(Debug)]
pub(crate) struct BacklogGuard {
    policy: BacklogPolicy,
    sample_every_ms: u64,
    streams: parking_lot::Mutex<std::collections::HashMap<StreamName, GuardState>>,
}

#[derive(Debug, Default)]
struct GuardState {
    last_sample_ms: Option<u64>,
    last_warn_ms: Option<u64>,
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
        let mut streams = self.streams.lock();
        if let Some(st) = streams.get_mut(stream) {
            let due = st
                .last_sample_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= self.sample_every_ms);
            if due {
                st.last_sample_ms = Some(now_ms);
            }
            return due;
        }
        streams.insert(
            stream.clone(),
            GuardState {
                last_sample_ms: Some(now_ms),
                last_warn_ms: None,
            },
        );
        true
    }

    /// Log `stream_backlog_high` if at risk and not warned within the interval.
    pub(crate) fn observe(&self, stream: &StreamName, now_ms: u64, length: u64, pending: u64, max_len: u64) {
        if !self.policy.at_risk(length, pending, max_len) {
            return;
        }
        let warn_every = self.policy.warn_every.as_millis() as u64;
        {
            let mut streams = self.streams.lock();
            let st = streams.entry(stream.clone()).or_default();
            if st
                .last_warn_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < warn_every)
            {
                return;
            }
            st.last_warn_ms = Some(now_ms);
        }
        tracing::warn!(
            event = "stream_backlog_high",
            stream = %stream,
            length,
            pending,
            max_len,
            "stream backlog high: trimming may drop unread entries"
        );
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis rejects `PX 0`).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}
