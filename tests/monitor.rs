//! The fleet monitor: ok → stale, never seen → unknown, allow-list only.
#![cfg(feature = "memory")]

use fleetwire::{
    clock::ManualClock,
    memory::{MemoryBus, MemoryRegistry},
    monitor::{FleetMonitor, WorkerState},
    service::{Context, Lifecycle, Service},
    Envelope, EventBus, Instance, InstanceId, RegistryStore, ServiceName, Status, Topic,
};
use std::{sync::Arc, time::Duration};

const START_MS: u64 = 1_700_000_000_000;

fn monitor(clock: &ManualClock) -> FleetMonitor {
    FleetMonitor::with_clock(
        ["api", "bus", "collector"],
        Duration::from_secs(30),
        Arc::new(clock.clone()),
    )
}

fn payload(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn state(m: &FleetMonitor, name: &str) -> WorkerState {
    m.snapshot().into_iter().find(|r| r.name == name).unwrap().status
}

#[test]
fn ok_then_stale_and_never_seen_is_unknown() {
    let clock = ManualClock::new(START_MS);
    let m = monitor(&clock);
    let now_s = START_MS as f64 / 1000.0;
    assert!(m.record(
        "api",
        now_s,
        payload(serde_json::json!({"worker": "api", "ts": now_s, "queue": 3}))
    ));
    let rows = m.snapshot();
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["api", "bus", "collector"]
    );
    assert_eq!(rows[0].status, WorkerState::Ok);
    assert_eq!(
        rows[0].extra,
        payload(serde_json::json!({"queue": 3})),
        "worker and ts are stripped"
    );
    assert_eq!(rows[1].status, WorkerState::Unknown);
    assert_eq!(rows[1].seconds_since, None);

    clock.advance(Duration::from_secs(89));
    assert_eq!(state(&m, "api"), WorkerState::Ok, "within 3 intervals");
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        state(&m, "api"),
        WorkerState::Stale,
        "silent for more than 3 intervals"
    );
    let row = &m.snapshot()[0];
    assert!((row.seconds_since.unwrap() - 91.0).abs() < 1e-6);
    assert_eq!(
        state(&m, "collector"),
        WorkerState::Unknown,
        "never seen is not stale"
    );
}

#[test]
fn unknown_names_and_hostile_timestamps_do_not_add_rows() {
    let clock = ManualClock::new(START_MS);
    let m = monitor(&clock);
    assert!(!m.record("intruder", 0.0, Default::default()));
    assert_eq!(m.snapshot().len(), 3);
    assert!(m.snapshot().iter().all(|r| r.name != "intruder"));
    m.record("api", f64::INFINITY, Default::default());
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        state(&m, "api"),
        WorkerState::Stale,
        "a bogus future ts must not pin a worker to ok"
    );
}

#[tokio::test]
async fn lifecycle_heartbeats_reach_the_monitor_over_the_bus() {
    let bus = Arc::new(MemoryBus::new());
    let m = Arc::new(FleetMonitor::new(["api", "bus"], Duration::from_secs(1)));
    let _task = m.start(bus.clone()).await.unwrap();

    bus.publish_topic(
        &Topic::new("system.bus.health").unwrap(),
        &Envelope::new("system.health"),
    )
    .await
    .unwrap();
    bus.publish_topic(
        &Topic::new("system.intruder.health").unwrap(),
        &Envelope::new("system.health"),
    )
    .await
    .unwrap();

    struct Idle;
    #[async_trait::async_trait]
    impl Service for Idle {
        async fn on_start(&self, _: &Context) -> fleetwire::Result<()> {
            Ok(())
        }
        async fn run(&self, ctx: &Context) -> fleetwire::Result<()> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ctx.shutdown().trigger();
            Ok(())
        }
        async fn on_stop(&self, _: &Context) -> fleetwire::Result<()> {
            Ok(())
        }
    }
    let lifecycle = Lifecycle::builder("api", "api-1")
        .unwrap()
        .bus(bus.clone())
        .jitter(Duration::ZERO)
        .handle_signals(false)
        .health_heartbeat_every(Duration::from_millis(100))
        .build();
    lifecycle.run(&Idle).await.unwrap();
    let rows = m.snapshot();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.status == WorkerState::Ok), "{rows:?}");
    assert_eq!(rows[0].extra["instance"], "api-1");
    assert!(rows[0].extra["uptime_s"].is_number());
}

#[tokio::test]
async fn view_from_the_registry() {
    let registry = MemoryRegistry::new();
    let s = ServiceName::new("collector").unwrap();
    registry
        .register(
            &Instance::new(s.clone(), InstanceId::new("c-1").unwrap(), Status::Running),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    registry
        .register(
            &Instance::new(
                ServiceName::new("intruder").unwrap(),
                InstanceId::new("x").unwrap(),
                Status::Running,
            ),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let m = FleetMonitor::new(["api", "collector"], Duration::from_secs(30));
    m.refresh_from_registry(&registry).await.unwrap();
    let rows = m.snapshot();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status, WorkerState::Unknown);
    assert_eq!(rows[1].status, WorkerState::Ok);
    assert_eq!(rows[1].extra["instances"][0], "c-1");
}
