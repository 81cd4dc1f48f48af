//! The conformance suites can fail: deliberately broken wrappers around the
//! in-memory backends must be caught by the case that covers the breakage.
#![cfg(all(feature = "memory", feature = "testkit"))]

use async_trait::async_trait;
use fleetwire::{
    clock::ManualClock,
    memory::{MemoryBus, MemoryLiveness, MemoryRegistry},
    testkit, Backlog, Capabilities, Claimed, ConsumerName, Delivery, Envelope, EventBus, GroupName, Instance,
    InstanceId, LivenessStore, MessageId, PendingSummary, ReadOptions, RegistryStore, Result, ServiceName,
    StartFrom, StreamInfo, StreamName, Subscription, Topic, TopicPattern,
};
use std::{sync::Arc, time::Duration};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sabotage {
    AckDoesNothing,
    ClaimIgnoresIdleTime,
    HeartbeatNeverRefreshes,
    ListShowsExpired,
    BatchDropsUnknownIds,
}

#[derive(Debug)]
struct Broken<T> {
    inner: T,
    sabotage: Sabotage,
}

#[async_trait]
impl EventBus for Broken<MemoryBus> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn max_len(&self, s: &StreamName) -> u64 {
        self.inner.max_len(s)
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn ensure_group(&self, s: &StreamName, g: &GroupName, st: StartFrom) -> Result<bool> {
        self.inner.ensure_group(s, g, st).await
    }
    async fn publish(&self, s: &StreamName, e: &Envelope) -> Result<MessageId> {
        self.inner.publish(s, e).await
    }
    async fn publish_batch(&self, s: &StreamName, e: &[Envelope]) -> Result<Vec<MessageId>> {
        self.inner.publish_batch(s, e).await
    }
    async fn read(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        o: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.inner.read(s, g, c, o).await
    }
    async fn ack(&self, s: &StreamName, g: &GroupName, ids: &[MessageId]) -> Result<u64> {
        if self.sabotage == Sabotage::AckDoesNothing {
            return Ok(ids.len() as u64);
        }
        self.inner.ack(s, g, ids).await
    }
    async fn claim(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        idle: Duration,
        n: usize,
    ) -> Result<Claimed> {
        let idle = if self.sabotage == Sabotage::ClaimIgnoresIdleTime {
            Duration::ZERO
        } else {
            idle
        };
        self.inner.claim(s, g, c, idle, n).await
    }
    async fn pending(&self, s: &StreamName, g: &GroupName) -> Result<PendingSummary> {
        self.inner.pending(s, g).await
    }
    async fn stream_info(&self, s: &StreamName) -> Result<StreamInfo> {
        self.inner.stream_info(s).await
    }
    async fn backlog(&self, s: &StreamName, g: &GroupName) -> Result<Backlog> {
        self.inner.backlog(s, g).await
    }
    async fn publish_topic(&self, t: &Topic, e: &Envelope) -> Result<()> {
        self.inner.publish_topic(t, e).await
    }
    async fn subscribe(&self, p: &TopicPattern) -> Result<Subscription> {
        self.inner.subscribe(p).await
    }
}

#[async_trait]
impl RegistryStore for Broken<(MemoryRegistry, MemoryRegistry)> {
    async fn register(&self, i: &Instance, ttl: Duration) -> Result<()> {
        // The shadow copy never expires: it is what a registry that forgot TTLs would list.
        self.inner.1.register(i, Duration::from_secs(3600)).await?;
        self.inner.0.register(i, ttl).await
    }
    async fn heartbeat(&self, s: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool> {
        if self.sabotage == Sabotage::HeartbeatNeverRefreshes {
            return Ok(true);
        }
        self.inner.0.heartbeat(s, id, ttl).await
    }
    async fn deregister(&self, s: &ServiceName, id: &InstanceId) -> Result<()> {
        self.inner.1.deregister(s, id).await?;
        self.inner.0.deregister(s, id).await
    }
    async fn list<'a>(&self, s: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        if self.sabotage == Sabotage::ListShowsExpired {
            return self.inner.1.list(s).await;
        }
        self.inner.0.list(s).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.0.ping().await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.0.capabilities()
    }
}

#[async_trait]
impl LivenessStore for Broken<MemoryLiveness> {
    fn available(&self) -> bool {
        true
    }
    async fn touch(&self, id: &InstanceId, ttl: Duration) -> Result<()> {
        self.inner.touch(id, ttl).await
    }
    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>> {
        let mut got = self.inner.is_alive_batch(ids).await?;
        if self.sabotage == Sabotage::BatchDropsUnknownIds {
            got.retain(|alive| *alive);
        }
        Ok(got)
    }
    async fn forget(&self, id: &InstanceId) -> Result<()> {
        self.inner.forget(id).await
    }
}

fn clock() -> ManualClock {
    ManualClock::new(1_700_000_000_000)
}

fn bus(c: &ManualClock, sabotage: Sabotage) -> Broken<MemoryBus> {
    Broken {
        inner: MemoryBus::builder()
            .clock(Arc::new(c.clone()))
            .max_len(200)
            .build(),
        sabotage,
    }
}

fn registry(c: &ManualClock, sabotage: Sabotage) -> Broken<(MemoryRegistry, MemoryRegistry)> {
    let shared = Arc::new(c.clone());
    Broken {
        inner: (
            MemoryRegistry::with_clock(shared.clone()),
            MemoryRegistry::with_clock(shared),
        ),
        sabotage,
    }
}

#[tokio::test]
async fn suite_catches_an_ack_that_does_nothing() {
    let c = clock();
    let report = testkit::bus::run(&bus(&c, Sabotage::AckDoesNothing), &c).await;
    assert!(report.failed("ack_removes_from_pending"), "{report}");
    assert!(report.failed("reclaim_after_idle_time"), "{report}");
    assert!(
        !report.failed("two_groups_each_see_every_entry"),
        "unrelated cases still pass:\n{report}"
    );
}

#[tokio::test]
async fn suite_catches_a_claim_that_ignores_idle_time() {
    let c = clock();
    let report = testkit::bus::run(&bus(&c, Sabotage::ClaimIgnoresIdleTime), &c).await;
    assert!(report.failed("reclaim_after_idle_time"), "{report}");
}

#[tokio::test]
async fn suite_catches_a_heartbeat_that_never_refreshes() {
    let c = clock();
    let report = testkit::registry::run(&registry(&c, Sabotage::HeartbeatNeverRefreshes), &c).await;
    assert!(report.failed("heartbeat_keeps_alive_past_ttl"), "{report}");
    assert!(report.failed("heartbeat_missing_returns_false"), "{report}");
    assert!(
        !report.failed("metadata_round_trips"),
        "unrelated cases still pass:\n{report}"
    );
}

#[tokio::test]
async fn suite_catches_a_list_that_shows_expired_entries() {
    let c = clock();
    let report = testkit::registry::run(&registry(&c, Sabotage::ListShowsExpired), &c).await;
    assert!(report.failed("expires_without_heartbeat"), "{report}");
}

#[tokio::test]
async fn suite_catches_a_batch_that_skips_ids() {
    let c = clock();
    let store = Broken {
        inner: MemoryLiveness::with_clock(Arc::new(c.clone())),
        sabotage: Sabotage::BatchDropsUnknownIds,
    };
    let report = testkit::liveness::run(&store, &c).await;
    assert!(report.failed("batch_answers_every_id_in_order"), "{report}");
    assert!(report.failed("large_batch"), "{report}");
}
