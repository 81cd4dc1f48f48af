//! Redis Cluster: the conformance suites over a `redis+cluster://` backend
//! (3 primaries + 3 replicas started by the test; on Tokio, and on smol and
//! async-std with their features), the hash-tagged key layout, topics, and
//! failover under a publish + consume load with the consumer runner.
#![cfg(all(feature = "redis-cluster", feature = "testkit", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    redis::RedisBackend, ConsumerName, Envelope, ErrorKind, EventBus, GroupName, Instance, InstanceId,
    LivenessStore, ReadOptions, RegistryStore, ServiceName, StartFrom, Status, StreamName, Topic,
    TopicPattern,
};
use futures_util::StreamExt;
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};
use support::{
    cluster::Cluster,
    failover::{Load, HEARTBEAT},
    sentinel::raw,
    suites,
};

fn backend(cluster: &Cluster) -> RedisBackend {
    suites::backend(&cluster.url())
}

async fn all_suites(cluster: &Cluster) {
    suites::assert_passed("Cluster", &suites::all(&cluster.url()).await);
}

/// Every conformance suite, then the key layout, topics and a batch
/// liveness check over all slots, on one cluster (starting one costs seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_tokio() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let redis = backend(&cluster);
    all_suites(&cluster).await;
    key_layout(&cluster, &redis).await;
    topics(&redis).await;
    alive_batch_over_all_slots(&cluster, &redis).await;
    alive_batch_after_a_slot_moved(&cluster, &redis).await;
    dead_letter_across_slots(&redis).await;
    cancelled_reads_are_unblocked_at_once(&cluster, &redis).await;
    acknowledged_publish(&cluster).await;
    from_env(&cluster).await;
}

/// The conformance suites on smol (redis-rs's cluster client runs on any
/// executor through async-io).
#[cfg(feature = "rt-smol")]
#[test]
fn conformance_on_smol() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    smol::block_on(async {
        all_suites(&cluster).await;
    });
}

/// The conformance suites on async-std.
#[cfg(feature = "rt-async-std")]
#[test]
fn conformance_on_async_std() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    async_std::task::block_on(async {
        all_suites(&cluster).await;
    });
}

/// `SG_REDIS_URL` picks the Cluster at run time.
async fn from_env(cluster: &Cluster) {
    // No other test in this binary reads the environment's Redis URL.
    std::env::set_var("SG_REDIS_URL", cluster.url());
    let redis = RedisBackend::from_env().expect("backend");
    redis.ping().await.unwrap();
    redis
        .bus()
        .publish(&StreamName::new("env").unwrap(), &Envelope::new("x"))
        .await
        .unwrap();
    let owner = cluster.primary_of("env").expect("an owner");
    assert_eq!(
        raw(cluster.nodes[owner].port, &["XLEN", "env"]).unwrap().trim(),
        ":1"
    );
}

/// A dead-letter stream in another slot than its source: the record is
/// written and the entry acked, in two steps.
async fn dead_letter_across_slots(redis: &RedisBackend) {
    let bus = redis.bus();
    let (stream, dlq) = (
        StreamName::new("orders-x").unwrap(),
        StreamName::new("orders-x:dlq").unwrap(),
    );
    let (group, consumer) = (GroupName::new("g").unwrap(), ConsumerName::new("c").unwrap());
    bus.ensure_group(&stream, &group, StartFrom::Beginning)
        .await
        .unwrap();
    bus.publish(&stream, &Envelope::new("poison")).await.unwrap();
    let got = bus
        .read(&stream, &group, &consumer, ReadOptions::count(1))
        .await
        .unwrap();
    let id = got[0].id;
    let dead = bus
        .dead_letter(&stream, &group, id, &dlq, b"record", 100)
        .await
        .unwrap();
    assert!(dead.is_some(), "dead-lettered");
    assert_eq!(bus.pending(&stream, &group).await.unwrap().count, 0, "acked");
    assert_eq!(bus.stream_info(&dlq).await.unwrap().length, 1);
    // Not pending any more: nothing happens, no second record.
    let again = bus
        .dead_letter(&stream, &group, id, &dlq, b"record", 100)
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(bus.stream_info(&dlq).await.unwrap().length, 1);
}

/// A blocking read dropped by its caller is unblocked on its primary at
/// once (`CLIENT UNBLOCK` routed there), for streams in several slots: the
/// next entry goes straight to the live consumer, delivered once, with no
/// detour through the abandoned one (the conformance case also accepts a
/// backend that can only release such an entry afterwards).
async fn cancelled_reads_are_unblocked_at_once(cluster: &Cluster, redis: &RedisBackend) {
    let bus = redis.bus();
    let group = GroupName::new("g").unwrap();
    let (a, b) = (ConsumerName::new("a").unwrap(), ConsumerName::new("b").unwrap());
    let names = ["cancel-1", "cancel-2", "cancel-3", "cancel-4"];
    let owners: std::collections::BTreeSet<usize> =
        names.iter().filter_map(|n| cluster.primary_of(n)).collect();
    assert!(owners.len() >= 2, "the streams are all on primary {owners:?}");
    for name in names {
        let stream = StreamName::new(name).unwrap();
        let owner = &cluster.nodes[cluster.primary_of(name).expect("an owner")];
        let blocked = || {
            owner
                .cmd(&["INFO", "clients"])
                .lines()
                .find_map(|l| l.strip_prefix("blocked_clients:")?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        bus.ensure_group(&stream, &group, StartFrom::Latest)
            .await
            .unwrap();
        // Twice: a fresh blocking connection, then one taken from the free list.
        for round in 0..2u64 {
            // Dropped once the server holds it blocked, not at a guessed time.
            {
                let before = blocked();
                let read = bus.read(
                    &stream,
                    &group,
                    &a,
                    ReadOptions::count(10).block(Duration::from_secs(3)),
                );
                tokio::pin!(read);
                let deadline = Instant::now() + Duration::from_secs(2);
                while blocked() <= before {
                    assert!(Instant::now() < deadline, "{name}: the read never blocked");
                    tokio::select! {
                        r = &mut read => panic!("{name}: the read returned early: {r:?}"),
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            }
            let id = bus.publish(&stream, &Envelope::new("x")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = bus
                .read(
                    &stream,
                    &group,
                    &b,
                    ReadOptions::count(10).block(Duration::from_secs(1)),
                )
                .await
                .unwrap();
            let counts: Vec<_> = got.iter().map(|d| (d.id, d.delivery_count)).collect();
            assert_eq!(counts, [(id, 1)], "{name}, round {round}: b read {counts:?}");
            let pending = bus.pending(&stream, &group).await.unwrap();
            assert_eq!(
                pending.consumers,
                std::collections::BTreeMap::from([("b".to_string(), round + 1)]),
                "{name}, round {round}"
            );
        }
    }
}

/// `publish_replicas` on Cluster: the `WAIT` runs on the stream's primary.
async fn acknowledged_publish(cluster: &Cluster) {
    let redis = RedisBackend::builder()
        .url(cluster.url())
        .publish_replicas(1, Duration::from_secs(2))
        .build()
        .expect("backend");
    let stream = StreamName::new("acked").unwrap();
    redis
        .bus()
        .publish(&stream, &Envelope::new("x"))
        .await
        .expect("acknowledged by the replica");
}

/// The registry's keys of one service share a slot; the set of services is
/// listed without SCAN; a name with a brace is refused.
async fn key_layout(cluster: &Cluster, redis: &RedisBackend) {
    let registry = redis.registry();
    let names = ["gateway", "billing", "search", "auth", "mail"];
    for (n, name) in names.iter().enumerate() {
        let inst = Instance::new(
            ServiceName::new(name).unwrap(),
            InstanceId::new(format!("{name}-{n}")).unwrap(),
            Status::Running,
        );
        registry.register(&inst, Duration::from_secs(30)).await.unwrap();
    }
    let listed = registry.list(None).await.unwrap();
    for name in names {
        assert!(listed.iter().any(|i| i.service.as_str() == name), "{name} listed");
    }
    let owner = cluster
        .primary_of("sg:registry:index:{gateway}")
        .expect("an owner");
    let port = cluster.nodes[owner].port;
    for key in [
        "sg:registry:service:{gateway}:gateway-0",
        "sg:registry:index:{gateway}",
        "sg:registry:version:{gateway}",
        "sg:registry:listed:{gateway}",
    ] {
        assert_eq!(
            raw(port, &["EXISTS", key]).as_deref(),
            Some(":1\r\n"),
            "{key} on the node owning the service's slot"
        );
    }
    // No command on any node scanned the keyspace.
    for n in &cluster.nodes {
        assert_eq!(n.calls("scan"), 0, "SCAN on node {}", n.port);
    }
    let braced = Instance::new(
        ServiceName::new("a{b}").unwrap(),
        InstanceId::new("x-1").unwrap(),
        Status::Running,
    );
    let err = registry
        .register(&braced, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("hash tag"), "{err}");
}

/// `system.*.health` reaches a subscriber through the cluster's classic
/// pub/sub (a PUBLISH on any node reaches every node).
async fn topics(redis: &RedisBackend) {
    let bus = redis.bus();
    let mut sub = bus
        .subscribe(&TopicPattern::new("system.*.health").unwrap())
        .await
        .expect("subscribe");
    let topic = Topic::new("system.api.health").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        assert!(Instant::now() < deadline, "no topic event within 10 s");
        bus.publish_topic(&topic, &Envelope::new("system.health"))
            .await
            .expect("publish_topic");
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break ev;
        }
    };
    assert_eq!(event.topic, topic);
    let other = Topic::new("system.api.load").unwrap();
    bus.publish_topic(&other, &Envelope::new("x")).await.unwrap();
    bus.publish_topic(&topic, &Envelope::new("y")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("second event")
        .expect("subscription open");
    assert_eq!(next.topic, topic, "the wildcard does not match system.api.load");
}

/// A slot moves to another primary (`CLUSTER SETSLOT` and `MIGRATE`, as a
/// resharding does) after the batch path learned the slot map: the next
/// batch meets `MOVED` for that slot, and must still answer exactly.
async fn alive_batch_after_a_slot_moved(cluster: &Cluster, redis: &RedisBackend) {
    let liveness = redis.liveness();
    let ids: Vec<InstanceId> = (0..3_000)
        .map(|n| InstanceId::new(format!("m-{n}")).unwrap())
        .collect();
    for id in ids.iter().step_by(2) {
        liveness.touch(id, Duration::from_secs(60)).await.unwrap();
    }
    let want: Vec<bool> = (0..ids.len()).map(|n| n % 2 == 0).collect();
    assert_eq!(
        liveness.is_alive_batch(&ids).await.unwrap(),
        want,
        "before the move"
    );
    // Move the slot of `m-0` (alive) from its primary to another one.
    let key = "sg:liveness:m-0";
    let from = cluster.primary_of(key).expect("an owner");
    let to = (0..cluster.nodes.len())
        .find(|&i| i != from && cluster.primary_of_index(i))
        .expect("another primary");
    let (src, dst) = (&cluster.nodes[from], &cluster.nodes[to]);
    let id_of = |n: &support::RedisServer| n.cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap().to_owned();
    let (src_id, dst_id) = (id_of(src), id_of(dst));
    let slot = src.cmd(&["CLUSTER", "KEYSLOT", key]);
    let slot = slot.trim().trim_start_matches(':').to_owned();
    assert!(dst
        .cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id])
        .starts_with("+OK"));
    assert!(src
        .cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id])
        .starts_with("+OK"));
    let keys = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
    // Every key of the slot (RESP: `*n`, then `$len` and the key for each).
    let keys: Vec<&str> = keys
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
        .collect();
    assert!(keys.contains(&key), "{keys:?}");
    let port = dst.port.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().copied());
    assert!(src.cmd(&migrate).starts_with("+OK"), "MIGRATE failed");
    for n in [dst, src] {
        assert!(n
            .cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id])
            .starts_with("+OK"));
    }
    assert_eq!(cluster.primary_of(key), Some(to), "the slot moved");
    assert_eq!(
        liveness.is_alive_batch(&ids).await.unwrap(),
        want,
        "after the move"
    );
    assert_eq!(
        liveness.is_alive_batch(&ids).await.unwrap(),
        want,
        "once the map is re-read"
    );
}

/// 10,000 ids spread over every slot, checked in one call; returns the timing.
async fn alive_batch_over_all_slots(cluster: &Cluster, redis: &RedisBackend) {
    let liveness = redis.liveness();
    let ids: Vec<InstanceId> = (0..10_000)
        .map(|n| InstanceId::new(format!("i-{n}")).unwrap())
        .collect();
    for id in ids.iter().step_by(2) {
        liveness.touch(id, Duration::from_secs(60)).await.unwrap();
    }
    let mut took = Vec::new();
    let mut alive = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        alive = liveness.is_alive_batch(&ids).await.expect("batch");
        took.push(started.elapsed());
    }
    assert_eq!(alive.len(), ids.len());
    for (n, a) in alive.iter().enumerate() {
        assert_eq!(*a, n % 2 == 0, "id {n}");
    }
    let mgets: u64 = cluster.nodes.iter().map(|n| n.calls("mget")).sum();
    println!("is_alive_batch of 10,000 ids over all slots, 3 calls: {took:?}; {mgets} MGETs so far over the primaries");
}

/// Publish on `topic` every 200 ms until `sub` yields an event; how long it took.
async fn received(
    bus: &fleetwire::redis::RedisBus,
    topic: &Topic,
    sub: &mut fleetwire::Subscription,
    why: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no event within 20 s {why}"
        );
        let _ = bus.publish_topic(topic, &Envelope::new("system.health")).await;
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&ev.topic, topic);
            return started.elapsed();
        }
    }
}

/// A subscription whose node dies resubscribes on another seed node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_survive_the_loss_of_the_subscribed_node() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let redis = RedisBackend::builder()
        .url(cluster.url())
        .response_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("backend");
    let bus = redis.bus();
    let mut sub = bus
        .subscribe(&TopicPattern::new("system.*.health").unwrap())
        .await
        .expect("subscribe");
    let topic = Topic::new("system.api.health").unwrap();
    received(&bus, &topic, &mut sub, "at first").await;
    // Events of the first round still on their way are not counted below.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(Some(_)) = futures_util::FutureExt::now_or_never(sub.next()) {}
    // The subscription is on the first seed node.
    let pubsub = |port| {
        raw(port, &["CLIENT", "LIST", "TYPE", "pubsub"])
            .unwrap_or_default()
            .matches("id=")
            .count()
    };
    assert_eq!(pubsub(cluster.nodes[0].port), 1, "subscribed on the first seed");
    let slot0 = cluster.primary_of("{06S}").map(|i| cluster.nodes[i].port);
    assert!(cluster.nodes[0].kill9());
    let after = received(&bus, &topic, &mut sub, "after its node was killed").await;
    let now_on: Vec<usize> = cluster.nodes[1..].iter().map(|n| pubsub(n.port)).collect();
    assert_eq!(
        now_on.iter().sum::<usize>(),
        1,
        "resubscribed on another node: {now_on:?}"
    );
    println!(
        "topic events flow again {after:?} after the subscribed node was killed \
         (it {} the primary publishes go to)",
        if slot0 == Some(cluster.nodes[0].port) {
            "was"
        } else {
            "was not"
        }
    );
}

#[tokio::test]
async fn malformed_cluster_urls_are_rejected_naming_the_problem() {
    for (url, says) in [
        ("redis+cluster://", "empty node address"),
        ("redis+cluster://127.0.0.1:port", "`port` is not a port"),
        ("redis+cluster://:hunter2@h:1,", "empty node address"),
        ("redis+cluster://h:1/3", "database number"),
    ] {
        let err = RedisBackend::builder().url(url).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(says), "{url}: {msg}");
        assert!(!msg.contains("hunter2"), "the password leaked: {msg}");
    }
    let err = RedisBackend::builder()
        .url("redis+cluster://h:1")
        .namespace("a{b}")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = RedisBackend::builder()
        .url("redis+cluster://h:1")
        .adopt_legacy_keys(Some(Duration::from_secs(1)))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

/// Publish 5,000 messages (counting those that returned `Ok`) while a
/// runner consumes them and a lifecycle keeps an instance registered;
/// `kill -9` the primary owning the stream's slot after 1,500.
/// The killed node is restarted once its replica took over, and rejoins
/// as that one's replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load() {
    failover(false).await;
}

/// As [`failover_under_load`], every publish waiting for one replica
/// (`publish_replicas`): none that returned `Ok` may be lost. After the
/// failover the new primary has no replica until the killed node is back,
/// so publishes fail `NotReplicated` meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_with_replica_acknowledgement() {
    failover(true).await;
}

async fn failover(durable: bool) {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    // Hash-tagged with the service's name: the stream and the registry
    // entries of `billing` live on the same primary, the one killed.
    let stream = StreamName::new("{billing}:orders").unwrap();
    let load = Load::start(cluster.url(), durable, &stream).await;
    let (redis, bus) = (&load.redis, load.bus.clone());

    // Liveness keys over every slot; a batch check learns the slot map now,
    // so the one after the failover starts from a stale map.
    let liveness = redis.liveness();
    let ids: Vec<InstanceId> = (0..2_000)
        .map(|n| InstanceId::new(format!("f-{n}")).unwrap())
        .collect();
    for id in &ids {
        liveness.touch(id, Duration::from_secs(120)).await.unwrap();
    }
    assert!(liveness.is_alive_batch(&ids).await.unwrap().iter().all(|a| *a));
    cluster.wait_ok(Duration::from_secs(10));

    let victim = cluster
        .primary_of(stream.as_str())
        .expect("a primary owns the stream");
    assert_eq!(cluster.primary_of("sg:registry:index:{billing}"), Some(victim));
    let (mut ok, mut failed) = (Vec::<u64>::new(), 0usize);
    let (mut last_ok_before, mut first_ok_after) = (None::<Instant>, None::<Instant>);
    let mut killed = false;
    let mut killed_at = Instant::now();
    let mut restarted = false;
    let mut watcher = None;
    let mut seq = 0u64;
    let started = Instant::now();
    while ok.len() < 5_000 {
        assert!(started.elapsed() < Duration::from_secs(90), "load did not finish");
        if !killed && ok.len() == 1_500 {
            if std::env::var_os("CLUSTER_TRACE").is_some() {
                for n in &cluster.nodes {
                    let r = raw(n.port, &["INFO", "replication"]).unwrap_or_default();
                    let line = |k: &str| r.lines().find(|l| l.starts_with(k)).unwrap_or("").to_owned();
                    eprintln!(
                        "node {} {} {} {} keys {:?}",
                        n.port,
                        line("role:"),
                        line("master_port:"),
                        line("master_repl_offset:"),
                        raw(n.port, &["DBSIZE"])
                    );
                }
                eprintln!("victim {}", cluster.nodes[victim].port);
            }
            assert!(cluster.nodes[victim].kill9());
            killed_at = Instant::now();
            killed = true;
            watcher = Some(load.watch_relisting());
        }
        if killed && !restarted && seq.is_multiple_of(20) && cluster.primary_of(stream.as_str()).is_some() {
            // A replica took over: the old primary comes back (a supervisor
            // restarting it) and rejoins as its replica.
            cluster.nodes[victim].restart();
            restarted = true;
        }
        seq += 1;
        let envelope = Envelope::new(seq.to_string());
        match tokio::time::timeout(Duration::from_secs(2), bus.publish(&stream, &envelope)).await {
            Ok(Ok(_)) => {
                let now = Instant::now();
                if killed && first_ok_after.is_none() {
                    first_ok_after = Some(now);
                } else if !killed {
                    last_ok_before = Some(now);
                }
                ok.push(seq);
            }
            other => {
                if std::env::var_os("CLUSTER_TRACE").is_some() {
                    eprintln!("{:?}: publish {seq}: {other:?}", started.elapsed());
                }
                failed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let outage = first_ok_after.expect("no publish after the kill") - last_ok_before.unwrap();
    let listed_at = tokio::time::timeout(Duration::from_secs(15), watcher.unwrap())
        .await
        .expect("the instance was not listed again within 15 s")
        .unwrap();
    let reregistered_after = listed_at.saturating_duration_since(first_ok_after.unwrap());

    let want: BTreeSet<u64> = ok.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last_count, mut quiet_since) = (0, Instant::now());
    loop {
        let got = load.consumed.lock().clone();
        if want.is_subset(&got) || Instant::now() > deadline {
            break;
        }
        if got.len() != last_count {
            last_count = got.len();
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<u64> = want.difference(&load.consumed.lock()).copied().collect();
    let lost = missing.len();
    let alive = liveness
        .is_alive_batch(&ids)
        .await
        .expect("batch after the failover");
    assert!(alive.iter().all(|a| *a), "liveness keys survive the failover");
    if lost > 0 {
        if let Some(p) = cluster.primary_of(stream.as_str()) {
            let port = cluster.nodes[p].port;
            println!(
                "new primary: XLEN {:?}, groups {:?}, first missing {:?}",
                raw(port, &["XLEN", stream.as_str()]),
                raw(port, &["XINFO", "GROUPS", stream.as_str()]),
                &missing[..missing.len().min(5)]
            );
        }
    }
    load.stop().await;
    println!(
        "cluster failover ({}): {} publishes Ok, {failed} failed, outage {outage:?} (last Ok before the kill \
         to first Ok after), {lost} Ok publishes never consumed, instance listed again {:?} after the kill \
         ({reregistered_after:?} after the first Ok publish)",
        if durable { "publish_replicas(1, 500ms)" } else { "no WAIT" },
        ok.len(),
        listed_at - killed_at,
    );
    assert!(outage < Duration::from_secs(15), "outage {outage:?}");
    // Re-registered within one heartbeat once the cluster answers again
    // (plus the op timeout and the watcher's polling).
    assert!(
        reregistered_after <= HEARTBEAT + Duration::from_millis(600),
        "listed again {reregistered_after:?} after the first Ok publish"
    );
    if durable {
        assert_eq!(lost, 0, "acknowledged publishes lost: {missing:?}");
    } else {
        // Without WAIT, only what the replica had not received when the
        // primary died may be lost: a few milliseconds of publishes.
        assert!(lost <= 500, "{lost} lost");
    }
}
