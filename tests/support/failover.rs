//! The load the Sentinel and Cluster failover tests run while they kill a
//! primary: a consumer runner recording each message's sequence number, and
//! a lifecycle keeping instance `b-1` of `billing` registered.

use super::Idle;
use fleetwire::{
    consumer::{HandlerResult, Runner, RunnerCounts},
    redis::{RedisBackend, RedisRegistry},
    service::{Lifecycle, Shutdown},
    ConsumerName, EventBus, GroupName, RegistryStore, ServiceName, StreamName,
};
use parking_lot::Mutex;
use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;

/// How often the lifecycle heartbeats (its TTL is 2 s).
pub const HEARTBEAT: Duration = Duration::from_millis(500);

pub struct Load {
    pub redis: RedisBackend,
    pub bus: Arc<dyn EventBus>,
    /// The sequence numbers (envelope kinds) the runner handled.
    pub consumed: Arc<Mutex<BTreeSet<u64>>>,
    stop: Shutdown,
    consuming: JoinHandle<fleetwire::Result<RunnerCounts>>,
    lifecycle: Arc<Lifecycle>,
    living: JoinHandle<fleetwire::Result<()>>,
}

impl Load {
    /// A backend on `url` (500 ms timeouts; `publish_replicas(1, 500ms)`
    /// when `durable`), a runner consuming `stream` as group `billing`, and
    /// the lifecycle; returns once the instance is listed and the runner
    /// has had time to create its group.
    pub async fn start(url: String, durable: bool, stream: &StreamName) -> Self {
        let mut b = RedisBackend::builder()
            .url(url)
            .response_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500));
        if durable {
            b = b.publish_replicas(1, Duration::from_millis(500));
        }
        let redis = b.build().expect("backend");
        let bus: Arc<dyn EventBus> = Arc::new(redis.bus());
        let consumed = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
        let runner = {
            let consumed = consumed.clone();
            Runner::builder(
                bus.clone(),
                stream.clone(),
                GroupName::new("billing").unwrap(),
                ConsumerName::new("w1").unwrap(),
            )
            .concurrency(64)
            .store_retry(Duration::from_millis(20), Duration::from_millis(200))
            // A read whose reply died with the primary leaves its entries
            // pending, unseen: the reaper hands them out again after the lease.
            .lease(Duration::from_secs(2))
            .reaper(Duration::from_millis(500), 1_000)
            .handler(move |d: fleetwire::Delivery| {
                let consumed = consumed.clone();
                async move {
                    let seq: u64 = d.envelope()?.kind.parse().unwrap_or(u64::MAX);
                    consumed.lock().insert(seq);
                    HandlerResult::Ok(())
                }
            })
            .build()
            .expect("runner")
        };
        let stop = Shutdown::default();
        let consuming = tokio::spawn({
            let (runner, stop) = (runner.clone(), stop.clone());
            async move { runner.run(stop.wait()).await }
        });
        let lifecycle = Arc::new(
            Lifecycle::builder("billing", "b-1")
                .unwrap()
                .registry(Arc::new(redis.registry()))
                .jitter(Duration::ZERO)
                .ttl(Duration::from_secs(2))
                .heartbeat_every(HEARTBEAT)
                .op_timeout(Duration::from_millis(400))
                .handle_signals(false)
                .without_control()
                .build(),
        );
        let living = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.run(&Idle).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listed(&redis.registry()).await {
            assert!(Instant::now() < deadline, "the lifecycle did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Consumed while publishing: the runner must have the group first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self {
            redis,
            bus,
            consumed,
            stop,
            consuming,
            lifecycle,
            living,
        }
    }

    /// From just after a kill: when the instance is listed again.
    pub fn watch_relisting(&self) -> JoinHandle<Instant> {
        let registry = self.redis.registry();
        tokio::spawn(async move {
            // Skip the moment of the kill, when the old entry may still be read.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while !listed(&registry).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Instant::now()
        })
    }

    /// Stop the runner and the lifecycle; the runner's counts.
    pub async fn stop(self) -> RunnerCounts {
        self.stop.trigger();
        self.lifecycle.shutdown_handle().trigger();
        let counts = self
            .consuming
            .await
            .unwrap()
            .expect("the runner ended without error");
        let _ = self.living.await;
        counts
    }
}

/// Whether `b-1` of `billing` is listed.
pub async fn listed(registry: &RedisRegistry) -> bool {
    let service = ServiceName::new("billing").unwrap();
    registry
        .list(Some(&service))
        .await
        .is_ok_and(|l| l.iter().any(|i| i.id.as_str() == "b-1"))
}
