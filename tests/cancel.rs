//! Registry and liveness futures dropped at every point of their flight, on a
//! real redis-server: what they leave is always whole (an entry `list` can
//! see, or nothing), never half written.
#![cfg(all(feature = "redis", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    redis::RedisBackend, Instance, InstanceId, LivenessStore, RegistryStore, ServiceName, Status,
};
use std::time::Duration;

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
        // From "dropped before the first poll" to "finished": 0..300 µs.
        let cut = Duration::from_micros(i);
        match tokio::time::timeout(cut, registry.register(&inst, Duration::from_secs(30))).await {
            Ok(r) => {
                r.unwrap();
                landed += 1;
            }
            Err(_) => dropped += 1,
        }
        let _ = tokio::time::timeout(cut, liveness.touch(&id, Duration::from_secs(30))).await;
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
