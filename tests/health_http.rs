//! The health server over real HTTP.
#![cfg(all(feature = "http", feature = "memory"))]

use fleetwire::{
    health::{Health, HealthCheck},
    http::HttpHealthServer,
    memory::MemoryRegistry,
    monitor::FleetMonitor,
    HealthServer, RegistryStore,
};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
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
