//! Counting and timing an event bus.

use super::{Instruments, StreamLabels};
use crate::{
    bus::{
        Backlog, Claimed, Delivery, MessageId, PendingEntry, PendingSummary, ReadOptions, Release, StartFrom,
        StreamInfo, Subscription, TrimPolicy,
    },
    error::Result,
    name::{ConsumerName, GroupName, StreamName, Topic, TopicPattern},
    Capabilities, Envelope, EventBus,
};
use async_trait::async_trait;
use std::{sync::Arc, time::Duration, time::Instant};

/// An [`EventBus`] that counts and times publishes per stream
/// (`fleetwire_publishes_total`, `fleetwire_publish_duration_seconds`) and
/// counts every failed call in `fleetwire_errors_total{op, kind}`; made by
/// [`Metrics::bus`](super::Metrics::bus). Everything else is passed on as is,
/// with the inner bus's cancel safety.
#[derive(Debug)]
pub struct MeteredBus {
    inner: Arc<dyn EventBus>,
    m: Arc<Instruments>,
}

impl MeteredBus {
    pub(super) fn new(inner: Arc<dyn EventBus>, m: Arc<Instruments>) -> Self {
        Self { inner, m }
    }

    /// The bus it wraps.
    pub fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    fn published<T>(
        &self,
        op: &'static str,
        stream: &StreamName,
        n: u64,
        started: Instant,
        r: Result<T>,
    ) -> Result<T> {
        let labels = StreamLabels {
            stream: stream.to_string(),
        };
        self.m
            .publish_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Ok(_) => {
                self.m.publishes.get_or_create(&labels).inc_by(n);
            }
            Err(e) => self.m.error(op, e),
        }
        r
    }
}

#[async_trait]
impl EventBus for MeteredBus {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn max_len(&self, stream: &StreamName) -> u64 {
        self.inner.max_len(stream)
    }

    fn trim_policy(&self, stream: &StreamName) -> TrimPolicy {
        self.inner.trim_policy(stream)
    }

    async fn ping(&self) -> Result<()> {
        self.m.track("ping", self.inner.ping().await)
    }

    async fn ensure_group(&self, stream: &StreamName, group: &GroupName, start: StartFrom) -> Result<bool> {
        self.m.track(
            "ensure_group",
            self.inner.ensure_group(stream, group, start).await,
        )
    }

    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId> {
        let started = Instant::now();
        let r = self.inner.publish(stream, envelope).await;
        self.published("publish", stream, 1, started, r)
    }

    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>> {
        let started = Instant::now();
        let r = self.inner.publish_batch(stream, envelopes).await;
        self.published("publish_batch", stream, envelopes.len() as u64, started, r)
    }

    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.m
            .track("read", self.inner.read(stream, group, consumer, options).await)
    }

    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64> {
        self.m.track("ack", self.inner.ack(stream, group, ids).await)
    }

    async fn claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        count: usize,
    ) -> Result<Claimed> {
        self.m.track(
            "claim",
            self.inner.claim(stream, group, consumer, min_idle, count).await,
        )
    }

    async fn pending(&self, stream: &StreamName, group: &GroupName) -> Result<PendingSummary> {
        self.m.track("pending", self.inner.pending(stream, group).await)
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        self.m.track("stream_info", self.inner.stream_info(stream).await)
    }

    async fn backlog(&self, stream: &StreamName, group: &GroupName) -> Result<Backlog> {
        self.m.track("backlog", self.inner.backlog(stream, group).await)
    }

    async fn ack_and_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        acks: &[MessageId],
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.m.track(
            "ack_and_read",
            self.inner
                .ack_and_read(stream, group, consumer, acks, options)
                .await,
        )
    }

    async fn claim_ids(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        ids: &[MessageId],
    ) -> Result<Claimed> {
        self.m.track(
            "claim_ids",
            self.inner.claim_ids(stream, group, consumer, min_idle, ids).await,
        )
    }

    async fn pending_entries(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: Option<ConsumerName>,
        start: MessageId,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        self.m.track(
            "pending_entries",
            self.inner
                .pending_entries(stream, group, consumer, start, count)
                .await,
        )
    }

    async fn renew(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        self.m
            .track("renew", self.inner.renew(stream, group, consumer, ids).await)
    }

    async fn release(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
        how: Release,
    ) -> Result<u64> {
        self.m.track(
            "release",
            self.inner.release(stream, group, consumer, ids, how).await,
        )
    }

    async fn dead_letter(
        &self,
        stream: &StreamName,
        group: &GroupName,
        id: MessageId,
        dead_letters: &StreamName,
        record: &[u8],
        max_len: u64,
    ) -> Result<Option<MessageId>> {
        self.m.track(
            "dead_letter",
            self.inner
                .dead_letter(stream, group, id, dead_letters, record, max_len)
                .await,
        )
    }

    async fn range(&self, stream: &StreamName, start: MessageId, count: usize) -> Result<Vec<Delivery>> {
        self.m
            .track("range", self.inner.range(stream, start, count).await)
    }

    async fn delete_entries(&self, stream: &StreamName, ids: &[MessageId]) -> Result<u64> {
        self.m
            .track("delete_entries", self.inner.delete_entries(stream, ids).await)
    }

    async fn delete_group(&self, stream: &StreamName, group: &GroupName) -> Result<bool> {
        self.m
            .track("delete_group", self.inner.delete_group(stream, group).await)
    }

    async fn delete_consumer(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        force: bool,
    ) -> Result<u64> {
        self.m.track(
            "delete_consumer",
            self.inner.delete_consumer(stream, group, consumer, force).await,
        )
    }

    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()> {
        self.m
            .track("publish_topic", self.inner.publish_topic(topic, envelope).await)
    }

    async fn subscribe(&self, pattern: &TopicPattern) -> Result<Subscription> {
        self.m.track("subscribe", self.inner.subscribe(pattern).await)
    }
}
