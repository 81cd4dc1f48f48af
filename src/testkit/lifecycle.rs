//! Conformance of the [`crate::service::Lifecycle`] on a registry backend.
//!
//! The cases run the real lifecycle against the registry under test and
//! record, from inside each hook, what the registry shows at that moment.

use super::{ensure, unique, CaseResult, Report, Step};
use crate::{
    health::Health,
    service::{Context, Lifecycle, LifecycleBuilder, Service},
    Error, ErrorKind, HealthServer, InstanceId, RegistryStore, Result, ServiceName, Status,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

const TTL: Duration = Duration::from_millis(900);

type Log = Arc<Mutex<Vec<String>>>;

/// A service that records its hooks and what the registry showed in each.
struct Probe {
    log: Log,
    registry: Arc<dyn RegistryStore>,
    fail_start: bool,
    /// In `run`: delete the entry behind the lifecycle's back, then wait this long.
    evict_and_wait: Option<Duration>,
}

impl Probe {
    async fn status(&self, ctx: &Context) -> String {
        match self.registry.list(Some(ctx.service())).await {
            Ok(list) => match list.iter().find(|i| &i.id == ctx.instance()) {
                Some(i) => i.status.to_string(),
                None => "absent".into(),
            },
            Err(_) => "unreachable".into(),
        }
    }

    fn note(&self, s: String) {
        self.log.lock().push(s);
    }
}

#[async_trait]
impl Service for Probe {
    async fn on_start(&self, ctx: &Context) -> Result<()> {
        let s = self.status(ctx).await;
        self.note(format!("on_start:{s}"));
        if self.fail_start {
            return Err(Error::new(ErrorKind::InvalidInput, "probe refuses to start"));
        }
        Ok(())
    }

    async fn run(&self, ctx: &Context) -> Result<()> {
        crate::rt::sleep(TTL / 3).await;
        let s = self.status(ctx).await;
        self.note(format!("run:{s}"));
        if let Some(wait) = self.evict_and_wait {
            let _ = self.registry.deregister(ctx.service(), ctx.instance()).await;
            let s = self.status(ctx).await;
            self.note(format!("evicted:{s}"));
            crate::rt::sleep(wait).await;
            let s = self.status(ctx).await;
            self.note(format!("after_wait:{s}"));
        }
        Ok(())
    }

    async fn on_stop(&self, ctx: &Context) -> Result<()> {
        let s = self.status(ctx).await;
        self.note(format!("on_stop:{s}"));
        Ok(())
    }
}

/// A health server that records start and stop, and readiness at stop.
#[derive(Debug)]
struct ProbeServer {
    log: Log,
    health: Mutex<Option<Health>>,
}

#[async_trait]
impl HealthServer for ProbeServer {
    async fn start(&self, health: Health) -> Result<Option<SocketAddr>> {
        self.log
            .lock()
            .push(format!("health_start:serving={}", health.is_serving()));
        *self.health.lock() = Some(health);
        Ok(None)
    }

    async fn stop(&self) -> Result<()> {
        let serving = self.health.lock().as_ref().is_some_and(|h| h.is_serving());
        self.log.lock().push(format!("health_stop:serving={serving}"));
        Ok(())
    }
}

struct Setup {
    service: ServiceName,
    log: Log,
    lifecycle: Lifecycle,
    probe: Probe,
}

fn setup(
    registry: Arc<dyn RegistryStore>,
    gate_store: Arc<dyn RegistryStore>,
    tune: impl FnOnce(LifecycleBuilder) -> LifecycleBuilder,
) -> Setup {
    let log: Log = Default::default();
    let service = ServiceName::new(unique("svc")).expect("valid");
    let builder = Lifecycle::builder(&service, "inst-1")
        .expect("valid names")
        .registry(gate_store)
        .health_server(Arc::new(ProbeServer {
            log: log.clone(),
            health: Mutex::new(None),
        }))
        .jitter(Duration::ZERO)
        .handle_signals(false)
        .ttl(TTL)
        .op_timeout(Duration::from_secs(2));
    let probe = Probe {
        log: log.clone(),
        registry,
        fail_start: false,
        evict_and_wait: None,
    };
    Setup {
        service,
        log,
        lifecycle: tune(builder).build(),
        probe,
    }
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().clone()
}

/// Run every lifecycle case with `registry`; `down` must be a registry of
/// the same kind whose store does not answer.
pub async fn run(registry: Arc<dyn RegistryStore>, down: Arc<dyn RegistryStore>) -> Report {
    let mut r = Report::default();
    r.case("boot_and_shutdown_order", boot_order(registry.clone()))
        .await;
    r.case(
        "hard_fail_gate_when_store_required",
        hard_fail(registry.clone(), down.clone()),
    )
    .await;
    r.case(
        "boots_without_store_when_not_required",
        not_required(registry.clone(), down),
    )
    .await;
    r.case(
        "failed_on_start_registers_nothing",
        failed_start(registry.clone()),
    )
    .await;
    r.case("reregisters_after_entry_vanishes", reregisters(registry.clone()))
        .await;
    r.case("shutdown_handle_stops_run", shutdown_handle(registry.clone()))
        .await;
    r.case(
        "shutdown_withdraws_before_run_drains",
        withdraws_first(registry.clone()),
    )
    .await;
    r.case("run_ignoring_shutdown_is_abandoned", abandoned(registry))
        .await;
    r
}

async fn boot_order(registry: Arc<dyn RegistryStore>) -> CaseResult {
    let s = setup(registry.clone(), registry, |b| b);
    s.lifecycle.run(&s.probe).await.step("lifecycle run")?;
    let log = entries(&s.log);
    let want = [
        "on_start:absent",
        "health_start:serving=false",
        "run:running",
        "health_stop:serving=false",
        "on_stop:absent",
    ];
    ensure!(log == want, "hooks ran as {log:?}, expected {want:?}");
    Ok(())
}

async fn hard_fail(registry: Arc<dyn RegistryStore>, down: Arc<dyn RegistryStore>) -> CaseResult {
    let s = setup(registry, down, |b| b.store_required(true));
    let out = s.lifecycle.run(&s.probe).await;
    ensure!(
        matches!(&out, Err(e) if e.kind() == ErrorKind::Unavailable || e.kind() == ErrorKind::Timeout),
        "boot with the required store down returned {out:?}"
    );
    let log = entries(&s.log);
    ensure!(log.is_empty(), "hooks ran although the gate failed: {log:?}");
    ensure!(
        s.lifecycle.run_process(&s.probe).await == std::process::ExitCode::from(1),
        "process helper did not exit 1"
    );
    Ok(())
}

async fn not_required(registry: Arc<dyn RegistryStore>, down: Arc<dyn RegistryStore>) -> CaseResult {
    let s = setup(registry, down, |b| b.store_required(false));
    s.lifecycle.run(&s.probe).await.step("lifecycle run")?;
    let log = entries(&s.log);
    ensure!(
        log.first().is_some_and(|l| l.starts_with("on_start")) && log.iter().any(|l| l.starts_with("run:")),
        "did not boot past the gate: {log:?}"
    );
    Ok(())
}

async fn failed_start(registry: Arc<dyn RegistryStore>) -> CaseResult {
    let mut s = setup(registry.clone(), registry.clone(), |b| b);
    s.probe.fail_start = true;
    let out = s.lifecycle.run(&s.probe).await;
    ensure!(
        matches!(&out, Err(e) if e.kind() == ErrorKind::InvalidInput),
        "failed on_start returned {out:?}"
    );
    let log = entries(&s.log);
    ensure!(log == ["on_start:absent"], "after a failed on_start: {log:?}");
    let listed = registry.list(Some(&s.service)).await.step("list")?;
    ensure!(
        listed.is_empty(),
        "registered although on_start failed: {listed:?}"
    );
    Ok(())
}

async fn reregisters(registry: Arc<dyn RegistryStore>) -> CaseResult {
    let mut s = setup(registry.clone(), registry, |b| b);
    // Two heartbeat intervals (TTL / 3 each) after the eviction, plus slack.
    s.probe.evict_and_wait = Some(TTL);
    s.lifecycle.run(&s.probe).await.step("lifecycle run")?;
    let log = entries(&s.log);
    ensure!(
        log.contains(&"evicted:absent".to_string()),
        "eviction did not take: {log:?}"
    );
    ensure!(
        log.contains(&"after_wait:running".to_string()),
        "not registered again after the entry vanished: {log:?}"
    );
    ensure!(
        log.last().is_some_and(|l| l == "on_stop:absent"),
        "not deregistered before on_stop: {log:?}"
    );
    Ok(())
}

struct WaitsForShutdown(Log);

#[async_trait]
impl Service for WaitsForShutdown {
    async fn on_start(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> Result<()> {
        self.0.lock().push("run".into());
        ctx.stopped().await;
        self.0.lock().push("run_returned".into());
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> Result<()> {
        self.0.lock().push("on_stop".into());
        Ok(())
    }
}

async fn shutdown_handle(registry: Arc<dyn RegistryStore>) -> CaseResult {
    let s = setup(registry.clone(), registry.clone(), |b| b);
    let svc = WaitsForShutdown(s.log.clone());
    let stop = s.lifecycle.shutdown_handle();
    let trigger = async {
        crate::rt::sleep(TTL / 2).await;
        let alive = registry.list(None).await.map(|l| {
            l.iter()
                .any(|i| i.id == InstanceId::new("inst-1").expect("valid") && i.status == Status::Running)
        });
        stop.trigger();
        alive
    };
    let (out, alive) = futures_util::future::join(s.lifecycle.run(&svc), trigger).await;
    out.step("lifecycle run")?;
    ensure!(
        alive.step("list")?,
        "instance not listed as running while run waited"
    );
    let log = entries(&s.log);
    let want = [
        "health_start:serving=false",
        "run",
        "run_returned",
        "health_stop:serving=false",
        "on_stop",
    ];
    ensure!(log == want, "shutdown by handle ran {log:?}, expected {want:?}");
    Ok(())
}

/// A service that takes `DRAIN` to finish after shutdown was asked.
struct Drains(Log);

const DRAIN: Duration = Duration::from_millis(500);
/// How soon after the trigger the instance must be out of rotation: half
/// the drain, with room for a loaded machine or a remote store.
const WITHDRAW_WITHIN: Duration = Duration::from_millis(250);

#[async_trait]
impl Service for Drains {
    async fn on_start(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> Result<()> {
        ctx.stopped().await;
        crate::rt::sleep(DRAIN).await;
        self.0.lock().push("run_returned".into());
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> Result<()> {
        self.0.lock().push("on_stop".into());
        Ok(())
    }
}

async fn withdraws_first(registry: Arc<dyn RegistryStore>) -> CaseResult {
    let s = setup(registry.clone(), registry.clone(), |b| b);
    let svc = Drains(s.log.clone());
    let stop = s.lifecycle.shutdown_handle();
    let health = s.lifecycle.health().clone();
    let listed = || async {
        let list = registry.list(Some(&s.service)).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(!list.is_empty())
    };
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(health.is_serving() && listed().await?) {
            ensure!(Instant::now() < deadline, "never served and registered");
            crate::rt::sleep(Duration::from_millis(5)).await;
        }
        let triggered = Instant::now();
        stop.trigger();
        let (mut not_ready, mut gone) = (None, None);
        while not_ready.is_none() || gone.is_none() {
            ensure!(
                triggered.elapsed() < DRAIN,
                "still in rotation {:?} after the trigger: ready={}, registered={}",
                triggered.elapsed(),
                not_ready.is_none(),
                gone.is_none()
            );
            if not_ready.is_none() && !health.is_serving() {
                not_ready = Some(triggered.elapsed());
            }
            if gone.is_none() && !listed().await? {
                gone = Some(triggered.elapsed());
            }
            crate::rt::sleep(Duration::from_millis(2)).await;
        }
        s.log.lock().push("withdrawn".into());
        Ok::<_, String>((not_ready.unwrap_or_default(), gone.unwrap_or_default()))
    };
    let (out, watched) = futures_util::future::join(s.lifecycle.run(&svc), watch).await;
    out.step("lifecycle run")?;
    let (not_ready, gone) = watched?;
    ensure!(
        not_ready <= WITHDRAW_WITHIN && gone <= WITHDRAW_WITHIN,
        "not ready after {not_ready:?}, deregistered after {gone:?}; both due within {WITHDRAW_WITHIN:?}"
    );
    let log = entries(&s.log);
    let want = [
        "health_start:serving=false",
        "withdrawn",
        "run_returned",
        "health_stop:serving=false",
        "on_stop",
    ];
    ensure!(log == want, "shutdown ran {log:?}, expected {want:?}");
    Ok(())
}

struct Stubborn;

#[async_trait]
impl Service for Stubborn {
    async fn on_start(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> Result<()> {
        ctx.shutdown().trigger();
        std::future::pending().await
    }
    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
}

async fn abandoned(registry: Arc<dyn RegistryStore>) -> CaseResult {
    let s = setup(registry.clone(), registry, |b| {
        b.shutdown_timeout(Duration::from_millis(200))
    });
    let out = crate::rt::timeout(Duration::from_secs(10), s.lifecycle.run(&Stubborn)).await;
    ensure!(
        matches!(&out, Ok(Err(e)) if e.kind() == ErrorKind::Timeout),
        "a run that ignores shutdown gave {out:?}"
    );
    Ok(())
}
