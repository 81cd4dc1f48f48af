//! Health: readiness state, component checks and the server that exposes them.

use crate::error::Result;
use async_trait::async_trait;
use futures_util::future::{join_all, BoxFuture};
use parking_lot::RwLock;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync;

/// A named component check, e.g. a store ping.
#[derive(Clone)]
pub struct HealthCheck {
    name: String,
    check: Arc<CheckFn>,
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl HealthCheck {
    /// A check named `name` that runs `check`.
    ///
    /// ```
    /// use fleetwire::health::HealthCheck;
    /// let check = HealthCheck::new("always", || async { Ok(()) });
    /// assert_eq!(check.name(), "always");
    /// ```
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        Self {
            name: name.into(),
            check: Arc::new(move || Box::pin(check())),
        }
    }

    /// The component name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Up, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    /// The check passed in time.
    Ok,
    /// The check failed or timed out.
    Down,
}

/// Result of one component check. Error details are logged, not reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComponentReport {
    /// Outcome.
    pub status: ComponentStatus,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
}

/// The `/health` document: `{"status": ..., "components": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// `ok` when booted, not stopping and every component is ok.
    pub status: ComponentStatus,
    /// Booted and not stopping.
    pub ready: bool,
    /// Per-component results.
    pub components: BTreeMap<String, ComponentReport>,
}

/// What `/fleet` serves: a table of the fleet as JSON.
///
/// The seam keeps health free of the patterns built on it;
/// [`FleetMonitor`](crate::monitor::FleetMonitor) is the implementation
/// this crate ships.
///
/// ```
/// use fleetwire::{health::{FleetView, Health}, monitor::FleetMonitor};
/// use std::{sync::Arc, time::Duration};
///
/// let health = Health::default();
/// health.set_fleet(Arc::new(FleetMonitor::new(["api"], Duration::from_secs(30))));
/// let table = health.fleet().expect("set").snapshot();
/// assert_eq!(table[0]["status"], "unknown");
/// ```
pub trait FleetView: Send + Sync + fmt::Debug {
    /// The current table, serialised as `/fleet` serves it.
    fn snapshot(&self) -> serde_json::Value;
}

/// Shared health state of one process: readiness flags and checks.
///
/// Cloning shares the state. The lifecycle flips `booted` and `stopping`;
/// anyone may add checks.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    booted: AtomicBool,
    stopping: AtomicBool,
    check_timeout: Duration,
    checks: RwLock<Vec<HealthCheck>>,
    fleet: RwLock<Option<Arc<dyn FleetView>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl Health {
    /// Health state whose checks each get at most `check_timeout`.
    pub fn new(check_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(HealthInner {
                booted: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                check_timeout,
                checks: RwLock::new(Vec::new()),
                fleet: RwLock::new(None),
            }),
        }
    }

    /// Add a readiness check.
    pub fn add_check(&self, check: HealthCheck) {
        self.inner.checks.write().push(check);
    }

    /// Mark boot complete (ready once checks pass).
    pub fn set_booted(&self, booted: bool) {
        self.inner.booted.store(booted, Ordering::SeqCst);
    }

    /// Mark shutdown in progress (never ready again).
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// Booted and not stopping; checks are not consulted.
    pub fn is_serving(&self) -> bool {
        self.inner.booted.load(Ordering::SeqCst) && !self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Serve this fleet view's snapshot on `/fleet` (usually a
    /// [`FleetMonitor`](crate::monitor::FleetMonitor)).
    pub fn set_fleet(&self, view: Arc<dyn FleetView>) {
        *self.inner.fleet.write() = Some(view);
    }

    /// The fleet view served on `/fleet`, if any.
    pub fn fleet(&self) -> Option<Arc<dyn FleetView>> {
        self.inner.fleet.read().clone()
    }

    /// Run every check concurrently, each with the timeout, and report.
    ///
    /// # Cancel safety
    /// Safe to drop: checks only read; a check still running is cancelled with it.
    pub async fn report(&self) -> HealthReport {
        let checks = self.inner.checks.read().clone();
        let limit = self.inner.check_timeout;
        let results = join_all(checks.iter().map(|c| async move {
            let start = Instant::now();
            let status = match crate::rt::timeout(limit, (c.check)()).await {
                Ok(Ok(())) => ComponentStatus::Ok,
                Ok(Err(e)) => {
                    tracing::warn!(event = "health_check_failed", component = %c.name, error = %e);
                    ComponentStatus::Down
                }
                Err(_) => {
                    tracing::warn!(event = "health_check_timeout", component = %c.name, timeout_ms = limit.as_millis() as u64);
                    ComponentStatus::Down
                }
            };
            let latency_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            (c.name.clone(), ComponentReport { status, latency_ms })
        }))
        .await;
        let components: BTreeMap<_, _> = results.into_iter().collect();
        let ready = self.is_serving();
        let all_ok = components.values().all(|c| c.status == ComponentStatus::Ok);
        let status = if ready && all_ok {
            ComponentStatus::Ok
        } else {
            ComponentStatus::Down
        };
        HealthReport {
            status,
            ready,
            components,
        }
    }
}

/// Serves [`Health`] to probes and operators.
///
/// # Contract
/// - `start` begins serving and returns the bound address (`None` when the
///   server does not listen, like the no-op one); starting twice is an error.
/// - `stop` stops serving; stopping a stopped server is `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait HealthServer: Send + Sync + fmt::Debug {
    /// Start serving `health`.
    ///
    /// # Cancel safety
    /// Dropped before it returns, the server may or may not be listening; call `stop` to be sure it is not.
    async fn start(&self, health: Health) -> Result<Option<SocketAddr>>;
    /// Stop serving.
    ///
    /// # Cancel safety
    /// Safe to drop: the server still closes its connections in the background (idle at once, in-flight requests after at most 1 s).
    async fn stop(&self) -> Result<()>;
}
