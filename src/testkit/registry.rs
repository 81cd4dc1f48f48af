//! Conformance of [`RegistryStore`] backends.

use super::{ensure, unique, CaseResult, Report, Step, TimeControl};
use crate::{Instance, InstanceId, RegistryStore, ServiceName, Status};
use futures_util::FutureExt;
use std::{future::Future, panic::AssertUnwindSafe, time::Duration};

/// The TTL the cases register with; expiry cases advance past it.
pub const TTL: Duration = Duration::from_millis(600);

fn instance(service: &ServiceName, id: &str) -> Instance {
    Instance::new(
        service.clone(),
        InstanceId::new(id).expect("valid id"),
        Status::Starting,
    )
}

/// Run every registry case against `store`.
pub async fn run(store: &dyn RegistryStore, time: &dyn TimeControl) -> Report {
    let mut r = Report::default();
    if !store.capabilities().stores_data {
        r.case("noop_accepts_and_keeps_nothing", noop(store)).await;
        return r;
    }
    r.case("register_then_listed", register_then_listed(store)).await;
    r.case("metadata_round_trips", metadata_round_trips(store)).await;
    r.case("reregister_replaces", reregister_replaces(store)).await;
    r.case("list_filters_by_service", list_filters_by_service(store))
        .await;
    r.case("deregister_removes_at_once", deregister_removes_at_once(store))
        .await;
    r.case("deregister_missing_is_ok", deregister_missing_is_ok(store))
        .await;
    r.case(
        "heartbeat_missing_returns_false",
        heartbeat_missing_returns_false(store),
    )
    .await;
    r.case(
        "expires_without_heartbeat",
        expires_without_heartbeat(store, time),
    )
    .await;
    r.case(
        "heartbeat_keeps_alive_past_ttl",
        heartbeat_keeps_alive(store, time),
    )
    .await;
    r.case(
        "heartbeat_after_expiry_returns_false",
        heartbeat_after_expiry(store, time),
    )
    .await;
    r.case("extreme_ttls_capped_never_wrapped", extreme_ttls(store, time))
        .await;
    r.case("ping", async { store.ping().await.step("ping") }).await;
    r
}

/// TTLs past any store's range: each must be kept (capped), never wrap
/// around to a short or invalid one.
pub const LONG_TTLS: [Duration; 5] = [
    Duration::MAX,
    Duration::from_secs(u64::MAX),
    Duration::from_millis(u64::MAX),
    Duration::from_nanos(u64::MAX),
    Duration::from_secs(1_000 * 365 * 24 * 3600),
];

/// TTLs under a millisecond: each must count as a short one, never as none
/// (Redis rejects `PX 0`) or as a long one.
pub const SHORT_TTLS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_nanos(999_999),
];

/// Await `f`, turning a panic into a case failure naming `what`.
pub(crate) async fn no_panic<T>(what: &str, f: impl Future<Output = crate::Result<T>>) -> Result<T, String> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r.step(what),
        Err(_) => Err(format!("{what}: panicked")),
    }
}

async fn extreme_ttls(store: &dyn RegistryStore, time: &dyn TimeControl) -> CaseResult {
    let s = svc();
    let mut long = Vec::new();
    for (n, ttl) in LONG_TTLS.into_iter().enumerate() {
        let i = instance(&s, &format!("long-{n}"));
        no_panic(&format!("register with {ttl:?}"), store.register(&i, ttl)).await?;
        let beat = no_panic(
            &format!("heartbeat with {ttl:?}"),
            store.heartbeat(&s, &i.id, ttl),
        )
        .await?;
        ensure!(
            beat,
            "heartbeat with {ttl:?} found no entry: the TTL wrapped around"
        );
        long.push(i.id.to_string());
    }
    for (n, ttl) in SHORT_TTLS.into_iter().enumerate() {
        let i = instance(&s, &format!("short-{n}"));
        no_panic(&format!("register with {ttl:?}"), store.register(&i, ttl)).await?;
        no_panic(
            &format!("heartbeat with {ttl:?}"),
            store.heartbeat(&s, &i.id, ttl),
        )
        .await?;
    }
    time.advance(Duration::from_millis(50)).await;
    let ids = ids_of(store, &s).await?;
    ensure!(
        ids == long,
        "expected only the long-TTL entries {long:?} after 50 ms, got {ids:?}"
    );
    for id in &long {
        let id = InstanceId::new(id).expect("valid");
        store.deregister(&s, &id).await.step("deregister")?;
    }
    Ok(())
}

fn svc() -> ServiceName {
    ServiceName::new(unique("svc")).expect("valid")
}

async fn ids_of(store: &dyn RegistryStore, s: &ServiceName) -> Result<Vec<String>, String> {
    Ok(store
        .list(Some(s))
        .await
        .step("list")?
        .into_iter()
        .map(|i| i.id.to_string())
        .collect())
}

async fn register_then_listed(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    store.register(&instance(&s, "b"), TTL).await.step("register b")?;
    store.register(&instance(&s, "a"), TTL).await.step("register a")?;
    let ids = ids_of(store, &s).await?;
    ensure!(ids == ["a", "b"], "expected [a, b] sorted by id, got {ids:?}");
    let all = store.list(None).await.step("list all")?;
    ensure!(
        all.iter().filter(|i| i.service == s).count() == 2,
        "list(None) misses instances of {s}"
    );
    Ok(())
}

async fn metadata_round_trips(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    let mut inst = instance(&s, "m-1")
        .with_metadata("zone", "eu-1")
        .with_metadata("weight", 3);
    inst.status = Status::Other("draining".into());
    inst.host = Some("host-a".into());
    inst.pid = Some(4242);
    inst.started_at_ms = Some(1_700_000_000_000);
    store.register(&inst, TTL).await.step("register")?;
    let got = store.list(Some(&s)).await.step("list")?;
    ensure!(got == vec![inst.clone()], "expected {inst:?}, got {got:?}");
    Ok(())
}

async fn reregister_replaces(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    store.register(&instance(&s, "r-1"), TTL).await.step("register")?;
    let mut running = instance(&s, "r-1");
    running.status = Status::Running;
    store.register(&running, TTL).await.step("register again")?;
    let got = store.list(Some(&s)).await.step("list")?;
    ensure!(
        got.len() == 1 && got[0].status == Status::Running,
        "expected one running entry, got {got:?}"
    );
    Ok(())
}

async fn list_filters_by_service(store: &dyn RegistryStore) -> CaseResult {
    let (s1, s2) = (svc(), svc());
    store
        .register(&instance(&s1, "x"), TTL)
        .await
        .step("register s1")?;
    store
        .register(&instance(&s2, "y"), TTL)
        .await
        .step("register s2")?;
    let ids = ids_of(store, &s1).await?;
    ensure!(ids == ["x"], "list({s1}) returned {ids:?}");
    Ok(())
}

async fn deregister_removes_at_once(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    let i = instance(&s, "d-1");
    store.register(&i, TTL).await.step("register")?;
    store.deregister(&s, &i.id).await.step("deregister")?;
    let ids = ids_of(store, &s).await?;
    ensure!(ids.is_empty(), "still listed after deregister: {ids:?}");
    let beat = store.heartbeat(&s, &i.id, TTL).await.step("heartbeat")?;
    ensure!(!beat, "heartbeat of a deregistered entry returned true");
    Ok(())
}

async fn deregister_missing_is_ok(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    store
        .deregister(&s, &InstanceId::new("never").expect("valid"))
        .await
        .step("deregister missing")
}

async fn heartbeat_missing_returns_false(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    let beat = store
        .heartbeat(&s, &InstanceId::new("ghost").expect("valid"), TTL)
        .await
        .step("heartbeat")?;
    ensure!(!beat, "heartbeat of a missing entry returned true");
    let ids = ids_of(store, &s).await?;
    ensure!(ids.is_empty(), "heartbeat created an entry: {ids:?}");
    Ok(())
}

async fn expires_without_heartbeat(store: &dyn RegistryStore, time: &dyn TimeControl) -> CaseResult {
    let s = svc();
    store.register(&instance(&s, "e-1"), TTL).await.step("register")?;
    time.advance(TTL + Duration::from_millis(200)).await;
    let ids = ids_of(store, &s).await?;
    ensure!(ids.is_empty(), "still listed after its TTL: {ids:?}");
    Ok(())
}

async fn heartbeat_keeps_alive(store: &dyn RegistryStore, time: &dyn TimeControl) -> CaseResult {
    let s = svc();
    let i = instance(&s, "h-1");
    store.register(&i, TTL).await.step("register")?;
    for n in 0..3 {
        time.advance(TTL / 2).await;
        let beat = store.heartbeat(&s, &i.id, TTL).await.step("heartbeat")?;
        ensure!(beat, "heartbeat {n} of a live entry returned false");
    }
    // 1.5 TTLs have passed since register.
    let ids = ids_of(store, &s).await?;
    ensure!(ids == ["h-1"], "not listed although heartbeated: {ids:?}");
    Ok(())
}

async fn heartbeat_after_expiry(store: &dyn RegistryStore, time: &dyn TimeControl) -> CaseResult {
    let s = svc();
    let i = instance(&s, "x-1");
    store.register(&i, TTL).await.step("register")?;
    time.advance(TTL + Duration::from_millis(200)).await;
    let beat = store.heartbeat(&s, &i.id, TTL).await.step("heartbeat")?;
    ensure!(!beat, "heartbeat revived an expired entry");
    Ok(())
}

async fn noop(store: &dyn RegistryStore) -> CaseResult {
    let s = svc();
    let i = instance(&s, "n-1");
    store.register(&i, TTL).await.step("register")?;
    ensure!(
        !store.heartbeat(&s, &i.id, TTL).await.step("heartbeat")?,
        "noop heartbeat must be false"
    );
    ensure!(
        store.list(None).await.step("list")?.is_empty(),
        "noop list must be empty"
    );
    store.deregister(&s, &i.id).await.step("deregister")?;
    store.ping().await.step("ping")
}
