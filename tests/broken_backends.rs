//! The conformance suites can fail: deliberately broken wrappers around the
//! in-memory backends must be caught by the case that covers the breakage.
#![cfg(all(feature = "memory", feature = "testkit"))]

use async_trait::async_trait;
use fleetwire::{
    clock::ManualClock,
    memory::{MemoryBus, MemoryLiveness, MemoryRegistry},
    testkit, Backlog, Capabilities, Claimed, ConsumerName, Delivery, Envelope, EventBus, GroupName, Instance,
    InstanceId, LivenessStore, MessageId, PendingEntry, PendingSummary, ReadOptions, RegistryStore, Release,
    Result, ServiceName, StartFrom, StreamInfo, StreamName, Subscription, Topic, TopicPattern,
};
use std::{sync::Arc, time::Duration};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sabotage {
    AckDoesNothing,
    ClaimIgnoresIdleTime,
    /// Reports one delivery more than the store counted.
    ClaimOverCounts,
    /// Counts a claim twice in the store but reports it once.
    ClaimIdsCountsTwice,
    /// A blocking read keeps running after its caller gave up, like an
    /// `XREADGROUP BLOCK` left on the server, and what it gets is lost.
    AbandonedReadKeepsReading,
    ReleaseIgnoresRetryDelay,
    ReleaseCountsUnhandled,
    /// Answers which entries the consumer holds without resetting their idle time.
    RenewDoesNothing,
    /// Acks the entry without writing its record.
    DeadLetterSkipsRecord,
    DeleteConsumerAlwaysForces,
    HeartbeatNeverRefreshes,
    ListShowsExpired,
    /// Lists entries without what is left of their TTL, so a watch cannot
    /// tell an expiry from a deregistration.
    ListForgetsTtl,
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
    fn trim_policy(&self, s: &StreamName) -> fleetwire::TrimPolicy {
        self.inner.trim_policy(s)
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
        if self.sabotage == Sabotage::AbandonedReadKeepsReading && o.block.is_some() {
            let (bus, s, g, c) = (self.inner.clone(), s.clone(), g.clone(), c.clone());
            // Dropping the JoinHandle detaches the task; it reads on regardless.
            return tokio::spawn(async move { bus.read(&s, &g, &c, o).await })
                .await
                .expect("read task");
        }
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
        let mut claimed = self.inner.claim(s, g, c, idle, n).await?;
        if self.sabotage == Sabotage::ClaimOverCounts {
            for d in &mut claimed.deliveries {
                d.delivery_count += 1;
            }
        }
        Ok(claimed)
    }
    async fn claim_ids(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        idle: Duration,
        ids: &[MessageId],
    ) -> Result<Claimed> {
        let idle = if self.sabotage == Sabotage::ClaimIgnoresIdleTime {
            Duration::ZERO
        } else {
            idle
        };
        let claimed = self.inner.claim_ids(s, g, c, idle, ids).await?;
        if self.sabotage == Sabotage::ClaimIdsCountsTwice {
            let again: Vec<MessageId> = claimed.deliveries.iter().map(|d| d.id).collect();
            self.inner.claim_ids(s, g, c, Duration::ZERO, &again).await?;
        }
        Ok(claimed)
    }
    async fn ack_and_read(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        acks: &[MessageId],
        o: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        // Composed, so the ack and read sabotages reach this path too.
        self.ack(s, g, acks).await?;
        self.read(s, g, c, o).await
    }
    async fn pending_entries(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: Option<ConsumerName>,
        start: MessageId,
        n: usize,
    ) -> Result<Vec<PendingEntry>> {
        self.inner.pending_entries(s, g, c, start, n).await
    }
    async fn renew(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        if self.sabotage == Sabotage::RenewDoesNothing {
            let held = self
                .inner
                .pending_entries(s, g, Some(c.clone()), MessageId::ZERO, usize::MAX)
                .await?;
            return Ok(ids
                .iter()
                .filter(|id| held.iter().any(|p| p.id == **id))
                .copied()
                .collect());
        }
        self.inner.renew(s, g, c, ids).await
    }
    async fn release(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        ids: &[MessageId],
        how: Release,
    ) -> Result<u64> {
        let how = match (self.sabotage, how) {
            (Sabotage::ReleaseIgnoresRetryDelay, Release::RetryAfter(_))
            | (Sabotage::ReleaseCountsUnhandled, Release::Unhandled) => Release::RetryAfter(Duration::ZERO),
            _ => how,
        };
        self.inner.release(s, g, c, ids, how).await
    }
    async fn dead_letter(
        &self,
        s: &StreamName,
        g: &GroupName,
        id: MessageId,
        dead: &StreamName,
        record: &[u8],
        max_len: u64,
    ) -> Result<Option<MessageId>> {
        if self.sabotage == Sabotage::DeadLetterSkipsRecord {
            let acked = self.inner.ack(s, g, &[id]).await?;
            return Ok((acked == 1).then_some(id));
        }
        self.inner.dead_letter(s, g, id, dead, record, max_len).await
    }
    async fn range(&self, s: &StreamName, start: MessageId, n: usize) -> Result<Vec<Delivery>> {
        self.inner.range(s, start, n).await
    }
    async fn delete_entries(&self, s: &StreamName, ids: &[MessageId]) -> Result<u64> {
        self.inner.delete_entries(s, ids).await
    }
    async fn delete_group(&self, s: &StreamName, g: &GroupName) -> Result<bool> {
        self.inner.delete_group(s, g).await
    }
    async fn delete_consumer(
        &self,
        s: &StreamName,
        g: &GroupName,
        c: &ConsumerName,
        force: bool,
    ) -> Result<u64> {
        let force = force || self.sabotage == Sabotage::DeleteConsumerAlwaysForces;
        self.inner.delete_consumer(s, g, c, force).await
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
        let mut listed = self.inner.0.list(s).await?;
        if self.sabotage == Sabotage::ListForgetsTtl {
            for i in &mut listed {
                i.expires_in = None;
            }
        }
        Ok(listed)
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
            .max_len_floor(1)
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

/// Run the bus suite on a bus broken by `sabotage`: every case in `caught`
/// fails, and `unrelated` still passes.
async fn bus_suite_catches(sabotage: Sabotage, caught: &[&str], unrelated: &str) {
    let c = clock();
    let report = testkit::bus::run(&bus(&c, sabotage), &c).await;
    println!("{sabotage:?}:\n{report}");
    for case in caught {
        assert!(
            report.failed(case),
            "{sabotage:?} not caught by {case}:\n{report}"
        );
    }
    assert!(
        report.cases.iter().any(|(n, r)| *n == unrelated && r.is_ok()),
        "unrelated case {unrelated} still passes under {sabotage:?}:\n{report}"
    );
}

#[tokio::test]
async fn suite_catches_a_claim_that_over_counts() {
    bus_suite_catches(
        Sabotage::ClaimOverCounts,
        &[
            "claim_counts_are_exact_in_any_interleaving",
            "reclaim_after_idle_time",
            "release_unhandled_is_claimable_at_once_and_uncounted",
        ],
        "dead_letter_moves_and_acks_atomically",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_a_claim_counted_twice_but_reported_once() {
    bus_suite_catches(
        Sabotage::ClaimIdsCountsTwice,
        &["claim_counts_are_exact_in_any_interleaving"],
        "reclaim_after_idle_time",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_an_abandoned_read_that_keeps_reading() {
    bus_suite_catches(
        Sabotage::AbandonedReadKeepsReading,
        &["cancelled_read_strands_nothing"],
        "blocking_read_wakes_on_publish",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_a_release_that_ignores_retry_delays() {
    bus_suite_catches(
        Sabotage::ReleaseIgnoresRetryDelay,
        &["release_retry_after_waits_then_counts_once"],
        "release_unhandled_is_claimable_at_once_and_uncounted",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_a_release_that_counts_unhandled_deliveries() {
    bus_suite_catches(
        Sabotage::ReleaseCountsUnhandled,
        &["release_unhandled_is_claimable_at_once_and_uncounted"],
        "release_retry_after_waits_then_counts_once",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_a_renew_that_does_nothing() {
    bus_suite_catches(
        Sabotage::RenewDoesNothing,
        &["renew_keeps_a_lease"],
        "pending_entries_detail",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_a_dead_letter_that_writes_no_record() {
    bus_suite_catches(
        Sabotage::DeadLetterSkipsRecord,
        &["dead_letter_moves_and_acks_atomically"],
        "range_and_delete_entries",
    )
    .await;
}

#[tokio::test]
async fn suite_catches_a_consumer_deleted_while_holding_entries() {
    bus_suite_catches(
        Sabotage::DeleteConsumerAlwaysForces,
        &["delete_consumer_refused_while_holding_entries"],
        "delete_group_removes_it",
    )
    .await;
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
async fn watch_suite_catches_a_list_that_forgets_ttls() {
    let c = clock();
    let store: Arc<dyn RegistryStore> = Arc::new(registry(&c, Sabotage::ListForgetsTtl));
    let report = testkit::watch::run(&store, &c, Arc::new(c.clone()), None).await;
    assert!(report.failed("expiry_seen_within_ttl_plus_1s"), "{report}");
    assert!(
        !report.failed("deregister_seen_as_left") && !report.failed("join_seen"),
        "unrelated cases still pass:\n{report}"
    );
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

/// Run the consumer runner's suite over a bus broken by `sabotage` (system
/// clock: the runner works in real time): every case in `caught` fails, and
/// `unrelated` still passes. The suite catches a broken runner because the
/// runner only acts through these primitives.
async fn consumer_suite_catches(sabotage: Sabotage, caught: &[&str], unrelated: &str) {
    let broken: Arc<dyn EventBus> = Arc::new(Broken {
        inner: MemoryBus::new(),
        sabotage,
    });
    let report = testkit::consumer::run(broken).await;
    println!("{sabotage:?} under the runner:\n{report}");
    for case in caught {
        assert!(
            report.failed(case),
            "{sabotage:?} not caught by {case}:\n{report}"
        );
    }
    assert!(
        report.cases.iter().any(|(n, r)| *n == unrelated && r.is_ok()),
        "unrelated case {unrelated} still passes under {sabotage:?}:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_suite_catches_a_runner_whose_leases_are_not_kept() {
    consumer_suite_catches(
        Sabotage::RenewDoesNothing,
        &["slow_handler_is_not_stolen"],
        "concurrency_one_keeps_stream_order",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_suite_catches_a_runner_that_retries_too_early() {
    consumer_suite_catches(
        Sabotage::ReleaseIgnoresRetryDelay,
        &[
            "retry_delay_longer_than_the_lease_is_honoured",
            "failure_is_retried_with_backoff_then_acked",
        ],
        "concurrency_one_keeps_stream_order",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_suite_catches_a_runner_that_loses_dead_letters() {
    consumer_suite_catches(
        Sabotage::DeadLetterSkipsRecord,
        &["poison_is_dead_lettered_with_reason_and_redrive_brings_it_back"],
        "twenty_runners_handle_each_entry_once",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_suite_catches_a_runner_that_never_acks() {
    consumer_suite_catches(
        Sabotage::AckDoesNothing,
        &["twenty_runners_handle_each_entry_once"],
        "concurrency_one_keeps_stream_order",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_suite_catches_a_runner_that_takes_over_live_work() {
    consumer_suite_catches(
        Sabotage::ClaimIgnoresIdleTime,
        &[
            "crashed_consumer_work_is_taken_over_after_the_lease",
            "slow_handler_is_not_stolen",
        ],
        "concurrency_one_keeps_stream_order",
    )
    .await;
}
