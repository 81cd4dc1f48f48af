//! Conformance suites: the contract of each trait as functions any backend
//! can run, the in-memory and Redis ones alike (and yours).
//!
//! Each `run` returns a [`Report`] of named cases instead of panicking, so a
//! suite can also prove that it catches a broken backend. Call
//! [`Report::assert_all_passed`] in a test.
//!
//! Time-dependent cases (TTL expiry, idle times) advance time through a
//! [`TimeControl`]: a manual clock for memory, real sleeping for Redis.
//! What a backend cannot do is read from its [`Capabilities`](crate::Capabilities),
//! never skipped.

pub mod bus;
pub mod consumer;
pub mod control;
pub mod lifecycle;
pub mod liveness;
pub mod registry;
pub mod topology;
pub mod trim;
pub mod watch;

use async_trait::async_trait;
use std::{fmt, future::Future, time::Duration};

/// Moves time forward for the backend under test.
#[async_trait]
pub trait TimeControl: Send + Sync {
    /// Let `by` pass as the backend sees it.
    async fn advance(&self, by: Duration);
}

/// Real time: sleeps (for backends on the system clock, like Redis).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

#[async_trait]
impl TimeControl for RealTime {
    async fn advance(&self, by: Duration) {
        crate::rt::sleep(by).await
    }
}

#[async_trait]
impl TimeControl for crate::clock::ManualClock {
    async fn advance(&self, by: Duration) {
        crate::clock::ManualClock::advance(self, by)
    }
}

/// Outcome of one case: `Err` holds what was expected and what happened.
pub type CaseResult = Result<(), String>;

/// Outcomes of a suite, case by case.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// `(case name, outcome)` in run order.
    pub cases: Vec<(&'static str, CaseResult)>,
}

impl Report {
    async fn case(&mut self, name: &'static str, f: impl Future<Output = CaseResult>) {
        let result = f.await;
        if let Err(e) = &result {
            tracing::error!(case = name, "conformance case failed: {e}");
        }
        self.cases.push((name, result));
    }

    /// Names of the failed cases.
    pub fn failures(&self) -> Vec<&'static str> {
        self.cases
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Whether case `name` ran and failed.
    pub fn failed(&self, name: &str) -> bool {
        self.cases.iter().any(|(n, r)| *n == name && r.is_err())
    }

    /// Panic with every failure when any case failed (or none ran).
    pub fn assert_all_passed(&self) {
        assert!(!self.cases.is_empty(), "the suite ran no case");
        let failed: Vec<String> = self
            .cases
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("  {n}: {e}")))
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} conformance cases failed:\n{}",
            failed.len(),
            self.cases.len(),
            failed.join("\n")
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, r) in &self.cases {
            match r {
                Ok(()) => writeln!(f, "ok   {n}")?,
                Err(e) => writeln!(f, "FAIL {n}: {e}")?,
            }
        }
        Ok(())
    }
}

/// A name unique to this run, so cases never see each other's data.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// Fail the case with a message unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{} (at {}:{})", format!($($msg)+), file!(), line!()));
        }
    };
}
pub(crate) use ensure;

/// Turn a fleetwire error into a case failure naming the step.
pub(crate) trait Step<T> {
    fn step(self, what: &str) -> Result<T, String>;
}

impl<T> Step<T> for crate::Result<T> {
    fn step(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: unexpected error: {e}"))
    }
}
