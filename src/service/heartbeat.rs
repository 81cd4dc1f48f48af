//! Background loops: the registry heartbeat, the liveness touch and the
//! topic health heartbeat.

use super::Shutdown;
use crate::{
    error::{Error, ErrorKind, Result},
    name::{Topic, TopicPattern},
    rt, Envelope, EventBus, Instance, InstanceId, LivenessStore, RegistryStore, Status,
};
use futures_util::future::{select, Either};
use std::{pin::pin, sync::Arc, time::Duration};

/// Wait for the next tick; `false` when `stop` came first.
async fn tick_or_stop(interval: &mut rt::Interval, stop: &Shutdown) -> bool {
    let wait = pin!(interval.tick());
    let stopped = pin!(stop.wait());
    matches!(select(wait, stopped).await, Either::Left(_))
}

/// The instance as announced in the registry: the heartbeat loop and the
/// control daemon (`quiet` / `resume`) both write it, one at a time, so a
/// status change is never overwritten by an older full registration.
#[derive(Debug)]
pub(crate) struct Announced {
    instance: futures_util::lock::Mutex<Instance>,
    registry: Arc<dyn RegistryStore>,
    ttl: Duration,
    op_timeout: Duration,
}

impl Announced {
    pub(super) fn new(
        registry: Arc<dyn RegistryStore>,
        instance: Instance,
        ttl: Duration,
        op_timeout: Duration,
    ) -> Self {
        Self {
            instance: futures_util::lock::Mutex::new(instance),
            registry,
            ttl,
            op_timeout,
        }
    }

    async fn write(&self, instance: &Instance) -> Result<()> {
        match rt::timeout(self.op_timeout, self.registry.register(instance, self.ttl)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "register `{}`/`{}`: no answer within {:?}",
                    instance.service, instance.id, self.op_timeout
                ),
            )),
        }
    }

    /// Register the instance in full, as it stands.
    pub(super) async fn register(&self) -> Result<()> {
        let instance = self.instance.lock().await;
        self.write(&instance).await
    }

    /// Change the status and register it at once; later registrations keep it.
    pub(super) async fn set_status(&self, status: Status) -> Result<()> {
        let mut instance = self.instance.lock().await;
        instance.status = status;
        self.write(&instance).await
    }
}

/// Keep the announced instance registered: re-register in full on the
/// first tick and whenever a heartbeat finds the entry gone or fails.
pub(super) async fn registry_loop(announced: Arc<Announced>, period: Duration, stop: Shutdown) {
    let (registry, ttl, op_timeout) = (&announced.registry, announced.ttl, announced.op_timeout);
    let (s, i) = {
        let instance = announced.instance.lock().await;
        (instance.service.clone(), instance.id.clone())
    };
    let mut registered = false;
    let mut interval = rt::Interval::new(period);
    loop {
        if registered {
            match rt::timeout(op_timeout, registry.heartbeat(&s, &i, ttl)).await {
                Ok(Ok(true)) => {
                    if !tick_or_stop(&mut interval, &stop).await {
                        return;
                    }
                    continue;
                }
                Ok(Ok(false)) => tracing::warn!(event = "service_registration_lost", name = %s, id = %i),
                Ok(Err(e)) => {
                    tracing::warn!(event = "service_heartbeat_failed", name = %s, id = %i, error = %e)
                }
                Err(_) => {
                    tracing::warn!(event = "service_heartbeat_failed", name = %s, id = %i, error = "timeout")
                }
            }
        }
        match announced.register().await {
            Ok(()) => {
                if !registered {
                    let status = announced.instance.lock().await.status.clone();
                    tracing::info!(event = "service_registered", name = %s, id = %i, status = %status);
                }
                registered = true;
            }
            Err(e) => {
                registered = false;
                tracing::error!(event = "service_registration_failed", name = %s, id = %i, error = %e);
            }
        }
        if !tick_or_stop(&mut interval, &stop).await {
            return;
        }
    }
}

/// Keep `id` alive in the liveness store: touch it with `ttl` every `period`.
/// Failures are logged at debug: callers of a liveness store fall back to
/// their authority when it is down, so its outage is not this process's.
pub(super) async fn liveness_loop(
    liveness: Arc<dyn LivenessStore>,
    id: InstanceId,
    ttl: Duration,
    period: Duration,
    op_timeout: Duration,
    stop: Shutdown,
) {
    let mut interval = rt::Interval::new(period);
    loop {
        match rt::timeout(op_timeout, liveness.touch(&id, ttl)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(event = "liveness_touch_failed", id = %id, error = %e),
            Err(_) => tracing::debug!(event = "liveness_touch_failed", id = %id, error = "timeout"),
        }
        if !tick_or_stop(&mut interval, &stop).await {
            return;
        }
    }
}

/// The topic a service's health heartbeat goes to: `system.{service}.health`.
pub(crate) fn health_topic(service: &str) -> Option<Topic> {
    Topic::new(format!("system.{service}.health")).ok()
}

/// The pattern the fleet monitor subscribes to.
pub(crate) fn health_pattern() -> TopicPattern {
    TopicPattern::new("system.*.health").expect("a valid pattern")
}

/// Publish `{worker, ts, uptime_s, instance}` on `system.{service}.health` every `period`.
pub(super) async fn health_loop(
    bus: Arc<dyn EventBus>,
    topic: Topic,
    worker: String,
    instance: String,
    period: Duration,
    stop: Shutdown,
) {
    let started = std::time::Instant::now();
    let mut interval = rt::Interval::new(period);
    loop {
        let payload = serde_json::json!({
            "worker": worker,
            "ts": crate::clock::unix_ms() as f64 / 1000.0,
            "uptime_s": started.elapsed().as_secs(),
            "instance": instance,
        });
        let sent = match Envelope::new("system.health").with_payload(&payload) {
            Ok(env) => bus.publish_topic(&topic, &env).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(event = "health_heartbeat_failed", topic = %topic, error = %e);
        }
        if !tick_or_stop(&mut interval, &stop).await {
            return;
        }
    }
}
