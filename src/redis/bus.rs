use super::{
    connection::map_err,
    keys::Keys,
    parse::{self, BODY_FIELD},
    Conn,
};
use crate::{
    backend_support::{BacklogGuard, BusConfig},
    clock,
    error::{Error, Result},
    name::{ConsumerName, GroupName, StreamName, Topic, TopicPattern},
    Backlog, Capabilities, Claimed, Delivery, Envelope, EventBus, MessageId, PendingSummary, ReadOptions,
    StartFrom, StreamInfo, Subscription, TopicEvent,
};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::Value;
use std::{sync::Arc, time::Duration};

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
}

impl RedisBus {
    pub(crate) fn new(conn: Arc<Conn>, keys: Keys, config: BusConfig) -> Self {
        let guard = Arc::new(BacklogGuard::new(config.backlog));
        Self {
            conn,
            keys,
            config: Arc::new(config),
            guard,
        }
    }

    fn xadd(stream: &StreamName, max_len: u64, body: &[u8]) -> redis::Cmd {
        let mut c = redis::cmd("XADD");
        c.arg(stream.as_str())
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg(BODY_FIELD)
            .arg(body);
        c
    }

    /// Send `xadds` in one round trip, with the backlog sample when it is due.
    async fn append(&self, stream: &StreamName, xadds: Vec<redis::Cmd>) -> Result<Vec<MessageId>> {
        let n = xadds.len();
        let max_len = self.config.max_len_of(stream);
        let now = clock::unix_ms();
        let sample = self.guard.sample_due(stream, now);
        let mut conn = self.conn.manager();
        let fail = |e| map_err(e, format!("publish to stream `{stream}`"));
        let replies: Vec<Value> = if n == 1 && !sample {
            vec![xadds[0].query_async(&mut conn).await.map_err(fail)?]
        } else {
            let mut p = redis::pipe();
            for c in xadds {
                p.add_command(c);
            }
            if sample {
                p.cmd("XLEN")
                    .arg(stream.as_str())
                    .cmd("XINFO")
                    .arg("GROUPS")
                    .arg(stream.as_str());
            }
            p.query_async(&mut conn).await.map_err(fail)?
        };
        if sample {
            if let [.., len, groups] = &replies[..] {
                let length = redis::from_redis_value_ref::<u64>(len).unwrap_or(0);
                self.guard
                    .observe(stream, now, length, parse::max_pending(groups), max_len);
            }
        }
        replies[..n].iter().map(parse::message_id).collect()
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
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream.as_str())
            .arg(group.as_str())
            .arg(from)
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.conn.manager())
            .await;
        match created {
            Ok(()) => Ok(true),
            // Only BUSYGROUP means "already there"; anything else (a key of the
            // wrong type, a lost connection) is a real failure.
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(map_err(e, format!("create group `{group}` on stream `{stream}`"))),
        }
    }

    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId> {
        let body = self.config.codec.encode(envelope)?;
        let ids = self
            .append(
                stream,
                vec![Self::xadd(stream, self.config.max_len_of(stream), &body)],
            )
            .await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::new(crate::ErrorKind::Protocol, "XADD returned no id"))
    }

    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let max_len = self.config.max_len_of(stream);
        // Encode everything first: one bad envelope publishes nothing.
        let bodies = envelopes
            .iter()
            .map(|e| self.config.codec.encode(e))
            .collect::<Result<Vec<_>>>()?;
        self.append(
            stream,
            bodies.iter().map(|b| Self::xadd(stream, max_len, b)).collect(),
        )
        .await
    }

    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group.as_str())
            .arg(consumer.as_str())
            .arg("COUNT")
            .arg(options.count.max(1));
        if let Some(block) = options.block {
            // BLOCK 0 would mean "forever".
            cmd.arg("BLOCK").arg((block.as_millis() as u64).max(1));
        }
        cmd.arg("STREAMS").arg(stream.as_str()).arg(">");
        let what = || format!("read group `{group}` of stream `{stream}`");
        let reply: Value = match options.block {
            Some(block) => self
                .conn
                .blocking
                .query(&cmd, block + self.conn.response_timeout)
                .await
                .map_err(|e| map_err(e, what()))?,
            None => cmd
                .query_async(&mut self.conn.manager())
                .await
                .map_err(|e| map_err(e, what()))?,
        };
        parse::read_reply(&reply)
    }

    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream.as_str()).arg(group.as_str());
        for id in ids {
            cmd.arg(id.to_string());
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
        let mut conn = self.conn.manager();
        let what = || format!("claim on group `{group}` of stream `{stream}`");
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream.as_str())
            .arg(group.as_str())
            .arg(consumer.as_str())
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, what()))?;
        let (mut deliveries, deleted) = parse::autoclaim_reply(&reply)?;
        // XAUTOCLAIM does not return delivery counts; read them back for the
        // claimed range, now owned by `consumer`.
        if let (Some(lo), Some(hi)) = (deliveries.first().map(|d| d.id), deliveries.last().map(|d| d.id)) {
            let rows: Value = redis::cmd("XPENDING")
                .arg(stream.as_str())
                .arg(group.as_str())
                .arg(lo.to_string())
                .arg(hi.to_string())
                .arg(deliveries.len())
                .arg(consumer.as_str())
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, what()))?;
            let counts = parse::pending_counts(&rows)?;
            for d in &mut deliveries {
                d.delivery_count = counts.get(&d.id).copied().unwrap_or(1);
            }
        }
        Ok(Claimed { deliveries, deleted })
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
        })
    }

    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()> {
        let body = self.config.codec.encode(envelope)?;
        redis::cmd("PUBLISH")
            .arg(self.keys.topic(topic))
            .arg(&body[..])
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("publish to topic `{topic}`")))
    }

    async fn subscribe(&self, pattern: &TopicPattern) -> Result<Subscription> {
        let what = || format!("subscribe to `{pattern}`");
        let mut pubsub = self
            .conn
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| map_err(e, what()))?;
        pubsub
            .psubscribe(self.keys.topic_pattern(pattern))
            .await
            .map_err(|e| map_err(e, what()))?;
        let prefix = self.keys.topic_prefix();
        let pattern = pattern.clone();
        let codec = self.config.codec;
        let events = pubsub.into_on_message().filter_map(move |msg| {
            let event = msg
                .get_channel_name()
                .strip_prefix(&prefix)
                .and_then(|t| Topic::new(t).ok())
                // Redis's `*` spans dots; ours matches exactly one token.
                .filter(|t| pattern.matches(t))
                .and_then(|topic| match codec.decode(msg.get_payload_bytes()) {
                    Ok(envelope) => Some(TopicEvent { topic, envelope }),
                    Err(e) => {
                        tracing::warn!(event = "topic_event_unreadable", topic = %topic, error = %e);
                        None
                    }
                });
            std::future::ready(event)
        });
        Ok(Subscription::new(events))
    }
}
