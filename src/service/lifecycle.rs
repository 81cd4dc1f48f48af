use super::{
    control::{Controls, Executor},
    heartbeat::{self, Announced},
    Context, Service, Shutdown, EXIT_RESTART,
};
use crate::{
    consumer::Pause,
    control::{daemon::Daemon, ControlConfig, ControlCounts, ControlStats},
    error::{Error, ErrorKind, Result},
    health::{Health, HealthCheck},
    rt::{self, TaskHandle},
    EventBus, HealthServer, Instance, InstanceId, LivenessStore, RegistryStore, ServiceName, Status,
};
use futures_util::future::{join, join3, join_all, select, BoxFuture, Either};
use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

/// Bounds of the background loops' periods: a zero period would spin, and
/// one of years would overflow the timer's deadline.
const MIN_PERIOD: Duration = Duration::from_millis(10);
const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

/// Drives a [`Service`] through boot and graceful shutdown.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # async_io::block_on(async {
/// use fleetwire::{memory::MemoryRegistry, service::{Context, Lifecycle, Service}, Result};
/// use std::sync::Arc;
///
/// struct Hello;
/// #[fleetwire::async_trait]
/// impl Service for Hello {
///     async fn on_start(&self, _: &Context) -> Result<()> { Ok(()) }
///     async fn run(&self, ctx: &Context) -> Result<()> {
///         ctx.shutdown().trigger(); // a real service would `ctx.stopped().await`
///         Ok(())
///     }
///     async fn on_stop(&self, _: &Context) -> Result<()> { Ok(()) }
/// }
///
/// let lifecycle = Lifecycle::builder("hello", "hello-1")?
///     .registry(Arc::new(MemoryRegistry::new()))
///     .jitter(std::time::Duration::ZERO)
///     .handle_signals(false)
///     .build();
/// lifecycle.run(&Hello).await?;
/// # Ok::<(), fleetwire::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Lifecycle {
    service: ServiceName,
    instance: InstanceId,
    registry: Option<Arc<dyn RegistryStore>>,
    bus: Option<Arc<dyn EventBus>>,
    liveness: Option<Arc<dyn LivenessStore>>,
    health_server: Option<Arc<dyn HealthServer>>,
    health: Health,
    shutdown: Shutdown,
    metadata: Vec<(String, serde_json::Value)>,
    jitter: Duration,
    store_required: bool,
    ttl: Duration,
    heartbeat_every: Option<Duration>,
    health_heartbeat_every: Duration,
    op_timeout: Duration,
    shutdown_timeout: Duration,
    handle_signals: bool,
    control: Option<ControlConfig>,
    control_from_env: bool,
    /// Why the control configuration from the environment is unusable; boot fails with it.
    control_error: Option<String>,
    controls: Arc<Controls>,
    control_stats: Arc<ControlStats>,
}

/// Configures a [`Lifecycle`]; every setting has a documented default.
#[derive(Debug)]
pub struct LifecycleBuilder(Lifecycle);

impl LifecycleBuilder {
    /// The registry to announce this instance in (default: none, nothing
    /// registered). Checked by the boot gate and by readiness.
    pub fn registry(mut self, registry: Arc<dyn RegistryStore>) -> Self {
        self.0.registry = Some(registry);
        self
    }

    /// The bus to publish `system.{service}.health` heartbeats on (default:
    /// none). Checked by the boot gate and by readiness.
    pub fn bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.0.bus = Some(bus);
        self
    }

    /// A liveness store in which this instance id is touched with the
    /// registry TTL on every registry heartbeat, and forgotten at shutdown
    /// (default: none). Checked by the boot gate when it reports
    /// [`available`](LivenessStore::available); not by readiness, since its
    /// callers fall back when it is down.
    pub fn liveness(mut self, liveness: Arc<dyn LivenessStore>) -> Self {
        self.0.liveness = Some(liveness);
        self
    }

    /// The health server, started last in boot and stopped once `run` has
    /// returned, so probes see "not ready" while it drains (default: none).
    pub fn health_server(mut self, server: Arc<dyn HealthServer>) -> Self {
        self.0.health_server = Some(server);
        self
    }

    /// Share this health state (default: a new one, with a ping of the
    /// registry and of the bus as checks).
    pub fn health(mut self, health: Health) -> Self {
        self.0.health = health;
        self
    }

    /// Extra metadata registered with the instance.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.0.metadata.push((key.into(), value.into()));
        self
    }

    /// Upper bound of the random boot delay that de-synchronises replicas (default 2 s; zero in tests).
    pub fn jitter(mut self, max: Duration) -> Self {
        self.0.jitter = max;
        self
    }

    /// Fail boot when a configured store does not answer its ping (default
    /// true); when false, log and boot anyway.
    pub fn store_required(mut self, required: bool) -> Self {
        self.0.store_required = required;
        self
    }

    /// Registry TTL (default 15 s, the reference design's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.0.ttl = ttl;
        self
    }

    /// Registry heartbeat interval (default TTL / 3; kept between 10 ms and a year).
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.0.heartbeat_every = Some(every);
        self
    }

    /// Topic health heartbeat interval (default 30 s; kept between 10 ms and a year).
    pub fn health_heartbeat_every(mut self, every: Duration) -> Self {
        self.0.health_heartbeat_every = every;
        self
    }

    /// Time limit of each store call the lifecycle makes (default 5 s).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.0.op_timeout = timeout;
        self
    }

    /// Time `run` gets to drain once shutdown began, and `on_stop` to
    /// finish (default 10 s each).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.0.shutdown_timeout = timeout;
        self
    }

    /// Shut down on SIGTERM / SIGINT (default true). The handlers are
    /// installed before the first boot step, so a signal at any point of
    /// boot ends it cleanly.
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.0.handle_signals = handle;
        self
    }

    /// Run the [fleet control](crate::control) daemon with this
    /// configuration (default: with the key in `SG_CONTROL_KEY` when it is
    /// set, else no daemon). It needs a [`bus`](Self::bus); without one it
    /// is off, with a warning at boot.
    pub fn control(mut self, config: ControlConfig) -> Self {
        self.0.control = Some(config);
        self
    }

    /// Run no control daemon, whatever `SG_CONTROL_KEY` says.
    pub fn without_control(mut self) -> Self {
        self.0.control = None;
        self.0.control_from_env = false;
        self
    }

    /// Finish configuring. Reads `SG_CONTROL_KEY` unless a control
    /// configuration was given or refused; a key there too short makes boot
    /// fail, naming it.
    pub fn build(mut self) -> Lifecycle {
        if self.0.control.is_none() && self.0.control_from_env {
            match ControlConfig::from_env() {
                Ok(config) => self.0.control = config,
                Err(e) => self.0.control_error = Some(e.to_string()),
            }
        }
        if self.0.control.is_some() {
            let controls = self.0.controls.clone();
            self.0.health.add_check(HealthCheck::new("quiet", move || {
                let quiet = controls.is_quiet();
                async move {
                    match quiet {
                        true => Err(Error::unavailable("the instance is quiet (control command)")),
                        false => Ok(()),
                    }
                }
            }));
        }
        let op_timeout = self.0.op_timeout;
        for store in self.0.stores().into_iter().filter(Store::checks_readiness) {
            self.0.health.add_check(HealthCheck::new(store.name(), move || {
                let store = store.clone();
                async move { store.ping(op_timeout).await }
            }));
        }
        self.0
    }
}

/// A store the lifecycle depends on, pinged by the boot gate and readiness.
#[derive(Clone)]
enum Store {
    Registry(Arc<dyn RegistryStore>),
    Bus(Arc<dyn EventBus>),
    Liveness(Arc<dyn LivenessStore>, InstanceId),
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Registry(_) => "registry",
            Store::Bus(_) => "bus",
            Store::Liveness(..) => "liveness",
        }
    }

    fn checks_readiness(&self) -> bool {
        !matches!(self, Store::Liveness(..))
    }

    async fn ping(&self, limit: Duration) -> Result<()> {
        let ping = async {
            match self {
                Store::Registry(r) => r.ping().await,
                Store::Bus(b) => b.ping().await,
                // The contract has no ping; a one-id read is a round trip that changes nothing.
                Store::Liveness(l, id) => l.is_alive_batch(std::slice::from_ref(id)).await.map(drop),
            }
        };
        rt::timeout(limit, ping).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("{} ping got no answer within {limit:?}", self.name()),
            ))
        })
    }
}

/// The background loops boot started; stopped at the start of the drain.
struct Loops {
    stop: Shutdown,
    announced: Option<Arc<Announced>>,
    registry: Option<TaskHandle<()>>,
    liveness: Option<TaskHandle<()>>,
    health: Option<TaskHandle<()>>,
}

/// What `run` did, for the shutdown log.
enum Ended {
    Returned(Result<()>),
    Abandoned,
}

impl Lifecycle {
    /// A lifecycle for `service`/`instance` with default settings.
    pub fn builder(service: impl AsRef<str>, instance: impl AsRef<str>) -> Result<LifecycleBuilder> {
        Ok(LifecycleBuilder(Lifecycle {
            service: ServiceName::new(service)?,
            instance: InstanceId::new(instance)?,
            registry: None,
            bus: None,
            liveness: None,
            health_server: None,
            health: Health::default(),
            shutdown: Shutdown::default(),
            metadata: Vec::new(),
            jitter: Duration::from_secs(2),
            store_required: true,
            ttl: Duration::from_secs(15),
            heartbeat_every: None,
            health_heartbeat_every: Duration::from_secs(30),
            op_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            handle_signals: true,
            control: None,
            control_from_env: true,
            control_error: None,
            controls: Default::default(),
            control_stats: Default::default(),
        }))
    }

    /// The switch that stops this lifecycle; clone it to stop from elsewhere.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The health state the server reports.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The pause switch `quiet` / `resume` flip (also [`Context::pause`]).
    pub fn pause(&self) -> &Pause {
        self.controls.pause()
    }

    /// Whether the instance is quiet now.
    pub fn is_quiet(&self) -> bool {
        self.controls.is_quiet()
    }

    /// Whether a `restart` control command ended the last run: the process
    /// should exit with [`EXIT_RESTART`] (as [`run_process`](Self::run_process) does).
    pub fn restart_requested(&self) -> bool {
        self.controls.restart_requested()
    }

    /// The configuration the control daemon runs with (it also needs a
    /// bus); `None` when no daemon will run.
    pub fn control_config(&self) -> Option<&ControlConfig> {
        self.control.as_ref()
    }

    /// Counters of the control daemon (all zero when none runs).
    pub fn control_counts(&self) -> ControlCounts {
        self.control_stats.snapshot()
    }

    /// Boot, run `service` until it returns or shutdown is asked, then shut
    /// down. A boot failure is returned before anything was registered; a
    /// shutdown asked during boot ends it with `Ok` and nothing registered;
    /// `run`'s own error is returned after a full shutdown.
    ///
    /// Shutdown first takes the instance out of rotation (not ready, out of
    /// the registry), then lets `run` drain, then stops the health server
    /// and calls `on_stop`.
    ///
    /// # Cancel safety
    /// Prefer [`Shutdown::trigger`](super::Shutdown::trigger), which drains. Dropped, the background loops stop with it and the registry entry is left to expire with its TTL (not deregistered at once).
    pub async fn run(&self, service: &dyn Service) -> Result<()> {
        // `select` polls its first future first: the signal handlers are in
        // place before the first boot step, so no signal finds the default
        // action (which would kill the process with nothing deregistered).
        let signals = pin!(self.watch_signals());
        match select(signals, pin!(self.phases(service))).await {
            Either::Left((never, _)) => match never {},
            Either::Right((out, _)) => out,
        }
    }

    /// [`run`](Self::run) for a process's `main`: exit code 0 after a clean
    /// shutdown (also when asked during boot), 1 when boot failed (the
    /// hard-fail gate, `on_start`) or `run` failed, and [`EXIT_RESTART`]
    /// (75) after a `restart` control command, however `run` ended.
    ///
    /// # Cancel safety
    /// As for [`run`](Self::run).
    pub async fn run_process(&self, service: &dyn Service) -> std::process::ExitCode {
        let out = self.run(service).await;
        if self.restart_requested() {
            if let Err(e) = &out {
                tracing::error!(event = "service_exit_failure", name = %self.service, error = %e);
            }
            tracing::info!(event = "service_exit_restart", name = %self.service, code = EXIT_RESTART);
            return std::process::ExitCode::from(EXIT_RESTART);
        }
        match out {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(event = "service_exit_failure", name = %self.service, error = %e);
                eprintln!("{}: {e}", self.service);
                std::process::ExitCode::from(1)
            }
        }
    }

    async fn phases(&self, service: &dyn Service) -> Result<()> {
        let Some((ctx, mut loops, daemon)) = self.boot(service).await? else {
            return Ok(());
        };
        // The daemon runs beside `run` in this task (it calls the service's
        // hook, which is borrowed); `drain` waits for it to stop first.
        let daemon_done = Shutdown::default();
        let announced = loops.announced.clone();
        let control = async {
            if let Some(mut daemon) = daemon {
                let exec = Executor {
                    service,
                    ctx: &ctx,
                    controls: &self.controls,
                    announced,
                    health: &self.health,
                    shutdown: &self.shutdown,
                };
                daemon.run(&exec, self.shutdown.wait()).await;
                daemon_done.trigger();
                daemon.leave().await;
            }
            daemon_done.trigger();
        };
        let main = async {
            let mut run = service.run(&ctx);
            let returned = self.serve(&mut run).await;
            let ended = self.drain(&mut loops, run, returned, &daemon_done).await;
            self.stop(service, &ctx, ended).await
        };
        join(control, main).await.1
    }

    /// Trigger shutdown on the first SIGTERM / SIGINT; never resolves.
    async fn watch_signals(&self) -> Infallible {
        if self.handle_signals {
            match rt::shutdown_signal().await {
                Ok(signal) => {
                    tracing::info!(event = "service_signal_received", signal);
                    self.shutdown.trigger();
                }
                // Keep running: stopping at once would be worse than only
                // stopping by handle.
                Err(e) => tracing::error!(event = "service_signal_handler_failed", error = %e),
            }
        }
        std::future::pending().await
    }

    /// `fut`, unless shutdown is asked first (then `None`, and `fut` is dropped).
    async fn until_shutdown<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        match select(pin!(self.shutdown.wait()), pin!(fut)).await {
            Either::Left(_) => None,
            Either::Right((out, _)) => Some(out),
        }
    }

    /// Boot: jitter → store gate → `on_start` → register and start the
    /// loops → control group → health server. `None` when shutdown was asked
    /// before `on_start` completed: nothing was registered and `on_stop` is not due.
    async fn boot(&self, service: &dyn Service) -> Result<Option<(Context, Loops, Option<Daemon>)>> {
        let (name, id) = (&self.service, &self.instance);
        let started = Instant::now();
        let boot_ms = self.controls.begin();
        if let Some(why) = &self.control_error {
            tracing::error!(event = "service_control_misconfigured", name = %name, error = %why);
            return Err(Error::invalid(format!("boot of `{name}` aborted: {why}")));
        }
        tracing::info!(event = "service_boot_started", name = %name, id = %id);
        let interrupted = |phase: &'static str| {
            tracing::info!(event = "service_boot_interrupted", name = %name, id = %id, phase);
            self.health.set_stopping();
            Ok(None)
        };

        if self.until_shutdown(self.jitter_sleep()).await.is_none() {
            return interrupted("jitter");
        }
        match self.until_shutdown(self.gate()).await {
            None => return interrupted("store_gate"),
            Some(gate) => gate?,
        }
        let ctx = Context {
            service: name.clone(),
            instance: id.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.clone(),
            started,
            controls: self.controls.clone(),
        };
        match self.until_shutdown(service.on_start(&ctx)).await {
            None => return interrupted("on_start"),
            Some(Err(e)) => {
                tracing::error!(event = "service_start_failed", name = %name, error = %e);
                return Err(e);
            }
            Some(Ok(())) => {}
        }

        let loops = self.announce(started).await;
        let daemon = self.control_daemon(boot_ms).await;
        if let Some(server) = &self.health_server {
            match server.start(self.health.clone()).await {
                Ok(Some(addr)) => tracing::info!(event = "health_server_started", %addr),
                Ok(None) => {}
                Err(e) => tracing::error!(event = "health_server_failed", error = %e),
            }
        }
        self.health.set_booted(true);
        tracing::info!(event = "service_boot_completed", name = %name, id = %id, boot_ms = millis(started.elapsed()));
        Ok(Some((ctx, loops, daemon)))
    }

    /// Phase 8.5 of the reference: the control daemon's group, created right
    /// after registration so commands are kept from here on; it reads once
    /// boot is done. `None` without a key or a bus.
    async fn control_daemon(&self, boot_ms: u64) -> Option<Daemon> {
        let config = self.control.clone()?;
        let (name, id) = (&self.service, &self.instance);
        let Some(bus) = self.bus.clone() else {
            tracing::warn!(event = "service_control_disabled", name = %name, id = %id, reason = "a control key is set but no bus");
            return None;
        };
        let daemon = match Daemon::new(
            bus,
            config,
            name.clone(),
            id.clone(),
            boot_ms,
            self.op_timeout,
            self.control_stats.clone(),
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(event = "service_control_disabled", name = %name, id = %id, error = %e);
                return None;
            }
        };
        // A failure here is retried by the daemon, which recreates a missing group.
        if let Err(e) = daemon.subscribe().await {
            tracing::error!(event = "control_group_create_failed", name = %name, id = %id, error = %e);
        }
        Some(daemon)
    }

    async fn jitter_sleep(&self) {
        if self.jitter.is_zero() {
            return;
        }
        let max_ms = millis(self.jitter);
        let sleep = Duration::from_millis(fastrand::u64(..=max_ms));
        tracing::info!(event = "service_boot_jitter", sleep_ms = millis(sleep));
        rt::sleep(sleep).await;
    }

    fn stores(&self) -> Vec<Store> {
        let registry = self.registry.clone().map(Store::Registry);
        let bus = self.bus.clone().map(Store::Bus);
        let liveness = self
            .liveness
            .clone()
            .map(|l| Store::Liveness(l, self.instance.clone()));
        registry.into_iter().chain(bus).chain(liveness).collect()
    }

    /// The hard-fail gate: ping every configured store at once; with
    /// `store_required`, any failure aborts boot, naming the stores.
    async fn gate(&self) -> Result<()> {
        let stores: Vec<Store> = self.stores();
        let pings = join_all(stores.iter().map(|s| s.ping(self.op_timeout))).await;
        let mut failed: Vec<(&'static str, Error)> = stores
            .iter()
            .zip(pings)
            .filter_map(|(s, r)| r.err().map(|e| (s, e)))
            // A liveness store that stores nothing (no-op) answers with a
            // permanent "unavailable": that is its contract, not an outage.
            // `available()` alone cannot tell: a Redis store down at boot reports false too.
            .filter(|(s, e)| match s {
                Store::Liveness(l, _) => l.available() || e.is_temporary(),
                _ => true,
            })
            .map(|(s, e)| (s.name(), e))
            .collect();
        if failed.is_empty() {
            if !stores.is_empty() {
                tracing::info!(event = "store_connection_verified", stores = stores.len());
            }
            return Ok(());
        }
        let name = &self.service;
        if !self.store_required {
            for (store, e) in &failed {
                tracing::warn!(event = "store_connection_failed", store, error = %e, "store not required, booting anyway");
            }
            return Ok(());
        }
        for (store, e) in &failed {
            tracing::error!(event = "hard_fail_gate_triggered", name = %name, store, error = %e, "store is required but unavailable");
        }
        let names = failed
            .iter()
            .map(|(s, _)| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let (_, first) = failed.swap_remove(0);
        let what = if failed.is_empty() {
            format!("the required store {names} is unavailable")
        } else {
            format!("the required stores {names} are unavailable")
        };
        Err(Error::new(first.kind(), format!("boot of `{name}` aborted: {what}")).with_source(first))
    }

    fn instance_as(&self, status: Status) -> Instance {
        let mut i = Instance::new(self.service.clone(), self.instance.clone(), status);
        i.metadata.extend(self.metadata.iter().cloned());
        i
    }

    /// Register as `starting` and start the heartbeat loops.
    async fn announce(&self, started: Instant) -> Loops {
        let (name, id) = (&self.service, &self.instance);
        let mut loops = Loops {
            stop: Shutdown::default(),
            announced: None,
            registry: None,
            liveness: None,
            health: None,
        };
        let period = self
            .heartbeat_every
            .unwrap_or(self.ttl / 3)
            .clamp(MIN_PERIOD, MAX_PERIOD);
        if let Some(registry) = &self.registry {
            let starting = self.instance_as(Status::Starting);
            match rt::timeout(self.op_timeout, registry.register(&starting, self.ttl)).await {
                Ok(Ok(())) => {
                    tracing::info!(event = "service_registered", name = %name, id = %id, status = "starting")
                }
                Ok(Err(e)) => {
                    tracing::error!(event = "service_registration_failed", name = %name, id = %id, error = %e)
                }
                Err(_) => {
                    tracing::error!(event = "service_registration_failed", name = %name, id = %id, error = "timeout")
                }
            }
            let mut running = self.instance_as(Status::Running).with_this_process();
            running.started_at_ms = Some(crate::clock::unix_ms().saturating_sub(millis(started.elapsed())));
            let announced = Arc::new(Announced::new(
                registry.clone(),
                running,
                self.ttl,
                self.op_timeout,
            ));
            loops.announced = Some(announced.clone());
            loops.registry = Some(rt::spawn(heartbeat::registry_loop(
                announced,
                period,
                loops.stop.clone(),
            )));
        }
        // Started even when the store looks down now: it may come back, and
        // touching a no-op store costs nothing.
        if let Some(liveness) = self.liveness.as_ref() {
            loops.liveness = Some(rt::spawn(heartbeat::liveness_loop(
                liveness.clone(),
                id.clone(),
                self.ttl,
                period,
                self.op_timeout,
                loops.stop.clone(),
            )));
        }
        if let (Some(bus), Some(topic)) = (&self.bus, heartbeat::health_topic(name.as_str())) {
            loops.health = Some(rt::spawn(heartbeat::health_loop(
                bus.clone(),
                topic,
                name.to_string(),
                id.to_string(),
                self.health_heartbeat_every.clamp(MIN_PERIOD, MAX_PERIOD),
                loops.stop.clone(),
            )));
        }
        loops
    }

    /// Serve: `run` works until it returns by itself (`Some`) or shutdown is asked (`None`).
    async fn serve(&self, run: &mut BoxFuture<'_, Result<()>>) -> Option<Result<()>> {
        match select(run, pin!(self.shutdown.wait())).await {
            Either::Left((out, _)) => Some(out),
            Either::Right(_) => None,
        }
    }

    /// Drain: leave the fleet at once while `run` finishes, which gets
    /// `shutdown_timeout` from here.
    async fn drain(
        &self,
        loops: &mut Loops,
        run: BoxFuture<'_, Result<()>>,
        returned: Option<Result<()>>,
        daemon_done: &Shutdown,
    ) -> Ended {
        tracing::info!(event = "service_shutdown_started", name = %self.service, id = %self.instance);
        self.shutdown.trigger();
        self.health.set_stopping();
        // The control daemon stops first, so no command acts mid-teardown.
        if rt::timeout(self.op_timeout, daemon_done.wait()).await.is_err() {
            tracing::warn!(event = "control_daemon_stop_timeout", name = %self.service, id = %self.instance);
        }
        let withdraw = self.withdraw(loops);
        match returned {
            Some(out) => {
                withdraw.await;
                Ended::Returned(out)
            }
            None => {
                let finish = async {
                    match rt::timeout(self.shutdown_timeout, run).await {
                        Ok(out) => Ended::Returned(out),
                        Err(_) => Ended::Abandoned,
                    }
                };
                join(withdraw, finish).await.1
            }
        }
    }

    /// Take the instance out of rotation: not ready, loops stopped, out of
    /// the registry and the liveness store.
    async fn withdraw(&self, loops: &mut Loops) {
        let (name, id) = (&self.service, &self.instance);
        self.health.set_stopping();
        loops.stop.trigger();
        let (registry_loop, liveness_loop, health_loop) =
            (loops.registry.take(), loops.liveness.take(), loops.health.take());
        // Each loop stops at its next await; wait for it before deleting
        // what it writes, so no heartbeat lands after the deregistration.
        let deregister = async {
            if let Some(task) = registry_loop {
                let _ = rt::timeout(self.op_timeout, task.join()).await;
            }
            let Some(registry) = &self.registry else {
                return;
            };
            match rt::timeout(self.op_timeout, registry.deregister(name, id)).await {
                Ok(Ok(())) => tracing::info!(event = "service_deregistered", name = %name, id = %id),
                Ok(Err(e)) => {
                    tracing::error!(event = "service_deregistration_failed", name = %name, id = %id, error = %e)
                }
                Err(_) => {
                    tracing::error!(event = "service_deregistration_failed", name = %name, id = %id, error = "timeout")
                }
            }
        };
        let forget = async {
            let Some(task) = liveness_loop else {
                return;
            };
            let _ = rt::timeout(self.op_timeout, task.join()).await;
            if let Some(liveness) = &self.liveness {
                match rt::timeout(self.op_timeout, liveness.forget(id)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(event = "liveness_forget_failed", id = %id, error = %e),
                    Err(_) => tracing::warn!(event = "liveness_forget_failed", id = %id, error = "timeout"),
                }
            }
        };
        let health = async {
            if let Some(task) = health_loop {
                let _ = rt::timeout(self.op_timeout, task.join()).await;
            }
        };
        join3(deregister, forget, health).await;
    }

    /// Stop: the health server, then `on_stop`; the result of `run`.
    async fn stop(&self, service: &dyn Service, ctx: &Context, ended: Ended) -> Result<()> {
        let name = &self.service;
        if let Some(server) = &self.health_server {
            if let Err(e) = server.stop().await {
                tracing::warn!(event = "health_server_stop_failed", error = %e);
            }
        }
        match rt::timeout(self.shutdown_timeout, service.on_stop(ctx)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(event = "service_stop_failed", name = %name, error = %e),
            Err(_) => tracing::error!(event = "service_stop_failed", name = %name, error = "timeout"),
        }
        tracing::info!(event = "service_shutdown_completed", name = %name, id = %self.instance);
        match ended {
            Ended::Returned(r) => r,
            Ended::Abandoned => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "`{name}` did not return from run within {:?} of shutdown",
                    self.shutdown_timeout
                ),
            )),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::memory::{MemoryBus, MemoryLiveness, MemoryRegistry};
    use parking_lot::Mutex;

    /// Records its hooks; `run` returns at once, `on_start` takes `start_for`.
    #[derive(Default)]
    struct Hooks {
        log: Mutex<Vec<&'static str>>,
        start_for: Duration,
        alive_in_run: Mutex<Option<bool>>,
        liveness: Option<Arc<MemoryLiveness>>,
    }

    #[async_trait::async_trait]
    impl Service for Hooks {
        async fn on_start(&self, _: &Context) -> Result<()> {
            self.log.lock().push("on_start");
            rt::sleep(self.start_for).await;
            self.log.lock().push("on_start_done");
            Ok(())
        }
        async fn run(&self, ctx: &Context) -> Result<()> {
            self.log.lock().push("run");
            if let Some(l) = &self.liveness {
                // The touch loop runs beside `run`: give its first touch a moment.
                let mut alive = false;
                for _ in 0..100 {
                    alive = l.is_alive_batch(std::slice::from_ref(ctx.instance())).await?[0];
                    if alive {
                        break;
                    }
                    rt::sleep(Duration::from_millis(10)).await;
                }
                *self.alive_in_run.lock() = Some(alive);
            }
            Ok(())
        }
        async fn on_stop(&self, _: &Context) -> Result<()> {
            self.log.lock().push("on_stop");
            Ok(())
        }
    }

    fn builder() -> LifecycleBuilder {
        Lifecycle::builder("gate", "gate-1")
            .unwrap()
            .jitter(Duration::ZERO)
            .handle_signals(false)
            .op_timeout(Duration::from_millis(500))
    }

    fn down_registry() -> Arc<MemoryRegistry> {
        let r = MemoryRegistry::new();
        r.set_available(false);
        Arc::new(r)
    }

    fn down_bus() -> Arc<MemoryBus> {
        let b = MemoryBus::new();
        b.set_available(false);
        Arc::new(b)
    }

    fn gate_error(lifecycle: Lifecycle) -> (Error, Vec<&'static str>) {
        let hooks = Hooks::default();
        let out = async_io::block_on(lifecycle.run(&hooks));
        let log = hooks.log.lock().clone();
        (out.expect_err("the gate should fail"), log)
    }

    #[test]
    fn gate_pings_the_bus_and_names_it() {
        let lifecycle = builder()
            .registry(Arc::new(MemoryRegistry::new()))
            .bus(down_bus())
            .build();
        let (e, hooks) = gate_error(lifecycle);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let msg = e.to_string();
        assert!(msg.contains("store `bus` is unavailable"), "{msg}");
        assert!(!msg.contains("`registry`"), "{msg}");
        assert!(hooks.is_empty(), "hooks ran: {hooks:?}");
    }

    #[test]
    fn gate_pings_the_liveness_store_and_names_it() {
        let liveness = MemoryLiveness::new();
        liveness.set_available(false);
        let lifecycle = builder().liveness(Arc::new(liveness)).build();
        let msg = gate_error(lifecycle).0.to_string();
        assert!(msg.contains("store `liveness` is unavailable"), "{msg}");
    }

    #[test]
    fn gate_names_every_store_down() {
        let lifecycle = builder().registry(down_registry()).bus(down_bus()).build();
        let msg = gate_error(lifecycle).0.to_string();
        assert!(msg.contains("stores `registry`, `bus` are unavailable"), "{msg}");
    }

    #[test]
    fn a_store_down_is_logged_and_skipped_when_not_required() {
        let lifecycle = builder().bus(down_bus()).store_required(false).build();
        let hooks = Hooks::default();
        async_io::block_on(lifecycle.run(&hooks)).unwrap();
        assert_eq!(*hooks.log.lock(), ["on_start", "on_start_done", "run", "on_stop"]);
    }

    #[test]
    fn readiness_checks_registry_and_bus_not_liveness() {
        let lifecycle = builder()
            .registry(Arc::new(MemoryRegistry::new()))
            .bus(Arc::new(MemoryBus::new()))
            .liveness(Arc::new(MemoryLiveness::new()))
            .build();
        let report = async_io::block_on(lifecycle.health().report());
        let names: Vec<_> = report.components.keys().map(String::as_str).collect();
        assert_eq!(names, ["bus", "registry"]);
    }

    #[test]
    fn liveness_is_touched_while_running_and_forgotten_at_shutdown() {
        let liveness = Arc::new(MemoryLiveness::new());
        let lifecycle = builder()
            .liveness(liveness.clone())
            .heartbeat_every(Duration::from_millis(10))
            .build();
        let hooks = Hooks {
            liveness: Some(liveness.clone()),
            ..Default::default()
        };
        async_io::block_on(lifecycle.run(&hooks)).unwrap();
        let id = InstanceId::new("gate-1").unwrap();
        let after = async_io::block_on(liveness.is_alive_batch(&[id])).unwrap();
        assert_eq!(*hooks.alive_in_run.lock(), Some(true));
        assert_eq!(after, [false], "not forgotten at shutdown");
    }

    #[test]
    fn shutdown_during_on_start_ends_boot_with_nothing_registered() {
        let registry = Arc::new(MemoryRegistry::new());
        let lifecycle = builder().registry(registry.clone()).build();
        let hooks = Hooks {
            start_for: Duration::from_secs(30),
            ..Default::default()
        };
        let stop = lifecycle.shutdown_handle();
        let started = Instant::now();
        async_io::block_on(async {
            let trigger = async {
                rt::sleep(Duration::from_millis(50)).await;
                stop.trigger();
            };
            let (out, ()) = join(lifecycle.run(&hooks), trigger).await;
            out.unwrap();
        });
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            *hooks.log.lock(),
            ["on_start"],
            "on_start dropped, no run, no on_stop"
        );
        assert!(async_io::block_on(registry.list(None)).unwrap().is_empty());
        assert!(!lifecycle.health().is_serving());
    }
}
