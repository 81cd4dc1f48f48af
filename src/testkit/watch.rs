//! Conformance of [`RegistryWatch`] over a [`RegistryStore`] backend.
//!
//! Each case watches a service of its own, listing every [`INTERVAL`].
//! The restart case needs an [`Outage`] that takes the store down and
//! brings it back (kill and restart a redis-server on the same port).

use super::{ensure, unique, CaseResult, Report, Step, TimeControl};
use crate::{
    clock::SharedClock,
    rt,
    watch::{RegistryWatch, WatchEvent},
    Instance, InstanceId, RegistryStore, ServiceName, Status,
};
use async_trait::async_trait;
use std::{sync::Arc, time::Duration};

/// How often the cases' watches list.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// The short TTL of the expiry case.
pub const TTL: Duration = Duration::from_millis(600);

/// The TTL of every other case: long enough never to run out during a case.
const LONG_TTL: Duration = Duration::from_secs(60);

/// How long a case waits for an event it expects.
const WAIT: Duration = Duration::from_secs(5);

/// Takes the store under test down and brings it back.
#[async_trait]
pub trait Outage: Send + Sync {
    /// Make the store unreachable (kill the server).
    async fn go_down(&self);
    /// Make it reachable again (restart the server on the same address);
    /// it may come back empty, as Redis without persistence does.
    async fn come_back(&self);
}

/// What a case needs: the store, how time passes for it, and its clock.
struct Env<'a> {
    store: &'a Arc<dyn RegistryStore>,
    time: &'a dyn TimeControl,
    clock: &'a SharedClock,
}

impl Env<'_> {
    fn watch(&self, service: &ServiceName) -> RegistryWatch {
        RegistryWatch::new(self.store.clone(), Some(service.clone()))
            .interval(INTERVAL)
            .clock(self.clock.clone())
    }
}

fn svc() -> ServiceName {
    ServiceName::new(unique("watch")).expect("valid service name")
}

fn instance(service: &ServiceName, id: &str, status: Status) -> Instance {
    Instance::new(service.clone(), InstanceId::new(id).expect("valid id"), status)
}

/// The next event within `within`, or a failure naming what was awaited.
async fn next(watch: &mut RegistryWatch, within: Duration, what: &str) -> Result<WatchEvent, String> {
    rt::timeout(within, watch.next())
        .await
        .map_err(|_| format!("no event within {within:?} while waiting for {what}"))
}

/// `name id` of an event, to compare and print.
fn describe(e: &WatchEvent) -> String {
    match e.instance() {
        Some(i) => format!("{} {}", e.name(), i.id),
        None => e.name().to_owned(),
    }
}

async fn snapshot(watch: &mut RegistryWatch, expect: &[&Instance]) -> CaseResult {
    match next(watch, WAIT, "the snapshot").await? {
        WatchEvent::Snapshot(list) => {
            let want: Vec<&Instance> = expect.to_vec();
            let got: Vec<&Instance> = list.iter().collect();
            ensure!(got == want, "snapshot: expected {want:?}, got {got:?}");
            Ok(())
        }
        other => Err(format!("expected the snapshot first, got {other:?}")),
    }
}

/// Run every watch case; `outage` adds the restart case.
pub async fn run(
    store: &Arc<dyn RegistryStore>,
    time: &dyn TimeControl,
    clock: SharedClock,
    outage: Option<&dyn Outage>,
) -> Report {
    let env = Env {
        store,
        time,
        clock: &clock,
    };
    let mut r = Report::default();
    r.case("snapshot_first", snapshot_first(&env)).await;
    r.case("join_seen", join_seen(&env)).await;
    r.case("deregister_seen_as_left", leave_seen(&env)).await;
    r.case("expiry_seen_within_ttl_plus_1s", expiry_seen(&env)).await;
    r.case("status_change_seen", status_change_seen(&env)).await;
    r.case("metadata_change_seen", metadata_change_seen(&env)).await;
    r.case("heartbeats_are_no_change", heartbeats_are_no_change(&env))
        .await;
    r.case("other_services_not_seen", other_services_not_seen(&env))
        .await;
    r.case("dropped_next_loses_nothing", dropped_next_loses_nothing(&env))
        .await;
    if let Some(outage) = outage {
        r.case(
            "restart_unavailable_then_resynced",
            restart_resynced(&env, outage),
        )
        .await;
    }
    r
}

async fn snapshot_first(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let (a, b) = (
        instance(&s, "a", Status::Running),
        instance(&s, "b", Status::Starting),
    );
    env.store.register(&a, LONG_TTL).await.step("register a")?;
    env.store.register(&b, LONG_TTL).await.step("register b")?;
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a, &b]).await
}

async fn join_seen(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let mut w = env.watch(&s);
    snapshot(&mut w, &[]).await?;
    let a = instance(&s, "a", Status::Starting);
    env.store.register(&a, LONG_TTL).await.step("register")?;
    match next(&mut w, WAIT, "joined").await? {
        WatchEvent::Joined(i) if i == a => Ok(()),
        other => Err(format!("expected joined a, got {other:?}")),
    }
}

async fn leave_seen(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let a = instance(&s, "a", Status::Running);
    env.store.register(&a, LONG_TTL).await.step("register")?;
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a]).await?;
    env.store.deregister(&s.clone(), &a.id).await.step("deregister")?;
    match next(&mut w, WAIT, "left").await? {
        WatchEvent::Left(i) if i == a => Ok(()),
        other => Err(format!(
            "expected left a (deregistered with {LONG_TTL:?} of TTL to go), got {other:?}"
        )),
    }
}

async fn expiry_seen(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let a = instance(&s, "a", Status::Running);
    env.store.register(&a, TTL).await.step("register")?;
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a]).await?;
    env.time.advance(TTL).await;
    match next(&mut w, Duration::from_secs(1), "expired").await? {
        WatchEvent::Expired(i) if i == a => Ok(()),
        other => Err(format!("expected expired a within TTL + 1 s, got {other:?}")),
    }
}

async fn status_change_seen(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let a = instance(&s, "a", Status::Starting);
    env.store.register(&a, LONG_TTL).await.step("register")?;
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a]).await?;
    let running = instance(&s, "a", Status::Running);
    env.store.register(&running, LONG_TTL).await.step("re-register")?;
    match next(&mut w, WAIT, "status changed").await? {
        WatchEvent::StatusChanged { from, instance } if from == Status::Starting && instance == running => {
            Ok(())
        }
        other => Err(format!("expected a starting -> running, got {other:?}")),
    }
}

async fn metadata_change_seen(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let a = instance(&s, "a", Status::Running).with_metadata("zone", "a");
    env.store.register(&a, LONG_TTL).await.step("register")?;
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a]).await?;
    let moved = instance(&s, "a", Status::Running).with_metadata("zone", "b");
    env.store.register(&moved, LONG_TTL).await.step("re-register")?;
    match next(&mut w, WAIT, "metadata changed").await? {
        WatchEvent::MetadataChanged { from, instance } if from == a && instance == moved => Ok(()),
        other => Err(format!("expected a's zone a -> b, got {other:?}")),
    }
}

async fn heartbeats_are_no_change(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let a = instance(&s, "a", Status::Running);
    env.store.register(&a, LONG_TTL).await.step("register")?;
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a]).await?;
    for _ in 0..3 {
        env.time.advance(Duration::from_millis(20)).await;
        let alive = env.store.heartbeat(&s, &a.id, LONG_TTL).await.step("heartbeat")?;
        ensure!(alive, "heartbeat found no entry");
        if let Ok(e) = rt::timeout(INTERVAL * 3, w.next()).await {
            return Err(format!("a heartbeat is no change, got {e:?}"));
        }
    }
    Ok(())
}

async fn other_services_not_seen(env: &Env<'_>) -> CaseResult {
    let (s, other) = (svc(), svc());
    let mut w = env.watch(&s);
    snapshot(&mut w, &[]).await?;
    let stranger = instance(&other, "x", Status::Running);
    env.store
        .register(&stranger, LONG_TTL)
        .await
        .step("register other")?;
    let a = instance(&s, "a", Status::Running);
    env.store.register(&a, LONG_TTL).await.step("register")?;
    match next(&mut w, WAIT, "joined").await? {
        WatchEvent::Joined(i) if i == a => {}
        other => return Err(format!("expected only joined a, got {other:?}")),
    }
    if let Ok(e) = rt::timeout(INTERVAL * 3, w.next()).await {
        return Err(format!("expected nothing more, got {e:?}"));
    }
    Ok(())
}

/// `next` dropped at every point of its work (mid-sleep, mid-listing) still
/// yields each change exactly once.
async fn dropped_next_loses_nothing(env: &Env<'_>) -> CaseResult {
    let s = svc();
    let mut w = env.watch(&s);
    snapshot(&mut w, &[]).await?;
    let ids = ["a", "b", "c"];
    let mut seen = Vec::new();
    for id in ids {
        env.store
            .register(&instance(&s, id, Status::Running), LONG_TTL)
            .await
            .step("register")?;
        let deadline = std::time::Instant::now() + WAIT;
        let mut cut = Duration::from_micros(100);
        loop {
            ensure!(
                std::time::Instant::now() < deadline,
                "joined {id} never came through calls cut short"
            );
            if let Ok(e) = rt::timeout(cut, w.next()).await {
                seen.push(describe(&e));
                break;
            }
            // Cut at ever later points, across the sleep and the listing.
            cut = (cut * 2).min(INTERVAL * 2);
        }
    }
    if let Ok(e) = rt::timeout(INTERVAL * 3, w.next()).await {
        seen.push(describe(&e));
    }
    let want: Vec<String> = ids.iter().map(|id| format!("joined {id}")).collect();
    ensure!(seen == want, "expected {want:?} exactly once each, got {seen:?}");
    Ok(())
}

/// The store goes down and comes back (empty, for Redis); meanwhile `a`
/// deregisters, `b` comes back running, `c` joins and `d` re-registers
/// unchanged: the watch reports the outage once, then one resync with
/// exactly that diff.
async fn restart_resynced(env: &Env<'_>, outage: &dyn Outage) -> CaseResult {
    let s = svc();
    let [a, b, d] = ["a", "b", "d"].map(|id| instance(&s, id, Status::Starting));
    for i in [&a, &b, &d] {
        env.store.register(i, LONG_TTL).await.step("register")?;
    }
    let mut w = env.watch(&s);
    snapshot(&mut w, &[&a, &b, &d]).await?;
    outage.go_down().await;
    match next(&mut w, WAIT, "unavailable").await {
        Ok(WatchEvent::Unavailable(_)) => {}
        Ok(other) => {
            outage.come_back().await;
            return Err(format!("expected unavailable, got {other:?}"));
        }
        Err(e) => {
            outage.come_back().await;
            return Err(e);
        }
    }
    // Still down: nothing more to say.
    if let Ok(e) = rt::timeout(INTERVAL * 4, w.next()).await {
        outage.come_back().await;
        return Err(format!("one unavailable per outage, then {e:?}"));
    }
    outage.come_back().await;
    // The store may need a moment to accept writes again (a reconnect).
    let b2 = instance(&s, "b", Status::Running);
    let c = instance(&s, "c", Status::Starting);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let wrote = async {
            env.store.deregister(&s, &a.id).await?;
            env.store.register(&b2, LONG_TTL).await?;
            env.store.register(&c, LONG_TTL).await?;
            env.store.register(&d, LONG_TTL).await
        }
        .await;
        match wrote {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(format!("the store took no writes after coming back: {e}"))
            }
            Err(_) => rt::sleep(INTERVAL).await,
        }
    }
    match next(&mut w, WAIT, "resynced").await? {
        WatchEvent::Resynced { instances, changes } => {
            let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            ensure!(ids == ["b", "c", "d"], "resynced listing: {ids:?}");
            let got: Vec<String> = changes.iter().map(describe).collect();
            ensure!(
                got == ["left a", "joined c", "status_changed b"],
                "resync diff: expected [left a, joined c, status_changed b], got {got:?}"
            );
        }
        other => return Err(format!("expected resynced, got {other:?}")),
    }
    if let Ok(e) = rt::timeout(INTERVAL * 3, w.next()).await {
        return Err(format!("nothing after the resync, got {e:?}"));
    }
    Ok(())
}
