//! The bus settings every backend shares (caps, trim policies, codec) and
//! the one backlog guard: per-stream sampling, length estimate and warning
//! rate limit, bounded in size.
// Each piece is used by at least one backend; which ones depend on the features on.
#![cfg_attr(not(all(feature = "memory", feature = "redis")), allow(dead_code))]

use crate::{
    bus::{BacklogPolicy, TrimPolicy},
    envelope::Codec,
    name::StreamName,
};

/// Settings every bus backend shares (set through the backends' builders).
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    pub(crate) max_len: u64,
    pub(crate) stream_max_len: std::collections::HashMap<StreamName, u64>,
    /// Caps below this are raised to it (the reference design clamps at 1,000).
    pub(crate) max_len_floor: u64,
    pub(crate) trim: TrimPolicy,
    pub(crate) stream_trim: std::collections::HashMap<StreamName, TrimPolicy>,
    pub(crate) backlog: BacklogPolicy,
    pub(crate) codec: Codec,
}

/// The smallest stream cap accepted without an explicit opt-in.
pub(crate) const MAX_LEN_FLOOR: u64 = 1_000;

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            stream_max_len: Default::default(),
            max_len_floor: MAX_LEN_FLOOR,
            trim: TrimPolicy::DropOldest,
            stream_trim: Default::default(),
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
        custom
            .copied()
            .unwrap_or(self.max_len)
            .max(self.max_len_floor)
            .max(1)
    }

    /// The trim policy of `stream`.
    pub(crate) fn trim_of(&self, stream: &StreamName) -> TrimPolicy {
        if self.stream_trim.is_empty() {
            return self.trim;
        }
        self.stream_trim.get(stream).copied().unwrap_or(self.trim)
    }

    /// Log each configured cap the floor raises; call once when building a bus.
    pub(crate) fn warn_raised_caps(&self) {
        let raised = std::iter::once(("*", self.max_len))
            .chain(self.stream_max_len.iter().map(|(s, n)| (s.as_str(), *n)))
            .filter(|(_, n)| *n < self.max_len_floor);
        for (stream, asked) in raised {
            tracing::warn!(
                event = "stream_max_len_raised",
                stream,
                asked,
                used = self.max_len_floor,
                "stream cap below the floor of {} raised to it (lower it explicitly with max_len_floor)",
                self.max_len_floor
            );
        }
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

#[derive(Debug)]
struct GuardState {
    /// Last sample time plus one (0: never sampled).
    last_sample_ms: std::sync::atomic::AtomicU64,
    last_warn_ms: parking_lot::Mutex<Option<u64>>,
    /// The stream's length as last seen plus what this process added since
    /// (`u64::MAX`: unknown), so a publish knows without asking whether it is near the cap.
    est_len: std::sync::atomic::AtomicU64,
}

impl Default for GuardState {
    fn default() -> Self {
        Self {
            last_sample_ms: Default::default(),
            last_warn_ms: Default::default(),
            est_len: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

/// Streams whose guard state is kept; past this the states start over (they
/// only rate-limit and estimate, so forgetting costs one extra sample each).
const MAX_GUARDED_STREAMS: usize = 10_000;

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
        if streams.len() >= MAX_GUARDED_STREAMS {
            streams.clear();
        }
        let st = streams.entry(stream.clone()).or_default();
        st.last_sample_ms
            .compare_exchange(0, stamp, Relaxed, Relaxed)
            .is_ok()
    }

    /// The estimated length of `stream` (`None`: unknown).
    pub(crate) fn est_len(&self, stream: &StreamName) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let streams = self.streams.read();
        let n = streams.get(stream)?.est_len.load(Relaxed);
        (n != u64::MAX).then_some(n)
    }

    /// Record the length of `stream` as the store reported it.
    pub(crate) fn set_len(&self, stream: &StreamName, len: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(st) = self.streams.read().get(stream) {
            st.est_len.store(len, Relaxed);
            return;
        }
        let mut streams = self.streams.write();
        if streams.len() >= MAX_GUARDED_STREAMS {
            streams.clear();
        }
        streams
            .entry(stream.clone())
            .or_default()
            .est_len
            .store(len, Relaxed);
    }

    /// Count `n` entries this process appended to `stream`.
    pub(crate) fn add_len(&self, stream: &StreamName, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(st) = self.streams.read().get(stream) {
            let _ = st
                .est_len
                .fetch_update(Relaxed, Relaxed, |l| (l != u64::MAX).then(|| l.saturating_add(n)));
        }
    }

    /// Log `stream_backlog_high` if at risk and not warned within the interval.
    pub(crate) fn observe(&self, stream: &StreamName, now_ms: u64, sample: BacklogSample) {
        self.set_len(stream, sample.length);
        if !self.policy.at_risk(sample.length, sample.pending, sample.max_len)
            && sample.trimmed_undelivered == 0
        {
            return;
        }
        let due = match self.streams.read().get(stream) {
            Some(st) => self.warn_due(&mut st.last_warn_ms.lock(), now_ms),
            None => false,
        };
        if due {
            warn_backlog(stream, sample);
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

/// What a backlog sample saw of one stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BacklogSample {
    pub(crate) length: u64,
    /// The largest pending count over its groups.
    pub(crate) pending: u64,
    pub(crate) max_len: u64,
    /// The largest count over its groups of entries trimmed before delivery.
    pub(crate) trimmed_undelivered: u64,
}

/// The backlog warning, the same from every backend.
pub(crate) fn warn_backlog(stream: &StreamName, s: BacklogSample) {
    if s.trimmed_undelivered > 0 {
        tracing::warn!(
            event = "stream_backlog_high",
            stream = %stream,
            length = s.length,
            pending = s.pending,
            max_len = s.max_len,
            trimmed_undelivered = s.trimmed_undelivered,
            "stream trimmed {} entries a group had not been delivered: they are lost to it (see TrimPolicy::KeepUnacknowledged)",
            s.trimmed_undelivered
        );
    } else {
        tracing::warn!(
            event = "stream_backlog_high",
            stream = %stream,
            length = s.length,
            pending = s.pending,
            max_len = s.max_len,
            "stream backlog high: trimming may drop unread entries"
        );
    }
}

/// Where a stream without groups is trimmed to under `KeepUnacknowledged`:
/// 90 % of its cap, so the next tenth of the cap are plain appends rather
/// than one trimming script per publish.
pub(crate) fn no_group_trim_len(max_len: u64) -> u64 {
    max_len - max_len / 10
}

/// The refusal of a publish to a stream full by policy, the same from every backend.
pub(crate) fn backpressure(stream: &StreamName, length: u64, hard_cap: u64) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Backpressure,
        format!(
            "publish to stream `{stream}` refused: {length} entries not yet acknowledged by every group \
             and the hard cap is {hard_cap}; retry when consumers catch up"
        ),
    )
}
