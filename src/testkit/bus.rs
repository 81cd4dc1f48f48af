//! Conformance of [`EventBus`] backends.
//!
//! The bus under test should cap streams at a few hundred entries (e.g. 200)
//! so the trimming cases stay quick, and use the default envelope size limit.

use super::{ensure, unique, CaseResult, Report, Step, TimeControl};
use crate::{
    ConsumerName, Delivery, Envelope, ErrorKind, EventBus, GroupName, MessageId, PendingEntry, ReadOptions,
    Release, StartFrom, StreamName, Topic, TopicPattern, DEFAULT_MAX_ENVELOPE_BYTES,
};
use futures_util::StreamExt;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

/// Idle time the reclaim cases wait for.
pub const MIN_IDLE: Duration = Duration::from_millis(300);

fn names() -> (StreamName, GroupName) {
    let s = unique("stream");
    (
        StreamName::new(format!("tk:{s}")).expect("valid"),
        GroupName::new("tk:group").expect("valid"),
    )
}

fn consumer(n: &str) -> ConsumerName {
    ConsumerName::new(n).expect("valid")
}

fn env(n: usize) -> Envelope {
    Envelope::new("test.event")
        .with_header("n", n.to_string())
        .with_raw_payload(format!("payload-{n}").into_bytes())
}

fn n_of(e: &Envelope) -> Option<usize> {
    e.header("n")?.parse().ok()
}

/// A fresh stream with the suite's group on it, then `n` entries published.
async fn group_with(bus: &dyn EventBus, n: usize) -> Result<(StreamName, GroupName, Vec<MessageId>), String> {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let ids = bus
        .publish_batch(&s, &(0..n).map(env).collect::<Vec<_>>())
        .await
        .step("publish")?;
    Ok((s, g, ids))
}

/// Run every bus case against `bus`.
pub async fn run(bus: &dyn EventBus, time: &dyn TimeControl) -> Report {
    let mut r = Report::default();
    if !bus.capabilities().stores_data {
        r.case("noop_accepts_and_delivers_nothing", noop(bus)).await;
        return r;
    }
    r.case("ensure_group_is_idempotent", ensure_group_idempotent(bus))
        .await;
    r.case("publish_then_read_round_trips", round_trip(bus)).await;
    r.case("ids_increase", ids_increase(bus)).await;
    r.case("read_respects_count", read_count(bus)).await;
    r.case("each_entry_once_per_group", once_per_group(bus)).await;
    r.case("two_groups_each_see_every_entry", two_groups(bus)).await;
    r.case("group_start_latest_or_beginning", start_from(bus)).await;
    r.case("unacked_entries_stay_pending", stays_pending(bus)).await;
    r.case("ack_removes_from_pending", ack_removes(bus)).await;
    r.case("reclaim_after_idle_time", reclaim(bus, time)).await;
    r.case(
        "reclaim_reports_trimmed_entries_deleted",
        reclaim_trimmed(bus, time),
    )
    .await;
    r.case(
        "claim_counts_are_exact_in_any_interleaving",
        claim_counts_exact(bus, time),
    )
    .await;
    r.case("cancelled_read_strands_nothing", cancelled_read(bus))
        .await;
    r.case(
        "release_unhandled_is_claimable_at_once_and_uncounted",
        release_unhandled(bus),
    )
    .await;
    r.case(
        "release_retry_after_waits_then_counts_once",
        release_retry_after(bus, time),
    )
    .await;
    r.case("renew_keeps_a_lease", renew(bus, time)).await;
    r.case("pending_entries_detail", pending_entries(bus, time)).await;
    r.case("dead_letter_moves_and_acks_atomically", dead_letter(bus))
        .await;
    r.case(
        "delete_consumer_refused_while_holding_entries",
        delete_consumer(bus),
    )
    .await;
    r.case("delete_group_removes_it", delete_group(bus)).await;
    r.case("range_and_delete_entries", range_and_delete(bus)).await;
    r.case("ack_and_read_acks_then_reads", ack_and_read(bus)).await;
    r.case(
        "consumer_primitives_on_a_missing_group_are_not_found",
        primitives_not_found(bus),
    )
    .await;
    r.case("trimming_keeps_length_near_cap", trimming(bus)).await;
    r.case("backlog_figures", backlog(bus)).await;
    r.case("stream_info_figures", stream_info(bus)).await;
    r.case("missing_group_or_stream_is_not_found", not_found(bus))
        .await;
    r.case("blocking_read_wakes_on_publish", blocking_wakes(bus))
        .await;
    r.case("blocking_read_times_out_empty", blocking_times_out(bus))
        .await;
    r.case("oversized_envelope_rejected_and_nothing_stored", oversized(bus))
        .await;
    r.case("topic_wildcard_matches_one_token", topic_wildcard(bus))
        .await;
    r.case("topic_fans_out_to_every_subscriber", topic_fan_out(bus))
        .await;
    r
}

async fn ensure_group_idempotent(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    ensure!(
        bus.ensure_group(&s, &g, StartFrom::Latest).await.step("create")?,
        "first ensure_group returned false"
    );
    ensure!(
        !bus.ensure_group(&s, &g, StartFrom::Latest).await.step("again")?,
        "second ensure_group returned true"
    );
    let info = bus.stream_info(&s).await.step("stream_info")?;
    ensure!(
        info.length == 0 && info.groups.len() == 1,
        "expected an empty stream with one group, got {info:?}"
    );
    Ok(())
}

async fn round_trip(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let sent = Envelope::new("chat.message")
        .with_trace_id("trace-1")
        .with_header("platform", "discord")
        .with_raw_payload(vec![0, 159, 146, 150, 255]);
    let id = bus.publish(&s, &sent).await.step("publish")?;
    let got = bus
        .read(&s, &g, &consumer("c1"), ReadOptions::count(10))
        .await
        .step("read")?;
    ensure!(got.len() == 1, "expected 1 delivery, got {}", got.len());
    ensure!(got[0].id == id, "delivered id {} != published id {id}", got[0].id);
    ensure!(
        got[0].delivery_count == 1,
        "first delivery count is {}",
        got[0].delivery_count
    );
    let back = got[0].envelope().step("decode")?;
    ensure!(back == sent, "envelope changed in transit: {back:?} != {sent:?}");
    Ok(())
}

async fn ids_increase(bus: &dyn EventBus) -> CaseResult {
    let (s, _) = names();
    let mut ids = bus
        .publish_batch(&s, &(0..20).map(env).collect::<Vec<_>>())
        .await
        .step("publish_batch")?;
    ids.push(bus.publish(&s, &env(20)).await.step("publish")?);
    ensure!(
        ids.len() == 21,
        "publish_batch of 20 returned {} ids",
        ids.len() - 1
    );
    ensure!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids do not strictly increase: {ids:?}"
    );
    ensure!(
        bus.publish_batch(&s, &[]).await.step("empty batch")?.is_empty(),
        "empty batch returned ids"
    );
    Ok(())
}

async fn read_count(bus: &dyn EventBus) -> CaseResult {
    let (s, g, _) = group_with(bus, 5).await?;
    let c = consumer("c1");
    let a = bus.read(&s, &g, &c, ReadOptions::count(2)).await.step("read 2")?;
    let b = bus
        .read(&s, &g, &c, ReadOptions::count(10))
        .await
        .step("read rest")?;
    let order: Vec<_> = a
        .iter()
        .chain(&b)
        .map(|d| d.envelope().ok().and_then(|e| n_of(&e)))
        .collect();
    ensure!(
        a.len() == 2 && b.len() == 3,
        "count not respected: {} then {}",
        a.len(),
        b.len()
    );
    ensure!(
        order == (0..5).map(Some).collect::<Vec<_>>(),
        "entries out of order: {order:?}"
    );
    Ok(())
}

async fn once_per_group(bus: &dyn EventBus) -> CaseResult {
    let (s, g, _) = group_with(bus, 10).await?;
    let mut seen = Vec::new();
    for round in 0..4 {
        for c in ["c1", "c2"] {
            let got = bus
                .read(&s, &g, &consumer(c), ReadOptions::count(3))
                .await
                .step("read")?;
            seen.extend(got.iter().map(|d| d.id));
            let _ = round;
        }
    }
    let unique: BTreeSet<_> = seen.iter().collect();
    ensure!(
        seen.len() == 10 && unique.len() == 10,
        "expected 10 distinct deliveries, got {} ({} distinct)",
        seen.len(),
        unique.len()
    );
    Ok(())
}

async fn two_groups(bus: &dyn EventBus) -> CaseResult {
    let (s, g1) = names();
    let g2 = GroupName::new("tk:other").expect("valid");
    bus.ensure_group(&s, &g1, StartFrom::Latest)
        .await
        .step("ensure g1")?;
    bus.ensure_group(&s, &g2, StartFrom::Latest)
        .await
        .step("ensure g2")?;
    let ids = bus
        .publish_batch(&s, &(0..7).map(env).collect::<Vec<_>>())
        .await
        .step("publish")?;
    for g in [&g1, &g2] {
        let got: Vec<MessageId> = bus
            .read(&s, g, &consumer("c"), ReadOptions::count(100))
            .await
            .step("read")?
            .iter()
            .map(|d| d.id)
            .collect();
        ensure!(got == ids, "group {g} saw {got:?}, expected {ids:?}");
    }
    Ok(())
}

async fn start_from(bus: &dyn EventBus) -> CaseResult {
    let (s, _) = names();
    let old = bus
        .publish_batch(&s, &(0..3).map(env).collect::<Vec<_>>())
        .await
        .step("publish old")?;
    let latest = GroupName::new("tk:latest").expect("valid");
    let all = GroupName::new("tk:all").expect("valid");
    bus.ensure_group(&s, &latest, StartFrom::Latest)
        .await
        .step("ensure latest")?;
    bus.ensure_group(&s, &all, StartFrom::Beginning)
        .await
        .step("ensure beginning")?;
    let new = bus.publish(&s, &env(3)).await.step("publish new")?;
    let l: Vec<_> = bus
        .read(&s, &latest, &consumer("c"), ReadOptions::count(10))
        .await
        .step("read")?
        .iter()
        .map(|d| d.id)
        .collect();
    let a: Vec<_> = bus
        .read(&s, &all, &consumer("c"), ReadOptions::count(10))
        .await
        .step("read")?
        .iter()
        .map(|d| d.id)
        .collect();
    ensure!(l == [new], "Latest group saw {l:?}, expected only {new}");
    let want: Vec<_> = old.iter().copied().chain([new]).collect();
    ensure!(a == want, "Beginning group saw {a:?}, expected {want:?}");
    Ok(())
}

async fn stays_pending(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let ids = bus
        .publish_batch(&s, &(0..3).map(env).collect::<Vec<_>>())
        .await
        .step("publish")?;
    bus.read(&s, &g, &consumer("c1"), ReadOptions::count(2))
        .await
        .step("read c1")?;
    bus.read(&s, &g, &consumer("c2"), ReadOptions::count(2))
        .await
        .step("read c2")?;
    let p = bus.pending(&s, &g).await.step("pending")?;
    ensure!(p.count == 3, "pending count {} != 3", p.count);
    ensure!(
        p.lowest == Some(ids[0]) && p.highest == Some(ids[2]),
        "pending range {:?}..{:?}",
        p.lowest,
        p.highest
    );
    ensure!(
        p.consumers.get("c1") == Some(&2) && p.consumers.get("c2") == Some(&1),
        "per-consumer counts {:?}",
        p.consumers
    );
    let again = bus
        .read(&s, &g, &consumer("c1"), ReadOptions::count(10))
        .await
        .step("read again")?;
    ensure!(
        again.is_empty(),
        "pending entries were delivered again as new: {again:?}"
    );
    Ok(())
}

async fn ack_removes(bus: &dyn EventBus) -> CaseResult {
    let (s, g, _) = group_with(bus, 3).await?;
    let got = bus
        .read(&s, &g, &consumer("c1"), ReadOptions::count(10))
        .await
        .step("read")?;
    let acked = bus.ack(&s, &g, &[got[0].id, got[1].id]).await.step("ack")?;
    ensure!(acked == 2, "ack of 2 pending entries returned {acked}");
    let p = bus.pending(&s, &g).await.step("pending")?;
    ensure!(
        p.count == 1 && p.lowest == Some(got[2].id),
        "after ack, pending is {p:?}"
    );
    let again = bus.ack(&s, &g, &[got[0].id]).await.step("ack again")?;
    ensure!(again == 0, "acking an acked entry returned {again}");
    Ok(())
}

async fn reclaim(bus: &dyn EventBus, time: &dyn TimeControl) -> CaseResult {
    let (s, g, _) = group_with(bus, 2).await?;
    let crashed = bus
        .read(&s, &g, &consumer("crashed"), ReadOptions::count(10))
        .await
        .step("read")?;
    let early = bus
        .claim(&s, &g, &consumer("rescuer"), MIN_IDLE * 10, 10)
        .await
        .step("early claim")?;
    ensure!(
        early.deliveries.is_empty(),
        "claimed entries that were not idle long enough: {early:?}"
    );
    time.advance(MIN_IDLE + Duration::from_millis(100)).await;
    let got = bus
        .claim(&s, &g, &consumer("rescuer"), MIN_IDLE, 10)
        .await
        .step("claim")?;
    let ids: Vec<_> = got.deliveries.iter().map(|d| d.id).collect();
    let want: Vec<_> = crashed.iter().map(|d| d.id).collect();
    ensure!(ids == want, "reclaimed {ids:?}, expected {want:?}");
    ensure!(
        got.deliveries.iter().all(|d| d.delivery_count == 2),
        "delivery counts after reclaim: {:?}",
        got.deliveries
            .iter()
            .map(|d| d.delivery_count)
            .collect::<Vec<_>>()
    );
    ensure!(
        got.deliveries[0].envelope().ok().as_ref().and_then(n_of) == Some(0),
        "reclaimed body differs"
    );
    let p = bus.pending(&s, &g).await.step("pending")?;
    ensure!(
        p.consumers.get("rescuer") == Some(&2) && !p.consumers.contains_key("crashed"),
        "ownership after claim: {:?}",
        p.consumers
    );
    let twice = bus
        .claim(&s, &g, &consumer("third"), MIN_IDLE, 10)
        .await
        .step("claim again")?;
    ensure!(
        twice.deliveries.is_empty(),
        "a just-claimed entry was claimed again: {twice:?}"
    );
    bus.ack(&s, &g, &ids).await.step("ack")?;
    ensure!(
        bus.pending(&s, &g).await.step("pending")?.count == 0,
        "reclaimed entries not acked"
    );
    Ok(())
}

async fn reclaim_trimmed(bus: &dyn EventBus, time: &dyn TimeControl) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    bus.publish(&s, &env(0)).await.step("publish")?;
    let first = bus
        .read(&s, &g, &consumer("crashed"), ReadOptions::count(1))
        .await
        .step("read")?;
    let cap = bus.max_len(&s) as usize;
    let flood = cap + bus.capabilities().trim_slack as usize + 1;
    ensure!(
        cap <= 5_000,
        "this case wants a stream cap of at most 5000, the bus has {cap}"
    );
    for chunk in (1..=flood).collect::<Vec<_>>().chunks(500) {
        bus.publish_batch(&s, &chunk.iter().map(|n| env(*n)).collect::<Vec<_>>())
            .await
            .step("flood")?;
    }
    time.advance(MIN_IDLE + Duration::from_millis(100)).await;
    let got = bus
        .claim(&s, &g, &consumer("rescuer"), MIN_IDLE, 10)
        .await
        .step("claim")?;
    ensure!(
        got.deliveries.is_empty() && got.deleted == [first[0].id],
        "expected only {} reported deleted, got {got:?}",
        first[0].id
    );
    ensure!(
        bus.pending(&s, &g).await.step("pending")?.count == 0,
        "a trimmed entry is still pending"
    );
    Ok(())
}

fn ids_of(deliveries: &[Delivery]) -> Vec<MessageId> {
    deliveries.iter().map(|d| d.id).collect()
}

fn counts_of(deliveries: &[Delivery]) -> Vec<(MessageId, u64)> {
    deliveries.iter().map(|d| (d.id, d.delivery_count)).collect()
}

/// The whole pending list of `group`, as `(id, consumer, deliveries)`.
async fn pel(
    bus: &dyn EventBus,
    s: &StreamName,
    g: &GroupName,
) -> Result<Vec<(MessageId, String, u64)>, String> {
    Ok(bus
        .pending_entries(s, g, None, MessageId::ZERO, 1000)
        .await
        .step("pending_entries")?
        .into_iter()
        .map(|p| (p.id, p.consumer, p.deliveries))
        .collect())
}

/// `consumer` reads exactly the entry `want`, delivered for the first time.
async fn read_exactly(
    bus: &dyn EventBus,
    s: &StreamName,
    g: &GroupName,
    c: &ConsumerName,
    want: MessageId,
) -> CaseResult {
    let got = bus.read(s, g, c, ReadOptions::count(1)).await.step("read")?;
    ensure!(
        counts_of(&got) == [(want, 1)],
        "{c} read {:?}, expected {want} delivered once",
        counts_of(&got)
    );
    Ok(())
}

/// The reported count of a claimed entry is the one the pending list keeps,
/// whoever held the other entries and in whatever order they were read.
async fn claim_counts_exact(bus: &dyn EventBus, time: &dyn TimeControl) -> CaseResult {
    let (s, g, m) = group_with(bus, 3).await?;
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    read_exactly(bus, &s, &g, &c1, m[0]).await?;
    read_exactly(bus, &s, &g, &c2, m[1]).await?;
    read_exactly(bus, &s, &g, &c1, m[2]).await?;
    time.advance(MIN_IDLE + Duration::from_millis(100)).await;
    let own = bus
        .claim_ids(&s, &g, &c2, Duration::ZERO, &[m[1]])
        .await
        .step("claim_ids")?;
    ensure!(
        counts_of(&own.deliveries) == [(m[1], 2)] && own.deleted.is_empty(),
        "c2 re-claiming its own {} reported {own:?}, expected it with delivery count 2",
        m[1]
    );
    let got = bus.claim(&s, &g, &c2, MIN_IDLE, 10).await.step("claim")?;
    let mut counts = counts_of(&got.deliveries);
    counts.sort();
    ensure!(
        counts == [(m[0], 2), (m[2], 2)],
        "claim reported {counts:?}, expected [({}, 2), ({}, 2)]",
        m[0],
        m[2]
    );
    let rows = pel(bus, &s, &g).await?;
    for (id, n) in counts_of(&own.deliveries).into_iter().chain(counts) {
        let row = rows.iter().find(|r| r.0 == id);
        ensure!(
            row.is_some_and(|r| r.1 == "c2" && r.2 == n),
            "claim reported {id} delivered {n} times to c2, the pending list says {row:?}"
        );
    }
    ensure!(rows.len() == 3, "pending list {rows:?}, expected 3 rows");
    Ok(())
}

/// A blocking read dropped before anything arrived must not take the next
/// entry away from the live consumers, nor count a delivery nobody saw.
async fn cancelled_read(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let (a, b) = (consumer("a"), consumer("b"));
    let abandoned = crate::rt::timeout(
        Duration::from_millis(100),
        bus.read(&s, &g, &a, ReadOptions::count(10).block(Duration::from_secs(3))),
    )
    .await;
    ensure!(
        abandoned.is_err(),
        "a blocking read on an empty stream returned before its block time: {abandoned:?}"
    );
    let id = bus.publish(&s, &env(0)).await.step("publish")?;
    // A read that outlived its caller (as a server-side blocked one may) gets
    // its chance to take the entry before the live consumer looks.
    crate::rt::sleep(Duration::from_millis(50)).await;
    let mut got = bus
        .read(&s, &g, &b, ReadOptions::count(10).block(Duration::from_secs(1)))
        .await
        .step("read b")?;
    if got.is_empty() {
        got = bus
            .claim(&s, &g, &b, Duration::ZERO, 10)
            .await
            .step("claim b")?
            .deliveries;
    }
    ensure!(
        counts_of(&got) == [(id, 1)],
        "consumer b ended with {:?}, expected {id} delivered once",
        counts_of(&got)
    );
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows == [(id, "b".to_string(), 1)],
        "pending list {rows:?}, expected only {id} held by b, delivered once"
    );
    let summary = bus.pending(&s, &g).await.step("pending")?;
    ensure!(
        summary.consumers == BTreeMap::from([("b".to_string(), 1)]),
        "pending per consumer {:?}, expected b holding 1",
        summary.consumers
    );
    Ok(())
}

async fn release_unhandled(bus: &dyn EventBus) -> CaseResult {
    let (s, g, m) = group_with(bus, 1).await?;
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    read_exactly(bus, &s, &g, &c1, m[0]).await?;
    let stranger = bus
        .release(&s, &g, &c2, &m, Release::Unhandled)
        .await
        .step("release by a non-owner")?;
    ensure!(stranger == 0, "c2 released {stranger} entries it never held");
    let held = bus
        .release(&s, &g, &c1, &[m[0], m[0].next()], Release::Unhandled)
        .await
        .step("release")?;
    ensure!(held == 1, "c1 released {held} entries, it held 1");
    let got = bus.claim(&s, &g, &c2, MIN_IDLE, 10).await.step("claim")?;
    ensure!(
        counts_of(&got.deliveries) == [(m[0], 1)],
        "claim right after an unhandled release got {:?}, expected {} with delivery count 1",
        counts_of(&got.deliveries),
        m[0]
    );
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows == [(m[0], "c2".to_string(), 1)],
        "pending list {rows:?}, expected {} held by c2, delivered once",
        m[0]
    );
    Ok(())
}

async fn release_retry_after(bus: &dyn EventBus, time: &dyn TimeControl) -> CaseResult {
    let (s, g, m) = group_with(bus, 1).await?;
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    read_exactly(bus, &s, &g, &c1, m[0]).await?;
    // Longer than the lease, so idle time alone must not make it claimable.
    let delay = MIN_IDLE * 3;
    let held = bus
        .release(&s, &g, &c1, &m, Release::RetryAfter(delay))
        .await
        .step("release")?;
    ensure!(held == 1, "c1 released {held} entries, it held 1");
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows.len() == 1 && rows[0].2 == 1,
        "after a failed attempt the pending list is {rows:?}, expected the attempt counted once"
    );
    let early = bus.claim(&s, &g, &c2, MIN_IDLE, 10).await.step("early claim")?;
    ensure!(
        early.deliveries.is_empty(),
        "claimed at once despite RetryAfter({delay:?}): {early:?}"
    );
    let early = bus
        .claim_ids(&s, &g, &c2, MIN_IDLE, &m)
        .await
        .step("early claim_ids")?;
    ensure!(
        early.deliveries.is_empty(),
        "claim_ids took it at once despite RetryAfter({delay:?}): {early:?}"
    );
    time.advance(MIN_IDLE + Duration::from_millis(100)).await;
    let mid = bus
        .claim(&s, &g, &c2, MIN_IDLE, 10)
        .await
        .step("claim before the delay")?;
    ensure!(
        mid.deliveries.is_empty(),
        "claimed after {:?}, before its RetryAfter({delay:?}): {mid:?}",
        MIN_IDLE + Duration::from_millis(100)
    );
    time.advance(delay - MIN_IDLE).await;
    let got = bus
        .claim(&s, &g, &c2, MIN_IDLE, 10)
        .await
        .step("claim when due")?;
    ensure!(
        counts_of(&got.deliveries) == [(m[0], 2)],
        "claim once due got {:?}, expected {} with delivery count 2",
        counts_of(&got.deliveries),
        m[0]
    );
    let again = bus
        .claim(&s, &g, &consumer("c3"), MIN_IDLE, 10)
        .await
        .step("claim again")?;
    ensure!(
        again.deliveries.is_empty(),
        "a due entry was claimed twice: {again:?}"
    );
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows == [(m[0], "c2".to_string(), 2)],
        "pending list {rows:?}, expected {} held by c2, delivered twice",
        m[0]
    );
    Ok(())
}

async fn renew(bus: &dyn EventBus, time: &dyn TimeControl) -> CaseResult {
    let (s, g, m) = group_with(bus, 1).await?;
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    read_exactly(bus, &s, &g, &c1, m[0]).await?;
    let most = MIN_IDLE - MIN_IDLE / 6;
    let rest = MIN_IDLE / 2;
    time.advance(most).await;
    let renewed = bus.renew(&s, &g, &c1, &[m[0], m[0].next()]).await.step("renew")?;
    ensure!(
        renewed == [m[0]],
        "renew by the holder returned {renewed:?}, expected [{}]",
        m[0]
    );
    let stolen = bus.renew(&s, &g, &c2, &m).await.step("renew by a non-owner")?;
    ensure!(stolen.is_empty(), "renew by a non-owner returned {stolen:?}");
    time.advance(rest).await;
    let early = bus.claim(&s, &g, &c2, MIN_IDLE, 10).await.step("claim")?;
    ensure!(
        early.deliveries.is_empty(),
        "claimed {:?} after the lease was renewed {rest:?} ago (min idle {MIN_IDLE:?})",
        ids_of(&early.deliveries)
    );
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows == [(m[0], "c1".to_string(), 1)],
        "after renewals the pending list is {rows:?}, expected {} held by c1, delivered once",
        m[0]
    );
    time.advance(MIN_IDLE).await;
    let late = bus.claim(&s, &g, &c2, MIN_IDLE, 10).await.step("late claim")?;
    ensure!(
        counts_of(&late.deliveries) == [(m[0], 2)],
        "once the renewed lease ran out, claim got {:?}, expected {} with delivery count 2",
        counts_of(&late.deliveries),
        m[0]
    );
    Ok(())
}

async fn pending_entries(bus: &dyn EventBus, time: &dyn TimeControl) -> CaseResult {
    let (s, g, m) = group_with(bus, 4).await?;
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    let step = Duration::from_millis(100);
    // Idle times are whole milliseconds on Redis; allow for rounding.
    let slack = Duration::from_millis(10);
    bus.read(&s, &g, &c1, ReadOptions::count(2))
        .await
        .step("read c1")?;
    time.advance(step).await;
    bus.read(&s, &g, &c2, ReadOptions::count(2))
        .await
        .step("read c2")?;
    time.advance(step).await;
    let all = bus
        .pending_entries(&s, &g, None, MessageId::ZERO, 10)
        .await
        .step("pending_entries")?;
    let rows: Vec<_> = all
        .iter()
        .map(|p| (p.id, p.consumer.as_str(), p.deliveries))
        .collect();
    ensure!(
        rows == [(m[0], "c1", 1), (m[1], "c1", 1), (m[2], "c2", 1), (m[3], "c2", 1)],
        "pending rows {rows:?}"
    );
    let idle: Vec<Duration> = all.iter().map(|p| p.idle).collect();
    ensure!(
        idle[0] + slack >= step * 2
            && idle[2] + slack >= step
            && idle[2] < idle[0]
            && idle.iter().all(|i| *i < Duration::from_secs(30)),
        "idle times {idle:?}: c1's entries were delivered {:?} ago, c2's {step:?} ago",
        step * 2
    );
    time.advance(step).await;
    let later = bus
        .pending_entries(&s, &g, None, MessageId::ZERO, 10)
        .await
        .step("pending_entries later")?;
    ensure!(
        later.len() == 4
            && later
                .iter()
                .zip(&all)
                .all(|(l, a)| l.idle + slack >= a.idle + step),
        "idle times did not grow by {step:?}: {idle:?} then {:?}",
        later.iter().map(|p| p.idle).collect::<Vec<_>>()
    );
    let ids = |rows: Vec<PendingEntry>| rows.into_iter().map(|p| p.id).collect::<Vec<_>>();
    let of_c2 = ids(bus
        .pending_entries(&s, &g, Some(c2.clone()), MessageId::ZERO, 10)
        .await
        .step("pending_entries of c2")?);
    ensure!(of_c2 == m[2..], "rows of c2 {of_c2:?}, expected {:?}", &m[2..]);
    let from = ids(bus
        .pending_entries(&s, &g, None, m[1], 10)
        .await
        .step("pending_entries from an id")?);
    ensure!(
        from == m[1..],
        "rows from {} are {from:?}, expected {:?}",
        m[1],
        &m[1..]
    );
    let first = ids(bus
        .pending_entries(&s, &g, None, MessageId::ZERO, 2)
        .await
        .step("pending_entries count 2")?);
    ensure!(first == m[..2], "2 rows are {first:?}, expected {:?}", &m[..2]);
    let both = ids(bus
        .pending_entries(&s, &g, Some(c1), m[1], 1)
        .await
        .step("pending_entries of c1 from an id")?);
    ensure!(both == [m[1]], "1 row of c1 from {} is {both:?}", m[1]);
    let every = ids(bus
        .pending_entries(&s, &g, None, MessageId::ZERO, usize::MAX)
        .await
        .step("pending_entries with no practical limit (count usize::MAX)")?);
    ensure!(every == m, "rows up to usize::MAX are {every:?}, expected {m:?}");
    Ok(())
}

async fn dead_letter(bus: &dyn EventBus) -> CaseResult {
    let (s, g, m) = group_with(bus, 2).await?;
    let dead = StreamName::new(format!("{s}:dead")).expect("valid");
    bus.read(&s, &g, &consumer("c1"), ReadOptions::count(10))
        .await
        .step("read")?;
    let record: &[u8] = &[0, 159, 146, 150, 255, b'\n', b'x'];
    let dead_id = bus
        .dead_letter(&s, &g, m[0], &dead, record, 100)
        .await
        .step("dead_letter")?
        .ok_or("dead_letter of a pending entry returned None")?;
    let moved = bus
        .range(&dead, MessageId::ZERO, 10)
        .await
        .step("range of the dead letters")?;
    ensure!(
        moved.len() == 1 && moved[0].id == dead_id && moved[0].body[..] == *record,
        "dead-letter stream holds {moved:?}, expected one record {dead_id} with bytes {record:?}"
    );
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>() == [m[1]],
        "pending list after dead-lettering {}: {rows:?}",
        m[0]
    );
    for (what, id) in [("again", m[0]), ("an unknown id", m[1].next())] {
        let twice = bus
            .dead_letter(&s, &g, id, &dead, b"twice", 100)
            .await
            .step("dead_letter again")?;
        ensure!(
            twice.is_none(),
            "dead_letter of {what} ({id}) returned {twice:?}, expected None"
        );
    }
    let len = bus
        .range(&dead, MessageId::ZERO, 10)
        .await
        .step("range again")?
        .len();
    ensure!(
        len == 1,
        "refused dead_letter calls wrote records: {len} in the stream"
    );
    Ok(())
}

async fn delete_consumer(bus: &dyn EventBus) -> CaseResult {
    let (s, g, m) = group_with(bus, 3).await?;
    let (c1, c2) = (consumer("c1"), consumer("c2"));
    bus.read(&s, &g, &c1, ReadOptions::count(2))
        .await
        .step("read c1")?;
    read_exactly(bus, &s, &g, &c2, m[2]).await?;
    let refused = bus.delete_consumer(&s, &g, &c1, false).await;
    ensure!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::Conflict),
        "deleting a consumer holding 2 entries: {refused:?}, expected a Conflict"
    );
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows.len() == 3,
        "a refused delete changed the pending list: {rows:?}"
    );
    bus.ack(&s, &g, &[m[2]]).await.step("ack")?;
    let idle = bus
        .delete_consumer(&s, &g, &c2, false)
        .await
        .step("delete a consumer holding nothing")?;
    ensure!(idle == 0, "deleting c2 (holding nothing) returned {idle}");
    let unknown = bus
        .delete_consumer(&s, &g, &consumer("never-seen"), false)
        .await
        .step("delete an unknown consumer")?;
    ensure!(unknown == 0, "deleting an unknown consumer returned {unknown}");
    let held = bus
        .delete_consumer(&s, &g, &c1, true)
        .await
        .step("forced delete")?;
    ensure!(held == 2, "forced delete of c1 returned {held}, it held 2");
    let rows = pel(bus, &s, &g).await?;
    ensure!(
        rows.is_empty(),
        "entries of a deleted consumer stay pending: {rows:?}"
    );
    let info = bus.stream_info(&s).await.step("stream_info")?;
    let consumers = info
        .groups
        .iter()
        .find(|x| x.name == g.as_str())
        .map(|x| x.consumers);
    ensure!(consumers == Some(0), "group still counts {consumers:?} consumers");
    Ok(())
}

async fn delete_group(bus: &dyn EventBus) -> CaseResult {
    let (s, g, _) = group_with(bus, 2).await?;
    bus.read(&s, &g, &consumer("c1"), ReadOptions::count(10))
        .await
        .step("read")?;
    ensure!(
        bus.delete_group(&s, &g).await.step("delete_group")?,
        "deleting an existing group returned false"
    );
    ensure!(
        !bus.delete_group(&s, &g).await.step("delete_group again")?,
        "deleting a deleted group returned true"
    );
    let read = bus
        .read(&s, &g, &consumer("c1"), ReadOptions::count(1))
        .await
        .map(drop)
        .err()
        .map(|e| e.kind());
    ensure!(
        read == Some(ErrorKind::NotFound),
        "read of a deleted group: {read:?}"
    );
    let info = bus.stream_info(&s).await.step("stream_info")?;
    ensure!(
        info.length == 2 && info.groups.is_empty(),
        "deleting the group changed the stream or kept the group: {info:?}"
    );
    ensure!(
        bus.ensure_group(&s, &g, StartFrom::Latest)
            .await
            .step("ensure_group again")?,
        "a deleted group could not be created again"
    );
    let (missing, _) = names();
    ensure!(
        !bus.delete_group(&missing, &g)
            .await
            .step("delete_group on a missing stream")?,
        "deleting a group of a missing stream returned true"
    );
    Ok(())
}

async fn range_and_delete(bus: &dyn EventBus) -> CaseResult {
    let (s, _) = names();
    let m = bus
        .publish_batch(&s, &(0..5).map(env).collect::<Vec<_>>())
        .await
        .step("publish")?;
    let all = bus.range(&s, MessageId::ZERO, 10).await.step("range")?;
    let order: Vec<_> = all
        .iter()
        .map(|d| d.envelope().ok().and_then(|e| n_of(&e)))
        .collect();
    ensure!(
        ids_of(&all) == m && order == (0..5).map(Some).collect::<Vec<_>>(),
        "range returned {:?} / {order:?}, expected {m:?} in order",
        ids_of(&all)
    );
    let window = ids_of(&bus.range(&s, m[2], 2).await.step("range window")?);
    ensure!(window == m[2..4], "range from {} count 2 gave {window:?}", m[2]);
    let past = bus.range(&s, m[4].next(), 10).await.step("range past the end")?;
    ensure!(past.is_empty(), "range past the last entry gave {past:?}");
    let (missing, _) = names();
    let none = bus
        .range(&missing, MessageId::ZERO, 10)
        .await
        .step("range of a missing stream")?;
    ensure!(none.is_empty(), "range of a missing stream gave {none:?}");
    let deleted = bus
        .delete_entries(&s, &[m[1], m[3], m[4].next()])
        .await
        .step("delete_entries")?;
    ensure!(
        deleted == 2,
        "deleting 2 entries and an unknown id returned {deleted}"
    );
    let left = ids_of(
        &bus.range(&s, MessageId::ZERO, 10)
            .await
            .step("range after delete")?,
    );
    ensure!(
        left == [m[0], m[2], m[4]],
        "after deleting {} and {} the stream holds {left:?}",
        m[1],
        m[3]
    );
    let again = bus
        .delete_entries(&s, &[m[1]])
        .await
        .step("delete_entries again")?;
    ensure!(again == 0, "deleting a deleted entry returned {again}");
    let gone = bus
        .delete_entries(&missing, &[m[0]])
        .await
        .step("delete_entries on a missing stream")?;
    ensure!(gone == 0, "deleting from a missing stream returned {gone}");
    let len = bus.stream_info(&s).await.step("stream_info")?.length;
    ensure!(len == 3, "length after deleting 2 of 5 is {len}");
    let every = ids_of(
        &bus.range(&s, MessageId::ZERO, usize::MAX)
            .await
            .step("range with no practical limit (count usize::MAX)")?,
    );
    ensure!(
        every == [m[0], m[2], m[4]],
        "range up to usize::MAX gave {every:?}, expected {:?}",
        [m[0], m[2], m[4]]
    );
    Ok(())
}

async fn ack_and_read(bus: &dyn EventBus) -> CaseResult {
    let (s, g, m) = group_with(bus, 4).await?;
    let c = consumer("c1");
    let first = bus
        .ack_and_read(&s, &g, &c, &[], ReadOptions::count(2))
        .await
        .step("ack_and_read without acks")?;
    ensure!(
        counts_of(&first) == [(m[0], 1), (m[1], 1)],
        "first ack_and_read gave {:?}",
        counts_of(&first)
    );
    let next = bus
        .ack_and_read(&s, &g, &c, &ids_of(&first), ReadOptions::count(10))
        .await
        .step("ack_and_read")?;
    ensure!(
        counts_of(&next) == [(m[2], 1), (m[3], 1)],
        "ack_and_read gave {:?}, expected the next two entries",
        counts_of(&next)
    );
    let rows: Vec<_> = pel(bus, &s, &g).await?.into_iter().map(|r| r.0).collect();
    ensure!(
        rows == m[2..],
        "pending after ack_and_read {rows:?}, expected {:?}",
        &m[2..]
    );
    let last = bus
        .ack_and_read(
            &s,
            &g,
            &c,
            &ids_of(&next),
            ReadOptions::count(10).block(Duration::from_millis(50)),
        )
        .await
        .step("ack_and_read at the end")?;
    ensure!(last.is_empty(), "nothing left to read, got {last:?}");
    let p = bus.pending(&s, &g).await.step("pending")?;
    ensure!(p.count == 0, "acks of an empty ack_and_read not applied: {p:?}");
    Ok(())
}

async fn primitives_not_found(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    let id = bus.publish(&s, &env(0)).await.step("publish")?;
    let c = consumer("c");
    let kind = |r: crate::Result<()>| r.err().map(|e| e.kind());
    let outcomes = [
        (
            "ack_and_read",
            kind(
                bus.ack_and_read(&s, &g, &c, &[id], ReadOptions::count(1))
                    .await
                    .map(drop),
            ),
        ),
        (
            "claim_ids",
            kind(bus.claim_ids(&s, &g, &c, Duration::ZERO, &[id]).await.map(drop)),
        ),
        (
            "pending_entries",
            kind(
                bus.pending_entries(&s, &g, None, MessageId::ZERO, 10)
                    .await
                    .map(drop),
            ),
        ),
        ("renew", kind(bus.renew(&s, &g, &c, &[id]).await.map(drop))),
        (
            "release",
            kind(bus.release(&s, &g, &c, &[id], Release::Unhandled).await.map(drop)),
        ),
        (
            "dead_letter",
            kind(bus.dead_letter(&s, &g, id, &s, b"x", 10).await.map(drop)),
        ),
        (
            "delete_consumer",
            kind(bus.delete_consumer(&s, &g, &c, true).await.map(drop)),
        ),
    ];
    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|(_, k)| *k != Some(ErrorKind::NotFound))
        .collect();
    ensure!(
        wrong.is_empty(),
        "on a missing group, expected NotFound from: {wrong:?}"
    );
    let len = bus.stream_info(&s).await.step("stream_info")?.length;
    ensure!(
        len == 1,
        "a refused dead_letter wrote to the stream: length {len}"
    );
    Ok(())
}

async fn trimming(bus: &dyn EventBus) -> CaseResult {
    let (s, _) = names();
    let cap = bus.max_len(&s);
    let slack = bus.capabilities().trim_slack;
    ensure!(
        cap <= 5_000,
        "this case wants a stream cap of at most 5000, the bus has {cap}"
    );
    let total = cap as usize * 3;
    let mut last = None;
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        for n in chunk.iter().step_by(50) {
            bus.publish(&s, &env(*n)).await.step("publish")?;
        }
        let rest: Vec<_> = chunk.iter().filter(|n| *n % 50 != 0).map(|n| env(*n)).collect();
        last = bus
            .publish_batch(&s, &rest)
            .await
            .step("publish_batch")?
            .last()
            .copied();
    }
    let info = bus.stream_info(&s).await.step("stream_info")?;
    ensure!(
        info.length >= cap && info.length <= cap + slack,
        "length {} not within [{cap}, {}]",
        info.length,
        cap + slack
    );
    ensure!(
        info.last_id == last,
        "newest entry {:?} is not the last published {last:?}",
        info.last_id
    );
    Ok(())
}

async fn backlog(bus: &dyn EventBus) -> CaseResult {
    let (s, g, _) = group_with(bus, 5).await?;
    let got = bus
        .read(&s, &g, &consumer("c"), ReadOptions::count(3))
        .await
        .step("read")?;
    bus.ack(&s, &g, &[got[0].id]).await.step("ack")?;
    let b = bus.backlog(&s, &g).await.step("backlog")?;
    ensure!(
        b.length == 5 && b.pending == 2,
        "backlog length/pending {}/{} != 5/2",
        b.length,
        b.pending
    );
    ensure!(b.lag.is_none_or(|l| l == 2), "lag {:?} != 2", b.lag);
    ensure!(
        b.max_len == bus.max_len(&s),
        "backlog cap {} != max_len {}",
        b.max_len,
        bus.max_len(&s)
    );
    Ok(())
}

async fn stream_info(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let ids = bus
        .publish_batch(&s, &(0..4).map(env).collect::<Vec<_>>())
        .await
        .step("publish")?;
    bus.read(&s, &g, &consumer("c1"), ReadOptions::count(1))
        .await
        .step("read")?;
    let info = bus.stream_info(&s).await.step("stream_info")?;
    ensure!(info.length == 4, "length {}", info.length);
    ensure!(
        info.first_id == Some(ids[0]) && info.last_id == Some(ids[3]),
        "first/last {:?}/{:?}",
        info.first_id,
        info.last_id
    );
    let gi = info
        .groups
        .iter()
        .find(|x| x.name == g.as_str())
        .ok_or("group missing from stream_info")?;
    ensure!(
        gi.pending == 1 && gi.consumers == 1 && gi.last_delivered == ids[0],
        "group figures {gi:?}"
    );
    ensure!(gi.lag.is_none_or(|l| l == 3), "group lag {:?} != 3", gi.lag);
    Ok(())
}

async fn not_found(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    let kind = |r: crate::Result<()>| r.err().map(|e| e.kind());
    let info = kind(bus.stream_info(&s).await.map(drop));
    ensure!(
        info == Some(ErrorKind::NotFound),
        "stream_info of a missing stream: {info:?}"
    );
    bus.publish(&s, &env(0)).await.step("publish")?;
    let read = kind(
        bus.read(&s, &g, &consumer("c"), ReadOptions::count(1))
            .await
            .map(drop),
    );
    ensure!(
        read == Some(ErrorKind::NotFound),
        "read of a missing group: {read:?}"
    );
    let pending = kind(bus.pending(&s, &g).await.map(drop));
    ensure!(
        pending == Some(ErrorKind::NotFound),
        "pending of a missing group: {pending:?}"
    );
    let claim = kind(
        bus.claim(&s, &g, &consumer("c"), Duration::ZERO, 1)
            .await
            .map(drop),
    );
    ensure!(
        claim == Some(ErrorKind::NotFound),
        "claim on a missing group: {claim:?}"
    );
    let backlog = kind(bus.backlog(&s, &g).await.map(drop));
    ensure!(
        backlog == Some(ErrorKind::NotFound),
        "backlog of a missing group: {backlog:?}"
    );
    let acked = bus
        .ack(&s, &g, &[MessageId { ms: 1, seq: 0 }])
        .await
        .step("ack on missing group")?;
    ensure!(acked == 0, "ack on a missing group acked {acked}");
    Ok(())
}

async fn blocking_wakes(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let c = consumer("c");
    let read = bus.read(&s, &g, &c, ReadOptions::count(10).block(Duration::from_secs(5)));
    let publish = async {
        crate::rt::sleep(Duration::from_millis(100)).await;
        bus.publish(&s, &env(1)).await
    };
    let start = Instant::now();
    let (got, sent) = futures_util::future::join(read, publish).await;
    let (got, sent) = (got.step("blocking read")?, sent.step("publish")?);
    ensure!(
        got.len() == 1 && got[0].id == sent,
        "blocking read returned {got:?}, expected {sent}"
    );
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "blocking read waited for its whole timeout despite a publish"
    );
    Ok(())
}

async fn blocking_times_out(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let start = Instant::now();
    let got = bus
        .read(
            &s,
            &g,
            &consumer("c"),
            ReadOptions::count(10).block(Duration::from_millis(200)),
        )
        .await
        .step("read")?;
    ensure!(
        got.is_empty(),
        "blocking read on an empty stream returned {got:?}"
    );
    ensure!(
        start.elapsed() >= Duration::from_millis(150),
        "blocking read returned after {:?}, before its block time",
        start.elapsed()
    );
    Ok(())
}

async fn oversized(bus: &dyn EventBus) -> CaseResult {
    let (s, _) = names();
    bus.publish(&s, &env(0)).await.step("publish")?;
    let big = Envelope::new("big").with_raw_payload(vec![0u8; DEFAULT_MAX_ENVELOPE_BYTES + 1]);
    let one = bus.publish(&s, &big).await;
    ensure!(
        matches!(&one, Err(e) if e.kind() == ErrorKind::InvalidInput),
        "oversized publish: {one:?}"
    );
    let batch = bus.publish_batch(&s, &[env(1), big, env(2)]).await;
    ensure!(
        matches!(&batch, Err(e) if e.kind() == ErrorKind::InvalidInput),
        "batch with an oversized envelope: {batch:?}"
    );
    let len = bus.stream_info(&s).await.step("stream_info")?.length;
    ensure!(len == 1, "rejected publishes stored entries: length {len}");
    Ok(())
}

async fn recv(sub: &mut crate::Subscription) -> Option<crate::TopicEvent> {
    crate::rt::timeout(Duration::from_secs(3), sub.next())
        .await
        .ok()
        .flatten()
}

async fn topic_wildcard(bus: &dyn EventBus) -> CaseResult {
    let root = unique("t");
    let t = |s: &str| Topic::new(format!("{root}.{s}")).expect("valid");
    let mut sub = bus
        .subscribe(&TopicPattern::new(format!("{root}.*.health")).expect("valid"))
        .await
        .step("subscribe")?;
    for (topic, n) in [
        ("a.b.health", 0),
        ("api.other", 1),
        ("health", 2),
        ("api.health", 3),
        ("db.health", 4),
    ] {
        bus.publish_topic(&t(topic), &env(n))
            .await
            .step("publish_topic")?;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let ev = recv(&mut sub).await.ok_or("no topic event within 3 s")?;
        got.push((ev.topic.to_string(), n_of(&ev.envelope)));
    }
    let want = vec![
        (t("api.health").to_string(), Some(3)),
        (t("db.health").to_string(), Some(4)),
    ];
    ensure!(got == want, "wildcard subscriber got {got:?}, expected {want:?}");
    Ok(())
}

async fn topic_fan_out(bus: &dyn EventBus) -> CaseResult {
    let topic = Topic::new(format!("{}.bus.health", unique("t"))).expect("valid");
    let mut a = bus
        .subscribe(&TopicPattern::from(topic.clone()))
        .await
        .step("subscribe a")?;
    let mut b = bus
        .subscribe(
            &TopicPattern::new(format!(
                "{}.*.*",
                topic.as_str().split('.').next().unwrap_or_default()
            ))
            .expect("valid"),
        )
        .await
        .step("subscribe b")?;
    bus.publish_topic(&topic, &env(7)).await.step("publish_topic")?;
    for (name, sub) in [("exact", &mut a), ("wildcard", &mut b)] {
        let ev = recv(sub)
            .await
            .ok_or_else(|| format!("{name} subscriber got nothing"))?;
        ensure!(
            ev.topic == topic && n_of(&ev.envelope) == Some(7),
            "{name} subscriber got {ev:?}"
        );
    }
    Ok(())
}

async fn noop(bus: &dyn EventBus) -> CaseResult {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    bus.publish(&s, &env(0)).await.step("publish")?;
    ensure!(
        bus.publish_batch(&s, &[env(1), env(2)])
            .await
            .step("batch")?
            .len()
            == 2,
        "batch ids not one per envelope"
    );
    ensure!(
        bus.read(&s, &g, &consumer("c"), ReadOptions::count(10))
            .await
            .step("read")?
            .is_empty(),
        "noop read returned data"
    );
    ensure!(
        bus.pending(&s, &g).await.step("pending")?.count == 0,
        "noop pending not zero"
    );
    ensure!(
        bus.stream_info(&s).await.step("info")?.length == 0,
        "noop length not zero"
    );
    let (c, id) = (consumer("c"), MessageId { ms: 1, seq: 0 });
    let read = bus
        .ack_and_read(&s, &g, &c, &[id], ReadOptions::count(10))
        .await
        .step("ack_and_read")?;
    ensure!(read.is_empty(), "noop ack_and_read returned data");
    let claimed = bus
        .claim_ids(&s, &g, &c, Duration::ZERO, &[id])
        .await
        .step("claim_ids")?;
    ensure!(
        claimed == Default::default(),
        "noop claim_ids returned {claimed:?}"
    );
    ensure!(
        bus.pending_entries(&s, &g, None, MessageId::ZERO, 10)
            .await
            .step("pending_entries")?
            .is_empty(),
        "noop pending_entries returned rows"
    );
    ensure!(
        bus.renew(&s, &g, &c, &[id]).await.step("renew")?.is_empty(),
        "noop renew claims to hold entries"
    );
    ensure!(
        bus.release(&s, &g, &c, &[id], Release::Unhandled)
            .await
            .step("release")?
            == 0,
        "noop release claims to hold entries"
    );
    ensure!(
        bus.dead_letter(&s, &g, id, &s, b"x", 10)
            .await
            .step("dead_letter")?
            .is_none(),
        "noop dead_letter claims the entry was pending"
    );
    ensure!(
        bus.range(&s, MessageId::ZERO, 10).await.step("range")?.is_empty(),
        "noop range returned data"
    );
    ensure!(
        bus.delete_entries(&s, &[id]).await.step("delete_entries")? == 0,
        "noop delete_entries deleted something"
    );
    ensure!(
        !bus.delete_group(&s, &g).await.step("delete_group")?,
        "noop delete_group deleted something"
    );
    ensure!(
        bus.delete_consumer(&s, &g, &c, false)
            .await
            .step("delete_consumer")?
            == 0,
        "noop delete_consumer reports held entries"
    );
    let topic = Topic::new("noop.x").expect("valid");
    let mut sub = bus
        .subscribe(&TopicPattern::from(topic.clone()))
        .await
        .step("subscribe")?;
    bus.publish_topic(&topic, &env(0)).await.step("publish_topic")?;
    let got = crate::rt::timeout(Duration::from_millis(50), sub.next()).await;
    ensure!(got.is_err(), "noop subscription yielded {got:?}");
    Ok(())
}
