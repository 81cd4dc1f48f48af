//! Stream trim policies on the in-memory bus and a real, private redis-server.
#![cfg(all(feature = "memory", feature = "testkit"))]

mod support;

use fleetwire::{
    memory::MemoryBus,
    testkit::{self, trim::CAP},
    EventBus, TrimPolicy,
};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_policies_on_memory() {
    let make = |policy: TrimPolicy| -> Arc<dyn EventBus> {
        Arc::new(
            MemoryBus::builder()
                .max_len_floor(1)
                .max_len(CAP)
                .trim_policy(policy)
                .build(),
        )
    };
    let report = testkit::trim::run(&make).await;
    println!("trim policies on memory:\n{report}");
    report.assert_all_passed();
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_policies_on_redis() {
    use fleetwire::redis::RedisBackend;
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let url = server.url();
    let make = move |policy: TrimPolicy| -> Arc<dyn EventBus> {
        Arc::new(
            RedisBackend::builder()
                .url(url.clone())
                .max_len_floor(1)
                .max_len(CAP)
                .trim_policy(policy)
                .build()
                .expect("backend")
                .bus(),
        )
    };
    let report = testkit::trim::run(&make).await;
    println!("trim policies on Redis:\n{report}");
    report.assert_all_passed();
}
