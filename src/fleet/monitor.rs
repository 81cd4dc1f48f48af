//! The fleet view: aggregates `system.{worker}.health` heartbeats into
//! `ok` / `stale` / `unknown` over an allow-list of known workers.
//!
//! The allow-list is deliberate: a heartbeat with an unknown name is
//! ignored, so no publisher can inject a row into the operators' table.

use crate::{
    clock::{self, SharedClock},
    error::Result,
    rt::{self, TaskHandle},
    EventBus, RegistryStore, TopicEvent, TopicPattern,
};
use futures_util::StreamExt;
use parking_lot::RwLock;
use serde::Serialize;
use std::{collections::HashMap, sync::Arc, time::Duration};

type Payload = serde_json::Map<String, serde_json::Value>;

/// State of one known worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Heard from within the ok window (3 heartbeat intervals).
    Ok,
    /// Heard from before, silent since.
    Stale,
    /// Never heard from.
    Unknown,
}

/// One row of the fleet table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Worker name.
    pub name: String,
    /// Its state.
    pub status: WorkerState,
    /// Time of its last heartbeat, seconds since the Unix epoch.
    pub last_heartbeat_ts: Option<f64>,
    /// Seconds since that heartbeat.
    pub seconds_since: Option<f64>,
    /// What the worker published besides `worker` and `ts`.
    pub extra: Payload,
}

/// Last-seen aggregator of worker heartbeats.
#[derive(Debug)]
pub struct FleetMonitor {
    known: Vec<String>,
    ok_window_s: f64,
    clock: SharedClock,
    seen: RwLock<HashMap<String, (f64, Payload)>>,
}

/// The running subscription of a [`FleetMonitor`]; dropping it stops it.
#[derive(Debug)]
pub struct MonitorTask {
    _task: TaskHandle<()>,
}

impl FleetMonitor {
    /// A monitor of `known` workers that heartbeat every `interval`.
    pub fn new(known: impl IntoIterator<Item = impl Into<String>>, interval: Duration) -> Self {
        Self::with_clock(known, interval, clock::system())
    }

    /// The same, reading time from `clock`.
    pub fn with_clock(
        known: impl IntoIterator<Item = impl Into<String>>,
        interval: Duration,
        clock: SharedClock,
    ) -> Self {
        Self {
            known: known.into_iter().map(Into::into).collect(),
            ok_window_s: interval.as_secs_f64() * 3.0,
            clock,
            seen: Default::default(),
        }
    }

    fn now_s(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    /// Record a heartbeat of `worker` at `ts` (seconds); `false` when the
    /// name is not on the allow-list and was ignored.
    pub fn record(&self, worker: &str, ts: f64, payload: Payload) -> bool {
        if !self.known.iter().any(|k| k == worker) {
            tracing::debug!(event = "heartbeat_from_unknown_worker", worker);
            return false;
        }
        // A hostile or broken `ts` (NaN, far future) must not pin a worker to `ok`.
        let now = self.now_s();
        let ts = if ts.is_finite() && ts <= now + 60.0 {
            ts
        } else {
            now
        };
        self.seen.write().insert(worker.to_owned(), (ts, payload));
        true
    }

    /// Record a `system.{worker}.health` event; other topics are ignored.
    pub fn on_event(&self, event: &TopicEvent) -> bool {
        let mut tokens = event.topic.as_str().split('.');
        let (Some("system"), Some(worker), Some("health"), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return false;
        };
        let payload: Payload = event.envelope.payload_as().unwrap_or_default();
        let ts = payload
            .get("ts")
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| self.now_s());
        self.record(worker, ts, payload)
    }

    /// Mark every service with an alive instance in `registry` as heard from now.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads the registry; the table is updated once the listing is back.
    pub async fn refresh_from_registry(&self, registry: &dyn RegistryStore) -> Result<()> {
        let now = self.now_s();
        let mut by_service: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
        for i in registry.list(None).await? {
            by_service
                .entry(i.service.to_string())
                .or_default()
                .push(i.id.to_string().into());
        }
        for (service, ids) in by_service {
            let mut payload = Payload::new();
            payload.insert("instances".into(), ids.into());
            self.record(&service, now, payload);
        }
        Ok(())
    }

    /// The table: one row per known worker, in allow-list order.
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        let now = self.now_s();
        let seen = self.seen.read();
        self.known
            .iter()
            .map(|name| match seen.get(name) {
                None => WorkerStatus {
                    name: name.clone(),
                    status: WorkerState::Unknown,
                    last_heartbeat_ts: None,
                    seconds_since: None,
                    extra: Payload::new(),
                },
                Some((ts, payload)) => {
                    let since = (now - ts).max(0.0);
                    let mut extra = payload.clone();
                    extra.remove("worker");
                    extra.remove("ts");
                    WorkerStatus {
                        name: name.clone(),
                        status: if since < self.ok_window_s {
                            WorkerState::Ok
                        } else {
                            WorkerState::Stale
                        },
                        last_heartbeat_ts: Some(*ts),
                        seconds_since: Some(since),
                        extra,
                    }
                }
            })
            .collect()
    }

    /// Subscribe to `system.*.health` and `system.bus.health` on `bus` and
    /// keep recording until the returned task is dropped. When a
    /// subscription ends (its connection dropped), it subscribes again.
    ///
    /// # Cancel safety
    /// Safe to drop: a subscription not yet returned is closed with the future; nothing runs until it returns.
    pub async fn start(self: &Arc<Self>, bus: Arc<dyn EventBus>) -> Result<MonitorTask> {
        // The first subscription is made before returning, so no heartbeat
        // published after `start` is missed.
        let first = subscribe_health(bus.as_ref()).await?;
        let me = self.clone();
        let task = rt::spawn(async move {
            let mut events = Some(first);
            loop {
                if let Some(mut stream) = events.take() {
                    while let Some(ev) = stream.next().await {
                        me.on_event(&ev);
                    }
                    tracing::warn!(event = "fleet_monitor_subscription_ended", "subscribing again");
                }
                rt::sleep(Duration::from_secs(1)).await;
                match subscribe_health(bus.as_ref()).await {
                    Ok(stream) => events = Some(stream),
                    Err(e) => tracing::warn!(event = "fleet_monitor_subscribe_failed", error = %e),
                }
            }
        });
        Ok(MonitorTask { _task: task })
    }
}

impl crate::health::FleetView for FleetMonitor {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(FleetMonitor::snapshot(self)).unwrap_or_default()
    }
}

type HealthEvents = futures_util::stream::Select<crate::Subscription, crate::Subscription>;

async fn subscribe_health(bus: &dyn EventBus) -> Result<HealthEvents> {
    let workers = bus.subscribe(&crate::service::health_pattern()).await?;
    let bus_own = bus.subscribe(&TopicPattern::new("system.bus.health")?).await?;
    Ok(futures_util::stream::select(workers, bus_own))
}
