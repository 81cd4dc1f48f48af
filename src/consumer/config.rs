//! The runner's settings and its retry backoff; every default is documented.

use crate::{name::StreamName, StartFrom};
use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[0, min(max, base × factor^(n-1))]` (AWS "full jitter"), so retries of
/// many failed messages spread out instead of arriving together.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// First ceiling (default 1 s).
    pub base: Duration,
    /// Growth per attempt (default 2).
    pub factor: f64,
    /// Largest ceiling (default 10 min).
    pub max: Duration,
    /// Draw uniformly below the ceiling (default true); false waits the ceiling itself.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl Backoff {
    /// Exponential from `base`, doubling, capped at `max`, with full jitter.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            ..Self::default()
        }
    }

    /// The same delay every time, no jitter.
    pub fn constant(delay: Duration) -> Self {
        Self {
            base: delay,
            factor: 1.0,
            max: delay,
            jitter: false,
        }
    }

    /// The delay before retrying after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u64) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let growth = self.factor.max(1.0).powi(exp);
        let ceiling = self.base.as_secs_f64() * growth;
        let ceiling = if ceiling.is_finite() {
            ceiling.min(self.max.as_secs_f64())
        } else {
            self.max.as_secs_f64()
        };
        let secs = if self.jitter {
            ceiling * fastrand::f64()
        } else {
            ceiling
        };
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }
}

/// How a [`Runner`](super::Runner) consumes; set through its builder.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// Handlers running at once (default 8); the runner never reads more
    /// entries than it has free slots.
    pub concurrency: usize,
    /// Run each handler on a task of its own instead of inside the runner's
    /// task (default false; turn on for CPU-heavy handlers).
    pub spawn_handlers: bool,
    /// How long an entry may sit idle in a consumer's hands before another
    /// consumer takes it over (default 30 s). The runner renews the lease of
    /// entries it is still handling every third of this, so a slow handler is not stolen.
    pub lease: Duration,
    /// How often the reaper looks for entries idle longer than the lease (default 5 s).
    pub reap_every: Duration,
    /// Most entries the reaper takes over at once (default 100).
    pub reap_batch: usize,
    /// Deliveries after which a failing entry is dead-lettered (default 10).
    pub max_deliveries: u64,
    /// Delay before a failed entry is retried (default: exponential, 1 s ×2 up to 10 min, full jitter).
    pub backoff: Backoff,
    /// A handler running longer is cancelled and counted as a failed attempt (default 5 min).
    pub handler_timeout: Duration,
    /// On shutdown, how long in-flight handlers may finish before their
    /// entries are released for immediate redelivery (default 25 s).
    pub drain_timeout: Duration,
    /// How long an idle read waits for new entries (default 2 s).
    pub block: Duration,
    /// Where a group created by the runner starts (default [`StartFrom::Latest`]).
    pub start: StartFrom,
    /// The dead-letter stream (default `{stream}:dlq`).
    pub dead_letters: Option<StreamName>,
    /// Length cap of the dead-letter stream (default ~10 000).
    pub dead_letter_max_len: u64,
    /// Backoff after a store error, growing to `store_retry_max` (default 100 ms).
    pub store_retry: Duration,
    /// Largest backoff after repeated store errors (default 5 s).
    pub store_retry_max: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            spawn_handlers: false,
            lease: Duration::from_secs(30),
            reap_every: Duration::from_secs(5),
            reap_batch: 100,
            max_deliveries: 10,
            backoff: Backoff::default(),
            handler_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(25),
            block: Duration::from_secs(2),
            start: StartFrom::Latest,
            dead_letters: None,
            dead_letter_max_len: 10_000,
            store_retry: Duration::from_millis(100),
            store_retry_max: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_never_panics() {
        let b = Backoff {
            jitter: false,
            ..Backoff::default()
        };
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(4));
        assert_eq!(b.delay(40), Duration::from_secs(600));
        assert_eq!(b.delay(u64::MAX), Duration::from_secs(600));
        let huge = Backoff::exponential(Duration::MAX, Duration::MAX);
        assert!(huge.delay(u64::MAX) <= Duration::MAX);
        let j = Backoff::default();
        for attempt in 1..50 {
            assert!(j.delay(attempt) <= Duration::from_secs(600));
        }
        assert_eq!(
            Backoff::constant(Duration::from_millis(5)).delay(9),
            Duration::from_millis(5)
        );
    }
}
