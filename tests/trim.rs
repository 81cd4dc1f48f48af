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
async fn trim_policies_on_redis_with(acked_trim: Option<bool>) {
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
                .acked_trim(acked_trim)
                .build()
                .expect("backend")
                .bus(),
        )
    };
    let report = testkit::trim::run(&make).await;
    println!("trim policies on Redis (acked_trim {acked_trim:?}):\n{report}");
    report.assert_all_passed();
    // A server before 8.2 refuses `XTRIM ... ACKED` (a failed call in
    // commandstats): tried only when forced, and then the fallback trim above
    // was exact. From 8.2 on, `ACKED` is never refused.
    let info = server.cmd(&["INFO", "server"]);
    let refused = refused_xtrims(&server);
    let before_8_2 = [
        "redis_version:6.",
        "redis_version:7.",
        "redis_version:8.0",
        "redis_version:8.1",
    ]
    .iter()
    .any(|v| info.contains(v));
    match (before_8_2, acked_trim) {
        (true, Some(true)) => assert!(refused > 0, "ACKED was never tried"),
        (true, _) => assert_eq!(
            refused, 0,
            "ACKED was tried on a pre-8.2 server without being forced"
        ),
        (false, _) => assert_eq!(refused, 0, "the server refused ACKED"),
    }
}

/// `XTRIM` calls the server refused (`failed_calls` + `rejected_calls`).
#[cfg(feature = "redis")]
fn refused_xtrims(server: &support::RedisServer) -> u64 {
    let stats = server.cmd(&["INFO", "commandstats"]);
    let Some(line) = stats.lines().find(|l| l.starts_with("cmdstat_xtrim:")) else {
        return 0;
    };
    line.split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| matches!(*k, "failed_calls" | "rejected_calls"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Detected: Redis 7.0 has no `ACKED` trimming, so the script computes the
/// safe trim point (the tested path).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_policies_on_redis() {
    trim_policies_on_redis_with(None).await;
}

/// `ACKED` forced on a server without it: the script falls back within the
/// same call and the suite still loses nothing.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_policies_on_redis_forced_acked_falls_back() {
    trim_policies_on_redis_with(Some(true)).await;
}
