//! The conformance suites against a real, private redis-server, under Tokio
//! and async-std / smol; plus the Redis-specific behaviour the reference
//! design relies on.
#![cfg(all(feature = "redis", feature = "testkit"))]

mod support;

use fleetwire::{
    redis::RedisBackend, ErrorKind, EventBus, GroupName, Instance, InstanceId, LivenessStore, RegistryStore,
    ServiceName, StartFrom, Status, StreamName,
};
use support::{suites, RedisServer};

fn backend(server: &RedisServer) -> RedisBackend {
    suites::backend(&server.url())
}

async fn all_suites(server: &RedisServer) {
    suites::assert_passed("Redis", &suites::core(&server.url()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_tokio() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    all_suites(&server).await;
}

#[cfg(feature = "rt-async-std")]
#[test]
fn conformance_on_async_std() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    async_std::task::block_on(all_suites(&server));
}

#[cfg(feature = "rt-smol")]
#[test]
fn conformance_on_smol() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    smol::block_on(all_suites(&server));
}

#[tokio::test]
async fn reference_written_key_is_listed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reply = server.cmd(&[
        "SET",
        "sg:registry:service:gateway:gw-1",
        r#"{"status":"running"}"#,
        "EX",
        "15",
    ]);
    assert!(reply.starts_with("+OK"), "{reply}");
    // Keys written without the index are found by the opt-in background adoption.
    let registry = RedisBackend::builder()
        .url(server.url())
        .adopt_legacy_keys(Some(std::time::Duration::from_millis(50)))
        .build()
        .unwrap()
        .registry();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut listed = registry.list(None).await.unwrap();
    while listed.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        listed = registry.list(None).await.unwrap();
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].service.as_str(), listed[0].id.as_str()),
        ("gateway", "gw-1")
    );
    assert_eq!(listed[0].status, Status::Running);
}

#[tokio::test]
async fn fleetwire_entry_reads_back_with_the_reference_key_and_json() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = backend(&server).registry();
    let inst = Instance::new(
        ServiceName::new("inference").unwrap(),
        InstanceId::new("inf-7").unwrap(),
        Status::Starting,
    );
    reg.register(&inst, std::time::Duration::from_secs(15))
        .await
        .unwrap();
    let raw = server.cmd(&["GET", "sg:registry:service:inference:inf-7"]);
    // The reference JSON plus `ttl_ms`, the TTL it registered with (a
    // reference reader ignores it; LAST-SEEN and the watch read it).
    assert!(
        raw.ends_with("{\"status\":\"starting\",\"ttl_ms\":15000}\r\n"),
        "{raw}"
    );
    let ttl: i64 = server
        .cmd(&["PTTL", "sg:registry:service:inference:inf-7"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 14_000 && ttl <= 15_000, "PTTL {ttl}");
}

#[tokio::test]
async fn ensure_group_on_a_key_of_the_wrong_type_is_an_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    server.cmd(&["SET", "not-a-stream", "x"]);
    let bus = backend(&server).bus();
    let err = bus
        .ensure_group(
            &StreamName::new("not-a-stream").unwrap(),
            &GroupName::new("g").unwrap(),
            StartFrom::Latest,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("not-a-stream"), "{err}");
}

#[tokio::test]
async fn a_stopped_server_gives_temporary_errors_and_recovery_needs_no_rebuild() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let redis = backend(&server);
    let (reg, live, bus) = (redis.registry(), redis.liveness(), redis.bus());
    let id = InstanceId::new("r-1").unwrap();
    reg.ping().await.unwrap();
    server.stop();
    let err = reg.ping().await.unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
    let err = live.is_alive_batch(std::slice::from_ref(&id)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let msg = err.to_string();
    assert!(msg.starts_with("liveness check of 1 ids failed: "), "{msg}");
    assert_eq!(
        msg.matches("liveness check").count(),
        1,
        "message repeats itself: {msg}"
    );
    let err = bus
        .publish(&StreamName::new("s").unwrap(), &fleetwire::Envelope::new("x"))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
    assert!(err.to_string().contains("publish to stream `s` failed"), "{err}");
    server.restart();
    let mut ok = false;
    for _ in 0..50 {
        if reg.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "backend did not reconnect after the server came back");
    live.touch(&id, std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!(live.is_alive_batch(&[id]).await.unwrap(), [true]);
}

#[tokio::test]
async fn password_never_shows() {
    let b = RedisBackend::builder()
        .url("redis://:hunter2@127.0.0.1:1")
        .build()
        .unwrap();
    assert!(!format!("{b:?}").contains("hunter2"));
    let err = b.ping().await.unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{:?}", RedisBackend::builder().url("redis://:hunter2@h")).contains("hunter2"));
}

#[tokio::test(flavor = "current_thread")]
async fn backlog_warning_at_cap_is_logged_at_most_once_per_interval() {
    use fleetwire::BacklogPolicy;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let logs = support::logs::EventCounter::default();
    let _guard = logs.install();
    let mut policy = BacklogPolicy::default();
    policy.sample_every = std::time::Duration::ZERO;
    policy.warn_every = std::time::Duration::from_secs(60);
    let bus = RedisBackend::builder()
        .url(server.url())
        .max_len_floor(1)
        .max_len(50)
        .backlog_policy(policy)
        .build()
        .unwrap()
        .bus();
    let s = StreamName::new("capped").unwrap();
    for _ in 0..30 {
        bus.publish(&s, &fleetwire::Envelope::new("x")).await.unwrap();
    }
    assert_eq!(
        logs.count("stream_backlog_high"),
        0,
        "warned below 80% of the cap"
    );
    for _ in 0..200 {
        bus.publish(&s, &fleetwire::Envelope::new("x")).await.unwrap();
    }
    assert_eq!(
        logs.count("stream_backlog_high"),
        1,
        "a stream at its cap warns once per interval"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn publish_is_one_command_and_the_guard_rides_along_at_most_once_a_second() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let bus = backend(&server).bus();
    let s = StreamName::new("counted").unwrap();
    let before = ["xadd", "xlen", "xinfo|groups"].map(|c| server.calls(c));
    let start = std::time::Instant::now();
    for _ in 0..500 {
        bus.publish(&s, &fleetwire::Envelope::new("x")).await.unwrap();
    }
    let secs = start.elapsed().as_secs() + 1;
    let after = ["xadd", "xlen", "xinfo|groups"].map(|c| server.calls(c));
    let [xadd, xlen, xinfo] = [0, 1, 2].map(|i| after[i] - before[i]);
    println!(
        "500 publishes in {:?}: {xadd} XADD, {xlen} XLEN, {xinfo} XINFO GROUPS",
        start.elapsed()
    );
    assert_eq!(xadd, 500);
    assert!(
        xlen <= secs && xinfo <= secs,
        "guard sampled {xlen}/{xinfo} times in {secs} s"
    );
    assert!(xlen >= 1, "the guard never sampled");
}

#[tokio::test]
async fn password_urls_work_and_the_password_never_shows() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "s3cr3t-pw"]) else {
        return;
    };
    let good = RedisBackend::builder()
        .url(format!("redis://:s3cr3t-pw@127.0.0.1:{}", server.port))
        .build()
        .unwrap();
    good.ping().await.unwrap();
    good.registry().ping().await.unwrap();
    let bad = RedisBackend::builder()
        .url(format!("redis://:wrong-pw@127.0.0.1:{}", server.port))
        .build()
        .unwrap();
    let err = bad.ping().await.unwrap_err();
    assert!(
        !err.to_string().contains("wrong-pw") && !format!("{err:?}").contains("wrong-pw"),
        "{err:?}"
    );
    assert!(!format!("{good:?}").contains("s3cr3t-pw"));
}

#[tokio::test]
async fn fleet_monitor_resubscribes_after_its_connection_drops() {
    use fleetwire::monitor::{FleetMonitor, WorkerState};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let bus: std::sync::Arc<dyn EventBus> = std::sync::Arc::new(backend(&server).bus());
    let monitor = std::sync::Arc::new(FleetMonitor::new(["api"], std::time::Duration::from_secs(30)));
    let _task = monitor.start(bus.clone()).await.unwrap();
    let killed = server.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.starts_with(":2"),
        "expected both subscriptions killed: {killed}"
    );
    let topic = fleetwire::Topic::new("system.api.health").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while monitor.snapshot()[0].status != WorkerState::Ok {
        assert!(
            std::time::Instant::now() < deadline,
            "monitor never heard from api after its subscription dropped"
        );
        bus.publish_topic(&topic, &fleetwire::Envelope::new("system.health"))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_down_and_back_over_http() {
    use fleetwire::{
        health::{Health, HealthCheck},
        http::HttpHealthServer,
        HealthServer,
    };
    use std::io::{Read, Write};
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let registry = backend(&server).registry();
    let health = Health::new(std::time::Duration::from_millis(800));
    health.add_check(HealthCheck::new("registry", move || {
        let r = registry.clone();
        async move { r.ping().await }
    }));
    health.set_booted(true);
    let http = HttpHealthServer::new(([127, 0, 0, 1], 0).into());
    let addr = http.start(health).await.unwrap().unwrap();
    let readyz = move || {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
        })
    };
    assert_eq!(readyz().await.unwrap(), 200);
    server.stop();
    assert_eq!(readyz().await.unwrap(), 503, "ready while Redis is down");
    server.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while readyz().await.unwrap() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready again after Redis came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    http.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_registry_entry_is_skipped_not_fatal() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = backend(&server).registry();
    let good = Instance::new(
        ServiceName::new("api").unwrap(),
        InstanceId::new("api-1").unwrap(),
        Status::Running,
    );
    reg.register(&good, std::time::Duration::from_secs(15))
        .await
        .unwrap();
    // Written by someone else under our prefix: not JSON, and JSON without a status.
    server.cmd(&["SET", "sg:registry:service:api:broken", "not json", "EX", "15"]);
    server.cmd(&[
        "SET",
        "sg:registry:service:api:nostatus",
        "{\"pid\":1}",
        "EX",
        "15",
    ]);
    let listed = reg.list(None).await.unwrap();
    assert_eq!(listed, vec![good]);
}

#[cfg(not(feature = "redis-sentinel"))]
#[tokio::test]
async fn a_sentinel_url_without_the_feature_names_the_feature() {
    let err = RedisBackend::builder()
        .url("redis+sentinel://:pw@127.0.0.1:26379/m")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("`redis-sentinel` feature"), "{err}");
    assert!(!err.to_string().contains("pw@"), "{err}");
}

/// `stream_names` pages through the whole keyspace and lists only streams,
/// sorted; keys no stream name could address are skipped, not fatal.
#[tokio::test]
async fn stream_names_lists_every_stream_and_skips_unaddressable_keys() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = backend(&server);
    assert!(redis.stream_names().await.unwrap().is_empty());
    // More streams than one SCAN page, among more plain keys.
    let script = "for i = 1, 2500 do redis.call('XADD', 'st:' .. i, '*', 'k', 'v'); \
                  redis.call('SET', 'plain:' .. i, 'v') end";
    server.cmd(&["EVAL", script, "0"]);
    server.cmd(&["XADD", "bad stream", "*", "k", "v"]);
    server.cmd(&["XADD", "glob*", "*", "k", "v"]);
    let names = redis.stream_names().await.unwrap();
    let mut want: Vec<String> = (1..=2500).map(|i| format!("st:{i}")).collect();
    want.sort();
    let got: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    assert_eq!(got, want);
}
