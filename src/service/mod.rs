//! The service lifecycle: one boot and shutdown path for every process,
//! whichever backends it runs on.
//!
//! Signal handlers first, then boot: jitter → store ping gate (every
//! configured store) → [`Service::on_start`] → register as `starting` →
//! heartbeat loops (first tick re-registers as `running`; a missing entry is
//! registered again) → health server → [`Service::run`].
//!
//! Shutdown, on SIGTERM / SIGINT, [`Shutdown::trigger`] or when `run`
//! returns: at once health not ready, loops stopped, deregistered; then
//! `run` drains (up to the shutdown timeout); then the health server stops
//! and [`Service::on_stop`] runs. A shutdown asked during boot ends it at
//! once with nothing registered. Registry failures after boot are logged,
//! never fatal.
//!
//! With a control key (the builder's [`control`](LifecycleBuilder::control)
//! or `SG_CONTROL_KEY`) and a bus, the [fleet control](crate::control)
//! daemon joins in: its group is created right after registration, it runs
//! beside [`Service::run`] and is the first thing stopped at shutdown.
//! `restart` shuts down and makes [`Lifecycle::run_process`] exit with
//! [`EXIT_RESTART`]; `quiet` pauses [`Context::pause`], turns readiness 503
//! and shows `quiet` in the registry, `resume` undoes it; application
//! commands go to [`Service::on_command`].

mod control;
mod heartbeat;
mod lifecycle;

pub(crate) use heartbeat::health_pattern;
pub use lifecycle::{Lifecycle, LifecycleBuilder};

use crate::{consumer::Pause, error::Result, health::Health, InstanceId, ServiceName};
use async_trait::async_trait;
use event_listener::Event;
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

/// What a process does; the [`Lifecycle`] calls each hook once.
#[async_trait]
pub trait Service: Send + Sync {
    /// Stand up what `run` needs; runs after the store ping gate, before
    /// registration. An error aborts boot: nothing is registered and
    /// `on_stop` is not called.
    ///
    /// # Cancel safety
    /// When shutdown is asked while it runs, its future is dropped at its
    /// current await point, boot ends with nothing registered and `on_stop`
    /// is not called: hold what it stands up in values that clean up on drop.
    async fn on_start(&self, ctx: &Context) -> Result<()>;
    /// The service's work; return when [`Context::stopped`] resolves. By
    /// then the instance is already not ready and deregistered, so no new
    /// work is routed here: finish what is in flight and return.
    async fn run(&self, ctx: &Context) -> Result<()>;
    /// Release what `on_start` and `run` stood up; runs after `run` returned
    /// (or was abandoned at the shutdown timeout) and the health server stopped.
    async fn on_stop(&self, ctx: &Context) -> Result<()>;
    /// Run an application [control command](crate::control) (`pull`, say),
    /// with its [`args`](crate::control::Command::args); the value returned
    /// is reported to the sender as `done`, an error as `failed`. Runs
    /// beside `run`, one command at a time, within the control
    /// configuration's `exec_timeout`.
    ///
    /// The default handles nothing: an
    /// [`Unsupported`](crate::ErrorKind::Unsupported) error, reported as
    /// `ignored` (`unsupported: ...`).
    ///
    /// # Cancel safety
    /// Dropped at its current await point when it runs past `exec_timeout`
    /// or shutdown begins (reported as `failed`).
    async fn on_command(
        &self,
        ctx: &Context,
        command: &crate::control::Command,
    ) -> Result<serde_json::Value> {
        let _ = ctx;
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("service has no handler for control command `{}`", command.op),
        ))
    }
}

/// The exit code of [`Lifecycle::run_process`] after a `restart` control
/// command: 75 (`EX_TEMPFAIL`, "try again"), so a supervisor that restarts
/// on failure (systemd `Restart=on-failure`, a container's restart policy)
/// starts the process again, and one can tell it from a crash (1).
pub const EXIT_RESTART: u8 = 75;

/// A one-way switch that tells every part of a process to stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(AtomicBool, Event)>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    /// Ask everything watching to stop. Idempotent.
    pub fn trigger(&self) {
        self.inner.0.store(true, Ordering::SeqCst);
        self.inner.1.notify(usize::MAX);
    }

    /// Whether `trigger` was called.
    pub fn is_triggered(&self) -> bool {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Resolves once `trigger` was called.
    pub async fn wait(&self) {
        loop {
            if self.is_triggered() {
                return;
            }
            let listener = self.inner.1.listen();
            if self.is_triggered() {
                return;
            }
            listener.await;
        }
    }
}

/// What a [`Service`] hook sees of its process.
#[derive(Debug, Clone)]
pub struct Context {
    service: ServiceName,
    instance: InstanceId,
    health: Health,
    shutdown: Shutdown,
    started: Instant,
    controls: Arc<control::Controls>,
}

impl Context {
    /// This process's service name.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// This process's instance id.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// The shared health state (add readiness checks here).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The shutdown switch of this process.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Resolves when the process is asked to stop.
    pub async fn stopped(&self) {
        self.shutdown.wait().await
    }

    /// Time since the lifecycle started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The lifecycle's pause switch, which `quiet` / `resume` flip: build
    /// consumer runners with [`pause_with`](crate::consumer::RunnerBuilder::pause_with)
    /// this, and they stop taking new work while the instance is quiet.
    pub fn pause(&self) -> &Pause {
        self.controls.pause()
    }

    /// Whether the instance is quiet (a `quiet` command, not yet resumed).
    pub fn is_quiet(&self) -> bool {
        self.controls.is_quiet()
    }
}
