//! Topic subscriptions under faults: a Redis restart or a killed pub/sub
//! connection is survived inside the subscription, a subscriber that never
//! reads holds at most `TOPIC_BUFFER` events on every backend (the rest are
//! counted as dropped), and dropping the subscription stops its feeder.
#![cfg(all(feature = "redis", feature = "memory"))]

mod support;

use fleetwire::{
    memory::MemoryBus, redis::RedisBackend, Envelope, ErrorKind, EventBus, Subscription, Topic, TopicEvent,
    TopicPattern, TOPIC_BUFFER,
};
use futures_util::{FutureExt, StreamExt};
use std::{
    future::Future,
    pin::pin,
    time::{Duration, Instant},
};
use support::RedisServer;

fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::builder()
        .url(server.url())
        .namespace("sg")
        .build()
        .expect("backend")
}

fn health_pattern() -> TopicPattern {
    TopicPattern::new("system.*.health").unwrap()
}

fn api_health() -> Topic {
    Topic::new("system.api.health").unwrap()
}

/// Runtime-neutral sleep and timeout (async-io's timer runs on any executor).
async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

async fn within<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    match futures_util::future::select(pin!(fut), pin!(sleep(d))).await {
        futures_util::future::Either::Left((out, _)) => Some(out),
        futures_util::future::Either::Right(_) => None,
    }
}

/// Publish on `system.api.health` every 100 ms until `sub` yields an event
/// again, for at most 10 s; publishes may fail while Redis is coming back.
async fn publish_until_received(bus: &dyn EventBus, sub: &mut Subscription, why: &str) -> TopicEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no event within 10 s after {why}");
        let _ = bus
            .publish_topic(&api_health(), &Envelope::new("system.health"))
            .await;
        if let Some(ev) = within(Duration::from_millis(100), sub.next()).await {
            return ev.expect("the subscription ended");
        }
    }
}

/// Events already queued in `sub`, taken without waiting.
fn drain_queued(sub: &mut Subscription) -> usize {
    let mut queued = 0;
    while let Some(Some(_)) = sub.next().now_or_never() {
        queued += 1;
    }
    queued
}

/// Pub/sub connections the server has, from `CLIENT LIST TYPE pubsub`.
fn pubsub_clients(server: &RedisServer) -> usize {
    server
        .cmd(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .matches("id=")
        .count()
}

async fn survives_restart(server: &mut RedisServer) {
    let bus = backend(server).bus();
    let mut sub = bus.subscribe(&health_pattern()).await.unwrap();
    let first = publish_until_received(&bus, &mut sub, "subscribing").await;
    assert_eq!(first.topic, api_health());
    assert_eq!(sub.stats().reconnects(), 0);

    server.restart();
    let again = publish_until_received(&bus, &mut sub, "the restart").await;
    assert_eq!(again.topic, api_health());
    assert!(sub.stats().reconnects() >= 1, "stats: {:?}", sub.stats());
    assert!(sub.stats().gap() > Duration::ZERO, "stats: {:?}", sub.stats());
    assert_eq!(sub.stats().dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscription_survives_a_restart_on_tokio() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    survives_restart(&mut server).await;
}

#[cfg(feature = "rt-async-std")]
#[test]
fn redis_subscription_survives_a_restart_on_async_std() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    async_std::task::block_on(survives_restart(&mut server));
}

// Current-thread, so the feeder logs to this thread's event counter.
#[tokio::test]
async fn redis_subscription_resubscribes_after_client_kill() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let logs = support::logs::EventCounter::default();
    let _guard = logs.install();
    let bus = backend(&server).bus();
    let mut sub = bus.subscribe(&health_pattern()).await.unwrap();
    publish_until_received(&bus, &mut sub, "subscribing").await;

    let killed = server.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.starts_with(":1"),
        "expected one subscription killed: {killed}"
    );
    publish_until_received(&bus, &mut sub, "CLIENT KILL").await;
    assert_eq!(sub.stats().reconnects(), 1, "stats: {:?}", sub.stats());
    assert_eq!(pubsub_clients(&server), 1, "one connection, not a leaked old one");
    assert_eq!(logs.count("topic_subscription_lost"), 1);
    assert_eq!(logs.count("topic_subscription_restored"), 1);
}

#[tokio::test]
async fn redis_subscribe_fails_while_redis_is_down() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let bus = backend(&server).bus();
    server.stop();
    let err = bus.subscribe(&health_pattern()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("system.*.health"), "{err}");
}

const PUBLISHED: usize = 1_500;

#[tokio::test]
async fn memory_subscriber_that_never_reads_holds_topic_buffer_events() {
    let bus = MemoryBus::new();
    let mut sub = bus.subscribe(&health_pattern()).await.unwrap();
    for _ in 0..PUBLISHED {
        bus.publish_topic(&api_health(), &Envelope::new("system.health"))
            .await
            .unwrap();
    }
    assert_eq!(sub.stats().dropped(), (PUBLISHED - TOPIC_BUFFER) as u64);
    assert_eq!(drain_queued(&mut sub), TOPIC_BUFFER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriber_that_never_reads_holds_topic_buffer_events() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let bus = backend(&server).bus();
    let mut sub = bus.subscribe(&health_pattern()).await.unwrap();
    for _ in 0..PUBLISHED {
        bus.publish_topic(&api_health(), &Envelope::new("system.health"))
            .await
            .unwrap();
    }
    // Every PUBLISH has returned, so every event is on its way to the
    // socket; give the feeder time to take them all off it.
    let want_dropped = (PUBLISHED - TOPIC_BUFFER) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.stats().dropped() < want_dropped && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(200)).await;
    let dropped = sub.stats().dropped();
    let queued = drain_queued(&mut sub);
    assert_eq!(
        queued as u64 + dropped,
        PUBLISHED as u64,
        "queued {queued}, dropped {dropped}"
    );
    assert_eq!(queued, TOPIC_BUFFER);
}

/// Wait up to 5 s for the server's pub/sub connection count to be `want`.
async fn await_pubsub_clients(server: &RedisServer, want: usize, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pubsub_clients(server) != want {
        assert!(
            Instant::now() < deadline,
            "{} pub/sub connections, expected {want}, {why}",
            pubsub_clients(server)
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_redis_subscription_stops_its_feeder() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let bus = backend(&server).bus();
    let sub = bus.subscribe(&health_pattern()).await.unwrap();
    assert_eq!(pubsub_clients(&server), 1);
    drop(sub);
    await_pubsub_clients(&server, 0, "after the subscription was dropped").await;

    // Dropped while its feeder waits to reconnect: nothing subscribes once Redis is back.
    let sub = bus.subscribe(&health_pattern()).await.unwrap();
    server.stop();
    sleep(Duration::from_millis(300)).await;
    drop(sub);
    server.restart();
    // Longer than the longest backoff, so a feeder still alive would have reconnected.
    sleep(Duration::from_secs(3)).await;
    assert_eq!(pubsub_clients(&server), 0, "a dropped subscription came back");
}
