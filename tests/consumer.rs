//! The consumer runner's conformance suite on the in-memory bus and on a
//! real, private redis-server, under every runtime enabled.
#![cfg(all(feature = "memory", feature = "testkit"))]

mod support;

use fleetwire::{memory::MemoryBus, testkit, EventBus};
use std::sync::Arc;

async fn on(bus: Arc<dyn EventBus>, what: &str) {
    let report = testkit::consumer::run(bus).await;
    println!("consumer suite on {what}:\n{report}");
    report.assert_all_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_on_tokio() {
    on(Arc::new(MemoryBus::new()), "memory/tokio").await;
}

#[cfg(feature = "rt-async-std")]
#[test]
fn memory_on_async_std() {
    async_std::task::block_on(on(Arc::new(MemoryBus::new()), "memory/async-std"));
}

#[cfg(feature = "rt-smol")]
#[test]
fn memory_on_smol() {
    smol::block_on(on(Arc::new(MemoryBus::new()), "memory/smol"));
}

#[cfg(feature = "redis")]
mod redis {
    use super::{on, support::RedisServer};
    use fleetwire::redis::RedisBackend;
    use std::sync::Arc;

    fn bus(server: &RedisServer) -> Arc<dyn fleetwire::EventBus> {
        Arc::new(
            RedisBackend::builder()
                .url(server.url())
                .build()
                .expect("backend")
                .bus(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_on_tokio() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        on(bus(&server), "redis/tokio").await;
    }

    #[cfg(feature = "rt-async-std")]
    #[test]
    fn redis_on_async_std() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        async_std::task::block_on(async { on(bus(&server), "redis/async-std").await });
    }

    #[cfg(feature = "rt-smol")]
    #[test]
    fn redis_on_smol() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        smol::block_on(async { on(bus(&server), "redis/smol").await });
    }
}
