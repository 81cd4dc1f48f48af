//! Faults injected into the Redis registry and liveness store, and what the
//! user sees: passwords in every URL form, a Redis that hangs or dies and
//! comes back, refused credentials, a full Redis, keys of the wrong type
//! written by hand, the reference Go store's commands, extreme durations.
#![cfg(all(feature = "redis", feature = "testkit"))]

mod support;

use fleetwire::{
    redis::RedisBackend, ErrorKind, Instance, InstanceId, LivenessStore, RegistryStore, ServiceName, Status,
};
use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use support::RedisServer;

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn id(name: &str) -> InstanceId {
    InstanceId::new(name).unwrap()
}

fn inst(service: &str, i: &str) -> Instance {
    Instance::new(svc(service), id(i), Status::Running)
}

const TTL: Duration = Duration::from_secs(30);

/// What `anyhow`'s `{:#}` prints: the error, then each `source()`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(&format!(": {s}"));
        next = s.source();
    }
    out
}

/// Every line fleetwire logs while installed (this thread: use a
/// current-thread runtime so spawned tasks log here too).
#[derive(Clone, Default)]
struct LogText(Arc<Mutex<Vec<u8>>>);

impl Write for LogText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogText {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything a user can print of a backend built from `url` and of the
/// errors its calls return, none holding `secret`. The backend must fail
/// its calls (wrong password, or nothing listening).
async fn outputs_of(url: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let builder = RedisBackend::builder()
        .url(url)
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(800));
    out.push(("builder Debug".into(), format!("{builder:?}")));
    let backend = match builder.build() {
        Ok(b) => b,
        Err(e) => {
            out.push(("build error".into(), e.to_string()));
            out.push(("build error Debug".into(), format!("{e:?}")));
            out.push(("build error chain".into(), chain(&e)));
            return out;
        }
    };
    out.push(("backend Debug".into(), format!("{backend:?}")));
    out.push(("bus Debug".into(), format!("{:?}", backend.bus())));
    out.push(("registry Debug".into(), format!("{:?}", backend.registry())));
    out.push(("liveness Debug".into(), format!("{:?}", backend.liveness())));
    let errors = [
        ("ping", backend.ping().await.err()),
        (
            "register",
            backend.registry().register(&inst("api", "a-1"), TTL).await.err(),
        ),
        ("list", backend.registry().list(None).await.err()),
        ("touch", backend.liveness().touch(&id("a-1"), TTL).await.err()),
    ];
    for (call, e) in errors {
        let e = e.unwrap_or_else(|| panic!("{call} on `{url}` did not fail"));
        out.push((format!("{call} error"), e.to_string()));
        out.push((format!("{call} error Debug"), format!("{e:?}")));
        out.push((format!("{call} error chain"), chain(&e)));
    }
    out.push(("backend Debug after errors".into(), format!("{backend:?}")));
    out
}

/// `live_url` reaches a server that refuses its password; `dead_url` is the
/// same form where nothing listens (so the outage is logged too).
async fn assert_secret_hidden(live_url: &str, dead_url: &str, secret: &str) {
    let logs = LogText::default();
    let _guard = logs.install();
    let mut outputs = outputs_of(live_url).await;
    outputs.extend(outputs_of(dead_url).await);
    let text = logs.text();
    outputs.push(("logs".into(), text.clone()));
    for (what, printed) in &outputs {
        assert!(
            !printed.contains(secret),
            "{what} shows the password `{secret}`: {printed}"
        );
    }
    if !live_url.starts_with("rediss") {
        assert!(
            text.contains("redis_unavailable"),
            "the outage was not logged, so the logs prove nothing:\n{text}"
        );
    }
    println!(
        "{} outputs checked for `{live_url}`, e.g. {:?}",
        outputs.len(),
        outputs.iter().find(|(w, _)| w == "ping error")
    );
}

#[tokio::test]
async fn secret_password_only_userinfo() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "right-pw"]) else {
        return;
    };
    assert_secret_hidden(
        &format!("redis://:S3cretPw@127.0.0.1:{}", server.port),
        &format!("redis://:S3cretPw@127.0.0.1:{}", closed_port()),
        "S3cretPw",
    )
    .await;
}

#[tokio::test]
async fn secret_user_and_password_userinfo() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "right-pw"]) else {
        return;
    };
    assert_secret_hidden(
        &format!("redis://default:S3cret%40Pw@127.0.0.1:{}/0", server.port),
        &format!("redis://default:S3cret%40Pw@127.0.0.1:{}/0", closed_port()),
        "S3cret",
    )
    .await;
}

#[tokio::test]
async fn secret_tls_url() {
    // No TLS feature is on: building fails, and says why without the password.
    assert_secret_hidden(
        "rediss://admin:S3cretTls@127.0.0.1:6380/0",
        "rediss://:S3cretTls@127.0.0.1:1",
        "S3cretTls",
    )
    .await;
}

#[tokio::test]
async fn secret_unix_socket_pass_query() {
    let sock = std::env::temp_dir().join(format!("fw-hard-{}.sock", std::process::id()));
    let sock = sock.to_str().unwrap().to_owned();
    let Some(_server) = RedisServer::start_with(&["--unixsocket", &sock, "--requirepass", "right-pw"]) else {
        return;
    };
    assert_secret_hidden(
        &format!("redis+unix://{sock}?db=0&pass=S3cret"),
        &format!("redis+unix://{sock}.gone?pass=S3cret"),
        "S3cret",
    )
    .await;
    let _ = std::fs::remove_file(&sock);
}

#[tokio::test]
async fn secret_password_query() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "right-pw"]) else {
        return;
    };
    // redis-rs ignores `?password=` on TCP (so the server says NOAUTH), but
    // other clients read it: it is a secret all the same.
    assert_secret_hidden(
        &format!("redis://127.0.0.1:{}/?password=S3cretQ", server.port),
        &format!(
            "redis://127.0.0.1:{}/?password=S3cretQ&protocol=resp2",
            closed_port()
        ),
        "S3cretQ",
    )
    .await;
    assert_secret_hidden(
        "unix:///nonexistent/fw.sock?password=S3cretQ",
        "redis+unix:///nonexistent/fw2.sock?user=me&password=S3cretQ",
        "S3cretQ",
    )
    .await;
}

/// A server that accepts connections and never answers.
fn hung_listener() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    port
}

/// Longest of `n` runs of `call`, each asserted to fail as a temporary `Unavailable`.
async fn slowest_fast_fail<F, Fut, T>(n: usize, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = fleetwire::Result<T>>,
    T: std::fmt::Debug,
{
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let start = Instant::now();
        let err = call().await.unwrap_err();
        worst = worst.max(start.elapsed());
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_temporary(), "{err:?}");
        // Failed by the marked-down short cut, not by a round trip.
        assert!(chain(&err).contains("calls fail fast"), "{}", chain(&err));
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_times_out_within_the_default_then_calls_fail_fast() {
    let port = hung_listener();
    let redis = RedisBackend::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let (reg, live) = (redis.registry(), redis.liveness());
    assert!(
        redis.available() && live.available(),
        "available before any failure"
    );
    let start = Instant::now();
    let err = live.is_alive_batch(&[id("a"), id("b")]).await.unwrap_err();
    let first = start.elapsed();
    println!("first call against a hung Redis failed after {first:?}: {err}");
    assert!(first <= Duration::from_millis(2_300), "took {first:?}");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    assert!(
        !redis.available() && !live.available() && !reg.available(),
        "still available after a timeout"
    );
    let a = [id("a")];
    let mut worst = Duration::ZERO;
    worst = worst.max(slowest_fast_fail(20, || live.is_alive_batch(&a)).await);
    worst = worst.max(slowest_fast_fail(20, || live.touch(&a[0], TTL)).await);
    worst = worst.max(slowest_fast_fail(20, || live.forget(&a[0])).await);
    let one = inst("api", "api-1");
    worst = worst.max(slowest_fast_fail(20, || reg.register(&one, TTL)).await);
    worst = worst.max(slowest_fast_fail(20, || reg.heartbeat(&one.service, &one.id, TTL)).await);
    worst = worst.max(slowest_fast_fail(20, || reg.list(None)).await);
    worst = worst.max(slowest_fast_fail(20, || reg.deregister(&one.service, &one.id)).await);
    worst = worst.max(slowest_fast_fail(20, || reg.ping()).await);
    worst = worst.max(slowest_fast_fail(20, || redis.ping()).await);
    println!("slowest of 180 calls while marked unavailable: {worst:?}");
    // Without the short cut each call would wait the 2 s response timeout;
    // the bound leaves room for a loaded machine.
    assert!(worst < Duration::from_millis(500), "fast fail took {worst:?}");
    let err = reg.list(None).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("list registered services failed: Redis is unavailable"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_is_configurable() {
    let port = hung_listener();
    let redis = RedisBackend::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = redis
        .registry()
        .heartbeat(&svc("api"), &id("a"), TTL)
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("heartbeat with a 300 ms response timeout failed after {took:?}: {err}");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(800),
        "{took:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_temporary());
    assert!(
        err.to_string().contains("no reply from Redis within 300ms"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_is_seen_again_soon_after_answering() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let redis = RedisBackend::builder().url(server.url()).build().unwrap();
    let (reg, live) = (redis.registry(), redis.liveness());
    reg.register(&inst("api", "api-1"), TTL).await.unwrap();
    server.stop();
    let err = reg.list(None).await.unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
    assert!(!redis.available() && !live.available());
    let x = id("x");
    let worst = slowest_fast_fail(50, || live.touch(&x, TTL)).await;
    println!("while Redis is down, slowest of 50 calls: {worst:?}");
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    // Down long enough for the probe to have failed a few times.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!redis.available());
    let restart = Instant::now();
    server.restart();
    let answering = Instant::now();
    while !redis.available() {
        assert!(
            answering.elapsed() < Duration::from_secs(5),
            "never available again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = answering.elapsed();
    println!(
        "available again {seen:?} after the restarted Redis answered ({:?} after the restart began)",
        restart.elapsed()
    );
    // A 250 ms probe plus the reconnect's back-off, with room for a loaded machine.
    assert!(seen <= Duration::from_secs(2), "{seen:?}");
    live.touch(&id("x"), TTL).await.unwrap();
    assert_eq!(live.is_alive_batch(&[id("x")]).await.unwrap(), [true]);
    reg.register(&inst("api", "api-1"), TTL).await.unwrap();
    assert_eq!(reg.list(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_blocking_read_longer_than_the_response_timeout_still_waits() {
    use fleetwire::{ConsumerName, EventBus, GroupName, ReadOptions, StartFrom, StreamName};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = RedisBackend::builder()
        .url(server.url())
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let bus = redis.bus();
    let (s, g) = (StreamName::new("quiet").unwrap(), GroupName::new("g").unwrap());
    bus.ensure_group(&s, &g, StartFrom::Latest).await.unwrap();
    let start = Instant::now();
    let got = bus
        .read(
            &s,
            &g,
            &ConsumerName::new("c").unwrap(),
            ReadOptions::count(1).block(Duration::from_millis(1_200)),
        )
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(got.is_empty());
    assert!(took >= Duration::from_millis(1_100), "returned after {took:?}");
    assert!(redis.available(), "a long blocking read marked Redis down");
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error_not_temporary() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "right-pw"]) else {
        return;
    };
    let redis = RedisBackend::builder()
        .url(format!("redis://:wrong-pw@127.0.0.1:{}", server.port))
        .build()
        .unwrap();
    let errors = [
        redis.ping().await.unwrap_err(),
        redis
            .registry()
            .register(&inst("api", "a"), TTL)
            .await
            .unwrap_err(),
        redis.liveness().is_alive_batch(&[id("a")]).await.unwrap_err(),
    ];
    for err in errors {
        println!("{err}");
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
        assert!(!err.is_temporary(), "{err:?}");
    }
    // No password at all: the server answers NOAUTH.
    let err = RedisBackend::builder()
        .url(server.url())
        .build()
        .unwrap()
        .liveness()
        .touch(&id("a"), TTL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(!err.is_temporary());
    assert!(redis.available(), "refused credentials are no outage");
}

#[tokio::test]
async fn out_of_memory_is_temporary_unavailable_each_cause_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = RedisBackend::builder().url(server.url()).build().unwrap();
    redis.ping().await.unwrap();
    assert!(server
        .cmd(&["CONFIG", "SET", "maxmemory", "1"])
        .starts_with("+OK"));
    let errors = [
        redis.liveness().touch(&id("a"), TTL).await.unwrap_err(),
        redis
            .registry()
            .register(&inst("api", "a"), TTL)
            .await
            .unwrap_err(),
    ];
    for err in errors {
        let printed = chain(&err);
        println!("{printed}");
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_temporary(), "{err:?}");
        assert_eq!(printed.matches("maxmemory").count(), 1, "{printed}");
        assert_eq!(printed, err.to_string(), "the message holds the whole chain");
    }
    assert!(redis.available(), "a full Redis still answers");
    server.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    redis.liveness().touch(&id("a"), TTL).await.unwrap();
}

#[tokio::test]
async fn connection_errors_print_each_cause_once() {
    let redis = RedisBackend::builder()
        .url(format!("redis://127.0.0.1:{}", closed_port()))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = redis.registry().ping().await.unwrap_err();
    let printed = chain(&err);
    println!("{printed}");
    assert!(printed.starts_with("ping registry failed: "), "{printed}");
    let cause = printed.trim_start_matches("ping registry failed: ");
    assert!(!cause.is_empty());
    assert_eq!(printed.matches(cause).count(), 1, "{printed}");
    assert!(std::error::Error::source(&err).is_none());
    assert!(
        err.cause().is_some_and(|c| c.is::<redis::RedisError>()),
        "{err:?}"
    );
}

fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::builder().url(server.url()).build().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_type_index_is_skipped_and_register_there_writes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let logs = LogText::default();
    let _guard = logs.install();
    let reg = backend(&server).registry();
    reg.register(&inst("api", "a-1"), TTL).await.unwrap();
    reg.register(&inst("web", "w-1"), TTL).await.unwrap();
    assert_eq!(server.cmd(&["DEL", "sg:registry:index:web"]), ":1\r\n");
    server.cmd(&["SET", "sg:registry:index:web", "junk"]);
    let listed = reg.list(None).await.unwrap();
    assert_eq!(listed, vec![inst("api", "a-1")]);
    assert!(reg.list(Some(&svc("web"))).await.unwrap().is_empty());
    assert!(logs.text().contains("registry_key_unreadable"), "{}", logs.text());
    assert!(logs.text().contains("sg:registry:index:web"), "{}", logs.text());
    let err = reg.register(&inst("web", "w-2"), TTL).await.unwrap_err();
    println!("{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("sg:registry:index:web"), "{err}");
    assert_eq!(server.cmd(&["EXISTS", "sg:registry:service:web:w-2"]), ":0\r\n");
    assert!(!reg.heartbeat(&svc("web"), &id("w-2"), TTL).await.unwrap());
    reg.deregister(&svc("web"), &id("w-1")).await.unwrap();
    assert_eq!(server.cmd(&["GET", "sg:registry:index:web"]), "$4\r\njunk\r\n");
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_type_services_set_fails_no_listing_and_register_writes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let reg = backend(&server).registry();
    reg.register(&inst("api", "a-1"), TTL).await.unwrap();
    server.cmd(&["DEL", "sg:registry:services"]);
    server.cmd(&["HSET", "sg:registry:services", "f", "v"]);
    assert!(reg.list(None).await.unwrap().is_empty());
    assert_eq!(
        reg.list(Some(&svc("api"))).await.unwrap(),
        vec![inst("api", "a-1")],
        "one service's listing does not need the set of services"
    );
    let err = reg.register(&inst("api", "a-2"), TTL).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(!err.is_temporary());
    assert!(
        !reg.heartbeat(&svc("api"), &id("a-2"), TTL).await.unwrap(),
        "Err, yet written"
    );
    // Pruning the last entry must not trip over the set either.
    reg.deregister(&svc("api"), &id("a-1")).await.unwrap();
    server.cmd(&["SADD", "sg:registry:index:api", "a-1"]);
    assert!(reg.list(Some(&svc("api"))).await.unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_type_instance_key_is_skipped_and_leaves_the_index() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let logs = LogText::default();
    let _guard = logs.install();
    let reg = backend(&server).registry();
    for i in ["a-1", "a-2", "a-3"] {
        reg.register(&inst("api", i), TTL).await.unwrap();
    }
    server.cmd(&["DEL", "sg:registry:service:api:a-2"]);
    server.cmd(&["HSET", "sg:registry:service:api:a-2", "status", "running"]);
    let listed = reg.list(None).await.unwrap();
    assert_eq!(listed, vec![inst("api", "a-1"), inst("api", "a-3")]);
    assert_eq!(
        server.cmd(&["SISMEMBER", "sg:registry:index:api", "a-2"]),
        ":0\r\n"
    );
    assert!(logs.text().contains("registry_key_unreadable"), "{}", logs.text());
    assert_eq!(
        server.cmd(&["TYPE", "sg:registry:service:api:a-2"]),
        "+hash\r\n",
        "left alone"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn list_never_scans_and_adoption_is_opt_in_in_the_background() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for i in 0..500 {
        server.cmd(&["SET", &format!("other:key:{i}"), "x"]);
    }
    server.cmd(&[
        "SET",
        "sg:registry:service:gateway:gw-1",
        r#"{"status":"running"}"#,
        "EX",
        "30",
    ]);
    // A wrong-type index for a legacy service: adoption logs it, nothing fails.
    server.cmd(&[
        "SET",
        "sg:registry:service:odd:o-1",
        r#"{"status":"running"}"#,
        "EX",
        "30",
    ]);
    server.cmd(&["SET", "sg:registry:index:odd", "junk"]);
    let reg = backend(&server).registry();
    let scans = server.calls("scan");
    reg.register(&inst("api", "a-1"), TTL).await.unwrap();
    for _ in 0..5 {
        assert_eq!(reg.list(None).await.unwrap(), vec![inst("api", "a-1")]);
    }
    assert_eq!(
        server.calls("scan"),
        scans,
        "list or register scanned the keyspace"
    );

    let logs = LogText::default();
    let _guard = logs.install();
    let adopting = RedisBackend::builder()
        .url(server.url())
        .adopt_legacy_keys(Some(Duration::from_millis(100)))
        .build()
        .unwrap()
        .registry();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ids: Vec<String> = adopting
            .list(None)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id.to_string())
            .collect();
        if ids == ["a-1", "gw-1"] {
            break;
        }
        assert!(Instant::now() < deadline, "legacy key never adopted: {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.calls("scan") > scans);
    assert!(logs.text().contains("sg:registry:index:odd"), "{}", logs.text());
}

#[tokio::test]
async fn the_reference_go_store_and_fleetwire_share_liveness_keys() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let live = RedisBackend::builder()
        .url(server.url())
        .namespace("sg")
        .liveness_key_prefix("mul:runtime:hb:")
        .build()
        .unwrap()
        .liveness();
    // Go's Touch: `SET mul:runtime:hb:{id} "1" PX ttl`.
    assert_eq!(
        server.cmd(&["SET", "mul:runtime:hb:rt-go", "1", "PX", "30000"]),
        "+OK\r\n"
    );
    assert_eq!(
        live.is_alive_batch(&[id("rt-go"), id("rt-none")]).await.unwrap(),
        [true, false]
    );
    live.touch(&id("rt-fw"), Duration::from_secs(30)).await.unwrap();
    // Go's IsAliveBatch: `MGET` of the keys; a non-nil value is alive.
    assert_eq!(
        server.cmd(&["MGET", "mul:runtime:hb:rt-fw", "mul:runtime:hb:rt-none"]),
        "*2\r\n$1\r\n1\r\n$-1\r\n"
    );
    let pttl: i64 = server
        .cmd(&["PTTL", "mul:runtime:hb:rt-fw"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 29_000 && pttl <= 30_000, "PTTL {pttl}");
    // Go's Forget: `DEL`.
    assert_eq!(server.cmd(&["DEL", "mul:runtime:hb:rt-go"]), ":1\r\n");
    live.forget(&id("rt-fw")).await.unwrap();
    assert_eq!(
        live.is_alive_batch(&[id("rt-go"), id("rt-fw")]).await.unwrap(),
        [false, false]
    );
    assert_eq!(server.cmd(&["EXISTS", "mul:runtime:hb:rt-fw"]), ":0\r\n");
    assert_eq!(
        server.cmd(&["KEYS", "sg:liveness:*"]),
        "*0\r\n",
        "nothing under the default prefix"
    );
    let err = RedisBackend::builder()
        .liveness_key_prefix("bad prefix")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn extreme_ttls_on_redis_are_capped_at_100_years() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = backend(&server);
    let (reg, live) = (redis.registry(), redis.liveness());
    let hundred_years_ms: i64 = 100 * 365 * 24 * 3600 * 1000;
    for ttl in fleetwire::testkit::registry::LONG_TTLS {
        reg.register(&inst("api", "long"), ttl).await.unwrap();
        assert!(reg.heartbeat(&svc("api"), &id("long"), ttl).await.unwrap());
        live.touch(&id("long"), ttl).await.unwrap();
        for key in ["sg:registry:service:api:long", "sg:liveness:long"] {
            let pttl: i64 = server
                .cmd(&["PTTL", key])
                .trim_start_matches(':')
                .trim()
                .parse()
                .unwrap();
            assert!(
                pttl > hundred_years_ms - 60_000 && pttl <= hundred_years_ms,
                "{key} PTTL {pttl} for {ttl:?}"
            );
        }
    }
    for ttl in fleetwire::testkit::registry::SHORT_TTLS {
        reg.register(&inst("api", "short"), ttl).await.unwrap();
        live.touch(&id("short"), ttl).await.unwrap();
    }
}

#[tokio::test]
async fn extreme_builder_durations_do_not_panic() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for d in [Duration::MAX, Duration::from_secs(u64::MAX)] {
        let redis = RedisBackend::builder()
            .url(server.url())
            .connect_timeout(d)
            .response_timeout(d)
            .probe_every(d)
            .adopt_legacy_keys(Some(d))
            .build()
            .unwrap();
        redis.ping().await.unwrap();
        redis.registry().list(None).await.unwrap();
        redis.liveness().touch(&id("a"), d).await.unwrap();
    }
    let redis = RedisBackend::builder()
        .url(server.url())
        .probe_every(Duration::from_nanos(1))
        .adopt_legacy_keys(Some(Duration::from_nanos(1)))
        .build()
        .unwrap();
    redis.registry().list(None).await.unwrap();
    // Timeouts of (almost) nothing may fail a call, as a temporary error.
    for d in [Duration::ZERO, Duration::from_nanos(1)] {
        let redis = RedisBackend::builder()
            .url(server.url())
            .connect_timeout(d)
            .response_timeout(d)
            .build()
            .unwrap();
        if let Err(err) = redis.ping().await {
            assert!(err.is_temporary(), "{err:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_listing_handle_sees_every_change_made_through_another() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = backend(&server);
    let (reader, writer) = (redis.registry(), backend(&server).registry());
    let ids = |v: Vec<Instance>| v.into_iter().map(|i| i.id.to_string()).collect::<Vec<_>>();
    writer.register(&inst("api", "a-1"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-1"]);
    let sent = server.calls("smembers");
    assert_eq!(ids(reader.list(Some(&svc("api"))).await.unwrap()), ["a-1"]);
    assert_eq!(
        server.calls("smembers"),
        sent,
        "an unchanged index was read again"
    );
    writer.register(&inst("api", "a-2"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-1", "a-2"]);
    writer.deregister(&svc("api"), &id("a-1")).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-2"]);
    // Expiry: the reader prunes, and a writer registering the id again is seen.
    writer
        .register(&inst("api", "a-3"), Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-2", "a-3"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-2"]);
    writer.register(&inst("api", "a-3"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-2", "a-3"]);
    // Everything lost (a flush, a restart without persistence): the counter
    // starts again from the clock, never at a value the reader holds.
    server.cmd(&["FLUSHALL"]);
    writer.register(&inst("api", "a-9"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-9"]);
    // A counter overwritten by hand is replaced, never a reason to fail.
    server.cmd(&["DEL", "sg:registry:version:api"]);
    server.cmd(&["HSET", "sg:registry:version:api", "f", "v"]);
    writer.register(&inst("api", "a-10"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-10", "a-9"]);
    server.cmd(&["SET", "sg:registry:version:api", "not a number"]);
    writer.deregister(&svc("api"), &id("a-10")).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-9"]);
    // A write lost after the reader saw it, as a failover to a replica that
    // missed it loses it: the version and the index are set back by hand.
    // The next change must not come back at the version the reader holds
    // (it would with INCR), or the reader would keep listing the lost id
    // and miss the new one until its cache expired.
    let before = server.cmd(&["GET", "sg:registry:version:api"]);
    let before = before.lines().nth(1).expect("a version").to_owned();
    writer.register(&inst("api", "lost"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-9", "lost"]);
    server.cmd(&["SET", "sg:registry:version:api", &before]);
    server.cmd(&["SREM", "sg:registry:index:api", "lost"]);
    server.cmd(&["DEL", "sg:registry:service:api:lost"]);
    writer.register(&inst("api", "new"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-9", "new"]);
    // A version past what a Lua double counts in ones (2^53 + 1) is no
    // reason to stop moving.
    server.cmd(&["SET", "sg:registry:version:api", "9007199254740993"]);
    writer.register(&inst("api", "big-1"), TTL).await.unwrap();
    assert_eq!(ids(reader.list(None).await.unwrap()), ["a-9", "big-1", "new"]);
    writer.register(&inst("api", "big-2"), TTL).await.unwrap();
    assert_eq!(
        ids(reader.list(None).await.unwrap()),
        ["a-9", "big-1", "big-2", "new"]
    );
}
