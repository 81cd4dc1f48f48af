//! The lifecycle's side of fleet control: the state `quiet` and `restart`
//! act on, and the executor the control daemon hands accepted commands to.

use super::{heartbeat::Announced, Context, Service, Shutdown};
use crate::{
    consumer::Pause,
    control::{
        daemon::{Execute, Executed},
        reason, Command, Op, Outcome, QUIET_STATUS,
    },
    health::{ComponentStatus, Health},
    ErrorKind, Status,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

/// Per-run state of one lifecycle that control commands change.
#[derive(Debug, Default)]
pub(crate) struct Controls {
    pause: Pause,
    quiet: AtomicBool,
    restart: AtomicBool,
    /// This run's boot id and start time (ms since the Unix epoch).
    boot: Mutex<(String, u64)>,
}

impl Controls {
    /// A new run begins: a fresh boot id, not quiet, no restart asked.
    pub(super) fn begin(&self) -> u64 {
        let now = crate::clock::unix_ms();
        *self.boot.lock() = (crate::control::random_id(), now);
        self.restart.store(false, Ordering::SeqCst);
        self.quiet.store(false, Ordering::SeqCst);
        self.pause.resume();
        now
    }

    pub(super) fn pause(&self) -> &Pause {
        &self.pause
    }

    pub(super) fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::SeqCst)
    }

    pub(super) fn restart_requested(&self) -> bool {
        self.restart.load(Ordering::SeqCst)
    }

    pub(super) fn boot_id(&self) -> String {
        self.boot.lock().0.clone()
    }
}

/// Runs accepted commands against one running service.
pub(super) struct Executor<'a> {
    pub(super) service: &'a dyn Service,
    pub(super) ctx: &'a Context,
    pub(super) controls: &'a Controls,
    pub(super) announced: Option<Arc<Announced>>,
    pub(super) health: &'a Health,
    pub(super) shutdown: &'a Shutdown,
}

impl Executor<'_> {
    async fn set_quiet(&self, quiet: bool) -> Executed {
        let (name, id) = (self.ctx.service(), self.ctx.instance());
        if quiet {
            self.controls.pause.pause();
        } else {
            self.controls.pause.resume();
        }
        self.controls.quiet.store(quiet, Ordering::SeqCst);
        let event = if quiet { "service_quiet" } else { "service_resumed" };
        tracing::info!(event, name = %name, id = %id);
        let status = if quiet {
            Status::Other(QUIET_STATUS.into())
        } else {
            Status::Running
        };
        // Best effort, as every registry write after boot: the heartbeat
        // loop re-registers with this status whenever it registers again.
        let registry = match &self.announced {
            None => "none".to_owned(),
            Some(a) => match a.set_status(status).await {
                Ok(()) => "updated".to_owned(),
                Err(e) => {
                    tracing::warn!(event = "service_status_update_failed", name = %name, id = %id, error = %e);
                    format!("update failed: {e}")
                }
            },
        };
        Executed::new(Outcome::Done(serde_json::json!({
            "quiet": quiet,
            "registry": registry,
        })))
    }

    async fn state(&self) -> serde_json::Value {
        let report = self.health.report().await;
        let (boot_id, booted_at_ms) = self.controls.boot.lock().clone();
        serde_json::json!({
            "ready": report.status == ComponentStatus::Ok,
            "quiet": self.controls.is_quiet(),
            "stopping": self.shutdown.is_triggered(),
            "boot_id": boot_id,
            "booted_at_ms": booted_at_ms,
            "uptime_ms": crate::clock::duration_ms(self.ctx.uptime()),
            "pid": std::process::id(),
            "host": gethostname::gethostname().to_string_lossy(),
        })
    }
}

#[async_trait]
impl Execute for Executor<'_> {
    async fn execute(&self, command: &Command) -> Executed {
        match &command.op {
            Op::Restart => {
                self.controls.restart.store(true, Ordering::SeqCst);
                tracing::info!(event = "service_restart_requested", name = %self.ctx.service(), id = %self.ctx.instance(), command = %command.id);
                Executed {
                    outcome: Outcome::Done(serde_json::json!({
                        "restarting": true,
                        "boot_id": self.controls.boot_id(),
                    })),
                    then_shutdown: true,
                }
            }
            Op::Quiet => self.set_quiet(true).await,
            Op::Resume => self.set_quiet(false).await,
            Op::Ping => Executed::new(Outcome::Done(self.state().await)),
            Op::App(name) => Executed::new(match self.service.on_command(self.ctx, command).await {
                Ok(result) => Outcome::Done(result),
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    Outcome::Ignored(format!("{}: {e}", reason::UNSUPPORTED))
                }
                Err(e) => {
                    tracing::warn!(event = "service_command_failed", command = %name, error = %e);
                    Outcome::Failed(e.to_string())
                }
            }),
        }
    }

    fn shutdown(&self) {
        self.shutdown.trigger();
    }
}
