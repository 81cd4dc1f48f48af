//! The consumer runner against a real redis-server that is killed with
//! SIGKILL under load, plus a panicking handler and a stop in mid-handler:
//! what the user sees is that every entry whose publish returned `Ok` is
//! handled, and nothing stays pending or is dead-lettered by the outages.
#![cfg(all(feature = "redis", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    consumer::{Backoff, DeadLetters, HandlerResult, Runner, RunnerCounts},
    redis::RedisBackend,
    service::Shutdown,
    ConsumerName, Delivery, Envelope, EventBus, GroupName, MessageId, StartFrom, StreamName,
};
use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use support::RedisServer;
use tokio::task::JoinHandle;

const PUBLISHES: u64 = 10_000;
const LANES: u64 = 4;

/// One backend per role, as separate processes would have: a runner's
/// connections break and reconnect on their own.
fn bus(server: &RedisServer) -> Arc<dyn EventBus> {
    Arc::new(
        RedisBackend::builder()
            .url(server.url())
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(2))
            // Far above what the test writes: trimming must not be what loses entries.
            .max_len(1_000_000)
            .build()
            .expect("backend")
            .bus(),
    )
}

fn n_of(d: &Delivery) -> u64 {
    d.envelope()
        .ok()
        .and_then(|e| e.header("n").and_then(|n| n.parse().ok()))
        .expect("every test entry has a numeric header `n`")
}

/// How many times each `n` was handled.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<HashMap<u64, u32>>>);

impl Handled {
    fn record(&self, n: u64) {
        *self.0.lock().unwrap().entry(n).or_default() += 1;
    }
    fn snapshot(&self) -> HashMap<u64, u32> {
        self.0.lock().unwrap().clone()
    }
}

type RunnerTask = JoinHandle<fleetwire::Result<RunnerCounts>>;

fn start(runner: &Runner, stop: &Shutdown) -> RunnerTask {
    let (runner, stop) = (runner.clone(), stop.clone());
    tokio::spawn(async move { runner.run(stop.wait()).await })
}

async fn stop_all(stop: &Shutdown, tasks: Vec<(String, RunnerTask)>) -> Vec<(String, RunnerCounts)> {
    stop.trigger();
    let mut out = Vec::new();
    for (name, task) in tasks {
        let ended = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("runner {name} did not stop within 10 s of its stop signal"))
            .expect("runner task panicked");
        let counts = ended.unwrap_or_else(|e| panic!("runner {name} ended with an error: {e}"));
        out.push((name, counts));
    }
    out
}

/// A call of the test's own, retried while the error is temporary: the
/// first command on a connection that sat idle through a restart fails
/// (redis-rs reconnects after the failure, it does not resend).
async fn retried<T, F: std::future::Future<Output = fleetwire::Result<T>>>(mut call: impl FnMut() -> F) -> T {
    for _ in 0..20 {
        match call().await {
            Ok(v) => return v,
            Err(e) if e.is_temporary() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    call().await.expect("still failing after 20 retries")
}

#[derive(Default)]
struct Published {
    ok: BTreeSet<u64>,
    failed: BTreeSet<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_lose_nothing_across_two_kill9_of_redis() {
    let Some(mut server) = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    else {
        return;
    };
    // The harness passes `--appendonly no` first; redis-server keeps the last value given.
    assert_eq!(server.config_get("appendonly").as_deref(), Some("yes"));
    assert_eq!(server.config_get("appendfsync").as_deref(), Some("always"));

    let stream = StreamName::new("faults").unwrap();
    let group = GroupName::new("workers").unwrap();
    let admin = bus(&server);
    admin
        .ensure_group(&stream, &group, StartFrom::Latest)
        .await
        .unwrap();

    let handled = Handled::default();
    let stop = Shutdown::default();
    let mut runners = Vec::new();
    let mut tasks = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let h = handled.clone();
        let runner = Runner::builder(
            bus(&server),
            stream.clone(),
            group.clone(),
            ConsumerName::new(name).unwrap(),
        )
        .concurrency(8)
        .lease(Duration::from_secs(1))
        .reaper(Duration::from_millis(250), 100)
        .block(Duration::from_millis(500))
        .store_retry(Duration::from_millis(20), Duration::from_millis(200))
        .handler(move |d: Delivery| {
            let h = h.clone();
            async move {
                h.record(n_of(&d));
                HandlerResult::Ok(())
            }
        })
        .build()
        .unwrap();
        tasks.push((name.to_owned(), start(&runner, &stop)));
        runners.push(runner);
    }

    // A few publishers at once, so a loaded machine still gets through the
    // 10,000 in seconds; each takes every LANES-th number.
    let attempted = Arc::new(AtomicU64::new(0));
    let publishers: Vec<JoinHandle<Published>> = (0..LANES)
        .map(|lane| {
            let (bus, stream, attempted) = (bus(&server), stream.clone(), attempted.clone());
            tokio::spawn(async move {
                let mut out = Published::default();
                for n in (lane..PUBLISHES).step_by(LANES as usize) {
                    let env = Envelope::new("fault.job").with_header("n", n.to_string());
                    match bus.publish(&stream, &env).await {
                        Ok(_) => {
                            out.ok.insert(n);
                        }
                        Err(_) => {
                            // Its outcome is unknown (it may have landed): count it as failed
                            // and, the server being down, do not burn through the numbers.
                            out.failed.insert(n);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    attempted.fetch_add(1, SeqCst);
                }
                out
            })
        })
        .collect();

    let began = Instant::now();
    let mut outages = Vec::new();
    for at in [PUBLISHES / 3, 2 * PUBLISHES / 3] {
        while attempted.load(SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let down_at = began.elapsed();
        assert!(
            tokio::task::block_in_place(|| server.kill9()),
            "redis-server was not running"
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        tokio::task::block_in_place(|| server.restart());
        outages.push((at, down_at, began.elapsed() - down_at));
    }
    let mut published = Published::default();
    for lane in publishers {
        let out = lane.await.expect("publisher task");
        published.ok.extend(out.ok);
        published.failed.extend(out.failed);
    }
    let publish_time = began.elapsed();
    // Both restarts reloaded the data (and the group) from the AOF.
    let log = std::fs::read_to_string(server.log()).unwrap_or_default();
    assert_eq!(
        log.matches("DB loaded from append only file").count(),
        2,
        "redis-server did not reload its AOF at each restart; log {}",
        server.log().display()
    );

    // Every entry whose publish returned Ok handled, and nothing left pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending = None;
    let mut missing: Vec<u64>;
    loop {
        let seen = handled.snapshot();
        missing = published
            .ok
            .iter()
            .copied()
            .filter(|n| !seen.contains_key(n))
            .collect();
        if missing.is_empty() {
            if let Ok(p) = admin.pending(&stream, &group).await {
                pending = Some(p.count);
            }
            if pending == Some(0) {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle_time = began.elapsed() - publish_time;
    let dlq = DeadLetters::of(admin.clone(), &stream).unwrap();
    let dead = retried(|| dlq.len()).await;
    let counts = stop_all(&stop, tasks).await;
    let after_stop = retried(|| admin.pending(&stream, &group)).await;

    let seen = handled.snapshot();
    let duplicates: u64 = seen.values().map(|c| u64::from(c - 1)).sum();
    let landed_though_failed = published.failed.iter().filter(|n| seen.contains_key(n)).count();
    let unknown: Vec<u64> = seen
        .keys()
        .copied()
        .filter(|n| !published.ok.contains(n) && !published.failed.contains(n))
        .collect();
    println!(
        "published ok {}, publish errors {} (of which {} landed anyway and were handled)",
        published.ok.len(),
        published.failed.len(),
        landed_though_failed
    );
    println!(
        "handled {} distinct entries, {} duplicate handlings; dead-lettered {dead}; pending {pending:?} at settle, {} after stop",
        seen.len(),
        duplicates,
        after_stop.count
    );
    for (at, down_at, length) in &outages {
        println!("outage at publish {at}: killed at {down_at:.2?}, back after {length:.2?}");
    }
    println!("publishing took {publish_time:.2?}, settling after it {settle_time:.2?}");
    for (name, c) in &counts {
        println!("{name}: {c:?}");
    }

    assert!(
        missing.is_empty(),
        "{} entries whose publish returned Ok were never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        pending,
        Some(0),
        "entries still pending 30 s after publishing ended"
    );
    assert_eq!(
        dead, 0,
        "entries were dead-lettered although every handler succeeded"
    );
    assert!(unknown.is_empty(), "handled numbers never published: {unknown:?}");
    assert_eq!(after_stop.count, 0, "stopping left entries pending");
    assert_eq!(outages.len(), 2);
    assert!(
        counts.iter().map(|(_, c)| c.store_errors).sum::<u64>() > 0,
        "the runners never saw the outages: the test did not test anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_ends_dead_lettered_after_max_deliveries() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let bus = bus(&server);
    let stream = StreamName::new("panics").unwrap();
    let group = GroupName::new("workers").unwrap();
    bus.ensure_group(&stream, &group, StartFrom::Latest)
        .await
        .unwrap();
    let original = Envelope::new("fault.job").with_header("n", "7");
    let id = bus.publish(&stream, &original).await.unwrap();

    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let runner = Runner::builder(
        bus.clone(),
        stream.clone(),
        group.clone(),
        ConsumerName::new("w1").unwrap(),
    )
    .max_deliveries(3)
    .backoff(Backoff::constant(Duration::from_millis(20)))
    .reaper(Duration::from_millis(50), 100)
    .block(Duration::from_millis(200))
    .handler(move |d: Delivery| {
        c.lock().unwrap().push(d.delivery_count);
        async move {
            if d.delivery_count > 0 {
                panic!("handler bug on entry {}", d.id);
            }
            HandlerResult::Ok(())
        }
    })
    .build()
    .unwrap();
    let stop = Shutdown::default();
    let task = start(&runner, &stop);
    let dlq = DeadLetters::of(bus.clone(), &stream).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dlq.len().await.unwrap() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = stop_all(&stop, vec![("w1".into(), task)]).await.remove(0).1;

    let letters = dlq.list(MessageId::ZERO, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "dead letters {letters:?}, counters {counts:?}");
    let letter = letters[0].letter.as_ref().expect("a dead-letter record");
    assert_eq!(letter.original_id, id.to_string());
    assert_eq!(letter.attempts, 3);
    assert!(letter.reason.contains("panicked"), "reason {:?}", letter.reason);
    assert_eq!(
        fleetwire::Codec::default().decode(&letter.body).unwrap(),
        original,
        "the record keeps the original envelope"
    );
    assert_eq!(
        *calls.lock().unwrap(),
        vec![1, 2, 3],
        "one handler call per delivery"
    );
    assert_eq!(
        (counts.retried, counts.dead_lettered, counts.acked),
        (2, 1, 0),
        "counters {counts:?}"
    );
    assert_eq!(bus.pending(&stream, &group).await.unwrap().count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_in_mid_handler_hands_the_entry_to_another_runner_at_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let bus = bus(&server);
    let stream = StreamName::new("stops").unwrap();
    let group = GroupName::new("workers").unwrap();
    bus.ensure_group(&stream, &group, StartFrom::Latest)
        .await
        .unwrap();
    let id = bus
        .publish(&stream, &Envelope::new("fault.job").with_header("n", "1"))
        .await
        .unwrap();

    // A long lease: the only way the second runner gets the entry soon is the release.
    let lease = Duration::from_secs(30);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let slow = Runner::builder(
        bus.clone(),
        stream.clone(),
        group.clone(),
        ConsumerName::new("slow").unwrap(),
    )
    .lease(lease)
    .drain_timeout(Duration::from_millis(200))
    .block(Duration::from_millis(200))
    .handler(move |d: Delivery| {
        if let Some(tx) = started_tx.lock().unwrap().take() {
            let _ = tx.send(d.delivery_count);
        }
        async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            HandlerResult::Ok(())
        }
    })
    .build()
    .unwrap();
    let stop_slow = Shutdown::default();
    let slow_task = start(&slow, &stop_slow);
    let first = tokio::time::timeout(Duration::from_secs(5), started_rx)
        .await
        .expect("the slow handler never started")
        .unwrap();
    assert_eq!(first, 1);

    let stopping = Instant::now();
    let counts = stop_all(&stop_slow, vec![("slow".into(), slow_task)])
        .await
        .remove(0)
        .1;
    let drain = stopping.elapsed();
    assert!(
        drain < Duration::from_secs(2),
        "drain took {drain:?} with a 200 ms drain timeout"
    );
    assert_eq!((counts.released, counts.acked), (1, 0), "counters {counts:?}");
    let rows = bus
        .pending_entries(&stream, &group, None, MessageId::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "pending rows {rows:?}");
    assert_eq!(rows[0].id, id);
    assert_eq!(
        rows[0].deliveries, 0,
        "the unfinished delivery is not counted: {rows:?}"
    );
    assert!(
        rows[0].idle >= lease,
        "released entry is not claimable at once: {rows:?}"
    );

    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let got_tx = Arc::new(Mutex::new(Some(got_tx)));
    let next = Runner::builder(
        bus.clone(),
        stream.clone(),
        group.clone(),
        ConsumerName::new("next").unwrap(),
    )
    .lease(lease)
    .reaper(Duration::from_millis(100), 100)
    .block(Duration::from_millis(200))
    .handler(move |d: Delivery| {
        if let Some(tx) = got_tx.lock().unwrap().take() {
            let _ = tx.send((d.id, d.delivery_count));
        }
        async { HandlerResult::Ok(()) }
    })
    .build()
    .unwrap();
    let stop_next = Shutdown::default();
    let taking = Instant::now();
    let next_task = start(&next, &stop_next);
    let (got_id, count) = tokio::time::timeout(Duration::from_secs(5), got_rx)
        .await
        .expect("the released entry did not reach the other runner within 5 s (lease 30 s)")
        .unwrap();
    let took = taking.elapsed();
    assert_eq!((got_id, count), (id, 1), "taken over as a first delivery");
    let deadline = Instant::now() + Duration::from_secs(5);
    while bus.pending(&stream, &group).await.unwrap().count > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = stop_all(&stop_next, vec![("next".into(), next_task)])
        .await
        .remove(0)
        .1;
    println!("released entry handled by the other runner {took:.2?} after it started; {counts:?}");
    assert_eq!((counts.reclaimed, counts.acked), (1, 1), "counters {counts:?}");
    assert_eq!(bus.pending(&stream, &group).await.unwrap().count, 0);
}
