//! No-op backends: every call succeeds and nothing is stored.
//!
//! Use them where a contract is required but the feature is off, e.g. a
//! service without a registry. The liveness store reports
//! `available() == false`, so callers fall back as documented.

use crate::{
    error::{Error, Result},
    name::{ConsumerName, GroupName, InstanceId, ServiceName, StreamName, Topic, TopicPattern},
    Backlog, Capabilities, Claimed, Delivery, Envelope, EventBus, Health, HealthServer, Instance,
    LivenessStore, MessageId, PendingEntry, PendingSummary, ReadOptions, RegistryStore, Release, StartFrom,
    StreamInfo, Subscription, TrimPolicy,
};
use async_trait::async_trait;
use std::{net::SocketAddr, time::Duration};

/// A registry that forgets everything: `heartbeat` is always `false`, `list` always empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopRegistry;

#[async_trait]
impl RegistryStore for NoopRegistry {
    async fn register(&self, _: &Instance, _: Duration) -> Result<()> {
        Ok(())
    }
    async fn heartbeat(&self, _: &ServiceName, _: &InstanceId, _: Duration) -> Result<bool> {
        Ok(false)
    }
    async fn deregister(&self, _: &ServiceName, _: &InstanceId) -> Result<()> {
        Ok(())
    }
    async fn list<'a>(&self, _: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        Ok(Vec::new())
    }
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::NOOP
    }
}

/// A liveness store that is never available; `is_alive_batch` errors so callers fall back.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopLiveness;

#[async_trait]
impl LivenessStore for NoopLiveness {
    fn available(&self) -> bool {
        false
    }
    async fn touch(&self, _: &InstanceId, _: Duration) -> Result<()> {
        Ok(())
    }
    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>> {
        Err(Error::unavailable(format!(
            "liveness check of {} ids: no liveness store is configured",
            ids.len()
        ))
        .set_temporary(false))
    }
    async fn forget(&self, _: &InstanceId) -> Result<()> {
        Ok(())
    }
}

/// A bus that drops every message: reads are empty, figures are zero, subscriptions never yield.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopBus;

#[async_trait]
impl EventBus for NoopBus {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NOOP
    }
    fn max_len(&self, _: &StreamName) -> u64 {
        0
    }
    fn trim_policy(&self, _: &StreamName) -> TrimPolicy {
        TrimPolicy::DropOldest
    }
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    async fn ensure_group(&self, _: &StreamName, _: &GroupName, _: StartFrom) -> Result<bool> {
        Ok(true)
    }
    async fn publish(&self, _: &StreamName, _: &Envelope) -> Result<MessageId> {
        Ok(MessageId::ZERO)
    }
    async fn publish_batch(&self, _: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>> {
        Ok(vec![MessageId::ZERO; envelopes.len()])
    }
    async fn read(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: &ConsumerName,
        _: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &StreamName, _: &GroupName, _: &[MessageId]) -> Result<u64> {
        Ok(0)
    }
    async fn claim(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: &ConsumerName,
        _: Duration,
        _: usize,
    ) -> Result<Claimed> {
        Ok(Claimed::default())
    }
    async fn pending(&self, _: &StreamName, _: &GroupName) -> Result<PendingSummary> {
        Ok(PendingSummary::default())
    }
    async fn stream_info(&self, _: &StreamName) -> Result<StreamInfo> {
        Ok(StreamInfo {
            length: 0,
            first_id: None,
            last_id: None,
            groups: Vec::new(),
        })
    }
    async fn backlog(&self, _: &StreamName, _: &GroupName) -> Result<Backlog> {
        Ok(Backlog {
            length: 0,
            pending: 0,
            lag: Some(0),
            max_len: 0,
            trimmed_undelivered: Some(0),
        })
    }
    async fn ack_and_read(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: &ConsumerName,
        _: &[MessageId],
        _: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        Ok(Vec::new())
    }
    async fn claim_ids(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: &ConsumerName,
        _: Duration,
        _: &[MessageId],
    ) -> Result<Claimed> {
        Ok(Claimed::default())
    }
    async fn pending_entries(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: Option<ConsumerName>,
        _: MessageId,
        _: usize,
    ) -> Result<Vec<PendingEntry>> {
        Ok(Vec::new())
    }
    async fn renew(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: &ConsumerName,
        _: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        Ok(Vec::new())
    }
    async fn release(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: &ConsumerName,
        _: &[MessageId],
        _: Release,
    ) -> Result<u64> {
        Ok(0)
    }
    async fn dead_letter(
        &self,
        _: &StreamName,
        _: &GroupName,
        _: MessageId,
        _: &StreamName,
        _: &[u8],
        _: u64,
    ) -> Result<Option<MessageId>> {
        Ok(None)
    }
    async fn range(&self, _: &StreamName, _: MessageId, _: usize) -> Result<Vec<Delivery>> {
        Ok(Vec::new())
    }
    async fn delete_entries(&self, _: &StreamName, _: &[MessageId]) -> Result<u64> {
        Ok(0)
    }
    async fn delete_group(&self, _: &StreamName, _: &GroupName) -> Result<bool> {
        Ok(false)
    }
    async fn delete_consumer(&self, _: &StreamName, _: &GroupName, _: &ConsumerName, _: bool) -> Result<u64> {
        Ok(0)
    }
    async fn publish_topic(&self, _: &Topic, _: &Envelope) -> Result<()> {
        Ok(())
    }
    async fn subscribe(&self, _: &TopicPattern) -> Result<Subscription> {
        Ok(Subscription::new(futures_util::stream::pending()))
    }
}

/// A health server that serves nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopHealthServer;

#[async_trait]
impl HealthServer for NoopHealthServer {
    async fn start(&self, _: Health) -> Result<Option<SocketAddr>> {
        Ok(None)
    }
    async fn stop(&self) -> Result<()> {
        Ok(())
    }
}
