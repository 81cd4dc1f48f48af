//! Bad input at the bus's edges, injected by hand: caps below the floor, an
//! oversized entry written by another producer, a foreign entry layout, and
//! extreme `Duration`s. Each gets a clear answer and loses nothing.
#![cfg(all(feature = "memory", feature = "redis", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    memory::MemoryBus, redis::RedisBackend, Codec, ConsumerName, Envelope, ErrorKind, EventBus, GroupName,
    MessageId, ReadOptions, Release, StartFrom, StreamName,
};
use std::time::Duration;

fn names() -> (StreamName, GroupName, ConsumerName) {
    (
        StreamName::new("limits").unwrap(),
        GroupName::new("g").unwrap(),
        ConsumerName::new("c").unwrap(),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn caps_below_the_floor_are_raised_with_a_warning_unless_opted_in() {
    let logs = support::logs::EventCounter::default();
    let _guard = logs.install();
    let s = StreamName::new("tiny").unwrap();
    let raised = MemoryBus::builder().max_len(5).build();
    assert_eq!(
        raised.max_len(&s),
        1_000,
        "SG_STREAM_MAXLEN=5 style caps are raised"
    );
    assert_eq!(logs.count("stream_max_len_raised"), 1);
    let chosen = MemoryBus::builder().max_len_floor(1).max_len(5).build();
    assert_eq!(chosen.max_len(&s), 5, "an explicit floor allows it");
    assert_eq!(logs.count("stream_max_len_raised"), 1, "no warning when opted in");
    let redis = RedisBackend::builder().max_len(5).build().unwrap().bus();
    assert_eq!(redis.max_len(&s), 1_000);
    assert_eq!(logs.count("stream_max_len_raised"), 2);
}

#[tokio::test]
async fn an_oversized_entry_written_by_hand_is_a_codec_error_and_stays_ackable() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let bus = RedisBackend::builder()
        .url(server.url())
        .codec(Codec::new(1 << 20))
        .build()
        .unwrap()
        .bus();
    let (s, g, c) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest).await.unwrap();
    // A 3 MiB envelope, encoded by a producer with no limit, written raw.
    let big = Codec::new(usize::MAX)
        .encode(&Envelope::new("big").with_raw_payload(vec![7u8; 3 << 20]))
        .unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("limits")
        .arg("*")
        .arg("env")
        .arg(&big[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = bus.read(&s, &g, &c, ReadOptions::count(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    let err = got[0].envelope().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(err.to_string().contains(&got[0].id.to_string()), "{err}");
    assert_eq!(bus.ack(&s, &g, &[got[0].id]).await.unwrap(), 1, "still ackable");
}

#[tokio::test]
async fn a_foreign_entry_exposes_its_raw_fields() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let bus = RedisBackend::builder().url(server.url()).build().unwrap().bus();
    let (s, g, c) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest).await.unwrap();
    server.cmd(&[
        "XADD",
        "limits",
        "*",
        "type",
        "chat.message",
        "data",
        "{\"text\":\"hi\"}",
    ]);
    let got = bus.read(&s, &g, &c, ReadOptions::count(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].body.is_empty());
    let fields: Vec<(String, String)> = got[0]
        .fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("type".to_owned(), "chat.message".to_owned()),
            ("data".to_owned(), "{\"text\":\"hi\"}".to_owned())
        ]
    );
    assert_eq!(got[0].envelope().unwrap_err().kind(), ErrorKind::Codec);
}

/// Every bus method that takes a `Duration`, with the extremes: no panic,
/// a sensible answer, nothing lost.
async fn extreme_durations(bus: &dyn EventBus, what: &str) {
    let (s, g, c) = names();
    let s = StreamName::new(format!("{s}-{what}")).unwrap();
    bus.ensure_group(&s, &g, StartFrom::Latest).await.unwrap();
    let mut id = MessageId::ZERO;
    for block in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        id = bus.publish(&s, &Envelope::new("x")).await.unwrap();
        let got = bus
            .read(&s, &g, &c, ReadOptions::count(1).block(block))
            .await
            .unwrap_or_else(|e| panic!("{what}: read with block {block:?}: {e}"));
        assert_eq!(got.len(), 1, "{what}: block {block:?}");
        assert_eq!(got[0].id, id);
        bus.ack(&s, &g, &[id]).await.unwrap();
    }
    let id = {
        let _ = id;
        bus.publish(&s, &Envelope::new("x")).await.unwrap()
    };
    bus.read(&s, &g, &c, ReadOptions::count(1)).await.unwrap();
    for idle in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        bus.claim(&s, &g, &c, idle, 10)
            .await
            .unwrap_or_else(|e| panic!("{what}: claim with min idle {idle:?}: {e}"));
        bus.claim_ids(&s, &g, &c, idle, &[id]).await.unwrap();
    }
    assert!(
        bus.claim(&s, &g, &c, Duration::MAX, 10)
            .await
            .unwrap()
            .deliveries
            .is_empty(),
        "{what}: nothing is idle forever"
    );
    assert_eq!(
        bus.release(&s, &g, &c, &[id], Release::RetryAfter(Duration::MAX))
            .await
            .unwrap(),
        1
    );
    assert!(
        bus.claim(&s, &g, &c, Duration::ZERO, 10)
            .await
            .unwrap()
            .deliveries
            .is_empty(),
        "{what}: an entry retried after Duration::MAX is not due"
    );
    let pending = bus
        .pending_entries(&s, &g, None, MessageId::ZERO, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        1,
        "{what}: the parked entry is still pending, not lost"
    );
}

#[tokio::test]
async fn extreme_durations_on_memory_and_redis() {
    extreme_durations(&MemoryBus::new(), "memory").await;
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let bus = RedisBackend::builder().url(server.url()).build().unwrap().bus();
    extreme_durations(&bus, "redis").await;
}
