//! Conformance of [`LivenessStore`] backends.

use super::{ensure, unique, CaseResult, Report, Step, TimeControl};
use crate::{ErrorKind, InstanceId, LivenessStore};
use std::time::Duration;

const TTL: Duration = Duration::from_millis(500);

fn ids(n: usize) -> Vec<InstanceId> {
    let p = unique("rt");
    (0..n)
        .map(|i| InstanceId::new(format!("{p}-{i}")).expect("valid"))
        .collect()
}

/// Run every liveness case against `store`.
pub async fn run(store: &dyn LivenessStore, time: &dyn TimeControl) -> Report {
    let mut r = Report::default();
    if !store.available() {
        r.case("unavailable_store_says_so", unavailable(store)).await;
        return r;
    }
    r.case("touch_then_alive", touch_then_alive(store)).await;
    r.case("batch_answers_every_id_in_order", batch_in_order(store))
        .await;
    r.case("empty_batch", async {
        let got = store.is_alive_batch(&[]).await.step("empty batch")?;
        ensure!(got.is_empty(), "empty batch answered {got:?}");
        Ok(())
    })
    .await;
    r.case("duplicate_ids_answered_each", duplicates(store)).await;
    r.case("expires_after_ttl", expires(store, time)).await;
    r.case("touch_extends", touch_extends(store, time)).await;
    r.case("forget_removes_at_once", forget(store)).await;
    r.case("large_batch", large_batch(store)).await;
    r.case("extreme_ttls_capped_never_wrapped", extreme_ttls(store, time))
        .await;
    r
}

async fn extreme_ttls(s: &dyn LivenessStore, time: &dyn TimeControl) -> CaseResult {
    use super::registry::{no_panic, LONG_TTLS, SHORT_TTLS};
    let long = ids(LONG_TTLS.len());
    let short = ids(SHORT_TTLS.len());
    for (id, ttl) in long.iter().zip(LONG_TTLS) {
        no_panic(&format!("touch with {ttl:?}"), s.touch(id, ttl)).await?;
    }
    for (id, ttl) in short.iter().zip(SHORT_TTLS) {
        no_panic(&format!("touch with {ttl:?}"), s.touch(id, ttl)).await?;
    }
    time.advance(Duration::from_millis(50)).await;
    let got = s.is_alive_batch(&long).await.step("batch")?;
    ensure!(
        got.iter().all(|a| *a),
        "long TTLs {LONG_TTLS:?} wrapped around: alive {got:?}"
    );
    let got = s.is_alive_batch(&short).await.step("batch")?;
    ensure!(
        got.iter().all(|a| !*a),
        "sub-millisecond TTLs {SHORT_TTLS:?} still alive after 50 ms: {got:?}"
    );
    for id in long.iter().chain(&short) {
        s.forget(id).await.step("forget")?;
    }
    Ok(())
}

async fn touch_then_alive(s: &dyn LivenessStore) -> CaseResult {
    let id = ids(1);
    s.touch(&id[0], TTL).await.step("touch")?;
    ensure!(
        s.is_alive_batch(&id).await.step("batch")? == [true],
        "touched id not alive"
    );
    Ok(())
}

async fn batch_in_order(s: &dyn LivenessStore) -> CaseResult {
    let id = ids(5);
    for i in [0, 2, 4] {
        s.touch(&id[i], TTL).await.step("touch")?;
    }
    let got = s.is_alive_batch(&id).await.step("batch")?;
    ensure!(
        got == [true, false, true, false, true],
        "expected alternating answers, got {got:?}"
    );
    Ok(())
}

async fn duplicates(s: &dyn LivenessStore) -> CaseResult {
    let id = ids(1);
    s.touch(&id[0], TTL).await.step("touch")?;
    let twice = [id[0].clone(), id[0].clone()];
    ensure!(
        s.is_alive_batch(&twice).await.step("batch")? == [true, true],
        "duplicate ids not each answered"
    );
    Ok(())
}

async fn expires(s: &dyn LivenessStore, time: &dyn TimeControl) -> CaseResult {
    let id = ids(1);
    s.touch(&id[0], TTL).await.step("touch")?;
    time.advance(TTL + Duration::from_millis(200)).await;
    ensure!(
        s.is_alive_batch(&id).await.step("batch")? == [false],
        "alive after its TTL"
    );
    Ok(())
}

async fn touch_extends(s: &dyn LivenessStore, time: &dyn TimeControl) -> CaseResult {
    let id = ids(1);
    s.touch(&id[0], TTL).await.step("touch")?;
    time.advance(TTL * 2 / 3).await;
    s.touch(&id[0], TTL).await.step("touch again")?;
    time.advance(TTL * 2 / 3).await;
    ensure!(
        s.is_alive_batch(&id).await.step("batch")? == [true],
        "second touch did not extend the TTL"
    );
    Ok(())
}

async fn forget(s: &dyn LivenessStore) -> CaseResult {
    let id = ids(2);
    s.touch(&id[0], TTL).await.step("touch")?;
    s.forget(&id[0]).await.step("forget")?;
    s.forget(&id[1]).await.step("forget missing")?;
    ensure!(
        s.is_alive_batch(&id).await.step("batch")? == [false, false],
        "forgotten id still alive"
    );
    Ok(())
}

async fn large_batch(s: &dyn LivenessStore) -> CaseResult {
    let id = ids(25_000);
    for i in (0..id.len()).step_by(1000) {
        s.touch(&id[i], Duration::from_secs(30)).await.step("touch")?;
    }
    let got = s.is_alive_batch(&id).await.step("batch")?;
    ensure!(
        got.len() == id.len(),
        "asked {} ids, got {} answers",
        id.len(),
        got.len()
    );
    let wrong = got
        .iter()
        .enumerate()
        .filter(|(i, a)| **a != (i % 1000 == 0))
        .count();
    ensure!(wrong == 0, "{wrong} wrong answers in a batch of {}", id.len());
    Ok(())
}

async fn unavailable(s: &dyn LivenessStore) -> CaseResult {
    let id = ids(2);
    s.touch(&id[0], TTL).await.step("touch")?;
    let err = s.is_alive_batch(&id).await;
    ensure!(
        matches!(&err, Err(e) if e.kind() == ErrorKind::Unavailable),
        "an unavailable store must answer Unavailable so callers fall back, got {err:?}"
    );
    s.forget(&id[0]).await.step("forget")
}
