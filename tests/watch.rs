//! The registry watch conformance cases on memory and on a real, private
//! redis-server (killed and restarted on its port for the resync case),
//! under Tokio, and under smol and async-std when they are enabled.
#![cfg(all(feature = "memory", feature = "testkit"))]

mod support;

use async_trait::async_trait;
use fleetwire::{
    clock::ManualClock,
    memory::MemoryRegistry,
    testkit::{self, watch::Outage, RealTime},
    RegistryStore,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use support::RedisServer;

struct MemoryOutage(MemoryRegistry);

#[async_trait]
impl Outage for MemoryOutage {
    async fn go_down(&self) {
        self.0.set_available(false);
    }
    async fn come_back(&self) {
        self.0.set_available(true);
    }
}

/// `kill -9` the server, then start a fresh one (no persistence: it comes
/// back empty) on the same port.
struct RedisRestart(Mutex<RedisServer>);

#[async_trait]
impl Outage for RedisRestart {
    async fn go_down(&self) {
        assert!(self.0.lock().unwrap().kill9(), "redis-server was not running");
    }
    async fn come_back(&self) {
        self.0.lock().unwrap().restart();
    }
}

async fn on_memory() {
    let clock = ManualClock::new(1_700_000_000_000);
    let registry = MemoryRegistry::with_clock(Arc::new(clock.clone()));
    let store: Arc<dyn RegistryStore> = Arc::new(registry.clone());
    let report = testkit::watch::run(
        &store,
        &clock,
        Arc::new(clock.clone()),
        Some(&MemoryOutage(registry)),
    )
    .await;
    println!("memory:\n{report}");
    report.assert_all_passed();
}

#[cfg(feature = "redis")]
async fn on_redis(server: RedisServer) {
    let store: Arc<dyn RegistryStore> = Arc::new(
        fleetwire::redis::RedisBackend::builder()
            .url(server.url())
            .connect_timeout(Duration::from_millis(300))
            .build()
            .expect("backend")
            .registry(),
    );
    let restart = RedisRestart(Mutex::new(server));
    let report = testkit::watch::run(&store, &RealTime, fleetwire::clock::system(), Some(&restart)).await;
    println!("redis:\n{report}");
    report.assert_all_passed();
}

#[tokio::test]
async fn watch_on_memory_tokio() {
    on_memory().await;
}

#[cfg(all(feature = "redis", feature = "rt-tokio"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_redis_tokio() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    on_redis(server).await;
}

#[cfg(feature = "rt-smol")]
#[test]
fn watch_on_memory_smol() {
    smol::block_on(on_memory());
}

#[cfg(all(feature = "redis", feature = "rt-smol"))]
#[test]
fn watch_on_redis_smol() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    smol::block_on(on_redis(server));
}

#[cfg(feature = "rt-async-std")]
#[test]
fn watch_on_memory_async_std() {
    async_std::task::block_on(on_memory());
}

#[cfg(all(feature = "redis", feature = "rt-async-std"))]
#[test]
fn watch_on_redis_async_std() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    async_std::task::block_on(on_redis(server));
}

/// The stream form yields the same events and stops costing anything when dropped.
#[tokio::test]
async fn stream_form_and_drop() {
    use fleetwire::{watch::RegistryWatch, Instance, InstanceId, ServiceName, Status};
    use futures_util::StreamExt;
    let registry = Arc::new(MemoryRegistry::new());
    let s = ServiceName::new("api").unwrap();
    let mut events = RegistryWatch::new(registry.clone(), None)
        .interval(Duration::from_millis(10))
        .into_stream();
    assert_eq!(events.next().await.unwrap().name(), "snapshot");
    let me = Instance::new(s, InstanceId::new("api-1").unwrap(), Status::Running);
    registry.register(&me, Duration::from_secs(5)).await.unwrap();
    let e = events.next().await.unwrap();
    assert_eq!((e.name(), e.instance()), ("joined", Some(&me)));
    drop(events);
    // Nothing else holds the registry: the watch left no task behind.
    assert_eq!(Arc::strong_count(&registry), 1);
}
