//! Conformance of [`EventBus`] backends.
//!
//! The bus under test should cap streams at a few hundred entries (e.g. 200)
//! so the trimming cases stay quick, and use the default envelope size limit.

use super::{ensure, unique, CaseResult, Report, Step, TimeControl};
use crate::{
    ConsumerName, Envelope, ErrorKind, EventBus, GroupName, MessageId, ReadOptions, StartFrom, StreamName,
    Topic, TopicPattern, DEFAULT_MAX_ENVELOPE_BYTES,
};
use futures_util::StreamExt;
use std::{
    collections::BTreeSet,
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
