//! Conformance of the consumer [`Runner`] on an [`EventBus`] backend: the
//! at-least-once promises, case by case, in real time (short leases).
//!
//! The bus under test must read time from the system clock (the runner's
//! leases and backoffs are real time).

use super::{ensure, unique, CaseResult, Report, Step};
use crate::{
    consumer::{Backoff, DeadLetters, HandlerError, HandlerResult, Runner, RunnerBuilder, RunnerCounts},
    rt,
    service::Shutdown,
    ConsumerName, Delivery, Envelope, EventBus, GroupName, MessageId, ReadOptions, StartFrom, StreamName,
};
use parking_lot::Mutex;
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// The lease the cases run with.
pub const LEASE: Duration = Duration::from_millis(500);

fn names() -> (StreamName, GroupName) {
    (
        StreamName::new(format!("tk:{}", unique("consumer"))).expect("valid"),
        GroupName::new("tk:workers").expect("valid"),
    )
}

fn env(n: usize) -> Envelope {
    Envelope::new("test.job").with_header("n", n.to_string())
}

fn n_of(d: &Delivery) -> usize {
    d.envelope()
        .ok()
        .and_then(|e| e.header("n").and_then(|n| n.parse().ok()))
        .unwrap_or(usize::MAX)
}

/// A runner with the suite's quick timings; `tweak` adjusts it.
fn runner(
    bus: &Arc<dyn EventBus>,
    stream: &StreamName,
    group: &GroupName,
    consumer: &str,
    tweak: impl FnOnce(RunnerBuilder) -> RunnerBuilder,
) -> Result<Runner, String> {
    let builder = Runner::builder(
        bus.clone(),
        stream.clone(),
        group.clone(),
        ConsumerName::new(consumer).expect("valid"),
    )
    .lease(LEASE)
    .reaper(Duration::from_millis(50), 100)
    .backoff(Backoff::constant(Duration::from_millis(20)))
    .drain_timeout(Duration::from_secs(2))
    .block(Duration::from_millis(200))
    .store_retry(Duration::from_millis(20), Duration::from_millis(200));
    tweak(builder).build().step("build runner")
}

/// A running runner: stop it to drain and get its counters.
struct Running {
    stop: Shutdown,
    task: rt::TaskHandle<crate::Result<RunnerCounts>>,
}

impl Running {
    fn start(r: &Runner) -> Self {
        let stop = Shutdown::default();
        let (runner, s) = (r.clone(), stop.clone());
        let task = rt::spawn(async move { runner.run(s.wait()).await });
        Self { stop, task }
    }

    async fn stop(self) -> Result<RunnerCounts, String> {
        self.stop.trigger();
        match rt::timeout(Duration::from_secs(10), self.task.join()).await {
            Ok(out) => out.step("runner ended with an error"),
            Err(_) => Err("runner did not stop within 10 s of its stop signal".into()),
        }
    }
}

/// What handlers saw: per entry number, the delivery counts they were called with.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<BTreeMap<usize, Vec<u64>>>>);

impl Seen {
    fn record(&self, d: &Delivery) {
        self.0.lock().entry(n_of(d)).or_default().push(d.delivery_count);
    }
    fn get(&self) -> BTreeMap<usize, Vec<u64>> {
        self.0.lock().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
    /// A handler that records each delivery and acks it.
    fn acking(&self) -> impl crate::consumer::Handler {
        let seen = self.clone();
        move |d: Delivery| {
            seen.record(&d);
            async { HandlerResult::Ok(()) }
        }
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        rt::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn settled(bus: &dyn EventBus, s: &StreamName, g: &GroupName) -> Result<u64, String> {
    Ok(bus.pending(s, g).await.step("pending")?.count)
}

async fn setup(bus: &dyn EventBus, n: usize) -> Result<(StreamName, GroupName), String> {
    let (s, g) = names();
    bus.ensure_group(&s, &g, StartFrom::Latest)
        .await
        .step("ensure_group")?;
    if n > 0 {
        bus.publish_batch(&s, &(0..n).map(env).collect::<Vec<_>>())
            .await
            .step("publish")?;
    }
    Ok((s, g))
}

/// Run every consumer case against `bus`.
pub async fn run(bus: Arc<dyn EventBus>) -> Report {
    let mut r = Report::default();
    if !bus.capabilities().stores_data {
        return r;
    }
    let b = &bus;
    r.case("failure_is_retried_with_backoff_then_acked", retried(b))
        .await;
    r.case(
        "poison_is_dead_lettered_with_reason_and_redrive_brings_it_back",
        poison(b),
    )
    .await;
    r.case("retry_delay_longer_than_the_lease_is_honoured", long_retry(b))
        .await;
    r.case("due_retry_goes_ahead_of_the_backlog", retry_ahead_of_backlog(b))
        .await;
    r.case("crashed_consumer_work_is_taken_over_after_the_lease", crashed(b))
        .await;
    r.case("dropped_runner_loses_nothing", dropped_runner(b)).await;
    r.case("slow_handler_is_not_stolen", slow_not_stolen(b)).await;
    r.case("drain_releases_unfinished_entries_uncounted", drain(b))
        .await;
    r.case("restart_handles_own_pending_entries_first", restart_recovery(b))
        .await;
    r.case(
        "handler_timeout_and_panic_count_as_failed_attempts",
        timeout_and_panic(b),
    )
    .await;
    r.case(
        "undecodable_typed_payload_is_dead_lettered_at_once",
        typed_poison(b),
    )
    .await;
    r.case("concurrency_one_keeps_stream_order", ordered(b)).await;
    r.case("twenty_runners_handle_each_entry_once", many_runners(b))
        .await;
    r
}

async fn retried(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 1).await?;
    let seen = Seen::default();
    let times = Arc::new(Mutex::new(Vec::new()));
    let (h, t) = (seen.clone(), times.clone());
    let backoff = Duration::from_millis(150);
    let runner = runner(bus, &s, &g, "w1", |b| {
        b.backoff(Backoff::constant(backoff)).handler(move |d: Delivery| {
            let (h, t) = (h.clone(), t.clone());
            async move {
                h.record(&d);
                t.lock().push(Instant::now());
                if d.delivery_count < 3 {
                    return Err(HandlerError::retry("not yet"));
                }
                HandlerResult::Ok(())
            }
        })
    })?;
    let running = Running::start(&runner);
    let done = wait_until(Duration::from_secs(5), || {
        seen.get().get(&0).is_some_and(|v| v.len() >= 3)
    })
    .await;
    ensure!(done, "expected 3 attempts, saw {:?}", seen.get());
    ensure!(
        wait_until(Duration::from_secs(3), || runner.stats().snapshot().acked == 1).await,
        "the third attempt was never acked: {:?}",
        runner.stats().snapshot()
    );
    let counts = running.stop().await?;
    ensure!(
        seen.get()[&0] == vec![1, 2, 3],
        "attempts saw delivery counts {:?}",
        seen.get()
    );
    let t = times.lock().clone();
    for pair in t.windows(2) {
        ensure!(
            pair[1] - pair[0] >= backoff,
            "retried after {:?}, before the backoff of {backoff:?}",
            pair[1] - pair[0]
        );
    }
    ensure!(counts.retried == 2 && counts.acked == 1, "counters {counts:?}");
    ensure!(settled(bus.as_ref(), &s, &g).await? == 0, "entry still pending");
    Ok(())
}

async fn poison(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 1).await?;
    let dead_hook = Arc::new(Mutex::new(Vec::new()));
    let hook = dead_hook.clone();
    let runner_a = runner(bus, &s, &g, "w1", |b| {
        b.max_deliveries(3)
            .handler(|_d: Delivery| async move { Err(HandlerError::retry("boom: cannot parse")) })
            .on_dead(move |letter| hook.lock().push(letter.reason.clone()))
    })?;
    let running = Running::start(&runner_a);
    let dlq = DeadLetters::new(bus.clone(), runner_a.dead_letter_stream().clone());
    let mut listed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed.is_empty() && Instant::now() < deadline {
        listed = dlq.list(MessageId::ZERO, 10).await.step("list dead letters")?;
        rt::sleep(Duration::from_millis(20)).await;
    }
    let counts = running.stop().await?;
    ensure!(listed.len() == 1, "expected 1 dead letter, got {}", listed.len());
    let letter = listed[0].letter.clone().ok_or("dead letter did not decode")?;
    ensure!(
        letter.attempts == 3,
        "dead letter after {} attempts, not 3",
        letter.attempts
    );
    ensure!(
        letter.reason.contains("boom: cannot parse"),
        "reason {:?}",
        letter.reason
    );
    ensure!(
        letter.stream == s.as_str() && letter.group == g.as_str(),
        "origin {letter:?}"
    );
    ensure!(counts.dead_lettered == 1, "counters {counts:?}");
    ensure!(
        dead_hook.lock().len() == 1,
        "on_dead called {} times",
        dead_hook.lock().len()
    );
    ensure!(
        settled(bus.as_ref(), &s, &g).await? == 0,
        "dead entry still pending"
    );
    let back = dlq.redrive_all().await.step("redrive")?;
    ensure!(back.moved == 1 && back.failed.is_empty(), "redrive {back:?}");
    ensure!(
        dlq.len().await.step("dlq len")? == 0,
        "dead letter not removed after redrive"
    );
    let seen = Seen::default();
    let runner_b = runner(bus, &s, &g, "w2", |b| b.handler(seen.acking()))?;
    let running = Running::start(&runner_b);
    let ok = wait_until(Duration::from_secs(5), || seen.len() == 1).await;
    running.stop().await?;
    ensure!(
        ok && seen.get().contains_key(&0),
        "redriven entry never handled: {:?}",
        seen.get()
    );
    Ok(())
}

async fn long_retry(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 1).await?;
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let delay = LEASE * 3;
    let runner = runner(bus, &s, &g, "w1", |b| {
        b.handler(move |d: Delivery| {
            let t = t.clone();
            async move {
                t.lock().push((Instant::now(), d.delivery_count));
                if d.delivery_count == 1 {
                    return Err(HandlerError::retry_after(delay, "later"));
                }
                HandlerResult::Ok(())
            }
        })
    })?;
    let running = Running::start(&runner);
    let ok = wait_until(Duration::from_secs(5), || times.lock().len() >= 2).await;
    running.stop().await?;
    let t = times.lock().clone();
    ensure!(ok, "never retried: {t:?}");
    ensure!(
        t[1].0 - t[0].0 >= delay,
        "retried after {:?}, before the asked {delay:?}",
        t[1].0 - t[0].0
    );
    ensure!(
        t[1].1 == 2 && t.len() == 2,
        "attempts {:?}",
        t.iter().map(|x| x.1).collect::<Vec<_>>()
    );
    Ok(())
}

/// A retry that falls due while new entries keep every slot busy is handled
/// at the next free slot, not after the whole backlog.
async fn retry_ahead_of_backlog(bus: &Arc<dyn EventBus>) -> CaseResult {
    const BACKLOG: usize = 300;
    let (s, g) = setup(bus.as_ref(), BACKLOG + 1).await?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let runner = runner(bus, &s, &g, "w1", |b| {
        b.concurrency(2).handler(move |d: Delivery| {
            let o = o.clone();
            async move {
                if n_of(&d) == 0 && d.delivery_count == 1 {
                    return Err(HandlerError::retry_after(Duration::from_millis(20), "later"));
                }
                rt::sleep(Duration::from_millis(5)).await;
                o.lock().push(n_of(&d));
                HandlerResult::Ok(())
            }
        })
    })?;
    let running = Running::start(&runner);
    let ok = wait_until(Duration::from_secs(20), || order.lock().len() > BACKLOG).await;
    running.stop().await?;
    let order = order.lock().clone();
    ensure!(ok, "handled {} of {}", order.len(), BACKLOG + 1);
    let at = order.iter().position(|n| *n == 0);
    // Two slots of 5 ms handlers: the 20 ms delay and a 50 ms reaper tick
    // are worth about 30 entries; a retry that waits for the backlog to
    // clear comes last.
    ensure!(
        at.is_some_and(|i| i < BACKLOG / 2),
        "the retry was handled at position {at:?} of {}",
        order.len()
    );
    Ok(())
}

async fn crashed(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 3).await?;
    // A consumer that read and died without a word.
    let dead = ConsumerName::new("dead-1").expect("valid");
    let got = bus
        .read(&s, &g, &dead, ReadOptions::count(3))
        .await
        .step("read as the doomed consumer")?;
    ensure!(got.len() == 3, "doomed consumer read {}", got.len());
    let start = Instant::now();
    let seen = Seen::default();
    let runner = runner(bus, &s, &g, "w1", |b| b.handler(seen.acking()))?;
    let running = Running::start(&runner);
    let ok = wait_until(Duration::from_secs(5), || seen.len() == 3).await;
    let took = start.elapsed();
    let counts = running.stop().await?;
    ensure!(ok, "taken over only {:?}", seen.get());
    ensure!(
        // Idle times are whole milliseconds on every backend.
        took + Duration::from_millis(2) >= LEASE,
        "taken over after {took:?}, before the lease of {LEASE:?}"
    );
    ensure!(
        seen.get().values().all(|v| v == &vec![2]),
        "takeover delivery counts {:?}, expected 2 each",
        seen.get()
    );
    ensure!(counts.reclaimed == 3, "counters {counts:?}");
    ensure!(settled(bus.as_ref(), &s, &g).await? == 0, "entries still pending");
    Ok(())
}

async fn dropped_runner(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 0).await?;
    let seen_a = Seen::default();
    let h = seen_a.clone();
    let a = runner(bus, &s, &g, "a", |b| {
        b.handler(move |d: Delivery| {
            let h = h.clone();
            async move {
                h.record(&d);
                std::future::pending::<()>().await;
                HandlerResult::Ok(())
            }
        })
    })?;
    // Dropped while blocked in a read, then with a handler in flight.
    let _ = rt::timeout(Duration::from_millis(150), a.run(std::future::pending())).await;
    bus.publish(&s, &env(1)).await.step("publish")?;
    let run_a = a.run(std::future::pending());
    let _ = rt::timeout(Duration::from_millis(300), run_a).await;
    ensure!(seen_a.len() <= 1, "a handled {:?}", seen_a.get());
    let seen = Seen::default();
    let b = runner(bus, &s, &g, "b", |b| b.handler(seen.acking()))?;
    let running = Running::start(&b);
    let ok = wait_until(Duration::from_secs(5), || seen.len() == 1).await;
    running.stop().await?;
    ensure!(ok, "the entry a dropped never reached b");
    ensure!(
        seen.get()[&1] == vec![1],
        "b saw delivery counts {:?}; a dropped handler must not count",
        seen.get()
    );
    ensure!(settled(bus.as_ref(), &s, &g).await? == 0, "entry still pending");
    Ok(())
}

async fn slow_not_stolen(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 1).await?;
    let seen = Seen::default();
    let h = seen.clone();
    let slow = runner(bus, &s, &g, "slow", |b| {
        b.concurrency(1).handler(move |d: Delivery| {
            let h = h.clone();
            async move {
                h.record(&d);
                rt::sleep(LEASE * 4).await;
                HandlerResult::Ok(())
            }
        })
    })?;
    let running_slow = Running::start(&slow);
    ensure!(
        wait_until(Duration::from_secs(3), || seen.len() == 1).await,
        "slow runner never started"
    );
    let thief_seen = Seen::default();
    let thief = runner(bus, &s, &g, "thief", |b| b.handler(thief_seen.acking()))?;
    let running_thief = Running::start(&thief);
    let acked = wait_until(Duration::from_secs(5), || slow.stats().snapshot().acked == 1).await;
    let counts = running_slow.stop().await?;
    running_thief.stop().await?;
    ensure!(
        thief_seen.len() == 0,
        "a live handler's entry was stolen: {:?}",
        thief_seen.get()
    );
    ensure!(acked, "slow handler's ack never landed: {counts:?}");
    ensure!(seen.get()[&0] == vec![1], "handled {:?}", seen.get());
    Ok(())
}

async fn drain(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 2).await?;
    let seen = Seen::default();
    let h = seen.clone();
    let r = runner(bus, &s, &g, "w1", |b| {
        b.drain_timeout(Duration::from_millis(200))
            .handler(move |d: Delivery| {
                let h = h.clone();
                async move {
                    h.record(&d);
                    if n_of(&d) == 1 {
                        rt::sleep(Duration::from_secs(30)).await;
                    }
                    HandlerResult::Ok(())
                }
            })
    })?;
    let running = Running::start(&r);
    ensure!(
        wait_until(Duration::from_secs(3), || seen.len() == 2).await,
        "both entries never started"
    );
    let start = Instant::now();
    let counts = running.stop().await?;
    ensure!(
        start.elapsed() < Duration::from_secs(2),
        "drain took {:?} with a 200 ms drain timeout",
        start.elapsed()
    );
    ensure!(counts.acked == 1 && counts.released == 1, "counters {counts:?}");
    let rows = bus
        .pending_entries(&s, &g, None, MessageId::ZERO, 10)
        .await
        .step("pending_entries")?;
    ensure!(
        rows.len() == 1 && rows[0].deliveries == 0,
        "released entry should stay pending with its delivery uncounted: {rows:?}"
    );
    let taken = bus
        .claim(&s, &g, &ConsumerName::new("next").expect("valid"), LEASE, 10)
        .await
        .step("claim")?;
    ensure!(
        taken.deliveries.len() == 1 && taken.deliveries[0].delivery_count == 1,
        "released entry not claimable at once as a first delivery: {taken:?}"
    );
    Ok(())
}

async fn restart_recovery(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 3).await?;
    let me = ConsumerName::new("w-restart").expect("valid");
    let got = bus
        .read(&s, &g, &me, ReadOptions::count(3))
        .await
        .step("read as the earlier incarnation")?;
    ensure!(got.len() == 3, "earlier incarnation read {}", got.len());
    bus.publish_batch(&s, &[env(3), env(4)])
        .await
        .step("publish more")?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let r = runner(bus, &s, &g, "w-restart", |b| {
        b.concurrency(1).handler(move |d: Delivery| {
            let o = o.clone();
            async move {
                o.lock().push(n_of(&d));
                HandlerResult::Ok(())
            }
        })
    })?;
    let running = Running::start(&r);
    let ok = wait_until(Duration::from_secs(5), || order.lock().len() == 5).await;
    running.stop().await?;
    let order = order.lock().clone();
    ensure!(ok && order == vec![0, 1, 2, 3, 4], "handled in order {order:?}");
    Ok(())
}

async fn timeout_and_panic(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 2).await?;
    let r = runner(bus, &s, &g, "w1", |b| {
        b.max_deliveries(2)
            .handler_timeout(Duration::from_millis(100))
            .handler(|d: Delivery| async move {
                if n_of(&d) == 0 {
                    rt::sleep(Duration::from_secs(10)).await;
                } else {
                    panic!("handler bug");
                }
                HandlerResult::Ok(())
            })
    })?;
    let running = Running::start(&r);
    let dlq = DeadLetters::new(bus.clone(), r.dead_letter_stream().clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while dlq.len().await.step("dlq len")? < 2 && Instant::now() < deadline {
        rt::sleep(Duration::from_millis(20)).await;
    }
    let counts = running.stop().await?;
    let letters = dlq.list(MessageId::ZERO, 10).await.step("list")?;
    let reasons: Vec<String> = letters
        .iter()
        .filter_map(|e| e.letter.as_ref().map(|l| format!("{}:{}", l.attempts, l.reason)))
        .collect();
    ensure!(
        letters.len() == 2,
        "dead letters {reasons:?}, counters {counts:?}"
    );
    ensure!(
        reasons
            .iter()
            .any(|r| r.starts_with("2:") && r.contains("timed out"))
            && reasons
                .iter()
                .any(|r| r.starts_with("2:") && r.contains("panicked")),
        "reasons {reasons:?}"
    );
    Ok(())
}

async fn typed_poison(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 1).await?;
    #[derive(serde::Deserialize)]
    struct Order {
        _id: u64,
    }
    let r = runner(bus, &s, &g, "w1", |b| {
        b.handler(crate::consumer::typed(|_o: Order, _d| async {
            HandlerResult::Ok(())
        }))
    })?;
    let running = Running::start(&r);
    let ok = wait_until(Duration::from_secs(5), || r.stats().snapshot().dead_lettered == 1).await;
    let counts = running.stop().await?;
    ensure!(ok && counts.retried == 0, "counters {counts:?}");
    Ok(())
}

async fn ordered(bus: &Arc<dyn EventBus>) -> CaseResult {
    let (s, g) = setup(bus.as_ref(), 50).await?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let r = runner(bus, &s, &g, "w1", |b| {
        b.concurrency(1).handler(move |d: Delivery| {
            let o = o.clone();
            async move {
                o.lock().push(n_of(&d));
                HandlerResult::Ok(())
            }
        })
    })?;
    let running = Running::start(&r);
    let ok = wait_until(Duration::from_secs(5), || order.lock().len() == 50).await;
    running.stop().await?;
    let order = order.lock().clone();
    ensure!(ok && order == (0..50).collect::<Vec<_>>(), "order {order:?}");
    Ok(())
}

async fn many_runners(bus: &Arc<dyn EventBus>) -> CaseResult {
    const N: usize = 1000;
    let (s, g) = setup(bus.as_ref(), 0).await?;
    let seen = Seen::default();
    let mut running = Vec::new();
    let mut runners = Vec::new();
    for i in 0..20 {
        let r = runner(bus, &s, &g, &format!("w{i}"), |b| b.handler(seen.acking()))?;
        running.push(Running::start(&r));
        runners.push(r);
    }
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        bus.publish_batch(&s, &chunk.iter().map(|n| env(*n)).collect::<Vec<_>>())
            .await
            .step("publish")?;
    }
    let ok = wait_until(Duration::from_secs(20), || seen.len() == N).await;
    let mut acked = 0;
    for r in running {
        acked += r.stop().await?.acked;
    }
    let seen = seen.get();
    let twice: Vec<_> = seen
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(n, _)| *n)
        .collect();
    ensure!(ok, "handled {} of {N}", seen.len());
    ensure!(
        twice.is_empty(),
        "handled more than once in a healthy run: {twice:?}"
    );
    ensure!(acked == N as u64, "acked {acked} of {N}");
    ensure!(settled(bus.as_ref(), &s, &g).await? == 0, "entries still pending");
    let _ = runners;
    Ok(())
}
