//! The event bus: durable streams with consumer groups, and ephemeral topics.

use crate::{
    envelope::{Codec, Envelope},
    error::{Error, Result},
    name::{ConsumerName, GroupName, StreamName, Topic, TopicPattern},
    Capabilities,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    fmt,
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
    time::Duration,
};

/// A stream entry id, `{milliseconds}-{sequence}` as Redis writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl MessageId {
    /// The smallest id.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };

    /// The id that follows `self`.
    pub fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("invalid message id `{}`", s.escape_debug()));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One message handed to a consumer.
///
/// The body is kept as the bytes the store returned and decoded on demand,
/// so one malformed entry never hides the rest of a batch: the consumer can
/// still ack it or move it aside.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The entry id; pass it to [`EventBus::ack`].
    pub id: MessageId,
    /// How many times the entry has been delivered, this time included.
    pub delivery_count: u64,
    /// The encoded envelope (msgpack).
    pub body: Bytes,
}

impl Delivery {
    /// A delivery of `body`.
    pub fn new(id: MessageId, delivery_count: u64, body: Bytes) -> Self {
        Self {
            id,
            delivery_count,
            body,
        }
    }

    /// Decode the envelope.
    pub fn envelope(&self) -> Result<Envelope> {
        Codec::new(usize::MAX).decode(&self.body).map_err(|e| {
            Error::new(e.kind(), format!("entry {} is not a fleetwire envelope", self.id)).with_source(e)
        })
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Only entries added after the group was created (`$`).
    #[default]
    Latest,
    /// Every entry still in the stream (`0`).
    Beginning,
}

/// How a group read behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// At most this many entries.
    pub count: usize,
    /// Wait up to this long when nothing is there; `None` returns at once.
    pub block: Option<Duration>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            count: 16,
            block: None,
        }
    }
}

impl ReadOptions {
    /// Read up to `count` entries without waiting.
    pub fn count(count: usize) -> Self {
        Self { count, block: None }
    }

    /// Wait up to `block` for entries.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = Some(block);
        self
    }
}

/// Entries moved to a consumer by [`EventBus::claim`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claimed {
    /// The reclaimed entries, delivery counts already incremented.
    pub deliveries: Vec<Delivery>,
    /// Pending ids whose entries were trimmed away; they are dropped from the
    /// pending list, as if acked.
    pub deleted: Vec<MessageId>,
}

/// The pending-entries list of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PendingSummary {
    /// Entries delivered and not yet acked.
    pub count: u64,
    /// Lowest pending id.
    pub lowest: Option<MessageId>,
    /// Highest pending id.
    pub highest: Option<MessageId>,
    /// Pending count per consumer.
    pub consumers: BTreeMap<String, u64>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered and not acked.
    pub pending: u64,
    /// Last id delivered to the group.
    pub last_delivered: MessageId,
    /// Entries not yet delivered to the group, when the store can tell.
    pub lag: Option<u64>,
}

/// Figures of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Entries in the stream.
    pub length: u64,
    /// Oldest entry.
    pub first_id: Option<MessageId>,
    /// Newest entry.
    pub last_id: Option<MessageId>,
    /// Its consumer groups, by name.
    pub groups: Vec<GroupInfo>,
}

/// Backlog figures of a stream for one group, against the stream's cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Backlog {
    /// Entries in the stream.
    pub length: u64,
    /// Entries the group has read and not acked.
    pub pending: u64,
    /// Entries not yet delivered to the group, when known.
    pub lag: Option<u64>,
    /// The stream's length cap.
    pub max_len: u64,
}

/// When a backlog is worth a warning: trimming may soon drop unread data.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BacklogPolicy {
    /// Warn when the stream holds more than this share of its cap (default 0.8).
    pub fill_ratio: f64,
    /// Warn when a group has more pending entries than this (default 1000).
    pub max_pending: u64,
    /// Warn at most once per stream per this interval (default 30 s).
    pub warn_every: Duration,
    /// On a remote store, piggyback the figures on one publish per stream per
    /// this interval, so the guard costs no extra round trip (default 1 s).
    pub sample_every: Duration,
}

impl Default for BacklogPolicy {
    fn default() -> Self {
        Self {
            fill_ratio: 0.8,
            max_pending: 1000,
            warn_every: Duration::from_secs(30),
            sample_every: Duration::from_secs(1),
        }
    }
}

impl BacklogPolicy {
    /// Whether a stream of `length` entries with `pending` unacked is at risk.
    pub fn at_risk(&self, length: u64, pending: u64, max_len: u64) -> bool {
        // Same rule as the reference design: near the cap, or many unacked.
        length as f64 > max_len as f64 * self.fill_ratio || pending > self.max_pending
    }
}

/// One event received on a topic subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicEvent {
    /// The concrete topic it was published on.
    pub topic: Topic,
    /// The event.
    pub envelope: Envelope,
}

/// A live topic subscription; a [`Stream`] of events. Dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = TopicEvent> + Send>>,
}

impl Subscription {
    /// Wrap a stream of events.
    pub fn new(inner: impl Stream<Item = TopicEvent> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = TopicEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TopicEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Durable streams with consumer groups, plus ephemeral topics.
///
/// # Contract
/// - `ensure_group` creates the stream if needed and the group once;
///   calling it again returns `Ok(false)`. Any other failure is an error.
/// - A published entry is delivered to each group exactly once by `read`
///   (new entries only); two groups each see every entry.
/// - A delivered entry stays pending until `ack`; `claim` moves entries idle
///   at least `min_idle` to another consumer and increments their delivery
///   count; entries trimmed away meanwhile come back in `Claimed::deleted`.
/// - Publishing trims the stream to about [`max_len`](Self::max_len): never
///   below it, and at most [`Capabilities::trim_slack`] above.
/// - Publishing checks the backlog against the [`BacklogPolicy`] at no extra
///   round trip and logs a `stream_backlog_high` warning at most once per interval.
/// - Reading, acking or inspecting a missing group or stream is a
///   [`NotFound`](crate::ErrorKind::NotFound) error.
/// - Topics are fire-and-forget: a subscriber sees events published after
///   `subscribe` returned whose topic matches its pattern, where `*` matches
///   exactly one token.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait EventBus: Send + Sync + fmt::Debug {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// The length cap applied to `stream` on publish.
    fn max_len(&self, stream: &StreamName) -> u64;
    /// Check that the store answers.
    async fn ping(&self) -> Result<()>;
    /// Create `group` on `stream` (and the stream); `true` when newly created.
    async fn ensure_group(&self, stream: &StreamName, group: &GroupName, start: StartFrom) -> Result<bool>;
    /// Append one envelope, trimming to the cap.
    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId>;
    /// Append many envelopes in one round trip; ids in the same order.
    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>>;
    /// Read new entries for `consumer` in `group`.
    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>>;
    /// Acknowledge entries; returns how many were pending.
    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64>;
    /// Move up to `count` entries idle at least `min_idle` to `consumer`.
    async fn claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        count: usize,
    ) -> Result<Claimed>;
    /// The group's pending-entries summary.
    async fn pending(&self, stream: &StreamName, group: &GroupName) -> Result<PendingSummary>;
    /// Length, first and last ids, and groups of `stream`.
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo>;
    /// Backlog of `group` on `stream`.
    async fn backlog(&self, stream: &StreamName, group: &GroupName) -> Result<Backlog>;
    /// Publish an ephemeral event on `topic`.
    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()>;
    /// Subscribe to topics matching `pattern`.
    async fn subscribe(&self, pattern: &TopicPattern) -> Result<Subscription>;
}

/// Conveniences over any [`EventBus`].
#[async_trait]
pub trait EventBusExt: EventBus {
    /// Publish `value` as the msgpack payload of an envelope of `kind`.
    async fn publish_value<T: Serialize + Sync + ?Sized>(
        &self,
        stream: &StreamName,
        kind: &str,
        value: &T,
    ) -> Result<MessageId> {
        let env = Envelope::new(kind).with_payload(value)?;
        self.publish(stream, &env).await
    }

    /// Acknowledge the given deliveries.
    async fn ack_deliveries(
        &self,
        stream: &StreamName,
        group: &GroupName,
        deliveries: &[Delivery],
    ) -> Result<u64> {
        let ids: Vec<MessageId> = deliveries.iter().map(|d| d.id).collect();
        self.ack(stream, group, &ids).await
    }
}

impl<B: EventBus + ?Sized> EventBusExt for B {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids() {
        let id: MessageId = "1700000000000-3".parse().unwrap();
        assert_eq!(
            id,
            MessageId {
                ms: 1_700_000_000_000,
                seq: 3
            }
        );
        assert_eq!(id.to_string(), "1700000000000-3");
        assert!("1-".parse::<MessageId>().is_err());
        assert!("x-1".parse::<MessageId>().is_err());
        assert!(MessageId { ms: 1, seq: 0 } > MessageId { ms: 0, seq: 9 });
        assert_eq!(
            MessageId { ms: 1, seq: u64::MAX }.next(),
            MessageId { ms: 2, seq: 0 }
        );
    }
}
