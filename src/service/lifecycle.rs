use super::{heartbeat, Context, Service, Shutdown};
use crate::{
    error::{Error, ErrorKind, Result},
    health::{Health, HealthCheck},
    rt, EventBus, HealthServer, Instance, InstanceId, RegistryStore, ServiceName, Status,
};
use futures_util::future::{select, Either};
use std::{
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

/// Drives a [`Service`] through boot and graceful shutdown.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # async_io::block_on(async {
/// use fleetwire::{memory::MemoryRegistry, service::{Context, Lifecycle, Service}, Result};
/// use std::sync::Arc;
///
/// struct Hello;
/// #[async_trait::async_trait]
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
}

/// Configures a [`Lifecycle`]; every setting has a documented default.
#[derive(Debug)]
pub struct LifecycleBuilder(Lifecycle);

impl LifecycleBuilder {
    /// The registry to announce this instance in (default: none, nothing registered).
    pub fn registry(mut self, registry: Arc<dyn RegistryStore>) -> Self {
        self.0.registry = Some(registry);
        self
    }

    /// The bus to publish `system.{service}.health` heartbeats on (default: none).
    pub fn bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.0.bus = Some(bus);
        self
    }

    /// The health server, started last in boot and stopped first in shutdown (default: none).
    pub fn health_server(mut self, server: Arc<dyn HealthServer>) -> Self {
        self.0.health_server = Some(server);
        self
    }

    /// Share this health state (default: a new one, with the registry ping as a check).
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

    /// Fail boot when the registry does not answer its ping (default true);
    /// when false, log and boot anyway.
    pub fn store_required(mut self, required: bool) -> Self {
        self.0.store_required = required;
        self
    }

    /// Registry TTL (default 15 s, the reference design's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.0.ttl = ttl;
        self
    }

    /// Registry heartbeat interval (default TTL / 3).
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.0.heartbeat_every = Some(every);
        self
    }

    /// Topic health heartbeat interval (default 30 s).
    pub fn health_heartbeat_every(mut self, every: Duration) -> Self {
        self.0.health_heartbeat_every = every;
        self
    }

    /// Time limit of each store call the lifecycle makes (default 5 s).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.0.op_timeout = timeout;
        self
    }

    /// Time `run` and `on_stop` each get once shutdown began (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.0.shutdown_timeout = timeout;
        self
    }

    /// Shut down on SIGTERM / SIGINT (default true).
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.0.handle_signals = handle;
        self
    }

    /// Finish configuring.
    pub fn build(self) -> Lifecycle {
        if let Some(registry) = self.0.registry.clone() {
            let op_timeout = self.0.op_timeout;
            self.0.health.add_check(HealthCheck::new("registry", move || {
                let registry = registry.clone();
                async move {
                    rt::timeout(op_timeout, registry.ping())
                        .await
                        .map_err(|_| Error::new(ErrorKind::Timeout, "registry ping timed out"))?
                }
            }));
        }
        self.0
    }
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

    fn instance(&self, status: Status) -> Instance {
        let mut i = Instance::new(self.service.clone(), self.instance.clone(), status);
        i.metadata.extend(self.metadata.iter().cloned());
        i
    }

    /// Boot, run `service` until it returns or shutdown is asked, then shut
    /// down in reverse order. A boot failure is returned before anything was
    /// registered; `run`'s own error is returned after a full shutdown.
    pub async fn run(&self, service: &dyn Service) -> Result<()> {
        let (name, id) = (&self.service, &self.instance);
        let started = Instant::now();
        tracing::info!(event = "service_boot_started", name = %name, id = %id);
        let _signals = self.handle_signals.then(|| {
            let shutdown = self.shutdown.clone();
            rt::spawn(async move {
                match rt::shutdown_signal().await {
                    Ok(signal) => tracing::info!(event = "service_signal_received", signal),
                    Err(e) => tracing::error!(event = "service_signal_handler_failed", error = %e),
                }
                shutdown.trigger();
            })
        });

        if !self.jitter.is_zero() {
            let sleep = Duration::from_millis(fastrand::u64(..=self.jitter.as_millis() as u64));
            tracing::info!(event = "service_boot_jitter", sleep_ms = sleep.as_millis() as u64);
            if let Either::Right(_) = select(pin!(rt::sleep(sleep)), pin!(self.shutdown.wait())).await {
                return Ok(());
            }
        }

        if let Some(registry) = &self.registry {
            let ping = rt::timeout(self.op_timeout, registry.ping())
                .await
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, "registry ping timed out")));
            match ping {
                Ok(()) => tracing::info!(event = "store_connection_verified"),
                Err(e) if self.store_required => {
                    tracing::error!(event = "hard_fail_gate_triggered", name = %name, error = %e, "store is required but unavailable");
                    return Err(Error::new(
                        e.kind(),
                        format!("boot of `{name}` aborted: the required store is unavailable"),
                    )
                    .with_source(e));
                }
                Err(e) => {
                    tracing::warn!(event = "store_connection_failed", error = %e, "store not required, booting anyway")
                }
            }
        }

        let ctx = Context {
            service: name.clone(),
            instance: id.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.clone(),
            started,
        };
        if let Err(e) = service.on_start(&ctx).await {
            tracing::error!(event = "service_start_failed", name = %name, error = %e);
            return Err(e);
        }

        let background = Shutdown::default();
        let mut tasks = Vec::new();
        if let Some(registry) = &self.registry {
            match rt::timeout(
                self.op_timeout,
                registry.register(&self.instance(Status::Starting), self.ttl),
            )
            .await
            {
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
            let mut running = self.instance(Status::Running).with_this_process();
            running.started_at_ms =
                Some(crate::clock::unix_ms().saturating_sub(started.elapsed().as_millis() as u64));
            let period = self
                .heartbeat_every
                .unwrap_or(self.ttl / 3)
                .max(Duration::from_millis(10));
            tasks.push(rt::spawn(heartbeat::registry_loop(
                registry.clone(),
                running,
                self.ttl,
                period,
                self.op_timeout,
                background.clone(),
            )));
        }
        if let (Some(bus), Some(topic)) = (&self.bus, heartbeat::health_topic(name.as_str())) {
            tasks.push(rt::spawn(heartbeat::health_loop(
                bus.clone(),
                topic,
                name.to_string(),
                id.to_string(),
                self.health_heartbeat_every,
                background.clone(),
            )));
        }

        if let Some(server) = &self.health_server {
            match server.start(self.health.clone()).await {
                Ok(Some(addr)) => tracing::info!(event = "health_server_started", %addr),
                Ok(None) => {}
                Err(e) => tracing::error!(event = "health_server_failed", error = %e),
            }
        }
        self.health.set_booted(true);
        tracing::info!(event = "service_boot_completed", name = %name, id = %id, boot_ms = started.elapsed().as_millis() as u64);

        let ended = {
            let run = pin!(service.run(&ctx));
            let deadline = pin!(async {
                self.shutdown.wait().await;
                rt::sleep(self.shutdown_timeout).await;
            });
            match select(run, deadline).await {
                Either::Left((r, _)) => Ended::Returned(r),
                Either::Right(_) => Ended::Abandoned,
            }
        };

        tracing::info!(event = "service_shutdown_started", name = %name, id = %id);
        self.shutdown.trigger();
        background.trigger();
        for task in tasks {
            // The loops stop at their next await; wait so none writes after deregistration.
            let _ = rt::timeout(self.op_timeout, task.join()).await;
        }
        self.health.set_stopping();
        if let Some(server) = &self.health_server {
            if let Err(e) = server.stop().await {
                tracing::warn!(event = "health_server_stop_failed", error = %e);
            }
        }
        if let Some(registry) = &self.registry {
            match rt::timeout(self.op_timeout, registry.deregister(name, id)).await {
                Ok(Ok(())) => tracing::info!(event = "service_deregistered", name = %name, id = %id),
                Ok(Err(e)) => {
                    tracing::error!(event = "service_deregistration_failed", name = %name, id = %id, error = %e)
                }
                Err(_) => {
                    tracing::error!(event = "service_deregistration_failed", name = %name, id = %id, error = "timeout")
                }
            }
        }
        match rt::timeout(self.shutdown_timeout, service.on_stop(&ctx)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(event = "service_stop_failed", name = %name, error = %e),
            Err(_) => tracing::error!(event = "service_stop_failed", name = %name, error = "timeout"),
        }
        tracing::info!(event = "service_shutdown_completed", name = %name, id = %id);
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

    /// [`run`](Self::run) for a process's `main`: exit code 0 after a clean
    /// shutdown, 1 when boot failed (the hard-fail gate) or `run` failed.
    pub async fn run_process(&self, service: &dyn Service) -> std::process::ExitCode {
        match self.run(service).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(event = "service_exit_failure", name = %self.service, error = %e);
                eprintln!("{}: {e}", self.service);
                std::process::ExitCode::from(1)
            }
        }
    }
}
