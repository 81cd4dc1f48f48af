//! Background loops: the registry heartbeat, the liveness touch and the
//! topic health heartbeat.

use super::Shutdown;
use crate::{
    name::{Topic, TopicPattern},
    rt, Envelope, EventBus, Instance, InstanceId, LivenessStore, RegistryStore,
};
use futures_util::future::{select, Either};
use std::{pin::pin, sync::Arc, time::Duration};

/// Wait for the next tick; `false` when `stop` came first.
async fn tick_or_stop(interval: &mut rt::Interval, stop: &Shutdown) -> bool {
    let wait = pin!(interval.tick());
    let stopped = pin!(stop.wait());
    matches!(select(wait, stopped).await, Either::Left(_))
}

/// Keep `running` registered: re-register in full on the first tick and
/// whenever a heartbeat finds the entry gone or fails.
pub(super) async fn registry_loop(
    registry: Arc<dyn RegistryStore>,
    running: Instance,
    ttl: Duration,
    period: Duration,
    op_timeout: Duration,
    stop: Shutdown,
) {
    let (s, i) = (running.service.clone(), running.id.clone());
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
        match rt::timeout(op_timeout, registry.register(&running, ttl)).await {
            Ok(Ok(())) => {
                if !registered {
                    tracing::info!(event = "service_registered", name = %s, id = %i, status = %running.status);
                }
                registered = true;
            }
            Ok(Err(e)) => {
                registered = false;
                tracing::error!(event = "service_registration_failed", name = %s, id = %i, error = %e);
            }
            Err(_) => {
                registered = false;
                tracing::error!(event = "service_registration_failed", name = %s, id = %i, error = "timeout");
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
