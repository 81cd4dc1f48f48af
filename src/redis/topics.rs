//! Topics over Redis pub/sub, with subscriptions that outlive their connection.
//!
//! A pub/sub connection is not the self-reconnecting multiplexed one: when
//! Redis restarts or kills the client, redis-rs ends the message stream and
//! the subscription with it. So each subscription has a feeder task that owns
//! the pub/sub connection, opens a new one with capped backoff when it drops,
//! and records the time it spent unsubscribed in [`SubscriptionStats`].
//!
//! The feeder moves events into a channel of [`TOPIC_BUFFER`] slots without
//! ever waiting on the subscriber: an event that finds it full is dropped and
//! counted, so a slow subscriber neither grows memory nor stalls the socket.

use super::{connection::map_err, keys::Keys, Conn};
use crate::{
    envelope::Codec,
    error::{Error, ErrorKind, Result},
    name::{Topic, TopicPattern},
    rt::{self, TaskHandle},
    Envelope, Subscription, SubscriptionStats, TopicEvent, TOPIC_BUFFER,
};
use futures_channel::mpsc;
use futures_util::{Stream, StreamExt};
use redis::{aio::PubSubStream, Msg};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// First wait between reconnection attempts; doubled after each failure.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// `PUBLISH` one event on `topic`.
pub(crate) async fn publish(
    conn: &Conn,
    keys: &Keys,
    codec: Codec,
    topic: &Topic,
    envelope: &Envelope,
) -> Result<()> {
    let body = codec.encode(envelope)?;
    redis::cmd("PUBLISH")
        .arg(keys.topic(topic))
        .arg(&body[..])
        .query_async::<()>(&mut conn.manager())
        .await
        .map_err(|e| map_err(e, format!("publish to topic `{topic}`")))
}

/// `PSUBSCRIBE` to `pattern` and hand the events to a [`Subscription`] that
/// resubscribes by itself after its connection drops.
///
/// Fails when Redis cannot be reached now. Dropping the future before it
/// returns closes the half-made connection; nothing is left running.
pub(crate) async fn subscribe(
    conn: Arc<Conn>,
    keys: &Keys,
    codec: Codec,
    pattern: &TopicPattern,
) -> Result<Subscription> {
    let channel_pattern = keys.topic_pattern(pattern);
    let messages = open(&conn, &channel_pattern)
        .await
        .map_err(|e| e.describe(&format!("subscribe to `{pattern}`")))?;
    // futures' channel holds one slot per sender on top of its buffer, and
    // the feeder is the only sender: exactly `TOPIC_BUFFER` events fit.
    let (tx, rx) = mpsc::channel(TOPIC_BUFFER - 1);
    let stats = Arc::new(SubscriptionStats::default());
    let feeder = Feeder {
        conn,
        channel_pattern,
        prefix: keys.topic_prefix(),
        pattern: pattern.clone(),
        codec,
        tx,
        stats: stats.clone(),
    };
    let task = rt::spawn(feeder.run(messages));
    Ok(Subscription::with_stats(Events { rx, _feeder: task }, stats))
}

/// Why opening a subscription failed.
enum OpenError {
    Redis(redis::RedisError),
    TimedOut(Duration),
}

impl OpenError {
    fn describe(self, what: &str) -> Error {
        match self {
            Self::Redis(e) => map_err(e, what),
            Self::TimedOut(d) => Error::new(
                ErrorKind::Timeout,
                format!("{what} failed: no answer within {} ms", d.as_millis()),
            ),
        }
    }
}

/// A new pub/sub connection subscribed to `channel_pattern`, within the
/// response timeout (a connection to a host that vanished never fails by itself).
async fn open(conn: &Conn, channel_pattern: &str) -> std::result::Result<PubSubStream, OpenError> {
    let attempt = async {
        let mut pubsub = conn.current().pubsub_client().get_async_pubsub().await?;
        pubsub.psubscribe(channel_pattern).await?;
        Ok(pubsub.into_on_message())
    };
    match rt::timeout(conn.response_timeout, attempt).await {
        Ok(opened) => opened.map_err(OpenError::Redis),
        Err(rt::Elapsed) => Err(OpenError::TimedOut(conn.response_timeout)),
    }
}

/// The subscriber's side: the events, and the feeder, which stops when this drops.
struct Events {
    rx: mpsc::Receiver<TopicEvent>,
    _feeder: TaskHandle<()>,
}

impl Stream for Events {
    type Item = TopicEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TopicEvent>> {
        self.rx.poll_next_unpin(cx)
    }
}

/// Owns the pub/sub connection of one subscription.
struct Feeder {
    conn: Arc<Conn>,
    channel_pattern: String,
    prefix: String,
    pattern: TopicPattern,
    codec: Codec,
    tx: mpsc::Sender<TopicEvent>,
    stats: Arc<SubscriptionStats>,
}

impl Feeder {
    async fn run(mut self, mut messages: PubSubStream) {
        loop {
            while let Some(msg) = messages.next().await {
                if !self.forward(&msg) {
                    return;
                }
            }
            if self.tx.is_closed() {
                return;
            }
            let lost = Instant::now();
            tracing::warn!(
                event = "topic_subscription_lost",
                pattern = %self.pattern,
                "pub/sub connection closed; resubscribing"
            );
            let Some((restored, attempts)) = self.resubscribe().await else {
                return;
            };
            let gap = lost.elapsed();
            self.stats.record_reconnect(gap);
            tracing::info!(
                event = "topic_subscription_restored",
                pattern = %self.pattern,
                gap_ms = crate::clock::duration_ms(gap),
                attempts,
                "events published during the gap were missed"
            );
            messages = restored;
        }
    }

    /// Open a new subscription, waiting longer after each failure; `None`
    /// when the subscriber went away meanwhile.
    async fn resubscribe(&self) -> Option<(PubSubStream, u32)> {
        let mut delay = BACKOFF_START;
        let mut attempts = 0u32;
        loop {
            if self.tx.is_closed() {
                return None;
            }
            attempts += 1;
            match open(&self.conn, &self.channel_pattern).await {
                Ok(messages) => return Some((messages, attempts)),
                Err(e) => tracing::debug!(
                    event = "topic_resubscribe_failed",
                    pattern = %self.pattern,
                    attempts,
                    error = %e.describe(&format!("subscribe to `{}`", self.pattern)),
                ),
            }
            // Jitter, so the subscribers of a fleet do not all knock at once
            // on a Redis that just came back.
            let jitter = delay.mul_f64(fastrand::f64() * 0.25);
            rt::sleep(delay + jitter).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Hand one message to the subscriber; false once the subscriber is gone.
    fn forward(&mut self, msg: &Msg) -> bool {
        let Some(event) = self.event(msg) else {
            return true;
        };
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(e) if e.is_full() => {
                self.stats.record_dropped();
                tracing::debug!(
                    event = "topic_event_dropped",
                    topic = %e.into_inner().topic,
                    pattern = %self.pattern,
                    "subscriber too slow"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// The event in `msg`, if its topic matches and it decodes.
    fn event(&self, msg: &Msg) -> Option<TopicEvent> {
        let topic = msg
            .get_channel_name()
            .strip_prefix(&self.prefix)
            .and_then(|t| Topic::new(t).ok())
            // Redis's `*` spans dots; ours matches exactly one token.
            .filter(|t| self.pattern.matches(t))?;
        match self.codec.decode(msg.get_payload_bytes()) {
            Ok(envelope) => Some(TopicEvent { topic, envelope }),
            Err(e) => {
                tracing::warn!(event = "topic_event_unreadable", topic = %topic, error = %e);
                None
            }
        }
    }
}
