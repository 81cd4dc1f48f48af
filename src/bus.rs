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
    /// The encoded envelope (msgpack); empty for an entry another producer
    /// wrote without fleetwire's body field (see [`fields`](Self::fields)).
    pub body: Bytes,
    /// The raw field/value pairs of such a foreign entry, so an adapter can
    /// decode another layout (the reference design's, say); empty otherwise.
    pub fields: Vec<(Bytes, Bytes)>,
    max_bytes: usize,
}

impl Delivery {
    /// A delivery of `body`.
    pub fn new(id: MessageId, delivery_count: u64, body: Bytes) -> Self {
        Self {
            id,
            delivery_count,
            body,
            fields: Vec::new(),
            max_bytes: crate::DEFAULT_MAX_ENVELOPE_BYTES,
        }
    }

    /// Decode with this size limit (the bus sets its codec's).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Attach the raw fields of a foreign entry.
    pub fn with_fields(mut self, fields: Vec<(Bytes, Bytes)>) -> Self {
        self.fields = fields;
        self
    }

    /// Decode the envelope, within the bus's size limit. An oversized or
    /// foreign entry is a [`Codec`](crate::ErrorKind::Codec) error on this
    /// delivery only: it can still be acked or dead-lettered.
    pub fn envelope(&self) -> Result<Envelope> {
        Codec::new(self.max_bytes).decode(&self.body).map_err(|e| {
            Error::new(
                crate::ErrorKind::Codec,
                format!("entry {} is not a fleetwire envelope", self.id),
            )
            .with_source(e)
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
    /// Entries not yet delivered to the group, when the store can tell;
    /// entries trimmed before delivery count too (Redis 7's `lag`).
    pub lag: Option<u64>,
    /// How many entries the group has had delivered since its creation, as the
    /// store counts them (entries trimmed before delivery count once skipped over).
    pub entries_read: Option<u64>,
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
    /// Entries trimmed away before this group had them delivered, and not yet
    /// skipped over by its reads (the group will never see them), when the
    /// store can tell. Only [`TrimPolicy::DropOldest`] (or its overflow) makes them.
    pub trimmed_undelivered: Option<u64>,
}

/// What happens when a stream grows past its cap ([`EventBus::max_len`]).
///
/// Every policy trims only from the front (oldest entries), and the trimming
/// work rides on publishes: a publish stays one command while the stream is
/// clearly below its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TrimPolicy {
    /// Cap by length (`XADD MAXLEN ~`), the reference design's behaviour and
    /// the default: entries no group has read yet are dropped when the stream
    /// is full. What that costs is counted in [`Backlog::trimmed_undelivered`].
    #[default]
    DropOldest,
    /// Trim only entries every group has acknowledged (below each group's
    /// oldest pending entry and last delivered id): once the stream passes its
    /// cap, all such entries go. A stream with no group trims by length only
    /// (to 90 % of the cap, leaving room for plain appends).
    /// When unacknowledged entries alone reach `hard_cap`, a publish gets the
    /// `overflow` behaviour instead of silently losing data.
    KeepUnacknowledged {
        /// The safety net (0: twice the cap).
        hard_cap: u64,
        /// What a publish does at the hard cap.
        overflow: Overflow,
    },
}

impl TrimPolicy {
    /// Keep unacknowledged entries, hard cap twice the cap, reject at the hard cap.
    pub fn keep_unacknowledged() -> Self {
        Self::KeepUnacknowledged {
            hard_cap: 0,
            overflow: Overflow::Reject,
        }
    }

    /// The same policy with another hard cap (keep-unacknowledged only).
    pub fn with_hard_cap(self, cap: u64) -> Self {
        match self {
            Self::KeepUnacknowledged { overflow, .. } => Self::KeepUnacknowledged {
                hard_cap: cap,
                overflow,
            },
            other => other,
        }
    }

    /// The same policy with another overflow behaviour (keep-unacknowledged only).
    pub fn with_overflow(self, overflow: Overflow) -> Self {
        match self {
            Self::KeepUnacknowledged { hard_cap, .. } => Self::KeepUnacknowledged { hard_cap, overflow },
            other => other,
        }
    }

    /// The hard cap this policy enforces on a stream capped at `max_len`.
    pub fn hard_cap(&self, max_len: u64) -> u64 {
        match self {
            Self::DropOldest => max_len,
            Self::KeepUnacknowledged { hard_cap: 0, .. } => max_len.saturating_mul(2),
            Self::KeepUnacknowledged { hard_cap, .. } => (*hard_cap).max(max_len),
        }
    }
}

/// What a publish does when keeping unacknowledged entries would pass the hard cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Fail at once with a temporary [`Backpressure`](crate::ErrorKind::Backpressure) error naming the stream and figures.
    #[default]
    Reject,
    /// Wait up to this long for consumers to make room, then reject.
    Wait(Duration),
    /// Drop the oldest entries, acknowledged or not (explicit opt-in; counted
    /// in [`Backlog::trimmed_undelivered`]).
    DropOldest,
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

/// One row of a group's pending-entries list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PendingEntry {
    /// The entry id.
    pub id: MessageId,
    /// The consumer that holds it.
    pub consumer: String,
    /// Time since it was last delivered (or its lease renewed).
    pub idle: Duration,
    /// How many times it has been delivered.
    pub deliveries: u64,
}

impl PendingEntry {
    /// A pending-entry row.
    pub fn new(id: MessageId, consumer: impl Into<String>, idle: Duration, deliveries: u64) -> Self {
        Self {
            id,
            consumer: consumer.into(),
            idle,
            deliveries,
        }
    }
}

/// How [`EventBus::release`] hands entries back to their group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// The entries were never handled (a drain, a cancelled read): claimable
    /// at once, and the delivery that handed them out is not counted.
    Unhandled,
    /// The handling failed: the attempt stays counted and the entries are not
    /// claimable before this delay has passed (any length, longer than a lease too).
    RetryAfter(Duration),
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

/// Counters of one topic subscription, shared with the task that feeds it.
///
/// Topics are fire-and-forget, so a subscriber can miss events; these say
/// how many and when, instead of hiding it.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    dropped: std::sync::atomic::AtomicU64,
    reconnects: std::sync::atomic::AtomicU64,
    gap_ms: std::sync::atomic::AtomicU64,
}

impl SubscriptionStats {
    /// Events dropped because the subscriber's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How often the subscription was re-established after its connection dropped.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Total time spent unsubscribed between a drop and the resubscription:
    /// events published then were missed.
    pub fn gap(&self) -> Duration {
        Duration::from_millis(self.gap_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Count one event dropped for a full buffer.
    pub fn record_dropped(&self) {
        self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count one resubscription after a gap of `gap`.
    pub fn record_reconnect(&self, gap: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.reconnects.fetch_add(1, Relaxed);
        self.gap_ms.fetch_add(crate::clock::duration_ms(gap), Relaxed);
    }
}

/// How many events a subscriber may have queued before new ones are dropped
/// (and counted in [`SubscriptionStats::dropped`]), on every backend.
pub const TOPIC_BUFFER: usize = 1024;

/// A live topic subscription; a [`Stream`] of events. Dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = TopicEvent> + Send>>,
    stats: std::sync::Arc<SubscriptionStats>,
}

impl Subscription {
    /// Wrap a stream of events.
    pub fn new(inner: impl Stream<Item = TopicEvent> + Send + 'static) -> Self {
        Self::with_stats(inner, Default::default())
    }

    /// Wrap a stream of events whose feeder keeps `stats`.
    pub fn with_stats(
        inner: impl Stream<Item = TopicEvent> + Send + 'static,
        stats: std::sync::Arc<SubscriptionStats>,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
            stats,
        }
    }

    /// Drops, reconnects and gaps so far.
    pub fn stats(&self) -> &SubscriptionStats {
        &self.stats
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = TopicEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TopicEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The refusal to delete a consumer that holds entries, the same from every backend.
#[cfg_attr(not(any(feature = "memory", feature = "redis")), allow(dead_code))]
pub(crate) fn consumer_busy(
    stream: &StreamName,
    group: &GroupName,
    consumer: &ConsumerName,
    held: u64,
) -> Error {
    Error::new(
        crate::ErrorKind::Conflict,
        format!(
            "consumer `{consumer}` of group `{group}` on stream `{stream}` holds {held} pending entries; \
             not deleted (claim or ack them first, or force)"
        ),
    )
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
/// - Publishing trims the stream as its [`TrimPolicy`] says: with
///   `DropOldest` to about [`max_len`](Self::max_len), never below it and at
///   most [`Capabilities::trim_slack`] above; with `KeepUnacknowledged` no
///   entry some group has not acknowledged is ever trimmed, and the hard cap
///   gives the publisher its [`Overflow`] behaviour.
/// - Publishing checks the backlog against the [`BacklogPolicy`] at no extra
///   round trip and logs a `stream_backlog_high` warning at most once per interval.
/// - Delivery counts are exact whatever the interleaving of reads and
///   claims; a [`Release::Unhandled`] delivery is not counted, and a
///   [`Release::RetryAfter`] entry is not claimed before its time.
/// - A cancelled `read` or `ack_and_read` strands nothing: an entry the store
///   handed out after the caller stopped listening is released
///   ([`Release::Unhandled`]) so any consumer can claim it at once.
/// - Reading, acking or inspecting a missing group or stream is a
///   [`NotFound`](crate::ErrorKind::NotFound) error.
/// - Topics are fire-and-forget: a subscriber sees events published after
///   `subscribe` returned whose topic matches its pattern, where `*` matches
///   exactly one token.
///   A subscription survives a store restart (it resubscribes by itself);
///   events missed meanwhile show in its [`SubscriptionStats`] as reconnects
///   and gap time. At most [`TOPIC_BUFFER`] events queue per subscriber; the
///   rest are dropped and counted.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait EventBus: Send + Sync + fmt::Debug {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// The length cap applied to `stream` on publish.
    fn max_len(&self, stream: &StreamName) -> u64;
    /// How `stream` is trimmed past its cap.
    fn trim_policy(&self, stream: &StreamName) -> TrimPolicy;
    /// Check that the store answers.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn ping(&self) -> Result<()>;
    /// Create `group` on `stream` (and the stream); `true` when newly created.
    ///
    /// # Cancel safety
    /// Safe to drop: creation is one idempotent command; call it again.
    async fn ensure_group(&self, stream: &StreamName, group: &GroupName, start: StartFrom) -> Result<bool>;
    /// Append one envelope, trimming to the cap.
    ///
    /// # Cancel safety
    /// Dropped after the command left, the entry may still be published (its id unknown to you); publish again for at-least-once (a duplicate is possible). Nothing already published is lost.
    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId>;
    /// Append many envelopes in one round trip; ids in the same order.
    ///
    /// # Cancel safety
    /// As for `publish`: all, some or none may be published; publish again for at-least-once.
    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>>;
    /// Read new entries for `consumer` in `group`.
    ///
    /// # Cancel safety
    /// Safe to drop at any point: entries the store hands out after you stopped listening are released uncounted ([`Release::Unhandled`]); on Redis a blocking read is unblocked at once.
    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>>;
    /// Acknowledge entries; returns how many were pending.
    ///
    /// # Cancel safety
    /// Safe to drop: an ack that did not land leaves the entry pending; acks are idempotent, send them again.
    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64>;
    /// Move up to `count` entries idle at least `min_idle` to `consumer`.
    ///
    /// # Cancel safety
    /// Safe to drop: claimed entries you never saw are released uncounted, as for `read`.
    async fn claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        count: usize,
    ) -> Result<Claimed>;
    /// The group's pending-entries summary.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn pending(&self, stream: &StreamName, group: &GroupName) -> Result<PendingSummary>;
    /// Length, first and last ids, and groups of `stream`.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo>;
    /// Backlog of `group` on `stream`.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn backlog(&self, stream: &StreamName, group: &GroupName) -> Result<Backlog>;
    /// Acknowledge `acks`, then read new entries, in one round trip: the
    /// consumer loop's steady state. Acks apply even when the read fails
    /// afterwards; on error the caller cannot tell, so it resends them (acks are idempotent).
    ///
    /// # Cancel safety
    /// Safe to drop, as for `read`; the acks may or may not have landed: resend them.
    async fn ack_and_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        acks: &[MessageId],
        options: ReadOptions,
    ) -> Result<Vec<Delivery>>;
    /// Move the given pending entries idle at least `min_idle` to `consumer`.
    /// Entries not pending, or not yet due after a [`Release::RetryAfter`], are left alone.
    ///
    /// # Cancel safety
    /// Safe to drop, as for `claim`.
    async fn claim_ids(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        ids: &[MessageId],
    ) -> Result<Claimed>;
    /// Up to `count` rows of the pending-entries list from `start` on, of one consumer or all.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn pending_entries(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: Option<ConsumerName>,
        start: MessageId,
        count: usize,
    ) -> Result<Vec<PendingEntry>>;
    /// Reset the idle time of the entries `consumer` still holds (its lease);
    /// returns those it still holds.
    ///
    /// # Cancel safety
    /// Safe to drop: a renewal that did not land only lets the lease run out sooner.
    async fn renew(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>>;
    /// Hand entries `consumer` holds back to the group; returns how many it held.
    ///
    /// # Cancel safety
    /// Safe to drop: one atomic step; entries not released stay pending and are taken over after their lease.
    async fn release(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
        how: Release,
    ) -> Result<u64>;
    /// Atomically append `record` to `dead_letters` (capped near `max_len`) and
    /// ack `id`; `None` when `id` was not pending (nothing is written).
    ///
    /// # Cancel safety
    /// Safe to drop: the append and the ack are one atomic step; if it did not run, the entry stays pending.
    async fn dead_letter(
        &self,
        stream: &StreamName,
        group: &GroupName,
        id: MessageId,
        dead_letters: &StreamName,
        record: &[u8],
        max_len: u64,
    ) -> Result<Option<MessageId>>;
    /// Up to `count` entries of `stream` with ids `>= start`, oldest first; empty when the stream is missing.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn range(&self, stream: &StreamName, start: MessageId, count: usize) -> Result<Vec<Delivery>>;
    /// Delete entries from `stream`; returns how many existed.
    ///
    /// # Cancel safety
    /// Safe to drop: one command, which ran or did not.
    async fn delete_entries(&self, stream: &StreamName, ids: &[MessageId]) -> Result<u64>;
    /// Delete `group` and its pending list; `true` when it existed.
    ///
    /// # Cancel safety
    /// Safe to drop: one command, which ran or did not.
    async fn delete_group(&self, stream: &StreamName, group: &GroupName) -> Result<bool>;
    /// Delete `consumer` from `group`; refused with [`Conflict`](crate::ErrorKind::Conflict)
    /// while it holds pending entries unless `force`. Returns the entries it held.
    ///
    /// # Cancel safety
    /// Safe to drop: one atomic step, which ran or did not.
    async fn delete_consumer(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        force: bool,
    ) -> Result<u64>;
    /// Publish an ephemeral event on `topic`.
    ///
    /// # Cancel safety
    /// Safe to drop: topics are fire-and-forget; the event may or may not have gone out.
    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()>;
    /// Subscribe to topics matching `pattern`.
    ///
    /// # Cancel safety
    /// Safe to drop: a subscription not yet returned is closed with the future.
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
