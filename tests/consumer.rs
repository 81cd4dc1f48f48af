//! The consumer runner's conformance suite on the in-memory bus and on a
//! real, private redis-server, under every runtime enabled.
#![cfg(all(feature = "memory", feature = "testkit"))]

mod support;

use fleetwire::{memory::MemoryBus, testkit, EventBus};
use std::sync::Arc;

async fn on(bus: Arc<dyn EventBus>, what: &str) {
    let report = testkit::consumer::run(bus).await;
    println!("consumer suite on {what}:\n{report}");
    report.assert_all_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_on_tokio() {
    on(Arc::new(MemoryBus::new()), "memory/tokio").await;
}

#[cfg(feature = "rt-async-std")]
#[test]
fn memory_on_async_std() {
    async_std::task::block_on(on(Arc::new(MemoryBus::new()), "memory/async-std"));
}

#[cfg(feature = "rt-smol")]
#[test]
fn memory_on_smol() {
    smol::block_on(on(Arc::new(MemoryBus::new()), "memory/smol"));
}

#[cfg(feature = "redis")]
mod redis {
    use super::{on, support::RedisServer};
    use fleetwire::redis::RedisBackend;
    use std::sync::Arc;

    fn bus(server: &RedisServer) -> Arc<dyn fleetwire::EventBus> {
        Arc::new(
            RedisBackend::builder()
                .url(server.url())
                .build()
                .expect("backend")
                .bus(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_on_tokio() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        on(bus(&server), "redis/tokio").await;
    }

    #[cfg(feature = "rt-async-std")]
    #[test]
    fn redis_on_async_std() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        async_std::task::block_on(async { on(bus(&server), "redis/async-std").await });
    }

    #[cfg(feature = "rt-smol")]
    #[test]
    fn redis_on_smol() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        smol::block_on(async { on(bus(&server), "redis/smol").await });
    }
}

/// Every `Duration` setting of the runner at its extremes: no panic, the
/// entry is handled, the runner stops when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_accepts_extreme_durations() {
    use fleetwire::{
        consumer::{Backoff, HandlerResult, Runner},
        service::Shutdown,
        ConsumerName, Delivery, Envelope, GroupName, StreamName,
    };
    use std::time::Duration;
    for d in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
        let s = StreamName::new("extreme").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tx = std::sync::Mutex::new(Some(tx));
        let runner = Runner::builder(
            bus.clone(),
            s.clone(),
            GroupName::new("g").unwrap(),
            ConsumerName::new("c").unwrap(),
        )
        // A lease shorter than a stall of the machine would let this
        // runner's own reaper hand the entry out twice (at-least-once, but
        // not what this test counts).
        .lease(d.max(Duration::from_secs(1)))
        .reaper(d, 1)
        .backoff(Backoff::exponential(d, d))
        .handler_timeout(d.max(Duration::from_millis(50)))
        .drain_timeout(d)
        .block(d.min(Duration::from_millis(100)))
        .store_retry(d, d)
        .handler(move |_d: Delivery| {
            let tx = tx.lock().unwrap().take();
            async move {
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
                HandlerResult::Ok(())
            }
        })
        .build()
        .unwrap_or_else(|e| panic!("{d:?}: {e}"));
        let stop = Shutdown::default();
        let task = tokio::spawn({
            let (runner, stop) = (runner.clone(), stop.clone());
            async move { runner.run(stop.wait()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.publish(&s, &Envelope::new("x")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap_or_else(|_| panic!("{d:?}: entry never handled"))
            .unwrap();
        stop.trigger();
        let counts = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap_or_else(|_| panic!("{d:?}: runner did not stop"))
            .unwrap()
            .unwrap();
        assert_eq!(counts.acked, 1, "{d:?}: {counts:?}");
    }
}

/// A paused runner takes nothing new within a second, finishes what it holds,
/// and takes work again on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_runner_takes_nothing_new_until_resumed() {
    use fleetwire::{
        consumer::{HandlerResult, Pause, Runner},
        service::Shutdown,
        ConsumerName, Delivery, Envelope, GroupName, StreamName,
    };
    use std::{
        sync::atomic::{AtomicU64, Ordering::SeqCst},
        time::Duration,
    };
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    let s = StreamName::new("quiet").unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let pause = Pause::default();
    let h = handled.clone();
    let runner = Runner::builder(
        bus.clone(),
        s.clone(),
        GroupName::new("g").unwrap(),
        ConsumerName::new("c").unwrap(),
    )
    .pause_with(pause.clone())
    .block(Duration::from_millis(100))
    .handler(move |_d: Delivery| {
        let h = h.clone();
        async move {
            h.fetch_add(1, SeqCst);
            HandlerResult::Ok(())
        }
    })
    .build()
    .unwrap();
    let stop = Shutdown::default();
    let task = tokio::spawn({
        let (runner, stop) = (runner.clone(), stop.clone());
        async move { runner.run(stop.wait()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(&s, &Envelope::new("before")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handled.load(SeqCst), 1);
    pause.pause();
    // A read already blocked may still hand over one entry; after that, nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_pause = handled.load(SeqCst);
    for _ in 0..5 {
        bus.publish(&s, &Envelope::new("while quiet")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handled.load(SeqCst), at_pause, "a paused runner took new work");
    pause.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while handled.load(SeqCst) < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "resumed runner never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    let counts = task.await.unwrap().unwrap();
    assert_eq!(counts.acked, 6, "{counts:?}");
}

/// A retry policy decides centrally: here a validation error is never retried.
#[tokio::test]
async fn retry_policy_maps_errors_to_outcomes() {
    use fleetwire::{
        consumer::{Action, DeadLetters, HandlerError, Runner},
        service::Shutdown,
        ConsumerName, Delivery, Envelope, GroupName, MessageId, StreamName,
    };
    use std::time::Duration;
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    let s = StreamName::new("policy").unwrap();
    let runner = Runner::builder(
        bus.clone(),
        s.clone(),
        GroupName::new("g").unwrap(),
        ConsumerName::new("c").unwrap(),
    )
    .block(Duration::from_millis(50))
    .retry_policy(|err, _d| {
        if err.reason().contains("validation") {
            Action::DeadLetter
        } else {
            err.action()
        }
    })
    .handler(|_d: Delivery| async { Err(HandlerError::retry("validation failed: no id")) })
    .build()
    .unwrap();
    let stop = Shutdown::default();
    let task = tokio::spawn({
        let (runner, stop) = (runner.clone(), stop.clone());
        async move { runner.run(stop.wait()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    bus.publish(&s, &Envelope::new("x")).await.unwrap();
    let dlq = DeadLetters::new(bus.clone(), runner.dead_letter_stream().clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while dlq.len().await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    let counts = task.await.unwrap().unwrap();
    assert_eq!((counts.retried, counts.dead_lettered), (0, 1), "{counts:?}");
    let letter = dlq.list(MessageId::ZERO, 1).await.unwrap()[0]
        .letter
        .clone()
        .unwrap();
    assert_eq!(
        (letter.attempts, letter.reason.as_str()),
        (1, "validation failed: no id")
    );
}
