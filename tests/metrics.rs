//! `/metrics` scraped over HTTP during a real workload on a real
//! redis-server, parsed with a Prometheus text parser.
#![cfg(all(feature = "metrics", feature = "redis", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    consumer::{HandlerError, HandlerResult, Runner},
    health::Health,
    http::{HttpHealthServer, Overview},
    metrics::{Metrics, CONTENT_TYPE},
    redis::RedisBackend,
    service::Shutdown,
    ConsumerName, Delivery, Envelope, EventBus, GroupName, HealthServer, Instance, InstanceId, LivenessStore,
    RegistryStore, ServiceName, Status, StreamName,
};
use prometheus_parse::{Sample, Scrape, Value};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};
use support::RedisServer;

/// GET `path`: (status, content type, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

struct Scraped {
    text: String,
    scrape: Scrape,
}

impl Scraped {
    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    /// Observations of a histogram: its `+Inf` bucket, checked against `_count`.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let s = self.find(name, labels)?;
        let Value::Histogram(buckets) = &s.value else {
            panic!("{name} is not a histogram: {:?}", s.value);
        };
        let inf = buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .expect("+Inf bucket")
            .count;
        let count = self.value(&format!("{name}_count"), labels).expect("_count");
        assert_eq!(inf, count, "{name}: +Inf bucket and _count differ");
        // Cumulative buckets never decrease.
        assert!(buckets
            .windows(2)
            .all(|w| w[0].less_than > w[1].less_than || w[0].count <= w[1].count));
        Some(count)
    }

    /// `# TYPE` of a family, read from the text (OpenMetrics names a
    /// counter's family without `_total`).
    fn type_of(&self, family: &str) -> Option<&str> {
        self.text.lines().find_map(|l| {
            let rest = l.strip_prefix("# TYPE ")?;
            let (name, kind) = rest.split_once(' ')?;
            (name == family).then_some(kind)
        })
    }
}

/// Scrape over a blocking socket, off the runtime's workers (the runner needs them).
async fn scrape(addr: SocketAddr) -> Scraped {
    let (status, content_type, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("scrape thread");
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, CONTENT_TYPE);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    Scraped { text, scrape }
}

/// Names, suffixes and labels every scrape must respect.
fn check_conventions(s: &Scraped) {
    for line in s.text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            name.starts_with("fleetwire_") || name.starts_with("redis_stream_"),
            "unprefixed family {name}"
        );
        if kind == "histogram" {
            assert!(name.ends_with("_seconds"), "histogram {name} is not in seconds");
        }
        if kind == "counter" {
            assert!(
                !name.ends_with("_total"),
                "{name}: the family is named without _total"
            );
        }
    }
    for sample in &s.scrape.samples {
        if s.type_of(&sample.metric) == Some("gauge") {
            continue;
        }
        if let Some(family) = sample.metric.strip_suffix("_total") {
            assert_eq!(
                s.type_of(family),
                Some("counter"),
                "{} ends with _total",
                sample.metric
            );
        }
        for forbidden in ["id", "instance", "consumer", "message"] {
            assert!(
                sample.labels.get(forbidden).is_none(),
                "{} has a {forbidden} label",
                sample.metric
            );
        }
    }
}

async fn handle(d: Delivery) -> HandlerResult {
    let n: u64 = d
        .envelope()
        .and_then(|e| e.payload_as())
        .map_err(HandlerError::dead_letter)?;
    if n.is_multiple_of(10) {
        return Err(HandlerError::dead_letter(format!("poison {n}")));
    }
    if n.is_multiple_of(7) && d.delivery_count == 1 {
        return Err(HandlerError::retry_after(Duration::from_millis(20), "try again"));
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_a_redis_workload() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::builder()
        .url(server.url())
        .build()
        .expect("backend");
    let raw_bus: Arc<dyn EventBus> = Arc::new(backend.bus());
    let raw_registry: Arc<dyn RegistryStore> = Arc::new(backend.registry());
    let stream = StreamName::new("sg:stream:orders").unwrap();
    let group = GroupName::new("sg:workers").unwrap();
    let dlq = StreamName::new("sg:stream:orders:dlq").unwrap();

    let metrics = Metrics::builder()
        .overview(
            Overview::new()
                .registry(raw_registry.clone())
                .bus(raw_bus.clone())
                .stream(stream.clone())
                .timeout(Duration::from_millis(500)),
        )
        .build();
    let bus = metrics.bus(raw_bus.clone());
    let registry = metrics.registry(raw_registry);
    let liveness = metrics.liveness(Arc::new(backend.liveness()));

    let http = HttpHealthServer::builder()
        .addr(([127, 0, 0, 1], 0).into())
        .metrics(metrics.source())
        .build()
        .unwrap();
    let addr = http.start(Health::default()).await.unwrap().expect("listening");

    // The registry: two instances; a heartbeat for a third that is not
    // there, which then registers (as the heartbeat loop recovers).
    let api = ServiceName::new("api").unwrap();
    let ttl = Duration::from_secs(60);
    let instance = |id: &str| Instance::new(api.clone(), InstanceId::new(id).unwrap(), Status::Running);
    for id in ["a1", "a2"] {
        registry.register(&instance(id), ttl).await.unwrap();
    }
    assert!(registry
        .heartbeat(&api, &InstanceId::new("a1").unwrap(), ttl)
        .await
        .unwrap());
    assert!(!registry
        .heartbeat(&api, &InstanceId::new("a3").unwrap(), ttl)
        .await
        .unwrap());
    registry.register(&instance("a3"), ttl).await.unwrap();
    let ids: Vec<_> = ["a1", "a2", "zz"]
        .iter()
        .map(|i| InstanceId::new(*i).unwrap())
        .collect();
    for id in &ids[..2] {
        liveness.touch(id, Duration::from_secs(60)).await.unwrap();
    }
    assert_eq!(liveness.is_alive_batch(&ids).await.unwrap(), [true, true, false]);
    // A call that fails: the group does not exist.
    let missing = GroupName::new("sg:nobody").unwrap();
    let err = bus.pending(&stream, &missing).await.expect_err("no such group");

    let runner = Runner::builder(
        bus.clone(),
        stream.clone(),
        group.clone(),
        ConsumerName::new("w1").unwrap(),
    )
    .handler(metrics.handler(&stream, &group, handle))
    .concurrency(8)
    .build()
    .unwrap();
    metrics.watch_runner(&runner);
    let stop = Shutdown::default();
    let running = {
        let (runner, stop) = (runner.clone(), stop.clone());
        tokio::spawn(async move { runner.run(stop.wait()).await })
    };

    let t = Instant::now();
    let before = scrape(addr).await;
    eprintln!(
        "first scrape (registry list + 2 XINFO over HTTP): {:?}",
        t.elapsed()
    );
    check_conventions(&before);
    assert_eq!(
        before.value("fleetwire_publishes_total", &[("stream", stream.as_str())]),
        None
    );
    assert_eq!(
        before.value(
            "fleetwire_registry_instances",
            &[("service", "api"), ("status", "running")]
        ),
        Some(3.0)
    );
    assert_eq!(
        before.value("fleetwire_registrations_total", &[("service", "api")]),
        Some(3.0)
    );
    assert_eq!(
        before.value("fleetwire_reregistrations_total", &[("service", "api")]),
        Some(1.0)
    );
    assert_eq!(
        before.value("fleetwire_heartbeat_failures_total", &[("service", "api")]),
        Some(1.0)
    );
    assert_eq!(
        before.histogram_count("fleetwire_liveness_batch_duration_seconds", &[]),
        Some(1.0)
    );
    let kind = format!("{:?}", err.kind());
    let errors: f64 = before
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "fleetwire_errors_total" && s.labels.get("op") == Some("pending"))
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(errors, 1.0, "pending error ({kind}) counted once");

    // The workload: 100 entries, 60 in one batch; every tenth is poison,
    // every seventh fails once.
    let env = |n: u64| Envelope::new("order").with_payload(&n).unwrap();
    for n in 1..=40 {
        bus.publish(&stream, &env(n)).await.unwrap();
    }
    let batch: Vec<_> = (41..=100).map(env).collect();
    bus.publish_batch(&stream, &batch).await.unwrap();

    let workload = Instant::now();
    // Scraped while it runs: counters only ever grow.
    let mut last_acked = 0.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let during = loop {
        let s = scrape(addr).await;
        let acked = s
            .value(
                "fleetwire_consumer_messages_total",
                &[
                    ("stream", stream.as_str()),
                    ("group", group.as_str()),
                    ("outcome", "ack"),
                ],
            )
            .unwrap_or(0.0);
        assert!(
            acked >= last_acked,
            "ack counter went back from {last_acked} to {acked}"
        );
        last_acked = acked;
        let dead = s
            .value(
                "fleetwire_consumer_messages_total",
                &[("stream", stream.as_str()), ("outcome", "dead_letter")],
            )
            .unwrap_or(0.0);
        if acked + dead >= 100.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the runner did not finish: {}", s.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("workload handled in {:?}", workload.elapsed());
    check_conventions(&during);
    let on_stream = [("stream", stream.as_str())];
    let on_group = [("stream", stream.as_str()), ("group", group.as_str())];
    assert_eq!(during.value("fleetwire_publishes_total", &on_stream), Some(100.0));
    assert_eq!(
        during.histogram_count("fleetwire_publish_duration_seconds", &on_stream),
        Some(41.0)
    );
    let outcome = |o: &str| {
        during.value(
            "fleetwire_consumer_messages_total",
            &[
                ("stream", stream.as_str()),
                ("group", group.as_str()),
                ("outcome", o),
            ],
        )
    };
    assert_eq!(outcome("ack"), Some(90.0));
    assert_eq!(outcome("dead_letter"), Some(10.0));
    // 7, 14, ... 98 minus 70: 13 entries fail once.
    assert_eq!(outcome("retry"), Some(13.0));
    assert_eq!(
        during.histogram_count("fleetwire_handler_duration_seconds", &on_group),
        Some(113.0)
    );
    assert_eq!(during.value("redis_stream_length", &on_stream), Some(100.0));
    assert_eq!(
        during.value("redis_stream_length", &[("stream", dlq.as_str())]),
        Some(10.0)
    );
    assert_eq!(during.value("redis_stream_groups", &on_stream), Some(1.0));
    assert_eq!(during.value("redis_stream_group_consumers", &on_group), Some(1.0));
    assert_eq!(during.value("redis_stream_group_lag", &on_group), Some(0.0));
    // Acks ride with the next read: wait for the last ones to land.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(addr).await;
        if s.value("redis_stream_group_messages_pending", &on_group) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "entries stayed pending: {}", s.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(during.value("fleetwire_scrape_errors_total", &[]), Some(0.0));

    stop.trigger();
    running.await.unwrap().unwrap();

    // Redis gone: a scrape still answers, in bounded time, without the
    // figures it could not read, and counts what failed.
    server.stop();
    let t = Instant::now();
    let down = scrape(addr).await;
    eprintln!("scrape with Redis down: {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a scrape hung on a dead Redis"
    );
    check_conventions(&down);
    assert_eq!(
        down.value("redis_stream_length", &on_stream),
        None,
        "{}",
        down.text
    );
    assert_eq!(
        down.value("fleetwire_registry_instances", &[("service", "api")]),
        None
    );
    assert!(
        down.value("fleetwire_scrape_errors_total", &[]).unwrap() >= 2.0,
        "{}",
        down.text
    );
    assert_eq!(
        down.value("fleetwire_publishes_total", &on_stream),
        Some(100.0),
        "counters stay"
    );
    http.stop().await.unwrap();
    eprintln!("--- /metrics excerpt ---\n{}", during.text);
}

#[tokio::test]
async fn without_a_source_metrics_is_404() {
    let http = HttpHealthServer::builder()
        .addr(([127, 0, 0, 1], 0).into())
        .build()
        .unwrap();
    let addr = http.start(Health::default()).await.unwrap().unwrap();
    let (status, _, _) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    http.stop().await.unwrap();
}

/// Every wrapper passes the conformance suite of the contract it wraps.
#[cfg(all(feature = "memory", feature = "testkit"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrappers_pass_the_conformance_suites() {
    use fleetwire::{
        clock::ManualClock,
        memory::{MemoryBus, MemoryLiveness, MemoryRegistry},
        testkit,
    };
    let clock = || ManualClock::new(1_700_000_000_000);
    let metrics = Metrics::default();

    let c = clock();
    let registry = metrics.registry(Arc::new(MemoryRegistry::with_clock(Arc::new(c.clone()))));
    testkit::registry::run(registry.as_ref(), &c)
        .await
        .assert_all_passed();

    let c = clock();
    let liveness = metrics.liveness(Arc::new(MemoryLiveness::with_clock(Arc::new(c.clone()))));
    testkit::liveness::run(liveness.as_ref(), &c)
        .await
        .assert_all_passed();

    let c = clock();
    let bus = metrics.bus(Arc::new(
        MemoryBus::builder()
            .clock(Arc::new(c.clone()))
            .max_len_floor(1)
            .max_len(200)
            .build(),
    ));
    testkit::bus::run(bus.as_ref(), &c).await.assert_all_passed();
    testkit::consumer::run(metrics.bus(Arc::new(MemoryBus::new())))
        .await
        .assert_all_passed();

    // The suites' own traffic shows: publishes, registrations, batch reads.
    let text = metrics.render().await;
    for family in [
        "fleetwire_publishes_total{",
        "fleetwire_registrations_total{",
        "fleetwire_liveness_batch_duration_seconds_count ",
        "fleetwire_errors_total{",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
}

/// A lifecycle whose registration vanishes (deleted behind its back) shows
/// one heartbeat failure and one re-registration, through the metered registry.
#[cfg(feature = "memory")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_registration_shows_as_a_heartbeat_failure_and_a_reregistration() {
    use fleetwire::{
        memory::{MemoryBus, MemoryRegistry},
        service::Lifecycle,
    };

    let metrics = Metrics::default();
    let raw = Arc::new(MemoryRegistry::new());
    let lifecycle = Lifecycle::builder("billing", "billing-1")
        .unwrap()
        .registry(metrics.registry(raw.clone()))
        .bus(Arc::new(MemoryBus::new()))
        .jitter(Duration::ZERO)
        .heartbeat_every(Duration::from_millis(50))
        .handle_signals(false)
        .build();
    let stop = lifecycle.shutdown_handle();
    let task = tokio::spawn(async move { lifecycle.run(&support::Idle).await });

    let series = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{service=\"billing\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let service = ServiceName::new("billing").unwrap();
    let id = InstanceId::new("billing-1").unwrap();
    let wait_for = |name: &'static str, want: f64| {
        let metrics = metrics.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = metrics.render().await;
                if series(&text, name) == Some(want) {
                    return;
                }
                assert!(Instant::now() < deadline, "{name} never reached {want}:\n{text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Registered as starting, then as running.
    wait_for("fleetwire_registrations_total", 2.0).await;
    // Deleted behind its back, as an operator's `deregister` or a flushed store would.
    raw.deregister(&service, &id).await.unwrap();
    wait_for("fleetwire_reregistrations_total", 1.0).await;
    assert_eq!(
        series(&metrics.render().await, "fleetwire_registrations_total"),
        Some(3.0)
    );
    let text = metrics.render().await;
    assert_eq!(
        series(&text, "fleetwire_heartbeat_failures_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        raw.list(Some(&service)).await.unwrap().len(),
        1,
        "registered again"
    );

    stop.trigger();
    task.await.unwrap().unwrap();
}

/// The registry wrapper passes `list_with_expiry` through: without it the
/// trait's default (`list`) drops Redis's TTLs, and a watch over a metered
/// registry would report every expiry as a departure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_registry_keeps_expiry_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::builder().url(server.url()).build().unwrap();
    let registry = Metrics::default().registry(Arc::new(backend.registry()));
    let api = ServiceName::new("api").unwrap();
    let instance = Instance::new(api.clone(), InstanceId::new("a1").unwrap(), Status::Running);
    registry
        .register(&instance, Duration::from_secs(60))
        .await
        .unwrap();
    let listed = registry.list_with_expiry(Some(&api)).await.unwrap();
    let left = listed[0].expires_in.expect("expires_in through the wrapper");
    assert!(
        left > Duration::from_secs(50) && left <= Duration::from_secs(60),
        "{left:?}"
    );
}
