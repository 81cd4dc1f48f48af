//! Redis publish and consume paths side by side with their raw redis-rs
//! baselines, for `valgrind --tool=callgrind` (instruction counts are stable
//! on a loaded machine; see BENCHMARKS.md, "What was profiled").
//!
//!     redis-server --port 6390 --save '' --appendonly no --daemonize yes
//!     cargo build --release --all-features --example profile_redis
//!     valgrind --tool=callgrind --callgrind-out-file=cg.fw \
//!         target/release/examples/profile_redis redis://127.0.0.1:6390 fw 1000
//!
//! Modes (each repeated `rounds` times after 50 untimed warm-up rounds):
//!
//! - `raw`: 50 `XADD MAXLEN ~ 10000` of a pre-encoded body at once over one
//!   bare `MultiplexedConnection` (the bench's baseline);
//! - `raw-encode`: the same, encoding the envelope for each `XADD`;
//! - `mgr`: the raw `XADD`s through a `ConnectionManager` with redis-rs's
//!   default settings (the bench's attribution row);
//! - `mgr-cfg`: through a `ConnectionManager` configured as fleetwire's
//!   (`RedisBackend::build`: 2 s response timeout, 2 retries, 250 ms max delay);
//! - `fw`: 50 `RedisBus::publish` at once (drop-oldest);
//! - `fw-keep`: the same under `TrimPolicy::keep_unacknowledged()`;
//! - `fill`: one pipelined fill of 5,000 entries (what each drain round adds);
//! - `drain-runner`: fill 5,000, drain them with a `Runner` (concurrency 64,
//!   no-op handler), as `consume/runner` does;
//! - `drain-pipelined`: fill 5,000, drain them with the raw pipelined
//!   `XACK` + `XREADGROUP COUNT 64` loop of `consume/runner`.
//!
//! Per-operation instructions: run two round counts and divide the
//! difference (start-up, connection and warm-up cancel out).
//!
//! `--threads` uses the bench's 2-worker multi-threaded runtime instead of a
//! current-thread one (the default: fewer scheduler instructions, and
//! callgrind runs one thread at a time anyway).

use fleetwire::{
    consumer::{HandlerResult, Runner},
    redis::RedisBackend,
    Codec, ConsumerName, Delivery, Envelope, EventBus, GroupName, StartFrom, StreamName,
};
use futures_util::future::join_all;
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

const AT_ONCE: usize = 50;
const DRAIN_N: usize = 5_000;

fn envelope() -> Envelope {
    Envelope::new("message.inbound")
        .with_trace_id("6f1c2a9e-93f1-4a57-b0b2-1d0e6f3a2c11")
        .with_header("platform", "discord")
        .with_header("channel_id", "1234567890")
        .with_raw_payload(vec![b'x'; 100])
}

fn raw_xadd(stream: &str, body: &[u8]) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(10_000)
        .arg("*")
        .arg("env")
        .arg(body);
    c
}

async fn raw_round<C: redis::aio::ConnectionLike + Clone>(c: &C, body: &[u8]) {
    join_all((0..AT_ONCE).map(|_| {
        let (mut c, cmd) = (c.clone(), raw_xadd("p:raw", body));
        async move { cmd.query_async::<String>(&mut c).await.unwrap() }
    }))
    .await;
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let threads = std::env::args().any(|a| a == "--threads");
    let [url, mode, rounds] = &args[..] else {
        eprintln!("usage: profile_redis <redis url> <mode> <rounds> [--threads]");
        std::process::exit(2);
    };
    let rounds: usize = rounds.parse().expect("rounds");
    let rt = if threads {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }
    .unwrap();
    let mode = mode.clone();
    let url = url.clone();
    rt.block_on(async move {
        let env = envelope();
        let codec = Codec::default();
        let body = codec.encode(&env).unwrap().to_vec();
        let client = redis::Client::open(url.as_str()).unwrap();
        let raw = client.get_multiplexed_async_connection().await.unwrap();
        let backend = RedisBackend::builder().url(&url).max_len(10_000).build().unwrap();
        let warm = 50;
        match mode.as_str() {
            "raw" => {
                for _ in 0..warm + rounds {
                    raw_round(&raw, &body).await;
                }
            }
            "raw-encode" => {
                for _ in 0..warm + rounds {
                    join_all((0..AT_ONCE).map(|_| {
                        let (mut c, codec, env) = (raw.clone(), &codec, &env);
                        async move {
                            let body = codec.encode(env).unwrap();
                            raw_xadd("p:raw", &body)
                                .query_async::<String>(&mut c)
                                .await
                                .unwrap()
                        }
                    }))
                    .await;
                }
            }
            "mgr" | "mgr-cfg" => {
                let config = if mode == "mgr" {
                    redis::aio::ConnectionManagerConfig::new()
                } else {
                    redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(2)))
                        .set_response_timeout(Some(Duration::from_secs(2)))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_millis(250))
                };
                let m = client.get_connection_manager_with_config(config).await.unwrap();
                for _ in 0..warm + rounds {
                    raw_round(&m, &body).await;
                }
            }
            "fw" | "fw-keep" => {
                let bus = if mode == "fw" {
                    backend.bus()
                } else {
                    RedisBackend::builder()
                        .url(&url)
                        .max_len(10_000)
                        .trim_policy(fleetwire::TrimPolicy::keep_unacknowledged())
                        .build()
                        .unwrap()
                        .bus()
                };
                let s = StreamName::new(if mode == "fw" { "p:fw" } else { "p:keep" }).unwrap();
                for _ in 0..warm + rounds {
                    for r in join_all((0..AT_ONCE).map(|_| bus.publish(&s, &env))).await {
                        r.unwrap();
                    }
                }
            }
            "fill" | "drain-runner" | "drain-pipelined" => {
                drains(&backend, raw, &body, &mode, rounds).await;
            }
            other => panic!("unknown mode {other}"),
        }
    });
}

async fn fill(raw: &redis::aio::MultiplexedConnection, stream: &str, body: &[u8]) {
    let mut p = redis::pipe();
    for _ in 0..DRAIN_N {
        p.add_command(raw_xadd(stream, body)).ignore();
    }
    p.query_async::<()>(&mut raw.clone()).await.unwrap();
}

async fn drains(
    backend: &RedisBackend,
    raw: redis::aio::MultiplexedConnection,
    body: &[u8],
    mode: &str,
    rounds: usize,
) {
    let bus: Arc<dyn EventBus> = Arc::new(backend.bus());
    let group = GroupName::new("g").unwrap();
    let stream = if mode == "drain-runner" {
        "d:runner"
    } else {
        "d:pipelined"
    };
    bus.ensure_group(&StreamName::new(stream).unwrap(), &group, StartFrom::Latest)
        .await
        .unwrap();
    let left = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let (l, d) = (left.clone(), done.clone());
    let runner = Runner::builder(
        bus.clone(),
        StreamName::new(stream).unwrap(),
        group,
        ConsumerName::new("runner").unwrap(),
    )
    .concurrency(64)
    .handler(move |_: Delivery| {
        if l.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = d.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        async { HandlerResult::Ok(()) }
    })
    .build()
    .unwrap();
    // Fewer warm-up drains: each is 5,000 entries.
    for _ in 0..2 + rounds {
        fill(&raw, stream, body).await;
        match mode {
            "fill" => {
                // Drained untimed by XTRIM so the stream does not grow.
                redis::cmd("XTRIM")
                    .arg(stream)
                    .arg("MAXLEN")
                    .arg(0)
                    .query_async::<u64>(&mut raw.clone())
                    .await
                    .unwrap();
            }
            "drain-runner" => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                *done.lock().unwrap() = Some(tx);
                left.store(DRAIN_N, Ordering::SeqCst);
                runner
                    .run(async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            }
            _ => pipelined(&raw, stream).await,
        }
    }
}

async fn pipelined(raw: &redis::aio::MultiplexedConnection, stream: &str) {
    let mut c = raw.clone();
    let (mut handled, mut acks) = (0, Vec::<String>::new());
    loop {
        let mut p = redis::pipe();
        if !acks.is_empty() {
            p.cmd("XACK").arg(stream).arg("g").arg(&acks).ignore();
        }
        if handled >= DRAIN_N {
            p.query_async::<()>(&mut c).await.unwrap();
            return;
        }
        p.cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("raw")
            .arg("COUNT")
            .arg(64)
            .arg("STREAMS")
            .arg(stream)
            .arg(">");
        let replies: Vec<redis::Value> = p.query_async(&mut c).await.unwrap();
        let got = fleetwire::redis::parse::read_reply(&replies[0]).unwrap();
        assert!(!got.is_empty(), "the pipelined loop ran dry at {handled}");
        handled += got.len();
        acks = got
            .iter()
            .map(|d| std::hint::black_box(d).id.to_string())
            .collect();
    }
}
