//! The health server over real HTTP.
#![cfg(all(feature = "http", feature = "memory"))]

use fleetwire::{
    health::{Health, HealthCheck},
    http::HttpHealthServer,
    memory::MemoryRegistry,
    monitor::FleetMonitor,
    service::{Context, Lifecycle, Service},
    HealthServer, RegistryStore,
};
use parking_lot::Mutex;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// One request over a fresh connection: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn get(addr: SocketAddr, method: &'static str, path: &'static str) -> (u16, String) {
    blocking::unblock(move || http(addr, method, path)).await
}

/// The status of one request, sent on this test's own runtime with no
/// blocking pool at all: a pool shared by the tests of this binary (some
/// of which hold its threads on purpose) has stalled a probe for over 1 s
/// in full CI runs, which read as a late withdrawal.
async fn own_get(addr: SocketAddr, path: &'static str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn scenario() {
    let registry = MemoryRegistry::new();
    let health = Health::new(Duration::from_millis(500));
    let r = registry.clone();
    health.add_check(HealthCheck::new("registry", move || {
        let r = r.clone();
        async move { r.ping().await }
    }));
    let server = HttpHealthServer::new(([127, 0, 0, 1], 0).into());
    let addr = server
        .start(health.clone())
        .await
        .unwrap()
        .expect("bound address");
    assert!(
        server.start(health.clone()).await.is_err(),
        "starting twice is an error"
    );

    assert_eq!(get(addr, "GET", "/livez").await.0, 200);
    assert_eq!(
        get(addr, "GET", "/readyz").await.0,
        503,
        "not ready before boot completes"
    );
    health.set_booted(true);
    assert_eq!(get(addr, "GET", "/readyz").await.0, 200);

    registry.set_available(false);
    let (code, body) = get(addr, "GET", "/health").await;
    assert_eq!(code, 503);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["components"]["registry"]["status"], "down");
    assert!(report["components"]["registry"]["latency_ms"].is_number());
    assert!(!body.contains("offline"), "error details leaked: {body}");
    assert_eq!(
        get(addr, "GET", "/readyz").await.0,
        503,
        "not ready while the store is down"
    );
    assert_eq!(
        get(addr, "GET", "/livez").await.0,
        200,
        "liveness calls nothing external"
    );

    registry.set_available(true);
    assert_eq!(
        get(addr, "GET", "/readyz").await.0,
        200,
        "ready again when the store returns"
    );
    let (code, body) = get(addr, "GET", "/health").await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );

    assert_eq!(get(addr, "GET", "/nope").await.0, 404);
    assert_eq!(get(addr, "POST", "/readyz").await.0, 405);
    assert_eq!(get(addr, "GET", "/fleet").await.0, 404, "no monitor configured");
    health.set_fleet(Arc::new(FleetMonitor::new(["api"], Duration::from_secs(30))));
    let (code, body) = get(addr, "GET", "/fleet").await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()[0]["status"],
        "unknown"
    );

    health.set_stopping();
    assert_eq!(
        get(addr, "GET", "/readyz").await.0,
        503,
        "not ready during shutdown"
    );
    server.stop().await.unwrap();
    assert!(TcpStream::connect(addr).is_err(), "still listening after stop");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_on_tokio() {
    scenario().await;
}

#[cfg(feature = "rt-async-std")]
#[test]
fn endpoints_on_async_std() {
    async_std::task::block_on(scenario());
}

#[test]
fn endpoints_without_a_runtime() {
    async_io::block_on(scenario());
}

/// Takes `DRAIN` to finish after shutdown; notes when it returned and when `on_stop` ran.
struct Drains {
    events: Mutex<Vec<(&'static str, Instant)>>,
}

const DRAIN: Duration = Duration::from_secs(1);

#[fleetwire::async_trait]
impl Service for Drains {
    async fn on_start(&self, _: &Context) -> fleetwire::Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> fleetwire::Result<()> {
        ctx.stopped().await;
        tokio::time::sleep(DRAIN).await;
        self.events.lock().push(("run_returned", Instant::now()));
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> fleetwire::Result<()> {
        self.events.lock().push(("on_stop", Instant::now()));
        Ok(())
    }
}

/// The reference's order: at the trigger, readiness turns 503 and the entry
/// leaves the registry at once (≤ 100 ms), while `run` still drains for 1 s;
/// the server answers 503 during the drain; then `on_stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_ready_and_deregistered_before_run_drains() {
    let registry = Arc::new(MemoryRegistry::new());
    let server = Arc::new(HttpHealthServer::new(([127, 0, 0, 1], 0).into()));
    let lifecycle = Lifecycle::builder("drainer", "drainer-1")
        .unwrap()
        .registry(registry.clone())
        .health_server(server.clone())
        .jitter(Duration::ZERO)
        .handle_signals(false)
        .build();
    let svc = Drains {
        events: Mutex::new(Vec::new()),
    };
    let listed = || async { !registry.list(None).await.unwrap().is_empty() };
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        let addr = loop {
            if let Some(addr) = server.local_addr() {
                if own_get(addr, "/readyz").await.0 == 200 && listed().await {
                    break addr;
                }
            }
            assert!(Instant::now() < deadline, "never ready and registered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let triggered = Instant::now();
        lifecycle.shutdown_handle().trigger();
        let (mut not_ready, mut gone) = (None, None);
        while not_ready.is_none() || gone.is_none() {
            assert!(
                triggered.elapsed() < DRAIN,
                "still in rotation at the end of the drain"
            );
            if not_ready.is_none() && own_get(addr, "/readyz").await.0 == 503 {
                not_ready = Some(triggered.elapsed());
            }
            if gone.is_none() && !listed().await {
                gone = Some(triggered.elapsed());
            }
        }
        tokio::time::sleep(DRAIN / 2).await;
        let mid_drain = own_get(addr, "/readyz").await.0;
        (triggered, not_ready.unwrap(), gone.unwrap(), mid_drain)
    };
    let (out, (triggered, not_ready, gone, mid_drain)) = tokio::join!(lifecycle.run(&svc), watch);
    out.unwrap();
    let events = svc.events.lock().clone();
    let at = |name: &str| {
        events
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.duration_since(triggered))
            .unwrap_or_else(|| panic!("{name} missing from {events:?}"))
    };
    let (returned, stopped) = (at("run_returned"), at("on_stop"));
    println!(
        "after the trigger: /readyz 503 at {not_ready:?}, deregistered at {gone:?}, \
         /readyz mid-drain {mid_drain}, run returned at {returned:?}, on_stop at {stopped:?}"
    );
    // Well before the drain ends, with room for a loaded machine.
    let limit = DRAIN / 4;
    assert!(
        not_ready <= limit,
        "/readyz still 200 {not_ready:?} after the trigger"
    );
    assert!(gone <= limit, "still registered {gone:?} after the trigger");
    assert_eq!(mid_drain, 503, "the server answers not ready while run drains");
    assert!(returned >= DRAIN && stopped >= returned, "{events:?}");
}

#[test]
fn limits_are_validated_and_extremes_accepted() {
    use fleetwire::ErrorKind;
    let builder = || HttpHealthServer::builder().addr(([127, 0, 0, 1], 0).into());
    let kind = |r: fleetwire::Result<HttpHealthServer>| r.map(drop).unwrap_err().kind();
    assert_eq!(
        kind(builder().max_connections(0).build()),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(builder().header_read_timeout(Duration::ZERO).build()),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(builder().idle_timeout(Duration::ZERO).build()),
        ErrorKind::InvalidInput
    );

    // Deadlines past the end of time mean no deadline, not a panic.
    let server = builder()
        .max_connections(usize::MAX)
        .header_read_timeout(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .build()
        .unwrap();
    async_io::block_on(async {
        let addr = server.start(Health::default()).await.unwrap().unwrap();
        assert_eq!(get(addr, "GET", "/livez").await.0, 200);
        server.stop().await.unwrap();
    });
}

/// A request on a connection kept alive: the status, read by Content-Length.
fn keep_alive_get(s: &mut TcpStream, path: &str) -> u16 {
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-response");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    s.read_exact(&mut vec![0; len]).unwrap();
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Whether the server closes `s` within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    match s.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => panic!("unexpected bytes on an idle connection"),
    }
}

/// A server whose readiness check takes 300 ms, a kept-alive connection
/// that has made one request, and how many readiness checks have started.
async fn server_with_an_idle_client() -> (HttpHealthServer, SocketAddr, TcpStream, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let health = Health::new(Duration::from_secs(5));
    let counter = started.clone();
    health.add_check(HealthCheck::new("slow", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            async_io::Timer::after(Duration::from_millis(300)).await;
            Ok(())
        }
    }));
    health.set_booted(true);
    let server = HttpHealthServer::new(([127, 0, 0, 1], 0).into());
    let addr = server.start(health).await.unwrap().unwrap();
    let idle = blocking::unblock(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(keep_alive_get(&mut s, "/livez"), 200);
        s
    })
    .await;
    assert_eq!(server.open_connections(), 1);
    (server, addr, idle, started)
}

/// A `/readyz` request on a thread of its own, returned once the server is
/// running its (300 ms) readiness check: the request is in flight.
async fn readyz_in_flight(addr: SocketAddr, started: &AtomicUsize) -> std::thread::JoinHandle<(u16, String)> {
    let before = started.load(Ordering::SeqCst);
    let request = std::thread::spawn(move || http(addr, "GET", "/readyz"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while started.load(Ordering::SeqCst) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the readiness check never started"
        );
        async_io::Timer::after(Duration::from_millis(2)).await;
    }
    request
}

#[test]
fn stop_closes_idle_connections_and_finishes_requests_in_flight() {
    async_io::block_on(async {
        let (server, addr, mut idle, started) = server_with_an_idle_client().await;
        let in_flight = readyz_in_flight(addr, &started).await;
        let start = std::time::Instant::now();
        server.stop().await.unwrap();
        let stopped_after = start.elapsed();
        assert!(
            stopped_after < Duration::from_millis(900),
            "stop took {stopped_after:?}"
        );
        assert_eq!(
            in_flight.join().unwrap().0,
            200,
            "the request in flight was answered"
        );
        assert!(
            blocking::unblock(move || closed_within(&mut idle, Duration::from_millis(500))).await,
            "the kept-alive connection was left open"
        );
    });
}

#[test]
fn a_dropped_stop_still_closes_connections() {
    async_io::block_on(async {
        let (server, addr, mut idle, started) = server_with_an_idle_client().await;
        let in_flight = readyz_in_flight(addr, &started).await;
        // `stop` waits for the request in flight; give up on it at once.
        let stop = server.stop();
        assert!(pending_after_one_poll(stop).await, "stop should still be waiting");
        assert!(
            blocking::unblock(move || closed_within(&mut idle, Duration::from_millis(500))).await,
            "the kept-alive connection was left open"
        );
        assert_eq!(
            in_flight.join().unwrap().0,
            200,
            "the request in flight was answered"
        );
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    });
}

/// Poll `fut` once and drop it; whether it was still pending.
async fn pending_after_one_poll<F: std::future::Future>(fut: F) -> bool {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}
