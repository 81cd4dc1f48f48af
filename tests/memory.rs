//! The conformance suites against the in-memory backends, on every runtime enabled.
#![cfg(all(feature = "memory", feature = "testkit"))]

use fleetwire::{
    clock::ManualClock,
    memory::{MemoryBus, MemoryLiveness, MemoryRegistry},
    testkit, ErrorKind, EventBus, InstanceId, LivenessStore, RegistryStore,
};
use std::sync::Arc;

fn clock() -> ManualClock {
    ManualClock::new(1_700_000_000_000)
}

async fn all_suites() {
    let c = clock();
    let report = testkit::registry::run(&MemoryRegistry::with_clock(Arc::new(c.clone())), &c).await;
    println!("registry:\n{report}");
    report.assert_all_passed();

    let c = clock();
    let report = testkit::liveness::run(&MemoryLiveness::with_clock(Arc::new(c.clone())), &c).await;
    println!("liveness:\n{report}");
    report.assert_all_passed();

    let c = clock();
    let bus = MemoryBus::builder()
        .clock(Arc::new(c.clone()))
        .max_len_floor(1)
        .max_len(200)
        .build();
    let report = testkit::bus::run(&bus, &c).await;
    println!("bus:\n{report}");
    report.assert_all_passed();

    let report = testkit::topology::run(Arc::new(MemoryBus::new())).await;
    println!("topology:\n{report}");
    report.assert_all_passed();

    let down = MemoryRegistry::new();
    down.set_available(false);
    let report = testkit::lifecycle::run(Arc::new(MemoryRegistry::new()), Arc::new(down)).await;
    println!("lifecycle:\n{report}");
    report.assert_all_passed();
}

#[tokio::test]
async fn conformance_on_tokio() {
    all_suites().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_tokio_multi_thread() {
    all_suites().await;
}

#[cfg(feature = "rt-async-std")]
#[test]
fn conformance_on_async_std() {
    async_std::task::block_on(all_suites());
}

#[cfg(feature = "rt-smol")]
#[test]
fn conformance_on_smol() {
    smol::block_on(all_suites());
}

#[test]
fn conformance_without_a_runtime() {
    async_io::block_on(all_suites());
}

#[tokio::test]
async fn boxed_dyn_path_works() {
    let c = clock();
    let bus: Arc<dyn EventBus> = Arc::new(
        MemoryBus::builder()
            .clock(Arc::new(c.clone()))
            .max_len_floor(1)
            .max_len(200)
            .build(),
    );
    testkit::bus::run(bus.as_ref(), &c).await.assert_all_passed();
}

#[tokio::test]
async fn simulated_outage_is_a_temporary_error_and_recovers() {
    let live = MemoryLiveness::new();
    let id = InstanceId::new("r-1").unwrap();
    live.touch(&id, std::time::Duration::from_secs(5)).await.unwrap();
    live.set_available(false);
    let err = live.is_alive_batch(std::slice::from_ref(&id)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_temporary());
    live.set_available(true);
    assert_eq!(live.is_alive_batch(&[id]).await.unwrap(), [true]);

    let reg = MemoryRegistry::new();
    reg.set_available(false);
    assert_eq!(reg.ping().await.unwrap_err().kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn concurrent_publishers_and_consumers_lose_nothing() {
    use fleetwire::{ConsumerName, Envelope, GroupName, ReadOptions, StartFrom, StreamName};
    use std::time::Duration;
    let bus = MemoryBus::new();
    let s = StreamName::new("load").unwrap();
    let g = GroupName::new("g").unwrap();
    bus.ensure_group(&s, &g, StartFrom::Latest).await.unwrap();
    let publishers: Vec<_> = (0..8)
        .map(|p| {
            let (bus, s) = (bus.clone(), s.clone());
            tokio::spawn(async move {
                for n in 0..250 {
                    bus.publish(&s, &Envelope::new(format!("{p}-{n}"))).await.unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..4)
        .map(|c| {
            let (bus, s, g) = (bus.clone(), s.clone(), g.clone());
            tokio::spawn(async move {
                let me = ConsumerName::new(format!("c{c}")).unwrap();
                let mut seen = Vec::new();
                loop {
                    let got = bus
                        .read(
                            &s,
                            &g,
                            &me,
                            ReadOptions::count(50).block(Duration::from_millis(300)),
                        )
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return seen;
                    }
                    bus.ack(&s, &g, &got.iter().map(|d| d.id).collect::<Vec<_>>())
                        .await
                        .unwrap();
                    seen.extend(got.into_iter().map(|d| d.envelope().unwrap().kind));
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(
        (before, all.len()),
        (2000, 2000),
        "every entry delivered exactly once"
    );
    assert_eq!(bus.pending(&s, &g).await.unwrap().count, 0);
}

#[path = "support/logs.rs"]
mod logs;

#[tokio::test(flavor = "current_thread")]
async fn backlog_warning_at_cap_is_logged_at_most_once_per_interval() {
    use fleetwire::{BacklogPolicy, Envelope, StreamName};
    use std::time::Duration;
    let logs = logs::EventCounter::default();
    let _guard = logs.install();
    let c = clock();
    let bus = MemoryBus::builder()
        .clock(Arc::new(c.clone()))
        .max_len_floor(1)
        .max_len(50)
        .backlog_policy(BacklogPolicy::default())
        .build();
    let s = StreamName::new("capped").unwrap();
    for _ in 0..40 {
        bus.publish(&s, &Envelope::new("x")).await.unwrap();
    }
    assert_eq!(
        logs.count("stream_backlog_high"),
        0,
        "warned at 80% of the cap, not above"
    );
    for _ in 0..200 {
        bus.publish(&s, &Envelope::new("x")).await.unwrap();
    }
    assert_eq!(logs.count("stream_backlog_high"), 1);
    c.advance(Duration::from_secs(31));
    bus.publish(&s, &Envelope::new("x")).await.unwrap();
    assert_eq!(
        logs.count("stream_backlog_high"),
        2,
        "warns again after the interval"
    );
}
