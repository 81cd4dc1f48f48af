//! Redis Sentinel: the conformance suites over a `redis+sentinel://`
//! backend (a primary, one replica, three Sentinels started by the test),
//! and failover under a publish + consume load with the consumer runner.
#![cfg(all(feature = "redis-sentinel", feature = "testkit", feature = "rt-tokio"))]

mod support;

use fleetwire::{redis::RedisBackend, Envelope, ErrorKind, EventBus, RegistryStore, ServiceName, StreamName};
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};
use support::{
    failover::{Load, HEARTBEAT},
    sentinel::{raw, SentinelSet},
    suites,
};

fn backend(set: &SentinelSet) -> RedisBackend {
    suites::backend(&set.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_tokio() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    all_suites(&set).await;
}

#[cfg(feature = "rt-smol")]
#[test]
fn conformance_on_smol() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    smol::block_on(all_suites(&set));
}

#[cfg(feature = "rt-async-std")]
#[test]
fn conformance_on_async_std() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    async_std::task::block_on(all_suites(&set));
}

async fn all_suites(set: &SentinelSet) {
    suites::assert_passed("Sentinel", &suites::all(&set.url()).await);
    // Everything went to the primary: the replica refuses writes, and got
    // its copy of the streams by replication.
    let xadds = |port| {
        raw(port, &["INFO", "commandstats"])
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("cmdstat_xadd:calls=")?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    assert!(xadds(set.primary.port) > 0);
    assert!(
        raw(set.replicas[0].port, &["INFO", "replication"]).is_some_and(|r| r.contains("role:slave")),
        "the replica is still a replica"
    );
}

#[tokio::test]
async fn malformed_sentinel_urls_are_rejected_naming_the_problem() {
    for (url, says) in [
        ("redis+sentinel://127.0.0.1:26379", "no master name"),
        ("redis+sentinel://127.0.0.1:port/m", "`port` is not a port"),
        ("redis+sentinel://:hunter2@h:1,/m", "empty Sentinel address"),
        ("redis+sentinel://h:1/m/zero", "`zero` is not a database number"),
    ] {
        let err = RedisBackend::builder().url(url).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(says), "{url}: {msg}");
        assert!(!msg.contains("hunter2"), "the password leaked: {msg}");
    }
}

#[tokio::test]
async fn no_sentinel_answering_fails_fast_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisBackend::builder()
        .url(format!("redis+sentinel://127.0.0.1:{port}/m"))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .expect("build succeeds while the Sentinels are down");
    let err = redis.ping().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    assert!(
        err.to_string().contains("no Sentinel named a primary for `m`"),
        "{err}"
    );
}

struct Outcome {
    ok: usize,
    failed: usize,
    lost: usize,
    outage: Duration,
    reregistered_after: Duration,
    listed_after_kill: Duration,
}

/// Publish 5,000+ messages (counting only those that returned `Ok`) while
/// a runner consumes them and a lifecycle keeps an instance registered;
/// `kill -9` the primary after 1,500, restart it (Sentinel makes it a
/// replica of the new primary) once the Sentinels agree on a new one.
async fn failover_under_load(durable: bool, replicas: usize) -> Option<Outcome> {
    let mut set = SentinelSet::start_with(replicas)?;
    let stream = StreamName::new("orders").unwrap();
    let load = Load::start(set.url(), durable, &stream).await;
    let bus = load.bus.clone();
    let old_port = set.primary.port;
    let (mut ok, mut failed) = (Vec::<u64>::new(), 0usize);
    let mut ids = std::collections::BTreeMap::new();
    let (mut last_ok_before, mut first_ok_after) = (None::<Instant>, None::<Instant>);
    let mut killed = false;
    let mut watcher = None;
    let mut killed_at = Instant::now();
    let mut restarted = false;
    let mut seq = 0u64;
    let started = Instant::now();
    while ok.len() < 5_000 {
        assert!(started.elapsed() < Duration::from_secs(90), "load did not finish");
        if !killed && ok.len() == 1_500 {
            assert!(set.primary.kill9());
            killed_at = Instant::now();
            killed = true;
            watcher = Some(load.watch_relisting());
        }
        if killed && !restarted {
            if let Some(new) = set.wait_new_primary(old_port, Duration::ZERO) {
                assert_ne!(new, old_port);
                // The old primary comes back (a supervisor restarting it) and
                // Sentinel turns it into a replica of the new one.
                set.primary.restart();
                restarted = true;
            }
        }
        if std::env::var_os("SENTINEL_TRACE").is_some() && seq.is_multiple_of(500) {
            eprintln!(
                "{:?}: {} ok, {failed} failed, killed {killed}, restarted {restarted}",
                started.elapsed(),
                ok.len()
            );
        }
        seq += 1;
        let envelope = Envelope::new(seq.to_string());
        match tokio::time::timeout(Duration::from_secs(2), bus.publish(&stream, &envelope)).await {
            Ok(Ok(id)) => {
                ids.insert(seq, id);
                let now = Instant::now();
                if killed && first_ok_after.is_none() {
                    first_ok_after = Some(now);
                } else if !killed {
                    last_ok_before = Some(now);
                }
                ok.push(seq);
            }
            other => {
                if std::env::var_os("SENTINEL_TRACE").is_some() {
                    eprintln!("{:?}: publish {seq}: {other:?}", started.elapsed());
                }
                failed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let (before, after) = (
        last_ok_before.unwrap(),
        first_ok_after.expect("no publish after the kill"),
    );
    let outage = after - before;

    // Re-registration: listed through the backend again within one heartbeat
    // of the backend working again (the entry's 2 s TTL may run out in the
    // outage, or the entry not reach the replica: the lifecycle puts it back).
    let listed_at = tokio::time::timeout(Duration::from_secs(10), watcher.unwrap())
        .await
        .expect("the instance was not listed again within 10 s")
        .unwrap();
    let reregistered_after = listed_at.saturating_duration_since(after);

    // Drain: everything still arriving is consumed.
    let want: BTreeSet<u64> = ok.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_count = 0;
    let mut quiet_since = Instant::now();
    loop {
        let got = load.consumed.lock().clone();
        if want.is_subset(&got) || Instant::now() > deadline {
            break;
        }
        if got.len() != last_count {
            last_count = got.len();
            quiet_since = Instant::now();
        } else if !durable && quiet_since.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = load.consumed.lock().clone();
    let missing: Vec<u64> = want.difference(&got).copied().collect();
    let lost = missing.len();
    if lost > 0 {
        // Tell a publish the promoted replica never had from one it has
        // but the runner did not hand out.
        let primary = set
            .wait_new_primary(old_port, Duration::from_secs(1))
            .unwrap_or(old_port);
        for seq in &missing {
            let id = ids[seq].to_string();
            let on_primary = raw(primary, &["XRANGE", "orders", &id, &id]).is_some_and(|r| r.contains(&id));
            println!("unconsumed publish {seq} ({id}): in the new primary's stream: {on_primary}");
        }
    }
    load.stop().await;
    Some(Outcome {
        ok: ok.len(),
        failed,
        lost,
        outage,
        reregistered_after,
        listed_after_kill: listed_at - killed_at,
    })
}

fn report(what: &str, o: &Outcome) {
    println!(
        "sentinel failover ({what}): {} publishes Ok, {} failed, outage {:?} (last Ok before the kill to first Ok after), \
         {} acknowledged publishes lost, instance listed again {:?} after the kill ({:?} after the first Ok publish)",
        o.ok, o.failed, o.outage, o.lost, o.listed_after_kill, o.reregistered_after
    );
}

/// With one replica, the only replica is promoted: acknowledged publishes
/// wait (and fail `NotReplicated`) until the restarted old primary has
/// rejoined as a replica, which Sentinel notices on its 10 s `INFO` round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_replica_acknowledgement_loses_no_acknowledged_publish() {
    let Some(o) = failover_under_load(true, 1).await else {
        return;
    };
    report("publish_replicas(1, 500ms), 1 replica", &o);
    assert_eq!(o.lost, 0, "a publish that returned Ok was lost");
    assert!(
        o.reregistered_after <= HEARTBEAT + Duration::from_millis(600),
        "{:?}",
        o.reregistered_after
    );
}

/// With two replicas, the one not promoted follows the new primary and
/// acknowledges at once: the outage is the failover's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_two_replicas_and_acknowledgement_loses_no_acknowledged_publish() {
    let Some(o) = failover_under_load(true, 2).await else {
        return;
    };
    report("publish_replicas(1, 500ms), 2 replicas", &o);
    assert_eq!(o.lost, 0, "a publish that returned Ok was lost");
    assert!(
        o.reregistered_after <= HEARTBEAT + Duration::from_millis(600),
        "{:?}",
        o.reregistered_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_acknowledgement_reports_what_it_lost() {
    let Some(o) = failover_under_load(false, 1).await else {
        return;
    };
    report("asynchronous replication, 1 replica", &o);
    assert!(
        o.reregistered_after <= HEARTBEAT + Duration::from_millis(600),
        "{:?}",
        o.reregistered_after
    );
}

/// A planned failover (`SENTINEL FAILOVER`): the old primary stays up and
/// is demoted to a replica, so the backend's connections do not break;
/// writes there would answer `READONLY`. Once the old primary is a replica,
/// every write lands on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_left_for_the_new_one() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let redis = backend(&set);
    let (bus, registry) = (redis.bus(), redis.registry());
    let stream = StreamName::new("planned").unwrap();
    bus.publish(&stream, &Envelope::new("before")).await.unwrap();
    let old = set.primary.port;
    let reply = raw(
        set.sentinels[0].port,
        &["SENTINEL", "FAILOVER", support::sentinel::MASTER],
    )
    .unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let new = set
        .wait_new_primary(old, Duration::from_secs(20))
        .expect("the Sentinels did not agree on a new primary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !raw(old, &["INFO", "replication"]).is_some_and(|r| r.contains("role:slave")) {
        assert!(Instant::now() < deadline, "the old primary was not demoted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let mut errors = BTreeSet::new();
    let id = loop {
        match bus.publish(&stream, &Envelope::new("after")).await {
            Ok(id) => break id,
            Err(e) => {
                errors.insert(format!("{:?}", e.kind()));
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still failing: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "planned failover: first write {:?} after the old primary was demoted (errors meanwhile: {errors:?})",
        started.elapsed()
    );
    let last = raw(new, &["XREVRANGE", "planned", "+", "-", "COUNT", "1"]).unwrap();
    assert!(
        last.contains(&id.to_string()),
        "{id} is not on the new primary: {last}"
    );
    let inst = fleetwire::Instance::new(
        ServiceName::new("planned").unwrap(),
        fleetwire::InstanceId::new("p-1").unwrap(),
        fleetwire::Status::Running,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.register(&inst, Duration::from_secs(5)).await.is_err() {
        assert!(Instant::now() < deadline, "the registry did not follow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(raw(new, &["EXISTS", "sg:registry:service:planned:p-1"]).is_some_and(|r| r.trim() == ":1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_replicas_reports_too_few_acknowledgements() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    let stream = StreamName::new("acked").unwrap();
    let with = |n: u32| {
        RedisBackend::builder()
            .url(set.url())
            .publish_replicas(n, Duration::from_millis(200))
            .build()
            .expect("backend")
            .bus()
    };
    // One replica: one acknowledgement, for a publish and a batch.
    let bus = with(1);
    bus.publish(&stream, &Envelope::new("one")).await.unwrap();
    let ids = bus
        .publish_batch(&stream, &[Envelope::new("two"), Envelope::new("three")])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // Two asked of one replica: the entry is written, the caller told it is not safe.
    let started = Instant::now();
    let err = with(2)
        .publish(&stream, &Envelope::new("four"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReplicated, "{err}");
    assert!(!err.is_temporary());
    let msg = err.to_string();
    assert!(
        msg.contains("stream `acked`") && msg.contains("1 of 2 replicas"),
        "{msg}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(raw(set.primary.port, &["XLEN", "acked"]).unwrap().trim(), ":4");
    // Keep-unacknowledged streams refuse it rather than skip the WAIT.
    let keep = RedisBackend::builder()
        .url(set.url())
        .trim_policy(fleetwire::TrimPolicy::keep_unacknowledged())
        .publish_replicas(1, Duration::from_millis(200))
        .build()
        .unwrap()
        .bus();
    let err = keep.publish(&stream, &Envelope::new("five")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_env_takes_a_sentinel_url() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    // No other test in this binary reads the environment's Redis URL.
    std::env::set_var("SG_REDIS_URL", set.url());
    let redis = RedisBackend::from_env().expect("backend");
    redis.ping().await.unwrap();
    redis
        .bus()
        .publish(&StreamName::new("env").unwrap(), &Envelope::new("x"))
        .await
        .unwrap();
    assert_eq!(raw(set.primary.port, &["XLEN", "env"]).unwrap().trim(), ":1");
}

/// The Sentinels name a primary that hangs (SIGSTOP): `build` still returns
/// within the connect timeout, calls fail fast as temporary, and once the
/// primary answers again the backend uses it without a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_at_build_costs_at_most_the_connect_timeout() {
    let Some(set) = SentinelSet::start() else {
        return;
    };
    set.primary.pause();
    let started = Instant::now();
    let redis = RedisBackend::builder()
        .url(set.url())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("build succeeds while the primary hangs");
    let took = started.elapsed();
    let err = redis.ping().await.unwrap_err();
    set.primary.resume();
    assert!(took < Duration::from_millis(300 + 200), "build took {took:?}");
    assert!(err.is_temporary(), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = redis.ping().await {
        assert!(
            Instant::now() < deadline,
            "never reached the resumed primary: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
