use super::{
    connection::{map_err, CancelSlot},
    guard::{Guarded, Orphan},
    keys::Keys,
    parse::{self, IdArg, BODY_FIELD},
    scripts,
    server::AckedTrim,
    Conn,
};
use crate::{
    bus_config::{BacklogGuard, BacklogSample, BusConfig},
    clock,
    error::{Error, Result},
    name::{ConsumerName, GroupName, StreamName, Topic, TopicPattern},
    Backlog, Capabilities, Claimed, Delivery, Envelope, EventBus, MessageId, Overflow, PendingEntry,
    PendingSummary, ReadOptions, Release, StartFrom, StreamInfo, Subscription, TrimPolicy,
};
use async_trait::async_trait;
use redis::Value;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Longest retry delay and read block accepted (30 days); longer ones are clamped.
const MAX_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;

/// A `COUNT` argument Redis accepts: it rejects anything above `i64::MAX`,
/// while `usize::MAX` is a natural "no limit" for a caller.
fn count_arg(n: usize) -> u64 {
    (n as u64).min(i64::MAX as u64)
}

/// Redis [`EventBus`] over Streams (`XADD MAXLEN ~`, `XREADGROUP`, `XACK`,
/// `XAUTOCLAIM`) and pub/sub for topics.
///
/// A publish is one round trip. The backlog guard rides along with one
/// publish per stream per [`BacklogPolicy::sample_every`](crate::BacklogPolicy)
/// (`XLEN` and `XINFO GROUPS` pipelined with that `XADD`), never on its own.
#[derive(Debug, Clone)]
pub struct RedisBus {
    conn: Arc<Conn>,
    keys: Keys,
    config: Arc<BusConfig>,
    guard: Arc<BacklogGuard>,
    acked_trim: Arc<AckedTrim>,
    /// Replicas that must acknowledge each publish, and how long to wait.
    replicas: Option<(u32, Duration)>,
}

impl RedisBus {
    pub(crate) fn new(conn: Arc<Conn>, keys: Keys, config: BusConfig, acked_trim: Arc<AckedTrim>) -> Self {
        let guard = Arc::new(BacklogGuard::new(config.backlog));
        Self {
            conn,
            keys,
            config: Arc::new(config),
            guard,
            acked_trim,
            replicas: None,
        }
    }

    /// Require `replicas` replicas to acknowledge each publish within `timeout`.
    pub(crate) fn with_replicas(mut self, replicas: Option<(u32, Duration)>) -> Self {
        self.replicas = replicas;
        self
    }

    /// `XADD` each body and `WAIT` for `replicas` acknowledgements in one
    /// pipeline on one blocking-read connection: `WAIT` counts the writes of
    /// its own connection, and blocks that connection while it waits, so it
    /// must not share the multiplexed one.
    async fn publish_replicated(
        &self,
        stream: &StreamName,
        bodies: &[&[u8]],
        (replicas, timeout): (u32, Duration),
    ) -> Result<Vec<MessageId>> {
        if let TrimPolicy::KeepUnacknowledged { .. } = self.config.trim_of(stream) {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                format!(
                    "publish to stream `{stream}` failed: replica acknowledgement is not supported \
                     on streams that keep unacknowledged entries"
                ),
            ));
        }
        let max_len = self.config.max_len_of(stream);
        let mut pipe = redis::pipe();
        for body in bodies {
            pipe.add_command(Self::xadd(stream, Some(max_len), body));
        }
        let now = clock::unix_ms();
        let sample = self.guard.sample_due(stream, now);
        if sample {
            pipe.cmd("XLEN")
                .arg(stream.as_str())
                .cmd("XINFO")
                .arg("GROUPS")
                .arg(stream.as_str());
        }
        // `WAIT n 0` would wait forever.
        let wait_ms = clock::duration_ms(timeout).clamp(1, MAX_DELAY_MS);
        pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
        let slot = CancelSlot::uncancellable();
        let wait = Duration::from_millis(wait_ms).saturating_add(self.conn.response_timeout);
        let replies = self
            .conn
            .current()
            .blocking
            .query(&pipe, wait, &slot)
            .await
            .map_err(|e| map_err(e, format!("publish to stream `{stream}`")))?
            .unwrap_or_default();
        let Some((acked, mut xadds)) = replies.split_last() else {
            return Err(Error::new(
                crate::ErrorKind::Protocol,
                "XADD and WAIT returned nothing",
            ));
        };
        if let (true, [rest @ .., len, groups]) = (sample, xadds) {
            self.observe(stream, max_len, now, len, groups);
            xadds = rest;
        }
        let ids = xadds.iter().map(parse::message_id).collect::<Result<Vec<_>>>()?;
        let acked = redis::from_redis_value_ref::<u64>(acked)
            .map_err(|e| Error::new(crate::ErrorKind::Protocol, "WAIT returned no count").with_source(e))?;
        if acked < u64::from(replicas) {
            let last = ids.last().map(|id| id.to_string()).unwrap_or_default();
            return Err(Error::new(
                crate::ErrorKind::NotReplicated,
                format!(
                    "publish to stream `{stream}` failed: {acked} of {replicas} replicas acknowledged \
                     entry {last} within {timeout:?} (it is on the primary, and lost if the primary fails first)"
                ),
            ));
        }
        Ok(ids)
    }

    /// `XADD`, trimmed to about `max_len` when given.
    fn xadd(stream: &StreamName, max_len: Option<u64>, body: &[u8]) -> redis::Cmd {
        let mut c = Self::xadd_head(stream, max_len, body.len());
        c.arg(body);
        c
    }

    /// `XADD` up to its body field's name, its buffers sized once for a body
    /// of `body_len` bytes (redis-rs grows an empty command's buffer argument
    /// by argument: four reallocations for a 250-byte body).
    fn xadd_head(stream: &StreamName, max_len: Option<u64>, body_len: usize) -> redis::Cmd {
        // "XADD" "MAXLEN" "~" <20 digits> "*" "env": 35 bytes.
        let mut c = redis::Cmd::with_capacity(8, 40 + stream.as_str().len() + body_len);
        c.arg("XADD").arg(stream.as_str());
        if let Some(max_len) = max_len {
            c.arg("MAXLEN").arg("~").arg(max_len);
        }
        c.arg("*").arg(BODY_FIELD);
        c
    }

    /// One publish: the envelope encoded into this thread's scratch buffer
    /// and copied once into a pre-sized `XADD` (no allocation but the
    /// command's own), sent alone in steady state.
    async fn publish_one(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId> {
        let max_len = self.config.max_len_of(stream);
        let codec = &self.config.codec;
        let xadd = |max_len| -> Result<redis::Cmd> {
            codec.with_encoded(envelope, |body| Self::xadd(stream, max_len, body))
        };
        let policy = self.config.trim_of(stream);
        let TrimPolicy::KeepUnacknowledged { overflow, .. } = policy else {
            return self.append_one(stream, max_len, xadd(Some(max_len))?).await;
        };
        let near_cap = self
            .guard
            .est_len(stream)
            .is_none_or(|len| len.saturating_add(1) > max_len);
        if near_cap {
            let body = codec.encode(envelope)?;
            let ids = self
                .keep_add(stream, &[&body[..]], max_len, policy.hard_cap(max_len), overflow)
                .await?;
            return ids
                .into_iter()
                .next()
                .ok_or_else(|| Error::new(crate::ErrorKind::Protocol, "XADD returned no id"));
        }
        let cmd = xadd(None)?;
        self.guard.add_len(stream, 1);
        self.append_one(stream, max_len, cmd).await
    }

    /// [`append`](Self::append) of one `XADD`: no vectors when no sample is due.
    async fn append_one(&self, stream: &StreamName, max_len: u64, xadd: redis::Cmd) -> Result<MessageId> {
        let now = clock::unix_ms();
        if self.guard.sample_due(stream, now) {
            let mut ids = self.append_sampled(stream, max_len, now, vec![xadd]).await?;
            return ids
                .pop()
                .ok_or_else(|| Error::new(crate::ErrorKind::Protocol, "XADD returned no id"));
        }
        let reply: Value = xadd
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("publish to stream `{stream}`")))?;
        parse::message_id(&reply)
    }

    /// Append `bodies` as the stream's trim policy says. Keeping
    /// unacknowledged entries costs nothing while the stream is clearly below
    /// its cap (a plain `XADD`); near it, the append runs as one script that
    /// trims what every group acknowledged and enforces the hard cap.
    async fn publish_bodies(&self, stream: &StreamName, bodies: &[&[u8]]) -> Result<Vec<MessageId>> {
        let max_len = self.config.max_len_of(stream);
        let policy = self.config.trim_of(stream);
        let TrimPolicy::KeepUnacknowledged { overflow, .. } = policy else {
            let xadds = bodies
                .iter()
                .map(|b| Self::xadd(stream, Some(max_len), b))
                .collect();
            return self.append(stream, xadds).await;
        };
        let n = bodies.len() as u64;
        let near_cap = self
            .guard
            .est_len(stream)
            .is_none_or(|len| len.saturating_add(n) > max_len);
        if near_cap {
            return self
                .keep_add(stream, bodies, max_len, policy.hard_cap(max_len), overflow)
                .await;
        }
        self.guard.add_len(stream, n);
        self.append(
            stream,
            bodies.iter().map(|b| Self::xadd(stream, None, b)).collect(),
        )
        .await
    }

    /// The keep-unacknowledged append script, retried while `overflow` says wait.
    async fn keep_add(
        &self,
        stream: &StreamName,
        bodies: &[&[u8]],
        max_len: u64,
        hard_cap: u64,
        overflow: Overflow,
    ) -> Result<Vec<MessageId>> {
        let deadline = match overflow {
            Overflow::Wait(d) => Instant::now().checked_add(d),
            _ => None,
        };
        let mode = if overflow == Overflow::DropOldest {
            "drop"
        } else {
            "reject"
        };
        let acked = self.acked_trim.get(&mut self.conn.manager()).await;
        let mut pause = Duration::from_millis(5);
        loop {
            let mut call = scripts::KEEP_ADD.key(stream.as_str());
            call.arg(max_len).arg(hard_cap).arg(mode).arg(BODY_FIELD);
            call.arg(if acked { "1" } else { "0" });
            for body in bodies {
                call.arg(*body);
            }
            let reply: Value = call
                .invoke_async(&mut self.conn.manager())
                .await
                .map_err(|e| map_err(e, format!("publish to stream `{stream}`")))?;
            let (length, ids) = parse::keep_add_reply(&reply)?;
            self.guard.set_len(stream, length);
            match ids {
                Some(ids) => return Ok(ids),
                None if deadline.is_some_and(|d| Instant::now() + pause < d) => {
                    crate::rt::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                None => return Err(crate::bus_config::backpressure(stream, length, hard_cap)),
            }
        }
    }

    /// `XREADGROUP` (after `XACK` of `acks`, in the same round trip), safe
    /// to drop at any point: see [`Guarded`].
    fn guarded_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        acks: &[MessageId],
        options: ReadOptions,
    ) -> Guarded<Vec<Delivery>> {
        let mut pipe = redis::pipe();
        if !acks.is_empty() {
            let ack = pipe.cmd("XACK").arg(stream.as_str()).arg(group.as_str());
            for id in acks {
                ack.arg(IdArg(*id));
            }
            pipe.ignore();
        }
        let read = pipe
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group.as_str())
            .arg(consumer.as_str())
            .arg("COUNT")
            .arg(count_arg(options.count.max(1)));
        let block = options
            .block
            // BLOCK 0 would mean "forever".
            .map(|b| Duration::from_millis(clock::duration_ms(b).clamp(1, MAX_DELAY_MS)));
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        read.arg("STREAMS").arg(stream.as_str()).arg(">");
        let what = format!("read group `{group}` of stream `{stream}`");
        let conn = self.conn.clone();
        let orphan = self.release_orphans(stream, group, consumer);
        match block {
            Some(block) => {
                let slot = Arc::new(CancelSlot::default());
                let wait = block.saturating_add(conn.response_timeout);
                let manager = conn.manager();
                let call = {
                    let slot = slot.clone();
                    async move {
                        match conn.current().blocking.query(&pipe, wait, &slot).await {
                            Ok(Some(replies)) => parse::read_reply(replies.last().unwrap_or(&Value::Nil)),
                            Ok(None) => Ok(Vec::new()),
                            Err(e) => Err(map_err(e, what)),
                        }
                    }
                };
                Guarded::new(Box::pin(call), orphan).unblock_with(slot, manager)
            }
            None => {
                let call = async move {
                    let replies: Vec<Value> = pipe
                        .query_async(&mut conn.manager())
                        .await
                        .map_err(|e| map_err(e, what))?;
                    parse::read_reply(replies.last().unwrap_or(&Value::Nil))
                };
                Guarded::new(Box::pin(call), orphan)
            }
        }
    }

    /// Run the claim script (over the pending list, or over `ids`), safe to drop.
    fn guarded_claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        want: usize,
        ids: Option<&[MessageId]>,
    ) -> Guarded<Claimed> {
        let mut call = scripts::CLAIM.key(stream.as_str());
        call.key(self.keys.due(stream, group))
            .arg(group.as_str())
            .arg(consumer.as_str())
            .arg(clock::duration_ms(min_idle).min(MAX_DELAY_MS))
            .arg(count_arg(want));
        match ids {
            None => {
                call.arg("auto");
            }
            Some(ids) => {
                call.arg("ids");
                for id in ids {
                    call.arg(IdArg(*id));
                }
            }
        }
        let what = format!("claim on group `{group}` of stream `{stream}`");
        let conn = self.conn.clone();
        let run = async move {
            let reply: Value = call
                .invoke_async(&mut conn.manager())
                .await
                .map_err(|e| map_err(e, what))?;
            let (deliveries, deleted) = parse::claim_script_reply(&reply)?;
            Ok(Claimed { deliveries, deleted })
        };
        let release = self.release_orphans(stream, group, consumer);
        Guarded::new(
            Box::pin(run),
            Box::new(move |claimed: Claimed| release(claimed.deliveries)),
        )
    }

    /// Hands entries a caller never saw back to the group, uncounted.
    fn release_orphans(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
    ) -> Orphan<Vec<Delivery>> {
        let (bus, stream, group, consumer) = (self.clone(), stream.clone(), group.clone(), consumer.clone());
        Box::new(move |got: Vec<Delivery>| {
            Box::pin(async move {
                if got.is_empty() {
                    return;
                }
                let ids: Vec<MessageId> = got.iter().map(|d| d.id).collect();
                match bus
                    .release(&stream, &group, &consumer, &ids, Release::Unhandled)
                    .await
                {
                    Ok(n) => {
                        tracing::debug!(event = "abandoned_entries_released", stream = %stream, group = %group, count = n)
                    }
                    Err(e) => tracing::warn!(
                        event = "abandoned_entries_not_released",
                        stream = %stream,
                        group = %group,
                        count = ids.len(),
                        error = %e,
                        "entries stay pending until another consumer reclaims them"
                    ),
                }
            })
        })
    }

    /// Send `xadds` in one round trip, with the backlog sample when it is due.
    async fn append(&self, stream: &StreamName, xadds: Vec<redis::Cmd>) -> Result<Vec<MessageId>> {
        let max_len = self.config.max_len_of(stream);
        let now = clock::unix_ms();
        let sample = self.guard.sample_due(stream, now);
        if sample {
            return self.append_sampled(stream, max_len, now, xadds).await;
        }
        let replies: Vec<Value> = if xadds.len() == 1 {
            vec![xadds[0]
                .query_async(&mut self.conn.manager())
                .await
                .map_err(|e| map_err(e, format!("publish to stream `{stream}`")))?]
        } else {
            let mut p = redis::pipe();
            for c in xadds {
                p.add_command(c);
            }
            p.query_async(&mut self.conn.manager())
                .await
                .map_err(|e| map_err(e, format!("publish to stream `{stream}`")))?
        };
        replies.iter().map(parse::message_id).collect()
    }

    /// `xadds` with the backlog sample pipelined after them.
    async fn append_sampled(
        &self,
        stream: &StreamName,
        max_len: u64,
        now: u64,
        xadds: Vec<redis::Cmd>,
    ) -> Result<Vec<MessageId>> {
        let n = xadds.len();
        let mut p = redis::pipe();
        for c in xadds {
            p.add_command(c);
        }
        p.cmd("XLEN")
            .arg(stream.as_str())
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(stream.as_str());
        let replies: Vec<Value> = p
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("publish to stream `{stream}`")))?;
        if let [.., len, groups] = &replies[..] {
            self.observe(stream, max_len, now, len, groups);
        }
        replies[..n].iter().map(parse::message_id).collect()
    }

    /// Feed the backlog guard the `XLEN` and `XINFO GROUPS` replies of a sample.
    /// Dead-lettering on Cluster when the dead-letter stream is in another
    /// slot than `stream`, so no script can touch both: append the record,
    /// then ack the entry if it is still pending (one script on `stream`'s
    /// slot), else delete the record again. Not atomic: a crash between the
    /// two steps leaves the entry pending with its record already written,
    /// so it may be dead-lettered twice.
    #[cfg(feature = "redis-cluster")]
    async fn dead_letter_across_slots(
        &self,
        stream: &StreamName,
        group: &GroupName,
        id: MessageId,
        dead_letters: &StreamName,
        record: &[u8],
        max_len: u64,
    ) -> Result<Option<MessageId>> {
        static ACK_IF_PENDING: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"
local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #row == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
",
            )
        });
        let what = || format!("dead-letter entry {id} of stream `{stream}` to `{dead_letters}`");
        let pending: Value = redis::cmd("XPENDING")
            .arg(stream.as_str())
            .arg(group.as_str())
            .arg(IdArg(id))
            .arg(IdArg(id))
            .arg(1)
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, what()))?;
        if matches!(&pending, Value::Array(rows) if rows.is_empty()) {
            return Ok(None);
        }
        let dead: Value = redis::cmd("XADD")
            .arg(dead_letters.as_str())
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len.max(1))
            .arg("*")
            .arg(BODY_FIELD)
            .arg(record)
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, what()))?;
        let dead = parse::message_id(&dead)?;
        let acked: i64 = ACK_IF_PENDING
            .key(stream.as_str())
            .key(self.keys.due(stream, group))
            .arg(group.as_str())
            .arg(IdArg(id))
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, what()))?;
        if acked == 1 {
            return Ok(Some(dead));
        }
        redis::cmd("XDEL")
            .arg(dead_letters.as_str())
            .arg(IdArg(dead))
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, what()))?;
        Ok(None)
    }

    fn observe(&self, stream: &StreamName, max_len: u64, now: u64, len: &Value, groups: &Value) {
        let length = redis::from_redis_value_ref::<u64>(len).unwrap_or(0);
        let groups = parse::groups(groups).unwrap_or_default();
        let sample = BacklogSample {
            length,
            pending: groups.iter().map(|g| g.pending).max().unwrap_or(0),
            max_len,
            trimmed_undelivered: groups
                .iter()
                .filter_map(|g| parse::trimmed_undelivered(g.lag, length))
                .max()
                .unwrap_or(0),
        };
        self.guard.observe(stream, now, sample);
    }
}

#[async_trait]
impl EventBus for RedisBus {
    fn capabilities(&self) -> Capabilities {
        // Redis trims `MAXLEN ~` by whole radix-tree nodes, 100 entries by default
        // (`stream-node-max-entries`).
        Capabilities::shared(100)
    }

    fn max_len(&self, stream: &StreamName) -> u64 {
        self.config.max_len_of(stream)
    }

    fn trim_policy(&self, stream: &StreamName) -> TrimPolicy {
        self.config.trim_of(stream)
    }

    async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, "ping bus"))
    }

    async fn ensure_group(&self, stream: &StreamName, group: &GroupName, start: StartFrom) -> Result<bool> {
        let from = match start {
            StartFrom::Latest => "$",
            StartFrom::Beginning => "0",
        };
        // Only an existing group means "already there"; anything else (a key
        // of the wrong type, a lost connection) is a real failure.
        let created: u64 = scripts::CREATE_GROUP
            .key(stream.as_str())
            .arg(group.as_str())
            .arg(from)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("create group `{group}` on stream `{stream}`")))?;
        Ok(created == 1)
    }

    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId> {
        if let Some(replicas) = self.replicas {
            let body = self.config.codec.encode(envelope)?;
            let mut ids = self.publish_replicated(stream, &[&body[..]], replicas).await?;
            return ids
                .pop()
                .ok_or_else(|| Error::new(crate::ErrorKind::Protocol, "XADD returned no id"));
        }
        self.publish_one(stream, envelope).await
    }

    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        // Encode everything first: one bad envelope publishes nothing.
        let bodies = envelopes
            .iter()
            .map(|e| self.config.codec.encode(e))
            .collect::<Result<Vec<_>>>()?;
        let slices: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        if let Some(replicas) = self.replicas {
            return self.publish_replicated(stream, &slices, replicas).await;
        }
        self.publish_bodies(stream, &slices).await
    }

    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.guarded_read(stream, group, consumer, &[], options).await
    }

    async fn ack_and_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        acks: &[MessageId],
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.guarded_read(stream, group, consumer, acks, options).await
    }

    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream.as_str()).arg(group.as_str());
        for id in ids {
            cmd.arg(IdArg(*id));
        }
        cmd.query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("ack on group `{group}` of stream `{stream}`")))
    }

    async fn claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        count: usize,
    ) -> Result<Claimed> {
        self.guarded_claim(stream, group, consumer, min_idle, count.max(1), None)
            .await
    }

    async fn claim_ids(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        min_idle: Duration,
        ids: &[MessageId],
    ) -> Result<Claimed> {
        if ids.is_empty() {
            return Ok(Claimed::default());
        }
        self.guarded_claim(stream, group, consumer, min_idle, ids.len(), Some(ids))
            .await
    }

    async fn pending_entries(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: Option<ConsumerName>,
        start: MessageId,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(stream.as_str())
            .arg(group.as_str())
            .arg(IdArg(start))
            .arg("+")
            .arg(count_arg(count));
        if let Some(c) = consumer {
            cmd.arg(c.as_str());
        }
        let rows: Value = cmd
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("pending of group `{group}` on stream `{stream}`")))?;
        parse::pending_rows(&rows)
    }

    async fn renew(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = scripts::RENEW.key(stream.as_str());
        call.arg(group.as_str()).arg(consumer.as_str());
        for id in ids {
            call.arg(IdArg(*id));
        }
        let held: Value = call
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("renew leases on group `{group}` of stream `{stream}`")))?;
        parse::ids(&held)
    }

    async fn release(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        ids: &[MessageId],
        how: Release,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (mode, delay) = match how {
            Release::Unhandled => ("unhandled", 0),
            Release::RetryAfter(d) => ("retry", clock::duration_ms(d).min(MAX_DELAY_MS)),
        };
        let mut call = scripts::RELEASE.key(stream.as_str());
        call.key(self.keys.due(stream, group))
            .arg(group.as_str())
            .arg(consumer.as_str())
            .arg(mode)
            .arg(delay);
        for id in ids {
            call.arg(IdArg(*id));
        }
        call.invoke_async(&mut self.conn.manager()).await.map_err(|e| {
            map_err(
                e,
                format!("release entries on group `{group}` of stream `{stream}`"),
            )
        })
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
        #[cfg(feature = "redis-cluster")]
        if self.keys.is_cluster()
            && redis::cluster_routing::Slot::for_key(stream.as_str())
                != redis::cluster_routing::Slot::for_key(dead_letters.as_str())
        {
            return self
                .dead_letter_across_slots(stream, group, id, dead_letters, record, max_len)
                .await;
        }
        let reply: Value = scripts::DEAD_LETTER
            .key(stream.as_str())
            .key(dead_letters.as_str())
            .key(self.keys.due(stream, group))
            .arg(group.as_str())
            .arg(IdArg(id))
            .arg(max_len.max(1))
            .arg(BODY_FIELD)
            .arg(record)
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| {
                map_err(
                    e,
                    format!("dead-letter entry {id} of stream `{stream}` to `{dead_letters}`"),
                )
            })?;
        match reply {
            Value::Nil => Ok(None),
            id => parse::message_id(&id).map(Some),
        }
    }

    async fn range(&self, stream: &StreamName, start: MessageId, count: usize) -> Result<Vec<Delivery>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream.as_str())
            .arg(IdArg(start))
            .arg("+")
            .arg("COUNT")
            .arg(count_arg(count))
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("range of stream `{stream}`")))?;
        parse::entries(&reply, 0)
    }

    async fn delete_entries(&self, stream: &StreamName, ids: &[MessageId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(stream.as_str());
        for id in ids {
            cmd.arg(IdArg(*id));
        }
        cmd.query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("delete entries of stream `{stream}`")))
    }

    async fn delete_group(&self, stream: &StreamName, group: &GroupName) -> Result<bool> {
        let (destroyed, _): (Value, Value) = redis::pipe()
            .cmd("XGROUP")
            .arg("DESTROY")
            .arg(stream.as_str())
            .arg(group.as_str())
            .cmd("DEL")
            .arg(self.keys.due(stream, group))
            .query_async(&mut self.conn.manager())
            .await
            .or_else(|e| {
                // A missing stream has no group to delete.
                let text = e.to_string().to_ascii_lowercase();
                let missing = text.contains("no such key") || text.contains("requires the key to exist");
                if missing {
                    Ok((Value::Int(0), Value::Nil))
                } else {
                    Err(e)
                }
            })
            .map_err(|e| map_err(e, format!("delete group `{group}` of stream `{stream}`")))?;
        Ok(matches!(destroyed, Value::Int(1)))
    }

    async fn delete_consumer(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        force: bool,
    ) -> Result<u64> {
        let (deleted, held): (u64, u64) = scripts::DELETE_CONSUMER
            .key(stream.as_str())
            .arg(group.as_str())
            .arg(consumer.as_str())
            .arg(if force { "1" } else { "0" })
            .invoke_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("delete consumer `{consumer}` of group `{group}`")))?;
        if deleted == 0 {
            return Err(crate::bus::consumer_busy(stream, group, consumer, held));
        }
        Ok(held)
    }

    async fn pending(&self, stream: &StreamName, group: &GroupName) -> Result<PendingSummary> {
        let reply: Value = redis::cmd("XPENDING")
            .arg(stream.as_str())
            .arg(group.as_str())
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("pending of group `{group}` on stream `{stream}`")))?;
        parse::pending_summary(&reply)
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        let (info, groups): (Value, Value) = redis::pipe()
            .cmd("XINFO")
            .arg("STREAM")
            .arg(stream.as_str())
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(stream.as_str())
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("info of stream `{stream}`")))?;
        parse::stream_info(&info, &groups)
    }

    async fn backlog(&self, stream: &StreamName, group: &GroupName) -> Result<Backlog> {
        let what = || format!("backlog of group `{group}` on stream `{stream}`");
        let (length, groups): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(stream.as_str())
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(stream.as_str())
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, what()))?;
        let g = parse::groups(&groups)?
            .into_iter()
            .find(|g| g.name == group.as_str())
            .ok_or_else(|| {
                Error::not_found(format!(
                    "consumer group `{group}` of stream `{stream}` does not exist"
                ))
            })?;
        Ok(Backlog {
            length,
            pending: g.pending,
            lag: g.lag,
            max_len: self.config.max_len_of(stream),
            trimmed_undelivered: parse::trimmed_undelivered(g.lag, length),
        })
    }

    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()> {
        super::topics::publish(&self.conn, &self.keys, self.config.codec, topic, envelope).await
    }

    async fn subscribe(&self, pattern: &TopicPattern) -> Result<Subscription> {
        super::topics::subscribe(self.conn.clone(), &self.keys, self.config.codec, pattern).await
    }
}
