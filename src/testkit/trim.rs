//! Conformance of stream trim policies ([`TrimPolicy`]): no policy drops an
//! entry silently, and each does what it says at the cap.
//!
//! `make` builds a bus whose every stream is capped at [`CAP`] with the given
//! policy (lower the backend's cap floor to allow it).

use super::{ensure, unique, CaseResult, Report, Step};
use crate::{
    ConsumerName, Envelope, ErrorKind, EventBus, GroupName, MessageId, Overflow, ReadOptions, StartFrom,
    StreamName, TrimPolicy,
};
use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

/// The cap the suite expects `make` to set.
pub const CAP: u64 = 200;

/// Builds a bus capped at [`CAP`] with a policy.
pub type MakeBus<'a> = &'a (dyn Fn(TrimPolicy) -> Arc<dyn EventBus> + Send + Sync);

fn names() -> (StreamName, GroupName) {
    (
        StreamName::new(format!("tk:{}", unique("trim"))).expect("valid"),
        GroupName::new("tk:slow").expect("valid"),
    )
}

fn env(n: u64) -> Envelope {
    Envelope::new("test.trim").with_header("n", n.to_string())
}

/// Publish `n` entries in batches of 50; the ids accepted.
async fn publish(bus: &dyn EventBus, s: &StreamName, from: u64, n: u64) -> Result<Vec<MessageId>, String> {
    let mut ids = Vec::new();
    let mut next = from;
    while next < from + n {
        let batch: Vec<Envelope> = (next..(from + n).min(next + 50)).map(env).collect();
        next += batch.len() as u64;
        ids.extend(bus.publish_batch(s, &batch).await.step("publish")?);
    }
    Ok(ids)
}

/// Read (and ack, when `ack`) everything the group can get now.
async fn drain(
    bus: &dyn EventBus,
    s: &StreamName,
    g: &GroupName,
    ack: bool,
) -> Result<Vec<MessageId>, String> {
    let me = ConsumerName::new("reader").expect("valid");
    let mut got = Vec::new();
    loop {
        let batch = bus.read(s, g, &me, ReadOptions::count(100)).await.step("read")?;
        if batch.is_empty() {
            return Ok(got);
        }
        let ids: Vec<MessageId> = batch.iter().map(|d| d.id).collect();
        if ack {
            bus.ack(s, g, &ids).await.step("ack")?;
        }
        got.extend(ids);
    }
}

/// Run every trim-policy case.
pub async fn run(make: MakeBus<'_>) -> Report {
    let mut r = Report::default();
    if !make(TrimPolicy::DropOldest).capabilities().stores_data {
        return r;
    }
    r.case(
        "drop_oldest_counts_undelivered_entries_exactly",
        drop_oldest_counts(make),
    )
    .await;
    r.case(
        "keep_unacknowledged_loses_nothing_across_five_caps",
        keep_loses_nothing(make),
    )
    .await;
    r.case(
        "keep_unacknowledged_trims_what_every_group_acked",
        keep_trims_acked(make),
    )
    .await;
    r.case(
        "reject_at_hard_cap_loses_nothing_accepted",
        reject_at_hard_cap(make),
    )
    .await;
    r.case(
        "wait_at_hard_cap_publishes_once_there_is_room",
        wait_for_room(make),
    )
    .await;
    r.case("overflow_drop_oldest_is_counted", overflow_drop(make))
        .await;
    r.case(
        "two_groups_at_different_speeds_are_both_respected",
        two_speeds(make),
    )
    .await;
    r.case("late_group_from_the_beginning_is_respected", late_group(make))
        .await;
    r.case("deleting_the_slow_group_frees_the_stream", deleted_group(make))
        .await;
    r
}

async fn drop_oldest_counts(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::DropOldest);
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    publish(bus.as_ref(), &s, 0, CAP * 5).await?;
    let b = bus.backlog(&s, &g).await.step("backlog")?;
    let dropped = b
        .trimmed_undelivered
        .ok_or("store cannot tell trimmed_undelivered")?;
    ensure!(
        dropped == CAP * 5 - b.length,
        "trimmed_undelivered {dropped} != published {} - length {}",
        CAP * 5,
        b.length
    );
    ensure!(
        b.lag == Some(CAP * 5),
        "lag {:?}: every published entry is undelivered, trimmed or not",
        b.lag
    );
    let got = drain(bus.as_ref(), &s, &g, true).await?;
    ensure!(
        got.len() as u64 == b.length,
        "read {} of {} left",
        got.len(),
        b.length
    );
    Ok(())
}

async fn keep_loses_nothing(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged().with_hard_cap(CAP * 10));
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let ids = publish(bus.as_ref(), &s, 0, CAP * 5).await?;
    let got = drain(bus.as_ref(), &s, &g, true).await?;
    ensure!(
        got == ids,
        "slow group read {} of {} published, or out of order",
        got.len(),
        ids.len()
    );
    let b = bus.backlog(&s, &g).await.step("backlog")?;
    ensure!(
        b.trimmed_undelivered == Some(0) || b.trimmed_undelivered.is_none(),
        "{b:?}"
    );
    Ok(())
}

async fn keep_trims_acked(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged());
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    for round in 0..5 {
        publish(bus.as_ref(), &s, round * CAP, CAP).await?;
        drain(bus.as_ref(), &s, &g, true).await?;
    }
    publish(bus.as_ref(), &s, 5 * CAP, 10).await?;
    let len = bus.stream_info(&s).await.step("stream_info")?.length;
    let slack = bus.capabilities().trim_slack;
    ensure!(
        len <= CAP + slack,
        "a consumer that keeps up still left {len} entries (cap {CAP})"
    );
    Ok(())
}

async fn reject_at_hard_cap(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged().with_overflow(Overflow::Reject));
    let hard_cap = TrimPolicy::keep_unacknowledged().hard_cap(CAP);
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for n in 0..hard_cap + 50 {
        match bus.publish(&s, &env(n)).await {
            Ok(id) => accepted.push(id),
            Err(e) if e.kind() == ErrorKind::Backpressure => {
                ensure!(e.is_temporary(), "backpressure is not temporary: {e}");
                ensure!(
                    e.to_string().contains(s.as_str()),
                    "error does not name the stream: {e}"
                );
                rejected += 1;
            }
            Err(e) => return Err(format!("publish {n}: unexpected error {e}")),
        }
    }
    ensure!(
        accepted.len() as u64 == hard_cap && rejected == 50,
        "accepted {} rejected {rejected}; hard cap {hard_cap}",
        accepted.len()
    );
    let got = drain(bus.as_ref(), &s, &g, true).await?;
    ensure!(
        got == accepted,
        "read {} of {} accepted",
        got.len(),
        accepted.len()
    );
    bus.publish(&s, &env(0))
        .await
        .step("publish once there is room")?;
    Ok(())
}

async fn wait_for_room(make: MakeBus<'_>) -> CaseResult {
    let wait = Duration::from_secs(3);
    let bus = make(TrimPolicy::keep_unacknowledged().with_overflow(Overflow::Wait(wait)));
    let hard_cap = TrimPolicy::keep_unacknowledged().hard_cap(CAP);
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    publish(bus.as_ref(), &s, 0, hard_cap).await?;
    let consumer = {
        let (bus, s, g) = (bus.clone(), s.clone(), g.clone());
        crate::rt::spawn(async move {
            crate::rt::sleep(Duration::from_millis(300)).await;
            drain(bus.as_ref(), &s, &g, true).await
        })
    };
    let start = Instant::now();
    let published = bus.publish(&s, &env(hard_cap)).await;
    let took = start.elapsed();
    consumer.join().await?;
    published.step("publish that had to wait")?;
    ensure!(
        took >= Duration::from_millis(250) && took < wait,
        "publish returned after {took:?}: it should wait for the consumer (~300 ms)"
    );
    Ok(())
}

async fn overflow_drop(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged().with_overflow(Overflow::DropOldest));
    let hard_cap = TrimPolicy::keep_unacknowledged().hard_cap(CAP);
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    publish(bus.as_ref(), &s, 0, hard_cap + CAP).await?;
    let b = bus.backlog(&s, &g).await.step("backlog")?;
    ensure!(
        b.length <= hard_cap,
        "length {} past the hard cap {hard_cap}",
        b.length
    );
    ensure!(
        b.trimmed_undelivered == Some(hard_cap + CAP - b.length),
        "dropped {:?}, expected {}",
        b.trimmed_undelivered,
        hard_cap + CAP - b.length
    );
    Ok(())
}

async fn two_speeds(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged().with_hard_cap(CAP * 10));
    let (s, slow) = names();
    let fast = GroupName::new("tk:fast").expect("valid");
    bus.ensure_group(&s, &slow, StartFrom::Latest)
        .await
        .step("ensure slow")?;
    bus.ensure_group(&s, &fast, StartFrom::Latest)
        .await
        .step("ensure fast")?;
    let mut all = Vec::new();
    let mut fast_got = Vec::new();
    let mut slow_got = Vec::new();
    for round in 0..6 {
        all.extend(publish(bus.as_ref(), &s, round * CAP, CAP).await?);
        fast_got.extend(drain(bus.as_ref(), &s, &fast, true).await?);
        if round % 3 == 2 {
            slow_got.extend(drain(bus.as_ref(), &s, &slow, true).await?);
        }
    }
    slow_got.extend(drain(bus.as_ref(), &s, &slow, true).await?);
    ensure!(
        fast_got == all,
        "fast group read {} of {}",
        fast_got.len(),
        all.len()
    );
    ensure!(
        slow_got == all,
        "slow group read {} of {}",
        slow_got.len(),
        all.len()
    );
    Ok(())
}

async fn late_group(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged().with_hard_cap(CAP * 10));
    let (s, g) = names();
    // No group yet: the stream trims by length only.
    publish(bus.as_ref(), &s, 0, CAP * 2).await?;
    let info = bus.stream_info(&s).await.step("stream_info")?;
    let slack = bus.capabilities().trim_slack;
    ensure!(
        info.length <= CAP + slack,
        "a stream without groups kept {} entries",
        info.length
    );
    bus.ensure_group(&s, &g, StartFrom::Beginning)
        .await
        .step("late group")?;
    let present: BTreeSet<MessageId> = bus
        .range(&s, MessageId::ZERO, usize::MAX)
        .await
        .step("range")?
        .into_iter()
        .map(|d| d.id)
        .collect();
    let later = publish(bus.as_ref(), &s, CAP * 2, CAP * 3).await?;
    let got: BTreeSet<MessageId> = drain(bus.as_ref(), &s, &g, true).await?.into_iter().collect();
    let expected: BTreeSet<MessageId> = present.into_iter().chain(later).collect();
    ensure!(
        got == expected,
        "late group read {} of the {} entries present at its creation or published after",
        got.len(),
        expected.len()
    );
    Ok(())
}

async fn deleted_group(make: MakeBus<'_>) -> CaseResult {
    let bus = make(TrimPolicy::keep_unacknowledged().with_hard_cap(CAP * 10));
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    publish(bus.as_ref(), &s, 0, CAP * 3).await?;
    let before = bus.stream_info(&s).await.step("stream_info")?.length;
    ensure!(
        before >= CAP * 3,
        "unacknowledged entries were trimmed: {before} left"
    );
    bus.delete_group(&s, &g).await.step("delete_group")?;
    publish(bus.as_ref(), &s, CAP * 3, 10).await?;
    let after = bus.stream_info(&s).await.step("stream_info")?.length;
    let slack = bus.capabilities().trim_slack;
    ensure!(
        after <= CAP + slack,
        "after its only group went, the stream kept {after} entries"
    );
    Ok(())
}
