//! Registry and liveness futures dropped at every point of their flight, on a
//! real redis-server: what they leave is always whole (an entry `list` can
//! see, or nothing), never half written.
#![cfg(all(feature = "redis", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    redis::RedisBackend, Instance, InstanceId, LivenessStore, RegistryStore, ServiceName, Status,
};
use std::{future::Future, task::Poll, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_registry_and_liveness_calls_leave_nothing_half_written() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let redis = RedisBackend::builder().url(server.url()).build().unwrap();
    let (registry, liveness) = (redis.registry(), redis.liveness());
    registry.ping().await.unwrap();
    let service = ServiceName::new("cancelled").unwrap();
    let (mut landed, mut dropped) = (0, 0);
    for i in 0..300u64 {
        let id = InstanceId::new(format!("c-{i}")).unwrap();
        let inst = Instance::new(service.clone(), id.clone(), Status::Running);
        // Even calls are cut after 1..=8 polls (in flight on any machine, however
        // fast); odd calls after 0..3 ms of wall time (most finish).
        let cut = if i % 2 == 0 {
            Cut::Polls(1 + (i / 2 % 8) as u32)
        } else {
            Cut::After(Duration::from_micros(i * 10))
        };
        match cut.run(registry.register(&inst, Duration::from_secs(30))).await {
            Some(r) => {
                r.unwrap();
                landed += 1;
            }
            None => dropped += 1,
        }
        let _ = cut.run(liveness.touch(&id, Duration::from_secs(30))).await;
    }
    // Let anything still in flight arrive, then compare what is stored with what is listed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed: std::collections::BTreeSet<String> = registry
        .list(Some(&service))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    for i in 0..300u64 {
        let key = format!("sg:registry:service:cancelled:c-{i}");
        let stored = server.cmd(&["EXISTS", &key]).starts_with(":1");
        assert_eq!(
            stored,
            listed.contains(&format!("c-{i}")),
            "c-{i}: stored {stored} but listed {}: a dropped register left a half-written entry",
            !stored
        );
        let id = InstanceId::new(format!("c-{i}")).unwrap();
        // A touch either landed or not; asking never errors and never hangs.
        liveness.is_alive_batch(&[id]).await.unwrap();
    }
    println!(
        "{landed} registers finished, {dropped} dropped mid-flight; {} listed",
        listed.len()
    );
    assert!(
        dropped > 0 && landed > 0,
        "the sweep never cut a call in flight: {landed} / {dropped}"
    );
}

/// Where a call is dropped: after a number of polls, or after wall time.
#[derive(Clone, Copy)]
enum Cut {
    Polls(u32),
    After(Duration),
}

impl Cut {
    /// Runs `fut` until the cut; `None` when it was dropped unfinished.
    async fn run<F: Future>(self, fut: F) -> Option<F::Output> {
        match self {
            Cut::After(d) => tokio::time::timeout(d, fut).await.ok(),
            Cut::Polls(n) => {
                let mut fut = std::pin::pin!(fut);
                for _ in 0..n {
                    let poll = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                    if let Poll::Ready(out) = poll {
                        return Some(out);
                    }
                    tokio::task::yield_now().await;
                }
                None
            }
        }
    }
}
