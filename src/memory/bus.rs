use super::Outage;
use crate::{
    bus_config::{BacklogGuard, BacklogSample, BusConfig},
    clock::{self, SharedClock},
    error::{Error, Result},
    name::{ConsumerName, GroupName, StreamName, Topic, TopicPattern},
    Backlog, BacklogPolicy, Capabilities, Claimed, Codec, Delivery, Envelope, EventBus, GroupInfo, MessageId,
    Overflow, PendingEntry, PendingSummary, ReadOptions, Release, StartFrom, StreamInfo, Subscription,
    SubscriptionStats, TopicEvent, TrimPolicy, TOPIC_BUFFER,
};
use async_trait::async_trait;
use bytes::Bytes;
use event_listener::Event;
use futures_channel::mpsc;
use parking_lot::Mutex;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

/// A topic subscription: its pattern, its channel, and its counters.
type TopicSubscriber = (TopicPattern, mpsc::Sender<TopicEvent>, Arc<SubscriptionStats>);

/// In-memory [`EventBus`] with Redis Streams semantics.
///
/// Streams are trimmed exactly to their cap, so memory stays bounded.
/// Blocking reads wait on a notification, not a poll loop.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    outage: Outage,
    config: BusConfig,
    guard: BacklogGuard,
    streams: Mutex<HashMap<StreamName, StreamState>>,
    appended: Event,
    topics: Mutex<Vec<TopicSubscriber>>,
}

#[derive(Debug, Default)]
struct StreamState {
    entries: VecDeque<(MessageId, Bytes)>,
    last_id: MessageId,
    groups: BTreeMap<GroupName, GroupState>,
    /// When the backlog warning was last logged for this stream.
    last_warn_ms: Option<u64>,
    /// Entries ever appended, as Redis's `entries-added`.
    entries_added: u64,
}

#[derive(Debug)]
struct GroupState {
    last_delivered: MessageId,
    /// Entries delivered since creation, counted as Redis 7 counts `entries-read`.
    entries_read: Option<u64>,
    consumers: BTreeSet<ConsumerName>,
    pel: BTreeMap<MessageId, Pel>,
}

/// One pending entry.
#[derive(Debug)]
struct Pel {
    consumer: ConsumerName,
    /// Idle time counts from here; 0 after a release, so it is claimable at once.
    delivered_at_ms: u64,
    count: u64,
    /// Set by [`Release::RetryAfter`]: claimable only once the clock has
    /// passed this time, so ms truncation never shortens the delay.
    not_before_ms: Option<u64>,
}

impl Pel {
    fn claimable(&self, now: u64, min_idle_ms: u64) -> bool {
        now.saturating_sub(self.delivered_at_ms) >= min_idle_ms && self.not_before_ms.is_none_or(|t| t < now)
    }
}

/// Claim `ids` of `g` for `consumer` where claimable; drop those whose entry is gone.
fn claim_in(
    entries: &VecDeque<(MessageId, Bytes)>,
    g: &mut GroupState,
    consumer: &ConsumerName,
    now: u64,
    min_idle_ms: u64,
    ids: &[MessageId],
    max_bytes: usize,
) -> Claimed {
    g.consumers.insert(consumer.clone());
    let mut claimed = Claimed::default();
    for id in ids {
        let Some(p) = g.pel.get_mut(id).filter(|p| p.claimable(now, min_idle_ms)) else {
            continue;
        };
        let i = entries.partition_point(|(e, _)| e < id);
        match entries.get(i).filter(|(e, _)| e == id) {
            None => {
                g.pel.remove(id);
                claimed.deleted.push(*id);
            }
            Some((_, body)) => {
                p.consumer = consumer.clone();
                p.delivered_at_ms = now;
                p.count += 1;
                p.not_before_ms = None;
                claimed
                    .deliveries
                    .push(Delivery::new(*id, p.count, body.clone()).with_max_bytes(max_bytes));
            }
        }
    }
    claimed
}

/// The entries of `stream` and its `group`, or `NotFound`.
fn stream_group<'a>(
    streams: &'a mut HashMap<StreamName, StreamState>,
    stream: &StreamName,
    group: &GroupName,
) -> Result<(&'a VecDeque<(MessageId, Bytes)>, &'a mut GroupState)> {
    let st = streams
        .get_mut(stream)
        .ok_or_else(|| MemoryBus::no_group(stream, group))?;
    let g = st
        .groups
        .get_mut(group)
        .ok_or_else(|| MemoryBus::no_group(stream, group))?;
    Ok((&st.entries, g))
}

impl StreamState {
    /// Append `bodies` with ids from `now`, then trim to `max_len`.
    fn append(
        &mut self,
        now: u64,
        max_len: u64,
        bodies: impl IntoIterator<Item = Bytes>,
        on_id: impl FnMut(MessageId),
    ) {
        self.push(now, bodies, on_id);
        self.trim_to(max_len);
    }

    fn push(&mut self, now: u64, bodies: impl IntoIterator<Item = Bytes>, mut on_id: impl FnMut(MessageId)) {
        for body in bodies {
            let id = if now > self.last_id.ms {
                MessageId { ms: now, seq: 0 }
            } else {
                self.last_id.next()
            };
            self.last_id = id;
            self.entries_added += 1;
            self.entries.push_back((id, body));
            on_id(id);
        }
    }

    /// Drop the oldest entries until at most `len` remain.
    fn trim_to(&mut self, len: u64) {
        let cap = usize::try_from(len).unwrap_or(usize::MAX);
        while self.entries.len() > cap {
            self.entries.pop_front();
        }
    }

    /// The lowest id some group still needs (pending, or not yet delivered);
    /// `None` without groups.
    fn safe_point(&self) -> Option<MessageId> {
        self.groups
            .values()
            .map(|g| match g.pel.keys().next() {
                Some(lowest) => (*lowest).min(g.last_delivered.next()),
                None => g.last_delivered.next(),
            })
            .min()
    }

    /// Make room for `incoming` entries as `policy` allows; `Err(length)`
    /// when unacknowledged entries alone would pass the hard cap.
    fn make_room(&mut self, policy: TrimPolicy, max_len: u64, incoming: u64) -> std::result::Result<(), u64> {
        let TrimPolicy::KeepUnacknowledged { overflow, .. } = policy else {
            return Ok(());
        };
        let len = |st: &Self| st.entries.len() as u64;
        if len(self) + incoming > max_len {
            match self.safe_point() {
                None => self.trim_to(crate::bus_config::no_group_trim_len(max_len).saturating_sub(incoming)),
                Some(safe) => {
                    while self.entries.front().is_some_and(|(id, _)| *id < safe) {
                        self.entries.pop_front();
                    }
                }
            }
        }
        let hard_cap = policy.hard_cap(max_len);
        if len(self) + incoming <= hard_cap {
            return Ok(());
        }
        match overflow {
            Overflow::DropOldest => {
                self.trim_to(hard_cap.saturating_sub(incoming));
                Ok(())
            }
            _ => Err(len(self)),
        }
    }

    /// Entries not yet delivered to `g`, counted as Redis 7 counts them
    /// (`entries-added - entries-read`): entries trimmed before delivery are
    /// included; without a known read count, the entries after its last delivered.
    fn lag(&self, g: &GroupState) -> u64 {
        match g.entries_read {
            Some(read) => self.entries_added.saturating_sub(read),
            None => self.count_after(g.last_delivered),
        }
    }

    /// Entries trimmed before `g` had them delivered, while that gap is still
    /// ahead of it, from the same counters Redis 7 keeps (`lag - length`).
    fn trimmed_undelivered(&self, g: &GroupState) -> Option<u64> {
        let len = self.entries.len() as u64;
        g.entries_read
            .map(|read| self.entries_added.saturating_sub(read).saturating_sub(len))
    }

    /// Entries after `id`, the group's lag.
    fn count_after(&self, id: MessageId) -> u64 {
        (self.entries.len() - self.entries.partition_point(|(e, _)| *e <= id)) as u64
    }

    fn max_pending(&self) -> u64 {
        self.groups
            .values()
            .map(|g| g.pel.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

/// Builds a [`MemoryBus`].
#[derive(Debug, Default)]
pub struct MemoryBusBuilder {
    clock: Option<SharedClock>,
    config: BusConfig,
}

impl MemoryBusBuilder {
    /// Read time from `clock` (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Cap every stream at `max_len` entries (default 100 000; at least the floor, 1,000).
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.config.max_len = max_len;
        self
    }

    /// Cap `stream` at `max_len` entries.
    pub fn stream_max_len(mut self, stream: StreamName, max_len: u64) -> Self {
        self.config.stream_max_len.insert(stream, max_len);
        self
    }

    /// How every stream is trimmed past its cap (default [`TrimPolicy::DropOldest`]).
    pub fn trim_policy(mut self, policy: TrimPolicy) -> Self {
        self.config.trim = policy;
        self
    }

    /// How `stream` is trimmed past its cap.
    pub fn stream_trim_policy(mut self, stream: StreamName, policy: TrimPolicy) -> Self {
        self.config.stream_trim.insert(stream, policy);
        self
    }

    /// Accept stream caps down to `floor` (default 1,000, as the reference
    /// design clamps; tests lower it to exercise trimming quickly).
    pub fn max_len_floor(mut self, floor: u64) -> Self {
        self.config.max_len_floor = floor;
        self
    }

    /// When to warn about backlogs.
    pub fn backlog_policy(mut self, policy: BacklogPolicy) -> Self {
        self.config.backlog = policy;
        self
    }

    /// Envelope size limit.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// Build the bus.
    pub fn build(self) -> MemoryBus {
        self.config.warn_raised_caps();
        MemoryBus {
            inner: Arc::new(Inner {
                clock: self.clock.unwrap_or_else(clock::system),
                outage: Outage::default(),
                guard: BacklogGuard::new(self.config.backlog),
                config: self.config,
                streams: Default::default(),
                appended: Event::new(),
                topics: Default::default(),
            }),
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A bus with default settings on the system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configure a bus.
    pub fn builder() -> MemoryBusBuilder {
        MemoryBusBuilder::default()
    }

    /// Simulate the store going down (`false`) or coming back (`true`).
    pub fn set_available(&self, available: bool) {
        self.inner.outage.set_down(!available);
    }

    fn no_group(stream: &StreamName, group: &GroupName) -> Error {
        Error::not_found(format!(
            "consumer group `{group}` of stream `{stream}` does not exist"
        ))
    }

    /// Append `bodies` as the stream's trim policy allows, waiting for room
    /// when its overflow behaviour says so.
    async fn append(
        &self,
        stream: &StreamName,
        bodies: &[Bytes],
        on_id: &mut (dyn FnMut(MessageId) + Send),
    ) -> Result<()> {
        let policy = self.inner.config.trim_of(stream);
        let deadline = match policy {
            TrimPolicy::KeepUnacknowledged {
                overflow: Overflow::Wait(d),
                ..
            } => Instant::now().checked_add(d),
            _ => None,
        };
        let mut pause = Duration::from_millis(5);
        loop {
            match self.try_append(stream, bodies, policy, on_id) {
                Ok(()) => return Ok(()),
                Err(full) if deadline.is_some_and(|d| Instant::now() + pause < d) => {
                    tracing::trace!(event = "publish_waiting_for_room", stream = %stream, length = full);
                    crate::rt::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(length) => {
                    let max_len = self.inner.config.max_len_of(stream);
                    return Err(crate::bus_config::backpressure(
                        stream,
                        length,
                        policy.hard_cap(max_len),
                    ));
                }
            }
        }
    }

    /// One attempt at appending; `Err(length)` when the stream is full by policy.
    fn try_append(
        &self,
        stream: &StreamName,
        bodies: &[Bytes],
        policy: TrimPolicy,
        on_id: &mut (dyn FnMut(MessageId) + Send),
    ) -> std::result::Result<(), u64> {
        let inner = &*self.inner;
        let now = inner.clock.now_ms();
        let max_len = inner.config.max_len_of(stream);
        let warn = {
            let mut streams = inner.streams.lock();
            let st = match streams.get_mut(stream) {
                Some(st) => st,
                None => streams.entry(stream.clone()).or_default(),
            };
            st.make_room(policy, max_len, bodies.len() as u64)?;
            st.push(now, bodies.iter().cloned(), on_id);
            if policy == TrimPolicy::DropOldest {
                st.trim_to(max_len);
            }
            let sample = BacklogSample {
                length: st.entries.len() as u64,
                pending: st.max_pending(),
                max_len,
                trimmed_undelivered: st
                    .groups
                    .values()
                    .filter_map(|g| st.trimmed_undelivered(g))
                    .max()
                    .unwrap_or(0),
            };
            let at_risk = inner
                .guard
                .policy()
                .at_risk(sample.length, sample.pending, max_len)
                || sample.trimmed_undelivered > 0;
            (at_risk && inner.guard.warn_due(&mut st.last_warn_ms, now)).then_some(sample)
        };
        inner.appended.notify(usize::MAX);
        if let Some(sample) = warn {
            crate::bus_config::warn_backlog(stream, sample);
        }
        Ok(())
    }

    fn try_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        let now = self.inner.clock.now_ms();
        let mut streams = self.inner.streams.lock();
        let st = streams
            .get_mut(stream)
            .ok_or_else(|| MemoryBus::no_group(stream, group))?;
        let entries = &st.entries;
        let g = st
            .groups
            .get_mut(group)
            .ok_or_else(|| MemoryBus::no_group(stream, group))?;
        if !g.consumers.contains(consumer) {
            g.consumers.insert(consumer.clone());
        }
        let start = entries.partition_point(|(id, _)| *id <= g.last_delivered);
        let mut out = Vec::with_capacity(count.min(entries.len() - start));
        for (id, body) in entries.range(start..).take(count.max(1)) {
            g.last_delivered = *id;
            g.pel.insert(
                *id,
                Pel {
                    consumer: consumer.clone(),
                    delivered_at_ms: now,
                    count: 1,
                    not_before_ms: None,
                },
            );
            out.push(Delivery::new(*id, 1, body.clone()).with_max_bytes(self.inner.config.codec.max_bytes()));
        }
        // Redis 7.0 counts deliveries exactly; a trim leaves no trace in the count.
        g.entries_read = g.entries_read.map(|read| read + out.len() as u64);
        Ok(out)
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn capabilities(&self) -> Capabilities {
        Capabilities::MEMORY
    }

    fn max_len(&self, stream: &StreamName) -> u64 {
        self.inner.config.max_len_of(stream)
    }

    fn trim_policy(&self, stream: &StreamName) -> TrimPolicy {
        self.inner.config.trim_of(stream)
    }

    async fn ping(&self) -> Result<()> {
        self.inner.outage.check(|| "ping bus".into())
    }

    async fn ensure_group(&self, stream: &StreamName, group: &GroupName, start: StartFrom) -> Result<bool> {
        self.inner
            .outage
            .check(|| format!("create group `{group}` on stream `{stream}`"))?;
        let mut streams = self.inner.streams.lock();
        let st = streams.entry(stream.clone()).or_default();
        if st.groups.contains_key(group) {
            return Ok(false);
        }
        let (last_delivered, entries_read) = match start {
            StartFrom::Latest => (st.last_id, Some(st.entries_added)),
            StartFrom::Beginning => (
                MessageId::ZERO,
                (st.entries_added == st.entries.len() as u64).then_some(0),
            ),
        };
        st.groups.insert(
            group.clone(),
            GroupState {
                last_delivered,
                entries_read,
                consumers: BTreeSet::new(),
                pel: BTreeMap::new(),
            },
        );
        Ok(true)
    }

    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId> {
        self.inner
            .outage
            .check(|| format!("publish to stream `{stream}`"))?;
        let body = self.inner.config.codec.encode(envelope)?;
        let mut id = MessageId::ZERO;
        self.append(stream, std::slice::from_ref(&body), &mut |new| id = new)
            .await?;
        Ok(id)
    }

    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>> {
        self.inner
            .outage
            .check(|| format!("publish batch to stream `{stream}`"))?;
        let codec = self.inner.config.codec;
        // Encode everything first: one bad envelope publishes nothing.
        let bodies = envelopes
            .iter()
            .map(|e| codec.encode(e))
            .collect::<Result<Vec<_>>>()?;
        let mut ids = Vec::with_capacity(bodies.len());
        if !bodies.is_empty() {
            self.append(stream, &bodies, &mut |id| ids.push(id)).await?;
        }
        Ok(ids)
    }

    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        // A block too long to represent waits "forever", as `Duration::MAX` asks.
        let deadline = options
            .block
            .map(|b| Instant::now().checked_add(b).unwrap_or_else(far_future));
        loop {
            self.inner
                .outage
                .check(|| format!("read group `{group}` of stream `{stream}`"))?;
            // Listen before looking, so an append between the look and the wait is not missed.
            let listener = deadline.map(|_| self.inner.appended.listen());
            let got = self.try_read(stream, group, consumer, options.count)?;
            let (Some(deadline), Some(listener), true) = (deadline, listener, got.is_empty()) else {
                return Ok(got);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || crate::rt::timeout(left, listener).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64> {
        self.inner
            .outage
            .check(|| format!("ack on group `{group}` of stream `{stream}`"))?;
        let mut streams = self.inner.streams.lock();
        let Some(g) = streams.get_mut(stream).and_then(|st| st.groups.get_mut(group)) else {
            return Ok(0);
        };
        Ok(ids.iter().filter(|id| g.pel.remove(id).is_some()).count() as u64)
    }

    async fn claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        count: usize,
    ) -> Result<Claimed> {
        self.inner
            .outage
            .check(|| format!("claim on group `{group}` of stream `{stream}`"))?;
        let now = self.inner.clock.now_ms();
        let min_idle = clock::duration_ms(min_idle);
        let mut streams = self.inner.streams.lock();
        let (entries, g) = stream_group(&mut streams, stream, group)?;
        let ids: Vec<MessageId> = g
            .pel
            .iter()
            .filter(|(_, p)| p.claimable(now, min_idle))
            .map(|(id, _)| *id)
            .take(count.max(1))
            .collect();
        Ok(claim_in(
            entries,
            g,
            consumer,
            now,
            min_idle,
            &ids,
            self.inner.config.codec.max_bytes(),
        ))
    }

    async fn claim_ids(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        ids: &[MessageId],
    ) -> Result<Claimed> {
        self.inner
            .outage
            .check(|| format!("claim on group `{group}` of stream `{stream}`"))?;
        let now = self.inner.clock.now_ms();
        let mut streams = self.inner.streams.lock();
        let (entries, g) = stream_group(&mut streams, stream, group)?;
        Ok(claim_in(
            entries,
            g,
            consumer,
            now,
            clock::duration_ms(min_idle),
            ids,
            self.inner.config.codec.max_bytes(),
        ))
    }

    async fn pending_entries(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: Option<ConsumerName>,
        start: MessageId,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        self.inner
            .outage
            .check(|| format!("pending of group `{group}` on stream `{stream}`"))?;
        let now = self.inner.clock.now_ms();
        let streams = self.inner.streams.lock();
        let g = streams
            .get(stream)
            .and_then(|st| st.groups.get(group))
            .ok_or_else(|| Self::no_group(stream, group))?;
        Ok(g.pel
            .range(start..)
            .filter(|(_, p)| consumer.as_ref().is_none_or(|c| p.consumer == *c))
            .take(count)
            .map(|(id, p)| {
                PendingEntry::new(
                    *id,
                    p.consumer.as_str(),
                    Duration::from_millis(now.saturating_sub(p.delivered_at_ms)),
                    p.count,
                )
            })
            .collect())
    }

    async fn renew(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        self.inner
            .outage
            .check(|| format!("renew leases on group `{group}` of stream `{stream}`"))?;
        let now = self.inner.clock.now_ms();
        let mut streams = self.inner.streams.lock();
        let (_, g) = stream_group(&mut streams, stream, group)?;
        Ok(ids
            .iter()
            .filter(|id| match g.pel.get_mut(id) {
                Some(p) if p.consumer == *consumer => {
                    p.delivered_at_ms = now;
                    true
                }
                _ => false,
            })
            .copied()
            .collect())
    }

    async fn release(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
        how: Release,
    ) -> Result<u64> {
        self.inner
            .outage
            .check(|| format!("release entries on group `{group}` of stream `{stream}`"))?;
        let now = self.inner.clock.now_ms();
        let mut streams = self.inner.streams.lock();
        let (_, g) = stream_group(&mut streams, stream, group)?;
        let mut held = 0;
        for id in ids {
            let Some(p) = g.pel.get_mut(id).filter(|p| p.consumer == *consumer) else {
                continue;
            };
            held += 1;
            p.delivered_at_ms = 0;
            match how {
                Release::Unhandled => {
                    p.count = p.count.saturating_sub(1);
                    p.not_before_ms = None;
                }
                Release::RetryAfter(delay) => {
                    p.not_before_ms = Some(now.saturating_add(clock::duration_ms(delay)));
                }
            }
        }
        Ok(held)
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
        self.inner
            .outage
            .check(|| format!("dead-letter entry {id} of stream `{stream}`"))?;
        let now = self.inner.clock.now_ms();
        let mut streams = self.inner.streams.lock();
        let (_, g) = stream_group(&mut streams, stream, group)?;
        if g.pel.remove(&id).is_none() {
            return Ok(None);
        }
        let mut dead_id = MessageId::ZERO;
        streams.entry(dead_letters.clone()).or_default().append(
            now,
            max_len,
            [Bytes::copy_from_slice(record)],
            |i| dead_id = i,
        );
        drop(streams);
        self.inner.appended.notify(usize::MAX);
        Ok(Some(dead_id))
    }

    async fn range(&self, stream: &StreamName, start: MessageId, count: usize) -> Result<Vec<Delivery>> {
        self.inner
            .outage
            .check(|| format!("range of stream `{stream}`"))?;
        let streams = self.inner.streams.lock();
        let Some(st) = streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = st.entries.partition_point(|(e, _)| *e < start);
        Ok(st
            .entries
            .range(from..)
            .take(count)
            .map(|(id, body)| Delivery::new(*id, 0, body.clone()))
            .collect())
    }

    async fn delete_entries(&self, stream: &StreamName, ids: &[MessageId]) -> Result<u64> {
        self.inner
            .outage
            .check(|| format!("delete entries of stream `{stream}`"))?;
        let mut streams = self.inner.streams.lock();
        let Some(st) = streams.get_mut(stream) else {
            return Ok(0);
        };
        let before = st.entries.len();
        let doomed: BTreeSet<&MessageId> = ids.iter().collect();
        st.entries.retain(|(id, _)| !doomed.contains(id));
        Ok((before - st.entries.len()) as u64)
    }

    async fn delete_group(&self, stream: &StreamName, group: &GroupName) -> Result<bool> {
        self.inner
            .outage
            .check(|| format!("delete group `{group}` of stream `{stream}`"))?;
        let mut streams = self.inner.streams.lock();
        Ok(streams
            .get_mut(stream)
            .is_some_and(|st| st.groups.remove(group).is_some()))
    }

    async fn delete_consumer(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        force: bool,
    ) -> Result<u64> {
        self.inner
            .outage
            .check(|| format!("delete consumer `{consumer}` of group `{group}`"))?;
        let mut streams = self.inner.streams.lock();
        let (_, g) = stream_group(&mut streams, stream, group)?;
        let held = g.pel.values().filter(|p| p.consumer == *consumer).count() as u64;
        if held > 0 && !force {
            return Err(crate::bus::consumer_busy(stream, group, consumer, held));
        }
        g.pel.retain(|_, p| p.consumer != *consumer);
        g.consumers.remove(consumer);
        Ok(held)
    }

    async fn ack_and_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        acks: &[MessageId],
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.ack(stream, group, acks).await?;
        self.read(stream, group, consumer, options).await
    }

    async fn pending(&self, stream: &StreamName, group: &GroupName) -> Result<PendingSummary> {
        self.inner
            .outage
            .check(|| format!("pending of group `{group}` on stream `{stream}`"))?;
        let streams = self.inner.streams.lock();
        let g = streams
            .get(stream)
            .and_then(|st| st.groups.get(group))
            .ok_or_else(|| Self::no_group(stream, group))?;
        let mut consumers = BTreeMap::new();
        for p in g.pel.values() {
            *consumers.entry(p.consumer.to_string()).or_insert(0) += 1;
        }
        Ok(PendingSummary {
            count: g.pel.len() as u64,
            lowest: g.pel.keys().next().copied(),
            highest: g.pel.keys().next_back().copied(),
            consumers,
        })
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        self.inner.outage.check(|| format!("info of stream `{stream}`"))?;
        let streams = self.inner.streams.lock();
        let st = streams
            .get(stream)
            .ok_or_else(|| Error::not_found(format!("stream `{stream}` does not exist")))?;
        Ok(StreamInfo {
            length: st.entries.len() as u64,
            first_id: st.entries.front().map(|(id, _)| *id),
            last_id: st.entries.back().map(|(id, _)| *id),
            groups: st
                .groups
                .iter()
                .map(|(name, g)| GroupInfo {
                    name: name.to_string(),
                    consumers: g.consumers.len() as u64,
                    pending: g.pel.len() as u64,
                    last_delivered: g.last_delivered,
                    lag: Some(st.lag(g)),
                    entries_read: g.entries_read,
                })
                .collect(),
        })
    }

    async fn backlog(&self, stream: &StreamName, group: &GroupName) -> Result<Backlog> {
        self.inner
            .outage
            .check(|| format!("backlog of group `{group}` on stream `{stream}`"))?;
        let streams = self.inner.streams.lock();
        let st = streams.get(stream).ok_or_else(|| Self::no_group(stream, group))?;
        let g = st
            .groups
            .get(group)
            .ok_or_else(|| Self::no_group(stream, group))?;
        Ok(Backlog {
            length: st.entries.len() as u64,
            pending: g.pel.len() as u64,
            lag: Some(st.lag(g)),
            max_len: self.inner.config.max_len_of(stream),
            trimmed_undelivered: st.trimmed_undelivered(g),
        })
    }

    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()> {
        self.inner
            .outage
            .check(|| format!("publish to topic `{topic}`"))?;
        self.inner.config.codec.encode(envelope)?;
        let mut subs = self.inner.topics.lock();
        subs.retain_mut(|(pattern, tx, stats)| {
            if !pattern.matches(topic) {
                return !tx.is_closed();
            }
            match tx.try_send(TopicEvent { topic: topic.clone(), envelope: envelope.clone() }) {
                Ok(()) => true,
                Err(e) if e.is_full() => {
                    stats.record_dropped();
                    tracing::debug!(event = "topic_event_dropped", topic = %topic, pattern = %pattern, "subscriber too slow");
                    true
                }
                Err(_) => false,
            }
        });
        Ok(())
    }

    async fn subscribe(&self, pattern: &TopicPattern) -> Result<Subscription> {
        self.inner.outage.check(|| format!("subscribe to `{pattern}`"))?;
        // futures' channel holds one slot per sender on top of its buffer, and
        // there is one sender: exactly `TOPIC_BUFFER` events fit.
        let (tx, rx) = mpsc::channel(TOPIC_BUFFER - 1);
        let stats = Arc::new(SubscriptionStats::default());
        self.inner
            .topics
            .lock()
            .push((pattern.clone(), tx, stats.clone()));
        Ok(Subscription::with_stats(rx, stats))
    }
}

/// An instant a century away: "never" for timeouts that do not fit in an `Instant`.
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600))
        .unwrap_or(now)
}
